//! Functions declared as Cloud Run Jobs, run through `runq exec` in a subprocess (the local form
//! of a Cloud Run Job execution): the worker of a `runq dev` stack claims the job and starts the
//! real `runq` binary's `exec` for that claim, which calls an HTTP function of the test's own
//! (its identity token checked against the emulator's JWKS). The first execution is killed
//! (SIGKILL) mid-call: its lease expires, the reaper requeues the job, a second execution runs
//! it and records the outcome.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use runq::auth::{GoogleOidcVerifier, JwksCache};
use runq::dev::{DEV_INVOKER_ACCOUNT, DevStack};
use runq::function::Registry;
use runq::function::http::HttpFunction;
use runq::worker::Launcher;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::e2e::{SECRET, options};

#[derive(Default)]
struct Server {
    verifier: OnceLock<GoogleOidcVerifier>,
    calls: AtomicU32,
    first_call: Notify,
}

async fn render(State(s): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    let verifier = s.verifier.get().expect("set before any job is submitted");
    if verifier.verify_request(&headers).await.is_err() {
        return (StatusCode::UNAUTHORIZED, "bad token").into_response();
    }
    let call: Value = serde_json::from_slice(&body).unwrap();
    if s.calls.fetch_add(1, Ordering::SeqCst) > 0 {
        return axum::Json(json!({"rendered_on_attempt": call["attempt"]})).into_response();
    }
    // The first call streams progress until its caller dies.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(1);
    tokio::spawn(async move {
        s.first_call.notify_one();
        while tx.send(Ok(Bytes::from("{\"progress\": 0.1, \"message\": \"rendering\"}\n"))).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    ([("content-type", "application/x-ndjson")], body).into_response()
}

#[sqlx::test]
async fn a_cloud_run_job_function_runs_in_runq_exec_and_survives_its_execution_being_killed(pool: PgPool) {
    let server = Arc::new(Server::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/render", axum::routing::post(render)).with_state(server.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // The worker needs the function's policy; the execution (the runq binary) its declaration.
    let dir = std::env::temp_dir().join(format!("runq-exec-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("runq.toml");
    let url = format!("{origin}/render");
    std::fs::write(
        &config,
        format!("[functions.render]\nurl = \"{url}\"\ncloud_run_job = true\ntimeout_secs = 3600\n"),
    )
    .unwrap();
    let mut registry = Registry::default();
    let render = HttpFunction::new("render", &url).cloud_run_job(true).timeout(Duration::from_secs(3600));
    registry.register_http(render, true).unwrap();
    let mut opts = options(&pool);
    opts.launcher = Some(Launcher {
        program: crate::common::runq_bin().into(),
        args: Vec::new(),
        env: vec![("RUNQ_CONFIG".into(), config.display().to_string())],
        exec_args: Vec::new(),
    });
    let dev = DevStack::start(opts, registry).await.expect("dev stack starts");
    let jwks = JwksCache::new(dev.jwks_url(), reqwest::Client::new()).unwrap();
    let verifier = GoogleOidcVerifier::new(Arc::new(jwks), origin, vec![DEV_INVOKER_ACCOUNT.into()]);
    assert!(server.verifier.set(verifier).is_ok());
    let token =
        runq::auth::mint_hs256(SECRET, "alice", false, Duration::from_secs(3600), "scope", "", None, None).unwrap();
    let http = reqwest::Client::new();
    let get = |path: String| {
        let (http, token, base) = (http.clone(), token.clone(), dev.api_url.clone());
        async move {
            http.get(format!("{base}{path}")).bearer_auth(token).send().await.unwrap().json::<Value>().await.unwrap()
        }
    };

    let job: Value = http
        .post(format!("{}/jobs", dev.api_url))
        .bearer_auth(&token)
        .json(&json!({"function": "render", "args": {"video": "v1"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    tokio::time::timeout(Duration::from_secs(30), server.first_call.notified()).await.expect("the execution called");

    // The execution is a process of its own, running this claim: kill it outright.
    let pids = std::process::Command::new("pgrep").args(["-f", &format!("exec --job-id {id}")]).output().unwrap();
    let pids: Vec<String> = String::from_utf8_lossy(&pids.stdout).split_whitespace().map(str::to_owned).collect();
    assert_eq!(pids.len(), 1, "one runq exec runs the job: {pids:?}");
    let running = get(format!("/jobs/{id}")).await;
    assert_eq!(running["status"], "running", "{running}");
    assert!(std::process::Command::new("kill").args(["-KILL", &pids[0]]).status().unwrap().success());

    // Its lease lapses, the reaper requeues the job, and a second execution finishes it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let job = loop {
        let job = get(format!("/jobs/{id}")).await;
        if job["finished_at"].is_string() {
            break job;
        }
        assert!(Instant::now() < deadline, "job {id} did not finish: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!((job["attempt"].as_i64(), job["result"].clone()), (Some(2), json!({"rendered_on_attempt": 2})));
    let runs = get(format!("/jobs/{id}/runs")).await["runs"].as_array().unwrap().clone();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_ne!(runs[0]["outcome"], "succeeded", "{runs:?}");
    assert_eq!(runs[1]["outcome"], "succeeded");
    assert_eq!(server.calls.load(Ordering::SeqCst), 2);
    dev.shutdown().await;
    std::fs::remove_dir_all(&dir).ok();
}
