//! Helpers: start an emulator, build the official clients against it.

use std::time::Duration;

use google_cloud_pubsub::client::{Publisher, Subscriber, SubscriptionAdmin, TopicAdmin};
use runq::emulator::{EmulatorHandle, EmulatorOptions};

/// Starts an emulator on 127.0.0.1:0 with the test clock at `time_scale`.
pub async fn start(time_scale: f64) -> EmulatorHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    runq::emulator::start(listener, EmulatorOptions::default().with_time_scale(time_scale)).await.unwrap()
}

pub fn creds() -> google_cloud_auth::credentials::Credentials {
    google_cloud_auth::credentials::anonymous::Builder::new().build()
}

pub async fn topic_admin(h: &EmulatorHandle) -> TopicAdmin {
    TopicAdmin::builder().with_endpoint(h.endpoint()).with_credentials(creds()).build().await.unwrap()
}

pub async fn sub_admin(h: &EmulatorHandle) -> SubscriptionAdmin {
    SubscriptionAdmin::builder().with_endpoint(h.endpoint()).with_credentials(creds()).build().await.unwrap()
}

pub async fn publisher(h: &EmulatorHandle, topic: &str) -> Publisher {
    Publisher::builder(topic).with_endpoint(h.endpoint()).with_credentials(creds()).build().await.unwrap()
}

pub async fn subscriber(h: &EmulatorHandle) -> Subscriber {
    Subscriber::builder().with_endpoint(h.endpoint()).with_credentials(creds()).build().await.unwrap()
}

/// A wkt duration from a proto3 JSON string like `"10s"`.
pub fn dur(s: &str) -> google_cloud_wkt::Duration {
    google_cloud_wkt::Duration::try_from(s).unwrap()
}

pub async fn create_topic(h: &EmulatorHandle, name: &str) {
    topic_admin(h).await.create_topic().set_name(name).send().await.unwrap();
}

/// The rpc code of a failed call.
pub fn code(e: &google_cloud_pubsub::Error) -> google_cloud_gax::error::rpc::Code {
    e.status().unwrap_or_else(|| panic!("expected a service error, got {e:?}")).code
}

/// Next message from a stream within `within`, or None.
pub async fn next_within(
    stream: &mut google_cloud_pubsub::subscriber::MessageStream,
    within: Duration,
) -> Option<(google_cloud_pubsub::model::Message, google_cloud_pubsub::subscriber::handler::Handler)> {
    match tokio::time::timeout(within, stream.next()).await {
        Ok(Some(Ok(x))) => Some(x),
        Ok(Some(Err(e))) => panic!("stream error: {e:?}"),
        Ok(None) | Err(_) => None,
    }
}
