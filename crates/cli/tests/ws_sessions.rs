//! End-to-end: WebSocket sessions (`GET /v1/ws`) with a real client (tokio-tungstenite):
//! authentication, heartbeats, presence following the sessions, limits, and the gateway's
//! pushes: messages online and pending, receipts, presence, friendships, deletions, slow
//! clients, offline notifications.

mod common;

use std::time::Duration;

use common::{
    Client, Harness, Socket, close_frame, drain, next_json, next_of, send_json, upgrade_request,
    wait_for_status, ws_url,
};
use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

both_logs!(
    sessions_authenticate_answer_pings_and_drive_presence,
    a_silent_session_times_out_and_limits_hold,
    the_process_limit_refuses_with_503_and_frees_on_close,
    messages_reach_every_device_and_receipts_reach_the_sender,
    pending_messages_arrive_once_in_order_without_a_gap,
    presence_and_friendship_changes_are_pushed,
    deletions_are_pushed_to_those_they_concern,
    a_slow_client_is_closed_without_holding_up_others,
    offline_users_get_one_notification_per_burst,
    posts_and_channel_messages_reach_the_servers_sessions,
    shutdown_closes_sessions_with_going_away,
);

/// A graceful shutdown (SIGTERM) ends every session with 1001 "going away": clients know to
/// reconnect rather than treat it as an error of theirs.
async fn shutdown_closes_sessions_with_going_away() {
    let h = Harness::start().await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let mut a = open(&h, &alice).await;
    let mut b = open(&h, &bob).await;
    h.shutdown().await;
    for socket in [&mut a, &mut b] {
        let frame = close_frame(socket).await;
        assert_eq!(frame.code, CloseCode::Away, "{frame:?}");
        assert!(frame.reason.contains("shutting down"), "{frame:?}");
    }
}

/// Opens a session with the token in the Authorization header and reads what was pending,
/// up to the `synced` frame: the pending messages, in the order they came.
async fn connect(h: &Harness, who: &Client) -> (Socket, Vec<Value>) {
    let (mut socket, response) = tokio_tungstenite::connect_async(upgrade_request(h, who))
        .await
        .expect("the session opens");
    assert_eq!(response.status(), 101);
    let mut pending = Vec::new();
    loop {
        let frame = next_json(&mut socket).await;
        match frame["type"].as_str() {
            Some("message") => pending.push(frame["message"].clone()),
            Some("synced") => {
                assert_eq!(frame["pending"], pending.len(), "{frame}");
                return (socket, pending);
            }
            _ => panic!("before synced, only pending messages come: {frame}"),
        }
    }
}

/// Opens a session of a user with nothing pending.
async fn open(h: &Harness, who: &Client) -> Socket {
    let (socket, pending) = connect(h, who).await;
    assert_eq!(pending, Vec::<Value>::new(), "nothing was pending");
    socket
}

/// Acknowledges messages and returns the `acked` answer.
async fn ack(socket: &mut Socket, ids: &[&Value]) -> Value {
    send_json(socket, json!({"type": "ack", "message_ids": ids})).await;
    // Pushes queued before the ack was read come first (a friend's presence, say).
    next_of(socket, "acked").await
}

async fn sessions_authenticate_answer_pings_and_drive_presence() {
    let h = Harness::start().await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;

    // Without a token, or with a bad one: 401 before any upgrade.
    let refused = tokio_tungstenite::connect_async(ws_url(&h)).await;
    match refused {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    let bad = tokio_tungstenite::connect_async(format!("{}?access_token=nope", ws_url(&h))).await;
    assert!(matches!(bad, Err(WsError::Http(r)) if r.status() == 401));
    // A plain GET (no upgrade) is told what the endpoint is.
    let plain = h.get("/v1/ws", &alice).await;
    assert_eq!(plain.status, StatusCode::BAD_REQUEST, "{plain:?}");
    assert!(plain.message().contains("WebSocket"), "{plain:?}");

    // Two devices: alice is online from the first, and stays online until the last closes.
    let mut phone = open(&h, &alice).await;
    let (mut laptop, _) =
        tokio_tungstenite::connect_async(format!("{}?access_token={}", ws_url(&h), alice.token))
            .await
            .expect("a browser-style session");
    wait_for_status(&h, &bob, &alice, "online").await;

    phone
        .send(Message::Text(json!({"type": "ping"}).to_string().into()))
        .await
        .expect("ping");
    assert_eq!(next_of(&mut phone, "pong").await, json!({"type": "pong"}));
    phone
        .send(Message::Text("not json".into()))
        .await
        .expect("send");
    let error = next_of(&mut phone, "error").await;
    assert_eq!(error["code"], "bad_frame");
    // Nor is a frame's fields by position (serde could read `["ping"]` as a ping).
    phone
        .send(Message::Text(r#"["ping"]"#.into()))
        .await
        .expect("send");
    let error = next_of(&mut phone, "error").await;
    assert_eq!(error["code"], "bad_frame");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("found an array")),
        "{error}"
    );
    // The session survives a bad frame.
    phone
        .send(Message::Text(r#"{"type":"ping"}"#.into()))
        .await
        .expect("ping");
    assert_eq!(next_of(&mut phone, "pong").await["type"], "pong");

    phone.close(None).await.expect("close");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still = h.get(&format!("/v1/users/{}", alice.id), &bob).await;
    assert_eq!(
        still.body["status"], "online",
        "the laptop is still connected"
    );

    laptop.close(None).await.expect("close");
    let offline = wait_for_status(&h, &bob, &alice, "offline").await;
    assert!(offline["last_seen"].is_string(), "{offline}");
}

async fn a_silent_session_times_out_and_limits_hold() {
    let h = Harness::start_with(|c| {
        c.ws.heartbeat_timeout = Duration::from_millis(500);
        c.ws.max_sessions_per_user = 1;
    })
    .await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;

    let mut silent = open(&h, &alice).await;
    // Once a pong comes back, the session counts (the ping also restarts its heartbeat clock).
    silent
        .send(Message::Text(r#"{"type":"ping"}"#.into()))
        .await
        .expect("ping");
    assert_eq!(next_of(&mut silent, "pong").await["type"], "pong");
    // A second session of the same user is refused while the first is open.
    let request = upgrade_request(&h, &alice);
    match tokio_tungstenite::connect_async(request).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 429),
        other => panic!("expected 429, got {other:?}"),
    }

    // No heartbeat: the server closes with 4000 and alice goes offline.
    assert_eq!(
        close_frame(&mut silent).await.code,
        CloseCode::Library(4000)
    );
    wait_for_status(&h, &bob, &alice, "offline").await;
    // Once closed, a new session is allowed again.
    let mut again = open(&h, &alice).await;
    again
        .send(Message::Text(r#"{"type":"ping"}"#.into()))
        .await
        .expect("ping");
    assert_eq!(next_of(&mut again, "pong").await["type"], "pong");
}

async fn the_process_limit_refuses_with_503_and_frees_on_close() {
    let h = Harness::start_with(|c| c.ws.max_connections = 1).await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let mut first = open(&h, &alice).await;
    let request = upgrade_request(&h, &bob);
    match tokio_tungstenite::connect_async(request).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    first.close(None).await.expect("close");
    // The place is given back once the session has ended.
    for _ in 0..200 {
        let request = upgrade_request(&h, &bob);
        if let Ok((mut socket, _)) = tokio_tungstenite::connect_async(request).await {
            socket
                .send(Message::Text(r#"{"type":"ping"}"#.into()))
                .await
                .expect("ping");
            assert_eq!(next_of(&mut socket, "pong").await["type"], "pong");
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the closed session's place was never given back");
}

/// Frames until the message with `text` arrives (it included). Frames of one conversation
/// come in log order, so a later message of the same conversation proves that every frame an
/// earlier event of it caused has arrived, and shows any extra one.
async fn until_message(socket: &mut Socket, text: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = next_json(socket).await;
        let done = frame["type"] == "message" && frame["message"]["text"] == text;
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

fn kinds(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| match f["type"].as_str() {
            Some("status") => format!("status:{}", f["status"].as_str().unwrap_or("?")),
            Some("message") => format!("message:{}", f["message"]["text"].as_str().unwrap_or("?")),
            other => other.unwrap_or("?").to_owned(),
        })
        .collect()
}

async fn messages_reach_every_device_and_receipts_reach_the_sender() {
    let h = Harness::start().await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let carol = h.register("carol").await;
    h.befriend(&alice, &bob).await;
    let mut phone = open(&h, &bob).await;
    let mut laptop = open(&h, &bob).await;
    let mut sender = open(&h, &alice).await;

    let sent = h.send(&alice, &bob, "hello").await;
    let id = sent["message_id"].clone();
    for device in [&mut phone, &mut laptop] {
        let frame = next_of(device, "message").await;
        let m = &frame["message"];
        assert_eq!(m["message_id"], id);
        assert_eq!(m["text"], "hello");
        assert_eq!(m["seq"], 1, "pushed with its place in the conversation");
        assert_eq!(m["status"], "pending");
        assert_eq!(m["client_msg_id"], Value::Null);
    }
    // The sender's own devices see the message too (multi-device sync).
    assert_eq!(
        next_of(&mut sender, "message").await["message"]["message_id"],
        id
    );

    // One device acknowledges: the sender is told once, even when both devices acknowledge.
    assert_eq!(ack(&mut phone, &[&id]).await["message_ids"], json!([id]));
    let status = next_of(&mut sender, "status").await;
    assert_eq!(
        status,
        json!({"type": "status", "message_id": id, "conversation_id": sent["conversation_id"],
               "status": "delivered"})
    );
    assert_eq!(ack(&mut laptop, &[&id]).await["message_ids"], json!([id]));
    let history = format!(
        "/v1/conversations/{}/messages",
        sent["conversation_id"].as_str().unwrap()
    );
    assert_eq!(
        h.get(&history, &alice).await.items()[0]["status"],
        "delivered"
    );

    // Nobody acknowledges for someone else, and unknown ids are refused, each with its reason.
    let unknown = json!(uuid::Uuid::now_v7());
    send_json(
        &mut sender,
        json!({"type": "ack", "message_ids": [id, unknown]}),
    )
    .await;
    let acked = next_of(&mut sender, "acked").await;
    assert_eq!(acked, json!({"type": "acked", "message_ids": []}));
    let refused = next_json(&mut sender).await;
    assert_eq!(refused["code"], "ack_refused", "{refused}");
    assert_eq!(
        refused["refused"].as_array().map(Vec::len),
        Some(2),
        "{refused}"
    );
    assert!(
        refused["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("recipient"),
        "{refused}"
    );
    send_json(
        &mut sender,
        json!({"type": "ack", "message_ids": ["not-a-uuid"]}),
    )
    .await;
    assert_eq!(next_of(&mut sender, "error").await["code"], "bad_frame");
    // Carol, a stranger with a session, is told nothing.
    let mut stranger = open(&h, &carol).await;

    // Bob reads: alice's devices see "read", bob's other device moves its read marker.
    let read = h
        .post(
            &format!(
                "/v1/conversations/{}/read",
                sent["conversation_id"].as_str().unwrap()
            ),
            &bob,
            json!({"up_to": id}),
        )
        .await;
    assert_eq!(read.status, StatusCode::OK, "{read:?}");
    let marker = next_of(&mut laptop, "read_marker").await;
    assert_eq!(marker["up_to"], id);
    // A later message of the conversation shows everything before it arrived, once.
    h.send(&bob, &alice, "later").await;
    let frames = until_message(&mut sender, "later").await;
    assert_eq!(
        kinds(&frames),
        ["status:read", "message:later"],
        "{frames:?}"
    );
    assert_eq!(frames[0]["message_id"], id);
    assert_eq!(h.get(&history, &alice).await.items()[1]["status"], "read");
    assert_eq!(
        drain(&mut stranger).await,
        Vec::<Value>::new(),
        "carol is not concerned"
    );
}

async fn pending_messages_arrive_once_in_order_without_a_gap() {
    let h = Harness::start().await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let carol = h.register("carol").await;
    h.befriend(&alice, &bob).await;
    h.befriend(&carol, &bob).await;
    let mut sent = Vec::new();
    for i in 0..4 {
        sent.push(h.send(&alice, &bob, &format!("a{i}")).await["message_id"].clone());
        if i == 1 {
            sent.push(h.send(&carol, &bob, "c").await["message_id"].clone());
        }
    }
    // Offline: everything waits, oldest first across conversations.
    let (socket, pending) = connect(&h, &bob).await;
    let ids: Vec<Value> = pending.iter().map(|m| m["message_id"].clone()).collect();
    assert_eq!(ids, sent);
    assert!(pending.iter().all(|m| m["status"] == "pending"));
    drop(socket);
    // Not acknowledged: pending again on the next session; acknowledged ones no longer are.
    let (mut socket, again) = connect(&h, &bob).await;
    assert_eq!(again.len(), sent.len());
    let first_two: Vec<&Value> = sent[..2].iter().collect();
    ack(&mut socket, &first_two).await;
    socket.close(None).await.expect("close");
    let (mut socket, rest) = connect(&h, &bob).await;
    let rest: Vec<Value> = rest.iter().map(|m| m["message_id"].clone()).collect();
    assert_eq!(rest, sent[2..]);
    let all: Vec<&Value> = sent.iter().collect();
    ack(&mut socket, &all).await;
    socket.close(None).await.expect("close");

    // While alice keeps sending, bob connects: every message comes exactly once, either as
    // pending or live, in order.
    let sender = {
        let (base, alice) = (h.base.clone(), alice.token.clone());
        let bob = bob.id;
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0..60 {
                let answer = client
                    .post(format!("{base}/v1/conversations/direct/{bob}/messages"))
                    .bearer_auth(&alice)
                    .json(&json!({"text": format!("live {i}")}))
                    .send()
                    .await
                    .expect("send");
                assert_eq!(answer.status(), StatusCode::CREATED);
                if i % 20 == 10 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (mut socket, pending) = connect(&h, &bob).await;
    let mut texts: Vec<String> = pending
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect();
    sender.await.expect("the sender finished");
    while texts.len() < 60 {
        let frame = next_of(&mut socket, "message").await;
        texts.push(frame["message"]["text"].as_str().unwrap().to_owned());
    }
    let expected: Vec<String> = (0..60).map(|i| format!("live {i}")).collect();
    assert_eq!(texts, expected, "{} were pending", pending.len());
    assert_eq!(
        drain(&mut socket).await,
        Vec::<Value>::new(),
        "no duplicate follows"
    );
}

async fn presence_and_friendship_changes_are_pushed() {
    let h = Harness::start().await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let mut a = open(&h, &alice).await;
    let mut b = open(&h, &bob).await;

    // A request, its acceptance: both sides see their own view of the friendship.
    let requested = h
        .call(
            reqwest::Method::POST,
            &format!("/v1/friends/{}", alice.id),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(requested.status, StatusCode::OK, "{requested:?}");
    let to_alice = next_of(&mut a, "friendship").await;
    assert_eq!(to_alice["user_id"], json!(bob.id));
    assert_eq!(to_alice["relation"], "incoming_request");
    assert_eq!(to_alice["by"], json!(bob.id), "bob requested");
    assert_eq!(
        next_of(&mut b, "friendship").await["relation"],
        "outgoing_request"
    );
    let accepted = h
        .call(
            reqwest::Method::POST,
            &format!("/v1/friends/{}/accept", bob.id),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(accepted.status, StatusCode::OK, "{accepted:?}");
    for socket in [&mut a, &mut b] {
        let friends = next_of(socket, "friendship").await;
        assert_eq!(friends["relation"], "friend");
        assert_eq!(friends["by"], json!(alice.id), "alice accepted");
    }

    // Now friends: bob's second device changes nothing; closing his last one does.
    let mut b2 = open(&h, &bob).await;
    b.close(None).await.expect("close");
    b2.close(None).await.expect("close");
    let offline = next_of(&mut a, "presence").await;
    assert_eq!(offline["user_id"], json!(bob.id));
    assert_eq!(offline["status"], "offline");
    let profile = wait_for_status(&h, &alice, &bob, "offline").await;
    assert_eq!(
        offline["last_seen"], profile["last_seen"],
        "exact last-seen"
    );
    let _b3 = open(&h, &bob).await;
    let online = next_of(&mut a, "presence").await;
    assert_eq!(online["status"], "online");
    assert_eq!(online["user_id"], json!(bob.id));

    // Unfriending is pushed with its reason; presence is then private again.
    let removed = h
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/friends/{}", bob.id),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(removed.status, StatusCode::OK, "{removed:?}");
    let gone = next_of(&mut a, "friendship").await;
    assert_eq!(
        (gone["relation"].as_str(), gone["reason"].as_str()),
        (Some("none"), Some("unfriended"))
    );
}

async fn deletions_are_pushed_to_those_they_concern() {
    let h = Harness::start().await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    h.befriend(&alice, &bob).await;
    let mut a = open(&h, &alice).await;
    let mut b = open(&h, &bob).await;
    let one = h.send(&alice, &bob, "one").await;
    let two = h.send(&alice, &bob, "two").await;
    until_message(&mut b, "two").await;
    until_message(&mut a, "two").await;
    let delete = |id: &Value, scope: &str| {
        let path = format!("/v1/messages/{}?scope={scope}", id.as_str().unwrap());
        let token = match scope {
            "me" => bob.token.clone(),
            _ => alice.token.clone(),
        };
        let h = &h;
        async move {
            h.call(reqwest::Method::DELETE, &path, Some(&token), None)
                .await
        }
    };
    assert_eq!(
        delete(&one["message_id"], "me").await.status,
        StatusCode::OK
    );
    assert_eq!(
        delete(&two["message_id"], "everyone").await.status,
        StatusCode::OK
    );
    h.send(&alice, &bob, "three").await;
    let to_bob = until_message(&mut b, "three").await;
    assert_eq!(
        kinds(&to_bob),
        ["status:deleted", "status:deleted", "message:three"]
    );
    assert_eq!(
        (to_bob[0]["message_id"].clone(), to_bob[0]["scope"].clone()),
        (one["message_id"].clone(), json!("for_me"))
    );
    assert_eq!(
        (to_bob[1]["message_id"].clone(), to_bob[1]["scope"].clone()),
        (two["message_id"].clone(), json!("for_everyone"))
    );
    let to_alice = until_message(&mut a, "three").await;
    assert_eq!(
        kinds(&to_alice),
        ["status:deleted", "message:three"],
        "bob's own hide is his"
    );
    assert_eq!(to_alice[0]["message_id"], two["message_id"]);
}

async fn a_slow_client_is_closed_without_holding_up_others() {
    let h = Harness::start_with(|c| c.ws.session_buffer = 256).await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    h.befriend(&alice, &bob).await;
    // Bob's first device never reads; his second and alice's read as they should.
    let mut stalled = open(&h, &bob).await;
    let reading = open(&h, &bob).await;
    let a = open(&h, &alice).await;
    // 16 KB per message (4,000 four-byte characters): 24 MB in all, more than the socket
    // buffers of the stalled connection hold, so its queue overflows.
    let text = "🦀".repeat(4000);
    let count = 1500;
    let read_all = |mut socket: Socket| {
        tokio::spawn(async move {
            for _ in 0..count {
                next_of(&mut socket, "message").await;
            }
            socket
        })
    };
    let (reader, sender_reader) = (read_all(reading), read_all(a));
    for _ in 0..count {
        h.send(&alice, &bob, &text).await;
    }
    let mut reading = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the reading device got every message")
        .expect("reader");
    tokio::time::timeout(Duration::from_secs(60), sender_reader)
        .await
        .expect("the sender's device got every message")
        .expect("reader");
    // The stalled device was closed (4001) once its queue overflowed or a frame to it timed
    // out: reading it now ends
    // in that close frame, or in a dropped connection if even the close could not be sent.
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(30), stalled.next())
            .await
            .expect("the stalled session ends")
        {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            None | Some(Err(_)) => break None,
        }
    };
    if let Some(code) = ended {
        assert_eq!(code, CloseCode::Library(4001));
    }
    let metrics = h.metrics().await;
    // Its queue overflowed, or a frame waited on it longer than the send timeout first.
    assert!(
        metrics.contains(r#"missive_ws_sessions_closed_total{reason="too_slow"}"#)
            || metrics.contains(r#"missive_ws_sessions_closed_total{reason="send_timeout"}"#),
        "the slow session was closed as too slow"
    );
    // Bob is still online through his reading device, which still works.
    send_json(&mut reading, json!({"type": "ping"})).await;
    assert_eq!(next_of(&mut reading, "pong").await["type"], "pong");
    assert_eq!(
        h.get(&format!("/v1/users/{}", bob.id), &alice).await.body["status"],
        "online"
    );
}

/// Alice sends `range` to bob, one by one, from a task of its own.
fn send_in_background(
    h: &Harness,
    alice: &Client,
    bob: &Client,
    range: std::ops::Range<usize>,
) -> tokio::task::JoinHandle<()> {
    let (base, alice) = (h.base.clone(), alice.token.clone());
    let bob = bob.id;
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        for i in range {
            let answer = client
                .post(format!("{base}/v1/conversations/direct/{bob}/messages"))
                .bearer_auth(&alice)
                .json(&json!({"text": format!("m{i}")}))
                .send()
                .await
                .expect("send");
            assert_eq!(answer.status(), StatusCode::CREATED);
        }
    })
}

/// A session whose client is slow to take its backlog of pending messages (24 MB, more than
/// the socket buffers hold, so the server waits on the client) keeps the live messages pushed
/// meanwhile (more than its queue of 64 frames holds) instead of being closed as too slow,
/// and then delivers them: every message once, in conversation order. The session mechanics
/// do not depend on the log, so this runs on the embedded one only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_busy_with_its_backlog_holds_live_pushes() {
    let h = Harness::start_with(|c| {
        c.ws.session_buffer = 64;
        c.ws.send_timeout = Duration::from_secs(300);
    })
    .await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    h.befriend(&alice, &bob).await;
    let big = "🦀".repeat(4000);
    let backlog = 1500;
    for i in 0..backlog {
        h.send(&alice, &bob, &format!("b{i} {big}")).await;
    }
    // Bob connects and does not read while alice sends 150 more.
    let (mut socket, _) = tokio_tungstenite::connect_async(upgrade_request(&h, &bob))
        .await
        .expect("the session opens");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let live = 150;
    send_in_background(&h, &alice, &bob, 0..live)
        .await
        .expect("sent");
    let mut seqs = Vec::new();
    let mut ids = std::collections::HashSet::new();
    let mut live_texts = Vec::new();
    let mut synced = false;
    while !synced || seqs.len() < backlog + live {
        let frame = next_json(&mut socket).await;
        match frame["type"].as_str() {
            Some("synced") => synced = true,
            Some("message") => {
                let m = &frame["message"];
                assert!(ids.insert(m["message_id"].clone()), "a duplicate: {m}");
                seqs.push(m["seq"].as_u64().expect("seq"));
                let text = m["text"].as_str().expect("text");
                if !text.starts_with('b') {
                    live_texts.push(text.to_owned());
                }
            }
            _ => {}
        }
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in conversation order"
    );
    let expected: Vec<String> = (0..live).map(|i| format!("m{i}")).collect();
    assert_eq!(live_texts, expected);
    send_json(&mut socket, json!({"type": "ping"})).await;
    assert_eq!(next_of(&mut socket, "pong").await["type"], "pong");
    let metrics = h.metrics().await;
    assert!(!metrics.contains(r#"reason="too_slow""#), "{metrics}");
}

async fn offline_users_get_one_notification_per_burst() {
    let h = Harness::start_with(|c| c.notify_interval = Duration::from_secs(3600)).await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let carol = h.register("carol").await;
    h.befriend(&alice, &bob).await;
    h.befriend(&carol, &bob).await;
    h.befriend(&alice, &carol).await;
    let _carol_online = open(&h, &carol).await;
    wait_for_status(&h, &alice, &carol, "online").await;
    // A burst to offline bob in one conversation, one message in another; carol is online.
    let first = h.send(&alice, &bob, "1").await;
    h.send(&alice, &bob, "2").await;
    h.send(&alice, &bob, "3").await;
    let from_carol = h.send(&carol, &bob, "hey").await;
    h.send(&alice, &carol, "you are online").await;

    let log = h
        .config
        .log
        .open(&h.config.data_dir)
        .await
        .expect("the log");
    let mut reader = log
        .consumer("test-notification-reader")
        .await
        .expect("consumer");
    let mut notifications = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while notifications.len() < 2 && std::time::Instant::now() < deadline {
        for record in reader
            .poll(100, Duration::from_millis(200))
            .await
            .expect("poll")
        {
            if record.event_type == "NotificationRequested" {
                let envelope = missive_events::decode(&record.payload).expect("decodes");
                notifications.push((record.stream, envelope.event));
            }
        }
    }
    // Let anything extra arrive before checking there is none.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for record in reader
        .poll(1000, Duration::from_millis(200))
        .await
        .expect("poll")
    {
        if record.event_type == "NotificationRequested" {
            notifications.push((
                record.stream,
                missive_events::decode(&record.payload)
                    .expect("decodes")
                    .event,
            ));
        }
    }
    let id = |v: &Value| v.as_str().unwrap().parse::<uuid::Uuid>().unwrap();
    let expected = |m: &Value, from: &Client| missive_events::Event::NotificationRequested {
        user_id: bob.id,
        kind: missive_events::NotificationKind::Message,
        subject_id: id(&m["conversation_id"]),
        item_id: id(&m["message_id"]),
        from_id: from.id,
    };
    let mut events: Vec<_> = notifications
        .iter()
        .map(|(s, e)| {
            assert_eq!(*s, missive_events::Stream::Notifications);
            e.clone()
        })
        .collect();
    events.sort_by_key(|e| format!("{e:?}"));
    let mut want = vec![expected(&first, &alice), expected(&from_carol, &carol)];
    want.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        events, want,
        "one per conversation for offline bob, none for online carol"
    );
}

/// A process that dies leaves its users online. With the embedded log one process holds every
/// session, so a restart marks them offline before it listens; told not to, it leaves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_marks_users_left_online_offline() {
    for reset in [None, Some(false)] {
        let mut h = Harness::start_with(|c| c.reset_presence = reset).await;
        let alice = h.register("alice").await;
        let bob = h.register("bob").await;
        h.befriend(&alice, &bob).await;
        // Online as far as the read models know, with no session to close (as after a crash).
        let online = h
            .post("/v1/presence", &alice, json!({"status": "online"}))
            .await;
        assert_eq!(online.status, StatusCode::OK, "{online:?}");
        let before = wait_for_status(&h, &bob, &alice, "online").await;
        h.restart().await;
        let after = h.get(&format!("/v1/users/{}", alice.id), &bob).await;
        match reset {
            None => {
                assert_eq!(after.body["status"], "offline", "{after:?}");
                assert!(
                    after.body["last_seen"].as_str() > before["last_seen"].as_str(),
                    "{before} then {after:?}"
                );
            }
            _ => assert_eq!(after.body["status"], "online", "{after:?}"),
        }
    }
}

/// Creates a server of `owner` and returns its id.
async fn server_of(h: &Harness, owner: &Client, name: &str) -> String {
    let a = h.post("/v1/servers", owner, json!({ "name": name })).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    a.body["server_id"].as_str().unwrap().to_owned()
}

async fn posts_and_channel_messages_reach_the_servers_sessions() {
    let h = Harness::start().await;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    let carol = h.register("carol").await;
    let dave = h.register("dave").await;
    let guild = server_of(&h, &alice, "Guild").await;
    let elsewhere = server_of(&h, &dave, "Elsewhere").await;
    let server = format!("/v1/servers/{guild}");
    let general = h
        .post(
            &format!("{server}/channels"),
            &alice,
            json!({"name": "general"}),
        )
        .await;
    let general = general.body["channel_id"].as_str().unwrap().to_owned();
    let channel = format!("{server}/channels/{general}");
    // Bob subscribes and joins before his session opens (his memberships are loaded with
    // it); carol opens her session first and subscribes and joins after (the gateway follows
    // the events); dave is in neither.
    h.post(&format!("{server}/subscription"), &bob, json!(null))
        .await;
    h.post(&format!("{channel}/join"), &bob, json!(null)).await;
    let mut bob_ws = open(&h, &bob).await;
    let mut carol_ws = open(&h, &carol).await;
    let mut dave_ws = open(&h, &dave).await;
    h.post(&format!("{server}/subscription"), &carol, json!(null))
        .await;
    let subscribed = next_of(&mut carol_ws, "subscription").await;
    assert_eq!(subscribed["server_id"], guild.as_str());
    assert_eq!(subscribed["subscribed"], true);
    h.post(&format!("{channel}/join"), &carol, json!(null))
        .await;
    let joined = next_of(&mut bob_ws, "channel_member").await;
    assert_eq!(joined["user_id"], carol.id.to_string(), "{joined}");
    assert_eq!(joined["joined"], true);

    // A post reaches every subscriber's session (not the outsider's).
    let post = h
        .post(
            &format!("{server}/posts"),
            &alice,
            json!({"content": "welcome"}),
        )
        .await;
    assert_eq!(post.status, StatusCode::CREATED, "{post:?}");
    for ws in [&mut bob_ws, &mut carol_ws] {
        let pushed = next_of(ws, "post").await;
        assert_eq!(pushed["post"]["content"], "welcome");
        assert_eq!(pushed["post"]["post_id"], post.body["post_id"]);
    }

    // A channel message reaches the channel's members with its seq; the sender's echo
    // carries its client_msg_id, the others' do not.
    let sent = h
        .post(
            &format!("{channel}/messages"),
            &carol,
            json!({"text": "hello channel", "client_msg_id": "c-1"}),
        )
        .await;
    assert_eq!(sent.status, StatusCode::CREATED, "{sent:?}");
    let at_bob = next_of(&mut bob_ws, "channel_message").await;
    assert_eq!(at_bob["message"]["text"], "hello channel");
    assert_eq!(at_bob["message"]["seq"], 1);
    assert_eq!(at_bob["message"]["message_id"], sent.body["message_id"]);
    assert!(at_bob["message"]["client_msg_id"].is_null());
    let echo = next_of(&mut carol_ws, "channel_message").await;
    assert_eq!(echo["message"]["client_msg_id"], "c-1");
    let read = h
        .post(
            &format!("{channel}/read"),
            &bob,
            json!({"up_to": sent.body["message_id"]}),
        )
        .await;
    assert_eq!(read.status, StatusCode::OK, "{read:?}");
    let marker = next_of(&mut bob_ws, "read_marker").await;
    assert_eq!(marker["channel_id"], general.as_str());

    // Leaving the channel stops its messages; unsubscribing stops the posts.
    h.post(&format!("{channel}/leave"), &bob, json!(null)).await;
    let left = next_of(&mut carol_ws, "channel_member").await;
    assert_eq!(left["user_id"], bob.id.to_string());
    assert_eq!(left["reason"], "left");
    h.call(
        reqwest::Method::DELETE,
        &format!("{server}/subscription"),
        Some(&bob.token),
        None,
    )
    .await;
    h.post(
        &format!("{channel}/messages"),
        &carol,
        json!({"text": "bob is gone"}),
    )
    .await;
    h.post(
        &format!("{server}/posts"),
        &alice,
        json!({"content": "second"}),
    )
    .await;
    // Both reached carol, so the gateway pushed them (they sit on two topics with Kafka):
    // whatever bob was to get of them is queued for him before his pong.
    let (mut message, mut post) = (false, false);
    while !(message && post) {
        let frame = next_json(&mut carol_ws).await;
        message |= frame["type"] == "channel_message" && frame["message"]["text"] == "bob is gone";
        post |= frame["type"] == "post" && frame["post"]["content"] == "second";
    }
    let bobs: Vec<String> = drain(&mut bob_ws)
        .await
        .iter()
        .map(|f| f["type"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        !bobs.contains(&"post".to_owned()) && !bobs.contains(&"channel_message".to_owned()),
        "{bobs:?}"
    );
    let daves = drain(&mut dave_ws).await;
    assert!(
        daves
            .iter()
            .all(|f| f["type"] != "post" && f["type"] != "channel_message"),
        "an outsider gets nothing of the server: {daves:?}"
    );
    // An invitation reaches the invitee.
    h.post(
        &format!("/v1/servers/{elsewhere}/invitations"),
        &dave,
        json!({"user_id": carol.id}),
    )
    .await;
    let invitation = next_of(&mut carol_ws, "invitation").await;
    assert_eq!(invitation["invitation"]["server_name"], "Elsewhere");
    assert_eq!(invitation["invitation"]["inviter_id"], dave.id.to_string());
    h.shutdown().await;
}
