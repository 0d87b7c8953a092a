//! The MQTT 3.1.1 broker with the platform's (IoT Hub style) semantics.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Packet, PubAck, Publish, SubAck, Subscribe, SubscribeReasonCode, UnsubAck,
    Unsubscribe,
};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::db::StoredMessage;
use crate::props::{apply_properties, decode_payload, parse_property_bag};
use crate::state::now_ms;
use crate::Inner;

/// What other parts of the emulator send to a live session.
pub(crate) enum Outbound {
    /// A packet to write (twin responses, desired patches).
    Packet(Packet),
    /// The telemetry message with this packet id is stored: acknowledge it.
    Ack(u16),
    /// Close the connection (kicked by a newer connection or by the admin).
    Kick,
    /// Cloud-to-device messages may be sent (queued, or room in the window).
    C2dReady,
}

/// Session numbers: which session a cloud-to-device message in flight belongs to.
static SESSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Sends what the window allows of the device's cloud-to-device queue, once it subscribed.
fn deliver_c2d(inner: &Inner, hub_id: &str, session: u64, out: &mut BytesMut) {
    if !inner.control.is_subscribed(hub_id, &format!("devices/{hub_id}/messages/devicebound/x")) {
        return;
    }
    for (pkid, e) in inner.c2d.next_batch(hub_id, session) {
        let mut p = Publish::new(crate::c2d::topic(hub_id, &e), QoS::AtLeastOnce, e.payload);
        p.pkid = pkid;
        p.dup = e.attempts > 1;
        let packet = Packet::Publish(p);
        record(inner, "out", hub_id, &packet);
        write(out, &packet);
    }
}

/// Topic filters a device may subscribe to (with `{id}` replaced).
const ALLOWED_FILTERS: [&str; 4] = [
    "$iothub/methods/POST/#",
    "$iothub/twin/res/#",
    "$iothub/twin/PATCH/properties/desired/#",
    "devices/{id}/messages/devicebound/#",
];

/// MQTT topic matching with `+` and `#`.
pub(crate) fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Why an MQTT connection ended (logged with its disconnection).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionEnd {
    #[error("malformed packet: {0}")]
    Malformed(rumqttc::mqttbytes::Error),
    #[error("connection closed")]
    Closed,
    #[error("read failed: {0}")]
    Read(#[source] std::io::Error),
    #[error("write failed: {0}")]
    Write(#[source] std::io::Error),
    #[error("packet of {bytes} bytes over the limit of {limit}")]
    TooLarge { bytes: usize, limit: usize },
    #[error("client disconnected")]
    ClientDisconnected,
    #[error("unexpected packet {0}")]
    UnexpectedPacket(String),
    #[error("QoS 2 is not supported")]
    QoS2,
    #[error("publishing to {0:?} is not allowed")]
    TopicNotAllowed(String),
    #[error("invalid property bag: {0}")]
    PropertyBag(#[from] crate::props::PropertyError),
    #[error("closed by the platform")]
    ClosedByPlatform,
    #[error("keep-alive timeout")]
    KeepAlive,
    #[error("the connection's SAS expired")]
    SasExpired,
}

/// Why a packet could not be read.
pub(crate) enum ReadError {
    /// The connection failed or closed, or the packet is malformed.
    Failed(SessionEnd),
    /// The packet is larger than the limit; the topic when it is a PUBLISH whose topic arrived.
    TooLarge { bytes: usize, topic: Option<String> },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Failed(why) => why.fmt(f),
            ReadError::TooLarge { bytes, .. } => write!(f, "packet of {bytes} bytes over the limit"),
        }
    }
}

async fn read_packet<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut, max: usize) -> Result<Packet, ReadError> {
    loop {
        match Packet::read(buf, max) {
            Ok(p) => return Ok(p),
            Err(CodecError::InsufficientBytes(_)) => {}
            Err(CodecError::PayloadSizeLimitExceeded(bytes)) => {
                return Err(ReadError::TooLarge { bytes, topic: oversized_publish_topic(rd, buf).await })
            }
            Err(e) => return Err(ReadError::Failed(SessionEnd::Malformed(e))),
        }
        buf.reserve(4096);
        match rd.read_buf(buf).await {
            Ok(0) => return Err(ReadError::Failed(SessionEnd::Closed)),
            Ok(_) => {}
            Err(e) => return Err(ReadError::Failed(SessionEnd::Read(e))),
        }
    }
}

/// The topic of the PUBLISH packet over the limit at the start of `buf`, reading (at most the
/// longest topic's worth) until it is there; `None` for another packet or a failed read.
async fn oversized_publish_topic<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut) -> Option<String> {
    if buf.first()? >> 4 != 3 {
        return None;
    }
    // The remaining length's bytes (1 to 4), then the topic's length and the topic.
    let length_bytes = buf[1..].iter().take(4).position(|b| b & 0x80 == 0)? + 1;
    let topic_at = 1 + length_bytes + 2;
    loop {
        if buf.len() >= topic_at {
            let topic_len = usize::from(u16::from_be_bytes([buf[topic_at - 2], buf[topic_at - 1]]));
            if buf.len() >= topic_at + topic_len {
                return std::str::from_utf8(&buf[topic_at..topic_at + topic_len]).ok().map(str::to_owned);
            }
        }
        buf.reserve(4096);
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Records an MQTT packet when traffic recording is on (see [`crate::traffic`]); keep-alive
/// pings and acknowledgements of telemetry are left out (their timing is not the protocol).
fn record(inner: &Inner, dir: &str, device: &str, packet: &Packet) {
    if !inner.traffic.enabled() {
        return;
    }
    let qos = |q: QoS| q as u8;
    let (kind, fields) = match packet {
        Packet::Connect(c) => (
            "connect",
            json!({
                "clientId": c.client_id,
                "cleanSession": c.clean_session,
                "keepAlive": c.keep_alive,
                "username": c.login.as_ref().map(|l| l.username.clone()),
                "password": c.login.as_ref().map(|l| crate::traffic::mask_secret(&l.password)),
                "lastWill": c.last_will.as_ref().map(|w| json!({"topic": w.topic, "qos": qos(w.qos), "retain": w.retain})),
            }),
        ),
        Packet::ConnAck(a) => {
            ("connack", json!({"code": format!("{:?}", a.code), "sessionPresent": a.session_present}))
        }
        Packet::Subscribe(s) => (
            "subscribe",
            json!({"filters": s.filters.iter().map(|f| json!({"filter": f.path, "qos": qos(f.qos)})).collect::<Vec<_>>()}),
        ),
        Packet::SubAck(a) => {
            ("suback", json!({"codes": a.return_codes.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>()}))
        }
        Packet::Unsubscribe(u) => ("unsubscribe", json!({"filters": u.topics})),
        Packet::Publish(p) => (
            "publish",
            json!({"topic": p.topic, "qos": qos(p.qos), "retain": p.retain, "payload": crate::traffic::payload(&p.payload)}),
        ),
        Packet::Disconnect => ("disconnect", json!({})),
        _ => return,
    };
    let mut map = match fields {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    map.insert("proto".into(), json!("mqtt"));
    map.insert("dir".into(), json!(dir));
    map.insert("device".into(), json!(device));
    map.insert("packet".into(), json!(kind));
    inner.traffic.record(map);
}

fn write(out: &mut BytesMut, packet: &Packet) {
    if let Err(e) = packet.write(out, usize::MAX) {
        warn!(error = %e, "cannot encode an outgoing packet");
    }
}

/// Checks CONNECT: client id `{ws}:{dev}`, username `{hub}/{ws}:{dev}/…`, password a valid SAS of
/// that device.
fn authenticate(inner: &Inner, connect: &Connect) -> Result<(String, u64), ConnectReturnCode> {
    let client_id = connect.client_id.as_str();
    if client_id.is_empty() || !client_id.contains(':') {
        return Err(ConnectReturnCode::BadClientId);
    }
    let Some(login) = &connect.login else { return Err(ConnectReturnCode::NotAuthorized) };
    let (host, rest) = login.username.split_once('/').unwrap_or(("", ""));
    if !host.eq_ignore_ascii_case(&inner.config.hub_host) || !rest.starts_with(&format!("{client_id}/")) {
        return Err(ConnectReturnCode::BadUserNamePassword);
    }
    let state = inner.control.lock();
    match state.sas_entry(&login.password) {
        Some(s) if s.hub_device_id == client_id => Ok((client_id.to_owned(), s.expires_at)),
        _ => Err(ConnectReturnCode::NotAuthorized),
    }
}

/// Runs one MQTT connection until it ends. Never panics on client input.
/// Writes `out` and flushes it (a WebSocket frame leaves only when flushed).
async fn send(wr: &mut (impl AsyncWrite + Unpin), out: &[u8]) -> std::io::Result<()> {
    wr.write_all(out).await?;
    wr.flush().await
}

pub(crate) async fn run_session<S>(inner: Arc<Inner>, stream: S, peer: String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _open = crate::live::Open::new(&inner.live);
    let (mut rd, mut wr) = tokio::io::split(stream);
    let max = inner.config.max_packet_size;
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let connect = match tokio::time::timeout(Duration::from_secs(10), read_packet(&mut rd, &mut buf, max)).await {
        Ok(Ok(Packet::Connect(c))) => c,
        Ok(Ok(other)) => {
            debug!(%peer, ?other, "first packet is not CONNECT; closing");
            return;
        }
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "no valid CONNECT; closing");
            return;
        }
        Err(_) => {
            debug!(%peer, "no CONNECT within 10 s; closing");
            return;
        }
    };
    let mut out = BytesMut::new();
    if inner.traffic.enabled() {
        record(&inner, "in", &connect.client_id, &Packet::Connect(connect.clone()));
    }
    let (hub_id, sas_expires_at) = match authenticate(&inner, &connect) {
        Ok(found) => found,
        Err(code) => {
            // The client id is the client's own text: logged escaped (`?`), never raw.
            info!(%peer, client_id = ?connect.client_id, ?code, "MQTT connection refused");
            let refusal = Packet::ConnAck(ConnAck::new(code, false));
            record(&inner, "out", &connect.client_id, &refusal);
            write(&mut out, &refusal);
            let _ = send(&mut wr, &out).await;
            let _ = wr.shutdown().await;
            return;
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let session = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let session_present = inner.start_session(&hub_id, tx.clone(), connect.clean_session);
    info!(%peer, device = %hub_id, clean_session = connect.clean_session, "MQTT connected");
    let connack = Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, session_present));
    record(&inner, "out", &hub_id, &connack);
    write(&mut out, &connack);
    if send(&mut wr, &out).await.is_err() {
        inner.end_session(&hub_id, &tx);
        return;
    }
    out.clear();
    // Messages queued while the device was away (once it is subscribed).
    let _ = tx.send(Outbound::C2dReady);
    // Idle limit: 1.5 keep-alive intervals, or the configured idle timeout when the client asked
    // for no keep-alive (0), so that no connection stays open forever without traffic.
    let keep_alive = match connect.keep_alive {
        0 => inner.config.idle_timeout,
        k => Duration::from_millis(u64::from(k) * 1500),
    };
    let mut deadline = Instant::now() + keep_alive;
    let mut tail = None;
    // The connection ends when its SAS expires (the device reconnects with a renewed one).
    let sas_left = Duration::from_millis(sas_expires_at.saturating_sub(now_ms()));
    let sas_expiry = tokio::time::sleep(sas_left);
    tokio::pin!(sas_expiry);
    let reason = loop {
        let sleep = tokio::time::sleep_until(deadline);
        tokio::select! {
            packet = read_packet(&mut rd, &mut buf, max) => match packet {
                Ok(packet) => {
                    deadline = Instant::now() + keep_alive;
                    if let Err(reason) = handle_packet(&inner, (&hub_id, session), &tx, packet, &mut out, &mut tail) {
                        break reason;
                    }
                }
                Err(ReadError::TooLarge { bytes, topic }) => {
                    if let Some(topic) = topic {
                        inner.methods.answer_too_large(&hub_id, &topic, bytes, inner.config.max_packet_size);
                    }
                    break SessionEnd::TooLarge { bytes, limit: max };
                }
                Err(ReadError::Failed(e)) => break e,
            },
            outbound = rx.recv() => match outbound {
                Some(Outbound::Packet(p)) => {
                    record(&inner, "out", &hub_id, &p);
                    write(&mut out, &p);
                }
                Some(Outbound::Ack(pkid)) => write(&mut out, &Packet::PubAck(PubAck::new(pkid))),
                Some(Outbound::C2dReady) => deliver_c2d(&inner, &hub_id, session, &mut out),
                Some(Outbound::Kick) | None => break SessionEnd::ClosedByPlatform,
            },
            () = sleep => break SessionEnd::KeepAlive,
            () = &mut sas_expiry => break SessionEnd::SasExpired,
        }
        // Drain what else is ready before writing, so acknowledgements go out in batches. A kick
        // among them ends the session once what came before it is written (it was lost here
        // when it only ended the draining).
        let mut kicked = false;
        while let Ok(outbound) = rx.try_recv() {
            match outbound {
                Outbound::Packet(p) => {
                    record(&inner, "out", &hub_id, &p);
                    write(&mut out, &p);
                }
                Outbound::Ack(pkid) => write(&mut out, &Packet::PubAck(PubAck::new(pkid))),
                Outbound::C2dReady => deliver_c2d(&inner, &hub_id, session, &mut out),
                Outbound::Kick => {
                    kicked = true;
                    break;
                }
            }
        }
        if kicked {
            break SessionEnd::ClosedByPlatform;
        }
        if !out.is_empty() {
            if let Err(e) = send(&mut wr, &out).await {
                break SessionEnd::Write(e);
            }
            out.clear();
        }
    };
    if !out.is_empty() {
        let _ = send(&mut wr, &out).await;
    }
    let _ = wr.shutdown().await;
    inner.end_session(&hub_id, &tx);
    inner.c2d.session_ended(&hub_id, session);
    info!(%peer, device = %hub_id, %reason, "MQTT disconnected");
}

pub(crate) fn query_param<'a>(topic: &'a str, key: &str) -> Option<&'a str> {
    let query = topic.split_once('?')?.1;
    query.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Handles one packet from the device; `Err` closes the connection with that reason.
fn handle_packet(
    inner: &Arc<Inner>,
    (hub_id, session): (&str, u64),
    tx: &mpsc::UnboundedSender<Outbound>,
    packet: Packet,
    out: &mut BytesMut,
    tail: &mut Tail,
) -> Result<(), SessionEnd> {
    record(inner, "in", hub_id, &packet);
    match packet {
        Packet::Publish(p) => handle_publish(inner, hub_id, tx, p, out, tail),
        Packet::Subscribe(s) => {
            let suback = Packet::SubAck(subscribe(inner, hub_id, &s));
            record(inner, "out", hub_id, &suback);
            write(out, &suback);
            let _ = tx.send(Outbound::C2dReady);
            Ok(())
        }
        Packet::Unsubscribe(Unsubscribe { pkid, topics }) => {
            inner.control.unsubscribe(hub_id, &topics);
            write(out, &Packet::UnsubAck(UnsubAck::new(pkid)));
            Ok(())
        }
        Packet::PingReq => {
            write(out, &Packet::PingResp);
            Ok(())
        }
        Packet::PubAck(a) => {
            if inner.c2d.acked(hub_id, session, a.pkid) {
                let _ = tx.send(Outbound::C2dReady);
            }
            Ok(())
        }
        Packet::Disconnect => Err(SessionEnd::ClientDisconnected),
        other => Err(SessionEnd::UnexpectedPacket(format!("{other:?}"))),
    }
}

fn subscribe(inner: &Inner, hub_id: &str, s: &Subscribe) -> SubAck {
    let mut granted = Vec::new();
    let mut codes = Vec::new();
    for f in &s.filters {
        let allowed = ALLOWED_FILTERS.iter().any(|a| a.replace("{id}", hub_id) == f.path);
        if allowed {
            granted.push(f.path.clone());
            codes.push(SubscribeReasonCode::Success(if f.qos == QoS::AtMostOnce {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            }));
        } else {
            warn!(device = %hub_id, filter = ?f.path, "subscription refused");
            codes.push(SubscribeReasonCode::Failure);
        }
    }
    inner.control.subscribe(hub_id, granted);
    SubAck::new(s.pkid, codes)
}

fn handle_publish(
    inner: &Arc<Inner>,
    hub_id: &str,
    tx: &mpsc::UnboundedSender<Outbound>,
    p: Publish,
    out: &mut BytesMut,
    tail: &mut Tail,
) -> Result<(), SessionEnd> {
    if p.qos == QoS::ExactlyOnce {
        return Err(SessionEnd::QoS2);
    }
    let ack = |out: &mut BytesMut| {
        if p.qos == QoS::AtLeastOnce {
            write(out, &Packet::PubAck(PubAck::new(p.pkid)));
        }
    };
    let events_prefix = format!("devices/{hub_id}/messages/events/");
    if let Some(bag) = p.topic.strip_prefix(&events_prefix) {
        return telemetry(inner, hub_id, tx, bag, &p, tail);
    }
    if p.topic.starts_with("$iothub/twin/GET/") {
        ack(out);
        let Some(rid) = query_param(&p.topic, "$rid") else { return Ok(()) };
        let doc = inner.control.twin(hub_id).map(|t| t.document()).unwrap_or(Value::Null);
        twin_response(inner, hub_id, out, 200, rid, None, doc.to_string().into_bytes());
        return Ok(());
    }
    if p.topic.starts_with("$iothub/twin/PATCH/properties/reported/") {
        ack(out);
        let Some(rid) = query_param(&p.topic, "$rid") else { return Ok(()) };
        match serde_json::from_slice::<Value>(&p.payload) {
            Ok(Value::Object(patch)) => match inner.control.patch_reported(hub_id, &patch) {
                Ok(version) => twin_response(inner, hub_id, out, 204, rid, Some(version), Vec::new()),
                Err(crate::state::TwinRefusal::NoDevice) => {
                    twin_response(inner, hub_id, out, 404, rid, None, b"{\"message\":\"no such device\"}".to_vec())
                }
                Err(crate::state::TwinRefusal::TooLarge) => {
                    warn!(device = %hub_id, "reported properties patch refused: the document would exceed 256 KiB");
                    let body = format!(
                        "{{\"message\":\"reported properties would exceed {} bytes\"}}",
                        crate::state::MAX_TWIN_SECTION_BYTES
                    );
                    twin_response(inner, hub_id, out, 413, rid, None, body.into_bytes())
                }
            },
            _ => {
                let body = b"{\"message\":\"reported properties must be a JSON object\"}".to_vec();
                twin_response(inner, hub_id, out, 400, rid, None, body);
            }
        }
        return Ok(());
    }
    if p.topic.starts_with("$iothub/methods/res/") {
        ack(out);
        inner.methods.answered(hub_id, &p.topic, &p.payload);
        return Ok(());
    }
    Err(SessionEnd::TopicNotAllowed(p.topic))
}

#[allow(clippy::too_many_arguments)]
fn twin_response(
    inner: &Inner,
    hub_id: &str,
    out: &mut BytesMut,
    status: u16,
    rid: &str,
    version: Option<u64>,
    body: Vec<u8>,
) {
    let topic = match version {
        Some(v) => format!("$iothub/twin/res/{status}/?$rid={rid}&$version={v}"),
        None => format!("$iothub/twin/res/{status}/?$rid={rid}"),
    };
    if inner.control.is_subscribed(hub_id, &topic) {
        let response = Packet::Publish(Publish::new(topic, QoS::AtMostOnce, body));
        record(inner, "out", hub_id, &response);
        write(out, &response);
    } else {
        debug!(device = %hub_id, "twin response dropped: not subscribed to $iothub/twin/res/#");
    }
}

/// The task storing the connection's last message whose storing had to wait (a linked blob being
/// read, or a message behind one): the next message is stored after it, so that messages are
/// stored in the order the device sent them.
type Tail = Option<tokio::task::JoinHandle<()>>;

fn telemetry(
    inner: &Arc<Inner>,
    hub_id: &str,
    tx: &mpsc::UnboundedSender<Outbound>,
    bag: &str,
    p: &Publish,
    tail: &mut Tail,
) -> Result<(), SessionEnd> {
    let mut message = StoredMessage {
        hub_device_id: hub_id.to_owned(),
        received_at: now_ms(),
        wire_size: p.payload.len(),
        ..StoredMessage::default()
    };
    let properties = parse_property_bag(bag)?;
    apply_properties(&mut message, properties);
    let (qos, pkid) = (p.qos, p.pkid);
    let ack: Option<crate::db::AckFn> = (qos == QoS::AtLeastOnce).then(|| {
        let tx = tx.clone();
        Box::new(move |outcome: crate::db::Stored| {
            if outcome != crate::db::Stored::Failed {
                let _ = tx.send(Outbound::Ack(pkid));
            } else {
                let _ = tx.send(Outbound::Kick);
            }
        }) as crate::db::AckFn
    });
    let before = tail.take().filter(|t| !t.is_finished());
    if !message.externalized && before.is_none() {
        finish_payload(&mut message, &p.payload);
        inner.ingest.store(message, ack);
        return Ok(());
    }
    // A link to an uploaded blob is resolved off the session's task, and the messages behind it
    // wait for it.
    let inner = inner.clone();
    let payload = p.payload.clone();
    *tail = Some(tokio::spawn(async move {
        if let Some(before) = before {
            let _ = before.await;
        }
        if message.externalized {
            resolve_link(&inner, &mut message, &payload).await;
        } else {
            finish_payload(&mut message, &payload);
        }
        inner.ingest.store(message, ack);
    }));
    Ok(())
}

async fn resolve_link(inner: &Inner, message: &mut StoredMessage, payload: &[u8]) {
    let link = serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| v.get("link").and_then(Value::as_str).map(str::to_owned));
    match link {
        Some(name) => match inner.db.get_blob(name.clone(), message.hub_device_id.clone()).await {
            Some(blob) => finish_payload(message, &blob),
            None => {
                warn!(blob = ?name, "linked blob not found; storing the link");
                message.other_properties.push(("error".into(), format!("blob {name} not found")));
                message.payload = payload.to_vec();
            }
        },
        None => {
            message.other_properties.push(("error".into(), "externalized payload without a link".into()));
            message.payload = payload.to_vec();
        }
    }
}

fn finish_payload(message: &mut StoredMessage, payload: &[u8]) {
    match decode_payload(message.content_encoding.as_deref(), payload) {
        Ok(decoded) => message.payload = decoded,
        Err(e) => {
            warn!(device = %message.hub_device_id, error = %e, "cannot decode the payload; stored as received");
            message.decode_error = Some(e.to_string());
            message.payload = payload.to_vec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters() {
        assert!(topic_matches("$iothub/twin/res/#", "$iothub/twin/res/200/?$rid=1"));
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(!topic_matches("a/+/c", "a/b/d"));
        assert!(!topic_matches("$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/?$version=2"));
        assert_eq!(query_param("$iothub/twin/GET/?$rid=abc", "$rid"), Some("abc"));
        assert_eq!(query_param("$iothub/twin/GET/?x=1&$rid=abc", "$rid"), Some("abc"));
        assert_eq!(query_param("$iothub/twin/GET/", "$rid"), None);
    }
}
