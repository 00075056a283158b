//! The broker: topics, subscriptions, publishing with fan-out, pulling, acks and the
//! reaper that expires leases and ends backoffs. One lock over all of it; nothing awaits
//! while holding it. Both transports call these methods, so they behave identically.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, mpsc};

mod delivery;
mod state;
mod validate;

pub(crate) use state::Snapshot;

pub(crate) use validate::ACK_DEADLINE_RANGE;
use validate::*;

use super::EmulatorOptions;
use super::clock::Clock;
use super::error::{ApiError, ApiResult};
use super::json::to_std;
use super::names;
use super::proto as pb;
use super::subscription::{DeadLetter, Msg, SubState};

#[derive(Debug)]
struct TopicState {
    pb: pb::Topic,
    /// Subscriptions attached, which each get every message published from now on.
    subs: BTreeSet<String>,
}

#[derive(Debug)]
struct Inner {
    topics: BTreeMap<String, TopicState>,
    subs: BTreeMap<String, SubState>,
    /// Publish sequence: global order of messages, kept through redelivery.
    next_seq: u64,
    next_message_id: u64,
    /// Makes ack ids of a recreated subscription differ from the old one's.
    next_generation: u64,
    next_consumer: u64,
    /// When the reaper plans to wake; earlier events notify it.
    next_wake: Option<Instant>,
    /// When the reaper last ran, to see which backoffs ended since.
    last_pass: Instant,
}

/// Where and how a push subscription delivers, copied out of the lock for one batch.
#[derive(Debug, Clone)]
pub(crate) struct PushTarget {
    pub(crate) subscription: String,
    pub(crate) config: pb::PushConfig,
    pub(crate) ack_deadline: Duration,
    /// Whether a dead-letter policy is set (then the envelope carries `deliveryAttempt`).
    pub(crate) dead_lettering: bool,
}

/// All topics and subscriptions of one emulator.
#[derive(Debug)]
pub(crate) struct Broker {
    inner: Mutex<Inner>,
    pub(crate) clock: Clock,
    pub(crate) opts: EmulatorOptions,
    /// Wakes the reaper when something is due earlier than it planned.
    reaper: Notify,
    /// Names of subscriptions that now have a push endpoint; the push manager starts pushers.
    push_tx: mpsc::UnboundedSender<String>,
}

fn page<'a, T: 'a>(
    items: impl Iterator<Item = (&'a String, T)>,
    page_size: i32,
    token: &str,
) -> ApiResult<(Vec<T>, String)> {
    if page_size < 0 {
        return Err(ApiError::invalid("page_size must not be negative"));
    }
    let size = match page_size {
        0 => DEFAULT_PAGE,
        n => (n as usize).min(MAX_PAGE),
    };
    let mut out = Vec::new();
    let mut next = String::new();
    for (name, item) in items.filter(|(n, _)| token.is_empty() || n.as_str() > token) {
        if out.len() == size {
            break;
        }
        out.push(item);
        next = name.clone();
    }
    Ok((out, next))
}

impl Broker {
    pub(crate) fn new(opts: EmulatorOptions, push_tx: mpsc::UnboundedSender<String>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                topics: BTreeMap::new(),
                subs: BTreeMap::new(),
                next_seq: 0,
                next_message_id: 0,
                next_generation: 0,
                next_consumer: 0,
                next_wake: None,
                last_pass: Instant::now(),
            }),
            clock: Clock::new(opts.time_scale),
            opts,
            reaper: Notify::new(),
            push_tx,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not take every later request down with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the reaper about an event at `at` if that is earlier than it planned.
    fn schedule(&self, inner: &mut Inner, at: Instant) {
        if inner.next_wake.is_none_or(|w| at < w) {
            inner.next_wake = Some(at);
            self.reaper.notify_one();
        }
    }

    // ---- topics ----

    pub(crate) fn create_topic(&self, mut t: pb::Topic) -> ApiResult<pb::Topic> {
        let (_, id) = names::topic(&t.name)?;
        if let Some(d) = &t.message_retention_duration
            && !(MIN_RETENTION..=MAX_TOPIC_RETENTION).contains(&to_std(d))
        {
            return Err(ApiError::invalid(
                "Invalid message_retention_duration: it must be between 10 minutes and 31 days.",
            ));
        }
        t.state = pb::topic::State::Active as i32;
        let mut inner = self.lock();
        if inner.topics.contains_key(&t.name) {
            return Err(ApiError::already_exists(&id));
        }
        inner.topics.insert(t.name.clone(), TopicState { pb: t.clone(), subs: BTreeSet::new() });
        Ok(t)
    }

    pub(crate) fn get_topic(&self, name: &str) -> ApiResult<pb::Topic> {
        let (_, id) = names::topic(name)?;
        let inner = self.lock();
        inner.topics.get(name).map(|t| t.pb.clone()).ok_or_else(|| ApiError::not_found(&id))
    }

    pub(crate) fn list_topics(
        &self,
        project: &str,
        page_size: i32,
        token: &str,
    ) -> ApiResult<(Vec<pb::Topic>, String)> {
        let p = names::project(project)?;
        let prefix = format!("projects/{p}/topics/");
        let inner = self.lock();
        page(
            inner
                .topics
                .range(prefix.clone()..)
                .take_while(|(n, _)| n.starts_with(&prefix))
                .map(|(n, t)| (n, t.pb.clone())),
            page_size,
            token,
        )
    }

    pub(crate) fn list_topic_subscriptions(
        &self,
        topic: &str,
        page_size: i32,
        token: &str,
    ) -> ApiResult<(Vec<String>, String)> {
        let (_, id) = names::topic(topic)?;
        let inner = self.lock();
        let t = inner.topics.get(topic).ok_or_else(|| ApiError::not_found(&id))?;
        page(t.subs.iter().map(|n| (n, n.clone())), page_size, token)
    }

    pub(crate) fn delete_topic(&self, name: &str) -> ApiResult<()> {
        let (_, id) = names::topic(name)?;
        let mut inner = self.lock();
        let t = inner.topics.remove(name).ok_or_else(|| ApiError::not_found(&id))?;
        for s in t.subs {
            if let Some(sub) = inner.subs.get_mut(&s) {
                sub.config.topic = DELETED_TOPIC.to_string();
            }
        }
        Ok(())
    }

    /// Publishes to every subscription attached to `topic` now. Returns the message ids.
    pub(crate) fn publish(&self, topic: &str, messages: Vec<pb::PubsubMessage>) -> ApiResult<Vec<String>> {
        let (_, id) = names::topic(topic)?;
        if messages.is_empty() {
            return Err(ApiError::invalid("The publish request contains no messages."));
        }
        let mut total = 0;
        for m in &messages {
            total += validate_message(m)?;
        }
        if total > MAX_MESSAGE_BYTES {
            return Err(ApiError::invalid(format!(
                "Request payload size {total} exceeds the limit of {MAX_MESSAGE_BYTES} bytes."
            )));
        }
        let mut inner = self.lock();
        if !inner.topics.contains_key(topic) {
            return Err(ApiError::not_found(&id));
        }
        let now = Instant::now();
        Ok(messages.into_iter().map(|m| self.fanout(&mut inner, topic, m, now)).collect())
    }

    /// Stamps id and publish time on `m` and enqueues it on the topic's subscriptions.
    fn fanout(&self, inner: &mut Inner, topic: &str, mut m: pb::PubsubMessage, now: Instant) -> String {
        inner.next_message_id += 1;
        m.message_id = inner.next_message_id.to_string();
        let wall = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        m.publish_time =
            Some(prost_types::Timestamp { seconds: wall.as_secs() as i64, nanos: wall.subsec_nanos() as i32 });
        let id = m.message_id.clone();
        let size = (m.data.len()
            + m.ordering_key.len()
            + m.attributes.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()) as i64;
        let msg = Arc::new(Msg { pb: m, size, published: now });
        let Some(t) = inner.topics.get(topic) else {
            return id;
        };
        let subs: Vec<String> = t.subs.iter().cloned().collect();
        for s in subs {
            inner.next_seq += 1;
            let seq = inner.next_seq;
            if let Some(sub) = inner.subs.get_mut(&s)
                && sub.wants(&msg.pb)
            {
                sub.enqueue(seq, msg.clone(), now);
                sub.notify.notify_waiters();
            }
        }
        id
    }

    /// Forwards a message that ran out of delivery attempts to the dead-letter topic, with
    /// the `CloudPubSubDeadLetter*` attributes Pub/Sub adds. Dropped if the topic is gone.
    fn dead_letter(&self, inner: &mut Inner, source: &str, d: DeadLetter, now: Instant) {
        if !inner.topics.contains_key(&d.topic) {
            tracing::warn!(subscription = source, topic = %d.topic, "dead-letter topic missing; message dropped");
            return;
        }
        let mut m = d.msg.pb.clone();
        let (project, _) = names::subscription(source).unwrap_or_default();
        let publish_time = m.publish_time.as_ref().map(super::json::timestamp_out).unwrap_or_default();
        m.attributes.insert("CloudPubSubDeadLetterSourceDeliveryCount".into(), d.attempts.to_string());
        m.attributes.insert("CloudPubSubDeadLetterSourceSubscription".into(), source.to_string());
        m.attributes.insert("CloudPubSubDeadLetterSourceSubscriptionProject".into(), project);
        m.attributes.insert("CloudPubSubDeadLetterSourceTopicPublishTime".into(), publish_time);
        self.fanout(inner, &d.topic, m, now);
    }

    // ---- subscriptions ----

    pub(crate) fn create_subscription(&self, s: pb::Subscription) -> ApiResult<pb::Subscription> {
        let (s, filter) = normalize(s)?;
        let (_, id) = names::subscription(&s.name)?;
        let mut inner = self.lock();
        if inner.subs.contains_key(&s.name) {
            return Err(ApiError::already_exists(&id));
        }
        let Some(t) = inner.topics.get_mut(&s.topic) else {
            let (_, tid) = names::topic(&s.topic)?;
            return Err(ApiError::not_found(&tid));
        };
        t.subs.insert(s.name.clone());
        inner.next_generation += 1;
        let generation = inner.next_generation;
        let push = is_push(&s);
        inner.subs.insert(s.name.clone(), SubState::new(s.clone(), filter, generation));
        if push {
            let _ = self.push_tx.send(s.name.clone());
        }
        Ok(s)
    }

    pub(crate) fn get_subscription(&self, name: &str) -> ApiResult<pb::Subscription> {
        let (_, id) = names::subscription(name)?;
        let inner = self.lock();
        inner.subs.get(name).map(|s| s.config.clone()).ok_or_else(|| ApiError::not_found(&id))
    }

    /// Applies the fields named in `paths` (snake_case or camelCase) from `update`.
    pub(crate) fn update_subscription(
        &self,
        update: pb::Subscription,
        paths: &[String],
    ) -> ApiResult<pb::Subscription> {
        let (_, id) = names::subscription(&update.name)?;
        if paths.is_empty() {
            return Err(ApiError::invalid("update_mask must name at least one field."));
        }
        let mut inner = self.lock();
        let sub = inner.subs.get_mut(&update.name).ok_or_else(|| ApiError::not_found(&id))?;
        let mut next = sub.config.clone();
        for path in paths {
            match snake_case(path).as_str() {
                "ack_deadline_seconds" => next.ack_deadline_seconds = update.ack_deadline_seconds,
                "push_config" => next.push_config = update.push_config.clone(),
                "retry_policy" => next.retry_policy = update.retry_policy,
                "dead_letter_policy" => next.dead_letter_policy = update.dead_letter_policy.clone(),
                "labels" => next.labels = update.labels.clone(),
                "message_retention_duration" => next.message_retention_duration = update.message_retention_duration,
                "expiration_policy" => next.expiration_policy = update.expiration_policy,
                "retain_acked_messages" => next.retain_acked_messages = update.retain_acked_messages,
                "enable_exactly_once_delivery" => {
                    next.enable_exactly_once_delivery = update.enable_exactly_once_delivery
                }
                "detached" => next.detached = update.detached,
                "filter" | "enable_message_ordering" | "topic" | "name" => {
                    return Err(ApiError::invalid(format!("The field {path} of a subscription cannot be updated.")));
                }
                other => {
                    return Err(ApiError::invalid(format!("Invalid update_mask path: {other}")));
                }
            }
        }
        let (next, _) = normalize(next)?;
        let push = is_push(&next);
        sub.config = next.clone();
        sub.notify.notify_waiters();
        if push {
            let _ = self.push_tx.send(next.name.clone());
        }
        Ok(next)
    }

    pub(crate) fn list_subscriptions(
        &self,
        project: &str,
        page_size: i32,
        token: &str,
    ) -> ApiResult<(Vec<pb::Subscription>, String)> {
        let p = names::project(project)?;
        let prefix = format!("projects/{p}/subscriptions/");
        let inner = self.lock();
        page(
            inner
                .subs
                .range(prefix.clone()..)
                .take_while(|(n, _)| n.starts_with(&prefix))
                .map(|(n, s)| (n, s.config.clone())),
            page_size,
            token,
        )
    }

    pub(crate) fn delete_subscription(&self, name: &str) -> ApiResult<()> {
        let (_, id) = names::subscription(name)?;
        let mut inner = self.lock();
        let sub = inner.subs.remove(name).ok_or_else(|| ApiError::not_found(&id))?;
        if let Some(t) = inner.topics.get_mut(&sub.config.topic) {
            t.subs.remove(name);
        }
        sub.notify.notify_waiters();
        Ok(())
    }

    pub(crate) fn modify_push_config(&self, name: &str, config: Option<pb::PushConfig>) -> ApiResult<()> {
        let (_, id) = names::subscription(name)?;
        if let Some(p) = &config {
            check_push_config(p)?;
        }
        let mut inner = self.lock();
        let sub = inner.subs.get_mut(name).ok_or_else(|| ApiError::not_found(&id))?;
        sub.config.push_config = config;
        sub.notify.notify_waiters();
        if is_push(&sub.config) {
            let _ = self.push_tx.send(name.to_string());
        }
        Ok(())
    }
}
