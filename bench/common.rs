//! What the benchmarks share: a scratch database, percentiles, and what a job cost (CPU of this
//! process and of the Postgres processes serving the database, WAL bytes, transaction ids,
//! commits) between two snapshots.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::PgPool;

/// Linux reports /proc CPU times in USER_HZ ticks, 100 per second on every architecture.
const TICKS_PER_SEC: f64 = 100.0;

/// Drops and creates `database` on DATABASE_URL's server (default local Postgres); its URL.
pub async fn scratch_database(database: &str) -> String {
    let server = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let (base, _) = server.rsplit_once('/').expect("DATABASE_URL has a database");
    let admin = runq::store::connect_lazy(&server, 1, Duration::from_secs(5)).expect("DATABASE_URL");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")).execute(&admin).await.expect("drop");
    sqlx::query(&format!("CREATE DATABASE {database}")).execute(&admin).await.expect("create");
    format!("{base}/{database}")
}

/// The `p` quantile of `sorted`; NaN (printed as such) when there is nothing to take it of, as
/// after `--seconds 0`.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// utime + stime of one process, in ticks, from /proc/<pid>/stat.
fn proc_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// CPU ticks of each Postgres process that serves this database: its backends (and autovacuum
/// workers) by the database name in their title, and the shared background processes
/// (checkpointer, WAL writer, ...); other databases' backends are left out.
fn postgres_ticks(database: &str) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end() != "postgres" {
            continue;
        }
        let title = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let ours = title.split([' ', '\0']).any(|w| w == database);
        let a_backend = title.contains('(') || title.contains("[local]") || title.contains("autovacuum worker");
        if (ours || !a_backend)
            && let Some(t) = proc_ticks(&pid)
        {
            out.insert(pid, t);
        }
    }
    out
}

/// What the machine and the database had done at one moment.
pub struct Snapshot {
    pub at: Instant,
    pub self_ticks: u64,
    pub postgres: HashMap<String, u64>,
    pub wal_lsn: String,
    pub xid: i64,
    pub commits: Option<i64>,
    /// Row updates of `jobs` so far, and how many of them were HOT (no index touched), read
    /// with the commits (after the settle: the counters are flushed as the commits are).
    pub jobs_updates: Option<(i64, i64)>,
}

/// What the machine and the database have done so far; after `settle` (when not zero) the
/// commit counter too.
pub async fn snapshot(pool: &PgPool, settle: Duration) -> Snapshot {
    let (commits, jobs_updates) = if settle.is_zero() {
        (None, None)
    } else {
        tokio::time::sleep(settle).await;
        let commits =
            sqlx::query_scalar::<_, i64>("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
                .fetch_one(pool)
                .await
                .expect("xact_commit");
        let updates: (i64, i64) =
            sqlx::query_as("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'jobs'")
                .fetch_one(pool)
                .await
                .expect("jobs updates");
        (Some(commits), Some(updates))
    };
    // pg_current_xact_id() takes an id itself: one per snapshot, negligible per job.
    let (wal_lsn, xid): (String, i64) =
        sqlx::query_as("SELECT pg_current_wal_lsn()::text, (pg_current_xact_id()::text)::bigint")
            .fetch_one(pool)
            .await
            .expect("wal lsn");
    Snapshot {
        at: Instant::now(),
        self_ticks: proc_ticks("self").unwrap_or(0),
        postgres: postgres_ticks(pool.connect_options().get_database().unwrap_or_default()),
        wal_lsn,
        xid,
        commits,
        jobs_updates,
    }
}

/// Per-job costs between two snapshots, printed (and as `kv` lines under `prefix`).
pub async fn report_costs(pool: &PgPool, prefix: &str, jobs: usize, before: &Snapshot, after: &Snapshot, kv: bool) {
    let n = jobs as f64;
    let runq_ms = (after.self_ticks - before.self_ticks) as f64 / TICKS_PER_SEC * 1000.0 / n;
    let pg_ticks: u64 =
        after.postgres.iter().map(|(pid, t)| t.saturating_sub(before.postgres.get(pid).copied().unwrap_or(0))).sum();
    let pg_ms = pg_ticks as f64 / TICKS_PER_SEC * 1000.0 / n;
    let wal: f64 = sqlx::query_scalar("SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::float8")
        .bind(&after.wal_lsn)
        .bind(&before.wal_lsn)
        .fetch_one(pool)
        .await
        .expect("wal diff");
    let xids = (after.xid - before.xid - 1) as f64 / n;
    let commits = match (before.commits, after.commits) {
        (Some(b), Some(a)) => Some((a - b) as f64 / n),
        _ => None,
    };
    let updates = match (before.jobs_updates, after.jobs_updates) {
        (Some((u0, h0)), Some((u1, h1))) => Some(((u1 - u0) as f64 / n, (h1 - h0) as f64 / n)),
        _ => None,
    };
    let secs = (after.at - before.at).as_secs_f64();
    println!(
        "cost        per job ({prefix}): runq process CPU {runq_ms:.3} ms, Postgres CPU {pg_ms:.3} ms, WAL {:.0} bytes, {xids:.2} transaction ids, {} commits, {} (over {secs:.1} s)",
        wal / n,
        commits.map_or("-".into(), |c| format!("{c:.2}")),
        updates.map_or("- updates of jobs".into(), |(u, h)| format!("{u:.2} updates of jobs ({h:.2} HOT)")),
    );
    if kv {
        println!("kv {prefix}.cpu_ms_per_job {runq_ms:.4}");
        println!("kv {prefix}.pg_cpu_ms_per_job {pg_ms:.4}");
        println!("kv {prefix}.wal_bytes_per_job {:.1}", wal / n);
        println!("kv {prefix}.xids_per_job {xids:.3}");
        if let Some(c) = commits {
            println!("kv {prefix}.commits_per_job {c:.3}");
        }
        if let Some((u, h)) = updates {
            println!("kv {prefix}.jobs_updates_per_job {u:.3}");
            println!("kv {prefix}.jobs_hot_updates_per_job {h:.3}");
        }
    }
}
