//! `/internal/*`: endpoints for Google's own callers, each guarded by a Google OIDC token with
//! its own audience and service account: the dead-letter push, and Cloud Scheduler's firings.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Timelike, Utc};

use super::ApiState;
use crate::auth::GoogleOidcVerifier;
use crate::maintenance::{DeadLetterOutcome, dead_letters};
use crate::message::decode;
use crate::schedule::{FireError, Fired, Runner, Schedules};

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

/// The internal callers' verifiers, and what their calls act on. A route whose verifier is
/// absent answers 404: it isn't configured on this deployment.
pub struct Internal {
    /// The dead-letter topic's push subscription, and the rounds policy.
    pub dead_letter: Option<(GoogleOidcVerifier, DeadLetterPolicy)>,
    /// Cloud Scheduler's service account and the API's audience.
    pub scheduler: Option<GoogleOidcVerifier>,
    pub schedules: Arc<Schedules>,
    pub runner: Runner,
}

pub(super) fn router() -> Router<ApiState> {
    Router::new()
        .route("/internal/dead-letter", post(dead_letter))
        .route("/internal/schedules/{name}", post(fire_schedule))
}

fn problem(status: StatusCode, detail: impl Into<String>) -> Response {
    let body = serde_json::json!({ "type": "about:blank", "title": status.canonical_reason(), "status": status.as_u16(), "detail": detail.into() });
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/problem+json"));
    response
}

/// `POST /internal/schedules/{name}`: Cloud Scheduler's firing. Submits the schedule's job for
/// the scheduled time (`X-CloudScheduler-ScheduleTime`, else the slot that just passed) with an
/// idempotency key of that instant, so retries and doubled firings find the same job: 201 for
/// a new job, 200 when it already exists. Maintenance schedules run inline and answer 200.
async fn fire_schedule(State(state): State<ApiState>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    let Some(internal) = state.internal.as_deref() else {
        return problem(StatusCode::NOT_FOUND, "internal endpoints are not configured");
    };
    let Some(verifier) = &internal.scheduler else {
        return problem(StatusCode::NOT_FOUND, "schedules are not configured (RUNQ_SCHEDULER_AUDIENCE)");
    };
    if let Err(e) = verifier.verify_request(&headers).await {
        tracing::warn!(error = %e, schedule = %name, "scheduler call refused");
        return problem(e.status(), e.detail());
    }
    let Some(schedule) = internal.schedules.get(&name) else {
        return problem(StatusCode::NOT_FOUND, format!("no schedule named `{name}`"));
    };
    let now = Utc::now();
    let at = match headers.get("x-cloudscheduler-scheduletime") {
        Some(raw) => match raw.to_str().ok().and_then(|v| DateTime::parse_from_rfc3339(v).ok()) {
            Some(t) => t.with_timezone(&Utc),
            None => return problem(StatusCode::BAD_REQUEST, "X-CloudScheduler-ScheduleTime is not an RFC 3339 time"),
        },
        None => match schedule.slot_at_or_before(now) {
            Some(t) => t,
            None => return problem(StatusCode::UNPROCESSABLE_ENTITY, "the schedule has no slot before now"),
        },
    };
    let at = at.with_nanosecond(0).unwrap_or(at);
    match internal.runner.fire(schedule, at).await {
        Ok(fired) => {
            let status = match &fired {
                Fired::Job { created: true, .. } => StatusCode::CREATED,
                _ => StatusCode::OK,
            };
            (status, Json(serde_json::json!({ "schedule": name, "scheduled_time": at, "fired": fired })))
                .into_response()
        }
        Err(e @ (FireError::UnknownFunction(_) | FireError::Invalid(_))) => {
            tracing::error!(error = %e, schedule = %name, "firing failed");
            problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        Err(e @ FireError::Store(_)) => {
            tracing::error!(error = %e, schedule = %name, "firing failed");
            let mut response = problem(StatusCode::SERVICE_UNAVAILABLE, "could not fire the schedule; retry");
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(super::RETRY_AFTER_SECS));
            response
        }
    }
}

/// `POST /internal/dead-letter`: a job message Pub/Sub gave up delivering. A job still queued
/// at that attempt (never claimed: workers were full or down) is re-dispatched after a backoff,
/// and fails as `undeliverable` after several rounds; any other job is left alone.
async fn dead_letter(State(state): State<ApiState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let Some((verifier, policy)) = state.internal.as_deref().and_then(|i| i.dead_letter.as_ref()) else {
        return StatusCode::NOT_FOUND;
    };
    if let Err(e) = verifier.verify_request(&headers).await {
        tracing::warn!(error = %e, "dead-letter push refused");
        return e.status();
    }
    let message = match decode(&body) {
        Ok((_, message)) => message,
        Err(e) => {
            tracing::warn!(error = %e, "dead-letter push refused");
            return StatusCode::BAD_REQUEST;
        }
    };
    match dead_letters::dead_letter(&state.pool, message.job_id, message.attempt, policy.max_rounds, policy.backoff)
        .await
    {
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
