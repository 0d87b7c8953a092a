//! The durable store is chosen with Cargo features of `spotflow-device`, not in code: the same
//! program keeps its queue in SQLite (feature `sqlite`, the default: `db` is a file) or in sled
//! (feature `sled`: `db` is a directory).
//!
//! ```text
//! cargo run --example backend_by_feature                                        # SQLite
//! cargo run -p spotflow-examples --example backend_by_feature --no-default-features --features sled
//! ```
//!
//! It enqueues messages while the platform is down, closes the client, starts a new one on the
//! same `db` path once the platform is back, and checks that every message arrives: the queue
//! survived the restart in whichever store was compiled in.

use std::time::Duration;

use spotflow_device::{Compression, DeviceClient};
use spotflow_emulator::{Emulator, MessageQuery};

#[cfg(feature = "sqlite")]
const BACKEND: &str = "SQLite";
#[cfg(all(feature = "sled", not(feature = "sqlite")))]
const BACKEND: &str = "sled";
#[cfg(not(any(feature = "sqlite", feature = "sled")))]
const BACKEND: &str = "none (enable the `sqlite` or `sled` feature)";

async fn client(emu: &Emulator, token: &str, db: &std::path::Path) -> spotflow_device::Result<DeviceClient> {
    DeviceClient::builder(Some("backend-demo"), token, db)
        .instance(emu.https_url())
        .trust_ca_pem(emu.ca_pem())
        .with_network(|n| n.mqtt_port = emu.mqtts_addr().map_or(8883, |a| a.port()))
        .display_provisioning_operation_callback(|_| {})
        .start()
        .await
}

/// The emulator with its data in `data`, on the given ports (`0`: any).
async fn platform(
    data: &std::path::Path,
    https: u16,
    mqtts: u16,
) -> Result<Emulator, spotflow_emulator::EmulatorError> {
    Emulator::builder()
        .data_dir(data)
        .https_port(https)
        .mqtts_port(mqtts)
        .auto_approve(Some(Duration::ZERO))
        .start()
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    spotflow_examples::init_logs();
    println!("Durable store compiled in: {BACKEND}.");
    let dir = tempfile::tempdir()?;
    let (data, db) = (dir.path().join("platform"), dir.path().join("device.db"));
    let emu = platform(&data, 0, 0).await?;
    let ports = (emu.https_addr().map_or(0, |a| a.port()), emu.mqtts_addr().map_or(0, |a| a.port()));
    let token = emu.create_provisioning_token();

    // Registered once, then the platform goes down: messages queue up on disk.
    let first = client(&emu, &token, &db).await?;
    let hub_id = format!("{}:{}", first.workspace_id(), first.device_id());
    emu.shutdown();
    drop(emu);
    let sender = first.create_stream_sender(None, Some("backend"), Compression::Fastest)?;
    for i in 0..500 {
        sender.enqueue_message(format!("reading {i}")).await?;
    }
    println!(
        "Platform down: {} messages wait in the {BACKEND} store when the client closes.",
        first.pending_messages_count()
    );
    first.close().await?;

    // The platform is back; a new client on the same path sends what the store kept.
    let emu = platform(&data, ports.0, ports.1).await?;
    let second = client(&emu, &token, &db).await?;
    second.wait_enqueued_messages_sent_timeout(Duration::from_secs(30)).await?;
    second.close().await?;
    let stored =
        emu.messages(MessageQuery { hub_device_id: Some(hub_id), limit: Some(10_000), ..Default::default() }).await;
    let distinct: std::collections::BTreeSet<Vec<u8>> = stored.into_iter().map(|m| m.payload).collect();
    if distinct.len() != 500 {
        return Err(format!("{} distinct messages stored, expected 500", distinct.len()).into());
    }
    println!("All 500 messages reached the platform across the restart ({BACKEND} store at {}).", db.display());
    Ok(())
}
