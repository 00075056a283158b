//! The job model: statuses, priorities, errors and the status machine.
//!
//! Owns no I/O. Every transition listed in [`Status`] is carried out by one guarded UPDATE in
//! [`crate::store`]; this module names them so the API, worker and store agree.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a job is in its life. Every arrow is one guarded UPDATE in [`crate::store`]; the same
/// diagram, explained, is in `docs/architecture.md`.
///
/// ```text
///             submit
///               |
///               v
///    +------> queued --claim (worker)--> running --ok--> succeeded
///    |          |  ^                       |
///    |          |  |                       |--retryable error, attempts left--> retrying
///    |          |  |                       |--permanent error / attempts used up--> failed
///    |          |  |                       |--cancel observed by the run--> cancelled
///    |          |  +--lease expired, attempts left (reaper)-----------------------|
///    |          |  +--released: shutdown grace ran out (attempt given back)-------|
///    |          |  +--released: this worker has no such function (backoff)-------|
///    |          |                          |--lease expired, none left (reaper)--> failed (lost)
///    |          |                          |--lease expired, cancel asked (reaper)--> cancelled
///    |          |                          |--released, cancel asked--> cancelled
///    |          |                          \--no such function, rounds used up--> failed (unknown_function)
///    |          |--cancel--> cancelled
///    |          |--dead-lettered, never claimed, rounds left--> queued (later, backoff)
///    |          |--dead-lettered, rounds used up--> failed (undeliverable)
///    |          \--publish refused by Pub/Sub, refusals used up--> failed (unpublishable)
///    |
///    +--due (retry promotion)-- retrying --cancel--> cancelled
///    |
///    +--retry (a client, by hand or in bulk)-- failed | cancelled   (attempt budget again, runs kept)
///
///  workflow steps (docs/workflows.md), each move in the statement that finished a parent:
///    pending --every parent finished--> queued | waiting (a signal step)
///    pending --a parent did not succeed (the step doesn't run on failure)--> cancelled
///    waiting --signal approve, or its timeout's default--> succeeded
///    waiting --signal reject, rounds left--> (the rework step) queued, the steps up to here pending
///    waiting --signal reject, no rounds left | timeout without default--> failed
///    pending | waiting --the workflow stopped or was cancelled--> cancelled
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A workflow step whose parents haven't all finished yet.
    Pending,
    /// A workflow step waiting for a signal (a person's decision) or its timeout.
    Waiting,
    /// Waiting to be claimed (possibly not yet due: see `run_after`).
    Queued,
    /// Claimed by a worker that holds a lease.
    Running,
    /// Failed with a retryable error; back to `queued` when its backoff has passed.
    Retrying,
    /// Finished with a result.
    Succeeded,
    /// Finished with an error that won't be retried.
    Failed,
    /// Cancelled before or during its run.
    Cancelled,
}

impl Status {
    /// Every status, in the order of the diagram.
    pub const ALL: [Status; 8] = [
        Status::Pending,
        Status::Waiting,
        Status::Queued,
        Status::Running,
        Status::Retrying,
        Status::Succeeded,
        Status::Failed,
        Status::Cancelled,
    ];

    /// The name stored in the database and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Waiting => "waiting",
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Retrying => "retrying",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// A finished job never changes status again.
    pub fn is_finished(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name that runq doesn't know.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown status `{0}`: expected one of pending, waiting, queued, running, retrying, succeeded, failed, cancelled"
)]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// Which queue (Pub/Sub topic and worker service) a job goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Latency-sensitive work: its own worker service, scaled first.
    High,
    /// The default.
    #[default]
    Medium,
    /// Bulk work that may wait.
    Low,
}

impl Priority {
    /// Every priority, highest first.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Medium, Priority::Low];

    /// The name stored in the database, used in topic names and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A priority name that runq doesn't know.
#[derive(Debug, thiserror::Error)]
#[error("unknown priority `{0}`: expected high, medium or low")]
pub struct UnknownPriority(pub String);

impl FromStr for Priority {
    type Err = UnknownPriority;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Priority::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| UnknownPriority(s.to_owned()))
    }
}

/// Whether `name` can name a queue: 1-30 characters of a-z, 0-9 and '-', starting with a letter
/// (it becomes part of topic, subscription and Cloud Run service names).
pub fn valid_queue_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && name.len() <= 30
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Why a run failed, as stored in `jobs.error` and shown by `GET /jobs/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    /// A stable machine-readable reason.
    pub kind: ErrorKind,
    /// A human-readable message from the function or from runq.
    pub message: String,
    /// Whether runq would retry this error if attempts were left.
    pub retryable: bool,
}

impl JobError {
    /// An error of `kind` that runq won't retry.
    pub fn permanent(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), retryable: false }
    }
}

/// The `kind` of a [`JobError`]: why a job failed (or was cancelled), stored in `jobs.error` and
/// `job_runs.error` and shown by the API under the names below. Functions choose only between
/// [`ErrorKind::Error`] retryable or not; every other kind is runq's. The table is also in
/// `docs/reliability.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// `error`: the function returned an error (`FunctionError::Retryable` or `Fatal`).
    Error,
    /// `panic`: the function panicked; retried while attempts are left.
    Panic,
    /// `timeout`: the run stopped at its soft time limit, or was aborted at its hard one.
    Timeout,
    /// `cancelled`: a client cancelled the job, before it ran or while it ran.
    Cancelled,
    /// `lost`: the run's lease expired (its worker crashed or was killed) with no attempts left.
    Lost,
    /// `undeliverable`: Pub/Sub dead-lettered the job's message, unclaimed, too many times.
    Undeliverable,
    /// `unpublishable`: Pub/Sub refused the job's message too many times (a missing topic).
    Unpublishable,
    /// `invalid_result`: the result can't be stored in Postgres (a NUL, or refused by `jsonb`).
    InvalidResult,
    /// `result_too_large`: the result is over the inline limit and no results bucket is configured.
    ResultTooLarge,
    /// `result_storage`: a result over the inline limit couldn't be written to GCS.
    ResultStorage,
    /// `unknown_function`: no worker that received the job has its function, rounds used up.
    UnknownFunction,
    /// `rejected`: a person rejected a workflow's signal step, with no rework rounds left.
    Rejected,
}

impl ErrorKind {
    /// Every kind.
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::Error,
        ErrorKind::Panic,
        ErrorKind::Timeout,
        ErrorKind::Cancelled,
        ErrorKind::Lost,
        ErrorKind::Undeliverable,
        ErrorKind::Unpublishable,
        ErrorKind::InvalidResult,
        ErrorKind::ResultTooLarge,
        ErrorKind::ResultStorage,
        ErrorKind::UnknownFunction,
        ErrorKind::Rejected,
    ];

    /// The name stored in the database and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Error => "error",
            ErrorKind::Panic => "panic",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Lost => "lost",
            ErrorKind::Undeliverable => "undeliverable",
            ErrorKind::Unpublishable => "unpublishable",
            ErrorKind::InvalidResult => "invalid_result",
            ErrorKind::ResultTooLarge => "result_too_large",
            ErrorKind::ResultStorage => "result_storage",
            ErrorKind::UnknownFunction => "unknown_function",
            ErrorKind::Rejected => "rejected",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error kind name that runq doesn't know.
#[derive(Debug, thiserror::Error)]
#[error("unknown error kind `{0}`")]
pub struct UnknownErrorKind(pub String);

impl FromStr for ErrorKind {
    type Err = UnknownErrorKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorKind::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| UnknownErrorKind(s.to_owned()))
    }
}

/// Postgres `text` by [`as_str`](Status::as_str) and [`FromStr`], for the `text` columns with a
/// CHECK (and the names inside `jsonb`): bound and decoded as the type, so a name runq doesn't
/// know is a decode error, never a different value. (Not `#[derive(sqlx::Type)]` with
/// `type_name = "text"`: that binds a type looked up by name on each new connection.)
macro_rules! text_in_postgres {
    ($($ty:ty),*) => {$(
        impl sqlx::Type<sqlx::Postgres> for $ty {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl sqlx::postgres::PgHasArrayType for $ty {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::postgres::PgHasArrayType>::array_type_info()
            }
            fn array_compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::postgres::PgHasArrayType>::array_compatible(ty)
            }
        }

        impl sqlx::Encode<'_, sqlx::Postgres> for $ty {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $ty {
            fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                Ok(<&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?.parse()?)
            }
        }
    )*};
}

text_in_postgres!(Status, Priority, ErrorKind);

/// The polling view of a job: what `GET /jobs/{id}/status` returns. One primary-key read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub id: Uuid,
    pub status: Status,
    /// Fraction done, 0..=1, as last reported by the function.
    pub progress: f32,
    /// The function's last progress message.
    pub message: Option<String>,
    /// Runs started so far (the current one included).
    pub attempt: i32,
    pub max_attempts: i32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// When to poll again, in milliseconds; absent once the job is finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_after_ms: Option<u64>,
    /// The workflow this job is a step of (a run that fanned out with a continuation is one
    /// too), with that workflow's jobs finished of all: a fan-out's overall progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<WorkflowLink>,
}

/// The workflow a job is a step of, as its status shows it (`GET /workflows/{workflow_id}` has it all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowLink {
    pub workflow_id: Uuid,
    /// The step this job is.
    pub step: String,
    /// The workflow's jobs finished, of all of them.
    pub finished: i64,
    pub total: i64,
}

/// The full view of a job: what `POST /jobs` and `GET /jobs/{id}` return.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    #[serde(flatten)]
    pub status: JobStatus,
    pub function: String,
    pub priority: Priority,
    /// The queue (topic and worker service) it runs on: its priority's, or its function's own.
    pub queue: String,
    pub args: serde_json::Value,
    /// When the job becomes due (later than `created_at` for a delayed submit or a retry).
    pub run_after: DateTime<Utc>,
    pub cancel_requested: bool,
    pub result: Option<serde_json::Value>,
    /// Where a result too large to keep inline is stored (GCS).
    pub result_uri: Option<String>,
    pub error: Option<JobError>,
    pub parent_id: Option<Uuid>,
    pub idempotency_key: Option<String>,
    /// At most one queued, retrying or running job of its owner has this key (given at submit;
    /// cleared by a manual retry).
    #[serde(default)]
    pub unique_key: Option<String>,
    /// A fan-out parent's children by status (`GET /jobs/{id}` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<std::collections::BTreeMap<String, i64>>,
}

/// How soon a client should poll a job in `status` whose next change is due at `run_after`.
pub fn poll_after_ms(status: Status, run_after: DateTime<Utc>, now: DateTime<Utc>) -> Option<u64> {
    const QUEUED_MS: u64 = 1_000;
    const RUNNING_MS: u64 = 500;
    const MAX_MS: u64 = 10_000;
    match status {
        Status::Running => Some(RUNNING_MS),
        // Moved on by other jobs or a person: no sooner than a queued job.
        Status::Pending | Status::Waiting => Some(QUEUED_MS * 2),
        Status::Queued | Status::Retrying => {
            let until_due = (run_after - now).num_milliseconds().max(0) as u64;
            Some(until_due.clamp(QUEUED_MS, MAX_MS))
        }
        Status::Succeeded | Status::Failed | Status::Cancelled => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for p in Priority::ALL {
            assert_eq!(p.as_str().parse::<Priority>().unwrap(), p);
        }
        for k in ErrorKind::ALL {
            assert_eq!(k.as_str().parse::<ErrorKind>().unwrap(), k);
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        assert!("urgent".parse::<Priority>().is_err());
        assert!("oops".parse::<ErrorKind>().is_err());
        assert!("done".parse::<Status>().is_err());
    }

    #[test]
    fn poll_hint_waits_for_due_time_within_bounds() {
        let now = Utc::now();
        let later = now + chrono::Duration::seconds(5);
        assert_eq!(poll_after_ms(Status::Queued, now, now), Some(1_000));
        assert_eq!(poll_after_ms(Status::Retrying, later, now), Some(5_000));
        assert_eq!(poll_after_ms(Status::Queued, now + chrono::Duration::hours(1), now), Some(10_000));
        assert_eq!(poll_after_ms(Status::Succeeded, now, now), None);
    }
}
