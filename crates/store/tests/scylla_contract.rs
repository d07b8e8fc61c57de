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
/// set. The keyspaces are dropped afterwards, also when setting up or the test panics (it runs
/// in its own task); the panic is then passed on.
async fn with_stores<const N: usize, F, Fut>(test: F)
where
    F: FnOnce([Arc<dyn ReadStore>; N]) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(node) = test_node() else { return };
    let configs: [ScyllaConfig; N] = std::array::from_fn(|_| fresh_config(&node));
    let task_configs = configs.clone();
    let outcome = tokio::spawn(async move {
        let mut stores = Vec::with_capacity(N);
        for config in &task_configs {
            stores.push(open_migrated(config).await);
        }
        let stores: [Arc<dyn ReadStore>; N] = stores.try_into().ok().expect("one store each");
        test(stores).await;
    })
    .await;
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
    contract_test!(friendships);
    contract_test!(messages_unread_and_deletes);
    contract_test!(pagination);
    contract_test!(client_message_ids);
    contract_test!(late_projected_messages_are_not_skipped);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reapplying_is_idempotent() {
        with_stores(|[store, fresh]| contract::reapplying_is_idempotent(store, fresh)).await;
    }
}
