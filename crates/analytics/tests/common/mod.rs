//! A realistic history with known times and latencies, and helpers to run the consumer.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use missive_analytics::{
    Analytics, AnalyticsBatch, AnalyticsError, AnalyticsStore, FirstMessage, Granularity, Period,
    ReportQuery, Rollup, RollupKey, StoreError, report,
};
use missive_events::{Envelope, Event, Presence, codec, ids};
use missive_log::sqlite::{Durability, SqliteLog};
use missive_log::{EventLog, Position, Record};
use serde_json::json;
use tokio::sync::watch;
use uuid::{NoContext, Timestamp, Uuid};

pub fn at(s: &str) -> DateTime<Utc> {
    s.parse().expect("a valid test time")
}

/// A UUIDv7 made at `t` (millisecond precision), as the service makes message ids.
pub fn id_at(t: DateTime<Utc>) -> Uuid {
    let ms = t.timestamp_millis() as u64;
    Uuid::new_v7(Timestamp::from_unix(
        NoContext,
        ms / 1000,
        (ms % 1000) as u32 * 1_000_000,
    ))
}

pub fn record(envelope: &Envelope) -> Record {
    Record {
        stream: envelope.stream(),
        key: envelope.partition_key(),
        event_type: envelope.event_type(),
        schema_version: codec::schema_version(envelope.event_type()).expect("known event"),
        payload: codec::encode(envelope).expect("encode"),
    }
}

pub struct World {
    pub alice: Uuid,
    pub bob: Uuid,
    pub carol: Uuid,
    pub dave: Uuid,
    /// Where the undecodable record sits.
    pub garbage: Position,
}

/// Three days (2026-03-31 to 2026-04-02, across a month boundary) of registrations, friend
/// requests and accepts, direct and channel messages, deliveries and reads with known
/// latencies, events that do not make anyone active, and one undecodable record.
pub async fn write_history(log: &dyn EventLog) -> World {
    let (alice, bob, carol, dave) = (
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
    );
    let ab = ids::direct_conversation_id(alice, bob);
    let ac = ids::direct_conversation_id(alice, carol);
    let m1 = id_at(at("2026-03-31T10:03:00Z"));
    let m2 = id_at(at("2026-03-31T10:03:30Z"));
    let m3 = id_at(at("2026-04-01T00:01:00Z"));
    let m4 = id_at(at("2026-04-01T00:10:00Z"));
    // An id without a time: its delivery is not measured.
    let m5 = Uuid::new_v4();
    let sent = |message_id, conversation_id, sender_id, recipient_id| Event::MessageSent {
        message_id,
        conversation_id,
        sender_id,
        recipient_id,
        text: "hello".into(),
        client_msg_id: None,
    };
    let delivered =
        |message_id, conversation_id, sender_id, recipient_id| Event::MessageDelivered {
            message_id,
            conversation_id,
            sender_id,
            recipient_id,
        };
    let registered = |user_id, name: &str| Event::UserRegistered {
        user_id,
        username: name.into(),
        display_name: name.into(),
    };
    let day1: Vec<(&str, Uuid, Event)> = vec![
        ("2026-03-31T10:00:00Z", alice, registered(alice, "alice")),
        ("2026-03-31T10:00:10Z", bob, registered(bob, "bob")),
        ("2026-03-31T10:00:20Z", carol, registered(carol, "carol")),
        (
            "2026-03-31T10:01:00Z",
            alice,
            Event::FriendRequested {
                requester_id: alice,
                addressee_id: bob,
            },
        ),
        (
            "2026-03-31T10:01:30Z",
            alice,
            Event::FriendRequested {
                requester_id: alice,
                addressee_id: carol,
            },
        ),
        (
            "2026-03-31T10:02:00Z",
            bob,
            Event::FriendRequestAccepted {
                requester_id: alice,
                addressee_id: bob,
            },
        ),
        ("2026-03-31T10:03:00Z", alice, sent(m1, ab, alice, bob)),
        (
            "2026-03-31T10:03:00.250Z",
            bob,
            delivered(m1, ab, alice, bob),
        ),
        (
            "2026-03-31T10:03:05Z",
            bob,
            Event::MessagesRead {
                conversation_id: ab,
                reader_id: bob,
                up_to: m1,
            },
        ),
        ("2026-03-31T10:03:30Z", bob, sent(m2, ab, bob, alice)),
        ("2026-03-31T10:03:45Z", alice, delivered(m2, ab, bob, alice)),
        (
            "2026-03-31T10:04:00Z",
            alice,
            Event::ChannelMessageSent {
                message_id: id_at(at("2026-03-31T10:04:00Z")),
                server_id: Uuid::from_u128(0x5e),
                channel_id: Uuid::from_u128(0xc1),
                sender_id: alice,
                text: "hi all".into(),
                client_msg_id: None,
            },
        ),
        // Decided by the system on dave's behalf: dave is not active on day 1.
        (
            "2026-03-31T10:04:10Z",
            dave,
            Event::NotificationRequested {
                user_id: bob,
                kind: missive_events::NotificationKind::Message,
                subject_id: ab,
                item_id: m2,
                from_id: dave,
            },
        ),
        (
            "2026-03-31T23:59:59Z",
            dave,
            Event::PresenceChanged {
                user_id: dave,
                status: Presence::Offline,
            },
        ),
    ];
    let rest: Vec<(&str, Uuid, Event)> = vec![
        (
            "2026-04-01T00:00:30Z",
            carol,
            Event::FriendRequestAccepted {
                requester_id: alice,
                addressee_id: carol,
            },
        ),
        ("2026-04-01T00:01:00Z", carol, sent(m3, ac, carol, alice)),
        (
            "2026-04-01T00:01:02Z",
            alice,
            delivered(m3, ac, carol, alice),
        ),
        (
            "2026-04-01T00:10:00Z",
            alice,
            Event::MessagesRead {
                conversation_id: ac,
                reader_id: alice,
                up_to: m3,
            },
        ),
        ("2026-04-01T00:10:00Z", alice, sent(m4, ac, alice, carol)),
        ("2026-04-02T09:00:00Z", dave, registered(dave, "dave")),
        (
            "2026-04-02T09:00:01Z",
            carol,
            delivered(m4, ac, alice, carol),
        ),
        ("2026-04-02T09:01:00Z", alice, sent(m5, ab, alice, bob)),
        ("2026-04-02T09:01:10Z", bob, delivered(m5, ab, alice, bob)),
    ];
    let envelope = |(t, actor, event): (&str, Uuid, Event)| Envelope {
        event_id: id_at(at(t)),
        occurred_at: at(t),
        actor_id: actor,
        correlation_id: Uuid::now_v7(),
        event,
    };
    let records: Vec<Record> = day1.into_iter().map(|e| record(&envelope(e))).collect();
    log.append(records).await.expect("append day 1");
    let garbage = log
        .append(vec![Record {
            stream: missive_events::Stream::Messages,
            key: ab.to_string(),
            event_type: "MessageSent",
            schema_version: 2,
            payload: b"not avro".to_vec(),
        }])
        .await
        .expect("append garbage")[0];
    // One append per event, as requests do.
    for e in rest {
        log.append(vec![record(&envelope(e))])
            .await
            .expect("append");
    }
    World {
        alice,
        bob,
        carol,
        dave,
        garbage,
    }
}

pub struct Setup {
    pub dir: tempfile::TempDir,
    pub log: Arc<SqliteLog>,
}

pub fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let log =
        Arc::new(SqliteLog::open(&dir.path().join("log.db"), Durability::Normal).expect("log"));
    Setup { dir, log }
}

/// Runs the consumer until it has counted the whole log, then stops it; returns how it ended.
pub async fn run_to_end(analytics: Analytics, log: &dyn EventLog) -> Result<(), AnalyticsError> {
    let mut progress = analytics.progress();
    let (stop, mut stop_rx) = watch::channel(false);
    let task = tokio::spawn(analytics.run(async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    let end = log.end_positions().await.expect("end")[0];
    let last = Position::new(end.partition, end.offset - 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    let caught_up = tokio::select! {
        reached = progress.wait_for(|p| p.has_applied(last)) => reached.is_ok(),
        _ = tokio::time::sleep_until(deadline.into()) => panic!("the consumer did not catch up in time"),
    };
    let _ = stop.send(true);
    let outcome = task.await.expect("join");
    if caught_up {
        outcome
    } else {
        // The consumer stopped before the end: its error says why.
        outcome.and(Err(AnalyticsError::Store(
            missive_analytics::StoreError::Unavailable("stopped before the end".into()),
        )))
    }
}

/// The two reports the tests compare: every minute of days 1 and 2, and days 1 to 3.
pub async fn snapshot(store: &dyn AnalyticsStore) -> (serde_json::Value, serde_json::Value) {
    let minutes = ReportQuery::new(
        at("2026-03-31T00:00:00Z"),
        at("2026-04-02T00:00:00Z"),
        Some(Granularity::Minute),
    )
    .expect("query");
    let days = ReportQuery::new(at("2026-03-30T12:00:00Z"), at("2026-04-03T00:00:00Z"), None)
        .expect("query");
    (
        serde_json::to_value(report(store, &minutes).await.expect("minute report")).expect("json"),
        serde_json::to_value(report(store, &days).await.expect("day report")).expect("json"),
    )
}

/// The day report of the history, worked out by hand from `write_history`.
pub fn expected_days() -> serde_json::Value {
    let latency = |count: u64, mean: f64, p50: u64, p90: u64, p99: u64, max: u64| {
        json!({
            "count": count, "mean_ms": mean, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99,
            "max_ms": max,
        })
    };
    json!({
        "from": "2026-03-30T00:00:00Z",
        "to": "2026-04-03T00:00:00Z",
        "granularity": "day",
        "buckets": [
            {
                "start": "2026-03-31T00:00:00Z",
                "messages": 2, "channel_messages": 1, "conversations_started": 1,
                "friend_requests": 2, "friend_accepts": 1,
                // 250 ms and 15 s: p50 is the 500 ms bucket's bound, p90 the maximum.
                "delivery_latency": latency(2, 7625.0, 500, 15_000, 15_000, 15_000),
                "read_latency": latency(1, 5000.0, 5000, 5000, 5000, 5000),
            },
            {
                "start": "2026-04-01T00:00:00Z",
                "messages": 2, "channel_messages": 0, "conversations_started": 1,
                "friend_requests": 0, "friend_accepts": 1,
                "delivery_latency": latency(1, 2000.0, 2000, 2000, 2000, 2000),
                // 9 min: in the 1,000 s bucket, reported as the maximum.
                "read_latency": latency(1, 540_000.0, 540_000, 540_000, 540_000, 540_000),
            },
            {
                "start": "2026-04-02T00:00:00Z",
                "messages": 1, "channel_messages": 0, "conversations_started": 0,
                "friend_requests": 0, "friend_accepts": 0,
                // Sent on day 2 at 00:10:00, delivered on day 3 at 09:00:01: above a day. The
                // message with a v4 id is not measured.
                "delivery_latency": latency(1, 118_201_000.0, 118_201_000, 118_201_000, 118_201_000, 118_201_000),
                "read_latency": null,
            },
        ],
        "daily_active_users": [
            {"period": "2026-03-30", "users": 0},
            // alice, bob, carol; not dave (a notification and going offline are the system's).
            {"period": "2026-03-31", "users": 3},
            {"period": "2026-04-01", "users": 2},
            {"period": "2026-04-02", "users": 4},
        ],
        "monthly_active_users": [
            {"period": "2026-03", "users": 3},
            {"period": "2026-04", "users": 4},
        ],
        "totals": {
            "messages": 5, "channel_messages": 1, "conversations_started": 2,
            "friend_requests": 2, "friend_accepts": 2,
            "friend_funnel": {"requested": 2, "accepted": 2, "conversion": 1.0},
            "delivery_latency": latency(4, 29_554_562.5, 2000, 118_201_000, 118_201_000, 118_201_000),
            "read_latency": latency(2, 272_500.0, 5000, 540_000, 540_000, 540_000),
        },
    })
}

/// Where a simulated crash stops a batch's writes.
#[derive(Debug, Clone, Copy)]
pub enum Crash {
    /// Every write of the batch landed, but not its checkpoint.
    BeforeCheckpoint,
    /// Only the set members (active users, first messages) landed.
    AfterSets,
    /// The sets and the day rows landed, not the minute rows nor the checkpoint.
    BetweenRollups,
}

/// A store whose `crash_at`-th write stops part-way (as a process dying between two writes to
/// a store without transactions would), then fails.
pub struct Crashing {
    pub inner: Arc<dyn AnalyticsStore>,
    pub crash: Crash,
    pub crash_at: usize,
    pub writes: AtomicUsize,
}

#[async_trait]
impl AnalyticsStore for Crashing {
    async fn write(&self, consumer: &str, batch: AnalyticsBatch) -> missive_analytics::Result<()> {
        if self.writes.fetch_add(1, Ordering::SeqCst) + 1 != self.crash_at {
            return self.inner.write(consumer, batch).await;
        }
        let partial = match self.crash {
            Crash::BeforeCheckpoint => AnalyticsBatch {
                checkpoint: Vec::new(),
                ..batch
            },
            Crash::AfterSets => AnalyticsBatch {
                rollups: Vec::new(),
                checkpoint: Vec::new(),
                ..batch
            },
            Crash::BetweenRollups => AnalyticsBatch {
                rollups: batch
                    .rollups
                    .into_iter()
                    .filter(|r| r.key.granularity == Granularity::Day)
                    .collect(),
                checkpoint: Vec::new(),
                ..batch
            },
        };
        self.inner.write(consumer, partial).await?;
        Err(StoreError::Corrupt("simulated crash".into()))
    }
    async fn checkpoints(&self, consumer: &str) -> missive_analytics::Result<Vec<Position>> {
        self.inner.checkpoints(consumer).await
    }
    async fn rollups(&self, keys: &[RollupKey]) -> missive_analytics::Result<Vec<Rollup>> {
        self.inner.rollups(keys).await
    }
    async fn first_messages(
        &self,
        conversations: &[Uuid],
    ) -> missive_analytics::Result<Vec<FirstMessage>> {
        self.inner.first_messages(conversations).await
    }
    async fn rollups_between(
        &self,
        granularity: Granularity,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> missive_analytics::Result<Vec<Rollup>> {
        self.inner.rollups_between(granularity, from, to).await
    }
    async fn active_users(&self, period: Period) -> missive_analytics::Result<u64> {
        self.inner.active_users(period).await
    }
}
