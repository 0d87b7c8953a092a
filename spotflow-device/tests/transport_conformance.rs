//! The transport conformance suite (`testkit::transport_conformance`) on the built-in MQTT and
//! WebSocket transports, against the emulator on loopback. (The in-memory platform runs it in
//! `spotflow-core`, the custom transport of `examples/custom_transport.rs` in that example.)

use std::sync::Arc;

use spotflow_device::extend::mqtt::{MqttTransport, MqttTransportOptions};
use spotflow_device::extend::ws::{ProxyMode, WsTransport, WsTransportOptions};
use spotflow_device::testkit::transport_conformance;
use spotflow_emulator::Emulator;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_transport_passes() {
    let emu = Emulator::builder().start().await.unwrap();
    let mut options = MqttTransportOptions::tls(Arc::new(emu.client_tls_config()));
    options.port = emu.mqtts_addr().unwrap().port();
    options.session.upload_base_url = Some(emu.https_url());
    transport_conformance(&MqttTransport::new(options).unwrap(), &emu).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_transport_passes() {
    let emu = Emulator::builder().start().await.unwrap();
    let mut options = WsTransportOptions::tls(Arc::new(emu.client_tls_config()));
    options.port = emu.https_addr().unwrap().port();
    options.proxy = ProxyMode::Direct;
    options.session.upload_base_url = Some(emu.https_url());
    transport_conformance(&WsTransport::new(options), &emu).await;
}
