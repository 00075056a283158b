//! What a firing does: submit the schedule's job (idempotently, per scheduled time) or run
//! runq's own maintenance inline: the sweep (reaper + relay) and the cleanup.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use super::{Action, Schedule};
use crate::config::{ConfigError, parse};
use crate::dispatch::{self, Dispatcher, Outbox, RelayReport};
use crate::function::Registry;
use crate::job::Job;
use crate::storage::BlobStore;
use crate::store::{self, NewJob, StoreError};

/// How long finished jobs are kept, per status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// `RUNQ_RETENTION_SUCCEEDED_SECS`, default 7 days.
    pub succeeded: Duration,
    /// `RUNQ_RETENTION_FAILED_SECS`, default 30 days (kept longer for investigation).
    pub failed: Duration,
    /// `RUNQ_RETENTION_CANCELLED_SECS`, default 7 days.
    pub cancelled: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        let day = 86_400;
        Self {
            succeeded: Duration::from_secs(7 * day),
            failed: Duration::from_secs(30 * day),
            cancelled: Duration::from_secs(7 * day),
        }
    }
}

impl Retention {
    /// Reads the `RUNQ_RETENTION_*_SECS` variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Self::default();
        let secs =
            |name, default: Duration| parse::<u64>(name, "seconds").map(|v| v.map_or(default, Duration::from_secs));
        Ok(Self {
            succeeded: secs("RUNQ_RETENTION_SUCCEEDED_SECS", d.succeeded)?,
            failed: secs("RUNQ_RETENTION_FAILED_SECS", d.failed)?,
            cancelled: secs("RUNQ_RETENTION_CANCELLED_SECS", d.cancelled)?,
        })
    }
}

/// What one sweep (or one sweep window) did.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct SweepReport {
    pub passes: u32,
    /// Runs whose lease expired (their worker died), requeued or failed.
    pub reaped: usize,
    /// Retries whose backoff passed, moved back to `queued`.
    pub promoted: u64,
    /// Jobs the relay published.
    pub published: usize,
}

/// What one cleanup did.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct CleanupReport {
    pub jobs_deleted: usize,
    pub results_deleted: usize,
    pub keys_deleted: u64,
}

/// One sweep pass: the reaper, then the relay (when Pub/Sub is configured).
pub async fn sweep_once(
    pool: &PgPool,
    dispatcher: Option<&Dispatcher>,
    redispatch_after: Duration,
) -> Result<SweepReport, StoreError> {
    let reaped = store::reap_expired(pool, 1000).await?;
    metrics::counter!(crate::telemetry::metrics::REAPED).increment(reaped.len() as u64);
    for (id, status) in &reaped {
        tracing::warn!(job_id = %id, %status, "lease expired (worker lost); job reaped");
    }
    let relay = match dispatcher {
        Some(d) => dispatch::relay_once(pool, d, redispatch_after).await?,
        None => RelayReport::default(),
    };
    Ok(SweepReport { passes: 1, reaped: reaped.len(), promoted: relay.promoted, published: relay.published })
}

/// Deletes finished jobs past retention (and their GCS results), then expired idempotency keys.
pub async fn cleanup_once(
    pool: &PgPool,
    storage: Option<&BlobStore>,
    retention: Retention,
    key_retention: Duration,
) -> Result<CleanupReport, StoreError> {
    const BATCH: i64 = 1000;
    let mut report = CleanupReport::default();
    loop {
        let deleted = store::delete_expired_jobs(
            pool,
            retention.succeeded,
            retention.failed,
            retention.cancelled,
            key_retention,
            BATCH,
        )
        .await?;
        report.jobs_deleted += deleted.len();
        for uri in deleted.iter().filter_map(|d| d.result_uri.as_deref()) {
            match storage {
                Some(storage) => match storage.delete(uri).await {
                    Ok(()) => report.results_deleted += 1,
                    Err(e) => tracing::warn!(%uri, error = %e, "could not delete a result object; it is orphaned"),
                },
                None => tracing::warn!(%uri, "no GCS access configured; result object left in place"),
            }
        }
        if (deleted.len() as i64) < BATCH {
            break;
        }
    }
    report.keys_deleted = store::delete_expired_keys(pool, 10_000).await?;
    Ok(report)
}

/// What a firing did.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Fired {
    /// The schedule's job for that time: new, or the one an earlier firing created.
    Job {
        job: Box<Job>,
        created: bool,
    },
    Sweep {
        report: SweepReport,
    },
    Cleanup {
        report: CleanupReport,
    },
}

/// Everything a firing needs. Cheap to clone.
#[derive(Clone)]
pub struct Maintenance {
    pub pool: PgPool,
    pub registry: Arc<Registry>,
    /// Publishes a schedule's new job at once (else the sweep's relay does).
    pub outbox: Option<Outbox>,
    /// The relay's publisher; without it the sweep only reaps.
    pub dispatcher: Option<Dispatcher>,
    /// Deletes result objects on cleanup.
    pub storage: Option<Arc<BlobStore>>,
    pub retention: Retention,
    pub key_retention: Duration,
    pub redispatch_after: Duration,
    /// `RUNQ_SWEEP_WINDOW_SECS`: how long one `runq.sweep` firing keeps sweeping (Cloud
    /// Scheduler fires once a minute; sweeping through most of it honours delays within seconds).
    pub sweep_window: Duration,
    /// `RUNQ_SWEEP_EVERY_SECS`: the pause between passes inside the window.
    pub sweep_every: Duration,
}

/// Default sweep window in a deployed API: most of Cloud Scheduler's minute.
pub const DEFAULT_SWEEP_WINDOW: Duration = Duration::from_secs(50);
/// Default pause between sweep passes.
pub const DEFAULT_SWEEP_EVERY: Duration = Duration::from_secs(5);

impl Maintenance {
    /// Fires `schedule` for scheduled time `at`.
    pub async fn fire(&self, schedule: &Schedule, at: DateTime<Utc>) -> Result<Fired, StoreError> {
        match &schedule.action {
            Action::Sweep => {
                let deadline = Instant::now() + self.sweep_window;
                let mut total = SweepReport::default();
                loop {
                    let r = sweep_once(&self.pool, self.dispatcher.as_ref(), self.redispatch_after).await?;
                    total.passes += 1;
                    total.reaped += r.reaped;
                    total.promoted += r.promoted;
                    total.published += r.published;
                    if Instant::now() + self.sweep_every >= deadline {
                        return Ok(Fired::Sweep { report: total });
                    }
                    tokio::time::sleep(self.sweep_every).await;
                }
            }
            Action::Cleanup => {
                let report =
                    cleanup_once(&self.pool, self.storage.as_deref(), self.retention, self.key_retention).await?;
                tracing::info!(
                    jobs = report.jobs_deleted,
                    results = report.results_deleted,
                    keys = report.keys_deleted,
                    "cleanup"
                );
                Ok(Fired::Cleanup { report })
            }
            Action::Submit { function, args, priority } => {
                let f = self.registry.get(function).ok_or_else(|| {
                    StoreError::Other(sqlx::Error::Protocol(format!("schedule's function `{function}` is gone")))
                })?;
                let raw = serde_json::value::to_raw_value(args).expect("a Value serializes");
                let key = schedule.idempotency_key(at);
                // The hash is of the key alone: an existing job for this instant is the answer,
                // whatever args it was created with.
                let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
                let owner = schedule.owner();
                let new = NewJob {
                    id: Uuid::now_v7(),
                    owner: &owner,
                    function: f.name(),
                    priority: *priority,
                    queue: f.policy().queue,
                    args: &raw,
                    max_attempts: f.policy().max_attempts as i32,
                    delay_secs: None,
                    parent_id: None,
                    trace_context: None,
                    idempotency: Some((&key, hash)),
                };
                let submitted = store::submit(&self.pool, &new, self.key_retention).await?;
                if submitted.created {
                    tracing::info!(schedule = %schedule.name, job_id = %submitted.job.status.id, scheduled = %at, "schedule fired");
                    dispatch::job_created(self.outbox.as_ref(), &submitted.job, None);
                } else {
                    tracing::info!(schedule = %schedule.name, scheduled = %at, "schedule already fired for this time");
                }
                Ok(Fired::Job { job: Box::new(submitted.job), created: submitted.created })
            }
        }
    }
}
