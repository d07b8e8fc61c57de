//! Start-up of the server: log, read store, projector, service and HTTP API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use missive_api::gateway::Gateway;
use missive_api::{ApiConfig, AppState, Secret};
use missive_events::Presence;
use missive_keys::scylla::ScyllaVault;
use missive_keys::sqlite::SqliteVault;
use missive_keys::{CachedVault, KeyVault, OpenedStore};
use missive_log::kafka::{KafkaConfig, KafkaLog, TopicSettings, check_topic_settings};
use missive_log::sqlite::{Durability, SqliteLog};
use missive_log::{EventLog, Position};
use missive_projector::{Projector, READ_MODELS};
use missive_service::notifier::Notifier;
use missive_service::{Actor, Config, Service};
use missive_store::ReadStore;
use missive_store::scylla::{ScyllaConfig, ScyllaStore};
use missive_store::sqlite::SqliteStore;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Which event log to use.
#[derive(Debug, Clone)]
pub enum LogBackend {
    /// SQLite in the data directory (`log.db`).
    Embedded { durability: Durability },
    /// Apache Kafka.
    Kafka(KafkaConfig),
}

impl LogBackend {
    /// Parses `--log`: `embedded`, or `kafka://host:port[,host:port...]`.
    pub fn parse(value: &str, durability: Durability) -> Result<Self, String> {
        if value == "embedded" {
            return Ok(LogBackend::Embedded { durability });
        }
        match value.strip_prefix("kafka://") {
            Some(brokers) if !brokers.is_empty() && !brokers.contains('/') => {
                Ok(LogBackend::Kafka(KafkaConfig::new(brokers)))
            }
            _ => Err(format!(
                "--log {value:?}: expected `embedded` or `kafka://host:port[,host:port...]`"
            )),
        }
    }

    /// Opens the log; for Kafka, checks that every topic exists.
    pub async fn open(&self, data_dir: &std::path::Path) -> anyhow::Result<Arc<dyn EventLog>> {
        Ok(match self {
            LogBackend::Embedded { durability } => Arc::new(
                SqliteLog::open(&data_dir.join("log.db"), *durability)
                    .context("opening the event log")?,
            ),
            LogBackend::Kafka(config) => {
                let log = KafkaLog::open(config.clone())
                    .await
                    .context("connecting to Kafka")?;
                log.end_positions().await.with_context(|| {
                    format!(
                        "checking the topics {:?} on {}",
                        missive_events::Stream::ALL
                            .iter()
                            .map(|s| config.topic(*s))
                            .collect::<Vec<_>>(),
                        config.brokers
                    )
                })?;
                if config.check_topic_settings {
                    match check_topic_settings(config)
                        .await
                        .context("checking the Kafka topics' settings")?
                    {
                        TopicSettings::Fine => {}
                        TopicSettings::Unknown(why) => {
                            tracing::warn!(%why, "could not check the Kafka topics' settings")
                        }
                        TopicSettings::Warnings(warnings) => {
                            for warning in warnings {
                                tracing::warn!("{warning}");
                            }
                        }
                    }
                }
                Arc::new(log)
            }
        })
    }
}

/// Which read store holds the read models.
#[derive(Debug, Clone)]
pub enum StoreBackend {
    /// SQLite in the data directory (`read.db`).
    Embedded,
    /// ScyllaDB or Cassandra; the keyspace must have been migrated (`missive store migrate`).
    Scylla(ScyllaConfig),
}

impl StoreBackend {
    /// Opens the store with its key vault ([`StoreBackend::open_vault`]): personal fields
    /// are opened as they are projected and read ([`OpenedStore`]).
    pub async fn open(&self, data_dir: &Path) -> anyhow::Result<Arc<dyn ReadStore>> {
        let vault = self.open_vault(data_dir).await?;
        Ok(Arc::new(OpenedStore::new(
            self.open_raw(data_dir).await?,
            vault,
        )))
    }

    /// The users' keys (crypto-shredding): `keys.db` in the data directory, or the
    /// `user_keys` table of the Scylla keyspace; cached for [`CachedVault::DEFAULT_TTL`], the
    /// longest another process may still use a key after an account's deletion.
    pub async fn open_vault(&self, data_dir: &Path) -> anyhow::Result<Arc<dyn KeyVault>> {
        Ok(match self {
            StoreBackend::Embedded => {
                let path = data_dir.join("keys.db");
                Arc::new(CachedVault::new(SqliteVault::open(&path).with_context(
                    || format!("opening the key vault {}", path.display()),
                )?))
            }
            StoreBackend::Scylla(config) => Arc::new(CachedVault::new(
                ScyllaVault::open(config)
                    .await
                    .with_context(|| format!("opening the key vault at {self}"))?,
            )),
        })
    }

    /// Copies the users' keys (and tombstones) of this Scylla store's keyspace into
    /// `target`'s, where `missive replay` rebuilt the read models: the vault lives beside the
    /// read models, so servers switched to the rebuilt keyspace find every key there. Nothing
    /// to do for the embedded store, whose vault (`keys.db`) stays in place.
    pub async fn copy_keys_into(
        &self,
        target: &ScyllaConfig,
    ) -> anyhow::Result<Option<missive_keys::scylla::Copied>> {
        let StoreBackend::Scylla(live) = self else {
            return Ok(None);
        };
        async fn open(config: &ScyllaConfig) -> anyhow::Result<ScyllaVault> {
            ScyllaVault::open(config).await.with_context(|| {
                format!(
                    "opening the key vault at {}",
                    StoreBackend::Scylla(config.clone())
                )
            })
        }
        let (from, into) = (open(live).await?, open(target).await?);
        Ok(Some(from.copy_into(&into).await.with_context(|| {
            format!(
                "copying the users' keys from {self} to keyspace {}",
                target.keyspace
            )
        })?))
    }

    /// Opens the store alone, its personal fields as stored (sealed): the embedded one in
    /// `data_dir`, or a session to Scylla that checks the keyspace's schema.
    pub async fn open_raw(&self, data_dir: &Path) -> anyhow::Result<Arc<dyn ReadStore>> {
        self.open_raw_with(data_dir, &missive_store::Retention::forever())
            .await
    }

    /// As [`StoreBackend::open_raw`], projecting with `retention`.
    pub async fn open_raw_with(
        &self,
        data_dir: &Path,
        retention: &missive_store::Retention,
    ) -> anyhow::Result<Arc<dyn ReadStore>> {
        Ok(match self {
            StoreBackend::Embedded => {
                Arc::new(open_embedded_store(data_dir)?.with_retention(retention.clone()))
            }
            StoreBackend::Scylla(config) => Arc::new(
                ScyllaStore::open(config)
                    .await
                    .with_context(|| format!("opening the Scylla read store at {self}"))?
                    .with_retention(retention)
                    .context("--retention-days")?,
            ),
        })
    }
}

/// `embedded`, or the store's URL (`scylla://host:port[,...]/keyspace`), for logs and errors.
impl std::fmt::Display for StoreBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreBackend::Embedded => f.write_str("embedded"),
            StoreBackend::Scylla(config) => {
                write!(f, "scylla://{}/{}", config.nodes.join(","), config.keyspace)
            }
        }
    }
}

/// How often the embedded store is swept of expired messages: they are hidden from nothing
/// meanwhile (never projected once expired), only kept a little longer.
const SWEEP_INTERVAL: Duration = Duration::from_secs(600);

/// Sweeps expired messages out of `store` now and every [`SWEEP_INTERVAL`] until `stop`.
async fn sweep_expired_messages(store: SqliteStore, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        match store.sweep_expired(store.retention().now()).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "expired messages removed from the read models"),
            Err(error) => {
                tracing::warn!(%error, "could not sweep expired messages; trying again later")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(SWEEP_INTERVAL) => {}
            () = stop.as_mut() => return,
        }
    }
}

/// The embedded read store of a data directory (`read.db`).
pub fn open_embedded_store(data_dir: &Path) -> anyhow::Result<SqliteStore> {
    let path = data_dir.join("read.db");
    SqliteStore::open(&path)
        .with_context(|| format!("opening the embedded read store {}", path.display()))
}

/// The analytics consumer's store: `analytics.db` in the data directory beside the embedded
/// read store, or the Scylla store's keyspace (schema version 4).
pub async fn open_analytics(
    store: &StoreBackend,
    data_dir: &Path,
) -> anyhow::Result<Arc<dyn missive_analytics::AnalyticsStore>> {
    Ok(match store {
        StoreBackend::Embedded => {
            let path = data_dir.join("analytics.db");
            Arc::new(
                missive_analytics::sqlite::SqliteAnalytics::open(&path)
                    .with_context(|| format!("opening the analytics store {}", path.display()))?,
            )
        }
        StoreBackend::Scylla(config) => Arc::new(
            missive_analytics::scylla::ScyllaAnalytics::open(config)
                .await
                .with_context(|| format!("opening the analytics store at {store}"))?,
        ),
    })
}

/// Which parts a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// HTTP API and projectors (`missive serve`).
    #[default]
    All,
    /// HTTP API only (`missive api`); it follows the projectors' progress through the read
    /// store's checkpoints.
    Api,
    /// Projectors only, no HTTP (`missive project`).
    Projector,
    /// The analytics consumer only, no HTTP (`missive analytics`).
    Analytics,
}

/// Everything `missive serve` can be told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub role: Role,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// `None`: use the one kept in the data directory, generating it the first time.
    pub jwt_secret: Option<Vec<u8>>,
    pub log: LogBackend,
    pub store: StoreBackend,
    pub service: Config,
    pub token_ttl: Duration,
    pub max_read_wait: Duration,
    /// WebSocket session limits and heartbeat timeout.
    pub ws: missive_api::ws::WsConfig,
    /// At most one offline notification per conversation and recipient per this interval.
    pub notify_interval: Duration,
    /// Whether an API process marks `offline`, before it listens, every user the read models
    /// show online: right when it is the only process holding sessions (a predecessor that
    /// died left its users online). `None`: only with the embedded log.
    pub reset_presence: Option<bool>,
    /// Whether the analytics consumer runs in `serve` (and the API answers
    /// `/v1/admin/analytics`): its rollups live in `analytics.db` beside the embedded read
    /// store, or in the Scylla store's keyspace.
    pub analytics: bool,
    /// Per-user and per-address limits of commands.
    pub rate_limits: missive_api::ratelimit::RateLimits,
    /// How long direct and channel messages stay in the read models (forever by default).
    pub retention: missive_store::Retention,
    /// Where to serve only `/metrics` and `/healthz` besides the API (any role).
    pub admin_listen: Option<SocketAddr>,
}

impl ServerConfig {
    /// The embedded defaults for a data directory (embedded log and read store).
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            role: Role::All,
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            jwt_secret: None,
            log: LogBackend::Embedded {
                durability: Durability::Full,
            },
            store: StoreBackend::Embedded,
            service: Config::default(),
            token_ttl: Duration::from_secs(30 * 24 * 3600),
            max_read_wait: missive_api::routes::DEFAULT_READ_WAIT,
            ws: missive_api::ws::WsConfig::default(),
            notify_interval: Duration::from_secs(60),
            reset_presence: None,
            analytics: true,
            rate_limits: missive_api::ratelimit::RateLimits::default(),
            retention: missive_store::Retention::forever(),
            admin_listen: None,
        }
    }
}

type Task = (&'static str, JoinHandle<anyhow::Result<()>>);

/// How long shutdown waits for WebSocket sessions to send their close frames.
const SESSIONS_CLOSE_WAIT: Duration = Duration::from_secs(3);

/// A running process: its HTTP API and/or projector.
pub struct Running {
    /// Where the HTTP API listens (`None` for a projector-only process).
    pub addr: Option<SocketAddr>,
    pub secret: Secret,
    stop: watch::Sender<bool>,
    tasks: Vec<Task>,
    /// The API's WebSocket sessions: shutdown waits (briefly) for their close frames.
    sessions: Option<Arc<missive_api::ws::Sessions>>,
    /// Flushed last: what the tasks handed to the producer is written before the exit.
    log: Option<Arc<dyn EventLog>>,
    /// Held shared while running: `missive replay --swap` takes it exclusively, so it never
    /// replaces the read store under a running process.
    _in_use: std::fs::File,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("addr", &self.addr).finish()
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Opens the data directory, the log and the read store, and starts what `config.role` asks
/// for.
pub async fn start(config: ServerConfig) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let secret = match &config.jwt_secret {
        Some(s) => s.clone(),
        None => crate::secret::load_or_generate(&config.data_dir)?,
    };
    let secret = Secret::new(secret);
    let in_use = DataDirUse::shared(&config.data_dir)?;
    let log = config.log.open(&config.data_dir).await?;
    let vault = config.store.open_vault(&config.data_dir).await?;
    // The embedded store is kept by its type too, for the retention sweeper.
    let embedded = match &config.store {
        StoreBackend::Embedded => {
            Some(open_embedded_store(&config.data_dir)?.with_retention(config.retention.clone()))
        }
        StoreBackend::Scylla(_) => None,
    };
    let raw: Arc<dyn ReadStore> = match &embedded {
        Some(store) => Arc::new(store.clone()),
        None => {
            config
                .store
                .open_raw_with(&config.data_dir, &config.retention)
                .await?
        }
    };
    let store: Arc<dyn ReadStore> = Arc::new(OpenedStore::new(raw, vault.clone()));
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks: Vec<Task> = Vec::new();

    if let Some(admin) = config.admin_listen {
        let listener = TcpListener::bind(admin)
            .await
            .with_context(|| format!("listening on {admin} (--admin-listen)"))?;
        tracing::info!(addr = %listener.local_addr()?, "serving /metrics and /healthz");
        let shutdown = stopped(stop_rx.clone());
        tasks.push((
            "admin listener",
            tokio::spawn(async move { Ok(missive_api::run_metrics(listener, shutdown).await?) }),
        ));
    }

    let analytics = if config.analytics || config.role == Role::Analytics {
        Some(open_analytics(&config.store, &config.data_dir).await?)
    } else {
        None
    };
    if let Some(analytics_store) = &analytics
        && matches!(config.role, Role::All | Role::Analytics)
    {
        // Registered now, so that /metrics shows them before the first event.
        missive_analytics::worker::metrics();
        let worker = missive_analytics::Analytics::new(log.clone(), analytics_store.clone());
        let worker_stop = stopped(stop_rx.clone());
        tasks.push((
            "analytics",
            tokio::spawn(async move {
                let outcome = worker.run(worker_stop).await;
                if let Err(error) = &outcome {
                    tracing::error!(%error, "the analytics consumer stopped with an error");
                }
                Ok(outcome?)
            }),
        ));
    }
    if config.role == Role::Analytics {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let shutdown = stopped(stop_rx);
        tasks.push((
            "metrics listener",
            tokio::spawn(async move { Ok(missive_api::run_metrics(listener, shutdown).await?) }),
        ));
        tracing::info!(%addr, data_dir = %config.data_dir.display(), store = %config.store, "missive analytics is running (GET /metrics)");
        return Ok(Running {
            addr: Some(addr),
            secret,
            stop,
            tasks,
            sessions: None,
            log: None,
            _in_use: in_use,
        });
    }

    let progress = if config.role == Role::Api {
        let (progress, follower) = missive_projector::follow_progress(
            store.clone(),
            READ_MODELS,
            stopped(stop_rx.clone()),
        );
        tasks.push((
            "progress follower",
            tokio::spawn(async move { follower.await.context("progress follower") }),
        ));
        progress
    } else {
        let projector = Projector::new(log.clone(), store.clone(), READ_MODELS);
        let progress = projector.progress();
        let projector_stop = stopped(stop_rx.clone());
        tasks.push((
            "projector",
            tokio::spawn(async move {
                let outcome = projector.run(projector_stop).await;
                if let Err(error) = &outcome {
                    tracing::error!(%error, source = ?std::error::Error::source(error), "the projector stopped with an error");
                }
                Ok(outcome?)
            }),
        ));
        progress
    };

    // The projector's process sweeps expired messages out of the embedded store (Scylla
    // expires them by TTL).
    if let Some(store) = embedded
        && config.role != Role::Api
        && config.retention.period().is_some()
    {
        let stop = stopped(stop_rx.clone());
        tasks.push((
            "retention sweeper",
            tokio::spawn(async move {
                sweep_expired_messages(store, stop).await;
                Ok(())
            }),
        ));
    }

    let mut addr = None;
    let mut sessions: Option<Arc<missive_api::ws::Sessions>> = None;
    if config.role != Role::Projector {
        // Before the service reads the log's end and the blocked and deleted accounts: an
        // account's standing changed after this is seen by the gateway, one changed before
        // is in the read models the service reloads them from once they reach that end.
        let gateway = Arc::new(Gateway::new(config.ws.session_buffer));
        let follower = gateway.follow(log.as_ref()).await?;
        let service = Arc::new(
            Service::new(log.clone(), store.clone(), progress, config.service.clone())
                .await?
                .with_vault(vault),
        );
        // Bound (so that a second process on the same address fails here) but not served
        // until the presence reset and the gateway are in place.
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        addr = Some(listener.local_addr()?);
        let reset = config
            .reset_presence
            .unwrap_or(matches!(config.log, LogBackend::Embedded { .. }));
        if reset {
            reset_presence(&service, store.as_ref(), config.service.projection_wait).await;
        }
        {
            // Followed from before the listener: no event between the log's end read there
            // and a session's first read of the read models escapes the gateway.
            let (store, service) = (store.clone(), service.clone());
            let wait = config.service.projection_wait;
            let stop = stopped(stop_rx.clone());
            tasks.push((
                "gateway",
                tokio::spawn(async move { Ok(follower.run(store, service, wait, stop).await?) }),
            ));
        }
        let notifier = Notifier::new(log.clone(), store.clone(), config.notify_interval);
        let notifier_stop = stopped(stop_rx.clone());
        tasks.push((
            "notifier",
            tokio::spawn(async move { Ok(notifier.run(notifier_stop).await?) }),
        ));
        let limiter = Arc::new(
            missive_api::ratelimit::RateLimiter::new(config.rate_limits.clone(), secret.clone())
                .context("rate limits")?,
        );
        let state = AppState {
            limiter,
            service,
            config: Arc::new(ApiConfig {
                secret: secret.clone(),
                token_ttl: config.token_ttl,
                max_read_wait: config.max_read_wait,
                ws: config.ws.clone(),
            }),
            sessions: sessions.insert(Arc::default()).clone(),
            gateway,
            analytics,
            commands: Arc::default(),
        };
        let shutdown = stopped(stop_rx);
        tasks.push((
            "HTTP server",
            tokio::spawn(async move { Ok(missive_api::run(listener, state, shutdown).await?) }),
        ));
    }
    tracing::info!(
        role = ?config.role,
        ?addr,
        data_dir = %config.data_dir.display(),
        store = %config.store,
        "missive is running"
    );
    Ok(Running {
        addr,
        secret,
        stop,
        tasks,
        sessions,
        log: Some(log),
        _in_use: in_use,
    })
}

/// The lock file that tells whether processes use a data directory (`in-use.lock`): servers
/// hold it shared (several may share a data directory), `missive replay --swap` exclusively.
/// The operating system releases it when a process exits, however it exits.
#[derive(Debug)]
pub struct DataDirUse;

impl DataDirUse {
    fn open(data_dir: &Path) -> anyhow::Result<std::fs::File> {
        let path = data_dir.join("in-use.lock");
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))
    }

    /// Held by a running server.
    pub fn shared(data_dir: &Path) -> anyhow::Result<std::fs::File> {
        let file = Self::open(data_dir)?;
        match file.try_lock_shared() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "the data directory {} is being swapped by `missive replay --swap`; start again \
                 once it is done",
                data_dir.display()
            ),
            Err(std::fs::TryLockError::Error(error)) => {
                Err(error).with_context(|| format!("locking {} (in-use.lock)", data_dir.display()))
            }
        }
    }

    /// Held by whoever must be alone with the data directory; fails while a server runs.
    pub fn exclusive(data_dir: &Path) -> anyhow::Result<std::fs::File> {
        let file = Self::open(data_dir)?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "a Missive process is using the data directory {} (serve, api, project or \
                 analytics): stop it first",
                data_dir.display()
            ),
            Err(std::fs::TryLockError::Error(error)) => {
                Err(error).with_context(|| format!("locking {} (in-use.lock)", data_dir.display()))
            }
        }
    }
}

/// Marks offline every user the read models show online: no session of theirs is open, as
/// this process is not serving yet and holds every session there is. Their `last_seen` becomes
/// now (when the earlier process died is not known). Waits until the read models show it. A
/// failure is logged, not fatal: the users stay online until they connect again.
async fn reset_presence(service: &Service, store: &dyn ReadStore, wait: Duration) {
    if let Err(error) = service.caught_up().await {
        tracing::warn!(%error, "the read models are behind the log; users whose last presence change is not projected yet may stay online");
    }
    let online = match store.online_users().await {
        Ok(online) => online,
        Err(error) => {
            tracing::warn!(%error, "could not list the users left online; they stay online until they connect again");
            return;
        }
    };
    // Built up front (a closure in the stream trips the compiler's Send check).
    let marks: Vec<_> = online
        .iter()
        .map(|&user_id| async move {
            let actor = Actor {
                user_id,
                correlation_id: Uuid::now_v7(),
            };
            (
                user_id,
                service.set_presence(actor, Presence::Offline).await,
            )
        })
        .collect();
    let outcomes: Vec<_> = futures::stream::iter(marks)
        .buffer_unordered(32)
        .collect()
        .await;
    let mut last: Vec<Position> = Vec::new();
    for (user_id, outcome) in outcomes {
        match outcome {
            Ok((_, position)) => last.push(position),
            Err(error) => {
                tracing::warn!(%user_id, %error, "could not mark a user left online offline")
            }
        }
    }
    if !last.is_empty() {
        if !service.wait_for_all(&last, wait).await {
            tracing::warn!("the presence reset is not projected yet; it will be shortly");
        }
        tracing::info!(
            users = last.len(),
            "users left online by an earlier run are marked offline"
        );
    }
}

/// How long shutdown waits for the producer's queue to empty. With the commands' drain
/// (`missive_api::run`, 15 s) and the sessions' close frames (3 s), a shutdown fits in the
/// usual 30 s grace period of a container before SIGKILL.
const SHUTDOWN_FLUSH_WAIT: Duration = Duration::from_secs(5);

impl Running {
    /// Stops accepting requests, drains in-flight ones, stops the projector, and waits.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        // Every task is waited for, and the log flushed, whatever failed: the first failure is
        // the answer.
        let mut failed = None;
        for (name, task) in self.tasks {
            let outcome = match task.await {
                Ok(outcome) => outcome,
                Err(join) => Err(anyhow::Error::new(join)),
            };
            if let Err(error) = outcome.with_context(|| format!("{name} task")) {
                tracing::error!(error = format!("{error:#}"), "a task failed at shutdown");
                failed.get_or_insert(error);
            }
        }
        // The gateway told every WebSocket session to close with 1001 (going away) as it
        // stopped; give them a moment to send it before the process exits.
        if let Some(sessions) = &self.sessions {
            let deadline = tokio::time::Instant::now() + SESSIONS_CLOSE_WAIT;
            while sessions.open() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Last: every command was answered or abandoned, and every session closed (its user
        // went offline); what is still in the producer's queue is written before the exit.
        if let Some(log) = &self.log
            && let Err(error) = log.flush(SHUTDOWN_FLUSH_WAIT).await
        {
            tracing::warn!(%error, "the event log was not flushed before the exit");
        }
        failed.map_or(Ok(()), Err)
    }

    /// Waits until a task ends on its own, which is always an error.
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        if self.tasks.is_empty() {
            anyhow::bail!("nothing to run");
        }
        let handles = self.tasks.iter_mut().map(|(_, t)| t);
        let (outcome, index, _) = futures::future::select_all(handles).await;
        let name = self.tasks[index].0;
        outcome.with_context(|| format!("{name} task"))??;
        anyhow::bail!("the {name} stopped")
    }
}
