//! The [`Context`] a run gets, and the [`RunControl`] the worker keeps to watch and steer it.

use std::sync::Arc;

use std::sync::Mutex;

use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

/// The latest progress a run reported. The worker writes only the newest value, so reports
/// made faster than it writes are coalesced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Progress {
    /// Fraction done, clamped to 0..=1.
    pub fraction: f32,
    /// What the run is doing now.
    pub message: Option<String>,
}

/// A child job a run asks for (a fan-out: one job per video of a playlist).
#[derive(Debug, Clone, PartialEq)]
pub struct ChildJob {
    pub function: String,
    pub args: serde_json::Value,
    /// The function's default queue when `None`.
    pub priority: Option<crate::job::Priority>,
    /// At most one live job of the parent's owner with this key, as a submit's `unique_key`: a
    /// child whose key has a live job is not created and `spawn` answers with that job's id.
    pub unique_key: Option<String>,
}

impl ChildJob {
    /// A child running `function` with `args` on the function's default queue.
    pub fn new(function: impl Into<String>, args: serde_json::Value) -> Self {
        Self { function: function.into(), args, priority: None, unique_key: None }
    }

    /// This child with a unique key (see [`ChildJob::unique_key`]).
    pub fn unique(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }
}

/// A boxed future of a [`Spawner`] call.
pub type SpawnerFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = Result<T, super::FunctionError>> + Send + 'a>>;

/// What [`Context::spawn_then`] created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spawned {
    /// The children, in the order given (a deduplicated child: its unique key's live job).
    pub children: Vec<Uuid>,
    /// The job that runs once every created child has finished.
    pub continuation: Uuid,
}

/// Creates a run's child jobs and reads its workflow inputs; the worker's implementation fences
/// the writes by the run's claim.
pub trait Spawner: Send + Sync {
    /// Inserts `children` of job `parent`, returning their ids.
    fn spawn(&self, parent: Uuid, children: Vec<ChildJob>) -> SpawnerFuture<'_, Vec<Uuid>>;

    /// Inserts `children` of job `parent` as steps `group`, and `continuation`, which runs once
    /// after all of them have finished.
    fn spawn_then(
        &self,
        _parent: Uuid,
        _group: String,
        _children: Vec<ChildJob>,
        _continuation: ChildJob,
    ) -> SpawnerFuture<'_, Spawned> {
        Box::pin(async { Err(super::FunctionError::Fatal("continuations need a run in a worker".into())) })
    }

    /// The workflow inputs of job `job`: `{}` outside a workflow.
    fn inputs(&self, _job: Uuid) -> SpawnerFuture<'_, serde_json::Value> {
        Box::pin(async { Ok(serde_json::Value::Object(Default::default())) })
    }

    /// The parents of job `job` after `after`, at most `limit`.
    fn parents(
        &self,
        _job: Uuid,
        _after: Option<Uuid>,
        _limit: u32,
    ) -> SpawnerFuture<'_, Vec<crate::workflow::ParentResult>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

struct Shared {
    /// GCS, when the worker has it configured.
    storage: Option<Arc<crate::storage::BlobStore>>,
    /// Creates child jobs; absent outside a worker.
    spawner: Option<Arc<dyn Spawner>>,
    job_id: Uuid,
    attempt: u32,
    max_attempts: u32,
    progress: watch::Sender<Progress>,
    cancelled: watch::Receiver<bool>,
    /// The moment the run's lease may lapse (its last renewal plus the lease, less a margin).
    /// `is_cancelled` turns true past it by the clock alone, so a process that was frozen (a
    /// SIGSTOP, a throttled CPU) and wakes up after another run took the job over sees it
    /// before its next side effect, without waiting for the worker's own timers to fire.
    stop_at: Arc<Mutex<Option<Instant>>>,
}

/// What a function's run can see and do: its job, progress reports and cancellation.
#[derive(Clone)]
pub struct Context {
    shared: Arc<Shared>,
}

/// The worker's side of a run: reads its progress, and cancels it.
pub struct RunControl {
    /// Progress reports; `changed()` wakes the writer.
    pub progress: watch::Receiver<Progress>,
    cancel: watch::Sender<bool>,
    stop_at: Arc<Mutex<Option<Instant>>>,
}

impl RunControl {
    /// Asks the run to stop: [`Context::is_cancelled`] turns true.
    pub fn cancel(&self) {
        self.cancel.send_replace(true);
    }

    /// Tells the run that it must stop by `at` even if nothing else says so (its lease can
    /// lapse then): [`Context::is_cancelled`] turns true past it.
    pub fn stop_by(&self, at: Instant) {
        *self.stop_at.lock().expect("stop_at lock") = Some(at);
    }
}

impl Context {
    /// A context for run `attempt` (1-based) of `job_id`, and the control the worker keeps.
    pub fn new(job_id: Uuid, attempt: u32, max_attempts: u32) -> (Self, RunControl) {
        Self::with_storage(job_id, attempt, max_attempts, None)
    }

    /// Like [`Context::new`], with access to GCS through `storage`.
    pub fn with_storage(
        job_id: Uuid,
        attempt: u32,
        max_attempts: u32,
        storage: Option<Arc<crate::storage::BlobStore>>,
    ) -> (Self, RunControl) {
        Self::for_run(job_id, attempt, max_attempts, storage, None)
    }

    /// The context a worker gives a run: GCS access and a spawner of child jobs.
    pub fn for_run(
        job_id: Uuid,
        attempt: u32,
        max_attempts: u32,
        storage: Option<Arc<crate::storage::BlobStore>>,
        spawner: Option<Arc<dyn Spawner>>,
    ) -> (Self, RunControl) {
        let (progress_tx, progress_rx) = watch::channel(Progress::default());
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let stop_at = Arc::new(Mutex::new(None));
        let shared = Shared {
            storage,
            spawner,
            job_id,
            attempt,
            max_attempts,
            progress: progress_tx,
            cancelled: cancel_rx,
            stop_at: stop_at.clone(),
        };
        let control = RunControl { progress: progress_rx, cancel: cancel_tx, stop_at };
        (Self { shared: Arc::new(shared) }, control)
    }

    /// The job's id.
    pub fn job_id(&self) -> Uuid {
        self.shared.job_id
    }

    /// GCS access (reading inputs by `gs://` URI, writing outputs), when the worker has it.
    pub fn storage(&self) -> Option<&Arc<crate::storage::BlobStore>> {
        self.shared.storage.as_ref()
    }

    /// Submits child jobs of this job (a fan-out), in one statement. They belong to this job's
    /// owner, carry it as `parent_id` (`GET /jobs?parent=ID` lists them) and are created only
    /// while this run still holds its claim: a stale run gets [`super::FunctionError::Cancelled`].
    /// An unknown function or invalid args is a fatal error of this run. A child with a
    /// [`ChildJob::unique_key`] whose key has a live job is not created: its id is that job's.
    pub async fn spawn(&self, children: Vec<ChildJob>) -> Result<Vec<Uuid>, super::FunctionError> {
        let spawner =
            self.shared.spawner.as_ref().ok_or_else(|| {
                super::FunctionError::Fatal("child jobs can only be spawned by a run in a worker".into())
            })?;
        spawner.spawn(self.shared.job_id, children).await
    }

    /// Fans out with a continuation (Celery's chord): `children` as [`Context::spawn`] creates
    /// them, as steps named `group`, and `continuation`, which runs once after every child has
    /// finished, whatever their outcomes (a failed child doesn't stop the others). The
    /// continuation reads them through [`Context::inputs`] under `group`: their results inline up
    /// to 100, beyond that a summary (`{"total", "succeeded", "failed", "cancelled", "paged":
    /// true}`) and [`Context::parents`] page by page. This job becomes a step of a workflow (its
    /// own, with its id, unless it is a step already: then the steps after it wait for the
    /// continuation, and read its result under this step's name), so `GET /workflows/{id}`
    /// shows the children's progress.
    pub async fn spawn_then(
        &self,
        group: impl Into<String>,
        children: Vec<ChildJob>,
        continuation: ChildJob,
    ) -> Result<Spawned, super::FunctionError> {
        let spawner = self.spawner()?;
        spawner.spawn_then(self.shared.job_id, group.into(), children, continuation).await
    }

    /// This step's inputs: its parents' results by step name (`{"transcribe": {"status",
    /// "result", "result_uri", "error", "job_id"}}`; a fan-out's members as an array of those with
    /// `index` and `item`; a large fan-in as a summary), and a rework's decision under `rework`.
    /// `{}` for a job outside a workflow.
    pub async fn inputs(&self) -> Result<serde_json::Value, super::FunctionError> {
        self.spawner()?.inputs(self.shared.job_id).await
    }

    /// The result of parent step `name` ([`Context::inputs`]`[name]["result"]`), if it has one.
    pub async fn input(&self, name: &str) -> Result<Option<serde_json::Value>, super::FunctionError> {
        let inputs = self.inputs().await?;
        Ok(inputs.get(name).and_then(|p| p.get("result")).filter(|r| !r.is_null()).cloned())
    }

    /// A page of this step's parents with their results, by job id after `after` (`None`: from
    /// the first), at most `limit` (up to 500): how a large fan-in reads its parents.
    pub async fn parents(
        &self,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<crate::workflow::ParentResult>, super::FunctionError> {
        self.spawner()?.parents(self.shared.job_id, after, limit).await
    }

    fn spawner(&self) -> Result<&Arc<dyn Spawner>, super::FunctionError> {
        self.shared
            .spawner
            .as_ref()
            .ok_or_else(|| super::FunctionError::Fatal("workflows and child jobs need a run in a worker".into()))
    }

    /// Which run this is: 1 for the first.
    pub fn attempt(&self) -> u32 {
        self.shared.attempt
    }

    /// How many runs the job may have in all.
    pub fn max_attempts(&self) -> u32 {
        self.shared.max_attempts
    }

    /// Reports progress. Cheap: it only replaces the latest value, which the worker writes to
    /// Postgres a few times a second at most.
    pub fn progress(&self, fraction: f32, message: impl Into<String>) {
        let fraction = if fraction.is_finite() { fraction.clamp(0.0, 1.0) } else { 0.0 };
        self.shared.progress.send_replace(Progress { fraction, message: Some(message.into()) });
    }

    /// True once the run should stop: the job was cancelled, its soft time limit passed, or
    /// its lease may have lapsed (another run may own the job now). Check it before each side
    /// effect a second run of the job must not overlap.
    pub fn is_cancelled(&self) -> bool {
        *self.shared.cancelled.borrow()
            || self.shared.stop_at.lock().expect("stop_at lock").is_some_and(|at| Instant::now() >= at)
    }

    /// Resolves when the run should stop (cancel, soft time limit, a lease that can't be
    /// renewed, shutdown); never if it shouldn't.
    pub async fn cancelled(&self) {
        let mut rx = self.shared.cancelled.clone();
        if rx.wait_for(|c| *c).await.is_err() {
            // The worker dropped its control without cancelling: nothing will cancel us.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn progress_is_coalesced_and_clamped() {
        let (ctx, mut control) = Context::new(Uuid::now_v7(), 1, 3);
        ctx.progress(0.2, "a");
        ctx.progress(7.0, "b");
        control.progress.changed().await.unwrap();
        let p = control.progress.borrow_and_update().clone();
        assert_eq!(p.fraction, 1.0);
        assert_eq!(p.message.as_deref(), Some("b"));
        ctx.progress(f32::NAN, "c");
        assert_eq!(control.progress.borrow().fraction, 0.0);
    }

    #[tokio::test]
    async fn cancel_wakes_the_run() {
        let (ctx, control) = Context::new(Uuid::now_v7(), 1, 3);
        assert!(!ctx.is_cancelled());
        let waiter = tokio::spawn({
            let ctx = ctx.clone();
            async move { ctx.cancelled().await }
        });
        control.cancel();
        waiter.await.unwrap();
        assert!(ctx.is_cancelled());
    }
}
