//! Message retention on the embedded store: the contract's retention check, and the sweeper
//! (`SqliteStore::sweep_expired`), which must leave exactly what projecting the same log into
//! an empty store at the same time leaves, and change nothing when run again.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use missive_log::Position;
use missive_store::contract::retention::{self, Cast, now, retention_at, story};
use missive_store::contract::snapshot;
use missive_store::sqlite::SqliteStore;
use missive_store::{Change, HistoryQuery, ReadStore, Retention};
use uuid::Uuid;

fn open(path: &Path, retention: Retention) -> SqliteStore {
    SqliteStore::open(path)
        .expect("open")
        .with_retention(retention)
}

/// Every read-model table's rows.
async fn tables(store: &SqliteStore) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for table in store.tables().await.expect("tables") {
        let rows = store.table_rows(&table).await.expect("rows");
        out.push((table, rows));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_are_not_projected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir.path().join("read.db"), retention::retention());
    retention::expired_messages_are_not_projected(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_leaves_what_a_replay_projects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cast = Cast::new();
    // The live store projected the story while every message was recent.
    let live_path = dir.path().join("live.db");
    let then = now() - Duration::days(80);
    let live = open(&live_path, retention_at(then));
    live.apply("p", story(&cast), vec![]).await.expect("apply");
    let list = live
        .conversations(cast.carol, None, 10)
        .await
        .expect("list");
    assert_eq!(list.items[0].unread_count, 1);
    drop(live);

    // Time passes: the same store, now at `now()`, is swept.
    let live = open(&live_path, retention::retention());
    assert_eq!(live.sweep_expired(now()).await.expect("sweep"), 7);
    let swept = tables(&live).await;

    // A replay of the log at `now()` into an empty store.
    let replay = open(&dir.path().join("replay.db"), retention::retention());
    replay
        .apply("p", story(&cast), vec![])
        .await
        .expect("apply");
    assert_eq!(swept, tables(&replay).await);
    assert_eq!(
        snapshot(&live, &cast.users()).await,
        snapshot(&replay, &cast.users()).await
    );
    let list = live
        .conversations(cast.carol, None, 10)
        .await
        .expect("list");
    assert_eq!(list.items[0].unread_count, 0);

    // Sweeping again removes nothing and changes nothing.
    assert_eq!(live.sweep_expired(now()).await.expect("sweep"), 0);
    assert_eq!(swept, tables(&live).await);
    // Nor does a redelivery of the whole log.
    live.apply("p", story(&cast), vec![]).await.expect("apply");
    assert_eq!(swept, tables(&live).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_sweep_runs_in_batches_and_counts_stay_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("read.db");
    let (alice, bob, conv) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let start = now() - Duration::days(60);
    let message = |i: u64, at: DateTime<Utc>| Change::AddMessage {
        message_id: Uuid::now_v7(),
        conversation_id: conv,
        sender_id: alice,
        recipient_id: bob,
        text: format!("m{i}"),
        client_msg_id: None,
        sent_at: at,
        position: Position::new(0, i),
    };
    let mut changes: Vec<Change> = [alice, bob]
        .into_iter()
        .map(|id| Change::AddUser {
            user_id: id,
            username: id.simple().to_string(),
            display_name: "someone".into(),
            registered_at: start,
        })
        .collect();
    changes.extend((0..1_200).map(|i| message(i, start + Duration::seconds(i as i64))));
    changes.push(message(1_200, now() - Duration::days(1)));
    let store = open(&path, retention_at(start));
    store.apply("p", changes, vec![]).await.expect("apply");
    let list = store.conversations(bob, None, 10).await.expect("list");
    assert_eq!(list.items[0].unread_count, 1_201);

    let store = store.with_retention(retention::retention());
    assert_eq!(store.sweep_expired(now()).await.expect("sweep"), 1_200);
    let list = store.conversations(bob, None, 10).await.expect("list");
    assert_eq!(list.items[0].unread_count, 1);
    let history = store
        .history(
            bob,
            conv,
            HistoryQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .expect("history");
    assert_eq!(
        history.items.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1_201]
    );
    assert_eq!(
        store
            .pending(bob, None, 10)
            .await
            .expect("pending")
            .items
            .len(),
        1
    );
    let feed = store
        .messages_since(bob, DateTime::<Utc>::MIN_UTC, None, 10)
        .await
        .expect("feed");
    assert_eq!(feed.items.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_forever_nothing_is_swept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(
        &dir.path().join("read.db"),
        Retention::days(0).expect("0 days"),
    );
    let cast = Cast::new();
    store.apply("p", story(&cast), vec![]).await.expect("apply");
    let before = tables(&store).await;
    assert_eq!(
        store
            .sweep_expired(now() + Duration::days(10_000))
            .await
            .expect("sweep"),
        0
    );
    assert_eq!(before, tables(&store).await);
    let history = store
        .history(
            cast.alice,
            cast.conv,
            HistoryQuery {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .expect("history");
    assert_eq!(history.items.len(), 8);
}

#[test]
fn retention_periods_and_ttls() {
    let at = now();
    let r = retention_at(at);
    assert_eq!(
        r.period(),
        Some(std::time::Duration::from_secs(30 * 86_400))
    );
    assert!(r.expired(at - Duration::days(30), at));
    assert!(!r.expired(at - Duration::days(30) + Duration::microseconds(1), at));
    assert_eq!(r.ttl_seconds(at - Duration::days(30), at), None);
    assert_eq!(
        r.ttl_seconds(at - Duration::days(30) + Duration::microseconds(1), at),
        Some(Some(1))
    );
    assert_eq!(r.ttl_seconds(at, at), Some(Some(30 * 86_400)));
    assert_eq!(Retention::forever().ttl_seconds(at, at), Some(None));
    assert_eq!(Retention::days(0).expect("0").period(), None);
    assert!(Retention::days(Retention::MAX_DAYS + 1).is_err());
}
