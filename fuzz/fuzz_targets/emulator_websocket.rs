//! What a device sends the emulator over MQTT on WebSocket: a valid upgrade request to
//! `/$iothub/websocket` (subprotocol `mqtt`) and a registered device's CONNECT in a binary frame,
//! then any bytes as client frames (masked or not, binary, text, ping, close, fragments, bad
//! lengths) carrying any MQTT, served as the HTTP listeners serve a connection
//! (`Emulator::serve_http`). Nothing may panic or hang; the connection ends with its input.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use spotflow_fuzz::EmulatorWorld;

struct World {
    base: EmulatorWorld,
    /// The upgrade request and the CONNECT in a frame.
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
        let base = EmulatorWorld::start();
        let mut opening = b"GET /$iothub/websocket HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
            Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Sec-WebSocket-Protocol: mqtt\r\n\r\n"
            .to_vec();
        opening.extend(frame(&base.connect));
        World { base, opening }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    // The WebSocket session runs in a task of its own after the upgrade: the device's read ends
    // when that session drops the connection.
    w.base.run(&w.opening, data, Duration::from_secs(8), |server| w.base.emulator.serve_http(server));
});
