//! The browser client (`clients/js/runq.js`) in headless Chromium, driven over WebDriver
//! (`chromedriver`), against a real `runq dev` process; the test page is served from a second
//! HTTP server on another port, so every call is a cross-origin (CORS) request. Skips, saying
//! so, when Chromium or chromedriver is not installed (`scripts/test` installs them). On a
//! failure a screenshot is saved under `target/browser-artifacts/`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

use crate::common::{Dev, database_url, free_port};

/// A program on `PATH`, if there is one.
fn program(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// Headless Chromium behind a chromedriver process, one WebDriver session.
struct Browser {
    _driver: Child,
    http: reqwest::Client,
    session: String,
}

impl Browser {
    /// Starts chromedriver and a session; `None` (after saying why) when either isn't installed.
    async fn start() -> Option<Browser> {
        let (chromium, driver) = (program("chromium"), program("chromedriver"));
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            eprintln!(
                "SKIPPED: the browser tests need chromium and chromedriver on PATH (Debian: apt-get install \
                 chromium chromium-driver; scripts/test installs them)"
            );
            return None;
        };
        let port = free_port();
        let mut child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        // chromedriver says when it listens; wait for that line (bounded), then keep draining.
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let started = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("started successfully") {
                    return;
                }
            }
            panic!("chromedriver exited before it listened");
        };
        tokio::time::timeout(Duration::from_secs(30), started).await.expect("chromedriver listens");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1000,700", "--no-first-run"],
            },
        }}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("a WebDriver session: {created}"))
            .to_owned();
        let browser = Browser { _driver: child, http, session: format!("{base}/session/{session}") };
        browser.command("timeouts", json!({"script": 90_000, "pageLoad": 30_000})).await;
        Some(browser)
    }

    async fn command(&self, path: &str, body: Value) -> Value {
        let resp = self.http.post(format!("{}/{path}", self.session)).json(&body).send().await.unwrap();
        let status = resp.status();
        let value: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "WebDriver {path}: {status} {value}");
        value["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.command("url", json!({"url": url})).await;
    }

    /// Runs `script` in the page as an async function body (`await` allowed); its return value.
    async fn run(&self, script: &str, args: Value) -> Value {
        let wrapped = format!(
            "const done = arguments[arguments.length - 1]; const args = Array.from(arguments).slice(0, -1);\n\
             (async (...args) => {{ {script} }})(...args).then(v => done({{ok: v}}), e => done({{err: String(e && e.stack || e)}}));"
        );
        let args = args.as_array().cloned().unwrap_or_default();
        let out = self.command("execute/async", json!({"script": wrapped, "args": args})).await;
        match out.get("ok") {
            Some(v) => v.clone(),
            None => panic!("the page's script failed: {}", out["err"].as_str().unwrap_or("?")),
        }
    }

    /// Saves a screenshot of the page under `target/browser-artifacts/`.
    async fn screenshot(&self, name: &str) {
        let Ok(resp) = self.http.get(format!("{}/screenshot", self.session)).send().await else { return };
        let Ok(value) = resp.json::<Value>().await else { return };
        let Some(png) = value["value"].as_str() else { return };
        use base64::Engine as _;
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(png) else { return };
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser-artifacts");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{name}.png"));
        if std::fs::write(&path, bytes).is_ok() {
            eprintln!("screenshot of the failing page: {}", path.display());
        }
    }

    async fn quit(&self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}

/// Runs `body` with the browser; on a failure saves a screenshot named `name`, then fails.
async fn with_browser<F, Fut>(name: &str, browser: Browser, body: F)
where
    F: FnOnce(Arc<Browser>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let browser = Arc::new(browser);
    let outcome = tokio::spawn(body(browser.clone())).await;
    if outcome.is_err() {
        browser.screenshot(name).await;
    }
    browser.quit().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// The test page's server: the page, and the client module as shipped.
async fn serve_page() -> u16 {
    use axum::http::header;
    use axum::routing::get;
    let module = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/clients/js/runq.js")).unwrap();
    let app = axum::Router::new()
        .route("/", get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE) }))
        .route("/runq.js", get(move || async move { ([(header::CONTENT_TYPE, "text/javascript")], module) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// Imports the client and records every request it makes (the real fetch does the work).
const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>runq browser client</title></head>
<body><h1>runq browser client</h1><pre id="log"></pre>
<script type="module">
import * as runq from "/runq.js";
window.runq = runq;
window.requests = [];
const realFetch = window.fetch.bind(window);
window.fetch = async (input, init) => {
  const entry = { url: String(input), ifNoneMatch: init?.headers?.["If-None-Match"] ?? null };
  window.requests.push(entry);
  try {
    const response = await realFetch(input, init);
    entry.status = response.status;
    entry.etag = response.headers.get("ETag");
    return response;
  } catch (error) {
    entry.error = String(error);
    throw error;
  }
};
window.show = (line) => { document.getElementById("log").textContent += line + "\n"; };
</script></body></html>
"#;

async fn submit(api: &str, token: &str, body: Value) -> String {
    let resp = reqwest::Client::new().post(format!("{api}/jobs")).bearer_auth(token).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED);
    resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("runq-browser-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `poll` follows a job across origins to its end: a first plain GET, then long-polls with the
/// last ETag as `If-None-Match` (304s while the run is quiet), every progress step, and the
/// final status; a refusal rejects with the problem's status; an abort stops it; and an origin
/// the API doesn't list is refused by the browser.
#[sqlx::test(migrations = false)]
async fn browser_client_polls_a_job_across_origins(pool: PgPool) {
    let Some(browser) = Browser::start().await else { return };
    let page_port = serve_page().await;
    let origin = format!("http://127.0.0.1:{page_port}");
    let (api_port, emulator_port, dir) = (free_port(), free_port(), temp_dir());
    let dev = Dev::start(&database_url(&pool), api_port, emulator_port, &dir, &[("RUNQ_CORS_ORIGINS", &origin)]).await;
    let api = format!("http://127.0.0.1:{api_port}");
    let token = dev.token.clone();
    with_browser("browser_client_polls_a_job_across_origins", browser, move |browser| async move {
        browser.goto(&format!("{origin}/")).await;
        // Three quiet seconds before each of its two steps: long-polls of 1 s answer 304 then.
        let id = submit(&api, &token, json!({"function": "sleep", "args": {"seconds": 6, "steps": 2}})).await;
        let out = browser
            .run(
                r#"const [baseUrl, token, id] = args;
                   const events = [];
                   const final = await runq.poll(id, { baseUrl, token, wait: 1,
                       onProgress: s => { events.push(s); show(`${s.status} ${s.progress}`); },
                       // Nothing fails here (a CORS refusal would look like a network error).
                       onRetry: e => { throw new Error(`a request failed: ${e}`); } });
                   return { final, events, requests: window.requests };"#,
                json!([api, token, id]),
            )
            .await;
        let (final_status, events, requests) = (&out["final"], out["events"].as_array().unwrap(), &out["requests"]);
        assert_eq!(final_status["status"], "succeeded", "{out}");
        assert_eq!(final_status["progress"], 1.0);
        assert_eq!(events.last().unwrap(), final_status, "the last progress call is the final status");
        assert!(events.iter().any(|e| e["status"] == "running" && e["progress"] == 0.5), "saw the first step: {out}");
        let progress: Vec<f64> = events.iter().map(|e| e["progress"].as_f64().unwrap()).collect();
        assert!(progress.windows(2).all(|w| w[0] <= w[1]), "progress only grows: {progress:?}");

        let requests = requests.as_array().unwrap();
        let status_url = format!("{api}/jobs/{id}/status");
        assert_eq!(requests[0]["url"], status_url, "the first request answers at once: {requests:?}");
        assert!(requests[0]["ifNoneMatch"].is_null());
        let mut etag = requests[0]["etag"].as_str().expect("the ETag is exposed to the page").to_owned();
        for r in &requests[1..] {
            assert!(r["error"].is_null(), "no request failed: {r}");
            assert_eq!(r["url"], format!("{status_url}?wait=1"), "then long-polls");
            assert_eq!(r["ifNoneMatch"], etag.as_str(), "with the last ETag: {requests:?}");
            if r["status"] == 200 {
                etag = r["etag"].as_str().unwrap().to_owned();
            } else {
                assert_eq!(r["status"], 304, "{r}");
            }
        }
        let not_modified = requests.iter().filter(|r| r["status"] == 304).count();
        assert!(not_modified >= 1, "quiet long-polls answered 304: {requests:?}");
        assert_eq!(requests.iter().filter(|r| r["status"] == 200).count(), events.len(), "one 200 per change");

        // An unknown job: rejected with the API's 404, not retried.
        let refused = browser
            .run(
                r#"const [baseUrl, token] = args;
                   try { await runq.poll(crypto.randomUUID(), { baseUrl, token }); return null; }
                   catch (e) { return { name: e.name, status: e.status, detail: e.message }; }"#,
                json!([api, token]),
            )
            .await;
        assert_eq!(refused["name"], "RunqError", "{refused}");
        assert_eq!(refused["status"], 404, "{refused}");

        // Aborting stops it with the signal's reason.
        let queued = submit(&api, &token, json!({"function": "noop", "delay_seconds": 3600})).await;
        let aborted = browser
            .run(
                r#"const [baseUrl, token, id] = args;
                   const control = new AbortController();
                   try {
                     await runq.poll(id, { baseUrl, token, signal: control.signal,
                                           onProgress: () => control.abort() });
                     return null;
                   } catch (e) { return e.name; }"#,
                json!([api, token, queued]),
            )
            .await;
        assert_eq!(aborted, "AbortError");

        // The same page from an origin not in RUNQ_CORS_ORIGINS: the browser refuses the answer.
        browser.goto(&format!("http://localhost:{page_port}/")).await;
        let foreign = browser
            .run(
                r#"const [url, token] = args;
                   try { await fetch(url, { headers: { Authorization: `Bearer ${token}` } }); return "answered"; }
                   catch (e) { return e.name; }"#,
                json!([format!("{api}/jobs/{id}/status"), token]),
            )
            .await;
        assert_eq!(foreign, "TypeError", "CORS is enforced for other origins");
    })
    .await;
    dev.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `poll` rides out the API going away: the requests fail while `runq dev` is down, it retries
/// with backoff, and once a new `runq dev` answers on the same port it resumes from the last
/// status it had (its ETag) and resolves when the job ends.
#[sqlx::test(migrations = false)]
async fn browser_client_resumes_after_the_api_restarts(pool: PgPool) {
    let Some(browser) = Browser::start().await else { return };
    let page_port = serve_page().await;
    let origin = format!("http://127.0.0.1:{page_port}");
    let (api_port, emulator_port, dir, url) = (free_port(), free_port(), temp_dir(), database_url(&pool));
    let dev = Dev::start(&url, api_port, emulator_port, &dir, &[("RUNQ_CORS_ORIGINS", &origin)]).await;
    let api = format!("http://127.0.0.1:{api_port}");
    let token = dev.token.clone();
    let cwd = dir.clone();
    with_browser("browser_client_resumes_after_the_api_restarts", browser, move |browser| async move {
        browser.goto(&format!("{origin}/")).await;
        let id = submit(&api, &token, json!({"function": "sleep", "args": {"seconds": 300, "steps": 1}})).await;
        // Start following it; promises the test awaits one by one.
        browser
            .run(
                r#"const [baseUrl, token, id] = args;
                   const signal = (name) => { let r; window[name] = new Promise(res => r = res); return r; };
                   const running = signal("running"), retried = signal("retried"), resumed = signal("resumed");
                   let failures = 0;
                   window.final = runq.poll(id, { baseUrl, token, wait: 1, maxRetryDelayMs: 1000,
                       onProgress: s => {
                         if (s.status === "running") running();
                         if (failures > 0) resumed(s);
                       },
                       onRetry: (e, ms) => { failures++; show(`retry in ${ms} ms: ${e}`); retried(String(e)); } });
                   window.final.catch(() => {});
                   return true;"#,
                json!([api, token, id]),
            )
            .await;
        browser.run("await window.running; return true;", json!([])).await;
        dev.stop().await;
        let error = browser.run("return await window.retried;", json!([])).await;
        assert!(error.as_str().unwrap().contains("TypeError"), "a network error: {error}");
        let dev = Dev::start(&url, api_port, emulator_port, &cwd, &[("RUNQ_CORS_ORIGINS", &origin)]).await;
        let resumed = browser.run("return await window.resumed;", json!([])).await;
        assert_eq!(resumed["id"], id.as_str(), "{resumed}");

        let resp = reqwest::Client::new()
            .post(format!("{api}/jobs/{id}/cancel"))
            .bearer_auth(&dev.token)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        let final_status = browser.run("return await window.final;", json!([])).await;
        assert_eq!(final_status["status"], "cancelled", "{final_status}");

        let requests = browser.run("return window.requests;", json!([])).await;
        let requests = requests.as_array().unwrap();
        let first_failed = requests.iter().position(|r| !r["error"].is_null()).expect("a request failed");
        let last_tag_before = requests[..first_failed].iter().rev().find_map(|r| r["etag"].as_str()).unwrap();
        let first_answer_after =
            requests[first_failed..].iter().find(|r| r["error"].is_null()).expect("a request answered again");
        assert_eq!(first_answer_after["ifNoneMatch"], last_tag_before, "it resumed from its last ETag: {requests:?}");
        dev.stop().await;
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The dashboard as an operator uses it, clicked through in Chromium against `runq dev`: paste
/// a token, filter the jobs, open one, cancel it and see the page say so; and a job whose args
/// are hostile markup shows them as text (no element made, no script run).
#[sqlx::test]
async fn dashboard_click_through_cancel_and_hostile_args_as_text(pool: PgPool) {
    let Some(browser) = Browser::start().await else { return };
    let (api_port, emulator_port, dir) = (free_port(), free_port(), temp_dir());
    let dev = Dev::start(&database_url(&pool), api_port, emulator_port, &dir, &[]).await;
    let api = format!("http://127.0.0.1:{api_port}");
    let token = dev.token.clone();
    with_browser("dashboard_click_through_cancel_and_hostile_args_as_text", browser, move |browser| async move {
        let long = submit(&api, &token, json!({"function": "sleep", "args": {"seconds": 120, "steps": 120}})).await;
        let hostile = r#"<img src=x onerror="window.pwned=1"></pre><script>window.pwned=2</script>"#;
        let echo = submit(&api, &token, json!({"function": "echo", "args": {"value": hostile}})).await;
        browser.goto(&format!("{api}/dashboard")).await;
        let out = browser
            .run(
                r#"const [token, long, echo] = args;
                   const $ = (id) => document.getElementById(id);
                   const until = async (what, check) => {
                     for (let i = 0; i < 300; i++) { const v = check(); if (v) return v; await new Promise(r => setTimeout(r, 100)); }
                     throw new Error('timed out waiting for ' + what);
                   };
                   const submit = (form) => form.dispatchEvent(new Event('submit', { cancelable: true, bubbles: true }));
                   // Sign in: the page asks for a token first.
                   await until('the sign-in form', () => !$('login').hidden);
                   $('token').value = token;
                   submit($('login-form'));
                   await until('the jobs table', () => !$('app').hidden && $('job-table').tBodies[0].rows.length > 0);
                   // Filter to the sleep function: only the long job is listed.
                   $('f-function').value = 'sleep';
                   submit($('filters'));
                   const rows = await until('the filtered list', () => {
                     const r = Array.from($('job-table').tBodies[0].rows);
                     return r.length > 0 && r.every(tr => tr.cells[1].textContent === 'sleep') ? r : null;
                   });
                   const listed = rows.length;
                   // Open it by clicking its row, wait for it to run, then cancel (confirmed).
                   rows[0].click();
                   await until('the job view', () => !$('job').hidden && $('job-id').textContent === long);
                   // The view follows its job: it shows the run once the worker has claimed it.
                   await until('the run', () => $('job-status').textContent === 'running');
                   let asked = null;
                   window.confirm = (question) => { asked = question; return true; };
                   $('cancel').click();
                   await until('the cancel answer', () => $('cancel-result').textContent);
                   const answer = $('cancel-result').textContent;
                   await until('cancelled', () => $('job-status').textContent === 'cancelled');
                   const status = $('job-status').textContent;
                   // The hostile args: shown as text.
                   location.hash = '#job/' + echo;
                   await until('the echo job', () => $('job-id').textContent === echo && $('job-args').textContent.includes('onerror'));
                   return { listed, asked, answer, status,
                            args: $('job-args').textContent,
                            injected: document.querySelectorAll('#job img, #job-args script, #job-args img').length,
                            pwned: window.pwned === undefined ? null : window.pwned };"#,
                json!([token, long, echo]),
            )
            .await;
        assert_eq!(out["listed"], 1, "the filter leaves the one sleep job: {out}");
        assert!(out["asked"].as_str().unwrap().contains(&long), "the confirmation names the job: {out}");
        assert!(out["answer"].as_str().unwrap().starts_with("cancel requested"), "{out}");
        assert_eq!(out["status"], "cancelled", "{out}");
        let args = out["args"].as_str().unwrap();
        for markup in [r#"<img src=x onerror=\"window.pwned=1\">"#, "</pre><script>window.pwned=2</script>"] {
            assert!(args.contains(markup), "the args are shown as the text they are ({markup}): {out}");
        }
        assert_eq!(out["injected"], 0, "no element made from the args: {out}");
        assert_eq!(out["pwned"], Value::Null, "no script ran: {out}");
        // The API agrees: the job was cancelled while running.
        let job: Value = reqwest::Client::new()
            .get(format!("{api}/jobs/{long}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(job["status"], "cancelled", "{job}");
    })
    .await;
    dev.stop().await;
}

/// The dashboard's panels for acting, in Chromium against `runq dev`: the per-function stats,
/// signals and workers panels fill in; a search by error text lists exactly the jobs whose
/// message holds it; and "act on these" asks first with the dry run's count ("This will retry 2
/// jobs"), then retries exactly those.
#[sqlx::test]
async fn dashboard_panels_search_by_error_text_and_act_on_the_filter(pool: PgPool) {
    let Some(browser) = Browser::start().await else { return };
    let (api_port, emulator_port, dir) = (free_port(), free_port(), temp_dir());
    let dev = Dev::start(&database_url(&pool), api_port, emulator_port, &dir, &[]).await;
    let api = format!("http://127.0.0.1:{api_port}");
    let token = dev.token.clone();
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for message in ["disk full on <b>/dev/sda</b>", "Disk full again", "connection refused"] {
        let body = json!({"function": "fail", "args": {"message": message, "retryable": false}});
        ids.push(submit(&api, &token, body).await);
    }
    // Wait for all three to fail (their single run ends them).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for id in &ids {
        loop {
            let job: Value =
                http.get(format!("{api}/jobs/{id}")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
            if job["status"] == "failed" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the job failed: {job}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (api_url, tok) = (api.clone(), token.clone());
    with_browser("dashboard_panels_search_by_error_text_and_act_on_the_filter", browser, move |browser| async move {
        browser.goto(&format!("{api_url}/dashboard#token={tok}")).await;
        let out = browser
            .run(
                r#"const $ = (id) => document.getElementById(id);
                   const until = async (what, check) => {
                     for (let i = 0; i < 300; i++) { const v = check(); if (v) return v; await new Promise(r => setTimeout(r, 100)); }
                     throw new Error('timed out waiting for ' + what);
                   };
                   const rowsOf = (id) => Array.from($(id).tBodies[0].rows);
                   // The panels: the fail function's stats, the signals, the worker that ran them.
                   const fnRow = await until('the function stats', () =>
                     rowsOf('fn-stats').find(tr => tr.cells[0].textContent === 'fail'));
                   const stats = { runs: fnRow.cells[1].textContent, failed: fnRow.cells[6].textContent,
                                   errors: fnRow.cells[7].textContent };
                   const signals = await until('the signals', () => rowsOf('signals').length >= 4 ? rowsOf('signals') : null);
                   const workers = await until('the workers', () => {
                     const r = rowsOf('workers');
                     return r.length && r[0].cells.length === 4 ? r : null;
                   });
                   // Search by error text: only the two disk-full jobs are listed.
                   $('f-error').value = 'disk full';
                   $('filters').dispatchEvent(new Event('submit', { cancelable: true, bubbles: true }));
                   const listed = await until('the filtered list', () => {
                     const r = rowsOf('job-table');
                     return r.length === 2 && r.every(tr => tr.cells[1].textContent === 'fail') ? r : null;
                   });
                   const listedIds = listed.map(tr => tr.cells[0].title);
                   // Act on them: the confirmation names the dry run's count, then the retry runs.
                   let asked = null;
                   window.confirm = (question) => { asked = question; return true; };
                   $('act-action').value = 'retry';
                   $('act-form').dispatchEvent(new Event('submit', { cancelable: true, bubbles: true }));
                   const result = await until('the operation', () => /changed/.test($('act-result').textContent) && $('act-result').textContent);
                   return { stats, signals: signals.map(tr => tr.cells[0].textContent + ': ' + tr.cells[1].textContent),
                            workers: workers.map(tr => tr.cells[0].textContent), listedIds, asked, result,
                            injected: document.querySelectorAll('#job-table b, #fn-stats b').length };"#,
                json!([]),
            )
            .await;
        assert_eq!(out["stats"]["runs"], "3", "{out}");
        assert_eq!(out["stats"]["failed"], "100.0%", "{out}");
        assert_eq!(out["stats"]["errors"], "error 3", "{out}");
        let signals = out["signals"].as_array().unwrap();
        assert!(signals.iter().any(|s| s.as_str().unwrap().starts_with("held by limits and pauses: 0")), "{out}");
        assert!(!out["workers"].as_array().unwrap().is_empty(), "{out}");
        let listed: BTreeSet<&str> = out["listedIds"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(listed, BTreeSet::from([ids[0].as_str(), ids[1].as_str()]), "{out}");
        let asked = out["asked"].as_str().unwrap();
        assert!(asked.starts_with("This will retry 2 jobs"), "{out}");
        assert!(asked.contains("error = disk full"), "{out}");
        assert_eq!(out["result"], "retry: 2 jobs changed (finished)", "{out}");
        assert_eq!(out["injected"], 0, "{out}");
        // The API agrees: the two were retried (a second run), the third was not.
        for (id, retried) in [(&ids[0], true), (&ids[1], true), (&ids[2], false)] {
            let job: Value =
                http.get(format!("{api_url}/jobs/{id}")).bearer_auth(&tok).send().await.unwrap().json().await.unwrap();
            let again = job["status"] != "failed" || job["attempt"].as_i64() == Some(2);
            assert_eq!(again, retried, "{job}");
        }
    })
    .await;
    dev.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
