//! End-to-end: registration, authentication, profiles, presence, friends, operations endpoints
//! and request-shape errors, against a real server on port 0.

#[macro_use]
mod common;

use common::Harness;
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

async fn registration_and_its_errors() {
    let h = Harness::start().await;
    let a = h
        .call(
            Method::POST,
            "/v1/users",
            None,
            Some(json!({"username": "alice", "display_name": "Alice A"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    assert_eq!(a.body["username"], "alice");
    assert_eq!(a.body["display_name"], "Alice A");
    assert!(a.body["position"].as_str().unwrap().contains(':'));
    assert!(a.body["token"].as_str().unwrap().split('.').count() == 3);

    let taken = h
        .call(
            Method::POST,
            "/v1/users",
            None,
            Some(json!({"username": "ALICE"})),
        )
        .await;
    assert_eq!(taken.status, StatusCode::CONFLICT);
    assert_eq!(taken.code(), "username_taken");

    let bad = h
        .call(
            Method::POST,
            "/v1/users",
            None,
            Some(json!({"username": "a b"})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.message().contains("3 to 32 characters"), "{bad:?}");

    let unknown = h
        .call(
            Method::POST,
            "/v1/users",
            None,
            Some(json!({"username": "bob", "admin": true})),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert!(
        unknown.message().contains("unknown field `admin`"),
        "{unknown:?}"
    );

    let wrong_type = h
        .call(
            Method::POST,
            "/v1/users",
            None,
            Some(json!({"username": 42})),
        )
        .await;
    assert_eq!(wrong_type.status, StatusCode::BAD_REQUEST);
    assert!(wrong_type.message().contains("username"), "{wrong_type:?}");

    let missing = h
        .call(Method::POST, "/v1/users", None, Some(json!({})))
        .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert!(
        missing.message().contains("missing field `username`"),
        "{missing:?}"
    );

    let not_json = h
        .raw(Method::POST, "/v1/users", None, |r| {
            r.header("content-type", "application/json")
                .body("{\"username\":")
        })
        .await;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);
    assert!(
        not_json.message().contains("not valid JSON"),
        "{not_json:?}"
    );

    let no_type = h
        .raw(Method::POST, "/v1/users", None, |r| {
            r.body("{\"username\":\"carol\"}")
        })
        .await;
    assert_eq!(no_type.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let not_json_type = h
        .raw(Method::POST, "/v1/users", None, |r| {
            r.header("content-type", "text/plain")
                .body("{\"username\":\"carol\"}")
        })
        .await;
    assert_eq!(not_json_type.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // A suffixed JSON type and parameters are JSON too.
    let problem_json = h
        .raw(Method::POST, "/v1/users", None, |r| {
            r.header(
                "content-type",
                "application/merge-patch+json; charset=utf-8",
            )
            .body("{\"username\":\"dave\"}")
        })
        .await;
    assert_eq!(problem_json.status, StatusCode::CREATED, "{problem_json:?}");

    // Fields by position are not a command, though serde could read them so.
    let array = h
        .raw(Method::POST, "/v1/users", None, |r| {
            r.header("content-type", "application/json")
                .body(" [\"erin\", null]")
        })
        .await;
    assert_eq!(array.status, StatusCode::BAD_REQUEST);
    assert!(
        array
            .message()
            .contains("expected a JSON object, found an array"),
        "{array:?}"
    );

    let huge = h
        .raw(Method::POST, "/v1/users", None, |r| {
            r.header("content-type", "application/json")
                .body(format!("{{\"username\":\"{}\"}}", "x".repeat(100_000)))
        })
        .await;
    assert_eq!(huge.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(huge.code(), "body_too_large");
    h.shutdown().await;
}

async fn closed_registration_is_refused() {
    let h = Harness::start_with(|c| c.service.registration_open = false).await;
    let a = h
        .call(
            Method::POST,
            "/v1/users",
            None,
            Some(json!({"username": "alice"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.code(), "registration_closed");
    h.shutdown().await;
}

async fn authentication_is_required_and_checked() {
    let h = Harness::start().await;
    let alice = h.register("alice").await;
    let path = format!("/v1/users/{}", alice.id);

    let none = h.call(Method::GET, &path, None, None).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    assert!(none.message().contains("Authorization"));

    let garbage = h.call(Method::GET, &path, Some("not-a-jwt"), None).await;
    assert_eq!(garbage.status, StatusCode::UNAUTHORIZED);

    let wrong_key = missive_api::Secret::new(b"other".to_vec()).issue(
        alice.id,
        chrono::Utc::now().timestamp(),
        60,
    );
    let forged = h.call(Method::GET, &path, Some(&wrong_key), None).await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    assert!(forged.message().contains("signature"));

    let secret = missive_api::Secret::new(b"test-secret".to_vec());
    let expired = secret.issue(alice.id, chrono::Utc::now().timestamp() - 100, 10);
    let old = h.call(Method::GET, &path, Some(&expired), None).await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);
    assert!(old.message().contains("expired"));

    let scheme = h
        .raw(Method::GET, &path, None, |r| {
            r.header("authorization", format!("Basic {}", alice.token))
        })
        .await;
    assert_eq!(scheme.status, StatusCode::UNAUTHORIZED);

    // A token minted like `missive token` does works.
    let minted = secret.issue(alice.id, chrono::Utc::now().timestamp(), 60);
    assert_eq!(
        h.call(Method::GET, &path, Some(&minted), None).await.status,
        StatusCode::OK
    );
    h.shutdown().await;
}

async fn profiles_and_presence() {
    let h = Harness::start().await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;

    let profile = h.get(&format!("/v1/users/{}", alice.id), &bob).await;
    assert_eq!(profile.status, StatusCode::OK);
    assert_eq!(profile.body["username"], "alice");
    assert_eq!(profile.body["display_name"], "alice");
    assert_eq!(profile.body["status"], "offline");
    assert!(profile.body["last_seen"].is_null());

    let me = h.get("/v1/users/me", &alice).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["id"], alice.id.to_string());
    assert_eq!(me.body["username"], "alice");
    let missing = h.get(&format!("/v1/users/{}", Uuid::now_v7()), &bob).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.code(), "user_not_found");
    let malformed = h.get("/v1/users/12345", &bob).await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert!(malformed.message().contains("id"), "{malformed:?}");

    let renamed = h
        .call(
            Method::PATCH,
            "/v1/users/me",
            Some(&alice.token),
            Some(json!({"display_name": "Alice Liddell"})),
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK, "{renamed:?}");
    assert_eq!(renamed.body["display_name"], "Alice Liddell");
    let seen = h
        .get_at(
            &format!("/v1/users/{}", alice.id),
            &bob,
            &renamed.body["position"],
        )
        .await;
    assert_eq!(seen.body["display_name"], "Alice Liddell");
    let blank = h
        .call(
            Method::PATCH,
            "/v1/users/me",
            Some(&alice.token),
            Some(json!({"display_name": "  "})),
        )
        .await;
    assert_eq!(blank.status, StatusCode::BAD_REQUEST);
    assert!(blank.message().contains("display_name"));

    let online = h
        .post("/v1/presence", &alice, json!({"status": "online"}))
        .await;
    assert_eq!(online.status, StatusCode::OK, "{online:?}");
    let seen = h
        .get_at(
            &format!("/v1/users/{}", alice.id),
            &bob,
            &online.body["position"],
        )
        .await;
    assert_eq!(seen.body["status"], "online");
    assert_eq!(seen.body["last_seen"], online.body["last_seen"]);

    let offline = h
        .post("/v1/presence", &alice, json!({"status": "offline"}))
        .await;
    let seen = h
        .get_at(
            &format!("/v1/users/{}", alice.id),
            &bob,
            &offline.body["position"],
        )
        .await;
    assert_eq!(seen.body["status"], "offline");
    assert_eq!(seen.body["last_seen"], offline.body["last_seen"]);

    let bad = h
        .post("/v1/presence", &alice, json!({"status": "away"}))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.message().contains("online"), "{bad:?}");

    let bad_position = h
        .get(&format!("/v1/users/{}?min_position=soon", alice.id), &bob)
        .await;
    assert_eq!(bad_position.status, StatusCode::BAD_REQUEST);
    assert!(bad_position.message().contains("<partition>:<offset>"));
    for beyond in ["0:999999", "7:0", "0:18446744073709551615"] {
        let far = h
            .get(
                &format!("/v1/users/{}?min_position={beyond}", alice.id),
                &bob,
            )
            .await;
        assert_eq!(far.status, StatusCode::BAD_REQUEST, "{beyond}: {far:?}");
        assert!(far.message().contains("beyond the end"));
    }
    h.shutdown().await;
}

async fn friend_requests_accept_decline_cancel_unfriend() {
    let h = Harness::start().await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let carol = h.register("carol").await;
    let post = |who: &common::Client, path: String| {
        let token = who.token.clone();
        let h = &h;
        async move { h.call(Method::POST, &path, Some(&token), None).await }
    };
    let delete = |who: &common::Client, path: String| {
        let token = who.token.clone();
        let h = &h;
        async move { h.call(Method::DELETE, &path, Some(&token), None).await }
    };

    let req = post(&alice, format!("/v1/friends/{}", bob.id)).await;
    assert_eq!(req.status, StatusCode::OK);
    assert_eq!(req.body["relation"], "outgoing_request");
    let again = post(&alice, format!("/v1/friends/{}", bob.id)).await;
    assert_eq!(
        again.body["relation"], "outgoing_request",
        "a retry changes nothing"
    );
    assert!(again.body["position"].is_null());

    let bobs = h.get("/v1/friends", &bob).await;
    assert_eq!(bobs.body["items"][0]["relation"], "incoming_request");
    assert_eq!(bobs.body["items"][0]["user"]["id"], alice.id.to_string());
    let own = post(&alice, format!("/v1/friends/{}/accept", bob.id)).await;
    assert_eq!(own.status, StatusCode::CONFLICT, "{own:?}");

    let accepted = post(&bob, format!("/v1/friends/{}/accept", alice.id)).await;
    assert_eq!(accepted.body["relation"], "friend");
    let alices = h.get("/v1/friends", &alice).await;
    assert_eq!(alices.body["items"][0]["relation"], "friend");
    assert!(alices.body["next"].is_null());

    // Carol asks Alice; Alice asking back accepts at once.
    post(&carol, format!("/v1/friends/{}", alice.id)).await;
    let mutual = post(&alice, format!("/v1/friends/{}", carol.id)).await;
    assert_eq!(mutual.body["relation"], "friend");

    let unfriend = delete(&alice, format!("/v1/friends/{}", carol.id)).await;
    assert_eq!(unfriend.status, StatusCode::OK);
    assert_eq!(unfriend.body["relation"], "none");
    let gone = delete(&alice, format!("/v1/friends/{}", carol.id)).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);

    // Decline and cancel.
    post(&carol, format!("/v1/friends/{}", bob.id)).await;
    let declined = delete(&bob, format!("/v1/friends/{}", carol.id)).await;
    assert_eq!(declined.body["relation"], "none");
    post(&carol, format!("/v1/friends/{}", bob.id)).await;
    let cancelled = delete(&carol, format!("/v1/friends/{}", bob.id)).await;
    assert_eq!(cancelled.body["relation"], "none");
    let nothing = post(&bob, format!("/v1/friends/{}/accept", carol.id)).await;
    assert_eq!(nothing.status, StatusCode::NOT_FOUND);

    let myself = post(&alice, format!("/v1/friends/{}", alice.id)).await;
    assert_eq!(myself.status, StatusCode::BAD_REQUEST);
    let stranger = post(&alice, format!("/v1/friends/{}", Uuid::now_v7())).await;
    assert_eq!(stranger.status, StatusCode::NOT_FOUND);
    assert_eq!(stranger.code(), "user_not_found");
    let malformed = post(&alice, "/v1/friends/bob".to_owned()).await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    h.shutdown().await;
}

async fn operations_endpoints_and_unknown_routes() {
    let h = Harness::start().await;
    let health = h.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = h.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::OK);
    h.register("alice").await;
    let metrics = h.call(Method::GET, "/metrics", None, None).await;
    let text = metrics.body.as_str().expect("text");
    for name in [
        "missive_http_requests_total",
        "missive_http_request_duration_seconds",
        "missive_events_appended_total",
        "missive_projector_position",
        "missive_projector_lag",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    assert!(text.contains("route=\"/v1/users\""));
    let doc = h.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));

    let nowhere = h.call(Method::GET, "/v1/nowhere", None, None).await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
    assert_eq!(nowhere.code(), "not_found");
    let wrong_method = h.call(Method::PUT, "/v1/users", None, None).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.code(), "method_not_allowed");
    h.shutdown().await;
}

/// `--admin-listen` serves `/metrics` and `/healthz` on a second address, and nothing else
/// there: the API's routes answer 404 on it while the API port serves them. Embedded only:
/// the listener does not depend on the log or store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_only_metrics_and_healthz() {
    // The server does not report the admin listener's address: take a free port for it.
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("its address");
    let h = Harness::start_with(|c| c.admin_listen = Some(admin)).await;
    assert_ne!(h.base, format!("http://{admin}"), "two listeners");
    let alice = h.register("alice").await;
    let at_admin = |method: Method, path: &str| {
        h.client
            .request(method, format!("http://{admin}{path}"))
            .bearer_auth(&alice.token)
            .send()
    };

    let metrics = at_admin(Method::GET, "/metrics")
        .await
        .expect("the admin listener answers");
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.expect("metrics text");
    assert!(
        text.contains("missive_http_requests_total"),
        "missive_http_requests_total missing from the admin /metrics"
    );
    // The API's requests are counted there (the registration above).
    assert!(text.contains("route=\"/v1/users\""), "{text}");
    let health = at_admin(Method::GET, "/healthz").await.expect("healthz");
    assert_eq!(health.status(), StatusCode::OK);
    let health: serde_json::Value = health.json().await.expect("JSON");
    assert_eq!(health, json!({"status": "ok"}));

    // Only those two: the API is not served there.
    for (method, path) in [
        (Method::GET, format!("/v1/users/{}", alice.id)),
        (Method::GET, "/v1/users/me".to_owned()),
        (Method::GET, "/v1/openapi.json".to_owned()),
        (Method::GET, "/readyz".to_owned()),
        (Method::POST, "/v1/users".to_owned()),
    ] {
        let a = at_admin(method.clone(), &path)
            .await
            .expect("the admin listener answers");
        assert_eq!(a.status(), StatusCode::NOT_FOUND, "{method} {path}");
        let body: serde_json::Value = a.json().await.expect("a JSON error");
        assert_eq!(
            body["error"]["code"], "not_found",
            "{method} {path}: {body}"
        );
    }
    // ...while the API port serves it.
    let profile = h.get(&format!("/v1/users/{}", alice.id), &alice).await;
    assert_eq!(profile.status, StatusCode::OK, "{profile:?}");
    assert_eq!(profile.body["username"], "alice");
    h.shutdown().await;
}

both_logs!(
    registration_and_its_errors,
    closed_registration_is_refused,
    authentication_is_required_and_checked,
    profiles_and_presence,
    friend_requests_accept_decline_cancel_unfriend,
    operations_endpoints_and_unknown_routes,
);
