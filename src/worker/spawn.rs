//! Child jobs of a run: validated like submits ([`submit::validate`]), inserted in one statement
//! fenced by the parent's claim, and published at once when the worker has a publisher (else by
//! the relay).

use std::sync::Arc;

use uuid::Uuid;

use crate::dispatch::Outbox;
use crate::function::{ChildJob, FunctionError, Registry, Spawned, Spawner, SpawnerFuture};
use crate::job::Priority;
use crate::store::{self, StoreError};
use crate::submit::{self, Submission};
use crate::workflow::ParentResult;

/// Most children one `spawn` call may create.
pub const MAX_CHILDREN: usize = 1000;

/// The spawner of one run.
pub struct RunSpawner {
    pub pool: sqlx::PgPool,
    pub registry: Arc<Registry>,
    pub outbox: Option<Outbox>,
    pub claim_id: Uuid,
    /// The parent's owner, whose the children are (a per-owner limit keys them by it).
    pub owner: String,
}

impl RunSpawner {
    /// Checks `children` as submits are checked; the error names the child at fault.
    fn checked<'a>(
        &'a self,
        children: &'a [ChildJob],
        args: &'a [Box<serde_json::value::RawValue>],
    ) -> Result<Vec<store::JobSpec<'a>>, FunctionError> {
        let mut specs = Vec::with_capacity(children.len());
        for (i, (child, args)) in children.iter().zip(args).enumerate() {
            let submission = Submission {
                priority: child.priority.map(Priority::as_str),
                unique_key: child.unique_key.as_deref(),
                ..Submission::new(&self.owner, &child.function, args)
            };
            // No size limit: the API's is on request bodies, and children never had one.
            let spec = submit::validate(&self.registry, None, &submission)
                .map_err(|e| FunctionError::Fatal(format!("child {i}: {e}")))?;
            specs.push(spec);
        }
        Ok(specs)
    }

    async fn spawn_with_continuation(
        &self,
        parent: Uuid,
        group: String,
        children: Vec<ChildJob>,
        continuation: ChildJob,
    ) -> Result<Spawned, FunctionError> {
        if children.len() > MAX_CHILDREN {
            return Err(FunctionError::Fatal(format!("at most {MAX_CHILDREN} children per spawn")));
        }
        for name in [&group, &continuation.function] {
            if name.is_empty() || name.len() > 64 {
                return Err(FunctionError::Fatal(format!("step name {name:?} must be 1 to 64 characters")));
            }
        }
        let raw = |c: &ChildJob| serde_json::value::to_raw_value(&c.args).map_err(FunctionError::fatal);
        let args = children.iter().map(raw).collect::<Result<Vec<_>, _>>()?;
        let then_args = [raw(&continuation)?];
        let specs = self.checked(&children, &args)?;
        let then = std::slice::from_ref(&continuation);
        let then_spec = self
            .checked(then, &then_args)
            .map_err(|e| FunctionError::Fatal(e.to_string().replacen("child 0", "the continuation", 1)))?;
        let then_name = continuation.function.clone();
        let created = store::spawn_with_continuation(
            &self.pool,
            parent,
            self.claim_id,
            &group,
            &specs,
            &then_name,
            &then_spec[0],
        )
        .await;
        let (jobs, continuation) = match created {
            Ok(Some(created)) => created,
            Ok(None) => return Err(FunctionError::Cancelled),
            Err(e @ StoreError::Unavailable(_)) => return Err(FunctionError::retryable(e)),
            Err(e) => return Err(FunctionError::fatal(e)),
        };
        for s in jobs.iter().filter(|s| s.created) {
            if let Some(outbox) = &self.outbox {
                outbox.dispatch(store::Publication::of(&s.job, None));
            }
        }
        tracing::info!(parent = %parent, children = jobs.len(), %continuation, "children spawned with a continuation");
        Ok(Spawned { children: jobs.into_iter().map(|s| s.job.status.id).collect(), continuation })
    }

    async fn spawn_children(&self, parent: Uuid, children: Vec<ChildJob>) -> Result<Vec<Uuid>, FunctionError> {
        if children.is_empty() {
            return Ok(Vec::new());
        }
        if children.len() > MAX_CHILDREN {
            return Err(FunctionError::Fatal(format!("at most {MAX_CHILDREN} children per spawn")));
        }
        let args = children
            .iter()
            .map(|child| serde_json::value::to_raw_value(&child.args))
            .collect::<Result<Vec<_>, _>>()
            .map_err(FunctionError::fatal)?;
        let specs = self.checked(&children, &args)?;
        let jobs = match store::spawn_children(&self.pool, parent, self.claim_id, &specs).await {
            Ok(Some(jobs)) => jobs,
            Ok(None) => return Err(FunctionError::Cancelled),
            Err(e @ StoreError::Unavailable(_)) => return Err(FunctionError::retryable(e)),
            Err(e) => return Err(FunctionError::fatal(e)),
        };
        // A deduplicated child (its unique key's live job) was published when it was created.
        for s in jobs.iter().filter(|s| s.created) {
            if let Some(outbox) = &self.outbox {
                outbox.dispatch(store::Publication::of(&s.job, None));
            }
        }
        tracing::info!(parent = %parent, children = jobs.len(), "children spawned");
        Ok(jobs.into_iter().map(|s| s.job.status.id).collect())
    }
}

fn read_error(e: StoreError) -> FunctionError {
    match e {
        e @ StoreError::Unavailable(_) => FunctionError::retryable(e),
        e => FunctionError::fatal(e),
    }
}

impl Spawner for RunSpawner {
    fn spawn(&self, parent: Uuid, children: Vec<ChildJob>) -> SpawnerFuture<'_, Vec<Uuid>> {
        Box::pin(self.spawn_children(parent, children))
    }

    fn spawn_then(
        &self,
        parent: Uuid,
        group: String,
        children: Vec<ChildJob>,
        continuation: ChildJob,
    ) -> SpawnerFuture<'_, Spawned> {
        Box::pin(self.spawn_with_continuation(parent, group, children, continuation))
    }

    fn inputs(&self, job: Uuid) -> SpawnerFuture<'_, serde_json::Value> {
        Box::pin(async move { store::inputs(&self.pool, job).await.map_err(read_error) })
    }

    fn parents(&self, job: Uuid, after: Option<Uuid>, limit: u32) -> SpawnerFuture<'_, Vec<ParentResult>> {
        Box::pin(async move { store::parents(&self.pool, job, after, i64::from(limit)).await.map_err(read_error) })
    }
}
