//! `missive`: run the server (whole, or as API and projector parts), manage the Kafka topics
//! and the Scylla schema, handle dead letters, or mint a token.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use missive_cli::server::{LogBackend, Role, ServerConfig, StoreBackend, start};
use missive_log::sqlite::Durability;
use missive_telemetry::LogFormat;
use uuid::Uuid;

/// Missive: an event-sourced messaging backend.
#[derive(Debug, Parser)]
#[command(name = "missive", version)]
struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        env = "MISSIVE_LOG_FORMAT",
        value_enum,
        default_value = "human",
        global = true
    )]
    log_format: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Human,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Registration {
    Open,
    Closed,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Sync {
    /// fsync every group commit: acknowledged commands survive power loss.
    Full,
    /// fsync at checkpoints only: survives a process crash, not power loss.
    Normal,
}

/// Where the event log lives.
#[derive(Debug, clap::Args)]
struct LogArgs {
    /// The event log: `embedded` (SQLite in the data directory) or
    /// `kafka://host:port[,host:port...]`.
    #[arg(long = "log", env = "MISSIVE_LOG", default_value = "embedded")]
    log: String,
    /// Prefix of the Kafka topic names (`<prefix>messages`, `<prefix>social`,
    /// `<prefix>presence`).
    #[arg(long, env = "MISSIVE_KAFKA_TOPIC_PREFIX", default_value = "missive.")]
    kafka_topic_prefix: String,
    /// Confluent Schema Registry URL (`https://key:secret@host` for basic auth). When set, the
    /// Kafka log writes records in the registry's wire format (`00` + 4-byte schema id) and
    /// registers its schemas there; by default records are Avro single-object encoded.
    #[arg(long, env = "MISSIVE_SCHEMA_REGISTRY")]
    schema_registry: Option<String>,
    /// How the embedded log syncs each group commit to disk.
    #[arg(long, env = "MISSIVE_LOG_SYNC", value_enum, default_value = "full")]
    log_sync: Sync,
}

impl LogArgs {
    fn backend(&self) -> anyhow::Result<LogBackend> {
        let durability = match self.log_sync {
            Sync::Full => Durability::Full,
            Sync::Normal => Durability::Normal,
        };
        let mut backend = LogBackend::parse(&self.log, durability).map_err(anyhow::Error::msg)?;
        match &mut backend {
            LogBackend::Kafka(config) => {
                config.topic_prefix = self.kafka_topic_prefix.clone();
                config.schema_registry = self.schema_registry.clone();
            }
            LogBackend::Embedded { .. } if self.schema_registry.is_some() => {
                anyhow::bail!(
                    "--schema-registry applies to the Kafka log only (--log kafka://host:port); \
                     the embedded log stores records single-object encoded"
                );
            }
            LogBackend::Embedded { .. } => {}
        }
        Ok(backend)
    }
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Create the Kafka topics (existing ones are left as they are). The partition count is
    /// fixed for a topic's life: changing it moves keys between partitions and breaks their
    /// order; to grow, create a new topic set (another --kafka-topic-prefix) and replay.
    Create {
        #[command(flatten)]
        log: LogArgs,
        /// Partitions per topic.
        #[arg(long, default_value_t = 12)]
        partitions: i32,
        /// Replicas per partition (3 in production).
        #[arg(long, default_value_t = 3)]
        replication: i32,
    },
}

/// Flags of `serve`, `api` and `project`.
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Directory holding the embedded event log and read store (when those are used) and the
    /// generated JWT secret.
    #[arg(long, env = "MISSIVE_DATA_DIR", default_value = "./missive-data")]
    data_dir: PathBuf,
    /// Address the HTTP API listens on.
    #[arg(long, env = "MISSIVE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Secret that signs bearer tokens (HS256). Default: generated once and kept in the
    /// data directory.
    #[arg(long, env = "MISSIVE_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Whether anyone may register with POST /v1/users.
    #[arg(long, env = "MISSIVE_REGISTRATION", value_enum, default_value = "open")]
    registration: Registration,
    /// Longest message text accepted, in characters.
    #[arg(long, env = "MISSIVE_MAX_TEXT_CHARS", default_value_t = missive_domain::messages::DEFAULT_MAX_TEXT_CHARS)]
    max_text_chars: usize,
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    store: ReadStoreArgs,
    /// Lifetime of tokens issued at registration, in days.
    #[arg(long, env = "MISSIVE_TOKEN_TTL_DAYS", default_value_t = 30)]
    token_ttl_days: u64,
    /// Longest wait of a query's `min_position`, in milliseconds.
    #[arg(long, env = "MISSIVE_MAX_READ_WAIT_MS", default_value_t = 2000)]
    max_read_wait_ms: u64,
    /// Most WebSocket sessions (GET /v1/ws) this process holds; more are refused with 503.
    #[arg(long, env = "MISSIVE_WS_MAX_CONNECTIONS", default_value_t = 100_000)]
    ws_max_connections: usize,
    /// Most WebSocket sessions one user may hold at once (devices); more are refused with 429.
    #[arg(long, env = "MISSIVE_WS_MAX_SESSIONS_PER_USER", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    ws_max_sessions_per_user: u64,
    /// A WebSocket session that sends nothing (no frame, no ping) for this many seconds is
    /// closed with code 4000; the user goes offline when it was their last.
    #[arg(long, env = "MISSIVE_WS_HEARTBEAT_TIMEOUT_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    ws_heartbeat_timeout_secs: u64,
    /// Frames queued for one WebSocket session at most; a client that falls further behind
    /// is disconnected with close code 4001 and reconnects.
    #[arg(long, env = "MISSIVE_WS_SESSION_BUFFER", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    ws_session_buffer: u64,
    /// A WebSocket session whose client does not take a frame within this many seconds is
    /// closed with code 4001.
    #[arg(long, env = "MISSIVE_WS_SEND_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3_600))]
    ws_send_timeout_secs: u64,
    /// At most one offline notification (on the notifications stream) per conversation and
    /// recipient per this many seconds (0: one per message).
    #[arg(long, env = "MISSIVE_NOTIFY_INTERVAL_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(0..=7 * 86_400))]
    notify_interval_secs: u64,
    /// Before listening, mark offline every user the read models show online (a process that
    /// died left them online): `auto` does it with the embedded log only, where one process
    /// holds every session. Turn it off when several API processes share an embedded log.
    #[arg(
        long,
        env = "MISSIVE_RESET_PRESENCE",
        value_enum,
        default_value = "auto"
    )]
    reset_presence: Switch,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Switch {
    Auto,
    On,
    Off,
}

impl ServeArgs {
    fn config(self, role: Role) -> anyhow::Result<ServerConfig> {
        let mut config = ServerConfig::embedded(self.data_dir);
        config.role = role;
        config.listen = self.listen;
        config.jwt_secret = self.jwt_secret.map(String::into_bytes);
        config.log = self.log.backend()?;
        config.store = self.store.backend()?;
        config.service.registration_open = matches!(self.registration, Registration::Open);
        config.service.max_text_chars = self.max_text_chars;
        config.token_ttl = Duration::from_secs(self.token_ttl_days * 24 * 3600);
        config.max_read_wait = Duration::from_millis(self.max_read_wait_ms);
        config.ws = missive_api::ws::WsConfig {
            max_connections: self.ws_max_connections,
            max_sessions_per_user: self.ws_max_sessions_per_user as usize,
            heartbeat_timeout: Duration::from_secs(self.ws_heartbeat_timeout_secs),
            session_buffer: self.ws_session_buffer as usize,
            send_timeout: Duration::from_secs(self.ws_send_timeout_secs),
        };
        config.notify_interval = Duration::from_secs(self.notify_interval_secs);
        config.reset_presence = match self.reset_presence {
            Switch::Auto => None,
            Switch::On => Some(true),
            Switch::Off => Some(false),
        };
        Ok(config)
    }
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Print the unresolved dead letters as JSON lines.
    List {
        #[command(flatten)]
        log: LogArgs,
        /// The data directory (the embedded log lives there).
        #[arg(long, env = "MISSIVE_DATA_DIR", default_value = "./missive-data")]
        data_dir: PathBuf,
    },
    /// Re-apply every dead letter to the read models (after a fix); those that apply are marked
    /// resolved, those that still fail stay, with their new error. Exits 1 if any still fails.
    Retry {
        #[command(flatten)]
        log: LogArgs,
        #[command(flatten)]
        store: ReadStoreArgs,
        /// The data directory (the embedded log and read store live there).
        #[arg(long, env = "MISSIVE_DATA_DIR", default_value = "./missive-data")]
        data_dir: PathBuf,
    },
}

/// How to reach the Scylla read store: the flags beside every `--store`.
#[derive(Debug, clap::Args)]
struct ScyllaArgs {
    /// Consistency level of the Scylla store's reads and writes.
    #[arg(
        long,
        env = "MISSIVE_STORE_CONSISTENCY",
        default_value = "LOCAL_QUORUM"
    )]
    store_consistency: String,
    /// Keep to this datacenter's replicas of the Scylla store (token-aware within it).
    #[arg(long, env = "MISSIVE_STORE_LOCAL_DC")]
    store_local_dc: Option<String>,
}

impl ScyllaArgs {
    /// The config of the store at `url` (`scylla://...`), with these flags applied.
    fn config(&self, url: &str) -> anyhow::Result<missive_store::scylla::ScyllaConfig> {
        let mut config =
            missive_store::scylla::ScyllaConfig::parse(url).map_err(anyhow::Error::msg)?;
        config.consistency = missive_store::scylla::parse_consistency(&self.store_consistency)
            .map_err(anyhow::Error::msg)?;
        config.local_dc = self.store_local_dc.clone();
        Ok(config)
    }
}

/// Where the Scylla read store lives (`missive store migrate`: required).
#[derive(Debug, clap::Args)]
struct StoreArgs {
    /// The read store: `scylla://host:port[,host:port...]/keyspace`.
    #[arg(long = "store", env = "MISSIVE_STORE")]
    store: String,
    #[command(flatten)]
    scylla: ScyllaArgs,
}

impl StoreArgs {
    fn config(&self) -> anyhow::Result<missive_store::scylla::ScyllaConfig> {
        self.scylla.config(&self.store)
    }
}

/// Which read store holds the read models (`serve`, `api`, `project`, `dlq retry`).
#[derive(Debug, clap::Args)]
struct ReadStoreArgs {
    /// The read store: `embedded` (SQLite `read.db` in the data directory; the default when
    /// unset) or `scylla://host:port[,host:port...]/keyspace` (ScyllaDB or Cassandra; create
    /// its schema first with `missive store migrate`).
    #[arg(long = "store", env = "MISSIVE_STORE")]
    store: Option<String>,
    #[command(flatten)]
    scylla: ScyllaArgs,
}

impl ReadStoreArgs {
    fn backend(&self) -> anyhow::Result<StoreBackend> {
        match self.store.as_deref() {
            None | Some("embedded") => {
                // Checked even here, so that a typo is caught before the switch to Scylla.
                missive_store::scylla::parse_consistency(&self.scylla.store_consistency)
                    .map_err(anyhow::Error::msg)?;
                if self.scylla.store_local_dc.is_some() {
                    anyhow::bail!(
                        "--store-local-dc applies to the Scylla store only \
                         (--store scylla://host:port/keyspace); the embedded store has no \
                         datacenters"
                    );
                }
                Ok(StoreBackend::Embedded)
            }
            Some(url) if !url.starts_with("scylla://") => anyhow::bail!(
                "--store {url:?}: expected `embedded` or \
                 `scylla://host:port[,host:port...]/keyspace`"
            ),
            Some(url) => Ok(StoreBackend::Scylla(self.scylla.config(url)?)),
        }
    }
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Create the keyspace if needed and apply the schema versions of projections/ not yet
    /// applied (each once; recorded in the keyspace's schema_migrations table). Safe to run
    /// again; a released schema file that was edited is refused.
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
        /// Keyspace replication when it is created: `<datacenter>:<replicas>[,...]`
        /// (NetworkTopologyStrategy) or `simple:<replicas>` (single-datacenter tests).
        #[arg(
            long,
            env = "MISSIVE_STORE_REPLICATION",
            default_value = "datacenter1:3"
        )]
        replication: String,
    },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the Scylla read store's schema.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Events the projectors could not apply (dead letters).
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Manage the Kafka topics of the event log.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Run everything in one process: HTTP API, event log, projectors and read models.
    Serve(ServeArgs),
    /// Run the HTTP API only; projectors run elsewhere (`missive project`) and this process
    /// follows their progress through the read store.
    Api(ServeArgs),
    /// Run the projectors only (no HTTP): consume the log and keep the read models current.
    /// With Kafka, several of these split the partitions in a consumer group.
    Project(ServeArgs),
    /// Print a bearer token for a user id, signed with the server's secret.
    Token {
        /// The user the token speaks for.
        user_id: Uuid,
        /// The data directory whose kept secret signs the token (when --jwt-secret is unset).
        #[arg(long, env = "MISSIVE_DATA_DIR", default_value = "./missive-data")]
        data_dir: PathBuf,
        /// Secret that signs bearer tokens; must be the server's.
        #[arg(long, env = "MISSIVE_JWT_SECRET", hide_env_values = true)]
        jwt_secret: Option<String>,
        /// Lifetime of the token, in days.
        #[arg(long, default_value_t = 30)]
        ttl_days: u64,
    },
    /// Drive a running Missive over HTTP and WebSocket like real users, and report what it
    /// cost. `--connections N` registers users, opens N idle WebSocket sessions, holds them
    /// for `--duration` (heartbeats only), and reports the server's resident memory before and
    /// with them open (its `process_resident_memory_bytes` metric), per session, and how long
    /// sessions took to open. Registration must be open on the target. The message-traffic
    /// mode (sends, reads, deletes over a Zipf distribution) is not built yet.
    Loadtest(LoadtestArgs),
}

#[derive(Debug, clap::Args)]
struct LoadtestArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// Open this many idle WebSocket sessions and measure their cost to the server.
    #[arg(long)]
    connections: Option<usize>,
    /// Users to register; sessions are spread over them (default: one session per user).
    /// At most --ws-max-sessions-per-user sessions per user are accepted by the server.
    #[arg(long)]
    users: Option<usize>,
    /// How long to hold the sessions open before measuring: e.g. `10s`, `2m`, `500ms`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Registrations and session openings in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    concurrency: u64,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `10s`, `2m`, `500ms`, `1h`, or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
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

async fn loadtest(args: LoadtestArgs) -> anyhow::Result<()> {
    let Some(connections) = args.connections else {
        anyhow::bail!(
            "only the connections mode is built so far: pass --connections N (the message \
             traffic mode is not built yet)"
        );
    };
    let mut plan = missive_cli::loadtest::ConnectionsPlan::new(&args.target, connections);
    if let Some(users) = args.users {
        plan.users = users;
    }
    plan.hold = args.duration;
    plan.concurrency = args.concurrency as usize;
    let report = missive_cli::loadtest::connections(&plan).await?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    missive_events::cap_decode_allocation();
    missive_telemetry::init_tracing(match cli.log_format {
        Format::Human => LogFormat::Human,
        Format::Json => LogFormat::Json,
    });
    match cli.command {
        Command::Serve(args) => run(args.config(Role::All)?).await,
        Command::Loadtest(args) => loadtest(args).await,
        Command::Api(args) => run(args.config(Role::Api)?).await,
        Command::Project(args) => run(args.config(Role::Projector)?).await,
        Command::Dlq(DlqCommand::List { log, data_dir }) => {
            let log = log.backend()?.open(&data_dir).await?;
            for letter in log.dead_letters().await? {
                println!("{}", missive_cli::dlq::to_json(&letter));
            }
            Ok(())
        }
        Command::Dlq(DlqCommand::Retry {
            log,
            store,
            data_dir,
        }) => {
            let log = log.backend()?.open(&data_dir).await?;
            let store = store.backend()?.open(&data_dir).await?;
            let outcome = missive_cli::dlq::retry(log.as_ref(), store.as_ref()).await?;
            for letter in &outcome.resolved {
                println!("resolved {} ({})", letter.source, letter.event_type);
            }
            for (letter, error) in &outcome.failing {
                println!(
                    "still failing {} ({}): {error}",
                    letter.source, letter.event_type
                );
            }
            println!(
                "{} resolved, {} still failing",
                outcome.resolved.len(),
                outcome.failing.len()
            );
            if !outcome.failing.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Store(StoreCommand::Migrate { store, replication }) => {
            let mut config = store.config()?;
            config.replication = missive_store::scylla::Replication::parse(&replication)
                .map_err(anyhow::Error::msg)?;
            let session = missive_store::scylla::connect(&config).await?;
            let migrated = missive_store::scylla::migrate(&session, &config).await?;
            for version in &migrated.applied {
                println!("applied schema version {version}");
            }
            println!(
                "keyspace {}: {} version(s) applied now, {} already applied",
                config.keyspace,
                migrated.applied.len(),
                migrated.already.len()
            );
            Ok(())
        }
        Command::Topics(TopicsCommand::Create {
            log,
            partitions,
            replication,
        }) => {
            let LogBackend::Kafka(config) = log.backend()? else {
                anyhow::bail!("`missive topics create` needs --log kafka://host:port");
            };
            let created =
                missive_log::kafka::create_topics(&config, partitions, replication).await?;
            for topic in created {
                println!("{topic}");
            }
            Ok(())
        }
        Command::Token {
            user_id,
            data_dir,
            jwt_secret,
            ttl_days,
        } => {
            let secret = match jwt_secret {
                Some(s) => s.into_bytes(),
                None => missive_cli::secret::read_secret(&data_dir)?.with_context(|| {
                    format!(
                        "no JWT secret in {}: start `missive serve --data-dir {}` once, or pass --jwt-secret",
                        data_dir.display(),
                        data_dir.display()
                    )
                })?,
            };
            let token = missive_api::Secret::new(secret).issue(
                user_id,
                chrono::Utc::now().timestamp(),
                (ttl_days * 24 * 3600) as i64,
            );
            println!("{token}");
            Ok(())
        }
    }
}

/// Runs until a task fails or SIGTERM/Ctrl-C, then shuts down gracefully.
async fn run(config: ServerConfig) -> anyhow::Result<()> {
    let mut running = start(config).await?;
    tokio::select! {
        r = running.wait() => r,
        _ = shutdown_signal() => {
            tracing::info!("shutting down: draining requests");
            running.shutdown().await
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
