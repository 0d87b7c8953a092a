//! [`Message`]: a payload and the ids a stream needs.

use bytes::Bytes;

/// A message to send: a payload and optional ids.
///
/// Build it from bytes or text, and add ids as the stream needs them:
/// `Message::new("21.5").batch_id("2024-01-01").message_id("m1")`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub(crate) payload: Bytes,
    pub(crate) batch_id: Option<String>,
    pub(crate) message_id: Option<String>,
    pub(crate) batch_slice_id: Option<String>,
    pub(crate) chunk_id: Option<String>,
}

impl Message {
    /// A message with this payload and no ids.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Message { payload: payload.into(), ..Default::default() }
    }

    /// Sets the batch id (needed when the stream groups messages into batches without an
    /// autofill pattern).
    pub fn batch_id(mut self, id: impl Into<String>) -> Self {
        self.batch_id = Some(id.into());
        self
    }

    /// Sets the message id (needed when the stream has no message id autofill pattern).
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// Sets the batch slice id.
    pub fn batch_slice_id(mut self, id: impl Into<String>) -> Self {
        self.batch_slice_id = Some(id.into());
        self
    }

    /// Sets the chunk id (message chunking).
    pub fn chunk_id(mut self, id: impl Into<String>) -> Self {
        self.chunk_id = Some(id.into());
        self
    }

    /// Sets all ids at once, as the reference API takes them (`None` leaves an id unset).
    pub fn with_ids(
        mut self,
        batch_id: Option<String>,
        message_id: Option<String>,
        batch_slice_id: Option<String>,
        chunk_id: Option<String>,
    ) -> Self {
        self.batch_id = batch_id;
        self.message_id = message_id;
        self.batch_slice_id = batch_slice_id;
        self.chunk_id = chunk_id;
        self
    }
}

impl From<Vec<u8>> for Message {
    fn from(v: Vec<u8>) -> Self {
        Message::new(v)
    }
}
impl From<&[u8]> for Message {
    fn from(v: &[u8]) -> Self {
        Message::new(Bytes::copy_from_slice(v))
    }
}
impl<const N: usize> From<&[u8; N]> for Message {
    fn from(v: &[u8; N]) -> Self {
        Message::new(Bytes::copy_from_slice(v))
    }
}
impl From<String> for Message {
    fn from(v: String) -> Self {
        Message::new(v)
    }
}
impl From<&str> for Message {
    fn from(v: &str) -> Self {
        Message::new(Bytes::copy_from_slice(v.as_bytes()))
    }
}
impl From<Bytes> for Message {
    fn from(v: Bytes) -> Self {
        Message::new(v)
    }
}
