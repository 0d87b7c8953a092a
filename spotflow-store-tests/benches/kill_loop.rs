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
//! `cargo bench -p spotflow-store-tests --bench kill_loop -- [--cycles N] [--rate R]
//! [--backend sqlite-power-loss-safe|sqlite-crash-safe|sled|all] [--seed S] [--chaos]`

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
                    ["sqlite-power-loss-safe", "sqlite-crash-safe", "sled"].map(String::from).to_vec()
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

fn run(rt: &tokio::runtime::Runtime, backend: &str, a: &Args) -> Figures {
    let dir = std::env::temp_dir().join(format!("spotflow-kill-loop-{}-{backend}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let emu = rt
        .block_on(Emulator::builder().data_dir(dir.join("emulator")).auto_approve(Some(Duration::ZERO)).start())
        .expect("emulator");
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
        let schedule = random_schedule(a.seed, Duration::from_secs(a.cycles as u64 * 3 + 60));
        let runner = Arc::clone(&proxy);
        let task = rt.spawn(async move { runner.run_schedule(&schedule).await });
        (proxy, task)
    });
    let mut rng = fastrand::Rng::with_seed(a.seed);
    let mut enqueued: HashSet<String> = HashSet::new();
    let started = Instant::now();
    // A run resends what the kill before it left unacknowledged as soon as it connects, so the
    // redeliveries counted during run k+1 are those of kill k (plus, through the proxy, what a
    // fault cut short during the run).
    let (mut per_kill, mut most, mut before) = ([0usize; 4], 0u64, 0u64);
    for cycle in 0..a.cycles {
        // Runs 0.2 to 1.5 s at the rate, then SIGKILL.
        enqueued.extend(device.run_and_kill(cycle, 1_000_000, Duration::from_millis(rng.u64(200..1500))));
        let now = emu.duplicates();
        if cycle > 0 {
            let these = now - before;
            per_kill[(these as usize).min(3)] += 1;
            most = most.max(these);
        }
        before = now;
        if (cycle + 1) % 50 == 0 {
            eprintln!("  {backend}: {} kills, {} enqueued, {:.0?}", cycle + 1, enqueued.len(), started.elapsed());
        }
    }
    // The proxy stays (passing) for the draining run.
    if let Some((proxy, task)) = &chaos {
        task.abort();
        proxy.set_condition(Condition::Pass);
        let log = proxy.log();
        let count = |what: &str| log.iter().filter(|l| l.contains(what)).count();
        let connections = count(" open from ");
        println!(
            "  {backend}: chaos applied {} blackholes, {} resets and {} clean closes of all connections; {connections} connections opened",
            count("condition Blackhole"),
            count("s reset "),
            count("s close "),
        );
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
        per_kill,
        most,
    };
    drop(emu);
    let _ = std::fs::remove_dir_all(&dir);
    figures
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let through = if a.chaos { ", through spotflow-chaos (random faults)" } else { "" };
    println!("kill -9 loop: {} cycles per store, {} msg/s, seed {}{through}", a.cycles, a.rate, a.seed);
    println!("  store                      enqueued  delivered  lost  unexpected  redeliveries  per kill");
    for backend in &a.backends {
        let f = run(&rt, backend, &a);
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
