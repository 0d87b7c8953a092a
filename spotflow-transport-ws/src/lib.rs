//! MQTT over WebSocket for devices behind firewalls and proxies: the platform's MQTT protocol
//! carried in binary WebSocket frames (`wss://{hub}/$iothub/websocket`, subprotocol `mqtt`) with
//! tokio-tungstenite, through an HTTP CONNECT proxy when configured (option or `HTTPS_PROXY` /
//! `NO_PROXY`). The platform mapping (topics, property bag, twin correlation, uploads) is shared
//! with `spotflow-transport-mqtt`; reconnects, backoff and credential renewal are the SDK's.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod proxy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode, Packet, PubAck, Publish, Subscribe, SubscribeFilter};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use serde_json::{Map, Value};
use spotflow_core::{
    Connection, ConnectionCredentials, Error, OutgoingMessage, RequestId, Result, Transport, TransportEvent,
};
use spotflow_transport_mqtt::mapping::{RequestKind, TelemetryMapper, TwinRequests, EVENT_CHANNEL};
use spotflow_transport_mqtt::topics;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, warn};

pub use proxy::{excluded as no_proxy_excludes, Proxy};

/// Where the proxy comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ProxyMode {
    /// `HTTPS_PROXY` / `https_proxy`, unless `NO_PROXY` / `no_proxy` excludes the hub (default).
    #[default]
    FromEnvironment,
    /// Always this proxy.
    Explicit(Proxy),
    /// Never a proxy.
    Direct,
}

/// Tunables of the WebSocket transport.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WsTransportOptions {
    /// Port of the WebSocket endpoint (443 on the platform).
    pub port: u16,
    /// Path of the endpoint.
    pub path: String,
    /// TLS configuration; `None` is plain `ws://` (local development only, asked for explicitly).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Proxy selection.
    pub proxy: ProxyMode,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Largest incoming MQTT packet (and WebSocket message) accepted.
    pub max_incoming_packet: usize,
    /// Bound of the whole connection setup (proxy, TLS, WebSocket, MQTT).
    pub connect_timeout: Duration,
    /// Base URL of the file-upload API for large messages (default `https://{hub host}`).
    pub upload_base_url: Option<String>,
}

impl WsTransportOptions {
    fn with(port: u16, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        WsTransportOptions {
            port,
            path: "/$iothub/websocket".into(),
            tls,
            proxy: ProxyMode::default(),
            keep_alive: Duration::from_secs(60),
            max_incoming_packet: 4 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            upload_base_url: None,
        }
    }

    /// `wss://` on port 443 with `tls`.
    pub fn tls(tls: Arc<rustls::ClientConfig>) -> Self {
        WsTransportOptions::with(443, Some(tls))
    }

    /// Plain `ws://` to `port`: no encryption, no server authentication. Local development only.
    pub fn plain(port: u16) -> Self {
        WsTransportOptions::with(port, None)
    }
}

/// The WebSocket transport. Each [`Transport::connect`] opens one connection.
#[derive(Debug, Clone)]
pub struct WsTransport {
    options: WsTransportOptions,
}

impl WsTransport {
    /// A transport with these options.
    pub fn new(options: WsTransportOptions) -> Self {
        WsTransport { options }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Ws = WebSocketStream<Box<dyn Io>>;

fn refused(code: ConnectReturnCode) -> Error {
    match code {
        ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
            Error::Unauthorized(format!("connection refused by the broker: {code:?}"))
        }
        other => Error::transport(format!("connection refused by the broker: {other:?}")),
    }
}

/// MQTT packets carried in WebSocket frames (packets may span frames, frames may hold several).
struct Framed {
    ws: Ws,
    buf: BytesMut,
    max: usize,
}

impl Framed {
    async fn send(&mut self, packet: &Packet) -> Result<()> {
        let mut out = BytesMut::new();
        packet.write(&mut out, usize::MAX).map_err(|e| Error::transport(format!("cannot encode a packet: {e}")))?;
        self.ws.send(Message::Binary(out.freeze())).await.map_err(|e| Error::transport_with("WebSocket send failed", e))
    }

    /// Reads the next packet; cancel-safe (bytes of a partial packet stay in the buffer).
    async fn next(&mut self) -> Result<Packet> {
        loop {
            match Packet::read(&mut self.buf, self.max) {
                Ok(p) => return Ok(p),
                Err(CodecError::InsufficientBytes(_)) => {}
                Err(e) => return Err(Error::transport(format!("malformed MQTT packet from the server: {e}"))),
            }
            match self.ws.next().await {
                Some(Ok(Message::Binary(data))) => self.buf.extend_from_slice(&data),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Err(Error::transport("the server sent a text frame on the MQTT WebSocket"))
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(Error::transport(format!("the server closed the WebSocket: {frame:?}")));
                }
                Some(Err(e)) => return Err(Error::transport_with("WebSocket receive failed", e)),
                None => return Err(Error::transport("the WebSocket ended")),
            }
        }
    }
}

impl WsTransport {
    async fn open(&self, host: &str) -> Result<Ws> {
        let o = &self.options;
        let proxy = match &o.proxy {
            ProxyMode::Direct => None,
            ProxyMode::Explicit(p) => Some(p.clone()),
            ProxyMode::FromEnvironment => Proxy::from_env(host)?,
        };
        let tcp = match &proxy {
            Some(p) => proxy::tunnel(p, host, o.port, o.connect_timeout).await?,
            None => {
                let tcp = TcpStream::connect((host, o.port))
                    .await
                    .map_err(|e| Error::transport_with(format!("cannot connect to {host}:{}", o.port), e))?;
                let _ = tcp.set_nodelay(true);
                tcp
            }
        };
        let (stream, scheme): (Box<dyn Io>, &str) = match &o.tls {
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|e| Error::invalid("hub host", e))?;
                let tls = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| Error::transport_with("TLS handshake failed", e))?;
                (Box::new(tls), "wss")
            }
            None => (Box::new(tcp), "ws"),
        };
        let mut request = format!("{scheme}://{host}:{}{}", o.port, o.path)
            .into_client_request()
            .map_err(|e| Error::invalid("WebSocket URL", e))?;
        request.headers_mut().insert("sec-websocket-protocol", "mqtt".parse().map_err(|_| Error::transport("header"))?);
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(o.max_incoming_packet + 1024);
        config.max_frame_size = Some(o.max_incoming_packet + 1024);
        let (ws, response) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(|e| Error::transport_with("WebSocket handshake failed", e))?;
        let protocol = response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok());
        if protocol != Some("mqtt") {
            return Err(Error::transport(format!("the server did not accept the mqtt subprotocol ({protocol:?})")));
        }
        debug!(host, port = o.port, proxy = proxy.is_some(), "WebSocket open");
        Ok(ws)
    }
}

#[async_trait]
impl Transport for WsTransport {
    async fn connect(
        &self,
        creds: &ConnectionCredentials,
        session: &spotflow_core::SessionInfo,
    ) -> Result<Box<dyn Connection>> {
        let o = self.options.clone();
        if o.tls.is_none() {
            spotflow_core::require_loopback_for_plain(&creds.hub_host, "MQTT over WebSocket")?;
        }
        let setup = async {
            let ws = self.open(&creds.hub_host).await?;
            let mut framed = Framed { ws, buf: BytesMut::new(), max: o.max_incoming_packet };
            let mut connect = Connect::new(creds.hub_device_id.clone());
            connect.keep_alive = u16::try_from(o.keep_alive.as_secs()).unwrap_or(u16::MAX);
            connect.clean_session = false;
            connect.set_login(topics::username(&creds.hub_host, &creds.hub_device_id), creds.sas.expose());
            framed.send(&Packet::Connect(connect)).await?;
            match framed.next().await? {
                Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Success => {}
                Packet::ConnAck(ack) => return Err(refused(ack.code)),
                other => return Err(Error::transport(format!("expected CONNACK, got {other:?}"))),
            }
            let filters = topics::subscriptions(&creds.hub_device_id)
                .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce))
                .into_iter()
                .collect();
            framed.send(&Packet::Subscribe(Subscribe { pkid: 1, filters })).await?;
            Ok(framed)
        };
        let framed = tokio::time::timeout(o.connect_timeout, setup).await.map_err(|_| {
            Error::Timeout(format!("WebSocket connection not established within {:?}", o.connect_timeout))
        })??;
        let twin = Arc::new(Mutex::new(TwinRequests::default()));
        // Larger than any window of publishes the SDK keeps: a publish never waits for the
        // session, even while the session waits for the SDK to take its events.
        let (commands, commands_rx) = mpsc::channel(4096);
        let (events_tx, events) = mpsc::channel(EVENT_CHANNEL);
        let pump = tokio::spawn(run_session(framed, commands_rx, events_tx, twin.clone(), o.keep_alive));
        let mapper = TelemetryMapper::new(creds.clone(), session.clone(), o.tls.clone(), o.upload_base_url.clone())?;
        info!(hub = %creds.hub_host, port = o.port, "MQTT over WebSocket connected");
        Ok(Box::new(WsConnection { commands, events, twin, mapper, pump }))
    }
}

enum Command {
    Publish { topic: String, payload: Bytes, telemetry: Option<u64> },
    Disconnect,
}

/// Owns the WebSocket: packet ids, acknowledgements, keep-alive, incoming messages.
async fn run_session(
    mut framed: Framed,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Result<TransportEvent>>,
    twin: Arc<Mutex<TwinRequests>>,
    keep_alive: Duration,
) {
    // Packet id 1 is the SUBSCRIBE's until its SUBACK arrives.
    let mut in_flight: HashMap<u16, Option<u64>> = HashMap::from([(1, None)]);
    let mut next_pkid: u16 = 1;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive);
    let mut awaiting_pong = false;
    let fail = |e: Error| {
        // The worker may be gone or the channel full: the session ends either way (a dropped
        // sender also reads as "session ended").
        let _ = events.try_send(Err(e));
    };
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Publish { topic, payload, telemetry }) => {
                    let pkid = loop {
                        next_pkid = next_pkid.checked_add(1).unwrap_or(1);
                        if !in_flight.contains_key(&next_pkid) {
                            break next_pkid;
                        }
                    };
                    in_flight.insert(pkid, telemetry);
                    let mut publish = Publish::from_bytes(topic, QoS::AtLeastOnce, payload);
                    publish.pkid = pkid;
                    if let Err(e) = framed.send(&Packet::Publish(publish)).await {
                        return fail(e);
                    }
                }
                Some(Command::Disconnect) | None => {
                    let _ = framed.send(&Packet::Disconnect).await;
                    let _ = framed.ws.close(None).await;
                    return;
                }
            },
            packet = framed.next() => match packet {
                Ok(Packet::PubAck(ack)) => match in_flight.remove(&ack.pkid) {
                    Some(Some(seq)) => {
                        if events.send(Ok(TransportEvent::MessageAcknowledged(seq))).await.is_err() {
                            return;
                        }
                    }
                    Some(None) => {}
                    None => warn!(pkid = ack.pkid, "acknowledgement for an unknown packet id ignored"),
                },
                Ok(Packet::SubAck(ack)) => {
                    in_flight.remove(&ack.pkid);
                }
                Ok(Packet::Publish(p)) => {
                    if p.qos == QoS::AtLeastOnce {
                        if let Err(e) = framed.send(&Packet::PubAck(PubAck::new(p.pkid))).await {
                            return fail(e);
                        }
                    }
                    let event = twin.lock().unwrap_or_else(|e| e.into_inner()).translate(&p.topic, &p.payload);
                    if let Some(event) = event {
                        if events.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(Packet::PingResp) => awaiting_pong = false,
                Ok(other) => debug!(?other, "unexpected packet from the server ignored"),
                Err(e) => return fail(e),
            },
            _ = ping.tick() => {
                if awaiting_pong {
                    return fail(Error::transport("no PINGRESP within the keep-alive interval"));
                }
                awaiting_pong = true;
                if let Err(e) = framed.send(&Packet::PingReq).await {
                    return fail(e);
                }
            }
        }
    }
}

struct WsConnection {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<Result<TransportEvent>>,
    twin: Arc<Mutex<TwinRequests>>,
    mapper: TelemetryMapper,
    pump: tokio::task::JoinHandle<()>,
}

impl Drop for WsConnection {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl WsConnection {
    async fn publish(&mut self, topic: String, payload: Bytes, telemetry: Option<u64>) -> Result<()> {
        self.commands
            .send(Command::Publish { topic, payload, telemetry })
            .await
            .map_err(|_| Error::transport("WebSocket session ended"))
    }
}

#[async_trait]
impl Connection for WsConnection {
    async fn publish_message(&mut self, seq: u64, message: &OutgoingMessage) -> Result<()> {
        match self.mapper.submit(seq, message) {
            Some((topic, payload)) => self.publish(topic, payload, Some(seq)).await,
            None => Ok(()),
        }
    }

    async fn request_twin(&mut self, request: RequestId) -> Result<()> {
        let (topic, payload) =
            self.twin.lock().unwrap_or_else(|e| e.into_inner()).start(request, RequestKind::TwinGet, None);
        self.publish(topic, payload, None).await
    }

    async fn patch_reported(&mut self, request: RequestId, patch: &Map<String, Value>) -> Result<()> {
        let (topic, payload) =
            self.twin.lock().unwrap_or_else(|e| e.into_inner()).start(request, RequestKind::ReportedPatch, Some(patch));
        self.publish(topic, payload, None).await
    }

    async fn next_event(&mut self) -> Result<TransportEvent> {
        let commands = &self.commands;
        self.mapper
            .next_event(&mut self.events, "WebSocket session ended", |seq, topic, payload| {
                commands
                    .try_send(Command::Publish { topic, payload, telemetry: Some(seq) })
                    .map_err(|_| Error::transport("WebSocket session ended or congested"))
            })
            .await
    }

    async fn close(&mut self) {
        let _ = self.commands.send(Command::Disconnect).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.pump).await;
    }
}
