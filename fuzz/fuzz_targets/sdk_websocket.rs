//! What a server sends the SDK on an MQTT-over-WebSocket connection: after a valid handshake
//! answer (`101`, subprotocol `mqtt`), any bytes as WebSocket frames (binary, text, ping, close,
//! fragments, bad lengths, masked frames) carrying any MQTT (CONNACK first for the session to
//! open). The session runs as `WsTransport` runs it, with a twin request, a reported patch and a
//! message outstanding. Nothing may panic or hang; the connection ends with its input.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use spotflow_core::{ConnectionCredentials, SessionInfo};
use spotflow_transport_ws::{ProxyMode, WsTransport, WsTransportOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

struct World {
    rt: tokio::runtime::Runtime,
    transport: WsTransport,
    creds: ConnectionCredentials,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let mut o = WsTransportOptions::plain(80);
        o.proxy = ProxyMode::Direct;
        o.session.max_incoming_packet = 64 * 1024;
        o.session.connect_timeout = Duration::from_secs(2);
        o.session.stall_timeout = Duration::from_secs(2);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        World { rt, transport: WsTransport::new(o), creds: spotflow_core::testkit::sample_credentials("localhost") }
    })
}

/// The server: reads the upgrade request, answers it, sends `data`, ends its side, then reads
/// what the client sends until it goes.
async fn server(mut io: DuplexStream, data: &[u8]) {
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") && request.len() < 16 * 1024 {
        match io.read(&mut byte).await {
            Ok(1) => request.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&request);
    let key = text
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key")))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    let _ = io.write_all(answer.as_bytes()).await;
    let _ = io.write_all(data).await;
    let _ = io.shutdown().await;
    let mut sink = [0u8; 4096];
    while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
}

async fn client(io: DuplexStream, w: &World) {
    let Ok(mut conn) = w.transport.connect_over(io, &w.creds, &SessionInfo::default()).await else {
        return;
    };
    let message = spotflow_core::testkit::sample_message(7);
    let patch = serde_json::json!({ "a": 1 }).as_object().cloned().unwrap();
    if conn.request_twin(1).await.is_err()
        || conn.patch_reported(2, &patch).await.is_err()
        || conn.publish_message(7, &message).await.is_err()
    {
        return;
    }
    // Each event is a packet of the input at least, so this ends; the bound is a guard.
    for _ in 0..100_000 {
        if conn.next_event().await.is_err() {
            return;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    w.rt.block_on(async {
        let (device, broker) = tokio::io::duplex(64 * 1024);
        let both = async { tokio::join!(server(broker, data), client(device, w)) };
        tokio::time::timeout(Duration::from_secs(8), both).await.expect("the connection ends with its input");
    });
});
