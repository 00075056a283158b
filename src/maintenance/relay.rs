//! The relay: publishes due queued jobs nobody published (a crash or an outage after their
//! commit, a delay that passed, a retry or a requeue) and republishes those published long ago
//! without a claim, batch by batch, each job backing off alone when Pub/Sub refuses it.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::dispatch::Dispatcher;
use crate::job::{ErrorKind, Priority};
use crate::store::{Publication, StoreError, secs};

/// Refusals (Pub/Sub rejected the message itself, published alone) after which a job fails
/// with kind `unpublishable`. Between them the job backs off alone: 1 s, 2 s, 4 s, 8 s, 16 s,
/// so a job that can never be published (a queue whose topic is missing) fails within about
/// half a minute instead of waiting in `queued`.
pub const MAX_PUBLISH_REFUSALS: i32 = 6;
/// The first backoff after a refusal; it doubles per refusal up to [`MAX_PUBLISH_BACKOFF`].
pub const PUBLISH_BACKOFF: Duration = Duration::from_secs(1);
/// The longest backoff between two publishes of a refused job.
pub const MAX_PUBLISH_BACKOFF: Duration = Duration::from_secs(300);
/// Jobs one relay batch locks and publishes.
pub const RELAY_BATCH: i64 = 500;

/// What one relay pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayReport {
    /// `retrying` jobs whose backoff passed, moved to `queued`.
    pub promoted: u64,
    /// Due queued jobs found undispatched (or stale).
    pub found: usize,
    /// Of those, how many were published.
    pub published: usize,
    /// Of those, how many Pub/Sub refused (each backs off alone, or failed as `unpublishable`).
    pub refused: usize,
}

/// One relay pass: promote due retries, then publish undispatched due jobs batch by batch.
///
/// Each batch is marked dispatched and committed before anything is published, so no row lock
/// is held across a publish (claims and cancels of those jobs never wait on Pub/Sub). A job
/// whose publish failed is unmarked again; one Pub/Sub refused backs off alone, so it can't
/// keep the jobs behind it from going out. The pass ends when a batch comes back short, or
/// when Pub/Sub is unreachable (nothing went out and nothing was refused: try next pass).
pub async fn run_once(
    pool: &PgPool,
    dispatcher: &Dispatcher,
    redispatch_after: Duration,
) -> Result<RelayReport, StoreError> {
    let mut report =
        RelayReport { promoted: super::retries::run_once(pool, 10 * RELAY_BATCH).await?, ..Default::default() };
    loop {
        let batch = take_for_publish(pool, RELAY_BATCH, redispatch_after).await?;
        let found = batch.len();
        if found == 0 {
            return Ok(report);
        }
        let published = dispatcher.publish_all(batch).await;
        publish_failed(
            pool,
            &published.failed,
            &published.refused,
            MAX_PUBLISH_REFUSALS,
            PUBLISH_BACKOFF,
            MAX_PUBLISH_BACKOFF,
        )
        .await?;
        report.found += found;
        report.published += published.sent.len();
        report.refused += published.refused.len();
        if found < RELAY_BATCH as usize || (published.sent.is_empty() && published.refused.is_empty()) {
            return Ok(report);
        }
    }
}

/// Takes one relay batch: up to `limit` due queued jobs never published, and up to `limit`
/// published longer than `redispatch_after` ago without a claim, each on its own partial index.
/// They are marked dispatched in the same statement (`SKIP LOCKED`, so concurrent relays never
/// take the same job) and committed before anything is published: no lock outlives this call.
/// A publish that then fails is undone by [`publish_failed`]; a crash in between costs one
/// redispatch window, never the job.
pub async fn take_for_publish(
    pool: &PgPool,
    limit: i64,
    redispatch_after: Duration,
) -> Result<Vec<Publication>, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
    let rows = sqlx::query!(
        r#"WITH fresh AS (
              SELECT id FROM jobs
              WHERE status = 'queued' AND dispatched_at IS NULL AND run_after <= now() AND NOT cancel_requested
              ORDER BY run_after LIMIT $1 FOR UPDATE SKIP LOCKED),
           stale AS (
              SELECT id FROM jobs
              WHERE status = 'queued' AND dispatched_at < now() - make_interval(secs => $2)
                AND run_after <= now() AND NOT cancel_requested
              ORDER BY dispatched_at LIMIT $1 FOR UPDATE SKIP LOCKED)
           UPDATE jobs j SET dispatched_at = now()
           WHERE j.id IN (SELECT id FROM fresh UNION SELECT id FROM stale) AND j.status = 'queued'
           RETURNING j.id, j.attempt, j.function, j.priority AS "priority: Priority", j.queue, j.trace_context"#,
        limit,
        secs(redispatch_after),
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|r| Publication {
            id: r.id,
            attempt: r.attempt,
            function: r.function,
            priority: r.priority,
            queue: r.queue,
            trace_context: r.trace_context,
        })
        .collect())
}

/// Undoes the dispatched mark of jobs whose publish failed. `failed` (Pub/Sub unreachable) are
/// simply due again; each of `refused` (Pub/Sub refused its message alone) backs off by itself,
/// `backoff` doubled per refusal up to `max_backoff`, and fails with kind `unpublishable` at its
/// `max_refusals`th. Guarded by `status = 'queued'`.
pub async fn publish_failed(
    pool: &PgPool,
    failed: &[Uuid],
    refused: &[(Uuid, String)],
    max_refusals: i32,
    backoff: Duration,
    max_backoff: Duration,
) -> Result<(), StoreError> {
    if failed.is_empty() && refused.is_empty() {
        return Ok(());
    }
    let mut ids: Vec<Uuid> = failed.to_vec();
    let mut counts = vec![false; failed.len()];
    let mut reasons = vec![String::new(); failed.len()];
    for (id, reason) in refused {
        ids.push(*id);
        counts.push(true);
        // Postgres text can't hold NUL; an error message is only for people.
        reasons.push(reason.replace('\0', ""));
    }
    sqlx::query!(
        r#"UPDATE jobs j SET
              dispatched_at = NULL,
              publish_failures = j.publish_failures + f.counts::int,
              status = CASE WHEN f.counts AND j.publish_failures + 1 >= $4 THEN 'failed' ELSE 'queued' END,
              run_after = CASE WHEN f.counts
                               THEN now() + make_interval(secs => least($5 * power(2, j.publish_failures), $6))
                               ELSE j.run_after END,
              finished_at = CASE WHEN f.counts AND j.publish_failures + 1 >= $4 THEN now() ELSE j.finished_at END,
              error = CASE WHEN f.counts AND j.publish_failures + 1 >= $4
                           THEN jsonb_build_object('kind', $7::text, 'retryable', false,
                                'message', 'Pub/Sub refused the job''s message ' || $4 || ' times: ' || f.reason)
                           ELSE j.error END,
              updated_at = now()
           FROM unnest($1::uuid[], $2::bool[], $3::text[]) AS f(id, counts, reason)
           WHERE j.id = f.id AND j.status = 'queued'"#,
        &ids,
        &counts,
        &reasons,
        max_refusals,
        secs(backoff),
        secs(max_backoff),
        ErrorKind::Unpublishable as ErrorKind,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Clears the dispatched mark of every queued job, so the relay publishes them all again: for a
/// broker known to have started empty (`runq dev`'s embedded emulator). On the stale-dispatch index.
pub async fn forget_dispatches(pool: &PgPool) -> Result<u64, StoreError> {
    let done =
        sqlx::query!("UPDATE jobs SET dispatched_at = NULL WHERE status = 'queued' AND dispatched_at IS NOT NULL")
            .execute(pool)
            .await?;
    Ok(done.rows_affected())
}
