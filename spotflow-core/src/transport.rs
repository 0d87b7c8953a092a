//! The `Transport` trait: a connection to the platform's data plane.
//!
//! A transport moves telemetry and twin traffic; it knows nothing about queues or persistence. The
//! MQTT mapping (topics, property bag, `$rid`) lives in the transport crates, not here.

use std::fmt;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::{CloudMessage, ConnectionCredentials, DesiredState, OutgoingMessage, Result};

/// Correlates a twin request with its response.
pub type RequestId = u64;

/// The device twin as the platform sends it on a full GET.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TwinDocument {
    /// Desired properties and their version.
    pub desired: DesiredState,
    /// Reported properties (without `$version`).
    pub reported: Map<String, Value>,
    /// Version of the reported properties.
    pub reported_version: u64,
}

/// Something the platform sent or acknowledged.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TransportEvent {
    /// The platform acknowledged the telemetry message with this sequence number (as given to
    /// [`Connection::publish_message`]).
    MessageAcknowledged(u64),
    /// The platform refused the telemetry message with this sequence number for good (e.g. the
    /// upload of a large payload answered 413 or another permanent 4xx): sending it again cannot
    /// succeed. The SDK removes it from the queue and reports the failure to the application
    /// (stats, log, [`crate::Error::MessagesRefused`] from the next wait for sent messages).
    MessageRefused {
        /// The message's sequence number.
        seq: u64,
        /// Why the platform refused it (shown to the application).
        reason: String,
    },
    /// Answer to [`Connection::request_twin`]: the twin, or the error status.
    Twin {
        /// The request answered.
        request: RequestId,
        /// The twin, or the status of a failed request.
        result: std::result::Result<TwinDocument, u16>,
    },
    /// Answer to [`Connection::patch_reported`].
    ReportedPatched {
        /// The request answered.
        request: RequestId,
        /// Status code (2xx: accepted).
        status: u16,
        /// New reported version, when the platform tells it.
        version: Option<u64>,
    },
    /// The platform changed the desired properties: a JSON merge patch to apply to `version - 1`.
    DesiredPatch {
        /// The version after the patch.
        version: u64,
        /// The merge patch (without `$version`).
        patch: Map<String, Value>,
    },
    /// The platform calls a direct method of the device (only on a connection opened with
    /// [`SessionInfo::direct_methods`]); answered with [`Connection::answer_method`].
    MethodCall {
        /// The method's name (MQTT: may contain `/`).
        method: String,
        /// The call's request id, to answer with.
        request: String,
        /// The call's payload (JSON, as the platform sent it).
        payload: Vec<u8>,
    },
    /// A cloud-to-device message. The transport acknowledges it to the broker only when the SDK
    /// calls [`Connection::ack_cloud_message`] with `token` (after storing it); one never
    /// acknowledged is sent again by the broker on a later connection.
    CloudMessage {
        /// Names the message in [`Connection::ack_cloud_message`] (0: nothing to acknowledge).
        token: u64,
        /// The message.
        message: CloudMessage,
    },
}

/// What a connection needs to know about the device's outgoing queue.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionInfo {
    /// Identifies the device's persistent outgoing queue. With a message's sequence number it
    /// forms a key that is unique across restarts (`{queue_id}-{seq}`), sent with the message
    /// (MQTT: the `$.mid` system property) so that the platform can drop redeliveries.
    pub queue_id: String,
    /// Whether the device takes direct methods (MQTT: it subscribes to them, first, only then).
    pub direct_methods: bool,
}

impl SessionInfo {
    /// The message key of sequence number `seq`.
    pub fn message_key(&self, seq: u64) -> String {
        format!("{}-{seq}", self.queue_id)
    }
}

/// Opens connections to the platform. Implement it to bring your own transport.
///
/// The contract, checked by `testkit::transport_conformance` (feature `testkit`):
/// * `connect` returns a live [`Connection`] or an error: [`crate::Error::Unauthorized`] when the
///   platform refused the credentials (the SDK registers again), any other error when worth
///   retrying (the SDK retries with backoff). It must be bounded in time or the SDK's timeout
///   cuts it.
/// * The SDK opens one connection at a time and drops it on any error.
///
/// A decorator that delegates to another transport (see `examples/custom_transport.rs` for a
/// complete one that traces every message):
///
/// ```
/// use async_trait::async_trait;
/// use spotflow_core::{Connection, ConnectionCredentials, Result, SessionInfo, Transport};
///
/// #[derive(Debug)]
/// struct Logged<T>(T);
///
/// #[async_trait]
/// impl<T: Transport> Transport for Logged<T> {
///     async fn connect(&self, creds: &ConnectionCredentials, session: &SessionInfo) -> Result<Box<dyn Connection>> {
///         println!("connecting {}", creds.hub_device_id);
///         self.0.connect(creds, session).await
///     }
/// }
/// ```
#[async_trait]
pub trait Transport: fmt::Debug + Send + Sync + 'static {
    /// Connects with the given credentials. [`crate::Error::Unauthorized`] means that the
    /// platform refused them (the SDK then registers again); other errors are retried with backoff.
    async fn connect(&self, credentials: &ConnectionCredentials, session: &SessionInfo) -> Result<Box<dyn Connection>>;
}

/// One live connection.
///
/// The contract, checked by `testkit::transport_conformance` (feature `testkit`):
/// * **Many in flight, matched by sequence number.** `publish_message` returns once the message
///   is handed over (not when it is acknowledged); its acknowledgement arrives later as
///   [`TransportEvent::MessageAcknowledged`] with the same sequence number, exactly once, in any
///   order. A message the platform refuses for good is reported as
///   [`TransportEvent::MessageRefused`] instead. Never acknowledge what was not delivered: the
///   SDK removes acknowledged messages from its durable queue.
/// * **Twin requests matched by request id**: [`TransportEvent::Twin`] answers
///   `request_twin(id)`, [`TransportEvent::ReportedPatched`] answers `patch_reported(id, ..)`.
/// * **Cancel safety**: `next_event` is called inside `select!` and its future dropped whenever
///   something else happens first; no event may be lost by that (buffer in the connection, not in
///   the future).
/// * **Errors**: any error from a method means the connection is lost; the SDK drops it and sends
///   the unacknowledged messages again, first, on the next connection.
/// * **Bounded memory**: events the SDK has not taken yet should be bounded (back-pressure on
///   the network), not buffered without limit.
#[async_trait]
pub trait Connection: Send {
    /// Hands a telemetry message over for delivery.
    async fn publish_message(&mut self, seq: u64, message: &OutgoingMessage) -> Result<()>;

    /// Asks for the full twin; answered by [`TransportEvent::Twin`].
    async fn request_twin(&mut self, request: RequestId) -> Result<()>;

    /// Sends a JSON merge patch of the reported properties; answered by
    /// [`TransportEvent::ReportedPatched`].
    async fn patch_reported(&mut self, request: RequestId, patch: &Map<String, Value>) -> Result<()>;

    /// Waits for the next event. Must be cancel-safe: the SDK calls it inside `select!` and drops
    /// the future when something else happens first; no event may be lost by that.
    async fn next_event(&mut self) -> Result<TransportEvent>;

    /// Answers the direct method call `request` ([`TransportEvent::MethodCall`]) with a status
    /// and a body (JSON). A transport without direct methods refuses (the default).
    async fn answer_method(&mut self, request: &str, status: u16, body: &[u8]) -> Result<()> {
        let _ = (status, body);
        Err(crate::Error::transport(format!("this transport cannot answer the direct method call {request}")))
    }

    /// Acknowledges the cloud-to-device message of `token` (see
    /// [`TransportEvent::CloudMessage`]). The default does nothing (a transport that acknowledges
    /// on receipt).
    async fn ack_cloud_message(&mut self, token: u64) -> Result<()> {
        let _ = token;
        Ok(())
    }

    /// Closes the connection gracefully (best effort).
    async fn close(&mut self);
}

#[async_trait]
impl<T: Transport + ?Sized> Transport for std::sync::Arc<T> {
    async fn connect(&self, credentials: &ConnectionCredentials, session: &SessionInfo) -> Result<Box<dyn Connection>> {
        (**self).connect(credentials, session).await
    }
}
