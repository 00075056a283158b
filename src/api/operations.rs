//! `/operations`: bulk retry, cancel and delete by filter (or a dry run's count), their progress
//! and their list. The work itself is `maintenance::operations`'.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::narrowing::{Asked, Flag, given};
use super::{ApiError, ApiState, Caller};
use crate::job::{ErrorKind, Status};
use crate::maintenance::operations::{self, Action, Filter, NewOperation, Operation};
use crate::store::StoreError;

pub(super) fn router() -> Router<ApiState> {
    Router::new().route("/operations", post(create).get(list)).route("/operations/{id}", get(show))
}

/// The body of `POST /operations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationRequest {
    /// `retry`, `cancel` or `delete`.
    pub action: String,
    #[serde(default)]
    pub filter: FilterRequest,
    /// Only count the matching jobs; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Which jobs: every field narrows; absent fields don't.
#[derive(Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_before: Option<String>,
    /// Admins only (others may name only themselves): this owner's jobs. Admins without it act
    /// on every owner's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The dashboard's filters, as in `GET /jobs`: one job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Jobs of this queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Due now (`true`) or not yet (`false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<bool>,
    /// A substring of the error message (case-insensitive; not indexed, so time-limited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `field=value`: a top-level args field equal to a string or number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arg: Option<String>,
    /// Queued and held by a limit or a pause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<bool>,
    /// Queued and held on this limit key or pause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_on: Option<String>,
    /// Still queued after Pub/Sub refused its message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_failing: Option<bool>,
    /// Its message was dead-lettered at least once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_lettered: Option<bool>,
    /// Running with an expired lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expired: Option<bool>,
}

impl FilterRequest {
    fn is_empty(&self) -> bool {
        self.function.is_none()
            && self.status.is_none()
            && self.error_kind.is_none()
            && self.created_after.is_none()
            && self.created_before.is_none()
            && self.owner.is_none()
            && self.narrowing().is_empty()
    }

    /// The dashboard's filters in it, each named as `filter.<name>`.
    fn narrowing(&self) -> Asked<'_> {
        let text = given;
        let flag = |name: &'static str, v: Option<bool>| v.map(|v| (name, Flag::Bool(v)));
        Asked {
            id: text("filter.id", &self.id),
            queue: text("filter.queue", &self.queue),
            due: flag("filter.due", self.due),
            error: text("filter.error", &self.error),
            arg: text("filter.arg", &self.arg),
            held: flag("filter.held", self.held),
            held_on: text("filter.held_on", &self.held_on),
            publish_failing: flag("filter.publish_failing", self.publish_failing),
            dead_lettered: flag("filter.dead_lettered", self.dead_lettered),
            lease_expired: flag("filter.lease_expired", self.lease_expired),
        }
    }
}

fn time(field: &'static str, value: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map_err(|e| ApiError::invalid(field, format!("{v:?} is not an RFC 3339 time: {e}")))
                .and_then(|t| {
                    // Postgres' timestamptz stops well before chrono's range.
                    let t = t.with_timezone(&Utc);
                    (1..=9999)
                        .contains(&chrono::Datelike::year(&t))
                        .then_some(t)
                        .ok_or_else(|| ApiError::invalid(field, format!("{v:?} is outside the years 1 to 9999")))
                })
        })
        .transpose()
}

/// Checks the request into the filter the store applies.
fn check(caller: &Caller, action: Action, req: &FilterRequest) -> Result<Filter, ApiError> {
    if let Some(function) = &req.function {
        super::storable::text("filter.function", function)?;
    }
    let allowed = action.statuses();
    let statuses = match &req.status {
        None => allowed.to_vec(),
        Some(s) => {
            let status = s.parse::<Status>().map_err(|e| ApiError::invalid("filter.status", e.to_string()))?;
            if !allowed.contains(&status) {
                let names: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
                return Err(ApiError::invalid(
                    "filter.status",
                    format!("{} applies to {} jobs, not {status}", action.as_str(), names.join(", ")),
                ));
            }
            vec![status]
        }
    };
    let error_kind = req
        .error_kind
        .as_deref()
        .map(|k| k.parse::<ErrorKind>().map_err(|e| ApiError::invalid("filter.error_kind", e.to_string())))
        .transpose()?;
    let created_after = time("filter.created_after", req.created_after.as_deref())?;
    let created_before = time("filter.created_before", req.created_before.as_deref())?;
    if let (Some(a), Some(b)) = (created_after, created_before)
        && a >= b
    {
        return Err(ApiError::invalid("filter.created_after", "must be before created_before"));
    }
    let owner = match (&req.owner, caller.0.admin) {
        (Some(owner), true) => {
            super::storable::text("filter.owner", owner)?;
            Some(owner.clone())
        }
        (Some(owner), false) if owner != &caller.0.sub => {
            return Err(ApiError::Forbidden("only admins may act on another owner's jobs".into()));
        }
        (_, false) => Some(caller.0.sub.clone()),
        (None, true) => None,
    };
    if action == Action::Delete && req.is_empty() {
        return Err(ApiError::invalid("filter", "a bulk delete needs a filter: name at least one field"));
    }
    let narrow = super::narrowing::check(&req.narrowing())?;
    Ok(Filter { owner, function: req.function.clone(), statuses, error_kind, created_after, created_before, narrow })
}

/// `POST /operations`: a dry run answers `200 {"count": N}`; a real one records the operation,
/// starts it in the background and answers `202` with it (`Location: /operations/{id}`).
async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    super::jobs::require_json(&headers)?;
    let body = body.map_err(super::jobs::body_error)?;
    let req: OperationRequest = super::jobs::parse_json(&body)?;
    let action = Action::parse(&req.action).ok_or_else(|| {
        ApiError::invalid("action", format!("unknown action {:?}: retry, cancel or delete", req.action))
    })?;
    let filter = check(&caller, action, &req.filter)?;
    if req.dry_run {
        let timeout = state.limits.search_timeout;
        let count = match operations::count(&state.pool, &filter, timeout).await {
            Err(StoreError::Timeout) => return Err(super::narrowing::timed_out(&req.filter.narrowing(), timeout)),
            other => other?,
        };
        return Ok((StatusCode::OK, Json(serde_json::json!({ "count": count }))).into_response());
    }
    let shown = serde_json::to_value(&req.filter).map_err(|_| ApiError::Internal)?;
    let new = NewOperation {
        requester: &caller.0.sub,
        action,
        filter: &filter,
        shown,
        key_retention: state.limits.idempotency_retention,
    };
    let (op, runner) = operations::create(&state.pool, &new).await?;
    tracing::info!(operation_id = %op.id, action = action.as_str(), "bulk operation started");
    operations::spawn(state.pool.clone(), state.storage.clone(), op.id, runner);
    let location = HeaderValue::from_str(&format!("/operations/{}", op.id)).map_err(|_| ApiError::Internal)?;
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(op)).into_response())
}

/// `GET /operations/{id}`: its progress. Owners see their own, admins all.
async fn show(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Operation>, ApiError> {
    let parsed = Uuid::parse_str(&id).map_err(|_| ApiError::invalid("id", format!("{id:?} is not an operation id")))?;
    operations::get(&state.pool, parsed, caller.owner_filter())
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::OperationNotFound(parsed.to_string()))
}

/// Query parameters of `GET /operations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

/// A page of `GET /operations`, newest first.
#[derive(Debug, Serialize)]
pub struct OperationList {
    pub operations: Vec<Operation>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /operations`: the caller's operations (an admin's: everyone's), newest first, paged with
/// a cursor like `GET /jobs`.
async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<OperationList>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let limit = query.limit.unwrap_or(super::jobs::DEFAULT_PAGE);
    if !(1..=super::jobs::MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid("limit", format!("must be between 1 and {}", super::jobs::MAX_PAGE)));
    }
    let before = query.cursor.as_deref().map(super::jobs::decode_cursor).transpose()?;
    // One extra row tells whether another page exists.
    let mut ops = operations::list(&state.pool, caller.owner_filter(), before, i64::from(limit) + 1).await?;
    let next_cursor = if ops.len() > limit as usize {
        ops.truncate(limit as usize);
        ops.last().map(|o| super::jobs::encode_cursor(o.id))
    } else {
        None
    };
    Ok(Json(OperationList { operations: ops, next_cursor }))
}
