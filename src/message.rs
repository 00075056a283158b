//! The wire format runq sends through Pub/Sub: the job message it publishes (ids, never
//! objects) and the push envelope Pub/Sub POSTs to a worker or the dead-letter endpoint.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use uuid::Uuid;

/// The JSON body Pub/Sub POSTs to a push endpoint.
#[derive(Debug, Deserialize)]
pub struct PushEnvelope {
    pub message: PushMessage,
    /// The subscription that delivered it.
    #[serde(default)]
    pub subscription: Option<String>,
    /// Present when the subscription has a dead-letter policy.
    #[serde(default, rename = "deliveryAttempt")]
    pub delivery_attempt: Option<i32>,
}

/// The message inside a push envelope.
#[derive(Debug, Deserialize)]
pub struct PushMessage {
    /// Base64 of the payload.
    #[serde(default)]
    pub data: Option<String>,
    #[serde(default)]
    pub attributes: HashMap<String, String>,
    #[serde(default, rename = "messageId")]
    pub message_id: Option<String>,
}

/// What runq publishes: ids, never objects.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct JobMessage {
    pub job_id: Uuid,
    /// The job's attempt count when it was published (the dead-letter guard compares it).
    pub attempt: i32,
}

impl JobMessage {
    /// The message's data, as published.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a JobMessage serializes")
    }
}

/// A push body that isn't a runq push.
#[derive(Debug, thiserror::Error)]
#[error("malformed push: {0}")]
pub struct Malformed(pub String);

/// Decodes a push body into the envelope and runq's job message.
pub fn decode(body: &[u8]) -> Result<(PushEnvelope, JobMessage), Malformed> {
    let envelope: PushEnvelope =
        serde_json::from_slice(body).map_err(|e| Malformed(format!("not a push envelope: {e}")))?;
    let data = envelope.message.data.as_deref().ok_or_else(|| Malformed("message has no data".into()))?;
    let bytes = STANDARD.decode(data).map_err(|e| Malformed(format!("message data is not base64: {e}")))?;
    let job: JobMessage =
        serde_json::from_slice(&bytes).map_err(|e| Malformed(format!("message is not a runq job: {e}")))?;
    Ok((envelope, job))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_published_message_decodes_back() {
        let msg = JobMessage { job_id: Uuid::now_v7(), attempt: 4 };
        let body = format!(r#"{{"message":{{"data":"{}"}}}}"#, STANDARD.encode(msg.encode()));
        assert_eq!(decode(body.as_bytes()).unwrap().1, msg);
    }

    #[test]
    fn decodes_the_envelope() {
        let id = Uuid::now_v7();
        let data = STANDARD.encode(format!(r#"{{"job_id":"{id}","attempt":2}}"#));
        let body = format!(
            r#"{{"message":{{"data":"{data}","attributes":{{"function":"noop"}},"messageId":"7","message_id":"7"}},"subscription":"projects/p/subscriptions/s","deliveryAttempt":3}}"#
        );
        let (env, msg) = decode(body.as_bytes()).unwrap();
        assert_eq!(msg, JobMessage { job_id: id, attempt: 2 });
        assert_eq!(env.delivery_attempt, Some(3));
        assert_eq!(env.message.attributes["function"], "noop");
        for bad in ["not json", r#"{"message":{}}"#, r#"{"message":{"data":"!!!"}}"#, r#"{"message":{"data":"e30="}}"#]
        {
            assert!(matches!(decode(bad.as_bytes()), Err(Malformed(_))), "{bad}");
        }
    }
}
