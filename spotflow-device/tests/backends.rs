//! The store chosen by Cargo features when none is injected: with both `sqlite` and `sled` on
//! (as `--all-features` builds), SQLite, the default feature's store (see the `backends` module).

use std::sync::Arc;

use spotflow_core::testkit::MemoryPlatform;
use spotflow_device::{Compression, DeviceClient};

#[tokio::test]
async fn with_both_store_features_the_db_is_an_sqlite_file() {
    let platform = MemoryPlatform::new();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("device.db");
    let client = DeviceClient::builder(Some("both-features"), "memory-provisioning-token", &db)
        .platform_api(Arc::new(platform.clone()))
        .transport(Arc::new(platform.clone()))
        .display_provisioning_operation_callback(|_| {})
        .start()
        .await
        .unwrap();
    let sender = client.create_stream_sender(None, None, Compression::Uncompressed).unwrap();
    sender.enqueue_message("kept in SQLite").await.unwrap();
    client.close().await.unwrap();
    assert!(db.is_file(), "sled would have made a directory at {}", db.display());
    let header = std::fs::read(&db).unwrap();
    assert!(header.starts_with(b"SQLite format 3\0"), "not an SQLite file: {:?}", &header[..16.min(header.len())]);
}
