//! Quick start: a device provisions itself, sends telemetry, reports its state and receives a
//! configuration change.
//!
//! Until the local platform emulator lands, this example runs against the in-memory platform of
//! `spotflow_core::testkit` (everything in this process, no network). Run it with
//! `cargo run --example quickstart` (`RUST_LOG=debug` for the SDK's logs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use spotflow_core::testkit::MemoryPlatform;
use spotflow_device::{Compression, DeviceClient, Message};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,spotflow_device=info".into()),
        )
        .init();

    println!("Starting the in-memory platform (no network involved).");
    let platform = MemoryPlatform::new();

    // Connect to the platform: provisions the device (auto-approved here) and prints the
    // provisioning operation with the default display callback.
    let client = DeviceClient::builder(Some("my-device"), "memory-provisioning-token", "spotflow.db")
        .platform_api(Arc::new(platform.clone()))
        .transport(Arc::new(platform.clone()))
        .desired_properties_updated_callback(|desired| {
            println!("Desired properties version {}: {}", desired.version, serde_json::Value::Object(desired.values));
        })
        .start()
        .await?;
    println!("Device {} registered in workspace {}.", client.device_id(), client.workspace_id());

    let sender =
        client.create_stream_sender(Some("default-stream-group"), Some("default-stream"), Compression::Fastest)?;
    let total = 20_000u32;
    let started = Instant::now();
    let mut last_progress = Instant::now();
    for i in 0..total {
        let payload = json!({
            "sequence": i,
            "temperatureCelsius": 21.0 + f64::from(i % 100) * 0.05,
            "humidityPercent": 50.0 + f64::from(i % 50) * 0.1,
        });
        sender.enqueue_message(Message::new(payload.to_string()).batch_id(format!("batch-{}", i / 5000))).await?;
        if last_progress.elapsed() > Duration::from_millis(200) || i + 1 == total {
            print!("\rEnqueued {:>6}/{total}, pending {:>6}", i + 1, client.pending_messages_count());
            last_progress = Instant::now();
        }
    }
    sender.enqueue_batch_completion("batch-3").await?;
    client.wait_enqueued_messages_sent_timeout(Duration::from_secs(30)).await?;
    let elapsed = started.elapsed();
    println!(
        "\nAll {} messages acknowledged in {:.2?} ({:.0} messages/s).",
        total + 1,
        elapsed,
        f64::from(total + 1) / elapsed.as_secs_f64()
    );

    client.update_reported_properties(json!({"firmware": "1.0.0", "messagesSent": total})).await?;
    client.wait_reported_properties_sent_timeout(Duration::from_secs(10)).await?;

    let hub_id = format!("{}:{}", client.workspace_id(), client.device_id());
    platform.update_desired(&hub_id, json!({"sampleIntervalSeconds": 10}).as_object().cloned().unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get_desired_properties_if_newer(Some(0)).is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let received = platform.messages();
    let compressed: usize = received.iter().map(|m| m.message.payload.len()).sum();
    let decoded: usize = received.iter().map(|m| m.decoded_payload.len()).sum();
    println!(
        "The platform received {} messages ({} bytes on the wire, {} decoded).",
        received.len(),
        compressed,
        decoded
    );
    if let Some(last) = received.iter().rev().find(|m| !m.decoded_payload.is_empty()) {
        println!("Last message: {}", String::from_utf8_lossy(&last.decoded_payload));
    }
    println!("Reported properties on the platform: {}", serde_json::Value::Object(platform.twin(&hub_id).reported));
    println!("Desired properties on the device: version {}", client.get_desired_properties().version);
    client.close().await?;
    Ok(())
}
