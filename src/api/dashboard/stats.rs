//! `GET /dashboard/stats`: job counts by status, function and priority, and throughput.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, ApiState, Caller};
use crate::job::{Priority, Status};
use crate::store::{self, DashboardCounts};

/// The statuses a job is in before it finishes: the queue depth is counted over these.
const UNFINISHED: [Status; 3] = [Status::Queued, Status::Running, Status::Retrying];

/// What the dashboard's header shows, from one consistent snapshot of `jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Every status, zeros included: every unfinished job, and the jobs finished in the last
    /// `finished_window_secs` (so the count costs what the recent traffic costs, however much
    /// history is kept).
    pub by_status: BTreeMap<String, i64>,
    /// Function → status → count; only the statuses a function has jobs in.
    pub by_function: BTreeMap<String, BTreeMap<String, i64>>,
    /// How far back the finished counts of `by_status` and `by_function` look.
    pub finished_window_secs: u64,
    /// Priority → unfinished status → count, zeros included: the queue depth per queue.
    pub unfinished_by_priority: BTreeMap<String, BTreeMap<String, i64>>,
    pub throughput: Throughput,
}

/// How fast jobs finish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// Jobs finished (succeeded, failed or cancelled) per minute, the 15 minutes ending with the
    /// current one, oldest first; the last minute is still running.
    pub finished_per_minute: Vec<MinuteCount>,
    /// Jobs that ended in the last hour.
    pub last_hour: LastHour,
}

/// Jobs finished in one minute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinuteCount {
    /// The minute's start.
    pub minute: DateTime<Utc>,
    pub finished: i64,
}

/// Outcomes of the last hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastHour {
    pub succeeded: i64,
    pub failed: i64,
}

impl From<DashboardCounts> for Stats {
    fn from(c: DashboardCounts) -> Self {
        let mut by_status: BTreeMap<String, i64> = Status::ALL.iter().map(|s| (s.as_str().to_owned(), 0)).collect();
        let mut by_function: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for (function, status, count) in c.by_function {
            *by_status.entry(status.clone()).or_default() += count;
            *by_function.entry(function).or_default().entry(status).or_default() += count;
        }
        let mut unfinished_by_priority: BTreeMap<String, BTreeMap<String, i64>> = Priority::ALL
            .iter()
            .map(|p| (p.as_str().to_owned(), UNFINISHED.iter().map(|s| (s.as_str().to_owned(), 0)).collect()))
            .collect();
        for (priority, status, count) in c.unfinished_by_priority {
            *unfinished_by_priority.entry(priority).or_default().entry(status).or_default() += count;
        }
        let count_of = |status: Status| c.last_hour.iter().filter(|(s, _)| s == status.as_str()).map(|(_, n)| n).sum();
        Stats {
            by_status,
            by_function,
            finished_window_secs: store::FINISHED_WINDOW.as_secs(),
            unfinished_by_priority,
            throughput: Throughput {
                finished_per_minute: c
                    .finished_per_minute
                    .into_iter()
                    .map(|(minute, finished)| MinuteCount { minute, finished })
                    .collect(),
                last_hour: LastHour { succeeded: count_of(Status::Succeeded), failed: count_of(Status::Failed) },
            },
        }
    }
}

/// `GET /dashboard/stats` (admins only, like `/metrics`: it spans every owner's jobs).
pub(super) async fn stats(State(state): State<ApiState>, caller: Caller) -> Result<Json<Stats>, ApiError> {
    if !caller.0.admin {
        return Err(ApiError::Forbidden("/dashboard/stats needs an admin token".into()));
    }
    Ok(Json(store::dashboard_counts(&state.pool).await?.into()))
}
