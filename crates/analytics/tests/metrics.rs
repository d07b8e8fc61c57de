//! The consumer's Prometheus metrics: what it newly counts, never what it finds counted
//! already, and today's active users. One test in its own binary: the metrics are
//! process-wide.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{record, run_to_end, setup, write_history};
use missive_analytics::Analytics;
use missive_analytics::sqlite::SqliteAnalytics;
use missive_analytics::worker::metrics;
use missive_events::{Envelope, Event, Presence};
use missive_log::EventLog;
use tokio::sync::watch;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_each_event_once_and_show_todays_active_users() {
    let s = setup();
    write_history(s.log.as_ref()).await;
    let store = Arc::new(SqliteAnalytics::open(&s.dir.path().join("a.db")).expect("store"));
    let m = metrics();
    let figures = || {
        (
            m.messages.with_label_values(&["direct"]).get(),
            m.messages.with_label_values(&["channel"]).get(),
            m.conversations_started.get(),
            m.friend_requests.get(),
            m.friend_accepts.get(),
            m.delivery_latency.get_sample_count(),
            m.read_latency.get_sample_count(),
        )
    };
    assert_eq!(figures(), (0, 0, 0, 0, 0, 0, 0));
    run_to_end(
        Analytics::new(s.log.clone(), store.clone()).with_batch_size(4),
        s.log.as_ref(),
    )
    .await
    .expect("run");
    assert_eq!(figures(), (5, 1, 2, 2, 2, 4, 2));
    let end = s.log.end_positions().await.expect("end")[0];
    assert_eq!(
        m.position.with_label_values(&["0"]).get(),
        end.offset as i64
    );
    // A re-run finds everything counted: the counters stay.
    run_to_end(
        Analytics::new(s.log.clone(), store.clone()).with_group("again"),
        s.log.as_ref(),
    )
    .await
    .expect("re-run");
    assert_eq!(figures(), (5, 1, 2, 2, 2, 4, 2));
    let text = missive_telemetry::metrics().render();
    for name in [
        "missive_analytics_messages_total{kind=\"direct\"} 5",
        "missive_analytics_delivery_latency_seconds_bucket",
        "missive_analytics_daily_active_users",
        "missive_analytics_monthly_active_users",
        "missive_analytics_lag{partition=\"0\"} 0",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }

    // Two users come online now: the gauges follow today's and this month's active users.
    let analytics = Analytics::new(s.log.clone(), store.clone());
    let (stop, mut stop_rx) = watch::channel(false);
    let task = tokio::spawn(analytics.run(async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    for _ in 0..2 {
        let user = Uuid::now_v7();
        let online = Envelope::new(
            Event::PresenceChanged {
                user_id: user,
                status: Presence::Online,
            },
            user,
            Uuid::now_v7(),
            Utc::now(),
        );
        s.log.append(vec![record(&online)]).await.expect("append");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while m.daily_active_users.get() != 2 || m.monthly_active_users.get() < 2 {
        assert!(
            Instant::now() < deadline,
            "the gauges did not follow: DAU {}, MAU {}",
            m.daily_active_users.get(),
            m.monthly_active_users.get()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).expect("stop");
    task.await.expect("join").expect("ran cleanly");
}
