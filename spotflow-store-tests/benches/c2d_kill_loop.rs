//! The cloud-to-device inbox under `kill -9`: `--messages` messages are sent to the device while
//! it is offline (the broker queues them), then a device process (`device-child` with `C2D=1`)
//! takes them from its inbox at `--rate` per second and is killed with SIGKILL at a random moment
//! (seeded, 0.3 to 1.5 s after it is ready), `--cycles` times; a last run takes what is left until
//! the inbox stays empty. Then it checks, from what the runs printed and the emulator's states:
//! every message handed to the application at least once, none completed twice, none handed out
//! again after its completion returned, every one delivered on the broker (acknowledged), none
//! left queued.
//!
//! `cargo bench -p spotflow-store-tests --bench c2d_kill_loop -- [--messages N] [--cycles N] [--rate R] [--seed S]`

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use spotflow_store_tests::DeviceChild;

struct Args {
    messages: usize,
    cycles: usize,
    rate: u32,
    seed: u64,
}

fn args() -> Args {
    let mut a = Args { messages: 1000, cycles: 20, rate: 50, seed: 7 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--messages" => a.messages = value().parse().expect("--messages N"),
            "--cycles" => a.cycles = value().parse().expect("--cycles N"),
            "--rate" => a.rate = value().parse().expect("--rate R"),
            "--seed" => a.seed = value().parse().expect("--seed S"),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// What the runs printed: per payload, the order of GOT and DONE lines.
#[derive(Default)]
struct Seen {
    events: HashMap<String, Vec<&'static str>>,
    handed: usize,
}

impl Seen {
    fn take(&mut self, line: &str) {
        if let Some(p) = line.strip_prefix("GOT ") {
            self.events.entry(p.to_owned()).or_default().push("got");
            self.handed += 1;
        } else if let Some(p) = line.strip_prefix("DONE ") {
            self.events.entry(p.to_owned()).or_default().push("done");
        }
    }
}

fn run(device: &DeviceChild, run: usize, kill_after: Option<Duration>, seen: &mut Seen) {
    let mut child = device.spawn(run, if kill_after.is_some() { 1_000_000 } else { 0 });
    let (rx, reader) = spotflow_store_tests::stdout_lines(&mut child);
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)).expect("the device starts"), "READY");
    match kill_after {
        Some(alive) => {
            std::thread::sleep(alive);
            child.kill().expect("SIGKILL");
        }
        None => {
            let deadline = Instant::now() + Duration::from_secs(600);
            while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                let end = line == "EMPTY";
                seen.take(&line);
                if end {
                    break;
                }
            }
        }
    }
    child.wait().expect("reaped");
    reader.join().expect("reader");
    for line in rx.try_iter() {
        seen.take(&line);
    }
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (emu, mut device) =
        spotflow_store_tests::emulator_and_child(&rt, dir.path(), env!("CARGO_BIN_EXE_device-child"), a.rate);
    device.c2d = true;
    // The worker's debug line for each message the broker sent again after it was stored or
    // completed (its acknowledgement lost with a killed run), counted below.
    device.env.push(("RUST_LOG".into(), "warn,spotflow_device::worker=debug".into()));
    let started = Instant::now();
    let mut seen = Seen::default();
    // A first run registers the device (and finds nothing), then the messages wait on the broker.
    run(&device, 0, None, &mut seen);
    let hub_id = emu.devices().first().map(|d| format!("{}:{}", d.workspace_id, d.device_id)).expect("the device");
    for i in 0..a.messages {
        emu.send_c2d(
            &hub_id,
            vec![("n".into(), i.to_string())],
            format!("c{i}").into_bytes(),
            Duration::from_secs(3600),
        )
        .expect("queued");
    }
    let mut rng = fastrand::Rng::with_seed(a.seed);
    for cycle in 0..a.cycles {
        run(&device, cycle + 1, Some(Duration::from_millis(rng.u64(300..1500))), &mut seen);
    }
    run(&device, a.cycles + 1, None, &mut seen);

    let sent: HashSet<String> = (0..a.messages).map(|i| format!("c{i}")).collect();
    let never_handed = sent.iter().filter(|p| !seen.events.contains_key(*p)).count();
    let completed_twice = seen.events.values().filter(|e| e.iter().filter(|x| **x == "done").count() > 1).count();
    let handed_after_done = seen
        .events
        .values()
        .filter(|e| e.iter().position(|x| *x == "done").is_some_and(|d| e[d + 1..].contains(&"got")))
        .count();
    let handed_again = seen.events.values().filter(|e| e.iter().filter(|x| **x == "got").count() > 1).count();
    let states = emu.c2d_messages(&hub_id);
    let delivered = states.iter().filter(|m| m.state == "delivered").count();
    let resent = states.iter().filter(|m| m.attempts > 1).count();
    let log = std::fs::read_to_string(dir.path().join("children.log")).unwrap_or_default();
    let again_held = log.matches("received again (held in the inbox)").count();
    let again_completed = log.matches("received again (completed already)").count();
    println!(
        "{} messages sent offline, {} kill -9 cycles at {} messages/s ({:.0?}): handed out {} times; \
         never handed {never_handed}; handed again before completion (after a kill) {handed_again}; \
         completed twice {completed_twice}; handed again after completion {handed_after_done}; \
         broker: {delivered} delivered, {resent} sent more than once (unacknowledged when a run was killed), {} not delivered; \
         re-sent after the device had stored them (dropped by $.mid): {again_held} while held, {again_completed} after their completion",
        a.messages,
        a.cycles,
        a.rate,
        started.elapsed(),
        seen.handed,
        states.len() - delivered
    );
    assert_eq!(never_handed, 0, "messages never handed to the application");
    assert_eq!(completed_twice, 0, "messages completed twice");
    assert_eq!(handed_after_done, 0, "messages handed out again after their completion");
    assert_eq!(delivered, a.messages, "messages not delivered on the broker: {states:?}");
}
