//! The emulator's `--state-file`, which the suite's "restart with state" fault relies on:
//! topics, subscriptions, unacknowledged messages (with their delivery counts) and the signing
//! key survive a restart.

use std::time::Duration;

use runq::emulator::EmulatorOptions;
use serde_json::{Value, json};

async fn start(port: u16, state: &std::path::Path) -> runq::emulator::EmulatorHandle {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let opts = EmulatorOptions { state_file: Some(state.to_owned()), ..EmulatorOptions::default() };
    runq::emulator::start(listener, opts).await.unwrap()
}

async fn call(http: &reqwest::Client, method: reqwest::Method, url: String, body: Value) -> Value {
    let mut req = http.request(method, url);
    if !body.is_null() {
        req = req.json(&body);
    }
    let r = req.send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!("runq-emulator-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.json");
    let _ = std::fs::remove_file(&state);
    let http = reqwest::Client::new();
    let port = super::procs::free_port();
    let base = format!("http://127.0.0.1:{port}/v1/projects/p");
    let emu = start(port, &state).await;
    let jwks = http.get(emu.jwks_url()).send().await.unwrap().text().await.unwrap();
    call(&http, reqwest::Method::PUT, format!("{base}/topics/topic-a"), json!({})).await;
    let sub = json!({"topic": "projects/p/topics/topic-a", "ackDeadlineSeconds": 10,
                     "deadLetterPolicy": {"deadLetterTopic": "projects/p/topics/topic-a", "maxDeliveryAttempts": 5}});
    call(&http, reqwest::Method::PUT, format!("{base}/subscriptions/sub-a"), sub).await;
    let publish = json!({"messages": [{"data": "b25l"}, {"data": "dHdv"}]});
    call(&http, reqwest::Method::POST, format!("{base}/topics/topic-a:publish"), publish).await;
    // One message out for delivery, not acknowledged: it must come back after the restart.
    let pulled =
        call(&http, reqwest::Method::POST, format!("{base}/subscriptions/sub-a:pull"), json!({"maxMessages": 1})).await;
    assert_eq!(pulled["receivedMessages"].as_array().unwrap().len(), 1, "{pulled}");
    // What a kill -9 leaves: the snapshot saved while serving (every 100 ms when changed).
    let saved = dir.join("saved-while-serving.json");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let both_messages = |raw: String| {
        serde_json::from_str::<Value>(&raw)
            .is_ok_and(|v| v["subscriptions"][0]["messages"].as_array().map(Vec::len) == Some(2))
    };
    while !std::fs::read_to_string(&state).is_ok_and(both_messages) {
        assert!(tokio::time::Instant::now() < deadline, "no snapshot saved while serving");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::copy(&state, &saved).unwrap();
    emu.shutdown().await;
    let killed = start(super::procs::free_port(), &saved).await;
    let kbase = format!("http://{}/v1/projects/p", killed.host());
    let subs = call(&http, reqwest::Method::GET, format!("{kbase}/subscriptions"), Value::Null).await;
    assert_eq!(subs["subscriptions"][0]["name"], "projects/p/subscriptions/sub-a", "{subs}");
    killed.shutdown().await;

    let emu = start(port, &state).await;
    assert_eq!(http.get(emu.jwks_url()).send().await.unwrap().text().await.unwrap(), jwks, "the same key");
    let subs = call(&http, reqwest::Method::GET, format!("{base}/subscriptions"), Value::Null).await;
    assert_eq!(subs["subscriptions"][0]["name"], "projects/p/subscriptions/sub-a", "{subs}");
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < 2 && tokio::time::Instant::now() < deadline {
        let pulled =
            call(&http, reqwest::Method::POST, format!("{base}/subscriptions/sub-a:pull"), json!({"maxMessages": 10}))
                .await;
        for m in pulled["receivedMessages"].as_array().cloned().unwrap_or_default() {
            got.push((m["message"]["data"].as_str().unwrap().to_owned(), m["deliveryAttempt"].as_i64().unwrap()));
        }
    }
    got.sort();
    assert_eq!(got, [("b25l".to_owned(), 2), ("dHdv".to_owned(), 1)], "both messages, delivery counts kept");
    emu.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
