//! Unique jobs and debounce over the real API and Postgres: one live job per owner and
//! `unique_key` under concurrent submits, the key freed when its job finishes, debounced submits
//! replacing the queued job's args and pushing it back, and one follow-up while the job runs;
//! the same keys in `POST /jobs:batch` items (against live jobs and each other), in unique
//! schedules' firings and in `Context::spawn` children.

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
    // In a batch, one bad item refuses the whole batch, naming the item; nothing is written.
    for bad in [
        json!({"unique_key": "a b"}),
        json!({"debounce_seconds": 5}),
        json!({"unique_key": "k", "debounce_seconds": 0}),
    ] {
        let mut item = json!({"function": "noop"});
        item.as_object_mut().unwrap().extend(bad.as_object().unwrap().clone());
        let batch = json!({"jobs": [{"function": "noop", "unique_key": "fine"}, item]});
        let resp = api.http.post(api.url("/jobs:batch")).bearer_auth(token("alice")).json(&batch).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{batch}");
        let problem: Value = resp.json().await.unwrap();
        assert!(problem["detail"].as_str().unwrap().starts_with("jobs[1]: "), "{problem}");
    }
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

async fn batch(api: &TestApi, who: &str, jobs: Value) -> (StatusCode, Value) {
    let body = json!({ "jobs": jobs });
    let resp = api.http.post(api.url("/jobs:batch")).bearer_auth(token(who)).json(&body).send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

fn item_ids(answer: &Value) -> Vec<String> {
    answer["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_owned()).collect()
}

fn deduplicated(answer: &Value) -> Vec<bool> {
    answer["jobs"].as_array().unwrap().iter().map(|j| j["deduplicated"] == true).collect()
}

#[sqlx::test]
async fn batch_items_are_deduplicated_against_live_jobs_and_each_other(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let (status, live) =
        submit(&api, "alice", json!({"function": "echo", "args": {"value": 0}, "unique_key": "old"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let items = json!([
        {"function": "echo", "args": {"value": 1}, "unique_key": "k"},
        {"function": "noop"},
        {"function": "echo", "args": {"value": 2}, "unique_key": "k"},
        {"function": "echo", "args": {"value": 3}, "unique_key": "old"},
        {"function": "noop", "unique_key": "other"},
        {"function": "noop"},
    ]);
    let (status, answer) = batch(&api, "alice", items.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let ids = item_ids(&answer);
    assert_eq!(ids[2], ids[0], "the batch's second `k` item is its first's job");
    assert_eq!(ids[3], live["id"].as_str().unwrap(), "`old` has a live job already");
    assert_eq!(deduplicated(&answer), [false, false, true, true, false, false]);
    assert_eq!(answer["jobs"][0]["args"], json!({"value": 1}), "deduplicated, not debounced: the first args stay");
    assert_eq!(answer["jobs"][0]["unique_key"], "k");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 5);
    assert_eq!(counts(&pool).await, (5, 0), "the live job and four new ones");

    // The same batch again: every keyed item is deduplicated, the plain ones are new.
    let (status, again) = batch(&api, "alice", items.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(deduplicated(&again), [true, false, true, true, true, false]);
    let again_ids = item_ids(&again);
    assert_eq!((&again_ids[0], &again_ids[4]), (&ids[0], &ids[4]));
    assert_eq!(counts(&pool).await, (7, 0));
    // Another owner's keys are other keys.
    let (_, bobs) = batch(&api, "bob", items).await;
    assert_eq!(deduplicated(&bobs), [false, false, true, false, false, false]);

    // Once `k`'s job finished, a batch creates the key's next one.
    set_status(&pool, &ids[0], "succeeded").await;
    let (_, next) = batch(&api, "alice", json!([{"function": "echo", "args": {"value": 4}, "unique_key": "k"}])).await;
    assert_eq!(deduplicated(&next), [false]);
    assert_ne!(item_ids(&next)[0], ids[0]);
}

#[sqlx::test]
async fn fifty_concurrent_batches_with_one_key_create_one_job(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    // Every batch has the shared key and, half of them in the other order, a second shared key:
    // concurrent batches take the keys in one order, so none deadlocks.
    let answers = futures::future::join_all((0..50).map(|i| {
        let a = json!({"function": "echo", "args": {"value": i}, "unique_key": "shared"});
        let b = json!({"function": "echo", "args": {"value": i}, "unique_key": "second"});
        let mine = json!({"function": "noop", "args": {}});
        let items = if i % 2 == 0 { json!([a, mine, b]) } else { json!([b, mine, a]) };
        let api = &api;
        async move { (i, batch(api, "alice", items).await) }
    }))
    .await;
    let mut shared = HashSet::new();
    let mut second = HashSet::new();
    let mut created = (0, 0);
    for (i, (status, answer)) in &answers {
        assert_eq!(*status, StatusCode::ACCEPTED, "{answer}");
        let (a, b) = if i % 2 == 0 { (0, 2) } else { (2, 0) };
        let jobs = &answer["jobs"];
        shared.insert(jobs[a]["id"].as_str().unwrap().to_owned());
        second.insert(jobs[b]["id"].as_str().unwrap().to_owned());
        created.0 += usize::from(jobs[a]["deduplicated"] != true);
        created.1 += usize::from(jobs[b]["deduplicated"] != true);
    }
    assert_eq!((shared.len(), second.len()), (1, 1), "every batch names the same job per key");
    assert_eq!(created, (1, 1), "one batch created each key's job");
    let keyed: Vec<(Option<String>, i64)> =
        sqlx::query_as("SELECT unique_key, count(*) FROM jobs GROUP BY unique_key ORDER BY unique_key")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(keyed, [(Some("second".into()), 1), (Some("shared".into()), 1), (None, 50)]);
}

#[sqlx::test]
async fn debounced_batch_items_push_one_job_back_with_the_last_args(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let item = |v: i32| json!({"function": "echo", "args": {"value": v}, "unique_key": "d", "debounce_seconds": 60});
    let (status, answer) = batch(&api, "alice", json!([item(1), item(2), item(3)])).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(item_ids(&answer).iter().collect::<HashSet<_>>().len(), 1);
    assert_eq!(deduplicated(&answer), [false, true, true]);
    let rows = keyed(&pool, "d").await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].1.as_str(), rows[0].3.clone()), ("queued", json!({"value": 3})), "the last item's args");
    assert!((rows[0].4 - 60.0).abs() < 0.5, "due 60 s after the last item: {}", rows[0].4);
    // A later batch pushes the same job back again.
    let (_, later) = batch(&api, "alice", json!([item(4)])).await;
    assert_eq!((item_ids(&later), deduplicated(&later)), (item_ids(&answer)[..1].to_vec(), vec![true]));
    assert_eq!(keyed(&pool, "d").await[0].3, json!({"value": 4}));
}

#[sqlx::test]
async fn a_unique_schedule_does_not_pile_up_while_its_job_is_live(pool: PgPool) {
    use runq::job::Priority;
    use runq::schedule::{Action, Schedule, Schedules};
    let action = |value: &str| Action::Submit {
        function: "echo".into(),
        args: json!({"value": value}),
        priority: Priority::Low,
    };
    let mut schedules = Schedules::builtin();
    schedules.add(Schedule::new("unique-report", "*/5 * * * *", "Etc/UTC", action("u")).unwrap().unique()).unwrap();
    schedules.add(Schedule::new("plain-report", "*/5 * * * *", "Etc/UTC", action("p")).unwrap()).unwrap();
    let runner = runq::schedule::Runner {
        pool: pool.clone(),
        registry: std::sync::Arc::new(runq::function::Registry::builtin()),
        outbox: None,
        dispatcher: None,
        storage: None,
        retention: runq::maintenance::Retention::default(),
        key_retention: Duration::from_secs(3600),
        redispatch_after: Duration::from_secs(60),
        sweep_window: Duration::ZERO,
        sweep_every: Duration::from_millis(10),
    };
    let at =
        |m: u32| "2026-12-02T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + chrono::Duration::minutes(i64::from(m));
    let fire = |name: &'static str, slot: u32| {
        let (runner, schedules) = (&runner, &schedules);
        async move {
            match runner.fire(schedules.get(name).unwrap(), at(slot)).await.unwrap() {
                runq::schedule::Fired::Job { job, created, deduplicated } => (job.status.id, created, deduplicated),
                other => panic!("{other:?}"),
            }
        }
    };
    let (first, created, _) = fire("unique-report", 0).await;
    assert!(created);
    // The next slots fire while the first job is still queued (then running): nothing new.
    for (slot, status) in [(5, "queued"), (10, "running")] {
        sqlx::query("UPDATE jobs SET status = $2 WHERE id = $1").bind(first).bind(status).execute(&pool).await.unwrap();
        assert_eq!(fire("unique-report", slot).await, (first, false, true), "slot {slot}, {status}");
    }
    // A doubled firing of a deduplicated slot still answers with that job.
    assert_eq!(fire("unique-report", 10).await.0, first);
    // The plain schedule piles up, one job per slot.
    let plain: HashSet<Uuid> = futures::future::join_all([0, 5, 10].map(|slot| fire("plain-report", slot)))
        .await
        .into_iter()
        .map(|(id, created, deduplicated)| {
            assert!(created && !deduplicated);
            id
        })
        .collect();
    assert_eq!(plain.len(), 3);
    // Once the job finished, the next slot submits the next one.
    set_status(&pool, &first.to_string(), "succeeded").await;
    let (next, created, deduplicated) = fire("unique-report", 15).await;
    assert!(created && !deduplicated);
    assert_ne!(next, first);
    let unique_jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE owner = 'schedule:unique-report'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(unique_jobs, 2);
}

#[sqlx::test]
async fn spawned_children_with_a_unique_key_are_not_duplicated(pool: PgPool) {
    let s = crate::e2e::stack(&pool).await;
    // `unique_playlist` spawns one `echo` child per item with the key `video:{item}`.
    let first = s.submit(json!({"function": "unique_playlist", "args": ["a", "a", "b"]})).await;
    let first = s.finished(first["id"].as_str().unwrap()).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    let ids: Vec<String> = serde_json::from_value(first["result"].clone()).unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!(ids[0], ids[1], "the second `a` is the first's job");
    assert_ne!(ids[0], ids[2]);
    let children: Vec<(Uuid, Option<String>)> =
        sqlx::query_as("SELECT id, unique_key FROM jobs WHERE parent_id = $1 ORDER BY unique_key")
            .bind(first["id"].as_str().unwrap().parse::<Uuid>().unwrap())
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(children.iter().map(|c| c.1.clone().unwrap()).collect::<Vec<_>>(), ["video:a", "video:b"]);
    for id in &ids {
        assert_eq!(s.finished(id).await["status"], "succeeded", "the children ran");
    }
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn spawned_children_dedup_against_live_jobs_of_the_owner(pool: PgPool) {
    // A running parent (claim 0xaa) of owner `a`; `a` already has a live job keyed `video:x`.
    sqlx::query(
        "INSERT INTO jobs (id, owner, function, priority, args, status, attempt, max_attempts, claim_id)
         VALUES ('00000000-0000-0000-0000-000000000001', 'a', 'playlist', 'low', '[]', 'running', 1, 3,
                 '00000000-0000-0000-0000-0000000000aa'),
                ('00000000-0000-0000-0000-000000000002', 'a', 'echo', 'low', '{}', 'queued', 0, 3, NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("UPDATE jobs SET unique_key = 'video:x' WHERE id = '00000000-0000-0000-0000-000000000002'")
        .execute(&pool)
        .await
        .unwrap();
    let args = serde_json::value::RawValue::from_string("{}".into()).unwrap();
    let spec = |key: Option<&'static str>| runq::store::JobSpec {
        function: "echo",
        priority: runq::job::Priority::Low,
        queue: None,
        args: &args,
        max_attempts: 3,
        delay_secs: None,
        unique_key: key,
        debounce_secs: None,
        limit_keys: Vec::new(),
    };
    let (parent, claim) = (Uuid::from_u128(1), Uuid::from_u128(0xaa));
    let children = [spec(Some("video:x")), spec(None), spec(Some("video:y")), spec(Some("video:y"))];
    let spawned = runq::store::spawn_children(&pool, parent, claim, &children).await.unwrap().unwrap();
    let ids: Vec<Uuid> = spawned.iter().map(|s| s.job.status.id).collect();
    assert_eq!(ids[0], Uuid::from_u128(2), "the owner's live `video:x` job");
    assert_eq!(ids[2], ids[3]);
    assert_eq!(spawned.iter().map(|s| s.created).collect::<Vec<_>>(), [false, true, true, false]);
    assert_eq!(spawned[2].job.parent_id, Some(parent));
    let (jobs, kids): (i64, i64) = sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE parent_id = $1) FROM jobs")
        .bind(parent)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((jobs, kids), (4, 2));
    // A stale claim spawns nothing, keyed or not.
    assert!(runq::store::spawn_children(&pool, parent, Uuid::from_u128(0xbb), &children).await.unwrap().is_none());
}
