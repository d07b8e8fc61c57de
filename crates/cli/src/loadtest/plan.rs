//! What the traffic mode does, decided without I/O: the operation mix, the Zipf distribution
//! of conversations, the friendship graph, and the operation at each index of a run.
//!
//! The operation at index `i` depends only on the seed and `i` ([`Chooser::op`]), so a run
//! with the same `--seed` asks for the same sequence of operations whatever the timing; which
//! message a read or a delete then targets depends on what has arrived by then.

use std::collections::BTreeSet;
use std::fmt;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// One kind of operation a simulated user performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    /// Send a direct message to the conversation's other user.
    Send,
    /// Read a page of the conversation's history.
    History,
    /// Mark the conversation read up to the latest message received in it.
    Read,
    /// Delete one of the user's own messages, for everyone or for themselves.
    Delete,
}

impl OpKind {
    pub const ALL: [OpKind; 4] = [OpKind::Send, OpKind::History, OpKind::Read, OpKind::Delete];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Send => "send",
            OpKind::History => "history",
            OpKind::Read => "read",
            OpKind::Delete => "delete",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The weights of the operations, as `--mix send=70,history=20,read=8,delete=2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    /// By [`OpKind::index`].
    pub weights: [u32; 4],
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            weights: [70, 20, 8, 2],
        }
    }
}

impl Mix {
    /// Parses `op=weight,...`; an operation left out has weight 0. Sending must have a weight:
    /// reads and deletes act on the messages the run sends.
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut weights = [0u32; 4];
        let mut given = [false; 4];
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, weight)) = part.split_once('=') else {
                return Err(format!(
                    "{part:?}: expected operation=weight, e.g. send=70,history=20,read=8,delete=2"
                ));
            };
            let (name, weight) = (name.trim(), weight.trim());
            let Some(kind) = OpKind::ALL.into_iter().find(|k| k.name() == name) else {
                return Err(format!(
                    "unknown operation {name:?}: the operations are send, history, read and delete"
                ));
            };
            if given[kind.index()] {
                return Err(format!("{name} is given twice"));
            }
            given[kind.index()] = true;
            weights[kind.index()] = weight.parse().map_err(|_| {
                format!("the weight of {name} is {weight:?}: it must be a whole number, 0 or more")
            })?;
        }
        if weights[OpKind::Send.index()] == 0 {
            return Err(
                "send needs a weight above 0: reads and deletes act on the messages the run sends"
                    .to_owned(),
            );
        }
        weights
            .iter()
            .try_fold(0u32, |sum, w| sum.checked_add(*w))
            .ok_or_else(|| "the weights add up to more than 4294967295".to_owned())?;
        Ok(Mix { weights })
    }

    pub fn weight(&self, kind: OpKind) -> u32 {
        self.weights[kind.index()]
    }

    /// The operation at `u` in `[0, 1)`: each with probability weight / sum.
    pub fn pick(&self, u: f64) -> OpKind {
        let total: u32 = self.weights.iter().sum();
        let mut at = u * f64::from(total);
        for kind in OpKind::ALL {
            let w = f64::from(self.weight(kind));
            if at < w {
                return kind;
            }
            at -= w;
        }
        // Rounding at the very top: the last operation with a weight.
        OpKind::ALL
            .into_iter()
            .rev()
            .find(|k| self.weight(*k) > 0)
            .unwrap_or(OpKind::Send)
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = OpKind::ALL
            .iter()
            .map(|k| format!("{}={}", k.name(), self.weight(*k)))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// `--zipf`: a finite exponent, 0 or more (0 is uniform).
pub fn parse_zipf(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Ok(s),
        _ => Err(format!(
            "{text:?}: the Zipf exponent is a number, 0 or more (0: every conversation equally \
             busy; 1: the classic Zipf law)"
        )),
    }
}

/// `--rate`: operations per second, above 0.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "{text:?}: the rate is a number of operations per second above 0"
        )),
    }
}

/// A Zipf distribution over ranks `0..n`: rank `k` has probability proportional to
/// `1 / (k + 1)^s`. Sampled by binary search in the cumulative distribution.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        let mut cdf: Vec<f64> = (1..=n.max(1))
            .map(|k| {
                total += (k as f64).powf(-s);
                total
            })
            .collect();
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    /// The rank at `u` in `[0, 1)`.
    pub fn sample(&self, u: f64) -> usize {
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }

    /// The probability of rank `k`.
    pub fn probability(&self, k: usize) -> f64 {
        self.cdf[k] - if k == 0 { 0.0 } else { self.cdf[k - 1] }
    }
}

/// Friend pairs `(a, b)`, `a < b`, over users `0..n`: each user has `k` friends (`k + 1` when
/// `n` and `k` are both odd, as `n * k` friendships ends cannot pair up). A ring over a
/// shuffled order, each user befriending the next `k / 2` on each side (and the one opposite
/// when `k` is odd), so the graph is regular and connected. Needs `1 <= k < n`.
pub fn friendship_graph(n: usize, k: usize, rng: &mut StdRng) -> Vec<(usize, usize)> {
    assert!(k >= 1 && k < n, "1 <= friends per user < users");
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    let pair = |i: usize, j: usize| {
        let (a, b) = (order[i % n], order[j % n]);
        (a.min(b), a.max(b))
    };
    let mut edges = BTreeSet::new();
    let reach = if !k.is_multiple_of(2) && !n.is_multiple_of(2) {
        k.div_ceil(2)
    } else {
        k / 2
    };
    for i in 0..n {
        for d in 1..=reach {
            edges.insert(pair(i, i + d));
        }
    }
    if !k.is_multiple_of(2) && n.is_multiple_of(2) {
        for i in 0..n / 2 {
            edges.insert(pair(i, i + n / 2));
        }
    }
    edges.into_iter().collect()
}

/// One operation of a run, before it targets a message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Op {
    pub kind: OpKind,
    /// Index of the conversation (friend pair).
    pub conversation: usize,
    /// Whether the pair's second user acts (else the first).
    pub second: bool,
    /// Deletes: for everyone (else for the deleting user only).
    pub everyone: bool,
    /// In `[0, 1)`: which of the candidate messages a delete takes.
    pub pick: f64,
}

/// Draws the operation at each index of a run.
#[derive(Debug, Clone)]
pub struct Chooser {
    seed: u64,
    mix: Mix,
    zipf: Zipf,
    /// Conversation index by Zipf rank: the busiest conversations are random pairs.
    by_rank: Vec<usize>,
}

impl Chooser {
    pub fn new(seed: u64, mix: Mix, conversations: usize, zipf: f64) -> Self {
        let mut by_rank: Vec<usize> = (0..conversations).collect();
        by_rank.shuffle(&mut StdRng::seed_from_u64(seed ^ 0x5eed_c0a7));
        Chooser {
            seed,
            mix,
            zipf: Zipf::new(conversations, zipf),
            by_rank,
        }
    }

    /// The operation at index `i`: a function of the seed and `i` alone.
    pub fn op(&self, i: u64) -> Op {
        let mut rng = StdRng::seed_from_u64(
            self.seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17),
        );
        Op {
            kind: self.mix.pick(rng.random()),
            conversation: self.by_rank[self.zipf.sample(rng.random())],
            second: rng.random_bool(0.5),
            everyone: rng.random_bool(0.5),
            pick: rng.random(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_with_omitted_operations_at_zero() {
        assert_eq!(
            Mix::parse("send=70,history=20,read=8,delete=2"),
            Ok(Mix::default())
        );
        assert_eq!(
            Mix::parse(" send = 3 , read=1"),
            Ok(Mix {
                weights: [3, 0, 1, 0]
            })
        );
        assert_eq!(
            Mix::default().to_string(),
            "send=70,history=20,read=8,delete=2"
        );
    }

    #[test]
    fn bad_mixes_say_what_is_wrong() {
        let error = |text| Mix::parse(text).expect_err(text);
        assert!(error("send=0,read=5").contains("send needs a weight"));
        assert!(error("read=5").contains("send needs a weight"));
        assert!(error("send=5,like=3").contains("unknown operation \"like\""));
        assert!(error("send=5,read=-1").contains("whole number"));
        assert!(error("send=5,send=6").contains("twice"));
        assert!(error("send").contains("operation=weight"));
    }

    #[test]
    fn picking_follows_the_weights() {
        let mix = Mix::parse("send=1,history=0,read=2,delete=1").expect("mix");
        assert_eq!(mix.pick(0.0), OpKind::Send);
        assert_eq!(mix.pick(0.24), OpKind::Send);
        assert_eq!(mix.pick(0.25), OpKind::Read);
        assert_eq!(mix.pick(0.74), OpKind::Read);
        assert_eq!(mix.pick(0.75), OpKind::Delete);
        assert_eq!(mix.pick(0.999_999), OpKind::Delete);
        assert_eq!(mix.pick(1.0), OpKind::Delete);
    }

    #[test]
    fn zipf_ranks_have_the_zipf_probabilities() {
        let zipf = Zipf::new(4, 1.0);
        // 1, 1/2, 1/3, 1/4 over 25/12.
        let expected = [12.0 / 25.0, 6.0 / 25.0, 4.0 / 25.0, 3.0 / 25.0];
        for (k, p) in expected.iter().enumerate() {
            assert!((zipf.probability(k) - p).abs() < 1e-12, "rank {k}");
        }
        assert_eq!(zipf.sample(0.0), 0);
        assert_eq!(zipf.sample(0.47), 0);
        assert_eq!(zipf.sample(0.49), 1);
        assert_eq!(zipf.sample(0.999), 3);
        let uniform = Zipf::new(5, 0.0);
        assert!((uniform.probability(3) - 0.2).abs() < 1e-12);
        assert_eq!(Zipf::new(1, 1.0).sample(0.5), 0);
    }

    #[test]
    fn friendship_graphs_are_regular() {
        for (n, k) in [
            (6, 2),
            (7, 2),
            (6, 3),
            (10, 9),
            (8, 7),
            (7, 3),
            (2, 1),
            (100, 10),
        ] {
            let edges = friendship_graph(n, k, &mut StdRng::seed_from_u64(7));
            let mut degree = vec![0; n];
            for (a, b) in &edges {
                assert!(a < b, "({a}, {b})");
                degree[*a] += 1;
                degree[*b] += 1;
            }
            let want = if !n.is_multiple_of(2) && !k.is_multiple_of(2) {
                k + 1
            } else {
                k
            };
            assert!(degree.iter().all(|d| *d == want), "n {n} k {k}: {degree:?}");
        }
    }

    #[test]
    fn operations_depend_on_the_seed_and_index_only() {
        let chooser = Chooser::new(42, Mix::default(), 50, 1.0);
        let again = Chooser::new(42, Mix::default(), 50, 1.0);
        let other = Chooser::new(43, Mix::default(), 50, 1.0);
        let ops: Vec<Op> = (0..200).map(|i| chooser.op(i)).collect();
        assert_eq!(ops, (0..200).map(|i| again.op(i)).collect::<Vec<_>>());
        assert_ne!(ops, (0..200).map(|i| other.op(i)).collect::<Vec<_>>());
        assert!(ops.iter().all(|op| op.conversation < 50));
        // Zipf 1.0 over 50: the busiest conversation takes about 22% of operations.
        let busiest = chooser.by_rank[0];
        let share = (0..20_000)
            .filter(|i| chooser.op(*i).conversation == busiest)
            .count() as f64
            / 20_000.0;
        assert!((0.19..0.25).contains(&share), "{share}");
        let sends = ops.iter().filter(|op| op.kind == OpKind::Send).count();
        assert!((110..170).contains(&sends), "{sends} sends of 200");
    }
}
