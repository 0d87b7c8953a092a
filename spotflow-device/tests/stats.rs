//! `DeviceClient::stats()`: every field moves as it should through enqueues, sending, a lost
//! connection with messages in flight (redelivery), a failed enqueue, reported properties, the
//! drop-oldest policy and a restart with messages left in the store.
#![cfg(feature = "sqlite")]

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use spotflow_core::testkit::{AckMode, MemoryPlatform};
use spotflow_device::{Compression, ConnectionState, DeviceClient, Message, QueueFullPolicy, Stats};

const WAIT: Duration = Duration::from_secs(20);

async fn start(platform: &MemoryPlatform, db: &std::path::Path, budget: Option<u64>) -> DeviceClient {
    let client = DeviceClient::builder(Some("counted"), "memory-provisioning-token", db)
        .platform_api(Arc::new(platform.clone()))
        .transport(Arc::new(platform.clone()))
        .display_provisioning_operation_callback(|_| {})
        .with_options(|o| {
            o.retry_initial = Duration::from_millis(10);
            o.retry_max = Duration::from_millis(100);
            o.max_message_size = 4096;
            o.start_timeout = WAIT;
            if let Some(b) = budget {
                o.queue_budget_bytes = b;
                o.queue_full_policy = QueueFullPolicy::DropOldest;
            }
        })
        .start();
    tokio::time::timeout(WAIT * 2, client).await.expect("started in time").expect("start")
}

/// Waits (bounded) until `condition` holds for the client's stats; returns them.
async fn until(client: &DeviceClient, what: &str, condition: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = client.stats();
        if condition(&s) {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {WAIT:?}; last {s:#?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stats_field_moves_through_send_loss_redelivery_drops_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("device.db");
    let platform = MemoryPlatform::new();
    platform.set_ack_mode(AckMode::Hold);
    let client = start(&platform, &db, None).await;
    let s = until(&client, "connected", |s| s.connection == ConnectionState::Connected).await;
    assert_eq!((s.queued_messages, s.queued_bytes, s.oldest_queued_age, s.in_flight), (0, 0, None, 0));
    assert_eq!((s.enqueued_total, s.delivered_total, s.redelivered_total, s.dropped_total), (0, 0, 0, 0));
    assert_eq!((s.refused_total, s.failed_enqueues_total, s.reconnects, s.connection_attempts), (0, 0, 0, 1));
    assert_eq!((s.latency.samples, s.latency.p50), (0, None));
    assert!(s.last_connection_error.is_none());
    let connected_since = s.connection_since;

    // Enqueued and sent, acknowledgements held: queued and in flight.
    let sender = client.create_stream_sender(Some("g"), Some("s"), Compression::Uncompressed).unwrap();
    for i in 0..3 {
        sender.enqueue_message(Message::new(format!("m{i}"))).await.unwrap();
    }
    let s = until(&client, "3 in flight", |s| s.in_flight == 3).await;
    assert_eq!((s.enqueued_total, s.queued_messages, s.delivered_total), (3, 3, 0));
    assert!(s.queued_bytes >= 6, "{s:?}");
    assert!(s.oldest_queued_age.is_some());

    // A failed enqueue (too large) is counted and changes nothing else.
    assert!(sender.enqueue_message(Message::new(vec![0u8; 5000])).await.is_err());
    let s = client.stats();
    assert_eq!((s.failed_enqueues_total, s.enqueued_total, s.queued_messages), (1, 3, 3));

    // The connection drops with 3 in flight: redelivered on the next one.
    platform.drop_connections();
    let s = until(&client, "reconnected with 3 in flight", |s| {
        s.reconnects == 1 && s.connection == ConnectionState::Connected && s.in_flight == 3
    })
    .await;
    assert_eq!(s.redelivered_total, 3);
    assert!(s.connection_attempts >= 2, "{s:?}");
    assert!(s.last_connection_error.is_some(), "the loss is described");
    assert!(s.connection_since > connected_since);

    // Acknowledged: delivered, the queue empty, the latency measured.
    platform.set_ack_mode(AckMode::Immediate);
    platform.release_held_acks();
    let s = until(&client, "delivered", |s| s.queued_messages == 0 && s.in_flight == 0).await;
    assert_eq!(s.delivered_total, 3);
    assert_eq!((s.queued_bytes, s.oldest_queued_age), (0, None));
    assert_eq!(s.latency.samples, 3);
    let (p50, p99) = (s.latency.p50.unwrap(), s.latency.p99.unwrap());
    assert!(p50 <= p99 && p99 < WAIT * 2, "{:?}", s.latency);

    // Reported properties: the version the platform answered.
    client.patch_reported_properties(json!({"fw": "1.2"})).await.unwrap();
    client.wait_reported_properties_sent_timeout(WAIT).await.unwrap();
    let hub = format!("{}:{}", client.workspace_id(), client.device_id());
    let s = client.stats();
    assert_eq!(s.reported_version, Some(platform.twin(&hub).reported_version));
    // Desired properties: the version the client has.
    let version = platform.update_desired(&hub, json!({"interval": 5}).as_object().unwrap().clone());
    until(&client, "the desired version", |s| s.desired_version == Some(version)).await;

    client.close().await.unwrap();
    let s = client.stats();
    assert_eq!(s.connection, ConnectionState::Closed);
    assert!(sender.enqueue_message(Message::new("late")).await.is_err());
    assert_eq!(client.stats().failed_enqueues_total, 2);

    // Offline, with a budget for 3 of these messages and DropOldest: 5 enqueues drop 2.
    let size_of_one = {
        // Its acknowledgement held back, the probe's message stays queued while it is measured.
        platform.set_ack_mode(AckMode::Hold);
        let probe = start(&platform, &dir.path().join("probe.db"), None).await;
        let sender = probe.create_stream_sender(Some("g"), Some("s"), Compression::Uncompressed).unwrap();
        sender.enqueue_message(Message::new("0123456789")).await.unwrap();
        let size = probe.stats().queued_bytes;
        probe.close().await.unwrap();
        platform.set_ack_mode(AckMode::Immediate);
        size
    };
    assert!(size_of_one > 0, "the probe's message was counted while queued");
    platform.set_offline(true);
    let client = start(&platform, &db, Some(3 * size_of_one)).await;
    let sender = client.create_stream_sender(Some("g"), Some("s"), Compression::Uncompressed).unwrap();
    for i in 0..5 {
        sender.enqueue_message(Message::new(format!("012345678{i}"))).await.unwrap();
    }
    let s = client.stats();
    assert_eq!((s.enqueued_total, s.dropped_total, s.queued_messages), (5, 2, 3), "{s:?}");
    assert_eq!(s.queued_bytes, 3 * size_of_one);
    assert_ne!(s.connection, ConnectionState::Connected);
    assert!(s.last_connection_error.is_some(), "offline: the failed attempts are described");
    assert!(s.connection_attempts >= 1 && s.reconnects == 0, "{s:?}");
    client.close().await.unwrap();

    // A restart: the totals start again, the queue is what the store kept, its age is at least
    // the time since the start; back online it is delivered.
    let client = start(&platform, &db, None).await;
    let s = client.stats();
    assert_eq!((s.enqueued_total, s.dropped_total, s.delivered_total, s.queued_messages), (0, 0, 0, 3));
    assert!(s.oldest_queued_age.is_some());
    platform.set_offline(false);
    let s = until(&client, "the carried-over messages delivered", |s| s.queued_messages == 0).await;
    assert_eq!((s.delivered_total, s.oldest_queued_age, s.latency.samples), (3, None, 0));
    client.close().await.unwrap();
}
