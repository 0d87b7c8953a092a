//! How to integration-test an application built on the SDK, with no network and no files: the
//! in-memory store (`MemoryStore`) and the in-memory platform (`testkit::MemoryPlatform`, feature
//! `testkit`), which is the platform API and the transport at once and lets the test inspect
//! delivered messages, force disconnects and push desired properties.
//!
//! The "application" here samples a sensor and obeys a desired `sampleIntervalMs`. The test is an
//! ordinary `#[tokio::test]` (`cargo test -p spotflow-examples --example in_memory_test`);
//! `cargo run --example in_memory_test` runs the same scenario as a program.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use spotflow_device::testkit::MemoryPlatform;
use spotflow_device::{Compression, DeviceClient, MemoryStore, Result, StreamSender};

/// The application under test: sends `count` readings, then reports how many it sent and the
/// sampling interval it uses (taken from the desired properties).
async fn run_application(client: &DeviceClient, sender: &StreamSender, count: u32) -> Result<()> {
    let interval = client.get_desired_properties().values.get("sampleIntervalMs").and_then(|v| v.as_u64());
    for i in 0..count {
        sender.enqueue_message(json!({"reading": i, "celsius": 20.0 + f64::from(i) / 10.0}).to_string()).await?;
    }
    client.update_reported_properties(json!({"readingsSent": count, "sampleIntervalMs": interval})).await
}

/// The whole scenario, with assertions: delivery across a forced disconnect, a desired-properties
/// push, and the reported answer.
async fn scenario() -> Result<()> {
    let platform = MemoryPlatform::new();
    platform.add_provisioning_token("test-token");
    platform.set_auto_approve(true);
    let client = DeviceClient::builder(Some("sensor-1"), "test-token", "unused.db")
        .store(Arc::new(MemoryStore::new()))
        .platform_api(Arc::new(platform.clone()))
        .transport(Arc::new(platform.clone()))
        .display_provisioning_operation_callback(|_| {})
        .start()
        .await?;
    let hub_id = format!("{}:{}", client.workspace_id(), client.device_id());
    let sender = client.create_stream_sender(Some("sensors"), Some("temperature"), Compression::Uncompressed)?;

    // Readings go out; a connection lost in the middle loses none of them.
    run_application(&client, &sender, 50).await?;
    platform.drop_connections();
    run_application(&client, &sender, 50).await?;
    client.wait_enqueued_messages_sent_timeout(Duration::from_secs(10)).await?;
    let delivered = platform.messages();
    assert!(delivered.len() >= 100, "every reading delivered (redeliveries after the drop allowed)");
    let distinct: std::collections::BTreeSet<u64> = delivered.iter().map(|m| m.seq).collect();
    assert_eq!(distinct.len(), 100, "100 distinct readings");
    assert!(delivered.iter().all(|m| m.message.target.stream.as_deref() == Some("temperature")));

    // The operator changes the configuration; the application picks it up and reports it.
    platform.update_desired(&hub_id, json!({"sampleIntervalMs": 250}).as_object().cloned().unwrap_or_default());
    let pushed = platform.wait_until(Duration::from_secs(10), |_| {
        client.get_desired_properties().values.get("sampleIntervalMs") == Some(&json!(250))
    });
    assert!(pushed.await, "the desired properties reach the device");
    run_application(&client, &sender, 1).await?;
    client.wait_reported_properties_sent_timeout(Duration::from_secs(10)).await?;
    let reported = platform.twin(&hub_id).reported;
    assert_eq!(reported.get("sampleIntervalMs"), Some(&json!(250)));
    assert_eq!(reported.get("readingsSent"), Some(&json!(1)));
    client.close().await
}

#[tokio::main]
async fn main() -> Result<()> {
    spotflow_examples::init_logs();
    scenario().await?;
    println!("The application delivered every reading across a disconnect and applied the desired interval.");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_application_delivers_readings_and_obeys_the_configuration() {
        super::scenario().await.expect("scenario");
    }
}
