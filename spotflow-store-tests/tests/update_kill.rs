//! `kill -9` at every state of a software update: a device process (`device-child` with
//! `UPDATE=1`) is killed right after it saved each state (downloading with bytes on disk,
//! verifying, ready, installing and confirming with the handler running, rebooting), then
//! started again until the update is over. Each time: the update succeeds, every install was
//! handed the whole verified artifact (its SHA-256 printed by the handler), the installed copy is
//! the artifact, the health check ran after the last install, no file is left beside the
//! database, and the bytes served stay within the artifact plus one checkpoint and what a cut
//! connection had in flight.
//!
//! Unix only: the full disk is a tmpfs mounted in a user namespace (`unshare`, through an
//! executable shell script).
#![cfg(unix)]

use std::time::{Duration, Instant};

use spotflow_emulator::updates::RolloutRequest;
use spotflow_store_tests::{stdout_lines, DeviceChild};

const SIZE: usize = 4 << 20;
const CHECKPOINT: u64 = 256 * 1024;

/// Runs the child until it prints a line `until` accepts (then kills it) or exits; returns its
/// lines.
fn run(device: &DeviceChild, run: usize, until: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut child = device.spawn(run, 0);
    let (rx, reader) = stdout_lines(&mut child);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let stop = until(&line);
        lines.push(line);
        if stop {
            let _ = child.kill();
            break;
        }
    }
    let _ = child.kill();
    child.wait().expect("reaped");
    reader.join().expect("reader");
    lines.extend(rx.try_iter());
    lines
}

#[test]
fn kill_9_at_every_state_resumes_or_redoes_and_never_installs_a_partial_file() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (emu, base) = spotflow_store_tests::emulator_and_child(&rt, dir.path(), env!("CARGO_BIN_EXE_device-child"), 1);
    let bytes = spotflow_store_tests::pseudo_random_bytes(SIZE, 3);
    let info = emu.publish_artifact(bytes.clone().into(), "9.9.9").unwrap();
    // Served at 8 MiB/s, so that a kill lands mid-download (a rate limit on the device's side
    // would let the server fill the sockets' buffers ahead of it).
    let slow =
        spotflow_emulator::updates::ArtifactFaults { slow_bytes_per_second: Some(8 << 20), ..Default::default() };
    emu.set_artifact_faults(&info.id, slow).unwrap();
    let states = ["downloading", "verifying", "ready", "installing", "rebooting", "confirming"];
    for (n, state) in states.iter().enumerate() {
        let device_id = format!("upd-{state}");
        let (mut device, install_dir) = base.updater(&emu, dir.path(), &device_id);
        device.env.extend([
            ("UPDATE_CHECKPOINT".into(), CHECKPOINT.to_string()),
            ("UPDATE_HANDLER_DELAY_MS".into(), "300".into()),
        ]);
        // Registers the device (nothing to update yet).
        let first = run(&device, n * 10, &|l| l.starts_with("STATE idle"));
        assert!(first.iter().any(|l| l == "READY"), "{first:?}");
        let hub_id = emu
            .devices()
            .into_iter()
            .find(|d| d.device_id == device_id)
            .map(|d| d.hub_device_id)
            .expect("the device registered");
        let rollout = emu
            .start_rollout(&RolloutRequest { artifact: info.id.clone(), devices: vec![hub_id], ..Default::default() })
            .unwrap();

        // Killed right after it saved `state`.
        let target = format!("STATE {state} ");
        let reached = |l: &str| {
            l.strip_prefix(&target).is_some_and(|rest| {
                let downloaded = rest.split(' ').next().and_then(|d| d.parse::<u64>().ok()).unwrap_or(0);
                *state != "downloading" || downloaded >= 1 << 20
            })
        };
        // (Confirming comes in the process after the reboot.)
        let mut all = Vec::new();
        for r in 1..4 {
            all.extend(run(&device, n * 10 + r, &reached));
            if all.iter().any(|l| reached(l)) {
                break;
            }
        }
        assert!(all.iter().any(|l| reached(l)), "never reached {state}: {all:?}");

        // Started again until the update is over (a reboot the update asks for exits the process).
        let mut fin = None;
        for r in 4..10 {
            let lines = run(&device, n * 10 + r, &|_| false);
            fin = lines.iter().find_map(|l| l.strip_prefix("FINAL ").map(str::to_owned));
            all.extend(lines);
            if fin.is_some() {
                break;
            }
        }
        assert_eq!(fin.as_deref(), Some("succeeded "), "killed at {state}: {all:?}");
        let installs: Vec<&String> = all.iter().filter(|l| l.starts_with("INSTALL ")).collect();
        assert!(!installs.is_empty(), "installed (killed at {state})");
        for line in &installs {
            assert_eq!(
                line.as_str(),
                format!("INSTALL {rollout} {}", info.sha256),
                "killed at {state}: a partial or unverified install"
            );
        }
        let last_install = all.iter().rposition(|l| l.starts_with("INSTALL ")).unwrap();
        assert!(all[last_install..].iter().any(|l| l == &format!("CONFIRM {rollout}")), "confirmed after the install");
        assert!(std::fs::read(install_dir.join(&rollout)).unwrap() == bytes, "the installed copy is the artifact");
        let update_dir = std::path::PathBuf::from(format!("{}-update", device.db.display())).join(&device_id);
        let left: Vec<_> = std::fs::read_dir(&update_dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "files left after the update (killed at {state}): {left:?}");
        let progress = emu.rollout(&rollout).unwrap().devices[0].clone();
        assert_eq!(progress.state, "succeeded");
        // A kill while downloading loses at most one checkpoint; what a killed connection had in
        // the kernel's buffers was served and never received.
        assert!(
            progress.bytes_served <= SIZE as u64 + CHECKPOINT + (1 << 20),
            "killed at {state}: {} bytes served for {SIZE}",
            progress.bytes_served
        );
        println!(
            "killed at {state}: {} runs, {} bytes served, {} installs",
            all.iter().filter(|l| *l == "READY").count() + 1,
            progress.bytes_served,
            installs.len()
        );
    }
}

/// A real full disk: the device's database and update directory on an 8 MiB tmpfs (in a private
/// mount namespace, `unshare -rm`), a 16 MiB artifact: the update fails (`diskFull`) before a
/// byte is downloaded. Skipped with `SPOTFLOW_SKIP_TMPFS=1` (machines without user namespaces).
#[test]
fn an_update_that_does_not_fit_on_the_disk_fails_before_downloading() {
    use std::os::unix::fs::PermissionsExt;
    if std::env::var_os("SPOTFLOW_SKIP_TMPFS").is_some() {
        eprintln!("skipped: SPOTFLOW_SKIP_TMPFS is set");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (emu, base) = spotflow_store_tests::emulator_and_child(&rt, dir.path(), env!("CARGO_BIN_EXE_device-child"), 1);
    let small = dir.path().join("small-disk");
    std::fs::create_dir_all(&small).unwrap();
    let (mut device, _) = base.updater(&emu, dir.path(), "upd-full-disk");
    device.db = small.join("device.db");
    // The child runs on its own small file system.
    let wrapper = dir.path().join("on-small-disk.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec unshare -rm sh -c 'mount -t tmpfs -o size=8m tmpfs \"$1\" && exec \"$2\"' _ '{}' '{}'\n",
            small.display(),
            device.exe.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    device.exe = wrapper;
    let first = run(&device, 0, &|l| l.starts_with("STATE idle"));
    assert!(first.iter().any(|l| l == "READY"), "the device starts on the small disk: {first:?}");
    let hub_id = emu.devices().into_iter().find(|d| d.device_id == "upd-full-disk").expect("registered").hub_device_id;
    let info = emu.publish_artifact(spotflow_store_tests::pseudo_random_bytes(16 << 20, 5).into(), "big").unwrap();
    let rollout =
        emu.start_rollout(&RolloutRequest { artifact: info.id, devices: vec![hub_id], ..Default::default() }).unwrap();
    let lines = run(&device, 1, &|l| l.starts_with("FINAL "));
    assert!(lines.iter().any(|l| l == "FINAL failed diskFull"), "{lines:?}");
    let progress = emu.rollout(&rollout).unwrap().devices[0].clone();
    assert_eq!(progress.bytes_served, 0, "failed before downloading");
}
