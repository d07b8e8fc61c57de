//! Read-model types: what queries return and what projections change.

use chrono::{DateTime, Utc};
use missive_log::Position;
use uuid::Uuid;

/// A user's profile with presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub display_name: String,
    pub registered_at: DateTime<Utc>,
    pub online: bool,
    /// When the user was last seen online (the time of their latest presence change).
    pub last_seen: Option<DateTime<Utc>>,
}

pub use missive_domain::FriendshipState;

/// One entry of a user's friend list, seen from that user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FriendEntry {
    pub user: User,
    pub relation: Relation,
    pub since: DateTime<Utc>,
}

/// How another user relates to me.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    Friend,
    /// They asked me.
    IncomingRequest,
    /// I asked them.
    OutgoingRequest,
}

/// Where a message is on its way to the recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageStatus {
    /// Stored durably; no recipient device has it yet.
    Pending,
    /// A recipient device acknowledged it.
    Delivered,
    /// The recipient's read marker passed it.
    Read,
}

/// A message as a participant sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    /// Position in the conversation, 1-based, assigned in log order.
    pub seq: u64,
    pub sender_id: Uuid,
    pub recipient_id: Uuid,
    /// `None` once deleted for everyone (a tombstone).
    pub text: Option<String>,
    pub client_msg_id: Option<String>,
    pub sent_at: DateTime<Utc>,
    pub deleted_for_everyone: bool,
    pub status: MessageStatus,
    /// Where the `MessageSent` event sits in the log.
    pub position: Position,
}

/// One entry of a user's conversation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub conversation_id: Uuid,
    pub peer: User,
    pub last_message: Option<Message>,
    pub unread_count: u64,
    pub last_activity_at: DateTime<Utc>,
}

/// A page of results and the cursor of the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// A page of a user's catch-up feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPage {
    pub items: Vec<Message>,
    /// The cursor of the next page, `None` on the last one.
    pub next: Option<String>,
    /// A cursor just after everything this answer covered: pass it later to receive only
    /// messages that reached the read models since, whatever their timestamps.
    pub resume: String,
}

/// Which slice of a conversation's history to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistoryQuery {
    /// Only messages older than this one; newest first.
    pub before: Option<Uuid>,
    /// Only messages newer than this one; oldest first unless `before` is given.
    pub after: Option<Uuid>,
    /// Only messages sent at or after this time; oldest first unless `before` is given.
    pub since: Option<DateTime<Utc>>,
    pub limit: usize,
}

impl HistoryQuery {
    /// Oldest first when reading forward (`after` or `since` without `before`).
    pub fn ascending(&self) -> bool {
        self.before.is_none() && (self.after.is_some() || self.since.is_some())
    }
}

/// A read-model change produced by a projection. Every change is idempotent: applying it again,
/// or applying an older change after a newer one of the same row (guarded by `version`, the log
/// offset of the event, which is comparable between events of one partition key), leaves the
/// read models as they were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Creates the user unless they exist.
    AddUser {
        user_id: Uuid,
        username: String,
        display_name: String,
        registered_at: DateTime<Utc>,
    },
    /// Sets the display name if `version` is newer than the profile's.
    SetDisplayName {
        user_id: Uuid,
        display_name: String,
        version: u64,
    },
    /// Sets presence if `version` is newer; `last_seen` only moves forward.
    SetPresence {
        user_id: Uuid,
        online: bool,
        at: DateTime<Utc>,
        version: u64,
    },
    /// Sets the pair's relationship if `version` is newer than the stored one.
    SetFriendship {
        a: Uuid,
        b: Uuid,
        state: FriendshipState,
        at: DateTime<Utc>,
        version: u64,
    },
    /// Stores a message unless its id is known: gives it the conversation's next sequence
    /// number, makes it both participants' latest message and counts it unread for the
    /// recipient.
    AddMessage {
        message_id: Uuid,
        conversation_id: Uuid,
        sender_id: Uuid,
        recipient_id: Uuid,
        text: String,
        client_msg_id: Option<String>,
        sent_at: DateTime<Utc>,
        position: Position,
    },
    /// Moves the reader's marker forward to `up_to` (never back) and recounts their unread
    /// messages.
    MarkRead {
        conversation_id: Uuid,
        reader_id: Uuid,
        up_to: Uuid,
    },
    /// Hides a message from one user; it stops counting as unread for them.
    HideMessage { user_id: Uuid, message_id: Uuid },
    /// Turns a message into a tombstone without text; it stops counting as unread.
    TombstoneMessage { message_id: Uuid },
    /// A device of the recipient acknowledged the message: its status becomes `delivered`
    /// (unless read) and it stops being pending for them. Ignored unless `recipient_id` is the
    /// message's recipient.
    MarkDelivered {
        message_id: Uuid,
        recipient_id: Uuid,
    },
}
