//! Bulk operations (`POST /operations`): retry, cancel or delete every job a filter matches, in
//! batches, durably.
//!
//! The API [`create`]s the operation holding its lease and [`drive`]s it at once in the
//! background. Driving first freezes the matched jobs into `operation_jobs` (one statement,
//! bounded by the operation's `created_at`, so jobs submitted later are never swept in), then
//! works batches: each batch is one transaction that deletes up to [`BATCH`] rows of
//! `operation_jobs`, acts on their jobs with the action's status-guarded UPDATE (or DELETE), the
//! same statement over an id array that a client's action on one job runs, and counts them on
//! the operation, fenced by the lease holder. A batch commits whole or not at all, so a re-run
//! after a crash can't act on a job twice; a bulk delete then deletes the jobs' GCS results. If the process dies, the lease goes
//! stale and [`run_once`] (in every `runq.sweep`) takes the operation over where it stopped.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::job::{ErrorKind, Status};
use crate::storage::BlobStore;
use crate::store::{self, Narrowing, StoreError};

/// Jobs acted on per batch statement.
pub const BATCH: i64 = 1000;
/// How long a runner's lease lasts without a batch renewing it.
pub const LEASE: Duration = Duration::from_secs(30);
/// Takeovers of one operation before it is given up as `failed`.
pub const MAX_CLAIMS: i32 = 10;
/// How long freezing may search text no index serves (error text, an args field; see
/// [`Narrowing::unindexed`]): within the lease, so a slow search can't outlive its runner. An
/// operation whose search runs over it fails, saying so.
pub const FREEZE_SEARCH_TIMEOUT: Duration = Duration::from_secs(20);
/// Stale operations one `run_once` takes over.
const PER_PASS: i64 = 4;

/// What a bulk operation does to each job it matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// `failed` or `cancelled` jobs back to `queued` with a fresh attempt budget.
    Retry,
    /// `queued`/`retrying` jobs cancelled at once, `running` ones asked to stop.
    Cancel,
    /// Finished jobs (`succeeded`, `failed`, `cancelled`) deleted, their runs with them.
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::Cancel => "cancel",
            Action::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Action::Retry, Action::Cancel, Action::Delete].into_iter().find(|a| a.as_str() == s)
    }

    /// The statuses this action applies to; a status filter must be among them.
    pub fn statuses(self) -> &'static [Status] {
        match self {
            Action::Retry => &[Status::Failed, Status::Cancelled],
            Action::Cancel => &[Status::Queued, Status::Retrying, Status::Running],
            Action::Delete => &[Status::Succeeded, Status::Failed, Status::Cancelled],
        }
    }
}

/// Which jobs an operation acts on, as checked by the API.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this owner's jobs; `None`: every owner's (an admin's operation).
    pub owner: Option<String>,
    pub function: Option<String>,
    /// Non-empty, each among the action's [`Action::statuses`].
    pub statuses: Vec<Status>,
    pub error_kind: Option<ErrorKind>,
    /// `created_at >= created_after`.
    pub created_after: Option<DateTime<Utc>>,
    /// `created_at < created_before`.
    pub created_before: Option<DateTime<Utc>>,
    /// The dashboard's filters (the same as `GET /jobs`'), kept with the operation as JSON.
    pub narrow: Narrowing,
}

/// Appends the filter's conditions (after a `WHERE true`), each on an indexed column.
fn push_filter(q: &mut QueryBuilder<'_, Postgres>, f: &Filter) {
    if let Some(owner) = &f.owner {
        q.push(" AND owner = ").push_bind(owner.clone());
    }
    let statuses: Vec<String> = f.statuses.iter().map(|s| s.as_str().to_owned()).collect();
    q.push(" AND status = ANY(").push_bind(statuses).push("::text[])");
    if let Some(function) = &f.function {
        q.push(" AND function = ").push_bind(function.clone());
    }
    if let Some(kind) = f.error_kind {
        q.push(" AND error->>'kind' = ").push_bind(kind.as_str());
    }
    if let Some(after) = f.created_after {
        q.push(" AND created_at >= ").push_bind(after);
    }
    if let Some(before) = f.created_before {
        q.push(" AND created_at < ").push_bind(before);
    }
    f.narrow.push(q);
}

/// How many jobs the filter matches now (a dry run); the same predicate a real run freezes. An
/// unindexed search in it runs under `timeout` ([`StoreError::Timeout`] past it).
pub async fn count(pool: &PgPool, filter: &Filter, timeout: Duration) -> Result<i64, StoreError> {
    let mut q = QueryBuilder::new("SELECT count(*) FROM jobs WHERE true");
    push_filter(&mut q, filter);
    let mut tx = store::begin_search(pool, &filter.narrow, timeout).await?;
    let count = q.build_query_scalar().fetch_one(&mut *tx).await.map_err(store::timed_out)?;
    tx.commit().await?;
    Ok(count)
}

/// An operation as `GET /operations/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Operation {
    pub id: Uuid,
    /// Who started it (the token's `sub`).
    pub owner: String,
    pub action: String,
    pub filter: serde_json::Value,
    /// `running`, `finished` or `failed`.
    pub status: String,
    /// Jobs matched; `None` until they are counted (frozen).
    pub matched: Option<i64>,
    /// Matched jobs processed so far.
    pub done: i64,
    /// Of those, the jobs changed (the others had moved to another status in the meantime).
    pub affected: i64,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A new operation: who asks, what, on which jobs; `shown` is the filter as asked.
pub struct NewOperation<'a> {
    pub requester: &'a str,
    pub action: Action,
    pub filter: &'a Filter,
    pub shown: serde_json::Value,
    pub key_retention: Duration,
}

/// Records an operation, leased to the caller, who should [`drive`] it. Returns it and its
/// runner id.
pub async fn create(pool: &PgPool, new: &NewOperation<'_>) -> Result<(Operation, Uuid), StoreError> {
    let id = Uuid::now_v7();
    let runner = Uuid::new_v4();
    let f = new.filter;
    let statuses: Vec<String> = f.statuses.iter().map(|s| s.as_str().to_owned()).collect();
    let narrowing = (!f.narrow.is_empty()).then(|| Json(f.narrow.clone()));
    let row = sqlx::query!(
        r#"INSERT INTO operations (id, owner, action, filter, scope_owner, function, statuses, error_kind,
                                   created_after, created_before, key_retention_secs, runner, lease_until, narrowing)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, now() + make_interval(secs => $13), $14)
           RETURNING created_at, updated_at"#,
        id,
        new.requester,
        new.action.as_str(),
        new.shown,
        f.owner,
        f.function,
        &statuses,
        f.error_kind.map(ErrorKind::as_str),
        f.created_after,
        f.created_before,
        new.key_retention.as_secs_f64(),
        runner,
        LEASE.as_secs_f64(),
        narrowing as Option<Json<Narrowing>>,
    )
    .fetch_one(pool)
    .await?;
    let op = Operation {
        id,
        owner: new.requester.to_owned(),
        action: new.action.as_str().to_owned(),
        filter: new.shown.clone(),
        status: "running".into(),
        matched: None,
        done: 0,
        affected: 0,
        error: None,
        created_at: row.created_at,
        updated_at: row.updated_at,
        finished_at: None,
    };
    Ok((op, runner))
}

/// The operation, if it exists and `requester` may see it (`None` = admin, sees all).
pub async fn get(pool: &PgPool, id: Uuid, requester: Option<&str>) -> Result<Option<Operation>, StoreError> {
    let row = sqlx::query!(
        r#"SELECT id, owner, action, filter, status, frozen, matched, done, affected, error, created_at, updated_at,
                  finished_at
           FROM operations WHERE id = $1"#,
        id
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.filter(|r| requester.is_none_or(|o| r.owner == o)).map(|r| Operation {
        id: r.id,
        owner: r.owner,
        action: r.action,
        filter: r.filter,
        status: r.status,
        matched: r.frozen.then_some(r.matched),
        done: r.done,
        affected: r.affected,
        error: r.error,
        created_at: r.created_at,
        updated_at: r.updated_at,
        finished_at: r.finished_at,
    }))
}

/// An `operations` row as [`list`] reads it.
#[derive(sqlx::FromRow)]
struct OperationRow {
    id: Uuid,
    owner: String,
    action: String,
    filter: serde_json::Value,
    status: String,
    frozen: bool,
    matched: i64,
    done: i64,
    affected: i64,
    error: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

/// Operations newest first, at most `limit`: `requester`'s (`None` = admin, everyone's), older
/// than `before` (the keyset cursor). Built per filter so each query stays on its index
/// (`operations_owner_id`, or the primary key).
pub async fn list(
    pool: &PgPool,
    requester: Option<&str>,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Operation>, StoreError> {
    let mut q = QueryBuilder::new(
        "SELECT id, owner, action, filter, status, frozen, matched, done, affected, error, created_at, updated_at, \
         finished_at FROM operations WHERE true",
    );
    if let Some(owner) = requester {
        q.push(" AND owner = ").push_bind(owner);
    }
    if let Some(before) = before {
        q.push(" AND id < ").push_bind(before);
    }
    q.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
    let rows: Vec<OperationRow> = q.build_query_as().fetch_all(pool).await?;
    Ok(rows
        .into_iter()
        .map(|r| Operation {
            id: r.id,
            owner: r.owner,
            action: r.action,
            filter: r.filter,
            status: r.status,
            matched: r.frozen.then_some(r.matched),
            done: r.done,
            affected: r.affected,
            error: r.error,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
        })
        .collect())
}

/// Freezes the matched jobs into `operation_jobs`, once: a no-op (`false`) when already frozen
/// or when `runner` no longer holds the lease.
pub async fn freeze(pool: &PgPool, id: Uuid, runner: Uuid) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    let Some(op) = sqlx::query!(
        r#"SELECT scope_owner, function, statuses, error_kind, created_after, created_before, created_at,
                  narrowing AS "narrowing: Json<Narrowing>"
           FROM operations WHERE id = $1 AND runner = $2 AND status = 'running' AND NOT frozen FOR UPDATE"#,
        id,
        runner
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(false);
    };
    let statuses = op.statuses.iter().map(|s| s.parse::<Status>()).collect::<Result<Vec<_>, _>>();
    let error_kind = op.error_kind.as_deref().map(str::parse::<ErrorKind>).transpose();
    let (Ok(statuses), Ok(error_kind)) = (statuses, error_kind) else {
        return Err(StoreError::Other(sqlx::Error::Decode(
            "an operation's filter names an unknown status or kind".into(),
        )));
    };
    let filter = Filter {
        owner: op.scope_owner,
        function: op.function,
        statuses,
        error_kind,
        created_after: op.created_after,
        created_before: op.created_before,
        narrow: op.narrowing.map(|Json(n)| n).unwrap_or_default(),
    };
    let mut q = QueryBuilder::new("INSERT INTO operation_jobs (operation_id, job_id) SELECT ");
    q.push_bind(id).push(" , id FROM jobs WHERE true");
    push_filter(&mut q, &filter);
    q.push(" AND created_at <= ").push_bind(op.created_at).push(" ON CONFLICT DO NOTHING");
    if filter.narrow.unindexed() {
        let ms = FREEZE_SEARCH_TIMEOUT.as_millis().to_string();
        sqlx::query_scalar!("SELECT set_config('statement_timeout', $1, true)", ms).fetch_one(&mut *tx).await?;
    }
    let matched = match q.build().execute(&mut *tx).await.map_err(store::timed_out) {
        Ok(done) => done.rows_affected() as i64,
        Err(StoreError::Timeout) => {
            tx.rollback().await?;
            give_up(
                pool,
                id,
                runner,
                &format!(
                    "the filter's search ran over {} s: narrow it (status, function, created range)",
                    FREEZE_SEARCH_TIMEOUT.as_secs()
                ),
            )
            .await?;
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    sqlx::query!(
        "UPDATE operations SET frozen = true, matched = $3, lease_until = now() + make_interval(secs => $4),
                updated_at = now()
         WHERE id = $1 AND runner = $2",
        id,
        runner,
        matched,
        LEASE.as_secs_f64(),
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// One batch: up to `limit` of the frozen jobs acted on and counted, in one transaction fenced
/// by `runner` (the operation's row locked first): their `operation_jobs` rows deleted, the
/// action's one statement over their ids ([`store::retry_many`], [`store::cancel_many`],
/// [`store::delete_finished`], the same statements a client's retry, cancel or delete of one job
/// runs), the counts added. It commits whole or not at all, so no job is acted on twice. A
/// delete then removes the deleted jobs' result objects from GCS (`storage`), as cleanup does.
/// Returns how many were processed; `None` when the lease is lost (or the operation is no longer
/// running).
pub async fn step(
    pool: &PgPool,
    storage: Option<&BlobStore>,
    id: Uuid,
    runner: Uuid,
    limit: i64,
) -> Result<Option<i64>, StoreError> {
    let mut tx = pool.begin().await?;
    let op = sqlx::query!(
        "SELECT action, key_retention_secs FROM operations
         WHERE id = $1 AND runner = $2 AND status = 'running' AND frozen FOR UPDATE",
        id,
        runner
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some((action, key_retention)) = op.and_then(|op| Some((Action::parse(&op.action)?, op.key_retention_secs)))
    else {
        return Ok(None);
    };
    let batch: Vec<Uuid> = sqlx::query_scalar!(
        "DELETE FROM operation_jobs WHERE operation_id = $1 AND job_id IN (
             SELECT job_id FROM operation_jobs WHERE operation_id = $1 ORDER BY job_id LIMIT $2)
         RETURNING job_id",
        id,
        limit
    )
    .fetch_all(&mut *tx)
    .await?;
    // The owner was applied when the matches were frozen.
    let (affected, deleted) = match action {
        Action::Retry => (store::retry_many(&mut *tx, &batch, None).await?.len(), Vec::new()),
        Action::Cancel => (store::cancel_many(&mut *tx, &batch, None).await?.len(), Vec::new()),
        Action::Delete => {
            let retention = Duration::try_from_secs_f64(key_retention).unwrap_or_default();
            let deleted = store::delete_finished(&mut *tx, &batch, None, retention).await?;
            (deleted.len(), deleted)
        }
    };
    sqlx::query!(
        "UPDATE operations SET done = done + $3, affected = affected + $4,
                lease_until = now() + make_interval(secs => $5), updated_at = now()
         WHERE id = $1 AND runner = $2",
        id,
        runner,
        batch.len() as i64,
        affected as i64,
        LEASE.as_secs_f64(),
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    crate::maintenance::cleanup::delete_results(storage, &deleted).await;
    Ok(Some(batch.len() as i64))
}

/// Marks the operation `failed` with `error`, fenced by its runner; nothing was acted on.
async fn give_up(pool: &PgPool, id: Uuid, runner: Uuid, error: &str) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE operations SET status = 'failed', error = $3, runner = NULL, lease_until = NULL, finished_at = now(),
                updated_at = now()
         WHERE id = $1 AND runner = $2 AND status = 'running'",
        id,
        runner,
        error,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks the operation finished once nothing is left; `false` when the lease is lost.
async fn finish(pool: &PgPool, id: Uuid, runner: Uuid) -> Result<bool, StoreError> {
    let done = sqlx::query!(
        "UPDATE operations SET status = 'finished', finished_at = now(), updated_at = now(), runner = NULL,
                lease_until = NULL
         WHERE id = $1 AND runner = $2 AND status = 'running' AND frozen
           AND NOT EXISTS (SELECT 1 FROM operation_jobs WHERE operation_id = $1)",
        id,
        runner
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Works the operation to its end while `runner` holds its lease: freeze, batches, finish.
/// Returns `false` when the lease was lost to another runner.
pub async fn drive(pool: &PgPool, storage: Option<&BlobStore>, id: Uuid, runner: Uuid) -> Result<bool, StoreError> {
    freeze(pool, id, runner).await?;
    loop {
        // A cancel batch that takes workflow steps stops their workflows (a trigger), which can
        // deadlock with a step's outcome: the batch's transaction is rolled back whole, and is
        // tried again at once rather than left to the next sweep.
        match store::retrying_deadlocks(|| step(pool, storage, id, runner, BATCH)).await? {
            None => return Ok(false),
            Some(0) => return finish(pool, id, runner).await,
            Some(_) => {}
        }
    }
}

/// Takes over up to a few operations whose runner stopped renewing its lease (the API process
/// died) and works each to its end. One that has been taken over too often is marked `failed`.
/// Returns how many were resumed.
pub async fn run_once(pool: &PgPool, storage: Option<&BlobStore>) -> Result<usize, StoreError> {
    sqlx::query!(
        "UPDATE operations SET status = 'failed', error = 'given up after too many takeovers', runner = NULL,
                lease_until = NULL, finished_at = now(), updated_at = now()
         WHERE status = 'running' AND lease_until < now() AND claims >= $1",
        MAX_CLAIMS
    )
    .execute(pool)
    .await?;
    let claimed = sqlx::query!(
        "UPDATE operations SET runner = gen_random_uuid(), claims = claims + 1,
                lease_until = now() + make_interval(secs => $2), updated_at = now()
         WHERE id IN (SELECT id FROM operations WHERE status = 'running' AND lease_until < now()
                      ORDER BY lease_until LIMIT $1 FOR UPDATE SKIP LOCKED)
           AND status = 'running' AND lease_until < now()
         RETURNING id, runner AS \"runner!\"",
        PER_PASS,
        LEASE.as_secs_f64(),
    )
    .fetch_all(pool)
    .await?;
    for op in &claimed {
        tracing::info!(operation_id = %op.id, "resuming a bulk operation whose runner stopped");
        drive(pool, storage, op.id, op.runner).await?;
    }
    Ok(claimed.len())
}

/// Drives a just-created operation in the background (the API's answer doesn't wait for it).
/// On an error the lease lapses and [`run_once`] resumes it.
pub fn spawn(pool: PgPool, storage: Option<Arc<BlobStore>>, id: Uuid, runner: Uuid) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        match drive(&pool, storage.as_deref(), id, runner).await {
            Ok(true) => tracing::info!(operation_id = %id, "bulk operation finished"),
            Ok(false) => tracing::info!(operation_id = %id, "bulk operation taken over by another runner"),
            Err(e) => tracing::warn!(operation_id = %id, error = %e, "bulk operation stopped; runq.sweep resumes it"),
        }
    })
}
