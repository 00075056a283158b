//! What the dashboard reads to act on: per-function run stats over a window, the signals of
//! stuck jobs, and the worker instances seen recently.
//!
//! Every query reads only what it reports on: the window of `job_runs` (`job_runs_finished`),
//! queued and running jobs (`jobs_status_id`, `jobs_running_lease`), held jobs (`jobs_held`),
//! and the rare jobs with publish failures or dead letters (`jobs_publish_failing`,
//! `jobs_dead_lettered`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::StoreError;

/// The window the dashboard's run stats and workers cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Window {
    /// The last 15 minutes (the default).
    #[default]
    Minutes15,
    /// The last hour.
    Hour1,
    /// The last 24 hours.
    Hours24,
}

impl Window {
    /// Every window, shortest first.
    pub const ALL: [Window; 3] = [Window::Minutes15, Window::Hour1, Window::Hours24];

    /// Its name in the API: `15m`, `1h` or `24h`.
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Minutes15 => "15m",
            Window::Hour1 => "1h",
            Window::Hours24 => "24h",
        }
    }

    /// How long it is.
    pub fn duration(self) -> Duration {
        Duration::from_secs(match self {
            Window::Minutes15 => 15 * 60,
            Window::Hour1 => 3600,
            Window::Hours24 => 24 * 3600,
        })
    }

    /// How many minutes it is.
    pub fn minutes(self) -> f64 {
        self.duration().as_secs_f64() / 60.0
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A window name that is none of [`Window::ALL`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown window {0:?}: use 15m, 1h or 24h")]
pub struct UnknownWindow(pub String);

impl FromStr for Window {
    type Err = UnknownWindow;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Window::ALL.into_iter().find(|w| w.as_str() == s).ok_or_else(|| UnknownWindow(s.to_owned()))
    }
}

/// One function's finished runs in a window, as counted by [`function_runs`].
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionRuns {
    pub function: String,
    /// Runs that ended in the window (any outcome, released and reaped ones included).
    pub runs: i64,
    /// Of those, the runs that failed: `retrying`, `failed`, or `reaped` (lost).
    pub failed: i64,
    /// Run durations (end minus claim), in milliseconds: the 50th, 95th and 99th percentiles of
    /// the window's runs, each one of the runs' own durations (`percentile_disc`).
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// The failed runs by error kind (`lost` for a reaped run), most first.
    pub error_kinds: Vec<(String, i64)>,
}

/// The runs that ended in `window`, per function (by name), in one read-only snapshot: a range
/// scan of `job_runs_finished` joined to each run's job by its primary key.
pub async fn function_runs(pool: &PgPool, window: Window) -> Result<Vec<FunctionRuns>, StoreError> {
    let secs = window.duration().as_secs_f64();
    let mut tx = pool.begin().await?;
    sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    let rows = sqlx::query!(
        r#"SELECT j.function AS "function!", count(*) AS "runs!",
                  count(*) FILTER (WHERE r.outcome IN ('retrying', 'failed', 'reaped')) AS "failed!",
                  percentile_disc(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM r.finished_at - r.started_at)::float8)
                      * 1000 AS "p50!",
                  percentile_disc(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM r.finished_at - r.started_at)::float8)
                      * 1000 AS "p95!",
                  percentile_disc(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM r.finished_at - r.started_at)::float8)
                      * 1000 AS "p99!"
           FROM job_runs r JOIN jobs j ON j.id = r.job_id
           WHERE r.finished_at IS NOT NULL AND r.finished_at >= now() - make_interval(secs => $1)
           GROUP BY j.function ORDER BY j.function"#,
        secs,
    )
    .fetch_all(&mut *tx)
    .await?;
    let kinds = sqlx::query!(
        r#"SELECT j.function AS "function!",
                  coalesce(r.error->>'kind', CASE WHEN r.outcome = 'reaped' THEN 'lost' ELSE 'unknown' END) AS "kind!",
                  count(*) AS "count!"
           FROM job_runs r JOIN jobs j ON j.id = r.job_id
           WHERE r.finished_at IS NOT NULL AND r.finished_at >= now() - make_interval(secs => $1)
                 AND r.outcome IN ('retrying', 'failed', 'reaped')
           GROUP BY 1, 2 ORDER BY 1, 3 DESC, 2"#,
        secs,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let error_kinds =
                kinds.iter().filter(|k| k.function == r.function).map(|k| (k.kind.clone(), k.count)).collect();
            FunctionRuns {
                function: r.function,
                runs: r.runs,
                failed: r.failed,
                p50_ms: r.p50,
                p95_ms: r.p95,
                p99_ms: r.p99,
                error_kinds,
            }
        })
        .collect())
}

/// Due queued jobs of one queue: how many, and since when the oldest has been due.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueBacklog {
    /// The queue (a function's own, else its priority's).
    pub queue: String,
    pub due: i64,
    /// The oldest due job's `run_after`.
    pub oldest_due: DateTime<Utc>,
    /// Seconds since then, by the database's clock.
    pub age_secs: f64,
}

/// The counts behind `/dashboard/signals`, in one read-only snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SignalCounts {
    /// Per queue with due jobs, by queue name.
    pub queues: Vec<QueueBacklog>,
    /// `(held_on, jobs, oldest created_at)` per key holding queued jobs, most held first.
    pub held: Vec<(String, i64, DateTime<Utc>)>,
    /// Queued jobs after Pub/Sub refused their message.
    pub publish_failing: i64,
    /// Running jobs whose lease expired.
    pub lease_expired: i64,
    /// Jobs dead-lettered at least once (any status).
    pub dead_lettered: i64,
    /// Of those, the ones that failed (`undeliverable`).
    pub dead_lettered_failed: i64,
}

/// Reads [`SignalCounts`].
pub async fn signal_counts(pool: &PgPool) -> Result<SignalCounts, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    // The queued rows only (jobs_status_id): few by design.
    let queues = sqlx::query!(
        r#"SELECT coalesce(queue, priority) AS "queue!", count(*) AS "due!", min(run_after) AS "oldest!",
                  extract(epoch FROM now() - min(run_after))::float8 AS "age!"
           FROM jobs WHERE status = 'queued' AND run_after <= now()
           GROUP BY 1 ORDER BY 1"#
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| QueueBacklog { queue: r.queue, due: r.due, oldest_due: r.oldest, age_secs: r.age.max(0.0) })
    .collect();
    let held = sqlx::query!(
        r#"SELECT held_on AS "key!", count(*) AS "n!", min(created_at) AS "oldest!" FROM jobs
           WHERE status = 'queued' AND held_on IS NOT NULL GROUP BY held_on ORDER BY 2 DESC, 1"#
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| (r.key, r.n, r.oldest))
    .collect();
    let counts = sqlx::query!(
        r#"SELECT
             (SELECT count(*) FROM jobs WHERE status = 'queued' AND publish_failures > 0) AS "publish_failing!",
             (SELECT count(*) FROM jobs WHERE status = 'running' AND lease_until < now()) AS "lease_expired!",
             (SELECT count(*) FROM jobs WHERE dead_letters > 0) AS "dead_lettered!",
             (SELECT count(*) FROM jobs WHERE dead_letters > 0 AND status = 'failed') AS "dead_lettered_failed!""#
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(SignalCounts {
        queues,
        held,
        publish_failing: counts.publish_failing,
        lease_expired: counts.lease_expired,
        dead_lettered: counts.dead_lettered,
        dead_lettered_failed: counts.dead_lettered_failed,
    })
}

/// A job a worker runs now.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningJob {
    pub id: Uuid,
    pub function: String,
    pub started_at: DateTime<Utc>,
    /// Until when its lease holds (heartbeats move it on).
    pub lease_until: Option<DateTime<Utc>>,
    /// The lease ran out: the worker stopped heartbeating it.
    pub lease_expired: bool,
}

/// A worker instance seen in the window.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSeen {
    pub worker_id: String,
    /// The latest start or end of one of its runs in the window.
    pub last_seen: DateTime<Utc>,
    /// Runs it finished in the window.
    pub finished: i64,
    /// What it runs now, oldest first.
    pub running: Vec<RunningJob>,
}

/// The workers seen in `window`: those with runs that ended in it (`job_runs_finished`) and
/// those running jobs whose lease was renewed within it (`jobs_running_lease`), latest seen
/// first.
pub async fn workers_seen(pool: &PgPool, window: Window) -> Result<Vec<WorkerSeen>, StoreError> {
    let secs = window.duration().as_secs_f64();
    let mut tx = pool.begin().await?;
    sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    let finished = sqlx::query!(
        r#"SELECT worker_id, count(*) AS "finished!", max(finished_at) AS "last_finished!",
                  max(started_at) AS "last_started!"
           FROM job_runs WHERE finished_at IS NOT NULL AND finished_at >= now() - make_interval(secs => $1)
           GROUP BY worker_id"#,
        secs,
    )
    .fetch_all(&mut *tx)
    .await?;
    let running = sqlx::query!(
        r#"SELECT worker_id AS "worker_id!", id, function, coalesce(started_at, updated_at) AS "started_at!",
                  lease_until, coalesce(lease_until < now(), false) AS "lease_expired!"
           FROM jobs
           WHERE status = 'running' AND worker_id IS NOT NULL AND lease_until >= now() - make_interval(secs => $1)
           ORDER BY started_at, id"#,
        secs,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut workers: Vec<WorkerSeen> = finished
        .into_iter()
        .map(|r| WorkerSeen {
            worker_id: r.worker_id,
            last_seen: r.last_finished.max(r.last_started),
            finished: r.finished,
            running: Vec::new(),
        })
        .collect();
    for r in running {
        let job = RunningJob {
            id: r.id,
            function: r.function,
            started_at: r.started_at,
            lease_until: r.lease_until,
            lease_expired: r.lease_expired,
        };
        let seen = job.started_at;
        match workers.iter_mut().find(|w| w.worker_id == r.worker_id) {
            Some(w) => {
                w.last_seen = w.last_seen.max(seen);
                w.running.push(job);
            }
            None => {
                workers.push(WorkerSeen { worker_id: r.worker_id, last_seen: seen, finished: 0, running: vec![job] })
            }
        }
    }
    workers.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then_with(|| a.worker_id.cmp(&b.worker_id)));
    Ok(workers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_round_trip_and_refuse_others() {
        for w in Window::ALL {
            assert_eq!(w.as_str().parse::<Window>().unwrap(), w);
        }
        assert_eq!(Window::Hour1.minutes(), 60.0);
        let e = "2h".parse::<Window>().unwrap_err();
        assert!(e.to_string().contains("15m, 1h or 24h"), "{e}");
    }
}
