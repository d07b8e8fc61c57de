//! End-to-end: direct messages, conversations, history, read markers, deletion, catch-up,
//! restarts and full replays, against a real server on port 0.

#[macro_use]
mod common;

use std::sync::Arc;

use common::{Client, Harness};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

fn msgs_path(peer: &Client) -> String {
    format!("/v1/conversations/direct/{}/messages", peer.id)
}

async fn trio(h: &Harness) -> (Client, Client, Client) {
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let carol = h.register("carol").await;
    h.befriend(&alice, &bob).await;
    (alice, bob, carol)
}

async fn sending_rules_and_idempotency() {
    let h = Harness::start_with(|c| c.service.max_text_chars = 20).await;
    let (alice, bob, carol) = trio(&h).await;

    let stranger = h
        .post(&msgs_path(&carol), &alice, json!({"text": "hi"}))
        .await;
    assert_eq!(stranger.status, StatusCode::FORBIDDEN);
    assert!(stranger.message().contains("friends"), "{stranger:?}");
    let empty = h
        .post(&msgs_path(&bob), &alice, json!({"text": "   "}))
        .await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    assert!(empty.message().contains("text"));
    let long = h
        .post(&msgs_path(&bob), &alice, json!({"text": "x".repeat(21)}))
        .await;
    assert_eq!(long.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(long.code(), "text_too_long");
    assert!(long.message().contains("maximum is 20"));
    let myself = h
        .post(&msgs_path(&alice), &alice, json!({"text": "hi"}))
        .await;
    assert_eq!(myself.status, StatusCode::BAD_REQUEST);
    let nobody = h
        .post(
            &format!("/v1/conversations/direct/{}/messages", Uuid::now_v7()),
            &alice,
            json!({"text": "hi"}),
        )
        .await;
    assert_eq!(nobody.status, StatusCode::NOT_FOUND);
    let bad_id = h
        .post(
            &msgs_path(&bob),
            &alice,
            json!({"text": "hi", "client_msg_id": ""}),
        )
        .await;
    assert_eq!(bad_id.status, StatusCode::BAD_REQUEST);
    assert!(bad_id.message().contains("client_msg_id"));
    let extra = h
        .post(
            &msgs_path(&bob),
            &alice,
            json!({"text": "hi", "html": true}),
        )
        .await;
    assert_eq!(extra.status, StatusCode::BAD_REQUEST);
    let unauth = h
        .call(
            Method::POST,
            &msgs_path(&bob),
            None,
            Some(json!({"text": "hi"})),
        )
        .await;
    assert_eq!(unauth.status, StatusCode::UNAUTHORIZED);

    let first = h
        .post(
            &msgs_path(&bob),
            &alice,
            json!({"text": "hello", "client_msg_id": "m-1"}),
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    assert_eq!(first.body["status"], "pending");
    let retry = h
        .post(
            &msgs_path(&bob),
            &alice,
            json!({"text": "hello", "client_msg_id": "m-1"}),
        )
        .await;
    assert_eq!(
        retry.status,
        StatusCode::OK,
        "a retry is answered with the original"
    );
    assert_eq!(retry.body["message_id"], first.body["message_id"]);
    assert_eq!(retry.body["position"], first.body["position"]);
    // The same key for another peer is not a retry: refused, not answered with the first.
    let reused = h
        .post(
            &msgs_path(&carol),
            &alice,
            json!({"text": "hello carol", "client_msg_id": "m-1"}),
        )
        .await;
    assert_eq!(reused.status, StatusCode::CONFLICT, "{reused:?}");
    assert!(reused.message().contains("another user"), "{reused:?}");

    // Concurrent retries of one key still make exactly one message.
    let h = Arc::new(h);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (h, alice, bob) = (h.clone(), alice.clone(), bob.clone());
        tasks.push(tokio::spawn(async move {
            h.post(
                &msgs_path(&bob),
                &alice,
                json!({"text": "race", "client_msg_id": "m-2"}),
            )
            .await
        }));
    }
    let mut ids = Vec::new();
    let mut race_position = Value::Null;
    let mut created = 0;
    for t in tasks {
        let a = t.await.expect("task");
        created += usize::from(a.status == StatusCode::CREATED);
        ids.push(a.body["message_id"].clone());
        race_position = a.body["position"].clone();
    }
    assert_eq!(created, 1, "exactly one send creates the message");
    assert!(ids.iter().all(|id| *id == ids[0]));
    let conv = first.body["conversation_id"].as_str().unwrap();
    let history = h
        .get_at(
            &format!("/v1/conversations/{conv}/messages"),
            &bob,
            &race_position,
        )
        .await;
    let texts: Vec<&str> = history.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, vec!["race", "hello"]);
    assert_eq!(
        history.body["items"][1]["client_msg_id"],
        Value::Null,
        "only the sender sees the key"
    );
}

async fn conversations_history_and_unread_counts() {
    let h = Harness::start().await;
    let (alice, bob, carol) = trio(&h).await;
    h.befriend(&carol, &bob).await;

    let mut last = Value::Null;
    for i in 0..5 {
        last = h.send(&alice, &bob, &format!("a{i}")).await;
    }
    let reply = h.send(&bob, &alice, "b0").await;
    let from_carol = h.send(&carol, &bob, "c0").await;
    let conv = last["conversation_id"].as_str().unwrap().to_owned();

    // Two conversations, two partitions: wait for the last position of each.
    let both = Value::from(format!(
        "{},{}",
        reply["position"].as_str().unwrap(),
        from_carol["position"].as_str().unwrap()
    ));
    let list = h.get_at("/v1/conversations", &bob, &both).await;
    assert_eq!(list.status, StatusCode::OK);
    let items = list.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(
        items[0]["peer"]["id"],
        carol.id.to_string(),
        "newest activity first"
    );
    assert_eq!(items[0]["unread_count"], 1);
    assert_eq!(items[1]["conversation_id"], conv);
    assert_eq!(items[1]["unread_count"], 5);
    assert_eq!(items[1]["last_message"]["text"], "b0");
    let alices = h
        .get_at("/v1/conversations", &alice, &reply["position"])
        .await;
    assert_eq!(alices.body["items"][0]["unread_count"], 1);

    let first_page = h.get("/v1/conversations?limit=1", &bob).await;
    assert_eq!(first_page.body["items"].as_array().unwrap().len(), 1);
    let cursor = first_page.body["next"].as_str().expect("a second page");
    let second = h
        .get(&format!("/v1/conversations?limit=1&cursor={cursor}"), &bob)
        .await;
    assert_eq!(second.body["items"][0]["conversation_id"], conv);
    assert!(second.body["next"].is_null());
    for bad in ["limit=0", "limit=201", "limit=x", "cursor=nonsense"] {
        let a = h.get(&format!("/v1/conversations?{bad}"), &bob).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}: {a:?}");
    }

    // History, newest first, in pages of two.
    let path = format!("/v1/conversations/{conv}/messages");
    let mut texts = Vec::new();
    let mut query = "limit=2".to_owned();
    loop {
        let page = h.get(&format!("{path}?{query}"), &bob).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        texts.extend(page.texts());
        match page.body["next"].as_str() {
            Some(next) => query = format!("limit=2&before={next}"),
            None => break,
        }
    }
    assert_eq!(texts, vec!["b0", "a4", "a3", "a2", "a1", "a0"]);
    let all = h.get(&path, &bob).await;
    let items = all.body["items"].as_array().unwrap();
    let a1 = items[4]["message_id"].as_str().unwrap().to_owned();
    let after = h.get(&format!("{path}?after={a1}&limit=2"), &bob).await;
    let forward: Vec<&str> = after.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(forward, vec!["a2", "a3"], "after reads oldest first");
    let since = items[1]["sent_at"].as_str().unwrap();
    let recent = h
        .get(&format!("{path}?since={}", since.replace('+', "%2B")), &bob)
        .await;
    assert_eq!(
        recent.body["items"].as_array().unwrap().len(),
        2,
        "{recent:?}"
    );

    // Errors: strangers and unknown conversations look the same; bad cursors are 400.
    let hers = h.get(&path, &carol).await;
    assert_eq!(hers.status, StatusCode::NOT_FOUND);
    let unknown = h
        .get(
            &format!("/v1/conversations/{}/messages", Uuid::now_v7()),
            &bob,
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(
        hers.message().contains("conversation"),
        unknown.message().contains("conversation")
    );
    let foreign_cursor = h
        .get(&format!("{path}?before={}", Uuid::now_v7()), &bob)
        .await;
    assert_eq!(foreign_cursor.status, StatusCode::BAD_REQUEST);
    let bad_uuid = h.get(&format!("{path}?before=123"), &bob).await;
    assert_eq!(bad_uuid.status, StatusCode::BAD_REQUEST);
    let bad_since = h.get(&format!("{path}?since=yesterday"), &bob).await;
    assert_eq!(bad_since.status, StatusCode::BAD_REQUEST);
    let bad_conv = h.get("/v1/conversations/xyz/messages", &bob).await;
    assert_eq!(bad_conv.status, StatusCode::BAD_REQUEST);

    // Reading up to a4 leaves nothing unread from alice and turns her messages to read.
    let a4 = items[1]["message_id"].as_str().unwrap();
    let read = h
        .post(
            &format!("/v1/conversations/{conv}/read"),
            &bob,
            json!({"up_to": a4}),
        )
        .await;
    assert_eq!(read.status, StatusCode::OK, "{read:?}");
    let list = h
        .get_at("/v1/conversations", &bob, &read.body["position"])
        .await;
    let entry = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conversation_id"] == conv.as_str())
        .unwrap();
    assert_eq!(entry["unread_count"], 0);
    let seen_by_alice = h.get(&path, &alice).await;
    let statuses: Vec<&str> = seen_by_alice.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        vec!["pending", "read", "read", "read", "read", "read"]
    );

    let unknown_up_to = h
        .post(
            &format!("/v1/conversations/{conv}/read"),
            &bob,
            json!({"up_to": Uuid::now_v7()}),
        )
        .await;
    assert_eq!(unknown_up_to.status, StatusCode::NOT_FOUND);
    let not_mine = h
        .post(
            &format!("/v1/conversations/{conv}/read"),
            &carol,
            json!({"up_to": a4}),
        )
        .await;
    assert_eq!(not_mine.status, StatusCode::NOT_FOUND);
    let wrong_conv = from_carol["conversation_id"].as_str().unwrap();
    let elsewhere = h
        .post(
            &format!("/v1/conversations/{wrong_conv}/read"),
            &bob,
            json!({"up_to": a4}),
        )
        .await;
    assert_eq!(elsewhere.status, StatusCode::NOT_FOUND);
    let bad_body = h
        .post(
            &format!("/v1/conversations/{conv}/read"),
            &bob,
            json!({"up_to": "a4"}),
        )
        .await;
    assert_eq!(bad_body.status, StatusCode::BAD_REQUEST);
    h.shutdown().await;
}

async fn deleting_for_me_and_for_everyone() {
    let h = Harness::start().await;
    let (alice, bob, carol) = trio(&h).await;
    let m1 = h.send(&alice, &bob, "one").await;
    let m2 = h.send(&alice, &bob, "two").await;
    let m3 = h.send(&alice, &bob, "three").await;
    let conv = m1["conversation_id"].as_str().unwrap();
    let path = format!("/v1/conversations/{conv}/messages");
    let unread = |a: &common::Answer| a.body["items"][0]["unread_count"].clone();
    assert_eq!(
        unread(&h.get_at("/v1/conversations", &bob, &m3["position"]).await),
        3
    );

    let del = |who: &Client, id: &Value, scope: &str| {
        let path = format!("/v1/messages/{}?scope={scope}", id.as_str().unwrap());
        let token = who.token.clone();
        let h = &h;
        async move { h.call(Method::DELETE, &path, Some(&token), None).await }
    };

    // Bob hides "two": gone for him, still there for alice, one fewer unread.
    let hidden = del(&bob, &m2["message_id"], "me").await;
    assert_eq!(hidden.status, StatusCode::OK, "{hidden:?}");
    assert_eq!(
        unread(
            &h.get_at("/v1/conversations", &bob, &hidden.body["position"])
                .await
        ),
        2
    );
    let bobs: Vec<Value> = h.get(&path, &bob).await.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(bobs, vec![json!("three"), json!("one")]);
    assert_eq!(
        h.get(&path, &alice).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let again = del(&bob, &m2["message_id"], "me").await;
    assert_eq!(
        again.status,
        StatusCode::NOT_FOUND,
        "a hidden message is no longer visible"
    );

    // Only the sender deletes for everyone; the result is a tombstone for both.
    let refused = del(&bob, &m3["message_id"], "everyone").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.message().contains("only the sender"));
    let gone = del(&alice, &m3["message_id"], "everyone").await;
    assert_eq!(gone.status, StatusCode::OK);
    let list = h
        .get_at("/v1/conversations", &bob, &gone.body["position"])
        .await;
    assert_eq!(unread(&list), 1);
    assert_eq!(
        list.body["items"][0]["last_message"]["deleted"],
        "for_everyone"
    );
    assert!(list.body["items"][0]["last_message"]["text"].is_null());
    for who in [&alice, &bob] {
        let top = &h.get(&path, who).await.body["items"][0];
        assert_eq!(top["deleted"], "for_everyone");
        assert!(top["text"].is_null());
    }
    let twice = del(&alice, &m3["message_id"], "everyone").await;
    assert_eq!(twice.status, StatusCode::OK);
    assert!(
        twice.body["position"].is_null(),
        "deleting a tombstone again changes nothing"
    );

    let no_scope = h
        .call(
            Method::DELETE,
            &format!("/v1/messages/{}", m1["message_id"].as_str().unwrap()),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(no_scope.status, StatusCode::BAD_REQUEST);
    assert!(no_scope.message().contains("scope"));
    let bad_scope = del(&bob, &m1["message_id"], "all").await;
    assert_eq!(bad_scope.status, StatusCode::BAD_REQUEST);
    let strangers = del(&carol, &m1["message_id"], "me").await;
    assert_eq!(strangers.status, StatusCode::NOT_FOUND);
    let unknown = del(&bob, &json!(Uuid::now_v7().to_string()), "me").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let malformed = h
        .call(
            Method::DELETE,
            "/v1/messages/abc?scope=me",
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    h.shutdown().await;
}

async fn catching_up_across_conversations() {
    let h = Harness::start().await;
    let (alice, bob, carol) = trio(&h).await;
    h.befriend(&carol, &bob).await;
    let before = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let (mut last_ab, mut last_bc) = (Value::Null, Value::Null);
    for i in 0..3 {
        last_ab = h.send(&alice, &bob, &format!("a{i}")).await;
        h.send(&bob, &carol, &format!("b{i}")).await;
        last_bc = h.send(&carol, &bob, &format!("c{i}")).await;
    }
    // Two conversations may sit in two partitions: wait for the last write of each.
    let last = json!({ "position": format!(
        "{},{}",
        last_ab["position"].as_str().unwrap(),
        last_bc["position"].as_str().unwrap()
    ) });
    let mut texts = Vec::new();
    let mut query = format!("since={before}&limit=4");
    loop {
        let page = h
            .get_at(&format!("/v1/messages?{query}"), &bob, &last["position"])
            .await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        texts.extend(page.texts());
        match page.body["next"].as_str() {
            Some(next) => query = format!("since={before}&limit=4&cursor={next}"),
            None => break,
        }
    }
    // The feed is in arrival order: every message once, each conversation in its own order
    // (across conversations, the order depends on the log's partitions).
    let mut sorted = texts.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec!["a0", "a1", "a2", "b0", "b1", "b2", "c0", "c1", "c2"]
    );
    let of = |prefixes: &[char]| -> Vec<String> {
        texts
            .iter()
            .filter(|t| prefixes.contains(&t.chars().next().unwrap()))
            .cloned()
            .collect()
    };
    assert_eq!(of(&['a']), vec!["a0", "a1", "a2"]);
    assert_eq!(of(&['b', 'c']), vec!["b0", "c0", "b1", "c1", "b2", "c2"]);
    let first = h
        .get_at(
            &format!("/v1/messages?since={before}&limit=4"),
            &bob,
            &last["position"],
        )
        .await;
    let cursor = first.body["next"].as_str().expect("more pages");
    let rest = h
        .get(&format!("/v1/messages?cursor={cursor}&limit=10"), &bob)
        .await;
    assert_eq!(
        rest.status,
        StatusCode::OK,
        "a cursor alone continues the catch-up"
    );
    assert_eq!(rest.body["items"].as_array().unwrap().len(), 5);
    let alices = h.get(&format!("/v1/messages?since={before}"), &alice).await;
    assert_eq!(alices.body["items"].as_array().unwrap().len(), 3);
    let missing = h.get("/v1/messages", &bob).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert!(missing.message().contains("since"));
    h.shutdown().await;
}

/// Everything both users can see, for comparing read models across restarts and replays.
async fn view(h: &Harness, users: &[&Client]) -> Vec<Value> {
    let mut out = Vec::new();
    for u in users {
        let list = h.get("/v1/conversations", u).await.body;
        for c in list["items"].as_array().unwrap() {
            let conv = c["conversation_id"].as_str().unwrap();
            out.push(
                h.get(&format!("/v1/conversations/{conv}/messages?limit=200"), u)
                    .await
                    .body,
            );
        }
        out.push(list);
        out.push(h.get("/v1/friends", u).await.body);
        out.push(h.get(&format!("/v1/users/{}", u.id), u).await.body);
    }
    out
}

async fn restart_keeps_everything_and_full_replay_rebuilds_identical_read_models() {
    let h = Harness::start().await;
    let (alice, bob, carol) = trio(&h).await;
    h.befriend(&carol, &alice).await;
    let h = Arc::new(h);
    // 120 sends in flight at once, from three directions.
    let mut tasks = Vec::new();
    for (from, to) in [(&alice, &bob), (&bob, &alice), (&carol, &alice)] {
        for n in 0..40 {
            let (h, from, to) = (h.clone(), from.clone(), to.clone());
            tasks.push(tokio::spawn(async move {
                h.send(&from, &to, &format!("m{n}")).await
            }));
        }
    }
    let mut positions = Vec::new();
    for t in tasks {
        positions.push(t.await.expect("task")["position"].clone());
    }
    let offset = |p: &Value| -> u64 {
        p.as_str()
            .unwrap()
            .split_once(':')
            .unwrap()
            .1
            .parse()
            .unwrap()
    };
    let last = json!({ "position": positions.iter().max_by_key(|p| offset(p)).unwrap().clone() });
    let mut h = Arc::try_unwrap(h).ok().expect("sole owner");
    let m = h.send(&alice, &bob, "to delete").await;
    h.call(
        Method::DELETE,
        &format!(
            "/v1/messages/{}?scope=everyone",
            m["message_id"].as_str().unwrap()
        ),
        Some(&alice.token),
        None,
    )
    .await;
    let read_up_to = h
        .get_at("/v1/conversations", &alice, &last["position"])
        .await;
    let conv = read_up_to.body["items"][0]["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let top = h
        .get(
            &format!("/v1/conversations/{conv}/messages?limit=1"),
            &alice,
        )
        .await;
    let marker = h
        .post(
            &format!("/v1/conversations/{conv}/read"),
            &alice,
            json!({"up_to": top.body["items"][0]["message_id"]}),
        )
        .await;
    let settled = h
        .get_at("/v1/conversations", &alice, &marker.body["position"])
        .await;
    assert_eq!(settled.status, StatusCode::OK);

    let unread_of = |list: &Value| -> u64 {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["unread_count"].as_u64().unwrap())
            .sum()
    };
    let bob_list = h.get("/v1/conversations", &bob).await.body;
    assert_eq!(
        unread_of(&bob_list),
        40,
        "bob has 40 unread from alice (the deleted one does not count)"
    );
    let users = [&alice, &bob, &carol];
    let before = view(&h, &users).await;

    h.restart().await;
    assert_eq!(
        view(&h, &users).await,
        before,
        "a restart loses and changes nothing"
    );

    // Full replay: throw the read models away; the log rebuilds them identically.
    h.restart_with_empty_read_models().await;
    assert_eq!(
        view(&h, &users).await,
        before,
        "a full replay rebuilds identical read models"
    );
    // Commands work after the replay: the username is still taken, the friendship still holds.
    let taken = h
        .call(
            Method::POST,
            "/v1/users",
            None,
            Some(json!({"username": "Alice"})),
        )
        .await;
    assert_eq!(taken.status, StatusCode::CONFLICT);
    h.send(&bob, &alice, "after replay").await;
    h.shutdown().await;
}

both_logs!(
    sending_rules_and_idempotency,
    conversations_history_and_unread_counts,
    deleting_for_me_and_for_everyone,
    catching_up_across_conversations,
    restart_keeps_everything_and_full_replay_rebuilds_identical_read_models,
);
