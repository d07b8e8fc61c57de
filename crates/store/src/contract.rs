//! The contract every [`ReadStore`] adapter must honour, written once and run against each.
//!
//! Each check takes a fresh, empty store. [`snapshot`] captures everything the queries can see
//! for a set of users, so tests can compare read models after re-application or replay.
//! [`communities`] holds the checks of servers, invitations, posts and channels;
//! [`retention`] those of message retention.

pub mod communities;
pub mod retention;

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use missive_log::Position;
use uuid::Uuid;

use crate::{
    AccountStatus, Change, FriendshipState, HistoryQuery, MessageStatus, ReadStore, Relation,
    StoreError, deleted_username,
};

const P: &str = "contract";

fn t(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000, 0).single().expect("time") + Duration::seconds(seconds)
}

fn pos(offset: u64) -> Position {
    Position::new(0, offset)
}

/// Every query's answer for `users`, as text, for equality checks.
pub async fn snapshot(store: &dyn ReadStore, users: &[Uuid]) -> String {
    let mut out = String::new();
    for &u in users {
        out += &format!("user {u}: {:?}\n", store.user(u).await.expect("user"));
        out += &format!("friends: {:?}\n", store.friends(u).await.expect("friends"));
        let convs = store
            .conversations(u, None, 1000)
            .await
            .expect("conversations");
        out += &format!("conversations: {:?}\n", convs);
        for c in &convs.items {
            let h = store
                .history(
                    u,
                    c.conversation_id,
                    HistoryQuery {
                        limit: 1000,
                        ..Default::default()
                    },
                )
                .await
                .expect("history");
            out += &format!("history {}: {:?}\n", c.conversation_id, h);
        }
        let since = store
            .messages_since(u, DateTime::<Utc>::MIN_UTC, None, 1000)
            .await
            .expect("since");
        out += &format!("since: {:?}\n", since);
        let pending = store.pending(u, None, 1000).await.expect("pending");
        out += &format!("pending: {:?}\n", pending);
        out += &community_snapshot(store, u).await;
    }
    out
}

/// `user`'s servers, invitations and channel, and each of their servers' posts, channels,
/// members and channel histories as they see them.
async fn community_snapshot(store: &dyn ReadStore, user: Uuid) -> String {
    let mut out = String::new();
    let servers = store
        .user_servers(user, None, 1000)
        .await
        .expect("user servers");
    out += &format!("servers: {:?}\n", servers);
    let invitations = store
        .pending_invitations(user, None, 1000)
        .await
        .expect("pending invitations");
    out += &format!("invitations: {:?}\n", invitations);
    let current = store.current_channel(user).await.expect("current channel");
    out += &format!("current channel: {:?}\n", current);
    for s in &servers.items {
        let server = s.server.server_id;
        let posts = store.posts(server, None, 1000).await.expect("posts");
        out += &format!("posts {server}: {:?}\n", posts);
        let channels = store.channels(server, user).await.expect("channels");
        out += &format!("channels {server}: {:?}\n", channels);
        for c in &channels {
            let channel = c.channel.channel_id;
            let members = store
                .channel_members(channel, None, 1000)
                .await
                .expect("channel members");
            out += &format!("members {channel}: {:?}\n", members);
            let history = store
                .channel_history(
                    user,
                    channel,
                    HistoryQuery {
                        limit: 1000,
                        ..Default::default()
                    },
                )
                .await
                .expect("channel history");
            out += &format!("channel history {channel}: {:?}\n", history);
        }
    }
    out
}

struct Scene {
    alice: Uuid,
    bob: Uuid,
    carol: Uuid,
    conv: Uuid,
    msgs: Vec<Uuid>,
}

fn users(scene: &Scene) -> Vec<Change> {
    [
        (scene.alice, "Alice"),
        (scene.bob, "bob"),
        (scene.carol, "carol"),
    ]
    .into_iter()
    .map(|(id, name)| Change::AddUser {
        user_id: id,
        username: name.into(),
        display_name: format!("{name} display"),
        registered_at: t(0),
    })
    .collect()
}

fn message(scene: &Scene, i: usize, from_alice: bool, offset: u64) -> Change {
    let (s, r) = if from_alice {
        (scene.alice, scene.bob)
    } else {
        (scene.bob, scene.alice)
    };
    Change::AddMessage {
        message_id: scene.msgs[i],
        conversation_id: scene.conv,
        sender_id: s,
        recipient_id: r,
        text: format!("message {i}"),
        client_msg_id: Some(format!("c{i}")),
        sent_at: t(10 + i as i64),
        position: pos(offset),
    }
}

fn scene() -> Scene {
    Scene {
        alice: Uuid::now_v7(),
        bob: Uuid::now_v7(),
        carol: Uuid::now_v7(),
        conv: Uuid::now_v7(),
        msgs: (0..6).map(|_| Uuid::now_v7()).collect(),
    }
}

/// A realistic sequence: users, friendship, messages both ways, reads and deletes.
fn story(s: &Scene) -> Vec<Change> {
    let mut c = users(s);
    c.push(Change::SetFriendship {
        a: s.alice,
        b: s.bob,
        state: FriendshipState::Pending { requester: s.alice },
        at: t(1),
        version: 3,
    });
    c.push(Change::SetFriendship {
        a: s.bob,
        b: s.alice,
        state: FriendshipState::Friends,
        at: t(2),
        version: 4,
    });
    c.push(message(s, 0, true, 5));
    c.push(message(s, 1, true, 6));
    c.push(message(s, 2, false, 7));
    c.push(message(s, 3, true, 8));
    c.push(message(s, 4, true, 9));
    c.push(Change::MarkRead {
        conversation_id: s.conv,
        reader_id: s.bob,
        up_to: s.msgs[1],
    });
    c.push(Change::HideMessage {
        user_id: s.bob,
        message_id: s.msgs[3],
    });
    c.push(Change::TombstoneMessage {
        message_id: s.msgs[4],
    });
    c.push(Change::SetPresence {
        user_id: s.bob,
        online: true,
        at: t(30),
        version: 12,
    });
    c.push(Change::SetDisplayName {
        user_id: s.alice,
        display_name: "Al".into(),
        version: 13,
    });
    // Alice's device acknowledges 2; Carol cannot acknowledge what was not sent to her.
    c.push(Change::MarkDelivered {
        message_id: s.msgs[2],
        recipient_id: s.alice,
    });
    c.push(Change::MarkDelivered {
        message_id: s.msgs[0],
        recipient_id: s.carol,
    });
    c
}

/// Users can be found by id and by username in any case; versions guard profile and presence.
pub async fn users_profiles_and_presence(store: Arc<dyn ReadStore>) {
    let s = scene();
    store
        .apply(P, users(&s), vec![pos(3)])
        .await
        .expect("apply");
    let alice = store
        .user_by_username("aLiCe")
        .await
        .expect("lookup")
        .expect("found");
    assert_eq!(alice.id, s.alice);
    assert_eq!(alice.username, "Alice");
    assert!(
        store
            .user_by_username("nobody")
            .await
            .expect("lookup")
            .is_none()
    );

    let changes = vec![
        Change::SetDisplayName {
            user_id: s.alice,
            display_name: "new".into(),
            version: 10,
        },
        Change::SetDisplayName {
            user_id: s.alice,
            display_name: "stale".into(),
            version: 9,
        },
        Change::SetPresence {
            user_id: s.alice,
            online: true,
            at: t(50),
            version: 20,
        },
        Change::SetPresence {
            user_id: s.alice,
            online: false,
            at: t(60),
            version: 21,
        },
        Change::SetPresence {
            user_id: s.alice,
            online: true,
            at: t(40),
            version: 19,
        },
    ];
    store.apply(P, changes, vec![pos(22)]).await.expect("apply");
    let alice = store.user(s.alice).await.expect("user").expect("found");
    assert_eq!(alice.display_name, "new", "an older version must not win");
    assert!(!alice.online, "an older presence change must not win");
    assert_eq!(alice.last_seen, Some(t(60)));
    assert_eq!(
        store.checkpoints(P).await.expect("checkpoints"),
        vec![pos(22)]
    );
    // A slower projector finishing an older batch (a rebalance) never moves it back.
    store
        .apply(P, Vec::new(), vec![pos(20)])
        .await
        .expect("apply");
    assert_eq!(
        store.checkpoints(P).await.expect("checkpoints"),
        vec![pos(22)]
    );
    assert!(
        store
            .checkpoints("other")
            .await
            .expect("checkpoints")
            .is_empty()
    );

    // Alice went offline; bob comes online: only he is listed.
    assert_eq!(
        store.online_users().await.expect("online users"),
        Vec::<Uuid>::new()
    );
    store
        .apply(
            P,
            vec![Change::SetPresence {
                user_id: s.bob,
                online: true,
                at: t(70),
                version: 23,
            }],
            vec![pos(23)],
        )
        .await
        .expect("apply");
    assert_eq!(
        store.online_users().await.expect("online users"),
        vec![s.bob]
    );
}

/// Blocking and unblocking are ordered by version; deletion is final, scrubs the profile and
/// frees the username; restricted accounts are listed; re-applying changes nothing.
pub async fn account_standing(store: Arc<dyn ReadStore>) {
    let s = scene();
    store
        .apply(P, users(&s), vec![pos(3)])
        .await
        .expect("apply");
    let standing = |id| {
        let store = store.clone();
        async move { store.user(id).await.expect("user").expect("found").account }
    };
    let restricted = || {
        let store = store.clone();
        async move {
            let mut all = store.restricted_accounts().await.expect("restricted");
            all.sort_by_key(|(id, _)| *id);
            all
        }
    };
    assert_eq!(standing(s.bob).await, AccountStatus::Active);
    assert!(restricted().await.is_empty());

    let blocks = vec![
        Change::SetAccountStatus {
            user_id: s.bob,
            status: AccountStatus::Blocked,
            version: 10,
        },
        // Older: must not win.
        Change::SetAccountStatus {
            user_id: s.bob,
            status: AccountStatus::Active,
            version: 9,
        },
    ];
    store.apply(P, blocks, vec![pos(10)]).await.expect("apply");
    assert_eq!(standing(s.bob).await, AccountStatus::Blocked);
    assert_eq!(restricted().await, vec![(s.bob, AccountStatus::Blocked)]);
    let unblock = Change::SetAccountStatus {
        user_id: s.bob,
        status: AccountStatus::Active,
        version: 11,
    };
    store
        .apply(P, vec![unblock.clone()], vec![pos(11)])
        .await
        .expect("apply");
    assert_eq!(standing(s.bob).await, AccountStatus::Active);
    assert!(restricted().await.is_empty());

    let delete = Change::SetAccountStatus {
        user_id: s.alice,
        status: AccountStatus::Deleted,
        version: 20,
    };
    store
        .apply(P, vec![delete.clone()], vec![pos(20)])
        .await
        .expect("apply");
    let alice = store.user(s.alice).await.expect("user").expect("found");
    assert_eq!(alice.account, AccountStatus::Deleted);
    assert_eq!(alice.username, deleted_username(s.alice));
    assert_eq!(alice.display_name, "");
    assert!(
        store
            .user_by_username("alice")
            .await
            .expect("lookup")
            .is_none(),
        "a deleted account's username is free"
    );
    assert_eq!(restricted().await, vec![(s.alice, AccountStatus::Deleted)]);

    // Someone else takes the name.
    let dave = Uuid::now_v7();
    let dave_joins = Change::AddUser {
        user_id: dave,
        username: "alice".into(),
        display_name: "Dave".into(),
        registered_at: t(100),
    };
    store
        .apply(P, vec![dave_joins.clone()], vec![pos(21)])
        .await
        .expect("apply");
    let before = snapshot(store.as_ref(), &[s.alice, s.bob, s.carol, dave]).await;

    // Everything again, and later attempts to revive or rename the deleted account.
    let mut again = users(&s);
    again.push(Change::SetDisplayName {
        user_id: s.alice,
        display_name: "back".into(),
        version: 15,
    });
    again.push(delete);
    again.push(Change::SetAccountStatus {
        user_id: s.alice,
        status: AccountStatus::Active,
        version: 30,
    });
    again.push(unblock);
    again.push(dave_joins);
    store.apply(P, again, vec![pos(30)]).await.expect("apply");
    assert_eq!(
        snapshot(store.as_ref(), &[s.alice, s.bob, s.carol, dave]).await,
        before
    );
    assert_eq!(
        store
            .user_by_username("ALICE")
            .await
            .expect("lookup")
            .expect("found")
            .id,
        dave
    );
    assert_eq!(restricted().await, vec![(s.alice, AccountStatus::Deleted)]);
}

/// A name freed by a deletion ends with the next registration of it, whatever the order the
/// two users' registrations and the deletion are applied in (they can sit in different log
/// partitions, which a rebuild interleaves freely).
pub async fn freed_usernames_in_any_order(store: Arc<dyn ReadStore>) {
    let orders: [&[usize]; 3] = [&[0, 1, 2], &[1, 0, 2], &[0, 2, 1]];
    for (n, order) in orders.into_iter().enumerate() {
        let name = format!("reused{n}");
        let (old, new) = (Uuid::now_v7(), Uuid::now_v7());
        let changes = [
            Change::AddUser {
                user_id: old,
                username: name.clone(),
                display_name: "Old".into(),
                registered_at: t(1),
            },
            Change::AddUser {
                user_id: new,
                username: name.to_uppercase(),
                display_name: "New".into(),
                registered_at: t(5),
            },
            Change::SetAccountStatus {
                user_id: old,
                status: AccountStatus::Deleted,
                version: 7,
            },
        ];
        for &i in order {
            store
                .apply(P, vec![changes[i].clone()], vec![pos(10)])
                .await
                .expect("apply");
        }
        let owner = store
            .user_by_username(&name)
            .await
            .expect("lookup")
            .expect("the name has an owner");
        assert_eq!(owner.id, new, "order {order:?}");
        assert_eq!(owner.username, name.to_uppercase());
        let gone = store.user(old).await.expect("user").expect("listed");
        assert_eq!(gone.account, AccountStatus::Deleted, "order {order:?}");
        assert_eq!(gone.username, deleted_username(old));
    }
}

/// Friendship states and the friend list as each side sees it.
pub async fn friendships(store: Arc<dyn ReadStore>) {
    let s = scene();
    let mut c = users(&s);
    c.push(Change::SetFriendship {
        a: s.alice,
        b: s.bob,
        state: FriendshipState::Pending { requester: s.alice },
        at: t(1),
        version: 1,
    });
    c.push(Change::SetFriendship {
        a: s.carol,
        b: s.alice,
        state: FriendshipState::Friends,
        at: t(2),
        version: 2,
    });
    store.apply(P, c, vec![pos(3)]).await.expect("apply");
    assert_eq!(
        store.friendship(s.bob, s.alice).await.expect("friendship"),
        FriendshipState::Pending { requester: s.alice }
    );
    let alice_friends = store.friends(s.alice).await.expect("friends");
    let relations: Vec<(Uuid, Relation)> = alice_friends
        .iter()
        .map(|f| (f.user.id, f.relation))
        .collect();
    assert_eq!(
        relations,
        vec![
            (s.carol, Relation::Friend),
            (s.bob, Relation::OutgoingRequest)
        ]
    );
    let bob_friends = store.friends(s.bob).await.expect("friends");
    assert_eq!(bob_friends.len(), 1);
    assert_eq!(bob_friends[0].relation, Relation::IncomingRequest);

    let stale = Change::SetFriendship {
        a: s.alice,
        b: s.carol,
        state: FriendshipState::None,
        at: t(0),
        version: 1,
    };
    store.apply(P, vec![stale], vec![]).await.expect("apply");
    assert_eq!(
        store
            .friendship(s.alice, s.carol)
            .await
            .expect("friendship"),
        FriendshipState::Friends,
        "an older change must not undo a newer one"
    );
    let removal = Change::SetFriendship {
        a: s.alice,
        b: s.carol,
        state: FriendshipState::None,
        at: t(5),
        version: 7,
    };
    store.apply(P, vec![removal], vec![]).await.expect("apply");
    assert_eq!(
        store.friendship(s.carol, s.alice).await.expect("f"),
        FriendshipState::None
    );
    assert_eq!(store.friends(s.carol).await.expect("friends").len(), 0);
}

/// Unread counts, statuses, previews, tombstones and hidden messages after the story.
pub async fn messages_unread_and_deletes(store: Arc<dyn ReadStore>) {
    let s = scene();
    store
        .apply(P, story(&s), vec![pos(14)])
        .await
        .expect("apply");

    // Bob read up to message 1; message 2 is his own; 3 is hidden for him; 4 is a tombstone.
    let bob = store
        .conversations(s.bob, None, 10)
        .await
        .expect("conversations");
    assert_eq!(bob.items.len(), 1);
    assert_eq!(bob.items[0].unread_count, 0);
    assert_eq!(bob.items[0].peer.id, s.alice);
    assert_eq!(bob.items[0].peer.display_name, "Al");
    let last = bob.items[0].last_message.as_ref().expect("preview");
    assert_eq!(last.message_id, s.msgs[4]);
    assert!(last.deleted_for_everyone && last.text.is_none());

    // Alice has not read message 2 from Bob.
    let alice = store
        .conversations(s.alice, None, 10)
        .await
        .expect("conversations");
    assert_eq!(alice.items[0].unread_count, 1);

    let history = store
        .history(
            s.bob,
            s.conv,
            HistoryQuery {
                limit: 50,
                ..Default::default()
            },
        )
        .await
        .expect("history");
    let ids: Vec<Uuid> = history.items.iter().map(|m| m.message_id).collect();
    assert_eq!(
        ids,
        vec![s.msgs[4], s.msgs[2], s.msgs[1], s.msgs[0]],
        "newest first, 3 hidden"
    );
    assert_eq!(history.items[2].status, MessageStatus::Read);
    assert_eq!(
        history.items[1].status,
        MessageStatus::Delivered,
        "alice's device has 2 but she has not read it"
    );
    assert_eq!(history.items[1].seq, 3);
    assert_eq!(history.next, None);
    let alice_history = store
        .history(
            s.alice,
            s.conv,
            HistoryQuery {
                limit: 50,
                ..Default::default()
            },
        )
        .await
        .expect("history");
    assert_eq!(alice_history.items.len(), 5, "hidden for bob only");

    // A new message counts; hiding it, then tombstoning it, takes it away once.
    let extra = message(&s, 5, true, 15);
    store
        .apply(P, vec![extra], vec![pos(16)])
        .await
        .expect("apply");
    let unread = |store: Arc<dyn ReadStore>, user| async move {
        store.conversations(user, None, 10).await.expect("c").items[0].unread_count
    };
    assert_eq!(unread(store.clone(), s.bob).await, 1);
    let hide = Change::HideMessage {
        user_id: s.bob,
        message_id: s.msgs[5],
    };
    let tomb = Change::TombstoneMessage {
        message_id: s.msgs[5],
    };
    store
        .apply(P, vec![hide.clone(), tomb.clone(), hide, tomb], vec![])
        .await
        .expect("apply");
    assert_eq!(unread(store.clone(), s.bob).await, 0);

    // Reading up to the last message recounts to zero for alice; marker never moves back.
    store
        .apply(
            P,
            vec![
                Change::MarkRead {
                    conversation_id: s.conv,
                    reader_id: s.alice,
                    up_to: s.msgs[2],
                },
                Change::MarkRead {
                    conversation_id: s.conv,
                    reader_id: s.alice,
                    up_to: s.msgs[0],
                },
            ],
            vec![],
        )
        .await
        .expect("apply");
    assert_eq!(unread(store.clone(), s.alice).await, 0);
    let m2 = store
        .message(s.bob, s.msgs[2])
        .await
        .expect("m")
        .expect("visible");
    assert_eq!(m2.status, MessageStatus::Read);
    assert!(
        store.message(s.bob, s.msgs[3]).await.expect("m").is_none(),
        "hidden"
    );
    assert!(
        store
            .message(s.carol, s.msgs[2])
            .await
            .expect("m")
            .is_none(),
        "not hers"
    );
}

/// Pending messages: acknowledged, read, hidden and deleted ones leave; the oldest come first
/// across conversations; cursors page exactly; statuses move pending -> delivered -> read.
pub async fn pending_messages(store: Arc<dyn ReadStore>) {
    let s = scene();
    let other_conv = Uuid::now_v7();
    let mut changes = users(&s);
    for i in 0..5 {
        changes.push(message(&s, i, true, 10 + i as u64));
    }
    // Carol writes to Bob between Alice's messages 1 and 2, and Bob answers Alice once.
    changes.push(Change::AddMessage {
        message_id: s.msgs[5],
        conversation_id: other_conv,
        sender_id: s.carol,
        recipient_id: s.bob,
        text: "from carol".into(),
        client_msg_id: None,
        sent_at: t(11) + Duration::milliseconds(500),
        position: pos(20),
    });
    let answer = Uuid::now_v7();
    changes.push(Change::AddMessage {
        message_id: answer,
        conversation_id: s.conv,
        sender_id: s.bob,
        recipient_id: s.alice,
        text: "answer".into(),
        client_msg_id: None,
        sent_at: t(20),
        position: pos(21),
    });
    store.apply(P, changes, vec![pos(22)]).await.expect("apply");

    let pending_ids = |store: Arc<dyn ReadStore>, user: Uuid| async move {
        let page = store.pending(user, None, 100).await.expect("pending");
        assert_eq!(page.next, None);
        page.items.iter().map(|m| m.message_id).collect::<Vec<_>>()
    };
    let (m, carol_msg) = (&s.msgs, s.msgs[5]);
    assert_eq!(
        pending_ids(store.clone(), s.bob).await,
        vec![m[0], m[1], carol_msg, m[2], m[3], m[4]],
        "oldest first across conversations"
    );
    assert_eq!(pending_ids(store.clone(), s.alice).await, vec![answer]);
    assert!(pending_ids(store.clone(), s.carol).await.is_empty());

    // Paging one at a time visits the same messages in the same order.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .pending(s.bob, cursor.as_deref(), 1)
            .await
            .expect("page");
        paged.extend(page.items.iter().map(|m| m.message_id));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, pending_ids(store.clone(), s.bob).await);
    for bad in [
        "",
        "x",
        "1.2.3",
        "12.not-a-uuid.1",
        &format!("1.{}.-1", s.conv),
    ] {
        assert!(
            matches!(
                store.pending(s.bob, Some(bad), 10).await,
                Err(StoreError::InvalidCursor(_))
            ),
            "cursor {bad:?}"
        );
    }

    // Bob's device acknowledges 1 (twice, and Alice cannot do it for him): delivered for Alice.
    let ack = |id: Uuid, by: Uuid| Change::MarkDelivered {
        message_id: id,
        recipient_id: by,
    };
    store
        .apply(
            P,
            vec![ack(m[1], s.alice), ack(m[1], s.bob), ack(m[1], s.bob)],
            vec![],
        )
        .await
        .expect("ack");
    let status = |store: Arc<dyn ReadStore>, id: Uuid| async move {
        store
            .message(s.alice, id)
            .await
            .expect("message")
            .expect("visible")
            .status
    };
    assert_eq!(status(store.clone(), m[1]).await, MessageStatus::Delivered);
    assert_eq!(status(store.clone(), m[0]).await, MessageStatus::Pending);
    // Bob reads up to 2 (0 and 2 were never acknowledged), hides 3; Alice deletes 4.
    store
        .apply(
            P,
            vec![
                Change::MarkRead {
                    conversation_id: s.conv,
                    reader_id: s.bob,
                    up_to: m[2],
                },
                Change::HideMessage {
                    user_id: s.bob,
                    message_id: m[3],
                },
                Change::TombstoneMessage { message_id: m[4] },
            ],
            vec![],
        )
        .await
        .expect("read");
    assert_eq!(pending_ids(store.clone(), s.bob).await, vec![carol_msg]);
    for id in [m[0], m[1], m[2]] {
        assert_eq!(status(store.clone(), id).await, MessageStatus::Read);
    }
    assert_eq!(
        status(store.clone(), m[3]).await,
        MessageStatus::Pending,
        "hidden by Bob, never acknowledged"
    );
    // A late acknowledgement of a read message leaves it read.
    store
        .apply(P, vec![ack(m[0], s.bob)], vec![])
        .await
        .expect("late ack");
    assert_eq!(status(store.clone(), m[0]).await, MessageStatus::Read);
    store
        .apply(P, vec![ack(carol_msg, s.bob)], vec![])
        .await
        .expect("ack");
    assert!(pending_ids(store.clone(), s.bob).await.is_empty());
}

/// Cursor paging of history, conversations and the catch-up feed.
pub async fn pagination(store: Arc<dyn ReadStore>) {
    let s = scene();
    let mut c = story(&s);
    c.push(message(&s, 5, false, 15));
    store.apply(P, c, vec![pos(16)]).await.expect("apply");

    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .history(
                s.alice,
                s.conv,
                HistoryQuery {
                    before,
                    limit: 2,
                    ..Default::default()
                },
            )
            .await
            .expect("history");
        seen.extend(page.items.iter().map(|m| m.seq));
        match page.next {
            Some(next) => before = Some(next.parse().expect("cursor is a message id")),
            None => break,
        }
    }
    assert_eq!(seen, vec![6, 5, 4, 3, 2, 1]);

    let after = store
        .history(
            s.alice,
            s.conv,
            HistoryQuery {
                after: Some(s.msgs[1]),
                limit: 2,
                ..Default::default()
            },
        )
        .await
        .expect("history");
    assert_eq!(
        after.items.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert_eq!(after.next, Some(s.msgs[3].to_string()));

    let since = store
        .history(
            s.alice,
            s.conv,
            HistoryQuery {
                since: Some(t(14)),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .expect("history");
    assert_eq!(
        since.items.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![5, 6]
    );

    let unknown = store
        .history(
            s.alice,
            s.conv,
            HistoryQuery {
                before: Some(Uuid::now_v7()),
                limit: 2,
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(unknown, Err(StoreError::UnknownCursor(_))));

    let mut feed = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .messages_since(s.bob, t(11), after.as_deref(), 2)
            .await
            .expect("since");
        feed.extend(page.items.iter().map(|m| m.seq));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(
        feed,
        vec![2, 3, 5, 6],
        "from t(11), message 3 (seq 4) hidden for bob"
    );
    assert!(matches!(
        store.messages_since(s.bob, t(0), Some("garbage"), 2).await,
        Err(StoreError::InvalidCursor(_))
    ));
    assert!(matches!(
        store.conversations(s.bob, Some("x.y"), 2).await,
        Err(StoreError::InvalidCursor(_))
    ));

    // Two conversations for alice: newest activity first, paged one at a time.
    let other_conv = Uuid::now_v7();
    let late = Change::AddMessage {
        message_id: Uuid::now_v7(),
        conversation_id: other_conv,
        sender_id: s.carol,
        recipient_id: s.alice,
        text: "hi".into(),
        client_msg_id: None,
        sent_at: t(100),
        position: pos(17),
    };
    store.apply(P, vec![late], vec![]).await.expect("apply");
    let first = store.conversations(s.alice, None, 1).await.expect("c");
    assert_eq!(first.items[0].conversation_id, other_conv);
    let second = store
        .conversations(s.alice, first.next.as_deref(), 1)
        .await
        .expect("c");
    assert_eq!(second.items[0].conversation_id, s.conv);
    assert_eq!(second.next, None);
    assert_eq!(
        store
            .participants(other_conv)
            .await
            .expect("p")
            .map(|(a, b)| {
                let mut v = [a, b];
                v.sort();
                v
            }),
        Some({
            let mut v = [s.carol, s.alice];
            v.sort();
            v
        })
    );
}

/// A message stamped earlier but projected later (two concurrent sends) is never skipped by a
/// feed cursor, and history's `since` stays exact.
pub async fn late_projected_messages_are_not_skipped(store: Arc<dyn ReadStore>) {
    let s = scene();
    let mut c = users(&s);
    c.push(message(&s, 0, true, 5)); // stamped t(10)
    store.apply(P, c, vec![pos(6)]).await.expect("apply");
    let first = store
        .messages_since(s.bob, t(0), None, 10)
        .await
        .expect("feed");
    assert_eq!(first.items.len(), 1);
    assert_eq!(first.next, None);
    // Stamped t(5), before the message already read, but projected after it.
    let mut late = message(&s, 1, true, 6);
    if let Change::AddMessage { sent_at, .. } = &mut late {
        *sent_at = t(5);
    }
    store
        .apply(P, vec![late], vec![pos(7)])
        .await
        .expect("apply");
    let polled = store
        .messages_since(s.bob, t(0), Some(&first.resume), 10)
        .await
        .expect("feed");
    assert_eq!(
        polled
            .items
            .iter()
            .map(|m| m.message_id)
            .collect::<Vec<_>>(),
        vec![s.msgs[1]],
        "the late message arrives after the resume cursor"
    );
    let quiet = store
        .messages_since(s.bob, t(0), Some(&polled.resume), 10)
        .await
        .expect("feed");
    assert!(quiet.items.is_empty());
    assert_eq!(quiet.resume, polled.resume, "nothing new: the cursor stays");
    // Its time is clamped to the conversation's latest, so history's `since` is exact.
    let late_seen = store
        .message(s.bob, s.msgs[1])
        .await
        .expect("m")
        .expect("visible");
    assert_eq!(late_seen.seq, 2);
    assert_eq!(late_seen.sent_at, t(10));
    for (since, want) in [(t(10), 2), (t(11), 0), (t(0), 2)] {
        let h = store
            .history(
                s.bob,
                s.conv,
                HistoryQuery {
                    since: Some(since),
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .expect("history");
        assert_eq!(h.items.len(), want, "since {since}");
    }
    // An empty feed still hands out a cursor to follow from now on.
    let empty = store
        .messages_since(s.carol, t(0), None, 10)
        .await
        .expect("feed");
    assert!(empty.items.is_empty());
    assert_eq!(empty.next, None);
    let first_for_carol = Change::AddMessage {
        message_id: Uuid::now_v7(),
        conversation_id: Uuid::now_v7(),
        sender_id: s.alice,
        recipient_id: s.carol,
        text: "hello carol".into(),
        client_msg_id: None,
        sent_at: t(20),
        position: Position::new(1, 3),
    };
    store
        .apply(P, vec![first_for_carol], vec![])
        .await
        .expect("apply");
    let arrived = store
        .messages_since(s.carol, t(0), Some(&empty.resume), 10)
        .await
        .expect("feed");
    assert_eq!(
        arrived
            .items
            .iter()
            .map(|m| m.text.as_deref())
            .collect::<Vec<_>>(),
        vec![Some("hello carol")],
        "a message after the empty feed's cursor, in another log partition"
    );
}

/// Applying any prefix again, or everything twice, changes nothing.
pub async fn reapplying_is_idempotent(store: Arc<dyn ReadStore>, fresh: Arc<dyn ReadStore>) {
    let s = scene();
    let all = story(&s);
    let everyone = [s.alice, s.bob, s.carol];
    store
        .apply(P, all.clone(), vec![pos(14)])
        .await
        .expect("apply");
    let once = snapshot(store.as_ref(), &everyone).await;
    for cut in [1, 5, 9, all.len()] {
        store
            .apply(P, all[..cut].to_vec(), vec![pos(14)])
            .await
            .expect("again");
        assert_eq!(
            snapshot(store.as_ref(), &everyone).await,
            once,
            "re-applying {cut} changes"
        );
    }
    // Duplicates inside one batch (a redelivery that lands in the same batch) change nothing.
    let doubled: Vec<Change> = all.iter().flat_map(|c| [c.clone(), c.clone()]).collect();
    store
        .apply(P, doubled, vec![pos(14)])
        .await
        .expect("doubled");
    assert_eq!(
        snapshot(store.as_ref(), &everyone).await,
        once,
        "duplicates within a batch"
    );
    // One change at a time (as a redelivering consumer would) gives the same as one batch.
    for change in &all {
        fresh
            .apply(P, vec![change.clone()], vec![])
            .await
            .expect("apply");
        fresh
            .apply(P, vec![change.clone()], vec![])
            .await
            .expect("duplicate");
    }
    assert_eq!(snapshot(fresh.as_ref(), &everyone).await, once);
}

/// The idempotency key finds the original message.
pub async fn client_message_ids(store: Arc<dyn ReadStore>) {
    let s = scene();
    store.apply(P, story(&s), vec![]).await.expect("apply");
    let found = store
        .message_by_client_id(s.bob, "c2")
        .await
        .expect("lookup")
        .expect("found");
    assert_eq!(found.message_id, s.msgs[2]);
    assert_eq!(found.position, pos(7));
    assert!(
        store
            .message_by_client_id(s.alice, "c2")
            .await
            .expect("lookup")
            .is_none()
    );
}
