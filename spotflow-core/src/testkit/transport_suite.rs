//! The transport conformance suite: what every [`Transport`] must do for the SDK, checked against
//! a platform the suite can observe. The built-in MQTT and WebSocket transports, the in-memory
//! platform and the custom-transport example all run it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use crate::testkit::MemoryPlatform;
use crate::{
    Connection, ConnectionCredentials, MessageKind, OutgoingMessage, PlatformApi, ProvisioningStatus, SessionInfo,
    StreamTarget, Transport, TransportEvent,
};

/// The platform behind the transport under test, as the suite needs to see it.
#[async_trait]
pub trait ConformancePlatform: Send + Sync {
    /// Credentials of a registered device that may connect.
    async fn device(&self) -> ConnectionCredentials;
    /// The decoded payloads the platform has stored for that device, in arrival order.
    async fn delivered(&self, hub_device_id: &str) -> Vec<Vec<u8>>;
    /// Changes the device's desired properties (the platform pushes the patch to a connected
    /// device); returns the new version.
    async fn push_desired(&self, hub_device_id: &str, patch: Map<String, Value>) -> u64;
}

/// How long the suite waits for any one thing.
const WAIT: Duration = Duration::from_secs(30);

/// Messages published by the suite (besides one over the 250,000-byte MQTT threshold).
const MESSAGES: u64 = 300;

fn message(seq: u64, payload: Vec<u8>) -> OutgoingMessage {
    OutgoingMessage {
        target: Arc::new(StreamTarget::new(Some("conformance"), Some(&format!("stream-{}", seq % 3))).unwrap()),
        kind: MessageKind::Data,
        batch_id: Some(format!("batch-{}", seq / 100).into()),
        batch_slice_id: None,
        message_id: Some(format!("m{seq}").into()),
        chunk_id: None,
        content_encoding: None,
        payload: payload.into(),
    }
}

/// Waits for the next event, polling `next_event` with very short timeouts so that many of its
/// futures are dropped mid-way (the SDK does that in `select!`: no event may be lost by it).
async fn next(conn: &mut Box<dyn Connection>) -> TransportEvent {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no transport event within {WAIT:?}");
        match tokio::time::timeout(Duration::from_micros(200), conn.next_event()).await {
            Ok(Ok(event)) => return event,
            Ok(Err(e)) => panic!("the connection failed: {e}"),
            Err(_) => {
                // Dropped mid-way; let the runtime move the connection's tasks on.
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Runs the conformance suite: panics with a description of the first violation.
///
/// Checks that a connection
/// 1. acknowledges every published telemetry message exactly once, by the sequence number it was
///    published with (in any order), with many in flight and `next_event` futures dropped
///    mid-way (cancel safety), and the platform stores every payload;
/// 2. carries a message over 250,000 bytes (uploaded and linked by MQTT transports);
/// 3. answers a twin request with the twin, and a reported-properties patch with a 2xx status,
///    each matched to its request id;
/// 4. delivers a desired-properties patch pushed by the platform;
/// 5. closes.
pub async fn transport_conformance(transport: &dyn Transport, platform: &dyn ConformancePlatform) {
    let creds = platform.device().await;
    let hub_id = creds.hub_device_id.clone();
    let session = SessionInfo { queue_id: "conformance".into(), ..Default::default() };
    let mut conn = tokio::time::timeout(WAIT, transport.connect(&creds, &session))
        .await
        .expect("connect within the timeout")
        .expect("connect");

    // 1 and 2: many in flight, one of them large.
    let large: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let mut expected = BTreeSet::new();
    for seq in 1..=MESSAGES {
        let payload = if seq == MESSAGES / 2 { large.clone() } else { format!("conformance {seq}").into_bytes() };
        conn.publish_message(seq, &message(seq, payload)).await.expect("publish");
        expected.insert(seq);
    }
    let mut acknowledged = BTreeSet::new();
    let mut others = Vec::new();
    while acknowledged.len() < expected.len() {
        match next(&mut conn).await {
            TransportEvent::MessageAcknowledged(seq) => {
                assert!(expected.contains(&seq), "acknowledgement of {seq}, which was never published");
                assert!(acknowledged.insert(seq), "message {seq} acknowledged twice");
            }
            other => others.push(other),
        }
    }
    assert!(others.is_empty(), "unexpected events: {others:?}");
    let delivered = platform.delivered(&hub_id).await;
    assert_eq!(delivered.len() as u64, MESSAGES, "the platform stores every acknowledged message");
    for seq in 1..=MESSAGES {
        let payload = if seq == MESSAGES / 2 { large.clone() } else { format!("conformance {seq}").into_bytes() };
        assert!(delivered.contains(&payload), "message {seq} not stored as sent");
    }

    // 3: twin GET and a reported patch, matched by request id.
    conn.request_twin(7).await.expect("twin request");
    let twin = loop {
        match next(&mut conn).await {
            TransportEvent::Twin { request: 7, result } => break result.expect("the twin"),
            TransportEvent::Twin { request, .. } => panic!("twin answer for request {request}, not 7"),
            _ => {}
        }
    };
    let reported_before = twin.reported_version;
    let patch = json!({"conformance": {"suite": true}}).as_object().cloned().unwrap();
    conn.patch_reported(8, &patch).await.expect("reported patch");
    loop {
        match next(&mut conn).await {
            TransportEvent::ReportedPatched { request: 8, status, version } => {
                assert!((200..300).contains(&status), "reported patch answered {status}");
                if let Some(v) = version {
                    assert!(v > reported_before, "the reported version grows: {v} after {reported_before}");
                }
                break;
            }
            TransportEvent::ReportedPatched { request, .. } => panic!("reported answer for request {request}, not 8"),
            _ => {}
        }
    }

    // 4: a desired patch pushed by the platform.
    let version = platform.push_desired(&hub_id, json!({"interval": 5}).as_object().cloned().unwrap()).await;
    loop {
        if let TransportEvent::DesiredPatch { version: v, patch } = next(&mut conn).await {
            assert_eq!(v, version, "the pushed version");
            assert_eq!(patch.get("interval"), Some(&json!(5)), "the pushed patch");
            break;
        }
    }

    // 5.
    tokio::time::timeout(WAIT, conn.close()).await.expect("close within the timeout");
}

#[async_trait]
impl ConformancePlatform for MemoryPlatform {
    async fn device(&self) -> ConnectionCredentials {
        self.add_provisioning_token("conformance-token");
        self.set_auto_approve(true);
        let token = crate::Secret::new("conformance-token");
        let op = self.init_provisioning(&token, Some("conformance-device")).await.expect("provisioning");
        let registration = match self.complete_provisioning(&token, &op.id).await.expect("approval") {
            ProvisioningStatus::Approved(t) => t,
            other => panic!("the operation is not approved: {other:?}"),
        };
        self.register(&registration.token).await.expect("registration").credentials
    }

    async fn delivered(&self, hub_device_id: &str) -> Vec<Vec<u8>> {
        self.messages().into_iter().filter(|m| m.hub_device_id == hub_device_id).map(|m| m.decoded_payload).collect()
    }

    async fn push_desired(&self, hub_device_id: &str, patch: Map<String, Value>) -> u64 {
        self.update_desired(hub_device_id, patch)
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_in_memory_platform_passes() {
        let platform = super::MemoryPlatform::new();
        super::transport_conformance(&platform, &platform).await;
    }
}
