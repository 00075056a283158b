//! The [`App`]: the functions registered in code, and the `runq` command line that runs one
//! role of the system (`api`, `migrate`, `token`, `emulator`, ...) with them.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::api::{self, ApiState, Limits};
use crate::auth::{GoogleOidcVerifier, JwksCache, UserAuthConfig, UserVerifier, mint_hs256};
use crate::config::{AuthSettings, Config};
use crate::function::{Function, Registry};
use crate::job::Priority;
use crate::store;
use crate::worker::{self, WorkerSettings, WorkerState};

/// A runq application: the functions it can run. The shipped `runq` binary is
/// `App::new().run()`; users add their own functions and build their own binary.
pub struct App {
    registry: Registry,
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

impl App {
    /// An application with the built-in functions (`noop`, `sleep`, `echo`, `fail`).
    pub fn new() -> Self {
        Self { registry: Registry::builtin() }
    }

    /// An application with no functions at all.
    pub fn empty() -> Self {
        Self { registry: Registry::default() }
    }

    /// Registers a function.
    ///
    /// # Panics
    /// On a duplicate or invalid name or policy: a programming error found at start-up.
    pub fn function<F: Function>(mut self, function: F) -> Self {
        if let Err(e) = self.registry.register(function) {
            panic!("runq: {e}");
        }
        self
    }

    /// The registered functions.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Parses the command line and runs the chosen role until it finishes or is signalled.
    pub fn run(self) -> ExitCode {
        let cli = Cli::parse();
        let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: can't start the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        match runtime.block_on(self.run_command(cli.command)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "exiting");
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    }

    async fn run_command(self, command: Command) -> Result<(), Box<dyn std::error::Error>> {
        match command {
            Command::Api => {
                crate::telemetry::init();
                self.run_api().await
            }
            Command::Migrate => {
                crate::telemetry::init();
                let url = crate::config::var("DATABASE_URL")?
                    .ok_or_else(|| crate::config::ConfigError { var: "DATABASE_URL", reason: "is not set".into() })?;
                let pool = store::connect_lazy(&url, 1, Duration::from_secs(10))?;
                store::migrate(&pool).await?;
                tracing::info!("migrations applied");
                Ok(())
            }
            Command::Worker(args) => {
                crate::telemetry::init();
                self.run_worker(args.queue).await
            }
            Command::Dev(args) => {
                crate::telemetry::init();
                crate::dev::run(self.registry, args.api_addr, args.emulator_addr)
                    .await
                    .map_err(|e| -> Box<dyn std::error::Error> { e })
            }
            Command::Emulator(args) => {
                crate::telemetry::init();
                Ok(crate::emulator::run(args).await?)
            }
            Command::Token(args) => {
                let auth = AuthSettings::from_env()?;
                let secret = auth.hs256_secret.as_deref().ok_or_else(|| crate::config::ConfigError {
                    var: "RUNQ_AUTH_HS256_SECRET",
                    reason: "is not set; `runq token` signs with it".into(),
                })?;
                let token = mint_hs256(
                    secret,
                    &args.sub,
                    args.admin,
                    args.ttl,
                    &auth.admin_claim,
                    &auth.admin_value,
                    auth.issuer.as_deref(),
                    auth.audience.as_deref(),
                )?;
                println!("{token}");
                Ok(())
            }
            Command::Client(cmd) => std::process::exit(crate::client::run(cmd).await),
        }
    }

    async fn run_worker(self, queue: Priority) -> Result<(), Box<dyn std::error::Error>> {
        let config = Config::from_env()?;
        let settings = WorkerSettings::from_env()?;
        let pool = store::connect_lazy(&config.database_url, config.db_max_connections, config.db_acquire_timeout)?;
        let relaxed = store::connect_relaxed(&config.database_url, 2, config.db_acquire_timeout)?;
        store::check_schema(&pool).await?;
        let jwks = Arc::new(JwksCache::new(settings.oidc_jwks_url.clone(), reqwest::Client::new())?);
        let verifier =
            GoogleOidcVerifier::new(jwks, settings.push_audience.clone(), settings.push_service_accounts.clone());
        let (mut state, shutdown) =
            WorkerState::new(pool, relaxed, Arc::new(self.registry), verifier, queue, settings.lease);
        let results_bucket = crate::config::var("RUNQ_RESULTS_BUCKET")?;
        if results_bucket.is_some() || crate::config::var("STORAGE_EMULATOR_HOST")?.is_some() {
            let storage = crate::storage::BlobStore::new(&crate::storage::StorageSettings::from_env()?).await?;
            state = state.with_storage(Arc::new(storage), results_bucket);
        }
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", config.port)).await?;
        tracing::info!(port = config.port, %queue, "runq worker listening");
        worker::serve(listener, state, shutdown, shutdown_signal(), config.shutdown_grace).await?;
        Ok(())
    }

    async fn run_api(self) -> Result<(), Box<dyn std::error::Error>> {
        let config = Config::from_env()?;
        config.auth.require_any()?;
        let verifier = user_verifier(&config.auth)?;
        let pool = store::connect_lazy(&config.database_url, config.db_max_connections, config.db_acquire_timeout)?;
        if config.auto_migrate {
            store::migrate(&pool).await?;
        } else {
            store::check_schema(&pool).await?;
        }
        let outbox = match crate::config::var("RUNQ_PUBSUB_PROJECT")?.or(crate::config::var("GOOGLE_CLOUD_PROJECT")?) {
            Some(_) => {
                let settings = crate::dispatch::PubSubSettings::from_env()?;
                let dispatcher = crate::dispatch::Dispatcher::connect(&settings).await?;
                let relaxed = store::connect_relaxed(&config.database_url, 2, config.db_acquire_timeout)?;
                Some(crate::dispatch::Outbox::new(dispatcher, relaxed))
            }
            None => {
                tracing::warn!("no RUNQ_PUBSUB_PROJECT: jobs are recorded but not published to Pub/Sub");
                None
            }
        };
        let internal = match crate::config::var("RUNQ_DEAD_LETTER_AUDIENCE")? {
            Some(audience) => {
                let jwks_url = crate::config::var("RUNQ_OIDC_JWKS_URL")?
                    .unwrap_or_else(|| crate::auth::GOOGLE_JWKS_URL.to_owned());
                let jwks = Arc::new(JwksCache::new(jwks_url, reqwest::Client::new())?);
                let accounts = worker::list(crate::config::var("RUNQ_DEAD_LETTER_SERVICE_ACCOUNTS")?);
                Some(Arc::new(api::InternalAuth {
                    dead_letter: GoogleOidcVerifier::new(jwks, audience, accounts),
                    dead_letter_policy: api::DeadLetterPolicy::default(),
                }))
            }
            None => None,
        };
        let state = ApiState {
            pool,
            registry: Arc::new(self.registry),
            verifier,
            limits: Limits {
                max_args_bytes: config.max_args_bytes,
                idempotency_retention: config.idempotency_retention,
            },
            outbox,
            internal,
        };
        let router = api::router(state, &config.cors_origins);
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", config.port)).await?;
        tracing::info!(port = config.port, "runq api listening");
        api::serve(listener, router, shutdown_signal(), config.shutdown_grace).await?;
        Ok(())
    }
}

/// Builds the public API's token verifier from the `RUNQ_AUTH_*` settings.
pub fn user_verifier(auth: &AuthSettings) -> Result<UserVerifier, Box<dyn std::error::Error>> {
    let cfg = UserAuthConfig {
        hs256_secret: auth.hs256_secret.clone(),
        hs256_previous_secret: auth.hs256_previous_secret.clone(),
        jwks_url: auth.jwks_url.clone(),
        issuer: auth.issuer.clone(),
        audience: auth.audience.clone(),
        admin_claim: auth.admin_claim.clone(),
        admin_value: auth.admin_value.clone(),
        ..UserAuthConfig::default()
    };
    Ok(UserVerifier::new(cfg, reqwest::Client::new())?)
}

/// Resolves on SIGTERM (Cloud Run's stop signal) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// runq: background jobs for Google Cloud Run.
#[derive(Parser, Debug)]
#[command(name = "runq", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the public JSON API (Cloud Run service `runq-api`). Config from the environment.
    Api,
    /// Apply database migrations to DATABASE_URL and exit.
    Migrate,
    /// Print a local HS256 token signed with RUNQ_AUTH_HS256_SECRET.
    Token(TokenArgs),
    /// Serve a queue's push endpoint (Cloud Run service `runq-worker-{queue}`).
    Worker(WorkerArgs),
    /// Run everything in one process: API, a worker per priority, the Pub/Sub emulator, the sweep.
    Dev(DevArgs),
    /// Run the Pub/Sub emulator alone.
    Emulator(crate::emulator::EmulatorArgs),
    #[command(flatten)]
    Client(crate::client::ClientCommand),
}

#[derive(clap::Args, Debug)]
struct WorkerArgs {
    /// The queue this worker serves.
    #[arg(long, value_parser = parse_priority)]
    queue: Priority,
}

#[derive(clap::Args, Debug)]
struct DevArgs {
    /// Where the API listens.
    #[arg(long, env = "RUNQ_DEV_API_ADDR", default_value = "127.0.0.1:8080")]
    api_addr: String,
    /// Where the embedded Pub/Sub emulator listens.
    #[arg(long, env = "RUNQ_DEV_EMULATOR_ADDR", default_value = "127.0.0.1:8085")]
    emulator_addr: String,
}

fn parse_priority(raw: &str) -> Result<Priority, String> {
    raw.parse().map_err(|e: crate::job::UnknownPriority| e.to_string())
}

#[derive(clap::Args, Debug)]
struct TokenArgs {
    /// The token's subject: the owner of the jobs it submits.
    #[arg(long)]
    sub: String,
    /// Grant admin (sees every owner's jobs).
    #[arg(long)]
    admin: bool,
    /// Lifetime, like 30s, 15m, 1h or 7d.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    ttl: Duration,
}

/// Parses `90`, `90s`, `15m`, `1h`, `7d`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (digits, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len()));
    let n: u64 = digits.parse().map_err(|_| format!("{raw:?} is not a duration like 30s, 15m, 1h or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{raw:?}: unknown unit {unit:?}; use s, m, h or d")),
    };
    if secs == 0 {
        return Err("the duration must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
