//! Jobs as clients see them: submit (with idempotency), read, cancel, list.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::StoreError;
use super::coalesce::{Coalescer, each_on_failure};
use crate::job::{ErrorKind, Job, JobError, JobStatus, Priority, Status, poll_after_ms};

/// A `jobs` row as stored.
#[derive(Debug, sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    owner: String,
    function: String,
    priority: Priority,
    queue: Option<String>,
    args: serde_json::Value,
    status: Status,
    progress: f32,
    message: Option<String>,
    attempt: i32,
    max_attempts: i32,
    run_after: DateTime<Utc>,
    cancel_requested: bool,
    idempotency_key: Option<String>,
    unique_key: Option<String>,
    parent_id: Option<Uuid>,
    result: Option<serde_json::Value>,
    result_uri: Option<String>,
    error: Option<Json<JobError>>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
}

/// The columns of [`JobRow`], for queries built at run time.
const JOB_COLUMNS: &str = "id, owner, function, priority, queue, args, status, progress, message, attempt, max_attempts, \
     run_after, cancel_requested, idempotency_key, unique_key, parent_id, result, result_uri, error, created_at, started_at, \
     finished_at, updated_at";

impl JobRow {
    fn into_job(self, now: DateTime<Utc>) -> Job {
        let status = self.status;
        Job {
            status: JobStatus {
                id: self.id,
                status,
                progress: self.progress,
                message: self.message,
                attempt: self.attempt,
                max_attempts: self.max_attempts,
                created_at: self.created_at,
                started_at: self.started_at,
                finished_at: self.finished_at,
                updated_at: self.updated_at,
                poll_after_ms: poll_after_ms(status, self.run_after, now),
                workflow: None,
            },
            function: self.function,
            queue: self.queue.unwrap_or_else(|| self.priority.as_str().to_owned()),
            priority: self.priority,
            args: self.args,
            run_after: self.run_after,
            cancel_requested: self.cancel_requested,
            result: self.result,
            result_uri: self.result_uri,
            error: self.error.map(|Json(e)| e),
            parent_id: self.parent_id,
            idempotency_key: self.idempotency_key,
            unique_key: self.unique_key,
            children: None,
        }
    }

    /// The owner, for access checks by callers that read by id alone.
    fn owner(&self) -> &str {
        &self.owner
    }
}

/// A new job as [`crate::submit::validate`] checked it: what runs, on which queue, how often and
/// from when. Who owns it is the insert's to say: the caller of a [`NewJob`], the parent of
/// [`spawn_children`].
#[derive(Debug, Clone)]
pub struct JobSpec<'a> {
    pub function: &'a str,
    pub priority: Priority,
    /// The function's own queue, if it has one (else the priority's).
    pub queue: Option<&'a str>,
    pub args: &'a RawValue,
    pub max_attempts: i32,
    /// Not due before this many seconds from the insert, by the database's clock (a delayed
    /// submit). Never a time from this process's clock, which may be skewed.
    pub delay_secs: Option<f64>,
    /// At most one live (queued, retrying or running) job per owner with this key: see
    /// [`submit`]; [`submit_many`] and [`spawn_children`] honour it too.
    pub unique_key: Option<&'a str>,
    /// With `unique_key`: a submit while the key's job is still queued replaces its args and
    /// pushes it back to this many seconds from now (`delay_secs` is then the same).
    pub debounce_secs: Option<f64>,
    /// The limit keys it takes a slot of before it runs (sorted; empty without limits).
    pub limit_keys: Vec<String>,
}

/// A job a caller submits (a client, a schedule), owned by that caller.
#[derive(Debug)]
pub struct NewJob<'a> {
    pub id: Uuid,
    pub owner: &'a str,
    pub spec: JobSpec<'a>,
    pub trace_context: Option<&'a str>,
    /// The key and a hash of the request it came with.
    pub idempotency: Option<(&'a str, [u8; 32])>,
}

/// What a submit did.
#[derive(Debug)]
pub struct Submitted {
    pub job: Job,
    /// False when an earlier submit with the same idempotency key and request created it, or
    /// when the job is the live job of the submit's unique key.
    pub created: bool,
    /// The submit wrote no new job: `job` is the live job of its unique key (for a debounced
    /// submit, with the submit's args and pushed back).
    pub deduplicated: bool,
}

/// Inserts a job (and its idempotency key) in one transaction, committed durably.
///
/// A repeated key with the same request hash returns the first job; with another hash it is a
/// conflict. Two concurrent submits with one key serialize on the key's primary key. An
/// idempotency replay wins over the unique key: it answers with the job the first submit got.
///
/// With a unique key (`jobs_unique_live`, one live job per owner, key and slot), a submit whose
/// key has a live job inserts nothing and answers with that job (`deduplicated`). Debounced, it
/// instead pushes the key's queued job back with its own args ([`debounce_queued`]); when the
/// key's job already runs, it inserts the follow-up in slot 1, which later debounced submits
/// push back in turn. Still one transaction and one durable commit.
pub async fn submit(pool: &PgPool, new: &NewJob<'_>, key_retention: Duration) -> Result<Submitted, StoreError> {
    let mut tx = pool.begin().await?;
    if let Some((key, hash)) = new.idempotency {
        let retention_secs = key_retention.as_secs_f64();
        // A key is free again only once it has expired AND its job is gone (a job may live
        // longer than the key's retention: failed jobs, long delays); else its job is the answer.
        let claimed: Option<Uuid> = sqlx::query_scalar!(
            "INSERT INTO idempotency_keys (owner, key, request_hash, job_id, expires_at)
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
             ON CONFLICT (owner, key) DO UPDATE
                SET request_hash = EXCLUDED.request_hash, job_id = EXCLUDED.job_id,
                    created_at = now(), expires_at = EXCLUDED.expires_at
                WHERE idempotency_keys.expires_at < now()
                  AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = idempotency_keys.job_id)
             RETURNING job_id",
            new.owner,
            key,
            &hash[..],
            new.id,
            retention_secs,
        )
        .fetch_optional(&mut *tx)
        .await?;
        if claimed.is_none() {
            let existing = sqlx::query!(
                "SELECT request_hash, job_id FROM idempotency_keys WHERE owner = $1 AND key = $2",
                new.owner,
                key
            )
            .fetch_one(&mut *tx)
            .await?;
            tx.rollback().await?;
            if existing.request_hash != hash {
                return Err(StoreError::IdempotencyConflict);
            }
            let job = get(pool, existing.job_id, Some(new.owner)).await?;
            return match job {
                Some(job) => Ok(Submitted { job, created: false, deduplicated: false }),
                None => Err(StoreError::IdempotencyExpiredJob),
            };
        }
    }
    let Some(key) = new.spec.unique_key else {
        let row = insert(&mut tx, new, 0, None).await?.ok_or(sqlx::Error::RowNotFound)?;
        tx.commit().await?;
        return Ok(Submitted { job: row.into_job(Utc::now()), created: true, deduplicated: false });
    };
    let (row, created) = submit_unique(&mut tx, new, key, None).await?;
    if !created && new.idempotency.is_some() {
        // The key's replays answer with the job this submit was deduplicated to.
        sqlx::query!(
            "UPDATE idempotency_keys SET job_id = $3 WHERE owner = $1 AND key = $2",
            new.owner,
            new.idempotency.map(|(k, _)| k),
            row.id
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Submitted { job: row.into_job(Utc::now()), created, deduplicated: !created })
}

/// A keyed submit inside `tx` (a submit's, a batch's or a spawn's): the key's live job, or
/// `new` inserted (with `parent`, for a child job), or for a debounced submit the key's queued job
/// pushed back with `new`'s args. Returns the row and whether it was created. The statements
/// see what committed before each began (read committed) and what `tx` itself wrote, so the
/// items of one batch are deduplicated against each other as against other submits.
async fn submit_unique(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    new: &NewJob<'_>,
    key: &str,
    parent: Option<Uuid>,
) -> Result<(JobRow, bool), StoreError> {
    // Each statement below sees what committed before it began (read committed): a conflicting
    // insert waits for the other submit's commit, and the next read sees its row. A few rounds
    // settle any race with a job finishing or being claimed in between.
    for _ in 0..4 {
        if let Some(debounce) = new.spec.debounce_secs {
            if let Some(row) = debounce_queued(tx, new, key, debounce).await? {
                return Ok((row, false));
            }
            if let Some(row) = insert(tx, new, 0, parent).await? {
                return Ok((row, true));
            }
            if let Some(row) = debounce_queued(tx, new, key, debounce).await? {
                return Ok((row, false));
            }
            // Slot 0's job runs (or waits to retry): the follow-up goes in slot 1.
            if let Some(row) = insert(tx, new, 1, parent).await? {
                return Ok((row, true));
            }
        } else {
            // Read first: a debounce's follow-up may hold the key in slot 1 with slot 0 free.
            if let Some(row) = live_with_key(tx, new.owner, key).await? {
                return Ok((row, false));
            }
            if let Some(row) = insert(tx, new, 0, parent).await? {
                return Ok((row, true));
            }
            if let Some(row) = live_with_key(tx, new.owner, key).await? {
                return Ok((row, false));
            }
        }
    }
    // Debounced, both slots running or retrying: the newest live job is the answer.
    Ok((live_with_key(tx, new.owner, key).await?.ok_or(sqlx::Error::RowNotFound)?, false))
}

/// Inserts `new` (its unique key, if any, in `slot`; a child of `parent`, if given); `None` when
/// the key's slot is taken by a live job.
async fn insert(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    new: &NewJob<'_>,
    slot: i16,
    parent: Option<Uuid>,
) -> Result<Option<JobRow>, StoreError> {
    let row = sqlx::query_as!(
        JobRow,
        r#"INSERT INTO jobs (id, owner, function, priority, args, status, max_attempts, run_after,
                             trace_context, idempotency_key, queue, unique_key, unique_slot, parent_id, limit_keys)
           VALUES ($1, $2, $3, $4, $5::text::jsonb, 'queued', $6, now() + make_interval(secs => coalesce($7::float8, 0)),
                   $8, $9, $10, $11, $12, $13, nullif($14::text[], '{}'))
           ON CONFLICT DO NOTHING
           RETURNING id, owner, function, priority AS "priority: Priority", queue, args, status AS "status: Status",
                     progress, message, attempt, max_attempts, run_after, cancel_requested, idempotency_key, unique_key,
                     parent_id, result, result_uri, error AS "error: Json<JobError>",
                     created_at, started_at, finished_at, updated_at"#,
        new.id,
        new.owner,
        new.spec.function,
        new.spec.priority as Priority,
        new.spec.args.get(),
        new.spec.max_attempts,
        new.spec.delay_secs,
        new.trace_context,
        new.idempotency.map(|(key, _)| key),
        new.spec.queue,
        new.spec.unique_key,
        slot,
        parent,
        &new.spec.limit_keys,
    )
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row)
}

/// The debounce step: the key's newest queued job takes `new`'s args and is pushed back to
/// `debounce` seconds after this statement ran (`clock_timestamp()`, so of concurrent submits
/// the last to commit is also the latest), undispatched so the relay publishes it when due. A
/// message already published for it finds it not due and is acknowledged.
async fn debounce_queued(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    new: &NewJob<'_>,
    key: &str,
    debounce: f64,
) -> Result<Option<JobRow>, StoreError> {
    let row = sqlx::query_as!(
        JobRow,
        r#"UPDATE jobs SET args = $3::text::jsonb,
                  run_after = clock_timestamp() + make_interval(secs => $4),
                  dispatched_at = NULL, updated_at = clock_timestamp()
           WHERE id = (SELECT id FROM jobs WHERE owner = $1 AND unique_key = $2 AND status = 'queued'
                       ORDER BY created_at DESC LIMIT 1 FOR UPDATE)
             AND status = 'queued' AND NOT cancel_requested
           RETURNING id, owner, function, priority AS "priority: Priority", queue, args, status AS "status: Status",
                     progress, message, attempt, max_attempts, run_after, cancel_requested, idempotency_key, unique_key,
                     parent_id, result, result_uri, error AS "error: Json<JobError>",
                     created_at, started_at, finished_at, updated_at"#,
        new.owner,
        key,
        new.spec.args.get(),
        debounce,
    )
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row)
}

/// The newest live job of `owner`'s unique `key`.
async fn live_with_key(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    owner: &str,
    key: &str,
) -> Result<Option<JobRow>, StoreError> {
    let row = sqlx::query_as!(
        JobRow,
        r#"SELECT id, owner, function, priority AS "priority: Priority", queue, args, status AS "status: Status",
                  progress, message, attempt, max_attempts, run_after, cancel_requested, idempotency_key, unique_key,
                  parent_id, result, result_uri, error AS "error: Json<JobError>",
                  created_at, started_at, finished_at, updated_at
           FROM jobs WHERE owner = $1 AND unique_key = $2 AND status IN ('queued', 'retrying', 'running')
           ORDER BY created_at DESC LIMIT 1"#,
        owner,
        key,
    )
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row)
}

/// The full job, if it exists and `owner` may see it (`None` = admin, sees all).
pub async fn get(pool: &PgPool, id: Uuid, owner: Option<&str>) -> Result<Option<Job>, StoreError> {
    let row = sqlx::query_as!(
        JobRow,
        r#"SELECT id, owner, function, priority AS "priority: Priority", queue, args, status AS "status: Status",
                  progress, message, attempt, max_attempts, run_after, cancel_requested, idempotency_key, unique_key,
                  parent_id, result, result_uri, error AS "error: Json<JobError>",
                  created_at, started_at, finished_at, updated_at
           FROM jobs WHERE id = $1"#,
        id
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.filter(|r| owner.is_none_or(|o| r.owner() == o)).map(|r| r.into_job(Utc::now())))
}

/// The polling view: one primary-key read of the fields that change while a job runs.
pub async fn get_status(pool: &PgPool, id: Uuid, owner: Option<&str>) -> Result<Option<JobStatus>, StoreError> {
    let row = sqlx::query!(
        r#"SELECT owner, status AS "status: Status", progress, message, attempt, max_attempts, run_after,
                  created_at, started_at, finished_at, updated_at, workflow_id
           FROM jobs WHERE id = $1"#,
        id
    )
    .fetch_optional(pool)
    .await?;
    let Some(r) = row.filter(|r| owner.is_none_or(|o| r.owner == o)) else {
        return Ok(None);
    };
    // A step's workflow: a second read, for workflow steps only.
    let workflow = match r.workflow_id {
        Some(_) => super::step_of(pool, id).await?,
        None => None,
    };
    Ok(Some(JobStatus {
        id,
        status: r.status,
        progress: r.progress,
        message: r.message,
        attempt: r.attempt,
        max_attempts: r.max_attempts,
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        updated_at: r.updated_at,
        poll_after_ms: poll_after_ms(r.status, r.run_after, Utc::now()),
        workflow,
    }))
}

/// What a cancel request did.
#[derive(Debug)]
pub enum CancelOutcome {
    /// The job was queued or retrying and is now cancelled: it will never run.
    Cancelled(Job),
    /// The job is running: its run sees the request and stops.
    Requested(Job),
    /// The job had already finished with this status.
    AlreadyFinished(Job),
    /// No such job for this owner.
    NotFound,
}

/// A client's cancel of a job (`POST /jobs/{id}/cancel`): [`cancel_many`] on its id, which
/// cancels a queued or retrying job at once and flags a running one, whose run then stops and
/// records it with [`super::finish_cancelled`]. A finished job is left untouched.
pub async fn request_cancel(pool: &PgPool, id: Uuid, owner: Option<&str>) -> Result<CancelOutcome, StoreError> {
    // Cancelling a workflow step stops its workflow (a trigger), which can deadlock with a
    // sibling's outcome; the statement is rolled back whole and tried again.
    let ids = [id];
    let acted = super::retrying_deadlocks(|| cancel_many(pool, &ids, owner)).await?;
    let Some(job) = get(pool, id, owner).await? else {
        return Ok(CancelOutcome::NotFound);
    };
    Ok(match acted.first() {
        Some((_, Status::Cancelled)) => CancelOutcome::Cancelled(job),
        Some(_) => CancelOutcome::Requested(job),
        None => CancelOutcome::AlreadyFinished(job),
    })
}

/// The one cancel statement, for a client's cancel of one job and a bulk cancel's batch alike:
/// of the jobs among `ids` (of `owner`, when given) that are unfinished, the queued and retrying
/// ones (and workflow steps pending or waiting) are cancelled at once and the running ones are
/// asked to stop (`cancel_requested`). Cancelling a workflow step stops its workflow (the
/// workflows migration's trigger).
/// Returns the jobs it changed, with their status after it.
pub async fn cancel_many(
    conn: impl sqlx::PgExecutor<'_>,
    ids: &[Uuid],
    owner: Option<&str>,
) -> Result<Vec<(Uuid, Status)>, StoreError> {
    let error = Json(JobError::permanent(ErrorKind::Cancelled, "cancelled before it ran"));
    let rows = sqlx::query!(
        r#"UPDATE jobs SET
              status = CASE WHEN status IN ('pending', 'waiting', 'queued', 'retrying') THEN 'cancelled' ELSE status END,
              finished_at = CASE WHEN status IN ('pending', 'waiting', 'queued', 'retrying') THEN now() ELSE finished_at END,
              error = CASE WHEN status IN ('pending', 'waiting', 'queued', 'retrying') THEN $3::jsonb ELSE error END,
              claim_id = CASE WHEN status IN ('pending', 'waiting', 'queued', 'retrying') THEN NULL ELSE claim_id END,
              cancel_requested = true,
              updated_at = now()
           WHERE id = ANY($1) AND ($2::text IS NULL OR owner = $2) AND status IN ('pending', 'waiting', 'queued', 'retrying', 'running')
           RETURNING id, status AS "status: Status""#,
        ids,
        owner,
        error as Json<JobError>,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.status)).collect())
}

/// A job [`delete_finished`] deleted; its result object, if it has one in GCS, is the caller's
/// to delete.
#[derive(Debug, Clone)]
pub struct Deleted {
    pub id: Uuid,
    pub result_uri: Option<String>,
}

/// The one delete statement, for a client's delete of one job and a bulk delete's batch: the
/// finished jobs among `ids` (of `owner`, when given) are deleted, their runs with them. Their
/// idempotency keys outlive them by `key_retention`, as cleanup's do, so a late retry of their
/// submit can't recreate them. Returns what it deleted, with the result URIs to delete in GCS.
pub async fn delete_finished(
    conn: impl sqlx::PgExecutor<'_>,
    ids: &[Uuid],
    owner: Option<&str>,
    key_retention: Duration,
) -> Result<Vec<Deleted>, StoreError> {
    let rows = sqlx::query!(
        r#"WITH acted AS (
              DELETE FROM jobs
              WHERE id = ANY($1) AND ($2::text IS NULL OR owner = $2) AND status IN ('succeeded', 'failed', 'cancelled')
              RETURNING id, result_uri),
           keys AS (
              UPDATE idempotency_keys k
              SET expires_at = greatest(k.expires_at, now() + make_interval(secs => $3))
              FROM acted WHERE k.job_id = acted.id)
           SELECT id AS "id!", result_uri FROM acted"#,
        ids,
        owner,
        key_retention.as_secs_f64(),
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| Deleted { id: r.id, result_uri: r.result_uri }).collect())
}

/// What a client's delete of one job did.
#[derive(Debug)]
pub enum DeleteOutcome {
    /// The job had finished and is gone (its result object, if any, is the caller's to delete).
    Deleted(Deleted),
    /// The job is not finished; nothing changed.
    Unfinished(Box<Job>),
    /// No such job for this owner.
    NotFound,
}

/// A client's delete of a finished job (`DELETE /jobs/{id}`): [`delete_finished`] on its id.
pub async fn delete(
    pool: &PgPool,
    id: Uuid,
    owner: Option<&str>,
    key_retention: Duration,
) -> Result<DeleteOutcome, StoreError> {
    if let Some(deleted) = delete_finished(pool, &[id], owner, key_retention).await?.pop() {
        return Ok(DeleteOutcome::Deleted(deleted));
    }
    Ok(match get(pool, id, owner).await? {
        Some(job) => DeleteOutcome::Unfinished(Box::new(job)),
        None => DeleteOutcome::NotFound,
    })
}

/// Marks a job as long-polled, so its changes NOTIFY the API's listener from now on (unwatched
/// jobs skip NOTIFY and its commit-time lock). A no-op once set.
pub async fn watch(pool: &PgPool, id: Uuid) -> Result<(), StoreError> {
    sqlx::query!("UPDATE jobs SET watched = true WHERE id = $1 AND NOT watched", id).execute(pool).await?;
    Ok(())
}

/// Filters of a job listing.
#[derive(Debug, Default, Clone)]
pub struct ListFilter<'a> {
    /// Only this owner's jobs; `None` lists every owner's (admin).
    pub owner: Option<&'a str>,
    pub status: Option<Status>,
    pub function: Option<&'a str>,
    /// Only the children of this job.
    pub parent: Option<Uuid>,
    /// Only jobs whose error is of this kind.
    pub error_kind: Option<ErrorKind>,
    /// The dashboard's filters, shared with bulk operations.
    pub narrow: Narrowing,
    /// Only jobs older than this one (the keyset cursor).
    pub before: Option<Uuid>,
}

/// A top-level field of a job's `args` and the value it must equal: a JSON string or number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArgEquals {
    /// The field's name.
    pub field: String,
    /// A JSON string or number (compared as `jsonb`, so `1` matches `1.0`).
    pub value: serde_json::Value,
}

/// The filters the dashboard narrows jobs with, beyond owner, status, function and error kind:
/// the same for `GET /jobs` and a bulk operation (`POST /operations`, kept with the operation
/// as JSON), so "act on these" acts on exactly the jobs listed. Every field narrows; `None`
/// doesn't. Each is on an index but [`error_text`](Self::error_text) and
/// [`arg`](Self::arg), which run under a statement timeout ([`Narrowing::unindexed`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Narrowing {
    /// This one job.
    pub id: Option<Uuid>,
    /// Jobs of this queue (a function's own, else its priority's).
    pub queue: Option<String>,
    /// `true`: due now (`run_after` passed); `false`: not yet due.
    pub due: Option<bool>,
    /// A substring of the error's message, case-insensitive (no wildcards: `%` and `_` match
    /// themselves). Not indexed.
    pub error_text: Option<String>,
    /// A top-level args field equal to a value, by `jsonb` containment (`args @> {field: value}`,
    /// which a GIN index on `args` would serve; none is built).
    pub arg: Option<ArgEquals>,
    /// `true`: queued and held back by a limit or a pause (`held_on` set); `false`: any other.
    pub held: Option<bool>,
    /// Queued and held on this key: a limit's (`<limit>` or `<limit>:<value>`) or a pause's
    /// (`pause:queue:<name>`, `pause:function:<name>`).
    pub held_on: Option<String>,
    /// `true`: still queued after Pub/Sub refused to take its message (`publish_failures > 0`).
    pub publish_failing: Option<bool>,
    /// `true`: its message was dead-lettered at least once (requeued, or failed `undeliverable`).
    pub dead_lettered: Option<bool>,
    /// `true`: running, but its lease expired (its worker is gone; the reaper will act).
    pub lease_expired: Option<bool>,
}

impl Narrowing {
    /// True when no field narrows.
    pub fn is_empty(&self) -> bool {
        self == &Narrowing::default()
    }

    /// True when it holds a search no index serves (error text, an args field): such a query
    /// runs under `statement_timeout`, so one operator's search can't hog Postgres.
    pub fn unindexed(&self) -> bool {
        self.error_text.is_some() || self.arg.is_some()
    }

    /// Appends the conditions (after a `WHERE true`) over the `jobs` table's columns.
    pub fn push(&self, q: &mut QueryBuilder<'_, Postgres>) {
        if let Some(id) = self.id {
            q.push(" AND id = ").push_bind(id);
        }
        if let Some(queue) = &self.queue {
            q.push(" AND coalesce(queue, priority) = ").push_bind(queue.clone());
        }
        if let Some(due) = self.due {
            q.push(if due { " AND run_after <= now()" } else { " AND run_after > now()" });
        }
        if let Some(text) = &self.error_text {
            q.push(" AND error->>'message' ILIKE ").push_bind(like_pattern(text)).push(r" ESCAPE '\'");
        }
        if let Some(arg) = &self.arg {
            let mut wanted = serde_json::Map::new();
            wanted.insert(arg.field.clone(), arg.value.clone());
            q.push(" AND args @> ").push_bind(Json(serde_json::Value::Object(wanted))).push("::jsonb");
        }
        // Each as the partial index it is on states it (`jobs_held`, `jobs_publish_failing`,
        // `jobs_dead_lettered`, `jobs_running_lease`).
        let held = "status = 'queued' AND held_on IS NOT NULL";
        let publish = "status = 'queued' AND publish_failures > 0";
        let lost = "status = 'running' AND coalesce(lease_until < now(), false)";
        for (flag, condition) in [(self.held, held), (self.publish_failing, publish), (self.lease_expired, lost)] {
            match flag {
                Some(true) => {
                    q.push(" AND ").push(condition);
                }
                Some(false) => {
                    q.push(" AND NOT (").push(condition).push(")");
                }
                None => {}
            }
        }
        if let Some(key) = &self.held_on {
            q.push(" AND status = 'queued' AND held_on = ").push_bind(key.clone());
        }
        if let Some(dead) = self.dead_lettered {
            q.push(if dead { " AND dead_letters > 0" } else { " AND dead_letters = 0" });
        }
    }
}

/// `%text%` for `LIKE`, with the text's own `\`, `%` and `_` escaped (by `\`).
pub fn like_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Begins a read-only transaction for a query over `narrow`; when it holds an unindexed search,
/// every statement in it is cut off after `timeout` (`SET LOCAL statement_timeout`), and
/// [`timed_out`] tells that failure apart.
pub(crate) async fn begin_search(
    pool: &PgPool,
    narrow: &Narrowing,
    timeout: Duration,
) -> Result<sqlx::Transaction<'static, Postgres>, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query!("SET TRANSACTION READ ONLY").execute(&mut *tx).await?;
    if narrow.unindexed() {
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128).to_string();
        sqlx::query_scalar!("SELECT set_config('statement_timeout', $1, true)", ms).fetch_one(&mut *tx).await?;
    }
    Ok(tx)
}

/// The error of a statement, as [`StoreError::Timeout`] when it ran over `statement_timeout`
/// (SQLSTATE 57014).
pub(crate) fn timed_out(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("57014") => StoreError::Timeout,
        _ => e.into(),
    }
}

/// Jobs newest first, at most `limit`. Built per filter combination so each query stays on
/// its index (`(owner, status, id)`, `(owner, function, id)`, ...); a filter with an unindexed
/// search ([`Narrowing::unindexed`]) runs under a `timeout` and fails with
/// [`StoreError::Timeout`] past it.
pub async fn list(
    pool: &PgPool,
    filter: &ListFilter<'_>,
    limit: i64,
    timeout: Duration,
) -> Result<Vec<Job>, StoreError> {
    let mut q = QueryBuilder::new(format!("SELECT {JOB_COLUMNS} FROM jobs WHERE true"));
    if let Some(owner) = filter.owner {
        q.push(" AND owner = ").push_bind(owner);
    }
    if let Some(status) = filter.status {
        q.push(" AND status = ").push_bind(status);
    }
    if let Some(function) = filter.function {
        q.push(" AND function = ").push_bind(function);
    }
    if let Some(parent) = filter.parent {
        q.push(" AND parent_id = ").push_bind(parent);
    }
    if let Some(kind) = filter.error_kind {
        q.push(" AND error->>'kind' = ").push_bind(kind.as_str());
    }
    filter.narrow.push(&mut q);
    if let Some(before) = filter.before {
        q.push(" AND id < ").push_bind(before);
    }
    q.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
    let mut tx = begin_search(pool, &filter.narrow, timeout).await?;
    let rows: Vec<JobRow> = q.build_query_as().fetch_all(&mut *tx).await.map_err(timed_out)?;
    tx.commit().await?;
    let now = Utc::now();
    Ok(rows.into_iter().map(|r| r.into_job(now)).collect())
}

/// Columns of a multi-row insert, one vector per column (what `UNNEST` takes).
#[derive(Default, Clone)]
struct Columns {
    ids: Vec<Uuid>,
    owners: Vec<String>,
    functions: Vec<String>,
    priorities: Vec<Priority>,
    args: Vec<String>,
    max_attempts: Vec<i32>,
    delay_secs: Vec<Option<f64>>,
    trace_contexts: Vec<Option<String>>,
    queues: Vec<Option<String>>,
    /// Each job's limit keys as a JSON array (`None` without any): arrays of arrays don't unnest.
    limit_keys: Vec<Option<String>>,
}

impl Columns {
    /// Moves `other`'s rows after these.
    fn append(&mut self, mut other: Columns) {
        self.ids.append(&mut other.ids);
        self.owners.append(&mut other.owners);
        self.functions.append(&mut other.functions);
        self.priorities.append(&mut other.priorities);
        self.args.append(&mut other.args);
        self.max_attempts.append(&mut other.max_attempts);
        self.delay_secs.append(&mut other.delay_secs);
        self.trace_contexts.append(&mut other.trace_contexts);
        self.queues.append(&mut other.queues);
        self.limit_keys.append(&mut other.limit_keys);
    }

    fn push(&mut self, id: Uuid, owner: &str, spec: &JobSpec<'_>, trace_context: Option<&str>) {
        self.ids.push(id);
        self.owners.push(owner.to_owned());
        self.functions.push(spec.function.to_owned());
        self.priorities.push(spec.priority);
        self.args.push(spec.args.get().to_owned());
        self.max_attempts.push(spec.max_attempts);
        self.delay_secs.push(spec.delay_secs);
        self.trace_contexts.push(trace_context.map(str::to_owned));
        self.queues.push(spec.queue.map(str::to_owned));
        self.limit_keys.push(
            (!spec.limit_keys.is_empty()).then(|| serde_json::to_string(&spec.limit_keys).expect("strings serialize")),
        );
    }
}

/// Inserts many jobs in one statement; `parent` makes them its child jobs.
async fn insert_many(conn: &mut sqlx::PgConnection, c: &Columns, parent: Option<Uuid>) -> Result<Vec<Job>, StoreError> {
    let rows = sqlx::query_as!(
        JobRow,
        r#"INSERT INTO jobs (id, owner, function, priority, args, status, max_attempts, run_after, trace_context,
                             queue, parent_id, limit_keys)
           SELECT t.id, t.owner, t.function, t.priority, t.args::jsonb, 'queued', t.max_attempts,
                  now() + make_interval(secs => coalesce(t.delay_secs, 0)), t.trace_context, t.queue, $10,
                  CASE WHEN t.limit_keys IS NOT NULL
                       THEN ARRAY(SELECT jsonb_array_elements_text(t.limit_keys::jsonb)) END
           FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[],
                       $7::float8[], $8::text[], $9::text[], $11::text[])
                AS t(id, owner, function, priority, args, max_attempts, delay_secs, trace_context, queue, limit_keys)
           RETURNING id, owner, function, priority AS "priority: Priority", queue, args, status AS "status: Status",
                     progress, message, attempt, max_attempts, run_after, cancel_requested, idempotency_key, unique_key,
                     parent_id, result, result_uri, error AS "error: Json<JobError>",
                     created_at, started_at, finished_at, updated_at"#,
        &c.ids,
        &c.owners,
        &c.functions,
        &c.priorities as &[Priority],
        &c.args,
        &c.max_attempts,
        &c.delay_secs as &[Option<f64>],
        &c.trace_contexts as &[Option<String>],
        &c.queues as &[Option<String>],
        parent,
        &c.limit_keys as &[Option<String>],
    )
    .fetch_all(conn)
    .await?;
    let now = Utc::now();
    Ok(rows.into_iter().map(|r| r.into_job(now)).collect())
}

/// Inserts many jobs in one durable commit (`POST /jobs:batch`), all or nothing, answering in
/// their order. The jobs without a unique key go in one statement. Each keyed one is submitted
/// as [`submit`] does (deduplicated, or debounced), in the same transaction, so it is
/// deduplicated against the live jobs and against the batch's earlier items with its key; the
/// keyed items go in key order (a key's items in batch order), so concurrent batches take the
/// keys' locks in one order and can't deadlock. Idempotency keys are not supported here.
pub async fn submit_many(pool: &PgPool, jobs: &[NewJob<'_>]) -> Result<Vec<Submitted>, StoreError> {
    let mut tx = pool.begin().await?;
    let answers = insert_keyed_and_plain(&mut tx, jobs, None).await?;
    tx.commit().await?;
    Ok(answers)
}

/// The insert of [`submit_many`] and [`spawn_children`], inside `tx`.
pub(super) async fn insert_keyed_and_plain(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    jobs: &[NewJob<'_>],
    parent: Option<Uuid>,
) -> Result<Vec<Submitted>, StoreError> {
    let mut answers: Vec<Option<Submitted>> = jobs.iter().map(|_| None).collect();
    let mut keyed: Vec<(&str, usize)> =
        jobs.iter().enumerate().filter_map(|(i, j)| j.spec.unique_key.map(|k| (k, i))).collect();
    keyed.sort_unstable();
    let now = Utc::now();
    for (key, i) in keyed {
        let (row, created) = submit_unique(tx, &jobs[i], key, parent).await?;
        answers[i] = Some(Submitted { job: row.into_job(now), created, deduplicated: !created });
    }
    let mut columns = Columns::default();
    let plain: Vec<usize> = (0..jobs.len()).filter(|&i| jobs[i].spec.unique_key.is_none()).collect();
    for &i in &plain {
        let j = &jobs[i];
        columns.push(j.id, j.owner, &j.spec, j.trace_context);
    }
    if !plain.is_empty() {
        let mut inserted: std::collections::HashMap<Uuid, Job> =
            insert_many(tx, &columns, parent).await?.into_iter().map(|j| (j.status.id, j)).collect();
        for i in plain {
            let job = inserted.remove(&jobs[i].id).ok_or(sqlx::Error::RowNotFound)?;
            answers[i] = Some(Submitted { job, created: true, deduplicated: false });
        }
    }
    Ok(answers.into_iter().map(|a| a.expect("every item answered")).collect())
}

/// The API's plain submits (`POST /jobs` with neither an idempotency key nor a unique key),
/// coalesced ([`super::coalesce`]): the submits of one moment go in one multi-row insert and one
/// durable commit, each answered (`202`) only after that commit. Keyed submits go through
/// [`submit`], which has reads and rounds of its own. Cheap to clone.
#[derive(Clone)]
pub struct Submits {
    plain: Coalescer<Columns, Job>,
}

/// Submits in flight at most, and how many one insert carries.
const SUBMIT_LANES: usize = 1;
const SUBMIT_BATCH: usize = 100;

impl Submits {
    /// Starts the coalescer on `pool`.
    pub fn start(pool: PgPool) -> Self {
        let plain = Coalescer::start(SUBMIT_LANES, SUBMIT_BATCH, move |rows: Vec<Columns>| {
            let pool = pool.clone();
            async move {
                let together = |rows: &[Columns]| {
                    let ids: Vec<Uuid> = rows.iter().flat_map(|r| r.ids.iter().copied()).collect();
                    let pool = pool.clone();
                    let mut all = Columns::default();
                    // The rows are moved below, so copy the few columns out of the borrowed slice.
                    for r in rows {
                        all.append(r.clone());
                    }
                    async move {
                        let mut conn = pool.acquire().await?;
                        let mut inserted: std::collections::HashMap<Uuid, Job> =
                            insert_many(&mut conn, &all, None).await?.into_iter().map(|j| (j.status.id, j)).collect();
                        ids.iter()
                            .map(|id| inserted.remove(id).ok_or_else(|| sqlx::Error::RowNotFound.into()))
                            .collect()
                    }
                };
                let alone = |row: Columns| {
                    let pool = pool.clone();
                    async move {
                        let mut conn = pool.acquire().await?;
                        insert_many(&mut conn, &row, None).await?.pop().ok_or_else(|| sqlx::Error::RowNotFound.into())
                    }
                };
                each_on_failure(rows, together, alone).await
            }
        });
        Self { plain }
    }

    /// Inserts `new`, which must have neither an idempotency key nor a unique key (those go
    /// through [`submit`]), committed durably with the other submits of this moment.
    pub async fn plain(&self, new: &NewJob<'_>) -> Result<Job, StoreError> {
        debug_assert!(new.idempotency.is_none() && new.spec.unique_key.is_none());
        let mut row = Columns::default();
        row.push(new.id, new.owner, &new.spec, new.trace_context);
        self.plain.call(row).await
    }
}

/// Inserts child jobs of a running job, fenced by its claim: nothing is inserted unless the
/// parent is still `running` under `claim_id`. Children belong to the parent's owner; a child
/// with a unique key whose key has a live job of that owner is not inserted, and answers with
/// that job (`deduplicated`; it may be another parent's child). `None` when the claim was lost.
pub async fn spawn_children(
    pool: &PgPool,
    parent: Uuid,
    claim_id: Uuid,
    children: &[JobSpec<'_>],
) -> Result<Option<Vec<Submitted>>, StoreError> {
    let mut tx = pool.begin().await?;
    let owner: Option<String> = sqlx::query_scalar!(
        "SELECT owner FROM jobs WHERE id = $1 AND claim_id = $2 AND status = 'running' FOR SHARE",
        parent,
        claim_id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(owner) = owner else {
        return Ok(None);
    };
    let new: Vec<NewJob<'_>> = children
        .iter()
        .map(|spec| NewJob {
            id: Uuid::now_v7(),
            owner: &owner,
            spec: spec.clone(),
            trace_context: None,
            idempotency: None,
        })
        .collect();
    let children = insert_keyed_and_plain(&mut tx, &new, Some(parent)).await?;
    tx.commit().await?;
    Ok(Some(children))
}

/// A parent's children by status (on the `parent_id` index).
pub async fn children_counts(pool: &PgPool, parent: Uuid) -> Result<Vec<(String, i64)>, StoreError> {
    let rows =
        sqlx::query!(r#"SELECT status, count(*) AS "count!" FROM jobs WHERE parent_id = $1 GROUP BY status"#, parent)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|r| (r.status, r.count)).collect())
}

/// What a manual retry did.
#[derive(Debug)]
pub enum RetryOutcome {
    /// The job was failed or cancelled and is `queued` again, with a fresh attempt budget.
    Retried(Job),
    /// The job is in another status; nothing changed.
    WrongStatus(Job),
    /// No such job for this owner.
    NotFound,
}

/// A client's retry of a failed or cancelled job (`POST /jobs/{id}/retry`): [`retry_many`] on
/// its id.
pub async fn retry(pool: &PgPool, id: Uuid, owner: Option<&str>) -> Result<RetryOutcome, StoreError> {
    let retried = !retry_many(pool, &[id], owner).await?.is_empty();
    Ok(match get(pool, id, owner).await? {
        Some(job) if retried => RetryOutcome::Retried(job),
        Some(job) => RetryOutcome::WrongStatus(job),
        None => RetryOutcome::NotFound,
    })
}

/// The one retry statement, for a client's retry of one job and a bulk retry's batch alike: the
/// failed or cancelled jobs among `ids` (of `owner`, when given) go back to `queued`,
/// undispatched (so the relay publishes them), with the submitted attempt budget again.
/// `attempt` keeps counting, so the new runs' numbers follow the old `job_runs` rows, which stay;
/// `max_attempts - attempt_base` is the budget. The unique key is given up: the key may have a
/// newer live job. A workflow's jobs are left alone: a step run again on its own would run out
/// of order, or a signal step be pushed to a worker; `retry_workflow` takes them up. Returns
/// the ids it retried.
pub async fn retry_many(
    conn: impl sqlx::PgExecutor<'_>,
    ids: &[Uuid],
    owner: Option<&str>,
) -> Result<Vec<Uuid>, StoreError> {
    let ids = sqlx::query_scalar!(
        r#"UPDATE jobs SET
              status = 'queued', max_attempts = attempt + (max_attempts - attempt_base), attempt_base = attempt,
              manual_retries = manual_retries + 1, run_after = now(), dispatched_at = NULL,
              cancel_requested = false, claim_id = NULL, worker_id = NULL, lease_until = NULL,
              progress = 0, message = NULL, result = NULL, result_uri = NULL, error = NULL,
              started_at = NULL, finished_at = NULL, publish_failures = 0, unknown_function_rounds = 0,
              dead_letters = 0, unique_key = NULL, updated_at = now()
           WHERE id = ANY($1) AND ($2::text IS NULL OR owner = $2) AND status IN ('failed', 'cancelled')
             AND workflow_id IS NULL
           RETURNING id"#,
        ids,
        owner,
    )
    .fetch_all(conn)
    .await?;
    Ok(ids)
}
