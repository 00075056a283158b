//! The public API over a real socket and a fresh database per test: every endpoint's success
//! path, every client error with its status and an unchanged database, idempotency, owners,
//! tokens, pagination and ETags.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::common::{AUDIENCE, SECRET, admin_token, counts, start_api, start_api_with, token};

async fn submit(api: &crate::common::TestApi, who: &str, body: Value) -> reqwest::Response {
    api.http.post(api.url("/jobs")).bearer_auth(token(who)).json(&body).send().await.unwrap()
}

async fn problem(resp: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "problem has a detail: {body}");
    body
}

#[sqlx::test]
async fn submit_then_status_detail_and_list(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let resp =
        submit(&api, "alice", json!({"function": "sleep", "args": {"seconds": 1, "steps": 2}, "priority": "high"}))
            .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let job: Value = resp.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/jobs/{id}"));
    assert_eq!(job["status"], "queued");
    assert_eq!(job["function"], "sleep");
    assert_eq!(job["priority"], "high");
    assert_eq!(job["args"], json!({"seconds": 1, "steps": 2}));
    assert_eq!(job["attempt"], 0);
    assert_eq!(job["max_attempts"], 3);

    let resp = api.http.get(api.url(&format!("{location}/status"))).bearer_auth(token("alice")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().contains_key("etag"));
    let status: Value = resp.json().await.unwrap();
    for field in [
        "id",
        "status",
        "progress",
        "message",
        "attempt",
        "max_attempts",
        "created_at",
        "started_at",
        "finished_at",
        "updated_at",
        "poll_after_ms",
    ] {
        assert!(status.get(field).is_some(), "status has {field}: {status}");
    }
    assert_eq!(status["id"], id.as_str());
    assert_eq!(status["progress"], 0.0);
    assert!(status.get("args").is_none(), "status is the small view");

    let detail: Value =
        api.http.get(api.url(&location)).bearer_auth(token("alice")).send().await.unwrap().json().await.unwrap();
    assert_eq!(detail["args"], json!({"seconds": 1, "steps": 2}));
    assert_eq!(detail["result"], Value::Null);
    assert_eq!(detail["error"], Value::Null);

    let list: Value =
        api.http.get(api.url("/jobs")).bearer_auth(token("alice")).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(list["jobs"][0]["id"], id.as_str());
    assert_eq!(list["next_cursor"], Value::Null);

    // Defaults: no args means {}, the function's priority.
    let resp = submit(&api, "alice", json!({"function": "noop"})).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let job: Value = resp.json().await.unwrap();
    assert_eq!(job["args"], json!({}));
    assert_eq!(job["priority"], "medium");

    // A delayed job is due later.
    let resp = submit(&api, "alice", json!({"function": "noop", "delay_seconds": 120, "max_attempts": 5})).await;
    let job: Value = resp.json().await.unwrap();
    let created = chrono::DateTime::parse_from_rfc3339(job["created_at"].as_str().unwrap()).unwrap();
    let due = chrono::DateTime::parse_from_rfc3339(job["run_after"].as_str().unwrap()).unwrap();
    assert!((due - created).num_seconds() >= 119, "run_after {due} is ~2 minutes after {created}");
    assert_eq!(job["max_attempts"], 5);
    assert_eq!(counts(&pool).await, (3, 0));
}

#[sqlx::test]
async fn client_errors_are_problems_and_write_nothing(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let jobs = api.url("/jobs");
    let alice = token("alice");
    let cases: Vec<(reqwest::RequestBuilder, StatusCode)> = vec![
        // Malformed JSON.
        (
            api.http.post(&jobs).bearer_auth(&alice).header("content-type", "application/json").body("{\"function\": "),
            StatusCode::BAD_REQUEST,
        ),
        // No token, a garbage token, a non-bearer scheme.
        (api.http.post(&jobs).json(&json!({"function": "noop"})), StatusCode::UNAUTHORIZED),
        (api.http.post(&jobs).bearer_auth("not.a.jwt").json(&json!({"function": "noop"})), StatusCode::UNAUTHORIZED),
        (
            api.http.post(&jobs).header("authorization", format!("Basic {alice}")).json(&json!({"function": "noop"})),
            StatusCode::UNAUTHORIZED,
        ),
        // Args over the limit (4 KiB in tests), and a body far over it.
        (
            api.http
                .post(&jobs)
                .bearer_auth(&alice)
                .json(&json!({"function": "echo", "args": {"value": "x".repeat(5000)}})),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            api.http
                .post(&jobs)
                .bearer_auth(&alice)
                .json(&json!({"function": "echo", "args": {"value": "x".repeat(100_000)}})),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        // Wrong or missing content type.
        (
            api.http
                .post(&jobs)
                .bearer_auth(&alice)
                .header("content-type", "text/plain")
                .body(r#"{"function":"noop"}"#),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (api.http.post(&jobs).bearer_auth(&alice).body(r#"{"function":"noop"}"#), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        // Unknown function, bad args, bad priority, bad attempts and delay, unknown field, wrong type.
        (api.http.post(&jobs).bearer_auth(&alice).json(&json!({"function": "nope"})), StatusCode::UNPROCESSABLE_ENTITY),
        (
            api.http.post(&jobs).bearer_auth(&alice).json(&json!({"function": "sleep", "args": {"secs": 1}})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            api.http.post(&jobs).bearer_auth(&alice).json(&json!({"function": "sleep", "args": {"seconds": -1}})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            api.http.post(&jobs).bearer_auth(&alice).json(&json!({"function": "noop", "args": [1, 2]})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            api.http.post(&jobs).bearer_auth(&alice).json(&json!({"function": "noop", "priority": "urgent"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            api.http.post(&jobs).bearer_auth(&alice).json(&json!({"function": "noop", "max_attempts": 0})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            api.http.post(&jobs).bearer_auth(&alice).json(&json!({"function": "noop", "max_attempts": 1000})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            api.http.post(&jobs).bearer_auth(&alice).json(&json!({"function": "noop", "delay_seconds": -5})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            api.http.post(&jobs).bearer_auth(&alice).json(&json!({"function": "noop", "colour": "red"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (api.http.post(&jobs).bearer_auth(&alice).json(&json!({"function": 7})), StatusCode::UNPROCESSABLE_ENTITY),
        (
            api.http.post(&jobs).bearer_auth(&alice).header("idempotency-key", "").json(&json!({"function": "noop"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        // Bad listing parameters.
        (api.http.get(api.url("/jobs?cursor=garbage")).bearer_auth(&alice), StatusCode::UNPROCESSABLE_ENTITY),
        (api.http.get(api.url("/jobs?status=done")).bearer_auth(&alice), StatusCode::UNPROCESSABLE_ENTITY),
        (api.http.get(api.url("/jobs?limit=0")).bearer_auth(&alice), StatusCode::UNPROCESSABLE_ENTITY),
        (api.http.get(api.url("/jobs?limit=many")).bearer_auth(&alice), StatusCode::UNPROCESSABLE_ENTITY),
        (api.http.get(api.url("/jobs?sort=asc")).bearer_auth(&alice), StatusCode::UNPROCESSABLE_ENTITY),
        (api.http.get(api.url("/jobs?parent=not-a-job")).bearer_auth(&alice), StatusCode::UNPROCESSABLE_ENTITY),
        // Bad and unknown ids.
        (api.http.get(api.url("/jobs/12345/status")).bearer_auth(&alice), StatusCode::UNPROCESSABLE_ENTITY),
        (api.http.get(api.url(&format!("/jobs/{}", uuid::Uuid::now_v7()))).bearer_auth(&alice), StatusCode::NOT_FOUND),
        (
            api.http.post(api.url(&format!("/jobs/{}/cancel", uuid::Uuid::now_v7()))).bearer_auth(&alice),
            StatusCode::NOT_FOUND,
        ),
        (api.http.get(api.url("/nowhere")).bearer_auth(&alice), StatusCode::NOT_FOUND),
        (api.http.delete(api.url("/jobs")).bearer_auth(&alice), StatusCode::METHOD_NOT_ALLOWED),
    ];
    for (i, (request, expected)) in cases.into_iter().enumerate() {
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status(), expected, "case {i}");
        problem(resp, expected).await;
        assert_eq!(counts(&pool).await, (0, 0), "case {i} wrote nothing");
    }
}

#[sqlx::test]
async fn unauthorized_answers_carry_a_bearer_challenge(pool: PgPool) {
    let api = start_api(pool).await;
    let resp = api.http.get(api.url("/jobs")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
}

#[sqlx::test]
async fn refused_tokens(pool: PgPool) {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let api = start_api(pool.clone()).await;
    let now = chrono::Utc::now().timestamp();
    let sign = |claims: Value, secret: &str| {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    };
    let b64 = |v: Value| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, v.to_string());
    let alg_none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(json!({"sub": "alice", "exp": now + 600, "aud": AUDIENCE}))
    );
    let refused = [
        ("expired", sign(json!({"sub": "alice", "exp": now - 3600, "aud": AUDIENCE}), SECRET)),
        ("wrong audience", sign(json!({"sub": "alice", "exp": now + 600, "aud": "someone-else"}), SECRET)),
        (
            "wrongly signed",
            sign(json!({"sub": "alice", "exp": now + 600, "aud": AUDIENCE}), "another-secret-also-long-enough-xx"),
        ),
        ("no exp", sign(json!({"sub": "alice", "aud": AUDIENCE}), SECRET)),
        ("no sub", sign(json!({"exp": now + 600, "aud": AUDIENCE}), SECRET)),
        ("alg none", alg_none),
    ];
    for (what, tok) in refused {
        let resp =
            api.http.post(api.url("/jobs")).bearer_auth(&tok).json(&json!({"function": "noop"})).send().await.unwrap();
        problem(resp, StatusCode::UNAUTHORIZED).await;
        assert_eq!(counts(&pool).await, (0, 0), "{what} wrote nothing");
    }
    let ok = sign(json!({"sub": "alice", "exp": now + 600, "aud": AUDIENCE}), SECRET);
    let resp =
        api.http.post(api.url("/jobs")).bearer_auth(&ok).json(&json!({"function": "noop"})).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
}

#[sqlx::test]
async fn idempotent_replay_and_conflict(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let send = |who: &str, key: &str, body: Value| {
        api.http.post(api.url("/jobs")).bearer_auth(token(who)).header("idempotency-key", key).json(&body).send()
    };
    let body = json!({"function": "echo", "args": {"value": {"a": 1, "b": [1, 2]}}});
    let first = send("alice", "k-1", body.clone()).await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["idempotency_key"], "k-1");

    // The same request again, even with its keys in another order: the first job, 200.
    let reordered = json!({"args": {"value": {"b": [1, 2], "a": 1}}, "function": "echo"});
    let again = send("alice", "k-1", reordered).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()["location"], format!("/jobs/{}", first["id"].as_str().unwrap()).as_str());
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);

    // Another body with the same key: 409, nothing written.
    let conflict = send("alice", "k-1", json!({"function": "echo", "args": {"value": 2}})).await.unwrap();
    problem(conflict, StatusCode::CONFLICT).await;
    assert_eq!(counts(&pool).await, (1, 1));

    // Keys are per owner: bob's k-1 is a new job.
    let bobs = send("bob", "k-1", body.clone()).await.unwrap();
    assert_eq!(bobs.status(), StatusCode::ACCEPTED);
    assert_eq!(counts(&pool).await, (2, 2));

    // Concurrent submits with one fresh key create exactly one job.
    let racers = (0..16).map(|_| send("carol", "race", body.clone()));
    let answers = futures::future::join_all(racers).await;
    let mut ids = HashSet::new();
    let mut created = 0;
    for answer in answers {
        let answer = answer.unwrap();
        if answer.status() == StatusCode::ACCEPTED {
            created += 1;
        } else {
            assert_eq!(answer.status(), StatusCode::OK);
        }
        ids.insert(answer.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
    }
    assert_eq!((created, ids.len()), (1, 1));
    assert_eq!(counts(&pool).await, (3, 3));
}

#[sqlx::test]
async fn other_owners_jobs_are_not_found_and_admins_see_all(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let job: Value = submit(&api, "alice", json!({"function": "noop"})).await.json().await.unwrap();
    let id = job["id"].as_str().unwrap();
    for path in [format!("/jobs/{id}"), format!("/jobs/{id}/status")] {
        let resp = api.http.get(api.url(&path)).bearer_auth(token("mallory")).send().await.unwrap();
        problem(resp, StatusCode::NOT_FOUND).await;
        let resp = api.http.get(api.url(&path)).bearer_auth(admin_token("root")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let resp =
        api.http.post(api.url(&format!("/jobs/{id}/cancel"))).bearer_auth(token("mallory")).send().await.unwrap();
    problem(resp, StatusCode::NOT_FOUND).await;
    let status: String = sqlx::query_scalar("SELECT status FROM jobs").fetch_one(&pool).await.unwrap();
    assert_eq!(status, "queued", "mallory's cancel changed nothing");

    let theirs: Value =
        api.http.get(api.url("/jobs")).bearer_auth(token("mallory")).send().await.unwrap().json().await.unwrap();
    assert_eq!(theirs["jobs"].as_array().unwrap().len(), 0);
    let all: Value =
        api.http.get(api.url("/jobs")).bearer_auth(admin_token("root")).send().await.unwrap().json().await.unwrap();
    assert_eq!(all["jobs"].as_array().unwrap().len(), 1);
}

#[sqlx::test]
async fn cursor_pagination_over_250_jobs(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let mut submitted = Vec::new();
    for i in 0..250 {
        let function = if i % 5 == 0 { "echo" } else { "noop" };
        let args = if function == "echo" { json!({"value": i}) } else { json!({}) };
        let job: Value = submit(&api, "alice", json!({"function": function, "args": args})).await.json().await.unwrap();
        submitted.push(job["id"].as_str().unwrap().to_owned());
    }
    submit(&api, "bob", json!({"function": "noop"})).await;

    let pages = |query: &'static str| {
        let api = &api;
        async move {
            let mut seen = Vec::new();
            let mut cursor: Option<String> = None;
            let mut pages = 0;
            loop {
                let mut url = api.url(&format!("/jobs?{query}"));
                if let Some(c) = &cursor {
                    url.push_str(&format!("&cursor={c}"));
                }
                let page: Value =
                    api.http.get(url).bearer_auth(token("alice")).send().await.unwrap().json().await.unwrap();
                pages += 1;
                for job in page["jobs"].as_array().unwrap() {
                    seen.push(job["id"].as_str().unwrap().to_owned());
                }
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_owned()),
                    None => break,
                }
                assert!(pages < 100, "pagination terminates");
            }
            (seen, pages)
        }
    };
    let (seen, page_count) = pages("limit=100").await;
    assert_eq!(page_count, 3);
    let newest_first: Vec<String> = submitted.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first, "every job once, newest first, no gaps");

    let (echoes, _) = pages("limit=7&function=echo").await;
    let expected: Vec<String> =
        submitted.iter().enumerate().rev().filter(|(i, _)| i % 5 == 0).map(|(_, id)| id.clone()).collect();
    assert_eq!(echoes, expected);

    let (queued, _) = pages("limit=200&status=queued").await;
    assert_eq!(queued.len(), 250);
    let (none, pages_done) = pages("status=succeeded").await;
    assert_eq!((none.len(), pages_done), (0, 1));
}

#[sqlx::test]
async fn status_etag_and_304(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let job: Value = submit(&api, "alice", json!({"function": "noop"})).await.json().await.unwrap();
    let url = api.url(&format!("/jobs/{}/status", job["id"].as_str().unwrap()));
    let first = api.http.get(&url).bearer_auth(token("alice")).send().await.unwrap();
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let unchanged = api.http.get(&url).bearer_auth(token("alice")).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(unchanged.headers()["etag"].to_str().unwrap(), etag);
    assert!(unchanged.bytes().await.unwrap().is_empty());

    // Progress changes the job: the old ETag no longer matches.
    sqlx::query("UPDATE jobs SET progress = 0.5, message = 'half', updated_at = now()").execute(&pool).await.unwrap();
    let changed = api.http.get(&url).bearer_auth(token("alice")).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    assert_ne!(changed.headers()["etag"].to_str().unwrap(), etag);
    let body: Value = changed.json().await.unwrap();
    assert_eq!(body["progress"], 0.5);
    assert_eq!(body["message"], "half");
}

#[sqlx::test]
async fn cancel_by_status(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let new_job = || async {
        submit(&api, "alice", json!({"function": "noop"})).await.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let cancel = |id: String| api.http.post(api.url(&format!("/jobs/{id}/cancel"))).bearer_auth(token("alice")).send();

    // Queued: cancelled at once, and again is harmless.
    let queued = new_job().await;
    let resp = cancel(queued.clone()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let job: Value = resp.json().await.unwrap();
    assert_eq!(job["status"], "cancelled");
    assert!(job["finished_at"].is_string());
    assert_eq!(job["error"]["kind"], "cancelled");
    assert_eq!(cancel(queued).await.unwrap().status(), StatusCode::OK);

    // Running: the run is asked to stop.
    let running = new_job().await;
    sqlx::query("UPDATE jobs SET status = 'running', attempt = 1, started_at = now() WHERE id = $1::uuid")
        .bind(&running)
        .execute(&pool)
        .await
        .unwrap();
    let resp = cancel(running.clone()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let job: Value = resp.json().await.unwrap();
    assert_eq!((job["status"].as_str(), job["cancel_requested"].as_bool()), (Some("running"), Some(true)));

    // Finished: 409 and untouched.
    let done = new_job().await;
    sqlx::query("UPDATE jobs SET status = 'succeeded', attempt = 1, finished_at = now() WHERE id = $1::uuid")
        .bind(&done)
        .execute(&pool)
        .await
        .unwrap();
    problem(cancel(done.clone()).await.unwrap(), StatusCode::CONFLICT).await;
    let (status, requested): (String, bool) =
        sqlx::query_as("SELECT status, cancel_requested FROM jobs WHERE id = $1::uuid")
            .bind(&done)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), requested), ("succeeded", false));
}

#[sqlx::test]
async fn database_unreachable_is_503_with_retry_after(pool: PgPool) {
    // The API reaches its database through a proxy, which then goes away: the database is
    // unreachable after a healthy start, as in an outage.
    let real = reqwest::Url::parse(&crate::common::database_url(&pool)).unwrap();
    let upstream = format!("{}:{}", real.host_str().unwrap(), real.port().unwrap_or(5432));
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut via_proxy = real.clone();
    via_proxy.set_port(Some(proxy.local_addr().unwrap().port())).unwrap();
    let forwarding = tokio::spawn(async move {
        // Dropping the set (when this task is aborted) closes every forwarded connection.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let (mut inbound, _) = proxy.accept().await.unwrap();
            let upstream = upstream.clone();
            connections.spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(upstream).await?;
                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await
            });
        }
    });
    let through = runq::store::connect_lazy(via_proxy.as_str(), 2, Duration::from_millis(300)).unwrap();
    let api = start_api(through).await;
    assert_eq!(api.http.get(api.url("/readyz")).send().await.unwrap().status(), StatusCode::OK);
    forwarding.abort();
    let _ = forwarding.await;
    let resp = submit(&api, "alice", json!({"function": "noop"})).await;
    assert_eq!(resp.headers()["retry-after"], "2");
    problem(resp, StatusCode::SERVICE_UNAVAILABLE).await;
    let ready = api.http.get(api.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(api.http.get(api.url("/healthz")).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(counts(&pool).await, (0, 0));
}

#[sqlx::test]
async fn health_and_openapi_describe_every_route(pool: PgPool) {
    let api = start_api(pool).await;
    assert_eq!(api.http.get(api.url("/readyz")).send().await.unwrap().status(), StatusCode::OK);
    let spec: Value = api.http.get(api.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    let paths = spec["paths"].as_object().unwrap();
    for (path, method) in [
        ("/jobs", "post"),
        ("/jobs", "get"),
        ("/jobs/{id}", "get"),
        ("/jobs/{id}", "delete"),
        ("/jobs/{id}/status", "get"),
        ("/jobs/{id}/cancel", "post"),
        ("/jobs/{id}/retry", "post"),
        ("/operations", "post"),
        ("/operations", "get"),
        ("/operations/{id}", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/openapi.json", "get"),
        ("/workflows", "post"),
        ("/workflows", "get"),
        ("/workflows/{id}", "get"),
        ("/workflows/{id}/cancel", "post"),
        ("/workflows/{id}/steps/{step}/signal", "post"),
        ("/jobs/{id}/parents", "get"),
    ] {
        assert!(paths[path][method].is_object(), "{method} {path} is described");
    }
    for code in ["202", "200", "400", "401", "409", "413", "415", "422", "503"] {
        assert!(paths["/jobs"]["post"]["responses"][code].is_object(), "POST /jobs documents {code}");
    }
    // Tight enough that data which looks valid is valid: the functions this API registers, ranges.
    let submit = &spec["components"]["schemas"]["SubmitRequest"]["properties"];
    let registered: Vec<&str> = runq::function::Registry::builtin().names().collect();
    assert_eq!(submit["function"]["enum"], json!(registered));
    assert_eq!(
        (submit["max_attempts"]["minimum"].as_u64(), submit["max_attempts"]["maximum"].as_u64()),
        (Some(1), Some(100))
    );
    assert_eq!(submit["delay_seconds"]["maximum"].as_f64(), Some(2_592_000.0));
    let param = |path: &str, method: &str, name: &str| {
        paths[path][method]["parameters"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()["schema"]
            .clone()
    };
    assert_eq!(param("/jobs", "get", "cursor")["pattern"], runq::api::CURSOR_PATTERN);
    assert_eq!(param("/jobs", "get", "parent")["format"], "uuid");
    assert_eq!(param("/jobs", "get", "limit")["maximum"], 200);
    assert_eq!(param("/jobs/{id}/status", "get", "wait")["maximum"], 30);
    assert_eq!(param("/jobs", "post", "Idempotency-Key")["maxLength"], 255);
    assert!(param("/jobs:batch", "post", "traceparent").is_object());
    // A workflow's steps name registered functions; a job's status may be a step's.
    let step = &spec["components"]["schemas"]["StepSpec"]["properties"];
    assert_eq!(step["function"]["enum"], json!(registered));
    assert_eq!(step["name"]["pattern"], "^[a-z0-9_-]{1,64}$");
    let statuses = spec["components"]["schemas"]["Status"]["enum"].as_array().unwrap();
    assert!(statuses.contains(&json!("pending")) && statuses.contains(&json!("waiting")));
    assert_eq!(param("/workflows/{id}", "get", "wait")["maximum"], 30);
}

#[sqlx::test]
async fn cors_preflight_for_configured_origins(pool: PgPool) {
    let api = start_api_with(pool, &["https://app.example.com".to_owned()]).await;
    let preflight = api
        .http
        .request(reqwest::Method::OPTIONS, api.url("/jobs/x/status"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "https://app.example.com");
    let other = api
        .http
        .request(reqwest::Method::OPTIONS, api.url("/jobs"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let get = api.http.get(api.url("/healthz")).header("origin", "https://app.example.com").send().await.unwrap();
    assert!(get.headers()["access-control-expose-headers"].to_str().unwrap().to_ascii_lowercase().contains("etag"));
}

#[tokio::test]
async fn minted_tokens_carry_their_ttl_and_audience() {
    // `runq token --ttl` writes `exp`; the verifier's refusal of expired tokens is tested in
    // `refused_tokens` and in the auth tests.
    let tok = runq::auth::mint_hs256(
        SECRET,
        "alice",
        false,
        Duration::from_secs(1),
        "scope",
        "runq:admin",
        None,
        Some(AUDIENCE),
    )
    .unwrap();
    let payload = tok.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).unwrap(),
    )
    .unwrap();
    let exp = claims["exp"].as_i64().unwrap();
    let now = chrono::Utc::now().timestamp();
    assert!((now..=now + 2).contains(&exp), "exp {exp} is about now + 1 s");
    assert_eq!(claims["aud"], AUDIENCE);
}

#[sqlx::test]
async fn status_long_poll_wakes_on_change_and_times_out_with_304(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let job: Value = submit(&api, "alice", json!({"function": "noop"})).await.json().await.unwrap();
    let url = api.url(&format!("/jobs/{}/status", job["id"].as_str().unwrap()));
    let first = api.http.get(&url).bearer_auth(token("alice")).send().await.unwrap();
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();

    // Nothing changes: after the wait, 304.
    let started = std::time::Instant::now();
    let idle = api
        .http
        .get(format!("{url}?wait=1"))
        .bearer_auth(token("alice"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(idle.status(), StatusCode::NOT_MODIFIED);
    assert!(started.elapsed() >= Duration::from_millis(900), "it waited");

    // A change while waiting: answered with the new state, long before the wait is over.
    let waiting = {
        let (http, url, etag, tok) = (api.http.clone(), format!("{url}?wait=20"), etag.clone(), token("alice"));
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let resp = http.get(url).bearer_auth(tok).header("if-none-match", etag).send().await.unwrap();
            (resp.status(), resp.json::<Value>().await.unwrap(), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("UPDATE jobs SET status = 'running', attempt = 1, progress = 0.25, message = 'a quarter'")
        .execute(&pool)
        .await
        .unwrap();
    let (status, body, elapsed) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!((body["status"].as_str(), body["progress"].as_f64()), (Some("running"), Some(0.25)));
    assert!(elapsed < Duration::from_secs(10), "woken by the change, not the timeout ({elapsed:?})");

    // A finished job answers at once.
    sqlx::query("UPDATE jobs SET status = 'succeeded', progress = 1, finished_at = now()")
        .execute(&pool)
        .await
        .unwrap();
    let done = api.http.get(format!("{url}?wait=20")).bearer_auth(token("alice")).send().await.unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    assert_eq!(done.json::<Value>().await.unwrap()["status"], "succeeded");

    let too_long = api.http.get(format!("{url}?wait=600")).bearer_auth(token("alice")).send().await.unwrap();
    problem(too_long, StatusCode::UNPROCESSABLE_ENTITY).await;
}

#[sqlx::test]
async fn metrics_for_admins(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    submit(&api, "alice", json!({"function": "noop", "priority": "high"})).await;
    submit(&api, "alice", json!({"function": "echo", "args": {"value": 1}})).await;
    problem(api.http.get(api.url("/metrics")).bearer_auth(token("alice")).send().await.unwrap(), StatusCode::FORBIDDEN)
        .await;
    problem(api.http.get(api.url("/metrics")).send().await.unwrap(), StatusCode::UNAUTHORIZED).await;
    let resp = api.http.get(api.url("/metrics")).bearer_auth(admin_token("root")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    for line in [
        r#"runq_jobs_submitted_total{function="noop",priority="high"} 1"#,
        r#"runq_jobs_submitted_total{function="echo",priority="medium"} 1"#,
        r#"runq_jobs{priority="high",status="queued"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
    assert!(text.contains(r#"runq_http_requests_total{method="POST",route="/jobs",status="202"} 2"#), "{text}");
}

#[sqlx::test]
async fn batch_submit_is_all_or_nothing(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let batch = |body: Value| api.http.post(api.url("/jobs:batch")).bearer_auth(token("alice")).json(&body).send();
    let resp = batch(json!({"jobs": [
        {"function": "noop", "priority": "high"},
        {"function": "echo", "args": {"value": [1, 2]}},
        {"function": "sleep", "args": {"seconds": 1}, "delay_seconds": 60, "max_attempts": 1}
    ]}))
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let body: Value = resp.json().await.unwrap();
    let jobs = body["jobs"].as_array().unwrap();
    assert_eq!(jobs.iter().map(|j| j["function"].as_str().unwrap()).collect::<Vec<_>>(), ["noop", "echo", "sleep"]);
    assert_eq!(jobs[0]["priority"], "high");
    assert_eq!(jobs[1]["args"], json!({"value": [1, 2]}));
    assert_eq!(jobs[2]["max_attempts"], 1);
    assert!(jobs.iter().all(|j| j["status"] == "queued"));
    assert_eq!(counts(&pool).await, (3, 0));

    // One bad job refuses the whole batch, naming it.
    let resp =
        batch(json!({"jobs": [{"function": "noop"}, {"function": "sleep", "args": {"secs": 1}}]})).await.unwrap();
    let problem_body = problem(resp, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(problem_body["detail"].as_str().unwrap().starts_with("jobs[1]: "), "{problem_body}");
    for bad in [json!({"jobs": []}), json!({"jobs": [{"function": "nope"}]}), json!({"jobs": {}})] {
        problem(batch(bad).await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    let too_many: Vec<Value> = (0..1001).map(|_| json!({"function": "noop"})).collect();
    problem(batch(json!({"jobs": too_many})).await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY).await;
    let keyed = api
        .http
        .post(api.url("/jobs:batch"))
        .bearer_auth(token("alice"))
        .header("idempotency-key", "k")
        .json(&json!({"jobs": [{"function": "noop"}]}))
        .send()
        .await
        .unwrap();
    problem(keyed, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(counts(&pool).await, (3, 0), "refused batches wrote nothing");
}

/// Refused with a 422 problem, and nothing written.
async fn refused(pool: &PgPool, what: &str, request: reqwest::RequestBuilder) {
    let before = counts(pool).await;
    let resp = request.send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{what}");
    problem(resp, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(counts(pool).await, before, "{what} wrote nothing");
}

#[sqlx::test]
async fn nul_characters_are_422_and_write_nothing(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let alice = token("alice");
    let raw = |path: &str, body: &str| {
        api.http
            .post(api.url(path))
            .bearer_auth(&alice)
            .header("content-type", "application/json")
            .body(body.to_owned())
    };
    // Postgres' jsonb refuses \u0000 anywhere: in a string, in a key, deep down.
    let bodies = [
        ("a NUL in a string", r#"{"function":"echo","args":{"value":"a\u0000b"}}"#),
        ("a NUL after an escaped backslash", r#"{"function":"echo","args":{"value":"\\\u0000"}}"#),
        ("a NUL in a key", r#"{"function":"echo","args":{"value":{"k\u0000":1}}}"#),
        ("a NUL deep in arrays", r#"{"function":"echo","args":{"value":[1,[{"x":["ok","\u0000"]}]]}}"#),
        ("a NUL in the function", r#"{"function":"echo\u0000","args":{"value":1}}"#),
        ("a NUL in the priority", r#"{"function":"noop","priority":"high\u0000"}"#),
    ];
    for (what, body) in bodies {
        refused(&pool, what, raw("/jobs", body)).await;
        refused(&pool, &format!("{what} (keyed)"), raw("/jobs", body).header("idempotency-key", "k")).await;
        let batch = format!(r#"{{"jobs":[{{"function":"noop"}},{body}]}}"#);
        refused(&pool, &format!("{what} (batch)"), raw("/jobs:batch", &batch)).await;
    }
    let batch_detail: Value = raw("/jobs:batch", &format!(r#"{{"jobs":[{{"function":"noop"}},{}]}}"#, bodies[0].1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(batch_detail["detail"].as_str().unwrap().starts_with("jobs[1]: "), "{batch_detail}");
    for query in ["function=%00", "function=echo%00", "status=%00", "cursor=%00", "parent=%00"] {
        refused(&pool, query, api.http.get(api.url(&format!("/jobs?{query}"))).bearer_auth(&alice)).await;
    }

    // Look-alikes are not NULs: an escaped backslash then `u0000`, an emoji's surrogate pair.
    for value in [r#""\\u0000""#, r#""\ud83d\ude00""#] {
        let resp = raw("/jobs", &format!(r#"{{"function":"echo","args":{{"value":{value}}}}}"#)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "{value}");
        let job: Value = resp.json().await.unwrap();
        assert_eq!(job["args"]["value"], serde_json::from_str::<Value>(value).unwrap());
    }
    assert_eq!(counts(&pool).await, (2, 0));

    // The owner comes from the token's `sub`, text too.
    let before = counts(&pool).await;
    let resp = api
        .http
        .post(api.url("/jobs"))
        .bearer_auth(token("al\0ice"))
        .json(&json!({"function": "noop"}))
        .send()
        .await
        .unwrap();
    problem(resp, StatusCode::UNAUTHORIZED).await;
    assert_eq!(counts(&pool).await, before);
}

/// Takes anything and looks at none of it: its args reach the store unparsed.
struct Anything;

impl runq::function::Function for Anything {
    type Args = serde::de::IgnoredAny;
    type Output = Value;

    fn name(&self) -> &'static str {
        "anything"
    }

    async fn run(
        &self,
        _ctx: runq::function::Context,
        _args: Self::Args,
    ) -> Result<Value, runq::function::FunctionError> {
        Ok(Value::Null)
    }
}

#[sqlx::test]
async fn args_that_no_function_parses_are_still_checked_for_nul_and_lone_surrogates(pool: PgPool) {
    let mut registry = runq::function::Registry::builtin();
    registry.register(Anything).unwrap();
    let settings = runq::api::ApiSettings {
        limits: runq::api::Limits { max_args_bytes: 1 << 20, ..crate::common::limits() },
        ..crate::common::settings()
    };
    let schedules = runq::schedule::Schedules::builtin();
    let api =
        crate::common::start_api_over(pool.clone(), registry, schedules, settings, runq::auth::GOOGLE_JWKS_URL).await;
    let base = api.base.clone();
    let http = reqwest::Client::new();
    let send = |body: &'static str| {
        http.post(format!("{base}/jobs"))
            .bearer_auth(token("alice"))
            .header("content-type", "application/json")
            .body(body)
    };
    for body in [
        r#"{"function":"anything","args":{"x":"\u0000"}}"#,
        r#"{"function":"anything","args":{"\u0000":1}}"#,
        r#"{"function":"anything","args":{"x":"\ud800"}}"#,
        r#"{"function":"anything","args":{"x":"\uDFFF and more"}}"#,
        r#"{"function":"anything","args":["\ud83d"]}"#,
        // Postgres alone knows these can't be stored: beyond `numeric`'s range.
        r#"{"function":"anything","args":{"x":1e200000}}"#,
        r#"{"function":"anything","args":{"x":-2.5E-20000}}"#,
    ] {
        refused(&pool, body, send(body)).await;
    }
    // Nested deeper than Postgres' jsonb parser goes (its stack depth limit).
    let deep = format!(r#"{{"function":"anything","args":{}{}}}"#, "[".repeat(200_000), "]".repeat(200_000));
    let before = counts(&pool).await;
    let resp = http
        .post(format!("{base}/jobs"))
        .bearer_auth(token("alice"))
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    let body = problem(resp, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(body["detail"].as_str().unwrap().contains("can't store"), "{body}");
    assert_eq!(counts(&pool).await, before);

    let resp = send(r#"{"function":"anything","args":{"x":"\ud83d\ude00 \\u0000","n":1e300}}"#).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(counts(&pool).await, (1, 0));
}

#[sqlx::test]
async fn traceparent_is_stored_when_valid_and_dropped_when_not(pool: PgPool) {
    let api = start_api(pool.clone()).await;
    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let stored = |id: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<String>>("SELECT trace_context FROM jobs WHERE id = $1::uuid")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let oversized = format!("00-{}-{}-01", "a".repeat(1000), "b".repeat(993));
    assert_eq!(oversized.len(), 2000);
    let cases = [
        (valid.to_owned(), Some(valid)),
        (oversized, None),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01".to_owned(), None),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(), None),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_owned(), None),
        ("garbage".to_owned(), None),
    ];
    for (header, expected) in &cases {
        let resp = api
            .http
            .post(api.url("/jobs"))
            .bearer_auth(token("alice"))
            .header("traceparent", header)
            .json(&json!({"function": "noop"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "{header:.60}");
        let job: Value = resp.json().await.unwrap();
        assert_eq!(stored(job["id"].as_str().unwrap().to_owned()).await.as_deref(), *expected, "{header:.60}");

        let resp = api
            .http
            .post(api.url("/jobs:batch"))
            .bearer_auth(token("alice"))
            .header("traceparent", header)
            .json(&json!({"jobs": [{"function": "noop"}, {"function": "noop"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "batch {header:.60}");
        let body: Value = resp.json().await.unwrap();
        for job in body["jobs"].as_array().unwrap() {
            assert_eq!(
                stored(job["id"].as_str().unwrap().to_owned()).await.as_deref(),
                *expected,
                "batch {header:.60}"
            );
        }
    }
    assert_eq!(counts(&pool).await, (3 * cases.len() as i64, 0));
}
