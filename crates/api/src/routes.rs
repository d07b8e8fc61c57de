//! Handlers and the JSON shapes of requests and answers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use chrono::{DateTime, SecondsFormat, Utc};
use missive_domain::FriendshipState;
use missive_domain::friends::FriendCommand;
use missive_events::{AccountStatus, DeleteScope, Presence};
use missive_log::Position;
use missive_service::{Actor, Service, ServiceError};
use missive_store::{
    Conversation, FriendEntry, HistoryQuery, Message, MessageStatus, Page, Relation, User,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};

/// Default page size of list endpoints.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest page size a client may ask for.
pub const MAX_LIMIT: usize = 200;

pub(crate) type ApiResult<T = Response> = Result<T, ApiError>;

/// Every route: the OpenAPI document lists exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/admin/analytics"),
    ("POST", "/v1/admin/users/{user_id}/block"),
    ("POST", "/v1/admin/users/{user_id}/unblock"),
    ("DELETE", "/v1/admin/users/{user_id}"),
    ("POST", "/v1/users"),
    ("GET", "/v1/users/{id}"),
    ("GET", "/v1/users/me"),
    ("PATCH", "/v1/users/me"),
    ("GET", "/v1/friends"),
    ("POST", "/v1/friends/{user_id}"),
    ("DELETE", "/v1/friends/{user_id}"),
    ("POST", "/v1/friends/{user_id}/accept"),
    ("POST", "/v1/conversations/direct/{peer_id}/messages"),
    ("GET", "/v1/conversations"),
    ("GET", "/v1/conversations/{conversation_id}/messages"),
    ("POST", "/v1/conversations/{conversation_id}/read"),
    ("GET", "/v1/messages"),
    ("DELETE", "/v1/messages/{message_id}"),
    ("POST", "/v1/presence"),
    ("GET", "/v1/ws"),
    ("POST", "/v1/servers"),
    ("GET", "/v1/servers"),
    ("GET", "/v1/servers/{server_id}"),
    ("POST", "/v1/servers/{server_id}/subscription"),
    ("DELETE", "/v1/servers/{server_id}/subscription"),
    ("GET", "/v1/users/{id}/servers"),
    ("POST", "/v1/servers/{server_id}/invitations"),
    ("GET", "/v1/invitations"),
    ("GET", "/v1/invitations/{invitation_id}"),
    ("POST", "/v1/invitations/{invitation_id}/accept"),
    ("POST", "/v1/invitations/{invitation_id}/decline"),
    ("POST", "/v1/servers/{server_id}/posts"),
    ("GET", "/v1/servers/{server_id}/posts"),
    ("POST", "/v1/servers/{server_id}/channels"),
    ("GET", "/v1/servers/{server_id}/channels"),
    ("DELETE", "/v1/servers/{server_id}/channels/{channel_id}"),
    ("POST", "/v1/servers/{server_id}/channels/{channel_id}/join"),
    (
        "POST",
        "/v1/servers/{server_id}/channels/{channel_id}/leave",
    ),
    (
        "GET",
        "/v1/servers/{server_id}/channels/{channel_id}/members",
    ),
    (
        "POST",
        "/v1/servers/{server_id}/channels/{channel_id}/messages",
    ),
    (
        "GET",
        "/v1/servers/{server_id}/channels/{channel_id}/messages",
    ),
    ("POST", "/v1/servers/{server_id}/channels/{channel_id}/read"),
    ("GET", "/v1/users/me/channel"),
];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/admin/analytics", get(crate::admin::analytics))
        .route(
            "/v1/admin/users/{user_id}/block",
            post(crate::admin::block_user),
        )
        .route(
            "/v1/admin/users/{user_id}/unblock",
            post(crate::admin::unblock_user),
        )
        .route(
            "/v1/admin/users/{user_id}",
            delete(crate::admin::delete_user),
        )
        .route("/v1/users", post(register))
        .route("/v1/users/me", get(get_me).patch(update_me))
        .route("/v1/users/{id}", get(get_user))
        .route("/v1/friends", get(list_friends))
        .route(
            "/v1/friends/{user_id}",
            post(request_friend).delete(remove_friend),
        )
        .route("/v1/friends/{user_id}/accept", post(accept_friend))
        .route(
            "/v1/conversations/direct/{peer_id}/messages",
            post(send_message),
        )
        .route("/v1/conversations", get(list_conversations))
        .route("/v1/conversations/{conversation_id}/messages", get(history))
        .route("/v1/conversations/{conversation_id}/read", post(mark_read))
        .route("/v1/messages", get(messages_since))
        .route("/v1/messages/{message_id}", delete(delete_message))
        .route("/v1/presence", post(presence))
        .route("/v1/ws", get(crate::ws::upgrade))
        .merge(crate::communities::routes())
}

// ----- authentication -----

/// The authenticated caller, from `Authorization: Bearer <token>`.
#[derive(Debug, Clone, Copy)]
pub struct Auth(pub Actor);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        actor_from_headers(state, &parts.headers).map(Auth)
    }
}

/// The caller named by the `Authorization: Bearer <token>` header.
pub(crate) fn actor_from_headers(state: &AppState, headers: &HeaderMap) -> ApiResult<Actor> {
    actor_from_token(state, bearer(headers)?, headers)
}

/// The token of the `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> ApiResult<&str> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing `Authorization: Bearer <token>` header"))?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <token>`"))
}

/// A token's claims, checked.
fn claims(state: &AppState, token: &str) -> ApiResult<crate::auth::Claims> {
    state
        .config
        .secret
        .verify(token.trim(), Utc::now().timestamp())
        .map_err(|e| ApiError::unauthorized(e.to_string()))
}

/// The caller a bearer token names.
pub(crate) fn actor_from_token(
    state: &AppState,
    token: &str,
    headers: &HeaderMap,
) -> ApiResult<Actor> {
    let claims = claims(state, token)?;
    Ok(Actor {
        user_id: claims.sub,
        correlation_id: correlation_id(headers),
    })
}

/// The caller of an admin route: a valid token with the admin claim (`missive token
/// --admin`); a user's token is refused with 403 `admin_only`.
pub(crate) fn admin_from_headers(state: &AppState, headers: &HeaderMap) -> ApiResult<Actor> {
    let claims = claims(state, bearer(headers)?)?;
    if !claims.adm {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_only",
            "this route needs an operator's token (`missive token --admin`)",
        ));
    }
    Ok(Actor {
        user_id: claims.sub,
        correlation_id: correlation_id(headers),
    })
}

/// The request's `X-Request-Id` if it is a UUID, otherwise a new one.
fn correlation_id(headers: &HeaderMap) -> Uuid {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v).ok())
        .unwrap_or_else(Uuid::now_v7)
}

// ----- shapes -----

pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub(crate) fn user_json(u: &User) -> Value {
    let status = match u.account {
        AccountStatus::Deleted => "deleted",
        AccountStatus::Blocked => "blocked",
        AccountStatus::Active if u.online => "online",
        AccountStatus::Active => "offline",
    };
    json!({
        "id": u.id,
        "username": u.username,
        "display_name": u.display_name,
        "status": status,
        "last_seen": u.last_seen.map(ts),
        "registered_at": ts(u.registered_at),
    })
}

fn status_name(s: MessageStatus) -> &'static str {
    match s {
        MessageStatus::Pending => "pending",
        MessageStatus::Delivered => "delivered",
        MessageStatus::Read => "read",
    }
}

/// A message as `viewer` sees it: the idempotency key only to its sender.
pub(crate) fn message_json(m: &Message, viewer: Uuid) -> Value {
    json!({
        "message_id": m.message_id,
        "conversation_id": m.conversation_id,
        "seq": m.seq,
        "sender_id": m.sender_id,
        "recipient_id": m.recipient_id,
        "text": m.text,
        "sent_at": ts(m.sent_at),
        "status": status_name(m.status),
        "deleted": if m.deleted_for_everyone { Some("for_everyone") } else { None },
        "client_msg_id": if m.sender_id == viewer { m.client_msg_id.as_deref() } else { None },
    })
}

fn conversation_json(c: &Conversation, viewer: Uuid) -> Value {
    json!({
        "conversation_id": c.conversation_id,
        "peer": user_json(&c.peer),
        "last_message": c.last_message.as_ref().map(|m| message_json(m, viewer)),
        "unread_count": c.unread_count,
        "last_activity_at": ts(c.last_activity_at),
    })
}

fn friend_json(f: &FriendEntry) -> Value {
    json!({
        "user": user_json(&f.user),
        "relation": match f.relation {
            Relation::Friend => "friend",
            Relation::IncomingRequest => "incoming_request",
            Relation::OutgoingRequest => "outgoing_request",
        },
        "since": ts(f.since),
    })
}

pub(crate) fn page_json<T>(page: &Page<T>, item: impl Fn(&T) -> Value) -> Value {
    json!({ "items": page.items.iter().map(item).collect::<Vec<_>>(), "next": page.next })
}

pub(crate) fn relation_name(state: FriendshipState, me: Uuid) -> &'static str {
    match state {
        FriendshipState::None => "none",
        FriendshipState::Friends => "friend",
        FriendshipState::Pending { requester } if requester == me => "outgoing_request",
        FriendshipState::Pending { .. } => "incoming_request",
    }
}

pub(crate) fn position_json(p: Option<Position>) -> Value {
    p.map(|p| Value::String(p.to_string()))
        .unwrap_or(Value::Null)
}

pub(crate) fn parse_limit(limit: Option<usize>) -> ApiResult<usize> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(l) if (1..=MAX_LIMIT).contains(&l) => Ok(l),
        Some(l) => Err(ApiError::bad_request(format!(
            "limit is {l}; it must be between 1 and {MAX_LIMIT}"
        ))),
    }
}

/// Honours `min_position`: waits (bounded) until the read models include every listed
/// position (comma-separated; positions of different partitions are independent, so a client
/// that wrote to several conversations passes the last position of each).
pub(crate) async fn read_after(state: &AppState, min_position: Option<&str>) -> ApiResult<()> {
    let Some(raw) = min_position else {
        return Ok(());
    };
    let mut positions = Vec::new();
    for part in raw.split(',') {
        let position: Position = part.trim().parse().map_err(|rule: &str| {
            ApiError::bad_request(format!("min_position {part:?}: {rule}"))
        })?;
        positions.push(position);
    }
    if let Some(position) = state.service.beyond_log_end(&positions).await? {
        return Err(ApiError::bad_request(format!(
            "min_position {position} is beyond the end of the event log; pass a position a command returned"
        )));
    }
    let wait = state.config.max_read_wait;
    let deadline = tokio::time::Instant::now() + wait;
    for position in positions {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !state.service.wait_for(position, left).await {
            return Err(ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_caught_up",
                    format!(
                        "the read models did not reach position {position} within {} ms; retry shortly",
                        wait.as_millis()
                    ),
                )
            });
        }
    }
    Ok(())
}

/// Runs a command on its own task: once accepted, it completes even if the client hangs up,
/// so an append is never abandoned halfway (which matters for `client_msg_id` claims), and
/// shutdown waits for it ([`crate::InFlight`]).
pub(crate) async fn detached<T, F>(
    state: &AppState,
    command: impl FnOnce(Arc<Service>) -> F,
) -> ApiResult<T>
where
    T: Send + 'static,
    F: Future<Output = Result<T, ServiceError>> + Send + 'static,
{
    let counted = state.commands.start();
    let command = command(state.service.clone());
    let task = async move {
        let _counted = counted;
        command.await
    };
    // In the request's span, so that what the command logs names the request.
    match tokio::spawn(tracing::Instrument::in_current_span(task)).await {
        Ok(outcome) => outcome.map_err(ApiError::from),
        Err(join) => Err(ApiError::internal(&join)),
    }
}

// ----- operations -----

async fn readyz(State(state): State<AppState>) -> Response {
    if state.service.ready().await {
        axum::Json(json!({ "status": "ready" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "catching_up" })),
        )
            .into_response()
    }
}

pub(crate) async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        missive_telemetry::metrics().render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::OPENAPI).into_response()
}

// ----- users -----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterBody {
    pub(crate) username: String,
    pub(crate) display_name: Option<String>,
}

async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RegisterBody>,
) -> ApiResult {
    let correlation = correlation_id(&headers);
    let registered = detached(&state, move |s| async move {
        s.register(correlation, &body.username, body.display_name.as_deref())
            .await
    })
    .await?;
    let token = state.config.secret.issue(
        registered.user_id,
        Utc::now().timestamp(),
        state.config.token_ttl.as_secs() as i64,
    );
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "id": registered.user_id,
            "username": registered.username,
            "display_name": registered.display_name,
            "token": token,
            "position": registered.position.to_string(),
        })),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub(crate) struct ReadParams {
    pub(crate) min_position: Option<String>,
}

async fn get_user(
    State(state): State<AppState>,
    _auth: Auth,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> ApiResult {
    profile(&state, id, params).await
}

async fn get_me(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> ApiResult {
    profile(&state, actor.user_id, params).await
}

/// A user's profile, after waiting for `min_position` if asked.
async fn profile(state: &AppState, id: Uuid, params: ReadParams) -> ApiResult {
    read_after(state, params.min_position.as_deref()).await?;
    let user = state.service.user(id).await?;
    Ok(axum::Json(user_json(&user)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProfileBody {
    pub(crate) display_name: String,
}

async fn update_me(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiJson(body): ApiJson<ProfileBody>,
) -> ApiResult {
    let (user, position) = detached(&state, move |s| async move {
        s.update_profile(actor, &body.display_name).await
    })
    .await?;
    let mut value = user_json(&user);
    value["position"] = position_json(position);
    Ok(axum::Json(value).into_response())
}

// ----- friends -----

async fn friend_command(
    state: AppState,
    actor: Actor,
    other: Uuid,
    command: FriendCommand,
) -> ApiResult {
    let (after, position) = detached(&state, move |s| async move {
        s.friend(actor, other, command).await
    })
    .await?;
    Ok(axum::Json(json!({
        "user_id": other,
        "relation": relation_name(after, actor.user_id),
        "position": position_json(position),
    }))
    .into_response())
}

async fn request_friend(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath(other): ApiPath<Uuid>,
) -> ApiResult {
    friend_command(state, actor, other, FriendCommand::Request).await
}

async fn accept_friend(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath(other): ApiPath<Uuid>,
) -> ApiResult {
    friend_command(state, actor, other, FriendCommand::Accept).await
}

async fn remove_friend(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath(other): ApiPath<Uuid>,
) -> ApiResult {
    friend_command(state, actor, other, FriendCommand::Remove).await
}

async fn list_friends(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> ApiResult {
    read_after(&state, params.min_position.as_deref()).await?;
    let friends = state.service.friends(actor).await?;
    Ok(axum::Json(json!({
        "items": friends.iter().map(friend_json).collect::<Vec<_>>(),
        "next": null,
    }))
    .into_response())
}

// ----- messages -----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendBody {
    pub(crate) text: String,
    pub(crate) client_msg_id: Option<String>,
}

#[derive(Debug, Serialize)]
struct SendAnswer {
    message_id: Uuid,
    conversation_id: Uuid,
    sent_at: String,
    status: &'static str,
    position: String,
}

async fn send_message(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath(peer): ApiPath<Uuid>,
    ApiJson(body): ApiJson<SendBody>,
) -> ApiResult {
    let receipt = detached(&state, move |s| async move {
        s.send(actor, peer, &body.text, body.client_msg_id.as_deref())
            .await
    })
    .await?;
    let status = if receipt.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        axum::Json(SendAnswer {
            message_id: receipt.message_id,
            conversation_id: receipt.conversation_id,
            sent_at: ts(receipt.sent_at),
            status: "pending",
            position: receipt.position.to_string(),
        }),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListParams {
    pub(crate) cursor: Option<String>,
    pub(crate) limit: Option<usize>,
    pub(crate) min_position: Option<String>,
}

async fn list_conversations(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiQuery(params): ApiQuery<ListParams>,
) -> ApiResult {
    let limit = parse_limit(params.limit)?;
    read_after(&state, params.min_position.as_deref()).await?;
    let page = state
        .service
        .conversations(actor, params.cursor.as_deref(), limit)
        .await?;
    Ok(axum::Json(page_json(&page, |c| conversation_json(c, actor.user_id))).into_response())
}

#[derive(Debug, Deserialize)]
pub(crate) struct HistoryParams {
    pub(crate) before: Option<Uuid>,
    pub(crate) after: Option<Uuid>,
    pub(crate) since: Option<DateTime<Utc>>,
    pub(crate) limit: Option<usize>,
    pub(crate) min_position: Option<String>,
}

async fn history(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath(conversation): ApiPath<Uuid>,
    ApiQuery(params): ApiQuery<HistoryParams>,
) -> ApiResult {
    let limit = parse_limit(params.limit)?;
    read_after(&state, params.min_position.as_deref()).await?;
    let query = HistoryQuery {
        before: params.before,
        after: params.after,
        since: params.since,
        limit,
    };
    let page = state.service.history(actor, conversation, query).await?;
    Ok(axum::Json(page_json(&page, |m| message_json(m, actor.user_id))).into_response())
}

#[derive(Debug, Deserialize)]
struct SinceParams {
    since: Option<DateTime<Utc>>,
    cursor: Option<String>,
    limit: Option<usize>,
    min_position: Option<String>,
}

async fn messages_since(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiQuery(params): ApiQuery<SinceParams>,
) -> ApiResult {
    // A cursor carries its own position; `since` starts a new catch-up.
    let since = match (params.since, &params.cursor) {
        (Some(since), _) => since,
        (None, Some(_)) => DateTime::<Utc>::MIN_UTC,
        (None, None) => {
            return Err(ApiError::bad_request(
                "since is required (an RFC 3339 timestamp, e.g. 2026-01-01T00:00:00Z) unless a cursor is given",
            ));
        }
    };
    let limit = parse_limit(params.limit)?;
    read_after(&state, params.min_position.as_deref()).await?;
    let page = state
        .service
        .messages_since(actor, since, params.cursor.as_deref(), limit)
        .await?;
    Ok(axum::Json(json!({
        "items": page.items.iter().map(|m| message_json(m, actor.user_id)).collect::<Vec<_>>(),
        "next": page.next,
        "resume": page.resume,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadBody {
    pub(crate) up_to: Uuid,
}

async fn mark_read(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath(conversation): ApiPath<Uuid>,
    ApiJson(body): ApiJson<ReadBody>,
) -> ApiResult {
    let up_to = body.up_to;
    let position = detached(&state, move |s| async move {
        s.mark_read(actor, conversation, up_to).await
    })
    .await?;
    Ok(axum::Json(json!({
        "conversation_id": conversation,
        "up_to": body.up_to,
        "position": position.to_string(),
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ScopeParam {
    Me,
    Everyone,
}

#[derive(Debug, Deserialize)]
struct DeleteParams {
    scope: Option<ScopeParam>,
}

async fn delete_message(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath(message_id): ApiPath<Uuid>,
    ApiQuery(params): ApiQuery<DeleteParams>,
) -> ApiResult {
    let scope = match params.scope {
        Some(ScopeParam::Everyone) => DeleteScope::ForEveryone,
        Some(ScopeParam::Me) => DeleteScope::ForMe,
        None => {
            return Err(ApiError::bad_request(
                "scope is required: scope=me hides the message for you, scope=everyone deletes it for both sides",
            ));
        }
    };
    let position = detached(&state, move |s| async move {
        s.delete(actor, message_id, scope).await
    })
    .await?;
    Ok(axum::Json(json!({
        "message_id": message_id,
        "scope": if scope == DeleteScope::ForEveryone { "everyone" } else { "me" },
        "position": position_json(position),
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PresenceParam {
    Online,
    Offline,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PresenceBody {
    pub(crate) status: PresenceParam,
}

async fn presence(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiJson(body): ApiJson<PresenceBody>,
) -> ApiResult {
    let (status, name) = match body.status {
        PresenceParam::Online => (Presence::Online, "online"),
        PresenceParam::Offline => (Presence::Offline, "offline"),
    };
    let (at, position) = detached(&state, move |s| async move {
        s.set_presence(actor, status).await
    })
    .await?;
    Ok(axum::Json(json!({
        "status": name,
        "last_seen": ts(at),
        "position": position.to_string(),
    }))
    .into_response())
}

/// How long `min_position` waits when the server is not configured otherwise.
pub const DEFAULT_READ_WAIT: Duration = Duration::from_secs(2);
