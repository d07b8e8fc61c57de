//! The event log: Missive's source of truth.
//!
//! Commands append immutable records; projectors and other consumers read them back in order.
//! [`EventLog`] is the port; [`sqlite::SqliteLog`] is the embedded adapter (the default), and the
//! Kafka adapter implements the same trait. [`contract`] is the test suite every adapter must pass.
//!
//! Positions follow Kafka's conventions so that every adapter can honour them: a log has one or
//! more partitions, each an append-only sequence numbered from offset 0; a record's
//! [`Position`] is its partition and offset; a committed checkpoint is the *next* offset to read.
//!
//! # Layout
//! - [`sqlite`]: the embedded adapter (SQLite in WAL mode, group commit).
//! - `kafka` (feature `kafka`, on by default): the production adapter on rdkafka, and
//!   `schema_registry`, its optional Confluent Schema Registry wire format.
//! - [`contract`]: the port contract suite, generic over any [`EventLog`].
//! - [`scan`]: bounded, private reads of the log for tools (dump, tail, replay).

pub mod contract;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod scan;
#[cfg(feature = "kafka")]
pub mod schema_registry;
pub mod sqlite;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use missive_events::Stream;

/// Where a record sits in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub partition: u32,
    pub offset: u64,
}

impl Position {
    pub const fn new(partition: u32, offset: u64) -> Self {
        Position { partition, offset }
    }
}

/// Positions travel through the API as `"<partition>:<offset>"`.
impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.partition, self.offset)
    }
}

impl FromStr for Position {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const RULE: &str = "a log position is \"<partition>:<offset>\", both non-negative integers";
        let (p, o) = s.split_once(':').ok_or(RULE)?;
        Ok(Position {
            partition: p.parse().map_err(|_| RULE)?,
            offset: o.parse().map_err(|_| RULE)?,
        })
    }
}

/// Positions as offsets by partition (a checkpoint, a log's end): the shape bounds and
/// progress are kept in.
pub fn by_partition(
    positions: impl IntoIterator<Item = Position>,
) -> std::collections::BTreeMap<u32, u64> {
    positions
        .into_iter()
        .map(|p| (p.partition, p.offset))
        .collect()
}

/// A record to append: an encoded event with the metadata consumers route by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub stream: Stream,
    /// Records with the same key keep their relative order.
    pub key: String,
    pub event_type: &'static str,
    pub schema_version: u32,
    /// The Avro single-object encoded envelope.
    pub payload: Vec<u8>,
}

/// A record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub position: Position,
    pub stream: Stream,
    pub key: String,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: Vec<u8>,
}

/// An event a projection could not apply, kept with why and where it came from so that it is
/// neither lost nor blocking its partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The projection (consumer group) that failed.
    pub projection: String,
    /// Where the event sits in the log.
    pub source: Position,
    pub event_type: String,
    pub key: String,
    /// The record's value, as it was read.
    pub payload: Vec<u8>,
    /// What went wrong.
    pub error: String,
}

/// What can go wrong with the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Too many appends are waiting; the caller should retry later (HTTP 503).
    #[error("the event log is overloaded: {pending} appends are waiting; retry shortly")]
    Overloaded { pending: usize },
    /// The log was shut down or its writer stopped.
    #[error("the event log is closed")]
    Closed,
    #[error("event log storage failed while {action}")]
    Storage {
        action: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// A group commit failed; none of its appends were stored.
    #[error("the event log could not commit appended events: {0}")]
    CommitFailed(String),
    #[error("the event log holds a record it cannot read at {position}: {reason}")]
    Corrupt { position: Position, reason: String },
    #[error("no partition {0} in this log")]
    UnknownPartition(u32),
    /// The broker did not do what was asked (unreachable, timed out, refused).
    #[error("the Kafka cluster failed while {action}: {reason}")]
    Broker {
        action: &'static str,
        reason: String,
    },
    /// The Confluent Schema Registry did not answer as needed (unreachable, refused a schema).
    #[error("the schema registry failed while {action}: {reason}")]
    SchemaRegistry {
        action: &'static str,
        reason: String,
    },
    /// A topic the log needs does not exist.
    #[error("the topic {0:?} does not exist: create the topics with `missive topics create`")]
    MissingTopic(String),
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// The event log port. Implementations: [`sqlite::SqliteLog`] (embedded), Kafka.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends records and resolves once every one of them is durable, with their positions in
    /// input order. Records with the same key are stored in input order, and appends issued one
    /// after another for the same key keep that order. Either all records of a call are
    /// appended or the call fails.
    async fn append(&self, records: Vec<Record>) -> Result<Vec<Position>>;

    /// The next offset to be written in every partition (the log's end).
    async fn end_positions(&self) -> Result<Vec<Position>>;

    /// The first offset every partition still holds: records before it were deleted by the
    /// log's retention (a Kafka topic's `retention.ms`). 0 where nothing was deleted, and
    /// always for a log that keeps everything (the default).
    async fn start_positions(&self) -> Result<Vec<Position>> {
        Ok(self
            .end_positions()
            .await?
            .into_iter()
            .map(|end| Position::new(end.partition, 0))
            .collect())
    }

    /// A consumer in a consumer group. Its read position starts at the group's committed
    /// checkpoint, or at the start of the log when the group has none.
    async fn consumer(&self, group: &str) -> Result<Box<dyn LogConsumer>>;

    /// Records a dead letter durably (recording the same source and projection twice keeps
    /// one). Embedded: a table; Kafka: the dead-letter topic.
    async fn dead_letter(&self, letter: DeadLetter) -> Result<()>;

    /// The dead letters not yet resolved (in no particular order across partitions).
    async fn dead_letters(&self) -> Result<Vec<DeadLetter>>;

    /// Marks a dead letter resolved (it was re-applied after a fix).
    async fn resolve_dead_letter(&self, projection: &str, source: Position) -> Result<()>;

    /// Waits, at most `wait`, until every record handed to the log is written or has failed
    /// (the Kafka producer's queue is empty): the last thing a process does before it exits.
    /// The embedded log writes as it appends: nothing waits.
    async fn flush(&self, wait: Duration) -> Result<()> {
        let _ = wait;
        Ok(())
    }
}

/// One poll of a long-running reader (the gateway, the notifier): the records, or `None` once
/// `stop` resolves or the log is closed. A failed poll is logged for `reader`, and after a
/// pause answers with no records, so the caller simply polls again.
pub async fn poll_until_stopped(
    consumer: &mut dyn LogConsumer,
    max: usize,
    timeout: Duration,
    stop: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    reader: &'static str,
) -> Option<Vec<StoredRecord>> {
    tokio::select! {
        _ = stop => None,
        polled = consumer.poll(max, timeout) => match polled {
            Ok(records) => Some(records),
            Err(LogError::Closed) => None,
            Err(error) => {
                tracing::warn!(reader, %error, "could not read the log; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                Some(Vec::new())
            }
        },
    }
}

/// Repositions partitions a consumer group just assigned ([`LogConsumer::take_assigned`]) at
/// the reader's own next offset, `next_of(partition)`, rather than where the group's commit
/// (or, with none, the log's start) put them: the records of `records` below it are dropped,
/// and if the partition's records would not start exactly there, they are all dropped and the
/// consumer is sought there. A partition `next_of` knows nothing about is left as it is.
/// Returns how many records were dropped.
pub fn resume_assigned(
    consumer: &mut dyn LogConsumer,
    assigned: &[u32],
    records: &mut Vec<StoredRecord>,
    next_of: impl Fn(u32) -> Option<u64>,
) -> Result<usize> {
    let before = records.len();
    for &partition in assigned {
        let Some(next) = next_of(partition) else {
            continue;
        };
        records.retain(|r| r.position.partition != partition || r.position.offset >= next);
        let first = records
            .iter()
            .find(|r| r.position.partition == partition)
            .map(|r| r.position.offset);
        if first != Some(next) {
            records.retain(|r| r.position.partition != partition);
            consumer.seek(Position::new(partition, next))?;
        }
    }
    Ok(before - records.len())
}

/// Reads the log in order for one consumer group.
#[async_trait]
pub trait LogConsumer: Send {
    /// Moves the read position of one partition: `next` is the next offset to return.
    fn seek(&mut self, next: Position) -> Result<()>;

    /// Returns up to `max` records in order, waiting at most `timeout` when none are ready.
    /// An empty result means none arrived in time.
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<StoredRecord>>;

    /// Records the group's checkpoint: for each position, the next offset to read.
    async fn commit(&mut self, next: &[Position]) -> Result<()>;

    /// The group's committed checkpoints.
    async fn committed(&self) -> Result<Vec<Position>>;

    /// The partitions ([`Position::partition`]) the group assigned to this consumer since the
    /// last call. A caller that keeps its checkpoints elsewhere (a projector keeps them in its
    /// read store) repositions them from there: the group's committed offset can trail its own
    /// (a consumer that died between its apply and its commit) or be stale (a seek made
    /// before the partition was assigned). Adapters without consumer groups never reassign.
    fn take_assigned(&mut self) -> Vec<u32> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A consumer that only records seeks.
    #[derive(Default)]
    struct Seeks(Vec<Position>);

    #[async_trait]
    impl LogConsumer for Seeks {
        fn seek(&mut self, next: Position) -> Result<()> {
            self.0.push(next);
            Ok(())
        }
        async fn poll(&mut self, _max: usize, _timeout: Duration) -> Result<Vec<StoredRecord>> {
            Ok(Vec::new())
        }
        async fn commit(&mut self, _next: &[Position]) -> Result<()> {
            Ok(())
        }
        async fn committed(&self) -> Result<Vec<Position>> {
            Ok(Vec::new())
        }
    }

    fn records(positions: &[(u32, u64)]) -> Vec<StoredRecord> {
        positions
            .iter()
            .map(|&(partition, offset)| StoredRecord {
                position: Position::new(partition, offset),
                stream: Stream::Messages,
                key: String::new(),
                event_type: "MessageSent".into(),
                schema_version: 1,
                payload: Vec::new(),
            })
            .collect()
    }

    fn positions(records: &[StoredRecord]) -> Vec<(u32, u64)> {
        records
            .iter()
            .map(|r| (r.position.partition, r.position.offset))
            .collect()
    }

    #[test]
    fn assigned_partitions_resume_at_the_readers_own_position() {
        let mut consumer = Seeks::default();
        // Partition 0 was handed back and restarted at the log's start; 1 restarted exactly
        // where the reader was; 2 restarted past it; 3 is unknown to the reader; 4 was not
        // reassigned.
        let mut batch = records(&[
            (0, 0),
            (0, 1),
            (0, 2),
            (0, 3),
            (1, 5),
            (1, 6),
            (2, 9),
            (3, 0),
            (4, 0),
        ]);
        let next = HashMap::from([(0, 2), (1, 5), (2, 7), (4, 100)]);
        let dropped = resume_assigned(&mut consumer, &[0, 1, 2, 3], &mut batch, |p| {
            next.get(&p).copied()
        })
        .expect("resume");
        assert_eq!(
            positions(&batch),
            [(0, 2), (0, 3), (1, 5), (1, 6), (3, 0), (4, 0)]
        );
        assert_eq!(dropped, 3);
        // Partition 2's records start past where the reader was: it is sought back there.
        assert_eq!(consumer.0, [Position::new(2, 7)]);
    }

    #[test]
    fn an_assigned_partition_with_no_records_in_hand_is_sought() {
        let mut consumer = Seeks::default();
        let mut batch = records(&[(1, 0)]);
        let dropped =
            resume_assigned(&mut consumer, &[0], &mut batch, |_| Some(42)).expect("resume");
        assert_eq!(dropped, 0);
        assert_eq!(positions(&batch), [(1, 0)]);
        assert_eq!(consumer.0, [Position::new(0, 42)]);
    }
}
