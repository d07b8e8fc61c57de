//! The retention part of the contract: a store opened with [`retention`] (30 days, its clock
//! pinned at [`now`]) never stores a message that has expired when projected, yet keeps the
//! conversation, channel and numbering a store that kept it would have, and unread counts,
//! pending messages, feeds and idempotency keys leave it out. [`story`] is shared with the
//! adapters' own tests (the embedded store's sweep must leave what [`story`] projected at
//! [`now`] leaves).

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::{P, pos, snapshot, t};
use crate::{
    Change, CommunityChange, HistoryQuery, MessageStatus, ReadStore, Retention, Visibility,
};

/// How long [`retention`] keeps messages, in days.
pub const DAYS: u32 = 30;

/// The time the checks run at: 100 days after the story starts.
pub fn now() -> DateTime<Utc> {
    t(0) + Duration::days(100)
}

/// 30 days, by a clock pinned at `at`.
pub fn retention_at(at: DateTime<Utc>) -> Retention {
    Retention::days(DAYS)
        .expect("30 days")
        .with_clock(move || at)
}

/// 30 days, by a clock pinned at [`now`].
pub fn retention() -> Retention {
    retention_at(now())
}

/// The people, places and messages of [`story`].
#[derive(Debug, Clone)]
pub struct Cast {
    pub alice: Uuid,
    pub bob: Uuid,
    pub carol: Uuid,
    /// Alice and Bob: messages 0..4 expired, 4..8 not.
    pub conv: Uuid,
    /// Alice and Carol: one expired message (8) only.
    pub old_conv: Uuid,
    pub msgs: Vec<Uuid>,
    pub server: Uuid,
    pub channel: Uuid,
    /// Channel messages 0..2 expired, 2..4 not.
    pub channel_msgs: Vec<Uuid>,
    pub post: Uuid,
}

impl Cast {
    pub fn new() -> Self {
        let id = Uuid::now_v7;
        Cast {
            alice: id(),
            bob: id(),
            carol: id(),
            conv: id(),
            old_conv: id(),
            msgs: (0..9).map(|_| id()).collect(),
            server: id(),
            channel: id(),
            channel_msgs: (0..4).map(|_| id()).collect(),
            post: id(),
        }
    }

    pub fn users(&self) -> [Uuid; 3] {
        [self.alice, self.bob, self.carol]
    }
}

impl Default for Cast {
    fn default() -> Self {
        Cast::new()
    }
}

fn old(seconds: i64) -> DateTime<Utc> {
    t(seconds) + Duration::days(10)
}

fn fresh(seconds: i64) -> DateTime<Utc> {
    t(seconds) + Duration::days(80)
}

/// Messages sent 90 days before [`now`] and 20 days before it, with reads, hides, deletions
/// and receipts on both kinds, in two conversations and a channel; log offsets grow by one a
/// change, as a log partition's do.
pub fn story(c: &Cast) -> Vec<Change> {
    let mut out = Vec::new();
    for (id, name) in [(c.alice, "alice"), (c.bob, "bob"), (c.carol, "carol")] {
        out.push(Change::AddUser {
            user_id: id,
            username: format!("{name}-{}", id.simple()),
            display_name: name.into(),
            registered_at: t(0),
        });
    }
    let dm = |i: usize, from: Uuid, to: Uuid, conv: Uuid, at: DateTime<Utc>| Change::AddMessage {
        message_id: c.msgs[i],
        conversation_id: conv,
        sender_id: from,
        recipient_id: to,
        text: format!("message {i}"),
        client_msg_id: Some(format!("c{i}")),
        sent_at: at,
        position: pos(0),
    };
    let (a, b) = (c.alice, c.bob);
    out.extend([
        dm(0, a, b, c.conv, old(0)),
        dm(1, b, a, c.conv, old(1)),
        dm(2, a, b, c.conv, old(2)),
        dm(3, a, b, c.conv, old(3)),
        dm(8, a, c.carol, c.old_conv, old(4)),
        Change::MarkRead {
            conversation_id: c.conv,
            reader_id: b,
            up_to: c.msgs[2],
        },
        Change::MarkRead {
            conversation_id: c.conv,
            reader_id: a,
            up_to: c.msgs[1],
        },
        Change::HideMessage {
            user_id: b,
            message_id: c.msgs[3],
        },
        Change::TombstoneMessage {
            message_id: c.msgs[0],
        },
        dm(4, a, b, c.conv, fresh(0)),
        dm(5, b, a, c.conv, fresh(1)),
        dm(6, a, b, c.conv, fresh(2)),
        dm(7, a, b, c.conv, fresh(3)),
        Change::HideMessage {
            user_id: b,
            message_id: c.msgs[6],
        },
        Change::MarkDelivered {
            message_id: c.msgs[7],
            recipient_id: b,
        },
    ]);
    let community = |change| Change::Community(change);
    let say = |i: usize, from: Uuid, at: DateTime<Utc>| {
        community(CommunityChange::AddChannelMessage {
            message_id: c.channel_msgs[i],
            server_id: c.server,
            channel_id: c.channel,
            sender_id: from,
            text: format!("channel message {i}"),
            client_msg_id: Some(format!("k{i}")),
            sent_at: at,
            position: pos(0),
        })
    };
    let read = |reader: Uuid, i: usize| {
        community(CommunityChange::MarkChannelRead {
            channel_id: c.channel,
            reader_id: reader,
            up_to: c.channel_msgs[i],
        })
    };
    out.extend([
        community(CommunityChange::AddServer {
            server_id: c.server,
            owner_id: a,
            name: format!("s-{}", c.server.simple()),
            tags: vec![],
            visibility: Visibility::Public,
            created_at: t(1),
        }),
        community(CommunityChange::SetSubscription {
            server_id: c.server,
            user_id: b,
            subscribed: true,
            at: t(2),
            version: 1,
        }),
        community(CommunityChange::AddPost {
            post_id: c.post,
            server_id: c.server,
            author_id: a,
            content: "an old post".into(),
            tags: vec![],
            published_at: old(0),
            position: pos(0),
        }),
        community(CommunityChange::AddChannel {
            channel_id: c.channel,
            server_id: c.server,
            name: "general".into(),
            created_by: a,
            created_at: t(3),
        }),
        say(0, a, old(10)),
        say(1, b, old(11)),
        read(b, 0),
        say(2, a, fresh(10)),
        say(3, b, fresh(11)),
        read(a, 2),
    ]);
    // Offsets in log order.
    for (offset, change) in out.iter_mut().enumerate() {
        let p = pos(offset as u64 + 1);
        match change {
            Change::AddMessage { position, .. }
            | Change::Community(CommunityChange::AddChannelMessage { position, .. })
            | Change::Community(CommunityChange::AddPost { position, .. }) => *position = p,
            _ => {}
        }
    }
    out
}

async fn apply(store: &Arc<dyn ReadStore>, changes: Vec<Change>) {
    store.apply(P, changes, vec![]).await.expect("apply");
}

/// What a store opened with [`retention`] shows after [`story`], every derived read model
/// included; and a redelivery of the whole story changes nothing.
pub async fn expired_messages_are_not_projected(store: Arc<dyn ReadStore>) {
    let c = Cast::new();
    let (a, b) = (c.alice, c.bob);
    // In two batches, split inside each conversation and the channel.
    let changes = story(&c);
    let (first, second) = changes.split_at(10);
    apply(&store, first.to_vec()).await;
    apply(&store, second.to_vec()).await;

    let all = HistoryQuery {
        limit: 100,
        ..Default::default()
    };
    // History: only the fresh messages, numbered as if the expired ones were there.
    let history = store.history(a, c.conv, all).await.expect("history");
    let seen: Vec<(Uuid, u64)> = history
        .items
        .iter()
        .map(|m| (m.message_id, m.seq))
        .collect();
    assert_eq!(
        seen,
        vec![
            (c.msgs[7], 8),
            (c.msgs[6], 7),
            (c.msgs[5], 6),
            (c.msgs[4], 5)
        ]
    );
    let history = store.history(b, c.conv, all).await.expect("history");
    assert_eq!(history.items.len(), 3, "Bob hid message 6");
    for i in [0, 1, 2, 3, 8] {
        assert_eq!(store.message(a, c.msgs[i]).await.expect("message"), None);
    }
    assert!(
        store
            .message(a, c.msgs[4])
            .await
            .expect("message")
            .is_some()
    );

    // Conversation lists: both conversations stay; unread counts leave out what expired.
    let list = store.conversations(b, None, 10).await.expect("list");
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].unread_count, 2, "4 and 7; 6 is hidden");
    assert_eq!(
        list.items[0].last_message.as_ref().map(|m| m.message_id),
        Some(c.msgs[7])
    );
    assert_eq!(list.items[0].last_activity_at, fresh(3));
    let list = store.conversations(a, None, 10).await.expect("list");
    let unread: Vec<(Uuid, u64, Option<Uuid>)> = list
        .items
        .iter()
        .map(|e| {
            (
                e.conversation_id,
                e.unread_count,
                e.last_message.as_ref().map(|m| m.message_id),
            )
        })
        .collect();
    assert_eq!(
        unread,
        vec![(c.conv, 1, Some(c.msgs[7])), (c.old_conv, 0, None)]
    );
    let list = store.conversations(c.carol, None, 10).await.expect("list");
    assert_eq!(list.items.len(), 1);
    let entry = &list.items[0];
    assert_eq!(
        (entry.conversation_id, entry.peer.id, entry.unread_count),
        (c.old_conv, a, 0)
    );
    assert_eq!(entry.last_message, None);
    assert_eq!(entry.last_activity_at, old(4));
    assert_eq!(
        store.participants(c.old_conv).await.expect("participants"),
        Some(crate::ordered(a, c.carol))
    );

    // Pending, feed and idempotency keys.
    let pending = store.pending(b, None, 10).await.expect("pending");
    assert_eq!(
        pending
            .items
            .iter()
            .map(|m| (m.message_id, m.status))
            .collect::<Vec<_>>(),
        vec![(c.msgs[4], MessageStatus::Pending)]
    );
    assert!(
        store
            .pending(c.carol, None, 10)
            .await
            .expect("pending")
            .items
            .is_empty()
    );
    let feed = store
        .messages_since(b, DateTime::<Utc>::MIN_UTC, None, 100)
        .await
        .expect("feed");
    assert_eq!(
        feed.items.iter().map(|m| m.message_id).collect::<Vec<_>>(),
        vec![c.msgs[4], c.msgs[5], c.msgs[7]]
    );
    let feed = store
        .messages_since(c.carol, DateTime::<Utc>::MIN_UTC, None, 100)
        .await
        .expect("feed");
    assert!(feed.items.is_empty());
    assert_eq!(
        store.message_by_client_id(a, "c0").await.expect("by key"),
        None
    );
    assert_eq!(
        store
            .message_by_client_id(a, "c4")
            .await
            .expect("by key")
            .map(|m| m.message_id),
        Some(c.msgs[4])
    );

    // The channel: numbering kept, unread counts after the expired messages.
    let channels = store.channels(c.server, b).await.expect("channels");
    assert_eq!(channels.len(), 1);
    assert_eq!((channels[0].last_seq, channels[0].unread_count), (4, 2));
    let channels = store.channels(c.server, a).await.expect("channels");
    assert_eq!((channels[0].last_seq, channels[0].unread_count), (4, 1));
    let channels = store.channels(c.server, c.carol).await.expect("channels");
    assert_eq!(channels[0].unread_count, 2);
    let history = store
        .channel_history(a, c.channel, all)
        .await
        .expect("channel history");
    assert_eq!(
        history
            .items
            .iter()
            .map(|m| (m.message_id, m.seq))
            .collect::<Vec<_>>(),
        vec![(c.channel_msgs[3], 4), (c.channel_msgs[2], 3)]
    );
    assert_eq!(
        store
            .channel_message(a, c.channel_msgs[0])
            .await
            .expect("channel message"),
        None
    );
    assert_eq!(
        store
            .channel_message_by_client_id(a, "k0")
            .await
            .expect("by key"),
        None
    );
    assert_eq!(
        store
            .latest_channel_message(c.channel)
            .await
            .expect("latest")
            .map(|m| m.message_id),
        Some(c.channel_msgs[3])
    );
    // Posts are not messages: kept.
    let posts = store.posts(c.server, None, 10).await.expect("posts");
    assert_eq!(
        posts.items.iter().map(|p| p.post_id).collect::<Vec<_>>(),
        vec![c.post]
    );

    // A redelivery of everything (expired messages included) changes nothing.
    let before = snapshot(store.as_ref(), &c.users()).await;
    apply(&store, story(&c)).await;
    assert_eq!(snapshot(store.as_ref(), &c.users()).await, before);
}
