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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use missive_events::Presence;
use missive_service::Actor;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;

/// Close code for a session whose client stopped sending heartbeats.
pub const CLOSE_HEARTBEAT_TIMEOUT: u16 = 4000;
/// Close code when the server cannot record the user's presence (retry shortly).
pub const CLOSE_UNAVAILABLE: u16 = 1011;
/// Close code when the user already holds as many sessions as they may.
pub const CLOSE_TOO_MANY_SESSIONS: u16 = 4008;
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
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_connections: 100_000,
            max_sessions_per_user: 10,
            heartbeat_timeout: Duration::from_secs(60),
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
    {
        let mut count = entry.lock().await;
        if *count >= state.config.ws.max_sessions_per_user {
            // Another session of the user started since the upgrade was accepted.
            drop(count);
            let _ = socket
                .send(close(
                    CLOSE_TOO_MANY_SESSIONS,
                    "too many sessions for this user",
                ))
                .await;
            return;
        }
        if *count == 0
            && let Err(error) = state.service.set_presence(actor, Presence::Online).await
        {
            tracing::warn!(%user, %error, "could not record a session's presence; closing it");
            drop(count);
            let _ = socket
                .send(close(
                    CLOSE_UNAVAILABLE,
                    "presence could not be recorded; retry shortly",
                ))
                .await;
            return;
        }
        *count += 1;
    }
    let ended = converse(&mut socket, state.config.ws.heartbeat_timeout).await;
    if let Some(frame) = ended {
        let _ = socket.send(frame).await;
    }
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

fn close(code: u16, reason: &'static str) -> WsMessage {
    WsMessage::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

fn frame(value: serde_json::Value) -> WsMessage {
    WsMessage::Text(value.to_string().into())
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientFrame {
    Ping,
}

/// Serves the client's frames until the session ends; returns the close frame to send, if the
/// server ends it.
async fn converse(socket: &mut WebSocket, heartbeat_timeout: Duration) -> Option<WsMessage> {
    loop {
        let received = match tokio::time::timeout(heartbeat_timeout, socket.recv()).await {
            Err(_) => return Some(close(CLOSE_HEARTBEAT_TIMEOUT, "no heartbeat")),
            Ok(None | Some(Err(_)) | Some(Ok(WsMessage::Close(_)))) => return None,
            Ok(Some(Ok(message))) => message,
        };
        let reply = match received {
            WsMessage::Text(text) => match serde_json::from_str::<ClientFrame>(text.as_str()) {
                Ok(ClientFrame::Ping) => Some(frame(json!({ "type": "pong" }))),
                Err(e) => Some(frame(json!({
                    "type": "error",
                    "code": "bad_frame",
                    "message": format!("unreadable frame: {e}; send a JSON object such as {{\"type\":\"ping\"}}"),
                }))),
            },
            WsMessage::Binary(_) => Some(frame(json!({
                "type": "error",
                "code": "bad_frame",
                "message": "binary frames are not supported; send JSON text frames",
            }))),
            // WebSocket pings are answered by the protocol layer; both count as heartbeats.
            _ => None,
        };
        if let Some(reply) = reply
            && socket.send(reply).await.is_err()
        {
            return None;
        }
    }
}
