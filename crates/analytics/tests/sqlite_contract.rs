//! The AnalyticsStore contract suite on the embedded SQLite adapter.

use std::sync::Arc;

use missive_analytics::AnalyticsStore;
use missive_analytics::contract;
use missive_analytics::sqlite::SqliteAnalytics;

macro_rules! contract_test {
    ($name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let dir = tempfile::tempdir().expect("tempdir");
            let store: Arc<dyn AnalyticsStore> =
                Arc::new(SqliteAnalytics::open(&dir.path().join("analytics.db")).expect("open"));
            contract::$name(store).await;
        }
    };
}

contract_test!(rollups_keep_the_highest_watermark);
contract_test!(rollup_ranges_cross_days_and_months);
contract_test!(active_users_are_sets);
contract_test!(first_messages_keep_the_earliest);
contract_test!(checkpoints_move_forward_per_consumer);
contract_test!(reports_from_stored_rows);

#[test]
fn a_database_of_another_schema_version_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("analytics.db");
    drop(SqliteAnalytics::open(&path).expect("create"));
    SqliteAnalytics::open(&path).expect("reopen");
    rusqlite::Connection::open(&path)
        .and_then(|c| c.pragma_update(None, "user_version", 7))
        .expect("set version");
    let error = SqliteAnalytics::open(&path).expect_err("refused");
    assert!(error.to_string().contains("schema"), "{error}");
}
