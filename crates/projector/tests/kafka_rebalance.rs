//! Projectors sharing a Kafka consumer group: a partition that moves between them resumes at
//! the read store's checkpoint, not where the group's commit or a stale seek left it. Against
//! librdkafka's mock cluster, or the broker of `MISSIVE_TEST_KAFKA`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use missive_events::{Envelope, Event, codec};
use missive_log::kafka::KafkaLog;
use missive_log::kafka::testing::TestCluster;
use missive_log::{DeadLetter, EventLog, LogConsumer, Position, Record, Result, StoredRecord};
use missive_projector::Projector;
use missive_store::ReadStore;
use missive_store::sqlite::SqliteStore;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use uuid::Uuid;

/// What each consumer reported through `take_assigned`, by consumer (in creation order).
type Assignments = Arc<Mutex<Vec<Vec<Vec<u32>>>>>;

/// The Kafka log, except that consumers never commit: as if every projector died between
/// applying a batch and committing its offsets. Records the assignments consumers report.
struct NeverCommits {
    inner: KafkaLog,
    assignments: Assignments,
}

struct NeverCommitting {
    /// In a mutex only so that `&self` is `Sync`; every use has `&mut self`.
    inner: std::sync::Mutex<Box<dyn LogConsumer>>,
    index: usize,
    assignments: Assignments,
}

#[async_trait]
impl EventLog for NeverCommits {
    async fn append(&self, records: Vec<Record>) -> Result<Vec<Position>> {
        self.inner.append(records).await
    }
    async fn end_positions(&self) -> Result<Vec<Position>> {
        self.inner.end_positions().await
    }
    async fn consumer(&self, group: &str) -> Result<Box<dyn LogConsumer>> {
        let inner = self.inner.consumer(group).await?;
        let mut all = self.assignments.lock();
        all.push(Vec::new());
        Ok(Box::new(NeverCommitting {
            inner: std::sync::Mutex::new(inner),
            index: all.len() - 1,
            assignments: self.assignments.clone(),
        }))
    }
    async fn dead_letter(&self, letter: DeadLetter) -> Result<()> {
        self.inner.dead_letter(letter).await
    }
    async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        self.inner.dead_letters().await
    }
    async fn resolve_dead_letter(&self, projection: &str, source: Position) -> Result<()> {
        self.inner.resolve_dead_letter(projection, source).await
    }
}

impl NeverCommitting {
    fn inner(&mut self) -> &mut dyn LogConsumer {
        match self.inner.get_mut() {
            Ok(inner) => inner.as_mut(),
            Err(poisoned) => poisoned.into_inner().as_mut(),
        }
    }
}

#[async_trait]
impl LogConsumer for NeverCommitting {
    fn seek(&mut self, next: Position) -> Result<()> {
        self.inner().seek(next)
    }
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<StoredRecord>> {
        self.inner().poll(max, timeout).await
    }
    async fn commit(&mut self, _next: &[Position]) -> Result<()> {
        Ok(())
    }
    async fn committed(&self) -> Result<Vec<Position>> {
        Ok(Vec::new())
    }
    fn take_assigned(&mut self) -> Vec<u32> {
        let assigned = self.inner().take_assigned();
        if !assigned.is_empty() {
            self.assignments.lock()[self.index].push(assigned.clone());
        }
        assigned
    }
}

fn registrations(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let user_id = Uuid::now_v7();
            let envelope = Envelope::new(
                Event::UserRegistered {
                    user_id,
                    username: format!("user{i}-{}", user_id.simple()),
                    display_name: format!("User {i}"),
                },
                user_id,
                Uuid::now_v7(),
                Utc::now(),
            );
            Record {
                stream: envelope.stream(),
                key: envelope.partition_key(),
                event_type: envelope.event_type(),
                schema_version: 1,
                payload: codec::encode(&envelope).expect("encode"),
            }
        })
        .collect()
}

/// Waits until the store's checkpoints reach the end of every non-empty partition.
async fn wait_applied(log: &dyn EventLog, store: &dyn ReadStore, projection: &str) {
    let ends = log.end_positions().await.expect("ends");
    let started = Instant::now();
    loop {
        let checkpoints = store.checkpoints(projection).await.expect("checkpoints");
        let done = ends.iter().filter(|e| e.offset > 0).all(|end| {
            checkpoints
                .iter()
                .any(|cp| cp.partition == end.partition && cp.offset == end.offset)
        });
        if done {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "projectors did not reach {ends:?}; store has {checkpoints:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the consumer `index` has reported `count` assignments.
async fn wait_assignments(assignments: &Assignments, index: usize, count: usize) {
    let started = Instant::now();
    while assignments.lock().get(index).map_or(0, Vec::len) < count {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "consumer {index} was not assigned partitions {count} times: {:?}",
            assignments.lock()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spawn(
    log: Arc<NeverCommits>,
    store: Arc<dyn ReadStore>,
    projection: &str,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let projector = Projector::new(log, store, projection);
    let task = tokio::spawn(async move {
        projector
            .run(async {
                let _ = stopped.await;
            })
            .await
            .expect("projector runs");
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reassigned_partition_resumes_at_the_store_checkpoint() {
    let cluster = TestCluster::start();
    let log = Arc::new(NeverCommits {
        inner: KafkaLog::connect(cluster.fresh_log_config().await).expect("connect"),
        assignments: Assignments::default(),
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn ReadStore> =
        Arc::new(SqliteStore::open(&dir.path().join("read.db")).expect("store"));
    let projection = format!("rebalance-{}", Uuid::now_v7().simple());
    let per_round = 40;

    // Round 1: one projector applies everything.
    log.append(registrations(per_round)).await.expect("append");
    let (stop_first, first) = spawn(log.clone(), store.clone(), &projection);
    wait_applied(log.as_ref(), store.as_ref(), &projection).await;

    // Round 2: a second projector joins (its start-up seeks are now the store's checkpoints,
    // soon stale); the group splits the partitions; both apply their share.
    let (stop_second, second) = spawn(log.clone(), store.clone(), &projection);
    wait_assignments(&log.assignments, 1, 1).await;
    wait_assignments(&log.assignments, 0, 2).await;
    log.append(registrations(per_round)).await.expect("append");
    wait_applied(log.as_ref(), store.as_ref(), &projection).await;

    // Round 3: the first stops; once the group notices, the second takes its partitions,
    // where nothing was ever committed and its own start-up seeks are a round behind.
    stop_first.send(()).expect("first running");
    first.await.expect("first stopped");
    wait_assignments(&log.assignments, 1, 2).await;
    log.append(registrations(per_round)).await.expect("append");
    wait_applied(log.as_ref(), store.as_ref(), &projection).await;
    stop_second.send(()).expect("second running");
    second.await.expect("second stopped");

    // Every event was applied exactly once: none of the rounds was replayed.
    let applied: u64 = missive_telemetry::metrics()
        .projector_events
        .with_label_values(&[projection.as_str(), "UserRegistered"])
        .get();
    assert_eq!(applied, 3 * per_round as u64);
}
