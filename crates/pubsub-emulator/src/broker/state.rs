//! `--state-file` (not a Pub/Sub option): the broker's topics, subscriptions and unacknowledged
//! messages, and the push-token signing key, saved to a file and loaded at start, so a
//! restarted emulator carries on like a Pub/Sub that never went away. Saved every
//! [`SAVE_EVERY`] when it changed, and at shutdown; written to a temporary file and renamed,
//! so a kill at any moment leaves the previous snapshot whole. Messages out for delivery are
//! saved as undelivered (redelivered after a restart), keeping their delivery counts.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use prost::Message as _;
use serde::{Deserialize, Serialize};

use super::validate::{is_push, normalize};
use super::{Broker, TopicState};
use crate::proto as pb;
use crate::subscription::{Msg, SubState};

/// How often a changed state is saved while serving.
pub(crate) const SAVE_EVERY: Duration = Duration::from_millis(100);

#[derive(Serialize, Deserialize, Default, PartialEq)]
pub(crate) struct Snapshot {
    /// PKCS#1 DER of the push-token signing key, base64.
    #[serde(default)]
    pub(crate) key: Option<String>,
    next_message_id: u64,
    /// `pb::Topic`, protobuf, base64.
    topics: Vec<String>,
    subscriptions: Vec<SavedSub>,
}

#[derive(Serialize, Deserialize, PartialEq)]
struct SavedSub {
    /// `pb::Subscription`, protobuf, base64.
    config: String,
    /// Unacknowledged messages in publish order: (`pb::PubsubMessage` base64, deliveries so far).
    messages: Vec<(String, i32)>,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn decode<M: prost::Message + Default>(raw: &str) -> std::io::Result<M> {
    let bytes = b64().decode(raw).map_err(std::io::Error::other)?;
    M::decode(bytes.as_slice()).map_err(std::io::Error::other)
}

impl Snapshot {
    /// The snapshot in `path`; an empty one when the file doesn't exist yet.
    pub(crate) fn load(path: &Path) -> std::io::Result<Snapshot> {
        match std::fs::read(path) {
            Ok(raw) => serde_json::from_slice(&raw).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("state file {}: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Snapshot::default()),
            Err(e) => Err(e),
        }
    }

    /// Writes to `path` atomically (a temporary file renamed over it).
    pub(crate) fn save(&self, path: &Path) -> std::io::Result<()> {
        // Its own temporary name: a periodic save may still be writing when the final one starts.
        let tmp = path.with_extension(format!("tmp.{:x}", rand::random::<u64>()));
        std::fs::write(&tmp, serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, path)
    }
}

impl Broker {
    /// The state as it is now, with the signing key `key` (DER).
    pub(crate) fn snapshot(&self, key: &[u8]) -> Snapshot {
        let inner = self.lock();
        let topics = inner.topics.values().map(|t| b64().encode(t.pb.encode_to_vec())).collect();
        let subscriptions = inner
            .subs
            .values()
            .map(|s| SavedSub {
                config: b64().encode(s.config.encode_to_vec()),
                messages: s.unacked().into_iter().map(|(m, n)| (b64().encode(m.pb.encode_to_vec()), n)).collect(),
            })
            .collect();
        Snapshot { key: Some(b64().encode(key)), next_message_id: inner.next_message_id, topics, subscriptions }
    }

    /// Loads `snap` into an empty broker: topics, subscriptions (push ones start pushing) and
    /// their messages, all deliverable now.
    pub(crate) fn restore(&self, snap: &Snapshot) -> std::io::Result<()> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.next_message_id = inner.next_message_id.max(snap.next_message_id);
        for raw in &snap.topics {
            let t: pb::Topic = decode(raw)?;
            inner.topics.insert(t.name.clone(), TopicState { pb: t, subs: Default::default() });
        }
        for saved in &snap.subscriptions {
            let config: pb::Subscription = decode(&saved.config)?;
            let (config, filter) = normalize(config).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
            if let Some(t) = inner.topics.get_mut(&config.topic) {
                t.subs.insert(config.name.clone());
            }
            inner.next_generation += 1;
            let mut sub = SubState::new(config.clone(), filter, inner.next_generation);
            for (raw, attempts) in &saved.messages {
                let m: pb::PubsubMessage = decode(raw)?;
                let size = (m.data.len()
                    + m.ordering_key.len()
                    + m.attributes.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>())
                    as i64;
                inner.next_seq += 1;
                sub.enqueue_redelivery(inner.next_seq, Arc::new(Msg { pb: m, size, published: now }), *attempts, now);
            }
            inner.subs.insert(config.name.clone(), sub);
            if is_push(&config) {
                let _ = self.push_tx.send(config.name.clone());
            }
        }
        Ok(())
    }

    /// Saves the state to `path` every [`SAVE_EVERY`] when it changed; runs until aborted.
    pub(crate) async fn keep_saving(self: Arc<Self>, path: std::path::PathBuf, key: Vec<u8>) {
        let mut last = Snapshot::default();
        loop {
            tokio::time::sleep(SAVE_EVERY).await;
            let snap = self.snapshot(&key);
            if snap == last {
                continue;
            }
            let p = path.clone();
            match tokio::task::spawn_blocking(move || (snap.save(&p), snap)).await {
                Ok((saved, snap)) => {
                    if let Err(e) = saved {
                        tracing::warn!(error = %e, path = %path.display(), "could not save the emulator's state");
                    }
                    last = snap;
                }
                Err(_) => return,
            }
        }
    }
}
