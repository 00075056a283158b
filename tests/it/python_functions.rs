//! Python functions: the SDK's pytest suite (`sdk/python`, a real uvicorn server on a loopback
//! port), run from here so `.ci/run` runs it. `scripts/test` installs what it needs (fastapi,
//! uvicorn, pyjwt, pytest).

use std::time::Duration;

fn python() -> Option<String> {
    let python = std::env::var("RUNQ_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    if std::process::Command::new(&python).arg("--version").output().is_err() {
        eprintln!("SKIPPED: the Python SDK's tests need {python} (scripts/test checks for it)");
        return None;
    }
    let probe = std::process::Command::new(&python)
        .args(["-c", "import fastapi, uvicorn, jwt, cryptography, httpx, pytest"])
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "the Python SDK's tests need fastapi, uvicorn, pyjwt[crypto], httpx and pytest: run scripts/test, \
         which installs them ({})",
        String::from_utf8_lossy(&probe.stderr)
    );
    Some(python)
}

#[tokio::test]
async fn the_python_sdk_suite_passes() {
    let Some(python) = python() else { return };
    let package = concat!(env!("CARGO_MANIFEST_DIR"), "/sdk/python");
    let run = tokio::process::Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(package)
        .env("PYTHONPATH", format!("{package}/src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run).await.expect("pytest finishes").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the Python SDK's suite failed:\n{stdout}");
    assert!(!stdout.contains("skipped"), "no test may skip here:\n{stdout}");
}
