//! What a device sends the emulator over MQTT on WebSocket: a valid upgrade request to
//! `/$iothub/websocket` (subprotocol `mqtt`) and a registered device's CONNECT in a binary frame,
//! then any bytes as client frames (masked or not, binary, text, ping, close, fragments, bad
//! lengths) carrying any MQTT, served as the HTTP listeners serve a connection
//! (`Emulator::serve_http`). Nothing may panic or hang; the connection ends with its input.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rumqttc::mqttbytes::v4::{Connect, Login, Packet};
use spotflow_emulator::Emulator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct World {
    rt: tokio::runtime::Runtime,
    emulator: Emulator,
    opening: Vec<u8>,
}

/// A masked binary frame (mask key zero, so the payload reads as it is), FIN set.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x82];
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            f.push(0x80 | 126);
            f.extend((n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend((n as u64).to_be_bytes());
        }
    }
    f.extend([0, 0, 0, 0]);
    f.extend(payload);
    f
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let emulator = rt.block_on(Emulator::builder().start()).expect("emulator");
        let creds = emulator.create_device("fuzzed").expect("device");
        let mut connect = Connect::new(creds.hub_device_id.clone());
        connect.clean_session = false;
        connect.login = Some(Login::new(creds.username.clone(), creds.password.clone()));
        let mut packet = BytesMut::new();
        Packet::Connect(connect).write(&mut packet, usize::MAX).unwrap();
        let mut opening = b"GET /$iothub/websocket HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
            Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Sec-WebSocket-Protocol: mqtt\r\n\r\n"
            .to_vec();
        opening.extend(frame(&packet));
        World { rt, emulator, opening }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    w.rt.block_on(async {
        let (mut device, server) = tokio::io::duplex(64 * 1024);
        let serve = w.emulator.serve_http(server);
        let talk = async {
            let _ = device.write_all(&w.opening).await;
            let _ = device.write_all(data).await;
            let _ = device.shutdown().await;
            // Until the emulator drops the connection: the WebSocket session (a task of its own
            // after the upgrade) ends with the input.
            let mut sink = [0u8; 4096];
            while matches!(device.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        tokio::time::timeout(Duration::from_secs(8), async { tokio::join!(serve, talk) })
            .await
            .expect("the connection ends with its input");
    });
});
