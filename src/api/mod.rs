//! The public JSON API: `/jobs` (submit, status, detail, cancel, retry, delete, list),
//! `/operations` (bulk retry, cancel, delete, and their list), health and OpenAPI.
//!
//! [`run`] is the API server's one entry point: it builds the [`ApiState`] from the connected
//! [`Services`] and the [`ApiSettings`], and serves [`router`] until its shutdown future resolves.

mod batch;
pub mod dashboard;
mod error;
mod internal;
mod jobs;
mod limits;
mod narrowing;
mod openapi;
mod operations;
mod storable;
mod watch;
mod workflows;

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

use crate::auth::{AuthError, GoogleCallers, Principal, UserAuthConfig, UserVerifier, bearer_token};
use crate::function::Registry;
use crate::maintenance::Retention;
use crate::schedule::Runner;
use crate::services::{Services, StartError};

/// Limits the API enforces on requests.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest `args` accepted, in bytes (413 above it).
    pub max_args_bytes: usize,
    /// How long idempotency keys are remembered.
    pub idempotency_retention: Duration,
    /// How long an unindexed search (error text, an args field) may run before it is cut off.
    pub search_timeout: Duration,
}

/// What every handler shares, built by [`run`] alone. Cheap to clone.
#[derive(Clone)]
pub(crate) struct ApiState {
    /// The job store.
    pub pool: PgPool,
    /// Plain `POST /jobs` submits, coalesced into one insert and commit per moment.
    pub submits: crate::store::Submits,
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
    /// GCS, to delete the result objects of deleted jobs; `None` leaves them in place.
    pub storage: Option<Arc<crate::storage::BlobStore>>,
}

/// How the API server behaves: everything `runq api` reads from its configuration, and what
/// `runq dev` fills in for its own stack.
#[derive(Clone)]
pub struct ApiSettings {
    /// How callers' bearer tokens are verified.
    pub auth: UserAuthConfig,
    pub limits: Limits,
    /// Browser origins allowed to call (empty: no CORS).
    pub cors_origins: Vec<String>,
    /// How long in-flight requests may finish after the shutdown signal.
    pub grace: Duration,
    /// Apply migrations at start; otherwise refuse to start on an older schema.
    pub auto_migrate: bool,
    /// Enables `/internal/dead-letter` for these callers, with this re-dispatch policy.
    pub dead_letter: Option<(GoogleCallers, DeadLetterPolicy)>,
    /// Enables `/internal/schedules/{name}` for these callers (Cloud Scheduler).
    pub scheduler: Option<GoogleCallers>,
    /// How long finished jobs are kept (`runq.cleanup`).
    pub retention: Retention,
    /// How long one `runq.sweep` firing keeps sweeping, and the pause between its passes.
    pub sweep_window: Duration,
    pub sweep_every: Duration,
    /// Fire the schedules in this process on a timer, sweeping every this long, instead of
    /// waiting for Cloud Scheduler (`runq dev`).
    pub local_schedules: Option<Duration>,
}

impl ApiSettings {
    /// Settings with the defaults of a deployed API and these token settings.
    pub fn new(auth: UserAuthConfig) -> Self {
        Self {
            auth,
            limits: Limits {
                max_args_bytes: crate::config::DEFAULT_MAX_ARGS_BYTES,
                idempotency_retention: crate::config::DEFAULT_IDEMPOTENCY_RETENTION,
                search_timeout: crate::config::DEFAULT_SEARCH_TIMEOUT,
            },
            cors_origins: Vec::new(),
            grace: crate::config::DEFAULT_SHUTDOWN_GRACE,
            auto_migrate: true,
            dead_letter: None,
            scheduler: None,
            retention: Retention::default(),
            sweep_window: crate::schedule::DEFAULT_SWEEP_WINDOW,
            sweep_every: crate::schedule::DEFAULT_SWEEP_EVERY,
            local_schedules: None,
        }
    }
}

/// Runs the API server on `listener` until `shutdown` resolves, then drains for the grace.
///
/// Checks the token settings first, then migrates (or checks) the schema, then serves.
pub async fn run(
    listener: tokio::net::TcpListener,
    settings: ApiSettings,
    services: Services,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let verifier = UserVerifier::new(settings.auth.clone(), services.http.clone())?;
    if settings.auto_migrate {
        crate::store::migrate(&services.pool).await?;
    } else {
        crate::store::check_schema(&services.pool).await?;
    }
    crate::store::limits::declare(&services.pool, services.registry.limits()).await?;
    let publishing = services.publishing.as_ref();
    let runner = Runner {
        pool: services.pool.clone(),
        registry: services.registry.clone(),
        outbox: services.outbox(),
        dispatcher: publishing.map(|p| p.dispatcher.clone()),
        storage: services.storage.clone(),
        retention: settings.retention,
        key_retention: settings.limits.idempotency_retention,
        redispatch_after: publishing.map_or(crate::dispatch::DEFAULT_REDISPATCH_AFTER, |p| p.settings.redispatch_after),
        // Run locally, a firing of `runq.sweep` is one pass: the local loop sweeps continuously.
        sweep_window: if settings.local_schedules.is_some() { Duration::ZERO } else { settings.sweep_window },
        sweep_every: settings.local_schedules.unwrap_or(settings.sweep_every),
    };
    let jwks = &services.google_jwks;
    let internal = Internal {
        dead_letter: settings.dead_letter.as_ref().map(|(callers, policy)| (callers.verifier(jwks.clone()), *policy)),
        scheduler: settings.scheduler.as_ref().map(|callers| callers.verifier(jwks.clone())),
        schedules: services.schedules.clone(),
        runner: runner.clone(),
    };
    let state = ApiState {
        submits: crate::store::Submits::start(services.pool.clone()),
        pool: services.pool.clone(),
        registry: services.registry.clone(),
        verifier,
        limits: settings.limits.clone(),
        outbox: services.outbox(),
        watcher: Some(Watcher::start(services.pool.clone())),
        internal: Some(Arc::new(internal)),
        storage: services.storage.clone(),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let local = settings
        .local_schedules
        .map(|every| tokio::spawn(crate::schedule::run_locally(runner, services.schedules.clone(), every, stop_rx)));
    let stop = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let served = crate::server::serve(listener, router(state, &settings.cors_origins), stop, settings.grace).await;
    if let Some(local) = local {
        let _ = local.await;
    }
    Ok(served?)
}

/// Bodies larger than the args limit by more than this are refused before parsing.
const ENVELOPE_ALLOWANCE: usize = 16 * 1024;

/// The whole API as one router. `cors_origins` may be empty (no CORS).
fn router(state: ApiState, cors_origins: &[String]) -> Router {
    crate::telemetry::metrics::handle();
    let body_limit = state.limits.max_args_bytes + ENVELOPE_ALLOWANCE;
    let router = Router::new()
        .merge(jobs::router(body_limit))
        .merge(workflows::router())
        .merge(operations::router())
        .merge(limits::router())
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
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
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
