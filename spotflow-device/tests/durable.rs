//! The facade with its default durable store (SQLite at the `db` path): a restart with a full
//! queue resumes every message, and pending reported properties, from the file.
#![cfg(any(feature = "sqlite", feature = "sled"))]

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use spotflow_core::testkit::MemoryPlatform;
use spotflow_device::{Compression, DeviceClient, Durability};

const WAIT: Duration = Duration::from_secs(30);

async fn start(platform: &MemoryPlatform, db: &std::path::Path, durability: Durability) -> DeviceClient {
    DeviceClient::builder(Some("durable"), "memory-provisioning-token", db)
        .platform_api(Arc::new(platform.clone()))
        .transport(Arc::new(platform.clone()))
        .display_provisioning_operation_callback(|_| {})
        .with_options(|o| {
            o.durability = durability;
            o.retry_initial = Duration::from_millis(10);
            o.retry_max = Duration::from_millis(200);
        })
        .start()
        .await
        .expect("start")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_full_queue_resumes_every_message_from_the_file() {
    for durability in [Durability::PowerLossSafe, Durability::CrashSafe] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("device.db");
        let platform = MemoryPlatform::new();
        start(&platform, &db, durability).await.close().await.unwrap();
        platform.set_offline(true);
        let client = start(&platform, &db, durability).await;
        let sender = client.create_stream_sender(Some("g"), Some("s"), Compression::Fastest).unwrap();
        let total = 10_000u32;
        for i in 0..total {
            sender.enqueue_message(format!("{{\"i\":{i}}}")).await.unwrap();
        }
        client.update_reported_properties(json!({"battery": 17})).await.unwrap();
        assert_eq!(client.pending_messages_count(), u64::from(total));
        client.close().await.unwrap();
        drop(sender);
        drop(client);
        assert!(std::fs::metadata(&db).unwrap().len() > 0, "the queue is in the file");
        // A new process would see the same file: start again and let it flow.
        platform.set_offline(false);
        let client = start(&platform, &db, durability).await;
        assert_eq!(client.pending_messages_count(), u64::from(total), "{durability:?}: leftovers counted at start");
        client.wait_enqueued_messages_sent_timeout(WAIT).await.unwrap();
        let texts: Vec<String> =
            platform.messages().iter().map(|m| String::from_utf8(m.decoded_payload.clone()).unwrap()).collect();
        let expected: Vec<String> = (0..total).map(|i| format!("{{\"i\":{i}}}")).collect();
        assert_eq!(texts, expected, "{durability:?}: all, in order, once");
        client.wait_reported_properties_sent_timeout(WAIT).await.unwrap();
        assert_eq!(platform.twin("ws-memory:durable").reported.get("battery"), Some(&json!(17)));
        client.close().await.unwrap();
    }
}
