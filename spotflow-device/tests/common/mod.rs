//! Helpers shared by the facade tests: a client over the in-memory platform with fast timings.
#![allow(dead_code)]

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
        .with_options(|o| {
            o.provisioning_poll_interval = Duration::from_millis(10);
            o.retry_initial = Duration::from_millis(10);
            o.retry_max = Duration::from_millis(200);
            o.start_timeout = Duration::from_secs(20);
        })
}

pub fn new_store() -> Arc<dyn Store> {
    Arc::new(MemoryStore::new())
}

pub async fn start(platform: &MemoryPlatform, store: &Arc<dyn Store>) -> DeviceClient {
    builder(platform, store, Some("dev-1")).start().await.expect("start")
}

/// Waits (bounded) until the platform has `n` live connections.
pub async fn wait_connections(platform: &MemoryPlatform, n: usize) {
    assert!(platform.wait_until(WAIT, |p| p.live_connections() == n).await, "expected {n} live connections");
}
