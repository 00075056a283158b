//! The Python client (`clients/python`): its pytest suite against a real `runq dev` process,
//! run from here so `.ci/run` runs it. `scripts/test` installs what it needs (httpx, pytest).
//! Its restart test starts a `runq dev` of its own on a second database.

use sqlx::PgPool;

use crate::common::{Dev, database_url, free_port};

#[sqlx::test]
async fn the_python_client_suite_passes_against_runq_dev(pool: PgPool) {
    let python = std::env::var("RUNQ_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    if std::process::Command::new(&python).arg("--version").output().is_err() {
        eprintln!("SKIPPED: the Python client's tests need {python} (scripts/test checks for it)");
        return;
    }
    let probe = std::process::Command::new(&python).args(["-c", "import httpx, pytest"]).output().unwrap();
    assert!(
        probe.status.success(),
        "the Python client's tests need httpx and pytest: run scripts/test, which installs them ({})",
        String::from_utf8_lossy(&probe.stderr)
    );
    // The restart test's own database, beside this test's.
    let scratch = format!("runq_python_{}", uuid::Uuid::new_v4().simple());
    sqlx::raw_sql(&format!("CREATE DATABASE \"{scratch}\"")).execute(&pool).await.unwrap();
    let url = database_url(&pool);
    let scratch_url = format!("{}/{scratch}", url.rsplit_once('/').unwrap().0);

    let dir = std::env::temp_dir().join(format!("runq-python-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let api_port = free_port();
    let dev = Dev::start(&database_url(&pool), api_port, free_port(), &dir, &[]).await;
    let package = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python");
    let run = tokio::process::Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(package)
        .env("PYTHONPATH", format!("{package}/src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("RUNQ_URL", format!("http://127.0.0.1:{api_port}"))
        .env("RUNQ_TOKEN", &dev.token)
        .env("RUNQ_BIN", crate::common::runq_bin())
        .env("RUNQ_SCRATCH_DATABASE_URL", &scratch_url)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(300), run).await.expect("pytest finishes").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the Python client's suite failed:\n{stdout}");
    assert!(!stdout.contains("skipped"), "no test may skip here (the restart test has what it needs):\n{stdout}");
    dev.stop().await;
    sqlx::raw_sql(&format!("DROP DATABASE \"{scratch}\" WITH (FORCE)")).execute(&pool).await.unwrap();
    std::fs::remove_dir_all(&dir).ok();
}
