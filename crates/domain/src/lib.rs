//! Missive's business rules, free of I/O.
//!
//! Every command is decided by a pure function `decide(state, command) -> Result<Vec<Event>,
//! DomainError>`: the state is what the caller loaded (from read models or memory), the events
//! are what the caller appends. An empty list means the command changes nothing (a retry of
//! something already done). The rules are tested here, given/when/then, without any storage.
//!
//! # Layout
//! - [`users`]: registration and profiles.
//! - [`friends`]: friend requests, acceptance and removal.
//! - [`messages`]: sending, reading and deleting direct messages.
//! - [`presence`]: reporting online and offline status.
//! - [`communities`]: servers, subscriptions, invitations, posts and channels.

pub mod communities;
pub mod friends;
pub mod messages;
pub mod presence;
pub mod users;

pub use missive_events::Event;

/// Why a command was refused. Each message tells the user what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// A field broke its rule; the message states the rule.
    #[error("{field}: {rule}")]
    Invalid { field: &'static str, rule: String },
    /// The text is longer than the configured maximum.
    #[error("text is {len} characters long; the maximum is {max}")]
    TooLong { len: usize, max: usize },
    #[error("the username {0:?} is already taken")]
    UsernameTaken(String),
    #[error("no user with id {0}")]
    UserNotFound(uuid::Uuid),
    #[error("no message with id {0} that you can see")]
    MessageNotFound(uuid::Uuid),
    /// The actor may not do this (HTTP 403).
    #[error("{0}")]
    Forbidden(&'static str),
    /// The command conflicts with the current state (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// What the command acts on does not exist (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// No server of the id given that the actor may know of (private servers are not found
    /// by outsiders without an invitation).
    #[error("no server with this id that you can see")]
    ServerNotFound,
    #[error("no channel with id {0} in this server")]
    ChannelNotFound(uuid::Uuid),
    #[error("no invitation with id {0} for you")]
    InvitationNotFound(uuid::Uuid),
    #[error("a server named {0:?} exists already (names are unique, ignoring case)")]
    ServerNameTaken(String),
    #[error("this server has a channel named {0:?} already")]
    ChannelNameTaken(String),
    #[error("user {0} is subscribed to this server already")]
    AlreadySubscribed(uuid::Uuid),
    /// The actor's account is blocked by an operator (HTTP 403).
    #[error("your account is blocked by an operator; commands are refused until it is unblocked")]
    AccountBlocked,
    /// The actor's account is deleted (HTTP 403).
    #[error("your account is deleted")]
    AccountDeleted,
    /// The other user's account is blocked or deleted: nobody can message or befriend them
    /// (HTTP 403).
    #[error("user {0} cannot be contacted: their account is blocked or deleted")]
    RecipientUnavailable(uuid::Uuid),
}

pub type Result<T, E = DomainError> = std::result::Result<T, E>;

/// The relationship between two users, as decisions need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FriendshipState {
    None,
    Pending { requester: uuid::Uuid },
    Friends,
}

/// True if `c` is a control or other invisible formatting character that has no place in a
/// name (newlines, tabs, bidi overrides, zero-width characters).
pub(crate) fn is_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}
