//! End-to-end: servers (communities), subscriptions, invitations, posts and channels over
//! HTTP, against a real server on port 0, on every log and store backend.

#[macro_use]
mod common;

use std::time::Duration;

use common::{Answer, Client, Harness};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

/// Creates a server and returns its answer body.
async fn create(h: &Harness, owner: &Client, body: Value) -> Value {
    let a = h.post("/v1/servers", owner, body).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    a.body
}

fn id_of(v: &Value, field: &str) -> String {
    v[field].as_str().expect(field).to_owned()
}

async fn delete(h: &Harness, path: &str, who: &Client) -> Answer {
    h.call(Method::DELETE, path, Some(&who.token), None).await
}

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

async fn servers_search_and_subscriptions() {
    let h = Harness::start().await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;

    let rust = create(
        &h,
        &alice,
        json!({"name": " Rustaceans ", "tags": ["Rust", "systems", "rust"]}),
    )
    .await;
    assert_eq!(rust["name"], "Rustaceans", "trimmed");
    assert_eq!(rust["tags"], json!(["rust", "systems"]), "normalized");
    assert_eq!(rust["visibility"], "public", "public by default");
    assert_eq!(rust["owner_id"], alice.id.to_string());
    let rust_id = id_of(&rust, "server_id");
    create(
        &h,
        &alice,
        json!({"name": "Crusty Crabs", "tags": ["rust", "food"]}),
    )
    .await;
    create(&h, &bob, json!({"name": "Gophers", "tags": ["go"]})).await;
    create(
        &h,
        &bob,
        json!({"name": "Rust Secret Club", "tags": ["rust"], "visibility": "private"}),
    )
    .await;

    // Names are unique ignoring case; bad input is a clear 400; no token is a 401.
    let taken = h
        .post("/v1/servers", &bob, json!({"name": "RUSTACEANS"}))
        .await;
    assert_eq!(taken.status, StatusCode::CONFLICT, "{taken:?}");
    assert_eq!(taken.code(), "server_name_taken");
    for bad in [
        json!({"name": "ab"}),
        json!({"name": "fine name", "tags": ["no spaces"]}),
        json!({"name": "fine name", "visibility": "secret"}),
        json!({"name": "fine name", "owner": "me"}),
        json!({"tags": []}),
    ] {
        let a = h.post("/v1/servers", &bob, bad.clone()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}: {a:?}");
        assert_eq!(a.code(), "invalid_request", "{bad}");
    }
    let anonymous = h
        .call(
            Method::POST,
            "/v1/servers",
            None,
            Some(json!({"name": "nobody's"})),
        )
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    // Search: 1–2 characters match name prefixes, more match substrings; tags all match;
    // private servers are never listed.
    let search = |q: &str| {
        let q = q.to_owned();
        let h = &h;
        let bob = &bob;
        async move { h.get(&format!("/v1/servers?{q}"), bob).await }
    };
    assert_eq!(names(&search("name=ru").await), vec!["Rustaceans"]);
    assert_eq!(
        names(&search("name=RUST").await),
        vec!["Crusty Crabs", "Rustaceans"],
        "substring, ignoring case, by name"
    );
    assert_eq!(
        names(&search("tags=rust").await),
        vec!["Crusty Crabs", "Rustaceans"]
    );
    assert_eq!(names(&search("tags=rust,food").await), vec!["Crusty Crabs"]);
    assert_eq!(names(&search("name=go&tags=go").await), vec!["Gophers"]);
    assert!(search("name=secret").await.items().is_empty(), "private");
    assert!(search("name=zzz").await.items().is_empty());
    let first = search("tags=rust&limit=1").await;
    assert_eq!(names(&first), vec!["Crusty Crabs"]);
    let next = first.body["next"].as_str().expect("a second page");
    let second = search(&format!("tags=rust&limit=1&cursor={next}")).await;
    assert_eq!(names(&second), vec!["Rustaceans"]);
    assert!(second.body["next"].is_null());
    for bad in [
        "",
        "name=",
        "tags=a%20b",
        "limit=0&name=x",
        "name=x&cursor=junk",
    ] {
        let a = search(bad).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad:?}: {a:?}");
    }

    // Subscriptions, and the user's own server list.
    let path = format!("/v1/servers/{rust_id}/subscription");
    let sub = h.post(&path, &bob, json!(null)).await;
    assert_eq!(sub.status, StatusCode::OK, "{sub:?}");
    assert_eq!(sub.body["subscribed"], true);
    assert!(sub.body["position"].is_string());
    let again = h.post(&path, &bob, json!(null)).await;
    assert!(
        again.body["position"].is_null(),
        "subscribing twice changes nothing"
    );
    let mine = h.get(&format!("/v1/users/{}/servers", bob.id), &bob).await;
    assert_eq!(mine.status, StatusCode::OK, "{mine:?}");
    let roles: Vec<(String, String)> = mine
        .items()
        .iter()
        .map(|s| {
            (
                s["server"]["name"].as_str().unwrap().to_owned(),
                s["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(roles.len(), 3, "{roles:?}");
    assert!(roles.contains(&("Rustaceans".into(), "subscriber".into())));
    assert!(roles.contains(&("Gophers".into(), "owner".into())));
    assert!(roles.contains(&("Rust Secret Club".into(), "owner".into())));
    let me = h.get("/v1/users/me/servers", &bob).await;
    assert_eq!(me.body, mine.body, "`me` names the caller");
    let paged = h
        .get(&format!("/v1/users/{}/servers?limit=2", bob.id), &bob)
        .await;
    assert_eq!(paged.items().len(), 2);
    let rest = h
        .get(
            &format!(
                "/v1/users/{}/servers?limit=2&cursor={}",
                bob.id,
                paged.body["next"].as_str().expect("more")
            ),
            &bob,
        )
        .await;
    assert_eq!(rest.items().len(), 1);
    let others = h
        .get(&format!("/v1/users/{}/servers", bob.id), &alice)
        .await;
    assert_eq!(
        others.status,
        StatusCode::FORBIDDEN,
        "only the user lists theirs"
    );
    let not_a_user = h.get("/v1/users/nobody/servers", &bob).await;
    assert_eq!(not_a_user.status, StatusCode::BAD_REQUEST);

    let owner_leaves = delete(&h, &path, &alice).await;
    assert_eq!(
        owner_leaves.status,
        StatusCode::FORBIDDEN,
        "{owner_leaves:?}"
    );
    assert!(owner_leaves.message().contains("owner"));
    let left = delete(&h, &path, &bob).await;
    assert_eq!(left.status, StatusCode::OK);
    assert_eq!(left.body["subscribed"], false);
    let left_again = delete(&h, &path, &bob).await;
    assert!(left_again.body["position"].is_null());
    let mine = h.get("/v1/users/me/servers", &bob).await;
    assert_eq!(mine.items().len(), 2, "Rustaceans is gone from bob's list");

    for (method, unknown) in [
        (Method::GET, format!("/v1/servers/{}", Uuid::now_v7())),
        (
            Method::POST,
            format!("/v1/servers/{}/subscription", Uuid::now_v7()),
        ),
    ] {
        let a = h.call(method, &unknown, Some(&bob.token), None).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{unknown}: {a:?}");
        assert_eq!(a.code(), "server_not_found");
    }
    let bad_id = h.get("/v1/servers/not-a-uuid", &bob).await;
    assert_eq!(bad_id.status, StatusCode::BAD_REQUEST);
    let shown = h.get(&format!("/v1/servers/{rust_id}"), &bob).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.body["name"], "Rustaceans");
    h.shutdown().await;
}

/// The `NotificationRequested` events in the log, as (user, kind, subject, item, from).
async fn notifications(h: &Harness, expected: usize) -> Vec<missive_events::Event> {
    let log = h
        .config
        .log
        .open(&h.config.data_dir)
        .await
        .expect("the log");
    let mut reader = log
        .consumer(&format!("test-notifications-{}", Uuid::now_v7()))
        .await
        .expect("consumer");
    let mut found = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while found.len() < expected && std::time::Instant::now() < deadline {
        for record in reader
            .poll(1000, Duration::from_millis(200))
            .await
            .expect("poll")
        {
            if record.event_type == "NotificationRequested" {
                assert_eq!(record.stream, missive_events::Stream::Notifications);
                found.push(
                    missive_events::decode(&record.payload)
                        .expect("decodes")
                        .event,
                );
            }
        }
    }
    found
}

async fn invitations_and_private_servers() {
    let h = Harness::start().await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let carol = h.register("carol").await;
    let club = create(
        &h,
        &alice,
        json!({"name": "Secret Club", "visibility": "private"}),
    )
    .await;
    let club_id = id_of(&club, "server_id");
    let server = format!("/v1/servers/{club_id}");

    // An outsider without an invitation does not find a private server at all.
    for (method, path) in [
        (Method::GET, server.clone()),
        (Method::GET, format!("{server}/posts")),
        (Method::GET, format!("{server}/channels")),
        (Method::POST, format!("{server}/subscription")),
        (Method::POST, format!("{server}/invitations")),
    ] {
        let body = (method == Method::POST).then(|| json!({"user_id": carol.id}));
        let a = h.call(method, &path, Some(&bob.token), body).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}: {a:?}");
        assert_eq!(a.code(), "server_not_found", "{path}");
    }

    // Nor its channels, whatever the route.
    let hidden = h
        .post(
            &format!("{server}/channels"),
            &alice,
            json!({"name": "inner"}),
        )
        .await;
    assert_eq!(hidden.status, StatusCode::CREATED, "{hidden:?}");
    let inner_id = id_of(&hidden.body, "channel_id");
    let inner = format!("{server}/channels/{inner_id}");
    let channel_routes = [
        (Method::POST, format!("{inner}/join")),
        (Method::POST, format!("{inner}/leave")),
        (Method::GET, format!("{inner}/members")),
        (Method::GET, format!("{inner}/messages")),
        (Method::POST, format!("{inner}/messages")),
        (Method::POST, format!("{inner}/read")),
        (Method::DELETE, inner.clone()),
    ];
    for (method, path) in &channel_routes {
        let body = match path.rsplit('/').next() {
            Some("messages") if *method == Method::POST => Some(json!({"text": "hi"})),
            Some("read") => Some(json!({"up_to": Uuid::now_v7()})),
            _ => None,
        };
        let a = h.call(method.clone(), path, Some(&bob.token), body).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{method} {path}: {a:?}");
        assert_eq!(a.code(), "server_not_found", "{method} {path}");
    }

    let invite = |who: &Client, invitee: Uuid| {
        let path = format!("{server}/invitations");
        let who = who.clone();
        let h = &h;
        async move { h.post(&path, &who, json!({ "user_id": invitee })).await }
    };
    let sent = invite(&alice, bob.id).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{sent:?}");
    let invitation = id_of(&sent.body, "invitation_id");
    let resent = invite(&alice, bob.id).await;
    assert_eq!(
        resent.status,
        StatusCode::OK,
        "inviting twice changes nothing"
    );
    assert_eq!(resent.body["invitation_id"], sent.body["invitation_id"]);
    assert!(resent.body["position"].is_null());
    let unknown = invite(&alice, Uuid::now_v7()).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.code(), "user_not_found");
    let myself = invite(&alice, alice.id).await;
    assert_eq!(myself.status, StatusCode::BAD_REQUEST);
    let malformed = h
        .post(
            &format!("{server}/invitations"),
            &alice,
            json!({"user_id": "x"}),
        )
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);

    // The invitee sees the invitation and the server's name, but not its posts yet.
    let pending = h.get("/v1/invitations", &bob).await;
    assert_eq!(pending.items().len(), 1, "{pending:?}");
    let item = &pending.items()[0];
    assert_eq!(item["invitation_id"], invitation);
    assert_eq!(item["server_name"], "Secret Club");
    assert_eq!(item["inviter_id"], alice.id.to_string());
    assert_eq!(item["state"], "pending");
    assert_eq!(h.get(&server, &bob).await.status, StatusCode::OK);
    let posts = h.get(&format!("{server}/posts"), &bob).await;
    assert_eq!(posts.status, StatusCode::FORBIDDEN, "{posts:?}");
    for path in [format!("{server}/channels"), format!("{inner}/members")] {
        let a = h.get(&path, &bob).await;
        assert_eq!(
            a.status,
            StatusCode::FORBIDDEN,
            "invited, not in yet: {path}: {a:?}"
        );
    }
    // Only the owner invites to a private server; invitations are the invitee's.
    let by_invitee = invite(&bob, carol.id).await;
    assert_eq!(by_invitee.status, StatusCode::FORBIDDEN, "{by_invitee:?}");
    let someone_elses = h
        .post(
            &format!("/v1/invitations/{invitation}/accept"),
            &carol,
            json!(null),
        )
        .await;
    assert_eq!(someone_elses.status, StatusCode::NOT_FOUND);
    assert_eq!(someone_elses.code(), "invitation_not_found");
    let theirs = h
        .get(&format!("/v1/invitations/{invitation}"), &carol)
        .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    let nothing = h
        .post(
            &format!("/v1/invitations/{}/accept", Uuid::now_v7()),
            &bob,
            json!(null),
        )
        .await;
    assert_eq!(nothing.code(), "invitation_not_found");

    // Accepting subscribes; repeating is harmless; changing the answer is a conflict.
    let accepted = h
        .post(
            &format!("/v1/invitations/{invitation}/accept"),
            &bob,
            json!(null),
        )
        .await;
    assert_eq!(accepted.status, StatusCode::OK, "{accepted:?}");
    assert_eq!(accepted.body["state"], "accepted");
    let again = h
        .post(
            &format!("/v1/invitations/{invitation}/accept"),
            &bob,
            json!(null),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(again.body["position"].is_null());
    let declined = h
        .post(
            &format!("/v1/invitations/{invitation}/decline"),
            &bob,
            json!(null),
        )
        .await;
    assert_eq!(declined.status, StatusCode::CONFLICT, "{declined:?}");
    assert!(h.get("/v1/invitations", &bob).await.items().is_empty());
    let shown = h.get(&format!("/v1/invitations/{invitation}"), &bob).await;
    assert_eq!(shown.body["state"], "accepted");
    assert!(shown.body["answered_at"].is_string());
    let theirs = h.get("/v1/users/me/servers", &bob).await;
    assert_eq!(names(&theirs), vec!["Secret Club"]);
    assert_eq!(
        h.get(&format!("{server}/posts"), &bob).await.status,
        StatusCode::OK
    );
    let member = invite(&alice, bob.id).await;
    assert_eq!(member.status, StatusCode::CONFLICT);
    assert_eq!(member.code(), "already_subscribed");

    // Declining leaves the invitee an outsider: the server is not found again.
    let for_carol = invite(&alice, carol.id).await;
    let carol_invitation = id_of(&for_carol.body, "invitation_id");
    let no = h
        .post(
            &format!("/v1/invitations/{carol_invitation}/decline"),
            &carol,
            json!(null),
        )
        .await;
    assert_eq!(no.status, StatusCode::OK, "{no:?}");
    assert_eq!(no.body["state"], "declined");
    assert_eq!(h.get(&server, &carol).await.code(), "server_not_found");
    // A public server's subscribers invite; subscribing answers a pending invitation.
    let open = create(&h, &alice, json!({"name": "Open House"})).await;
    let open_id = id_of(&open, "server_id");
    let by_subscriber = h
        .post(
            &format!("/v1/servers/{open_id}/invitations"),
            &bob,
            json!({"user_id": carol.id}),
        )
        .await;
    assert_eq!(
        by_subscriber.status,
        StatusCode::FORBIDDEN,
        "bob is not subscribed"
    );
    h.post(
        &format!("/v1/servers/{open_id}/subscription"),
        &bob,
        json!(null),
    )
    .await;
    let by_subscriber = h
        .post(
            &format!("/v1/servers/{open_id}/invitations"),
            &bob,
            json!({"user_id": carol.id}),
        )
        .await;
    assert_eq!(
        by_subscriber.status,
        StatusCode::CREATED,
        "{by_subscriber:?}"
    );
    h.post(
        &format!("/v1/servers/{open_id}/subscription"),
        &carol,
        json!(null),
    )
    .await;
    let answered = h
        .get(
            &format!(
                "/v1/invitations/{}",
                id_of(&by_subscriber.body, "invitation_id")
            ),
            &carol,
        )
        .await;
    assert_eq!(answered.body["state"], "accepted", "{answered:?}");

    // Each invitation asked the push service to notify its invitee.
    let found = notifications(&h, 3).await;
    let mut invited: Vec<(Uuid, Uuid)> = found
        .iter()
        .filter_map(|e| match e {
            missive_events::Event::NotificationRequested {
                user_id,
                kind: missive_events::NotificationKind::Invitation,
                from_id,
                ..
            } => Some((*user_id, *from_id)),
            _ => None,
        })
        .collect();
    // Keyed by invitee: the order across invitees depends on the log's partitions.
    invited.sort();
    let mut expected = vec![(bob.id, alice.id), (carol.id, alice.id), (carol.id, bob.id)];
    expected.sort();
    assert_eq!(invited, expected);
    h.shutdown().await;
}

async fn posts_are_the_owners_and_paginated() {
    let h = Harness::start_with(|c| c.service.max_text_chars = 40).await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let news = create(&h, &alice, json!({"name": "News"})).await;
    let posts = format!("/v1/servers/{}/posts", id_of(&news, "server_id"));

    let mut last = Value::Null;
    for i in 0..5 {
        let a = h
            .post(
                &posts,
                &alice,
                json!({"content": format!("post {i}"), "tags": ["News"]}),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
        last = a.body;
    }
    let not_owner = h.post(&posts, &bob, json!({"content": "mine"})).await;
    assert_eq!(not_owner.status, StatusCode::FORBIDDEN);
    assert!(not_owner.message().contains("owner"), "{not_owner:?}");
    let empty = h.post(&posts, &alice, json!({"content": "  "})).await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    assert!(empty.message().contains("content"), "{empty:?}");
    let long = h
        .post(&posts, &alice, json!({"content": "x".repeat(41)}))
        .await;
    assert_eq!(long.status, StatusCode::PAYLOAD_TOO_LARGE);
    let extra = h
        .post(&posts, &alice, json!({"content": "x", "pinned": true}))
        .await;
    assert_eq!(extra.status, StatusCode::BAD_REQUEST);

    // Anyone reads a public server's posts (bob is not subscribed), newest first, by pages.
    let page = h
        .get_at(&format!("{posts}?limit=2"), &bob, &last["position"])
        .await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    let contents = |a: &Answer| -> Vec<String> {
        a.items()
            .iter()
            .map(|p| p["content"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(contents(&page), vec!["post 4", "post 3"]);
    assert_eq!(page.items()[0]["tags"], json!(["news"]));
    assert_eq!(page.items()[0]["author_id"], alice.id.to_string());
    let mut all = contents(&page);
    let mut cursor = page.body["next"].as_str().map(str::to_owned);
    while let Some(c) = cursor {
        let next = h.get(&format!("{posts}?limit=2&cursor={c}"), &bob).await;
        all.extend(contents(&next));
        cursor = next.body["next"].as_str().map(str::to_owned);
    }
    assert_eq!(all, vec!["post 4", "post 3", "post 2", "post 1", "post 0"]);
    let bad = h.get(&format!("{posts}?cursor=nonsense"), &bob).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{bad:?}");
    h.shutdown().await;
}

async fn channels_one_at_a_time_with_unread_counts() {
    let h = Harness::start().await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let carol = h.register("carol").await;
    let dave = h.register("dave").await;
    let guild = create(&h, &alice, json!({"name": "Guild"})).await;
    let other = create(&h, &bob, json!({"name": "Other Place"})).await;
    let server = format!("/v1/servers/{}", id_of(&guild, "server_id"));
    let other_server = format!("/v1/servers/{}", id_of(&other, "server_id"));

    let general = h
        .post(
            &format!("{server}/channels"),
            &alice,
            json!({"name": "general"}),
        )
        .await;
    assert_eq!(general.status, StatusCode::CREATED, "{general:?}");
    let general = id_of(&general.body, "channel_id");
    let random = id_of(
        &h.post(
            &format!("{server}/channels"),
            &alice,
            json!({"name": "random"}),
        )
        .await
        .body,
        "channel_id",
    );
    let elsewhere = id_of(
        &h.post(
            &format!("{other_server}/channels"),
            &bob,
            json!({"name": "lobby"}),
        )
        .await
        .body,
        "channel_id",
    );
    let taken = h
        .post(
            &format!("{server}/channels"),
            &alice,
            json!({"name": "general"}),
        )
        .await;
    assert_eq!(taken.status, StatusCode::CONFLICT);
    assert_eq!(taken.code(), "channel_name_taken");
    let invalid = h
        .post(
            &format!("{server}/channels"),
            &alice,
            json!({"name": "General Chat"}),
        )
        .await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
    let not_owner = h
        .post(&format!("{server}/channels"), &bob, json!({"name": "mine"}))
        .await;
    assert_eq!(not_owner.status, StatusCode::FORBIDDEN);

    let channel = |id: &str| format!("{server}/channels/{id}");
    for who in [&bob, &carol, &dave] {
        let a = h
            .post(&format!("{server}/subscription"), who, json!(null))
            .await;
        assert_eq!(a.status, StatusCode::OK);
    }
    // Only subscribers join; a channel of another server is not found here.
    let outsider = h
        .post(
            &format!("{other_server}/channels/{elsewhere}/join"),
            &carol,
            json!(null),
        )
        .await;
    assert_eq!(outsider.status, StatusCode::FORBIDDEN, "{outsider:?}");
    let wrong = h
        .post(&format!("{}/join", channel(&elsewhere)), &bob, json!(null))
        .await;
    assert_eq!(wrong.status, StatusCode::NOT_FOUND);
    assert_eq!(wrong.code(), "channel_not_found");
    for who in [&bob, &carol] {
        let joined = h
            .post(&format!("{}/join", channel(&general)), who, json!(null))
            .await;
        assert_eq!(joined.status, StatusCode::OK, "{joined:?}");
    }

    // Members send; the same unread counts and read markers as conversations.
    let msgs = format!("{}/messages", channel(&general));
    let mut sent = Vec::new();
    for i in 0..3 {
        let a = h
            .post(&msgs, &carol, json!({"text": format!("c{i}")}))
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
        sent.push(a.body);
    }
    let keyed = h
        .post(
            &msgs,
            &carol,
            json!({"text": "once", "client_msg_id": "k-1"}),
        )
        .await;
    assert_eq!(keyed.status, StatusCode::CREATED);
    let retried = h
        .post(
            &msgs,
            &carol,
            json!({"text": "once", "client_msg_id": "k-1"}),
        )
        .await;
    assert_eq!(
        retried.status,
        StatusCode::OK,
        "a retry is the same message"
    );
    assert_eq!(retried.body["message_id"], keyed.body["message_id"]);
    let listed = h
        .get_at(&format!("{server}/channels"), &bob, &keyed.body["position"])
        .await;
    let unread = |a: &Answer, id: &str| {
        a.items()
            .iter()
            .find(|c| c["channel_id"] == id)
            .map(|c| c["unread_count"].clone())
            .expect("the channel is listed")
    };
    assert_eq!(unread(&listed, &general), 4, "{listed:?}");
    assert_eq!(unread(&listed, &random), 0);
    let names: Vec<&str> = listed
        .items()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["general", "random"]);
    let history = h.get(&msgs, &bob).await;
    assert_eq!(
        history.texts(),
        vec!["once", "c2", "c1", "c0"],
        "newest first"
    );
    assert_eq!(history.items()[0]["seq"], 4);
    assert!(
        history.items()[0]["client_msg_id"].is_null(),
        "only the sender sees it"
    );
    let own = h.get(&msgs, &carol).await;
    assert_eq!(own.items()[0]["client_msg_id"], "k-1");
    let read = h
        .post(
            &format!("{}/read", channel(&general)),
            &bob,
            json!({"up_to": sent[1]["message_id"]}),
        )
        .await;
    assert_eq!(read.status, StatusCode::OK, "{read:?}");
    let listed = h
        .get_at(&format!("{server}/channels"), &bob, &read.body["position"])
        .await;
    assert_eq!(unread(&listed, &general), 2);
    let foreign = h
        .post(
            &format!("{}/read", channel(&general)),
            &bob,
            json!({"up_to": Uuid::now_v7()}),
        )
        .await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND);
    // A first join starts with nothing unread.
    h.post(&format!("{}/join", channel(&general)), &dave, json!(null))
        .await;
    let daves = h.get(&format!("{server}/channels"), &dave).await;
    assert_eq!(unread(&daves, &general), 0, "{daves:?}");
    let members = h
        .get(&format!("{}/members", channel(&general)), &alice)
        .await;
    let mut ids: Vec<String> = members
        .items()
        .iter()
        .map(|m| m["user_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut expected = vec![
        bob.id.to_string(),
        carol.id.to_string(),
        dave.id.to_string(),
    ];
    expected.sort();
    assert_eq!(ids, expected);

    // One channel at a time: switching leaves general, whose messages bob no longer reads.
    let switched = h
        .post(&format!("{}/join", channel(&random)), &bob, json!(null))
        .await;
    assert_eq!(switched.status, StatusCode::OK);
    let mine = h.get("/v1/users/me/channel", &bob).await;
    assert_eq!(mine.body["channel"]["channel_id"], random);
    let refused = h.post(&msgs, &bob, json!({"text": "hi"})).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
    assert_eq!(h.get(&msgs, &bob).await.status, StatusCode::FORBIDDEN);
    let not_in = h
        .post(&format!("{}/leave", channel(&general)), &bob, json!(null))
        .await;
    assert!(
        not_in.body["position"].is_null(),
        "leaving a channel you are not in"
    );
    let not_member = h.post(&msgs, &alice, json!({"text": "owner too"})).await;
    assert_eq!(not_member.status, StatusCode::FORBIDDEN);

    // Unsubscribing leaves the server's channel.
    h.call(
        Method::DELETE,
        &format!("{server}/subscription"),
        Some(&dave.token),
        None,
    )
    .await;
    assert!(h.get("/v1/users/me/channel", &dave).await.body["channel"].is_null());

    // Deleting a channel takes everyone out of it; its name is free again.
    let not_owner = delete(&h, &channel(&general), &bob).await;
    assert_eq!(not_owner.status, StatusCode::FORBIDDEN);
    let deleted = delete(&h, &channel(&general), &alice).await;
    assert_eq!(deleted.status, StatusCode::OK, "{deleted:?}");
    assert!(h.get("/v1/users/me/channel", &carol).await.body["channel"].is_null());
    let gone = h.post(&msgs, &carol, json!({"text": "anyone?"})).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.code(), "channel_not_found");
    assert_eq!(
        delete(&h, &channel(&general), &alice).await.code(),
        "channel_not_found"
    );
    let reborn = h
        .post(
            &format!("{server}/channels"),
            &alice,
            json!({"name": "general"}),
        )
        .await;
    assert_eq!(reborn.status, StatusCode::CREATED, "{reborn:?}");
    let listed = h.get(&format!("{server}/channels"), &alice).await;
    assert_eq!(listed.items().len(), 2);
    assert_ne!(listed.items()[0]["channel_id"], general);
    h.shutdown().await;
}

/// Everything the community queries show for each user, as one value.
async fn view(h: &Harness, users: &[&Client], servers: &[String]) -> Value {
    let mut out = Vec::new();
    for u in users {
        let mine = h.get("/v1/users/me/servers", u).await;
        let invitations = h.get("/v1/invitations", u).await;
        let channel = h.get("/v1/users/me/channel", u).await;
        let mut per_server = Vec::new();
        for s in servers {
            let posts = h.get(&format!("/v1/servers/{s}/posts"), u).await;
            let channels = h.get(&format!("/v1/servers/{s}/channels"), u).await;
            let mut histories = Vec::new();
            if channels.status == StatusCode::OK {
                for c in channels.items() {
                    let id = c["channel_id"].as_str().unwrap();
                    let history = h
                        .get(&format!("/v1/servers/{s}/channels/{id}/messages"), u)
                        .await;
                    histories.push(json!([history.status.as_u16(), history.body]));
                }
            }
            per_server.push(json!({
                "posts": [posts.status.as_u16(), posts.body],
                "channels": [channels.status.as_u16(), channels.body],
                "histories": histories,
            }));
        }
        out.push(json!({
            "servers": mine.body,
            "invitations": invitations.body,
            "channel": channel.body,
            "per_server": per_server,
        }));
    }
    Value::Array(out)
}

async fn restart_and_full_replay_rebuild_communities() {
    let mut h = Harness::start().await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let carol = h.register("carol").await;
    let public = id_of(
        &create(&h, &alice, json!({"name": "Plaza", "tags": ["town"]})).await,
        "server_id",
    );
    let private = id_of(
        &create(&h, &bob, json!({"name": "Den", "visibility": "private"})).await,
        "server_id",
    );
    h.post(
        &format!("/v1/servers/{public}/subscription"),
        &bob,
        json!(null),
    )
    .await;
    h.post(
        &format!("/v1/servers/{public}/subscription"),
        &carol,
        json!(null),
    )
    .await;
    h.post(
        &format!("/v1/servers/{private}/invitations"),
        &bob,
        json!({"user_id": carol.id}),
    )
    .await;
    let square = id_of(
        &h.post(
            &format!("/v1/servers/{public}/channels"),
            &alice,
            json!({"name": "square"}),
        )
        .await
        .body,
        "channel_id",
    );
    let old = id_of(
        &h.post(
            &format!("/v1/servers/{public}/channels"),
            &alice,
            json!({"name": "old"}),
        )
        .await
        .body,
        "channel_id",
    );
    for who in [&bob, &carol] {
        h.post(
            &format!("/v1/servers/{public}/channels/{square}/join"),
            who,
            json!(null),
        )
        .await;
    }
    let mut last = Value::Null;
    let mut positions = Vec::new();
    for i in 0..4 {
        let who = if i % 2 == 0 { &bob } else { &carol };
        last = h
            .post(
                &format!("/v1/servers/{public}/channels/{square}/messages"),
                who,
                json!({"text": format!("m{i}")}),
            )
            .await
            .body;
        let post = h
            .post(
                &format!("/v1/servers/{public}/posts"),
                &alice,
                json!({"content": format!("p{i}")}),
            )
            .await;
        positions.push(id_of(&post.body, "position"));
    }
    let read = h
        .post(
            &format!("/v1/servers/{public}/channels/{square}/read"),
            &carol,
            json!({"up_to": last["message_id"]}),
        )
        .await;
    positions.push(id_of(&read.body, "position"));
    delete(&h, &format!("/v1/servers/{public}/channels/{old}"), &alice).await;
    // Posts and channel messages do not wait for their projection: wait for all of them.
    let settled = h
        .get_at(
            "/v1/users/me/servers",
            &alice,
            &Value::from(positions.join(",")),
        )
        .await;
    assert_eq!(settled.status, StatusCode::OK, "{settled:?}");
    let users = [&alice, &bob, &carol];
    let servers = [public.clone(), private.clone()];
    let before = view(&h, &users, &servers).await;
    assert_eq!(
        before[1]["per_server"][0]["histories"][0][1]["items"]
            .as_array()
            .map(Vec::len),
        Some(4),
        "{before}"
    );

    h.restart().await;
    assert_eq!(
        view(&h, &users, &servers).await,
        before,
        "a restart changes nothing"
    );
    h.restart_with_empty_read_models().await;
    assert_eq!(
        view(&h, &users, &servers).await,
        before,
        "a full replay rebuilds identical community read models"
    );
    // Commands still see the rebuilt state: the name is taken, the invitation pending.
    let taken = h
        .post("/v1/servers", &carol, json!({"name": "plaza"}))
        .await;
    assert_eq!(taken.code(), "server_name_taken");
    assert_eq!(h.get("/v1/invitations", &carol).await.items().len(), 1);
    h.shutdown().await;
}

both_logs!(
    servers_search_and_subscriptions,
    invitations_and_private_servers,
    posts_are_the_owners_and_paginated,
    channels_one_at_a_time_with_unread_counts,
    restart_and_full_replay_rebuild_communities,
);
