//! A custom transport written only against the facade's public API: a decorator that wraps the
//! built-in MQTT transport and traces every telemetry message from hand-over to acknowledgement
//! (how long the platform took, how many are in flight), the kind of instrumentation a fleet
//! operator adds without touching the SDK.
//!
//! `cargo run --example custom_transport` plugs it in with `.transport(..)`, sends messages to the
//! emulator embedded in this process, prints the latency figures, and runs the transport
//! conformance suite (`testkit::transport_conformance`) on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Map, Value};
use spotflow_device::extend::mqtt::{MqttTransport, MqttTransportOptions};
use spotflow_device::extend::{
    Connection, ConnectionCredentials, OutgoingMessage, RequestId, SessionInfo, Transport, TransportEvent,
};
use spotflow_device::{Compression, DeviceClient, Result};
use spotflow_emulator::Emulator;

/// Latencies seen by a [`TracingTransport`], shared by all its connections.
#[derive(Debug, Default)]
struct Trace {
    acknowledged: Vec<Duration>,
    connections: u32,
}

/// Wraps any transport; every connection it opens is a [`TracingConnection`].
#[derive(Debug, Clone)]
struct TracingTransport<T> {
    inner: T,
    trace: Arc<Mutex<Trace>>,
}

#[async_trait]
impl<T: Transport> Transport for TracingTransport<T> {
    async fn connect(&self, credentials: &ConnectionCredentials, session: &SessionInfo) -> Result<Box<dyn Connection>> {
        let inner = self.inner.connect(credentials, session).await?;
        self.trace.lock().unwrap().connections += 1;
        tracing::info!(device = %credentials.hub_device_id, "traced connection opened");
        Ok(Box::new(TracingConnection { inner, sent: HashMap::new(), trace: self.trace.clone() }))
    }
}

struct TracingConnection {
    inner: Box<dyn Connection>,
    /// When each message in flight was handed over.
    sent: HashMap<u64, Instant>,
    trace: Arc<Mutex<Trace>>,
}

#[async_trait]
impl Connection for TracingConnection {
    async fn publish_message(&mut self, seq: u64, message: &OutgoingMessage) -> Result<()> {
        self.sent.insert(seq, Instant::now());
        tracing::debug!(seq, bytes = message.payload.len(), in_flight = self.sent.len(), "message handed over");
        self.inner.publish_message(seq, message).await
    }

    async fn request_twin(&mut self, request: RequestId) -> Result<()> {
        self.inner.request_twin(request).await
    }

    async fn patch_reported(&mut self, request: RequestId, patch: &Map<String, Value>) -> Result<()> {
        self.inner.patch_reported(request, patch).await
    }

    // Cancel-safe because the inner `next_event` is, and nothing here awaits after it returns.
    async fn next_event(&mut self) -> Result<TransportEvent> {
        let event = self.inner.next_event().await?;
        if let TransportEvent::MessageAcknowledged(seq) | TransportEvent::MessageRefused { seq, .. } = &event {
            if let Some(at) = self.sent.remove(seq) {
                self.trace.lock().unwrap().acknowledged.push(at.elapsed());
            }
        }
        Ok(event)
    }

    async fn close(&mut self) {
        self.inner.close().await
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    spotflow_examples::init_logs();
    let emu = Emulator::builder().auto_approve(Some(Duration::ZERO)).start().await?;

    // The built-in MQTT transport, configured for the emulator (its CA, its port, its upload API).
    let mut options = MqttTransportOptions::tls(Arc::new(emu.client_tls_config()));
    options.port = emu.mqtts_addr().map_or(8883, |a| a.port());
    options.session.upload_base_url = Some(emu.https_url());
    let transport = TracingTransport { inner: MqttTransport::new(options)?, trace: Arc::default() };

    let data = tempfile::tempdir()?;
    let client =
        DeviceClient::builder(Some("traced-device"), emu.create_provisioning_token(), data.path().join("d.db"))
            .instance(emu.https_url())
            .trust_ca_pem(emu.ca_pem())
            .transport(Arc::new(transport.clone()))
            .display_provisioning_operation_callback(|_| {})
            .start()
            .await?;
    let sender = client.create_stream_sender(Some("telemetry"), Some("traced"), Compression::Fastest)?;
    for i in 0..2_000 {
        sender.enqueue_message(format!("{{\"sequence\":{i},\"temperatureCelsius\":21.5}}")).await?;
    }
    client.wait_enqueued_messages_sent_timeout(Duration::from_secs(60)).await?;
    client.close().await?;

    let (mut latencies, connections) = {
        let trace = transport.trace.lock().unwrap();
        (trace.acknowledged.clone(), trace.connections)
    };
    latencies.sort();
    if latencies.len() != 2_000 {
        return Err(format!("traced {} acknowledgements, expected 2000", latencies.len()).into());
    }
    println!(
        "Traced {} messages over {connections} connection(s): hand-over to acknowledgement median {:?}, p99 {:?}, max {:?}.",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );

    // The same transport passes the conformance suite every transport of the SDK passes.
    spotflow_device::testkit::transport_conformance(&transport, &emu).await;
    println!("TracingTransport<MqttTransport> passes the transport conformance suite.");
    Ok(())
}
