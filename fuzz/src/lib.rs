//! What the emulator-side fuzz targets share: an emulator with one registered device, and a
//! device that writes its opening and the fuzzer's input, then reads until the emulator lets go.

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Connect, Login, Packet};
use spotflow_emulator::Emulator;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// A current-thread runtime and an in-memory emulator with the device `fuzzed` registered.
pub struct EmulatorWorld {
    /// Runs every execution.
    pub rt: tokio::runtime::Runtime,
    /// The emulator under test.
    pub emulator: Emulator,
    /// The registered device's CONNECT packet (persistent session, its SAS as password).
    pub connect: Vec<u8>,
}

impl EmulatorWorld {
    /// Starts the emulator and registers the device.
    pub fn start() -> EmulatorWorld {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let emulator = rt.block_on(Emulator::builder().start()).expect("emulator");
        let creds = emulator.create_device("fuzzed").expect("device");
        let mut connect = Connect::new(creds.hub_device_id.clone());
        connect.clean_session = false;
        connect.login = Some(Login::new(creds.username.clone(), creds.password.clone()));
        let mut out = BytesMut::new();
        Packet::Connect(connect).write(&mut out, usize::MAX).unwrap();
        EmulatorWorld { rt, emulator, connect: out.to_vec() }
    }

    /// Runs one execution: `serve` serves the emulator's end of a pipe while the device writes
    /// `opening` and `data`, ends its side and reads until the emulator drops the connection.
    /// Panics (a finding) if that takes longer than `limit`.
    pub fn run<F: std::future::Future>(
        &self,
        opening: &[u8],
        data: &[u8],
        limit: Duration,
        serve: impl FnOnce(DuplexStream) -> F,
    ) {
        self.rt.block_on(async {
            let (mut device, server) = tokio::io::duplex(64 * 1024);
            let serving = serve(server);
            let talk = async {
                let _ = device.write_all(opening).await;
                let _ = device.write_all(data).await;
                let _ = device.shutdown().await;
                let mut sink = [0u8; 4096];
                while matches!(device.read(&mut sink).await, Ok(n) if n > 0) {}
            };
            tokio::time::timeout(limit, async { tokio::join!(serving, talk) })
                .await
                .expect("the connection ends with its input");
        });
    }
}
