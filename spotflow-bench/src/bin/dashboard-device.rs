//! A device process for the dashboard's browser test (`scripts/browser_test.py`): provisions
//! itself (`OPERATION {verification code}` while it waits for approval), says `READY
//! {device id}`, then sends a JSON message every 200 ms (stream group `dashboard`, stream
//! `telemetry`) until its standard input closes. Every desired-properties version it receives
//! is printed (`DESIRED {version} {json}`) and answered with a reported-properties patch
//! `{"appliedDesiredVersion": version}`. With each message it logs a record through a
//! `DeviceLogger` (`INFO reading {n}`; every fifth also `WARN temperature high`). An update agent
//! installs the software updates rolled out to it by printing `INSTALLED {version}`.
//! Environment: `INSTANCE`, `CA_FILE`, `MQTT_PORT`,
//! `PROVISIONING_TOKEN`, `DB`, `DEVICE_ID` (the id it asks for).

use std::io::Write;
use std::time::Duration;

use spotflow_device::{Compression, DeviceClient, Message};

use spotflow_store_tests::env;

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Installs an update by printing `INSTALLED {version}`.
struct PrintInstaller;

#[async_trait::async_trait]
impl spotflow_device::update::UpdateHandler for PrintInstaller {
    async fn install(
        &self,
        update: &spotflow_device::update::UpdateInfo,
        _artifact: &std::path::Path,
    ) -> Result<spotflow_device::update::Installed, String> {
        say(format!("INSTALLED {}", update.version));
        Ok(spotflow_device::update::Installed { needs_reboot: false })
    }
    async fn rollback(&self, _: &spotflow_device::update::UpdateInfo) -> Result<(), String> {
        Ok(())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    spotflow_store_tests::child_logs();
    let ca = std::fs::read_to_string(env("CA_FILE")).expect("CA file");
    let mqtt_port: u16 = env("MQTT_PORT").parse().expect("MQTT_PORT");
    let (versions, mut desired) = tokio::sync::mpsc::unbounded_channel();
    let client = DeviceClient::builder(Some(&env("DEVICE_ID")), env("PROVISIONING_TOKEN"), env("DB"))
        .instance(env("INSTANCE"))
        .trust_ca_pem(ca)
        .with_network(|n| {
            n.platform_roots = false;
            n.mqtt_port = mqtt_port;
        })
        .display_provisioning_operation_callback(|op| say(format!("OPERATION {}", op.verification_code)))
        .desired_properties_updated_callback(move |d| {
            say(format!("DESIRED {} {}", d.version, serde_json::Value::Object(d.values.clone())));
            let _ = versions.send(d.version);
        })
        .start()
        .await
        .expect("device starts");
    say(format!("READY {}", client.device_id()));
    let sender = client.create_stream_sender(Some("dashboard"), Some("telemetry"), Compression::Uncompressed).unwrap();
    let logs = spotflow_device::logs::LogOptions { batch_interval: Duration::from_millis(200), ..Default::default() };
    let logger = spotflow_device::logs::DeviceLogger::start(&client, logs).await.expect("logger starts");
    // Software updates: installed by printing `INSTALLED {version}` (manifests not signature-checked).
    let updates =
        spotflow_device::update::UpdateOptions { poll_interval: Duration::from_millis(100), ..Default::default() };
    let _agent =
        spotflow_device::update::UpdateAgent::start(&client, updates, PrintInstaller).await.expect("agent starts");
    // Runs until standard input closes (the test ends, or the person running it presses Ctrl-D).
    let (closed_tx, mut closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        let _ = closed_tx.send(());
    });
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut i = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let body = serde_json::json!({"n": i, "temperature": 20.0 + (i % 50) as f64 / 10.0});
                if let Err(e) = sender.enqueue_message(Message::new(body.to_string())).await {
                    eprintln!("enqueue failed: {e}");
                }
                logger.log(spotflow_device::logs::LogLevel::Info, "dashboard", &format!("reading {i}"));
                if i.is_multiple_of(5) {
                    logger.log(spotflow_device::logs::LogLevel::Warn, "dashboard", "temperature high");
                }
                i += 1;
            }
            Some(version) = desired.recv() => {
                let patch = serde_json::json!({"appliedDesiredVersion": version});
                if let Err(e) = client.patch_reported_properties(patch).await {
                    eprintln!("reporting failed: {e}");
                }
            }
            _ = &mut closed => break,
        }
    }
    let _ = client.close().await;
}
