//! Update download throughput and CPU per MiB: the SDK's update agent (a `device-child` process
//! with `UPDATE=1`, installing nothing) against `curl` fetching the same artifact URL from the
//! same emulator (in this process), alternating, `--runs` times each; medians. The SDK's time is
//! from the rollout (the manifest set; the agent looks every 20 ms) to the whole file synced
//! (`verifying`), and to
//! the SHA-256 checked (`ready`); curl's is its `time_total` writing to a file. CPU: the
//! processes' user + system time over the same spans (the SDK's from its own `/proc` figures,
//! curl's as a waited-for child), 10 ms resolution.
//!
//! `cargo bench -p spotflow-store-tests --bench update_download -- [--size MiB] [--runs N] [--checkpoint BYTES]`

use std::time::{Duration, Instant};

use spotflow_emulator::updates::RolloutRequest;
use spotflow_store_tests::{proc_cpu_us, stdout_lines};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let (mut size_mib, mut runs, mut checkpoint) = (200usize, 5usize, None::<u64>);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--size" => size_mib = value().parse().expect("--size MiB"),
            "--runs" => runs = value().parse().expect("--runs N"),
            "--checkpoint" => checkpoint = Some(value().parse().expect("--checkpoint BYTES")),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (emu, device) =
        spotflow_store_tests::emulator_and_child(&rt, dir.path(), env!("CARGO_BIN_EXE_device-child"), 1);
    let bytes: Vec<u8> = (0..size_mib << 20).map(|i| (i as u64).wrapping_mul(2_654_435_761) as u8).collect();
    let info = emu.publish_artifact(bytes.into(), "bench").unwrap();
    let mib = info.size as f64 / f64::from(1 << 20);
    let (mut device, _) = device.updater(&emu, dir.path(), "bench-updater");
    device.env.push(("UPDATE_INSTALL".into(), "none".into()));
    if let Some(c) = checkpoint {
        device.env.push(("UPDATE_CHECKPOINT".into(), c.to_string()));
    }
    let out = dir.path().join("curl.out");
    let (mut sdk_mibs, mut sdk_verified_mibs, mut sdk_cpu, mut curl_mibs, mut curl_cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        // The SDK: a device process, a rollout to it, timed from its lines.
        let mut child = device.spawn(run, 0);
        let (rx, reader) = stdout_lines(&mut child);
        let wait = Duration::from_secs(600);
        let idle = loop {
            let line = rx.recv_timeout(wait).expect("the device starts");
            if line.starts_with("STATE ") {
                break line;
            }
        };
        // The process's CPU before the update (an idle client uses none): the start of the span.
        let cpu0: u64 = idle.rsplit(' ').next().unwrap().parse().unwrap();
        let hub_id =
            emu.devices().into_iter().find(|d| d.device_id == "bench-updater").expect("registered").hub_device_id;
        let rollout = emu
            .start_rollout(&RolloutRequest { artifact: info.id.clone(), devices: vec![hub_id], ..Default::default() })
            .unwrap();
        // From the manifest's publication (the agent looks every 20 ms).
        let t0 = Instant::now();
        let (mut t_synced, mut cpu_synced, mut t_ready) = (None, 0, None);
        loop {
            let line = rx.recv_timeout(wait).expect("the update goes on");
            let now = Instant::now();
            let f: Vec<&str> = line.split(' ').collect();
            if std::env::var_os("DEBUG_LINES").is_some() {
                eprintln!("{line}");
            }
            match f.as_slice() {
                ["STATE", "verifying", _, _, cpu] => {
                    t_synced = Some(now);
                    cpu_synced = cpu.parse::<u64>().unwrap();
                }
                // (`ready` may be passed over when the install follows at once.)
                ["STATE", "ready" | "installing" | "confirming" | "succeeded", ..] if t_ready.is_none() => {
                    t_ready = Some(now)
                }
                ["FINAL", state, ..] => {
                    assert_eq!(*state, "succeeded", "{line}");
                    break;
                }
                _ => {}
            }
        }
        let _ = child.kill();
        child.wait().unwrap();
        reader.join().unwrap();
        let t_synced = t_synced.expect("the agent reported verifying");
        sdk_mibs.push(mib / (t_synced - t0).as_secs_f64());
        sdk_verified_mibs.push(mib / (t_ready.unwrap() - t0).as_secs_f64());
        sdk_cpu.push((cpu_synced - cpu0) as f64 / mib);
        let _ = rollout;

        // curl: the same artifact over the same HTTPS server (a rollout's URL of its own).
        let hub_id = emu.devices().into_iter().find(|d| d.device_id == "bench-updater").unwrap().hub_device_id;
        let curl_rollout = emu
            .start_rollout(&RolloutRequest { artifact: info.id.clone(), devices: vec![hub_id], ..Default::default() })
            .unwrap();
        let desired = emu.twin(&emu.devices()[0].hub_device_id).unwrap().desired;
        let url = desired["spotflowUpdate"]["url"].as_str().unwrap().to_owned();
        assert!(url.contains("/updates/"), "{curl_rollout}: {url}");
        let cpu_before = proc_cpu_us("self", true);
        let output = std::process::Command::new("curl")
            .args(["-sS", "--fail", "-o"])
            .arg(&out)
            .arg("--cacert")
            .arg(&device.ca)
            .args(["-w", "%{time_total}", &url])
            .output()
            .expect("curl runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let seconds: f64 = String::from_utf8_lossy(&output.stdout).trim().parse().expect("time_total");
        curl_cpu.push((proc_cpu_us("self", true) - cpu_before) as f64 / mib);
        curl_mibs.push(mib / seconds);
        assert_eq!(std::fs::metadata(&out).unwrap().len(), info.size);
        println!(
            "run {run}: SDK {:.0} MiB/s downloaded ({:.0} MiB/s with the SHA-256), {:.2} ms CPU/MiB; curl {:.0} MiB/s, {:.2} ms CPU/MiB",
            sdk_mibs[run],
            sdk_verified_mibs[run],
            sdk_cpu[run] / 1000.0,
            curl_mibs[run],
            curl_cpu[run] / 1000.0
        );
    }
    let (s, sv, sc, c, cc) =
        (median(sdk_mibs), median(sdk_verified_mibs), median(sdk_cpu), median(curl_mibs), median(curl_cpu));
    println!(
        "{size_mib} MiB artifact, medians of {runs}: SDK {s:.0} MiB/s downloaded and synced ({sv:.0} MiB/s with the SHA-256 check), \
         {:.2} ms CPU per MiB; curl {c:.0} MiB/s, {:.2} ms CPU per MiB; throughput {:.2}x curl's, CPU {:.2}x",
        sc / 1000.0,
        cc / 1000.0,
        s / c,
        sc / cc.max(1.0)
    );
}
