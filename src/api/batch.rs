//! `POST /jobs:batch`: many jobs in one durable commit, all or nothing; the jobs without a
//! `unique_key` in one statement, each keyed one deduplicated (or debounced) as `POST /jobs` does,
//! against the live jobs and the batch's other items.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::jobs::{SubmitRequest, body_error, check, empty_args, parse_json, require_json};
use super::{ApiError, ApiState, Caller};
use crate::job::Job;
use crate::store::{self, NewJob};

/// Largest `POST /jobs:batch` body.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Most jobs in one `POST /jobs:batch`.
pub const MAX_BATCH: usize = 1000;

/// The body of `POST /jobs:batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub jobs: Vec<SubmitRequest>,
}

/// The answer of `POST /jobs:batch`, in request order.
#[derive(Debug, Serialize, Deserialize)]
pub struct BatchResponse {
    pub jobs: Vec<Job>,
}

/// `POST /jobs:batch`: up to 1000 jobs in one commit, all or nothing; `202` with the jobs in
/// order, a deduplicated item's job marked `"deduplicated": true` (the key's live job, perhaps
/// created by an earlier item of the same batch).
pub(super) async fn submit_batch(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    if headers.contains_key("idempotency-key") {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "batches don't take an Idempotency-Key; submit jobs that need one with POST /jobs",
        ));
    }
    let body = body.map_err(body_error)?;
    let req: BatchRequest = parse_json(&body)?;
    if req.jobs.is_empty() || req.jobs.len() > MAX_BATCH {
        return Err(ApiError::invalid("jobs", format!("a batch holds 1 to {MAX_BATCH} jobs")));
    }
    let empty = empty_args();
    let args: Vec<&RawValue> = req.jobs.iter().map(|j| j.args.as_deref().unwrap_or(&empty)).collect();
    let trace_context = crate::telemetry::job_trace_context(&headers);
    let trace_context = trace_context.as_deref();
    let mut new = Vec::with_capacity(req.jobs.len());
    for (i, (job, args)) in req.jobs.iter().zip(&args).enumerate() {
        let spec = check(&state, &caller.0.sub, job, args, &format!("jobs[{i}]: "))?;
        new.push(NewJob { id: Uuid::now_v7(), owner: &caller.0.sub, spec, trace_context, idempotency: None });
    }
    let submitted = store::submit_many(&state.pool, &new).await?;
    let created = submitted.iter().filter(|s| s.created).count();
    tracing::info!(count = submitted.len(), created, "batch submitted");
    let mut jobs = Vec::with_capacity(submitted.len());
    for s in submitted {
        if s.created {
            crate::dispatch::job_created(state.outbox.as_ref(), &s.job, trace_context);
        }
        let mut job = serde_json::to_value(&s.job).map_err(|_| ApiError::Internal)?;
        if s.deduplicated {
            job["deduplicated"] = true.into();
        }
        jobs.push(job);
    }
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "jobs": jobs }))).into_response())
}
