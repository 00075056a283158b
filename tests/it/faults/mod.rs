//! The fault-injection suite (docs/faults.md): the real system as separate OS processes of the
//! `ledger` example (examples/ledger.rs) on a Postgres cluster of its own, jobs flowing through
//! the public API while faults are injected at random (seeded), and a verdict from the ledger
//! the function keeps and the API's answers: nothing lost or stranded, no two executions of a
//! job at once, results from the last execution, executions within max_attempts.

mod cluster;
mod emulator_state;
mod limits;
mod load;
mod procs;
mod proxy;
mod pubsub;
mod system;
mod verdict;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use load::{Book, Client};
use proxy::Fault;
use system::System;

/// How much load and how many faults, over how long.
struct Profile {
    name: &'static str,
    jobs: usize,
    /// Fault events the injector draws (a proxy event arms 1-3 faulty pushes).
    events: usize,
    /// Load and faults are spread over this.
    duration: Duration,
    /// After the faults stop, every accepted job must be terminal within this.
    bound: Duration,
}

const SHORT: Profile = Profile {
    name: "short",
    jobs: 1_000,
    events: 40,
    duration: Duration::from_secs(80),
    bound: Duration::from_secs(40),
};

const LONG: Profile = Profile {
    name: "long",
    jobs: 20_000,
    events: 480,
    duration: Duration::from_secs(20 * 60),
    bound: Duration::from_secs(120),
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    KillWorker,
    FreezeWorker,
    RestartPostgres,
    RestartEmulatorEmpty,
    RestartEmulatorWithState,
    Proxy,
    Poison,
    Cancel,
}

const KINDS: [(Kind, &str, u32); 8] = [
    (Kind::KillWorker, "kill9", 4),
    (Kind::FreezeWorker, "sigstop", 2),
    (Kind::RestartPostgres, "postgres", 1),
    (Kind::RestartEmulatorEmpty, "emulator_empty", 1),
    (Kind::RestartEmulatorWithState, "emulator_state", 1),
    (Kind::Proxy, "proxy", 5),
    (Kind::Poison, "poison", 2),
    (Kind::Cancel, "cancel", 1),
];

/// The kinds `RUNQ_FAULTS` names (comma-separated, as in `KINDS`), all by default.
fn enabled_kinds() -> Vec<(Kind, &'static str, u32)> {
    let only = std::env::var("RUNQ_FAULTS").ok().filter(|s| !s.is_empty());
    KINDS
        .iter()
        .copied()
        .filter(|(_, name, _)| only.as_ref().is_none_or(|o| o.split(',').any(|n| n == *name)))
        .collect()
}

fn pick(rng: &mut StdRng, kinds: &[(Kind, &'static str, u32)]) -> Kind {
    let total: u32 = kinds.iter().map(|k| k.2).sum();
    let mut n = rng.random_range(0..total);
    for (kind, _, w) in kinds {
        if n < *w {
            return *kind;
        }
        n -= w;
    }
    unreachable!()
}

async fn run(profile: Profile) {
    let seed: u64 = std::env::var("RUNQ_FAULTS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let dir = std::env::temp_dir().join(format!("runq-faults-{}-{seed}", profile.name));
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "faults: profile {}, seed {seed} (RUNQ_FAULTS_SEED={seed} to draw the same faults), logs in {}",
        profile.name,
        dir.display()
    );
    let kinds = enabled_kinds();
    assert!(!kinds.is_empty(), "RUNQ_FAULTS names no fault kind");
    let started = Instant::now();
    let mut sys = System::start(dir.clone()).await;
    println!("faults: system up in {:.1}s", started.elapsed().as_secs_f64());

    let client = Client { http: sys.http.clone(), api: sys.api_url.clone(), token: sys.user_token.clone() };
    let book = Arc::new(Mutex::new(Book::default()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let scheduler = sys.start_scheduler(stop_rx);
    let submitter = tokio::spawn(client.clone().submit_load(book.clone(), seed ^ 1, profile.jobs, profile.duration));

    let mut rng = StdRng::seed_from_u64(seed);
    let mut tail = verdict::Tail::new(sys.ledger.clone());
    let mut injected: BTreeMap<&'static str, u64> = BTreeMap::new();
    let t0 = Instant::now();
    for n in 0..profile.events {
        let due = t0 + profile.duration.mul_f64(n as f64 / profile.events as f64);
        // Pacing between faults, not a wait for the system.
        tokio::time::sleep_until(due.into()).await;
        let worker = rng.random_range(0..sys.workers.len());
        match pick(&mut rng, &kinds) {
            Kind::KillWorker => {
                let worker = busy_worker(&sys, &mut tail, &mut rng).await.unwrap_or(worker);
                sys.kill_worker(worker).await;
                *injected.entry("kill9").or_default() += 1;
            }
            Kind::FreezeWorker => {
                let worker = busy_worker(&sys, &mut tail, &mut rng).await.unwrap_or(worker);
                let pause = Duration::from_millis(rng.random_range(1_000..4_000) + system::LEASE_SECS * 1000);
                sys.freeze_worker(worker, pause).await;
                *injected.entry("sigstop").or_default() += 1;
            }
            Kind::RestartPostgres => {
                sys.restart_postgres().await;
                *injected.entry("postgres_restart").or_default() += 1;
            }
            Kind::RestartEmulatorEmpty => {
                sys.restart_emulator_empty().await;
                *injected.entry("emulator_restart_empty").or_default() += 1;
            }
            Kind::RestartEmulatorWithState => {
                let graceful = rng.random_bool(0.5);
                sys.restart_emulator_with_state(graceful).await;
                let what = if graceful { "emulator_restart_state_sigterm" } else { "emulator_restart_state_kill9" };
                *injected.entry(what).or_default() += 1;
            }
            Kind::Proxy => {
                let fault = Fault::ALL[rng.random_range(0..Fault::ALL.len())];
                sys.workers[worker].proxy.arm(fault, rng.random_range(1..=3));
            }
            Kind::Cancel => {
                let recent: Vec<String> = book.lock().unwrap().accepted.iter().rev().take(5).cloned().collect();
                if !recent.is_empty() {
                    client.cancel(&book, &recent[rng.random_range(0..recent.len())]).await;
                    *injected.entry("cancel").or_default() += 1;
                }
            }
            Kind::Poison => {
                let what = client.poison(&book, &mut rng).await;
                *injected.entry(what).or_default() += 1;
            }
        }
    }
    submitter.await.unwrap();
    let mut unused = 0;
    for w in &sys.workers {
        unused += w.proxy.disarm();
        for (fault, hits) in w.proxy.hits() {
            *injected.entry(fault.name()).or_default() += hits;
        }
    }
    println!(
        "faults: load and faults done after {:.1}s ({unused} armed push faults never hit)",
        t0.elapsed().as_secs_f64()
    );

    let accepted = book.lock().unwrap().accepted.clone();
    let finals = client.settle_all(&accepted, profile.bound).await;
    println!("faults: settled after {:.1}s more", t0.elapsed().as_secs_f64() - profile.duration.as_secs_f64());
    // Stale executions (if any) run at most their hard limit past this; let them write.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let crashed = sys.crashed();
    let _ = stop_tx.send(true);
    let fired = scheduler.await.unwrap();
    sys.stop_workers().await;
    let workflows = book.lock().unwrap().workflows.clone();
    let wrong_workflows = client.judge_workflows(&workflows).await;
    let ledger = std::fs::read_to_string(&sys.ledger).unwrap_or_default();
    let v = verdict::judge(&ledger, &finals);

    let total: u64 = injected.values().sum();
    let summary = format!(
        "faults injected {total}, jobs {}, lost {}, stranded {}, overlapping runs {}, excess executions {}, wrong results {}",
        accepted.len(),
        v.lost.len(),
        v.stranded.len(),
        v.overlapping_runs(),
        v.excess_executions(),
        v.wrong.len()
    );
    println!("faults: by kind {injected:?}");
    println!("faults: API answers {:?}", book.lock().unwrap().answers);
    println!("faults: final statuses {:?}, error kinds {:?}", v.by_status, v.by_error_kind);
    println!(
        "faults: {} executions in the ledger; {} frozen runs, superseded while stopped, stopped at once on SIGCONT; \
         {fired} sweep firings",
        v.executions, v.resumed_then_stopped
    );
    println!(
        "faults: overlaps: {} started beside a running execution, {} frozen runs that worked after SIGCONT \
         although a newer run had started",
        v.started_beside, v.resumed_and_worked
    );
    for c in &crashed {
        println!("faults: CRASH {c}");
    }
    if v.failed() || !v.wrong.is_empty() {
        report(&v, &ledger, &finals);
    }
    println!("faults: workflows {}, out of order or unfinished {}", workflows.len(), wrong_workflows.len());
    for w in &wrong_workflows {
        println!("faults: WORKFLOW {w}");
    }
    println!("{summary}");
    if !v.failed() && wrong_workflows.is_empty() && crashed.is_empty() && std::env::var_os("RUNQ_FAULTS_KEEP").is_none()
    {
        let _ = std::fs::remove_dir_all(&dir);
    }
    drop(sys);
    assert!(!v.failed(), "{summary} (seed {seed}; ledger and logs in {})", dir.display());
    assert!(wrong_workflows.is_empty(), "{wrong_workflows:?} (seed {seed}; ledger and logs in {})", dir.display());
}

/// A worker running an execution now (mid-run is where a kill or freeze hurts): waits up to
/// 3 s for one, following the ledger.
async fn busy_worker(sys: &System, tail: &mut verdict::Tail, rng: &mut StdRng) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let busy = tail.busy();
        let candidates: Vec<usize> =
            (0..sys.workers.len()).filter(|i| busy.contains(&sys.workers[*i].proc.pid)).collect();
        if !candidates.is_empty() {
            return Some(candidates[rng.random_range(0..candidates.len())]);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The offending jobs: what the API says and their ledger lines (a few per kind).
fn report(v: &verdict::Verdict, ledger: &str, finals: &std::collections::HashMap<String, verdict::Final>) {
    let groups: [(&str, Vec<&String>); 5] = [
        ("lost", v.lost.iter().collect()),
        ("stranded", v.stranded.iter().collect()),
        ("overlapping", v.overlapping.keys().collect()),
        ("excess", v.excess.keys().collect()),
        ("wrong result", v.wrong.iter().collect()),
    ];
    for (what, ids) in groups {
        if ids.is_empty() {
            continue;
        }
        println!(
            "faults: {what}: {} jobs: {}",
            ids.len(),
            ids.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
        );
        for id in ids.iter().take(4) {
            let api = match &finals[*id] {
                verdict::Final::Done(j) | verdict::Final::Stranded(j) => format!(
                    "status {} attempt {}/{} error {} result {}",
                    j["status"], j["attempt"], j["max_attempts"], j["error"], j["result"]
                ),
                verdict::Final::Lost(body) => format!("404 {body}"),
            };
            println!("faults: {what} {id}: API: {api}");
            for line in verdict::excerpt(ledger, id).iter().take(30) {
                println!("faults:     {line}");
            }
        }
    }
}

/// ~1,000 jobs and ~40 faults in under three minutes: part of the normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_profile() {
    run(SHORT).await;
}

/// ≥ 20,000 jobs and ≥ 500 faults, about 25 minutes: `cargo test --locked --test it --
/// --ignored --exact faults::long_profile --nocapture` (docs/faults.md; nextest's slow-timeout
/// in .config/nextest.toml would end it after 3 minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "about 25 minutes; see docs/faults.md"]
async fn long_profile() {
    run(LONG).await;
}
