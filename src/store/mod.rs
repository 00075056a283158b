//! Postgres, the source of truth: the pool, migrations, and every query on jobs.
//!
//! Each status change is one UPDATE guarded by the current status (never read-then-write), so
//! concurrent API instances, workers and the relay can't step on each other.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub mod coalesce;
mod history;
mod insights;
mod jobs;
pub mod limits;
mod runs;
mod workflows;

pub use history::*;
pub use insights::*;
pub use jobs::*;
pub use limits::{LimitedClaim, claim_limited};
pub use runs::*;
pub use workflows::*;

/// The migrations compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Postgres can't be reached or is shutting down: the caller should retry later (503).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The idempotency key was used before with a different request.
    #[error("idempotency key reused with a different request")]
    IdempotencyConflict,
    /// The idempotency key's job has been cleaned up, so it can't be returned again.
    #[error("idempotency key refers to a job that no longer exists")]
    IdempotencyExpiredJob,
    /// The schema is older than this binary needs and migrations are off.
    #[error("database schema is at version {found:?} but this runq needs {needed}: run `runq migrate`")]
    SchemaTooOld { found: Option<i64>, needed: i64 },
    /// A search ran over its `statement_timeout` ([`Narrowing::unindexed`]); nothing was written.
    #[error("the query ran over its statement timeout")]
    Timeout,
    /// Anything else: a bug or a broken database.
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_unavailable(&e) { StoreError::Unavailable(e) } else { StoreError::Other(e) }
    }
}

/// True for errors that mean "Postgres isn't there right now" rather than "this query is wrong".
fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Class 08: connection exceptions; 57P0x: shutting down / starting up; 53300: too many connections.
            code.starts_with("08") || code.starts_with("57P0") || code == "53300"
        }),
        _ => false,
    }
}

/// Opens a pool without waiting for Postgres: requests answer 503 until it is reachable.
pub fn connect_lazy(url: &str, max_connections: u32, acquire_timeout: Duration) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    let options = options.application_name("runq");
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .connect_lazy_with(options))
}

/// Opens a pool whose commits don't wait for the WAL flush (`synchronous_commit = off`), for
/// writes that may be lost in a crash at no cost but a stale value: progress, heartbeats,
/// dispatched marks. Kept apart from the durable pool so a busy API can't starve leases.
pub fn connect_relaxed(url: &str, max_connections: u32, acquire_timeout: Duration) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    let options = options.application_name("runq-relaxed").options([("synchronous_commit", "off")]);
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .connect_lazy_with(options))
}

/// A pool of one connection to `pool`'s server, kept open, for a `LISTEN` (`PgListener` holds
/// its connection for as long as it listens): a listener on `pool` itself would take one of its
/// connections for good, away from the requests or heartbeats it is sized for.
pub fn listener_pool(pool: &PgPool) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with((*pool.connect_options()).clone())
}

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Errors unless every migration this binary knows has been applied.
pub async fn check_schema(pool: &PgPool) -> Result<(), StoreError> {
    let needed = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let found: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .or_else(|e| match &e {
            // No migrations table at all: nothing applied.
            sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => Ok(None),
            _ => Err(e),
        })?;
    if found.is_none_or(|v| v < needed) {
        return Err(StoreError::SchemaTooOld { found, needed });
    }
    Ok(())
}

/// Unfinished jobs by priority and status, for the queue-depth gauge. On the partial indexes.
pub async fn depth(pool: &PgPool) -> Result<Vec<(String, String, i64)>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT priority, status, count(*) AS "count!" FROM jobs
           WHERE status IN ('queued', 'retrying', 'running') GROUP BY priority, status"#
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.priority, r.status, r.count)).collect())
}

/// True when a string or key anywhere in `value` holds a NUL, which `jsonb` can't store.
pub fn holds_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Checks that Postgres answers (for `/readyz`).
pub async fn ping(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}
