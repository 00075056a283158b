//! `/limits` and pauses: the declared limits with their use, changed at run time by an admin
//! without a deploy, and pausing or resuming a queue or a function.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState, Caller};
use crate::job::Priority;
use crate::limits::Values;
use crate::store::limits::{self as store, LimitUsage, Pause};

pub(super) fn router() -> Router<ApiState> {
    Router::new()
        .route("/limits", get(list))
        .route("/limits/{name}", put(set).delete(reset))
        .route("/pauses", get(pauses))
        .route("/queues/{name}/pause", post(pause_queue))
        .route("/queues/{name}/resume", post(resume_queue))
        .route("/functions/{name}/pause", post(pause_function))
        .route("/functions/{name}/resume", post(resume_function))
}

fn admin(caller: &Caller, what: &str) -> Result<(), ApiError> {
    if caller.0.admin { Ok(()) } else { Err(ApiError::Forbidden(format!("only admins may {what}"))) }
}

/// The body of `GET /limits`.
#[derive(Debug, Serialize)]
pub struct LimitList {
    pub limits: Vec<LimitUsage>,
}

/// `GET /limits`: every limit, its values (and whether they were changed at run time) and its
/// use now: runs holding a slot, jobs held back, the busiest keys.
async fn list(State(state): State<ApiState>, _caller: Caller) -> Result<Json<LimitList>, ApiError> {
    Ok(Json(LimitList { limits: store::usage(&state.pool).await? }))
}

/// The body of `PUT /limits/{name}`: the values to enforce from now on, on every worker.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetLimit {
    #[serde(default)]
    pub concurrency: Option<u32>,
    #[serde(default)]
    pub rate_per_second: Option<f64>,
    #[serde(default = "one")]
    pub burst: u32,
}

fn one() -> u32 {
    1
}

/// `PUT /limits/{name}` (admins): new values, kept across deploys until `DELETE` resets them to
/// the declared ones. Jobs a raised concurrency has room for are released at once.
async fn set(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<LimitUsage>, ApiError> {
    admin(&caller, "change limits")?;
    super::jobs::require_json(&headers)?;
    let body = body.map_err(super::jobs::body_error)?;
    let req: SetLimit = super::jobs::parse_json(&body)?;
    let values = Values { concurrency: req.concurrency, rate_per_second: req.rate_per_second, burst: req.burst };
    values.check().map_err(|e| ApiError::invalid("body", e))?;
    changed(&state, &name, Some(values), &caller.0.sub).await
}

/// `DELETE /limits/{name}` (admins): back to the declared values.
async fn reset(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<LimitUsage>, ApiError> {
    admin(&caller, "change limits")?;
    changed(&state, &name, None, &caller.0.sub).await
}

async fn changed(state: &ApiState, name: &str, values: Option<Values>, by: &str) -> Result<Json<LimitUsage>, ApiError> {
    super::storable::text("name", name)?;
    let released = store::set_values(&state.pool, name, values, by)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no limit named {name:?}")))?;
    tracing::info!(limit = %name, ?values, by, released = released.len(), "limit changed");
    publish(state, released);
    let usage = store::usage(&state.pool).await?;
    usage.into_iter().find(|l| l.name == name).map(Json).ok_or(ApiError::Internal)
}

fn publish(state: &ApiState, jobs: Vec<crate::store::Publication>) {
    if let Some(outbox) = &state.outbox {
        for job in jobs {
            outbox.dispatch(job);
        }
    }
}

/// The body of `GET /pauses`.
#[derive(Debug, Serialize)]
pub struct PauseList {
    pub pauses: Vec<Pause>,
}

async fn pauses(State(state): State<ApiState>, _caller: Caller) -> Result<Json<PauseList>, ApiError> {
    Ok(Json(PauseList { pauses: store::pauses(&state.pool).await? }))
}

/// The answer of a pause or resume.
#[derive(Debug, Serialize)]
pub struct Paused {
    pub scope: &'static str,
    pub name: String,
    pub paused: bool,
    /// False when it was in that state already (the request changed nothing).
    pub changed: bool,
    /// Jobs a resume released.
    pub released: usize,
}

fn known_queue(state: &ApiState, name: &str) -> Result<(), ApiError> {
    let priorities = [Priority::High, Priority::Medium, Priority::Low];
    if priorities.iter().any(|p| p.as_str() == name) || state.registry.custom_queues().contains(&name) {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("no queue named {name:?}")))
    }
}

fn known_function(state: &ApiState, name: &str) -> Result<(), ApiError> {
    state.registry.get(name).map(drop).ok_or_else(|| ApiError::NotFound(format!("no function named {name:?}")))
}

async fn toggle(
    state: &ApiState,
    caller: &Caller,
    scope: &'static str,
    name: String,
    pause: bool,
) -> Result<Json<Paused>, ApiError> {
    if pause {
        let changed = store::pause(&state.pool, scope, &name, &caller.0.sub).await?;
        tracing::info!(scope, name = %name, by = %caller.0.sub, changed, "paused");
        return Ok(Json(Paused { scope, name, paused: true, changed, released: 0 }));
    }
    let released = store::resume(&state.pool, scope, &name).await?;
    let (changed, count) = (released.is_some(), released.as_ref().map_or(0, Vec::len));
    tracing::info!(scope, name = %name, by = %caller.0.sub, changed, released = count, "resumed");
    publish(state, released.unwrap_or_default());
    Ok(Json(Paused { scope, name, paused: false, changed, released: count }))
}

/// `POST /queues/{name}/pause` (admins): nothing new of the queue starts (its jobs are held as
/// their pushes come); submits are accepted; running jobs finish.
async fn pause_queue(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Paused>, ApiError> {
    admin(&caller, "pause or resume")?;
    known_queue(&state, &name)?;
    toggle(&state, &caller, "queue", name, true).await
}

/// `POST /queues/{name}/resume` (admins): releases what the pause held.
async fn resume_queue(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Paused>, ApiError> {
    admin(&caller, "pause or resume")?;
    known_queue(&state, &name)?;
    toggle(&state, &caller, "queue", name, false).await
}

/// `POST /functions/{name}/pause` (admins).
async fn pause_function(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Paused>, ApiError> {
    admin(&caller, "pause or resume")?;
    known_function(&state, &name)?;
    toggle(&state, &caller, "function", name, true).await
}

/// `POST /functions/{name}/resume` (admins).
async fn resume_function(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Paused>, ApiError> {
    admin(&caller, "pause or resume")?;
    known_function(&state, &name)?;
    toggle(&state, &caller, "function", name, false).await
}
