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
    /// The account's standing (active, blocked by an operator, or deleted).
    pub account: AccountStatus,
}

pub use missive_events::AccountStatus;

/// The username a deleted account is listed under: its personal data is gone, and the name it
/// had is free again. Longer than any username may be, so it never collides with one.
pub fn deleted_username(user_id: Uuid) -> String {
    format!("deleted-{}", user_id.simple())
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
    /// The latest message the user can see; `None` if it expired ([`crate::Retention`]).
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
    /// Sets the account's standing if `version` is newer and the account is not deleted.
    /// Deleting also scrubs the profile: the username becomes [`deleted_username`] (freeing the
    /// old one) and the display name empty, for good (no older profile change applies after).
    SetAccountStatus {
        user_id: Uuid,
        status: AccountStatus,
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
    /// Servers, invitations, posts and channels.
    Community(CommunityChange),
}

pub use missive_events::Visibility;

/// A server (community).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub server_id: Uuid,
    pub owner_id: Uuid,
    pub name: String,
    /// Lower-case, without duplicates, in the order given at creation.
    pub tags: Vec<String>,
    pub visibility: Visibility,
    pub created_at: DateTime<Utc>,
}

/// The key server names are unique and searched by: [`str::to_lowercase`] (Unicode-aware, so
/// `"Élan"` and `"élan"` are the same name).
pub fn server_name_key(name: &str) -> String {
    name.to_lowercase()
}

/// What a user is to a server they belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerRole {
    Owner,
    Subscriber,
}

/// One entry of a user's server list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserServer {
    pub server: Server,
    pub role: ServerRole,
    /// When they created or subscribed to it (the latest subscription).
    pub since: DateTime<Utc>,
}

/// A server search. Only public servers are found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerSearch {
    /// Matched against [`server_name_key`] of the name: a query of one or two characters
    /// matches names that start with it, a longer one names that contain it. Already
    /// lower-cased by [`server_name_key`]; `None` matches every name.
    pub name: Option<String>,
    /// Every tag must be among the server's (tags are lower-case). At least one of `name` and
    /// `tags` is given.
    pub tags: Vec<String>,
}

/// Where an invitation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvitationState {
    Pending,
    Accepted,
    Declined,
}

/// An invitation to a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    pub invitation_id: Uuid,
    pub server_id: Uuid,
    /// The server's name, so an invitee who cannot see a private server knows where to.
    pub server_name: String,
    pub inviter_id: Uuid,
    pub invitee_id: Uuid,
    pub sent_at: DateTime<Utc>,
    pub state: InvitationState,
    /// When it was accepted or declined.
    pub answered_at: Option<DateTime<Utc>>,
}

/// A post the owner published on a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    /// UUIDv7: posts are ordered by it (newest first).
    pub post_id: Uuid,
    pub server_id: Uuid,
    pub author_id: Uuid,
    pub content: String,
    pub tags: Vec<String>,
    pub published_at: DateTime<Utc>,
    /// Where the `PostPublished` event sits in the log.
    pub position: Position,
}

/// A channel of a server. Deleted channels are never returned by queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub channel_id: Uuid,
    pub server_id: Uuid,
    pub name: String,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
}

/// A channel with one viewer's read state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSummary {
    pub channel: Channel,
    /// The seq of the channel's latest message, 0 if it has none.
    pub last_seq: u64,
    /// When its latest message was sent.
    pub last_message_at: Option<DateTime<Utc>>,
    /// Messages after the viewer's read marker: `last_seq` minus the marker's seq (or minus
    /// the seq of the latest expired message, if later: see [`crate::Retention`]).
    pub unread_count: u64,
}

/// A message sent to a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelMessage {
    pub message_id: Uuid,
    pub server_id: Uuid,
    pub channel_id: Uuid,
    /// Position in the channel, 1-based, assigned in log order.
    pub seq: u64,
    pub sender_id: Uuid,
    pub text: String,
    /// Only the sender sees it (queries for others return `None`).
    pub client_msg_id: Option<String>,
    pub sent_at: DateTime<Utc>,
    /// Where the `ChannelMessageSent` event sits in the log.
    pub position: Position,
}

/// The community read-model changes (servers, invitations, posts, channels). Every one is
/// idempotent like [`Change`]'s; `version` is the log offset of the event, comparable between
/// events of one partition key (for [`CommunityChange::SetSubscription`] the server, for
/// [`CommunityChange::JoinChannel`] and [`CommunityChange::LeaveChannel`] the user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommunityChange {
    /// Creates the server unless it exists (a second server with a taken name is ignored: the
    /// first keeps the name), with its owner as a member of role [`ServerRole::Owner`].
    AddServer {
        server_id: Uuid,
        owner_id: Uuid,
        name: String,
        tags: Vec<String>,
        visibility: Visibility,
        created_at: DateTime<Utc>,
    },
    /// Subscribes or unsubscribes a user if `version` is newer than the subscription's; never
    /// changes the owner's membership.
    SetSubscription {
        server_id: Uuid,
        user_id: Uuid,
        subscribed: bool,
        at: DateTime<Utc>,
        version: u64,
    },
    /// Records a pending invitation unless its id is known.
    AddInvitation {
        invitation_id: Uuid,
        server_id: Uuid,
        inviter_id: Uuid,
        invitee_id: Uuid,
        sent_at: DateTime<Utc>,
    },
    /// Answers a pending invitation; an answered one keeps its first answer.
    AnswerInvitation {
        invitation_id: Uuid,
        accepted: bool,
        at: DateTime<Utc>,
    },
    /// Stores a post unless its id is known.
    AddPost {
        post_id: Uuid,
        server_id: Uuid,
        author_id: Uuid,
        content: String,
        tags: Vec<String>,
        published_at: DateTime<Utc>,
        position: Position,
    },
    /// Creates a channel unless its id is known (a deleted channel stays deleted).
    AddChannel {
        channel_id: Uuid,
        server_id: Uuid,
        name: String,
        created_by: Uuid,
        created_at: DateTime<Utc>,
    },
    /// Deletes a channel: it is kept as a tombstone (its name is free again), so that a
    /// membership projected later from another partition cannot bring it back; queries leave
    /// it out, and users in it are in no channel.
    DeleteChannel { channel_id: Uuid, server_id: Uuid },
    /// Puts the user in the channel (and out of any other) if `version` is newer than their
    /// channel membership's. The channel may not be known yet (another partition): it is
    /// recorded anyway and shows once the channel is.
    JoinChannel {
        user_id: Uuid,
        server_id: Uuid,
        channel_id: Uuid,
        at: DateTime<Utc>,
        version: u64,
    },
    /// Takes the user out of `channel_id` if they are in it and `version` is newer.
    LeaveChannel {
        user_id: Uuid,
        channel_id: Uuid,
        version: u64,
    },
    /// Stores a channel message unless its id is known, with the channel's next seq.
    AddChannelMessage {
        message_id: Uuid,
        server_id: Uuid,
        channel_id: Uuid,
        sender_id: Uuid,
        text: String,
        client_msg_id: Option<String>,
        sent_at: DateTime<Utc>,
        position: Position,
    },
    /// Moves the reader's marker in the channel forward to `up_to` (never back; an unknown
    /// message changes nothing).
    MarkChannelRead {
        channel_id: Uuid,
        reader_id: Uuid,
        up_to: Uuid,
    },
}
