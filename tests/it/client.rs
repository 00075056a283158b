//! The `runq submit/status/cancel/wait/jobs` client: the real binary against the real API over
//! loopback and a fresh database per test. The test moves jobs through their states with SQL
//! while the client polls, and reads what the client printed as it happened.

use std::process::{Output, Stdio};
use std::time::Duration;

use runq::function::Registry;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};
use uuid::Uuid;

use crate::common::{AUDIENCE, SECRET, TestApi, counts, start_api, token};

/// The longest a single expected change may take to show (the client polls at most every 2 s).
const PATIENCE: Duration = Duration::from_secs(10);

/// The real binary with a clean environment, pointed at `base` as `alice`.
fn runq(base: &str) -> Command {
    let mut cmd = Command::new(crate::common::runq_bin());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUNQ_API_URL", base)
        .env("RUNQ_TOKEN", token("alice"))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn run(base: &str, args: &[&str]) -> Output {
    tokio::time::timeout(PATIENCE, runq(base).args(args).output()).await.expect("the command finishes").unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is JSON ({e}): {}\nstderr: {}", text(&out.stdout), text(&out.stderr)))
}

/// Submits through the API as `alice`; the job's id.
async fn submit(api: &TestApi, body: Value) -> String {
    let resp = api.http.post(api.url("/jobs")).bearer_auth(token("alice")).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED);
    resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

async fn set(pool: &PgPool, id: &str, assignments: &str) {
    let id: Uuid = id.parse().unwrap();
    let sql = format!("UPDATE jobs SET {assignments}, updated_at = now() WHERE id = $1");
    let done = sqlx::query(&sql).bind(id).execute(pool).await.unwrap();
    assert_eq!(done.rows_affected(), 1, "{sql}");
}

async fn db_status(pool: &PgPool, id: &str) -> String {
    let id: Uuid = id.parse().unwrap();
    sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1").bind(id).fetch_one(pool).await.unwrap()
}

/// A client started in the background, whose stderr is read line by line as it comes.
struct Running {
    child: Child,
    stderr: Lines<BufReader<ChildStderr>>,
    seen: Vec<String>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        Self { child, stderr, seen: Vec::new() }
    }

    /// Reads stderr until a line contains every one of `parts`; fails after [`PATIENCE`].
    async fn expect(&mut self, parts: &[&str]) {
        let found = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = self.stderr.next_line().await.unwrap() {
                let hit = parts.iter().all(|p| line.contains(p));
                self.seen.push(line);
                if hit {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(matches!(found, Ok(true)), "a stderr line with {parts:?}; saw {:#?}", self.seen);
    }

    /// Waits for the exit; the exit code, stdout and the rest of stderr.
    async fn finish(mut self) -> (i32, String, Vec<String>) {
        let mut out = self.child.stdout.take().unwrap();
        let (status, stdout, rest) = tokio::time::timeout(PATIENCE, async {
            let mut stdout = String::new();
            let mut rest = Vec::new();
            let read_out = tokio::io::AsyncReadExt::read_to_string(&mut out, &mut stdout);
            let read_err = async {
                while let Some(line) = self.stderr.next_line().await.unwrap() {
                    rest.push(line);
                }
            };
            tokio::join!(read_out, read_err).0.unwrap();
            (self.child.wait().await.unwrap(), stdout, rest)
        })
        .await
        .expect("the client exits");
        self.seen.extend(rest);
        (status.code().unwrap_or(-1), stdout, self.seen)
    }
}

#[sqlx::test]
async fn submit_prints_the_job_and_stores_it(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let out = run(
        &api.base,
        &["submit", "echo", "--args", r#"{"value": [1, 2]}"#, "--priority", "high", "--max-attempts", "2"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let job = stdout_json(&out);
    assert_eq!((job["status"].as_str(), job["function"].as_str()), (Some("queued"), Some("echo")));
    let id: Uuid = job["id"].as_str().unwrap().parse().unwrap();
    let row: (String, String, String, Value, i32) =
        sqlx::query_as("SELECT owner, function, priority, args, max_attempts FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(row, ("alice".into(), "echo".into(), "high".into(), json!({"value": [1, 2]}), 2));

    // The same idempotency key twice: one job.
    let args = ["submit", "noop", "--idempotency-key", "nightly-1", "--delay", "60"];
    let first = stdout_json(&run(&api.base, &args).await);
    let again = stdout_json(&run(&api.base, &args).await);
    assert_eq!(first["id"], again["id"]);
    assert_eq!(counts(&pool).await, (2, 1));
}

#[sqlx::test]
async fn without_a_token_it_mints_one_from_the_local_secret(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let out = runq(&api.base)
        .env_remove("RUNQ_TOKEN")
        .env("RUNQ_AUTH_HS256_SECRET", SECRET)
        .env("RUNQ_AUTH_AUDIENCE", AUDIENCE)
        .args(["submit", "noop", "--sub", "bob"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let owner: String = sqlx::query_scalar("SELECT owner FROM jobs").fetch_one(&pool).await.unwrap();
    assert_eq!(owner, "bob");

    let out = runq(&api.base).env_remove("RUNQ_TOKEN").args(["submit", "noop"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("RUNQ_TOKEN"), "says how to get a token: {}", text(&out.stderr));
    assert_eq!(counts(&pool).await.0, 1);
}

#[sqlx::test]
async fn refused_submits_exit_2_with_the_api_detail_and_write_nothing(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let cases: [(&[&str], &str); 5] = [
        (&["submit", "nope"], "unknown function `nope`"),
        (&["submit", "sleep", "--args", r#"{"seconds": "long"}"#], "invalid args for `sleep`"),
        (&["submit", "noop", "--priority", "urgent"], "unknown priority `urgent`"),
        (&["submit", "noop", "--max-attempts", "1000"], "max_attempts"),
        (&["submit", "noop", "--args", "{not json"], "--args is not valid JSON"),
    ];
    for (args, detail) in cases {
        let out = run(&api.base, args).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(detail), "{args:?} prints {detail:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} prints nothing on stdout");
    }
    let out = runq(&api.base).env("RUNQ_TOKEN", "not-a-jwt").args(["submit", "noop"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("HTTP 401"), "{}", text(&out.stderr));
    assert_eq!(counts(&pool).await, (0, 0));
}

#[sqlx::test]
async fn status_cancel_and_jobs(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let id = submit(&api, json!({"function": "sleep", "args": {"seconds": 1}})).await;

    let out = run(&api.base, &["status", &id]).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let job = stdout_json(&out);
    assert_eq!((job["id"].as_str(), job["status"].as_str()), (Some(id.as_str()), Some("queued")));
    assert_eq!(job["args"], json!({"seconds": 1}));

    let out = run(&api.base, &["jobs", "--status", "queued"]).await;
    let table = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(table.starts_with("ID ") && table.contains(&id) && table.contains("sleep"), "{table}");

    let out = run(&api.base, &["cancel", &id]).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(stdout_json(&out)["status"], "cancelled");
    assert_eq!(db_status(&pool, &id).await, "cancelled");

    // A running job is asked to stop: 202, and the row says so.
    let running = submit(&api, json!({"function": "noop"})).await;
    set(&pool, &running, "status = 'running', attempt = 1, started_at = now()").await;
    let out = run(&api.base, &["cancel", &running]).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cancel requested"), "{}", text(&out.stderr));
    let requested: bool = sqlx::query_scalar("SELECT cancel_requested FROM jobs WHERE id = $1")
        .bind(running.parse::<Uuid>().unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(requested);

    let out = run(&api.base, &["jobs", "--status", "cancelled", "--json", "--limit", "1"]).await;
    let page = stdout_json(&out);
    assert_eq!(page["jobs"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["jobs"][0]["id"].as_str(), Some(id.as_str()));
    assert!(page["next_cursor"].is_null());

    let out = run(&api.base, &["jobs", "--status", "done"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown status `done`"), "{}", text(&out.stderr));
}

#[sqlx::test]
async fn wait_shows_each_change_and_exits_0_when_the_job_succeeds(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let id = submit(&api, json!({"function": "sleep", "args": {"seconds": 1, "steps": 2}})).await;
    let mut client = Running::spawn({
        let mut cmd = runq(&api.base);
        cmd.args(["wait", &id]);
        cmd
    });
    client.expect(&["queued", "0%"]).await;
    set(&pool, &id, "status = 'running', attempt = 1, started_at = now()").await;
    client.expect(&["running", "0%"]).await;
    set(&pool, &id, "progress = 0.5, message = 'step 1 of 2'").await;
    client.expect(&["running", "50%", "step 1 of 2"]).await;
    set(
        &pool,
        &id,
        "status = 'succeeded', progress = 1, message = 'done', finished_at = now(), result = '{\"slept\": 1}'",
    )
    .await;
    let (code, stdout, lines) = client.finish().await;
    assert_eq!(code, 0, "stderr: {lines:#?}");
    assert!(lines.iter().any(|l| l.contains("succeeded") && l.contains("100%")), "{lines:#?}");
    let queued_lines = lines.iter().filter(|l| l.starts_with("queued")).count();
    assert_eq!(queued_lines, 1, "one line per change, not per poll: {lines:#?}");
    let job: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!((job["status"].as_str(), &job["result"]), (Some("succeeded"), &json!({"slept": 1})));
}

#[sqlx::test]
async fn submit_wait_exits_1_when_the_job_fails(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let mut client = Running::spawn({
        let mut cmd = runq(&api.base);
        cmd.args(["submit", "fail", "--args", r#"{"message": "disk full"}"#, "--wait"]);
        cmd
    });
    client.expect(&["submitted job"]).await;
    let id = client.seen[0].rsplit(' ').next().unwrap().to_owned();
    client.expect(&["queued"]).await;
    set(
        &pool,
        &id,
        "status = 'failed', attempt = 1, started_at = now(), finished_at = now(), \
         error = '{\"kind\": \"error\", \"message\": \"disk full\", \"retryable\": false}'",
    )
    .await;
    let (code, stdout, lines) = client.finish().await;
    assert_eq!(code, 1, "stderr: {lines:#?}");
    assert!(lines.iter().any(|l| l.contains("failed: error: disk full")), "error kind and message: {lines:#?}");
    let job: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!((job["id"].as_str(), job["status"].as_str()), (Some(id.as_str()), Some("failed")));
}

#[sqlx::test]
async fn status_wait_exits_1_when_the_job_is_cancelled(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let id = submit(&api, json!({"function": "noop"})).await;
    let mut client = Running::spawn({
        let mut cmd = runq(&api.base);
        cmd.args(["status", &id, "--wait"]);
        cmd
    });
    client.expect(&["queued"]).await;
    let out = run(&api.base, &["cancel", &id]).await;
    assert_eq!(out.status.code(), Some(0));
    let (code, stdout, lines) = client.finish().await;
    assert_eq!(code, 1, "stderr: {lines:#?}");
    assert!(lines.iter().any(|l| l.contains(&format!("job {id} was cancelled"))), "{lines:#?}");
    assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap()["status"], "cancelled");
}

#[sqlx::test]
async fn unknown_or_foreign_ids_exit_2(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let unknown = Uuid::now_v7().to_string();
    for args in [vec!["wait", unknown.as_str()], vec!["status", unknown.as_str()], vec!["cancel", unknown.as_str()]] {
        let out = run(&api.base, &args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).contains(&format!("no job with id {unknown}")), "{args:?}: {}", text(&out.stderr));
    }
    let out = run(&api.base, &["wait", "../jobs"]).await;
    assert_eq!(out.status.code(), Some(2));
    // Another owner's job is not found either.
    let theirs = submit(&api, json!({"function": "noop"})).await;
    let out = runq(&api.base).env("RUNQ_TOKEN", token("mallory")).args(["wait", &theirs]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no job with id"), "{}", text(&out.stderr));
}

#[sqlx::test]
async fn ctrl_c_stops_waiting_and_says_how_to_resume(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let id = submit(&api, json!({"function": "noop"})).await;
    let mut client = Running::spawn({
        let mut cmd = runq(&api.base);
        cmd.args(["wait", &id]);
        cmd
    });
    client.expect(&["queued"]).await;
    let pid = client.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let (code, stdout, lines) = client.finish().await;
    assert_eq!(code, 130, "stderr: {lines:#?}");
    assert!(lines.iter().any(|l| l.contains(&format!("runq wait {id}"))), "{lines:#?}");
    assert!(stdout.is_empty());
    assert_eq!(db_status(&pool, &id).await, "queued", "the job is left alone");
}

#[sqlx::test]
async fn wait_rides_out_an_api_that_is_down_and_comes_back(pool: PgPool) {
    // The job exists, but no API listens on the port yet: a restart in progress.
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO jobs (id, owner, function, priority, args, status, max_attempts) VALUES ($1, 'alice', 'noop', 'medium', '{}', 'queued', 3)")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let port = crate::common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut client = Running::spawn({
        let mut cmd = runq(&base);
        cmd.args(["wait", &id.to_string()]);
        cmd
    });
    client.expect(&["can't reach the runq API", "retrying"]).await;

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    crate::common::serve_api(
        listener,
        pool.clone(),
        Registry::builtin(),
        runq::schedule::Schedules::builtin(),
        crate::common::settings(),
        runq::auth::GOOGLE_JWKS_URL,
    );
    client.expect(&["queued"]).await;
    set(&pool, &id.to_string(), "status = 'succeeded', attempt = 1, progress = 1, finished_at = now()").await;
    let (code, stdout, lines) = client.finish().await;
    assert_eq!(code, 0, "stderr: {lines:#?}");
    assert!(lines.iter().any(|l| l.contains("the API answers again")), "{lines:#?}");
    assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap()["status"], "succeeded");
}

#[sqlx::test]
async fn retry_and_bulk_through_the_cli(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let a = submit(&api, json!({"function": "noop"})).await;
    let b = submit(&api, json!({"function": "noop"})).await;
    let c = submit(&api, json!({"function": "sleep", "args": {"seconds": 1}})).await;
    for id in [&a, &b, &c] {
        set(&pool, id, "status = 'failed', attempt = max_attempts, finished_at = now(), error = '{\"kind\": \"timeout\", \"message\": \"slow\", \"retryable\": true}'").await;
    }

    let out = run(&api.base, &["retry", &a]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(stdout_json(&out)["status"], "queued");
    let out = run(&api.base, &["retry", &a]).await;
    assert_eq!(out.status.code(), Some(2), "a queued job can't be retried");
    assert!(
        text(&out.stderr).contains("409") || text(&out.stderr).contains("only failed or cancelled"),
        "{}",
        text(&out.stderr)
    );

    let out = run(&api.base, &["bulk", "retry", "--function", "noop", "--error-kind", "timeout", "--dry-run"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "1");
    let out = run(&api.base, &["bulk", "retry", "--error-kind", "bogus"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown error kind"), "{}", text(&out.stderr));

    let out = run(&api.base, &["bulk", "retry", "--status", "failed", "--wait"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let op = stdout_json(&out);
    assert_eq!(
        (op["status"].as_str(), op["matched"].as_i64(), op["affected"].as_i64()),
        (Some("finished"), Some(2), Some(2))
    );
    assert!(text(&out.stderr).contains("2 of 2 done"), "{}", text(&out.stderr));
    for id in [&a, &b, &c] {
        assert_eq!(db_status(&pool, id).await, "queued");
    }

    let out = run(&api.base, &["bulk", "cancel", "--function", "sleep"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let op = stdout_json(&out);
    assert_eq!(op["action"], "cancel");
    assert!(op["id"].is_string());
}

#[sqlx::test]
async fn bulk_list_through_the_cli(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let mut ids = Vec::new();
    for function in ["one", "two", "three"] {
        let out = run(&api.base, &["bulk", "retry", "--function", function, "--wait"]).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        ids.push(stdout_json(&out)["id"].as_str().unwrap().to_owned());
    }

    // A table, newest first.
    let out = run(&api.base, &["bulk", "list"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID") && lines[0].contains("ACTION") && lines[0].contains("DONE"), "{table}");
    let listed: Vec<&str> = lines[1..].iter().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str(), ids[0].as_str()], "{table}");
    assert!(lines[1].contains("retry") && lines[1].contains("finished") && lines[1].contains("alice"), "{table}");

    // Pages: the cursor printed on stderr continues the list.
    let out = run(&api.base, &["bulk", "list", "--limit", "2", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = stdout_json(&out);
    assert_eq!(page["operations"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    assert!(text(&out.stderr).contains(&format!("--cursor {cursor}")), "{}", text(&out.stderr));
    let out = run(&api.base, &["bulk", "list", "--json", "--cursor", &cursor]).await;
    let page = stdout_json(&out);
    assert_eq!(page["operations"][0]["id"].as_str(), Some(ids[0].as_str()));
    assert_eq!(page["next_cursor"], Value::Null);

    // The options of the other form are refused before any request.
    for args in
        [&["bulk", "list", "--function", "x"][..], &["bulk", "list", "--dry-run"], &["bulk", "retry", "--limit", "2"]]
    {
        let out = run(&api.base, args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).contains("bulk list"), "{args:?}: {}", text(&out.stderr));
    }
    let out = run(&api.base, &["bulk", "list", "--cursor", "garbage"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cursor"), "{}", text(&out.stderr));
    let ops: i64 = sqlx::query_scalar("SELECT count(*) FROM operations").fetch_one(&pool).await.unwrap();
    assert_eq!(ops, 3, "the refused commands started nothing");
}
