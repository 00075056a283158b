//! Lifecycle defects under faults and hostile input, each shown against real Postgres and the
//! real emulator: poison jobs, unwritable outputs, the relay's locks, unknown functions,
//! idempotency keys that outlive their retention, a restarted broker, dropped push connections
//! and the hot queries' plans on a large table.

use std::time::Duration;

use reqwest::StatusCode;
use runq::dispatch::{self, Dispatcher, PubSubSettings};
use runq::store;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::common::{counts, start_api, token};
use crate::e2e::{options, stack, stack_with};
use crate::e2e_faults::emulator_token;

fn id(job: &Value) -> String {
    job["id"].as_str().unwrap().to_owned()
}

/// Inserts `n` queued jobs routed to a queue whose topic doesn't exist: Pub/Sub refuses every
/// publish of them (NOT_FOUND), like a message with an attribute it rejects.
async fn insert_poison(pool: &PgPool, n: i64) {
    sqlx::query(
        "INSERT INTO jobs (id, owner, function, priority, args, status, max_attempts, queue, run_after)
         SELECT gen_random_uuid(), 'poison', 'noop', 'medium', '{}', 'queued', 3, 'ghost', now() - interval '1 minute'
         FROM generate_series(1, $1)",
    )
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

#[sqlx::test]
async fn poisoned_jobs_do_not_hold_back_ordinary_delayed_or_retried_ones(pool: PgPool) {
    insert_poison(&pool, 1000).await;
    let s = stack(&pool).await;
    let ordinary = s.submit(json!({"function": "noop"})).await;
    let delayed = s.submit(json!({"function": "noop", "delay_seconds": 1})).await;
    let retried = s.submit(json!({"function": "fail", "args": {"times": 1}})).await;
    for job in [&ordinary, &delayed, &retried] {
        let done = s.wait_until(&id(job), Duration::from_secs(30), |j| j["finished_at"].is_string()).await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    // The poisoned jobs were tried and each backs off alone; none of the good ones was blamed.
    let (tried, blamed): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE owner = 'poison' AND publish_failures > 0 AND run_after > now()),
                count(*) FILTER (WHERE owner <> 'poison' AND publish_failures > 0)
         FROM jobs",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(tried > 0, "the relay refused and backed off poisoned jobs");
    assert_eq!(blamed, 0, "a good job batched with a poisoned one is not counted against");
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn a_refused_job_backs_off_alone_then_fails_as_unpublishable(pool: PgPool) {
    insert_poison(&pool, 1).await;
    let job: Uuid = sqlx::query_scalar("SELECT id FROM jobs").fetch_one(&pool).await.unwrap();
    let due = || async {
        sqlx::query_as::<_, (String, i32, f64)>(
            "SELECT status, publish_failures, extract(epoch FROM run_after - now())::float8 FROM jobs",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let (backoff, cap) = (Duration::from_secs(1), Duration::from_secs(4));
    // Pub/Sub unreachable: not the job's fault, nothing counted, due again at once.
    runq::maintenance::relay::publish_failed(&pool, &[job], &[], 3, backoff, cap).await.unwrap();
    let (status, failures, wait) = due().await;
    assert_eq!((status.as_str(), failures), ("queued", 0));
    assert!(wait < 0.0);
    // Refused: 1 s, then 2 s.
    let mut waits = Vec::new();
    for _ in 0..2 {
        runq::maintenance::relay::publish_failed(&pool, &[], &[(job, "NOT_FOUND".into())], 3, backoff, cap)
            .await
            .unwrap();
        let (status, _, wait) = due().await;
        assert_eq!(status, "queued");
        waits.push(wait);
    }
    assert!((0.5..=1.0).contains(&waits[0]) && (1.5..=2.0).contains(&waits[1]), "{waits:?}");
    runq::maintenance::relay::publish_failed(&pool, &[], &[(job, "NOT_FOUND: no\0topic".into())], 3, backoff, cap)
        .await
        .unwrap();
    let (status, error): (String, Value) =
        sqlx::query_as("SELECT status, error FROM jobs").fetch_one(&pool).await.unwrap();
    assert_eq!(status, "failed");
    assert_eq!(error["kind"], "unpublishable", "{error}");
    assert!(error["message"].as_str().unwrap().contains("NOT_FOUND"), "{error}");
}

#[sqlx::test]
async fn outputs_postgres_cannot_store_are_recorded_not_looped(pool: PgPool) {
    let s = stack(&pool).await;
    let result = s.submit(json!({"function": "nul", "args": {"into": "result"}})).await;
    let error = s.submit(json!({"function": "nul", "args": {"into": "error"}})).await;
    let progress = s.submit(json!({"function": "nul", "args": {"into": "progress"}})).await;
    let result = s.wait_until(&id(&result), Duration::from_secs(30), |j| j["finished_at"].is_string()).await;
    assert_eq!((result["status"].as_str(), result["attempt"].as_i64()), (Some("failed"), Some(1)), "{result}");
    assert_eq!(result["error"]["kind"], "invalid_result");
    let error = s.wait_until(&id(&error), Duration::from_secs(30), |j| j["finished_at"].is_string()).await;
    assert_eq!((error["status"].as_str(), error["attempt"].as_i64()), (Some("failed"), Some(1)), "{error}");
    assert_eq!(error["error"]["message"], "bad\u{FFFD}thing");
    let progress = s.wait_until(&id(&progress), Duration::from_secs(30), |j| j["finished_at"].is_string()).await;
    assert_eq!((progress["status"].as_str(), progress["attempt"].as_i64()), (Some("succeeded"), Some(1)));
    assert_eq!(progress["message"], "half\u{FFFD}way");
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn the_relay_holds_no_row_lock_while_it_publishes(pool: PgPool) {
    // A "Pub/Sub" that accepts connections and never answers: every publish hangs until its timeout.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
            let _ = accepted_tx.send(());
        }
    });
    sqlx::query(
        "INSERT INTO jobs (id, owner, function, priority, args, status, max_attempts)
         VALUES (gen_random_uuid(), 'a', 'noop', 'medium', '{}', 'queued', 3)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let settings = PubSubSettings {
        emulator_host: Some(addr.to_string()),
        project: "p".into(),
        topic_prefix: "runq".into(),
        redispatch_after: dispatch::DEFAULT_REDISPATCH_AFTER,
    };
    let dispatcher = Dispatcher::connect(&settings).await.unwrap();
    let relay = tokio::spawn({
        let pool = pool.clone();
        async move { runq::maintenance::relay::run_once(&pool, &dispatcher, dispatch::DEFAULT_REDISPATCH_AFTER).await }
    });
    accepted.recv().await.expect("the relay is publishing");
    // While the publish hangs, a claim of that job (or a cancel) must not wait on it.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL lock_timeout = '1s'").execute(&mut *tx).await.unwrap();
    let claimed = sqlx::query("UPDATE jobs SET status = 'running', attempt = attempt + 1 WHERE status = 'queued'")
        .execute(&mut *tx)
        .await
        .expect("the row is not locked by the relay's publish");
    assert_eq!(claimed.rows_affected(), 1);
    tx.rollback().await.unwrap();
    let report = relay.await.unwrap().unwrap();
    assert_eq!((report.found, report.published), (1, 0));
    // The failed publish was undone: the job is due for the next pass.
    let dispatched: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT dispatched_at FROM jobs").fetch_one(&pool).await.unwrap();
    assert_eq!(dispatched, None);
}

#[sqlx::test]
async fn a_job_no_worker_can_run_is_released_with_backoff_then_fails(pool: PgPool) {
    let s = stack(&pool).await;
    // A function this worker version doesn't have (a rolling deploy, or one removed).
    let job: Uuid = sqlx::query_scalar(
        "INSERT INTO jobs (id, owner, function, priority, args, status, max_attempts)
         VALUES (gen_random_uuid(), 'e2e', 'gone', 'medium', '{}', 'queued', 5) RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let job_id = job.to_string();
    // The relay publishes it; a worker claims it, can't run it, and gives it back with a backoff.
    let first = s.wait_until(&job_id, Duration::from_secs(30), |j| j["status"] == "queued" && j["attempt"] == 0).await;
    let row = || async {
        sqlx::query_as::<_, (String, i32, i32, bool)>(
            "SELECT status, attempt, unknown_function_rounds, run_after > now() + interval '5 seconds' FROM jobs",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let mut seen = row().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.2 == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never released: {first}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = row().await;
    }
    assert_eq!(seen, ("queued".into(), 0, 1, true), "released, attempt given back, due after a backoff");
    s.dev.shutdown().await;
    // The bound: the remaining rounds, driven directly.
    for round in 2..=runq::worker::MAX_UNKNOWN_FUNCTION_ROUNDS {
        sqlx::query("UPDATE jobs SET run_after = now()").execute(&pool).await.unwrap();
        let claimed = store::claim(&pool, job, "w", Duration::from_secs(30)).await.unwrap().unwrap();
        let status = store::release_unknown_function(
            &pool,
            job,
            claimed.claim_id,
            runq::worker::MAX_UNKNOWN_FUNCTION_ROUNDS,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        let want = if round == runq::worker::MAX_UNKNOWN_FUNCTION_ROUNDS { "failed" } else { "queued" };
        assert_eq!(status.map(|s| s.as_str().to_owned()), Some(want.to_owned()));
    }
    let error: Value = sqlx::query_scalar("SELECT error FROM jobs").fetch_one(&pool).await.unwrap();
    assert_eq!(error["kind"], "unknown_function", "{error}");
}

#[sqlx::test]
async fn an_idempotency_key_lives_as_long_as_its_job(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let submit = || {
        api.http
            .post(api.url("/jobs"))
            .bearer_auth(token("alice"))
            .header("Idempotency-Key", "order-7")
            .json(&json!({"function": "noop", "delay_seconds": 2_000_000}))
            .send()
    };
    let first = submit().await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    // The key's retention passed, but its job (delayed for weeks) is still there.
    sqlx::query("UPDATE idempotency_keys SET expires_at = now() - interval '1 day'").execute(&pool).await.unwrap();
    let again = submit().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK, "the retry returns the first job");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(counts(&pool).await, (1, 1));
    // Once the job is gone the key may be reused.
    sqlx::query("DELETE FROM jobs").execute(&pool).await.unwrap();
    assert_eq!(submit().await.unwrap().status(), StatusCode::ACCEPTED);
}

#[sqlx::test]
async fn delays_are_measured_by_the_database_clock(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    for (delay, want_ms) in [(None, 0.0), (Some(90.5), 90_500.0)] {
        let mut body = json!({"function": "noop"});
        if let Some(d) = delay {
            body["delay_seconds"] = json!(d);
        }
        let resp = api.http.post(api.url("/jobs")).bearer_auth(token("a")).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        let job: Value = resp.json().await.unwrap();
        // Both times come from one statement's now(): no process clock in between.
        let gap: f64 = sqlx::query_scalar(
            "SELECT extract(epoch FROM run_after - created_at)::float8 * 1000 FROM jobs WHERE id = $1::uuid",
        )
        .bind(id(&job))
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!((gap - want_ms).abs() < 0.01, "{delay:?}: {gap} ms");
    }
}

#[sqlx::test]
async fn a_fresh_dev_emulator_republishes_every_queued_job(pool: PgPool) {
    // Jobs whose messages lived in the previous (killed) embedded emulator: marked dispatched.
    sqlx::query(
        "INSERT INTO jobs (id, owner, function, priority, args, status, max_attempts, dispatched_at)
         SELECT gen_random_uuid(), 'e2e', 'noop', 'medium', '{}', 'queued', 3, now() - interval '1 second'
         FROM generate_series(1, 50)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let s = stack(&pool).await;
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM jobs").fetch_all(&pool).await.unwrap();
    for job in ids {
        let done = s.wait_until(&job.to_string(), Duration::from_secs(30), |j| j["finished_at"].is_string()).await;
        assert_eq!(done["status"], "succeeded");
    }
    s.dev.shutdown().await;
}

#[sqlx::test]
async fn a_dropped_push_connection_does_not_orphan_the_run(pool: PgPool) {
    let mut opts = options(&pool);
    // Deliveries come only from this test.
    opts.sweep_every = Duration::from_secs(3600);
    let s = stack_with(opts).await;
    let (_, worker_url) = s.dev.worker_urls.iter().find(|(q, _)| q == "medium").unwrap().clone();
    let token = emulator_token(&s.dev.emulator_host(), &worker_url, "drop").await;
    let job: Uuid = sqlx::query_scalar(
        r#"INSERT INTO jobs (id, owner, function, priority, args, status, max_attempts, dispatched_at)
           VALUES (gen_random_uuid(), 'e2e', 'sleep', 'medium', '{"seconds": 2, "steps": 4}', 'queued', 3, now())
           RETURNING id"#,
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let data = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!(r#"{{"job_id":"{job}","attempt":0}}"#))
    };
    let body =
        format!(r#"{{"message":{{"data":"{data}","messageId":"1"}},"subscription":"projects/p/subscriptions/s"}}"#);
    // The caller gives up (Pub/Sub's deadline passed) while the run is going.
    let push = s
        .http
        .post(&worker_url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(body)
        .timeout(Duration::from_millis(700))
        .send()
        .await;
    assert!(push.is_err_and(|e| e.is_timeout()), "the push connection was dropped mid-run");
    // Lease is 3 s: an orphaned run would stop heartbeating, be reaped and run a second time.
    let done = s.wait_until(&job.to_string(), Duration::from_secs(30), |j| j["finished_at"].is_string()).await;
    assert_eq!((done["status"].as_str(), done["attempt"].as_i64()), (Some("succeeded"), Some(1)), "{done}");
    let outcomes: Vec<String> =
        sqlx::query_scalar("SELECT outcome FROM job_runs WHERE job_id = $1").bind(job).fetch_all(&pool).await.unwrap();
    assert_eq!(outcomes, vec!["succeeded"], "one run, recorded");
    s.dev.shutdown().await;
}

/// The plan of `sql` (EXPLAIN, JSON), flattened to "node type on relation using index" lines.
async fn plan(pool: &PgPool, sql: &str) -> Vec<String> {
    let plan: Value = sqlx::query_scalar(&format!("EXPLAIN (FORMAT JSON) {sql}")).fetch_one(pool).await.unwrap();
    fn walk(node: &Value, out: &mut Vec<String>) {
        out.push(format!(
            "{} on {} using {}",
            node["Node Type"].as_str().unwrap_or(""),
            node["Relation Name"].as_str().unwrap_or("-"),
            node["Index Name"].as_str().unwrap_or("-")
        ));
        for child in node["Plans"].as_array().into_iter().flatten() {
            walk(child, out);
        }
    }
    let mut out = Vec::new();
    walk(&plan[0]["Plan"], &mut out);
    out
}

/// Rows of the hot-query test: 1M finished jobs, a backlog of 100k published but unclaimed
/// ones, and a few of each kind the maintenance queries look for.
const FINISHED: i64 = 1_000_000;
const BACKLOG: i64 = 100_000;

#[sqlx::test]
async fn maintenance_queries_stay_index_scans_on_a_million_rows(pool: PgPool) {
    // Loading is faster with the indexes built afterwards, in bulk, from their own definitions.
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT indexname::text, indexdef FROM pg_indexes
         WHERE tablename IN ('jobs', 'idempotency_keys') AND indexname NOT LIKE '%pkey'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for (name, _) in &indexes {
        sqlx::query(&format!("DROP INDEX {name}")).execute(&pool).await.unwrap();
    }
    sqlx::query(
        "INSERT INTO jobs (id, owner, function, priority, args, status, max_attempts, attempt, finished_at, created_at)
         SELECT gen_random_uuid(), 'o' || (i % 100), 'noop', 'medium', '{}', 'succeeded', 3, 1,
                now() - interval '1 hour', now() - interval '2 hours'
         FROM generate_series(1, $1) i",
    )
    .bind(FINISHED)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO jobs (id, owner, function, priority, args, status, max_attempts, dispatched_at)
         SELECT gen_random_uuid(), 'o', 'noop', 'medium', '{}', 'queued', 3, now() FROM generate_series(1, $1)",
    )
    .bind(BACKLOG)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO idempotency_keys (owner, key, request_hash, job_id, expires_at)
         SELECT owner, id::text, '\\x00', id, now() + interval '1 day' FROM jobs LIMIT 200000",
    )
    .execute(&pool)
    .await
    .unwrap();
    for (_, definition) in &indexes {
        sqlx::query(definition).execute(&pool).await.unwrap();
    }
    sqlx::query("ANALYZE jobs").execute(&pool).await.unwrap();
    sqlx::query("ANALYZE idempotency_keys").execute(&pool).await.unwrap();

    // The statements below are the maintenance queries of src/maintenance, shape for shape.
    let cases = [
        (
            "relay: never published",
            "SELECT id FROM jobs WHERE status = 'queued' AND dispatched_at IS NULL AND run_after <= now()
               AND NOT cancel_requested ORDER BY run_after LIMIT 500 FOR UPDATE SKIP LOCKED",
            "jobs_relay_undispatched",
        ),
        (
            "relay: published and unclaimed too long",
            "SELECT id FROM jobs WHERE status = 'queued' AND dispatched_at < now() - make_interval(secs => 600)
               AND run_after <= now() AND NOT cancel_requested ORDER BY dispatched_at LIMIT 500 FOR UPDATE SKIP LOCKED",
            "jobs_relay_stale",
        ),
        (
            "retry promotion",
            "SELECT id FROM jobs WHERE status = 'retrying' AND run_after <= now() ORDER BY run_after LIMIT 5000
               FOR UPDATE SKIP LOCKED",
            "jobs_retry_due",
        ),
        (
            "reaper",
            "SELECT id, claim_id FROM jobs WHERE status = 'running' AND lease_until < now() ORDER BY lease_until
               LIMIT 1000 FOR UPDATE SKIP LOCKED",
            // With no run in flight the planner may pick the status index instead: both read
            // only `running` entries.
            "jobs_running_lease|jobs_status_id",
        ),
        (
            "cleanup: keys of deleted jobs",
            "UPDATE idempotency_keys k SET expires_at = now() FROM (SELECT gen_random_uuid() AS id) doomed
               WHERE k.job_id = doomed.id",
            "idempotency_keys_job",
        ),
    ];
    for (what, sql, index) in cases {
        let nodes = plan(&pool, sql).await;
        assert!(nodes.iter().all(|n| !n.starts_with("Seq Scan")), "{what}: {nodes:#?}");
        let uses = |index: &str| nodes.iter().any(|n| n.ends_with(&format!("using {index}")));
        assert!(index.split('|').any(uses), "{what} uses {index}: {nodes:#?}");
    }
}
