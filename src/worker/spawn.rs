//! Child jobs of a run: validated like submits, inserted in one statement fenced by the
//! parent's claim, and published at once when the worker has a publisher (else by the relay).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use uuid::Uuid;

use crate::dispatch::Outbox;
use crate::function::{ChildJob, FunctionError, Registry, Spawner};
use crate::store::{self, NewJob, StoreError};

/// Most children one `spawn` call may create.
pub const MAX_CHILDREN: usize = 1000;

/// The spawner of one run.
pub struct RunSpawner {
    pub pool: sqlx::PgPool,
    pub registry: Arc<Registry>,
    pub outbox: Option<Outbox>,
    pub claim_id: Uuid,
}

impl RunSpawner {
    async fn spawn_children(&self, parent: Uuid, children: Vec<ChildJob>) -> Result<Vec<Uuid>, FunctionError> {
        if children.is_empty() {
            return Ok(Vec::new());
        }
        if children.len() > MAX_CHILDREN {
            return Err(FunctionError::Fatal(format!("at most {MAX_CHILDREN} children per spawn")));
        }
        let mut prepared = Vec::with_capacity(children.len());
        for (i, child) in children.iter().enumerate() {
            let f = self
                .registry
                .get(&child.function)
                .ok_or_else(|| FunctionError::Fatal(format!("child {i}: unknown function `{}`", child.function)))?;
            let args = serde_json::value::to_raw_value(&child.args).map_err(FunctionError::fatal)?;
            f.validate(&args).map_err(|e| FunctionError::Fatal(format!("child {i}: invalid args: {e}")))?;
            let policy = f.policy();
            prepared.push((
                f.name(),
                child.priority.unwrap_or(policy.priority),
                policy.queue,
                policy.max_attempts,
                args,
            ));
        }
        let new: Vec<NewJob<'_>> = prepared
            .iter()
            .map(|(function, priority, queue, max_attempts, args)| NewJob {
                id: Uuid::now_v7(),
                owner: "",
                function,
                priority: *priority,
                queue: *queue,
                args,
                max_attempts: *max_attempts as i32,
                delay_secs: None,
                parent_id: Some(parent),
                trace_context: None,
                idempotency: None,
            })
            .collect();
        let jobs = match store::spawn_children(&self.pool, parent, self.claim_id, &new).await {
            Ok(Some(jobs)) => jobs,
            Ok(None) => return Err(FunctionError::Cancelled),
            Err(e @ StoreError::Unavailable(_)) => return Err(FunctionError::retryable(e)),
            Err(e) => return Err(FunctionError::fatal(e)),
        };
        for job in &jobs {
            if let Some(outbox) = &self.outbox {
                outbox.dispatch(store::Publication::of(job, None));
            }
        }
        tracing::info!(parent = %parent, children = jobs.len(), "children spawned");
        Ok(jobs.into_iter().map(|j| j.status.id).collect())
    }
}

impl Spawner for RunSpawner {
    fn spawn(
        &self,
        parent: Uuid,
        children: Vec<ChildJob>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Uuid>, FunctionError>> + Send + '_>> {
        Box::pin(self.spawn_children(parent, children))
    }
}
