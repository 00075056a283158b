//! `runq dev`: the whole system in one process for a laptop or CI: the API, one worker per
//! priority, the embedded Pub/Sub emulator pushing to them with OIDC, and the sweep loop
//! (relay + reaper), against one Postgres database.

use std::time::Duration;

use google_cloud_pubsub::client::{SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::push_config::OidcToken;
use google_cloud_pubsub::model::{DeadLetterPolicy as PsDeadLetterPolicy, PushConfig, RetryPolicy};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, ApiSettings, DeadLetterPolicy};
use crate::auth::{GoogleCallers, UserAuthConfig};
use crate::config::DevConfig;
use crate::dispatch::{self, Dispatcher, PubSubSettings, anonymous};
use crate::emulator::{EmulatorHandle, EmulatorOptions};
use crate::function::Registry;
use crate::job::Priority;
use crate::maintenance;
use crate::schedule::Schedules;
use crate::services::{Connect, Services};
use crate::store;
use crate::worker::{self, WorkerSettings};

mod local;

pub use local::{DEV_CLUSTER_PORT, LocalCluster, dev_secret, find_database};

/// The service account the dev push subscriptions sign as.
pub const DEV_PUSH_ACCOUNT: &str = "runq-push@runq-dev.iam.gserviceaccount.com";
/// The service account `runq dev`'s workers call HTTP functions as: the `email` of their identity
/// tokens, signed by the embedded emulator (verify them against its JWKS).
pub const DEV_INVOKER_ACCOUNT: &str = "runq-invoker@runq-dev.iam.gserviceaccount.com";
/// The service account of the dev dead-letter subscription.
pub const DEV_DEAD_LETTER_ACCOUNT: &str = "runq-dead-letter@runq-dev.iam.gserviceaccount.com";

/// How to assemble a dev stack.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// The database (must exist; it is migrated).
    pub database_url: String,
    /// Where the API listens (`127.0.0.1:0` for any port).
    pub api_addr: String,
    /// Where the emulator listens.
    pub emulator_addr: String,
    /// How the API verifies tokens (an HS256 secret locally).
    pub auth: UserAuthConfig,
    /// Pub/Sub project and topic prefix.
    pub project: String,
    pub topic_prefix: String,
    /// How often the relay and reaper run.
    pub sweep_every: Duration,
    /// Leases of the workers' claims.
    pub lease: Duration,
    /// Push retry backoff bounds of the subscriptions.
    pub push_backoff: (Duration, Duration),
    /// Emulator test clock (1.0 = real time).
    pub emulator_time_scale: f64,
    /// How long runs may finish at shutdown.
    pub grace: Duration,
    /// Dead-letter rounds before a never-claimed job fails.
    pub dead_letter: DeadLetterPolicy,
    /// Queues served by a worker outside this process, at this push URL (tests run a real
    /// `runq worker` process there to kill it).
    pub external_workers: Vec<(String, String)>,
    /// GCS for the workers (an emulator's settings in dev and tests), and the results bucket.
    pub storage: Option<crate::storage::StorageSettings>,
    pub results_bucket: Option<String>,
    /// Browser origins allowed to call the API (a frontend's dev server).
    pub cors_origins: Vec<String>,
    /// What the workers start Cloud Run Job functions' executions with (`runq exec` of this
    /// binary by default; tests name the `runq` binary and its `runq.toml`). The stack adds the
    /// database, its emulator as the metadata server and its invoker account.
    pub launcher: Option<crate::worker::Launcher>,
}

impl DevOptions {
    /// Defaults for a laptop: API on `127.0.0.1:8080`, emulator on `127.0.0.1:8085`.
    pub fn new(database_url: String, secret: String) -> Self {
        Self {
            database_url,
            api_addr: "127.0.0.1:8080".into(),
            emulator_addr: "127.0.0.1:8085".into(),
            auth: UserAuthConfig { hs256_secret: Some(secret), ..UserAuthConfig::default() },
            project: "runq-dev".into(),
            topic_prefix: crate::dispatch::DEFAULT_TOPIC_PREFIX.into(),
            sweep_every: Duration::from_secs(1),
            lease: worker::DEFAULT_LEASE,
            push_backoff: (Duration::from_secs(1), Duration::from_secs(60)),
            emulator_time_scale: 1.0,
            grace: Duration::from_secs(5),
            dead_letter: DeadLetterPolicy { max_rounds: 5, backoff: Duration::from_secs(5) },
            external_workers: Vec::new(),
            storage: None,
            results_bucket: None,
            cors_origins: Vec::new(),
            launcher: None,
        }
    }
}

/// A running dev stack. [`DevStack::shutdown`] stops it the way Cloud Run would (SIGTERM).
pub struct DevStack {
    /// The API's base URL.
    pub api_url: String,
    /// Each worker's push URL.
    pub worker_urls: Vec<(String, String)>,
    /// The embedded emulator (`None` while a test has it stopped).
    pub emulator: Option<EmulatorHandle>,
    emulator_addr: std::net::SocketAddr,
    emulator_time_scale: f64,
    dead_letter_url: String,
    push_backoff: (Duration, Duration),
    /// The durable pool (for tests and tools).
    pub pool: PgPool,
    pub settings: PubSubSettings,
    pub dispatcher: Dispatcher,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| std::io::Error::new(e.kind(), format!("can't listen on {addr}: {e}")))
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl DevStack {
    /// Starts everything with the built-in schedules only.
    pub async fn start(options: DevOptions, registry: Registry) -> Result<Self, BoxError> {
        Self::start_with_schedules(options, registry, Schedules::builtin()).await
    }

    /// Starts everything, creates the topics and push subscriptions, and ticks `schedules`.
    pub async fn start_with_schedules(
        options: DevOptions,
        registry: Registry,
        schedules: Schedules,
    ) -> Result<Self, BoxError> {
        let emulator_listener = bind(&options.emulator_addr).await?;
        let emulator = crate::emulator::start(
            emulator_listener,
            EmulatorOptions { project: Some(options.project.clone()), ..EmulatorOptions::default() }
                .with_time_scale(options.emulator_time_scale),
        )
        .await?;
        // HTTP functions get their identity tokens from the emulator, standing in for the
        // metadata server of a Cloud Run instance.
        registry.http().tokens().set_source(crate::function::http::TokenSource {
            metadata_host: emulator.host(),
            account: DEV_INVOKER_ACCOUNT.into(),
        });
        let settings = PubSubSettings {
            emulator_host: Some(emulator.host()),
            project: options.project.clone(),
            topic_prefix: options.topic_prefix.clone(),
            redispatch_after: dispatch::DEFAULT_REDISPATCH_AFTER,
        };
        let connect = Connect {
            database_url: options.database_url.clone(),
            max_connections: 16,
            relaxed_connections: 4,
            acquire_timeout: Duration::from_secs(5),
            pubsub: Some(settings.clone()),
            storage: options.storage.clone(),
            oidc_jwks_url: emulator.jwks_url(),
        };
        let services = Services::connect(&connect, registry, schedules).await?;
        let publishing = services.publishing.clone().ok_or("the dev stack publishes to its emulator")?;
        store::migrate(&services.pool).await?;
        // The embedded emulator starts empty: whatever messages an earlier run published died
        // with it, so every queued job must be published again now, not a redispatch window later.
        let forgotten = maintenance::relay::forget_dispatches(&services.pool).await?;
        if forgotten > 0 {
            tracing::info!(jobs = forgotten, "fresh Pub/Sub emulator: queued jobs will be published again");
        }

        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut worker_urls = Vec::new();
        // A worker per priority, and per queue of a function's own.
        let queues: Vec<String> = Priority::ALL
            .iter()
            .map(|p| p.as_str().to_owned())
            .chain(services.registry.custom_queues().into_iter().map(str::to_owned))
            .collect();
        let mut launcher = options.launcher.clone().unwrap_or_else(crate::worker::Launcher::this_binary);
        launcher.env.push(("DATABASE_URL".into(), options.database_url.clone()));
        launcher.env.push(("GCE_METADATA_HOST".into(), emulator.host()));
        launcher.exec_args.extend(["--allow-http".into(), "--invoker-account".into(), DEV_INVOKER_ACCOUNT.into()]);
        for queue in queues {
            if let Some((_, url)) = options.external_workers.iter().find(|(q, _)| *q == queue) {
                worker_urls.push((queue, url.clone()));
                continue;
            }
            let listener = bind("127.0.0.1:0").await?;
            let url = format!("http://{}/push", listener.local_addr()?);
            let push = GoogleCallers { audience: url.clone(), service_accounts: vec![DEV_PUSH_ACCOUNT.into()] };
            let settings = WorkerSettings {
                lease: options.lease,
                grace: options.grace,
                results_bucket: options.results_bucket.clone(),
                executions: crate::worker::Executions::Subprocess(launcher.clone()),
                ..WorkerSettings::new(&queue, push)
            };
            let (services, signal, name) = (services.clone(), stopped(stop_rx.clone()), queue.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = worker::run(listener, settings, services, signal).await {
                    tracing::error!(error = %e, queue = %name, "worker stopped");
                }
            }));
            worker_urls.push((queue, url));
        }

        let api_listener = bind(&options.api_addr).await?;
        let api_url = format!("http://{}", api_listener.local_addr()?);
        let dead_letter_url = format!("{api_url}/internal/dead-letter");
        let dead_letter_callers =
            GoogleCallers { audience: dead_letter_url.clone(), service_accounts: vec![DEV_DEAD_LETTER_ACCOUNT.into()] };
        let api_settings = ApiSettings {
            grace: options.grace,
            // Migrated above, before the workers started.
            auto_migrate: false,
            dead_letter: Some((dead_letter_callers, options.dead_letter)),
            // Schedules fire here, through the same handler Cloud Scheduler calls over HTTP.
            local_schedules: Some(options.sweep_every),
            cors_origins: options.cors_origins.clone(),
            ..ApiSettings::new(options.auth.clone())
        };
        let (api_services, api_stop) = (services.clone(), stopped(stop_rx.clone()));
        tasks.push(tokio::spawn(async move {
            if let Err(e) = api::run(api_listener, api_settings, api_services, api_stop).await {
                tracing::error!(error = %e, "api stopped");
            }
        }));

        create_pubsub_layout(&emulator, &settings, &worker_urls, &dead_letter_url, options.push_backoff).await?;

        Ok(Self {
            api_url,
            worker_urls,
            emulator_addr: emulator.local_addr(),
            emulator: Some(emulator),
            emulator_time_scale: options.emulator_time_scale,
            dead_letter_url,
            push_backoff: options.push_backoff,
            pool: services.pool.clone(),
            settings,
            dispatcher: publishing.dispatcher,
            stop,
            tasks,
        })
    }

    /// The emulator's `host:port` (for `PUBSUB_EMULATOR_HOST`).
    pub fn emulator_host(&self) -> String {
        self.emulator_addr.to_string()
    }

    /// The emulator's JWKS URL (what workers verify push tokens against).
    pub fn jwks_url(&self) -> String {
        format!("http://{}/oauth2/v3/certs", self.emulator_addr)
    }

    /// Stops the emulator, as an outage would (its topics and messages are gone).
    pub async fn stop_emulator(&mut self) {
        if let Some(emulator) = self.emulator.take() {
            emulator.shutdown().await;
        }
    }

    /// Starts a fresh emulator on the same address and recreates the topics and subscriptions.
    pub async fn restart_emulator(&mut self) -> Result<(), BoxError> {
        self.stop_emulator().await;
        let listener = bind(&self.emulator_addr.to_string()).await?;
        let emulator = crate::emulator::start(
            listener,
            EmulatorOptions { project: Some(self.settings.project.clone()), ..EmulatorOptions::default() }
                .with_time_scale(self.emulator_time_scale),
        )
        .await?;
        create_pubsub_layout(&emulator, &self.settings, &self.worker_urls, &self.dead_letter_url, self.push_backoff)
            .await?;
        self.emulator = Some(emulator);
        maintenance::relay::forget_dispatches(&self.pool).await?;
        Ok(())
    }

    /// Stops everything and waits for it.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        self.stop_emulator().await;
    }
}

/// Creates the topics (one per priority and the dead-letter topic) and the push subscriptions
/// (to each worker, with OIDC, retry and dead-letter policies; the dead-letter topic to the API).
async fn create_pubsub_layout(
    emulator: &EmulatorHandle,
    settings: &PubSubSettings,
    worker_urls: &[(String, String)],
    dead_letter_url: &str,
    push_backoff: (Duration, Duration),
) -> Result<(), BoxError> {
    let topics = TopicAdmin::builder().with_endpoint(emulator.endpoint()).with_credentials(anonymous()).build().await?;
    let subs =
        SubscriptionAdmin::builder().with_endpoint(emulator.endpoint()).with_credentials(anonymous()).build().await?;
    let project = &settings.project;
    let dead_topic = format!("projects/{project}/topics/{}", settings.dead_letter_topic_id());
    topics.create_topic().set_name(&dead_topic).send().await?;
    let duration = |d: Duration| google_cloud_wkt::Duration::clamp(d.as_secs() as i64, 0);
    let retry =
        RetryPolicy::new().set_minimum_backoff(duration(push_backoff.0)).set_maximum_backoff(duration(push_backoff.1));
    for (queue, url) in worker_urls {
        let topic = settings.queue_topic(queue);
        topics.create_topic().set_name(&topic).send().await?;
        subs.create_subscription()
            .set_name(format!("projects/{project}/subscriptions/{}-worker-{queue}", settings.topic_prefix))
            .set_topic(&topic)
            .set_ack_deadline_seconds(600)
            .set_push_config(
                PushConfig::new()
                    .set_push_endpoint(url)
                    .set_oidc_token(OidcToken::new().set_service_account_email(DEV_PUSH_ACCOUNT).set_audience(url)),
            )
            .set_retry_policy(retry.clone())
            .set_dead_letter_policy(
                PsDeadLetterPolicy::new().set_dead_letter_topic(&dead_topic).set_max_delivery_attempts(5),
            )
            .send()
            .await?;
    }
    subs.create_subscription()
        .set_name(format!("projects/{project}/subscriptions/{}-dead-letter", settings.topic_prefix))
        .set_topic(&dead_topic)
        .set_ack_deadline_seconds(60)
        .set_push_config(PushConfig::new().set_push_endpoint(dead_letter_url).set_oidc_token(
            OidcToken::new().set_service_account_email(DEV_DEAD_LETTER_ACCOUNT).set_audience(dead_letter_url),
        ))
        .set_retry_policy(retry)
        .send()
        .await?;
    Ok(())
}

/// `runq dev`: starts the stack, prints how to use it, runs until Ctrl-C or SIGTERM.
pub async fn run(config: DevConfig, registry: Registry, schedules: Schedules) -> Result<(), BoxError> {
    let database_url = find_database(config.database.database_url.as_deref()).await?;
    let mut auth = config.auth.settings()?;
    let secret = dev_secret(auth.hs256_secret.as_deref())?;
    auth.hs256_secret = Some(secret.clone());
    let mut options = DevOptions::new(database_url, secret.clone());
    options.auth = auth.clone();
    options.api_addr = config.dev.api_addr();
    options.cors_origins = config.cors.cors_origins.clone();
    options.emulator_addr = config.dev.emulator_addr;
    options.storage = config.storage.settings();
    options.results_bucket = config.storage.results_bucket.clone();
    if let Some(path) = &config.declarations.config {
        // Executions of Cloud Run Job functions read the same declarations.
        let mut launcher = crate::worker::Launcher::this_binary();
        let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
        launcher.env.push(("RUNQ_CONFIG".into(), path.display().to_string()));
        options.launcher = Some(launcher);
    }
    let cors = options.cors_origins.join(", ");
    let stack = DevStack::start_with_schedules(options, registry, schedules).await?;
    let token = crate::auth::mint_hs256(
        &secret,
        "dev",
        true,
        Duration::from_secs(30 * 86_400),
        &auth.admin_claim,
        &auth.admin_value,
        auth.issuer.as_deref(),
        auth.audience.as_deref(),
    )?;
    println!("runq dev is up");
    println!("  API       {}", stack.api_url);
    println!("  Pub/Sub   export PUBSUB_EMULATOR_HOST={}", stack.emulator_host());
    println!("  token     export RUNQ_TOKEN={token}");
    println!("  invoker   HTTP functions are called as {DEV_INVOKER_ACCOUNT}, tokens verified by {}", stack.jwks_url());
    if !cors.is_empty() {
        println!("  CORS      {cors}");
    }
    println!("  try       runq submit sleep --args '{{\"seconds\": 5, \"steps\": 5}}' --wait");
    crate::server::shutdown_signal().await;
    println!("runq dev: shutting down");
    stack.shutdown().await;
    Ok(())
}
