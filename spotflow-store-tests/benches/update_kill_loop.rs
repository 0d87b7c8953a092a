//! Software updates under `kill -9` and network chaos: device processes (`device-child` with
//! `UPDATE=1`) update to a `--size` MiB artifact downloaded through the chaos proxy (resets,
//! clean closes, latency and short blackholes every 0.5–3 s, seeded), each killed with SIGKILL
//! at random moments (0.2–1.2 s after it is ready) and started again, until `--kills` kills have
//! landed during updates; devices are added one after the other until then, and each one is run
//! to the end of its update. Then, per device: the update ended `succeeded`, every install got
//! the artifact whole (the handler's SHA-256), and the bytes the emulator served for it (those
//! lost in flight when a connection was cut or a process killed included) against the artifact's
//! size.
//!
//! `cargo bench -p spotflow-store-tests --bench update_kill_loop -- [--kills N] [--size MiB] [--rate MiB/s] [--checkpoint BYTES] [--seed S] [--no-chaos]`

use std::time::{Duration, Instant};

use spotflow_chaos::{ChaosProxy, Condition, Fault};
use spotflow_emulator::updates::{ArtifactFaults, RolloutRequest};
use spotflow_store_tests::{stdout_lines, DeviceChild};

struct Args {
    kills: usize,
    size_mib: usize,
    rate_mib: u64,
    checkpoint: Option<u64>,
    seed: u64,
    chaos: bool,
}

fn args() -> Args {
    let mut a = Args { kills: 100, size_mib: 50, rate_mib: 50, checkpoint: None, seed: 11, chaos: true };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--kills" => a.kills = value().parse().expect("--kills N"),
            "--size" => a.size_mib = value().parse().expect("--size MiB"),
            "--rate" => a.rate_mib = value().parse().expect("--rate MiB/s"),
            "--checkpoint" => a.checkpoint = Some(value().parse().expect("--checkpoint BYTES")),
            "--seed" => a.seed = value().parse().expect("--seed S"),
            "--no-chaos" => a.chaos = false,
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// Runs the child; kills it after `kill_after` (or once it printed a line `until` accepts)
/// unless it exits first. Returns its lines and whether it was killed.
fn run(
    device: &DeviceChild,
    run: usize,
    kill_after: Option<Duration>,
    until: &dyn Fn(&str) -> bool,
) -> (Vec<String>, bool) {
    let mut child = device.spawn(run, 0);
    let (rx, reader) = stdout_lines(&mut child);
    let started = Instant::now();
    let limit = kill_after.unwrap_or(Duration::from_secs(900));
    let mut lines = Vec::new();
    let mut exited = false;
    while let Ok(line) = rx.recv_timeout(limit.saturating_sub(started.elapsed())) {
        let stop = until(&line);
        lines.push(line);
        if stop {
            break;
        }
    }
    if started.elapsed() < limit {
        exited = true; // the pipe closed: the process ended by itself
    }
    let killed = !exited && child.try_wait().ok().flatten().is_none();
    let _ = child.kill();
    child.wait().expect("reaped");
    reader.join().expect("reader");
    lines.extend(rx.try_iter());
    (lines, killed && kill_after.is_some())
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (emu, base) = spotflow_store_tests::emulator_and_child(&rt, dir.path(), env!("CARGO_BIN_EXE_device-child"), 1);
    let bytes = spotflow_store_tests::pseudo_random_bytes(a.size_mib << 20, a.seed);
    let info = emu.publish_artifact(bytes.into(), "soak").unwrap();
    let rate = a.rate_mib << 20;
    emu.set_artifact_faults(&info.id, ArtifactFaults { slow_bytes_per_second: Some(rate), ..Default::default() })
        .unwrap();
    let https = emu.https_addr().expect("https");
    let proxy = rt.block_on(ChaosProxy::start(https)).expect("proxy");
    let base_url = format!("https://127.0.0.1:{}", proxy.addr().port());
    let chaos = a.chaos.then(|| {
        let mut rng = fastrand::Rng::with_seed(a.seed);
        let mut schedule = Vec::new();
        let mut at = Duration::ZERO;
        while at < Duration::from_secs(3600) {
            let fault = match rng.u32(0..10) {
                0..=2 => Fault::Set(Condition::Pass),
                3 => Fault::ResetAll,
                4 => Fault::CloseAll,
                5 | 6 => Fault::Set(Condition::Latency {
                    base: Duration::from_millis(rng.u64(5..60)),
                    jitter: Duration::from_millis(rng.u64(0..20)),
                }),
                _ => {
                    schedule.push((at, Fault::Set(Condition::Blackhole)));
                    at += Duration::from_millis(rng.u64(200..800));
                    Fault::Set(Condition::Pass)
                }
            };
            schedule.push((at, fault));
            at += Duration::from_millis(rng.u64(500..3000));
        }
        schedule
    });
    // The schedule runs on the proxy the devices use.
    let proxy = std::sync::Arc::new(proxy);
    let chaos_task = chaos.map(|schedule| {
        let p = proxy.clone();
        rt.spawn(async move { p.run_schedule(&schedule).await })
    });

    let checkpoint = a.checkpoint.unwrap_or_else(|| spotflow_device::update::UpdateOptions::default().checkpoint_bytes);
    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(a.seed ^ 0x5eed);
    let mut kills = 0;
    let mut results = Vec::new();
    let mut run_no = 0;
    for d in 0..200 {
        if kills >= a.kills {
            break;
        }
        let device_id = format!("soak-{d}");
        let (mut device, install_dir) = base.updater(&emu, dir.path(), &device_id);
        device.env.push(("UPDATE_TIMEOUT_MS".into(), "2000".into()));
        if let Some(c) = a.checkpoint {
            device.env.push(("UPDATE_CHECKPOINT".into(), c.to_string()));
        }
        run_no += 1;
        let (first, _) = run(&device, run_no, Some(Duration::from_secs(60)), &|l| l.starts_with("STATE idle"));
        assert!(first.iter().any(|l| l == "READY"), "device {d} starts: {first:?}");
        let hub_id = emu.devices().into_iter().find(|x| x.device_id == device_id).expect("registered").hub_device_id;
        let rollout = emu
            .start_rollout(&RolloutRequest {
                artifact: info.id.clone(),
                devices: vec![hub_id],
                base_url: Some(base_url.clone()),
                ..Default::default()
            })
            .unwrap();
        let mut lines = Vec::new();
        let mut received = 0u64;
        let mut device_kills = 0;
        let mut finished = false;
        for _ in 0..400 {
            run_no += 1;
            let kill = (kills < a.kills).then(|| Duration::from_millis(rng.u64(200..1200)));
            let (out, killed) = run(&device, run_no, kill, &|_| false);
            finished = out.iter().any(|l| l.starts_with("FINAL "));
            // Bytes this process received: its last report, plus (killed) what it may have
            // received after it (at most one checkpoint: every checkpoint is reported).
            let reported = out
                .iter()
                .filter_map(|l| match l.strip_prefix("RECEIVED ") {
                    Some(n) => n.parse::<u64>().ok(),
                    // STATE {phase} {downloaded} {received} {cpu}
                    None => l.strip_prefix("STATE ")?.split(' ').nth(2)?.parse::<u64>().ok(),
                })
                .max()
                .unwrap_or(0);
            received += reported + if killed && !finished { checkpoint } else { 0 };
            lines.extend(out);
            if killed && !finished {
                kills += 1;
                device_kills += 1;
            }
            if finished {
                break;
            }
        }
        let fin = lines.iter().find_map(|l| l.strip_prefix("FINAL ")).unwrap_or("unfinished").to_owned();
        let bad_installs = lines.iter().filter(|l| l.starts_with("INSTALL ") && !l.ends_with(&info.sha256)).count();
        let served = emu.rollout(&rollout).unwrap().devices[0].bytes_served;
        println!(
            "device {d}: {device_kills} kills, {fin}, received at most {:.3}x the artifact, served {:.3}x, {bad_installs} bad installs",
            received as f64 / info.size as f64,
            served as f64 / info.size as f64
        );
        assert!(finished, "device {d} did not finish: {:?}", &lines[lines.len().saturating_sub(20)..]);
        results.push((device_kills, fin, served, bad_installs, received));
        // Keeps the disk use of a long run to one device's.
        let _ = std::fs::remove_dir_all(&install_dir);
    }
    if let Some(t) = chaos_task {
        t.abort();
    }
    let devices = results.len();
    let succeeded = results.iter().filter(|r| r.1.trim() == "succeeded").count();
    let served: u64 = results.iter().map(|r| r.2).sum();
    let bad: usize = results.iter().map(|r| r.3).sum();
    let ratio = served as f64 / (devices as f64 * info.size as f64);
    let received: u64 = results.iter().map(|r| r.4).sum();
    let received_ratio = received as f64 / (devices as f64 * info.size as f64);
    let worst = results.iter().map(|r| r.2 as f64 / info.size as f64).fold(0.0, f64::max);
    println!(
        "{kills} kill -9 during updates of a {} MiB artifact ({} MiB/s served, chaos {}), {devices} devices, {:.0?}: \
         {succeeded}/{devices} succeeded, {bad} installs of a wrong file; per device on average: received at most \
         {received_ratio:.3}x the artifact (the device's count, one checkpoint added per kill), served {ratio:.3}x \
         (the emulator's count, with what the sockets held when a process was killed; worst {worst:.3}x)",
        a.size_mib,
        a.rate_mib,
        if a.chaos { "on" } else { "off" },
        started.elapsed()
    );
    assert_eq!(succeeded, devices, "every device ends in succeeded");
    assert_eq!(bad, 0, "no install of a wrong file");
}
