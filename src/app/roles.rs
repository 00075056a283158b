//! The long-running roles: `runq api` and `runq worker`, built from the environment.

use std::sync::Arc;

use crate::api::{self, ApiState, DeadLetterPolicy, Internal, Limits};
use crate::auth::{GoogleOidcVerifier, JwksCache, UserVerifier};
use crate::config::{AuthSettings, Config, var};
use crate::dispatch::{Dispatcher, Outbox, PubSubSettings};
use crate::function::Registry;
use crate::maintenance::Retention;
use crate::schedule::{DEFAULT_SWEEP_EVERY, DEFAULT_SWEEP_WINDOW, Runner, Schedules};
use crate::storage::{BlobStore, StorageSettings};
use crate::store;
use crate::worker::{self, WorkerSettings, WorkerState};

type BoxError = Box<dyn std::error::Error>;

/// GCS when the environment asks for it (`RUNQ_RESULTS_BUCKET` or `STORAGE_EMULATOR_HOST`).
async fn storage_from_env() -> Result<Option<Arc<BlobStore>>, BoxError> {
    if var("RUNQ_RESULTS_BUCKET")?.is_none() && var("STORAGE_EMULATOR_HOST")?.is_none() {
        return Ok(None);
    }
    Ok(Some(Arc::new(BlobStore::new(&StorageSettings::from_env()?).await?)))
}

/// The JWKS that signs Google's OIDC tokens (`RUNQ_OIDC_JWKS_URL` for an emulator's).
fn google_jwks() -> Result<Arc<JwksCache>, BoxError> {
    let url = var("RUNQ_OIDC_JWKS_URL")?.unwrap_or_else(|| crate::auth::GOOGLE_JWKS_URL.to_owned());
    Ok(Arc::new(JwksCache::new(url, reqwest::Client::new())?))
}

/// `runq worker --queue Q`.
pub async fn worker(registry: Registry, queue: String) -> Result<(), BoxError> {
    let config = Config::from_env()?;
    let settings = WorkerSettings::from_env()?;
    let pool = store::connect_lazy(&config.database_url, config.db_max_connections, config.db_acquire_timeout)?;
    let relaxed = store::connect_relaxed(&config.database_url, 2, config.db_acquire_timeout)?;
    store::check_schema(&pool).await?;
    let jwks = Arc::new(JwksCache::new(settings.oidc_jwks_url.clone(), reqwest::Client::new())?);
    let verifier =
        GoogleOidcVerifier::new(jwks, settings.push_audience.clone(), settings.push_service_accounts.clone());
    let (mut state, shutdown) = WorkerState::new(pool, relaxed, Arc::new(registry), verifier, &queue, settings.lease);
    if let Some(storage) = storage_from_env().await? {
        state = state.with_storage(storage, var("RUNQ_RESULTS_BUCKET")?);
    }
    if var("RUNQ_PUBSUB_PROJECT")?.or(var("GOOGLE_CLOUD_PROJECT")?).is_some() {
        // Child jobs are published at once; without Pub/Sub settings the relay publishes them.
        let dispatcher = Dispatcher::connect(&PubSubSettings::from_env()?).await?;
        let relaxed = store::connect_relaxed(&config.database_url, 2, config.db_acquire_timeout)?;
        state = state.with_outbox(Outbox::new(dispatcher, relaxed));
    }
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", config.port)).await?;
    tracing::info!(port = config.port, %queue, "runq worker listening");
    worker::serve(listener, state, shutdown, crate::server::shutdown_signal(), config.shutdown_grace).await?;
    Ok(())
}

/// `runq api`.
pub async fn api(registry: Registry, schedules: Schedules) -> Result<(), BoxError> {
    let config = Config::from_env()?;
    config.auth.require_any()?;
    let verifier = user_verifier(&config.auth)?;
    let pool = store::connect_lazy(&config.database_url, config.db_max_connections, config.db_acquire_timeout)?;
    if config.auto_migrate {
        store::migrate(&pool).await?;
    } else {
        store::check_schema(&pool).await?;
    }
    let registry = Arc::new(registry);
    let pubsub = match var("RUNQ_PUBSUB_PROJECT")?.or(var("GOOGLE_CLOUD_PROJECT")?) {
        Some(_) => {
            let settings = PubSubSettings::from_env()?;
            let dispatcher = Dispatcher::connect(&settings).await?;
            let relaxed = store::connect_relaxed(&config.database_url, 2, config.db_acquire_timeout)?;
            Some((settings, dispatcher.clone(), Outbox::new(dispatcher, relaxed)))
        }
        None => {
            tracing::warn!("no RUNQ_PUBSUB_PROJECT: jobs are recorded but not published to Pub/Sub");
            None
        }
    };
    let dead_letter = match var("RUNQ_DEAD_LETTER_AUDIENCE")? {
        Some(audience) => {
            let accounts = worker::list(var("RUNQ_DEAD_LETTER_SERVICE_ACCOUNTS")?);
            Some((GoogleOidcVerifier::new(google_jwks()?, audience, accounts), DeadLetterPolicy::default()))
        }
        None => None,
    };
    let scheduler = match var("RUNQ_SCHEDULER_AUDIENCE")? {
        Some(audience) => {
            let accounts = worker::list(var("RUNQ_SCHEDULER_SERVICE_ACCOUNTS")?);
            Some(GoogleOidcVerifier::new(google_jwks()?, audience, accounts))
        }
        None => None,
    };
    let secs = |name: &'static str, default| {
        crate::config::parse::<u64>(name, "seconds").map(|v| v.map_or(default, std::time::Duration::from_secs))
    };
    let runner = Runner {
        pool: pool.clone(),
        registry: registry.clone(),
        outbox: pubsub.as_ref().map(|p| p.2.clone()),
        dispatcher: pubsub.as_ref().map(|p| p.1.clone()),
        storage: storage_from_env().await?,
        retention: Retention::from_env()?,
        key_retention: config.idempotency_retention,
        redispatch_after: pubsub.as_ref().map_or(crate::dispatch::DEFAULT_REDISPATCH_AFTER, |p| p.0.redispatch_after),
        sweep_window: secs("RUNQ_SWEEP_WINDOW_SECS", DEFAULT_SWEEP_WINDOW)?,
        sweep_every: secs("RUNQ_SWEEP_EVERY_SECS", DEFAULT_SWEEP_EVERY)?,
    };
    let internal = Internal { dead_letter, scheduler, schedules: Arc::new(schedules), runner };
    let state = ApiState {
        pool: pool.clone(),
        registry,
        verifier,
        limits: Limits { max_args_bytes: config.max_args_bytes, idempotency_retention: config.idempotency_retention },
        outbox: pubsub.map(|p| p.2),
        watcher: Some(api::Watcher::start(pool.clone())),
        internal: Some(Arc::new(internal)),
    };
    let router = api::router(state, &config.cors_origins);
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", config.port)).await?;
    tracing::info!(port = config.port, "runq api listening");
    crate::server::serve(listener, router, crate::server::shutdown_signal(), config.shutdown_grace).await?;
    Ok(())
}

/// Builds the public API's token verifier from the `RUNQ_AUTH_*` settings.
pub fn user_verifier(auth: &AuthSettings) -> Result<UserVerifier, BoxError> {
    Ok(UserVerifier::new(auth.clone(), reqwest::Client::new())?)
}
