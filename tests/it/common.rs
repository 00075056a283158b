//! Helpers shared by the integration tests: a real API server on 127.0.0.1:0 over a per-test
//! database, tokens, and row counts to prove a refused request wrote nothing.

use std::sync::Arc;
use std::time::Duration;

use runq::api::{self, ApiState, Limits};
use runq::auth::{UserAuthConfig, UserVerifier, mint_hs256};
use runq::function::Registry;
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
    Limits { max_args_bytes: 4096, idempotency_retention: Duration::from_secs(3600) }
}

pub fn verifier() -> UserVerifier {
    let cfg = UserAuthConfig {
        hs256_secret: Some(SECRET.into()),
        audience: Some(AUDIENCE.into()),
        ..UserAuthConfig::default()
    };
    UserVerifier::new(cfg, reqwest::Client::new()).unwrap()
}

/// Starts the API over `pool` on a free loopback port.
pub async fn start_api(pool: PgPool) -> TestApi {
    start_api_with(pool, &[]).await
}

pub async fn start_api_with(pool: PgPool, cors_origins: &[String]) -> TestApi {
    let state = ApiState {
        watcher: Some(runq::api::Watcher::start(pool.clone())),
        pool,
        registry: Arc::new(Registry::builtin()),
        verifier: verifier(),
        limits: limits(),
        outbox: None,
        internal: None,
    };
    let router = api::router(state, cors_origins);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(runq::server::serve(listener, router, std::future::pending(), Duration::from_secs(1)));
    TestApi { base: format!("http://{addr}"), http: reqwest::Client::new() }
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
