//! Workflows end to end over real sockets (a `runq dev` stack: the API, the emulator pushing with
//! OIDC, the workers, the sweep) with the three pipelines of `examples/workflows/`, a person's
//! decisions sent through the HTTP API; and the exactly-once transition between steps.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use runq::dev::DevStack;
use runq::function::{Echo, Fail, Noop, Registry, Sleep};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::e2e::{SECRET, options};

#[path = "../../examples/workflows/playlist.rs"]
mod playlist;
#[path = "../../examples/workflows/speech.rs"]
mod speech;
#[path = "../../examples/workflows/video.rs"]
mod video;

pub fn registry() -> Registry {
    let mut r = Registry::default();
    r.register(Noop).unwrap();
    r.register(Echo).unwrap();
    r.register(Fail).unwrap();
    r.register(Sleep).unwrap();
    speech::register(&mut r);
    video::register(&mut r);
    playlist::register(&mut r);
    r
}

pub struct Wf {
    pub dev: DevStack,
    http: reqwest::Client,
    token: String,
}

pub async fn stack(pool: &PgPool) -> Wf {
    stack_with(options(pool)).await
}

pub async fn stack_with(options: runq::dev::DevOptions) -> Wf {
    let dev = DevStack::start(options, registry()).await.expect("dev stack starts");
    let token =
        runq::auth::mint_hs256(SECRET, "alice", false, Duration::from_secs(3600), "scope", "", None, None).unwrap();
    Wf { dev, http: reqwest::Client::new(), token }
}

impl Wf {
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.dev.api_url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> Value {
        let resp = self.http.get(format!("{}{path}", self.dev.api_url)).bearer_auth(&self.token).send().await.unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    pub async fn submit(&self, body: Value) -> String {
        let (status, view) = self.post("/workflows", body.clone()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "submit {body}: {view}");
        view["id"].as_str().unwrap().to_owned()
    }

    /// Follows `GET /workflows/{id}` by long-poll (ETag and `?wait=`) until `done(view)`, keeping
    /// every view seen; fails after `within`.
    pub async fn follow(&self, id: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        let mut etag: Option<String> = None;
        loop {
            let mut req = self.http.get(format!("{}/workflows/{id}?wait=5", self.dev.api_url)).bearer_auth(&self.token);
            if let Some(tag) = &etag {
                req = req.header("If-None-Match", tag);
            }
            let resp = req.send().await.unwrap();
            if resp.status() == StatusCode::NOT_MODIFIED {
                assert!(Instant::now() < deadline, "workflow {id} did not get there in {within:?}: {:?}", seen.last());
                continue;
            }
            assert_eq!(resp.status(), StatusCode::OK);
            etag = resp.headers().get("etag").map(|v| v.to_str().unwrap().to_owned());
            let view: Value = resp.json().await.unwrap();
            let finished = done(&view);
            seen.push(view);
            if finished {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "workflow {id} did not get there in {within:?}: {}",
                seen.last().unwrap()
            );
        }
    }

    pub async fn finished(&self, id: &str) -> Value {
        let done = |v: &Value| ["succeeded", "failed", "cancelled"].contains(&v["status"].as_str().unwrap());
        self.follow(id, Duration::from_secs(120), done).await.pop().unwrap()
    }

    pub async fn waiting_at(&self, id: &str, step: &str, round: i64) -> Value {
        let at = |v: &Value| step_of(v, step)["status"] == "waiting" && step_of(v, step)["round"] == round;
        self.follow(id, Duration::from_secs(60), at).await.pop().unwrap()
    }

    pub async fn signal(&self, id: &str, step: &str, body: Value) -> (StatusCode, Value) {
        self.post(&format!("/workflows/{id}/steps/{step}/signal"), body).await
    }

    pub async fn signal_with_key(&self, id: &str, step: &str, body: Value, key: &str) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!("{}/workflows/{id}/steps/{step}/signal", self.dev.api_url))
            .bearer_auth(&self.token)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

pub fn step_of<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["steps"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no step {name}"))
}

fn job_id(view: &Value, step: &str) -> Uuid {
    Uuid::parse_str(step_of(view, step)["jobs"][0]["job_id"].as_str().unwrap()).unwrap()
}

async fn runs_of(pool: &PgPool, job: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM job_runs WHERE job_id = $1").bind(job).fetch_one(pool).await.unwrap()
}

#[sqlx::test]
async fn speech_to_text_runs_step_after_step_and_one_id_shows_which(pool: PgPool) {
    let s = stack(&pool).await;
    let id = s.submit(json!({"workflow": "speech_to_text", "args": {"audio": "gs://talks/rust-at-scale.flac"}})).await;
    let seen = s.follow(&id, Duration::from_secs(60), |v| v["status"] == "succeeded").await;
    let last = seen.last().unwrap();
    assert_eq!(last["progress"], 1.0);
    let names: Vec<&str> = last["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["transcribe", "summarize", "index"]);
    assert_eq!(step_of(last, "summarize")["after"], json!(["transcribe"]));
    // Each step read its parent's result by name.
    assert_eq!(step_of(last, "transcribe")["result"]["words"], 6);
    assert_eq!(step_of(last, "summarize")["result"], json!({"summary": "gs: talks rust", "from_words": 6}));
    assert_eq!(step_of(last, "index")["result"]["indexed"], "gs: talks rust");
    // The poller saw the steps one after another: never a later step started before an earlier finished.
    for view in &seen {
        let status = |n: &str| step_of(view, n)["status"].as_str().unwrap().to_owned();
        if status("summarize") != "pending" {
            assert_eq!(status("transcribe"), "succeeded", "{view}");
        }
        if status("index") != "pending" {
            assert_eq!(status("summarize"), "succeeded", "{view}");
        }
    }
    assert!(seen.iter().any(|v| v["status"] == "running" && v["progress"].as_f64().unwrap() < 1.0));
    // Each step ran on its function's queue, and a step's job links its workflow.
    for (step, priority) in [("transcribe", "high"), ("summarize", "medium"), ("index", "low")] {
        let job = s.get(&format!("/jobs/{}", job_id(last, step))).await;
        assert_eq!(job["priority"], priority);
        assert_eq!(job["workflow"]["workflow_id"], id.as_str());
        assert_eq!(job["workflow"]["step"], step);
    }
    let status = s.get(&format!("/jobs/{}/status", job_id(last, "index"))).await;
    assert_eq!((status["workflow"]["finished"].as_i64(), status["workflow"]["total"].as_i64()), (Some(3), Some(3)));
    s.dev.shutdown().await;
}

fn video_args() -> Value {
    json!({"video": "v1", "languages": ["fr", "de", "ja"]})
}

#[sqlx::test]
async fn video_accessibility_approved_fans_out_per_language_and_fans_in(pool: PgPool) {
    let s = stack(&pool).await;
    let id = s.submit(json!({"workflow": "video_accessibility", "args": video_args()})).await;
    let waiting = s.waiting_at(&id, "qc_review", 0).await;
    assert_eq!(waiting["status"], "waiting", "nothing else runs while the review waits");
    assert_eq!(step_of(&waiting, "translate")["status"], "pending");
    assert_eq!(step_of(&waiting, "translate")["total"], 3);
    let (code, view) = s.signal(&id, "qc_review", json!({"decision": "approve"})).await;
    assert_eq!(code, StatusCode::OK, "{view}");
    assert_eq!(view["repeated"], false);
    let done = s.finished(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["total"], 1 + 1 + 1 + 1 + 3 + 3 + 1);
    let review = step_of(&done, "qc_review");
    assert_eq!(review["result"]["decision"], "approve");
    assert_eq!(review["result"]["by"], "alice");
    let tracks = step_of(&done, "deliver")["result"]["tracks"].as_array().unwrap().clone();
    let languages: Vec<&str> = tracks.iter().map(|t| t["language"].as_str().unwrap()).collect();
    assert_eq!(languages, ["fr", "de", "ja"], "the fan-in reads every language, in order");
    assert_eq!(tracks[1]["from"], "[de] captions of v1 (revision 1)");
    // A repeated approval changes nothing and says so.
    let (code, again) = s.signal(&id, "qc_review", json!({"decision": "approve"})).await;
    assert_eq!((code, again["repeated"].as_bool()), (StatusCode::OK, Some(true)), "{again}");
    // A different signal to a step no longer waiting: 409, nothing changed.
    let (code, problem) = s.signal(&id, "qc_review", json!({"decision": "reject"})).await;
    assert_eq!(code, StatusCode::CONFLICT, "{problem}");
    let signals: i64 = sqlx::query_scalar("SELECT count(*) FROM workflow_signals").fetch_one(&pool).await.unwrap();
    assert_eq!(signals, 1);
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn an_edited_caption_file_flows_on_to_translation(pool: PgPool) {
    let s = stack(&pool).await;
    let id = s.submit(json!({"workflow": "video_accessibility", "args": video_args()})).await;
    s.waiting_at(&id, "qc_review", 0).await;
    let edit = json!({"decision": "approve", "data": {"captions": "EDITED by a person"}});
    let (code, _) = s.signal(&id, "qc_review", edit).await;
    assert_eq!(code, StatusCode::OK);
    let done = s.finished(&id).await;
    assert_eq!(done["status"], "succeeded");
    let tracks = step_of(&done, "deliver")["result"]["tracks"].as_array().unwrap().clone();
    for track in tracks {
        let text = track["from"].as_str().unwrap();
        assert!(text.ends_with("EDITED by a person"), "the edit replaces the generated captions: {text}");
    }
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn a_rejection_sends_the_workflow_back_to_captions_with_the_notes_then_review_again(pool: PgPool) {
    let s = stack(&pool).await;
    let id = s.submit(json!({"workflow": "video_accessibility", "args": video_args()})).await;
    let first = s.waiting_at(&id, "qc_review", 0).await;
    let captions_job = job_id(&first, "captions");
    let notes = json!({"decision": "reject", "data": {"notes": "speaker names missing"}});
    let (code, view) = s.signal_with_key(&id, "qc_review", notes.clone(), "review-1").await;
    assert_eq!(code, StatusCode::OK, "{view}");
    let second = s.waiting_at(&id, "qc_review", 1).await;
    let captions = step_of(&second, "captions");
    assert_eq!(captions["result"]["revision"], 2);
    assert_eq!(captions["result"]["captions"], "captions of v1 (revision 2), fixed: speaker names missing");
    assert_eq!(runs_of(&pool, captions_job).await, 2, "captions ran again, as the same step");
    assert_eq!(runs_of(&pool, job_id(&second, "audio_description")).await, 2);
    assert_eq!(step_of(&second, "translate")["counts"], json!({"pending": 3}), "nothing past review ran");
    // The first rejection, sent again with its key, is answered without another round.
    let (code, again) = s.signal_with_key(&id, "qc_review", notes, "review-1").await;
    assert_eq!((code, again["repeated"].as_bool()), (StatusCode::OK, Some(true)));
    let (code, _) = s.signal(&id, "qc_review", json!({"decision": "approve"})).await;
    assert_eq!(code, StatusCode::OK);
    let done = s.finished(&id).await;
    assert_eq!(done["status"], "succeeded");
    let tracks = step_of(&done, "deliver")["result"]["tracks"].as_array().unwrap().clone();
    assert!(tracks[0]["from"].as_str().unwrap().contains("revision 2"), "{}", tracks[0]);
    let sent_by: Vec<(i32, String, String)> =
        sqlx::query_as("SELECT round, decision, sent_by FROM workflow_signals ORDER BY round")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(sent_by, [(0, "reject".into(), "alice".into()), (1, "approve".into(), "alice".into())]);
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn rejections_past_the_rounds_fail_the_review_and_cancel_what_follows(pool: PgPool) {
    let s = stack(&pool).await;
    let id = s.submit(json!({"workflow": "video_accessibility", "args": video_args()})).await;
    for round in 0..=2 {
        s.waiting_at(&id, "qc_review", round).await;
        let (code, _) = s.signal(&id, "qc_review", json!({"decision": "reject", "data": {"notes": round}})).await;
        assert_eq!(code, StatusCode::OK);
    }
    let done = s.finished(&id).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["failure"]["step"], "qc_review");
    assert_eq!(done["failure"]["error"]["kind"], "rejected");
    assert_eq!(step_of(&done, "translate")["counts"], json!({"cancelled": 3}));
    assert_eq!(step_of(&done, "deliver")["status"], "cancelled");
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn a_review_that_does_not_come_in_time_fails_the_step_or_takes_its_default(pool: PgPool) {
    let s = stack(&pool).await;
    // The same pipeline submitted whole as JSON, with a one-second review.
    let strict = serde_json::to_value(video::workflow(1.0, false).spec()).unwrap();
    let mut body = strict.clone();
    body["args"] = video_args();
    let id = s.submit(body).await;
    let done = s.finished(&id).await;
    assert_eq!(done["status"], "failed", "{done}");
    let review = step_of(&done, "qc_review");
    assert_eq!(
        (review["status"].as_str(), review["jobs"][0]["error"]["kind"].as_str()),
        (Some("failed"), Some("timeout"))
    );
    assert_eq!(step_of(&done, "deliver")["status"], "cancelled");

    let mut lenient = serde_json::to_value(video::workflow(1.0, true).spec()).unwrap();
    lenient["args"] = video_args();
    let id = s.submit(lenient).await;
    let done = s.finished(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(step_of(&done, "qc_review")["result"]["by"], "runq (timeout)");
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn a_thousand_videos_fan_in_to_one_continuation_that_runs_once(pool: PgPool) {
    let s = stack(&pool).await;
    let (code, job) = s
        .post(
            "/jobs",
            json!({"function": "index_playlist", "args": {"playlist": "pl", "videos": 1000, "fail_every": 100}}),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    // The orchestrator's id is its workflow's: its status shows the fan-out's progress meanwhile.
    let mut partial = None;
    let done = loop {
        let status = s.get(&format!("/jobs/{id}/status")).await;
        if let Some(link) = status.get("workflow").filter(|w| !w.is_null()) {
            let (finished, total) = (link["finished"].as_i64().unwrap(), link["total"].as_i64().unwrap());
            assert_eq!(total, 1 + 1000 + 1);
            if finished > 1 && finished < total {
                partial.get_or_insert(finished);
            }
            if finished == total {
                break s.get(&format!("/workflows/{id}")).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(partial.is_some(), "the status showed children finished of total while they ran");
    let summary = step_of(&done, "playlist_summary");
    assert_eq!(summary["status"], "succeeded");
    let result = &summary["result"];
    assert_eq!(
        (result["videos"].as_u64(), result["succeeded"].as_u64(), result["failed"].as_u64()),
        (Some(1000), Some(990), Some(10))
    );
    assert_eq!(result["inline"]["paged"], true, "1,000 results are a summary, not inline");
    assert_eq!(result["inline"]["total"], 1000);
    assert_eq!(runs_of(&pool, job_id(&done, "playlist_summary")).await, 1, "the continuation ran exactly once");
    assert_eq!(step_of(&done, "index_video")["counts"], json!({"succeeded": 990, "failed": 10}));
    // A failed child didn't stop its siblings, and the workflow ends as its steps do.
    assert_eq!(done["status"], "succeeded");
    // The parents page through the API too.
    let page = s.get(&format!("/jobs/{}/parents?limit=500", job_id(&done, "playlist_summary"))).await;
    assert_eq!(page["parents"].as_array().unwrap().len(), 500);
    let after = page["next_after"].as_str().unwrap();
    let rest = s.get(&format!("/jobs/{}/parents?limit=500&after={after}", job_id(&done, "playlist_summary"))).await;
    assert_eq!(rest["parents"].as_array().unwrap().len(), 500);
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn a_failed_step_fails_the_workflow_cancels_the_rest_and_runs_its_cleanup(pool: PgPool) {
    let s = stack(&pool).await;
    let id = s
        .submit(json!({"steps": [
            {"name": "a", "function": "fail", "args": {"retryable": false}, "max_attempts": 1},
            {"name": "b", "function": "noop", "after": ["a"]},
            {"name": "c", "function": "noop", "after": ["b"]},
            {"name": "cleanup", "function": "echo", "args": {"value": "tidied"}, "after": ["a"], "run_on_failure": true},
        ]}))
        .await;
    let done = s.finished(&id).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["failure"]["step"], "a");
    for step in ["b", "c"] {
        assert_eq!(step_of(&done, step)["status"], "cancelled");
        assert_eq!(runs_of(&pool, job_id(&done, step)).await, 0, "{step} never ran");
    }
    assert_eq!(step_of(&done, "cleanup")["status"], "succeeded");
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn a_failed_workflow_retried_starts_over_from_its_failed_step(pool: PgPool) {
    let s = stack(&pool).await;
    // `a` fails on its first two attempts and has two: the workflow fails. Its retry gives `a`
    // its two attempts again (attempt 3 succeeds), then b and c run; cleanup, which ran, doesn't.
    let id = s
        .submit(json!({"steps": [
            {"name": "a", "function": "fail", "args": {"times": 2}, "max_attempts": 2},
            {"name": "b", "function": "noop", "args": {}, "after": ["a"]},
            {"name": "c", "function": "noop", "args": {}, "after": ["b"]},
            {"name": "cleanup", "function": "echo", "args": {"value": "tidied"}, "after": ["a"], "run_on_failure": true},
        ]}))
        .await;
    let failed = s.finished(&id).await;
    assert_eq!((failed["status"].as_str(), failed["failure"]["step"].as_str()), (Some("failed"), Some("a")));
    // A step's job alone can't be retried (it would run out of order): 409 naming the workflow.
    for step in ["a", "b"] {
        let (code, problem) = s.post(&format!("/jobs/{}/retry", job_id(&failed, step)), json!({})).await;
        assert_eq!(code, StatusCode::CONFLICT, "{problem}");
        assert!(problem["detail"].as_str().unwrap().contains(&format!("/workflows/{id}/retry")), "{problem}");
    }
    assert_eq!(runs_of(&pool, job_id(&failed, "b")).await, 0);
    let (code, view) = s.post(&format!("/workflows/{id}/retry"), json!({})).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{view}");
    assert_eq!(view["status"], "running", "{view}");
    assert!(view["failure"].is_null(), "{view}");
    let done = s.finished(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(runs_of(&pool, job_id(&done, "a")).await, 3, "two runs before the retry, one after");
    for (step, runs) in [("b", 1), ("c", 1), ("cleanup", 1)] {
        assert_eq!(step_of(&done, step)["status"], "succeeded", "{step}");
        assert_eq!(runs_of(&pool, job_id(&done, step)).await, runs, "{step} ran once");
    }
    // Nothing to retry now, and a running workflow can't be retried: 409s that change nothing.
    let (code, _) = s.post(&format!("/workflows/{id}/retry"), json!({})).await;
    assert_eq!(code, StatusCode::CONFLICT);
    let running = s.submit(json!({"workflow": "speech_to_text", "args": {"audio": "a.flac", "pace_ms": 60_000}})).await;
    s.follow(&running, Duration::from_secs(30), |v| step_of(v, "transcribe")["status"] == "running").await;
    let (code, problem) = s.post(&format!("/workflows/{running}/retry"), json!({})).await;
    assert_eq!(code, StatusCode::CONFLICT, "{problem}");
    // Cancelled, then retried: it resumes with the step the cancel stopped.
    s.post(&format!("/workflows/{running}/cancel"), json!({})).await;
    assert_eq!(s.finished(&running).await["status"], "cancelled");
    let (code, _) = s.post(&format!("/workflows/{running}/retry"), json!({})).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    s.follow(&running, Duration::from_secs(30), |v| step_of(v, "transcribe")["status"] == "running").await;
    let (code, _) = s.post(&format!("/workflows/{}/retry", Uuid::now_v7()), json!({})).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn cancelling_a_workflow_stops_its_running_step_and_everything_after(pool: PgPool) {
    // A 90 s lease: the worker heartbeats every 30 s, so only the cancel notification
    // (`runq_cancel`) can stop the running step within the 5 s this test waits.
    let mut o = options(&pool);
    o.lease = Duration::from_secs(90);
    let s = stack_with(o).await;
    let id = s.submit(json!({"workflow": "speech_to_text", "args": {"audio": "a.flac", "pace_ms": 60_000}})).await;
    s.follow(&id, Duration::from_secs(30), |v| step_of(v, "transcribe")["status"] == "running").await;
    let asked = Instant::now();
    let (code, view) = s.post(&format!("/workflows/{id}/cancel"), json!({})).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{view}");
    let finished = |v: &Value| ["succeeded", "failed", "cancelled"].contains(&v["status"].as_str().unwrap());
    let done = s.follow(&id, Duration::from_secs(5), finished).await.pop().unwrap();
    println!("running step cancelled {:?} after the request", asked.elapsed());
    assert_eq!(done["status"], "cancelled", "{done}");
    for step in ["transcribe", "summarize", "index"] {
        assert_eq!(step_of(&done, step)["status"], "cancelled", "{step}");
    }
    assert_eq!(runs_of(&pool, job_id(&done, "summarize")).await, 0);
    let outcome: Option<String> = sqlx::query_scalar("SELECT outcome FROM job_runs WHERE job_id = $1")
        .bind(job_id(&done, "transcribe"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(outcome.as_deref(), Some("cancelled"), "the run itself stopped and recorded the cancel");
    let (code, _) = s.post(&format!("/workflows/{id}/cancel"), json!({})).await;
    assert_eq!(code, StatusCode::OK, "cancelling a cancelled workflow again is fine");
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn a_review_without_a_timeout_is_listed_like_any_job(pool: PgPool) {
    // It waits "forever": a timestamp every client decodes (9999-12-31), not Postgres' infinity.
    let s = stack(&pool).await;
    let id = s
        .submit(json!({"steps": [
            {"name": "draft", "function": "echo", "args": {"value": 1}},
            {"name": "review", "after": ["draft"], "signal": {}},
        ]}))
        .await;
    let view = s.waiting_at(&id, "review", 0).await;
    let review = job_id(&view, "review");
    let listed = s.get("/jobs?status=waiting").await;
    assert_eq!(listed["jobs"][0]["id"], review.to_string(), "{listed}");
    assert!(listed["jobs"][0]["run_after"].as_str().unwrap().starts_with("9999-12-31"), "{listed}");
    assert_eq!(s.get(&format!("/jobs/{review}")).await["status"], "waiting");
    let (code, _) = s.signal(&id, "review", json!({"decision": "approve"})).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(s.finished(&id).await["status"], "succeeded");
    s.dev.shutdown().await;
}

async fn counts(pool: &PgPool) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM workflows), (SELECT count(*) FROM workflow_edges)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn bad_workflows_get_a_clear_422_and_write_nothing(pool: PgPool) {
    let s = stack(&pool).await;
    let cases = [
        (
            json!({"steps": [{"name": "a", "function": "noop", "after": ["b"]}, {"name": "b", "function": "noop", "after": ["a"]}]}),
            "cycle",
        ),
        (json!({"steps": [{"name": "a", "function": "noop", "after": ["ghost"]}]}), "`ghost`, which is not a step"),
        (json!({"steps": [{"name": "a", "function": "transmogrify"}]}), "unknown function `transmogrify`"),
        (json!({"steps": [{"name": "a", "function": "noop"}, {"name": "a", "function": "echo"}]}), "declared twice"),
        (json!({"steps": [{"name": "a", "function": "echo", "args": {"value": 1, "extra": 2}}]}), "invalid args"),
        (
            json!({"steps": [{"name": "t", "function": "echo", "args": {"value": 1}, "for_each": "languages"}], "args": {}}),
            "languages",
        ),
        (json!({"workflow": "no_such_template"}), "unknown workflow"),
        (json!({"steps": [{"name": "r", "signal": {"on_reject": {"back_to": "r", "max_rounds": 1}}}]}), "back_to"),
    ];
    for (body, expect) in cases {
        let (code, problem) = s.post("/workflows", body.clone()).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(expect), "{body}: {detail:?} should say {expect:?}");
    }
    assert_eq!(counts(&pool).await, (0, 0, 0), "nothing was written");
    // Signals: to a step that runs a function, 422; to a signal step that doesn't wait yet, 409.
    let id = s
        .submit(json!({"steps": [
            {"name": "work", "function": "sleep", "args": {"seconds": 30}},
            {"name": "approve", "signal": {}, "after": ["work"]},
        ]}))
        .await;
    let (code, problem) = s.signal(&id, "work", json!({"decision": "approve"})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let (code, problem) = s.signal(&id, "approve", json!({"decision": "approve"})).await;
    assert_eq!(code, StatusCode::CONFLICT, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("pending"), "{problem}");
    let (code, _) = s.signal(&id, "approve", json!({"decision": "maybe"})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    let (code, _) = s.signal(&id, "nope", json!({"decision": "approve"})).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let signals: i64 = sqlx::query_scalar("SELECT count(*) FROM workflow_signals").fetch_one(&pool).await.unwrap();
    assert_eq!(signals, 0);
    // Someone else's workflow is not there for them.
    let bob = runq::auth::mint_hs256(SECRET, "bob", false, Duration::from_secs(60), "scope", "", None, None).unwrap();
    let resp = s.http.get(format!("{}/workflows/{id}", s.dev.api_url)).bearer_auth(bob).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    s.dev.shutdown().await;
}

/// Claims job `id` as a worker would (the store's claim, real SQL).
async fn claim(pool: &PgPool, id: Uuid) -> Option<runq::store::Claimed> {
    runq::store::claim(pool, id, "w", Duration::from_secs(30)).await.unwrap()
}

#[sqlx::test]
async fn two_parents_finishing_at_the_same_instant_make_their_child_runnable_once_in_200_trials(pool: PgPool) {
    let registry = registry();
    let spec: runq::workflow::WorkflowSpec = serde_json::from_value(json!({"steps": [
        {"name": "a", "function": "noop"}, {"name": "b", "function": "noop"},
        {"name": "child", "function": "noop", "after": ["a", "b"]},
    ]}))
    .unwrap();
    for trial in 0..200 {
        let plan = runq::submit::plan_workflow(&registry, "alice", &spec, &json!({})).unwrap();
        let ids: Vec<Uuid> = plan.jobs.iter().map(|j| j.id).collect();
        runq::store::submit_workflow(&pool, "alice", None, &json!({}), &plan, None, None).await.unwrap();
        let (a, b, child) = (ids[0], ids[1], ids[2]);
        let (ca, cb) = (claim(&pool, a).await.unwrap(), claim(&pool, b).await.unwrap());
        assert!(claim(&pool, child).await.is_none(), "a child with parents running is not claimable");
        let raw = serde_json::value::RawValue::from_string("null".into()).unwrap();
        let barrier = tokio::sync::Barrier::new(2);
        let finish = |c: &runq::store::Claimed| {
            let (pool, barrier, raw) = (&pool, &barrier, &raw);
            let (id, claim) = (c.id, c.claim_id);
            async move {
                barrier.wait().await;
                runq::store::succeed(pool, id, claim, runq::store::ResultValue::Inline(raw), None).await.unwrap()
            }
        };
        let (da, db) = tokio::join!(finish(&ca), finish(&cb));
        assert!(da && db, "trial {trial}: both outcomes recorded");
        // Two workers race for the child: one run, exactly.
        let (x, y) = tokio::join!(claim(&pool, child), claim(&pool, child));
        assert!(x.is_some() != y.is_some(), "trial {trial}: the child is claimed exactly once");
        let runs = runs_of(&pool, child).await;
        assert_eq!(runs, 1, "trial {trial}: one execution of the child");
        let (pending, inputs): (i32, Value) =
            sqlx::query_as("SELECT pending_parents, inputs FROM workflow_steps WHERE job_id = $1")
                .bind(child)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(pending, 0);
        assert_eq!(inputs.as_object().unwrap().len(), 2, "trial {trial}: it reads both parents: {inputs}");
    }
}

#[sqlx::test]
async fn a_schedule_fires_a_workflow_once_per_scheduled_time(pool: PgPool) {
    use runq::schedule::{Action, Fired, Schedule, Schedules};
    let registry = std::sync::Arc::new(registry());
    let action = Action::Workflow { workflow: speech::NAME.into(), args: json!({"audio": "gs://nightly/digest.flac"}) };
    let mut schedules = Schedules::builtin();
    schedules.add(Schedule::new("nightly-digest", "0 2 * * *", "Etc/UTC", action).unwrap()).unwrap();
    schedules.check(&registry).expect("the schedule's workflow checks out");
    let runner = runq::schedule::Runner {
        pool: pool.clone(),
        registry: registry.clone(),
        outbox: None,
        dispatcher: None,
        storage: None,
        retention: runq::maintenance::Retention::default(),
        key_retention: Duration::from_secs(3600),
        redispatch_after: Duration::from_secs(60),
        sweep_window: Duration::ZERO,
        sweep_every: Duration::from_millis(10),
    };
    let fire = |at: &str| {
        let (runner, schedules) = (&runner, &schedules);
        let at: chrono::DateTime<chrono::Utc> = at.parse().unwrap();
        async move {
            match runner.fire(schedules.get("nightly-digest").unwrap(), at).await.unwrap() {
                Fired::Workflow { workflow_id, created } => (workflow_id, created),
                other => panic!("{other:?}"),
            }
        }
    };
    let (first, created) = fire("2026-12-03T02:00:00Z").await;
    assert!(created);
    // Cloud Scheduler retries a firing: the same time answers with the same workflow.
    assert_eq!(fire("2026-12-03T02:00:00Z").await, (first, false));
    let (next, created) = fire("2026-12-04T02:00:00Z").await;
    assert!(created && next != first);
    let workflows: i64 = sqlx::query_scalar("SELECT count(*) FROM workflows").fetch_one(&pool).await.unwrap();
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs").fetch_one(&pool).await.unwrap();
    assert_eq!((workflows, jobs), (2, 6));
    let queued: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'queued'").fetch_one(&pool).await.unwrap();
    assert_eq!(queued, 2, "each firing's first step is queued, the relay publishes it");
    // A schedule naming a workflow that isn't declared stops the start.
    let mut bad = Schedules::builtin();
    let ghost = Action::Workflow { workflow: "ghost".into(), args: json!({}) };
    bad.add(Schedule::new("ghostly", "0 2 * * *", "Etc/UTC", ghost).unwrap()).unwrap();
    assert!(bad.check(&registry).unwrap_err().to_string().contains("unknown workflow `ghost`"));
}

#[sqlx::test]
async fn a_repeated_submit_with_its_idempotency_key_answers_with_the_first_workflow(pool: PgPool) {
    let s = stack(&pool).await;
    let body = json!({"workflow": "speech_to_text", "args": {"audio": "a.flac"}});
    let send = || async {
        let resp = s
            .http
            .post(format!("{}/workflows", s.dev.api_url))
            .bearer_auth(&s.token)
            .header("Idempotency-Key", "upload-7")
            .json(&body)
            .send()
            .await
            .unwrap();
        let code = resp.status();
        (code, resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned())
    };
    let (code, first) = send().await;
    assert_eq!(code, StatusCode::ACCEPTED);
    let (code, again) = send().await;
    assert_eq!((code, again), (StatusCode::OK, first));
    let workflows: i64 = sqlx::query_scalar("SELECT count(*) FROM workflows").fetch_one(&pool).await.unwrap();
    assert_eq!(workflows, 1);
    s.dev.shutdown().await;
}

/// Headless Chromium (with `RUNQ_TEST_CHROMIUM`, as the dashboard's other browser tests): a
/// workflow waiting for review shows its steps in order and the review's approve and reject
/// controls; the workflow list shows it.
#[sqlx::test]
async fn chromium_shows_a_workflow_as_its_steps_with_the_review_controls(pool: PgPool) {
    let Ok(browser) = std::env::var("RUNQ_TEST_CHROMIUM") else {
        eprintln!("skipped: set RUNQ_TEST_CHROMIUM to run it");
        return;
    };
    let browser = if browser == "1" { "chromium".to_owned() } else { browser };
    let out = std::env::var("RUNQ_TEST_CHROMIUM_OUT").map_or_else(|_| std::env::temp_dir(), std::path::PathBuf::from);
    let s = stack(&pool).await;
    let id = s.submit(json!({"workflow": "video_accessibility", "args": video_args()})).await;
    s.waiting_at(&id, "qc_review", 0).await;
    let (base, token) = (s.dev.api_url.clone(), s.token.clone());
    let fragment = format!("workflow/{id}&token={token}");
    let overview = format!("token={token}");
    let (dom, list) = tokio::task::spawn_blocking(move || {
        let dom = crate::dashboard::screenshot(&browser, &out.join("runq-dashboard-workflow.png"), &base, &fragment);
        let list = crate::dashboard::screenshot(&browser, &out.join("runq-dashboard-workflows.png"), &base, &overview);
        (dom, list)
    })
    .await
    .unwrap();
    let at = |needle: &str| dom.find(needle).unwrap_or_else(|| panic!("{needle} not in the page: {dom}"));
    assert!(
        at(">ingest<") < at(">captions<") && at(">captions<") < at("qc_review") && at("qc_review") < at(">deliver<")
    );
    assert!(dom.contains("Approve") && dom.contains("Reject"), "the waiting review has its controls");
    assert!(dom.contains(r#"id="wf-retry" type="button" disabled"#), "a waiting workflow can't be retried: {dom}");
    assert!(!dom.contains(r#"id="wf-cancel" type="button" class="danger" disabled"#), "but can be cancelled");
    assert!(dom.contains("3: pending 3"), "the fan-out shows its members: {dom}");
    assert!(list.contains(&id) && list.contains("video_accessibility"), "the list shows the workflow");
    s.dev.shutdown().await;
}
