//! Runs of functions declared as Cloud Run Jobs ([`crate::function::Function::cloud_run_job`]):
//! the worker claims the job and starts an execution of `runq exec` for that claim, which
//! takes the run over (lease, progress, outcome, all fenced by the claim) in its own process;
//! and [`run_claim`], what `runq exec` does. Executions start as subprocesses ([`Launcher`]);
//! starting them as Cloud Run Job executions (`google-cloud-run-v2`) is still to come.

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

/// Starts the execution of a claimed job of a Cloud Run Job function. If it can't start, the
/// claim is given back (the attempt too) and the push is answered 5xx, so it is delivered again.
pub(crate) async fn start(state: &WorkerState, claimed: &store::Claimed) -> Result<bool, StoreError> {
    match state.launcher.launch(claimed.id, claimed.claim_id, state.lease) {
        Ok(pid) => {
            tracing::info!(job_id = %claimed.id, attempt = claimed.attempt, pid, "execution started (runq exec)");
            Ok(true)
        }
        Err(e) => {
            tracing::error!(job_id = %claimed.id, error = %e, program = %state.launcher.program.display(), "could not start runq exec; job released");
            store::release(&state.pool, claimed.id, claimed.claim_id).await?;
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
