//! End-to-end benchmark through a `runq dev` stack in this process (API, emulator pushing to
//! the workers, Postgres): `noop` throughput, and submit→start / submit→finish latency at a
//! fixed submit rate.
//!
//!   cargo bench --bench e2e                        # 20,000 jobs, then 200 jobs/s for 10 s
//!   cargo bench --bench e2e -- --jobs 5000 --rate 100 --seconds 5
//!
//! Uses a scratch database `runq_bench_e2e` on DATABASE_URL's server (default local Postgres).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use sqlx::PgPool;

#[derive(Parser, Debug)]
struct Args {
    /// Jobs in the throughput phase.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Submits in flight at once in the throughput phase.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Submit rate of the latency phase, jobs/s.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Length of the latency phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

const SECRET: &str = "bench-e2e-secret-0123456789abcdef";

async fn scratch_database() -> String {
    let server = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let (base, _) = server.rsplit_once('/').expect("DATABASE_URL has a database");
    let admin = runq::store::connect_lazy(&server, 1, Duration::from_secs(5)).expect("DATABASE_URL");
    sqlx::query("DROP DATABASE IF EXISTS runq_bench_e2e WITH (FORCE)").execute(&admin).await.expect("drop");
    sqlx::query("CREATE DATABASE runq_bench_e2e").execute(&admin).await.expect("create");
    format!("{base}/runq_bench_e2e")
}

async fn wait_all_finished(pool: &PgPool, expected: i64) {
    loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE finished_at IS NOT NULL")
            .fetch_one(pool)
            .await
            .expect("count");
        if done >= expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let url = scratch_database().await;
    let mut options = runq::dev::DevOptions::new(url, SECRET.into());
    options.api_addr = "127.0.0.1:0".into();
    options.emulator_addr = "127.0.0.1:0".into();
    let stack = runq::dev::DevStack::start(options, runq::function::Registry::builtin()).await.expect("dev stack");
    let token =
        runq::auth::mint_hs256(SECRET, "bench", false, Duration::from_secs(3600), "scope", "runq:admin", None, None)
            .unwrap();
    let http = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build().unwrap();
    let submit_url = format!("{}/jobs", stack.api_url);
    let priorities = ["high", "medium", "low"];

    // Throughput: submit `jobs` noops as fast as `concurrency` allows; time until all finished.
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let submitters: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (http, url, token, next) = (http.clone(), submit_url.clone(), token.clone(), next.clone());
            let jobs = args.jobs;
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= jobs {
                        break;
                    }
                    let resp = http
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&json!({"function": "noop", "priority": priorities[i % 3]}))
                        .send()
                        .await
                        .expect("submit");
                    assert_eq!(resp.status(), 202);
                }
            })
        })
        .collect();
    for s in submitters {
        s.await.unwrap();
    }
    let submitted = started.elapsed();
    wait_all_finished(&stack.pool, args.jobs as i64).await;
    let finished = started.elapsed();
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status <> 'succeeded'")
        .fetch_one(&stack.pool)
        .await
        .unwrap();
    println!(
        "throughput  {} noop jobs: submitted in {:.2} s ({:.0} jobs/s), all finished in {:.2} s => {:.0} jobs/s end to end ({failed} not succeeded)",
        args.jobs,
        submitted.as_secs_f64(),
        args.jobs as f64 / submitted.as_secs_f64(),
        finished.as_secs_f64(),
        args.jobs as f64 / finished.as_secs_f64(),
    );

    // Latency at a fixed rate: timestamps come from Postgres (created_at, started_at, finished_at).
    sqlx::query("TRUNCATE jobs CASCADE").execute(&stack.pool).await.unwrap();
    let total = args.rate as u64 * args.seconds;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = Vec::with_capacity(total as usize);
    for i in 0..total {
        tick.tick().await;
        let (http, url, token) = (http.clone(), submit_url.clone(), token.clone());
        inflight.push(tokio::spawn(async move {
            let resp = http
                .post(&url)
                .bearer_auth(&token)
                .json(&json!({"function": "noop", "priority": priorities[i as usize % 3]}))
                .send()
                .await
                .expect("submit");
            assert_eq!(resp.status(), 202);
        }));
    }
    for f in inflight {
        f.await.unwrap();
    }
    wait_all_finished(&stack.pool, total as i64).await;
    let rows: Vec<(f64, f64)> = sqlx::query_as(
        "SELECT extract(epoch FROM started_at - created_at)::float8 * 1000, extract(epoch FROM finished_at - created_at)::float8 * 1000 FROM jobs",
    )
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    let (mut start, mut finish): (Vec<f64>, Vec<f64>) = rows.into_iter().unzip();
    start.sort_by(f64::total_cmp);
    finish.sort_by(f64::total_cmp);
    println!(
        "latency     {} noop jobs at {} jobs/s: submit->start p50 {:.1} ms p99 {:.1} ms; submit->finished p50 {:.1} ms p99 {:.1} ms",
        total,
        args.rate,
        percentile(&start, 0.5),
        percentile(&start, 0.99),
        percentile(&finish, 0.5),
        percentile(&finish, 0.99),
    );
    stack.shutdown().await;
}
