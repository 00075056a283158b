//! The real `runq` binary: config errors name their variable, `runq token` mints a token that
//! `runq api` accepts (the README's curl example), and SIGTERM drains and exits cleanly.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::process::Command;

use crate::common::database_url;

const SECRET: &str = "binary-test-secret-0123456789abcdef";

fn runq() -> Command {
    let mut cmd = Command::new(crate::common::runq_bin());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUNQ_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

use crate::common::free_port;

#[tokio::test]
async fn help_lists_the_subcommands() {
    let out = runq().arg("--help").output().await.unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for sub in ["api", "migrate", "token"] {
        assert!(help.contains(sub), "--help lists {sub}: {help}");
    }
}

#[tokio::test]
async fn config_errors_name_the_variable() {
    let cases = [
        (vec![("RUNQ_AUTH_HS256_SECRET", SECRET)], "DATABASE_URL"),
        (
            vec![
                ("DATABASE_URL", "postgres://x@127.0.0.1:1/x"),
                ("RUNQ_AUTH_HS256_SECRET", SECRET),
                ("PORT", "eighty"),
            ],
            "PORT",
        ),
        (vec![("DATABASE_URL", "mysql://x/y"), ("RUNQ_AUTH_HS256_SECRET", SECRET)], "DATABASE_URL"),
        (vec![("DATABASE_URL", "postgres://x@127.0.0.1:1/x")], "RUNQ_AUTH_HS256_SECRET"),
        (
            vec![("DATABASE_URL", "postgres://x@127.0.0.1:1/x"), ("RUNQ_AUTH_HS256_SECRET", "short")],
            "RUNQ_AUTH_HS256_SECRET",
        ),
        (
            vec![("DATABASE_URL", "postgres://x@127.0.0.1:1/x"), ("RUNQ_AUTH_JWKS_URL", "https://idp.example/jwks")],
            "RUNQ_AUTH_ISSUER",
        ),
        (
            vec![
                ("DATABASE_URL", "postgres://x@127.0.0.1:1/x"),
                ("RUNQ_AUTH_HS256_SECRET", SECRET),
                ("RUNQ_AUTO_MIGRATE", "maybe"),
            ],
            "RUNQ_AUTO_MIGRATE",
        ),
        (
            vec![
                ("DATABASE_URL", "postgres://x@127.0.0.1:1/x"),
                ("RUNQ_AUTH_HS256_SECRET", SECRET),
                ("RUNQ_CORS_ORIGINS", "*"),
            ],
            "RUNQ_CORS_ORIGINS",
        ),
        (
            vec![
                ("DATABASE_URL", "postgres://x@127.0.0.1:1/x"),
                ("RUNQ_AUTH_HS256_SECRET", SECRET),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317"),
            ],
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
    ];
    for (env, var) in cases {
        let out = runq().arg("api").envs(env.clone()).output().await.unwrap();
        assert!(!out.status.success(), "{env:?} refused");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(var), "the error for {env:?} names {var}: {stderr}");
    }
}

#[sqlx::test(migrations = false)]
async fn api_serves_the_readme_example_and_drains_on_sigterm(pool: PgPool) {
    let url = database_url(&pool);
    let port = free_port();
    // `runq api` migrates a fresh database itself (RUNQ_AUTO_MIGRATE defaults on).
    let mut api = runq()
        .arg("api")
        .env("DATABASE_URL", &url)
        .env("PORT", port.to_string())
        .env("RUNQ_AUTH_HS256_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut ready = false;
    for _ in 0..100 {
        if let Ok(resp) = http.get(format!("{base}/readyz")).send().await
            && resp.status().is_success()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "runq api became ready");

    let out = runq()
        .args(["token", "--sub", "alice", "--ttl", "10m"])
        .env("RUNQ_AUTH_HS256_SECRET", SECRET)
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let resp = http
        .post(format!("{base}/jobs"))
        .bearer_auth(&token)
        .json(&json!({"function": "sleep", "args": {"seconds": 2, "steps": 4}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED);
    let job: Value = resp.json().await.unwrap();
    let status: Value = http
        .get(format!("{base}/jobs/{}/status", job["id"].as_str().unwrap()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "queued");

    // SIGTERM: the process drains and exits 0.
    let pid = api.id().unwrap() as i32;
    assert_eq!(send_sigterm(pid), 0);
    let exit = tokio::time::timeout(Duration::from_secs(15), api.wait()).await.expect("exits after SIGTERM").unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    let mut logs = String::new();
    use tokio::io::AsyncReadExt;
    api.stdout.take().unwrap().read_to_string(&mut logs).await.unwrap();
    let lines: Vec<Value> = logs.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(!lines.is_empty(), "logs are JSON lines: {logs}");
    assert!(lines.iter().all(|l| l["severity"].is_string() && l["message"].is_string()));
    assert!(!logs.contains("\"seconds\""), "args are never logged");
}

/// Sends SIGTERM through the `kill` command (no libc dependency for one call).
fn send_sigterm(pid: i32) -> i32 {
    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().map_or(-1, |s| s.code().unwrap_or(-1))
}

#[sqlx::test(migrations = false)]
async fn runq_dev_and_the_cli_run_the_readme_walkthrough(pool: PgPool) {
    use tokio::io::AsyncBufReadExt;
    let (api_port, emulator_port) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("runq-dev-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut dev = runq()
        .args(["dev", "--api-addr", &format!("127.0.0.1:{api_port}"), "--emulator-addr"])
        .arg(format!("127.0.0.1:{emulator_port}"))
        .env("DATABASE_URL", database_url(&pool))
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The banner names the API and prints a ready token.
    let mut lines = tokio::io::BufReader::new(dev.stdout.take().unwrap()).lines();
    let mut token = None;
    let read_banner = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(t) = line.trim().strip_prefix("token     export RUNQ_TOKEN=") {
                token = Some(t.to_owned());
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read_banner).await.expect("runq dev printed its banner");
    let token = token.expect("a token line");
    let out = runq()
        .args(["submit", "sleep", "--args", r#"{"seconds": 1, "steps": 4}"#, "--wait"])
        .env("RUNQ_API_URL", format!("http://127.0.0.1:{api_port}"))
        .env("RUNQ_TOKEN", &token)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((job["status"].as_str(), job["progress"].as_f64()), (Some("succeeded"), Some(1.0)));
    let failing = runq()
        .args(["submit", "fail", "--args", r#"{"retryable": false, "message": "nope"}"#, "--wait"])
        .env("RUNQ_API_URL", format!("http://127.0.0.1:{api_port}"))
        .env("RUNQ_TOKEN", &token)
        .output()
        .await
        .unwrap();
    assert_eq!(failing.status.code(), Some(1), "a failed job exits 1");
    assert!(String::from_utf8_lossy(&failing.stderr).contains("nope"));
    assert_eq!(send_sigterm(dev.id().unwrap() as i32), 0);
    let exit = tokio::time::timeout(Duration::from_secs(20), dev.wait()).await.expect("dev stops on SIGTERM").unwrap();
    assert!(exit.success(), "{exit:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[sqlx::test(migrations = false)]
async fn api_without_auto_migrate_refuses_an_old_schema(pool: PgPool) {
    let out = runq()
        .arg("api")
        .env("DATABASE_URL", database_url(&pool))
        .env("PORT", free_port().to_string())
        .env("RUNQ_AUTH_HS256_SECRET", SECRET)
        .env("RUNQ_AUTO_MIGRATE", "false")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("runq migrate"), "says how to fix it: {stderr}");
    // `runq migrate` brings it up to date; then the same start succeeds past the check.
    let migrated = runq().arg("migrate").env("DATABASE_URL", database_url(&pool)).output().await.unwrap();
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('jobs', 'job_runs', 'idempotency_keys')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 3);
}

/// `runq dev` as a person runs it: its API on `PORT` (as Cloud Run and most tools set it) when
/// `RUNQ_DEV_API_ADDR` is unset, readable text logs by default (not JSON lines, even piped into
/// a file), and none of the production warnings (only the expected JWKS-over-http one).
#[sqlx::test(migrations = false)]
async fn runq_dev_listens_on_port_and_logs_readable_text(pool: PgPool) {
    use tokio::io::AsyncBufReadExt;
    let (api_port, emulator_port) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("runq-dev-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut dev = runq()
        .env_remove("RUNQ_LOG_FORMAT")
        .args(["dev", "--emulator-addr", &format!("127.0.0.1:{emulator_port}")])
        .env("PORT", api_port.to_string())
        .env("DATABASE_URL", database_url(&pool))
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(dev.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let read_banner = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line.clone());
            if let Some(t) = line.trim().strip_prefix("token     export RUNQ_TOKEN=") {
                return t.to_owned();
            }
        }
        panic!("runq dev exited before its banner");
    };
    let token = tokio::time::timeout(Duration::from_secs(30), read_banner).await.expect("runq dev printed its banner");
    let base = format!("http://127.0.0.1:{api_port}");
    assert!(seen.iter().any(|l| l.trim() == format!("API       {base}")), "the banner names PORT's URL: {seen:?}");

    // A job through it, so the API, a worker and the emulator all log something.
    let http = reqwest::Client::new();
    let resp =
        http.post(format!("{base}/jobs")).bearer_auth(&token).json(&json!({"function": "noop"})).send().await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED);
    let id = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let finished = async {
        let mut etag: Option<String> = None;
        loop {
            let mut req = http.get(format!("{base}/jobs/{id}/status?wait=10")).bearer_auth(&token);
            if let Some(tag) = &etag {
                req = req.header("If-None-Match", tag);
            }
            let resp = req.send().await.unwrap();
            if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
                continue;
            }
            etag = resp.headers().get("etag").map(|v| v.to_str().unwrap().to_owned());
            let status: Value = resp.json().await.unwrap();
            if status["status"] == "succeeded" {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), finished).await.expect("the job ran");

    assert_eq!(send_sigterm(dev.id().unwrap() as i32), 0);
    let rest = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), rest).await.expect("stdout closes");
    let exit = tokio::time::timeout(Duration::from_secs(20), dev.wait()).await.expect("dev stops on SIGTERM").unwrap();
    assert!(exit.success(), "{exit:?}");
    let mut stderr = String::new();
    use tokio::io::AsyncReadExt;
    dev.stderr.take().unwrap().read_to_string(&mut stderr).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    let logs: Vec<&String> =
        seen.iter().filter(|l| l.contains(" INFO ") || l.contains(" WARN ") || l.contains(" ERROR ")).collect();
    assert!(logs.iter().any(|l| l.contains(" INFO ") && l.contains("job submitted")), "text log lines: {seen:#?}");
    assert!(
        !seen.iter().chain(stderr.lines().map(str::to_owned).collect::<Vec<_>>().iter()).any(|l| l.starts_with('{')),
        "no JSON lines: {seen:#?} {stderr}"
    );
    assert!(!seen.iter().any(|l| l.contains('\u{1b}')), "no terminal colours in a pipe: {seen:#?}");
    let warnings: Vec<&&String> = logs
        .iter()
        .filter(|l| (l.contains(" WARN ") || l.contains(" ERROR ")) && !l.contains("JWKS fetched over plain http"))
        .collect();
    assert!(warnings.is_empty(), "runq dev warns only about what dev expects: {warnings:#?}");
    assert!(!stderr.contains("WARN"), "{stderr}");
}
