//! The analytics vocabulary: time buckets, counters, latency histograms, rollup rows and the
//! batch of writes the worker hands to a store.

use std::ops::AddAssign;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use missive_log::Position;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const MINUTE_MICROS: i64 = 60_000_000;
const DAY_MICROS: i64 = 86_400_000_000;

/// The size of a rollup bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Minute,
    Day,
}

impl Granularity {
    /// The name stored in the rollup tables and used in the API (`minute`, `day`).
    pub fn name(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Day => "day",
        }
    }

    /// Parses `minute` or `day`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "minute" => Some(Granularity::Minute),
            "day" => Some(Granularity::Day),
            _ => None,
        }
    }

    /// The start of the bucket that holds `t`.
    pub fn floor(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let size = self.micros();
        from_micros(t.timestamp_micros().div_euclid(size) * size)
    }

    /// The start of the first bucket at or after `t`.
    pub fn ceil(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let floor = self.floor(t);
        if floor == t {
            t
        } else {
            from_micros(floor.timestamp_micros() + self.micros())
        }
    }

    /// The bucket's length in microseconds.
    pub fn micros(self) -> i64 {
        match self {
            Granularity::Minute => MINUTE_MICROS,
            Granularity::Day => DAY_MICROS,
        }
    }

    /// The start of the span a bucket is filed under in the Scylla tables, so that no
    /// partition grows without bound: the day of a minute, the month of a day.
    pub fn span(self, start: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Granularity::Minute => Granularity::Day.floor(start),
            Granularity::Day => month_start(start),
        }
    }

    /// The start of the span after the one that holds `start`.
    pub fn next_span(self, start: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Granularity::Minute => {
                from_micros(Granularity::Day.floor(start).timestamp_micros() + DAY_MICROS)
            }
            Granularity::Day => next_month_start(start),
        }
    }
}

/// A UTC time from microseconds since the epoch, clamped to chrono's range.
pub(crate) fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(if us < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

/// Midnight UTC of the first day of `t`'s month.
pub fn month_start(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(t)
}

/// Midnight UTC of the first day of the month after `t`'s.
pub fn next_month_start(t: DateTime<Utc>) -> DateTime<Utc> {
    let (y, m) = if t.month() == 12 {
        (t.year() + 1, 1)
    } else {
        (t.year(), t.month() + 1)
    };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A period over which distinct active users are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Period {
    /// A UTC day.
    Day(NaiveDate),
    /// A UTC month, named by its first day.
    Month(NaiveDate),
}

impl Period {
    pub fn day_of(t: DateTime<Utc>) -> Self {
        Period::Day(t.date_naive())
    }

    pub fn month_of(t: DateTime<Utc>) -> Self {
        Period::Month(month_start(t).date_naive())
    }

    /// The key stored in the active-user tables and shown in reports: `2026-11-21` for a
    /// day, `2026-11` for a month.
    pub fn key(self) -> String {
        match self {
            Period::Day(d) => d.format("%Y-%m-%d").to_string(),
            Period::Month(d) => d.format("%Y-%m").to_string(),
        }
    }
}

/// Upper bounds (inclusive, milliseconds) of the latency histogram buckets: a 1-2-5 series
/// from 1 ms to 50,000 s, then one day. One more bucket holds everything above a day.
pub const LATENCY_BOUNDS_MS: [u64; 25] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000,
    200_000, 500_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000, 20_000_000, 50_000_000,
    86_400_000,
];

/// Buckets of a [`Histogram`]: one per bound, and the overflow bucket.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// A latency distribution in fixed log-scale buckets, with the exact sum and maximum. Bucket
/// counts add up, so histograms merge across partitions, minutes and days; percentiles are
/// read from the merged buckets at query time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Histogram {
    /// `buckets[i]` counts observations `<= LATENCY_BOUNDS_MS[i]` (and above the bound before);
    /// the last one those above a day.
    pub buckets: [u64; LATENCY_BUCKETS],
    pub sum_ms: u64,
    pub max_ms: u64,
}

impl Histogram {
    /// The bucket an observation of `ms` milliseconds falls into.
    pub fn bucket_of(ms: u64) -> usize {
        LATENCY_BOUNDS_MS.partition_point(|bound| *bound < ms)
    }

    pub fn observe(&mut self, ms: u64) {
        self.buckets[Self::bucket_of(ms)] += 1;
        self.sum_ms = self.sum_ms.saturating_add(ms);
        self.max_ms = self.max_ms.max(ms);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.sum_ms = self.sum_ms.saturating_add(other.sum_ms);
        self.max_ms = self.max_ms.max(other.max_ms);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// The `q`-quantile (0 < q <= 1) as the upper bound of the bucket that holds the
    /// observation of rank `ceil(q * count)`, never above the maximum (so at most one bucket
    /// width above the true value, and exact for the maximum). `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let bound = LATENCY_BOUNDS_MS.get(i).copied().unwrap_or(self.max_ms);
                return Some(bound.min(self.max_ms));
            }
        }
        Some(self.max_ms)
    }

    /// The stored form: sum, maximum, then each bucket's count, as little-endian `u64`s.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * (2 + LATENCY_BUCKETS));
        out.extend_from_slice(&self.sum_ms.to_le_bytes());
        out.extend_from_slice(&self.max_ms.to_le_bytes());
        for n in self.buckets {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }

    /// Reads [`Histogram::encode`]'s form; an empty value is an empty histogram.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.is_empty() {
            return Ok(Histogram::default());
        }
        if bytes.len() != 8 * (2 + LATENCY_BUCKETS) {
            return Err(format!(
                "a latency histogram is {} bytes, not {}",
                8 * (2 + LATENCY_BUCKETS),
                bytes.len()
            ));
        }
        let mut words = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()));
        let mut h = Histogram {
            sum_ms: words.next().unwrap_or(0),
            max_ms: words.next().unwrap_or(0),
            ..Histogram::default()
        };
        for (slot, n) in h.buckets.iter_mut().zip(words) {
            *slot = n;
        }
        Ok(h)
    }
}

/// The counters of a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Counts {
    /// Direct messages sent (`MessageSent`).
    pub messages: u64,
    /// Channel messages sent (`ChannelMessageSent`).
    pub channel_messages: u64,
    /// Conversations whose first `MessageSent` falls in the bucket.
    pub conversations_started: u64,
    /// `FriendRequested` events.
    pub friend_requests: u64,
    /// `FriendRequestAccepted` events.
    pub friend_accepts: u64,
}

impl Counts {
    pub fn is_zero(&self) -> bool {
        *self == Counts::default()
    }
}

impl AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.messages += o.messages;
        self.channel_messages += o.channel_messages;
        self.conversations_started += o.conversations_started;
        self.friend_requests += o.friend_requests;
        self.friend_accepts += o.friend_accepts;
    }
}

/// Which rollup row: a bucket of one log partition's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RollupKey {
    pub granularity: Granularity,
    /// The bucket's start.
    pub start: DateTime<Utc>,
    /// The log partition whose events it counts.
    pub partition: u32,
}

impl RollupKey {
    /// The key of the bucket holding `t`.
    pub fn of(granularity: Granularity, t: DateTime<Utc>, partition: u32) -> Self {
        RollupKey {
            granularity,
            start: granularity.floor(t),
            partition,
        }
    }
}

/// One rollup row: absolute figures of the events of one log partition that fall into one
/// bucket, counting exactly those at offsets below `through`. Only the consumer that owns the
/// partition writes it, always whole and with a larger `through`, so applying an event again
/// is recognised (its offset is below `through`) and never counts twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollup {
    pub key: RollupKey,
    /// The offset watermark: the next offset of the partition not included.
    pub through: u64,
    pub counts: Counts,
    /// Delivery latency: `MessageDelivered` time minus the message's send time.
    pub delivery: Histogram,
    /// Read latency: `MessagesRead` time minus the send time of its `up_to` message.
    pub read: Histogram,
}

impl Rollup {
    /// A row nothing was counted in yet.
    pub fn empty(key: RollupKey) -> Self {
        Rollup {
            key,
            through: 0,
            counts: Counts::default(),
            delivery: Histogram::default(),
            read: Histogram::default(),
        }
    }

    /// Whether it counts nothing (events such as registrations only move `through`).
    pub fn is_empty(&self) -> bool {
        self.counts.is_zero() && self.delivery.is_empty() && self.read.is_empty()
    }
}

/// The first `MessageSent` of a conversation: where it sits in the log. A conversation's
/// messages share a partition key, so one consumer sees them all, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstMessage {
    pub conversation_id: Uuid,
    pub partition: u32,
    pub offset: u64,
}

/// Everything one batch of events changes, with the checkpoint it reaches. A store writes
/// sets (active users, first messages) first, then rollups, then the checkpoint; each write is
/// idempotent, so a batch interrupted anywhere is simply processed again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnalyticsBatch {
    /// Users active in a period (day and month): set members.
    pub active_users: Vec<(Period, Uuid)>,
    /// First messages of conversations; a store keeps the earliest offset it is given.
    pub first_messages: Vec<FirstMessage>,
    /// Rollup rows with their new absolute values; a store never replaces a row with one of a
    /// lower `through`.
    pub rollups: Vec<Rollup>,
    /// Per partition, the next offset to read; a store never moves one back.
    pub checkpoint: Vec<Position>,
}

impl AnalyticsBatch {
    pub fn is_empty(&self) -> bool {
        self.active_users.is_empty()
            && self.first_messages.is_empty()
            && self.rollups.is_empty()
            && self.checkpoint.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    #[test]
    fn buckets_floor_and_ceil_in_utc() {
        let t = at("2026-03-31T23:59:59.999999Z");
        assert_eq!(Granularity::Minute.floor(t), at("2026-03-31T23:59:00Z"));
        assert_eq!(Granularity::Day.floor(t), at("2026-03-31T00:00:00Z"));
        assert_eq!(Granularity::Minute.ceil(t), at("2026-04-01T00:00:00Z"));
        let aligned = at("2026-04-01T00:00:00Z");
        assert_eq!(Granularity::Day.ceil(aligned), aligned);
        assert_eq!(Granularity::Day.span(t), at("2026-03-01T00:00:00Z"));
        assert_eq!(Granularity::Minute.span(t), at("2026-03-31T00:00:00Z"));
        assert_eq!(
            Granularity::Day.next_span(at("2026-12-05T00:00:00Z")),
            at("2027-01-01T00:00:00Z")
        );
        assert_eq!(
            Granularity::Minute.floor(at("1969-12-31T23:59:30Z")),
            at("1969-12-31T23:59:00Z")
        );
        assert_eq!(Period::day_of(t).key(), "2026-03-31");
        assert_eq!(Period::month_of(t).key(), "2026-03");
    }

    #[test]
    fn histogram_buckets_quantiles_and_encoding() {
        assert_eq!(Histogram::bucket_of(0), 0);
        assert_eq!(Histogram::bucket_of(1), 0);
        assert_eq!(Histogram::bucket_of(2), 1);
        assert_eq!(Histogram::bucket_of(250), 8);
        assert_eq!(Histogram::bucket_of(86_400_000), 24);
        assert_eq!(Histogram::bucket_of(86_400_001), 25);
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for ms in [250, 15_000, 2_000, 118_201_000] {
            h.observe(ms);
        }
        assert_eq!(h.count(), 4);
        assert_eq!(h.quantile(0.25), Some(500));
        assert_eq!(h.quantile(0.5), Some(2_000));
        assert_eq!(h.quantile(0.75), Some(20_000));
        assert_eq!(h.quantile(0.99), Some(118_201_000));
        assert_eq!(h.max_ms, 118_201_000);
        assert_eq!(Histogram::decode(&h.encode()), Ok(h));
        assert_eq!(Histogram::decode(&[]), Ok(Histogram::default()));
        assert!(Histogram::decode(&[1, 2, 3]).is_err());
        // A bound above the maximum is clamped to it.
        let mut one = Histogram::default();
        one.observe(3);
        assert_eq!(one.quantile(0.5), Some(3));
        let mut merged = one;
        merged.merge(&h);
        assert_eq!(merged.count(), 5);
        assert_eq!(merged.sum_ms, 3 + 250 + 15_000 + 2_000 + 118_201_000);
    }
}
