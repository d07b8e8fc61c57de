//! The embedded analytics store: its own SQLite database (e.g. `analytics.db` beside the
//! read store), in WAL mode.
//!
//! A batch's writes and its checkpoint go in one transaction. Each write is guarded as the
//! port says (a row only by a higher `through`, a first message only by a lower offset, a
//! checkpoint only forward), so two writers during a hand-over cannot move anything back.
//! Calls run on tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use missive_log::Position;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use crate::model::from_micros;
use crate::{
    AnalyticsBatch, AnalyticsStore, Counts, FirstMessage, Granularity, Histogram, Period, Result,
    Rollup, RollupKey, StoreError,
};

/// The schema's version (`PRAGMA user_version`). A database of another version is refused:
/// the rollups are the record (rebuilding them means replaying the whole log).
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rollups (
    granularity           TEXT    NOT NULL,
    bucket_us             INTEGER NOT NULL,
    log_partition         INTEGER NOT NULL,
    through_offset        INTEGER NOT NULL,
    messages              INTEGER NOT NULL,
    channel_messages      INTEGER NOT NULL,
    conversations_started INTEGER NOT NULL,
    friend_requests       INTEGER NOT NULL,
    friend_accepts        INTEGER NOT NULL,
    delivery_latency      BLOB    NOT NULL,
    read_latency          BLOB    NOT NULL,
    PRIMARY KEY (granularity, bucket_us, log_partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS active_users (
    period  TEXT NOT NULL,
    user_id BLOB NOT NULL,
    PRIMARY KEY (period, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conversations (
    conversation_id BLOB PRIMARY KEY,
    log_partition   INTEGER NOT NULL,
    first_offset    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    consumer      TEXT    NOT NULL,
    log_partition INTEGER NOT NULL,
    next_offset   INTEGER NOT NULL,
    PRIMARY KEY (consumer, log_partition)
) WITHOUT ROWID;
";

const ROLLUP_COLUMNS: &str = "granularity, bucket_us, log_partition, through_offset, messages, \
    channel_messages, conversations_started, friend_requests, friend_accepts, delivery_latency, \
    read_latency";

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

/// The embedded [`AnalyticsStore`].
#[derive(Clone)]
pub struct SqliteAnalytics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteAnalytics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteAnalytics")
            .field("path", &self.inner.path)
            .finish()
    }
}

fn sql(action: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { action, source }
}

fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(sql("opening the analytics store"))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sql("enabling WAL mode"))?;
    // Each batch commits with its checkpoint; a commit lost in a power cut is recomputed from
    // the log on restart, so NORMAL (no fsync per commit) cannot make the rollups inexact.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sql("setting synchronous mode"))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(sql("setting the busy timeout"))?;
    Ok(conn)
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} is negative: {v}")))
}

impl SqliteAnalytics {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let writer = open_connection(path)?;
        let version: i64 = writer
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql("reading the schema version"))?;
        match version {
            0 => writer
                .execute_batch(&format!(
                    "BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                ))
                .map_err(sql("creating the analytics schema"))?,
            SCHEMA_VERSION => {}
            other => {
                return Err(StoreError::Schema(format!(
                    "{} has analytics schema version {other}, this build reads {SCHEMA_VERSION}",
                    path.display()
                )));
            }
        }
        let reader = open_connection(path)?;
        Ok(SqliteAnalytics {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: Mutex::new(writer),
                reader: Mutex::new(reader),
            }),
        })
    }

    /// Runs `f` on the blocking pool with the reader connection.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner.reader.lock()))
            .await
            .map_err(|e| StoreError::Unavailable(format!("analytics read task: {e}")))?
    }

    /// Writes a batch in one transaction (blocking).
    pub fn write_blocking(&self, consumer: &str, batch: &AnalyticsBatch) -> Result<()> {
        let mut conn = self.inner.writer.lock();
        let tx = conn
            .transaction()
            .map_err(sql("starting an analytics transaction"))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO active_users (period, user_id) VALUES (?1, ?2)
                     ON CONFLICT DO NOTHING",
                )
                .map_err(sql("preparing an active-user insert"))?;
            for (period, user) in &batch.active_users {
                stmt.execute(params![period.key(), user])
                    .map_err(sql("recording an active user"))?;
            }
        }
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO conversations (conversation_id, log_partition, first_offset)
                     VALUES (?1, ?2, ?3)
                     ON CONFLICT (conversation_id) DO UPDATE
                     SET log_partition = excluded.log_partition, first_offset = excluded.first_offset
                     WHERE excluded.first_offset < conversations.first_offset",
                )
                .map_err(sql("preparing a first-message insert"))?;
            for f in &batch.first_messages {
                stmt.execute(params![f.conversation_id, f.partition, int(f.offset)])
                    .map_err(sql("recording a first message"))?;
            }
        }
        {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "INSERT INTO rollups ({ROLLUP_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                     ON CONFLICT (granularity, bucket_us, log_partition) DO UPDATE SET
                       through_offset = excluded.through_offset,
                       messages = excluded.messages,
                       channel_messages = excluded.channel_messages,
                       conversations_started = excluded.conversations_started,
                       friend_requests = excluded.friend_requests,
                       friend_accepts = excluded.friend_accepts,
                       delivery_latency = excluded.delivery_latency,
                       read_latency = excluded.read_latency
                     WHERE excluded.through_offset > rollups.through_offset"
                ))
                .map_err(sql("preparing a rollup write"))?;
            for r in &batch.rollups {
                let c = &r.counts;
                stmt.execute(params![
                    r.key.granularity.name(),
                    r.key.start.timestamp_micros(),
                    r.key.partition,
                    int(r.through),
                    int(c.messages),
                    int(c.channel_messages),
                    int(c.conversations_started),
                    int(c.friend_requests),
                    int(c.friend_accepts),
                    r.delivery.encode(),
                    r.read.encode(),
                ])
                .map_err(sql("writing a rollup"))?;
            }
        }
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO checkpoints (consumer, log_partition, next_offset) VALUES (?1, ?2, ?3)
                     ON CONFLICT (consumer, log_partition) DO UPDATE SET next_offset = excluded.next_offset
                     WHERE excluded.next_offset > checkpoints.next_offset",
                )
                .map_err(sql("preparing a checkpoint"))?;
            for p in &batch.checkpoint {
                stmt.execute(params![consumer, p.partition, int(p.offset)])
                    .map_err(sql("writing a checkpoint"))?;
            }
        }
        tx.commit().map_err(sql("committing an analytics batch"))
    }
}

type RollupRow = (String, i64, u32, i64, [i64; 5], Vec<u8>, Vec<u8>);

fn rollup_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RollupRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        [r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?],
        r.get(9)?,
        r.get(10)?,
    ))
}

fn rollup_from(row: RollupRow) -> Result<Rollup> {
    let (granularity, bucket_us, partition, through, c, delivery, read) = row;
    let granularity = Granularity::parse(&granularity)
        .ok_or_else(|| StoreError::Corrupt(format!("rollup granularity {granularity:?}")))?;
    Ok(Rollup {
        key: RollupKey {
            granularity,
            start: from_micros(bucket_us),
            partition,
        },
        through: uint(through, "a rollup's through offset")?,
        counts: Counts {
            messages: uint(c[0], "messages")?,
            channel_messages: uint(c[1], "channel messages")?,
            conversations_started: uint(c[2], "conversations started")?,
            friend_requests: uint(c[3], "friend requests")?,
            friend_accepts: uint(c[4], "friend accepts")?,
        },
        delivery: Histogram::decode(&delivery).map_err(StoreError::Corrupt)?,
        read: Histogram::decode(&read).map_err(StoreError::Corrupt)?,
    })
}

#[async_trait]
impl AnalyticsStore for SqliteAnalytics {
    async fn write(&self, consumer: &str, batch: AnalyticsBatch) -> Result<()> {
        let store = self.clone();
        let consumer = consumer.to_owned();
        tokio::task::spawn_blocking(move || store.write_blocking(&consumer, &batch))
            .await
            .map_err(|e| StoreError::Unavailable(format!("analytics write task: {e}")))?
    }

    async fn checkpoints(&self, consumer: &str) -> Result<Vec<Position>> {
        let consumer = consumer.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT log_partition, next_offset FROM checkpoints WHERE consumer = ?1
                     ORDER BY log_partition",
                )
                .map_err(sql("preparing a checkpoint read"))?;
            let rows = stmt
                .query_map([consumer], |r| {
                    Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)?))
                })
                .map_err(sql("reading checkpoints"))?;
            let mut out = Vec::new();
            for row in rows {
                let (partition, next) = row.map_err(sql("reading checkpoints"))?;
                out.push(Position::new(partition, uint(next, "a checkpoint")?));
            }
            Ok(out)
        })
        .await
    }

    async fn rollups(&self, keys: &[RollupKey]) -> Result<Vec<Rollup>> {
        let keys = keys.to_vec();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {ROLLUP_COLUMNS} FROM rollups
                     WHERE granularity = ?1 AND bucket_us = ?2 AND log_partition = ?3"
                ))
                .map_err(sql("preparing a rollup read"))?;
            let mut out = Vec::new();
            for key in keys {
                let row = stmt
                    .query_row(
                        params![
                            key.granularity.name(),
                            key.start.timestamp_micros(),
                            key.partition
                        ],
                        rollup_row,
                    )
                    .optional()
                    .map_err(sql("reading a rollup"))?;
                if let Some(row) = row {
                    out.push(rollup_from(row)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn first_messages(&self, conversations: &[Uuid]) -> Result<Vec<FirstMessage>> {
        let conversations = conversations.to_vec();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT log_partition, first_offset FROM conversations
                     WHERE conversation_id = ?1",
                )
                .map_err(sql("preparing a first-message read"))?;
            let mut out = Vec::new();
            for conversation_id in conversations {
                let row = stmt
                    .query_row([conversation_id], |r| {
                        Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)?))
                    })
                    .optional()
                    .map_err(sql("reading a first message"))?;
                if let Some((partition, offset)) = row {
                    out.push(FirstMessage {
                        conversation_id,
                        partition,
                        offset: uint(offset, "a first message's offset")?,
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    async fn rollups_between(
        &self,
        granularity: Granularity,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Rollup>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {ROLLUP_COLUMNS} FROM rollups
                     WHERE granularity = ?1 AND bucket_us >= ?2 AND bucket_us < ?3
                     ORDER BY bucket_us, log_partition"
                ))
                .map_err(sql("preparing a rollup range read"))?;
            let rows = stmt
                .query_map(
                    params![
                        granularity.name(),
                        from.timestamp_micros(),
                        to.timestamp_micros()
                    ],
                    rollup_row,
                )
                .map_err(sql("reading rollups"))?;
            let mut out = Vec::new();
            for row in rows {
                out.push(rollup_from(row.map_err(sql("reading rollups"))?)?);
            }
            Ok(out)
        })
        .await
    }

    async fn active_users(&self, period: Period) -> Result<u64> {
        self.read(move |conn| {
            let n: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM active_users WHERE period = ?1")
                .and_then(|mut s| s.query_row([period.key()], |r| r.get(0)))
                .map_err(sql("counting active users"))?;
            uint(n, "an active-user count")
        })
        .await
    }
}
