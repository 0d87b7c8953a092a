//! The emulator as the platform of the transport conformance suite (feature `testkit`).

use serde_json::{Map, Value};
use spotflow_core::testkit::ConformancePlatform;
use spotflow_core::{ConnectionCredentials, Secret};

use crate::{Emulator, MessageQuery};

#[async_trait::async_trait]
impl ConformancePlatform for Emulator {
    async fn device(&self) -> ConnectionCredentials {
        let id = format!("conformance-{}", spotflow_core::secure_random::hex(4));
        let device = self.create_device(&id).expect("the emulator registers a device");
        ConnectionCredentials {
            hub_host: self.hub_host().to_owned(),
            hub_device_id: device.hub_device_id,
            sas: Secret::new(device.password),
            expires_at: None,
        }
    }

    async fn delivered(&self, hub_device_id: &str) -> Vec<Vec<u8>> {
        let query =
            MessageQuery { hub_device_id: Some(hub_device_id.to_owned()), limit: Some(100_000), ..Default::default() };
        self.messages(query).await.into_iter().map(|m| m.payload).collect()
    }

    async fn push_desired(&self, hub_device_id: &str, patch: Map<String, Value>) -> u64 {
        self.update_desired(hub_device_id, patch).expect("the device exists")
    }
}
