//! Account standing end to end: an operator blocks, unblocks and deletes accounts with
//! `/v1/admin/users/...`; a blocked user's commands and WebSocket sessions are refused, nobody
//! can reach them; deletion is final, scrubs the profile and frees the username; standing
//! survives a restart (read back from the read models) and a rebuild of the read models.

mod common;

use common::{Client, Harness};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn admin(h: &Harness, token: &str, method: Method, path: &str) -> common::Answer {
    h.call(method, path, Some(token), None).await
}

async fn status_of(h: &Harness, who: &Client, of: &Client) -> String {
    let a = h.get(&format!("/v1/users/{}", of.id), who).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    a.body["status"].as_str().expect("status").to_owned()
}

async fn send(h: &Harness, from: &Client, to: &Client, text: &str) -> common::Answer {
    h.post(
        &format!("/v1/conversations/direct/{}/messages", to.id),
        from,
        json!({ "text": text }),
    )
    .await
}

async fn accounts_are_blocked_unblocked_and_deleted_by_operators() {
    let mut h = Harness::start().await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let carol = h.register("carol").await;
    h.befriend(&alice, &bob).await;
    h.befriend(&bob, &carol).await;
    let op = h.operator(&carol);

    // Only operators, and only well-formed requests.
    let user_token = admin(
        &h,
        &alice.token,
        Method::POST,
        &format!("/v1/admin/users/{}/block", bob.id),
    )
    .await;
    assert_eq!(user_token.status, StatusCode::FORBIDDEN, "{user_token:?}");
    assert_eq!(user_token.code(), "admin_only");
    for (method, path) in [
        (Method::POST, format!("/v1/admin/users/{}/unblock", bob.id)),
        (Method::DELETE, format!("/v1/admin/users/{}", bob.id)),
    ] {
        // Even bob himself may not.
        let refused = admin(&h, &bob.token, method, &path).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{path}: {refused:?}");
        assert_eq!(refused.code(), "admin_only");
    }
    let anonymous = h
        .call(
            Method::POST,
            &format!("/v1/admin/users/{}/block", bob.id),
            None,
            None,
        )
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{anonymous:?}");
    let bad = admin(&h, &op, Method::POST, "/v1/admin/users/not-a-uuid/block").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{bad:?}");
    let unknown = admin(
        &h,
        &op,
        Method::POST,
        &format!("/v1/admin/users/{}/block", uuid::Uuid::now_v7()),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{unknown:?}");
    assert_eq!(unknown.code(), "user_not_found");
    assert_eq!(status_of(&h, &alice, &bob).await, "offline");

    // Block bob: his commands are refused, nobody reaches him, reading still works.
    let blocked = admin(
        &h,
        &op,
        Method::POST,
        &format!("/v1/admin/users/{}/block", bob.id),
    )
    .await;
    assert_eq!(blocked.status, StatusCode::OK, "{blocked:?}");
    assert_eq!(blocked.body["status"], "blocked");
    assert!(blocked.body["position"].is_string(), "{blocked:?}");
    let again = admin(
        &h,
        &op,
        Method::POST,
        &format!("/v1/admin/users/{}/block", bob.id),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK, "{again:?}");
    assert_eq!(
        again.body["position"],
        Value::Null,
        "blocking twice decides nothing"
    );
    assert_eq!(status_of(&h, &alice, &bob).await, "blocked");

    let his = send(&h, &bob, &alice, "let me out").await;
    assert_eq!(his.status, StatusCode::FORBIDDEN, "{his:?}");
    assert_eq!(his.code(), "account_blocked");
    let profile = h
        .call(
            Method::PATCH,
            "/v1/users/me",
            Some(&bob.token),
            Some(json!({ "display_name": "Bobby" })),
        )
        .await;
    assert_eq!(profile.status, StatusCode::FORBIDDEN, "{profile:?}");
    assert_eq!(profile.code(), "account_blocked");
    let to_him = send(&h, &alice, &bob, "hello?").await;
    assert_eq!(to_him.status, StatusCode::FORBIDDEN, "{to_him:?}");
    assert_eq!(to_him.code(), "recipient_unavailable");
    let dave = h.register("dave").await;
    let befriend = h
        .post(&format!("/v1/friends/{}", bob.id), &dave, json!({}))
        .await;
    assert_eq!(befriend.status, StatusCode::FORBIDDEN, "{befriend:?}");
    assert_eq!(befriend.code(), "recipient_unavailable");
    let ws = h
        .call(
            Method::GET,
            &format!("/v1/ws?access_token={}", bob.token),
            None,
            None,
        )
        .await;
    assert_eq!(ws.status, StatusCode::FORBIDDEN, "{ws:?}");
    assert_eq!(ws.code(), "account_blocked");
    let reads = h.get("/v1/conversations", &bob).await;
    assert_eq!(reads.status, StatusCode::OK, "{reads:?}");
    // Others carry on.
    h.befriend(&dave, &carol).await;
    assert_eq!(
        send(&h, &dave, &carol, "fine").await.status,
        StatusCode::CREATED
    );

    // Standing survives a restart: read back from the read models.
    h.restart().await;
    assert_eq!(
        send(&h, &bob, &alice, "still?").await.code(),
        "account_blocked"
    );
    assert_eq!(status_of(&h, &alice, &bob).await, "blocked");

    let unblocked = admin(
        &h,
        &op,
        Method::POST,
        &format!("/v1/admin/users/{}/unblock", bob.id),
    )
    .await;
    assert_eq!(unblocked.status, StatusCode::OK, "{unblocked:?}");
    assert_eq!(unblocked.body["status"], "offline");
    assert_eq!(
        send(&h, &bob, &alice, "back").await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        send(&h, &alice, &bob, "welcome").await.status,
        StatusCode::CREATED
    );

    // Delete alice: final, scrubbed, her name is free.
    let deleted = admin(
        &h,
        &op,
        Method::DELETE,
        &format!("/v1/admin/users/{}", alice.id),
    )
    .await;
    assert_eq!(deleted.status, StatusCode::OK, "{deleted:?}");
    assert_eq!(deleted.body["status"], "deleted");
    assert_eq!(
        deleted.body["username"],
        format!("deleted-{}", alice.id.simple())
    );
    assert_eq!(deleted.body["display_name"], "");
    let hers = send(&h, &alice, &bob, "am I gone?").await;
    assert_eq!(hers.status, StatusCode::FORBIDDEN, "{hers:?}");
    assert_eq!(hers.code(), "account_deleted");
    assert_eq!(
        send(&h, &bob, &alice, "bye").await.code(),
        "recipient_unavailable"
    );
    let revive = admin(
        &h,
        &op,
        Method::POST,
        &format!("/v1/admin/users/{}/unblock", alice.id),
    )
    .await;
    assert_eq!(revive.status, StatusCode::CONFLICT, "{revive:?}");
    let new_alice = h.register("Alice").await;
    assert_ne!(new_alice.id, alice.id);
    let friends = h.get("/v1/friends", &bob).await;
    let listed: Vec<&Value> = friends
        .items()
        .iter()
        .filter(|f| f["user"]["id"] == json!(alice.id))
        .collect();
    assert_eq!(listed.len(), 1, "{friends:?}");
    assert_eq!(listed[0]["user"]["status"], "deleted");
    assert_eq!(listed[0]["user"]["display_name"], "");

    // The read models rebuilt from the log say the same.
    h.restart_with_empty_read_models().await;
    assert_eq!(status_of(&h, &bob, &alice).await, "deleted");
    assert_eq!(status_of(&h, &alice, &bob).await, "offline");
    let by_name = h.get(&format!("/v1/users/{}", new_alice.id), &bob).await;
    assert_eq!(by_name.body["username"], "Alice", "{by_name:?}");
    assert_eq!(
        send(&h, &alice, &bob, "again").await.code(),
        "account_deleted"
    );
    h.shutdown().await;
}

/// A second API process on the same log, holding no WebSocket session, learns of a block from
/// the log (its gateway) and refuses the blocked user's commands too. On Kafka: several API
/// processes writing to one embedded log is not a supported deployment.
async fn other_api_processes_learn_of_blocks_from_the_log() {
    let h = Harness::start().await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    h.befriend(&alice, &bob).await;
    let other = h.start_companion(missive_cli::server::Role::Api).await;
    let other_base = format!("http://{}", other.addr.expect("an API"));
    let send_via_other = || async {
        h.client
            .post(format!(
                "{other_base}/v1/conversations/direct/{}/messages",
                alice.id
            ))
            .bearer_auth(&bob.token)
            .json(&json!({ "text": "via the other process" }))
            .send()
            .await
            .expect("send")
    };
    let sent = send_via_other().await;
    assert_eq!(sent.status(), StatusCode::CREATED);
    let op = h.operator(&alice);
    let blocked = admin(
        &h,
        &op,
        Method::POST,
        &format!("/v1/admin/users/{}/block", bob.id),
    )
    .await;
    assert_eq!(blocked.status, StatusCode::OK, "{blocked:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let answer = send_via_other().await;
        if answer.status() == StatusCode::FORBIDDEN {
            let body: Value = answer.json().await.expect("json");
            assert_eq!(body["error"]["code"], "account_blocked", "{body}");
            break;
        }
        assert_eq!(answer.status(), StatusCode::CREATED);
        assert!(
            std::time::Instant::now() < deadline,
            "the other process never learnt of the block"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    other.shutdown().await.expect("the other process stops");
    h.shutdown().await;
}

mod embedded {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn accounts_are_blocked_unblocked_and_deleted_by_operators() {
        super::accounts_are_blocked_unblocked_and_deleted_by_operators().await
    }
}

mod kafka {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn accounts_are_blocked_unblocked_and_deleted_by_operators() {
        crate::common::BACKEND
            .scope(
                crate::common::Backend::Kafka,
                super::accounts_are_blocked_unblocked_and_deleted_by_operators(),
            )
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn other_api_processes_learn_of_blocks_from_the_log() {
        crate::common::BACKEND
            .scope(
                crate::common::Backend::Kafka,
                super::other_api_processes_learn_of_blocks_from_the_log(),
            )
            .await
    }
}

mod scylla {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn accounts_are_blocked_unblocked_and_deleted_by_operators() {
        crate::common::on_scylla(
            "accounts_are_blocked_unblocked_and_deleted_by_operators",
            super::accounts_are_blocked_unblocked_and_deleted_by_operators,
        )
        .await
    }
}
