//! A device process for the device-rate benchmark (`benches/device_rate.rs`): starts a client
//! (`CLIENT=async` or `blocking`) with the default SQLite store at `DURABILITY`
//! (`power-loss-safe` or `crash-safe`), says `READY`, then enqueues 256-byte messages at `RATE`
//! per second for `SECONDS` (`RATE=0`: stays connected and idle that long), waits until all are
//! acknowledged and says, in this order:
//!
//! * `SENT {n}`;
//! * `T {i} {ns}` for each message: when its enqueue returned (Unix nanoseconds, the clock the
//!   benchmark stamps the platform's store with);
//! * `USAGE {user µs} {system µs} {voluntary switches} {involuntary switches} {max RSS KiB}`:
//!   the process's CPU time and context switches from `READY` to the last acknowledgement,
//!   and its peak resident size;
//! * `DONE`.
//!
//! Nothing is written while sending, so the figures are the SDK's and the pacing loop's alone.
//! Environment also: `INSTANCE`, `CA_FILE`, `MQTT_PORT`, `PROVISIONING_TOKEN`, `DB`.

use std::time::{Duration, Instant, SystemTime};

use spotflow_device::{Compression, Durability, Message};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("{name} is not set");
        std::process::exit(2)
    })
}

/// CPU time (µs, user and system), context switches (voluntary, involuntary) and peak RSS
/// (KiB) of this process so far.
fn usage() -> [u64; 5] {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    [micros(u.ru_utime), micros(u.ru_stime), u.ru_nvcsw as u64, u.ru_nivcsw as u64, u.ru_maxrss as u64]
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

struct Plan {
    rate: f64,
    seconds: f64,
    payload: bytes::Bytes,
}

impl Plan {
    /// The idle run measures a connected client in its steady state: `start` returns before the
    /// MQTT connection is up, and the start leaves one-time work behind (the HTTPS connections of
    /// provisioning and registration, closed by the server after 10 s idle; Tokio's blocking-pool
    /// thread, which exits after 10 s idle). Let all of it pass first.
    fn settle_time(&self) -> Duration {
        if self.rate == 0.0 {
            Duration::from_secs(12)
        } else {
            Duration::ZERO
        }
    }

    fn count(&self) -> u64 {
        (self.rate * self.seconds) as u64
    }
    fn due(&self, start: Instant, i: u64) -> Instant {
        start + Duration::from_secs_f64(i as f64 / self.rate)
    }
}

fn report(stamps: &[u128], before: [u64; 5]) {
    let after = usage();
    println!("SENT {}", stamps.len());
    let mut out = String::with_capacity(stamps.len() * 32);
    for (i, t) in stamps.iter().enumerate() {
        out.push_str(&format!("T {i} {t}\n"));
    }
    print!("{out}");
    println!(
        "USAGE {} {} {} {} {}",
        after[0] - before[0],
        after[1] - before[1],
        after[2] - before[2],
        after[3] - before[3],
        after[4]
    );
    println!("DONE");
}

fn main() {
    let ca = std::fs::read_to_string(env("CA_FILE")).expect("CA file");
    let mqtt_port: u16 = env("MQTT_PORT").parse().expect("MQTT_PORT");
    let durability = match env("DURABILITY").as_str() {
        "crash-safe" => Durability::CrashSafe,
        _ => Durability::PowerLossSafe,
    };
    let plan = Plan {
        rate: env("RATE").parse().expect("RATE"),
        seconds: env("SECONDS").parse().expect("SECONDS"),
        payload: bytes::Bytes::from(vec![b'x'; 256]),
    };
    let network = move |n: &mut spotflow_device::NetworkOptions| {
        n.platform_roots = false;
        n.mqtt_port = mqtt_port;
    };
    if env("CLIENT") == "blocking" {
        let client =
            spotflow_device::blocking::DeviceClient::builder(Some("rate-device"), env("PROVISIONING_TOKEN"), env("DB"))
                .instance(env("INSTANCE"))
                .trust_ca_pem(ca)
                .with_network(network)
                .with_options(|o| o.durability = durability)
                .display_provisioning_operation_callback(|_| {})
                .start()
                .expect("device starts");
        let sender = client.create_stream_sender(Some("rate"), Some("blocking"), Compression::Uncompressed).unwrap();
        std::thread::sleep(plan.settle_time());
        println!("READY");
        let before = usage();
        let start = Instant::now();
        let mut stamps = Vec::with_capacity(plan.count() as usize);
        for i in 0..plan.count() {
            if let Some(wait) = plan.due(start, i).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            sender.enqueue_message(Message::new(plan.payload.clone())).expect("enqueue");
            stamps.push(now_ns());
        }
        if plan.rate == 0.0 {
            std::thread::sleep(Duration::from_secs_f64(plan.seconds));
        }
        client.wait_enqueued_messages_sent_timeout(Duration::from_secs(120)).expect("all acknowledged");
        report(&stamps, before);
        client.close().expect("close");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let client = spotflow_device::DeviceClient::builder(Some("rate-device"), env("PROVISIONING_TOKEN"), env("DB"))
            .instance(env("INSTANCE"))
            .trust_ca_pem(ca)
            .with_network(network)
            .with_options(|o| o.durability = durability)
            .display_provisioning_operation_callback(|_| {})
            .start()
            .await
            .expect("device starts");
        let sender = client.create_stream_sender(Some("rate"), Some("async"), Compression::Uncompressed).unwrap();
        tokio::time::sleep(plan.settle_time()).await;
        println!("READY");
        let before = usage();
        let start = Instant::now();
        let mut stamps = Vec::with_capacity(plan.count() as usize);
        for i in 0..plan.count() {
            tokio::time::sleep_until(plan.due(start, i).into()).await;
            sender.enqueue_message(Message::new(plan.payload.clone())).await.expect("enqueue");
            stamps.push(now_ns());
        }
        if plan.rate == 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(plan.seconds)).await;
        }
        client.wait_enqueued_messages_sent_timeout(Duration::from_secs(120)).await.expect("all acknowledged");
        report(&stamps, before);
        client.close().await.expect("close");
    });
}
