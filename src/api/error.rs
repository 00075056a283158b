//! The API's one error type, mapped to `application/problem+json` (RFC 9457) in one place.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth::AuthError;
use crate::store::StoreError;

/// Seconds a client should wait before retrying after a 503.
pub const RETRY_AFTER_SECS: u32 = 2;

/// Everything a request can fail with. Each variant's doc names its status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not valid JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// 401, 403 or 503 (from [`AuthError::status`]): the bearer token was refused.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// 403: authenticated, but not allowed (an admin-only route).
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such job, or not the caller's.
    #[error("no job with id {0}")]
    JobNotFound(String),
    /// 404: no such bulk operation, or not the caller's.
    #[error("no operation with id {0}")]
    OperationNotFound(String),
    /// 404: no such limit, queue or function (the message says which).
    #[error("{0}")]
    NotFound(String),
    /// 404: no such route.
    #[error("no such endpoint")]
    RouteNotFound,
    /// 405.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: the request conflicts with the job's state or an earlier request.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body or its `args` are over the limit.
    #[error("{0}")]
    TooLarge(String),
    /// 415: the body is not `application/json`.
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// 422: well-formed but unacceptable (unknown function, bad args, bad priority, bad cursor, ...).
    #[error("{detail}")]
    Invalid {
        /// Which field or parameter is wrong.
        field: &'static str,
        detail: String,
    },
    /// 503 with `Retry-After`: Postgres is unreachable; nothing was written.
    #[error("database unavailable")]
    Unavailable,
    /// 500: a bug; the details go to the log, not to the client.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// A 422 for `field`.
    pub fn invalid(field: &'static str, detail: impl Into<String>) -> Self {
        Self::Invalid { field, detail: detail.into() }
    }

    /// The HTTP status of this error.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_) => StatusCode::BAD_REQUEST,
            Self::Auth(e) => e.status(),
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::JobNotFound(_) | Self::OperationNotFound(_) | Self::NotFound(_) | Self::RouteNotFound => {
                StatusCode::NOT_FOUND
            }
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable, machine-readable name for the error, used as the problem `type` suffix.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed-json",
            Self::Auth(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::JobNotFound(_) => "job-not-found",
            Self::OperationNotFound(_) => "operation-not-found",
            Self::NotFound(_) | Self::RouteNotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::Conflict(_) => "conflict",
            Self::TooLarge(_) => "too-large",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::Invalid { .. } => "invalid-request",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(source) => {
                tracing::warn!(error = %source, "database unavailable");
                Self::Unavailable
            }
            StoreError::IdempotencyConflict => {
                Self::Conflict("this Idempotency-Key was already used with a different request".into())
            }
            StoreError::IdempotencyExpiredJob => Self::Conflict(
                "this Idempotency-Key was used for a job that has since been cleaned up; use a new key".into(),
            ),
            StoreError::Timeout => {
                Self::invalid("query", "the query ran over its time limit: narrow it with more filters")
            }
            StoreError::Other(sqlx::Error::Database(db)) if db.code().is_some_and(|c| refused_value(&c)) => {
                // Checked at the API first (NUL, lone surrogates); this catches what Postgres
                // alone knows it can't store (a number beyond `numeric`, jsonb nested too deep).
                tracing::warn!(error = %db, "the database refused a value of the request; nothing was written");
                Self::invalid("body", format!("the request holds a value the database can't store: {}", db.message()))
            }
            other => {
                tracing::error!(error = %other, "database error");
                Self::Internal
            }
        }
    }
}

/// SQLSTATEs that mean "this value can't be stored" rather than "the database is broken": bad
/// text or jsonb input (22P02), NUL (22021, 22P05), numeric overflow (22003), and limits hit by
/// one value (54000, 54001: jsonb nested too deep). A statement that fails writes nothing.
fn refused_value(code: &str) -> bool {
    matches!(code, "22P02" | "22P05" | "22021" | "22003" | "54000" | "54001")
}

/// The `application/problem+json` body.
#[derive(Serialize)]
struct Problem<'a> {
    r#type: String,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'static str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let detail = match &self {
            Self::Auth(e) => e.detail().to_owned(),
            other => other.to_string(),
        };
        let problem = Problem {
            r#type: format!("https://runq.dev/problems/{}", self.kind()),
            title: status.canonical_reason().unwrap_or("error"),
            status: status.as_u16(),
            detail,
            field: match &self {
                Self::Invalid { field, .. } => Some(field),
                _ => None,
            },
        };
        let mut response = (status, Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        if let Self::Auth(e) = &self
            && let Some(challenge) = e.www_authenticate()
        {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}
