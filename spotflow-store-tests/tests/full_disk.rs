//! A real full disk under each durable store: the store's directory is a small tmpfs (8 MiB) in a
//! private mount namespace (`unshare -rm`), and a child process appends 4 KiB messages, with no
//! free-space reserve, until the file system's own ENOSPC stops them. The append fails with a
//! clear error and keeps failing cleanly; closed and opened again on the full disk, the store
//! either opens with every acknowledged message or fails with an error; once the file system is
//! grown, it opens with every acknowledged message intact and takes appends again.
//!
//! Needs user namespaces (`unshare -rm`); where the machine has none, set
//! `SPOTFLOW_SKIP_TMPFS=1` to skip it (the free-space check itself is unit-tested).
#![cfg(unix)]

use std::process::{Command, Stdio};
use std::time::Duration;

fn run_on_tmpfs(backend: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new("unshare")
        .args(["-rm", "sh", "-c", r#"mount -t tmpfs -o size=8m tmpfs "$1" && exec "$2" "$3" "$1""#, "_"])
        .arg(dir.path())
        .arg(env!("CARGO_BIN_EXE_full-disk-child"))
        .arg(backend)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare runs");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || drop(tx.send(child.wait_with_output())));
    let out = rx.recv_timeout(Duration::from_secs(120)).expect("the child finishes").expect("output");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{backend}: {}\n{stdout}\n{stderr}", out.status);
    stdout.into_owned()
}

#[test]
fn every_backend_fails_cleanly_on_a_full_disk_and_keeps_what_it_acknowledged() {
    if std::env::var_os("SPOTFLOW_SKIP_TMPFS").is_some() {
        eprintln!("skipped: SPOTFLOW_SKIP_TMPFS is set");
        return;
    }
    for backend in spotflow_store_tests::BACKENDS {
        let out = run_on_tmpfs(backend);
        let line = |tag: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(tag).map(str::to_owned))
                .unwrap_or_else(|| panic!("{backend}: no {tag} in\n{out}"))
        };
        let full = line("FULL ");
        let (acked, error) = full.split_once(' ').unwrap();
        let acked: usize = acked.parse().unwrap();
        // 8 MiB of 4 KiB messages: hundreds fit, not thousands more than the space.
        assert!((100..2048).contains(&acked), "{backend}: {acked} acknowledged");
        assert!(
            error.contains("No space left on device") || error.contains("disk") && error.contains("full"),
            "{backend}: {error}"
        );
        assert!(error.contains("device.db"), "{backend}: the error names the store: {error}");
        assert!(!line("STILL_FULL ").is_empty());
        let on_full_disk = match out.lines().find_map(|l| l.strip_prefix("REOPEN_FULL_FAILED ")) {
            Some(error) => format!("refused to open on the full disk ({error})"),
            None => {
                assert_eq!(line("REOPENED_FULL "), format!("{acked} true"), "{backend}: reopened on the full disk");
                "opened again on the full disk with all of them".to_owned()
            }
        };
        assert_eq!(line("REOPENED "), format!("{acked} true"), "{backend}: every acknowledged message, intact");
        assert!(out.lines().any(|l| l == "APPENDED"), "{backend}: appends again\n{out}");
        println!(
            "{backend}: {acked} messages acknowledged before ENOSPC ({error}); {on_full_disk}; all intact after growing the disk"
        );
    }
}
