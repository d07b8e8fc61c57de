//! Authorization, endpoint by endpoint (issue 8): one test per row of the README's
//! authorization table. Each asserts that a caller who may not use the endpoint (another
//! user; for authenticated endpoints also no token and invalid tokens) is refused with the exact
//! status and error code, learns nothing from the answer and changes nothing (the log holds no
//! event of theirs, the other users' views are as before), and that the caller who may use it
//! succeeds, so that every test can fail. Embedded backends only: who may call what is decided
//! above the log and store ports.

mod common;

use common::{
    Answer, Client, Harness, Socket, drain, next_json, next_of, refused_without_a_valid_token,
    send_json, upgrade_request, ws_url,
};
use missive_api::Secret;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Error as WsError;
use uuid::Uuid;

/// The direct message every test hopes no one else reads.
const SECRET_TEXT: &str = "for bob's eyes only";
/// The message in the private server's channel.
const CHANNEL_TEXT: &str = "walled garden talk";
/// The post on the private server.
const PRIVATE_POST: &str = "members only news";

// ----- helpers -----

#[track_caller]
fn refused(a: &Answer, status: StatusCode, code: &str) {
    assert_eq!((a.status, a.code()), (status, code), "{a:?}");
}

#[track_caller]
fn ok(a: &Answer) {
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
}

/// Asserts that an answer does not carry any of `secrets`.
#[track_caller]
fn leaks_nothing(a: &Answer, secrets: &[&str]) {
    let body = a.body.to_string();
    for secret in secrets {
        assert!(!body.contains(secret), "{secret:?} leaked in {a:?}");
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn secret(h: &Harness) -> &Secret {
    &h.server.as_ref().expect("running").secret
}

/// A token the server's secret signed for a user who never registered.
fn ghost_token(h: &Harness) -> String {
    secret(h).issue(Uuid::now_v7(), now(), 3600)
}

async fn delete(h: &Harness, path: &str, who: &Client) -> Answer {
    h.call(Method::DELETE, path, Some(&who.token), None).await
}

async fn patch(h: &Harness, path: &str, who: &Client, body: Value) -> Answer {
    h.call(Method::PATCH, path, Some(&who.token), Some(body))
        .await
}

fn text_of(v: &Value, field: &str) -> String {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {v}"))
        .to_owned()
}

/// Every event in the log, as `missive events dump` prints it (it reads a live data
/// directory).
async fn log(h: &Harness) -> Vec<Value> {
    let data_dir = h.config.data_dir.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_missive"))
            .args(["events", "dump", "--data-dir", &data_dir])
            .env_remove("MISSIVE_LOG")
            .env_remove("MISSIVE_STORE")
            .env("RUST_LOG", "warn")
            .output()
            .expect("missive events dump runs")
    })
    .await
    .expect("joined");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

/// The events `who` caused (as their actor), as `(event_type, position)`; offline
/// notifications aside, which the server appends in the background on a sender's behalf.
async fn caused_by(h: &Harness, who: &Client) -> Vec<(String, String)> {
    let id = who.id.to_string();
    log(h)
        .await
        .into_iter()
        .filter(|e| e["actor_id"] == id.as_str() && e["event_type"] != "NotificationRequested")
        .map(|e| (text_of(&e, "event_type"), text_of(&e, "position")))
        .collect()
}

/// Events of `event_type` in the log.
async fn count(h: &Harness, event_type: &str) -> usize {
    log(h)
        .await
        .iter()
        .filter(|e| e["event_type"] == event_type)
        .count()
}

// ----- fixtures -----

/// alice and bob are friends and alice sent bob [`SECRET_TEXT`]; mallory is registered and
/// knows every id.
struct Dm {
    alice: Client,
    bob: Client,
    mallory: Client,
    sent: Value,
    conversation: String,
    message: String,
}

impl Dm {
    fn history(&self) -> String {
        format!("/v1/conversations/{}/messages", self.conversation)
    }
}

async fn dm(h: &Harness) -> Dm {
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let mallory = h.register("mallory").await;
    h.befriend(&alice, &bob).await;
    let sent = h.send(&alice, &bob, SECRET_TEXT).await;
    Dm {
        conversation: text_of(&sent, "conversation_id"),
        message: text_of(&sent, "message_id"),
        alice,
        bob,
        mallory,
        sent,
    }
}

/// A server and one of its channels.
struct Space {
    server: String,
    channel: String,
}

impl Space {
    fn path(&self, rest: &str) -> String {
        format!("/v1/servers/{}{rest}", self.server)
    }

    fn channel_path(&self, rest: &str) -> String {
        format!(
            "/v1/servers/{}/channels/{}{rest}",
            self.server, self.channel
        )
    }
}

/// alice owns two servers, each with a channel: "Open Garden" (public, channel `lobby`) and
/// "Walled Garden" (private, channel `general`), each with a post. bob subscribes to both and
/// is in `general`, where he sent [`CHANNEL_TEXT`]. carol is invited to the private server
/// and has not answered. mallory is registered and knows every id.
struct Community {
    alice: Client,
    bob: Client,
    carol: Client,
    mallory: Client,
    public: Space,
    private: Space,
    /// carol's pending invitation to the private server.
    invitation: String,
    /// bob's message in `general`: its answer.
    channel_message: Value,
    /// alice's post on the private server: its answer.
    private_post: Value,
}

async fn create_server(h: &Harness, owner: &Client, body: Value) -> String {
    let a = h.post("/v1/servers", owner, body).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    text_of(&a.body, "server_id")
}

async fn create_channel(h: &Harness, owner: &Client, server: &str, name: &str) -> String {
    let a = h
        .post(
            &format!("/v1/servers/{server}/channels"),
            owner,
            json!({ "name": name }),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    text_of(&a.body, "channel_id")
}

async fn invite(h: &Harness, who: &Client, server: &str, invitee: &Client) -> String {
    let a = h
        .post(
            &format!("/v1/servers/{server}/invitations"),
            who,
            json!({ "user_id": invitee.id }),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    text_of(&a.body, "invitation_id")
}

async fn community(h: &Harness) -> Community {
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let carol = h.register("carol").await;
    let mallory = h.register("mallory").await;

    let server = create_server(
        h,
        &alice,
        json!({"name": "Open Garden", "tags": ["garden"]}),
    )
    .await;
    let channel = create_channel(h, &alice, &server, "lobby").await;
    let public = Space { server, channel };
    let server = create_server(
        h,
        &alice,
        json!({"name": "Walled Garden", "tags": ["garden"], "visibility": "private"}),
    )
    .await;
    let channel = create_channel(h, &alice, &server, "general").await;
    let private = Space { server, channel };

    ok(&h
        .post(&public.path("/subscription"), &bob, json!(null))
        .await);
    let bobs = invite(h, &alice, &private.server, &bob).await;
    ok(&h
        .post(&format!("/v1/invitations/{bobs}/accept"), &bob, json!(null))
        .await);
    let invitation = invite(h, &alice, &private.server, &carol).await;
    ok(&h
        .post(&private.channel_path("/join"), &bob, json!(null))
        .await);
    let sent = h
        .post(
            &private.channel_path("/messages"),
            &bob,
            json!({ "text": CHANNEL_TEXT }),
        )
        .await;
    assert_eq!(sent.status, StatusCode::CREATED, "{sent:?}");
    let open = h
        .post(
            &public.path("/posts"),
            &alice,
            json!({"content": "open news"}),
        )
        .await;
    assert_eq!(open.status, StatusCode::CREATED, "{open:?}");
    let post = h
        .post(
            &private.path("/posts"),
            &alice,
            json!({ "content": PRIVATE_POST }),
        )
        .await;
    assert_eq!(post.status, StatusCode::CREATED, "{post:?}");
    Community {
        alice,
        bob,
        carol,
        mallory,
        public,
        private,
        invitation,
        channel_message: sent.body,
        private_post: post.body,
    }
}

/// The names of a list of servers, channels or user servers.
fn names(a: &Answer) -> Vec<String> {
    a.items()
        .iter()
        .map(|s| {
            s["name"]
                .as_str()
                .or(s["server"]["name"].as_str())
                .expect("a name")
                .to_owned()
        })
        .collect()
}

fn member_ids(a: &Answer) -> Vec<String> {
    a.items().iter().map(|m| text_of(m, "user_id")).collect()
}

// ----- operations endpoints: public -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_public() {
    let h = Harness::start().await;
    for token in [None, Some("not-a-jwt")] {
        let a = h.call(Method::GET, "/healthz", token, None).await;
        ok(&a);
        assert_eq!(a.body, json!({"status": "ok"}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_public() {
    let h = Harness::start().await;
    for token in [None, Some("not-a-jwt")] {
        let a = h.call(Method::GET, "/readyz", token, None).await;
        ok(&a);
        assert_eq!(a.body, json!({"status": "ready"}), "nothing but readiness");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_is_public() {
    let h = Harness::start().await;
    for token in [None, Some("not-a-jwt")] {
        let a = h.call(Method::GET, "/v1/openapi.json", token, None).await;
        ok(&a);
        assert!(a.body["openapi"].as_str().is_some(), "{a:?}");
    }
}

/// `/metrics` needs no token. Its labels are route templates, event types and projections:
/// no user, conversation, message or server is named, whatever the traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_is_public_and_names_no_one() {
    let h = Harness::start().await;
    let d = dm(&h).await;
    let server = create_server(
        &h,
        &d.alice,
        json!({"name": "Walled Garden", "visibility": "private"}),
    )
    .await;
    let post = h
        .post(
            &format!("/v1/servers/{server}/posts"),
            &d.alice,
            json!({ "content": PRIVATE_POST }),
        )
        .await;
    assert_eq!(post.status, StatusCode::CREATED, "{post:?}");
    // Requests whose paths carry ids, answered and refused.
    ok(&h.get(&d.history(), &d.bob).await);
    let probe = h.get(&d.history(), &d.mallory).await;
    refused(&probe, StatusCode::NOT_FOUND, "not_found");
    ok(&h.get(&format!("/v1/users/{}", d.alice.id), &d.bob).await);

    let a = h.call(Method::GET, "/metrics", None, None).await;
    ok(&a);
    let text = a.body.as_str().expect("the Prometheus text format");
    assert!(
        text.contains(r#"route="/v1/conversations/{conversation_id}/messages""#),
        "routes by template: {text}"
    );
    for private in [
        d.alice.id.to_string(),
        d.bob.id.to_string(),
        d.mallory.id.to_string(),
        d.conversation.clone(),
        d.message.clone(),
        d.alice.token.clone(),
        SECRET_TEXT.to_owned(),
        PRIVATE_POST.to_owned(),
        server,
        "Walled Garden".to_owned(),
        "mallory".to_owned(),
    ] {
        assert!(!text.contains(&private), "/metrics names {private:?}");
    }
}

/// Registration needs no token, and a token sent along is ignored (it never makes the new
/// account someone else's). With `--registration closed` it is 403 `registration_closed` and
/// nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_public_unless_closed() {
    let h = Harness::start().await;
    let bob = h.register("bob").await;
    let a = h
        .call(
            Method::POST,
            "/v1/users",
            Some(&bob.token),
            Some(json!({"username": "alice"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    assert_ne!(a.body["id"], bob.id.to_string(), "a new account");
    assert_eq!(a.body["username"], "alice");
    h.shutdown().await;

    let closed = Harness::start_with(|c| c.service.registration_open = false).await;
    let a = closed
        .call(
            Method::POST,
            "/v1/users",
            None,
            Some(json!({"username": "alice"})),
        )
        .await;
    refused(&a, StatusCode::FORBIDDEN, "registration_closed");
    assert_eq!(count(&closed, "UserRegistered").await, 0);
}

// ----- operators -----

/// `GET /v1/admin/analytics` is for operators (`missive token --admin`): a user's token is 403
/// `admin_only` before the parameters are even looked at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_analytics_is_for_operators() {
    let h = Harness::start().await;
    let alice = h.register("alice").await;
    let query = "/v1/admin/analytics?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z";
    refused_without_a_valid_token(&h, Method::GET, query, None, alice.id).await;
    for path in [query, "/v1/admin/analytics", "/v1/admin/analytics?junk=1"] {
        let a = h.get(path, &alice).await;
        refused(&a, StatusCode::FORBIDDEN, "admin_only");
        assert!(a.body.get("totals").is_none(), "{a:?}");
    }
    let expired = secret(&h).issue_admin(alice.id, now() - 7200, 3600);
    let a = h.call(Method::GET, query, Some(&expired), None).await;
    refused(&a, StatusCode::UNAUTHORIZED, "unauthorized");

    let admin = secret(&h).issue_admin(alice.id, now(), 3600);
    let a = h.call(Method::GET, query, Some(&admin), None).await;
    ok(&a);
    assert!(a.body["totals"].is_object(), "{a:?}");
}

// ----- users -----

/// Any signed-in user reads any user's profile (with `status` and `last_seen`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_are_readable_by_any_signed_in_user() {
    let h = Harness::start().await;
    let alice = h.register("alice").await;
    let mallory = h.register("mallory").await;
    let path = format!("/v1/users/{}", alice.id);
    refused_without_a_valid_token(&h, Method::GET, &path, None, mallory.id).await;
    let a = h.get(&path, &mallory).await;
    ok(&a);
    assert_eq!(a.body["username"], "alice");
    let unknown = h
        .get(&format!("/v1/users/{}", Uuid::now_v7()), &mallory)
        .await;
    refused(&unknown, StatusCode::NOT_FOUND, "user_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_is_always_the_caller() {
    let h = Harness::start().await;
    let alice = h.register("alice").await;
    let mallory = h.register("mallory").await;
    refused_without_a_valid_token(&h, Method::GET, "/v1/users/me", None, alice.id).await;
    let a = h.get("/v1/users/me", &mallory).await;
    ok(&a);
    assert_eq!(
        (&a.body["id"], &a.body["username"]),
        (&json!(mallory.id), &json!("mallory"))
    );
    assert_eq!(
        h.get("/v1/users/me", &alice).await.body["username"],
        "alice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_caller_changes_their_profile() {
    let h = Harness::start().await;
    let alice = h.register("alice").await;
    let mallory = h.register("mallory").await;
    let body = json!({"display_name": "Alice (hacked)"});
    refused_without_a_valid_token(
        &h,
        Method::PATCH,
        "/v1/users/me",
        Some(body.clone()),
        alice.id,
    )
    .await;
    let a = patch(&h, "/v1/users/me", &mallory, body).await;
    ok(&a);
    assert_eq!(a.body["id"], json!(mallory.id), "mallory renamed herself");
    let profile = h.get(&format!("/v1/users/{}", alice.id), &alice).await;
    assert_eq!(profile.body["display_name"], "alice", "alice is untouched");

    let a = patch(&h, "/v1/users/me", &alice, json!({"display_name": "Alice"})).await;
    ok(&a);
    let profile = h.get(&format!("/v1/users/{}", alice.id), &mallory).await;
    assert_eq!(profile.body["display_name"], "Alice");
}

// ----- friends -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friend_lists_are_private() {
    let h = Harness::start().await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let mallory = h.register("mallory").await;
    h.befriend(&alice, &bob).await;
    refused_without_a_valid_token(&h, Method::GET, "/v1/friends", None, alice.id).await;
    let theirs = h.get("/v1/friends", &mallory).await;
    ok(&theirs);
    assert_eq!(theirs.items(), &Vec::<Value>::new(), "{theirs:?}");
    let mine = h.get("/v1/friends", &alice).await;
    assert_eq!(mine.items().len(), 1, "{mine:?}");
    assert_eq!(mine.items()[0]["user"]["id"], json!(bob.id));
}

/// A friend request needs a registered caller: a validly signed token of a user who does not
/// exist is 403 `forbidden`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friend_requests_need_a_registered_caller() {
    let h = Harness::start().await;
    let bob = h.register("bob").await;
    let mallory = h.register("mallory").await;
    let path = format!("/v1/friends/{}", bob.id);
    refused_without_a_valid_token(&h, Method::POST, &path, None, mallory.id).await;
    let ghost = h
        .call(Method::POST, &path, Some(&ghost_token(&h)), None)
        .await;
    refused(&ghost, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(count(&h, "FriendRequested").await, 0);
    assert!(h.get("/v1/friends", &bob).await.items().is_empty());

    let a = h.post(&path, &mallory, json!(null)).await;
    ok(&a);
    assert_eq!(a.body["relation"], "outgoing_request");
    let bobs = h.get("/v1/friends", &bob).await;
    assert_eq!(bobs.items()[0]["relation"], "incoming_request", "{bobs:?}");
}

/// Unfriending (declining, cancelling) acts on the caller's own pair only: mallory naming
/// alice finds nothing to remove, and alice and bob stay friends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfriending_is_for_the_pair() {
    let h = Harness::start().await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let mallory = h.register("mallory").await;
    h.befriend(&alice, &bob).await;
    let path = format!("/v1/friends/{}", alice.id);
    refused_without_a_valid_token(&h, Method::DELETE, &path, None, bob.id).await;
    let before = caused_by(&h, &mallory).await;
    refused(
        &delete(&h, &path, &mallory).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(caused_by(&h, &mallory).await, before);
    let alices = h.get("/v1/friends", &alice).await;
    assert_eq!(alices.items()[0]["relation"], "friend", "{alices:?}");

    let a = delete(&h, &path, &bob).await;
    ok(&a);
    assert_eq!(a.body["relation"], "none");
    assert!(h.get("/v1/friends", &alice).await.items().is_empty());
}

/// Only the addressee accepts a request: the requester gets 409 `conflict`, anyone else
/// 404 `not_found` (their own pair has no request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_addressee_accepts_a_friend_request() {
    let h = Harness::start().await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let mallory = h.register("mallory").await;
    ok(&h
        .post(&format!("/v1/friends/{}", bob.id), &alice, json!(null))
        .await);
    refused_without_a_valid_token(
        &h,
        Method::POST,
        &format!("/v1/friends/{}/accept", alice.id),
        None,
        bob.id,
    )
    .await;
    let before = (caused_by(&h, &alice).await, caused_by(&h, &mallory).await);
    let own = h
        .post(
            &format!("/v1/friends/{}/accept", bob.id),
            &alice,
            json!(null),
        )
        .await;
    refused(&own, StatusCode::CONFLICT, "conflict");
    let other = h
        .post(
            &format!("/v1/friends/{}/accept", alice.id),
            &mallory,
            json!(null),
        )
        .await;
    refused(&other, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        (caused_by(&h, &alice).await, caused_by(&h, &mallory).await),
        before
    );
    let bobs = h.get("/v1/friends", &bob).await;
    assert_eq!(bobs.items()[0]["relation"], "incoming_request", "{bobs:?}");

    let a = h
        .post(
            &format!("/v1/friends/{}/accept", alice.id),
            &bob,
            json!(null),
        )
        .await;
    ok(&a);
    assert_eq!(a.body["relation"], "friend");
}

// ----- direct messages -----

/// Only friends message each other: a stranger, even one with a pending request, is 403
/// `forbidden`; an unknown peer is 404 `user_not_found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_are_for_friends() {
    let h = Harness::start().await;
    let d = dm(&h).await;
    let to_alice = format!("/v1/conversations/direct/{}/messages", d.alice.id);
    let body = json!({"text": "hi alice"});
    refused_without_a_valid_token(&h, Method::POST, &to_alice, Some(body.clone()), d.bob.id).await;
    let before = caused_by(&h, &d.mallory).await;
    refused(
        &h.post(&to_alice, &d.mallory, body.clone()).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let unknown = format!("/v1/conversations/direct/{}/messages", Uuid::now_v7());
    refused(
        &h.post(&unknown, &d.mallory, body.clone()).await,
        StatusCode::NOT_FOUND,
        "user_not_found",
    );
    assert_eq!(caused_by(&h, &d.mallory).await, before);
    // A pending request is not a friendship.
    ok(&h
        .post(
            &format!("/v1/friends/{}", d.alice.id),
            &d.mallory,
            json!(null),
        )
        .await);
    refused(
        &h.post(&to_alice, &d.mallory, body.clone()).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_eq!(count(&h, "MessageSent").await, 1, "only alice's message");
    let alices = h
        .get_at("/v1/conversations", &d.alice, &d.sent["position"])
        .await;
    assert_eq!(alices.items().len(), 1, "{alices:?}");
    assert_eq!(alices.items()[0]["peer"]["id"], json!(d.bob.id));

    let a = h.post(&to_alice, &d.bob, body).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_lists_are_private() {
    let h = Harness::start().await;
    let d = dm(&h).await;
    refused_without_a_valid_token(&h, Method::GET, "/v1/conversations", None, d.bob.id).await;
    let theirs = h
        .get_at("/v1/conversations", &d.mallory, &d.sent["position"])
        .await;
    ok(&theirs);
    assert!(theirs.items().is_empty(), "{theirs:?}");
    let bobs = h
        .get_at("/v1/conversations", &d.bob, &d.sent["position"])
        .await;
    assert_eq!(bobs.items().len(), 1, "{bobs:?}");
    assert_eq!(
        bobs.items()[0]["last_message"]["text"],
        SECRET_TEXT,
        "{bobs:?}"
    );
}

/// A conversation's history is for its two participants; anyone else is told it does not
/// exist (404 `not_found`), with or without cursors naming its messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_for_the_participants() {
    let h = Harness::start().await;
    let d = dm(&h).await;
    refused_without_a_valid_token(&h, Method::GET, &d.history(), None, d.bob.id).await;
    for query in [
        String::new(),
        format!("?before={}", Uuid::now_v7()),
        format!("?after={}", Uuid::nil()),
        "?since=1970-01-01T00:00:00Z".to_owned(),
    ] {
        let path = format!("{}{query}", d.history());
        let a = h.get_at(&path, &d.mallory, &d.sent["position"]).await;
        refused(&a, StatusCode::NOT_FOUND, "not_found");
        leaks_nothing(&a, &[SECRET_TEXT, &d.message]);
    }
    for who in [&d.alice, &d.bob] {
        let a = h.get_at(&d.history(), who, &d.sent["position"]).await;
        ok(&a);
        assert_eq!(a.texts(), vec![SECRET_TEXT]);
    }
}

/// Read markers: a participant, up to a message of that conversation they can see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_markers_are_for_the_participants() {
    let h = Harness::start().await;
    let d = dm(&h).await;
    let path = format!("/v1/conversations/{}/read", d.conversation);
    let body = json!({ "up_to": d.message });
    refused_without_a_valid_token(&h, Method::POST, &path, Some(body.clone()), d.bob.id).await;
    // A conversation mallory is in (with carol), and the message of alice and bob.
    let carol = h.register("carol").await;
    h.befriend(&d.mallory, &carol).await;
    let theirs = h.send(&carol, &d.mallory, "hello mallory").await;
    let before = caused_by(&h, &d.mallory).await;
    refused(
        &h.post(&path, &d.mallory, body.clone()).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let own = format!(
        "/v1/conversations/{}/read",
        text_of(&theirs, "conversation_id")
    );
    refused(
        &h.post(&own, &d.mallory, body.clone()).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(caused_by(&h, &d.mallory).await, before);
    let bobs = h
        .get_at("/v1/conversations", &d.bob, &d.sent["position"])
        .await;
    assert_eq!(bobs.items()[0]["unread_count"], 1, "{bobs:?}");

    let a = h.post(&path, &d.bob, body).await;
    ok(&a);
    let bobs = h
        .get_at("/v1/conversations", &d.bob, &a.body["position"])
        .await;
    assert_eq!(bobs.items()[0]["unread_count"], 0, "{bobs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catch_up_feed_is_private() {
    let h = Harness::start().await;
    let d = dm(&h).await;
    let path = "/v1/messages?since=1970-01-01T00:00:00Z";
    refused_without_a_valid_token(&h, Method::GET, path, None, d.bob.id).await;
    let theirs = h.get_at(path, &d.mallory, &d.sent["position"]).await;
    ok(&theirs);
    assert!(theirs.items().is_empty(), "{theirs:?}");
    for who in [&d.alice, &d.bob] {
        let a = h.get_at(path, who, &d.sent["position"]).await;
        assert_eq!(a.texts(), vec![SECRET_TEXT], "{a:?}");
    }
}

/// Deleting for everyone: the sender only. The recipient is 403 `forbidden`, anyone else 404
/// `message_not_found`; the message stays for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_sender_deletes_for_everyone() {
    let h = Harness::start().await;
    let d = dm(&h).await;
    let path = format!("/v1/messages/{}?scope=everyone", d.message);
    refused_without_a_valid_token(&h, Method::DELETE, &path, None, d.alice.id).await;
    let before = (caused_by(&h, &d.bob).await, caused_by(&h, &d.mallory).await);
    refused(
        &delete(&h, &path, &d.bob).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let a = delete(&h, &path, &d.mallory).await;
    refused(&a, StatusCode::NOT_FOUND, "message_not_found");
    leaks_nothing(&a, &[SECRET_TEXT]);
    assert_eq!(
        (caused_by(&h, &d.bob).await, caused_by(&h, &d.mallory).await),
        before
    );
    for who in [&d.alice, &d.bob] {
        let a = h.get_at(&d.history(), who, &d.sent["position"]).await;
        assert_eq!(a.texts(), vec![SECRET_TEXT]);
    }

    let a = delete(&h, &path, &d.alice).await;
    ok(&a);
    let bobs = h.get_at(&d.history(), &d.bob, &a.body["position"]).await;
    assert_eq!(bobs.items()[0]["deleted"], "for_everyone", "{bobs:?}");
    assert!(bobs.items()[0]["text"].is_null());
}

/// Hiding for oneself: either participant; anyone else 404 `message_not_found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_participant_hides_a_message_for_themselves() {
    let h = Harness::start().await;
    let d = dm(&h).await;
    let path = format!("/v1/messages/{}?scope=me", d.message);
    refused_without_a_valid_token(&h, Method::DELETE, &path, None, d.bob.id).await;
    let before = caused_by(&h, &d.mallory).await;
    let a = delete(&h, &path, &d.mallory).await;
    refused(&a, StatusCode::NOT_FOUND, "message_not_found");
    leaks_nothing(&a, &[SECRET_TEXT]);
    assert_eq!(caused_by(&h, &d.mallory).await, before);
    for who in [&d.alice, &d.bob] {
        let a = h.get_at(&d.history(), who, &d.sent["position"]).await;
        assert_eq!(a.texts(), vec![SECRET_TEXT]);
    }

    let a = delete(&h, &path, &d.bob).await;
    ok(&a);
    let bobs = h.get_at(&d.history(), &d.bob, &a.body["position"]).await;
    assert!(bobs.items().is_empty(), "hidden for bob: {bobs:?}");
    let alices = h.get_at(&d.history(), &d.alice, &a.body["position"]).await;
    assert_eq!(alices.texts(), vec![SECRET_TEXT], "not for alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_set_for_the_caller_only() {
    let h = Harness::start().await;
    let alice = h.register("alice").await;
    let mallory = h.register("mallory").await;
    let body = json!({"status": "online"});
    refused_without_a_valid_token(
        &h,
        Method::POST,
        "/v1/presence",
        Some(body.clone()),
        alice.id,
    )
    .await;
    let a = h.post("/v1/presence", &mallory, body).await;
    ok(&a);
    let path = format!("/v1/users/{}", alice.id);
    let alices = h.get_at(&path, &mallory, &a.body["position"]).await;
    assert_eq!(alices.body["status"], "offline", "{alices:?}");
    let hers = h
        .get_at(
            &format!("/v1/users/{}", mallory.id),
            &alice,
            &a.body["position"],
        )
        .await;
    assert_eq!(hers.body["status"], "online", "{hers:?}");
}

// ----- WebSocket sessions -----

/// Opens a session (token in the Authorization header) and returns it with the messages
/// that were pending, read up to `synced`.
async fn connect(h: &Harness, who: &Client) -> (Socket, Vec<Value>) {
    let (mut socket, _) = tokio_tungstenite::connect_async(upgrade_request(h, who))
        .await
        .expect("the session opens");
    let mut pending = Vec::new();
    loop {
        let frame = next_json(&mut socket).await;
        match frame["type"].as_str() {
            Some("message") => pending.push(frame["message"].clone()),
            Some("synced") => return (socket, pending),
            _ => panic!("before synced, only pending messages come: {frame}"),
        }
    }
}

/// A session needs a valid token (401 before the upgrade otherwise); it is pushed only what
/// concerns its user, and only a message's recipient acknowledges it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sessions_are_the_token_holders_own() {
    let h = Harness::start().await;
    let d = dm(&h).await;
    let forged = Secret::new(b"not-the-server-secret".to_vec()).issue(d.bob.id, now(), 3600);
    let expired = secret(&h).issue(d.bob.id, now() - 7200, 3600);
    for query in [
        String::new(),
        "?access_token=not-a-jwt".to_owned(),
        format!("?access_token={forged}"),
        format!("?access_token={expired}"),
    ] {
        match tokio_tungstenite::connect_async(format!("{}{query}", ws_url(&h))).await {
            Err(WsError::Http(response)) => assert_eq!(response.status(), 401, "{query}"),
            other => panic!("{query}: expected 401, got {other:?}"),
        }
    }

    let (mut bobs, pending) = connect(&h, &d.bob).await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    let (mut mallorys, pending) = connect(&h, &d.mallory).await;
    assert!(pending.is_empty(), "{pending:?}");

    // A new message reaches bob, never mallory.
    let second = h.send(&d.alice, &d.bob, "second secret").await;
    let pushed = next_of(&mut bobs, "message").await;
    assert_eq!(pushed["message"]["message_id"], second["message_id"]);
    for frame in drain(&mut mallorys).await {
        let text = frame.to_string();
        assert!(
            !text.contains("secret") && !text.contains(&d.conversation),
            "pushed to mallory: {frame}"
        );
    }

    // mallory cannot acknowledge bob's message.
    send_json(
        &mut mallorys,
        json!({"type": "ack", "message_ids": [d.message]}),
    )
    .await;
    let acked = next_of(&mut mallorys, "acked").await;
    assert_eq!(acked, json!({"type": "acked", "message_ids": []}));
    let error = next_json(&mut mallorys).await;
    assert_eq!(error["code"], "ack_refused", "{error}");
    assert_eq!(error["refused"][0]["message_id"], json!(d.message));
    assert_eq!(count(&h, "MessageDelivered").await, 0);
    let alices = h.get(&d.history(), &d.alice).await;
    assert_eq!(alices.items()[0]["status"], "pending", "{alices:?}");

    send_json(
        &mut bobs,
        json!({"type": "ack", "message_ids": [d.message]}),
    )
    .await;
    let acked = next_of(&mut bobs, "acked").await;
    assert_eq!(acked["message_ids"], json!([d.message]));
    let alices = h.get(&d.history(), &d.alice).await;
    let first = alices
        .items()
        .iter()
        .find(|m| m["message_id"] == json!(d.message))
        .expect("the first message");
    assert_eq!(first["status"], "delivered", "{alices:?}");
}

// ----- servers -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_server_needs_a_registered_caller() {
    let h = Harness::start().await;
    let mallory = h.register("mallory").await;
    let body = json!({"name": "Ghost Town"});
    refused_without_a_valid_token(
        &h,
        Method::POST,
        "/v1/servers",
        Some(body.clone()),
        mallory.id,
    )
    .await;
    let ghost = h
        .call(
            Method::POST,
            "/v1/servers",
            Some(&ghost_token(&h)),
            Some(body.clone()),
        )
        .await;
    refused(&ghost, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(count(&h, "ServerCreated").await, 0);

    let a = h.post("/v1/servers", &mallory, body).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    assert_eq!(a.body["owner_id"], json!(mallory.id));
}

/// Search lists public servers only: never a private one, whoever asks (its members too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_search_never_lists_private_servers() {
    let h = Harness::start().await;
    let c = community(&h).await;
    let path = "/v1/servers?name=garden";
    refused_without_a_valid_token(&h, Method::GET, path, None, c.bob.id).await;
    for who in [&c.mallory, &c.carol, &c.bob, &c.alice] {
        for query in [path, "/v1/servers?tags=garden", "/v1/servers?name=wa"] {
            let a = h.get(query, who).await;
            ok(&a);
            leaks_nothing(&a, &["Walled Garden", &c.private.server]);
        }
        assert_eq!(names(&h.get(path, who).await), vec!["Open Garden"]);
    }
    // A private server's id is no search cursor either.
    let cursor = format!("{path}&cursor={}", c.private.server);
    refused(
        &h.get(&cursor, &c.mallory).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
}

/// A private server exists for its members and invitees only: for anyone else it is 404
/// `server_not_found`, the very answer an unknown id gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_server_is_seen_by_members_and_invitees_only() {
    let h = Harness::start().await;
    let c = community(&h).await;
    let path = c.private.path("");
    refused_without_a_valid_token(&h, Method::GET, &path, None, c.bob.id).await;
    let a = h.get(&path, &c.mallory).await;
    refused(&a, StatusCode::NOT_FOUND, "server_not_found");
    leaks_nothing(&a, &["Walled Garden"]);
    let unknown = h
        .get(&format!("/v1/servers/{}", Uuid::now_v7()), &c.mallory)
        .await;
    assert_eq!(a.body, unknown.body, "no way to tell it exists");
    ok(&h.get(&c.public.path(""), &c.mallory).await);

    for who in [&c.alice, &c.bob, &c.carol] {
        let a = h.get(&path, who).await;
        ok(&a);
        assert_eq!(a.body["name"], "Walled Garden");
    }
}

/// Subscribing: a public server, any registered user; a private one, its invitees only
/// (subscribing accepts the invitation); anyone else 404 `server_not_found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_to_a_private_server_needs_an_invitation() {
    let h = Harness::start().await;
    let c = community(&h).await;
    let path = c.private.path("/subscription");
    refused_without_a_valid_token(&h, Method::POST, &path, None, c.carol.id).await;
    let before = caused_by(&h, &c.mallory).await;
    refused(
        &h.post(&path, &c.mallory, json!(null)).await,
        StatusCode::NOT_FOUND,
        "server_not_found",
    );
    let ghost = h
        .call(
            Method::POST,
            &c.public.path("/subscription"),
            Some(&ghost_token(&h)),
            None,
        )
        .await;
    refused(&ghost, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(caused_by(&h, &c.mallory).await, before);
    assert!(
        h.get("/v1/users/me/servers", &c.mallory)
            .await
            .items()
            .is_empty()
    );
    refused(
        &h.get(&c.private.path("/posts"), &c.mallory).await,
        StatusCode::NOT_FOUND,
        "server_not_found",
    );

    ok(&h.post(&path, &c.carol, json!(null)).await);
    let invitation = h
        .get(&format!("/v1/invitations/{}", c.invitation), &c.carol)
        .await;
    assert_eq!(invitation.body["state"], "accepted", "{invitation:?}");
    ok(&h
        .post(&c.public.path("/subscription"), &c.mallory, json!(null))
        .await);
    assert_eq!(
        names(&h.get("/v1/users/me/servers", &c.mallory).await),
        vec!["Open Garden"]
    );
}

/// Unsubscribing acts on the caller only: the owner may not (403 `forbidden`), an outsider of
/// a private server is 404 `server_not_found`, and nobody can unsubscribe somebody else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribing_is_for_the_subscriber_themselves() {
    let h = Harness::start().await;
    let c = community(&h).await;
    let path = c.public.path("/subscription");
    refused_without_a_valid_token(&h, Method::DELETE, &path, None, c.bob.id).await;
    let before = (
        caused_by(&h, &c.alice).await,
        caused_by(&h, &c.mallory).await,
    );
    refused(
        &delete(&h, &path, &c.alice).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    refused(
        &delete(&h, &c.private.path("/subscription"), &c.mallory).await,
        StatusCode::NOT_FOUND,
        "server_not_found",
    );
    let noop = delete(&h, &path, &c.mallory).await;
    ok(&noop);
    assert!(noop.body["position"].is_null(), "changes nothing: {noop:?}");
    assert_eq!(
        (
            caused_by(&h, &c.alice).await,
            caused_by(&h, &c.mallory).await
        ),
        before
    );
    let mut bobs = names(&h.get("/v1/users/me/servers", &c.bob).await);
    bobs.sort();
    assert_eq!(bobs, vec!["Open Garden", "Walled Garden"]);

    ok(&delete(&h, &path, &c.bob).await);
    assert_eq!(
        names(&h.get("/v1/users/me/servers", &c.bob).await),
        vec!["Walled Garden"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_server_list_is_theirs_alone() {
    let h = Harness::start().await;
    let c = community(&h).await;
    let path = format!("/v1/users/{}/servers", c.bob.id);
    refused_without_a_valid_token(&h, Method::GET, &path, None, c.bob.id).await;
    for who in [&c.mallory, &c.alice] {
        let a = h.get(&path, who).await;
        refused(&a, StatusCode::FORBIDDEN, "forbidden");
        leaks_nothing(&a, &["Walled Garden", &c.private.server]);
    }
    assert!(
        h.get("/v1/users/me/servers", &c.mallory)
            .await
            .items()
            .is_empty()
    );
    let mut bobs = names(&h.get(&path, &c.bob).await);
    bobs.sort();
    assert_eq!(bobs, vec!["Open Garden", "Walled Garden"]);
}

/// Inviting: to a public server, its members; to a private one, its owner only. Others are
/// 403 `forbidden`, an outsider of the private server 404 `server_not_found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inviting_needs_membership_and_for_a_private_server_ownership() {
    let h = Harness::start().await;
    let c = community(&h).await;
    let dave = h.register("dave").await;
    let body = json!({ "user_id": dave.id });
    let path = c.private.path("/invitations");
    refused_without_a_valid_token(&h, Method::POST, &path, Some(body.clone()), c.alice.id).await;
    let before = count(&h, "ServerInvitationSent").await;
    for (who, space, status, code) in [
        (&c.mallory, &c.public, StatusCode::FORBIDDEN, "forbidden"),
        (
            &c.mallory,
            &c.private,
            StatusCode::NOT_FOUND,
            "server_not_found",
        ),
        (&c.bob, &c.private, StatusCode::FORBIDDEN, "forbidden"),
        (&c.carol, &c.private, StatusCode::FORBIDDEN, "forbidden"),
    ] {
        let a = h.post(&space.path("/invitations"), who, body.clone()).await;
        refused(&a, status, code);
    }
    assert_eq!(count(&h, "ServerInvitationSent").await, before);
    assert!(h.get("/v1/invitations", &dave).await.items().is_empty());

    for (who, space) in [(&c.bob, &c.public), (&c.alice, &c.private)] {
        let a = h.post(&space.path("/invitations"), who, body.clone()).await;
        assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    }
    assert_eq!(h.get("/v1/invitations", &dave).await.items().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_invitations_are_listed_to_the_invitee_only() {
    let h = Harness::start().await;
    let c = community(&h).await;
    refused_without_a_valid_token(&h, Method::GET, "/v1/invitations", None, c.carol.id).await;
    for who in [&c.mallory, &c.alice] {
        let a = h.get("/v1/invitations", who).await;
        ok(&a);
        assert!(a.items().is_empty(), "{a:?}");
    }
    let carols = h.get("/v1/invitations", &c.carol).await;
    assert_eq!(carols.items().len(), 1, "{carols:?}");
    assert_eq!(carols.items()[0]["invitation_id"], json!(c.invitation));
}

/// One invitation: its invitee only; anyone else, the inviter too, 404
/// `invitation_not_found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invitation_is_shown_to_its_invitee_only() {
    let h = Harness::start().await;
    let c = community(&h).await;
    let path = format!("/v1/invitations/{}", c.invitation);
    refused_without_a_valid_token(&h, Method::GET, &path, None, c.carol.id).await;
    for who in [&c.mallory, &c.alice, &c.bob] {
        let a = h.get(&path, who).await;
        refused(&a, StatusCode::NOT_FOUND, "invitation_not_found");
        leaks_nothing(&a, &["Walled Garden", &c.private.server]);
    }
    let a = h.get(&path, &c.carol).await;
    ok(&a);
    assert_eq!(a.body["state"], "pending");
}

/// Answering an invitation (`accept` and `decline`): its invitee only; anyone else, the
/// inviter too, 404 `invitation_not_found`, and it stays pending.
async fn only_the_invitee_answers(answer: &str, state: &str) {
    let h = Harness::start().await;
    let c = community(&h).await;
    let path = format!("/v1/invitations/{}/{answer}", c.invitation);
    refused_without_a_valid_token(&h, Method::POST, &path, None, c.carol.id).await;
    let before = (
        caused_by(&h, &c.alice).await,
        caused_by(&h, &c.mallory).await,
    );
    for who in [&c.mallory, &c.alice] {
        let a = h.post(&path, who, json!(null)).await;
        refused(&a, StatusCode::NOT_FOUND, "invitation_not_found");
    }
    assert_eq!(
        (
            caused_by(&h, &c.alice).await,
            caused_by(&h, &c.mallory).await
        ),
        before
    );
    refused(
        &h.get(&c.private.path(""), &c.mallory).await,
        StatusCode::NOT_FOUND,
        "server_not_found",
    );
    let invitation = format!("/v1/invitations/{}", c.invitation);
    assert_eq!(h.get(&invitation, &c.carol).await.body["state"], "pending");

    ok(&h.post(&path, &c.carol, json!(null)).await);
    assert_eq!(h.get(&invitation, &c.carol).await.body["state"], state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_invitee_accepts() {
    only_the_invitee_answers("accept", "accepted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_invitee_declines() {
    only_the_invitee_answers("decline", "declined").await;
}

// ----- posts -----

/// Posts: the owner only. A subscriber, an invitee or an outsider of a public server is 403
/// `forbidden`; an outsider of a private server 404 `server_not_found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_publishes_posts() {
    let h = Harness::start().await;
    let c = community(&h).await;
    let body = json!({"content": "not the owner's"});
    let path = c.private.path("/posts");
    refused_without_a_valid_token(&h, Method::POST, &path, Some(body.clone()), c.alice.id).await;
    let before = count(&h, "PostPublished").await;
    for (who, space, status, code) in [
        (&c.bob, &c.public, StatusCode::FORBIDDEN, "forbidden"),
        (&c.bob, &c.private, StatusCode::FORBIDDEN, "forbidden"),
        (&c.carol, &c.private, StatusCode::FORBIDDEN, "forbidden"),
        (&c.mallory, &c.public, StatusCode::FORBIDDEN, "forbidden"),
        (
            &c.mallory,
            &c.private,
            StatusCode::NOT_FOUND,
            "server_not_found",
        ),
    ] {
        refused(
            &h.post(&space.path("/posts"), who, body.clone()).await,
            status,
            code,
        );
    }
    assert_eq!(count(&h, "PostPublished").await, before);

    let a = h
        .post(&path, &c.alice, json!({"content": "the owner's"}))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    let posts = h.get_at(&path, &c.bob, &a.body["position"]).await;
    let contents: Vec<&Value> = posts.items().iter().map(|p| &p["content"]).collect();
    assert_eq!(contents, [&json!("the owner's"), &json!(PRIVATE_POST)]);
}

/// Reading posts: a public server's, anyone signed in; a private server's, its members (an
/// invitee is 403 `forbidden`, an outsider 404 `server_not_found`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_of_a_private_server_are_for_its_members() {
    let h = Harness::start().await;
    let c = community(&h).await;
    let path = c.private.path("/posts");
    refused_without_a_valid_token(&h, Method::GET, &path, None, c.bob.id).await;
    let at = &c.private_post["position"];
    let a = h.get_at(&path, &c.mallory, at).await;
    refused(&a, StatusCode::NOT_FOUND, "server_not_found");
    leaks_nothing(&a, &[PRIVATE_POST]);
    let a = h.get_at(&path, &c.carol, at).await;
    refused(&a, StatusCode::FORBIDDEN, "forbidden");
    leaks_nothing(&a, &[PRIVATE_POST]);
    let open = h.get_at(&c.public.path("/posts"), &c.mallory, at).await;
    ok(&open);
    assert_eq!(open.items()[0]["content"], "open news");

    let a = h.get_at(&path, &c.bob, at).await;
    ok(&a);
    assert_eq!(a.items()[0]["content"], PRIVATE_POST);
}

// ----- channels -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_creates_channels() {
    let h = Harness::start().await;
    let c = community(&h).await;
    let body = json!({"name": "backroom"});
    let path = c.private.path("/channels");
    refused_without_a_valid_token(&h, Method::POST, &path, Some(body.clone()), c.alice.id).await;
    for (who, space, status, code) in [
        (&c.bob, &c.public, StatusCode::FORBIDDEN, "forbidden"),
        (&c.bob, &c.private, StatusCode::FORBIDDEN, "forbidden"),
        (&c.carol, &c.private, StatusCode::FORBIDDEN, "forbidden"),
        (&c.mallory, &c.public, StatusCode::FORBIDDEN, "forbidden"),
        (
            &c.mallory,
            &c.private,
            StatusCode::NOT_FOUND,
            "server_not_found",
        ),
    ] {
        refused(
            &h.post(&space.path("/channels"), who, body.clone()).await,
            status,
            code,
        );
    }
    assert_eq!(count(&h, "ChannelCreated").await, 2, "lobby and general");

    let a = h.post(&path, &c.alice, body).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    assert_eq!(
        names(&h.get(&path, &c.bob).await),
        vec!["backroom", "general"]
    );
}

/// The channel list: as posts (public: anyone signed in; private: members, an invitee 403,
/// an outsider 404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_lists_of_a_private_server_are_for_its_members() {
    let h = Harness::start().await;
    let c = community(&h).await;
    let path = c.private.path("/channels");
    refused_without_a_valid_token(&h, Method::GET, &path, None, c.bob.id).await;
    let a = h.get(&path, &c.mallory).await;
    refused(&a, StatusCode::NOT_FOUND, "server_not_found");
    leaks_nothing(&a, &["general", &c.private.channel]);
    let a = h.get(&path, &c.carol).await;
    refused(&a, StatusCode::FORBIDDEN, "forbidden");
    leaks_nothing(&a, &["general", &c.private.channel]);
    assert_eq!(
        names(&h.get(&c.public.path("/channels"), &c.mallory).await),
        vec!["lobby"]
    );

    assert_eq!(names(&h.get(&path, &c.bob).await), vec!["general"]);
}

/// Deleting a channel: the owner of its server only; a channel is found only under its own
/// server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_deletes_channels() {
    let h = Harness::start().await;
    let c = community(&h).await;
    let path = c.private.channel_path("");
    refused_without_a_valid_token(&h, Method::DELETE, &path, None, c.alice.id).await;
    // mallory's own server, to name alice's channel under it.
    let hers = create_server(&h, &c.mallory, json!({"name": "Mallory's"})).await;
    for (who, path, status, code) in [
        (
            &c.bob,
            c.private.channel_path(""),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            &c.bob,
            c.public.channel_path(""),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            &c.carol,
            c.private.channel_path(""),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            &c.mallory,
            c.public.channel_path(""),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            &c.mallory,
            c.private.channel_path(""),
            StatusCode::NOT_FOUND,
            "server_not_found",
        ),
        (
            &c.mallory,
            format!("/v1/servers/{hers}/channels/{}", c.public.channel),
            StatusCode::NOT_FOUND,
            "channel_not_found",
        ),
    ] {
        refused(&delete(&h, &path, who).await, status, code);
    }
    assert_eq!(count(&h, "ChannelDeleted").await, 0);
    assert_eq!(
        member_ids(&h.get(&c.private.channel_path("/members"), &c.bob).await),
        vec![c.bob.id.to_string()]
    );

    ok(&delete(&h, &path, &c.alice).await);
    assert!(names(&h.get(&c.private.path("/channels"), &c.bob).await).is_empty());
}

/// Joining: members (owner, subscribers) of the channel's server. An invitee or an outsider
/// of a public server is 403 `forbidden`, an outsider of a private server 404
/// `server_not_found`; a channel named under another server is 404 `channel_not_found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_a_channel_needs_membership_of_its_server() {
    let h = Harness::start().await;
    let c = community(&h).await;
    let path = c.public.channel_path("/join");
    refused_without_a_valid_token(&h, Method::POST, &path, None, c.bob.id).await;
    let hers = create_server(&h, &c.mallory, json!({"name": "Mallory's"})).await;
    let before = (
        caused_by(&h, &c.mallory).await,
        caused_by(&h, &c.carol).await,
    );
    for (who, path, status, code) in [
        (
            &c.mallory,
            c.public.channel_path("/join"),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            &c.mallory,
            c.private.channel_path("/join"),
            StatusCode::NOT_FOUND,
            "server_not_found",
        ),
        (
            &c.mallory,
            format!("/v1/servers/{hers}/channels/{}/join", c.private.channel),
            StatusCode::NOT_FOUND,
            "channel_not_found",
        ),
        (
            &c.carol,
            c.private.channel_path("/join"),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
    ] {
        refused(&h.post(&path, who, json!(null)).await, status, code);
    }
    assert_eq!(
        (
            caused_by(&h, &c.mallory).await,
            caused_by(&h, &c.carol).await
        ),
        before
    );
    assert_eq!(
        member_ids(&h.get(&c.private.channel_path("/members"), &c.bob).await),
        vec![c.bob.id.to_string()]
    );
    assert!(h.get("/v1/users/me/channel", &c.mallory).await.body["channel"].is_null());

    ok(&h
        .post(&c.public.path("/subscription"), &c.mallory, json!(null))
        .await);
    ok(&h.post(&path, &c.mallory, json!(null)).await);
    assert_eq!(
        h.get("/v1/users/me/channel", &c.mallory).await.body["channel"]["channel_id"],
        json!(c.public.channel)
    );
}

/// Leaving moves the caller only: someone not in the channel changes nothing (200, no
/// position), an outsider of a private server is 404 `server_not_found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_a_channel_moves_only_the_caller() {
    let h = Harness::start().await;
    let c = community(&h).await;
    let path = c.private.channel_path("/leave");
    refused_without_a_valid_token(&h, Method::POST, &path, None, c.bob.id).await;
    let before = (
        caused_by(&h, &c.alice).await,
        caused_by(&h, &c.mallory).await,
    );
    refused(
        &h.post(&path, &c.mallory, json!(null)).await,
        StatusCode::NOT_FOUND,
        "server_not_found",
    );
    let noop = h.post(&path, &c.alice, json!(null)).await;
    ok(&noop);
    assert!(noop.body["position"].is_null(), "{noop:?}");
    assert_eq!(
        (
            caused_by(&h, &c.alice).await,
            caused_by(&h, &c.mallory).await
        ),
        before
    );
    let members = c.private.channel_path("/members");
    assert_eq!(
        member_ids(&h.get(&members, &c.alice).await),
        vec![c.bob.id.to_string()]
    );

    ok(&h.post(&path, &c.bob, json!(null)).await);
    assert!(member_ids(&h.get(&members, &c.alice).await).is_empty());
    assert!(h.get("/v1/users/me/channel", &c.bob).await.body["channel"].is_null());
}

/// Channel members are listed to whoever may read the server: for a public server anyone
/// signed in, for a private one its members (an invitee 403, an outsider 404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_members_are_listed_to_those_who_may_read_the_server() {
    let h = Harness::start().await;
    let c = community(&h).await;
    let path = c.private.channel_path("/members");
    refused_without_a_valid_token(&h, Method::GET, &path, None, c.bob.id).await;
    let bob = c.bob.id.to_string();
    let a = h.get(&path, &c.mallory).await;
    refused(&a, StatusCode::NOT_FOUND, "server_not_found");
    leaks_nothing(&a, &[&bob]);
    let a = h.get(&path, &c.carol).await;
    refused(&a, StatusCode::FORBIDDEN, "forbidden");
    leaks_nothing(&a, &[&bob]);
    ok(&h.get(&c.public.channel_path("/members"), &c.mallory).await);

    for who in [&c.alice, &c.bob] {
        assert_eq!(member_ids(&h.get(&path, who).await), vec![bob.clone()]);
    }
}

/// Sending to a channel: its current members only. Anyone else in a server they can see (the
/// owner too) is 403 `forbidden`; an outsider of a private server 404 `server_not_found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_channels_members_send_to_it() {
    let h = Harness::start().await;
    let c = community(&h).await;
    let body = json!({"text": "let me in"});
    let path = c.private.channel_path("/messages");
    refused_without_a_valid_token(&h, Method::POST, &path, Some(body.clone()), c.bob.id).await;
    for (who, path, status, code) in [
        (
            &c.alice,
            c.private.channel_path("/messages"),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            &c.carol,
            c.private.channel_path("/messages"),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            &c.mallory,
            c.private.channel_path("/messages"),
            StatusCode::NOT_FOUND,
            "server_not_found",
        ),
        (
            &c.mallory,
            c.public.channel_path("/messages"),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            &c.bob,
            c.public.channel_path("/messages"),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
    ] {
        refused(&h.post(&path, who, body.clone()).await, status, code);
    }
    assert_eq!(count(&h, "ChannelMessageSent").await, 1, "bob's only");

    let a = h.post(&path, &c.bob, json!({"text": "still here"})).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    let history = h.get_at(&path, &c.bob, &a.body["position"]).await;
    assert_eq!(history.texts(), vec!["still here", CHANNEL_TEXT]);
}

/// Reading a channel: its current members only (a former member too is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_channels_members_read_it() {
    let h = Harness::start().await;
    let c = community(&h).await;
    let path = c.private.channel_path("/messages");
    refused_without_a_valid_token(&h, Method::GET, &path, None, c.bob.id).await;
    let at = &c.channel_message["position"];
    for (who, status, code) in [
        (&c.alice, StatusCode::FORBIDDEN, "forbidden"),
        (&c.carol, StatusCode::FORBIDDEN, "forbidden"),
        (&c.mallory, StatusCode::NOT_FOUND, "server_not_found"),
    ] {
        let a = h.get_at(&path, who, at).await;
        refused(&a, status, code);
        leaks_nothing(&a, &[CHANNEL_TEXT]);
    }

    let a = h.get_at(&path, &c.bob, at).await;
    ok(&a);
    assert_eq!(a.texts(), vec![CHANNEL_TEXT]);
    ok(&h
        .post(&c.private.channel_path("/leave"), &c.bob, json!(null))
        .await);
    let a = h.get(&path, &c.bob).await;
    refused(&a, StatusCode::FORBIDDEN, "forbidden");
    leaks_nothing(&a, &[CHANNEL_TEXT]);
}

/// Channel read markers: the channel's current members, up to one of its messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_read_markers_are_for_the_channels_members() {
    let h = Harness::start().await;
    let c = community(&h).await;
    let path = c.private.channel_path("/read");
    let body = json!({ "up_to": c.channel_message["message_id"] });
    refused_without_a_valid_token(&h, Method::POST, &path, Some(body.clone()), c.bob.id).await;
    let before = count(&h, "ChannelMessagesRead").await;
    for (who, status, code) in [
        (&c.alice, StatusCode::FORBIDDEN, "forbidden"),
        (&c.carol, StatusCode::FORBIDDEN, "forbidden"),
        (&c.mallory, StatusCode::NOT_FOUND, "server_not_found"),
    ] {
        refused(&h.post(&path, who, body.clone()).await, status, code);
    }
    assert_eq!(count(&h, "ChannelMessagesRead").await, before);

    ok(&h.post(&path, &c.bob, body).await);
    assert_eq!(count(&h, "ChannelMessagesRead").await, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn my_channel_is_the_callers() {
    let h = Harness::start().await;
    let c = community(&h).await;
    refused_without_a_valid_token(&h, Method::GET, "/v1/users/me/channel", None, c.bob.id).await;
    let a = h.get("/v1/users/me/channel", &c.mallory).await;
    ok(&a);
    assert_eq!(a.body, json!({"channel": null}));
    let bobs = h.get("/v1/users/me/channel", &c.bob).await;
    assert_eq!(bobs.body["channel"]["channel_id"], json!(c.private.channel));
}
