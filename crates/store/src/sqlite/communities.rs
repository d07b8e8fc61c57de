//! Servers, invitations, posts and channels in the embedded store.
//!
//! Every [`CommunityChange`] is one or two guarded statements: inserts ignore rows they find,
//! subscriptions and channel memberships carry the `version` of their latest change, an
//! invitation is answered only while pending, and a deleted channel stays as a tombstone row
//! (`deleted = 1`) that a later `AddChannel` cannot overwrite. Deleted channels are left out
//! at read time.
//!
//! A user's channel membership is one row of `user_channels` (a user is in at most one
//! channel); a channel's members are read through its index, so joining another channel moves
//! the user out of the old one's member list in the same write.
//!
//! Channel messages are numbered like direct messages: each channel's next `seq` in apply
//! order, with its time kept monotonic within the channel (`max(event time, previous
//! message's time)`) so that `since` bounds `seq` exactly. Unread counts are derived: the
//! channel's last `seq` minus the reader's marker (channel messages are never deleted).

use missive_log::Position;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use uuid::Uuid;

use super::{from_micros, micros, sql};
use crate::{
    Channel, ChannelMessage, ChannelSummary, CommunityChange, HistoryQuery, Invitation,
    InvitationState, Page, Post, Result, Server, ServerRole, ServerSearch, StoreError, UserServer,
    Visibility, page, server_name_key,
};

/// The tables below, for dropping on a schema change.
pub(super) const TABLES: [&str; 10] = [
    "servers",
    "server_tags",
    "server_members",
    "invitations",
    "posts",
    "channels",
    "channel_tails",
    "channel_messages",
    "channel_reads",
    "user_channels",
];

/// `role`: 0 owner, 1 subscriber. `visibility`: 0 public, 1 private. Invitation `state`: 0
/// pending, 1 accepted, 2 declined. Tags are one column ([`encode_tags`]); a server's are also
/// rows of `server_tags`, for search. A membership's `since` is the time of its latest change,
/// read only while subscribed: the latest subscription's time.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS servers (
    server_id  BLOB PRIMARY KEY,
    owner_id   BLOB NOT NULL,
    name       TEXT NOT NULL,
    name_key   TEXT NOT NULL UNIQUE,
    tags       TEXT NOT NULL,
    visibility INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS servers_public_by_name ON servers (name_key, server_id)
    WHERE visibility = 0;
CREATE TABLE IF NOT EXISTS server_tags (
    server_id BLOB NOT NULL,
    tag       TEXT NOT NULL,
    PRIMARY KEY (server_id, tag)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS server_members (
    user_id    BLOB NOT NULL,
    server_id  BLOB NOT NULL,
    role       INTEGER NOT NULL,
    subscribed INTEGER NOT NULL,
    since      INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    PRIMARY KEY (user_id, server_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS invitations (
    invitation_id BLOB PRIMARY KEY,
    server_id     BLOB NOT NULL,
    inviter_id    BLOB NOT NULL,
    invitee_id    BLOB NOT NULL,
    sent_at       INTEGER NOT NULL,
    state         INTEGER NOT NULL DEFAULT 0,
    answered_at   INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS invitations_pending ON invitations (invitee_id, invitation_id)
    WHERE state = 0;
CREATE TABLE IF NOT EXISTS posts (
    post_id       BLOB PRIMARY KEY,
    server_id     BLOB NOT NULL,
    author_id     BLOB NOT NULL,
    content       TEXT NOT NULL,
    tags          TEXT NOT NULL,
    published_at  INTEGER NOT NULL,
    log_partition INTEGER NOT NULL,
    log_offset    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS posts_by_server ON posts (server_id, post_id);
CREATE TABLE IF NOT EXISTS channels (
    channel_id BLOB PRIMARY KEY,
    server_id  BLOB NOT NULL,
    name       TEXT,
    created_by BLOB,
    created_at INTEGER,
    deleted    INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS channels_by_name ON channels (server_id, name, channel_id)
    WHERE deleted = 0;
CREATE TABLE IF NOT EXISTS channel_tails (
    channel_id      BLOB PRIMARY KEY,
    last_seq        INTEGER NOT NULL,
    last_message_at INTEGER NOT NULL,
    last_offset     INTEGER NOT NULL DEFAULT -1,
    expired_seq     INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS channel_messages (
    channel_id    BLOB NOT NULL,
    seq           INTEGER NOT NULL,
    message_id    BLOB NOT NULL UNIQUE,
    server_id     BLOB NOT NULL,
    sender_id     BLOB NOT NULL,
    text          TEXT NOT NULL,
    client_msg_id TEXT,
    sent_at       INTEGER NOT NULL,
    log_partition INTEGER NOT NULL,
    log_offset    INTEGER NOT NULL,
    PRIMARY KEY (channel_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS channel_messages_by_time ON channel_messages (channel_id, sent_at, seq);
CREATE INDEX IF NOT EXISTS channel_messages_by_age ON channel_messages (sent_at);
CREATE INDEX IF NOT EXISTS channel_messages_by_client_id
    ON channel_messages (sender_id, client_msg_id) WHERE client_msg_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS channel_reads (
    channel_id BLOB NOT NULL,
    user_id    BLOB NOT NULL,
    read_seq   INTEGER NOT NULL,
    PRIMARY KEY (channel_id, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS user_channels (
    user_id    BLOB PRIMARY KEY,
    channel_id BLOB,
    version    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS user_channels_by_channel ON user_channels (channel_id, user_id)
    WHERE channel_id IS NOT NULL;
";

const OWNER: i64 = 0;
const SUBSCRIBER: i64 = 1;
const PENDING: i64 = 0;
const ACCEPTED: i64 = 1;
const DECLINED: i64 = 2;

/// Applies one change; channel messages sent at or before `cutoff` (microseconds) have
/// expired (see `add_messages` in the parent module: the same rules).
pub(super) fn apply(
    tx: &Transaction<'_>,
    change: &CommunityChange,
    cutoff: Option<i64>,
) -> Result<()> {
    match change {
        CommunityChange::AddServer {
            server_id,
            owner_id,
            name,
            tags,
            visibility,
            created_at,
        } => add_server(
            tx,
            *server_id,
            *owner_id,
            name,
            tags,
            *visibility,
            micros(*created_at),
        )?,
        CommunityChange::SetSubscription {
            server_id,
            user_id,
            subscribed,
            at,
            version,
        } => {
            tx.prepare_cached(
                "INSERT INTO server_members (user_id, server_id, role, subscribed, since, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (user_id, server_id) DO UPDATE SET
                     subscribed = excluded.subscribed, since = excluded.since,
                     version = excluded.version
                 WHERE server_members.role = ?3 AND excluded.version > server_members.version",
            )
            .and_then(|mut s| {
                s.execute(params![
                    user_id,
                    server_id,
                    SUBSCRIBER,
                    subscribed,
                    micros(*at),
                    *version as i64
                ])
            })
            .map_err(sql("updating a subscription"))?;
        }
        CommunityChange::AddInvitation {
            invitation_id,
            server_id,
            inviter_id,
            invitee_id,
            sent_at,
        } => {
            tx.prepare_cached(
                "INSERT INTO invitations (invitation_id, server_id, inviter_id, invitee_id, sent_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    invitation_id,
                    server_id,
                    inviter_id,
                    invitee_id,
                    micros(*sent_at)
                ])
            })
            .map_err(sql("adding an invitation"))?;
        }
        CommunityChange::AnswerInvitation {
            invitation_id,
            accepted,
            at,
        } => {
            let state = if *accepted { ACCEPTED } else { DECLINED };
            tx.prepare_cached(
                "UPDATE invitations SET state = ?2, answered_at = ?3
                 WHERE invitation_id = ?1 AND state = ?4",
            )
            .and_then(|mut s| s.execute(params![invitation_id, state, micros(*at), PENDING]))
            .map_err(sql("answering an invitation"))?;
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
            tx.prepare_cached(
                "INSERT INTO posts (post_id, server_id, author_id, content, tags, published_at,
                                    log_partition, log_offset)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    post_id,
                    server_id,
                    author_id,
                    content,
                    encode_tags(tags),
                    micros(*published_at),
                    position.partition,
                    position.offset as i64
                ])
            })
            .map_err(sql("adding a post"))?;
        }
        CommunityChange::AddChannel {
            channel_id,
            server_id,
            name,
            created_by,
            created_at,
        } => {
            // A tombstone row conflicts too: a deleted channel stays deleted.
            tx.prepare_cached(
                "INSERT INTO channels (channel_id, server_id, name, created_by, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    channel_id,
                    server_id,
                    name,
                    created_by,
                    micros(*created_at)
                ])
            })
            .map_err(sql("adding a channel"))?;
        }
        CommunityChange::DeleteChannel {
            channel_id,
            server_id,
        } => {
            tx.prepare_cached(
                "INSERT INTO channels (channel_id, server_id, deleted) VALUES (?1, ?2, 1)
                 ON CONFLICT (channel_id) DO UPDATE SET deleted = 1",
            )
            .and_then(|mut s| s.execute(params![channel_id, server_id]))
            .map_err(sql("deleting a channel"))?;
        }
        CommunityChange::JoinChannel {
            user_id,
            channel_id,
            version,
            ..
        } => {
            tx.prepare_cached(
                "INSERT INTO user_channels (user_id, channel_id, version) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id) DO UPDATE SET
                     channel_id = excluded.channel_id, version = excluded.version
                 WHERE excluded.version > user_channels.version",
            )
            .and_then(|mut s| s.execute(params![user_id, channel_id, *version as i64]))
            .map_err(sql("joining a channel"))?;
        }
        CommunityChange::LeaveChannel {
            user_id,
            channel_id,
            version,
        } => {
            tx.prepare_cached(
                "UPDATE user_channels SET channel_id = NULL, version = ?3
                 WHERE user_id = ?1 AND channel_id = ?2 AND version < ?3",
            )
            .and_then(|mut s| s.execute(params![user_id, channel_id, *version as i64]))
            .map_err(sql("leaving a channel"))?;
        }
        CommunityChange::AddChannelMessage {
            message_id,
            server_id,
            channel_id,
            sender_id,
            text,
            client_msg_id,
            sent_at,
            position,
        } => {
            let tail: Option<(i64, i64, i64)> = tx
                .prepare_cached(
                    "SELECT last_seq, last_message_at, last_offset FROM channel_tails
                     WHERE channel_id = ?1",
                )
                .and_then(|mut s| {
                    s.query_row([channel_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .optional()
                })
                .map_err(sql("numbering a channel message"))?;
            let (last_seq, last_at, last_offset) = tail.unwrap_or((0, i64::MIN, -1));
            let (seq, at) = (last_seq + 1, micros(*sent_at).max(last_at));
            let offset = position.offset as i64;
            // With a retention, a message not past the channel's last offset is a redelivery
            // (a server's events are in one log partition, in order): stored already, or
            // expired and so unknown here.
            if cutoff.is_some() && offset <= last_offset {
                return Ok(());
            }
            if cutoff.is_some_and(|c| at <= c) {
                // Expired: not stored, but numbered.
                tx.prepare_cached(
                    "INSERT INTO channel_tails
                             (channel_id, last_seq, last_message_at, last_offset, expired_seq)
                         VALUES (?1, ?2, ?3, ?4, ?2)
                         ON CONFLICT (channel_id) DO UPDATE SET
                             last_seq = excluded.last_seq,
                             last_message_at = excluded.last_message_at,
                             last_offset = excluded.last_offset,
                             expired_seq = excluded.expired_seq",
                )
                .and_then(|mut s| s.execute(params![channel_id, seq, at, offset]))
                .map_err(sql("numbering an expired channel message"))?;
                return Ok(());
            }
            // A conflict on (channel_id, seq) would mean two messages with one number: an
            // error, never ignored. A known message_id is a redelivery: nothing to do.
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO channel_messages (channel_id, seq, message_id, server_id,
                         sender_id, text, client_msg_id, sent_at, log_partition, log_offset)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                     ON CONFLICT (message_id) DO NOTHING",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        channel_id,
                        seq,
                        message_id,
                        server_id,
                        sender_id,
                        text,
                        client_msg_id,
                        at,
                        position.partition,
                        offset
                    ])
                })
                .map_err(sql("storing a channel message"))?;
            if inserted > 0 {
                tx.prepare_cached(
                    "INSERT INTO channel_tails (channel_id, last_seq, last_message_at, last_offset)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (channel_id) DO UPDATE SET
                         last_seq = excluded.last_seq, last_message_at = excluded.last_message_at,
                         last_offset = MAX(channel_tails.last_offset, excluded.last_offset)",
                )
                .and_then(|mut s| s.execute(params![channel_id, seq, at, offset]))
                .map_err(sql("numbering a channel message"))?;
            }
        }
        CommunityChange::MarkChannelRead {
            channel_id,
            reader_id,
            up_to,
        } => {
            let seq: Option<i64> = tx
                .prepare_cached(
                    "SELECT seq FROM channel_messages WHERE message_id = ?1 AND channel_id = ?2",
                )
                .and_then(|mut s| {
                    s.query_row(params![up_to, channel_id], |r| r.get(0))
                        .optional()
                })
                .map_err(sql("finding a read marker's message"))?;
            let Some(seq) = seq else {
                tracing::warn!(%channel_id, %up_to, "channel read marker names an unknown message; ignored");
                return Ok(());
            };
            tx.prepare_cached(
                "INSERT INTO channel_reads (channel_id, user_id, read_seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (channel_id, user_id) DO UPDATE SET read_seq = excluded.read_seq
                 WHERE excluded.read_seq > channel_reads.read_seq",
            )
            .and_then(|mut s| s.execute(params![channel_id, reader_id, seq]))
            .map_err(sql("moving a channel read marker"))?;
        }
    }
    Ok(())
}

/// Removes up to `limit` channel messages sent at or before `cutoff`, oldest first (so each
/// channel loses a prefix of its numbers); records the highest removed number as the
/// channel's `expired_seq` (unread counts start after it) and drops read markers at or before
/// it (as if none: a replay ignores markers on messages it never stored). Returns how many it
/// removed.
pub(super) fn sweep_channel_messages(
    tx: &Transaction<'_>,
    cutoff: i64,
    limit: usize,
) -> Result<usize> {
    use std::collections::BTreeMap;
    let expired: Vec<(Uuid, i64)> = tx
        .prepare_cached(
            "SELECT channel_id, seq FROM channel_messages WHERE sent_at <= ?1
             ORDER BY sent_at, seq LIMIT ?2",
        )
        .and_then(|mut s| {
            s.query_map(params![cutoff, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql("finding expired channel messages"))?;
    let mut channels: BTreeMap<Uuid, i64> = BTreeMap::new();
    for (channel, seq) in &expired {
        tx.prepare_cached("DELETE FROM channel_messages WHERE channel_id = ?1 AND seq = ?2")
            .and_then(|mut s| s.execute(params![channel, seq]))
            .map_err(sql("removing an expired channel message"))?;
        let max = channels.entry(*channel).or_insert(0);
        *max = (*max).max(*seq);
    }
    for (channel, seq) in &channels {
        tx.prepare_cached(
            "UPDATE channel_tails SET expired_seq = MAX(expired_seq, ?2) WHERE channel_id = ?1",
        )
        .and_then(|mut s| s.execute(params![channel, seq]))
        .map_err(sql("recording expired channel messages"))?;
        tx.prepare_cached("DELETE FROM channel_reads WHERE channel_id = ?1 AND read_seq <= ?2")
            .and_then(|mut s| s.execute(params![channel, seq]))
            .map_err(sql("resetting expired channel read markers"))?;
    }
    Ok(expired.len())
}

/// Creates a server unless its id or its name (ignoring case) is taken, with its owner's
/// membership.
fn add_server(
    tx: &Transaction<'_>,
    server_id: Uuid,
    owner_id: Uuid,
    name: &str,
    tags: &[String],
    visibility: Visibility,
    created_at: i64,
) -> Result<()> {
    let mut unique: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        if !unique.contains(tag) {
            unique.push(tag.clone());
        }
    }
    let key = server_name_key(name);
    let inserted = tx
        .prepare_cached(
            "INSERT INTO servers (server_id, owner_id, name, name_key, tags, visibility, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
        )
        .and_then(|mut s| {
            s.execute(params![
                server_id,
                owner_id,
                name,
                key,
                encode_tags(&unique),
                visibility_code(visibility),
                created_at
            ])
        })
        .map_err(sql("adding a server"))?;
    if inserted == 0 {
        let holder: Option<Uuid> = tx
            .prepare_cached("SELECT server_id FROM servers WHERE name_key = ?1")
            .and_then(|mut s| s.query_row([&key], |r| r.get(0)).optional())
            .map_err(sql("checking a server name"))?;
        if holder.is_some_and(|id| id != server_id) {
            tracing::error!(%server_id, %name, "server name already belongs to another server; creation not projected");
        }
        return Ok(());
    }
    {
        let mut tag_insert = tx
            .prepare_cached(
                "INSERT INTO server_tags (server_id, tag) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            )
            .map_err(sql("preparing a server tag insert"))?;
        for tag in &unique {
            tag_insert
                .execute(params![server_id, tag])
                .map_err(sql("adding a server tag"))?;
        }
    }
    tx.prepare_cached(
        "INSERT INTO server_members (user_id, server_id, role, subscribed, since, version)
         VALUES (?1, ?2, ?3, 1, ?4, 0)
         ON CONFLICT (user_id, server_id) DO UPDATE SET
             role = excluded.role, subscribed = 1, since = excluded.since",
    )
    .and_then(|mut s| s.execute(params![owner_id, server_id, OWNER, created_at]))
    .map_err(sql("adding a server's owner"))?;
    Ok(())
}

fn visibility_code(v: Visibility) -> i64 {
    match v {
        Visibility::Public => 0,
        Visibility::Private => 1,
    }
}

/// Tags in one column: each as `<length in bytes>:<tag>`, so any text survives.
fn encode_tags(tags: &[String]) -> String {
    tags.iter().map(|t| format!("{}:{t}", t.len())).collect()
}

fn decode_tags(mut s: &str) -> Option<Vec<String>> {
    let mut tags = Vec::new();
    while !s.is_empty() {
        let (len, rest) = s.split_once(':')?;
        let len: usize = len.parse().ok()?;
        tags.push(rest.get(..len)?.to_owned());
        s = rest.get(len..)?;
    }
    Some(tags)
}

fn corrupt(column: usize, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, what.into())
}

fn tags_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<Vec<String>> {
    let text: String = r.get(at)?;
    decode_tags(&text).ok_or_else(|| corrupt(at, format!("unreadable tags {text:?}")))
}

/// A cursor that is an id (the last item of a page).
fn id_cursor(cursor: &str) -> Result<Uuid> {
    Uuid::parse_str(cursor).map_err(|_| StoreError::InvalidCursor(cursor.to_owned()))
}

/// The bound of an ascending id range after `cursor`: ids are 16-byte blobs, and the empty
/// blob sorts before every one of them.
fn after_bound(cursor: Option<&str>) -> Result<Vec<u8>> {
    Ok(match cursor {
        Some(c) => id_cursor(c)?.as_bytes().to_vec(),
        None => Vec::new(),
    })
}

/// The bound of a descending id range before `cursor`: 17 bytes of 0xff sort after every
/// 16-byte id.
fn before_bound(cursor: Option<&str>) -> Result<Vec<u8>> {
    Ok(match cursor {
        Some(c) => id_cursor(c)?.as_bytes().to_vec(),
        None => vec![0xff; 17],
    })
}

const SERVER_COLUMNS: &str = "s.server_id, s.owner_id, s.name, s.tags, s.visibility, s.created_at";

fn server_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<Server> {
    Ok(Server {
        server_id: r.get(at)?,
        owner_id: r.get(at + 1)?,
        name: r.get(at + 2)?,
        tags: tags_from_row(r, at + 3)?,
        visibility: match r.get::<_, i64>(at + 4)? {
            0 => Visibility::Public,
            1 => Visibility::Private,
            other => return Err(corrupt(at + 4, format!("visibility {other}"))),
        },
        created_at: from_micros(r.get(at + 5)?)?,
    })
}

fn role_from_code(code: i64, at: usize) -> rusqlite::Result<ServerRole> {
    match code {
        OWNER => Ok(ServerRole::Owner),
        SUBSCRIBER => Ok(ServerRole::Subscriber),
        other => Err(corrupt(at, format!("server role {other}"))),
    }
}

pub(super) fn server(c: &Connection, id: Uuid) -> Result<Option<Server>> {
    c.prepare_cached(&format!(
        "SELECT {SERVER_COLUMNS} FROM servers s WHERE s.server_id = ?1"
    ))
    .and_then(|mut s| s.query_row([id], |r| server_from_row(r, 0)).optional())
    .map_err(sql("reading a server"))
}

pub(super) fn server_by_name(c: &Connection, name: &str) -> Result<Option<Server>> {
    c.prepare_cached(&format!(
        "SELECT {SERVER_COLUMNS} FROM servers s WHERE s.name_key = ?1"
    ))
    .and_then(|mut s| {
        s.query_row([server_name_key(name)], |r| server_from_row(r, 0))
            .optional()
    })
    .map_err(sql("looking up a server name"))
}

/// The least string above every string that starts with `prefix`, if there is one. UTF-8
/// byte order (SQLite's and Rust's) is code point order, so the strings with the prefix are
/// exactly those from `prefix` up to this bound.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = (last as u32 + 1..=char::MAX as u32).find_map(char::from_u32) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

pub(super) fn search_servers(
    c: &Connection,
    search: &ServerSearch,
    after: Option<&str>,
    limit: usize,
) -> Result<Page<Server>> {
    let (after_key, after_id) = match after {
        Some(cursor) => {
            let id = id_cursor(cursor)?;
            let key: Option<String> = c
                // Only a public server is a cursor: a private one must not be probed this way.
                .prepare_cached(
                    "SELECT name_key FROM servers WHERE server_id = ?1 AND visibility = 0",
                )
                .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
                .map_err(sql("resolving a server search cursor"))?;
            let key = key.ok_or_else(|| StoreError::InvalidCursor(cursor.to_owned()))?;
            (key, id.as_bytes().to_vec())
        }
        // Every (key, 16-byte id) pair is above ('', empty blob).
        None => (String::new(), Vec::new()),
    };
    let mut conditions = String::new();
    let mut values: Vec<Value> = vec![Value::Text(after_key), Value::Blob(after_id)];
    match search.name.as_deref() {
        None => {}
        Some(name) if name.chars().count() <= 2 => {
            conditions += " AND s.name_key >= ?";
            values.push(Value::Text(name.to_owned()));
            if let Some(end) = prefix_end(name) {
                conditions += " AND s.name_key < ?";
                values.push(Value::Text(end));
            }
        }
        Some(name) => {
            // instr() matches the text as it is: no wildcard to escape.
            conditions += " AND instr(s.name_key, ?) > 0";
            values.push(Value::Text(name.to_owned()));
        }
    }
    let mut tags: Vec<&String> = Vec::new();
    for tag in &search.tags {
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    for tag in tags {
        conditions += " AND EXISTS (SELECT 1 FROM server_tags t
                                    WHERE t.server_id = s.server_id AND t.tag = ?)";
        values.push(Value::Text(tag.clone()));
    }
    values.push(Value::Integer((limit + 1) as i64));
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {SERVER_COLUMNS} FROM servers s
             WHERE s.visibility = 0 AND (s.name_key, s.server_id) > (?, ?){conditions}
             ORDER BY s.name_key, s.server_id LIMIT ?"
        ))
        .map_err(sql("preparing a server search"))?;
    let items = stmt
        .query_map(rusqlite::params_from_iter(values), |r| {
            server_from_row(r, 0)
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sql("searching servers"))?;
    Ok(page(items, limit, |s: &Server| s.server_id.to_string()))
}

pub(super) fn user_servers(
    c: &Connection,
    user: Uuid,
    after: Option<&str>,
    limit: usize,
) -> Result<Page<UserServer>> {
    let after = after_bound(after)?;
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {SERVER_COLUMNS}, m.role, m.since
             FROM server_members m JOIN servers s ON s.server_id = m.server_id
             WHERE m.user_id = ?1 AND m.subscribed = 1 AND m.server_id > ?2
             ORDER BY m.server_id LIMIT ?3"
        ))
        .map_err(sql("preparing a server list"))?;
    let items = stmt
        .query_map(params![user, after, (limit + 1) as i64], |r| {
            Ok(UserServer {
                server: server_from_row(r, 0)?,
                role: role_from_code(r.get(6)?, 6)?,
                since: from_micros(r.get(7)?)?,
            })
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sql("reading a server list"))?;
    Ok(page(items, limit, |s: &UserServer| {
        s.server.server_id.to_string()
    }))
}

pub(super) fn membership(c: &Connection, server: Uuid, user: Uuid) -> Result<Option<ServerRole>> {
    let role: Option<i64> = c
        .prepare_cached(
            "SELECT m.role FROM server_members m JOIN servers s ON s.server_id = m.server_id
             WHERE m.user_id = ?1 AND m.server_id = ?2 AND m.subscribed = 1",
        )
        .and_then(|mut s| s.query_row(params![user, server], |r| r.get(0)).optional())
        .map_err(sql("reading a membership"))?;
    role.map(|code| role_from_code(code, 0))
        .transpose()
        .map_err(sql("reading a membership"))
}

const INVITATION_COLUMNS: &str = "i.invitation_id, i.server_id, s.name, i.inviter_id,
    i.invitee_id, i.sent_at, i.state, i.answered_at";
const INVITATION_FROM: &str = "invitations i JOIN servers s ON s.server_id = i.server_id";

fn invitation_from_row(r: &Row<'_>) -> rusqlite::Result<Invitation> {
    Ok(Invitation {
        invitation_id: r.get(0)?,
        server_id: r.get(1)?,
        server_name: r.get(2)?,
        inviter_id: r.get(3)?,
        invitee_id: r.get(4)?,
        sent_at: from_micros(r.get(5)?)?,
        state: match r.get::<_, i64>(6)? {
            PENDING => InvitationState::Pending,
            ACCEPTED => InvitationState::Accepted,
            DECLINED => InvitationState::Declined,
            other => return Err(corrupt(6, format!("invitation state {other}"))),
        },
        answered_at: r.get::<_, Option<i64>>(7)?.map(from_micros).transpose()?,
    })
}

pub(super) fn invitation(c: &Connection, invitation_id: Uuid) -> Result<Option<Invitation>> {
    c.prepare_cached(&format!(
        "SELECT {INVITATION_COLUMNS} FROM {INVITATION_FROM} WHERE i.invitation_id = ?1"
    ))
    .and_then(|mut s| s.query_row([invitation_id], invitation_from_row).optional())
    .map_err(sql("reading an invitation"))
}

pub(super) fn pending_invitation(
    c: &Connection,
    server: Uuid,
    invitee: Uuid,
) -> Result<Option<Invitation>> {
    c.prepare_cached(&format!(
        "SELECT {INVITATION_COLUMNS} FROM {INVITATION_FROM}
         WHERE i.invitee_id = ?1 AND i.server_id = ?2 AND i.state = 0
         ORDER BY i.invitation_id DESC LIMIT 1"
    ))
    .and_then(|mut s| {
        s.query_row(params![invitee, server], invitation_from_row)
            .optional()
    })
    .map_err(sql("reading a pending invitation"))
}

pub(super) fn pending_invitations(
    c: &Connection,
    invitee: Uuid,
    after: Option<&str>,
    limit: usize,
) -> Result<Page<Invitation>> {
    let before = before_bound(after)?;
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {INVITATION_COLUMNS} FROM {INVITATION_FROM}
             WHERE i.invitee_id = ?1 AND i.state = 0 AND i.invitation_id < ?2
             ORDER BY i.invitation_id DESC LIMIT ?3"
        ))
        .map_err(sql("preparing an invitation list"))?;
    let items = stmt
        .query_map(
            params![invitee, before, (limit + 1) as i64],
            invitation_from_row,
        )
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sql("reading an invitation list"))?;
    Ok(page(items, limit, |i: &Invitation| {
        i.invitation_id.to_string()
    }))
}

pub(super) fn posts(
    c: &Connection,
    server: Uuid,
    before: Option<&str>,
    limit: usize,
) -> Result<Page<Post>> {
    let before = before_bound(before)?;
    let mut stmt = c
        .prepare_cached(
            "SELECT post_id, server_id, author_id, content, tags, published_at,
                    log_partition, log_offset
             FROM posts WHERE server_id = ?1 AND post_id < ?2
             ORDER BY post_id DESC LIMIT ?3",
        )
        .map_err(sql("preparing a post list"))?;
    let items = stmt
        .query_map(params![server, before, (limit + 1) as i64], |r| {
            Ok(Post {
                post_id: r.get(0)?,
                server_id: r.get(1)?,
                author_id: r.get(2)?,
                content: r.get(3)?,
                tags: tags_from_row(r, 4)?,
                published_at: from_micros(r.get(5)?)?,
                position: Position::new(r.get(6)?, r.get::<_, i64>(7)? as u64),
            })
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sql("reading a post list"))?;
    Ok(page(items, limit, |p: &Post| p.post_id.to_string()))
}

const CHANNEL_COLUMNS: &str = "ch.channel_id, ch.server_id, ch.name, ch.created_by, ch.created_at";

/// A live channel's row (only tombstones have no name, creator or time).
fn channel_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<Channel> {
    Ok(Channel {
        channel_id: r.get(at)?,
        server_id: r.get(at + 1)?,
        name: r.get(at + 2)?,
        created_by: r.get(at + 3)?,
        created_at: from_micros(r.get(at + 4)?)?,
    })
}

pub(super) fn channels(c: &Connection, server: Uuid, viewer: Uuid) -> Result<Vec<ChannelSummary>> {
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {CHANNEL_COLUMNS}, COALESCE(t.last_seq, 0), t.last_message_at,
                    MAX(COALESCE(r.read_seq, 0), COALESCE(t.expired_seq, 0))
             FROM channels ch
             LEFT JOIN channel_tails t ON t.channel_id = ch.channel_id
             LEFT JOIN channel_reads r ON r.channel_id = ch.channel_id AND r.user_id = ?2
             WHERE ch.server_id = ?1 AND ch.deleted = 0
             ORDER BY ch.name, ch.channel_id"
        ))
        .map_err(sql("preparing a channel list"))?;
    let rows = stmt
        .query_map(params![server, viewer], |r| {
            let last_seq: i64 = r.get(5)?;
            let read_seq: i64 = r.get(7)?;
            Ok(ChannelSummary {
                channel: channel_from_row(r, 0)?,
                last_seq: last_seq.max(0) as u64,
                last_message_at: r.get::<_, Option<i64>>(6)?.map(from_micros).transpose()?,
                unread_count: (last_seq - read_seq).max(0) as u64,
            })
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sql("reading a channel list"))?;
    Ok(rows)
}

pub(super) fn channel(c: &Connection, channel: Uuid) -> Result<Option<Channel>> {
    c.prepare_cached(&format!(
        "SELECT {CHANNEL_COLUMNS} FROM channels ch WHERE ch.channel_id = ?1 AND ch.deleted = 0"
    ))
    .and_then(|mut s| {
        s.query_row([channel], |r| channel_from_row(r, 0))
            .optional()
    })
    .map_err(sql("reading a channel"))
}

pub(super) fn current_channel(c: &Connection, user: Uuid) -> Result<Option<Channel>> {
    c.prepare_cached(&format!(
        "SELECT {CHANNEL_COLUMNS} FROM user_channels uc
         JOIN channels ch ON ch.channel_id = uc.channel_id
         WHERE uc.user_id = ?1 AND ch.deleted = 0"
    ))
    .and_then(|mut s| s.query_row([user], |r| channel_from_row(r, 0)).optional())
    .map_err(sql("reading a user's channel"))
}

pub(super) fn channel_members(
    c: &Connection,
    channel: Uuid,
    after: Option<&str>,
    limit: usize,
) -> Result<Page<Uuid>> {
    let after = after_bound(after)?;
    let mut stmt = c
        .prepare_cached(
            "SELECT uc.user_id FROM user_channels uc
             JOIN channels ch ON ch.channel_id = uc.channel_id AND ch.deleted = 0
             WHERE uc.channel_id = ?1 AND uc.user_id > ?2
             ORDER BY uc.user_id LIMIT ?3",
        )
        .map_err(sql("preparing a channel's members"))?;
    let items = stmt
        .query_map(params![channel, after, (limit + 1) as i64], |r| r.get(0))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<Uuid>>>())
        .map_err(sql("reading a channel's members"))?;
    Ok(page(items, limit, Uuid::to_string))
}

/// Columns of a channel message as `:viewer` sees it: the idempotency key only on their own.
const CHANNEL_MESSAGE_COLUMNS: &str = "m.message_id, m.server_id, m.channel_id, m.seq,
    m.sender_id, m.text, CASE WHEN m.sender_id = :viewer THEN m.client_msg_id END, m.sent_at,
    m.log_partition, m.log_offset";

fn channel_message_from_row(r: &Row<'_>) -> rusqlite::Result<ChannelMessage> {
    Ok(ChannelMessage {
        message_id: r.get(0)?,
        server_id: r.get(1)?,
        channel_id: r.get(2)?,
        seq: r.get::<_, i64>(3)? as u64,
        sender_id: r.get(4)?,
        text: r.get(5)?,
        client_msg_id: r.get(6)?,
        sent_at: from_micros(r.get(7)?)?,
        position: Position::new(r.get(8)?, r.get::<_, i64>(9)? as u64),
    })
}

pub(super) fn channel_history(
    c: &Connection,
    viewer: Uuid,
    channel: Uuid,
    query: HistoryQuery,
) -> Result<Page<ChannelMessage>> {
    let seq_of = |id: Uuid| -> Result<i64> {
        c.prepare_cached(
            "SELECT seq FROM channel_messages WHERE message_id = ?1 AND channel_id = ?2",
        )
        .and_then(|mut s| s.query_row(params![id, channel], |r| r.get(0)).optional())
        .map_err(sql("resolving a cursor"))?
        .ok_or(StoreError::UnknownCursor(id))
    };
    let upper = query.before.map(seq_of).transpose()?.unwrap_or(i64::MAX);
    let mut lower = query.after.map(seq_of).transpose()?.unwrap_or(0);
    let since = query.since.map(micros).unwrap_or(i64::MIN);
    if query.since.is_some() {
        // Times are monotonic in seq within a channel (see `apply`), so the first message at
        // or after `since` bounds the sequence numbers exactly.
        let first: Option<i64> = c
            .prepare_cached(
                "SELECT seq FROM channel_messages WHERE channel_id = ?1 AND sent_at >= ?2
                 ORDER BY sent_at, seq LIMIT 1",
            )
            .and_then(|mut s| {
                s.query_row(params![channel, since], |r| r.get(0))
                    .optional()
            })
            .map_err(sql("locating a time in a channel"))?;
        lower = lower.max(first.map_or(i64::MAX - 1, |seq| seq - 1));
    }
    let order = if query.ascending() { "ASC" } else { "DESC" };
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {CHANNEL_MESSAGE_COLUMNS} FROM channel_messages m
             WHERE m.channel_id = :channel AND m.seq < :upper AND m.seq > :lower
               AND m.sent_at >= :since
             ORDER BY m.seq {order} LIMIT :limit"
        ))
        .map_err(sql("preparing a channel history read"))?;
    let items = stmt
        .query_map(
            rusqlite::named_params! {
                ":channel": channel,
                ":upper": upper,
                ":lower": lower,
                ":since": since,
                ":viewer": viewer,
                ":limit": (query.limit + 1) as i64,
            },
            channel_message_from_row,
        )
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sql("reading a channel's history"))?;
    Ok(page(items, query.limit, |m: &ChannelMessage| {
        m.message_id.to_string()
    }))
}

pub(super) fn channel_message_by_client_id(
    c: &Connection,
    sender: Uuid,
    client_msg_id: &str,
) -> Result<Option<ChannelMessage>> {
    c.prepare_cached(&format!(
        "SELECT {CHANNEL_MESSAGE_COLUMNS} FROM channel_messages m
         WHERE m.sender_id = :viewer AND m.client_msg_id = :client_msg_id"
    ))
    .and_then(|mut s| {
        s.query_row(
            rusqlite::named_params! { ":viewer": sender, ":client_msg_id": client_msg_id },
            channel_message_from_row,
        )
        .optional()
    })
    .map_err(sql("looking up a channel message's client id"))
}

pub(super) fn channel_message(
    c: &Connection,
    viewer: Uuid,
    message_id: Uuid,
) -> Result<Option<ChannelMessage>> {
    c.prepare_cached(&format!(
        "SELECT {CHANNEL_MESSAGE_COLUMNS} FROM channel_messages m WHERE m.message_id = :id"
    ))
    .and_then(|mut s| {
        s.query_row(
            rusqlite::named_params! { ":id": message_id, ":viewer": viewer },
            channel_message_from_row,
        )
        .optional()
    })
    .map_err(sql("reading a channel message"))
}

/// The latest message of a channel, seen by no one in particular (so without its
/// idempotency key).
pub(super) fn latest_channel_message(
    c: &Connection,
    channel: Uuid,
) -> Result<Option<ChannelMessage>> {
    c.prepare_cached(&format!(
        "SELECT {CHANNEL_MESSAGE_COLUMNS} FROM channel_messages m
         WHERE m.channel_id = :channel ORDER BY m.seq DESC LIMIT 1"
    ))
    .and_then(|mut s| {
        s.query_row(
            rusqlite::named_params! { ":channel": channel, ":viewer": None::<Uuid> },
            channel_message_from_row,
        )
        .optional()
    })
    .map_err(sql("reading a channel's latest message"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_survive_any_text() {
        for tags in [
            vec![],
            vec!["rust".to_owned()],
            vec![
                "a:b".to_owned(),
                "".to_owned(),
                "12:x".to_owned(),
                "é".to_owned(),
            ],
        ] {
            assert_eq!(decode_tags(&encode_tags(&tags)), Some(tags));
        }
        assert_eq!(decode_tags("3:ab"), None);
        assert_eq!(decode_tags("x:ab"), None);
    }

    #[test]
    fn a_prefix_ends_at_the_next_code_point() {
        assert_eq!(prefix_end("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_end("é").as_deref(), Some("ê"));
        assert_eq!(prefix_end("a\u{d7ff}").as_deref(), Some("a\u{e000}"));
        assert_eq!(prefix_end("a\u{10ffff}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{10ffff}"), None);
        assert_eq!(prefix_end(""), None);
    }
}
