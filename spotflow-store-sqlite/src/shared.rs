//! One SQLite file for many devices: a gateway's, or a fleet simulation's.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use spotflow_core::{Error, Result, ThreadStore};
use tracing::debug;

use crate::{start_thread, Layout, SqliteOptions};

/// A durable store in one SQLite file shared by any number of devices, each in its own
/// namespace: its queue, identity, desired and reported properties apart from the others'.
///
/// One thread serves every device: appends that arrive together, from any devices, are written
/// in one transaction and made durable by one fsync (group commit across devices), and each
/// device's caller is answered after it. The durability promise is [`SqliteStore`]'s, per
/// device: with [`Durability::PowerLossSafe`](crate::Durability::PowerLossSafe) an append is on
/// the disk when it returns, with [`Durability::CrashSafe`](crate::Durability::CrashSafe) it
/// survives a crash of the process. The file is locked by this process, as a
/// [`SqliteStore`]'s is.
///
/// [`SharedSqliteStore::device`] gives the [`Store`](spotflow_core::Store) of one device, for
/// `DeviceClientBuilder::store`; only one at a time per device (a second one, while the first
/// is in use, is refused, as a second process opening one device's file is).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> spotflow_core::Result<()> {
/// use spotflow_core::Store;
/// use spotflow_store_sqlite::{Durability, SharedSqliteStore};
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("gateway.db");
/// let shared = SharedSqliteStore::open_async(&path, Durability::PowerLossSafe).await?;
/// let pump = shared.device("pump-1").await?;
/// let valve = shared.device("valve-7").await?;
/// pump.append_message(spotflow_core::testkit::sample_message(1)).await?;
/// assert_eq!(pump.queue_stats().await?.count, 1);
/// assert_eq!(valve.queue_stats().await?.count, 0);
/// # Ok(())
/// # }
/// ```
///
/// [`SqliteStore`]: crate::SqliteStore
#[derive(Debug, Clone)]
pub struct SharedSqliteStore {
    inner: ThreadStore,
    path: Arc<PathBuf>,
    /// The devices whose store is in use.
    in_use: Arc<Mutex<HashSet<String>>>,
}

spotflow_core::durable_store_open!(SharedSqliteStore, SqliteOptions);

impl SharedSqliteStore {
    fn start(path: &Path, options: SqliteOptions, ready: impl FnOnce(Result<()>) + Send + 'static) -> Result<Self> {
        let inner = start_thread(path, options, Layout::Shared, ready)?;
        debug!(path = %path.display(), ?options, "opening the shared SQLite store");
        Ok(SharedSqliteStore { inner, path: Arc::new(path.to_path_buf()), in_use: Arc::default() })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The store of the device `name` (any non-empty name of up to 256 bytes; the device id
    /// the application gives the device is a natural choice), made when it is new. Refused
    /// while another store of the same device from this shared store is in use (until it is
    /// closed or dropped).
    pub async fn device(&self, name: &str) -> Result<SqliteDeviceStore> {
        if name.is_empty() || name.len() > 256 {
            return Err(Error::invalid("device name", "must be 1 to 256 bytes long"));
        }
        let lease = Lease::take(&self.in_use, name)?;
        let inner = self.inner.namespace(name).await?;
        Ok(SqliteDeviceStore { inner, lease: Arc::new(lease) })
    }

    /// Closes the store now: every device's store fails afterwards. Without it, the store closes
    /// when the last handle (this one, its clones and every device's store) is dropped.
    pub async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// One device's store in a [`SharedSqliteStore`]. Cheap to clone. Its `close` releases the
/// device (another store of it may then be taken) and closes nothing else.
#[derive(Debug, Clone)]
pub struct SqliteDeviceStore {
    inner: ThreadStore,
    lease: Arc<Lease>,
}

impl SqliteDeviceStore {
    /// The device's name in the shared store.
    pub fn name(&self) -> &str {
        &self.lease.name
    }
}

#[spotflow_core::__async_trait]
impl spotflow_core::Store for SqliteDeviceStore {
    async fn append_messages(&self, messages: Vec<spotflow_core::OutgoingMessage>) -> Result<u64> {
        self.inner.append_messages(messages).await
    }
    async fn read_messages(&self, after: Option<u64>, limit: usize) -> Result<Vec<spotflow_core::QueuedMessage>> {
        self.inner.read_messages(after, limit).await
    }
    async fn remove_messages(&self, seqs: &[u64]) -> Result<()> {
        self.inner.remove_messages(seqs).await
    }
    async fn queue_stats(&self) -> Result<spotflow_core::QueueStats> {
        self.inner.queue_stats().await
    }
    async fn load_identity(&self) -> Result<Option<spotflow_core::DeviceIdentity>> {
        self.inner.load_identity().await
    }
    async fn save_identity(&self, identity: &spotflow_core::DeviceIdentity) -> Result<()> {
        self.inner.save_identity(identity).await
    }
    async fn load_desired(&self) -> Result<Option<spotflow_core::DesiredState>> {
        self.inner.load_desired().await
    }
    async fn save_desired(&self, desired: &spotflow_core::DesiredState) -> Result<()> {
        self.inner.save_desired(desired).await
    }
    async fn load_reported(&self) -> Result<spotflow_core::ReportedState> {
        self.inner.load_reported().await
    }
    async fn save_reported(&self, reported: &spotflow_core::ReportedState) -> Result<()> {
        self.inner.save_reported(reported).await
    }
    async fn clear_device_state(&self) -> Result<()> {
        self.inner.clear_device_state().await
    }
    /// Releases the device: everything it appended is already durable.
    async fn close(&self) -> Result<()> {
        self.lease.release();
        Ok(())
    }
}

/// A device's store in use; released when closed or dropped.
#[derive(Debug)]
struct Lease {
    name: String,
    in_use: Arc<Mutex<HashSet<String>>>,
    released: std::sync::atomic::AtomicBool,
}

impl Lease {
    fn take(in_use: &Arc<Mutex<HashSet<String>>>, name: &str) -> Result<Lease> {
        let mut set = in_use.lock().unwrap_or_else(|p| p.into_inner());
        if !set.insert(name.to_owned()) {
            return Err(Error::invalid(
                "device name",
                format!("the store of {name:?} is already in use (close its client first)"),
            ));
        }
        Ok(Lease { name: name.to_owned(), in_use: in_use.clone(), released: false.into() })
    }

    fn release(&self) {
        if !self.released.swap(true, std::sync::atomic::Ordering::AcqRel) {
            self.in_use.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.name);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release();
    }
}
