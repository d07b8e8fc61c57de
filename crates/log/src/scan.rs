//! Reading a stretch of the log for tools: `missive events dump`/`tail` and `missive replay`.
//!
//! A [`Scan`] reads every partition from a start offset to an end (the log's end when the scan
//! began, or a bound of the caller's), in order within each partition, with a consumer group of
//! its own that commits nothing, so it never disturbs the groups of the running projectors.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{EventLog, LogConsumer, Position, Result, StoredRecord, resume_assigned};

/// Where a scan stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanEnd {
    /// At the log's end as it was when the scan opened.
    LogEnd,
    /// Per partition, the first offset not to read; a partition not named is not read.
    Before(BTreeMap<u32, u64>),
    /// Never: follow the log as it grows (`missive events tail`).
    Follow,
}

/// A private, bounded read of the log. See the module docs.
pub struct Scan {
    consumer: Box<dyn LogConsumer>,
    /// Per partition, the next offset to return.
    next: BTreeMap<u32, u64>,
    /// Per partition, the first offset not to return; `None` when following.
    end: Option<BTreeMap<u32, u64>>,
}

impl std::fmt::Debug for Scan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scan")
            .field("next", &self.next)
            .field("end", &self.end)
            .finish()
    }
}

impl Scan {
    /// Opens a scan of every partition, each from its offset in `start` (0 when not named; the
    /// first offset the log still holds when that is later) to `end`. `tool` names the scan's
    /// consumer group: a unique suffix is added, and nothing is ever committed for it.
    pub async fn open(
        log: &dyn EventLog,
        tool: &str,
        start: &BTreeMap<u32, u64>,
        end: ScanEnd,
    ) -> Result<Scan> {
        let log_end = log.end_positions().await?;
        // Records the log's retention deleted are not waited for: a partition whose records
        // are all gone is done at once.
        let log_start = crate::by_partition(log.start_positions().await?);
        let end = match end {
            ScanEnd::LogEnd => Some(crate::by_partition(log_end.iter().copied())),
            ScanEnd::Before(before) => Some(before),
            ScanEnd::Follow => None,
        };
        let group = format!("{tool}-{}", uuid::Uuid::new_v4());
        let mut consumer = log.consumer(&group).await?;
        let mut next = BTreeMap::new();
        for position in &log_end {
            let held = log_start.get(&position.partition).copied().unwrap_or(0);
            let asked = start.get(&position.partition).copied();
            if let Some(asked) = asked.filter(|asked| *asked < held) {
                tracing::warn!(
                    partition = position.partition,
                    asked,
                    held,
                    "the log no longer holds the start of this stretch (its retention deleted \
                     it): reading from the first record left"
                );
            }
            let from = asked.unwrap_or(0).max(held);
            next.insert(position.partition, from);
            consumer.seek(Position::new(position.partition, from))?;
        }
        Ok(Scan {
            consumer,
            next,
            end,
        })
    }

    /// Per partition, the next offset the scan returns (where it stands).
    pub fn next_offsets(&self) -> &BTreeMap<u32, u64> {
        &self.next
    }

    /// True once every partition reached its end (never when following).
    pub fn is_done(&self) -> bool {
        let Some(end) = &self.end else {
            return false;
        };
        self.next
            .iter()
            .all(|(p, next)| end.get(p).is_none_or(|end| next >= end))
    }

    /// Records left before the end (the sum over partitions), for progress bars; `None` when
    /// following.
    pub fn remaining(&self) -> Option<u64> {
        let end = self.end.as_ref()?;
        Some(
            self.next
                .iter()
                .map(|(p, next)| end.get(p).map_or(0, |end| end.saturating_sub(*next)))
                .sum(),
        )
    }

    /// Ends `partition` at `offset`: records from there on are not returned, and the scan
    /// stands there (a caller that drops the rest of a batch it polled cuts the partition at
    /// the first record it drops). A following scan has no ends: it is left as it is.
    pub fn end_partition_at(&mut self, partition: u32, offset: u64) {
        let Some(end) = &mut self.end else {
            return;
        };
        end.insert(partition, offset);
        let next = self.next.entry(partition).or_insert(offset);
        *next = (*next).min(offset);
    }

    /// The next records within bounds, in order per partition; empty when none arrived within
    /// `timeout` (or the scan is done).
    pub async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<StoredRecord>> {
        if self.is_done() {
            return Ok(Vec::new());
        }
        let mut records = self.consumer.poll(max, timeout).await?;
        let assigned = self.consumer.take_assigned();
        if !assigned.is_empty() {
            let next = self.next.clone();
            resume_assigned(self.consumer.as_mut(), &assigned, &mut records, |p| {
                next.get(&p).copied()
            })?;
        }
        records.retain(|r| {
            let Position { partition, offset } = r.position;
            let from = self.next.get(&partition).copied().unwrap_or(0);
            let before_end = match &self.end {
                Some(end) => end.get(&partition).is_some_and(|end| offset < *end),
                None => true,
            };
            offset >= from && before_end
        });
        for r in &records {
            self.next
                .insert(r.position.partition, r.position.offset + 1);
        }
        Ok(records)
    }
}

/// Parses a list of log positions, `"<partition>:<offset>[,<partition>:<offset>...]"`, into
/// offsets by partition (a partition named twice is refused).
pub fn parse_positions(text: &str) -> std::result::Result<BTreeMap<u32, u64>, String> {
    let mut out = BTreeMap::new();
    for item in text.split(',').map(str::trim) {
        let position: Position = item.parse().map_err(|e: &str| format!("{item:?}: {e}"))?;
        if out.insert(position.partition, position.offset).is_some() {
            return Err(format!("partition {} is named twice", position.partition));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use missive_events::Stream;

    use super::*;
    use crate::{DeadLetter, LogError, Record};

    /// A log whose retention deleted records: partition 0 held 0..5 and has none left,
    /// partition 1 held 0..3 and keeps 1 and 2.
    struct Trimmed;

    #[async_trait]
    impl EventLog for Trimmed {
        async fn append(&self, _records: Vec<Record>) -> Result<Vec<Position>> {
            Err(LogError::Closed)
        }
        async fn end_positions(&self) -> Result<Vec<Position>> {
            Ok(vec![Position::new(0, 5), Position::new(1, 3)])
        }
        async fn start_positions(&self) -> Result<Vec<Position>> {
            Ok(vec![Position::new(0, 5), Position::new(1, 1)])
        }
        async fn consumer(&self, _group: &str) -> Result<Box<dyn LogConsumer>> {
            Ok(Box::new(Kept(vec![1, 2])))
        }
        async fn dead_letter(&self, _letter: DeadLetter) -> Result<()> {
            Err(LogError::Closed)
        }
        async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
            Ok(Vec::new())
        }
        async fn resolve_dead_letter(&self, _projection: &str, _source: Position) -> Result<()> {
            Err(LogError::Closed)
        }
    }

    /// What partition 1 still holds, returned by the first poll.
    struct Kept(Vec<u64>);

    #[async_trait]
    impl LogConsumer for Kept {
        fn seek(&mut self, _next: Position) -> Result<()> {
            Ok(())
        }
        async fn poll(&mut self, _max: usize, _timeout: Duration) -> Result<Vec<StoredRecord>> {
            Ok(std::mem::take(&mut self.0)
                .into_iter()
                .map(|offset| StoredRecord {
                    position: Position::new(1, offset),
                    stream: Stream::Messages,
                    key: "k".into(),
                    event_type: "MessageSent".into(),
                    schema_version: 2,
                    payload: Vec::new(),
                })
                .collect())
        }
        async fn commit(&mut self, _next: &[Position]) -> Result<()> {
            Ok(())
        }
        async fn committed(&self) -> Result<Vec<Position>> {
            Ok(Vec::new())
        }
    }

    /// A scan does not wait for records the log's retention deleted: a partition with none
    /// left is done at once (it used to hold `missive replay` until interrupted).
    #[tokio::test]
    async fn a_scan_starts_where_the_log_still_holds_records() {
        let mut scan = Scan::open(&Trimmed, "test", &BTreeMap::new(), ScanEnd::LogEnd)
            .await
            .expect("open");
        assert_eq!(scan.next_offsets(), &BTreeMap::from([(0, 5), (1, 1)]));
        assert_eq!(scan.remaining(), Some(2));
        let records = scan.poll(10, Duration::ZERO).await.expect("poll");
        assert_eq!(records.len(), 2);
        assert!(scan.is_done(), "{scan:?}");
    }

    #[test]
    fn positions_parse_and_refuse_repeats_and_garbage() {
        assert_eq!(
            parse_positions("0:12, 3:4").expect("parses"),
            BTreeMap::from([(0, 12), (3, 4)])
        );
        assert!(parse_positions("0:1,0:2").unwrap_err().contains("twice"));
        assert!(
            parse_positions("12")
                .unwrap_err()
                .contains("<partition>:<offset>")
        );
        assert!(parse_positions("").is_err());
    }
}
