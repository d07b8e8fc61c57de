//! The embedded read store: SQLite in WAL mode.
//!
//! One writer connection (the projectors') applies each batch of changes and its checkpoint in
//! one transaction, so a crash can never separate them. Queries use a small pool of reader
//! connections and run inline: each is a handful of indexed lookups.
//!
//! Unread counts are kept per (user, conversation) and changed only under guards that make each
//! change idempotent: a message counts when it is first stored, stops counting when it is
//! first hidden or tombstoned (if it was counted), and a read marker that moves forward
//! recounts from the messages themselves.
//!
//! Servers, invitations, posts and channels have their own tables and queries in
//! `communities`.
//!
//! With a finite [`Retention`] ([`SqliteStore::with_retention`]), a message that has expired
//! when projected is not stored, but still takes its sequence number in its conversation
//! (`conversations.last_seq`, and `expired_seq`, the highest expired number) and its place in
//! both feeds (`feed_tails`), so numbers stay what a store that kept it would have given; a
//! redelivery of it is recognised by its log offset (`conversations.last_offset`: a
//! conversation's messages are in one log partition, in order). Messages that expire later are
//! removed by [`SqliteStore::sweep_expired`], which leaves exactly what projecting the log
//! into an empty store at the same time would. Channel messages follow the same rules.
//!
//! Every query and every applied batch is timed in `missive_store_query_duration_seconds`
//! (`backend="sqlite"`, `statement` = the [`ReadStore`] method, or `snapshot`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use missive_log::Position;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use uuid::Uuid;

mod communities;

use crate::{
    AccountStatus, Change, Channel, ChannelMessage, ChannelSummary, Conversation, FeedPage,
    FriendEntry, FriendshipState, HistoryQuery, Invitation, Message, MessageStatus, Page, Post,
    ReadStore, Relation, Result, Retention, Server, ServerRole, ServerSearch, StoreError, User,
    UserServer, conversation_cursor, deleted_username, ordered, page, parse_conversation_cursor,
    parse_pending_cursor, pending_cursor, query_timer,
};

/// The `backend` label of this adapter's `missive_store_query_duration_seconds`.
const BACKEND: &str = "sqlite";

/// The read-model schema's version (`PRAGMA user_version`). A store written with another
/// version is dropped and rebuilt from the log: read models hold nothing the log does not.
const SCHEMA_VERSION: i64 = 6;
const TABLES: [&str; 9] = [
    "users",
    "friendships",
    "conversations",
    "messages",
    "user_feed",
    "feed_tails",
    "user_conversations",
    "hidden_messages",
    "checkpoints",
];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    user_id          BLOB PRIMARY KEY,
    username         TEXT NOT NULL,
    username_key     TEXT NOT NULL UNIQUE,
    display_name     TEXT NOT NULL,
    registered_at    INTEGER NOT NULL,
    profile_version  INTEGER NOT NULL DEFAULT -1,
    online           INTEGER NOT NULL DEFAULT 0,
    last_seen        INTEGER,
    presence_version INTEGER NOT NULL DEFAULT -1,
    account          INTEGER NOT NULL DEFAULT 0,
    account_version  INTEGER NOT NULL DEFAULT -1
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS users_restricted ON users (account) WHERE account <> 0;
CREATE TABLE IF NOT EXISTS friendships (
    user_lo   BLOB NOT NULL,
    user_hi   BLOB NOT NULL,
    state     INTEGER NOT NULL,
    requester BLOB,
    since     INTEGER NOT NULL,
    version   INTEGER NOT NULL,
    PRIMARY KEY (user_lo, user_hi)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS friendships_by_hi ON friendships (user_hi);
CREATE TABLE IF NOT EXISTS conversations (
    conversation_id BLOB PRIMARY KEY,
    user_a          BLOB NOT NULL,
    user_b          BLOB NOT NULL,
    last_seq        INTEGER NOT NULL,
    last_sent_at    INTEGER NOT NULL,
    last_offset     INTEGER NOT NULL DEFAULT -1,
    expired_seq     INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    message_id      BLOB NOT NULL UNIQUE,
    conversation_id BLOB NOT NULL,
    seq             INTEGER NOT NULL,
    sender_id       BLOB NOT NULL,
    recipient_id    BLOB NOT NULL,
    text            TEXT,
    client_msg_id   TEXT,
    sent_at         INTEGER NOT NULL,
    deleted         INTEGER NOT NULL DEFAULT 0,
    delivered       INTEGER NOT NULL DEFAULT 0,
    log_partition   INTEGER NOT NULL,
    log_offset      INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_seq ON messages (conversation_id, seq);
CREATE INDEX IF NOT EXISTS messages_by_client_id ON messages (sender_id, client_msg_id)
    WHERE client_msg_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_by_time ON messages (conversation_id, sent_at, seq);
CREATE INDEX IF NOT EXISTS messages_by_age ON messages (sent_at);
CREATE INDEX IF NOT EXISTS messages_pending ON messages (recipient_id, sent_at, conversation_id, seq)
    WHERE delivered = 0 AND deleted = 0;
CREATE TABLE IF NOT EXISTS user_feed (
    user_id    BLOB NOT NULL,
    feed_seq   INTEGER NOT NULL,
    message_id BLOB NOT NULL,
    sent_at    INTEGER NOT NULL,
    PRIMARY KEY (user_id, feed_seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS user_feed_by_time ON user_feed (user_id, sent_at, feed_seq);
CREATE TABLE IF NOT EXISTS feed_tails (
    user_id       BLOB PRIMARY KEY,
    last_feed_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS user_conversations (
    user_id          BLOB NOT NULL,
    conversation_id  BLOB NOT NULL,
    peer_id          BLOB NOT NULL,
    last_message_id  BLOB,
    last_activity_at INTEGER NOT NULL,
    read_seq         INTEGER NOT NULL DEFAULT 0,
    unread           INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, conversation_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS user_conversations_by_activity
    ON user_conversations (user_id, last_activity_at, conversation_id);
CREATE TABLE IF NOT EXISTS hidden_messages (
    user_id         BLOB NOT NULL,
    message_id      BLOB NOT NULL,
    PRIMARY KEY (user_id, message_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    projection  TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (projection, partition)
) WITHOUT ROWID;
";

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

/// The embedded [`ReadStore`].
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
    retention: Retention,
}

/// How many messages one sweep transaction removes at most, so the writer is never held long.
const SWEEP_BATCH: usize = 500;

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .field("retention", &self.retention)
            .finish()
    }
}

fn sql(action: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { action, source }
}

fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(sql("opening the read store"))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sql("enabling WAL mode"))?;
    // The read models can always be rebuilt from the log, and each batch commits together with
    // its checkpoint, so NORMAL (no fsync per commit) cannot make them inconsistent.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sql("setting synchronous mode"))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(sql("setting the busy timeout"))?;
    // A deleted account's scrubbed username and display name (the only personal fields held
    // in the clear) are overwritten with zeros in the file, not left in free pages; the WAL
    // drops its copies at the next checkpoint.
    conn.pragma_update(None, "secure_delete", "ON")
        .map_err(sql("enabling secure delete"))?;
    Ok(conn)
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(v: i64) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(v).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Integer,
            format!("timestamp {v} out of range").into(),
        )
    })
}

impl SqliteStore {
    /// Opens an existing read store of this schema version, changing nothing: for tools that
    /// read a live store (`missive replay --verify`). A missing file, or one of another version
    /// (which [`SqliteStore::open`] would rebuild), is refused.
    pub fn open_existing(path: &Path) -> Result<Self> {
        let version: i64 = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|c| c.pragma_query_value(None, "user_version", |r| r.get(0)))
        .map_err(sql("opening an existing read store"))?;
        if version != SCHEMA_VERSION {
            return Err(StoreError::Corrupt(format!(
                "{} holds read-model schema version {version}, this binary's is \
                 {SCHEMA_VERSION}: start the matching server first (it rebuilds them)",
                path.display()
            )));
        }
        Self::open(path)
    }

    /// `projection`'s checkpoints and every read-model table's rows ([`ReadStore::tables`],
    /// [`ReadStore::table_rows`]) as of one moment: read in one transaction, so the rows are
    /// exactly those the checkpoints account for, however busy the projector is. Holds the
    /// whole store in memory.
    pub fn snapshot(&self, projection: &str) -> Result<Snapshot> {
        self.read("snapshot", |c| {
            c.execute_batch("BEGIN")
                .map_err(sql("starting a snapshot"))?;
            let snapshot = (|| {
                let mut stmt = c
                    .prepare_cached(
                        "SELECT partition, next_offset FROM checkpoints WHERE projection = ?1 \
                         ORDER BY partition",
                    )
                    .map_err(sql("reading checkpoints"))?;
                let checkpoints = stmt
                    .query_map([projection], |r| {
                        Ok(Position::new(r.get(0)?, r.get::<_, i64>(1)? as u64))
                    })
                    .map_err(sql("reading checkpoints"))?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(sql("reading checkpoints"))?;
                let mut tables = BTreeMap::new();
                for table in table_names(c)? {
                    let rows = table_rows(c, &table)?;
                    tables.insert(table, rows);
                }
                Ok((checkpoints, tables))
            })();
            let _ = c.execute_batch("COMMIT");
            snapshot
        })
    }

    /// Opens (creating if needed) the read store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let writer = open_connection(path)?;
        let version: i64 = writer
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql("reading the schema version"))?;
        if version != SCHEMA_VERSION {
            let has_tables: bool = writer
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table')",
                    [],
                    |r| r.get(0),
                )
                .map_err(sql("inspecting the read store"))?;
            if has_tables {
                tracing::warn!(
                    path = %path.display(),
                    found = version,
                    expected = SCHEMA_VERSION,
                    "read-model schema changed: dropping the read models; they are rebuilt from the log"
                );
            }
            let drop: String = TABLES
                .iter()
                .chain(&communities::TABLES)
                .map(|t| format!("DROP TABLE IF EXISTS {t};"))
                .collect();
            writer
                .execute_batch(&format!(
                    "BEGIN; {drop} {SCHEMA} {} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;",
                    communities::SCHEMA
                ))
                .map_err(sql("creating the read-store schema"))?;
        }
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
            }),
            retention: Retention::forever(),
        })
    }

    /// Keeps messages only for `retention` (the default keeps them forever): expired ones are
    /// not projected, and [`SqliteStore::sweep_expired`] removes those that expire later.
    pub fn with_retention(self, retention: Retention) -> Self {
        SqliteStore { retention, ..self }
    }

    /// The retention the store was opened with.
    pub fn retention(&self) -> &Retention {
        &self.retention
    }

    /// Removes the messages (direct and channel) that have expired at `now`, with what depends
    /// on them: feed entries, hidden marks, pending entries and idempotency keys go with the
    /// rows; unread counts are recounted, previews of expired messages cleared, and read
    /// markers on expired messages reset. Afterwards the store holds what projecting the log
    /// into an empty store at `now` would give. Works in transactions of at most 500 messages,
    /// so projections wait for one batch at most; returns how many messages it removed (0 when
    /// messages are kept forever). Running it again at the same `now` removes nothing.
    pub async fn sweep_expired(&self, now: DateTime<Utc>) -> Result<u64> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.sweep_expired_blocking(now))
            .await
            .map_err(|e| StoreError::Unavailable(format!("sweep task failed: {e}")))?
    }

    /// [`SqliteStore::sweep_expired`], on the calling thread.
    pub fn sweep_expired_blocking(&self, now: DateTime<Utc>) -> Result<u64> {
        let Some(cutoff) = self.retention.cutoff(now) else {
            return Ok(0);
        };
        let cutoff = micros(cutoff);
        let mut removed = 0;
        loop {
            let _timer = query_timer(BACKEND, "sweep_expired");
            let mut conn = self.inner.writer.lock();
            let tx = conn
                .transaction()
                .map_err(sql("starting a sweep transaction"))?;
            let n = sweep_messages(&tx, cutoff)?;
            let m = communities::sweep_channel_messages(&tx, cutoff, SWEEP_BATCH)?;
            tx.commit().map_err(sql("committing a sweep"))?;
            removed += (n + m) as u64;
            if n < SWEEP_BATCH && m < SWEEP_BATCH {
                break;
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed expired messages from the read store");
        }
        Ok(removed)
    }

    /// Runs `f` on a pooled reader connection (opening one if none is free), timed as
    /// `statement` (the [`ReadStore`] method) in `missive_store_query_duration_seconds`.
    fn read<T>(
        &self,
        statement: &'static str,
        f: impl FnOnce(&Connection) -> Result<T>,
    ) -> Result<T> {
        let _timer = query_timer(BACKEND, statement);
        let pooled = self.inner.readers.lock().pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_connection(&self.inner.path)?,
        };
        let out = f(&conn);
        self.inner.readers.lock().push(conn);
        out
    }

    /// Applies changes and checkpoint in one transaction (blocking).
    pub fn apply_blocking(
        &self,
        projection: &str,
        changes: &[Change],
        checkpoint: &[Position],
    ) -> Result<()> {
        let _timer = query_timer(BACKEND, "apply");
        let cutoff = self.retention.cutoff(self.retention.now()).map(micros);
        let mut conn = self.inner.writer.lock();
        let tx = conn
            .transaction()
            .map_err(sql("starting a projection transaction"))?;
        let mut rest = changes;
        while let Some(first) = rest.first() {
            // Runs of new messages (the bulk of any busy log) are applied together.
            let run = if matches!(first, Change::AddMessage { .. }) {
                rest.iter()
                    .take_while(|c| matches!(c, Change::AddMessage { .. }))
                    .count()
            } else {
                0
            };
            if run > 0 {
                add_messages(&tx, &rest[..run], cutoff)?;
                rest = &rest[run..];
            } else {
                apply_change(&tx, first, cutoff)?;
                rest = &rest[1..];
            }
        }
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO checkpoints (projection, partition, next_offset) VALUES (?1, ?2, ?3)
                     ON CONFLICT (projection, partition) DO UPDATE SET next_offset = excluded.next_offset
                     WHERE excluded.next_offset > checkpoints.next_offset",
                )
                .map_err(sql("preparing a checkpoint"))?;
            for p in checkpoint {
                stmt.execute(params![projection, p.partition, p.offset as i64])
                    .map_err(sql("writing a checkpoint"))?;
            }
        }
        tx.commit().map_err(sql("committing a projection batch"))
    }
}

/// Applies one change; messages sent at or before `cutoff` (microseconds) have expired.
fn apply_change(tx: &Transaction<'_>, change: &Change, cutoff: Option<i64>) -> Result<()> {
    match change {
        Change::AddUser {
            user_id,
            username,
            display_name,
            registered_at,
        } => {
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO users (user_id, username, username_key, display_name, registered_at)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        user_id,
                        username,
                        username.to_lowercase(),
                        display_name,
                        micros(*registered_at)
                    ])
                })
                .map_err(sql("adding a user"))?;
            let exists = inserted > 0
                || tx
                    .query_row("SELECT 1 FROM users WHERE user_id = ?1", [user_id], |_| {
                        Ok(())
                    })
                    .optional()
                    .map_err(sql("checking a user"))?
                    .is_some();
            if !exists {
                // The name belongs to someone else here: the user exists all the same, waiting
                // for the name (`taken:<id>`), so that projecting registrations and deletions of
                // different log partitions in any order ends the same (see SetAccountStatus).
                tracing::warn!(%user_id, %username, "username already belongs to another user; the user is listed without it");
                tx.prepare_cached(
                    "INSERT INTO users (user_id, username, username_key, display_name, registered_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        user_id,
                        username,
                        waiting_key(*user_id),
                        display_name,
                        micros(*registered_at)
                    ])
                })
                .map_err(sql("adding a user"))?;
            }
        }
        Change::SetDisplayName {
            user_id,
            display_name,
            version,
        } => {
            tx.prepare_cached(
                "UPDATE users SET display_name = ?2, profile_version = ?3
                 WHERE user_id = ?1 AND profile_version < ?3 AND account <> 2",
            )
            .and_then(|mut s| s.execute(params![user_id, display_name, *version as i64]))
            .map_err(sql("updating a display name"))?;
        }
        Change::SetAccountStatus {
            user_id,
            status,
            version,
        } => {
            let code = account_code(*status);
            tx.prepare_cached(
                "UPDATE users SET account = ?2, account_version = ?3
                 WHERE user_id = ?1 AND account_version < ?3 AND account <> 2",
            )
            .and_then(|mut s| s.execute(params![user_id, code, *version as i64]))
            .map_err(sql("setting an account's standing"))?;
            if *status == AccountStatus::Deleted {
                let placeholder = deleted_username(*user_id);
                let freed: Option<String> = tx
                    .query_row(
                        "SELECT username_key FROM users WHERE user_id = ?1",
                        [user_id],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(sql("reading a deleted account"))?;
                tx.prepare_cached(
                    "UPDATE users SET username = ?2, username_key = ?2, display_name = '',
                         profile_version = MAX(profile_version, ?3)
                     WHERE user_id = ?1 AND account = 2",
                )
                .and_then(|mut s| s.execute(params![user_id, placeholder, *version as i64]))
                .map_err(sql("scrubbing a deleted account"))?;
                // The freed name goes to the earliest registration waiting for it, if any.
                if let Some(key) = freed.filter(|k| *k != placeholder && !k.starts_with("taken:")) {
                    tx.prepare_cached(
                        "UPDATE users SET username_key = ?1 WHERE user_id = (
                             SELECT user_id FROM users
                             WHERE username_key LIKE 'taken:%' AND lower(username) = ?1
                               AND account <> 2
                             ORDER BY registered_at, user_id LIMIT 1)
                           AND NOT EXISTS (SELECT 1 FROM users WHERE username_key = ?1)",
                    )
                    .and_then(|mut s| s.execute(params![key]))
                    .map_err(sql("handing a freed username on"))?;
                }
            }
        }
        Change::SetPresence {
            user_id,
            online,
            at,
            version,
        } => {
            tx.prepare_cached(
                "UPDATE users SET online = ?2, presence_version = ?4,
                     last_seen = MAX(COALESCE(last_seen, ?3), ?3)
                 WHERE user_id = ?1 AND presence_version < ?4",
            )
            .and_then(|mut s| s.execute(params![user_id, online, micros(*at), *version as i64]))
            .map_err(sql("updating presence"))?;
        }
        Change::SetFriendship {
            a,
            b,
            state,
            at,
            version,
        } => {
            let (lo, hi) = ordered(*a, *b);
            let (code, requester) = match state {
                FriendshipState::None => (0, None),
                FriendshipState::Pending { requester } => (1, Some(*requester)),
                FriendshipState::Friends => (2, None),
            };
            tx.prepare_cached(
                "INSERT INTO friendships (user_lo, user_hi, state, requester, since, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (user_lo, user_hi) DO UPDATE SET
                     state = excluded.state, requester = excluded.requester,
                     since = excluded.since, version = excluded.version
                 WHERE excluded.version > friendships.version",
            )
            .and_then(|mut s| {
                s.execute(params![
                    lo,
                    hi,
                    code,
                    requester,
                    micros(*at),
                    *version as i64
                ])
            })
            .map_err(sql("updating a friendship"))?;
        }
        Change::AddMessage { .. } => add_messages(tx, std::slice::from_ref(change), cutoff)?,
        Change::MarkRead {
            conversation_id,
            reader_id,
            up_to,
        } => {
            let seq: Option<i64> = tx
                .prepare_cached(
                    "SELECT seq FROM messages WHERE message_id = ?1 AND conversation_id = ?2",
                )
                .and_then(|mut s| {
                    s.query_row(params![up_to, conversation_id], |r| r.get(0))
                        .optional()
                })
                .map_err(sql("finding a read marker's message"))?;
            let Some(seq) = seq else {
                tracing::warn!(%conversation_id, %up_to, "read marker names an unknown message; ignored");
                return Ok(());
            };
            let moved = tx
                .prepare_cached(
                    "UPDATE user_conversations SET read_seq = ?3
                     WHERE user_id = ?1 AND conversation_id = ?2 AND read_seq < ?3",
                )
                .and_then(|mut s| s.execute(params![reader_id, conversation_id, seq]))
                .map_err(sql("moving a read marker"))?;
            if moved > 0 {
                recount_unread(tx, *reader_id, *conversation_id, seq)?;
                // What was read was delivered: it leaves the pending index.
                tx.prepare_cached(
                    "UPDATE messages SET delivered = 1
                     WHERE conversation_id = ?1 AND recipient_id = ?2 AND seq <= ?3
                       AND delivered = 0 AND deleted = 0",
                )
                .and_then(|mut s| s.execute(params![conversation_id, reader_id, seq]))
                .map_err(sql("marking read messages delivered"))?;
            }
        }
        Change::HideMessage {
            user_id,
            message_id,
        } => hide_message(tx, *user_id, *message_id)?,
        Change::TombstoneMessage { message_id } => tombstone_message(tx, *message_id)?,
        Change::MarkDelivered {
            message_id,
            recipient_id,
        } => {
            tx.prepare_cached(
                "UPDATE messages SET delivered = 1
                 WHERE message_id = ?1 AND recipient_id = ?2 AND delivered = 0",
            )
            .and_then(|mut s| s.execute(params![message_id, recipient_id]))
            .map_err(sql("marking a message delivered"))?;
        }
        Change::Community(change) => communities::apply(tx, change, cutoff)?,
    }
    Ok(())
}

/// What a run of new messages does to one user's entry for one conversation.
struct EntryUpdate {
    peer: Uuid,
    /// `None` when the latest message of the run had expired (it is not stored).
    last_message_id: Option<Uuid>,
    last_activity_at: i64,
    unread_added: i64,
}

/// A conversation's counters while a run of messages is applied.
struct ConversationTail {
    last_seq: i64,
    last_sent_at: i64,
    last_offset: i64,
    expired_seq: i64,
    user_lo: Uuid,
    user_hi: Uuid,
}

/// Stores a run of `AddMessage` changes. Each message unknown so far gets its conversation's
/// next sequence number and the next number in both participants' feeds (the order the
/// catch-up feed pages in, so a message projected later can never fall behind a cursor).
/// Its time is kept monotonic within the conversation (`max(event time, previous message's
/// time)`): events are stamped before they reach the log, so two concurrent sends can be
/// stamped out of order by microseconds; clamping makes `since` an exact bound on `seq`. The
/// conversations' counters and both participants' entries are written once per run rather
/// than once per message. Messages already stored (redelivery) change nothing.
///
/// A message whose (clamped) time is at or before `cutoff` has expired: it is not stored, but
/// takes its numbers all the same and touches both entries (activity, no preview, nothing
/// unread). With a retention, a message whose log offset is not past the conversation's last
/// one is a redelivery (it may have expired since, so its id is no proof): nothing to do.
fn add_messages(tx: &Transaction<'_>, run: &[Change], cutoff: Option<i64>) -> Result<()> {
    use std::collections::HashMap;
    use std::collections::hash_map::Entry;
    let mut tails: HashMap<Uuid, ConversationTail> = HashMap::new();
    let mut feed_tail: HashMap<Uuid, i64> = HashMap::new();
    let mut entries: HashMap<(Uuid, Uuid), EntryUpdate> = HashMap::new();
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO messages (message_id, conversation_id, seq, sender_id, recipient_id, text,
                                   client_msg_id, sent_at, log_partition, log_offset)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (message_id) DO NOTHING",
        )
        .map_err(sql("preparing a message insert"))?;
    let mut read_tail = tx
        .prepare_cached(
            "SELECT last_seq, last_sent_at, last_offset, expired_seq FROM conversations
             WHERE conversation_id = ?1",
        )
        .map_err(sql("preparing a conversation read"))?;
    let mut read_feed_tail = tx
        .prepare_cached("SELECT last_feed_seq FROM feed_tails WHERE user_id = ?1")
        .map_err(sql("preparing a feed read"))?;
    let mut insert_feed = tx
        .prepare_cached(
            "INSERT INTO user_feed (user_id, feed_seq, message_id, sent_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(sql("preparing a feed insert"))?;
    for change in run {
        let Change::AddMessage {
            message_id,
            conversation_id,
            sender_id,
            recipient_id,
            text,
            client_msg_id,
            sent_at,
            position,
        } = change
        else {
            continue;
        };
        let tail = match tails.entry(*conversation_id) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let known: Option<(i64, i64, i64, i64)> = read_tail
                    .query_row([conversation_id], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })
                    .optional()
                    .map_err(sql("numbering a message"))?;
                let (user_lo, user_hi) = ordered(*sender_id, *recipient_id);
                let (last_seq, last_sent_at, last_offset, expired_seq) =
                    known.unwrap_or((0, i64::MIN, -1, 0));
                e.insert(ConversationTail {
                    last_seq,
                    last_sent_at,
                    last_offset,
                    expired_seq,
                    user_lo,
                    user_hi,
                })
            }
        };
        let seq = tail.last_seq + 1;
        let at = micros(*sent_at).max(tail.last_sent_at);
        let offset = position.offset as i64;
        // With a retention, a message at or before the conversation's last offset is a
        // redelivery: stored already, or expired (and perhaps swept) and so unknown here.
        if cutoff.is_some() && offset <= tail.last_offset {
            continue;
        }
        let expired = cutoff.is_some_and(|c| at <= c);
        if expired {
            tail.expired_seq = seq;
        } else {
            // A conflict on (conversation_id, seq) would mean two messages with one number:
            // that is an error, never ignored. A known message_id is a redelivery: nothing to
            // do.
            let inserted = insert
                .execute(params![
                    message_id,
                    conversation_id,
                    seq,
                    sender_id,
                    recipient_id,
                    text,
                    client_msg_id,
                    at,
                    position.partition,
                    offset
                ])
                .map_err(sql("storing a message"))?;
            if inserted == 0 {
                continue;
            }
        }
        tail.last_seq = seq;
        tail.last_sent_at = at;
        tail.last_offset = tail.last_offset.max(offset);
        for user in [*sender_id, *recipient_id] {
            let next = match feed_tail.entry(user) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(
                    read_feed_tail
                        .query_row([user], |r| r.get(0))
                        .optional()
                        .map_err(sql("reading a feed"))?
                        .unwrap_or(0),
                ),
            };
            *next += 1;
            if !expired {
                insert_feed
                    .execute(params![user, *next, message_id, at])
                    .map_err(sql("adding to a feed"))?;
            }
        }
        let last_message_id = (!expired).then_some(*message_id);
        for (user, peer, unread) in [
            (*sender_id, *recipient_id, 0),
            (*recipient_id, *sender_id, i64::from(!expired)),
        ] {
            let entry = entries
                .entry((user, *conversation_id))
                .or_insert(EntryUpdate {
                    peer,
                    last_message_id,
                    last_activity_at: at,
                    unread_added: 0,
                });
            entry.last_message_id = last_message_id;
            entry.last_activity_at = entry.last_activity_at.max(at);
            entry.unread_added += unread;
        }
    }
    let mut write_tail = tx
        .prepare_cached(
            "INSERT INTO conversations (conversation_id, user_a, user_b, last_seq, last_sent_at,
                                        last_offset, expired_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (conversation_id) DO UPDATE SET
                 last_seq = excluded.last_seq, last_sent_at = excluded.last_sent_at,
                 last_offset = excluded.last_offset, expired_seq = excluded.expired_seq",
        )
        .map_err(sql("preparing a conversation update"))?;
    for (conversation, t) in &tails {
        if t.last_seq > 0 {
            write_tail
                .execute(params![
                    conversation,
                    t.user_lo,
                    t.user_hi,
                    t.last_seq,
                    t.last_sent_at,
                    t.last_offset,
                    t.expired_seq
                ])
                .map_err(sql("numbering messages"))?;
        }
    }
    let mut write_feed_tail = tx
        .prepare_cached(
            "INSERT INTO feed_tails (user_id, last_feed_seq) VALUES (?1, ?2)
             ON CONFLICT (user_id) DO UPDATE SET last_feed_seq = excluded.last_feed_seq",
        )
        .map_err(sql("preparing a feed end update"))?;
    for (user, last) in &feed_tail {
        write_feed_tail
            .execute(params![user, last])
            .map_err(sql("updating a feed's end"))?;
    }
    let mut upsert = tx
        .prepare_cached(
            "INSERT INTO user_conversations
                 (user_id, conversation_id, peer_id, last_message_id, last_activity_at, unread)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (user_id, conversation_id) DO UPDATE SET
                 last_message_id = excluded.last_message_id,
                 last_activity_at = MAX(last_activity_at, excluded.last_activity_at),
                 unread = unread + excluded.unread",
        )
        .map_err(sql("preparing a conversation entry update"))?;
    for ((user, conversation), e) in &entries {
        upsert
            .execute(params![
                user,
                conversation,
                e.peer,
                e.last_message_id,
                e.last_activity_at,
                e.unread_added
            ])
            .map_err(sql("updating a conversation entry"))?;
    }
    Ok(())
}

/// Removes up to [`SWEEP_BATCH`] direct messages sent at or before `cutoff`, oldest first (so
/// each conversation loses a prefix of its numbers), with their feed entries and hidden marks;
/// then fixes the entries of the conversations they were in. Returns how many it removed.
fn sweep_messages(tx: &Transaction<'_>, cutoff: i64) -> Result<usize> {
    use std::collections::BTreeMap;
    let expired: Vec<(Uuid, Uuid, i64, Uuid, Uuid, i64)> = tx
        .prepare_cached(
            "SELECT message_id, conversation_id, seq, sender_id, recipient_id, sent_at
             FROM messages WHERE sent_at <= ?1 ORDER BY sent_at, seq LIMIT ?2",
        )
        .and_then(|mut s| {
            s.query_map(params![cutoff, SWEEP_BATCH as i64], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql("finding expired messages"))?;
    let mut conversations: BTreeMap<Uuid, (i64, Uuid, Uuid)> = BTreeMap::new();
    for (message_id, conversation_id, seq, sender_id, recipient_id, sent_at) in &expired {
        for user in [sender_id, recipient_id] {
            tx.prepare_cached(
                "DELETE FROM user_feed WHERE user_id = ?1 AND sent_at = ?2 AND message_id = ?3",
            )
            .and_then(|mut s| s.execute(params![user, sent_at, message_id]))
            .map_err(sql("removing an expired feed entry"))?;
            tx.prepare_cached("DELETE FROM hidden_messages WHERE user_id = ?1 AND message_id = ?2")
                .and_then(|mut s| s.execute(params![user, message_id]))
                .map_err(sql("removing an expired hidden mark"))?;
        }
        tx.prepare_cached("DELETE FROM messages WHERE message_id = ?1")
            .and_then(|mut s| s.execute([message_id]))
            .map_err(sql("removing an expired message"))?;
        let c = conversations
            .entry(*conversation_id)
            .or_insert((0, *sender_id, *recipient_id));
        c.0 = c.0.max(*seq);
    }
    for (conversation, (seq, a, b)) in &conversations {
        tx.prepare_cached(
            "UPDATE conversations SET expired_seq = MAX(expired_seq, ?2) WHERE conversation_id = ?1",
        )
        .and_then(|mut s| s.execute(params![conversation, seq]))
        .map_err(sql("recording expired messages"))?;
        for user in [a, b] {
            // A preview of a removed message: every message the user could see before it is
            // older, so removed too.
            tx.prepare_cached(
                "UPDATE user_conversations SET last_message_id = NULL
                 WHERE user_id = ?1 AND conversation_id = ?2 AND last_message_id IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM messages m
                                   WHERE m.message_id = user_conversations.last_message_id)",
            )
            .and_then(|mut s| s.execute(params![user, conversation]))
            .map_err(sql("clearing an expired preview"))?;
            // A marker on a removed message is before every message left: as if none.
            tx.prepare_cached(
                "UPDATE user_conversations SET read_seq = 0
                 WHERE user_id = ?1 AND conversation_id = ?2 AND read_seq > 0 AND read_seq <= ?3",
            )
            .and_then(|mut s| s.execute(params![user, conversation, seq]))
            .map_err(sql("resetting an expired read marker"))?;
            let read_seq: Option<i64> = tx
                .prepare_cached(
                    "SELECT read_seq FROM user_conversations WHERE user_id = ?1 AND conversation_id = ?2",
                )
                .and_then(|mut s| s.query_row(params![user, conversation], |r| r.get(0)).optional())
                .map_err(sql("reading a read marker"))?;
            if let Some(read_seq) = read_seq {
                recount_unread(tx, *user, *conversation, read_seq)?;
            }
        }
    }
    Ok(expired.len())
}

/// The facts about a message that deletions need.
struct MessageFacts {
    conversation_id: Uuid,
    seq: i64,
    sender_id: Uuid,
    recipient_id: Uuid,
    deleted: bool,
}

fn message_facts(tx: &Transaction<'_>, message_id: Uuid) -> Result<Option<MessageFacts>> {
    tx.prepare_cached(
        "SELECT conversation_id, seq, sender_id, recipient_id, deleted FROM messages WHERE message_id = ?1",
    )
    .and_then(|mut s| {
        s.query_row([message_id], |r| {
            Ok(MessageFacts {
                conversation_id: r.get(0)?,
                seq: r.get(1)?,
                sender_id: r.get(2)?,
                recipient_id: r.get(3)?,
                deleted: r.get(4)?,
            })
        })
        .optional()
    })
    .map_err(sql("reading a message"))
}

fn is_hidden(tx: &Transaction<'_>, user: Uuid, message_id: Uuid) -> Result<bool> {
    tx.prepare_cached("SELECT 1 FROM hidden_messages WHERE user_id = ?1 AND message_id = ?2")
        .and_then(|mut s| s.exists(params![user, message_id]))
        .map_err(sql("checking a hidden message"))
}

/// Takes one message out of `user`'s unread count if it is after their read marker.
fn uncount(tx: &Transaction<'_>, user: Uuid, facts: &MessageFacts) -> Result<()> {
    tx.prepare_cached(
        "UPDATE user_conversations SET unread = unread - 1
         WHERE user_id = ?1 AND conversation_id = ?2 AND read_seq < ?3 AND unread > 0",
    )
    .and_then(|mut s| s.execute(params![user, facts.conversation_id, facts.seq]))
    .map_err(sql("lowering an unread count"))?;
    Ok(())
}

fn hide_message(tx: &Transaction<'_>, user: Uuid, message_id: Uuid) -> Result<()> {
    let Some(facts) = message_facts(tx, message_id)? else {
        tracing::warn!(%message_id, "hiding an unknown message; ignored");
        return Ok(());
    };
    if user != facts.sender_id && user != facts.recipient_id {
        return Ok(());
    }
    let inserted = tx
        .prepare_cached(
            "INSERT INTO hidden_messages (user_id, message_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )
        .and_then(|mut s| s.execute(params![user, message_id]))
        .map_err(sql("hiding a message"))?;
    if inserted == 0 {
        return Ok(());
    }
    if facts.sender_id != user && !facts.deleted {
        uncount(tx, user, &facts)?;
    }
    // If it was the latest message the user could see, the preview falls back to the one before.
    tx.prepare_cached(
        "UPDATE user_conversations SET last_message_id = (
             SELECT m.message_id FROM messages m
             WHERE m.conversation_id = ?2
               AND NOT EXISTS (SELECT 1 FROM hidden_messages h
                               WHERE h.user_id = ?1 AND h.message_id = m.message_id)
             ORDER BY m.seq DESC LIMIT 1)
         WHERE user_id = ?1 AND conversation_id = ?2 AND last_message_id = ?3",
    )
    .and_then(|mut s| s.execute(params![user, facts.conversation_id, message_id]))
    .map_err(sql("updating a conversation preview"))?;
    Ok(())
}

fn tombstone_message(tx: &Transaction<'_>, message_id: Uuid) -> Result<()> {
    let Some(facts) = message_facts(tx, message_id)? else {
        tracing::warn!(%message_id, "deleting an unknown message; ignored");
        return Ok(());
    };
    if facts.deleted {
        return Ok(());
    }
    tx.prepare_cached("UPDATE messages SET deleted = 1, text = NULL WHERE message_id = ?1")
        .and_then(|mut s| s.execute([message_id]))
        .map_err(sql("deleting a message"))?;
    if !is_hidden(tx, facts.recipient_id, message_id)? {
        uncount(tx, facts.recipient_id, &facts)?;
    }
    Ok(())
}

fn recount_unread(
    tx: &Transaction<'_>,
    user: Uuid,
    conversation: Uuid,
    read_seq: i64,
) -> Result<()> {
    tx.prepare_cached(
        "UPDATE user_conversations SET unread = (
             SELECT COUNT(*) FROM messages m
             WHERE m.conversation_id = ?2 AND m.seq > ?3 AND m.sender_id != ?1 AND m.deleted = 0
               AND NOT EXISTS (SELECT 1 FROM hidden_messages h
                               WHERE h.user_id = ?1 AND h.message_id = m.message_id))
         WHERE user_id = ?1 AND conversation_id = ?2",
    )
    .and_then(|mut s| s.execute(params![user, conversation, read_seq]))
    .map_err(sql("recounting unread messages"))?;
    Ok(())
}

/// How many columns [`USER_COLUMNS`] names.
const USER_COLUMN_COUNT: usize = 7;
const USER_COLUMNS: &str =
    "u.user_id, u.username, u.display_name, u.registered_at, u.online, u.last_seen, u.account";

/// The `username_key` of a user whose name another user holds: unique, never a name.
fn waiting_key(user_id: Uuid) -> String {
    format!("taken:{}", user_id.simple())
}

/// How `users.account` stores a standing.
fn account_code(status: AccountStatus) -> i64 {
    match status {
        AccountStatus::Active => 0,
        AccountStatus::Blocked => 1,
        AccountStatus::Deleted => 2,
    }
}

#[test]
fn user_column_count_matches_the_columns() {
    assert_eq!(USER_COLUMNS.split(',').count(), USER_COLUMN_COUNT);
}

fn account_from_code(code: i64) -> rusqlite::Result<AccountStatus> {
    match code {
        0 => Ok(AccountStatus::Active),
        1 => Ok(AccountStatus::Blocked),
        2 => Ok(AccountStatus::Deleted),
        other => Err(rusqlite::Error::IntegralValueOutOfRange(0, other)),
    }
}

fn user_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(at)?,
        username: r.get(at + 1)?,
        display_name: r.get(at + 2)?,
        registered_at: from_micros(r.get(at + 3)?)?,
        online: r.get(at + 4)?,
        last_seen: r
            .get::<_, Option<i64>>(at + 5)?
            .map(from_micros)
            .transpose()?,
        account: account_from_code(r.get(at + 6)?)?,
    })
}

/// Columns of a message as seen by anyone, with the recipient's read marker for its status.
const MESSAGE_COLUMNS: &str = "m.message_id, m.conversation_id, m.seq, m.sender_id, m.recipient_id,
    m.text, m.client_msg_id, m.sent_at, m.deleted, m.log_partition, m.log_offset,
    COALESCE(rc.read_seq, 0), m.delivered";
const MESSAGE_FROM: &str = "messages m LEFT JOIN user_conversations rc
    ON rc.user_id = m.recipient_id AND rc.conversation_id = m.conversation_id";
const NOT_HIDDEN: &str = "NOT EXISTS (SELECT 1 FROM hidden_messages h
    WHERE h.user_id = :viewer AND h.message_id = m.message_id)";

fn message_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<Message> {
    let seq: i64 = r.get(at + 2)?;
    let deleted: bool = r.get(at + 8)?;
    let read_seq: i64 = r.get(at + 11)?;
    let delivered: bool = r.get(at + 12)?;
    Ok(Message {
        message_id: r.get(at)?,
        conversation_id: r.get(at + 1)?,
        seq: seq as u64,
        sender_id: r.get(at + 3)?,
        recipient_id: r.get(at + 4)?,
        text: if deleted { None } else { r.get(at + 5)? },
        client_msg_id: r.get(at + 6)?,
        sent_at: from_micros(r.get(at + 7)?)?,
        deleted_for_everyone: deleted,
        status: if read_seq >= seq {
            MessageStatus::Read
        } else if delivered {
            MessageStatus::Delivered
        } else {
            MessageStatus::Pending
        },
        position: Position::new(r.get(at + 9)?, r.get::<_, i64>(at + 10)? as u64),
    })
}

#[async_trait]
impl ReadStore for SqliteStore {
    async fn apply(
        &self,
        projection: &str,
        changes: Vec<Change>,
        checkpoint: Vec<Position>,
    ) -> Result<()> {
        let store = self.clone();
        let projection = projection.to_owned();
        tokio::task::spawn_blocking(move || {
            store.apply_blocking(&projection, &changes, &checkpoint)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("projection task failed: {e}")))?
    }

    async fn checkpoints(&self, projection: &str) -> Result<Vec<Position>> {
        self.read("checkpoints", |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT partition, next_offset FROM checkpoints WHERE projection = ?1 ORDER BY partition",
                )
                .map_err(sql("preparing a checkpoint read"))?;
            let rows = stmt
                .query_map([projection], |r| {
                    Ok(Position::new(r.get(0)?, r.get::<_, i64>(1)? as u64))
                })
                .map_err(sql("reading checkpoints"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql("reading checkpoints"))
        })
    }

    async fn tables(&self) -> Result<Vec<String>> {
        self.read("tables", table_names)
    }

    async fn table_rows(&self, table: &str) -> Result<Vec<String>> {
        self.read("table_rows", |c| {
            if !table_names(c)?.iter().any(|t| t == table) {
                return Err(StoreError::Corrupt(format!(
                    "no read-model table {table:?}"
                )));
            }
            table_rows(c, table)
        })
    }

    async fn user(&self, id: Uuid) -> Result<Option<User>> {
        self.read("user", |c| {
            c.prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM users u WHERE u.user_id = ?1"
            ))
            .and_then(|mut s| s.query_row([id], |r| user_from_row(r, 0)).optional())
            .map_err(sql("reading a user"))
        })
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<User>> {
        let key = username.to_lowercase();
        self.read("user_by_username", |c| {
            c.prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM users u WHERE u.username_key = ?1"
            ))
            .and_then(|mut s| s.query_row([key], |r| user_from_row(r, 0)).optional())
            .map_err(sql("looking up a username"))
        })
    }

    async fn friendship(&self, a: Uuid, b: Uuid) -> Result<FriendshipState> {
        let (lo, hi) = ordered(a, b);
        self.read("friendship", |c| {
            let row: Option<(i64, Option<Uuid>)> = c
                .prepare_cached(
                    "SELECT state, requester FROM friendships WHERE user_lo = ?1 AND user_hi = ?2",
                )
                .and_then(|mut s| {
                    s.query_row(params![lo, hi], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(sql("reading a friendship"))?;
            Ok(match row {
                Some((1, Some(requester))) => FriendshipState::Pending { requester },
                Some((2, _)) => FriendshipState::Friends,
                _ => FriendshipState::None,
            })
        })
    }

    async fn friends(&self, user: Uuid) -> Result<Vec<FriendEntry>> {
        self.read("friends", |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT f.state, f.requester, f.since, {USER_COLUMNS}
                     FROM friendships f JOIN users u
                       ON u.user_id = CASE WHEN f.user_lo = ?1 THEN f.user_hi ELSE f.user_lo END
                     WHERE (f.user_lo = ?1 OR f.user_hi = ?1) AND f.state != 0
                     ORDER BY f.since DESC, u.user_id"
                ))
                .map_err(sql("preparing a friend list"))?;
            let rows = stmt
                .query_map([user], |r| {
                    let state: i64 = r.get(0)?;
                    let requester: Option<Uuid> = r.get(1)?;
                    let relation = match (state, requester) {
                        (2, _) => Relation::Friend,
                        (_, Some(req)) if req == user => Relation::OutgoingRequest,
                        _ => Relation::IncomingRequest,
                    };
                    Ok(FriendEntry {
                        relation,
                        since: from_micros(r.get(2)?)?,
                        user: user_from_row(r, 3)?,
                    })
                })
                .map_err(sql("reading a friend list"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql("reading a friend list"))
        })
    }

    async fn conversations(
        &self,
        user: Uuid,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Conversation>> {
        let (before_at, before_id) = match cursor {
            Some(c) => parse_conversation_cursor(c)?,
            None => (i64::MAX, Uuid::max()),
        };
        self.read("conversations", |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT uc.conversation_id, uc.unread, uc.last_activity_at, {USER_COLUMNS},
                            m.message_id IS NOT NULL, {MESSAGE_COLUMNS}
                     FROM user_conversations uc
                     JOIN users u ON u.user_id = uc.peer_id
                     LEFT JOIN messages m ON m.message_id = uc.last_message_id
                     LEFT JOIN user_conversations rc
                       ON rc.user_id = m.recipient_id AND rc.conversation_id = m.conversation_id
                     WHERE uc.user_id = ?1
                       AND (uc.last_activity_at < ?2
                            OR (uc.last_activity_at = ?2 AND uc.conversation_id < ?3))
                     ORDER BY uc.last_activity_at DESC, uc.conversation_id DESC
                     LIMIT ?4"
                ))
                .map_err(sql("preparing a conversation list"))?;
            let rows = stmt
                .query_map(
                    params![user, before_at, before_id, (limit + 1) as i64],
                    |r| {
                        // After the three columns and the user's: whether there is a last message, then it.
                        let has_last: bool = r.get(3 + USER_COLUMN_COUNT)?;
                        Ok(Conversation {
                            conversation_id: r.get(0)?,
                            unread_count: r.get::<_, i64>(1)?.max(0) as u64,
                            last_activity_at: from_micros(r.get(2)?)?,
                            peer: user_from_row(r, 3)?,
                            last_message: if has_last {
                                Some(message_from_row(r, 4 + USER_COLUMN_COUNT)?)
                            } else {
                                None
                            },
                        })
                    },
                )
                .map_err(sql("reading a conversation list"))?;
            let items = rows
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql("reading a conversation list"))?;
            Ok(page(items, limit, conversation_cursor))
        })
    }

    async fn participants(&self, conversation: Uuid) -> Result<Option<(Uuid, Uuid)>> {
        self.read("participants", |c| {
            c.prepare_cached("SELECT user_a, user_b FROM conversations WHERE conversation_id = ?1")
                .and_then(|mut s| {
                    s.query_row([conversation], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(sql("reading a conversation"))
        })
    }

    async fn history(
        &self,
        viewer: Uuid,
        conversation: Uuid,
        query: HistoryQuery,
    ) -> Result<Page<Message>> {
        self.read("history", |c| {
            let seq_of = |id: Uuid| -> Result<i64> {
                c.prepare_cached(
                    "SELECT seq FROM messages WHERE message_id = ?1 AND conversation_id = ?2",
                )
                .and_then(|mut s| {
                    s.query_row(params![id, conversation], |r| r.get(0))
                        .optional()
                })
                .map_err(sql("resolving a cursor"))?
                .ok_or(StoreError::UnknownCursor(id))
            };
            let upper = query.before.map(&seq_of).transpose()?.unwrap_or(i64::MAX);
            let mut lower = query.after.map(&seq_of).transpose()?.unwrap_or(0);
            let since = query.since.map(micros).unwrap_or(i64::MIN);
            if query.since.is_some() {
                // Times are monotonic in seq within a conversation (see add_messages), so the
                // first message at or after `since` bounds the sequence numbers exactly.
                let first: Option<i64> = c
                    .prepare_cached(
                        "SELECT seq FROM messages WHERE conversation_id = ?1 AND sent_at >= ?2
                         ORDER BY sent_at, seq LIMIT 1",
                    )
                    .and_then(|mut s| {
                        s.query_row(params![conversation, since], |r| r.get(0))
                            .optional()
                    })
                    .map_err(sql("locating a time in history"))?;
                lower = lower.max(first.map_or(i64::MAX - 1, |seq| seq - 1));
            }
            let order = if query.ascending() { "ASC" } else { "DESC" };
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM}
                     WHERE m.conversation_id = :conv AND m.seq < :upper AND m.seq > :lower
                       AND m.sent_at >= :since AND {NOT_HIDDEN}
                     ORDER BY m.seq {order} LIMIT :limit"
                ))
                .map_err(sql("preparing a history read"))?;
            let rows = stmt
                .query_map(
                    rusqlite::named_params! {
                        ":conv": conversation,
                        ":upper": upper,
                        ":lower": lower,
                        ":since": since,
                        ":viewer": viewer,
                        ":limit": (query.limit + 1) as i64,
                    },
                    |r| message_from_row(r, 0),
                )
                .map_err(sql("reading history"))?;
            let items = rows
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql("reading history"))?;
            Ok(page(items, query.limit, |m: &Message| {
                m.message_id.to_string()
            }))
        })
    }

    async fn messages_since(
        &self,
        user: Uuid,
        since: DateTime<Utc>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<FeedPage> {
        let after = match after {
            Some(c) => Some(
                c.parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| StoreError::InvalidCursor(c.to_owned()))?,
            ),
            None => None,
        };
        let since = micros(since);
        self.read("messages_since", |c| {
            // Without a cursor, start at the first feed entry at or after `since`.
            let start = match after {
                Some(a) => a,
                None => c
                    .prepare_cached(
                        "SELECT MIN(feed_seq) - 1 FROM user_feed WHERE user_id = ?1 AND sent_at >= ?2",
                    )
                    .and_then(|mut s| s.query_row(params![user, since], |r| r.get::<_, Option<i64>>(0)))
                    .map_err(sql("locating a time in the feed"))?
                    .unwrap_or(i64::MAX - 1),
            };
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS}, f.feed_seq
                     FROM user_feed f JOIN messages m ON m.message_id = f.message_id
                     LEFT JOIN user_conversations rc
                       ON rc.user_id = m.recipient_id AND rc.conversation_id = m.conversation_id
                     WHERE f.user_id = :viewer AND f.feed_seq > :start AND f.sent_at >= :since
                       AND {NOT_HIDDEN}
                     ORDER BY f.feed_seq LIMIT :limit"
                ))
                .map_err(sql("preparing a message catch-up"))?;
            let rows = stmt
                .query_map(
                    rusqlite::named_params! {
                        ":viewer": user,
                        ":start": start,
                        ":since": since,
                        ":limit": (limit + 1) as i64,
                    },
                    |r| Ok((message_from_row(r, 0)?, r.get::<_, i64>(13)?)),
                )
                .map_err(sql("reading a message catch-up"))?;
            let mut rows = rows
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql("reading a message catch-up"))?;
            let more = rows.len() > limit;
            rows.truncate(limit);
            let last = match rows.last() {
                Some((_, seq)) => *seq,
                // Nothing (more) to read: resume after the feed's current end.
                None => c
                    .prepare_cached("SELECT COALESCE(MAX(last_feed_seq), 0) FROM feed_tails WHERE user_id = ?1")
                    .and_then(|mut s| s.query_row([user], |r| r.get(0)))
                    .map_err(sql("reading a feed's end"))?,
            };
            Ok(FeedPage {
                next: more.then(|| last.to_string()),
                resume: last.max(after.unwrap_or(0)).to_string(),
                items: rows.into_iter().map(|(m, _)| m).collect(),
            })
        })
    }

    async fn message(&self, viewer: Uuid, message_id: Uuid) -> Result<Option<Message>> {
        self.read("message", |c| {
            c.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM}
                 WHERE m.message_id = :id AND (m.sender_id = :viewer OR m.recipient_id = :viewer)
                   AND {NOT_HIDDEN}"
            ))
            .and_then(|mut s| {
                s.query_row(
                    rusqlite::named_params! { ":id": message_id, ":viewer": viewer },
                    |r| message_from_row(r, 0),
                )
                .optional()
            })
            .map_err(sql("reading a message"))
        })
    }

    async fn message_by_client_id(
        &self,
        sender: Uuid,
        client_msg_id: &str,
    ) -> Result<Option<Message>> {
        self.read("message_by_client_id", |c| {
            c.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM}
                 WHERE m.sender_id = ?1 AND m.client_msg_id = ?2"
            ))
            .and_then(|mut s| {
                s.query_row(params![sender, client_msg_id], |r| message_from_row(r, 0))
                    .optional()
            })
            .map_err(sql("looking up a client message id"))
        })
    }

    async fn pending(
        &self,
        user: Uuid,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Message>> {
        let (t, conversation, seq) = match after {
            Some(cursor) => parse_pending_cursor(cursor)?,
            None => (i64::MIN, Uuid::nil(), 0),
        };
        self.read("pending", |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM}
                     WHERE m.recipient_id = :viewer AND m.delivered = 0 AND m.deleted = 0
                       AND (m.sent_at, m.conversation_id, m.seq) > (:t, :conversation, :seq)
                       AND m.seq > COALESCE(rc.read_seq, 0) AND {NOT_HIDDEN}
                     ORDER BY m.sent_at, m.conversation_id, m.seq LIMIT :limit"
                ))
                .map_err(sql("preparing a pending-messages read"))?;
            let items = stmt
                .query_map(
                    rusqlite::named_params! {
                        ":viewer": user,
                        ":t": t,
                        ":conversation": conversation,
                        ":seq": seq,
                        ":limit": (limit + 1) as i64,
                    },
                    |r| message_from_row(r, 0),
                )
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(sql("reading pending messages"))?;
            Ok(page(items, limit, pending_cursor))
        })
    }

    async fn online_users(&self) -> Result<Vec<Uuid>> {
        self.read("online_users", |c| {
            c.prepare_cached("SELECT user_id FROM users WHERE online = 1 ORDER BY user_id")
                .and_then(|mut s| {
                    s.query_map([], |r| r.get(0))?
                        .collect::<rusqlite::Result<Vec<Uuid>>>()
                })
                .map_err(sql("listing online users"))
        })
    }

    async fn restricted_accounts(&self) -> Result<Vec<(Uuid, AccountStatus)>> {
        self.read("restricted_accounts", |c| {
            c.prepare_cached("SELECT user_id, account FROM users WHERE account <> 0")
                .and_then(|mut s| {
                    s.query_map([], |r| Ok((r.get(0)?, account_from_code(r.get(1)?)?)))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(sql("listing restricted accounts"))
        })
    }

    async fn server(&self, id: Uuid) -> Result<Option<Server>> {
        self.read("server", |c| communities::server(c, id))
    }

    async fn server_by_name(&self, name: &str) -> Result<Option<Server>> {
        self.read("server_by_name", |c| communities::server_by_name(c, name))
    }

    async fn search_servers(
        &self,
        search: &ServerSearch,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Server>> {
        self.read("search_servers", |c| {
            communities::search_servers(c, search, after, limit)
        })
    }

    async fn user_servers(
        &self,
        user: Uuid,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<UserServer>> {
        self.read("user_servers", |c| {
            communities::user_servers(c, user, after, limit)
        })
    }

    async fn membership(&self, server: Uuid, user: Uuid) -> Result<Option<ServerRole>> {
        self.read("membership", |c| communities::membership(c, server, user))
    }

    async fn invitation(&self, invitation_id: Uuid) -> Result<Option<Invitation>> {
        self.read("invitation", |c| communities::invitation(c, invitation_id))
    }

    async fn pending_invitation(&self, server: Uuid, invitee: Uuid) -> Result<Option<Invitation>> {
        self.read("pending_invitation", |c| {
            communities::pending_invitation(c, server, invitee)
        })
    }

    async fn pending_invitations(
        &self,
        invitee: Uuid,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Invitation>> {
        self.read("pending_invitations", |c| {
            communities::pending_invitations(c, invitee, after, limit)
        })
    }

    async fn posts(&self, server: Uuid, before: Option<&str>, limit: usize) -> Result<Page<Post>> {
        self.read("posts", |c| communities::posts(c, server, before, limit))
    }

    async fn channels(&self, server: Uuid, viewer: Uuid) -> Result<Vec<ChannelSummary>> {
        self.read("channels", |c| communities::channels(c, server, viewer))
    }

    async fn channel(&self, channel: Uuid) -> Result<Option<Channel>> {
        self.read("channel", |c| communities::channel(c, channel))
    }

    async fn current_channel(&self, user: Uuid) -> Result<Option<Channel>> {
        self.read("current_channel", |c| communities::current_channel(c, user))
    }

    async fn channel_members(
        &self,
        channel: Uuid,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Uuid>> {
        self.read("channel_members", |c| {
            communities::channel_members(c, channel, after, limit)
        })
    }

    async fn channel_history(
        &self,
        viewer: Uuid,
        channel: Uuid,
        query: HistoryQuery,
    ) -> Result<Page<ChannelMessage>> {
        self.read("channel_history", |c| {
            communities::channel_history(c, viewer, channel, query)
        })
    }

    async fn channel_message_by_client_id(
        &self,
        sender: Uuid,
        client_msg_id: &str,
    ) -> Result<Option<ChannelMessage>> {
        self.read("channel_message_by_client_id", |c| {
            communities::channel_message_by_client_id(c, sender, client_msg_id)
        })
    }

    async fn channel_message(
        &self,
        viewer: Uuid,
        message_id: Uuid,
    ) -> Result<Option<ChannelMessage>> {
        self.read("channel_message", |c| {
            communities::channel_message(c, viewer, message_id)
        })
    }

    async fn latest_channel_message(&self, channel: Uuid) -> Result<Option<ChannelMessage>> {
        self.read("latest_channel_message", |c| {
            communities::latest_channel_message(c, channel)
        })
    }
}

/// A projection's checkpoints, and every read-model table's rows by table name
/// ([`SqliteStore::snapshot`]).
pub type Snapshot = (Vec<Position>, BTreeMap<String, Vec<String>>);

/// The read-model tables: every table but SQLite's own and the checkpoints.
fn table_names(c: &Connection) -> Result<Vec<String>> {
    let mut stmt = c
        .prepare_cached(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite_%' AND name != 'checkpoints' ORDER BY name",
        )
        .map_err(sql("listing tables"))?;
    let names = stmt
        .query_map([], |r| r.get(0))
        .map_err(sql("listing tables"))?;
    names
        .collect::<rusqlite::Result<Vec<String>>>()
        .map_err(sql("listing tables"))
}

/// Every row of `table` (one of [`table_names`]) as text, sorted.
fn table_rows(c: &Connection, table: &str) -> Result<Vec<String>> {
    // The name is one of the schema's tables: safe to quote into the statement.
    let mut stmt = c
        .prepare(&format!("SELECT * FROM \"{table}\""))
        .map_err(sql("reading a table"))?;
    let columns = stmt.column_count();
    let rows = stmt
        .query_map([], |r| {
            let mut line = String::new();
            for i in 0..columns {
                if i > 0 {
                    line.push_str(" | ");
                }
                line.push_str(&value_text(r.get_ref(i)?));
            }
            Ok(line)
        })
        .map_err(sql("reading a table"))?;
    let mut lines = rows
        .collect::<rusqlite::Result<Vec<String>>>()
        .map_err(sql("reading a table"))?;
    lines.sort_unstable();
    Ok(lines)
}

/// A column's value as text for [`ReadStore::table_rows`]: 16-byte blobs (the ids) as UUIDs.
fn value_text(value: rusqlite::types::ValueRef<'_>) -> String {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => "NULL".to_owned(),
        ValueRef::Integer(n) => n.to_string(),
        ValueRef::Real(x) => x.to_string(),
        ValueRef::Text(t) => format!("{:?}", String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => match Uuid::from_slice(b) {
            Ok(id) => id.to_string(),
            Err(_) => format!(
                "x'{}'",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            ),
        },
    }
}
