//! Runs of functions declared as Cloud Run Jobs ([`crate::function::Function::cloud_run_job`]):
//! the worker claims the job and starts an execution of `runq exec` for that claim, which
//! takes the run over (lease, progress, outcome, all fenced by the claim) in its own process;
//! and [`run_claim`], what `runq exec` does. Executions start as subprocesses ([`Launcher`],
//! locally and in tests) or as executions of a Cloud Run Job ([`CloudRunJob`], in production:
//! the job runs runq's image, each execution with its own `exec` arguments).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::WorkerState;
use crate::store::{self, StoreError};

/// Starts executions of `runq exec`: `program` (this binary by default) with the job's claim,
/// with `env` added to this process's environment. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The binary to run (`runq`, or the user's own `App` binary, which has their functions).
    pub program: PathBuf,
    /// Arguments before `exec` (none for the stock binary).
    pub args: Vec<String>,
    /// Variables the execution needs beyond this process's own (the database URL `runq dev`
    /// found, its emulator as the metadata server, the `runq.toml`).
    pub env: Vec<(String, String)>,
    /// Arguments after `exec`'s own (`runq dev`'s: `--allow-http`, its invoker account).
    pub exec_args: Vec<String>,
}

impl Launcher {
    /// Executions of this very binary, with this process's environment.
    pub fn this_binary() -> Self {
        let program = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("runq"));
        Self { program, args: Vec::new(), env: Vec::new(), exec_args: Vec::new() }
    }

    /// Starts `runq exec` for claim `claim_id` of job `job_id`, leases of `lease`; returns once
    /// the process started (it runs on, and is reaped, in the background).
    pub fn launch(&self, job_id: Uuid, claim_id: Uuid, lease: Duration) -> std::io::Result<u32> {
        let mut child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .arg("exec")
            .args(["--job-id", &job_id.to_string(), "--claim-id", &claim_id.to_string()])
            .args(["--lease-secs", &lease.as_secs().max(3).to_string()])
            .args(&self.exec_args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::null())
            .spawn()?;
        let pid = child.id().unwrap_or_default();
        tokio::spawn(async move {
            match child.wait().await {
                Ok(status) if status.success() => {}
                Ok(status) => {
                    tracing::warn!(job_id = %job_id, %status, "runq exec ended badly; the lease decides what happens to the job")
                }
                Err(e) => tracing::warn!(job_id = %job_id, error = %e, "runq exec could not be waited for"),
            }
        });
        Ok(pid)
    }
}

/// How long a Cloud Run Job execution may take to start and take the claim over: its lease is
/// extended this long before the execution is asked for (a container's cold start takes
/// seconds to a minute; the reaper must not hand the job on meanwhile).
pub const CLOUD_RUN_START_GRACE: Duration = Duration::from_secs(300);

/// Starts executions of the Cloud Run Job `name` (`projects/P/locations/R/jobs/J`), which runs
/// runq's image (the stock binary or yours): one task, its container's arguments overridden to
/// `exec` for the claim, its timeout the function's hard limit. The worker's service account
/// needs `run.jobs.runWithOverrides` on it (`roles/run.developer`, or a custom role). Cheap to
/// clone; the client is built on first use, with the instance's default credentials.
#[derive(Clone)]
pub struct CloudRunJob {
    /// The job's full name.
    pub name: String,
    client: Arc<tokio::sync::OnceCell<google_cloud_run_v2::client::Jobs>>,
}

impl std::fmt::Debug for CloudRunJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudRunJob").field("name", &self.name).finish_non_exhaustive()
    }
}

impl CloudRunJob {
    /// Executions of the job `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), client: Arc::default() }
    }

    /// The overrides of one execution: `runq exec` for the claim, one task, `timeout`.
    pub fn overrides(
        job_id: Uuid,
        claim_id: Uuid,
        lease: Duration,
        timeout: Duration,
    ) -> google_cloud_run_v2::model::run_job_request::Overrides {
        use google_cloud_run_v2::model::run_job_request::{Overrides, overrides::ContainerOverride};
        let args = [
            "exec".to_owned(),
            "--job-id".into(),
            job_id.to_string(),
            "--claim-id".into(),
            claim_id.to_string(),
            "--lease-secs".into(),
            lease.as_secs().max(3).to_string(),
        ];
        let timeout = google_cloud_wkt::Duration::clamp(timeout.as_secs() as i64, 0);
        Overrides::new()
            .set_container_overrides([ContainerOverride::new().set_args(args)])
            .set_task_count(1)
            .set_timeout(timeout)
    }

    /// Asks Cloud Run for an execution (without waiting for it to run).
    pub async fn launch(&self, job_id: Uuid, claim_id: Uuid, lease: Duration, timeout: Duration) -> Result<(), String> {
        let client = self
            .client
            .get_or_try_init(|| async { google_cloud_run_v2::client::Jobs::builder().build().await })
            .await
            .map_err(|e| format!("the Cloud Run client: {e}"))?;
        client
            .run_job()
            .set_name(&self.name)
            .set_overrides(Self::overrides(job_id, claim_id, lease, timeout))
            .send()
            .await
            .map_err(|e| format!("RunJob {}: {e}", self.name))?;
        Ok(())
    }
}

/// Where the executions of Cloud Run Job functions run.
#[derive(Debug, Clone)]
pub enum Executions {
    /// A subprocess of the worker (`runq dev`, tests, and a worker without `RUNQ_EXEC_JOB`).
    Subprocess(Launcher),
    /// Executions of a Cloud Run Job.
    CloudRun(CloudRunJob),
}

/// Starts the execution of a claimed job of a Cloud Run Job function. If it can't start, the
/// claim is given back (the attempt too) and the push is answered 5xx, so it is delivered again.
pub(crate) async fn start(
    state: &WorkerState,
    claimed: &store::Claimed,
    timeout: Duration,
) -> Result<bool, StoreError> {
    let (id, claim) = (claimed.id, claimed.claim_id);
    let started = match &state.executions {
        Executions::Subprocess(launcher) => launcher
            .launch(id, claim, state.lease)
            .map(|pid| tracing::info!(job_id = %id, attempt = claimed.attempt, pid, "execution started (runq exec)"))
            .map_err(|e| format!("{}: {e}", launcher.program.display())),
        Executions::CloudRun(job) => {
            // Fenced: a claim lost meanwhile is not launched.
            let held = store::heartbeat(&state.relaxed, &[(id, claim)], CLOUD_RUN_START_GRACE).await?;
            if held.is_empty() {
                return Ok(true);
            }
            job.launch(id, claim, state.lease, timeout).await.map(|()| {
                tracing::info!(job_id = %id, attempt = claimed.attempt, job = %job.name, "Cloud Run Job execution requested");
            })
        }
    };
    match started {
        Ok(()) => Ok(true),
        Err(e) => {
            tracing::error!(job_id = %id, error = %e, "could not start the execution; job released");
            store::release(&state.pool, id, claim).await?;
            Ok(false)
        }
    }
}

/// What `runq exec` does: takes over claim `claim_id` of job `job_id` (renewing its lease from
/// now, fenced), runs its function with this process's own lease keeper, and records the
/// outcome, exactly as a worker's run does. `Ok(false)` when the claim no longer held (nothing
/// ran). Stops (releasing the run, fenced) when `shutdown` resolves.
pub async fn run_claim(
    state: WorkerState,
    job_id: Uuid,
    claim_id: Uuid,
    shutdown_tx: tokio::sync::watch::Sender<Option<Duration>>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Result<bool, StoreError> {
    let Some(claimed) = store::take_over(&state.pool, job_id, claim_id, &state.worker_id, state.lease).await? else {
        tracing::warn!(%job_id, "the claim no longer holds (reaped, finished or cancelled); nothing to run");
        return Ok(false);
    };
    let Some(function) = state.registry.get(&claimed.function).cloned() else {
        tracing::error!(%job_id, function = %claimed.function, "this binary has no such function; job released");
        store::release(&state.pool, job_id, claim_id).await?;
        return Ok(false);
    };
    let keeper = state.leases.spawn_keeper(state.relaxed.clone(), state.lease);
    let run = super::execute(&state, claimed, Arc::clone(&function));
    tokio::pin!(run);
    let recorded = tokio::select! {
        recorded = &mut run => recorded,
        () = shutdown => {
            let _ = shutdown_tx.send(Some(grace));
            run.await
        }
    };
    keeper.abort();
    recorded.map(|r| {
        tracing::info!(%job_id, outcome = ?r, "execution finished");
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cloud_run_execution_runs_exec_for_the_claim_as_one_task() {
        let (job, claim) = (Uuid::now_v7(), Uuid::new_v4());
        let o = CloudRunJob::overrides(job, claim, Duration::from_secs(30), Duration::from_secs(7200));
        assert_eq!(o.task_count, 1);
        assert_eq!(o.timeout, Some(google_cloud_wkt::Duration::clamp(7200, 0)));
        let args = &o.container_overrides[0].args;
        let expected = ["exec", "--job-id", &job.to_string(), "--claim-id", &claim.to_string(), "--lease-secs", "30"];
        assert_eq!(args, &expected);
    }
}
