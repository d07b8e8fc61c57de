//! Request handling around the handlers: the rate limiter in the real server: a user sending commands faster than the limit gets
//! 429 `rate_limited` with `Retry-After`, nothing of the refused command is stored, reads are
//! never limited, other users are not affected, and the refusals are counted in /metrics.

mod common;

use common::Harness;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_beyond_the_per_user_limit_are_refused_with_retry_after() {
    let h = Harness::start_with(|c| {
        // One command per 20 s with a burst of 2: the third command in a row is refused,
        // however slowly the test runs.
        c.rate_limits.per_user = 0.05;
        c.rate_limits.burst_seconds = 40.0;
        c.rate_limits.per_ip = 0.0;
    })
    .await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    // Alice's first command: asking bob (who accepts: his first).
    h.befriend(&alice, &bob).await;
    let path = format!("/v1/conversations/direct/{}/messages", bob.id);
    let mut refused = None;
    let mut stored = 0;
    for i in 0..5 {
        let a = h
            .post(&path, &alice, json!({ "text": format!("note {i}") }))
            .await;
        match a.status {
            StatusCode::CREATED => stored += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                refused = Some(a);
                break;
            }
            _ => panic!("unexpected answer: {a:?}"),
        }
    }
    let refused = refused.expect("a command beyond the burst is refused");
    assert_eq!(stored, 1, "a burst of 2, one taken by the friend request");
    assert_eq!(refused.code(), "rate_limited");
    assert!(refused.message().contains("try again"), "{refused:?}");
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("whole seconds");
    assert!((1..=20).contains(&retry), "Retry-After {retry}");

    // Reads are not limited; the refused note was not stored.
    for _ in 0..5 {
        let convs = h.get("/v1/conversations", &alice).await;
        assert_eq!(convs.status, StatusCode::OK, "{convs:?}");
    }
    let history = h
        .get("/v1/messages?since=2000-01-01T00:00:00Z", &alice)
        .await;
    assert_eq!(history.status, StatusCode::OK, "{history:?}");
    assert_eq!(history.items().len(), 1, "{history:?}");
    // Another user has a budget of their own.
    let bobs = h
        .post(
            &format!("/v1/conversations/direct/{}/messages", alice.id),
            &bob,
            json!({ "text": "mine" }),
        )
        .await;
    assert_eq!(bobs.status, StatusCode::CREATED, "{bobs:?}");
    let metrics = h.metrics().await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("missive_rate_limited_total{scope=\"user\"} ") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    h.shutdown().await;
}

/// Every answer carries the request's id: the client's `X-Request-Id` when it is a UUID (so
/// logs on both sides can be joined), otherwise a fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_the_request_id() {
    let h = Harness::start().await;
    let mine = uuid::Uuid::now_v7().to_string();
    let answer = h
        .client
        .get(format!("{}/healthz", h.base))
        .header("x-request-id", &mine)
        .send()
        .await
        .expect("healthz");
    assert_eq!(answer.headers()["x-request-id"], mine.as_str());
    for sent in [None, Some("not-a-uuid")] {
        let mut request = h
            .client
            .post(format!("{}/v1/users", h.base))
            .json(&json!({}));
        if let Some(id) = sent {
            request = request.header("x-request-id", id);
        }
        let answer = request.send().await.expect("register");
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
        let id = answer.headers()["x-request-id"].to_str().expect("ascii");
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    }
    h.shutdown().await;
}
