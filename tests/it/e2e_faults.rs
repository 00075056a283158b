//! End to end, when things go wrong: refused pushes, a worker process killed mid-run, GCS
//! offload of large results, and jobs Pub/Sub can't deliver (dead letters).

use std::process::Stdio;
use std::time::Duration;

use google_cloud_pubsub::client::{Publisher, SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::push_config::OidcToken;
use google_cloud_pubsub::model::{Message, PushConfig};
use reqwest::StatusCode;
use runq::dev::DEV_PUSH_ACCOUNT;
use runq::dispatch::anonymous;
use runq::job::Priority;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::common::database_url;
use crate::e2e::{options, stack, stack_with};

use crate::common::free_port;

/// A local server that records the `Authorization` header of each push it gets.
pub async fn capture_server() -> (String, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/capture",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let tx = tx.clone();
            async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                let _ = tx.send(auth);
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/capture", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rx)
}

/// A real push token from the emulator, for `audience`, signed as the dev push account.
pub async fn emulator_token(emulator: &str, audience: &str, name: &str) -> String {
    emulator_token_as(emulator, audience, name, DEV_PUSH_ACCOUNT).await
}

/// A real OIDC token from the emulator for `audience`, signed as `account`.
pub async fn emulator_token_as(emulator: &str, audience: &str, name: &str, account: &str) -> String {
    let endpoint = format!("http://{emulator}");
    let (url, mut rx) = capture_server().await;
    let topics = TopicAdmin::builder().with_endpoint(&endpoint).with_credentials(anonymous()).build().await.unwrap();
    let subs =
        SubscriptionAdmin::builder().with_endpoint(&endpoint).with_credentials(anonymous()).build().await.unwrap();
    let topic = format!("projects/runq-dev/topics/{name}");
    topics.create_topic().set_name(&topic).send().await.unwrap();
    subs.create_subscription()
        .set_name(format!("projects/runq-dev/subscriptions/{name}"))
        .set_topic(&topic)
        .set_push_config(
            PushConfig::new()
                .set_push_endpoint(&url)
                .set_oidc_token(OidcToken::new().set_service_account_email(account).set_audience(audience)),
        )
        .send()
        .await
        .unwrap();
    let publisher =
        Publisher::builder(&topic).with_endpoint(&endpoint).with_credentials(anonymous()).build().await.unwrap();
    publisher.publish(Message::new().set_data("x")).await.unwrap();
    let auth = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
    auth.strip_prefix("Bearer ").expect("a bearer token").to_owned()
}

fn envelope(job_id: &str) -> String {
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD.encode(format!(r#"{{"job_id":"{job_id}","attempt":0}}"#));
    format!(
        r#"{{"message":{{"data":"{data}","messageId":"1","message_id":"1"}},"subscription":"projects/runq-dev/subscriptions/x"}}"#
    )
}

#[sqlx::test]
async fn refused_pushes_change_nothing(pool: PgPool) {
    let s = stack(&pool).await;
    let (_, worker_url) = s.dev.worker_urls.iter().find(|(q, _)| q == "medium").unwrap().clone();
    let good = emulator_token(&s.dev.emulator_host(), &worker_url, "good").await;
    let wrong_audience = emulator_token(&s.dev.emulator_host(), "https://someone-else.example/push", "wrong").await;
    let mut tampered = good.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });

    // A queued job that isn't due yet: a push for it must leave it exactly as it is.
    let job = s.submit(json!({"function": "noop", "delay_seconds": 600})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    let before: Value = sqlx::query_scalar("SELECT to_jsonb(jobs) FROM jobs").fetch_one(&pool).await.unwrap();
    let push = |token: Option<&str>, body: String| {
        let mut req = s.http.post(&worker_url).header("content-type", "application/json").body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let cases = [
        ("no token", push(None, envelope(&id)).await.unwrap().status(), StatusCode::UNAUTHORIZED),
        ("garbage token", push(Some("a.b.c"), envelope(&id)).await.unwrap().status(), StatusCode::UNAUTHORIZED),
        ("bad signature", push(Some(&tampered), envelope(&id)).await.unwrap().status(), StatusCode::UNAUTHORIZED),
        (
            "wrong audience",
            push(Some(&wrong_audience), envelope(&id)).await.unwrap().status(),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "malformed envelope",
            push(Some(&good), "{\"message\": 7}".into()).await.unwrap().status(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "not a runq message",
            push(Some(&good), r#"{"message":{"data":"aGVsbG8="}}"#.into()).await.unwrap().status(),
            StatusCode::BAD_REQUEST,
        ),
        // Authentic and well formed, but the job isn't due: acknowledged, nothing claimed.
        ("not due", push(Some(&good), envelope(&id)).await.unwrap().status(), StatusCode::NO_CONTENT),
        (
            "unknown job",
            push(Some(&good), envelope(&uuid::Uuid::now_v7().to_string())).await.unwrap().status(),
            StatusCode::NO_CONTENT,
        ),
    ];
    for (what, got, want) in cases {
        assert_eq!(got, want, "{what}");
    }
    let after: Value = sqlx::query_scalar("SELECT to_jsonb(jobs) FROM jobs").fetch_one(&pool).await.unwrap();
    assert_eq!(before, after, "the job is untouched");
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM job_runs").fetch_one(&pool).await.unwrap();
    assert_eq!(runs, 0);
    s.dev.shutdown().await;
}

fn spawn_worker(pool: &PgPool, port: u16, jwks_url: &str) -> tokio::process::Child {
    Command::new(crate::common::runq_bin())
        .args(["worker", "--queue", "high"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url(pool))
        .env("PORT", port.to_string())
        .env("RUNQ_PUSH_AUDIENCE", format!("http://127.0.0.1:{port}/push"))
        .env("RUNQ_PUSH_SERVICE_ACCOUNTS", DEV_PUSH_ACCOUNT)
        .env("RUNQ_OIDC_JWKS_URL", jwks_url)
        .env("RUNQ_LEASE_SECS", "3")
        .env("RUNQ_SHUTDOWN_GRACE_SECS", "1")
        .env("RUNQ_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("runq worker starts")
}

#[sqlx::test]
async fn a_worker_killed_mid_run_is_replaced_and_the_job_reruns(pool: PgPool) {
    let port = free_port();
    let mut opts = options(&pool);
    opts.external_workers = vec![("high".into(), format!("http://127.0.0.1:{port}/push"))];
    let s = stack_with(opts).await;
    let mut first = spawn_worker(&pool, port, &s.dev.jwks_url());
    let job = s.submit(json!({"function": "sleep", "args": {"seconds": 3, "steps": 3}, "priority": "high"})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    s.wait_until(&id, Duration::from_secs(60), |j| j["status"] == "running").await;

    // SIGKILL: no release, no outcome; only the lease expiry can tell.
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let _second = spawn_worker(&pool, port, &s.dev.jwks_url());

    let done = s.wait_until(&id, Duration::from_secs(90), |j| j["finished_at"].is_string()).await;
    assert_eq!((done["status"].as_str(), done["attempt"].as_i64()), (Some("succeeded"), Some(2)), "{done}");
    let outcomes: Vec<String> =
        sqlx::query_scalar("SELECT outcome FROM job_runs WHERE job_id = $1::uuid ORDER BY started_at")
            .bind(&id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(outcomes, vec!["reaped", "succeeded"]);
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn large_results_and_inputs_go_through_gcs(pool: PgPool) {
    let gcs = crate::gcs::FakeGcs::start().await;
    gcs.create_bucket("results").await;
    gcs.create_bucket("inputs").await;
    let store = gcs.store().await;
    let text = "the quick brown fox jumps over the lazy dog\n".repeat(50)
        + &(0..10_000).map(|i| format!("w{i} ")).collect::<String>();
    let input = store.put("inputs", "book.txt", text.clone().into(), "text/plain").await.unwrap();

    let mut opts = options(&pool);
    opts.storage = Some(gcs.settings());
    opts.results_bucket = Some("results".into());
    let s = stack_with(opts).await;

    let big = s.submit(json!({"function": "big"})).await;
    let done = s.finished(big["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"], Value::Null);
    let uri = done["result_uri"].as_str().unwrap();
    assert!(uri.starts_with(&format!("gs://results/results/{}/", big["id"].as_str().unwrap())), "{uri}");
    let stored: Value = serde_json::from_slice(&store.get(uri).await.unwrap()).unwrap();
    assert_eq!(stored["blob"].as_str().unwrap().len(), 70 * 1024);

    let counted = s.submit(json!({"function": "wordcount", "args": {"gcs_uri": input}})).await;
    let done = s.finished(counted["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let result: Value =
        serde_json::from_slice(&store.get(done["result_uri"].as_str().unwrap()).await.unwrap()).unwrap();
    assert_eq!(result["words"], 9 * 50 + 10_000);
    assert_eq!(result["counts"]["the"], 100);
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn undeliverable_jobs_are_dead_lettered_then_failed(pool: PgPool) {
    // The low queue's worker is gone: every push is refused at the connection.
    let mut opts = options(&pool);
    opts.external_workers = vec![("low".into(), format!("http://127.0.0.1:{}/push", free_port()))];
    opts.emulator_time_scale = 0.02;
    opts.dead_letter = runq::api::DeadLetterPolicy { max_rounds: 2, backoff: Duration::from_millis(100) };
    let s = stack_with(opts).await;
    let job = s.submit(json!({"function": "noop", "priority": "low"})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    let done = s.wait_until(&id, Duration::from_secs(90), |j| j["finished_at"].is_string()).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"]["kind"], "undeliverable");
    assert_eq!(done["attempt"], 0, "never claimed");
    let rounds: i32 = sqlx::query_scalar("SELECT dead_letters FROM jobs").fetch_one(&pool).await.unwrap();
    assert_eq!(rounds, 2);
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn sigterm_releases_runs_that_cannot_finish_in_the_grace_period(pool: PgPool) {
    let port = free_port();
    let mut opts = options(&pool);
    opts.external_workers = vec![("high".into(), format!("http://127.0.0.1:{port}/push"))];
    let s = stack_with(opts).await;
    let mut first = spawn_worker(&pool, port, &s.dev.jwks_url());
    let job = s.submit(json!({"function": "sleep", "args": {"seconds": 60, "steps": 60}, "priority": "high"})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    s.wait_until(&id, Duration::from_secs(60), |j| j["status"] == "running").await;

    let pid = first.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let exit = tokio::time::timeout(Duration::from_secs(10), first.wait()).await.expect("exits after SIGTERM").unwrap();
    assert!(exit.success(), "clean exit: {exit:?}");

    // Released under its claim: queued again at once, the interrupted attempt not counted.
    let job: (String, i32, Option<uuid::Uuid>) =
        sqlx::query_as("SELECT status, attempt, claim_id FROM jobs WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(job, ("queued".to_owned(), 0, None));
    let outcome: String = sqlx::query_scalar("SELECT outcome FROM job_runs WHERE job_id = $1::uuid")
        .bind(&id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(outcome, "released");

    // The next worker takes it straight away (no lease to wait out).
    let _second = spawn_worker(&pool, port, &s.dev.jwks_url());
    let rerun = s.wait_until(&id, Duration::from_secs(60), |j| j["status"] == "running").await;
    assert_eq!(rerun["attempt"], 1);
    s.http.post(format!("{}/jobs/{id}/cancel", s.dev.api_url)).bearer_auth(&s.token).send().await.unwrap();
    s.wait_until(&id, Duration::from_secs(10), |j| j["status"] == "cancelled").await;
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn detached_runs_answer_the_push_at_once_and_finish_in_the_background(pool: PgPool) {
    let s = stack(&pool).await;
    let (_, worker_url) = s.dev.worker_urls.iter().find(|(q, _)| q == "medium").unwrap().clone();
    let token = emulator_token(&s.dev.emulator_host(), &worker_url, "detached").await;
    // Recorded without the outbox, so only our push delivers it.
    let args = serde_json::value::RawValue::from_string("{}".into()).unwrap();
    let id = uuid::Uuid::now_v7();
    let spec = runq::store::JobSpec {
        function: "long",
        priority: Priority::Medium,
        queue: None,
        args: &args,
        max_attempts: 3,
        delay_secs: None,
        unique_key: None,
        debounce_secs: None,
        limit_keys: Vec::new(),
    };
    let new = runq::store::NewJob { id, owner: "e2e", spec, trace_context: None, idempotency: None };
    runq::store::submit(&pool, &new, Duration::from_secs(60)).await.unwrap();
    let resp = s.http.post(&worker_url).bearer_auth(&token).body(envelope(&id.to_string())).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let status: String =
        sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1").bind(id).fetch_one(&pool).await.unwrap();
    assert_eq!(status, "running", "the push was answered while the run goes on");
    let done = s.finished(&id.to_string()).await;
    assert_eq!(
        (done["status"].as_str(), done["result"].as_str(), done["message"].as_str()),
        (Some("succeeded"), Some("done"), Some("part 3"))
    );
    s.dev.shutdown().await;
}

#[test]
fn an_inline_function_whose_limit_exceeds_the_push_deadline_is_refused() {
    struct TooLong;
    impl runq::Function for TooLong {
        type Args = Value;
        type Output = Value;
        fn name(&self) -> &'static str {
            "too_long"
        }
        fn hard_time_limit(&self) -> Duration {
            Duration::from_secs(3600)
        }
        async fn run(&self, _: runq::function::Context, _: Value) -> Result<Value, runq::function::FunctionError> {
            Ok(Value::Null)
        }
    }
    let mut registry = runq::function::Registry::default();
    let err = registry.register(TooLong).unwrap_err();
    assert!(matches!(err, runq::function::RegistryError::TooLongForInline(_, 3600)), "{err}");
    assert!(err.to_string().contains("detached"));
    assert!(registry.register(crate::e2e::Long).is_ok(), "the same limit is fine detached");
}
