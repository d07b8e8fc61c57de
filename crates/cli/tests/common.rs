//! A Missive server on port 0 in a fresh data directory, a small JSON client for it, the
//! tokens that must not pass, and WebSocket session helpers.

#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use futures::{SinkExt, StreamExt};
use missive_api::Secret;
use missive_cli::server::{LogBackend, Running, ServerConfig, StoreBackend, start};
use missive_log::kafka::testing::TestCluster;
use missive_store::ReadStore;
use missive_store::scylla::{Replication, ScyllaConfig, connect, drop_keyspace, migrate};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use uuid::Uuid;

/// The log and read store a test runs on.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Embedded log, embedded read store.
    Embedded,
    /// librdkafka's mock cluster, or the broker of `MISSIVE_TEST_KAFKA`; embedded read store.
    Kafka,
    /// Embedded log; the read store in a fresh keyspace on the node of `MISSIVE_TEST_SCYLLA`.
    Scylla(ScyllaConfig),
}

tokio::task_local! {
    /// Set by the `both_logs!` wrappers; absent means embedded.
    pub static BACKEND: Backend;
}

/// Runs each listed `async fn` three times: as `embedded::name`, `kafka::name` and
/// `scylla::name` (the Scylla read store; skipped with a notice unless `MISSIVE_TEST_SCYLLA`
/// is set).
#[macro_export]
macro_rules! both_logs {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name().await
                }
            )*
        }
        mod kafka {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::common::BACKEND
                        .scope($crate::common::Backend::Kafka, super::$name())
                        .await
                }
            )*
        }
        mod scylla {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::common::on_scylla(stringify!($name), super::$name).await
                }
            )*
        }
    };
}

/// Runs `test` with the Scylla read store in a fresh keyspace (migrated first, dropped
/// afterwards even when the test panics), or prints a SKIPPED notice when
/// `MISSIVE_TEST_SCYLLA` is unset.
pub async fn on_scylla<F, T>(name: &str, test: F)
where
    F: FnOnce() -> T,
    T: Future<Output = ()> + Send + 'static,
{
    let node = match std::env::var("MISSIVE_TEST_SCYLLA") {
        Ok(node) if !node.is_empty() => node,
        _ => {
            eprintln!(
                "SKIPPED: scylla::{name}: the Scylla e2e suite needs a ScyllaDB or Cassandra \
                 node; set MISSIVE_TEST_SCYLLA=host:port to run it"
            );
            return;
        }
    };
    let keyspace = format!("missive_e2e_{}", Uuid::now_v7().simple());
    let mut config = ScyllaConfig::parse(&format!("scylla://{node}/{keyspace}"))
        .expect("MISSIVE_TEST_SCYLLA is host:port");
    config.replication = Replication::Simple(1);
    let session = connect(&config)
        .await
        .expect("connecting to MISSIVE_TEST_SCYLLA");
    // Migrating runs inside the task too: a failed migration still drops the keyspace.
    let test = test();
    let task_session = session.clone();
    let outcome = tokio::spawn(async move {
        migrate(&task_session, &config).await.expect("migrating");
        BACKEND.scope(Backend::Scylla(config), test).await
    })
    .await;
    let dropped = drop_keyspace(&session, &keyspace).await;
    if let Err(error) = outcome {
        if let Err(drop_error) = &dropped {
            eprintln!("could not drop the test keyspace {keyspace}: {drop_error}");
        }
        match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(error) => panic!("the test task did not finish: {error}"),
        }
    }
    dropped.expect("dropping the test keyspace");
}

pub struct Harness {
    pub server: Option<Running>,
    /// The Kafka cluster of a Kafka test, alive until the test process exits: the server's
    /// tasks are not stopped when a test drops its harness, and a synchronous Kafka commit to
    /// a cluster that is gone blocks its thread for good, which would hold up the runtime's
    /// shutdown (each test is its own process under nextest, so nothing accumulates).
    pub kafka: Option<&'static TestCluster>,
    pub base: String,
    pub client: reqwest::Client,
    pub config: ServerConfig,
    pub dir: tempfile::TempDir,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.body)
    }
}

impl Answer {
    /// The error code of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    pub fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }

    /// The `items` of a list answer.
    pub fn items(&self) -> &Vec<Value> {
        self.body["items"].as_array().expect("a list answer")
    }

    /// The `text` of every item of a list of messages.
    pub fn texts(&self) -> Vec<String> {
        self.items()
            .iter()
            .map(|m| m["text"].as_str().expect("text").to_owned())
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    pub id: Uuid,
    pub token: String,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        missive_telemetry::init_tracing(missive_telemetry::LogFormat::Human);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = ServerConfig::embedded(dir.path().join("data"));
        config.listen = "127.0.0.1:0".parse().expect("addr");
        config.jwt_secret = Some(b"test-secret".to_vec());
        // Tests send as fast as they can from one address; `http_rate_limit` turns limits on.
        config.rate_limits = missive_api::ratelimit::RateLimits::off();
        let mut kafka = None;
        match BACKEND.try_with(Backend::clone) {
            Ok(Backend::Kafka) => {
                let cluster = TestCluster::start();
                config.log = LogBackend::Kafka(cluster.fresh_log_config().await);
                kafka = Some(&*Box::leak(Box::new(cluster)));
            }
            Ok(Backend::Scylla(store)) => config.store = StoreBackend::Scylla(store),
            Ok(Backend::Embedded) | Err(_) => {}
        }
        tweak(&mut config);
        let server = start(config.clone()).await.expect("server starts");
        let base = format!("http://{}", server.addr.expect("an API"));
        Harness {
            server: Some(server),
            kafka,
            base,
            client: reqwest::Client::new(),
            config,
            dir,
        }
    }

    /// The server's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Stops the server and starts a new one on the same data directory, log and read store.
    pub async fn restart(&mut self) {
        self.restart_after(async {}).await
    }

    /// Stops the server, throws its read models away (the embedded `read.db`, or the Scylla
    /// keyspace, migrated again empty), and starts a new one that rebuilds them from the log.
    pub async fn restart_with_empty_read_models(&mut self) {
        let (store, data_dir) = (self.config.store.clone(), self.config.data_dir.clone());
        self.restart_after(async move {
            match store {
                StoreBackend::Embedded => {
                    for f in ["read.db", "read.db-wal", "read.db-shm"] {
                        let _ = std::fs::remove_file(data_dir.join(f));
                    }
                }
                StoreBackend::Scylla(config) => {
                    // Every read model and checkpoint, but not the users' keys that share the
                    // keyspace: the log does not hold them (dropping the keyspace would lose
                    // every sealed field).
                    let session = connect(&config).await.expect("connecting to Scylla");
                    let store = missive_store::scylla::ScyllaStore::open(&config)
                        .await
                        .expect("opening the Scylla store");
                    let mut tables = store.tables().await.expect("the read-model tables");
                    tables.push("checkpoints".into());
                    for table in tables {
                        session
                            .query_unpaged(format!("TRUNCATE {}.{table}", config.keyspace), ())
                            .await
                            .expect("truncating a read model");
                    }
                }
            }
        })
        .await
    }

    async fn restart_after(&mut self, while_stopped: impl Future<Output = ()>) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
        while_stopped.await;
        let server = start(self.config.clone()).await.expect("server restarts");
        self.base = format!("http://{}", server.addr.expect("an API"));
        self.server = Some(server);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = self.call(Method::GET, "/readyz", None, None).await;
            if ready.status == StatusCode::OK {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "server never became ready: {ready:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Answer {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = build(req).send().await.expect("request sent");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        self.raw(method, path, token, |r| match body {
            Some(b) => r.json(&b),
            None => r,
        })
        .await
    }

    pub async fn get(&self, path: &str, who: &Client) -> Answer {
        self.call(Method::GET, path, Some(&who.token), None).await
    }

    pub async fn post(&self, path: &str, who: &Client, body: Value) -> Answer {
        self.call(Method::POST, path, Some(&who.token), Some(body))
            .await
    }

    pub async fn register(&self, username: &str) -> Client {
        let a = self
            .call(
                Method::POST,
                "/v1/users",
                None,
                Some(json!({ "username": username })),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
        Client {
            id: a.body["id"].as_str().expect("id").parse().expect("uuid"),
            token: a.body["token"].as_str().expect("token").to_owned(),
        }
    }

    /// An operator (admin) token for `as_user`, signed with the running server's secret and
    /// valid for ten minutes.
    pub fn operator(&self, as_user: &Client) -> String {
        self.server.as_ref().expect("running").secret.issue_admin(
            as_user.id,
            Utc::now().timestamp(),
            600,
        )
    }

    pub async fn befriend(&self, a: &Client, b: &Client) {
        let r = self
            .call(
                Method::POST,
                &format!("/v1/friends/{}", b.id),
                Some(&a.token),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        let r = self
            .call(
                Method::POST,
                &format!("/v1/friends/{}/accept", a.id),
                Some(&b.token),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.body["relation"], "friend");
    }

    /// Sends a message and returns the answer body.
    pub async fn send(&self, from: &Client, to: &Client, text: &str) -> Value {
        let a = self
            .post(
                &format!("/v1/conversations/direct/{}/messages", to.id),
                from,
                json!({ "text": text }),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
        a.body
    }

    /// A GET that waits for the read models to include `position`.
    pub async fn get_at(&self, path: &str, who: &Client, position: &Value) -> Answer {
        let sep = if path.contains('?') { '&' } else { '?' };
        let p = position.as_str().expect("position");
        self.get(&format!("{path}{sep}min_position={p}"), who).await
    }

    /// Starts another process-like server on the same data directory and log, in `role`
    /// (e.g. the projector beside an API-only harness).
    pub async fn start_companion(&self, role: missive_cli::server::Role) -> Running {
        let mut config = self.config.clone();
        config.role = role;
        config.listen = "127.0.0.1:0".parse().expect("addr");
        start(config).await.expect("companion starts")
    }

    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
    }
}

// ----- tokens that must not pass -----

/// Every `Authorization` that must not pass, each naming `as_user`: none, a malformed token,
/// an unsigned token (`alg: none`), a token signed with another secret, an expired token and a
/// valid token in another scheme than `Bearer`. With `admin`, every token is an operator's
/// (admin) token, and one more is the user's genuine token with the admin claim slipped into
/// its payload (signature kept). Each comes as `(what it is, the header value)`.
pub fn invalid_authorizations(
    h: &Harness,
    as_user: Uuid,
    admin: bool,
) -> Vec<(String, Option<String>)> {
    let now = || Utc::now().timestamp();
    let secret = &h.server.as_ref().expect("running").secret;
    let issue = |secret: &Secret, iat: i64| {
        if admin {
            secret.issue_admin(as_user, iat, 3600)
        } else {
            secret.issue(as_user, iat, 3600)
        }
    };
    let claims = || {
        let mut claims = json!({ "sub": as_user, "iat": now(), "exp": now() + 3600 });
        if admin {
            claims["adm"] = json!(true);
        }
        URL_SAFE_NO_PAD.encode(claims.to_string())
    };
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        claims()
    );
    let forged = issue(&Secret::new(b"not-the-server-secret".to_vec()), now());
    let expired = issue(secret, now() - 7200);
    let valid = issue(secret, now());
    let (a, kind) = if admin { ("an", "admin ") } else { ("a", "") };
    let mut attempts = vec![
        ("no Authorization header".to_owned(), None),
        (
            "a malformed token".to_owned(),
            Some("Bearer not-a-jwt".to_owned()),
        ),
        (
            format!("an unsigned {kind}token"),
            Some(format!("Bearer {unsigned}")),
        ),
        (
            format!("another secret's {kind}token"),
            Some(format!("Bearer {forged}")),
        ),
        (
            format!("an expired {kind}token"),
            Some(format!("Bearer {expired}")),
        ),
    ];
    if admin {
        let users = secret.issue(as_user, now(), 3600);
        let parts: Vec<&str> = users.split('.').collect();
        assert_eq!(parts.len(), 3, "{users}");
        let elevated = format!("{}.{}.{}", parts[0], claims(), parts[2]);
        attempts.push((
            "a user's token given the admin claim".to_owned(),
            Some(format!("Bearer {elevated}")),
        ));
    }
    attempts.push((
        format!("{a} {kind}token in another scheme"),
        Some(format!("Token {valid}")),
    ));
    attempts
}

/// Asserts that `method path` (with `body`) is refused under each of a user's
/// [`invalid_authorizations`] with 401 `unauthorized` and `WWW-Authenticate: Bearer`, and
/// tells nothing of the resource.
pub async fn refused_without_a_valid_token(
    h: &Harness,
    method: Method,
    path: &str,
    body: Option<Value>,
    as_user: Uuid,
) {
    refused_under_each(
        h,
        method,
        path,
        body,
        invalid_authorizations(h, as_user, false),
    )
    .await
}

/// Asserts that the operator's route `method path` is refused under each of an operator's
/// [`invalid_authorizations`] with 401 `unauthorized` and `WWW-Authenticate: Bearer`.
pub async fn refused_without_a_valid_admin_token(
    h: &Harness,
    method: Method,
    path: &str,
    as_user: Uuid,
) {
    refused_under_each(
        h,
        method,
        path,
        None,
        invalid_authorizations(h, as_user, true),
    )
    .await
}

async fn refused_under_each(
    h: &Harness,
    method: Method,
    path: &str,
    body: Option<Value>,
    attempts: Vec<(String, Option<String>)>,
) {
    for (what, header) in attempts {
        let body = body.clone();
        let a = h
            .raw(method.clone(), path, None, move |r| {
                let r = match header {
                    Some(value) => r.header("authorization", value),
                    None => r,
                };
                match body {
                    Some(b) => r.json(&b),
                    None => r,
                }
            })
            .await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            "{method} {path} with {what}: {a:?}"
        );
        assert_eq!(
            a.headers.get("www-authenticate").map(|v| v.as_bytes()),
            Some(&b"Bearer"[..]),
            "{method} {path} with {what}"
        );
    }
}

// ----- WebSocket sessions -----

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The server's WebSocket endpoint, `ws://.../v1/ws`.
pub fn ws_url(h: &Harness) -> String {
    format!("{}/v1/ws", h.base.replacen("http://", "ws://", 1))
}

/// An upgrade request with `who`'s token in the Authorization header.
pub fn upgrade_request(
    h: &Harness,
    who: &Client,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = ws_url(h).into_client_request().expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", who.token).parse().expect("header"),
    );
    request
}

/// The next text frame, as JSON.
pub async fn next_json(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame within 10 s")
            .expect("the session is open")
            .expect("a frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).expect("JSON frame");
        }
    }
}

/// The next frame of `kind`, skipping others.
pub async fn next_of(socket: &mut Socket, kind: &str) -> Value {
    loop {
        let frame = next_json(socket).await;
        if frame["type"] == kind {
            return frame;
        }
    }
}

pub async fn send_json(socket: &mut Socket, frame: Value) {
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .expect("the frame is sent");
}

/// Frames until `{"type":"pong"}`: a ping's answer comes after every frame queued before it,
/// so this collects everything pushed so far (and proves the session is still open and
/// nothing else is on its way).
pub async fn drain(socket: &mut Socket) -> Vec<Value> {
    send_json(socket, json!({"type": "ping"})).await;
    let mut frames = Vec::new();
    loop {
        let frame = next_json(socket).await;
        if frame["type"] == "pong" {
            return frames;
        }
        frames.push(frame);
    }
}

/// Reads until the server's close frame (within 10 s), which must carry a code.
pub async fn close_frame(socket: &mut Socket) -> CloseFrame {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("the server closes the session within 10 s")
        {
            Some(Ok(Message::Close(frame))) => return frame.expect("a close frame with a code"),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Waits (up to 10 s) until `user` shows `status` to `viewer` (presence is projected
/// asynchronously), and returns the profile that does.
pub async fn wait_for_status(h: &Harness, viewer: &Client, user: &Client, status: &str) -> Value {
    for _ in 0..400 {
        let answer = h.get(&format!("/v1/users/{}", user.id), viewer).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        if answer.body["status"] == status {
            return answer.body;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} never became {status}", user.id);
}
