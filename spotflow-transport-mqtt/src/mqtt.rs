//! `MqttTransport`: the platform's data plane over MQTT 3.1.1 (rumqttc), TLS by default.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Outgoing, Packet, QoS, SubscribeFilter,
    SubscribeReasonCode, TlsConfiguration, Transport as RumqttcTransport,
};
use serde_json::{Map, Value};
use spotflow_core::{
    Connection, ConnectionCredentials, Error, OutgoingMessage, RequestId, Result, SessionInfo, Transport,
    TransportEvent,
};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::mapping::{RequestKind, TelemetryMapper, TwinRequests, EVENT_CHANNEL, EXTERNALIZE_THRESHOLD};
use crate::topics;

/// Tunables of the MQTT transport.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MqttTransportOptions {
    /// Broker port (the platform uses 8883).
    pub port: u16,
    /// TLS configuration; `None` is plain TCP (only for local development, asked for explicitly).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Publishes in flight at once (the SDK's window should not exceed it).
    pub max_in_flight: u16,
    /// Largest incoming packet accepted (twin documents can be large).
    pub max_incoming_packet: usize,
    /// Bound of the TCP/TLS/MQTT connection setup.
    pub connect_timeout: Duration,
    /// Base URL of the file-upload API for large messages (default `https://{hub host}`).
    pub upload_base_url: Option<String>,
}

impl MqttTransportOptions {
    fn with(port: u16, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        MqttTransportOptions {
            port,
            tls,
            keep_alive: Duration::from_secs(60),
            max_in_flight: 1000,
            max_incoming_packet: 4 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            upload_base_url: None,
        }
    }

    /// TLS to port 8883 with `tls`.
    pub fn tls(tls: Arc<rustls::ClientConfig>) -> Self {
        MqttTransportOptions::with(8883, Some(tls))
    }

    /// Plain TCP to `port`: no encryption, no server authentication. Local development only.
    pub fn plain_tcp(port: u16) -> Self {
        MqttTransportOptions::with(port, None)
    }
}

/// The MQTT transport. Each [`Transport::connect`] opens one connection; the SDK reconnects.
#[derive(Debug, Clone)]
pub struct MqttTransport {
    options: MqttTransportOptions,
}

impl MqttTransport {
    /// A transport with these options.
    pub fn new(options: MqttTransportOptions) -> Result<Self> {
        Ok(MqttTransport { options })
    }

    /// The options in use.
    pub fn options(&self) -> &MqttTransportOptions {
        &self.options
    }
}

enum Pending {
    Telemetry(u64),
    Twin,
}

#[derive(Default)]
struct Correlation {
    /// Kinds of the QoS 1 publishes handed to rumqttc, in order (matched to packet ids as
    /// rumqttc assigns them, in the same order).
    order: VecDeque<Pending>,
    twin: TwinRequests,
}

fn refused(code: ConnectReturnCode) -> Error {
    match code {
        ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
            Error::Unauthorized(format!("connection refused by the broker: {code:?}"))
        }
        other => Error::transport(format!("connection refused by the broker: {other:?}")),
    }
}

#[async_trait]
impl Transport for MqttTransport {
    async fn connect(&self, creds: &ConnectionCredentials, session: &SessionInfo) -> Result<Box<dyn Connection>> {
        let o = &self.options;
        if o.tls.is_none() {
            spotflow_core::require_loopback_for_plain(&creds.hub_host, "MQTT")?;
        }
        let mut mqtt = rumqttc::MqttOptions::new(creds.hub_device_id.clone(), creds.hub_host.clone(), o.port);
        mqtt.set_credentials(topics::username(&creds.hub_host, &creds.hub_device_id), creds.sas.expose());
        mqtt.set_clean_session(false);
        mqtt.set_keep_alive(o.keep_alive);
        mqtt.set_inflight(o.max_in_flight.max(1));
        mqtt.set_max_packet_size(o.max_incoming_packet, EXTERNALIZE_THRESHOLD + 16 * 1024);
        if let Some(tls) = &o.tls {
            mqtt.set_transport(RumqttcTransport::tls_with_config(TlsConfiguration::Rustls(tls.clone())));
        }
        let (client, mut eventloop) = AsyncClient::new(mqtt, usize::from(o.max_in_flight) + 64);
        let connected = tokio::time::timeout(o.connect_timeout, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => {
                        return Ok(())
                    }
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => return Err(refused(ack.code)),
                    Ok(_) => {}
                    Err(ConnectionError::ConnectionRefused(code)) => return Err(refused(code)),
                    Err(e) => return Err(Error::transport_with("MQTT connection failed", e)),
                }
            }
        })
        .await
        .map_err(|_| Error::Timeout(format!("MQTT connection not established within {:?}", o.connect_timeout)))?;
        connected?;
        let filters = topics::subscriptions(&creds.hub_device_id).map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce));
        client.subscribe_many(filters).await.map_err(|e| Error::transport_with("subscribe failed", e))?;
        let correlation = Arc::new(Mutex::new(Correlation::default()));
        let (events_tx, events_rx) = mpsc::channel(EVENT_CHANNEL);
        let pump = tokio::spawn(pump(eventloop, correlation.clone(), events_tx));
        info!(hub = %creds.hub_host, port = o.port, tls = o.tls.is_some(), "MQTT connected");
        let mapper = TelemetryMapper::new(creds.clone(), session.clone(), o.tls.clone(), o.upload_base_url.clone())?;
        Ok(Box::new(MqttConnection { client, correlation, events: events_rx, pump, mapper }))
    }
}

/// Drives rumqttc's event loop, matching acknowledgements and twin answers to their requests.
/// The events channel is bounded: while the SDK is busy, the event loop waits, so a server
/// flooding the device is held back by TCP instead of growing the device's memory.
async fn pump(
    mut eventloop: EventLoop,
    correlation: Arc<Mutex<Correlation>>,
    events: mpsc::Sender<Result<TransportEvent>>,
) {
    let mut by_pkid: HashMap<u16, u64> = HashMap::new();
    loop {
        let event = match eventloop.poll().await {
            Ok(e) => e,
            Err(e) => {
                let _ = events.send(Err(Error::transport_with("MQTT connection lost", e))).await;
                return;
            }
        };
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => {
                let next = correlation.lock().unwrap_or_else(|p| p.into_inner()).order.pop_front();
                if let Some(Pending::Telemetry(seq)) = next {
                    by_pkid.insert(pkid, seq);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(seq) = by_pkid.remove(&ack.pkid) {
                    if events.send(Ok(TransportEvent::MessageAcknowledged(seq))).await.is_err() {
                        return;
                    }
                }
            }
            Event::Incoming(Packet::SubAck(s))
                if s.return_codes.iter().any(|c| matches!(c, SubscribeReasonCode::Failure)) =>
            {
                warn!(codes = ?s.return_codes, "the broker refused a subscription");
            }
            Event::Incoming(Packet::Publish(p)) => {
                let event = correlation.lock().unwrap_or_else(|p| p.into_inner()).twin.translate(&p.topic, &p.payload);
                if let Some(e) = event {
                    if events.send(Ok(e)).await.is_err() {
                        return;
                    }
                }
            }
            _ => {}
        }
    }
}

struct MqttConnection {
    client: AsyncClient,
    correlation: Arc<Mutex<Correlation>>,
    events: mpsc::Receiver<Result<TransportEvent>>,
    pump: tokio::task::JoinHandle<()>,
    mapper: TelemetryMapper,
}

impl MqttConnection {
    async fn publish(&mut self, pending: Pending, topic: String, payload: bytes::Bytes) -> Result<()> {
        self.correlation.lock().unwrap_or_else(|p| p.into_inner()).order.push_back(pending);
        self.client
            .publish_bytes(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| Error::transport_with("MQTT client stopped", e))
    }
}

impl Drop for MqttConnection {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

#[async_trait]
impl Connection for MqttConnection {
    async fn publish_message(&mut self, seq: u64, message: &OutgoingMessage) -> Result<()> {
        match self.mapper.submit(seq, message) {
            Some((topic, payload)) => self.publish(Pending::Telemetry(seq), topic, payload).await,
            None => Ok(()),
        }
    }

    async fn request_twin(&mut self, request: RequestId) -> Result<()> {
        let (topic, payload) =
            self.correlation.lock().unwrap_or_else(|p| p.into_inner()).twin.start(request, RequestKind::TwinGet, None);
        self.publish(Pending::Twin, topic, payload).await
    }

    async fn patch_reported(&mut self, request: RequestId, patch: &Map<String, Value>) -> Result<()> {
        let (topic, payload) = self.correlation.lock().unwrap_or_else(|p| p.into_inner()).twin.start(
            request,
            RequestKind::ReportedPatch,
            Some(patch),
        );
        self.publish(Pending::Twin, topic, payload).await
    }

    async fn next_event(&mut self) -> Result<TransportEvent> {
        let (client, correlation) = (&self.client, &self.correlation);
        self.mapper
            .next_event(&mut self.events, "MQTT connection closed", |seq, topic, payload| {
                correlation.lock().unwrap_or_else(|p| p.into_inner()).order.push_back(Pending::Telemetry(seq));
                client
                    .try_publish(topic, QoS::AtLeastOnce, false, payload)
                    .map_err(|e| Error::transport_with("MQTT client stopped or congested", e))
            })
            .await
    }

    async fn close(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.disconnect()).await;
        // Let the event loop send DISCONNECT before it is stopped.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Some(e) = self.events.recv().await {
                if e.is_err() {
                    break;
                }
            }
        })
        .await;
        self.pump.abort();
    }
}
