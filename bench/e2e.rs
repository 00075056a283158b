//! End-to-end benchmark through a `runq dev` stack in this process (API, emulator pushing to
//! the workers, Postgres): `noop` throughput, and submit→start / submit→finish latency at a
//! fixed submit rate.
//!
//!   cargo bench --bench e2e                        # 20,000 jobs, then 200 jobs/s for 10 s
//!   cargo bench --bench e2e -- --jobs 5000 --rate 100 --seconds 5
//!   cargo bench --bench e2e -- --batch --prefill 1000000 --kv   # what bench/vs-celery runs
//!
//! Each throughput phase also reports what a job cost: CPU of this process (load generator,
//! API, emulator and workers together: an upper bound on runq's own), CPU of the Postgres
//! processes serving this database (its backends plus the shared background processes), WAL
//! bytes, transaction ids (write transactions) and `pg_stat_database` commits (read-only
//! transactions included) per job.
//!
//! Uses a scratch database `runq_bench_e2e` on DATABASE_URL's server (default local Postgres).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};
use sqlx::PgPool;

mod common;
use common::{Snapshot, percentile, report_costs, scratch_database, snapshot};

#[derive(Parser, Debug)]
struct Args {
    /// Jobs in each throughput phase.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Submits in flight at once in the throughput phase.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Also run a throughput phase that submits through `POST /jobs:batch`.
    #[arg(long)]
    batch: bool,
    /// Jobs per `POST /jobs:batch`.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 4)]
    batch_concurrency: usize,
    /// Submit rate of the latency phase, jobs/s.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Length of the latency phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Finished jobs inserted before the run (bench/prefill.sql), to measure at that table size.
    #[arg(long, default_value_t = 0)]
    prefill: u64,
    /// Wait before reading `pg_stat_database` so idle backends have flushed their counters
    /// (Postgres 15 flushes an idle backend's within 10 s). 0 skips the commit counts.
    #[arg(long, default_value_t = 11)]
    settle_secs: u64,
    /// Drops this index of the scratch database after its migrations (repeatable): measures
    /// what an index costs the job path (a lever of the hot table's design; the queries that
    /// use it get slower, which this bench does not measure).
    #[arg(long = "drop-index", value_name = "NAME")]
    drop_indexes: Vec<String>,
    /// Also print every figure as a `kv NAME VALUE` line (read by bench/vs-celery).
    #[arg(long)]
    kv: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

const SECRET: &str = "bench-e2e-secret-0123456789abcdef";
const DATABASE: &str = "runq_bench_e2e";

/// Waits until no job is queued, running or retrying (an index scan of `jobs_status_id`, which
/// doesn't walk the finished rows). Call once every submit has been answered.
async fn wait_all_finished(pool: &PgPool) {
    loop {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running', 'retrying')")
                .fetch_one(pool)
                .await
                .expect("count");
        if left == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn token(sub: &str, admin: bool) -> String {
    runq::auth::mint_hs256(SECRET, sub, admin, Duration::from_secs(3600), "scope", "runq:admin", None, None).unwrap()
}

/// Median time of `rounds` GETs of `url`, in ms.
async fn time_get(http: &reqwest::Client, url: &str, token: &str, rounds: usize) -> f64 {
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let resp = http.get(url).bearer_auth(token).send().await.expect("get");
        assert_eq!(resp.status(), 200, "GET {url}");
        let _: Value = resp.json().await.expect("json");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    percentile(&times, 0.5)
}

/// Submits `jobs` noops with `concurrency` requests in flight, each request carrying `per`
/// jobs (`POST /jobs` when `per` is 0, `POST /jobs:batch` otherwise).
async fn submit_all(http: &reqwest::Client, api: &str, token: &str, jobs: usize, concurrency: usize, per: usize) {
    let priorities = ["high", "medium", "low"];
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let step = per.max(1);
    let submitters: Vec<_> = (0..concurrency)
        .map(|_| {
            let (http, token, next) = (http.clone(), token.to_owned(), next.clone());
            let url = if per == 0 { format!("{api}/jobs") } else { format!("{api}/jobs:batch") };
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(step, std::sync::atomic::Ordering::Relaxed);
                    if i >= jobs {
                        break;
                    }
                    let body = if per == 0 {
                        json!({"function": "noop", "priority": priorities[i % 3]})
                    } else {
                        let items: Vec<Value> = (i..(i + per).min(jobs))
                            .map(|k| json!({"function": "noop", "priority": priorities[k % 3]}))
                            .collect();
                        json!({"jobs": items})
                    };
                    let resp = http.post(&url).bearer_auth(&token).json(&body).send().await.expect("submit");
                    assert_eq!(resp.status(), 202);
                }
            })
        })
        .collect();
    for s in submitters {
        s.await.unwrap();
    }
}

/// One throughput phase: submit, wait until every job finished, print jobs/s and the costs.
#[allow(clippy::too_many_arguments)]
async fn throughput(
    stack: &runq::dev::DevStack,
    http: &reqwest::Client,
    args: &Args,
    prefix: &str,
    owner: &str,
    concurrency: usize,
    per: usize,
    before: Snapshot,
) -> Snapshot {
    let started = Instant::now();
    submit_all(http, &stack.api_url, &token(owner, false), args.jobs, concurrency, per).await;
    let submitted = started.elapsed();
    wait_all_finished(&stack.pool).await;
    let finished = started.elapsed();
    let after = snapshot(&stack.pool, Duration::ZERO).await;
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE owner = $1 AND status <> 'succeeded'")
        .bind(owner)
        .fetch_one(&stack.pool)
        .await
        .unwrap();
    let how = if per == 0 { "POST /jobs".to_owned() } else { format!("POST /jobs:batch of {per}") };
    let rate = args.jobs as f64 / finished.as_secs_f64();
    println!(
        "throughput  {} noop jobs ({how}, {concurrency} in flight): submitted in {:.2} s ({:.0} jobs/s), all finished in {:.2} s => {rate:.0} jobs/s end to end ({failed} not succeeded)",
        args.jobs,
        submitted.as_secs_f64(),
        args.jobs as f64 / submitted.as_secs_f64(),
        finished.as_secs_f64(),
    );
    if args.kv {
        println!("kv {prefix}.jobs_per_s {rate:.1}");
        println!("kv {prefix}.submit_per_s {:.1}", args.jobs as f64 / submitted.as_secs_f64());
    }
    // Read the commit counters after the settle, but charge the CPU and WAL up to the finish.
    let settled = snapshot(&stack.pool, Duration::from_secs(args.settle_secs)).await;
    let after = Snapshot { commits: settled.commits, jobs_updates: settled.jobs_updates, ..after };
    report_costs(&stack.pool, prefix, args.jobs, &before, &after, args.kv).await;
    settled
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let url = scratch_database(DATABASE).await;
    let mut options = runq::dev::DevOptions::new(url, SECRET.into());
    options.api_addr = "127.0.0.1:0".into();
    options.emulator_addr = "127.0.0.1:0".into();
    let stack = runq::dev::DevStack::start(options, runq::function::Registry::builtin()).await.expect("dev stack");
    let http = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build().unwrap();
    let api = stack.api_url.clone();
    for index in &args.drop_indexes {
        let name: String =
            sqlx::query_scalar("SELECT quote_ident($1)").bind(index).fetch_one(&stack.pool).await.unwrap();
        sqlx::raw_sql(&format!("DROP INDEX {name}")).execute(&stack.pool).await.expect("drop index");
    }
    let indexes: Vec<String> =
        sqlx::query_scalar("SELECT indexname::text FROM pg_indexes WHERE tablename = 'jobs' ORDER BY 1")
            .fetch_all(&stack.pool)
            .await
            .unwrap();
    println!("indexes     of jobs: {} ({})", indexes.len(), indexes.join(", "));

    if args.prefill > 0 {
        let t = Instant::now();
        let sql = include_str!("prefill.sql").replace(":prefill_rows", &args.prefill.to_string());
        sqlx::raw_sql(&sql).execute(&stack.pool).await.expect("prefill");
        sqlx::raw_sql("VACUUM ANALYZE jobs").execute(&stack.pool).await.expect("vacuum");
        println!(
            "prefill     {} finished jobs inserted and vacuumed in {:.1} s",
            args.prefill,
            t.elapsed().as_secs_f64()
        );
    }
    let jobs_in_table: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs").fetch_one(&stack.pool).await.unwrap();
    // The dashboard's header and the first page of a listing, at this table size (median of 7).
    let admin = token("bench-admin", true);
    let stats_ms = time_get(&http, &format!("{api}/dashboard/stats"), &admin, 7).await;
    let list_admin_ms = time_get(&http, &format!("{api}/jobs?limit=50"), &admin, 7).await;
    let list_owner_ms = time_get(&http, &format!("{api}/jobs?limit=50"), &token("prefill", false), 7).await;
    let list_status_ms = time_get(&http, &format!("{api}/jobs?limit=50&status=failed"), &admin, 7).await;
    println!(
        "queries     at {jobs_in_table} jobs: GET /dashboard/stats {stats_ms:.1} ms; GET /jobs?limit=50 admin {list_admin_ms:.1} ms, one owner's {list_owner_ms:.1} ms, admin status=failed {list_status_ms:.1} ms (median of 7)"
    );
    if args.kv {
        println!("kv prefill {}", args.prefill);
        println!("kv query.stats_ms {stats_ms:.2}");
        println!("kv query.list_admin_ms {list_admin_ms:.2}");
        println!("kv query.list_owner_ms {list_owner_ms:.2}");
        println!("kv query.list_status_ms {list_status_ms:.2}");
    }

    // Throughput: submit `jobs` noops as fast as `concurrency` allows; time until all finished.
    let start = snapshot(&stack.pool, Duration::from_secs(args.settle_secs)).await;
    let next = throughput(&stack, &http, &args, "single", "bench", args.concurrency, 0, start).await;
    if args.batch {
        let per = args.batch_size.clamp(1, runq::api::MAX_BATCH);
        throughput(&stack, &http, &args, "batch", "bench-batch", args.batch_concurrency, per, next).await;
    }

    // Latency at a fixed rate: timestamps come from Postgres (created_at, started_at, finished_at).
    let total = args.rate as u64 * args.seconds;
    let latency_token = token("bench-latency", false);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = Vec::with_capacity(total as usize);
    let priorities = ["high", "medium", "low"];
    for i in 0..total {
        tick.tick().await;
        let (http, url, token) = (http.clone(), format!("{api}/jobs"), latency_token.clone());
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
    wait_all_finished(&stack.pool).await;
    let rows: Vec<(f64, f64)> = sqlx::query_as(
        "SELECT extract(epoch FROM started_at - created_at)::float8 * 1000, extract(epoch FROM finished_at - created_at)::float8 * 1000 FROM jobs WHERE owner = 'bench-latency'",
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
    if args.kv {
        println!("kv latency.start_p50_ms {:.3}", percentile(&start, 0.5));
        println!("kv latency.start_p99_ms {:.3}", percentile(&start, 0.99));
        println!("kv latency.finish_p50_ms {:.3}", percentile(&finish, 0.5));
        println!("kv latency.finish_p99_ms {:.3}", percentile(&finish, 0.99));
    }
    stack.shutdown().await;
}
