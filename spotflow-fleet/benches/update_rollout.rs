//! A software update rolled out to `--devices` (1,000) devices of one gateway process
//! (`update-gateway`: one `Gateway` store, a client and an update agent per device) against the
//! emulator (in this process): a `--size` KiB artifact, one rollout to all of them. Prints the
//! time from the first download to every agent's end, the time until the platform sees every
//! device `succeeded`, the gateway's peak memory, the bytes served; fails unless all succeeded.
//!
//! `cargo bench -p spotflow-fleet --bench update_rollout -- [--devices N] [--size KiB]`

use std::io::BufRead;
use std::time::{Duration, Instant};

use spotflow_emulator::updates::RolloutRequest;

fn main() {
    let (mut devices, mut size_kib) = (1000usize, 1024usize);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--devices" => devices = value().parse().expect("--devices N"),
            "--size" => size_kib = value().parse().expect("--size KiB"),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let emu = rt
        .block_on(
            spotflow_emulator::Emulator::builder()
                .data_dir(dir.path().join("emulator"))
                .auto_approve(Some(Duration::ZERO))
                .start(),
        )
        .expect("emulator");
    let artifact: Vec<u8> = (0..size_kib << 10).map(|i| (i * 31 % 251) as u8).collect();
    let info = emu.publish_artifact(artifact.into(), "fleet-2").unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_update-gateway"))
        .args(["--instance", &emu.https_url(), "--ca-file"])
        .arg(emu.ca_path().unwrap())
        .args(["--mqtt-port", &emu.mqtts_addr().unwrap().port().to_string()])
        .args(["--provisioning-token", &emu.create_provisioning_token(), "--db"])
        .arg(dir.path().join("gateway.db"))
        .args(["--devices", &devices.to_string(), "--key", &emu.update_public_key()])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gateway starts");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok);
    let started = Instant::now();
    assert_eq!(lines.next().as_deref(), Some("READY"), "the gateway starts");
    println!("{devices} devices connected from one gateway process in {:.1?}", started.elapsed());
    let hub_ids: Vec<String> = emu.devices().into_iter().map(|d| d.hub_device_id).collect();
    assert_eq!(hub_ids.len(), devices);
    let rolled = Instant::now();
    let rollout = emu
        .start_rollout(&RolloutRequest { artifact: info.id.clone(), devices: hub_ids, ..Default::default() })
        .unwrap();
    let done = lines.find(|l| l.starts_with("DONE ")).expect("the gateway reports");
    let agents_over = rolled.elapsed();
    let f: Vec<&str> = done.split(' ').collect();
    let (ok, failed, other, seconds, peak_kib) = (f[1], f[2], f[3], f[4], f[5]);
    // The platform's view: every device reported succeeded.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        let status = emu.rollout(&rollout).unwrap();
        if status.counts.get("succeeded") == Some(&devices) || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let platform_sees = rolled.elapsed();
    child.wait().expect("gateway exits");
    let served: u64 = status.devices.iter().map(|d| d.bytes_served).sum();
    println!(
        "rollout of a {size_kib} KiB artifact to {devices} devices of one gateway: agents {ok} succeeded, {failed} failed, \
         {other} unfinished, {seconds} s from the first download to the last agent's end ({:.1?} from the rollout); \
         the platform saw {:?} after {platform_sees:.1?}; gateway peak RSS {:.0} MiB; served {:.3}x the artifact per device",
        agents_over,
        status.counts,
        peak_kib.parse::<f64>().unwrap_or(0.0) / 1024.0,
        served as f64 / (devices as f64 * info.size as f64)
    );
    assert_eq!(ok.parse::<usize>().unwrap(), devices, "every agent succeeded");
    assert_eq!(status.counts.get("succeeded"), Some(&devices), "the platform sees every device succeeded");
}
