//! Workflows in Postgres: the insert of a checked plan, the whole-workflow view, signals (and
//! the rework a rejection starts), cancel, the steps a finished job made runnable, a fan-in's
//! parents page by page, continuations spawned by a run, and signal timeouts.
//!
//! The step-to-step transition itself is not here: it is the `jobs_step_finished` trigger of
//! the workflows migration, which runs inside whatever statement finishes a step.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use super::{JobSpec, NewJob, Publication, StoreError, Submitted};
use crate::job::{JobError, Priority, Status, WorkflowLink};
use crate::workflow::{Decision, ParentResult, Plan, PlannedJob, Signal, SignalSpec};

/// Postgres' code for a transaction it aborted to break a deadlock.
const DEADLOCK: &str = "40P01";

/// Whether `e` is a deadlock Postgres broke by aborting our transaction (nothing was written).
pub(crate) fn is_deadlock(e: &StoreError) -> bool {
    matches!(e, StoreError::Other(sqlx::Error::Database(db)) if db.code().as_deref() == Some(DEADLOCK))
}

/// Runs `op` again (at most a few times) when Postgres aborted it to break a deadlock. Steps of
/// one workflow finish, cancel and stop each other in statements that lock rows of the same
/// workflow in different orders; Postgres picks one victim, which loses nothing and retries.
pub(crate) async fn retrying_deadlocks<T, F, Fut>(mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut tries = 0;
    loop {
        match op().await {
            Err(e) if is_deadlock(&e) && tries < 5 => {
                tries += 1;
                tracing::info!(tries, "deadlock between steps of a workflow broken by Postgres; trying again");
            }
            other => return other,
        }
    }
}

/// What a workflow submit wrote.
#[derive(Debug)]
pub struct SubmittedWorkflow {
    pub id: Uuid,
    /// False when an earlier submit with the same idempotency key created it (nothing written).
    pub created: bool,
    /// Its first steps, queued, to publish.
    pub runnable: Vec<Publication>,
}

/// Inserts a checked workflow in one transaction: its row, every job (`pending`), their step
/// facts and edges; then its first steps become runnable (queued, or waiting for a signal).
/// With `key`, a workflow of `owner` with that key already there is the answer (`created:
/// false`), and nothing is written.
#[allow(clippy::too_many_arguments)]
pub async fn submit_workflow(
    pool: &PgPool,
    owner: &str,
    name: Option<&str>,
    args: &Value,
    plan: &Plan,
    trace_context: Option<&str>,
    key: Option<&str>,
) -> Result<SubmittedWorkflow, StoreError> {
    let id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO workflows (id, owner, name, args, idempotency_key) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
    )
    .bind(id)
    .bind(owner)
    .bind(name)
    .bind(Json(args))
    .bind(key)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        tx.rollback().await?;
        let first: Uuid = sqlx::query_scalar("SELECT id FROM workflows WHERE owner = $1 AND idempotency_key = $2")
            .bind(owner)
            .bind(key)
            .fetch_one(pool)
            .await?;
        return Ok(SubmittedWorkflow { id: first, created: false, runnable: Vec::new() });
    }
    let jobs: Vec<&PlannedJob> = plan.jobs.iter().collect();
    insert_steps(&mut tx, id, owner, &jobs, trace_context, None).await?;
    let edges: Vec<(Uuid, Uuid, String)> = plan
        .jobs
        .iter()
        .flat_map(|j| j.parents.iter().map(|(p, name)| (plan.jobs[*p].id, j.id, name.clone())))
        .collect();
    insert_edges(&mut tx, &edges).await?;
    let roots: Vec<Uuid> = plan.jobs.iter().filter(|j| j.parents.is_empty()).map(|j| j.id).collect();
    let runnable = make_runnable(&mut tx, &roots).await?;
    tx.commit().await?;
    Ok(SubmittedWorkflow { id, created: true, runnable })
}

/// Inserts `jobs` as `pending` steps of workflow `wf` with their step facts (their parents'
/// count from their plan), children of `parent` when given.
async fn insert_steps(
    tx: &mut Transaction<'_, Postgres>,
    wf: Uuid,
    owner: &str,
    jobs: &[&PlannedJob],
    trace_context: Option<&str>,
    parent: Option<Uuid>,
) -> Result<(), StoreError> {
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
    let functions: Vec<&str> = jobs.iter().map(|j| j.function.as_str()).collect();
    let priorities: Vec<&str> = jobs.iter().map(|j| j.priority.as_str()).collect();
    let args: Vec<&str> = jobs.iter().map(|j| j.args.get()).collect();
    let attempts: Vec<i32> = jobs.iter().map(|j| j.max_attempts).collect();
    let queues: Vec<Option<&str>> = jobs.iter().map(|j| j.queue.as_deref()).collect();
    let limit_keys: Vec<Option<String>> = jobs
        .iter()
        .map(|j| (!j.limit_keys.is_empty()).then(|| serde_json::to_string(&j.limit_keys).expect("strings serialize")))
        .collect();
    sqlx::query(
        r#"INSERT INTO jobs (id, owner, function, priority, args, status, max_attempts, run_after, trace_context,
                             queue, parent_id, limit_keys, workflow_id)
           SELECT t.id, $8, t.function, t.priority, t.args::jsonb, 'pending', t.max_attempts, now(), $9, t.queue, $10,
                  CASE WHEN t.limit_keys IS NOT NULL
                       THEN ARRAY(SELECT jsonb_array_elements_text(t.limit_keys::jsonb)) END, $11
           FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::text[], $7::text[])
                AS t(id, function, priority, args, max_attempts, queue, limit_keys)"#,
    )
    .bind(&ids)
    .bind(&functions)
    .bind(&priorities)
    .bind(&args)
    .bind(&attempts)
    .bind(&queues)
    .bind(&limit_keys)
    .bind(owner)
    .bind(trace_context)
    .bind(parent)
    .bind(wf)
    .execute(&mut **tx)
    .await?;
    let steps: Vec<&str> = jobs.iter().map(|j| j.step.as_str()).collect();
    let indexes: Vec<Option<i32>> = jobs.iter().map(|j| j.item_index).collect();
    let items: Vec<Option<String>> = jobs.iter().map(|j| j.item.as_ref().map(Value::to_string)).collect();
    let pending: Vec<i32> = jobs.iter().map(|j| j.parents.len() as i32).collect();
    let on_failure: Vec<bool> = jobs.iter().map(|j| j.run_on_failure).collect();
    let signals: Vec<Option<String>> = jobs
        .iter()
        .map(|j| j.signal.as_ref().map(|s| serde_json::to_string(s).expect("a signal spec serializes")))
        .collect();
    sqlx::query(
        r#"INSERT INTO workflow_steps (job_id, workflow_id, step, item_index, item, pending_parents, run_on_failure, signal)
           SELECT t.id, $8, t.step, t.item_index, t.item::jsonb, t.pending, t.on_failure, t.signal::jsonb
           FROM UNNEST($1::uuid[], $2::text[], $3::int4[], $4::text[], $5::int4[], $6::bool[], $7::text[])
                AS t(id, step, item_index, item, pending, on_failure, signal)"#,
    )
    .bind(&ids)
    .bind(&steps)
    .bind(&indexes)
    .bind(&items)
    .bind(&pending)
    .bind(&on_failure)
    .bind(&signals)
    .bind(wf)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_edges(tx: &mut Transaction<'_, Postgres>, edges: &[(Uuid, Uuid, String)]) -> Result<(), StoreError> {
    if edges.is_empty() {
        return Ok(());
    }
    let parents: Vec<Uuid> = edges.iter().map(|e| e.0).collect();
    let children: Vec<Uuid> = edges.iter().map(|e| e.1).collect();
    let names: Vec<&str> = edges.iter().map(|e| e.2.as_str()).collect();
    sqlx::query(
        "INSERT INTO workflow_edges (parent, child, name) SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[])",
    )
    .bind(&parents)
    .bind(&children)
    .bind(&names)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Makes the pending steps `ids` (whose parents have all finished) runnable, returning those now
/// queued, to publish.
async fn make_runnable(tx: &mut Transaction<'_, Postgres>, ids: &[Uuid]) -> Result<Vec<Publication>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query("SELECT runq_step_runnable(id) FROM UNNEST($1::uuid[]) AS id").bind(ids).execute(&mut **tx).await?;
    let rows = sqlx::query(
        "SELECT id, attempt, function, priority, queue, trace_context FROM jobs
         WHERE id = ANY($1) AND status = 'queued' AND dispatched_at IS NULL",
    )
    .bind(ids)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter().map(publication).collect()
}

fn publication(row: &sqlx::postgres::PgRow) -> Result<Publication, StoreError> {
    Ok(Publication {
        id: row.try_get("id")?,
        attempt: row.try_get("attempt")?,
        function: row.try_get("function")?,
        priority: row.try_get::<Priority, _>("priority")?,
        queue: row.try_get("queue")?,
        trace_context: row.try_get("trace_context")?,
    })
}

/// The steps that finishing job `id` made runnable (queued, not yet published), for whoever
/// finished it to publish at once; the relay would otherwise, on its next pass.
pub async fn runnable_after(pool: &PgPool, id: Uuid) -> Result<Vec<Publication>, StoreError> {
    let rows = sqlx::query(
        "SELECT j.id, j.attempt, j.function, j.priority, j.queue, j.trace_context
         FROM workflow_edges e JOIN jobs j ON j.id = e.child
         WHERE e.parent = $1 AND j.status = 'queued' AND j.dispatched_at IS NULL",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    rows.iter().map(publication).collect()
}

/// A workflow's overall state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowState {
    /// Some step is queued, running or retrying (or pending behind one).
    Running,
    /// Nothing runs: a signal step waits for a person.
    Waiting,
    Succeeded,
    Failed,
    Cancelled,
}

impl WorkflowState {
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// One job of a step, as the workflow view shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepJob {
    pub job_id: Uuid,
    /// A fan-out member's position and element.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<Value>,
    pub status: Status,
    pub progress: f32,
    pub message: Option<String>,
    pub attempt: i32,
    pub max_attempts: i32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
}

/// Most member jobs a step lists in the view; beyond, only its counts.
pub const LISTED_MEMBERS: usize = 100;

/// One step of the workflow view: its jobs summed up (one job, or a fan-out's members).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepView {
    pub name: String,
    /// The function it runs; absent for a signal step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Whether it waits for a signal.
    pub signal: bool,
    /// The steps it runs after.
    pub after: Vec<String>,
    /// Its status: its job's, or for a fan-out the least advanced member's (any failed member:
    /// failed once all are finished).
    pub status: Status,
    /// Mean progress of its jobs (a finished job counts 1).
    pub progress: f32,
    /// Its job's last progress message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Rework rounds it went through (a signal step: rejections that sent the workflow back).
    pub round: i32,
    /// Its jobs by status.
    pub counts: BTreeMap<String, i64>,
    pub total: i64,
    /// Its jobs, up to [`LISTED_MEMBERS`].
    pub jobs: Vec<StepJob>,
    /// Its result, for a single job that has one inline (a signal step: the decision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

/// What `GET /workflows/{id}` returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowView {
    pub id: Uuid,
    /// The template it was submitted by, if any.
    pub name: Option<String>,
    pub status: WorkflowState,
    /// Mean progress over all its jobs (a finished job counts 1).
    pub progress: f32,
    pub args: Value,
    /// The first step that failed or was cancelled, and why.
    pub failure: Option<Value>,
    pub cancel_requested: bool,
    pub created_at: DateTime<Utc>,
    /// Its latest change (of it or any of its jobs).
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Its jobs by status.
    pub counts: BTreeMap<String, i64>,
    pub total: i64,
    pub steps: Vec<StepView>,
    /// When to poll again, in milliseconds; absent once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_after_ms: Option<u64>,
}

/// How far along a status is, for a fan-out's least advanced member.
fn rank(status: Status) -> u8 {
    match status {
        Status::Pending => 0,
        Status::Waiting => 1,
        Status::Queued => 2,
        Status::Retrying => 3,
        Status::Running => 4,
        Status::Failed | Status::Cancelled | Status::Succeeded => 5,
    }
}

/// The whole workflow, if it exists and `owner` may see it (`None`: admin).
pub async fn workflow(pool: &PgPool, id: Uuid, owner: Option<&str>) -> Result<Option<WorkflowView>, StoreError> {
    let Some(w) = sqlx::query(
        "SELECT owner, name, args, failure, cancel_requested, created_at, updated_at FROM workflows WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let wf_owner: String = w.try_get("owner")?;
    if owner.is_some_and(|o| o != wf_owner) {
        return Ok(None);
    }
    let rows = sqlx::query(
        r#"SELECT j.id, s.step, s.item_index, s.item, s.signal IS NOT NULL AS is_signal, s.round, j.function, j.status,
                  j.progress, j.message, j.attempt, j.max_attempts, j.started_at, j.finished_at, j.updated_at, j.error,
                  j.result
           FROM jobs j JOIN workflow_steps s ON s.job_id = j.id
           WHERE j.workflow_id = $1 ORDER BY j.created_at, j.id"#,
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let edges = sqlx::query(
        "SELECT DISTINCT cs.step AS child, e.name AS parent
         FROM workflow_steps cs JOIN workflow_edges e ON e.child = cs.job_id
         WHERE cs.workflow_id = $1",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let mut after: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &edges {
        after.entry(e.try_get("child")?).or_default().push(e.try_get("parent")?);
    }
    let mut steps: Vec<StepView> = Vec::new();
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    let (mut progress_sum, mut updated_at, mut finished_at) =
        (0.0f64, w.try_get::<DateTime<Utc>, _>("updated_at")?, None);
    let mut unfinished = false;
    let mut any_waiting = false;
    let mut any_active = false;
    for row in &rows {
        let status: Status = row.try_get("status")?;
        let progress: f32 = row.try_get("progress")?;
        let job = StepJob {
            job_id: row.try_get("id")?,
            index: row.try_get("item_index")?,
            item: row.try_get::<Option<Json<Value>>, _>("item")?.map(|j| j.0),
            status,
            progress: if status.is_finished() { 1.0 } else { progress },
            message: row.try_get("message")?,
            attempt: row.try_get("attempt")?,
            max_attempts: row.try_get("max_attempts")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
            updated_at: row.try_get("updated_at")?,
            error: row.try_get::<Option<Json<JobError>>, _>("error")?.map(|j| j.0),
        };
        progress_sum += f64::from(job.progress);
        updated_at = updated_at.max(job.updated_at);
        if status.is_finished() {
            finished_at = finished_at.max(job.finished_at);
        } else {
            unfinished = true;
            any_waiting |= status == Status::Waiting;
            any_active |= matches!(status, Status::Queued | Status::Running | Status::Retrying);
        }
        *counts.entry(status.as_str().to_owned()).or_default() += 1;
        let name: String = row.try_get("step")?;
        let step = match steps.iter_mut().find(|s| s.name == name) {
            Some(step) => step,
            None => {
                let is_signal: bool = row.try_get("is_signal")?;
                let function: String = row.try_get("function")?;
                steps.push(StepView {
                    after: after.get(&name).cloned().unwrap_or_default(),
                    name,
                    function: (!is_signal).then_some(function),
                    signal: is_signal,
                    status,
                    progress: 0.0,
                    message: None,
                    round: row.try_get("round")?,
                    counts: BTreeMap::new(),
                    total: 0,
                    jobs: Vec::new(),
                    result: None,
                });
                steps.last_mut().expect("just pushed")
            }
        };
        *step.counts.entry(status.as_str().to_owned()).or_default() += 1;
        step.total += 1;
        step.progress += job.progress;
        step.round = step.round.max(row.try_get("round")?);
        if rank(status) < rank(step.status) || (step.total == 1) {
            step.status = status;
        }
        if step.total == 1 {
            step.message = job.message.clone();
            step.result = row.try_get::<Option<Json<Value>>, _>("result")?.map(|j| j.0);
        } else {
            step.message = None;
            step.result = None;
        }
        if step.jobs.len() < LISTED_MEMBERS {
            step.jobs.push(job);
        }
    }
    for step in &mut steps {
        step.progress /= step.total.max(1) as f32;
        if step.status.is_finished() {
            // All finished: failed or cancelled if any member was.
            step.status = if step.counts.contains_key("failed") {
                Status::Failed
            } else if step.counts.contains_key("cancelled") {
                Status::Cancelled
            } else {
                Status::Succeeded
            };
        }
    }
    let failure: Option<Value> = w.try_get::<Option<Json<Value>>, _>("failure")?.map(|j| j.0);
    let cancel_requested: bool = w.try_get("cancel_requested")?;
    let status = if unfinished {
        if any_waiting && !any_active { WorkflowState::Waiting } else { WorkflowState::Running }
    } else {
        match failure.as_ref().and_then(|f| f.get("status")).and_then(Value::as_str) {
            None => WorkflowState::Succeeded,
            Some("cancelled") => WorkflowState::Cancelled,
            Some(_) => WorkflowState::Failed,
        }
    };
    let total = rows.len() as i64;
    Ok(Some(WorkflowView {
        id,
        name: w.try_get("name")?,
        status,
        progress: if total == 0 { 0.0 } else { (progress_sum / total as f64) as f32 },
        args: w.try_get::<Json<Value>, _>("args")?.0,
        failure,
        cancel_requested,
        created_at: w.try_get("created_at")?,
        updated_at,
        finished_at: if unfinished { None } else { finished_at },
        counts,
        total,
        steps,
        poll_after_ms: (!status.is_finished()).then_some(if status == WorkflowState::Waiting { 2_000 } else { 500 }),
    }))
}

/// A line of the workflow list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowSummary {
    pub id: Uuid,
    pub name: Option<String>,
    pub status: WorkflowState,
    pub progress: f32,
    pub total: i64,
    pub created_at: DateTime<Utc>,
}

/// The newest `limit` workflows of `owner` (`None`: everyone's), before `before` when given.
pub async fn list_workflows(
    pool: &PgPool,
    owner: Option<&str>,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<WorkflowSummary>, StoreError> {
    let rows = sqlx::query(
        r#"SELECT w.id, w.name, w.failure->>'status' AS failed_as, w.created_at, c.total, c.unfinished, c.waiting,
                  c.active, c.progress
           FROM workflows w
           CROSS JOIN LATERAL (
              SELECT count(*) AS total,
                     count(*) FILTER (WHERE j.status NOT IN ('succeeded', 'failed', 'cancelled')) AS unfinished,
                     count(*) FILTER (WHERE j.status = 'waiting') AS waiting,
                     count(*) FILTER (WHERE j.status IN ('queued', 'running', 'retrying')) AS active,
                     coalesce(avg(CASE WHEN j.status IN ('succeeded', 'failed', 'cancelled') THEN 1 ELSE j.progress END), 0)::float4
                        AS progress
              FROM jobs j WHERE j.workflow_id = w.id) c
           WHERE ($1::text IS NULL OR w.owner = $1) AND ($2::uuid IS NULL OR w.id < $2)
           ORDER BY w.id DESC LIMIT $3"#,
    )
    .bind(owner)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let (unfinished, waiting, active): (i64, i64, i64) =
                (r.try_get("unfinished")?, r.try_get("waiting")?, r.try_get("active")?);
            let failed_as: Option<String> = r.try_get("failed_as")?;
            let status = match (unfinished, failed_as.as_deref()) {
                (0, None) => WorkflowState::Succeeded,
                (0, Some("cancelled")) => WorkflowState::Cancelled,
                (0, Some(_)) => WorkflowState::Failed,
                _ if waiting > 0 && active == 0 => WorkflowState::Waiting,
                _ => WorkflowState::Running,
            };
            Ok(WorkflowSummary {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                status,
                progress: r.try_get("progress")?,
                total: r.try_get("total")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}

/// The workflow job `id` is a step of, with its jobs finished of all; `None` outside workflows.
pub async fn step_of(pool: &PgPool, id: Uuid) -> Result<Option<WorkflowLink>, StoreError> {
    let row = sqlx::query(
        r#"SELECT s.workflow_id, s.step,
                  (SELECT count(*) FILTER (WHERE j.status IN ('succeeded', 'failed', 'cancelled'))
                   FROM jobs j WHERE j.workflow_id = s.workflow_id) AS finished,
                  (SELECT count(*) FROM jobs j WHERE j.workflow_id = s.workflow_id) AS total
           FROM workflow_steps s WHERE s.job_id = $1"#,
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        Ok(WorkflowLink {
            workflow_id: r.try_get("workflow_id")?,
            step: r.try_get("step")?,
            finished: r.try_get("finished")?,
            total: r.try_get("total")?,
        })
    })
    .transpose()
}

/// Marks every job of workflow `id` as long-polled, so their changes NOTIFY (see
/// [`super::watch`]); returns their ids, to wait on.
pub async fn watch_workflow(pool: &PgPool, id: Uuid) -> Result<Vec<Uuid>, StoreError> {
    sqlx::query("UPDATE jobs SET watched = true WHERE workflow_id = $1 AND NOT watched").bind(id).execute(pool).await?;
    let ids = sqlx::query_scalar("SELECT id FROM jobs WHERE workflow_id = $1").bind(id).fetch_all(pool).await?;
    Ok(ids)
}

/// What a signal did.
#[derive(Debug)]
pub enum SignalOutcome {
    /// Applied: the step's status after it (succeeded, failed, or pending again after a rework)
    /// and the steps to publish now.
    Applied { status: Status, round: i32, runnable: Vec<Publication> },
    /// The same signal was applied before (same `Idempotency-Key`, or the same decision and data
    /// as the step's last one while it no longer waits): nothing changed.
    Repeated { status: Status, round: i32 },
    /// The step is a signal step but doesn't wait now (not yet, or no longer).
    NotWaiting(Status),
    /// The step runs a function; it never takes signals.
    NotSignalStep,
    /// No such workflow for this owner, or no such step in it.
    NotFound,
}

fn signal_hash(signal: &Signal) -> [u8; 32] {
    let canonical = serde_json::json!({"decision": signal.decision.as_str(), "data": signal.data});
    Sha256::digest(canonical.to_string().as_bytes()).into()
}

/// Sends `signal` to step `step` of workflow `wf`, as `sent_by`, in one transaction guarded by the
/// step's status: an approval finishes the step (its result is the decision and data) and the
/// trigger moves its children on; a rejection with rounds left sends the workflow back to the
/// rework step, else fails the step (kind `rejected`).
pub async fn signal(
    pool: &PgPool,
    wf: Uuid,
    step: &str,
    owner: Option<&str>,
    sent_by: &str,
    signal: &Signal,
    key: Option<&str>,
) -> Result<SignalOutcome, StoreError> {
    retrying_deadlocks(|| signal_once(pool, wf, step, owner, sent_by, signal, key)).await
}

async fn signal_once(
    pool: &PgPool,
    wf: Uuid,
    step: &str,
    owner: Option<&str>,
    sent_by: &str,
    signal: &Signal,
    key: Option<&str>,
) -> Result<SignalOutcome, StoreError> {
    let mut tx = pool.begin().await?;
    let Some(row) = sqlx::query(
        "SELECT j.id, j.status, s.round, s.signal FROM workflow_steps s
         JOIN jobs j ON j.id = s.job_id JOIN workflows w ON w.id = s.workflow_id
         WHERE s.workflow_id = $1 AND s.step = $2 AND ($3::text IS NULL OR w.owner = $3)
         ORDER BY j.id LIMIT 1 FOR UPDATE OF j, s",
    )
    .bind(wf)
    .bind(step)
    .bind(owner)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(SignalOutcome::NotFound);
    };
    let id: Uuid = row.try_get("id")?;
    let status: Status = row.try_get("status")?;
    let round: i32 = row.try_get("round")?;
    let Some(Json(spec)) = row.try_get::<Option<Json<SignalSpec>>, _>("signal")? else {
        return Ok(SignalOutcome::NotSignalStep);
    };
    let hash = signal_hash(signal);
    if let Some(key) = key {
        let earlier: Option<(i32, Vec<u8>)> =
            sqlx::query_as("SELECT round, request_hash FROM workflow_signals WHERE job_id = $1 AND request_key = $2")
                .bind(id)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some((earlier_round, _)) = earlier {
            return Ok(SignalOutcome::Repeated { status, round: earlier_round });
        }
    }
    if status != Status::Waiting {
        let last: Option<(i32, Vec<u8>)> = sqlx::query_as(
            "SELECT round, request_hash FROM workflow_signals WHERE job_id = $1 ORDER BY round DESC LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        return Ok(match last {
            Some((last_round, last_hash)) if last_hash == hash => SignalOutcome::Repeated { status, round: last_round },
            _ => SignalOutcome::NotWaiting(status),
        });
    }
    sqlx::query(
        "INSERT INTO workflow_signals (job_id, round, decision, data, sent_by, request_hash, request_key)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(round)
    .bind(signal.decision.as_str())
    .bind(Json(&signal.data))
    .bind(sent_by)
    .bind(&hash[..])
    .bind(key)
    .execute(&mut *tx)
    .await?;
    let decided = serde_json::json!({
        "decision": signal.decision.as_str(), "data": signal.data, "by": sent_by, "round": round,
    });
    let (status, runnable) = match (signal.decision, &spec.on_reject) {
        (Decision::Approve, _) => {
            sqlx::query(
                "UPDATE jobs SET status = 'succeeded', progress = 1, result = $2, error = NULL, finished_at = now(),
                        updated_at = now(), message = $3
                 WHERE id = $1 AND status = 'waiting'",
            )
            .bind(id)
            .bind(Json(&decided))
            .bind(format!("approved by {sent_by}"))
            .execute(&mut *tx)
            .await?;
            let runnable = children_runnable(&mut tx, id).await?;
            (Status::Succeeded, runnable)
        }
        (Decision::Reject, Some(rework)) if (round as u32) < rework.max_rounds => {
            let runnable = rework_from(&mut tx, wf, id, &rework.back_to, &decided).await?;
            (Status::Pending, runnable)
        }
        (Decision::Reject, _) => {
            let error = JobError::permanent(
                crate::job::ErrorKind::Rejected,
                match &spec.on_reject {
                    Some(r) => format!("rejected by {sent_by} after {} rework rounds", r.max_rounds),
                    None => format!("rejected by {sent_by}"),
                },
            );
            sqlx::query(
                "UPDATE jobs SET status = 'failed', result = $2, error = $3, finished_at = now(), updated_at = now()
                 WHERE id = $1 AND status = 'waiting'",
            )
            .bind(id)
            .bind(Json(&decided))
            .bind(Json(&error))
            .execute(&mut *tx)
            .await?;
            (Status::Failed, Vec::new())
        }
    };
    tx.commit().await?;
    Ok(SignalOutcome::Applied { status, round, runnable })
}

async fn children_runnable(tx: &mut Transaction<'_, Postgres>, id: Uuid) -> Result<Vec<Publication>, StoreError> {
    let rows = sqlx::query(
        "SELECT j.id, j.attempt, j.function, j.priority, j.queue, j.trace_context
         FROM workflow_edges e JOIN jobs j ON j.id = e.child
         WHERE e.parent = $1 AND j.status = 'queued' AND j.dispatched_at IS NULL",
    )
    .bind(id)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter().map(publication).collect()
}

/// A rejection's rework: the steps from `back_to` to the signal step `signal_job` (both
/// included: every step that is a descendant of the one and an ancestor of the other) start
/// over. `back_to` is queued again with the decision as its input `rework` and a fresh attempt
/// budget; the others are pending on their parents within that set; the signal step counts the
/// round. Their earlier runs stay in `job_runs`.
async fn rework_from(
    tx: &mut Transaction<'_, Postgres>,
    wf: Uuid,
    signal_job: Uuid,
    back_to: &str,
    decided: &Value,
) -> Result<Vec<Publication>, StoreError> {
    let target: Uuid = sqlx::query_scalar(
        "SELECT job_id FROM workflow_steps WHERE workflow_id = $1 AND step = $2 ORDER BY job_id LIMIT 1",
    )
    .bind(wf)
    .bind(back_to)
    .fetch_one(&mut **tx)
    .await?;
    let set: Vec<Uuid> = sqlx::query_scalar(
        r#"WITH RECURSIVE down(id) AS (SELECT $1::uuid UNION SELECT e.child FROM workflow_edges e JOIN down ON e.parent = down.id),
                          up(id) AS (SELECT $2::uuid UNION SELECT e.parent FROM workflow_edges e JOIN up ON e.child = up.id)
           SELECT id FROM down INTERSECT SELECT id FROM up"#,
    )
    .bind(target)
    .bind(signal_job)
    .fetch_all(&mut **tx)
    .await?;
    sqlx::query(
        r#"UPDATE jobs SET
              status = CASE WHEN id = $2 THEN 'queued' ELSE 'pending' END,
              max_attempts = attempt + (max_attempts - attempt_base), attempt_base = attempt,
              run_after = now(), dispatched_at = NULL, cancel_requested = false, claim_id = NULL, worker_id = NULL,
              lease_until = NULL, progress = 0, message = CASE WHEN id = $2 THEN 'rework requested' END, result = NULL,
              result_uri = NULL, error = NULL, started_at = NULL, finished_at = NULL, updated_at = now()
           WHERE id = ANY($1)"#,
    )
    .bind(&set)
    .bind(target)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        r#"UPDATE workflow_steps s SET
              pending_parents = (SELECT count(*) FROM workflow_edges e WHERE e.child = s.job_id AND e.parent = ANY($1)),
              failed_parents = 0,
              inputs = CASE WHEN s.job_id = $2 THEN coalesce(s.inputs, '{}'::jsonb) || jsonb_build_object('rework', $4::jsonb)
                            ELSE NULL END,
              round = s.round + (s.job_id = $3)::int
           WHERE s.job_id = ANY($1)"#,
    )
    .bind(&set)
    .bind(target)
    .bind(signal_job)
    .bind(Json(decided))
    .execute(&mut **tx)
    .await?;
    // Steps outside the set that wait on set members which had finished wait for them again.
    sqlx::query(
        r#"UPDATE workflow_steps s SET pending_parents = s.pending_parents + c.n
           FROM (SELECT e.child, count(*) AS n FROM workflow_edges e
                 WHERE e.parent = ANY($1) AND e.parent <> $2 AND NOT e.child = ANY($1) GROUP BY e.child) c
           JOIN jobs j ON j.id = c.child
           WHERE s.job_id = c.child AND j.status = 'pending'"#,
    )
    .bind(&set)
    .bind(signal_job)
    .execute(&mut **tx)
    .await?;
    let rows = sqlx::query("SELECT id, attempt, function, priority, queue, trace_context FROM jobs WHERE id = $1")
        .bind(target)
        .fetch_all(&mut **tx)
        .await?;
    rows.iter().map(publication).collect()
}

/// What a workflow cancel did.
#[derive(Debug)]
pub enum WorkflowCancel {
    /// Its unfinished jobs were cancelled (running ones asked to stop); how many.
    Cancelled(usize),
    /// It had finished already.
    Finished,
    NotFound,
}

/// Cancels workflow `id`: every pending, waiting, queued or retrying job is cancelled and every
/// running one asked to stop (its worker hears of it at once through `runq_cancel`, or at its
/// next heartbeat).
pub async fn cancel_workflow(pool: &PgPool, id: Uuid, owner: Option<&str>) -> Result<WorkflowCancel, StoreError> {
    let found = sqlx::query(
        "UPDATE workflows SET cancel_requested = true, updated_at = now()
         WHERE id = $1 AND ($2::text IS NULL OR owner = $2) RETURNING id",
    )
    .bind(id)
    .bind(owner)
    .fetch_optional(pool)
    .await?;
    if found.is_none() {
        return Ok(WorkflowCancel::NotFound);
    }
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE workflow_id = $1 AND status IN ('pending', 'waiting', 'queued', 'retrying', 'running')",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    if ids.is_empty() {
        return Ok(WorkflowCancel::Finished);
    }
    let acted = retrying_deadlocks(|| super::cancel_many(pool, &ids, None)).await?;
    Ok(WorkflowCancel::Cancelled(acted.len()))
}

/// What a workflow retry did.
#[derive(Debug)]
pub enum WorkflowRetry {
    /// Its failed and cancelled steps start over: how many jobs, and those queued at once.
    Retried {
        jobs: usize,
        runnable: Vec<Publication>,
    },
    /// Some of its steps are not finished yet.
    Unfinished,
    /// It succeeded: there is nothing to retry.
    Succeeded,
    NotFound,
}

/// Retries a failed or cancelled workflow from where it stopped, in one transaction: every step
/// job that failed or was cancelled starts over (its attempt budget again, its runs kept, as a
/// job's retry does), after its parents that start over too; the steps that succeeded keep
/// their results and don't run again. Those whose parents all succeeded are queued (or waiting,
/// for a signal step: a fresh timeout, and a new round if it had a decision) at once.
pub async fn retry_workflow(pool: &PgPool, id: Uuid, owner: Option<&str>) -> Result<WorkflowRetry, StoreError> {
    let mut tx = pool.begin().await?;
    let found: Option<Option<Json<Value>>> = sqlx::query_scalar(
        "SELECT failure FROM workflows WHERE id = $1 AND ($2::text IS NULL OR owner = $2) FOR UPDATE",
    )
    .bind(id)
    .bind(owner)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(_failure) = found else {
        return Ok(WorkflowRetry::NotFound);
    };
    // Lock the jobs, so nothing (a job's own retry, the reaper) moves one while we decide.
    let jobs: Vec<(Uuid, Status)> =
        sqlx::query_as("SELECT id, status FROM jobs WHERE workflow_id = $1 ORDER BY id FOR UPDATE")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
    if jobs.iter().any(|(_, s)| !s.is_finished()) {
        return Ok(WorkflowRetry::Unfinished);
    }
    let again: Vec<Uuid> =
        jobs.iter().filter(|(_, s)| matches!(s, Status::Failed | Status::Cancelled)).map(|(j, _)| *j).collect();
    if again.is_empty() {
        return Ok(WorkflowRetry::Succeeded);
    }
    sqlx::query(
        r#"UPDATE jobs SET status = 'pending',
              max_attempts = attempt + (max_attempts - attempt_base), attempt_base = attempt,
              run_after = now(), dispatched_at = NULL, cancel_requested = false, claim_id = NULL, worker_id = NULL,
              lease_until = NULL, progress = 0, message = NULL, result = NULL, result_uri = NULL, error = NULL,
              started_at = NULL, finished_at = NULL, updated_at = now()
           WHERE id = ANY($1)"#,
    )
    .bind(&again)
    .execute(&mut *tx)
    .await?;
    // Each waits for its parents that start over; a rework's notes stay its input; a signal step
    // that had a decision this round waits in the next (one decision per step and round).
    sqlx::query(
        r#"UPDATE workflow_steps s SET
              pending_parents = (SELECT count(*) FROM workflow_edges e WHERE e.child = s.job_id AND e.parent = ANY($1)),
              failed_parents = 0,
              inputs = CASE WHEN s.inputs ? 'rework' THEN jsonb_build_object('rework', s.inputs->'rework') END,
              round = s.round + (s.signal IS NOT NULL AND EXISTS (
                  SELECT 1 FROM workflow_signals g WHERE g.job_id = s.job_id AND g.round = s.round))::int
           WHERE s.job_id = ANY($1)"#,
    )
    .bind(&again)
    .execute(&mut *tx)
    .await?;
    let roots: Vec<Uuid> =
        sqlx::query_scalar("SELECT job_id FROM workflow_steps WHERE job_id = ANY($1) AND pending_parents = 0")
            .bind(&again)
            .fetch_all(&mut *tx)
            .await?;
    sqlx::query("UPDATE workflows SET failure = NULL, cancel_requested = false, updated_at = now() WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let runnable = make_runnable(&mut tx, &roots).await?;
    tx.commit().await?;
    Ok(WorkflowRetry::Retried { jobs: again.len(), runnable })
}

/// Most parents one page holds.
pub const MAX_PARENTS_PAGE: i64 = 500;

/// The parents of job `id` (the steps it ran after), by job id after `after`, at most `limit`.
pub async fn parents(
    pool: &PgPool,
    id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<ParentResult>, StoreError> {
    let rows = sqlx::query(
        r#"SELECT p.id, e.name, ps.item_index, ps.item, p.status, p.result, p.result_uri, p.error
           FROM workflow_edges e JOIN jobs p ON p.id = e.parent LEFT JOIN workflow_steps ps ON ps.job_id = p.id
           WHERE e.child = $1 AND ($2::uuid IS NULL OR e.parent > $2)
           ORDER BY e.parent LIMIT $3"#,
    )
    .bind(id)
    .bind(after)
    .bind(limit.clamp(1, MAX_PARENTS_PAGE))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ParentResult {
                job_id: r.try_get("id")?,
                name: r.try_get("name")?,
                index: r.try_get("item_index")?,
                item: r.try_get::<Option<Json<Value>>, _>("item")?.map(|j| j.0),
                status: r.try_get("status")?,
                result: r.try_get::<Option<Json<Value>>, _>("result")?.map(|j| j.0),
                result_uri: r.try_get("result_uri")?,
                error: r.try_get::<Option<Json<JobError>>, _>("error")?.map(|j| j.0),
            })
        })
        .collect()
}

/// What a step reads: its parents' results by step name (a large fan-in: a summary, with
/// `paged: true`; page with [`parents`]) and a rework's decision. `{}` outside workflows.
pub async fn inputs(pool: &PgPool, id: Uuid) -> Result<Value, StoreError> {
    let inputs: Option<Option<Json<Value>>> =
        sqlx::query_scalar("SELECT inputs FROM workflow_steps WHERE job_id = $1").bind(id).fetch_optional(pool).await?;
    Ok(inputs.flatten().map_or_else(|| Value::Object(Default::default()), |j| j.0))
}

/// A run's fan-out with a continuation: `children` (already checked) and `continuation`, which
/// runs once after every child has finished. Inserted fenced by the parent's claim, in one
/// transaction. The parent becomes a step of a workflow (its own, with its id, unless it is a
/// step of one already); the children are steps `group`, the continuation step `then`. If the
/// parent has steps after it, they now wait for the continuation instead (and read its result
/// under the parent's name). `None` when the claim was lost.
pub async fn spawn_with_continuation(
    pool: &PgPool,
    parent: Uuid,
    claim_id: Uuid,
    group: &str,
    children: &[JobSpec<'_>],
    then: &str,
    continuation: &JobSpec<'_>,
) -> Result<Option<(Vec<Submitted>, Uuid)>, StoreError> {
    let mut tx = pool.begin().await?;
    let Some(row) = sqlx::query(
        "SELECT owner, workflow_id, function FROM jobs WHERE id = $1 AND claim_id = $2 AND status = 'running' FOR UPDATE",
    )
    .bind(parent)
    .bind(claim_id)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(None);
    };
    let owner: String = row.try_get("owner")?;
    let wf = match row.try_get::<Option<Uuid>, _>("workflow_id")? {
        Some(wf) => wf,
        None => {
            let function: String = row.try_get("function")?;
            sqlx::query("INSERT INTO workflows (id, owner) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
                .bind(parent)
                .bind(&owner)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO workflow_steps (job_id, workflow_id, step) VALUES ($1, $1, $2) ON CONFLICT (job_id) DO NOTHING",
            )
            .bind(parent)
            .bind(&function)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE jobs SET workflow_id = $1 WHERE id = $1").bind(parent).execute(&mut *tx).await?;
            parent
        }
    };
    let parent_step: String = sqlx::query_scalar("SELECT step FROM workflow_steps WHERE job_id = $1")
        .bind(parent)
        .fetch_one(&mut *tx)
        .await?;
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
    let submitted = super::jobs::insert_keyed_and_plain(&mut tx, &new, Some(parent)).await?;
    let created: Vec<Uuid> = submitted.iter().filter(|s| s.created).map(|s| s.job.status.id).collect();
    let positions: Vec<i32> = submitted.iter().enumerate().filter(|(_, s)| s.created).map(|(i, _)| i as i32).collect();
    sqlx::query("UPDATE jobs SET workflow_id = $2 WHERE id = ANY($1)")
        .bind(&created)
        .bind(wf)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        // A child's failure neither stops its siblings nor the workflow: the continuation gets
        // every outcome (`run_on_failure`).
        "INSERT INTO workflow_steps (job_id, workflow_id, step, item_index, run_on_failure)
         SELECT t.id, $2, $3, t.i, true FROM UNNEST($1::uuid[], $4::int4[]) AS t(id, i)",
    )
    .bind(&created)
    .bind(wf)
    .bind(group)
    .bind(&positions)
    .execute(&mut *tx)
    .await?;
    let then_job = PlannedJob {
        id: Uuid::now_v7(),
        step: then.to_owned(),
        item_index: None,
        item: None,
        function: continuation.function.to_owned(),
        priority: continuation.priority,
        queue: continuation.queue.map(str::to_owned),
        args: continuation.args.to_owned(),
        max_attempts: continuation.max_attempts,
        limit_keys: continuation.limit_keys.clone(),
        run_on_failure: true,
        signal: None,
        parents: vec![(0, group.to_owned()); created.len()],
    };
    insert_steps(&mut tx, wf, &owner, &[&then_job], None, Some(parent)).await?;
    // The parent's dependents wait for the continuation now, reading it under the parent's name.
    sqlx::query("UPDATE workflow_edges SET parent = $2, name = $3 WHERE parent = $1")
        .bind(parent)
        .bind(then_job.id)
        .bind(&parent_step)
        .execute(&mut *tx)
        .await?;
    let edges: Vec<(Uuid, Uuid, String)> = created.iter().map(|&c| (c, then_job.id, group.to_owned())).collect();
    insert_edges(&mut tx, &edges).await?;
    if created.is_empty() {
        make_runnable(&mut tx, &[then_job.id]).await?;
    }
    tx.commit().await?;
    Ok(Some((submitted, then_job.id)))
}

/// A signal step whose timeout passed.
#[derive(Debug)]
pub struct DueSignal {
    pub job_id: Uuid,
    pub workflow_id: Uuid,
    pub step: String,
    pub on_timeout: Option<Signal>,
    pub timeout_secs: Option<f64>,
}

/// Signal steps waiting past their timeout, oldest first (on `jobs_waiting_due`).
pub async fn due_signals(pool: &PgPool, limit: i64) -> Result<Vec<DueSignal>, StoreError> {
    let rows = sqlx::query(
        "SELECT j.id, s.workflow_id, s.step, s.signal FROM jobs j JOIN workflow_steps s ON s.job_id = j.id
         WHERE j.status = 'waiting' AND j.run_after <= now() ORDER BY j.run_after LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let spec: Option<Json<SignalSpec>> = r.try_get("signal")?;
            let spec = spec.map(|j| j.0).unwrap_or_default();
            Ok(DueSignal {
                job_id: r.try_get("id")?,
                workflow_id: r.try_get("workflow_id")?,
                step: r.try_get("step")?,
                on_timeout: spec.on_timeout,
                timeout_secs: spec.timeout_secs,
            })
        })
        .collect()
}

/// Fails a signal step whose timeout passed without a default decision (kind `timeout`),
/// guarded by its status and due time; `false` if a signal came first.
pub async fn time_out_signal(pool: &PgPool, id: Uuid, timeout_secs: f64) -> Result<bool, StoreError> {
    let error = JobError::permanent(crate::job::ErrorKind::Timeout, format!("no signal came within {timeout_secs} s"));
    let done = retrying_deadlocks(|| async {
        Ok(sqlx::query(
            "UPDATE jobs SET status = 'failed', error = $2, finished_at = now(), updated_at = now()
             WHERE id = $1 AND status = 'waiting' AND run_after <= now()",
        )
        .bind(id)
        .bind(Json(&error))
        .execute(pool)
        .await?
        .rows_affected())
    })
    .await?;
    Ok(done == 1)
}
