//! Cloud-to-device (C2D) messages and the device's inbox of them.
//!
//! The SDK keeps each C2D message in its store before acknowledging it to the broker, hands it
//! to the application, and removes it when the application completes it. The inbox remembers the
//! message ids (`$.mid`) of the last [`COMPLETED_KEPT`] completed messages, so that one the broker
//! sends again (its acknowledgement was lost in a crash) is not handed to the application twice.

use bytes::Bytes;
use serde_json::{json, Value};

use crate::{Error, ErrorStatus, Result};

/// Completed message ids the inbox remembers (to drop redeliveries).
pub const COMPLETED_KEPT: usize = 1000;

/// A cloud-to-device message: its properties (the topic's property bag, decoded) and payload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CloudMessage {
    /// Properties in the order they came (`$.mid` is the platform's message id).
    pub properties: Vec<(String, String)>,
    /// The payload.
    pub payload: Bytes,
}

impl CloudMessage {
    /// The value of property `key`.
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The platform's id of the message (`$.mid`).
    pub fn message_id(&self) -> Option<&str> {
        self.property("$.mid")
    }

    /// Its size as the inbox counts it: payload and properties.
    pub fn size(&self) -> u64 {
        (self.payload.len() + self.properties.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()) as u64
    }
}

/// What became of a cloud-to-device message given to the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxAppend {
    /// Kept, with this id.
    Stored(u64),
    /// A message with its `$.mid` is in the inbox already (a redelivery).
    AlreadyHeld,
    /// A message with its `$.mid` was completed lately (a redelivery after its completion).
    AlreadyCompleted,
}

/// A message in the inbox, with the id the store gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCloudMessage {
    /// Grows with arrival; never reused.
    pub id: u64,
    /// The message.
    pub message: CloudMessage,
}

/// The inbox as one document: what stores that keep state documents persist (and the memory
/// store keeps).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inbox {
    next_id: u64,
    messages: Vec<StoredCloudMessage>,
    completed: std::collections::VecDeque<String>,
}

impl Inbox {
    /// Keeps `message` unless its id is in the inbox or was completed lately.
    pub fn append(&mut self, message: &CloudMessage) -> InboxAppend {
        if let Some(mid) = message.message_id() {
            if self.messages.iter().any(|m| m.message.message_id() == Some(mid)) {
                return InboxAppend::AlreadyHeld;
            }
            if self.completed.iter().any(|c| c == mid) {
                return InboxAppend::AlreadyCompleted;
            }
        }
        self.next_id += 1;
        self.messages.push(StoredCloudMessage { id: self.next_id, message: message.clone() });
        InboxAppend::Stored(self.next_id)
    }

    /// Up to `limit` messages with ids above `after`, oldest first.
    pub fn read(&self, after: Option<u64>, limit: usize) -> Vec<StoredCloudMessage> {
        self.messages.iter().filter(|m| after.is_none_or(|a| m.id > a)).take(limit).cloned().collect()
    }

    /// Removes message `id` (completed); whether it was there.
    pub fn remove(&mut self, id: u64) -> bool {
        let Some(i) = self.messages.iter().position(|m| m.id == id) else { return false };
        let m = self.messages.remove(i);
        if let Some(mid) = m.message.message_id() {
            if self.completed.len() == COMPLETED_KEPT {
                self.completed.pop_front();
            }
            self.completed.push_back(mid.to_owned());
        }
        true
    }

    /// Number and size of the messages held.
    pub fn stats(&self) -> (u64, u64) {
        (self.messages.len() as u64, self.messages.iter().map(|m| m.message.size()).sum())
    }

    /// As a JSON document (payloads in hexadecimal).
    pub fn to_json(&self) -> Value {
        let messages: Vec<Value> = self
            .messages
            .iter()
            .map(|m| {
                json!({
                    "id": m.id,
                    "properties": m.message.properties,
                    "payload": m.message.payload.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                })
            })
            .collect();
        json!({"next_id": self.next_id, "messages": messages, "completed": self.completed})
    }

    /// From [`Inbox::to_json`]'s document.
    pub fn from_json(v: &Value) -> Result<Inbox> {
        let corrupt = || Error::Store {
            context: "corrupt cloud-to-device inbox".into(),
            status: ErrorStatus::Permanent,
            source: None,
        };
        let next_id = v["next_id"].as_u64().ok_or_else(corrupt)?;
        let mut messages = Vec::new();
        for m in v["messages"].as_array().ok_or_else(corrupt)? {
            let properties: Vec<(String, String)> =
                serde_json::from_value(m["properties"].clone()).map_err(|_| corrupt())?;
            let hex = m["payload"].as_str().ok_or_else(corrupt)?;
            let payload = (0..hex.len())
                .step_by(2)
                .map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(corrupt)?;
            let id = m["id"].as_u64().ok_or_else(corrupt)?;
            messages.push(StoredCloudMessage { id, message: CloudMessage { properties, payload: payload.into() } });
        }
        let completed = serde_json::from_value(v["completed"].clone()).map_err(|_| corrupt())?;
        Ok(Inbox { next_id, messages, completed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(mid: &str, payload: &[u8]) -> CloudMessage {
        CloudMessage {
            properties: vec![("$.mid".into(), mid.into()), ("k".into(), "v".into())],
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn redeliveries_are_dropped_and_the_document_round_trips() {
        let mut inbox = Inbox::default();
        assert_eq!(inbox.append(&msg("a", b"\x00\x01")), InboxAppend::Stored(1));
        assert_eq!(inbox.append(&msg("a", b"\x00\x01")), InboxAppend::AlreadyHeld);
        assert_eq!(inbox.append(&msg("b", b"")), InboxAppend::Stored(2));
        assert_eq!(inbox.append(&CloudMessage::default()), InboxAppend::Stored(3), "no id: always kept");
        assert!(inbox.remove(1));
        assert!(!inbox.remove(1));
        assert_eq!(inbox.append(&msg("a", b"\x00\x01")), InboxAppend::AlreadyCompleted);
        assert_eq!(inbox.read(None, 10).iter().map(|m| m.id).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(inbox.read(Some(2), 10).len(), 1);
        assert_eq!(inbox.stats(), (2, 8), "payloads and properties");
        let again = Inbox::from_json(&inbox.to_json()).unwrap();
        assert_eq!(again, inbox);
        assert!(Inbox::from_json(
            &json!({"next_id": 1, "messages": [{"id": 1, "properties": [], "payload": "zz"}], "completed": []})
        )
        .is_err());
    }
}
