//! Jobs in (the public API, recording every 202-accepted id), poison inputs, and the final
//! state of every accepted job (waiting on status long-polls up to a bound).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::verdict::Final;

/// What the API answered, shared by the submitter and the poisoner.
#[derive(Default)]
pub struct Book {
    /// Every id the API accepted with 202, in order.
    pub accepted: Vec<String>,
    /// Answers by `what: status` (submit errors, poison answers).
    pub answers: BTreeMap<String, usize>,
    /// Every workflow the API accepted (its steps' jobs are in `accepted` too).
    pub workflows: Vec<String>,
}

pub type SharedBook = Arc<Mutex<Book>>;

#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub api: String,
    pub token: String,
}

fn ledger_job(rng: &mut StdRng) -> Value {
    let ms: u64 = if rng.random_bool(0.6) { rng.random_range(0..200) } else { rng.random_range(200..1500) };
    let mut args = json!({"ms": ms, "steps": rng.random_range(1..=5)});
    if rng.random_bool(0.12) {
        args["fail_times"] = json!(rng.random_range(1..=2));
    }
    let mut job = json!({"function": "ledger", "args": args,
                         "priority": if rng.random_bool(0.5) { "high" } else { "medium" }});
    if rng.random_bool(0.2) {
        job["max_attempts"] = json!(rng.random_range(2..=6));
    }
    job
}

/// A workflow of four ledger steps, a diamond (`a` → `b`, `c` → `d`), each step a ledger job
/// like the others: the verdict holds every step to the same rules, and a step can only start
/// once its parents succeeded.
fn ledger_workflow(rng: &mut StdRng) -> Value {
    let mut step = |name: &str, after: &[&str]| {
        let job = ledger_job(rng);
        let mut step = json!({"name": name, "function": "ledger", "args": job["args"], "after": after,
                              "priority": job["priority"]});
        if let Some(n) = job.get("max_attempts") {
            step["max_attempts"] = n.clone();
        }
        step
    };
    json!({"steps": [step("a", &[]), step("b", &["a"]), step("c", &["a"]), step("d", &["b", "c"])]})
}

impl Client {
    /// POSTs `body` to `path`; records 202-accepted ids under `what`.
    async fn submit(&self, book: &SharedBook, what: &str, path: &str, body: &Value, traceparent: Option<&str>) -> u16 {
        let mut req = self.http.post(format!("{}{path}", self.api)).bearer_auth(&self.token).json(body);
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp);
        }
        let (status, answer) = match req.send().await {
            Ok(r) => (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null)),
            Err(_) => (0, Value::Null),
        };
        let mut book = book.lock().unwrap();
        if status == 202 && answer.get("steps").is_some() {
            book.workflows.push(answer["id"].as_str().expect("a 202 has the workflow's id").to_owned());
        }
        if status == 202 {
            let ids: Vec<String> = match (answer.get("jobs"), answer.get("steps")) {
                (Some(jobs), _) => {
                    jobs.as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_owned()).collect()
                }
                // A workflow: every step's job is an accepted job the verdict follows.
                (None, Some(steps)) => steps
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|s| s["jobs"].as_array().unwrap().iter())
                    .map(|j| j["job_id"].as_str().unwrap().to_owned())
                    .collect(),
                (None, None) => vec![answer["id"].as_str().expect("a 202 has the job's id").to_owned()],
            };
            book.accepted.extend(ids);
        }
        *book.answers.entry(format!("{what}: {status}")).or_default() += 1;
        status
    }

    /// Submits `total` ordinary ledger jobs spread over `over`, singly and in batches.
    pub async fn submit_load(self, book: SharedBook, seed: u64, total: usize, over: Duration) {
        let mut rng = StdRng::seed_from_u64(seed);
        let start = Instant::now();
        let mut sent = 0;
        while sent < total {
            let due = start + over.mul_f64(sent as f64 / total as f64);
            tokio::time::sleep_until(due.into()).await;
            if total - sent >= 4 && rng.random_bool(0.08) {
                self.submit(&book, "workflow", "/workflows", &ledger_workflow(&mut rng), None).await;
                sent += 4;
                continue;
            }
            let n = if rng.random_bool(0.6) { 1 } else { rng.random_range(2..=12).min(total - sent) };
            if n == 1 {
                self.submit(&book, "submit", "/jobs", &ledger_job(&mut rng), None).await;
            } else {
                let jobs: Vec<Value> = (0..n).map(|_| ledger_job(&mut rng)).collect();
                self.submit(&book, "batch", "/jobs:batch", &json!({ "jobs": jobs }), None).await;
            }
            sent += n;
        }
    }

    /// Checks every workflow once its jobs are settled: it has finished, and no step started
    /// before every step it runs after had succeeded (by their jobs' timestamps). Returns the
    /// workflows that broke either rule, with why.
    pub async fn judge_workflows(&self, ids: &[String]) -> Vec<String> {
        let mut wrong = Vec::new();
        for id in ids {
            let view = match self.get(&format!("/workflows/{id}")).await {
                Ok((200, view)) => view,
                other => {
                    wrong.push(format!("{id}: GET answered {other:?}"));
                    continue;
                }
            };
            if !["succeeded", "failed", "cancelled"].contains(&view["status"].as_str().unwrap_or("?")) {
                wrong.push(format!("{id}: still {}", view["status"]));
            }
            let steps = view["steps"].as_array().cloned().unwrap_or_default();
            let find = |name: &str| steps.iter().find(|s| s["name"] == name);
            for step in &steps {
                let time = |v: &Value| v.as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
                let Some(started) = time(&step["jobs"][0]["started_at"]) else { continue };
                for parent in step["after"].as_array().into_iter().flatten() {
                    let parent = find(parent.as_str().unwrap_or_default());
                    let done = parent.and_then(|p| time(&p["jobs"][0]["finished_at"]));
                    let ok = parent.is_some_and(|p| p["status"] == "succeeded") && done.is_some_and(|d| d <= started);
                    if !ok {
                        wrong.push(format!(
                            "{id}: step {} started at {started} before its parent {parent:?} succeeded",
                            step["name"]
                        ));
                    }
                }
            }
        }
        wrong
    }

    /// Cancels job `id` (whatever it is doing now).
    pub async fn cancel(&self, book: &SharedBook, id: &str) {
        let url = format!("{}/jobs/{id}/cancel", self.api);
        let status = match self.http.post(url).bearer_auth(&self.token).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        };
        *book.lock().unwrap().answers.entry(format!("cancel: {status}")).or_default() += 1;
    }

    /// One poison input of a random kind; returns its name.
    pub async fn poison(&self, book: &SharedBook, rng: &mut StdRng) -> &'static str {
        let job = || json!({"function": "ledger", "args": {"ms": 10}});
        match rng.random_range(0..6) {
            0 => {
                let tp = format!("00-{}-{}-01", "a".repeat(2000), "b".repeat(16));
                self.submit(book, "poison_traceparent", "/jobs", &job(), Some(&tp)).await;
                "poison_traceparent"
            }
            1 => {
                let tp = "x".repeat(1500);
                let jobs: Vec<Value> = (0..20).map(|_| job()).collect();
                self.submit(book, "poison_traceparent_batch", "/jobs:batch", &json!({ "jobs": jobs }), Some(&tp)).await;
                "poison_traceparent_batch"
            }
            2 => {
                let body = json!({"function": "ledger", "args": {"ms": 10, "note": "a\u{0}b"}});
                self.submit(book, "poison_nul_args", "/jobs", &body, None).await;
                "poison_nul_args"
            }
            3 => {
                let url = format!("{}/jobs?function=%00", self.api);
                let status = match self.http.get(url).bearer_auth(&self.token).send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                *book.lock().unwrap().answers.entry(format!("poison_nul_query: {status}")).or_default() += 1;
                "poison_nul_query"
            }
            4 => {
                let body = json!({"function": "no_such_function", "args": {}});
                self.submit(book, "poison_unknown_function", "/jobs", &body, None).await;
                "poison_unknown_function"
            }
            _ => {
                let body = json!({"function": "ledger_orphan", "args": {"ms": 10}});
                self.submit(book, "poison_missing_topic", "/jobs", &body, None).await;
                "poison_missing_topic"
            }
        }
    }

    pub async fn get(&self, path: &str) -> Result<(u16, Value), String> {
        let r = self.http.get(format!("{}{path}", self.api)).bearer_auth(&self.token).send().await;
        let r = r.map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// The final state of job `id`: terminal, lost (404), or stranded at `deadline`. Waits on
    /// status long-polls, which answer as soon as the job changes.
    async fn settle(&self, id: &str, deadline: Instant) -> Final {
        loop {
            match self.get(&format!("/jobs/{id}")).await {
                Ok((200, job)) => {
                    if matches!(job["status"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
                        return Final::Done(job);
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Final::Stranded(job);
                    }
                    let wait = left.as_secs().clamp(1, 10);
                    let _ = self.get(&format!("/jobs/{id}/status?wait={wait}")).await;
                }
                Ok((404, body)) => return Final::Lost(body.to_string()),
                other => {
                    // The API is there (no faults now); anything else is worth a retry until the bound.
                    if Instant::now() >= deadline {
                        return Final::Stranded(json!({"status": format!("unanswered: {other:?}")}));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Every accepted job's final state, within `bound` from now.
    pub async fn settle_all(&self, ids: &[String], bound: Duration) -> HashMap<String, Final> {
        let deadline = Instant::now() + bound;
        futures::stream::iter(ids.iter().cloned())
            .map(|id| async move {
                let f = self.settle(&id, deadline).await;
                (id, f)
            })
            .buffer_unordered(48)
            .collect()
            .await
    }
}
