//! The dashboard: `/jobs/{id}/runs` (with a real retried job), `/dashboard/stats` against a known
//! data set, and the page with its security headers and its actions. With `RUNQ_TEST_CHROMIUM`
//! set, headless Chromium also renders the page over real data (a bulk action's dry run, the
//! operations list with hostile strings) and screenshots it.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::common::{admin_token, start_api, token};
use crate::e2e::{self, SECRET};

/// A token for the e2e stack (it has its own secret and no audience).
fn stack_token(sub: &str, admin: bool) -> String {
    runq::auth::mint_hs256(SECRET, sub, admin, Duration::from_secs(600), "scope", "runq:admin", None, None).unwrap()
}

async fn get(http: &reqwest::Client, url: String, token: &str) -> (StatusCode, Value) {
    let resp = http.get(url).bearer_auth(token).send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn ts(v: &Value) -> chrono::DateTime<chrono::Utc> {
    v.as_str().unwrap_or_else(|| panic!("a timestamp, got {v}")).parse().unwrap()
}

#[sqlx::test]
async fn runs_show_a_retry_and_its_backoff_gap(pool: PgPool) {
    let s = e2e::stack(&pool).await;
    let job = s.submit(json!({"function": "fail", "args": {"message": "flaky", "times": 1}})).await;
    let id = job["id"].as_str().unwrap();
    let done = s.finished(id).await;
    assert_eq!(done["status"], "succeeded");

    let url = format!("{}/jobs/{id}/runs", s.dev.api_url);
    let (status, body) = get(&s.http, url.clone(), &s.token).await;
    assert_eq!(status, StatusCode::OK);
    let runs = body["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{body}");
    let (first, second) = (&runs[0], &runs[1]);
    assert_eq!((first["attempt"].as_i64(), first["outcome"].as_str()), (Some(1), Some("retrying")));
    assert_eq!(first["error"], json!({"kind": "error", "message": "flaky", "retryable": true}));
    assert_eq!((second["attempt"].as_i64(), second["outcome"].as_str()), (Some(2), Some("succeeded")));
    assert_eq!(second["error"], Value::Null);
    assert_eq!(second["retry_at"], Value::Null);
    assert!(first["worker_id"].as_str().is_some_and(|w| !w.is_empty()));
    // The gap: the first run ended, its backoff ran until retry_at, then the second run started.
    let (ended, due, restarted) = (ts(&first["finished_at"]), ts(&first["retry_at"]), ts(&second["started_at"]));
    assert!(ts(&first["started_at"]) <= ended && ended <= due && due <= restarted, "{body}");
    assert!(ts(&second["finished_at"]) >= restarted);

    // Another owner sees nothing; an admin sees the same runs.
    let (status, _) = get(&s.http, url.clone(), &stack_token("mallory", false)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, admin_view) = get(&s.http, url, &stack_token("root", true)).await;
    assert_eq!((status, admin_view), (StatusCode::OK, body));
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn runs_are_owner_scoped_and_validate_the_id(pool: PgPool) {
    let api = start_api(pool).await;
    let resp = api
        .http
        .post(api.url("/jobs"))
        .bearer_auth(token("alice"))
        .json(&json!({"function": "noop", "delay_seconds": 3600}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let id = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let runs = api.url(&format!("/jobs/{id}/runs"));

    let (status, body) = get(&api.http, runs.clone(), &token("alice")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"runs": []})), "not run yet");
    let (status, body) = get(&api.http, runs.clone(), &token("bob")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["type"], "https://runq.dev/problems/job-not-found");
    let (status, _) = get(&api.http, runs.clone(), &admin_token("ops")).await;
    assert_eq!(status, StatusCode::OK);
    let unknown = api.url(&format!("/jobs/{}/runs", uuid::Uuid::now_v7()));
    assert_eq!(get(&api.http, unknown, &admin_token("ops")).await.0, StatusCode::NOT_FOUND);
    let (status, body) = get(&api.http, api.url("/jobs/not-a-uuid/runs"), &token("alice")).await;
    assert_eq!((status, body["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("id")));
    assert_eq!(api.http.get(runs).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
}

/// Inserts `n` jobs as they would be after running, `finished` an SQL expression over `b` (the
/// current minute) or NULL.
async fn insert(pool: &PgPool, n: i32, owner: &str, function: &str, priority: &str, status: &str, finished: &str) {
    let sql = format!(
        "WITH b AS (SELECT date_trunc('minute', now()) AS b)
         INSERT INTO jobs (id, owner, function, priority, args, status, attempt, max_attempts, finished_at)
         SELECT gen_random_uuid(), $1, $2, $3, '{{}}', $4, 1, 3, {finished} FROM b, generate_series(1, $5)"
    );
    sqlx::query(&sql).bind(owner).bind(function).bind(priority).bind(status).bind(n).execute(pool).await.unwrap();
}

#[sqlx::test]
async fn stats_are_exact_for_a_known_data_set(pool: PgPool) {
    let minute: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT date_trunc('minute', now())").fetch_one(&pool).await.unwrap();
    insert(&pool, 3, "alice", "noop", "medium", "succeeded", "b - interval '2 minutes' + interval '10 seconds'").await;
    insert(&pool, 1, "bob", "echo", "medium", "failed", "b - interval '5 minutes' + interval '1 second'").await;
    insert(&pool, 1, "bob", "fail", "low", "failed", "now() - interval '2 hours'").await;
    // Finished before the counts' window (24 h): kept, listed, but not counted.
    insert(&pool, 4, "bob", "noop", "low", "succeeded", "now() - interval '25 hours'").await;
    insert(&pool, 1, "carol", "sleep", "low", "cancelled", "b - interval '1 minute'").await;
    insert(&pool, 2, "alice", "noop", "high", "queued", "NULL").await;
    insert(&pool, 1, "bob", "sleep", "low", "queued", "NULL").await;
    insert(&pool, 1, "bob", "sleep", "medium", "running", "NULL").await;
    insert(&pool, 1, "carol", "fail", "high", "retrying", "NULL").await;

    let api = start_api(pool).await;
    let (status, stats) = get(&api.http, api.url("/dashboard/stats"), &admin_token("ops")).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert_eq!(
        stats["by_status"],
        json!({"pending": 0, "waiting": 0, "queued": 3, "running": 1, "retrying": 1, "succeeded": 3, "failed": 2, "cancelled": 1})
    );
    assert_eq!(
        stats["by_function"],
        json!({
            "echo": {"failed": 1},
            "fail": {"failed": 1, "retrying": 1},
            "noop": {"queued": 2, "succeeded": 3},
            "sleep": {"cancelled": 1, "queued": 1, "running": 1},
        })
    );
    assert_eq!(
        stats["unfinished_by_priority"],
        json!({
            "high": {"queued": 2, "running": 0, "retrying": 1},
            "medium": {"queued": 0, "running": 1, "retrying": 0},
            "low": {"queued": 1, "running": 0, "retrying": 0},
        })
    );
    assert_eq!(stats["finished_window_secs"], 86_400);
    assert_eq!(stats["throughput"]["last_hour"], json!({"succeeded": 3, "failed": 1}));
    let per_minute = stats["throughput"]["finished_per_minute"].as_array().unwrap();
    assert_eq!(per_minute.len(), 15);
    let minutes: Vec<_> = per_minute.iter().map(|m| ts(&m["minute"])).collect();
    assert!(minutes.windows(2).all(|w| w[1] - w[0] == chrono::Duration::minutes(1)), "consecutive: {minutes:?}");
    // Looked up by minute, so the test holds even if the clock crossed a minute meanwhile.
    let at = |ago: i64| {
        let m = minute - chrono::Duration::minutes(ago);
        per_minute.iter().find(|p| ts(&p["minute"]) == m).map_or(0, |p| p["finished"].as_i64().unwrap())
    };
    assert_eq!((at(1), at(2), at(5)), (1, 3, 1));
    assert_eq!(per_minute.iter().map(|p| p["finished"].as_i64().unwrap()).sum::<i64>(), 5);
}

#[sqlx::test]
async fn stats_need_an_admin_token(pool: PgPool) {
    let api = start_api(pool).await;
    let (status, body) = get(&api.http, api.url("/dashboard/stats"), &token("alice")).await;
    assert_eq!((status, body["type"].as_str()), (StatusCode::FORBIDDEN, Some("https://runq.dev/problems/forbidden")));
    let anonymous = api.http.get(api.url("/dashboard/stats")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[sqlx::test]
async fn the_page_is_self_contained_and_locked_down(pool: PgPool) {
    let api = start_api(pool).await;
    let resp = api.http.get(api.url("/dashboard")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let header = |name: &str| resp.headers()[name].to_str().unwrap().to_owned();
    assert!(header("content-type").starts_with("text/html"));
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("referrer-policy"), "no-referrer");
    let csp = header("content-security-policy");
    for directive in ["default-src 'none'", "connect-src 'self'", "base-uri 'none'", "frame-ancestors 'none'"] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    let html = resp.text().await.unwrap();
    // The inline script and style are allowed by their exact hashes, so the browser runs them.
    let inline = |open: &str, close: &str| {
        let start = html.find(open).unwrap() + open.len();
        let len = html[start..].find(close).unwrap();
        let digest = Sha256::digest(&html.as_bytes()[start..start + len]);
        format!("'sha256-{}'", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, digest))
    };
    assert!(csp.contains(&format!("script-src {}", inline("<script>", "</script>"))), "{csp}");
    assert!(csp.contains(&format!("style-src {}", inline("<style>", "</style>"))), "{csp}");
    // Nothing from elsewhere, and no HTML built from strings.
    for banned in ["http://", "https://", "src=", "@import", "url(", "innerHTML", "outerHTML", "insertAdjacentHTML"] {
        assert!(!html.contains(banned), "the page contains {banned:?}");
    }
    // The actions it offers: on one job, and on a filter with a dry run first and the recent
    // operations.
    for control in [
        "id=\"cancel\"",
        "id=\"retry\"",
        "id=\"delete\"",
        "id=\"bulk-form\"",
        "id=\"b-error-kind\"",
        "id=\"b-after\"",
        "id=\"bulk-start\"",
        "id=\"operations\"",
        "dry_run: true",
        "id=\"limits\"",
        "id=\"pauses\"",
        "getJson('limits')",
        "id=\"limit-form\"",
        "id=\"pause-form\"",
        "'/' + verb",
    ] {
        assert!(html.contains(control), "the page has {control}");
    }
    // The endpoints it calls are in the OpenAPI description, and the error kinds it offers come
    // from there.
    let spec: Value = api.http.get(api.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    for (path, method) in [
        ("/jobs/{id}/runs", "get"),
        ("/dashboard", "get"),
        ("/dashboard/stats", "get"),
        ("/jobs/{id}/cancel", "post"),
        ("/jobs/{id}/retry", "post"),
        ("/jobs/{id}", "delete"),
        ("/operations", "post"),
        ("/operations", "get"),
        ("/operations/{id}", "get"),
        ("/limits", "get"),
        ("/pauses", "get"),
        ("/limits/{name}", "put"),
        ("/limits/{name}", "delete"),
        ("/queues/{name}/pause", "post"),
        ("/functions/{name}/resume", "post"),
    ] {
        assert!(spec["paths"][path][method].is_object(), "{method} {path} is described");
    }
    let kinds = &spec["components"]["schemas"]["OperationFilter"]["properties"]["error_kind"]["enum"];
    assert!(kinds.as_array().is_some_and(|k| k.iter().any(|k| k == "timeout")), "{kinds}");
}

/// Renders the dashboard in headless Chromium over real jobs and writes screenshots to
/// `$RUNQ_TEST_CHROMIUM_OUT` (default the system temp dir). Runs only with `RUNQ_TEST_CHROMIUM`
/// set (to the browser's path, or `1` for `chromium`), so CI doesn't need a browser.
#[sqlx::test]
async fn chromium_renders_the_dashboard(pool: PgPool) {
    let Ok(browser) = std::env::var("RUNQ_TEST_CHROMIUM") else {
        eprintln!("skipped: set RUNQ_TEST_CHROMIUM to run it");
        return;
    };
    let browser = if browser == "1" { "chromium".to_owned() } else { browser };
    let out = std::env::var("RUNQ_TEST_CHROMIUM_OUT").map_or_else(|_| std::env::temp_dir(), std::path::PathBuf::from);
    let s = e2e::stack(&pool).await;
    let flaky = s.submit(json!({"function": "fail", "args": {"message": "flaky <b>bold</b>", "times": 1}})).await;
    let hostile = json!({"value": "<img src=x onerror=\"document.title='pwned'\"><script>alert(1)</script>"});
    let echo = s.submit(json!({"function": "echo", "args": hostile})).await;
    for i in 0..4 {
        s.submit(json!({"function": "sleep", "args": {"seconds": 0.2 * f64::from(i), "steps": 2}})).await;
    }
    s.submit(json!({"function": "fail", "args": {"message": "bad input", "retryable": false}})).await;
    s.submit(json!({"function": "noop", "delay_seconds": 600})).await;
    let flaky_id = flaky["id"].as_str().unwrap();
    s.finished(flaky_id).await;
    s.finished(echo["id"].as_str().unwrap()).await;

    let admin = stack_token("ops", true);
    let (base, flaky_id, echo_id) =
        (s.dev.api_url.clone(), flaky_id.to_owned(), echo["id"].as_str().unwrap().to_owned());
    let tasks = tokio::task::spawn_blocking(move || {
        let overview = screenshot(&browser, &out.join("runq-dashboard.png"), &base, &format!("token={admin}"));
        let job =
            screenshot(&browser, &out.join("runq-dashboard-job.png"), &base, &format!("job/{flaky_id}&token={admin}"));
        let hostile_view = screenshot(
            &browser,
            &out.join("runq-dashboard-hostile.png"),
            &base,
            &format!("job/{echo_id}&token={admin}"),
        );
        (overview, job, hostile_view)
    });
    let (overview, job, hostile_view) = tasks.await.unwrap();
    // The DOM after the scripts ran: data arrived, and the hostile args stayed text.
    assert!(overview.contains("echo") && overview.contains("succeeded"), "{overview}");
    assert!(!overview.contains("<img src=\"x\""), "args became markup");
    assert!(job.contains("flaky &lt;b&gt;bold&lt;/b&gt;") && job.contains("retrying"), "{job}");
    assert!(hostile_view.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{hostile_view}");
    assert!(hostile_view.contains("<title>runq dashboard</title>"), "the args' onerror ran");
    s.dev.shutdown().await;
}

/// Headless Chromium (with `RUNQ_TEST_CHROMIUM`, like the test above): a bulk action opened from
/// a link shows its dry run's count before anything changes, and the recent operations list
/// shows a hostile filter as text.
#[sqlx::test]
async fn chromium_previews_a_bulk_action_and_lists_operations_as_text(pool: PgPool) {
    let Ok(browser) = std::env::var("RUNQ_TEST_CHROMIUM") else {
        eprintln!("skipped: set RUNQ_TEST_CHROMIUM to run it");
        return;
    };
    let browser = if browser == "1" { "chromium".to_owned() } else { browser };
    let out = std::env::var("RUNQ_TEST_CHROMIUM_OUT").map_or_else(|_| std::env::temp_dir(), std::path::PathBuf::from);
    let api = start_api(pool.clone()).await;
    sqlx::query(
        "INSERT INTO jobs (id, owner, function, priority, args, status, attempt, max_attempts, finished_at, error)
         SELECT gen_random_uuid(), 'alice', 'report', 'low', '{}', 'failed', 3, 3, now(),
                '{\"kind\": \"timeout\", \"message\": \"slow\", \"retryable\": true}'
         FROM generate_series(1, 3)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let root = admin_token("root");
    let hostile = "<img src=x onerror=\"document.title='pwned'\">";
    let resp = api
        .http
        .post(api.url("/operations"))
        .bearer_auth(&root)
        .json(&json!({"action": "retry", "filter": {"function": hostile}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let fragment = format!("bulk?action=retry&function=report&error_kind=timeout&token={root}");
    let base = api.base.clone();
    let dom = tokio::task::spawn_blocking(move || {
        screenshot(&browser, &out.join("runq-dashboard-bulk.png"), &base, &fragment)
    })
    .await
    .unwrap();
    assert!(dom.contains("3 jobs match now"), "the dry run's count: {dom}");
    assert!(dom.contains("retry 3 jobs"), "the confirmation names what it will do");
    assert!(dom.contains("function = &lt;img src=x onerror="), "the hostile filter is text");
    assert!(!dom.contains("<img src=\"x\""), "the filter became markup");
    assert!(dom.contains("<title>runq dashboard</title>"), "the filter's onerror ran");
    // Only a dry run so far: the jobs are untouched.
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'failed' AND manual_retries = 0")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(failed, 3);
}

/// Opens `{base}/dashboard#{fragment}` in headless Chromium, writes a screenshot to `png` and
/// returns the DOM after the page's scripts ran.
pub(crate) fn screenshot(browser: &str, png: &std::path::Path, base: &str, fragment: &str) -> String {
    let url = format!("{base}/dashboard#{fragment}");
    let run = |extra: &str| {
        std::process::Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=1400,1100",
                "--virtual-time-budget=4000",
                extra,
                &url,
            ])
            .output()
            .expect("chromium starts")
    };
    let shot = run(&format!("--screenshot={}", png.display()));
    assert!(png.exists(), "no screenshot: {}", String::from_utf8_lossy(&shot.stderr));
    eprintln!("screenshot: {}", png.display());
    String::from_utf8_lossy(&run("--dump-dom").stdout).into_owned()
}
