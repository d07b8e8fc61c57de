//! The production [`ReadStore`]: the tables of `projections/*.cql` on ScyllaDB or Cassandra.
//!
//! # Writes
//! Every write is a prepared statement with `USING TIMESTAMP` taken from the event (see
//! `projections/README.md`), so writes commute: applying them again, in any order, or after
//! newer ones, leaves the same cells. That lets [`ScyllaStore::apply`] read what it needs first
//! (where the messages it touches are, each conversation's tail), work out every write in
//! memory, send them concurrently, and only then record the checkpoint. A crash in between
//! re-applies the batch: harmless. A new message's rows go in one logged batch, so a
//! redelivered message is either fully there (and skipped) or not at all (and written with
//! the same sequence number).
//!
//! One projector owns a log partition at a time, and every row that is read before a write is
//! written only from events of one partition (a conversation's, a user's), so the reads see
//! every earlier write. During a rebalance two owners may apply the same batch: both write
//! the same cells with the same timestamps.
//!
//! Deletions are of single rows (never a clustering range) and carry [`DELETED_TS`], above
//! every insert's timestamp, so a redelivered insert never brings a deleted row back: a
//! message leaves its recipient's `pending_messages` when a device of theirs acknowledges it,
//! their read marker passes it, they hide it, or it is deleted for everyone. A read marker
//! finds the rows it passes with a clustering-slice read first.
//!
//! # Reads
//! Each query reads one partition or a few, by key; nothing uses `ALLOW FILTERING` or a
//! secondary index. Unread counts are derived (`peer_sent - read_peer_count - uncounted after
//! the marker`), never counted in place. A message's status comes from its history row
//! (`delivered`) and its recipient's read marker. Pending messages are read from the user's
//! `pending_messages` partition, ordered in the adapter, and each is checked again against
//! those facts (and `hidden_messages`), so a row that outlived its message's pending state
//! is never listed.
//!
//! # Metrics
//! Every [`ReadStore`] method that sends requests is timed as a whole (all its reads and
//! writes, `apply` included) in `missive_store_query_duration_seconds`, `backend="scylla"`
//! and `statement` the method's name: the same label set as the SQLite adapter, so the two
//! compare directly.
//!
//! # Servers and channels
//! The community tables (schema version 3) are written and read in `communities.rs`, with the
//! same rules; its statements are prepared with these (`cql::ALL` lists both), and
//! [`Applying`] carries its per-batch state.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ::scylla::client::session::Session;
use ::scylla::errors::{
    DbError, ExecutionError, NextPageError, NextRowError, PagerExecutionError, PrepareError,
    RequestAttemptError, RequestError,
};
use ::scylla::serialize::batch::BatchValues;
use ::scylla::serialize::row::SerializeRow;
use ::scylla::statement::batch::{Batch, BatchType};
use ::scylla::statement::prepared::PreparedStatement;
use ::scylla::value::MaybeUnset;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use missive_log::Position;
use uuid::Uuid;

use super::{MIGRATIONS, ScyllaConfig};
use crate::{
    AccountStatus, Change, Channel, ChannelMessage, ChannelSummary, Conversation, FeedPage,
    FriendEntry, FriendshipState, HistoryQuery, Invitation, Message, MessageStatus, Page, Post,
    ReadStore, Relation, Result, Retention, Server, ServerRole, ServerSearch, StoreError, User,
    UserServer, conversation_cursor, deleted_username, ordered, page, parse_conversation_cursor,
    parse_pending_cursor, pending_cursor, query_timer,
};

/// The `backend` label of this adapter's `missive_store_query_duration_seconds`.
const BACKEND: &str = "scylla";

/// History buckets: 10 days of send time, in microseconds.
const BUCKET_MICROS: i64 = 864_000_000_000;
/// Feed buckets: 2^20 log offsets.
const FEED_BUCKET_BITS: u32 = 20;
/// Write timestamp of a registration's cells: below every profile change's (`offset + 2`).
pub(super) const REGISTRATION_TS: i64 = 1;
/// Write timestamp of rows that only ever appear (hidden and uncounted messages).
const MEMBERSHIP_TS: i64 = 1;
/// Write timestamp of one-way changes no message write can undo: a deletion for everyone, a
/// delivery acknowledgement, and every removal of a message from a user's pending messages.
/// It is above every offset's (`offset + 2 < 2^50` for any log that fits on disks), yet in the
/// past as a time (2005): ScyllaDB refuses timestamps far in the future.
pub(super) const DELETED_TS: i64 = 1 << 50;
/// How many writes of one batch of changes are in flight at once.
const WRITES_IN_FLIGHT: usize = 64;
/// How many reads one query or batch runs at once.
pub(super) const READS_IN_FLIGHT: usize = 32;
/// Rows fetched per page when a query walks a partition.
pub(super) const CHUNK: usize = 200;
/// Bucket rows fetched per page when history walks a conversation's buckets.
pub(super) const BUCKET_CHUNK: i32 = 32;

/// The write timestamp of a cell set by the event at `offset` (0 and 1 are taken).
pub(super) fn at_offset(offset: u64) -> i64 {
    i64::try_from(offset).unwrap_or(i64::MAX).saturating_add(2)
}

pub(super) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(super) fn from_micros(v: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(v)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {v} µs is out of range")))
}

pub(super) fn history_bucket(sent_at_us: i64) -> i64 {
    sent_at_us.div_euclid(BUCKET_MICROS)
}

fn feed_bucket(offset: i64) -> i64 {
    offset >> FEED_BUCKET_BITS
}

pub(super) fn partition_of(p: u32) -> Result<i32> {
    i32::try_from(p).map_err(|_| StoreError::Corrupt(format!("log partition {p} exceeds int")))
}

/// Declares prepared statements: `mod $module` holds their CQL (tables unqualified: the
/// session uses the store's keyspace) and `$list` every one of them; `struct $prepared` holds
/// them prepared. Used here and in `communities.rs`.
macro_rules! statements {
    (
        mod $module:ident;
        const $list:ident;
        struct $prepared:ident;
        $($(#[$doc:meta])* $name:ident = $cql:expr;)*
    ) => {
        pub mod $module {
            $($(#[$doc])* pub const $name: &str = $cql;)*
            /// Every statement of this module.
            pub const $list: &[&str] = &[$($name),*];
        }

        #[allow(non_snake_case)]
        pub(super) struct $prepared {
            $(pub(super) $name: ::scylla::statement::prepared::PreparedStatement,)*
        }

        impl $prepared {
            pub(super) async fn prepare(
                session: &::scylla::client::session::Session,
            ) -> $crate::Result<Self> {
                Ok($prepared {
                    $($name: $crate::scylla::store::prepare(session, $module::$name).await?,)*
                })
            }
        }
    };
}

pub(super) use statements;

/// The CQL of every statement the adapter prepares (tables unqualified: the session uses the
/// store's keyspace). CI checks each parses and names only schema columns.
pub mod cql {
    pub use super::communities_cql::*;
    pub use super::core_cql::*;

    /// Which schema versions are applied: read by `open` before anything else.
    pub const MIGRATIONS_GET: &str = "SELECT version FROM schema_migrations";

    const COUNT: usize =
        1 + super::core_cql::CORE.len() + super::communities_cql::COMMUNITIES.len();

    const LISTED: [&str; COUNT] = {
        let mut all = [MIGRATIONS_GET; COUNT];
        let (core, communities) = (super::core_cql::CORE, super::communities_cql::COMMUNITIES);
        let mut i = 0;
        while i < core.len() {
            all[1 + i] = core[i];
            i += 1;
        }
        let mut j = 0;
        while j < communities.len() {
            all[1 + core.len() + j] = communities[j];
            j += 1;
        }
        all
    };

    /// Every statement the adapter prepares.
    pub const ALL: &[&str] = &LISTED;
}

use super::communities::cql as communities_cql;

/// Columns of a history row, in the order [`MessageRow`] reads them.
macro_rules! message_columns {
    () => {
        "seq, message_id, sender_id, recipient_id, text, client_msg_id, sent_at_us, deleted, \
         log_partition, log_offset, delivered"
    };
}

macro_rules! entry_columns {
    () => {
        "conversation_id, peer_id, last_message_id, last_seq, last_bucket, last_activity_us, \
         peer_sent, read_seq, read_peer_count"
    };
}

statements! {
    mod core_cql;
    const CORE;
    struct Prepared;

    CHECKPOINT_SET = "INSERT INTO checkpoints (projection, log_partition, next_offset) \
        VALUES (?, ?, ?) USING TIMESTAMP ?";
    CHECKPOINTS_GET = "SELECT log_partition, next_offset FROM checkpoints WHERE projection = ?";

    USER_GET = "SELECT username, display_name, registered_at_us, online, last_seen_us, account \
        FROM users WHERE user_id = ?";
    USER_ACCOUNT_SET = "UPDATE users USING TIMESTAMP ? SET account = ? WHERE user_id = ?";
    /// Deletion's scrub of the profile, at 2^50.
    USER_SCRUB = "UPDATE users USING TIMESTAMP ? SET username = ?, display_name = '' \
        WHERE user_id = ?";
    USERNAME_RELEASE = "DELETE FROM users_by_username USING TIMESTAMP ? \
        WHERE username_key = ? AND registered_at_us = ? AND user_id = ?";
    /// `bucket` is always 0 (one partition).
    RESTRICTED_SET = "INSERT INTO restricted_accounts (bucket, user_id, status) \
        VALUES (?, ?, ?) USING TIMESTAMP ?";
    RESTRICTED_CLEAR = "DELETE FROM restricted_accounts USING TIMESTAMP ? \
        WHERE bucket = ? AND user_id = ?";
    RESTRICTED_ALL = "SELECT user_id, status FROM restricted_accounts WHERE bucket = ?";
    USER_ADD = "INSERT INTO users (user_id, username, display_name, registered_at_us) \
        VALUES (?, ?, ?, ?) USING TIMESTAMP ?";
    USER_NAME_SET = "UPDATE users USING TIMESTAMP ? SET display_name = ? WHERE user_id = ?";
    USER_ONLINE_SET = "UPDATE users USING TIMESTAMP ? SET online = ? WHERE user_id = ?";
    /// A paged scan of every user (start-up recovery only; filtered in the adapter, as
    /// `online` has no index).
    USERS_PRESENCE_SCAN = "SELECT user_id, online, username FROM users";
    USER_LAST_SEEN_SET = "UPDATE users USING TIMESTAMP ? SET last_seen_us = ? WHERE user_id = ?";
    USERNAME_CLAIM = "INSERT INTO users_by_username (username_key, registered_at_us, user_id) \
        VALUES (?, ?, ?) USING TIMESTAMP ?";
    /// The earliest registration of a name owns it.
    USERNAME_GET = "SELECT user_id FROM users_by_username WHERE username_key = ? LIMIT 1";

    FRIENDSHIP_SET = "INSERT INTO friendships (user_lo, user_hi, state, requester, since_us) \
        VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?";
    FRIENDSHIP_GET = "SELECT state, requester FROM friendships WHERE user_lo = ? AND user_hi = ?";
    FRIEND_SET = "INSERT INTO friends_by_user (user_id, other_id, state, requester, since_us) \
        VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?";
    FRIENDS_GET = "SELECT other_id, state, requester, since_us FROM friends_by_user \
        WHERE user_id = ?";

    TAIL_GET = "SELECT user_lo, user_hi, last_message_id, last_seq, last_sent_at_us, \
        sent_by_lo, sent_by_hi, last_offset FROM conversations WHERE conversation_id = ?";
    /// Never expires: a conversation keeps its numbers (see [`crate::Retention`]).
    TAIL_SET = "INSERT INTO conversations (conversation_id, user_lo, user_hi, last_message_id, \
        last_seq, last_sent_at_us, sent_by_lo, sent_by_hi, last_offset) \
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?";
    /// With the TTL of the bucket's latest message (its write has the highest timestamp).
    BUCKET_ADD = "INSERT INTO conversation_buckets (conversation_id, bucket) VALUES (?, ?) \
        USING TIMESTAMP ? AND TTL ?";
    /// Buckets at or before one, newest first (the clustering order).
    BUCKETS_DOWN = "SELECT bucket FROM conversation_buckets WHERE conversation_id = ? \
        AND bucket <= ? LIMIT ?";
    /// Buckets at or after one, oldest first.
    BUCKETS_UP = "SELECT bucket FROM conversation_buckets WHERE conversation_id = ? \
        AND bucket >= ? ORDER BY bucket ASC LIMIT ?";

    MESSAGE_ADD = "INSERT INTO messages (conversation_id, bucket, seq, message_id, sender_id, \
        recipient_id, text, client_msg_id, sent_at_us, deleted, sender_count, peer_count, \
        log_partition, log_offset) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
        USING TIMESTAMP ? AND TTL ?";
    MESSAGE_GET = concat!("SELECT ", message_columns!(), " FROM messages \
        WHERE conversation_id = ? AND bucket = ? AND seq = ?");
    /// A bucket's messages between two seqs (exclusive), newest first.
    MESSAGES_DOWN = concat!("SELECT ", message_columns!(), " FROM messages \
        WHERE conversation_id = ? AND bucket = ? AND seq < ? AND seq > ? LIMIT ?");
    /// A bucket's messages between two seqs (exclusive), oldest first.
    MESSAGES_UP = concat!("SELECT ", message_columns!(), " FROM messages \
        WHERE conversation_id = ? AND bucket = ? AND seq < ? AND seq > ? \
        ORDER BY seq ASC LIMIT ?");
    /// A bucket's oldest messages after a seq, with the counts unread counts need: where
    /// retention left a conversation's history starting.
    MESSAGES_FIRST_AFTER = "SELECT seq, sender_id, sender_count, peer_count FROM messages \
        WHERE conversation_id = ? AND bucket = ? AND seq > ? ORDER BY seq ASC LIMIT ?";
    /// With the message's TTL, like every later write to its row: a cell without one would
    /// keep the row after the message expired.
    MESSAGE_DELETE = "UPDATE messages USING TIMESTAMP ? AND TTL ? SET deleted = ?, text = ? \
        WHERE conversation_id = ? AND bucket = ? AND seq = ?";
    /// Only ever set to true (at `DELETED_TS`): a message write never names the column.
    MESSAGE_DELIVERED_SET = "UPDATE messages USING TIMESTAMP ? AND TTL ? SET delivered = true \
        WHERE conversation_id = ? AND bucket = ? AND seq = ?";
    LOCATION_ADD = "INSERT INTO messages_by_id (message_id, conversation_id, bucket, seq, \
        sender_id, recipient_id, sent_at_us, sender_count, peer_count) \
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ? AND TTL ?";
    LOCATION_GET = "SELECT conversation_id, bucket, seq, sender_id, recipient_id, sent_at_us, \
        sender_count, peer_count FROM messages_by_id WHERE message_id = ?";
    CLIENT_ID_ADD = "INSERT INTO messages_by_client_id (sender_id, client_msg_id, sent_at_us, \
        message_id) VALUES (?, ?, ?, ?) USING TIMESTAMP ? AND TTL ?";
    /// The first send of a key owns it.
    CLIENT_ID_GET = "SELECT message_id FROM messages_by_client_id \
        WHERE sender_id = ? AND client_msg_id = ? LIMIT 1";

    ENTRY_MESSAGE_SET = "UPDATE user_conversations USING TIMESTAMP ? SET peer_id = ?, \
        last_message_id = ?, last_seq = ?, last_bucket = ?, last_activity_us = ?, peer_sent = ? \
        WHERE user_id = ? AND conversation_id = ?";
    ENTRY_READ_SET = "UPDATE user_conversations USING TIMESTAMP ? SET read_seq = ?, \
        read_peer_count = ? WHERE user_id = ? AND conversation_id = ?";
    ENTRIES_GET = concat!("SELECT ", entry_columns!(), " FROM user_conversations \
        WHERE user_id = ?");
    ENTRY_GET = concat!("SELECT ", entry_columns!(), " FROM user_conversations \
        WHERE user_id = ? AND conversation_id = ?");

    HIDDEN_ADD = "INSERT INTO hidden_messages (user_id, conversation_id, seq, message_id) \
        VALUES (?, ?, ?, ?) USING TIMESTAMP ? AND TTL ?";
    HIDDEN_BETWEEN = "SELECT seq FROM hidden_messages WHERE user_id = ? \
        AND conversation_id = ? AND seq >= ? AND seq <= ?";
    UNCOUNTED_ADD = "INSERT INTO uncounted_messages (user_id, conversation_id, seq) \
        VALUES (?, ?, ?) USING TIMESTAMP ? AND TTL ?";
    UNCOUNTED_AFTER = "SELECT COUNT(*) FROM uncounted_messages WHERE user_id = ? \
        AND conversation_id = ? AND seq > ?";

    /// Written in the message's logged batch, at its offset + 2.
    PENDING_ADD = "INSERT INTO pending_messages (recipient_id, conversation_id, seq, \
        message_id, bucket, sent_at_us) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ? AND TTL ?";
    /// One row at a time (no range deletions), at `DELETED_TS`: above every insert's.
    PENDING_DELETE = "DELETE FROM pending_messages USING TIMESTAMP ? WHERE recipient_id = ? \
        AND conversation_id = ? AND seq = ?";
    /// A user's pending messages of one conversation up to a seq: those a read marker passes.
    PENDING_UP_TO = "SELECT seq, message_id FROM pending_messages WHERE recipient_id = ? \
        AND conversation_id = ? AND seq <= ?";
    PENDING_GET = "SELECT conversation_id, seq, message_id, bucket, sent_at_us \
        FROM pending_messages WHERE recipient_id = ?";

    FEED_ADD = "INSERT INTO user_feed (user_id, log_partition, offset_bucket, log_offset, \
        message_id, conversation_id, bucket, seq, sent_at_us) \
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ? AND TTL ?";
    /// A feed bucket's entries between two offsets (exclusive).
    FEED_BETWEEN = "SELECT log_offset, conversation_id, bucket, seq, sent_at_us FROM user_feed \
        WHERE user_id = ? AND log_partition = ? AND offset_bucket = ? AND log_offset > ? \
        AND log_offset < ? LIMIT ?";
    /// Written with the offset as timestamp: a horizon only moves forward.
    FEED_HORIZON_SET = "INSERT INTO feed_horizons (log_partition, next_offset) VALUES (?, ?) \
        USING TIMESTAMP ?";
    FEED_HORIZON_GET = "SELECT next_offset FROM feed_horizons WHERE log_partition = ?";
    /// Written with `max_sent_at_us` as its timestamp, so the cell keeps the maximum.
    FEED_BUCKET_ADD = "INSERT INTO user_feed_buckets (user_id, log_partition, offset_bucket, \
        max_sent_at_us) VALUES (?, ?, ?, ?) USING TIMESTAMP ? AND TTL ?";
    FEED_BUCKETS_GET = "SELECT log_partition, offset_bucket, max_sent_at_us \
        FROM user_feed_buckets WHERE user_id = ?";
}

// ----- errors -----

/// Whether a failed attempt may succeed later: timeouts, unavailable replicas, overload, lost
/// connections. Refusals of the request itself (syntax, invalid, unauthorized, serialization)
/// fail every time. These classifiers are shared by every Scylla adapter (the analytics store
/// too).
pub fn attempt_transient(e: &RequestAttemptError) -> bool {
    match e {
        RequestAttemptError::DbError(db, _) => matches!(
            db,
            DbError::Unavailable { .. }
                | DbError::ReadTimeout { .. }
                | DbError::WriteTimeout { .. }
                | DbError::ReadFailure { .. }
                | DbError::WriteFailure { .. }
                | DbError::Overloaded
                | DbError::IsBootstrapping
                | DbError::RateLimitReached { .. }
                | DbError::TruncateError
                | DbError::ServerError
        ),
        RequestAttemptError::BrokenConnectionError(_)
        | RequestAttemptError::UnableToAllocStreamId => true,
        _ => false,
    }
}

/// Whether a failed request may succeed later (see [`attempt_transient`]).
pub fn request_transient(e: &RequestError) -> bool {
    match e {
        RequestError::LastAttemptError(a) => attempt_transient(a),
        RequestError::EmptyPlan
        | RequestError::ConnectionPoolError(_)
        | RequestError::RequestTimeout(_) => true,
        _ => false,
    }
}

/// Whether a failed execution may succeed later (see [`attempt_transient`]).
pub fn exec_transient(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::LastAttemptError(a) => attempt_transient(a),
        ExecutionError::RequestTimeout(_)
        | ExecutionError::ConnectionPoolError(_)
        | ExecutionError::EmptyPlan
        | ExecutionError::SchemaAgreementError(_)
        | ExecutionError::MetadataError(_) => true,
        ExecutionError::PrepareError(p) => prepare_transient(p),
        _ => false,
    }
}

/// Whether a failed page fetch may succeed later (see [`attempt_transient`]).
pub fn next_page_transient(e: &NextPageError) -> bool {
    matches!(e, NextPageError::RequestFailure(r) if request_transient(r))
}

/// Whether a failed preparation may succeed later (see [`attempt_transient`]).
pub fn prepare_transient(e: &PrepareError) -> bool {
    match e {
        PrepareError::ConnectionPoolError(_) | PrepareError::PreparedStatementIdsMismatch => true,
        PrepareError::AllAttemptsFailed { first_attempt } => attempt_transient(first_attempt),
        _ => false,
    }
}

fn failed(action: &'static str, transient: bool, reason: impl ToString) -> StoreError {
    StoreError::Scylla {
        action,
        transient,
        reason: reason.to_string(),
    }
}

pub(super) fn exec_err(action: &'static str) -> impl FnOnce(ExecutionError) -> StoreError {
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

pub(super) fn shape_err(action: &'static str) -> impl FnOnce(String) -> StoreError {
    move |reason| StoreError::Corrupt(format!("{action}: {reason}"))
}

pub(super) async fn prepare(session: &Session, cql: &'static str) -> Result<PreparedStatement> {
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

// ----- rows -----

type LocationRow = (
    Option<Uuid>,
    Option<i64>,
    Option<i64>,
    Option<Uuid>,
    Option<Uuid>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

/// Where a message is, and the numbers it was given: enough to write all its rows again.
#[derive(Debug, Clone, Copy)]
struct Location {
    conversation_id: Uuid,
    bucket: i64,
    seq: i64,
    sender_id: Uuid,
    recipient_id: Uuid,
    /// Its send time, kept monotonic in seq within the conversation.
    sent_at_us: i64,
    /// Messages its sender had sent in the conversation, this one included.
    sender_count: i64,
    /// Messages its recipient had sent before it.
    peer_count: i64,
}

impl Location {
    fn from_row(row: LocationRow) -> Option<Self> {
        let (conversation_id, bucket, seq, sender_id, recipient_id, sent_at, sender_n, peer_n) =
            row;
        Some(Location {
            conversation_id: conversation_id?,
            bucket: bucket?,
            seq: seq?,
            sender_id: sender_id?,
            recipient_id: recipient_id?,
            sent_at_us: sent_at?,
            sender_count: sender_n.unwrap_or(0),
            peer_count: peer_n.unwrap_or(0),
        })
    }
}

type TailRow = (
    Option<Uuid>,
    Option<Uuid>,
    Option<Uuid>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

/// A conversation's tail: the numbers of its latest message.
#[derive(Debug, Clone, Copy)]
struct Tail {
    user_lo: Uuid,
    user_hi: Uuid,
    last_message_id: Option<Uuid>,
    last_seq: i64,
    last_sent_at_us: i64,
    sent_by_lo: i64,
    sent_by_hi: i64,
    /// The log offset of the message that set it; -1 when unknown (written before schema
    /// version 7).
    last_offset: i64,
}

impl Tail {
    fn from_row(row: TailRow) -> Option<Self> {
        let (user_lo, user_hi, last_message_id, last_seq, last_sent_at_us, by_lo, by_hi) =
            (row.0, row.1, row.2, row.3, row.4, row.5, row.6);
        Some(Tail {
            last_offset: row.7.unwrap_or(-1),
            user_lo: user_lo?,
            user_hi: user_hi?,
            last_message_id,
            last_seq: last_seq.unwrap_or(0),
            last_sent_at_us: last_sent_at_us.unwrap_or(i64::MIN),
            sent_by_lo: by_lo.unwrap_or(0),
            sent_by_hi: by_hi.unwrap_or(0),
        })
    }

    fn sent_by(&self, user: Uuid) -> i64 {
        if user == self.user_lo {
            self.sent_by_lo
        } else {
            self.sent_by_hi
        }
    }

    /// The tail once `loc` (a message of this conversation, at log `offset`) is its latest.
    fn at(&self, message_id: Uuid, loc: &Location, offset: i64) -> Tail {
        let count = |user: Uuid| {
            if user == loc.sender_id {
                loc.sender_count
            } else {
                loc.peer_count
            }
        };
        Tail {
            last_message_id: Some(message_id),
            last_seq: loc.seq,
            last_sent_at_us: loc.sent_at_us,
            sent_by_lo: count(self.user_lo),
            sent_by_hi: count(self.user_hi),
            last_offset: self.last_offset.max(offset),
            ..*self
        }
    }
}

type MessageRow = (
    i64,
    Option<Uuid>,
    Option<Uuid>,
    Option<Uuid>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<bool>,
    Option<i32>,
    Option<i64>,
    Option<bool>,
);

/// A history row before the recipient's read marker turns it into a [`Message`].
#[derive(Debug, Clone)]
struct StoredMessage {
    seq: i64,
    message_id: Uuid,
    sender_id: Uuid,
    recipient_id: Uuid,
    text: Option<String>,
    client_msg_id: Option<String>,
    sent_at_us: i64,
    deleted: bool,
    /// A device of the recipient acknowledged it.
    delivered: bool,
    position: Position,
}

impl StoredMessage {
    /// `None` for a row that holds no message (only a stray deletion or acknowledgement).
    fn from_row(row: MessageRow) -> Option<Self> {
        let (id, sender, recipient, text, client_msg_id) = (row.1, row.2, row.3, row.4, row.5);
        let (seq, sent_at, deleted, part, offset, delivered) =
            (row.0, row.6, row.7, row.8, row.9, row.10);
        Some(StoredMessage {
            seq,
            message_id: id?,
            sender_id: sender?,
            recipient_id: recipient?,
            text,
            client_msg_id,
            sent_at_us: sent_at?,
            deleted: deleted.unwrap_or(false),
            delivered: delivered.unwrap_or(false),
            position: Position::new(part? as u32, offset? as u64),
        })
    }

    fn into_message(self, conversation_id: Uuid, recipient_read_seq: i64) -> Result<Message> {
        Ok(Message {
            message_id: self.message_id,
            conversation_id,
            seq: self.seq as u64,
            sender_id: self.sender_id,
            recipient_id: self.recipient_id,
            text: if self.deleted { None } else { self.text },
            client_msg_id: self.client_msg_id,
            sent_at: from_micros(self.sent_at_us)?,
            deleted_for_everyone: self.deleted,
            status: if recipient_read_seq >= self.seq {
                MessageStatus::Read
            } else if self.delivered {
                MessageStatus::Delivered
            } else {
                MessageStatus::Pending
            },
            position: self.position,
        })
    }
}

type EntryRow = (
    Uuid,
    Option<Uuid>,
    Option<Uuid>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

/// One user's view of one conversation.
#[derive(Debug, Clone, Copy)]
struct Entry {
    conversation_id: Uuid,
    peer_id: Option<Uuid>,
    last_message_id: Option<Uuid>,
    last_seq: Option<i64>,
    last_bucket: Option<i64>,
    last_activity_us: Option<i64>,
    peer_sent: i64,
    read_seq: i64,
    read_peer_count: i64,
}

impl Entry {
    fn from_row(row: EntryRow) -> Self {
        let (conversation_id, peer_id, last_message_id, last_seq, last_bucket, last_activity_us) =
            (row.0, row.1, row.2, row.3, row.4, row.5);
        Entry {
            conversation_id,
            peer_id,
            last_message_id,
            last_seq,
            last_bucket,
            last_activity_us,
            peer_sent: row.6.unwrap_or(0),
            read_seq: row.7.unwrap_or(0),
            read_peer_count: row.8.unwrap_or(0),
        }
    }
}

type FirstKeptRow = (i64, Option<Uuid>, Option<i64>, Option<i64>);

/// The oldest message of a conversation left after a point, with its counts.
#[derive(Debug, Clone, Copy)]
struct FirstKept {
    seq: i64,
    sender_id: Uuid,
    /// Messages its sender had sent, this one included.
    sender_count: i64,
    /// Messages its recipient had sent before it.
    peer_count: i64,
}

impl FirstKept {
    fn from_row(row: FirstKeptRow) -> Option<Self> {
        let (seq, sender_id, sender_count, peer_count) = row;
        Some(FirstKept {
            seq,
            sender_id: sender_id?,
            sender_count: sender_count?,
            peer_count: peer_count.unwrap_or(0),
        })
    }
}

type FeedRow = (i64, Option<Uuid>, Option<i64>, Option<i64>, Option<i64>);

/// One entry of a user's catch-up feed.
#[derive(Debug, Clone, Copy)]
struct FeedEntry {
    partition: u32,
    offset: i64,
    conversation_id: Uuid,
    bucket: i64,
    seq: i64,
    sent_at_us: i64,
}

type PendingRow = (Uuid, i64, Option<Uuid>, Option<i64>, Option<i64>);

/// A pending row as a read marker finds it: (seq, message id).
type PendingSeq = (i64, Option<Uuid>);

/// One row of a user's pending messages: where the message is, and its place in their order.
#[derive(Debug, Clone, Copy)]
struct PendingEntry {
    conversation_id: Uuid,
    seq: i64,
    bucket: i64,
    sent_at_us: i64,
}

impl PendingEntry {
    /// `None` for a row that holds no message.
    fn from_row(row: PendingRow) -> Option<Self> {
        let (conversation_id, seq, message_id, bucket, sent_at_us) = row;
        message_id?;
        Some(PendingEntry {
            conversation_id,
            seq,
            bucket: bucket?,
            sent_at_us: sent_at_us?,
        })
    }

    /// Where it sorts among the user's pending messages (see [`pending_cursor`]).
    fn key(&self) -> (i64, Uuid, i64) {
        (self.sent_at_us, self.conversation_id, self.seq)
    }
}

// ----- the store -----

/// A boxed write, run later with the others of its batch.
pub(super) type PendingWrite<'a> = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

struct Inner {
    session: Arc<Session>,
    keyspace: String,
    st: Prepared,
    /// The statements of `communities.rs`.
    communities: super::communities::Statements,
}

/// The production [`ReadStore`] on ScyllaDB or Cassandra.
#[derive(Clone)]
pub struct ScyllaStore {
    inner: Arc<Inner>,
    /// How long messages are kept (see [`ScyllaStore::with_retention`]).
    retention: Retention,
}

impl std::fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaStore")
            .field("keyspace", &self.inner.keyspace)
            .field("retention", &self.retention)
            .finish()
    }
}

/// The longest TTL ScyllaDB and Cassandra accept: 20 years, in seconds.
pub(super) const MAX_TTL: i32 = 630_720_000;

/// The TTL (seconds) of the rows of a message sent at `sent_at_us` (as stored: monotonic in
/// its conversation or channel), written at `now`: 0 (no expiry) when messages are kept
/// forever, `None` when it has expired already (it is not stored).
pub(super) fn message_ttl(
    retention: &Retention,
    sent_at_us: i64,
    now: DateTime<Utc>,
) -> Option<i32> {
    if retention.period().is_none() {
        return Some(0);
    }
    let sent_at = DateTime::from_timestamp_micros(sent_at_us)?;
    let ttl = retention.ttl_seconds(sent_at, now)?.unwrap_or(0);
    Some(ttl.min(MAX_TTL))
}

/// Connects, uses `config`'s keyspace and checks that the schema versions `required` are
/// applied (`missive store migrate`): the opening every Scylla adapter shares.
pub async fn open_keyspace(config: &ScyllaConfig, required: &[i32]) -> Result<Arc<Session>> {
    let session = super::connect(config).await?;
    let ks = &config.keyspace;
    let not_ready = |why: String| {
        StoreError::Schema(format!(
            "keyspace {ks}: {why}; run `missive store migrate --store scylla://.../{ks}` first"
        ))
    };
    session
        .use_keyspace(ks.as_str(), false)
        .await
        .map_err(|e| not_ready(format!("cannot use it ({e})")))?;
    let applied_query = session
        .prepare(cql::MIGRATIONS_GET)
        .await
        .map_err(|e| not_ready(format!("no schema_migrations table ({e})")))?;
    let applied: HashSet<i32> = session
        .execute_unpaged(&applied_query, ())
        .await
        .map_err(exec_err("reading the applied schema versions"))?
        .into_rows_result()
        .map_err(|e| StoreError::Corrupt(format!("schema_migrations: {e}")))?
        .rows::<(i32,)>()
        .map_err(|e| StoreError::Corrupt(format!("schema_migrations: {e}")))?
        .map(|r| r.map(|(v,)| v))
        .collect::<Result<_, _>>()
        .map_err(|e| StoreError::Corrupt(format!("schema_migrations: {e}")))?;
    let missing: Vec<String> = MIGRATIONS
        .iter()
        .filter(|m| required.contains(&m.version) && !applied.contains(&m.version))
        .map(|m| format!("{} ({})", m.version, m.file))
        .collect();
    if !missing.is_empty() {
        return Err(not_ready(format!(
            "schema versions not applied: {}",
            missing.join(", ")
        )));
    }
    Ok(session)
}

impl ScyllaStore {
    /// Keeps messages only for `retention` (the default keeps them forever). Each row of a
    /// message, and each row derived from one, is written `USING TTL` of the time the message
    /// has left, so the cluster removes it when it expires; a message that has expired when
    /// projected is not stored, but still takes its numbers (see `projections/0007_retention.cql`).
    /// Unread counts leave out what expired (corrected when read from the oldest message left).
    ///
    /// Rows written while the store kept messages forever carry no TTL and stay: to expire
    /// them, rebuild the keyspace by replaying the log with the retention set.
    pub fn with_retention(self, retention: &Retention) -> Result<Self> {
        if let Some(period) = retention.period()
            && period.as_secs() > MAX_TTL as u64
        {
            return Err(StoreError::Unavailable(format!(
                "a retention of {} days is longer than the Scylla read store's longest TTL \
                 ({} days)",
                period.as_secs() / 86_400,
                MAX_TTL / 86_400
            )));
        }
        Ok(ScyllaStore {
            retention: retention.clone(),
            ..self
        })
    }

    /// The retention the store was opened with.
    pub fn retention(&self) -> &Retention {
        &self.retention
    }

    /// Connects, uses the configured keyspace, checks that every schema version is applied
    /// (`missive store migrate`), and prepares every statement.
    pub async fn open(config: &ScyllaConfig) -> Result<Self> {
        let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
        let session = open_keyspace(config, &all).await?;
        let ks = &config.keyspace;
        use ::scylla::statement::Consistency::*;
        if matches!(config.consistency, Any | One | Two | Three | LocalOne) {
            // Projectors read (a conversation's tail, where a message is) before they write:
            // a read that misses an acknowledged write can number two messages alike.
            tracing::warn!(
                consistency = ?config.consistency,
                "the read store's consistency is below a quorum: projectors may read stale \
                 state and misnumber messages; use LOCAL_QUORUM (the default) or QUORUM"
            );
        }
        let (st, communities) = futures::try_join!(
            Prepared::prepare(&session),
            super::communities::Statements::prepare(&session),
        )?;
        Ok(ScyllaStore {
            inner: Arc::new(Inner {
                session,
                keyspace: ks.clone(),
                st,
                communities,
            }),
            retention: Retention::forever(),
        })
    }

    fn st(&self) -> &Prepared {
        &self.inner.st
    }

    /// The statements of `communities.rs`.
    pub(super) fn cst(&self) -> &super::communities::Statements {
        &self.inner.communities
    }

    /// Sends one logged batch (a message's rows).
    pub(super) async fn logged_batch(&self, batch: Batch, rows: impl BatchValues) -> Result<()> {
        self.inner
            .session
            .batch(&batch, rows)
            .await
            .map_err(exec_err("storing a message"))?;
        Ok(())
    }

    pub(super) async fn write(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        action: &'static str,
    ) -> Result<()> {
        self.inner
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(exec_err(action))?;
        Ok(())
    }

    /// Every row of a single-page query (one with a LIMIT, or a point read).
    pub(super) async fn rows<T>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        action: &'static str,
    ) -> Result<Vec<T>>
    where
        T: for<'f, 'm> ::scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let result = self
            .inner
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

    pub(super) async fn first<T>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        action: &'static str,
    ) -> Result<Option<T>>
    where
        T: for<'f, 'm> ::scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        Ok(self
            .rows(statement, values, action)
            .await?
            .into_iter()
            .next())
    }

    /// Every row of a whole partition, fetched page by page.
    pub(super) async fn all<T>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        action: &'static str,
    ) -> Result<Vec<T>>
    where
        T: for<'f, 'm> ::scylla::deserialize::row::DeserializeRow<'f, 'm> + Send + 'static,
    {
        self.inner
            .session
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

    async fn location(&self, message_id: Uuid) -> Result<Option<Location>> {
        Ok(self
            .first::<LocationRow>(&self.st().LOCATION_GET, (message_id,), "locating a message")
            .await?
            .and_then(Location::from_row))
    }

    async fn tail(&self, conversation: Uuid) -> Result<Option<Tail>> {
        Ok(self
            .first::<TailRow>(
                &self.st().TAIL_GET,
                (conversation,),
                "reading a conversation",
            )
            .await?
            .and_then(Tail::from_row))
    }

    async fn entry(&self, user: Uuid, conversation: Uuid) -> Result<Option<Entry>> {
        Ok(self
            .first::<EntryRow>(
                &self.st().ENTRY_GET,
                (user, conversation),
                "reading a conversation entry",
            )
            .await?
            .map(Entry::from_row))
    }

    async fn read_seq(&self, user: Uuid, conversation: Uuid) -> Result<i64> {
        Ok(self
            .entry(user, conversation)
            .await?
            .map_or(0, |e| e.read_seq))
    }

    /// The seqs in `[from, to]` of a conversation that `user` hid.
    async fn hidden_between(
        &self,
        user: Uuid,
        conversation: Uuid,
        from: i64,
        to: i64,
    ) -> Result<HashSet<i64>> {
        Ok(self
            .rows::<(i64,)>(
                &self.st().HIDDEN_BETWEEN,
                (user, conversation, from, to),
                "reading hidden messages",
            )
            .await?
            .into_iter()
            .map(|(seq,)| seq)
            .collect())
    }

    /// The seqs and ids of `user`'s pending messages of a conversation up to `seq`.
    async fn pending_up_to(
        &self,
        user: Uuid,
        conversation: Uuid,
        seq: i64,
    ) -> Result<Vec<PendingSeq>> {
        self.all(
            &self.st().PENDING_UP_TO,
            (user, conversation, seq),
            "reading pending messages",
        )
        .await
    }

    async fn stored_message(
        &self,
        conversation: Uuid,
        bucket: i64,
        seq: i64,
    ) -> Result<Option<StoredMessage>> {
        Ok(self
            .first::<MessageRow>(
                &self.st().MESSAGE_GET,
                (conversation, bucket, seq),
                "reading a message",
            )
            .await?
            .and_then(StoredMessage::from_row))
    }

    /// A message as `viewer` sees it (`None` if hidden from them); `viewer` `None` reads it
    /// as stored.
    async fn message_at(&self, viewer: Option<Uuid>, loc: Location) -> Result<Option<Message>> {
        let conv = loc.conversation_id;
        // The three reads are independent: run them together.
        let (hidden, stored, read_seq) = futures::try_join!(
            async {
                match viewer {
                    Some(v) => Ok(!self
                        .hidden_between(v, conv, loc.seq, loc.seq)
                        .await?
                        .is_empty()),
                    None => Ok(false),
                }
            },
            self.stored_message(conv, loc.bucket, loc.seq),
            self.read_seq(loc.recipient_id, conv),
        )?;
        match stored {
            Some(stored) if !hidden => stored.into_message(conv, read_seq).map(Some),
            _ => Ok(None),
        }
    }
}

// ----- applying changes -----

/// One batch of changes being applied: what was read, and the writes worked out so far.
pub(super) struct Applying<'a> {
    pub(super) store: &'a ScyllaStore,
    /// The time by the retention's clock when the apply started: TTLs count from it.
    now: DateTime<Utc>,
    locations: HashMap<Uuid, Location>,
    tails: HashMap<Uuid, Tail>,
    /// Messages whose batch this apply already wrote.
    issued: HashSet<Uuid>,
    /// Messages whose batch is in this apply's chains, by conversation.
    pub(super) numbered: HashMap<Uuid, Uuid>,
    /// Per log partition, one past the last message offset of this apply.
    horizons: HashMap<i32, i64>,
    /// Per (reader, conversation) of a read marker in this apply, the pending rows stored
    /// before it, up to the furthest marker: (seq, message id).
    pending_before: HashMap<(Uuid, Uuid), Vec<PendingSeq>>,
    /// The pending rows (recipient, conversation, seq) this apply already deletes.
    unpended: HashSet<(Uuid, Uuid, i64)>,
    /// The furthest read marker this apply moved, per (reader, conversation): a message
    /// (re)written after it in the batch is not pending for the reader if the marker passed it.
    markers: HashMap<(Uuid, Uuid), i64>,
    /// Message batches per conversation, in log order.
    pub(super) chains: HashMap<Uuid, Vec<PendingWrite<'a>>>,
    writes: Vec<PendingWrite<'a>>,
    /// What the community changes of this apply read and decided (`communities.rs`).
    pub(super) community: super::communities::CommunityBatch,
}

impl<'a> Applying<'a> {
    /// The TTL of the rows of a message sent at `sent_at_us`: 0 (none) when messages are kept
    /// forever, `None` when it has expired (nothing about it is stored any more).
    pub(super) fn ttl(&self, sent_at_us: i64) -> Option<i32> {
        message_ttl(&self.store.retention, sent_at_us, self.now)
    }

    /// Whether messages expire: then an unknown message at or before its conversation's (or
    /// channel's) last offset is a redelivery of an expired one.
    pub(super) fn finite_retention(&self) -> bool {
        self.store.retention.period().is_some()
    }

    pub(super) fn push(
        &mut self,
        statement: &'a PreparedStatement,
        values: impl SerializeRow + Send + 'a,
        action: &'static str,
    ) {
        let store = self.store;
        self.writes
            .push(Box::pin(store.write(statement, values, action)));
    }

    /// Like [`Self::push`] for a write about `message`: when this apply numbered it, the write
    /// waits for (and is skipped after a failure of) the message's own batch, so a number that
    /// is never stored is never marked read, hidden or deleted.
    pub(super) fn push_about(
        &mut self,
        message: Uuid,
        statement: &'a PreparedStatement,
        values: impl SerializeRow + Send + 'a,
        action: &'static str,
    ) {
        let store = self.store;
        let write: PendingWrite<'a> = Box::pin(store.write(statement, values, action));
        match self.numbered.get(&message) {
            Some(conversation) => self.chains.entry(*conversation).or_default().push(write),
            None => self.writes.push(write),
        }
    }

    /// Removes a message from its recipient's pending messages (once per apply), after its own
    /// batch when this apply numbered it (see [`Self::push_about`]). The deletion carries
    /// [`DELETED_TS`], so a redelivered message batch (`offset + 2`) cannot bring the row back.
    fn unpend(&mut self, recipient: Uuid, conversation: Uuid, seq: i64, message: Option<Uuid>) {
        if !self.unpended.insert((recipient, conversation, seq)) {
            return;
        }
        let store: &'a ScyllaStore = self.store;
        let statement = &store.inner.st.PENDING_DELETE;
        let values = (DELETED_TS, recipient, conversation, seq);
        let action = "removing a pending message";
        match message {
            Some(id) => self.push_about(id, statement, values, action),
            None => self.push(statement, values, action),
        }
    }

    /// Reads, all at once, where every message the batch names is and every tail of a
    /// conversation it adds to; then the pending rows its read markers pass.
    async fn prefetch(&mut self, changes: &[Change]) -> Result<()> {
        let mut ids = HashSet::new();
        let mut adding = HashSet::new();
        let mut conversations = HashSet::new();
        for change in changes {
            match change {
                Change::AddMessage {
                    message_id,
                    conversation_id,
                    ..
                } => {
                    ids.insert(*message_id);
                    adding.insert(*message_id);
                    conversations.insert(*conversation_id);
                }
                Change::MarkRead { up_to, .. } => {
                    ids.insert(*up_to);
                }
                Change::HideMessage { message_id, .. }
                | Change::TombstoneMessage { message_id }
                | Change::MarkDelivered { message_id, .. } => {
                    ids.insert(*message_id);
                }
                _ => {}
            }
        }
        let store = self.store;
        // Tails first, then locations: a tail naming message Mk means every earlier message's
        // batch was acknowledged before Mk's was sent, so the location reads that follow see
        // them, even while another projector is still writing (a rebalance).
        self.tails
            .extend(read_each(conversations, |c| store.tail(c)).await?);
        self.locations
            .extend(read_each(ids, |id| store.location(id)).await?);
        // Then the pending rows each read marker passes, up to the furthest marker of a reader
        // in a conversation. Rows of messages this apply numbers are not there yet (their
        // batches are not sent): the markers find those among the numbered messages.
        let mut furthest: HashMap<(Uuid, Uuid), i64> = HashMap::new();
        for change in changes {
            let Change::MarkRead {
                conversation_id,
                reader_id,
                up_to,
            } = change
            else {
                continue;
            };
            let up_to_seq = match self.locations.get(up_to) {
                Some(loc) if loc.conversation_id == *conversation_id => loc.seq,
                Some(_) => continue,
                // Added by this batch: after every stored message of its conversation.
                None if adding.contains(up_to) => i64::MAX,
                None => continue,
            };
            let seq = furthest
                .entry((*reader_id, *conversation_id))
                .or_insert(up_to_seq);
            *seq = (*seq).max(up_to_seq);
        }
        let slices: HashSet<(Uuid, Uuid, i64)> = furthest
            .into_iter()
            .map(|((reader, conv), seq)| (reader, conv, seq))
            .collect();
        let found = read_each(slices, |(reader, conv, seq)| async move {
            Ok(Some(store.pending_up_to(reader, conv, seq).await?))
        })
        .await?;
        self.pending_before.extend(
            found
                .into_iter()
                .map(|((reader, conv, _), rows)| ((reader, conv), rows)),
        );
        self.prefetch_communities(changes).await
    }

    async fn apply(&mut self, change: &Change) -> Result<()> {
        let st = &self.store.inner.st;
        match change {
            Change::Community(change) => self.apply_community(change).await?,
            Change::AddUser {
                user_id,
                username,
                display_name,
                registered_at,
            } => {
                let key = username.to_lowercase();
                let registered_us = micros(*registered_at);
                // Every registration is listed; the earliest keeps the name, whatever order
                // the registrations are projected in (they can sit in different partitions).
                self.store
                    .write(
                        &st.USERNAME_CLAIM,
                        (&key, registered_us, *user_id, REGISTRATION_TS),
                        "claiming a username",
                    )
                    .await?;
                let owner = self
                    .store
                    .first::<(Option<Uuid>,)>(&st.USERNAME_GET, (&key,), "checking a username")
                    .await?
                    .and_then(|(id,)| id);
                // The user exists either way: lookups by name find the earliest claim still
                // standing, so a name freed by a deletion goes to the next claimant whatever the
                // order the registrations and the deletion are projected in.
                if owner != Some(*user_id) {
                    tracing::warn!(%user_id, %username, "username already belongs to another user; the user is listed, the name resolves to its owner");
                }
                self.push(
                    &st.USER_ADD,
                    (
                        *user_id,
                        username.clone(),
                        display_name.clone(),
                        registered_us,
                        REGISTRATION_TS,
                    ),
                    "adding a user",
                );
            }
            Change::SetDisplayName {
                user_id,
                display_name,
                version,
            } => self.push(
                &st.USER_NAME_SET,
                (at_offset(*version), display_name.clone(), *user_id),
                "updating a display name",
            ),
            Change::SetAccountStatus {
                user_id,
                status,
                version,
            } => self.set_account(*user_id, *status, *version).await?,
            Change::SetPresence {
                user_id,
                online,
                at,
                version,
            } => {
                self.push(
                    &st.USER_ONLINE_SET,
                    (at_offset(*version), *online, *user_id),
                    "updating presence",
                );
                // Its own time as timestamp: last seen only moves forward.
                let at = micros(*at);
                self.push(
                    &st.USER_LAST_SEEN_SET,
                    (at, at, *user_id),
                    "updating last seen",
                );
            }
            Change::SetFriendship {
                a,
                b,
                state,
                at,
                version,
            } => {
                let (lo, hi) = ordered(*a, *b);
                let (code, requester): (i32, Option<Uuid>) = match state {
                    FriendshipState::None => (0, None),
                    FriendshipState::Pending { requester } => (1, Some(*requester)),
                    FriendshipState::Friends => (2, None),
                };
                let (since, ts) = (micros(*at), at_offset(*version));
                self.push(
                    &st.FRIENDSHIP_SET,
                    (lo, hi, code, requester, since, ts),
                    "updating a friendship",
                );
                for (user, other) in [(lo, hi), (hi, lo)] {
                    self.push(
                        &st.FRIEND_SET,
                        (user, other, code, requester, since, ts),
                        "updating a friend list",
                    );
                }
            }
            Change::AddMessage { .. } => self.add_message(change)?,
            Change::MarkRead {
                conversation_id,
                reader_id,
                up_to,
            } => {
                let Some(loc) = self
                    .locations
                    .get(up_to)
                    .filter(|l| l.conversation_id == *conversation_id)
                    .copied()
                else {
                    tracing::warn!(%conversation_id, %up_to, "read marker names an unknown message; ignored");
                    return Ok(());
                };
                // How many of the peer's messages are at or before the marker.
                let read_peer_count = if loc.sender_id == *reader_id {
                    loc.peer_count
                } else {
                    loc.sender_count
                };
                // The marked seq as timestamp: a marker only moves forward.
                self.push_about(
                    *up_to,
                    &st.ENTRY_READ_SET,
                    (
                        loc.seq,
                        loc.seq,
                        read_peer_count,
                        *reader_id,
                        *conversation_id,
                    ),
                    "moving a read marker",
                );
                // What the marker passes stops being pending for the reader: the rows stored
                // before this apply, and those of messages this apply numbers.
                let (reader, conv) = (*reader_id, *conversation_id);
                let marker = self.markers.entry((reader, conv)).or_insert(loc.seq);
                *marker = (*marker).max(loc.seq);
                let mut passed: Vec<PendingSeq> = self
                    .pending_before
                    .get(&(reader, conv))
                    .into_iter()
                    .flatten()
                    .filter(|(seq, _)| *seq <= loc.seq)
                    .copied()
                    .collect();
                passed.extend(self.numbered.iter().filter_map(|(id, c)| {
                    let l = self.locations.get(id).filter(|_| *c == conv)?;
                    (l.recipient_id == reader && l.seq <= loc.seq).then_some((l.seq, Some(*id)))
                }));
                for (seq, message) in passed {
                    self.unpend(reader, conv, seq, message);
                }
            }
            Change::HideMessage {
                user_id,
                message_id,
            } => {
                let Some(loc) = self.locations.get(message_id).copied() else {
                    tracing::warn!(%message_id, "hiding an unknown message; ignored");
                    return Ok(());
                };
                if *user_id != loc.sender_id && *user_id != loc.recipient_id {
                    return Ok(());
                }
                // Expired since it was read: nothing left to hide (no row may outlive it).
                let Some(ttl) = self.ttl(loc.sent_at_us) else {
                    return Ok(());
                };
                self.push_about(
                    *message_id,
                    &st.HIDDEN_ADD,
                    (
                        *user_id,
                        loc.conversation_id,
                        loc.seq,
                        *message_id,
                        MEMBERSHIP_TS,
                        ttl,
                    ),
                    "hiding a message",
                );
                if *user_id != loc.sender_id {
                    self.push_about(
                        *message_id,
                        &st.UNCOUNTED_ADD,
                        (*user_id, loc.conversation_id, loc.seq, MEMBERSHIP_TS, ttl),
                        "uncounting a message",
                    );
                }
                if *user_id == loc.recipient_id {
                    self.unpend(*user_id, loc.conversation_id, loc.seq, Some(*message_id));
                }
            }
            Change::TombstoneMessage { message_id } => {
                let Some(loc) = self.locations.get(message_id).copied() else {
                    tracing::warn!(%message_id, "deleting an unknown message; ignored");
                    return Ok(());
                };
                let Some(ttl) = self.ttl(loc.sent_at_us) else {
                    return Ok(());
                };
                self.push_about(
                    *message_id,
                    &st.MESSAGE_DELETE,
                    (
                        DELETED_TS,
                        ttl,
                        true,
                        None::<String>,
                        loc.conversation_id,
                        loc.bucket,
                        loc.seq,
                    ),
                    "deleting a message",
                );
                self.push_about(
                    *message_id,
                    &st.UNCOUNTED_ADD,
                    (
                        loc.recipient_id,
                        loc.conversation_id,
                        loc.seq,
                        MEMBERSHIP_TS,
                        ttl,
                    ),
                    "uncounting a message",
                );
                self.unpend(
                    loc.recipient_id,
                    loc.conversation_id,
                    loc.seq,
                    Some(*message_id),
                );
            }
            Change::MarkDelivered {
                message_id,
                recipient_id,
            } => {
                let Some(loc) = self.locations.get(message_id).copied() else {
                    tracing::warn!(%message_id, "acknowledging an unknown message; ignored");
                    return Ok(());
                };
                if *recipient_id != loc.recipient_id {
                    tracing::warn!(%message_id, %recipient_id, "a message acknowledged for someone who is not its recipient; ignored");
                    return Ok(());
                }
                let Some(ttl) = self.ttl(loc.sent_at_us) else {
                    return Ok(());
                };
                // One-way, like a deletion: the status of a read message stays read (its
                // marker decides first), and no message write names the column.
                self.push_about(
                    *message_id,
                    &st.MESSAGE_DELIVERED_SET,
                    (DELETED_TS, ttl, loc.conversation_id, loc.bucket, loc.seq),
                    "marking a message delivered",
                );
                self.unpend(
                    loc.recipient_id,
                    loc.conversation_id,
                    loc.seq,
                    Some(*message_id),
                );
            }
        }
        Ok(())
    }

    /// Numbers a message and writes all its rows in one logged batch, after the batches of the
    /// conversation's earlier messages in this apply.
    ///
    /// Numbering: a message already numbered keeps its numbers, taken from `messages_by_id` or,
    /// when only the tail row of its batch is visible yet, from the tail (which records the
    /// message that set it); a new one gets the tail's next. Because a conversation's batches
    /// are sent one at a time in log order and stop at the first failure, only its latest
    /// message can be half-visible after a failure: that one is written again in full, and the
    /// tail moves on from whichever of its rows was seen.
    fn add_message(&mut self, change: &Change) -> Result<()> {
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
            return Ok(());
        };
        if !self.issued.insert(*message_id) {
            return Ok(()); // a duplicate within this batch
        }
        let (conv, id, sender, recipient) =
            (*conversation_id, *message_id, *sender_id, *recipient_id);
        let tail = *self.tails.entry(conv).or_insert_with(|| {
            let (user_lo, user_hi) = ordered(sender, recipient);
            Tail {
                user_lo,
                user_hi,
                last_message_id: None,
                last_seq: 0,
                last_sent_at_us: i64::MIN,
                sent_by_lo: 0,
                sent_by_hi: 0,
                last_offset: -1,
            }
        });
        let loc = match self.locations.get(&id) {
            Some(loc)
                if (loc.conversation_id, loc.sender_id, loc.recipient_id)
                    != (conv, sender, recipient) =>
            {
                tracing::error!(message_id = %id, conversation_id = %conv, "message id already names another message; not projected");
                return Ok(());
            }
            // Numbered before; a batch of its conversation after it succeeded, so it is whole.
            Some(loc) if loc.seq < tail.last_seq => return Ok(()),
            Some(loc) => *loc,
            // With a retention, an unknown message that is not past the tail is a redelivery
            // of one that expired (never stored, or gone since): numbered already.
            None if self.finite_retention()
                && tail.last_message_id != Some(id)
                && (position.offset as i64) <= tail.last_offset =>
            {
                return Ok(());
            }
            None if tail.last_message_id == Some(id) => Location {
                conversation_id: conv,
                bucket: history_bucket(tail.last_sent_at_us),
                seq: tail.last_seq,
                sender_id: sender,
                recipient_id: recipient,
                sent_at_us: tail.last_sent_at_us,
                sender_count: tail.sent_by(sender),
                peer_count: tail.sent_by(recipient),
            },
            None => {
                // Times are kept monotonic in seq (see the SQLite store): `since` bounds seq
                // exactly, and the history bucket never decreases along a conversation.
                let sent_at_us = micros(*sent_at).max(tail.last_sent_at_us);
                Location {
                    conversation_id: conv,
                    bucket: history_bucket(sent_at_us),
                    seq: tail.last_seq + 1,
                    sender_id: sender,
                    recipient_id: recipient,
                    sent_at_us,
                    sender_count: tail.sent_by(sender) + 1,
                    peer_count: tail.sent_by(recipient),
                }
            }
        };
        let ts = at_offset(position.offset);
        let partition = partition_of(position.partition)?;
        let offset = position.offset as i64;
        let at = tail.at(id, &loc, offset);
        self.tails.insert(conv, at);
        let horizon = self.horizons.entry(partition).or_insert(offset + 1);
        *horizon = (*horizon).max(offset + 1);
        let feed_bucket = feed_bucket(offset);
        let (bucket, seq, sent_at_us) = (loc.bucket, loc.seq, loc.sent_at_us);
        let (sender_count, peer_count) = (loc.sender_count, loc.peer_count);
        let st = &self.store.inner.st;
        // The tail as this message left it; a later message's (newer timestamp) wins.
        let tail_row = (
            conv,
            at.user_lo,
            at.user_hi,
            id,
            seq,
            sent_at_us,
            at.sent_by_lo,
            at.sent_by_hi,
            at.last_offset,
            ts,
        );
        // Each side's entry: the peer, the latest message, and how many the peer has sent.
        let entry = |user: Uuid, peer: Uuid, peer_sent: i64| {
            (ts, peer, id, seq, bucket, sent_at_us, peer_sent, user, conv)
        };
        let store = self.store;
        let Some(ttl) = self.ttl(sent_at_us) else {
            // Expired: not stored, and unknown to the rest of this apply (a read marker, hide
            // or receipt of it is ignored, as in a store that never saw it). It still takes its
            // numbers, and both entries move on (activity, and a preview that is gone).
            let mut batch = Batch::new(BatchType::Logged);
            batch.set_is_idempotent(true);
            for statement in [&st.TAIL_SET, &st.ENTRY_MESSAGE_SET, &st.ENTRY_MESSAGE_SET] {
                batch.append_statement(statement.clone());
            }
            let rows = (
                tail_row,
                entry(sender, recipient, peer_count),
                entry(recipient, sender, sender_count),
            );
            self.chains
                .entry(conv)
                .or_default()
                .push(Box::pin(store.logged_batch(batch, rows)));
            return Ok(());
        };
        self.locations.insert(id, loc);
        let mut batch = Batch::new(BatchType::Logged);
        batch.set_is_idempotent(true);
        for statement in [
            &st.MESSAGE_ADD,
            &st.LOCATION_ADD,
            &st.TAIL_SET,
            &st.BUCKET_ADD,
            &st.ENTRY_MESSAGE_SET,
            &st.ENTRY_MESSAGE_SET,
            &st.FEED_ADD,
            &st.FEED_ADD,
            &st.FEED_BUCKET_ADD,
            &st.FEED_BUCKET_ADD,
            &st.PENDING_ADD,
        ] {
            batch.append_statement(statement.clone());
        }
        let message_row = (
            conv,
            bucket,
            seq,
            id,
            sender,
            recipient,
            text.clone(),
            match client_msg_id {
                Some(c) => MaybeUnset::Set(c.clone()),
                None => MaybeUnset::Unset,
            },
            sent_at_us,
            false,
            sender_count,
            peer_count,
            partition,
            offset,
            ts,
            ttl,
        );
        let location_row = (
            id,
            conv,
            bucket,
            seq,
            sender,
            recipient,
            sent_at_us,
            sender_count,
            peer_count,
            ts,
            ttl,
        );
        let bucket_row = (conv, bucket, ts, ttl);
        let feed = |user: Uuid| {
            (
                user,
                partition,
                feed_bucket,
                offset,
                id,
                conv,
                bucket,
                seq,
                sent_at_us,
                ts,
                ttl,
            )
        };
        let feed_bucket_row =
            |user: Uuid| (user, partition, feed_bucket, sent_at_us, sent_at_us, ttl);
        // Pending for the recipient until acknowledged, read, hidden or deleted: each of those
        // deletes the row at DELETED_TS, which this insert (offset + 2) can never outweigh.
        let pending_row = (recipient, conv, seq, id, bucket, sent_at_us, ts, ttl);
        let rows = (
            message_row,
            location_row,
            tail_row,
            bucket_row,
            entry(sender, recipient, peer_count),
            entry(recipient, sender, sender_count),
            feed(sender),
            feed(recipient),
            feed_bucket_row(sender),
            feed_bucket_row(recipient),
            pending_row,
        );
        let write: PendingWrite<'a> = match client_msg_id {
            // The idempotency key goes in the same batch: a message is never stored without it.
            Some(key) => {
                batch.append_statement(st.CLIENT_ID_ADD.clone());
                let rows = (
                    rows.0,
                    rows.1,
                    rows.2,
                    rows.3,
                    rows.4,
                    rows.5,
                    rows.6,
                    rows.7,
                    rows.8,
                    rows.9,
                    rows.10,
                    (sender, key.clone(), sent_at_us, id, ts, ttl),
                );
                Box::pin(store.logged_batch(batch, rows))
            }
            None => Box::pin(store.logged_batch(batch, rows)),
        };
        self.chains.entry(conv).or_default().push(write);
        self.numbered.insert(id, conv);
        // A redelivery after a read marker of this batch that passes it (its pending row was
        // not visible to the marker's read).
        if self
            .markers
            .get(&(recipient, conv))
            .is_some_and(|marker| *marker >= seq)
        {
            self.unpend(recipient, conv, seq, Some(id));
        }
        Ok(())
    }

    /// Sets an account's standing (see `projections/0006_accounts.cql`). Deletion first frees
    /// the account's username, read from its row once every write before it in this apply is
    /// done, and only then scrubs the row: a redelivery after a crash between the two finds the
    /// old name still there and frees it again.
    async fn set_account(
        &mut self,
        user_id: Uuid,
        status: AccountStatus,
        version: u64,
    ) -> Result<()> {
        let st = &self.store.inner.st;
        let code = account_code(status);
        let ts = if status == AccountStatus::Deleted {
            self.flush().await?;
            let row = self
                .store
                .first::<UserRow>(&st.USER_GET, (user_id,), "reading a deleted account")
                .await?;
            let placeholder = deleted_username(user_id);
            if let Some((Some(username), _, Some(registered_us), ..)) = row
                && username != placeholder
            {
                self.store
                    .write(
                        &st.USERNAME_RELEASE,
                        (DELETED_TS, username.to_lowercase(), registered_us, user_id),
                        "freeing a deleted account's username",
                    )
                    .await?;
            }
            self.push(
                &st.USER_SCRUB,
                (DELETED_TS, placeholder, user_id),
                "scrubbing a deleted account",
            );
            DELETED_TS
        } else {
            at_offset(version)
        };
        self.push(
            &st.USER_ACCOUNT_SET,
            (ts, code, user_id),
            "setting an account's standing",
        );
        if status == AccountStatus::Active {
            self.push(
                &st.RESTRICTED_CLEAR,
                (ts, RESTRICTED_BUCKET, user_id),
                "unlisting a restricted account",
            );
        } else {
            self.push(
                &st.RESTRICTED_SET,
                (RESTRICTED_BUCKET, user_id, code, ts),
                "listing a restricted account",
            );
        }
        Ok(())
    }

    /// Runs every pending write: each conversation's message batches one at a time in log
    /// order, stopping at its first failure; everything else at most [`WRITES_IN_FLIGHT`] at
    /// once. Waits for all of them, even after a failure, so that nothing is still in flight
    /// when the caller retries; returns the first error.
    async fn flush(&mut self) -> Result<()> {
        let chains = std::mem::take(&mut self.chains);
        let writes = std::mem::take(&mut self.writes);
        let mut all: Vec<PendingWrite<'a>> = Vec::with_capacity(chains.len() + writes.len());
        for chain in chains.into_values() {
            all.push(Box::pin(in_order(chain)));
        }
        all.extend(writes);
        let outcomes: Vec<Result<()>> = futures::stream::iter(all)
            .buffer_unordered(WRITES_IN_FLIGHT)
            .collect()
            .await;
        outcomes.into_iter().collect()
    }
}

/// Runs `read` for every key, [`READS_IN_FLIGHT`] at once, and keeps what was found.
pub(super) async fn read_each<K, V, F, Fut>(keys: HashSet<K>, read: F) -> Result<HashMap<K, V>>
where
    K: Eq + std::hash::Hash + Copy,
    F: Fn(K) -> Fut,
    Fut: Future<Output = Result<Option<V>>>,
{
    futures::stream::iter(keys)
        .map(|key| {
            let found = read(key);
            async move { Ok::<_, StoreError>(found.await?.map(|value| (key, value))) }
        })
        .buffer_unordered(READS_IN_FLIGHT)
        .try_filter_map(|found| async move { Ok(found) })
        .try_collect()
        .await
}

/// Runs writes one after another, stopping at the first failure.
async fn in_order(writes: Vec<PendingWrite<'_>>) -> Result<()> {
    for write in writes {
        write.await?;
    }
    Ok(())
}

// ----- cursors -----

/// A feed cursor: the last offset read in each log partition, as `f<p>.<offset>_<p>.<offset>`
/// (`f` alone before anything was read).
fn parse_feed_cursor(cursor: &str) -> Option<BTreeMap<u32, i64>> {
    let rest = cursor.strip_prefix('f')?;
    let mut out = BTreeMap::new();
    if rest.is_empty() {
        return Some(out);
    }
    for part in rest.split('_') {
        let (p, o) = part.split_once('.')?;
        let offset: i64 = o.parse().ok().filter(|o| *o >= 0)?;
        if out.insert(p.parse::<u32>().ok()?, offset).is_some() {
            return None;
        }
    }
    Some(out)
}

fn feed_cursor(positions: &BTreeMap<u32, i64>) -> String {
    let parts: Vec<String> = positions.iter().map(|(p, o)| format!("{p}.{o}")).collect();
    format!("f{}", parts.join("_"))
}

/// What a feed read found in one log partition.
#[derive(Debug, Default)]
struct PartitionScan {
    /// Visible entries at or after `since`, in offset order.
    entries: VecDeque<FeedEntry>,
    /// One past the last offset whose messages are all stored: the scan stops there.
    horizon: i64,
}

/// A user from their row; `None` for a row without a registration (a profile or presence change
/// of a user never registered here).
fn user_from_row(id: Uuid, row: UserRow) -> Result<Option<User>> {
    let (username, display_name, registered_at, online, last_seen, account) = row;
    let (Some(username), Some(registered_at)) = (username, registered_at) else {
        return Ok(None);
    };
    Ok(Some(User {
        id,
        username,
        display_name: display_name.unwrap_or_default(),
        registered_at: from_micros(registered_at)?,
        online: online.unwrap_or(false),
        last_seen: last_seen.map(from_micros).transpose()?,
        account: account_from_code(account)?,
    }))
}

impl ScyllaStore {
    /// Reads one log partition of `user`'s feed after `after` (or, without a cursor, from the
    /// first bucket that can hold messages at or after `since`) up to the partition's horizon,
    /// until `want` visible entries at or after `since` are found or the horizon is reached.
    #[allow(clippy::too_many_arguments)]
    async fn scan_feed_partition(
        &self,
        user: Uuid,
        partition: u32,
        buckets: &[(i64, Option<i64>)],
        after: Option<i64>,
        horizon: i64,
        since_us: i64,
        want: usize,
    ) -> Result<PartitionScan> {
        let part = partition_of(partition)?;
        let mut scan = PartitionScan {
            entries: VecDeque::new(),
            horizon,
        };
        let candidates = buckets.iter().filter(|(bucket, max_sent)| {
            *bucket <= feed_bucket(horizon)
                && match after {
                    Some(c) => *bucket >= feed_bucket(c),
                    // Every message of a bucket whose latest is before `since` is left out
                    // anyway.
                    None => max_sent.is_none_or(|m| m >= since_us),
                }
        });
        let mut cursor = after.unwrap_or(-1);
        for (bucket, _) in candidates {
            loop {
                let rows: Vec<FeedRow> = self
                    .rows(
                        &self.st().FEED_BETWEEN,
                        (user, part, *bucket, cursor, horizon, CHUNK as i32),
                        "reading a feed",
                    )
                    .await?;
                let entries: Vec<FeedEntry> = rows
                    .iter()
                    .filter_map(|&(offset, conv, b, seq, sent)| {
                        Some(FeedEntry {
                            partition,
                            offset,
                            conversation_id: conv?,
                            bucket: b?,
                            seq: seq?,
                            sent_at_us: sent?,
                        })
                    })
                    .collect();
                let hidden = self
                    .hidden_among(user, entries.iter().map(|e| (e.conversation_id, e.seq)))
                    .await?;
                for e in &entries {
                    if e.sent_at_us >= since_us && !hidden.contains(&(e.conversation_id, e.seq)) {
                        scan.entries.push_back(*e);
                    }
                }
                if let Some((offset, ..)) = rows.last() {
                    cursor = cursor.max(*offset);
                }
                if scan.entries.len() >= want || rows.len() < CHUNK {
                    break;
                }
            }
            if scan.entries.len() >= want {
                break;
            }
        }
        Ok(scan)
    }

    /// The user's feed buckets, by log partition, oldest first, with their latest send time.
    async fn feed_buckets(&self, user: Uuid) -> Result<BTreeMap<u32, Vec<(i64, Option<i64>)>>> {
        let rows: Vec<(i32, i64, Option<i64>)> = self
            .all(
                &self.st().FEED_BUCKETS_GET,
                (user,),
                "reading a feed's buckets",
            )
            .await?;
        let mut buckets: BTreeMap<u32, Vec<(i64, Option<i64>)>> = BTreeMap::new();
        for (p, bucket, max_sent) in rows {
            buckets
                .entry(p as u32)
                .or_default()
                .push((bucket, max_sent));
        }
        Ok(buckets)
    }

    /// Which of `messages` (conversation, seq) `user` hid: one read per conversation.
    async fn hidden_among(
        &self,
        user: Uuid,
        messages: impl IntoIterator<Item = (Uuid, i64)>,
    ) -> Result<HashSet<(Uuid, i64)>> {
        let mut ranges: HashMap<Uuid, (i64, i64)> = HashMap::new();
        for (conv, seq) in messages {
            let r = ranges.entry(conv).or_insert((seq, seq));
            r.0 = r.0.min(seq);
            r.1 = r.1.max(seq);
        }
        let found: Vec<Vec<(Uuid, i64)>> = futures::stream::iter(ranges)
            .map(|(conv, (from, to))| async move {
                let seqs = self.hidden_between(user, conv, from, to).await?;
                Ok::<_, StoreError>(seqs.into_iter().map(|s| (conv, s)).collect())
            })
            .buffer_unordered(READS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    /// Builds one entry of `user`'s conversation list (`None` if the peer is unknown).
    async fn conversation(&self, user: Uuid, entry: Entry) -> Result<Option<Conversation>> {
        let (Some(peer_id), Some(activity)) = (entry.peer_id, entry.last_activity_us) else {
            return Ok(None);
        };
        let conv = entry.conversation_id;
        let (peer, uncounted, last) = futures::try_join!(
            self.user(peer_id),
            async {
                Ok::<_, StoreError>(
                    self.first::<(i64,)>(
                        &self.st().UNCOUNTED_AFTER,
                        (user, conv, entry.read_seq),
                        "counting unread messages",
                    )
                    .await?
                    .map_or(0, |(n,)| n),
                )
            },
            self.preview(user, peer_id, entry),
        )?;
        let Some(peer) = peer else {
            return Ok(None);
        };
        let mut unread = entry.peer_sent - entry.read_peer_count - uncounted;
        if unread > 0 && self.retention.period().is_some() {
            unread = self.unread_kept(user, peer_id, entry).await?;
        }
        Ok(Some(Conversation {
            conversation_id: conv,
            peer,
            last_message: last,
            unread_count: unread.max(0) as u64,
            last_activity_at: from_micros(activity)?,
        }))
    }

    /// `user`'s unread count in a conversation whose messages may have expired: the peer's
    /// messages after the read marker, less those that expired. Messages expire oldest first
    /// (send times are monotonic in seq), so what is left after the marker starts at the oldest
    /// message still stored after it, and its row says how many messages the peer had sent
    /// before it: the marker counts as if it were just before that message. `uncounted`
    /// messages are counted after the same point (those before it expired with their rows).
    /// Nothing left after the marker: nothing unread.
    async fn unread_kept(&self, user: Uuid, peer: Uuid, entry: Entry) -> Result<i64> {
        let conv = entry.conversation_id;
        let Some(first) = self.first_kept_message(conv, entry.read_seq).await? else {
            return Ok(0);
        };
        // The peer's messages before the first one left.
        let peer_before = if first.sender_id == peer {
            first.sender_count - 1
        } else {
            first.peer_count
        };
        let (read_seq, read_peer_count) = (
            entry.read_seq.max(first.seq - 1),
            entry.read_peer_count.max(peer_before),
        );
        let uncounted = self
            .first::<(i64,)>(
                &self.st().UNCOUNTED_AFTER,
                (user, conv, read_seq),
                "counting unread messages",
            )
            .await?
            .map_or(0, |(n,)| n);
        Ok(entry.peer_sent - read_peer_count - uncounted)
    }

    /// A conversation's oldest message still stored after seq `after` (`None` if none is):
    /// with a retention, those before it expired. Walks the buckets newest first and stops at
    /// the first that holds nothing after `after` (or when the message right after it is
    /// found), so it reads about as many buckets as hold unread messages.
    async fn first_kept_message(&self, conv: Uuid, after: i64) -> Result<Option<FirstKept>> {
        let mut found = None;
        let mut below = i64::MAX;
        loop {
            let buckets: Vec<(i64,)> = self
                .rows(
                    &self.st().BUCKETS_DOWN,
                    (conv, below, BUCKET_CHUNK),
                    "reading history buckets",
                )
                .await?;
            let Some(&(last,)) = buckets.last() else {
                return Ok(found);
            };
            for (bucket,) in buckets {
                let rows: Vec<FirstKeptRow> = self
                    .rows(
                        &self.st().MESSAGES_FIRST_AFTER,
                        (conv, bucket, after, super::communities::FIRST_AFTER_ROWS),
                        "reading a conversation's oldest messages",
                    )
                    .await?;
                // Rows without a message are strays (a write that outlived it): skipped.
                match rows.into_iter().find_map(FirstKept::from_row) {
                    Some(first) => {
                        found = Some(first);
                        if first.seq == after + 1 {
                            return Ok(found);
                        }
                    }
                    // Older buckets hold older seqs: nothing after `after` there either.
                    None => return Ok(found),
                }
            }
            if last == i64::MIN {
                return Ok(found);
            }
            below = last - 1;
        }
    }

    /// The latest message of a conversation that `user` can see.
    async fn preview(&self, user: Uuid, peer: Uuid, entry: Entry) -> Result<Option<Message>> {
        let conv = entry.conversation_id;
        let (Some(_), Some(seq), Some(bucket)) =
            (entry.last_message_id, entry.last_seq, entry.last_bucket)
        else {
            return Ok(None);
        };
        let hidden = !self.hidden_between(user, conv, seq, seq).await?.is_empty();
        let stored = if hidden {
            None
        } else {
            self.stored_message(conv, bucket, seq).await?
        };
        let Some(stored) = stored else {
            // Hidden from this user: the one before it they can see.
            let page = self
                .history(
                    user,
                    conv,
                    HistoryQuery {
                        limit: 1,
                        ..Default::default()
                    },
                )
                .await?;
            return Ok(page.items.into_iter().next());
        };
        let read_seq = if stored.recipient_id == user {
            entry.read_seq
        } else {
            self.read_seq(peer, conv).await?
        };
        stored.into_message(conv, read_seq).map(Some)
    }

    /// One page of a history as `query` asks for it: the history's tail and the messages
    /// between the query's cursors, one more than `query.limit` if there are more (for
    /// [`page`]); `None` if the history has no tail (no message yet). Walks the non-empty
    /// buckets from the first that can hold the page.
    pub(super) async fn history_page<H: History>(
        &self,
        history: &H,
        query: &HistoryQuery,
    ) -> Result<Option<(H::Tail, Vec<H::Message>)>> {
        let cursor = |id: Uuid| async move {
            history
                .place(self, id)
                .await?
                .ok_or(StoreError::UnknownCursor(id))
        };
        let optional = |id: Option<Uuid>| async move {
            match id {
                Some(id) => cursor(id).await.map(Some),
                None => Ok(None),
            }
        };
        let (before, after, tail) = futures::try_join!(
            optional(query.before),
            optional(query.after),
            history.tail(self)
        )?;
        let Some(tail) = tail else {
            return Ok(None);
        };
        let upper = before.map_or(i64::MAX, |p| p.seq);
        let lower = after.map_or(0, |p| p.seq);
        let since_us = query.since.map(micros);
        let want = query.limit + 1;
        let ascending = query.ascending();
        let tables = H::tables(self);
        let mut found = Vec::new();
        let (buckets_from, mut from, floor) = if ascending {
            let mut from = after.map_or(i64::MIN, |p| p.bucket);
            if let Some(since) = since_us {
                from = from.max(history_bucket(since));
            }
            (tables.buckets_up, from, i64::MIN)
        } else {
            let from = before.map_or(i64::MAX, |p| p.bucket);
            (
                tables.buckets_down,
                from,
                after.map_or(i64::MIN, |p| p.bucket),
            )
        };
        'walk: loop {
            let buckets: Vec<(i64,)> = self
                .rows(
                    buckets_from,
                    (history.key(), from, BUCKET_CHUNK),
                    tables.reading_buckets,
                )
                .await?;
            for &(bucket,) in &buckets {
                if bucket < floor {
                    break 'walk;
                }
                let go_on = self
                    .read_history_bucket(
                        history,
                        bucket,
                        (lower, upper),
                        since_us,
                        ascending,
                        want,
                        &mut found,
                    )
                    .await?;
                if !go_on {
                    break 'walk;
                }
            }
            match buckets.last() {
                Some(&(last,)) if buckets.len() == BUCKET_CHUNK as usize => {
                    from = if ascending { last + 1 } else { last - 1 }
                }
                _ => break,
            }
        }
        Ok(Some((tail, found)))
    }

    /// Appends to `out` the visible messages of one history bucket between `lower` and `upper`
    /// (exclusive) in the given direction, until `out` holds `want`. Returns false when the
    /// walk must stop (enough found, or older than `since` while descending).
    #[allow(clippy::too_many_arguments)]
    async fn read_history_bucket<H: History>(
        &self,
        history: &H,
        bucket: i64,
        (lower, upper): (i64, i64),
        since_us: Option<i64>,
        ascending: bool,
        want: usize,
        out: &mut Vec<H::Message>,
    ) -> Result<bool> {
        let tables = H::tables(self);
        let (mut lower, mut upper) = (lower, upper);
        loop {
            let fetch = (want - out.len()).clamp(16, CHUNK);
            let statement = if ascending {
                tables.messages_up
            } else {
                tables.messages_down
            };
            let rows: Vec<H::Row> = self
                .rows(
                    statement,
                    (history.key(), bucket, upper, lower, fetch as i32),
                    tables.reading,
                )
                .await?;
            let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
                return Ok(true);
            };
            let (first, last) = (H::seq(first), H::seq(last));
            let hidden = history
                .hidden(self, first.min(last), first.max(last))
                .await?;
            let fetched = rows.len();
            for row in rows {
                let seq = H::seq(&row);
                if ascending {
                    lower = seq;
                } else {
                    upper = seq;
                }
                let Some(m) = history.message(row)? else {
                    continue;
                };
                if let Some(since) = since_us
                    && H::sent_at_us(&m) < since
                {
                    if ascending {
                        continue;
                    }
                    // Times are monotonic in seq: everything further back is older still.
                    return Ok(false);
                }
                if hidden.contains(&seq) {
                    continue;
                }
                out.push(m);
                if out.len() >= want {
                    return Ok(false);
                }
            }
            if fetched < fetch {
                return Ok(true);
            }
        }
    }
}

/// The statements that read one kind of history, and what their errors say was being read.
pub(super) struct HistoryTables<'a> {
    /// A partition's non-empty buckets at or after one, oldest first.
    pub(super) buckets_up: &'a PreparedStatement,
    /// A partition's non-empty buckets at or before one, newest first.
    pub(super) buckets_down: &'a PreparedStatement,
    /// A bucket's message rows between two seqs (exclusive), oldest first.
    pub(super) messages_up: &'a PreparedStatement,
    /// A bucket's message rows between two seqs (exclusive), newest first.
    pub(super) messages_down: &'a PreparedStatement,
    /// What an error of a bucket read says was being read.
    pub(super) reading_buckets: &'static str,
    /// What an error of a message read says was being read.
    pub(super) reading: &'static str,
}

/// Where a message stands in its history.
#[derive(Debug, Clone, Copy)]
pub(super) struct Place {
    pub(super) bucket: i64,
    pub(super) seq: i64,
}

/// A history that [`ScyllaStore::history_page`] pages through, as one viewer sees it: a
/// conversation's messages or a channel's, in rows ordered by seq within time buckets (see
/// [`history_bucket`]), with a table of the partition's non-empty buckets keyed like them. The
/// two kinds are walked and paged alike; they differ only in what this trait says.
pub(super) trait History {
    /// A message row, its seq first.
    type Row: for<'f, 'm> ::scylla::deserialize::row::DeserializeRow<'f, 'm>;
    /// A message as the page holds it.
    type Message;
    /// The history's latest numbers: none before its first message.
    type Tail;

    /// The partition key of its tables.
    fn key(&self) -> Uuid;

    /// Its statements, as `store` prepared them.
    fn tables(store: &ScyllaStore) -> HistoryTables<'_>;

    /// Where a message of this history is; `None` if the id is of no message of it.
    async fn place(&self, store: &ScyllaStore, message_id: Uuid) -> Result<Option<Place>>;

    async fn tail(&self, store: &ScyllaStore) -> Result<Option<Self::Tail>>;

    /// The seqs in `[from, to]` the viewer hid.
    async fn hidden(&self, store: &ScyllaStore, from: i64, to: i64) -> Result<HashSet<i64>>;

    fn seq(row: &Self::Row) -> i64;

    /// The message of a row as the viewer sees it, `None` for a row that holds no message.
    fn message(&self, row: Self::Row) -> Result<Option<Self::Message>>;

    fn sent_at_us(message: &Self::Message) -> i64;
}

/// A conversation's history as one of its users sees it.
struct ConversationHistory {
    viewer: Uuid,
    conversation: Uuid,
}

impl History for ConversationHistory {
    type Row = MessageRow;
    type Message = StoredMessage;
    type Tail = Tail;

    fn key(&self) -> Uuid {
        self.conversation
    }

    fn tables(store: &ScyllaStore) -> HistoryTables<'_> {
        let st = store.st();
        HistoryTables {
            buckets_up: &st.BUCKETS_UP,
            buckets_down: &st.BUCKETS_DOWN,
            messages_up: &st.MESSAGES_UP,
            messages_down: &st.MESSAGES_DOWN,
            reading_buckets: "reading history buckets",
            reading: "reading history",
        }
    }

    async fn place(&self, store: &ScyllaStore, message_id: Uuid) -> Result<Option<Place>> {
        Ok(store
            .location(message_id)
            .await?
            .filter(|l| l.conversation_id == self.conversation)
            .map(|l| Place {
                bucket: l.bucket,
                seq: l.seq,
            }))
    }

    async fn tail(&self, store: &ScyllaStore) -> Result<Option<Tail>> {
        store.tail(self.conversation).await
    }

    async fn hidden(&self, store: &ScyllaStore, from: i64, to: i64) -> Result<HashSet<i64>> {
        store
            .hidden_between(self.viewer, self.conversation, from, to)
            .await
    }

    fn seq(row: &MessageRow) -> i64 {
        row.0
    }

    fn message(&self, row: MessageRow) -> Result<Option<StoredMessage>> {
        Ok(StoredMessage::from_row(row))
    }

    fn sent_at_us(message: &StoredMessage) -> i64 {
        message.sent_at_us
    }
}

type UserRow = (
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<bool>,
    Option<i64>,
    Option<i32>,
);

/// The one partition of `restricted_accounts`.
const RESTRICTED_BUCKET: i32 = 0;

/// How `users.account` and `restricted_accounts.status` store a standing (null: active).
fn account_code(status: AccountStatus) -> i32 {
    match status {
        AccountStatus::Active => 0,
        AccountStatus::Blocked => 1,
        AccountStatus::Deleted => 2,
    }
}

fn account_from_code(code: Option<i32>) -> Result<AccountStatus> {
    match code {
        None | Some(0) => Ok(AccountStatus::Active),
        Some(1) => Ok(AccountStatus::Blocked),
        Some(2) => Ok(AccountStatus::Deleted),
        Some(other) => Err(StoreError::Corrupt(format!(
            "account standing {other} is not 0, 1 or 2"
        ))),
    }
}

#[async_trait]
impl ReadStore for ScyllaStore {
    async fn apply(
        &self,
        projection: &str,
        changes: Vec<Change>,
        checkpoint: Vec<Position>,
    ) -> Result<()> {
        let _timer = query_timer(BACKEND, "apply");
        let mut applying = Applying {
            store: self,
            now: self.retention.now(),
            locations: HashMap::new(),
            tails: HashMap::new(),
            issued: HashSet::new(),
            numbered: HashMap::new(),
            horizons: HashMap::new(),
            pending_before: HashMap::new(),
            unpended: HashSet::new(),
            markers: HashMap::new(),
            chains: HashMap::new(),
            writes: Vec::new(),
            community: Default::default(),
        };
        applying.prefetch(&changes).await?;
        for change in &changes {
            applying.apply(change).await?;
        }
        applying.flush().await?;
        // Only once every change is stored: feed readers may now read up to here, and a crash
        // before the checkpoint re-applies the batch.
        for (partition, next) in std::mem::take(&mut applying.horizons) {
            applying.push(
                &self.st().FEED_HORIZON_SET,
                (partition, next, next),
                "advancing a feed horizon",
            );
        }
        applying.flush().await?;
        for p in &checkpoint {
            let offset = p.offset as i64;
            applying.push(
                &self.st().CHECKPOINT_SET,
                (
                    projection.to_owned(),
                    partition_of(p.partition)?,
                    offset,
                    offset.saturating_add(1),
                ),
                "writing a checkpoint",
            );
        }
        applying.flush().await
    }

    async fn tables(&self) -> Result<Vec<String>> {
        // No request: the list is compiled in, so nothing to time.
        Ok(read_model_tables())
    }

    async fn table_rows(&self, table: &str) -> Result<Vec<String>> {
        const ACTION: &str = "reading a table";
        let _timer = query_timer(BACKEND, "table_rows");
        if !read_model_tables().iter().any(|t| t == table) {
            return Err(StoreError::Corrupt(format!(
                "no read-model table {table:?}"
            )));
        }
        // The name is one of the schema's tables: safe to put into the statement.
        let mut lines: Vec<String> = self
            .inner
            .session
            .query_iter(format!("SELECT * FROM {table}"), ())
            .await
            .map_err(pager_err(ACTION))?
            .rows_stream::<::scylla::value::Row>()
            .map_err(|e| e.to_string())
            .map_err(shape_err(ACTION))?
            .map_err(row_err(ACTION))
            .map_ok(|row| {
                row.columns
                    .iter()
                    .map(|c| match c {
                        Some(value) => format!("{value:?}"),
                        None => "NULL".to_owned(),
                    })
                    .collect::<Vec<_>>()
                    .join(" | ")
            })
            .try_collect()
            .await?;
        lines.sort_unstable();
        Ok(lines)
    }

    async fn checkpoints(&self, projection: &str) -> Result<Vec<Position>> {
        let _timer = query_timer(BACKEND, "checkpoints");
        let rows: Vec<(i32, Option<i64>)> = self
            .all(
                &self.st().CHECKPOINTS_GET,
                (projection,),
                "reading checkpoints",
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(p, o)| Some(Position::new(p as u32, o? as u64)))
            .collect())
    }

    async fn user(&self, id: Uuid) -> Result<Option<User>> {
        let _timer = query_timer(BACKEND, "user");
        match self
            .first::<UserRow>(&self.st().USER_GET, (id,), "reading a user")
            .await?
        {
            Some(row) => user_from_row(id, row),
            None => Ok(None),
        }
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<User>> {
        let _timer = query_timer(BACKEND, "user_by_username");
        let owner = self
            .first::<(Option<Uuid>,)>(
                &self.st().USERNAME_GET,
                (username.to_lowercase(),),
                "looking up a username",
            )
            .await?
            .and_then(|(id,)| id);
        match owner {
            Some(id) => self.user(id).await,
            None => Ok(None),
        }
    }

    async fn friendship(&self, a: Uuid, b: Uuid) -> Result<FriendshipState> {
        let _timer = query_timer(BACKEND, "friendship");
        let (lo, hi) = ordered(a, b);
        let row = self
            .first::<(Option<i32>, Option<Uuid>)>(
                &self.st().FRIENDSHIP_GET,
                (lo, hi),
                "reading a friendship",
            )
            .await?;
        Ok(match row {
            Some((Some(1), Some(requester))) => FriendshipState::Pending { requester },
            Some((Some(2), _)) => FriendshipState::Friends,
            _ => FriendshipState::None,
        })
    }

    async fn friends(&self, user: Uuid) -> Result<Vec<FriendEntry>> {
        let _timer = query_timer(BACKEND, "friends");
        let rows: Vec<(Uuid, Option<i32>, Option<Uuid>, Option<i64>)> = self
            .all(&self.st().FRIENDS_GET, (user,), "reading a friend list")
            .await?;
        let relations = rows
            .into_iter()
            .filter_map(|(other, state, requester, since)| {
                let relation = match (state?, requester) {
                    (0, _) => return None,
                    (2, _) => Relation::Friend,
                    (_, Some(r)) if r == user => Relation::OutgoingRequest,
                    _ => Relation::IncomingRequest,
                };
                Some((other, relation, since.unwrap_or(0)))
            });
        let mut entries: Vec<FriendEntry> = futures::stream::iter(relations)
            .map(|(other, relation, since)| async move {
                let Some(user) = self.user(other).await? else {
                    return Ok(None);
                };
                Ok::<_, StoreError>(Some(FriendEntry {
                    user,
                    relation,
                    since: from_micros(since)?,
                }))
            })
            .buffered(READS_IN_FLIGHT)
            .try_filter_map(|e| async move { Ok(e) })
            .try_collect()
            .await?;
        entries.sort_by(|a, b| b.since.cmp(&a.since).then(a.user.id.cmp(&b.user.id)));
        Ok(entries)
    }

    async fn conversations(
        &self,
        user: Uuid,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Conversation>> {
        let _timer = query_timer(BACKEND, "conversations");
        let (before_at, before_id) = match cursor {
            Some(c) => parse_conversation_cursor(c)?,
            None => (i64::MAX, Uuid::max()),
        };
        // One partition per user: every conversation they have, ordered here by activity.
        let rows: Vec<EntryRow> = self
            .all(
                &self.st().ENTRIES_GET,
                (user,),
                "reading a conversation list",
            )
            .await?;
        let mut entries: Vec<Entry> = rows
            .into_iter()
            .map(Entry::from_row)
            .filter(|e| e.peer_id.is_some())
            .filter(|e| {
                let at = e.last_activity_us.unwrap_or(i64::MIN);
                (at, e.conversation_id) < (before_at, before_id)
            })
            .collect();
        entries.sort_by(|a, b| {
            (b.last_activity_us, b.conversation_id).cmp(&(a.last_activity_us, a.conversation_id))
        });
        let want = limit + 1;
        let mut items = Vec::new();
        let mut rest = entries.as_slice();
        while items.len() < want && !rest.is_empty() {
            let take = (want - items.len()).min(rest.len());
            let (chunk, tail) = rest.split_at(take);
            rest = tail;
            let built: Vec<Option<Conversation>> = futures::stream::iter(chunk.iter().copied())
                .map(|e| self.conversation(user, e))
                .buffered(READS_IN_FLIGHT)
                .try_collect()
                .await?;
            items.extend(built.into_iter().flatten());
        }
        Ok(page(items, limit, conversation_cursor))
    }

    async fn participants(&self, conversation: Uuid) -> Result<Option<(Uuid, Uuid)>> {
        let _timer = query_timer(BACKEND, "participants");
        Ok(self
            .tail(conversation)
            .await?
            .map(|t| (t.user_lo, t.user_hi)))
    }

    async fn history(
        &self,
        viewer: Uuid,
        conversation: Uuid,
        query: HistoryQuery,
    ) -> Result<Page<Message>> {
        let _timer = query_timer(BACKEND, "history");
        let conv = conversation;
        let history = ConversationHistory {
            viewer,
            conversation,
        };
        let Some((tail, found)) = self.history_page(&history, &query).await? else {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        };
        let (lo_read, hi_read) = futures::try_join!(
            self.read_seq(tail.user_lo, conv),
            self.read_seq(tail.user_hi, conv)
        )?;
        let items = found
            .into_iter()
            .map(|m| {
                let read_seq = if m.recipient_id == tail.user_lo {
                    lo_read
                } else {
                    hi_read
                };
                m.into_message(conv, read_seq)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(page(items, query.limit, |m: &Message| {
            m.message_id.to_string()
        }))
    }

    async fn messages_since(
        &self,
        user: Uuid,
        since: DateTime<Utc>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<FeedPage> {
        let _timer = query_timer(BACKEND, "messages_since");
        let mut cursor = match after {
            Some(c) => {
                parse_feed_cursor(c).ok_or_else(|| StoreError::InvalidCursor(c.to_owned()))?
            }
            None => BTreeMap::new(),
        };
        let since_us = micros(since);
        // The buckets, then each partition's horizon, then the buckets again: a message's
        // bucket row is written before its horizon moves past it, so the second list holds
        // every bucket with messages below the horizons read.
        let partitions: HashSet<u32> = self.feed_buckets(user).await?.into_keys().collect();
        let horizons = read_each(partitions, |p| async move {
            Ok(self
                .first::<(Option<i64>,)>(
                    &self.st().FEED_HORIZON_GET,
                    (partition_of(p)?,),
                    "reading a feed horizon",
                )
                .await?
                .and_then(|(h,)| h))
        })
        .await?;
        let buckets = self.feed_buckets(user).await?;
        let want = limit + 1;
        let work: Vec<(u32, Vec<(i64, Option<i64>)>, Option<i64>, i64)> = buckets
            .into_iter()
            .filter_map(|(p, list)| {
                let horizon = *horizons.get(&p)?;
                Some((p, list, cursor.get(&p).copied(), horizon))
            })
            .collect();
        let scans: Vec<(u32, PartitionScan)> = futures::stream::iter(work)
            .map(|(p, list, from, horizon)| async move {
                let scan = self
                    .scan_feed_partition(user, p, &list, from, horizon, since_us, want)
                    .await?;
                Ok::<_, StoreError>((p, scan))
            })
            .buffered(READS_IN_FLIGHT)
            .try_collect()
            .await?;
        let mut scans: BTreeMap<u32, PartitionScan> = scans.into_iter().collect();
        // Merge the partitions by send time, taking each in offset order: every partition's
        // taken entries are a prefix of it, so its cursor is the last one taken.
        let mut taken: Vec<FeedEntry> = Vec::new();
        while taken.len() < limit {
            let next = scans
                .iter()
                .filter_map(|(p, s)| {
                    s.entries
                        .front()
                        .map(|e| ((e.sent_at_us, *p, e.offset), *p))
                })
                .min();
            let Some((_, p)) = next else { break };
            let Some(entry) = scans.get_mut(&p).and_then(|s| s.entries.pop_front()) else {
                break;
            };
            taken.push(entry);
        }
        for e in &taken {
            let c = cursor.entry(e.partition).or_insert(e.offset);
            *c = (*c).max(e.offset);
        }
        let more = scans.values().any(|s| !s.entries.is_empty());
        if !more {
            // Everything below each partition's horizon was read or left out for good: resume
            // there, so a later poll sees only what reaches the read models from now on.
            for (p, scan) in &scans {
                let last = scan.horizon - 1;
                if last >= 0 {
                    let c = cursor.entry(*p).or_insert(last);
                    *c = (*c).max(last);
                }
            }
        }
        let messages: Vec<Option<StoredMessage>> = futures::stream::iter(taken.iter().copied())
            .map(|e| self.stored_message(e.conversation_id, e.bucket, e.seq))
            .buffered(READS_IN_FLIGHT)
            .try_collect()
            .await?;
        let pairs: HashSet<(Uuid, Uuid)> = taken
            .iter()
            .zip(&messages)
            .filter_map(|(e, m)| m.as_ref().map(|m| (m.recipient_id, e.conversation_id)))
            .collect();
        let read_seqs: HashMap<(Uuid, Uuid), i64> = futures::stream::iter(pairs)
            .map(|(recipient, conv)| async move {
                Ok::<_, StoreError>(((recipient, conv), self.read_seq(recipient, conv).await?))
            })
            .buffer_unordered(READS_IN_FLIGHT)
            .try_collect()
            .await?;
        let mut items = Vec::with_capacity(taken.len());
        for (e, m) in taken.iter().zip(messages) {
            let Some(m) = m else { continue };
            let read_seq = read_seqs
                .get(&(m.recipient_id, e.conversation_id))
                .copied()
                .unwrap_or(0);
            items.push(m.into_message(e.conversation_id, read_seq)?);
        }
        let resume = feed_cursor(&cursor);
        Ok(FeedPage {
            next: more.then(|| resume.clone()),
            resume,
            items,
        })
    }

    async fn message(&self, viewer: Uuid, message_id: Uuid) -> Result<Option<Message>> {
        let _timer = query_timer(BACKEND, "message");
        let Some(loc) = self.location(message_id).await? else {
            return Ok(None);
        };
        if viewer != loc.sender_id && viewer != loc.recipient_id {
            return Ok(None);
        }
        self.message_at(Some(viewer), loc).await
    }

    async fn message_by_client_id(
        &self,
        sender: Uuid,
        client_msg_id: &str,
    ) -> Result<Option<Message>> {
        let _timer = query_timer(BACKEND, "message_by_client_id");
        let id = self
            .first::<(Option<Uuid>,)>(
                &self.st().CLIENT_ID_GET,
                (sender, client_msg_id),
                "looking up a client message id",
            )
            .await?
            .and_then(|(id,)| id);
        let Some(id) = id else { return Ok(None) };
        match self.location(id).await? {
            Some(loc) => self.message_at(None, loc).await,
            None => Ok(None),
        }
    }

    async fn restricted_accounts(&self) -> Result<Vec<(Uuid, AccountStatus)>> {
        const ACTION: &str = "listing restricted accounts";
        let _timer = query_timer(BACKEND, "restricted_accounts");
        let rows: Vec<(Uuid, Option<i32>)> = self
            .inner
            .session
            .execute_iter(self.st().RESTRICTED_ALL.clone(), (RESTRICTED_BUCKET,))
            .await
            .map_err(pager_err(ACTION))?
            .rows_stream::<(Uuid, Option<i32>)>()
            .map_err(|e| e.to_string())
            .map_err(shape_err(ACTION))?
            .map_err(row_err(ACTION))
            .try_collect()
            .await?;
        rows.into_iter()
            .map(|(id, code)| Ok((id, account_from_code(code)?)))
            .collect()
    }

    async fn online_users(&self) -> Result<Vec<Uuid>> {
        const ACTION: &str = "listing online users";
        let _timer = query_timer(BACKEND, "online_users");
        let mut online: Vec<Uuid> = self
            .inner
            .session
            .execute_iter(self.st().USERS_PRESENCE_SCAN.clone(), ())
            .await
            .map_err(pager_err(ACTION))?
            .rows_stream::<(Uuid, Option<bool>, Option<String>)>()
            .map_err(|e| e.to_string())
            .map_err(shape_err(ACTION))?
            .map_err(row_err(ACTION))
            // A row without a username is not a user (a presence change projected before the
            // registration): not listed, as in the embedded store.
            .try_filter_map(|(id, online, username)| async move {
                Ok((online.unwrap_or(false) && username.is_some()).then_some(id))
            })
            .try_collect()
            .await?;
        online.sort_unstable();
        Ok(online)
    }

    async fn pending(
        &self,
        user: Uuid,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Message>> {
        let _timer = query_timer(BACKEND, "pending");
        let after = after.map(parse_pending_cursor).transpose()?;
        // One partition per user, holding only what is still pending (or about to stop
        // being): read whole, ordered here.
        let rows: Vec<PendingRow> = self
            .all(&self.st().PENDING_GET, (user,), "reading pending messages")
            .await?;
        let mut candidates: Vec<PendingEntry> = rows
            .into_iter()
            .filter_map(PendingEntry::from_row)
            .filter(|e| after.is_none_or(|a| e.key() > a))
            .collect();
        candidates.sort_by_key(PendingEntry::key);
        // The facts decide, whatever the index still holds: a row whose deletion has not
        // landed yet (or was lost) is left out like any message the marker passed, ...
        let conversations: HashSet<Uuid> = candidates.iter().map(|e| e.conversation_id).collect();
        let read_seqs = read_each(conversations, |conv| async move {
            Ok(Some(self.read_seq(user, conv).await?))
        })
        .await?;
        let read_seq = |conv: &Uuid| read_seqs.get(conv).copied().unwrap_or(0);
        candidates.retain(|e| e.seq > read_seq(&e.conversation_id));
        let want = limit + 1;
        let mut items = Vec::new();
        let mut rest = candidates.as_slice();
        while items.len() < want && !rest.is_empty() {
            let take = (want - items.len()).clamp(16, CHUNK).min(rest.len());
            let (chunk, tail) = rest.split_at(take);
            rest = tail;
            let (hidden, stored) = futures::try_join!(
                self.hidden_among(user, chunk.iter().map(|e| (e.conversation_id, e.seq))),
                futures::stream::iter(chunk.iter().copied())
                    .map(|e| self.stored_message(e.conversation_id, e.bucket, e.seq))
                    .buffered(READS_IN_FLIGHT)
                    .try_collect::<Vec<Option<StoredMessage>>>(),
            )?;
            // ... and so is one acknowledged, hidden or deleted.
            for (e, m) in chunk.iter().zip(stored) {
                let Some(m) = m else { continue };
                if m.recipient_id != user
                    || m.deleted
                    || m.delivered
                    || hidden.contains(&(e.conversation_id, e.seq))
                {
                    continue;
                }
                items.push(m.into_message(e.conversation_id, read_seq(&e.conversation_id))?);
            }
        }
        Ok(page(items, limit, pending_cursor))
    }

    // Servers (communities): `communities.rs`.

    async fn server(&self, id: Uuid) -> Result<Option<Server>> {
        let _timer = query_timer(BACKEND, "server");
        self.community_server(id).await
    }

    async fn server_by_name(&self, name: &str) -> Result<Option<Server>> {
        let _timer = query_timer(BACKEND, "server_by_name");
        self.community_server_by_name(name).await
    }

    async fn search_servers(
        &self,
        search: &ServerSearch,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Server>> {
        let _timer = query_timer(BACKEND, "search_servers");
        self.community_search_servers(search, after, limit).await
    }

    async fn user_servers(
        &self,
        user: Uuid,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<UserServer>> {
        let _timer = query_timer(BACKEND, "user_servers");
        self.community_user_servers(user, after, limit).await
    }

    async fn membership(&self, server: Uuid, user: Uuid) -> Result<Option<ServerRole>> {
        let _timer = query_timer(BACKEND, "membership");
        self.community_membership(server, user).await
    }

    async fn invitation(&self, invitation_id: Uuid) -> Result<Option<Invitation>> {
        let _timer = query_timer(BACKEND, "invitation");
        self.community_invitation(invitation_id).await
    }

    async fn pending_invitation(&self, server: Uuid, invitee: Uuid) -> Result<Option<Invitation>> {
        let _timer = query_timer(BACKEND, "pending_invitation");
        self.community_pending_invitation(server, invitee).await
    }

    async fn pending_invitations(
        &self,
        invitee: Uuid,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Invitation>> {
        let _timer = query_timer(BACKEND, "pending_invitations");
        self.community_pending_invitations(invitee, after, limit)
            .await
    }

    async fn posts(&self, server: Uuid, before: Option<&str>, limit: usize) -> Result<Page<Post>> {
        let _timer = query_timer(BACKEND, "posts");
        self.community_posts(server, before, limit).await
    }

    async fn channels(&self, server: Uuid, viewer: Uuid) -> Result<Vec<ChannelSummary>> {
        let _timer = query_timer(BACKEND, "channels");
        self.community_channels(server, viewer).await
    }

    async fn channel(&self, channel: Uuid) -> Result<Option<Channel>> {
        let _timer = query_timer(BACKEND, "channel");
        self.community_channel(channel).await
    }

    async fn current_channel(&self, user: Uuid) -> Result<Option<Channel>> {
        let _timer = query_timer(BACKEND, "current_channel");
        self.community_current_channel(user).await
    }

    async fn channel_members(
        &self,
        channel: Uuid,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Uuid>> {
        let _timer = query_timer(BACKEND, "channel_members");
        self.community_channel_members(channel, after, limit).await
    }

    async fn channel_history(
        &self,
        viewer: Uuid,
        channel: Uuid,
        query: HistoryQuery,
    ) -> Result<Page<ChannelMessage>> {
        let _timer = query_timer(BACKEND, "channel_history");
        self.community_channel_history(viewer, channel, query).await
    }

    async fn channel_message_by_client_id(
        &self,
        sender: Uuid,
        client_msg_id: &str,
    ) -> Result<Option<ChannelMessage>> {
        let _timer = query_timer(BACKEND, "channel_message_by_client_id");
        self.community_channel_message_by_client_id(sender, client_msg_id)
            .await
    }

    async fn channel_message(
        &self,
        viewer: Uuid,
        message_id: Uuid,
    ) -> Result<Option<ChannelMessage>> {
        let _timer = query_timer(BACKEND, "channel_message");
        self.community_channel_message(viewer, message_id).await
    }

    async fn latest_channel_message(&self, channel: Uuid) -> Result<Option<ChannelMessage>> {
        let _timer = query_timer(BACKEND, "latest_channel_message");
        self.community_latest_channel_message(channel).await
    }
}

/// The tables the read-model schema creates (`CREATE TABLE IF NOT EXISTS <name>` lines of the
/// migrations), less the checkpoints and the analytics consumer's own tables (`analytics_*`).
fn read_model_tables() -> Vec<String> {
    let mut tables: Vec<String> = MIGRATIONS
        .iter()
        .flat_map(|m| m.cql.lines())
        .filter_map(|line| line.trim().strip_prefix("CREATE TABLE IF NOT EXISTS "))
        .filter_map(|rest| {
            rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .next()
        })
        // Not read models: checkpoints, the analytics rollups, and the users' keys (which
        // the log does not hold and a rebuild must never touch).
        .filter(|name| {
            !matches!(*name, "checkpoints" | "user_keys") && !name.starts_with("analytics")
        })
        .map(str::to_owned)
        .collect();
    tables.sort();
    tables.dedup();
    tables
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_model_tables_are_the_schemas_less_checkpoints() {
        let tables = read_model_tables();
        for table in ["users", "messages", "pending_messages", "channel_reads"] {
            assert!(tables.iter().any(|t| t == table), "{table} in {tables:?}");
        }
        assert!(!tables.iter().any(|t| t == "checkpoints" || t == "says"));
        assert!(!tables.iter().any(|t| t.starts_with("analytics")));
        assert!(!tables.iter().any(|t| t == "user_keys"));
        assert!(tables.iter().any(|t| t == "restricted_accounts"));
    }

    #[test]
    fn feed_cursors_round_trip_and_reject_garbage() {
        let mut positions = BTreeMap::new();
        assert_eq!(feed_cursor(&positions), "f");
        assert_eq!(parse_feed_cursor("f"), Some(BTreeMap::new()));
        positions.insert(3, 99);
        positions.insert(0, 17);
        let text = feed_cursor(&positions);
        assert_eq!(text, "f0.17_3.99");
        assert_eq!(parse_feed_cursor(&text), Some(positions));
        for bad in [
            "", "garbage", "f0", "f0.x", "f-1.2", "f0.-2", "f0.1_0.2", "0.1", "f0.1_",
        ] {
            assert_eq!(parse_feed_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn buckets_split_time_and_offsets() {
        assert_eq!(history_bucket(0), 0);
        assert_eq!(history_bucket(BUCKET_MICROS - 1), 0);
        assert_eq!(history_bucket(BUCKET_MICROS), 1);
        assert_eq!(
            history_bucket(-1),
            -1,
            "times before 1970 get their own buckets"
        );
        assert_eq!(feed_bucket((1 << 20) - 1), 0);
        assert_eq!(feed_bucket(1 << 20), 1);
        assert!(at_offset(0) > REGISTRATION_TS && at_offset(0) > MEMBERSHIP_TS);
        assert!(
            at_offset(u64::MAX) == i64::MAX,
            "saturates instead of wrapping"
        );
    }
}
