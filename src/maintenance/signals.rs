//! Signal steps whose timeout passed: each takes its declared default decision, or fails with
//! kind `timeout`, in the same guarded statements a person's signal uses. The steps that made
//! runnable are left to the relay, which runs right after in the same sweep pass.

use sqlx::PgPool;

use crate::store::{self, SignalOutcome, StoreError};

/// Most timed-out signal steps one pass handles.
pub const BATCH: i64 = 100;

/// Who a default decision is recorded as sent by.
pub const SENT_BY: &str = "runq (timeout)";

/// Handles the signal steps past their timeout; returns how many it moved on.
pub async fn run_once(pool: &PgPool) -> Result<usize, StoreError> {
    let mut moved = 0;
    for due in store::due_signals(pool, BATCH).await? {
        let done = match &due.on_timeout {
            Some(default) => matches!(
                store::signal(pool, due.workflow_id, &due.step, None, SENT_BY, default, None).await?,
                SignalOutcome::Applied { .. }
            ),
            None => store::time_out_signal(pool, due.job_id, due.timeout_secs.unwrap_or_default()).await?,
        };
        if done {
            tracing::info!(workflow_id = %due.workflow_id, step = %due.step, default = due.on_timeout.is_some(), "signal step timed out");
            moved += 1;
        }
    }
    Ok(moved)
}
