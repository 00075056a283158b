//! Unique jobs and debounce over the real API and Postgres: one live job per owner and
//! `unique_key` under concurrent submits, the key freed when its job finishes, debounced submits
//! replacing the queued job's args and pushing it back, and one follow-up while the job runs.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::common::{TestApi, counts, start_api, token};

async fn submit(api: &TestApi, who: &str, body: Value) -> (StatusCode, Value) {
    let resp = api.http.post(api.url("/jobs")).bearer_auth(token(who)).json(&body).send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

/// `n` submits of `body(i)` at once; their answers in order.
async fn race(api: &TestApi, who: &str, n: usize, body: impl Fn(usize) -> Value) -> Vec<(StatusCode, Value)> {
    futures::future::join_all((0..n).map(|i| submit(api, who, body(i)))).await
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

async fn set_status(pool: &PgPool, id: &str, status: &str) {
    let id: Uuid = id.parse().unwrap();
    sqlx::query("UPDATE jobs SET status = $2, finished_at = now() WHERE id = $1")
        .bind(id)
        .bind(status)
        .execute(pool)
        .await
        .unwrap();
}

/// Exactly one answer created (202), all name the same job, the others say `deduplicated`.
fn one_job(answers: &[(StatusCode, Value)]) -> String {
    let ids: HashSet<&str> = answers.iter().map(|(_, j)| j["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "all answers name one job");
    let created = answers.iter().filter(|(s, _)| *s == StatusCode::ACCEPTED).count();
    assert_eq!(created, 1, "one submit created it");
    for (status, job) in answers.iter().filter(|(s, _)| *s != StatusCode::ACCEPTED) {
        assert_eq!(*status, StatusCode::OK);
        assert_eq!(job["deduplicated"], true, "{job}");
    }
    ids.into_iter().next().unwrap().to_owned()
}

#[sqlx::test]
async fn one_live_job_per_owner_and_key(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let body = |i: usize| json!({"function": "echo", "args": {"value": i}, "unique_key": "report:42"});
    let answers = race(&api, "alice", 50, body).await;
    let first = one_job(&answers);
    assert_eq!(counts(&pool).await, (1, 0));
    let created = answers.iter().find(|(s, _)| *s == StatusCode::ACCEPTED).unwrap();
    assert!(created.1.get("deduplicated").is_none(), "a created job isn't marked");
    assert_eq!(created.1["unique_key"], "report:42");

    // Another owner's key is another key.
    let (status, bobs) = submit(&api, "bob", body(0)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_ne!(bobs["id"].as_str().unwrap(), first);

    // Running and retrying still hold the key.
    for live in ["running", "retrying"] {
        sqlx::query("UPDATE jobs SET status = $2 WHERE id = $1")
            .bind(first.parse::<Uuid>().unwrap())
            .bind(live)
            .execute(&pool)
            .await
            .unwrap();
        let (status, job) = submit(&api, "alice", body(1)).await;
        assert_eq!((status, job["id"].as_str().unwrap()), (StatusCode::OK, first.as_str()), "{live}");
    }
    assert_eq!(counts(&pool).await, (2, 0));

    // Once it finished, the key is free: a new job, then that one is the key's.
    set_status(&pool, &first, "succeeded").await;
    let answers = race(&api, "alice", 10, body).await;
    let second = one_job(&answers);
    assert_ne!(second, first);
    assert_eq!(counts(&pool).await, (3, 0));

    // A manual retry of a finished keyed job gives up the key (it could collide with a live one).
    set_status(&pool, &first, "failed").await;
    let resp =
        api.http.post(api.url(&format!("/jobs/{first}/retry"))).bearer_auth(token("alice")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let key: Option<String> = sqlx::query_scalar("SELECT unique_key FROM jobs WHERE id = $1")
        .bind(first.parse::<Uuid>().unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(key, None);
    let detail: Value = api
        .http
        .get(api.url(&format!("/jobs/{first}")))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail["unique_key"], Value::Null);
    let (status, job) = submit(&api, "alice", body(2)).await;
    assert_eq!((status, job["id"].as_str().unwrap()), (StatusCode::OK, second.as_str()));
}

#[sqlx::test]
async fn idempotency_replay_wins_over_the_unique_key(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let send = |key: &'static str, value: i32| {
        api.http
            .post(api.url("/jobs"))
            .bearer_auth(token("alice"))
            .header("idempotency-key", key)
            .json(&json!({"function": "echo", "args": {"value": value}, "unique_key": "u"}))
            .send()
    };
    let first: Value = send("i-1", 1).await.unwrap().json().await.unwrap();
    // A new idempotency key, the same unique key: deduplicated to the live job, and the new
    // idempotency key's replays answer with that job too.
    let second = send("i-2", 2).await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    let second: Value = second.json().await.unwrap();
    assert_eq!((second["id"].clone(), second["deduplicated"].clone()), (first["id"].clone(), json!(true)));
    set_status(&pool, first["id"].as_str().unwrap(), "succeeded").await;
    let replay = send("i-2", 2).await.unwrap();
    assert_eq!(replay.status(), StatusCode::OK);
    let replay: Value = replay.json().await.unwrap();
    assert_eq!(replay["id"], first["id"], "the replay answers as the first time, though the key is free now");
    assert_eq!(counts(&pool).await, (1, 2));
}

#[sqlx::test]
async fn bad_unique_and_debounce_input_is_refused_writing_nothing(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let long = "k".repeat(256);
    let cases = [
        (json!({"function": "noop", "unique_key": ""}), "unique_key"),
        (json!({"function": "noop", "unique_key": long}), "unique_key"),
        (json!({"function": "noop", "unique_key": "a b"}), "unique_key"),
        (json!({"function": "noop", "unique_key": "a\u{0}b"}), "unique_key"),
        (json!({"function": "noop", "unique_key": "clé"}), "unique_key"),
        (json!({"function": "noop", "unique_key": 5}), "body"),
        (json!({"function": "noop", "debounce_seconds": 5}), "debounce_seconds"),
        (json!({"function": "noop", "unique_key": "k", "debounce_seconds": 0}), "debounce_seconds"),
        (json!({"function": "noop", "unique_key": "k", "debounce_seconds": -1}), "debounce_seconds"),
        (json!({"function": "noop", "unique_key": "k", "debounce_seconds": 2592001}), "debounce_seconds"),
        (json!({"function": "noop", "unique_key": "k", "debounce_seconds": 5, "delay_seconds": 5}), "debounce_seconds"),
    ];
    for (body, field) in cases {
        let resp = api.http.post(api.url("/jobs")).bearer_auth(token("alice")).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let problem: Value = resp.json().await.unwrap();
        assert!(problem.to_string().contains(field), "{body}: {problem}");
    }
    let batch = json!({"jobs": [{"function": "noop"}, {"function": "noop", "unique_key": "k"}]});
    let resp = api.http.post(api.url("/jobs:batch")).bearer_auth(token("alice")).json(&batch).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(counts(&pool).await, (0, 0));
}

/// The key's jobs as stored: (id, status, slot, args, run_after - updated_at in seconds,
/// dispatched).
async fn keyed(pool: &PgPool, key: &str) -> Vec<(Uuid, String, i16, Value, f64, bool)> {
    sqlx::query_as(
        "SELECT id, status, unique_slot, args, extract(epoch FROM run_after - updated_at)::float8,
                dispatched_at IS NOT NULL
         FROM jobs WHERE unique_key = $1 ORDER BY created_at",
    )
    .bind(key)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn concurrent_debounced_submits_leave_one_job_with_the_last_args(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let body = |i: usize| json!({"function": "echo", "args": {"value": i}, "unique_key": "d", "debounce_seconds": 60});
    let answers = race(&api, "alice", 50, body).await;
    let id = one_job(&answers);
    assert_eq!(counts(&pool).await, (1, 0));
    // The last committed update has the latest updated_at (each takes clock_timestamp() once it
    // holds the row); its args are the job's, and the job is due 60 s after it.
    let last = answers.iter().max_by_key(|(_, j)| time(&j["updated_at"])).unwrap();
    let rows = keyed(&pool, "d").await;
    assert_eq!(rows.len(), 1);
    let (_, status, slot, args, due_in, _) = &rows[0];
    assert_eq!((status.as_str(), *slot), ("queued", 0));
    assert_eq!(args, &last.1["args"]);
    assert!((due_in - 60.0).abs() < 0.5, "due 60 s after the last submit: {due_in}");
    let run_after: DateTime<Utc> = sqlx::query_scalar("SELECT run_after FROM jobs WHERE id = $1")
        .bind(id.parse::<Uuid>().unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
    for (_, job) in &answers {
        assert!(run_after >= time(&job["updated_at"]) + chrono::Duration::seconds(59), "after every submit");
    }

    // A message published before the push-back finds the job not due: no claim, and the job is
    // undispatched again, so the relay publishes it when it is due.
    let uuid: Uuid = id.parse().unwrap();
    sqlx::query("UPDATE jobs SET dispatched_at = now() WHERE id = $1").bind(uuid).execute(&pool).await.unwrap();
    let (status, job) = submit(&api, "alice", body(99)).await;
    assert_eq!((status, job["args"].clone()), (StatusCode::OK, json!({"value": 99})));
    assert!(!keyed(&pool, "d").await[0].5, "undispatched after the push-back");
    assert!(runq::store::claim(&pool, uuid, "w", Duration::from_secs(30)).await.unwrap().is_none());
    sqlx::query("UPDATE jobs SET run_after = now() WHERE id = $1").bind(uuid).execute(&pool).await.unwrap();
    let claimed = runq::store::claim(&pool, uuid, "w", Duration::from_secs(30)).await.unwrap().unwrap();
    assert_eq!(claimed.args.get(), r#"{"value": 99}"#);
}

#[sqlx::test]
async fn debounce_while_running_queues_one_follow_up(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let body = |i: usize| json!({"function": "echo", "args": {"value": i}, "unique_key": "r", "debounce_seconds": 30});
    let (status, first) = submit(&api, "alice", body(0)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let first: Uuid = first["id"].as_str().unwrap().parse().unwrap();
    sqlx::query("UPDATE jobs SET run_after = now() WHERE id = $1").bind(first).execute(&pool).await.unwrap();
    let claimed = runq::store::claim(&pool, first, "w", Duration::from_secs(60)).await.unwrap().unwrap();

    let answers = race(&api, "alice", 50, |i| body(i + 1)).await;
    let follow_up = one_job(&answers);
    let last = answers.iter().max_by_key(|(_, j)| time(&j["updated_at"])).unwrap();
    let rows = keyed(&pool, "r").await;
    assert_eq!(rows.len(), 2, "the running job and one follow-up");
    assert_eq!((rows[0].0, rows[0].1.as_str(), rows[0].3.clone()), (first, "running", json!({"value": 0})));
    assert_eq!((rows[1].0.to_string(), rows[1].1.as_str(), rows[1].2), (follow_up.clone(), "queued", 1));
    assert_eq!(rows[1].3, last.1["args"]);

    // The running job finishes; the follow-up is still the one later submits push back.
    let _ = claimed;
    set_status(&pool, &first.to_string(), "succeeded").await;
    let (status, job) = submit(&api, "alice", body(100)).await;
    assert_eq!((status, job["id"].as_str().unwrap()), (StatusCode::OK, follow_up.as_str()));
    assert_eq!(job["args"], json!({"value": 100}));
    assert_eq!(keyed(&pool, "r").await.len(), 2);

    // A plain unique submit of the key answers with the follow-up too (slot 0 is free now).
    let (status, job) =
        submit(&api, "alice", json!({"function": "echo", "args": {"value": 1}, "unique_key": "r"})).await;
    assert_eq!((status, job["id"].as_str().unwrap()), (StatusCode::OK, follow_up.as_str()));
    assert_eq!(keyed(&pool, "r").await.len(), 2);
}
