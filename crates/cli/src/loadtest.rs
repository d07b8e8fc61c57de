//! `missive loadtest`: drives a running Missive over HTTP and WebSocket like real users.
//!
//! Two modes:
//! - *traffic* (the default): registers users, befriends them, holds one WebSocket session
//!   per user, then sends, reads history, marks read and deletes over a Zipf distribution of
//!   conversations, at a fixed rate (open model) or as fast as `--concurrency` workers go
//!   (closed model). It reports throughput and latency per operation, errors by kind, the
//!   time from a send's acknowledgement to the message's arrival on the recipient's
//!   WebSocket and in their history, and the server's projector lag over time.
//! - *connections* (`--connections N`): registers users, opens N WebSocket sessions and keeps
//!   them idle (heartbeats only) for `--duration`, then reports what they cost the server: its
//!   resident memory before the users registered, before the sessions opened and with them
//!   open (read from the server's own `process_resident_memory_bytes` metric), per session,
//!   and how long sessions took to open.
//!
//! # Layout
//! - this module: the flags, the connections mode, and what both modes share (registration,
//!   opening sessions, progress bars, percentiles, reading `/metrics`).
//! - [`plan`]: the traffic mode's choices without I/O: the mix, Zipf sampling, the friendship
//!   graph, the operation at each index of a run.
//! - [`traffic`]: the traffic mode's setup, sessions, schedulers and operations.
//! - [`report`]: the traffic mode's report, as a table and as JSON.

pub mod plan;
pub mod report;
pub mod traffic;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use plan::Mix;
use report::Model;
use traffic::{Load, TrafficPlan};

/// Flags of `missive loadtest`. Without `--connections` it runs the traffic mode.
#[derive(Debug, clap::Args)]
pub struct LoadtestArgs {
    /// The server's base URL.
    #[arg(
        long,
        env = "MISSIVE_LOADTEST_TARGET",
        default_value = "http://127.0.0.1:8080"
    )]
    pub target: String,
    /// Connections mode: open this many idle WebSocket sessions and measure their cost to the
    /// server (memory per session), instead of sending traffic.
    #[arg(long, env = "MISSIVE_LOADTEST_CONNECTIONS")]
    pub connections: Option<usize>,
    /// Users to register. Traffic mode: the simulated users, each holding one WebSocket
    /// session (default 100). Connections mode: sessions are spread over them (default: one
    /// session per user); at most --ws-max-sessions-per-user sessions per user are accepted by
    /// the server.
    #[arg(long, env = "MISSIVE_LOADTEST_USERS")]
    pub users: Option<usize>,
    /// Traffic mode: how long operations are issued (unless --count). Connections mode: how
    /// long to hold the sessions open before measuring. E.g. `10s`, `2m`, `500ms`.
    #[arg(long, env = "MISSIVE_LOADTEST_DURATION", default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Requests in flight at once while registering, befriending and opening sessions. Traffic
    /// mode without --rate: also the workers of the closed model, each issuing its next
    /// operation as soon as the last one is answered.
    #[arg(long, env = "MISSIVE_LOADTEST_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub concurrency: u64,
    /// Print the report as JSON instead of a table.
    #[arg(long, env = "MISSIVE_LOADTEST_JSON")]
    pub json: bool,
    /// Friends of each user (a friend request and its acceptance per pair, through the API);
    /// every friend pair is a conversation. One more when both this and --users are odd.
    #[arg(long, env = "MISSIVE_LOADTEST_FRIENDS_PER_USER", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "connections", help_heading = "Traffic mode")]
    pub friends_per_user: u64,
    /// Issue exactly this many operations, instead of running for --duration.
    #[arg(long, env = "MISSIVE_LOADTEST_COUNT", value_parser = clap::value_parser!(u64).range(1..), conflicts_with_all = ["connections", "duration"], help_heading = "Traffic mode")]
    pub count: Option<u64>,
    /// Open model: issue this many operations per second, each at its scheduled instant
    /// whatever the server's answers (so slow answers cannot hide latency); latency is
    /// measured from the scheduled instant. Without it: the closed model, --concurrency
    /// workers at full speed.
    #[arg(long, env = "MISSIVE_LOADTEST_RATE", value_parser = plan::parse_rate, conflicts_with = "connections", help_heading = "Traffic mode")]
    pub rate: Option<f64>,
    /// Open model: operations in flight at most. One due while this many are in flight is not
    /// issued, and counts as the error `dropped: too many in flight`.
    #[arg(long, env = "MISSIVE_LOADTEST_MAX_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000), conflicts_with = "connections", help_heading = "Traffic mode")]
    pub max_in_flight: u64,
    /// Weights of the operations: send (a direct message to the conversation's other user),
    /// history (a page of the conversation), read (mark read up to the latest message
    /// received), delete (one of the user's own messages, for everyone or for them only).
    /// Operations left out weigh 0; send must weigh more than 0.
    #[arg(long, env = "MISSIVE_LOADTEST_MIX", default_value = "send=70,history=20,read=8,delete=2", value_parser = Mix::parse, conflicts_with = "connections", help_heading = "Traffic mode")]
    pub mix: Mix,
    /// Exponent of the Zipf distribution of operations over conversations: the k-th busiest
    /// conversation is picked with probability proportional to 1/k^S (0: uniform).
    #[arg(long, env = "MISSIVE_LOADTEST_ZIPF", default_value = "1.0", value_parser = plan::parse_zipf, conflicts_with = "connections", help_heading = "Traffic mode")]
    pub zipf: f64,
    /// Seed of the friendship graph and of the sequence of operations (kind, conversation,
    /// which side acts), so that runs can be repeated. Default: random, printed in the report.
    #[arg(
        long,
        env = "MISSIVE_LOADTEST_SEED",
        conflicts_with = "connections",
        help_heading = "Traffic mode"
    )]
    pub seed: Option<u64>,
    /// Follow one send in this many into the recipient's history, to time how long it takes
    /// to become visible there (0: none). Every send is timed to the recipient's WebSocket.
    #[arg(
        long,
        env = "MISSIVE_LOADTEST_E2E_SAMPLE",
        default_value_t = 20,
        conflicts_with = "connections",
        help_heading = "Traffic mode"
    )]
    pub e2e_sample: u64,
}

/// `10s`, `2m`, `500ms`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a duration such as 10s, 2m or 500ms"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("{text:?}: the unit is one of ms, s, m, h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// Runs `missive loadtest` with its flags and prints the report.
pub async fn run(args: LoadtestArgs) -> anyhow::Result<()> {
    let Some(sessions) = args.connections else {
        let plan = TrafficPlan {
            target: args.target.trim_end_matches('/').to_owned(),
            users: args.users.unwrap_or(DEFAULT_TRAFFIC_USERS),
            friends_per_user: usize::try_from(args.friends_per_user)?,
            load: args.count.map_or(Load::For(args.duration), Load::Count),
            model: match args.rate {
                Some(rate) => Model::Open {
                    rate,
                    max_in_flight: usize::try_from(args.max_in_flight)?,
                },
                None => Model::Closed {
                    concurrency: args.concurrency as usize,
                },
            },
            mix: args.mix,
            zipf: args.zipf,
            seed: args
                .seed
                .unwrap_or_else(|| u64::from(rand::rng().random::<u32>())),
            e2e_sample: args.e2e_sample,
            setup_concurrency: args.concurrency as usize,
        };
        let report = traffic::traffic(&plan).await?;
        if args.json {
            println!("{}", report.to_json());
        } else {
            print!("{}", report.to_table());
        }
        return Ok(());
    };
    let mut plan = ConnectionsPlan::new(&args.target, sessions);
    if let Some(users) = args.users {
        plan.users = users;
    }
    plan.hold = args.duration;
    plan.concurrency = args.concurrency as usize;
    let report = connections(&plan).await?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}

/// Simulated users of the traffic mode unless --users says otherwise.
const DEFAULT_TRAFFIC_USERS: usize = 100;
/// Requests (registrations, session openings) in flight at once.
const DEFAULT_CONCURRENCY: usize = 64;
/// How often an idle session sends a heartbeat: well inside the server's default 60 s.
const HEARTBEAT: Duration = Duration::from_secs(20);
/// The longest wait for a session to open (upgrade and pending phase).
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// What `--connections` does.
#[derive(Debug, Clone)]
pub struct ConnectionsPlan {
    /// The server's base URL, `http://host:port`.
    pub target: String,
    /// Sessions to open.
    pub connections: usize,
    /// Users to register; sessions are spread over them round-robin.
    pub users: usize,
    /// How long the sessions stay open once all are.
    pub hold: Duration,
    /// Registrations and openings in flight at once.
    pub concurrency: usize,
}

impl ConnectionsPlan {
    pub fn new(target: &str, connections: usize) -> Self {
        ConnectionsPlan {
            target: target.trim_end_matches('/').to_owned(),
            connections,
            users: connections,
            hold: Duration::from_secs(10),
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

/// What `--connections` measured.
#[derive(Debug, Clone)]
pub struct ConnectionsReport {
    pub requested: usize,
    pub users: usize,
    pub opened: usize,
    /// Failures by kind (`register: 409`, `open: timeout`, ...).
    pub errors: BTreeMap<String, usize>,
    /// The server's WebSocket sessions gauge with every session open.
    pub server_sessions: Option<f64>,
    /// The server's resident memory before the users registered, once they had (before the
    /// sessions opened), and with the sessions open, in bytes.
    pub rss_before: Option<f64>,
    pub rss_registered: Option<f64>,
    pub rss_with_sessions: Option<f64>,
    /// Time to open one session (upgrade until its `synced` frame).
    pub open_latency: Latency,
    pub registration_time: Duration,
    pub opening_time: Duration,
}

impl ConnectionsReport {
    /// The server's resident memory per open session, in bytes (growth from the sessions
    /// alone: measured after the users registered).
    pub fn bytes_per_session(&self) -> Option<f64> {
        let (before, after) = (self.rss_registered?, self.rss_with_sessions?);
        (self.opened > 0).then(|| (after - before) / self.opened as f64)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "mode": "connections",
            "requested": self.requested,
            "users": self.users,
            "opened": self.opened,
            "errors": self.errors,
            "server_sessions": self.server_sessions,
            "server_rss_bytes_before": self.rss_before,
            "server_rss_bytes_registered": self.rss_registered,
            "server_rss_bytes_with_sessions": self.rss_with_sessions,
            "server_bytes_per_session": self.bytes_per_session(),
            "open_latency_ms": self.open_latency.to_json(),
            "registration_seconds": self.registration_time.as_secs_f64(),
            "opening_seconds": self.opening_time.as_secs_f64(),
        })
    }

    pub fn to_table(&self) -> String {
        let mb = |b: Option<f64>| b.map_or("unknown".to_owned(), |b| format!("{:.1} MB", b / 1e6));
        let mut out = String::new();
        out.push_str(&format!(
            "sessions opened      {} of {} ({} users)\n",
            self.opened, self.requested, self.users
        ));
        out.push_str(&format!(
            "server sessions      {}\n",
            self.server_sessions
                .map_or("unknown".to_owned(), |s| format!("{s}"))
        ));
        out.push_str(&format!("server RSS before    {}\n", mb(self.rss_before)));
        out.push_str(&format!(
            "server RSS users     {}\n",
            mb(self.rss_registered)
        ));
        out.push_str(&format!(
            "server RSS open      {}\n",
            mb(self.rss_with_sessions)
        ));
        out.push_str(&format!(
            "per session          {}\n",
            self.bytes_per_session()
                .map_or("unknown".to_owned(), |b| format!("{:.1} KB", b / 1e3))
        ));
        let l = &self.open_latency;
        out.push_str(&format!(
            "open latency (ms)    p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}\n",
            l.p50, l.p90, l.p99, l.p999, l.max
        ));
        out.push_str(&format!(
            "time                 {:.1} s registering, {:.1} s opening\n",
            self.registration_time.as_secs_f64(),
            self.opening_time.as_secs_f64()
        ));
        if self.errors.is_empty() {
            out.push_str("errors               none\n");
        }
        for (kind, n) in &self.errors {
            out.push_str(&format!("error                {kind}: {n}\n"));
        }
        out
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    /// The percentiles of `samples` (nearest rank).
    pub fn of(mut samples: Vec<Duration>) -> Self {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1].as_secs_f64() * 1e3
        };
        Latency {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: at(1.0),
        }
    }

    fn to_json(&self) -> Value {
        json!({ "p50": self.p50, "p90": self.p90, "p99": self.p99, "p99.9": self.p999, "max": self.max })
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Runs the connections mode.
pub async fn connections(plan: &ConnectionsPlan) -> anyhow::Result<ConnectionsReport> {
    anyhow::ensure!(plan.connections > 0, "--connections must be at least 1");
    let users = plan.users.clamp(1, plan.connections);
    let http = reqwest::Client::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let rss_before = metric(&http, &plan.target, "process_resident_memory_bytes").await?;

    let started = Instant::now();
    let run = uuid::Uuid::now_v7().simple().to_string();
    let run = &run[run.len() - 8..];
    let tokens = run_counted(
        users,
        plan.concurrency,
        "registering users",
        &mut errors,
        |i| {
            let (http, target) = (&http, &plan.target);
            let username = format!("lt{run}_{i}");
            async move { Ok(register(http, target, &username).await?.token) }
        },
    )
    .await;
    let registration_time = started.elapsed();
    anyhow::ensure!(
        !tokens.is_empty(),
        "no user could be registered at {} ({errors:?}); is registration open?",
        plan.target
    );
    let rss_registered = metric(&http, &plan.target, "process_resident_memory_bytes").await?;

    // Each session is kept alive (heartbeats) from the moment it opens.
    let (stop, stopped) = tokio::sync::watch::channel(false);

    let started = Instant::now();
    let ws_url = ws_url(&plan.target);
    let opened = run_counted(
        plan.connections,
        plan.concurrency,
        "opening sessions",
        &mut errors,
        |i| {
            let token = &tokens[i % tokens.len()];
            let (url, stopped) = (&ws_url, stopped.clone());
            async move {
                let (socket, latency) = open(url, token).await?;
                Ok((tokio::spawn(idle(socket, stopped)), latency))
            }
        },
    )
    .await;
    let opening_time = started.elapsed();
    let (idlers, latencies): (Vec<_>, Vec<_>) = opened.into_iter().unzip();
    let opened = idlers.len();

    // Idle until the hold ends; then the server is measured with every session still open.
    tokio::time::sleep(plan.hold).await;
    let rss_with_sessions = metric(&http, &plan.target, "process_resident_memory_bytes").await?;
    let server_sessions = metric(&http, &plan.target, "missive_ws_sessions").await?;
    let _ = stop.send(true);
    let mut dropped = 0;
    for idler in idlers {
        if !idler.await.unwrap_or(false) {
            dropped += 1;
        }
    }
    if dropped > 0 {
        errors.insert("closed by the server while idle".into(), dropped);
    }
    Ok(ConnectionsReport {
        requested: plan.connections,
        users: tokens.len(),
        opened,
        errors,
        server_sessions,
        rss_before,
        rss_registered,
        rss_with_sessions,
        open_latency: Latency::of(latencies),
        registration_time,
        opening_time,
    })
}

/// Runs `task(i)` for every `i` below `n`, `concurrency` at once, behind a progress bar: the
/// successes, with each failure counted by its kind in `errors`.
async fn run_counted<T, Fut>(
    n: usize,
    concurrency: usize,
    what: &'static str,
    errors: &mut BTreeMap<String, usize>,
    task: impl FnMut(usize) -> Fut,
) -> Vec<T>
where
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let bar = progress(n, what);
    let outcomes: Vec<Result<T, String>> = futures::stream::iter(0..n)
        .map(task)
        .buffer_unordered(concurrency.max(1))
        .inspect(|_| bar.inc(1))
        .collect()
        .await;
    bar.finish_and_clear();
    let mut done = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(value) => done.push(value),
            Err(kind) => *errors.entry(kind).or_default() += 1,
        }
    }
    done
}

fn progress(len: usize, what: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:20} [{bar:40}] {pos}/{len} {per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what);
    bar
}

/// A registered user.
struct Registered {
    id: uuid::Uuid,
    token: String,
}

/// Registers a user; its id and token, or the kind of failure.
async fn register(
    http: &reqwest::Client,
    target: &str,
    username: &str,
) -> Result<Registered, String> {
    let answer = http
        .post(format!("{target}/v1/users"))
        .json(&json!({ "username": username }))
        .send()
        .await
        .map_err(|e| format!("register: {}", kind_of(&e)))?;
    let status = answer.status();
    if !status.is_success() {
        return Err(format!("register: HTTP {}", status.as_u16()));
    }
    let body: Value = answer
        .json()
        .await
        .map_err(|_| "register: unreadable answer".to_owned())?;
    let id = body["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| "register: no id in the answer".to_owned())?;
    let token = body["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "register: no token in the answer".to_owned())?;
    Ok(Registered { id, token })
}

/// The WebSocket endpoint of the server at `target`.
fn ws_url(target: &str) -> String {
    format!(
        "{}/v1/ws",
        target
            .replacen("http://", "ws://", 1)
            .replacen("https://", "wss://", 1)
    )
}

fn kind_of(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connection refused"
    } else {
        "transport"
    }
}

/// Opens a session and reads what was pending, up to `synced`.
async fn open(url: &str, token: &str) -> Result<(Socket, Duration), String> {
    open_with(url, token, |_| {}).await
}

/// Opens a session and hands each frame received before `synced` (the pending messages) to
/// `on_frame`.
async fn open_with(
    url: &str,
    token: &str,
    mut on_frame: impl FnMut(&Value),
) -> Result<(Socket, Duration), String> {
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("open: bad URL ({e})"))?;
    let header = format!("Bearer {token}")
        .parse()
        .map_err(|_| "open: bad token".to_owned())?;
    request.headers_mut().insert("authorization", header);
    let started = Instant::now();
    let opening = async {
        let (mut socket, _) =
            tokio_tungstenite::connect_async(request)
                .await
                .map_err(|e| match e {
                    tokio_tungstenite::tungstenite::Error::Http(response) => {
                        format!("open: HTTP {}", response.status().as_u16())
                    }
                    tokio_tungstenite::tungstenite::Error::Io(e) => format!("open: {}", e.kind()),
                    _ => "open: handshake failed".to_owned(),
                })?;
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(text.as_str())
                        .map_err(|_| "open: unreadable frame".to_owned())?;
                    if frame["type"] == "synced" {
                        return Ok(socket);
                    }
                    on_frame(&frame);
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map_or(0, |f| u16::from(f.code));
                    return Err(format!("open: closed with {code}"));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Err("open: connection lost".to_owned()),
            }
        }
    };
    match tokio::time::timeout(OPEN_TIMEOUT, opening).await {
        Ok(Ok(socket)) => Ok((socket, started.elapsed())),
        Ok(Err(kind)) => Err(kind),
        Err(_) => Err("open: timeout".to_owned()),
    }
}

/// Keeps a session alive (a ping every [`HEARTBEAT`], frames read and dropped) until `stop`;
/// then closes it. Returns whether it was still open.
async fn idle(mut socket: Socket, mut stop: tokio::sync::watch::Receiver<bool>) -> bool {
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = heartbeat.tick() => {
                let ping = Message::Text(json!({ "type": "ping" }).to_string().into());
                if socket.send(ping).await.is_err() {
                    return false;
                }
            }
            frame = socket.next() => match frame {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return false,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), socket.close(None)).await;
    true
}

/// The value of an unlabelled metric (or the sum over its labels) on the server's `/metrics`;
/// `None` when the server does not expose it.
async fn metric(http: &reqwest::Client, target: &str, name: &str) -> anyhow::Result<Option<f64>> {
    let text = http
        .get(format!("{target}/metrics"))
        .send()
        .await
        .with_context(|| format!("reading {target}/metrics"))?
        .error_for_status()
        .with_context(|| format!("reading {target}/metrics"))?
        .text()
        .await?;
    Ok(parse_metric(&text, name))
}

fn parse_metric(text: &str, name: &str) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = if let Some(labelled) = rest.strip_prefix('{') {
            labelled.split_once('}').map(|(_, v)| v)
        } else {
            rest.starts_with(' ').then_some(rest)
        };
        if let Some(v) = value.and_then(|v| v.trim().parse::<f64>().ok()) {
            total = Some(total.unwrap_or(0.0) + v);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<Duration> = (1..=1000).map(Duration::from_millis).collect();
        let l = Latency::of(samples);
        assert_eq!(
            (l.p50, l.p90, l.p99, l.p999, l.max),
            (500.0, 900.0, 990.0, 999.0, 1000.0)
        );
        assert_eq!(Latency::of(Vec::new()), Latency::default());
        let one = Latency::of(vec![Duration::from_millis(7)]);
        assert_eq!((one.p50, one.max), (7.0, 7.0));
    }

    #[test]
    fn metrics_are_read_with_or_without_labels() {
        let text = "# HELP x\nprocess_resident_memory_bytes 1.5e6\n\
                    missive_ws_sessions 3\nmissive_ws_sessions_closed_total{reason=\"client\"} 2\n\
                    missive_ws_sessions_closed_total{reason=\"heartbeat\"} 1\n";
        assert_eq!(
            parse_metric(text, "process_resident_memory_bytes"),
            Some(1.5e6)
        );
        assert_eq!(parse_metric(text, "missive_ws_sessions"), Some(3.0));
        assert_eq!(
            parse_metric(text, "missive_ws_sessions_closed_total"),
            Some(3.0)
        );
        assert_eq!(parse_metric(text, "missive_http_requests_total"), None);
    }
}
