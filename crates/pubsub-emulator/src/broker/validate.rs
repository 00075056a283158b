//! Pub/Sub's limits and defaults, and the checks that apply them.

use std::time::Duration;

use crate::error::{ApiError, ApiResult};
use crate::filter::Filter;
use crate::json::{from_std, to_std};
use crate::names;
use crate::proto as pb;
use crate::subscription::{DEFAULT_MAX_BACKOFF, DEFAULT_MIN_BACKOFF};

/// Largest message, and largest publish request, Pub/Sub accepts (10 MB).
pub(crate) const MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;
/// Ack deadline when a subscription doesn't set one.
pub(crate) const DEFAULT_ACK_DEADLINE: i32 = 10;
/// Pub/Sub's ack deadline range, seconds.
pub(crate) const ACK_DEADLINE_RANGE: std::ops::RangeInclusive<i32> = 10..=600;
/// Pub/Sub's `maxDeliveryAttempts` range, and its default when 0.
pub(crate) const DELIVERY_ATTEMPTS_RANGE: std::ops::RangeInclusive<i32> = 5..=100;
pub(super) const DEFAULT_DELIVERY_ATTEMPTS: i32 = 5;
/// Subscription message retention: default and range (10 minutes to 7 days).
pub(super) const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
pub(super) const MIN_RETENTION: Duration = Duration::from_secs(600);
pub(super) const MAX_SUB_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
pub(super) const MAX_TOPIC_RETENTION: Duration = Duration::from_secs(31 * 24 * 3600);
/// Subscription expiration TTL Pub/Sub fills in (31 days); stored, never enforced.
pub(super) const DEFAULT_EXPIRATION_TTL: Duration = Duration::from_secs(31 * 24 * 3600);
/// Backoff for failed pushes on subscriptions without a retry policy (Pub/Sub backs off
/// push failures on its own, from about 100 ms to 60 s).
pub(crate) const PUSH_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(60));
/// What a subscription whose topic was deleted reports as its topic, as in Pub/Sub.
pub(super) const DELETED_TOPIC: &str = "_deleted-topic_";
/// Page size when a list request leaves it 0, and the most we return.
pub(super) const DEFAULT_PAGE: usize = 100;
pub(super) const MAX_PAGE: usize = 1000;

pub(super) fn validate_message(m: &pb::PubsubMessage) -> ApiResult<usize> {
    if m.data.is_empty() && m.attributes.is_empty() {
        return Err(ApiError::invalid(
            "Some messages are missing data and attributes; a message must have at least one.",
        ));
    }
    if m.attributes.len() > 100 {
        return Err(ApiError::invalid("A message may have at most 100 attributes."));
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
    let size = m.data.len() + m.ordering_key.len() + m.attributes.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    if size > MAX_MESSAGE_BYTES {
        return Err(ApiError::invalid(format!("Message size {size} exceeds the limit of {MAX_MESSAGE_BYTES} bytes.")));
    }
    Ok(size)
}

pub(super) fn check_push_config(p: &pb::PushConfig) -> ApiResult<()> {
    if !p.push_endpoint.is_empty() {
        let url = reqwest::Url::parse(&p.push_endpoint)
            .map_err(|_| ApiError::invalid(format!("Invalid push endpoint: {}", p.push_endpoint)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ApiError::invalid(format!("Invalid push endpoint: {}", p.push_endpoint)));
        }
    }
    if let Some(pb::push_config::AuthenticationMethod::OidcToken(o)) = &p.authentication_method
        && o.service_account_email.is_empty()
    {
        return Err(ApiError::invalid("pushConfig.oidcToken.serviceAccountEmail is required."));
    }
    Ok(())
}

/// Checks a subscription against Pub/Sub's rules and fills in Pub/Sub's defaults.
pub(super) fn normalize(mut s: pb::Subscription) -> ApiResult<(pb::Subscription, Option<Filter>)> {
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
    let retention = s.message_retention_duration.as_ref().map_or(DEFAULT_RETENTION, to_std);
    if !(MIN_RETENTION..=MAX_SUB_RETENTION).contains(&retention) {
        return Err(ApiError::invalid("Invalid message_retention_duration: it must be between 10 minutes and 7 days."));
    }
    s.message_retention_duration = Some(from_std(retention));
    if let Some(p) = &s.push_config {
        check_push_config(p)?;
    }
    if let Some(rp) = &mut s.retry_policy {
        let min = rp.minimum_backoff.as_ref().map_or(DEFAULT_MIN_BACKOFF, to_std);
        let max = rp.maximum_backoff.as_ref().map_or(DEFAULT_MAX_BACKOFF, to_std);
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
            ApiError::invalid(format!("Invalid dead_letter_policy.dead_letter_topic: {:?}", d.dead_letter_topic))
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
        s.expiration_policy = Some(pb::ExpirationPolicy { ttl: Some(from_std(DEFAULT_EXPIRATION_TTL)) });
    }
    let filter = if s.filter.is_empty() {
        None
    } else {
        Some(Filter::parse(&s.filter).map_err(|e| ApiError::invalid(format!("Invalid filter: {e}")))?)
    };
    s.state = pb::subscription::State::Active as i32;
    Ok((s, filter))
}

pub(super) fn is_push(s: &pb::Subscription) -> bool {
    s.push_config.as_ref().is_some_and(|p| !p.push_endpoint.is_empty())
}

/// Backoff used when a subscription has no retry policy: none for pull, [`PUSH_BACKOFF`] for push.
pub(super) fn fallback(s: &pb::Subscription) -> Option<(Duration, Duration)> {
    is_push(s).then_some(PUSH_BACKOFF)
}

/// `ackDeadlineSeconds` → `ack_deadline_seconds`; snake_case passes through.
pub(super) fn snake_case(path: &str) -> String {
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
