//! HTTP functions over real sockets: a `runq dev` stack (API, emulator, workers) calls a function
//! server of the test's own on 127.0.0.1, which checks every identity token with runq's
//! production verifier against the emulator's JWKS, and answers as each case needs: a JSON
//! result, NDJSON progress, a 5xx, a 4xx with an explicit error, a 429 with `Retry-After`,
//! nothing at all, and a stream the test cancels.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use runq::auth::{GoogleOidcVerifier, JwksCache};
use runq::dev::{DEV_INVOKER_ACCOUNT, DevStack};
use runq::function::http::HttpFunction;
use runq::function::{Echo, Registry};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::{Notify, mpsc};

use crate::e2e::{SECRET, options};

/// The function server's state: the verifier (set once the emulator's JWKS is known), calls
/// per path, and the events the tests wait on.
#[derive(Default)]
struct Server {
    verifier: OnceLock<GoogleOidcVerifier>,
    calls: Mutex<HashMap<String, u32>>,
    /// Bodies received, by path (to check the request's fields).
    bodies: Mutex<HashMap<String, Value>>,
    /// Lets `/stream` send its result.
    release: Notify,
    /// Fired when `/cancel`'s answer can't be written any more: runq closed the request.
    disconnected: Notify,
}

fn ndjson(rx: mpsc::Receiver<Result<Bytes, Infallible>>) -> Response {
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    ([("content-type", "application/x-ndjson")], body).into_response()
}

fn line(v: Value) -> Result<Bytes, Infallible> {
    Ok(Bytes::from(format!("{v}\n")))
}

async fn handle(State(s): State<Arc<Server>>, Path(path): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let verifier = s.verifier.get().expect("the verifier is set before any job is submitted");
    if verifier.verify_request(&headers).await.is_err() {
        return (StatusCode::UNAUTHORIZED, "bad token").into_response();
    }
    let call: Value = serde_json::from_slice(&body).unwrap();
    let n = {
        let mut calls = s.calls.lock().unwrap();
        let n = calls.entry(path.clone()).or_default();
        *n += 1;
        *n
    };
    s.bodies.lock().unwrap().insert(path.clone(), call.clone());
    match path.as_str() {
        "json" => axum::Json(json!({"echo": call["args"], "attempt": call["attempt"]})).into_response(),
        "stream" => {
            let (tx, rx) = mpsc::channel(8);
            tokio::spawn(async move {
                tx.send(line(json!({"progress": 0.5, "message": "halfway"}))).await.unwrap();
                s.release.notified().await;
                let _ = tx.send(line(json!({"result": {"text": "done"}}))).await;
            });
            ndjson(rx)
        }
        "flaky" if n == 1 => (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response(),
        "flaky" => axum::Json(json!("second time lucky")).into_response(),
        "fatal" => {
            let error = json!({"error": {"message": "unsupported codec", "retryable": false}});
            (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(error)).into_response()
        }
        "busy" if n == 1 => (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "slow down").into_response(),
        "busy" => axum::Json(json!({"attempt": call["attempt"]})).into_response(),
        // Too late for a 429 once the answer streams: a final defer line instead.
        "late_busy" if n == 1 => {
            let (tx, rx) = mpsc::channel(2);
            tx.try_send(line(json!({"progress": 0.1, "message": "asked the upstream"}))).unwrap();
            tx.try_send(line(json!({"defer": 0.5}))).unwrap();
            ndjson(rx)
        }
        "late_busy" => axum::Json(json!({"attempt": call["attempt"]})).into_response(),
        "hang" => {
            // Headers, then nothing: no final line before the function's timeout.
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move { tx.closed().await });
            ndjson(rx)
        }
        "cancel" => {
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                // Progress every 100 ms until a write fails: runq dropped the connection.
                for i in 0.. {
                    if tx.send(line(json!({"progress": 0.01 * (i % 100) as f64, "message": "working"}))).await.is_err()
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                s.disconnected.notify_one();
            });
            ndjson(rx)
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

struct Rig {
    dev: DevStack,
    server: Arc<Server>,
    http: reqwest::Client,
    token: String,
}

async fn rig(pool: &PgPool) -> Rig {
    let server = Arc::new(Server::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/{path}", axum::routing::post(handle)).with_state(server.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut registry = Registry::default();
    registry.register(Echo).unwrap();
    let f = |name: &str| HttpFunction::new(name, format!("{origin}/{name}"));
    for function in [f("json"), f("stream"), f("fatal"), f("cancel")] {
        registry.register_http(function, true).unwrap();
    }
    registry.register_http(f("flaky").max_attempts(2).backoff(fast()), true).unwrap();
    registry.register_http(f("busy").max_attempts(1), true).unwrap();
    registry.register_http(f("late_busy").max_attempts(1), true).unwrap();
    registry.register_http(f("hang").timeout(Duration::from_secs(2)), true).unwrap();
    // A plain http:// URL needs `allow_http`; so does an unknown scheme, never.
    assert!(Registry::default().register_http(f("json"), false).is_err());

    let dev = DevStack::start(options(pool), registry).await.expect("dev stack starts");
    let jwks = JwksCache::new(dev.jwks_url(), reqwest::Client::new()).unwrap();
    let verifier = GoogleOidcVerifier::new(Arc::new(jwks), origin, vec![DEV_INVOKER_ACCOUNT.into()]);
    assert!(server.verifier.set(verifier).is_ok());
    let token =
        runq::auth::mint_hs256(SECRET, "alice", false, Duration::from_secs(3600), "scope", "", None, None).unwrap();
    Rig { dev, server, http: reqwest::Client::new(), token }
}

fn fast() -> runq::function::Backoff {
    runq::function::Backoff { initial: Duration::from_millis(100), max: Duration::from_millis(100) }
}

impl Rig {
    async fn submit(&self, function: &str, args: Value) -> String {
        let resp = self
            .http
            .post(format!("{}/jobs", self.dev.api_url))
            .bearer_auth(&self.token)
            .json(&json!({"function": function, "args": args}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED);
        resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
    }

    async fn get(&self, path: &str) -> Value {
        let resp = self.http.get(format!("{}{path}", self.dev.api_url)).bearer_auth(&self.token).send().await.unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    /// Follows the job until `done(job)`, failing after 60 s.
    async fn until(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let job = self.get(&format!("/jobs/{id}")).await;
            if done(&job) {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} did not get there: {job}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn finished(&self, id: &str) -> Value {
        self.until(id, |j| j["finished_at"].is_string()).await
    }

    async fn runs(&self, id: &str) -> Vec<Value> {
        self.get(&format!("/jobs/{id}/runs")).await["runs"].as_array().unwrap().clone()
    }
}

#[sqlx::test]
async fn an_http_function_answers_json_or_streams_progress_with_a_verified_token(pool: PgPool) {
    let r = rig(&pool).await;
    let id = r.submit("json", json!({"audio": "gs://talks/1.flac"})).await;
    let job = r.finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"], json!({"echo": {"audio": "gs://talks/1.flac"}, "attempt": 1}));
    let call = r.server.bodies.lock().unwrap()["json"].clone();
    assert_eq!(call["job_id"], id.as_str());
    assert_eq!((call["attempt"].clone(), call["max_attempts"].clone()), (json!(1), json!(3)));
    let deadline = chrono::DateTime::parse_from_rfc3339(call["deadline"].as_str().unwrap()).unwrap();
    let left = deadline.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(left > chrono::Duration::seconds(500) && left <= chrono::Duration::seconds(540), "{left}");

    // Progress shows in the status endpoint while the answer is still streaming.
    let id = r.submit("stream", json!({})).await;
    let status = |job: &Value| job["progress"].as_f64() == Some(0.5) && job["message"] == "halfway";
    let seen = r.until(&id, status).await;
    assert_eq!(seen["status"], "running");
    let s = r.get(&format!("/jobs/{id}/status")).await;
    assert_eq!((s["progress"].as_f64(), s["message"].as_str()), (Some(0.5), Some("halfway")));
    r.server.release.notify_one();
    let job = r.finished(&id).await;
    assert_eq!((job["status"].as_str(), job["result"].clone()), (Some("succeeded"), json!({"text": "done"})));
    r.dev.shutdown().await;
}

#[sqlx::test]
async fn errors_retry_or_fail_by_their_kind_a_429_defers_and_silence_times_out(pool: PgPool) {
    let r = rig(&pool).await;
    let (flaky, fatal, busy, late_busy, hang) = (
        r.submit("flaky", json!({})).await,
        r.submit("fatal", json!({})).await,
        r.submit("busy", json!({})).await,
        r.submit("late_busy", json!({})).await,
        r.submit("hang", json!({})).await,
    );

    // A 503 is retried; the second attempt succeeds.
    let job = r.finished(&flaky).await;
    assert_eq!((job["status"].as_str(), job["attempt"].as_i64()), (Some("succeeded"), Some(2)), "{job}");
    let outcomes: Vec<Value> = r.runs(&flaky).await.iter().map(|run| run["outcome"].clone()).collect();
    assert_eq!(outcomes, [json!("retrying"), json!("succeeded")]);

    // An explicit fatal error fails at once, with the function's message.
    let job = r.finished(&fatal).await;
    assert_eq!((job["status"].as_str(), job["attempt"].as_i64()), (Some("failed"), Some(1)), "{job}");
    assert_eq!(job["error"], json!({"kind": "error", "message": "unsupported codec", "retryable": false}));

    // A 429 defers the job without using an attempt: max_attempts 1, and it still succeeds.
    let job = r.finished(&busy).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"], json!({"attempt": 1}));
    let runs = r.runs(&busy).await;
    assert_eq!(
        runs.iter().map(|run| run["outcome"].clone()).collect::<Vec<_>>(),
        [json!("deferred"), json!("succeeded")]
    );
    // So does a defer line after progress.
    let job = r.finished(&late_busy).await;
    assert_eq!((job["status"].as_str(), job["result"].clone()), (Some("succeeded"), json!({"attempt": 1})), "{job}");
    let runs = r.runs(&late_busy).await;
    assert_eq!(
        runs.iter().map(|run| run["outcome"].clone()).collect::<Vec<_>>(),
        [json!("deferred"), json!("succeeded")]
    );

    // No final answer before the 2 s timeout: failed, kind `timeout`, not retried.
    let job = r.finished(&hang).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!((job["error"]["kind"].as_str(), job["attempt"].as_i64()), (Some("timeout"), Some(1)));
    assert_eq!(r.server.calls.lock().unwrap()["hang"], 1);
    r.dev.shutdown().await;
}

#[sqlx::test]
async fn a_cancel_closes_the_functions_request(pool: PgPool) {
    let r = rig(&pool).await;
    let id = r.submit("cancel", json!({})).await;
    r.until(&id, |j| j["message"] == "working").await;
    let disconnected = r.server.disconnected.notified();
    let asked = Instant::now();
    let resp = r.http.post(format!("{}/jobs/{id}/cancel", r.dev.api_url)).bearer_auth(&r.token).send().await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED);
    tokio::time::timeout(Duration::from_secs(5), disconnected).await.expect("runq closed the function's request");
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(1), "the request closed {took:?} after the cancel");
    let job = r.finished(&id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    r.dev.shutdown().await;
}

#[sqlx::test]
async fn a_job_deferred_too_often_fails_instead_of_waiting_forever(pool: PgPool) {
    let args = serde_json::value::RawValue::from_string("{}".into()).unwrap();
    let id = uuid::Uuid::now_v7();
    let spec = runq::store::JobSpec {
        function: "busy",
        priority: runq::job::Priority::Medium,
        queue: None,
        args: &args,
        max_attempts: 1,
        delay_secs: None,
        unique_key: None,
        debounce_secs: None,
        limit_keys: Vec::new(),
    };
    let new = runq::store::NewJob { id, owner: "alice", spec, trace_context: None, idempotency: None };
    runq::store::submit(&pool, &new, Duration::from_secs(60)).await.unwrap();
    let lease = Duration::from_secs(30);
    for round in 1..=runq::store::MAX_DEFERRALS {
        let claimed = runq::store::claim(&pool, id, "w", lease).await.unwrap().expect("claimable again at once");
        assert_eq!(claimed.attempt, 1, "a deferral gives its attempt back (round {round})");
        let status = runq::store::defer(&pool, id, claimed.claim_id, Duration::ZERO, "later").await.unwrap();
        assert_eq!(status, Some(runq::job::Status::Queued));
    }
    let claimed = runq::store::claim(&pool, id, "w", lease).await.unwrap().unwrap();
    let status = runq::store::defer(&pool, id, claimed.claim_id, Duration::ZERO, "later").await.unwrap();
    assert_eq!(status, Some(runq::job::Status::Failed));
    let (kind, message): (String, String) =
        sqlx::query_as("SELECT error->>'kind', error->>'message' FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(kind, "error");
    assert!(message.contains("deferred the job 100 times"), "{message}");
    // Fenced: a stale claim defers nothing.
    assert_eq!(runq::store::defer(&pool, id, claimed.claim_id, Duration::ZERO, "later").await.unwrap(), None);
}
