//! `SledStore`: the conformance suite, reopen, a locked directory, a file at the path.

use spotflow_core::testkit::{sample_identity, sample_message, store_conformance};
use spotflow_core::Store;
use spotflow_store_sled::{SledStore, DEFAULT_CACHE_BYTES};

#[tokio::test]
async fn passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open_async(dir.path().join("device.db"), DEFAULT_CACHE_BYTES).await.unwrap();
    store_conformance(&store).await;
}

#[tokio::test]
async fn everything_survives_a_reopen_and_sequence_numbers_are_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let store = SledStore::open_async(&path, DEFAULT_CACHE_BYTES).await.unwrap();
    let first = store.append_messages((0..50).map(sample_message).collect()).await.unwrap();
    store.remove_messages(&[first + 49]).await.unwrap();
    store.save_identity(&sample_identity("s")).await.unwrap();
    store.close().await.unwrap();
    let store = SledStore::open_async(&path, DEFAULT_CACHE_BYTES).await.unwrap();
    let stats = store.queue_stats().await.unwrap();
    assert_eq!((stats.count, stats.last_seq), (49, Some(first + 49)));
    assert_eq!(store.read_messages(None, 100).await.unwrap()[3].message, sample_message(3));
    assert_eq!(store.load_identity().await.unwrap(), Some(sample_identity("s")));
    assert_eq!(store.append_message(sample_message(0)).await.unwrap(), first + 50);
}

#[tokio::test]
async fn a_store_held_by_another_user_or_a_file_at_the_path_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let _holder = SledStore::open_async(&path, DEFAULT_CACHE_BYTES).await.unwrap();
    let err = SledStore::open_async(&path, DEFAULT_CACHE_BYTES).await.unwrap_err();
    assert!(err.to_string().contains("device.db"), "{err}");
    let file = dir.path().join("file.db");
    std::fs::write(&file, b"not a directory").unwrap();
    let err = SledStore::open_async(&file, DEFAULT_CACHE_BYTES).await.unwrap_err();
    assert!(err.to_string().contains("is a file"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
}
