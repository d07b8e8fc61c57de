//! Account standing end to end: an operator blocks, unblocks and deletes accounts with
//! `/v1/admin/users/...`; a blocked user's commands and WebSocket sessions are refused, nobody
//! can reach them; deletion is final, scrubs the profile and frees the username; standing
//! survives a restart (read back from the read models) and a rebuild of the read models.

mod common;

use common::{
    Client, Harness, Socket, close_frame, drain, next_of, refused_without_a_valid_admin_token,
    upgrade_request, wait_for_status, ws_url,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use uuid::Uuid;

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
        &format!("/v1/admin/users/{}/block", Uuid::now_v7()),
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

/// An operator's token for a dedicated id (not a registered user's), as the README advises.
fn operator(h: &Harness) -> String {
    h.operator(&Client {
        id: Uuid::now_v7(),
        token: String::new(),
    })
}

async fn block(h: &Harness, op: &str, who: &Client) -> common::Answer {
    admin(
        h,
        op,
        Method::POST,
        &format!("/v1/admin/users/{}/block", who.id),
    )
    .await
}

async fn unblock(h: &Harness, op: &str, who: &Client) -> common::Answer {
    admin(
        h,
        op,
        Method::POST,
        &format!("/v1/admin/users/{}/unblock", who.id),
    )
    .await
}

/// `POST /v1/admin/users/{id}/block`, `.../unblock` and `DELETE /v1/admin/users/{id}` need a
/// valid operator's token: without one each is 401 `unauthorized` with `WWW-Authenticate:
/// Bearer`, and a user's genuine token (another user's, or the target's own) is 403
/// `admin_only`. None of these attempts changes the account; an operator's token then blocks,
/// unblocks and deletes it.
async fn admin_routes_refuse_invalid_tokens_and_users_tokens() {
    let h = Harness::start().await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    h.befriend(&alice, &bob).await;
    let routes = [
        (Method::POST, format!("/v1/admin/users/{}/block", bob.id)),
        (Method::POST, format!("/v1/admin/users/{}/unblock", bob.id)),
        (Method::DELETE, format!("/v1/admin/users/{}", bob.id)),
    ];
    for (method, path) in &routes {
        refused_without_a_valid_admin_token(&h, method.clone(), path, alice.id).await;
        for who in [&alice, &bob] {
            let a = admin(&h, &who.token, method.clone(), path).await;
            assert_eq!(
                (a.status, a.code()),
                (StatusCode::FORBIDDEN, "admin_only"),
                "{method} {path} with a user's token: {a:?}"
            );
            assert!(a.body.get("status").is_none(), "{a:?}");
        }
    }

    // Nothing changed: bob is active and may send.
    assert_eq!(status_of(&h, &alice, &bob).await, "offline");
    let sent = send(&h, &bob, &alice, "still here").await;
    assert_eq!(sent.status, StatusCode::CREATED, "{sent:?}");

    // An operator's token passes each route.
    let op = operator(&h);
    let expected = ["blocked", "offline", "deleted"];
    for ((method, path), status) in routes.into_iter().zip(expected) {
        let a = admin(&h, &op, method.clone(), &path).await;
        assert_eq!(a.status, StatusCode::OK, "{method} {path}: {a:?}");
        assert_eq!(a.body["status"], status, "{method} {path}: {a:?}");
    }
    assert_eq!(status_of(&h, &alice, &bob).await, "deleted");
    h.shutdown().await;
}

// ----- WebSocket sessions -----

/// The two ways of opening a session: the token in the Authorization header, and in the
/// `access_token` query parameter (browsers).
fn upgrade_requests(
    h: &Harness,
    who: &Client,
) -> [tokio_tungstenite::tungstenite::handshake::client::Request; 2] {
    let query = format!("{}?access_token={}", ws_url(h), who.token)
        .into_client_request()
        .expect("request");
    [upgrade_request(h, who), query]
}

/// Opens a session with `request` and reads up to the `synced` frame.
async fn open(request: tokio_tungstenite::tungstenite::handshake::client::Request) -> Socket {
    let (mut socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the session opens");
    assert_eq!(response.status(), 101);
    next_of(&mut socket, "synced").await;
    socket
}

/// Blocking a user ends every session they hold open (close code 4003, the account is
/// restricted: not "reconnect"), while other users' sessions carry on; a new upgrade by
/// them, with the token in either place, is refused before it happens with 403
/// `account_blocked`. Once unblocked they open sessions again.
async fn blocking_closes_the_users_sessions_and_refuses_new_ones() {
    let h = Harness::start().await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    h.befriend(&alice, &bob).await;
    let op = operator(&h);
    let [by_header, by_query] = upgrade_requests(&h, &bob);
    let mut phone = open(by_header).await;
    let mut browser = open(by_query).await;
    let [alices_request, _] = upgrade_requests(&h, &alice);
    let mut alices = open(alices_request).await;
    wait_for_status(&h, &alice, &bob, "online").await;

    let blocked = block(&h, &op, &bob).await;
    assert_eq!(blocked.status, StatusCode::OK, "{blocked:?}");
    for (device, socket) in [("phone", &mut phone), ("browser", &mut browser)] {
        let frame = close_frame(socket).await;
        assert_eq!(frame.code, CloseCode::Library(4003), "{device}: {frame:?}");
        assert!(
            frame.reason.contains("blocked or deleted"),
            "{device}: {frame:?}"
        );
    }
    // Alice's session is not disturbed: it still answers a ping.
    drain(&mut alices).await;

    // Reconnecting is refused before the upgrade, whichever way the token comes.
    for request in upgrade_requests(&h, &bob) {
        let uri = request.uri().clone();
        match tokio_tungstenite::connect_async(request).await {
            Err(WsError::Http(response)) => {
                assert_eq!(response.status(), 403, "{uri}");
                if let Some(body) = response.body().as_deref().filter(|b| !b.is_empty()) {
                    let body: Value = serde_json::from_slice(body).expect("a JSON error");
                    assert_eq!(body["error"]["code"], "account_blocked", "{uri}: {body}");
                }
            }
            other => panic!("{uri}: expected 403, got {other:?}"),
        }
    }
    // The same upgrade request, read as plain HTTP, names the refusal.
    let refused = h
        .raw(Method::GET, "/v1/ws", Some(&bob.token), |r| {
            r.header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        })
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
    assert_eq!(refused.code(), "account_blocked");
    assert_eq!(status_of(&h, &alice, &bob).await, "blocked");

    // Unblocked, bob is offline (his sessions ended) and opens a session again.
    let unblocked = unblock(&h, &op, &bob).await;
    assert_eq!(unblocked.status, StatusCode::OK, "{unblocked:?}");
    wait_for_status(&h, &alice, &bob, "offline").await;
    let [again, _] = upgrade_requests(&h, &bob);
    let mut again = open(again).await;
    drain(&mut again).await;
    wait_for_status(&h, &alice, &bob, "online").await;
    h.shutdown().await;
}

// ----- invitations -----

async fn create_server(h: &Harness, owner: &Client, body: Value) -> String {
    let a = h.post("/v1/servers", owner, body).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    a.body["server_id"].as_str().expect("server_id").to_owned()
}

async fn invite(h: &Harness, who: &Client, server: &str, invitee: &Client) -> common::Answer {
    h.post(
        &format!("/v1/servers/{server}/invitations"),
        who,
        json!({ "user_id": invitee.id }),
    )
    .await
}

/// Nobody invites a blocked or a deleted user to a server, public or private (403
/// `recipient_unavailable`), and a blocked subscriber invites nobody (403 `account_blocked`);
/// no invitation is stored. Unblocked, the same user is invited as before.
async fn blocked_and_deleted_users_cannot_be_invited() {
    let h = Harness::start().await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let carol = h.register("carol").await;
    let dave = h.register("dave").await;
    let erin = h.register("erin").await;
    let op = operator(&h);
    let public = create_server(&h, &alice, json!({ "name": "Open Garden" })).await;
    let private = create_server(
        &h,
        &alice,
        json!({ "name": "Walled Garden", "visibility": "private" }),
    )
    .await;
    let subscribed = h
        .post(
            &format!("/v1/servers/{public}/subscription"),
            &carol,
            json!(null),
        )
        .await;
    assert_eq!(subscribed.status, StatusCode::OK, "{subscribed:?}");

    assert_eq!(block(&h, &op, &bob).await.status, StatusCode::OK);
    assert_eq!(block(&h, &op, &carol).await.status, StatusCode::OK);
    let deleted = admin(
        &h,
        &op,
        Method::DELETE,
        &format!("/v1/admin/users/{}", dave.id),
    )
    .await;
    assert_eq!(deleted.status, StatusCode::OK, "{deleted:?}");

    for server in [&public, &private] {
        for (name, who) in [("blocked bob", &bob), ("deleted dave", &dave)] {
            let a = invite(&h, &alice, server, who).await;
            assert_eq!(
                (a.status, a.code()),
                (StatusCode::FORBIDDEN, "recipient_unavailable"),
                "inviting {name} to {server}: {a:?}"
            );
        }
    }
    let by_blocked = invite(&h, &carol, &public, &erin).await;
    assert_eq!(
        (by_blocked.status, by_blocked.code()),
        (StatusCode::FORBIDDEN, "account_blocked"),
        "{by_blocked:?}"
    );
    // No invitation reached anyone (a blocked user still reads).
    for who in [&bob, &erin] {
        let pending = h.get("/v1/invitations", who).await;
        assert_eq!(pending.status, StatusCode::OK, "{pending:?}");
        assert!(pending.items().is_empty(), "{pending:?}");
    }

    // Unblocked, bob is invited like anyone.
    assert_eq!(unblock(&h, &op, &bob).await.status, StatusCode::OK);
    let invited = invite(&h, &alice, &private, &bob).await;
    assert_eq!(invited.status, StatusCode::CREATED, "{invited:?}");
    let pending = h
        .get_at("/v1/invitations", &bob, &invited.body["position"])
        .await;
    assert_eq!(pending.items().len(), 1, "{pending:?}");
    assert_eq!(
        pending.items()[0]["server_id"],
        json!(private),
        "{pending:?}"
    );
    h.shutdown().await;
}

mod embedded {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn accounts_are_blocked_unblocked_and_deleted_by_operators() {
        super::accounts_are_blocked_unblocked_and_deleted_by_operators().await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admin_routes_refuse_invalid_tokens_and_users_tokens() {
        super::admin_routes_refuse_invalid_tokens_and_users_tokens().await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking_closes_the_users_sessions_and_refuses_new_ones() {
        super::blocking_closes_the_users_sessions_and_refuses_new_ones().await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocked_and_deleted_users_cannot_be_invited() {
        super::blocked_and_deleted_users_cannot_be_invited().await
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admin_routes_refuse_invalid_tokens_and_users_tokens() {
        crate::common::BACKEND
            .scope(
                crate::common::Backend::Kafka,
                super::admin_routes_refuse_invalid_tokens_and_users_tokens(),
            )
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking_closes_the_users_sessions_and_refuses_new_ones() {
        crate::common::BACKEND
            .scope(
                crate::common::Backend::Kafka,
                super::blocking_closes_the_users_sessions_and_refuses_new_ones(),
            )
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocked_and_deleted_users_cannot_be_invited() {
        crate::common::BACKEND
            .scope(
                crate::common::Backend::Kafka,
                super::blocked_and_deleted_users_cannot_be_invited(),
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admin_routes_refuse_invalid_tokens_and_users_tokens() {
        crate::common::on_scylla(
            "admin_routes_refuse_invalid_tokens_and_users_tokens",
            super::admin_routes_refuse_invalid_tokens_and_users_tokens,
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking_closes_the_users_sessions_and_refuses_new_ones() {
        crate::common::on_scylla(
            "blocking_closes_the_users_sessions_and_refuses_new_ones",
            super::blocking_closes_the_users_sessions_and_refuses_new_ones,
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocked_and_deleted_users_cannot_be_invited() {
        crate::common::on_scylla(
            "blocked_and_deleted_users_cannot_be_invited",
            super::blocked_and_deleted_users_cannot_be_invited,
        )
        .await
    }
}
