//! What the traffic mode measured, as a table or as JSON with stable keys.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use super::Latency;
use super::plan::{Mix, OpKind};

/// A latency distribution with its sample count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measured {
    pub count: usize,
    pub latency: Latency,
}

impl Measured {
    pub fn of(samples: Vec<Duration>) -> Self {
        Measured {
            count: samples.len(),
            latency: Latency::of(samples),
        }
    }

    fn to_json(&self) -> Value {
        let mut value = self.latency.to_json();
        value["count"] = json!(self.count);
        value
    }
}

/// How operations were issued.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Model {
    /// At fixed instants, `rate` per second, at most `max_in_flight` at once; latency from the
    /// scheduled instant.
    Open { rate: f64, max_in_flight: usize },
    /// `concurrency` workers, each issuing its next operation when the last one is answered.
    Closed { concurrency: usize },
}

/// One operation kind's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpReport {
    /// Issued (answered or failed).
    pub count: u64,
    pub ok: u64,
    /// Due but not issued: too many in flight (open model).
    pub dropped: u64,
    /// Successful operations only.
    pub latency: Measured,
}

impl OpReport {
    fn failed(&self) -> u64 {
        self.count - self.ok
    }
}

/// Time spent and what was made before the measured run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Setup {
    pub registration: Duration,
    pub befriending: Duration,
    pub opening: Duration,
    pub seeding: Duration,
    /// WebSocket sessions held through the run: one per user.
    pub sessions: usize,
    /// One message per conversation, sent before the run so that reads and deletes have
    /// something to act on; not counted among the run's sends.
    pub seed_messages: usize,
}

/// What `missive loadtest` (traffic mode) measured.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficReport {
    pub model: Model,
    pub users: usize,
    pub friends_per_user: usize,
    pub conversations: usize,
    pub mix: Mix,
    pub zipf: f64,
    pub seed: u64,
    pub e2e_sample: u64,
    /// From the first operation's start until the last one's answer.
    pub run_time: Duration,
    /// By [`OpKind::index`].
    pub ops: [OpReport; 4],
    /// Failures by kind (`send: HTTP 503 overloaded`, `history: timeout`, `ws: closed 4001`,
    /// `dropped: too many in flight`, ...).
    pub errors: BTreeMap<String, u64>,
    /// From a send's acknowledgement until the message reached the recipient's WebSocket.
    pub to_websocket: Measured,
    /// Pushes that reached the recipient before the sender had read the acknowledgement
    /// (counted as 0 in `to_websocket`).
    pub websocket_before_ack: u64,
    /// From a sampled send's acknowledgement until the recipient's history showed it.
    pub to_history: Measured,
    /// The server's projector lag (events appended but not applied, summed over projections
    /// and partitions), sampled every second: (seconds since the run began, lag).
    pub lag: Vec<(f64, f64)>,
    /// `MessageSent` events the server appended from the run's start to its end.
    pub server_messages_sent: Option<f64>,
    pub setup: Setup,
}

impl TrafficReport {
    /// Operations scheduled: issued or dropped.
    pub fn requested(&self) -> u64 {
        self.ops.iter().map(|o| o.count + o.dropped).sum()
    }

    fn per_second(&self, n: u64) -> f64 {
        let seconds = self.run_time.as_secs_f64();
        if seconds > 0.0 {
            n as f64 / seconds
        } else {
            0.0
        }
    }

    pub fn max_lag(&self) -> Option<f64> {
        self.lag.iter().map(|(_, l)| *l).reduce(f64::max)
    }

    pub fn to_json(&self) -> Value {
        let mut operations = serde_json::Map::new();
        for kind in OpKind::ALL {
            let o = &self.ops[kind.index()];
            operations.insert(
                kind.name().to_owned(),
                json!({
                    "count": o.count,
                    "ok": o.ok,
                    "failed": o.failed(),
                    "dropped": o.dropped,
                    "per_second": self.per_second(o.ok),
                    "latency_ms": o.latency.to_json(),
                }),
            );
        }
        let sum = |f: fn(&OpReport) -> u64| self.ops.iter().map(f).sum::<u64>();
        let (rate, max_in_flight, concurrency) = match self.model {
            Model::Open {
                rate,
                max_in_flight,
            } => (Some(rate), Some(max_in_flight), None),
            Model::Closed { concurrency } => (None, None, Some(concurrency)),
        };
        let mix: serde_json::Map<String, Value> = OpKind::ALL
            .iter()
            .map(|k| (k.name().to_owned(), json!(self.mix.weight(*k))))
            .collect();
        json!({
            "mode": "traffic",
            "model": if rate.is_some() { "open" } else { "closed" },
            "rate": rate,
            "max_in_flight": max_in_flight,
            "concurrency": concurrency,
            "users": self.users,
            "friends_per_user": self.friends_per_user,
            "conversations": self.conversations,
            "mix": mix,
            "zipf": self.zipf,
            "seed": self.seed,
            "e2e_sample": self.e2e_sample,
            "requested": self.requested(),
            "seconds": self.run_time.as_secs_f64(),
            "operations": operations,
            "total": {
                "count": sum(|o| o.count),
                "ok": sum(|o| o.ok),
                "failed": sum(OpReport::failed),
                "dropped": sum(|o| o.dropped),
                "per_second": self.per_second(sum(|o| o.ok)),
            },
            "errors": self.errors,
            "end_to_end_ms": {
                "to_websocket": self.to_websocket.to_json(),
                "to_history": self.to_history.to_json(),
                "websocket_before_ack": self.websocket_before_ack,
            },
            "projector_lag": {
                "max": self.max_lag(),
                "series": self.lag.iter().map(|(t, lag)| json!({ "seconds": t, "lag": lag })).collect::<Vec<_>>(),
            },
            "server": { "messages_sent": self.server_messages_sent },
            "setup": {
                "registration_seconds": self.setup.registration.as_secs_f64(),
                "befriending_seconds": self.setup.befriending.as_secs_f64(),
                "opening_seconds": self.setup.opening.as_secs_f64(),
                "seeding_seconds": self.setup.seeding.as_secs_f64(),
                "sessions": self.setup.sessions,
                "seed_messages": self.setup.seed_messages,
            },
        })
    }

    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let model = match self.model {
            Model::Open {
                rate,
                max_in_flight,
            } => format!("open model, {rate} ops/s scheduled (at most {max_in_flight} in flight)"),
            Model::Closed { concurrency } => {
                format!("closed model, {concurrency} workers at full speed")
            }
        };
        let _ = writeln!(out, "traffic      {model}");
        let _ = writeln!(
            out,
            "             {} users, {} friends each, {} conversations, zipf {}, mix {}, seed {}",
            self.users, self.friends_per_user, self.conversations, self.zipf, self.mix, self.seed
        );
        let _ = writeln!(
            out,
            "run          {} operations in {:.2} s",
            self.requested(),
            self.run_time.as_secs_f64()
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<24}{:>8}{:>8}{:>8}{:>10}{:>9}{:>9}{:>9}{:>9}{:>9}",
            "latency (ms)", "count", "ok", "failed", "ok/s", "p50", "p90", "p99", "p99.9", "max"
        );
        let row = |out: &mut String, name: &str, m: &Measured, counts: Option<(&OpReport, f64)>| {
            let (count, ok, failed, rate) = match counts {
                Some((o, rate)) => (
                    o.count.to_string(),
                    o.ok.to_string(),
                    o.failed().to_string(),
                    format!("{rate:.1}"),
                ),
                None => (
                    m.count.to_string(),
                    String::new(),
                    String::new(),
                    String::new(),
                ),
            };
            let l = &m.latency;
            let _ = writeln!(
                out,
                "{name:<24}{count:>8}{ok:>8}{failed:>8}{rate:>10}{:>9.2}{:>9.2}{:>9.2}{:>9.2}{:>9.2}",
                l.p50, l.p90, l.p99, l.p999, l.max
            );
        };
        for kind in OpKind::ALL {
            let o = &self.ops[kind.index()];
            row(
                &mut out,
                kind.name(),
                &o.latency,
                Some((o, self.per_second(o.ok))),
            );
        }
        let total_ok: u64 = self.ops.iter().map(|o| o.ok).sum();
        let total_count: u64 = self.ops.iter().map(|o| o.count).sum();
        let _ = writeln!(
            out,
            "{:<24}{total_count:>8}{total_ok:>8}{:>8}{:>10.1}",
            "all",
            total_count - total_ok,
            self.per_second(total_ok)
        );
        row(&mut out, "send ack → websocket", &self.to_websocket, None);
        row(&mut out, "send ack → history", &self.to_history, None);
        let _ = writeln!(out);
        if self.websocket_before_ack > 0 {
            let _ = writeln!(
                out,
                "push first   {} messages reached the recipient before the sender read its \
                 acknowledgement (counted as 0 ms)",
                self.websocket_before_ack
            );
        }
        match self.max_lag() {
            Some(max) => {
                let _ = writeln!(
                    out,
                    "projector    lag max {max} events (appended, not yet applied), each second:"
                );
                for line in self.lag.chunks(8) {
                    let points: Vec<String> = line
                        .iter()
                        .map(|(t, lag)| format!("{:>10}", format!("{t:.1}s:{lag}")))
                        .collect();
                    let _ = writeln!(out, "           {}", points.join(" "));
                }
            }
            None => {
                let _ = writeln!(out, "projector    lag unknown (no missive_projector_lag)");
            }
        }
        let _ = writeln!(
            out,
            "server       {} MessageSent appended during the run",
            self.server_messages_sent
                .map_or("unknown".to_owned(), |n| format!("{n}"))
        );
        let s = &self.setup;
        let _ = writeln!(
            out,
            "setup        {:.2} s registering, {:.2} s befriending, {:.2} s opening {} sessions, \
             {:.2} s sending {} seed messages",
            s.registration.as_secs_f64(),
            s.befriending.as_secs_f64(),
            s.opening.as_secs_f64(),
            s.sessions,
            s.seeding.as_secs_f64(),
            s.seed_messages
        );
        let dropped: u64 = self.ops.iter().map(|o| o.dropped).sum();
        if dropped > 0 {
            let _ = writeln!(out, "dropped      {dropped} operations not issued on time");
        }
        if self.errors.is_empty() {
            let _ = writeln!(out, "errors       none");
        }
        for (kind, n) in &self.errors {
            let _ = writeln!(out, "error        {kind}: {n}");
        }
        out
    }
}
