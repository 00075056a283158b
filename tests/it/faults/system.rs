//! The whole system, started as infra would: a Postgres cluster of its own, the emulator, the
//! API, two workers per queue behind fault proxies, the Pub/Sub layout, and Cloud Scheduler
//! (the sweep fired every second with an emulator-signed OIDC token). And the faults that
//! change it: kill -9, SIGSTOP, Postgres restarts, emulator restarts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::RwLock;

use super::cluster::Cluster;
use super::procs::{Proc, Spec, free_port, ledger_bin, ledger_line};
use super::proxy::Proxy;
use super::pubsub::{self, PushSub, SchedulerToken};

pub const SECRET: &str = "faults-secret-that-is-long-enough-0123456789";
/// Real seconds per emulated second: the 20 s ack deadline lasts 5 s.
pub const TIME_SCALE: f64 = 0.25;
pub const LEASE_SECS: u64 = 3;
pub const QUEUES: [&str; 2] = ["high", "medium"];

pub struct Worker {
    pub proxy: Proxy,
    pub proc: Proc,
}

pub struct System {
    pub dir: PathBuf,
    pub ledger: PathBuf,
    pub http: reqwest::Client,
    pub cluster: Arc<Cluster>,
    pub emulator: Proc,
    pub emulator_host: String,
    pub api: Proc,
    pub api_url: String,
    pub workers: Vec<Worker>,
    pub user_token: String,
    pub scheduler: Arc<SchedulerToken>,
    pub scheduler_token: Arc<RwLock<String>>,
    topics: Vec<String>,
    subs: Vec<PushSub>,
}

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// How many workers serve each queue, and how the API sweeps.
pub struct Layout {
    pub workers_per_queue: usize,
    /// `RUNQ_SWEEP_WINDOW_SECS`: 0 sweeps once per firing (the fault suite fires every second).
    pub sweep_window_secs: u64,
}

impl Layout {
    /// The fault suite's: two workers per queue, one sweep pass per firing.
    pub const FAULTS: Layout = Layout { workers_per_queue: 2, sweep_window_secs: 0 };
}

impl System {
    pub async fn start(dir: PathBuf) -> System {
        Self::start_with(dir, Layout::FAULTS).await
    }

    pub async fn start_with(dir: PathBuf, layout: Layout) -> System {
        std::fs::create_dir_all(&dir).unwrap();
        let ledger = dir.join("ledger");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(40)).build().unwrap();
        let bin = ledger_bin().await;
        let pg_port = free_port();
        let cluster = Arc::new(tokio::task::spawn_blocking(move || Cluster::start(pg_port)).await.unwrap());
        let db = cluster.url();

        let emulator_port = free_port();
        let emulator_host = format!("127.0.0.1:{emulator_port}");
        let jwks = format!("http://{emulator_host}/oauth2/v3/certs");
        let emulator = Proc::start(
            Spec {
                name: "emulator".into(),
                bin: bin.clone(),
                args: [
                    "emulator",
                    "--host-port",
                    &emulator_host,
                    "--time-scale",
                    &TIME_SCALE.to_string(),
                    "--state-file",
                    &dir.join("emulator-state.json").display().to_string(),
                ]
                .map(String::from)
                .to_vec(),
                env: env(&[("RUNQ_LOG", "warn".into()), ("RUNQ_EMULATOR_PROJECT", pubsub::PROJECT.into())]),
                log: dir.join("emulator.log"),
                ready_url: format!("http://{emulator_host}/"),
            },
            &http,
        )
        .await;

        let api_port = free_port();
        let api_url = format!("http://127.0.0.1:{api_port}");
        let scheduler_audience = format!("{api_url}/internal/schedules");
        let dead_letter_url = format!("{api_url}/internal/dead-letter");
        let api = Proc::start(
            Spec {
                name: "api".into(),
                bin: bin.clone(),
                args: vec!["api".into()],
                env: env(&[
                    ("PORT", api_port.to_string()),
                    ("DATABASE_URL", db.clone()),
                    ("RUNQ_AUTH_HS256_SECRET", SECRET.into()),
                    ("RUNQ_PUBSUB_PROJECT", pubsub::PROJECT.into()),
                    ("PUBSUB_EMULATOR_HOST", emulator_host.clone()),
                    ("RUNQ_OIDC_JWKS_URL", jwks.clone()),
                    ("RUNQ_SCHEDULER_AUDIENCE", scheduler_audience.clone()),
                    ("RUNQ_SCHEDULER_SERVICE_ACCOUNTS", pubsub::SCHEDULER_ACCOUNT.into()),
                    ("RUNQ_DEAD_LETTER_AUDIENCE", dead_letter_url.clone()),
                    ("RUNQ_DEAD_LETTER_SERVICE_ACCOUNTS", pubsub::DEAD_LETTER_ACCOUNT.into()),
                    ("RUNQ_REDISPATCH_AFTER_SECS", "5".into()),
                    ("RUNQ_SWEEP_WINDOW_SECS", layout.sweep_window_secs.to_string()),
                    ("RUNQ_SWEEP_EVERY_SECS", "1".into()),
                    ("RUNQ_SHUTDOWN_GRACE_SECS", "1".into()),
                    ("RUNQ_LOG", "warn".into()),
                ]),
                log: dir.join("api.log"),
                ready_url: format!("{api_url}/readyz"),
            },
            &http,
        )
        .await;

        let mut workers = Vec::new();
        let mut subs = Vec::new();
        let hold = Duration::from_secs_f64(f64::from(pubsub::ACK_DEADLINE_SECS) * TIME_SCALE + 1.0);
        for queue in QUEUES {
            for i in 0..layout.workers_per_queue {
                let port = free_port();
                let push_url = format!("http://127.0.0.1:{port}/push");
                let proxy = Proxy::start(push_url.clone(), hold).await;
                let spec = Spec {
                    name: format!("worker-{queue}-{i}"),
                    bin: bin.clone(),
                    args: vec!["worker".into(), "--queue".into(), queue.into()],
                    env: env(&[
                        ("PORT", port.to_string()),
                        ("DATABASE_URL", db.clone()),
                        ("RUNQ_PUSH_AUDIENCE", push_url.clone()),
                        ("RUNQ_PUSH_SERVICE_ACCOUNTS", pubsub::PUSH_ACCOUNT.into()),
                        ("RUNQ_OIDC_JWKS_URL", jwks.clone()),
                        ("RUNQ_LEASE_SECS", LEASE_SECS.to_string()),
                        // As deployed: a worker publishes what its runs release and spawn.
                        ("RUNQ_PUBSUB_PROJECT", pubsub::PROJECT.into()),
                        ("PUBSUB_EMULATOR_HOST", emulator_host.clone()),
                        ("RUNQ_SHUTDOWN_GRACE_SECS", "1".into()),
                        ("RUNQ_LEDGER", ledger.display().to_string()),
                        ("RUNQ_LOG", "warn".into()),
                    ]),
                    log: dir.join(format!("worker-{queue}-{i}.log")),
                    ready_url: format!("http://127.0.0.1:{port}/healthz"),
                };
                subs.push(PushSub {
                    name: format!("runq-worker-{queue}-{i}"),
                    topic: pubsub::topic(&format!("runq-jobs-{queue}")),
                    endpoint: proxy.url.clone(),
                    audience: push_url,
                    account: pubsub::PUSH_ACCOUNT,
                });
                workers.push(Worker { proxy, proc: Proc::start(spec, &http).await });
            }
        }
        for i in 0..2 {
            subs.push(PushSub {
                name: format!("runq-dead-letter-{i}"),
                topic: pubsub::topic("runq-jobs-dead"),
                endpoint: dead_letter_url.clone(),
                audience: dead_letter_url.clone(),
                account: pubsub::DEAD_LETTER_ACCOUNT,
            });
        }
        let mut topics: Vec<String> = QUEUES.iter().map(|q| pubsub::topic(&format!("runq-jobs-{q}"))).collect();
        topics.push(pubsub::topic("runq-jobs-dead"));
        pubsub::create_layout(&emulator_host, &topics, &subs).await;

        let scheduler = Arc::new(SchedulerToken::new(scheduler_audience).await);
        let first = scheduler.fetch(&emulator_host).await.expect("a scheduler token");
        let user_token = runq::auth::mint_hs256(
            SECRET,
            "faults",
            false,
            Duration::from_secs(24 * 3600),
            "scope",
            "runq:admin",
            None,
            None,
        )
        .unwrap();
        System {
            dir,
            ledger,
            http,
            cluster,
            emulator,
            emulator_host,
            api,
            api_url,
            workers,
            user_token,
            scheduler,
            scheduler_token: Arc::new(RwLock::new(first)),
            topics,
            subs,
        }
    }

    /// Plays Cloud Scheduler: `POST /internal/schedules/runq.sweep` every second, with a token
    /// fetched again when the API refuses it (the emulator's key changes when it restarts empty).
    pub fn start_scheduler(&self, stop: tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinHandle<u64> {
        self.start_scheduler_every(Duration::from_secs(1), stop)
    }

    /// Plays Cloud Scheduler firing the sweep every `period`.
    pub fn start_scheduler_every(
        &self,
        period: Duration,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<u64> {
        let (http, url) = (self.http.clone(), format!("{}/internal/schedules/runq.sweep", self.api_url));
        let (scheduler, token, host) =
            (self.scheduler.clone(), self.scheduler_token.clone(), self.emulator_host.clone());
        tokio::spawn(async move {
            let mut fired = 0;
            let mut tick = tokio::time::interval(period);
            while !*stop.borrow() {
                tick.tick().await;
                let bearer = token.read().await.clone();
                // Long enough for a sweep window (Cloud Scheduler's attempt deadline is minutes).
                let sent = http.post(&url).bearer_auth(bearer).timeout(period + Duration::from_secs(10)).send().await;
                fired += 1;
                if let Ok(r) = sent
                    && r.status() == reqwest::StatusCode::UNAUTHORIZED
                    && let Ok(fresh) = scheduler.fetch(&host).await
                {
                    *token.write().await = fresh;
                }
            }
            fired
        })
    }

    /// `kill -9` of worker `i`, `killed <pid>` in the ledger once it is gone, and a new process
    /// on the same port (a Cloud Run instance replaced).
    pub async fn kill_worker(&mut self, i: usize) {
        let w = &mut self.workers[i];
        w.proc.kill9().await;
        ledger_line(&self.ledger, &format!("killed {}", w.proc.pid));
        w.proc = Proc::start(w.proc.spec.clone(), &self.http).await;
    }

    /// SIGSTOP of worker `i` for `pause` (longer than its lease), then SIGCONT. `stopped` is
    /// written once the process is stopped, `continued` before it may run again, so the
    /// ledger never shows the process writing between them.
    pub async fn freeze_worker(&mut self, i: usize, pause: Duration) {
        let pid = self.workers[i].proc.pid;
        self.workers[i].proc.signal("-STOP");
        let stat = format!("/proc/{pid}/stat");
        let stopped = |s: &str| s.rsplit(") ").next().is_some_and(|rest| rest.starts_with('T'));
        let give_up = std::time::Instant::now() + Duration::from_secs(2);
        while !std::fs::read_to_string(&stat).is_ok_and(|s| stopped(&s)) && std::time::Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        ledger_line(&self.ledger, &format!("stopped {pid}"));
        tokio::time::sleep(pause).await;
        ledger_line(&self.ledger, &format!("continued {pid}"));
        self.workers[i].proc.signal("-CONT");
    }

    pub async fn restart_postgres(&self) {
        let cluster = self.cluster.clone();
        ledger_line(&self.ledger, "postgres restart");
        tokio::task::spawn_blocking(move || cluster.restart_fast()).await.unwrap();
        ledger_line(&self.ledger, "postgres up");
    }

    /// Kills the emulator and starts an empty one on the same port (its state file removed);
    /// recreates the topics and subscriptions as infra would, and Cloud Scheduler's token (the
    /// signing key is new).
    pub async fn restart_emulator_empty(&mut self) {
        self.emulator.kill9().await;
        ledger_line(&self.ledger, &format!("emulator killed {}", self.emulator.pid));
        let _ = std::fs::remove_file(self.dir.join("emulator-state.json"));
        self.restart_emulator().await;
    }

    /// Stops the emulator (SIGTERM, or kill -9: it saves its state every 100 ms) and starts it
    /// again on the same port with its state file: topics, subscriptions, unacknowledged
    /// messages and its signing key come back.
    pub async fn restart_emulator_with_state(&mut self, graceful: bool) {
        if graceful {
            self.emulator.signal("-TERM");
            let _ = self.emulator.child.wait().await;
        } else {
            self.emulator.kill9().await;
        }
        ledger_line(&self.ledger, &format!("emulator stopped {} (graceful: {graceful})", self.emulator.pid));
        self.restart_emulator().await;
    }

    async fn restart_emulator(&mut self) {
        self.emulator = Proc::start(self.emulator.spec.clone(), &self.http).await;
        pubsub::create_layout(&self.emulator_host, &self.topics, &self.subs).await;
        match self.scheduler.fetch(&self.emulator_host).await {
            Ok(t) => *self.scheduler_token.write().await = t,
            Err(e) => eprintln!("scheduler token after the emulator restart: {e}"),
        }
    }

    /// Processes that died on their own (not by our hand): a crash worth reporting.
    pub fn crashed(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for p in [&mut self.emulator, &mut self.api].into_iter().chain(self.workers.iter_mut().map(|w| &mut w.proc)) {
            if let Some(exit) = p.exited() {
                out.push(format!("{} (pid {}) exited: {exit}", p.spec.name, p.pid));
            }
        }
        out
    }

    /// Stops every worker (after `killed <pid>` lines, so open executions end in the ledger).
    pub async fn stop_workers(&mut self) {
        for w in &mut self.workers {
            w.proc.kill9().await;
            ledger_line(&self.ledger, &format!("killed {}", w.proc.pid));
        }
    }
}
