//! The analytics store on ScyllaDB or Cassandra: the tables of
//! `projections/0004_analytics.cql`, in the read store's keyspace.
//!
//! There are no transactions, so every write is idempotent and carries `USING TIMESTAMP`
//! derived from the log, never the server clock:
//! - a rollup row is written whole at `through + 2`: a newer row (higher watermark) wins over
//!   any older write, whatever order they land in, and two writes of one watermark are equal;
//! - an active user is a row written at 1 (rows that only ever appear);
//! - a conversation's first message is written at `2^50 - offset`: the lowest offset wins;
//! - a checkpoint is written at `next_offset + 2`: it only moves forward.
//!
//! [`ScyllaAnalytics::write`] sends a batch's set members first, then its rollup rows, then its
//! checkpoint, each step only once the one before succeeded. A crash anywhere leaves a prefix
//! of that, and processing the batch again from the older checkpoint completes it without
//! counting anything twice (the rows' watermarks say what they include).
//!
//! Partitions stay bounded: minute rows are partitioned by (granularity, day), day rows by
//! (granularity, month); active users by (period, shard of 16 by user id).

use std::sync::Arc;

use ::scylla::client::session::Session;
use ::scylla::errors::{ExecutionError, NextRowError, PagerExecutionError};
use ::scylla::serialize::row::SerializeRow;
use ::scylla::statement::prepared::PreparedStatement;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt, stream};
use missive_log::Position;
use missive_store::scylla::ScyllaConfig;
use missive_store::scylla::{exec_transient, next_page_transient, prepare_transient};
use uuid::Uuid;

use crate::model::from_micros;
use crate::{
    AnalyticsBatch, AnalyticsStore, Counts, FirstMessage, Granularity, Histogram, Period, Result,
    Rollup, RollupKey, StoreError,
};

/// The schema version (`projections/0004_analytics.cql`) that creates these tables.
pub const SCHEMA_VERSION: i32 = 4;
/// Active users of a period are spread over this many partitions.
pub const ACTIVE_SHARDS: i32 = 16;
/// Writes in flight at once.
const IN_FLIGHT: usize = 64;
/// Write timestamp of first messages: `FIRST_TS - offset`, so the lowest offset wins.
const FIRST_TS: i64 = 1 << 50;

/// Every statement the adapter prepares (tables unqualified: the session uses the keyspace).
pub mod cql {
    macro_rules! rollup_columns {
        () => {
            "granularity, bucket_us, log_partition, through_offset, messages, channel_messages, \
             conversations_started, friend_requests, friend_accepts, delivery_latency, \
             read_latency"
        };
    }

    pub const ROLLUP_PUT: &str = concat!(
        "INSERT INTO analytics_rollups (span_us, ",
        rollup_columns!(),
        ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
    );
    pub const ROLLUP_GET: &str = concat!(
        "SELECT ",
        rollup_columns!(),
        " FROM analytics_rollups WHERE granularity = ? AND span_us = ? AND bucket_us = ? \
         AND log_partition = ?"
    );
    pub const ROLLUPS_BETWEEN: &str = concat!(
        "SELECT ",
        rollup_columns!(),
        " FROM analytics_rollups WHERE granularity = ? AND span_us = ? AND bucket_us >= ? \
         AND bucket_us < ?"
    );
    pub const ACTIVE_PUT: &str = "INSERT INTO analytics_active_users (period, shard, user_id) \
        VALUES (?, ?, ?) USING TIMESTAMP 1";
    pub const ACTIVE_COUNT: &str =
        "SELECT COUNT(*) FROM analytics_active_users WHERE period = ? AND shard = ?";
    pub const FIRST_PUT: &str = "INSERT INTO analytics_conversations (conversation_id, \
        log_partition, first_offset) VALUES (?, ?, ?) USING TIMESTAMP ?";
    pub const FIRST_GET: &str = "SELECT log_partition, first_offset FROM analytics_conversations \
        WHERE conversation_id = ?";
    pub const CHECKPOINT_PUT: &str = "INSERT INTO analytics_checkpoints (consumer, \
        log_partition, next_offset) VALUES (?, ?, ?) USING TIMESTAMP ?";
    pub const CHECKPOINTS_GET: &str =
        "SELECT log_partition, next_offset FROM analytics_checkpoints WHERE consumer = ?";

    /// Every statement above.
    pub const ALL: &[&str] = &[
        ROLLUP_PUT,
        ROLLUP_GET,
        ROLLUPS_BETWEEN,
        ACTIVE_PUT,
        ACTIVE_COUNT,
        FIRST_PUT,
        FIRST_GET,
        CHECKPOINT_PUT,
        CHECKPOINTS_GET,
    ];
}

// ----- errors (classified as the read store does: missive_store::scylla) -----

fn failed(action: &'static str, transient: bool, reason: impl ToString) -> StoreError {
    StoreError::Scylla {
        action,
        transient,
        reason: reason.to_string(),
    }
}

fn exec_err(action: &'static str) -> impl FnOnce(ExecutionError) -> StoreError {
    move |e| failed(action, exec_transient(&e), e)
}

fn pager_err(action: &'static str) -> impl FnOnce(PagerExecutionError) -> StoreError {
    move |e| {
        let transient = match &e {
            PagerExecutionError::PrepareError(p) => prepare_transient(p),
            PagerExecutionError::NextPageError(n) => next_page_transient(n),
            _ => false,
        };
        failed(action, transient, e)
    }
}

fn row_err(action: &'static str) -> impl Fn(NextRowError) -> StoreError {
    move |e| {
        let transient = matches!(&e, NextRowError::NextPageError(n) if next_page_transient(n));
        failed(action, transient, e)
    }
}

fn shape_err(action: &'static str) -> impl Fn(String) -> StoreError {
    move |reason| StoreError::Corrupt(format!("{action}: {reason}"))
}

// ----- values -----

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} is negative: {v}")))
}

fn partition_of(p: u32) -> Result<i32> {
    i32::try_from(p).map_err(|_| StoreError::Corrupt(format!("log partition {p} exceeds int")))
}

/// The write timestamp of a value that includes the log up to `next` (exclusive).
fn at_offset(next: u64) -> i64 {
    int(next).saturating_add(2)
}

fn shard_of(user: Uuid) -> i32 {
    i32::from(user.as_bytes()[15]) % ACTIVE_SHARDS
}

type RollupRow = (
    String,
    i64,
    i32,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);

fn rollup_from(row: RollupRow) -> Result<Rollup> {
    let (g, bucket_us, partition, through, m, cm, cs, fr, fa, delivery, read) = row;
    let granularity = Granularity::parse(&g)
        .ok_or_else(|| StoreError::Corrupt(format!("rollup granularity {g:?}")))?;
    let partition = u32::try_from(partition)
        .map_err(|_| StoreError::Corrupt(format!("log partition {partition}")))?;
    Ok(Rollup {
        key: RollupKey {
            granularity,
            start: from_micros(bucket_us),
            partition,
        },
        through: uint(through, "a rollup's through offset")?,
        counts: Counts {
            messages: uint(m, "messages")?,
            channel_messages: uint(cm, "channel messages")?,
            conversations_started: uint(cs, "conversations started")?,
            friend_requests: uint(fr, "friend requests")?,
            friend_accepts: uint(fa, "friend accepts")?,
        },
        delivery: Histogram::decode(&delivery.unwrap_or_default()).map_err(StoreError::Corrupt)?,
        read: Histogram::decode(&read.unwrap_or_default()).map_err(StoreError::Corrupt)?,
    })
}

struct Statements {
    rollup_put: PreparedStatement,
    rollup_get: PreparedStatement,
    rollups_between: PreparedStatement,
    active_put: PreparedStatement,
    active_count: PreparedStatement,
    first_put: PreparedStatement,
    first_get: PreparedStatement,
    checkpoint_put: PreparedStatement,
    checkpoints_get: PreparedStatement,
}

async fn prepare(session: &Session, cql: &'static str) -> Result<PreparedStatement> {
    let mut statement = session.prepare(cql).await.map_err(|e| {
        failed(
            "preparing a statement",
            prepare_transient(&e),
            format!("{e} ({cql})"),
        )
    })?;
    // Every write carries its own timestamp and every read is a read: all are safe to retry.
    statement.set_is_idempotent(true);
    Ok(statement)
}

/// The Scylla [`AnalyticsStore`].
#[derive(Clone)]
pub struct ScyllaAnalytics {
    session: Arc<Session>,
    keyspace: String,
    st: Arc<Statements>,
}

impl std::fmt::Debug for ScyllaAnalytics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaAnalytics")
            .field("keyspace", &self.keyspace)
            .finish()
    }
}

impl ScyllaAnalytics {
    /// Connects (as the read store does), uses the configured keyspace, checks that schema
    /// version 4 is applied (`missive store migrate`), and prepares every statement.
    pub async fn open(config: &ScyllaConfig) -> Result<Self> {
        let session = missive_store::scylla::open_keyspace(config, &[SCHEMA_VERSION])
            .await
            .map_err(|e| match e {
                missive_store::StoreError::Schema(why) => StoreError::Schema(why),
                other => StoreError::Unavailable(other.to_string()),
            })?;
        let ks = &config.keyspace;
        let s = &session;
        let st = Statements {
            rollup_put: prepare(s, cql::ROLLUP_PUT).await?,
            rollup_get: prepare(s, cql::ROLLUP_GET).await?,
            rollups_between: prepare(s, cql::ROLLUPS_BETWEEN).await?,
            active_put: prepare(s, cql::ACTIVE_PUT).await?,
            active_count: prepare(s, cql::ACTIVE_COUNT).await?,
            first_put: prepare(s, cql::FIRST_PUT).await?,
            first_get: prepare(s, cql::FIRST_GET).await?,
            checkpoint_put: prepare(s, cql::CHECKPOINT_PUT).await?,
            checkpoints_get: prepare(s, cql::CHECKPOINTS_GET).await?,
        };
        Ok(ScyllaAnalytics {
            session,
            keyspace: ks.clone(),
            st: Arc::new(st),
        })
    }

    async fn write_one(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        action: &'static str,
    ) -> Result<()> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(exec_err(action))?;
        Ok(())
    }

    /// Every row of a point or single-page read.
    async fn rows<T>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        action: &'static str,
    ) -> Result<Vec<T>>
    where
        T: for<'f, 'm> ::scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(exec_err(action))?
            .into_rows_result()
            .map_err(|e| e.to_string())
            .map_err(shape_err(action))?;
        let rows = result
            .rows::<T>()
            .map_err(|e| e.to_string())
            .map_err(shape_err(action))?;
        rows.map(|r| r.map_err(|e| e.to_string()).map_err(shape_err(action)))
            .collect()
    }

    /// Every row of a partition slice, page by page.
    async fn all<T>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        action: &'static str,
    ) -> Result<Vec<T>>
    where
        T: for<'f, 'm> ::scylla::deserialize::row::DeserializeRow<'f, 'm> + Send + 'static,
    {
        self.session
            .execute_iter(statement.clone(), values)
            .await
            .map_err(pager_err(action))?
            .rows_stream::<T>()
            .map_err(|e| e.to_string())
            .map_err(shape_err(action))?
            .map_err(row_err(action))
            .try_collect()
            .await
    }
}

/// Runs `writes` with at most [`IN_FLIGHT`] at once; fails with the first error once none is
/// in flight.
async fn concurrently<I, F>(writes: I) -> Result<()>
where
    I: IntoIterator<Item = F>,
    F: std::future::Future<Output = Result<()>>,
{
    stream::iter(writes)
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

#[async_trait]
impl AnalyticsStore for ScyllaAnalytics {
    async fn write(&self, consumer: &str, batch: AnalyticsBatch) -> Result<()> {
        let st = &self.st;
        // 1. Set members: harmless on their own.
        let mut sets = Vec::new();
        for (period, user) in &batch.active_users {
            let values = (period.key(), shard_of(*user), *user);
            sets.push(futures::future::Either::Left(self.write_one(
                &st.active_put,
                values,
                "recording an active user",
            )));
        }
        for f in &batch.first_messages {
            let values = (
                f.conversation_id,
                partition_of(f.partition)?,
                int(f.offset),
                FIRST_TS - int(f.offset).min(FIRST_TS - 1),
            );
            sets.push(futures::future::Either::Right(self.write_one(
                &st.first_put,
                values,
                "recording a first message",
            )));
        }
        concurrently(sets).await?;
        // 2. Rollup rows, whole, at their watermark.
        let mut rows = Vec::new();
        for r in &batch.rollups {
            let c = &r.counts;
            let g = r.key.granularity;
            let values = (
                g.span(r.key.start).timestamp_micros(),
                g.name(),
                r.key.start.timestamp_micros(),
                partition_of(r.key.partition)?,
                int(r.through),
                int(c.messages),
                int(c.channel_messages),
                int(c.conversations_started),
                int(c.friend_requests),
                int(c.friend_accepts),
                r.delivery.encode(),
                r.read.encode(),
                at_offset(r.through),
            );
            rows.push(self.write_one(&st.rollup_put, values, "writing a rollup"));
        }
        concurrently(rows).await?;
        // 3. The checkpoint, last.
        let mut checkpoints = Vec::new();
        for p in &batch.checkpoint {
            let values = (
                consumer.to_owned(),
                partition_of(p.partition)?,
                int(p.offset),
                at_offset(p.offset),
            );
            checkpoints.push(self.write_one(&st.checkpoint_put, values, "writing a checkpoint"));
        }
        concurrently(checkpoints).await
    }

    async fn checkpoints(&self, consumer: &str) -> Result<Vec<Position>> {
        let rows: Vec<(i32, i64)> = self
            .all(
                &self.st.checkpoints_get,
                (consumer.to_owned(),),
                "reading checkpoints",
            )
            .await?;
        rows.into_iter()
            .map(|(partition, next)| {
                let partition = u32::try_from(partition)
                    .map_err(|_| StoreError::Corrupt(format!("log partition {partition}")))?;
                Ok(Position::new(partition, uint(next, "a checkpoint")?))
            })
            .collect()
    }

    async fn rollups(&self, keys: &[RollupKey]) -> Result<Vec<Rollup>> {
        let reads = keys.iter().copied().map(|key| async move {
            let g = key.granularity;
            let values = (
                g.name(),
                g.span(key.start).timestamp_micros(),
                key.start.timestamp_micros(),
                partition_of(key.partition)?,
            );
            let rows: Vec<RollupRow> = self
                .rows(&self.st.rollup_get, values, "reading a rollup")
                .await?;
            rows.into_iter().next().map(rollup_from).transpose()
        });
        let found: Vec<Option<Rollup>> = stream::iter(reads)
            .buffer_unordered(IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    async fn first_messages(&self, conversations: &[Uuid]) -> Result<Vec<FirstMessage>> {
        let reads = conversations.iter().copied().map(|c| async move {
            let rows: Vec<(i32, i64)> = self
                .rows(&self.st.first_get, (c,), "reading a first message")
                .await?;
            rows.into_iter()
                .next()
                .map(|(partition, offset)| {
                    Ok(FirstMessage {
                        conversation_id: c,
                        partition: u32::try_from(partition).map_err(|_| {
                            StoreError::Corrupt(format!("log partition {partition}"))
                        })?,
                        offset: uint(offset, "a first message's offset")?,
                    })
                })
                .transpose()
        });
        let found: Vec<Option<FirstMessage>> = stream::iter(reads)
            .buffer_unordered(IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    async fn rollups_between(
        &self,
        granularity: Granularity,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Rollup>> {
        let mut out = Vec::new();
        let mut span = granularity.span(from);
        while span < to {
            let rows: Vec<RollupRow> = self
                .all(
                    &self.st.rollups_between,
                    (
                        granularity.name(),
                        span.timestamp_micros(),
                        from.timestamp_micros(),
                        to.timestamp_micros(),
                    ),
                    "reading rollups",
                )
                .await?;
            for row in rows {
                out.push(rollup_from(row)?);
            }
            span = granularity.next_span(span);
        }
        Ok(out)
    }

    async fn active_users(&self, period: Period) -> Result<u64> {
        let key = period.key();
        let counts = (0..ACTIVE_SHARDS).map(|shard| {
            let key = key.clone();
            async move {
                let rows: Vec<(i64,)> = self
                    .rows(&self.st.active_count, (key, shard), "counting active users")
                    .await?;
                uint(rows.first().map_or(0, |(n,)| *n), "an active-user count")
            }
        });
        let counts: Vec<u64> = stream::iter(counts)
            .buffer_unordered(IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(counts.into_iter().sum())
    }
}
