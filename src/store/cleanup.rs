//! Cleanup: deleting finished jobs past their retention, and idempotency keys past theirs.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::StoreError;

/// A deleted job whose result may still be in GCS.
#[derive(Debug)]
pub struct Deleted {
    pub id: Uuid,
    pub result_uri: Option<String>,
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
