//! The worker: the `/push` endpoint Pub/Sub invokes, which claims the job, runs its function
//! and records the outcome, plus the lease keeper and graceful shutdown that releases the
//! runs that can't finish.

mod exec;
mod leases;
mod push;
mod run;
mod spawn;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

pub use exec::{CLOUD_RUN_START_GRACE, CloudRunJob, Executions, Launcher, run_claim};
pub use leases::{Background, Leases, RunSignal};
pub use push::{MAX_UNKNOWN_FUNCTION_ROUNDS, PushError, UNKNOWN_FUNCTION_BACKOFF};
pub use run::{INLINE_RESULT_LIMIT, PROGRESS_INTERVAL, Recorded, execute};
pub use spawn::{MAX_CHILDREN, RunSpawner};

use crate::auth::{GoogleCallers, GoogleOidcVerifier};
use crate::function::Registry;
use crate::job::{ErrorKind, JobError};
use crate::services::{Services, StartError};
use crate::storage::BlobStore;

/// A claim's lease unless `RUNQ_LEASE_SECS` says otherwise; heartbeats run every third of it.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How a worker serves its queue: everything `runq worker` reads from its configuration, and
/// what `runq dev` fills in for each of its workers.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The queue this worker serves.
    pub queue: String,
    /// Who may push: the audience of Pub/Sub's push tokens (the worker's URL) and its accounts.
    pub push: GoogleCallers,
    /// How long a claim lives without a heartbeat.
    pub lease: Duration,
    /// How long runs may finish after the shutdown signal before they are released.
    pub grace: Duration,
    /// Where results over the inline limit go.
    pub results_bucket: Option<String>,
    /// This instance's name in claims (the Cloud Run revision).
    pub instance: String,
    /// Starts the executions of Cloud Run Job functions (`runq exec`).
    pub executions: Executions,
}

impl WorkerSettings {
    /// Settings with the defaults: a 30 s lease, 8 s of grace, no results bucket.
    pub fn new(queue: &str, push: GoogleCallers) -> Self {
        Self {
            queue: queue.to_owned(),
            push,
            lease: DEFAULT_LEASE,
            grace: crate::config::DEFAULT_SHUTDOWN_GRACE,
            results_bucket: None,
            instance: crate::config::DEFAULT_INSTANCE.into(),
            executions: Executions::Subprocess(Launcher::this_binary()),
        }
    }
}

/// Runs a worker on `listener` until `shutdown` resolves; see [`serve`] for how it stops.
/// Refuses to start on a database whose schema is older than this build's.
pub async fn run(
    listener: tokio::net::TcpListener,
    settings: WorkerSettings,
    services: Services,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    crate::store::check_schema(&services.pool).await?;
    crate::store::limits::declare(&services.pool, services.registry.limits()).await?;
    let verifier = settings.push.verifier(services.google_jwks.clone());
    let (tx, rx) = watch::channel(None);
    let worker_id: Arc<str> = worker_id(&settings.instance, &settings.queue).into();
    let state = WorkerState {
        writes: crate::store::RunWrites::start(services.pool.clone(), worker_id.clone(), settings.lease),
        pool: services.pool.clone(),
        relaxed: services.relaxed.clone(),
        registry: services.registry.clone(),
        verifier,
        queue: settings.queue.clone(),
        worker_id,
        lease: settings.lease,
        leases: Leases::default(),
        shutdown: rx,
        storage: services.storage.clone(),
        results_bucket: settings.results_bucket.clone(),
        outbox: services.outbox(),
        background: Background::default(),
        executions: settings.executions.clone(),
    };
    Ok(serve(listener, state, tx, shutdown, settings.grace).await?)
}

/// What the push handler shares. Cheap to clone.
#[derive(Clone)]
pub struct WorkerState {
    /// Claims and outcomes: durable commits.
    pub pool: PgPool,
    /// Claims and successes of concurrent pushes, each kind coalesced into one statement.
    pub writes: crate::store::RunWrites,
    /// Progress and heartbeats: `synchronous_commit = off`, its own connections.
    pub relaxed: PgPool,
    pub registry: Arc<Registry>,
    /// Verifies Pub/Sub's push tokens.
    pub verifier: GoogleOidcVerifier,
    /// The queue this worker serves (for logs and metrics).
    pub queue: String,
    /// Recorded on claims, so an operator can tell which instance ran a job.
    pub worker_id: Arc<str>,
    pub lease: Duration,
    pub leases: Leases,
    /// `Some(grace)` once shutdown began: runs get `grace` to finish, then are released.
    pub shutdown: watch::Receiver<Option<Duration>>,
    /// GCS, given to runs through their context and used to offload large results.
    pub storage: Option<Arc<BlobStore>>,
    /// `RUNQ_RESULTS_BUCKET`: where results over the inline limit go.
    pub results_bucket: Option<String>,
    /// Publishes child jobs at once; without it the relay does.
    pub outbox: Option<crate::dispatch::Outbox>,
    /// Detached runs in flight (their push was answered already).
    pub background: Background,
    /// Starts the executions of Cloud Run Job functions.
    pub executions: Executions,
}

impl WorkerState {
    /// Stores a result too large for the row under a name fenced by the claim (a stale run's
    /// upload can't overwrite a newer run's). Without a results bucket the run fails with kind
    /// `result_too_large`.
    pub async fn offload_result(&self, id: Uuid, claim: Uuid, bytes: Vec<u8>) -> Result<String, JobError> {
        let (Some(storage), Some(bucket)) = (&self.storage, &self.results_bucket) else {
            return Err(JobError {
                kind: ErrorKind::ResultTooLarge,
                message: format!(
                    "the result is {} bytes, over the {} byte inline limit, and no RUNQ_RESULTS_BUCKET is configured",
                    bytes.len(),
                    INLINE_RESULT_LIMIT
                ),
                retryable: false,
            });
        };
        let object = crate::storage::result_object_name(id, claim);
        storage.put(bucket, &object, bytes.into(), "application/json").await.map_err(|e| JobError {
            kind: ErrorKind::ResultStorage,
            message: format!("could not store the result in GCS: {e}"),
            retryable: e.is_retryable(),
        })
    }
}

/// A worker id for this process: the instance (Cloud Run revision), the queue and a random suffix.
pub fn worker_id(instance: &str, queue: &str) -> String {
    format!("{instance}/{queue}/{}", &Uuid::new_v4().simple().to_string()[..8])
}

/// The worker's routes: `POST /push`, `/healthz`, `/readyz`, `/metrics` (the worker services
/// are private: Cloud Run IAM admits only the push and monitoring accounts).
pub fn router(state: WorkerState) -> Router {
    let metrics = crate::telemetry::metrics::handle();
    Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/push", post(push::push))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
        .layer(axum::middleware::from_fn(crate::telemetry::trace_request))
}

async fn readyz(axum::extract::State(state): axum::extract::State<WorkerState>) -> axum::http::StatusCode {
    match crate::store::ping(&state.pool).await {
        Ok(()) => axum::http::StatusCode::OK,
        Err(_) => axum::http::StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Serves the worker on `listener` until `signal` resolves. Then it stops accepting pushes,
/// gives running jobs `grace` to finish, releases the rest (fenced by their claims, so they
/// are retried at once elsewhere and never overlap), and returns.
async fn serve(
    listener: tokio::net::TcpListener,
    state: WorkerState,
    shutdown: watch::Sender<Option<Duration>>,
    signal: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let keeper = state.leases.spawn_keeper(state.relaxed.clone(), state.lease);
    let cancels = state.leases.spawn_cancel_listener(&state.relaxed, state.lease);
    let background = state.background.clone();
    let queue = state.queue.clone();
    let leases = state.leases.clone();
    let stop = async move {
        signal.await;
        tracing::info!(%queue, running = leases.len(), "worker shutting down");
        let _ = shutdown.send(Some(grace));
    };
    // Runs get `grace`; recording their release takes a moment more.
    let result = crate::server::serve(listener, router(state), stop, grace + Duration::from_secs(2)).await;
    // Detached runs saw the same shutdown signal: they finish or release within the grace.
    if tokio::time::timeout(grace + Duration::from_secs(2), background.idle()).await.is_err() {
        tracing::warn!(running = background.len(), "detached runs still going at exit; their leases will expire");
    }
    keeper.abort();
    cancels.abort();
    result
}
