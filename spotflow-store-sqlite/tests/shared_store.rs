//! `SharedSqliteStore`: each device's store passes the conformance suite; devices keep their
//! queues, identities and properties apart, also across a reopen; a device's store is used by
//! one client at a time; one device's file and a shared file are not mistaken for each other;
//! concurrent appends of many devices are merged.

use std::sync::Arc;

use serde_json::json;
use spotflow_core::testkit::{sample_identity, sample_message, store_conformance};
use spotflow_core::{DesiredState, ReportedState, Store};
use spotflow_store_sqlite::{Durability, SharedSqliteStore, SqliteStore};

fn values(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().unwrap().clone()
}

#[tokio::test]
async fn each_devices_store_passes_the_conformance_suite_beside_others() {
    for durability in [Durability::PowerLossSafe, Durability::CrashSafe] {
        let dir = tempfile::tempdir().unwrap();
        let shared = SharedSqliteStore::open_async(dir.path().join("gateway.db"), durability).await.unwrap();
        // A neighbour with messages and state the suite must never see.
        let neighbour = shared.device("neighbour").await.unwrap();
        neighbour.append_messages((0..5).map(sample_message).collect()).await.unwrap();
        neighbour.save_identity(&sample_identity("neighbour")).await.unwrap();
        for name in ["a", "b"] {
            let store = shared.device(name).await.unwrap();
            store_conformance(&store).await;
        }
        assert_eq!(neighbour.queue_stats().await.unwrap().count, 5, "untouched by the suite's clears");
        assert_eq!(neighbour.load_identity().await.unwrap(), Some(sample_identity("neighbour")));
    }
}

#[tokio::test]
async fn devices_keep_their_queues_identities_and_properties_apart_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.db");
    let shared = SharedSqliteStore::open_async(&path, Durability::PowerLossSafe).await.unwrap();
    let (a, b) = (shared.device("a").await.unwrap(), shared.device("b").await.unwrap());
    // Each device numbers its own messages from 1, as a store of one device does.
    let a_first = a.append_messages((0..10).map(sample_message).collect()).await.unwrap();
    let b_first = b.append_messages((100..103).map(sample_message).collect()).await.unwrap();
    assert_eq!((a_first, b_first), (1, 1));
    // A removal names a device's own messages: through b's store, a's are untouched.
    b.remove_messages(&[a_first + 1, a_first + 2]).await.unwrap();
    assert_eq!(a.queue_stats().await.unwrap().count, 10);
    assert_eq!(b.queue_stats().await.unwrap().count, 1, "b's own 2 and 3 were removed");
    b.append_message(sample_message(103)).await.unwrap();
    a.remove_messages(&[a_first]).await.unwrap();
    a.save_identity(&sample_identity("a")).await.unwrap();
    b.save_identity(&sample_identity("b")).await.unwrap();
    a.save_desired(&DesiredState { version: 4, values: values(json!({"rate": 1})) }).await.unwrap();
    let b_reported = ReportedState { confirmed: values(json!({"fw": "2"})), target: None };
    b.save_reported(&b_reported).await.unwrap();
    // Each device's clear is its own.
    let c = shared.device("c").await.unwrap();
    c.append_message(sample_message(7)).await.unwrap();
    c.save_desired(&DesiredState { version: 1, values: values(json!({"x": 1})) }).await.unwrap();
    c.clear_device_state().await.unwrap();
    assert_eq!(c.queue_stats().await.unwrap().count, 0);
    drop((a, b, c));
    shared.close().await.unwrap();

    let shared = SharedSqliteStore::open_async(&path, Durability::PowerLossSafe).await.unwrap();
    let (a, b, c) =
        (shared.device("a").await.unwrap(), shared.device("b").await.unwrap(), shared.device("c").await.unwrap());
    let a_queue: Vec<_> = a.read_messages(None, 100).await.unwrap();
    assert_eq!(a_queue.iter().map(|m| m.seq).collect::<Vec<_>>(), (a_first + 1..a_first + 10).collect::<Vec<_>>());
    assert_eq!(a_queue[0].message, sample_message(1));
    let b_queue = b.read_messages(None, 100).await.unwrap();
    assert_eq!(
        b_queue.iter().map(|m| (m.seq, m.message.clone())).collect::<Vec<_>>(),
        [(1, sample_message(100)), (4, sample_message(103))]
    );
    let (a_stats, b_stats) = (a.queue_stats().await.unwrap(), b.queue_stats().await.unwrap());
    assert_eq!((a_stats.count, a_stats.last_seq), (9, Some(a_first + 9)));
    assert_eq!((b_stats.count, b_stats.last_seq), (2, Some(4)));
    assert_eq!(a_stats.bytes, a_queue.iter().map(|m| m.message.queued_size()).sum::<u64>());
    assert_eq!(a.load_identity().await.unwrap(), Some(sample_identity("a")));
    assert_eq!(b.load_identity().await.unwrap(), Some(sample_identity("b")));
    assert_eq!(a.load_desired().await.unwrap().map(|d| d.version), Some(4));
    assert_eq!(b.load_desired().await.unwrap(), None);
    assert_eq!(b.load_reported().await.unwrap(), b_reported);
    assert_eq!(a.load_reported().await.unwrap(), ReportedState::default());
    assert_eq!((c.queue_stats().await.unwrap().count, c.load_desired().await.unwrap()), (0, None));
    let c_last = c.queue_stats().await.unwrap().last_seq;
    assert_eq!(c_last, Some(1));
    // A device's numbers are never given twice: not after its queue was cleared or emptied.
    assert_eq!(c.append_message(sample_message(8)).await.unwrap(), 2);
    a.remove_messages(&(a_first + 1..=a_first + 9).collect::<Vec<_>>()).await.unwrap();
    drop((a, b, c));
    shared.close().await.unwrap();
    let shared = SharedSqliteStore::open_async(&path, Durability::PowerLossSafe).await.unwrap();
    let a = shared.device("a").await.unwrap();
    let stats = a.queue_stats().await.unwrap();
    assert_eq!((stats.count, stats.last_seq), (0, Some(10)), "an empty queue keeps its last number");
    assert_eq!(a.append_message(sample_message(11)).await.unwrap(), 11);
}

#[tokio::test]
async fn a_devices_store_is_used_by_one_client_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let shared = SharedSqliteStore::open_async(dir.path().join("gateway.db"), Durability::CrashSafe).await.unwrap();
    let first = shared.device("pump").await.unwrap();
    let err = shared.device("pump").await.unwrap_err();
    assert!(err.to_string().contains("\"pump\" is already in use"), "{err}");
    assert!(shared.device("").await.is_err(), "an empty name");
    first.close().await.unwrap();
    let again = shared.device("pump").await.expect("released by close");
    drop(again);
    let _ = shared.device("pump").await.expect("released by drop");
    // Closing a device's store closes nothing else.
    let other = shared.device("valve").await.unwrap();
    other.append_message(sample_message(1)).await.unwrap();
}

#[tokio::test]
async fn one_devices_file_and_a_shared_file_are_not_mistaken_for_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("device.db");
    let store = SqliteStore::open_async(&single, Durability::PowerLossSafe).await.unwrap();
    store.append_message(sample_message(1)).await.unwrap();
    store.close().await.unwrap();
    let err = SharedSqliteStore::open_async(&single, Durability::PowerLossSafe).await.unwrap_err();
    assert!(err.to_string().contains("is one device's store (SqliteStore)"), "{err}");
    assert!(!err.is_temporary());
    let shared_path = dir.path().join("gateway.db");
    let shared = SharedSqliteStore::open_async(&shared_path, Durability::PowerLossSafe).await.unwrap();
    shared.close().await.unwrap();
    let err = SqliteStore::open_async(&shared_path, Durability::PowerLossSafe).await.unwrap_err();
    assert!(err.to_string().contains("is a store shared by several devices (SharedSqliteStore)"), "{err}");
    // Both files were left as they were.
    let store = SqliteStore::open_async(&single, Durability::PowerLossSafe).await.unwrap();
    assert_eq!(store.queue_stats().await.unwrap().count, 1);
}

#[tokio::test]
async fn concurrent_appends_of_many_devices_each_get_their_own_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let shared = SharedSqliteStore::open_async(dir.path().join("gateway.db"), Durability::PowerLossSafe).await.unwrap();
    let mut tasks = Vec::new();
    for d in 0..32 {
        let store = Arc::new(shared.device(&format!("device-{d}")).await.unwrap());
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..20 {
                seqs.push(store.append_message(sample_message(d * 100 + i)).await.unwrap());
            }
            let queued = store.read_messages(None, 100).await.unwrap();
            assert_eq!(queued.iter().map(|m| m.seq).collect::<Vec<_>>(), seqs, "its own, in order");
            assert_eq!(
                queued.iter().map(|m| m.message.clone()).collect::<Vec<_>>(),
                (0..20).map(|i| sample_message(d * 100 + i)).collect::<Vec<_>>()
            );
            seqs
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), (1..=20).collect::<Vec<u64>>(), "each device's own numbers, in order");
    }
}
