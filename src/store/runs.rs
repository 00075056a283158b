//! Runs: claims, heartbeats, progress, outcomes and lease releases, and the dispatched mark
//! the outbox writes. (The reaper, the relay and the other upkeep live in `crate::maintenance`.)
//!
//! Every write of a run is fenced by its `claim_id` and `status = 'running'`: a run whose
//! claim was taken away (reaped, re-claimed) writes nothing.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::value::RawValue;
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use super::StoreError;
use super::coalesce::{Coalescer, each_on_failure};
use crate::job::{ErrorKind, JobError, Priority, Status};

/// A job a worker has claimed: what it needs to run it, and the claim that fences its writes.
#[derive(Debug)]
pub struct Claimed {
    pub id: Uuid,
    /// Who submitted it (its children belong to them too).
    pub owner: String,
    pub function: String,
    pub args: Box<RawValue>,
    /// This run's number, 1-based.
    pub attempt: i32,
    pub max_attempts: i32,
    /// Fences every later write of this run.
    pub claim_id: Uuid,
    /// The limit keys it holds a slot of (`None` without limits).
    pub limit_keys: Option<Vec<String>>,
    /// The workflow it is a step of: its outcome may make other steps runnable.
    pub workflow_id: Option<Uuid>,
    /// When the statement that took the claim was sent. The lease in Postgres runs from a
    /// moment after (the statement's start), so a worker counting its lease from here never
    /// outlives it, however long the claim waited before (a limit key's lock, a busy pool).
    pub asked_at: tokio::time::Instant,
}

/// The row every claim statement returns ([`claim`], [`super::claim_limited`], [`take_over`]),
/// one mapping to [`Claimed`] for all three.
pub(crate) struct ClaimRow {
    pub id: Uuid,
    pub owner: String,
    pub function: String,
    pub args: Json<Box<RawValue>>,
    pub attempt: i32,
    pub max_attempts: i32,
    pub claim_id: Uuid,
    pub limit_keys: Option<Vec<String>>,
    pub workflow_id: Option<Uuid>,
}

impl ClaimRow {
    /// The claim, its statement sent at `asked_at`.
    pub(crate) fn claimed(self, asked_at: tokio::time::Instant) -> Claimed {
        Claimed {
            id: self.id,
            owner: self.owner,
            function: self.function,
            args: self.args.0,
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            claim_id: self.claim_id,
            limit_keys: self.limit_keys,
            workflow_id: self.workflow_id,
            asked_at,
        }
    }
}

pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Claims a job for one run: one conditional UPDATE, committed durably, so two runs of a job
/// can never overlap even across a database crash. `None` when the job isn't claimable
/// (running, finished, cancelled, not due, out of attempts, or unknown), when its queue or
/// function is paused, or when it has limit keys: those are claimed by
/// [`super::claim_limited`], so a job without limits pays nothing for them. A worker's
/// concurrent claims go through [`RunWrites::claim`] instead, which sends them together.
pub async fn claim(pool: &PgPool, id: Uuid, worker_id: &str, lease: Duration) -> Result<Option<Claimed>, StoreError> {
    claim_asked_at(pool, id, worker_id, lease, tokio::time::Instant::now()).await
}

/// [`claim`], its lease counted from `asked_at` (when the caller asked, before any wait).
async fn claim_asked_at(
    pool: &PgPool,
    id: Uuid,
    worker_id: &str,
    lease: Duration,
    asked_at: tokio::time::Instant,
) -> Result<Option<Claimed>, StoreError> {
    let ids = [id];
    let rows = super::retrying_deadlocks(|| claim_many(pool, &ids, worker_id, lease)).await?;
    Ok(rows.into_iter().next().map(|r| r.claimed(asked_at)))
}

/// [`claim`] of every job of `ids` in one statement and one durable commit: the claimable ones'
/// rows, in no particular order (an id given twice is claimed once).
async fn claim_many(
    pool: &PgPool,
    ids: &[Uuid],
    worker_id: &str,
    lease: Duration,
) -> Result<Vec<ClaimRow>, StoreError> {
    let rows = sqlx::query_as!(
        ClaimRow,
        r#"WITH claimed AS (
              UPDATE jobs SET status = 'running', attempt = attempt + 1, claim_id = gen_random_uuid(),
                     worker_id = $2, lease_until = now() + make_interval(secs => $3), started_at = now(),
                     finished_at = NULL, updated_at = now(), held_on = NULL,
                     message = CASE WHEN starts_with(message, 'held: ') THEN NULL ELSE message END
              WHERE id = ANY($1) AND status = 'queued' AND run_after <= now() AND NOT cancel_requested
                    AND attempt < max_attempts AND limit_keys IS NULL
                    AND NOT EXISTS (SELECT 1 FROM pauses p
                                    WHERE (p.scope = 'function' AND p.name = jobs.function)
                                       OR (p.scope = 'queue' AND p.name = coalesce(jobs.queue, jobs.priority)))
              RETURNING id, owner, function, args, attempt, max_attempts, claim_id, worker_id, workflow_id),
           run AS (INSERT INTO job_runs (claim_id, job_id, attempt, worker_id)
                   SELECT claim_id, id, attempt, worker_id FROM claimed)
           SELECT id AS "id!", owner AS "owner!", function AS "function!", args AS "args!: Json<Box<RawValue>>",
                  attempt AS "attempt!", max_attempts AS "max_attempts!", claim_id AS "claim_id!",
                  NULL::text[] AS limit_keys, workflow_id
           FROM claimed"#,
        ids,
        worker_id,
        secs(lease),
    )
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// A worker's claims and successful outcomes, coalesced ([`super::coalesce`]): the pushes a
/// worker handles at once claim their jobs in one statement and record their successes in
/// another, each call answered after the commit that carries it. Cheap to clone.
#[derive(Clone)]
pub struct RunWrites {
    claims: Coalescer<(Uuid, tokio::time::Instant), Option<Claimed>>,
    successes: Coalescer<Success, bool>,
}

/// A successful run's outcome, as [`succeed`] takes it, owned so it can wait for its batch.
struct Success {
    id: Uuid,
    claim_id: Uuid,
    result: Box<RawValue>,
    final_message: Option<String>,
}

/// How many coalesced statements of a kind a worker has in flight at most, and how many calls
/// one carries. One lane: with more, calls on a saturated machine rarely waited long enough to
/// share a statement (bench/README.md, "Coalesced writes"); a lane is one pool connection.
const LANES: usize = 1;
const MAX_BATCH: usize = 64;

impl RunWrites {
    /// Starts the coalescers of a worker (`worker_id`, claiming for `lease`) on `pool`.
    pub fn start(pool: PgPool, worker_id: std::sync::Arc<str>, lease: Duration) -> Self {
        let claim_pool = pool.clone();
        let claims = Coalescer::start(LANES, MAX_BATCH, move |asks: Vec<(Uuid, tokio::time::Instant)>| {
            let (pool, worker_id) = (claim_pool.clone(), worker_id.clone());
            async move {
                let together = |asks: &[(Uuid, tokio::time::Instant)]| {
                    let asks = asks.to_vec();
                    let (pool, worker_id) = (pool.clone(), worker_id.clone());
                    async move {
                        let ids: Vec<Uuid> = asks.iter().map(|(id, _)| *id).collect();
                        let rows = super::retrying_deadlocks(|| claim_many(&pool, &ids, &worker_id, lease)).await?;
                        let mut rows: HashMap<Uuid, ClaimRow> = rows.into_iter().map(|r| (r.id, r)).collect();
                        // The first ask of an id gets its claim; a duplicate delivery's finds none.
                        Ok(asks.into_iter().map(|(id, at)| rows.remove(&id).map(|r| r.claimed(at))).collect())
                    }
                };
                let alone = |(id, at): (Uuid, tokio::time::Instant)| {
                    let (pool, worker_id) = (pool.clone(), worker_id.clone());
                    async move { claim_asked_at(&pool, id, &worker_id, lease, at).await }
                };
                each_on_failure(asks, together, alone).await
            }
        });
        let successes = Coalescer::start(LANES, MAX_BATCH, move |done: Vec<Success>| {
            let pool = pool.clone();
            async move {
                let together = |done: &[Success]| {
                    let rows = SuccessRows::of(done);
                    let pool = pool.clone();
                    async move {
                        let recorded = super::retrying_deadlocks(|| succeed_many(&pool, &rows)).await?;
                        Ok(rows.claim_ids.iter().map(|c| recorded.contains(c)).collect())
                    }
                };
                let alone = |one: Success| {
                    let pool = pool.clone();
                    async move {
                        let result = ResultValue::Inline(&one.result);
                        succeed(&pool, one.id, one.claim_id, result, one.final_message.as_deref()).await
                    }
                };
                each_on_failure(done, together, alone).await
            }
        });
        Self { claims, successes }
    }

    /// [`claim`], sent with the other claims of this moment; the lease counts from this call.
    pub async fn claim(&self, id: Uuid) -> Result<Option<Claimed>, StoreError> {
        self.claims.call((id, tokio::time::Instant::now())).await
    }

    /// [`succeed`] with an inline result, sent with the other outcomes of this moment.
    pub async fn succeed(
        &self,
        id: Uuid,
        claim_id: Uuid,
        result: Box<RawValue>,
        final_message: Option<&str>,
    ) -> Result<bool, StoreError> {
        let final_message = final_message.map(str::to_owned);
        self.successes.call(Success { id, claim_id, result, final_message }).await
    }
}

/// Takes over the run of claim `claim_id` in another process (`runq exec`, started by the worker
/// that claimed it): renews its lease from now and records `worker_id`, fenced by the claim.
/// `None` when the claim no longer holds (reaped, finished, cancelled meanwhile).
pub async fn take_over(
    pool: &PgPool,
    id: Uuid,
    claim_id: Uuid,
    worker_id: &str,
    lease: Duration,
) -> Result<Option<Claimed>, StoreError> {
    let asked_at = tokio::time::Instant::now();
    let row = sqlx::query_as!(
        ClaimRow,
        r#"UPDATE jobs SET lease_until = now() + make_interval(secs => $4), worker_id = $3, updated_at = now()
           WHERE id = $1 AND claim_id = $2 AND status = 'running'
           RETURNING id, owner, function, args AS "args: Json<Box<RawValue>>", attempt, max_attempts,
                     claim_id AS "claim_id!", limit_keys, workflow_id"#,
        id,
        claim_id,
        worker_id,
        secs(lease),
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| r.claimed(asked_at)))
}

/// Why a delivery found nothing to claim, for the log line that acknowledges it.
#[derive(Debug)]
pub struct Unclaimable {
    pub status: Status,
    pub attempt: i32,
    pub max_attempts: i32,
    pub cancel_requested: bool,
    /// Whether a `running` job's lease is still live.
    pub lease_live: bool,
    /// Whether a `queued` job is due.
    pub due: bool,
    /// Its limit keys, if it has any.
    pub limit_keys: Option<Vec<String>>,
}

impl Unclaimable {
    /// Whether a claim would take it but for its limits or a pause.
    pub fn claimable(&self) -> bool {
        self.status == Status::Queued && self.due && !self.cancel_requested && self.attempt < self.max_attempts
    }
}

/// Reads why `id` couldn't be claimed; `None` when there is no such job.
pub async fn unclaimable(pool: &PgPool, id: Uuid) -> Result<Option<Unclaimable>, StoreError> {
    let row = sqlx::query!(
        r#"SELECT status AS "status: Status", attempt, max_attempts, cancel_requested,
                  coalesce(lease_until > now(), false) AS "lease_live!", run_after <= now() AS "due!", limit_keys
           FROM jobs WHERE id = $1"#,
        id
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| Unclaimable {
        status: r.status,
        attempt: r.attempt,
        max_attempts: r.max_attempts,
        cancel_requested: r.cancel_requested,
        lease_live: r.lease_live,
        due: r.due,
        limit_keys: r.limit_keys,
    }))
}

/// Extends the leases of live runs, given as `(job id, claim id)`, in one statement (on the
/// relaxed pool: a lost heartbeat costs nothing but the next one). Returns, per claim still
/// held, whether a cancel was requested; a claim missing from the answer was lost.
pub async fn heartbeat(
    relaxed: &PgPool,
    runs: &[(Uuid, Uuid)],
    lease: Duration,
) -> Result<Vec<(Uuid, bool)>, StoreError> {
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, claims): (Vec<Uuid>, Vec<Uuid>) = runs.iter().copied().unzip();
    let rows = sqlx::query!(
        r#"UPDATE jobs j SET lease_until = now() + make_interval(secs => $3)
           FROM unnest($1::uuid[], $2::uuid[]) AS held(id, claim_id)
           WHERE j.id = held.id AND j.claim_id = held.claim_id AND j.status = 'running'
           RETURNING j.claim_id AS "claim_id!", j.cancel_requested"#,
        &ids,
        &claims,
        secs(lease),
    )
    .fetch_all(relaxed)
    .await?;
    Ok(rows.into_iter().map(|r| (r.claim_id, r.cancel_requested)).collect())
}

/// Records a run's progress and extends its lease. `Some(cancel_requested)` while the claim
/// holds; `None` when it was lost.
pub async fn progress(
    relaxed: &PgPool,
    id: Uuid,
    claim_id: Uuid,
    fraction: f32,
    message: Option<&str>,
    lease: Duration,
) -> Result<Option<bool>, StoreError> {
    let row = sqlx::query_scalar!(
        r#"UPDATE jobs SET progress = $3, message = $4, lease_until = now() + make_interval(secs => $5),
                  updated_at = now()
           WHERE id = $1 AND claim_id = $2 AND status = 'running'
           RETURNING cancel_requested"#,
        id,
        claim_id,
        fraction,
        message,
        secs(lease),
    )
    .fetch_optional(relaxed)
    .await?;
    Ok(row)
}

/// Where a successful run's result goes.
#[derive(Debug)]
pub enum ResultValue<'a> {
    /// Small enough to keep in the row.
    Inline(&'a RawValue),
    /// Stored elsewhere (GCS), at this URI.
    Uri(&'a str),
}

/// Records success (and the run's last progress message, which coalescing may not have written
/// yet). Durable. `false` when the claim was lost (the outcome is dropped).
pub async fn succeed(
    pool: &PgPool,
    id: Uuid,
    claim_id: Uuid,
    result: ResultValue<'_>,
    final_message: Option<&str>,
) -> Result<bool, StoreError> {
    // A workflow step's outcome moves its workflow on in the same statement (a trigger), which
    // may deadlock with its siblings'; Postgres then aborts one, which tries again.
    super::retrying_deadlocks(|| succeed_once(pool, id, claim_id, &result, final_message)).await
}

async fn succeed_once(
    pool: &PgPool,
    id: Uuid,
    claim_id: Uuid,
    result: &ResultValue<'_>,
    final_message: Option<&str>,
) -> Result<bool, StoreError> {
    let (inline, uri) = match result {
        ResultValue::Inline(raw) => (Some(raw.get().to_owned()), None),
        ResultValue::Uri(uri) => (None, Some((*uri).to_owned())),
    };
    let rows = SuccessRows {
        ids: vec![id],
        claim_ids: vec![claim_id],
        results: vec![inline],
        uris: vec![uri],
        messages: vec![final_message.map(str::to_owned)],
    };
    Ok(!succeed_many(pool, &rows).await?.is_empty())
}

/// The outcomes [`succeed_many`] records, a column each.
struct SuccessRows {
    ids: Vec<Uuid>,
    claim_ids: Vec<Uuid>,
    results: Vec<Option<String>>,
    uris: Vec<Option<String>>,
    messages: Vec<Option<String>>,
}

impl SuccessRows {
    fn of(done: &[Success]) -> Self {
        Self {
            ids: done.iter().map(|d| d.id).collect(),
            claim_ids: done.iter().map(|d| d.claim_id).collect(),
            results: done.iter().map(|d| Some(d.result.get().to_owned())).collect(),
            uris: vec![None; done.len()],
            messages: done.iter().map(|d| d.final_message.clone()).collect(),
        }
    }
}

/// Records the successes of many runs in one statement and one durable commit, each fenced by
/// its claim; answers the claims that still held (their outcomes were written).
async fn succeed_many(pool: &PgPool, rows: &SuccessRows) -> Result<Vec<Uuid>, StoreError> {
    let recorded = sqlx::query_scalar!(
        r#"WITH outcome AS (
              SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[])
                     AS o(id, claim_id, result, result_uri, message)),
           done AS (
              UPDATE jobs j SET status = 'succeeded', progress = 1, result = o.result::jsonb,
                     result_uri = o.result_uri, message = coalesce(o.message, j.message), error = NULL,
                     finished_at = now(), updated_at = now(), lease_until = NULL
              FROM outcome o
              WHERE j.id = o.id AND j.claim_id = o.claim_id AND j.status = 'running'
              RETURNING j.claim_id),
           runs AS (
              UPDATE job_runs r SET finished_at = now(), outcome = 'succeeded'
              FROM done WHERE r.claim_id = done.claim_id)
           SELECT claim_id AS "claim_id!" FROM done"#,
        &rows.ids,
        &rows.claim_ids,
        &rows.results as &[Option<String>],
        &rows.uris as &[Option<String>],
        &rows.messages as &[Option<String>],
    )
    .fetch_all(pool)
    .await?;
    Ok(recorded)
}

/// Records a failed run. Durable. A retryable error with attempts left (and no cancel request)
/// moves the job to `retrying`, due after `retry_delay`; otherwise it ends `failed` (or
/// `cancelled` when a cancel was requested). `None` when the claim was lost.
pub async fn fail(
    pool: &PgPool,
    id: Uuid,
    claim_id: Uuid,
    error: &JobError,
    retry_delay: Duration,
) -> Result<Option<Status>, StoreError> {
    super::retrying_deadlocks(|| fail_once(pool, id, claim_id, error, retry_delay)).await
}

async fn fail_once(
    pool: &PgPool,
    id: Uuid,
    claim_id: Uuid,
    error: &JobError,
    retry_delay: Duration,
) -> Result<Option<Status>, StoreError> {
    let status = sqlx::query_scalar!(
        r#"WITH done AS (
              UPDATE jobs SET
                 status = CASE WHEN cancel_requested THEN 'cancelled'
                               WHEN $4 AND attempt < max_attempts THEN 'retrying'
                               ELSE 'failed' END,
                 run_after = CASE WHEN NOT cancel_requested AND $4 AND attempt < max_attempts
                                  THEN now() + make_interval(secs => $5) ELSE run_after END,
                 finished_at = CASE WHEN NOT cancel_requested AND $4 AND attempt < max_attempts
                                    THEN NULL ELSE now() END,
                 error = $3::jsonb, lease_until = NULL, updated_at = now()
              WHERE id = $1 AND claim_id = $2 AND status = 'running'
              RETURNING status, run_after, error)
           UPDATE job_runs r SET finished_at = now(), outcome = done.status, error = done.error,
                  retry_at = CASE WHEN done.status = 'retrying' THEN done.run_after END
           FROM done WHERE r.claim_id = $2
           RETURNING done.status AS "status: Status""#,
        id,
        claim_id,
        Json(error) as Json<&JobError>,
        error.retryable,
        secs(retry_delay),
    )
    .fetch_optional(pool)
    .await?;
    Ok(status)
}

/// Records that a run stopped because its job was cancelled (see [`super::request_cancel`]): the
/// job ends `cancelled`. Fenced by the claim; `false` when it was lost.
pub async fn finish_cancelled(pool: &PgPool, id: Uuid, claim_id: Uuid) -> Result<bool, StoreError> {
    super::retrying_deadlocks(|| finish_cancelled_once(pool, id, claim_id)).await
}

async fn finish_cancelled_once(pool: &PgPool, id: Uuid, claim_id: Uuid) -> Result<bool, StoreError> {
    let error = Json(JobError::permanent(ErrorKind::Cancelled, "cancelled while running"));
    let done = sqlx::query!(
        r#"WITH done AS (
              UPDATE jobs SET status = 'cancelled', finished_at = now(), updated_at = now(), lease_until = NULL,
                     error = $3::jsonb
              WHERE id = $1 AND claim_id = $2 AND status = 'running' RETURNING id)
           UPDATE job_runs SET finished_at = now(), outcome = 'cancelled'
           WHERE claim_id = $2 AND EXISTS (SELECT 1 FROM done)"#,
        id,
        claim_id,
        error as Json<JobError>,
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives a run back on shutdown: the job is queued again at once (its interrupted attempt
/// doesn't count) unless a cancel was requested. Fenced by the claim. `false` if it was lost.
pub async fn release(pool: &PgPool, id: Uuid, claim_id: Uuid) -> Result<bool, StoreError> {
    let done = sqlx::query!(
        r#"WITH done AS (
              UPDATE jobs SET
                 status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,
                 finished_at = CASE WHEN cancel_requested THEN now() ELSE NULL END,
                 attempt = greatest(attempt - 1, 0), claim_id = NULL, worker_id = NULL, lease_until = NULL,
                 dispatched_at = NULL, run_after = now(), updated_at = now()
              WHERE id = $1 AND claim_id = $2 AND status = 'running' RETURNING id)
           UPDATE job_runs SET finished_at = now(), outcome = 'released'
           WHERE claim_id = $2 AND EXISTS (SELECT 1 FROM done)"#,
        id,
        claim_id,
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A job deferred this many times by its function (`429`) fails instead of waiting again, so a
/// function that always answers "later" can't keep a job alive forever.
pub const MAX_DEFERRALS: i64 = 100;

/// Defers a run at its function's request (an HTTP function's `429` with `Retry-After`): the job
/// goes back to `queued`, due after `delay`, with its attempt given back (being asked to wait is
/// not a failure), and `message` saying why; or `cancelled` when a cancel was asked; or `failed`
/// once it was deferred [`MAX_DEFERRALS`] times. Fenced by the claim; `None` when it was lost.
/// The relay publishes it once it is due.
pub async fn defer(
    pool: &PgPool,
    id: Uuid,
    claim_id: Uuid,
    delay: Duration,
    message: &str,
) -> Result<Option<Status>, StoreError> {
    let exhausted = JobError::permanent(
        ErrorKind::Error,
        format!("the function deferred the job {MAX_DEFERRALS} times (429 Retry-After); given up"),
    );
    let status = sqlx::query_scalar!(
        r#"WITH deferred AS (SELECT count(*) >= $5 AS exhausted FROM job_runs
                            WHERE job_id = $1 AND outcome = 'deferred'),
           done AS (
              UPDATE jobs SET
                 status = CASE WHEN cancel_requested THEN 'cancelled'
                               WHEN (SELECT exhausted FROM deferred) THEN 'failed' ELSE 'queued' END,
                 finished_at = CASE WHEN cancel_requested OR (SELECT exhausted FROM deferred) THEN now() END,
                 error = CASE WHEN NOT cancel_requested AND (SELECT exhausted FROM deferred) THEN $6::jsonb
                              ELSE error END,
                 message = $4,
                 attempt = CASE WHEN (SELECT exhausted FROM deferred) THEN attempt ELSE greatest(attempt - 1, 0) END,
                 claim_id = NULL, worker_id = NULL, lease_until = NULL,
                 dispatched_at = NULL, run_after = now() + make_interval(secs => $3), updated_at = now()
              WHERE id = $1 AND claim_id = $2 AND status = 'running' RETURNING status),
           runs AS (UPDATE job_runs SET finished_at = now(),
                           outcome = CASE WHEN (SELECT status FROM done) = 'queued' THEN 'deferred'
                                          ELSE (SELECT status FROM done) END
                    WHERE claim_id = $2 AND EXISTS (SELECT 1 FROM done))
           SELECT status AS "status!: Status" FROM done"#,
        id,
        claim_id,
        secs(delay),
        message,
        MAX_DEFERRALS,
        Json(&exhausted) as Json<&JobError>,
    )
    .fetch_optional(pool)
    .await?;
    Ok(status)
}

/// Gives back a run its worker stopped because its lease couldn't be renewed in time, before
/// the reaper would: what the reaper does to it (queued again while attempts are left, the
/// lapsed attempt counted; else failed as `lost`, or cancelled if a cancel was asked), fenced by
/// the claim. Returns the job's new status; `None` if the claim was lost already.
pub async fn give_back_lapsed(pool: &PgPool, id: Uuid, claim_id: Uuid) -> Result<Option<Status>, StoreError> {
    super::retrying_deadlocks(|| give_back_lapsed_once(pool, id, claim_id)).await
}

async fn give_back_lapsed_once(pool: &PgPool, id: Uuid, claim_id: Uuid) -> Result<Option<Status>, StoreError> {
    let lost = JobError::permanent(
        ErrorKind::Lost,
        "its worker couldn't renew the lease in time (Postgres unreachable or the process starved) and no attempts are left",
    );
    let status = sqlx::query_scalar!(
        r#"WITH done AS (
              UPDATE jobs SET
                 status = CASE WHEN cancel_requested THEN 'cancelled'
                               WHEN attempt < max_attempts THEN 'queued' ELSE 'failed' END,
                 error = CASE WHEN cancel_requested OR attempt < max_attempts THEN error ELSE $3::jsonb END,
                 finished_at = CASE WHEN NOT cancel_requested AND attempt < max_attempts THEN NULL ELSE now() END,
                 claim_id = NULL, worker_id = NULL, lease_until = NULL, dispatched_at = NULL, run_after = now(),
                 updated_at = now()
              WHERE id = $1 AND claim_id = $2 AND status = 'running' RETURNING status),
           runs AS (UPDATE job_runs SET finished_at = now(), outcome = 'lapsed'
                    WHERE claim_id = $2 AND EXISTS (SELECT 1 FROM done))
           SELECT status AS "status!: Status" FROM done"#,
        id,
        claim_id,
        Json(lost) as Json<JobError>,
    )
    .fetch_optional(pool)
    .await?;
    Ok(status)
}

/// Gives back a job claimed by a worker that has no such function (another version, in a
/// rolling deploy): queued again after `backoff` doubled per round (the attempt doesn't count),
/// failed with kind `unknown_function` at round `max_rounds`. Fenced by the claim; `None` if it
/// was lost.
pub async fn release_unknown_function(
    pool: &PgPool,
    id: Uuid,
    claim_id: Uuid,
    max_rounds: i32,
    backoff: Duration,
) -> Result<Option<Status>, StoreError> {
    let status = sqlx::query_scalar!(
        r#"WITH done AS (
              UPDATE jobs SET
                 unknown_function_rounds = unknown_function_rounds + 1,
                 status = CASE WHEN cancel_requested THEN 'cancelled'
                               WHEN unknown_function_rounds + 1 >= $3 THEN 'failed' ELSE 'queued' END,
                 finished_at = CASE WHEN cancel_requested OR unknown_function_rounds + 1 >= $3 THEN now() END,
                 error = CASE WHEN NOT cancel_requested AND unknown_function_rounds + 1 >= $3
                              THEN jsonb_build_object('kind', $5::text, 'retryable', false,
                                   'message', 'no worker that received the job has a function named ' || function)
                              ELSE error END,
                 attempt = greatest(attempt - 1, 0), claim_id = NULL, worker_id = NULL, lease_until = NULL,
                 dispatched_at = NULL, run_after = now() + make_interval(secs => $4 * power(2, unknown_function_rounds)),
                 updated_at = now()
              WHERE id = $1 AND claim_id = $2 AND status = 'running' RETURNING status),
           runs AS (UPDATE job_runs SET finished_at = now(), outcome = 'released'
                    WHERE claim_id = $2 AND EXISTS (SELECT 1 FROM done))
           SELECT status AS "status!: Status" FROM done"#,
        id,
        claim_id,
        max_rounds,
        secs(backoff),
        ErrorKind::UnknownFunction as ErrorKind,
    )
    .fetch_optional(pool)
    .await?;
    Ok(status)
}

/// What publishing one job sends (its message, attributes and queue), for the
/// [`crate::dispatch::Dispatcher`]: read by the relay from its rows, or built with
/// [`Publication::of`] from a job just created.
#[derive(Debug, Clone)]
pub struct Publication {
    pub id: Uuid,
    pub attempt: i32,
    pub function: String,
    pub priority: Priority,
    /// The function's own queue; `None` for the priority's.
    pub queue: Option<String>,
    pub trace_context: Option<String>,
}

impl Publication {
    /// The message of a job just created (attempt 0 or its current attempt).
    pub fn of(job: &crate::job::Job, trace_context: Option<&str>) -> Self {
        Self {
            id: job.status.id,
            attempt: job.status.attempt,
            function: job.function.clone(),
            priority: job.priority,
            queue: (job.queue != job.priority.as_str()).then(|| job.queue.clone()),
            trace_context: trace_context.map(str::to_owned),
        }
    }

    /// The queue the message goes to.
    pub fn queue_name(&self) -> &str {
        self.queue.as_deref().unwrap_or(self.priority.as_str())
    }
}

/// Marks freshly published jobs as dispatched (relaxed: losing it costs one republish).
pub async fn mark_dispatched(relaxed: &PgPool, ids: &[Uuid]) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE jobs SET dispatched_at = now() WHERE id = ANY($1) AND status = 'queued' AND dispatched_at IS NULL",
        ids
    )
    .execute(relaxed)
    .await?;
    Ok(())
}
