//! Delivered messages/s (enqueue until acknowledged) of 256-byte messages against the same
//! emulator over TLS on loopback, side by side in one run:
//! (a) this SDK with the in-memory store, (b) raw rumqttc publishing QoS 1 with 100 in flight,
//! (d) this SDK over WebSocket (WSS), (c) the official `spotflow` 0.8.1 crate (when its harness binary is given in
//! `SPOTFLOW_OFFICIAL_HARNESS` and port 8883 is free; built by `.ci/run`).
//!
//! Built with the `metrics` feature (`--features spotflow-device/metrics`), a row (m): (a) again,
//! interleaved with it, with a recorder installed that keeps every figure in atomics (what an
//! exporter does), against (a) whose clients got no-op handles.
//!
//! Run: `cargo bench -p spotflow-device --bench platform` (`-- --quick` for a short run).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use spotflow_core::MemoryStore;
use spotflow_device::{Compression, DeviceClient, Protocol};
use spotflow_emulator::Emulator;
use tokio::io::{AsyncBufReadExt, BufReader};

async fn ours(
    emu: &Emulator,
    n: u64,
    run: usize,
    protocol: Protocol,
    durable: Option<&std::path::Path>,
    senders: u64,
) -> f64 {
    let token = emu.create_provisioning_token();
    let port = emu.mqtts_addr().expect("mqtts").port();
    let https = emu.https_addr().expect("https").port();
    let db = durable.map_or_else(|| std::path::PathBuf::from("bench.db"), |d| d.join(format!("ours-{run}.db")));
    let builder = DeviceClient::builder(Some(format!("ours-{run}-{protocol:?}-{}", durable.is_some())), token, db)
        .instance(emu.https_url())
        .trust_ca_pem(emu.ca_pem())
        .with_network(|net| {
            net.platform_roots = false;
            net.mqtt_port = port;
            net.websocket_port = https;
            net.protocol = protocol;
            net.proxy = None;
        })
        .display_provisioning_operation_callback(|_| {});
    // The in-memory store, or the default durable store (SQLite, power-loss safe) at `db`.
    let builder = if durable.is_some() { builder } else { builder.store(Arc::new(MemoryStore::new())) };
    let client = builder.start().await.expect("start");
    let sender = client.create_stream_sender(Some("bench"), Some("ours"), Compression::Uncompressed).expect("sender");
    let payload = bytes::Bytes::from(vec![b'x'; 256]);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..senders {
        let (sender, payload) = (sender.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..n / senders {
                sender.enqueue_message(payload.clone()).await.expect("enqueue");
            }
        }));
    }
    for t in tasks {
        t.await.expect("sender");
    }
    client.wait_enqueued_messages_sent_timeout(Duration::from_secs(300)).await.expect("acknowledged");
    let rate = n as f64 / start.elapsed().as_secs_f64();
    client.close().await.expect("close");
    rate
}

async fn raw_rumqttc(emu: &Emulator, n: u64, run: usize) -> f64 {
    let creds = emu.create_device(&format!("raw-{run}")).expect("device");
    let mut o = MqttOptions::new(creds.hub_device_id.clone(), "localhost", emu.mqtts_addr().expect("mqtts").port());
    o.set_credentials(creds.username.clone(), creds.password.clone());
    o.set_inflight(100);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(emu.client_tls_config()))));
    let (client, mut ev) = AsyncClient::new(o, 200);
    let topic = format!("devices/{}/messages/events/stream-group-name=bench&stream-name=raw", creds.hub_device_id);
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        for _ in 0..n {
            client.publish(topic.clone(), QoS::AtLeastOnce, false, vec![b'x'; 256]).await.expect("publish");
        }
        client
    });
    let mut acked = 0;
    while acked < n {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => panic!("rumqttc: {e}"),
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = producer.await;
    rate
}

async fn official(emu: &Emulator, harness: &str, n: u64, dir: &std::path::Path, run: usize) -> Option<f64> {
    let token = emu.create_provisioning_token();
    let mut child = tokio::process::Command::new(harness)
        .env("INSTANCE", format!("localhost:{}", emu.https_addr()?.port()))
        .env("PROVISIONING_TOKEN", token)
        .env("DB_PATH", dir.join(format!("official-{run}.db")))
        .env("MESSAGES", n.to_string())
        .env("BENCH", "1")
        .env("SSL_CERT_FILE", emu.ca_path()?)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let mut lines = BufReader::new(child.stdout.take()?).lines();
    let mut start = None;
    while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await {
        if let Some(op) = line.strip_prefix("OPERATION ") {
            emu.approve(op, None).ok()?;
        }
        if line.starts_with("STARTED") {
            start = Some(Instant::now());
            break;
        }
    }
    let start = start?;
    let before = emu.message_count().await;
    let stored = emu.wait_for_messages(before + n, Duration::from_secs(600)).await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = child.kill().await;
    stored.then_some(rate)
}

/// A recorder that keeps figures in atomics, like an exporter, while `ON`; no-op handles
/// otherwise (a client keeps the handles it got at its start).
#[cfg(feature = "metrics")]
mod recorder {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit};

    pub static ON: AtomicBool = AtomicBool::new(false);

    /// Sum and count, as an exporter's summary keeps.
    #[derive(Default)]
    struct Summary {
        sum_micros: AtomicU64,
        count: AtomicU64,
    }

    impl HistogramFn for Summary {
        fn record(&self, value: f64) {
            self.sum_micros.fetch_add((value * 1e6) as u64, Ordering::Relaxed);
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub struct Atomics;

    impl Recorder for Atomics {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            if ON.load(Ordering::Acquire) {
                Counter::from_arc(Arc::new(AtomicU64::new(0)))
            } else {
                Counter::noop()
            }
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            if ON.load(Ordering::Acquire) {
                Gauge::from_arc(Arc::new(AtomicU64::new(0)))
            } else {
                Gauge::noop()
            }
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            if ON.load(Ordering::Acquire) {
                Histogram::from_arc(Arc::new(Summary::default()))
            } else {
                Histogram::noop()
            }
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (n, official_n, runs) = if quick { (20_000u64, 1_000u64, 3) } else { (100_000, 3_000, 5) };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let harness = std::env::var("SPOTFLOW_OFFICIAL_HARNESS").ok();
        // The official SDK always connects to port 8883.
        let mqtts_port = if harness.is_some() { 8883 } else { 0 };
        let emu = Emulator::builder()
            .data_dir(dir.path().join("emulator"))
            .auto_approve(Some(Duration::ZERO))
            .mqtts_port(mqtts_port)
            .start()
            .await
            .expect("emulator");
        let (mut a, mut b, mut c, mut d, mut e) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        #[cfg(feature = "metrics")]
        let mut m = Vec::new();
        #[cfg(feature = "metrics")]
        metrics::set_global_recorder(recorder::Atomics).expect("the bench's recorder");
        for run in 0..runs {
            a.push(ours(&emu, n, run, Protocol::Mqtt, None, 1).await);
            #[cfg(feature = "metrics")]
            {
                recorder::ON.store(true, std::sync::atomic::Ordering::Release);
                m.push(ours(&emu, n, run + 1000, Protocol::Mqtt, None, 1).await);
                recorder::ON.store(false, std::sync::atomic::Ordering::Release);
            }
            e.push(ours(&emu, n, run, Protocol::Mqtt, Some(dir.path()), 64).await);
            d.push(ours(&emu, n, run, Protocol::MqttOverWebSocket, None, 1).await);
            b.push(raw_rumqttc(&emu, n, run).await);
            if let Some(h) = &harness {
                if let Some(rate) = official(&emu, h, official_n, dir.path(), run).await {
                    c.push(rate);
                }
            }
        }
        let (a, b, d, e) = (median(a), median(b), median(d), median(e));
        println!("delivered 256-byte messages/s to spotflow-emulator over TLS on loopback (median of {runs} runs)");
        println!("  (a) spotflow-device, in-memory store     {a:>10.0}   ({n} messages per run)");
        println!("  (a') spotflow-device, SQLite store        {e:>10.0}   ({n} messages per run, power-loss safe, 64 senders)");
        println!("  (d) spotflow-device over WSS, in-memory   {d:>10.0}   ({n} messages per run)");
        println!("  (b) raw rumqttc, QoS 1, 100 in flight     {b:>10.0}   ({n} messages per run)");
        if c.is_empty() {
            println!("  (c) official spotflow 0.8.1               not measured (set SPOTFLOW_OFFICIAL_HARNESS; needs port 8883)");
        } else {
            let c = median(c);
            println!("  (c) official spotflow 0.8.1               {c:>10.0}   ({official_n} messages per run)");
            println!("  ratio (a)/(c) = {:.1}x (target >= 50x)", a / c);
        }
        #[cfg(feature = "metrics")]
        {
            let m = median(m);
            println!("  (m) (a) with a metrics recorder          {m:>10.0}   ({n} messages per run, interleaved with (a))");
            println!("  ratio (m)/(a) = {:.3} (target >= 0.97)", m / a);
        }
        #[cfg(not(feature = "metrics"))]
        println!("  (m) with a metrics recorder               not measured (build with --features spotflow-device/metrics)");
        println!("  ratio (a)/(b) = {:.2} (target >= 0.5)", a / b);
        println!("  ratio (a')/(b) = {:.2} (target >= 0.3)", e / b);
        println!("  ratio (d)/(a) = {:.2} (WebSocket vs MQTT over TLS, target >= 0.7)", d / a);
    });
}
