//! What a firing does: submit the schedule's job (idempotently, per scheduled time) or run
//! runq's own maintenance inline (`crate::maintenance`): the sweep and the cleanup.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use super::{Action, Schedule};
use crate::dispatch::{self, Dispatcher, Outbox};
use crate::function::Registry;
use crate::job::Job;
use crate::maintenance::{self, CleanupReport, Retention, SweepReport};
use crate::storage::BlobStore;
use crate::store::{self, NewJob, StoreError};
use crate::submit::Invalid;

/// Why a firing failed.
#[derive(Debug, thiserror::Error)]
pub enum FireError {
    /// Postgres (or publishing) failed: the caller should retry the firing.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The schedule names a function this build doesn't register (a deploy mistake).
    #[error("the schedule's function `{0}` is not registered in this build")]
    UnknownFunction(String),
    /// The schedule's job doesn't pass the submit check (its declaration is checked at start, so
    /// only a firing through a [`Runner`] of another registry meets this).
    #[error("the schedule's job is invalid: {0}")]
    Invalid(Invalid),
}

/// What a firing did.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Fired {
    /// The schedule's job for that time: new, or the one an earlier firing created.
    Job {
        job: Box<Job>,
        created: bool,
        /// A unique schedule's firing while its last job is still live: that job, nothing new.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        deduplicated: bool,
    },
    /// The schedule's workflow for that time: new, or the one an earlier firing created.
    Workflow {
        workflow_id: uuid::Uuid,
        created: bool,
    },
    Sweep {
        report: SweepReport,
    },
    Cleanup {
        report: CleanupReport,
    },
}

/// Fires schedules: submits a schedule's job, or runs maintenance inline. Everything a firing
/// needs. Cheap to clone.
#[derive(Clone)]
pub struct Runner {
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

impl Runner {
    /// Fires `schedule` for scheduled time `at`.
    pub async fn fire(&self, schedule: &Schedule, at: DateTime<Utc>) -> Result<Fired, FireError> {
        match &schedule.action {
            Action::Sweep => {
                let deadline = Instant::now() + self.sweep_window;
                let mut total = SweepReport::default();
                loop {
                    let r = maintenance::sweep_once(
                        &self.pool,
                        self.dispatcher.as_ref(),
                        self.storage.as_deref(),
                        self.redispatch_after,
                    )
                    .await?;
                    total.passes += 1;
                    total.reaped += r.reaped;
                    total.promoted += r.promoted;
                    total.published += r.published;
                    total.resumed += r.resumed;
                    total.released += r.released;
                    if Instant::now() + self.sweep_every >= deadline {
                        return Ok(Fired::Sweep { report: total });
                    }
                    tokio::time::sleep(maintenance::until_next_pass(&self.pool, self.sweep_every).await).await;
                }
            }
            Action::Cleanup => {
                let report = maintenance::cleanup::run_once(
                    &self.pool,
                    self.storage.as_deref(),
                    self.retention,
                    self.key_retention,
                )
                .await?;
                tracing::info!(
                    jobs = report.jobs_deleted,
                    results = report.results_deleted,
                    keys = report.keys_deleted,
                    "cleanup"
                );
                Ok(Fired::Cleanup { report })
            }
            Action::Workflow { workflow, args } => {
                let owner = schedule.owner();
                let spec = self
                    .registry
                    .workflows()
                    .get(workflow)
                    .ok_or_else(|| FireError::UnknownFunction(format!("workflow {workflow}")))?;
                let plan = crate::submit::plan_workflow(&self.registry, &owner, spec, args)
                    .map_err(|e| FireError::Invalid(Invalid::Field { field: "workflow", message: e.to_string() }))?;
                let key = schedule.idempotency_key(at);
                let submitted =
                    store::submit_workflow(&self.pool, &owner, Some(workflow), args, &plan, None, Some(&key)).await?;
                if submitted.created {
                    tracing::info!(schedule = %schedule.name, workflow_id = %submitted.id, scheduled = %at, "schedule fired a workflow");
                    if let Some(outbox) = &self.outbox {
                        for publication in submitted.runnable {
                            outbox.dispatch(publication);
                        }
                    }
                }
                Ok(Fired::Workflow { workflow_id: submitted.id, created: submitted.created })
            }
            Action::Submit { function, args, priority } => {
                let raw = serde_json::value::to_raw_value(args).expect("a Value serializes");
                let owner = schedule.owner();
                let unique_key = schedule.unique_key();
                let spec = super::submit_spec(&self.registry, &owner, function, &raw, *priority, unique_key.as_deref())
                    .map_err(|e| match e {
                        Invalid::UnknownFunction(f) => FireError::UnknownFunction(f),
                        e => FireError::Invalid(e),
                    })?;
                let key = schedule.idempotency_key(at);
                // The hash is of the key alone: an existing job for this instant is the answer,
                // whatever args it was created with.
                let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
                let new = NewJob {
                    id: Uuid::now_v7(),
                    owner: &owner,
                    spec,
                    trace_context: None,
                    idempotency: Some((&key, hash)),
                };
                let submitted = store::submit(&self.pool, &new, self.key_retention).await?;
                if submitted.created {
                    tracing::info!(schedule = %schedule.name, job_id = %submitted.job.status.id, scheduled = %at, "schedule fired");
                    dispatch::job_created(self.outbox.as_ref(), &submitted.job, None);
                } else if submitted.deduplicated {
                    tracing::info!(
                        schedule = %schedule.name, job_id = %submitted.job.status.id, scheduled = %at,
                        "schedule fired while its last job is still live; nothing submitted"
                    );
                } else {
                    tracing::info!(schedule = %schedule.name, scheduled = %at, "schedule already fired for this time");
                }
                Ok(Fired::Job {
                    job: Box::new(submitted.job),
                    created: submitted.created,
                    deduplicated: submitted.deduplicated,
                })
            }
        }
    }
}
