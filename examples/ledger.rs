//! A runq application of its own that keeps a ledger of its runs, outside runq's tables: the
//! function the fault-injection suite (`tests/it/faults/`, `docs/faults.md`) submits.
//!
//! `ledger` appends one line per event to the file named by `RUNQ_LEDGER`, opened with
//! `O_APPEND` and written with one `write` per line, so lines of concurrent processes never
//! interleave and the file's order is a total order of events:
//!
//! ```text
//! start   <job_id> <attempt> <pid> <exec_id>            the body begins
//! fail    <job_id> <attempt> <pid> <exec_id>            a retryable error (args.fail_times)
//! step    <job_id> <attempt> <pid> <exec_id> <n>        step n of the work is done
//! abort   <job_id> <attempt> <pid> <exec_id>            ctx.is_cancelled() seen between steps
//! dropped <job_id> <attempt> <pid> <exec_id>            the body's future was dropped (aborted)
//! end     <job_id> <attempt> <pid> <exec_id> <token>    the body returns {"token": <token>}
//! ```
//!
//! `exec_id` and `token` are fresh random values per execution. Args:
//! `{"ms": 300, "steps": 3, "fail_times": 1}`: work for `ms` milliseconds in `steps` steps
//! (checking for cancellation and reporting progress between them); return a retryable error
//! on attempts up to `fail_times`. `ledger_orphan` does the same on queue `orphan`, whose topic
//! the suite never creates (a job that can't be published).
//!
//! The flow-control tests (`tests/it/faults/limits.rs`) use three more functions, each under a
//! declared limit: `ledger_capped` (at most 3 at once), `ledger_rated` (5 starts a second) and
//! `ledger_fair` (2 at once per owner). Each writes a line when its body begins and finishes,
//! with the wall-clock time in microseconds:
//!
//! ```text
//! begin   <job_id> <attempt> <pid> <unix_micros>
//! finish  <job_id> <attempt> <pid> <unix_micros>
//! ```
//!
//! Run it like any runq binary: `cargo run --example ledger -- worker --queue medium`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use runq::function::{Context, FunctionError};
use runq::infra::QueueSpec;
use runq::limits::Limit;
use runq::{App, Function};
use serde::{Deserialize, Serialize};

/// The ledger function's policy: inline, and a hard limit far under the suite's push deadline.
const MAX_ATTEMPTS: u32 = 5;
const HARD_LIMIT: Duration = Duration::from_secs(3);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerArgs {
    #[serde(default)]
    ms: u64,
    #[serde(default = "one")]
    steps: u32,
    #[serde(default)]
    fail_times: u32,
    /// Ignored: lets a submit carry odd text (the suite's poison inputs).
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Serialize)]
struct Token {
    token: String,
}

/// Appends `line` to the ledger in one `write(2)` on an `O_APPEND` descriptor.
fn append(line: &str) {
    let Some(path) = std::env::var_os("RUNQ_LEDGER") else {
        return;
    };
    let mut buf = line.as_bytes().to_vec();
    buf.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(&path)
        .unwrap_or_else(|e| panic!("ledger {path:?}: {e}"));
    let n = file.write(&buf).unwrap_or_else(|e| panic!("ledger {path:?}: {e}"));
    assert_eq!(n, buf.len(), "short write to the ledger");
}

/// One execution of the body: writes `dropped` if the future is dropped before it finished.
struct Execution {
    head: String,
    done: bool,
}

impl Execution {
    fn begin(ctx: &Context) -> Self {
        let exec: u64 = rand::random();
        let head = format!("{} {} {} {exec:016x}", ctx.job_id(), ctx.attempt(), std::process::id());
        append(&format!("start {head}"));
        Self { head, done: false }
    }

    /// Before a side effect: a run told to stop (a cancel, or past its lease's stop time) writes
    /// `abort` and stops instead.
    fn stop_if_cancelled(&mut self, ctx: &Context) -> Result<(), FunctionError> {
        if ctx.is_cancelled() {
            self.finish("abort", "");
            return Err(FunctionError::Cancelled);
        }
        Ok(())
    }

    fn finish(&mut self, what: &str, extra: &str) {
        self.done = true;
        let sep = if extra.is_empty() { "" } else { " " };
        append(&format!("{what} {}{sep}{extra}", self.head));
    }
}

impl Drop for Execution {
    fn drop(&mut self) {
        if !self.done {
            append(&format!("dropped {}", self.head));
        }
    }
}

async fn body(ctx: Context, args: LedgerArgs) -> Result<Token, FunctionError> {
    let mut exec = Execution::begin(&ctx);
    // Failing is a side effect like a step (it writes the ledger): a run frozen right after its
    // start must not do it once it wakes past its lease.
    exec.stop_if_cancelled(&ctx)?;
    if ctx.attempt() <= args.fail_times {
        exec.finish("fail", "");
        return Err(FunctionError::Retryable(format!("failing attempt {} on purpose", ctx.attempt())));
    }
    let steps = args.steps.max(1);
    let step = Duration::from_millis(args.ms) / steps;
    for i in 0..steps {
        exec.stop_if_cancelled(&ctx)?;
        tokio::time::sleep(step).await;
        // Before each side effect: past its lease deadline (a frozen process that woke up late)
        // the run must not act, another run may own the job now.
        exec.stop_if_cancelled(&ctx)?;
        append(&format!("step {} {}", exec.head, i + 1));
        ctx.progress((i + 1) as f32 / steps as f32, format!("step {} of {steps}", i + 1));
    }
    exec.stop_if_cancelled(&ctx)?;
    let token = format!("{:032x}", rand::random::<u128>());
    exec.finish("end", &token);
    Ok(Token { token })
}

/// Works in small steps and keeps the ledger.
struct Ledger;

impl Function for Ledger {
    type Args = LedgerArgs;
    type Output = Token;

    fn name(&self) -> &'static str {
        "ledger"
    }

    fn max_attempts(&self) -> u32 {
        MAX_ATTEMPTS
    }

    fn backoff(&self) -> runq::function::Backoff {
        runq::function::Backoff { initial: Duration::from_millis(500), max: Duration::from_secs(2) }
    }

    fn hard_time_limit(&self) -> Duration {
        HARD_LIMIT
    }

    fn check(&self, args: &LedgerArgs) -> Result<(), String> {
        if args.ms > 2_000 || args.steps > 100 {
            return Err("ms is at most 2000 and steps at most 100".into());
        }
        Ok(())
    }

    async fn run(&self, ctx: Context, args: LedgerArgs) -> Result<Token, FunctionError> {
        body(ctx, args).await
    }
}

/// `ledger` on a queue whose topic nobody created.
struct LedgerOrphan;

impl Function for LedgerOrphan {
    type Args = LedgerArgs;
    type Output = Token;

    fn name(&self) -> &'static str {
        "ledger_orphan"
    }

    fn queue(&self) -> Option<&'static str> {
        Some("orphan")
    }

    fn max_attempts(&self) -> u32 {
        MAX_ATTEMPTS
    }

    fn hard_time_limit(&self) -> Duration {
        HARD_LIMIT
    }

    async fn run(&self, ctx: Context, args: LedgerArgs) -> Result<Token, FunctionError> {
        body(ctx, args).await
    }
}

fn micros() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_micros()
}

/// Writes the `finish` line when the body ends, however it ends (returned, or its future dropped
/// when the run was aborted): the run's slot is given up then.
struct Timed(String);

impl Drop for Timed {
    fn drop(&mut self) {
        append(&format!("finish {} {}", self.0, micros()));
    }
}

/// The body of the limited functions: `begin`, `ms` of work, `finish`.
async fn timed(ctx: Context, args: LedgerArgs) -> Result<Token, FunctionError> {
    let head = format!("{} {} {}", ctx.job_id(), ctx.attempt(), std::process::id());
    append(&format!("begin {head} {}", micros()));
    let _finish = Timed(head);
    tokio::time::sleep(Duration::from_millis(args.ms)).await;
    Ok(Token { token: String::new() })
}

/// A function whose runs the tests time, named `$name`.
macro_rules! timed_function {
    ($type:ident, $name:literal) => {
        struct $type;

        impl Function for $type {
            type Args = LedgerArgs;
            type Output = Token;

            fn name(&self) -> &'static str {
                $name
            }

            fn hard_time_limit(&self) -> Duration {
                HARD_LIMIT
            }

            async fn run(&self, ctx: Context, args: LedgerArgs) -> Result<Token, FunctionError> {
                timed(ctx, args).await
            }
        }
    };
}

timed_function!(LedgerCapped, "ledger_capped");
timed_function!(LedgerRated, "ledger_rated");
timed_function!(LedgerFair, "ledger_fair");

fn main() -> std::process::ExitCode {
    App::new()
        .function(Ledger)
        .function(LedgerOrphan)
        .queue(QueueSpec::custom("orphan"))
        .function(LedgerCapped)
        .function(LedgerRated)
        .function(LedgerFair)
        .limit(Limit::new("capped").concurrency(3).on(["ledger_capped"]))
        .limit(Limit::new("upstream").rate(5.0, 1).on(["ledger_rated"]))
        .limit(Limit::new("per-owner").concurrency(2).per_owner().on(["ledger_fair"]))
        .run()
}
