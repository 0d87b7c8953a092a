//! The store conformance suite on `MemoryStore`, directly and behind `Arc<dyn Store>`.

use std::sync::Arc;

use spotflow_core::testkit::store_conformance;
use spotflow_core::{MemoryStore, Store};

#[tokio::test]
async fn memory_store_passes_the_conformance_suite() {
    store_conformance(&MemoryStore::new()).await;
}

#[tokio::test]
async fn memory_store_behind_arc_dyn_passes_the_conformance_suite() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    store_conformance(&store).await;
}
