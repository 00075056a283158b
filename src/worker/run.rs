//! Running one claimed job: the function's future on its own task (so a panic is caught), its
//! progress written coalesced, its time limits, cancel and lost-claim signals, and the outcome
//! recorded under the claim's fence.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::time::Instant;

use super::WorkerState;
use super::leases::RunSignal;
use crate::function::{Context, DynFunction, FunctionError};
use crate::job::{JobError, Status};
use crate::store::{self, Claimed, ResultValue, StoreError};

/// Results up to this size are kept in the row; larger ones go to GCS.
pub const INLINE_RESULT_LIMIT: usize = 64 * 1024;
/// Progress is written at most this often per run; reports in between are coalesced.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// How a run ended, before it is recorded.
#[derive(Debug)]
enum Ending {
    Returned(Result<serde_json::Value, FunctionError>),
    Panicked(String),
    HardTimeout(Duration),
    /// The claim was lost: another run owns the job now; record nothing.
    Lost,
    /// The process is shutting down and the run couldn't finish in the grace period.
    Interrupted,
}

/// What happened to a run, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The job's new status.
    Status(Status),
    /// The claim had been lost; nothing was written.
    Fenced,
    /// Given back to the queue on shutdown.
    Released,
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".into()
    }
}

/// Runs `claimed` with `function` and records the outcome. `Err` only when the outcome could
/// not be recorded (Postgres unreachable), so the push is answered 5xx and redelivered.
pub async fn execute(
    state: &WorkerState,
    claimed: Claimed,
    function: Arc<dyn DynFunction>,
) -> Result<Recorded, StoreError> {
    let policy = function.policy().clone();
    let spawner = super::RunSpawner {
        pool: state.pool.clone(),
        registry: state.registry.clone(),
        outbox: state.outbox.clone(),
        claim_id: claimed.claim_id,
    };
    let (ctx, mut control) = Context::for_run(
        claimed.id,
        claimed.attempt as u32,
        claimed.max_attempts as u32,
        state.storage.clone(),
        Some(Arc::new(spawner)),
    );
    let (_guard, mut signals) = state.leases.hold(claimed.id, claimed.claim_id);
    let mut task = tokio::spawn(function.call(ctx, &claimed.args));
    let started = Instant::now();
    let hard_deadline = started + policy.hard_time_limit;
    let soft_deadline = policy.soft_time_limit.map(|soft| started + soft);
    let mut soft_fired = false;
    let mut cancel_seen = false;
    let mut shutdown = state.shutdown.clone();
    let mut shutdown_deadline: Option<Instant> = None;
    let mut last_write = Instant::now() - PROGRESS_INTERVAL;
    let mut progress_pending = false;
    // A channel whose sender is gone answers `changed()` at once, forever: stop polling it, or
    // the loop would spin (a function that drops its context, a worker past its shutdown).
    let (mut progress_open, mut signals_open, mut shutdown_open) = (true, true, true);
    // A run claimed after shutdown began gets the grace period from now.
    if let Some(grace) = *shutdown.borrow() {
        shutdown_deadline = Some(Instant::now() + grace);
    }

    let ending = loop {
        let write_at = last_write + PROGRESS_INTERVAL;
        tokio::select! {
            joined = &mut task => break match joined {
                Ok(result) => Ending::Returned(result),
                Err(e) if e.is_panic() => Ending::Panicked(panic_message(&*e.into_panic())),
                Err(_) => Ending::Panicked("the run's task was cancelled".into()),
            },
            changed = control.progress.changed(), if progress_open && !progress_pending => {
                match changed {
                    Ok(()) => progress_pending = true,
                    Err(_) => progress_open = false,
                }
            }
            () = tokio::time::sleep_until(write_at), if progress_pending => {
                progress_pending = false;
                last_write = Instant::now();
                let p = control.progress.borrow_and_update().clone();
                match store::progress(&state.relaxed, claimed.id, claimed.claim_id, p.fraction, p.message.as_deref(), state.lease).await {
                    Ok(Some(cancel_requested)) => state.leases.signal(claimed.id, RunSignal { cancel_requested, lost: false }),
                    Ok(None) => state.leases.signal(claimed.id, RunSignal { cancel_requested: false, lost: true }),
                    Err(e) => tracing::warn!(job_id = %claimed.id, error = %e, "progress write failed"),
                }
            }
            changed = signals.changed(), if signals_open => {
                if changed.is_err() {
                    signals_open = false;
                    continue;
                }
                let signal = *signals.borrow_and_update();
                if signal.lost {
                    task.abort();
                    break Ending::Lost;
                }
                if signal.cancel_requested && !cancel_seen {
                    cancel_seen = true;
                    tracing::info!(job_id = %claimed.id, "cancel requested; asking the run to stop");
                    control.cancel();
                }
            }
            () = tokio::time::sleep_until(soft_deadline.unwrap_or(hard_deadline)), if soft_deadline.is_some() && !soft_fired => {
                soft_fired = true;
                tracing::info!(job_id = %claimed.id, "soft time limit passed; asking the run to stop");
                control.cancel();
            }
            () = tokio::time::sleep_until(hard_deadline) => {
                task.abort();
                break Ending::HardTimeout(policy.hard_time_limit);
            }
            changed = shutdown.changed(), if shutdown_open && shutdown_deadline.is_none() => {
                match (changed, *shutdown.borrow()) {
                    (Ok(()), Some(grace)) => shutdown_deadline = Some(Instant::now() + grace),
                    (Ok(()), None) => {}
                    (Err(_), _) => shutdown_open = false,
                }
            }
            () = tokio::time::sleep_until(shutdown_deadline.unwrap_or(hard_deadline)), if shutdown_deadline.is_some() => {
                task.abort();
                break Ending::Interrupted;
            }
        }
    };
    let final_message = control.progress.borrow().message.clone();
    let function_name = claimed.function.clone();
    let recorded = record(state, &claimed, &policy, ending, cancel_seen, soft_fired, final_message.as_deref()).await;
    let outcome = match &recorded {
        Ok(Recorded::Status(status)) => status.as_str(),
        Ok(Recorded::Fenced) => "fenced",
        Ok(Recorded::Released) => "released",
        Err(_) => "unrecorded",
    };
    let queue = state.queue.clone();
    metrics::counter!(crate::telemetry::metrics::RUNS, "function" => function_name.clone(), "queue" => queue, "outcome" => outcome)
        .increment(1);
    let queue = state.queue.clone();
    metrics::histogram!(crate::telemetry::metrics::RUN_SECONDS, "function" => function_name, "queue" => queue)
        .record(started.elapsed().as_secs_f64());
    recorded
}

async fn record(
    state: &WorkerState,
    claimed: &Claimed,
    policy: &crate::function::Policy,
    ending: Ending,
    cancel_seen: bool,
    soft_fired: bool,
    final_message: Option<&str>,
) -> Result<Recorded, StoreError> {
    let (id, claim) = (claimed.id, claimed.claim_id);
    let error = |kind: &str, message: String, retryable: bool| JobError { kind: kind.into(), message, retryable };
    let failure = match ending {
        Ending::Lost => {
            tracing::warn!(job_id = %id, "claim lost (lease expired and the job was taken back); dropping this run's outcome");
            return Ok(Recorded::Fenced);
        }
        Ending::Interrupted => {
            let released = store::release(&state.pool, id, claim).await?;
            tracing::info!(job_id = %id, released, "run interrupted by shutdown; job released for another worker");
            return Ok(if released { Recorded::Released } else { Recorded::Fenced });
        }
        Ending::Returned(Ok(value)) => return record_success(state, claimed, value, final_message).await,
        Ending::Returned(Err(FunctionError::Cancelled)) if soft_fired && !cancel_seen => {
            error("timeout", "stopped at its soft time limit".into(), false)
        }
        Ending::Returned(Err(FunctionError::Cancelled)) => {
            let done = store::cancelled(&state.pool, id, claim).await?;
            return Ok(if done { Recorded::Status(Status::Cancelled) } else { Recorded::Fenced });
        }
        Ending::Returned(Err(FunctionError::Retryable(message))) => error("error", message, true),
        Ending::Returned(Err(FunctionError::Fatal(message))) => error("error", message, false),
        Ending::Panicked(message) => error("panic", message, true),
        Ending::HardTimeout(limit) => {
            error("timeout", format!("aborted at its hard time limit of {}s", limit.as_secs_f64()), false)
        }
    };
    let delay = policy.backoff.delay(claimed.attempt.max(1) as u32);
    match store::fail(&state.pool, id, claim, &failure, delay).await? {
        Some(status) => {
            tracing::info!(job_id = %id, attempt = claimed.attempt, kind = %failure.kind, %status, retry_in_ms = delay.as_millis() as u64, "run failed");
            Ok(Recorded::Status(status))
        }
        None => Ok(Recorded::Fenced),
    }
}

async fn record_success(
    state: &WorkerState,
    claimed: &Claimed,
    value: serde_json::Value,
    final_message: Option<&str>,
) -> Result<Recorded, StoreError> {
    let (id, claim) = (claimed.id, claimed.claim_id);
    let json = serde_json::to_string(&value).expect("a Value serializes");
    let recorded = if json.len() <= INLINE_RESULT_LIMIT {
        let raw = RawValue::from_string(json).expect("serde_json wrote valid JSON");
        store::succeed(&state.pool, id, claim, ResultValue::Inline(&raw), final_message).await?
    } else {
        match state.offload_result(id, claim, json.into_bytes()).await {
            Ok(uri) => {
                let recorded = store::succeed(&state.pool, id, claim, ResultValue::Uri(&uri), final_message).await?;
                if !recorded && let Some(storage) = &state.storage {
                    // Our claim was lost: the object is an orphan nobody will read.
                    let _ = storage.delete(&uri).await;
                }
                recorded
            }
            Err(failure) => {
                let retryable = failure.retryable;
                let delay = Duration::from_secs(1);
                let status = store::fail(&state.pool, id, claim, &failure, delay).await?;
                tracing::warn!(job_id = %id, retryable, "result could not be stored");
                return Ok(status.map_or(Recorded::Fenced, Recorded::Status));
            }
        }
    };
    if recorded {
        tracing::info!(job_id = %id, attempt = claimed.attempt, "run succeeded");
        Ok(Recorded::Status(Status::Succeeded))
    } else {
        Ok(Recorded::Fenced)
    }
}
