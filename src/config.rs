//! Configuration from the environment only, validated at start.
//!
//! Every malformed or missing variable becomes a [`ConfigError`] that names it, so a service
//! that can't run stops at once with a message an operator can act on.

use std::str::FromStr;
use std::time::Duration;

/// Default listening port when `PORT` is unset (Cloud Run always sets it).
pub const DEFAULT_PORT: u16 = 8080;
/// Default limit on a job's `args`, in bytes.
pub const DEFAULT_MAX_ARGS_BYTES: usize = 1024 * 1024;
/// Default database used when `DATABASE_URL` is unset by `runq dev` and the CLI.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/runq";
/// How long an idempotency key is kept, by default: 7 days.
pub const DEFAULT_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default grace for in-flight requests after SIGTERM; Cloud Run kills 10 s after it.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// A variable that is missing or can't be used.
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

/// Reads `name`, treating an empty value as unset.
pub fn var(name: &'static str) -> Result<Option<String>, ConfigError> {
    match std::env::var(name) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::new(name, "is not valid UTF-8")),
    }
}

/// Reads and parses `name`; `what` describes a valid value for the error message.
pub fn parse<T: FromStr>(name: &'static str, what: &str) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match var(name)? {
        None => Ok(None),
        Some(raw) => raw
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| ConfigError::new(name, format!("invalid value {raw:?} ({e}); expected {what}"))),
    }
}

/// Reads a boolean: `1/true/yes/on` or `0/false/no/off`.
pub fn flag(name: &'static str) -> Result<Option<bool>, ConfigError> {
    match var(name)? {
        None => Ok(None),
        Some(raw) => match raw.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(Some(true)),
            "0" | "false" | "no" | "off" => Ok(Some(false)),
            _ => Err(ConfigError::new(name, format!("invalid value {raw:?}; expected true or false"))),
        },
    }
}

/// How the public API authenticates callers: [`crate::auth::UserAuthConfig`], read from the
/// `RUNQ_AUTH_*` variables here.
pub use crate::auth::UserAuthConfig as AuthSettings;

impl AuthSettings {
    /// Reads the `RUNQ_AUTH_*` variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        let hs256_secret = var("RUNQ_AUTH_HS256_SECRET")?;
        let hs256_previous_secret = var("RUNQ_AUTH_HS256_PREVIOUS_SECRET")?;
        for (name, secret) in
            [("RUNQ_AUTH_HS256_SECRET", &hs256_secret), ("RUNQ_AUTH_HS256_PREVIOUS_SECRET", &hs256_previous_secret)]
        {
            if secret.as_ref().is_some_and(|s| s.len() < 16) {
                return Err(ConfigError::new(name, "is too short; use at least 16 random bytes"));
            }
        }
        let jwks_url = var("RUNQ_AUTH_JWKS_URL")?;
        if let Some(url) = &jwks_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(ConfigError::new("RUNQ_AUTH_JWKS_URL", format!("{url:?} is not an http(s) URL")));
        }
        let issuer = var("RUNQ_AUTH_ISSUER")?;
        let audience = var("RUNQ_AUTH_AUDIENCE")?;
        if jwks_url.is_some() {
            if issuer.is_none() {
                return Err(ConfigError::new("RUNQ_AUTH_ISSUER", "is required when RUNQ_AUTH_JWKS_URL is set"));
            }
            if audience.is_none() {
                return Err(ConfigError::new("RUNQ_AUTH_AUDIENCE", "is required when RUNQ_AUTH_JWKS_URL is set"));
            }
        }
        let defaults = Self::default();
        Ok(Self {
            hs256_secret,
            hs256_previous_secret,
            jwks_url,
            issuer,
            audience,
            admin_claim: var("RUNQ_AUTH_ADMIN_CLAIM")?.unwrap_or(defaults.admin_claim),
            admin_value: var("RUNQ_AUTH_ADMIN_VALUE")?.unwrap_or(defaults.admin_value),
            leeway_secs: defaults.leeway_secs,
        })
    }

    /// Errors unless some way to verify tokens is configured.
    pub fn require_any(&self) -> Result<(), ConfigError> {
        if self.hs256_secret.is_none() && self.jwks_url.is_none() {
            return Err(ConfigError::new(
                "RUNQ_AUTH_HS256_SECRET",
                "is not set, nor is RUNQ_AUTH_JWKS_URL: set one so the API can verify tokens \
                 (locally: export RUNQ_AUTH_HS256_SECRET=$(openssl rand -hex 32))",
            ));
        }
        Ok(())
    }
}

/// Settings shared by the roles that serve HTTP and talk to Postgres.
#[derive(Debug, Clone)]
pub struct Config {
    /// `PORT`: where to listen (all interfaces), default 8080.
    pub port: u16,
    /// `DATABASE_URL`: the Postgres database that holds the jobs.
    pub database_url: String,
    /// `RUNQ_DB_MAX_CONNECTIONS`: pool size, default 4 per core (group commit wants several).
    pub db_max_connections: u32,
    /// `RUNQ_DB_ACQUIRE_TIMEOUT_MS`: how long a request waits for a connection before a 503.
    pub db_acquire_timeout: Duration,
    /// `RUNQ_AUTO_MIGRATE`: apply migrations at start (default on locally; off in deployed services).
    pub auto_migrate: bool,
    /// `RUNQ_MAX_ARGS_BYTES`: largest accepted `args`, default 1 MiB.
    pub max_args_bytes: usize,
    /// `RUNQ_IDEMPOTENCY_RETENTION_SECS`: how long idempotency keys are kept.
    pub idempotency_retention: Duration,
    /// `RUNQ_CORS_ORIGINS`: comma-separated browser origins allowed to call the API.
    pub cors_origins: Vec<String>,
    /// `RUNQ_SHUTDOWN_GRACE_SECS`: how long in-flight requests may finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// `RUNQ_AUTH_*`.
    pub auth: AuthSettings,
}

impl Config {
    /// Reads and validates the whole configuration.
    pub fn from_env() -> Result<Self, ConfigError> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
        let database_url = var("DATABASE_URL")?
            .ok_or_else(|| ConfigError::new("DATABASE_URL", "is not set; e.g. postgres://user@host:5432/runq"))?;
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(ConfigError::new("DATABASE_URL", "must be a postgres:// or postgresql:// URL"));
        }
        let max_args_bytes =
            parse::<usize>("RUNQ_MAX_ARGS_BYTES", "a size in bytes")?.unwrap_or(DEFAULT_MAX_ARGS_BYTES);
        if max_args_bytes == 0 || max_args_bytes > 64 * 1024 * 1024 {
            return Err(ConfigError::new("RUNQ_MAX_ARGS_BYTES", "must be between 1 and 67108864"));
        }
        let db_max_connections = parse::<u32>("RUNQ_DB_MAX_CONNECTIONS", "a positive integer")?.unwrap_or(cores * 4);
        if db_max_connections == 0 {
            return Err(ConfigError::new("RUNQ_DB_MAX_CONNECTIONS", "must be at least 1"));
        }
        let cors_origins: Vec<String> = var("RUNQ_CORS_ORIGINS")?
            .map(|v| {
                v.split(',').map(|o| o.trim().trim_end_matches('/').to_owned()).filter(|o| !o.is_empty()).collect()
            })
            .unwrap_or_default();
        if let Some(bad) = cors_origins
            .iter()
            .find(|o| !(o.starts_with("https://") || o.starts_with("http://")) || o.contains(char::is_whitespace))
        {
            return Err(ConfigError::new(
                "RUNQ_CORS_ORIGINS",
                format!("{bad:?} is not an origin like https://app.example.com"),
            ));
        }
        Ok(Self {
            port: parse("PORT", "a TCP port number")?.unwrap_or(DEFAULT_PORT),
            database_url,
            db_max_connections,
            db_acquire_timeout: Duration::from_millis(
                parse("RUNQ_DB_ACQUIRE_TIMEOUT_MS", "milliseconds")?.unwrap_or(3_000),
            ),
            auto_migrate: flag("RUNQ_AUTO_MIGRATE")?.unwrap_or(true),
            max_args_bytes,
            idempotency_retention: parse("RUNQ_IDEMPOTENCY_RETENTION_SECS", "seconds")?
                .map_or(DEFAULT_IDEMPOTENCY_RETENTION, Duration::from_secs),
            cors_origins,
            shutdown_grace: parse("RUNQ_SHUTDOWN_GRACE_SECS", "seconds")?
                .map_or(DEFAULT_SHUTDOWN_GRACE, Duration::from_secs),
            auth: AuthSettings::from_env()?,
        })
    }
}
