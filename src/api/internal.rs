//! `/internal/*`: endpoints for Google's own callers, each guarded by a Google OIDC token with
//! its own audience and service account: the dead-letter push (and Cloud Scheduler later).

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

use super::ApiState;
use crate::auth::GoogleOidcVerifier;
use crate::store::{self, DeadLetterOutcome};
use crate::worker::{authenticate, decode};

/// How dead-lettered jobs are retried before they fail as `undeliverable`.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetterPolicy {
    /// Dead-letter rounds a never-claimed job may go through.
    pub max_rounds: i32,
    /// Wait before re-dispatching, doubled each round.
    pub backoff: Duration,
}

impl Default for DeadLetterPolicy {
    fn default() -> Self {
        Self { max_rounds: 5, backoff: Duration::from_secs(60) }
    }
}

/// Verifiers for the internal callers.
pub struct InternalAuth {
    /// The dead-letter topic's push subscription.
    pub dead_letter: GoogleOidcVerifier,
    pub dead_letter_policy: DeadLetterPolicy,
}

pub(super) fn router() -> Router<ApiState> {
    Router::new().route("/internal/dead-letter", post(dead_letter))
}

/// `POST /internal/dead-letter`: a job message Pub/Sub gave up delivering. A job still queued
/// at that attempt (never claimed: workers were full or down) is re-dispatched after a backoff,
/// and fails as `undeliverable` after several rounds; any other job is left alone.
async fn dead_letter(State(state): State<ApiState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let Some(internal) = state.internal.as_deref() else {
        return StatusCode::NOT_FOUND;
    };
    if let Err(e) = authenticate(&internal.dead_letter, &headers).await {
        tracing::warn!(error = %e, "dead-letter push refused");
        return e.status();
    }
    let message = match decode(&body) {
        Ok((_, message)) => message,
        Err(e) => {
            tracing::warn!(error = %e, "dead-letter push refused");
            return e.status();
        }
    };
    let policy = internal.dead_letter_policy;
    match store::dead_letter(&state.pool, message.job_id, message.attempt, policy.max_rounds, policy.backoff).await {
        Ok(outcome) => {
            match outcome {
                DeadLetterOutcome::Requeued => {
                    tracing::warn!(job_id = %message.job_id, "job was dead-lettered unclaimed; re-dispatching after a backoff")
                }
                DeadLetterOutcome::Failed => {
                    tracing::error!(job_id = %message.job_id, "job dead-lettered too often; failed as undeliverable")
                }
                DeadLetterOutcome::Ignored => {
                    tracing::info!(job_id = %message.job_id, "dead letter for a job that moved on; ignored")
                }
            }
            StatusCode::NO_CONTENT
        }
        Err(e) => {
            tracing::error!(error = %e, "could not record a dead letter");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}
