//! Where `runq dev` gets its database and token secret: `DATABASE_URL`, the local server, or a
//! throwaway cluster of its own under `.runq/`; a secret kept in `.runq/dev-secret`.

use std::time::Duration;

use super::BoxError;
use crate::store;

/// Finds a database for `runq dev`: `configured` (`DATABASE_URL`) when set, else `runq` on the
/// local server (created if missing). Errors with what to do when there is none.
pub async fn find_database(configured: Option<&str>) -> Result<String, BoxError> {
    if let Some(url) = configured {
        return Ok(url.to_owned());
    }
    let server = "postgres://postgres@127.0.0.1:5432";
    let admin = store::connect_lazy(&format!("{server}/postgres"), 1, Duration::from_secs(3))?;
    match sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'runq')")
        .fetch_one(&admin)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            sqlx::query("CREATE DATABASE runq").execute(&admin).await?;
        }
        Err(e) => {
            admin.close().await;
            tracing::info!(error = %e, "no Postgres at {server}; starting a throwaway cluster under .runq/");
            let cluster = LocalCluster::start(std::path::Path::new(".runq/pg"), DEV_CLUSTER_PORT).map_err(|why| {
                format!(
                    "no DATABASE_URL, no Postgres at {server} ({e}), and no throwaway cluster ({why}). \
                     Install PostgreSQL (Debian: apt-get install postgresql) or set \
                     DATABASE_URL=postgres://user@host:5432/db"
                )
            })?;
            let url = cluster.url("postgres");
            let admin = store::connect_lazy(&url, 1, Duration::from_secs(5))?;
            let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'runq')")
                .fetch_one(&admin)
                .await?;
            if !exists {
                sqlx::query("CREATE DATABASE runq").execute(&admin).await?;
            }
            admin.close().await;
            return Ok(cluster.url("runq"));
        }
    }
    admin.close().await;
    Ok(format!("{server}/runq"))
}

/// The port of the throwaway cluster `runq dev` starts when there is no Postgres.
pub const DEV_CLUSTER_PORT: u16 = 5433;

/// A PostgreSQL cluster in a directory of ours, started with the machine's `initdb`/`pg_ctl`
/// (run as the `postgres` user when we are root, since `initdb` refuses root). It keeps running
/// after `runq dev` exits, so the next start finds it (and its jobs) again.
pub struct LocalCluster {
    port: u16,
    bin: std::path::PathBuf,
    data: std::path::PathBuf,
}

impl LocalCluster {
    fn bin_dir() -> Option<std::path::PathBuf> {
        if let Ok(out) = std::process::Command::new("pg_config").arg("--bindir").output()
            && out.status.success()
        {
            let dir = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("initdb").exists() {
                return Some(dir);
            }
        }
        let mut dirs: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .collect();
        dirs.sort_by_key(|p| {
            p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok())
        });
        dirs.pop()
    }

    fn is_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
            .unwrap_or(false)
    }

    fn run(program: &std::path::Path, args: &[&str]) -> Result<(), String> {
        let status = if Self::is_root() {
            let line = std::iter::once(program.display().to_string())
                .chain(args.iter().map(|a| format!("'{}'", a.replace('\'', "'\\''"))))
                .collect::<Vec<_>>()
                .join(" ");
            std::process::Command::new("su").args(["postgres", "-s", "/bin/sh", "-c", &line]).status()
        } else {
            std::process::Command::new(program).args(args).status()
        };
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("{} exited with {s}", program.display())),
            Err(e) => Err(format!("can't run {}: {e}", program.display())),
        }
    }

    /// Initialises `dir` if needed and starts the cluster on 127.0.0.1:`port` with trust auth.
    pub fn start(dir: &std::path::Path, port: u16) -> Result<Self, String> {
        let bin = Self::bin_dir().ok_or("no initdb found (pg_config --bindir, /usr/lib/postgresql/*/bin)")?;
        std::fs::create_dir_all(dir).map_err(|e| format!("can't create {}: {e}", dir.display()))?;
        let dir = dir.canonicalize().map_err(|e| e.to_string())?;
        if Self::is_root() {
            let chown = std::process::Command::new("chown").args(["-R", "postgres"]).arg(&dir).status();
            if !chown.is_ok_and(|s| s.success()) {
                return Err(format!("can't give {} to the postgres user", dir.display()));
            }
        }
        let data = dir.join("data");
        let data_s = data.display().to_string();
        if !data.join("PG_VERSION").exists() {
            Self::run(&bin.join("initdb"), &["-D", &data_s, "-U", "postgres", "--auth=trust", "-E", "UTF8"])?;
        }
        let running = Self::run(&bin.join("pg_ctl"), &["-D", &data_s, "status"]).is_ok();
        if !running {
            let options =
                format!("-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}", dir.display());
            let log = dir.join("postgres.log").display().to_string();
            Self::run(&bin.join("pg_ctl"), &["-D", &data_s, "-o", &options, "-l", &log, "-w", "start"])?;
        }
        Ok(Self { port, bin, data })
    }

    /// Stops the cluster (its files stay).
    pub fn stop(&self) -> Result<(), String> {
        Self::run(&self.bin.join("pg_ctl"), &["-D", &self.data.display().to_string(), "-m", "fast", "-w", "stop"])
    }

    /// A URL of database `db` in this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

/// The dev token secret: `configured` (`RUNQ_AUTH_HS256_SECRET`), else one kept in
/// `.runq/dev-secret` so tokens survive restarts.
pub fn dev_secret(configured: Option<&str>) -> Result<String, BoxError> {
    if let Some(secret) = configured {
        return Ok(secret.to_owned());
    }
    let path = std::path::Path::new(".runq/dev-secret");
    if let Ok(secret) = std::fs::read_to_string(path)
        && secret.trim().len() >= 16
    {
        return Ok(secret.trim().to_owned());
    }
    let secret = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    std::fs::create_dir_all(".runq")?;
    std::fs::write(path, &secret)?;
    Ok(secret)
}
