//! The SDK (default options, default SQLite store, power-loss safe) sending to the emulator
//! through `spotflow-chaos`, in two modes:
//!
//! - `-- --soak SECONDS [--rate R] [--seed S]`: a seeded random fault schedule (resets, clean
//!   closes, blackholes, latency, thin links, flapping) for SECONDS while the device enqueues R
//!   messages per second; then the link passes and the queue drains. Prints enqueued, stored,
//!   lost, redeliveries (dropped by the emulator by message key) and the proxy's fault counts.
//!   With `SPOTFLOW_OFFICIAL_HARNESS` (the official SDK's harness, built by `.ci/run`) and port
//!   8883 free, the official `spotflow` 0.8.1 crate runs the same schedule at the same rate in
//!   the same run (it always connects to port 8883: the proxy listens there). It sends no message
//!   key, so its redeliveries are stored twice and counted as duplicates. Its queue is given
//!   `--official-wait SECONDS` (default 300) to drain after the faults end.
//! - `-- --blackhole [SECONDS] [--rate R]`: after 5 s of traffic the link goes silent for SECONDS
//!   (default 30); prints how long the SDK took to give the silent connection up (stall
//!   detection) and how long after the link came back the next message was stored.

use std::time::{Duration, Instant};

use spotflow_chaos::{random_schedule, ChaosProxy, Condition};
use spotflow_device::{Compression, DeviceClient, Message};
use spotflow_emulator::{Emulator, MessageQuery};
use tokio::io::{AsyncBufReadExt, BufReader};

struct Args {
    soak: Option<u64>,
    blackhole: Option<u64>,
    rate: u64,
    seed: u64,
    /// How long the official SDK's queue may take to drain after the faults.
    official_wait: u64,
}

fn args() -> Args {
    let mut a = Args { soak: None, blackhole: None, rate: 200, seed: 1, official_wait: 300 };
    let raw: Vec<String> = std::env::args().skip(1).filter(|x| x != "--bench").collect();
    let mut i = 0;
    let number = |i: usize| raw.get(i).and_then(|v| v.parse::<u64>().ok());
    while i < raw.len() {
        match raw[i].as_str() {
            "--soak" => {
                a.soak = Some(number(i + 1).expect("--soak SECONDS"));
                i += 1;
            }
            "--blackhole" => {
                a.blackhole = Some(number(i + 1).inspect(|_| i += 1).unwrap_or(30));
            }
            "--rate" => {
                a.rate = number(i + 1).expect("--rate R");
                i += 1;
            }
            "--official-wait" => {
                a.official_wait = number(i + 1).expect("--official-wait SECONDS");
                i += 1;
            }
            "--seed" => {
                a.seed = number(i + 1).expect("--seed S");
                i += 1;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 1;
    }
    if a.soak.is_none() && a.blackhole.is_none() {
        a.soak = Some(20);
    }
    a
}

async fn device(emu: &Emulator, proxy: &ChaosProxy, dir: &std::path::Path) -> DeviceClient {
    let port = proxy.addr().port();
    DeviceClient::builder(Some("chaos-device"), emu.create_provisioning_token(), dir.join("device.db"))
        .instance(emu.https_url())
        .trust_ca_pem(emu.ca_pem())
        .with_network(move |n| {
            n.platform_roots = false;
            n.mqtt_port = port;
        })
        .display_provisioning_operation_callback(|_| {})
        .start()
        .await
        .expect("device starts")
}

/// Enqueues `rate` messages per second until `stop` is set; returns how many enqueues returned.
fn paced_sender(
    client: &DeviceClient,
    rate: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    let sender = client.create_stream_sender(Some("chaos"), Some("soak"), Compression::Uncompressed).unwrap();
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut n = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep_until(start + Duration::from_secs_f64(n as f64 / rate as f64)).await;
            sender.enqueue_message(Message::new(format!("m{n}")).message_id(format!("m{n}"))).await.expect("enqueue");
            n += 1;
        }
        n
    })
}

async fn soak(emu: &Emulator, dir: &std::path::Path, seconds: u64, a: &Args) {
    let proxy = ChaosProxy::start(emu.mqtts_addr().unwrap()).await.unwrap();
    let client = device(emu, &proxy, dir).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sending = paced_sender(&client, a.rate, stop.clone());
    let schedule = random_schedule(a.seed, Duration::from_secs(seconds));
    let started = Instant::now();
    proxy.run_schedule(&schedule).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let enqueued = sending.await.unwrap();
    let drain = Instant::now();
    client.wait_enqueued_messages_sent_timeout(Duration::from_secs(300)).await.expect("the queue drains");
    let drained_in = drain.elapsed();
    let _ = emu.wait_for_messages(enqueued, Duration::from_secs(30)).await;
    let stored = emu.message_count().await;
    let log = proxy.log();
    let count = |what: &str| log.iter().filter(|l| l.contains(what)).count();
    println!("chaos soak: {seconds} s at {} msg/s, seed {} ({:.0?} with the drain)", a.rate, a.seed, started.elapsed());
    println!(
        "  faults: {} conditions set ({} blackholes), {} reset-alls, {} close-alls; {} connections opened",
        count("condition "),
        count("condition Blackhole"),
        count(" reset "),
        count(" close "),
        count(" open from ")
    );
    println!(
        "  enqueued {enqueued}, stored {stored}, lost {}, redeliveries dropped by message key {}; drained {:.1?} after the faults ended",
        enqueued.saturating_sub(stored),
        emu.duplicates(),
        drained_in
    );
    client.close().await.unwrap();
}

/// What the official SDK's harness said during a soak.
#[derive(Default)]
struct Said {
    accepted: Vec<String>,
    done: bool,
}

async fn official_soak(harness: &str, dir: &std::path::Path, seconds: u64, a: &Args) {
    let emu = emulator(dir).await;
    let listen: std::net::SocketAddr = "127.0.0.1:8883".parse().unwrap();
    let proxy = match ChaosProxy::start_on(listen, emu.mqtts_addr().unwrap()).await {
        Ok(p) => p,
        Err(e) => {
            println!("  official spotflow 0.8.1: not measured (port 8883: {e})");
            return;
        }
    };
    let mut child = tokio::process::Command::new(harness)
        .env("INSTANCE", format!("localhost:{}", emu.https_addr().unwrap().port()))
        .env("PROVISIONING_TOKEN", emu.create_provisioning_token())
        .env("DB_PATH", dir.join("official.db"))
        .env("SOAK_SECONDS", seconds.to_string())
        .env("RATE", a.rate.to_string())
        .env("SSL_CERT_FILE", emu.ca_path().unwrap())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the official SDK's harness starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("STARTED") {
                return true;
            }
        }
        false
    })
    .await;
    if started != Ok(true) {
        println!("  official spotflow 0.8.1: did not start");
        return;
    }
    // What it said so far stays readable if its queue never drains.
    let said = std::sync::Arc::new(std::sync::Mutex::new(Said::default()));
    let reading = {
        let said = said.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut said = said.lock().unwrap();
                if let Some(i) = line.strip_prefix("ACK ") {
                    said.accepted.push(format!("m{i}"));
                } else if line == "DONE" {
                    said.done = true;
                    break;
                }
            }
        })
    };
    let schedule = random_schedule(a.seed, Duration::from_secs(seconds));
    proxy.run_schedule(&schedule).await;
    // The harness stops enqueueing when the schedule ends, then waits until its queue is sent.
    let drained = tokio::time::timeout(Duration::from_secs(a.official_wait), reading).await.is_ok();
    let said = std::mem::take(&mut *said.lock().unwrap());
    // Its last acknowledged messages reach the store within moments; a queue that never drained
    // has had its wait already.
    let settle = if drained { Duration::from_secs(30) } else { Duration::from_secs(1) };
    let _ = emu.wait_for_messages(said.accepted.len() as u64, settle).await;
    let stored = emu.messages(MessageQuery { limit: Some(10_000_000), ..Default::default() }).await;
    let mut counts = std::collections::HashMap::<String, usize>::new();
    for m in &stored {
        *counts.entry(m.message_id.clone().unwrap_or_default()).or_default() += 1;
    }
    let lost = said.accepted.iter().filter(|id| !counts.contains_key(*id)).count();
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    let drain = if said.done {
        "its queue drained".to_owned()
    } else if drained {
        "it ended without saying its queue drained".to_owned()
    } else {
        format!("its queue had NOT drained {} s after the faults ended", a.official_wait)
    };
    println!(
        "  official spotflow 0.8.1: accepted {}, stored {} ({} distinct), accepted but not stored {lost}, duplicates stored {duplicates}; {drain}",
        said.accepted.len(),
        stored.len(),
        counts.len(),
    );
    let _ = child.kill().await;
}

async fn blackhole(emu: &Emulator, dir: &std::path::Path, seconds: u64, a: &Args) {
    let proxy = ChaosProxy::start(emu.mqtts_addr().unwrap()).await.unwrap();
    let client = device(emu, &proxy, dir).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sending = paced_sender(&client, a.rate, stop.clone());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let opened_before = proxy.log().iter().filter(|l| l.contains(" open from ")).count();
    proxy.set_condition(Condition::Blackhole);
    let start = Instant::now();
    let mut detected = None;
    while start.elapsed() < Duration::from_secs(seconds) {
        if detected.is_none() && proxy.log().iter().any(|l| l.contains(" peer closed")) {
            detected = Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stored_at_return = emu.message_count().await;
    proxy.set_condition(Condition::Pass);
    let back = Instant::now();
    let mut resumed = None;
    while back.elapsed() < Duration::from_secs(120) {
        if emu.message_count().await > stored_at_return {
            resumed = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let enqueued = sending.await.unwrap();
    client.wait_enqueued_messages_sent_timeout(Duration::from_secs(300)).await.expect("the queue drains");
    let _ = emu.wait_for_messages(enqueued, Duration::from_secs(30)).await;
    let attempts = proxy.log().iter().filter(|l| l.contains(" open from ")).count() - opened_before;
    println!("blackhole of {seconds} s at {} msg/s, default options (stall_timeout 10 s):", a.rate);
    println!("  stalled connection given up after {detected:.1?}; {attempts} connection attempts during and after");
    println!("  first message stored {resumed:.1?} after the link came back");
    println!("  enqueued {enqueued}, stored {}, redeliveries {}", emu.message_count().await, emu.duplicates());
    client.close().await.unwrap();
}

async fn emulator(dir: &std::path::Path) -> Emulator {
    Emulator::builder()
        .data_dir(dir.join("emulator"))
        .auto_approve(Some(Duration::ZERO))
        .start()
        .await
        .expect("emulator")
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        if let Some(seconds) = a.blackhole {
            let dir = tempfile::tempdir().unwrap();
            blackhole(&emulator(dir.path()).await, dir.path(), seconds, &a).await;
        }
        if let Some(seconds) = a.soak {
            let dir = tempfile::tempdir().unwrap();
            soak(&emulator(dir.path()).await, dir.path(), seconds, &a).await;
            if let Ok(harness) = std::env::var("SPOTFLOW_OFFICIAL_HARNESS") {
                let dir = tempfile::tempdir().unwrap();
                official_soak(&harness, dir.path(), seconds, &a).await;
            }
        }
    });
}
