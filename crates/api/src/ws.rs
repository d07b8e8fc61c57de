//! `GET /v1/ws`: real-time sessions over WebSocket (issue 5, first part: sessions, heartbeats
//! and presence; message push comes next).
//!
//! A session is opened with the bearer token in the `Authorization` header, or in the
//! `access_token` query parameter for browsers (which cannot set headers on a WebSocket).
//! Frames are JSON objects with a `type`:
//! - client -> server: `{"type":"ping"}`; the server answers `{"type":"pong"}`. Any frame (and
//!   WebSocket pings) counts as a heartbeat.
//! - server -> client: `{"type":"pong"}`, and `{"type":"error","code":..,"message":..}` for a
//!   frame the server cannot read (the session stays open).
//!
//! Presence follows the sessions: a user's first session makes them `online`, closing their last
//! one (or its heartbeat timing out) makes them `offline`, each as a `PresenceChanged` event.
//! Opening and closing are serialized per user, so the events are in the order the sessions
//! opened and closed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use missive_events::Presence;
use missive_service::{Actor, ServiceError};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;
use crate::gateway::Subscription;
use crate::routes::message_json;

/// Close code for a session whose client stopped sending heartbeats.
pub const CLOSE_HEARTBEAT_TIMEOUT: u16 = 4000;
/// Close code when the server cannot record the user's presence (retry shortly).
pub const CLOSE_UNAVAILABLE: u16 = 1011;
/// Close code when the user already holds as many sessions as they may.
pub const CLOSE_TOO_MANY_SESSIONS: u16 = 4008;
/// Close code for a session whose client read too slowly: its queue of frames overflowed.
pub const CLOSE_TOO_SLOW: u16 = 4001;
/// How long the server tries to send a close frame.
const CLOSE_SEND_WAIT: Duration = Duration::from_secs(1);
/// Pending messages read at once while a session starts.
const PENDING_PAGE: usize = 200;
/// The largest frame a client may send.
const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Limits and timeouts of WebSocket sessions.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// Sessions this process holds at most; more are refused with 503.
    pub max_connections: usize,
    /// Sessions one user may hold at once (devices); more are refused with 429.
    pub max_sessions_per_user: usize,
    /// A session with no frame from the client for this long is closed.
    pub heartbeat_timeout: Duration,
    /// Frames waiting for one session at most; a client that falls further behind is
    /// disconnected with [`CLOSE_TOO_SLOW`].
    pub session_buffer: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_connections: 100_000,
            max_sessions_per_user: 10,
            heartbeat_timeout: Duration::from_secs(60),
            session_buffer: 1024,
        }
    }
}

/// The sessions this process holds.
#[derive(Debug, Default)]
pub struct Sessions {
    total: AtomicUsize,
    /// Per user: how many sessions are open. A session holds its user's entry while open; the
    /// inner lock serializes the user's presence changes.
    users: parking_lot::Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<usize>>>>,
}

impl Sessions {
    /// Sessions open in this process.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    fn entry(&self, user: Uuid) -> Arc<tokio::sync::Mutex<usize>> {
        self.users.lock().entry(user).or_default().clone()
    }

    /// Forgets a user's entry once no session holds it.
    fn release(&self, user: Uuid, entry: Arc<tokio::sync::Mutex<usize>>) {
        drop(entry);
        let mut users = self.users.lock();
        let unused = users.get(&user).is_some_and(|e| {
            Arc::strong_count(e) == 1 && e.try_lock().is_ok_and(|count| *count == 0)
        });
        if unused {
            users.remove(&user);
        }
    }
}

/// One session's place in [`Sessions`], from the accepted upgrade on: dropping it (the session
/// ended, or the upgrade never completed) gives the place back.
struct Slot {
    sessions: Arc<Sessions>,
    user: Uuid,
    entry: Option<Arc<tokio::sync::Mutex<usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.sessions.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(entry) = self.entry.take() {
            self.sessions.release(self.user, entry);
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct WsParams {
    access_token: Option<String>,
}

/// `GET /v1/ws`: authenticates, checks the limits, and upgrades.
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<WsParams>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let actor = match params.access_token {
        Some(token) => crate::routes::actor_from_token(&state, &token, &headers)?,
        None => crate::routes::actor_from_headers(&state, &headers)?,
    };
    let upgrade = upgrade.map_err(|e| {
        ApiError::bad_request(format!(
            "GET /v1/ws opens a WebSocket session: send a WebSocket upgrade request ({})",
            e.body_text()
        ))
    })?;
    let ws = state.config.ws.clone();
    let sessions = state.sessions.clone();
    if sessions.total.fetch_add(1, Ordering::AcqRel) >= ws.max_connections {
        sessions.total.fetch_sub(1, Ordering::AcqRel);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "this server holds as many WebSocket sessions as it may; retry on another one or later",
        ));
    }
    let entry = sessions.entry(actor.user_id);
    let slot = Slot {
        entry: Some(entry.clone()),
        user: actor.user_id,
        sessions,
    };
    // The count is checked again when the session starts; this early check answers with a
    // proper HTTP status in the common case.
    if *entry.lock().await >= ws.max_sessions_per_user {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_sessions",
            format!(
                "a user may hold at most {} WebSocket sessions at once; close one first",
                ws.max_sessions_per_user
            ),
        ));
    }
    Ok(upgrade
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| async move {
            session(state, actor, &entry, socket).await;
            drop(entry);
            drop(slot);
        })
        .into_response())
}

/// One session, from the upgrade to its end.
async fn session(
    state: AppState,
    actor: Actor,
    entry: &tokio::sync::Mutex<usize>,
    mut socket: WebSocket,
) {
    let user = actor.user_id;
    let closed = &missive_telemetry::metrics().ws_closed;
    {
        let mut count = entry.lock().await;
        if *count >= state.config.ws.max_sessions_per_user {
            // Another session of the user started since the upgrade was accepted.
            drop(count);
            closed.with_label_values(&["refused"]).inc();
            close_with(
                &mut socket,
                CLOSE_TOO_MANY_SESSIONS,
                "too many sessions for this user",
            )
            .await;
            return;
        }
        if *count == 0
            && let Err(error) = state.service.set_presence(actor, Presence::Online).await
        {
            tracing::warn!(%user, %error, "could not record a session's presence; closing it");
            drop(count);
            closed.with_label_values(&["unavailable"]).inc();
            close_with(
                &mut socket,
                CLOSE_UNAVAILABLE,
                "presence could not be recorded; retry shortly",
            )
            .await;
            return;
        }
        *count += 1;
    }
    let gauge = missive_telemetry::metrics()
        .ws_sessions
        .with_label_values::<&str>(&[]);
    gauge.inc();
    // Subscribe first, then read what is pending: see the gateway's module docs.
    let subscription = state.gateway.subscribe(user);
    let (reason, close) = match deliver_pending(&state, actor, &mut socket).await {
        Ok(sent) => {
            Live {
                state: &state,
                actor,
                socket: &mut socket,
                sent,
            }
            .run(subscription)
            .await
        }
        Err(ended) => {
            drop(subscription);
            ended
        }
    };
    closed.with_label_values(&[reason]).inc();
    if let Some((code, why)) = close {
        close_with(&mut socket, code, why).await;
    }
    gauge.dec();
    {
        let mut count = entry.lock().await;
        *count -= 1;
        if *count == 0
            && let Err(error) = state.service.set_presence(actor, Presence::Offline).await
        {
            tracing::error!(%user, %error, "could not record that a user went offline");
        }
    }
}

/// Why a session ended (the metric's label) and the close frame to send, if any.
type Ended = (&'static str, Option<(u16, &'static str)>);

/// Sends a close frame, giving up after a moment: a client that stopped reading must not
/// hold the session open.
async fn close_with(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = WsMessage::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    let _ = tokio::time::timeout(CLOSE_SEND_WAIT, socket.send(frame)).await;
}

fn frame(value: serde_json::Value) -> WsMessage {
    WsMessage::Text(value.to_string().into())
}

/// Sends every message pending for the user, oldest first, then `{"type":"synced"}`. Returns
/// the ids sent, so that the live phase can skip them if the gateway pushes them too.
async fn deliver_pending(
    state: &AppState,
    actor: Actor,
    socket: &mut WebSocket,
) -> Result<HashSet<Uuid>, Ended> {
    const UNAVAILABLE: Ended = (
        "unavailable",
        Some((
            CLOSE_UNAVAILABLE,
            "pending messages could not be read; retry shortly",
        )),
    );
    const GONE: Ended = ("send_failed", None);
    // The read models must hold every event before the subscription, and this user's own
    // acknowledgements from another session.
    if let Err(error) = state.service.caught_up().await {
        tracing::warn!(user = %actor.user_id, %error, "cannot deliver pending messages now");
        return Err(UNAVAILABLE);
    }
    let mut sent = HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = match state
            .service
            .pending(actor, cursor.as_deref(), PENDING_PAGE)
            .await
        {
            Ok(page) => page,
            Err(error) => {
                tracing::warn!(user = %actor.user_id, %error, "cannot read pending messages");
                return Err(UNAVAILABLE);
            }
        };
        for m in &page.items {
            let text = json!({ "type": "message", "message": message_json(m, actor.user_id) });
            if socket.send(frame(text)).await.is_err() {
                return Err(GONE);
            }
            sent.insert(m.message_id);
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let synced = json!({ "type": "synced", "pending": sent.len() });
    if socket.send(frame(synced)).await.is_err() {
        return Err(GONE);
    }
    Ok(sent)
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientFrame {
    Ping,
    Ack { message_ids: Vec<Uuid> },
}

/// The live phase of a session.
struct Live<'a> {
    state: &'a AppState,
    actor: Actor,
    socket: &'a mut WebSocket,
    /// Messages sent while delivering what was pending, not to be sent again.
    sent: HashSet<Uuid>,
}

impl Live<'_> {
    /// Serves pushes and the client's frames until the session ends.
    async fn run(mut self, mut subscription: Subscription) -> Ended {
        const TOO_SLOW: Ended = (
            "too_slow",
            Some((
                CLOSE_TOO_SLOW,
                "the client read too slowly and its queue overflowed; reconnect",
            )),
        );
        let heartbeat = self.state.config.ws.heartbeat_timeout;
        let kicked = subscription.kicked.clone();
        let mut deadline = tokio::time::Instant::now() + heartbeat;
        loop {
            tokio::select! {
                biased;
                _ = kicked.notified() => return TOO_SLOW,
                _ = tokio::time::sleep_until(deadline) => {
                    return ("heartbeat", Some((CLOSE_HEARTBEAT_TIMEOUT, "no heartbeat")));
                }
                push = subscription.frames.recv() => {
                    let Some(push) = push else { return TOO_SLOW };
                    if push.pending_message.is_some_and(|id| self.sent.remove(&id)) {
                        continue;
                    }
                    tokio::select! {
                        biased;
                        _ = kicked.notified() => return TOO_SLOW,
                        sent = self.socket.send(WsMessage::Text(push.text)) => {
                            if sent.is_err() {
                                return ("send_failed", None);
                            }
                        }
                    }
                }
                received = self.socket.recv() => {
                    let message = match received {
                        None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => {
                            return ("client", None);
                        }
                        Some(Ok(message)) => message,
                    };
                    // Any frame, and WebSocket pings (answered by the protocol layer), count as
                    // heartbeats.
                    deadline = tokio::time::Instant::now() + heartbeat;
                    for reply in self.answer(message).await {
                        if self.socket.send(frame(reply)).await.is_err() {
                            return ("send_failed", None);
                        }
                    }
                }
            }
        }
    }

    /// The replies to one client frame.
    async fn answer(&mut self, message: WsMessage) -> Vec<serde_json::Value> {
        let text = match message {
            WsMessage::Text(text) => text,
            WsMessage::Binary(_) => {
                return vec![error_frame(
                    "bad_frame",
                    "binary frames are not supported; send JSON text frames".into(),
                )];
            }
            _ => return Vec::new(),
        };
        match serde_json::from_str::<ClientFrame>(text.as_str()) {
            Ok(ClientFrame::Ping) => vec![json!({ "type": "pong" })],
            Ok(ClientFrame::Ack { message_ids }) => self.acknowledge(&message_ids).await,
            Err(e) => vec![error_frame(
                "bad_frame",
                format!(
                    "unreadable frame: {e}; send a JSON object such as {{\"type\":\"ping\"}} or \
                     {{\"type\":\"ack\",\"message_ids\":[...]}}"
                ),
            )],
        }
    }

    async fn acknowledge(&mut self, message_ids: &[Uuid]) -> Vec<serde_json::Value> {
        match self
            .state
            .service
            .acknowledge(self.actor, message_ids)
            .await
        {
            Ok(outcome) => {
                let mut replies =
                    vec![json!({ "type": "acked", "message_ids": outcome.delivered })];
                if !outcome.refused.is_empty() {
                    let refused: Vec<_> = outcome
                        .refused
                        .iter()
                        .map(|(id, why)| json!({ "message_id": id, "reason": why.to_string() }))
                        .collect();
                    let mut error = error_frame(
                        "ack_refused",
                        "some message ids were not acknowledged: only messages sent to you can be"
                            .into(),
                    );
                    error["refused"] = json!(refused);
                    replies.push(error);
                }
                replies
            }
            Err(ServiceError::Domain(e)) => vec![error_frame("bad_frame", e.to_string())],
            Err(error) => {
                tracing::warn!(user = %self.actor.user_id, %error, "an acknowledgement failed");
                vec![error_frame(
                    "unavailable",
                    "the acknowledgement could not be recorded; send it again shortly".into(),
                )]
            }
        }
    }
}

fn error_frame(code: &str, message: String) -> serde_json::Value {
    json!({ "type": "error", "code": code, "message": message })
}
