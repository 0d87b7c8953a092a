//! One SQLite file for many devices: a gateway's, or a fleet simulation's.

use std::path::Path;

use spotflow_core::{Result, Store};

use crate::{Durability, SqliteDeviceStore, SqliteOptions, SqliteStore};

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
    inner: SqliteStore,
}

impl SharedSqliteStore {
    /// Opens (creating) the shared store at `path` with the given durability and the default
    /// options. Blocks while the store opens (on its own thread); inside an async runtime use
    /// `open_async`.
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<Self> {
        Self::open_with_options(path, SqliteOptions { durability, ..SqliteOptions::default() })
    }

    /// Like `open` with every option.
    pub fn open_with_options(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        Ok(SharedSqliteStore { inner: SqliteStore::open_with_options(path, options.shared())? })
    }

    /// `open` without blocking the async runtime.
    pub async fn open_async(path: impl AsRef<Path>, durability: Durability) -> Result<Self> {
        Self::open_async_with_options(path, SqliteOptions { durability, ..SqliteOptions::default() }).await
    }

    /// `open_with_options` without blocking the async runtime.
    pub async fn open_async_with_options(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        Ok(SharedSqliteStore { inner: SqliteStore::open_async_with_options(path, options.shared()).await? })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.inner.path()
    }

    /// The store of the device `name` (any non-empty name of up to 256 bytes; the device id
    /// the application gives the device is a natural choice), made when it is new. Refused
    /// while another store of the same device from this shared store is in use (until it is
    /// closed or dropped).
    pub async fn device(&self, name: &str) -> Result<SqliteDeviceStore> {
        self.inner.namespace(name).await
    }

    /// Closes the store now: every device's store fails afterwards. Without it, the store closes
    /// when the last handle (this one, its clones and every device's store) is dropped.
    pub async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}
