//! A throwaway Postgres cluster of the suite's own (temp data dir, free port), so it can be
//! fast-restarted under load without disturbing other tests. Run as the `postgres` user when we
//! are root (initdb refuses root), as `.ci/run`'s `ensure_postgres` does.

use std::path::PathBuf;
use std::process::Command;

pub struct Cluster {
    pub port: u16,
    bin: PathBuf,
    dir: PathBuf,
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL under /usr/lib/postgresql (apt-get install postgresql)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort_by_key(|p| p.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()));
    dirs.pop().expect("an initdb under /usr/lib/postgresql/*/bin")
}

impl Cluster {
    /// Runs `cmd` in a shell, as `postgres` when we are root; panics with its output on failure.
    fn sh(&self, cmd: &str) {
        let out = if is_root() {
            Command::new("su").args(["postgres", "-s", "/bin/sh", "-c", cmd]).output()
        } else {
            Command::new("sh").args(["-c", cmd]).output()
        }
        .expect("run a shell");
        assert!(
            out.status.success(),
            "`{cmd}` failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        );
    }

    /// Stops and removes the clusters of runs whose test process is gone (killed before its
    /// `Drop` could stop them: a nextest timeout, a Ctrl-C).
    fn reap_orphans() {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(owner) = name.strip_prefix("runq-faults-pg-").and_then(|r| r.split('-').next()) else {
                continue;
            };
            if std::path::Path::new(&format!("/proc/{owner}")).exists() {
                continue;
            }
            let orphan = Self { port: 0, bin: bin_dir(), dir: e.path() };
            drop(orphan);
        }
    }

    /// initdb + start on `port`.
    pub fn start(port: u16) -> Self {
        Self::reap_orphans();
        let dir = std::env::temp_dir().join(format!("runq-faults-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            assert!(Command::new("chown").args(["postgres", dir.to_str().unwrap()]).status().unwrap().success());
        }
        let c = Self { port, bin: bin_dir(), dir };
        let (bin, dir) = (c.bin.display(), c.dir.display());
        c.sh(&format!("{bin}/initdb -D {dir}/db -U postgres --auth=trust -E UTF8 >/dev/null"));
        // fsync off: a fast restart is a clean shutdown (nothing is lost), and the suite never
        // crashes the machine; it only makes commits cheap on a shared 2-core box.
        c.sh(&format!(
            "{bin}/pg_ctl -D {dir}/db -o '-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={dir} \
             -c max_connections=300 -c fsync=off' -l {dir}/log -w start >/dev/null"
        ));
        c
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl restart -m fast`: every session is terminated, the server is back when it returns.
    pub fn restart_fast(&self) {
        let (bin, dir) = (self.bin.display(), self.dir.display());
        self.sh(&format!("{bin}/pg_ctl -D {dir}/db -m fast -w restart -l {dir}/log >/dev/null"));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let (bin, dir) = (self.bin.display(), self.dir.display());
        let cmd = format!("{bin}/pg_ctl -D {dir}/db -m immediate -w stop >/dev/null 2>&1");
        let _ = if is_root() {
            Command::new("su").args(["postgres", "-s", "/bin/sh", "-c", &cmd]).status()
        } else {
            Command::new("sh").args(["-c", &cmd]).status()
        };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
