//! The dashboard for acting: `/dashboard/functions` (exact numbers over a known set of runs),
//! `/dashboard/signals` (each count, and its link listing exactly those jobs through `GET
//! /jobs`), `/dashboard/workers`, the new `GET /jobs` filters (each one's matches, misses and
//! 422), the statement timeout of an unindexed search, and a bulk operation on such a filter.
//! Real API over a socket, real Postgres; rows are inserted as runs would have left them.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::common::{TestApi, admin_token, start_api, start_api_over, token};

async fn get(api: &TestApi, path: &str, bearer: &str) -> (StatusCode, Value) {
    let resp = api.http.get(api.url(path)).bearer_auth(bearer).send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A job row; `extra` sets more columns (`column = value` SQL, after the insert).
async fn job(pool: &PgPool, function: &str, status: &str, args: Value, extra: &str) -> Uuid {
    let id = Uuid::now_v7();
    let finished = matches!(status, "succeeded" | "failed" | "cancelled");
    sqlx::query(
        "INSERT INTO jobs (id, owner, function, priority, args, status, attempt, max_attempts, finished_at, run_after)
         VALUES ($1, 'alice', $2, 'medium', $3, $4, $5, 3, CASE WHEN $6 THEN now() END,
                 now() + interval '1 hour')",
    )
    .bind(id)
    .bind(function)
    .bind(args)
    .bind(status)
    .bind(if status == "queued" { 0 } else { 1 })
    .bind(finished)
    .execute(pool)
    .await
    .unwrap();
    if !extra.is_empty() {
        sqlx::query(&format!("UPDATE jobs SET {extra} WHERE id = $1")).bind(id).execute(pool).await.unwrap();
    }
    id
}

/// A finished run of `job` by `worker`: it ended `ago_ms` before now and lasted `ms`.
async fn run(pool: &PgPool, job: Uuid, worker: &str, ago_ms: i64, ms: i64, outcome: &str, kind: Option<&str>) {
    let error = kind.map(|k| json!({"kind": k, "message": "x", "retryable": true}));
    sqlx::query(
        "INSERT INTO job_runs (claim_id, job_id, attempt, worker_id, started_at, finished_at, outcome, error)
         SELECT gen_random_uuid(), $1, 1, $2, t - make_interval(secs => $4 / 1000.0), t, $5, $6
         FROM (SELECT now() - make_interval(secs => $3 / 1000.0) AS t) AS at",
    )
    .bind(job)
    .bind(worker)
    .bind(ago_ms as f64)
    .bind(ms as f64)
    .bind(outcome)
    .bind(error)
    .execute(pool)
    .await
    .unwrap();
}

/// The ids `GET {path}` lists (every page), with an admin token.
async fn listed(api: &TestApi, path: &str) -> BTreeSet<Uuid> {
    let (status, body) = get(api, path, &admin_token("ops")).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    assert!(body["next_cursor"].is_null(), "one page: {body}");
    body["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().parse().unwrap()).collect()
}

fn set(ids: &[Uuid]) -> BTreeSet<Uuid> {
    ids.iter().copied().collect()
}

/// A 422 naming `field`.
async fn refused(api: &TestApi, path: &str, field: &str) -> Value {
    let (status, body) = get(api, path, &admin_token("ops")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "GET {path}: {body}");
    assert_eq!(body["field"], field, "GET {path}: {body}");
    assert_eq!(body["type"], "https://runq.dev/problems/invalid-request");
    body
}

fn close(a: &Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() < 0.01)
}

#[sqlx::test]
async fn function_stats_are_exact_for_a_known_set_of_runs(pool: PgPool) {
    // report: ten runs in the last 15 minutes lasting 100, 200, ..., 1000 ms; two retried on a
    // timeout, one reaped (lost), the rest succeeded; one still running (not counted).
    let report = job(&pool, "report", "running", json!({}), "").await;
    for i in 1..=10 {
        let (outcome, kind) = match i {
            3 | 7 => ("retrying", Some("timeout")),
            5 => ("reaped", None),
            _ => ("succeeded", None),
        };
        run(&pool, report, "w-1", i * 60_000, i * 100, outcome, kind).await;
    }
    sqlx::query(
        "INSERT INTO job_runs (claim_id, job_id, attempt, worker_id, started_at) VALUES (gen_random_uuid(), $1, 11, 'w-1', now())",
    )
    .bind(report)
    .execute(&pool)
    .await
    .unwrap();
    // echo: one run of 50 ms 2 minutes ago, one failed run of 5 s 2 hours ago (only in 24h).
    let echo = job(&pool, "echo", "failed", json!({}), "").await;
    run(&pool, echo, "w-2", 120_000, 50, "succeeded", None).await;
    run(&pool, echo, "w-2", 7_200_000, 5000, "failed", Some("error")).await;

    let api = start_api(pool).await;
    let admin = admin_token("ops");
    for path in ["/dashboard/functions", "/dashboard/functions?window=15m"] {
        let (status, body) = get(&api, path, &admin).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["window"], "15m");
        let fns = body["functions"].as_array().unwrap();
        assert_eq!(fns.len(), 2, "{body}");
        let (e, r) = (&fns[0], &fns[1]);
        assert_eq!((e["function"].as_str(), r["function"].as_str()), (Some("echo"), Some("report")));
        assert_eq!(r["runs"], 10);
        assert!(close(&r["runs_per_minute"], 10.0 / 15.0), "{r}");
        assert!(close(&r["duration_ms"]["p50"], 500.0), "{r}");
        assert!(close(&r["duration_ms"]["p95"], 1000.0), "{r}");
        assert!(close(&r["duration_ms"]["p99"], 1000.0), "{r}");
        assert!(close(&r["failure_rate"], 0.3), "{r}");
        assert_eq!(r["top_errors"], json!([{"kind": "timeout", "count": 2}, {"kind": "lost", "count": 1}]));
        assert_eq!(e["runs"], 1);
        assert!(close(&e["duration_ms"]["p50"], 50.0) && close(&e["failure_rate"], 0.0), "{e}");
        assert_eq!(e["top_errors"], json!([]));
    }
    let (_, hour) = get(&api, "/dashboard/functions?window=1h", &admin).await;
    assert_eq!(hour["functions"][0]["runs"], 1, "{hour}");
    assert!(close(&hour["functions"][1]["runs_per_minute"], 10.0 / 60.0), "{hour}");
    let (_, day) = get(&api, "/dashboard/functions?window=24h", &admin).await;
    let e = &day["functions"][0];
    assert_eq!((e["function"].as_str(), e["runs"].as_i64()), (Some("echo"), Some(2)), "{day}");
    assert!(close(&e["duration_ms"]["p50"], 50.0) && close(&e["duration_ms"]["p95"], 5000.0), "{e}");
    assert!(close(&e["failure_rate"], 0.5), "{e}");
    assert_eq!(e["top_errors"], json!([{"kind": "error", "count": 1}]));

    // The window is one of three; anything else names them. Admins only.
    for bad in ["2h", "15", "", "15M"] {
        let body = refused(&api, &format!("/dashboard/functions?window={bad}"), "window").await;
        assert!(body["detail"].as_str().unwrap().contains("15m, 1h or 24h"), "{body}");
        refused(&api, &format!("/dashboard/workers?window={bad}"), "window").await;
    }
    refused(&api, "/dashboard/functions?windw=1h", "query").await;
    for path in ["/dashboard/functions", "/dashboard/signals", "/dashboard/workers"] {
        let (status, body) = get(&api, path, &token("alice")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert_eq!(api.http.get(api.url(path)).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
}

#[sqlx::test]
async fn function_stats_read_only_the_window(pool: PgPool) {
    // A long history and a short window: the planner range-scans the window's index.
    let old = job(&pool, "report", "succeeded", json!({}), "").await;
    sqlx::query(
        "INSERT INTO job_runs (claim_id, job_id, attempt, worker_id, started_at, finished_at, outcome)
         SELECT gen_random_uuid(), $1, 1, 'w', now() - make_interval(days => 2, secs => i),
                now() - make_interval(days => 2, secs => i) + interval '1 second', 'succeeded'
         FROM generate_series(1, 20000) AS i",
    )
    .bind(old)
    .execute(&pool)
    .await
    .unwrap();
    run(&pool, old, "w", 1000, 10, "succeeded", None).await;
    sqlx::query("ANALYZE job_runs").execute(&pool).await.unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT j.function, count(*) FROM job_runs r JOIN jobs j ON j.id = r.job_id
         WHERE r.finished_at IS NOT NULL AND r.finished_at >= now() - make_interval(secs => 900.0)
         GROUP BY j.function",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(plan.iter().any(|l| l.contains("job_runs_finished")), "the window's index: {plan:#?}");
    let api = start_api(pool).await;
    let (_, body) = get(&api, "/dashboard/functions", &admin_token("ops")).await;
    assert_eq!(body["functions"][0]["runs"], 1, "{body}");
}

#[sqlx::test]
async fn signals_count_and_link_exactly_their_jobs(pool: PgPool) {
    let none = json!({});
    // Due in queue medium (the priority's), two; one not due yet; one due in queue heavy.
    let due1 = job(&pool, "report", "queued", none.clone(), "run_after = now() - interval '10 minutes'").await;
    let due2 = job(&pool, "report", "queued", none.clone(), "run_after = now() - interval '1 minute'").await;
    let _later = job(&pool, "report", "queued", none.clone(), "").await;
    let heavy =
        job(&pool, "render", "queued", none.clone(), "queue = 'heavy', run_after = now() - interval '5 seconds'").await;
    // Held on a limit key (two) and on a pause (one); a cancelled job that still names its key.
    let held1 = job(&pool, "report", "queued", none.clone(), "held_on = 'reports:acme'").await;
    let held2 = job(&pool, "report", "queued", none.clone(), "held_on = 'reports:acme'").await;
    let paused = job(&pool, "report", "queued", none.clone(), "held_on = 'pause:queue:low'").await;
    let _gone = job(&pool, "report", "cancelled", none.clone(), "held_on = 'reports:acme'").await;
    // Publish failures: one still queued, one that failed for good.
    let refused_once = job(&pool, "report", "queued", none.clone(), "publish_failures = 2").await;
    let _unpublishable = job(&pool, "report", "failed", none.clone(), "publish_failures = 5").await;
    // Leases: one lost, one live.
    let lost =
        job(&pool, "report", "running", none.clone(), "worker_id = 'w', lease_until = now() - interval '1 minute'")
            .await;
    let _live =
        job(&pool, "report", "running", none.clone(), "worker_id = 'w', lease_until = now() + interval '1 minute'")
            .await;
    // Dead letters: one requeued, one failed undeliverable.
    let requeued = job(&pool, "report", "queued", none.clone(), "dead_letters = 1").await;
    let undeliverable = job(
        &pool,
        "report",
        "failed",
        none.clone(),
        r#"dead_letters = 5, error = '{"kind": "undeliverable", "message": "m", "retryable": false}'"#,
    )
    .await;

    let api = start_api(pool).await;
    let (status, body) = get(&api, "/dashboard/signals", &admin_token("ops")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let signals = body["signals"].as_array().unwrap();
    let kinds: Vec<(&str, i64)> =
        signals.iter().map(|s| (s["kind"].as_str().unwrap(), s["count"].as_i64().unwrap())).collect();
    assert_eq!(
        kinds,
        [
            ("queue_due", 1),
            ("queue_due", 2),
            ("held", 3),
            ("held_on_limit", 2),
            ("held_on_pause", 1),
            ("publish_failing", 1),
            ("lease_expired", 1),
            ("dead_lettered", 2),
            ("undeliverable", 1),
        ],
        "{body}"
    );
    let medium = &signals[1];
    assert!(medium["label"].as_str().unwrap().contains("medium"), "{medium}");
    let age = medium["oldest_age_secs"].as_f64().unwrap();
    assert!((599.0..700.0).contains(&age), "the oldest due job waited 10 minutes: {medium}");
    let expected = [
        set(&[heavy]),
        set(&[due1, due2]),
        set(&[held1, held2, paused]),
        set(&[held1, held2]),
        set(&[paused]),
        set(&[refused_once]),
        set(&[lost]),
        set(&[requeued, undeliverable]),
        set(&[undeliverable]),
    ];
    for (signal, want) in signals.iter().zip(expected) {
        let link = signal["link"].as_str().unwrap();
        assert!(link.starts_with("/jobs?"), "{signal}");
        assert_eq!(listed(&api, link).await, want, "{signal}");
        assert_eq!(signal["count"].as_i64().unwrap() as usize, want.len());
    }
    assert_eq!(signals[4]["link"], "/jobs?held_on=pause%3Aqueue%3Alow");
}

#[sqlx::test]
async fn workers_show_what_they_finished_and_run(pool: PgPool) {
    let done = job(&pool, "report", "succeeded", json!({}), "").await;
    for i in 1..=3 {
        run(&pool, done, "w-a", i * 60_000, 100, "succeeded", None).await;
    }
    let now_running = job(
        &pool,
        "render",
        "running",
        json!({}),
        "worker_id = 'w-a', started_at = now() - interval '30 seconds', lease_until = now() + interval '1 minute'",
    )
    .await;
    run(&pool, done, "w-b", 7_200_000, 100, "succeeded", None).await;
    let stranded = job(
        &pool,
        "report",
        "running",
        json!({}),
        "worker_id = 'w-c', started_at = now() - interval '5 minutes', lease_until = now() - interval '1 minute'",
    )
    .await;
    let _long_gone = job(
        &pool,
        "report",
        "running",
        json!({}),
        "worker_id = 'w-d', started_at = now() - interval '3 hours', lease_until = now() - interval '2 hours'",
    )
    .await;

    let api = start_api(pool).await;
    let (status, body) = get(&api, "/dashboard/workers", &admin_token("ops")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["window"], "15m");
    let workers = body["workers"].as_array().unwrap();
    let ids: Vec<&str> = workers.iter().map(|w| w["worker_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["w-a", "w-c"], "latest seen first: {body}");
    let (a, c) = (&workers[0], &workers[1]);
    assert_eq!(a["finished"], 3);
    assert_eq!(a["running"].as_array().unwrap().len(), 1, "{a}");
    assert_eq!(a["running"][0]["id"], now_running.to_string());
    assert_eq!(a["running"][0]["function"], "render");
    assert_eq!(a["running"][0]["lease_expired"], false);
    let last_seen: chrono::DateTime<chrono::Utc> = a["last_seen"].as_str().unwrap().parse().unwrap();
    assert!(chrono::Utc::now() - last_seen < chrono::Duration::seconds(60), "its latest claim: {a}");
    assert_eq!(
        (c["finished"].as_i64(), c["running"][0]["id"].as_str()),
        (Some(0), Some(stranded.to_string().as_str()))
    );
    assert_eq!(c["running"][0]["lease_expired"], true);

    let (_, day) = get(&api, "/dashboard/workers?window=24h", &admin_token("ops")).await;
    let ids: BTreeSet<&str> =
        day["workers"].as_array().unwrap().iter().map(|w| w["worker_id"].as_str().unwrap()).collect();
    assert_eq!(ids, BTreeSet::from(["w-a", "w-b", "w-c", "w-d"]), "{day}");
}

#[sqlx::test]
async fn job_filters_narrow_and_name_each_bad_value(pool: PgPool) {
    let err = |kind: &str, message: &str| {
        format!("error = '{}'", json!({"kind": kind, "message": message, "retryable": true}))
    };
    let a = job(
        &pool,
        "report",
        "failed",
        json!({"customer": "acme", "n": 42}),
        &err("timeout", "took 100% of 5_s budget"),
    )
    .await;
    let b =
        job(&pool, "report", "failed", json!({"customer": "globex", "n": "42"}), &err("error", "Connection REFUSED"))
            .await;
    let c = job(&pool, "echo", "succeeded", json!({"customer": "acme", "nested": {"n": 42}}), "").await;
    let d = job(&pool, "report", "queued", json!({"n": 42.0}), "held_on = 'lim:acme'").await;
    let e = job(&pool, "report", "queued", json!({}), "publish_failures = 1, run_after = now() - interval '1 minute'")
        .await;
    let f = job(&pool, "report", "queued", json!({}), "dead_letters = 2, queue = 'heavy'").await;
    let g = job(&pool, "report", "running", json!({}), "lease_until = now() - interval '1 second'").await;
    let all = set(&[a, b, c, d, e, f, g]);
    let api = start_api(pool).await;
    let but = |x: Uuid| all.iter().copied().filter(|&y| y != x).collect::<BTreeSet<_>>();

    assert_eq!(listed(&api, "/jobs").await, all);
    assert_eq!(listed(&api, &format!("/jobs?id={a}")).await, set(&[a]));
    assert_eq!(listed(&api, &format!("/jobs?id={}", Uuid::now_v7())).await, set(&[]));
    assert_eq!(listed(&api, "/jobs?error_kind=timeout").await, set(&[a]));
    assert_eq!(listed(&api, "/jobs?error_kind=panic").await, set(&[]));
    // Error text: case-insensitive, and LIKE's wildcards match only themselves.
    assert_eq!(listed(&api, "/jobs?error=refused").await, set(&[b]));
    assert_eq!(listed(&api, "/jobs?error=100%25").await, set(&[a]));
    assert_eq!(listed(&api, "/jobs?error=%25").await, set(&[a]));
    assert_eq!(listed(&api, "/jobs?error=_").await, set(&[a]));
    assert_eq!(listed(&api, "/jobs?error=5_s").await, set(&[a]));
    assert_eq!(listed(&api, "/jobs?error=5xs").await, set(&[]));
    assert_eq!(listed(&api, "/jobs?error=%5C").await, set(&[]));
    // An args field: a number matches numbers (42 = 42.0), a quoted string strings, bare text strings.
    assert_eq!(listed(&api, "/jobs?arg=customer%3Dacme").await, set(&[a, c]));
    assert_eq!(listed(&api, "/jobs?arg=customer=acme").await, set(&[a, c]));
    assert_eq!(listed(&api, "/jobs?arg=n=42").await, set(&[a, d]));
    assert_eq!(listed(&api, "/jobs?arg=n=%2242%22").await, set(&[b]));
    assert_eq!(listed(&api, "/jobs?arg=customer=initech").await, set(&[]));
    // Held, publish failures, dead letters, lost leases, queue, due.
    assert_eq!(listed(&api, "/jobs?held=true").await, set(&[d]));
    assert_eq!(listed(&api, "/jobs?held=false").await, but(d));
    assert_eq!(listed(&api, "/jobs?held_on=lim:acme").await, set(&[d]));
    assert_eq!(listed(&api, "/jobs?held_on=lim:other").await, set(&[]));
    assert_eq!(listed(&api, "/jobs?publish_failing=true").await, set(&[e]));
    assert_eq!(listed(&api, "/jobs?publish_failing=false").await, but(e));
    assert_eq!(listed(&api, "/jobs?dead_lettered=true").await, set(&[f]));
    assert_eq!(listed(&api, "/jobs?dead_lettered=false").await, but(f));
    assert_eq!(listed(&api, "/jobs?lease_expired=true").await, set(&[g]));
    assert_eq!(listed(&api, "/jobs?lease_expired=false").await, but(g));
    assert_eq!(listed(&api, "/jobs?queue=heavy").await, set(&[f]));
    assert_eq!(listed(&api, "/jobs?status=queued&queue=medium&due=true").await, set(&[e]));
    assert_eq!(listed(&api, "/jobs?status=queued&due=false").await, set(&[d, f]));
    // Combined with the filters there were, and paged.
    assert_eq!(listed(&api, "/jobs?status=failed&function=report&error=o").await, set(&[a, b]));
    let (_, first) = get(&api, "/jobs?status=failed&error=o&limit=1", &admin_token("ops")).await;
    assert_eq!(first["jobs"][0]["id"], b.to_string(), "newest first: {first}");
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) =
        get(&api, &format!("/jobs?status=failed&error=o&limit=1&cursor={cursor}"), &admin_token("ops")).await;
    assert_eq!(second["jobs"][0]["id"], a.to_string(), "{second}");
    assert!(second["next_cursor"].is_null(), "{second}");
    // Owners see only their own jobs with the same filters.
    let (_, mine) = get(&api, "/jobs?error=refused", &token("bob")).await;
    assert_eq!(mine["jobs"], json!([]), "{mine}");

    // Each bad value is a 422 naming its parameter.
    for (query, field) in [
        ("id=nope", "id"),
        ("error_kind=oops", "error_kind"),
        ("error=", "error"),
        ("error=a%00b", "error"),
        (&format!("error={}", "x".repeat(201)), "error"),
        ("arg=novalue", "arg"),
        ("arg==1", "arg"),
        ("arg=flag=true", "arg"),
        ("arg=list=[1]", "arg"),
        ("held=yes", "held"),
        ("held_on=", "held_on"),
        ("publish_failing=1", "publish_failing"),
        ("dead_lettered=TRUE", "dead_lettered"),
        ("lease_expired=", "lease_expired"),
        ("due=soon", "due"),
        ("queue=", "queue"),
        ("bogus=1", "query"),
    ] {
        let body = refused(&api, &format!("/jobs?{query}"), field).await;
        assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
    }
}

#[sqlx::test]
async fn an_unindexed_search_past_its_time_is_a_422_not_a_500(pool: PgPool) {
    // Enough failed jobs that a scan of their messages takes well over a millisecond.
    sqlx::query(
        "INSERT INTO jobs (id, owner, function, priority, args, status, attempt, max_attempts, finished_at, error)
         SELECT gen_random_uuid(), 'alice', 'report', 'low', jsonb_build_object('i', i), 'failed', 1, 1, now(),
                jsonb_build_object('kind', 'error', 'message', 'failure number ' || i, 'retryable', false)
         FROM generate_series(1, 200000) AS i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let settings = runq::api::ApiSettings {
        limits: runq::api::Limits { search_timeout: Duration::from_millis(1), ..crate::common::limits() },
        ..crate::common::settings()
    };
    let api = start_api_over(
        pool,
        runq::function::Registry::builtin(),
        runq::schedule::Schedules::builtin(),
        settings,
        runq::auth::GOOGLE_JWKS_URL,
    )
    .await;
    let admin = admin_token("ops");
    let body = refused(&api, "/jobs?error=no%20such%20text", "error").await;
    assert!(body["detail"].as_str().unwrap().contains("ran over its"), "{body}");
    refused(&api, "/jobs?arg=i=%22none%22", "arg").await;
    // A bulk dry run with the same search is cut off the same way, naming the body's field.
    let resp = api
        .http
        .post(api.url("/operations"))
        .bearer_auth(&admin)
        .json(&json!({"action": "retry", "filter": {"error": "no such text"}, "dry_run": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["field"], "filter.error", "{body}");
    // Indexed filters are not time-limited (their transaction sets no timeout).
    let (status, page) = get(&api, "/jobs?status=failed&limit=5", &admin).await;
    assert_eq!((status, page["jobs"].as_array().map(Vec::len)), (StatusCode::OK, Some(5)), "{page}");
    // The API still answers afterwards: the timeout ended the one statement, not the pool.
    let (status, _) = get(&api, "/dashboard/signals", &admin).await;
    assert_eq!(status, StatusCode::OK);
}

async fn operation_done(api: &TestApi, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, op) = get(api, &format!("/operations/{id}"), &admin_token("ops")).await;
        assert_eq!(status, StatusCode::OK, "{op}");
        if op["status"] != "running" {
            return op;
        }
        assert!(Instant::now() < deadline, "the operation finishes: {op}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test]
async fn a_bulk_operation_acts_on_exactly_what_the_filter_lists(pool: PgPool) {
    let err = |message: &str| format!("error = '{}'", json!({"kind": "error", "message": message, "retryable": true}));
    let disk1 = job(&pool, "report", "failed", json!({"customer": "acme"}), &err("disk full on /dev/sda")).await;
    let disk2 = job(&pool, "report", "failed", json!({"customer": "globex"}), &err("Disk full")).await;
    let other = job(&pool, "report", "failed", json!({"customer": "acme"}), &err("connection refused")).await;
    let held = job(&pool, "report", "queued", json!({}), "held_on = 'lim'").await;
    let free = job(&pool, "report", "queued", json!({}), "").await;
    let api = start_api(pool.clone()).await;
    let admin = admin_token("ops");
    let post = |body: Value| {
        let (http, url, admin) = (api.http.clone(), api.url("/operations"), admin.clone());
        async move { http.post(url).bearer_auth(admin).json(&body).send().await.unwrap() }
    };
    assert_eq!(listed(&api, "/jobs?error=disk%20full").await, set(&[disk1, disk2]));
    let dry = post(json!({"action": "retry", "filter": {"error": "disk full"}, "dry_run": true})).await;
    assert_eq!(dry.status(), StatusCode::OK);
    assert_eq!(dry.json::<Value>().await.unwrap(), json!({"count": 2}));
    let dry =
        post(json!({"action": "retry", "filter": {"error": "disk full", "arg": "customer=acme"}, "dry_run": true}))
            .await;
    assert_eq!(dry.json::<Value>().await.unwrap(), json!({"count": 1}));

    let started = post(json!({"action": "retry", "filter": {"error": "disk full"}})).await;
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    let op: Value = started.json().await.unwrap();
    assert_eq!(op["filter"], json!({"error": "disk full"}));
    let op = operation_done(&api, op["id"].as_str().unwrap()).await;
    assert_eq!(
        (op["status"].as_str(), op["matched"].as_i64(), op["affected"].as_i64()),
        (Some("finished"), Some(2), Some(2))
    );
    let status = |id: Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        (status(disk1).await, status(disk2).await, status(other).await),
        ("queued".into(), "queued".into(), "failed".into())
    );

    // Cancel what is held: the held job only.
    let op: Value = post(json!({"action": "cancel", "filter": {"held": true}})).await.json().await.unwrap();
    let op = operation_done(&api, op["id"].as_str().unwrap()).await;
    assert_eq!(op["affected"], 1, "{op}");
    assert_eq!((status(held).await, status(free).await), ("cancelled".into(), "queued".into()));

    // A bad filter is a 422 naming the body's field, and starts nothing.
    for (filter, field) in [
        (json!({"arg": "novalue"}), "filter.arg"),
        (json!({"id": "nope"}), "filter.id"),
        (json!({"error": ""}), "filter.error"),
        (json!({"held_on": ""}), "filter.held_on"),
    ] {
        let resp = post(json!({"action": "cancel", "filter": filter})).await;
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(resp.json::<Value>().await.unwrap()["field"], field);
    }
    let resp = post(json!({"action": "cancel", "filter": {"held": "yes"}})).await;
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "a flag is a JSON boolean");
    // A delete needs a filter, and one of the new ones is enough.
    let resp = post(json!({"action": "delete", "filter": {"dead_lettered": true}, "dry_run": true})).await;
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"count": 0}));
}

#[sqlx::test]
async fn the_page_and_the_openapi_description_offer_the_new_panels_and_filters(pool: PgPool) {
    let api = start_api(pool).await;
    let html = api.http.get(api.url("/dashboard")).send().await.unwrap().text().await.unwrap();
    for control in [
        "id=\"fn-stats\"",
        "id=\"fn-window\"",
        "id=\"signals\"",
        "id=\"workers\"",
        "id=\"f-id\"",
        "id=\"f-error\"",
        "id=\"f-arg\"",
        "id=\"act-form\"",
        "getJson('dashboard/signals')",
        "dry_run: true",
        "This will ",
    ] {
        assert!(html.contains(control), "the page has {control}");
    }
    let spec: Value = api.http.get(api.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    for path in ["/dashboard/functions", "/dashboard/signals", "/dashboard/workers"] {
        assert!(spec["paths"][path]["get"].is_object(), "GET {path} is described");
    }
    let params: BTreeSet<&str> = spec["paths"]["/jobs"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in [
        "id",
        "error_kind",
        "error",
        "arg",
        "queue",
        "due",
        "held",
        "held_on",
        "publish_failing",
        "dead_lettered",
        "lease_expired",
    ] {
        assert!(params.contains(name), "GET /jobs describes {name}: {params:?}");
        if name != "error_kind" {
            let filter = &spec["components"]["schemas"]["OperationFilter"]["properties"][name];
            assert!(filter.is_object(), "the bulk filter describes {name}");
        }
    }
    let window = &spec["paths"]["/dashboard/functions"]["get"]["parameters"][0]["schema"]["enum"];
    assert_eq!(window, &json!(["15m", "1h", "24h"]));
}

/// A bulk operation's freeze searches under a statement timeout too: one whose search can't
/// finish in time (here: it waits on a lock of `jobs`, which the timeout counts) fails, saying
/// so, instead of holding Postgres.
#[sqlx::test]
async fn a_bulk_search_that_cannot_freeze_in_time_fails_the_operation(pool: PgPool) {
    use runq::maintenance::operations::{self, Action, FREEZE_SEARCH_TIMEOUT, Filter, NewOperation};
    use runq::store::Narrowing;
    let filter = Filter {
        statuses: Action::Retry.statuses().to_vec(),
        narrow: Narrowing { error_text: Some("disk".into()), ..Narrowing::default() },
        ..Filter::default()
    };
    let new = NewOperation {
        requester: "ops",
        action: Action::Retry,
        filter: &filter,
        shown: json!({"error": "disk"}),
        key_retention: Duration::from_secs(60),
    };
    let (op, runner) = operations::create(&pool, &new).await.unwrap();
    let mut locker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE").execute(&mut *locker).await.unwrap();
    let started = Instant::now();
    let driven = operations::drive(&pool, None, op.id, runner).await.unwrap();
    locker.rollback().await.unwrap();
    assert!(!driven);
    assert!(started.elapsed() >= FREEZE_SEARCH_TIMEOUT, "it waited for its timeout");
    let op = operations::get(&pool, op.id, None).await.unwrap().unwrap();
    assert_eq!(op.status, "failed", "{op:?}");
    assert!(op.error.as_deref().is_some_and(|e| e.contains("ran over")), "{op:?}");
    assert_eq!(op.matched, None, "nothing was frozen");
}
