//! The ReadStore contract suite on the embedded SQLite adapter.

use std::sync::Arc;

use missive_store::ReadStore;
use missive_store::contract;
use missive_store::sqlite::SqliteStore;

fn fresh(dir: &tempfile::TempDir, name: &str) -> Arc<dyn ReadStore> {
    Arc::new(SqliteStore::open(&dir.path().join(name)).expect("open"))
}

macro_rules! contract_test {
    ($name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let dir = tempfile::tempdir().expect("tempdir");
            contract::$name(fresh(&dir, "read.db")).await;
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

macro_rules! community_test {
    ($name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let dir = tempfile::tempdir().expect("tempdir");
            contract::communities::$name(fresh(&dir, "read.db")).await;
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
    let dir = tempfile::tempdir().expect("tempdir");
    contract::communities::community_reapplying_is_idempotent(
        fresh(&dir, "a.db"),
        fresh(&dir, "b.db"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reapplying_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    contract::reapplying_is_idempotent(fresh(&dir, "a.db"), fresh(&dir, "b.db")).await;
}
