//! The platform mapping shared by every transport that carries MQTT (over TCP/TLS or WebSocket):
//! telemetry topics and large-message uploads, twin request correlation, incoming messages.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use spotflow_core::{
    Backoff, ConnectionCredentials, Error, OutgoingMessage, RequestId, Result, SessionInfo, TransportEvent,
};
use tracing::{debug, info, warn};

use crate::topics::{self, Incoming};
use crate::upload::Uploader;

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
            Incoming::CloudToDevice { properties, size } => {
                info!(%properties, size, "cloud-to-device message acknowledged and dropped (not part of this SDK's API)");
                None
            }
            Incoming::Ignored(reason) => {
                debug!(%reason, "incoming message ignored");
                None
            }
        }
    }
}

/// Turns outgoing messages into MQTT publishes for one device, uploading large payloads.
#[derive(Debug, Clone)]
pub struct TelemetryMapper {
    credentials: ConnectionCredentials,
    session: SessionInfo,
    uploader: Uploader,
}

impl TelemetryMapper {
    /// A mapper for the device of `credentials`; large payloads go to `upload_base_url`
    /// (default `https://{hub}`) with `tls`.
    pub fn new(
        credentials: ConnectionCredentials,
        session: SessionInfo,
        tls: Option<Arc<rustls::ClientConfig>>,
        upload_base_url: Option<String>,
    ) -> Result<Self> {
        Ok(TelemetryMapper { credentials, session, uploader: Uploader::new(tls, upload_base_url)? })
    }

    /// The topic and payload to publish for `message` (uploading it first when it is large).
    pub async fn publish_of(&self, seq: u64, message: &OutgoingMessage) -> Result<(String, Bytes)> {
        let hub_id = &self.credentials.hub_device_id;
        let key = (!self.session.queue_id.is_empty()).then(|| self.session.message_key(seq));
        if message.payload.len() <= EXTERNALIZE_THRESHOLD {
            return Ok((topics::telemetry_topic(hub_id, message, false, key.as_deref()), message.payload.clone()));
        }
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut attempt = 0;
        let blob = loop {
            attempt += 1;
            match self
                .uploader
                .upload(&self.credentials.hub_host, hub_id, &self.credentials.sas, &message.payload)
                .await
            {
                Ok(blob) => break blob,
                Err(e) if attempt < 5 && e.is_temporary() => {
                    let delay = backoff.next_delay();
                    warn!(error = %e, ?delay, "large message upload failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(Error::transport(format!("large message upload failed: {e}"))),
            }
        };
        let link = serde_json::json!({ "link": blob }).to_string();
        Ok((topics::telemetry_topic(hub_id, message, true, key.as_deref()), Bytes::from(link)))
    }
}
