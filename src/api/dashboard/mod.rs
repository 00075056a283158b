//! The dashboard (what Flower is to Celery), served by `runq api`: one self-contained page at
//! `/dashboard`, the admin-only counts at `/dashboard/stats`, the admin-only panels for acting
//! (`/dashboard/functions`, `/dashboard/signals`, `/dashboard/workers`), and each job's run
//! history at `/jobs/{id}/runs`. Reads only; the page acts through the public API: `/jobs`
//! (filters, cancel, retry, delete) and `/operations` (a bulk action on the listed filter: its
//! dry run's count, start and progress, the recent ones).

mod insights;
mod page;
mod stats;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::jobs::parse_id;
use super::{ApiError, ApiState, Caller};
use crate::store::{self, Run};

pub use insights::{
    FunctionStats, FunctionsAnswer, KindCount, Percentiles, Running, Signal, SignalsAnswer, Worker, WorkersAnswer,
};
pub use stats::{LastHour, MinuteCount, Stats, Throughput};

/// The dashboard's routes, merged into the API's router.
pub(crate) fn router() -> Router<ApiState> {
    Router::new()
        .route("/dashboard", get(page::page))
        .route("/dashboard/stats", get(stats::stats))
        .route("/dashboard/functions", get(insights::functions))
        .route("/dashboard/signals", get(insights::signals))
        .route("/dashboard/workers", get(insights::workers))
        .route("/jobs/{id}/runs", get(runs))
}

/// The answer of `GET /jobs/{id}/runs`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunList {
    /// Oldest first: the gaps between a `retrying` run's end, its `retry_at` and the next run's
    /// start are the backoff and the dispatch delay.
    pub runs: Vec<Run>,
}

/// `GET /jobs/{id}/runs`: the job's runs from `job_runs`, oldest first.
async fn runs(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RunList>, ApiError> {
    let id = parse_id(&id)?;
    let runs = store::run_history(&state.pool, id, caller.owner_filter())
        .await?
        .ok_or_else(|| ApiError::JobNotFound(id.to_string()))?;
    Ok(Json(RunList { runs }))
}
