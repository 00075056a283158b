//! `/jobs`: submit, status (with ETag and 304), detail, cancel and the keyset-paginated list.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::narrowing::{Asked, given, given_flag};
use super::{ApiError, ApiState, Caller};
use crate::job::{ErrorKind, Job, Priority, Status};
use crate::store::{self, CancelOutcome, DeleteOutcome, JobSpec, ListFilter, NewJob, RetryOutcome, StoreError};
use crate::submit::{self, Invalid, Submission};

/// Page size of `GET /jobs` when `limit` is absent.
pub const DEFAULT_PAGE: u32 = 50;
/// Largest page of `GET /jobs`.
pub const MAX_PAGE: u32 = 200;
/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

pub(super) fn router(body_limit: usize) -> Router<ApiState> {
    Router::new()
        .route("/jobs", post(submit).get(list))
        .route(
            "/jobs:batch",
            post(super::batch::submit_batch)
                .layer(DefaultBodyLimit::max(super::batch::MAX_BATCH_BYTES.max(body_limit))),
        )
        .route("/jobs/{id}", get(detail).delete(delete))
        .route("/jobs/{id}/status", get(status))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/jobs/{id}/retry", post(retry))
        .layer(DefaultBodyLimit::max(body_limit))
}

/// The body of `POST /jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// A registered function's name.
    pub function: String,
    /// The function's arguments (default `{}`); kept as raw JSON, parsed once to validate.
    #[serde(default)]
    pub args: Option<Box<RawValue>>,
    /// `high`, `medium` or `low`; the function's default when absent.
    #[serde(default)]
    pub priority: Option<String>,
    /// Overrides the function's max attempts (1..=100).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Not run before this many seconds from now.
    #[serde(default)]
    pub delay_seconds: Option<f64>,
    /// At most one queued, retrying or running job of the caller with this key.
    #[serde(default)]
    pub unique_key: Option<String>,
    /// With `unique_key`: run once, this many seconds after the key's submits stopped, with the
    /// last submit's args.
    #[serde(default)]
    pub debounce_seconds: Option<f64>,
}

pub(super) fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).ok_or(ApiError::UnsupportedMediaType)?;
    let mime = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

pub(super) fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge("request body is over the limit".into())
    } else {
        ApiError::MalformedJson(rejection.body_text())
    }
}

pub(super) fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::invalid("body", e.to_string()),
        _ => ApiError::MalformedJson(e.to_string()),
    })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::invalid("Idempotency-Key", format!("must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"))
        })?;
    Ok(Some(key))
}

/// The hash that tells a replay of a submit (same hash) from a conflicting reuse of its key.
/// Args are hashed as canonical JSON (sorted keys) so formatting differences don't matter.
fn request_hash(req: &SubmitRequest, priority: Priority, args: &RawValue) -> Result<[u8; 32], ApiError> {
    let args: serde_json::Value =
        serde_json::from_str(args.get()).map_err(|e| ApiError::invalid("args", e.to_string()))?;
    let mut canonical = serde_json::json!({
        "function": req.function,
        "args": args,
        "priority": priority.as_str(),
        "max_attempts": req.max_attempts,
        "delay_seconds": req.delay_seconds,
    });
    // Only when given, so the hashes of requests without them stay what they were.
    if let Some(key) = &req.unique_key {
        canonical["unique_key"] = key.as_str().into();
    }
    if let Some(debounce) = req.debounce_seconds {
        canonical["debounce_seconds"] = debounce.into();
    }
    Ok(Sha256::digest(canonical.to_string().as_bytes()).into())
}

/// Validates one submit ([`submit::validate`] with the API's args limit). `args` is the
/// request's args (or `{}`); `at` prefixes error details in a batch.
pub(super) fn check<'a>(
    state: &ApiState,
    owner: &'a str,
    req: &'a SubmitRequest,
    args: &'a RawValue,
    at: &str,
) -> Result<JobSpec<'a>, ApiError> {
    let submission = Submission {
        owner,
        function: &req.function,
        args,
        priority: req.priority.as_deref(),
        max_attempts: req.max_attempts,
        delay_seconds: req.delay_seconds,
        unique_key: req.unique_key.as_deref(),
        debounce_seconds: req.debounce_seconds,
    };
    submit::validate(&state.registry, Some(state.limits.max_args_bytes), &submission).map_err(|e| match e {
        Invalid::ArgsTooLarge { .. } => ApiError::TooLarge(format!("{at}{e}")),
        e => ApiError::invalid(e.field(), format!("{at}{e}")),
    })
}

pub(super) fn empty_args() -> Box<RawValue> {
    RawValue::from_string("{}".into()).expect("valid JSON")
}

async fn submit(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    let body = body.map_err(body_error)?;
    let req: SubmitRequest = parse_json(&body)?;
    let empty = empty_args();
    let args: &RawValue = req.args.as_deref().unwrap_or(&empty);
    let spec = check(&state, &caller.0.sub, &req, args, "")?;
    let key = idempotency_key(&headers)?;
    let idempotency = match key {
        Some(key) => Some((key, request_hash(&req, spec.priority, args)?)),
        None => None,
    };
    let trace_context = crate::telemetry::job_trace_context(&headers);
    let trace_context = trace_context.as_deref();
    let new = NewJob { id: Uuid::now_v7(), owner: &caller.0.sub, spec, trace_context, idempotency };
    let result = if new.idempotency.is_none() && new.spec.unique_key.is_none() {
        store::Submitted { job: state.submits.plain(&new).await?, created: true, deduplicated: false }
    } else {
        store::submit(&state.pool, &new, state.limits.idempotency_retention).await?
    };
    let job = result.job;
    if result.created {
        tracing::info!(job_id = %job.status.id, function = %job.function, priority = %job.priority, "job submitted");
        crate::dispatch::job_created(state.outbox.as_ref(), &job, trace_context);
    }
    let code = if result.created { StatusCode::ACCEPTED } else { StatusCode::OK };
    let location = HeaderValue::from_str(&format!("/jobs/{}", job.status.id)).expect("uuid is a valid header");
    if result.deduplicated {
        tracing::info!(job_id = %job.status.id, debounced = new.spec.debounce_secs.is_some(), "submit deduplicated by its unique key");
        let mut body = serde_json::to_value(&job).map_err(|_| ApiError::Internal)?;
        body["deduplicated"] = true.into();
        return Ok((code, [(header::LOCATION, location)], Json(body)).into_response());
    }
    Ok((code, [(header::LOCATION, location)], Json(job)).into_response())
}

/// A job id from a path segment; a clear 422 for anything else.
pub(crate) fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::invalid("id", format!("{raw:?} is not a job id (a UUID)")))
}

/// A weak ETag over the status body, so an unchanged job answers 304.
pub(super) fn etag_of(body: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(body);
    let tag = format!("W/\"{}\"", URL_SAFE_NO_PAD.encode(&digest[..12]));
    HeaderValue::from_str(&tag).expect("base64 is a valid header")
}

pub(super) fn matches_if_none_match(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let Some(raw) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let ours = etag.to_str().unwrap_or_default().trim_start_matches("W/");
    raw.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == ours)
}

/// Longest `?wait=` accepted: within any load balancer's default timeout.
pub const MAX_WAIT_SECONDS: u64 = 30;

/// Query parameters of `GET /jobs/{id}/status`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusQuery {
    /// Long-poll: answer as soon as the job differs from `If-None-Match` (or from its state when
    /// the request arrived), or after this many seconds.
    wait: Option<u64>,
}

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
    // Subscribe before the first read, so a change between the read and the wait isn't missed.
    let mut changes = state.watcher.as_ref().filter(|_| wait > 0).map(|w| w.subscribe());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait);
    let mut baseline: Option<HeaderValue> = None;
    let mut watching = false;
    let (body, etag) = loop {
        let status = store::get_status(&state.pool, id, caller.owner_filter())
            .await?
            .ok_or_else(|| ApiError::JobNotFound(id.to_string()))?;
        let body = serde_json::to_vec(&status).map_err(|_| ApiError::Internal)?;
        let etag = etag_of(&body);
        let client_has_it = match headers.get(header::IF_NONE_MATCH) {
            Some(_) => matches_if_none_match(&headers, &etag),
            None => baseline.get_or_insert_with(|| etag.clone()) == &etag,
        };
        let Some(rx) = changes.as_mut().filter(|_| client_has_it && !status.status.is_finished()) else {
            break (body, etag);
        };
        if !watching {
            // From now on this job's changes notify; read again in case one just slipped by.
            store::watch(&state.pool, id).await?;
            watching = true;
            continue;
        }
        if !super::watch::changed(rx, id, deadline).await {
            break (body, etag);
        }
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

async fn detail(State(state): State<ApiState>, caller: Caller, Path(id): Path<String>) -> Result<Json<Job>, ApiError> {
    let id = parse_id(&id)?;
    let mut job = store::get(&state.pool, id, caller.owner_filter())
        .await?
        .ok_or_else(|| ApiError::JobNotFound(id.to_string()))?;
    let children = store::children_counts(&state.pool, id).await?;
    if !children.is_empty() {
        job.children = Some(children.into_iter().collect());
    }
    job.status.workflow = store::step_of(&state.pool, id).await?;
    Ok(Json(job))
}

async fn cancel(State(state): State<ApiState>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    match store::request_cancel(&state.pool, id, caller.owner_filter()).await? {
        CancelOutcome::Cancelled(job) => {
            tracing::info!(job_id = %id, "job cancelled before it ran");
            Ok((StatusCode::OK, Json(job)).into_response())
        }
        CancelOutcome::Requested(job) => {
            tracing::info!(job_id = %id, "cancel requested for a running job");
            Ok((StatusCode::ACCEPTED, Json(job)).into_response())
        }
        CancelOutcome::AlreadyFinished(job) if job.status.status == Status::Cancelled => {
            Ok((StatusCode::OK, Json(job)).into_response())
        }
        CancelOutcome::AlreadyFinished(job) => {
            Err(ApiError::Conflict(format!("job {id} already finished ({}); it can't be cancelled", job.status.status)))
        }
        CancelOutcome::NotFound => Err(ApiError::JobNotFound(id.to_string())),
    }
}

/// `POST /jobs/{id}/retry`: a failed or cancelled job back to `queued` with its attempt budget
/// again, published at once through the outbox (else by the relay). Its runs are kept.
async fn retry(State(state): State<ApiState>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    match store::retry(&state.pool, id, caller.owner_filter()).await? {
        RetryOutcome::Retried(job) => {
            tracing::info!(job_id = %id, attempt = job.status.attempt, max_attempts = job.status.max_attempts, "job retried by hand");
            if let Some(outbox) = &state.outbox {
                outbox.dispatch(store::Publication::of(&job, None));
            }
            Ok((StatusCode::OK, Json(job)).into_response())
        }
        RetryOutcome::WrongStatus(job) => {
            let link = store::get_status(&state.pool, id, caller.owner_filter()).await?.and_then(|s| s.workflow);
            Err(ApiError::Conflict(match link {
                Some(link) => format!(
                    "job {id} is step `{}` of workflow {}; retry the workflow (POST /workflows/{}/retry), which runs it again in order",
                    link.step, link.workflow_id, link.workflow_id
                ),
                None => format!("job {id} is {}; only failed or cancelled jobs can be retried", job.status.status),
            }))
        }
        RetryOutcome::NotFound => Err(ApiError::JobNotFound(id.to_string())),
    }
}

/// `DELETE /jobs/{id}`: a finished job deleted with its runs (`204`), and its result object in
/// GCS when it has one; an unfinished one is a `409`. The statement is a bulk delete's.
async fn delete(State(state): State<ApiState>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    match store::delete(&state.pool, id, caller.owner_filter(), state.limits.idempotency_retention).await? {
        DeleteOutcome::Deleted(deleted) => {
            tracing::info!(job_id = %id, "job deleted");
            let deleted = [deleted];
            crate::maintenance::cleanup::delete_results(state.storage.as_deref(), &deleted).await;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        DeleteOutcome::Unfinished(job) => Err(ApiError::Conflict(format!(
            "job {id} is {}; only finished jobs (succeeded, failed, cancelled) can be deleted",
            job.status.status
        ))),
        DeleteOutcome::NotFound => Err(ApiError::JobNotFound(id.to_string())),
    }
}

/// Query parameters of `GET /jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    function: Option<String>,
    /// Only the children of this job (a fan-out).
    parent: Option<String>,
    error_kind: Option<String>,
    id: Option<String>,
    queue: Option<String>,
    due: Option<String>,
    error: Option<String>,
    arg: Option<String>,
    held: Option<String>,
    held_on: Option<String>,
    publish_failing: Option<String>,
    dead_lettered: Option<String>,
    lease_expired: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

impl ListQuery {
    /// The dashboard's filters in it, each with its parameter's name.
    fn narrowing(&self) -> Asked<'_> {
        let (text, flag) = (given, given_flag);
        Asked {
            id: self.id.as_deref().map(|v| ("id", v)),
            queue: text("queue", &self.queue),
            due: flag("due", &self.due),
            error: text("error", &self.error),
            arg: text("arg", &self.arg),
            held: flag("held", &self.held),
            held_on: text("held_on", &self.held_on),
            publish_failing: flag("publish_failing", &self.publish_failing),
            dead_lettered: flag("dead_lettered", &self.dead_lettered),
            lease_expired: flag("lease_expired", &self.lease_expired),
        }
    }
}

/// A page of `GET /jobs`, newest first.
#[derive(Debug, Serialize, Deserialize)]
pub struct JobList {
    pub jobs: Vec<Job>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Cursors are the last id of a page, versioned and base64url-encoded: opaque to clients.
pub(super) fn encode_cursor(id: Uuid) -> String {
    let mut raw = vec![1u8];
    raw.extend_from_slice(id.as_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

pub(super) fn decode_cursor(cursor: &str) -> Result<Uuid, ApiError> {
    let bad = || ApiError::invalid("cursor", "invalid cursor: pass the next_cursor of a previous page");
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    match raw.split_first() {
        Some((1, id)) => Uuid::from_slice(id).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    if let Some(function) = &query.function {
        super::storable::text("function", function)?;
    }
    let status = match &query.status {
        None => None,
        Some(s) => Some(s.parse::<Status>().map_err(|e| ApiError::invalid("status", e.to_string()))?),
    };
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid("limit", format!("must be between 1 and {MAX_PAGE}")));
    }
    let before = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let parent = match &query.parent {
        Some(p) => Some(Uuid::parse_str(p).map_err(|_| ApiError::invalid("parent", format!("{p:?} is not a job id")))?),
        None => None,
    };
    let error_kind = query
        .error_kind
        .as_deref()
        .map(|k| k.parse::<ErrorKind>().map_err(|e| ApiError::invalid("error_kind", e.to_string())))
        .transpose()?;
    let asked = query.narrowing();
    let narrow = super::narrowing::check(&asked)?;
    let filter = ListFilter {
        owner: caller.owner_filter(),
        status,
        function: query.function.as_deref(),
        parent,
        error_kind,
        narrow,
        before,
    };
    // One extra row tells whether another page exists.
    let timeout = state.limits.search_timeout;
    let mut jobs = match store::list(&state.pool, &filter, i64::from(limit) + 1, timeout).await {
        Err(StoreError::Timeout) => return Err(super::narrowing::timed_out(&asked, timeout)),
        other => other?,
    };
    let next_cursor = if jobs.len() > limit as usize {
        jobs.truncate(limit as usize);
        jobs.last().map(|j| encode_cursor(j.status.id))
    } else {
        None
    };
    Ok(Json(JobList { jobs, next_cursor }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let id = Uuid::now_v7();
        assert_eq!(decode_cursor(&encode_cursor(id)).unwrap(), id);
        assert!(decode_cursor("not-a-cursor!").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode([2u8; 17])).is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode([1u8; 5])).is_err());
    }

    #[test]
    fn cursors_are_exactly_what_the_openapi_pattern_describes() {
        // The pattern's classes, spelled out: `A`, then a char whose top bits are 01, 20 of any,
        // then one whose low 2 bits are 0 (17 bytes are 136 of the 138 bits of 23 chars).
        assert_eq!(super::super::CURSOR_PATTERN, "^A[Q-Za-f][A-Za-z0-9_-]{20}[AEIMQUYcgkosw048]$");
        let any = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let second: Vec<char> = ('Q'..='Z').chain('a'..='f').collect();
        let last: Vec<char> = "AEIMQUYcgkosw048".chars().collect();
        let matches = |c: &str| {
            let c: Vec<char> = c.chars().collect();
            c.len() == 23
                && c[0] == 'A'
                && second.contains(&c[1])
                && c[2..22].iter().all(|ch| any.contains(*ch))
                && last.contains(&c[22])
        };
        let ids = [Uuid::nil(), Uuid::max(), Uuid::now_v7(), Uuid::new_v4(), Uuid::new_v4()];
        for id in ids {
            assert!(matches(&encode_cursor(id)), "{} matches", encode_cursor(id));
        }
        // And every string the pattern matches decodes.
        for (i, (s, l)) in second.iter().zip(last.iter().cycle()).enumerate() {
            let middle: String = any.chars().cycle().skip(i * 7).take(20).collect();
            let cursor = format!("A{s}{middle}{l}");
            assert!(matches(&cursor));
            assert!(decode_cursor(&cursor).is_ok(), "{cursor} decodes");
        }
        for l in &last {
            assert!(decode_cursor(&format!("AQ{}{l}", "_".repeat(20))).is_ok());
        }
    }

    #[test]
    fn if_none_match_accepts_weak_lists_and_star() {
        let tag = etag_of(b"x");
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&format!("\"zz\", {}", tag.to_str().unwrap())).unwrap());
        assert!(matches_if_none_match(&h, &tag));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert!(!matches_if_none_match(&h, &tag));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(matches_if_none_match(&h, &tag));
    }
}
