//! Read models: what queries are answered from.
//!
//! Projectors turn events into [`Change`]s and hand them to a [`ReadStore`] together with the
//! log checkpoint they reach; the store applies both atomically (or, where it cannot, in an
//! order and form that makes re-application harmless). Queries read only from here.
//! [`sqlite::SqliteStore`] is the embedded adapter (the default); the Scylla adapter implements
//! the same trait. [`contract`] is the suite every adapter must pass.
//!
//! Both adapters time every call (each [`ReadStore`] method, `apply` included) in the
//! `missive_store_query_duration_seconds{backend, statement}` histogram of
//! `missive-telemetry`, `statement` being the method's name.
//!
//! # Layout
//! - [`model`]: read-model types and the [`Change`] vocabulary.
//! - [`sqlite`]: the embedded adapter.
//! - `scylla` (feature `scylla`, on by default): the production store's connection, URL and
//!   schema migrations (`projections/*.cql`).
//! - [`contract`]: the port contract suite, generic over any [`ReadStore`].
//!
//! # Retention
//! A store opened with a finite [`Retention`] keeps direct messages and channel messages only
//! for that period: a message sent at or before `now - period` is never stored by a
//! projection (so replaying the log gives what the live store holds), and what expires later
//! goes away by itself (Scylla: `USING TTL`) or at the next sweep
//! ([`sqlite::SqliteStore::sweep_expired`]). Everything else stays: users, friendships,
//! servers, posts, channels, conversations (participants, list entry, last activity,
//! sequence numbers) and read markers. See [`Retention`].

pub mod contract;
pub mod model;
#[cfg(feature = "scylla")]
pub mod scylla;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use missive_log::Position;
use uuid::Uuid;

pub use model::*;

/// What can go wrong with a read store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("read store failed while {action}")]
    Sqlite {
        action: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// A pagination cursor that names no message of the conversation.
    #[error("the cursor {0} is not a message of this conversation or channel")]
    UnknownCursor(Uuid),
    /// A pagination cursor that is not one this store handed out.
    #[error("the cursor {0:?} is not a valid cursor; pass back a `next` value unchanged")]
    InvalidCursor(String),
    #[error("the read store holds a value it cannot read: {0}")]
    Corrupt(String),
    #[error("the read store is unavailable: {0}")]
    Unavailable(String),
    /// A request to the Scylla store failed (after the driver's own retries).
    #[error("read store failed while {action}: {reason}")]
    Scylla {
        action: &'static str,
        /// Timeouts, unavailable replicas, overload, lost connections.
        transient: bool,
        reason: String,
    },
    /// The store's schema is missing or older than this build needs.
    #[error("the read store's schema is not ready: {0}")]
    Schema(String),
}

impl StoreError {
    /// Whether trying again later may succeed (busy, locked, I/O, unreachable), as opposed to
    /// a refusal of the change itself (a constraint it breaks), which will fail every time.
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
                DatabaseBusy
                    | DatabaseLocked
                    | SystemIoFailure
                    | DiskFull
                    | CannotOpen
                    | OutOfMemory
                    | FileLockingProtocolFailed
            ),
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How long the read models keep messages (direct and channel messages): forever (the
/// default), or a number of days.
///
/// A message expires once its send time (as stored: made monotonic within its conversation or
/// channel) is at or before `now - period`. An expired message is not stored when projected,
/// and a stored one is removed when it expires (Scylla: its rows carry `USING TTL` of the time
/// it has left; SQLite: [`sqlite::SqliteStore::sweep_expired`]). With it go every row derived
/// from it: its feed entry, pending entry, hidden mark, idempotency key (a send retried with
/// the same `client_msg_id` after that is a new message) and its share of unread counts.
///
/// What stays: the conversation (participants, both list entries with their last activity
/// time, its sequence numbers, which keep counting from where they were) and the channel
/// (its last seq); a list entry whose latest message expired has no `last_message`. Posts
/// are not messages and are kept forever. Read markers on expired messages are reset (they
/// make no difference to what is left).
#[derive(Clone)]
pub struct Retention {
    period: Option<chrono::TimeDelta>,
    clock: Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>,
}

impl std::fmt::Debug for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retention")
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

impl Default for Retention {
    fn default() -> Self {
        Retention::forever()
    }
}

impl Retention {
    /// The longest period accepted, in days: Scylla's TTLs end at 20 years.
    pub const MAX_DAYS: u32 = 7_300;

    /// Messages are kept forever.
    pub fn forever() -> Self {
        Retention {
            period: None,
            clock: Arc::new(Utc::now),
        }
    }

    /// Messages are kept for `days` days; 0 keeps them forever (`--retention-days`).
    pub fn days(days: u32) -> Result<Self, String> {
        if days > Self::MAX_DAYS {
            return Err(format!(
                "a retention of {days} days is longer than the longest supported, {} days \
                 (0 keeps messages forever)",
                Self::MAX_DAYS
            ));
        }
        Ok(Retention {
            period: (days > 0).then(|| chrono::TimeDelta::days(i64::from(days))),
            ..Retention::forever()
        })
    }

    /// Reads the time from `clock` instead of the system clock: for tests, which pin `now`.
    pub fn with_clock(self, clock: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Self {
        Retention {
            clock: Arc::new(clock),
            ..self
        }
    }

    /// How long messages are kept; `None` is forever.
    pub fn period(&self) -> Option<std::time::Duration> {
        self.period.and_then(|p| p.to_std().ok())
    }

    /// The time by the retention's clock.
    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// Messages sent at or before this time have expired at `now`; `None` when kept forever.
    pub fn cutoff(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.period.map(|p| now - p)
    }

    /// Whether a message sent at `sent_at` has expired at `now`.
    pub fn expired(&self, sent_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        self.cutoff(now).is_some_and(|c| sent_at <= c)
    }

    /// The TTL (seconds, rounded up) a message sent at `sent_at` is stored with at `now`:
    /// `Some(None)` when kept forever, `None` when it has expired already.
    pub fn ttl_seconds(&self, sent_at: DateTime<Utc>, now: DateTime<Utc>) -> Option<Option<i32>> {
        let Some(period) = self.period else {
            return Some(None);
        };
        // A time near the end of chrono's range (a record written by another producer) must
        // not overflow: it expires never, as far as a TTL can say.
        let left = sent_at
            .checked_add_signed(period)
            .and_then(|end| (end - now).num_microseconds())
            .unwrap_or(i64::MAX);
        if left <= 0 {
            return None;
        }
        let seconds = (left.saturating_add(999_999) / 1_000_000).min(i64::from(i32::MAX));
        Some(Some(seconds as i32))
    }
}

/// Starts timing one read-store call in `missive_store_query_duration_seconds`: the time is
/// recorded when the timer is dropped, whether the call succeeded, failed or was cancelled.
/// `statement` is a fixed name (the [`ReadStore`] method), never query text or user data.
pub(crate) fn query_timer(
    backend: &'static str,
    statement: &'static str,
) -> prometheus::HistogramTimer {
    missive_telemetry::metrics()
        .store_query_seconds
        .with_label_values(&[backend, statement])
        .start_timer()
}

/// The read-model port. Implementations: [`sqlite::SqliteStore`] (embedded), Scylla.
#[async_trait]
pub trait ReadStore: Send + Sync + 'static {
    /// Applies `changes` in order and records `checkpoint` (per partition, the next offset to
    /// read) for `projection`, so that a restarted projector resumes exactly after them.
    async fn apply(
        &self,
        projection: &str,
        changes: Vec<Change>,
        checkpoint: Vec<Position>,
    ) -> Result<()>;

    /// The checkpoints `projection` recorded, one per partition it has seen.
    async fn checkpoints(&self, projection: &str) -> Result<Vec<Position>>;

    /// The read-model tables by name, for comparing two stores row by row (`missive replay
    /// --verify`): every table the projection writes except the checkpoints (compared apart,
    /// per projection), nor the stores' own bookkeeping (schema versions, other consumers'
    /// tables).
    async fn tables(&self) -> Result<Vec<String>>;

    /// Every row of one of [`ReadStore::tables`], each as one line of text (its columns in
    /// the table's order), sorted. Reads the whole table into memory.
    async fn table_rows(&self, table: &str) -> Result<Vec<String>>;

    async fn user(&self, id: Uuid) -> Result<Option<User>>;

    /// Looks a user up by username, ignoring case.
    async fn user_by_username(&self, username: &str) -> Result<Option<User>>;

    async fn friendship(&self, a: Uuid, b: Uuid) -> Result<FriendshipState>;

    /// Friends and pending requests in both directions, most recent first.
    async fn friends(&self, user: Uuid) -> Result<Vec<FriendEntry>>;

    /// The user's conversations, latest activity first. `cursor` is a previous page's `next`.
    async fn conversations(
        &self,
        user: Uuid,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Conversation>>;

    /// The two participants of a conversation that has at least one message.
    async fn participants(&self, conversation: Uuid) -> Result<Option<(Uuid, Uuid)>>;

    /// A page of a conversation's history as `viewer` sees it (hidden messages left out).
    /// `next` is the message id to pass as `before` (descending) or `after` (ascending).
    async fn history(
        &self,
        viewer: Uuid,
        conversation: Uuid,
        query: HistoryQuery,
    ) -> Result<Page<Message>>;

    /// Every message sent by or to `user` at or after `since`, across conversations, in the
    /// order they reached the read models, hidden ones left out. `after` is a previous
    /// answer's `next` or `resume`.
    async fn messages_since(
        &self,
        user: Uuid,
        since: DateTime<Utc>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<FeedPage>;

    /// One message, as `viewer` sees it (`None` if unknown or hidden from them).
    async fn message(&self, viewer: Uuid, message_id: Uuid) -> Result<Option<Message>>;

    /// The message a sender sent with this idempotency key, if any.
    async fn message_by_client_id(
        &self,
        sender: Uuid,
        client_msg_id: &str,
    ) -> Result<Option<Message>>;

    /// Messages sent to `user` that are still pending: no device of theirs acknowledged them,
    /// their read marker has not passed them, and they are neither hidden from them nor deleted
    /// for everyone. Oldest first (sent time, then conversation id, then seq); `after` is a
    /// previous page's `next`.
    async fn pending(&self, user: Uuid, after: Option<&str>, limit: usize)
    -> Result<Page<Message>>;

    /// Every user the read models show `online`. A scan of all users: for recovery at
    /// start-up (a process that died left its users online), not for requests.
    async fn online_users(&self) -> Result<Vec<Uuid>>;

    /// Every account that is not active (blocked or deleted), with its standing: few, read
    /// whole at start-up so commands check standing without a read each.
    async fn restricted_accounts(&self) -> Result<Vec<(Uuid, AccountStatus)>>;

    // ----- servers (communities) -----

    async fn server(&self, id: Uuid) -> Result<Option<Server>>;

    /// The server with this name, ignoring case ([`server_name_key`]).
    async fn server_by_name(&self, name: &str) -> Result<Option<Server>>;

    /// Public servers matching `search`, by [`server_name_key`] then id. `after` is a previous
    /// page's `next` (the last server's id).
    async fn search_servers(
        &self,
        search: &ServerSearch,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Server>>;

    /// The servers `user` owns or is subscribed to, by server id. `after` is a previous page's
    /// `next` (the last server's id).
    async fn user_servers(
        &self,
        user: Uuid,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<UserServer>>;

    /// What `user` is to `server`: `None` if neither owner nor subscribed.
    async fn membership(&self, server: Uuid, user: Uuid) -> Result<Option<ServerRole>>;

    async fn invitation(&self, invitation_id: Uuid) -> Result<Option<Invitation>>;

    /// The pending invitation of `invitee` to `server`, if any (at most one is pending).
    async fn pending_invitation(&self, server: Uuid, invitee: Uuid) -> Result<Option<Invitation>>;

    /// The invitations waiting for `invitee`'s answer, newest first. `after` is a previous
    /// page's `next` (the last invitation's id).
    async fn pending_invitations(
        &self,
        invitee: Uuid,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Invitation>>;

    /// A server's posts, newest first. `before` is a previous page's `next` (the last post's
    /// id).
    async fn posts(&self, server: Uuid, before: Option<&str>, limit: usize) -> Result<Page<Post>>;

    /// The server's channels (not deleted ones), by name, with `viewer`'s unread counts.
    async fn channels(&self, server: Uuid, viewer: Uuid) -> Result<Vec<ChannelSummary>>;

    /// A channel, unless unknown or deleted.
    async fn channel(&self, channel: Uuid) -> Result<Option<Channel>>;

    /// The channel `user` is in, unless none (or it was deleted).
    async fn current_channel(&self, user: Uuid) -> Result<Option<Channel>>;

    /// The users in a channel, by id. `after` is a previous page's `next` (the last user id).
    async fn channel_members(
        &self,
        channel: Uuid,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Uuid>>;

    /// A page of a channel's messages, with the same `query` rules as [`ReadStore::history`];
    /// `client_msg_id` is shown to `viewer` only on their own messages.
    async fn channel_history(
        &self,
        viewer: Uuid,
        channel: Uuid,
        query: HistoryQuery,
    ) -> Result<Page<ChannelMessage>>;

    /// The channel message a sender sent with this idempotency key, if any.
    async fn channel_message_by_client_id(
        &self,
        sender: Uuid,
        client_msg_id: &str,
    ) -> Result<Option<ChannelMessage>>;

    /// One channel message as `viewer` sees it (`client_msg_id` only for its sender), unless
    /// unknown.
    async fn channel_message(
        &self,
        viewer: Uuid,
        message_id: Uuid,
    ) -> Result<Option<ChannelMessage>>;

    /// The latest message of a channel, if any.
    async fn latest_channel_message(&self, channel: Uuid) -> Result<Option<ChannelMessage>>;
}

/// The two users of a pair in a fixed order (smaller id first).
pub(crate) fn ordered(a: Uuid, b: Uuid) -> (Uuid, Uuid) {
    if a <= b { (a, b) } else { (b, a) }
}

/// A page of `limit` items from `items` (fetched with one extra to learn whether more follow),
/// with the cursor of its last item when they do.
pub(crate) fn page<T>(mut items: Vec<T>, limit: usize, cursor: impl Fn(&T) -> String) -> Page<T> {
    let more = items.len() > limit;
    items.truncate(limit);
    let next = if more { items.last().map(cursor) } else { None };
    Page { items, next }
}

/// A conversation-list cursor: `<last activity in microseconds>.<conversation id>`.
pub(crate) fn conversation_cursor(c: &Conversation) -> String {
    format!(
        "{}.{}",
        c.last_activity_at.timestamp_micros(),
        c.conversation_id
    )
}

/// A pending-messages cursor: `<sent time in microseconds>.<conversation id>.<seq>`, the
/// order [`ReadStore::pending`] pages in.
pub(crate) fn pending_cursor(m: &Message) -> String {
    format!(
        "{}.{}.{}",
        m.sent_at.timestamp_micros(),
        m.conversation_id,
        m.seq
    )
}

/// Reads a [`pending_cursor`]: (sent time in microseconds, conversation id, seq).
pub(crate) fn parse_pending_cursor(cursor: &str) -> Result<(i64, Uuid, i64)> {
    let mut parts = cursor.splitn(3, '.');
    let parsed = (|| {
        let t = parts.next()?.parse().ok()?;
        let id = Uuid::parse_str(parts.next()?).ok()?;
        let seq = parts.next()?.parse().ok().filter(|s: &i64| *s >= 0)?;
        Some((t, id, seq))
    })();
    parsed.ok_or_else(|| StoreError::InvalidCursor(cursor.to_owned()))
}

/// Reads a [`conversation_cursor`]: (activity in microseconds, conversation id).
pub(crate) fn parse_conversation_cursor(cursor: &str) -> Result<(i64, Uuid)> {
    let parsed = cursor
        .split_once('.')
        .and_then(|(t, id)| Some((t.parse().ok()?, Uuid::parse_str(id).ok()?)));
    parsed.ok_or_else(|| StoreError::InvalidCursor(cursor.to_owned()))
}
