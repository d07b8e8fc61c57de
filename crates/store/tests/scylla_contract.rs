//! The ReadStore contract suite on the Scylla adapter, against a real ScyllaDB or Cassandra node:
//! runs when `MISSIVE_TEST_SCYLLA=host:port` is set, each test on stores in keyspaces of its own
//! (migrated first, dropped afterwards even when the test fails); otherwise each test prints
//! that it was skipped.

#![cfg(feature = "scylla")]

use std::future::Future;
use std::sync::Arc;

use missive_store::ReadStore;
use missive_store::scylla::{
    Replication, ScyllaConfig, ScyllaStore, connect, drop_keyspace, migrate,
};

/// The test node's `host:port`, or `None` (with a notice) when none is set.
fn test_node() -> Option<String> {
    match std::env::var("MISSIVE_TEST_SCYLLA") {
        Ok(node) if !node.is_empty() => Some(node),
        _ => {
            eprintln!(
                "SKIPPED: the Scylla contract suite needs a ScyllaDB or Cassandra node; set \
                 MISSIVE_TEST_SCYLLA=host:port to run it"
            );
            None
        }
    }
}

/// A config for a fresh keyspace on `node`: `missive_test_<uuid>` (45 characters, lower-case),
/// replicated once.
fn fresh_config(node: &str) -> ScyllaConfig {
    let keyspace = format!("missive_test_{}", uuid::Uuid::now_v7().simple());
    let mut config = ScyllaConfig::parse(&format!("scylla://{node}/{keyspace}")).expect("test URL");
    config.replication = Replication::Simple(1);
    config
}

/// Creates and migrates the config's keyspace, then opens the store on it.
async fn open_migrated(config: &ScyllaConfig) -> Arc<dyn ReadStore> {
    let session = connect(config).await.expect("connect");
    migrate(&session, config).await.expect("migrate");
    Arc::new(ScyllaStore::open(config).await.expect("open the store"))
}

/// Drops the keyspaces of `configs` (those that exist).
async fn drop_keyspaces(configs: &[ScyllaConfig]) -> Result<(), String> {
    let session = connect(&configs[0]).await.map_err(|e| e.to_string())?;
    for config in configs {
        drop_keyspace(&session, &config.keyspace)
            .await
            .map_err(|e| format!("{}: {e}", config.keyspace))?;
    }
    Ok(())
}

/// Runs `test` on `N` fresh stores, each in its own migrated keyspace, when a test node is
/// set (see [`with_keyspaces`]).
async fn with_stores<const N: usize, F, Fut>(test: F)
where
    F: FnOnce([Arc<dyn ReadStore>; N]) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    with_keyspaces(|configs: [ScyllaConfig; N]| async move {
        let mut stores = Vec::with_capacity(N);
        for config in &configs {
            stores.push(open_migrated(config).await);
        }
        let stores: [Arc<dyn ReadStore>; N] = stores.try_into().ok().expect("one store each");
        test(stores).await;
    })
    .await
}

/// Runs `test` with the configs of `N` fresh keyspaces when a test node is set. The keyspaces
/// are dropped afterwards, also when the test panics (it runs in its own task); the panic is
/// then passed on.
async fn with_keyspaces<const N: usize, F, Fut>(test: F)
where
    F: FnOnce([ScyllaConfig; N]) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(node) = test_node() else { return };
    let configs: [ScyllaConfig; N] = std::array::from_fn(|_| fresh_config(&node));
    let outcome = tokio::spawn(test(configs.clone())).await;
    let dropped = drop_keyspaces(&configs).await;
    match outcome {
        Ok(()) => dropped.expect("drop the test keyspaces"),
        Err(error) => {
            if let Err(why) = dropped {
                eprintln!("could not drop the test keyspaces after the failure: {why}");
            }
            match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(error) => panic!("the test task did not finish: {error}"),
            }
        }
    }
}

/// Named `scylla_contract::*` so that the nextest filter `test(/scylla/)` (.config/nextest.toml)
/// shows each test's SKIPPED notice.
mod scylla_contract {
    use missive_store::contract;

    use super::with_stores;

    macro_rules! contract_test {
        ($name:ident) => {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                with_stores(|[store]| contract::$name(store)).await;
            }
        };
    }

    contract_test!(users_profiles_and_presence);
    contract_test!(account_standing);
    contract_test!(freed_usernames_in_any_order);
    contract_test!(friendships);
    contract_test!(messages_unread_and_deletes);
    contract_test!(pagination);
    contract_test!(client_message_ids);
    contract_test!(late_projected_messages_are_not_skipped);
    contract_test!(pending_messages);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reapplying_is_idempotent() {
        with_stores(|[store, fresh]| contract::reapplying_is_idempotent(store, fresh)).await;
    }

    macro_rules! community_test {
        ($name:ident) => {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                with_stores(|[store]| contract::communities::$name(store)).await;
            }
        };
    }

    community_test!(servers_and_names);
    community_test!(server_search);
    community_test!(user_servers_and_subscriptions);
    community_test!(invitations);
    community_test!(posts_newest_first);
    community_test!(channels_and_tombstones);
    community_test!(one_channel_at_a_time);
    community_test!(channel_messages_and_unread);
    community_test!(channel_history_queries);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn community_reapplying_is_idempotent() {
        with_stores(|[store, fresh]| {
            contract::communities::community_reapplying_is_idempotent(store, fresh)
        })
        .await;
    }
}

/// A message batch that failed half-way (a write timeout: logged batches are atomic but not
/// isolated, and the batch log applies the rest later) leaves only some of its rows visible.
/// Re-applying must keep the message's number and give the next message the next one.
mod scylla_partial_batches {
    use chrono::{TimeZone, Utc};
    use missive_log::Position;
    use missive_store::scylla::{ScyllaConfig, connect};
    use missive_store::{Change, HistoryQuery, ReadStore};
    use uuid::Uuid;

    use super::{open_migrated, with_keyspaces};

    pub(super) const BUCKET_MICROS: i64 = 864_000_000_000;

    pub(super) struct Scene {
        pub(super) alice: Uuid,
        pub(super) bob: Uuid,
        pub(super) conv: Uuid,
        pub(super) m1: Uuid,
        pub(super) m2: Uuid,
        pub(super) sent_at_us: i64,
    }

    impl Scene {
        pub(super) fn new() -> Self {
            Scene {
                alice: Uuid::now_v7(),
                bob: Uuid::now_v7(),
                conv: Uuid::now_v7(),
                m1: Uuid::now_v7(),
                m2: Uuid::now_v7(),
                sent_at_us: 1_800_000_000_000_000,
            }
        }

        pub(super) fn message(&self, id: Uuid, offset: u64) -> Change {
            Change::AddMessage {
                message_id: id,
                conversation_id: self.conv,
                sender_id: self.alice,
                recipient_id: self.bob,
                text: format!("offset {offset}"),
                client_msg_id: Some(format!("key-{offset}")),
                sent_at: Utc
                    .timestamp_micros(self.sent_at_us + offset as i64)
                    .single()
                    .expect("time"),
                position: Position::new(0, offset),
            }
        }

        pub(super) async fn add_users(&self, store: &dyn ReadStore) {
            let users =
                [(self.alice, "alice"), (self.bob, "bob")].map(|(id, name)| Change::AddUser {
                    user_id: id,
                    username: format!("{name}-{id}"),
                    display_name: name.into(),
                    registered_at: Utc
                        .timestamp_micros(self.sent_at_us)
                        .single()
                        .expect("time"),
                });
            store
                .apply("p", users.to_vec(), vec![])
                .await
                .expect("users");
        }

        /// Applies m1 and m2 (as a redelivery after the failure) and checks their numbers,
        /// history, unread count, idempotency keys, the feed and what is pending.
        async fn check(&self, store: &dyn ReadStore) {
            self.add_users(store).await;
            store
                .apply(
                    "p",
                    vec![self.message(self.m1, 10), self.message(self.m2, 11)],
                    vec![Position::new(0, 12)],
                )
                .await
                .expect("apply");
            let history = store
                .history(
                    self.bob,
                    self.conv,
                    HistoryQuery {
                        limit: 10,
                        ..Default::default()
                    },
                )
                .await
                .expect("history");
            let got: Vec<(Uuid, u64)> = history
                .items
                .iter()
                .map(|m| (m.message_id, m.seq))
                .collect();
            assert_eq!(got, vec![(self.m2, 2), (self.m1, 1)]);
            let m1 = store
                .message(self.bob, self.m1)
                .await
                .expect("m1")
                .expect("visible");
            assert_eq!(
                (m1.seq, m1.text.as_deref()),
                (1, Some("offset 10")),
                "m1 keeps its number and content"
            );
            let found = store
                .message_by_client_id(self.alice, "key-10")
                .await
                .expect("key")
                .expect("found");
            assert_eq!(
                found.message_id, self.m1,
                "the key of the half-written batch"
            );
            assert!(
                store
                    .participants(self.conv)
                    .await
                    .expect("participants")
                    .is_some()
            );
            let feed = store
                .messages_since(self.bob, chrono::DateTime::<Utc>::MIN_UTC, None, 10)
                .await
                .expect("feed");
            assert_eq!(
                feed.items.iter().map(|m| m.message_id).collect::<Vec<_>>(),
                vec![self.m1, self.m2]
            );
            let pending = store.pending(self.bob, None, 10).await.expect("pending");
            assert_eq!(
                pending
                    .items
                    .iter()
                    .map(|m| m.message_id)
                    .collect::<Vec<_>>(),
                vec![self.m1, self.m2]
            );
        }
    }

    pub(super) async fn session(
        config: &ScyllaConfig,
    ) -> std::sync::Arc<scylla::client::session::Session> {
        let session = connect(config).await.expect("connect");
        session
            .use_keyspace(config.keyspace.as_str(), false)
            .await
            .expect("use");
        session
    }

    /// Only the tail row of m1's batch is visible: m1 keeps seq 1 from it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_tail_is_visible() {
        with_keyspaces(|[config]: [ScyllaConfig; 1]| async move {
            let store = open_migrated(&config).await;
            let s = Scene::new();
            let (lo, hi) = if s.alice <= s.bob {
                (s.alice, s.bob)
            } else {
                (s.bob, s.alice)
            };
            let (by_lo, by_hi) = if lo == s.alice { (1i64, 0i64) } else { (0, 1) };
            session(&config)
                .await
                .query_unpaged(
                    "INSERT INTO conversations (conversation_id, user_lo, user_hi, \
                     last_message_id, last_seq, last_sent_at_us, sent_by_lo, sent_by_hi) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP 12",
                    (s.conv, lo, hi, s.m1, 1i64, s.sent_at_us + 10, by_lo, by_hi),
                )
                .await
                .expect("half a batch");
            s.check(store.as_ref()).await;
        })
        .await;
    }

    /// Only the `messages_by_id` row of m1's batch is visible: m1 keeps seq 1 from it, and
    /// the tail moves on from it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_location_is_visible() {
        with_keyspaces(|[config]: [ScyllaConfig; 1]| async move {
            let store = open_migrated(&config).await;
            let s = Scene::new();
            let sent = s.sent_at_us + 10;
            session(&config)
                .await
                .query_unpaged(
                    "INSERT INTO messages_by_id (message_id, conversation_id, bucket, seq, \
                     sender_id, recipient_id, sent_at_us, sender_count, peer_count) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP 12",
                    (
                        s.m1,
                        s.conv,
                        sent / BUCKET_MICROS,
                        1i64,
                        s.alice,
                        s.bob,
                        sent,
                        1i64,
                        0i64,
                    ),
                )
                .await
                .expect("half a batch");
            s.check(store.as_ref()).await;
            let unread = store
                .conversations(s.bob, None, 10)
                .await
                .expect("list")
                .items[0]
                .unread_count;
            assert_eq!(unread, 2);
        })
        .await;
    }
}

/// `pending_messages` is an index: rows are removed when their message stops being pending, and
/// a row that outlives that (a deletion lost, or one that a marker's read could not see) is
/// never listed.
mod scylla_pending_index {
    use missive_store::Change;
    use missive_store::scylla::ScyllaConfig;
    use uuid::Uuid;

    use super::scylla_partial_batches::{BUCKET_MICROS, Scene, session};
    use super::{open_migrated, with_keyspaces};

    fn pending_ids(page: &missive_store::Page<missive_store::Message>) -> Vec<Uuid> {
        page.items.iter().map(|m| m.message_id).collect()
    }

    /// The seqs of `user`'s rows in `pending_messages`.
    async fn index_rows(config: &ScyllaConfig, user: Uuid) -> Vec<i64> {
        session(config)
            .await
            .query_unpaged(
                "SELECT seq FROM pending_messages WHERE recipient_id = ?",
                (user,),
            )
            .await
            .expect("read the index")
            .into_rows_result()
            .expect("rows")
            .rows::<(i64,)>()
            .expect("typed")
            .map(|r| r.expect("row").0)
            .collect()
    }

    /// m1's batch is half-written (only its location is visible); the redelivery brings a read
    /// marker on m1 *before* m1 itself: m1's row, written after the marker's read, goes too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_marker_before_a_redelivered_message_removes_its_row() {
        with_keyspaces(|[config]: [ScyllaConfig; 1]| async move {
            let store = open_migrated(&config).await;
            let s = Scene::new();
            s.add_users(store.as_ref()).await;
            let sent = s.sent_at_us + 10;
            session(&config)
                .await
                .query_unpaged(
                    "INSERT INTO messages_by_id (message_id, conversation_id, bucket, seq, \
                     sender_id, recipient_id, sent_at_us, sender_count, peer_count) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP 12",
                    (
                        s.m1,
                        s.conv,
                        sent / BUCKET_MICROS,
                        1i64,
                        s.alice,
                        s.bob,
                        sent,
                        1i64,
                        0i64,
                    ),
                )
                .await
                .expect("half a batch");
            let read = Change::MarkRead {
                conversation_id: s.conv,
                reader_id: s.bob,
                up_to: s.m1,
            };
            store
                .apply(
                    "p",
                    vec![read, s.message(s.m1, 10), s.message(s.m2, 11)],
                    vec![],
                )
                .await
                .expect("apply");
            let pending = store.pending(s.bob, None, 10).await.expect("pending");
            assert_eq!(pending_ids(&pending), vec![s.m2]);
            assert_eq!(
                index_rows(&config, s.bob).await,
                vec![2],
                "m1's row is deleted"
            );
        })
        .await;
    }

    /// Rows brought back above the deletions' timestamp (as a replay into a live keyspace could
    /// after their tombstones are purged) stay out of the answer: the facts decide.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_the_facts_contradict_are_not_listed() {
        with_keyspaces(|[config]: [ScyllaConfig; 1]| async move {
            let store = open_migrated(&config).await;
            let s = Scene::new();
            s.add_users(store.as_ref()).await;
            let m3 = Uuid::now_v7();
            store
                .apply(
                    "p",
                    vec![
                        s.message(s.m1, 10),
                        s.message(s.m2, 11),
                        s.message(m3, 12),
                        Change::MarkDelivered {
                            message_id: s.m1,
                            recipient_id: s.bob,
                        },
                        Change::HideMessage {
                            user_id: s.bob,
                            message_id: s.m2,
                        },
                    ],
                    vec![],
                )
                .await
                .expect("apply");
            assert_eq!(index_rows(&config, s.bob).await, vec![3]);
            // A redelivery of the messages brings no row back.
            store
                .apply(
                    "p",
                    vec![s.message(s.m1, 10), s.message(s.m2, 11), s.message(m3, 12)],
                    vec![],
                )
                .await
                .expect("redeliver");
            assert_eq!(
                index_rows(&config, s.bob).await,
                vec![3],
                "after a redelivery"
            );
            let sent = s.sent_at_us;
            for (id, seq) in [(s.m1, 1i64), (s.m2, 2)] {
                session(&config)
                    .await
                    .query_unpaged(
                        "INSERT INTO pending_messages (recipient_id, conversation_id, seq, \
                         message_id, bucket, sent_at_us) VALUES (?, ?, ?, ?, ?, ?) \
                         USING TIMESTAMP 2251799813685248",
                        (s.bob, s.conv, seq, id, sent / BUCKET_MICROS, sent + 9 + seq),
                    )
                    .await
                    .expect("a row that outlived its message's pending state");
            }
            let pending = store.pending(s.bob, None, 10).await.expect("pending");
            assert_eq!(pending_ids(&pending), vec![m3]);
            let paged = store.pending(s.bob, None, 1).await.expect("one");
            assert_eq!((pending_ids(&paged), paged.next), (vec![m3], None));
            store
                .apply(
                    "p",
                    vec![Change::MarkRead {
                        conversation_id: s.conv,
                        reader_id: s.bob,
                        up_to: m3,
                    }],
                    vec![],
                )
                .await
                .expect("read");
            assert!(
                store
                    .pending(s.bob, None, 10)
                    .await
                    .expect("pending")
                    .items
                    .is_empty()
            );
        })
        .await;
    }
}

/// What the Scylla tables add to the community contract: numbering that survives a half-written
/// batch, name claims decided by creation time whatever the projection order, and index rows
/// that the facts contradict never listed.
mod scylla_communities {
    use std::sync::Arc;

    use chrono::{DateTime, TimeZone, Utc};
    use missive_log::Position;
    use missive_store::scylla::ScyllaConfig;
    use missive_store::{
        Change, CommunityChange, HistoryQuery, InvitationState, ReadStore, Visibility,
    };
    use uuid::Uuid;

    use super::scylla_partial_batches::session;
    use super::{open_migrated, with_keyspaces, with_stores};

    const SENT_AT_US: i64 = 1_800_000_000_000_000;

    fn at(offset: i64) -> DateTime<Utc> {
        Utc.timestamp_micros(SENT_AT_US + offset)
            .single()
            .expect("time")
    }

    fn server(server_id: Uuid, owner_id: Uuid, name: &str, created: i64) -> Change {
        Change::Community(CommunityChange::AddServer {
            server_id,
            owner_id,
            name: name.into(),
            tags: vec!["tag".into()],
            visibility: Visibility::Public,
            created_at: at(created),
        })
    }

    fn say(
        message_id: Uuid,
        server_id: Uuid,
        channel_id: Uuid,
        sender_id: Uuid,
        offset: u64,
    ) -> Change {
        Change::Community(CommunityChange::AddChannelMessage {
            message_id,
            server_id,
            channel_id,
            sender_id,
            text: format!("offset {offset}"),
            client_msg_id: Some(format!("key-{offset}")),
            sent_at: at(offset as i64),
            position: Position::new(0, offset),
        })
    }

    async fn apply(store: &Arc<dyn ReadStore>, changes: Vec<Change>) {
        store.apply("p", changes, vec![]).await.expect("apply");
    }

    /// Only the tail row of m1's batch is visible (a write timeout half-way): re-applying keeps
    /// m1's number and gives m2 the next one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_half_written_channel_message_keeps_its_number() {
        with_keyspaces(|[config]: [ScyllaConfig; 1]| async move {
            let store = open_migrated(&config).await;
            let [owner, server_id, channel, m1, m2] = [(); 5].map(|_| Uuid::now_v7());
            session(&config)
                .await
                .query_unpaged(
                    "INSERT INTO channel_tails (channel_id, last_message_id, last_seq, \
                     last_sent_at_us) VALUES (?, ?, ?, ?) USING TIMESTAMP 12",
                    (channel, m1, 1i64, SENT_AT_US + 10),
                )
                .await
                .expect("half a batch");
            apply(
                &store,
                vec![
                    server(server_id, owner, "Half Written", 0),
                    Change::Community(CommunityChange::AddChannel {
                        channel_id: channel,
                        server_id,
                        name: "general".into(),
                        created_by: owner,
                        created_at: at(1),
                    }),
                    say(m1, server_id, channel, owner, 10),
                    say(m2, server_id, channel, owner, 11),
                ],
            )
            .await;
            let history = store
                .channel_history(
                    owner,
                    channel,
                    HistoryQuery {
                        limit: 10,
                        ..Default::default()
                    },
                )
                .await
                .expect("history");
            let got: Vec<(Uuid, u64)> = history
                .items
                .iter()
                .map(|m| (m.message_id, m.seq))
                .collect();
            assert_eq!(got, vec![(m2, 2), (m1, 1)]);
            let found = store
                .channel_message_by_client_id(owner, "key-10")
                .await
                .expect("key")
                .expect("found");
            assert_eq!((found.message_id, found.seq), (m1, 1));
            let summary = store.channels(server_id, owner).await.expect("channels");
            assert_eq!(
                summary
                    .iter()
                    .map(|c| (c.last_seq, c.unread_count))
                    .collect::<Vec<_>>(),
                vec![(2, 2)]
            );
        })
        .await;
    }

    /// The earliest creation owns a name, in whichever order two creations are projected.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_earliest_creation_owns_a_name_in_any_order() {
        with_stores(|[forward, backward]| async move {
            let [alice, bob, early, late] = [(); 4].map(|_| Uuid::now_v7());
            let first = server(early, alice, "Twice Named", 1);
            let second = server(late, bob, "TWICE named", 2);
            apply(&forward, vec![first.clone(), second.clone()]).await;
            apply(&backward, vec![second]).await;
            apply(&backward, vec![first]).await;
            for store in [forward, backward] {
                let owner = store
                    .server_by_name("twice named")
                    .await
                    .expect("by name")
                    .map(|s| s.server_id);
                assert_eq!(owner, Some(early));
            }
        })
        .await;
    }

    /// Index rows written behind the adapter's back (a lost deletion, or one brought back after
    /// its tombstone was purged) are checked against the facts: a channel member against the
    /// channel the user is in, a pending invitation against its state.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn index_rows_the_facts_contradict_are_not_listed() {
        with_keyspaces(|[config]: [ScyllaConfig; 1]| async move {
            let store = open_migrated(&config).await;
            let [owner, bob, carol, server_id, a, b, invitation] = [(); 7].map(|_| Uuid::now_v7());
            let channel = |channel_id: Uuid, name: &str| {
                Change::Community(CommunityChange::AddChannel {
                    channel_id,
                    server_id,
                    name: name.into(),
                    created_by: owner,
                    created_at: at(1),
                })
            };
            apply(
                &store,
                vec![
                    server(server_id, owner, "Facts First", 0),
                    channel(a, "a"),
                    channel(b, "b"),
                    Change::Community(CommunityChange::JoinChannel {
                        user_id: bob,
                        server_id,
                        channel_id: b,
                        at: at(2),
                        version: 2,
                    }),
                    Change::Community(CommunityChange::AddInvitation {
                        invitation_id: invitation,
                        server_id,
                        inviter_id: owner,
                        invitee_id: carol,
                        sent_at: at(3),
                    }),
                    Change::Community(CommunityChange::AnswerInvitation {
                        invitation_id: invitation,
                        accepted: false,
                        at: at(4),
                    }),
                ],
            )
            .await;
            let s = session(&config).await;
            // Bob is in b, and listed in a by a stray row; the declined invitation is back in
            // both pending indexes, above the deletions' timestamp.
            s.query_unpaged(
                "INSERT INTO channel_members (channel_id, user_key, user_id, joined_at_us) \
                 VALUES (?, ?, ?, ?) USING TIMESTAMP 2251799813685248",
                (a, bob.as_bytes().to_vec(), bob, SENT_AT_US),
            )
            .await
            .expect("a stray member row");
            s.query_unpaged(
                "INSERT INTO invitations_by_invitee (invitee_id, invitation_key, invitation_id, \
                 server_id) VALUES (?, ?, ?, ?) USING TIMESTAMP 2251799813685248",
                (carol, invitation.as_bytes().to_vec(), invitation, server_id),
            )
            .await
            .expect("a stray invitee row");
            s.query_unpaged(
                "INSERT INTO server_invitations (server_id, invitee_id, invitation_id) \
                 VALUES (?, ?, ?) USING TIMESTAMP 2251799813685248",
                (server_id, carol, invitation),
            )
            .await
            .expect("a stray server row");

            let members = |channel: Uuid| {
                let store = store.clone();
                async move {
                    store
                        .channel_members(channel, None, 10)
                        .await
                        .expect("members")
                        .items
                }
            };
            assert_eq!(members(a).await, Vec::<Uuid>::new());
            assert_eq!(members(b).await, vec![bob]);
            assert!(
                store
                    .pending_invitations(carol, None, 10)
                    .await
                    .expect("pending")
                    .items
                    .is_empty()
            );
            assert_eq!(
                store
                    .pending_invitation(server_id, carol)
                    .await
                    .expect("pending"),
                None
            );
            let declined = store
                .invitation(invitation)
                .await
                .expect("invitation")
                .expect("found");
            assert_eq!(declined.state, InvitationState::Declined);
        })
        .await;
    }
}

/// Message retention on Scylla: the shared retention check (messages that expired before they
/// were projected), and rows that expire by their TTL after they were stored.
mod scylla_retention {
    use std::sync::Arc;
    use std::time::{Duration as StdDuration, Instant};

    use chrono::{DateTime, Duration, Utc};
    use missive_log::Position;
    use missive_store::contract::retention::{self, DAYS, retention_at};
    use missive_store::scylla::{ScyllaConfig, ScyllaStore, connect, migrate};
    use missive_store::{Change, CommunityChange, HistoryQuery, ReadStore, Retention, Visibility};
    use uuid::Uuid;

    use super::scylla_partial_batches::{BUCKET_MICROS, session};
    use super::with_keyspaces;

    /// Opens a store with `retention` on a freshly migrated keyspace.
    async fn open_with(config: &ScyllaConfig, retention: &Retention) -> Arc<dyn ReadStore> {
        let session = connect(config).await.expect("connect");
        migrate(&session, config).await.expect("migrate");
        let store = ScyllaStore::open(config)
            .await
            .expect("open the store")
            .with_retention(retention)
            .expect("a finite retention");
        Arc::new(store)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expired_messages_are_not_projected() {
        with_keyspaces(|[config]: [ScyllaConfig; 1]| async move {
            let store = open_with(&config, &retention::retention()).await;
            retention::expired_messages_are_not_projected(store).await;
        })
        .await;
    }

    /// How many rows a query finds.
    async fn count(
        config: &ScyllaConfig,
        cql: &str,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> usize {
        session(config)
            .await
            .query_unpaged(cql, values)
            .await
            .expect("raw read")
            .into_rows_result()
            .expect("rows")
            .rows_num()
    }

    /// Messages stored with 2 or 3 seconds left go away by their TTL, with every row about
    /// them (a delivery receipt, a deletion for everyone and a hide included: none outlives
    /// its message), and unread counts leave them out; what is left keeps its numbers, and a
    /// redelivery of the expired messages stores nothing and numbers nothing. Waits for the
    /// cluster to expire them, polling with a deadline (a liveness bound, not a timing).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stored_messages_expire_with_their_rows() {
        with_keyspaces(|[config]: [ScyllaConfig; 1]| async move {
            let now = Utc::now();
            let store = open_with(&config, &retention_at(now)).await;
            let [alice, bob, conv, m1, m2, m3, m4, server, channel, c1, c2] =
                [(); 11].map(|_| Uuid::now_v7());
            // 2 s (and a little) left by the retention's clock; and 29 days left.
            let short = |us: i64| {
                now - Duration::days(DAYS.into())
                    + Duration::seconds(2)
                    + Duration::microseconds(us)
            };
            let fresh = |us: i64| now - Duration::days(1) + Duration::microseconds(us);
            let dm = |id: Uuid, from: Uuid, to: Uuid, at: DateTime<Utc>, offset: u64| {
                Change::AddMessage {
                    message_id: id,
                    conversation_id: conv,
                    sender_id: from,
                    recipient_id: to,
                    text: format!("offset {offset}"),
                    client_msg_id: Some(format!("k{offset}")),
                    sent_at: at,
                    position: Position::new(0, offset),
                }
            };
            let say = |id: Uuid, at: DateTime<Utc>, offset: u64| {
                Change::Community(CommunityChange::AddChannelMessage {
                    message_id: id,
                    server_id: server,
                    channel_id: channel,
                    sender_id: alice,
                    text: format!("offset {offset}"),
                    client_msg_id: Some(format!("c{offset}")),
                    sent_at: at,
                    position: Position::new(1, offset),
                })
            };
            let mut changes: Vec<Change> = [(alice, "alice"), (bob, "bob")]
                .map(|(id, name)| Change::AddUser {
                    user_id: id,
                    username: format!("{name}-{}", id.simple()),
                    display_name: name.into(),
                    registered_at: now - Duration::days(40),
                })
                .to_vec();
            changes.extend([
                dm(m1, alice, bob, short(0), 1),
                dm(m2, bob, alice, short(1), 2),
                Change::MarkDelivered {
                    message_id: m1,
                    recipient_id: bob,
                },
                Change::HideMessage {
                    user_id: alice,
                    message_id: m1,
                },
                Change::TombstoneMessage { message_id: m2 },
                dm(m3, alice, bob, fresh(0), 3),
                Change::Community(CommunityChange::AddServer {
                    server_id: server,
                    owner_id: alice,
                    name: format!("s-{}", server.simple()),
                    tags: vec![],
                    visibility: Visibility::Public,
                    created_at: now - Duration::days(40),
                }),
                Change::Community(CommunityChange::AddChannel {
                    channel_id: channel,
                    server_id: server,
                    name: "general".into(),
                    created_by: alice,
                    created_at: now - Duration::days(40),
                }),
                say(c1, short(0), 1),
                say(c2, fresh(0), 2),
            ]);
            store
                .apply("p", changes.clone(), vec![])
                .await
                .expect("apply");
            let unread = |user: Uuid| {
                let store = store.clone();
                async move {
                    let list = store.conversations(user, None, 10).await.expect("list");
                    assert_eq!(list.items.len(), 1);
                    let entry = &list.items[0];
                    (
                        entry.unread_count,
                        entry.last_message.as_ref().map(|m| m.message_id),
                    )
                }
            };
            let channel_unread = |user: Uuid| {
                let store = store.clone();
                async move {
                    let summary = store.channels(server, user).await.expect("channels");
                    (summary[0].last_seq, summary[0].unread_count)
                }
            };
            assert_eq!(unread(bob).await, (2, Some(m3)), "m1 and m3");
            assert_eq!(unread(alice).await, (0, Some(m3)), "m2 was deleted");
            assert_eq!(channel_unread(bob).await, (2, 2));

            let deadline = Instant::now() + StdDuration::from_secs(30);
            loop {
                let gone = store.message(bob, m1).await.expect("m1").is_none()
                    && store.message(bob, m2).await.expect("m2").is_none()
                    && store.channel_message(bob, c1).await.expect("c1").is_none();
                if gone {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the short-lived messages did not expire within 30 s"
                );
                tokio::time::sleep(StdDuration::from_millis(200)).await;
            }

            let all = HistoryQuery {
                limit: 10,
                ..Default::default()
            };
            let seqs = |items: Vec<(Uuid, u64)>| items;
            let history = store.history(bob, conv, all).await.expect("history");
            assert_eq!(
                seqs(
                    history
                        .items
                        .iter()
                        .map(|m| (m.message_id, m.seq))
                        .collect()
                ),
                vec![(m3, 3)]
            );
            assert_eq!(unread(bob).await, (1, Some(m3)), "m3 only");
            assert_eq!(unread(alice).await, (0, Some(m3)));
            assert_eq!(channel_unread(bob).await, (2, 1));
            let pending = store.pending(bob, None, 10).await.expect("pending");
            assert_eq!(
                pending
                    .items
                    .iter()
                    .map(|m| m.message_id)
                    .collect::<Vec<_>>(),
                vec![m3]
            );
            let feed = store
                .messages_since(bob, DateTime::<Utc>::MIN_UTC, None, 10)
                .await
                .expect("feed");
            assert_eq!(
                feed.items.iter().map(|m| m.message_id).collect::<Vec<_>>(),
                vec![m3]
            );
            assert_eq!(
                store.message_by_client_id(alice, "k1").await.expect("key"),
                None
            );
            assert_eq!(
                store
                    .channel_message_by_client_id(alice, "c1")
                    .await
                    .expect("key"),
                None
            );
            // No row outlived its message: not the receipt, the deletion or the hide.
            let old_bucket = (short(0).timestamp_micros()).div_euclid(BUCKET_MICROS);
            let messages = "SELECT seq FROM messages WHERE conversation_id = ? AND bucket = ?";
            assert_eq!(count(&config, messages, (conv, old_bucket)).await, 0);
            for table in ["hidden_messages", "uncounted_messages"] {
                let cql =
                    format!("SELECT seq FROM {table} WHERE user_id = ? AND conversation_id = ?");
                assert_eq!(count(&config, &cql, (alice, conv)).await, 0, "{table}");
            }
            let buckets = "SELECT bucket FROM conversation_buckets WHERE conversation_id = ? \
                AND bucket <= ?";
            assert_eq!(count(&config, buckets, (conv, old_bucket)).await, 0);

            // A redelivery stores nothing again and numbers nothing; the next message is 4.
            changes.push(dm(m4, bob, alice, fresh(1), 4));
            store.apply("p", changes, vec![]).await.expect("redeliver");
            let history = store.history(alice, conv, all).await.expect("history");
            assert_eq!(
                seqs(
                    history
                        .items
                        .iter()
                        .map(|m| (m.message_id, m.seq))
                        .collect()
                ),
                vec![(m4, 4), (m3, 3)]
            );
            assert_eq!(store.message(bob, m1).await.expect("m1"), None);
            assert_eq!(channel_unread(bob).await, (2, 1));
        })
        .await;
    }
}
