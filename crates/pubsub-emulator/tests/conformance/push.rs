//! Push delivery against a real local HTTP server: the envelope field by field, the OIDC
//! token verified against the emulator's JWKS, failures and slow answers redelivered with
//! backoff, and dead-lettering.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use google_cloud_pubsub::model::{DeadLetterPolicy, Message, PushConfig, RetryPolicy, push_config::OidcToken};
use serde_json::Value;
use tokio::sync::mpsc;

use super::common::*;

/// One request the endpoint received.
struct Hit {
    at: Instant,
    headers: HeaderMap,
    body: Value,
}

/// How the endpoint answers the n-th request (0-based): a status, after a delay.
type Script = Arc<dyn Fn(usize) -> (StatusCode, Duration) + Send + Sync>;

#[derive(Clone)]
struct Endpoint {
    hits: mpsc::UnboundedSender<Hit>,
    count: Arc<Mutex<usize>>,
    script: Script,
}

async fn receive(State(ep): State<Endpoint>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    let n = {
        let mut c = ep.count.lock().unwrap();
        *c += 1;
        *c - 1
    };
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let _ = ep.hits.send(Hit { at: Instant::now(), headers, body });
    let (status, delay) = (ep.script)(n);
    tokio::time::sleep(delay).await;
    status
}

/// Starts a push endpoint; returns its URL and the stream of requests.
async fn endpoint(
    script: impl Fn(usize) -> (StatusCode, Duration) + Send + Sync + 'static,
) -> (String, mpsc::UnboundedReceiver<Hit>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let ep = Endpoint { hits: tx, count: Arc::new(Mutex::new(0)), script: Arc::new(script) };
    let app = axum::Router::new().route("/push", axum::routing::post(receive)).with_state(ep);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

async fn next_hit(rx: &mut mpsc::UnboundedReceiver<Hit>, within: Duration) -> Option<Hit> {
    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
}

#[derive(Debug, serde::Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    email: String,
    email_verified: bool,
    iat: i64,
    exp: i64,
}

/// Verifies a bearer token as runq's push verifier would, with the served JWKS.
async fn verify(h: &super::common::PubSub, headers: &HeaderMap, aud: &str) -> Claims {
    let token = headers["authorization"].to_str().unwrap().strip_prefix("Bearer ").expect("a bearer token");
    let jwks: jsonwebtoken::jwk::JwkSet = reqwest::get(h.jwks_url()).await.unwrap().json().await.unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    let jwk = jwks.find(header.kid.as_deref().expect("kid")).expect("kid in JWKS");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_issuer(&["https://accounts.google.com"]);
    v.set_audience(&[aud]);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    let claims = jsonwebtoken::decode::<Claims>(token, &key, &v).unwrap().claims;
    // A token for another audience must not verify.
    let mut wrong = v.clone();
    wrong.set_audience(&["https://someone-else"]);
    assert!(jsonwebtoken::decode::<Claims>(token, &key, &wrong).is_err());
    claims
}

#[tokio::test]
async fn push_envelope_and_oidc_token() {
    let Some(h) = start_own(1.0).await else { return };
    let (url, mut hits) = endpoint(|_| (StatusCode::NO_CONTENT, Duration::ZERO)).await;
    create_topic(&h, "projects/p/topics/jobs").await;
    create_topic(&h, "projects/p/topics/dead").await;
    let subs = sub_admin(&h).await;
    subs.create_subscription()
        .set_name("projects/p/subscriptions/worker")
        .set_topic("projects/p/topics/jobs")
        .set_push_config(
            PushConfig::new().set_push_endpoint(&url).set_oidc_token(
                OidcToken::new()
                    .set_service_account_email("push@p.iam.gserviceaccount.com")
                    .set_audience("https://worker.example"),
            ),
        )
        .set_dead_letter_policy(
            DeadLetterPolicy::new().set_dead_letter_topic("projects/p/topics/dead").set_max_delivery_attempts(5),
        )
        .send()
        .await
        .unwrap();
    let id = publisher(&h, "projects/p/topics/jobs")
        .await
        .publish(
            Message::new()
                .set_data(b"\x00job bytes\xff".to_vec())
                .set_attributes([("function", "transcribe"), ("priority", "high")])
                .set_ordering_key("user-1"),
        )
        .await
        .unwrap();
    let hit = next_hit(&mut hits, Duration::from_secs(5)).await.expect("a push");
    assert_eq!(hit.headers["content-type"], "application/json");
    let b = &hit.body;
    assert_eq!(b["subscription"], "projects/p/subscriptions/worker");
    assert_eq!(b["deliveryAttempt"], 1);
    let m = &b["message"];
    let data = base64::engine::general_purpose::STANDARD.decode(m["data"].as_str().unwrap()).unwrap();
    assert_eq!(data, b"\x00job bytes\xff");
    assert_eq!(m["attributes"]["function"], "transcribe");
    assert_eq!(m["attributes"]["priority"], "high");
    assert_eq!(m["messageId"], id.as_str());
    assert_eq!(m["message_id"], id.as_str());
    let time = m["publishTime"].as_str().unwrap();
    assert_eq!(m["publish_time"], time);
    let published = chrono::DateTime::parse_from_rfc3339(time).unwrap();
    assert!((chrono::Utc::now() - published.to_utc()).num_seconds().abs() < 60);
    assert_eq!(m["orderingKey"], "user-1");

    let claims = verify(&h, &hit.headers, "https://worker.example").await;
    assert_eq!(claims.iss, "https://accounts.google.com");
    assert_eq!(claims.aud, "https://worker.example");
    assert_eq!(claims.email, "push@p.iam.gserviceaccount.com");
    assert!(claims.email_verified);
    assert_eq!(claims.exp - claims.iat, 3600);
    assert!((claims.iat - chrono::Utc::now().timestamp()).abs() < 60);
    // 204 acked it: no redelivery.
    assert!(next_hit(&mut hits, Duration::from_millis(500)).await.is_none());

    // Without an audience the token is for the endpoint URL; without a dead-letter
    // policy there is no deliveryAttempt.
    subs.create_subscription()
        .set_name("projects/p/subscriptions/plain")
        .set_topic("projects/p/topics/jobs")
        .set_push_config(
            PushConfig::new()
                .set_push_endpoint(&url)
                .set_oidc_token(OidcToken::new().set_service_account_email("other@p.iam.gserviceaccount.com")),
        )
        .send()
        .await
        .unwrap();
    publisher(&h, "projects/p/topics/jobs").await.publish(Message::new().set_data("x")).await.unwrap();
    let mut plain = None;
    for _ in 0..2 {
        let hit = next_hit(&mut hits, Duration::from_secs(5)).await.expect("a push");
        if hit.body["subscription"] == "projects/p/subscriptions/plain" {
            plain = Some(hit);
        }
    }
    let plain = plain.expect("the plain subscription pushed");
    assert!(plain.body.get("deliveryAttempt").is_none());
    assert!(plain.body["message"].get("orderingKey").is_none());
    let claims = verify(&h, &plain.headers, &url).await;
    assert_eq!(claims.email, "other@p.iam.gserviceaccount.com");
    h.shutdown().await;
}

#[tokio::test]
async fn failed_and_slow_pushes_are_redelivered_with_backoff() {
    // 1/100 clock: ack deadline 10 s = 100 ms push timeout; backoff 10 s, 20 s, 40 s =
    // 100, 200, 400 ms. Answers: 500, 503, too slow, then 200.
    let Some(h) = start_own(0.01).await else { return };
    let (url, mut hits) = endpoint(|n| match n {
        0 => (StatusCode::INTERNAL_SERVER_ERROR, Duration::ZERO),
        1 => (StatusCode::SERVICE_UNAVAILABLE, Duration::ZERO),
        2 => (StatusCode::OK, Duration::from_millis(600)),
        _ => (StatusCode::OK, Duration::ZERO),
    })
    .await;
    create_topic(&h, "projects/p/topics/jobs").await;
    sub_admin(&h)
        .await
        .create_subscription()
        .set_name("projects/p/subscriptions/worker")
        .set_topic("projects/p/topics/jobs")
        .set_push_config(PushConfig::new().set_push_endpoint(&url))
        .set_retry_policy(RetryPolicy::new().set_minimum_backoff(dur("10s")).set_maximum_backoff(dur("600s")))
        .send()
        .await
        .unwrap();
    let id = publisher(&h, "projects/p/topics/jobs").await.publish(Message::new().set_data("flaky")).await.unwrap();
    let mut times = Vec::new();
    for _ in 0..4 {
        let hit = next_hit(&mut hits, Duration::from_secs(5)).await.expect("a push");
        assert_eq!(hit.body["message"]["messageId"], id.as_str());
        times.push(hit.at);
    }
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // Lower bounds: the backoff (plus the 100 ms timeout for the slow one); upper: slack.
    let expected = [(100, 0), (200, 0), (400, 100)];
    for (i, (backoff, timeout)) in expected.iter().enumerate() {
        let min = Duration::from_millis(backoff + timeout);
        assert!(
            gaps[i] >= min.mul_f64(0.9) && gaps[i] <= min + Duration::from_millis(400),
            "gap {i}: {:?}, expected about {min:?}",
            gaps[i]
        );
    }
    assert!(next_hit(&mut hits, Duration::from_millis(500)).await.is_none(), "200 acked it");
    h.shutdown().await;
}

#[tokio::test]
async fn failing_pushes_are_dead_lettered() {
    let Some(h) = start_own(0.01).await else { return };
    let (url, mut hits) = endpoint(|_| (StatusCode::TOO_MANY_REQUESTS, Duration::ZERO)).await;
    create_topic(&h, "projects/p/topics/jobs").await;
    create_topic(&h, "projects/p/topics/dead").await;
    let subs = sub_admin(&h).await;
    subs.create_subscription()
        .set_name("projects/p/subscriptions/dead")
        .set_topic("projects/p/topics/dead")
        .send()
        .await
        .unwrap();
    subs.create_subscription()
        .set_name("projects/p/subscriptions/worker")
        .set_topic("projects/p/topics/jobs")
        .set_push_config(PushConfig::new().set_push_endpoint(&url))
        .set_dead_letter_policy(
            DeadLetterPolicy::new().set_dead_letter_topic("projects/p/topics/dead").set_max_delivery_attempts(5),
        )
        .send()
        .await
        .unwrap();
    publisher(&h, "projects/p/topics/jobs").await.publish(Message::new().set_data("never works")).await.unwrap();
    let mut attempts = Vec::new();
    for _ in 0..5 {
        let hit = next_hit(&mut hits, Duration::from_secs(5)).await.expect("a push");
        attempts.push(hit.body["deliveryAttempt"].as_i64().unwrap());
    }
    assert_eq!(attempts, [1, 2, 3, 4, 5]);
    assert!(next_hit(&mut hits, Duration::from_millis(500)).await.is_none());
    let mut dead = subscriber(&h).await.subscribe("projects/p/subscriptions/dead").build();
    let (m, handler) = next_within(&mut dead, Duration::from_secs(5)).await.unwrap();
    assert_eq!(&m.data[..], b"never works");
    assert_eq!(m.attributes["CloudPubSubDeadLetterSourceDeliveryCount"], "5");
    handler.ack();
    h.shutdown().await;
}
