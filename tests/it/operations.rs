//! Manual retry (`POST /jobs/{id}/retry`) and bulk operations (`POST /operations`,
//! `GET /operations/{id}`): real API over a socket, real Postgres, no sleeps but polls with a
//! deadline.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use runq::job::Status;
use runq::maintenance::operations::{self, Action, Filter, NewOperation};

use crate::common::{TestApi, admin_token, start_api, token};

/// Inserts `n` jobs of `owner` in `status` (finished ones failed with `kind`), as a run would
/// have left them. Returns their ids.
async fn seed(pool: &PgPool, owner: &str, function: &str, status: &str, n: i64, kind: Option<&str>) -> Vec<Uuid> {
    let finished = matches!(status, "succeeded" | "failed" | "cancelled");
    let attempts = if finished { 3 } else { 0 };
    let error = kind.map(|k| json!({"kind": k, "message": "boom", "retryable": true}));
    sqlx::query_scalar(
        "INSERT INTO jobs (id, owner, function, priority, args, status, attempt, max_attempts, error, finished_at,
                           cancel_requested)
         SELECT gen_random_uuid(), $1, $2, 'medium', '{}', $3, $4, 3, $5,
                CASE WHEN $6 THEN now() END, $3 = 'cancelled'
         FROM generate_series(1, $7) RETURNING id",
    )
    .bind(owner)
    .bind(function)
    .bind(status)
    .bind(attempts)
    .bind(error)
    .bind(finished)
    .bind(n)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn status_of(pool: &PgPool, id: Uuid) -> (String, i32, i32, i32) {
    sqlx::query_as("SELECT status, attempt, max_attempts, manual_retries FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn retry(api: &TestApi, bearer: &str, id: impl std::fmt::Display) -> reqwest::Response {
    api.http.post(api.url(&format!("/jobs/{id}/retry"))).bearer_auth(bearer).send().await.unwrap()
}

async fn start(api: &TestApi, bearer: &str, body: Value) -> reqwest::Response {
    api.http.post(api.url("/operations")).bearer_auth(bearer).json(&body).send().await.unwrap()
}

async fn dry_count(api: &TestApi, bearer: &str, action: &str, filter: Value) -> i64 {
    let resp = start(api, bearer, json!({"action": action, "filter": filter, "dry_run": true})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    body["count"].as_i64().unwrap()
}

/// Starts a real operation and follows it to its end; returns the finished operation.
async fn run_op(api: &TestApi, bearer: &str, action: &str, filter: Value) -> Value {
    let resp = start(api, bearer, json!({"action": action, "filter": filter})).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let op: Value = resp.json().await.unwrap();
    follow(api, bearer, op["id"].as_str().unwrap()).await
}

async fn follow(api: &TestApi, bearer: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let op: Value = api
            .http
            .get(api.url(&format!("/operations/{id}")))
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if op["status"] != "running" {
            return op;
        }
        assert!(Instant::now() < deadline, "operation {id} still running: {op}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn operations_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM operations").fetch_one(pool).await.unwrap()
}

#[sqlx::test]
async fn retry_gives_a_fresh_budget_keeps_history_and_runs_to_success(pool: PgPool) {
    let s = crate::e2e::stack(&pool).await;
    // Fails its two attempts; the retry's first run (attempt 3) succeeds.
    let job = s.submit(json!({"function": "fail", "args": {"message": "flaky", "times": 2}, "max_attempts": 2})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    let failed = s.finished(&id).await;
    assert_eq!((failed["status"].as_str(), failed["attempt"].as_i64()), (Some("failed"), Some(2)));

    let resp = s.http.post(format!("{}/jobs/{id}/retry", s.dev.api_url)).bearer_auth(&s.token).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let queued: Value = resp.json().await.unwrap();
    assert_eq!(queued["status"], "queued");
    assert_eq!((queued["attempt"].as_i64(), queued["max_attempts"].as_i64()), (Some(2), Some(4)));
    assert_eq!(queued["error"], Value::Null);
    assert_eq!(queued["finished_at"], Value::Null);

    let done = s.finished(&id).await;
    assert_eq!((done["status"].as_str(), done["attempt"].as_i64()), (Some("succeeded"), Some(3)));
    assert_eq!(done["result"], json!({"succeeded_on_attempt": 3}));
    let runs: Vec<(i32, String)> =
        sqlx::query_as("SELECT attempt, outcome FROM job_runs WHERE job_id = $1::uuid ORDER BY started_at")
            .bind(&id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        runs.iter().map(|(a, o)| (*a, o.as_str())).collect::<Vec<_>>(),
        vec![(1, "retrying"), (2, "failed"), (3, "succeeded")],
        "the old runs are kept and the new one is numbered after them"
    );
    // A succeeded job can't be retried.
    let resp = s.http.post(format!("{}/jobs/{id}/retry", s.dev.api_url)).bearer_auth(&s.token).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn retry_answers_409_404_and_lets_admins_retry_anyones(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let failed = seed(&pool, "alice", "noop", "failed", 1, Some("error")).await[0];
    let queued = seed(&pool, "alice", "noop", "queued", 1, None).await[0];
    let cancelled = seed(&pool, "alice", "noop", "cancelled", 1, Some("cancelled")).await[0];

    for status in ["queued", "running", "retrying", "succeeded"] {
        sqlx::query("UPDATE jobs SET status = $2 WHERE id = $1")
            .bind(queued)
            .bind(status)
            .execute(&pool)
            .await
            .unwrap();
        let before = status_of(&pool, queued).await;
        let resp = retry(&api, &token("alice"), queued).await;
        assert_eq!(resp.status(), StatusCode::CONFLICT, "{status}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        assert_eq!(status_of(&pool, queued).await, before, "a refused retry changes nothing");
    }
    // Someone else's job, an unknown one: 404; a bad id: 422.
    assert_eq!(retry(&api, &token("bob"), failed).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(status_of(&pool, failed).await, ("failed".into(), 3, 3, 0));
    assert_eq!(retry(&api, &token("alice"), Uuid::now_v7()).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(retry(&api, &token("alice"), "nope").await.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // The owner retries; then again after it fails again: budget 3 each time.
    let resp = retry(&api, &token("alice"), failed).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(status_of(&pool, failed).await, ("queued".into(), 3, 6, 1));
    let dispatched: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT dispatched_at FROM jobs WHERE id = $1").bind(failed).fetch_one(&pool).await.unwrap();
    assert!(dispatched.is_none(), "queued again undispatched, for the relay");
    assert_eq!(retry(&api, &token("alice"), failed).await.status(), StatusCode::CONFLICT, "already queued");
    sqlx::query("UPDATE jobs SET status = 'failed', attempt = 6 WHERE id = $1")
        .bind(failed)
        .execute(&pool)
        .await
        .unwrap();
    // An admin retries anyone's; a cancelled job loses its cancel request.
    assert_eq!(retry(&api, &admin_token("root"), failed).await.status(), StatusCode::OK);
    assert_eq!(status_of(&pool, failed).await, ("queued".into(), 6, 9, 2));
    let resp = retry(&api, &admin_token("root"), cancelled).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let job: Value = resp.json().await.unwrap();
    assert_eq!((job["status"].as_str(), job["cancel_requested"].as_bool()), (Some("queued"), Some(false)));
}

#[sqlx::test]
async fn bad_bulk_requests_are_422_and_write_nothing(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    seed(&pool, "alice", "noop", "failed", 3, Some("error")).await;
    let alice = token("alice");
    for (body, field) in [
        (json!({"action": "explode"}), "action"),
        (json!({"action": "retry", "filter": {"colour": "red"}}), "body"),
        (json!({"action": "retry", "extra": 1}), "body"),
        (json!({"action": "retry", "filter": {"status": "bogus"}}), "filter.status"),
        (json!({"action": "retry", "filter": {"status": "succeeded"}}), "filter.status"),
        (json!({"action": "cancel", "filter": {"status": "failed"}}), "filter.status"),
        (json!({"action": "delete", "filter": {"status": "running"}}), "filter.status"),
        (json!({"action": "retry", "filter": {"error_kind": "oops"}}), "filter.error_kind"),
        (json!({"action": "retry", "filter": {"created_after": "yesterday"}}), "filter.created_after"),
        (json!({"action": "retry", "filter": {"created_before": "99999-01-01T00:00:00Z"}}), "filter.created_before"),
        (
            json!({"action": "retry", "filter": {"created_after": "2026-02-01T00:00:00Z", "created_before": "2026-01-01T00:00:00Z"}}),
            "filter.created_after",
        ),
        (json!({"action": "retry", "filter": {"function": "a\u{0}b"}}), "filter.function"),
        (json!({"action": "delete"}), "filter"),
        (json!({"action": "delete", "filter": {}}), "filter"),
        (json!({"action": "retry", "dry_run": "yes"}), "body"),
    ] {
        let resp = start(&api, &alice, body.clone()).await;
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }
    let resp = start(&api, &alice, json!({"action": "retry", "filter": {"owner": "bob"}})).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = api
        .http
        .post(api.url("/operations"))
        .bearer_auth(&alice)
        .body("{")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = api.http.get(api.url("/operations/not-a-uuid")).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let resp =
        api.http.get(api.url(&format!("/operations/{}", Uuid::now_v7()))).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(operations_count(&pool).await, 0);
    let untouched: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'failed' AND manual_retries = 0")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(untouched, 3);
}

#[sqlx::test]
async fn a_dry_run_counts_what_the_real_run_affects(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    seed(&pool, "alice", "noop", "failed", 7, Some("timeout")).await;
    seed(&pool, "alice", "noop", "failed", 5, Some("error")).await;
    seed(&pool, "alice", "sleep", "failed", 4, Some("timeout")).await;
    seed(&pool, "alice", "noop", "cancelled", 3, Some("cancelled")).await;
    seed(&pool, "alice", "noop", "succeeded", 6, None).await;
    seed(&pool, "bob", "noop", "failed", 9, Some("timeout")).await;
    let alice = token("alice");
    let filter = json!({"function": "noop", "error_kind": "timeout"});
    assert_eq!(dry_count(&api, &alice, "retry", filter.clone()).await, 7);
    assert_eq!(dry_count(&api, &admin_token("root"), "retry", filter.clone()).await, 16, "an admin counts everyone's");
    assert_eq!(dry_count(&api, &alice, "retry", json!({})).await, 19);
    assert_eq!(dry_count(&api, &alice, "retry", json!({"status": "cancelled"})).await, 3);
    assert_eq!(dry_count(&api, &alice, "delete", json!({"function": "noop"})).await, 21);
    assert_eq!(dry_count(&api, &alice, "retry", json!({"created_after": "2100-01-01T00:00:00Z"})).await, 0);
    assert_eq!(dry_count(&api, &alice, "retry", json!({"created_before": "2100-01-01T00:00:00+02:00"})).await, 19);
    assert_eq!(operations_count(&pool).await, 0, "a dry run records nothing");
    let retried: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE manual_retries > 0").fetch_one(&pool).await.unwrap();
    assert_eq!(retried, 0, "a dry run changes nothing");

    let op = run_op(&api, &alice, "retry", filter).await;
    assert_eq!(op["status"], "finished", "{op}");
    assert_eq!((op["matched"].as_i64(), op["done"].as_i64(), op["affected"].as_i64()), (Some(7), Some(7), Some(7)));
    let retried: Vec<(String, String)> =
        sqlx::query_as("SELECT owner, function FROM jobs WHERE manual_retries = 1 AND status = 'queued'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(retried.len(), 7);
    assert!(retried.iter().all(|(o, f)| o == "alice" && f == "noop"));
}

#[sqlx::test]
async fn bulk_retry_of_ten_thousand_failed_jobs_retries_each_once(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    seed(&pool, "alice", "noop", "failed", 10_000, Some("error")).await;
    seed(&pool, "alice", "noop", "succeeded", 5, None).await;
    let bobs = seed(&pool, "bob", "noop", "failed", 5, Some("error")).await;
    let alice = token("alice");

    let asked = Instant::now();
    let resp = start(&api, &alice, json!({"action": "retry", "filter": {"status": "failed"}})).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let op: Value = resp.json().await.unwrap();
    let answered = asked.elapsed();
    assert_eq!(location, format!("/operations/{}", op["id"].as_str().unwrap()));
    // The answer comes before the work: it is running, nothing done yet.
    assert_eq!((op["status"].as_str(), op["done"].as_i64()), (Some("running"), Some(0)));
    assert_eq!(op["action"], "retry");
    assert_eq!(op["filter"], json!({"status": "failed"}));

    let op = follow(&api, &alice, op["id"].as_str().unwrap()).await;
    assert_eq!(op["status"], "finished", "{op}");
    assert_eq!(
        (op["matched"].as_i64(), op["done"].as_i64(), op["affected"].as_i64()),
        (Some(10_000), Some(10_000), Some(10_000))
    );
    assert!(op["finished_at"].is_string());
    let (once, more, queued): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE manual_retries = 1), count(*) FILTER (WHERE manual_retries > 1),
                count(*) FILTER (WHERE status = 'queued' AND dispatched_at IS NULL AND attempt = 3 AND max_attempts = 6)
         FROM jobs WHERE owner = 'alice'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((once, more, queued), (10_000, 0, 10_000));
    for bob in bobs {
        assert_eq!(status_of(&pool, bob).await, ("failed".into(), 3, 3, 0), "another owner's jobs are untouched");
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM operation_jobs").fetch_one(&pool).await.unwrap();
    assert_eq!(left, 0);
    eprintln!("POST /operations answered in {answered:?}");
    // Bob can't see alice's operation.
    let resp = api.http.get(api.url(&location)).bearer_auth(token("bob")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[sqlx::test]
async fn an_interrupted_operation_resumes_and_acts_on_each_job_once(pool: PgPool) {
    seed(&pool, "alice", "noop", "failed", 3_000, Some("error")).await;
    // Queued when the operation starts, failed after it froze its matches: not swept in.
    let late = seed(&pool, "alice", "noop", "queued", 1, None).await[0];
    let filter =
        Filter { owner: Some("alice".into()), statuses: Action::Retry.statuses().to_vec(), ..Filter::default() };
    let new = NewOperation {
        requester: "alice",
        action: Action::Retry,
        filter: &filter,
        shown: json!({}),
        key_retention: Duration::from_secs(60),
    };
    let (op, runner) = operations::create(&pool, &new).await.unwrap();
    assert!(operations::freeze(&pool, op.id, runner).await.unwrap());
    assert!(!operations::freeze(&pool, op.id, runner).await.unwrap(), "frozen once");
    assert_eq!(operations::step(&pool, None, op.id, runner, 1000).await.unwrap(), Some(1000));
    sqlx::query("UPDATE jobs SET status = 'failed', finished_at = now() WHERE id = $1")
        .bind(late)
        .execute(&pool)
        .await
        .unwrap();
    let midway = operations::get(&pool, op.id, None).await.unwrap().unwrap();
    assert_eq!((midway.status.as_str(), midway.matched, midway.done), ("running", Some(3000), 1000));

    // The runner dies here. Until its lease lapses nobody takes over...
    assert_eq!(operations::run_once(&pool, None).await.unwrap(), 0);
    sqlx::query("UPDATE operations SET lease_until = now() - interval '1 second'").execute(&pool).await.unwrap();
    // ...then runq.sweep does, and works it to the end.
    let report = runq::maintenance::sweep_once(&pool, None, None, Duration::from_secs(60)).await.unwrap();
    assert_eq!(report.resumed, 1);
    let done = operations::get(&pool, op.id, Some("alice")).await.unwrap().unwrap();
    assert_eq!((done.status.as_str(), done.matched, done.done, done.affected), ("finished", Some(3000), 3000, 3000));
    // The old runner waking up writes nothing.
    assert_eq!(operations::step(&pool, None, op.id, runner, 1000).await.unwrap(), None);
    let (once, more): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE manual_retries = 1), count(*) FILTER (WHERE manual_retries > 1) FROM jobs",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((once, more), (3000, 0), "every matched job retried exactly once");
    assert_eq!(status_of(&pool, late).await.0, Status::Failed.as_str());
    assert_eq!(status_of(&pool, late).await.3, 0, "a job that failed after the freeze is not retried");
}

#[sqlx::test]
async fn bulk_cancel_and_delete_respect_the_filter_and_owners(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let noops = seed(&pool, "alice", "noop", "queued", 3, None).await;
    let retrying = seed(&pool, "alice", "noop", "retrying", 1, None).await[0];
    let running = seed(&pool, "alice", "noop", "running", 1, None).await[0];
    let sleeps = seed(&pool, "alice", "sleep", "queued", 2, None).await;
    let bobs = seed(&pool, "bob", "noop", "queued", 2, None).await;
    let done = seed(&pool, "alice", "noop", "succeeded", 2, None).await;
    let alice = token("alice");

    assert_eq!(dry_count(&api, &alice, "cancel", json!({"function": "noop"})).await, 5);
    let op = run_op(&api, &alice, "cancel", json!({"function": "noop"})).await;
    assert_eq!((op["status"].as_str(), op["affected"].as_i64()), (Some("finished"), Some(5)));
    for id in noops.iter().chain([&retrying]) {
        assert_eq!(status_of(&pool, *id).await.0, "cancelled");
    }
    let (status, asked): (String, bool) = sqlx::query_as("SELECT status, cancel_requested FROM jobs WHERE id = $1")
        .bind(running)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((status.as_str(), asked), ("running", true), "a running job is asked to stop");
    for id in sleeps.iter().chain(&bobs).chain(&done) {
        assert_ne!(status_of(&pool, *id).await.0, "cancelled", "outside the filter or another owner's");
    }

    // Bob deletes his finished noops: he has none, alice's stay.
    let op = run_op(&api, &token("bob"), "delete", json!({"function": "noop"})).await;
    assert_eq!((op["matched"].as_i64(), op["affected"].as_i64()), (Some(0), Some(0)));
    // An admin deletes alice's cancelled jobs.
    let root = admin_token("root");
    assert_eq!(dry_count(&api, &root, "delete", json!({"owner": "alice", "status": "cancelled"})).await, 4);
    let op = run_op(&api, &root, "delete", json!({"owner": "alice", "status": "cancelled"})).await;
    assert_eq!((op["status"].as_str(), op["affected"].as_i64()), (Some("finished"), Some(4)));
    let left: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM jobs ORDER BY id").fetch_all(&pool).await.unwrap();
    let mut expected: Vec<Uuid> = [running].into_iter().chain(sleeps).chain(bobs).chain(done).collect();
    expected.sort();
    assert_eq!(left, expected);
    // Alice sees the admin's operation? No: it is the admin's.
    let resp = api
        .http
        .get(api.url(&format!("/operations/{}", op["id"].as_str().unwrap())))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[sqlx::test]
async fn bulk_retried_jobs_are_published_by_the_relay_and_run_again(pool: PgPool) {
    let s = crate::e2e::stack(&pool).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        let job =
            s.submit(json!({"function": "fail", "args": {"message": "once", "times": 1}, "max_attempts": 1})).await;
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        assert_eq!(s.finished(id).await["status"], "failed");
    }
    let resp = s
        .http
        .post(format!("{}/operations", s.dev.api_url))
        .bearer_auth(&s.token)
        .json(&json!({"action": "retry", "filter": {"function": "fail", "error_kind": "error"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    for id in &ids {
        let done = s.wait_until(id, Duration::from_secs(90), |j| j["status"] == "succeeded").await;
        assert_eq!(done["result"], json!({"succeeded_on_attempt": 2}));
    }
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn an_operation_taken_over_too_often_is_given_up_as_failed(pool: PgPool) {
    seed(&pool, "alice", "noop", "failed", 3, Some("error")).await;
    let filter = Filter { owner: None, statuses: vec![Status::Failed], ..Filter::default() };
    let new = NewOperation {
        requester: "root",
        action: Action::Retry,
        filter: &filter,
        shown: json!({"status": "failed"}),
        key_retention: Duration::from_secs(60),
    };
    let (op, _runner) = operations::create(&pool, &new).await.unwrap();
    sqlx::query("UPDATE operations SET claims = $1, lease_until = now() - interval '1 second'")
        .bind(operations::MAX_CLAIMS)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(operations::run_once(&pool, None).await.unwrap(), 0);
    let failed = operations::get(&pool, op.id, None).await.unwrap().unwrap();
    assert_eq!(failed.status, "failed");
    assert!(failed.error.is_some_and(|e| e.contains("takeovers")));
    assert!(operations::get(&pool, op.id, Some("alice")).await.unwrap().is_none(), "root's operation, not alice's");
}

async fn list_ops(api: &TestApi, bearer: &str, query: &str) -> (StatusCode, Value) {
    let resp = api.http.get(api.url(&format!("/operations{query}"))).bearer_auth(bearer).send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

fn ids_of(page: &Value) -> Vec<String> {
    page["operations"].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap().to_owned()).collect()
}

#[sqlx::test]
async fn operations_are_listed_newest_first_per_owner_and_paged(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let (alice, bob, root) = (token("alice"), token("bob"), admin_token("root"));
    let mut alices = Vec::new();
    for function in ["a", "b", "c"] {
        alices.push(
            run_op(&api, &alice, "retry", json!({"function": function})).await["id"].as_str().unwrap().to_owned(),
        );
    }
    let bobs = run_op(&api, &bob, "cancel", json!({})).await["id"].as_str().unwrap().to_owned();
    let newest_first: Vec<String> = alices.iter().rev().cloned().collect();

    // An owner sees their own, newest first, with what each did.
    let (status, page) = list_ops(&api, &alice, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids_of(&page), newest_first);
    assert_eq!(page["next_cursor"], Value::Null);
    let top = &page["operations"][0];
    assert_eq!(
        (top["owner"].as_str(), top["action"].as_str(), top["status"].as_str()),
        (Some("alice"), Some("retry"), Some("finished"))
    );
    assert_eq!(top["filter"], json!({"function": "c"}));
    assert_eq!(ids_of(&list_ops(&api, &bob, "").await.1), vec![bobs.clone()]);
    // An admin sees everyone's.
    let all = ids_of(&list_ops(&api, &root, "").await.1);
    assert_eq!(all, [vec![bobs.clone()], newest_first.clone()].concat());

    // Pages of 2: the cursor continues where the page stopped, the last page has none.
    let (_, first) = list_ops(&api, &alice, "?limit=2").await;
    assert_eq!(ids_of(&first), newest_first[..2]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = list_ops(&api, &alice, &format!("?limit=2&cursor={cursor}")).await;
    assert_eq!(ids_of(&second), newest_first[2..]);
    assert_eq!(second["next_cursor"], Value::Null);

    // Bad paging is a 422; no token is a 401.
    for bad in ["?limit=0", "?limit=201", "?cursor=nope", "?status=running", "?limit=x"] {
        let (status, problem) = list_ops(&api, &alice, bad).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {problem}");
    }
    let anonymous = api.http.get(api.url("/operations")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[sqlx::test]
async fn deleting_one_job_takes_finished_jobs_only_with_their_runs(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let done = seed(&pool, "alice", "noop", "succeeded", 1, None).await[0];
    let queued = seed(&pool, "alice", "noop", "queued", 1, None).await[0];
    let bobs = seed(&pool, "bob", "noop", "failed", 1, Some("error")).await[0];
    sqlx::query(
        "INSERT INTO job_runs (job_id, attempt, claim_id, worker_id, outcome, finished_at)
                 VALUES ($1, 1, gen_random_uuid(), 'w', 'succeeded', now())",
    )
    .bind(done)
    .execute(&pool)
    .await
    .unwrap();
    let delete = |bearer: String, id: String| {
        let req = api.http.delete(api.url(&format!("/jobs/{id}"))).bearer_auth(bearer);
        async move { req.send().await.unwrap().status() }
    };
    let alice = token("alice");
    assert_eq!(delete(alice.clone(), queued.to_string()).await, StatusCode::CONFLICT, "not finished");
    assert_eq!(delete(alice.clone(), bobs.to_string()).await, StatusCode::NOT_FOUND, "another owner's");
    assert_eq!(delete(alice.clone(), "not-a-uuid".into()).await, StatusCode::UNPROCESSABLE_ENTITY);
    let jobs = || sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobs").fetch_one(&pool);
    assert_eq!(jobs().await.unwrap(), 3, "the refusals wrote nothing");
    assert_eq!(delete(alice.clone(), done.to_string()).await, StatusCode::NO_CONTENT);
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM job_runs").fetch_one(&pool).await.unwrap();
    assert_eq!((jobs().await.unwrap(), runs), (2, 0), "the job and its runs are gone");
    assert_eq!(delete(alice, done.to_string()).await, StatusCode::NOT_FOUND, "gone");
    assert_eq!(
        delete(admin_token("root"), bobs.to_string()).await,
        StatusCode::NO_CONTENT,
        "an admin deletes anyone's"
    );
}
