//! The verdict, from the ledger file and the API's answers only (never runq's tables).
//!
//! The ledger is a total order of events: the function's `start`/`end`/`abort`/`fail`/`dropped`
//! lines and the harness's `killed <pid>` (written after the process is known dead),
//! `stopped <pid>` and `continued <pid>`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What the API said about one accepted job at the end.
#[derive(Debug, Clone)]
pub enum Final {
    /// 404 or unknown: accepted, then forgotten.
    Lost(String),
    /// Not terminal at the bound: its last status.
    Stranded(serde_json::Value),
    /// Terminal: the full job (`GET /jobs/{id}`).
    Done(serde_json::Value),
}

#[derive(Debug, Default)]
pub struct Verdict {
    pub lost: Vec<String>,
    pub stranded: Vec<String>,
    /// Jobs with an execution that started while another of the same job was running.
    pub overlapping: BTreeMap<String, usize>,
    /// Jobs with more `start` lines than their max_attempts.
    pub excess: BTreeMap<String, (usize, i64)>,
    /// Succeeded jobs whose result token isn't their last `end` line's.
    pub wrong: Vec<String>,
    pub by_status: BTreeMap<String, usize>,
    pub by_error_kind: BTreeMap<String, usize>,
    pub executions: usize,
    /// Frozen executions superseded by a newer one that stopped at their first chance on SIGCONT.
    pub resumed_then_stopped: usize,
    /// Overlaps of each kind: started beside a running execution; resumed and worked.
    pub started_beside: usize,
    pub resumed_and_worked: usize,
}

impl Verdict {
    pub fn overlapping_runs(&self) -> usize {
        self.overlapping.values().sum()
    }

    pub fn excess_executions(&self) -> usize {
        self.excess.values().map(|(n, max)| n - *max as usize).sum()
    }

    pub fn failed(&self) -> bool {
        !(self.lost.is_empty() && self.stranded.is_empty() && self.overlapping.is_empty() && self.excess.is_empty())
    }
}

/// One execution of a job's body, between its `start` and its last line.
struct Exec {
    job: String,
    pid: String,
    /// Its process is SIGSTOPped now.
    suspended: bool,
    /// Another execution of its job started while it was suspended: from now on it may only stop.
    superseded: bool,
    /// Already counted as overlapping.
    counted: bool,
}

/// Judges the ledger against the API's final answers for every accepted job.
///
/// Overlap, in ledger order: an execution starts while another execution of the same job is
/// open and not suspended; or an execution that was suspended (its process SIGSTOPped) when
/// another one started does anything but stop (`abort`/`dropped`) once its process continues:
/// a `step`, `end` or `fail` line. A frozen process can't write while frozen, so a frozen run
/// that stops at its first chance after SIGCONT did no work beside the new run.
pub fn judge(ledger: &str, jobs: &HashMap<String, Final>) -> Verdict {
    let mut v = Verdict::default();
    let mut open: HashMap<String, Exec> = HashMap::new();
    let mut starts: HashMap<String, usize> = HashMap::new();
    let mut last_end: HashMap<String, String> = HashMap::new();
    let mut stopped: BTreeSet<String> = BTreeSet::new();
    for line in ledger.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["start", job, _attempt, pid, exec] => {
                v.executions += 1;
                *starts.entry(job.to_string()).or_default() += 1;
                let mut clash = false;
                for other in open.values_mut().filter(|e| e.job == *job) {
                    if other.suspended {
                        other.superseded = true;
                    } else {
                        clash = true;
                    }
                }
                if clash {
                    v.started_beside += 1;
                    *v.overlapping.entry(job.to_string()).or_default() += 1;
                }
                let suspended = stopped.contains(*pid);
                let e =
                    Exec { job: job.to_string(), pid: pid.to_string(), suspended, superseded: false, counted: clash };
                open.insert(exec.to_string(), e);
            }
            [kind @ ("step" | "end" | "abort" | "fail" | "dropped"), job, _attempt, _pid, exec, rest @ ..] => {
                let works = matches!(*kind, "step" | "end" | "fail");
                if let Some(e) = open.get_mut(*exec) {
                    if works && e.superseded && !e.counted {
                        e.counted = true;
                        v.resumed_and_worked += 1;
                        *v.overlapping.entry(job.to_string()).or_default() += 1;
                    }
                    if !works && e.superseded && !e.counted {
                        v.resumed_then_stopped += 1;
                    }
                }
                if *kind != "step" {
                    open.remove(*exec);
                }
                if *kind == "end" {
                    last_end.insert(job.to_string(), rest.first().copied().unwrap_or_default().to_owned());
                }
            }
            ["killed", pid] => {
                open.retain(|_, e| e.pid.as_str() != *pid);
                stopped.remove(*pid);
            }
            ["stopped", pid] => {
                stopped.insert(pid.to_string());
                open.values_mut().filter(|e| e.pid.as_str() == *pid).for_each(|e| e.suspended = true);
            }
            ["continued", pid] => {
                stopped.remove(*pid);
                open.values_mut().filter(|e| e.pid.as_str() == *pid).for_each(|e| e.suspended = false);
            }
            _ => {}
        }
    }
    for (id, state) in jobs {
        match state {
            Final::Lost(_) => v.lost.push(id.clone()),
            Final::Stranded(_) => v.stranded.push(id.clone()),
            Final::Done(job) => {
                let status = job["status"].as_str().unwrap_or("?").to_owned();
                if let Some(kind) = job["error"]["kind"].as_str() {
                    *v.by_error_kind.entry(kind.to_owned()).or_default() += 1;
                }
                if status == "succeeded" && job["function"].as_str().is_some_and(|f| f.starts_with("ledger")) {
                    let token = job["result"]["token"].as_str();
                    if token.is_none() || token != last_end.get(id).map(String::as_str) {
                        v.wrong.push(id.clone());
                    }
                }
                *v.by_status.entry(status).or_default() += 1;
                let max = job["max_attempts"].as_i64().unwrap_or(0);
                let n = starts.get(id).copied().unwrap_or(0);
                if n as i64 > max {
                    v.excess.insert(id.clone(), (n, max));
                }
            }
        }
        if let Final::Stranded(s) = state {
            *v.by_status.entry(format!("stranded:{}", s["status"].as_str().unwrap_or("?"))).or_default() += 1;
        }
    }
    v.lost.sort();
    v.stranded.sort();
    v.wrong.sort();
    v
}

/// Follows the ledger as it grows, to know which processes are running an execution now (so a
/// kill or a freeze hits a worker mid-run).
pub struct Tail {
    path: std::path::PathBuf,
    offset: u64,
    partial: String,
    /// Open executions: exec id -> pid.
    open: HashMap<String, u32>,
}

impl Tail {
    pub fn new(path: std::path::PathBuf) -> Self {
        Tail { path, offset: 0, partial: String::new(), open: HashMap::new() }
    }

    /// Reads what was appended since the last call; returns the pids with an open execution.
    pub fn busy(&mut self) -> BTreeSet<u32> {
        use std::io::{Read, Seek};
        if let Ok(mut f) = std::fs::File::open(&self.path)
            && f.seek(std::io::SeekFrom::Start(self.offset)).is_ok()
        {
            let mut buf = String::new();
            if let Ok(n) = f.read_to_string(&mut buf) {
                self.offset += n as u64;
                self.partial.push_str(&buf);
            }
        }
        let complete = match self.partial.rfind('\n') {
            Some(i) => self.partial.drain(..=i).collect::<String>(),
            None => String::new(),
        };
        for line in complete.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["start", _, _, pid, exec] => {
                    self.open.insert(exec.to_string(), pid.parse().unwrap_or(0));
                }
                ["end" | "abort" | "fail" | "dropped", _, _, _, exec, ..] => {
                    self.open.remove(*exec);
                }
                ["killed", pid] => {
                    let pid: u32 = pid.parse().unwrap_or(0);
                    self.open.retain(|_, p| *p != pid);
                }
                _ => {}
            }
        }
        self.open.values().copied().collect()
    }
}

/// The ledger lines of `job`, and the harness's lines about the pids that ran it.
pub fn excerpt(ledger: &str, job: &str) -> Vec<String> {
    let pids: BTreeSet<&str> =
        ledger.lines().filter(|l| l.split(' ').nth(1) == Some(job)).filter_map(|l| l.split(' ').nth(3)).collect();
    ledger
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            let f: Vec<&str> = l.split(' ').collect();
            f.get(1) == Some(&job)
                || (matches!(f.first(), Some(&("killed" | "stopped" | "continued")))
                    && f.get(1).is_some_and(|p| pids.contains(p)))
        })
        .map(|(i, l)| format!("{:>7}: {l}", i + 1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn done(status: &str, token: &str, max: i64) -> Final {
        Final::Done(json!({"status": status, "function": "ledger", "result": {"token": token}, "max_attempts": max}))
    }

    #[test]
    fn overlaps_are_runs_of_one_job_started_while_another_was_open() {
        let ledger = "start j1 1 10 a\nkilled 10\nstart j1 2 11 b\nend j1 2 11 b t1\n\
                      start j2 1 10 c\nstart j2 2 11 d\nend j2 2 11 d t2\nend j2 1 10 c t3\n\
                      start j3 1 10 e\nstopped 10\nstart j3 2 11 f\nend j3 2 11 f t4\ncontinued 10\ndropped j3 1 10 e\n\
                      start j5 1 10 g\nstopped 10\nstart j5 2 11 h\ncontinued 10\nstep j5 1 10 g\nend j5 2 11 h t5\n";
        let jobs: HashMap<String, Final> = [
            ("j1".to_owned(), done("succeeded", "t1", 3)),
            ("j2".to_owned(), done("succeeded", "t2", 3)),
            ("j3".to_owned(), done("succeeded", "t4", 1)),
            ("j4".to_owned(), Final::Lost("404".into())),
            ("j5".to_owned(), done("succeeded", "t5", 3)),
        ]
        .into();
        let v = judge(ledger, &jobs);
        // j3's frozen run stopped at once on SIGCONT; j5's took a step beside the new run.
        assert_eq!(v.overlapping.keys().collect::<Vec<_>>(), ["j2", "j5"]);
        assert_eq!(v.resumed_then_stopped, 1);
        assert_eq!(v.wrong, ["j2"], "j2's last end is t3");
        assert_eq!(v.excess.keys().collect::<Vec<_>>(), ["j3"], "two runs, max_attempts 1");
        assert_eq!(v.lost, ["j4"]);
        assert!(v.failed());
        assert_eq!(excerpt(ledger, "j3").len(), 9, "its lines, and killed/stopped/continued of pid 10");
    }
}
