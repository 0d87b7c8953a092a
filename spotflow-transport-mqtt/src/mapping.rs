//! The platform mapping shared by every transport that carries MQTT (over TCP/TLS or WebSocket):
//! telemetry topics and large-message uploads, twin request correlation, incoming messages.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use std::collections::VecDeque;

use spotflow_core::{
    Backoff, ConnectionCredentials, Error, OutgoingMessage, RequestId, Result, SessionInfo, StreamTarget,
    TransportEvent,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, warn, Instrument};

use crate::topics::{self, Incoming};
use crate::upload::{UploadError, Uploader};

/// Payloads longer than this (after compression) are uploaded over HTTPS and linked.
pub const EXTERNALIZE_THRESHOLD: usize = 250_000;

/// What a twin request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// `$iothub/twin/GET`.
    TwinGet,
    /// `$iothub/twin/PATCH/properties/reported`.
    ReportedPatch,
}

/// Outstanding twin requests of one connection, by `$rid`.
#[derive(Debug, Default)]
pub struct TwinRequests {
    pending: HashMap<u64, RequestKind>,
}

impl TwinRequests {
    /// Remembers a request about to be published; returns its topic and payload.
    pub fn start(
        &mut self,
        request: RequestId,
        kind: RequestKind,
        patch: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> (String, Bytes) {
        self.pending.insert(request, kind);
        match kind {
            RequestKind::TwinGet => (topics::twin_get_topic(request), Bytes::new()),
            RequestKind::ReportedPatch => {
                let body = serde_json::Value::Object(patch.cloned().unwrap_or_default()).to_string();
                (topics::reported_patch_topic(request), Bytes::from(body))
            }
        }
    }

    /// Translates an incoming publish into an event for the SDK (`None`: nothing to report).
    pub fn translate(&mut self, topic: &str, payload: &[u8]) -> Option<TransportEvent> {
        match topics::parse_incoming(topic, payload) {
            Incoming::TwinResponse { status, rid, version } => match self.pending.remove(&rid) {
                Some(RequestKind::TwinGet) => {
                    let result = if (200..300).contains(&status) {
                        topics::parse_twin(payload).ok_or_else(|| {
                            warn!("malformed twin document ignored");
                            502u16
                        })
                    } else {
                        Err(status)
                    };
                    Some(TransportEvent::Twin { request: rid, result })
                }
                Some(RequestKind::ReportedPatch) => {
                    Some(TransportEvent::ReportedPatched { request: rid, status, version })
                }
                None => {
                    debug!(rid, "twin response for an unknown request ignored");
                    None
                }
            },
            Incoming::DesiredPatch { version, patch } => Some(TransportEvent::DesiredPatch { version, patch }),
            Incoming::MethodCall { method, rid, payload } => {
                Some(TransportEvent::MethodCall { method, request: rid, payload })
            }
            Incoming::CloudToDevice { properties, payload } => Some(TransportEvent::CloudMessage {
                token: 0,
                message: spotflow_core::CloudMessage { properties, payload: payload.into() },
            }),
            Incoming::Ignored(reason) => {
                debug!(?reason, "incoming message ignored");
                None
            }
        }
    }
}

/// Capacity of a connection's channel of incoming events (acknowledgements, twin answers,
/// desired-properties patches). Bounded: when it is full the task reading the socket waits (the
/// server is held back by TCP), so a flood can take at most this many events' worth of memory
/// (each at most the incoming packet limit). Transports must be given a window of publishes no
/// larger than their own request capacity, or a full event channel could stall a publish.
pub const EVENT_CHANNEL: usize = 1024;

/// Most large-message uploads running at once on one connection: one, in the order the messages
/// came (a device has one uplink, which parallel uploads would only split; the platform sees
/// the same sequence of upload calls as from the official SDK). A failing upload gives the turn
/// to the next one while it waits to retry.
const MAX_CONCURRENT_UPLOADS: usize = 1;

/// A telemetry message whose upload has finished: what the connection does with it now.
#[derive(Debug)]
pub enum Outcome {
    /// Publish it now (in the order given).
    Publish {
        /// The message's sequence number.
        seq: u64,
        /// Its topic.
        topic: String,
        /// Its payload.
        payload: Bytes,
    },
    /// The platform refused it for good: report [`TransportEvent::MessageRefused`].
    Refused {
        /// The message's sequence number.
        seq: u64,
        /// Why.
        reason: String,
    },
}

/// Turns outgoing messages into MQTT publishes for one device. Payloads over
/// [`EXTERNALIZE_THRESHOLD`] are uploaded *alongside* the stream, never in front of it:
///
/// * the messages behind a large one keep flowing while it uploads (one upload at a time, in
///   order), except where the platform needs order: once a large
///   message **of a batch** is uploading, the later messages of its stream wait behind it, in
///   order, so that no message of the batch, and no batch completion (explicit, or implied by a
///   new batch id), overtakes it. Other streams and unbatched large messages never wait.
/// * a failed upload is retried with backoff (200 ms doubling to 30 s) for as long as the
///   connection lives, unless the platform refused it for good (a 4xx other than 401, 408 and
///   429): then the message is reported as [`Outcome::Refused`] and whatever waited behind it
///   goes on.
#[derive(Debug)]
pub struct TelemetryMapper {
    credentials: ConnectionCredentials,
    session: SessionInfo,
    uploader: Uploader,
    uploads: JoinSet<(u64, std::result::Result<String, String>)>,
    limiter: Arc<Semaphore>,
    /// Link topics of the uploads in progress.
    links: HashMap<u64, String>,
    /// Per stream: messages waiting in order behind a batched large message (`None`: still
    /// uploading).
    held: HashMap<Arc<StreamTarget>, VecDeque<(u64, Option<Outcome>)>>,
    /// The stream of each held upload.
    held_uploads: HashMap<u64, Arc<StreamTarget>>,
    /// Refusals not yet returned by [`TelemetryMapper::next_event`].
    refused: VecDeque<TransportEvent>,
}

impl TelemetryMapper {
    /// Whether the device takes direct methods on this connection.
    pub fn direct_methods(&self) -> bool {
        self.session.direct_methods
    }

    /// A mapper for the device of `credentials`; large payloads go to `upload_base_url`
    /// (default `https://{hub}`) with `tls`.
    pub fn new(
        credentials: ConnectionCredentials,
        session: SessionInfo,
        tls: Option<Arc<rustls::ClientConfig>>,
        upload_base_url: Option<String>,
    ) -> Result<Self> {
        Ok(TelemetryMapper {
            credentials,
            session,
            uploader: Uploader::new(tls, upload_base_url)?,
            uploads: JoinSet::new(),
            limiter: Arc::new(Semaphore::new(MAX_CONCURRENT_UPLOADS)),
            links: HashMap::new(),
            held: HashMap::new(),
            held_uploads: HashMap::new(),
            refused: VecDeque::new(),
        })
    }

    /// Takes `message` over: returns the topic and payload to publish now, or `None` when it
    /// is published later (its upload, or one it waits behind, is in progress; see
    /// [`TelemetryMapper::next_ready`]).
    pub fn submit(&mut self, seq: u64, message: &OutgoingMessage) -> Option<(String, Bytes)> {
        let hub_id = &self.credentials.hub_device_id;
        let key = (!self.session.queue_id.is_empty()).then(|| self.session.message_key(seq));
        let large = message.payload.len() > EXTERNALIZE_THRESHOLD;
        let topic = topics::telemetry_topic(hub_id, message, large, key.as_deref());
        if !large {
            if let Some(chain) = self.held.get_mut(&message.target) {
                chain.push_back((seq, Some(Outcome::Publish { seq, topic, payload: message.payload.clone() })));
                return None;
            }
            return Some((topic, message.payload.clone()));
        }
        self.links.insert(seq, topic);
        if message.batch_id.is_some() || self.held.contains_key(&message.target) {
            self.held.entry(message.target.clone()).or_default().push_back((seq, None));
            self.held_uploads.insert(seq, message.target.clone());
        }
        let (uploader, limiter, payload) = (self.uploader.clone(), self.limiter.clone(), message.payload.clone());
        let (host, hub_id, sas) = (self.credentials.hub_host.clone(), hub_id.clone(), self.credentials.sas.clone());
        self.uploads.spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
            loop {
                let attempt = {
                    let _permit = limiter.acquire().await;
                    uploader.upload(&host, &hub_id, &sas, &payload).await
                };
                match attempt {
                    Ok(blob) => return (seq, Ok(blob)),
                    Err(UploadError::Refused(reason)) => return (seq, Err(reason)),
                    Err(UploadError::Retry(e)) => {
                        let delay = backoff.next_delay();
                        warn!(error = %e, ?delay, seq, "large message upload failed; retrying (other messages keep flowing)");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
        .in_current_span());
        None
    }

    /// The next event of a connection using this mapper: from `events` (its session; `closed`
    /// describes the end of the channel), or an upload that ended: its publishes are handed to
    /// `publish` (synchronously, so that this stays cancel-safe) and a refusal is returned as
    /// [`TransportEvent::MessageRefused`].
    pub async fn next_event(
        &mut self,
        events: &mut tokio::sync::mpsc::Receiver<Result<TransportEvent>>,
        closed: &str,
        mut publish: impl FnMut(u64, String, Bytes) -> Result<()>,
    ) -> Result<TransportEvent> {
        loop {
            if let Some(event) = self.refused.pop_front() {
                return Ok(event);
            }
            tokio::select! {
                event = events.recv() => return event.unwrap_or_else(|| Err(Error::transport(closed.to_owned()))),
                ready = self.next_ready() => {
                    for outcome in ready? {
                        match outcome {
                            Outcome::Publish { seq, topic, payload } => publish(seq, topic, payload)?,
                            Outcome::Refused { seq, reason } => {
                                self.refused.push_back(TransportEvent::MessageRefused { seq, reason })
                            }
                        }
                    }
                }
            }
        }
    }

    /// Waits until an upload ends; returns what to do now, in order (pending forever while no
    /// upload runs). Cancel-safe.
    pub async fn next_ready(&mut self) -> Result<Vec<Outcome>> {
        let (seq, result) = match self.uploads.join_next().await {
            None => std::future::pending().await,
            Some(Ok(done)) => done,
            Some(Err(e)) => return Err(Error::transport_with("large message upload task failed", e)),
        };
        let outcome = match result {
            Ok(blob) => {
                let topic = self.links.remove(&seq).unwrap_or_default();
                let link = serde_json::json!({ "link": blob }).to_string();
                Outcome::Publish { seq, topic, payload: Bytes::from(link) }
            }
            Err(reason) => {
                self.links.remove(&seq);
                warn!(seq, ?reason, "the platform refused a large message for good; it is dropped from the queue");
                Outcome::Refused { seq, reason: format!("large message upload refused: {reason}") }
            }
        };
        let Some(target) = self.held_uploads.remove(&seq) else { return Ok(vec![outcome]) };
        let mut ready = Vec::new();
        if let Some(chain) = self.held.get_mut(&target) {
            if let Some(slot) = chain.iter_mut().find(|(s, _)| *s == seq) {
                slot.1 = Some(outcome);
            }
            while chain.front().is_some_and(|(_, o)| o.is_some()) {
                if let Some((_, Some(o))) = chain.pop_front() {
                    ready.push(o);
                }
            }
            if chain.is_empty() {
                self.held.remove(&target);
            }
        }
        Ok(ready)
    }
}
