//! The analytics consumer: reads every stream in the `analytics` consumer group, folds each
//! batch into rollups ([`crate::aggregate`]) and writes them with the batch's checkpoint to an
//! [`AnalyticsStore`]. Shaped like the read-model projector: the store's checkpoint is the
//! truth (the group's commit is kept for tools), partitions the group assigns resume there,
//! undecodable records become dead letters, transient store errors are retried with backoff.
//!
//! # Metrics
//! Registered in the process-wide registry of `missive-telemetry` (served at `/metrics`):
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `missive_analytics_messages_total` | counter | `kind` (`direct`, `channel`) | messages counted |
//! | `missive_analytics_conversations_started_total` | counter | | conversations started |
//! | `missive_analytics_friend_requests_total` | counter | | friend requests |
//! | `missive_analytics_friend_accepts_total` | counter | | friend requests accepted |
//! | `missive_analytics_delivery_latency_seconds` | histogram | | sent → delivered |
//! | `missive_analytics_read_latency_seconds` | histogram | | sent → read (`up_to`) |
//! | `missive_analytics_daily_active_users` | gauge | | distinct active users today (UTC) |
//! | `missive_analytics_monthly_active_users` | gauge | | distinct active users this month (UTC) |
//! | `missive_analytics_position` | gauge | `partition` | next log offset to count |
//! | `missive_analytics_lag` | gauge | `partition` | events appended but not yet counted |
//!
//! Counters count what this process newly counted since it started (an event found counted
//! already, on a redelivery or re-run, adds nothing); the stored rollups are the exact record.
//! Undecodable events count in `missive_projector_poison_events_total{projection="analytics"}`.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use missive_events::Envelope;
use missive_log::{DeadLetter, EventLog, LogConsumer, Position, StoredRecord};
use prometheus::{HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use tokio::sync::watch;

use crate::aggregate::{Aggregator, Folded};
use crate::model::LATENCY_BOUNDS_MS;
use crate::{AnalyticsStore, Period, StoreError};

/// The consumer group, and the name its checkpoints and dead letters are kept under.
pub const CONSUMER_GROUP: &str = "analytics";

/// How far the consumer got: per partition, the next offset to count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress(pub BTreeMap<u32, u64>);

impl Progress {
    /// True once the event at `position` has been counted.
    pub fn has_applied(&self, position: Position) -> bool {
        self.0
            .get(&position.partition)
            .is_some_and(|next| *next > position.offset)
    }

    fn advance(&mut self, checkpoint: &[Position]) {
        for cp in checkpoint {
            let next = self.0.entry(cp.partition).or_insert(0);
            *next = (*next).max(cp.offset);
        }
    }
}

/// Why the consumer stopped.
#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    #[error("the analytics consumer lost the event log")]
    Log(#[from] missive_log::LogError),
    #[error("the analytics consumer could not use its store")]
    Store(#[from] StoreError),
}

/// The analytics Prometheus metrics (see the module docs).
#[derive(Debug)]
pub struct Metrics {
    pub messages: IntCounterVec,
    pub conversations_started: IntCounter,
    pub friend_requests: IntCounter,
    pub friend_accepts: IntCounter,
    pub delivery_latency: prometheus::Histogram,
    pub read_latency: prometheus::Histogram,
    pub daily_active_users: IntGauge,
    pub monthly_active_users: IntGauge,
    pub position: IntGaugeVec,
    pub lag: IntGaugeVec,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    missive_telemetry::metrics()
        .registry
        .register(Box::new(c.clone()))
        .expect("analytics metrics register once");
    c
}

/// The process-wide analytics metrics, registered with `missive-telemetry`'s on first use.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
        let counter = |name: &str, help: &str| {
            register(IntCounter::with_opts(Opts::new(name, help)).expect("valid counter"))
        };
        let gauge =
            |name: &str, help: &str| register(IntGauge::new(name, help).expect("valid gauge"));
        let latency = |name: &str, help: &str| {
            let buckets = LATENCY_BOUNDS_MS.iter().map(|ms| *ms as f64 / 1000.0);
            register(
                prometheus::Histogram::with_opts(
                    HistogramOpts::new(name, help).buckets(buckets.collect()),
                )
                .expect("valid histogram"),
            )
        };
        let by_partition = |name: &str, help: &str| {
            register(IntGaugeVec::new(Opts::new(name, help), &["partition"]).expect("valid gauge"))
        };
        Metrics {
            messages: register(
                IntCounterVec::new(
                    Opts::new(
                        "missive_analytics_messages_total",
                        "Messages counted by the analytics consumer, by kind (direct, channel).",
                    ),
                    &["kind"],
                )
                .expect("valid counter"),
            ),
            conversations_started: counter(
                "missive_analytics_conversations_started_total",
                "Conversations started (first direct message), counted by the analytics consumer.",
            ),
            friend_requests: counter(
                "missive_analytics_friend_requests_total",
                "Friend requests counted by the analytics consumer.",
            ),
            friend_accepts: counter(
                "missive_analytics_friend_accepts_total",
                "Friend requests accepted, counted by the analytics consumer.",
            ),
            delivery_latency: latency(
                "missive_analytics_delivery_latency_seconds",
                "Time from a message's send to its delivery to a device of the recipient.",
            ),
            read_latency: latency(
                "missive_analytics_read_latency_seconds",
                "Time from the send of a read marker's up_to message to the read marker.",
            ),
            daily_active_users: gauge(
                "missive_analytics_daily_active_users",
                "Distinct users active today (UTC), from the analytics store.",
            ),
            monthly_active_users: gauge(
                "missive_analytics_monthly_active_users",
                "Distinct users active this month (UTC), from the analytics store.",
            ),
            position: by_partition(
                "missive_analytics_position",
                "Next log offset the analytics consumer will count, per partition.",
            ),
            lag: by_partition(
                "missive_analytics_lag",
                "Events appended to the log but not yet counted by the analytics consumer, per partition.",
            ),
        }
    });
    &METRICS
}

/// First and longest wait between retries of a store that is unavailable.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often the lag gauge asks the log where it ends.
const LAG_REFRESH: Duration = Duration::from_secs(1);
/// The DAU/MAU gauges are read from the store at most this often after new members were
/// written for today or this month, and at least this often otherwise.
const ACTIVE_REFRESH_MIN: Duration = Duration::from_secs(1);
const ACTIVE_REFRESH_MAX: Duration = Duration::from_secs(60);

/// The analytics consumer.
pub struct Analytics {
    log: Arc<dyn EventLog>,
    store: Arc<dyn AnalyticsStore>,
    /// The checkpoint name in the store (and dead letters' projection).
    name: String,
    /// The log's consumer group; the same as `name` unless a rebuild reads with its own.
    group: String,
    batch_size: usize,
    progress: watch::Sender<Progress>,
}

impl Analytics {
    pub fn new(log: Arc<dyn EventLog>, store: Arc<dyn AnalyticsStore>) -> Self {
        let (progress, _) = watch::channel(Progress::default());
        Analytics {
            log,
            store,
            name: CONSUMER_GROUP.to_owned(),
            group: CONSUMER_GROUP.to_owned(),
            batch_size: 2048,
            progress,
        }
    }

    /// Sets how many events at most go into one batch.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Uses another consumer group and checkpoint name than [`CONSUMER_GROUP`]: a second
    /// group over the same store re-reads the log from its start and, by design, counts
    /// nothing twice.
    pub fn with_group(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self.group = name.to_owned();
        self
    }

    /// Reads the log with its own consumer group but keeps [`CONSUMER_GROUP`]'s checkpoints:
    /// a rebuild into a fresh store (`missive replay --projection analytics`), which the live
    /// consumer then carries on from, without joining (and disturbing) the live group.
    pub fn with_private_group(mut self, group: &str) -> Self {
        self.group = group.to_owned();
        self
    }

    /// Follows the consumer's progress (empty until [`Analytics::run`] loads it).
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Runs until `shutdown` resolves, then returns after the batch in hand is written.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), AnalyticsError> {
        tokio::pin!(shutdown);
        let mut consumer = self.log.consumer(&self.group).await?;
        let Some(checkpoints) = self
            .retry("reading checkpoints", &mut shutdown, || {
                self.store.checkpoints(&self.name)
            })
            .await?
        else {
            return Ok(());
        };
        let mut progress = Progress::default();
        // The store's checkpoint commits with the rollups; a partition it has none for is read
        // from its start.
        for cp in &checkpoints {
            progress.0.insert(cp.partition, cp.offset);
        }
        for end in self.log.end_positions().await? {
            progress.0.entry(end.partition).or_insert(0);
        }
        for (partition, next) in &progress.0 {
            consumer.seek(Position::new(*partition, *next))?;
        }
        let mut state = State {
            aggregator: Aggregator::new(),
            log_end: None,
            active_refreshed: None,
            active_dirty: true,
        };
        self.observe(&progress, &mut state).await;
        self.progress.send_replace(progress.clone());
        tracing::info!(consumer = %self.name, ?checkpoints, "analytics consumer started");
        loop {
            let mut records = tokio::select! {
                _ = &mut shutdown => break,
                polled = consumer.poll(self.batch_size, Duration::from_millis(500)) => polled?,
            };
            let assigned = consumer.take_assigned();
            if !assigned.is_empty() {
                // Another consumer may have written these partitions' rows meanwhile.
                state.aggregator.forget();
                let Some(()) = self
                    .resume_assigned(
                        &assigned,
                        consumer.as_mut(),
                        &mut records,
                        &mut progress,
                        &mut shutdown,
                    )
                    .await?
                else {
                    break;
                };
            }
            if records.is_empty() {
                self.observe(&progress, &mut state).await;
                continue;
            }
            match self.process(&records, &mut state, &mut shutdown).await? {
                Some(checkpoint) => {
                    // A private group (a rebuild) leaves no offsets behind in the log.
                    let commit = if self.group == self.name {
                        consumer.commit(&checkpoint).await
                    } else {
                        Ok(())
                    };
                    if let Err(error) = commit {
                        tracing::warn!(consumer = %self.name, %error, "log checkpoint not committed; the store's checkpoint still holds");
                    }
                    progress.advance(&checkpoint);
                }
                None => break,
            }
            self.observe(&progress, &mut state).await;
            self.progress.send_replace(progress.clone());
        }
        tracing::info!(consumer = %self.name, "analytics consumer stopped");
        Ok(())
    }

    /// Counts one batch: decodes it (undecodable records become dead letters), reads what the
    /// aggregator lacks, folds, writes with the checkpoint. Returns the checkpoint, or `None`
    /// if shut down while the store was unavailable.
    async fn process(
        &self,
        records: &[StoredRecord],
        state: &mut State,
        shutdown: &mut (impl std::future::Future<Output = ()> + Unpin),
    ) -> Result<Option<Vec<Position>>, AnalyticsError> {
        let mut next: BTreeMap<u32, u64> = BTreeMap::new();
        let mut events: Vec<(Position, Envelope)> = Vec::with_capacity(records.len());
        for record in records {
            let end = next.entry(record.position.partition).or_insert(0);
            *end = (*end).max(record.position.offset + 1);
            match missive_events::decode(&record.payload) {
                Ok(envelope) => events.push((record.position, envelope)),
                Err(error) => {
                    missive_telemetry::metrics()
                        .projector_poison
                        .with_label_values(&[&self.name])
                        .inc();
                    tracing::error!(consumer = %self.name, position = %record.position, event_type = %record.event_type, %error, "cannot decode event; recorded as a dead letter");
                    // Durable before the checkpoint passes it: never lost.
                    self.log
                        .dead_letter(DeadLetter {
                            projection: self.name.clone(),
                            source: record.position,
                            event_type: record.event_type.clone(),
                            key: record.key.clone(),
                            payload: record.payload.clone(),
                            error: error.to_string(),
                        })
                        .await?;
                }
            }
        }
        let (keys, conversations) = state.aggregator.missing(&events);
        if !keys.is_empty() || !conversations.is_empty() {
            let Some(found) = self
                .retry("reading rollups", shutdown, || self.store.rollups(&keys))
                .await?
            else {
                return Ok(None);
            };
            let Some(firsts) = self
                .retry("reading first messages", shutdown, || {
                    self.store.first_messages(&conversations)
                })
                .await?
            else {
                return Ok(None);
            };
            state.aggregator.load(&keys, found, firsts);
        }
        let mut folded = state.aggregator.fold(&events);
        let checkpoint: Vec<Position> = next
            .into_iter()
            .map(|(partition, offset)| Position::new(partition, offset))
            .collect();
        folded.batch.checkpoint = checkpoint.clone();
        let Some(()) = self
            .retry("writing rollups", shutdown, || {
                self.store.write(&self.name, folded.batch.clone())
            })
            .await?
        else {
            return Ok(None);
        };
        state.aggregator.commit(&folded);
        self.count(&folded, state);
        Ok(Some(checkpoint))
    }

    /// Records what a written batch newly counted in the Prometheus metrics.
    fn count(&self, folded: &Folded, state: &mut State) {
        let m = metrics();
        let a = &folded.applied;
        m.messages
            .with_label_values(&["direct"])
            .inc_by(a.counts.messages);
        m.messages
            .with_label_values(&["channel"])
            .inc_by(a.counts.channel_messages);
        m.conversations_started
            .inc_by(a.counts.conversations_started);
        m.friend_requests.inc_by(a.counts.friend_requests);
        m.friend_accepts.inc_by(a.counts.friend_accepts);
        for ms in &a.delivery_ms {
            m.delivery_latency.observe(*ms as f64 / 1000.0);
        }
        for ms in &a.read_ms {
            m.read_latency.observe(*ms as f64 / 1000.0);
        }
        let now = Utc::now();
        let (today, month) = (Period::day_of(now), Period::month_of(now));
        if folded
            .batch
            .active_users
            .iter()
            .any(|(p, _)| *p == today || *p == month)
        {
            state.active_dirty = true;
        }
    }

    /// Positions partitions the group just assigned at the store's checkpoint (see the
    /// projector's): records below it were counted already and are dropped. `None` if shut
    /// down while the store was unavailable.
    async fn resume_assigned(
        &self,
        assigned: &[u32],
        consumer: &mut dyn LogConsumer,
        records: &mut Vec<StoredRecord>,
        progress: &mut Progress,
        shutdown: &mut (impl std::future::Future<Output = ()> + Unpin),
    ) -> Result<Option<()>, AnalyticsError> {
        let Some(checkpoints) = self
            .retry("reading checkpoints", shutdown, || {
                self.store.checkpoints(&self.name)
            })
            .await?
        else {
            return Ok(None);
        };
        let next_of = |partition: u32| {
            checkpoints
                .iter()
                .find(|cp| cp.partition == partition)
                .map_or(0, |cp| cp.offset)
        };
        let skipped =
            missive_log::resume_assigned(consumer, assigned, records, |p| Some(next_of(p)))?;
        if skipped > 0 {
            tracing::info!(consumer = %self.name, ?assigned, skipped, "assigned partitions resume at the store's checkpoint");
        }
        for &partition in assigned {
            progress.0.insert(partition, next_of(partition));
        }
        Ok(Some(()))
    }

    /// Runs a store call until it succeeds, retrying transient errors with backoff. `None` if
    /// `shutdown` resolved while waiting; a refusal is returned as an error.
    async fn retry<T, F, Fut>(
        &self,
        action: &'static str,
        shutdown: &mut (impl std::future::Future<Output = ()> + Unpin),
        mut call: F,
    ) -> Result<Option<T>, AnalyticsError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = crate::Result<T>>,
    {
        let mut backoff = RETRY_FIRST;
        loop {
            match call().await {
                Ok(value) => return Ok(Some(value)),
                Err(error) if error.is_transient() => {
                    tracing::warn!(consumer = %self.name, action, %error, retry_in_ms = backoff.as_millis() as u64, "analytics store unavailable; retrying");
                    tokio::select! {
                        _ = &mut *shutdown => return Ok(None),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Updates the position and lag gauges, and the DAU/MAU gauges when due.
    async fn observe(&self, progress: &Progress, state: &mut State) {
        let m = metrics();
        let stale = state
            .log_end
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= LAG_REFRESH);
        if stale && let Ok(ends) = self.log.end_positions().await {
            state.log_end = Some((Instant::now(), ends));
        }
        let ends = state
            .log_end
            .as_ref()
            .map(|(_, e)| e.as_slice())
            .unwrap_or(&[]);
        for (partition, next) in &progress.0 {
            let p = partition.to_string();
            m.position.with_label_values(&[&p]).set(*next as i64);
            if let Some(end) = ends.iter().find(|e| e.partition == *partition) {
                m.lag
                    .with_label_values(&[&p])
                    .set(end.offset.saturating_sub(*next) as i64);
            }
        }
        let since = state.active_refreshed.map(|at| at.elapsed());
        let due = match since {
            None => true,
            Some(since) => {
                (state.active_dirty && since >= ACTIVE_REFRESH_MIN) || since >= ACTIVE_REFRESH_MAX
            }
        };
        if !due {
            return;
        }
        let now = Utc::now();
        let counts = tokio::join!(
            self.store.active_users(Period::day_of(now)),
            self.store.active_users(Period::month_of(now)),
        );
        match counts {
            (Ok(day), Ok(month)) => {
                m.daily_active_users.set(day as i64);
                m.monthly_active_users.set(month as i64);
                state.active_dirty = false;
            }
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(consumer = %self.name, %error, "cannot read active users for the gauges");
            }
        }
        state.active_refreshed = Some(Instant::now());
    }
}

/// What the consumer keeps between batches.
struct State {
    aggregator: Aggregator,
    /// The log's end as last asked, for the lag gauge.
    log_end: Option<(Instant, Vec<Position>)>,
    active_refreshed: Option<Instant>,
    /// New members were written for today or this month since the gauges were read.
    active_dirty: bool,
}
