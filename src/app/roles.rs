//! The long-running roles, `runq api` and `runq worker`: their configuration turned into
//! settings, the services connected, and the server's one entry point called.

use crate::api::{self, ApiSettings, DeadLetterPolicy, Limits};
use crate::config::{ApiConfig, DatabaseArgs, OidcArgs, WorkerConfig};
use crate::dispatch::PubSubSettings;
use crate::function::Registry;
use crate::schedule::Schedules;
use crate::services::{Connect, Services, StartError};
use crate::storage::StorageSettings;
use crate::worker::{self, WorkerSettings};

/// Relaxed connections per process: progress, heartbeats and the outbox's marks are small.
const RELAXED_CONNECTIONS: u32 = 4;

fn connect(
    database: &DatabaseArgs,
    pubsub: Option<PubSubSettings>,
    storage: Option<StorageSettings>,
    oidc: &OidcArgs,
) -> Result<Connect, StartError> {
    Ok(Connect {
        database_url: database.url()?.to_owned(),
        max_connections: database.max_connections(),
        relaxed_connections: RELAXED_CONNECTIONS,
        acquire_timeout: database.db_acquire_timeout,
        pubsub,
        storage,
        oidc_jwks_url: oidc.oidc_jwks_url.clone(),
    })
}

async fn bind(port: u16) -> Result<tokio::net::TcpListener, StartError> {
    Ok(tokio::net::TcpListener::bind(("0.0.0.0", port)).await?)
}

/// `runq worker --queue Q`.
pub async fn worker(config: WorkerConfig, registry: Registry, schedules: Schedules) -> Result<(), StartError> {
    let WorkerConfig { worker: args, server, database, pubsub, storage, oidc, log, .. } = config;
    let settings = WorkerSettings {
        queue: args.queue.clone(),
        push: args.push_callers()?,
        lease: args.lease,
        grace: server.shutdown_grace,
        results_bucket: storage.results_bucket.clone(),
        instance: args.instance.clone(),
    };
    registry.http().tokens().set_source(crate::function::http::TokenSource {
        metadata_host: args.metadata_host.clone(),
        account: crate::function::http::DEFAULT_ACCOUNT.into(),
    });
    // Without Pub/Sub settings the relay publishes the children runs spawn.
    let connect = connect(&database, pubsub.settings(&log), storage.settings(), &oidc)?;
    let services = Services::connect(&connect, registry, schedules).await?;
    let listener = bind(server.port).await?;
    tracing::info!(port = server.port, queue = %settings.queue, "runq worker listening");
    worker::run(listener, settings, services, crate::server::shutdown_signal()).await
}

/// `runq api`.
pub async fn api(config: ApiConfig, registry: Registry, schedules: Schedules) -> Result<(), StartError> {
    let ApiConfig { server, database, auth, pubsub, storage, oidc, api: args, cors, log, .. } = config;
    let settings = ApiSettings {
        auth: auth.required()?,
        limits: Limits {
            max_args_bytes: args.max_args_bytes,
            idempotency_retention: args.idempotency_retention,
            search_timeout: args.search_timeout,
        },
        cors_origins: cors.cors_origins,
        grace: server.shutdown_grace,
        auto_migrate: args.auto_migrate,
        dead_letter: args.dead_letter_callers().map(|callers| (callers, DeadLetterPolicy::default())),
        scheduler: args.scheduler_callers(),
        retention: args.retention(),
        sweep_window: args.sweep_window,
        sweep_every: args.sweep_every,
        local_schedules: None,
    };
    let pubsub = pubsub.settings(&log);
    if pubsub.is_none() {
        tracing::warn!("no RUNQ_PUBSUB_PROJECT: jobs are recorded but not published to Pub/Sub");
    }
    let services =
        Services::connect(&connect(&database, pubsub, storage.settings(), &oidc)?, registry, schedules).await?;
    let listener = bind(server.port).await?;
    tracing::info!(port = server.port, "runq api listening");
    api::run(listener, settings, services, crate::server::shutdown_signal()).await
}
