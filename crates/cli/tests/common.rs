//! A Missive server on port 0 in a fresh data directory, and a small JSON client for it.

#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use chrono::Utc;
use missive_cli::server::{LogBackend, Running, ServerConfig, StoreBackend, start};
use missive_log::kafka::testing::TestCluster;
use missive_store::ReadStore;
use missive_store::scylla::{Replication, ScyllaConfig, connect, drop_keyspace, migrate};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
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
