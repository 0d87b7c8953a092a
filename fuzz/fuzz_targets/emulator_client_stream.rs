//! What a device sends the emulator's broker: a valid CONNECT of a registered device followed by
//! any bytes (SUBSCRIBE, PUBLISH to telemetry and twin topics, PUBACK, PINGREQ, garbage), served
//! as the broker serves its connections. Nothing may panic or hang; the session ends when the
//! input does.
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
    connect: Vec<u8>,
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
        let mut out = BytesMut::new();
        Packet::Connect(connect).write(&mut out, usize::MAX).unwrap();
        World { rt, emulator, connect: out.to_vec() }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    w.rt.block_on(async {
        let (mut device, broker) = tokio::io::duplex(64 * 1024);
        let serve = w.emulator.serve_mqtt(broker, "fuzz");
        let talk = async {
            let _ = device.write_all(&w.connect).await;
            let _ = device.write_all(data).await;
            let _ = device.shutdown().await;
            let mut sink = [0u8; 4096];
            while matches!(device.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(serve, talk) })
            .await
            .expect("the session ends with its input");
    });
});
