//! Missive's events: the immutable facts every command turns into.
//!
//! This crate has no I/O and no async runtime. It defines the event payloads ([`Event`]), the
//! envelope that carries them through the log ([`Envelope`]), the identifiers derived from them
//! (conversation ids, partition keys, streams), and the Avro single-object codec ([`codec`]) with
//! the schema registry compiled in from `schemas/*.avsc`.
//!
//! # Layout
//! - [`ids`]: deterministic identifiers (direct conversation ids, friendship pair keys).
//! - [`codec`]: Avro single-object encoding and decoding, resolving old schema versions.

pub mod codec;
pub mod ids;

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use codec::{CodecError, decode, encode};

/// The event log streams. Each stream is one Kafka topic in production; events of one
/// partition key always go to the same stream, so their order is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Message events, keyed by conversation.
    Messages,
    /// Registration, profiles and friendships, keyed by user or user pair.
    Social,
    /// Presence changes, keyed by user.
    Presence,
    /// Requests for push notifications to users with no live session, keyed by user; read by
    /// an external push-notification service, never projected.
    Notifications,
    /// Servers (communities): creation, subscriptions, invitations, posts and channels, keyed
    /// by server; channel membership keyed by user.
    Communities,
}

impl Stream {
    /// Every stream, in a fixed order.
    /// New streams go at the end: a stream's index numbers its Kafka partitions.
    pub const ALL: [Stream; 5] = [
        Stream::Messages,
        Stream::Social,
        Stream::Presence,
        Stream::Notifications,
        Stream::Communities,
    ];

    /// The stream's short name (the Kafka topic suffix).
    pub fn name(self) -> &'static str {
        match self {
            Stream::Messages => "messages",
            Stream::Social => "social",
            Stream::Presence => "presence",
            Stream::Notifications => "notifications",
            Stream::Communities => "communities",
        }
    }
}

/// Why a friendship (or a request for one) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalReason {
    /// The addressee turned down a pending request.
    Declined,
    /// The requester withdrew a pending request.
    Cancelled,
    /// One side ended an accepted friendship.
    Unfriended,
}

/// Whose view a deletion changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteScope {
    /// Hidden for the deleting user only.
    ForMe,
    /// Replaced by a tombstone for every participant (sender only).
    ForEveryone,
}

/// Online status as reported by a client or decided by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Online,
    Offline,
}

/// An account's standing, set by an operator. (Whether the user is online is [`Presence`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    /// May use Missive (the state every account starts in).
    Active,
    /// Commands are refused and nobody can message the user, until unblocked.
    Blocked,
    /// Gone for good: the key sealing the user's personal data is destroyed.
    Deleted,
}

/// Who may read a server's posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// Anyone signed in.
    Public,
    /// Subscribers only (and the owner).
    Private,
}

/// Why a user left a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelLeaveReason {
    /// They left it.
    Left,
    /// They joined another channel: a user is in at most one channel at a time.
    Switched,
    /// They unsubscribed from the channel's server.
    Unsubscribed,
}

/// What a push notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationKind {
    /// A direct message arrived while the recipient had no live session.
    Message,
    /// The user was invited to a server (schema version 2).
    Invitation,
}

/// How an invitation to a server was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvitationOutcome {
    /// The invitee subscribed.
    Accepted,
    Declined,
}

/// Everything that can happen in Missive. Each variant is one Avro record type in `schemas/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    UserRegistered {
        user_id: Uuid,
        username: String,
        display_name: String,
    },
    ProfileUpdated {
        user_id: Uuid,
        display_name: String,
    },
    FriendRequested {
        requester_id: Uuid,
        addressee_id: Uuid,
    },
    FriendRequestAccepted {
        requester_id: Uuid,
        addressee_id: Uuid,
    },
    /// Covers decline, cancel and unfriend; `removed_by` is the user who acted.
    FriendshipRemoved {
        removed_by: Uuid,
        other_id: Uuid,
        reason: RemovalReason,
    },
    MessageSent {
        message_id: Uuid,
        conversation_id: Uuid,
        sender_id: Uuid,
        recipient_id: Uuid,
        text: String,
        /// The client's idempotency key, added in schema version 2.
        client_msg_id: Option<String>,
    },
    /// The reader has read everything in the conversation up to and including `up_to`.
    MessagesRead {
        conversation_id: Uuid,
        reader_id: Uuid,
        up_to: Uuid,
    },
    MessageDeleted {
        message_id: Uuid,
        conversation_id: Uuid,
        deleted_by: Uuid,
        scope: DeleteScope,
    },
    /// A device of the recipient acknowledged the message: it was delivered.
    MessageDelivered {
        message_id: Uuid,
        conversation_id: Uuid,
        sender_id: Uuid,
        recipient_id: Uuid,
    },
    /// A user with no live session should be told of something by a push notification.
    NotificationRequested {
        user_id: Uuid,
        kind: NotificationKind,
        /// Where: the conversation for [`NotificationKind::Message`], the server for
        /// [`NotificationKind::Invitation`].
        subject_id: Uuid,
        /// What: the message, or the invitation.
        item_id: Uuid,
        /// Who: the sender, or the inviter.
        from_id: Uuid,
    },
    PresenceChanged {
        user_id: Uuid,
        status: Presence,
    },
    /// An operator blocked, unblocked or deleted an account (the envelope's actor).
    AccountStatusChanged {
        user_id: Uuid,
        status: AccountStatus,
    },
    /// A server (community) was created; its owner is subscribed from the start.
    ServerCreated {
        server_id: Uuid,
        owner_id: Uuid,
        name: String,
        tags: Vec<String>,
        visibility: Visibility,
    },
    ServerSubscribed {
        server_id: Uuid,
        user_id: Uuid,
    },
    ServerUnsubscribed {
        server_id: Uuid,
        user_id: Uuid,
    },
    /// One pending invitation per server and invitee.
    ServerInvitationSent {
        invitation_id: Uuid,
        server_id: Uuid,
        inviter_id: Uuid,
        invitee_id: Uuid,
    },
    /// The invitee accepted (a `ServerSubscribed` follows) or declined.
    ServerInvitationAnswered {
        invitation_id: Uuid,
        server_id: Uuid,
        invitee_id: Uuid,
        outcome: InvitationOutcome,
    },
    /// The owner published a post on the server.
    PostPublished {
        post_id: Uuid,
        server_id: Uuid,
        author_id: Uuid,
        content: String,
        tags: Vec<String>,
    },
    ChannelCreated {
        channel_id: Uuid,
        server_id: Uuid,
        name: String,
        created_by: Uuid,
    },
    /// The channel is gone; its members are no longer in it (no event per member).
    ChannelDeleted {
        channel_id: Uuid,
        server_id: Uuid,
        deleted_by: Uuid,
    },
    ChannelJoined {
        user_id: Uuid,
        server_id: Uuid,
        channel_id: Uuid,
    },
    ChannelLeft {
        user_id: Uuid,
        server_id: Uuid,
        channel_id: Uuid,
        reason: ChannelLeaveReason,
    },
    ChannelMessageSent {
        message_id: Uuid,
        server_id: Uuid,
        channel_id: Uuid,
        sender_id: Uuid,
        text: String,
        client_msg_id: Option<String>,
    },
    /// The reader has read everything in the channel up to and including `up_to`.
    ChannelMessagesRead {
        server_id: Uuid,
        channel_id: Uuid,
        reader_id: Uuid,
        up_to: Uuid,
    },
}

impl Event {
    /// The Avro record name of this event, also sent as the `event_type` header.
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::UserRegistered { .. } => "UserRegistered",
            Event::ProfileUpdated { .. } => "ProfileUpdated",
            Event::FriendRequested { .. } => "FriendRequested",
            Event::FriendRequestAccepted { .. } => "FriendRequestAccepted",
            Event::FriendshipRemoved { .. } => "FriendshipRemoved",
            Event::MessageSent { .. } => "MessageSent",
            Event::MessagesRead { .. } => "MessagesRead",
            Event::MessageDeleted { .. } => "MessageDeleted",
            Event::MessageDelivered { .. } => "MessageDelivered",
            Event::NotificationRequested { .. } => "NotificationRequested",
            Event::PresenceChanged { .. } => "PresenceChanged",
            Event::AccountStatusChanged { .. } => "AccountStatusChanged",
            Event::ServerCreated { .. } => "ServerCreated",
            Event::ServerSubscribed { .. } => "ServerSubscribed",
            Event::ServerUnsubscribed { .. } => "ServerUnsubscribed",
            Event::ServerInvitationSent { .. } => "ServerInvitationSent",
            Event::ServerInvitationAnswered { .. } => "ServerInvitationAnswered",
            Event::PostPublished { .. } => "PostPublished",
            Event::ChannelCreated { .. } => "ChannelCreated",
            Event::ChannelDeleted { .. } => "ChannelDeleted",
            Event::ChannelJoined { .. } => "ChannelJoined",
            Event::ChannelLeft { .. } => "ChannelLeft",
            Event::ChannelMessageSent { .. } => "ChannelMessageSent",
            Event::ChannelMessagesRead { .. } => "ChannelMessagesRead",
        }
    }

    /// The stream (topic) the event belongs to.
    pub fn stream(&self) -> Stream {
        match self {
            Event::MessageSent { .. }
            | Event::MessagesRead { .. }
            | Event::MessageDeleted { .. }
            | Event::MessageDelivered { .. }
            | Event::ChannelMessageSent { .. }
            | Event::ChannelMessagesRead { .. } => Stream::Messages,
            Event::PresenceChanged { .. } => Stream::Presence,
            Event::NotificationRequested { .. } => Stream::Notifications,
            Event::ServerCreated { .. }
            | Event::ServerSubscribed { .. }
            | Event::ServerUnsubscribed { .. }
            | Event::ServerInvitationSent { .. }
            | Event::ServerInvitationAnswered { .. }
            | Event::PostPublished { .. }
            | Event::ChannelCreated { .. }
            | Event::ChannelDeleted { .. }
            | Event::ChannelJoined { .. }
            | Event::ChannelLeft { .. } => Stream::Communities,
            Event::UserRegistered { .. }
            | Event::ProfileUpdated { .. }
            | Event::AccountStatusChanged { .. }
            | Event::FriendRequested { .. }
            | Event::FriendRequestAccepted { .. }
            | Event::FriendshipRemoved { .. } => Stream::Social,
        }
    }

    /// The two users a friendship event is about (acting user first), `None` for other events.
    pub fn friendship_pair(&self) -> Option<(Uuid, Uuid)> {
        match self {
            Event::FriendRequested {
                requester_id: a,
                addressee_id: b,
            }
            | Event::FriendRequestAccepted {
                requester_id: a,
                addressee_id: b,
            }
            | Event::FriendshipRemoved {
                removed_by: a,
                other_id: b,
                ..
            } => Some((*a, *b)),
            _ => None,
        }
    }

    /// The partition key: the conversation for message events, the user for presence,
    /// profile and notification events, the unordered user pair for friendship events; the
    /// server for server, post and channel events, the channel for channel messages and read
    /// markers, and the user for joining and leaving channels (a user is in one channel at a
    /// time, across servers, so their moves stay in order).
    pub fn partition_key(&self) -> String {
        if let Some((a, b)) = self.friendship_pair() {
            return ids::pair_key(a, b);
        }
        match self {
            Event::MessageSent {
                conversation_id, ..
            }
            | Event::MessagesRead {
                conversation_id, ..
            }
            | Event::MessageDeleted {
                conversation_id, ..
            }
            | Event::MessageDelivered {
                conversation_id, ..
            } => conversation_id.to_string(),
            Event::UserRegistered { user_id, .. }
            | Event::NotificationRequested { user_id, .. }
            | Event::ProfileUpdated { user_id, .. }
            | Event::PresenceChanged { user_id, .. }
            | Event::AccountStatusChanged { user_id, .. } => user_id.to_string(),
            Event::FriendRequested { requester_id, .. }
            | Event::FriendRequestAccepted { requester_id, .. } => requester_id.to_string(),
            Event::FriendshipRemoved { removed_by, .. } => removed_by.to_string(),
            Event::ServerCreated { server_id, .. }
            | Event::ServerSubscribed { server_id, .. }
            | Event::ServerUnsubscribed { server_id, .. }
            | Event::ServerInvitationSent { server_id, .. }
            | Event::ServerInvitationAnswered { server_id, .. }
            | Event::PostPublished { server_id, .. }
            | Event::ChannelCreated { server_id, .. }
            | Event::ChannelDeleted { server_id, .. } => server_id.to_string(),
            Event::ChannelMessageSent { channel_id, .. }
            | Event::ChannelMessagesRead { channel_id, .. } => channel_id.to_string(),
            Event::ChannelJoined { user_id, .. } | Event::ChannelLeft { user_id, .. } => {
                user_id.to_string()
            }
        }
    }
}

/// An event with the metadata every consumer needs. This is what the log stores, Avro-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// UUIDv7: unique and time-ordered.
    pub event_id: Uuid,
    /// When the command was decided, UTC, microsecond precision.
    pub occurred_at: DateTime<Utc>,
    /// The user whose command caused the event.
    pub actor_id: Uuid,
    /// Ties together the events of one request.
    pub correlation_id: Uuid,
    pub event: Event,
}

impl Envelope {
    /// Wraps an event decided now for `actor_id`. The time is truncated to microseconds, the
    /// precision the Avro schema keeps, so an envelope survives an encode/decode round trip.
    pub fn new(event: Event, actor_id: Uuid, correlation_id: Uuid, now: DateTime<Utc>) -> Self {
        Envelope {
            event_id: Uuid::now_v7(),
            occurred_at: truncate_to_micros(now),
            actor_id,
            correlation_id,
            event,
        }
    }

    pub fn event_type(&self) -> &'static str {
        self.event.event_type()
    }

    pub fn partition_key(&self) -> String {
        self.event.partition_key()
    }

    pub fn stream(&self) -> Stream {
        self.event.stream()
    }
}

/// Drops sub-microsecond precision, which Avro's `timestamp-micros` does not keep.
pub fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// The most memory decoding one record may allocate at once. A crafted record can claim a
/// huge string length; apache-avro's default cap (512 MiB) would let it take that much.
pub const MAX_DECODE_ALLOCATION: usize = 16 * 1024 * 1024;

/// Caps decode allocations process-wide at [`MAX_DECODE_ALLOCATION`]; binaries call it once
/// at start-up, before anything is decoded.
pub fn cap_decode_allocation() {
    let _ = apache_avro::util::max_allocation_bytes(MAX_DECODE_ALLOCATION);
}
