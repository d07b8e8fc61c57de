//! The analytics consumer on the embedded log and store: the exact report of a known history,
//! then the same report after a full re-run, redelivered batches, and crashes between any two
//! writes of a batch.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::{Crash, Crashing, World, expected_days, run_to_end, setup, snapshot, write_history};
use missive_analytics::sqlite::SqliteAnalytics;
use missive_analytics::{Analytics, AnalyticsError, AnalyticsStore, StoreError};
use missive_log::{DeadLetter, EventLog, LogConsumer, Position, Record, StoredRecord};
use serde_json::json;

fn store(dir: &tempfile::TempDir, name: &str) -> Arc<SqliteAnalytics> {
    Arc::new(SqliteAnalytics::open(&dir.path().join(name)).expect("analytics store"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_a_known_history_exactly() {
    let s = setup();
    let w: World = write_history(s.log.as_ref()).await;
    let analytics = store(&s.dir, "analytics.db");
    run_to_end(
        Analytics::new(s.log.clone(), analytics.clone()).with_batch_size(4),
        s.log.as_ref(),
    )
    .await
    .expect("ran cleanly");

    let (minutes, days) = snapshot(analytics.as_ref()).await;
    assert_eq!(days, expected_days());

    let starts: Vec<&str> = minutes["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| b["start"].as_str().expect("start"))
        .collect();
    assert_eq!(
        starts,
        [
            "2026-03-31T10:01:00Z",
            "2026-03-31T10:02:00Z",
            "2026-03-31T10:03:00Z",
            "2026-03-31T10:04:00Z",
            "2026-04-01T00:00:00Z",
            "2026-04-01T00:01:00Z",
            "2026-04-01T00:10:00Z",
        ]
    );
    let m1003 = &minutes["buckets"][2];
    assert_eq!(m1003["messages"], 2);
    assert_eq!(m1003["conversations_started"], 1);
    assert_eq!(m1003["delivery_latency"]["count"], 2);
    assert_eq!(m1003["read_latency"]["max_ms"], 5000);
    assert_eq!(minutes["buckets"][0]["friend_requests"], 2);
    assert_eq!(minutes["totals"]["messages"], 4, "day 3 is outside");
    assert_eq!(
        minutes["daily_active_users"],
        json!([{"period": "2026-03-31", "users": 3}, {"period": "2026-04-01", "users": 2}])
    );

    // The undecodable record is a dead letter of the analytics consumer.
    let letters = s.log.dead_letters().await.expect("dead letters");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].projection, "analytics");
    assert_eq!(letters[0].source, w.garbage);
    // And the checkpoint is past the end.
    let end = s.log.end_positions().await.expect("end");
    assert_eq!(analytics.checkpoints("analytics").await.expect("cp"), end);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_rerun_and_redelivered_batches_count_nothing_twice() {
    let s = setup();
    write_history(s.log.as_ref()).await;
    let analytics = store(&s.dir, "analytics.db");
    run_to_end(
        Analytics::new(s.log.clone(), analytics.clone()),
        s.log.as_ref(),
    )
    .await
    .expect("first run");
    let expected = snapshot(analytics.as_ref()).await;
    assert_eq!(expected.1, expected_days());

    // A full re-run: a new group with no checkpoint reads everything again, into the same
    // store, in batches of another size.
    run_to_end(
        Analytics::new(s.log.clone(), analytics.clone())
            .with_group("analytics-rerun")
            .with_batch_size(3),
        s.log.as_ref(),
    )
    .await
    .expect("re-run");
    assert_eq!(snapshot(analytics.as_ref()).await, expected);

    // Every batch delivered twice, and each time with the two records before it again.
    let redelivering: Arc<dyn EventLog> = Arc::new(Redelivering(s.log.clone()));
    run_to_end(
        Analytics::new(redelivering, analytics.clone())
            .with_group("analytics-redelivered")
            .with_batch_size(5),
        s.log.as_ref(),
    )
    .await
    .expect("redelivered run");
    assert_eq!(snapshot(analytics.as_ref()).await, expected);

    // And into a second store with redelivery from the start: the same figures.
    let fresh = store(&s.dir, "fresh.db");
    let redelivering: Arc<dyn EventLog> = Arc::new(Redelivering(s.log.clone()));
    run_to_end(
        Analytics::new(redelivering, fresh.clone()).with_batch_size(2),
        s.log.as_ref(),
    )
    .await
    .expect("redelivered into a fresh store");
    assert_eq!(snapshot(fresh.as_ref()).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_any_two_writes_is_recovered_exactly() {
    let s = setup();
    write_history(s.log.as_ref()).await;
    let reference = store(&s.dir, "reference.db");
    run_to_end(
        Analytics::new(s.log.clone(), reference.clone()),
        s.log.as_ref(),
    )
    .await
    .expect("reference run");
    let expected = snapshot(reference.as_ref()).await;

    // Batches of 3 records: the history (24 records) takes 8 writes.
    for crash in [
        Crash::BeforeCheckpoint,
        Crash::AfterSets,
        Crash::BetweenRollups,
    ] {
        for crash_at in [1, 3, 5, 8] {
            let name = format!("crash-{crash:?}-{crash_at}.db");
            let analytics = store(&s.dir, &name);
            let crashing = Arc::new(Crashing {
                inner: analytics.clone(),
                crash,
                crash_at,
                writes: AtomicUsize::new(0),
            });
            let outcome = run_to_end(
                Analytics::new(s.log.clone(), crashing.clone()).with_batch_size(3),
                s.log.as_ref(),
            )
            .await;
            assert!(
                matches!(outcome, Err(AnalyticsError::Store(StoreError::Corrupt(_)))),
                "{crash:?} at write {crash_at}: the consumer stops on the crash: {outcome:?}"
            );
            assert_eq!(crashing.writes.load(Ordering::SeqCst), crash_at);
            // The restarted consumer resumes at the stored checkpoint, before the crashed batch.
            run_to_end(
                Analytics::new(s.log.clone(), analytics.clone()).with_batch_size(3),
                s.log.as_ref(),
            )
            .await
            .expect("restart");
            assert_eq!(
                snapshot(analytics.as_ref()).await,
                expected,
                "{crash:?} at write {crash_at}"
            );
        }
    }
}

/// A log whose consumers deliver every batch twice, the second time with up to two records
/// before it.
struct Redelivering(Arc<dyn EventLog>);

struct RedeliveringConsumer {
    /// In a mutex only to be `Sync`: used through `&mut self`.
    inner: std::sync::Mutex<Box<dyn LogConsumer>>,
    all: Vec<StoredRecord>,
    last: Option<Vec<StoredRecord>>,
}

#[async_trait]
impl EventLog for Redelivering {
    async fn append(&self, records: Vec<Record>) -> missive_log::Result<Vec<Position>> {
        self.0.append(records).await
    }
    async fn end_positions(&self) -> missive_log::Result<Vec<Position>> {
        self.0.end_positions().await
    }
    async fn consumer(&self, group: &str) -> missive_log::Result<Box<dyn LogConsumer>> {
        Ok(Box::new(RedeliveringConsumer {
            inner: std::sync::Mutex::new(self.0.consumer(group).await?),
            all: Vec::new(),
            last: None,
        }))
    }
    async fn dead_letter(&self, letter: DeadLetter) -> missive_log::Result<()> {
        self.0.dead_letter(letter).await
    }
    async fn dead_letters(&self) -> missive_log::Result<Vec<DeadLetter>> {
        self.0.dead_letters().await
    }
    async fn resolve_dead_letter(
        &self,
        projection: &str,
        source: Position,
    ) -> missive_log::Result<()> {
        self.0.resolve_dead_letter(projection, source).await
    }
}

#[async_trait]
impl LogConsumer for RedeliveringConsumer {
    fn seek(&mut self, next: Position) -> missive_log::Result<()> {
        self.inner.get_mut().expect("not poisoned").seek(next)
    }
    async fn poll(
        &mut self,
        max: usize,
        timeout: Duration,
    ) -> missive_log::Result<Vec<StoredRecord>> {
        if let Some(last) = self.last.take() {
            let first = last[0].position.offset;
            let mut again: Vec<StoredRecord> = self
                .all
                .iter()
                .filter(|r| r.position.offset + 2 >= first && r.position.offset < first)
                .cloned()
                .collect();
            again.extend(last);
            return Ok(again);
        }
        let inner = self.inner.get_mut().expect("not poisoned");
        let records = inner.poll(max, timeout).await?;
        if !records.is_empty() {
            self.all.extend(records.iter().cloned());
            self.last = Some(records.clone());
        }
        Ok(records)
    }
    async fn commit(&mut self, next: &[Position]) -> missive_log::Result<()> {
        self.inner
            .get_mut()
            .expect("not poisoned")
            .commit(next)
            .await
    }
    async fn committed(&self) -> missive_log::Result<Vec<Position>> {
        // Not used by the analytics consumer.
        Ok(Vec::new())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_rollups_resume_where_a_previous_run_stopped() {
    // Half the history, counted; then the rest appended and counted by a restarted consumer.
    let s = setup();
    let reference_log = setup();
    write_history(reference_log.log.as_ref()).await;
    let all = reference_log.log.read(0, 1000).expect("read");
    let half = all.len() / 2;
    let copy = |records: &[StoredRecord]| -> Vec<Record> {
        records
            .iter()
            .map(|r| Record {
                stream: r.stream,
                key: r.key.clone(),
                event_type: leak(&r.event_type),
                schema_version: r.schema_version,
                payload: r.payload.clone(),
            })
            .collect()
    };
    s.log.append(copy(&all[..half])).await.expect("append");
    let analytics = store(&s.dir, "analytics.db");
    run_to_end(
        Analytics::new(s.log.clone(), analytics.clone()),
        s.log.as_ref(),
    )
    .await
    .expect("first half");
    s.log.append(copy(&all[half..])).await.expect("append");
    run_to_end(
        Analytics::new(s.log.clone(), analytics.clone()),
        s.log.as_ref(),
    )
    .await
    .expect("second half");
    assert_eq!(snapshot(analytics.as_ref()).await.1, expected_days());
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}
