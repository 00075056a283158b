//! Dead letters: a job message Pub/Sub gave up delivering. A job still queued at that attempt
//! (never claimed: the workers were full or down) is re-dispatched after a doubling backoff and
//! fails as `undeliverable` after a bounded number of rounds; any other job is left alone.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use crate::job::{ErrorKind, JobError, Status};
use crate::store::{StoreError, secs};

/// What a dead-lettered message did to its job.
#[derive(Debug, PartialEq, Eq)]
pub enum DeadLetterOutcome {
    /// Still queued and never claimed since that message: re-dispatched after a backoff.
    Requeued,
    /// Dead-lettered too many times: failed with kind `undeliverable`.
    Failed,
    /// Running, finished, or claimed since: left alone.
    Ignored,
}

/// Handles a dead-lettered message for run `attempt` of job `id`, guarded like every
/// transition: only a job still `queued` at that attempt is touched. The re-dispatch waits
/// `backoff`, doubled each round.
pub async fn dead_letter(
    pool: &PgPool,
    id: Uuid,
    attempt: i32,
    max_rounds: i32,
    backoff: Duration,
) -> Result<DeadLetterOutcome, StoreError> {
    let undeliverable = JobError::permanent(ErrorKind::Undeliverable, "Pub/Sub could not deliver the job to a worker");
    let status = sqlx::query_scalar!(
        r#"UPDATE jobs SET dead_letters = dead_letters + 1,
              status = CASE WHEN dead_letters + 1 >= $3 THEN 'failed' ELSE 'queued' END,
              run_after = CASE WHEN dead_letters + 1 >= $3 THEN run_after
                               ELSE now() + make_interval(secs => $4 * power(2, dead_letters)) END,
              finished_at = CASE WHEN dead_letters + 1 >= $3 THEN now() ELSE NULL END,
              error = CASE WHEN dead_letters + 1 >= $3
                           THEN $5::jsonb ELSE error END,
              dispatched_at = NULL, updated_at = now()
           WHERE id = $1 AND attempt = $2 AND status = 'queued'
           RETURNING status AS "status: Status""#,
        id,
        attempt,
        max_rounds,
        secs(backoff),
        Json(undeliverable) as Json<JobError>,
    )
    .fetch_optional(pool)
    .await?;
    Ok(match status {
        Some(Status::Failed) => DeadLetterOutcome::Failed,
        Some(_) => DeadLetterOutcome::Requeued,
        None => DeadLetterOutcome::Ignored,
    })
}
