//! runq's own upkeep, one service per file (as River keeps its rescuer, cleaner and the rest),
//! each with its SQL and one `run_once`. They run inline in the `runq.sweep` and `runq.cleanup`
//! schedule firings (Cloud Scheduler, or `runq dev`'s ticker), never as jobs, so they work
//! exactly when publishing or the queues are in trouble.
//!
//! - [`reaper`]: runs whose lease expired → `queued` again, or `failed` (`lost`).
//! - [`retries`]: `retrying` jobs whose backoff passed → `queued`.
//! - [`relay`]: due, unpublished (or long-unclaimed) queued jobs → Pub/Sub.
//! - [`cleanup`]: finished jobs past retention, then their idempotency keys.
//! - [`dead_letters`]: messages Pub/Sub gave up on → re-dispatched later, or `undeliverable`.
//! - [`operations`]: bulk operations whose runner died → taken over and worked to the end.
//! - [`signals`]: workflow signal steps past their timeout → their default decision, or `failed`.

pub mod cleanup;
pub mod dead_letters;
pub mod operations;
pub mod reaper;
pub mod relay;
pub mod retries;
pub mod signals;

use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;

pub use cleanup::{CleanupReport, Retention};
pub use dead_letters::DeadLetterOutcome;
pub use relay::RelayReport;

use crate::dispatch::Dispatcher;
use crate::storage::BlobStore;
use crate::store::StoreError;

/// What one sweep (or one sweep window) did.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct SweepReport {
    pub passes: u32,
    /// Runs whose lease expired (their worker died), requeued or failed.
    pub reaped: usize,
    /// Retries whose backoff passed, moved back to `queued`.
    pub promoted: u64,
    /// Jobs the relay published.
    pub published: usize,
    /// Bulk operations taken over from a runner that stopped.
    pub resumed: usize,
    /// Held jobs released because their key had a free slot nothing had given them.
    pub released: u64,
}

/// The wait before the next sweep pass: `every`, or less when a queued job becomes due sooner
/// (a job held back by a rate limit, a delay), so it is published at its time and a rate's
/// starts come spread as it allows rather than in a bunch at each pass. At least 10 ms apart.
pub async fn until_next_pass(pool: &PgPool, every: Duration) -> Duration {
    match crate::store::limits::next_due(pool).await {
        Ok(Some(due)) => due.clamp(Duration::from_millis(10), every),
        Ok(None) => every,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the next due job");
            every
        }
    }
}

/// One sweep pass: the reaper, stale bulk operations (a delete's GCS results through `storage`),
/// held jobs with room, then the relay (when Pub/Sub is
/// configured), which publishes what a bulk retry queued.
pub async fn sweep_once(
    pool: &PgPool,
    dispatcher: Option<&Dispatcher>,
    storage: Option<&BlobStore>,
    redispatch_after: Duration,
) -> Result<SweepReport, StoreError> {
    let reaped = reaper::run_once(pool).await?;
    let resumed = operations::run_once(pool, storage).await?;
    let released = crate::store::limits::release_stuck(pool).await?;
    // Before the relay, which then publishes the steps a default decision made runnable.
    signals::run_once(pool).await?;
    if released > 0 {
        tracing::warn!(released, "held jobs released by the sweep (their key had free slots)");
    }
    let relay = match dispatcher {
        Some(d) => relay::run_once(pool, d, redispatch_after).await?,
        None => RelayReport { promoted: retries::run_once(pool, 10 * relay::RELAY_BATCH).await?, ..Default::default() },
    };
    Ok(SweepReport {
        passes: 1,
        reaped: reaped.len(),
        promoted: relay.promoted,
        published: relay.published,
        resumed,
        released,
    })
}
