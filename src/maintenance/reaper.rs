//! The reaper: runs whose lease expired (their worker died, froze or lost Postgres) go back to
//! `queued` while attempts are left, else fail as `lost` (`cancelled` when a cancel was asked).
//! Lost leases count as attempts, so a crash loop is bounded.

use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use crate::job::{ErrorKind, JobError, Status};
use crate::store::StoreError;

/// Runs reaped in one statement at most.
pub const REAP_BATCH: i64 = 1000;

/// Ends or requeues runs whose lease expired (their worker died): back to `queued` while
/// attempts are left, else `failed` with kind `lost` (`cancelled` if a cancel was requested).
/// Returns the jobs touched with their new status.
async fn reap_expired(pool: &PgPool, limit: i64) -> Result<Vec<(Uuid, Status)>, StoreError> {
    let lost = JobError::permanent(
        ErrorKind::Lost,
        "the worker stopped renewing its lease (crashed or killed) and no attempts are left",
    );
    let rows = sqlx::query!(
        r#"WITH expired AS (
              SELECT id, claim_id FROM jobs WHERE status = 'running' AND lease_until < now()
              ORDER BY lease_until LIMIT $1 FOR UPDATE SKIP LOCKED),
           reaped AS (
              UPDATE jobs j SET
                 status = CASE WHEN j.cancel_requested THEN 'cancelled'
                               WHEN j.attempt < j.max_attempts THEN 'queued' ELSE 'failed' END,
                 error = CASE WHEN j.cancel_requested OR j.attempt < j.max_attempts THEN j.error
                              ELSE $2::jsonb END,
                 finished_at = CASE WHEN NOT j.cancel_requested AND j.attempt < j.max_attempts THEN NULL ELSE now() END,
                 claim_id = NULL, worker_id = NULL, lease_until = NULL, dispatched_at = NULL, updated_at = now()
              FROM expired WHERE j.id = expired.id AND j.status = 'running'
              RETURNING j.id, j.status, expired.claim_id),
           runs AS (UPDATE job_runs r SET finished_at = now(), outcome = 'reaped'
                    FROM reaped WHERE r.claim_id = reaped.claim_id)
           SELECT id AS "id!", status AS "status!: Status" FROM reaped"#,
        limit,
        Json(lost) as Json<JobError>,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.status)).collect())
}

/// One pass: reaps up to [`REAP_BATCH`] expired runs, logs and counts them.
pub async fn run_once(pool: &PgPool) -> Result<Vec<(Uuid, Status)>, StoreError> {
    let reaped = reap_expired(pool, REAP_BATCH).await?;
    metrics::counter!(crate::telemetry::metrics::REAPED).increment(reaped.len() as u64);
    for (id, status) in &reaped {
        tracing::warn!(job_id = %id, %status, "lease expired (worker lost); job reaped");
    }
    Ok(reaped)
}
