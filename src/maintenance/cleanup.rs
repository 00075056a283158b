//! Cleanup: finished jobs past their retention (and their GCS results), then idempotency keys
//! past theirs whose job is gone.

use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;

use crate::storage::BlobStore;
pub use crate::store::Deleted;
use crate::store::StoreError;

/// How long finished jobs are kept, per status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// `RUNQ_RETENTION_SUCCEEDED_SECS`, default 7 days.
    pub succeeded: Duration,
    /// `RUNQ_RETENTION_FAILED_SECS`, default 30 days (kept longer for investigation).
    pub failed: Duration,
    /// `RUNQ_RETENTION_CANCELLED_SECS`, default 7 days.
    pub cancelled: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        let day = 86_400;
        Self {
            succeeded: Duration::from_secs(7 * day),
            failed: Duration::from_secs(30 * day),
            cancelled: Duration::from_secs(7 * day),
        }
    }
}

/// What one cleanup did.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct CleanupReport {
    pub jobs_deleted: usize,
    pub results_deleted: usize,
    pub keys_deleted: u64,
}

/// Deletes finished jobs past retention (and their GCS results), then expired idempotency keys.
pub async fn run_once(
    pool: &PgPool,
    storage: Option<&BlobStore>,
    retention: Retention,
    key_retention: Duration,
) -> Result<CleanupReport, StoreError> {
    const BATCH: i64 = 1000;
    let mut report = CleanupReport::default();
    loop {
        let deleted =
            delete_expired_jobs(pool, retention.succeeded, retention.failed, retention.cancelled, key_retention, BATCH)
                .await?;
        report.jobs_deleted += deleted.len();
        report.results_deleted += delete_results(storage, &deleted).await;
        if (deleted.len() as i64) < BATCH {
            break;
        }
    }
    report.keys_deleted = delete_expired_keys(pool, 10_000).await?;
    Ok(report)
}

/// Deletes the GCS result objects of deleted jobs (cleanup's, a bulk delete's, a client's
/// delete of one job), after their rows' delete committed. Best effort, like the rest of
/// cleanup: an object that can't be deleted is logged and left orphaned. Returns how many were
/// deleted (an object already gone counts: [`BlobStore::delete`]).
pub async fn delete_results(storage: Option<&BlobStore>, deleted: &[Deleted]) -> usize {
    let mut count = 0;
    for (id, uri) in deleted.iter().filter_map(|d| d.result_uri.as_deref().map(|u| (d.id, u))) {
        match storage {
            Some(storage) => match storage.delete(uri).await {
                Ok(()) => count += 1,
                Err(e) => {
                    tracing::warn!(job_id = %id, %uri, error = %e, "could not delete a result object; it is orphaned")
                }
            },
            None => tracing::warn!(job_id = %id, %uri, "no GCS access configured; result object left in place"),
        }
    }
    count
}

/// Deletes up to `limit` finished jobs older than their status's retention. Their idempotency
/// keys are kept for `key_retention` more, so a late retry of the submit can't recreate them.
pub async fn delete_expired_jobs(
    pool: &PgPool,
    succeeded: Duration,
    failed: Duration,
    cancelled: Duration,
    key_retention: Duration,
    limit: i64,
) -> Result<Vec<Deleted>, StoreError> {
    let rows = sqlx::query!(
        r#"WITH doomed AS (
              SELECT id FROM jobs
              WHERE (status = 'succeeded' AND finished_at < now() - make_interval(secs => $1))
                 OR (status = 'failed' AND finished_at < now() - make_interval(secs => $2))
                 OR (status = 'cancelled' AND finished_at < now() - make_interval(secs => $3))
              LIMIT $5 FOR UPDATE SKIP LOCKED),
           keys AS (
              UPDATE idempotency_keys k SET expires_at = greatest(k.expires_at, now() + make_interval(secs => $4))
              FROM doomed WHERE k.job_id = doomed.id)
           DELETE FROM jobs j USING doomed WHERE j.id = doomed.id
           RETURNING j.id, j.result_uri"#,
        succeeded.as_secs_f64(),
        failed.as_secs_f64(),
        cancelled.as_secs_f64(),
        key_retention.as_secs_f64(),
        limit,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| Deleted { id: r.id, result_uri: r.result_uri }).collect())
}

/// Deletes idempotency keys past their expiry whose job is gone.
pub async fn delete_expired_keys(pool: &PgPool, limit: i64) -> Result<u64, StoreError> {
    let done = sqlx::query!(
        r#"DELETE FROM idempotency_keys k
           WHERE (k.owner, k.key) IN (
              SELECT owner, key FROM idempotency_keys
              WHERE expires_at < now() AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = idempotency_keys.job_id)
              LIMIT $1)"#,
        limit,
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
