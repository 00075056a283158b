//! Python functions end to end: the SDK's pytest suite (`sdk/python`), then the speech-to-text
//! example (`examples/speech_to_text/server.py`, a real process on a real socket, checking
//! runq's identity tokens against the dev emulator's JWKS) declared in a `runq.toml` that a real
//! `runq dev` process reads: progress in `/jobs/{id}/status`, a retryable failure retried, a
//! fatal one failed at once, a cancel that closes the function's request within a second (the
//! example reports seeing it on its stdout), and the same function as a workflow step between
//! two Rust built-ins (submitted whole, and as a template the `runq.toml` declares). And a bad `runq.toml` stopping `runq dev` with file, line and key.
//! `scripts/test` installs what the Python side needs (fastapi, uvicorn, pyjwt, pytest).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

use crate::common::{Dev, database_url, free_port};

fn python() -> Option<String> {
    let python = std::env::var("RUNQ_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    if std::process::Command::new(&python).arg("--version").output().is_err() {
        eprintln!("SKIPPED: the Python SDK's tests need {python} (scripts/test checks for it)");
        return None;
    }
    let probe = std::process::Command::new(&python)
        .args(["-c", "import fastapi, uvicorn, jwt, cryptography, httpx, pytest"])
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "the Python SDK's tests need fastapi, uvicorn, pyjwt[crypto], httpx and pytest: run scripts/test, \
         which installs them ({})",
        String::from_utf8_lossy(&probe.stderr)
    );
    Some(python)
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("runq-pyfn-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn the_python_sdk_suite_passes() {
    let Some(python) = python() else { return };
    let package = concat!(env!("CARGO_MANIFEST_DIR"), "/sdk/python");
    let run = tokio::process::Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(package)
        .env("PYTHONPATH", format!("{package}/src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run).await.expect("pytest finishes").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the Python SDK's suite failed:\n{stdout}");
    assert!(!stdout.contains("skipped"), "no test may skip here:\n{stdout}");
}

/// The example server: its port and the events it printed so far.
struct Example {
    _child: tokio::process::Child,
    port: u16,
    events: watch::Receiver<Vec<Value>>,
}

impl Example {
    /// Starts it with tokens checked for `audience` against `jwks_url`, for runq dev's account.
    async fn start(python: &str, audience_of: impl Fn(u16) -> String, jwks_url: &str) -> Example {
        // The port first, so the audience (its origin) is known before it starts.
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/speech_to_text/server.py");
        let mut child = tokio::process::Command::new(python)
            .arg(script)
            .env("PORT", port.to_string())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("RUNQ_FUNCTION_AUDIENCE", audience_of(port))
            .env("RUNQ_FUNCTION_JWKS_URL", jwks_url)
            .env("RUNQ_FUNCTION_ALLOWED_EMAILS", runq::dev::DEV_INVOKER_ACCOUNT)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (tx, mut events) = watch::channel(Vec::new());
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(event) = serde_json::from_str::<Value>(&line) {
                    tx.send_modify(|all| all.push(event));
                }
            }
        });
        let ready = events.wait_for(|all| all.iter().any(|e| e["event"] == "ready"));
        let seen = tokio::time::timeout(Duration::from_secs(30), ready).await.expect("the example starts");
        assert_eq!(seen.expect("the example runs").iter().find(|e| e["event"] == "ready").unwrap()["port"], port);
        Example { _child: child, port, events }
    }

    /// Waits for an event `name` of job `id`; fails after `within`.
    async fn event(&self, name: &str, id: &str, within: Duration) -> Instant {
        let wanted = |all: &Vec<Value>| all.iter().any(|e| e["event"] == name && e["job_id"] == id);
        let mut events = self.events.clone();
        let seen = tokio::time::timeout(within, events.wait_for(wanted)).await.map(|r| r.is_ok());
        assert!(
            matches!(seen, Ok(true)),
            "no `{name}` event of job {id} within {within:?}: {:?}",
            self.events.borrow()
        );
        Instant::now()
    }
}

/// A client of the `runq dev` process's API.
struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    async fn post(&self, path: &str, body: Value) -> (reqwest::StatusCode, Value) {
        let resp =
            self.http.post(format!("{}{path}", self.base)).bearer_auth(&self.token).json(&body).send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> Value {
        let resp = self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await.unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    async fn submit(&self, args: Value) -> String {
        let (status, job) = self.post("/jobs", json!({"function": "transcribe", "args": args})).await;
        assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{job}");
        job["id"].as_str().unwrap().to_owned()
    }

    /// Reads `path` until `done(view)`; fails after 60 s.
    async fn until(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let view = self.get(path).await;
            if done(&view) {
                return view;
            }
            assert!(Instant::now() < deadline, "{path} did not get there: {view}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn finished(&self, id: &str) -> Value {
        self.until(&format!("/jobs/{id}"), |j| j["finished_at"].is_string()).await
    }
}

#[sqlx::test]
async fn a_python_function_declared_in_runq_toml_runs_under_runq_dev(pool: PgPool) {
    let Some(python) = python() else { return };
    let (api_port, emulator_port) = (free_port(), free_port());
    let jwks = format!("http://127.0.0.1:{emulator_port}/oauth2/v3/certs");
    let example = Example::start(&python, |port| format!("http://127.0.0.1:{port}"), &jwks).await;
    let dir = scratch_dir();
    let config = dir.join("runq.toml");
    std::fs::write(
        &config,
        format!(
            "# the speech-to-text example, served by sdk/python\n\
             [functions.transcribe]\n\
             url = \"http://127.0.0.1:{}/transcribe\"\n\
             timeout_secs = 60\n\
             max_attempts = 3\n\
             backoff = {{ initial_secs = 0.1, max_secs = 0.2 }}\n\n\
             [workflows.speech]\n\
             steps = [\n\
               {{ name = \"prepare\", function = \"echo\", args = {{ value = {{ audio = \"gs://talks/toml.flac\" }} }} }},\n\
               {{ name = \"transcribe\", function = \"transcribe\", after = [\"prepare\"], args = {{ chunks = 2, chunk_seconds = 0.05 }} }},\n\
               {{ name = \"publish\", function = \"echo\", after = [\"transcribe\"], args = {{ value = \"published\" }} }},\n\
             ]\n",
            example.port
        ),
    )
    .unwrap();
    let dev =
        Dev::start(&database_url(&pool), api_port, emulator_port, &dir, &[("RUNQ_CONFIG", config.to_str().unwrap())])
            .await;
    let api =
        Api { base: format!("http://127.0.0.1:{api_port}"), token: dev.token.clone(), http: reqwest::Client::new() };

    // Progress streams into the status endpoint while it runs, then the result.
    let id = api.submit(json!({"audio": "gs://talks/keynote.flac", "chunks": 8, "chunk_seconds": 0.2})).await;
    let status = api
        .until(&format!("/jobs/{id}/status"), |s| {
            s["status"] == "running" && s["progress"].as_f64().is_some_and(|p| p > 0.0)
        })
        .await;
    assert!(status["message"].as_str().unwrap().starts_with("transcribing chunk "), "{status}");
    let job = api.finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["chunks"], 8);
    assert!(job["result"]["text"].as_str().unwrap().contains("[gs://talks/keynote.flac part 8]"));

    // A retryable failure is retried (attempt 2 succeeds); a fatal one fails at once.
    let retried = api.submit(json!({"audio": "gs://a.flac", "chunks": 1, "fail": "retryable"})).await;
    let fatal = api.submit(json!({"audio": "gs://b.flac", "fail": "fatal"})).await;
    let job = api.finished(&retried).await;
    assert_eq!((job["status"].as_str(), job["attempt"].as_i64()), (Some("succeeded"), Some(2)), "{job}");
    let runs = api.get(&format!("/jobs/{retried}/runs")).await;
    let outcomes: Vec<&Value> = runs["runs"].as_array().unwrap().iter().map(|r| &r["outcome"]).collect();
    assert_eq!(outcomes, [&json!("retrying"), &json!("succeeded")]);
    assert_eq!(runs["runs"][0]["error"]["message"], "the speech API answered 503");
    let job = api.finished(&fatal).await;
    assert_eq!((job["status"].as_str(), job["attempt"].as_i64()), (Some("failed"), Some(1)), "{job}");
    assert_eq!(job["error"]["message"], "cannot decode gs://b.flac: unsupported codec");
    assert_eq!(job["error"]["retryable"], false);

    // A cancel closes the function's request: the example sees its request end within a second.
    let long = api.submit(json!({"audio": "gs://long.flac", "chunks": 10000, "chunk_seconds": 0.1})).await;
    example.event("started", &long, Duration::from_secs(30)).await;
    api.until(&format!("/jobs/{long}/status"), |s| s["status"] == "running" && s["message"].is_string()).await;
    let asked = Instant::now();
    let (status, _) = api.post(&format!("/jobs/{long}/cancel"), json!({})).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED);
    let seen = example.event("cancelled", &long, Duration::from_secs(10)).await;
    assert!(seen - asked < Duration::from_secs(1), "the function saw the cancel {:?} after it", seen - asked);
    let job = api.finished(&long).await;
    assert_eq!(job["status"], "cancelled", "{job}");

    // The same function as a workflow step between two Rust built-ins: it reads the audio from
    // the first step's result (its `inputs`), and the last step runs after it.
    let workflow = json!({"steps": [
        {"name": "prepare", "function": "echo", "args": {"value": {"audio": "gs://talks/wf.flac"}}},
        {"name": "transcribe", "function": "transcribe", "after": ["prepare"], "args": {"chunks": 3, "chunk_seconds": 0.05}},
        {"name": "publish", "function": "echo", "after": ["transcribe"], "args": {"value": "published"}},
    ]});
    let (status, view) = api.post("/workflows", workflow).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{view}");
    let wf = view["id"].as_str().unwrap().to_owned();
    let done = |v: &Value| ["succeeded", "failed", "cancelled"].contains(&v["status"].as_str().unwrap_or(""));
    let view = api.until(&format!("/workflows/{wf}"), done).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    let step = |name: &str| view["steps"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap().clone();
    assert_eq!(step("transcribe")["result"]["audio"], "gs://talks/wf.flac", "{view}");
    assert_eq!(step("transcribe")["result"]["chunks"], 3);
    assert_eq!(step("publish")["result"], "published");

    // And as the template the runq.toml declares, submitted by name.
    let (status, view) = api.post("/workflows", json!({"workflow": "speech"})).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{view}");
    let wf = view["id"].as_str().unwrap().to_owned();
    let view = api.until(&format!("/workflows/{wf}"), done).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    let transcribed = view["steps"].as_array().unwrap().iter().find(|s| s["name"] == "transcribe").unwrap();
    assert_eq!(transcribed["result"]["audio"], "gs://talks/toml.flac", "{view}");

    dev.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_bad_runq_toml_stops_runq_dev_naming_file_line_and_key() {
    let dir = scratch_dir();
    let cases = [
        (
            "[functions.transcribe]\nurl = \"https://stt.example.com/\"\nurll = \"typo\"\n",
            ":3:1: functions.transcribe.urll: unknown field `urll`",
        ),
        (
            "[functions.echo]\nurl = \"https://stt.example.com/\"\n",
            ":1:12: functions.echo: a function of this name exists already",
        ),
        (
            "[functions.a]\nurl = \"ftp://stt.example.com/\"\n",
            ":2:7: functions.a.url: \"ftp://stt.example.com/\": the scheme must be https",
        ),
        (
            "[functions.a]\nurl = \"https://a.example/\"\n[functions.a]\nurl = \"https://b.example/\"\n",
            ":3:12: functions.a: duplicate key",
        ),
    ];
    for (text, expected) in cases {
        let config = dir.join("runq.toml");
        std::fs::write(&config, text).unwrap();
        let run = tokio::process::Command::new(crate::common::runq_bin())
            .args(["dev", "--emulator-addr", &format!("127.0.0.1:{}", free_port())])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", free_port().to_string())
            .env("RUNQ_CONFIG", &config)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), run).await.expect("runq dev exits").unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "runq dev started with {text:?}");
        let wanted = format!("error: {}{expected}", config.display());
        assert!(stderr.contains(&wanted), "stderr of runq dev with {text:?}:\n{stderr}\nwanted: {wanted}");
        assert!(String::from_utf8_lossy(&out.stdout).is_empty(), "nothing started: {:?}", out.stdout);
    }
    // A plain http:// URL is accepted by `runq dev` only: `runq schedules` (as api and worker) refuses it.
    let config = dir.join("runq.toml");
    std::fs::write(&config, "[functions.stt]\nurl = \"http://127.0.0.1:9/transcribe\"\n").unwrap();
    let out = tokio::process::Command::new(crate::common::runq_bin())
        .arg("schedules")
        .env("RUNQ_CONFIG", &config)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(":2:7: functions.stt.url: \"http://127.0.0.1:9/transcribe\" is not https://"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}
