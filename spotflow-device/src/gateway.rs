//! Many devices in one process: a gateway in front of a line of machines, or a fleet
//! simulation. Every client of a [`Gateway`] keeps its own identity, queue and properties, and
//! they share what would otherwise cost a thread or a file per device.

use std::path::Path;
use std::sync::Arc;

use spotflow_core::Result;
use spotflow_store_sqlite::SharedSqliteStore;

use crate::builder::validate_db_path;
use crate::callbacks::CallbackThread;
use crate::{DeviceClient, DeviceClientBuilder, Durability};

/// The devices of one process over one durable store: a [`SharedSqliteStore`] file in which
/// each device has its own namespace (queue, identity, desired and reported properties), served
/// by one thread that writes the appends of all devices that arrive together in one transaction
/// (group commit across devices). The durability promise is unchanged, per device: once
/// `enqueue_message` returns, the message survives a crash (and, power-loss safe, a power cut).
///
/// The clients are ordinary [`DeviceClient`]s, with the same API, started on the application's
/// Tokio runtime (the [`crate::blocking::Gateway`] owns one runtime for all its clients). No
/// thread per device: the store has one, and the desired-properties callbacks of all the
/// gateway's clients run, in order, on one thread of the gateway.
///
/// ```no_run
/// # async fn run() -> spotflow_device::Result<()> {
/// use spotflow_device::{Compression, Gateway};
///
/// let gateway = Gateway::open("gateway.db").await?;
/// let mut clients = Vec::new();
/// for machine in ["press-1", "press-2", "oven-1"] {
///     let builder = gateway.device(machine, "<Your Provisioning Token>").await?;
///     clients.push(builder.start().await?);
/// }
/// for client in &clients {
///     let sender = client.create_stream_sender(Some("machines"), Some("telemetry"), Compression::Uncompressed)?;
///     sender.enqueue_message(r#"{"temperatureCelsius": 21.5}"#).await?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Gateway {
    store: SharedSqliteStore,
    callbacks: CallbackThread,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("db", &self.store.path()).finish_non_exhaustive()
    }
}

impl Gateway {
    /// Opens (creating) the gateway's store at `db` (a file ending with `.db`), power-loss safe.
    pub async fn open(db: impl AsRef<Path>) -> Result<Gateway> {
        Self::open_with_durability(db, Durability::PowerLossSafe).await
    }

    /// Opens (creating) the gateway's store at `db` with the given durability for every device.
    pub async fn open_with_durability(db: impl AsRef<Path>, durability: Durability) -> Result<Gateway> {
        let db = db.as_ref();
        validate_db_path(db)?;
        let store = SharedSqliteStore::open_async(db, durability).await?;
        Ok(Gateway { store, callbacks: CallbackThread::spawn()? })
    }

    /// A builder for the client of the device `device_id`, configured as
    /// [`DeviceClient::builder`] configures one, over this gateway's store: the device's
    /// namespace, keyed by `device_id` (made when it is new; a restart finds the device's
    /// identity, queue and properties there). Its desired-properties callback, if any, runs on
    /// the gateway's callback thread. [`crate::ClientOptions::durability`] is the gateway's.
    ///
    /// Refused while another client of the same device from this gateway is running (until it is
    /// closed or dropped).
    pub async fn device(
        &self,
        device_id: impl Into<String>,
        provisioning_token: impl Into<String>,
    ) -> Result<DeviceClientBuilder> {
        let device_id = device_id.into();
        spotflow_core::validate_name("device id", &device_id)?;
        let store = self.store.device(&device_id).await?;
        Ok(DeviceClient::builder(Some(device_id), provisioning_token, self.store.path())
            .store(Arc::new(store))
            .callback_thread(self.callbacks.clone()))
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        self.store.path()
    }

    /// Closes the store now; close the clients first (their later calls fail). Without it, the
    /// store closes when the gateway and its last client are dropped.
    pub async fn close(&self) -> Result<()> {
        self.store.close().await
    }
}
