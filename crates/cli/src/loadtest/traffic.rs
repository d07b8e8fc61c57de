//! The traffic mode: simulated users exchanging direct messages, measured.
//!
//! Setup registers the users, befriends them along [`plan::friendship_graph`] (a request and
//! an accept per pair, through the API), opens one WebSocket session per user (held through
//! the run and read continuously, so pushes can be timed) and sends one *seed* message per
//! conversation, waiting until every seed reached its recipient's session: reads and deletes
//! then always have a message to act on.
//!
//! The run issues operations drawn by [`Chooser`]: in the open model at fixed instants
//! (latency measured from the instant an operation was due, so a slow server cannot hide its
//! queueing by slowing the load down; an operation due while `max_in_flight` are in flight is
//! not issued and counts as `dropped: too many in flight`), in the closed model from
//! `concurrency` workers back to back. Targets:
//! - *send*: one side of the conversation to the other, with a fresh `client_msg_id`;
//! - *history*: a page (20) of the conversation, newest first;
//! - *read*: the acting user's read marker up to the latest message their session received
//!   in that conversation (the other side's when they received none);
//! - *delete*: one of the acting user's own messages that its recipient has received (so the
//!   read models hold it), for everyone or for themselves; from another conversation when
//!   this one has none left.
//!
//! End to end: every send is matched by message id with its push to the recipient's session
//! (time from the send's acknowledgement to the push); one send in `e2e_sample` is followed
//! by a history reader on the recipient's side (`since` the message's time, with
//! `min_position` so the server answers once its read models hold it), timed from the
//! acknowledgement until the message is in the answer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::plan::{self, Chooser, Mix, Op, OpKind};
use super::report::{Measured, Model, OpReport, Setup, TrafficReport};
use super::{HEARTBEAT, Socket, kind_of, metric, open_with, run_counted, ws_url};

/// The longest wait for one HTTP answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages per history page read by the *history* operation.
const HISTORY_PAGE: usize = 20;
/// How long a sampled send may take to show in the recipient's history.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long, after the run, pushes still due may take to arrive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the seed messages may take to reach their recipients.
const SEED_TIMEOUT: Duration = Duration::from_secs(30);

/// How much the run does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// This many operations.
    Count(u64),
    /// Operations due (open model) or started (closed model) within this time.
    For(Duration),
}

/// What the traffic mode does.
#[derive(Debug, Clone)]
pub struct TrafficPlan {
    /// The server's base URL, `http://host:port`.
    pub target: String,
    pub users: usize,
    pub friends_per_user: usize,
    pub load: Load,
    pub model: Model,
    pub mix: Mix,
    /// The Zipf exponent over conversations.
    pub zipf: f64,
    pub seed: u64,
    /// One send in this many is followed in the recipient's history; 0: none.
    pub e2e_sample: u64,
    /// Requests in flight at once during setup.
    pub setup_concurrency: usize,
}

struct User {
    id: Uuid,
    token: String,
}

struct Conversation {
    id: Uuid,
    /// Indexes into the users; the first sends the seed message.
    users: [usize; 2],
}

/// What the sessions have seen, which reads and deletes target.
#[derive(Default)]
struct Live {
    /// By conversation and side: the latest message (seq, id) that side received.
    latest: Vec<[Option<(i64, Uuid)>; 2]>,
    /// By conversation and side: that side's messages its peer received, not deleted yet.
    own: Vec<[Vec<Uuid>; 2]>,
    /// Messages whose recipient received them (a reconnect sends unread ones again).
    seen: HashSet<Uuid>,
    /// Sends acknowledged but not pushed yet, or pushed before their acknowledgement was read.
    waiting: HashMap<Uuid, Waiting>,
    to_websocket: Vec<Duration>,
    websocket_before_ack: u64,
}

enum Waiting {
    Acked(Instant),
    Pushed,
}

#[derive(Default)]
struct OpStats {
    count: u64,
    ok: u64,
    dropped: u64,
    latencies: Vec<Duration>,
}

#[derive(Default)]
struct Stats {
    ops: [OpStats; 4],
    errors: BTreeMap<String, u64>,
    to_history: Vec<Duration>,
}

/// Everything the operations, the sessions and the history readers share.
struct World {
    http: reqwest::Client,
    target: String,
    ws_url: String,
    /// Makes this run's `client_msg_id`s unique.
    tag: String,
    users: Vec<User>,
    conversations: Vec<Conversation>,
    conversation_by_id: HashMap<Uuid, usize>,
    chooser: Chooser,
    e2e_sample: u64,
    live: Mutex<Live>,
    stats: Mutex<Stats>,
    issued: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    probes: Mutex<JoinSet<()>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn uuid(value: &Value) -> Option<Uuid> {
    value.as_str()?.parse().ok()
}

/// Sends a request; its JSON answer, or the kind of failure (`send: HTTP 503 overloaded`).
async fn call(what: &str, request: reqwest::RequestBuilder) -> Result<Value, String> {
    let answer = request
        .send()
        .await
        .map_err(|e| format!("{what}: {}", kind_of(&e)))?;
    let status = answer.status();
    if !status.is_success() {
        let code = answer.json::<Value>().await.ok().and_then(|body| {
            body["error"]["code"]
                .as_str()
                .map(|code| format!(" {code}"))
        });
        return Err(format!(
            "{what}: HTTP {}{}",
            status.as_u16(),
            code.unwrap_or_default()
        ));
    }
    answer.json().await.map_err(|e| {
        if e.is_timeout() {
            format!("{what}: timeout")
        } else {
            format!("{what}: unreadable answer")
        }
    })
}

/// Fails with the setup's errors, if any.
fn setup_step(what: &str, errors: &BTreeMap<String, usize>) -> anyhow::Result<()> {
    if errors.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = errors.iter().map(|(k, n)| format!("{k} ({n})")).collect();
    anyhow::bail!("could not {what}: {}", list.join(", "))
}

/// Runs the traffic mode.
pub async fn traffic(plan: &TrafficPlan) -> anyhow::Result<TrafficReport> {
    anyhow::ensure!(plan.users >= 2, "--users must be at least 2");
    anyhow::ensure!(
        (1..plan.users).contains(&plan.friends_per_user),
        "--friends-per-user {} needs at least {} users (--users is {})",
        plan.friends_per_user,
        plan.friends_per_user + 1,
        plan.users
    );
    let target = plan.target.trim_end_matches('/').to_owned();
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let ready = http
        .get(format!("{target}/readyz"))
        .send()
        .await
        .with_context(|| format!("cannot reach {target}"))?;
    anyhow::ensure!(
        ready.status().is_success(),
        "{target} is not ready (GET /readyz answered {})",
        ready.status()
    );
    let mut setup = Setup::default();
    let mut errors = BTreeMap::new();
    let concurrency = plan.setup_concurrency.max(1);

    let run = Uuid::now_v7().simple().to_string();
    let tag = format!("lt{}", &run[run.len() - 8..]);
    let started = Instant::now();
    let users = run_counted(
        plan.users,
        concurrency,
        "registering users",
        &mut errors,
        |i| {
            let (http, target) = (&http, &target);
            let username = format!("{tag}_{i}");
            async move { super::register(http, target, &username).await }
        },
    )
    .await;
    setup.registration = started.elapsed();
    setup_step("register the users", &errors)?;
    let users: Vec<User> = users
        .into_iter()
        .map(|r| User {
            id: r.id,
            token: r.token,
        })
        .collect();

    let pairs = plan::friendship_graph(
        users.len(),
        plan.friends_per_user,
        &mut StdRng::seed_from_u64(plan.seed),
    );
    let started = Instant::now();
    run_counted(pairs.len(), concurrency, "befriending", &mut errors, |i| {
        let (a, b) = (&users[pairs[i].0], &users[pairs[i].1]);
        befriend(&http, &target, a, b)
    })
    .await;
    setup.befriending = started.elapsed();
    setup_step("befriend the users", &errors)?;

    let conversations: Vec<Conversation> = pairs
        .iter()
        .map(|&(a, b)| Conversation {
            id: missive_events::ids::direct_conversation_id(users[a].id, users[b].id),
            users: [a, b],
        })
        .collect();
    let world = Arc::new(World {
        ws_url: ws_url(&target),
        http: http.clone(),
        target: target.clone(),
        tag,
        chooser: Chooser::new(plan.seed, plan.mix, conversations.len(), plan.zipf),
        conversation_by_id: conversations
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id, i))
            .collect(),
        live: Mutex::new(Live {
            latest: vec![[None; 2]; conversations.len()],
            own: (0..conversations.len())
                .map(|_| Default::default())
                .collect(),
            ..Live::default()
        }),
        users,
        conversations,
        e2e_sample: plan.e2e_sample,
        stats: Mutex::default(),
        issued: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        probes: Mutex::new(JoinSet::new()),
    });

    // One session per user, read from now until the end.
    let (stop, stopped) = watch::channel(false);
    let started = Instant::now();
    let sessions = run_counted(
        world.users.len(),
        concurrency,
        "opening sessions",
        &mut errors,
        |u| {
            let (world, stopped) = (world.clone(), stopped.clone());
            async move {
                let (socket, _) = open_with(&world.ws_url, &world.users[u].token, |frame| {
                    world.on_frame(u, frame, Instant::now())
                })
                .await?;
                Ok(tokio::spawn(session(world, u, socket, stopped)))
            }
        },
    )
    .await;
    setup.opening = started.elapsed();
    setup.sessions = sessions.len();
    setup_step("open the WebSocket sessions", &errors)?;

    let started = Instant::now();
    run_counted(
        world.conversations.len(),
        concurrency,
        "seeding",
        &mut errors,
        |c| world.seed(c),
    )
    .await;
    setup_step("send the seed messages", &errors)?;
    let missing = world.wait_for_pushes(SEED_TIMEOUT).await;
    anyhow::ensure!(
        missing == 0,
        "{missing} of the {} seed messages did not reach their recipients' sessions within {} s",
        world.conversations.len(),
        SEED_TIMEOUT.as_secs()
    );
    setup.seeding = started.elapsed();
    setup.seed_messages = world.conversations.len();
    {
        let mut live = lock(&world.live);
        live.to_websocket.clear();
        live.websocket_before_ack = 0;
    }

    let sent = "missive_events_appended_total{event_type=\"MessageSent\",topic=\"messages\"}";
    let sent_before = metric(&http, &target, sent).await.ok().flatten();
    let start = Instant::now();
    let (stop_lag, lag_stopped) = watch::channel(false);
    let lag = tokio::spawn(sample_lag(http.clone(), target.clone(), start, lag_stopped));
    let ticker = tokio::spawn(tick(world.clone(), plan.load, start, stop_lag.subscribe()));

    match plan.model {
        Model::Open {
            rate,
            max_in_flight,
        } => open_model(&world, plan.load, rate, max_in_flight, start).await,
        Model::Closed { concurrency } => {
            closed_model(&world, plan.load, concurrency.max(1), start).await
        }
    }
    let run_time = start.elapsed();

    // Drain: the history readers, then the pushes still due.
    let mut probes = std::mem::take(&mut *lock(&world.probes));
    let joined = tokio::time::timeout(HISTORY_TIMEOUT + REQUEST_TIMEOUT, async {
        while probes.join_next().await.is_some() {}
    })
    .await;
    if joined.is_err() {
        world.error(format!("e2e history: {} readers unfinished", probes.len()));
    }
    let missing = world.wait_for_pushes(DRAIN_TIMEOUT).await;
    if missing > 0 {
        *lock(&world.stats)
            .errors
            .entry("ws: message never pushed to its recipient".into())
            .or_default() += missing;
    }
    let sent_after = metric(&http, &target, sent).await.ok().flatten();
    let _ = stop_lag.send(true);
    let lag = lag.await.unwrap_or_default();
    let _ = ticker.await;

    let _ = stop.send(true);
    for session in sessions {
        let _ = tokio::time::timeout(Duration::from_secs(10), session).await;
    }

    let mut stats = std::mem::take(&mut *lock(&world.stats));
    let live = std::mem::take(&mut *lock(&world.live));
    let ops = std::array::from_fn(|i| {
        let o = &mut stats.ops[i];
        OpReport {
            count: o.count,
            ok: o.ok,
            dropped: o.dropped,
            latency: Measured::of(std::mem::take(&mut o.latencies)),
        }
    });
    Ok(TrafficReport {
        model: plan.model,
        users: world.users.len(),
        friends_per_user: plan.friends_per_user,
        conversations: world.conversations.len(),
        mix: plan.mix,
        zipf: plan.zipf,
        seed: plan.seed,
        e2e_sample: plan.e2e_sample,
        run_time,
        ops,
        errors: stats.errors,
        to_websocket: Measured::of(live.to_websocket),
        websocket_before_ack: live.websocket_before_ack,
        to_history: Measured::of(stats.to_history),
        lag,
        server_messages_sent: sent_before.zip(sent_after).map(|(b, a)| a - b),
        setup,
    })
}

/// `a` asks `b` to be friends, `b` accepts.
async fn befriend(http: &reqwest::Client, target: &str, a: &User, b: &User) -> Result<(), String> {
    call(
        "befriend: request",
        http.post(format!("{target}/v1/friends/{}", b.id))
            .bearer_auth(&a.token),
    )
    .await?;
    let accepted = call(
        "befriend: accept",
        http.post(format!("{target}/v1/friends/{}/accept", a.id))
            .bearer_auth(&b.token),
    )
    .await?;
    if accepted["relation"] != "friend" {
        return Err(format!(
            "befriend: accept answered {}",
            accepted["relation"]
        ));
    }
    Ok(())
}

/// Issues operations at `rate` per second, each at its instant whatever the others do.
async fn open_model(
    world: &Arc<World>,
    load: Load,
    rate: f64,
    max_in_flight: usize,
    start: Instant,
) {
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let mut i: u64 = 0;
    loop {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        let finished = match load {
            Load::Count(n) => i >= n,
            Load::For(d) => due >= start + d,
        };
        if finished {
            break;
        }
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let op = world.chooser.op(i);
        world.issued.fetch_add(1, Ordering::Relaxed);
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let world = world.clone();
                tokio::spawn(async move {
                    let outcome = world.execute(op, i).await;
                    // From the instant it was due, not from when it could be sent.
                    world.record(op.kind, due.elapsed(), outcome);
                    drop(permit);
                });
            }
            Err(_) => world.drop_op(op.kind),
        }
        i += 1;
    }
    let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
}

/// `concurrency` workers, each issuing its next operation once the last one was answered.
async fn closed_model(world: &Arc<World>, load: Load, concurrency: usize, start: Instant) {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let (world, next) = (world.clone(), next.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let finished = match load {
                    Load::Count(n) => i >= n,
                    Load::For(d) => start.elapsed() >= d,
                };
                if finished {
                    break;
                }
                let op = world.chooser.op(i);
                world.issued.fetch_add(1, Ordering::Relaxed);
                let began = Instant::now();
                let outcome = world.execute(op, i).await;
                world.record(op.kind, began.elapsed(), outcome);
            }
        });
    }
    while workers.join_next().await.is_some() {}
}

/// Keeps the progress bar of the run current until `stop`.
async fn tick(world: Arc<World>, load: Load, start: Instant, mut stop: watch::Receiver<bool>) {
    // By operations done, or by time.
    let len = match load {
        Load::Count(n) => n as usize,
        Load::For(d) => d.as_millis() as usize,
    };
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("running              [{bar:40}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut every = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => break,
        }
        let done = world.done.load(Ordering::Relaxed);
        let in_flight = world.issued.load(Ordering::Relaxed).saturating_sub(done);
        let failed = world.failed.load(Ordering::Relaxed);
        let elapsed = start.elapsed();
        bar.set_position(match load {
            Load::Count(_) => done,
            Load::For(_) => elapsed.as_millis() as u64,
        });
        bar.set_message(format!(
            "{done} done, {failed} failed, {in_flight} in flight, {:.0} s",
            elapsed.as_secs_f64()
        ));
    }
    bar.finish_and_clear();
}

/// Samples the server's projector lag every second until `stop`, and once more then.
async fn sample_lag(
    http: reqwest::Client,
    target: String,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) -> Vec<(f64, f64)> {
    let mut series = Vec::new();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = every.tick() => false,
            _ = stop.changed() => true,
        };
        let at = start.elapsed().as_secs_f64();
        let sample = tokio::time::timeout(
            Duration::from_secs(2),
            metric(&http, &target, "missive_projector_lag"),
        )
        .await;
        if let Ok(Ok(Some(lag))) = sample {
            series.push((at, lag));
        }
        if stopping {
            return series;
        }
    }
}

/// Holds user `u`'s session: answers nothing, reads every frame, sends heartbeats, and opens
/// it again (counting why it closed) until `stop`.
async fn session(world: Arc<World>, u: usize, mut socket: Socket, mut stop: watch::Receiver<bool>) {
    loop {
        match world.hold(u, &mut socket, &mut stop).await {
            None => {
                let _ = tokio::time::timeout(Duration::from_secs(5), socket.close(None)).await;
                return;
            }
            Some(kind) => world.error(kind),
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            if *stop.borrow() {
                return;
            }
            tokio::time::sleep(backoff).await;
            let opened = open_with(&world.ws_url, &world.users[u].token, |frame| {
                world.on_frame(u, frame, Instant::now())
            })
            .await;
            match opened {
                Ok((reopened, _)) => {
                    socket = reopened;
                    break;
                }
                Err(kind) => world.error(format!("ws: re{kind}")),
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

impl World {
    fn error(&self, kind: String) {
        *lock(&self.stats).errors.entry(kind).or_default() += 1;
    }

    fn record(&self, kind: OpKind, latency: Duration, outcome: Result<(), String>) {
        {
            let mut stats = lock(&self.stats);
            let o = &mut stats.ops[kind.index()];
            o.count += 1;
            match outcome {
                Ok(()) => {
                    o.ok += 1;
                    o.latencies.push(latency);
                }
                Err(error) => {
                    *stats.errors.entry(error).or_default() += 1;
                    self.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    fn drop_op(&self, kind: OpKind) {
        {
            let mut stats = lock(&self.stats);
            stats.ops[kind.index()].dropped += 1;
            *stats
                .errors
                .entry("dropped: too many in flight".into())
                .or_default() += 1;
        }
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads frames until the session ends: `None` when asked to stop, else why it ended.
    async fn hold(
        &self,
        u: usize,
        socket: &mut Socket,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<String> {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.tick().await;
        loop {
            if *stop.borrow() {
                return None;
            }
            tokio::select! {
                _ = stop.changed() => {}
                _ = heartbeat.tick() => {
                    let ping = Message::Text(json!({ "type": "ping" }).to_string().into());
                    if socket.send(ping).await.is_err() {
                        return Some("ws: connection lost".into());
                    }
                }
                frame = socket.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        let at = Instant::now();
                        if let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) {
                            self.on_frame(u, &frame, at);
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.map_or(0, |f| u16::from(f.code));
                        return Some(format!("ws: closed {code}"));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Some("ws: connection lost".into()),
                },
            }
        }
    }

    /// A frame reached user `u`'s session at `at`: a message sent to them arrived.
    fn on_frame(&self, u: usize, frame: &Value, at: Instant) {
        if frame["type"] != "message" {
            return;
        }
        let m = &frame["message"];
        let (Some(id), Some(conversation), Some(recipient)) = (
            uuid(&m["message_id"]),
            uuid(&m["conversation_id"]),
            uuid(&m["recipient_id"]),
        ) else {
            return;
        };
        // The echo of the user's own message, or a conversation of another run.
        if recipient != self.users[u].id {
            return;
        }
        let Some(&c) = self.conversation_by_id.get(&conversation) else {
            return;
        };
        let side = usize::from(self.conversations[c].users[0] != u);
        let seq = m["seq"].as_i64().unwrap_or(0);
        let mut live = lock(&self.live);
        if !live.seen.insert(id) {
            return;
        }
        if live.latest[c][side].is_none_or(|(latest, _)| seq > latest) {
            live.latest[c][side] = Some((seq, id));
        }
        live.own[c][1 - side].push(id);
        match live.waiting.remove(&id) {
            Some(Waiting::Acked(acked)) => {
                let latency = at.saturating_duration_since(acked);
                live.to_websocket.push(latency);
            }
            Some(Waiting::Pushed) | None => {
                live.waiting.insert(id, Waiting::Pushed);
            }
        }
    }

    /// The server acknowledged the send of `id` at `at`.
    fn on_ack(&self, id: Uuid, at: Instant) {
        let mut live = lock(&self.live);
        match live.waiting.remove(&id) {
            Some(Waiting::Pushed) => {
                live.to_websocket.push(Duration::ZERO);
                live.websocket_before_ack += 1;
            }
            Some(Waiting::Acked(_)) | None => {
                live.waiting.insert(id, Waiting::Acked(at));
            }
        }
    }

    /// Waits up to `limit` for every acknowledged send to reach its recipient; how many did not.
    async fn wait_for_pushes(&self, limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        loop {
            let missing = lock(&self.live)
                .waiting
                .values()
                .filter(|w| matches!(w, Waiting::Acked(_)))
                .count() as u64;
            if missing == 0 || Instant::now() >= deadline {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.target)
    }

    /// The seed message of conversation `c`, from its first user to its second.
    async fn seed(&self, c: usize) -> Result<(), String> {
        let conversation = &self.conversations[c];
        let [from, to] = conversation.users;
        let answer = call(
            "seed",
            self.http
                .post(self.url(&format!(
                    "/v1/conversations/direct/{}/messages",
                    self.users[to].id
                )))
                .bearer_auth(&self.users[from].token)
                .json(&json!({
                    "text": format!("hello from load test user {from}"),
                    "client_msg_id": format!("{}-seed-{c}", self.tag),
                })),
        )
        .await?;
        let id = uuid(&answer["message_id"]).ok_or("seed: no message_id in the answer")?;
        self.on_ack(id, Instant::now());
        Ok(())
    }

    async fn execute(self: &Arc<Self>, op: Op, i: u64) -> Result<(), String> {
        match op.kind {
            OpKind::Send => self.send(op, i).await,
            OpKind::History => self.history(op).await,
            OpKind::Read => self.read(op).await,
            OpKind::Delete => self.delete(op).await,
        }
    }

    async fn send(self: &Arc<Self>, op: Op, i: u64) -> Result<(), String> {
        let conversation = &self.conversations[op.conversation];
        let side = usize::from(op.second);
        let (from, to) = (conversation.users[side], conversation.users[1 - side]);
        let answer = call(
            "send",
            self.http
                .post(self.url(&format!(
                    "/v1/conversations/direct/{}/messages",
                    self.users[to].id
                )))
                .bearer_auth(&self.users[from].token)
                .json(&json!({
                    "text": format!("load test message {i} from user {from} to user {to}"),
                    "client_msg_id": format!("{}-{i}", self.tag),
                })),
        )
        .await?;
        let acked = Instant::now();
        let id = uuid(&answer["message_id"]).ok_or("send: no message_id in the answer")?;
        self.on_ack(id, acked);
        if self.e2e_sample > 0 && i.is_multiple_of(self.e2e_sample) {
            let (Some(sent_at), Some(position)) =
                (answer["sent_at"].as_str(), answer["position"].as_str())
            else {
                return Err("send: no sent_at or position in the answer".into());
            };
            let probe = self.clone().follow(
                to,
                conversation.id,
                id,
                sent_at.to_owned(),
                position.to_owned(),
                acked,
            );
            lock(&self.probes).spawn(probe);
        }
        Ok(())
    }

    async fn history(&self, op: Op) -> Result<(), String> {
        let conversation = &self.conversations[op.conversation];
        let user = &self.users[conversation.users[usize::from(op.second)]];
        call(
            "history",
            self.http
                .get(self.url(&format!("/v1/conversations/{}/messages", conversation.id)))
                .query(&[("limit", HISTORY_PAGE)])
                .bearer_auth(&user.token),
        )
        .await?;
        Ok(())
    }

    async fn read(&self, op: Op) -> Result<(), String> {
        let c = op.conversation;
        let (side, up_to) = {
            let live = lock(&self.live);
            let first = usize::from(op.second);
            [first, 1 - first]
                .into_iter()
                .find_map(|side| live.latest[c][side].map(|(_, id)| (side, id)))
                .ok_or("read: nothing received yet")?
        };
        let conversation = &self.conversations[c];
        call(
            "read",
            self.http
                .post(self.url(&format!("/v1/conversations/{}/read", conversation.id)))
                .bearer_auth(&self.users[conversation.users[side]].token)
                .json(&json!({ "up_to": up_to })),
        )
        .await?;
        Ok(())
    }

    async fn delete(&self, op: Op) -> Result<(), String> {
        let (user, message) = {
            let mut live = lock(&self.live);
            let n = self.conversations.len();
            let first = usize::from(op.second);
            let mut found = None;
            'search: for c in (0..n).map(|k| (op.conversation + k) % n) {
                for side in [first, 1 - first] {
                    let own = &mut live.own[c][side];
                    if !own.is_empty() {
                        let at = ((op.pick * own.len() as f64) as usize).min(own.len() - 1);
                        found = Some((self.conversations[c].users[side], own.swap_remove(at)));
                        break 'search;
                    }
                }
            }
            found.ok_or("delete: nothing left to delete")?
        };
        let scope = if op.everyone { "everyone" } else { "me" };
        call(
            "delete",
            self.http
                .delete(self.url(&format!("/v1/messages/{message}")))
                .query(&[("scope", scope)])
                .bearer_auth(&self.users[user].token),
        )
        .await?;
        Ok(())
    }

    /// Reads the recipient's history until message `id` shows, and records how long after
    /// `acked` it did.
    async fn follow(
        self: Arc<Self>,
        recipient: usize,
        conversation: Uuid,
        id: Uuid,
        sent_at: String,
        position: String,
        acked: Instant,
    ) {
        let deadline = acked + HISTORY_TIMEOUT;
        let outcome = loop {
            match self
                .in_history(recipient, conversation, id, &sent_at, &position)
                .await
            {
                Ok(true) => break Ok(acked.elapsed()),
                // Not yet (or the server's own wait for its read models ran out): again.
                Ok(false) => {}
                Err(kind) if kind.contains("timeout") || kind.contains("HTTP 503") => {}
                Err(kind) => break Err(kind),
            }
            if Instant::now() >= deadline {
                break Err(format!(
                    "e2e history: not visible within {} s",
                    HISTORY_TIMEOUT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let mut stats = lock(&self.stats);
        match outcome {
            Ok(latency) => stats.to_history.push(latency),
            Err(kind) => *stats.errors.entry(kind).or_default() += 1,
        }
    }

    /// Whether the recipient's history holds `id`: read forward from the message's time, once
    /// the read models hold its position.
    async fn in_history(
        &self,
        recipient: usize,
        conversation: Uuid,
        id: Uuid,
        sent_at: &str,
        position: &str,
    ) -> Result<bool, String> {
        const PAGE: usize = 200;
        let url = self.url(&format!("/v1/conversations/{conversation}/messages"));
        let token = &self.users[recipient].token;
        let mut request = self.http.get(&url).bearer_auth(token).query(&[
            ("since", sent_at),
            ("min_position", position),
            ("limit", &PAGE.to_string()),
        ]);
        loop {
            let page = call("e2e history", request).await?;
            let items = page["items"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            if items.iter().any(|m| uuid(&m["message_id"]) == Some(id)) {
                return Ok(true);
            }
            let Some(last) = items.last().filter(|_| items.len() == PAGE) else {
                return Ok(false);
            };
            let after = last["message_id"].as_str().unwrap_or_default().to_owned();
            request = self
                .http
                .get(&url)
                .bearer_auth(token)
                .query(&[("after", after.as_str()), ("limit", &PAGE.to_string())]);
        }
    }
}
