//! Emulator throughput and latency: publish→pull (official Publisher + Subscriber over
//! gRPC) and publish→push (to a local axum endpoint), printing messages/s and p50/p99
//! delivery latency. Run: `cargo bench --bench emulator` (optional: `-- 20000` messages).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use google_cloud_pubsub::client::{Publisher, Subscriber, SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::{Message, PushConfig};
use pubsub_emulator::{EmulatorHandle, EmulatorOptions};

fn creds() -> google_cloud_auth::credentials::Credentials {
    google_cloud_auth::credentials::anonymous::Builder::new().build()
}

/// Microseconds since `base`, carried in the message so the receiver can measure latency.
fn stamp(base: Instant) -> String {
    base.elapsed().as_micros().to_string()
}

fn report(name: &str, n: usize, elapsed: Duration, mut latencies_us: Vec<u64>) {
    latencies_us.sort_unstable();
    let pct = |p: f64| latencies_us[((latencies_us.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    println!(
        "{name:<16} {n:>7} msgs  {:>9.0} msg/s  p50 {:>8.2} ms  p99 {:>8.2} ms",
        n as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99)
    );
}

async fn setup(h: &EmulatorHandle, topic: &str, sub: &str, push: Option<&str>) -> Publisher {
    let topics = TopicAdmin::builder().with_endpoint(h.endpoint()).with_credentials(creds()).build().await.unwrap();
    topics.create_topic().set_name(topic).send().await.unwrap();
    let subs =
        SubscriptionAdmin::builder().with_endpoint(h.endpoint()).with_credentials(creds()).build().await.unwrap();
    let mut create = subs.create_subscription().set_name(sub).set_topic(topic).set_ack_deadline_seconds(60);
    if let Some(url) = push {
        create = create.set_push_config(PushConfig::new().set_push_endpoint(url));
    }
    create.send().await.unwrap();
    Publisher::builder(topic).with_endpoint(h.endpoint()).with_credentials(creds()).build().await.unwrap()
}

async fn publish_all(publisher: &Publisher, n: usize, base: Instant) {
    let futures: Vec<_> =
        (0..n).map(|_| publisher.publish(Message::new().set_data("x").set_attributes([("t", stamp(base))]))).collect();
    futures::future::try_join_all(futures).await.unwrap();
}

async fn bench_pull(h: &EmulatorHandle, n: usize) {
    let publisher = setup(h, "projects/bench/topics/pull", "projects/bench/subscriptions/pull", None).await;
    let subscriber = Subscriber::builder().with_endpoint(h.endpoint()).with_credentials(creds()).build().await.unwrap();
    let mut stream = subscriber.subscribe("projects/bench/subscriptions/pull").build();
    let base = Instant::now();
    let receive = async {
        let mut lat = Vec::with_capacity(n);
        while lat.len() < n {
            let (m, h) = stream.next().await.unwrap().unwrap();
            let sent: u64 = m.attributes["t"].parse().unwrap();
            lat.push(base.elapsed().as_micros() as u64 - sent);
            h.ack();
        }
        lat
    };
    let ((), lat) = tokio::join!(publish_all(&publisher, n, base), receive);
    report("publish→pull", n, base.elapsed(), lat);
}

async fn bench_push(h: &EmulatorHandle, n: usize) {
    let base = Instant::now();
    let lat = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let done = Arc::new(tokio::sync::Notify::new());
    let app = {
        let lat = lat.clone();
        let done = done.clone();
        axum::Router::new().route(
            "/push",
            axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
                let lat = lat.clone();
                let done = done.clone();
                async move {
                    let sent: u64 = v["message"]["attributes"]["t"].as_str().unwrap().parse().unwrap();
                    let mut l = lat.lock().unwrap();
                    l.push(base.elapsed().as_micros() as u64 - sent);
                    if l.len() == n {
                        done.notify_one();
                    }
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let publisher = setup(h, "projects/bench/topics/push", "projects/bench/subscriptions/push", Some(&url)).await;
    let start = Instant::now();
    publish_all(&publisher, n, base).await;
    done.notified().await;
    let elapsed = start.elapsed();
    let lat = std::mem::take(&mut *lat.lock().unwrap());
    report("publish→push", n, elapsed, lat);
}

fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let h = pubsub_emulator::start(listener, EmulatorOptions::default()).await.unwrap();
        bench_pull(&h, n).await;
        bench_push(&h, n).await;
        h.shutdown().await;
    });
}
