//! Functions: the [`Function`] trait users implement, its policy defaults, the type-erased
//! [`Registry`] the API and workers look functions up in, the run [`Context`], the built-in
//! functions, and [`http`] functions (a URL that is a function).

mod builtin;
mod context;
pub mod http;
mod wordcount;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

pub use builtin::{Echo, EchoArgs, Fail, FailArgs, Noop, NoopArgs, Sleep, SleepArgs};
pub use context::{ChildJob, Context, Progress, RunControl, Spawned, Spawner, SpawnerFuture};
pub use wordcount::{WORDCOUNT_TOP, Wordcount, WordcountArgs, WordcountOutput};

use crate::job::Priority;
use crate::limits::Limit;

/// Queue a function's jobs go to unless the submit names another.
pub const DEFAULT_PRIORITY: Priority = Priority::Medium;
/// Runs a job gets before it fails for good (the first run counts).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Upper bound on `max_attempts`, for a submit and a function's policy alike.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// First retry waits up to this long (full jitter), doubling each attempt.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// No retry waits longer than this.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(600);
/// The run is aborted after this long. It fits inside Pub/Sub's 600 s push deadline with a
/// margin, so a default function can run inline in the push request.
pub const DEFAULT_HARD_TIME_LIMIT: Duration = Duration::from_secs(540);
/// The longest hard limit of an inline function: Pub/Sub's push deadline (600 s, which is also
/// the push request's timeout) less a margin for claiming and recording.
pub const MAX_INLINE_TIME_LIMIT: Duration = Duration::from_secs(570);
/// The longest hard limit of a function run as a Cloud Run Job execution (a task's 24 h).
pub const MAX_JOB_TIME_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// Exponential backoff with full jitter: retry `n` (1-based) waits a random time in
/// `0..=min(max, initial * 2^(n-1))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first retry's wait.
    pub initial: Duration,
    /// Ceiling of every wait.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: DEFAULT_BACKOFF_INITIAL, max: DEFAULT_BACKOFF_MAX }
    }
}

impl Backoff {
    /// The ceiling of the wait before retry number `retry` (1 for the first retry).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.saturating_sub(1)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// A jittered wait before retry number `retry`.
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        ceiling.mul_f64(rand::random::<f64>())
    }
}

/// How runq schedules and limits a function's jobs; the defaults are the constants above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub priority: Priority,
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// When the run's [`Context::is_cancelled`] turns true so it can stop cleanly.
    pub soft_time_limit: Option<Duration>,
    /// When the run is aborted and fails with kind `timeout`.
    pub hard_time_limit: Duration,
    /// Runs outside the push request (see [`Function::detached`]).
    pub detached: bool,
    /// A queue of its own (see [`Function::queue`]).
    pub queue: Option<&'static str>,
    /// Runs in an execution of its own (see [`Function::cloud_run_job`]).
    pub cloud_run_job: bool,
}

/// Why a function's run failed. The variant carries the retry intent; runq owns the backoff.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FunctionError {
    /// A transient failure (a timeout upstream, a 503): retried while attempts are left.
    #[error("{0}")]
    Retryable(String),
    /// A failure that another attempt won't fix (bad input, a missing file): fails at once.
    #[error("{0}")]
    Fatal(String),
    /// The run stopped because its job was cancelled or its soft time limit passed.
    #[error("cancelled")]
    Cancelled,
    /// The function asked to be called again after this long (an HTTP function's `429` with
    /// `Retry-After`): the job is queued again, due then, without using an attempt.
    #[error("deferred for {0:?}")]
    Deferred(Duration),
}

impl FunctionError {
    /// A retryable error from anything printable.
    pub fn retryable(e: impl std::fmt::Display) -> Self {
        Self::Retryable(e.to_string())
    }

    /// A permanent error from anything printable.
    pub fn fatal(e: impl std::fmt::Display) -> Self {
        Self::Fatal(e.to_string())
    }
}

/// A function runq can run as a job.
///
/// The policy methods have documented defaults ([`DEFAULT_PRIORITY`], ...); override them per
/// function. `Args` is what clients submit, validated at submit time; `Output` is the result.
pub trait Function: Send + Sync + 'static {
    /// The JSON arguments, checked when the job is submitted.
    type Args: DeserializeOwned + Send + 'static;
    /// The JSON result.
    type Output: Serialize + Send + 'static;

    /// The name clients submit (`"transcribe"`): unique in an [`crate::App`].
    fn name(&self) -> &'static str;

    /// The queue used when the submit names none.
    fn priority(&self) -> Priority {
        DEFAULT_PRIORITY
    }

    /// Runs before the job fails for good.
    fn max_attempts(&self) -> u32 {
        DEFAULT_MAX_ATTEMPTS
    }

    /// The wait before each retry.
    fn backoff(&self) -> Backoff {
        Backoff::default()
    }

    /// When [`Context::is_cancelled`] turns true so the run can wind down; none by default.
    fn soft_time_limit(&self) -> Option<Duration> {
        None
    }

    /// When the run is aborted.
    fn hard_time_limit(&self) -> Duration {
        DEFAULT_HARD_TIME_LIMIT
    }

    /// A queue of the function's own instead of its priority's: a `heavy` queue served by a
    /// bigger worker service (like Celery's `task_routes`). Declare it with
    /// [`crate::App::queue`]. Default: none.
    fn queue(&self) -> Option<&'static str> {
        None
    }

    /// Whether runs are detached from the push request: the worker claims the job, answers
    /// Pub/Sub at once and runs the function in the background with heartbeats. Needed when the
    /// hard limit is over [`MAX_INLINE_TIME_LIMIT`]; route such functions to a queue whose
    /// worker service has CPU always allocated (Cloud Run throttles CPU between requests
    /// otherwise). Default: inline.
    fn detached(&self) -> bool {
        false
    }

    /// Whether each run is an execution of its own, `runq exec` for that claim (a Cloud Run Job
    /// execution, for work of hours; a subprocess locally): the worker claims the job, starts
    /// the execution and answers Pub/Sub at once; the execution heartbeats, streams progress and
    /// records the outcome, fenced by the claim. Its hard limit may reach
    /// [`MAX_JOB_TIME_LIMIT`]. Default: no.
    fn cloud_run_job(&self) -> bool {
        false
    }

    /// Checks what the types can't (ranges, lengths) at submit time; the message goes to the client.
    fn check(&self, _args: &Self::Args) -> Result<(), String> {
        Ok(())
    }

    /// Runs the job once. The future runs on the worker's async runtime: put CPU-bound work on
    /// `tokio::task::spawn_blocking` (as `wordcount` does) so it can't stall other runs, progress
    /// writes or the lease heartbeat.
    fn run(&self, ctx: Context, args: Self::Args) -> impl Future<Output = Result<Self::Output, FunctionError>> + Send;
}

/// A boxed future of a run's JSON outcome.
pub type RunFuture = Pin<Box<dyn Future<Output = Result<serde_json::Value, FunctionError>> + Send>>;

/// A [`Function`] with its types erased, as the registry holds it.
pub trait DynFunction: Send + Sync {
    /// See [`Function::name`].
    fn name(&self) -> &'static str;
    /// The function's policy, read once at registration.
    fn policy(&self) -> &Policy;
    /// Parses and checks `args` as the function's `Args`; the error is for the client.
    fn validate(&self, args: &RawValue) -> Result<(), String>;
    /// Parses `args` and starts a run.
    fn call(&self, ctx: Context, args: &RawValue) -> RunFuture;
}

struct Erased<F> {
    function: Arc<F>,
    policy: Policy,
}

impl<F: Function> Erased<F> {
    fn parse(&self, args: &RawValue) -> Result<F::Args, String> {
        let parsed: F::Args = serde_json::from_str(args.get()).map_err(|e| e.to_string())?;
        self.function.check(&parsed)?;
        Ok(parsed)
    }
}

impl<F: Function> DynFunction for Erased<F> {
    fn name(&self) -> &'static str {
        self.function.name()
    }

    fn policy(&self) -> &Policy {
        &self.policy
    }

    fn validate(&self, args: &RawValue) -> Result<(), String> {
        self.parse(args).map(drop)
    }

    fn call(&self, ctx: Context, args: &RawValue) -> RunFuture {
        let function = self.function.clone();
        match self.parse(args) {
            // Args were valid at submit; failing now means the function's Args type changed.
            Err(e) => Box::pin(async move { Err(FunctionError::Fatal(format!("invalid args: {e}"))) }),
            Ok(args) => Box::pin(async move {
                let output = function.run(ctx, args).await?;
                serde_json::to_value(output).map_err(|e| FunctionError::Fatal(format!("result is not JSON: {e}")))
            }),
        }
    }
}

/// A function that can't be registered, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("function `{0}` is registered twice")]
    Duplicate(String),
    #[error("function name `{0}` is reserved: names starting with `runq.` are runq's own")]
    Reserved(String),
    #[error("function name {0:?} is invalid: use 1-100 characters of a-z, 0-9, '_', '-', '.'")]
    BadName(String),
    #[error("function `{0}`: max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}")]
    BadAttempts(String),
    #[error("function `{0}`: the soft time limit must be shorter than the hard time limit")]
    BadLimits(String),
    #[error(
        "function `{0}`: its hard time limit of {1} s doesn't fit in Pub/Sub's 600 s push deadline; \
         make it detached (Function::detached) and route it to a queue with CPU always allocated"
    )]
    TooLongForInline(String, u64),
    #[error(
        "function `{0}`: queue name {1:?} is invalid: use 1-30 characters of a-z, 0-9, '-', starting with a letter"
    )]
    BadQueue(String, String),
    #[error("function `{0}`: {1}")]
    BadUrl(String, String),
    #[error("function `{0}`: its hard time limit of {1} s is over a Cloud Run Job task's 24 h")]
    TooLongForAJob(String, u64),
}

/// Checks a function's name and policy.
fn check(name: &str, policy: &Policy) -> Result<(), RegistryError> {
    let valid_name = !name.is_empty()
        && name.len() <= 100
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b));
    if !valid_name {
        return Err(RegistryError::BadName(name.into()));
    }
    if name.starts_with("runq.") {
        return Err(RegistryError::Reserved(name.into()));
    }
    if let Some(queue) = policy.queue
        && !crate::job::valid_queue_name(queue)
    {
        return Err(RegistryError::BadQueue(name.into(), queue.into()));
    }
    if policy.cloud_run_job && policy.hard_time_limit > MAX_JOB_TIME_LIMIT {
        return Err(RegistryError::TooLongForAJob(name.into(), policy.hard_time_limit.as_secs()));
    }
    if !policy.detached && !policy.cloud_run_job && policy.hard_time_limit > MAX_INLINE_TIME_LIMIT {
        return Err(RegistryError::TooLongForInline(name.into(), policy.hard_time_limit.as_secs()));
    }
    if !(1..=MAX_ATTEMPTS_LIMIT).contains(&policy.max_attempts) {
        return Err(RegistryError::BadAttempts(name.into()));
    }
    if policy.soft_time_limit.is_some_and(|soft| soft >= policy.hard_time_limit) {
        return Err(RegistryError::BadLimits(name.into()));
    }
    Ok(())
}

/// The functions of an [`crate::App`], by name.
#[derive(Clone, Default)]
pub struct Registry {
    functions: BTreeMap<&'static str, Arc<dyn DynFunction>>,
    /// Declared limits, in declaration order.
    limits: Vec<Limit>,
    /// Workflow templates, submitted by name.
    workflows: crate::workflow::Templates,
    /// Calls the HTTP functions: their HTTP client and identity tokens.
    http: Arc<http::Invoker>,
}

impl Registry {
    /// Adds a function, checking its name and policy.
    pub fn register<F: Function>(&mut self, function: F) -> Result<(), RegistryError> {
        let name = function.name();
        let policy = Policy {
            priority: function.priority(),
            max_attempts: function.max_attempts(),
            backoff: function.backoff(),
            soft_time_limit: function.soft_time_limit(),
            hard_time_limit: function.hard_time_limit(),
            detached: function.detached(),
            queue: function.queue(),
            cloud_run_job: function.cloud_run_job(),
        };
        check(name, &policy)?;
        if self.functions.contains_key(name) {
            return Err(RegistryError::Duplicate(name.into()));
        }
        let erased = Erased { function: Arc::new(function), policy };
        self.functions.insert(name, Arc::new(erased));
        Ok(())
    }

    /// Adds an HTTP function, checking its name, policy and URL (`https://`, or `http://` too
    /// when `allow_http`: `runq dev` and tests).
    pub fn register_http(&mut self, function: http::HttpFunction, allow_http: bool) -> Result<(), RegistryError> {
        check(function.name(), function.policy())?;
        if self.functions.contains_key(function.name()) {
            return Err(RegistryError::Duplicate(function.name().into()));
        }
        let name = function.name().to_owned();
        let registered =
            function.into_dyn(self.http.clone(), allow_http).map_err(|e| RegistryError::BadUrl(name, e))?;
        self.functions.insert(registered.name(), registered);
        Ok(())
    }

    /// What calls the HTTP functions (to point its identity tokens at a metadata server).
    pub fn http(&self) -> &Arc<http::Invoker> {
        &self.http
    }

    /// Declares a limit over registered functions; refused when it is invalid, when its name is
    /// taken, or when it names a function that isn't registered.
    pub fn limit(&mut self, limit: Limit) -> Result<(), String> {
        limit.check()?;
        if self.limits.iter().any(|l| l.name == limit.name) {
            return Err(format!("limit `{}` is declared twice", limit.name));
        }
        if let Some(f) = limit.functions.iter().find(|f| !self.functions.contains_key(f.as_str())) {
            return Err(format!("limit `{}` applies to `{f}`, which is not a registered function", limit.name));
        }
        self.limits.push(limit);
        Ok(())
    }

    /// Declares a workflow template, submitted by name; refused when its name is invalid or
    /// taken. Its shape is checked by [`crate::App::workflow`] (and at every submit).
    pub fn workflow(&mut self, workflow: crate::workflow::Workflow) -> Result<(), String> {
        self.workflows.add(workflow)
    }

    /// The declared workflow templates.
    pub fn workflows(&self) -> &crate::workflow::Templates {
        &self.workflows
    }

    /// Every declared limit.
    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }

    /// The limit keys a job of `function` by `owner` with `args` takes (sorted: the order their
    /// locks are taken in); empty for a function without limits. `Err` says which limit can't
    /// find its key in the job.
    pub fn limit_keys(&self, function: &str, owner: &str, args: &RawValue) -> Result<Vec<String>, String> {
        let mut keys = Vec::new();
        for limit in self.limits.iter().filter(|l| l.functions.iter().any(|f| f == function)) {
            keys.push(limit.key_for(owner, args)?);
        }
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }

    /// The function called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn DynFunction>> {
        self.functions.get(name)
    }

    /// The queues of their own that the functions route to (sorted, deduplicated).
    pub fn custom_queues(&self) -> Vec<&'static str> {
        let mut queues: Vec<&'static str> = self.functions.values().filter_map(|f| f.policy().queue).collect();
        queues.sort_unstable();
        queues.dedup();
        queues
    }

    /// Every registered name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.functions.keys().copied()
    }

    /// The registry of the shipped binary: `noop`, `sleep`, `echo`, `fail`, `wordcount` (which reads
    /// GCS through its run's [`Context::storage`]).
    pub fn builtin() -> Self {
        let mut registry = Self::default();
        registry.register(Noop).expect("builtin");
        registry.register(Sleep).expect("builtin");
        registry.register(Echo).expect("builtin");
        registry.register(Fail).expect("builtin");
        registry.register(Wordcount::default()).expect("builtin");
        registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let b = Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(10) };
        assert_eq!(b.ceiling(1), Duration::from_secs(1));
        assert_eq!(b.ceiling(2), Duration::from_secs(2));
        assert_eq!(b.ceiling(4), Duration::from_secs(8));
        assert_eq!(b.ceiling(5), Duration::from_secs(10));
        assert_eq!(b.ceiling(200), Duration::from_secs(10));
        for retry in 1..10 {
            assert!(b.delay(retry) <= b.ceiling(retry));
        }
    }

    #[test]
    fn registry_validates_args_with_the_function_type() {
        let r = Registry::builtin();
        let sleep = r.get("sleep").unwrap();
        let ok = RawValue::from_string(r#"{"seconds": 1.5, "steps": 3}"#.into()).unwrap();
        assert!(sleep.validate(&ok).is_ok());
        let missing = RawValue::from_string("{}".into()).unwrap();
        assert!(sleep.validate(&missing).unwrap_err().contains("seconds"));
        let negative = RawValue::from_string(r#"{"seconds": -1}"#.into()).unwrap();
        assert!(sleep.validate(&negative).is_err());
        assert!(r.get("nope").is_none());
    }

    #[test]
    fn registry_refuses_duplicates() {
        let mut r = Registry::builtin();
        assert!(matches!(r.register(Noop), Err(RegistryError::Duplicate(_))));
    }
}
