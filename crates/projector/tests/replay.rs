//! The projector on the embedded adapters: read models stay exact under duplicate delivery, a
//! crash between apply and checkpoint, and a full replay into an empty store, also when the log
//! mixes schema versions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use missive_events::{DeleteScope, Envelope, Event, Presence, codec, ids};
use missive_log::sqlite::{Durability, SqliteLog};
use missive_log::{EventLog, Position, Record};
use missive_projector::{Projector, READ_MODELS, project_batch};
use missive_store::contract::snapshot;
use missive_store::sqlite::SqliteStore;
use missive_store::{FriendshipState, ReadStore};
use tokio::sync::watch;
use uuid::Uuid;

struct World {
    alice: Uuid,
    bob: Uuid,
    carol: Uuid,
}

/// Ids of the community part of the history.
const SERVER: Uuid = Uuid::from_u128(0x5e);
const GENERAL: Uuid = Uuid::from_u128(0xc1);
const RANDOM: Uuid = Uuid::from_u128(0xc2);

/// A server of alice's: bob subscribes then leaves; carol is invited and accepts; three posts;
/// two channels, one deleted while carol is in it; channel messages and a read marker; and a
/// v1 notification among them.
fn community_history(w: &World, env: &impl Fn(Event, Uuid) -> Envelope) -> Vec<Record> {
    let invitation = Uuid::now_v7();
    let mut events = vec![
        (
            Event::ServerCreated {
                server_id: SERVER,
                owner_id: w.alice,
                name: "Plaza".into(),
                tags: vec!["town".into()],
                visibility: missive_events::Visibility::Public,
            },
            w.alice,
        ),
        (
            Event::ServerSubscribed {
                server_id: SERVER,
                user_id: w.bob,
            },
            w.bob,
        ),
        (
            Event::ServerInvitationSent {
                invitation_id: invitation,
                server_id: SERVER,
                inviter_id: w.alice,
                invitee_id: w.carol,
            },
            w.alice,
        ),
        (
            Event::ServerSubscribed {
                server_id: SERVER,
                user_id: w.carol,
            },
            w.carol,
        ),
        (
            Event::ServerInvitationAnswered {
                invitation_id: invitation,
                server_id: SERVER,
                invitee_id: w.carol,
                outcome: missive_events::InvitationOutcome::Accepted,
            },
            w.carol,
        ),
    ];
    for (channel, name) in [(GENERAL, "general"), (RANDOM, "random")] {
        events.push((
            Event::ChannelCreated {
                channel_id: channel,
                server_id: SERVER,
                name: name.into(),
                created_by: w.alice,
            },
            w.alice,
        ));
    }
    for n in 0..3 {
        events.push((
            Event::PostPublished {
                post_id: Uuid::now_v7(),
                server_id: SERVER,
                author_id: w.alice,
                content: format!("post {n}"),
                tags: Vec::new(),
            },
            w.alice,
        ));
    }
    for user in [w.bob, w.carol] {
        events.push((
            Event::ChannelJoined {
                user_id: user,
                server_id: SERVER,
                channel_id: GENERAL,
            },
            user,
        ));
    }
    let mut sent = Vec::new();
    for n in 0..4 {
        let id = Uuid::now_v7();
        sent.push(id);
        events.push((
            Event::ChannelMessageSent {
                message_id: id,
                server_id: SERVER,
                channel_id: GENERAL,
                sender_id: w.carol,
                text: format!("channel {n}"),
                client_msg_id: (n == 0).then(|| "c-0".to_owned()),
            },
            w.carol,
        ));
    }
    events.push((
        Event::ChannelMessagesRead {
            server_id: SERVER,
            channel_id: GENERAL,
            reader_id: w.bob,
            up_to: sent[1],
        },
        w.bob,
    ));
    events.push((
        Event::ChannelLeft {
            user_id: w.carol,
            server_id: SERVER,
            channel_id: GENERAL,
            reason: missive_events::ChannelLeaveReason::Switched,
        },
        w.carol,
    ));
    events.push((
        Event::ChannelJoined {
            user_id: w.carol,
            server_id: SERVER,
            channel_id: RANDOM,
        },
        w.carol,
    ));
    events.push((
        Event::ChannelDeleted {
            channel_id: RANDOM,
            server_id: SERVER,
            deleted_by: w.alice,
        },
        w.alice,
    ));
    events.push((
        Event::ChannelLeft {
            user_id: w.bob,
            server_id: SERVER,
            channel_id: GENERAL,
            reason: missive_events::ChannelLeaveReason::Unsubscribed,
        },
        w.bob,
    ));
    events.push((
        Event::ServerUnsubscribed {
            server_id: SERVER,
            user_id: w.bob,
        },
        w.bob,
    ));
    let mut records: Vec<Record> = events
        .into_iter()
        .map(|(e, actor)| record(&env(e, actor), None))
        .collect();
    let notification = Event::NotificationRequested {
        user_id: w.bob,
        kind: missive_events::NotificationKind::Message,
        subject_id: Uuid::now_v7(),
        item_id: Uuid::now_v7(),
        from_id: w.alice,
    };
    records.push(record(&env(notification, w.alice), Some(1)));
    records
}

fn record(envelope: &Envelope, version: Option<u32>) -> Record {
    let payload = match version {
        Some(v) => codec::encode_with_version(envelope, v).expect("encode old version"),
        None => codec::encode(envelope).expect("encode"),
    };
    Record {
        stream: envelope.stream(),
        key: envelope.partition_key(),
        event_type: envelope.event_type(),
        schema_version: version
            .unwrap_or_else(|| codec::schema_version(envelope.event_type()).expect("known")),
        payload,
    }
}

/// A log with registrations, friendships, messages in both directions (some written with the
/// old MessageSent v1 schema), reads, deletes and presence.
async fn write_history(log: &dyn EventLog) -> World {
    let w = World {
        alice: Uuid::now_v7(),
        bob: Uuid::now_v7(),
        carol: Uuid::now_v7(),
    };
    let env = |event: Event, actor: Uuid| Envelope::new(event, actor, Uuid::now_v7(), Utc::now());
    let mut records = Vec::new();
    for (id, name) in [(w.alice, "alice"), (w.bob, "bob"), (w.carol, "carol")] {
        let e = Event::UserRegistered {
            user_id: id,
            username: name.into(),
            display_name: name.into(),
        };
        records.push(record(&env(e, id), None));
    }
    for (a, b) in [(w.alice, w.bob), (w.carol, w.alice)] {
        records.push(record(
            &env(
                Event::FriendRequested {
                    requester_id: a,
                    addressee_id: b,
                },
                a,
            ),
            None,
        ));
        records.push(record(
            &env(
                Event::FriendRequestAccepted {
                    requester_id: a,
                    addressee_id: b,
                },
                b,
            ),
            None,
        ));
    }
    let conv = ids::direct_conversation_id(w.alice, w.bob);
    let mut ids_sent = Vec::new();
    for n in 0..30 {
        let (s, r) = if n % 3 == 0 {
            (w.bob, w.alice)
        } else {
            (w.alice, w.bob)
        };
        let id = Uuid::now_v7();
        ids_sent.push(id);
        let e = Event::MessageSent {
            message_id: id,
            conversation_id: conv,
            sender_id: s,
            recipient_id: r,
            text: format!("message {n}"),
            client_msg_id: None,
        };
        // Every other message is in the old v1 schema, as if written before v2 existed.
        records.push(record(&env(e, s), (n % 2 == 0).then_some(1)));
    }
    records.push(record(
        &env(
            Event::MessagesRead {
                conversation_id: conv,
                reader_id: w.bob,
                up_to: ids_sent[10],
            },
            w.bob,
        ),
        None,
    ));
    records.push(record(
        &env(
            Event::MessageDeleted {
                message_id: ids_sent[20],
                conversation_id: conv,
                deleted_by: w.alice,
                scope: DeleteScope::ForEveryone,
            },
            w.alice,
        ),
        None,
    ));
    records.push(record(
        &env(
            Event::MessageDeleted {
                message_id: ids_sent[25],
                conversation_id: conv,
                deleted_by: w.bob,
                scope: DeleteScope::ForMe,
            },
            w.bob,
        ),
        None,
    ));
    records.push(record(
        &env(
            Event::PresenceChanged {
                user_id: w.carol,
                status: Presence::Online,
            },
            w.carol,
        ),
        None,
    ));
    records.push(record(
        &env(
            Event::FriendshipRemoved {
                removed_by: w.carol,
                other_id: w.alice,
                reason: missive_events::RemovalReason::Unfriended,
            },
            w.carol,
        ),
        None,
    ));
    records.push(record(
        &env(
            Event::ProfileUpdated {
                user_id: w.bob,
                display_name: "Bobby".into(),
            },
            w.bob,
        ),
        None,
    ));
    records.extend(community_history(&w, &env));
    // Appended in several calls so that batches split the history.
    for chunk in records.chunks(7) {
        log.append(chunk.to_vec()).await.expect("append");
    }
    w
}

async fn run_until_caught_up(log: Arc<dyn EventLog>, store: Arc<dyn ReadStore>, batch: usize) {
    let projector = Projector::new(log.clone(), store, READ_MODELS).with_batch_size(batch);
    let mut progress = projector.progress();
    let (stop, mut stop_rx) = watch::channel(false);
    let task = tokio::spawn(projector.run(async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    let end = log.end_positions().await.expect("end")[0];
    let last = Position::new(end.partition, end.offset - 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    tokio::time::timeout_at(deadline.into(), progress.wait_for(|p| p.has_applied(last)))
        .await
        .expect("projector caught up in time")
        .expect("progress");
    stop.send(true).expect("stop");
    task.await.expect("join").expect("projector ran cleanly");
}

struct Setup {
    _dir: tempfile::TempDir,
    log: Arc<SqliteLog>,
    dir: std::path::PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_owned();
    let log = Arc::new(SqliteLog::open(&path.join("log.db"), Durability::Normal).expect("log"));
    Setup {
        _dir: dir,
        log,
        dir: path,
    }
}

fn store(s: &Setup, name: &str) -> Arc<SqliteStore> {
    Arc::new(SqliteStore::open(&s.dir.join(name)).expect("store"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_a_mixed_version_log_exactly() {
    let s = setup();
    let w = write_history(s.log.as_ref()).await;
    let live = store(&s, "live.db");
    run_until_caught_up(s.log.clone(), live.clone(), 5).await;

    let convs = live
        .conversations(w.alice, None, 10)
        .await
        .expect("conversations");
    // Bob sent 10 of the 30 (n % 3 == 0); alice read none of them.
    assert_eq!(convs.items[0].unread_count, 10);
    let bobs = live
        .conversations(w.bob, None, 10)
        .await
        .expect("conversations");
    // Alice sent 20; bob read up to message 10 (7 of alice's at n=1,2,4,5,7,8,10), one of the
    // rest was deleted for everyone (n=20) and one hidden for bob (n=25): 20 - 7 - 2 = 11.
    assert_eq!(bobs.items[0].unread_count, 11);
    assert_eq!(
        live.friendship(w.alice, w.bob).await.expect("f"),
        FriendshipState::Friends
    );
    assert_eq!(
        live.friendship(w.alice, w.carol).await.expect("f"),
        FriendshipState::None
    );
    assert_eq!(
        live.user(w.bob)
            .await
            .expect("u")
            .expect("bob")
            .display_name,
        "Bobby"
    );
    assert!(live.user(w.carol).await.expect("u").expect("carol").online);

    // Communities: carol's channel was deleted under her; bob left; general has 4 messages,
    // bob read 2 of them before leaving.
    assert_eq!(
        live.current_channel(w.carol).await.expect("channel"),
        None,
        "a deleted channel is nobody's"
    );
    assert_eq!(live.current_channel(w.bob).await.expect("channel"), None);
    let bobs_servers = live.user_servers(w.bob, None, 10).await.expect("servers");
    assert!(bobs_servers.items.is_empty(), "bob unsubscribed");
    let carols = live.user_servers(w.carol, None, 10).await.expect("servers");
    assert_eq!(carols.items.len(), 1);
    let channels = live.channels(SERVER, w.bob).await.expect("channels");
    assert_eq!(channels.len(), 1, "random was deleted");
    assert_eq!(channels[0].channel.channel_id, GENERAL);
    assert_eq!(channels[0].last_seq, 4);
    assert_eq!(channels[0].unread_count, 2);
    let posts = live.posts(SERVER, None, 10).await.expect("posts");
    assert_eq!(
        posts
            .items
            .iter()
            .map(|p| p.content.as_str())
            .collect::<Vec<_>>(),
        vec!["post 2", "post 1", "post 0"]
    );
    assert!(
        live.pending_invitations(w.carol, None, 10)
            .await
            .expect("invitations")
            .items
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_replay_and_duplicate_delivery_leave_read_models_identical() {
    let s = setup();
    let w = write_history(s.log.as_ref()).await;
    let users = [w.alice, w.bob, w.carol];

    let live = store(&s, "live.db");
    run_until_caught_up(s.log.clone(), live.clone(), 1000).await;
    let expected = snapshot(live.as_ref(), &users).await;

    // A full replay into an empty store, in small batches, builds the same read models.
    let replayed = store(&s, "replayed.db");
    run_until_caught_up(s.log.clone(), replayed.clone(), 3).await;
    assert_eq!(snapshot(replayed.as_ref(), &users).await, expected);

    // Duplicate delivery: every record applied again, in batches of another size.
    let all = s.log.read(0, 10_000).expect("read");
    for chunk in all.chunks(4) {
        let batch = project_batch(READ_MODELS, chunk);
        live.apply(READ_MODELS, batch.changes, batch.checkpoint)
            .await
            .expect("reapply");
    }
    assert_eq!(snapshot(live.as_ref(), &users).await, expected);

    // A crash between apply and checkpoint: the changes of the last batches are in the store
    // but the checkpoint is older, so the restarted projector delivers them again. (The store
    // never moves a checkpoint back itself, so the test rewinds it in the file.)
    let batch = project_batch(READ_MODELS, &all[..20]);
    replayed
        .apply(READ_MODELS, batch.changes, Vec::new())
        .await
        .expect("apply without checkpoint");
    rusqlite::Connection::open(s.dir.join("replayed.db"))
        .and_then(|c| c.execute("UPDATE checkpoints SET next_offset = 10", []))
        .expect("rewind checkpoint");
    assert_eq!(
        replayed.checkpoints(READ_MODELS).await.expect("cp"),
        vec![Position::new(0, 10)]
    );
    run_until_caught_up(s.log.clone(), replayed.clone(), 7).await;
    assert_eq!(snapshot(replayed.as_ref(), &users).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_record_becomes_a_dead_letter_and_the_projector_moves_on() {
    let s = setup();
    let w = write_history(s.log.as_ref()).await;
    let poison = s
        .log
        .append(vec![Record {
            stream: missive_events::Stream::Messages,
            key: "garbage".into(),
            event_type: "MessageSent",
            schema_version: 2,
            payload: vec![0xC3, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3],
        }])
        .await
        .expect("append")[0];
    let before = missive_telemetry::metrics()
        .projector_poison
        .with_label_values(&[READ_MODELS])
        .get();
    let live = store(&s, "live.db");
    run_until_caught_up(s.log.clone(), live.clone(), 100).await;
    let after = missive_telemetry::metrics()
        .projector_poison
        .with_label_values(&[READ_MODELS])
        .get();
    assert_eq!(after - before, 1);
    let letters = s.log.dead_letters().await.expect("dead letters");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].source, poison);
    assert_eq!(letters[0].projection, READ_MODELS);
    assert_eq!(letters[0].key, "garbage");
    assert!(
        letters[0].error.contains("fingerprint"),
        "{}",
        letters[0].error
    );
    assert_eq!(
        live.conversations(w.alice, None, 10)
            .await
            .expect("c")
            .items[0]
            .unread_count,
        10
    );
}

/// A real SQLite store that is "down" for its first few applies and refuses any batch holding
/// one given message, as a store whose invariant that message breaks would.
struct Faulty {
    inner: Arc<SqliteStore>,
    refuse: Uuid,
    down_for: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl ReadStore for Faulty {
    async fn apply(
        &self,
        projection: &str,
        changes: Vec<missive_store::Change>,
        checkpoint: Vec<Position>,
    ) -> missive_store::Result<()> {
        use std::sync::atomic::Ordering;
        if self
            .down_for
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(missive_store::StoreError::Unavailable(
                "test: store down".into(),
            ));
        }
        let refused = changes.iter().any(|c| {
            matches!(c, missive_store::Change::AddMessage { message_id, .. } if *message_id == self.refuse)
        });
        if refused {
            return Err(missive_store::StoreError::Corrupt("test: refused".into()));
        }
        self.inner.apply(projection, changes, checkpoint).await
    }
    async fn checkpoints(&self, p: &str) -> missive_store::Result<Vec<Position>> {
        self.inner.checkpoints(p).await
    }
    async fn tables(&self) -> missive_store::Result<Vec<String>> {
        self.inner.tables().await
    }
    async fn table_rows(&self, table: &str) -> missive_store::Result<Vec<String>> {
        self.inner.table_rows(table).await
    }
    async fn user(&self, id: Uuid) -> missive_store::Result<Option<missive_store::User>> {
        self.inner.user(id).await
    }
    async fn user_by_username(
        &self,
        n: &str,
    ) -> missive_store::Result<Option<missive_store::User>> {
        self.inner.user_by_username(n).await
    }
    async fn friendship(&self, a: Uuid, b: Uuid) -> missive_store::Result<FriendshipState> {
        self.inner.friendship(a, b).await
    }
    async fn friends(&self, u: Uuid) -> missive_store::Result<Vec<missive_store::FriendEntry>> {
        self.inner.friends(u).await
    }
    async fn conversations(
        &self,
        u: Uuid,
        c: Option<&str>,
        l: usize,
    ) -> missive_store::Result<missive_store::Page<missive_store::Conversation>> {
        self.inner.conversations(u, c, l).await
    }
    async fn participants(&self, c: Uuid) -> missive_store::Result<Option<(Uuid, Uuid)>> {
        self.inner.participants(c).await
    }
    async fn history(
        &self,
        v: Uuid,
        c: Uuid,
        q: missive_store::HistoryQuery,
    ) -> missive_store::Result<missive_store::Page<missive_store::Message>> {
        self.inner.history(v, c, q).await
    }
    async fn messages_since(
        &self,
        u: Uuid,
        s: chrono::DateTime<Utc>,
        a: Option<&str>,
        l: usize,
    ) -> missive_store::Result<missive_store::FeedPage> {
        self.inner.messages_since(u, s, a, l).await
    }
    async fn message(
        &self,
        v: Uuid,
        m: Uuid,
    ) -> missive_store::Result<Option<missive_store::Message>> {
        self.inner.message(v, m).await
    }
    async fn message_by_client_id(
        &self,
        s: Uuid,
        c: &str,
    ) -> missive_store::Result<Option<missive_store::Message>> {
        self.inner.message_by_client_id(s, c).await
    }
    async fn pending(
        &self,
        u: Uuid,
        a: Option<&str>,
        l: usize,
    ) -> missive_store::Result<missive_store::Page<missive_store::Message>> {
        self.inner.pending(u, a, l).await
    }
    async fn online_users(&self) -> missive_store::Result<Vec<Uuid>> {
        self.inner.online_users().await
    }
    async fn restricted_accounts(
        &self,
    ) -> missive_store::Result<Vec<(Uuid, missive_store::AccountStatus)>> {
        self.inner.restricted_accounts().await
    }
    async fn server(&self, id: Uuid) -> missive_store::Result<Option<missive_store::Server>> {
        self.inner.server(id).await
    }
    async fn server_by_name(
        &self,
        n: &str,
    ) -> missive_store::Result<Option<missive_store::Server>> {
        self.inner.server_by_name(n).await
    }
    async fn search_servers(
        &self,
        q: &missive_store::ServerSearch,
        a: Option<&str>,
        l: usize,
    ) -> missive_store::Result<missive_store::Page<missive_store::Server>> {
        self.inner.search_servers(q, a, l).await
    }
    async fn user_servers(
        &self,
        u: Uuid,
        a: Option<&str>,
        l: usize,
    ) -> missive_store::Result<missive_store::Page<missive_store::UserServer>> {
        self.inner.user_servers(u, a, l).await
    }
    async fn membership(
        &self,
        s: Uuid,
        u: Uuid,
    ) -> missive_store::Result<Option<missive_store::ServerRole>> {
        self.inner.membership(s, u).await
    }
    async fn invitation(
        &self,
        i: Uuid,
    ) -> missive_store::Result<Option<missive_store::Invitation>> {
        self.inner.invitation(i).await
    }
    async fn pending_invitation(
        &self,
        s: Uuid,
        u: Uuid,
    ) -> missive_store::Result<Option<missive_store::Invitation>> {
        self.inner.pending_invitation(s, u).await
    }
    async fn pending_invitations(
        &self,
        u: Uuid,
        a: Option<&str>,
        l: usize,
    ) -> missive_store::Result<missive_store::Page<missive_store::Invitation>> {
        self.inner.pending_invitations(u, a, l).await
    }
    async fn posts(
        &self,
        s: Uuid,
        b: Option<&str>,
        l: usize,
    ) -> missive_store::Result<missive_store::Page<missive_store::Post>> {
        self.inner.posts(s, b, l).await
    }
    async fn channels(
        &self,
        s: Uuid,
        v: Uuid,
    ) -> missive_store::Result<Vec<missive_store::ChannelSummary>> {
        self.inner.channels(s, v).await
    }
    async fn channel(&self, c: Uuid) -> missive_store::Result<Option<missive_store::Channel>> {
        self.inner.channel(c).await
    }
    async fn current_channel(
        &self,
        u: Uuid,
    ) -> missive_store::Result<Option<missive_store::Channel>> {
        self.inner.current_channel(u).await
    }
    async fn channel_members(
        &self,
        c: Uuid,
        a: Option<&str>,
        l: usize,
    ) -> missive_store::Result<missive_store::Page<Uuid>> {
        self.inner.channel_members(c, a, l).await
    }
    async fn channel_history(
        &self,
        v: Uuid,
        c: Uuid,
        q: missive_store::HistoryQuery,
    ) -> missive_store::Result<missive_store::Page<missive_store::ChannelMessage>> {
        self.inner.channel_history(v, c, q).await
    }
    async fn channel_message_by_client_id(
        &self,
        s: Uuid,
        k: &str,
    ) -> missive_store::Result<Option<missive_store::ChannelMessage>> {
        self.inner.channel_message_by_client_id(s, k).await
    }
    async fn channel_message(
        &self,
        v: Uuid,
        m: Uuid,
    ) -> missive_store::Result<Option<missive_store::ChannelMessage>> {
        self.inner.channel_message(v, m).await
    }
    async fn latest_channel_message(
        &self,
        c: Uuid,
    ) -> missive_store::Result<Option<missive_store::ChannelMessage>> {
        self.inner.latest_channel_message(c).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_store_errors_are_retried_and_a_refused_event_becomes_a_dead_letter() {
    let s = setup();
    let w = write_history(s.log.as_ref()).await;
    let conv = ids::direct_conversation_id(w.alice, w.bob);
    let send = |id: Uuid| {
        let e = Event::MessageSent {
            message_id: id,
            conversation_id: conv,
            sender_id: w.alice,
            recipient_id: w.bob,
            text: "late".into(),
            client_msg_id: None,
        };
        record(&Envelope::new(e, w.alice, Uuid::now_v7(), Utc::now()), None)
    };
    let (poison, after) = (Uuid::now_v7(), Uuid::now_v7());
    let positions = s
        .log
        .append(vec![send(poison), send(after)])
        .await
        .expect("append");
    let faulty = Arc::new(Faulty {
        inner: store(&s, "live.db"),
        refuse: poison,
        down_for: std::sync::atomic::AtomicUsize::new(3),
    });
    run_until_caught_up(s.log.clone(), faulty.clone(), 1000).await;

    assert_eq!(
        faulty.down_for.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "retried through the outage"
    );
    let letters = s.log.dead_letters().await.expect("dead letters");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].source, positions[0]);
    assert!(letters[0].error.contains("refused"), "{}", letters[0].error);
    assert!(faulty.message(w.bob, poison).await.expect("read").is_none());
    assert!(
        faulty.message(w.bob, after).await.expect("read").is_some(),
        "the events around the refused one are applied"
    );
    assert_eq!(
        faulty.checkpoints(READ_MODELS).await.expect("checkpoints"),
        vec![Position::new(0, positions[1].offset + 1)]
    );
}
