//! `/workflows`: submit (a template by name, or steps as JSON), the whole-workflow status (ETag,
//! `?wait=` long-poll), cancel, signals to waiting steps; and `GET /jobs/{id}/parents`, a
//! fan-in's parents page by page.

use std::collections::HashSet;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::jobs::{MAX_WAIT_SECONDS, body_error, etag_of, matches_if_none_match, parse_id, parse_json, require_json};
use super::{ApiError, ApiState, Caller};
use crate::store::{self, SignalOutcome, WorkflowCancel, WorkflowRetry};
use crate::workflow::{self, Signal, WorkflowSpec};

pub(super) fn router() -> Router<ApiState> {
    Router::new()
        .route("/workflows", post(submit).get(list))
        .route("/workflows/{id}", get(status))
        .route("/workflows/{id}/cancel", post(cancel))
        .route("/workflows/{id}/retry", post(retry))
        .route("/workflows/{id}/steps/{step}/signal", post(signal))
        .route("/jobs/{id}/parents", get(parents))
}

/// The body of `POST /workflows`: a template's name, or the steps themselves.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitWorkflow {
    /// A template declared with `App::workflow`.
    #[serde(default)]
    pub workflow: Option<String>,
    /// The steps, when no template is named.
    #[serde(default)]
    pub steps: Option<Vec<workflow::StepSpec>>,
    /// The workflow's args: every step's args unless it has its own, and its fan-outs' lists.
    #[serde(default)]
    pub args: Option<Value>,
}

async fn submit(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    let body = body.map_err(body_error)?;
    let req: SubmitWorkflow = parse_json(&body)?;
    let args = req.args.unwrap_or_else(|| Value::Object(Default::default()));
    if args.to_string().len() > state.limits.max_args_bytes {
        return Err(ApiError::TooLarge(format!("args are over the limit of {} bytes", state.limits.max_args_bytes)));
    }
    let inline;
    let (name, spec): (Option<&str>, &WorkflowSpec) = match (&req.workflow, req.steps) {
        (Some(name), None) => {
            let spec = state
                .registry
                .workflows()
                .get(name)
                .ok_or_else(|| ApiError::invalid("workflow", format!("unknown workflow `{name}`")))?;
            (Some(name.as_str()), spec)
        }
        (None, Some(steps)) => {
            inline = WorkflowSpec { steps };
            (None, &inline)
        }
        _ => return Err(ApiError::invalid("body", "give either `workflow` (a template's name) or `steps`")),
    };
    let plan = crate::submit::plan_workflow(&state.registry, &caller.0.sub, spec, &args)
        .map_err(|e| ApiError::invalid("steps", e.to_string()))?;
    let trace_context = crate::telemetry::job_trace_context(&headers);
    let key = idempotency_key(&headers)?;
    let submitted =
        store::submit_workflow(&state.pool, &caller.0.sub, name, &args, &plan, trace_context.as_deref(), key).await?;
    if submitted.created {
        tracing::info!(workflow_id = %submitted.id, jobs = plan.jobs.len(), "workflow submitted");
    }
    if let Some(outbox) = &state.outbox {
        for publication in submitted.runnable {
            outbox.dispatch(publication);
        }
    }
    let view = store::workflow(&state.pool, submitted.id, None).await?.ok_or(ApiError::Internal)?;
    let location = HeaderValue::from_str(&format!("/workflows/{}", submitted.id)).expect("uuid is a valid header");
    let code = if submitted.created { StatusCode::ACCEPTED } else { StatusCode::OK };
    Ok((code, [(header::LOCATION, location)], Json(view)).into_response())
}

/// An `Idempotency-Key` header: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
            .map(Some)
            .ok_or_else(|| ApiError::invalid("Idempotency-Key", "must be 1 to 255 visible ASCII characters")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<i64>,
    /// Workflows older than this one (the last id of the previous page).
    before: Option<Uuid>,
}

/// `GET /workflows?limit=&before=`: the caller's workflows (an admin's: everyone's), newest first.
async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 200"));
    }
    let page = store::list_workflows(&state.pool, caller.owner_filter(), query.before, limit).await?;
    let next = (page.len() as i64 == limit).then(|| page.last().map(|w| w.id)).flatten();
    Ok(Json(serde_json::json!({ "workflows": page, "next_before": next })).into_response())
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no workflow with id {id}"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusQuery {
    /// Long-poll: answer once the workflow differs from `If-None-Match` (or from its state when
    /// the request came), or after this many seconds.
    wait: Option<u64>,
}

/// `GET /workflows/{id}`: the overall state and progress and every step, with an ETag (304 when
/// unchanged) and `?wait=` as for a job's status.
async fn status(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<StatusQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let Query(query) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let wait = query.wait.unwrap_or(0);
    if wait > MAX_WAIT_SECONDS {
        return Err(ApiError::invalid("wait", format!("must be at most {MAX_WAIT_SECONDS} seconds")));
    }
    let mut changes = state.watcher.as_ref().filter(|_| wait > 0).map(|w| w.subscribe());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait);
    let mut baseline: Option<HeaderValue> = None;
    let mut watched: Option<HashSet<Uuid>> = None;
    let (body, etag) = loop {
        let view = store::workflow(&state.pool, id, caller.owner_filter()).await?.ok_or_else(|| not_found(id))?;
        let body = serde_json::to_vec(&view).map_err(|_| ApiError::Internal)?;
        let etag = etag_of(&body);
        let client_has_it = match headers.get(header::IF_NONE_MATCH) {
            Some(_) => matches_if_none_match(&headers, &etag),
            None => baseline.get_or_insert_with(|| etag.clone()) == &etag,
        };
        let Some(rx) = changes.as_mut().filter(|_| client_has_it && !view.status.is_finished()) else {
            break (body, etag);
        };
        let Some(ids) = &watched else {
            watched = Some(store::watch_workflow(&state.pool, id).await?.into_iter().collect());
            continue;
        };
        if !super::watch::changed_any(rx, ids, deadline).await {
            break (body, etag);
        }
        // A fan-out may have added jobs: watch them too.
        watched = None;
    };
    let cache = HeaderValue::from_static("private, no-cache");
    if matches_if_none_match(&headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag), (header::CACHE_CONTROL, cache)]).into_response());
    }
    let content_type = HeaderValue::from_static("application/json");
    Ok((
        StatusCode::OK,
        [(header::ETAG, etag), (header::CACHE_CONTROL, cache), (header::CONTENT_TYPE, content_type)],
        body,
    )
        .into_response())
}

/// `POST /workflows/{id}/cancel`: every pending, waiting, queued and retrying job is cancelled,
/// every running one asked to stop. 202 with the workflow; 409 once it has finished.
async fn cancel(State(state): State<ApiState>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    match store::cancel_workflow(&state.pool, id, caller.owner_filter()).await? {
        WorkflowCancel::NotFound => Err(not_found(id)),
        WorkflowCancel::Finished => {
            let view = store::workflow(&state.pool, id, caller.owner_filter()).await?.ok_or_else(|| not_found(id))?;
            if view.status == store::WorkflowState::Cancelled {
                return Ok((StatusCode::OK, Json(view)).into_response());
            }
            Err(ApiError::Conflict(format!(
                "workflow {id} already finished ({:?}); it can't be cancelled",
                view.status
            )))
        }
        WorkflowCancel::Cancelled(jobs) => {
            tracing::info!(workflow_id = %id, jobs, "workflow cancelled");
            let view = store::workflow(&state.pool, id, caller.owner_filter()).await?.ok_or_else(|| not_found(id))?;
            Ok((StatusCode::ACCEPTED, Json(view)).into_response())
        }
    }
}

/// `POST /workflows/{id}/retry`: a failed or cancelled workflow starts over from where it
/// stopped (its failed and cancelled steps; those that succeeded keep their results). 202 with
/// the workflow; 409 while a step is unfinished, or when it succeeded.
async fn retry(State(state): State<ApiState>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    match store::retry_workflow(&state.pool, id, caller.owner_filter()).await? {
        WorkflowRetry::NotFound => Err(not_found(id)),
        WorkflowRetry::Unfinished => Err(ApiError::Conflict(format!(
            "workflow {id} has steps not finished yet; cancel it first, or wait for it to finish"
        ))),
        WorkflowRetry::Succeeded => {
            Err(ApiError::Conflict(format!("workflow {id} succeeded; there is nothing to retry")))
        }
        WorkflowRetry::Retried { jobs, runnable } => {
            tracing::info!(workflow_id = %id, jobs, "workflow retried");
            if let Some(outbox) = &state.outbox {
                for publication in runnable {
                    outbox.dispatch(publication);
                }
            }
            let view = store::workflow(&state.pool, id, caller.owner_filter()).await?.ok_or_else(|| not_found(id))?;
            Ok((StatusCode::ACCEPTED, Json(view)).into_response())
        }
    }
}

/// `POST /workflows/{id}/steps/{step}/signal` (the workflow's owner, or an admin): a decision
/// (`approve` or `reject`) and any data for a waiting signal step. 200 with the workflow (and
/// `repeated: true` when the same signal was applied before); 409 when the step doesn't wait;
/// 422 when it is not a signal step.
async fn signal(
    State(state): State<ApiState>,
    caller: Caller,
    Path((id, step)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    require_json(&headers)?;
    let body = body.map_err(body_error)?;
    let signal: Signal = parse_json(&body)?;
    if signal.data.to_string().len() > state.limits.max_args_bytes {
        return Err(ApiError::TooLarge(format!("data is over the limit of {} bytes", state.limits.max_args_bytes)));
    }
    let key = idempotency_key(&headers)?;
    let sent_by = caller.0.sub.clone();
    let outcome = store::signal(&state.pool, id, &step, caller.owner_filter(), &sent_by, &signal, key).await?;
    let repeated = match outcome {
        SignalOutcome::NotFound => {
            return Err(ApiError::NotFound(format!("no workflow {id} with a step `{step}`")));
        }
        SignalOutcome::NotSignalStep => {
            return Err(ApiError::invalid("step", format!("step `{step}` runs a function; it takes no signals")));
        }
        SignalOutcome::NotWaiting(status) => {
            return Err(ApiError::Conflict(format!(
                "step `{step}` is {status}, not waiting for a signal; nothing changed"
            )));
        }
        SignalOutcome::Repeated { round, .. } => {
            tracing::info!(workflow_id = %id, step, round, "signal repeated; nothing changed");
            true
        }
        SignalOutcome::Applied { status, round, runnable } => {
            tracing::info!(workflow_id = %id, step, round, decision = signal.decision.as_str(), %status, by = %sent_by, "signal applied");
            if let Some(outbox) = &state.outbox {
                for publication in runnable {
                    outbox.dispatch(publication);
                }
            }
            false
        }
    };
    let view = store::workflow(&state.pool, id, caller.owner_filter()).await?.ok_or_else(|| not_found(id))?;
    let mut body = serde_json::to_value(&view).map_err(|_| ApiError::Internal)?;
    body["repeated"] = repeated.into();
    Ok((StatusCode::OK, Json(body)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ParentsQuery {
    after: Option<Uuid>,
    limit: Option<i64>,
}

/// `GET /jobs/{id}/parents?after=&limit=`: the jobs a step ran after, with their results, by id.
async fn parents(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<ParentsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let Query(query) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=store::MAX_PARENTS_PAGE).contains(&limit) {
        return Err(ApiError::invalid("limit", format!("must be between 1 and {}", store::MAX_PARENTS_PAGE)));
    }
    store::get_status(&state.pool, id, caller.owner_filter())
        .await?
        .ok_or_else(|| ApiError::JobNotFound(id.to_string()))?;
    let page = store::parents(&state.pool, id, query.after, limit).await?;
    let next = (page.len() as i64 == limit).then(|| page.last().map(|p| p.job_id)).flatten();
    Ok(Json(serde_json::json!({ "parents": page, "next_after": next })).into_response())
}
