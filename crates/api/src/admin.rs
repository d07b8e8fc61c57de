//! Operator routes: they need a token with the admin claim (`missive token --admin`); a user's
//! token gets 403 `admin_only`.
//!
//! `GET /v1/admin/analytics?from=&to=[&granularity=minute|day]`: the analytics consumer's
//! rollups (messages, conversations started, friendship funnel, delivery and read latency,
//! daily and monthly active users) between two times.
//!
//! `POST /v1/admin/users/{user_id}/block`, `.../unblock` and `DELETE /v1/admin/users/{user_id}`:
//! an account's standing. A blocked user's commands are refused (403 `account_blocked`) and
//! nobody can message, befriend or invite them (403 `recipient_unavailable`) until unblocked;
//! deletion is final (403 `account_deleted`) and frees the username.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use missive_analytics::{QueryError, ReportQuery};
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiPath;
use crate::error::{ApiError, ApiQuery};
use crate::routes::{ApiResult, admin_from_headers, position_json, user_json};
use missive_events::AccountStatus;
use uuid::Uuid;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AnalyticsParams {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    granularity: Option<String>,
}

pub(crate) async fn analytics(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<ApiQuery<AnalyticsParams>, ApiError>,
) -> ApiResult<Json<missive_analytics::AnalyticsReport>> {
    // Who asks first: an anonymous caller learns nothing about the parameters.
    admin_from_headers(&state, &headers)?;
    let ApiQuery(params) = params?;
    let (Some(from), Some(to)) = (params.from, params.to) else {
        return Err(ApiError::bad_request(
            "`from` and `to` are required: RFC 3339 times, e.g. \
             ?from=2026-12-01T00:00:00Z&to=2026-12-02T00:00:00Z",
        ));
    };
    for (name, time) in [("from", from), ("to", to)] {
        if !(1970..=9999).contains(&chrono::Datelike::year(&time)) {
            return Err(ApiError::bad_request(format!(
                "`{name}` must be a time between the years 1970 and 9999"
            )));
        }
    }
    let query = ReportQuery::parse(from, to, params.granularity.as_deref())
        .map_err(|e: QueryError| ApiError::bad_request(e.to_string()))?;
    let Some(store) = &state.analytics else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "analytics_off",
            "this server keeps no analytics (started with --analytics off)",
        ));
    };
    match missive_analytics::report(store.as_ref(), &query).await {
        Ok(report) => Ok(Json(report)),
        Err(error) if error.is_transient() => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the analytics store is unavailable; retry shortly",
        )),
        Err(error) => Err(ApiError::internal(&error)),
    }
}

pub(crate) async fn block_user(
    state: State<AppState>,
    headers: HeaderMap,
    user: Result<ApiPath<Uuid>, ApiError>,
) -> ApiResult<Json<serde_json::Value>> {
    set_standing(state, headers, user, AccountStatus::Blocked).await
}

pub(crate) async fn unblock_user(
    state: State<AppState>,
    headers: HeaderMap,
    user: Result<ApiPath<Uuid>, ApiError>,
) -> ApiResult<Json<serde_json::Value>> {
    set_standing(state, headers, user, AccountStatus::Active).await
}

pub(crate) async fn delete_user(
    state: State<AppState>,
    headers: HeaderMap,
    user: Result<ApiPath<Uuid>, ApiError>,
) -> ApiResult<Json<serde_json::Value>> {
    set_standing(state, headers, user, AccountStatus::Deleted).await
}

/// Sets an account's standing: the account afterwards and the event's position (`null` when
/// it already had that standing).
async fn set_standing(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: Result<ApiPath<Uuid>, ApiError>,
    status: AccountStatus,
) -> ApiResult<Json<serde_json::Value>> {
    // Who asks first: an anonymous caller learns nothing about the user id.
    let operator = admin_from_headers(&state, &headers)?;
    let ApiPath(user) = user?;
    let (account, position) = state
        .service
        .set_account_status(operator, user, status)
        .await?;
    let mut body = user_json(&account);
    body["position"] = position_json(position);
    Ok(Json(body))
}
