//! Crash safety of the embedded backend (issue 8): the real `missive serve` process is killed
//! with SIGKILL in the middle of a load, restarted on the same data directory, and what the
//! clients were told is checked against what the restarted server holds.
//!
//! # What it proves
//!
//! After a SIGKILL at an arbitrary moment of a concurrent load of sends, read markers,
//! deletes for everyone and deletes for me:
//! - every acknowledged (2xx) send is in the history exactly once, by `message_id` and by
//!   `client_msg_id`, with its text, sender and recipient; a send that was in flight at the
//!   kill is there at most once; a refused one (4xx, 503) is not there; nothing is there that
//!   no client sent; each conversation's `seq` runs 1..=N without a gap or a repeat;
//! - retrying every unacknowledged send with its `client_msg_id` returns the stored message
//!   (200, same `message_id`) when it was stored and stores it (201) when it was not, after
//!   which every attempted send is there exactly once; also when the retries race the
//!   server's start-up (second round: sent as soon as it listens, before `/readyz`);
//! - acknowledged deletes for everyone are tombstones on both sides, acknowledged deletes for
//!   me hide the message from that user only, and no other message is deleted or hidden;
//!   repeating them after the restart changes nothing;
//! - acknowledged read markers hold: every message of the peer up to the acknowledged
//!   `up_to` is `read`, nothing beyond the furthest attempted `up_to` is, and the read ones
//!   are a prefix of the conversation (a marker only moves forward);
//! - `unread_count` in `GET /v1/conversations` is exact for every user and conversation:
//!   right after the restart it equals the peer's visible, not deleted messages the history
//!   shows unread; once every attempted command was retried it equals the count computed
//!   from the clients' own record alone (the peer's messages after the furthest `up_to`, less
//!   those deleted for everyone or hidden by the user), independent of any server counter;
//! - the analytics rollups count every stored message and friendship once across the
//!   crashes, and the read models after two crashes equal a rebuild from the log (`missive
//!   replay --verify`).
//!
//! # How
//!
//! Eight users, twelve friendships (a ring and its diagonals). One client task per
//! conversation side (24 in all) issues commands chosen by a seeded RNG and records each
//! outcome: acknowledged (2xx), refused (4xx or 503: nothing stored, by the API's contract)
//! or unknown (no answer: in flight at the kill). When the round's acknowledged count
//! reaches a seeded threshold (300 to 500), the server is killed with SIGKILL
//! (`Child::kill`) while the others are still sending. The server is restarted on the same
//! data directory; after `/readyz` the history and conversation lists of every user are
//! checked against the record, every unacknowledged command is retried, and everything is
//! checked again, exactly. This is done twice (load, kill, restart, check; load, kill,
//! restart, check); in the second round the unacknowledged sends are retried before
//! `/readyz`. Read models are read after `/readyz` or with `min_position` (the positions of
//! the retries). Polls have deadlines; nothing is timed. About 4 s.
//!
//! The server runs as `missive serve --listen 127.0.0.1:0` (started by the `binary` module
//! shared with `sigterm`: its address read from its JSON log), with the rate limiters off
//! (`--rate-limit-per-user 0 --rate-limit-per-ip 0`); each start's stderr goes to
//! `server-<n>.log` in the test's temporary directory and is printed when a start fails.
#![cfg(unix)]

mod binary;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Notify;
use uuid::Uuid;

use binary::{Launch, Server, missive};

/// Seeds every choice of the load and the moments of the kills.
const SEED: u64 = 0x6d69_7373_6976_6508;
const USERS: usize = 8;
const ROUNDS: u64 = 2;
const JWT_SECRET: &str = "crash-safety-secret";
/// How long the server may take to start, become ready or catch up.
const STARTUP: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// The server process.
// ---------------------------------------------------------------------------------------

/// What only this test does to the process.
impl Server {
    /// SIGKILL, and reap the process.
    fn kill(&mut self) {
        use std::os::unix::process::ExitStatusExt;
        self.child.kill().expect("SIGKILL sent");
        let status = self.child.wait().expect("the killed server reaped");
        assert_eq!(
            status.signal(),
            Some(9),
            "the server exited before the kill ({status}):\n{}",
            self.log_text()
        );
    }
}

// ---------------------------------------------------------------------------------------
// HTTP.
// ---------------------------------------------------------------------------------------

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
}

/// What a request came back with.
#[derive(Debug)]
enum Reply {
    Answer(StatusCode, Value),
    /// No connection: the request never reached a server.
    NotConnected(String),
    /// No answer: the connection broke (the command may or may not have been done).
    NoAnswer(String),
}

impl Api {
    fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("HTTP client");
        Api {
            http,
            base: base.to_owned(),
        }
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) if e.is_connect() => return Reply::NotConnected(format!("{e:?}")),
            Err(e) => return Reply::NoAnswer(format!("{e:?}")),
        };
        let status = resp.status();
        match resp.text().await {
            Ok(text) => Reply::Answer(
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            ),
            Err(e) => Reply::NoAnswer(format!("{status}, then the body was lost: {e:?}")),
        }
    }

    /// A request that must be answered `want`; its body.
    async fn expect(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        want: StatusCode,
    ) -> Value {
        match self.request(method.clone(), path, token, body).await {
            Reply::Answer(status, body) if status == want => body,
            other => panic!("{method} {path}: wanted {want}, got {other:?}"),
        }
    }

    /// A GET with `min_position` (when given) that is retried while the read models have
    /// not caught up (503 `not_caught_up`), until a deadline.
    async fn get_at(&self, path: &str, token: &str, min_position: Option<&str>) -> Value {
        let path = match min_position {
            Some(p) => {
                let sep = if path.contains('?') { '&' } else { '?' };
                format!("{path}{sep}min_position={p}")
            }
            None => path.to_owned(),
        };
        let deadline = Instant::now() + STARTUP;
        loop {
            match self.request(Method::GET, &path, Some(token), None).await {
                Reply::Answer(StatusCode::OK, body) => return body,
                Reply::Answer(StatusCode::SERVICE_UNAVAILABLE, body)
                    if body["error"]["code"] == "not_caught_up" && Instant::now() < deadline => {}
                other => panic!("GET {path}: {other:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The clients' record of what they asked and what they were told.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct User {
    id: Uuid,
    token: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// A 2xx answer: the server said it was done.
    Acked,
    /// A 4xx or 503 answer: the server said nothing was stored; or no connection (the
    /// server was gone before the request).
    Refused(String),
    /// No answer (in flight at the kill), or another 5xx: it may or may not be stored.
    Unknown(String),
}

impl Outcome {
    fn of(reply: &Reply) -> Outcome {
        match reply {
            Reply::Answer(status, _) if status.is_success() => Outcome::Acked,
            Reply::Answer(status, body)
                if status.is_client_error() || *status == StatusCode::SERVICE_UNAVAILABLE =>
            {
                Outcome::Refused(format!("{status} {body}"))
            }
            Reply::Answer(status, body) => Outcome::Unknown(format!("{status} {body}")),
            Reply::NotConnected(e) => Outcome::Refused(e.clone()),
            Reply::NoAnswer(e) => Outcome::Unknown(e.clone()),
        }
    }

    fn refused(&self) -> bool {
        matches!(self, Outcome::Refused(_))
    }
}

#[derive(Debug)]
struct SendRec {
    conv: usize,
    /// Which participant of the conversation sent it (0 or 1).
    side: usize,
    client_msg_id: String,
    text: String,
    outcome: Outcome,
    message_id: Option<Uuid>,
}

#[derive(Debug)]
struct ReadRec {
    conv: usize,
    side: usize,
    up_to: Uuid,
    outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Tombstone for both (the sender's own message).
    Everyone,
    /// Hide for the actor (the peer's message).
    Me,
}

impl Scope {
    fn param(self) -> &'static str {
        match self {
            Scope::Everyone => "everyone",
            Scope::Me => "me",
        }
    }
}

#[derive(Debug)]
struct DeleteRec {
    conv: usize,
    side: usize,
    message_id: Uuid,
    scope: Scope,
    outcome: Outcome,
}

#[derive(Debug)]
struct Conv {
    id: Uuid,
    /// Indexes into the users.
    users: [usize; 2],
    /// Acknowledged messages, in the order of their answers, with the sender's side.
    acked: Vec<(Uuid, usize)>,
    /// Messages a delete for everyone was attempted on.
    delete_tried: HashSet<Uuid>,
    /// Per side: messages that side attempted to hide, or named as `up_to` (never hidden
    /// afterwards, so that retrying a read after the restart cannot meet a hidden message).
    hide_tried: [HashSet<Uuid>; 2],
    read_tried: [HashSet<Uuid>; 2],
}

#[derive(Debug, Default)]
struct Ledger {
    convs: Vec<Conv>,
    sends: Vec<SendRec>,
    reads: Vec<ReadRec>,
    deletes: Vec<DeleteRec>,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Send(usize),
    Read(usize),
    Delete(usize),
}

/// A command chosen and recorded (as unknown) before it is sent.
struct Planned {
    kind: Kind,
    method: Method,
    path: String,
    body: Option<Value>,
    token: String,
}

impl Ledger {
    /// Picks the next command of side `side` of conversation `c` and records it as in flight.
    fn plan(
        &mut self,
        users: &[User],
        rng: &mut StdRng,
        name: &str,
        c: usize,
        side: usize,
    ) -> Planned {
        let conv = &self.convs[c];
        let token = users[conv.users[side]].token.clone();
        let roll = rng.random_range(0..100);
        let pick = |rng: &mut StdRng, ids: Vec<Uuid>| {
            (!ids.is_empty()).then(|| ids[rng.random_range(0..ids.len())])
        };
        if (60..80).contains(&roll) {
            // Read up to one of the latest messages this side can see.
            let recent: Vec<Uuid> = conv
                .acked
                .iter()
                .rev()
                .filter(|(id, _)| !conv.hide_tried[side].contains(id))
                .take(6)
                .map(|(id, _)| *id)
                .collect();
            if let Some(up_to) = pick(rng, recent) {
                self.convs[c].read_tried[side].insert(up_to);
                self.reads.push(ReadRec {
                    conv: c,
                    side,
                    up_to,
                    outcome: Outcome::Unknown("no answer yet".into()),
                });
                return Planned {
                    kind: Kind::Read(self.reads.len() - 1),
                    method: Method::POST,
                    path: format!("/v1/conversations/{}/read", self.convs[c].id),
                    body: Some(json!({ "up_to": up_to })),
                    token,
                };
            }
        } else if roll >= 80 {
            let scope = if roll < 90 {
                Scope::Everyone
            } else {
                Scope::Me
            };
            let candidates: Vec<Uuid> = conv
                .acked
                .iter()
                .filter(|(id, sender)| match scope {
                    Scope::Everyone => *sender == side && !conv.delete_tried.contains(id),
                    Scope::Me => {
                        *sender != side
                            && !conv.hide_tried[side].contains(id)
                            && !conv.read_tried[side].contains(id)
                    }
                })
                .map(|(id, _)| *id)
                .collect();
            if let Some(message_id) = pick(rng, candidates) {
                let conv = &mut self.convs[c];
                match scope {
                    Scope::Everyone => conv.delete_tried.insert(message_id),
                    Scope::Me => conv.hide_tried[side].insert(message_id),
                };
                self.deletes.push(DeleteRec {
                    conv: c,
                    side,
                    message_id,
                    scope,
                    outcome: Outcome::Unknown("no answer yet".into()),
                });
                return Planned {
                    kind: Kind::Delete(self.deletes.len() - 1),
                    method: Method::DELETE,
                    path: format!("/v1/messages/{message_id}?scope={}", scope.param()),
                    body: None,
                    token,
                };
            }
        }
        let text = format!("{name} ✉ {:08x}", rng.random::<u32>());
        let peer = users[conv.users[1 - side]].id;
        self.sends.push(SendRec {
            conv: c,
            side,
            client_msg_id: name.to_owned(),
            text: text.clone(),
            outcome: Outcome::Unknown("no answer yet".into()),
            message_id: None,
        });
        Planned {
            kind: Kind::Send(self.sends.len() - 1),
            method: Method::POST,
            path: format!("/v1/conversations/direct/{peer}/messages"),
            body: Some(json!({ "text": text, "client_msg_id": name })),
            token,
        }
    }

    /// Every command's outcome.
    fn outcomes(&self) -> impl Iterator<Item = &Outcome> {
        self.sends
            .iter()
            .map(|s| &s.outcome)
            .chain(self.reads.iter().map(|r| &r.outcome))
            .chain(self.deletes.iter().map(|d| &d.outcome))
    }

    /// One command that was not acknowledged (in flight, refused or lost), for diagnosis.
    fn a_failure(&self) -> Option<&Outcome> {
        self.outcomes().find(|o| **o != Outcome::Acked)
    }

    /// Records the answer to a planned command.
    fn record(&mut self, kind: Kind, reply: &Reply) -> Outcome {
        let outcome = Outcome::of(reply);
        match kind {
            Kind::Send(i) => {
                self.sends[i].outcome = outcome.clone();
                if outcome == Outcome::Acked {
                    self.acked_send(i, reply);
                }
            }
            Kind::Read(i) => self.reads[i].outcome = outcome.clone(),
            Kind::Delete(i) => self.deletes[i].outcome = outcome.clone(),
        }
        outcome
    }

    /// Marks send `i` acknowledged by `reply` (201, or 200 for a retry).
    fn acked_send(&mut self, i: usize, reply: &Reply) {
        let Reply::Answer(_, body) = reply else {
            unreachable!("acknowledged without an answer")
        };
        let id = uuid(&body["message_id"]);
        let rec = &mut self.sends[i];
        rec.outcome = Outcome::Acked;
        rec.message_id = Some(id);
        self.convs[rec.conv].acked.push((id, rec.side));
    }
}

fn uuid(v: &Value) -> Uuid {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a UUID: {v}"))
}

// ---------------------------------------------------------------------------------------
// The load.
// ---------------------------------------------------------------------------------------

struct Load {
    api: Api,
    users: Arc<Vec<User>>,
    ledger: Arc<Mutex<Ledger>>,
    round: u64,
    acked: AtomicUsize,
    kill_at: usize,
    reached: Notify,
    stop: AtomicBool,
}

/// One client: the commands of one side of one conversation, one at a time, until the
/// server is gone.
async fn client(load: Arc<Load>, c: usize, side: usize) {
    let worker = (c * 2 + side) as u64;
    let mut rng = StdRng::seed_from_u64(SEED ^ (load.round << 32) ^ worker);
    let mut n = 0;
    while !load.stop.load(Ordering::SeqCst) {
        n += 1;
        let name = format!("r{}-c{c}-s{side}-{n}", load.round);
        let planned =
            load.ledger
                .lock()
                .expect("ledger")
                .plan(&load.users, &mut rng, &name, c, side);
        let reply = load
            .api
            .request(
                planned.method.clone(),
                &planned.path,
                Some(&planned.token),
                planned.body.as_ref(),
            )
            .await;
        if let (Kind::Send(_), Reply::Answer(status, body)) = (planned.kind, &reply)
            && status.is_success()
        {
            assert_eq!(*status, StatusCode::CREATED, "a first send: {body}");
        }
        let outcome = load
            .ledger
            .lock()
            .expect("ledger")
            .record(planned.kind, &reply);
        match outcome {
            Outcome::Acked => {
                if load.acked.fetch_add(1, Ordering::SeqCst) + 1 == load.kill_at {
                    load.reached.notify_one();
                }
            }
            // The server is gone (or failing): this client stops.
            Outcome::Unknown(_) => break,
            Outcome::Refused(_) if matches!(reply, Reply::NotConnected(_)) => break,
            Outcome::Refused(_) => {}
        }
    }
}

/// Runs the clients until `kill_at` commands were acknowledged in this round, kills the
/// server while they are still sending, and waits for every client to stop.
async fn load_and_kill(
    server: &mut Server,
    users: &Arc<Vec<User>>,
    ledger: &Arc<Mutex<Ledger>>,
    round: u64,
    kill_at: usize,
) {
    let convs = ledger.lock().expect("ledger").convs.len();
    let load = Arc::new(Load {
        api: Api::new(&server.base()),
        users: users.clone(),
        ledger: ledger.clone(),
        round,
        acked: AtomicUsize::new(0),
        kill_at,
        reached: Notify::new(),
        stop: AtomicBool::new(false),
    });
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..convs {
        for side in 0..2 {
            clients.spawn(client(load.clone(), c, side));
        }
    }
    tokio::select! {
        () = load.reached.notified() => {}
        Some(stopped) = clients.join_next() => {
            stopped.expect("a client panicked");
            panic!(
                "round {round}: a client stopped before the kill, after {} acknowledged \
                 commands: {:?}\n{}",
                load.acked.load(Ordering::SeqCst),
                ledger.lock().expect("ledger").a_failure(),
                server.log_text()
            );
        }
        () = tokio::time::sleep(STARTUP) => {
            panic!(
                "round {round}: only {} of {kill_at} commands acknowledged; one failure: {:?}\n{}",
                load.acked.load(Ordering::SeqCst),
                ledger.lock().expect("ledger").a_failure(),
                server.log_text()
            );
        }
    }
    server.kill();
    load.stop.store(true, Ordering::SeqCst);
    while let Some(stopped) = clients.join_next().await {
        stopped.expect("a client panicked");
    }
}

// ---------------------------------------------------------------------------------------
// What the server holds.
// ---------------------------------------------------------------------------------------

/// A message of a history, as one participant sees it.
#[derive(Debug, Clone)]
struct Seen {
    id: Uuid,
    seq: i64,
    sender: Uuid,
    recipient: Uuid,
    text: Option<String>,
    status: String,
    deleted: Option<String>,
    client_msg_id: Option<String>,
}

impl Seen {
    fn parse(m: &Value, conversation: Uuid) -> Seen {
        assert_eq!(uuid(&m["conversation_id"]), conversation, "{m}");
        Seen {
            id: uuid(&m["message_id"]),
            seq: m["seq"].as_i64().unwrap_or_else(|| panic!("seq in {m}")),
            sender: uuid(&m["sender_id"]),
            recipient: uuid(&m["recipient_id"]),
            text: m["text"].as_str().map(str::to_owned),
            status: m["status"].as_str().expect("status").to_owned(),
            deleted: m["deleted"].as_str().map(str::to_owned),
            client_msg_id: m["client_msg_id"].as_str().map(str::to_owned),
        }
    }

    fn tombstone(&self) -> bool {
        self.deleted.as_deref() == Some("for_everyone")
    }
}

/// Every history, both sides, and every unread count.
struct Snapshot {
    /// Per conversation, per side: the whole history that side sees, oldest first.
    views: Vec<[Vec<Seen>; 2]>,
    /// Per conversation, per side: `unread_count` from `GET /v1/conversations` (`None`:
    /// the conversation is not listed).
    unread: Vec<[Option<u64>; 2]>,
}

async fn history(api: &Api, user: &User, conv: Uuid, min_position: Option<&str>) -> Vec<Seen> {
    let mut all: Vec<Seen> = Vec::new();
    let mut page = "since=1970-01-01T00:00:00Z".to_owned();
    loop {
        let path = format!("/v1/conversations/{conv}/messages?limit=200&{page}");
        let body = api.get_at(&path, &user.token, min_position).await;
        let items = body["items"].as_array().expect("items");
        all.extend(items.iter().map(|m| Seen::parse(m, conv)));
        match body["next"].as_str() {
            Some(next) if !items.is_empty() => page = format!("after={next}"),
            _ => return all,
        }
    }
}

async fn snapshot(
    api: &Api,
    users: &[User],
    ledger: &Mutex<Ledger>,
    min_position: Option<&str>,
) -> Snapshot {
    let convs: Vec<(Uuid, [usize; 2])> = ledger
        .lock()
        .expect("ledger")
        .convs
        .iter()
        .map(|c| (c.id, c.users))
        .collect();
    let mut lists = HashMap::new();
    for (u, user) in users.iter().enumerate() {
        let body = api
            .get_at("/v1/conversations?limit=200", &user.token, min_position)
            .await;
        assert!(body["next"].is_null(), "one page: {body}");
        for item in body["items"].as_array().expect("items") {
            let unread = item["unread_count"].as_u64().expect("unread_count");
            lists.insert((u, uuid(&item["conversation_id"])), unread);
        }
    }
    let mut snap = Snapshot {
        views: Vec::new(),
        unread: Vec::new(),
    };
    for (id, members) in convs {
        let mut views: [Vec<Seen>; 2] = Default::default();
        for side in 0..2 {
            views[side] = history(api, &users[members[side]], id, min_position).await;
        }
        snap.views.push(views);
        snap.unread
            .push(members.map(|u| lists.get(&(u, id)).copied()));
    }
    snap
}

// ---------------------------------------------------------------------------------------
// The checks.
// ---------------------------------------------------------------------------------------

/// Checks what the server holds against the record. `exact`: every command was retried
/// until acknowledged, so the whole state follows from the record.
fn check(ledger: &Ledger, users: &[User], snap: &Snapshot, exact: bool, when: &str) {
    let mut failures: Vec<String> = Vec::new();
    let mut fail = |f: String| failures.push(f);
    if exact {
        let open = ledger.outcomes().filter(|o| **o != Outcome::Acked).count();
        assert_eq!(open, 0, "{when}: commands left unacknowledged");
    }
    for (c, conv) in ledger.convs.iter().enumerate() {
        let uid = conv.users.map(|u| users[u].id);
        let views = &snap.views[c];
        let mut id_to_sender_view: HashMap<Uuid, &Seen> = HashMap::new();
        let mut by_cmid: [HashMap<&str, Vec<&Seen>>; 2] = Default::default();
        let mut seqs = Vec::new();
        for side in 0..2 {
            let mut last_seq = 0;
            let mut ids = HashSet::new();
            for m in &views[side] {
                if m.seq <= last_seq {
                    fail(format!(
                        "conv {c} side {side}: seq {} after {last_seq}",
                        m.seq
                    ));
                }
                last_seq = m.seq;
                if !ids.insert(m.id) {
                    fail(format!("conv {c} side {side}: message {} twice", m.id));
                }
                let from = if m.sender == uid[0] { 0 } else { 1 };
                if m.sender != uid[from] || m.recipient != uid[1 - from] {
                    fail(format!("conv {c}: {m:?} is not between its two users"));
                }
                if from == side {
                    // The sender's view holds every message it sent (it hides none).
                    seqs.push(m.seq);
                    id_to_sender_view.insert(m.id, m);
                    match &m.client_msg_id {
                        Some(cmid) => by_cmid[side].entry(cmid.as_str()).or_default().push(m),
                        None => fail(format!("conv {c}: own message without client_msg_id {m:?}")),
                    }
                } else if m.client_msg_id.is_some() {
                    fail(format!("conv {c}: the peer's client_msg_id shown: {m:?}"));
                }
            }
        }
        seqs.sort_unstable();
        if seqs != (1..=seqs.len() as i64).collect::<Vec<_>>() {
            fail(format!("conv {c}: seqs are not 1..=N: {seqs:?}"));
        }
        // The recipient sees each of the peer's messages as the sender does.
        for side in 0..2 {
            for m in views[side].iter().filter(|m| m.sender != uid[side]) {
                match id_to_sender_view.get(&m.id) {
                    Some(o)
                        if o.seq == m.seq
                            && o.text == m.text
                            && o.deleted == m.deleted
                            && o.status == m.status => {}
                    other => fail(format!("conv {c}: recipient sees {m:?}, sender {other:?}")),
                }
            }
        }

        // Sends: exactly once if acknowledged, at most once if in flight, never if refused.
        let mut sent_cmids: [HashSet<&str>; 2] = Default::default();
        for rec in ledger.sends.iter().filter(|s| s.conv == c) {
            sent_cmids[rec.side].insert(&rec.client_msg_id);
            let found = by_cmid[rec.side]
                .get(rec.client_msg_id.as_str())
                .map_or(&[][..], Vec::as_slice);
            let allowed = match rec.outcome {
                Outcome::Acked => 1..=1,
                Outcome::Unknown(_) => 0..=1,
                Outcome::Refused(_) => 0..=0,
            };
            if !allowed.contains(&found.len()) {
                fail(format!(
                    "conv {c}: send {} ({:?}) stored {} times: {found:?}",
                    rec.client_msg_id,
                    rec.outcome,
                    found.len()
                ));
            }
            if let [m] = found {
                if rec.message_id.is_some_and(|id| id != m.id) {
                    fail(format!(
                        "conv {c}: acknowledged as {:?}, stored as {m:?}",
                        rec.message_id
                    ));
                }
                if !m.tombstone() && m.text.as_deref() != Some(rec.text.as_str()) {
                    fail(format!("conv {c}: sent {:?}, stored {m:?}", rec.text));
                }
            }
        }
        for side in 0..2 {
            for (cmid, found) in &by_cmid[side] {
                if !sent_cmids[side].contains(cmid) {
                    fail(format!("conv {c}: a message no client sent: {found:?}"));
                }
            }
        }

        // Deletes for everyone and for me.
        let mut tombstones_asked = HashSet::new();
        let mut hides_asked: [HashSet<Uuid>; 2] = Default::default();
        for rec in ledger.deletes.iter().filter(|d| d.conv == c) {
            let Some(m) = id_to_sender_view.get(&rec.message_id) else {
                fail(format!("conv {c}: the target of {rec:?} is not stored"));
                continue;
            };
            let done = match rec.scope {
                Scope::Everyone => m.tombstone() && m.text.is_none(),
                Scope::Me => !views[rec.side].iter().any(|v| v.id == rec.message_id),
            };
            let asked = match rec.scope {
                Scope::Everyone => &mut tombstones_asked,
                Scope::Me => &mut hides_asked[rec.side],
            };
            if !rec.outcome.refused() {
                asked.insert(rec.message_id);
            }
            match (&rec.outcome, done) {
                (Outcome::Acked, false) => fail(format!("conv {c}: acknowledged {rec:?} lost")),
                (Outcome::Refused(_), true) => fail(format!("conv {c}: refused {rec:?} done")),
                _ => {}
            }
        }
        for m in id_to_sender_view.values() {
            if m.tombstone() != m.deleted.is_some() || m.tombstone() == m.text.is_some() {
                fail(format!("conv {c}: half a tombstone: {m:?}"));
            }
            if m.tombstone() && !tombstones_asked.contains(&m.id) {
                fail(format!("conv {c}: deleted, but nobody asked: {m:?}"));
            }
        }
        for side in 0..2 {
            for m in id_to_sender_view.values().filter(|m| m.sender != uid[side]) {
                let visible = views[side].iter().any(|v| v.id == m.id);
                if !visible && !hides_asked[side].contains(&m.id) {
                    fail(format!(
                        "conv {c} side {side}: hidden, but nobody asked: {m:?}"
                    ));
                }
            }
        }

        // Read markers and unread counts, per reader.
        for side in 0..2 {
            let seq_of = |id: &Uuid| id_to_sender_view.get(id).map(|m| m.seq);
            let (mut lo, mut hi) = (0, 0);
            for rec in ledger
                .reads
                .iter()
                .filter(|r| r.conv == c && r.side == side)
            {
                let Some(seq) = seq_of(&rec.up_to) else {
                    fail(format!("conv {c}: the up_to of {rec:?} is not stored"));
                    continue;
                };
                if rec.outcome == Outcome::Acked {
                    lo = lo.max(seq);
                }
                if !rec.outcome.refused() {
                    hi = hi.max(seq);
                }
            }
            // The peer's messages, as the peer sees them: their status is this side's marker.
            let mut theirs: Vec<&Seen> = id_to_sender_view
                .values()
                .copied()
                .filter(|m| m.sender != uid[side])
                .collect();
            theirs.sort_by_key(|m| m.seq);
            let mut unread_seen = false;
            for m in &theirs {
                let read = m.status == "read";
                if read && unread_seen {
                    fail(format!(
                        "conv {c} side {side}: read after an unread message: {m:?}"
                    ));
                }
                unread_seen |= !read;
                if m.seq <= lo && !read {
                    fail(format!(
                        "conv {c} side {side}: acknowledged read marker at seq {lo} lost: {m:?}"
                    ));
                }
                if m.seq > hi && read {
                    fail(format!(
                        "conv {c} side {side}: read beyond any read command (seq {hi}): {m:?}"
                    ));
                }
            }
            // Unread, from the history the reader sees.
            let by_status = views[side]
                .iter()
                .filter(|m| m.sender != uid[side] && !m.tombstone() && m.status != "read")
                .count() as u64;
            let listed = snap.unread[c][side];
            let listed_or_zero = listed.unwrap_or(0);
            if listed.is_none() && !views[side].is_empty() {
                fail(format!(
                    "conv {c} side {side}: not in GET /v1/conversations"
                ));
            }
            if listed_or_zero != by_status {
                fail(format!(
                    "conv {c} side {side}: unread_count {listed_or_zero}, history shows {by_status}"
                ));
            }
            if exact {
                // Unread, from the record alone: the peer's messages after the furthest
                // up_to, less those deleted for everyone or hidden by the reader.
                let expected = theirs
                    .iter()
                    .filter(|m| {
                        m.seq > hi
                            && !tombstones_asked.contains(&m.id)
                            && !hides_asked[side].contains(&m.id)
                    })
                    .count() as u64;
                if listed_or_zero != expected {
                    fail(format!(
                        "conv {c} side {side}: unread_count {listed_or_zero}, expected {expected}"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{when}: {} failures:\n{}",
        failures.len(),
        failures
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Retries every unacknowledged send at once, all together, as soon as the restarted server
/// listens and before `/readyz`: the `client_msg_id` dedupe must hold while the read models
/// are still catching up (commands wait for that, or answer 503 `not_caught_up`, retried
/// here). Returns the `min_position` that covers every answer, and how many answered 200
/// (stored before the kill).
async fn retry_sends_racing_startup(
    api: &Api,
    users: &[User],
    ledger: &Mutex<Ledger>,
) -> (Option<String>, usize) {
    let sends: Vec<_> = {
        let l = ledger.lock().expect("ledger");
        (0..l.sends.len())
            .filter(|&i| l.sends[i].outcome != Outcome::Acked)
            .map(|i| {
                let s = &l.sends[i];
                let conv = &l.convs[s.conv];
                let sender = users[conv.users[s.side]].clone();
                let path = format!(
                    "/v1/conversations/direct/{}/messages",
                    users[conv.users[1 - s.side]].id
                );
                let body = json!({ "text": s.text, "client_msg_id": s.client_msg_id });
                (i, sender, path, body)
            })
            .collect()
    };
    let deadline = Instant::now() + STARTUP;
    let replies =
        futures::future::join_all(sends.into_iter().map(|(i, sender, path, body)| async move {
            loop {
                let reply = api
                    .request(Method::POST, &path, Some(&sender.token), Some(&body))
                    .await;
                match &reply {
                    Reply::Answer(StatusCode::OK | StatusCode::CREATED, _) => return (i, reply),
                    Reply::Answer(StatusCode::SERVICE_UNAVAILABLE, _)
                        if Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    _ => panic!("retrying {body} during the start-up: {reply:?}"),
                }
            }
        }))
        .await;
    let mut l = ledger.lock().expect("ledger");
    let (mut positions, mut were_stored) = (Vec::new(), 0);
    for (i, reply) in replies {
        if let Reply::Answer(status, body) = &reply {
            were_stored += usize::from(*status == StatusCode::OK);
            positions.push(body["position"].as_str().expect("position").to_owned());
        }
        l.acked_send(i, &reply);
    }
    (merge_positions(&positions), were_stored)
}

/// Retries every command not acknowledged yet: a send with its `client_msg_id` returns the
/// stored message (200) if it was stored and stores it (201) if not; a delete for everyone
/// already done changes nothing (`position: null`); a hide already done is 404; a read
/// marker is recorded again. Returns the `min_position` that covers every answer, and how
/// many of the retried sends had been stored.
async fn retry_unacknowledged(
    api: &Api,
    users: &[User],
    ledger: &Mutex<Ledger>,
    snap: &Snapshot,
) -> (Option<String>, usize) {
    let mut positions: Vec<String> = Vec::new();
    let mut were_stored = 0;
    let (sends, deletes, reads) = {
        let l = ledger.lock().expect("ledger");
        let sends: Vec<_> = (0..l.sends.len())
            .filter(|&i| l.sends[i].outcome != Outcome::Acked)
            .map(|i| {
                let s = &l.sends[i];
                let conv = &l.convs[s.conv];
                (
                    i,
                    s.conv,
                    s.side,
                    users[conv.users[s.side]].clone(),
                    users[conv.users[1 - s.side]].id,
                    s.client_msg_id.clone(),
                    s.text.clone(),
                )
            })
            .collect();
        let deletes: Vec<_> = (0..l.deletes.len())
            .filter(|&i| l.deletes[i].outcome != Outcome::Acked)
            .map(|i| {
                let d = &l.deletes[i];
                (
                    i,
                    d.conv,
                    d.side,
                    d.message_id,
                    d.scope,
                    users[l.convs[d.conv].users[d.side]].clone(),
                )
            })
            .collect();
        let reads: Vec<_> = (0..l.reads.len())
            .filter(|&i| l.reads[i].outcome != Outcome::Acked)
            .map(|i| {
                let r = &l.reads[i];
                let conv = &l.convs[r.conv];
                (i, conv.id, r.up_to, users[conv.users[r.side]].clone())
            })
            .collect();
        (sends, deletes, reads)
    };
    for (i, c, side, sender, peer, cmid, text) in sends {
        let stored = snap.views[c][side]
            .iter()
            .find(|m| m.client_msg_id.as_deref() == Some(cmid.as_str()))
            .map(|m| m.id);
        let reply = api
            .request(
                Method::POST,
                &format!("/v1/conversations/direct/{peer}/messages"),
                Some(&sender.token),
                Some(&json!({ "text": text, "client_msg_id": cmid })),
            )
            .await;
        match (&reply, stored) {
            (Reply::Answer(StatusCode::OK, body), Some(id)) if uuid(&body["message_id"]) == id => {}
            (Reply::Answer(StatusCode::CREATED, _), None) => {}
            _ => panic!("retrying send {cmid} (stored as {stored:?}): {reply:?}"),
        }
        were_stored += usize::from(stored.is_some());
        if let Reply::Answer(_, body) = &reply {
            positions.push(body["position"].as_str().expect("position").to_owned());
        }
        ledger.lock().expect("ledger").acked_send(i, &reply);
    }
    for (i, c, side, message_id, scope, actor) in deletes {
        let path = format!("/v1/messages/{message_id}?scope={}", scope.param());
        let views = &snap.views[c];
        match scope {
            Scope::Everyone => {
                let done = views[side]
                    .iter()
                    .any(|m| m.id == message_id && m.tombstone());
                let body = api
                    .expect(
                        Method::DELETE,
                        &path,
                        Some(&actor.token),
                        None,
                        StatusCode::OK,
                    )
                    .await;
                assert_eq!(
                    body["position"].is_null(),
                    done,
                    "retrying the delete of {message_id} (done before: {done}): {body}"
                );
                if let Some(p) = body["position"].as_str() {
                    positions.push(p.to_owned());
                }
            }
            Scope::Me => {
                let done = !views[side].iter().any(|m| m.id == message_id);
                let want = if done {
                    StatusCode::NOT_FOUND
                } else {
                    StatusCode::OK
                };
                let body = api
                    .expect(Method::DELETE, &path, Some(&actor.token), None, want)
                    .await;
                if let Some(p) = body["position"].as_str() {
                    positions.push(p.to_owned());
                }
            }
        }
        ledger.lock().expect("ledger").deletes[i].outcome = Outcome::Acked;
    }
    for (i, conv, up_to, reader) in reads {
        let body = api
            .expect(
                Method::POST,
                &format!("/v1/conversations/{conv}/read"),
                Some(&reader.token),
                Some(&json!({ "up_to": up_to })),
                StatusCode::OK,
            )
            .await;
        positions.push(body["position"].as_str().expect("position").to_owned());
        ledger.lock().expect("ledger").reads[i].outcome = Outcome::Acked;
    }
    (merge_positions(&positions), were_stored)
}

/// The furthest of `positions` in each partition, as one `min_position`.
fn merge_positions(positions: &[String]) -> Option<String> {
    let mut furthest: HashMap<u64, u64> = HashMap::new();
    for p in positions {
        let (partition, offset) = p.split_once(':').expect("partition:offset");
        let (partition, offset) = (
            partition.parse().expect("partition"),
            offset.parse().expect("offset"),
        );
        let at = furthest.entry(partition).or_insert(offset);
        *at = (*at).max(offset);
    }
    let mut parts: Vec<_> = furthest.into_iter().collect();
    parts.sort_unstable();
    (!parts.is_empty()).then(|| {
        parts
            .iter()
            .map(|(p, o)| format!("{p}:{o}"))
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// Counts of this round's outcomes, for the test's output.
fn tally(ledger: &Ledger, round: u64) -> String {
    let prefix = format!("r{round}-");
    let sends: Vec<_> = ledger
        .sends
        .iter()
        .filter(|s| s.client_msg_id.starts_with(&prefix))
        .collect();
    let count = |f: &dyn Fn(&Outcome) -> bool| sends.iter().filter(|s| f(&s.outcome)).count();
    format!(
        "round {round}: {} sends ({} acknowledged, {} refused, {} unknown); \
         all rounds: {} reads, {} deletes",
        sends.len(),
        count(&|o| *o == Outcome::Acked),
        count(&|o| o.refused()),
        count(&|o| matches!(o, Outcome::Unknown(_))),
        ledger.reads.len(),
        ledger.deletes.len()
    )
}

fn unknown_count(ledger: &Ledger) -> usize {
    ledger
        .outcomes()
        .filter(|o| matches!(o, Outcome::Unknown(_)))
        .count()
}

/// The analytics rollups ("exact under restarts") count every stored message and every
/// friendship once, across the crashes: polled until they reach the expected totals, and
/// failed at once if they pass them.
async fn check_analytics(api: &Api, user: &User, sends: u64, convs: u64, friendships: u64) {
    let token = missive()
        .args(["token", "--admin", "--jwt-secret", JWT_SECRET])
        .arg(user.id.to_string())
        .output()
        .expect("missive token runs");
    assert!(token.status.success(), "{token:?}");
    let token = String::from_utf8(token.stdout).expect("UTF-8");
    let now = chrono::Utc::now();
    let path = format!(
        "/v1/admin/analytics?from={}&to={}",
        (now - chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ"),
        (now + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ"),
    );
    let want = json!({
        "messages": sends,
        "conversations_started": convs,
        "friend_requests": friendships,
        "friend_accepts": friendships,
    });
    let deadline = Instant::now() + STARTUP;
    loop {
        let report = api.get_at(&path, token.trim(), None).await;
        let totals = &report["totals"];
        let got = json!({
            "messages": totals["messages"],
            "conversations_started": totals["conversations_started"],
            "friend_requests": totals["friend_requests"],
            "friend_accepts": totals["friend_accepts"],
        });
        if got == want {
            return;
        }
        let counted = totals["messages"].as_u64().unwrap_or(0);
        assert!(
            counted <= sends && Instant::now() < deadline,
            "analytics totals {got}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_commands_survive_sigkill_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let mut starts = 0;
    let launch = Launch {
        data_dir: &data_dir,
        logs: dir.path(),
        jwt_secret: JWT_SECRET,
        deadline: STARTUP,
    };
    let mut server = launch.start(starts).await;
    let api = Api::new(&server.base());

    // Eight users; friendships along a ring and its diagonals: twelve conversations.
    let mut users = Vec::new();
    for i in 0..USERS {
        let body = api
            .expect(
                Method::POST,
                "/v1/users",
                None,
                Some(&json!({ "username": format!("crash{i}") })),
                StatusCode::CREATED,
            )
            .await;
        users.push(User {
            id: uuid(&body["id"]),
            token: body["token"].as_str().expect("token").to_owned(),
        });
    }
    let pairs: Vec<[usize; 2]> = (0..USERS)
        .map(|i| [i, (i + 1) % USERS])
        .chain((0..USERS / 2).map(|i| [i, i + USERS / 2]))
        .collect();
    let pairs_count = pairs.len() as u64;
    let mut ledger = Ledger::default();
    for [a, b] in pairs {
        let (ua, ub) = (&users[a], &users[b]);
        api.expect(
            Method::POST,
            &format!("/v1/friends/{}", ub.id),
            Some(&ua.token),
            None,
            StatusCode::OK,
        )
        .await;
        let body = api
            .expect(
                Method::POST,
                &format!("/v1/friends/{}/accept", ua.id),
                Some(&ub.token),
                None,
                StatusCode::OK,
            )
            .await;
        assert_eq!(body["relation"], "friend", "{body}");
        ledger.convs.push(Conv {
            id: missive_events::ids::direct_conversation_id(ua.id, ub.id),
            users: [a, b],
            acked: Vec::new(),
            delete_tried: HashSet::new(),
            hide_tried: Default::default(),
            read_tried: Default::default(),
        });
    }
    let users = Arc::new(users);
    let ledger = Arc::new(Mutex::new(ledger));

    for round in 1..=ROUNDS {
        let kill_at = StdRng::seed_from_u64(SEED ^ round).random_range(300..500);
        load_and_kill(&mut server, &users, &ledger, round, kill_at).await;
        let in_flight = unknown_count(&ledger.lock().expect("ledger"));
        eprintln!(
            "killed after {kill_at} acknowledged commands, {in_flight} in flight; {}",
            tally(&ledger.lock().expect("ledger"), round)
        );
        assert!(
            in_flight > 0,
            "the kill caught no command in flight: nothing about in-flight commands was tested"
        );

        starts += 1;
        server = launch.listening(starts).await;
        let api = Api::new(&server.base());
        let mut early = None;
        if round == 2 {
            // This time the sends are retried before the read models are known to be ready;
            // the checks below then ask each to be there exactly once.
            let (at, were_stored) = retry_sends_racing_startup(&api, &users, &ledger).await;
            eprintln!(
                "round {round}: {were_stored} sends retried during the start-up had been stored"
            );
            early = at;
        }
        server.ready().await;
        let after_crash = snapshot(&api, &users, &ledger, early.as_deref()).await;
        check(
            &ledger.lock().expect("ledger"),
            &users,
            &after_crash,
            false,
            &format!("round {round}, right after the restart"),
        );
        let (at, were_stored) = retry_unacknowledged(&api, &users, &ledger, &after_crash).await;
        eprintln!(
            "round {round}: {were_stored} of the sends retried after the checks had been stored"
        );
        let settled = snapshot(&api, &users, &ledger, at.as_deref()).await;
        check(
            &ledger.lock().expect("ledger"),
            &users,
            &settled,
            true,
            &format!("round {round}, after the retries"),
        );
    }

    let (sends, convs) = {
        let l = ledger.lock().expect("ledger");
        (l.sends.len() as u64, l.convs.len() as u64)
    };
    let api = Api::new(&server.base());
    check_analytics(&api, &users[0], sends, convs, pairs_count).await;

    // The read models, projected across two crashes, equal a rebuild from the log.
    let verify = tokio::task::spawn_blocking({
        let data_dir = data_dir.clone();
        move || {
            missive()
                .args(["replay", "--verify", "--data-dir"])
                .arg(&data_dir)
                .env("RUST_LOG", "warn")
                .output()
                .expect("missive replay --verify runs")
        }
    })
    .await
    .expect("joined");
    assert!(
        verify.status.success(),
        "replay --verify: {}\n{}\n{}",
        verify.status,
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}
