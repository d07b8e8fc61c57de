//! Start-up of the embedded server: log, read store, projector, service and HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use missive_api::{ApiConfig, AppState, Secret};
use missive_log::EventLog;
use missive_log::kafka::{KafkaConfig, KafkaLog};
use missive_log::sqlite::{Durability, SqliteLog};
use missive_projector::{Projector, READ_MODELS};
use missive_service::{Config, Service};
use missive_store::ReadStore;
use missive_store::sqlite::SqliteStore;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

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
                let log = KafkaLog::connect(config.clone()).context("connecting to Kafka")?;
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
                Arc::new(log)
            }
        })
    }
}

/// Everything `missive serve` can be told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// `None`: use the one kept in the data directory, generating it the first time.
    pub jwt_secret: Option<Vec<u8>>,
    pub log: LogBackend,
    pub service: Config,
    pub token_ttl: Duration,
    pub max_read_wait: Duration,
}

impl ServerConfig {
    /// The embedded defaults for a data directory.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            jwt_secret: None,
            log: LogBackend::Embedded {
                durability: Durability::Full,
            },
            service: Config::default(),
            token_ttl: Duration::from_secs(30 * 24 * 3600),
            max_read_wait: missive_api::routes::DEFAULT_READ_WAIT,
        }
    }
}

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    pub secret: Secret,
    pub service: Arc<Service>,
    stop: watch::Sender<bool>,
    http: JoinHandle<std::io::Result<()>>,
    projector: JoinHandle<Result<(), missive_projector::ProjectorError>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("addr", &self.addr).finish()
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Opens the data directory and starts everything.
pub async fn start(config: ServerConfig) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let secret = match &config.jwt_secret {
        Some(s) => s.clone(),
        None => crate::secret::load_or_generate(&config.data_dir)?,
    };
    let secret = Secret::new(secret);
    let log = config.log.open(&config.data_dir).await?;
    let store: Arc<dyn ReadStore> = Arc::new(
        SqliteStore::open(&config.data_dir.join("read.db")).context("opening the read store")?,
    );
    let (stop, stop_rx) = watch::channel(false);
    let projector = Projector::new(log.clone(), store.clone(), READ_MODELS);
    let progress = projector.progress();
    let projector_stop = stopped(stop_rx.clone());
    let projector = tokio::spawn(async move {
        let outcome = projector.run(projector_stop).await;
        if let Err(error) = &outcome {
            tracing::error!(%error, source = ?std::error::Error::source(error), "the projector stopped with an error");
        }
        outcome
    });
    let service = Arc::new(Service::new(log, store, progress, config.service.clone()).await?);
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let state = AppState {
        service: service.clone(),
        config: Arc::new(ApiConfig {
            secret: secret.clone(),
            token_ttl: config.token_ttl,
            max_read_wait: config.max_read_wait,
        }),
    };
    let http = tokio::spawn(missive_api::run(listener, state, stopped(stop_rx)));
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "missive is serving");
    Ok(Running {
        addr,
        secret,
        service,
        stop,
        http,
        projector,
    })
}

impl Running {
    /// Stops accepting requests, drains in-flight ones, stops the projector, and waits.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.http.await.context("HTTP task")??;
        self.projector.await.context("projector task")??;
        Ok(())
    }

    /// Waits until either task ends on its own (an error), or forever.
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        tokio::select! {
            r = &mut self.http => { r.context("HTTP task")??; anyhow::bail!("the HTTP server stopped") }
            r = &mut self.projector => { r.context("projector task")??; anyhow::bail!("the projector stopped") }
        }
    }
}
