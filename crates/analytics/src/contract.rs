//! The contract every [`AnalyticsStore`] adapter must honour, written once and run against
//! each (`tests/sqlite_contract.rs`, `tests/scylla_contract.rs`). Each check takes a fresh,
//! empty store.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use missive_log::Position;
use uuid::Uuid;

use crate::{
    AnalyticsBatch, AnalyticsStore, FirstMessage, Granularity, Period, ReportQuery, Rollup,
    RollupKey, report,
};

fn at(s: &str) -> DateTime<Utc> {
    s.parse().expect("a valid test time")
}

fn row(g: Granularity, start: &str, partition: u32, through: u64, messages: u64) -> Rollup {
    let mut r = Rollup::empty(RollupKey::of(g, at(start), partition));
    r.through = through;
    r.counts.messages = messages;
    r.counts.friend_requests = 2 * messages;
    r.counts.friend_accepts = messages;
    r.delivery.observe(messages * 100);
    r.read.observe(messages * 1000);
    r
}

fn rollups(rows: Vec<Rollup>) -> AnalyticsBatch {
    AnalyticsBatch {
        rollups: rows,
        ..AnalyticsBatch::default()
    }
}

/// A row is replaced only by one with a higher watermark, and reads back exactly.
pub async fn rollups_keep_the_highest_watermark(store: Arc<dyn AnalyticsStore>) {
    let first = row(Granularity::Minute, "2026-03-31T10:03:00Z", 0, 5, 3);
    let key = first.key;
    let other_partition = row(Granularity::Minute, "2026-03-31T10:03:00Z", 1, 2, 1);
    store
        .write("c", rollups(vec![first.clone(), other_partition.clone()]))
        .await
        .expect("write");
    let missing = RollupKey::of(Granularity::Day, at("2026-03-31T00:00:00Z"), 0);
    let mut found = store
        .rollups(&[key, missing, other_partition.key])
        .await
        .expect("read");
    found.sort_by_key(|r| r.key);
    assert_eq!(found, vec![first.clone(), other_partition.clone()]);

    // An older write (a redelivery, a consumer that lost the partition) changes nothing; so
    // does the same one again.
    let stale = row(Granularity::Minute, "2026-03-31T10:03:00Z", 0, 4, 99);
    store
        .write("c", rollups(vec![stale, first.clone()]))
        .await
        .expect("write");
    assert_eq!(store.rollups(&[key]).await.expect("read"), vec![first]);

    let newer = row(Granularity::Minute, "2026-03-31T10:03:00Z", 0, 9, 4);
    store
        .write("c", rollups(vec![newer.clone()]))
        .await
        .expect("write");
    assert_eq!(store.rollups(&[key]).await.expect("read"), vec![newer]);
}

/// Range reads return every partition's rows of one granularity whose bucket starts in
/// `[from, to)`, across day and month boundaries.
pub async fn rollup_ranges_cross_days_and_months(store: Arc<dyn AnalyticsStore>) {
    let minutes = [
        row(Granularity::Minute, "2026-03-31T23:58:00Z", 0, 1, 1),
        row(Granularity::Minute, "2026-03-31T23:59:00Z", 2, 2, 2),
        row(Granularity::Minute, "2026-04-01T00:00:00Z", 0, 3, 3),
        row(Granularity::Minute, "2026-04-01T00:00:00Z", 1, 4, 4),
        row(Granularity::Minute, "2026-04-01T00:01:00Z", 0, 5, 5),
    ];
    let days = [
        row(Granularity::Day, "2026-03-30T00:00:00Z", 0, 1, 6),
        row(Granularity::Day, "2026-03-31T00:00:00Z", 0, 3, 7),
        row(Granularity::Day, "2026-04-01T00:00:00Z", 0, 6, 8),
        row(Granularity::Day, "2026-04-01T00:00:00Z", 1, 5, 9),
    ];
    store
        .write("c", rollups(minutes.iter().chain(&days).cloned().collect()))
        .await
        .expect("write");
    let mut got = store
        .rollups_between(
            Granularity::Minute,
            at("2026-03-31T23:59:00Z"),
            at("2026-04-01T00:01:00Z"),
        )
        .await
        .expect("minutes");
    got.sort_by_key(|r| r.key);
    assert_eq!(got, minutes[1..4].to_vec());
    let mut got = store
        .rollups_between(
            Granularity::Day,
            at("2026-03-31T00:00:00Z"),
            at("2026-05-01T00:00:00Z"),
        )
        .await
        .expect("days");
    got.sort_by_key(|r| r.key);
    assert_eq!(got, days[1..].to_vec());
    assert!(
        store
            .rollups_between(
                Granularity::Day,
                at("2026-05-01T00:00:00Z"),
                at("2026-06-01T00:00:00Z")
            )
            .await
            .expect("empty range")
            .is_empty()
    );
}

/// Active users are set members, counted per period.
pub async fn active_users_are_sets(store: Arc<dyn AnalyticsStore>) {
    let day = Period::day_of(at("2026-03-31T10:00:00Z"));
    let next_day = Period::day_of(at("2026-04-01T10:00:00Z"));
    let month = Period::month_of(at("2026-03-31T10:00:00Z"));
    let users: Vec<Uuid> = (0..40).map(|_| Uuid::now_v7()).collect();
    let mut batch = AnalyticsBatch::default();
    for u in &users {
        batch.active_users.push((day, *u));
        batch.active_users.push((month, *u));
    }
    batch.active_users.push((next_day, users[0]));
    store.write("c", batch.clone()).await.expect("write");
    store.write("c", batch).await.expect("write again");
    assert_eq!(store.active_users(day).await.expect("count"), 40);
    assert_eq!(store.active_users(month).await.expect("count"), 40);
    assert_eq!(store.active_users(next_day).await.expect("count"), 1);
    assert_eq!(
        store
            .active_users(Period::month_of(at("2026-04-01T00:00:00Z")))
            .await
            .expect("count"),
        0
    );
}

/// A conversation's first message keeps the lowest offset it was given.
pub async fn first_messages_keep_the_earliest(store: Arc<dyn AnalyticsStore>) {
    let (c, d, unknown) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let first = |conversation_id, offset| FirstMessage {
        conversation_id,
        partition: 3,
        offset,
    };
    for offset in [10, 5, 12] {
        store
            .write(
                "c",
                AnalyticsBatch {
                    first_messages: vec![first(c, offset), first(d, 7)],
                    ..AnalyticsBatch::default()
                },
            )
            .await
            .expect("write");
    }
    let mut got = store.first_messages(&[c, unknown, d]).await.expect("read");
    got.sort_by_key(|f| f.offset);
    assert_eq!(got, vec![first(c, 5), first(d, 7)]);
}

/// Checkpoints are kept per consumer and only move forward.
pub async fn checkpoints_move_forward_per_consumer(store: Arc<dyn AnalyticsStore>) {
    let cp = |checkpoint: Vec<Position>| AnalyticsBatch {
        checkpoint,
        ..AnalyticsBatch::default()
    };
    assert!(store.checkpoints("a").await.expect("none").is_empty());
    store
        .write("a", cp(vec![Position::new(0, 10), Position::new(1, 4)]))
        .await
        .expect("write");
    store
        .write("a", cp(vec![Position::new(0, 7), Position::new(1, 9)]))
        .await
        .expect("write");
    store
        .write("b", cp(vec![Position::new(0, 2)]))
        .await
        .expect("write");
    let mut a = store.checkpoints("a").await.expect("a");
    a.sort();
    assert_eq!(a, vec![Position::new(0, 10), Position::new(1, 9)]);
    assert_eq!(
        store.checkpoints("b").await.expect("b"),
        vec![Position::new(0, 2)]
    );
}

/// A report merges the stored rows of every partition and counts active users per period.
pub async fn reports_from_stored_rows(store: Arc<dyn AnalyticsStore>) {
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let day = Period::day_of(at("2026-03-31T00:00:00Z"));
    store
        .write(
            "c",
            AnalyticsBatch {
                active_users: vec![
                    (day, a),
                    (day, b),
                    (Period::month_of(at("2026-03-31T00:00:00Z")), a),
                ],
                rollups: vec![
                    row(Granularity::Minute, "2026-03-31T10:03:00Z", 0, 5, 3),
                    row(Granularity::Minute, "2026-03-31T10:03:00Z", 1, 5, 1),
                    row(Granularity::Minute, "2026-03-31T10:07:00Z", 0, 9, 2),
                    row(Granularity::Day, "2026-03-31T00:00:00Z", 0, 9, 5),
                    row(Granularity::Day, "2026-03-31T00:00:00Z", 1, 5, 1),
                ],
                checkpoint: vec![Position::new(0, 9)],
                ..AnalyticsBatch::default()
            },
        )
        .await
        .expect("write");
    let query = ReportQuery::new(at("2026-03-31T10:00:00Z"), at("2026-03-31T10:05:00Z"), None)
        .expect("query");
    let r = report(store.as_ref(), &query).await.expect("report");
    assert_eq!(r.buckets.len(), 1);
    assert_eq!(r.buckets[0].start, at("2026-03-31T10:03:00Z"));
    assert_eq!(r.buckets[0].counts.messages, 4);
    let d = r.buckets[0].delivery_latency.as_ref().expect("latency");
    assert_eq!((d.count, d.p50_ms, d.max_ms), (2, 100, 300));
    assert_eq!(r.daily_active_users.len(), 1);
    assert_eq!(r.daily_active_users[0].users, 2);
    assert_eq!(r.monthly_active_users[0].users, 1);
    assert_eq!(r.totals.friend_funnel.conversion, Some(0.5));

    let by_day = ReportQuery::new(
        at("2026-03-30T00:00:00Z"),
        at("2026-04-02T00:00:00Z"),
        Some(Granularity::Day),
    )
    .expect("query");
    let r = report(store.as_ref(), &by_day).await.expect("report");
    assert_eq!(r.buckets.len(), 1);
    assert_eq!(r.totals.counts.messages, 6);
    let days: Vec<(String, u64)> = r
        .daily_active_users
        .iter()
        .map(|d| (d.period.clone(), d.users))
        .collect();
    assert_eq!(
        days,
        [
            ("2026-03-30".to_owned(), 0),
            ("2026-03-31".to_owned(), 2),
            ("2026-04-01".to_owned(), 0)
        ]
    );
    assert_eq!(r.monthly_active_users.len(), 2);
}
