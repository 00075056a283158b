//! Load benchmark of the public API: `POST /jobs` jobs/s and `GET /jobs/{id}/status`
//! requests/s, with p50/p99 latency, at a fixed concurrency.
//!
//! Against a running `runq api`:
//!   cargo bench --bench api -- --url http://127.0.0.1:8080 --token "$(runq token --sub bench)"
//! Self-contained (starts the API in-process on a scratch database at DATABASE_URL's server):
//!   cargo bench --bench api

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};
use tokio::sync::Mutex;

#[derive(Parser, Debug)]
struct Args {
    /// Base URL of a running `runq api`; absent: start one in-process.
    #[arg(long)]
    url: Option<String>,
    /// Bearer token for `--url` (e.g. from `runq token --sub bench`).
    #[arg(long, env = "RUNQ_BENCH_TOKEN")]
    token: Option<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Jobs to submit (and status reads to make).
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Skip the status phase (for a submit-only run, e.g. at concurrency 1).
    #[arg(long)]
    submit_only: bool,
    /// Also print each rate as a `kv NAME VALUE` line (read by bench/vs-celery).
    #[arg(long)]
    kv: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

struct Report {
    name: &'static str,
    count: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Report {
    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    fn print(mut self, concurrency: usize) {
        self.latencies.sort();
        let pct = |p: f64| {
            let i = ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len()) - 1;
            self.latencies[i].as_secs_f64() * 1000.0
        };
        println!(
            "{:<24} {:>8} requests  {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  (concurrency {concurrency})",
            self.name,
            self.count,
            self.count as f64 / self.elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.99),
        );
    }
}

/// Runs `count` requests made by `make(i)` with `concurrency` workers; returns the report and
/// each response's JSON.
async fn drive<F, Fut>(name: &'static str, count: usize, concurrency: usize, make: F) -> (Report, Vec<Value>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Value> + Send,
{
    let make = Arc::new(make);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (make, next, results) = (make.clone(), next.clone(), results.clone());
            tokio::spawn(async move {
                let mut local = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let t = Instant::now();
                    let body = make(i).await;
                    local.push((t.elapsed(), body));
                }
                results.lock().await.extend(local);
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    let elapsed = started.elapsed();
    let results = std::mem::take(&mut *results.lock().await);
    let (latencies, bodies) = results.into_iter().unzip();
    (Report { name, count, elapsed, latencies }, bodies)
}

async fn start_in_process() -> (String, String) {
    let server = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let (base, _) = server.rsplit_once('/').expect("DATABASE_URL has a database");
    let admin = runq::store::connect_lazy(&server, 1, Duration::from_secs(5)).expect("DATABASE_URL");
    sqlx::query("DROP DATABASE IF EXISTS runq_bench WITH (FORCE)").execute(&admin).await.expect("drop runq_bench");
    sqlx::query("CREATE DATABASE runq_bench").execute(&admin).await.expect("create runq_bench");
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
    let pool = runq::store::connect_lazy(&format!("{base}/runq_bench"), cores * 4, Duration::from_secs(5)).unwrap();
    runq::store::migrate(&pool).await.expect("migrate");
    let secret = "bench-secret-0123456789abcdef-0123";
    let auth = runq::auth::UserAuthConfig { hs256_secret: Some(secret.into()), ..Default::default() };
    let settings = runq::api::ApiSettings { auto_migrate: false, ..runq::api::ApiSettings::new(auth) };
    let services = runq::services::Services::over(
        pool,
        runq::function::Registry::builtin(),
        runq::schedule::Schedules::builtin(),
        runq::auth::GOOGLE_JWKS_URL,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(runq::api::run(listener, settings, services, std::future::pending()));
    let token =
        runq::auth::mint_hs256(secret, "bench", false, Duration::from_secs(3600), "scope", "runq:admin", None, None)
            .unwrap();
    (format!("http://{addr}"), token)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let (base, token) = match &args.url {
        Some(url) => {
            (url.trim_end_matches('/').to_owned(), args.token.clone().expect("--token is required with --url"))
        }
        None => start_in_process().await,
    };
    let http = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build().unwrap();
    let auth = format!("Bearer {token}");
    println!("runq api bench: {} requests per phase against {base}", args.requests);

    let (h, a, b) = (http.clone(), auth.clone(), base.clone());
    let (submit, jobs) = drive("POST /jobs", args.requests, args.concurrency, move |i| {
        let (h, a, b) = (h.clone(), a.clone(), b.clone());
        async move {
            let resp = h
                .post(format!("{b}/jobs"))
                .header("authorization", a)
                .json(&json!({"function": "echo", "args": {"value": i}}))
                .send()
                .await
                .expect("submit");
            assert_eq!(resp.status(), 202, "submit accepted");
            resp.json().await.expect("job JSON")
        }
    })
    .await;
    if args.kv {
        println!("kv api.submit_per_s.c{} {:.1}", args.concurrency, submit.rate());
    }
    submit.print(args.concurrency);
    if args.submit_only {
        return;
    }

    let ids: Arc<Vec<String>> = Arc::new(jobs.iter().map(|j| j["id"].as_str().expect("id").to_owned()).collect());
    let (h, a, b) = (http.clone(), auth.clone(), base.clone());
    let (status, _) = drive("GET /jobs/{id}/status", args.requests, args.concurrency, move |i| {
        let (h, a, b, ids) = (h.clone(), a.clone(), b.clone(), ids.clone());
        async move {
            let resp = h
                .get(format!("{b}/jobs/{}/status", ids[i % ids.len()]))
                .header("authorization", a)
                .send()
                .await
                .expect("status");
            assert_eq!(resp.status(), 200, "status read");
            resp.json().await.expect("status JSON")
        }
    })
    .await;
    if args.kv {
        println!("kv api.status_per_s.c{} {:.1}", args.concurrency, status.rate());
    }
    status.print(args.concurrency);
}
