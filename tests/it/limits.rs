//! Flow control in Postgres: limited claims, holds, releases and pauses raced against each
//! other on real connections (`#[sqlx::test]`, a fresh database each), and the `/limits` and
//! pause API over a socket. The same under several worker processes: `faults::limits`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use runq::limits::Limit;
use runq::store::{self, LimitedClaim};

use crate::common::{admin_token, settings, start_api_over, token};

const LEASE: Duration = Duration::from_secs(30);

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.into()).unwrap()
}

/// The builtin functions, with `noop` under `limit`.
fn registry(limit: Limit) -> runq::function::Registry {
    let mut r = runq::function::Registry::builtin();
    r.limit(limit).unwrap();
    r
}

/// Declares `limit` and inserts `n` queued due jobs of `noop` by `owner` carrying its keys.
async fn seed(pool: &PgPool, limit: &Limit, owner: &str, n: usize) -> Vec<Uuid> {
    store::limits::declare(pool, std::slice::from_ref(limit)).await.unwrap();
    let reg = registry(limit.clone());
    let args = raw("{}");
    let mut ids = Vec::new();
    for _ in 0..n {
        let spec = runq::submit::validate(&reg, None, &runq::submit::Submission::new(owner, "noop", &args)).unwrap();
        let new = store::NewJob { id: Uuid::now_v7(), owner, spec, trace_context: None, idempotency: None };
        ids.push(store::submit(pool, &new, Duration::from_secs(60)).await.unwrap().job.status.id);
    }
    ids
}

async fn claim(pool: &PgPool, id: Uuid) -> LimitedClaim {
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT limit_keys FROM jobs WHERE id = $1").bind(id).fetch_one(pool).await.unwrap();
    store::claim_limited(pool, id, &keys, "test", LEASE).await.unwrap()
}

async fn row(pool: &PgPool, id: Uuid) -> (String, Option<String>, Option<Uuid>, Option<String>) {
    sqlx::query_as("SELECT status, held_on, released_by, message FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn a_plain_claim_leaves_a_limited_job_to_the_limited_claim(pool: PgPool) {
    let limit = Limit::new("one").concurrency(1).on(["noop"]);
    let ids = seed(&pool, &limit, "alice", 1).await;
    assert!(store::claim(&pool, ids[0], "test", LEASE).await.unwrap().is_none());
    let u = store::unclaimable(&pool, ids[0]).await.unwrap().unwrap();
    assert!(u.claimable(), "claimable but for its limit");
    assert_eq!(u.limit_keys.as_deref(), Some(&["one".to_owned()][..]));
    assert!(matches!(claim(&pool, ids[0]).await, LimitedClaim::Claimed(_)));
}

#[sqlx::test]
async fn concurrent_claims_of_a_full_key_never_run_more_than_its_limit(pool: PgPool) {
    let limit = Limit::new("two").concurrency(2).on(["noop"]);
    let ids = seed(&pool, &limit, "alice", 12).await;
    let claims = futures::future::join_all(ids.iter().map(|id| claim(&pool, *id))).await;
    let claimed = claims.iter().filter(|c| matches!(c, LimitedClaim::Claimed(_))).count();
    let held: Vec<_> = claims.iter().filter(|c| matches!(c, LimitedClaim::Held { .. })).collect();
    assert_eq!((claimed, held.len()), (2, 10), "{claims:?}");
    let running: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'running'").fetch_one(&pool).await.unwrap();
    assert_eq!(running, 2);
    let (status, held_on, _, message) = row(&pool, ids[11]).await;
    if status == "queued" {
        assert_eq!(held_on.as_deref(), Some("two"));
        assert!(message.unwrap().contains("allows 2 at once"));
    }
}

/// The race the trigger's lock order exists for: a claim holding a job back on a full key while
/// the run filling it ends. Whichever commits second sees the other, so the job is never left
/// held on a key with no run (it would wait for a release that never comes).
#[sqlx::test]
async fn a_hold_and_a_run_ending_at_the_same_instant_never_strand_the_job(pool: PgPool) {
    let limit = Limit::new("solo").concurrency(1).on(["noop"]);
    store::limits::declare(&pool, std::slice::from_ref(&limit)).await.unwrap();
    for trial in 0..100 {
        let ids = seed(&pool, &limit, "alice", 2).await;
        let LimitedClaim::Claimed(first) = claim(&pool, ids[0]).await else {
            panic!("trial {trial}: first not claimed")
        };
        let args = raw("{}");
        let (ended, second) = tokio::join!(
            store::succeed(&pool, first.id, first.claim_id, store::ResultValue::Inline(&args), None),
            claim(&pool, ids[1]),
        );
        assert!(ended.unwrap());
        match second {
            LimitedClaim::Claimed(_) => {}
            LimitedClaim::Held { .. } => {
                let (status, held_on, released_by, _) = row(&pool, ids[1]).await;
                assert_eq!(status, "queued");
                assert_eq!(held_on, None, "trial {trial}: held on a key whose run had ended, never released");
                assert_eq!(released_by, Some(first.id), "trial {trial}: released by the run that ended");
                let released = store::limits::take_released(&pool, first.id).await.unwrap();
                assert_eq!(released.iter().map(|p| p.id).collect::<Vec<_>>(), vec![ids[1]]);
            }
            LimitedClaim::Unclaimable => panic!("trial {trial}: the second job became unclaimable"),
        }
        sqlx::query("DELETE FROM jobs").execute(&pool).await.unwrap();
    }
}

#[sqlx::test]
async fn every_way_a_run_ends_releases_the_next_held_job(pool: PgPool) {
    let limit = Limit::new("solo").concurrency(1).on(["noop"]);
    let ids = seed(&pool, &limit, "alice", 6).await;
    let LimitedClaim::Claimed(mut run) = claim(&pool, ids[0]).await else { panic!() };
    for id in &ids[1..] {
        assert!(matches!(claim(&pool, *id).await, LimitedClaim::Held { .. }));
    }
    let args = raw("{}");
    let err = runq::job::JobError { kind: runq::job::ErrorKind::Error, message: "x".into(), retryable: false };
    // Success, failure, a release at shutdown, a worker giving back a run whose lease lapsed,
    // then the reaper: each frees the slot.
    for (i, end) in ["succeed", "fail", "release", "lapse", "reap"].into_iter().enumerate() {
        match end {
            "succeed" => assert!(
                store::succeed(&pool, run.id, run.claim_id, store::ResultValue::Inline(&args), None).await.unwrap()
            ),
            "fail" => assert!(store::fail(&pool, run.id, run.claim_id, &err, Duration::ZERO).await.unwrap().is_some()),
            "release" => assert!(store::release(&pool, run.id, run.claim_id).await.unwrap()),
            "lapse" => assert_eq!(
                store::give_back_lapsed(&pool, run.id, run.claim_id).await.unwrap(),
                Some(runq::job::Status::Queued)
            ),
            _ => {
                sqlx::query("UPDATE jobs SET lease_until = now() - interval '1 second' WHERE id = $1")
                    .bind(run.id)
                    .execute(&pool)
                    .await
                    .unwrap();
                assert_eq!(runq::maintenance::reaper::run_once(&pool).await.unwrap().len(), 1);
            }
        }
        let released = store::limits::take_released(&pool, run.id).await.unwrap();
        assert_eq!(released.len(), 1, "{end} released one job");
        let next = released[0].id;
        assert_eq!(next, ids[i + 1], "{end}: held jobs go first come first served");
        let LimitedClaim::Claimed(claimed) = claim(&pool, next).await else { panic!("{end}: the released job runs") };
        let (_, held_on, released_by, message) = row(&pool, next).await;
        assert_eq!((held_on, released_by, message), (None, None, None), "a claim clears the hold");
        run = claimed;
    }
}

#[sqlx::test]
async fn a_rate_spreads_held_jobs_one_interval_apart(pool: PgPool) {
    let limit = Limit::new("api").rate(5.0, 1).on(["noop"]);
    let ids = seed(&pool, &limit, "alice", 8).await;
    let mut claimed = 0;
    for id in &ids {
        if let LimitedClaim::Claimed(_) = claim(&pool, *id).await {
            claimed += 1;
        }
    }
    assert_eq!(claimed, 1, "a burst of 1 admits one start now");
    let due: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM run_after)::float8 FROM jobs
         WHERE status = 'queued' AND held_on = 'api' AND rate_reserved ORDER BY run_after",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(due.len(), 7);
    for w in due.windows(2) {
        assert!(((w[1] - w[0]) - 0.2).abs() < 1e-3, "one start reserved every 200 ms: {due:?}");
    }
    // A held job coming back at its start runs without asking the rate again, even though a
    // fresh job at that instant would be held.
    sqlx::query("UPDATE jobs SET run_after = now() WHERE held_on = 'api'").execute(&pool).await.unwrap();
    let first_held: Uuid = sqlx::query_scalar("SELECT id FROM jobs WHERE held_on = 'api' ORDER BY created_at LIMIT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(matches!(claim(&pool, first_held).await, LimitedClaim::Claimed(_)));
    let fresh = seed(&pool, &limit, "alice", 1).await;
    assert!(matches!(claim(&pool, fresh[0]).await, LimitedClaim::Held { .. }), "the fresh job waits its turn");
}

#[sqlx::test]
async fn keys_per_owner_keep_owners_apart(pool: PgPool) {
    let limit = Limit::new("per-owner").concurrency(1).per_owner().on(["noop"]);
    let a = seed(&pool, &limit, "alice", 3).await;
    let b = seed(&pool, &limit, "bob", 1).await;
    for id in &a {
        claim(&pool, *id).await;
    }
    assert!(matches!(claim(&pool, b[0]).await, LimitedClaim::Claimed(_)), "alice's backlog doesn't hold bob");
    let keys: Vec<String> = sqlx::query_scalar("SELECT DISTINCT held_on FROM jobs WHERE held_on IS NOT NULL")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(keys, vec!["per-owner:alice".to_owned()]);
}

#[sqlx::test]
async fn a_pause_and_a_resume_racing_a_hold_never_strand_a_job(pool: PgPool) {
    for trial in 0..60 {
        let args = raw("{}");
        let spec = runq::submit::validate(
            &runq::function::Registry::builtin(),
            None,
            &runq::submit::Submission::new("alice", "noop", &args),
        )
        .unwrap();
        let new = store::NewJob { id: Uuid::now_v7(), owner: "alice", spec, trace_context: None, idempotency: None };
        let id = store::submit(&pool, &new, Duration::from_secs(60)).await.unwrap().job.status.id;
        assert!(store::limits::pause(&pool, "function", "noop", "ops").await.unwrap());
        assert!(store::claim(&pool, id, "test", LEASE).await.unwrap().is_none(), "paused: the claim takes nothing");
        let pause = store::limits::pause_of(&pool, id).await.unwrap().unwrap();
        assert_eq!(pause, "pause:function:noop");
        let (held, resumed) = tokio::join!(
            store::limits::hold_for_pause(&pool, id, &pause),
            store::limits::resume(&pool, "function", "noop")
        );
        let (held, resumed) = (held.unwrap(), resumed.unwrap().unwrap());
        let (_, held_on, _, _) = row(&pool, id).await;
        assert_eq!(held_on, None, "trial {trial}: held by a pause that is gone");
        if held {
            assert_eq!(
                resumed.iter().map(|p| p.id).collect::<Vec<_>>(),
                vec![id],
                "trial {trial}: the resume released it"
            );
        }
        assert!(store::claim(&pool, id, "test", LEASE).await.unwrap().is_some(), "trial {trial}: runs once resumed");
        sqlx::query("DELETE FROM jobs").execute(&pool).await.unwrap();
    }
}

#[sqlx::test]
async fn declared_values_follow_the_code_until_an_operator_overrides_them(pool: PgPool) {
    let v1 = Limit::new("cap").concurrency(2).on(["noop"]);
    store::limits::declare(&pool, std::slice::from_ref(&v1)).await.unwrap();
    let v2 = Limit::new("cap").concurrency(4).on(["noop"]);
    store::limits::declare(&pool, std::slice::from_ref(&v2)).await.unwrap();
    let get = || async { store::limits::usage(&pool).await.unwrap().into_iter().find(|l| l.name == "cap").unwrap() };
    assert_eq!(get().await.concurrency, Some(4), "a redeploy's declaration wins while nobody overrode it");
    let values = runq::limits::Values { concurrency: Some(1), rate_per_second: None, burst: 1 };
    store::limits::set_values(&pool, "cap", Some(values), "ops").await.unwrap().unwrap();
    store::limits::declare(&pool, std::slice::from_ref(&v1)).await.unwrap();
    let l = get().await;
    assert_eq!((l.concurrency, l.overridden_by.as_deref()), (Some(1), Some("ops")), "the override survives a deploy");
    store::limits::set_values(&pool, "cap", None, "ops").await.unwrap().unwrap();
    let l = get().await;
    assert_eq!((l.concurrency, l.overridden_by), (Some(2), None), "reset: the declared values again");
    assert!(store::limits::set_values(&pool, "nope", None, "ops").await.unwrap().is_none());
}

#[sqlx::test]
async fn raising_a_limit_releases_what_now_fits(pool: PgPool) {
    let limit = Limit::new("cap").concurrency(1).on(["noop"]);
    let ids = seed(&pool, &limit, "alice", 4).await;
    for id in &ids {
        claim(&pool, *id).await;
    }
    let values = runq::limits::Values { concurrency: Some(3), rate_per_second: None, burst: 1 };
    let released = store::limits::set_values(&pool, "cap", Some(values), "ops").await.unwrap().unwrap();
    assert_eq!(released.len(), 2, "3 slots, 1 running: two of the three held jobs go");
    // The sweep's backstop finds nothing more to release while the key is full again.
    for p in &released {
        assert!(matches!(claim(&pool, p.id).await, LimitedClaim::Claimed(_)));
    }
    assert_eq!(store::limits::release_stuck(&pool).await.unwrap(), 0);
    // A job held on a key with a free slot nothing released (as after a cancel) is found by it.
    sqlx::query("UPDATE jobs SET status = 'succeeded', finished_at = now(), claim_id = NULL WHERE status = 'running'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE jobs SET held_on = 'cap', released_by = NULL WHERE status = 'queued'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(store::limits::release_stuck(&pool).await.unwrap(), 1);
}

#[sqlx::test]
async fn the_limits_api_shows_use_and_only_admins_change_it(pool: PgPool) {
    let limit = Limit::new("per-channel").concurrency(1).per_arg("value").on(["echo"]);
    let api = start_api_over(
        pool.clone(),
        registry(limit),
        runq::schedule::Schedules::builtin(),
        settings(),
        runq::auth::GOOGLE_JWKS_URL,
    )
    .await;
    let (user, admin) = (token("alice"), admin_token("ops"));
    // A job whose args lack the limit's key is refused and writes nothing.
    let r = api
        .http
        .post(api.url("/jobs"))
        .bearer_auth(&user)
        .json(&json!({"function": "echo", "args": {"value": null}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = r.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("args.value"), "{body}");
    let batch =
        json!({"jobs": [{"function": "echo", "args": {"value": "c1"}}, {"function": "echo", "args": {"value": [1]}}]});
    let r = api.http.post(api.url("/jobs:batch")).bearer_auth(&user).json(&batch).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(crate::common::counts(&pool).await.0, 0, "nothing written");
    let r = api
        .http
        .post(api.url("/jobs"))
        .bearer_auth(&user)
        .json(&json!({"function": "echo", "args": {"value": "c1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let keys: Vec<String> = sqlx::query_scalar("SELECT limit_keys FROM jobs").fetch_one(&pool).await.unwrap();
    assert_eq!(keys, vec!["per-channel:c1".to_owned()]);

    let r = api.http.get(api.url("/limits")).bearer_auth(&user).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["limits"][0]["name"], "per-channel");
    assert_eq!(body["limits"][0]["key_by"], "arg:value");
    assert_eq!(body["limits"][0]["concurrency"], 1);

    let put = |tok: &str, name: &str, body: Value| {
        api.http.put(api.url(&format!("/limits/{name}"))).bearer_auth(tok).json(&body).send()
    };
    assert_eq!(put(&user, "per-channel", json!({"concurrency": 5})).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(put(&admin, "nope", json!({"concurrency": 5})).await.unwrap().status(), StatusCode::NOT_FOUND);
    for bad in [
        json!({}),
        json!({"rate_per_second": 0}),
        json!({"rate_per_second": -1}),
        json!({"concurrency": 2, "burst": 0}),
        json!({"cores": 1}),
    ] {
        let r = put(&admin, "per-channel", bad.clone()).await.unwrap();
        assert!(matches!(r.status(), StatusCode::UNPROCESSABLE_ENTITY), "{bad}: {}", r.status());
    }
    let r = put(&admin, "per-channel", json!({"concurrency": 5, "rate_per_second": 2.5, "burst": 3})).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (body["concurrency"].clone(), body["rate_per_second"].clone(), body["overridden_by"].clone()),
        (json!(5), json!(2.5), json!("ops"))
    );
    let r = api.http.delete(api.url("/limits/per-channel")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["concurrency"], 1);

    // Pauses: admins only, known names only, idempotent.
    let post = |tok: &str, path: &str| api.http.post(api.url(path)).bearer_auth(tok).send();
    assert_eq!(post(&user, "/queues/medium/pause").await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(post(&admin, "/queues/nope/pause").await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(post(&admin, "/functions/nope/resume").await.unwrap().status(), StatusCode::NOT_FOUND);
    let first: Value = post(&admin, "/queues/medium/pause").await.unwrap().json().await.unwrap();
    let again: Value = post(&admin, "/queues/medium/pause").await.unwrap().json().await.unwrap();
    assert_eq!((first["changed"].clone(), again["changed"].clone()), (json!(true), json!(false)));
    let pauses: Value = api.http.get(api.url("/pauses")).bearer_auth(&user).send().await.unwrap().json().await.unwrap();
    assert_eq!(pauses["pauses"][0]["name"], "medium");
    assert_eq!(pauses["pauses"][0]["paused_by"], "ops");
    let resumed: Value = post(&admin, "/queues/medium/resume").await.unwrap().json().await.unwrap();
    assert_eq!(resumed["changed"], true);
}

#[sqlx::test]
async fn a_lapsed_run_given_back_counts_its_attempt_and_is_fenced_by_its_claim(pool: PgPool) {
    use runq::job::Status;
    let limit = Limit::new("solo").concurrency(1).on(["noop"]);
    let ids = seed(&pool, &limit, "alice", 2).await;
    sqlx::query("UPDATE jobs SET max_attempts = 2").execute(&pool).await.unwrap();
    let LimitedClaim::Claimed(first) = claim(&pool, ids[0]).await else { panic!() };
    assert_eq!(store::give_back_lapsed(&pool, ids[0], Uuid::now_v7()).await.unwrap(), None, "another claim's");
    assert_eq!(store::give_back_lapsed(&pool, ids[0], first.claim_id).await.unwrap(), Some(Status::Queued));
    assert_eq!(store::give_back_lapsed(&pool, ids[0], first.claim_id).await.unwrap(), None, "given back once");
    let (attempt, run_outcome): (i32, Option<String>) =
        sqlx::query_as("SELECT j.attempt, r.outcome FROM jobs j JOIN job_runs r ON r.claim_id = $2 WHERE j.id = $1")
            .bind(ids[0])
            .bind(first.claim_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((attempt, run_outcome.as_deref()), (1, Some("lapsed")), "the lapsed attempt counts");
    // The second attempt lapses too: no attempts left, it fails as `lost`.
    let LimitedClaim::Claimed(second) = claim(&pool, ids[0]).await else { panic!("requeued, due now") };
    assert_eq!(store::give_back_lapsed(&pool, ids[0], second.claim_id).await.unwrap(), Some(Status::Failed));
    let kind: String = sqlx::query_scalar("SELECT error->>'kind' FROM jobs WHERE id = $1")
        .bind(ids[0])
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kind, "lost");
    // A cancel asked during the run: it ends cancelled.
    let LimitedClaim::Claimed(other) = claim(&pool, ids[1]).await else { panic!() };
    sqlx::query("UPDATE jobs SET cancel_requested = true WHERE id = $1").bind(ids[1]).execute(&pool).await.unwrap();
    assert_eq!(store::give_back_lapsed(&pool, ids[1], other.claim_id).await.unwrap(), Some(Status::Cancelled));
}

#[sqlx::test]
async fn a_limited_claim_that_waited_for_its_key_still_gets_its_whole_lease(pool: PgPool) {
    let limit = Limit::new("solo").concurrency(1).on(["noop"]);
    let ids = seed(&pool, &limit, "alice", 1).await;
    // Another claim holds the key's lock (as under a crowd of deliveries for one key).
    sqlx::query("INSERT INTO limit_keys (key) VALUES ('solo')").execute(&pool).await.unwrap();
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("SELECT key FROM limit_keys WHERE key = 'solo' FOR UPDATE").execute(&mut *blocker).await.unwrap();
    let claiming = tokio::spawn({
        let pool = pool.clone();
        let id = ids[0];
        async move { claim(&pool, id).await }
    });
    // The event: the claim is waiting on the lock.
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%limit_keys%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    // Hold it a measurable while, then let it go.
    sqlx::query("SELECT pg_sleep(0.3)").execute(&mut *blocker).await.unwrap();
    blocker.commit().await.unwrap();
    let LimitedClaim::Claimed(run) = claiming.await.unwrap() else { panic!("the key was free") };
    // The claim's transaction began before the wait (`started_at`); its lease runs from the
    // claim statement, after it.
    let lease_beyond_start: f64 =
        sqlx::query_scalar("SELECT extract(epoch FROM lease_until - started_at)::float8 FROM jobs WHERE id = $1")
            .bind(run.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        lease_beyond_start >= LEASE.as_secs_f64() + 0.3,
        "the lease ({lease_beyond_start} s from the transaction's start) lost the time spent waiting"
    );
}
