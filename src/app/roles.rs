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
    let WorkerConfig { worker: args, identity, server, database, pubsub, storage, oidc, log, .. } = config;
    let settings = WorkerSettings {
        queue: args.queue.clone(),
        push: args.push_callers()?,
        lease: args.lease,
        grace: server.shutdown_grace,
        results_bucket: storage.results_bucket.clone(),
        instance: args.instance.clone(),
        executions: match &args.exec_job {
            Some(job) => worker::Executions::CloudRun(worker::CloudRunJob::new(job)),
            None => worker::Executions::Subprocess(worker::Launcher::this_binary()),
        },
    };
    registry.http().tokens().set_source(crate::function::http::TokenSource {
        metadata_host: identity.metadata_host.clone(),
        account: crate::function::http::DEFAULT_ACCOUNT.into(),
    });
    // Without Pub/Sub settings the relay publishes the children runs spawn.
    let connect = connect(&database, pubsub.settings(&log), storage.settings(), &oidc)?;
    let services = Services::connect(&connect, registry, schedules).await?;
    let listener = bind(server.port).await?;
    tracing::info!(port = server.port, queue = %settings.queue, "runq worker listening");
    worker::run(listener, settings, services, crate::server::shutdown_signal()).await
}

/// `runq exec --job-id J --claim-id C`: one run of a Cloud Run Job function, for the claim the
/// worker took, in this process.
pub async fn exec(
    config: crate::config::ExecConfig,
    registry: Registry,
    schedules: Schedules,
) -> Result<(), StartError> {
    let crate::config::ExecConfig { exec: args, database, storage, identity, log, .. } = config;
    registry.http().tokens().set_source(crate::function::http::TokenSource {
        metadata_host: identity.metadata_host.clone(),
        account: args.invoker_account.clone(),
    });
    let oidc = OidcArgs { oidc_jwks_url: crate::auth::GOOGLE_JWKS_URL.into() };
    let mut connect = connect(&database, None, storage.settings(), &oidc)?;
    connect.max_connections = connect.max_connections.min(4);
    let services = Services::connect(&connect, registry, schedules).await?;
    let _ = log;
    let (tx, rx) = tokio::sync::watch::channel(None);
    // Never used: an execution takes no pushes.
    let callers = crate::auth::GoogleCallers { audience: "runq-exec".into(), service_accounts: vec!["none".into()] };
    let worker_id: std::sync::Arc<str> = worker::worker_id("exec", &args.job_id.to_string()[..8]).into();
    let state = worker::WorkerState {
        writes: crate::store::RunWrites::start(services.pool.clone(), worker_id.clone(), args.lease),
        pool: services.pool.clone(),
        relaxed: services.relaxed.clone(),
        registry: services.registry.clone(),
        verifier: callers.verifier(services.google_jwks.clone()),
        queue: "exec".into(),
        worker_id,
        lease: args.lease,
        leases: worker::Leases::default(),
        shutdown: rx,
        storage: services.storage.clone(),
        results_bucket: storage.results_bucket.clone(),
        outbox: services.outbox(),
        background: worker::Background::default(),
        executions: worker::Executions::Subprocess(worker::Launcher::this_binary()),
    };
    let grace = crate::config::DEFAULT_SHUTDOWN_GRACE;
    worker::run_claim(state, args.job_id, args.claim_id, tx, crate::server::shutdown_signal(), grace).await?;
    Ok(())
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
