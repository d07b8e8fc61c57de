//! `missive`: run the server (whole, or as API and projector parts), manage the Kafka topics
//! and the Scylla schema, handle dead letters, or mint a token.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
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
    /// The log as tools open it (`events`, `replay`, `dlq`): the topics' settings are the servers'
    /// business, not checked again here.
    fn tool_backend(&self) -> anyhow::Result<LogBackend> {
        let mut backend = self.backend()?;
        if let LogBackend::Kafka(config) = &mut backend {
            config.check_topic_settings = false;
        }
        Ok(backend)
    }

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
        /// The message retention of the servers (`--retention-days`): the messages topic
        /// keeps its records that long; every other topic keeps them forever. 0: forever.
        #[arg(long, env = "MISSIVE_RETENTION_DAYS", default_value_t = 0)]
        retention_days: u32,
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
    /// Whether `serve` also runs the analytics consumer (rollups in `analytics.db`, or the
    /// Scylla keyspace) and the API answers GET /v1/admin/analytics. With split processes,
    /// run `missive analytics` for the consumer; `api` processes answer the queries.
    #[arg(long, env = "MISSIVE_ANALYTICS", value_enum, default_value = "on")]
    analytics: OnOff,
    /// Commands (POST, PATCH, PUT, DELETE) per second one user may send, with a burst of 2 s
    /// worth; more are refused with 429 and Retry-After. 0 turns the limit off (benchmarks).
    #[arg(long, env = "MISSIVE_RATE_LIMIT_PER_USER", default_value_t = 20.0)]
    rate_limit_per_user: f64,
    /// Commands per second one client address may send (IPv6: per /64); 0 turns it off.
    #[arg(long, env = "MISSIVE_RATE_LIMIT_PER_IP", default_value_t = 200.0)]
    rate_limit_per_ip: f64,
    /// Take the client address from the last X-Forwarded-For entry: only behind exactly one
    /// reverse proxy that appends it.
    #[arg(long, env = "MISSIVE_TRUST_FORWARDED_FOR")]
    trust_forwarded_for: bool,
    /// A second listener serving only GET /metrics and GET /healthz (for Prometheus, and the
    /// only HTTP a `missive project` process has).
    #[arg(long, env = "MISSIVE_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Direct and channel messages older than this many days are removed from the read
    /// models (and, on Kafka, the messages topic should keep its records as long: `missive
    /// topics create --retention-days`). 0 keeps them forever.
    #[arg(long, env = "MISSIVE_RETENTION_DAYS", default_value_t = 0)]
    retention_days: u32,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
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
        config.retention =
            missive_store::Retention::days(self.retention_days).map_err(anyhow::Error::msg)?;
        if let LogBackend::Kafka(kafka) = &mut config.log {
            kafka.messages_retention = config.retention.period();
        }
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
        config.analytics = matches!(self.analytics, OnOff::On);
        config.rate_limits = missive_api::ratelimit::RateLimits {
            per_user: self.rate_limit_per_user,
            per_ip: self.rate_limit_per_ip,
            trust_forwarded: self.trust_forwarded_for,
            ..Default::default()
        };
        config
            .rate_limits
            .validate()
            .context("--rate-limit-per-user / --rate-limit-per-ip")?;
        config.admin_listen = self.admin_listen;
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
#[derive(Debug, Clone, clap::Args)]
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
    /// Copy the users' encryption keys (and deleted users' tombstones) from the --store
    /// keyspace into another one. `missive replay --into scylla://...` does it when its
    /// rebuild ends; run this again when switching the servers to the rebuilt keyspace, after
    /// the old API processes stopped and before the new ones start, for the keys made in
    /// between. Safe to repeat; a user with a different key on each side is not copied (and
    /// the command fails, naming them).
    CopyKeys {
        #[command(flatten)]
        store: StoreArgs,
        /// The keyspace to copy into: `scylla://host:port[,host:port...]/keyspace`, migrated
        /// (`missive store migrate`).
        #[arg(long)]
        into: String,
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
    /// Run the analytics consumer only (no HTTP): a consumer group of its own that computes,
    /// from the events alone, messages per minute, conversations started, the friendship
    /// funnel, delivery and read latency, and daily and monthly active users, into rollups
    /// per minute and per day (queried with GET /v1/admin/analytics and an admin token).
    /// Restartable without double counting. Serves GET /metrics (and /healthz) on --listen.
    Analytics(ServeArgs),
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
        /// An operator's token: it may call the admin routes (GET /v1/admin/analytics; block,
        /// unblock and delete users under /v1/admin/users). It is also a user token for USER_ID:
        /// mint operators' tokens for an id of their own.
        #[arg(long)]
        admin: bool,
    },
    /// Drive a running Missive over HTTP and WebSocket like real users, and report what it
    /// cost. By default (traffic mode): registers --users, befriends them (--friends-per-user),
    /// opens a WebSocket session each, then sends, reads history, marks read and deletes
    /// (--mix) over a Zipf distribution of conversations (--zipf), for --duration or --count,
    /// at a fixed --rate (open model: latency from the scheduled instant) or at full speed
    /// with --concurrency workers; reports throughput and latency percentiles per operation,
    /// errors by kind, send-to-WebSocket and send-to-history latency, and projector lag.
    /// `--connections N` instead opens N idle sessions and reports the server's memory per
    /// session. Registration must be open on the target.
    Loadtest(missive_cli::loadtest::LoadtestArgs),
    /// Rebuild read models from the event log: into a fresh target while the live system keeps
    /// serving (then switch with --swap, or, with Scylla, by pointing --store at the new
    /// keyspace), as they were at a point in time (--until), or into a scratch target compared
    /// row by row with the live read models (--verify). Reports the rebuild speed in events/s.
    ///
    /// A target holds its checkpoints with its read models: a rebuild that is interrupted
    /// (Ctrl-C) resumes where it stopped when run again, and a rebuilt store can be caught up
    /// again later; the live projectors carry on from where the rebuild ended.
    Replay(ReplayArgs),
    /// Print the event log's records as JSON lines (decoded with the schemas in schemas/, old
    /// versions upcast), for debugging and for piping into other tools (e.g. jq).
    #[command(subcommand)]
    Events(EventsCommand),
}

/// Which projection `missive replay` rebuilds.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Projection {
    /// The read models the queries read (users, friendships, conversations, messages,
    /// servers, channels).
    ReadModels,
    /// The analytics consumer's rollups (`analytics.db`, or the analytics tables of a Scylla
    /// keyspace); a rebuild runs up to the log's end (no --until, no --verify).
    Analytics,
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// The data directory (the embedded log and read store live there).
    #[arg(long, env = "MISSIVE_DATA_DIR", default_value = "./missive-data")]
    data_dir: PathBuf,
    #[command(flatten)]
    log: LogArgs,
    /// The live read store (`embedded` or `scylla://host:port/keyspace`): what --verify
    /// compares with, and the kind of target a rebuild makes.
    #[arg(long = "store", env = "MISSIVE_STORE")]
    store: Option<String>,
    #[command(flatten)]
    scylla: ScyllaArgs,
    /// The servers' message retention (`--retention-days`): a rebuild leaves out messages
    /// past it, and writes Scylla rows with the TTL they have left. 0 keeps everything.
    #[arg(long, env = "MISSIVE_RETENTION_DAYS", default_value_t = 0)]
    retention_days: u32,
    /// Where to rebuild: a SQLite file (embedded; default `<data-dir>/read.rebuild.db`) or a
    /// keyspace `scylla://host:port/keyspace` (required with a Scylla live store; created and
    /// migrated if needed). With --verify, the scratch target (default: a temporary file, or
    /// the keyspace `<live>_verify`, dropped afterwards).
    #[arg(long)]
    into: Option<String>,
    /// The projection to rebuild.
    #[arg(long, value_enum, default_value = "read-models")]
    projection: Projection,
    /// Build the read models as they were at a moment: an RFC 3339 time
    /// (`2026-12-03T10:00:00Z`) or date (`2026-12-03`), events up to it included; or log
    /// positions `<partition>:<offset>[,...]` naming every partition, those events included.
    #[arg(long, value_parser = missive_cli::events::Bound::parse)]
    until: Option<missive_cli::events::Bound>,
    /// Rebuild into a scratch target up to the live read models' checkpoints and compare the
    /// two row by row; print every difference and exit 1 if there is one.
    #[arg(long, conflicts_with_all = ["until", "swap"])]
    verify: bool,
    /// Embedded only: with every server of the data directory stopped, catch the rebuilt
    /// target up to the log's end and put it in place of `read.db` (the old one is kept as
    /// `read.db.replaced-<time>`). Start the server again afterwards: it continues from the
    /// target's checkpoints, so no event is lost between the rebuild and the swap.
    #[arg(long, conflicts_with = "until")]
    swap: bool,
    /// Replication of a Scylla target keyspace when it is created (see `missive store
    /// migrate`).
    #[arg(
        long,
        env = "MISSIVE_STORE_REPLICATION",
        default_value = "datacenter1:3"
    )]
    replication: String,
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Print the records up to the log's end (as it was when the dump began), then exit.
    Dump(EventsArgs),
    /// Print records as they are appended, until Ctrl-C (from the end, or from --from).
    Tail(EventsArgs),
}

#[derive(Debug, clap::Args)]
struct EventsArgs {
    /// The data directory (the embedded log lives there).
    #[arg(long, env = "MISSIVE_DATA_DIR", default_value = "./missive-data")]
    data_dir: PathBuf,
    #[command(flatten)]
    log: LogArgs,
    /// From a time (RFC 3339 or a date; inclusive) or log positions `<partition>:<offset>[,...]`
    /// (each partition named from that offset).
    #[arg(long, value_parser = missive_cli::events::Bound::parse)]
    from: Option<missive_cli::events::Bound>,
    /// Until a time (inclusive) or log positions (inclusive; partitions not named are not
    /// read).
    #[arg(long, value_parser = missive_cli::events::Bound::parse)]
    until: Option<missive_cli::events::Bound>,
    /// Only these event types (comma-separated, e.g. `MessageSent,MessagesRead`).
    #[arg(long = "type", value_delimiter = ',')]
    types: Vec<String>,
    /// Only the records of this partition key (a conversation, user or user pair's key).
    #[arg(long)]
    key: Option<String>,
}

impl EventsArgs {
    async fn run(self, follow: bool) -> anyhow::Result<()> {
        let filter = missive_cli::events::Filter {
            from: self.from,
            until: self.until,
            types: self.types,
            key: self.key,
        };
        filter.check().map_err(anyhow::Error::msg)?;
        let log = self.log.tool_backend()?.open(&self.data_dir).await?;
        let mut out = std::io::BufWriter::new(std::io::stdout());
        missive_cli::events::print(log.as_ref(), &filter, follow, &mut out, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
        Ok(())
    }
}

impl ReplayArgs {
    async fn run(self) -> anyhow::Result<()> {
        use missive_cli::replay;
        let analytics = matches!(self.projection, Projection::Analytics);
        if analytics {
            anyhow::ensure!(
                !self.verify && self.until.is_none(),
                "--verify and --until apply to --projection read-models; the analytics rollups \
                 are rebuilt to the log's end (their figures are exact under any re-run)"
            );
        }
        let live_backend = ReadStoreArgs {
            store: self.store.clone(),
            scylla: self.scylla.clone(),
        }
        .backend()?;
        let scylla_live = matches!(live_backend, StoreBackend::Scylla(_));
        if self.swap && scylla_live {
            anyhow::bail!(
                "--swap replaces the embedded read store; with Scylla, switching is a \
                 configuration change: restart `missive api` and `missive project` with \
                 --store naming the rebuilt keyspace (it holds its checkpoints, so its \
                 projectors continue exactly where the rebuild ended)"
            );
        }
        // Held for the whole swap: no server may start meanwhile.
        let _alone = if self.swap {
            Some(missive_cli::server::DataDirUse::exclusive(&self.data_dir)?)
        } else {
            None
        };
        let log = self.log.tool_backend()?.open(&self.data_dir).await?;
        let until = replay::until(log.as_ref(), self.until.as_ref()).await?;

        // Rebuilds open personal fields with the live users' keys, wherever they write: a
        // replay after an account's deletion finds its key destroyed, so it shows none of
        // that user's personal data.
        let vault = if analytics {
            None
        } else {
            Some(live_backend.open_vault(&self.data_dir).await?)
        };
        let opened =
            |store: Arc<dyn missive_store::ReadStore>| -> Arc<dyn missive_store::ReadStore> {
                match &vault {
                    Some(vault) => Arc::new(missive_keys::OpenedStore::new(store, vault.clone())),
                    None => store,
                }
            };

        if self.verify {
            let (scratch, cleanup) = self.scratch(&live_backend).await?;
            let scratch = opened(scratch);
            let verified = match &live_backend {
                // Never the opening that rebuilds a store of another schema version.
                StoreBackend::Embedded => {
                    let path = self.data_dir.join("read.db");
                    match missive_store::sqlite::SqliteStore::open_existing(&path) {
                        Ok(live) => replay::verify_embedded(log, &live, scratch).await,
                        Err(error) => Err(anyhow::Error::new(error)
                            .context(format!("opening the live store {}", path.display()))),
                    }
                }
                StoreBackend::Scylla(_) => match live_backend.open(&self.data_dir).await {
                    Ok(live) => replay::verify(log, live.as_ref(), scratch).await,
                    Err(error) => Err(error),
                },
            };
            cleanup.run().await;
            let verified = verified?;
            for rebuilt in &verified.rebuilt {
                println!("{}", replay::summary(rebuilt));
            }
            let at: Vec<String> = verified
                .at
                .iter()
                .map(|(p, o)| format!("{p}:{o}"))
                .collect();
            let d = &verified.differences;
            if d.is_empty() {
                println!(
                    "verified: the live read models match a rebuild from the log ({} tables, {} \
                     rows, at {})",
                    d.compared_tables,
                    d.compared_rows,
                    at.join(",")
                );
                return Ok(());
            }
            print!("{}", d.report(20));
            println!(
                "DIFFERENT: {} of {} tables differ from a rebuild from the log (at {})",
                d.tables.len(),
                d.compared_tables,
                at.join(",")
            );
            std::process::exit(1);
        }

        if analytics {
            return self.rebuild_analytics(log, scylla_live).await;
        }
        let mut target = self.target(scylla_live).await?;
        target.store = opened(target.store);
        if self.until.is_some() {
            let held = replay::checkpoints(target.store.as_ref()).await?;
            anyhow::ensure!(
                held.is_empty(),
                "--until builds the read models as they were at a moment: it needs an empty \
                 target, and {} holds events already (up to {held:?})",
                target.name
            );
        }
        let rebuilt = replay::rebuild(log, target.store.clone(), &until).await?;
        println!("{}", replay::summary(&rebuilt));
        println!("target: {}", target.name);
        if let Some(keyspace) = &target.keyspace {
            // After the rebuild: keys made while it ran are copied too. Keys made after this
            // are copied by `missive store copy-keys`, run between stopping the old API
            // processes and starting the new ones.
            if let Some(copied) = live_backend.copy_keys_into(keyspace).await? {
                keys_copied(&copied)?;
            }
        }
        if !rebuilt.complete {
            interrupted(self.until.is_some());
        }
        if self.swap {
            let StoreTarget { path, store, .. } = target;
            drop(store);
            self.swap_into_place(path, "read.db")?;
        }
        Ok(())
    }

    /// `--swap`: puts the embedded target (its connections closed) in place of `live` and
    /// says so.
    fn swap_into_place(&self, target: Option<PathBuf>, live: &str) -> anyhow::Result<()> {
        let target = target.context("an embedded target")?;
        let kept = missive_cli::replay::swap_embedded(&self.data_dir, &target, live)?;
        println!(
            "swapped: {} now holds the rebuilt store{}; start the server again",
            self.data_dir.join(live).display(),
            kept.map(|k| format!(" (the old one: {})", k.display()))
                .unwrap_or_default()
        );
        Ok(())
    }

    /// `--projection analytics`: rebuild (and with --swap, put in place) the rollups.
    async fn rebuild_analytics(
        &self,
        log: Arc<dyn missive_log::EventLog>,
        scylla_live: bool,
    ) -> anyhow::Result<()> {
        use missive_cli::replay;
        let (name, store, path): (String, Arc<dyn missive_analytics::AnalyticsStore>, _) =
            match self.into.as_deref() {
                Some(url) if url.starts_with("scylla://") => {
                    let (config, _) = self.scylla_target(url, false).await?;
                    let store = missive_analytics::scylla::ScyllaAnalytics::open(&config).await?;
                    (
                        StoreBackend::Scylla(config).to_string(),
                        Arc::new(store),
                        None,
                    )
                }
                _ if scylla_live => anyhow::bail!(
                    "the live store is Scylla: name the target keyspace with --into \
                     scylla://host:port/keyspace"
                ),
                into => {
                    let path = into
                        .map_or_else(|| self.data_dir.join("analytics.rebuild.db"), PathBuf::from);
                    anyhow::ensure!(
                        !missive_cli::replay::same_path(&path, &self.data_dir.join("analytics.db")),
                        "--into {}: that is the live analytics store",
                        path.display()
                    );
                    let store = missive_analytics::sqlite::SqliteAnalytics::open(&path)
                        .with_context(|| format!("opening {}", path.display()))?;
                    (path.display().to_string(), Arc::new(store), Some(path))
                }
            };
        let rebuilt = replay::rebuild_analytics(log, store.clone()).await?;
        println!("{}", replay::summary(&rebuilt));
        println!("target: {name}");
        if !rebuilt.complete {
            interrupted(false);
        }
        if self.swap {
            drop(store);
            self.swap_into_place(path, "analytics.db")?;
        }
        Ok(())
    }

    /// The retention rebuilds project with.
    fn retention(&self) -> anyhow::Result<missive_store::Retention> {
        missive_store::Retention::days(self.retention_days).map_err(anyhow::Error::msg)
    }

    /// The rebuild's target store.
    async fn target(&self, scylla_live: bool) -> anyhow::Result<StoreTarget> {
        match self.into.as_deref() {
            Some(url) if url.starts_with("scylla://") => {
                let (config, _) = self.scylla_target(url, false).await?;
                let store = StoreBackend::Scylla(config.clone());
                Ok(StoreTarget {
                    name: store.to_string(),
                    store: store
                        .open_raw_with(&self.data_dir, &self.retention()?)
                        .await?,
                    path: None,
                    keyspace: Some(config),
                })
            }
            _ if scylla_live => anyhow::bail!(
                "the live store is Scylla: name the target keyspace with --into \
                 scylla://host:port/keyspace"
            ),
            into => {
                let path = into.map_or_else(
                    || missive_cli::replay::default_embedded_target(&self.data_dir),
                    PathBuf::from,
                );
                if missive_cli::replay::same_path(&path, &self.data_dir.join("read.db")) {
                    anyhow::bail!("--into {}: that is the live read store", path.display());
                }
                let store = missive_store::sqlite::SqliteStore::open(&path)
                    .with_context(|| format!("opening {}", path.display()))?
                    .with_retention(self.retention()?);
                Ok(StoreTarget {
                    name: path.display().to_string(),
                    store: Arc::new(store),
                    path: Some(path),
                    keyspace: None,
                })
            }
        }
    }

    /// The Scylla keyspace at `url` with the replay's flags, migrated (created if needed;
    /// dropped first when `fresh`).
    async fn scylla_target(
        &self,
        url: &str,
        fresh: bool,
    ) -> anyhow::Result<(
        missive_store::scylla::ScyllaConfig,
        Arc<scylla::client::session::Session>,
    )> {
        let mut config = self.scylla.config(url)?;
        config.replication = missive_store::scylla::Replication::parse(&self.replication)
            .map_err(anyhow::Error::msg)?;
        let session = missive_store::scylla::connect(&config).await?;
        if fresh {
            missive_store::scylla::drop_keyspace(&session, &config.keyspace).await?;
        }
        missive_store::scylla::migrate(&session, &config).await?;
        Ok((config, session))
    }

    /// The scratch target of --verify, and how to clean it up.
    async fn scratch(
        &self,
        live: &StoreBackend,
    ) -> anyhow::Result<(Arc<dyn missive_store::ReadStore>, Cleanup)> {
        match live {
            StoreBackend::Scylla(live) => {
                // The default scratch keyspace is ours by name: dropped before and after. One
                // named with --into is never dropped, and must hold no read models yet.
                let (url, ours) = match &self.into {
                    Some(url) => (url.clone(), false),
                    None => (
                        format!("scylla://{}/{}_verify", live.nodes.join(","), live.keyspace),
                        true,
                    ),
                };
                let (config, session) = self.scylla_target(&url, ours).await?;
                anyhow::ensure!(
                    config.keyspace != live.keyspace,
                    "--into names the live keyspace"
                );
                let store = StoreBackend::Scylla(config.clone())
                    .open_raw_with(&self.data_dir, &self.retention()?)
                    .await?;
                if ours {
                    return Ok((store, Cleanup::Keyspace(session, config.keyspace.clone())));
                }
                anyhow::ensure!(
                    missive_cli::replay::checkpoints(store.as_ref())
                        .await?
                        .is_empty(),
                    "--into {url}: the scratch keyspace holds read models already; name a new one"
                );
                Ok((store, Cleanup::Keep(config.keyspace.clone())))
            }
            StoreBackend::Embedded => {
                let dir = tempfile::tempdir_in(&self.data_dir)
                    .or_else(|_| tempfile::tempdir())
                    .context("creating a scratch directory")?;
                let path = match &self.into {
                    Some(into) => PathBuf::from(into),
                    None => dir.path().join("read.verify.db"),
                };
                anyhow::ensure!(
                    !path.exists(),
                    "--into {}: the scratch target must not exist",
                    path.display()
                );
                let store = missive_store::sqlite::SqliteStore::open(&path)
                    .with_context(|| format!("opening {}", path.display()))?
                    .with_retention(self.retention()?);
                Ok((Arc::new(store), Cleanup::Dir(dir)))
            }
        }
    }
}

/// Ends a rebuild stopped by Ctrl-C: nothing swapped, exit status 130.
fn interrupted(point_in_time: bool) -> ! {
    if point_in_time {
        eprintln!(
            "interrupted: the target holds part of the point in time; delete it and start again"
        );
    } else {
        eprintln!(
            "interrupted: the target is consistent; run the same command again to resume \
             (nothing was swapped)"
        );
    }
    std::process::exit(130)
}

/// A rebuild's target.
struct StoreTarget {
    name: String,
    store: Arc<dyn missive_store::ReadStore>,
    path: Option<PathBuf>,
    /// A Scylla target, which gets the live keyspace's keys.
    keyspace: Option<missive_store::scylla::ScyllaConfig>,
}

/// Prints what copying the users' keys did; an error when some could not be copied.
fn keys_copied(copied: &missive_keys::scylla::Copied) -> anyhow::Result<()> {
    println!(
        "keys: {} copied, {} already there, {} deleted users",
        copied.keys, copied.already, copied.tombstones
    );
    anyhow::ensure!(
        copied.conflicts.is_empty() && copied.unreadable.is_empty(),
        "not copied: users with a different key in each keyspace {:?} (something was sealed \
         with each: an API process already ran on the new keyspace; decide which key to keep \
         by hand), unreadable key rows {:?}",
        copied.conflicts,
        copied.unreadable
    );
    Ok(())
}

/// What --verify removes when done.
enum Cleanup {
    Dir(tempfile::TempDir),
    Keyspace(Arc<scylla::client::session::Session>, String),
    /// A scratch keyspace the operator named: left for them to drop.
    Keep(String),
}

impl Cleanup {
    async fn run(self) {
        match self {
            Cleanup::Dir(dir) => drop(dir),
            Cleanup::Keep(keyspace) => {
                eprintln!("the scratch keyspace {keyspace} is left in place: drop it when done")
            }
            Cleanup::Keyspace(session, keyspace) => {
                if let Err(error) = missive_store::scylla::drop_keyspace(&session, &keyspace).await
                {
                    eprintln!("could not drop the scratch keyspace {keyspace}: {error}");
                }
            }
        }
    }
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
        Command::Loadtest(args) => missive_cli::loadtest::run(args).await,
        Command::Replay(args) => args.run().await,
        Command::Events(EventsCommand::Dump(args)) => args.run(false).await,
        Command::Events(EventsCommand::Tail(args)) => args.run(true).await,
        Command::Api(args) => run(args.config(Role::Api)?).await,
        Command::Project(args) => run(args.config(Role::Projector)?).await,
        Command::Analytics(args) => run(args.config(Role::Analytics)?).await,
        Command::Dlq(DlqCommand::List { log, data_dir }) => {
            let log = log.tool_backend()?.open(&data_dir).await?;
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
            let log = log.tool_backend()?.open(&data_dir).await?;
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
        Command::Store(StoreCommand::CopyKeys { store, into }) => {
            let target = store.scylla.config(&into)?;
            let live = store.config()?;
            anyhow::ensure!(
                (&target.nodes, &target.keyspace) != (&live.nodes, &live.keyspace),
                "--into names the --store keyspace itself"
            );
            let live = StoreBackend::Scylla(live);
            let copied = live
                .copy_keys_into(&target)
                .await?
                .context("a Scylla store")?;
            keys_copied(&copied)
        }
        Command::Topics(TopicsCommand::Create {
            log,
            partitions,
            replication,
            retention_days,
        }) => {
            let LogBackend::Kafka(mut config) = log.backend()? else {
                anyhow::bail!("`missive topics create` needs --log kafka://host:port");
            };
            config.messages_retention = missive_store::Retention::days(retention_days)
                .map_err(anyhow::Error::msg)?
                .period();
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
            admin,
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
            let secret = missive_api::Secret::new(secret);
            let (now, ttl) = (
                chrono::Utc::now().timestamp(),
                (ttl_days * 24 * 3600) as i64,
            );
            let token = if admin {
                secret.issue_admin(user_id, now, ttl)
            } else {
                secret.issue(user_id, now, ttl)
            };
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
