//! Analytics: usage figures computed from the event log alone, kept as exact rollups.
//!
//! [`Analytics`] is a consumer group (`analytics`) over every stream. From each event's time
//! (`Envelope::occurred_at`, UTC) it counts, per minute and per day: direct and channel
//! messages, conversations started, friend requests and accepts, and the distributions of
//! delivery and read latency; and it records which users were active on each day and in each
//! month (DAU, MAU). The definitions are in [`aggregate`]. It exports Prometheus metrics and
//! writes the rollups to an [`AnalyticsStore`], which [`report`] queries.
//!
//! # Exactly once, without transactions
//! One consumer owns a log partition at a time, so it is the single writer of the rows that
//! count that partition's events: one row per (bucket, partition). A row holds absolute values
//! and `through`, the offset below which every event of the partition that falls in the bucket
//! is counted. An event at an offset below its row's `through` is skipped; rows are written
//! whole, never incremented, and a store never replaces a row with one of a lower `through`.
//! Active users and conversations' first messages are sets. So reapplying any prefix of the
//! log (redelivery, a crash between any two writes, a full re-run) changes nothing, and the
//! checkpoint, written last, only saves work. The SQLite store writes a batch and its
//! checkpoint in one transaction; the Scylla store writes them in that order, idempotently.
//!
//! # Layout
//! - [`model`]: buckets, counters, latency histograms, rollup rows, the batch of writes.
//! - [`aggregate`]: the pure part: what an event contributes; folding batches into rows.
//! - [`report`]: report queries (validated) and answers.
//! - [`sqlite`]: the embedded store (its own database file).
//! - `scylla` (feature `scylla`, on by default): the store on the read store's keyspace
//!   (`projections/0004_analytics.cql`).
//! - [`worker`]: the consumer ([`Analytics`]) and its metrics.
//! - [`contract`]: the store contract suite, generic over any [`AnalyticsStore`].

pub mod aggregate;
pub mod contract;
pub mod model;
pub mod report;
#[cfg(feature = "scylla")]
pub mod scylla;
pub mod sqlite;
pub mod worker;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use missive_log::Position;
use uuid::Uuid;

pub use model::{
    AnalyticsBatch, Counts, FirstMessage, Granularity, Histogram, Period, Rollup, RollupKey,
};
pub use report::{AnalyticsReport, QueryError, ReportQuery, report};
pub use worker::{Analytics, AnalyticsError, CONSUMER_GROUP, Progress};

/// What can go wrong with an analytics store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the analytics store failed while {action}")]
    Sqlite {
        action: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// A request to the Scylla store failed (after the driver's own retries).
    #[error("the analytics store failed while {action}: {reason}")]
    Scylla {
        action: &'static str,
        /// Timeouts, unavailable replicas, overload, lost connections.
        transient: bool,
        reason: String,
    },
    #[error("the analytics store holds a value it cannot read: {0}")]
    Corrupt(String),
    /// The keyspace lacks the analytics tables (`missive store migrate`).
    #[error("the analytics store's schema is not ready: {0}")]
    Schema(String),
    #[error("the analytics store is unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Whether trying again later may succeed (busy, locked, unreachable), as opposed to a
    /// refusal that fails every time.
    pub fn is_transient(&self) -> bool {
        use rusqlite::ErrorCode::*;
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Scylla { transient, .. } => *transient,
            StoreError::Sqlite {
                source: rusqlite::Error::SqliteFailure(e, _),
                ..
            } => matches!(
                e.code,
                DatabaseBusy | DatabaseLocked | SystemIoFailure | DiskFull | CannotOpen
            ),
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The analytics store port. Implementations: [`sqlite::SqliteAnalytics`] (embedded),
/// `scylla::ScyllaAnalytics`.
#[async_trait]
pub trait AnalyticsStore: Send + Sync + 'static {
    /// Writes a batch: active users and first messages, then rollups, then the checkpoint of
    /// `consumer`. Every part is idempotent: members are set members, a first message keeps
    /// the lowest offset it was given, a rollup row is replaced only by one with a higher
    /// `through`, a checkpoint only moves forward.
    async fn write(&self, consumer: &str, batch: AnalyticsBatch) -> Result<()>;

    /// `consumer`'s checkpoints, one per partition it has written.
    async fn checkpoints(&self, consumer: &str) -> Result<Vec<Position>>;

    /// The rows of `keys` that exist.
    async fn rollups(&self, keys: &[RollupKey]) -> Result<Vec<Rollup>>;

    /// The recorded first messages of those of `conversations` that have one.
    async fn first_messages(&self, conversations: &[Uuid]) -> Result<Vec<FirstMessage>>;

    /// Every row (of every partition) of `granularity` whose bucket starts in `[from, to)`.
    async fn rollups_between(
        &self,
        granularity: Granularity,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Rollup>>;

    /// How many distinct users were active in `period`.
    async fn active_users(&self, period: Period) -> Result<u64>;
}
