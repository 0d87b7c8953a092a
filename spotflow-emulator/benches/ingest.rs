//! Ingest throughput of the emulator: telemetry messages/s stored (durably, in group-committed
//! batches) from 10 concurrent MQTT clients over TLS publishing QoS 1 256-byte messages with 100
//! in flight each. Client and emulator share this machine's cores. Each run is repeated with the
//! dashboard open: a client following `GET /admin/events` (the live feed, read and parsed as the
//! page does), interleaved with the runs without it.
//!
//! Run: `cargo bench -p spotflow-emulator --bench ingest` (`-- --quick` for a short run).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use spotflow_emulator::Emulator;

/// Opens the live feed (connected and answered before the clock starts: the dashboard is open,
/// not opening) and follows it until the returned sender is used; counts the events received.
async fn open_dashboard(emu: &Emulator) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<(u64, u64)>) {
    let http = reqwest::Client::builder().tls_backend_preconfigured(emu.client_tls_config()).build().expect("client");
    let request = http
        .get(format!("{}/admin/events", emu.https_url()))
        .header("authorization", format!("Bearer {}", emu.admin_token()));
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let mut response = request.send().await.expect("the live feed");
    assert_eq!(response.status(), 200);
    let task = tokio::spawn(async move {
        let (mut messages, mut totals) = (0u64, 0u64);
        let mut buffer = String::new();
        loop {
            tokio::select! {
                chunk = response.chunk() => match chunk {
                    Ok(Some(bytes)) => {
                        buffer.push_str(&String::from_utf8_lossy(&bytes));
                        while let Some(end) = buffer.find("\n\n") {
                            let event: String = buffer.drain(..end + 2).collect();
                            if event.starts_with("event: message") {
                                messages += 1;
                                let data = event.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or("{}");
                                let _: serde_json::Value = serde_json::from_str(data).expect("JSON");
                            } else if event.starts_with("event: totals") {
                                totals += 1;
                            }
                        }
                    }
                    _ => break,
                },
                _ = &mut stopped => break,
            }
        }
        (messages, totals)
    });
    (stop, task)
}

async fn one_run(clients: usize, per_client: usize, dashboard: bool) -> (f64, Option<(u64, u64)>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let emu = Emulator::builder().data_dir(dir.path()).start().await.expect("emulator");
    let watcher = if dashboard { Some(open_dashboard(&emu).await) } else { None };
    let port = emu.mqtts_addr().expect("mqtts").port();
    let tls = Arc::new(emu.client_tls_config());
    let mut tasks = Vec::new();
    let start = Instant::now();
    for c in 0..clients {
        let creds = emu.create_device(&format!("bench-{c}")).expect("device");
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let mut o = MqttOptions::new(creds.hub_device_id.clone(), "localhost", port);
            o.set_credentials(creds.username.clone(), creds.password.clone());
            o.set_inflight(100);
            o.set_keep_alive(Duration::from_secs(60));
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
            let (client, mut ev) = AsyncClient::new(o, 200);
            let topic =
                format!("devices/{}/messages/events/stream-group-name=bench&stream-name=ingest", creds.hub_device_id);
            let payload = vec![b'x'; 256];
            let producer = tokio::spawn(async move {
                for _ in 0..per_client {
                    client.publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone()).await.expect("publish");
                }
                client
            });
            let mut acked = 0;
            while acked < per_client {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(e) => panic!("client error: {e}"),
                }
            }
            drop(producer.await);
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let total = (clients * per_client) as u64;
    assert!(emu.wait_for_messages(total, Duration::from_secs(120)).await, "all stored");
    let elapsed = start.elapsed();
    assert_eq!(emu.message_count().await, total);
    let seen = match watcher {
        Some((stop, task)) => {
            let _ = stop.send(());
            Some(task.await.expect("the dashboard's task"))
        }
        None => None,
    };
    (total as f64 / elapsed.as_secs_f64(), seen)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (per_client, runs) = if quick { (2_000, 3) } else { (20_000, 5) };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let (mut rates, mut watched, mut seen) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        rates.push(rt.block_on(one_run(10, per_client, false)).0);
        let (rate, events) = rt.block_on(one_run(10, per_client, true));
        watched.push(rate);
        seen.extend(events);
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    watched.sort_by(|a, b| a.total_cmp(b));
    println!(
        "emulator ingest: 10 clients x {per_client} QoS 1 messages of 256 bytes over TLS, 100 in flight each, {runs} runs"
    );
    println!(
        "median {:.0} msg/s (min {:.0}, max {:.0}), stored in SQLite (WAL, group commit)",
        rates[runs / 2],
        rates[0],
        rates[runs - 1]
    );
    println!(
        "with the dashboard open (a client following the live feed): median {:.0} msg/s (min {:.0}, max {:.0}); ratio {:.3} (target >= 0.90)",
        watched[runs / 2],
        watched[0],
        watched[runs - 1],
        watched[runs / 2] / rates[runs / 2]
    );
    let (messages, totals): (Vec<u64>, Vec<u64>) = seen.into_iter().unzip();
    println!("  the feed delivered {messages:?} message events and {totals:?} totals events per run (at most 50 messages a second)");
}
