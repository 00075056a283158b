//! What infra would create in Pub/Sub, through the official admin clients: the queue topics,
//! two push subscriptions per topic (one per worker, through its fault proxy, so deliveries are
//! concurrent duplicates), the dead-letter topic pushing to the API; and Cloud Scheduler's OIDC
//! token, obtained from the emulator through a capture subscription.

use std::time::Duration;

use google_cloud_pubsub::client::{Publisher, SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::push_config::OidcToken;
use google_cloud_pubsub::model::{DeadLetterPolicy, Message, PushConfig, RetryPolicy};
use runq::dispatch::anonymous;
use tokio::sync::{Mutex, mpsc};

pub const PROJECT: &str = "runq-faults";
pub const PUSH_ACCOUNT: &str = "runq-push@runq-faults.iam.gserviceaccount.com";
pub const SCHEDULER_ACCOUNT: &str = "runq-scheduler@runq-faults.iam.gserviceaccount.com";
pub const DEAD_LETTER_ACCOUNT: &str = "runq-dead-letter@runq-faults.iam.gserviceaccount.com";
/// Emulated seconds; real ones are this times the emulator's time scale.
pub const ACK_DEADLINE_SECS: i32 = 20;
/// Deliveries before a message goes to the dead-letter topic.
pub const MAX_DELIVERY_ATTEMPTS: i32 = 10;

/// One push subscription: a name, the URL the emulator pushes to, and the token's audience.
pub struct PushSub {
    pub name: String,
    pub topic: String,
    pub endpoint: String,
    pub audience: String,
    pub account: &'static str,
}

pub fn topic(id: &str) -> String {
    format!("projects/{PROJECT}/topics/{id}")
}

async fn admins(endpoint: &str) -> (TopicAdmin, SubscriptionAdmin) {
    let t = TopicAdmin::builder().with_endpoint(endpoint).with_credentials(anonymous()).build().await.unwrap();
    let s = SubscriptionAdmin::builder().with_endpoint(endpoint).with_credentials(anonymous()).build().await.unwrap();
    (t, s)
}

fn already_exists(e: &impl std::fmt::Debug) -> bool {
    let s = format!("{e:?}");
    s.contains("AlreadyExists") || s.contains("ALREADY_EXISTS") || s.contains("already exists")
}

/// Creates `topics` and `subs` (what exists already is kept: a restart with state).
pub async fn create_layout(emulator: &str, topics: &[String], subs: &[PushSub]) {
    let endpoint = format!("http://{emulator}");
    let (t, s) = admins(&endpoint).await;
    for name in topics {
        if let Err(e) = t.create_topic().set_name(name).send().await {
            assert!(already_exists(&e), "create topic {name}: {e:?}");
        }
    }
    let secs = |n: i64| google_cloud_wkt::Duration::clamp(n, 0);
    for sub in subs {
        let mut req =
            s.create_subscription()
                .set_name(format!("projects/{PROJECT}/subscriptions/{}", sub.name))
                .set_topic(&sub.topic)
                .set_ack_deadline_seconds(ACK_DEADLINE_SECS)
                .set_push_config(PushConfig::new().set_push_endpoint(&sub.endpoint).set_oidc_token(
                    OidcToken::new().set_service_account_email(sub.account).set_audience(&sub.audience),
                ))
                .set_retry_policy(RetryPolicy::new().set_minimum_backoff(secs(1)).set_maximum_backoff(secs(10)));
        if sub.account == PUSH_ACCOUNT {
            req = req.set_dead_letter_policy(
                DeadLetterPolicy::new()
                    .set_dead_letter_topic(topic("runq-jobs-dead"))
                    .set_max_delivery_attempts(MAX_DELIVERY_ATTEMPTS),
            );
        }
        if let Err(e) = req.send().await {
            assert!(already_exists(&e), "create subscription {}: {e:?}", sub.name);
        }
    }
}

/// Cloud Scheduler's token: the emulator signs one for a capture subscription of ours.
pub struct SchedulerToken {
    audience: String,
    capture_url: String,
    rx: Mutex<mpsc::UnboundedReceiver<String>>,
}

impl SchedulerToken {
    pub async fn new(audience: String) -> Self {
        let (capture_url, rx) = crate::e2e_faults::capture_server().await;
        Self { audience, capture_url, rx: Mutex::new(rx) }
    }

    /// A fresh token from the emulator at `emulator` (whose key changes when it restarts empty).
    pub async fn fetch(&self, emulator: &str) -> Result<String, String> {
        let endpoint = format!("http://{emulator}");
        let (t, s) = admins(&endpoint).await;
        let topic = topic("scheduler-capture");
        let sub = format!("projects/{PROJECT}/subscriptions/scheduler-capture");
        if let Err(e) = t.create_topic().set_name(&topic).send().await
            && !already_exists(&e)
        {
            return Err(format!("{e:?}"));
        }
        let push = PushConfig::new()
            .set_push_endpoint(&self.capture_url)
            .set_oidc_token(OidcToken::new().set_service_account_email(SCHEDULER_ACCOUNT).set_audience(&self.audience));
        if let Err(e) = s.create_subscription().set_name(&sub).set_topic(&topic).set_push_config(push).send().await
            && !already_exists(&e)
        {
            return Err(format!("{e:?}"));
        }
        let publisher = Publisher::builder(&topic)
            .with_endpoint(&endpoint)
            .with_credentials(anonymous())
            .build()
            .await
            .map_err(|e| format!("{e:?}"))?;
        let mut rx = self.rx.lock().await;
        while rx.try_recv().is_ok() {}
        publisher.publish(Message::new().set_data("tick")).await.map_err(|e| format!("{e:?}"))?;
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(auth)) => Ok(auth.trim_start_matches("Bearer ").to_owned()),
            _ => Err("no push on the capture subscription within 10 s".into()),
        }
    }
}
