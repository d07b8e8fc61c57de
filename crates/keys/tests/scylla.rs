//! The KeyVault contract suite on the Scylla vault (bare and behind the cache), against a real
//! ScyllaDB or Cassandra node: runs when `MISSIVE_TEST_SCYLLA=host:port` is set, each test in a
//! keyspace of its own (migrated with every registered `projections/*.cql`, plus
//! `0005_user_keys.cql`, dropped afterwards even when the test fails); otherwise each test
//! prints that it was skipped.

#![cfg(feature = "scylla")]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use missive_keys::KeyVault;
use missive_keys::scylla::ScyllaVault;
use missive_store::scylla::{
    Replication, ScyllaConfig, connect, drop_keyspace, migrate, statements,
};

/// The test node's `host:port`, or `None` (with a notice) when none is set.
fn test_node() -> Option<String> {
    match std::env::var("MISSIVE_TEST_SCYLLA") {
        Ok(node) if !node.is_empty() => Some(node),
        _ => {
            eprintln!(
                "SKIPPED: the key vault Scylla contract suite needs a ScyllaDB or Cassandra \
                 node; set MISSIVE_TEST_SCYLLA=host:port to run it"
            );
            None
        }
    }
}

/// Runs `test` with the config of a fresh, migrated keyspace when a test node is set; drops
/// the keyspace afterwards (with a generous timeout), also when the test panics.
async fn with_keyspace<F, Fut>(test: F)
where
    F: FnOnce(ScyllaConfig) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(node) = test_node() else { return };
    let keyspace = format!("missive_test_{}", uuid::Uuid::now_v7().simple());
    let mut config = ScyllaConfig::parse(&format!("scylla://{node}/{keyspace}")).expect("test URL");
    config.replication = Replication::Simple(1);
    config.request_timeout = Duration::from_secs(60);
    let task_config = config.clone();
    let outcome = tokio::spawn(async move {
        let session = connect(&task_config).await.expect("connect");
        migrate(&session, &task_config).await.expect("migrate");
        // Until 0005 is registered in MIGRATIONS, apply it here (it is idempotent).
        for statement in statements(include_str!("../../../projections/0005_user_keys.cql")) {
            session
                .query_unpaged(statement, &[])
                .await
                .expect("apply 0005_user_keys.cql");
        }
        test(task_config).await;
    })
    .await;
    let dropped = tokio::time::timeout(Duration::from_secs(120), async {
        let session = connect(&config).await.map_err(|e| e.to_string())?;
        drop_keyspace(&session, &config.keyspace)
            .await
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|_| Err("timed out".into()));
    match outcome {
        Ok(()) => dropped.expect("drop the test keyspace"),
        Err(error) => {
            if let Err(why) = dropped {
                eprintln!("could not drop the test keyspace {keyspace}: {why}");
            }
            match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(error) => panic!("the test task did not finish: {error}"),
            }
        }
    }
}

async fn open(config: &ScyllaConfig) -> ScyllaVault {
    ScyllaVault::open(config).await.expect("open")
}

/// Named `scylla_contract::*` so that the nextest filter `test(/scylla/)` shows each test's
/// SKIPPED notice.
mod scylla_contract {
    use missive_keys::{CachedVault, contract};

    use super::*;

    macro_rules! contract_tests {
        ($($name:ident),* $(,)?) => {
            mod bare {
                use super::*;
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        with_keyspace(|config| async move {
                            contract::$name(Arc::new(open(&config).await)).await;
                        })
                        .await;
                    }
                )*
            }

            mod cached {
                use super::*;
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        with_keyspace(|config| async move {
                            let vault = CachedVault::new(open(&config).await);
                            contract::$name(Arc::new(vault)).await;
                        })
                        .await;
                    }
                )*
            }
        };
    }

    contract_tests!(
        create_is_idempotent,
        concurrent_creates_yield_one_key,
        destroy_is_final,
        destroy_is_idempotent_and_needs_no_key,
        other_users_are_unaffected,
        sealed_values_open_only_with_their_key_and_owner,
        shredded_values_read_as_none,
    );

    /// Two vaults with sessions of their own (as two processes have), racing to create the
    /// same users' keys: every caller gets the one stored key; a vault on a session that uses
    /// no keyspace (statements name it) sees the same.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn scylla_two_sessions_agree_on_each_key() {
        with_keyspace(|config| async move {
            let a: Arc<dyn KeyVault> = Arc::new(open(&config).await);
            let b: Arc<dyn KeyVault> = Arc::new(open(&config).await);
            for _ in 0..5 {
                let user = uuid::Uuid::now_v7();
                let tasks: Vec<_> = (0..8)
                    .map(|i| {
                        let vault = if i % 2 == 0 { a.clone() } else { b.clone() };
                        tokio::spawn(async move { vault.create(user).await })
                    })
                    .collect();
                let mut keys = Vec::new();
                for task in tasks {
                    keys.push(task.await.expect("join").expect("create"));
                }
                assert!(keys.windows(2).all(|w| w[0] == w[1]), "one key per user");
            }
            let bare = connect(&config).await.expect("connect");
            let c = ScyllaVault::new(bare, &config.keyspace).await.expect("new");
            let user = uuid::Uuid::now_v7();
            let key = a.create(user).await.expect("create");
            assert_eq!(c.create(user).await, Ok(key));
            c.destroy(user).await.expect("destroy");
            assert_eq!(b.key(user).await, Ok(missive_keys::KeyState::Destroyed));
        })
        .await;
    }

    /// `copy_into` (what `missive replay --into scylla://` and `missive store copy-keys` do):
    /// every key and tombstone reaches the other keyspace; repeating it changes nothing; a
    /// deletion made through the target reaches the source; a different key is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scylla_copy_into_another_keyspace() {
        use missive_keys::scylla::Copied;
        use missive_keys::{KeyState, VaultError};
        use uuid::Uuid;

        with_keyspace(|config| async move {
            let mut other = config.clone();
            other.keyspace = format!("missive_copy_{}", Uuid::now_v7().simple());
            let session = connect(&other).await.expect("connect");
            migrate(&session, &other).await.expect("migrate the target");
            let source = open(&config).await;
            let target = open(&other).await;
            let checks = async move {
                let (alice, bob, carol, dave, erin) = (
                    Uuid::now_v7(),
                    Uuid::now_v7(),
                    Uuid::now_v7(),
                    Uuid::now_v7(),
                    Uuid::now_v7(),
                );
                let alice_key = source.create(alice).await.expect("create");
                let bob_key = source.create(bob).await.expect("create");
                source.create(carol).await.expect("create");
                source.destroy(carol).await.expect("destroy");
                source.destroy(dave).await.expect("destroy (no key)");
                let erin_key = target.create(erin).await.expect("create in the target");

                let first = source.copy_into(&target).await.expect("copy");
                assert_eq!(
                    first,
                    Copied {
                        keys: 2,
                        tombstones: 2,
                        ..Copied::default()
                    }
                );
                assert_eq!(target.key(alice).await, Ok(KeyState::Active(alice_key)));
                assert_eq!(target.key(bob).await, Ok(KeyState::Active(bob_key.clone())));
                assert_eq!(target.key(carol).await, Ok(KeyState::Destroyed));
                assert_eq!(target.key(dave).await, Ok(KeyState::Destroyed));
                assert_eq!(target.create(dave).await, Err(VaultError::Destroyed));
                assert_eq!(target.key(erin).await, Ok(KeyState::Active(erin_key)));

                // Again, after alice was deleted through the target: her tombstone wins in
                // both keyspaces.
                target.destroy(alice).await.expect("destroy");
                let again = source.copy_into(&target).await.expect("copy again");
                assert_eq!(
                    again,
                    Copied {
                        already: 1,
                        tombstones: 1,
                        ..Copied::default()
                    }
                );
                assert_eq!(source.key(alice).await, Ok(KeyState::Destroyed));
                assert_eq!(target.key(bob).await, Ok(KeyState::Active(bob_key)));

                // A user with a key on each side, made independently: not copied, listed;
                // a user deleted on the source after that still reaches the target.
                let (frank, gina) = (Uuid::now_v7(), Uuid::now_v7());
                let frank_there = target.create(frank).await.expect("create");
                source.create(frank).await.expect("create");
                source.create(gina).await.expect("create");
                target.create(gina).await.ok();
                source.destroy(gina).await.expect("destroy");
                let third = source.copy_into(&target).await.expect("copy a third time");
                assert_eq!(
                    third,
                    Copied {
                        already: 1,
                        tombstones: 1,
                        conflicts: vec![frank],
                        ..Copied::default()
                    }
                );
                assert_eq!(target.key(frank).await, Ok(KeyState::Active(frank_there)));
                assert_eq!(target.key(gina).await, Ok(KeyState::Destroyed));
            };
            let outcome = tokio::spawn(checks).await;
            let _ = drop_keyspace(&session, &other.keyspace).await;
            if let Err(error) = outcome {
                std::panic::resume_unwind(error.into_panic());
            }
        })
        .await;
    }
}
