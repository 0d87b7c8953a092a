//! The bytes an MQTT server sends the SDK after CONNACK: decoded as the session decodes them,
//! every PUBLISH translated by the twin correlation with requests outstanding (a twin GET and a
//! reported patch), as the session does. Nothing may panic; a response is matched only to a
//! request that was outstanding.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rumqttc::mqttbytes::v4::Packet;
use spotflow_core::{DesiredTracker, TransportEvent};
use spotflow_transport_mqtt::mapping::{RequestKind, TwinRequests};

fuzz_target!(|data: &[u8]| {
    let mut twin = TwinRequests::default();
    let patch = serde_json::json!({ "a": 1 }).as_object().cloned();
    let _ = twin.start(1, RequestKind::TwinGet, None);
    let _ = twin.start(2, RequestKind::ReportedPatch, patch.as_ref());
    let mut buf = BytesMut::from(data);
    let mut answered = Vec::new();
    let mut desired = DesiredTracker::new(None);
    while let Ok(packet) = Packet::read(&mut buf, 1 << 20) {
        if let Packet::Publish(p) = packet {
            match twin.translate(&p.topic, &p.payload) {
                Some(TransportEvent::Twin { request, result }) => {
                    answered.push(request);
                    if let Ok(doc) = result {
                        let _ = desired.handle_twin(doc.desired);
                    }
                }
                Some(TransportEvent::ReportedPatched { request, .. }) => answered.push(request),
                Some(TransportEvent::DesiredPatch { version, patch }) => {
                    let _ = desired.handle_patch(version, &patch);
                    let _ = desired.poll_notify();
                }
                _ => {}
            }
        }
    }
    answered.sort_unstable();
    let before = answered.len();
    answered.dedup();
    assert_eq!(before, answered.len(), "a request answered twice");
    assert!(answered.iter().all(|r| *r == 1 || *r == 2), "an answer to a request never made");
});
