//! Servers (communities) on the Scylla store: the tables of `projections/0003_communities.cql`,
//! the writes of [`CommunityChange`]s and the queries that read them.
//!
//! # Writes
//! As in the rest of the adapter, every write carries `USING TIMESTAMP` from the event, so
//! writes commute and re-applying a batch is harmless:
//! - facts that are written once (a server, its name claim and search rows, a channel's
//!   creation, an invitation) at [`CREATED_TS`]; an invitation's answer at [`ANSWER_TS`];
//! - subscriptions and channel moves at their event's offset + 2: events of one server, or of
//!   one user's channel moves, share a log partition, so a stale event loses;
//! - one-way changes at [`DELETED_TS`]: a channel's deletion, an answered invitation leaving
//!   the pending indexes, and the owner's membership rows (no subscription event can change or
//!   remove them);
//! - a channel read marker at the seq it marks: it only moves forward.
//!
//! A server name belongs to the earliest creation that claims it (a claim row clustered by
//! creation time, read with `LIMIT 1`), however the creations are ordered in the log: the
//! loser is not projected, like a username taken twice. A channel message is numbered like a
//! direct message (see `store.rs`): from the channel's tail, its rows in one logged batch, a
//! channel's batches sent one at a time in log order.
//!
//! Reads before writes (the channel a user is in before a join moves them, an invitation
//! before its answer, a channel's tail) are of rows written only from the same log partition,
//! which one projector owns at a time.
//!
//! # Reads
//! Each query reads one partition or a few by key. Lists paged by id cluster on the id's bytes
//! (a `*_key blob`), which order like [`Uuid`]s on every Cassandra and ScyllaDB version. Index
//! tables are checked against the facts when read: a pending invitation against its state, a
//! channel member against the channel the user is in.

use std::collections::{BTreeMap, HashMap, HashSet};

use ::scylla::statement::batch::{Batch, BatchType};
use ::scylla::statement::prepared::PreparedStatement;
use ::scylla::value::MaybeUnset;
use futures::{StreamExt, TryStreamExt};
use missive_log::Position;
use uuid::Uuid;

use super::store::{
    Applying, BUCKET_CHUNK, CHUNK, DELETED_TS, History, HistoryTables, PendingWrite, Place,
    READS_IN_FLIGHT, REGISTRATION_TS, ScyllaStore, at_offset, from_micros, history_bucket, micros,
    partition_of, read_each, statements,
};
use crate::{
    Change, Channel, ChannelMessage, ChannelSummary, CommunityChange, HistoryQuery, Invitation,
    InvitationState, Page, Post, Result, Server, ServerRole, ServerSearch, StoreError, UserServer,
    Visibility, page, server_name_key,
};

/// Write timestamp of facts written once: a server and its name claim, search and tag rows, a
/// channel's creation, an invitation.
const CREATED_TS: i64 = REGISTRATION_TS;
/// Write timestamp of an invitation's answer: above its creation's. Written once: the
/// projector reads the invitation first and keeps a first answer.
const ANSWER_TS: i64 = CREATED_TS + 1;
/// Write timestamp of the owner's membership rows: above every subscription event's, so no
/// subscription or unsubscription can change or remove them.
const OWNER_TS: i64 = DELETED_TS;
/// Rows read to find a bucket's oldest message after a seq (a few, in case of stray rows).
pub(super) const FIRST_AFTER_ROWS: i32 = 4;
/// Post buckets: 30 days of the post id's time (its first 48 bits: milliseconds in a UUIDv7).
const POST_BUCKET_MILLIS: i64 = 2_592_000_000;

const ROLE_OWNER: i32 = 1;
const ROLE_SUBSCRIBER: i32 = 2;
const VISIBILITY_PUBLIC: i32 = 1;
const VISIBILITY_PRIVATE: i32 = 2;
const INVITATION_ACCEPTED: i32 = 1;
const INVITATION_DECLINED: i32 = 2;

/// Columns of a search or tag index row, in the order [`IndexRow`] reads them.
macro_rules! index_columns {
    () => {
        "name_key, server_key, server_id, owner_id, name, tags, created_at_us"
    };
}

/// Columns of a channel message row, in the order [`ChannelMessageRow`] reads them.
macro_rules! channel_message_columns {
    () => {
        "seq, message_id, server_id, sender_id, text, client_msg_id, sent_at_us, \
         log_partition, log_offset"
    };
}

/// Columns of a post row, in the order [`PostRow`] reads them.
macro_rules! post_columns {
    () => {
        "post_id, author_id, content, tags, published_at_us, log_partition, log_offset"
    };
}

statements! {
    mod cql;
    const COMMUNITIES;
    struct Statements;

    SERVER_ADD = "INSERT INTO servers (server_id, owner_id, name, name_key, tags, visibility, \
        created_at_us) VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?";
    SERVER_GET = "SELECT owner_id, name, name_key, tags, visibility, created_at_us FROM servers \
        WHERE server_id = ?";
    SERVER_NAME_CLAIM = "INSERT INTO servers_by_name (name_key, created_at_us, server_id) \
        VALUES (?, ?, ?) USING TIMESTAMP ?";
    /// The earliest creation that claims a name owns it.
    SERVER_NAME_GET = "SELECT server_id FROM servers_by_name WHERE name_key = ? LIMIT 1";

    SEARCH_ADD = "INSERT INTO server_search (gram, name_key, server_key, server_id, owner_id, \
        name, tags, created_at_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?";
    SEARCH_FIRST = concat!("SELECT ", index_columns!(), " FROM server_search WHERE gram = ? \
        LIMIT ?");
    /// The rest of one name after a server (the same name twice: see `SERVER_NAME_CLAIM`).
    SEARCH_SAME_NAME = concat!("SELECT ", index_columns!(), " FROM server_search \
        WHERE gram = ? AND name_key = ? AND server_key > ? LIMIT ?");
    /// Names after one. (No `(name_key, server_key) > (?, ?)`: cqlsh's grammar, which CI
    /// checks statements with, has no tuple relations.)
    SEARCH_NEXT_NAMES = concat!("SELECT ", index_columns!(), " FROM server_search \
        WHERE gram = ? AND name_key > ? LIMIT ?");
    TAG_ADD = "INSERT INTO servers_by_tag (tag, name_key, server_key, server_id, owner_id, \
        name, tags, created_at_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?";
    TAG_FIRST = concat!("SELECT ", index_columns!(), " FROM servers_by_tag WHERE tag = ? \
        LIMIT ?");
    TAG_SAME_NAME = concat!("SELECT ", index_columns!(), " FROM servers_by_tag \
        WHERE tag = ? AND name_key = ? AND server_key > ? LIMIT ?");
    TAG_NEXT_NAMES = concat!("SELECT ", index_columns!(), " FROM servers_by_tag \
        WHERE tag = ? AND name_key > ? LIMIT ?");

    MEMBER_SET = "INSERT INTO server_members (server_id, user_id, role, since_us) \
        VALUES (?, ?, ?, ?) USING TIMESTAMP ?";
    MEMBER_DELETE = "DELETE FROM server_members USING TIMESTAMP ? WHERE server_id = ? \
        AND user_id = ?";
    MEMBER_GET = "SELECT role FROM server_members WHERE server_id = ? AND user_id = ?";
    USER_SERVER_SET = "INSERT INTO user_servers (user_id, server_key, server_id, role, \
        since_us) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?";
    USER_SERVER_DELETE = "DELETE FROM user_servers USING TIMESTAMP ? WHERE user_id = ? \
        AND server_key = ?";
    USER_SERVERS_FIRST = "SELECT server_id, role, since_us FROM user_servers WHERE user_id = ? \
        LIMIT ?";
    USER_SERVERS_AFTER = "SELECT server_id, role, since_us FROM user_servers WHERE user_id = ? \
        AND server_key > ? LIMIT ?";

    INVITATION_ADD = "INSERT INTO invitations (invitation_id, server_id, inviter_id, \
        invitee_id, sent_at_us) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?";
    INVITATION_ANSWER = "UPDATE invitations USING TIMESTAMP ? SET state = ?, \
        answered_at_us = ? WHERE invitation_id = ?";
    INVITATION_GET = "SELECT server_id, inviter_id, invitee_id, sent_at_us, state, \
        answered_at_us FROM invitations WHERE invitation_id = ?";
    INVITEE_PENDING_ADD = "INSERT INTO invitations_by_invitee (invitee_id, invitation_key, \
        invitation_id, server_id) VALUES (?, ?, ?, ?) USING TIMESTAMP ?";
    /// One row, at `DELETED_TS`: a redelivered invitation never brings it back.
    INVITEE_PENDING_DELETE = "DELETE FROM invitations_by_invitee USING TIMESTAMP ? \
        WHERE invitee_id = ? AND invitation_key = ?";
    /// Newest first (the clustering order).
    INVITEE_PENDING_FIRST = "SELECT invitation_id FROM invitations_by_invitee \
        WHERE invitee_id = ? LIMIT ?";
    INVITEE_PENDING_BEFORE = "SELECT invitation_id FROM invitations_by_invitee \
        WHERE invitee_id = ? AND invitation_key < ? LIMIT ?";
    SERVER_PENDING_ADD = "INSERT INTO server_invitations (server_id, invitee_id, \
        invitation_id) VALUES (?, ?, ?) USING TIMESTAMP ?";
    SERVER_PENDING_DELETE = "DELETE FROM server_invitations USING TIMESTAMP ? \
        WHERE server_id = ? AND invitee_id = ? AND invitation_id = ?";
    SERVER_PENDING_GET = "SELECT invitation_id FROM server_invitations WHERE server_id = ? \
        AND invitee_id = ?";

    POST_ADD = "INSERT INTO posts (server_id, bucket, post_key, post_id, author_id, content, \
        tags, published_at_us, log_partition, log_offset) \
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?";
    POST_BUCKET_ADD = "INSERT INTO post_buckets (server_id, bucket) VALUES (?, ?) \
        USING TIMESTAMP ?";
    /// Buckets at or before one, newest first (the clustering order).
    POST_BUCKETS_DOWN = "SELECT bucket FROM post_buckets WHERE server_id = ? AND bucket <= ? \
        LIMIT ?";
    /// A bucket's posts, newest first.
    POSTS_FIRST = concat!("SELECT ", post_columns!(), " FROM posts WHERE server_id = ? \
        AND bucket = ? LIMIT ?");
    /// A bucket's posts older than one, newest first.
    POSTS_BEFORE = concat!("SELECT ", post_columns!(), " FROM posts WHERE server_id = ? \
        AND bucket = ? AND post_key < ? LIMIT ?");

    CHANNEL_ADD = "INSERT INTO channels (channel_id, server_id, name, created_by, \
        created_at_us) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?";
    /// At `DELETED_TS`; no creation names the column, so a deleted channel stays deleted.
    CHANNEL_DELETE = "UPDATE channels USING TIMESTAMP ? SET deleted = true \
        WHERE channel_id = ?";
    CHANNEL_GET = "SELECT server_id, name, created_by, created_at_us, deleted FROM channels \
        WHERE channel_id = ?";
    SERVER_CHANNEL_ADD = "INSERT INTO channels_by_server (server_id, channel_id, name, \
        created_by, created_at_us) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?";
    SERVER_CHANNEL_DELETE = "UPDATE channels_by_server USING TIMESTAMP ? SET deleted = true \
        WHERE server_id = ? AND channel_id = ?";
    SERVER_CHANNELS_GET = "SELECT channel_id, name, created_by, created_at_us, deleted \
        FROM channels_by_server WHERE server_id = ?";

    USER_CHANNEL_SET = "INSERT INTO user_channel (user_id, channel_id, server_id, \
        joined_at_us) VALUES (?, ?, ?, ?) USING TIMESTAMP ?";
    USER_CHANNEL_DELETE = "DELETE FROM user_channel USING TIMESTAMP ? WHERE user_id = ?";
    USER_CHANNEL_GET = "SELECT channel_id FROM user_channel WHERE user_id = ?";
    CHANNEL_MEMBER_ADD = "INSERT INTO channel_members (channel_id, user_key, user_id, \
        joined_at_us) VALUES (?, ?, ?, ?) USING TIMESTAMP ?";
    CHANNEL_MEMBER_DELETE = "DELETE FROM channel_members USING TIMESTAMP ? \
        WHERE channel_id = ? AND user_key = ?";
    CHANNEL_MEMBERS_FIRST = "SELECT user_id FROM channel_members WHERE channel_id = ? LIMIT ?";
    CHANNEL_MEMBERS_AFTER = "SELECT user_id FROM channel_members WHERE channel_id = ? \
        AND user_key > ? LIMIT ?";

    /// Never expires: a channel keeps its numbers (see [`crate::Retention`]).
    CHANNEL_TAIL_SET = "INSERT INTO channel_tails (channel_id, last_message_id, last_seq, \
        last_sent_at_us, last_offset) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?";
    CHANNEL_TAIL_GET = "SELECT last_message_id, last_seq, last_sent_at_us, last_offset \
        FROM channel_tails WHERE channel_id = ?";
    /// With the TTL of the bucket's latest message (its write has the highest timestamp).
    CHANNEL_BUCKET_ADD = "INSERT INTO channel_buckets (channel_id, bucket) VALUES (?, ?) \
        USING TIMESTAMP ? AND TTL ?";
    /// Buckets at or before one, newest first (the clustering order).
    CHANNEL_BUCKETS_DOWN = "SELECT bucket FROM channel_buckets WHERE channel_id = ? \
        AND bucket <= ? LIMIT ?";
    /// Buckets at or after one, oldest first.
    CHANNEL_BUCKETS_UP = "SELECT bucket FROM channel_buckets WHERE channel_id = ? \
        AND bucket >= ? ORDER BY bucket ASC LIMIT ?";
    CHANNEL_MESSAGE_ADD = "INSERT INTO channel_messages (channel_id, bucket, seq, message_id, \
        server_id, sender_id, text, client_msg_id, sent_at_us, log_partition, log_offset) \
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ? AND TTL ?";
    CHANNEL_MESSAGE_GET = concat!("SELECT ", channel_message_columns!(), " \
        FROM channel_messages WHERE channel_id = ? AND bucket = ? AND seq = ?");
    /// A bucket's messages between two seqs (exclusive), newest first.
    CHANNEL_MESSAGES_DOWN = concat!("SELECT ", channel_message_columns!(), " \
        FROM channel_messages WHERE channel_id = ? AND bucket = ? AND seq < ? AND seq > ? \
        LIMIT ?");
    /// A bucket's messages between two seqs (exclusive), oldest first.
    CHANNEL_MESSAGES_UP = concat!("SELECT ", channel_message_columns!(), " \
        FROM channel_messages WHERE channel_id = ? AND bucket = ? AND seq < ? AND seq > ? \
        ORDER BY seq ASC LIMIT ?");
    /// A bucket's oldest messages after a seq: where retention left a channel's history
    /// starting.
    CHANNEL_FIRST_AFTER = "SELECT seq, message_id FROM channel_messages WHERE channel_id = ? \
        AND bucket = ? AND seq > ? ORDER BY seq ASC LIMIT ?";
    CHANNEL_LOCATION_ADD = "INSERT INTO channel_messages_by_id (message_id, channel_id, \
        server_id, bucket, seq, sender_id, sent_at_us) VALUES (?, ?, ?, ?, ?, ?, ?) \
        USING TIMESTAMP ? AND TTL ?";
    CHANNEL_LOCATION_GET = "SELECT channel_id, server_id, bucket, seq, sender_id, sent_at_us \
        FROM channel_messages_by_id WHERE message_id = ?";
    CHANNEL_CLIENT_ID_ADD = "INSERT INTO channel_messages_by_client_id (sender_id, \
        client_msg_id, sent_at_us, message_id) VALUES (?, ?, ?, ?) USING TIMESTAMP ? AND TTL ?";
    /// The first send of a key owns it.
    CHANNEL_CLIENT_ID_GET = "SELECT message_id FROM channel_messages_by_client_id \
        WHERE sender_id = ? AND client_msg_id = ? LIMIT 1";
    /// The marked seq as timestamp: a marker only moves forward.
    CHANNEL_READ_SET = "INSERT INTO channel_reads (user_id, channel_id, read_seq) \
        VALUES (?, ?, ?) USING TIMESTAMP ?";
    CHANNEL_READ_GET = "SELECT read_seq FROM channel_reads WHERE user_id = ? \
        AND channel_id = ?";
}

// ----- keys and values -----

/// An id as a clustering key: its 16 bytes (blobs order as unsigned bytes, like [`Uuid`]).
fn key(id: Uuid) -> Vec<u8> {
    id.as_bytes().to_vec()
}

/// The post bucket of an id: its first 48 bits (a UUIDv7's milliseconds) in 30-day spans. It
/// never decreases along the ids' order, so walking buckets newest first walks ids down.
fn post_bucket(post_id: Uuid) -> i64 {
    let b = post_id.as_bytes();
    let millis = b[..6]
        .iter()
        .fold(0i64, |n, byte| (n << 8) | i64::from(*byte));
    millis / POST_BUCKET_MILLIS
}

/// Tags as stored: position -> tag (a `map`, idempotent where a `list` is not).
fn tags_map(tags: &[String]) -> BTreeMap<i32, String> {
    (0..)
        .zip(tags.iter().cloned())
        .collect::<BTreeMap<i32, String>>()
}

fn tags_vec(tags: Option<BTreeMap<i32, String>>) -> Vec<String> {
    tags.unwrap_or_default().into_values().collect()
}

fn visibility_code(v: Visibility) -> i32 {
    match v {
        Visibility::Public => VISIBILITY_PUBLIC,
        Visibility::Private => VISIBILITY_PRIVATE,
    }
}

/// A cursor that holds an id (the last item of a page).
fn id_cursor(cursor: &str) -> Result<Uuid> {
    Uuid::parse_str(cursor).map_err(|_| StoreError::InvalidCursor(cursor.to_owned()))
}

/// The search rows of a public server's name key: `t:` + each distinct trigram, `p:` + its
/// 1- and 2-character prefixes.
fn grams(name_key: &str) -> Vec<String> {
    let chars: Vec<char> = name_key.chars().collect();
    let mut out: Vec<String> = Vec::new();
    for n in 1..=2.min(chars.len()) {
        out.push(format!("p:{}", chars[..n].iter().collect::<String>()));
    }
    for window in chars.windows(3) {
        let gram = format!("t:{}", window.iter().collect::<String>());
        if !out.contains(&gram) {
            out.push(gram);
        }
    }
    out
}

/// The search partition a name query reads, and whether a name key matches it: a query of one
/// or two characters matches names that start with it, a longer one names that contain it.
fn name_query(query: &str) -> (String, impl Fn(&str) -> bool + '_) {
    let chars: Vec<char> = query.chars().collect();
    let short = chars.len() < 3;
    let gram = if short {
        format!("p:{query}")
    } else {
        format!("t:{}", chars[..3].iter().collect::<String>())
    };
    (gram, move |name_key: &str| {
        if short {
            name_key.starts_with(query)
        } else {
            name_key.contains(query)
        }
    })
}

// ----- rows -----

type ServerRow = (
    Option<Uuid>,
    Option<String>,
    Option<String>,
    Option<BTreeMap<i32, String>>,
    Option<i32>,
    Option<i64>,
);

/// A server from its row, with its name key; `None` for a row that holds no server.
fn server_from_row(server_id: Uuid, row: ServerRow) -> Result<Option<(Server, String)>> {
    let (owner_id, name, name_key, tags, visibility, created_at) = row;
    let (Some(owner_id), Some(name), Some(created_at)) = (owner_id, name, created_at) else {
        return Ok(None);
    };
    let name_key = name_key.unwrap_or_else(|| server_name_key(&name));
    let visibility = match visibility {
        Some(VISIBILITY_PRIVATE) => Visibility::Private,
        _ => Visibility::Public,
    };
    Ok(Some((
        Server {
            server_id,
            owner_id,
            name,
            tags: tags_vec(tags),
            visibility,
            created_at: from_micros(created_at)?,
        },
        name_key,
    )))
}

type IndexRow = (
    String,
    Vec<u8>,
    Option<Uuid>,
    Option<Uuid>,
    Option<String>,
    Option<BTreeMap<i32, String>>,
    Option<i64>,
);

/// A public server from a search or tag row; `None` for a row that holds none.
fn server_from_index(row: IndexRow) -> Result<Option<Server>> {
    let (_, _, server_id, owner_id, name, tags, created_at) = row;
    let (Some(server_id), Some(owner_id), Some(name), Some(created_at)) =
        (server_id, owner_id, name, created_at)
    else {
        return Ok(None);
    };
    Ok(Some(Server {
        server_id,
        owner_id,
        name,
        tags: tags_vec(tags),
        visibility: Visibility::Public,
        created_at: from_micros(created_at)?,
    }))
}

type InvitationRow = (
    Option<Uuid>,
    Option<Uuid>,
    Option<Uuid>,
    Option<i64>,
    Option<i32>,
    Option<i64>,
);

/// An invitation's facts as stored.
#[derive(Debug, Clone, Copy)]
struct StoredInvitation {
    server_id: Uuid,
    inviter_id: Uuid,
    invitee_id: Uuid,
    sent_at_us: i64,
    /// (state code, answered at): `None` while pending.
    answer: Option<(i32, i64)>,
}

impl StoredInvitation {
    fn from_row(row: InvitationRow) -> Option<Self> {
        let (server_id, inviter_id, invitee_id, sent_at_us, state, answered_at) = row;
        Some(StoredInvitation {
            server_id: server_id?,
            inviter_id: inviter_id?,
            invitee_id: invitee_id?,
            sent_at_us: sent_at_us?,
            answer: state.map(|s| (s, answered_at.unwrap_or(0))),
        })
    }

    fn into_invitation(self, invitation_id: Uuid, server_name: String) -> Result<Invitation> {
        let (state, answered_at) = match self.answer {
            None => (InvitationState::Pending, None),
            Some((INVITATION_ACCEPTED, at)) => (InvitationState::Accepted, Some(at)),
            Some((_, at)) => (InvitationState::Declined, Some(at)),
        };
        Ok(Invitation {
            invitation_id,
            server_id: self.server_id,
            server_name,
            inviter_id: self.inviter_id,
            invitee_id: self.invitee_id,
            sent_at: from_micros(self.sent_at_us)?,
            state,
            answered_at: answered_at.map(from_micros).transpose()?,
        })
    }
}

type PostRow = (
    Option<Uuid>,
    Option<Uuid>,
    Option<String>,
    Option<BTreeMap<i32, String>>,
    Option<i64>,
    Option<i32>,
    Option<i64>,
);

fn post_from_row(server_id: Uuid, row: PostRow) -> Result<Option<Post>> {
    let (post_id, author_id, content, tags, published_at, part, offset) = row;
    let (Some(post_id), Some(author_id), Some(content), Some(published_at), Some(p), Some(o)) =
        (post_id, author_id, content, published_at, part, offset)
    else {
        return Ok(None);
    };
    Ok(Some(Post {
        post_id,
        server_id,
        author_id,
        content,
        tags: tags_vec(tags),
        published_at: from_micros(published_at)?,
        position: Position::new(p as u32, o as u64),
    }))
}

type ChannelRow = (
    Option<Uuid>,
    Option<String>,
    Option<Uuid>,
    Option<i64>,
    Option<bool>,
);

/// What a channel's creation wrote, deleted or not.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChannelFacts {
    server_id: Uuid,
    name: String,
    created_by: Uuid,
    created_at_us: i64,
}

/// A channel from its row; `None` for a deleted one or a row that holds none (a deletion, or
/// nothing but a membership, projected before the creation).
fn channel_from_row(channel_id: Uuid, row: ChannelRow) -> Result<Option<Channel>> {
    let (server_id, name, created_by, created_at, deleted) = row;
    if deleted == Some(true) {
        return Ok(None);
    }
    let (Some(server_id), Some(name), Some(created_by), Some(created_at)) =
        (server_id, name, created_by, created_at)
    else {
        return Ok(None);
    };
    Ok(Some(Channel {
        channel_id,
        server_id,
        name,
        created_by,
        created_at: from_micros(created_at)?,
    }))
}

/// A row of `channels_by_server`: the channel id, then a [`ChannelRow`] without the server.
type ServerChannelRow = (
    Uuid,
    Option<String>,
    Option<Uuid>,
    Option<i64>,
    Option<bool>,
);

type ChannelLocationRow = (
    Option<Uuid>,
    Option<Uuid>,
    Option<i64>,
    Option<i64>,
    Option<Uuid>,
    Option<i64>,
);

/// Where a channel message is, and the numbers it was given.
#[derive(Debug, Clone, Copy)]
struct ChannelLocation {
    channel_id: Uuid,
    server_id: Uuid,
    bucket: i64,
    seq: i64,
    sender_id: Uuid,
    /// Kept monotonic in seq within the channel.
    sent_at_us: i64,
}

impl ChannelLocation {
    fn from_row(row: ChannelLocationRow) -> Option<Self> {
        let (channel_id, server_id, bucket, seq, sender_id, sent_at_us) = row;
        Some(ChannelLocation {
            channel_id: channel_id?,
            server_id: server_id?,
            bucket: bucket?,
            seq: seq?,
            sender_id: sender_id?,
            sent_at_us: sent_at_us?,
        })
    }
}

type ChannelTailRow = (Option<Uuid>, Option<i64>, Option<i64>, Option<i64>);

/// A channel's tail: its latest message's numbers.
#[derive(Debug, Clone, Copy)]
struct ChannelTail {
    last_message_id: Option<Uuid>,
    last_seq: i64,
    last_sent_at_us: i64,
    /// The log offset of the message that set it; -1 when unknown (written before schema
    /// version 7).
    last_offset: i64,
}

impl ChannelTail {
    const EMPTY: ChannelTail = ChannelTail {
        last_message_id: None,
        last_seq: 0,
        last_sent_at_us: i64::MIN,
        last_offset: -1,
    };

    fn from_row(row: ChannelTailRow) -> Self {
        let (last_message_id, last_seq, last_sent_at_us, last_offset) = row;
        ChannelTail {
            last_message_id,
            last_seq: last_seq.unwrap_or(0),
            last_sent_at_us: last_sent_at_us.unwrap_or(i64::MIN),
            last_offset: last_offset.unwrap_or(-1),
        }
    }
}

type ChannelMessageRow = (
    i64,
    Option<Uuid>,
    Option<Uuid>,
    Option<Uuid>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i32>,
    Option<i64>,
);

/// A channel message as `viewer` sees it (the idempotency key only on their own), `None` for
/// a row that holds no message.
fn channel_message_from_row(
    channel_id: Uuid,
    viewer: Uuid,
    row: ChannelMessageRow,
) -> Result<Option<ChannelMessage>> {
    let (seq, id, server, sender, text, client_msg_id, sent_at, part, offset) = row;
    let (Some(message_id), Some(server_id), Some(sender_id), Some(sent_at), Some(p), Some(o)) =
        (id, server, sender, sent_at, part, offset)
    else {
        return Ok(None);
    };
    Ok(Some(ChannelMessage {
        message_id,
        server_id,
        channel_id,
        seq: seq as u64,
        sender_id,
        text: text.unwrap_or_default(),
        client_msg_id: client_msg_id.filter(|_| viewer == sender_id),
        sent_at: from_micros(sent_at)?,
        position: Position::new(p as u32, o as u64),
    }))
}

/// A channel's history as one reader sees it.
struct ChannelHistory {
    viewer: Uuid,
    channel: Uuid,
}

impl History for ChannelHistory {
    type Row = ChannelMessageRow;
    type Message = ChannelMessage;
    type Tail = ChannelTail;

    fn key(&self) -> Uuid {
        self.channel
    }

    fn tables(store: &ScyllaStore) -> HistoryTables<'_> {
        let cst = store.cst();
        HistoryTables {
            buckets_up: &cst.CHANNEL_BUCKETS_UP,
            buckets_down: &cst.CHANNEL_BUCKETS_DOWN,
            messages_up: &cst.CHANNEL_MESSAGES_UP,
            messages_down: &cst.CHANNEL_MESSAGES_DOWN,
            reading_buckets: "reading channel history buckets",
            reading: "reading channel history",
        }
    }

    async fn place(&self, store: &ScyllaStore, message_id: Uuid) -> Result<Option<Place>> {
        Ok(store
            .channel_location(message_id)
            .await?
            .filter(|l| l.channel_id == self.channel)
            .map(|l| Place {
                bucket: l.bucket,
                seq: l.seq,
            }))
    }

    async fn tail(&self, store: &ScyllaStore) -> Result<Option<ChannelTail>> {
        store.channel_tail(self.channel).await
    }

    /// None: a channel message is never hidden from one reader.
    async fn hidden(&self, _: &ScyllaStore, _: i64, _: i64) -> Result<HashSet<i64>> {
        Ok(HashSet::new())
    }

    fn seq(row: &ChannelMessageRow) -> i64 {
        row.0
    }

    fn message(&self, row: ChannelMessageRow) -> Result<Option<ChannelMessage>> {
        channel_message_from_row(self.channel, self.viewer, row)
    }

    fn sent_at_us(message: &ChannelMessage) -> i64 {
        micros(message.sent_at)
    }
}

// ----- applying changes -----

/// What the community changes of one apply read before writing, and decided so far.
#[derive(Default)]
pub(super) struct CommunityBatch {
    /// The servers the batch creates, as stored or created so far: a server id is created
    /// once, and a later creation with other fields is ignored.
    servers: HashMap<Uuid, Server>,
    /// The channels the batch creates, as stored or created so far (deleted ones included):
    /// created once, like servers.
    channels: HashMap<Uuid, ChannelFacts>,
    /// Invitations the batch answers or adds, as known so far.
    invitations: HashMap<Uuid, StoredInvitation>,
    /// The channel each user of a join or leave is in, as the changes so far leave it.
    user_channels: HashMap<Uuid, Option<Uuid>>,
    /// The tails of the channels the batch adds messages to, as its messages leave them.
    tails: HashMap<Uuid, ChannelTail>,
    /// Where the channel messages the batch names are (stored, or numbered by this batch).
    locations: HashMap<Uuid, ChannelLocation>,
    /// Channel messages whose batch this apply already wrote.
    issued: HashSet<Uuid>,
}

impl<'a> Applying<'a> {
    /// Reads, all at once, what the batch's community changes need: the servers it creates,
    /// the invitations it answers, the channel of each user it moves, the tails of the channels it adds messages
    /// to, then where every channel message it names is (tails first, as for conversations:
    /// a tail naming a message means the batches before it were acknowledged).
    pub(super) async fn prefetch_communities(&mut self, changes: &[Change]) -> Result<()> {
        let mut servers = HashSet::new();
        let mut created_channels = HashSet::new();
        let mut invitations = HashSet::new();
        let mut users = HashSet::new();
        let mut channels = HashSet::new();
        let mut messages = HashSet::new();
        for change in changes {
            let Change::Community(change) = change else {
                continue;
            };
            match change {
                CommunityChange::AddServer { server_id, .. } => {
                    servers.insert(*server_id);
                }
                CommunityChange::AddChannel { channel_id, .. } => {
                    created_channels.insert(*channel_id);
                }
                CommunityChange::AddInvitation { invitation_id, .. }
                | CommunityChange::AnswerInvitation { invitation_id, .. } => {
                    invitations.insert(*invitation_id);
                }
                CommunityChange::JoinChannel { user_id, .. }
                | CommunityChange::LeaveChannel { user_id, .. } => {
                    users.insert(*user_id);
                }
                CommunityChange::AddChannelMessage {
                    message_id,
                    channel_id,
                    ..
                } => {
                    channels.insert(*channel_id);
                    messages.insert(*message_id);
                }
                CommunityChange::MarkChannelRead { up_to, .. } => {
                    messages.insert(*up_to);
                }
                _ => {}
            }
        }
        let store = self.store;
        let (servers, created_channels, invitations, users, tails) = futures::try_join!(
            read_each(servers, |id| store.community_server(id)),
            read_each(created_channels, |id| store.channel_facts(id)),
            read_each(invitations, |id| store.stored_invitation(id)),
            read_each(users, |user| async move {
                Ok(Some(store.user_channel(user).await?))
            }),
            read_each(channels, |channel| async move {
                Ok(Some(store.channel_tail(channel).await?))
            }),
        )?;
        let batch = &mut self.community;
        batch.servers.extend(servers);
        batch.channels.extend(created_channels);
        batch.invitations.extend(invitations);
        batch.user_channels.extend(users);
        batch.tails.extend(
            tails
                .into_iter()
                .filter_map(|(channel, tail)| Some((channel, tail?))),
        );
        batch
            .locations
            .extend(read_each(messages, |id| store.channel_location(id)).await?);
        Ok(())
    }

    pub(super) async fn apply_community(&mut self, change: &CommunityChange) -> Result<()> {
        let store: &'a ScyllaStore = self.store;
        let st = store.cst();
        match change {
            CommunityChange::AddServer {
                server_id,
                owner_id,
                name,
                tags,
                visibility,
                created_at,
            } => {
                let server = Server {
                    server_id: *server_id,
                    owner_id: *owner_id,
                    name: name.clone(),
                    tags: tags.clone(),
                    visibility: *visibility,
                    // As stored: microseconds.
                    created_at: from_micros(micros(*created_at))?,
                };
                // Created once: the same creation again is written again (its writes may not
                // all have landed), another with the same id is ignored.
                if let Some(existing) = self.community.servers.get(server_id)
                    && *existing != server
                {
                    tracing::error!(%server_id, "server id already names another server; creation not projected");
                    return Ok(());
                }
                let name_key = server_name_key(name);
                let created_us = micros(*created_at);
                // Every creation claims the name; the earliest keeps it, whatever order the
                // creations are projected in (they can sit in different log partitions).
                store
                    .write(
                        &st.SERVER_NAME_CLAIM,
                        (&name_key, created_us, *server_id, CREATED_TS),
                        "claiming a server name",
                    )
                    .await?;
                let holder = store
                    .first::<(Option<Uuid>,)>(
                        &st.SERVER_NAME_GET,
                        (&name_key,),
                        "checking a server name",
                    )
                    .await?
                    .and_then(|(id,)| id);
                if holder != Some(*server_id) {
                    tracing::error!(%server_id, %name, "server name already belongs to another server; creation not projected");
                    return Ok(());
                }
                self.community.servers.insert(*server_id, server);
                let (server_key, tags_map) = (key(*server_id), tags_map(tags));
                self.push(
                    &st.SERVER_ADD,
                    (
                        *server_id,
                        *owner_id,
                        name.clone(),
                        name_key.clone(),
                        tags_map.clone(),
                        visibility_code(*visibility),
                        created_us,
                        CREATED_TS,
                    ),
                    "adding a server",
                );
                self.push(
                    &st.MEMBER_SET,
                    (*server_id, *owner_id, ROLE_OWNER, created_us, OWNER_TS),
                    "adding a server's owner",
                );
                self.push(
                    &st.USER_SERVER_SET,
                    (
                        *owner_id,
                        server_key.clone(),
                        *server_id,
                        ROLE_OWNER,
                        created_us,
                        OWNER_TS,
                    ),
                    "adding a server's owner",
                );
                if *visibility != Visibility::Public {
                    return Ok(());
                }
                let row = |partition: String| {
                    (
                        partition,
                        name_key.clone(),
                        server_key.clone(),
                        *server_id,
                        *owner_id,
                        name.clone(),
                        tags_map.clone(),
                        created_us,
                        CREATED_TS,
                    )
                };
                for gram in grams(&name_key) {
                    self.push(&st.SEARCH_ADD, row(gram), "indexing a server's name");
                }
                let mut seen = HashSet::new();
                for tag in tags.iter().filter(|t| seen.insert(t.as_str())) {
                    self.push(&st.TAG_ADD, row(tag.clone()), "indexing a server's tags");
                }
            }
            CommunityChange::SetSubscription {
                server_id,
                user_id,
                subscribed,
                at,
                version,
            } => {
                // The event's offset: a stale event loses, cell by cell or to the deletion.
                // The owner's rows are at OWNER_TS, above all of these.
                let ts = at_offset(*version);
                if *subscribed {
                    let since = micros(*at);
                    self.push(
                        &st.MEMBER_SET,
                        (*server_id, *user_id, ROLE_SUBSCRIBER, since, ts),
                        "subscribing",
                    );
                    self.push(
                        &st.USER_SERVER_SET,
                        (
                            *user_id,
                            key(*server_id),
                            *server_id,
                            ROLE_SUBSCRIBER,
                            since,
                            ts,
                        ),
                        "subscribing",
                    );
                } else {
                    self.push(
                        &st.MEMBER_DELETE,
                        (ts, *server_id, *user_id),
                        "unsubscribing",
                    );
                    self.push(
                        &st.USER_SERVER_DELETE,
                        (ts, *user_id, key(*server_id)),
                        "unsubscribing",
                    );
                }
            }
            CommunityChange::AddInvitation {
                invitation_id,
                server_id,
                inviter_id,
                invitee_id,
                sent_at,
            } => {
                let sent_us = micros(*sent_at);
                let facts = (*server_id, *inviter_id, *invitee_id, sent_us);
                // Recorded once: the same invitation again is written again (answered already,
                // the answer stays and so do the index deletions, at DELETED_TS); another with
                // the same id is ignored.
                let known =
                    self.community
                        .invitations
                        .entry(*invitation_id)
                        .or_insert(StoredInvitation {
                            server_id: *server_id,
                            inviter_id: *inviter_id,
                            invitee_id: *invitee_id,
                            sent_at_us: sent_us,
                            answer: None,
                        });
                if (
                    known.server_id,
                    known.inviter_id,
                    known.invitee_id,
                    known.sent_at_us,
                ) != facts
                {
                    tracing::error!(%invitation_id, "invitation id already names another invitation; not projected");
                    return Ok(());
                }
                self.push(
                    &st.INVITATION_ADD,
                    (
                        *invitation_id,
                        *server_id,
                        *inviter_id,
                        *invitee_id,
                        sent_us,
                        CREATED_TS,
                    ),
                    "adding an invitation",
                );
                self.push(
                    &st.INVITEE_PENDING_ADD,
                    (
                        *invitee_id,
                        key(*invitation_id),
                        *invitation_id,
                        *server_id,
                        CREATED_TS,
                    ),
                    "adding an invitation",
                );
                self.push(
                    &st.SERVER_PENDING_ADD,
                    (*server_id, *invitee_id, *invitation_id, CREATED_TS),
                    "adding an invitation",
                );
            }
            CommunityChange::AnswerInvitation {
                invitation_id,
                accepted,
                at,
            } => {
                let Some(invitation) = self.community.invitations.get_mut(invitation_id) else {
                    tracing::warn!(%invitation_id, "answering an unknown invitation; ignored");
                    return Ok(());
                };
                // The first answer stays; a repeated one writes it again (its index deletions
                // may not have landed before a failure).
                let state = if *accepted {
                    INVITATION_ACCEPTED
                } else {
                    INVITATION_DECLINED
                };
                let (state, answered_us) = *invitation.answer.get_or_insert((state, micros(*at)));
                let invitation = *invitation;
                self.push(
                    &st.INVITATION_ANSWER,
                    (ANSWER_TS, state, answered_us, *invitation_id),
                    "answering an invitation",
                );
                self.push(
                    &st.INVITEE_PENDING_DELETE,
                    (DELETED_TS, invitation.invitee_id, key(*invitation_id)),
                    "answering an invitation",
                );
                self.push(
                    &st.SERVER_PENDING_DELETE,
                    (
                        DELETED_TS,
                        invitation.server_id,
                        invitation.invitee_id,
                        *invitation_id,
                    ),
                    "answering an invitation",
                );
            }
            CommunityChange::AddPost {
                post_id,
                server_id,
                author_id,
                content,
                tags,
                published_at,
                position,
            } => {
                let ts = at_offset(position.offset);
                let bucket = post_bucket(*post_id);
                self.push(
                    &st.POST_ADD,
                    (
                        *server_id,
                        bucket,
                        key(*post_id),
                        *post_id,
                        *author_id,
                        content.clone(),
                        tags_map(tags),
                        micros(*published_at),
                        partition_of(position.partition)?,
                        position.offset as i64,
                        ts,
                    ),
                    "adding a post",
                );
                self.push(
                    &st.POST_BUCKET_ADD,
                    (*server_id, bucket, ts),
                    "adding a post",
                );
            }
            CommunityChange::AddChannel {
                channel_id,
                server_id,
                name,
                created_by,
                created_at,
            } => {
                let created_us = micros(*created_at);
                let facts = ChannelFacts {
                    server_id: *server_id,
                    name: name.clone(),
                    created_by: *created_by,
                    created_at_us: created_us,
                };
                // Created once, like a server. (A deletion alone, projected first, is not a
                // creation: the channel is then created and stays deleted.)
                match self.community.channels.get(channel_id) {
                    Some(known) if *known != facts => {
                        tracing::error!(%channel_id, "channel id already names another channel; creation not projected");
                        return Ok(());
                    }
                    Some(_) => {}
                    None => {
                        self.community.channels.insert(*channel_id, facts);
                    }
                }
                self.push(
                    &st.CHANNEL_ADD,
                    (
                        *channel_id,
                        *server_id,
                        name.clone(),
                        *created_by,
                        created_us,
                        CREATED_TS,
                    ),
                    "adding a channel",
                );
                self.push(
                    &st.SERVER_CHANNEL_ADD,
                    (
                        *server_id,
                        *channel_id,
                        name.clone(),
                        *created_by,
                        created_us,
                        CREATED_TS,
                    ),
                    "adding a channel",
                );
            }
            CommunityChange::DeleteChannel {
                channel_id,
                server_id,
            } => {
                self.push(
                    &st.CHANNEL_DELETE,
                    (DELETED_TS, *channel_id),
                    "deleting a channel",
                );
                self.push(
                    &st.SERVER_CHANNEL_DELETE,
                    (DELETED_TS, *server_id, *channel_id),
                    "deleting a channel",
                );
            }
            CommunityChange::JoinChannel {
                user_id,
                server_id,
                channel_id,
                at,
                version,
            } => {
                let ts = at_offset(*version);
                let joined_us = micros(*at);
                // Out of the channel the user was in. A stale join deletes that row at a
                // timestamp below its insert's: no effect.
                let previous = self
                    .community
                    .user_channels
                    .insert(*user_id, Some(*channel_id))
                    .flatten();
                if let Some(previous) = previous.filter(|p| p != channel_id) {
                    self.push(
                        &st.CHANNEL_MEMBER_DELETE,
                        (ts, previous, key(*user_id)),
                        "leaving a channel",
                    );
                }
                self.push(
                    &st.USER_CHANNEL_SET,
                    (*user_id, *channel_id, *server_id, joined_us, ts),
                    "joining a channel",
                );
                self.push(
                    &st.CHANNEL_MEMBER_ADD,
                    (*channel_id, key(*user_id), *user_id, joined_us, ts),
                    "joining a channel",
                );
            }
            CommunityChange::LeaveChannel {
                user_id,
                channel_id,
                version,
            } => {
                let ts = at_offset(*version);
                self.push(
                    &st.CHANNEL_MEMBER_DELETE,
                    (ts, *channel_id, key(*user_id)),
                    "leaving a channel",
                );
                // Only out of the channel they are in: a leave of another one (decided on a
                // stale read) must not take them out of where they are now.
                let current = self.community.user_channels.entry(*user_id).or_default();
                if *current == Some(*channel_id) {
                    *current = None;
                    self.push(&st.USER_CHANNEL_DELETE, (ts, *user_id), "leaving a channel");
                }
            }
            CommunityChange::AddChannelMessage { .. } => self.add_channel_message(change)?,
            CommunityChange::MarkChannelRead {
                channel_id,
                reader_id,
                up_to,
            } => {
                let Some(loc) = self
                    .community
                    .locations
                    .get(up_to)
                    .filter(|l| l.channel_id == *channel_id)
                    .copied()
                else {
                    tracing::warn!(%channel_id, %up_to, "channel read marker names an unknown message; ignored");
                    return Ok(());
                };
                self.push_about(
                    *up_to,
                    &st.CHANNEL_READ_SET,
                    (*reader_id, *channel_id, loc.seq, loc.seq),
                    "moving a channel read marker",
                );
            }
        }
        Ok(())
    }

    /// Numbers a channel message and writes its rows in one logged batch, after the batches of
    /// the channel's earlier messages in this apply: the same rules as a conversation's
    /// (`Applying::add_message`). A message numbered before keeps its numbers (from
    /// `channel_messages_by_id` or, when only the tail row of its batch is visible, the tail);
    /// a new one gets the tail's next.
    fn add_channel_message(&mut self, change: &CommunityChange) -> Result<()> {
        let CommunityChange::AddChannelMessage {
            message_id,
            server_id,
            channel_id,
            sender_id,
            text,
            client_msg_id,
            sent_at,
            position,
        } = change
        else {
            return Ok(());
        };
        let finite = self.finite_retention();
        let batch = &mut self.community;
        if !batch.issued.insert(*message_id) {
            return Ok(()); // a duplicate within this batch
        }
        let (id, channel, server, sender) = (*message_id, *channel_id, *server_id, *sender_id);
        let tail = *batch.tails.entry(channel).or_insert(ChannelTail::EMPTY);
        let loc = match batch.locations.get(&id) {
            Some(loc) if (loc.channel_id, loc.sender_id) != (channel, sender) => {
                tracing::error!(message_id = %id, channel_id = %channel, "message id already names another channel message; not projected");
                return Ok(());
            }
            // Numbered before; a batch of its channel after it succeeded, so it is whole.
            Some(loc) if loc.seq < tail.last_seq => return Ok(()),
            Some(loc) => *loc,
            // With a retention, an unknown message that is not past the tail is a redelivery
            // of one that expired (never stored, or gone since): numbered already.
            None if finite
                && tail.last_message_id != Some(id)
                && (position.offset as i64) <= tail.last_offset =>
            {
                return Ok(());
            }
            None if tail.last_message_id == Some(id) => ChannelLocation {
                channel_id: channel,
                server_id: server,
                bucket: history_bucket(tail.last_sent_at_us),
                seq: tail.last_seq,
                sender_id: sender,
                sent_at_us: tail.last_sent_at_us,
            },
            None => {
                // Send times are kept monotonic in seq: `since` bounds seq exactly, and the
                // bucket never decreases along a channel.
                let sent_at_us = micros(*sent_at).max(tail.last_sent_at_us);
                ChannelLocation {
                    channel_id: channel,
                    server_id: server,
                    bucket: history_bucket(sent_at_us),
                    seq: tail.last_seq + 1,
                    sender_id: sender,
                    sent_at_us,
                }
            }
        };
        let ts = at_offset(position.offset);
        let partition = partition_of(position.partition)?;
        let offset = position.offset as i64;
        let last_offset = tail.last_offset.max(offset);
        batch.tails.insert(
            channel,
            ChannelTail {
                last_message_id: Some(id),
                last_seq: loc.seq,
                last_sent_at_us: loc.sent_at_us,
                last_offset,
            },
        );
        let (bucket, seq, sent_at_us) = (loc.bucket, loc.seq, loc.sent_at_us);
        let st = self.store.cst();
        // The tail as this message left it; a later message's (newer timestamp) wins.
        let tail_row = (channel, id, seq, sent_at_us, last_offset, ts);
        let store = self.store;
        let Some(ttl) = self.ttl(sent_at_us) else {
            // Expired: not stored and unknown to the rest of this apply (a read marker on it is
            // ignored), but numbered.
            self.chains
                .entry(channel)
                .or_default()
                .push(Box::pin(store.write(
                    &st.CHANNEL_TAIL_SET,
                    tail_row,
                    "numbering an expired channel message",
                )));
            return Ok(());
        };
        self.community.locations.insert(id, loc);
        let mut logged = Batch::new(BatchType::Logged);
        logged.set_is_idempotent(true);
        for statement in [
            &st.CHANNEL_MESSAGE_ADD,
            &st.CHANNEL_LOCATION_ADD,
            &st.CHANNEL_TAIL_SET,
            &st.CHANNEL_BUCKET_ADD,
        ] {
            logged.append_statement(statement.clone());
        }
        let message_row = (
            channel,
            bucket,
            seq,
            id,
            loc.server_id,
            sender,
            text.clone(),
            match client_msg_id {
                Some(c) => MaybeUnset::Set(c.clone()),
                None => MaybeUnset::Unset,
            },
            sent_at_us,
            partition,
            offset,
            ts,
            ttl,
        );
        let location_row = (
            id,
            channel,
            loc.server_id,
            bucket,
            seq,
            sender,
            sent_at_us,
            ts,
            ttl,
        );
        let bucket_row = (channel, bucket, ts, ttl);
        let write: PendingWrite<'a> = match client_msg_id {
            // The idempotency key goes in the same batch: a message is never stored without it.
            Some(key) => {
                logged.append_statement(st.CHANNEL_CLIENT_ID_ADD.clone());
                let rows = (
                    message_row,
                    location_row,
                    tail_row,
                    bucket_row,
                    (sender, key.clone(), sent_at_us, id, ts, ttl),
                );
                Box::pin(store.logged_batch(logged, rows))
            }
            None => Box::pin(
                store.logged_batch(logged, (message_row, location_row, tail_row, bucket_row)),
            ),
        };
        self.chains.entry(channel).or_default().push(write);
        self.numbered.insert(id, channel);
        Ok(())
    }
}

// ----- queries -----

/// The reads of one index table (`server_search` or `servers_by_tag`) in (name key, server
/// key) order: from the start of a partition, the rest of one name after a server, and the
/// names after one.
#[derive(Clone, Copy)]
struct IndexReads<'s> {
    first: &'s PreparedStatement,
    same_name: &'s PreparedStatement,
    next_names: &'s PreparedStatement,
}

impl ScyllaStore {
    async fn server_with_key(&self, id: Uuid) -> Result<Option<(Server, String)>> {
        match self
            .first::<ServerRow>(&self.cst().SERVER_GET, (id,), "reading a server")
            .await?
        {
            Some(row) => server_from_row(id, row),
            None => Ok(None),
        }
    }

    pub(super) async fn community_server(&self, id: Uuid) -> Result<Option<Server>> {
        Ok(self.server_with_key(id).await?.map(|(server, _)| server))
    }

    pub(super) async fn community_server_by_name(&self, name: &str) -> Result<Option<Server>> {
        let holder = self
            .first::<(Option<Uuid>,)>(
                &self.cst().SERVER_NAME_GET,
                (server_name_key(name),),
                "looking up a server name",
            )
            .await?
            .and_then(|(id,)| id);
        match holder {
            Some(id) => self.community_server(id).await,
            None => Ok(None),
        }
    }

    /// Reads one search or tag partition from after `after` (a name key and server key) in
    /// chunks, keeping the servers `keep` accepts, until `want` are kept or the partition ends.
    async fn scan_index(
        &self,
        reads: IndexReads<'_>,
        partition: &str,
        mut after: Option<(String, Vec<u8>)>,
        want: usize,
        keep: impl Fn(&str, &Server) -> bool,
    ) -> Result<Vec<Server>> {
        const ACTION: &str = "searching servers";
        let mut found = Vec::new();
        loop {
            let rows: Vec<IndexRow> = match &after {
                None => {
                    self.rows(reads.first, (partition, CHUNK as i32), ACTION)
                        .await?
                }
                Some((name_key, server_key)) => {
                    let mut rows: Vec<IndexRow> = self
                        .rows(
                            reads.same_name,
                            (partition, name_key, server_key, CHUNK as i32),
                            ACTION,
                        )
                        .await?;
                    if rows.len() < CHUNK {
                        let rest = (CHUNK - rows.len()) as i32;
                        rows.extend(
                            self.rows::<IndexRow>(
                                reads.next_names,
                                (partition, name_key, rest),
                                ACTION,
                            )
                            .await?,
                        );
                    }
                    rows
                }
            };
            let fetched = rows.len();
            for row in rows {
                after = Some((row.0.clone(), row.1.clone()));
                let name_key = row.0.clone();
                let Some(server) = server_from_index(row)? else {
                    continue;
                };
                if keep(&name_key, &server) {
                    found.push(server);
                    if found.len() >= want {
                        return Ok(found);
                    }
                }
            }
            if fetched < CHUNK {
                return Ok(found);
            }
        }
    }

    pub(super) async fn community_search_servers(
        &self,
        search: &ServerSearch,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Server>> {
        let after = match after {
            Some(cursor) => {
                let id = id_cursor(cursor)?;
                // Only a public server is a cursor: a private one must not be probed this way.
                let Some((_, name_key)) = self
                    .server_with_key(id)
                    .await?
                    .filter(|(server, _)| server.visibility == Visibility::Public)
                else {
                    return Err(StoreError::InvalidCursor(cursor.to_owned()));
                };
                Some((name_key, key(id)))
            }
            None => None,
        };
        let mut tags: Vec<&str> = Vec::new();
        for tag in &search.tags {
            if !tags.contains(&tag.as_str()) {
                tags.push(tag);
            }
        }
        let has_tags = |server: &Server| tags.iter().all(|t| server.tags.iter().any(|s| s == t));
        let st = self.cst();
        let want = limit + 1;
        let found = match search.name.as_deref().filter(|n| !n.is_empty()) {
            // The name's partition, filtered by the whole name and the tags.
            Some(query) => {
                let (gram, matches) = name_query(query);
                self.scan_index(
                    IndexReads {
                        first: &st.SEARCH_FIRST,
                        same_name: &st.SEARCH_SAME_NAME,
                        next_names: &st.SEARCH_NEXT_NAMES,
                    },
                    &gram,
                    after,
                    want,
                    |name_key, server| matches(name_key) && has_tags(server),
                )
                .await?
            }
            // The first tag's partition, filtered by the others.
            None => match tags.first() {
                Some(first) => {
                    self.scan_index(
                        IndexReads {
                            first: &st.TAG_FIRST,
                            same_name: &st.TAG_SAME_NAME,
                            next_names: &st.TAG_NEXT_NAMES,
                        },
                        first,
                        after,
                        want,
                        |_, server| has_tags(server),
                    )
                    .await?
                }
                None => Vec::new(),
            },
        };
        Ok(page(found, limit, |s: &Server| s.server_id.to_string()))
    }

    pub(super) async fn community_user_servers(
        &self,
        user: Uuid,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<UserServer>> {
        const ACTION: &str = "reading a user's servers";
        let mut after = after.map(id_cursor).transpose()?;
        let want = limit + 1;
        let mut items = Vec::new();
        loop {
            let rows: Vec<(Option<Uuid>, Option<i32>, Option<i64>)> = match after {
                None => {
                    self.rows(&self.cst().USER_SERVERS_FIRST, (user, CHUNK as i32), ACTION)
                        .await?
                }
                Some(id) => {
                    self.rows(
                        &self.cst().USER_SERVERS_AFTER,
                        (user, key(id), CHUNK as i32),
                        ACTION,
                    )
                    .await?
                }
            };
            let fetched = rows.len();
            let entries: Vec<(Uuid, i32, i64)> = rows
                .into_iter()
                .filter_map(|(id, role, since)| Some((id?, role?, since?)))
                .collect();
            if let Some((last, ..)) = entries.last() {
                after = Some(*last);
            }
            let built: Vec<Option<UserServer>> = futures::stream::iter(entries)
                .map(|(id, role, since)| async move {
                    let Some(server) = self.community_server(id).await? else {
                        return Ok(None);
                    };
                    Ok::<_, StoreError>(Some(UserServer {
                        server,
                        role: if role == ROLE_OWNER {
                            ServerRole::Owner
                        } else {
                            ServerRole::Subscriber
                        },
                        since: from_micros(since)?,
                    }))
                })
                .buffered(READS_IN_FLIGHT)
                .try_collect()
                .await?;
            items.extend(built.into_iter().flatten());
            if items.len() >= want || fetched < CHUNK {
                break;
            }
        }
        items.truncate(want);
        Ok(page(items, limit, |s: &UserServer| {
            s.server.server_id.to_string()
        }))
    }

    pub(super) async fn community_membership(
        &self,
        server: Uuid,
        user: Uuid,
    ) -> Result<Option<ServerRole>> {
        // Only members of a server known here (as in the embedded store): the rows of a
        // creation that was not projected (a taken name) are not a membership.
        let (role, known) = futures::try_join!(
            self.first::<(Option<i32>,)>(
                &self.cst().MEMBER_GET,
                (server, user),
                "reading a membership",
            ),
            self.community_server(server),
        )?;
        let role = role.and_then(|(role,)| role).filter(|_| known.is_some());
        Ok(role.map(|r| {
            if r == ROLE_OWNER {
                ServerRole::Owner
            } else {
                ServerRole::Subscriber
            }
        }))
    }

    async fn stored_invitation(&self, id: Uuid) -> Result<Option<StoredInvitation>> {
        Ok(self
            .first::<InvitationRow>(&self.cst().INVITATION_GET, (id,), "reading an invitation")
            .await?
            .and_then(StoredInvitation::from_row))
    }

    /// An invitation with its server's name; `None` if the server is not known here (as in
    /// the embedded store, an invitation is shown with its server only).
    async fn invitation_with_name(
        &self,
        id: Uuid,
        stored: StoredInvitation,
    ) -> Result<Option<Invitation>> {
        match self.community_server(stored.server_id).await? {
            Some(server) => stored.into_invitation(id, server.name).map(Some),
            None => Ok(None),
        }
    }

    pub(super) async fn community_invitation(&self, id: Uuid) -> Result<Option<Invitation>> {
        match self.stored_invitation(id).await? {
            Some(stored) => self.invitation_with_name(id, stored).await,
            None => Ok(None),
        }
    }

    pub(super) async fn community_pending_invitation(
        &self,
        server: Uuid,
        invitee: Uuid,
    ) -> Result<Option<Invitation>> {
        let rows: Vec<(Uuid,)> = self
            .all(
                &self.cst().SERVER_PENDING_GET,
                (server, invitee),
                "reading pending invitations",
            )
            .await?;
        // The index only points: the invitation's state decides. Newest first if several.
        let mut ids: Vec<Uuid> = rows.into_iter().map(|(id,)| id).collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        for id in ids {
            let Some(stored) = self.stored_invitation(id).await? else {
                continue;
            };
            if stored.answer.is_none() && (stored.server_id, stored.invitee_id) == (server, invitee)
            {
                return self.invitation_with_name(id, stored).await;
            }
        }
        Ok(None)
    }

    pub(super) async fn community_pending_invitations(
        &self,
        invitee: Uuid,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Invitation>> {
        let before = after.map(id_cursor).transpose()?;
        let items = self
            .checked_index(
                (
                    &self.cst().INVITEE_PENDING_FIRST,
                    &self.cst().INVITEE_PENDING_BEFORE,
                ),
                invitee,
                before,
                limit + 1,
                "reading pending invitations",
                |id| async move {
                    match self.stored_invitation(id).await? {
                        // The index only points: the invitation's state decides.
                        Some(stored) if stored.answer.is_none() && stored.invitee_id == invitee => {
                            self.invitation_with_name(id, stored).await
                        }
                        _ => Ok(None),
                    }
                },
            )
            .await?;
        Ok(page(items, limit, |i: &Invitation| {
            i.invitation_id.to_string()
        }))
    }

    /// Pages through an index partition of ids, [`CHUNK`] rows a read (`first` reads from its
    /// start, `next` from past a cursor), and keeps what `check` makes of each id, checking a
    /// chunk's ids concurrently, until `want` are kept or the partition ends. An index only
    /// points: `check` reads what it points to and decides.
    async fn checked_index<T, F, Fut>(
        &self,
        (first, next): (&PreparedStatement, &PreparedStatement),
        partition: Uuid,
        mut cursor: Option<Uuid>,
        want: usize,
        action: &'static str,
        check: F,
    ) -> Result<Vec<T>>
    where
        F: Fn(Uuid) -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        let mut items = Vec::new();
        loop {
            let rows: Vec<(Option<Uuid>,)> = match cursor {
                None => self.rows(first, (partition, CHUNK as i32), action).await?,
                Some(id) => {
                    self.rows(next, (partition, key(id), CHUNK as i32), action)
                        .await?
                }
            };
            let fetched = rows.len();
            let ids: Vec<Uuid> = rows.into_iter().filter_map(|(id,)| id).collect();
            if let Some(last) = ids.last() {
                cursor = Some(*last);
            }
            let checked: Vec<Option<T>> = futures::stream::iter(ids)
                .map(&check)
                .buffered(READS_IN_FLIGHT)
                .try_collect()
                .await?;
            items.extend(checked.into_iter().flatten());
            if items.len() >= want || fetched < CHUNK {
                break;
            }
        }
        items.truncate(want);
        Ok(items)
    }

    pub(super) async fn community_posts(
        &self,
        server: Uuid,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page<Post>> {
        const ACTION: &str = "reading posts";
        let before = before.map(id_cursor).transpose()?;
        let want = limit + 1;
        let mut found: Vec<Post> = Vec::new();
        let mut from = before.map_or(i64::MAX, post_bucket);
        'walk: loop {
            let buckets: Vec<(i64,)> = self
                .rows(
                    &self.cst().POST_BUCKETS_DOWN,
                    (server, from, BUCKET_CHUNK),
                    "reading post buckets",
                )
                .await?;
            for &(bucket,) in &buckets {
                // One read per bucket: nothing is filtered out, so a short answer means the
                // bucket holds no more.
                let fetch = (want - found.len()) as i32;
                let rows: Vec<PostRow> = match before {
                    Some(id) => {
                        self.rows(
                            &self.cst().POSTS_BEFORE,
                            (server, bucket, key(id), fetch),
                            ACTION,
                        )
                        .await?
                    }
                    None => {
                        self.rows(&self.cst().POSTS_FIRST, (server, bucket, fetch), ACTION)
                            .await?
                    }
                };
                for row in rows {
                    found.extend(post_from_row(server, row)?);
                }
                if found.len() >= want {
                    break 'walk;
                }
            }
            match buckets.last() {
                Some(&(last,)) if buckets.len() == BUCKET_CHUNK as usize => from = last - 1,
                _ => break,
            }
        }
        Ok(page(found, limit, |p: &Post| p.post_id.to_string()))
    }

    async fn channel_tail(&self, channel: Uuid) -> Result<Option<ChannelTail>> {
        Ok(self
            .first::<ChannelTailRow>(
                &self.cst().CHANNEL_TAIL_GET,
                (channel,),
                "reading a channel's tail",
            )
            .await?
            .map(ChannelTail::from_row))
    }

    /// The seq of a channel's oldest message still stored after `after` (`None` if none is):
    /// with a retention, those before it expired. Walks the channel's buckets newest first
    /// and stops at the first that holds nothing after `after` (or when the message right
    /// after it is found), so it reads about as many buckets as hold unread messages.
    async fn first_kept_channel_seq(&self, channel: Uuid, after: i64) -> Result<Option<i64>> {
        let mut found = None;
        let mut below = i64::MAX;
        loop {
            let buckets: Vec<(i64,)> = self
                .rows(
                    &self.cst().CHANNEL_BUCKETS_DOWN,
                    (channel, below, BUCKET_CHUNK),
                    "reading channel history buckets",
                )
                .await?;
            let Some(&(last,)) = buckets.last() else {
                return Ok(found);
            };
            for (bucket,) in buckets {
                let rows: Vec<(i64, Option<Uuid>)> = self
                    .rows(
                        &self.cst().CHANNEL_FIRST_AFTER,
                        (channel, bucket, after, FIRST_AFTER_ROWS),
                        "reading a channel's oldest messages",
                    )
                    .await?;
                // Rows without a message are strays (a write that outlived it): skipped.
                match rows.into_iter().find(|(_, id)| id.is_some()) {
                    Some((seq, _)) => {
                        found = Some(seq);
                        if seq == after + 1 {
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

    async fn channel_location(&self, message_id: Uuid) -> Result<Option<ChannelLocation>> {
        Ok(self
            .first::<ChannelLocationRow>(
                &self.cst().CHANNEL_LOCATION_GET,
                (message_id,),
                "locating a channel message",
            )
            .await?
            .and_then(ChannelLocation::from_row))
    }

    /// The channel `user` is in as stored (deleted or unknown channels included).
    async fn user_channel(&self, user: Uuid) -> Result<Option<Uuid>> {
        Ok(self
            .first::<(Option<Uuid>,)>(
                &self.cst().USER_CHANNEL_GET,
                (user,),
                "reading a user's channel",
            )
            .await?
            .and_then(|(channel,)| channel))
    }

    async fn read_marker(&self, user: Uuid, channel: Uuid) -> Result<i64> {
        Ok(self
            .first::<(Option<i64>,)>(
                &self.cst().CHANNEL_READ_GET,
                (user, channel),
                "reading a channel read marker",
            )
            .await?
            .and_then(|(seq,)| seq)
            .unwrap_or(0))
    }

    /// What a channel's creation wrote (`None` before it, even if a deletion came first).
    async fn channel_facts(&self, channel: Uuid) -> Result<Option<ChannelFacts>> {
        let row = self
            .first::<ChannelRow>(&self.cst().CHANNEL_GET, (channel,), "reading a channel")
            .await?;
        Ok(
            row.and_then(|(server_id, name, created_by, created_at, _)| {
                Some(ChannelFacts {
                    server_id: server_id?,
                    name: name?,
                    created_by: created_by?,
                    created_at_us: created_at?,
                })
            }),
        )
    }

    pub(super) async fn community_channel(&self, channel: Uuid) -> Result<Option<Channel>> {
        match self
            .first::<ChannelRow>(&self.cst().CHANNEL_GET, (channel,), "reading a channel")
            .await?
        {
            Some(row) => channel_from_row(channel, row),
            None => Ok(None),
        }
    }

    pub(super) async fn community_channels(
        &self,
        server: Uuid,
        viewer: Uuid,
    ) -> Result<Vec<ChannelSummary>> {
        let rows: Vec<ServerChannelRow> = self
            .all(
                &self.cst().SERVER_CHANNELS_GET,
                (server,),
                "reading a server's channels",
            )
            .await?;
        let mut channels = Vec::new();
        for (channel_id, name, created_by, created_at, deleted) in rows {
            let row = (Some(server), name, created_by, created_at, deleted);
            channels.extend(channel_from_row(channel_id, row)?);
        }
        let mut summaries: Vec<ChannelSummary> = futures::stream::iter(channels)
            .map(|channel| async move {
                let (tail, read_seq) = futures::try_join!(
                    self.channel_tail(channel.channel_id),
                    self.read_marker(viewer, channel.channel_id),
                )?;
                let tail = tail.unwrap_or(ChannelTail::EMPTY);
                // With a retention, messages that expired after the marker are not unread:
                // count from just before the oldest one left (all read if none is).
                let mut read_seq = read_seq;
                if self.retention().period().is_some() && tail.last_seq > read_seq {
                    read_seq = match self
                        .first_kept_channel_seq(channel.channel_id, read_seq)
                        .await?
                    {
                        Some(first) => read_seq.max(first - 1),
                        None => tail.last_seq,
                    };
                }
                let last_message_at = if tail.last_message_id.is_some() {
                    Some(from_micros(tail.last_sent_at_us)?)
                } else {
                    None
                };
                Ok::<_, StoreError>(ChannelSummary {
                    channel,
                    last_seq: tail.last_seq.max(0) as u64,
                    last_message_at,
                    unread_count: (tail.last_seq - read_seq).max(0) as u64,
                })
            })
            .buffer_unordered(READS_IN_FLIGHT)
            .try_collect()
            .await?;
        summaries.sort_by(|a, b| {
            (&a.channel.name, a.channel.channel_id).cmp(&(&b.channel.name, b.channel.channel_id))
        });
        Ok(summaries)
    }

    pub(super) async fn community_current_channel(&self, user: Uuid) -> Result<Option<Channel>> {
        match self.user_channel(user).await? {
            Some(channel) => self.community_channel(channel).await,
            None => Ok(None),
        }
    }

    pub(super) async fn community_channel_members(
        &self,
        channel: Uuid,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Uuid>> {
        let after = after.map(id_cursor).transpose()?;
        // Users of a deleted (or not yet known) channel are in no channel.
        if self.community_channel(channel).await?.is_none() {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
        let items = self
            .checked_index(
                (
                    &self.cst().CHANNEL_MEMBERS_FIRST,
                    &self.cst().CHANNEL_MEMBERS_AFTER,
                ),
                channel,
                after,
                limit + 1,
                "reading a channel's members",
                // The index only points: the channel the user is in decides.
                |user| async move {
                    Ok((self.user_channel(user).await? == Some(channel)).then_some(user))
                },
            )
            .await?;
        Ok(page(items, limit, Uuid::to_string))
    }

    /// A channel message at a known place, as `viewer` sees it.
    async fn channel_message_at(
        &self,
        viewer: Uuid,
        channel: Uuid,
        bucket: i64,
        seq: i64,
    ) -> Result<Option<ChannelMessage>> {
        match self
            .first::<ChannelMessageRow>(
                &self.cst().CHANNEL_MESSAGE_GET,
                (channel, bucket, seq),
                "reading a channel message",
            )
            .await?
        {
            Some(row) => channel_message_from_row(channel, viewer, row),
            None => Ok(None),
        }
    }

    pub(super) async fn community_channel_history(
        &self,
        viewer: Uuid,
        channel: Uuid,
        query: HistoryQuery,
    ) -> Result<Page<ChannelMessage>> {
        let history = ChannelHistory { viewer, channel };
        let found = match self.history_page(&history, &query).await? {
            Some((_, found)) => found,
            None => Vec::new(),
        };
        Ok(page(found, query.limit, |m: &ChannelMessage| {
            m.message_id.to_string()
        }))
    }

    pub(super) async fn community_channel_message_by_client_id(
        &self,
        sender: Uuid,
        client_msg_id: &str,
    ) -> Result<Option<ChannelMessage>> {
        let id = self
            .first::<(Option<Uuid>,)>(
                &self.cst().CHANNEL_CLIENT_ID_GET,
                (sender, client_msg_id),
                "looking up a channel client message id",
            )
            .await?
            .and_then(|(id,)| id);
        let Some(id) = id else { return Ok(None) };
        match self.channel_location(id).await? {
            Some(loc) => {
                self.channel_message_at(sender, loc.channel_id, loc.bucket, loc.seq)
                    .await
            }
            None => Ok(None),
        }
    }

    pub(super) async fn community_channel_message(
        &self,
        viewer: Uuid,
        message_id: Uuid,
    ) -> Result<Option<ChannelMessage>> {
        match self.channel_location(message_id).await? {
            Some(loc) => {
                self.channel_message_at(viewer, loc.channel_id, loc.bucket, loc.seq)
                    .await
            }
            None => Ok(None),
        }
    }

    pub(super) async fn community_latest_channel_message(
        &self,
        channel: Uuid,
    ) -> Result<Option<ChannelMessage>> {
        let Some(tail) = self.channel_tail(channel).await? else {
            return Ok(None);
        };
        let Some(message_id) = tail.last_message_id else {
            return Ok(None);
        };
        // The tail holds the message's numbers (its row is in the same logged batch); no
        // viewer: the idempotency key is the sender's alone.
        let found = self
            .channel_message_at(
                Uuid::nil(),
                channel,
                history_bucket(tail.last_sent_at_us),
                tail.last_seq,
            )
            .await?;
        Ok(found.filter(|m| m.message_id == message_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grams_cover_prefixes_and_distinct_trigrams() {
        assert_eq!(
            grams("abcab"),
            ["p:a", "p:ab", "t:abc", "t:bca", "t:cab"].map(String::from)
        );
        assert_eq!(
            grams("aaaa"),
            ["p:a", "p:aa", "t:aaa"].map(String::from),
            "each trigram once"
        );
        assert_eq!(
            grams("é"),
            ["p:é"].map(String::from),
            "characters, not bytes"
        );
    }

    #[test]
    fn name_queries_read_a_partition_that_holds_every_match() {
        for (name, query) in [
            ("rustaceans", "ru"),
            ("rustaceans", "ace"),
            ("élan vital", "lan v"),
        ] {
            let (gram, matches) = name_query(query);
            assert!(grams(name).contains(&gram), "{name} {query}");
            assert!(matches(name));
        }
        let (_, matches) = name_query("us");
        assert!(!matches("rust"), "a short query matches prefixes only");
        let (gram, _) = name_query("a:b");
        assert_eq!(gram, "t:a:b");
    }

    #[test]
    fn post_buckets_follow_the_id_order() {
        let early = Uuid::from_u128(0x0000_0000_0001_7000_8000_0000_0000_0000);
        let late = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000);
        assert!(post_bucket(early) <= post_bucket(late));
        assert_eq!(post_bucket(Uuid::nil()), 0);
        assert_eq!(
            post_bucket(Uuid::max()),
            ((1i64 << 48) - 1) / POST_BUCKET_MILLIS
        );
        let id = Uuid::now_v7();
        let millis = id.get_timestamp().expect("v7").to_unix();
        let millis = millis.0 as i64 * 1000 + i64::from(millis.1) / 1_000_000;
        assert_eq!(post_bucket(id), millis / POST_BUCKET_MILLIS);
    }

    #[test]
    fn tags_keep_their_order() {
        let tags = vec!["b".to_owned(), "a".to_owned(), "c".to_owned()];
        assert_eq!(tags_vec(Some(tags_map(&tags))), tags);
        assert!(tags_vec(None).is_empty());
    }

    #[test]
    fn one_way_timestamps_are_above_every_offset_write() {
        const { assert!(ANSWER_TS > CREATED_TS) };
        assert!(OWNER_TS > at_offset(u64::from(u32::MAX) * 1024));
    }
}
