//! Delivery: pulling (unary and streaming), pushing, acks, deadline changes and the
//! reaper that expires leases and ends backoffs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::validate::{fallback, is_push};
use super::{Broker, Inner, PushTarget};
use crate::error::{ApiError, ApiResult};
use crate::names;
use crate::proto as pb;
use crate::subscription::{Delivery, FlowLimits};

impl Broker {
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
        inner.subs.get(name).map(|s| s.notify.clone()).ok_or_else(|| ApiError::not_found(&id))
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
        let sub = inner.subs.get_mut(name).ok_or_else(|| ApiError::not_found(&id))?;
        let secs = deadline_secs.unwrap_or(sub.config.ack_deadline_seconds);
        let deadline = clock.real_secs(secs.max(0) as u64);
        let out = sub.take(now, &clock, consumer, max, limits, deadline);
        let config = if out.is_empty() { pb::Subscription::default() } else { sub.config.clone() };
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
        let (out, config) = self.take_locked(&mut inner, name, consumer, max, limits, deadline_secs)?;
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
    pub(crate) fn push_take(&self, name: &str, max: usize) -> ApiResult<Option<(Vec<Delivery>, PushTarget)>> {
        let mut inner = self.lock();
        let (_, id) = names::subscription(name)?;
        let sub = inner.subs.get_mut(name).ok_or_else(|| ApiError::not_found(&id))?;
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
        self.lock().subs.get(name).is_some_and(|s| is_push(&s.config))
    }

    pub(crate) fn acknowledge(&self, name: &str, ack_ids: &[String]) -> ApiResult<()> {
        let (_, id) = names::subscription(name)?;
        if ack_ids.is_empty() {
            return Err(ApiError::invalid("ack_ids must not be empty."));
        }
        let mut inner = self.lock();
        let sub = inner.subs.get_mut(name).ok_or_else(|| ApiError::not_found(&id))?;
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
    pub(crate) fn modify_ack_deadline(&self, name: &str, ack_ids: &[String], seconds: i32) -> ApiResult<()> {
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
