//! Errors shaped like Google's: one enum, mapped to a gRPC status and to the REST
//! `{"error": {"code", "message", "status"}}` body in one place each.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Why a request failed. Each variant is a `google.rpc.Code`; the text is the message
/// Google would send (clients and tests match on the code, people read the text).
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ApiError {
    /// NOT_FOUND (gRPC 5, HTTP 404): a topic or subscription that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// ALREADY_EXISTS (gRPC 6, HTTP 409): creating a name that is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// INVALID_ARGUMENT (gRPC 3, HTTP 400): bad names, out-of-range values, bad JSON.
    #[error("{0}")]
    InvalidArgument(String),
    /// UNIMPLEMENTED (gRPC 12, HTTP 501): a method or path the emulator does not serve.
    #[error("{0}")]
    Unimplemented(String),
}

impl ApiError {
    /// NOT_FOUND for a resource, worded like Pub/Sub.
    pub(crate) fn not_found(kind: &str) -> Self {
        Self::NotFound(format!("Resource not found (resource={kind})."))
    }

    /// ALREADY_EXISTS for a resource, worded like Pub/Sub.
    pub(crate) fn already_exists(kind: &str) -> Self {
        Self::AlreadyExists(format!("Resource already exists in the project (resource={kind})."))
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }

    /// The `google.rpc.Code` name, used as REST's `status`.
    pub(crate) fn status_name(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "NOT_FOUND",
            Self::AlreadyExists(_) => "ALREADY_EXISTS",
            Self::InvalidArgument(_) => "INVALID_ARGUMENT",
            Self::Unimplemented(_) => "UNIMPLEMENTED",
        }
    }

    /// The HTTP status REST answers with.
    pub(crate) fn http_status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::AlreadyExists(_) => StatusCode::CONFLICT,
            Self::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            Self::Unimplemented(_) => StatusCode::NOT_IMPLEMENTED,
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::NotFound(m) => tonic::Status::not_found(m),
            ApiError::AlreadyExists(m) => tonic::Status::already_exists(m),
            ApiError::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            ApiError::Unimplemented(m) => tonic::Status::unimplemented(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.http_status();
        let body = serde_json::json!({
            "error": {
                "code": status.as_u16(),
                "message": self.to_string(),
                "status": self.status_name(),
            }
        });
        (status, axum::Json(body)).into_response()
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;
