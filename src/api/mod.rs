//! The public JSON API: `/jobs` (submit, status, detail, cancel, list), health and OpenAPI.
//!
//! [`router`] builds it from an [`ApiState`]; [`serve`] runs it until a shutdown signal.

mod batch;
pub mod dashboard;
mod error;
mod internal;
mod jobs;
mod openapi;
mod storable;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, header};
use axum::response::IntoResponse;
use axum::routing::get;
use sqlx::PgPool;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use batch::{BatchRequest, BatchResponse, MAX_BATCH};
pub use error::{ApiError, RETRY_AFTER_SECS};
pub use internal::{DeadLetterPolicy, Internal};
pub use jobs::{JobList, SubmitRequest};
pub use openapi::{CURSOR_PATTERN, openapi};
pub use watch::Watcher;

use crate::auth::{AuthError, Principal, UserVerifier, bearer_token};
use crate::function::Registry;

/// Limits the API enforces on requests.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest `args` accepted, in bytes (413 above it).
    pub max_args_bytes: usize,
    /// How long idempotency keys are remembered.
    pub idempotency_retention: Duration,
}

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    /// The job store.
    pub pool: PgPool,
    /// Functions that may be submitted, with their policies.
    pub registry: Arc<Registry>,
    /// Verifies the callers' bearer tokens.
    pub verifier: UserVerifier,
    pub limits: Limits,
    /// Publishes jobs after their submit commits; `None` leaves them all to the relay.
    pub outbox: Option<crate::dispatch::Outbox>,
    /// Wakes status long-polls when their job changes; `None` answers `?wait=` at once.
    pub watcher: Option<Watcher>,
    /// Verifiers of the `/internal/*` callers; `None` disables those routes.
    pub internal: Option<Arc<internal::Internal>>,
}

/// Bodies larger than the args limit by more than this are refused before parsing.
const ENVELOPE_ALLOWANCE: usize = 16 * 1024;

/// The whole API as one router. `cors_origins` may be empty (no CORS).
pub fn router(state: ApiState, cors_origins: &[String]) -> Router {
    crate::telemetry::metrics::handle();
    let body_limit = state.limits.max_args_bytes + ENVELOPE_ALLOWANCE;
    let router = Router::new()
        .merge(jobs::router(body_limit))
        .merge(internal::router())
        .merge(dashboard::router())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
        .layer(axum::middleware::from_fn(crate::telemetry::trace_request));
    if cors_origins.is_empty() {
        return router;
    }
    let origins: Vec<HeaderValue> = cors_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    router.layer(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::IF_NONE_MATCH,
                header::HeaderName::from_static("idempotency-key"),
            ])
            .expose_headers([header::ETAG, header::LOCATION, header::RETRY_AFTER])
            .max_age(Duration::from_secs(3600)),
    )
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    crate::store::ping(&state.pool).await?;
    Ok(axum::Json(serde_json::json!({ "status": "ready" })))
}

/// `GET /metrics` (admins only: it names functions and volumes): Prometheus text, with the
/// queue depth read from Postgres at scrape time.
async fn metrics(State(state): State<ApiState>, caller: Caller) -> Result<impl IntoResponse, ApiError> {
    if !caller.0.admin {
        return Err(ApiError::Forbidden("/metrics needs an admin token".into()));
    }
    for (priority, status, count) in crate::store::depth(&state.pool).await? {
        metrics::gauge!(crate::telemetry::metrics::QUEUE_DEPTH, "priority" => priority, "status" => status)
            .set(count as f64);
    }
    let body = crate::telemetry::metrics::handle().render();
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], body))
}

async fn openapi_json(State(state): State<ApiState>) -> impl IntoResponse {
    axum::Json(openapi(&state.registry))
}

/// The authenticated caller of a `/jobs` route.
pub struct Caller(pub Principal);

impl Caller {
    /// The owner filter for store queries: admins see every job.
    pub fn owner_filter(&self) -> Option<&str> {
        (!self.0.admin).then_some(self.0.sub.as_str())
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers)?;
        let principal = state.verifier.verify(token).await?;
        // The owner column is text, which can't hold a NUL.
        if principal.sub.contains('\0') {
            return Err(AuthError::Malformed("its `sub` contains a NUL character").into());
        }
        Ok(Caller(principal))
    }
}
