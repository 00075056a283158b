//! The configuration tree: every environment variable runq reads, declared once, as clap
//! arguments grouped by what they configure.
//!
//! Each group is a `clap::Args` struct; a role's command flattens the groups it needs (so
//! `runq api --help` lists exactly the variables `runq api` reads, each with its default), and
//! converts them into the typed settings the modules take ([`crate::dispatch::PubSubSettings`],
//! [`crate::storage::StorageSettings`], [`crate::auth::UserAuthConfig`], ...). No other module
//! reads the environment. A value that can't be used stops start-up with an error that names its
//! variable; an empty variable counts as unset.

use std::time::Duration;

use clap::Args;
use clap::builder::TypedValueParser as _;

use crate::auth::{GoogleCallers, UserAuthConfig};
use crate::dispatch::PubSubSettings;
use crate::maintenance::Retention;
use crate::storage::StorageSettings;
use crate::telemetry::LogFormat;

/// Default listening port when `PORT` is unset (Cloud Run always sets it).
pub const DEFAULT_PORT: u16 = 8080;
/// Default limit on a job's `args`, in bytes.
pub const DEFAULT_MAX_ARGS_BYTES: usize = 1024 * 1024;
/// How long an idempotency key is kept, by default: 7 days.
pub const DEFAULT_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long an operator's unindexed search (error text, an args field) may run, by default.
pub const DEFAULT_SEARCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Default grace for in-flight requests after SIGTERM; Cloud Run kills 10 s after it.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(8);
/// Default wait for a pooled connection before a request is answered 503.
pub const DEFAULT_DB_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(3_000);

/// The instance name in claims when `K_REVISION` is unset (off Cloud Run).
pub const DEFAULT_INSTANCE: &str = "local";

/// A setting that is missing or can't be used together with the others.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    /// The environment variable's name.
    pub var: &'static str,
    /// What is wrong with it, and what it should be.
    pub reason: String,
}

impl ConfigError {
    fn new(var: &'static str, reason: impl Into<String>) -> Self {
        Self { var, reason: reason.into() }
    }
}

/// Logging.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log filter, in `tracing`'s `EnvFilter` syntax (`info`, `runq=debug,info`).
    #[arg(long = "log", env = "RUNQ_LOG", default_value = "info", value_name = "FILTER")]
    pub filter: String,
    /// `json` (Cloud Logging's structured lines) or `text`; `auto` is JSON unless stdout is a
    /// terminal (`runq dev`, run by a person: text).
    #[arg(long, env = "RUNQ_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
    /// The Google Cloud project: qualifies trace ids in logs, and is the Pub/Sub project when
    /// RUNQ_PUBSUB_PROJECT is unset. Default: none.
    #[arg(long, env = "GOOGLE_CLOUD_PROJECT", value_name = "PROJECT")]
    pub google_cloud_project: Option<String>,
    /// Export OpenTelemetry traces over OTLP/gRPC to this collector (`http://localhost:4317` for a
    /// sidecar collector on Cloud Run). Default: no traces.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL", value_parser = otlp_endpoint)]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans. Default: `runq-` and the role (`runq-api`,
    /// `runq-worker-high`, `runq-dev`).
    #[arg(long, env = "OTEL_SERVICE_NAME", value_name = "NAME")]
    pub otel_service_name: Option<String>,
}

/// An OTLP endpoint: an `http://` or `https://` URL with a host.
fn otlp_endpoint(value: &str) -> Result<String, String> {
    match value.parse::<http::Uri>() {
        Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => Ok(value.to_owned()),
        _ => Err(format!("`{value}` is not an http:// or https:// URL of an OTLP/gRPC collector")),
    }
}

impl LogArgs {
    /// Installs the global logger (and the trace exporter, when configured) with these
    /// settings; `role` names the service in traces unless OTEL_SERVICE_NAME does.
    pub fn install(&self, role: &str) -> Result<(), crate::telemetry::OtlpError> {
        self.install_as(self.log_format, role)
    }

    /// Installs the global logger for `runq dev`, which a person runs: `auto` is text there,
    /// whatever stdout is (`runq dev | tee dev.log` stays readable); JSON only when asked.
    pub fn install_local(&self) -> Result<(), crate::telemetry::OtlpError> {
        let format = match self.log_format {
            LogFormat::Auto => LogFormat::Text,
            chosen => chosen,
        };
        self.install_as(format, "dev")
    }

    fn install_as(&self, format: LogFormat, role: &str) -> Result<(), crate::telemetry::OtlpError> {
        let otlp = self.otlp_endpoint.as_ref().map(|endpoint| crate::telemetry::OtlpSettings {
            endpoint: endpoint.clone(),
            service: self.otel_service_name.clone().unwrap_or_else(|| format!("runq-{role}")),
        });
        crate::telemetry::init(&self.filter, format, self.google_cloud_project.clone(), otlp.as_ref())
    }
}

/// Serving HTTP.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Server")]
pub struct ServerArgs {
    /// Where to listen, on all interfaces (Cloud Run sets it).
    #[arg(long, env = "PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Seconds in-flight requests and runs may take to finish after SIGTERM.
    #[arg(long = "shutdown-grace-secs", env = "RUNQ_SHUTDOWN_GRACE_SECS", default_value = "8", value_parser = seconds)]
    pub shutdown_grace: Duration,
}

/// The Postgres database that holds the jobs.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Database")]
pub struct DatabaseArgs {
    /// Postgres URL (`postgres://user@host:5432/runq`). Required by `api`, `worker` and
    /// `migrate`; `runq dev` uses the local server (or starts one) when it is unset.
    #[arg(long, env = "DATABASE_URL", value_parser = postgres_url, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Pool size. Default: 4 per core (group commit wants several).
    #[arg(long, env = "RUNQ_DB_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub db_max_connections: Option<u32>,
    /// Milliseconds a request waits for a connection before it is answered 503.
    #[arg(long = "db-acquire-timeout-ms", env = "RUNQ_DB_ACQUIRE_TIMEOUT_MS", default_value = "3000", value_parser = millis)]
    pub db_acquire_timeout: Duration,
}

impl DatabaseArgs {
    /// The database URL, which the server roles require.
    pub fn url(&self) -> Result<&str, ConfigError> {
        self.database_url
            .as_deref()
            .ok_or_else(|| ConfigError::new("DATABASE_URL", "is not set; e.g. postgres://user@host:5432/runq"))
    }

    /// The pool size: the setting, or 4 per core.
    pub fn max_connections(&self) -> u32 {
        self.db_max_connections
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get() as u32) * 4)
    }
}

/// The public API's bearer tokens.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Tokens")]
pub struct AuthArgs {
    /// Secret of local HS256 tokens (`runq token`), at least 16 bytes. This or a JWKS is
    /// required. Default: none.
    #[arg(long, env = "RUNQ_AUTH_HS256_SECRET", value_parser = secret, hide_env_values = true)]
    pub auth_hs256_secret: Option<String>,
    /// The previous HS256 secret, still accepted during a rotation. Default: none.
    #[arg(long, env = "RUNQ_AUTH_HS256_PREVIOUS_SECRET", value_parser = secret, hide_env_values = true)]
    pub auth_hs256_previous_secret: Option<String>,
    /// The identity provider's key set (RS256/ES256), in production. Default: none.
    #[arg(long, env = "RUNQ_AUTH_JWKS_URL", value_parser = http_url)]
    pub auth_jwks_url: Option<String>,
    /// The `iss` tokens must carry; required with a JWKS. Default: none.
    #[arg(long, env = "RUNQ_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,
    /// The `aud` tokens must carry; required with a JWKS. Default: none.
    #[arg(long, env = "RUNQ_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,
    /// The claim that may grant admin.
    #[arg(long, env = "RUNQ_AUTH_ADMIN_CLAIM", default_value = crate::auth::DEFAULT_ADMIN_CLAIM)]
    pub auth_admin_claim: String,
    /// The value in that claim that grants admin.
    #[arg(long, env = "RUNQ_AUTH_ADMIN_VALUE", default_value = crate::auth::DEFAULT_ADMIN_VALUE)]
    pub auth_admin_value: String,
}

impl Default for AuthArgs {
    /// The defaults: no secret, no JWKS.
    fn default() -> Self {
        Self {
            auth_hs256_secret: None,
            auth_hs256_previous_secret: None,
            auth_jwks_url: None,
            auth_issuer: None,
            auth_audience: None,
            auth_admin_claim: crate::auth::DEFAULT_ADMIN_CLAIM.into(),
            auth_admin_value: crate::auth::DEFAULT_ADMIN_VALUE.into(),
        }
    }
}

impl AuthArgs {
    /// The token settings. With a JWKS, the issuer and audience are required.
    pub fn settings(&self) -> Result<UserAuthConfig, ConfigError> {
        if self.auth_jwks_url.is_some() {
            if self.auth_issuer.is_none() {
                return Err(ConfigError::new("RUNQ_AUTH_ISSUER", "is required when RUNQ_AUTH_JWKS_URL is set"));
            }
            if self.auth_audience.is_none() {
                return Err(ConfigError::new("RUNQ_AUTH_AUDIENCE", "is required when RUNQ_AUTH_JWKS_URL is set"));
            }
        }
        Ok(UserAuthConfig {
            hs256_secret: self.auth_hs256_secret.clone(),
            hs256_previous_secret: self.auth_hs256_previous_secret.clone(),
            jwks_url: self.auth_jwks_url.clone(),
            issuer: self.auth_issuer.clone(),
            audience: self.auth_audience.clone(),
            admin_claim: self.auth_admin_claim.clone(),
            admin_value: self.auth_admin_value.clone(),
            ..UserAuthConfig::default()
        })
    }

    /// The token settings of a server, which must be able to verify some token.
    pub fn required(&self) -> Result<UserAuthConfig, ConfigError> {
        if self.auth_hs256_secret.is_none() && self.auth_jwks_url.is_none() {
            return Err(ConfigError::new(
                "RUNQ_AUTH_HS256_SECRET",
                "is not set, nor is RUNQ_AUTH_JWKS_URL: set one so the API can verify tokens \
                 (locally: export RUNQ_AUTH_HS256_SECRET=$(openssl rand -hex 32))",
            ));
        }
        self.settings()
    }
}

/// Where jobs are published.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Pub/Sub")]
pub struct PubSubArgs {
    /// The project of the job topics (else GOOGLE_CLOUD_PROJECT). Unset on the API, jobs are
    /// recorded and not published. Default: none.
    #[arg(long, env = "RUNQ_PUBSUB_PROJECT", value_name = "PROJECT")]
    pub pubsub_project: Option<String>,
    /// A Pub/Sub emulator's `host:port`, used with anonymous credentials (the official crate
    /// ignores this variable; runq reads it). Default: Google's endpoint.
    #[arg(long, env = "PUBSUB_EMULATOR_HOST", value_name = "HOST:PORT")]
    pub pubsub_emulator_host: Option<String>,
    /// Topics are `{prefix}-jobs-{queue}` and `{prefix}-jobs-dead`.
    #[arg(long, env = "RUNQ_TOPIC_PREFIX", default_value = crate::dispatch::DEFAULT_TOPIC_PREFIX)]
    pub topic_prefix: String,
    /// Seconds after which the relay republishes a queued job whose message went unclaimed (the
    /// push ack deadline: Pub/Sub itself redelivers no sooner).
    #[arg(long = "redispatch-after-secs", env = "RUNQ_REDISPATCH_AFTER_SECS", default_value = "600", value_parser = seconds)]
    pub redispatch_after: Duration,
}

impl PubSubArgs {
    /// The Pub/Sub settings, when a project is configured (here or as `GOOGLE_CLOUD_PROJECT`).
    pub fn settings(&self, log: &LogArgs) -> Option<PubSubSettings> {
        let project = self.pubsub_project.clone().or_else(|| log.google_cloud_project.clone())?;
        Some(PubSubSettings {
            emulator_host: self.pubsub_emulator_host.clone(),
            project,
            topic_prefix: self.topic_prefix.clone(),
            redispatch_after: self.redispatch_after,
        })
    }
}

/// Cloud Storage, for large results and function inputs.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Cloud Storage")]
pub struct StorageArgs {
    /// Bucket for results over 64 KiB; without it such a run fails as `result_too_large`.
    /// Default: none.
    #[arg(long, env = "RUNQ_RESULTS_BUCKET", value_name = "BUCKET")]
    pub results_bucket: Option<String>,
    /// A GCS emulator (`http://127.0.0.1:4443`), used with anonymous credentials instead of
    /// Google with default credentials. Default: none.
    #[arg(long, env = "STORAGE_EMULATOR_HOST", value_name = "URL", value_parser = storage_emulator)]
    pub storage_emulator_host: Option<String>,
    /// Largest GCS object a function may read into memory, in bytes.
    #[arg(long, env = "RUNQ_STORAGE_MAX_READ_BYTES", default_value_t = crate::storage::DEFAULT_MAX_READ_BYTES,
          value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub storage_max_read_bytes: usize,
}

impl StorageArgs {
    /// The GCS settings, when a results bucket or an emulator is configured.
    pub fn settings(&self) -> Option<StorageSettings> {
        (self.results_bucket.is_some() || self.storage_emulator_host.is_some()).then(|| StorageSettings {
            emulator_host: self.storage_emulator_host.clone(),
            max_read_bytes: self.storage_max_read_bytes,
        })
    }
}

/// Google's OIDC tokens (Pub/Sub push, the dead-letter push, Cloud Scheduler).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Google callers")]
pub struct OidcArgs {
    /// The keys that sign push and internal tokens: Google's, or an emulator's locally.
    #[arg(long, env = "RUNQ_OIDC_JWKS_URL", default_value = crate::auth::GOOGLE_JWKS_URL, value_parser = http_url)]
    pub oidc_jwks_url: String,
}

/// Browsers on other origins (`runq api`, `runq dev`).
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "CORS")]
pub struct CorsArgs {
    /// Comma-separated browser origins allowed to call the API (`https://app.example.com`).
    /// Default: none (no CORS).
    #[arg(long, env = "RUNQ_CORS_ORIGINS", value_delimiter = ',', value_parser = origin, value_name = "ORIGINS")]
    pub cors_origins: Vec<String>,
}

/// The declarations file of the stock binary.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Declarations")]
pub struct DeclarationsArgs {
    /// A `runq.toml` declaring HTTP functions, queues, limits, workflows and schedules (what `App` declares
    /// in Rust), read at start; an error in it stops start-up naming its file, line and key.
    /// Default: none.
    #[arg(long = "config", env = "RUNQ_CONFIG", value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
}

/// What only `runq api` reads.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "API")]
pub struct ApiArgs {
    /// Apply migrations at start; when off, refuse to start on an older schema.
    #[arg(long, env = "RUNQ_AUTO_MIGRATE", default_value = "true", value_name = "BOOL",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub auto_migrate: bool,
    /// Largest `args` accepted, in bytes (1 to 67108864).
    #[arg(long, env = "RUNQ_MAX_ARGS_BYTES", default_value_t = DEFAULT_MAX_ARGS_BYTES,
          value_parser = clap::value_parser!(u64).range(1..=64 * 1024 * 1024).map(|n| n as usize))]
    pub max_args_bytes: usize,
    /// Seconds an `Idempotency-Key` is remembered.
    #[arg(long = "idempotency-retention-secs", env = "RUNQ_IDEMPOTENCY_RETENTION_SECS", default_value = "604800", value_parser = seconds)]
    pub idempotency_retention: Duration,
    /// Seconds an unindexed search of `GET /jobs` or a bulk dry run (error text, an args field)
    /// may run before it is cut off (`statement_timeout`) and answered 422.
    #[arg(long = "search-timeout-secs", env = "RUNQ_SEARCH_TIMEOUT_SECS", default_value = "5", value_parser = seconds)]
    pub search_timeout: Duration,
    /// The audience of the dead-letter topic's push tokens; enables `/internal/dead-letter`.
    /// Default: none.
    #[arg(long, env = "RUNQ_DEAD_LETTER_AUDIENCE", value_name = "AUDIENCE")]
    pub dead_letter_audience: Option<String>,
    /// Comma-separated service accounts allowed to push dead letters. Default: any verified.
    #[arg(long, env = "RUNQ_DEAD_LETTER_SERVICE_ACCOUNTS", value_delimiter = ',', value_name = "ACCOUNTS")]
    pub dead_letter_service_accounts: Vec<String>,
    /// The audience of Cloud Scheduler's tokens; enables `/internal/schedules/{name}`.
    /// Default: none.
    #[arg(long, env = "RUNQ_SCHEDULER_AUDIENCE", value_name = "AUDIENCE")]
    pub scheduler_audience: Option<String>,
    /// Comma-separated service accounts allowed to fire schedules. Default: any verified.
    #[arg(long, env = "RUNQ_SCHEDULER_SERVICE_ACCOUNTS", value_delimiter = ',', value_name = "ACCOUNTS")]
    pub scheduler_service_accounts: Vec<String>,
    /// Seconds one `runq.sweep` firing keeps sweeping.
    #[arg(long = "sweep-window-secs", env = "RUNQ_SWEEP_WINDOW_SECS", default_value = "50", value_parser = seconds_or_zero)]
    pub sweep_window: Duration,
    /// Seconds between the passes of one sweep firing.
    #[arg(long = "sweep-every-secs", env = "RUNQ_SWEEP_EVERY_SECS", default_value = "5", value_parser = seconds)]
    pub sweep_every: Duration,
    /// Seconds `runq.cleanup` keeps succeeded jobs (7 days).
    #[arg(long = "retention-succeeded-secs", env = "RUNQ_RETENTION_SUCCEEDED_SECS", default_value = "604800", value_parser = seconds)]
    pub retention_succeeded: Duration,
    /// Seconds `runq.cleanup` keeps failed jobs (30 days, for investigation).
    #[arg(long = "retention-failed-secs", env = "RUNQ_RETENTION_FAILED_SECS", default_value = "2592000", value_parser = seconds)]
    pub retention_failed: Duration,
    /// Seconds `runq.cleanup` keeps cancelled jobs (7 days).
    #[arg(long = "retention-cancelled-secs", env = "RUNQ_RETENTION_CANCELLED_SECS", default_value = "604800", value_parser = seconds)]
    pub retention_cancelled: Duration,
}

impl ApiArgs {
    /// How long finished jobs are kept.
    pub fn retention(&self) -> Retention {
        Retention {
            succeeded: self.retention_succeeded,
            failed: self.retention_failed,
            cancelled: self.retention_cancelled,
        }
    }

    /// The dead-letter push's callers, when that route is enabled.
    pub fn dead_letter_callers(&self) -> Option<GoogleCallers> {
        self.dead_letter_audience
            .clone()
            .map(|audience| GoogleCallers { audience, service_accounts: non_empty(&self.dead_letter_service_accounts) })
    }

    /// Cloud Scheduler's callers, when that route is enabled.
    pub fn scheduler_callers(&self) -> Option<GoogleCallers> {
        self.scheduler_audience
            .clone()
            .map(|audience| GoogleCallers { audience, service_accounts: non_empty(&self.scheduler_service_accounts) })
    }
}

/// What only `runq worker` reads.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Worker")]
pub struct WorkerArgs {
    /// The queue this worker serves: high, medium, low, or a queue of a function's own.
    #[arg(long, value_parser = queue_name)]
    pub queue: String,
    /// The `aud` of Pub/Sub's push tokens: the worker's URL. Required.
    #[arg(long, env = "RUNQ_PUSH_AUDIENCE", value_name = "URL")]
    pub push_audience: Option<String>,
    /// Comma-separated service accounts allowed to push. Default: any verified.
    #[arg(long, env = "RUNQ_PUSH_SERVICE_ACCOUNTS", value_delimiter = ',', value_name = "ACCOUNTS")]
    pub push_service_accounts: Vec<String>,
    /// Seconds a claim lives without a heartbeat (at least 3); heartbeats run every third of it.
    #[arg(long = "lease-secs", env = "RUNQ_LEASE_SECS", default_value = "30", value_parser = lease)]
    pub lease: Duration,
    /// The instance's name in claims, so an operator can tell which one ran a job (Cloud Run
    /// sets it to the revision).
    #[arg(long, env = "K_REVISION", value_name = "NAME", default_value = DEFAULT_INSTANCE)]
    pub instance: String,
    /// The Cloud Run Job (`projects/P/locations/R/jobs/J`, running runq's image) whose
    /// executions run Cloud Run Job functions. Default: none, they run as subprocesses of the
    /// worker (route them to a queue with CPU always allocated then).
    #[arg(long, env = "RUNQ_EXEC_JOB", value_name = "JOB", value_parser = cloud_run_job)]
    pub exec_job: Option<String>,
}

fn cloud_run_job(raw: &str) -> Result<String, String> {
    let parts: Vec<&str> = raw.split('/').collect();
    let valid = parts.len() == 6
        && parts[0] == "projects"
        && parts[2] == "locations"
        && parts[4] == "jobs"
        && [1, 3, 5].iter().all(|&i| !parts[i].is_empty());
    if valid {
        Ok(raw.to_owned())
    } else {
        Err(format!("{raw:?} is not a job name like projects/P/locations/R/jobs/J"))
    }
}

/// The identity HTTP functions are called with.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Identity")]
pub struct IdentityArgs {
    /// The metadata server that gives the identity tokens HTTP functions are called with (the
    /// variable Google's client libraries read too; the Pub/Sub emulator's address in tests).
    #[arg(long, env = "GCE_METADATA_HOST", value_name = "HOST:PORT",
          default_value = crate::function::http::DEFAULT_METADATA_HOST)]
    pub metadata_host: String,
}

/// What only `runq exec` reads: the claim it runs (the worker that claimed it passes these).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Execution")]
pub struct ExecArgs {
    /// The job.
    #[arg(long)]
    pub job_id: uuid::Uuid,
    /// The claim the worker took, which fences every write of this run.
    #[arg(long)]
    pub claim_id: uuid::Uuid,
    /// Seconds of the run's lease (the worker's), renewed every third of it.
    #[arg(long = "lease-secs", default_value = "30", value_parser = lease)]
    pub lease: Duration,
    /// The service account HTTP functions' tokens are for (`default`: the instance's own).
    #[arg(long, default_value = crate::function::http::DEFAULT_ACCOUNT)]
    pub invoker_account: String,
    /// Accept plain http:// URLs in `runq.toml` (the executions `runq dev` starts).
    #[arg(long)]
    pub allow_http: bool,
}

/// The whole of `runq exec`'s configuration.
#[derive(Args, Debug, Clone)]
pub struct ExecConfig {
    #[command(flatten)]
    pub exec: ExecArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub identity: IdentityArgs,
    #[command(flatten)]
    pub declarations: DeclarationsArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

impl WorkerArgs {
    /// The push callers: the audience is required.
    pub fn push_callers(&self) -> Result<GoogleCallers, ConfigError> {
        let audience = self.push_audience.clone().ok_or_else(|| {
            ConfigError::new(
                "RUNQ_PUSH_AUDIENCE",
                "is not set: the audience of Pub/Sub's push tokens (the worker's URL)",
            )
        })?;
        Ok(GoogleCallers { audience, service_accounts: non_empty(&self.push_service_accounts) })
    }
}

/// What only `runq dev` reads.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Dev")]
pub struct DevArgs {
    /// Where the API listens. Default: 127.0.0.1 on PORT.
    #[arg(long, env = "RUNQ_DEV_API_ADDR", value_name = "ADDR")]
    pub api_addr: Option<String>,
    /// The API's port on 127.0.0.1 when RUNQ_DEV_API_ADDR is unset (Cloud Run and most tools set
    /// PORT).
    #[arg(long, env = "PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Where the embedded Pub/Sub emulator listens.
    #[arg(long, env = "RUNQ_DEV_EMULATOR_ADDR", default_value = "127.0.0.1:8085")]
    pub emulator_addr: String,
}

impl DevArgs {
    /// Where the API listens: RUNQ_DEV_API_ADDR, else 127.0.0.1 on PORT.
    pub fn api_addr(&self) -> String {
        self.api_addr.clone().unwrap_or_else(|| format!("127.0.0.1:{}", self.port))
    }
}

/// The whole of `runq api`'s configuration.
#[derive(Args, Debug, Clone)]
pub struct ApiConfig {
    #[command(flatten)]
    pub declarations: DeclarationsArgs,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub pubsub: PubSubArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub oidc: OidcArgs,
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub cors: CorsArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// The whole of `runq worker`'s configuration.
#[derive(Args, Debug, Clone)]
pub struct WorkerConfig {
    #[command(flatten)]
    pub declarations: DeclarationsArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub identity: IdentityArgs,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub pubsub: PubSubArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub oidc: OidcArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// The whole of `runq dev`'s configuration.
#[derive(Args, Debug, Clone)]
pub struct DevConfig {
    #[command(flatten)]
    pub declarations: DeclarationsArgs,
    #[command(flatten)]
    pub dev: DevArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub cors: CorsArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// `runq migrate`'s configuration.
#[derive(Args, Debug, Clone)]
pub struct MigrateConfig {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

fn non_empty(list: &[String]) -> Vec<String> {
    list.iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
}

fn postgres_url(raw: &str) -> Result<String, String> {
    if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
        Ok(raw.to_owned())
    } else {
        Err("must be a postgres:// or postgresql:// URL".into())
    }
}

fn secret(raw: &str) -> Result<String, String> {
    if raw.len() < 16 { Err("is too short; use at least 16 random bytes".into()) } else { Ok(raw.to_owned()) }
}

fn http_url(raw: &str) -> Result<String, String> {
    if raw.starts_with("https://") || raw.starts_with("http://") {
        Ok(raw.to_owned())
    } else {
        Err(format!("{raw:?} is not an http(s) URL"))
    }
}

fn origin(raw: &str) -> Result<String, String> {
    let origin = raw.trim().trim_end_matches('/');
    if (origin.starts_with("https://") || origin.starts_with("http://")) && !origin.contains(char::is_whitespace) {
        Ok(origin.to_owned())
    } else {
        Err(format!("{raw:?} is not an origin like https://app.example.com"))
    }
}

fn storage_emulator(raw: &str) -> Result<String, String> {
    crate::storage::emulator_endpoint(raw).map(|_| raw.to_owned())
}

fn queue_name(raw: &str) -> Result<String, String> {
    if crate::job::valid_queue_name(raw) {
        Ok(raw.to_owned())
    } else {
        Err(format!("{raw:?} is not a queue name (1-30 characters of a-z, 0-9, '-', starting with a letter)"))
    }
}

fn seconds_or_zero(raw: &str) -> Result<Duration, String> {
    raw.trim().parse::<u64>().map(Duration::from_secs).map_err(|e| format!("{e}; expected whole seconds"))
}

fn seconds(raw: &str) -> Result<Duration, String> {
    match seconds_or_zero(raw)? {
        Duration::ZERO => Err("must be at least 1 second".into()),
        d => Ok(d),
    }
}

fn millis(raw: &str) -> Result<Duration, String> {
    raw.trim().parse::<u64>().map(Duration::from_millis).map_err(|e| format!("{e}; expected milliseconds"))
}

fn lease(raw: &str) -> Result<Duration, String> {
    match seconds(raw)? {
        d if d < Duration::from_secs(3) => Err("must be at least 3 seconds".into()),
        d => Ok(d),
    }
}

/// Every environment variable a command (and its subcommands) reads.
pub fn variables(command: &clap::Command) -> Vec<String> {
    let mut vars: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|v| v.to_string_lossy().into_owned())
        .chain(command.get_subcommands().flat_map(variables))
        .collect();
    vars.sort();
    vars.dedup();
    vars
}

/// Forgets the environment variables that are set but empty, so they count as unset (a
/// deployment template that writes `FOO=` means "no FOO", not "FOO is the empty string").
pub fn ignore_empty_variables(command: clap::Command) -> clap::Command {
    command
        .mut_args(|arg| match arg.get_env() {
            Some(name) if std::env::var_os(name).is_some_and(|v| v.is_empty()) => arg.env(None),
            _ => arg,
        })
        .mut_subcommands(ignore_empty_variables)
}

/// Adds to a clap error the environment variable its bad value came from: clap names the
/// argument (`--port <PORT>`), an operator set `PORT`.
pub fn name_the_variable(error: clap::Error, command: &clap::Command) -> String {
    use clap::error::{ContextKind, ContextValue};
    let rendered = error.render().to_string();
    let Some(ContextValue::String(invalid)) = error.get(ContextKind::InvalidArg) else { return rendered };
    let from_env = |cmd: &clap::Command| {
        cmd.get_arguments().find_map(|arg| {
            let long = arg.get_long()?;
            let env = arg.get_env()?;
            let matches = invalid.starts_with(&format!("--{long} ")) || invalid == &format!("--{long}");
            (matches && std::env::var_os(env).is_some()).then(|| env.to_string_lossy().into_owned())
        })
    };
    fn walk(cmd: &clap::Command, f: &dyn Fn(&clap::Command) -> Option<String>) -> Option<String> {
        f(cmd).or_else(|| cmd.get_subcommands().find_map(|c| walk(c, f)))
    }
    match walk(command, &from_env) {
        Some(var) => format!("{}\n(the value comes from the environment variable {var})\n", rendered.trim_end()),
        None => rendered,
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    /// A command of its own around the argument groups, parsed from no arguments at all.
    #[derive(Parser)]
    struct Defaults {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        worker: WorkerArgs,
    }

    #[test]
    fn the_exec_job_is_a_full_job_name() {
        assert!(cloud_run_job("projects/p/locations/europe-west1/jobs/runq-exec").is_ok());
        for bad in ["runq-exec", "projects/p/jobs/j", "projects//locations/r/jobs/j", "projects/p/locations/r/jobs/"] {
            assert!(cloud_run_job(bad).is_err(), "{bad}");
        }
    }

    /// The settings built without the config tree (`runq dev`, tests) start from the same
    /// defaults that the tree declares for `runq api` and `runq worker`.
    #[test]
    fn the_settings_defaults_are_the_trees_defaults() {
        let tree = Defaults::command()
            .mut_args(|arg| arg.env(None))
            .try_get_matches_from(["defaults", "--queue", "high"])
            .and_then(|m| <Defaults as clap::FromArgMatches>::from_arg_matches(&m))
            .unwrap();
        let api = crate::api::ApiSettings::new(UserAuthConfig::default());
        assert_eq!(tree.server.shutdown_grace, api.grace);
        assert_eq!(tree.api.max_args_bytes, api.limits.max_args_bytes);
        assert_eq!(tree.api.idempotency_retention, api.limits.idempotency_retention);
        assert_eq!(tree.api.search_timeout, api.limits.search_timeout);
        assert_eq!(tree.api.auto_migrate, api.auto_migrate);
        assert_eq!(tree.api.retention(), api.retention);
        assert_eq!(tree.api.sweep_window, api.sweep_window);
        assert_eq!(tree.api.sweep_every, api.sweep_every);
        assert_eq!(tree.database.db_acquire_timeout, DEFAULT_DB_ACQUIRE_TIMEOUT);
        let push = GoogleCallers { audience: "a".into(), service_accounts: Vec::new() };
        let worker = crate::worker::WorkerSettings::new("high", push);
        assert_eq!(tree.worker.lease, worker.lease);
        assert_eq!(tree.worker.instance, worker.instance);
        assert_eq!(tree.server.shutdown_grace, worker.grace);
    }
}
