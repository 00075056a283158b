//! Running one claimed job: the function's future on its own task (so a panic is caught), its
//! progress written coalesced, its time limits, cancel and lost-claim signals, and the outcome
//! recorded under the claim's fence.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::time::Instant;
use tracing::Instrument;

use super::WorkerState;
use tokio::sync::watch;

use super::leases::RunSignal;
use crate::function::{Context, DynFunction, FunctionError, Progress, RunControl};
use crate::job::{ErrorKind, JobError, Status};
use crate::store::{self, Claimed, ResultValue, StoreError};

/// Results up to this size are kept in the row; larger ones go to GCS.
pub const INLINE_RESULT_LIMIT: usize = 64 * 1024;
/// Progress is written at most this often per run; reports in between are coalesced.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// A run stops once its last successful renewal is older than the lease less this share of
/// it (a quarter: with heartbeats every third of the lease, one missed beat is tolerated and
/// two are not), so it has stopped before the reaper can hand the job to another run.
pub const LEASE_MARGIN_DIVISOR: u32 = 4;

/// How a run ended, before it is recorded.
#[derive(Debug)]
pub(crate) enum Ending {
    Returned(Result<serde_json::Value, FunctionError>),
    Panicked(String),
    HardTimeout(Duration),
    /// The claim was lost: another run owns the job now; record nothing.
    Lost,
    /// The lease couldn't be renewed in time (Postgres unreachable from here, the process
    /// starved): stopped a margin before the lease ends at `lease_ends`, from when on the job may
    /// be handed to another run.
    LeaseLapsed {
        lease_ends: Instant,
    },
    /// The process is shutting down and the run couldn't finish in the grace period.
    Interrupted,
}

/// What a run obeys while it runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunLimits {
    pub hard: Duration,
    pub soft: Option<Duration>,
    /// The claim's lease: the run stops when it can't renew it in time.
    pub lease: Duration,
}

/// What supervising a run found.
#[derive(Debug)]
pub(crate) struct Supervised {
    pub ending: Ending,
    /// A client's cancel request reached the run.
    pub cancel_seen: bool,
    /// The soft time limit passed and the run was asked to stop.
    pub soft_fired: bool,
}

/// What happened to a run, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The job's new status.
    Status(Status),
    /// The claim had been lost; nothing was written.
    Fenced,
    /// Given back to the queue (on shutdown, or after its lease lapsed), for another delivery
    /// to take now.
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

/// Watches one run's task until it ends or must be stopped: writes its progress coalesced
/// (through `write_progress`, at most every [`PROGRESS_INTERVAL`]), passes cancel requests and
/// the soft limit on, and stops it (cancel, then abort, so `spawn_blocking` work sees the flag
/// too) when its claim is lost, its lease can't be renewed in time, its hard limit passes, or
/// shutdown's grace runs out. Every input is a channel or a timer, so tests drive it under
/// paused time.
pub(crate) async fn supervise<F, Fut>(
    mut task: tokio::task::JoinHandle<Result<serde_json::Value, FunctionError>>,
    control: &mut RunControl,
    mut signals: watch::Receiver<RunSignal>,
    mut shutdown: watch::Receiver<Option<Duration>>,
    limits: RunLimits,
    mut write_progress: F,
) -> Supervised
where
    F: FnMut(Progress) -> Fut,
    Fut: Future<Output = ()>,
{
    let started = Instant::now();
    let hard_deadline = started + limits.hard;
    let soft_deadline = limits.soft.map(|soft| started + soft);
    let keep = kept_of(limits.lease);
    let mut lease_deadline = signals.borrow().renewed_at + keep;
    control.stop_by(lease_deadline);
    let mut soft_fired = false;
    let mut cancel_seen = false;
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
    let stop = |control: &RunControl, task: &tokio::task::JoinHandle<_>| {
        control.cancel();
        task.abort();
    };

    let ending = loop {
        let write_at = last_write + PROGRESS_INTERVAL;
        tokio::select! {
            biased;
            joined = &mut task => break match joined {
                Ok(result) => Ending::Returned(result),
                Err(e) if e.is_panic() => Ending::Panicked(panic_message(&*e.into_panic())),
                Err(_) => Ending::Panicked("the run's task was cancelled".into()),
            },
            changed = signals.changed(), if signals_open => {
                if changed.is_err() {
                    signals_open = false;
                    continue;
                }
                let signal = *signals.borrow_and_update();
                if signal.lost {
                    stop(control, &task);
                    break Ending::Lost;
                }
                lease_deadline = signal.renewed_at + keep;
                control.stop_by(lease_deadline);
                if signal.cancel_requested && !cancel_seen {
                    cancel_seen = true;
                    control.cancel();
                }
            }
            () = tokio::time::sleep_until(lease_deadline) => {
                stop(control, &task);
                break Ending::LeaseLapsed { lease_ends: lease_deadline + limits.lease / LEASE_MARGIN_DIVISOR };
            }
            () = tokio::time::sleep_until(hard_deadline) => {
                stop(control, &task);
                break Ending::HardTimeout(limits.hard);
            }
            () = tokio::time::sleep_until(shutdown_deadline.unwrap_or(hard_deadline)), if shutdown_deadline.is_some() => {
                stop(control, &task);
                break Ending::Interrupted;
            }
            () = tokio::time::sleep_until(soft_deadline.unwrap_or(hard_deadline)), if soft_deadline.is_some() && !soft_fired => {
                soft_fired = true;
                control.cancel();
            }
            changed = shutdown.changed(), if shutdown_open && shutdown_deadline.is_none() => {
                match (changed, *shutdown.borrow()) {
                    (Ok(()), Some(grace)) => shutdown_deadline = Some(Instant::now() + grace),
                    (Ok(()), None) => {}
                    (Err(_), _) => shutdown_open = false,
                }
            }
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
                // Bounded, so a write that hangs can't hold the run past its lease or limits.
                let _ = tokio::time::timeout(limits.lease / 3, write_progress(p)).await;
            }
        }
    };
    // A run stopped by abort: wait (briefly) for its body to be dropped, so that once this
    // returns nothing of it runs any more. A new claim of the same job in this process waits for
    // this run's end (`Leases::supersede`), and must not start beside the old body.
    if !matches!(ending, Ending::Returned(_) | Ending::Panicked(_)) {
        let _ = tokio::time::timeout(limits.lease / LEASE_MARGIN_DIVISOR, &mut task).await;
    }
    Supervised { ending, cancel_seen, soft_fired }
}

/// How long after a renewal a run may go on: the lease less its margin ([`LEASE_MARGIN_DIVISOR`]).
fn kept_of(lease: Duration) -> Duration {
    lease - lease / LEASE_MARGIN_DIVISOR
}

/// Whether a run whose claim was asked for at `asked_at` may start at `now`: `Ok` with the time
/// it must stop by (its lease's end less the margin), or the lapse it ends with instead. A
/// process frozen or starved between the claim and the start (SIGSTOP, a throttled CPU) may wake
/// when the job is about to be, or already is, another run's: it must not start the function.
fn may_start(asked_at: Instant, now: Instant, lease: Duration) -> Result<Instant, Ending> {
    let stop_by = asked_at + kept_of(lease);
    if now < stop_by {
        Ok(stop_by)
    } else {
        Err(Ending::LeaseLapsed { lease_ends: stop_by + lease / LEASE_MARGIN_DIVISOR })
    }
}

/// Runs `claimed` with `function` and records the outcome; its lease counts from when the
/// claim was asked for (`claimed.asked_at`). `Err` only when the outcome could not be
/// recorded (Postgres unreachable), so the push is answered 5xx and redelivered.
pub async fn execute(
    state: &WorkerState,
    claimed: Claimed,
    function: Arc<dyn DynFunction>,
) -> Result<Recorded, StoreError> {
    // A child of the push that claimed it (the caller's span); the function's own logs run in it.
    let span = tracing::info_span!("run", otel.name = %format!("run {}", claimed.function), job_id = %claimed.id,
        function = %claimed.function, attempt = claimed.attempt, outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty);
    run_and_record(state, claimed, function).instrument(span).await
}

async fn run_and_record(
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
        owner: claimed.owner.clone(),
    };
    let (ctx, mut control) = Context::for_run(
        claimed.id,
        claimed.attempt as u32,
        claimed.max_attempts as u32,
        state.storage.clone(),
        Some(Arc::new(spawner)),
    );
    // An older run of this job still here (this process was frozen past its lease and given the
    // job again as it woke) stops first.
    state.leases.supersede(claimed.id, claimed.claim_id, state.lease / LEASE_MARGIN_DIVISOR).await;
    let (_guard, signals) = state.leases.hold(claimed.id, claimed.claim_id, claimed.asked_at);
    let started = Instant::now();
    let limits = RunLimits { hard: policy.hard_time_limit, soft: policy.soft_time_limit, lease: state.lease };
    // The body sees its stop time from its first instruction, not only once `supervise` runs;
    // and a run whose lease is as good as gone already doesn't start at all.
    let task = match may_start(claimed.asked_at, started, limits.lease) {
        Ok(stop_by) => {
            control.stop_by(stop_by);
            Ok(tokio::spawn(function.call(ctx, &claimed.args).in_current_span()))
        }
        Err(lapsed) => {
            tracing::warn!(job_id = %claimed.id, "the lease ran out before the run could start (the process was frozen or starved); not starting it");
            Err(lapsed)
        }
    };
    let (id, claim) = (claimed.id, claimed.claim_id);
    let write_progress = |p: Progress| async move {
        let sent = Instant::now();
        let message = p.message.as_deref().map(without_nul);
        match store::progress(&state.relaxed, id, claim, p.fraction, message.as_deref(), state.lease).await {
            Ok(Some(cancel_requested)) => state.leases.renewed(claim, cancel_requested, sent),
            Ok(None) => state.leases.lost(claim),
            Err(e) => tracing::warn!(job_id = %id, error = %e, "progress write failed"),
        }
    };
    let supervised = match task {
        Ok(task) => supervise(task, &mut control, signals, state.shutdown.clone(), limits, write_progress).await,
        Err(ending) => Supervised { ending, cancel_seen: false, soft_fired: false },
    };
    let final_message = control.progress.borrow().message.as_deref().map(without_nul);
    let function_name = claimed.function.clone();
    let recorded = record(state, &claimed, &policy, supervised, final_message.as_deref()).await;
    if claimed.limit_keys.is_some() {
        publish_released(state, claimed.id).await;
    }
    if claimed.workflow_id.is_some() && matches!(recorded, Ok(Recorded::Status(s)) if s.is_finished()) {
        publish_runnable(state, claimed.id).await;
    }
    let outcome = match &recorded {
        Ok(Recorded::Status(status)) => status.as_str(),
        Ok(Recorded::Fenced) => "fenced",
        Ok(Recorded::Released) => "released",
        Err(_) => "unrecorded",
    };
    let span = tracing::Span::current();
    span.record("outcome", outcome);
    if !matches!(outcome, "succeeded" | "cancelled") {
        span.record("otel.status_code", "ERROR");
    }
    let queue = state.queue.clone();
    metrics::counter!(crate::telemetry::metrics::RUNS, "function" => function_name.clone(), "queue" => queue, "outcome" => outcome)
        .increment(1);
    let queue = state.queue.clone();
    metrics::histogram!(crate::telemetry::metrics::RUN_SECONDS, "function" => function_name, "queue" => queue)
        .record(started.elapsed().as_secs_f64());
    recorded
}

/// Publishes at once the held jobs this run's end released (the slots it gave back), instead of
/// leaving them to the next sweep; a failure here only leaves them to that sweep.
async fn publish_released(state: &WorkerState, id: uuid::Uuid) {
    match store::limits::take_released(&state.pool, id).await {
        Ok(released) => {
            if let Some(outbox) = &state.outbox {
                for job in released {
                    outbox.dispatch(job);
                }
            }
        }
        Err(e) => tracing::warn!(job_id = %id, error = %e, "could not read the jobs this run released; the relay will"),
    }
}

/// Publishes at once the workflow steps this run's outcome made runnable (its children whose
/// parents have all finished), instead of leaving them to the relay's next pass.
async fn publish_runnable(state: &WorkerState, id: uuid::Uuid) {
    match store::runnable_after(&state.pool, id).await {
        Ok(runnable) => {
            if let Some(outbox) = &state.outbox {
                for job in runnable {
                    outbox.dispatch(job);
                }
            }
        }
        Err(e) => {
            tracing::warn!(job_id = %id, error = %e, "could not read the steps this run made runnable; the relay will")
        }
    }
}

/// Text Postgres can store: NUL, which it refuses in `text` and `jsonb`, replaced.
fn without_nul(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

async fn record(
    state: &WorkerState,
    claimed: &Claimed,
    policy: &crate::function::Policy,
    supervised: Supervised,
    final_message: Option<&str>,
) -> Result<Recorded, StoreError> {
    let Supervised { ending, cancel_seen, soft_fired } = supervised;
    let (id, claim) = (claimed.id, claimed.claim_id);
    let error = |kind: ErrorKind, message: String, retryable: bool| JobError { kind, message, retryable };
    let failure = match ending {
        Ending::Lost => {
            tracing::warn!(job_id = %id, "claim lost (lease expired and the job was taken back); dropping this run's outcome");
            return Ok(Recorded::Fenced);
        }
        Ending::LeaseLapsed { lease_ends } => {
            // Do what the reaper would do once the lease ends, without waiting for its next
            // pass: the job is requeued (the attempt counts, as the reaper counts it, so a
            // function that starves its own heartbeats can't loop forever) and its limit slots
            // are handed on. Not before the lease's end: the margin since the stop is what lets
            // blocking work see the cancel flag, as it would before the reaper. If Postgres is
            // what failed, this fails too and the reaper does it later.
            tokio::time::sleep_until(lease_ends).await;
            let give_back = store::give_back_lapsed(&state.pool, id, claim);
            let given = match tokio::time::timeout(state.lease / LEASE_MARGIN_DIVISOR, give_back).await {
                Ok(given) => given.map_err(|e| e.to_string()),
                Err(_) => Err("Postgres gave no answer within a quarter of the lease".to_owned()),
            };
            return Ok(match given {
                Ok(Some(Status::Queued)) => {
                    tracing::warn!(job_id = %id, "lease could not be renewed in time; run stopped and the job requeued");
                    Recorded::Released
                }
                Ok(Some(status)) => {
                    tracing::warn!(job_id = %id, %status, "lease could not be renewed in time; run stopped, no attempts left");
                    Recorded::Status(status)
                }
                Ok(None) => Recorded::Fenced,
                Err(e) => {
                    tracing::warn!(job_id = %id, error = %e, "lease could not be renewed in time; run stopped, the reaper requeues the job");
                    Recorded::Fenced
                }
            });
        }
        Ending::Interrupted => {
            let released = store::release(&state.pool, id, claim).await?;
            tracing::info!(job_id = %id, released, "run interrupted by shutdown; job released for another worker");
            return Ok(if released { Recorded::Released } else { Recorded::Fenced });
        }
        Ending::Returned(Ok(value)) => return record_success(state, claimed, value, final_message).await,
        Ending::Returned(Err(FunctionError::Cancelled)) if soft_fired && !cancel_seen => {
            error(ErrorKind::Timeout, "stopped at its soft time limit".into(), false)
        }
        Ending::Returned(Err(FunctionError::Cancelled)) => {
            let done = store::finish_cancelled(&state.pool, id, claim).await?;
            return Ok(if done { Recorded::Status(Status::Cancelled) } else { Recorded::Fenced });
        }
        Ending::Returned(Err(FunctionError::Deferred(delay))) => {
            let message = format!("deferred by the function for {} s", delay.as_secs());
            return Ok(match store::defer(&state.pool, id, claim, delay, &message).await? {
                Some(status) => {
                    tracing::info!(job_id = %id, attempt = claimed.attempt, %status, defer_ms = delay.as_millis() as u64, "run deferred by its function");
                    Recorded::Status(status)
                }
                None => Recorded::Fenced,
            });
        }
        Ending::Returned(Err(FunctionError::Retryable(message))) => {
            error(ErrorKind::Error, without_nul(&message), true)
        }
        Ending::Returned(Err(FunctionError::Fatal(message))) => error(ErrorKind::Error, without_nul(&message), false),
        Ending::Panicked(message) => error(ErrorKind::Panic, without_nul(&message), true),
        Ending::HardTimeout(limit) => {
            error(ErrorKind::Timeout, format!("aborted at its hard time limit of {}s", limit.as_secs_f64()), false)
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
    // Postgres can't store NUL in jsonb: such a result is the run's failure, recorded, never
    // an outcome that can't be written and loops through redeliveries.
    if json.contains("\\u0000") && store::holds_nul(&value) {
        let message = "the result contains a NUL character (\\u0000), which Postgres can't store";
        return fail_run(state, claimed, &invalid_result(message), Duration::ZERO).await;
    }
    let recorded = if json.len() <= INLINE_RESULT_LIMIT {
        let raw = RawValue::from_string(json).expect("serde_json wrote valid JSON");
        match state.writes.succeed(id, claim, raw, final_message).await {
            Err(StoreError::Other(e)) => {
                // The database refused this result (not an outage): fail the run, recorded.
                tracing::warn!(job_id = %id, error = %e, "result refused by the database");
                return fail_run(state, claimed, &invalid_result("the result could not be stored"), Duration::ZERO)
                    .await;
            }
            other => other?,
        }
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
                tracing::warn!(job_id = %id, retryable = failure.retryable, "result could not be stored");
                return fail_run(state, claimed, &failure, Duration::from_secs(1)).await;
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

/// A result the database can't hold: the run's failure, never retried.
fn invalid_result(message: &str) -> JobError {
    JobError::permanent(ErrorKind::InvalidResult, message)
}

/// Records a failed run under its claim (`Fenced` when the claim was lost).
async fn fail_run(
    state: &WorkerState,
    claimed: &Claimed,
    failure: &JobError,
    retry_delay: Duration,
) -> Result<Recorded, StoreError> {
    let status = store::fail(&state.pool, claimed.id, claimed.claim_id, failure, retry_delay).await?;
    Ok(status.map_or(Recorded::Fenced, Recorded::Status))
}

#[cfg(test)]
mod tests {
    //! The run loop under paused time: every input is a channel or a timer the test owns.

    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::sync::mpsc;

    use super::*;

    const LEASE: Duration = Duration::from_secs(12);

    fn limits() -> RunLimits {
        RunLimits { hard: Duration::from_secs(300), soft: None, lease: LEASE }
    }

    /// A run's moving parts: its context (for the function), and the channels the keeper,
    /// shutdown and progress writer would use.
    struct Rig {
        ctx: Context,
        control: RunControl,
        signal_tx: watch::Sender<RunSignal>,
        signals: watch::Receiver<RunSignal>,
        shutdown_tx: watch::Sender<Option<Duration>>,
        shutdown: watch::Receiver<Option<Duration>>,
    }

    fn rig() -> Rig {
        let (ctx, control) = Context::new(uuid::Uuid::now_v7(), 1, 3);
        let (signal_tx, signals) = watch::channel(RunSignal::claimed(Instant::now()));
        let (shutdown_tx, shutdown) = watch::channel(None);
        Rig { ctx, control, signal_tx, signals, shutdown_tx, shutdown }
    }

    /// Blocking work (as the docs tell CPU-bound functions to do) that stops only when its
    /// context says so, and reports that it saw it. Resolves once the work has started.
    async fn blocking_until_cancelled(
        ctx: Context,
        saw_cancel: Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<Result<serde_json::Value, FunctionError>> {
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let _ = tokio::task::spawn_blocking(move || {
                let _ = started_tx.send(());
                while !ctx.is_cancelled() {
                    std::thread::yield_now();
                }
                saw_cancel.store(true, Ordering::SeqCst);
            })
            .await;
            Err(FunctionError::Cancelled)
        });
        started.await.expect("the blocking work started");
        task
    }

    fn forever(ctx: Context) -> tokio::task::JoinHandle<Result<serde_json::Value, FunctionError>> {
        tokio::spawn(async move {
            let _ctx = ctx;
            std::future::pending::<()>().await;
            Ok(serde_json::Value::Null)
        })
    }

    async fn no_progress(_: Progress) {}

    #[tokio::test(start_paused = true)]
    async fn a_lost_claim_cancels_then_aborts_so_blocking_work_stops_too() {
        let mut r = rig();
        let saw = Arc::new(AtomicBool::new(false));
        let task = blocking_until_cancelled(r.ctx.clone(), saw.clone()).await;
        let mut lost = *r.signal_tx.borrow();
        lost.lost = true;
        r.signal_tx.send(lost).unwrap();
        let out = supervise(task, &mut r.control, r.signals, r.shutdown, limits(), no_progress).await;
        assert!(matches!(out.ending, Ending::Lost), "{out:?}");
        assert!(r.ctx.is_cancelled(), "the context must say stop, or spawn_blocking work runs on");
        // The blocking thread sees the flag and ends (abort alone can't stop it).
        while !saw.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_that_is_not_renewed_stops_the_run_before_it_can_lapse() {
        let mut r = rig();
        let start = Instant::now();
        let task = forever(r.ctx.clone());
        let out = supervise(task, &mut r.control, r.signals, r.shutdown, limits(), no_progress).await;
        assert!(matches!(out.ending, Ending::LeaseLapsed { .. }), "{out:?}");
        let stopped_after = start.elapsed();
        assert_eq!(stopped_after, LEASE - LEASE / LEASE_MARGIN_DIVISOR, "stops a margin before the lease ends");
        assert!(r.ctx.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_whose_lease_ran_out_before_it_started_does_not_start() {
        let asked = Instant::now();
        let lease = Duration::from_secs(8);
        // Started at once: it must stop a quarter of the lease before the lease ends.
        assert_eq!(may_start(asked, asked, lease).unwrap(), asked + Duration::from_secs(6));
        tokio::time::advance(Duration::from_millis(5_999)).await;
        assert!(may_start(asked, Instant::now(), lease).is_ok(), "still inside the lease less its margin");
        // Frozen between the claim and the start until the margin: it doesn't start, and gives
        // the job back when the lease ends.
        tokio::time::advance(Duration::from_millis(1)).await;
        match may_start(asked, Instant::now(), lease) {
            Err(Ending::LeaseLapsed { lease_ends }) => assert_eq!(lease_ends, asked + lease),
            other => panic!("a lapsed run must not start: {:?}", other.map(|_| ())),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_keep_the_run_going_and_the_context_knows_its_deadline() {
        let mut r = rig();
        let start = Instant::now();
        let task = forever(r.ctx.clone());
        let tx = r.signal_tx;
        let ctx = r.ctx.clone();
        // The keeper renews every third of the lease, three times, then the database goes away.
        let keeper = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(LEASE / 3).await;
                let now = Instant::now();
                tx.send_modify(|s| s.renewed_at = now);
            }
            tx
        });
        let out = supervise(task, &mut r.control, r.signals, r.shutdown, limits(), no_progress).await;
        assert!(matches!(out.ending, Ending::LeaseLapsed { .. }), "{out:?}");
        assert_eq!(start.elapsed(), LEASE + (LEASE - LEASE / LEASE_MARGIN_DIVISOR), "last renewal + lease - margin");
        drop(keeper.await.unwrap());

        // A frozen process (SIGSTOP) wakes past its deadline: the context says stop at once, by
        // the clock alone, before any timer of the worker has run.
        let (ctx2, control2) = Context::new(uuid::Uuid::now_v7(), 1, 1);
        control2.stop_by(Instant::now() + Duration::from_secs(1));
        assert!(!ctx2.is_cancelled());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(ctx2.is_cancelled());
        assert!(ctx.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn the_hard_limit_cancels_then_aborts() {
        let r = rig();
        let saw = Arc::new(AtomicBool::new(false));
        let task = blocking_until_cancelled(r.ctx.clone(), saw.clone()).await;
        let lim = RunLimits { hard: Duration::from_secs(2), soft: None, lease: LEASE };
        let start = Instant::now();
        // Paused time doesn't advance by itself while blocking work runs: the test moves it.
        let mut control = r.control;
        let (signals, shutdown) = (r.signals, r.shutdown);
        let supervisor =
            tokio::spawn(async move { supervise(task, &mut control, signals, shutdown, lim, no_progress).await });
        while !supervisor.is_finished() {
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        let out = supervisor.await.unwrap();
        assert!(matches!(out.ending, Ending::HardTimeout(d) if d == Duration::from_secs(2)), "{out:?}");
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(2) && took <= Duration::from_millis(2200), "{took:?}");
        while !saw.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_soft_limit_asks_the_run_to_stop_and_it_may_finish() {
        let mut r = rig();
        let ctx = r.ctx.clone();
        let task = tokio::spawn(async move {
            ctx.cancelled().await;
            Err(FunctionError::Cancelled)
        });
        let lim = RunLimits { hard: Duration::from_secs(60), soft: Some(Duration::from_secs(5)), lease: LEASE };
        let start = Instant::now();
        let out = supervise(task, &mut r.control, r.signals, r.shutdown, lim, no_progress).await;
        assert!(matches!(out.ending, Ending::Returned(Err(FunctionError::Cancelled))), "{out:?}");
        assert!(out.soft_fired && !out.cancel_seen);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancel_request_reaches_the_run() {
        let mut r = rig();
        let ctx = r.ctx.clone();
        let task = tokio::spawn(async move {
            ctx.cancelled().await;
            Err(FunctionError::Cancelled)
        });
        r.signal_tx.send_modify(|s| s.cancel_requested = true);
        let out = supervise(task, &mut r.control, r.signals, r.shutdown, limits(), no_progress).await;
        assert!(matches!(out.ending, Ending::Returned(Err(FunctionError::Cancelled))), "{out:?}");
        assert!(out.cancel_seen && !out.soft_fired);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_gives_the_grace_period_then_interrupts() {
        let mut r = rig();
        let task = forever(r.ctx.clone());
        // Keep the lease fresh so only shutdown can end the run.
        let tx = r.signal_tx.clone();
        let keeper = tokio::spawn(async move {
            loop {
                tokio::time::sleep(LEASE / 3).await;
                let now = Instant::now();
                tx.send_modify(|s| s.renewed_at = now);
            }
        });
        let shutdown_tx = r.shutdown_tx;
        let start = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(20)).await;
            shutdown_tx.send(Some(Duration::from_secs(8))).unwrap();
            shutdown_tx
        });
        let out = supervise(task, &mut r.control, r.signals, r.shutdown, limits(), no_progress).await;
        keeper.abort();
        assert!(matches!(out.ending, Ending::Interrupted), "{out:?}");
        assert_eq!(start.elapsed(), Duration::from_secs(28));
        assert!(r.ctx.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn progress_is_written_coalesced_and_the_last_report_wins() {
        let mut r = rig();
        let ctx = r.ctx.clone();
        let task = tokio::spawn(async move {
            for i in 1..=50 {
                ctx.progress(i as f32 / 50.0, format!("step {i}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(serde_json::json!("done"))
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        let write = move |p: Progress| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((Instant::now(), p));
            }
        };
        let out = supervise(task, &mut r.control, r.signals, r.shutdown, limits(), write).await;
        assert!(matches!(out.ending, Ending::Returned(Ok(_))), "{out:?}");
        let mut writes = Vec::new();
        while let Ok(w) = rx.try_recv() {
            writes.push(w);
        }
        // 500 ms of reports, 50 of them: a write at once, then at most one per interval.
        assert!((2..=4).contains(&writes.len()), "{} writes", writes.len());
        for pair in writes.windows(2) {
            assert!(pair[1].0 - pair[0].0 >= PROGRESS_INTERVAL);
        }
        assert_eq!(r.control.progress.borrow().message.as_deref(), Some("step 50"));
    }
}
