//! Helpers: start an emulator (ours, or the one `RUNQ_TEST_PUBSUB_HOST` names), build the
//! official clients against it.

use std::time::Duration;

use google_cloud_pubsub::client::{Publisher, Subscriber, SubscriptionAdmin, TopicAdmin};
use pubsub_emulator::{EmulatorHandle, EmulatorOptions};

/// The Pub/Sub a test talks to: our emulator, started for the test, or another one (Google's)
/// at `RUNQ_TEST_PUBSUB_HOST`, shared and left running.
pub struct PubSub {
    own: Option<EmulatorHandle>,
    host: String,
    /// The project of this test's resources: `p` on our emulator; unique on a shared one, so
    /// tests running at once don't see each other's topics.
    project: String,
}

impl PubSub {
    /// `projects/{project}/{rest}`, e.g. `h.name("topics/t")`.
    pub fn name(&self, rest: &str) -> String {
        format!("projects/{}/{rest}", self.project)
    }
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.host)
    }
    /// Our emulator's JWKS (only ours signs push tokens).
    pub fn jwks_url(&self) -> String {
        self.own.as_ref().expect("our emulator").jwks_url()
    }
    pub async fn shutdown(self) {
        if let Some(own) = self.own {
            own.shutdown().await;
        }
    }
}

/// Starts our emulator on 127.0.0.1:0 with the test clock at `time_scale`.
async fn own(time_scale: f64) -> PubSub {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle =
        pubsub_emulator::start(listener, EmulatorOptions::default().with_time_scale(time_scale)).await.unwrap();
    PubSub { host: handle.host(), own: Some(handle), project: "p".into() }
}

/// The Pub/Sub for a test of standard behaviour. With `RUNQ_TEST_PUBSUB_HOST` set, that
/// emulator; a test that needs our test clock (`time_scale` other than 1) is then skipped
/// (`None`), since another emulator would take Pub/Sub's real minimums.
pub async fn start(time_scale: f64) -> Option<PubSub> {
    match std::env::var("RUNQ_TEST_PUBSUB_HOST") {
        Ok(host) if !host.is_empty() => {
            if time_scale != 1.0 {
                eprintln!("skipped against {host}: needs runq's test clock");
                return None;
            }
            let project = format!("p{}", uuid::Uuid::new_v4().simple());
            Some(PubSub { own: None, host, project })
        }
        _ => Some(own(time_scale).await),
    }
}

/// Our emulator only: for tests of push OIDC and of our own endpoints, which Google's emulator
/// doesn't have. Skipped (`None`) when `RUNQ_TEST_PUBSUB_HOST` is set.
pub async fn start_own(time_scale: f64) -> Option<PubSub> {
    if std::env::var("RUNQ_TEST_PUBSUB_HOST").is_ok_and(|h| !h.is_empty()) {
        eprintln!("skipped: push OIDC and the JWKS exist only in runq's emulator");
        return None;
    }
    Some(own(time_scale).await)
}

pub fn creds() -> google_cloud_auth::credentials::Credentials {
    google_cloud_auth::credentials::anonymous::Builder::new().build()
}

pub async fn topic_admin(h: &PubSub) -> TopicAdmin {
    TopicAdmin::builder().with_endpoint(h.endpoint()).with_credentials(creds()).build().await.unwrap()
}

pub async fn sub_admin(h: &PubSub) -> SubscriptionAdmin {
    SubscriptionAdmin::builder().with_endpoint(h.endpoint()).with_credentials(creds()).build().await.unwrap()
}

pub async fn publisher(h: &PubSub, topic: &str) -> Publisher {
    Publisher::builder(topic).with_endpoint(h.endpoint()).with_credentials(creds()).build().await.unwrap()
}

pub async fn subscriber(h: &PubSub) -> Subscriber {
    Subscriber::builder().with_endpoint(h.endpoint()).with_credentials(creds()).build().await.unwrap()
}

/// A wkt duration from a proto3 JSON string like `"10s"`.
pub fn dur(s: &str) -> google_cloud_wkt::Duration {
    google_cloud_wkt::Duration::try_from(s).unwrap()
}

pub async fn create_topic(h: &PubSub, name: &str) {
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
