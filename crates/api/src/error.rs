//! The one error type of the HTTP API and the extractors that produce it.
//!
//! Every failure becomes `{"error": {"code", "message"}}` with a precise status. A 4xx message
//! says exactly what was wrong with the request; a 5xx logs its cause and tells the client
//! nothing internal.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use missive_domain::DomainError;
use missive_log::LogError;
use missive_service::ServiceError;
use missive_store::StoreError;
use serde::de::DeserializeOwned;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds the client should wait before retrying (sent as `Retry-After`).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A server-side failure: logged in full, answered without detail.
    pub fn internal(error: &dyn std::error::Error) -> Self {
        let mut chain = error.to_string();
        let mut source = error.source();
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        tracing::error!(error = %chain, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to handle the request; it has been logged",
        )
    }

    pub fn status_code(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        let (status, code) = match &e {
            DomainError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid_request"),
            DomainError::TooLong { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "text_too_long"),
            DomainError::UsernameTaken(_) => (StatusCode::CONFLICT, "username_taken"),
            DomainError::UserNotFound(_) => (StatusCode::NOT_FOUND, "user_not_found"),
            DomainError::MessageNotFound(_) => (StatusCode::NOT_FOUND, "message_not_found"),
            DomainError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            DomainError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            DomainError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            DomainError::ServerNotFound => (StatusCode::NOT_FOUND, "server_not_found"),
            DomainError::ChannelNotFound(_) => (StatusCode::NOT_FOUND, "channel_not_found"),
            DomainError::InvitationNotFound(_) => (StatusCode::NOT_FOUND, "invitation_not_found"),
            DomainError::ServerNameTaken(_) => (StatusCode::CONFLICT, "server_name_taken"),
            DomainError::ChannelNameTaken(_) => (StatusCode::CONFLICT, "channel_name_taken"),
            DomainError::AlreadySubscribed(_) => (StatusCode::CONFLICT, "already_subscribed"),
            DomainError::AccountBlocked => (StatusCode::FORBIDDEN, "account_blocked"),
            DomainError::AccountDeleted => (StatusCode::FORBIDDEN, "account_deleted"),
            DomainError::RecipientUnavailable(_) => {
                (StatusCode::FORBIDDEN, "recipient_unavailable")
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Domain(d) => d.into(),
            ServiceError::NotCaughtUp => ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_caught_up",
                    "the server is still rebuilding its read models from the event log and cannot decide this command yet; nothing was stored; retry shortly",
                )
            },
            ServiceError::RegistrationClosed => ApiError::new(
                StatusCode::FORBIDDEN,
                "registration_closed",
                "registration is closed on this server; ask an administrator for an account",
            ),
            ServiceError::Log(LogError::Overloaded { .. }) => ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "the server is busy and did not accept the command; retry shortly",
                )
            },
            ServiceError::Log(
                ref l @ (LogError::Closed
                | LogError::CommitFailed(_)
                | LogError::Broker { .. }
                | LogError::SchemaRegistry { .. }
                | LogError::MissingTopic(_)),
            ) => {
                tracing::error!(error = %l, "append failed");
                ApiError {
                    retry_after: Some(1),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "the event log did not accept the command; nothing was stored; retry shortly",
                    )
                }
            }
            // Busy, timed out, unreachable: the same request may well succeed shortly.
            ServiceError::Store(ref s) if s.is_transient() => {
                tracing::error!(error = %s, "read store unavailable");
                ApiError {
                    retry_after: Some(1),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "the read models are unavailable; retry shortly",
                    )
                }
            }
            ServiceError::Store(StoreError::UnknownCursor(id)) => ApiError::bad_request(format!(
                "cursor {id} is not a message of this conversation or channel"
            )),
            ServiceError::Store(StoreError::InvalidCursor(c)) => ApiError::bad_request(format!(
                "cursor {c:?} is not valid; pass back a `next` value unchanged"
            )),
            other => ApiError::internal(&other),
        }
    }
}

/// Describes a serde/axum rejection body without echoing internal type names.
fn rejection_text(text: String) -> String {
    let text = text
        .replace(
            "Failed to deserialize the JSON body into the target type: ",
            "",
        )
        .replace("Failed to parse the request body as JSON: ", "")
        .replace("Failed to deserialize query string: ", "");
    without_type_names(&text)
}

/// serde names the Rust type it expected ("expected struct RegisterBody with 2 elements"): an
/// internal name, said to the client as "expected a JSON object".
fn without_type_names(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("struct ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "struct ".len()..];
        let name_end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let mut tail = &after[name_end..];
        if let Some(more) = tail.strip_prefix(" with ")
            && let Some(end) = more.find(" element")
        {
            let after_word = &more[end + " element".len()..];
            tail = after_word.strip_prefix('s').unwrap_or(after_word);
        }
        out.push_str("a JSON object");
        rest = tail;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_name_no_rust_type() {
        assert_eq!(
            without_type_names(
                "invalid type: null, expected struct RegisterBody at line 1 column 4"
            ),
            "invalid type: null, expected a JSON object at line 1 column 4"
        );
        assert_eq!(
            without_type_names("invalid length 1, expected struct RegisterBody with 2 elements"),
            "invalid length 1, expected a JSON object"
        );
        assert_eq!(
            without_type_names("missing field `text`"),
            "missing field `text`"
        );
        assert_eq!(
            rejection_text("Failed to parse the request body as JSON: EOF".into()),
            "EOF"
        );
    }
}

/// `Json<T>` whose rejections are [`ApiError`]s: wrong content type 415, oversized body 413,
/// malformed JSON, unknown fields and wrong types 400.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(json_rejection(JsonRejection::MissingJsonContentType(
                Default::default(),
            )));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| json_rejection(JsonRejection::BytesRejection(e)))?;
        if is_json_array(&bytes) {
            return Err(ApiError::bad_request(format!(
                "the body does not match the expected shape: {NOT_AN_ARRAY}"
            )));
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// Why a JSON array is refused where a command (an object) is expected.
pub(crate) const NOT_AN_ARRAY: &str = "expected a JSON object, found an array";

/// Whether `json` is an array. serde also reads a struct from an array of its fields in
/// order (`["bob", "hi"]` would be a message): a command, a body or a WebSocket frame, is an
/// object with named fields, so an array is refused before it is parsed.
pub(crate) fn is_json_array(json: &[u8]) -> bool {
    json.trim_ascii_start().first() == Some(&b'[')
}

/// Whether the request says its body is JSON: `application/json`, or `application/*+json`
/// (as axum's `Json` decides).
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|subtype| subtype.ends_with("+json"))
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON with `Content-Type: application/json`",
        ),
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request(format!(
            "the body is not valid JSON: {}",
            rejection_text(e.body_text())
        )),
        JsonRejection::JsonDataError(e) => ApiError::bad_request(format!(
            "the body does not match the expected shape: {}",
            rejection_text(e.body_text())
        )),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the body is larger than the limit of {} bytes",
                    crate::MAX_BODY_BYTES
                ),
            )
        }
        other => {
            ApiError::bad_request(format!("the body could not be read: {}", other.body_text()))
        }
    }
}

/// `Path<T>` whose rejections are 400s naming the bad segment.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                Err(ApiError::bad_request(format!(
                    "invalid path parameter: {}",
                    e.body_text().replace("Invalid URL: ", "")
                )))
            }
            Err(other) => Err(ApiError::bad_request(other.body_text())),
        }
    }
}

/// `Query<T>` whose rejections are 400s naming the bad parameter.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => Err(ApiError::bad_request(
                format!("invalid query string: {}", rejection_text(e.body_text())),
            )),
            Err(other) => Err(ApiError::bad_request(other.body_text())),
        }
    }
}
