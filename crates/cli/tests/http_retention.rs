//! Message retention end to end (`--retention-days`): once messages are older than the
//! period, the server's sweeper removes them from the read models (here at the restart, its
//! first sweep); the conversation stays, its unread count drops to what is left, and new
//! messages carry on.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{TimeDelta, Utc};
use common::{Client, Harness};
use reqwest::StatusCode;
use serde_json::Value;

/// `GET path` once the read models hold `at`: on Kafka, a restarted projector may wait for
/// the group's rebalance longer than one read waits (503 not_caught_up), so it asks again.
async fn get_at(h: &Harness, path: &str, who: &Client, at: &Value) -> common::Answer {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let a = h.get_at(path, who, at).await;
        if a.status != StatusCode::SERVICE_UNAVAILABLE || std::time::Instant::now() > deadline {
            return a;
        }
    }
}

async fn history(h: &Harness, who: &Client, peer: &Client, at: &Value) -> Vec<String> {
    let conversation = missive_events::ids::direct_conversation_id(who.id, peer.id);
    let path = format!("/v1/conversations/{conversation}/messages?limit=50");
    let a = get_at(h, &path, who, at).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    a.texts()
}

async fn only_conversation(h: &Harness, who: &Client, at: &Value) -> Value {
    let a = get_at(h, "/v1/conversations", who, at).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.items().len(), 1, "{a:?}");
    a.items()[0].clone()
}

async fn expired_messages_leave_the_read_models() {
    // The server's clock, moved forward by `ahead` seconds.
    let ahead = Arc::new(AtomicI64::new(0));
    let clock = ahead.clone();
    let mut h = Harness::start_with(move |c| {
        c.retention = missive_store::Retention::days(1)
            .expect("a retention")
            .with_clock(move || Utc::now() + TimeDelta::seconds(clock.load(Ordering::SeqCst)));
    })
    .await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    h.befriend(&alice, &bob).await;
    h.send(&alice, &bob, "old one").await;
    let last = h.send(&alice, &bob, "old two").await;
    assert_eq!(history(&h, &bob, &alice, &last["position"]).await.len(), 2);
    assert_eq!(
        only_conversation(&h, &bob, &last["position"]).await["unread_count"],
        2
    );

    // Two days later: the sweep at start removes both (it runs beside the server: wait).
    // Scylla expires rows by TTL on its own clock, which the test cannot move: there a full
    // replay shows that messages past the retention when projected are not stored.
    ahead.store(2 * 86_400, Ordering::SeqCst);
    if matches!(h.config.store, missive_cli::server::StoreBackend::Scylla(_)) {
        h.restart_with_empty_read_models().await;
    } else {
        h.restart().await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !history(&h, &bob, &alice, &last["position"])
        .await
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "never swept");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let listed = only_conversation(&h, &bob, &last["position"]).await;
    assert_eq!(listed["unread_count"], 0, "{listed}");
    assert!(listed["last_message"].is_null(), "{listed}");

    // New messages are kept, and counted alone.
    ahead.store(0, Ordering::SeqCst);
    let fresh = h.send(&alice, &bob, "new one").await;
    assert_eq!(
        history(&h, &bob, &alice, &fresh["position"]).await,
        ["new one"]
    );
    assert_eq!(
        only_conversation(&h, &bob, &fresh["position"]).await["unread_count"],
        1
    );
    h.shutdown().await;
}

both_logs!(expired_messages_leave_the_read_models);
