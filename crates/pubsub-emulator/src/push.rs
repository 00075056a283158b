//! Push delivery: one pusher task per push subscription POSTs each message to the
//! endpoint (the JSON envelope, or the raw body with `noWrapper`), with an OIDC token when
//! configured. 102/200/201/202/204 ack; anything else, or no answer within the ack
//! deadline, nacks with backoff. A window of requests in flight grows on success and
//! halves on failure, capped by `max_outstanding_pushes`.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::Shared;
use super::broker::PushTarget;
use super::json::message_out;
use super::oidc::Signer;
use super::proto as pb;
use super::subscription::Delivery;

/// Statuses Pub/Sub counts as an ack; everything else is a nack.
pub(crate) const ACK_STATUSES: [u16; 5] = [102, 200, 201, 202, 204];
/// Google's push user agent, which endpoints sometimes check.
const USER_AGENT: &str = "APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)";
/// Requests in flight a new pusher starts with (slow start).
const INITIAL_WINDOW: usize = 8;

/// Starts a pusher for every subscription name it is sent (once), and restarts one when a
/// pusher exits while its subscription still pushes. Aborting this task stops all pushes.
pub(crate) async fn run_manager(broker: Shared, signer: Arc<Signer>, mut starts: mpsc::UnboundedReceiver<String>) {
    let client = reqwest::Client::builder().user_agent(USER_AGENT).build().unwrap_or_default();
    let mut pushers: JoinSet<String> = JoinSet::new();
    let mut running: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            start = starts.recv() => {
                let Some(name) = start else { break };
                if running.contains(&name) {
                    continue;
                }
                running.insert(name.clone());
                pushers.spawn(pusher(broker.clone(), signer.clone(), client.clone(), name));
            }
            Some(done) = pushers.join_next(), if !pushers.is_empty() => {
                let Ok(name) = done else { continue };
                running.remove(&name);
                if broker.is_push(&name) {
                    running.insert(name.clone());
                    pushers.spawn(pusher(broker.clone(), signer.clone(), client.clone(), name));
                }
            }
        }
    }
}

/// Push flow control: how many requests may be in flight.
struct Window {
    size: usize,
    max: usize,
}

impl Window {
    fn on(&mut self, ok: bool) {
        self.size = if ok { (self.size + 1).min(self.max) } else { (self.size / 2).max(1) };
    }
}

/// Delivers one subscription until it is deleted. Returns its name.
async fn pusher(broker: Shared, signer: Arc<Signer>, client: reqwest::Client, name: String) -> String {
    let max = broker.opts.max_outstanding_pushes.max(1);
    let mut window = Window { size: INITIAL_WINDOW.min(max), max };
    let mut sends: JoinSet<bool> = JoinSet::new();
    // Until the subscription is deleted.
    while let Ok(notify) = broker.notifier(&name) {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        while let Some(done) = sends.try_join_next() {
            window.on(done.unwrap_or(false));
        }
        let room = window.size.saturating_sub(sends.len());
        if room > 0 {
            match broker.push_take(&name, room) {
                Err(_) => break,
                Ok(Some((batch, target))) if !batch.is_empty() => {
                    let target = Arc::new(target);
                    for d in batch {
                        sends.spawn(send(broker.clone(), signer.clone(), client.clone(), target.clone(), d));
                    }
                    continue;
                }
                Ok(_) => {}
            }
        }
        tokio::select! {
            _ = &mut notified => {}
            Some(done) = sends.join_next(), if !sends.is_empty() => window.on(done.unwrap_or(false)),
        }
    }
    name
}

/// POSTs one delivery and reports the outcome to the broker. Returns whether it was acked.
async fn send(
    broker: Shared,
    signer: Arc<Signer>,
    client: reqwest::Client,
    target: Arc<PushTarget>,
    d: Delivery,
) -> bool {
    let ok = match request(&signer, &client, &target, &d) {
        Ok(req) => match req.send().await {
            Ok(resp) => ACK_STATUSES.contains(&resp.status().as_u16()),
            Err(e) => {
                tracing::debug!(subscription = %target.subscription, error = %e, "push failed");
                false
            }
        },
        Err(e) => {
            tracing::warn!(subscription = %target.subscription, error = %e, "push token signing failed");
            false
        }
    };
    broker.push_result(&target.subscription, &d.ack_id, ok);
    ok
}

fn request(
    signer: &Signer,
    client: &reqwest::Client,
    target: &PushTarget,
    d: &Delivery,
) -> Result<reqwest::RequestBuilder, jsonwebtoken::errors::Error> {
    let cfg = &target.config;
    let msg = &d.msg.pb;
    let mut req = client.post(&cfg.push_endpoint).timeout(target.ack_deadline);
    if let Some(pb::push_config::AuthenticationMethod::OidcToken(o)) = &cfg.authentication_method {
        let aud = if o.audience.is_empty() { cfg.push_endpoint.as_str() } else { o.audience.as_str() };
        let token = signer.token(&target.subscription, &o.service_account_email, aud)?;
        req = req.bearer_auth(token);
    }
    if let Some(pb::push_config::Wrapper::NoWrapper(w)) = &cfg.wrapper {
        // Unwrapped: the body is the data; attributes become headers, metadata too if asked.
        for (k, v) in &msg.attributes {
            req = req.header(k.as_str(), v.as_str());
        }
        if w.write_metadata {
            let time = msg.publish_time.as_ref().map(super::json::timestamp_out).unwrap_or_default();
            req = req
                .header("x-goog-pubsub-subscription-name", &target.subscription)
                .header("x-goog-pubsub-message-id", &msg.message_id)
                .header("x-goog-pubsub-publish-time", time);
            if !msg.ordering_key.is_empty() {
                req = req.header("x-goog-pubsub-ordering-key", &msg.ordering_key);
            }
            if target.dead_lettering {
                req = req.header("x-goog-pubsub-delivery-attempt", d.attempt.to_string());
            }
        }
        return Ok(req.body(msg.data.clone()));
    }
    let mut body = json!({
        "message": message_out(msg, true),
        "subscription": target.subscription,
    });
    if target.dead_lettering {
        body["deliveryAttempt"] = json!(d.attempt);
    }
    Ok(req.json(&body))
}
