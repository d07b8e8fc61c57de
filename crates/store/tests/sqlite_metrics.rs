//! The SQLite adapter times every call in `missive_store_query_duration_seconds`, once per
//! call, under the name of the `ReadStore` method it answers.
//!
//! The registry is process-wide: this file holds a single test, so the counts it reads change
//! only by its own calls (whether the tests run one process each or share one).

use chrono::{TimeZone, Utc};
use missive_log::Position;
use missive_store::sqlite::SqliteStore;
use missive_store::{Change, HistoryQuery, ReadStore, StoreError};
use uuid::Uuid;

fn count(statement: &str) -> u64 {
    missive_telemetry::metrics()
        .store_query_seconds
        .with_label_values(&["sqlite", statement])
        .get_sample_count()
}

fn seconds(statement: &str) -> f64 {
    missive_telemetry::metrics()
        .store_query_seconds
        .with_label_values(&["sqlite", statement])
        .get_sample_sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_call_is_timed_once_under_its_method_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("read.db")).expect("open");
    let statements = [
        "apply",
        "user",
        "user_by_username",
        "history",
        "checkpoints",
        "snapshot",
        "friends",
    ];
    let before: Vec<u64> = statements.iter().map(|s| count(s)).collect();

    let alice = Uuid::new_v4();
    let registered_at = Utc.timestamp_opt(1_800_000_000, 0).single().expect("time");
    store
        .apply(
            "metrics",
            vec![Change::AddUser {
                user_id: alice,
                username: "alice".into(),
                display_name: "Alice".into(),
                registered_at,
            }],
            vec![Position::new(0, 1)],
        )
        .await
        .expect("apply");
    // The blocking entry point (replay) is the same write: timed as `apply` too.
    store
        .apply_blocking("metrics", &[], &[Position::new(0, 2)])
        .expect("apply_blocking");
    // A hit and a miss.
    assert!(store.user(alice).await.expect("user").is_some());
    assert!(store.user(Uuid::new_v4()).await.expect("user").is_none());
    assert!(
        store
            .user_by_username("ALICE")
            .await
            .expect("username")
            .is_some()
    );
    // A failed query is timed like any other.
    let unknown = Uuid::new_v4();
    let failed = store
        .history(
            alice,
            Uuid::new_v4(),
            HistoryQuery {
                before: Some(unknown),
                limit: 10,
                ..Default::default()
            },
        )
        .await;
    assert!(
        matches!(failed, Err(StoreError::UnknownCursor(id)) if id == unknown),
        "{failed:?}"
    );
    assert_eq!(
        store.checkpoints("metrics").await.expect("checkpoints"),
        [Position::new(0, 2)]
    );
    store.snapshot("metrics").expect("snapshot");

    let after: Vec<u64> = statements.iter().map(|s| count(s)).collect();
    let deltas: Vec<(&str, u64)> = statements
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(s, (b, a))| (*s, a - b))
        .collect();
    assert_eq!(
        deltas,
        [
            ("apply", 2),
            ("user", 2),
            ("user_by_username", 1),
            ("history", 1),
            ("checkpoints", 1),
            ("snapshot", 1),
            // Not called: no time recorded under its name.
            ("friends", 0),
        ]
    );
    for statement in ["apply", "user", "snapshot"] {
        assert!(seconds(statement) > 0.0, "{statement}: no time recorded");
    }

    // The series the dashboard queries (ops/grafana/dashboards/missive.json).
    let exposition = missive_telemetry::metrics().render();
    for series in [
        "missive_store_query_duration_seconds_bucket{backend=\"sqlite\",statement=\"user\",le=\"5\"} ",
        "missive_store_query_duration_seconds_count{backend=\"sqlite\",statement=\"apply\"} ",
        "missive_store_query_duration_seconds_sum{backend=\"sqlite\",statement=\"history\"} ",
    ] {
        assert!(exposition.contains(series), "missing {series}");
    }
}
