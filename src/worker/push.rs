//! The `/push` handler: verify, decode, claim, run, answer.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use tracing::Instrument;
use uuid::Uuid;

use super::WorkerState;
use super::run::{Recorded, execute};
use crate::auth::AuthError;
use crate::message::{Malformed, decode};
use crate::store::{self, StoreError};

/// Why a push was refused before anything was touched.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Malformed(#[from] Malformed),
}

impl PushError {
    /// 401/403 for a refused token, 400 for a body that isn't a runq push.
    pub fn status(&self) -> StatusCode {
        match self {
            PushError::Auth(e) => e.status(),
            PushError::Malformed(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// `POST /push`: 204 once the delivery is handled (run recorded, or nothing to claim); 400 for a
/// malformed body; 401/403 for a refused token; 503 when the outcome couldn't be recorded.
pub async fn push(State(state): State<WorkerState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if let Err(e) = state.verifier.verify_request(&headers).await {
        tracing::warn!(error = %e, "push refused");
        return e.status();
    }
    let (envelope, message) = match decode(&body) {
        Ok(decoded) => decoded,
        Err(e) => {
            tracing::warn!(error = %e, "push refused");
            return PushError::from(e).status();
        }
    };
    let id = message.job_id;
    let traceparent = envelope.message.attributes.get("traceparent").map(String::as_str);
    let function = envelope.message.attributes.get("function").map_or("", String::as_str);
    let span = tracing::info_span!("push", otel.name = %format!("push {function}"), otel.kind = "consumer",
        messaging.system = "gcp_pubsub", job_id = %id, function,
        message_id = envelope.message.message_id.as_deref().unwrap_or(""),
        delivery_attempt = envelope.delivery_attempt, trace_id = tracing::field::Empty,
        otel.status_code = tracing::field::Empty);
    if let Some((trace, _)) = traceparent.and_then(crate::telemetry::parse_traceparent) {
        span.record("trace_id", trace);
    }
    crate::telemetry::otel::set_remote_parent(&span, traceparent);
    match handle(&state, id).instrument(span.clone()).await {
        Ok(()) => StatusCode::NO_CONTENT,
        Err(e) => {
            span.in_scope(|| tracing::error!(error = %e, "asking Pub/Sub to redeliver"));
            span.record("otel.status_code", "ERROR");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

/// The plain claim took nothing: the job may be paused or limited (held back here, or claimed
/// under its limits), or simply not claimable (acknowledged and logged). `None`: nothing to run.
async fn claim_held_back(state: &WorkerState, id: Uuid) -> Result<Option<store::Claimed>, StoreError> {
    // Twice at most: a pause resumed between the claim and the hold is claimed again.
    for _ in 0..2 {
        let Some(u) = store::unclaimable(&state.pool, id).await? else {
            tracing::info!("delivery for an unknown job; acknowledged");
            return Ok(None);
        };
        if !u.claimable() {
            metrics::counter!(crate::telemetry::metrics::CLAIM_CONFLICTS, "queue" => state.queue.clone()).increment(1);
            tracing::info!(status = %u.status, attempt = u.attempt, max_attempts = u.max_attempts,
                lease_live = u.lease_live, due = u.due, cancel_requested = u.cancel_requested,
                "delivery for a job that can't be claimed now; acknowledged");
            return Ok(None);
        }
        if let Some(pause) = store::limits::pause_of(&state.pool, id).await? {
            if store::limits::hold_for_pause(&state.pool, id, &pause).await? {
                metrics::counter!(crate::telemetry::metrics::HELD, "queue" => state.queue.clone(), "reason" => "pause")
                    .increment(1);
                tracing::info!(%pause, "held back by a pause; acknowledged");
                return Ok(None);
            }
        } else if let Some(keys) = &u.limit_keys {
            return match store::claim_limited(&state.pool, id, keys, &state.worker_id, state.lease).await? {
                store::LimitedClaim::Claimed(claimed) => Ok(Some(claimed)),
                store::LimitedClaim::Held { key, until, message } => {
                    metrics::counter!(crate::telemetry::metrics::HELD, "queue" => state.queue.clone(), "reason" => "limit")
                        .increment(1);
                    tracing::info!(%key, ?until, %message, "held back by a limit; acknowledged");
                    Ok(None)
                }
                store::LimitedClaim::Unclaimable => Ok(None),
            };
        }
        match store::claim(&state.pool, id, &state.worker_id, state.lease).await? {
            Some(claimed) => return Ok(Some(claimed)),
            None => continue,
        }
    }
    Ok(None)
}

/// Claims a job released this many times by workers without its function fail as
/// `unknown_function`; between them it waits 10 s, then 20 s, for a worker that has it (a
/// rolling deploy), instead of looping through redeliveries for hours.
pub const MAX_UNKNOWN_FUNCTION_ROUNDS: i32 = 3;
/// The first wait after an unknown-function release; it doubles per round.
pub const UNKNOWN_FUNCTION_BACKOFF: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a delivery is answered 5xx, so Pub/Sub redelivers it.
#[derive(Debug, thiserror::Error)]
enum Redeliver {
    /// The outcome (or the claim) couldn't be recorded.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The run was released at shutdown: another instance should take it now.
    #[error("the run was given back (interrupted by shutdown, or its lease lapsed)")]
    Released,
    /// The run's task itself failed (a bug in runq, not in the function).
    #[error("the run's task failed: {0}")]
    Task(tokio::task::JoinError),
}

async fn handle(state: &WorkerState, id: Uuid) -> Result<(), Redeliver> {
    let claimed = match state.writes.claim(id).await? {
        Some(claimed) => claimed,
        None => match claim_held_back(state, id).await? {
            Some(claimed) => claimed,
            None => return Ok(()),
        },
    };
    let Some(function) = state.registry.get(&claimed.function).cloned() else {
        // A worker of another version: give the job back, after a backoff, for one that knows
        // the function; acknowledged, so Pub/Sub doesn't bring it straight back here.
        let status = store::release_unknown_function(
            &state.pool,
            claimed.id,
            claimed.claim_id,
            MAX_UNKNOWN_FUNCTION_ROUNDS,
            UNKNOWN_FUNCTION_BACKOFF,
        )
        .await?;
        tracing::error!(function = %claimed.function, ?status, "this worker has no such function; job released");
        return Ok(());
    };
    if function.policy().cloud_run_job {
        // Its own execution takes the run over; Pub/Sub is answered now.
        return match super::exec::start(state, &claimed, function.policy().hard_time_limit).await? {
            true => Ok(()),
            false => Err(Redeliver::Released),
        };
    }
    // The run lives on its own task, counted as background work: if Pub/Sub drops the push
    // connection (its deadline passed) and this handler is dropped with it, the run still keeps
    // its lease, limits and signals, and records its outcome; shutdown waits for it.
    let (task_state, guard) = (state.clone(), state.background.enter());
    let id = claimed.id;
    let detached = function.policy().detached;
    let run = tokio::spawn(
        async move {
            let _guard = guard;
            let recorded = execute(&task_state, claimed, function).await;
            if detached && let Err(e) = &recorded {
                // The lease expires and the reaper requeues the job: retried, never lost.
                tracing::error!(job_id = %id, error = %e, "detached run's outcome could not be recorded");
            }
            recorded
        }
        .in_current_span(),
    );
    if detached {
        // Claimed durably above; answer Pub/Sub now, the run goes on in the background.
        return Ok(());
    }
    match run.await {
        Ok(Ok(Recorded::Released)) => Err(Redeliver::Released),
        Ok(Ok(Recorded::Status(_) | Recorded::Fenced)) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(Redeliver::Task(e)),
    }
}
