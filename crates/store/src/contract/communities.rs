//! The community part of the contract: servers, subscriptions, invitations, posts and
//! channels. Each check takes a fresh, empty store, like the rest of [`super`].

use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{P, pos, snapshot, t};
use crate::{
    Change, Channel, ChannelMessage, CommunityChange, HistoryQuery, Invitation, InvitationState,
    Page, Post, ReadStore, Server, ServerRole, ServerSearch, StoreError, UserServer, Visibility,
};

fn ids(n: usize) -> Vec<Uuid> {
    (0..n).map(|_| Uuid::now_v7()).collect()
}

fn add_server(
    server_id: Uuid,
    owner_id: Uuid,
    name: &str,
    tags: &[&str],
    visibility: Visibility,
    at: DateTime<Utc>,
) -> Change {
    Change::Community(CommunityChange::AddServer {
        server_id,
        owner_id,
        name: name.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        visibility,
        created_at: at,
    })
}

fn public(server_id: Uuid, owner_id: Uuid, name: &str, tags: &[&str]) -> Change {
    add_server(server_id, owner_id, name, tags, Visibility::Public, t(1))
}

fn subscription(
    server_id: Uuid,
    user_id: Uuid,
    subscribed: bool,
    at: DateTime<Utc>,
    version: u64,
) -> Change {
    Change::Community(CommunityChange::SetSubscription {
        server_id,
        user_id,
        subscribed,
        at,
        version,
    })
}

fn invite(
    invitation_id: Uuid,
    server_id: Uuid,
    inviter_id: Uuid,
    invitee_id: Uuid,
    sent_at: DateTime<Utc>,
) -> Change {
    Change::Community(CommunityChange::AddInvitation {
        invitation_id,
        server_id,
        inviter_id,
        invitee_id,
        sent_at,
    })
}

fn answer(invitation_id: Uuid, accepted: bool, at: DateTime<Utc>) -> Change {
    Change::Community(CommunityChange::AnswerInvitation {
        invitation_id,
        accepted,
        at,
    })
}

fn post(post_id: Uuid, server_id: Uuid, author_id: Uuid, i: u64) -> Change {
    Change::Community(CommunityChange::AddPost {
        post_id,
        server_id,
        author_id,
        content: format!("post {i}"),
        tags: vec![format!("tag{i}"), "news".into()],
        published_at: t(100 + i as i64),
        position: pos(100 + i),
    })
}

fn add_channel(channel_id: Uuid, server_id: Uuid, name: &str, created_by: Uuid) -> Change {
    Change::Community(CommunityChange::AddChannel {
        channel_id,
        server_id,
        name: name.into(),
        created_by,
        created_at: t(2),
    })
}

fn delete_channel(channel_id: Uuid, server_id: Uuid) -> Change {
    Change::Community(CommunityChange::DeleteChannel {
        channel_id,
        server_id,
    })
}

fn join(user_id: Uuid, server_id: Uuid, channel_id: Uuid, version: u64) -> Change {
    Change::Community(CommunityChange::JoinChannel {
        user_id,
        server_id,
        channel_id,
        at: t(version as i64),
        version,
    })
}

fn leave(user_id: Uuid, channel_id: Uuid, version: u64) -> Change {
    Change::Community(CommunityChange::LeaveChannel {
        user_id,
        channel_id,
        version,
    })
}

/// A message `i` of a channel: sent at `t(10 + i)`, at log offset `200 + i`, with the
/// idempotency key `k<i>`.
fn say(message_id: Uuid, server_id: Uuid, channel_id: Uuid, sender_id: Uuid, i: u64) -> Change {
    Change::Community(CommunityChange::AddChannelMessage {
        message_id,
        server_id,
        channel_id,
        sender_id,
        text: format!("channel message {i}"),
        client_msg_id: Some(format!("k{i}")),
        sent_at: t(10 + i as i64),
        position: pos(200 + i),
    })
}

fn mark_read(channel_id: Uuid, reader_id: Uuid, up_to: Uuid) -> Change {
    Change::Community(CommunityChange::MarkChannelRead {
        channel_id,
        reader_id,
        up_to,
    })
}

async fn apply(store: &Arc<dyn ReadStore>, changes: Vec<Change>) {
    store.apply(P, changes, vec![]).await.expect("apply");
}

fn sorted(mut v: Vec<Uuid>) -> Vec<Uuid> {
    v.sort();
    v
}

async fn search(
    store: &Arc<dyn ReadStore>,
    name: Option<&str>,
    tags: &[&str],
    after: Option<&str>,
    limit: usize,
) -> Page<Server> {
    let search = ServerSearch {
        name: name.map(str::to_owned),
        tags: tags.iter().map(|t| t.to_string()).collect(),
    };
    store
        .search_servers(&search, after, limit)
        .await
        .expect("search")
}

/// The ids a search finds, read in one page.
async fn found(store: &Arc<dyn ReadStore>, name: Option<&str>, tags: &[&str]) -> Vec<Uuid> {
    let page = search(store, name, tags, None, 100).await;
    assert_eq!(page.next, None, "{name:?} {tags:?}: everything in one page");
    page.items.iter().map(|s| s.server_id).collect()
}

async fn server_ids(store: &Arc<dyn ReadStore>, user: Uuid) -> Vec<(Uuid, ServerRole)> {
    let page = store.user_servers(user, None, 100).await.expect("servers");
    assert_eq!(page.next, None);
    page.items
        .iter()
        .map(|s| (s.server.server_id, s.role))
        .collect()
}

async fn member_ids(store: &Arc<dyn ReadStore>, channel: Uuid) -> Vec<Uuid> {
    let page = store
        .channel_members(channel, None, 100)
        .await
        .expect("members");
    assert_eq!(page.next, None);
    page.items
}

async fn current(store: &Arc<dyn ReadStore>, user: Uuid) -> Option<Uuid> {
    store
        .current_channel(user)
        .await
        .expect("current channel")
        .map(|c| c.channel_id)
}

async fn channel_names(store: &Arc<dyn ReadStore>, server: Uuid) -> Vec<(String, Uuid)> {
    store
        .channels(server, Uuid::now_v7())
        .await
        .expect("channels")
        .into_iter()
        .map(|c| (c.channel.name, c.channel.channel_id))
        .collect()
}

fn is_invalid_cursor<T: std::fmt::Debug>(result: crate::Result<T>) -> bool {
    matches!(result, Err(StoreError::InvalidCursor(_)))
}

/// Servers are found by id and by name in any case (Unicode-aware); a second server with a
/// taken name is ignored, and a server id is created once; the owner is a member.
pub async fn servers_and_names(store: Arc<dyn ReadStore>) {
    let [alice, bob, first, second, hidden] = ids(5).try_into().expect("five ids");
    apply(
        &store,
        vec![
            add_server(
                first,
                alice,
                "Élan Vital",
                &["rust", "chat"],
                Visibility::Public,
                t(1),
            ),
            // The same name in another case, by someone else: the first keeps it.
            add_server(second, bob, "ÉLAN vital", &["x"], Visibility::Public, t(2)),
            // The same id again, with other fields: the first wins.
            add_server(first, bob, "Other Name", &[], Visibility::Private, t(3)),
            add_server(hidden, bob, "Hidden Place", &[], Visibility::Private, t(4)),
        ],
    )
    .await;

    let expected = Server {
        server_id: first,
        owner_id: alice,
        name: "Élan Vital".into(),
        tags: vec!["rust".into(), "chat".into()],
        visibility: Visibility::Public,
        created_at: t(1),
    };
    assert_eq!(
        store.server(first).await.expect("server"),
        Some(expected.clone())
    );
    assert_eq!(
        store.server(second).await.expect("server"),
        None,
        "a taken name"
    );
    for name in ["Élan Vital", "élan vital", "ÉLAN VITAL"] {
        assert_eq!(
            store.server_by_name(name).await.expect("by name"),
            Some(expected.clone()),
            "{name}"
        );
    }
    for name in ["Elan Vital", "Other Name", "élan"] {
        assert_eq!(
            store.server_by_name(name).await.expect("by name"),
            None,
            "{name}"
        );
    }
    let private = store.server(hidden).await.expect("server").expect("found");
    assert_eq!(private.visibility, Visibility::Private);
    assert_eq!(private.owner_id, bob);
    assert_eq!(private.tags, Vec::<String>::new());
    assert_eq!(store.server(Uuid::now_v7()).await.expect("server"), None);

    assert_eq!(
        store.membership(first, alice).await.expect("membership"),
        Some(ServerRole::Owner)
    );
    assert_eq!(
        store.membership(first, bob).await.expect("membership"),
        None
    );
    assert_eq!(
        store.membership(second, bob).await.expect("membership"),
        None,
        "the ignored server has no owner"
    );
    let alice_servers = store.user_servers(alice, None, 10).await.expect("servers");
    assert_eq!(
        alice_servers,
        Page {
            items: vec![UserServer {
                server: expected,
                role: ServerRole::Owner,
                since: t(1),
            }],
            next: None,
        }
    );
    assert_eq!(
        server_ids(&store, bob).await,
        vec![(hidden, ServerRole::Owner)]
    );
}

/// Search finds public servers only: by name prefix (one or two characters, counted as
/// characters) or substring (three or more, taken literally), and by tags that must all
/// match; ordered by name key, paged by cursor.
pub async fn server_search(store: Arc<dyn ReadStore>) {
    let owner = Uuid::now_v7();
    let [lovers, nails, trust, crab, secret, pure, elan, bel] =
        ids(8).try_into().expect("eight ids");
    apply(
        &store,
        vec![
            public(lovers, owner, "Rust Lovers", &["rust", "community"]),
            public(nails, owner, "rusty nails", &["tools"]),
            public(trust, owner, "Trust Fund", &["finance", "rust"]),
            public(crab, owner, "Crab Shack", &["rust", "food"]),
            add_server(
                secret,
                owner,
                "Rustaceans Secret",
                &["rust"],
                Visibility::Private,
                t(1),
            ),
            public(pure, owner, "100% Pure", &[]),
            public(elan, owner, "Élan", &[]),
            public(bel, owner, "Bel élan", &[]),
        ],
    )
    .await;

    // Ordered by the lower-cased name: "bel élan" < "crab shack" < "rust lovers" <
    // "rusty nails" < "trust fund" < "élan".
    assert_eq!(found(&store, Some("r"), &[]).await, vec![lovers, nails]);
    assert_eq!(
        found(&store, Some("ru"), &[]).await,
        vec![lovers, nails],
        "two characters: a prefix"
    );
    assert_eq!(
        found(&store, Some("rus"), &[]).await,
        vec![lovers, nails, trust],
        "three characters: anywhere in the name; the private server is never found"
    );
    assert_eq!(
        found(&store, Some("él"), &[]).await,
        vec![elan],
        "two characters (three bytes): a prefix"
    );
    assert_eq!(found(&store, Some("éla"), &[]).await, vec![bel, elan]);
    assert_eq!(found(&store, Some("0% p"), &[]).await, vec![pure]);
    assert_eq!(
        found(&store, Some("_us"), &[]).await,
        Vec::<Uuid>::new(),
        "'_' is a character, not a wildcard"
    );
    assert_eq!(
        found(&store, Some("%"), &[]).await,
        Vec::<Uuid>::new(),
        "'%' is a character, not a wildcard"
    );
    assert_eq!(found(&store, Some("secret"), &[]).await, Vec::<Uuid>::new());
    assert_eq!(found(&store, Some("rust lovers"), &[]).await, vec![lovers]);

    assert_eq!(
        found(&store, None, &["rust"]).await,
        vec![crab, lovers, trust]
    );
    assert_eq!(
        found(&store, None, &["rust", "food"]).await,
        vec![crab],
        "every tag must match"
    );
    assert_eq!(
        found(&store, None, &["food", "rust", "food"]).await,
        vec![crab]
    );
    assert_eq!(
        found(&store, None, &["rust", "tools"]).await,
        Vec::<Uuid>::new()
    );
    assert_eq!(found(&store, Some("rus"), &["finance"]).await, vec![trust]);
    assert_eq!(found(&store, Some("ru"), &["rust"]).await, vec![lovers]);

    // Paging visits the same servers in the same order, whatever the page size.
    let all = found(&store, None, &["rust"]).await;
    for limit in [1, 2] {
        let mut paged = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = search(&store, None, &["rust"], after.as_deref(), limit).await;
            assert!(page.items.len() <= limit);
            paged.extend(page.items.iter().map(|s| s.server_id));
            assert!(paged.len() <= all.len(), "a cursor went back: {paged:?}");
            match page.next {
                Some(next) => {
                    assert_eq!(
                        next,
                        page.items
                            .last()
                            .expect("a page before a cursor")
                            .server_id
                            .to_string(),
                        "the cursor is the last server's id"
                    );
                    after = Some(next);
                }
                None => break,
            }
        }
        assert_eq!(paged, all, "pages of {limit}");
    }
    let rest = search(&store, Some("rus"), &[], Some(&lovers.to_string()), 10).await;
    assert_eq!(
        rest.items.iter().map(|s| s.server_id).collect::<Vec<_>>(),
        vec![nails, trust]
    );
    // A private server's id is no cursor either: answering it would tell that it exists.
    for bad in [
        "garbage",
        "",
        &Uuid::now_v7().to_string(),
        &secret.to_string(),
    ] {
        let result = store
            .search_servers(
                &ServerSearch {
                    name: Some("rus".into()),
                    tags: vec![],
                },
                Some(bad),
                10,
            )
            .await;
        assert!(is_invalid_cursor(result), "cursor {bad:?}");
    }
}

/// A user's servers: owned and subscribed, by server id, with their role and since when;
/// subscriptions follow the newest version only and never touch the owner.
pub async fn user_servers_and_subscriptions(store: Arc<dyn ReadStore>) {
    let [alice, bob, carol] = ids(3).try_into().expect("three ids");
    let [mine, bobs, x, y, z] = ids(5).try_into().expect("five ids");
    apply(
        &store,
        vec![
            add_server(mine, alice, "Alice's", &[], Visibility::Public, t(1)),
            add_server(bobs, bob, "Bob's", &[], Visibility::Private, t(2)),
            subscription(bobs, alice, true, t(5), 5),
        ],
    )
    .await;
    let expected_mine = UserServer {
        server: store.server(mine).await.expect("server").expect("found"),
        role: ServerRole::Owner,
        since: t(1),
    };
    let expected_bobs = UserServer {
        server: store.server(bobs).await.expect("server").expect("found"),
        role: ServerRole::Subscriber,
        since: t(5),
    };
    let alice_servers = store.user_servers(alice, None, 10).await.expect("servers");
    assert_eq!(
        alice_servers.items,
        vec![expected_mine.clone(), expected_bobs]
    );
    assert_eq!(
        store.membership(bobs, alice).await.expect("membership"),
        Some(ServerRole::Subscriber)
    );

    // A stale unsubscribe changes nothing; a newer one does; a stale resubscribe does not.
    apply(&store, vec![subscription(bobs, alice, false, t(4), 4)]).await;
    assert_eq!(
        store.membership(bobs, alice).await.expect("membership"),
        Some(ServerRole::Subscriber)
    );
    apply(&store, vec![subscription(bobs, alice, false, t(7), 7)]).await;
    assert_eq!(
        store.membership(bobs, alice).await.expect("membership"),
        None
    );
    assert_eq!(
        server_ids(&store, alice).await,
        vec![(mine, ServerRole::Owner)]
    );
    apply(&store, vec![subscription(bobs, alice, true, t(6), 6)]).await;
    assert_eq!(
        store.membership(bobs, alice).await.expect("membership"),
        None,
        "an older subscribe after a newer unsubscribe"
    );
    // Resubscribing: since is the latest subscription's time.
    apply(
        &store,
        vec![
            subscription(bobs, alice, true, t(9), 9),
            subscription(bobs, alice, false, t(7), 7),
            subscription(bobs, alice, true, t(5), 5),
        ],
    )
    .await;
    let alice_servers = store.user_servers(alice, None, 10).await.expect("servers");
    assert_eq!(alice_servers.items.len(), 2);
    let resubscribed = alice_servers
        .items
        .iter()
        .find(|s| s.server.server_id == bobs)
        .expect("subscribed again");
    assert_eq!(resubscribed.role, ServerRole::Subscriber);
    assert_eq!(resubscribed.since, t(9));

    // The owner's membership is never changed by a subscription change.
    apply(
        &store,
        vec![
            subscription(mine, alice, false, t(50), 50),
            subscription(mine, alice, true, t(51), 51),
        ],
    )
    .await;
    assert_eq!(
        store.membership(mine, alice).await.expect("membership"),
        Some(ServerRole::Owner)
    );
    let alice_servers = store.user_servers(alice, None, 10).await.expect("servers");
    assert!(
        alice_servers.items.contains(&expected_mine),
        "role and since unchanged"
    );

    // Carol's servers, paged by server id.
    let mut changes = Vec::new();
    for (i, server) in [z, x, y].into_iter().enumerate() {
        changes.push(add_server(
            server,
            bob,
            &format!("server {i}"),
            &[],
            Visibility::Public,
            t(1),
        ));
        changes.push(subscription(server, carol, true, t(20 + i as i64), 20));
    }
    apply(&store, changes).await;
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .user_servers(carol, after.as_deref(), 2)
            .await
            .expect("servers");
        assert!(page.items.len() <= 2);
        assert!(page.items.iter().all(|s| s.role == ServerRole::Subscriber));
        paged.extend(page.items.iter().map(|s| s.server.server_id));
        assert!(paged.len() <= 3, "a cursor went back: {paged:?}");
        match page.next {
            Some(next) => {
                assert_eq!(
                    next,
                    page.items
                        .last()
                        .expect("items")
                        .server
                        .server_id
                        .to_string()
                );
                after = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(paged, sorted(vec![x, y, z]));
    assert!(is_invalid_cursor(
        store.user_servers(carol, Some("nope"), 2).await
    ));
    assert_eq!(
        store
            .membership(Uuid::now_v7(), carol)
            .await
            .expect("membership"),
        None
    );
    assert!(server_ids(&store, Uuid::now_v7()).await.is_empty());
}

/// Invitations are pending until first answered; the first answer wins; an invitee's
/// pending ones are listed newest first and paged.
pub async fn invitations(store: Arc<dyn ReadStore>) {
    let [alice, bob, carol] = ids(3).try_into().expect("three ids");
    let [garden, other] = ids(2).try_into().expect("two ids");
    let [i1, i2, i3, i4] = ids(4).try_into().expect("four ids");
    apply(
        &store,
        vec![
            add_server(
                garden,
                alice,
                "Secret Garden",
                &[],
                Visibility::Private,
                t(1),
            ),
            add_server(other, carol, "Other Place", &[], Visibility::Public, t(1)),
            invite(i1, garden, alice, bob, t(2)),
            invite(i2, garden, alice, carol, t(3)),
            invite(i3, other, carol, bob, t(4)),
        ],
    )
    .await;
    let pending_i1 = Invitation {
        invitation_id: i1,
        server_id: garden,
        server_name: "Secret Garden".into(),
        inviter_id: alice,
        invitee_id: bob,
        sent_at: t(2),
        state: InvitationState::Pending,
        answered_at: None,
    };
    assert_eq!(
        store.invitation(i1).await.expect("invitation"),
        Some(pending_i1.clone())
    );
    assert_eq!(
        store
            .pending_invitation(garden, bob)
            .await
            .expect("pending"),
        Some(pending_i1.clone())
    );
    assert_eq!(
        store
            .pending_invitation(garden, alice)
            .await
            .expect("pending"),
        None
    );
    let bobs = store
        .pending_invitations(bob, None, 10)
        .await
        .expect("pending");
    assert_eq!(
        bobs.items
            .iter()
            .map(|i| i.invitation_id)
            .collect::<Vec<_>>(),
        vec![i3, i1],
        "newest first"
    );
    assert_eq!(bobs.items[1], pending_i1);
    assert_eq!(bobs.next, None);
    let first = store
        .pending_invitations(bob, None, 1)
        .await
        .expect("pending");
    assert_eq!(first.items[0].invitation_id, i3);
    assert_eq!(first.next, Some(i3.to_string()));
    let second = store
        .pending_invitations(bob, first.next.as_deref(), 1)
        .await
        .expect("pending");
    assert_eq!(second.items[0].invitation_id, i1);
    assert_eq!(second.next, None);
    assert!(is_invalid_cursor(
        store.pending_invitations(bob, Some("x"), 1).await
    ));

    // Bob accepts; a later decline, and the invitation again, change nothing.
    apply(
        &store,
        vec![
            answer(i1, true, t(6)),
            answer(i1, false, t(7)),
            invite(i1, garden, alice, bob, t(2)),
        ],
    )
    .await;
    let accepted = store
        .invitation(i1)
        .await
        .expect("invitation")
        .expect("found");
    assert_eq!(accepted.state, InvitationState::Accepted);
    assert_eq!(accepted.answered_at, Some(t(6)));
    assert_eq!(
        store
            .pending_invitation(garden, bob)
            .await
            .expect("pending"),
        None
    );
    assert_eq!(
        store
            .pending_invitations(bob, None, 10)
            .await
            .expect("pending")
            .items
            .iter()
            .map(|i| i.invitation_id)
            .collect::<Vec<_>>(),
        vec![i3]
    );

    // Carol declines first: a later acceptance changes nothing.
    apply(
        &store,
        vec![answer(i2, false, t(8)), answer(i2, true, t(9))],
    )
    .await;
    let declined = store
        .invitation(i2)
        .await
        .expect("invitation")
        .expect("found");
    assert_eq!(declined.state, InvitationState::Declined);
    assert_eq!(declined.answered_at, Some(t(8)));
    assert!(
        store
            .pending_invitations(carol, None, 10)
            .await
            .expect("pending")
            .items
            .is_empty()
    );

    // Invited again after answering: a new pending invitation.
    apply(
        &store,
        vec![
            invite(i4, garden, alice, bob, t(10)),
            answer(Uuid::now_v7(), true, t(11)),
        ],
    )
    .await;
    assert_eq!(
        store
            .pending_invitation(garden, bob)
            .await
            .expect("pending")
            .map(|i| i.invitation_id),
        Some(i4)
    );
    assert_eq!(
        store
            .pending_invitations(bob, None, 10)
            .await
            .expect("pending")
            .items
            .iter()
            .map(|i| i.invitation_id)
            .collect::<Vec<_>>(),
        vec![i4, i3]
    );
    assert_eq!(
        store.invitation(Uuid::now_v7()).await.expect("invitation"),
        None
    );
}

/// Posts are stored once and listed newest first (by id, not by arrival), paged by cursor.
pub async fn posts_newest_first(store: Arc<dyn ReadStore>) {
    let [owner, news, other] = ids(3).try_into().expect("three ids");
    let p = ids(5);
    let elsewhere = Uuid::now_v7();
    let mut changes = vec![
        public(news, owner, "News", &[]),
        public(other, owner, "Other", &[]),
    ];
    // They arrive out of id order.
    for i in [2, 0, 4, 1, 3] {
        changes.push(post(p[i], news, owner, i as u64));
    }
    changes.push(post(elsewhere, other, owner, 9));
    apply(&store, changes.clone()).await;
    apply(&store, changes).await;

    let all = store.posts(news, None, 10).await.expect("posts");
    assert_eq!(all.next, None);
    assert_eq!(
        all.items.iter().map(|p| p.post_id).collect::<Vec<_>>(),
        vec![p[4], p[3], p[2], p[1], p[0]]
    );
    assert_eq!(
        all.items[4],
        Post {
            post_id: p[0],
            server_id: news,
            author_id: owner,
            content: "post 0".into(),
            tags: vec!["tag0".into(), "news".into()],
            published_at: t(100),
            position: pos(100),
        }
    );
    let mut paged = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = store
            .posts(news, before.as_deref(), 2)
            .await
            .expect("posts");
        assert!(page.items.len() <= 2);
        paged.extend(page.items.iter().map(|p| p.post_id));
        assert!(paged.len() <= p.len(), "a cursor went back: {paged:?}");
        match page.next {
            Some(next) => {
                assert_eq!(next, page.items.last().expect("items").post_id.to_string());
                before = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(paged, vec![p[4], p[3], p[2], p[1], p[0]]);
    assert_eq!(
        store
            .posts(other, None, 10)
            .await
            .expect("posts")
            .items
            .iter()
            .map(|p| p.post_id)
            .collect::<Vec<_>>(),
        vec![elsewhere]
    );
    assert!(
        store
            .posts(Uuid::now_v7(), None, 10)
            .await
            .expect("posts")
            .items
            .is_empty()
    );
    assert!(is_invalid_cursor(store.posts(news, Some("bad"), 2).await));
}

/// Channels: a membership recorded before its channel shows once the channel does; a deleted
/// channel disappears from every query and never comes back; its name can be used again.
pub async fn channels_and_tombstones(store: Arc<dyn ReadStore>) {
    let [alice, bob, carol] = ids(3).try_into().expect("three ids");
    let [server, elsewhere] = ids(2).try_into().expect("two ids");
    let [general, random, dev, general2, ghost] = ids(5).try_into().expect("five ids");
    apply(&store, vec![public(server, alice, "Guild", &[])]).await;

    // Bob's join is projected before the channel's creation (another partition).
    apply(&store, vec![join(bob, server, general, 1)]).await;
    assert_eq!(store.channel(general).await.expect("channel"), None);
    assert_eq!(current(&store, bob).await, None);
    assert!(member_ids(&store, general).await.is_empty());
    apply(&store, vec![add_channel(general, server, "general", alice)]).await;
    let general_channel = Channel {
        channel_id: general,
        server_id: server,
        name: "general".into(),
        created_by: alice,
        created_at: t(2),
    };
    assert_eq!(
        store.channel(general).await.expect("channel"),
        Some(general_channel.clone())
    );
    assert_eq!(
        store.current_channel(bob).await.expect("current"),
        Some(general_channel),
        "the earlier join shows once the channel is known"
    );
    assert_eq!(member_ids(&store, general).await, vec![bob]);

    apply(
        &store,
        vec![
            add_channel(random, server, "random", alice),
            add_channel(dev, server, "dev", alice),
        ],
    )
    .await;
    assert_eq!(
        channel_names(&store, server).await,
        vec![
            ("dev".to_owned(), dev),
            ("general".to_owned(), general),
            ("random".to_owned(), random)
        ],
        "by name"
    );

    // Deleting general: gone from every query, and its members are in no channel.
    apply(&store, vec![delete_channel(general, server)]).await;
    assert_eq!(store.channel(general).await.expect("channel"), None);
    assert_eq!(current(&store, bob).await, None);
    assert!(member_ids(&store, general).await.is_empty());
    assert_eq!(
        channel_names(&store, server).await,
        vec![("dev".to_owned(), dev), ("random".to_owned(), random)]
    );
    // Its creation again (a redelivery) does not bring it back; a join to it shows nothing.
    apply(
        &store,
        vec![
            add_channel(general, server, "general", alice),
            join(carol, server, general, 1),
        ],
    )
    .await;
    assert_eq!(store.channel(general).await.expect("channel"), None);
    assert_eq!(current(&store, carol).await, None);
    assert!(member_ids(&store, general).await.is_empty());
    // The name is free again: a new channel may take it.
    apply(
        &store,
        vec![add_channel(general2, server, "general", alice)],
    )
    .await;
    assert_eq!(
        channel_names(&store, server).await,
        vec![
            ("dev".to_owned(), dev),
            ("general".to_owned(), general2),
            ("random".to_owned(), random)
        ]
    );

    // A deletion projected before the creation leaves a tombstone the creation cannot undo.
    apply(
        &store,
        vec![
            delete_channel(ghost, server),
            add_channel(ghost, server, "ghost", alice),
        ],
    )
    .await;
    assert_eq!(store.channel(ghost).await.expect("channel"), None);
    assert!(
        channel_names(&store, server)
            .await
            .iter()
            .all(|(_, id)| *id != ghost)
    );
    apply(&store, vec![join(alice, server, ghost, 3)]).await;
    assert_eq!(current(&store, alice).await, None);
    assert!(member_ids(&store, ghost).await.is_empty());

    assert!(
        store
            .channels(elsewhere, alice)
            .await
            .expect("channels")
            .is_empty()
    );
    assert_eq!(store.channel(Uuid::now_v7()).await.expect("channel"), None);
}

/// A user is in one channel at a time: joining another moves them (and the member lists);
/// joins and leaves follow the newest version; a leave only takes them out of that channel.
pub async fn one_channel_at_a_time(store: Arc<dyn ReadStore>) {
    let [owner, u1, u2, u3] = ids(4).try_into().expect("four ids");
    let [server, a, b] = ids(3).try_into().expect("three ids");
    apply(
        &store,
        vec![
            public(server, owner, "Rooms", &[]),
            add_channel(a, server, "a", owner),
            add_channel(b, server, "b", owner),
            join(u1, server, a, 10),
            join(u2, server, a, 10),
        ],
    )
    .await;
    assert_eq!(member_ids(&store, a).await, sorted(vec![u1, u2]));
    assert_eq!(current(&store, u1).await, Some(a));

    apply(&store, vec![join(u1, server, b, 11)]).await;
    assert_eq!(current(&store, u1).await, Some(b));
    assert_eq!(member_ids(&store, a).await, vec![u2], "u1 left a for b");
    assert_eq!(member_ids(&store, b).await, vec![u1]);

    apply(&store, vec![join(u1, server, a, 9)]).await;
    assert_eq!(current(&store, u1).await, Some(b), "an older join");
    assert_eq!(member_ids(&store, a).await, vec![u2]);
    apply(&store, vec![leave(u1, a, 12)]).await;
    assert_eq!(current(&store, u1).await, Some(b), "not in a");
    apply(&store, vec![leave(u1, b, 8)]).await;
    assert_eq!(current(&store, u1).await, Some(b), "an older leave");
    apply(&store, vec![leave(u1, b, 13)]).await;
    assert_eq!(current(&store, u1).await, None);
    assert!(member_ids(&store, b).await.is_empty());
    apply(
        &store,
        vec![join(u1, server, b, 11), join(u1, server, a, 12)],
    )
    .await;
    assert_eq!(
        current(&store, u1).await,
        None,
        "joins older than the leave"
    );
    assert!(member_ids(&store, b).await.is_empty());
    apply(&store, vec![join(u1, server, a, 14)]).await;
    assert_eq!(current(&store, u1).await, Some(a));

    // Members are listed by user id and paged.
    apply(&store, vec![join(u3, server, a, 1)]).await;
    let all = sorted(vec![u1, u2, u3]);
    assert_eq!(member_ids(&store, a).await, all);
    let first = store.channel_members(a, None, 2).await.expect("members");
    assert_eq!(first.items, all[..2].to_vec());
    assert_eq!(first.next, Some(all[1].to_string()));
    let rest = store
        .channel_members(a, first.next.as_deref(), 2)
        .await
        .expect("members");
    assert_eq!(rest.items, all[2..].to_vec());
    assert_eq!(rest.next, None);
    assert!(is_invalid_cursor(
        store.channel_members(a, Some("zzz"), 2).await
    ));
    assert!(member_ids(&store, Uuid::now_v7()).await.is_empty());
}

/// Channel messages are numbered from 1 in log order; a channel's summary shows its last seq
/// and time and the viewer's unread count, which read markers lower and never raise.
pub async fn channel_messages_and_unread(store: Arc<dyn ReadStore>) {
    let [alice, bob, carol] = ids(3).try_into().expect("three ids");
    let [server, a, b, quiet] = ids(4).try_into().expect("four ids");
    // Ids in reverse order of sending: numbering follows the log, not the ids.
    let mut m = ids(7);
    m.reverse();
    let mut changes = vec![
        public(server, alice, "Talk", &[]),
        add_channel(a, server, "a", alice),
        add_channel(b, server, "b", alice),
        add_channel(quiet, server, "quiet", alice),
    ];
    for (i, &id) in m[..5].iter().enumerate() {
        let sender = if i % 2 == 0 { alice } else { bob };
        changes.push(say(id, server, a, sender, i as u64));
    }
    changes.push(say(m[5], server, b, carol, 5));
    apply(&store, changes).await;

    let summary = |store: Arc<dyn ReadStore>, viewer: Uuid| async move {
        store
            .channels(server, viewer)
            .await
            .expect("channels")
            .into_iter()
            .map(|c| {
                (
                    c.channel.channel_id,
                    c.last_seq,
                    c.last_message_at,
                    c.unread_count,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        summary(store.clone(), carol).await,
        vec![
            (a, 5, Some(t(14)), 5),
            (b, 1, Some(t(15)), 1),
            (quiet, 0, None, 0)
        ]
    );
    let history = store
        .channel_history(
            carol,
            a,
            HistoryQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .expect("history");
    assert_eq!(
        history
            .items
            .iter()
            .map(|x| (x.message_id, x.seq))
            .collect::<Vec<_>>(),
        vec![(m[4], 5), (m[3], 4), (m[2], 3), (m[1], 2), (m[0], 1)]
    );

    // Bob reads up to the third message: two left. Markers never move back, and a message
    // unknown to the channel (or of another channel) moves nothing.
    apply(&store, vec![mark_read(a, bob, m[2])]).await;
    assert_eq!(summary(store.clone(), bob).await[0].3, 2);
    apply(
        &store,
        vec![
            mark_read(a, bob, m[0]),
            mark_read(a, bob, Uuid::now_v7()),
            mark_read(a, bob, m[5]),
        ],
    )
    .await;
    assert_eq!(
        summary(store.clone(), bob).await,
        vec![
            (a, 5, Some(t(14)), 2),
            (b, 1, Some(t(15)), 1),
            (quiet, 0, None, 0)
        ]
    );
    assert_eq!(
        summary(store.clone(), carol).await[0].3,
        5,
        "markers are per reader"
    );
    apply(&store, vec![mark_read(b, bob, m[5])]).await;
    assert_eq!(summary(store.clone(), bob).await[1].3, 0);

    // A redelivered message keeps its number; the next one is numbered after the last.
    apply(
        &store,
        vec![
            say(m[2], server, a, alice, 2),
            say(m[6], server, a, carol, 6),
            say(m[6], server, a, carol, 6),
        ],
    )
    .await;
    assert_eq!(summary(store.clone(), bob).await[0], (a, 6, Some(t(16)), 3));
    apply(&store, vec![mark_read(a, bob, m[6])]).await;
    assert_eq!(summary(store.clone(), bob).await[0].3, 0);

    let latest = store
        .latest_channel_message(a)
        .await
        .expect("latest")
        .expect("found");
    assert_eq!(
        latest,
        ChannelMessage {
            message_id: m[6],
            server_id: server,
            channel_id: a,
            seq: 6,
            sender_id: carol,
            text: "channel message 6".into(),
            client_msg_id: None,
            sent_at: t(16),
            position: pos(206),
        },
        "no viewer: the idempotency key is not shown"
    );
    assert_eq!(
        store
            .latest_channel_message(b)
            .await
            .expect("latest")
            .map(|x| (x.message_id, x.seq)),
        Some((m[5], 1))
    );
    assert_eq!(
        store.latest_channel_message(quiet).await.expect("latest"),
        None
    );
}

/// Channel history follows [`HistoryQuery`] like direct history; the idempotency key shows
/// only on the viewer's own messages (in history and by id), and finds a message per sender.
pub async fn channel_history_queries(store: Arc<dyn ReadStore>) {
    let [alice, bob] = ids(2).try_into().expect("two ids");
    let [server, a, b] = ids(3).try_into().expect("three ids");
    let m = ids(7);
    let mut changes = vec![
        public(server, alice, "History", &[]),
        add_channel(a, server, "a", alice),
        add_channel(b, server, "b", alice),
    ];
    for (i, &id) in m[..6].iter().enumerate() {
        let sender = if i % 2 == 0 { alice } else { bob };
        changes.push(say(id, server, a, sender, i as u64));
    }
    changes.push(say(m[6], server, b, bob, 6));
    apply(&store, changes).await;
    let read = |store: Arc<dyn ReadStore>, viewer: Uuid, query: HistoryQuery| async move {
        store
            .channel_history(viewer, a, query)
            .await
            .expect("history")
    };
    let seqs = |page: &Page<ChannelMessage>| page.items.iter().map(|x| x.seq).collect::<Vec<_>>();

    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = read(
            store.clone(),
            bob,
            HistoryQuery {
                before,
                limit: 2,
                ..Default::default()
            },
        )
        .await;
        seen.extend(seqs(&page));
        assert!(seen.len() <= 6, "a cursor went back: {seen:?}");
        match page.next {
            Some(next) => {
                assert_eq!(
                    next,
                    page.items.last().expect("items").message_id.to_string()
                );
                before = Some(next.parse().expect("cursor is a message id"));
            }
            None => break,
        }
    }
    assert_eq!(seen, vec![6, 5, 4, 3, 2, 1]);

    let after = read(
        store.clone(),
        bob,
        HistoryQuery {
            after: Some(m[1]),
            limit: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(seqs(&after), vec![3, 4], "oldest first after a message");
    assert_eq!(after.next, Some(m[3].to_string()));
    let since = read(
        store.clone(),
        bob,
        HistoryQuery {
            since: Some(t(14)),
            limit: 10,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(seqs(&since), vec![5, 6], "oldest first since a time");
    assert_eq!(since.next, None);
    let window = read(
        store.clone(),
        bob,
        HistoryQuery {
            before: Some(m[4]),
            since: Some(t(11)),
            limit: 10,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(seqs(&window), vec![4, 3, 2], "newest first with `before`");
    let between = read(
        store.clone(),
        bob,
        HistoryQuery {
            after: Some(m[1]),
            before: Some(m[4]),
            limit: 10,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(seqs(&between), vec![4, 3]);
    let none_since = read(
        store.clone(),
        bob,
        HistoryQuery {
            since: Some(t(100)),
            limit: 10,
            ..Default::default()
        },
    )
    .await;
    assert!(none_since.items.is_empty());

    for query in [
        HistoryQuery {
            before: Some(Uuid::now_v7()),
            limit: 2,
            ..Default::default()
        },
        HistoryQuery {
            after: Some(m[6]),
            limit: 2,
            ..Default::default()
        },
    ] {
        assert!(
            matches!(
                store.channel_history(bob, a, query).await,
                Err(StoreError::UnknownCursor(_))
            ),
            "{query:?}: not a message of this channel"
        );
    }

    // The idempotency key: only on the viewer's own messages.
    let full = |store: Arc<dyn ReadStore>, viewer: Uuid| async move {
        read(
            store,
            viewer,
            HistoryQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .items
    };
    for viewer in [alice, bob, Uuid::now_v7()] {
        for x in full(store.clone(), viewer).await {
            let want = (x.sender_id == viewer).then(|| format!("k{}", x.seq - 1));
            assert_eq!(x.client_msg_id, want, "viewer {viewer}, seq {}", x.seq);
        }
    }
    let first = full(store.clone(), alice)
        .await
        .pop()
        .expect("first message");
    assert_eq!(
        first,
        ChannelMessage {
            message_id: m[0],
            server_id: server,
            channel_id: a,
            seq: 1,
            sender_id: alice,
            text: "channel message 0".into(),
            client_msg_id: Some("k0".into()),
            sent_at: t(10),
            position: pos(200),
        }
    );

    // One message by id, as its sender and as anyone else sees it.
    assert_eq!(
        store.channel_message(alice, m[0]).await.expect("message"),
        Some(first.clone())
    );
    assert_eq!(
        store.channel_message(bob, m[0]).await.expect("message"),
        Some(ChannelMessage {
            client_msg_id: None,
            ..first.clone()
        })
    );
    assert_eq!(
        store
            .channel_message(alice, Uuid::now_v7())
            .await
            .expect("message"),
        None
    );

    // The key finds the sender's message, and only theirs.
    assert_eq!(
        store
            .channel_message_by_client_id(alice, "k0")
            .await
            .expect("lookup"),
        Some(first)
    );
    assert_eq!(
        store
            .channel_message_by_client_id(bob, "k0")
            .await
            .expect("lookup"),
        None
    );
    let found = store
        .channel_message_by_client_id(bob, "k6")
        .await
        .expect("lookup")
        .expect("found");
    assert_eq!(
        (found.message_id, found.channel_id, found.seq),
        (m[6], b, 1)
    );
    assert_eq!(found.client_msg_id.as_deref(), Some("k6"));
    // The same key used by two senders: each finds their own.
    let [mine, theirs] = ids(2).try_into().expect("two ids");
    apply(
        &store,
        vec![
            Change::Community(CommunityChange::AddChannelMessage {
                message_id: mine,
                server_id: server,
                channel_id: b,
                sender_id: alice,
                text: "same key".into(),
                client_msg_id: Some("same".into()),
                sent_at: t(30),
                position: pos(300),
            }),
            Change::Community(CommunityChange::AddChannelMessage {
                message_id: theirs,
                server_id: server,
                channel_id: b,
                sender_id: bob,
                text: "same key".into(),
                client_msg_id: Some("same".into()),
                sent_at: t(31),
                position: pos(301),
            }),
        ],
    )
    .await;
    for (sender, want) in [(alice, mine), (bob, theirs)] {
        assert_eq!(
            store
                .channel_message_by_client_id(sender, "same")
                .await
                .expect("lookup")
                .map(|x| x.message_id),
            Some(want)
        );
    }
    assert_eq!(
        store
            .channel_message_by_client_id(alice, "never")
            .await
            .expect("lookup"),
        None
    );
}

struct Town {
    users: Vec<Uuid>,
    changes: Vec<Change>,
    /// An invitation still pending at the end.
    pending: Uuid,
}

/// A realistic run of community changes: servers, subscriptions, invitations and answers,
/// posts, channels created, joined, switched and deleted, messages and read markers.
fn town() -> Town {
    let [alice, bob, carol, dave] = ids(4).try_into().expect("four ids");
    let [open, closed] = ids(2).try_into().expect("two ids");
    let [lobby, games, back, doomed] = ids(4).try_into().expect("four ids");
    let [to_carol, to_dave, dave_to_open] = ids(3).try_into().expect("three ids");
    let posts = ids(3);
    let m = ids(6);
    let changes = vec![
        add_server(
            open,
            alice,
            "Open Town",
            &["town", "chat"],
            Visibility::Public,
            t(1),
        ),
        add_server(
            closed,
            bob,
            "Closed Club",
            &["club"],
            Visibility::Private,
            t(1),
        ),
        subscription(open, bob, true, t(2), 2),
        subscription(open, carol, true, t(3), 3),
        invite(to_carol, closed, bob, carol, t(3)),
        invite(to_dave, closed, bob, dave, t(4)),
        answer(to_carol, true, t(5)),
        subscription(closed, carol, true, t(5), 6),
        answer(to_dave, false, t(6)),
        invite(dave_to_open, open, carol, dave, t(7)),
        post(posts[0], open, alice, 0),
        post(posts[1], closed, bob, 1),
        post(posts[2], open, alice, 2),
        add_channel(lobby, open, "lobby", alice),
        add_channel(games, open, "games", alice),
        add_channel(back, closed, "back-room", bob),
        add_channel(doomed, open, "doomed", alice),
        join(bob, open, lobby, 10),
        join(carol, open, lobby, 10),
        join(dave, open, doomed, 10),
        say(m[0], open, lobby, bob, 0),
        say(m[1], open, lobby, carol, 1),
        say(m[2], open, lobby, bob, 2),
        mark_read(lobby, carol, m[1]),
        leave(carol, lobby, 11),
        join(carol, closed, back, 12),
        say(m[3], closed, back, carol, 3),
        say(m[4], open, doomed, dave, 4),
        delete_channel(doomed, open),
        join(bob, open, games, 11),
        say(m[5], open, games, bob, 5),
        mark_read(lobby, carol, m[0]),
        subscription(open, carol, false, t(20), 20),
        subscription(open, carol, true, t(15), 15),
    ];
    Town {
        users: vec![alice, bob, carol, dave],
        changes,
        pending: dave_to_open,
    }
}

/// Applying any prefix of the community changes again, each twice in a row, or one at a time
/// into another store, changes nothing.
pub async fn community_reapplying_is_idempotent(
    store: Arc<dyn ReadStore>,
    fresh: Arc<dyn ReadStore>,
) {
    let Town {
        users,
        changes,
        pending: dave_to_open,
    } = town();
    store
        .apply(P, changes.clone(), vec![pos(40)])
        .await
        .expect("apply");
    let once = snapshot(store.as_ref(), &users).await;
    assert!(
        once.contains("Open Town") && once.contains("channel message 5"),
        "the snapshot covers servers and channel history: {once}"
    );
    assert!(
        once.contains(&dave_to_open.to_string()),
        "the snapshot covers pending invitations: {once}"
    );
    for cut in [1, 8, 17, 26, changes.len()] {
        store
            .apply(P, changes[..cut].to_vec(), vec![pos(40)])
            .await
            .expect("again");
        assert_eq!(
            snapshot(store.as_ref(), &users).await,
            once,
            "re-applying {cut} changes"
        );
    }
    let doubled: Vec<Change> = changes
        .iter()
        .flat_map(|c| [c.clone(), c.clone()])
        .collect();
    store
        .apply(P, doubled, vec![pos(40)])
        .await
        .expect("doubled");
    assert_eq!(
        snapshot(store.as_ref(), &users).await,
        once,
        "duplicates within a batch"
    );
    for change in &changes {
        fresh
            .apply(P, vec![change.clone()], vec![])
            .await
            .expect("apply");
        fresh
            .apply(P, vec![change.clone()], vec![])
            .await
            .expect("duplicate");
    }
    assert_eq!(snapshot(fresh.as_ref(), &users).await, once);
}
