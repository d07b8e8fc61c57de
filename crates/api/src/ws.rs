//! `GET /v1/ws`: real-time sessions over WebSocket.
//!
//! A session is opened with the bearer token in the `Authorization` header, or in the
//! `access_token` query parameter for browsers (which cannot set headers on a WebSocket).
//! Frames are JSON objects with a `type`; the README has the full reference. A session first
//! sends every message pending for the user (then `{"type":"synced"}`), then what the
//! [gateway](crate::gateway) pushes: new messages, status changes of the user's messages,
//! read markers, presence of friends and friendship changes. The client acknowledges delivered
//! messages (`{"type":"ack","message_ids":[..]}`) and sends heartbeats (`{"type":"ping"}`;
//! any frame, and WebSocket pings, count as one).
//!
//! A session never waits on its client for long: every send has a timeout and a session that
//! misses heartbeats is closed. Frames the gateway pushes while the session is busy (reading
//! what is pending, waiting for its client to take a frame) are held for it rather than
//! overflowing its queue, up to a bound; an acknowledgement is recorded while pushes keep
//! going out. A reply (`pong`, `acked`) follows every frame pushed before its request was read.
//!
//! Presence follows this process's sessions: a user's first session here makes them `online`,
//! closing their last one (or its heartbeat timing out) makes them `offline`, each as a
//! `PresenceChanged` event. Opening and closing are serialized per user, so the events are in
//! the order the sessions opened and closed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use missive_events::Presence;
use missive_service::{Actor, Service, ServiceError};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;
use crate::gateway::{Kick, Push, Subscription};
use crate::routes::message_json;

/// Close code for a session whose client stopped sending heartbeats.
pub const CLOSE_HEARTBEAT_TIMEOUT: u16 = 4000;
/// Close code when the server cannot record the user's presence (retry shortly).
pub const CLOSE_UNAVAILABLE: u16 = 1011;
/// Close code when the user already holds as many sessions as they may.
pub const CLOSE_TOO_MANY_SESSIONS: u16 = 4008;
/// Close code for a session whose client read too slowly: its queue of frames overflowed, or
/// a frame could not be sent within the send timeout.
pub const CLOSE_TOO_SLOW: u16 = 4001;
/// Close code for a session the server could not push an event to (the read models were not
/// ready in time): the client reconnects and receives what it missed as pending.
pub const CLOSE_OUT_OF_SYNC: u16 = 4002;
/// Close code when an operator blocked or deleted the user's account: do not reconnect (a
/// new session is refused with 403 `account_blocked` or `account_deleted`).
pub const CLOSE_ACCOUNT_RESTRICTED: u16 = 4003;
/// Close code when the server shuts down (RFC 6455 "going away"): reconnect.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// How long the server tries to send a close frame.
const CLOSE_SEND_WAIT: Duration = Duration::from_secs(1);
/// Pending messages read at once while a session starts.
const PENDING_PAGE: usize = 200;
/// How long a new session waits for the gateway to load its user's servers and channel.
const READY_WAIT: Duration = Duration::from_secs(10);
/// The largest frame a client may send.
const MAX_FRAME_BYTES: usize = 64 * 1024;
/// The read and write buffers a session starts with.
const SOCKET_BUFFER_BYTES: usize = 4 * 1024;

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
    /// A frame the client does not take within this long closes the session.
    pub send_timeout: Duration,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_connections: 100_000,
            max_sessions_per_user: 10,
            heartbeat_timeout: Duration::from_secs(60),
            session_buffer: 1024,
            send_timeout: Duration::from_secs(10),
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
    // Refused at once on what this process knows; once the standings read at start are
    // current, checked again (`admit`) before the session opens.
    state.service.check_actor(actor.user_id)?;
    let upgrade = upgrade.map_err(|e| {
        ApiError::bad_request(format!(
            "GET /v1/ws opens a WebSocket session: send a WebSocket upgrade request ({})",
            e.body_text()
        ))
    })?;
    state.service.admit(actor.user_id).await?;
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
        // Small buffers: an idle session then costs a few KB (tungstenite reserves 128 KiB for
        // reading by default); they grow while a larger frame passes.
        .read_buffer_size(SOCKET_BUFFER_BYTES)
        .write_buffer_size(SOCKET_BUFFER_BYTES)
        .on_upgrade(move |socket| {
            // The session outlives the upgrade request: its own span names it for its whole
            // life (the request's id is the session's correlation id).
            let span = tracing::info_span!(
                "ws_session",
                user = %actor.user_id,
                session = %actor.correlation_id,
            );
            tracing::Instrument::instrument(
                async move {
                    session(state, actor, &entry, socket).await;
                    drop(entry);
                    drop(slot);
                },
                span,
            )
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
    let mut live = Live {
        state: &state,
        actor,
        socket: &mut socket,
        subscription,
        held: VecDeque::new(),
        sent: HashSet::new(),
    };
    let (reason, close) = match live.deliver_pending().await {
        Ok(()) => live.run().await,
        Err(ended) => ended,
    };
    drop(live);
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

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientFrame {
    Ping,
    Ack { message_ids: Vec<Uuid> },
}

/// What a client frame calls for.
pub(crate) enum Answer {
    /// These replies.
    Now(Vec<serde_json::Value>),
    /// An acknowledgement to record; its replies follow.
    Ack(Vec<Uuid>),
}

/// An acknowledgement being recorded: its replies.
type AckInFlight = Pin<Box<dyn Future<Output = Vec<serde_json::Value>> + Send>>;

const UNAVAILABLE: Ended = (
    "unavailable",
    Some((
        CLOSE_UNAVAILABLE,
        "pending messages could not be read; retry shortly",
    )),
);
const TOO_SLOW: Ended = (
    "too_slow",
    Some((
        CLOSE_TOO_SLOW,
        "the client read too slowly and its queue overflowed; reconnect",
    )),
);
const SEND_TIMEOUT: Ended = (
    "send_timeout",
    Some((CLOSE_TOO_SLOW, "the client did not take a frame in time")),
);
const GOING_AWAY: Ended = (
    "shutdown",
    Some((
        CLOSE_GOING_AWAY,
        "the server is shutting down; reconnect in a moment",
    )),
);
const RESTRICTED: Ended = (
    "account_restricted",
    Some((
        CLOSE_ACCOUNT_RESTRICTED,
        "your account was blocked or deleted by an operator",
    )),
);
const OUT_OF_SYNC: Ended = (
    "out_of_sync",
    Some((
        CLOSE_OUT_OF_SYNC,
        "an event could not be pushed in time; reconnect to receive it",
    )),
);

/// A session once it has started.
struct Live<'a> {
    state: &'a AppState,
    actor: Actor,
    socket: &'a mut WebSocket,
    subscription: Subscription,
    /// Frames taken off the subscription's queue while the session was busy (reading what
    /// was pending), to send before the queue's.
    held: VecDeque<Push>,
    /// Messages sent while delivering what was pending, not to be sent again.
    sent: HashSet<Uuid>,
}

impl Live<'_> {
    /// Frames held for the session at most (on top of its queue).
    fn hold_limit(&self) -> usize {
        4 * self.state.gateway.buffer()
    }

    /// Runs `work`, taking what the gateway pushes meanwhile off the queue into `held`, so
    /// that a session busy with its own work (a send its client is slow to take, reading what
    /// is pending) does not overflow its queue; a session that falls further behind than
    /// [`Self::hold_limit`] is too slow all the same.
    async fn holding<T>(
        subscription: &mut Subscription,
        held: &mut VecDeque<Push>,
        limit: usize,
        work: impl Future<Output = T>,
    ) -> Result<T, Ended> {
        tokio::pin!(work);
        // Once the gateway dropped the subscription (a kick), the queue is empty and closed:
        // `work` finishes, and the caller learns of the kick from `kicked`.
        let mut open = true;
        loop {
            tokio::select! {
                biased;
                out = &mut work => return Ok(out),
                push = subscription.frames.recv(), if open => match push {
                    Some(push) if held.len() < limit => held.push_back(push),
                    Some(_) => return Err(TOO_SLOW),
                    None => open = false,
                },
            }
        }
    }

    /// Sends one frame within the send timeout, holding pushes meanwhile.
    async fn send(&mut self, message: WsMessage) -> Result<(), Ended> {
        let limit = self.hold_limit();
        let send =
            tokio::time::timeout(self.state.config.ws.send_timeout, self.socket.send(message));
        match Self::holding(&mut self.subscription, &mut self.held, limit, send).await? {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(("send_failed", None)),
            Err(_) => Err(SEND_TIMEOUT),
        }
    }

    /// Sends a pushed frame, unless it is a message already sent as pending.
    async fn push(&mut self, push: Push) -> Result<(), Ended> {
        if push.pending_message.is_some_and(|id| self.sent.remove(&id)) {
            return Ok(());
        }
        self.send(WsMessage::Text(push.text)).await
    }

    /// Sends every frame held or queued now (not those pushed while it sends).
    async fn flush(&mut self) -> Result<(), Ended> {
        let mut count = self.held.len() + self.subscription.frames.len();
        while count > 0 {
            let push = match self.held.pop_front() {
                Some(push) => push,
                None => match self.subscription.frames.try_recv() {
                    Ok(push) => push,
                    Err(_) => return Ok(()),
                },
            };
            self.push(push).await?;
            count -= 1;
        }
        Ok(())
    }

    /// Sends every message pending for the user, oldest first, then `{"type":"synced"}`,
    /// noting the ids sent so that the live phase skips them if the gateway pushes them too.
    async fn deliver_pending(&mut self) -> Result<(), Ended> {
        let user = self.actor.user_id;
        let limit = self.hold_limit();
        let service = self.state.service.clone();
        // The read models must hold every event before the subscription, and this user's own
        // acknowledgements from another session.
        let caught_up = service.caught_up();
        if let Err(error) =
            Self::holding(&mut self.subscription, &mut self.held, limit, caught_up).await?
        {
            tracing::warn!(%user, %error, "cannot deliver pending messages now");
            return Err(UNAVAILABLE);
        }
        // Posts and channel messages are pushed once the gateway knows the user's servers
        // and channel; whatever came before is in the read models from here on.
        if let Some(ready) = self.subscription.ready.take() {
            let wait = tokio::time::timeout(READY_WAIT, ready);
            if Self::holding(&mut self.subscription, &mut self.held, limit, wait)
                .await?
                .is_err()
            {
                tracing::warn!(%user, "the gateway did not load the user's servers in time; posts and channel messages may be missed until it does");
            }
        }
        let mut cursor: Option<String> = None;
        loop {
            let page = service.pending(self.actor, cursor.as_deref(), PENDING_PAGE);
            let page =
                match Self::holding(&mut self.subscription, &mut self.held, limit, page).await? {
                    Ok(page) => page,
                    Err(error) => {
                        tracing::warn!(%user, %error, "cannot read pending messages");
                        return Err(UNAVAILABLE);
                    }
                };
            for m in &page.items {
                let text = json!({ "type": "message", "message": message_json(m, user) });
                self.send(frame(text)).await?;
                self.sent.insert(m.message_id);
                // Kicked meanwhile: the session ends; what was pending comes again next time.
                if let Ok(kick) = self.subscription.kicked.try_recv() {
                    return Err(kicked(Some(kick)));
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let synced = json!({ "type": "synced", "pending": self.sent.len() });
        self.send(frame(synced)).await
    }

    /// Serves pushes and the client's frames until the session ends.
    async fn run(&mut self) -> Ended {
        let heartbeat = self.state.config.ws.heartbeat_timeout;
        let mut deadline = tokio::time::Instant::now() + heartbeat;
        let mut ack: Option<AckInFlight> = None;
        loop {
            // The client's frames before pushes, so a busy stream of pushes cannot starve
            // them. While an acknowledgement is recorded the client's next frames (and its
            // heartbeat clock) wait; pushes do not.
            let step = tokio::select! {
                biased;
                kick = &mut self.subscription.kicked => match kick.ok() {
                    // What was queued before the event that could not be pushed still goes.
                    Some(Kick::OutOfSync) => self.flush().await.and(Err(OUT_OF_SYNC)),
                    kick => Err(kicked(kick)),
                },
                replies = async { ack.as_mut().expect("guarded").await }, if ack.is_some() => {
                    ack = None;
                    deadline = tokio::time::Instant::now() + heartbeat;
                    self.reply(replies).await
                }
                received = self.socket.recv(), if ack.is_none() => {
                    let message = match received {
                        None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => {
                            return ("client", None);
                        }
                        Some(Ok(message)) => message,
                    };
                    deadline = tokio::time::Instant::now() + heartbeat;
                    match answer(message) {
                        Answer::Now(replies) => self.reply(replies).await,
                        Answer::Ack(ids) => {
                            let service = self.state.service.clone();
                            ack = Some(Box::pin(acknowledge(service, self.actor, ids)));
                            Ok(())
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline), if ack.is_none() => {
                    Err(("heartbeat", Some((CLOSE_HEARTBEAT_TIMEOUT, "no heartbeat"))))
                }
                push = next_push(&mut self.held, &mut self.subscription.frames) => match push {
                    Some(push) => self.push(push).await,
                    None => Err(kicked(self.subscription.kicked.try_recv().ok())),
                },
            };
            if let Err(ended) = step {
                return ended;
            }
        }
    }

    /// Sends the replies to a client frame, after every frame pushed before it was read: a
    /// `pong` tells the client it has everything pushed until its `ping`.
    async fn reply(&mut self, replies: Vec<serde_json::Value>) -> Result<(), Ended> {
        if replies.is_empty() {
            return Ok(());
        }
        self.flush().await?;
        for reply in replies {
            self.send(frame(reply)).await?;
        }
        Ok(())
    }
}

/// The next frame to send: a held one first, then the queue's. `None` once the gateway
/// dropped the subscription.
async fn next_push(
    held: &mut VecDeque<Push>,
    frames: &mut tokio::sync::mpsc::Receiver<Push>,
) -> Option<Push> {
    match held.pop_front() {
        Some(push) => Some(push),
        None => frames.recv().await,
    }
}

/// How a session the gateway dropped ends.
fn kicked(kick: Option<Kick>) -> Ended {
    match kick {
        Some(Kick::TooSlow) => TOO_SLOW,
        Some(Kick::GoingAway) => GOING_AWAY,
        Some(Kick::Restricted) => RESTRICTED,
        Some(Kick::OutOfSync) | None => OUT_OF_SYNC,
    }
}

/// What one client frame calls for.
pub(crate) fn answer(message: WsMessage) -> Answer {
    let text = match message {
        WsMessage::Text(text) => text,
        WsMessage::Binary(_) => {
            return Answer::Now(vec![error_frame(
                "bad_frame",
                "binary frames are not supported; send JSON text frames".into(),
            )]);
        }
        _ => return Answer::Now(Vec::new()),
    };
    let frame = if crate::error::is_json_array(text.as_bytes()) {
        Err(serde::de::Error::custom(crate::error::NOT_AN_ARRAY))
    } else {
        serde_json::from_str::<ClientFrame>(text.as_str())
    };
    match frame {
        Ok(ClientFrame::Ping) => Answer::Now(vec![json!({ "type": "pong" })]),
        Ok(ClientFrame::Ack { message_ids }) => Answer::Ack(message_ids),
        Err(e) => Answer::Now(vec![error_frame(
            "bad_frame",
            format!(
                "unreadable frame: {e}; send a JSON object such as {{\"type\":\"ping\"}} or \
                     {{\"type\":\"ack\",\"message_ids\":[...]}}"
            ),
        )]),
    }
}

/// Records an acknowledgement; its replies.
async fn acknowledge(
    service: Arc<Service>,
    actor: Actor,
    message_ids: Vec<Uuid>,
) -> Vec<serde_json::Value> {
    {
        match service.acknowledge(actor, &message_ids).await {
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
                tracing::warn!(user = %actor.user_id, %error, "an acknowledgement failed");
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
