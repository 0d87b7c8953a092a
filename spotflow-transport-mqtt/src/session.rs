//! The one MQTT 3.1.1 session of the SDK, over any byte stream: TCP with TLS (the MQTT
//! transport) or a WebSocket adapted to bytes (the WebSocket transport). CONNECT and SUBSCRIBE,
//! packet ids, many QoS 1 publishes in flight each acknowledged by its own PUBACK, keep-alive
//! pings, incoming publishes acknowledged and translated by the twin correlation, large messages
//! uploaded beside the stream (see [`TelemetryMapper`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode, Packet, PubAck, Publish, Subscribe, SubscribeFilter};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use serde_json::{Map, Value};
use spotflow_core::{
    Connection, ConnectionCredentials, Error, LinkFailure, OutgoingMessage, RequestId, Result, SessionInfo,
    TransportEvent,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, warn, Instrument};

use crate::mapping::{RequestKind, TelemetryMapper, TwinRequests, EVENT_CHANNEL};
use crate::topics;

/// A byte stream a session runs on.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ByteStream for T {}

/// What the network transports share: the TLS they speak, the session's tunables, the bound of
/// the connection setup and where large messages are uploaded.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionOptions {
    /// TLS configuration; `None` is plain TCP / `ws://` (only for local development, asked for
    /// explicitly, and only to a loopback host).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// MQTT keep-alive (a PINGREQ when nothing was sent for this long; the connection is lost
    /// when its PINGRESP does not come within another interval).
    pub keep_alive: Duration,
    /// Largest incoming packet accepted (twin documents can be large).
    pub max_incoming_packet: usize,
    /// Bound of the whole connection setup (proxy, TCP, TLS, WebSocket, MQTT).
    pub connect_timeout: Duration,
    /// How long the server may stay silent while a publish, subscription or ping waits for its
    /// answer before the link counts as stalled (a NAT timeout or a handover that drops packets
    /// without a reset) and the session ends, so that the SDK reconnects and sends again instead
    /// of waiting for the keep-alive. Any packet from the server restarts the clock. Raise it
    /// for links so slow that a window of publishes takes longer than this to leave.
    pub stall_timeout: Duration,
    /// Base URL of the file-upload API for large messages (default `https://{hub host}`).
    pub upload_base_url: Option<String>,
}

impl SessionOptions {
    /// The defaults with `tls` (keep-alive 60 s, 4 MiB packets, 10 s setup, 10 s stall).
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        SessionOptions {
            tls,
            keep_alive: Duration::from_secs(60),
            max_incoming_packet: 4 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(10),
            upload_base_url: None,
        }
    }

    /// `tcp` to `host` with TLS when configured, as is otherwise.
    pub async fn secure(&self, tcp: TcpStream, host: &str) -> Result<Box<dyn ByteStream>> {
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let name =
            rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| Error::invalid("hub host", e))?;
        let tls = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await.map_err(|e| {
            // rustls's own refusals (certificate, name, protocol) are TLS; a connection that
            // ended or broke during the handshake is the network.
            let kind = match e.get_ref() {
                Some(inner) if inner.is::<rustls::Error>() => LinkFailure::Tls,
                _ => LinkFailure::Network,
            };
            Error::link_with(kind, "TLS handshake failed", e)
        })?;
        Ok(Box::new(tls))
    }

    /// Opens a session on the byte stream `stream` yields, all within the setup bound; `what`
    /// names the transport in errors. Plain connections go only to loopback hosts.
    pub async fn connect(
        &self,
        what: &str,
        creds: &ConnectionCredentials,
        session: &SessionInfo,
        stream: impl Future<Output = Result<Box<dyn ByteStream>>>,
    ) -> Result<Box<dyn Connection>> {
        if self.tls.is_none() {
            spotflow_core::require_loopback_for_plain(&creds.hub_host, what)?;
        }
        let setup = async {
            let stream = stream.await?;
            let mapper =
                TelemetryMapper::new(creds.clone(), session.clone(), self.tls.clone(), self.upload_base_url.clone())?;
            open(stream, creds, self, mapper).await
        };
        tokio::time::timeout(self.connect_timeout, setup).await.map_err(|_| {
            Error::Timeout(format!("{what} connection not established within {:?}", self.connect_timeout))
        })?
    }
}

/// Capacity of the channel of publishes to the session task: larger than any window of
/// publishes the SDK keeps, so that a publish never waits for the session (which may be waiting
/// for the SDK to take its events).
const COMMANDS: usize = 4096;

/// The connection's refusal as an error.
pub fn refused(code: ConnectReturnCode) -> Error {
    match code {
        ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
            Error::Unauthorized(format!("connection refused by the broker: {code:?}"))
        }
        // The broker answered: a refusal, backed off as one (not as a link failure).
        other => Error::Platform(format!("connection refused by the broker: {other:?}")),
    }
}

/// MQTT packets on a byte stream; reading is cancel-safe (a partial packet stays buffered).
struct Codec<R> {
    read: R,
    buf: BytesMut,
    max: usize,
}

impl<R: AsyncRead + Unpin> Codec<R> {
    async fn next(&mut self) -> Result<Packet> {
        loop {
            match Packet::read(&mut self.buf, self.max) {
                Ok(p) => return Ok(p),
                Err(CodecError::InsufficientBytes(_)) => {}
                Err(e) => {
                    return Err(Error::link(
                        LinkFailure::Protocol,
                        format!("malformed MQTT packet from the server: {e}"),
                    ))
                }
            }
            self.buf.reserve(16 * 1024);
            match self.read.read_buf(&mut self.buf).await {
                Ok(0) => return Err(Error::transport("the server closed the connection")),
                Ok(_) => {}
                Err(e) => return Err(Error::transport_with("receive failed", e)),
            }
        }
    }
}

fn encode(packet: &Packet, out: &mut BytesMut) -> Result<()> {
    packet.write(out, usize::MAX).map(drop).map_err(|e| Error::transport(format!("cannot encode a packet: {e}")))
}

/// Writes `out` and flushes it (a WebSocket sends a frame only when flushed).
async fn send(write: &mut (impl AsyncWrite + Unpin), out: &[u8]) -> Result<()> {
    write.write_all(out).await.map_err(|e| Error::transport_with("send failed", e))?;
    write.flush().await.map_err(|e| Error::transport_with("send failed", e))
}

/// Runs CONNECT/CONNACK and SUBSCRIBE on `stream` for the device of `creds` and starts the
/// session; the caller bounds it in time ([`SessionOptions::connect`] does both).
pub async fn open(
    stream: Box<dyn ByteStream>,
    creds: &ConnectionCredentials,
    options: &SessionOptions,
    mapper: TelemetryMapper,
) -> Result<Box<dyn Connection>> {
    let (read, mut write) = tokio::io::split(stream);
    let mut codec = Codec { read, buf: BytesMut::with_capacity(64 * 1024), max: options.max_incoming_packet };
    let mut connect = Connect::new(creds.hub_device_id.clone());
    connect.keep_alive = u16::try_from(options.keep_alive.as_secs()).unwrap_or(u16::MAX);
    connect.clean_session = false;
    connect.set_login(topics::username(&creds.hub_host, &creds.hub_device_id), creds.sas.expose());
    let mut out = BytesMut::new();
    encode(&Packet::Connect(connect), &mut out)?;
    send(&mut write, &out).await?;
    match codec.next().await? {
        Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Success => {}
        Packet::ConnAck(ack) => return Err(refused(ack.code)),
        other => return Err(Error::link(LinkFailure::Protocol, format!("expected CONNACK, got {other:?}"))),
    }
    let filters = topics::subscriptions(&creds.hub_device_id, mapper.direct_methods())
        .into_iter()
        .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce));
    out.clear();
    encode(&Packet::Subscribe(Subscribe { pkid: 1, filters: filters.collect() }), &mut out)?;
    send(&mut write, &out).await?;
    let twin = Arc::new(Mutex::new(TwinRequests::default()));
    let (commands, commands_rx) = mpsc::channel(COMMANDS);
    let (events_tx, events) = mpsc::channel(EVENT_CHANNEL);
    let task =
        Session { codec, write, commands: commands_rx, events: events_tx, twin: twin.clone(), out: BytesMut::new() };
    // In the caller's span: the SDK runs each device's connections in a span naming the device.
    let pump = tokio::spawn(task.run(options.keep_alive, options.stall_timeout).in_current_span());
    Ok(Box::new(SessionConnection { commands, events, twin, mapper, pump }))
}

enum Command {
    Publish {
        topic: String,
        payload: Bytes,
        telemetry: Option<u64>,
    },
    /// Acknowledge the cloud-to-device message of this packet id (the SDK stored it).
    Ack(u16),
    Disconnect,
}

/// The session task: owns the stream.
struct Session<R, W> {
    codec: Codec<R>,
    write: W,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Result<TransportEvent>>,
    twin: Arc<Mutex<TwinRequests>>,
    out: BytesMut,
}

/// Most packets gathered into one write.
const WRITE_BATCH: usize = 256;

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Session<R, W> {
    async fn run(mut self, keep_alive: Duration, stall_timeout: Duration) {
        // Packet id 1 is the SUBSCRIBE's until its SUBACK arrives.
        let mut in_flight: HashMap<u16, Option<u64>> = HashMap::from([(1, None)]);
        let mut next_pkid: u16 = 1;
        let keep_alive = keep_alive.max(Duration::from_secs(1));
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive);
        let mut awaiting_pong = false;
        // Since when an answer is awaited with the server silent (the SUBSCRIBE's, at first).
        let mut waiting_since = Some(tokio::time::Instant::now());
        // The stall check: one timer, armed when a wait starts and left as it is while answers
        // come (when it fires it looks at the wait of that moment and re-arms for it). Arming
        // a timer earlier than the runtime's next wakeup wakes the runtime's driver, and a timer
        // made anew for every publish would do so for every message.
        let stall = tokio::time::sleep(stall_timeout);
        tokio::pin!(stall);
        let mut stall_armed = false;
        let failure = loop {
            if let (Some(since), false) = (waiting_since, stall_armed) {
                stall.as_mut().reset(since + stall_timeout);
                stall_armed = true;
            }
            tokio::select! {
                command = self.commands.recv() => {
                    let before = in_flight.len();
                    match self.take_commands(command, &mut in_flight, &mut next_pkid) {
                        Ok(true) => {}
                        Ok(false) => {
                            let _ = encode(&Packet::Disconnect, &mut self.out);
                            let _ = self.flush().await;
                            let _ = self.write.shutdown().await;
                            return;
                        }
                        Err(e) => break e,
                    }
                    if let Err(e) = self.flush().await {
                        break e;
                    }
                    // Only publishes await an answer (an acknowledgement sent does not).
                    if in_flight.len() > before {
                        waiting_since.get_or_insert_with(tokio::time::Instant::now);
                    }
                }
                packet = self.codec.next() => {
                    let packet = match packet {
                        Ok(p) => p,
                        Err(e) => break e,
                    };
                    if let Err(e) = self.handle(packet, &mut in_flight, &mut awaiting_pong).await {
                        break e;
                    }
                    // Everything else already buffered, before writing the acknowledgements.
                    let mut failed = None;
                    while let Ok(p) = Packet::read(&mut self.codec.buf, self.codec.max) {
                        if let Err(e) = self.handle(p, &mut in_flight, &mut awaiting_pong).await {
                            failed = Some(e);
                            break;
                        }
                    }
                    if let Some(e) = failed {
                        break e;
                    }
                    if let Err(e) = self.flush().await {
                        break e;
                    }
                    // The server is alive: the clock restarts for what still waits.
                    let waiting = !in_flight.is_empty() || awaiting_pong;
                    waiting_since = waiting.then(tokio::time::Instant::now);
                }
                _ = ping.tick() => {
                    if awaiting_pong {
                        break Error::link(LinkFailure::Stalled, "no PINGRESP within the keep-alive interval");
                    }
                    awaiting_pong = true;
                    if let Err(e) = encode(&Packet::PingReq, &mut self.out) {
                        break e;
                    }
                    if let Err(e) = self.flush().await {
                        break e;
                    }
                    waiting_since.get_or_insert_with(tokio::time::Instant::now);
                }
                () = &mut stall, if stall_armed => {
                    stall_armed = false;
                    if waiting_since.is_some_and(|since| since.elapsed() >= stall_timeout) {
                        break Error::link(LinkFailure::Stalled, format!(
                            "link stalled: no answer from the server for {stall_timeout:?} ({} packets awaiting one)",
                            in_flight.len() + usize::from(awaiting_pong)
                        ));
                    }
                }
            }
        };
        // The SDK may be gone or its channel full: the session ends either way (a dropped sender
        // also reads as "session ended").
        let _ = self.events.try_send(Err(failure));
    }

    /// Encodes `first` and the publishes already waiting behind it (up to [`WRITE_BATCH`]) into
    /// one write; `Ok(false)` when the SDK asked to disconnect.
    fn take_commands(
        &mut self,
        first: Option<Command>,
        in_flight: &mut HashMap<u16, Option<u64>>,
        next_pkid: &mut u16,
    ) -> Result<bool> {
        let mut next = first;
        for taken in 1..=WRITE_BATCH {
            let (topic, payload, telemetry) = match next {
                Some(Command::Publish { topic, payload, telemetry }) => (topic, payload, telemetry),
                Some(Command::Ack(pkid)) => {
                    encode(&Packet::PubAck(PubAck::new(pkid)), &mut self.out)?;
                    next = match self.commands.try_recv() {
                        Ok(c) => Some(c),
                        Err(_) => return Ok(true),
                    };
                    continue;
                }
                Some(Command::Disconnect) | None => return Ok(false),
            };
            if in_flight.len() >= usize::from(u16::MAX) - 1 {
                return Err(Error::transport("more than 65,534 packets in flight"));
            }
            let pkid = loop {
                *next_pkid = next_pkid.checked_add(1).unwrap_or(1);
                if !in_flight.contains_key(next_pkid) {
                    break *next_pkid;
                }
            };
            let mut publish = Publish::from_bytes(topic, QoS::AtLeastOnce, payload);
            publish.pkid = pkid;
            encode(&Packet::Publish(publish), &mut self.out)?;
            in_flight.insert(pkid, telemetry);
            if taken == WRITE_BATCH {
                break;
            }
            next = match self.commands.try_recv() {
                Ok(c) => Some(c),
                Err(_) => return Ok(true),
            };
        }
        Ok(true)
    }

    async fn flush(&mut self) -> Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let result = send(&mut self.write, &self.out).await;
        self.out.clear();
        result
    }

    async fn handle(
        &mut self,
        packet: Packet,
        in_flight: &mut HashMap<u16, Option<u64>>,
        awaiting_pong: &mut bool,
    ) -> Result<()> {
        match packet {
            Packet::PubAck(ack) => match in_flight.remove(&ack.pkid) {
                Some(Some(seq)) => self.emit(TransportEvent::MessageAcknowledged(seq)).await?,
                Some(None) => {}
                // The server's view of the session is not ours: start a new one.
                None => return Err(Error::transport(format!("PUBACK for packet id {} never sent", ack.pkid))),
            },
            Packet::SubAck(ack) => {
                in_flight.remove(&ack.pkid);
                if ack.return_codes.iter().any(|c| matches!(c, rumqttc::mqttbytes::v4::SubscribeReasonCode::Failure)) {
                    warn!(codes = ?ack.return_codes, "the broker refused a subscription");
                }
            }
            Packet::Publish(p) => {
                let mut event = spotflow_core::lock(&self.twin).translate(&p.topic, &p.payload);
                match &mut event {
                    // Acknowledged once the SDK stored it (`Command::Ack`).
                    Some(TransportEvent::CloudMessage { token, .. }) if p.qos == QoS::AtLeastOnce => {
                        *token = u64::from(p.pkid);
                    }
                    _ if p.qos == QoS::AtLeastOnce => encode(&Packet::PubAck(PubAck::new(p.pkid)), &mut self.out)?,
                    _ => {}
                }
                if let Some(event) = event {
                    self.emit(event).await?;
                }
            }
            Packet::PingResp => *awaiting_pong = false,
            other => debug!(?other, "unexpected packet from the server ignored"),
        }
        Ok(())
    }

    /// Hands an event to the SDK; waits while its channel is full (back-pressure on the server).
    async fn emit(&mut self, event: TransportEvent) -> Result<()> {
        // Acknowledgements gathered so far go out first: the wait may be long.
        if self.events.capacity() == 0 {
            self.flush().await?;
        }
        self.events.send(Ok(event)).await.map_err(|_| Error::transport("the SDK stopped taking events"))
    }
}

/// A live session, as the SDK sees it.
struct SessionConnection {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<Result<TransportEvent>>,
    twin: Arc<Mutex<TwinRequests>>,
    mapper: TelemetryMapper,
    pump: tokio::task::JoinHandle<()>,
}

impl Drop for SessionConnection {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl SessionConnection {
    async fn publish(&mut self, topic: String, payload: Bytes, telemetry: Option<u64>) -> Result<()> {
        self.commands
            .send(Command::Publish { topic, payload, telemetry })
            .await
            .map_err(|_| Error::transport("the MQTT session ended"))
    }
}

#[async_trait]
impl Connection for SessionConnection {
    async fn publish_message(&mut self, seq: u64, message: &OutgoingMessage) -> Result<()> {
        match self.mapper.submit(seq, message) {
            Some((topic, payload)) => self.publish(topic, payload, Some(seq)).await,
            None => Ok(()),
        }
    }

    async fn request_twin(&mut self, request: RequestId) -> Result<()> {
        let (topic, payload) = spotflow_core::lock(&self.twin).start(request, RequestKind::TwinGet, None);
        self.publish(topic, payload, None).await
    }

    async fn patch_reported(&mut self, request: RequestId, patch: &Map<String, Value>) -> Result<()> {
        let (topic, payload) = spotflow_core::lock(&self.twin).start(request, RequestKind::ReportedPatch, Some(patch));
        self.publish(topic, payload, None).await
    }

    async fn next_event(&mut self) -> Result<TransportEvent> {
        let commands = &self.commands;
        self.mapper
            .next_event(&mut self.events, "the MQTT session ended", |seq, topic, payload| {
                commands
                    .try_send(Command::Publish { topic, payload, telemetry: Some(seq) })
                    .map_err(|_| Error::transport("the MQTT session ended or is congested"))
            })
            .await
    }

    async fn answer_method(&mut self, request: &str, status: u16, body: &[u8]) -> Result<()> {
        self.publish(topics::method_response_topic(status, request), Bytes::copy_from_slice(body), None).await
    }

    async fn ack_cloud_message(&mut self, token: u64) -> Result<()> {
        let Ok(pkid) = u16::try_from(token) else { return Ok(()) };
        if pkid == 0 {
            return Ok(());
        }
        self.commands.send(Command::Ack(pkid)).await.map_err(|_| Error::transport("the MQTT session ended"))
    }

    async fn close(&mut self) {
        let _ = self.commands.send(Command::Disconnect).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.pump).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::v4::{ConnAck, SubAck, SubscribeReasonCode};
    use spotflow_core::testkit::{sample_credentials, sample_message};
    use tokio::io::DuplexStream;

    fn creds() -> ConnectionCredentials {
        sample_credentials("127.0.0.1")
    }

    /// The broker side of a duplex stream: CONNACK, SUBACK, then `on_packet` for each packet.
    async fn broker(stream: DuplexStream, mut on_packet: impl FnMut(Packet, &mut BytesMut) -> bool) {
        let (read, mut write) = tokio::io::split(stream);
        let mut codec = Codec { read, buf: BytesMut::new(), max: 1 << 20 };
        let mut out = BytesMut::new();
        while let Ok(packet) = codec.next().await {
            match packet {
                Packet::Connect(c) => {
                    assert!(!c.clean_session);
                    assert_eq!(c.client_id, "ws:dev");
                    encode(&Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)), &mut out).unwrap();
                }
                Packet::Subscribe(s) => {
                    let codes = s.filters.iter().map(|_| SubscribeReasonCode::Success(QoS::AtLeastOnce)).collect();
                    encode(&Packet::SubAck(SubAck::new(s.pkid, codes)), &mut out).unwrap();
                }
                other => {
                    if !on_packet(other, &mut out) {
                        return;
                    }
                }
            }
            if !out.is_empty() {
                write.write_all(&out).await.unwrap();
                out.clear();
            }
        }
    }

    async fn open_session(stream: DuplexStream, keep_alive: Duration) -> Box<dyn Connection> {
        let mut options = SessionOptions::new(None);
        options.keep_alive = keep_alive;
        open_with(stream, options).await
    }

    async fn open_with(stream: DuplexStream, options: SessionOptions) -> Box<dyn Connection> {
        let mapper =
            TelemetryMapper::new(creds(), SessionInfo { queue_id: "q".into(), ..Default::default() }, None, None)
                .unwrap();
        open(Box::new(stream), &creds(), &options, mapper).await.unwrap()
    }

    /// Publishes `count` messages on a session with a 1 s stall timeout to a broker that
    /// acknowledges the first `answered` of them, each `delay` after the previous one, then
    /// stays silent with the connection open. Returns the acknowledgements, the time from the
    /// last of them to the end of the session, and how it ended (`None`: still open 5 s after).
    async fn stall_scenario(count: u64, answered: usize, delay: Duration) -> (Vec<u64>, Duration, Option<Error>) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let broker = tokio::spawn(async move {
            let (read, mut write) = tokio::io::split(server);
            let mut codec = Codec { read, buf: BytesMut::new(), max: 1 << 20 };
            let (mut out, mut acked) = (BytesMut::new(), 0);
            while let Ok(packet) = codec.next().await {
                match packet {
                    Packet::Connect(_) => {
                        encode(&Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)), &mut out).unwrap()
                    }
                    Packet::Subscribe(s) => {
                        let codes = s.filters.iter().map(|_| SubscribeReasonCode::Success(QoS::AtLeastOnce)).collect();
                        encode(&Packet::SubAck(SubAck::new(s.pkid, codes)), &mut out).unwrap();
                    }
                    Packet::Publish(p) if acked < answered => {
                        tokio::time::sleep(delay).await;
                        acked += 1;
                        encode(&Packet::PubAck(PubAck::new(p.pkid)), &mut out).unwrap();
                    }
                    _ => {}
                }
                write.write_all(&out).await.unwrap();
                out.clear();
            }
        });
        let mut options = SessionOptions::new(None);
        options.stall_timeout = Duration::from_secs(1);
        let mut connection = open_with(client, options).await;
        for seq in 1..=count {
            connection.publish_message(seq, &sample_message(seq)).await.unwrap();
        }
        let (mut acks, mut last) = (Vec::new(), tokio::time::Instant::now());
        let ended = loop {
            match tokio::time::timeout_at(last + Duration::from_secs(5), connection.next_event()).await {
                Ok(Ok(TransportEvent::MessageAcknowledged(seq))) => {
                    acks.push(seq);
                    last = tokio::time::Instant::now();
                }
                Ok(Ok(other)) => panic!("unexpected {other:?}"),
                Ok(Err(e)) => break Some(e),
                Err(_) => break None,
            }
        };
        broker.abort();
        (acks, last.elapsed(), ended)
    }

    #[tokio::test]
    async fn a_silent_server_is_a_stalled_link_but_a_slow_one_that_answers_is_not() {
        // 8 answers 400 ms apart: 3.2 s in all, longer than the stall timeout, but the clock
        // restarts with each answer.
        let (acks, _, ended) = stall_scenario(8, 8, Duration::from_millis(400)).await;
        assert_eq!(acks, (1..=8).collect::<Vec<_>>());
        assert!(ended.is_none(), "nothing awaited, the session stays: {ended:?}");
        // 3 answers, then silence with 7 publishes awaiting theirs.
        let (acks, silent_for, ended) = stall_scenario(10, 3, Duration::from_millis(50)).await;
        assert_eq!(acks, vec![1, 2, 3]);
        let ended = ended.expect("the stall ends the session");
        assert!(ended.to_string().contains("stalled"), "{ended}");
        assert!(ended.is_temporary(), "the SDK reconnects: {ended}");
        assert!(silent_for >= Duration::from_millis(900) && silent_for < Duration::from_secs(3), "{silent_for:?}");
    }

    #[tokio::test]
    async fn every_publish_of_a_burst_is_sent_once_and_acknowledged_by_its_own_puback() {
        const N: u64 = 2_000; // several write batches, acknowledged out of order
        let (client, server) = tokio::io::duplex(1 << 16);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        let mut held = Vec::new();
        let broker = tokio::spawn(broker(server, move |packet, out| {
            if let Packet::Publish(p) = packet {
                recorded.lock().unwrap().push(p.payload.clone());
                held.push(p.pkid);
                // Acknowledge in groups of 7, newest first.
                if held.len() == 7 {
                    for pkid in held.drain(..).rev() {
                        encode(&Packet::PubAck(PubAck::new(pkid)), out).unwrap();
                    }
                }
            }
            true
        }));
        let mut connection = open_session(client, Duration::from_secs(60)).await;
        for seq in 1..=N {
            connection.publish_message(seq, &sample_message(seq)).await.unwrap();
        }
        let mut acknowledged = std::collections::BTreeSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        // The last N % 7 publishes are never acknowledged by this broker.
        while acknowledged.len() < (N - N % 7) as usize {
            match tokio::time::timeout_at(deadline, connection.next_event()).await {
                Ok(Ok(TransportEvent::MessageAcknowledged(seq))) => assert!(acknowledged.insert(seq), "{seq} twice"),
                other => panic!("unexpected {other:?} after {} acknowledgements", acknowledged.len()),
            }
        }
        assert!(acknowledged.iter().all(|s| (1..=N).contains(s)));
        let seen = seen.lock().unwrap().clone();
        let expected: Vec<Bytes> = (1..=N).map(|i| sample_message(i).payload).collect();
        assert_eq!(seen, expected, "every publish exactly once, in order");
        connection.close().await;
        broker.abort();
    }

    #[tokio::test]
    async fn a_broker_that_stops_answering_pings_ends_the_session() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let pings = Arc::new(Mutex::new(0));
        let counted = pings.clone();
        let broker = tokio::spawn(broker(server, move |packet, _| {
            if matches!(packet, Packet::PingReq) {
                *counted.lock().unwrap() += 1;
            }
            true
        }));
        let mut connection = open_session(client, Duration::from_secs(1)).await;
        let ended = tokio::time::timeout(Duration::from_secs(10), connection.next_event()).await;
        assert!(matches!(ended, Ok(Err(_))), "{ended:?}");
        assert_eq!(*pings.lock().unwrap(), 1, "one unanswered PINGREQ, then the session ends");
        broker.abort();
    }
}
