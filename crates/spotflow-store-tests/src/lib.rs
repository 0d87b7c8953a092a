//! Shared by the crash child and the crash tests: opening a backend by name.

use std::path::Path;
use std::sync::Arc;

use spotflow_core::{Result, Store};
use spotflow_store_sled::{SledOptions, SledStore};
use spotflow_store_sqlite::{Durability, SqliteStore};

/// The backends under test.
pub const BACKENDS: [&str; 4] = ["sqlite-power-loss-safe", "sqlite-crash-safe", "sled", "sled-crash-safe"];

/// Opens `backend` at `path`.
pub async fn open(backend: &str, path: &Path) -> Result<Arc<dyn Store>> {
    let store: Arc<dyn Store> = match backend {
        "sqlite-power-loss-safe" => Arc::new(SqliteStore::open_async(path, Durability::PowerLossSafe).await?),
        "sqlite-crash-safe" => Arc::new(SqliteStore::open_async(path, Durability::CrashSafe).await?),
        "sled" => Arc::new(SledStore::open_async(path, SledOptions::default()).await?),
        "sled-crash-safe" => {
            let mut options = SledOptions::default();
            options.durability = Durability::CrashSafe;
            Arc::new(SledStore::open_async(path, options).await?)
        }
        other => return Err(spotflow_core::Error::invalid("backend", other)),
    };
    Ok(store)
}
