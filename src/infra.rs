//! Infrastructure generated from code: `runq infra export` writes the queues and schedules as
//! the JSON that `infra/` (Terraform) reads, so production can't drift from the declarations.

use serde::{Deserialize, Serialize};

use crate::dispatch::DEFAULT_TOPIC_PREFIX;
use crate::job::Priority;
use crate::schedule::Schedules;

/// A queue's Pub/Sub subscription and worker service settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSpec {
    pub name: String,
    pub topic: String,
    pub subscription: String,
    pub service: String,
    /// Also the push request's timeout: the worker's request timeout must be at least this.
    pub ack_deadline_seconds: u32,
    pub min_backoff_seconds: u32,
    pub max_backoff_seconds: u32,
    /// Pub/Sub's attempts before dead-lettering; runq's own attempt cap does the real limiting.
    pub max_delivery_attempts: u32,
    /// Concurrent pushes per worker instance.
    pub concurrency: u32,
    pub max_instances: u32,
    pub timeout_seconds: u32,
    pub cpu: String,
    pub memory: String,
    /// Instance-based billing (`cpu_idle = false`): needed by a queue of detached functions,
    /// which run after their push request was answered.
    pub cpu_always_allocated: bool,
}

impl QueueSpec {
    /// A queue's names and Pub/Sub settings, with its worker service's sizes.
    fn sized(name: &str, concurrency: u32, max_instances: u32, cpu: &str, memory: &str) -> Self {
        let prefix = DEFAULT_TOPIC_PREFIX;
        Self {
            name: name.into(),
            topic: format!("{prefix}-jobs-{name}"),
            subscription: format!("{prefix}-worker-{name}"),
            service: format!("{prefix}-worker-{name}"),
            ack_deadline_seconds: 600,
            min_backoff_seconds: 10,
            max_backoff_seconds: 600,
            max_delivery_attempts: 100,
            concurrency,
            max_instances,
            timeout_seconds: 600,
            cpu: cpu.into(),
            memory: memory.into(),
            cpu_always_allocated: false,
        }
    }

    /// The three priorities' defaults: latency-sensitive `high` scales wide with few runs per
    /// instance; bulk `low` packs more runs into fewer instances.
    pub fn defaults() -> Vec<Self> {
        Priority::ALL
            .into_iter()
            .map(|p| {
                let (concurrency, max_instances) = match p {
                    Priority::High => (10, 20),
                    Priority::Medium => (20, 10),
                    Priority::Low => (40, 5),
                };
                Self::sized(p.as_str(), concurrency, max_instances, "1", "512Mi")
            })
            .collect()
    }

    /// A queue of its own (for [`crate::App::queue`]): a bigger worker service by default, two
    /// CPUs and 2 GiB, fewer runs per instance. Adjust the fields before declaring it.
    pub fn custom(name: &str) -> Self {
        Self::sized(name, 4, 10, "2", "2Gi")
    }
}

/// A schedule as Cloud Scheduler needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    pub name: String,
    pub cron: String,
    pub time_zone: String,
    /// The API path Cloud Scheduler POSTs to.
    pub path: String,
}

/// The whole export: what `infra/runq.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Export {
    pub topic_prefix: String,
    pub dead_letter_topic: String,
    pub queues: Vec<QueueSpec>,
    pub schedules: Vec<ScheduleSpec>,
}

/// The export of `schedules` and `queues`.
pub fn export(schedules: &Schedules, queues: &[QueueSpec]) -> Export {
    Export {
        topic_prefix: DEFAULT_TOPIC_PREFIX.into(),
        dead_letter_topic: format!("{DEFAULT_TOPIC_PREFIX}-jobs-dead"),
        queues: queues.to_vec(),
        schedules: schedules
            .iter()
            .map(|s| ScheduleSpec {
                name: s.name.clone(),
                cron: s.cron.clone(),
                time_zone: s.time_zone.name().into(),
                path: format!("/internal/schedules/{}", s.name),
            })
            .collect(),
    }
}
