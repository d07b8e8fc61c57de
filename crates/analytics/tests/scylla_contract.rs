//! The AnalyticsStore contract suite on the Scylla adapter, against a real ScyllaDB or
//! Cassandra node: runs when `MISSIVE_TEST_SCYLLA=host:port` is set, each test in a keyspace of
//! its own (migrated with every `projections/*.cql` first, dropped afterwards even when the
//! test fails); otherwise each test prints that it was skipped.

#![cfg(feature = "scylla")]

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use missive_analytics::AnalyticsStore;
use missive_analytics::scylla::ScyllaAnalytics;
use missive_store::scylla::{Replication, ScyllaConfig, connect, drop_keyspace, migrate};

/// The test node's `host:port`, or `None` (with a notice) when none is set.
fn test_node() -> Option<String> {
    match std::env::var("MISSIVE_TEST_SCYLLA") {
        Ok(node) if !node.is_empty() => Some(node),
        _ => {
            eprintln!(
                "SKIPPED: the analytics Scylla contract suite needs a ScyllaDB or Cassandra \
                 node; set MISSIVE_TEST_SCYLLA=host:port to run it"
            );
            None
        }
    }
}

/// Runs `test` on a store in a fresh, migrated keyspace when a test node is set; drops the
/// keyspace afterwards (with a generous timeout), also when the test panics.
async fn with_store<F, Fut>(test: F)
where
    F: FnOnce(Arc<dyn AnalyticsStore>) -> Fut + Send + 'static,
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
        let store = ScyllaAnalytics::open(&task_config).await.expect("open");
        test(Arc::new(store)).await;
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

/// Named `scylla_contract::*` so that the nextest filter `test(/scylla/)` shows each test's
/// SKIPPED notice.
mod scylla_contract {
    use missive_analytics::contract;

    use super::with_store;

    macro_rules! contract_test {
        ($name:ident) => {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                with_store(contract::$name).await;
            }
        };
    }

    contract_test!(rollups_keep_the_highest_watermark);
    contract_test!(rollup_ranges_cross_days_and_months);
    contract_test!(active_users_are_sets);
    contract_test!(first_messages_keep_the_earliest);
    contract_test!(checkpoints_move_forward_per_consumer);
    contract_test!(reports_from_stored_rows);

    /// The consumer on the embedded log and this store: the exact report of the known
    /// history after a crash between a batch's rollups and its checkpoint and a restart, and
    /// the same after a full re-run by another group.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scylla_consumer_counts_exactly_through_a_crash_and_a_rerun() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        use missive_analytics::Analytics;

        use crate::common::{
            Crash, Crashing, expected_days, run_to_end, setup, snapshot, write_history,
        };

        with_store(|store| async move {
            let s = setup();
            write_history(s.log.as_ref()).await;
            let crashing = Arc::new(Crashing {
                inner: store.clone(),
                crash: Crash::BetweenRollups,
                crash_at: 3,
                writes: AtomicUsize::new(0),
            });
            let crashed = run_to_end(
                Analytics::new(s.log.clone(), crashing.clone()).with_batch_size(4),
                s.log.as_ref(),
            )
            .await;
            assert!(crashed.is_err(), "the consumer stops on the crash");
            assert_eq!(crashing.writes.load(Ordering::SeqCst), 3);
            run_to_end(
                Analytics::new(s.log.clone(), store.clone()).with_batch_size(4),
                s.log.as_ref(),
            )
            .await
            .expect("restart");
            let expected = snapshot(store.as_ref()).await;
            assert_eq!(expected.1, expected_days());
            run_to_end(
                Analytics::new(s.log.clone(), store.clone())
                    .with_group("analytics-rerun")
                    .with_batch_size(3),
                s.log.as_ref(),
            )
            .await
            .expect("re-run");
            assert_eq!(snapshot(store.as_ref()).await, expected);
        })
        .await;
    }
}
