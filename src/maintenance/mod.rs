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

pub mod cleanup;
pub mod dead_letters;
pub mod operations;
pub mod reaper;
pub mod relay;
pub mod retries;

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
}

/// One sweep pass: the reaper, stale bulk operations (a delete's GCS results through `storage`),
/// then the relay (when Pub/Sub is
/// configured), which publishes what a bulk retry queued.
pub async fn sweep_once(
    pool: &PgPool,
    dispatcher: Option<&Dispatcher>,
    storage: Option<&BlobStore>,
    redispatch_after: Duration,
) -> Result<SweepReport, StoreError> {
    let reaped = reaper::run_once(pool).await?;
    let resumed = operations::run_once(pool, storage).await?;
    let relay = match dispatcher {
        Some(d) => relay::run_once(pool, d, redispatch_after).await?,
        None => RelayReport { promoted: retries::run_once(pool, 10 * relay::RELAY_BATCH).await?, ..Default::default() },
    };
    Ok(SweepReport { passes: 1, reaped: reaped.len(), promoted: relay.promoted, published: relay.published, resumed })
}
