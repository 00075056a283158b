//! What a workflow costs over the same work as plain jobs, through a `runq dev` stack in this
//! process (API, emulator pushing to the workers, Postgres), in one run:
//!
//! - **fan-out**: a workflow whose step `each` runs `echo` once per element of a 1,000-item list
//!   (for_each) and whose step `done` runs after all of them (the fan-in), against 1,000 plain
//!   `echo` jobs submitted in one `POST /jobs:batch`. Both are one request; the workflow has one
//!   job more. Time from the submit until the last job finished, and what a job cost.
//! - **chain**: a workflow of 20 `noop` steps one after another, against a client doing the same
//!   by hand (submit a job, long-poll its status until it finished, submit the next). Time per hop.
//!
//! Rounds alternate which side goes first.
//!
//!   cargo bench --bench workflows
//!   cargo bench --bench workflows -- --children 1000 --chain 20 --rounds 3 --settle-secs 0
//!
//! Uses a scratch database `runq_bench_workflows` on DATABASE_URL's server.

use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

mod common;
use common::{Snapshot, percentile, report_costs, scratch_database, snapshot};

#[derive(Parser, Debug)]
struct Args {
    /// Members of the fan-out (and plain jobs it is compared with); at most 1,000 (one batch).
    #[arg(long, default_value_t = 1000)]
    children: usize,
    /// Steps of the chain.
    #[arg(long, default_value_t = 20)]
    chain: usize,
    /// Rounds of each comparison.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Wait before reading `pg_stat_database` commit counts (0 skips them).
    #[arg(long, default_value_t = 11)]
    settle_secs: u64,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

const SECRET: &str = "bench-workflows-secret-0123456789ab";
const DATABASE: &str = "runq_bench_workflows";

struct Client {
    http: reqwest::Client,
    api: String,
    token: String,
}

impl Client {
    async fn post(&self, path: &str, body: &Value) -> Value {
        let resp = self.http.post(format!("{}{path}", self.api)).bearer_auth(&self.token).json(body).send().await;
        let resp = resp.expect("post");
        assert_eq!(resp.status(), 202, "POST {path}");
        resp.json().await.expect("json")
    }
}

/// Waits until none of `owner`'s jobs is unfinished.
async fn wait_owner_finished(pool: &PgPool, owner: &str) {
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE owner = $1 AND status NOT IN ('succeeded', 'failed', 'cancelled')",
        )
        .bind(owner)
        .fetch_one(pool)
        .await
        .expect("count");
        if left == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn not_succeeded(pool: &PgPool, owner: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE owner = $1 AND status <> 'succeeded'")
        .bind(owner)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// One measured side: run `work`, wait until `owner`'s jobs finished, print the time and costs.
struct Measured {
    secs: f64,
    after: Snapshot,
}

async fn fan_out_plain(c: &Client, pool: &PgPool, n: usize, owner: &str) {
    let jobs: Vec<Value> = (0..n).map(|i| json!({"function": "echo", "args": {"value": i}})).collect();
    c.post("/jobs:batch", &json!({ "jobs": jobs })).await;
    wait_owner_finished(pool, owner).await;
}

async fn fan_out_workflow(c: &Client, pool: &PgPool, n: usize, owner: &str) {
    let items: Vec<usize> = (0..n).collect();
    let body = json!({
        "args": {"items": items},
        "steps": [
            {"name": "each", "function": "echo", "args": {}, "for_each": "items", "item_as": "value"},
            {"name": "done", "function": "noop", "args": {}, "after": ["each"]}
        ]
    });
    c.post("/workflows", &body).await;
    wait_owner_finished(pool, owner).await;
}

async fn chain_workflow(c: &Client, pool: &PgPool, n: usize, owner: &str) {
    let steps: Vec<Value> = (0..n)
        .map(|i| {
            let after: Vec<String> = if i == 0 { vec![] } else { vec![format!("s{}", i - 1)] };
            json!({"name": format!("s{i}"), "function": "noop", "args": {}, "after": after})
        })
        .collect();
    c.post("/workflows", &json!({ "steps": steps })).await;
    wait_owner_finished(pool, owner).await;
}

/// The chain by hand: submit, long-poll the status until it finished, submit the next.
async fn chain_by_hand(c: &Client, n: usize) {
    for _ in 0..n {
        let job = c.post("/jobs", &json!({"function": "noop"})).await;
        let id: Uuid = job["id"].as_str().expect("id").parse().expect("uuid");
        let mut etag: Option<String> = None;
        loop {
            let mut req = c.http.get(format!("{}/jobs/{id}/status?wait=25", c.api)).bearer_auth(&c.token);
            if let Some(tag) = &etag {
                req = req.header("If-None-Match", tag);
            }
            let resp = req.send().await.expect("status");
            if resp.status() == 304 {
                continue;
            }
            etag = resp.headers().get("etag").map(|v| v.to_str().unwrap().to_owned());
            let status: Value = resp.json().await.expect("json");
            if ["succeeded", "failed", "cancelled"].contains(&status["status"].as_str().unwrap_or("")) {
                assert_eq!(status["status"], "succeeded");
                break;
            }
        }
    }
}

fn client(api: &str, owner: &str) -> Client {
    let token =
        runq::auth::mint_hs256(SECRET, owner, false, Duration::from_secs(3600), "scope", "runq:admin", None, None)
            .unwrap();
    Client { http: reqwest::Client::new(), api: api.to_owned(), token }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let n = args.children.clamp(1, runq::api::MAX_BATCH);
    let url = scratch_database(DATABASE).await;
    let mut options = runq::dev::DevOptions::new(url, SECRET.into());
    options.api_addr = "127.0.0.1:0".into();
    options.emulator_addr = "127.0.0.1:0".into();
    let stack = runq::dev::DevStack::start(options, runq::function::Registry::builtin()).await.expect("dev stack");
    let pool = stack.pool.clone();
    let settle = Duration::from_secs(args.settle_secs);
    // Warm up: connections, the emulator's subscriptions, the workers' pools.
    fan_out_plain(&client(&stack.api_url, "warm"), &pool, 200, "warm").await;
    fan_out_workflow(&client(&stack.api_url, "warm-wf"), &pool, 200, "warm-wf").await;

    let (mut plain_secs, mut wf_secs) = (Vec::new(), Vec::new());
    let (mut hand_hops, mut wf_hops) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let sides: [&str; 2] = if round % 2 == 0 { ["plain", "workflow"] } else { ["workflow", "plain"] };
        for side in sides {
            let owner = format!("{side}-{round}");
            let c = client(&stack.api_url, &owner);
            let before = snapshot(&pool, settle).await;
            let t = Instant::now();
            let jobs = if side == "plain" {
                fan_out_plain(&c, &pool, n, &owner).await;
                n
            } else {
                fan_out_workflow(&c, &pool, n, &owner).await;
                n + 1
            };
            let m = Measured { secs: t.elapsed().as_secs_f64(), after: snapshot(&pool, Duration::ZERO).await };
            let bad = not_succeeded(&pool, &owner).await;
            println!(
                "fan-out     round {round} {side:8}: {jobs} jobs finished in {:.3} s ({:.0} jobs/s, {bad} not succeeded)",
                m.secs,
                jobs as f64 / m.secs
            );
            let settled = snapshot(&pool, settle).await;
            let after = Snapshot { commits: settled.commits, jobs_updates: settled.jobs_updates, ..m.after };
            report_costs(&pool, &format!("fan-out {side}"), jobs, &before, &after, false).await;
            if side == "plain" { plain_secs.push(m.secs) } else { wf_secs.push(m.secs) }
        }
        let sides: [&str; 2] = if round % 2 == 0 { ["by-hand", "workflow"] } else { ["workflow", "by-hand"] };
        for side in sides {
            let owner = format!("chain-{side}-{round}");
            let c = client(&stack.api_url, &owner);
            let t = Instant::now();
            if side == "by-hand" {
                chain_by_hand(&c, args.chain).await;
            } else {
                chain_workflow(&c, &pool, args.chain, &owner).await;
            }
            let hop_ms = t.elapsed().as_secs_f64() * 1000.0 / args.chain as f64;
            println!("chain       round {round} {side:8}: {} steps, {hop_ms:.2} ms per step", args.chain);
            if side == "by-hand" { hand_hops.push(hop_ms) } else { wf_hops.push(hop_ms) }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        percentile(v, 0.5)
    };
    let (p, w) = (median(&mut plain_secs), median(&mut wf_secs));
    let (h, c) = (median(&mut hand_hops), median(&mut wf_hops));
    println!(
        "overhead    fan-out of {n} + fan-in: {:.3} s vs {:.3} s for {n} plain jobs (median of {}): workflow / plain = {:.2}",
        w,
        p,
        args.rounds,
        w / p
    );
    println!(
        "overhead    chain of {}: {c:.2} ms per step vs {h:.2} ms by hand (submit, long-poll, submit): workflow / by hand = {:.2}",
        args.chain,
        c / h
    );
    stack.shutdown().await;
}
