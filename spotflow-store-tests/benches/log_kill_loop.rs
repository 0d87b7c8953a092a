//! Device logs under `kill -9` and a network blackhole, against the emulator.
//!
//! Kill loop: `--cycles` times, a device process (`device-child` with `LOGS=1`) logs records at
//! `--rate` per second through a `DeviceLogger` (default options: journal beside the database,
//! `PowerLossSafe` queue) and is killed with SIGKILL at a random moment (seeded, 0.3 to 1.5 s
//! after it is ready); a last run moves what the journal kept and drains the queue. Then it
//! counts, from the emulator's `device_logs`: taken (a logging call returned with the record
//! taken), stored, lost (taken, never stored), duplicates (stored once, arrived again), and the
//! longest logging call seen.
//!
//! Blackhole (`--blackhole SECS`): one run logs at the rate for SECS + 10 s while its MQTT
//! connection goes through `spotflow-chaos`, black-holed from the 3rd second for SECS; then the
//! same counts.
//!
//! `cargo bench -p spotflow-store-tests --bench log_kill_loop -- [--cycles N] [--rate R]
//! [--seed S] [--blackhole SECS]`

use std::collections::HashSet;
use std::time::{Duration, Instant};

use spotflow_chaos::{ChaosProxy, Condition};
use spotflow_emulator::logs::LogQuery;
use spotflow_emulator::Emulator;
use spotflow_store_tests::DeviceChild;

struct Args {
    cycles: usize,
    rate: u32,
    seed: u64,
    blackhole: Option<u64>,
}

fn args() -> Args {
    let mut a = Args { cycles: 100, rate: 1000, seed: 7, blackhole: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--cycles" => a.cycles = value().parse().expect("--cycles N"),
            "--rate" => a.rate = value().parse().expect("--rate R"),
            "--seed" => a.seed = value().parse().expect("--seed S"),
            "--blackhole" => a.blackhole = Some(value().parse().expect("--blackhole SECS")),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// What one child run said: the records taken, the drops, the longest logging call.
#[derive(Default)]
struct Said {
    taken: HashSet<String>,
    dropped: usize,
    longest_ns: u64,
}

impl Said {
    fn take(&mut self, line: &str) {
        if let Some((r, i)) = line.strip_prefix("ACK ").and_then(|l| l.split_once(' ')) {
            self.taken.insert(format!("r{r}-{i}"));
        } else if line.starts_with("DROP ") {
            self.dropped += 1;
        } else if let Some(ns) = line.strip_prefix("LAT ").and_then(|n| n.parse().ok()) {
            self.longest_ns = self.longest_ns.max(ns);
        }
    }
}

/// Runs `run` to its end (or `kill_after` once ready), reading its lines.
fn run_child(device: &DeviceChild, run: usize, count: u32, kill_after: Option<Duration>, said: &mut Said) -> bool {
    let mut child = device.spawn(run, count);
    let (rx, reader) = spotflow_store_tests::stdout_lines(&mut child);
    let ready = rx.recv_timeout(Duration::from_secs(30)).expect("the device starts");
    assert_eq!(ready, "READY");
    let mut done = false;
    match kill_after {
        Some(alive) => {
            std::thread::sleep(alive);
            child.kill().expect("SIGKILL");
        }
        None => {
            let deadline = Instant::now() + Duration::from_secs(u64::from(count) / 100 + 180);
            while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                done |= line == "DONE";
                said.take(&line);
                if done {
                    break;
                }
            }
        }
    }
    let status = child.wait().expect("reaped");
    reader.join().expect("reader");
    for line in rx.try_iter() {
        done |= line == "DONE";
        said.take(&line);
    }
    kill_after.is_some() || (done && status.success())
}

fn count(rt: &tokio::runtime::Runtime, emu: &Emulator, said: &Said, what: &str) {
    let stored = rt.block_on(emu.logs(LogQuery { limit: Some(100_000_000), ..Default::default() }));
    let messages: HashSet<String> =
        stored.iter().filter_map(|e| e.record["message"].as_str().map(str::to_owned)).collect();
    let lost = said.taken.iter().filter(|m| !messages.contains(*m)).count();
    println!(
        "{what}: {} records taken, {} stored ({} of them records of the SDK's drop reports), {lost} lost, \
         {} duplicates dropped by the platform, {} dropped by a limit, longest logging call {:.1} µs",
        said.taken.len(),
        stored.len(),
        stored.iter().filter(|e| e.record["target"] == "spotflow_device::logs").count(),
        emu.log_duplicates(),
        said.dropped,
        said.longest_ns as f64 / 1000.0
    );
    assert_eq!(lost, 0, "records taken and never stored");
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (emu, mut device) =
        spotflow_store_tests::emulator_and_child(&rt, dir.path(), env!("CARGO_BIN_EXE_device-child"), a.rate);
    device.logs = true;
    let mut said = Said::default();
    let started = Instant::now();
    let what = if let Some(secs) = a.blackhole {
        let proxy = rt.block_on(ChaosProxy::start(emu.mqtts_addr().expect("MQTT/TLS"))).expect("chaos proxy");
        device.mqtt_port = proxy.addr().port();
        let proxy = std::sync::Arc::new(proxy);
        let p = proxy.clone();
        let schedule = rt.spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            p.set_condition(Condition::Blackhole);
            tokio::time::sleep(Duration::from_secs(secs)).await;
            p.set_condition(Condition::Pass);
        });
        let records = a.rate * (secs as u32 + 10);
        let finished = run_child(&device, 0, records, None, &mut said);
        rt.block_on(schedule).unwrap();
        if !finished {
            panic!(
                "the run did not finish: {}",
                std::fs::read_to_string(dir.path().join("children.log")).unwrap_or_default()
            );
        }
        format!("{secs} s blackhole at {} records/s ({:.0?})", a.rate, started.elapsed())
    } else {
        let mut rng = fastrand::Rng::with_seed(a.seed);
        for cycle in 0..a.cycles {
            run_child(&device, cycle, 1_000_000, Some(Duration::from_millis(rng.u64(300..1500))), &mut said);
            if (cycle + 1) % 20 == 0 {
                eprintln!("  {} kills, {} records taken, {:.0?}", cycle + 1, said.taken.len(), started.elapsed());
            }
        }
        if !run_child(&device, a.cycles, 0, None, &mut said) {
            panic!(
                "the draining run did not finish: {}",
                std::fs::read_to_string(dir.path().join("children.log")).unwrap_or_default()
            );
        }
        format!("{} kill -9 cycles at {} records/s ({:.0?})", a.cycles, a.rate, started.elapsed())
    };
    count(&rt, &emu, &said, &what);
}
