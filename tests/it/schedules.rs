//! Schedules over real sockets: Cloud Scheduler's firing endpoint with real OIDC tokens (from
//! the emulator), idempotent firings, the sweep and cleanup, `runq schedules`, and the drift
//! check between the code's declarations and `infra/runq.json`.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use runq::api::ApiSettings;
use runq::auth::GoogleCallers;
use runq::emulator::{EmulatorHandle, EmulatorOptions};
use runq::function::Registry;
use runq::job::Priority;
use runq::maintenance::Retention;
use runq::schedule::{Action, Schedule, Schedules};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::common::start_api_over;
use crate::e2e_faults::emulator_token_as;

const AUDIENCE: &str = "https://runq-api.example/internal";
const SCHEDULER: &str = "runq-scheduler@proj.iam.gserviceaccount.com";

struct Api {
    url: String,
    http: reqwest::Client,
    emulator: EmulatorHandle,
}

fn schedules(args: Value) -> Schedules {
    let mut s = Schedules::builtin();
    let report = Action::Submit { function: "echo".into(), args, priority: Priority::Low };
    s.add(Schedule::new("nightly-report", "0 3 * * *", "Europe/Paris", report.clone()).unwrap()).unwrap();
    s.add(Schedule::new("new-year", "0 0 1 1 *", "Etc/UTC", report).unwrap()).unwrap();
    s
}

async fn start(pool: &PgPool, schedules: Schedules, emulator: Option<EmulatorHandle>) -> Api {
    let emulator = match emulator {
        Some(e) => e,
        None => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            runq::emulator::start(listener, EmulatorOptions::default()).await.unwrap()
        }
    };
    // Cloud Scheduler's calls, verified against the emulator's keys; each sweep firing one pass.
    let settings = ApiSettings {
        scheduler: Some(GoogleCallers { audience: AUDIENCE.into(), service_accounts: vec![SCHEDULER.into()] }),
        sweep_window: Duration::ZERO,
        sweep_every: Duration::from_millis(10),
        ..crate::common::settings()
    };
    let api = start_api_over(pool.clone(), Registry::builtin(), schedules, settings, &emulator.jwks_url()).await;
    Api { url: api.base, http: api.http, emulator }
}

async fn jobs(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs").fetch_one(pool).await.unwrap()
}

#[sqlx::test]
async fn two_firings_for_one_scheduled_time_make_one_job(pool: PgPool) {
    let api = start(&pool, schedules(json!({"value": "v1"})), None).await;
    let token = emulator_token_as(&api.emulator.host(), AUDIENCE, "sched", SCHEDULER).await;
    let fire = |time: &'static str| {
        api.http
            .post(format!("{}/internal/schedules/nightly-report", api.url))
            .bearer_auth(&token)
            .header("X-CloudScheduler-ScheduleTime", time)
            .send()
    };
    let first = fire("2026-11-23T02:00:00Z").await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    // Cloud Scheduler retries the same firing (sub-second noise in the header is ignored).
    let again = fire("2026-11-23T02:00:00.480Z").await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["fired"]["job"]["id"], again["fired"]["job"]["id"]);
    assert_eq!(first["fired"]["created"], true);
    assert_eq!(again["fired"]["created"], false);
    assert_eq!(jobs(&pool).await, 1);
    let (owner, key, args): (String, String, Value) =
        sqlx::query_as("SELECT owner, idempotency_key, args FROM jobs").fetch_one(&pool).await.unwrap();
    assert_eq!(owner, "schedule:nightly-report");
    assert_eq!(key, "schedule:nightly-report:2026-11-23T02:00:00Z");
    assert_eq!(args, json!({"value": "v1"}));

    // The next day's slot is a new job.
    assert_eq!(fire("2026-11-24T02:00:00Z").await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(jobs(&pool).await, 2);

    // A redeploy changed the args: an existing job for that instant is still success.
    let redeployed = start(&pool, schedules(json!({"value": "v2"})), Some(api.emulator)).await;
    let resp = redeployed
        .http
        .post(format!("{}/internal/schedules/nightly-report", redeployed.url))
        .bearer_auth(&token)
        .header("X-CloudScheduler-ScheduleTime", "2026-11-23T02:00:00Z")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(jobs(&pool).await, 2);
}

#[sqlx::test]
async fn without_a_schedule_time_the_slot_that_just_passed_is_used(pool: PgPool) {
    let api = start(&pool, schedules(json!({"value": 1})), None).await;
    let token = emulator_token_as(&api.emulator.host(), AUDIENCE, "sched", SCHEDULER).await;
    let url = format!("{}/internal/schedules/new-year", api.url);
    let first: Value = api.http.post(&url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    let second = api.http.post(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    let year = chrono::Datelike::year(&chrono::Utc::now());
    assert_eq!(first["scheduled_time"], format!("{year}-01-01T00:00:00Z"));
    assert_eq!(jobs(&pool).await, 1);
}

#[sqlx::test]
async fn refused_firings_create_nothing(pool: PgPool) {
    let api = start(&pool, schedules(json!({"value": 1})), None).await;
    let host = api.emulator.host();
    let good = emulator_token_as(&host, AUDIENCE, "good", SCHEDULER).await;
    let wrong_audience = emulator_token_as(&host, "https://elsewhere.example", "aud", SCHEDULER).await;
    let intruder = emulator_token_as(&host, AUDIENCE, "intruder", "someone@proj.iam.gserviceaccount.com").await;
    let url = |name: &str| format!("{}/internal/schedules/{name}", api.url);
    let cases = [
        (api.http.post(url("nightly-report")), StatusCode::UNAUTHORIZED),
        (api.http.post(url("nightly-report")).bearer_auth("not-a-jwt"), StatusCode::UNAUTHORIZED),
        (api.http.post(url("nightly-report")).bearer_auth(&wrong_audience), StatusCode::UNAUTHORIZED),
        (api.http.post(url("nightly-report")).bearer_auth(&intruder), StatusCode::FORBIDDEN),
        (api.http.post(url("no-such-schedule")).bearer_auth(&good), StatusCode::NOT_FOUND),
        (
            api.http
                .post(url("nightly-report"))
                .bearer_auth(&good)
                .header("X-CloudScheduler-ScheduleTime", "yesterday"),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (i, (req, want)) in cases.into_iter().enumerate() {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), want, "case {i}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
    }
    assert_eq!(jobs(&pool).await, 0);
}

#[sqlx::test]
async fn the_sweep_firing_reaps_expired_leases(pool: PgPool) {
    let api = start(&pool, schedules(json!({"value": 1})), None).await;
    let token = emulator_token_as(&api.emulator.host(), AUDIENCE, "sched", SCHEDULER).await;
    sqlx::query(
        "INSERT INTO jobs (id, owner, function, priority, args, status, attempt, max_attempts, claim_id, lease_until)
         VALUES (gen_random_uuid(), 'a', 'noop', 'low', '{}', 'running', 1, 3, gen_random_uuid(), now() - interval '1 minute')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let resp =
        api.http.post(format!("{}/internal/schedules/runq.sweep", api.url)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["fired"]["kind"], "sweep");
    assert_eq!(body["fired"]["report"]["reaped"], 1);
    let status: String = sqlx::query_scalar("SELECT status FROM jobs").fetch_one(&pool).await.unwrap();
    assert_eq!(status, "queued");
}

#[sqlx::test]
async fn cleanup_removes_only_what_is_past_retention(pool: PgPool) {
    let gcs = crate::gcs::FakeGcs::start().await;
    gcs.create_bucket("results").await;
    let store = Arc::new(gcs.store().await);
    let old_uri = store.put("results", "results/old.json", "{}".into(), "application/json").await.unwrap();
    let new_uri = store.put("results", "results/new.json", "{}".into(), "application/json").await.unwrap();
    // (status, finished days ago, result uri): retention is 7 days succeeded/cancelled, 30 failed.
    let rows: [(&str, Option<i32>, Option<&str>); 7] = [
        ("succeeded", Some(8), Some(&old_uri)),
        ("succeeded", Some(6), Some(&new_uri)),
        ("failed", Some(8), None),
        ("failed", Some(31), None),
        ("cancelled", Some(8), None),
        ("queued", None, None),
        ("running", None, None),
    ];
    for (i, (status, days, uri)) in rows.iter().enumerate() {
        sqlx::query(
            "INSERT INTO jobs (id, owner, function, priority, args, status, attempt, max_attempts, finished_at, result_uri, created_at)
             VALUES ($1, 'a', 'noop', 'low', '{}', $2, 1, 3, now() - make_interval(days => $3), $4, now() - interval '60 days')",
        )
        .bind(uuid::Uuid::from_u128(i as u128 + 1))
        .bind(status)
        .bind(days.unwrap_or(0))
        .bind(uri)
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query("UPDATE jobs SET finished_at = NULL WHERE status IN ('queued', 'running')")
        .execute(&pool)
        .await
        .unwrap();
    // Keys: one for the doomed succeeded job (kept, extended), one long expired and orphaned.
    sqlx::query(
        "INSERT INTO idempotency_keys (owner, key, request_hash, job_id, expires_at) VALUES
         ('a', 'k-doomed', '\\x00', $1, now() - interval '1 day'),
         ('a', 'k-orphan', '\\x00', gen_random_uuid(), now() - interval '1 day')",
    )
    .bind(uuid::Uuid::from_u128(1))
    .execute(&pool)
    .await
    .unwrap();

    let report =
        runq::maintenance::cleanup::run_once(&pool, Some(&store), Retention::default(), Duration::from_secs(3600))
            .await
            .unwrap();
    assert_eq!(report.jobs_deleted, 3, "{report:?}");
    assert_eq!(report.results_deleted, 1);
    let left: Vec<(String, i32)> = sqlx::query_as(
        "SELECT status, coalesce(extract(day FROM now() - finished_at)::int, -1) FROM jobs ORDER BY status, finished_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        left,
        vec![("failed".into(), 8), ("queued".into(), -1), ("running".into(), -1), ("succeeded".into(), 6)]
    );
    assert!(matches!(store.get(&old_uri).await, Err(runq::storage::StorageError::NotFound { .. })));
    assert!(store.get(&new_uri).await.is_ok(), "a kept job's result stays");
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotency_keys").fetch_all(&pool).await.unwrap();
    assert_eq!(keys, vec!["k-doomed"], "the deleted job's key outlives it; the orphan past expiry goes");
}

#[test]
fn infra_runq_json_matches_the_declarations() {
    let app = runq::App::new();
    let export = runq::infra::export(app.schedules(), app.queues());
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/infra/runq.json");
    let committed: runq::infra::Export =
        serde_json::from_str(&std::fs::read_to_string(path).expect("infra/runq.json exists")).unwrap();
    assert_eq!(committed, export, "infra/runq.json is stale: run `runq infra export -o infra/runq.json`");
}

#[test]
fn bad_schedule_declarations_stop_start_up_naming_the_schedule() {
    let app = runq::App::new().schedule("typo", "0 3 * *", "Etc/UTC", "noop", json!({}), Priority::Low);
    assert!(app.check().unwrap_err().contains("typo"));
    let app = runq::App::new().schedule("tz", "0 3 * * *", "Paris", "noop", json!({}), Priority::Low);
    assert!(app.check().unwrap_err().contains("`tz`"));
    let app = runq::App::new().schedule("ghost", "0 3 * * *", "Etc/UTC", "nope", json!({}), Priority::Low);
    assert!(app.check().unwrap_err().contains("ghost"));
    let app = runq::App::new().schedule("args", "0 3 * * *", "Etc/UTC", "sleep", json!({"secs": 1}), Priority::Low);
    assert!(app.check().unwrap_err().contains("args"));
    let ok = runq::App::new().schedule("fine", "*/15 9-17 * * 1-5", "Europe/Paris", "noop", json!({}), Priority::High);
    assert!(ok.check().is_ok());
}

#[tokio::test]
async fn runq_schedules_lists_next_fire_times() {
    let out = tokio::process::Command::new(crate::common::runq_bin())
        .args(["schedules", "--json", "--next", "2"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let listing: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = listing.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["runq.sweep", "runq.cleanup"]);
    let next = listing[0]["next"].as_array().unwrap();
    assert_eq!(next.len(), 2);
    let (a, b) = (next[0].as_str().unwrap(), next[1].as_str().unwrap());
    let gap = chrono::DateTime::parse_from_rfc3339(b).unwrap() - chrono::DateTime::parse_from_rfc3339(a).unwrap();
    assert_eq!(gap, chrono::Duration::minutes(1));
}
