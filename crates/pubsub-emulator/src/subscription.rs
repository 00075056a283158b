//! One subscription's delivery state: the backlog in publish order, leases (delivered,
//! not yet acked), ordering-key ownership, flow-control usage, retry backoff and the
//! dead-letter decision. Pure bookkeeping under the broker's lock; no I/O, no awaits.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::clock::Clock;
use super::filter::Filter;
use super::proto as pb;

/// Retry backoff when a subscription has a `retryPolicy` without one of its bounds.
pub(crate) const DEFAULT_MIN_BACKOFF: Duration = Duration::from_secs(10);
/// See [`DEFAULT_MIN_BACKOFF`].
pub(crate) const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(600);

/// A published message, stored once and shared by every subscription it fans out to.
#[derive(Debug)]
pub(crate) struct Msg {
    /// The message as delivered: `message_id` and `publish_time` filled in.
    pub(crate) pb: pb::PubsubMessage,
    /// Bytes counted against a stream's `max_outstanding_bytes`.
    pub(crate) size: i64,
    /// When it was published, for retention on the (possibly scaled) clock.
    pub(crate) published: Instant,
}

/// A message waiting in the backlog.
#[derive(Debug)]
struct Pending {
    msg: Arc<Msg>,
    /// Deliveries so far (a redelivered message keeps counting toward dead-lettering).
    attempts: i32,
    /// Retry backoff: not delivered before this instant.
    not_before: Instant,
}

/// A delivered, unacknowledged message.
#[derive(Debug)]
struct Lease {
    /// Publish sequence, so a nacked message goes back to its place in order.
    seq: u64,
    msg: Arc<Msg>,
    /// Deliveries including this one; `deliveryAttempt` when a dead-letter policy is set.
    attempts: i32,
    /// After this the lease expires and the message is redelivered (with backoff).
    deadline: Instant,
    /// Stream (or 0 for unary pull and push) holding it: flow control and key affinity.
    consumer: u64,
}

/// One delivery handed to a puller or pusher.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) ack_id: String,
    pub(crate) msg: Arc<Msg>,
    /// 1-based count of deliveries of this message to this subscription.
    pub(crate) attempt: i32,
}

/// What a nack or expiry produced: nothing more to do, or a message for the dead-letter topic.
#[derive(Debug)]
pub(crate) struct DeadLetter {
    pub(crate) msg: Arc<Msg>,
    pub(crate) attempts: i32,
    pub(crate) topic: String,
}

/// Messages and bytes a consumer holds, for StreamingPull flow control.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    msgs: i64,
    bytes: i64,
}

/// Limits a consumer asked for (0 = none).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FlowLimits {
    pub(crate) max_messages: i64,
    pub(crate) max_bytes: i64,
}

/// A subscription: its configuration and its delivery state.
#[derive(Debug)]
pub(crate) struct SubState {
    /// As created/updated, with defaults filled in; returned by Get/List.
    pub(crate) config: pb::Subscription,
    /// Parsed `filter`; messages that don't match are never enqueued (Pub/Sub acks them).
    pub(crate) filter: Option<Filter>,
    /// Distinguishes this subscription from an earlier one of the same name in ack ids.
    generation: u64,
    next_ack: u64,
    backlog: BTreeMap<u64, Pending>,
    leases: HashMap<String, Lease>,
    /// Ordering keys with messages out, and who holds them (messages of a key go to one consumer).
    keys: HashMap<String, (u64, u32)>,
    usage: HashMap<u64, Usage>,
    /// Woken on publish, ack, nack and expiry: pullers, streams and the pusher wait on it.
    pub(crate) notify: Arc<Notify>,
}

impl SubState {
    pub(crate) fn new(config: pb::Subscription, filter: Option<Filter>, generation: u64) -> Self {
        Self {
            config,
            filter,
            generation,
            next_ack: 0,
            backlog: BTreeMap::new(),
            leases: HashMap::new(),
            keys: HashMap::new(),
            usage: HashMap::new(),
            notify: Arc::new(Notify::new()),
        }
    }

    fn ordered(&self) -> bool {
        self.config.enable_message_ordering
    }

    /// Whether this subscription wants `msg` (its filter), before enqueueing.
    pub(crate) fn wants(&self, msg: &pb::PubsubMessage) -> bool {
        self.filter.as_ref().is_none_or(|f| f.matches(&msg.attributes))
    }

    pub(crate) fn enqueue(&mut self, seq: u64, msg: Arc<Msg>, now: Instant) {
        self.backlog.insert(seq, Pending { msg, attempts: 0, not_before: now });
    }

    /// Enqueues a message restored from a state file, with the deliveries it had.
    pub(crate) fn enqueue_redelivery(&mut self, seq: u64, msg: Arc<Msg>, attempts: i32, now: Instant) {
        self.backlog.insert(seq, Pending { msg, attempts, not_before: now });
    }

    /// Every unacknowledged message (waiting or out for delivery) in publish order, with its
    /// deliveries so far: what a state file keeps.
    pub(crate) fn unacked(&self) -> Vec<(Arc<Msg>, i32)> {
        let mut all: Vec<(u64, Arc<Msg>, i32)> =
            self.backlog.iter().map(|(seq, p)| (*seq, p.msg.clone(), p.attempts)).collect();
        all.extend(self.leases.values().map(|l| (l.seq, l.msg.clone(), l.attempts)));
        all.sort_by_key(|(seq, _, _)| *seq);
        all.into_iter().map(|(_, m, n)| (m, n)).collect()
    }

    /// Drops a consumer's flow-control accounting when its stream ends. Its leases stay
    /// until acked or expired, as in Pub/Sub.
    pub(crate) fn forget_consumer(&mut self, consumer: u64) {
        self.usage.remove(&consumer);
    }

    /// Leases up to `max` ready messages to `consumer` for `deadline` (already real time),
    /// in publish order, honouring backoff, ordering keys, retention and flow control.
    pub(crate) fn take(
        &mut self,
        now: Instant,
        clock: &Clock,
        consumer: u64,
        max: usize,
        limits: FlowLimits,
        deadline: Duration,
    ) -> Vec<Delivery> {
        let usage = self.usage.get(&consumer).copied().unwrap_or_default();
        let mut room = max;
        if limits.max_messages > 0 {
            room = room.min((limits.max_messages - usage.msgs).max(0) as usize);
        }
        if room == 0 {
            return Vec::new();
        }
        let retention = self.config.message_retention_duration.as_ref().map(|d| clock.real(super::json::to_std(d)));
        let ordered = self.ordered();
        let mut bytes_left = if limits.max_bytes > 0 { limits.max_bytes - usage.bytes } else { i64::MAX };
        let mut picked = Vec::new();
        let mut expired = Vec::new();
        let mut blocked: Vec<&str> = Vec::new();
        for (&seq, p) in &self.backlog {
            if picked.len() >= room {
                break;
            }
            if retention.is_some_and(|r| now.saturating_duration_since(p.msg.published) > r) {
                expired.push(seq);
                continue;
            }
            let key = p.msg.pb.ordering_key.as_str();
            let keyed = ordered && !key.is_empty();
            if keyed && blocked.contains(&key) {
                continue;
            }
            if p.not_before > now {
                if keyed {
                    blocked.push(key);
                }
                continue;
            }
            if keyed && self.keys.get(key).is_some_and(|(c, _)| *c != consumer) {
                blocked.push(key);
                continue;
            }
            if p.msg.size > bytes_left && !(picked.is_empty() && usage.msgs == 0) {
                break;
            }
            bytes_left -= p.msg.size;
            picked.push(seq);
        }
        for seq in expired {
            self.backlog.remove(&seq);
        }
        let mut out = Vec::with_capacity(picked.len());
        for seq in picked {
            let Some(p) = self.backlog.remove(&seq) else {
                continue;
            };
            self.next_ack += 1;
            let ack_id = format!("{:x}-{:x}", self.generation, self.next_ack);
            let attempts = p.attempts + 1;
            if ordered && !p.msg.pb.ordering_key.is_empty() {
                let e = self.keys.entry(p.msg.pb.ordering_key.clone()).or_insert((consumer, 0));
                e.1 += 1;
            }
            let u = self.usage.entry(consumer).or_default();
            u.msgs += 1;
            u.bytes += p.msg.size;
            out.push(Delivery { ack_id: ack_id.clone(), msg: p.msg.clone(), attempt: attempts });
            self.leases.insert(ack_id, Lease { seq, msg: p.msg, attempts, deadline: now + deadline, consumer });
        }
        out
    }

    fn release(&mut self, lease: &Lease) {
        let key = &lease.msg.pb.ordering_key;
        if !key.is_empty()
            && let Some(e) = self.keys.get_mut(key)
        {
            e.1 = e.1.saturating_sub(1);
            if e.1 == 0 {
                self.keys.remove(key);
            }
        }
        if let Some(u) = self.usage.get_mut(&lease.consumer) {
            u.msgs -= 1;
            u.bytes -= lease.msg.size;
        }
    }

    /// Acknowledges; unknown or expired ack ids are ignored, as Pub/Sub does.
    pub(crate) fn ack(&mut self, ack_id: &str) -> bool {
        match self.leases.remove(ack_id) {
            Some(lease) => {
                self.release(&lease);
                true
            }
            None => false,
        }
    }

    /// Extends a lease to `now + deadline` (real time). Returns whether it was known.
    pub(crate) fn extend(&mut self, ack_id: &str, deadline: Instant) -> bool {
        match self.leases.get_mut(ack_id) {
            Some(l) => {
                l.deadline = deadline;
                true
            }
            None => false,
        }
    }

    /// Emulated backoff before redelivering a message nacked after `attempts` deliveries:
    /// the retry policy's minimum doubled per attempt up to its maximum, else `fallback`.
    pub(crate) fn backoff(&self, attempts: i32, fallback: Option<(Duration, Duration)>) -> Duration {
        let bounds = match &self.config.retry_policy {
            Some(rp) => Some((
                rp.minimum_backoff.as_ref().map_or(DEFAULT_MIN_BACKOFF, super::json::to_std),
                rp.maximum_backoff.as_ref().map_or(DEFAULT_MAX_BACKOFF, super::json::to_std),
            )),
            None => fallback,
        };
        match bounds {
            None => Duration::ZERO,
            Some((min, max)) => {
                let factor = 2u32.saturating_pow((attempts - 1).clamp(0, 30) as u32);
                min.saturating_mul(factor).min(max).max(min.min(max))
            }
        }
    }

    /// Nacks (ModifyAckDeadline 0, a failed push, or an expired lease): the message goes
    /// back to its place in the backlog after its backoff, or to the dead-letter topic once
    /// it has had `maxDeliveryAttempts` deliveries. With ordering, the later messages of the
    /// same key that are out are taken back too, so the key is redelivered in order.
    /// Returns the dead letter, if any, and the instant redelivery becomes possible.
    pub(crate) fn nack(
        &mut self,
        ack_id: &str,
        now: Instant,
        clock: &Clock,
        fallback: Option<(Duration, Duration)>,
    ) -> (Option<DeadLetter>, Option<Instant>) {
        let Some(lease) = self.leases.remove(ack_id) else {
            return (None, None);
        };
        self.release(&lease);
        if let Some(dlp) = &self.config.dead_letter_policy
            && !dlp.dead_letter_topic.is_empty()
            && lease.attempts >= dlp.max_delivery_attempts.max(1)
        {
            let dead = DeadLetter { msg: lease.msg, attempts: lease.attempts, topic: dlp.dead_letter_topic.clone() };
            return (Some(dead), None);
        }
        let not_before = now + clock.real(self.backoff(lease.attempts, fallback));
        let key = lease.msg.pb.ordering_key.clone();
        if self.ordered() && !key.is_empty() {
            let later: Vec<String> = self
                .leases
                .iter()
                .filter(|(_, l)| l.msg.pb.ordering_key == key && l.seq > lease.seq)
                .map(|(id, _)| id.clone())
                .collect();
            for id in later {
                if let Some(l) = self.leases.remove(&id) {
                    self.release(&l);
                    self.backlog.insert(l.seq, Pending { msg: l.msg, attempts: l.attempts, not_before: now });
                }
            }
        }
        self.backlog.insert(lease.seq, Pending { msg: lease.msg, attempts: lease.attempts, not_before });
        (None, Some(not_before))
    }

    /// Expires leases past their deadline (as nacks). Returns dead letters and whether
    /// anything became deliverable since `since` (so waiters should be woken).
    pub(crate) fn expire(
        &mut self,
        now: Instant,
        since: Instant,
        clock: &Clock,
        fallback: Option<(Duration, Duration)>,
    ) -> (Vec<DeadLetter>, bool) {
        let due: Vec<String> =
            self.leases.iter().filter(|(_, l)| l.deadline <= now).map(|(id, _)| id.clone()).collect();
        let mut changed = !due.is_empty();
        let mut dead = Vec::new();
        for id in due {
            if let (Some(d), _) = self.nack(&id, now, clock, fallback) {
                dead.push(d);
            }
        }
        if !changed {
            changed = self.backlog.values().any(|p| p.not_before > since && p.not_before <= now);
        }
        (dead, changed)
    }

    /// The next instant something here changes by itself (a lease expiring, a backoff ending).
    pub(crate) fn next_event(&self, now: Instant) -> Option<Instant> {
        let leases = self.leases.values().map(|l| l.deadline);
        let backoffs = self.backlog.values().map(|p| p.not_before).filter(|t| *t > now);
        leases.chain(backoffs).min()
    }
}
