//! Bad input gives clear errors (never a panic), the blocking API, and closing.

mod common;

use std::sync::Arc;

use common::*;
use serde_json::json;
use spotflow_core::testkit::MemoryPlatform;
use spotflow_core::{Error, MAX_NAME_LEN};
use spotflow_device::{blocking, Compression, DeviceClient, Message};

fn assert_invalid(result: Result<impl std::fmt::Debug, Error>, what: &str) {
    match result {
        Err(Error::InvalidArgument { what: w, reason }) => {
            assert_eq!(w, what, "reason: {reason}");
            assert!(!reason.is_empty());
        }
        other => panic!("expected invalid {what}, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_start_arguments_are_clear_errors() {
    let platform = MemoryPlatform::new();
    let store = new_store();
    let b = |device: Option<&str>, token: &str, db: &str| {
        DeviceClient::builder(device, token, db)
            .platform_api(Arc::new(platform.clone()))
            .transport(Arc::new(platform.clone()))
            .store(store.clone())
    };
    assert_invalid(b(Some("d"), TOKEN, "spotflow").start().await, "db path");
    assert_invalid(b(Some("d"), TOKEN, "spotflow.sqlite").start().await, "db path");
    assert_invalid(b(Some("d"), TOKEN, "").start().await, "db path");
    assert_invalid(b(Some("d"), "", "x.db").start().await, "provisioning token");
    assert_invalid(b(Some(""), TOKEN, "x.db").start().await, "device id");
    for instance in ["ftp://x", "http://example.com", "https://host/path", "host:99999", ""] {
        assert_invalid(b(Some("d"), TOKEN, "x.db").instance(instance).start().await, "instance");
    }
    assert_invalid(b(Some("d"), TOKEN, "x.db").with_options(|o| o.max_in_flight = 0).start().await, "options");
    let zero = std::time::Duration::ZERO;
    assert_invalid(b(Some("d"), TOKEN, "x.db").with_options(|o| o.stall_timeout = zero).start().await, "options");
    assert_invalid(b(Some("d"), TOKEN, "x.db").with_options(|o| o.reconnect_max = zero).start().await, "options");
    assert_eq!(platform.stats().init_calls, 0, "nothing reached the platform");
}

#[tokio::test]
async fn bad_messages_and_properties_are_clear_errors() {
    let platform = MemoryPlatform::new();
    let store = new_store();
    let client =
        builder(&platform, &store, Some("d")).with_options(|o| o.max_message_size = 1024).start().await.unwrap();
    assert_invalid(client.create_stream_sender(Some(""), None, Compression::Uncompressed), "stream group");
    assert_invalid(client.create_stream_sender(None, Some(""), Compression::Uncompressed), "stream");
    assert_invalid(client.create_stream_sender(None, Some("a\u{0}b"), Compression::Uncompressed), "stream");
    let long = "x".repeat(MAX_NAME_LEN + 1);
    assert_invalid(client.create_stream_sender(None, Some(&long), Compression::Uncompressed), "stream");
    assert_invalid(client.create_stream_sender(None, None, Compression::Zstd { level: 0 }), "zstd level");
    assert_invalid(client.create_stream_sender(None, None, Compression::Zstd { level: 99 }), "zstd level");
    let sender = client.create_stream_sender(None, None, Compression::Fastest).unwrap();
    match sender.enqueue_message(vec![0u8; 1025]).await {
        Err(Error::PayloadTooLarge { size: 1025, limit: 1024 }) => {}
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    assert_invalid(sender.enqueue_message(Message::new("x").batch_id("")).await, "batch id");
    assert_invalid(sender.enqueue_message(Message::new("x").message_id("\n")).await, "message id");
    assert_invalid(sender.enqueue_message(Message::new("x").chunk_id(long.clone())).await, "chunk id");
    assert_invalid(sender.enqueue_message(Message::new("x").batch_slice_id("")).await, "batch slice id");
    assert_invalid(sender.enqueue_batch_completion("").await, "batch id");
    assert_invalid(sender.enqueue_message_completion("b", "").await, "message id");
    for bad in [json!(null), json!(1), json!("s"), json!([1]), json!(true)] {
        assert_invalid(client.update_reported_properties(bad.clone()).await, "reported properties");
        assert_invalid(client.patch_reported_properties(bad).await, "reported properties");
    }
    assert_eq!(client.pending_messages_count(), 0, "nothing was queued by bad calls");
    // The client still works after all of that.
    sender.send_message(vec![1u8; 1024]).await.unwrap();
    client.close().await.unwrap();
    assert!(matches!(sender.send_message("x").await, Err(Error::Closed)));
    assert!(matches!(client.update_reported_properties(json!({})).await, Err(Error::Closed)));
    assert!(matches!(client.wait_enqueued_messages_sent().await, Err(Error::Closed)));
    client.close().await.unwrap();
}

#[test]
fn the_blocking_api_works_from_plain_threads() {
    let platform = MemoryPlatform::new();
    let store = new_store();
    let client = blocking::DeviceClient::builder(Some("dev-1"), TOKEN, "device.db")
        .platform_api(Arc::new(platform.clone()))
        .transport(Arc::new(platform.clone()))
        .store(store.clone())
        .display_provisioning_operation_callback(|_| {})
        .start()
        .unwrap();
    assert_eq!((client.workspace_id(), client.device_id()), ("ws-memory", "dev-1"));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let sender =
                client.create_stream_sender(Some("g"), Some(&format!("s{t}")), Compression::SmallestSize).unwrap();
            std::thread::spawn(move || {
                for i in 0..250 {
                    sender.enqueue_message(format!("{t}:{i}")).unwrap();
                }
                sender.enqueue_batch_completion("b").unwrap();
                sender.enqueue_message_completion("b", "m").unwrap();
                sender.send_message("last").unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    client.wait_enqueued_messages_sent().unwrap();
    assert_eq!(client.pending_messages_count(), 0);
    assert_eq!(platform.messages().len(), 4 * 253);
    client.update_reported_properties(json!({"threads": 4})).unwrap();
    client.wait_reported_properties_sent_timeout(WAIT).unwrap();
    assert!(!client.any_pending_reported_properties_updates());
    assert_eq!(client.get_desired_properties_if_newer(None).map(|d| d.version), Some(0));
    client.close().unwrap();
    assert!(matches!(client.wait_enqueued_messages_sent(), Err(Error::Closed)));
}

#[tokio::test]
async fn the_blocking_api_refuses_to_block_an_async_runtime() {
    let platform = MemoryPlatform::new();
    let store = new_store();
    let result = blocking::DeviceClient::builder(Some("dev-1"), TOKEN, "device.db")
        .platform_api(Arc::new(platform.clone()))
        .transport(Arc::new(platform.clone()))
        .store(store)
        .start();
    assert!(matches!(result, Err(Error::BlockingInAsyncContext)), "{result:?}");
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let b = DeviceClient::builder(Some("d"), "super-secret-token", "x.db");
    let shown = format!("{b:?}");
    assert!(!shown.contains("super-secret-token"), "{shown}");
}
