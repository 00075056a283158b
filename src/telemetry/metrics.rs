//! Prometheus metrics: one recorder per process, rendered at `/metrics`. The names are the
//! contract with dashboards; each is recorded where the event happens.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Jobs created by `POST /jobs` and schedules, by function and priority.
pub const JOBS_SUBMITTED: &str = "runq_jobs_submitted_total";
/// Runs ended, by function, queue and outcome (succeeded, retrying, failed, cancelled, released, fenced).
pub const RUNS: &str = "runq_job_runs_total";
/// Run time in seconds, by function and queue.
pub const RUN_SECONDS: &str = "runq_job_run_seconds";
/// Deliveries acknowledged without a run (duplicate, running elsewhere, finished, cancelled), by queue.
pub const CLAIM_CONFLICTS: &str = "runq_claim_conflicts_total";
/// Deliveries held back (queued again, acknowledged) by a limit or a pause, by queue and reason.
pub const HELD: &str = "runq_jobs_held_total";
/// Messages published, and publishes that failed (the relay retries them), by priority.
pub const PUBLISHED: &str = "runq_published_total";
pub const PUBLISH_ERRORS: &str = "runq_publish_errors_total";
/// Jobs reaped after their worker stopped renewing the lease.
pub const REAPED: &str = "runq_jobs_reaped_total";
/// HTTP requests served, by method, route and status; and their latency.
pub const HTTP_REQUESTS: &str = "runq_http_requests_total";
pub const HTTP_SECONDS: &str = "runq_http_request_seconds";
/// Jobs by priority and status, read from Postgres when `/metrics` is scraped.
pub const QUEUE_DEPTH: &str = "runq_jobs";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use (later calls, e.g. several servers in one
/// test process, share it).
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(RUN_SECONDS.into()),
                &[0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0],
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(HTTP_SECONDS.into()),
                    &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0],
                )
            })
            .expect("valid buckets");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed by an embedding app; then ours stays local.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}
