//! Telemetry messages as the SDK queues and delivers them.

use std::sync::Arc;

use bytes::Bytes;

use crate::{ContentEncoding, Error, Result};

/// Longest stream group, stream or id accepted (in bytes).
pub const MAX_NAME_LEN: usize = 256;

/// Where the messages of a stream sender go. Shared by all messages of the sender.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct StreamTarget {
    /// Stream group; `None` is the workspace's default stream group.
    pub stream_group: Option<Arc<str>>,
    /// Stream; `None` is the default stream of the stream group.
    pub stream: Option<Arc<str>>,
}

impl StreamTarget {
    /// Validates the names and builds a target.
    pub fn new(stream_group: Option<&str>, stream: Option<&str>) -> Result<Self> {
        Ok(StreamTarget {
            stream_group: stream_group.map(|s| validate_name("stream group", s)).transpose()?,
            stream: stream.map(|s| validate_name("stream", s)).transpose()?,
        })
    }
}

/// What a message means to the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// A message with a payload.
    Data,
    /// Completes the batch named by `batch_id` (no payload).
    BatchCompletion,
    /// Completes the chunked message named by `batch_id` and `message_id` (no payload).
    MessageCompletion,
}

impl MessageKind {
    /// Stable numeric code, for stores.
    pub fn code(self) -> u8 {
        match self {
            MessageKind::Data => 0,
            MessageKind::BatchCompletion => 1,
            MessageKind::MessageCompletion => 2,
        }
    }

    /// Inverse of [`MessageKind::code`].
    pub fn from_code(code: u8) -> Result<Self> {
        Ok(match code {
            0 => MessageKind::Data,
            1 => MessageKind::BatchCompletion,
            2 => MessageKind::MessageCompletion,
            other => return Err(Error::invalid("message kind code", other)),
        })
    }
}

/// A message as it is persisted and sent: already compressed, with its properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Destination.
    pub target: Arc<StreamTarget>,
    /// Kind of message.
    pub kind: MessageKind,
    /// Batch id.
    pub batch_id: Option<Arc<str>>,
    /// Batch slice id.
    pub batch_slice_id: Option<Arc<str>>,
    /// Message id.
    pub message_id: Option<Arc<str>>,
    /// Chunk id.
    pub chunk_id: Option<Arc<str>>,
    /// Encoding of `payload`, `None` when sent as it is.
    pub content_encoding: Option<ContentEncoding>,
    /// The bytes to send (compressed when `content_encoding` is set).
    pub payload: Bytes,
}

impl OutgoingMessage {
    /// Size the message accounts for in the queue's byte budget.
    pub fn queued_size(&self) -> u64 {
        let ids = [&self.batch_id, &self.batch_slice_id, &self.message_id, &self.chunk_id];
        (self.payload.len() + ids.iter().map(|i| i.as_ref().map_or(0, |s| s.len())).sum::<usize>()) as u64
    }
}

/// A message in the outgoing queue with the persistent sequence number its store gave it.
///
/// Sequence numbers grow strictly in enqueue order and are never reused by a store, even after
/// the message is removed: they identify the message across restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// Persistent sequence number.
    pub seq: u64,
    /// The message.
    pub message: OutgoingMessage,
}

/// Validates a stream group, stream or id: not empty, at most [`MAX_NAME_LEN`] bytes, no control
/// characters.
pub fn validate_name(what: &'static str, value: &str) -> Result<Arc<str>> {
    if value.is_empty() {
        return Err(Error::invalid(what, "must not be empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(Error::invalid(what, format!("longer than {MAX_NAME_LEN} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(what, "contains control characters"));
    }
    Ok(Arc::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(StreamTarget::new(Some("sg"), Some("st")).is_ok());
        assert!(StreamTarget::new(None, None).is_ok());
        assert!(StreamTarget::new(Some(""), None).is_err());
        assert!(StreamTarget::new(None, Some("a\nb")).is_err());
        assert!(StreamTarget::new(None, Some(&"x".repeat(MAX_NAME_LEN + 1))).is_err());
        for c in 0..3 {
            assert_eq!(MessageKind::from_code(c).unwrap().code(), c);
        }
        assert!(MessageKind::from_code(7).is_err());
    }
}
