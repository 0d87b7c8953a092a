//! Crash loop of a real device process against the emulator: `--cycles` times, a device
//! (`device-child`) enqueues at `--rate` messages per second and is killed with SIGKILL at a
//! random moment (seeded); a last run drains the queue. Then it counts, from the emulator's
//! store: enqueued (an enqueue returned), delivered, lost (enqueued, never stored), unexpected
//! (stored, never sent), and the redeliveries (the same message key again: what a platform that
//! does not drop them by `$.mid` would store twice), per kill.
//!
//! With `--chaos`, the device's MQTT connection goes through `spotflow-chaos` running a seeded
//! random schedule (resets, clean closes, blackholes, latency, thin links, flapping) for the
//! whole loop; the link passes again before the draining run.
//!
//! `SPOTFLOW_DEVICE_CHILD` names a copy of the `device-child` executable to run instead of the
//! one built beside this bench (so that a long loop is not changed by a rebuild).
//!
//! `--backend official` runs the official spotflow 0.8.1 crate through the same loop (its
//! harness, `SPOTFLOW_OFFICIAL_HARNESS`, built by `.ci/run`; it needs port 8883, where its MQTT
//! connection goes). It sends no message key, so the emulator stores each of its redeliveries:
//! they are counted from the stored rows. `all` includes it when the harness is named.
//!
//! `cargo bench -p spotflow-store-tests --bench kill_loop -- [--cycles N] [--rate R]
//! [--backend sqlite-power-loss-safe|sqlite-crash-safe|sled|official|all] [--seed S] [--chaos]`

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spotflow_chaos::{random_schedule, ChaosProxy, Condition};
use spotflow_emulator::{Emulator, MessageQuery};
use spotflow_store_tests::DeviceChild;

struct Args {
    cycles: usize,
    rate: u32,
    backends: Vec<String>,
    seed: u64,
    chaos: bool,
}

fn args() -> Args {
    let mut a = Args { cycles: 50, rate: 200, backends: vec!["sqlite-power-loss-safe".into()], seed: 7, chaos: false };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--cycles" => a.cycles = value().parse().expect("--cycles N"),
            "--rate" => a.rate = value().parse().expect("--rate R"),
            "--seed" => a.seed = value().parse().expect("--seed S"),
            "--backend" => {
                let b = value();
                a.backends = if b == "all" {
                    let mut all = ["sqlite-power-loss-safe", "sqlite-crash-safe", "sled"].map(String::from).to_vec();
                    if std::env::var_os("SPOTFLOW_OFFICIAL_HARNESS").is_some() {
                        all.push("official".into());
                    }
                    all
                } else {
                    vec![b]
                };
            }
            "--chaos" => a.chaos = true,
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

struct Figures {
    enqueued: usize,
    delivered: usize,
    lost: usize,
    unexpected: usize,
    redeliveries: u64,
    /// How many kills were followed by 0, 1, 2 and 3 or more redeliveries.
    per_kill: [usize; 4],
    most: u64,
}

/// A fresh directory and an emulator in it.
fn emulator(rt: &tokio::runtime::Runtime, backend: &str) -> (std::path::PathBuf, Emulator) {
    let dir = std::env::temp_dir().join(format!("spotflow-kill-loop-{}-{backend}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let emu = rt
        .block_on(Emulator::builder().data_dir(dir.join("emulator")).auto_approve(Some(Duration::ZERO)).start())
        .expect("emulator");
    (dir, emu)
}

/// The seeded random schedule of `--chaos`, applied by `proxy` for longer than the loop lasts
/// (each cycle takes at most ~2 s, or a few more for the official SDK's start).
fn chaos_schedule(rt: &tokio::runtime::Runtime, proxy: &Arc<ChaosProxy>, a: &Args) -> tokio::task::JoinHandle<()> {
    let schedule = random_schedule(a.seed, Duration::from_secs(a.cycles as u64 * 6 + 60));
    let runner = Arc::clone(proxy);
    rt.spawn(async move { runner.run_schedule(&schedule).await })
}

/// What the proxy did, for the report.
fn print_chaos(name: &str, proxy: &ChaosProxy) {
    let log = proxy.log();
    let count = |what: &str| log.iter().filter(|l| l.contains(what)).count();
    let connections = count(" open from ");
    println!(
        "  {name}: chaos applied {} blackholes, {} resets and {} clean closes of all connections; {connections} connections opened",
        count("condition Blackhole"),
        count("s reset "),
        count("s close "),
    );
}

/// Counts, per kill, how many redeliveries the run after it made: `[none, one, two, 3+]` and the
/// most (a run resends what the kill before it left unacknowledged as soon as it connects, so
/// the redeliveries counted during run k+1 are those of kill k, plus, through the proxy, what a
/// fault cut short during the run).
#[derive(Default)]
struct PerKill {
    counts: [usize; 4],
    most: u64,
    before: u64,
}

impl PerKill {
    /// After cycle `cycle`, with `total` redeliveries so far.
    fn after(&mut self, cycle: usize, total: u64) {
        if cycle > 0 {
            let these = total - self.before;
            self.counts[(these as usize).min(3)] += 1;
            self.most = self.most.max(these);
        }
        self.before = total;
    }
}

fn run(rt: &tokio::runtime::Runtime, backend: &str, a: &Args) -> Figures {
    let (dir, emu) = emulator(rt, backend);
    // SPOTFLOW_DEVICE_CHILD runs a copy, so that a rebuild during a long loop changes nothing.
    let exe = std::env::var("SPOTFLOW_DEVICE_CHILD").unwrap_or_else(|_| env!("CARGO_BIN_EXE_device-child").into());
    let mut device = DeviceChild::for_emulator(&exe, &emu, dir.join("device.db"));
    device.backend = Some(backend.to_owned());
    device.rate = Some(a.rate);
    // The proxy's schedule outlasts the loop (each cycle takes at most ~2 s); it is stopped
    // and the link set passing before the drain.
    let chaos = a.chaos.then(|| {
        let proxy = Arc::new(rt.block_on(ChaosProxy::start(emu.mqtts_addr().expect("MQTT/TLS"))).expect("chaos proxy"));
        device.mqtt_port = proxy.addr().port();
        let task = chaos_schedule(rt, &proxy, a);
        (proxy, task)
    });
    let mut rng = fastrand::Rng::with_seed(a.seed);
    let mut enqueued: HashSet<String> = HashSet::new();
    let started = Instant::now();
    let mut per_kill = PerKill::default();
    for cycle in 0..a.cycles {
        // Runs 0.2 to 1.5 s at the rate, then SIGKILL.
        enqueued.extend(device.run_and_kill(cycle, 1_000_000, Duration::from_millis(rng.u64(200..1500))));
        per_kill.after(cycle, emu.duplicates());
        if (cycle + 1) % 50 == 0 {
            eprintln!("  {backend}: {} kills, {} enqueued, {:.0?}", cycle + 1, enqueued.len(), started.elapsed());
        }
    }
    // The proxy stays (passing) for the draining run.
    if let Some((proxy, task)) = &chaos {
        task.abort();
        proxy.set_condition(Condition::Pass);
        print_chaos(backend, proxy);
    }
    // What the draining run says on standard error is shown if it fails.
    let drain_log = dir.join("drain.log");
    device.stderr = Some(drain_log.clone());
    if !device.drain(a.cycles) {
        let said = std::fs::read_to_string(&drain_log).unwrap_or_default();
        panic!("the draining run did not finish; it said:\n{said}");
    }
    let stored = rt.block_on(emu.messages(MessageQuery { limit: Some(100_000_000), ..Default::default() }));
    let mut counts: HashMap<String, usize> = HashMap::new();
    for m in &stored {
        *counts.entry(m.message_id.clone().unwrap_or_default()).or_default() += 1;
    }
    let lost = enqueued.iter().filter(|id| !counts.contains_key(*id)).count();
    // Stored but never reported enqueued: killed between the enqueue and its line (fine) or
    // not from this loop at all (unexpected).
    let unexpected = counts.keys().filter(|id| !id.starts_with('r') || !id.contains('-')).count();
    let stored_twice = counts.values().filter(|n| **n > 1).count();
    assert_eq!(stored_twice, 0, "the emulator stores each message key once");
    let figures = Figures {
        enqueued: enqueued.len(),
        delivered: enqueued.iter().filter(|id| counts.contains_key(*id)).count(),
        lost,
        unexpected,
        redeliveries: emu.duplicates(),
        per_kill: per_kill.counts,
        most: per_kill.most,
    };
    drop(emu);
    let _ = std::fs::remove_dir_all(&dir);
    figures
}

/// The official SDK's harness through the same loop; `None` when port 8883 is taken.
fn run_official(rt: &tokio::runtime::Runtime, harness: &str, a: &Args) -> Option<Figures> {
    let (dir, emu) = emulator(rt, "official");
    // Its MQTT connection goes to port 8883 of the instance's host: a proxy there forwards to
    // the emulator (passing, or running the chaos schedule).
    let listen: std::net::SocketAddr = "127.0.0.1:8883".parse().unwrap();
    let proxy = match rt.block_on(ChaosProxy::start_on(listen, emu.mqtts_addr().expect("MQTT/TLS"))) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            println!("  official spotflow 0.8.1: not measured (port 8883: {e})");
            return None;
        }
    };
    let task = a.chaos.then(|| chaos_schedule(rt, &proxy, a));
    let token = emu.create_provisioning_token();
    let instance = format!("localhost:{}", emu.https_addr().expect("HTTPS").port());
    let ca = emu.ca_path().expect("data directory").to_path_buf();
    let stderr_log = dir.join("official.log");
    // Starts run `run` (ids `r{run}-{i}`), enqueueing at the rate for `seconds`; its lines
    // arrive on the channel.
    let spawn = |run: usize, seconds: u64| {
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&stderr_log).expect("log file");
        let mut child = std::process::Command::new(harness)
            .env("INSTANCE", &instance)
            .env("PROVISIONING_TOKEN", &token)
            .env("DB_PATH", dir.join("official.db"))
            .env("SOAK_SECONDS", seconds.to_string())
            .env("RATE", a.rate.to_string())
            .env("ID_PREFIX", format!("r{run}-"))
            .env("SSL_CERT_FILE", &ca)
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("the official SDK's harness starts");
        let (rx, reader) = spotflow_store_tests::stdout_lines(&mut child);
        (child, rx, reader)
    };
    // Waits (bounded) for a line; what the harness said on standard error if it never comes.
    let expect_line = |rx: &std::sync::mpsc::Receiver<String>, wanted: &str, within: Duration| {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with(wanted) => return,
                Ok(_) => {}
                Err(_) => {
                    let said = std::fs::read_to_string(&stderr_log).unwrap_or_default();
                    panic!("the official SDK did not say {wanted} within {within:?}; it said:\n{said}");
                }
            }
        }
    };
    let mut rng = fastrand::Rng::with_seed(a.seed);
    let mut enqueued: HashSet<String> = HashSet::new();
    // Every stored row is read once: the message ids seen, and how many rows repeated one.
    let (mut seen, mut last_row, mut redeliveries) = (HashSet::<String>::new(), 0i64, 0u64);
    let mut read_rows = || {
        let rows = rt.block_on(emu.messages(MessageQuery {
            after_id: Some(last_row),
            limit: Some(100_000_000),
            ..Default::default()
        }));
        for m in rows {
            last_row = last_row.max(m.id);
            if !seen.insert(m.message_id.unwrap_or_default()) {
                redeliveries += 1;
            }
        }
        redeliveries
    };
    let mut per_kill = PerKill::default();
    let started = Instant::now();
    for cycle in 0..a.cycles {
        let (mut child, rx, reader) = spawn(cycle, 1_000_000);
        // Its `build` provisions (the first time), registers and connects before it says STARTED.
        expect_line(&rx, "STARTED", Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(rng.u64(200..1500)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        reader.join().expect("reader");
        enqueued.extend(rx.try_iter().filter_map(|l| Some(format!("r{cycle}-{}", l.strip_prefix("ACK ")?))));
        per_kill.after(cycle, read_rows());
        if (cycle + 1) % 50 == 0 {
            eprintln!("  official: {} kills, {} enqueued, {:.0?}", cycle + 1, enqueued.len(), started.elapsed());
        }
    }
    if let Some(task) = task {
        task.abort();
        proxy.set_condition(Condition::Pass);
        print_chaos("official", &proxy);
    }
    // The drain: nothing new, until it says its queue was sent (bounded: under faults its
    // queue has been seen never to drain).
    let (mut child, rx, reader) = spawn(a.cycles, 0);
    expect_line(&rx, "DONE", Duration::from_secs(300));
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    let _ = rt.block_on(emu.wait_for_messages(enqueued.len() as u64, Duration::from_secs(30)));
    let redeliveries = read_rows();
    let figures = Figures {
        enqueued: enqueued.len(),
        delivered: enqueued.iter().filter(|id| seen.contains(*id)).count(),
        lost: enqueued.iter().filter(|id| !seen.contains(*id)).count(),
        unexpected: seen.iter().filter(|id| !id.starts_with('r') || !id.contains('-')).count(),
        redeliveries,
        per_kill: per_kill.counts,
        most: per_kill.most,
    };
    drop(emu);
    let _ = std::fs::remove_dir_all(&dir);
    Some(figures)
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let through = if a.chaos { ", through spotflow-chaos (random faults)" } else { "" };
    println!("kill -9 loop: {} cycles per store, {} msg/s, seed {}{through}", a.cycles, a.rate, a.seed);
    println!("  store                      enqueued  delivered  lost  unexpected  redeliveries  per kill");
    for backend in &a.backends {
        let f = if backend == "official" {
            let Ok(harness) = std::env::var("SPOTFLOW_OFFICIAL_HARNESS") else {
                panic!("--backend official needs SPOTFLOW_OFFICIAL_HARNESS (the harness built by .ci/run)");
            };
            match run_official(&rt, &harness, &a) {
                Some(f) => f,
                None => continue,
            }
        } else {
            run(&rt, backend, &a)
        };
        println!(
            "  {backend:<24} {:>10} {:>10} {:>5} {:>11} {:>13} {:>9.2}",
            f.enqueued,
            f.delivered,
            f.lost,
            f.unexpected,
            f.redeliveries,
            f.redeliveries as f64 / a.cycles as f64
        );
        let [none, one, two, more] = f.per_kill;
        println!(
            "    redeliveries after a kill: none {none}, one {one}, two {two}, three or more {more} (at most {})",
            f.most
        );
    }
}
