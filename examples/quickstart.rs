//! Quick start: a device provisions itself against the local platform, sends telemetry, reports
//! its state and receives a configuration change.
//!
//! `cargo run --example quickstart` starts `spotflow-emulator` inside this process (HTTPS and MQTT
//! over TLS on free loopback ports, automatic approval) and talks to it over the network exactly
//! as a device talks to the real platform. To use an emulator (or platform) running elsewhere, set
//! `SPOTFLOW_INSTANCE` (e.g. `localhost:8443`), `SPOTFLOW_PROVISIONING_TOKEN`, and for a local
//! emulator `SPOTFLOW_CA_FILE` (its `ca.pem`) and optionally `SPOTFLOW_MQTT_PORT`.
//! `RUST_LOG=debug` shows the SDK's logs.

use std::time::{Duration, Instant};

use serde_json::json;
use spotflow_device::{Compression, DeviceClient, Message};
use spotflow_emulator::{Emulator, MessageQuery};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    spotflow_examples::init_logs();

    // The platform: an external one from the environment, or the emulator embedded here.
    let external = std::env::var("SPOTFLOW_INSTANCE").ok();
    let emulator = match external {
        Some(_) => None,
        None => {
            let emu = Emulator::builder().auto_approve(Some(Duration::from_secs(1))).start().await?;
            println!(
                "Started the local platform: instance {}, MQTT over TLS on port {}.",
                emu.https_url(),
                emu.mqtts_addr().map_or(0, |a| a.port())
            );
            println!(
                "Its dashboard: {} (it stops with this example; `cargo run -p spotflow-emulator -- serve` runs one \
                 to watch, with its admin token in the data directory).",
                emu.dashboard_url()
            );
            Some(emu)
        }
    };
    let (instance, token, ca_pem, mqtt_port) = match &emulator {
        Some(emu) => (
            emu.https_url(),
            emu.create_provisioning_token(),
            Some(emu.ca_pem().to_owned()),
            emu.mqtts_addr().map_or(8883, |a| a.port()),
        ),
        None => (
            external.clone().unwrap_or_default(),
            std::env::var("SPOTFLOW_PROVISIONING_TOKEN").map_err(|_| "set SPOTFLOW_PROVISIONING_TOKEN")?,
            std::env::var("SPOTFLOW_CA_FILE").ok().map(std::fs::read_to_string).transpose()?,
            std::env::var("SPOTFLOW_MQTT_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8883),
        ),
    };

    // Connect: provisions the device (approved automatically by the embedded emulator after a
    // second) and prints the provisioning operation with the default display callback.
    // The device's durable queue and credentials (SQLite); a fresh one per run of this example.
    let data = tempfile::tempdir()?;
    let mut builder = DeviceClient::builder(Some("my-device"), token, data.path().join("spotflow.db"))
        .instance(instance)
        .with_network(|n| n.mqtt_port = mqtt_port)
        .desired_properties_updated_callback(|desired| {
            println!("Desired properties version {}: {}", desired.version, serde_json::Value::Object(desired.values));
        });
    if let Some(pem) = ca_pem {
        builder = builder.trust_ca_pem(pem);
    }
    let client = builder.start().await?;
    println!("Device {} registered in workspace {}.", client.device_id(), client.workspace_id());

    let sender =
        client.create_stream_sender(Some("default-stream-group"), Some("default-stream"), Compression::Fastest)?;
    let total = 5_000u32;
    let started = Instant::now();
    let mut last_progress = Instant::now();
    for i in 0..total {
        let payload = json!({
            "sequence": i,
            "temperatureCelsius": 21.0 + f64::from(i % 100) * 0.05,
            "humidityPercent": 50.0 + f64::from(i % 50) * 0.1,
            "site": "quickstart lab, bench 4, rack 2",
            "firmware": "1.0.0",
        });
        sender.enqueue_message(Message::new(payload.to_string()).batch_id(format!("batch-{}", i / 1250))).await?;
        if last_progress.elapsed() > Duration::from_millis(250) || i + 1 == total {
            print!(
                "\rEnqueued {:>6}/{total}, waiting for acknowledgement: {:>6}",
                i + 1,
                client.pending_messages_count()
            );
            use std::io::Write;
            std::io::stdout().flush()?;
            last_progress = Instant::now();
        }
    }
    sender.enqueue_batch_completion("batch-3").await?;
    client.wait_enqueued_messages_sent_timeout(Duration::from_secs(60)).await?;
    let elapsed = started.elapsed();
    println!(
        "\nAll {} messages acknowledged by the platform in {:.2?} ({:.0} messages/s).",
        total + 1,
        elapsed,
        f64::from(total + 1) / elapsed.as_secs_f64()
    );

    client.update_reported_properties(json!({"firmware": "1.0.0", "messagesSent": total})).await?;
    client.wait_reported_properties_sent_timeout(Duration::from_secs(10)).await?;

    if let Some(emu) = &emulator {
        let hub_id = format!("{}:{}", client.workspace_id(), client.device_id());
        emu.update_desired(&hub_id, json!({"sampleIntervalSeconds": 10}).as_object().cloned().unwrap_or_default());
        let messages = emu
            .messages(MessageQuery { hub_device_id: Some(hub_id.clone()), limit: Some(100_000), ..Default::default() })
            .await;
        let wire: usize = messages.iter().map(|m| m.wire_size).sum();
        let decoded: usize = messages.iter().map(|m| m.payload.len()).sum();
        println!(
            "The platform stored {} messages ({} bytes on the wire, {} decoded), {} batch completion(s).",
            messages.len(),
            wire,
            decoded,
            messages.iter().filter(|m| m.complete_batch).count()
        );
        // Exactly once: every message acknowledged is stored, none twice.
        if messages.len() != (total + 1) as usize {
            return Err(format!("the platform stored {} messages, not {}", messages.len(), total + 1).into());
        }
        if let Some(last) = messages.iter().rev().find(|m| !m.payload.is_empty()) {
            println!(
                "Last message (stream {}/{}, batch {}): {}",
                last.stream_group.as_deref().unwrap_or("-"),
                last.stream.as_deref().unwrap_or("-"),
                last.batch_id.as_deref().unwrap_or("-"),
                String::from_utf8_lossy(&last.payload)
            );
        }
        if let Some(twin) = emu.twin(&hub_id) {
            println!("Reported properties on the platform: {}", serde_json::Value::Object(twin.reported));
        }
        // Give the configuration change a moment to arrive (bounded).
        let deadline = Instant::now() + Duration::from_secs(5);
        while client.get_desired_properties_if_newer(Some(1)).is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!("Desired properties on the device: version {}.", client.get_desired_properties().version);
    client.close().await?;
    Ok(())
}
