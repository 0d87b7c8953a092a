//! The asynchronous device client: the API of a started [`DeviceClient`] and its
//! [`StreamSender`]s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use spotflow_core::{
    validate_name, Compression, ContentEncoding, Error, MessageKind, OutgoingMessage, QueuedMessage, Result, Store,
    StreamTarget,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::message::Message;
use crate::shared::Shared;
use crate::worker::Command;
use crate::{ClientOptions, DesiredProperties, Stats};

pub(crate) struct ClientInner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) acked: watch::Receiver<u64>,
    pub(crate) options: ClientOptions,
    pub(crate) closed: AtomicBool,
    /// The database path the client was built with (the log journal lives beside it).
    #[cfg_attr(not(feature = "logs"), allow(dead_code))]
    pub(crate) db: std::path::PathBuf,
    /// The network options the client was built with (the update agent's downloads use its
    /// trust).
    #[cfg_attr(not(all(feature = "updates", feature = "mqtt")), allow(dead_code))]
    pub(crate) network: crate::NetworkOptions,
}

/// A device connected to the platform. Create it with [`DeviceClient::builder`].
///
/// Every outgoing message is persisted in the store before `enqueue_message` returns and sent by a
/// background task, so the application keeps working while the connection comes and goes. The
/// client is cheap to clone and safe to use from many tasks at once.
#[derive(Clone)]
pub struct DeviceClient {
    pub(crate) inner: Arc<ClientInner>,
}

impl std::fmt::Debug for DeviceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceClient")
            .field("workspace_id", &self.inner.shared.workspace_id)
            .field("device_id", &self.inner.shared.device_id)
            .finish_non_exhaustive()
    }
}

impl DeviceClient {
    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) || self.inner.commands.is_closed() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// The id of the workspace the device belongs to.
    pub fn workspace_id(&self) -> &str {
        &self.inner.shared.workspace_id
    }

    /// The device id (may differ from the requested one when a technician overrode it).
    pub fn device_id(&self) -> &str {
        &self.inner.shared.device_id
    }

    /// A sender of messages to `stream` in `stream_group` (`None`: the defaults of the workspace).
    pub fn create_stream_sender(
        &self,
        stream_group: Option<&str>,
        stream: Option<&str>,
        compression: Compression,
    ) -> Result<StreamSender> {
        compression.validate()?;
        Ok(StreamSender {
            client: self.clone(),
            target: Arc::new(StreamTarget::new(stream_group, stream)?),
            compression,
        })
    }

    /// Messages persisted but not yet acknowledged by the platform.
    pub fn pending_messages_count(&self) -> u64 {
        self.inner.shared.pending.load(Ordering::Acquire).max(0) as u64
    }

    /// The connection events from now on, pushed (see [`crate::events`]): each call gives a
    /// view of its own. [`DeviceClient::stats`] says where the connection stands now; to see
    /// every event from the first connection attempt on, give the builder a
    /// [`crate::DeviceClientBuilder::connection_event_callback`].
    pub fn connection_events(&self) -> crate::ConnectionEvents {
        self.inner.shared.events.subscribe()
    }

    /// The cloud-to-device inbox, oldest first: the messages not completed before (also those of
    /// earlier runs) and those that arrive (see [`crate::c2d`]).
    pub fn c2d_messages(&self) -> crate::C2dMessages {
        crate::C2dMessages::new(self.clone())
    }

    /// A snapshot of the queue, the deliveries, the connection and the enqueue →
    /// acknowledgement latency (see [`Stats`]). Cheap: atomics and a few short locks.
    pub fn stats(&self) -> Stats {
        let shared = &self.inner.shared;
        let desired = spotflow_core::lock(&shared.desired).as_ref().map(|d| d.version);
        shared.stats.snapshot(
            (self.pending_messages_count(), shared.queued_bytes()),
            shared.refused_total.load(Ordering::Acquire),
            desired.filter(|v| *v > 0),
        )
    }

    /// Whether the client is connected to the platform now.
    pub fn is_connected(&self) -> bool {
        self.inner.shared.connected.load(Ordering::Acquire)
    }

    /// Waits until every message enqueued before the call has left the queue: acknowledged by
    /// the platform, or refused by it for good. Refusals not reported before are returned as
    /// [`Error::MessagesRefused`] (see [`DeviceClient::refused_messages_count`]).
    pub async fn wait_enqueued_messages_sent(&self) -> Result<()> {
        self.wait_acked(self.inner.shared.last_appended()).await
    }

    /// [`DeviceClient::wait_enqueued_messages_sent`] bounded by `timeout`.
    pub async fn wait_enqueued_messages_sent_timeout(&self, timeout: Duration) -> Result<()> {
        tokio::time::timeout(timeout, self.wait_enqueued_messages_sent())
            .await
            .map_err(|_| Error::Timeout(format!("messages not acknowledged within {timeout:?}")))?
    }

    async fn wait_acked(&self, seq: u64) -> Result<()> {
        self.check_open()?;
        let mut rx = self.inner.acked.clone();
        rx.wait_for(|through| *through >= seq).await.map_err(|_| Error::Closed)?;
        match self.inner.shared.take_refused(seq) {
            Some((count, last_reason)) => Err(Error::MessagesRefused { count, last_reason }),
            None => Ok(()),
        }
    }

    /// Messages the platform refused for good since the client started (e.g. a large message
    /// whose upload was answered 413). A refused message is removed from the queue and logged at
    /// error level; the rest of the queue keeps flowing. Each refusal is also reported, once, by
    /// the first [`DeviceClient::wait_enqueued_messages_sent`] that covers it.
    pub fn refused_messages_count(&self) -> u64 {
        self.inner.shared.refused_total.load(Ordering::Acquire)
    }

    /// The current desired properties (version 0 and no values before any are known).
    pub fn get_desired_properties(&self) -> DesiredProperties {
        spotflow_core::lock(&self.inner.shared.desired).clone().unwrap_or_default()
    }

    /// The current desired properties if their version is greater than `version` (always with
    /// `None`); intermediate versions are skipped.
    pub fn get_desired_properties_if_newer(&self, version: Option<u64>) -> Option<DesiredProperties> {
        let desired = spotflow_core::lock(&self.inner.shared.desired);
        desired.as_ref().filter(|d| version.is_none_or(|v| d.version > v)).cloned()
    }

    /// Replaces the reported properties with `properties` (a JSON object; keys absent from it are
    /// deleted on the platform, `null` members mean absent). Returns once the update is
    /// persisted; it is sent when connected, and any number of updates made meanwhile are sent as
    /// one net change.
    pub async fn update_reported_properties(&self, properties: Value) -> Result<()> {
        self.send_reported(properties, false).await
    }

    /// Merges `patch` (a JSON merge patch object: `null` deletes a key) into the reported
    /// properties last given; persisted and sent like [`DeviceClient::update_reported_properties`].
    pub async fn patch_reported_properties(&self, patch: Value) -> Result<()> {
        self.send_reported(patch, true).await
    }

    async fn send_reported(&self, properties: Value, merge: bool) -> Result<()> {
        let Value::Object(document) = properties else {
            return Err(Error::invalid(
                "reported properties",
                format!("must be a JSON object, got {}", json_kind(&properties)),
            ));
        };
        self.check_open()?;
        let (reply, rx) = oneshot::channel();
        self.inner
            .commands
            .send(Command::UpdateReported { document, merge, reply })
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Whether an update of the reported properties has not reached the platform yet.
    pub fn any_pending_reported_properties_updates(&self) -> bool {
        self.inner.shared.reported.borrow().pending
    }

    /// Waits until no reported-properties update is pending. Fails with
    /// [`Error::ReportedPropertiesRejected`] when the platform rejected the pending update.
    pub async fn wait_reported_properties_sent(&self) -> Result<()> {
        self.check_open()?;
        let mut rx = self.inner.shared.reported.subscribe();
        let state = *rx.wait_for(|s| !s.pending || s.rejection.is_some()).await.map_err(|_| Error::Closed)?;
        match state.rejection {
            Some(status) => Err(Error::ReportedPropertiesRejected { status }),
            None => Ok(()),
        }
    }

    /// [`DeviceClient::wait_reported_properties_sent`] bounded by `timeout`.
    pub async fn wait_reported_properties_sent_timeout(&self, timeout: Duration) -> Result<()> {
        tokio::time::timeout(timeout, self.wait_reported_properties_sent())
            .await
            .map_err(|_| Error::Timeout(format!("reported properties not sent within {timeout:?}")))?
    }

    /// The status with which the platform rejected the pending reported-properties update, if
    /// it did. The update is kept and tried again on the next connection or update.
    pub fn reported_properties_rejection(&self) -> Option<u16> {
        self.inner.shared.reported.borrow().rejection
    }

    /// Stops the background work: acknowledged messages are removed from the store, the
    /// connection and the store are closed (the database file is free for the next start).
    /// Queued messages stay in the store. Later calls fail with [`Error::Closed`].
    pub async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        if self.inner.commands.send(Command::Close { reply }).await.is_ok() {
            let _ = rx.await;
        }
        Ok(())
    }

    /// Appends a message of this client's stream; a failure is counted (`Stats::failed_enqueues_total`).
    pub(crate) async fn enqueue(
        &self,
        target: &Arc<StreamTarget>,
        compression: Compression,
        message: Message,
        kind: MessageKind,
    ) -> Result<u64> {
        let result = async {
            self.check_open()?;
            let max = self.inner.options.max_message_size;
            if message.payload.len() > max {
                return Err(Error::PayloadTooLarge { size: message.payload.len(), limit: max });
            }
            let id = |what, v: Option<String>| v.map(|s| validate_name(what, &s)).transpose();
            let (content_encoding, payload) = compress(compression, message.payload).await?;
            let outgoing = OutgoingMessage {
                target: target.clone(),
                kind,
                batch_id: id("batch id", message.batch_id)?,
                batch_slice_id: id("batch slice id", message.batch_slice_id)?,
                message_id: id("message id", message.message_id)?,
                chunk_id: id("chunk id", message.chunk_id)?,
                content_encoding,
                payload,
            };
            let size = outgoing.queued_size();
            let budget = self.inner.options.queue_budget_bytes;
            let queued = self.inner.shared.queued_bytes();
            if queued + size > budget {
                match self.inner.options.queue_full_policy {
                    crate::QueueFullPolicy::DropOldest if size <= budget => {
                        let (reply, rx) = oneshot::channel();
                        let bytes = queued + size - budget;
                        self.inner
                            .commands
                            .send(Command::DropOldest { bytes, reply })
                            .await
                            .map_err(|_| Error::Closed)?;
                        rx.await.map_err(|_| Error::Closed)??;
                    }
                    _ => return Err(Error::QueueFull { bytes: queued, budget }),
                }
            }
            let seq = self.inner.store.append_message(outgoing.clone()).await?;
            self.inner.shared.remember_appended(QueuedMessage { seq, message: outgoing });
            // Timed before the worker can learn of it (and see it acknowledged).
            self.inner.shared.stats.enqueued(seq);
            self.inner.shared.message_appended(seq, size);
            Ok(seq)
        }
        .await;
        if result.is_err() {
            self.inner.shared.stats.enqueue_failed();
        }
        result
    }
}

/// Compresses a payload; a large one on Tokio's blocking pool so that the executor's other tasks
/// keep running (Brotli quality 11 takes seconds for a 16 MiB payload).
async fn compress(compression: Compression, payload: Bytes) -> Result<(Option<ContentEncoding>, Bytes)> {
    let run = move |payload: Bytes| match compression.compress(&payload) {
        Some((enc, data)) => (Some(enc), Bytes::from(data)),
        None => (None, payload),
    };
    if payload.len() < compression.offload_threshold() {
        return Ok(run(payload));
    }
    // The blocking pool only fails a task when the runtime is shutting down.
    tokio::task::spawn_blocking(move || run(payload)).await.map_err(|_| Error::Closed)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Sends messages to one stream. Create it with [`DeviceClient::create_stream_sender`]; cheap to
/// clone.
#[derive(Clone)]
pub struct StreamSender {
    client: DeviceClient,
    target: Arc<StreamTarget>,
    compression: Compression,
}

impl std::fmt::Debug for StreamSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSender")
            .field("stream_group", &self.target.stream_group)
            .field("stream", &self.target.stream)
            .field("compression", &self.compression)
            .finish()
    }
}

impl StreamSender {
    /// Persists the message in the queue and returns; it is sent in the background.
    pub async fn enqueue_message(&self, message: impl Into<Message>) -> Result<()> {
        self.client.enqueue(&self.target, self.compression, message.into(), MessageKind::Data).await.map(|_| ())
    }

    /// Enqueues the message and waits until it and every message enqueued before it are
    /// acknowledged by the platform. Prefer [`StreamSender::enqueue_message`] on an unstable
    /// network.
    pub async fn send_message(&self, message: impl Into<Message>) -> Result<()> {
        let seq = self.client.enqueue(&self.target, self.compression, message.into(), MessageKind::Data).await?;
        self.client.wait_acked(seq).await
    }

    /// Enqueues the manual completion of batch `batch_id`.
    pub async fn enqueue_batch_completion(&self, batch_id: &str) -> Result<()> {
        let m = Message::default().batch_id(batch_id);
        self.client.enqueue(&self.target, Compression::Uncompressed, m, MessageKind::BatchCompletion).await.map(|_| ())
    }

    /// Enqueues the manual completion of the chunked message `message_id` in batch `batch_id`.
    pub async fn enqueue_message_completion(&self, batch_id: &str, message_id: &str) -> Result<()> {
        let m = Message::default().batch_id(batch_id).message_id(message_id);
        self.client
            .enqueue(&self.target, Compression::Uncompressed, m, MessageKind::MessageCompletion)
            .await
            .map(|_| ())
    }

    /// The client this sender belongs to.
    pub fn client(&self) -> &DeviceClient {
        &self.client
    }
}
