//! `missive api` and `missive project` as separate parts: an API that runs no projector
//! follows the projector's progress through the read store, on both logs.

#[macro_use]
mod common;

use common::Harness;
use missive_cli::server::Role;
use reqwest::{Method, StatusCode};

async fn api_and_projector_in_separate_processes() {
    let h = Harness::start_with(|c| {
        c.role = Role::Api;
        c.service.projection_wait = std::time::Duration::from_millis(500);
    })
    .await;
    // Without a projector nothing is projected: a command that must read its own write
    // refuses instead of deciding on stale read models.
    let alone = h.register("early").await;
    let early = h
        .call(
            Method::POST,
            &format!("/v1/friends/{}", alone.id),
            Some(&alone.token),
            None,
        )
        .await;
    assert_eq!(early.status, StatusCode::SERVICE_UNAVAILABLE, "{early:?}");
    assert_eq!(early.code(), "not_caught_up");

    let projector = h.start_companion(Role::Projector).await;
    assert!(projector.addr.is_none(), "the projector serves no HTTP");
    // The projector joins (on Kafka, its consumer group) and catches up: the early
    // registration becomes visible.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while h
        .get(&format!("/v1/users/{}", alone.id), &alone)
        .await
        .status
        != StatusCode::OK
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the projector never caught up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    h.befriend(&alice, &bob).await;
    let sent = h.send(&alice, &bob, "across processes").await;
    let list = h.get_at("/v1/conversations", &bob, &sent["position"]).await;
    assert_eq!(list.status, StatusCode::OK, "{list:?}");
    assert_eq!(list.items()[0]["unread_count"], 1);
    assert_eq!(list.items()[0]["last_message"]["text"], "across processes");
    let ready = h.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::OK);
    let early_profile = h.get(&format!("/v1/users/{}", alone.id), &bob).await;
    assert_eq!(
        early_profile.body["username"], "early",
        "projected once the projector ran"
    );
    projector.shutdown().await.expect("projector stops cleanly");
    h.shutdown().await;
}

both_logs!(api_and_projector_in_separate_processes);
