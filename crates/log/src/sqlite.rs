//! The embedded event log: one SQLite database in WAL mode, one partition.
//!
//! Appends go through one writer thread that practises group commit: it takes every append
//! waiting in its queue (up to [`MAX_BATCH_RECORDS`] records), writes them in one transaction and
//! commits once, so concurrent requests share one fsync. With [`Durability::Full`] (the default)
//! a commit is on disk before any of its appends resolves. Records are never updated or deleted:
//! triggers refuse both.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::Duration;

use async_trait::async_trait;
use missive_events::Stream;
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{oneshot, watch};

use crate::{DeadLetter, EventLog, LogConsumer, LogError, Position, Record, Result, StoredRecord};

/// The embedded log has a single partition.
const PARTITION: u32 = 0;
/// At most this many records go into one group-commit transaction.
pub const MAX_BATCH_RECORDS: usize = 8192;
/// How often a consumer reads the file for appends made by another process.
const CROSS_PROCESS_POLL: Duration = Duration::from_millis(50);
/// At most this many appends wait for the writer before new ones are refused as overloaded.
pub const MAX_PENDING_APPENDS: usize = 65_536;

/// How hard each commit works to survive a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync on every group commit: an acknowledged append survives power loss.
    #[default]
    Full,
    /// fsync only at WAL checkpoints: an acknowledged append survives a process crash, but
    /// the last commits may be lost on power loss. For benchmarks and throwaway data.
    Normal,
}

impl Durability {
    fn pragma(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        }
    }
}

type Reply = oneshot::Sender<Result<Vec<Position>>>;

struct AppendRequest {
    records: Vec<Record>,
    reply: Reply,
}

struct Shared {
    path: std::path::PathBuf,
    /// The next offset to be written; advanced after each commit.
    head: watch::Sender<u64>,
    connections: Mutex<Vec<Connection>>,
}

/// The embedded [`EventLog`].
#[derive(Clone)]
pub struct SqliteLog {
    tx: SyncSender<AppendRequest>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SqliteLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteLog")
            .field("path", &self.shared.path)
            .finish()
    }
}

fn storage(action: &'static str) -> impl FnOnce(rusqlite::Error) -> LogError {
    move |source| LogError::Storage { action, source }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    log_offset     INTEGER PRIMARY KEY,
    stream         TEXT    NOT NULL,
    record_key     TEXT    NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        BLOB    NOT NULL
);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TABLE IF NOT EXISTS dead_letters (
    projection       TEXT    NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset    INTEGER NOT NULL,
    event_type       TEXT    NOT NULL,
    record_key       TEXT    NOT NULL,
    payload          BLOB    NOT NULL,
    error            TEXT    NOT NULL,
    recorded_at      INTEGER NOT NULL,
    resolved_at      INTEGER,
    PRIMARY KEY (projection, source_partition, source_offset)
);
CREATE TABLE IF NOT EXISTS consumer_offsets (
    group_id    TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (group_id, partition)
);
";

impl SqliteLog {
    /// Opens (creating if needed) the log at `path` and starts its writer thread.
    pub fn open(path: &Path, durability: Durability) -> Result<Self> {
        let conn = open_connection(path)?;
        conn.pragma_update(None, "synchronous", durability.pragma())
            .map_err(storage("setting synchronous mode"))?;
        conn.execute_batch(SCHEMA)
            .map_err(storage("creating the log schema"))?;
        let next: u64 = conn
            .query_row(
                "SELECT COALESCE(MAX(log_offset) + 1, 0) FROM events",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(storage("reading the end of the log"))? as u64;
        let (head, _) = watch::channel(next);
        let shared = Arc::new(Shared {
            path: path.to_owned(),
            head,
            connections: Mutex::new(Vec::new()),
        });
        let (tx, rx) = mpsc::sync_channel(MAX_PENDING_APPENDS);
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("missive-log-writer".into())
            .spawn(move || writer_loop(conn, rx, next, &writer_shared))
            .map_err(|_| LogError::Closed)?;
        Ok(SqliteLog { tx, shared })
    }

    /// A receiver that sees the log's end (next offset) change after every commit.
    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.shared.head.subscribe()
    }

    /// Runs `f` on a pooled connection: reads, and the small writes outside the append path
    /// (consumer checkpoints, dead letters). Appends go through the group-commit writer.
    fn with_connection<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.shared.connections.lock().pop();
        let conn = match conn {
            Some(c) => c,
            None => open_connection(&self.shared.path)?,
        };
        let out = f(&conn);
        self.shared.connections.lock().push(conn);
        out
    }

    /// Reads up to `max` records starting at offset `from`.
    pub fn read(&self, from: u64, max: usize) -> Result<Vec<StoredRecord>> {
        self.with_connection(|conn| read_records(conn, from, max))
    }
}

fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(storage("opening the log database"))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(storage("enabling WAL mode"))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(storage("setting the busy timeout"))?;
    Ok(conn)
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn stream_from_name(name: &str) -> Option<Stream> {
    Stream::ALL.into_iter().find(|s| s.name() == name)
}

fn read_records(conn: &Connection, from: u64, max: usize) -> Result<Vec<StoredRecord>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT log_offset, stream, record_key, event_type, schema_version, payload
             FROM events WHERE log_offset >= ?1 ORDER BY log_offset LIMIT ?2",
        )
        .map_err(storage("preparing a log read"))?;
    let rows = stmt
        .query_map(params![from as i64, max as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Vec<u8>>(5)?,
            ))
        })
        .map_err(storage("reading the log"))?;
    let mut out = Vec::with_capacity(max.min(4096));
    for row in rows {
        let (offset, stream, key, event_type, schema_version, payload) =
            row.map_err(storage("reading the log"))?;
        let position = Position::new(PARTITION, offset as u64);
        let stream = stream_from_name(&stream).ok_or_else(|| LogError::Corrupt {
            position,
            reason: format!("unknown stream {stream:?}"),
        })?;
        out.push(StoredRecord {
            position,
            stream,
            key,
            event_type,
            schema_version: schema_version as u32,
            payload,
        });
    }
    Ok(out)
}

fn writer_loop(mut conn: Connection, rx: Receiver<AppendRequest>, mut next: u64, shared: &Shared) {
    let mut batch: Vec<AppendRequest> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut count = first.records.len();
        batch.push(first);
        while count < MAX_BATCH_RECORDS {
            match rx.try_recv() {
                Ok(req) => {
                    count += req.records.len();
                    batch.push(req);
                }
                Err(_) => break,
            }
        }
        match write_batch(&mut conn, &batch, next) {
            Ok(end) => {
                let m = missive_telemetry::metrics();
                m.log_commit_records
                    .with_label_values::<&str>(&[])
                    .observe(count as f64);
                // `topic`: the stream's name, as `missive_events_consumed_total` labels it.
                for record in batch.iter().flat_map(|r| &r.records) {
                    m.events_appended
                        .with_label_values(&[record.event_type, record.stream.name()])
                        .inc();
                }
                let mut offset = next;
                next = end;
                shared.head.send_replace(next);
                for req in batch.drain(..) {
                    let n = req.records.len() as u64;
                    let positions = (offset..offset + n)
                        .map(|o| Position::new(PARTITION, o))
                        .collect();
                    offset += n;
                    let _ = req.reply.send(Ok(positions));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, records = count, "group commit failed");
                for req in batch.drain(..) {
                    let _ = req.reply.send(Err(LogError::CommitFailed(e.to_string())));
                }
            }
        }
    }
}

fn write_batch(conn: &mut Connection, batch: &[AppendRequest], next: u64) -> rusqlite::Result<u64> {
    let tx = conn.transaction()?;
    let mut offset = next;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO events (log_offset, stream, record_key, event_type, schema_version, payload)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for record in batch.iter().flat_map(|r| &r.records) {
            stmt.execute(params![
                offset as i64,
                record.stream.name(),
                record.key,
                record.event_type,
                record.schema_version,
                record.payload
            ])?;
            offset += 1;
        }
    }
    tx.commit()?;
    Ok(offset)
}

#[async_trait]
impl EventLog for SqliteLog {
    async fn append(&self, records: Vec<Record>) -> Result<Vec<Position>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(AppendRequest { records, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(LogError::Overloaded {
                    pending: MAX_PENDING_APPENDS,
                });
            }
            Err(TrySendError::Disconnected(_)) => return Err(LogError::Closed),
        }
        rx.await.map_err(|_| LogError::Closed)?
    }

    async fn end_positions(&self) -> Result<Vec<Position>> {
        // The file, not this process's writer, is the truth: another process may append.
        let on_disk = self.with_connection(|conn| {
            conn.prepare_cached("SELECT COALESCE(MAX(log_offset) + 1, 0) FROM events")
                .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
                .map_err(storage("reading the end of the log"))
        })? as u64;
        let end = on_disk.max(*self.shared.head.borrow());
        Ok(vec![Position::new(PARTITION, end)])
    }

    async fn dead_letter(&self, letter: DeadLetter) -> Result<()> {
        let now = now_micros();
        self.with_connection(|conn| {
            conn.prepare_cached(
                "INSERT INTO dead_letters (projection, source_partition, source_offset, event_type,
                                           record_key, payload, error, recorded_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT DO UPDATE SET error = excluded.error, resolved_at = NULL",
            )
            .and_then(|mut s| {
                s.execute(params![
                    letter.projection,
                    letter.source.partition,
                    letter.source.offset as i64,
                    letter.event_type,
                    letter.key,
                    letter.payload,
                    letter.error,
                    now
                ])
            })
            .map(|_| ())
            .map_err(storage("recording a dead letter"))
        })
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        self.with_connection(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT projection, source_partition, source_offset, event_type, record_key,
                            payload, error
                     FROM dead_letters WHERE resolved_at IS NULL ORDER BY recorded_at, source_offset",
                )
                .map_err(storage("preparing a dead-letter read"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(DeadLetter {
                        projection: r.get(0)?,
                        source: Position::new(r.get(1)?, r.get::<_, i64>(2)? as u64),
                        event_type: r.get(3)?,
                        key: r.get(4)?,
                        payload: r.get(5)?,
                        error: r.get(6)?,
                    })
                })
                .map_err(storage("reading dead letters"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(storage("reading dead letters"))
        })
    }

    async fn resolve_dead_letter(&self, projection: &str, source: Position) -> Result<()> {
        self.with_connection(|conn| {
            conn.prepare_cached(
                "UPDATE dead_letters SET resolved_at = ?4
                 WHERE projection = ?1 AND source_partition = ?2 AND source_offset = ?3",
            )
            .and_then(|mut s| {
                s.execute(params![
                    projection,
                    source.partition,
                    source.offset as i64,
                    now_micros()
                ])
            })
            .map(|_| ())
            .map_err(storage("resolving a dead letter"))
        })
    }

    async fn consumer(&self, group: &str) -> Result<Box<dyn LogConsumer>> {
        let consumer = SqliteConsumer {
            log: self.clone(),
            group: group.to_owned(),
            head: self.watch_head(),
            next: 0,
        };
        let next = consumer.committed_offset()?.unwrap_or(0);
        Ok(Box::new(SqliteConsumer { next, ..consumer }))
    }
}

/// A consumer of the embedded log.
struct SqliteConsumer {
    log: SqliteLog,
    group: String,
    head: watch::Receiver<u64>,
    next: u64,
}

impl SqliteConsumer {
    fn committed_offset(&self) -> Result<Option<u64>> {
        self.log.with_connection(|conn| {
            conn.query_row(
                "SELECT next_offset FROM consumer_offsets WHERE group_id = ?1 AND partition = ?2",
                params![self.group, PARTITION],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|o| o.map(|v| v as u64))
            .map_err(storage("reading a consumer checkpoint"))
        })
    }
}

#[async_trait]
impl LogConsumer for SqliteConsumer {
    fn seek(&mut self, next: Position) -> Result<()> {
        if next.partition != PARTITION {
            return Err(LogError::UnknownPartition(next.partition));
        }
        self.next = next.offset;
        Ok(())
    }

    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<StoredRecord>> {
        let next = self.next;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Appends by this process wake us at once; appends by another process sharing the
            // file (`missive api` beside `missive project`) are found by reading every
            // CROSS_PROCESS_POLL.
            let slice = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .min(CROSS_PROCESS_POLL);
            let woken = tokio::time::timeout(slice, self.head.wait_for(|head| *head > next))
                .await
                .map(|r| r.is_ok());
            if woken == Ok(false) {
                return Err(LogError::Closed);
            }
            let log = self.log.clone();
            let records = tokio::task::spawn_blocking(move || log.read(next, max))
                .await
                .map_err(|_| LogError::Closed)??;
            if let Some(last) = records.last() {
                self.next = last.position.offset + 1;
                return Ok(records);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(records);
            }
        }
    }

    async fn commit(&mut self, next: &[Position]) -> Result<()> {
        for p in next {
            if p.partition != PARTITION {
                return Err(LogError::UnknownPartition(p.partition));
            }
        }
        let group = self.group.clone();
        let next = next.to_vec();
        self.log.with_connection(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "INSERT INTO consumer_offsets (group_id, partition, next_offset)
                     VALUES (?1, ?2, ?3)
                     ON CONFLICT (group_id, partition) DO UPDATE SET next_offset = excluded.next_offset",
                )
                .map_err(storage("preparing a checkpoint commit"))?;
            for p in &next {
                stmt.execute(params![group, p.partition, p.offset as i64])
                    .map_err(storage("committing a consumer checkpoint"))?;
            }
            Ok(())
        })
    }

    async fn committed(&self) -> Result<Vec<Position>> {
        Ok(self
            .committed_offset()?
            .map(|o| vec![Position::new(PARTITION, o)])
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn appended_events_are_counted_by_type_and_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = SqliteLog::open(&dir.path().join("log.db"), Durability::Full).expect("open");
        // An event type of this test's own, so other appends in the process do not count.
        let record = |stream| Record {
            stream,
            key: "k".into(),
            event_type: "AppendedMetricProbe",
            schema_version: 1,
            payload: vec![1],
        };
        log.append(vec![
            record(Stream::Messages),
            record(Stream::Social),
            record(Stream::Messages),
        ])
        .await
        .expect("append");
        let text = missive_telemetry::metrics().render();
        // The same label value `missive_events_consumed_total` gives the stream, so the two
        // join on `topic`.
        for (topic, count) in [("messages", 2), ("social", 1)] {
            let line = format!(
                "missive_events_appended_total{{event_type=\"AppendedMetricProbe\",topic=\"{topic}\"}} {count}"
            );
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
