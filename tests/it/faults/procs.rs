//! The system under test as separate OS processes of the `ledger` example: the emulator, the
//! API and the workers, each with its log file, started and waited for by HTTP readiness.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// The `ledger` example's binary: `RUNQ_TEST_LEDGER_BIN`, else the one cargo built next to this
/// test binary (`target/<profile>/examples/ledger`: cargo and nextest build examples with the
/// tests), brought up to date first with `cargo build --locked --example ledger` into the same
/// target directory.
pub async fn ledger_bin() -> PathBuf {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    if let Ok(p) = std::env::var("RUNQ_TEST_LEDGER_BIN") {
        return p.into();
    }
    // current_exe is target/<profile>/deps/it-<hash>.
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>").to_owned();
    let path = profile_dir.join("examples").join("ledger");
    // Built once per test process, always: the binary links the library, so a check of
    // examples/ledger.rs alone would run a stale library (cargo is quick when nothing changed).
    let mut built = BUILT.lock().unwrap();
    if built.is_none() {
        let profile = profile_dir.file_name().and_then(|s| s.to_str()).unwrap_or("debug").to_owned();
        let mut cmd = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        let target_dir = profile_dir.parent().expect("target dir");
        cmd.args(["build", "--locked", "--example", "ledger", "--target-dir"])
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let status = cmd.status().expect("cargo build --example ledger");
        assert!(status.success() && path.exists(), "cargo build --example ledger did not produce {path:?}");
        *built = Some(path.clone());
    }
    built.clone().unwrap()
}

pub use crate::common::free_port;

/// How to start (and restart) one process.
#[derive(Clone)]
pub struct Spec {
    pub name: String,
    pub bin: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    /// Answers 200 once the process serves.
    pub ready_url: String,
}

/// A running process of the system.
pub struct Proc {
    pub spec: Spec,
    pub child: Child,
    pub pid: u32,
}

impl Proc {
    /// Starts `spec` and waits until its readiness URL answers 200 (or the process exits).
    pub async fn start(spec: Spec, http: &reqwest::Client) -> Proc {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&spec.log).expect("log file");
        let mut cmd = Command::new(&spec.bin);
        cmd.args(&spec.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {} ({:?}): {e}", spec.name, spec.bin));
        let pid = child.id().expect("a pid");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(exit) = child.try_wait().unwrap() {
                panic!("{} exited at start ({exit}); see {}", spec.name, spec.log.display());
            }
            if let Ok(r) = http.get(&spec.ready_url).timeout(Duration::from_secs(2)).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "{} not ready at {} within 60 s", spec.name, spec.ready_url);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Proc { spec, child, pid }
    }

    /// SIGKILL, and wait until the process is gone.
    pub async fn kill9(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill").args([sig, &self.pid.to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig} {}", self.pid);
    }

    /// Whether it exited on its own (a crash of runq is worth reporting).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// Appends one line to the ledger, as the function does (one `write` on an `O_APPEND` file).
pub fn ledger_line(path: &Path, line: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("ledger");
    let buf = format!("{line}\n");
    assert_eq!(f.write(buf.as_bytes()).unwrap(), buf.len());
}
