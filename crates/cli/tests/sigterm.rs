//! Graceful shutdown of the real `missive serve` process (SIGTERM), end to end.
//!
//! # What it proves
//!
//! With three WebSocket sessions open and commands acknowledged over HTTP, a SIGTERM makes
//! the process:
//! - close every session with 1001 (going away) before the session's stream ends, so that
//!   clients know to reconnect rather than treat it as an error of theirs;
//! - exit by itself, with a success status (polled with a generous deadline: a liveness
//!   bound, not a timing);
//! - stop listening: a new TCP connection to its address is refused;
//! - keep every acknowledged command: restarted on the same data directory, it shows every
//!   acknowledged message in the conversation histories, with its text and sender, once.
//!
//! The server runs as `missive serve --listen 127.0.0.1:0` on the embedded backend in a
//! temporary data directory (started by the `binary` module shared with `crash_safety`: its
//! address read from its JSON log), with the rate limiters off; each start's stderr goes to
//! `server-<n>.log` in the test's temporary directory and is printed when something fails.
//! The signal is sent with `kill -TERM <pid>`.
#![cfg(unix)]

mod binary;

use std::collections::{HashMap, HashSet};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use uuid::Uuid;

use binary::{Launch, Server};

const JWT_SECRET: &str = "sigterm-secret";
/// How long the server may take to start, become ready, close its sessions or exit: a bound
/// for a hung process, not a performance target.
const DEADLINE: Duration = Duration::from_secs(20);
/// The signal the test sends (`kill -<SIGNAL>`).
const SIGNAL: &str = "TERM";

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What only this test does to the process.
impl Server {
    /// Sends [`SIGNAL`] to the process.
    fn signal(&self) {
        let sent = Command::new("kill")
            .arg(format!("-{SIGNAL}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{SIGNAL}: {sent}");
    }

    /// Waits for the process to exit by itself, and reaps it.
    async fn exited(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit within {DEADLINE:?} of the signal:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct User {
    id: Uuid,
    token: String,
}

/// A request that must be answered `want`; its body.
async fn expect(
    http: &reqwest::Client,
    server: &Server,
    (method, path): (Method, &str),
    token: Option<&str>,
    body: Option<Value>,
    want: StatusCode,
) -> Value {
    let mut req = http.request(method.clone(), format!("{}{path}", server.base()));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("the request is answered");
    let status = resp.status();
    let text = resp.text().await.expect("the body");
    assert_eq!(status, want, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

async fn register(http: &reqwest::Client, server: &Server, name: &str) -> User {
    let body = json!({ "username": name });
    let answer = expect(
        http,
        server,
        (Method::POST, "/v1/users"),
        None,
        Some(body),
        StatusCode::CREATED,
    )
    .await;
    User {
        id: answer["id"].as_str().expect("id").parse().expect("a UUID"),
        token: answer["token"].as_str().expect("token").to_owned(),
    }
}

async fn befriend(http: &reqwest::Client, server: &Server, a: &User, b: &User) {
    let request = format!("/v1/friends/{}", b.id);
    expect(
        http,
        server,
        (Method::POST, &request),
        Some(&a.token),
        None,
        StatusCode::OK,
    )
    .await;
    let accept = format!("/v1/friends/{}/accept", a.id);
    let answer = expect(
        http,
        server,
        (Method::POST, &accept),
        Some(&b.token),
        None,
        StatusCode::OK,
    )
    .await;
    assert_eq!(answer["relation"], "friend", "{answer}");
}

/// Opens a session with the token in the Authorization header and reads up to its `synced`
/// frame: from then on the session is registered with the gateway.
async fn open(server: &Server, who: &User) -> Socket {
    let url = format!("ws://{}/v1/ws", server.addr);
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", who.token).parse().expect("header"),
    );
    let (mut socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the session opens");
    assert_eq!(response.status(), 101);
    while next_json(&mut socket).await["type"] != "synced" {}
    socket
}

/// The next text frame, as JSON.
async fn next_json(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(DEADLINE, socket.next())
            .await
            .expect("a frame in time")
            .expect("the session is open")
            .expect("a frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).expect("JSON frame");
        }
    }
}

/// Reads frames until every message of `ids` was pushed (pushes follow the log a moment
/// after the send is acknowledged), then pings and waits for the pong: the session is alive.
async fn pushed(socket: &mut Socket, ids: &HashSet<Uuid>) {
    let mut missing = ids.clone();
    while !missing.is_empty() {
        let frame = next_json(socket).await;
        if frame["type"] == "message" {
            let id = frame["message"]["message_id"].as_str().expect("message_id");
            missing.remove(&id.parse::<Uuid>().expect("a UUID"));
        }
    }
    let ping = json!({ "type": "ping" }).to_string();
    socket
        .send(Message::Text(ping.into()))
        .await
        .expect("the ping is sent");
    while next_json(socket).await["type"] != "pong" {}
}

/// How a session ended: the close frame the server sent (if any) and what came after it.
#[derive(Debug)]
struct Ending {
    close: Option<CloseFrame>,
    /// What ended the stream after the close frame, or instead of one.
    end: String,
}

/// Reads a session until its stream ends (data frames are skipped).
async fn ending(mut socket: Socket) -> Ending {
    let mut close = None;
    loop {
        let next = tokio::time::timeout(DEADLINE, socket.next())
            .await
            .expect("the session ends in time");
        match next {
            Some(Ok(Message::Close(frame))) if close.is_none() => {
                close = Some(frame.expect("a close frame with a code"));
            }
            Some(Ok(Message::Close(frame))) => {
                panic!("a second close frame {frame:?} after {close:?}")
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                return Ending {
                    close,
                    end: format!("error: {error}"),
                };
            }
            None => {
                return Ending {
                    close,
                    end: "end of stream".to_owned(),
                };
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sessions_with_going_away_exits_cleanly_and_keeps_acknowledged_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let http = reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .expect("HTTP client");
    let launch = Launch {
        data_dir: &data_dir,
        logs: dir.path(),
        jwt_secret: JWT_SECRET,
        deadline: DEADLINE,
    };
    let mut server = launch.start(0).await;

    let alice = register(&http, &server, "alice").await;
    let bob = register(&http, &server, "bob").await;
    let carol = register(&http, &server, "carol").await;
    befriend(&http, &server, &alice, &bob).await;
    befriend(&http, &server, &alice, &carol).await;
    let mut sockets = vec![
        open(&server, &alice).await,
        open(&server, &bob).await,
        open(&server, &carol).await,
    ];

    // Acknowledged sends: message id -> (conversation, sender, text).
    let mut acked: HashMap<Uuid, (Uuid, Uuid, String)> = HashMap::new();
    let pairs = [
        (&alice, &bob),
        (&bob, &alice),
        (&alice, &carol),
        (&carol, &alice),
    ];
    for round in 0..3 {
        for (from, to) in pairs {
            let text = format!("round {round} from {} to {}", from.id, to.id);
            let path = format!("/v1/conversations/direct/{}/messages", to.id);
            let receipt = expect(
                &http,
                &server,
                (Method::POST, &path),
                Some(&from.token),
                Some(json!({ "text": text })),
                StatusCode::CREATED,
            )
            .await;
            let id = |field: &str| -> Uuid {
                receipt[field]
                    .as_str()
                    .expect(field)
                    .parse()
                    .expect("a UUID")
            };
            acked.insert(id("message_id"), (id("conversation_id"), from.id, text));
        }
    }
    assert_eq!(acked.len(), 12, "every send was a new message");
    // Every session was pushed the messages sent to its user, and is alive.
    for (socket, user) in sockets.iter_mut().zip([&alice, &bob, &carol]) {
        let to_user: HashSet<Uuid> = acked
            .iter()
            .filter(|(_, (conv, sender, _))| {
                *sender != user.id
                    && *conv == missive_events::ids::direct_conversation_id(*sender, user.id)
            })
            .map(|(id, _)| *id)
            .collect();
        assert!(!to_user.is_empty());
        pushed(socket, &to_user).await;
    }

    server.signal();
    let endings = futures::future::join_all(sockets.into_iter().map(ending)).await;
    for ending in &endings {
        let close = ending.close.as_ref().unwrap_or_else(|| {
            panic!(
                "the session ended ({}) without a close frame:\n{}",
                ending.end,
                server.log_text()
            )
        });
        assert_eq!(close.code, CloseCode::Away, "{ending:?}");
    }

    let status = server.exited().await;
    assert!(
        status.success(),
        "the server exited with {status} after SIG{SIGNAL}:\n{}",
        server.log_text()
    );
    let refused = std::net::TcpStream::connect(&server.addr);
    assert!(
        matches!(&refused, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "a connection after the exit: {refused:?}"
    );
    logs_name_requests_and_events(&server.log_text(), acked.len());
    drop(server);

    // Restarted on the same data directory, it holds every acknowledged message, once.
    let server = launch.start(1).await;
    let mut seen: HashMap<Uuid, (Uuid, Uuid, String)> = HashMap::new();
    for (reader, peer) in [(&alice, &bob), (&alice, &carol)] {
        let conv = missive_events::ids::direct_conversation_id(reader.id, peer.id);
        let path = format!("/v1/conversations/{conv}/messages?limit=200");
        let page = expect(
            &http,
            &server,
            (Method::GET, &path),
            Some(&reader.token),
            None,
            StatusCode::OK,
        )
        .await;
        assert_eq!(page["next"], Value::Null, "one page holds the history");
        for m in page["items"].as_array().expect("items") {
            let field =
                |name: &str| -> Uuid { m[name].as_str().expect(name).parse().expect("a UUID") };
            let text = m["text"].as_str().expect("text").to_owned();
            let previous = seen.insert(field("message_id"), (conv, field("sender_id"), text));
            assert!(previous.is_none(), "{m} is in the history twice");
        }
    }
    assert_eq!(
        seen, acked,
        "the histories after the restart vs. the acknowledged sends"
    );
}

/// Each append is logged inside the span of the request (or the WebSocket session, for
/// presence) that made it, and names its events: the request's id (the session's, which is the
/// upgrade request's) is the events' correlation id, and the event ids are on the line.
fn logs_name_requests_and_events(log: &str, sends: usize) {
    let mut by_request = 0;
    for line in log.lines() {
        let Ok(line) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if line["fields"]["message"] != "appended" {
            continue;
        }
        let spans = line["spans"].as_array().expect("the line's spans");
        let named = |name: &str| spans.iter().find(|s| s["name"] == name);
        let append = named("append").unwrap_or_else(|| panic!("no append span in {line}"));
        let origin = match (named("request"), named("ws_session")) {
            (Some(request), _) => {
                by_request += 1;
                &request["request_id"]
            }
            (None, Some(session)) => &session["session"],
            (None, None) => panic!("an append outside any request or session: {line}"),
        };
        assert_eq!(
            *origin, append["correlation_id"],
            "the request's id is its events' correlation id: {line}"
        );
        let ids = append["event_ids"].as_str().expect("event ids");
        assert!(ids.len() > 30, "the events' ids: {line}");
    }
    assert!(
        by_request >= sends,
        "{by_request} appends logged in requests for {sends} sends:\n{log}"
    );
}
