//! Helpers shared by the facade tests: a client over the in-memory platform with fast timings.
#![allow(dead_code)]

pub mod log;

use std::sync::Arc;
use std::time::Duration;

use spotflow_core::testkit::MemoryPlatform;
use spotflow_core::{MemoryStore, Store};
use spotflow_device::{DeviceClient, DeviceClientBuilder};

pub const TOKEN: &str = "memory-provisioning-token";
pub const WAIT: Duration = Duration::from_secs(20);

pub fn builder(platform: &MemoryPlatform, store: &Arc<dyn Store>, device: Option<&str>) -> DeviceClientBuilder {
    DeviceClient::builder(device, TOKEN, "device.db")
        .platform_api(Arc::new(platform.clone()))
        .transport(Arc::new(platform.clone()))
        .store(store.clone())
        .display_provisioning_operation_callback(|_| {})
        .with_options(quick)
}

/// The network options of a device of the in-process emulator (trusting only its CA) whose MQTT
/// over TLS goes to `mqtt_port` (the emulator's, or a proxy's in front of it).
pub fn emulator_network(mqtt_port: u16) -> impl FnOnce(&mut spotflow_device::NetworkOptions) {
    move |n| {
        n.platform_roots = false;
        n.mqtt_port = mqtt_port;
    }
}

/// Timings for a device behind a faulty link: a stall is seen in 2 s, a request gives up in 3 s,
/// reconnections come quickly.
pub fn faulty_link(o: &mut spotflow_device::ClientOptions) {
    o.stall_timeout = Duration::from_secs(2);
    o.request_timeout = Duration::from_secs(3);
    o.retry_initial = Duration::from_millis(50);
    o.retry_max = Duration::from_millis(500);
}

/// Quick polls and retries for tests; a start gives up after [`WAIT`].
pub fn quick(o: &mut spotflow_device::ClientOptions) {
    o.provisioning_poll_interval = Duration::from_millis(10);
    o.retry_initial = Duration::from_millis(10);
    o.retry_max = Duration::from_millis(200);
    o.start_timeout = WAIT;
}

/// `builder` made a device of the in-process emulator `emu` over `proto`: its instance, its CA
/// alone trusted, its ports (uploads too), quick polls and retries.
pub fn on_emulator(
    builder: DeviceClientBuilder,
    emu: &spotflow_emulator::Emulator,
    proto: Proto,
) -> DeviceClientBuilder {
    let mqtt_port = emu.mqtts_addr().expect("mqtts").port();
    let https_port = emu.https_addr().expect("https").port();
    let upload = emu.https_url();
    builder
        .instance(emu.https_url())
        .trust_ca_pem(emu.ca_pem())
        .with_network(network(proto, https_port, mqtt_port))
        .with_network(move |n| n.upload_base_url = Some(upload))
        .display_provisioning_operation_callback(|_| {})
        .with_options(quick)
}

pub fn new_store() -> Arc<dyn Store> {
    Arc::new(MemoryStore::new())
}

pub async fn start(platform: &MemoryPlatform, store: &Arc<dyn Store>) -> DeviceClient {
    builder(platform, store, Some("dev-1")).start().await.expect("start")
}

/// A device provisioned and registered by a first start (its identity in the store), then the
/// platform taken offline.
pub async fn provisioned_then_offline() -> (MemoryPlatform, Arc<dyn Store>) {
    let platform = MemoryPlatform::new();
    let store = new_store();
    start(&platform, &store).await.close().await.unwrap();
    platform.set_offline(true);
    (platform, store)
}

/// Waits (bounded) until the platform has `n` live connections.
pub async fn wait_connections(platform: &MemoryPlatform, n: usize) {
    assert!(platform.wait_until(WAIT, |p| p.live_connections() == n).await, "expected {n} live connections");
}

/// Which transport a test against the emulator runs over.
#[derive(Debug, Clone, Copy)]
pub enum Proto {
    Mqtt,
    WebSocket,
}

/// The network options of a device of the in-process emulator (its MQTT/TLS and HTTPS ports,
/// trusting only its CA) over `proto`.
pub fn network(proto: Proto, emu_https: u16, mqtts: u16) -> impl FnOnce(&mut spotflow_device::NetworkOptions) {
    move |n| {
        n.platform_roots = false;
        n.mqtt_port = mqtts;
        n.websocket_port = emu_https;
        n.proxy = None;
        n.protocol = match proto {
            Proto::Mqtt => spotflow_device::Protocol::Mqtt,
            Proto::WebSocket => spotflow_device::Protocol::MqttOverWebSocket,
        };
    }
}

/// `both!(scenario)`: the async fn `scenario(proto: Proto)` as two tests, over MQTT and (with the
/// `ws` feature) over MQTT over WebSocket. The test file imports `Proto`.
#[allow(unused_macros)]
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn over_mqtt() {
                super::$name(super::Proto::Mqtt).await
            }
            #[cfg(feature = "ws")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn over_websocket() {
                super::$name(super::Proto::WebSocket).await
            }
        }
    };
}
