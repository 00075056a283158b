//! Helpers shared by the integration tests: a real API server on 127.0.0.1:0 over a per-test
//! database, tokens, and row counts to prove a refused request wrote nothing.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

use runq::api::{self, ApiSettings, Limits};
use runq::auth::{UserAuthConfig, mint_hs256};
use runq::function::Registry;
use runq::schedule::Schedules;
use runq::services::Services;
use sqlx::PgPool;

pub const SECRET: &str = "test-secret-that-is-long-enough-0123";
pub const AUDIENCE: &str = "runq-tests";

/// A running API: its base URL and an HTTP client.
pub struct TestApi {
    pub base: String,
    pub http: reqwest::Client,
}

impl TestApi {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

pub fn limits() -> Limits {
    Limits {
        max_args_bytes: 4096,
        idempotency_retention: Duration::from_secs(3600),
        search_timeout: runq::config::DEFAULT_SEARCH_TIMEOUT,
    }
}

/// The test API's token settings.
pub fn auth() -> UserAuthConfig {
    UserAuthConfig { hs256_secret: Some(SECRET.into()), audience: Some(AUDIENCE.into()), ..UserAuthConfig::default() }
}

/// Starts the API over `pool` on a free loopback port.
pub async fn start_api(pool: PgPool) -> TestApi {
    start_api_with(pool, &[]).await
}

pub async fn start_api_with(pool: PgPool, cors_origins: &[String]) -> TestApi {
    let settings = ApiSettings { cors_origins: cors_origins.to_vec(), ..settings() };
    start_api_over(pool, Registry::builtin(), Schedules::builtin(), settings, runq::auth::GOOGLE_JWKS_URL).await
}

/// The test API's settings: [`limits`], tokens of [`SECRET`] for [`AUDIENCE`], the schema as the
/// test database has it (migrated).
pub fn settings() -> ApiSettings {
    ApiSettings { limits: limits(), auto_migrate: false, grace: Duration::from_secs(1), ..ApiSettings::new(auth()) }
}

/// Runs `runq api`'s server (the same `api::run`) over `pool` on a free loopback port.
pub async fn start_api_over(
    pool: PgPool,
    registry: Registry,
    schedules: Schedules,
    settings: ApiSettings,
    oidc_jwks_url: &str,
) -> TestApi {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    serve_api(listener, pool, registry, schedules, settings, oidc_jwks_url);
    TestApi { base, http: reqwest::Client::new() }
}

/// Runs the API server on `listener` in the background.
pub fn serve_api(
    listener: tokio::net::TcpListener,
    pool: PgPool,
    registry: Registry,
    schedules: Schedules,
    settings: ApiSettings,
    oidc_jwks_url: &str,
) {
    let services = Services::over(pool, registry, schedules, oidc_jwks_url).unwrap();
    tokio::spawn(async move {
        if let Err(e) = api::run(listener, settings, services, std::future::pending()).await {
            panic!("the API stopped: {e}");
        }
    });
}

/// A valid token for `sub`.
pub fn token(sub: &str) -> String {
    mint_hs256(SECRET, sub, false, Duration::from_secs(600), "scope", "runq:admin", None, Some(AUDIENCE)).unwrap()
}

/// A valid admin token.
pub fn admin_token(sub: &str) -> String {
    mint_hs256(SECRET, sub, true, Duration::from_secs(600), "scope", "runq:admin", None, Some(AUDIENCE)).unwrap()
}

/// Rows in `jobs` and `idempotency_keys`, to show that a refused request changed nothing.
pub async fn counts(pool: &PgPool) -> (i64, i64) {
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs").fetch_one(pool).await.unwrap();
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys").fetch_one(pool).await.unwrap();
    (jobs, keys)
}

/// The URL of the per-test database behind `pool`, for starting the real binary against it.
pub fn database_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let db = pool.connect_options().get_database().expect("test database name").to_owned();
    let (server, _) = base.rsplit_once('/').expect("DATABASE_URL has a path");
    format!("{server}/{db}")
}

/// The `runq` binary the process tests run: `RUNQ_TEST_BIN` when set (CI points it at the
/// release binary the Dockerfile builds), else the one cargo built with the tests.
pub fn runq_bin() -> String {
    std::env::var("RUNQ_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_runq").to_owned())
}

/// A port free on 127.0.0.1 a moment ago, for a process that must be told its port. Drawn
/// below the kernel's ephemeral range (`ip_local_port_range`): a port from `bind(0)` is one the
/// kernel may hand to any outgoing connection or other `bind(0)` before the process binds it
/// (a CI run lost a test to that), while a port below the range is only taken by another
/// test drawing the same one of some ten thousand at the same moment.
pub fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if low > 12_000 {
        for _ in 0..100 {
            let port = rand::random_range(low - 10_000..low);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The HS256 secret of the [`Dev`] processes.
pub const DEV_SECRET: &str = "dev-process-test-secret-0123456789";

/// A `runq dev` process of the binary under test, with its log lines kept.
pub struct Dev {
    pub child: Child,
    pub token: String,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Dev {
    /// Starts `runq dev` in `dir` with its API on `api_port` (through `PORT`), its emulator on
    /// `emulator_port`, [`DEV_SECRET`] and nothing else of this environment but `PATH` and `env`,
    /// and waits for its banner.
    pub async fn start(database_url: &str, api_port: u16, emulator_port: u16, dir: &Path, env: &[(&str, &str)]) -> Dev {
        let mut child = Command::new(runq_bin())
            .args(["dev", "--emulator-addr", &format!("127.0.0.1:{emulator_port}")])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", database_url)
            .env("PORT", api_port.to_string())
            .env("RUNQ_AUTH_HS256_SECRET", DEV_SECRET)
            .envs(env.iter().copied())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let banner = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                logs.lock().unwrap().push(line.clone());
                if let Some(t) = line.trim().strip_prefix("token     export RUNQ_TOKEN=") {
                    return t.to_owned();
                }
            }
            panic!("runq dev exited before its banner: {:?}", logs.lock().unwrap());
        };
        let token = tokio::time::timeout(Duration::from_secs(60), banner).await.expect("runq dev printed its banner");
        let kept = logs.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock().unwrap().push(line);
            }
        });
        Dev { child, token, logs }
    }

    /// SIGTERM, and waits for a clean exit.
    pub async fn stop(mut self) {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("runq dev exits after SIGTERM")
            .unwrap();
        assert!(exit.success(), "runq dev exit: {exit:?}; logs: {:?}", self.logs.lock().unwrap());
    }
}
