//! GET /v1/admin/analytics end to end: the analytics consumer running in `serve` counts the
//! traffic of real requests, only an operator's token may read it, bad queries are 400s, and a
//! restart (the consumer reading again from its checkpoint) counts nothing twice.

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use common::{Backend, Harness};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Polls the report until `done` holds (the consumer runs beside the projector, with no
/// position to wait for), or fails after 20 s with the last answer.
async fn report_when(
    h: &Harness,
    token: &str,
    query: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = h
            .call(
                Method::GET,
                &format!("/v1/admin/analytics?{query}"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        if done(&a.body) {
            return a.body;
        }
        assert!(Instant::now() < deadline, "never: {}", a.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn analytics_count_the_traffic_for_operators_only() {
    let mut h = Harness::start().await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let carol = h.register("carol").await;
    h.befriend(&alice, &bob).await;
    // carol asks alice, who does not answer: two requests, one accepted.
    let asked = h
        .post(&format!("/v1/friends/{}", alice.id), &carol, json!({}))
        .await;
    assert!(asked.status.is_success(), "{asked:?}");
    let mut last = Value::Null;
    for text in ["one", "two", "three"] {
        last = h.send(&alice, &bob, text).await;
    }
    h.send(&bob, &alice, "back").await;
    let conv = last["conversation_id"].as_str().expect("conv").to_owned();
    let read = h
        .post(
            &format!("/v1/conversations/{conv}/read"),
            &bob,
            json!({ "up_to": last["message_id"] }),
        )
        .await;
    assert!(read.status.is_success(), "{read:?}");

    let admin = h.server.as_ref().expect("running").secret.issue_admin(
        alice.id,
        Utc::now().timestamp(),
        600,
    );
    let now = Utc::now();
    let query = format!(
        "from={}&to={}&granularity=day",
        (now - chrono::Duration::days(1)).format("%Y-%m-%dT%H:%M:%SZ"),
        (now + chrono::Duration::minutes(1)).format("%Y-%m-%dT%H:%M:%SZ")
    );
    let report = report_when(&h, &admin, &query, |r| {
        r["totals"]["messages"] == 4 && r["totals"]["read_latency"]["count"] == 1
    })
    .await;
    let totals = &report["totals"];
    assert_eq!(totals["conversations_started"], 1, "{report}");
    assert_eq!(totals["friend_requests"], 2, "{report}");
    assert_eq!(totals["friend_accepts"], 1, "{report}");
    assert_eq!(totals["friend_funnel"]["conversion"], 0.5, "{report}");
    let today = now.format("%Y-%m-%d").to_string();
    let dau = report["daily_active_users"]
        .as_array()
        .expect("dau")
        .iter()
        .find(|d| d["period"] == today.as_str())
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(dau["users"], 3, "alice, bob and carol: {report}");
    assert_eq!(report["granularity"], "day");

    // Users may not; bad queries say what is wrong.
    let user = h
        .call(
            Method::GET,
            &format!("/v1/admin/analytics?{query}"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(user.status, StatusCode::FORBIDDEN, "{user:?}");
    assert_eq!(user.code(), "admin_only");
    let anonymous = h
        .call(
            Method::GET,
            &format!("/v1/admin/analytics?{query}"),
            None,
            None,
        )
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{anonymous:?}");
    for (bad, says) in [
        ("to=2026-12-03T00:00:00Z", "`from` and `to` are required"),
        ("from=yesterday&to=2026-12-03T00:00:00Z", "from"),
        ("from=2026-12-03T00:00:00Z&to=2026-12-02T00:00:00Z", ""),
        (
            "from=2026-12-01T00:00:00Z&to=2026-12-02T00:00:00Z&granularity=hour",
            "hour",
        ),
        (
            "from=2026-01-01T00:00:00Z&to=2026-12-02T00:00:00Z&granularity=minute",
            "",
        ),
    ] {
        let a = h
            .call(
                Method::GET,
                &format!("/v1/admin/analytics?{bad}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}: {a:?}");
        assert_eq!(a.code(), "invalid_request", "{bad}: {a:?}");
        assert!(a.message().contains(says), "{bad}: {a:?}");
    }

    // A restart reads on from the consumer's checkpoint: the same figures.
    h.restart().await;
    let more = h.send(&alice, &bob, "after").await;
    assert!(more["message_id"].is_string());
    let again = report_when(&h, &admin, &query, |r| r["totals"]["messages"] == 5).await;
    assert_eq!(again["totals"]["conversations_started"], 1, "{again}");
    assert_eq!(again["totals"]["friend_requests"], 2, "{again}");
    h.shutdown().await;
}

/// With `--analytics off` the API says so; `missive analytics` alone counts and serves only
/// its metrics.
async fn analytics_off_and_the_standalone_consumer() {
    let h = Harness::start_with(|c| c.analytics = false).await;
    let alice = h.register("alice").await;
    let admin = h.server.as_ref().expect("running").secret.issue_admin(
        alice.id,
        Utc::now().timestamp(),
        600,
    );
    let off = h
        .call(
            Method::GET,
            "/v1/admin/analytics?from=2026-12-01T00:00:00Z&to=2026-12-02T00:00:00Z",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(off.status, StatusCode::SERVICE_UNAVAILABLE, "{off:?}");
    assert_eq!(off.code(), "analytics_off");

    let consumer = h
        .start_companion(missive_cli::server::Role::Analytics)
        .await;
    let base = format!("http://{}", consumer.addr.expect("a metrics listener"));
    let metrics = h
        .client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.expect("text");
    assert!(
        text.contains("missive_analytics_daily_active_users"),
        "{text}"
    );
    let api = h
        .client
        .get(format!("{base}/v1/users/me"))
        .send()
        .await
        .expect("answer");
    assert_eq!(api.status(), StatusCode::NOT_FOUND);
    // It counted alice's registration: she is today's one active user.
    let store = missive_cli::server::open_analytics(&h.config.store, &h.config.data_dir)
        .await
        .expect("the analytics store");
    let deadline = Instant::now() + Duration::from_secs(20);
    let today = Utc::now().date_naive();
    loop {
        let active = store
            .active_users(missive_analytics::Period::Day(today))
            .await
            .expect("active users");
        if active == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "never counted: {active}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consumer.shutdown().await.expect("clean shutdown");
    h.shutdown().await;
}

mod embedded {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn analytics_off_and_the_standalone_consumer() {
        super::analytics_off_and_the_standalone_consumer().await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn analytics_count_the_traffic_for_operators_only() {
        super::analytics_count_the_traffic_for_operators_only().await
    }
}

mod kafka {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn analytics_count_the_traffic_for_operators_only() {
        common::BACKEND
            .scope(
                Backend::Kafka,
                super::analytics_count_the_traffic_for_operators_only(),
            )
            .await
    }
}
