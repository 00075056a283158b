//! The dashboard's panels for acting (admins only; they span every owner's jobs):
//! `GET /dashboard/functions` (run stats per function over a window), `GET /dashboard/signals`
//! (what is stuck, each with a `GET /jobs` link to exactly those jobs) and
//! `GET /dashboard/workers` (the worker instances seen recently and what they run).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::{ApiError, ApiState, Caller};
use crate::store::{self, Window};

/// Most error kinds listed per function.
pub const TOP_ERROR_KINDS: usize = 5;
/// Most held keys listed one by one (the `held` signal counts them all).
pub const HELD_KEYS_SHOWN: usize = 20;

/// Query parameters of the windowed panels.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WindowQuery {
    /// `15m` (default), `1h` or `24h`.
    window: Option<String>,
}

fn admin(caller: &Caller, path: &str) -> Result<(), ApiError> {
    if caller.0.admin { Ok(()) } else { Err(ApiError::Forbidden(format!("{path} needs an admin token"))) }
}

fn window(query: Result<Query<WindowQuery>, QueryRejection>) -> Result<Window, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    query
        .window
        .as_deref()
        .map_or(Ok(Window::default()), |w| w.parse::<Window>().map_err(|e| ApiError::invalid("window", e.to_string())))
}

/// The answer of `GET /dashboard/functions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionsAnswer {
    /// The window: `15m`, `1h` or `24h`.
    pub window: String,
    /// Every function with a run that ended in the window, by name.
    pub functions: Vec<FunctionStats>,
}

/// One function's runs that ended in the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionStats {
    pub function: String,
    /// Runs that ended in the window (every outcome, released and reaped ones too).
    pub runs: i64,
    /// `runs` over the window's minutes.
    pub runs_per_minute: f64,
    /// Run durations (claim to end) in milliseconds, each one of the runs' own.
    pub duration_ms: Percentiles,
    /// Failed runs (retrying, failed, or reaped: lost) over `runs`, 0 to 1.
    pub failure_rate: f64,
    /// The failed runs' error kinds, most first, at most [`TOP_ERROR_KINDS`].
    pub top_errors: Vec<KindCount>,
}

/// Percentiles of a distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// An error kind and how many runs failed with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindCount {
    pub kind: String,
    pub count: i64,
}

/// `GET /dashboard/functions?window=15m|1h|24h`.
pub(super) async fn functions(
    State(state): State<ApiState>,
    caller: Caller,
    query: Result<Query<WindowQuery>, QueryRejection>,
) -> Result<Json<FunctionsAnswer>, ApiError> {
    admin(&caller, "/dashboard/functions")?;
    let window = window(query)?;
    let rows = store::function_runs(&state.pool, window).await?;
    let functions = rows
        .into_iter()
        .map(|r| FunctionStats {
            runs_per_minute: r.runs as f64 / window.minutes(),
            failure_rate: if r.runs == 0 { 0.0 } else { r.failed as f64 / r.runs as f64 },
            duration_ms: Percentiles { p50: r.p50_ms, p95: r.p95_ms, p99: r.p99_ms },
            top_errors: r
                .error_kinds
                .into_iter()
                .take(TOP_ERROR_KINDS)
                .map(|(kind, count)| KindCount { kind, count })
                .collect(),
            function: r.function,
            runs: r.runs,
        })
        .collect();
    Ok(Json(FunctionsAnswer { window: window.as_str().to_owned(), functions }))
}

/// The answer of `GET /dashboard/signals`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalsAnswer {
    /// Queue backlogs first, then held jobs (all, then per key), publish failures, lost leases
    /// and dead letters; the fixed ones even at zero.
    pub signals: Vec<Signal>,
}

/// Something that may be stuck: how many jobs, and where to list them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// What it is: `queue_due`, `held`, `held_on_limit`, `held_on_pause`, `publish_failing`,
    /// `lease_expired`, `dead_lettered` or `undeliverable`.
    pub kind: String,
    /// What the page shows (a queue's or a key's name in it).
    pub label: String,
    /// The jobs it counts.
    pub count: i64,
    /// For `queue_due`: seconds the oldest due job has waited since it became due; for held
    /// keys: seconds since the oldest held job was submitted.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub oldest_age_secs: Option<f64>,
    /// `GET` this (a path and query string under the API) to list exactly these jobs.
    pub link: String,
}

/// Percent-encodes a query-string component (everything but RFC 3986's unreserved characters).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/jobs?` and the pairs, encoded.
fn jobs_link(pairs: &[(&str, &str)]) -> String {
    let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
    format!("/jobs?{}", query.join("&"))
}

/// `GET /dashboard/signals`.
pub(super) async fn signals(State(state): State<ApiState>, caller: Caller) -> Result<Json<SignalsAnswer>, ApiError> {
    admin(&caller, "/dashboard/signals")?;
    let c = store::signal_counts(&state.pool).await?;
    let now = Utc::now();
    let mut signals = Vec::new();
    for q in c.queues {
        signals.push(Signal {
            kind: "queue_due".into(),
            label: format!("due in queue {}", q.queue),
            count: q.due,
            oldest_age_secs: Some(q.age_secs),
            link: jobs_link(&[("status", "queued"), ("queue", &q.queue), ("due", "true")]),
        });
    }
    let held_total: i64 = c.held.iter().map(|(_, n, _)| n).sum();
    signals.push(Signal {
        kind: "held".into(),
        label: "held by limits and pauses".into(),
        count: held_total,
        oldest_age_secs: c.held.iter().map(|(_, _, at)| age(now, *at)).reduce(f64::max),
        link: jobs_link(&[("held", "true")]),
    });
    for (key, n, oldest) in c.held.iter().take(HELD_KEYS_SHOWN) {
        let (kind, label) = match key.strip_prefix("pause:") {
            Some(pause) => ("held_on_pause", format!("held by pause {pause}")),
            None => ("held_on_limit", format!("held by limit {key}")),
        };
        signals.push(Signal {
            kind: kind.into(),
            label,
            count: *n,
            oldest_age_secs: Some(age(now, *oldest)),
            link: jobs_link(&[("held_on", key)]),
        });
    }
    let fixed = [
        (
            "publish_failing",
            "queued after Pub/Sub refused their message",
            c.publish_failing,
            vec![("publish_failing", "true")],
        ),
        ("lease_expired", "running with a lost lease (worker gone)", c.lease_expired, vec![("lease_expired", "true")]),
        ("dead_lettered", "dead-lettered at least once", c.dead_lettered, vec![("dead_lettered", "true")]),
        (
            "undeliverable",
            "failed: dead-lettered too often",
            c.dead_lettered_failed,
            vec![("dead_lettered", "true"), ("status", "failed")],
        ),
    ];
    for (kind, label, count, pairs) in fixed {
        signals.push(Signal {
            kind: kind.into(),
            label: label.into(),
            count,
            oldest_age_secs: None,
            link: jobs_link(&pairs),
        });
    }
    Ok(Json(SignalsAnswer { signals }))
}

fn age(now: DateTime<Utc>, at: DateTime<Utc>) -> f64 {
    ((now - at).num_milliseconds() as f64 / 1000.0).max(0.0)
}

/// The answer of `GET /dashboard/workers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkersAnswer {
    /// The window: `15m`, `1h` or `24h`.
    pub window: String,
    /// Latest seen first.
    pub workers: Vec<Worker>,
}

/// A worker instance (its `worker_id`) seen in the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Worker {
    pub worker_id: String,
    /// The latest start or end of one of its runs in the window. A worker whose running jobs'
    /// leases are live (`lease_until` ahead) is heartbeating now.
    pub last_seen: DateTime<Utc>,
    /// Runs it finished in the window.
    pub finished: i64,
    /// What it runs now, oldest first.
    pub running: Vec<Running>,
}

/// A job a worker runs now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Running {
    pub id: Uuid,
    pub function: String,
    pub started_at: DateTime<Utc>,
    pub lease_until: Option<DateTime<Utc>>,
    /// Its lease ran out: the worker stopped heartbeating it (the reaper will act).
    pub lease_expired: bool,
}

/// `GET /dashboard/workers?window=15m|1h|24h`.
pub(super) async fn workers(
    State(state): State<ApiState>,
    caller: Caller,
    query: Result<Query<WindowQuery>, QueryRejection>,
) -> Result<Json<WorkersAnswer>, ApiError> {
    admin(&caller, "/dashboard/workers")?;
    let window = window(query)?;
    let workers = store::workers_seen(&state.pool, window)
        .await?
        .into_iter()
        .map(|w| Worker {
            worker_id: w.worker_id,
            last_seen: w.last_seen,
            finished: w.finished,
            running: w
                .running
                .into_iter()
                .map(|r| Running {
                    id: r.id,
                    function: r.function,
                    started_at: r.started_at,
                    lease_until: r.lease_until,
                    lease_expired: r.lease_expired,
                })
                .collect(),
        })
        .collect();
    Ok(Json(WorkersAnswer { window: window.as_str().to_owned(), workers }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_encode_their_values() {
        assert_eq!(jobs_link(&[("held_on", "pause:queue:a b&c=d")]), "/jobs?held_on=pause%3Aqueue%3Aa%20b%26c%3Dd");
        assert_eq!(jobs_link(&[("status", "queued"), ("queue", "high")]), "/jobs?status=queued&queue=high");
        assert_eq!(encode("é"), "%C3%A9");
    }
}
