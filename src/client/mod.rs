//! The command-line client of the runq API: `runq submit/status/cancel/retry/wait/jobs/bulk`,
//! `runq limits` and `runq pause/resume`.
//! Owns the clap subcommands, token resolution (given or minted locally), the HTTP calls and
//! the `--wait` loop with its progress bar. Exit codes: 0 succeeded, 1 failed/cancelled, 2 error.

mod http;
mod progress;
mod wait;
mod workflow;

use clap::{Args, Subcommand};
use serde_json::Value;

pub use http::{ApiClient, ClientError, Poll};
pub use wait::{GIVE_UP_AFTER, wait};

/// The API's URL when neither `--api-url` nor `RUNQ_API_URL` is given: `runq api` or `runq dev`
/// on this machine.
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:8080";

/// Exit code: the command did what was asked; a waited-for job succeeded.
pub const EXIT_SUCCEEDED: u8 = 0;
/// Exit code: a waited-for job ended `failed` or `cancelled`.
pub const EXIT_JOB_FAILED: u8 = 1;
/// Exit code: a usage error, or the API refused the request or could not be reached.
pub const EXIT_ERROR: u8 = 2;
/// Exit code: Ctrl-C stopped a wait (the job keeps running).
pub const EXIT_INTERRUPTED: u8 = 130;

/// The client subcommands, flattened into the `runq` command line.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Submit a job to the API; with --wait, follow it to the end.
    Submit(SubmitArgs),
    /// Print a job (GET /jobs/ID); with --wait, follow it to the end.
    Status(StatusArgs),
    /// Cancel a job: a queued one at once, a running one is asked to stop.
    Cancel(IdArgs),
    /// Retry a failed or cancelled job with its attempt budget again (its runs are kept).
    Retry(IdArgs),
    /// Retry, cancel or delete every job a filter matches, in the background (or count them);
    /// `bulk list`: your operations, newest first.
    Bulk(Box<BulkArgs>),
    /// Follow a job to the end with a progress bar (same as `status --wait`).
    Wait(IdArgs),
    /// Show the limits and their use; admins change them at run time (`set`, `reset`).
    Limits(LimitsArgs),
    /// Pause a queue or a function (admins): nothing new of it starts, running jobs finish.
    Pause(PauseArgs),
    /// Resume a paused queue or function (admins): what it held back is released.
    Resume(PauseArgs),
    /// List your jobs, newest first.
    Jobs(JobsArgs),
    /// Workflows: submit one (`--wait` shows each step's progress), print it, signal a waiting
    /// step, cancel it.
    Workflow(workflow::WorkflowArgs),
}

/// Where the API is and who the caller is; accepted by every client subcommand.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// The runq API's base URL.
    #[arg(long, env = "RUNQ_API_URL", default_value = DEFAULT_API_URL)]
    pub api_url: String,
    /// Bearer token for the API. Without one, a short-lived token is minted with
    /// RUNQ_AUTH_HS256_SECRET (local development).
    #[arg(long, env = "RUNQ_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Subject of a locally minted token. Default: `local`.
    #[arg(long, env = "USER")]
    pub sub: Option<String>,
    /// The settings a local token is minted with.
    #[command(flatten)]
    pub auth: crate::config::AuthArgs,
}

impl Connection {
    fn client(&self) -> Result<ApiClient, ClientError> {
        let sub = self.sub.clone().filter(|s| !s.trim().is_empty()).unwrap_or_else(|| "local".into());
        let url = if self.api_url.trim().is_empty() { DEFAULT_API_URL } else { &self.api_url };
        let auth = self.auth.settings().map_err(|e| ClientError::Usage(e.to_string()))?;
        ApiClient::new(url, self.token.clone(), &auth, &sub)
    }
}

/// `runq submit`.
#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The function to run (a registered name, like `sleep`).
    pub function: String,
    /// The function's arguments as JSON, or @FILE to read them from a file [default: {}].
    #[arg(long)]
    pub args: Option<String>,
    /// high, medium or low [default: the function's].
    #[arg(long)]
    pub priority: Option<String>,
    /// Runs allowed before the job fails [default: the function's].
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Don't start before this many seconds from now.
    #[arg(long, value_name = "SECS")]
    pub delay: Option<f64>,
    /// Submitting again with the same key returns the first job instead of a new one.
    #[arg(long, value_name = "K")]
    pub idempotency_key: Option<String>,
    /// At most one queued, retrying or running job with this key: submitting again while one
    /// lives returns it (with `"deduplicated": true`) instead of a new one.
    #[arg(long, value_name = "K")]
    pub unique_key: Option<String>,
    /// With --unique-key: run once, SECS after the submits of the key stopped, with the last args.
    #[arg(long, value_name = "SECS", requires = "unique_key", conflicts_with = "delay")]
    pub debounce: Option<f64>,
    /// Follow the job to the end; exit 0 if it succeeds, 1 if it fails or is cancelled.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub connection: Connection,
}

/// `runq status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The job id.
    pub id: String,
    /// Follow the job to the end; exit 0 if it succeeds, 1 if it fails or is cancelled.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub connection: Connection,
}

/// `runq cancel` and `runq wait`.
#[derive(Args, Debug)]
pub struct IdArgs {
    /// The job id.
    pub id: String,
    #[command(flatten)]
    pub connection: Connection,
}

/// `runq jobs`.
#[derive(Args, Debug)]
pub struct JobsArgs {
    /// Only jobs in this status (queued, running, retrying, succeeded, failed, cancelled).
    #[arg(long)]
    pub status: Option<String>,
    /// Only jobs of this function.
    #[arg(long)]
    pub function: Option<String>,
    /// At most this many jobs [API default: 50].
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Continue after a previous page (the cursor it printed).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Print the API's JSON page instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: Connection,
}

/// `runq limits [set NAME ... | reset NAME]`.
#[derive(Args, Debug)]
pub struct LimitsArgs {
    #[command(subcommand)]
    pub change: Option<LimitChange>,
    #[command(flatten)]
    pub connection: Connection,
}

/// A run-time change of a limit.
#[derive(Subcommand, Debug)]
pub enum LimitChange {
    /// Enforce these values from now on, on every worker (kept across deploys until `reset`).
    Set {
        name: String,
        /// At most this many runs at once (per key).
        #[arg(long)]
        concurrency: Option<u32>,
        /// At most this many starts a second (per key).
        #[arg(long, value_name = "PER_SECOND")]
        rate: Option<f64>,
        /// Starts allowed at once after a quiet spell, with --rate.
        #[arg(long, default_value_t = 1)]
        burst: u32,
    },
    /// Back to the values declared in code.
    Reset { name: String },
}

/// `runq pause|resume queue|function NAME`.
#[derive(Args, Debug)]
pub struct PauseArgs {
    #[arg(value_parser = ["queue", "function"])]
    pub scope: String,
    pub name: String,
    #[command(flatten)]
    pub connection: Connection,
}

/// `runq bulk`.
#[derive(Args, Debug)]
pub struct BulkArgs {
    /// retry (failed/cancelled jobs), cancel (queued/retrying/running) or delete (finished);
    /// list: the operations started so far (an admin's: everyone's), newest first.
    #[arg(value_parser = ["retry", "cancel", "delete", "list"])]
    pub action: String,
    /// Only jobs of this function.
    #[arg(long)]
    pub function: Option<String>,
    /// Only jobs in this status (one the action applies to).
    #[arg(long)]
    pub status: Option<String>,
    /// Only jobs whose error has this kind (error, panic, timeout, lost, ...).
    #[arg(long, value_name = "K")]
    pub error_kind: Option<String>,
    /// Only jobs created at or after this time (RFC 3339).
    #[arg(long, value_name = "T")]
    pub created_after: Option<String>,
    /// Only jobs created before this time (RFC 3339).
    #[arg(long, value_name = "T")]
    pub created_before: Option<String>,
    /// Admins: only this owner's jobs (else every owner's).
    #[arg(long)]
    pub owner: Option<String>,
    /// Print how many jobs match; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Follow the operation to its end; exit 0 if it finishes, 1 if it fails.
    #[arg(long)]
    pub wait: bool,
    /// list: at most this many operations [API default: 50].
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// list: continue after a previous page (the cursor it printed).
    #[arg(long)]
    pub cursor: Option<String>,
    /// list: print the API's JSON page instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: Connection,
}

impl BulkArgs {
    /// Refuses the options of the other form: a filter, `--dry-run` or `--wait` with `list`, or
    /// `--limit`, `--cursor` or `--json` with an action.
    fn check(&self) -> Result<(), ClientError> {
        let filter =
            [&self.function, &self.status, &self.error_kind, &self.created_after, &self.created_before, &self.owner];
        let listing = self.action == "list";
        if listing && (filter.iter().any(|f| f.is_some()) || self.dry_run || self.wait) {
            return Err(ClientError::Usage(
                "`runq bulk list` takes only --limit, --cursor and --json; filters are for retry, cancel and delete"
                    .into(),
            ));
        }
        if !listing && (self.limit.is_some() || self.cursor.is_some() || self.json) {
            return Err(ClientError::Usage("--limit, --cursor and --json are for `runq bulk list`".into()));
        }
        Ok(())
    }
}

/// The `POST /operations` body from the command line.
fn bulk_body(a: &BulkArgs) -> Value {
    let mut filter = serde_json::Map::new();
    for (key, value) in [
        ("function", &a.function),
        ("status", &a.status),
        ("error_kind", &a.error_kind),
        ("created_after", &a.created_after),
        ("created_before", &a.created_before),
        ("owner", &a.owner),
    ] {
        if let Some(v) = value {
            filter.insert(key.into(), v.clone().into());
        }
    }
    serde_json::json!({ "action": a.action, "filter": filter, "dry_run": a.dry_run })
}

/// Pause between polls of `runq bulk --wait`.
const OPERATION_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Follows an operation until it is no longer running, its progress on stderr; prints it.
async fn follow_operation(api: &ApiClient, mut op: Value) -> Result<u8, ClientError> {
    let id = op.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
    let mut shown = String::new();
    loop {
        let status = op.get("status").and_then(Value::as_str).unwrap_or_default().to_owned();
        let line = format!(
            "operation {id}: {status}, {} of {} done",
            op.get("done").and_then(Value::as_i64).unwrap_or(0),
            op.get("matched").and_then(Value::as_i64).map_or("?".to_owned(), |m| m.to_string())
        );
        if line != shown {
            eprintln!("{line}");
            shown = line;
        }
        if status != "running" {
            print_json(&op);
            return Ok(if status == "finished" { EXIT_SUCCEEDED } else { EXIT_JOB_FAILED });
        }
        tokio::time::sleep(OPERATION_POLL).await;
        op = api.operation(&id).await?;
    }
}

/// `POST /queues|functions/{name}/pause|resume`.
async fn toggle_pause(a: &PauseArgs, verb: &str) -> Result<u8, ClientError> {
    let plural = if a.scope == "queue" { "queues" } else { "functions" };
    print_json(&a.connection.client()?.call(reqwest::Method::POST, &[plural, &a.name, verb], None).await?);
    Ok(EXIT_SUCCEEDED)
}

/// Runs a client subcommand; returns the process exit code. Errors are printed to stderr.
pub async fn run(command: ClientCommand) -> i32 {
    match execute(command).await {
        Ok(code) => i32::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            i32::from(EXIT_ERROR)
        }
    }
}

async fn execute(command: ClientCommand) -> Result<u8, ClientError> {
    match command {
        ClientCommand::Submit(a) => {
            let body = submit_body(&a)?;
            let api = a.connection.client()?;
            let job = api.submit(&body, a.idempotency_key.as_deref()).await?;
            if !a.wait {
                print_json(&job);
                return Ok(EXIT_SUCCEEDED);
            }
            let id = job_id(&job)?;
            eprintln!("submitted job {id}");
            wait(&api, &id).await
        }
        ClientCommand::Status(a) => {
            let api = a.connection.client()?;
            if a.wait {
                return wait(&api, &a.id).await;
            }
            print_json(&api.job(&a.id).await?);
            Ok(EXIT_SUCCEEDED)
        }
        ClientCommand::Wait(a) => wait(&a.connection.client()?, &a.id).await,
        ClientCommand::Retry(a) => {
            print_json(&a.connection.client()?.retry(&a.id).await?);
            Ok(EXIT_SUCCEEDED)
        }
        ClientCommand::Bulk(a) if a.action == "list" => {
            a.check()?;
            let api = a.connection.client()?;
            let query: Vec<(&str, String)> = [("limit", a.limit.map(|l| l.to_string())), ("cursor", a.cursor.clone())]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .collect();
            let page = api.operations(&query).await?;
            if a.json {
                print_json(&page);
            } else {
                print!("{}", operations_table(&page));
            }
            if let Some(cursor) = page.get("next_cursor").and_then(Value::as_str) {
                eprintln!("more operations: add --cursor {cursor}");
            }
            Ok(EXIT_SUCCEEDED)
        }
        ClientCommand::Bulk(a) => {
            a.check()?;
            let api = a.connection.client()?;
            let answer = api.start_operation(&bulk_body(&a)).await?;
            if a.dry_run {
                println!("{}", answer.get("count").and_then(Value::as_i64).unwrap_or(0));
                return Ok(EXIT_SUCCEEDED);
            }
            if !a.wait {
                print_json(&answer);
                return Ok(EXIT_SUCCEEDED);
            }
            follow_operation(&api, answer).await
        }
        ClientCommand::Limits(a) => {
            let api = a.connection.client()?;
            let answer = match &a.change {
                None => api.call(reqwest::Method::GET, &["limits"], None).await?,
                Some(LimitChange::Set { name, concurrency, rate, burst }) => {
                    let body = serde_json::json!({"concurrency": concurrency, "rate_per_second": rate, "burst": burst});
                    api.call(reqwest::Method::PUT, &["limits", name], Some(&body)).await?
                }
                Some(LimitChange::Reset { name }) => api.call(reqwest::Method::DELETE, &["limits", name], None).await?,
            };
            print_json(&answer);
            Ok(EXIT_SUCCEEDED)
        }
        ClientCommand::Workflow(a) => workflow::run(a).await,
        ClientCommand::Pause(a) => toggle_pause(&a, "pause").await,
        ClientCommand::Resume(a) => toggle_pause(&a, "resume").await,
        ClientCommand::Cancel(a) => {
            let api = a.connection.client()?;
            let (code, job) = api.cancel(&a.id).await?;
            print_json(&job);
            if code == reqwest::StatusCode::ACCEPTED {
                eprintln!(
                    "cancel requested: the running job stops at its next check; follow it with `runq wait {}`",
                    a.id
                );
            }
            Ok(EXIT_SUCCEEDED)
        }
        ClientCommand::Jobs(a) => {
            let api = a.connection.client()?;
            let query: Vec<(&str, String)> = [
                ("status", a.status.clone()),
                ("function", a.function.clone()),
                ("limit", a.limit.map(|l| l.to_string())),
                ("cursor", a.cursor.clone()),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
            let page = api.list(&query).await?;
            if a.json {
                print_json(&page);
            } else {
                print!("{}", jobs_table(&page));
            }
            if let Some(cursor) = page.get("next_cursor").and_then(Value::as_str) {
                eprintln!("more jobs: add --cursor {cursor}");
            }
            Ok(EXIT_SUCCEEDED)
        }
    }
}

/// JSON from the command line: `raw` itself, or the file `@PATH` names; `what` says which flag.
pub(crate) fn read_json(raw: &str, what: &str) -> Result<Value, ClientError> {
    let raw = raw.trim();
    let (text, source) = match raw.strip_prefix('@') {
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| ClientError::Usage(format!("can't read {what} file {path:?}: {e}")))?,
            format!("the file {path:?}"),
        ),
        None => (raw.to_owned(), what.to_owned()),
    };
    serde_json::from_str::<Value>(&text).map_err(|e| ClientError::Usage(format!("{source} is not valid JSON: {e}")))
}

/// The `POST /jobs` body from the command line; `--args` must be JSON (or `@FILE` holding it).
fn submit_body(a: &SubmitArgs) -> Result<Value, ClientError> {
    let args = a.args.as_deref().map(|raw| read_json(raw, "--args")).transpose()?;
    let mut body = serde_json::Map::new();
    body.insert("function".into(), a.function.clone().into());
    if let Some(args) = args {
        body.insert("args".into(), args);
    }
    if let Some(priority) = &a.priority {
        body.insert("priority".into(), priority.clone().into());
    }
    if let Some(max_attempts) = a.max_attempts {
        body.insert("max_attempts".into(), max_attempts.into());
    }
    if let Some(delay) = a.delay {
        body.insert("delay_seconds".into(), delay.into());
    }
    if let Some(key) = &a.unique_key {
        body.insert("unique_key".into(), key.clone().into());
    }
    if let Some(debounce) = a.debounce {
        body.insert("debounce_seconds".into(), debounce.into());
    }
    Ok(Value::Object(body))
}

fn job_id(job: &Value) -> Result<String, ClientError> {
    job.get("id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ClientError::Protocol { url: "POST /jobs".into(), reason: "the job has no id".into() })
}

/// Prints `value` as pretty JSON on stdout.
pub(crate) fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()));
}

/// A page of `GET /jobs` as an aligned table, one job per line.
/// `runq bulk list`'s table.
fn operations_table(page: &Value) -> String {
    let ops = page.get("operations").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let text = |op: &Value, field: &str| op.get(field).and_then(Value::as_str).unwrap_or("-").to_owned();
    let number =
        |op: &Value, field: &str| op.get(field).and_then(Value::as_i64).map_or("?".to_owned(), |n| n.to_string());
    let mut rows = vec![["ID", "ACTION", "STATUS", "DONE", "AFFECTED", "OWNER", "CREATED"].map(str::to_owned)];
    for op in ops {
        rows.push([
            text(op, "id"),
            text(op, "action"),
            text(op, "status"),
            format!("{}/{}", number(op, "done"), number(op, "matched")),
            number(op, "affected"),
            text(op, "owner"),
            text(op, "created_at"),
        ]);
    }
    table(&rows)
}

fn jobs_table(page: &Value) -> String {
    let jobs = page.get("jobs").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let text = |job: &Value, field: &str| job.get(field).and_then(Value::as_str).unwrap_or("-").to_owned();
    let mut rows = vec![["ID", "STATUS", "PROGRESS", "FUNCTION", "CREATED"].map(str::to_owned)];
    for job in jobs {
        let progress = job.get("progress").and_then(Value::as_f64).unwrap_or(0.0);
        rows.push([
            text(job, "id"),
            text(job, "status"),
            format!("{}%", (progress.clamp(0.0, 1.0) * 100.0).floor()),
            text(job, "function"),
            text(job, "created_at"),
        ]);
    }
    table(&rows)
}

/// Rows as aligned columns, two spaces apart.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn submit_args(args: Option<&str>) -> SubmitArgs {
        SubmitArgs {
            function: "sleep".into(),
            args: args.map(str::to_owned),
            priority: Some("high".into()),
            max_attempts: None,
            delay: Some(1.5),
            idempotency_key: None,
            unique_key: None,
            debounce: None,
            wait: false,
            connection: Connection { api_url: String::new(), token: None, sub: None, auth: Default::default() },
        }
    }

    #[test]
    fn submit_body_carries_only_what_was_given() {
        let body = submit_body(&submit_args(Some(r#" {"seconds": 1} "#))).unwrap();
        assert_eq!(
            body,
            json!({"function": "sleep", "args": {"seconds": 1}, "priority": "high", "delay_seconds": 1.5})
        );
        let body = submit_body(&submit_args(None)).unwrap();
        assert!(body.get("args").is_none());
        let keyed = SubmitArgs { unique_key: Some("k".into()), debounce: Some(2.0), delay: None, ..submit_args(None) };
        assert_eq!(
            submit_body(&keyed).unwrap(),
            json!({"function": "sleep", "priority": "high", "unique_key": "k", "debounce_seconds": 2.0})
        );
        let err = submit_body(&submit_args(Some("{seconds: 1}"))).unwrap_err();
        assert!(err.to_string().contains("--args is not valid JSON"), "{err}");
        let err = submit_body(&submit_args(Some("@/no/such/file.json"))).unwrap_err();
        assert!(err.to_string().contains("can't read --args file"), "{err}");
    }

    #[test]
    fn jobs_table_aligns_columns() {
        let page = json!({"jobs": [
            {"id": "a1", "status": "running", "progress": 0.5, "function": "sleep", "created_at": "t1"},
            {"id": "b2", "status": "succeeded", "progress": 1.0, "function": "noop", "created_at": "t2"},
        ], "next_cursor": null});
        assert_eq!(
            jobs_table(&page),
            "ID  STATUS     PROGRESS  FUNCTION  CREATED\n\
             a1  running    50%       sleep     t1\n\
             b2  succeeded  100%      noop      t2\n"
        );
    }
}
