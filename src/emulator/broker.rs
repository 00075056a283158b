//! The broker: topics, subscriptions, publishing with fan-out, pulling, acks and the
//! reaper that expires leases and ends backoffs. One lock over all of it; nothing awaits
//! while holding it. Both transports call these methods, so they behave identically.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, mpsc};

use super::EmulatorOptions;
use super::clock::Clock;
use super::error::{ApiError, ApiResult};
use super::filter::Filter;
use super::json::{from_std, to_std};
use super::names;
use super::proto as pb;
use super::subscription::{
    DEFAULT_MAX_BACKOFF, DEFAULT_MIN_BACKOFF, DeadLetter, Delivery, FlowLimits, Msg, SubState,
};

/// Largest message, and largest publish request, Pub/Sub accepts (10 MB).
pub(crate) const MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;
/// Ack deadline when a subscription doesn't set one.
pub(crate) const DEFAULT_ACK_DEADLINE: i32 = 10;
/// Pub/Sub's ack deadline range, seconds.
pub(crate) const ACK_DEADLINE_RANGE: std::ops::RangeInclusive<i32> = 10..=600;
/// Pub/Sub's `maxDeliveryAttempts` range, and its default when 0.
pub(crate) const DELIVERY_ATTEMPTS_RANGE: std::ops::RangeInclusive<i32> = 5..=100;
const DEFAULT_DELIVERY_ATTEMPTS: i32 = 5;
/// Subscription message retention: default and range (10 minutes to 7 days).
const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
const MIN_RETENTION: Duration = Duration::from_secs(600);
const MAX_SUB_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_TOPIC_RETENTION: Duration = Duration::from_secs(31 * 24 * 3600);
/// Subscription expiration TTL Pub/Sub fills in (31 days); stored, never enforced.
const DEFAULT_EXPIRATION_TTL: Duration = Duration::from_secs(31 * 24 * 3600);
/// Backoff for failed pushes on subscriptions without a retry policy (Pub/Sub backs off
/// push failures on its own, from about 100 ms to 60 s).
pub(crate) const PUSH_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(60));
/// What a subscription whose topic was deleted reports as its topic, as in Pub/Sub.
const DELETED_TOPIC: &str = "_deleted-topic_";
/// Page size when a list request leaves it 0, and the most we return.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

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

fn validate_message(m: &pb::PubsubMessage) -> ApiResult<usize> {
    if m.data.is_empty() && m.attributes.is_empty() {
        return Err(ApiError::invalid(
            "Some messages are missing data and attributes; a message must have at least one.",
        ));
    }
    if m.attributes.len() > 100 {
        return Err(ApiError::invalid(
            "A message may have at most 100 attributes.",
        ));
    }
    for (k, v) in &m.attributes {
        if k.is_empty() || k.len() > 256 || v.len() > 1024 {
            return Err(ApiError::invalid(format!(
                "Invalid attribute {k:?}: keys must be 1-256 bytes, values at most 1024 bytes."
            )));
        }
        if k.to_ascii_lowercase().starts_with("goog") {
            return Err(ApiError::invalid(format!(
                "Invalid attribute {k:?}: keys starting with \"goog\" are reserved."
            )));
        }
    }
    if m.ordering_key.len() > 1024 {
        return Err(ApiError::invalid("Ordering keys are at most 1024 bytes."));
    }
    let size = m.data.len()
        + m.ordering_key.len()
        + m.attributes
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    if size > MAX_MESSAGE_BYTES {
        return Err(ApiError::invalid(format!(
            "Message size {size} exceeds the limit of {MAX_MESSAGE_BYTES} bytes."
        )));
    }
    Ok(size)
}

fn check_push_config(p: &pb::PushConfig) -> ApiResult<()> {
    if !p.push_endpoint.is_empty() {
        let url = reqwest::Url::parse(&p.push_endpoint).map_err(|_| {
            ApiError::invalid(format!("Invalid push endpoint: {}", p.push_endpoint))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ApiError::invalid(format!(
                "Invalid push endpoint: {}",
                p.push_endpoint
            )));
        }
    }
    if let Some(pb::push_config::AuthenticationMethod::OidcToken(o)) = &p.authentication_method
        && o.service_account_email.is_empty()
    {
        return Err(ApiError::invalid(
            "pushConfig.oidcToken.serviceAccountEmail is required.",
        ));
    }
    Ok(())
}

/// Checks a subscription against Pub/Sub's rules and fills in Pub/Sub's defaults.
fn normalize(mut s: pb::Subscription) -> ApiResult<(pb::Subscription, Option<Filter>)> {
    names::subscription(&s.name)?;
    if s.topic != DELETED_TOPIC {
        names::topic(&s.topic)?;
    }
    if s.ack_deadline_seconds == 0 {
        s.ack_deadline_seconds = DEFAULT_ACK_DEADLINE;
    }
    if !ACK_DEADLINE_RANGE.contains(&s.ack_deadline_seconds) {
        return Err(ApiError::invalid(format!(
            "Invalid ack_deadline_seconds: {}. It must be between 10 and 600.",
            s.ack_deadline_seconds
        )));
    }
    let retention = s
        .message_retention_duration
        .as_ref()
        .map_or(DEFAULT_RETENTION, to_std);
    if !(MIN_RETENTION..=MAX_SUB_RETENTION).contains(&retention) {
        return Err(ApiError::invalid(
            "Invalid message_retention_duration: it must be between 10 minutes and 7 days.",
        ));
    }
    s.message_retention_duration = Some(from_std(retention));
    if let Some(p) = &s.push_config {
        check_push_config(p)?;
    }
    if let Some(rp) = &mut s.retry_policy {
        let min = rp
            .minimum_backoff
            .as_ref()
            .map_or(DEFAULT_MIN_BACKOFF, to_std);
        let max = rp
            .maximum_backoff
            .as_ref()
            .map_or(DEFAULT_MAX_BACKOFF, to_std);
        let limit = Duration::from_secs(600);
        if min > limit || max > limit || min > max {
            return Err(ApiError::invalid(
                "Invalid retry_policy: minimum_backoff and maximum_backoff must be between 0 and 600 seconds, minimum at most maximum.",
            ));
        }
        rp.minimum_backoff = Some(from_std(min));
        rp.maximum_backoff = Some(from_std(max));
    }
    if let Some(d) = &mut s.dead_letter_policy {
        names::topic(&d.dead_letter_topic).map_err(|_| {
            ApiError::invalid(format!(
                "Invalid dead_letter_policy.dead_letter_topic: {:?}",
                d.dead_letter_topic
            ))
        })?;
        if d.max_delivery_attempts == 0 {
            d.max_delivery_attempts = DEFAULT_DELIVERY_ATTEMPTS;
        }
        if !DELIVERY_ATTEMPTS_RANGE.contains(&d.max_delivery_attempts) {
            return Err(ApiError::invalid(format!(
                "Invalid dead_letter_policy.max_delivery_attempts: {}. It must be between 5 and 100.",
                d.max_delivery_attempts
            )));
        }
    }
    if s.expiration_policy.is_none() {
        s.expiration_policy = Some(pb::ExpirationPolicy {
            ttl: Some(from_std(DEFAULT_EXPIRATION_TTL)),
        });
    }
    let filter = if s.filter.is_empty() {
        None
    } else {
        Some(
            Filter::parse(&s.filter)
                .map_err(|e| ApiError::invalid(format!("Invalid filter: {e}")))?,
        )
    };
    s.state = pb::subscription::State::Active as i32;
    Ok((s, filter))
}

fn is_push(s: &pb::Subscription) -> bool {
    s.push_config
        .as_ref()
        .is_some_and(|p| !p.push_endpoint.is_empty())
}

/// Backoff used when a subscription has no retry policy: none for pull, [`PUSH_BACKOFF`] for push.
fn fallback(s: &pb::Subscription) -> Option<(Duration, Duration)> {
    is_push(s).then_some(PUSH_BACKOFF)
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
        inner.topics.insert(
            t.name.clone(),
            TopicState {
                pb: t.clone(),
                subs: BTreeSet::new(),
            },
        );
        Ok(t)
    }

    pub(crate) fn get_topic(&self, name: &str) -> ApiResult<pb::Topic> {
        let (_, id) = names::topic(name)?;
        let inner = self.lock();
        inner
            .topics
            .get(name)
            .map(|t| t.pb.clone())
            .ok_or_else(|| ApiError::not_found(&id))
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
        let t = inner
            .topics
            .get(topic)
            .ok_or_else(|| ApiError::not_found(&id))?;
        page(t.subs.iter().map(|n| (n, n.clone())), page_size, token)
    }

    pub(crate) fn delete_topic(&self, name: &str) -> ApiResult<()> {
        let (_, id) = names::topic(name)?;
        let mut inner = self.lock();
        let t = inner
            .topics
            .remove(name)
            .ok_or_else(|| ApiError::not_found(&id))?;
        for s in t.subs {
            if let Some(sub) = inner.subs.get_mut(&s) {
                sub.config.topic = DELETED_TOPIC.to_string();
            }
        }
        Ok(())
    }

    /// Publishes to every subscription attached to `topic` now. Returns the message ids.
    pub(crate) fn publish(
        &self,
        topic: &str,
        messages: Vec<pb::PubsubMessage>,
    ) -> ApiResult<Vec<String>> {
        let (_, id) = names::topic(topic)?;
        if messages.is_empty() {
            return Err(ApiError::invalid(
                "The publish request contains no messages.",
            ));
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
        Ok(messages
            .into_iter()
            .map(|m| self.fanout(&mut inner, topic, m, now))
            .collect())
    }

    /// Stamps id and publish time on `m` and enqueues it on the topic's subscriptions.
    fn fanout(
        &self,
        inner: &mut Inner,
        topic: &str,
        mut m: pb::PubsubMessage,
        now: Instant,
    ) -> String {
        inner.next_message_id += 1;
        m.message_id = inner.next_message_id.to_string();
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        m.publish_time = Some(prost_types::Timestamp {
            seconds: wall.as_secs() as i64,
            nanos: wall.subsec_nanos() as i32,
        });
        let id = m.message_id.clone();
        let size = (m.data.len()
            + m.ordering_key.len()
            + m.attributes
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()) as i64;
        let msg = Arc::new(Msg {
            pb: m,
            size,
            published: now,
        });
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
        let publish_time = m
            .publish_time
            .as_ref()
            .map(super::json::timestamp_out)
            .unwrap_or_default();
        m.attributes.insert(
            "CloudPubSubDeadLetterSourceDeliveryCount".into(),
            d.attempts.to_string(),
        );
        m.attributes.insert(
            "CloudPubSubDeadLetterSourceSubscription".into(),
            source.to_string(),
        );
        m.attributes.insert(
            "CloudPubSubDeadLetterSourceSubscriptionProject".into(),
            project,
        );
        m.attributes.insert(
            "CloudPubSubDeadLetterSourceTopicPublishTime".into(),
            publish_time,
        );
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
        inner
            .subs
            .insert(s.name.clone(), SubState::new(s.clone(), filter, generation));
        if push {
            let _ = self.push_tx.send(s.name.clone());
        }
        Ok(s)
    }

    pub(crate) fn get_subscription(&self, name: &str) -> ApiResult<pb::Subscription> {
        let (_, id) = names::subscription(name)?;
        let inner = self.lock();
        inner
            .subs
            .get(name)
            .map(|s| s.config.clone())
            .ok_or_else(|| ApiError::not_found(&id))
    }

    /// Applies the fields named in `paths` (snake_case or camelCase) from `update`.
    pub(crate) fn update_subscription(
        &self,
        update: pb::Subscription,
        paths: &[String],
    ) -> ApiResult<pb::Subscription> {
        let (_, id) = names::subscription(&update.name)?;
        if paths.is_empty() {
            return Err(ApiError::invalid(
                "update_mask must name at least one field.",
            ));
        }
        let mut inner = self.lock();
        let sub = inner
            .subs
            .get_mut(&update.name)
            .ok_or_else(|| ApiError::not_found(&id))?;
        let mut next = sub.config.clone();
        for path in paths {
            match snake_case(path).as_str() {
                "ack_deadline_seconds" => next.ack_deadline_seconds = update.ack_deadline_seconds,
                "push_config" => next.push_config = update.push_config.clone(),
                "retry_policy" => next.retry_policy = update.retry_policy,
                "dead_letter_policy" => next.dead_letter_policy = update.dead_letter_policy.clone(),
                "labels" => next.labels = update.labels.clone(),
                "message_retention_duration" => {
                    next.message_retention_duration = update.message_retention_duration
                }
                "expiration_policy" => next.expiration_policy = update.expiration_policy,
                "retain_acked_messages" => {
                    next.retain_acked_messages = update.retain_acked_messages
                }
                "enable_exactly_once_delivery" => {
                    next.enable_exactly_once_delivery = update.enable_exactly_once_delivery
                }
                "detached" => next.detached = update.detached,
                "filter" | "enable_message_ordering" | "topic" | "name" => {
                    return Err(ApiError::invalid(format!(
                        "The field {path} of a subscription cannot be updated."
                    )));
                }
                other => {
                    return Err(ApiError::invalid(format!(
                        "Invalid update_mask path: {other}"
                    )));
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
        let sub = inner
            .subs
            .remove(name)
            .ok_or_else(|| ApiError::not_found(&id))?;
        if let Some(t) = inner.topics.get_mut(&sub.config.topic) {
            t.subs.remove(name);
        }
        sub.notify.notify_waiters();
        Ok(())
    }

    pub(crate) fn modify_push_config(
        &self,
        name: &str,
        config: Option<pb::PushConfig>,
    ) -> ApiResult<()> {
        let (_, id) = names::subscription(name)?;
        if let Some(p) = &config {
            check_push_config(p)?;
        }
        let mut inner = self.lock();
        let sub = inner
            .subs
            .get_mut(name)
            .ok_or_else(|| ApiError::not_found(&id))?;
        sub.config.push_config = config;
        sub.notify.notify_waiters();
        if is_push(&sub.config) {
            let _ = self.push_tx.send(name.to_string());
        }
        Ok(())
    }

    // ---- delivery ----

    /// A new consumer id for a StreamingPull stream (flow control and key affinity).
    pub(crate) fn new_consumer(&self) -> u64 {
        let mut inner = self.lock();
        inner.next_consumer += 1;
        inner.next_consumer
    }

    pub(crate) fn forget_consumer(&self, name: &str, consumer: u64) {
        let mut inner = self.lock();
        if let Some(s) = inner.subs.get_mut(name) {
            s.forget_consumer(consumer);
            s.notify.notify_waiters();
        }
    }

    /// What waiters for `name` wait on; NOT_FOUND if it doesn't exist.
    pub(crate) fn notifier(&self, name: &str) -> ApiResult<Arc<Notify>> {
        let (_, id) = names::subscription(name)?;
        let inner = self.lock();
        inner
            .subs
            .get(name)
            .map(|s| s.notify.clone())
            .ok_or_else(|| ApiError::not_found(&id))
    }

    /// Whether the subscription has a dead-letter policy and its ack deadline.
    pub(crate) fn subscription_properties(&self, name: &str) -> ApiResult<(bool, bool)> {
        let c = self.get_subscription(name)?;
        Ok((c.enable_exactly_once_delivery, c.enable_message_ordering))
    }

    fn take_locked(
        &self,
        inner: &mut Inner,
        name: &str,
        consumer: u64,
        max: usize,
        limits: FlowLimits,
        deadline_secs: Option<i32>,
    ) -> ApiResult<(Vec<Delivery>, pb::Subscription)> {
        let (_, id) = names::subscription(name)?;
        let now = Instant::now();
        let clock = self.clock;
        let sub = inner
            .subs
            .get_mut(name)
            .ok_or_else(|| ApiError::not_found(&id))?;
        let secs = deadline_secs.unwrap_or(sub.config.ack_deadline_seconds);
        let deadline = clock.real_secs(secs.max(0) as u64);
        let out = sub.take(now, &clock, consumer, max, limits, deadline);
        let config = if out.is_empty() {
            pb::Subscription::default()
        } else {
            sub.config.clone()
        };
        if !out.is_empty() {
            self.schedule(inner, now + deadline);
        }
        Ok((out, config))
    }

    /// Leases up to `max` messages without waiting (unary Pull and StreamingPull).
    pub(crate) fn pull(
        &self,
        name: &str,
        consumer: u64,
        max: usize,
        limits: FlowLimits,
        deadline_secs: Option<i32>,
    ) -> ApiResult<Vec<pb::ReceivedMessage>> {
        let mut inner = self.lock();
        let (out, config) =
            self.take_locked(&mut inner, name, consumer, max, limits, deadline_secs)?;
        drop(inner);
        let dlq = config.dead_letter_policy.is_some();
        Ok(out
            .into_iter()
            .map(|d| pb::ReceivedMessage {
                ack_id: d.ack_id,
                message: Some(d.msg.pb.clone()),
                delivery_attempt: if dlq { d.attempt } else { 0 },
            })
            .collect())
    }

    /// Unary Pull: waits up to `wait` for at least one message unless `immediately`.
    pub(crate) async fn pull_wait(
        &self,
        name: &str,
        max: i32,
        immediately: bool,
        wait: Duration,
    ) -> ApiResult<Vec<pb::ReceivedMessage>> {
        if max <= 0 {
            return Err(ApiError::invalid("max_messages must be greater than 0."));
        }
        let until = tokio::time::Instant::now() + wait;
        loop {
            let notify = self.notifier(name)?;
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let got = self.pull(name, 0, max as usize, FlowLimits::default(), None)?;
            if !got.is_empty() || immediately {
                return Ok(got);
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(until) => return Ok(Vec::new()),
            }
        }
    }

    /// Leases up to `max` messages for the pusher; `None` once it is no longer a push subscription.
    pub(crate) fn push_take(
        &self,
        name: &str,
        max: usize,
    ) -> ApiResult<Option<(Vec<Delivery>, PushTarget)>> {
        let mut inner = self.lock();
        let (_, id) = names::subscription(name)?;
        let sub = inner
            .subs
            .get_mut(name)
            .ok_or_else(|| ApiError::not_found(&id))?;
        if !is_push(&sub.config) {
            return Ok(None);
        }
        let target = PushTarget {
            subscription: name.to_string(),
            config: sub.config.push_config.clone().unwrap_or_default(),
            ack_deadline: self.clock.real_secs(sub.config.ack_deadline_seconds as u64),
            dead_lettering: sub.config.dead_letter_policy.is_some(),
        };
        let (out, _) = self.take_locked(&mut inner, name, 0, max, FlowLimits::default(), None)?;
        Ok(Some((out, target)))
    }

    /// Whether `name` exists and pushes (the push manager restarts pushers by this).
    pub(crate) fn is_push(&self, name: &str) -> bool {
        self.lock()
            .subs
            .get(name)
            .is_some_and(|s| is_push(&s.config))
    }

    pub(crate) fn acknowledge(&self, name: &str, ack_ids: &[String]) -> ApiResult<()> {
        let (_, id) = names::subscription(name)?;
        if ack_ids.is_empty() {
            return Err(ApiError::invalid("ack_ids must not be empty."));
        }
        let mut inner = self.lock();
        let sub = inner
            .subs
            .get_mut(name)
            .ok_or_else(|| ApiError::not_found(&id))?;
        let mut any = false;
        for a in ack_ids {
            any |= sub.ack(a);
        }
        if any {
            sub.notify.notify_waiters();
        }
        Ok(())
    }

    /// ModifyAckDeadline: 0 nacks, 1–600 extends from now. Unknown ack ids are ignored.
    pub(crate) fn modify_ack_deadline(
        &self,
        name: &str,
        ack_ids: &[String],
        seconds: i32,
    ) -> ApiResult<()> {
        let (_, id) = names::subscription(name)?;
        if !(0..=600).contains(&seconds) {
            return Err(ApiError::invalid(format!(
                "Invalid ack deadline given: {seconds}. It must be between 0 and 600 seconds."
            )));
        }
        if ack_ids.is_empty() {
            return Err(ApiError::invalid("ack_ids must not be empty."));
        }
        let mut inner = self.lock();
        if !inner.subs.contains_key(name) {
            return Err(ApiError::not_found(&id));
        }
        let now = Instant::now();
        if seconds == 0 {
            for a in ack_ids {
                self.nack_locked(&mut inner, name, a, now);
            }
        } else {
            let at = now + self.clock.real_secs(seconds as u64);
            let mut known = false;
            if let Some(sub) = inner.subs.get_mut(name) {
                for a in ack_ids {
                    known |= sub.extend(a, at);
                }
            }
            if known {
                self.schedule(&mut inner, at);
            }
        }
        Ok(())
    }

    fn nack_locked(&self, inner: &mut Inner, name: &str, ack_id: &str, now: Instant) {
        let clock = self.clock;
        let Some(sub) = inner.subs.get_mut(name) else {
            return;
        };
        let fb = fallback(&sub.config);
        let (dead, at) = sub.nack(ack_id, now, &clock, fb);
        sub.notify.notify_waiters();
        if let Some(at) = at.filter(|at| *at > now) {
            self.schedule(inner, at);
        }
        if let Some(d) = dead {
            self.dead_letter(inner, name, d, now);
        }
    }

    /// The outcome of one push: acked on success, nacked (with backoff) otherwise.
    pub(crate) fn push_result(&self, name: &str, ack_id: &str, ok: bool) {
        let mut inner = self.lock();
        if ok {
            if let Some(sub) = inner.subs.get_mut(name)
                && sub.ack(ack_id)
            {
                sub.notify.notify_waiters();
            }
        } else {
            self.nack_locked(&mut inner, name, ack_id, Instant::now());
        }
    }

    /// Messages not yet acked on `name` (backlog and outstanding); for tests and the bench.
    pub fn depth(&self, name: &str) -> Option<usize> {
        self.lock().subs.get(name).map(|s| s.depth())
    }

    /// One reaper pass: expires leases, wakes waiters whose backoffs ended, forwards dead
    /// letters. Returns when the next pass is due.
    fn reap(&self) -> Option<Instant> {
        let mut inner = self.lock();
        let now = Instant::now();
        let since = inner.last_pass;
        let clock = self.clock;
        let mut dead = Vec::new();
        for (name, sub) in inner.subs.iter_mut() {
            let fb = fallback(&sub.config);
            let (d, changed) = sub.expire(now, since, &clock, fb);
            if changed {
                sub.notify.notify_waiters();
            }
            dead.extend(d.into_iter().map(|d| (name.clone(), d)));
        }
        for (name, d) in dead {
            self.dead_letter(&mut inner, &name, d, now);
        }
        inner.last_pass = now;
        let next = inner.subs.values().filter_map(|s| s.next_event(now)).min();
        inner.next_wake = next;
        next
    }

    /// Runs the reaper until the task is aborted.
    pub(crate) async fn run_reaper(self: Arc<Self>) {
        loop {
            let notified = self.reaper.notified();
            match self.reap() {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => {}
                        _ = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

/// `ackDeadlineSeconds` → `ack_deadline_seconds`; snake_case passes through.
fn snake_case(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 4);
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}
