//! The blocking API, for applications without an async runtime: plain threads share one client,
//! and the desired-properties callback (which runs on a thread of its own) calls back into it.
//!
//! `cargo run --example blocking` starts the emulator (on a runtime of its own: it is the
//! platform, not part of the application), then runs the application on plain threads: two
//! sampling threads send readings, and a configuration change pushed by the platform is
//! acknowledged from the callback with a reported-properties update.

use std::sync::{mpsc, Arc, OnceLock};
use std::time::Duration;

use serde_json::json;
use spotflow_device::blocking::DeviceClient;
use spotflow_device::Compression;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    spotflow_examples::init_logs();
    // The platform, on its own runtime.
    let runtime = tokio::runtime::Runtime::new()?;
    let emu = runtime.block_on(spotflow_emulator::Emulator::builder().auto_approve(Some(Duration::ZERO)).start())?;

    // The callback needs the client, which exists only once `start` returns.
    let shared: Arc<OnceLock<DeviceClient>> = Arc::default();
    let (applied_tx, applied_rx) = mpsc::channel();
    let in_callback = shared.clone();
    let data = tempfile::tempdir()?;
    let client = DeviceClient::builder(Some("threads"), emu.create_provisioning_token(), data.path().join("d.db"))
        .instance(emu.https_url())
        .trust_ca_pem(emu.ca_pem())
        .with_network(|n| n.mqtt_port = emu.mqtts_addr().map_or(8883, |a| a.port()))
        .display_provisioning_operation_callback(|_| {})
        .desired_properties_updated_callback(move |desired| {
            let Some(client) = in_callback.get() else { return };
            let Some(interval) = desired.values.get("sampleIntervalMs").cloned() else { return };
            // A blocking call from the callback thread: allowed, and what the callback is for.
            match client.update_reported_properties(json!({"sampleIntervalMs": interval})) {
                Ok(()) => {
                    let _ = applied_tx.send(desired.version);
                }
                Err(e) => eprintln!("could not report the applied configuration: {e}"),
            }
        })
        .start()?;
    let _ = shared.set(client.clone());

    // Two sampling threads share the client.
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || -> spotflow_device::Result<()> {
                let sender = client.create_stream_sender(None, Some(&format!("sensor-{t}")), Compression::Fastest)?;
                for i in 0..500 {
                    sender.enqueue_message(json!({"thread": t, "reading": i}).to_string())?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "a sampling thread panicked")??;
    }
    client.wait_enqueued_messages_sent_timeout(Duration::from_secs(60))?;
    println!("Two threads sent 1,000 readings; {} pending.", client.pending_messages_count());

    // The operator changes the configuration; the callback applies and reports it.
    let hub_id = format!("{}:{}", client.workspace_id(), client.device_id());
    let version = emu
        .update_desired(&hub_id, json!({"sampleIntervalMs": 500}).as_object().cloned().unwrap_or_default())
        .ok_or("the device is not known to the platform")?;
    let applied = applied_rx.recv_timeout(Duration::from_secs(30))?;
    client.wait_reported_properties_sent_timeout(Duration::from_secs(30))?;
    let reported = emu.twin(&hub_id).map(|t| t.reported).unwrap_or_default();
    println!(
        "Desired version {version} applied in the callback (version {applied}); the platform sees reported {}.",
        serde_json::Value::Object(reported)
    );
    client.close()?;
    Ok(())
}
