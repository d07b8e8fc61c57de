//! The production event log: Apache Kafka, through rdkafka.
//!
//! One topic per stream (`<prefix>messages`, `<prefix>social`, `<prefix>presence`,
//! `<prefix>notifications`, `<prefix>communities`). A record's
//! Kafka key is its partition key, so all events of one conversation, user or user pair sit in
//! one partition, in order; its value is the Avro single-object encoded envelope; the headers
//! `event_type` and `schema_version` let consumers route without decoding.
//!
//! The producer is idempotent with `acks=all`: [`EventLog::append`] resolves only once Kafka
//! acknowledged every record, and a failure or timeout is an error, never a silent loss.
//! Consumers join a consumer group with automatic commits and offset stores off; offsets are
//! committed only through [`LogConsumer::commit`], after the caller made its work durable.
//!
//! Positions: Kafka positions are (topic, partition, offset). A [`Position`]'s partition
//! number packs the stream and the Kafka partition as `stream_index * 65536 + partition`
//! (stream indexes follow [`Stream::ALL`]), so positions of different topics never collide.
//!
//! Unlike the embedded log, an append of several records is not atomic across partitions
//! (that would take Kafka transactions). The commands that append several events are
//! ordered so that a retry after a failed append, decided again from the read models,
//! completes them (unsubscribing, accepting an invitation: the subscription comes first),
//! with two known gaps: a join whose read marker failed leaves the channel's history unread,
//! and an invitation whose notification failed is not notified on retry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use missive_events::Stream;
use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::schema_registry::{SchemaRegistry, redacted};
use crate::{DeadLetter, EventLog, LogConsumer, LogError, Position, Record, Result, StoredRecord};

/// Header carrying the event type.
pub const HEADER_EVENT_TYPE: &str = "event_type";
/// Header carrying the schema version, as decimal text.
pub const HEADER_SCHEMA_VERSION: &str = "schema_version";
/// Dead-letter record headers.
const HEADER_PROJECTION: &str = "projection";
const HEADER_SOURCE: &str = "source_position";
const HEADER_KEY: &str = "source_key";
const HEADER_ERROR: &str = "error";
/// `dead` for a dead letter, `resolved` for its later resolution.
const HEADER_STATE: &str = "state";
/// How [`Position::partition`] packs a stream index and a Kafka partition.
const PARTITION_STRIDE: u32 = 1 << 16;

/// Where the Kafka log lives and how it talks to it.
#[derive(Clone)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    /// Prepended to each stream's name to make its topic (default `missive.`).
    pub topic_prefix: String,
    /// How long metadata, watermark and commit requests may take.
    pub request_timeout: Duration,
    /// How long the producer keeps retrying one record before the append fails.
    pub delivery_timeout: Duration,
    /// How long a consumer may be silent before the group gives its partitions to others; also
    /// how long partitions of a consumer that vanished without leaving stay unread.
    pub session_timeout: Duration,
    /// Extra librdkafka settings, applied last (e.g. security settings).
    pub client_options: Vec<(String, String)>,
    /// A Confluent Schema Registry URL: when set, records are written in the registry's wire
    /// format (`00` + 4-byte schema id) instead of single-object encoding (see
    /// [`crate::schema_registry`]). With it, records in either framing are read; without
    /// it, a registry-framed record cannot be read and becomes a dead letter that says so.
    pub schema_registry: Option<String>,
    /// Whether opening the log checks topic settings ([`check_topic_settings`]); off only for
    /// librdkafka's mock cluster, which cannot describe them.
    pub check_topic_settings: bool,
    /// How long the messages topic keeps its records (`retention.ms`), to match the read
    /// stores' message retention (`--retention-days`); `None` (the default) keeps them
    /// forever. Only [`Stream::Messages`] (direct and channel messages, read markers,
    /// deletions, receipts): the other topics always keep everything, since users,
    /// friendships, servers and channels are rebuilt from them. See [`topic_configs`].
    pub messages_retention: Option<Duration>,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Client options may hold SASL secrets and the registry URL credentials: never shown.
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic_prefix", &self.topic_prefix)
            .field("request_timeout", &self.request_timeout)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("session_timeout", &self.session_timeout)
            .field(
                "client_options",
                &self
                    .client_options
                    .iter()
                    .map(|(k, _)| k)
                    .collect::<Vec<_>>(),
            )
            .field(
                "schema_registry",
                &self.schema_registry.as_deref().map(redacted),
            )
            .field("check_topic_settings", &self.check_topic_settings)
            .field("messages_retention", &self.messages_retention)
            .finish()
    }
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            topic_prefix: "missive.".into(),
            request_timeout: Duration::from_secs(10),
            delivery_timeout: Duration::from_secs(30),
            session_timeout: Duration::from_secs(10),
            client_options: Vec::new(),
            schema_registry: None,
            check_topic_settings: true,
            messages_retention: None,
        }
    }

    /// The `retention.ms` a topic should have: the messages topic's follows
    /// [`KafkaConfig::messages_retention`], every other topic's is `-1` (forever).
    pub fn retention_ms(&self, topic: &str) -> String {
        match self.messages_retention {
            Some(period) if topic == self.topic(Stream::Messages) => {
                period.as_millis().clamp(1, i64::MAX as u128).to_string()
            }
            _ => "-1".to_owned(),
        }
    }

    /// The topic of a stream.
    pub fn topic(&self, stream: Stream) -> String {
        format!("{}{}", self.topic_prefix, stream.name())
    }

    /// The topic of events projections could not apply.
    pub fn dead_letter_topic(&self) -> String {
        format!("{}dead-letters", self.topic_prefix)
    }

    /// Every topic the log uses: the streams', then the dead letters'.
    pub fn all_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = Stream::ALL.iter().map(|s| self.topic(*s)).collect();
        topics.push(self.dead_letter_topic());
        topics
    }

    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.client_options {
            c.set(k, v);
        }
        c
    }
}

fn stream_index(stream: Stream) -> u32 {
    Stream::ALL.iter().position(|s| *s == stream).unwrap_or(0) as u32
}

/// Counts a failed append (`missive_producer_errors_total`).
fn producer_error(kind: &'static str) {
    missive_telemetry::metrics()
        .producer_errors
        .with_label_values(&[kind])
        .inc();
}

fn broker(action: &'static str) -> impl FnOnce(KafkaError) -> LogError {
    move |e| LogError::Broker {
        action,
        reason: e.to_string(),
    }
}

/// Runs a blocking librdkafka call (a broker round trip) on the blocking pool, off the async
/// workers. For a call that is always awaited to its end.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| LogError::Closed)?
}

/// Runs a blocking librdkafka call that is waited for at most `wait` (`action` names it in
/// the error past that), on a thread of its own. Not on tokio's blocking pool: a runtime's
/// shutdown waits for every task there, so a call abandoned after its timeout (a commit the
/// broker never answers) would hold the process's exit; a thread of its own ends with the
/// process.
async fn abandonable<T: Send + 'static>(
    wait: Duration,
    action: &'static str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let (done, answer) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("kafka-call".into())
        .spawn(move || {
            let _ = done.send(f());
        })
        .map_err(|e| LogError::Broker {
            action,
            reason: format!("no thread for the call: {e}"),
        })?;
    match tokio::time::timeout(wait, answer).await {
        Ok(Ok(outcome)) => outcome,
        // The call panicked.
        Ok(Err(_)) => Err(LogError::Closed),
        Err(_) => Err(LogError::Broker {
            action,
            reason: format!("no answer within {wait:?}"),
        }),
    }
}

/// Counts the records the producer sent again into `missive_producer_retries_total`, from
/// the statistics librdkafka reports.
///
/// librdkafka never retries a produce request as such (so the brokers' `txretries` leave them
/// out): it puts the records of a failed or timed-out one back on their partition's queue and
/// sends them again. Per partition, `txmsgs` counts every send and `msgs` every record once,
/// and `msgq_cnt` holds the records waiting (to be sent again, among them): `txmsgs - msgs +
/// msgq_cnt` is how many sends were repeats, less the records waiting on the broker thread's
/// own queue, which the statistics do not show. So the counter adds only what that figure
/// rises above its highest value so far, never the dips and their recovery. Exact once the
/// producer is idle; a record that expires unsent lowers the figure for good, and the
/// retries after it are counted only past the old high.
#[derive(Default)]
struct ProducerStats {
    /// Per (topic, partition): the highest count of repeated sends seen.
    high: Mutex<HashMap<(String, i32), i64>>,
}

impl ProducerStats {
    /// The sends the statistics show as new repeats.
    fn new_retries(&self, statistics: &rdkafka::statistics::Statistics) -> u64 {
        let mut high = self.high.lock();
        let mut new = 0;
        for (topic, t) in &statistics.topics {
            for (id, p) in &t.partitions {
                // -1 is librdkafka's queue of records whose partition is not known yet.
                if *id < 0 {
                    continue;
                }
                let repeats = i64::try_from(p.txmsgs).unwrap_or(i64::MAX)
                    - i64::try_from(p.msgs).unwrap_or(i64::MAX)
                    + p.msgq_cnt;
                let seen = high.entry((topic.clone(), *id)).or_insert(0);
                if repeats > *seen {
                    new += (repeats - *seen).unsigned_abs();
                    *seen = repeats;
                }
            }
        }
        new
    }
}

impl ClientContext for ProducerStats {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        let new = self.new_retries(&statistics);
        if new > 0 {
            missive_telemetry::metrics()
                .producer_retries
                .with_label_values::<&str>(&[])
                .inc_by(new);
        }
    }
}

/// The Kafka [`EventLog`].
#[derive(Clone)]
pub struct KafkaLog {
    config: Arc<KafkaConfig>,
    producer: FutureProducer<ProducerStats>,
    /// Topic names, indexed like [`Stream::ALL`].
    topics: Arc<Vec<String>>,
    /// Asks metadata and watermarks; never subscribes.
    meta: Arc<BaseConsumer>,
    /// Partition counts per topic index, learned once (they are fixed at topic creation).
    partitions: Arc<Mutex<HashMap<u32, i32>>>,
    /// Set when records are written in the Confluent Schema Registry's framing.
    registry: Option<Arc<SchemaRegistry>>,
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog")
            .field("brokers", &self.config.brokers)
            .field("topics", &self.topics)
            .finish()
    }
}

impl KafkaLog {
    /// Connects a producer and a metadata client. Topics must exist (`missive topics create`).
    pub fn connect(config: KafkaConfig) -> Result<Self> {
        let mut producer = config.client();
        producer
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .set(
                "message.timeout.ms",
                config.delivery_timeout.as_millis().to_string(),
            );
        // Statistics feed missive_producer_retries_total (ProducerStats), shown from 0.
        producer.set("statistics.interval.ms", "5000");
        missive_telemetry::metrics()
            .producer_retries
            .with_label_values::<&str>(&[]);
        for (k, v) in &config.client_options {
            producer.set(k, v);
        }
        let producer: FutureProducer<ProducerStats> = producer
            .create_with_context(ProducerStats::default())
            .map_err(broker("creating the Kafka producer"))?;
        // No group.id: it never subscribes or commits, and a group member's drop waits without
        // a bound for librdkafka to leave the group.
        let mut meta = config.client();
        meta.set("enable.auto.commit", "false");
        for (k, v) in &config.client_options {
            meta.set(k, v);
        }
        let meta: BaseConsumer = meta
            .create()
            .map_err(broker("creating the Kafka metadata client"))?;
        let topics = Stream::ALL.iter().map(|s| config.topic(*s)).collect();
        Ok(KafkaLog {
            config: Arc::new(config),
            producer,
            topics: Arc::new(topics),
            meta: Arc::new(meta),
            partitions: Arc::new(Mutex::new(HashMap::new())),
            registry: None,
        })
    }

    /// [`KafkaLog::connect`], then, when the configuration names a schema registry, registers
    /// the schemas this build writes there and writes records in the registry's framing.
    pub async fn open(config: KafkaConfig) -> Result<Self> {
        let registry = match &config.schema_registry {
            Some(url) => Some(Arc::new(
                SchemaRegistry::connect(url, config.request_timeout).await?,
            )),
            None => None,
        };
        Ok(KafkaLog {
            registry,
            ..KafkaLog::connect(config)?
        })
    }

    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// The topic and Kafka partition a [`Position::partition`] stands for.
    fn locate(&self, partition: u32) -> Result<(&str, i32)> {
        let topic = self
            .topics
            .get((partition / PARTITION_STRIDE) as usize)
            .ok_or(LogError::UnknownPartition(partition))?;
        Ok((topic, (partition % PARTITION_STRIDE) as i32))
    }

    fn position(&self, topic: &str, partition: i32, offset: i64) -> Option<Position> {
        let index = self.topics.iter().position(|t| t == topic)? as u32;
        Some(Position::new(
            index * PARTITION_STRIDE + partition as u32,
            offset.max(0) as u64,
        ))
    }

    /// How many partitions a topic has; an error names a missing topic.
    fn partition_count(&self, topic: &str) -> Result<i32> {
        let metadata = self
            .meta
            .fetch_metadata(Some(topic), self.config.request_timeout)
            .map_err(broker("reading topic metadata"))?;
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
            .filter(|n| *n > 0)
            .ok_or_else(|| LogError::MissingTopic(topic.to_owned()))
    }

    /// Partition counts of every topic; an error names a missing topic.
    fn partition_counts(&self) -> Result<Vec<(u32, i32)>> {
        let mut known = self.partitions.lock().clone();
        for (index, topic) in self.topics.iter().enumerate() {
            let index = index as u32;
            if known.contains_key(&index) {
                continue;
            }
            known.insert(index, self.partition_count(topic)?);
        }
        *self.partitions.lock() = known.clone();
        let mut counts: Vec<(u32, i32)> = known.into_iter().collect();
        counts.sort();
        Ok(counts)
    }

    /// Every (topic, partition) of the log.
    fn all_partitions(&self) -> Result<Vec<(String, i32)>> {
        Ok(self
            .partition_counts()?
            .into_iter()
            .flat_map(|(index, count)| {
                let topic = self.topics[index as usize].clone();
                (0..count).map(move |p| (topic.clone(), p))
            })
            .collect())
    }

    /// Dead-letter records are keyed by projection and source, so a letter and its resolution
    /// share a partition and the later one wins.
    async fn send_dead_letter_record(
        &self,
        projection: &str,
        source: Position,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<()> {
        let topic = self.config.dead_letter_topic();
        let key = format!("{projection}/{source}");
        let record = FutureRecord::to(&topic)
            .key(&key)
            .payload(payload)
            .headers(headers);
        match self
            .producer
            .send(record, self.config.delivery_timeout)
            .await
        {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(broker("recording a dead letter")(e)),
        }
    }

    /// Reads the dead-letter topic from its start to its current end and keeps, per key, the
    /// latest record if it is not a resolution.
    fn read_dead_letters(&self) -> Result<Vec<DeadLetter>> {
        let topic = self.config.dead_letter_topic();
        let timeout = self.config.request_timeout;
        let partitions = self.partition_count(&topic)?;
        let mut ends = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            let (low, high) = self
                .meta
                .fetch_watermarks(&topic, p, timeout)
                .map_err(broker("reading the end of the dead letters"))?;
            if high > low {
                ends.insert(p, high);
                assignment
                    .add_partition_offset(&topic, p, Offset::Offset(low))
                    .map_err(broker("preparing a dead-letter read"))?;
            }
        }
        let mut order: Vec<String> = Vec::new();
        let mut latest: HashMap<String, Option<DeadLetter>> = HashMap::new();
        if ends.is_empty() {
            return Ok(Vec::new());
        }
        let reader: BaseConsumer = self
            .config
            .client()
            // librdkafka assigns partitions only to a consumer with a group; this one never
            // joins it (no subscribe), so its close does not wait on a rebalance.
            .set("group.id", "missive-dead-letter-reader")
            .set("enable.auto.commit", "false")
            .create()
            .map_err(broker("creating a dead-letter reader"))?;
        reader
            .assign(&assignment)
            .map_err(broker("reading the dead letters"))?;
        let deadline = Instant::now() + timeout;
        while !ends.is_empty() && Instant::now() < deadline {
            let Some(message) = reader.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message.map_err(broker("reading the dead letters"))?;
            if ends
                .get(&message.partition())
                .is_some_and(|end| message.offset() + 1 >= *end)
            {
                ends.remove(&message.partition());
            }
            let key = message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            let mut fields: HashMap<&str, String> = HashMap::new();
            if let Some(headers) = message.headers() {
                for h in headers.iter() {
                    if let Some(v) = h.value.and_then(|v| std::str::from_utf8(v).ok()) {
                        fields.insert(h.key, v.to_owned());
                    }
                }
            }
            let letter = (fields.get(HEADER_STATE).map(String::as_str) == Some("dead"))
                .then(|| {
                    Some(DeadLetter {
                        projection: fields.get(HEADER_PROJECTION)?.clone(),
                        source: fields.get(HEADER_SOURCE)?.parse().ok()?,
                        event_type: fields.get(HEADER_EVENT_TYPE).cloned().unwrap_or_default(),
                        key: fields.get(HEADER_KEY).cloned().unwrap_or_default(),
                        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                        error: fields.get(HEADER_ERROR).cloned().unwrap_or_default(),
                    })
                })
                .flatten();
            if !latest.contains_key(&key) {
                order.push(key.clone());
            }
            latest.insert(key, letter);
        }
        if !ends.is_empty() {
            return Err(LogError::Broker {
                action: "reading the dead letters",
                reason: format!("did not reach the end within {} ms", timeout.as_millis()),
            });
        }
        Ok(order
            .into_iter()
            .filter_map(|k| latest.remove(&k).flatten())
            .collect())
    }

    fn end_positions_blocking(&self) -> Result<Vec<Position>> {
        self.watermarks_blocking(|(_, high)| high)
    }

    /// Per partition, one of its watermarks (`(low, high)`: the first offset it holds, the
    /// next it writes).
    fn watermarks_blocking(&self, pick: impl Fn((i64, i64)) -> i64) -> Result<Vec<Position>> {
        let mut out = Vec::new();
        for (topic, p) in self.all_partitions()? {
            let marks = self
                .meta
                .fetch_watermarks(&topic, p, self.config.request_timeout)
                .map_err(broker("reading the watermarks of a partition"))?;
            out.extend(self.position(&topic, p, pick(marks)));
        }
        Ok(out)
    }
}

#[async_trait]
impl EventLog for KafkaLog {
    async fn append(&self, records: Vec<Record>) -> Result<Vec<Position>> {
        let mut framed = Vec::new();
        if let Some(registry) = &self.registry {
            for record in &records {
                framed.push(registry.to_registry_framing(&record.payload).await?);
            }
        }
        // Enqueue every record first, in order (send_result does not wait), then wait for all
        // acknowledgements: records of one key keep their order and share producer batches.
        let mut pending = Vec::with_capacity(records.len());
        for (i, record) in records.iter().enumerate() {
            let topic = &self.topics[stream_index(record.stream) as usize];
            let version = record.schema_version.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: HEADER_EVENT_TYPE,
                    value: Some(record.event_type),
                })
                .insert(Header {
                    key: HEADER_SCHEMA_VERSION,
                    value: Some(&version),
                });
            let future = FutureRecord::to(topic)
                .key(&record.key)
                .payload(framed.get(i).unwrap_or(&record.payload))
                .headers(headers);
            match self.producer.send_result(future) {
                Ok(delivery) => pending.push((topic, delivery)),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer_error("queue_full");
                    return Err(LogError::Overloaded {
                        pending: pending.len(),
                    });
                }
                Err((e, _)) => {
                    producer_error("enqueue");
                    return Err(broker("enqueueing a record")(e));
                }
            }
        }
        let mut positions = Vec::with_capacity(pending.len());
        for (topic, delivery) in pending {
            match delivery.await {
                Ok(Ok(d)) => {
                    positions.extend(self.position(topic, d.partition, d.offset));
                }
                Ok(Err((e, _))) => {
                    producer_error("delivery");
                    return Err(broker("delivering a record")(e));
                }
                Err(_) => return Err(LogError::Closed),
            }
        }
        let m = missive_telemetry::metrics();
        // `topic`: the stream's name (the topic without its prefix), as
        // `missive_events_consumed_total` labels it.
        for record in &records {
            m.events_appended
                .with_label_values(&[record.event_type, record.stream.name()])
                .inc();
        }
        Ok(positions)
    }

    async fn dead_letter(&self, letter: DeadLetter) -> Result<()> {
        let source = letter.source.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: HEADER_STATE,
                value: Some("dead"),
            })
            .insert(Header {
                key: HEADER_PROJECTION,
                value: Some(&letter.projection),
            })
            .insert(Header {
                key: HEADER_SOURCE,
                value: Some(&source),
            })
            .insert(Header {
                key: HEADER_EVENT_TYPE,
                value: Some(&letter.event_type),
            })
            .insert(Header {
                key: HEADER_KEY,
                value: Some(&letter.key),
            })
            .insert(Header {
                key: HEADER_ERROR,
                value: Some(&letter.error),
            });
        self.send_dead_letter_record(&letter.projection, letter.source, &letter.payload, headers)
            .await
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        let log = self.clone();
        blocking(move || log.read_dead_letters()).await
    }

    async fn resolve_dead_letter(&self, projection: &str, source: Position) -> Result<()> {
        let headers = OwnedHeaders::new().insert(Header {
            key: HEADER_STATE,
            value: Some("resolved"),
        });
        self.send_dead_letter_record(projection, source, &[], headers)
            .await
    }

    async fn end_positions(&self) -> Result<Vec<Position>> {
        let log = self.clone();
        blocking(move || log.end_positions_blocking()).await
    }

    async fn start_positions(&self) -> Result<Vec<Position>> {
        let log = self.clone();
        blocking(move || log.watermarks_blocking(|(low, _)| low)).await
    }

    async fn flush(&self, wait: Duration) -> Result<()> {
        let producer = self.producer.clone();
        blocking(move || {
            producer
                .flush(wait)
                .map_err(broker("flushing the producer's queue"))
        })
        .await
    }

    async fn consumer(&self, group: &str) -> Result<Box<dyn LogConsumer>> {
        let log = self.clone();
        let group = group.to_owned();
        blocking(move || -> Result<Box<dyn LogConsumer>> {
            log.partition_counts()?;
            let pending = Arc::new(Mutex::new(HashMap::new()));
            let assigned = Arc::new(Mutex::new(Vec::new()));
            let revoked = Arc::new(Mutex::new(Vec::new()));
            let mut config = log.config.client();
            config
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .set("enable.partition.eof", "false")
                .set(
                    "session.timeout.ms",
                    log.config.session_timeout.as_millis().to_string(),
                )
                .set(
                    "heartbeat.interval.ms",
                    (log.config.session_timeout.as_millis() / 3).to_string(),
                );
            for (k, v) in &log.config.client_options {
                config.set(k, v);
            }
            let consumer: StreamConsumer<SeekOnAssign> = config
                .create_with_context(SeekOnAssign {
                    group: group.clone(),
                    pending: pending.clone(),
                    assigned: assigned.clone(),
                    revoked: revoked.clone(),
                })
                .map_err(broker("creating a Kafka consumer"))?;
            let topics: Vec<&str> = log.topics.iter().map(String::as_str).collect();
            consumer
                .subscribe(&topics)
                .map_err(broker("subscribing to the log's topics"))?;
            let close_wait = log.config.request_timeout;
            Ok(Box::new(KafkaConsumer {
                log,
                consumer: GroupMember {
                    consumer: Some(Arc::new(consumer)),
                    close_wait,
                },
                pending,
                assigned,
                revoked,
            }))
        })
        .await
    }
}

/// Seeks waiting for their partition to be assigned to this consumer: (topic, partition) to
/// the next offset to read.
type PendingSeeks = Arc<Mutex<HashMap<(String, i32), i64>>>;

/// Applies pending seeks when partitions are assigned, by assigning them again with explicit
/// offsets (seeking a partition inside the rebalance callback can fail: it is not fetching
/// yet).
struct SeekOnAssign {
    /// The consumer group, for the rebalance metric.
    group: String,
    pending: PendingSeeks,
    /// Every partition assigned since [`LogConsumer::take_assigned`] last took them.
    assigned: Arc<Mutex<Vec<(String, i32)>>>,
    /// Partitions revoked during the current poll: records of them it already holds are
    /// dropped, since the partition's next owner reads them again.
    revoked: Arc<Mutex<Vec<(String, i32)>>>,
}

impl ClientContext for SeekOnAssign {}

impl ConsumerContext for SeekOnAssign {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            self.revoked.lock().extend(
                revoked
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition())),
            );
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(assigned) = rebalance else {
            return;
        };
        missive_telemetry::metrics()
            .kafka_rebalances
            .with_label_values(&[&self.group])
            .inc();
        let mut pending = self.pending.lock();
        let mut wanted = TopicPartitionList::new();
        let mut any = false;
        let mut newly = self.assigned.lock();
        for elem in assigned.elements() {
            let key = (elem.topic().to_owned(), elem.partition());
            newly.push(key.clone());
            match pending.remove(&key) {
                Some(next) => {
                    any = true;
                    let _ = wanted.add_partition_offset(&key.0, key.1, Offset::Offset(next));
                }
                None => {
                    let _ = wanted.add_partition_offset(&key.0, key.1, elem.offset());
                }
            }
        }
        if any && let Err(error) = consumer.assign(&wanted) {
            tracing::error!(%error, "could not apply seeks to newly assigned partitions");
        }
    }
}

/// A consumer in a group, whose drop (leaving the group) is bounded.
///
/// rdkafka's drop of a group consumer polls until librdkafka reports it closed, with no
/// bound: a consumer closed in the middle of a rebalance can wait there for good (seen with
/// the mock cluster; rust-rdkafka#509), holding a runtime worker and the process's shutdown.
/// Here the close runs on a thread of its own, waited for at most `close_wait`; past that the
/// thread is left to finish (or to end with the process).
struct GroupMember {
    consumer: Option<Arc<StreamConsumer<SeekOnAssign>>>,
    close_wait: Duration,
}

impl std::ops::Deref for GroupMember {
    type Target = Arc<StreamConsumer<SeekOnAssign>>;

    fn deref(&self) -> &Self::Target {
        self.consumer.as_ref().expect("taken only on drop")
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        let (closed, wait) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("kafka-close".into())
            .spawn(move || {
                drop(consumer);
                let _ = closed.send(());
            });
        if spawned.is_ok() && wait.recv_timeout(self.close_wait).is_err() {
            tracing::warn!(
                wait = ?self.close_wait,
                "a Kafka consumer did not leave its group in time; it finishes in the background"
            );
        }
    }
}

struct KafkaConsumer {
    log: KafkaLog,
    consumer: GroupMember,
    pending: PendingSeeks,
    assigned: Arc<Mutex<Vec<(String, i32)>>>,
    revoked: Arc<Mutex<Vec<(String, i32)>>>,
}

impl KafkaConsumer {
    /// Retries seeks that failed on an assigned partition (librdkafka refuses a seek until the
    /// partition is fetching); until then [`LogConsumer::poll`] skips that partition.
    fn retry_pending_seeks(&self) {
        if self.pending.lock().is_empty() {
            return;
        }
        // One assignment read per poll: seeks of partitions other consumers own wait here too.
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let waiting: Vec<((String, i32), i64)> = self
            .pending
            .lock()
            .iter()
            .filter(|((topic, p), _)| {
                assignment
                    .elements()
                    .iter()
                    .any(|e| e.topic() == topic && e.partition() == *p)
            })
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for ((topic, partition), next) in waiting {
            let done = self
                .consumer
                .seek(
                    &topic,
                    partition,
                    Offset::Offset(next),
                    Duration::from_millis(100),
                )
                .is_ok();
            if done {
                self.pending.lock().remove(&(topic, partition));
            }
        }
    }

    /// The [`Position::partition`] numbers of Kafka (topic, partition) pairs.
    fn packed(&self, partitions: Vec<(String, i32)>) -> Vec<u32> {
        partitions
            .into_iter()
            .filter_map(|(topic, p)| self.log.position(&topic, p, 0))
            .map(|p| p.partition)
            .collect()
    }

    fn is_assigned(&self, topic: &str, partition: i32) -> bool {
        self.consumer.assignment().is_ok_and(|tpl| {
            tpl.elements()
                .iter()
                .any(|e| e.topic() == topic && e.partition() == partition)
        })
    }

    fn stored(&self, message: &impl Message) -> Option<StoredRecord> {
        let position = self
            .log
            .position(message.topic(), message.partition(), message.offset())?;
        let stream = Stream::ALL[(position.partition / PARTITION_STRIDE) as usize];
        let mut event_type = String::new();
        let mut schema_version = 0;
        if let Some(headers) = message.headers() {
            for h in headers.iter() {
                let value = h.value.and_then(|v| std::str::from_utf8(v).ok());
                match (h.key, value) {
                    (HEADER_EVENT_TYPE, Some(v)) => event_type = v.to_owned(),
                    (HEADER_SCHEMA_VERSION, Some(v)) => schema_version = v.parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        Some(StoredRecord {
            position,
            stream,
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            event_type,
            schema_version,
            payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        })
    }
}

#[async_trait]
impl LogConsumer for KafkaConsumer {
    fn seek(&mut self, next: Position) -> Result<()> {
        let (topic, partition) = self.log.locate(next.partition)?;
        let offset = Offset::Offset(next.offset as i64);
        if self.is_assigned(topic, partition)
            && self
                .consumer
                .seek(topic, partition, offset, self.log.config.request_timeout)
                .is_ok()
        {
            return Ok(());
        }
        // Not (yet) ours: applied when the group assigns it to this consumer.
        self.pending
            .lock()
            .insert((topic.to_owned(), partition), next.offset as i64);
        Ok(())
    }

    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<StoredRecord>> {
        self.retry_pending_seeks();
        self.revoked.lock().clear();
        let deadline = Instant::now() + timeout;
        let mut out: Vec<StoredRecord> = Vec::new();
        while out.len() < max {
            // Wait for the first record; after that take only what is already buffered.
            let wait = if out.is_empty() {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::from_millis(1)
            };
            let message = match tokio::time::timeout(wait, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Ok(m)) => m,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka consumer error");
                    if Instant::now() >= deadline {
                        break;
                    }
                    continue;
                }
            };
            // Records of a partition still waiting for a seek are from before it: skip.
            if self
                .pending
                .lock()
                .contains_key(&(message.topic().to_owned(), message.partition()))
            {
                continue;
            }
            out.extend(self.stored(&message));
        }
        // Records of a partition revoked meanwhile belong to its next owner, which reads them
        // from where the store (or the group) says: applying them here too could race it. If
        // the partition came straight back, the caller learns it from take_assigned and
        // positions it afresh, so its records of this poll are dropped all the same.
        let revoked = std::mem::take(&mut *self.revoked.lock());
        if !revoked.is_empty() {
            let gone = self.packed(revoked);
            out.retain(|r| !gone.contains(&r.position.partition));
        }
        if let Some(registry) = &self.log.registry {
            for record in &mut out {
                let payload = std::mem::take(&mut record.payload);
                record.payload = registry.to_single_object(payload).await;
            }
        }
        Ok(out)
    }

    async fn commit(&mut self, next: &[Position]) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for p in next {
            let (topic, partition) = self.log.locate(p.partition)?;
            tpl.add_partition_offset(topic, partition, Offset::Offset(p.offset as i64))
                .map_err(broker("preparing a commit"))?;
        }
        // A synchronous commit is a broker round trip: keep it off the async workers, and
        // bound the wait (librdkafka's own bound is socket.timeout.ms, a minute by default).
        const ACTION: &str = "committing consumer offsets";
        let consumer = Arc::clone(&self.consumer);
        abandonable(self.log.config.request_timeout, ACTION, move || {
            consumer
                .commit(&tpl, CommitMode::Sync)
                .map_err(broker(ACTION))
        })
        .await
    }

    fn take_assigned(&mut self) -> Vec<u32> {
        let assigned = std::mem::take(&mut *self.assigned.lock());
        self.packed(assigned)
    }

    async fn committed(&self) -> Result<Vec<Position>> {
        let mut tpl = TopicPartitionList::new();
        for (topic, p) in self.log.all_partitions()? {
            tpl.add_partition(&topic, p);
        }
        let consumer = Arc::clone(&self.consumer);
        let timeout = self.log.config.request_timeout;
        let committed = blocking(move || {
            consumer
                .committed_offsets(tpl, timeout)
                .map_err(broker("reading committed offsets"))
        })
        .await?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => self.log.position(e.topic(), e.partition(), o),
                _ => None,
            })
            .collect())
    }
}

/// What [`check_topic_settings`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicSettings {
    /// Every topic keeps its records as the log needs.
    Fine,
    /// The broker cannot describe topic configurations (librdkafka's mock cluster, or an ACL
    /// that forbids it); the settings are unchecked.
    Unknown(String),
    /// Settings that are allowed but worth knowing, one line each (e.g. a finite retention).
    Warnings(Vec<String>),
}

/// Checks the settings of the log's topics: compaction is refused (it deletes older events
/// of a key, which projections need to rebuild), a retention other than the expected one
/// ([`KafkaConfig::retention_ms`]: forever, or on the messages topic the configured
/// [`KafkaConfig::messages_retention`]) is reported: a shorter one means read models can only
/// be rebuilt from what is left, a longer one keeps messages past the retention.
pub async fn check_topic_settings(config: &KafkaConfig) -> Result<TopicSettings> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = config
        .client()
        .create()
        .map_err(broker("creating the Kafka admin client"))?;
    let names = config.all_topics();
    let specifiers: Vec<ResourceSpecifier<'_>> = names
        .iter()
        .map(|name| ResourceSpecifier::Topic(name))
        .collect();
    let options = AdminOptions::new().request_timeout(Some(config.request_timeout));
    let results = match admin.describe_configs(&specifiers, &options).await {
        Ok(results) => results,
        Err(e) => return Ok(TopicSettings::Unknown(e.to_string())),
    };
    let mut warnings = Vec::new();
    let mut compacted = Vec::new();
    for result in results {
        let resource = match result {
            Ok(resource) => resource,
            Err(code) => return Ok(TopicSettings::Unknown(code.to_string())),
        };
        let rdkafka::admin::OwnedResourceSpecifier::Topic(name) = &resource.specifier else {
            continue;
        };
        let value = |key: &str| resource.get(key).and_then(|e| e.value.clone());
        if value("cleanup.policy").is_some_and(|p| p.contains("compact")) {
            compacted.push(name.clone());
        }
        let expected = config.retention_ms(name);
        match value("retention.ms") {
            Some(ms) if ms == expected => {}
            None if expected == "-1" => {}
            Some(ms) if expected != "-1" => warnings.push(format!(
                "topic {name} keeps records for retention.ms={ms}, but the message retention is \
                 {expected} ms: set retention.ms={expected} on it (kafka-configs --alter \
                 --add-config), or the log keeps messages longer or shorter than the read models"
            )),
            _ if expected != "-1" => warnings.push(format!(
                "topic {name} keeps records forever, but the message retention is {expected} \
                 ms: set retention.ms={expected} on it (kafka-configs --alter --add-config)"
            )),
            Some(ms) => warnings.push(format!(
                "topic {name} deletes records past retention.ms={ms}: read models can only be \
                 rebuilt from what is left (`missive topics create` sets -1, keep forever)"
            )),
            None => {}
        }
        match value("retention.bytes").as_deref() {
            None | Some("-1") => {}
            Some(limit) => warnings.push(format!(
                "topic {name} deletes records past retention.bytes={limit}: read models can only \
                 be rebuilt from what is left (set retention.bytes=-1, no size limit)"
            )),
        }
    }
    if !compacted.is_empty() {
        return Err(LogError::Broker {
            action: "checking topic settings",
            reason: format!(
                "{compacted:?} have cleanup.policy=compact, which deletes older events of a key \
                 that projections need; set cleanup.policy=delete"
            ),
        });
    }
    Ok(if warnings.is_empty() {
        TopicSettings::Fine
    } else {
        TopicSettings::Warnings(warnings)
    })
}

/// The settings [`create_topics`] gives each of the log's topics, by topic name:
/// `cleanup.policy=delete` and `retention.ms` from [`KafkaConfig::retention_ms`].
pub fn topic_configs(config: &KafkaConfig) -> Vec<(String, Vec<(&'static str, String)>)> {
    config
        .all_topics()
        .into_iter()
        .map(|name| {
            let retention = config.retention_ms(&name);
            let mut settings = vec![("cleanup.policy", "delete".to_owned())];
            // Kafka deletes whole segments once their newest record is past retention.ms:
            // segments of at most a day (or the retention, if shorter) keep messages at most
            // that much longer than the read models do (the default segment is a week).
            if retention != "-1" {
                let day: u128 = 86_400_000;
                let segment = retention.parse::<u128>().unwrap_or(day).min(day);
                settings.push(("segment.ms", segment.to_string()));
            }
            settings.push(("retention.ms", retention));
            (name, settings)
        })
        .collect()
}

/// Creates the log's topics (an existing topic is left as it is, settings included) and
/// returns their names.
///
/// Every topic keeps its records forever (`retention.ms=-1`, `cleanup.policy=delete`):
/// projections may be rebuilt from offset 0 at any time, so the log is never compacted or
/// expired away. The one exception is a finite [`KafkaConfig::messages_retention`]: the
/// messages topic (direct and channel messages, read markers, deletions, delivery receipts)
/// then keeps records for that long (Kafka deletes whole segments, of a day at most, so up to
/// a day longer), matching the read stores' message retention (`missive_store::Retention`).
/// A replay after records were deleted rebuilds conversations and channels from the first
/// message left: a conversation whose messages are all gone from the log is no longer listed,
/// and numbers start again at 1.
///
/// The partition count is fixed here: changing it later would move keys to other partitions
/// and break their order; to grow, create a new topic set and replay into it.
pub async fn create_topics(
    config: &KafkaConfig,
    partitions: i32,
    replication: i32,
) -> Result<Vec<String>> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = config
        .client()
        .create()
        .map_err(broker("creating the Kafka admin client"))?;
    let configs = topic_configs(config);
    let topics: Vec<NewTopic<'_>> = configs
        .iter()
        .map(|(name, settings)| {
            settings.iter().fold(
                NewTopic::new(name, partitions, TopicReplication::Fixed(replication)),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(config.request_timeout));
    let results = admin
        .create_topics(&topics, &options)
        .await
        .map_err(broker("creating topics"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(LogError::Broker {
                    action: "creating topics",
                    reason: format!("{topic}: {code}"),
                });
            }
        }
    }
    Ok(configs.into_iter().map(|(name, _)| name).collect())
}

/// A Kafka cluster for tests: the one named by `MISSIVE_TEST_KAFKA=host:port`, or else
/// librdkafka's mock cluster, a real Kafka-protocol broker inside the test process.
pub mod testing {
    use std::sync::mpsc;

    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    use super::{KafkaConfig, create_topics};
    /// Partitions per topic in tests: several, so ordering and group splits are exercised.
    pub const TEST_PARTITIONS: i32 = 4;

    enum MockOp {
        CreateTopic(String, i32, mpsc::Sender<Result<(), String>>),
        /// The next produce requests, one per error, fail with it.
        FailProduces(Vec<RDKafkaRespErr>, mpsc::Sender<()>),
    }

    /// Owns a mock cluster on a thread of its own (the cluster is neither `Send` nor `Sync`),
    /// so tests can share the handle across tasks. Dropping the handle stops the cluster.
    #[derive(Debug)]
    pub struct MockHost {
        ops: Option<mpsc::Sender<MockOp>>,
        bootstrap: String,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl MockHost {
        fn start() -> Self {
            let (ops, rx) = mpsc::channel::<MockOp>();
            let (ready, bootstrap) = mpsc::channel();
            let thread = std::thread::Builder::new()
                .name("kafka-mock".into())
                .spawn(move || {
                    let cluster = MockCluster::new(1).expect("librdkafka mock cluster");
                    let _ = ready.send(cluster.bootstrap_servers());
                    // Runs until every handle is gone.
                    while let Ok(op) = rx.recv() {
                        match op {
                            MockOp::CreateTopic(name, partitions, done) => {
                                let _ = done.send(
                                    cluster
                                        .create_topic(&name, partitions, 1)
                                        .map_err(|e| e.to_string()),
                                );
                            }
                            MockOp::FailProduces(errors, done) => {
                                cluster.request_errors(RDKafkaApiKey::Produce, &errors);
                                let _ = done.send(());
                            }
                        }
                    }
                })
                .expect("mock cluster thread");
            MockHost {
                ops: Some(ops),
                bootstrap: bootstrap.recv().expect("mock cluster started"),
                thread: Some(thread),
            }
        }

        /// Makes the next produce requests fail, one per error in `errors`.
        pub fn fail_produces(&self, errors: &[RDKafkaRespErr]) {
            let (done, result) = mpsc::channel();
            self.ops
                .as_ref()
                .expect("running")
                .send(MockOp::FailProduces(errors.to_vec(), done))
                .expect("mock cluster thread alive");
            result.recv().expect("mock cluster answered");
        }

        fn create_topic(&self, name: &str, partitions: i32) {
            let (done, result) = mpsc::channel();
            self.ops
                .as_ref()
                .expect("running")
                .send(MockOp::CreateTopic(name.to_owned(), partitions, done))
                .expect("mock cluster thread alive");
            result
                .recv()
                .expect("mock cluster answered")
                .expect("mock topic created");
        }
    }

    impl Drop for MockHost {
        fn drop(&mut self) {
            self.ops.take();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    #[derive(Debug)]
    pub enum TestCluster {
        Mock(MockHost),
        Real(String),
    }

    impl TestCluster {
        pub fn start() -> Self {
            match std::env::var("MISSIVE_TEST_KAFKA") {
                Ok(brokers) if !brokers.is_empty() => TestCluster::Real(brokers),
                _ => TestCluster::Mock(MockHost::start()),
            }
        }

        pub fn brokers(&self) -> String {
            match self {
                TestCluster::Mock(m) => m.bootstrap.clone(),
                TestCluster::Real(b) => b.clone(),
            }
        }

        /// A configuration with a fresh topic prefix, its topics created.
        pub async fn fresh_log_config(&self) -> KafkaConfig {
            let mut config = KafkaConfig::new(self.brokers());
            config.topic_prefix = format!("test-{}.", unique());
            // The smallest session brokers accept by default: a consumer dropped by a test
            // gives its partitions back quickly even where the broker misses its leaving.
            config.session_timeout = std::time::Duration::from_secs(6);
            match self {
                TestCluster::Mock(m) => {
                    config.check_topic_settings = false;
                    for topic in config.all_topics() {
                        m.create_topic(&topic, TEST_PARTITIONS);
                    }
                }
                TestCluster::Real(_) => {
                    create_topics(&config, TEST_PARTITIONS, 1)
                        .await
                        .expect("create test topics");
                }
            }
            config
        }
    }

    /// A name part unique across processes and calls.
    fn unique() -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!(
            "{}-{nanos:x}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A broker call abandoned after its timeout does not hold the runtime's shutdown (on
    /// tokio's blocking pool it would: the runtime's drop would never return).
    #[test]
    fn an_abandoned_call_does_not_hold_shutdown() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .expect("runtime");
        let (release, held) = std::sync::mpsc::channel::<()>();
        let outcome = runtime.block_on(abandonable(
            Duration::from_millis(20),
            "waiting",
            move || {
                let _ = held.recv();
                Ok(())
            },
        ));
        assert!(
            matches!(&outcome, Err(LogError::Broker { reason, .. }) if reason.contains("no answer")),
            "{outcome:?}"
        );
        // Dropped on another thread, so that a regression fails here instead of hanging.
        let (dropped, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(runtime);
            let _ = dropped.send(());
        });
        let ended = done.recv_timeout(Duration::from_secs(10));
        drop(release);
        assert!(
            ended.is_ok(),
            "the runtime's drop waited for the abandoned call"
        );
    }

    #[tokio::test]
    async fn an_abandonable_call_returns_its_result_and_a_panic_is_closed() {
        let wait = Duration::from_secs(10);
        assert_eq!(abandonable(wait, "adding", || Ok(7)).await.ok(), Some(7));
        let panicked: Result<()> = abandonable(wait, "panicking", || panic!("boom")).await;
        assert!(matches!(panicked, Err(LogError::Closed)));
    }
}
