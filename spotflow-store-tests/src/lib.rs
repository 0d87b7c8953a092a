//! Shared by the crash children and the crash tests: opening a backend by name.

use std::path::Path;
use std::sync::Arc;

use spotflow_core::{Result, Store};
use spotflow_store_sled::{SledOptions, SledStore};
use spotflow_store_sqlite::{Durability, SqliteOptions, SqliteStore};

/// The backends under test.
pub const BACKENDS: [&str; 4] = ["sqlite-power-loss-safe", "sqlite-crash-safe", "sled", "sled-crash-safe"];

/// Opens `backend` at `path` with its default options.
pub async fn open(backend: &str, path: &Path) -> Result<Arc<dyn Store>> {
    open_with_reserve(backend, path, None).await
}

/// Opens `backend` at `path`; `min_free_bytes` replaces the default free-space reserve.
pub async fn open_with_reserve(backend: &str, path: &Path, min_free_bytes: Option<u64>) -> Result<Arc<dyn Store>> {
    let durability = if backend.ends_with("crash-safe") { Durability::CrashSafe } else { Durability::PowerLossSafe };
    let store: Arc<dyn Store> = match backend {
        "sqlite-power-loss-safe" | "sqlite-crash-safe" => {
            let mut options = SqliteOptions::default();
            options.durability = durability;
            options.min_free_bytes = min_free_bytes.unwrap_or(options.min_free_bytes);
            let path = path.to_path_buf();
            let opened = tokio::task::spawn_blocking(move || SqliteStore::open_with_options(path, options)).await;
            Arc::new(opened.map_err(|e| spotflow_core::Error::store("the opening thread failed", e))??)
        }
        "sled" | "sled-crash-safe" => {
            let mut options = SledOptions::default();
            options.durability = durability;
            options.min_free_bytes = min_free_bytes.unwrap_or(options.min_free_bytes);
            Arc::new(SledStore::open_async_with_options(path, options).await?)
        }
        other => return Err(spotflow_core::Error::invalid("backend", other)),
    };
    Ok(store)
}
