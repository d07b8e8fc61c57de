//! Servers (communities): handlers and JSON shapes of `/v1/servers`, `/v1/invitations` and
//! the channel routes.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use missive_events::Visibility;
use missive_service::SendReceipt;
use missive_store::{
    Channel, ChannelMessage, ChannelSummary, HistoryQuery, Invitation, InvitationState, Post,
    Server, ServerRole, UserServer,
};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiJson, ApiPath, ApiQuery};
use crate::routes::{
    ApiResult, Auth, HistoryParams, ListParams, ReadBody, ReadParams, detached, page_json,
    parse_limit, position_json, read_after, ts,
};

/// The routes of this module (listed in [`crate::routes::ROUTES`]).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/servers", post(create_server).get(search_servers))
        .route("/v1/servers/{server_id}", get(get_server))
        .route(
            "/v1/servers/{server_id}/subscription",
            post(subscribe).delete(unsubscribe),
        )
        .route("/v1/users/{id}/servers", get(user_servers))
        .route("/v1/users/me/channel", get(my_channel))
        .route("/v1/servers/{server_id}/invitations", post(invite))
        .route("/v1/invitations", get(pending_invitations))
        .route("/v1/invitations/{invitation_id}", get(get_invitation))
        .route("/v1/invitations/{invitation_id}/accept", post(accept))
        .route("/v1/invitations/{invitation_id}/decline", post(decline))
        .route(
            "/v1/servers/{server_id}/posts",
            post(publish_post).get(list_posts),
        )
        .route(
            "/v1/servers/{server_id}/channels",
            post(create_channel).get(list_channels),
        )
        .route(
            "/v1/servers/{server_id}/channels/{channel_id}",
            delete(delete_channel),
        )
        .route(
            "/v1/servers/{server_id}/channels/{channel_id}/join",
            post(join_channel),
        )
        .route(
            "/v1/servers/{server_id}/channels/{channel_id}/leave",
            post(leave_channel),
        )
        .route(
            "/v1/servers/{server_id}/channels/{channel_id}/members",
            get(channel_members),
        )
        .route(
            "/v1/servers/{server_id}/channels/{channel_id}/messages",
            post(send_channel_message).get(channel_history),
        )
        .route(
            "/v1/servers/{server_id}/channels/{channel_id}/read",
            post(mark_channel_read),
        )
}

// ----- shapes -----

fn visibility_name(v: Visibility) -> &'static str {
    match v {
        Visibility::Public => "public",
        Visibility::Private => "private",
    }
}

pub(crate) fn server_json(s: &Server) -> Value {
    json!({
        "server_id": s.server_id,
        "owner_id": s.owner_id,
        "name": s.name,
        "tags": s.tags,
        "visibility": visibility_name(s.visibility),
        "created_at": ts(s.created_at),
    })
}

fn user_server_json(u: &UserServer) -> Value {
    json!({
        "server": server_json(&u.server),
        "role": match u.role {
            ServerRole::Owner => "owner",
            ServerRole::Subscriber => "subscriber",
        },
        "since": ts(u.since),
    })
}

fn invitation_json(i: &Invitation) -> Value {
    json!({
        "invitation_id": i.invitation_id,
        "server_id": i.server_id,
        "server_name": i.server_name,
        "inviter_id": i.inviter_id,
        "invitee_id": i.invitee_id,
        "sent_at": ts(i.sent_at),
        "state": match i.state {
            InvitationState::Pending => "pending",
            InvitationState::Accepted => "accepted",
            InvitationState::Declined => "declined",
        },
        "answered_at": i.answered_at.map(ts),
    })
}

pub(crate) fn post_json(p: &Post) -> Value {
    json!({
        "post_id": p.post_id,
        "server_id": p.server_id,
        "author_id": p.author_id,
        "content": p.content,
        "tags": p.tags,
        "published_at": ts(p.published_at),
        "position": p.position.to_string(),
    })
}

fn channel_json(c: &Channel) -> Value {
    json!({
        "channel_id": c.channel_id,
        "server_id": c.server_id,
        "name": c.name,
        "created_by": c.created_by,
        "created_at": ts(c.created_at),
    })
}

fn channel_summary_json(c: &ChannelSummary) -> Value {
    let mut value = channel_json(&c.channel);
    value["last_seq"] = json!(c.last_seq);
    value["last_message_at"] = json!(c.last_message_at.map(ts));
    value["unread_count"] = json!(c.unread_count);
    value
}

/// A channel message as `viewer` sees it: the idempotency key only to its sender.
pub(crate) fn channel_message_json(m: &ChannelMessage, viewer: Uuid) -> Value {
    json!({
        "message_id": m.message_id,
        "server_id": m.server_id,
        "channel_id": m.channel_id,
        "seq": m.seq,
        "sender_id": m.sender_id,
        "text": m.text,
        "sent_at": ts(m.sent_at),
        "client_msg_id": if m.sender_id == viewer { m.client_msg_id.as_deref() } else { None },
        "position": m.position.to_string(),
    })
}

/// `a,b,c` as a list (empty parts ignored).
fn tag_list(tags: Option<&str>) -> Vec<String> {
    tags.map(|t| {
        t.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

// ----- servers -----

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum VisibilityParam {
    Public,
    Private,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateServerBody {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) tags: Vec<String>,
    pub(crate) visibility: Option<VisibilityParam>,
}

async fn create_server(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiJson(body): ApiJson<CreateServerBody>,
) -> ApiResult {
    let visibility = match body.visibility {
        Some(VisibilityParam::Private) => Visibility::Private,
        Some(VisibilityParam::Public) | None => Visibility::Public,
    };
    let created = detached(&state, move |s| async move {
        s.create_server(actor, &body.name, &body.tags, visibility)
            .await
    })
    .await?;
    let mut value = server_json(&created.server);
    value["position"] = json!(created.position.to_string());
    Ok((StatusCode::CREATED, axum::Json(value)).into_response())
}

#[derive(Debug, Deserialize)]
struct SearchParams {
    name: Option<String>,
    /// Comma-separated.
    tags: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
    min_position: Option<String>,
}

async fn search_servers(
    State(state): State<AppState>,
    _auth: Auth,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> ApiResult {
    let limit = parse_limit(params.limit)?;
    read_after(&state, params.min_position.as_deref()).await?;
    let tags = tag_list(params.tags.as_deref());
    let page = state
        .service
        .search_servers(
            params.name.as_deref(),
            &tags,
            params.cursor.as_deref(),
            limit,
        )
        .await?;
    Ok(axum::Json(page_json(&page, server_json)).into_response())
}

async fn get_server(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath(server_id): ApiPath<Uuid>,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> ApiResult {
    read_after(&state, params.min_position.as_deref()).await?;
    let server = state.service.server(actor, server_id).await?;
    Ok(axum::Json(server_json(&server)).into_response())
}

/// Subscribes (`subscribe`) or unsubscribes.
async fn subscription(
    state: AppState,
    actor: missive_service::Actor,
    server_id: Uuid,
    subscribe: bool,
) -> ApiResult {
    let position = detached(&state, move |s| async move {
        if subscribe {
            s.subscribe(actor, server_id).await
        } else {
            s.unsubscribe(actor, server_id).await
        }
    })
    .await?;
    Ok(axum::Json(json!({
        "server_id": server_id,
        "subscribed": subscribe,
        "position": position_json(position),
    }))
    .into_response())
}

async fn subscribe(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath(server_id): ApiPath<Uuid>,
) -> ApiResult {
    subscription(state, actor, server_id, true).await
}

async fn unsubscribe(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath(server_id): ApiPath<Uuid>,
) -> ApiResult {
    subscription(state, actor, server_id, false).await
}

async fn user_servers(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath(user): ApiPath<String>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> ApiResult {
    let user = match user.as_str() {
        "me" => actor.user_id,
        id => Uuid::parse_str(id).map_err(|_| {
            crate::error::ApiError::bad_request(format!(
                "invalid path parameter: {id:?} is neither a user id (UUID) nor `me`"
            ))
        })?,
    };
    let limit = parse_limit(params.limit)?;
    read_after(&state, params.min_position.as_deref()).await?;
    let page = state
        .service
        .user_servers(actor, user, params.cursor.as_deref(), limit)
        .await?;
    Ok(axum::Json(page_json(&page, user_server_json)).into_response())
}

async fn my_channel(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> ApiResult {
    read_after(&state, params.min_position.as_deref()).await?;
    let channel = state.service.my_channel(actor).await?;
    Ok(axum::Json(json!({ "channel": channel.as_ref().map(channel_json) })).into_response())
}

// ----- invitations -----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InviteBody {
    pub(crate) user_id: Uuid,
}

async fn invite(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath(server_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<InviteBody>,
) -> ApiResult {
    let invitee = body.user_id;
    let invited = detached(&state, move |s| async move {
        s.invite(actor, server_id, invitee).await
    })
    .await?;
    let status = if invited.position.is_some() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        axum::Json(json!({
            "invitation_id": invited.invitation_id,
            "server_id": server_id,
            "invitee_id": invitee,
            "state": "pending",
            "position": position_json(invited.position),
        })),
    )
        .into_response())
}

async fn pending_invitations(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiQuery(params): ApiQuery<ListParams>,
) -> ApiResult {
    let limit = parse_limit(params.limit)?;
    read_after(&state, params.min_position.as_deref()).await?;
    let page = state
        .service
        .pending_invitations(actor, params.cursor.as_deref(), limit)
        .await?;
    Ok(axum::Json(page_json(&page, invitation_json)).into_response())
}

async fn get_invitation(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath(invitation_id): ApiPath<Uuid>,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> ApiResult {
    read_after(&state, params.min_position.as_deref()).await?;
    let invitation = state.service.invitation(actor, invitation_id).await?;
    Ok(axum::Json(invitation_json(&invitation)).into_response())
}

async fn answer(
    state: AppState,
    actor: missive_service::Actor,
    id: Uuid,
    accept: bool,
) -> ApiResult {
    let position = detached(&state, move |s| async move {
        s.answer_invitation(actor, id, accept).await
    })
    .await?;
    Ok(axum::Json(json!({
        "invitation_id": id,
        "state": if accept { "accepted" } else { "declined" },
        "position": position_json(position),
    }))
    .into_response())
}

async fn accept(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath(invitation_id): ApiPath<Uuid>,
) -> ApiResult {
    answer(state, actor, invitation_id, true).await
}

async fn decline(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath(invitation_id): ApiPath<Uuid>,
) -> ApiResult {
    answer(state, actor, invitation_id, false).await
}

// ----- posts -----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PostBody {
    pub(crate) content: String,
    #[serde(default)]
    pub(crate) tags: Vec<String>,
}

async fn publish_post(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath(server_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<PostBody>,
) -> ApiResult {
    let published = detached(&state, move |s| async move {
        s.publish_post(actor, server_id, &body.content, &body.tags)
            .await
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "post_id": published.post_id,
            "server_id": server_id,
            "published_at": ts(published.published_at),
            "position": published.position.to_string(),
        })),
    )
        .into_response())
}

async fn list_posts(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath(server_id): ApiPath<Uuid>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> ApiResult {
    let limit = parse_limit(params.limit)?;
    read_after(&state, params.min_position.as_deref()).await?;
    let page = state
        .service
        .posts(actor, server_id, params.cursor.as_deref(), limit)
        .await?;
    Ok(axum::Json(page_json(&page, post_json)).into_response())
}

// ----- channels -----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChannelBody {
    pub(crate) name: String,
}

async fn create_channel(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath(server_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<ChannelBody>,
) -> ApiResult {
    let created = detached(&state, move |s| async move {
        s.create_channel(actor, server_id, &body.name).await
    })
    .await?;
    let mut value = channel_json(&created.channel);
    value["position"] = json!(created.position.to_string());
    Ok((StatusCode::CREATED, axum::Json(value)).into_response())
}

async fn list_channels(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath(server_id): ApiPath<Uuid>,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> ApiResult {
    read_after(&state, params.min_position.as_deref()).await?;
    let channels = state.service.channels(actor, server_id).await?;
    Ok(axum::Json(json!({
        "items": channels.iter().map(channel_summary_json).collect::<Vec<_>>(),
        "next": null,
    }))
    .into_response())
}

async fn delete_channel(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath((server_id, channel_id)): ApiPath<(Uuid, Uuid)>,
) -> ApiResult {
    let position = detached(&state, move |s| async move {
        s.delete_channel(actor, server_id, channel_id).await
    })
    .await?;
    Ok(axum::Json(json!({
        "channel_id": channel_id,
        "deleted": true,
        "position": position_json(position),
    }))
    .into_response())
}

/// Joins (`join`) or leaves a channel.
async fn channel_command(
    state: AppState,
    actor: missive_service::Actor,
    (server_id, channel_id): (Uuid, Uuid),
    join: bool,
) -> ApiResult {
    let position = detached(&state, move |s| async move {
        if join {
            s.join_channel(actor, server_id, channel_id).await
        } else {
            s.leave_channel(actor, server_id, channel_id).await
        }
    })
    .await?;
    Ok(axum::Json(json!({
        "channel_id": channel_id,
        "joined": join,
        "position": position_json(position),
    }))
    .into_response())
}

async fn join_channel(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath(ids): ApiPath<(Uuid, Uuid)>,
) -> ApiResult {
    channel_command(state, actor, ids, true).await
}

async fn leave_channel(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath(ids): ApiPath<(Uuid, Uuid)>,
) -> ApiResult {
    channel_command(state, actor, ids, false).await
}

async fn channel_members(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath((server_id, channel_id)): ApiPath<(Uuid, Uuid)>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> ApiResult {
    let limit = parse_limit(params.limit)?;
    read_after(&state, params.min_position.as_deref()).await?;
    let page = state
        .service
        .channel_members(
            actor,
            server_id,
            channel_id,
            params.cursor.as_deref(),
            limit,
        )
        .await?;
    Ok(axum::Json(page_json(&page, |u| json!({ "user_id": u }))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChannelSendBody {
    pub(crate) text: String,
    pub(crate) client_msg_id: Option<String>,
}

async fn send_channel_message(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath((server_id, channel_id)): ApiPath<(Uuid, Uuid)>,
    ApiJson(body): ApiJson<ChannelSendBody>,
) -> ApiResult {
    let receipt: SendReceipt = detached(&state, move |s| async move {
        s.send_channel_message(
            actor,
            server_id,
            channel_id,
            &body.text,
            body.client_msg_id.as_deref(),
        )
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
        axum::Json(json!({
            "message_id": receipt.message_id,
            "server_id": server_id,
            "channel_id": receipt.conversation_id,
            "sent_at": ts(receipt.sent_at),
            "position": receipt.position.to_string(),
        })),
    )
        .into_response())
}

async fn channel_history(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath((server_id, channel_id)): ApiPath<(Uuid, Uuid)>,
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
    let page = state
        .service
        .channel_history(actor, server_id, channel_id, query)
        .await?;
    Ok(axum::Json(page_json(&page, |m| channel_message_json(m, actor.user_id))).into_response())
}

async fn mark_channel_read(
    State(state): State<AppState>,
    Auth(actor): Auth,
    ApiPath((server_id, channel_id)): ApiPath<(Uuid, Uuid)>,
    ApiJson(body): ApiJson<ReadBody>,
) -> ApiResult {
    let up_to = body.up_to;
    let position = detached(&state, move |s| async move {
        s.mark_channel_read(actor, server_id, channel_id, up_to)
            .await
    })
    .await?;
    Ok(axum::Json(json!({
        "channel_id": channel_id,
        "up_to": up_to,
        "position": position.to_string(),
    }))
    .into_response())
}
