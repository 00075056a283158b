//! Retry promotion: `retrying` jobs whose backoff has passed go back to `queued`, undispatched,
//! for the relay to publish.

use sqlx::PgPool;

use crate::store::StoreError;

/// Moves up to `limit` `retrying` jobs whose backoff has passed back to `queued` (undispatched).
pub async fn run_once(pool: &PgPool, limit: i64) -> Result<u64, StoreError> {
    let done = sqlx::query!(
        r#"UPDATE jobs SET status = 'queued', dispatched_at = NULL, updated_at = now()
           WHERE id IN (SELECT id FROM jobs WHERE status = 'retrying' AND run_after <= now()
                        ORDER BY run_after LIMIT $1 FOR UPDATE SKIP LOCKED)
             AND status = 'retrying'"#,
        limit,
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
