//! What a device pays at the rates devices really run: a device process (`rate-child`) sends
//! 256-byte messages at 50, 200 and 1,000 per second for a fixed time over MQTT/TLS to the
//! emulator (in this process), with the async and the blocking client, at both durability
//! levels; then the official `spotflow` 0.8.1 crate with the same workload when its harness is
//! named (`SPOTFLOW_OFFICIAL_HARNESS`, built by `.ci/run`; it needs port 8883).
//!
//! Per row: CPU of the device process per message (user + system, from the first enqueue to
//! the last acknowledgement), context switches per message, peak RSS, and the latency from an
//! enqueue returning to the platform storing the message (which it acknowledges then): p50 and
//! p99. An idle row shows the CPU of a connected client with nothing to send, after the one-time
//! work of its start (12 s).
//!
//! Our child takes its own `getrusage` and stamps each enqueue (printed at the end, so nothing
//! is written while it sends); the official harness says `ACK` after each enqueue (stamped here
//! on arrival) and its CPU is read from `/proc` (10 ms ticks).
//!
//! With `SPOTFLOW_PYTHON` (a venv's python with our wheel), the same workload through the
//! Python package (`spotflow-python/bench/rate_child.py`) at both durability levels, against the
//! Rust blocking client it wraps; with `SPOTFLOW_OFFICIAL_PYTHON` (a venv with the official
//! `spotflow-device` 2.1.1 from PyPI) the official Python package too. Both need port 8883.
//!
//! The C library (`spotflow-c`): its `benches/rate_child.c` (the same workload and protocol through
//! spotflow.h) compiled here with `cc -O2` against the release `libspotflow.a` beside this
//! benchmark when it was built with `-p spotflow-c` (as `.ci/run` builds the benchmarks), at both
//! durability levels, against the Rust blocking
//! client it wraps (target: at most 5 % more CPU per message).
//!
//! `SPOTFLOW_RATE_CHILD` names a copy of the `rate-child` executable to run instead of the one
//! built beside this bench (to compare two builds).
//!
//! `cargo bench -p spotflow-bench --bench device_rate -- [--seconds S] [--rates 50,200,1000]
//! [--quick] [--no-idle]`

use std::io::BufRead;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use spotflow_emulator::Emulator;

struct Args {
    seconds: f64,
    rates: Vec<u32>,
    idle: bool,
    /// Paired rounds (the Rust blocking client, then the C library) per durability.
    c_rounds: usize,
}

fn args() -> Args {
    let mut a = Args { seconds: 10.0, rates: vec![50, 200, 1000], idle: true, c_rounds: 5 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => a.seconds = value().parse().expect("--seconds S"),
            "--rates" => a.rates = value().split(',').map(|r| r.parse().expect("--rates R,R")).collect(),
            "--quick" => {
                a.seconds = 3.0;
                a.rates = vec![200];
                a.c_rounds = 3;
            }
            "--c-rounds" => a.c_rounds = value().parse().expect("--c-rounds N"),
            "--no-idle" => a.idle = false,
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// One measured run.
struct Row {
    messages: u64,
    user_us: u64,
    system_us: u64,
    switches: u64,
    rss_kib: u64,
    /// Enqueue → stored, per message, in µs (sorted).
    latencies: Vec<f64>,
}

impl Row {
    fn cpu_per_message(&self) -> f64 {
        (self.user_us + self.system_us) as f64 / self.messages.max(1) as f64
    }
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        self.latencies[i]
    }
}

/// Stamps every change of the emulator's stored count until `stop`; `(count, Unix ns)`.
fn stamp_stores(
    rt: &tokio::runtime::Runtime,
    emu: &Emulator,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<Vec<(u64, u128)>>) {
    let mut rx = emu.stored_messages();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(async move {
        let mut stamps = Vec::new();
        loop {
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() { break; }
                    let n = *rx.borrow_and_update();
                    stamps.push((n, now_ns()));
                }
                _ = &mut stopped => break,
            }
        }
        stamps
    });
    (stop, task)
}

/// Latency of message `i` (enqueued at `enqueued[i]`): until the first stamp with a count
/// above `i` (one device, one connection, stored in order).
fn latencies(enqueued: &[u128], stored: &[(u64, u128)]) -> Vec<f64> {
    let mut out = Vec::with_capacity(enqueued.len());
    let mut j = 0;
    for (i, t) in enqueued.iter().enumerate() {
        while j < stored.len() && stored[j].0 <= i as u64 {
            j += 1;
        }
        if let Some((_, s)) = stored.get(j) {
            out.push(s.saturating_sub(*t) as f64 / 1000.0);
        }
    }
    out.sort_by(f64::total_cmp);
    out
}

fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<(String, u128)> {
    let stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if tx.send((line, now_ns())).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for(rx: &mpsc::Receiver<(String, u128)>, prefix: &str, within: Duration) -> Vec<(String, u128)> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((line, at)) => {
                let done = line.starts_with(prefix);
                seen.push((line, at));
                if done {
                    return seen;
                }
            }
            Err(_) => panic!("no {prefix} line within {within:?}"),
        }
    }
}

fn emulator(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> Emulator {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    rt.block_on(Emulator::builder().data_dir(dir.join("emulator")).auto_approve(Some(Duration::ZERO)).start())
        .expect("emulator")
}

/// Ours: `client` (async, blocking) at `durability` (crash-safe, power-loss-safe); or a floor
/// row (`raw-mqtt`, `raw-tls`: as a device the emulator knows; `raw-sqlite`; `pace`).
fn run_ours(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    client: &str,
    durability: &str,
    rate: u32,
    seconds: f64,
) -> Row {
    let emu = emulator(rt, dir);
    let raw = emu.create_device("rate-raw").expect("a device for the raw client");
    // SPOTFLOW_RATE_CHILD runs a copy (to compare builds in one run).
    let exe = std::env::var("SPOTFLOW_RATE_CHILD").unwrap_or_else(|_| env!("CARGO_BIN_EXE_rate-child").into());
    let mut command = std::process::Command::new(exe);
    command
        .env("INSTANCE", emu.https_url())
        .env("CA_FILE", emu.ca_path().expect("CA"))
        .env("MQTT_PORT", emu.mqtts_addr().expect("MQTT/TLS").port().to_string())
        .env("PROVISIONING_TOKEN", emu.create_provisioning_token())
        .env("DB", dir.join("device.db"))
        .env("CLIENT", client)
        .env("DURABILITY", durability)
        .env("DEVICE_ID", raw.hub_device_id)
        .env("USERNAME", raw.username)
        .env("PASSWORD", raw.password);
    measure(rt, &emu, command, rate, seconds)
}

/// A Python device process (`spotflow-python/bench/rate_child.py`) run by `python` (a venv with
/// our package, or with the official 2.1.1: same API); `durability` for ours. The Python API has
/// no MQTT port: the emulator is reached through a proxy on 8883. `None` when 8883 is taken.
fn run_python(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    python: &str,
    durability: Option<&str>,
    rate: u32,
    seconds: f64,
) -> Option<Row> {
    let emu = emulator(rt, dir);
    let proxy = proxy_on_8883(rt, &emu, "python")?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../spotflow-python/bench/rate_child.py");
    let mut command = std::process::Command::new(python);
    command
        .arg(script)
        .env("INSTANCE", format!("localhost:{}", emu.https_addr().expect("HTTPS").port()))
        .env("PROVISIONING_TOKEN", emu.create_provisioning_token())
        .env("DB", dir.join("python.db"))
        .env("DEVICE_ID", "rate-python")
        .env("SSL_CERT_FILE", emu.ca_path().expect("CA"))
        .env_remove("SSL_CERT_DIR");
    if let Some(d) = durability {
        command.env("SPOTFLOW_DURABILITY", d);
    }
    let row = measure(rt, &emu, command, rate, seconds);
    drop(proxy);
    Some(row)
}

/// A proxy on port 8883 (the port of the SDKs without a port option) to the emulator's MQTT/TLS
/// listener; `None`, said for `who`, when the port is taken.
fn proxy_on_8883(rt: &tokio::runtime::Runtime, emu: &Emulator, who: &str) -> Option<spotflow_chaos::ChaosProxy> {
    let listen: std::net::SocketAddr = "127.0.0.1:8883".parse().unwrap();
    match rt.block_on(spotflow_chaos::ChaosProxy::start_on(listen, emu.mqtts_addr().expect("MQTT/TLS"))) {
        Ok(p) => Some(p),
        Err(e) => {
            println!("  {who}: not measured (port 8883: {e})");
            None
        }
    }
}

/// Runs a device process that speaks the `rate-child` protocol (READY; then SENT, T i ns,
/// USAGE, DONE) and takes its figures, with the latencies from the emulator's store.
fn measure(
    rt: &tokio::runtime::Runtime,
    emu: &Emulator,
    mut command: std::process::Command,
    rate: u32,
    seconds: f64,
) -> Row {
    let mut child = command
        .env("RATE", rate.to_string())
        .env("SECONDS", seconds.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the device process starts");
    let rx = lines_of(&mut child);
    wait_for(&rx, "READY", Duration::from_secs(60));
    let (stop, stamping) = stamp_stores(rt, emu);
    let said = wait_for(&rx, "DONE", Duration::from_secs_f64(seconds + 180.0));
    let _ = stop.send(());
    let stored = rt.block_on(stamping).expect("stamps");
    let _ = child.wait();
    let mut enqueued = Vec::new();
    let mut usage = [0u64; 5];
    for (line, _) in &said {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields[0] {
            "T" => enqueued.push(fields[2].parse::<u128>().expect("T i ns")),
            "USAGE" => {
                for (k, f) in fields[1..].iter().enumerate() {
                    usage[k] = f.parse().expect("USAGE figures");
                }
            }
            _ => {}
        }
    }
    Row {
        messages: enqueued.len() as u64,
        user_us: usage[0],
        system_us: usage[1],
        switches: usage[2] + usage[3],
        rss_kib: usage[4],
        latencies: latencies(&enqueued, &stored),
    }
}

/// CPU (user, system µs; 10 ms ticks), context switches and peak RSS (KiB) of `pid` from /proc.
fn proc_usage(pid: u32) -> [u64; 4] {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime and stime are the 12th
    // and 13th of them.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    let tick_us = 1_000_000 / 100;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    [
        f.get(11).copied().unwrap_or(0) * tick_us,
        f.get(12).copied().unwrap_or(0) * tick_us,
        field("voluntary_ctxt_switches:") + field("nonvoluntary_ctxt_switches:"),
        field("VmHWM:"),
    ]
}

/// The official SDK's harness with the same workload; `None` when port 8883 is taken.
fn run_official(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    harness: &str,
    rate: u32,
    seconds: f64,
) -> Option<Row> {
    let emu = emulator(rt, dir);
    let proxy = proxy_on_8883(rt, &emu, "official spotflow 0.8.1")?;
    let mut child = std::process::Command::new(harness)
        .env("INSTANCE", format!("localhost:{}", emu.https_addr().expect("HTTPS").port()))
        .env("PROVISIONING_TOKEN", emu.create_provisioning_token())
        .env("DB_PATH", dir.join("official.db"))
        .env("SOAK_SECONDS", format!("{}", seconds.ceil() as u64))
        .env("RATE", rate.to_string())
        .env("SSL_CERT_FILE", emu.ca_path().expect("CA"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the official SDK's harness starts");
    let rx = lines_of(&mut child);
    wait_for(&rx, "STARTED", Duration::from_secs(60));
    let before = proc_usage(child.id());
    let (stop, stamping) = stamp_stores(rt, &emu);
    let said = wait_for(&rx, "DONE", Duration::from_secs_f64(seconds + 180.0));
    let after = proc_usage(child.id());
    let _ = stop.send(());
    let stored = rt.block_on(stamping).expect("stamps");
    let _ = child.kill();
    let _ = child.wait();
    drop(proxy);
    let enqueued: Vec<u128> = said.iter().filter(|(l, _)| l.starts_with("ACK ")).map(|(_, at)| *at).collect();
    Some(Row {
        messages: enqueued.len() as u64,
        user_us: after[0] - before[0],
        system_us: after[1] - before[1],
        switches: after[2] - before[2],
        rss_kib: after[3],
        latencies: latencies(&enqueued, &stored),
    })
}

fn print_row(name: &str, rate: u32, r: &Row) {
    println!(
        "  {name:<30} {rate:>6} {:>8} {:>10.1} {:>9.1} {:>9.1} {:>10.2} {:>8.1} {:>9.2} {:>9.2}",
        r.messages,
        r.cpu_per_message(),
        r.user_us as f64 / r.messages.max(1) as f64,
        r.system_us as f64 / r.messages.max(1) as f64,
        r.switches as f64 / r.messages.max(1) as f64,
        r.rss_kib as f64 / 1024.0,
        r.percentile(0.5) / 1000.0,
        r.percentile(0.99) / 1000.0,
    );
}

/// The floor under the SDK: its libraries doing the same work alone (rumqttc over TLS without a
/// store; SQLite's insert and delete without a network; the pacing loop, which every row has,
/// counted once), their sum against our rows, and the least a QoS 1 publish over TLS costs (one
/// thread, blocking socket).
fn floor_rows(rt: &tokio::runtime::Runtime, dir: &std::path::Path, rate: u32, seconds: f64, ours: &[(String, f64)]) {
    let pace = run_ours(rt, dir, "pace", "crash-safe", rate, seconds);
    print_row("floor: pacing loop alone", rate, &pace);
    let tls = run_ours(rt, dir, "raw-tls", "crash-safe", rate, seconds);
    print_row("floor: blocking TLS publish", rate, &tls);
    let mqtt = run_ours(rt, dir, "raw-mqtt", "crash-safe", rate, seconds);
    print_row("floor: rumqttc QoS 1, TLS", rate, &mqtt);
    for durability in ["crash-safe", "power-loss-safe"] {
        let sqlite = run_ours(rt, dir, "raw-sqlite", durability, rate, seconds);
        print_row(&format!("floor: SQLite, {durability}"), rate, &sqlite);
        let floor = mqtt.cpu_per_message() + sqlite.cpu_per_message() - pace.cpu_per_message();
        let ratios: Vec<String> = ours
            .iter()
            .filter(|(name, _)| name.ends_with(durability))
            .map(|(name, cpu)| format!("{name} {:.2}x", cpu / floor))
            .collect();
        println!(
            "    floor (rumqttc + SQLite - pacing), {durability}: {floor:.1} µs/msg; ours / floor: {}",
            ratios.join(", ")
        );
    }
}

/// `benches/rate_child.c` of spotflow-c compiled against the release `libspotflow.a` beside this
/// benchmark (target/release/deps: built with it by `cargo bench -p spotflow-c …`); `Err` says why
/// it cannot be.
fn c_rate_child(out: &std::path::Path) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let deps = exe.parent().ok_or("no target directory")?;
    let lib = deps.join("libspotflow.a");
    if !lib.exists() {
        return Err(format!("no {} (build the benchmarks with -p spotflow-c)", lib.display()));
    }
    let c = concat!(env!("CARGO_MANIFEST_DIR"), "/../spotflow-c");
    let built = std::process::Command::new("cc")
        .args(["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(format!("{c}/include"))
        .arg("-o")
        .arg(out)
        .arg(format!("{c}/benches/rate_child.c"))
        .arg(&lib)
        .args(["-lpthread", "-lm", "-ldl"])
        .output()
        .map_err(|e| format!("cc: {e}"))?;
    if !built.status.success() {
        return Err(format!("cc failed: {}", String::from_utf8_lossy(&built.stderr)));
    }
    Ok(())
}

/// The C rows: the C library at both durability levels against the Rust blocking client it wraps,
/// same workload, same pacing, in `rounds` pairs run one after the other (the figures of one
/// process vary by some 10 % from run to run); medians.
fn c_rows(rt: &tokio::runtime::Runtime, dir: &std::path::Path, rate: u32, seconds: f64, rounds: usize) {
    // Beside `dir`, which each emulator run empties.
    let child = std::env::temp_dir().join(format!("spotflow-rate-child-c-{}", std::process::id()));
    match c_rate_child(&child) {
        Ok(()) => {}
        Err(why) => {
            println!("  c: not measured ({why})");
            return;
        }
    };
    let mut ratios = Vec::new();
    for durability in ["crash-safe", "power-loss-safe"] {
        let (mut c, mut rust) = (Vec::new(), Vec::new());
        for _ in 0..rounds.max(1) {
            rust.push(run_ours(rt, dir, "blocking", durability, rate, seconds).cpu_per_message());
            let row = run_c(rt, dir, &child, durability, rate, seconds);
            print_row(&format!("c (spotflow.h), {durability}"), rate, &row);
            c.push(row.cpu_per_message());
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (c, rust) = (median(&mut c), median(&mut rust));
        println!("    {durability}, {rounds} pairs: medians c {c:.1} µs/msg, Rust blocking {rust:.1} µs/msg");
        ratios.push(format!("{durability} {:.3}x", c / rust));
    }
    let _ = std::fs::remove_file(&child);
    println!("    c CPU per message / Rust blocking client (medians): {} (target <= 1.05x)", ratios.join(", "));
}

/// One run of the C rate child at `durability`.
fn run_c(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    child: &std::path::Path,
    durability: &str,
    rate: u32,
    seconds: f64,
) -> Row {
    {
        let emu = emulator(rt, dir);
        let mut command = std::process::Command::new(child);
        command
            .env("INSTANCE", emu.https_url())
            .env("SSL_CERT_FILE", emu.ca_path().expect("CA"))
            .env_remove("SSL_CERT_DIR")
            .env("MQTT_PORT", emu.mqtts_addr().expect("MQTT/TLS").port().to_string())
            .env("PROVISIONING_TOKEN", emu.create_provisioning_token())
            .env("DB", dir.join("c.db"))
            .env("DURABILITY", durability);
        measure(rt, &emu, command, rate, seconds)
    }
}

/// The Python rows: ours at both durability levels (against the Rust blocking client's CPU,
/// which the binding wraps) and the official Python package 2.1.1.
fn python_rows(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    python: Option<&str>,
    official: Option<&str>,
    rate: u32,
    seconds: f64,
    rust: &[(String, f64)],
) {
    let Some(python) = python else {
        println!("  python: not measured (set SPOTFLOW_PYTHON to a venv's python with our wheel; needs port 8883)");
        return;
    };
    let mut ours = Vec::new();
    for durability in ["crash-safe", "power-loss-safe"] {
        let Some(row) = run_python(rt, dir, python, Some(durability), rate, seconds) else { return };
        print_row(&format!("python, {durability}"), rate, &row);
        let blocking = rust.iter().find(|(n, _)| *n == format!("blocking, {durability}")).map_or(f64::NAN, |r| r.1);
        ours.push((durability, row.cpu_per_message(), blocking));
    }
    let vs_rust: Vec<String> = ours.iter().map(|(d, cpu, blocking)| format!("{d} {:.2}x", cpu / blocking)).collect();
    println!("    python CPU per message / Rust blocking client: {} (target <= 1.5x)", vs_rust.join(", "));
    let Some(official) = official else {
        println!("  official python 2.1.1: not measured (set SPOTFLOW_OFFICIAL_PYTHON)");
        return;
    };
    if let Some(row) = run_python(rt, dir, official, None, rate, seconds) {
        print_row("official python 2.1.1", rate, &row);
        let ratios: Vec<String> =
            ours.iter().map(|(d, cpu, _)| format!("{d} {:.1}x", row.cpu_per_message() / cpu)).collect();
        println!("    official python CPU per message / our python: {}", ratios.join(", "));
    }
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = std::env::temp_dir().join(format!("spotflow-device-rate-{}", std::process::id()));
    println!("device rate: 256-byte messages for {} s per row, MQTT/TLS to the emulator in another process", a.seconds);
    println!(
        "  {:<30} {:>6} {:>8} {:>10} {:>9} {:>9} {:>10} {:>8} {:>9} {:>9}",
        "client", "msg/s", "messages", "CPU µs/msg", "user", "system", "switch/msg", "RSS MiB", "p50 ms", "p99 ms"
    );
    let harness = std::env::var("SPOTFLOW_OFFICIAL_HARNESS").ok();
    let python = std::env::var("SPOTFLOW_PYTHON").ok();
    let official_python = std::env::var("SPOTFLOW_OFFICIAL_PYTHON").ok();
    for &rate in &a.rates {
        let mut ours = Vec::new();
        for client in ["async", "blocking"] {
            for durability in ["crash-safe", "power-loss-safe"] {
                let row = run_ours(&rt, &dir, client, durability, rate, a.seconds);
                print_row(&format!("{client}, {durability}"), rate, &row);
                ours.push((format!("{client}, {durability}"), row.cpu_per_message()));
            }
        }
        floor_rows(&rt, &dir, rate, a.seconds, &ours);
        c_rows(&rt, &dir, rate, a.seconds, a.c_rounds);
        python_rows(&rt, &dir, python.as_deref(), official_python.as_deref(), rate, a.seconds, &ours);
        match &harness {
            Some(h) => {
                if let Some(row) = run_official(&rt, &dir, h, rate, a.seconds) {
                    print_row("official spotflow 0.8.1", rate, &row);
                    let official = row.cpu_per_message();
                    let ratios: Vec<String> =
                        ours.iter().map(|(name, cpu)| format!("{name} {:.1}x", official / cpu)).collect();
                    println!("    official CPU per message / ours: {}", ratios.join(", "));
                }
            }
            None => {
                println!("  official spotflow 0.8.1: not measured (set SPOTFLOW_OFFICIAL_HARNESS; needs port 8883)")
            }
        }
    }
    // Idle: connected, nothing to send. The two clients idle side by side (each process with its
    // own emulator and directory): they barely run, so neither disturbs the other's figures.
    let clients: Vec<&str> = ["async", "blocking"].into_iter().filter(|_| a.idle).collect();
    let rows: Vec<Row> = std::thread::scope(|s| {
        let running: Vec<_> = clients
            .iter()
            .map(|client| {
                let (rt, dir) = (&rt, dir.join(format!("idle-{client}")));
                s.spawn(move || run_ours(rt, &dir, client, "power-loss-safe", 0, a.seconds))
            })
            .collect();
        running.into_iter().map(|t| t.join().expect("an idle row")).collect()
    });
    for (client, row) in clients.into_iter().zip(rows) {
        println!(
            "  idle {client} client, {} s connected (after 12 s of start-up): {} µs of CPU ({:.1} µs/s), {} context switches",
            a.seconds,
            row.user_us + row.system_us,
            (row.user_us + row.system_us) as f64 / a.seconds,
            row.switches
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
