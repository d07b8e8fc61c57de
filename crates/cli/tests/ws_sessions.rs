//! End-to-end: WebSocket sessions (`GET /v1/ws`) with a real client (tokio-tungstenite):
//! authentication, heartbeats, presence following the sessions, limits.

mod common;

use std::time::Duration;

use common::{Client, Harness};
use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

both_logs!(
    sessions_authenticate_answer_pings_and_drive_presence,
    a_silent_session_times_out_and_limits_hold,
    the_process_limit_refuses_with_503_and_frees_on_close,
);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn ws_url(h: &Harness) -> String {
    format!("{}/v1/ws", h.base.replacen("http://", "ws://", 1))
}

/// An upgrade request with the token in the Authorization header.
fn upgrade_request(
    h: &Harness,
    who: &Client,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = ws_url(h).into_client_request().expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", who.token).parse().expect("header"),
    );
    request
}

/// Opens a session with the token in the Authorization header.
async fn open(h: &Harness, who: &Client) -> Socket {
    let (socket, response) = tokio_tungstenite::connect_async(upgrade_request(h, who))
        .await
        .expect("the session opens");
    assert_eq!(response.status(), 101);
    socket
}

/// The next text frame, as JSON.
async fn next_json(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame within 10 s")
            .expect("the session is open")
            .expect("a frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).expect("JSON frame");
        }
    }
}

/// Waits until `user` shows `status` to `viewer` (presence is projected asynchronously).
async fn wait_for_status(h: &Harness, viewer: &Client, user: &Client, status: &str) -> Value {
    for _ in 0..200 {
        let answer = h.get(&format!("/v1/users/{}", user.id), viewer).await;
        if answer.body["status"] == status {
            return answer.body;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} never became {status}", user.id);
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
    assert_eq!(next_json(&mut phone).await, json!({"type": "pong"}));
    phone
        .send(Message::Text("not json".into()))
        .await
        .expect("send");
    let error = next_json(&mut phone).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "bad_frame");
    // The session survives a bad frame.
    phone
        .send(Message::Text(r#"{"type":"ping"}"#.into()))
        .await
        .expect("ping");
    assert_eq!(next_json(&mut phone).await["type"], "pong");

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
    assert_eq!(next_json(&mut silent).await["type"], "pong");
    // A second session of the same user is refused while the first is open.
    let request = upgrade_request(&h, &alice);
    match tokio_tungstenite::connect_async(request).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 429),
        other => panic!("expected 429, got {other:?}"),
    }

    // No heartbeat: the server closes with 4000 and alice goes offline.
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), silent.next())
            .await
            .expect("the server closes the session")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(
        closed.expect("a close frame with a code").code,
        CloseCode::Library(4000)
    );
    wait_for_status(&h, &bob, &alice, "offline").await;
    // Once closed, a new session is allowed again.
    let mut again = open(&h, &alice).await;
    again
        .send(Message::Text(r#"{"type":"ping"}"#.into()))
        .await
        .expect("ping");
    assert_eq!(next_json(&mut again).await["type"], "pong");
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
            assert_eq!(next_json(&mut socket).await["type"], "pong");
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the closed session's place was never given back");
}
