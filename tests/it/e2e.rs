//! End to end over real sockets: the API, the embedded Pub/Sub emulator pushing with OIDC, the
//! workers and the sweep, against a fresh database per test (a `runq dev` stack). Nothing mocked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use runq::dev::{DevOptions, DevStack};
use runq::function::{Context, Echo, Fail, Function, FunctionError, Registry, Sleep};
use runq::job::Priority;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::common::database_url;

pub const SECRET: &str = "e2e-secret-0123456789abcdef012345";

/// `noop` that counts how often its body runs, per job.
#[derive(Clone, Default)]
struct CountingNoop(Arc<Mutex<HashMap<Uuid, u32>>>);

impl Function for CountingNoop {
    type Args = serde_json::Value;
    type Output = serde_json::Value;
    fn name(&self) -> &'static str {
        "noop"
    }
    async fn run(&self, ctx: Context, _args: Value) -> Result<Value, FunctionError> {
        *self.0.lock().unwrap().entry(ctx.job_id()).or_default() += 1;
        Ok(Value::Null)
    }
}

/// Sleeps far past its 1 s hard limit.
struct Slow;
impl Function for Slow {
    type Args = serde_json::Value;
    type Output = serde_json::Value;
    fn name(&self) -> &'static str {
        "slow"
    }
    fn hard_time_limit(&self) -> Duration {
        Duration::from_secs(1)
    }
    async fn run(&self, _ctx: Context, _args: Value) -> Result<Value, FunctionError> {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(Value::Null)
    }
}

/// Panics on its first attempt.
struct PanicOnce;
impl Function for PanicOnce {
    type Args = serde_json::Value;
    type Output = serde_json::Value;
    fn name(&self) -> &'static str {
        "panic_once"
    }
    fn backoff(&self) -> runq::function::Backoff {
        runq::function::Backoff { initial: Duration::from_millis(100), max: Duration::from_millis(100) }
    }
    async fn run(&self, ctx: Context, _args: Value) -> Result<Value, FunctionError> {
        if ctx.attempt() == 1 {
            panic!("boom on attempt 1");
        }
        Ok(json!({"attempt": ctx.attempt()}))
    }
}

/// Fans out: one `echo` child per item, then returns the children's ids.
struct Playlist;
impl Function for Playlist {
    type Args = Vec<String>;
    type Output = Vec<Uuid>;
    fn name(&self) -> &'static str {
        "playlist"
    }
    async fn run(&self, ctx: Context, videos: Vec<String>) -> Result<Vec<Uuid>, FunctionError> {
        let children = videos.into_iter().map(|v| runq::function::ChildJob::new("echo", json!({"value": v}))).collect();
        ctx.spawn(children).await
    }
}

/// Fans out like [`Playlist`], each child unique by its item: `video:{item}`.
struct UniquePlaylist;
impl Function for UniquePlaylist {
    type Args = Vec<String>;
    type Output = Vec<Uuid>;
    fn name(&self) -> &'static str {
        "unique_playlist"
    }
    async fn run(&self, ctx: Context, videos: Vec<String>) -> Result<Vec<Uuid>, FunctionError> {
        let children = videos
            .into_iter()
            .map(|v| runq::function::ChildJob::new("echo", json!({"value": v})).unique(format!("video:{v}")))
            .collect();
        ctx.spawn(children).await
    }
}

/// A long function: detached from the push request (its hard limit is over Pub/Sub's deadline).
pub struct Long;
impl Function for Long {
    type Args = serde_json::Value;
    type Output = serde_json::Value;
    fn name(&self) -> &'static str {
        "long"
    }
    fn hard_time_limit(&self) -> Duration {
        Duration::from_secs(3 * 3600)
    }
    fn detached(&self) -> bool {
        true
    }
    async fn run(&self, ctx: Context, _args: Value) -> Result<Value, FunctionError> {
        for step in 1..=3 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            ctx.progress(step as f32 / 3.0, format!("part {step}"));
        }
        Ok(json!("done"))
    }
}

/// Routed to a queue of its own (a bigger worker service in production).
struct Transcode;
impl Function for Transcode {
    type Args = serde_json::Value;
    type Output = serde_json::Value;
    fn name(&self) -> &'static str {
        "transcode"
    }
    fn queue(&self) -> Option<&'static str> {
        Some("heavy")
    }
    async fn run(&self, _ctx: Context, args: Value) -> Result<Value, FunctionError> {
        Ok(args)
    }
}

/// Drops its context at once, then works for a while without it.
struct Aloof;
impl Function for Aloof {
    type Args = serde_json::Value;
    type Output = serde_json::Value;
    fn name(&self) -> &'static str {
        "aloof"
    }
    async fn run(&self, ctx: Context, _args: Value) -> Result<Value, FunctionError> {
        drop(ctx);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Ok(Value::Null)
    }
}

/// This process's CPU time so far (user + system), from /proc.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// Writes what Postgres can't store (NUL) into its progress message, its result or its error,
/// as `{"into": "progress" | "result" | "error"}` says.
struct Nul;
impl Function for Nul {
    type Args = serde_json::Value;
    type Output = serde_json::Value;
    fn name(&self) -> &'static str {
        "nul"
    }
    async fn run(&self, ctx: Context, args: Value) -> Result<Value, FunctionError> {
        match args["into"].as_str() {
            Some("progress") => {
                ctx.progress(0.5, "half\0way");
                Ok(json!("ok"))
            }
            Some("error") => Err(FunctionError::Fatal("bad\0thing".into())),
            _ => Ok(json!({"text": "a\0b"})),
        }
    }
}

/// Returns a result over the 64 KiB inline limit.
struct Big;
impl Function for Big {
    type Args = serde_json::Value;
    type Output = serde_json::Value;
    fn name(&self) -> &'static str {
        "big"
    }
    async fn run(&self, _ctx: Context, _args: Value) -> Result<Value, FunctionError> {
        Ok(json!({"blob": "x".repeat(70 * 1024)}))
    }
}

/// Waits until the sum of metric `name` over its labels, as this process's `/metrics` would
/// show it, reaches `at_least`: an event the system emits, not a guess at how long it takes.
pub async fn wait_for_metric(name: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = runq::telemetry::metrics::handle().render();
        let total: f64 = text
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if total >= at_least {
            return;
        }
        assert!(Instant::now() < deadline, "{name} stayed at {total}, below {at_least}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub struct Stack {
    pub dev: DevStack,
    pub http: reqwest::Client,
    pub token: String,
    counts: Arc<Mutex<HashMap<Uuid, u32>>>,
}

fn registry(counter: &CountingNoop) -> Registry {
    let mut r = Registry::default();
    r.register(counter.clone()).unwrap();
    r.register(Sleep).unwrap();
    r.register(Echo).unwrap();
    r.register(Fail).unwrap();
    r.register(Slow).unwrap();
    r.register(PanicOnce).unwrap();
    r.register(Big).unwrap();
    r.register(Playlist).unwrap();
    r.register(UniquePlaylist).unwrap();
    r.register(Long).unwrap();
    r.register(Transcode).unwrap();
    r.register(Aloof).unwrap();
    r.register(Nul).unwrap();
    r.register(runq::function::Wordcount::default()).unwrap();
    r
}

pub fn options(pool: &PgPool) -> DevOptions {
    let mut o = DevOptions::new(database_url(pool), SECRET.into());
    o.api_addr = "127.0.0.1:0".into();
    o.emulator_addr = "127.0.0.1:0".into();
    o.sweep_every = Duration::from_millis(200);
    o.lease = Duration::from_secs(3);
    o.push_backoff = (Duration::from_secs(1), Duration::from_secs(2));
    o.grace = Duration::from_secs(1);
    o
}

pub async fn stack_with(options: DevOptions) -> Stack {
    let counter = CountingNoop::default();
    let dev = DevStack::start(options, registry(&counter)).await.expect("dev stack starts");
    let token =
        runq::auth::mint_hs256(SECRET, "e2e", false, Duration::from_secs(3600), "scope", "runq:admin", None, None)
            .unwrap();
    Stack { dev, http: reqwest::Client::new(), token, counts: counter.0 }
}

pub async fn stack(pool: &PgPool) -> Stack {
    stack_with(options(pool)).await
}

impl Stack {
    pub async fn submit(&self, body: Value) -> Value {
        let resp = self
            .http
            .post(format!("{}/jobs", self.dev.api_url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "submit {body}");
        resp.json().await.unwrap()
    }

    pub async fn job(&self, id: &str) -> Value {
        self.http
            .get(format!("{}/jobs/{id}", self.dev.api_url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Polls the job until `done(job)` or `within` passes.
    pub async fn wait_until(&self, id: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let job = self.job(id).await;
            if done(&job) {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} did not get there in {within:?}: {job}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn finished(&self, id: &str) -> Value {
        self.wait_until(id, Duration::from_secs(90), |j| j["finished_at"].is_string()).await
    }
}

/// A `job_runs` row: attempt, outcome, retry_at, started_at, finished_at.
type RunRow = (i32, String, Option<Ts>, Ts, Option<Ts>);
type Ts = chrono::DateTime<chrono::Utc>;

fn id(job: &Value) -> String {
    job["id"].as_str().unwrap().to_owned()
}

#[sqlx::test]
async fn a_thousand_noops_across_priorities_each_run_exactly_once(pool: PgPool) {
    let s = stack(&pool).await;
    let priorities = ["high", "medium", "low"];
    let mut ids = Vec::new();
    let jobs = futures::future::join_all(
        (0..1000).map(|i| s.submit(json!({"function": "noop", "priority": priorities[i % 3]}))),
    )
    .await;
    for job in &jobs {
        ids.push(Uuid::parse_str(job["id"].as_str().unwrap()).unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'succeeded'").fetch_one(&pool).await.unwrap();
        if done == 1000 {
            break;
        }
        assert!(Instant::now() < deadline, "only {done} of 1000 succeeded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counts = s.counts.lock().unwrap().clone();
    assert_eq!(counts.len(), 1000, "every job's body ran");
    assert!(ids.iter().all(|id| counts[id] == 1), "each body ran exactly once");
    let by_priority: Vec<(String, i64)> =
        sqlx::query_as("SELECT priority, count(*) FROM jobs GROUP BY priority ORDER BY priority")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(by_priority, vec![("high".into(), 334), ("low".into(), 333), ("medium".into(), 333)]);
    let runs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM job_runs WHERE outcome = 'succeeded'").fetch_one(&pool).await.unwrap();
    assert_eq!(runs, 1000);
    // The workers count their runs (one process-wide recorder here: all three queues).
    let (_, worker) = &s.dev.worker_urls[0];
    let metrics = s.http.get(worker.replace("/push", "/metrics")).send().await.unwrap().text().await.unwrap();
    let succeeded: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("runq_job_runs_total{") && l.contains(r#"outcome="succeeded""#))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(succeeded, 1000.0, "{metrics}");
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn sleep_progress_rises_while_it_runs(pool: PgPool) {
    let s = stack(&pool).await;
    let job = s.submit(json!({"function": "sleep", "args": {"seconds": 2, "steps": 8}})).await;
    let url = format!("{}/jobs/{}/status", s.dev.api_url, id(&job));
    let mut seen: Vec<f64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status: Value = s.http.get(&url).bearer_auth(&s.token).send().await.unwrap().json().await.unwrap();
        if status["status"] == "running" {
            let p = status["progress"].as_f64().unwrap();
            if seen.last() != Some(&p) {
                seen.push(p);
            }
        }
        if status["status"] == "succeeded" {
            assert_eq!(status["progress"], 1.0);
            assert_eq!(status["message"], "step 8 of 8", "the last progress message is kept");
            break;
        }
        assert!(Instant::now() < deadline, "sleep finished");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "progress only rises: {seen:?}");
    assert!(seen.iter().filter(|p| **p > 0.0 && **p < 1.0).count() >= 3, "several intermediate values: {seen:?}");
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn retries_backoff_and_failures(pool: PgPool) {
    let s = stack(&pool).await;
    // Fails twice, then succeeds on attempt 3, with the backoff gaps recorded per run.
    let flaky = s.submit(json!({"function": "fail", "args": {"message": "flaky", "times": 2}})).await;
    let fatal = s.submit(json!({"function": "fail", "args": {"message": "bad input", "retryable": false}})).await;
    let exhausted = s.submit(json!({"function": "fail", "args": {"message": "always"}, "max_attempts": 2})).await;
    let slow = s.submit(json!({"function": "slow"})).await;
    let panicky = s.submit(json!({"function": "panic_once"})).await;

    let done = s.finished(&id(&flaky)).await;
    assert_eq!((done["status"].as_str(), done["attempt"].as_i64()), (Some("succeeded"), Some(3)));
    assert_eq!(done["result"], json!({"succeeded_on_attempt": 3}));
    let runs: Vec<RunRow> =
        sqlx::query_as("SELECT attempt, outcome, retry_at, started_at, finished_at FROM job_runs WHERE job_id = $1::uuid ORDER BY started_at")
            .bind(id(&flaky))
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        runs.iter().map(|r| (r.0, r.1.as_str())).collect::<Vec<_>>(),
        vec![(1, "retrying"), (2, "retrying"), (3, "succeeded")]
    );
    for (i, pair) in runs.windows(2).enumerate() {
        let (failed, next) = (&pair[0], &pair[1]);
        let retry_at = failed.2.expect("a retrying run records when it is due");
        let gap = retry_at - failed.4.unwrap();
        // Full jitter under a ceiling of 1 s, then 2 s (the default policy).
        assert!(
            gap >= chrono::Duration::zero()
                && gap <= chrono::Duration::milliseconds(1000 << i) + chrono::Duration::milliseconds(50),
            "gap {gap} within the backoff ceiling"
        );
        assert!(next.3 >= retry_at, "retry {} started at {} before it was due at {retry_at}", i + 2, next.3);
    }

    let done = s.finished(&id(&fatal)).await;
    assert_eq!((done["status"].as_str(), done["attempt"].as_i64()), (Some("failed"), Some(1)));
    assert_eq!(done["error"], json!({"kind": "error", "message": "bad input", "retryable": false}));

    let done = s.finished(&id(&exhausted)).await;
    assert_eq!((done["status"].as_str(), done["attempt"].as_i64()), (Some("failed"), Some(2)));
    assert_eq!(done["error"], json!({"kind": "error", "message": "always", "retryable": true}));

    let done = s.finished(&id(&slow)).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"]["kind"], "timeout");

    let done = s.finished(&id(&panicky)).await;
    assert_eq!((done["status"].as_str(), done["attempt"].as_i64()), (Some("succeeded"), Some(2)));
    let first_error: Value = sqlx::query_scalar("SELECT error FROM job_runs WHERE job_id = $1::uuid AND attempt = 1")
        .bind(id(&panicky))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(first_error["kind"], "panic");
    assert!(first_error["message"].as_str().unwrap().contains("boom on attempt 1"));
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn cancel_before_and_during_a_run(pool: PgPool) {
    let s = stack(&pool).await;
    // Queued (delayed, so not yet dispatched): cancelled, never runs.
    let queued = s.submit(json!({"function": "noop", "delay_seconds": 1})).await;
    let resp = s
        .http
        .post(format!("{}/jobs/{}/cancel", s.dev.api_url, id(&queued)))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // Running: cancelled within a second of the request.
    let long = s.submit(json!({"function": "sleep", "args": {"seconds": 60, "steps": 600}})).await;
    s.wait_until(&id(&long), Duration::from_secs(10), |j| j["status"] == "running").await;
    let asked = Instant::now();
    let resp =
        s.http.post(format!("{}/jobs/{}/cancel", s.dev.api_url, id(&long))).bearer_auth(&s.token).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let done = s.wait_until(&id(&long), Duration::from_secs(5), |j| j["status"] == "cancelled").await;
    assert!(asked.elapsed() < Duration::from_secs(1), "cancelled {:?} after the request", asked.elapsed());
    assert_eq!(done["error"]["kind"], "cancelled");

    // A job submitted after it with the same delay has run: the relay went past the cancelled
    // one's due time, and it still never ran.
    let later = s.submit(json!({"function": "noop", "delay_seconds": 1})).await;
    assert_eq!(s.finished(&id(&later)).await["status"], "succeeded");
    let job = s.job(&id(&queued)).await;
    assert_eq!((job["status"].as_str(), job["attempt"].as_i64()), (Some("cancelled"), Some(0)));
    let queued_id = Uuid::parse_str(&id(&queued)).unwrap();
    assert!(!s.counts.lock().unwrap().contains_key(&queued_id), "the cancelled noop never ran");
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn a_message_delivered_twice_runs_once(pool: PgPool) {
    let s = stack(&pool).await;
    let job = s.submit(json!({"function": "noop", "priority": "high"})).await;
    let done = s.finished(&id(&job)).await;
    assert_eq!(done["status"], "succeeded");
    // Publish the very same message again, twice: acknowledged, not run.
    let publication = runq::store::Publication {
        id: Uuid::parse_str(&id(&job)).unwrap(),
        attempt: 0,
        function: "noop".into(),
        priority: Priority::High,
        queue: None,
        trace_context: None,
    };
    s.dev.dispatcher.publish(&publication).await.unwrap();
    s.dev.dispatcher.publish(&publication).await.unwrap();
    // A delayed marker job published after the duplicates finishes after them (same queue).
    let marker = s.submit(json!({"function": "noop", "priority": "high"})).await;
    s.finished(&id(&marker)).await;
    // Both duplicates were delivered and acknowledged as claim conflicts (the worker says so).
    wait_for_metric(runq::telemetry::metrics::CLAIM_CONFLICTS, 2.0).await;
    let counts = s.counts.lock().unwrap().clone();
    assert_eq!(counts[&Uuid::parse_str(&id(&job)).unwrap()], 1);
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM job_runs WHERE job_id = $1::uuid")
        .bind(id(&job))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(runs, 1);
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn emulator_down_at_submit_then_the_relay_dispatches(pool: PgPool) {
    let mut s = stack(&pool).await;
    s.dev.stop_emulator().await;
    let job = s.submit(json!({"function": "noop"})).await;
    // Recorded and safe, but not delivered while Pub/Sub is down: once a publish has failed
    // (the dispatcher counts it), the job is still queued and never claimed. (Its dispatched
    // mark may be set while a relay pass is trying; a failed try undoes it.)
    wait_for_metric(runq::telemetry::metrics::PUBLISH_ERRORS, 1.0).await;
    let (status, attempt): (String, i32) = sqlx::query_as("SELECT status, attempt FROM jobs WHERE id = $1::uuid")
        .bind(id(&job))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((status.as_str(), attempt), ("queued", 0));
    s.dev.restart_emulator().await.unwrap();
    let done = s.finished(&id(&job)).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(s.counts.lock().unwrap()[&Uuid::parse_str(&id(&job)).unwrap()], 1);
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn large_results_without_a_bucket_fail_clearly(pool: PgPool) {
    let s = stack(&pool).await;
    let job = s.submit(json!({"function": "big"})).await;
    let done = s.finished(&id(&job)).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"]["kind"], "result_too_large");
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn a_run_fans_out_into_child_jobs(pool: PgPool) {
    let s = stack(&pool).await;
    let parent = s.submit(json!({"function": "playlist", "args": ["intro", "talk", "q-and-a"]})).await;
    let done = s.finished(&id(&parent)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let children: Vec<String> =
        done["result"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    assert_eq!(children.len(), 3);
    for child in &children {
        let c = s.finished(child).await;
        assert_eq!((c["status"].as_str(), c["parent_id"].as_str()), (Some("succeeded"), Some(id(&parent).as_str())));
    }
    let parent_view = s.job(&id(&parent)).await;
    assert_eq!(parent_view["children"], json!({"succeeded": 3}));
    let listed: Value = s
        .http
        .get(format!("{}/jobs?parent={}", s.dev.api_url, id(&parent)))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut listed: Vec<String> = listed["jobs"].as_array().unwrap().iter().map(id).collect();
    listed.sort();
    let mut expected = children.clone();
    expected.sort();
    assert_eq!(listed, expected);
    let results: Vec<Value> = sqlx::query_scalar("SELECT result FROM jobs WHERE parent_id IS NOT NULL ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(results, vec![json!("intro"), json!("talk"), json!("q-and-a")]);
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn children_of_a_lost_claim_are_not_created(pool: PgPool) {
    sqlx::query(
        "INSERT INTO jobs (id, owner, function, priority, args, status, attempt, max_attempts, claim_id, lease_until)
         VALUES ('00000000-0000-0000-0000-000000000001', 'a', 'playlist', 'low', '[]', 'running', 1, 3,
                 '00000000-0000-0000-0000-0000000000aa', now() + interval '1 minute')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let args = serde_json::value::RawValue::from_string("{}".into()).unwrap();
    let child = runq::store::JobSpec {
        function: "noop",
        priority: Priority::Low,
        queue: None,
        args: &args,
        max_attempts: 3,
        delay_secs: None,
        unique_key: None,
        debounce_secs: None,
        limit_keys: Vec::new(),
    };
    let parent = Uuid::from_u128(1);
    let stale =
        runq::store::spawn_children(&pool, parent, Uuid::from_u128(0xbb), std::slice::from_ref(&child)).await.unwrap();
    assert!(stale.is_none(), "a stale claim spawns nothing");
    let fresh = runq::store::spawn_children(&pool, parent, Uuid::from_u128(0xaa), &[child]).await.unwrap().unwrap();
    assert_eq!(fresh.len(), 1);
    let owner: String =
        sqlx::query_scalar("SELECT owner FROM jobs WHERE parent_id = $1").bind(parent).fetch_one(&pool).await.unwrap();
    assert_eq!(owner, "a", "children belong to the parent's owner");
}

#[sqlx::test]
async fn a_function_with_a_queue_of_its_own_runs_on_that_queues_worker(pool: PgPool) {
    let s = stack(&pool).await;
    assert!(s.dev.worker_urls.iter().any(|(q, _)| q == "heavy"), "dev starts a worker for the heavy queue");
    let job = s.submit(json!({"function": "transcode", "args": {"video": 7}, "priority": "high"})).await;
    assert_eq!(job["queue"], "heavy");
    let done = s.finished(&id(&job)).await;
    assert_eq!((done["status"].as_str(), done["queue"].as_str()), (Some("succeeded"), Some("heavy")));
    let worker: String = sqlx::query_scalar("SELECT worker_id FROM job_runs").fetch_one(&pool).await.unwrap();
    assert!(worker.contains("/heavy/"), "ran on the heavy worker: {worker}");
    // Ordinary functions stay on their priority's queue.
    let plain = s.submit(json!({"function": "noop", "priority": "low"})).await;
    assert_eq!(plain["queue"], "low");
    s.dev.shutdown().await;
}

#[test]
fn queues_must_be_declared_and_well_named() {
    let app = runq::App::new().function(Transcode);
    assert!(app.check().unwrap_err().contains("queue `heavy` is used by a function but not declared"));
    let app = runq::App::new().function(Transcode).queue(runq::infra::QueueSpec::custom("heavy"));
    assert!(app.check().is_ok());
    let export = runq::infra::export(app.schedules(), app.queues());
    let heavy = export.queues.iter().find(|q| q.name == "heavy").expect("exported for infra/");
    assert_eq!((heavy.topic.as_str(), heavy.service.as_str()), ("runq-jobs-heavy", "runq-worker-heavy"));
    assert!(runq::App::new().queue(runq::infra::QueueSpec::custom("Heavy!")).check().is_err());
    assert!(runq::App::new().queue(runq::infra::QueueSpec::custom("high")).check().unwrap_err().contains("twice"));
}

#[sqlx::test]
async fn a_run_that_drops_its_context_doesnt_spin_the_worker(pool: PgPool) {
    let s = stack(&pool).await;
    let job = s.submit(json!({"function": "aloof"})).await;
    s.wait_until(&id(&job), Duration::from_secs(30), |j| j["status"] == "running").await;
    let before = cpu_time();
    let done = s.finished(&id(&job)).await;
    let used = cpu_time() - before;
    assert_eq!(done["status"], "succeeded");
    // The run idles ~1.5 s; a busy-polling worker would burn a whole core for it.
    assert!(used < Duration::from_millis(700), "the worker burnt {used:?} of CPU while the run slept");
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn a_debounced_job_runs_once_when_the_submits_stop_with_the_last_args(pool: PgPool) {
    let s = stack(&pool).await;
    let body = |v: i32| json!({"function": "noop", "args": {"v": v}, "unique_key": "e2e", "debounce_seconds": 2.0});
    let first = s.submit(body(0)).await;
    let job_id = Uuid::parse_str(&id(&first)).unwrap();
    // An early delivery (as if published before a push-back): not due, acknowledged, not run.
    let publication = runq::store::Publication {
        id: job_id,
        attempt: 0,
        function: "noop".into(),
        priority: Priority::Medium,
        queue: None,
        trace_context: None,
    };
    s.dev.dispatcher.publish(&publication).await.unwrap();
    wait_for_metric(runq::telemetry::metrics::CLAIM_CONFLICTS, 1.0).await;
    let mut last = first;
    for v in 1..=5 {
        let resp =
            s.http.post(format!("{}/jobs", s.dev.api_url)).bearer_auth(&s.token).json(&body(v)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        last = resp.json().await.unwrap();
        assert_eq!(
            (last["id"].as_str(), last["deduplicated"].as_bool()),
            (Some(job_id.to_string().as_str()), Some(true))
        );
    }
    let done = s.finished(&job_id.to_string()).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["args"], json!({"v": 5}));
    let started: Ts = done["started_at"].as_str().unwrap().parse().unwrap();
    let pushed: Ts = last["updated_at"].as_str().unwrap().parse().unwrap();
    assert!(started >= pushed + chrono::Duration::milliseconds(1990), "ran after the debounce: {started} vs {pushed}");
    assert_eq!(s.counts.lock().unwrap()[&job_id], 1, "ran once");
    let (jobs, runs): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM job_runs)")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((jobs, runs), (1, 1));
    s.dev.shutdown().await;
}
