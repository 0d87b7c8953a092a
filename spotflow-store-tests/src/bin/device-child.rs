//! A device process for the kill -9 test against the emulator: starts a `DeviceClient` with the
//! default durable store, enqueues `COUNT` messages (message ids `r{RUN}-{i}`), printing
//! `ACK {RUN} {i}` after each enqueue returned, then waits until everything queued is
//! acknowledged and prints `DONE`. Environment: `INSTANCE`, `CA_FILE`, `MQTT_PORT`,
//! `PROVISIONING_TOKEN`, `DB`, `RUN`, `COUNT`, and optionally `DEVICE_ID` (default
//! `killed-device`), `BACKEND` (a store of
//! `spotflow_store_tests::BACKENDS` instead of the default one) and `RATE` (enqueues per second).
//!
//! With `GATEWAY_DEVICES=N`, the process is a gateway instead: N clients `gw-0`… over one
//! `Gateway` store at `DB`, each enqueueing `COUNT` messages (ids `r{RUN}-d{D}-{i}`, printing
//! `ACK {RUN} d{D}-{i}`) at the same time, then `DONE` once every device's queue is acknowledged.
//!
//! With `C2D=1`, it takes cloud-to-device messages from its inbox instead (see `c2d`).
//!
//! With `UPDATE=1`, it applies software updates instead (see `update`).
//!
//! With `LOGS=1`, the process logs instead: `COUNT` records `tracing::info!("r{RUN}-{i}")` through
//! a `DeviceLogger`'s layer (default options), printing `ACK {RUN} {i}` after each call that
//! returned with the record taken (`DROP {RUN} {i}` if a limit dropped it) and, every 1,000
//! records, `LAT {max ns}`: the longest logging call among them. With nothing to log it moves
//! what the journal kept, waits until everything is acknowledged and prints `DONE`.

use std::io::Write;
use std::time::Duration;

use spotflow_device::{Compression, DeviceClient, DeviceClientBuilder, Message};

use spotflow_store_tests::env;

fn configure(builder: DeviceClientBuilder, ca: &str, mqtt_port: u16) -> DeviceClientBuilder {
    builder
        .instance(env("INSTANCE"))
        .trust_ca_pem(ca)
        .with_network(|n| {
            n.platform_roots = false;
            n.mqtt_port = mqtt_port;
        })
        .display_provisioning_operation_callback(|_| {})
        .with_options(|o| {
            o.retry_initial = Duration::from_millis(20);
            o.retry_max = Duration::from_millis(200);
        })
}

fn ack(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ACK {line}");
    let _ = out.flush();
}

/// `GATEWAY_DEVICES` clients over one gateway, sending at the same time.
async fn gateway(devices: usize, ca: &str, mqtt_port: u16, run: &str, count: u32) {
    let gateway = spotflow_device::Gateway::open(env("DB")).await.expect("gateway opens");
    let mut clients = Vec::new();
    for d in 0..devices {
        let builder = gateway.device(format!("gw-{d}"), env("PROVISIONING_TOKEN")).await.expect("device store");
        clients.push(configure(builder, ca, mqtt_port).start().await.expect("device starts"));
    }
    println!("READY");
    let mut tasks = Vec::new();
    for (d, client) in clients.iter().enumerate() {
        let sender =
            client.create_stream_sender(Some("kill"), Some("test"), Compression::Uncompressed).expect("sender");
        let run = run.to_owned();
        tasks.push(tokio::spawn(async move {
            for i in 0..count {
                let message = Message::new(format!("{run}:{d}:{i}")).message_id(format!("r{run}-d{d}-{i}"));
                sender.enqueue_message(message).await.expect("enqueue");
                ack(format_args!("{run} d{d}-{i}"));
            }
        }));
    }
    for task in tasks {
        task.await.expect("sender task");
    }
    for client in &clients {
        client.wait_enqueued_messages_sent_timeout(Duration::from_secs(60)).await.expect("all acknowledged");
    }
    println!("DONE");
    for client in &clients {
        client.close().await.expect("close");
    }
    gateway.close().await.expect("gateway closes");
}

/// `LOGS=1`: records through a `DeviceLogger`, paced at `RATE` per second.
async fn logs(client: DeviceClient, run: &str, count: u32) {
    use tracing_subscriber::prelude::*;
    let logger = spotflow_device::logs::DeviceLogger::start(&client, Default::default()).await.expect("logger starts");
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(false);
    tracing_subscriber::registry()
        .with(stderr.with_filter(tracing_subscriber::filter::LevelFilter::WARN))
        .with(logger.layer())
        .init();
    println!("READY");
    let rate: f64 = std::env::var("RATE").ok().and_then(|r| r.parse().ok()).filter(|r| *r > 0.0).unwrap_or(1000.0);
    let started = std::time::Instant::now();
    let mut longest = Duration::ZERO;
    for i in 0..count {
        tokio::time::sleep_until((started + Duration::from_secs_f64(f64::from(i) / rate)).into()).await;
        let before = logger.stats().taken;
        let call = std::time::Instant::now();
        tracing::info!(run, i, "r{run}-{i}");
        longest = longest.max(call.elapsed());
        if logger.stats().taken > before {
            ack(format_args!("{run} {i}"));
        } else {
            println!("DROP {run} {i}");
        }
        if i % 1000 == 999 {
            println!("LAT {}", longest.as_nanos());
            longest = Duration::ZERO;
        }
    }
    logger.flush().await.expect("records moved into the queue");
    client.wait_enqueued_messages_sent_timeout(Duration::from_secs(120)).await.expect("all acknowledged");
    println!("DONE");
    client.close().await.expect("close");
}

/// `C2D=1`: takes cloud-to-device messages from the inbox at `RATE` per second, printing
/// `GOT {payload}` when one is handed out and `DONE {payload}` once its completion returned; with
/// `COUNT` 0 it runs until the inbox stays empty for 2 s (the broker has nothing more), then
/// prints `EMPTY`.
async fn c2d(client: DeviceClient, count: u32) {
    println!("READY");
    let rate: f64 = std::env::var("RATE").ok().and_then(|r| r.parse().ok()).filter(|r| *r > 0.0).unwrap_or(50.0);
    let mut inbox = client.c2d_messages();
    let mut handled = 0u32;
    loop {
        let wait = if count == 0 { Duration::from_secs(2) } else { Duration::from_secs(3600) };
        let Some(message) = inbox.next_timeout(wait).await.expect("inbox") else { break };
        let payload = String::from_utf8_lossy(message.payload()).into_owned();
        println!("GOT {payload}");
        tokio::time::sleep(Duration::from_secs_f64(1.0 / rate)).await;
        message.complete().await.expect("complete");
        println!("DONE {payload}");
        handled += 1;
        if count > 0 && handled >= count {
            break;
        }
    }
    println!("EMPTY");
    client.close().await.expect("close");
}

/// User and system CPU time of this process, in µs (from `/proc/self/stat`; 0 where there is
/// none).
fn cpu_us() -> u64 {
    spotflow_store_tests::proc_cpu_us("self", false)
}

/// The `UPDATE=1` handler (`UPDATE_INSTALL=none`: installs nothing, asks for no reboot): installs by copying the artifact to `UPDATE_INSTALL_DIR/{id}` (a
/// temporary file renamed: idempotent), printing `INSTALL {id} {sha256 of what it was given}`,
/// and asks for a reboot; the health check prints `CONFIRM {id}`. Both first sleep
/// `UPDATE_HANDLER_DELAY_MS` (so that a kill can land inside them).
struct CopyInstaller {
    dir: std::path::PathBuf,
    delay: Duration,
}

#[async_trait::async_trait]
impl spotflow_device::update::UpdateHandler for CopyInstaller {
    async fn install(
        &self,
        update: &spotflow_device::update::UpdateInfo,
        artifact: &std::path::Path,
    ) -> Result<spotflow_device::update::Installed, String> {
        tokio::time::sleep(self.delay).await;
        if std::env::var("UPDATE_INSTALL").as_deref() == Ok("none") {
            // The download benchmark: nothing installed.
            return Ok(spotflow_device::update::Installed { needs_reboot: false });
        }
        let bytes = std::fs::read(artifact).map_err(|e| e.to_string())?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let tmp = self.dir.join(format!("{}.tmp", update.id));
        std::fs::write(&tmp, &bytes).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, self.dir.join(&update.id)).map_err(|e| e.to_string())?;
        println!("INSTALL {} {hex}", update.id);
        Ok(spotflow_device::update::Installed { needs_reboot: true })
    }
    async fn confirm(&self, update: &spotflow_device::update::UpdateInfo) -> Result<(), String> {
        tokio::time::sleep(self.delay).await;
        println!("CONFIRM {}", update.id);
        Ok(())
    }
    async fn rollback(&self, _: &spotflow_device::update::UpdateInfo) -> Result<(), String> {
        Err("no rollback in this test".into())
    }
}

/// `UPDATE=1`: an update agent (public key `UPDATE_KEY`, checkpoints every `UPDATE_CHECKPOINT`
/// bytes, at most `UPDATE_RATE` bytes/s, network timeout `UPDATE_TIMEOUT_MS`) printing
/// `STATE {phase} {downloaded} {bytes received by this process} {its CPU time in µs}` at every change of
/// its record; when the update asks for a reboot the process "reboots" (prints `REBOOT` and
/// exits); once the update is over it prints `FINAL {phase} {reason}` and exits. Every exit first
/// prints `RECEIVED {bytes received from the network by this process}`.
async fn update(client: DeviceClient) {
    use spotflow_device::update::{UpdateAgent, UpdateOptions, UpdatePhase};
    let dir = std::path::PathBuf::from(env("UPDATE_INSTALL_DIR"));
    let delay =
        Duration::from_millis(std::env::var("UPDATE_HANDLER_DELAY_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0));
    let mut options = UpdateOptions::default().with_public_key_hex(&env("UPDATE_KEY")).expect("key");
    if let Some(c) = std::env::var("UPDATE_CHECKPOINT").ok().and_then(|v| v.parse().ok()) {
        options.checkpoint_bytes = c;
    }
    options.max_bytes_per_second = std::env::var("UPDATE_RATE").ok().and_then(|v| v.parse().ok());
    if let Some(ms) = std::env::var("UPDATE_TIMEOUT_MS").ok().and_then(|v| v.parse().ok()) {
        options.network_timeout = Duration::from_millis(ms);
    }
    options.retry_initial = Duration::from_millis(50);
    options.retry_max = Duration::from_millis(500);
    options.poll_interval = Duration::from_millis(20);
    let agent = UpdateAgent::start(&client, options, CopyInstaller { dir, delay }).await.expect("agent starts");
    println!("READY");
    let mut last = None;
    let initial = agent.record();
    loop {
        let record = agent
            .wait_for(Duration::from_secs(3600), |r| Some((r.phase, r.downloaded)) != last)
            .await
            .expect("the record changes");
        last = Some((record.phase, record.downloaded));
        println!("STATE {} {} {} {}", record.phase, record.downloaded, agent.stats().bytes_received, cpu_us());
        // Over: an update this process took part in (not the one a previous process finished).
        let over = record.manifest.is_some() && record.phase.is_final() && record != initial;
        if record.phase == UpdatePhase::Rebooting || over {
            agent.stop().await;
            println!("RECEIVED {}", agent.stats().bytes_received);
            if over {
                let reason = record.error.map(|e| e.reason).unwrap_or_default();
                println!("FINAL {} {reason}", record.phase);
            } else {
                println!("REBOOT");
            }
            client.close().await.expect("close");
            return;
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::var_os("LOGS").is_none() {
        spotflow_store_tests::child_logs();
    }
    let ca = std::fs::read_to_string(env("CA_FILE")).expect("CA file");
    let mqtt_port: u16 = env("MQTT_PORT").parse().expect("port");
    let (run, count): (String, u32) = (env("RUN"), env("COUNT").parse().expect("count"));
    if let Some(devices) = std::env::var("GATEWAY_DEVICES").ok().and_then(|n| n.parse().ok()) {
        gateway(devices, &ca, mqtt_port, &run, count).await;
        return;
    }
    let device_id = std::env::var("DEVICE_ID").unwrap_or_else(|_| "killed-device".into());
    let mut builder = DeviceClient::builder(Some(device_id), env("PROVISIONING_TOKEN"), env("DB"));
    if let Ok(backend) = std::env::var("BACKEND") {
        let store = spotflow_store_tests::open(&backend, std::path::Path::new(&env("DB"))).await.expect("store opens");
        builder = builder.store(store);
    }
    let client = configure(builder, &ca, mqtt_port).start().await.expect("device starts");
    if std::env::var_os("LOGS").is_some() {
        logs(client, &run, count).await;
        return;
    }
    if std::env::var_os("C2D").is_some() {
        c2d(client, count).await;
        return;
    }
    if std::env::var_os("UPDATE").is_some() {
        update(client).await;
        return;
    }
    println!("READY");
    let sender = client.create_stream_sender(Some("kill"), Some("test"), Compression::Uncompressed).expect("sender");
    // RATE (messages per second) paces the enqueues; unpaced without it.
    let rate: Option<f64> = std::env::var("RATE").ok().and_then(|r| r.parse().ok()).filter(|r| *r > 0.0);
    let started = std::time::Instant::now();
    for i in 0..count {
        if let Some(rate) = rate {
            tokio::time::sleep_until((started + Duration::from_secs_f64(f64::from(i) / rate)).into()).await;
        }
        sender
            .enqueue_message(Message::new(format!("{run}:{i}")).message_id(format!("r{run}-{i}")))
            .await
            .expect("enqueue");
        ack(format_args!("{run} {i}"));
    }
    client.wait_enqueued_messages_sent_timeout(Duration::from_secs(60)).await.expect("all acknowledged");
    println!("DONE");
    client.close().await.expect("close");
}
