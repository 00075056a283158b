//! What the dashboard reads: a job's run history and the counts behind `/dashboard/stats`.
//!
//! Every query here is on an index: `job_runs_job` for the history, `jobs_function_status`,
//! `jobs_status_id` and `jobs_finished` for the counts.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use super::StoreError;
use crate::job::JobError;

/// One run of a job, from `job_runs`: the claim, who ran it, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// The run's number, 1-based (a released run's attempt is reused by the next one).
    pub attempt: i32,
    /// The worker instance that claimed it.
    pub worker_id: String,
    pub started_at: DateTime<Utc>,
    /// `None` while it runs.
    pub finished_at: Option<DateTime<Utc>>,
    /// `succeeded`, `retrying`, `failed`, `cancelled`, `released` or `reaped`; `None` while it runs.
    pub outcome: Option<String>,
    /// Why it failed, when it did.
    pub error: Option<JobError>,
    /// When a `retrying` run's job became due again: the gap to the next run is the backoff.
    pub retry_at: Option<DateTime<Utc>>,
}

/// The runs of job `id`, oldest first; `None` when there is no such job or `owner` may not see
/// it (`None` owner = admin). One primary-key read joined to `job_runs_job`.
pub async fn run_history(pool: &PgPool, id: Uuid, owner: Option<&str>) -> Result<Option<Vec<Run>>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT r.attempt AS "attempt?", r.worker_id AS "worker_id?", r.started_at AS "started_at?",
                  r.finished_at, r.outcome, r.error AS "error: Json<JobError>", r.retry_at
           FROM jobs j LEFT JOIN job_runs r ON r.job_id = j.id
           WHERE j.id = $1 AND ($2::text IS NULL OR j.owner = $2)
           ORDER BY r.started_at, r.attempt"#,
        id,
        owner,
    )
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    // A job without runs yet comes back as one row of NULLs from the outer join.
    Ok(Some(
        rows.into_iter()
            .filter_map(|r| {
                Some(Run {
                    attempt: r.attempt?,
                    worker_id: r.worker_id?,
                    started_at: r.started_at?,
                    finished_at: r.finished_at,
                    outcome: r.outcome,
                    error: r.error.map(|Json(e)| e),
                    retry_at: r.retry_at,
                })
            })
            .collect(),
    ))
}

/// How far back the dashboard's status counts look for finished jobs.
pub const FINISHED_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The raw counts behind `/dashboard/stats`, read in one consistent snapshot.
#[derive(Debug, Clone, Default)]
pub struct DashboardCounts {
    /// `(function, status, count)` over every unfinished job and the jobs finished in the last
    /// [`FINISHED_WINDOW`].
    pub by_function: Vec<(String, String, i64)>,
    /// `(priority, status, count)` of unfinished jobs: the queue depth.
    pub unfinished_by_priority: Vec<(String, String, i64)>,
    /// `(minute, jobs finished in it)` for the 15 minutes ending with the current one, oldest
    /// first, zero-filled; the last minute is still running.
    pub finished_per_minute: Vec<(DateTime<Utc>, i64)>,
    /// `(status, count)` of jobs that succeeded or failed in the last hour.
    pub last_hour: Vec<(String, i64)>,
}

/// Reads [`DashboardCounts`] in one read-only REPEATABLE READ transaction, so the numbers agree with each
/// other (the status totals are the sums of the function rows, the depth matches them).
pub async fn dashboard_counts(pool: &PgPool) -> Result<DashboardCounts, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    // Unfinished jobs, all of them (few by design: jobs_status_id), and finished ones of the
    // last FINISHED_WINDOW (a range of jobs_finished), so the cost follows the recent traffic,
    // not the history kept: a count over every kept job read millions of rows at 5M kept.
    let by_function = sqlx::query!(
        r#"SELECT function, status, count(*) AS "count!" FROM jobs
           WHERE status IN ('queued', 'retrying', 'running')
              OR (status IN ('succeeded', 'failed', 'cancelled') AND finished_at IS NOT NULL
                  AND finished_at >= now() - make_interval(secs => $1))
           GROUP BY function, status"#,
        FINISHED_WINDOW.as_secs_f64()
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| (r.function, r.status, r.count))
    .collect();
    // jobs_status_id on the three unfinished statuses, which are few by design.
    let unfinished_by_priority = sqlx::query!(
        r#"SELECT priority, status, count(*) AS "count!" FROM jobs
           WHERE status IN ('queued', 'retrying', 'running') GROUP BY priority, status"#
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| (r.priority, r.status, r.count))
    .collect();
    // One range scan of jobs_finished (status, finished_at), zero-filled by generate_series.
    let finished_per_minute = sqlx::query!(
        r#"WITH done AS (
              SELECT date_trunc('minute', finished_at) AS minute, count(*) AS n FROM jobs
              WHERE status IN ('succeeded', 'failed', 'cancelled') AND finished_at IS NOT NULL
                    AND finished_at >= date_trunc('minute', now()) - interval '14 minutes'
              GROUP BY 1)
           SELECT m.minute AS "minute!", coalesce(done.n, 0) AS "finished!"
           FROM generate_series(date_trunc('minute', now()) - interval '14 minutes', date_trunc('minute', now()),
                                interval '1 minute') AS m(minute)
           LEFT JOIN done ON done.minute = m.minute
           ORDER BY m.minute"#
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| (r.minute, r.finished))
    .collect();
    // The same index, one hour of it.
    let last_hour = sqlx::query!(
        r#"SELECT status, count(*) AS "count!" FROM jobs
           WHERE status IN ('succeeded', 'failed') AND finished_at IS NOT NULL
                 AND finished_at >= now() - interval '1 hour'
           GROUP BY status"#
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| (r.status, r.count))
    .collect();
    tx.commit().await?;
    Ok(DashboardCounts { by_function, unfinished_by_priority, finished_per_minute, last_hour })
}
