//! proto3 JSON for the REST surface: camelCase names, durations as `"600s"`, timestamps as
//! RFC 3339, bytes as base64, enums as numbers or names (numbers when the client asked for
//! `enum-encoding=int`, as the official crate does). Lenient in, canonical out.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::error::{ApiError, ApiResult};
use super::proto as pb;

/// How to write enums: numbers (`$alt=json;enum-encoding=int`) or names.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Enc {
    pub(crate) int_enums: bool,
}

/// A protobuf duration as a std one (negative becomes zero).
pub(crate) fn to_std(d: &prost_types::Duration) -> Duration {
    if d.seconds < 0 || d.nanos < 0 {
        return Duration::ZERO;
    }
    Duration::new(d.seconds as u64, d.nanos as u32)
}

pub(crate) fn from_std(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

fn duration_out(d: &prost_types::Duration) -> Value {
    if d.nanos == 0 {
        Value::String(format!("{}s", d.seconds))
    } else {
        Value::String(format!("{}.{:09}s", d.seconds, d.nanos))
    }
}

fn duration_in(field: &str, v: &Value) -> ApiResult<prost_types::Duration> {
    let bad = || ApiError::invalid(format!("Invalid value at '{field}': {v}"));
    let s = v.as_str().ok_or_else(bad)?;
    let num = s.strip_suffix('s').ok_or_else(bad)?;
    let (neg, num) = match num.strip_prefix('-') {
        Some(n) => (true, n),
        None => (false, num),
    };
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if whole.is_empty() || frac.len() > 9 || !frac.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let seconds: i64 = whole.parse().map_err(|_| bad())?;
    let nanos: i32 = if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse().map_err(|_| bad())? };
    Ok(if neg {
        prost_types::Duration { seconds: -seconds, nanos: -nanos }
    } else {
        prost_types::Duration { seconds, nanos }
    })
}

/// RFC 3339 with nanoseconds, UTC (`2024-05-01T12:00:00.123456789Z`).
pub(crate) fn timestamp_out(ts: &prost_types::Timestamp) -> String {
    chrono::DateTime::from_timestamp(ts.seconds, ts.nanos.max(0) as u32)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

fn obj<'a>(v: &'a Value, field: &str) -> ApiResult<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| ApiError::invalid(format!("Invalid value at '{field}': expected an object")))
}

fn string(m: &Map<String, Value>, key: &str) -> ApiResult<String> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(ApiError::invalid(format!("Invalid value at '{key}' (TYPE_STRING), {v}"))),
    }
}

fn int32(m: &Map<String, Value>, key: &str) -> ApiResult<i32> {
    let bad = |v: &Value| ApiError::invalid(format!("Invalid value at '{key}' (TYPE_INT32), {v}"));
    match m.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(v @ Value::Number(n)) => n.as_i64().and_then(|n| i32::try_from(n).ok()).ok_or_else(|| bad(v)),
        Some(v @ Value::String(s)) => s.parse().map_err(|_| bad(v)),
        Some(v) => Err(bad(v)),
    }
}

fn boolean(m: &Map<String, Value>, key: &str) -> ApiResult<bool> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(ApiError::invalid(format!("Invalid value at '{key}' (TYPE_BOOL), {v}"))),
    }
}

fn string_map(m: &Map<String, Value>, key: &str) -> ApiResult<HashMap<String, String>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(HashMap::new()),
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                v => Err(ApiError::invalid(format!("Invalid value at '{key}[{k}]' (TYPE_STRING), {v}"))),
            })
            .collect(),
        Some(v) => Err(ApiError::invalid(format!("Invalid value at '{key}', {v}"))),
    }
}

fn opt_duration(m: &Map<String, Value>, key: &str) -> ApiResult<Option<prost_types::Duration>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => duration_in(key, v).map(Some),
    }
}

fn enum_out(enc: Enc, n: i32, name: &str) -> Value {
    if enc.int_enums { json!(n) } else { json!(name) }
}

pub(crate) fn topic_out(t: &pb::Topic, enc: Enc) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(t.name));
    if !t.labels.is_empty() {
        m.insert("labels".into(), json!(t.labels));
    }
    if !t.kms_key_name.is_empty() {
        m.insert("kmsKeyName".into(), json!(t.kms_key_name));
    }
    if let Some(d) = &t.message_retention_duration {
        m.insert("messageRetentionDuration".into(), duration_out(d));
    }
    let state = pb::topic::State::try_from(t.state).unwrap_or_default();
    m.insert("state".into(), enum_out(enc, t.state, state.as_str_name()));
    Value::Object(m)
}

pub(crate) fn topic_in(v: &Value) -> ApiResult<pb::Topic> {
    let m = obj(v, "topic")?;
    Ok(pb::Topic {
        name: string(m, "name")?,
        labels: string_map(m, "labels")?,
        kms_key_name: string(m, "kmsKeyName")?,
        message_retention_duration: opt_duration(m, "messageRetentionDuration")?,
        state: 0,
    })
}

fn push_config_out(p: &pb::PushConfig) -> Value {
    let mut m = Map::new();
    if !p.push_endpoint.is_empty() {
        m.insert("pushEndpoint".into(), json!(p.push_endpoint));
    }
    if !p.attributes.is_empty() {
        m.insert("attributes".into(), json!(p.attributes));
    }
    if let Some(pb::push_config::AuthenticationMethod::OidcToken(o)) = &p.authentication_method {
        m.insert("oidcToken".into(), json!({"serviceAccountEmail": o.service_account_email, "audience": o.audience}));
    }
    match &p.wrapper {
        Some(pb::push_config::Wrapper::PubsubWrapper(_)) => {
            m.insert("pubsubWrapper".into(), json!({}));
        }
        Some(pb::push_config::Wrapper::NoWrapper(w)) => {
            m.insert("noWrapper".into(), json!({"writeMetadata": w.write_metadata}));
        }
        None => {}
    }
    Value::Object(m)
}

pub(crate) fn push_config_in(v: &Value) -> ApiResult<pb::PushConfig> {
    let m = obj(v, "pushConfig")?;
    let authentication_method = match m.get("oidcToken") {
        None | Some(Value::Null) => None,
        Some(o) => {
            let o = obj(o, "pushConfig.oidcToken")?;
            Some(pb::push_config::AuthenticationMethod::OidcToken(pb::push_config::OidcToken {
                service_account_email: string(o, "serviceAccountEmail")?,
                audience: string(o, "audience")?,
            }))
        }
    };
    let wrapper = match (m.get("pubsubWrapper"), m.get("noWrapper")) {
        (_, Some(w)) if !w.is_null() => Some(pb::push_config::Wrapper::NoWrapper(pb::push_config::NoWrapper {
            write_metadata: boolean(obj(w, "pushConfig.noWrapper")?, "writeMetadata")?,
        })),
        (Some(w), _) if !w.is_null() => {
            Some(pb::push_config::Wrapper::PubsubWrapper(pb::push_config::PubsubWrapper {}))
        }
        _ => None,
    };
    Ok(pb::PushConfig {
        push_endpoint: string(m, "pushEndpoint")?,
        attributes: string_map(m, "attributes")?,
        authentication_method,
        wrapper,
    })
}

pub(crate) fn subscription_out(s: &pb::Subscription, enc: Enc) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(s.name));
    m.insert("topic".into(), json!(s.topic));
    if let Some(p) = &s.push_config {
        m.insert("pushConfig".into(), push_config_out(p));
    }
    m.insert("ackDeadlineSeconds".into(), json!(s.ack_deadline_seconds));
    if s.retain_acked_messages {
        m.insert("retainAckedMessages".into(), json!(true));
    }
    if let Some(d) = &s.message_retention_duration {
        m.insert("messageRetentionDuration".into(), duration_out(d));
    }
    if !s.labels.is_empty() {
        m.insert("labels".into(), json!(s.labels));
    }
    if s.enable_message_ordering {
        m.insert("enableMessageOrdering".into(), json!(true));
    }
    if let Some(e) = &s.expiration_policy {
        let mut em = Map::new();
        if let Some(ttl) = &e.ttl {
            em.insert("ttl".into(), duration_out(ttl));
        }
        m.insert("expirationPolicy".into(), Value::Object(em));
    }
    if !s.filter.is_empty() {
        m.insert("filter".into(), json!(s.filter));
    }
    if let Some(d) = &s.dead_letter_policy {
        m.insert(
            "deadLetterPolicy".into(),
            json!({"deadLetterTopic": d.dead_letter_topic, "maxDeliveryAttempts": d.max_delivery_attempts}),
        );
    }
    if let Some(r) = &s.retry_policy {
        let mut rm = Map::new();
        if let Some(d) = &r.minimum_backoff {
            rm.insert("minimumBackoff".into(), duration_out(d));
        }
        if let Some(d) = &r.maximum_backoff {
            rm.insert("maximumBackoff".into(), duration_out(d));
        }
        m.insert("retryPolicy".into(), Value::Object(rm));
    }
    if s.detached {
        m.insert("detached".into(), json!(true));
    }
    if s.enable_exactly_once_delivery {
        m.insert("enableExactlyOnceDelivery".into(), json!(true));
    }
    if let Some(d) = &s.topic_message_retention_duration {
        m.insert("topicMessageRetentionDuration".into(), duration_out(d));
    }
    let state = pb::subscription::State::try_from(s.state).unwrap_or_default();
    m.insert("state".into(), enum_out(enc, s.state, state.as_str_name()));
    Value::Object(m)
}

pub(crate) fn subscription_in(v: &Value) -> ApiResult<pb::Subscription> {
    let m = obj(v, "subscription")?;
    let push_config = match m.get("pushConfig") {
        None | Some(Value::Null) => None,
        Some(p) => Some(push_config_in(p)?),
    };
    let expiration_policy = match m.get("expirationPolicy") {
        None | Some(Value::Null) => None,
        Some(e) => Some(pb::ExpirationPolicy { ttl: opt_duration(obj(e, "expirationPolicy")?, "ttl")? }),
    };
    let dead_letter_policy = match m.get("deadLetterPolicy") {
        None | Some(Value::Null) => None,
        Some(d) => {
            let d = obj(d, "deadLetterPolicy")?;
            Some(pb::DeadLetterPolicy {
                dead_letter_topic: string(d, "deadLetterTopic")?,
                max_delivery_attempts: int32(d, "maxDeliveryAttempts")?,
            })
        }
    };
    let retry_policy = match m.get("retryPolicy") {
        None | Some(Value::Null) => None,
        Some(r) => {
            let r = obj(r, "retryPolicy")?;
            Some(pb::RetryPolicy {
                minimum_backoff: opt_duration(r, "minimumBackoff")?,
                maximum_backoff: opt_duration(r, "maximumBackoff")?,
            })
        }
    };
    Ok(pb::Subscription {
        name: string(m, "name")?,
        topic: string(m, "topic")?,
        push_config,
        ack_deadline_seconds: int32(m, "ackDeadlineSeconds")?,
        retain_acked_messages: boolean(m, "retainAckedMessages")?,
        message_retention_duration: opt_duration(m, "messageRetentionDuration")?,
        labels: string_map(m, "labels")?,
        enable_message_ordering: boolean(m, "enableMessageOrdering")?,
        expiration_policy,
        filter: string(m, "filter")?,
        dead_letter_policy,
        retry_policy,
        detached: boolean(m, "detached")?,
        enable_exactly_once_delivery: boolean(m, "enableExactlyOnceDelivery")?,
        topic_message_retention_duration: None,
        state: 0,
    })
}

/// A message from a REST publish body (`data` base64, `attributes`, `orderingKey`).
pub(crate) fn message_in(v: &Value) -> ApiResult<pb::PubsubMessage> {
    let m = obj(v, "messages")?;
    let data = string(m, "data")?;
    let data = base64::engine::general_purpose::STANDARD
        .decode(data.as_bytes())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(data.as_bytes()))
        .map_err(|_| ApiError::invalid("Invalid value at 'messages.data' (TYPE_BYTES), Base64 decoding failed"))?;
    Ok(pb::PubsubMessage {
        data: data.into(),
        attributes: string_map(m, "attributes")?,
        message_id: String::new(),
        publish_time: None,
        ordering_key: string(m, "orderingKey")?,
    })
}

/// A delivered message as JSON. `push` adds the snake_case spellings push endpoints get.
pub(crate) fn message_out(msg: &pb::PubsubMessage, push: bool) -> Value {
    let mut m = Map::new();
    if !msg.data.is_empty() {
        m.insert("data".into(), json!(base64::engine::general_purpose::STANDARD.encode(&msg.data)));
    }
    if !msg.attributes.is_empty() {
        m.insert("attributes".into(), json!(msg.attributes));
    }
    m.insert("messageId".into(), json!(msg.message_id));
    let time = msg.publish_time.as_ref().map(timestamp_out).unwrap_or_default();
    m.insert("publishTime".into(), json!(time));
    if push {
        m.insert("message_id".into(), json!(msg.message_id));
        m.insert("publish_time".into(), json!(time));
    }
    if !msg.ordering_key.is_empty() {
        m.insert("orderingKey".into(), json!(msg.ordering_key));
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        let d = duration_in("x", &json!("600s")).unwrap();
        assert_eq!((d.seconds, d.nanos), (600, 0));
        let d = duration_in("x", &json!("1.5s")).unwrap();
        assert_eq!((d.seconds, d.nanos), (1, 500_000_000));
        assert_eq!(duration_out(&d), json!("1.500000000s"));
        assert!(duration_in("x", &json!("10")).is_err());
        assert!(duration_in("x", &json!(10)).is_err());
    }
}
