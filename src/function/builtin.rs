//! The functions every runq binary ships with: for trying runq out, smoke tests and benchmarks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Context, Function, FunctionError};

/// Does nothing and succeeds: measures runq's own overhead.
pub struct Noop;

/// `noop` takes an empty object.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoopArgs {}

impl Function for Noop {
    type Args = NoopArgs;
    type Output = serde_json::Value;

    fn name(&self) -> &'static str {
        "noop"
    }

    async fn run(&self, _ctx: Context, _args: NoopArgs) -> Result<Self::Output, FunctionError> {
        Ok(serde_json::Value::Null)
    }
}

/// Sleeps `seconds` in `steps` even steps, reporting progress after each; stops when cancelled.
pub struct Sleep;

/// Longest `sleep` accepted: it runs inline, inside the push request's deadline.
pub const SLEEP_MAX_SECONDS: f64 = 500.0;

/// `sleep`'s arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepArgs {
    /// Total time to sleep, 0..=3600.
    pub seconds: f64,
    /// Progress reports, 1..=1000 (default 10).
    #[serde(default = "default_steps")]
    pub steps: u32,
}

fn default_steps() -> u32 {
    10
}

/// What `sleep` returns.
#[derive(Debug, Serialize)]
pub struct Slept {
    pub slept_seconds: f64,
}

impl Function for Sleep {
    type Args = SleepArgs;
    type Output = Slept;

    fn name(&self) -> &'static str {
        "sleep"
    }

    fn check(&self, args: &SleepArgs) -> Result<(), String> {
        if !(0.0..=SLEEP_MAX_SECONDS).contains(&args.seconds) {
            return Err(format!("seconds must be between 0 and {SLEEP_MAX_SECONDS}"));
        }
        if !(1..=1000).contains(&args.steps) {
            return Err("steps must be between 1 and 1000".into());
        }
        Ok(())
    }

    async fn run(&self, ctx: Context, args: SleepArgs) -> Result<Slept, FunctionError> {
        let step = Duration::from_secs_f64(args.seconds / f64::from(args.steps));
        for done in 1..=args.steps {
            tokio::select! {
                _ = tokio::time::sleep(step) => {}
                _ = ctx.cancelled() => return Err(FunctionError::Cancelled),
            }
            ctx.progress(done as f32 / args.steps as f32, format!("step {done} of {}", args.steps));
        }
        Ok(Slept { slept_seconds: args.seconds })
    }
}

/// Returns its argument: checks that args and results travel intact.
pub struct Echo;

/// `echo`'s arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoArgs {
    /// Any JSON value, returned as the result.
    pub value: serde_json::Value,
}

impl Function for Echo {
    type Args = EchoArgs;
    type Output = serde_json::Value;

    fn name(&self) -> &'static str {
        "echo"
    }

    async fn run(&self, _ctx: Context, args: EchoArgs) -> Result<serde_json::Value, FunctionError> {
        Ok(args.value)
    }
}

/// Fails its first `times` attempts, then succeeds: exercises retries and failure paths.
pub struct Fail;

/// `fail`'s arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailArgs {
    /// The error message (default "requested failure").
    #[serde(default = "default_fail_message")]
    pub message: String,
    /// Whether the failures are retryable (default true).
    #[serde(default = "default_true")]
    pub retryable: bool,
    /// How many attempts fail before one succeeds (default: all of them).
    #[serde(default)]
    pub times: Option<u32>,
}

fn default_fail_message() -> String {
    "requested failure".into()
}

fn default_true() -> bool {
    true
}

impl Function for Fail {
    type Args = FailArgs;
    type Output = serde_json::Value;

    fn name(&self) -> &'static str {
        "fail"
    }

    async fn run(&self, ctx: Context, args: FailArgs) -> Result<serde_json::Value, FunctionError> {
        if args.times.is_some_and(|times| ctx.attempt() > times) {
            return Ok(serde_json::json!({ "succeeded_on_attempt": ctx.attempt() }));
        }
        Err(if args.retryable { FunctionError::Retryable(args.message) } else { FunctionError::Fatal(args.message) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[tokio::test(start_paused = true)]
    async fn sleep_reports_each_step_and_stops_on_cancel() {
        let (ctx, control) = Context::new(Uuid::now_v7(), 1, 3);
        let out = Sleep.run(ctx, SleepArgs { seconds: 2.0, steps: 4 }).await.unwrap();
        assert_eq!(out.slept_seconds, 2.0);
        assert_eq!(control.progress.borrow().fraction, 1.0);
        assert_eq!(control.progress.borrow().message.as_deref(), Some("step 4 of 4"));

        let (ctx, control) = Context::new(Uuid::now_v7(), 1, 3);
        control.cancel();
        let err = Sleep.run(ctx, SleepArgs { seconds: 60.0, steps: 2 }).await.unwrap_err();
        assert_eq!(err, FunctionError::Cancelled);
    }

    #[tokio::test]
    async fn fail_succeeds_after_times() {
        let args = || FailArgs { message: "boom".into(), retryable: true, times: Some(2) };
        for attempt in 1..=2 {
            let (ctx, _c) = Context::new(Uuid::now_v7(), attempt, 3);
            assert_eq!(Fail.run(ctx, args()).await.unwrap_err(), FunctionError::Retryable("boom".into()));
        }
        let (ctx, _c) = Context::new(Uuid::now_v7(), 3, 3);
        assert!(Fail.run(ctx, args()).await.is_ok());
        let (ctx, _c) = Context::new(Uuid::now_v7(), 1, 3);
        let fatal = FailArgs { retryable: false, ..args() };
        assert_eq!(Fail.run(ctx, fatal).await.unwrap_err(), FunctionError::Fatal("boom".into()));
    }
}
