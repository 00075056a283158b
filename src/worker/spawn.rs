//! Child jobs of a run: validated like submits ([`submit::validate`]), inserted in one statement
//! fenced by the parent's claim, and published at once when the worker has a publisher (else by
//! the relay).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use uuid::Uuid;

use crate::dispatch::Outbox;
use crate::function::{ChildJob, FunctionError, Registry, Spawner};
use crate::job::Priority;
use crate::store::{self, StoreError};
use crate::submit::{self, Submission};

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
        let mut specs = Vec::with_capacity(children.len());
        for (i, (child, args)) in children.iter().zip(&args).enumerate() {
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

impl Spawner for RunSpawner {
    fn spawn(
        &self,
        parent: Uuid,
        children: Vec<ChildJob>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Uuid>, FunctionError>> + Send + '_>> {
        Box::pin(self.spawn_children(parent, children))
    }
}
