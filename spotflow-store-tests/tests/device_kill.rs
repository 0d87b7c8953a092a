//! The device killed with SIGKILL while it sends to the emulator, again and again, on the same
//! database: in the end the emulator holds every acknowledged enqueue exactly once. Redeliveries
//! after a kill carry the same message key (`$.mid` = queue id + persistent sequence number), so
//! the platform recognises and drops them.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use spotflow_emulator::{Emulator, MessageQuery};

fn child(
    backend: Option<&str>,
    emu: &Emulator,
    token: &str,
    db: &std::path::Path,
    ca: &std::path::Path,
    run: usize,
    count: u32,
) -> std::process::Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_device-child"));
    if let Some(backend) = backend {
        command.env("BACKEND", backend);
    }
    command
        .env("INSTANCE", emu.https_url())
        .env("CA_FILE", ca)
        .env("MQTT_PORT", emu.mqtts_addr().unwrap().port().to_string())
        .env("PROVISIONING_TOKEN", token)
        .env("DB", db)
        .env("RUN", run.to_string())
        .env("COUNT", count.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("device child starts")
}

#[test]
fn a_device_killed_while_sending_delivers_every_message_exactly_once() {
    killed_while_sending(None);
}

#[test]
fn a_device_on_sled_killed_while_sending_delivers_every_message_exactly_once() {
    killed_while_sending(Some("sled"));
}

/// `backend`: a store of `spotflow_store_tests::BACKENDS`, or the device's default.
fn killed_while_sending(backend: Option<&str>) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let emu = rt
        .block_on(Emulator::builder().data_dir(dir.path().join("emulator")).auto_approve(Some(Duration::ZERO)).start())
        .unwrap();
    let ca = emu.ca_path().unwrap().to_path_buf();
    let token = emu.create_provisioning_token();
    let db = dir.path().join("device.db");
    let mut rng = fastrand::Rng::with_seed(42);
    let mut acked: Vec<String> = Vec::new();
    let cycles = 20;
    for run in 0..cycles {
        let mut c = child(backend, &emu, &token, &db, &ca, run, 2000);
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = c.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = rx.recv_timeout(Duration::from_secs(30)).expect("the device starts");
        assert_eq!(ready, "READY");
        // Kill at a random moment while it enqueues and sends.
        std::thread::sleep(Duration::from_millis(rng.u64(5..150)));
        c.kill().unwrap();
        c.wait().unwrap();
        reader.join().unwrap();
        for line in rx.try_iter() {
            if let Some(rest) = line.strip_prefix("ACK ") {
                let mut p = rest.split(' ');
                let (r, i) = (p.next().unwrap(), p.next().unwrap());
                acked.push(format!("r{r}-{i}"));
            }
        }
    }
    // A last run, not killed, delivers what is still queued.
    let mut last = child(backend, &emu, &token, &db, &ca, cycles, 0);
    let out = BufReader::new(last.stdout.take().unwrap()).lines().map_while(Result::ok).collect::<Vec<_>>();
    assert!(last.wait().unwrap().success(), "the last run finishes");
    assert!(out.contains(&"DONE".to_owned()));
    let stored = rt.block_on(emu.messages(MessageQuery { limit: Some(1_000_000), ..Default::default() }));
    let mut counts: HashMap<String, usize> = HashMap::new();
    for m in &stored {
        *counts.entry(m.message_id.clone().unwrap()).or_default() += 1;
    }
    assert!(!acked.is_empty(), "the device acknowledged enqueues before being killed");
    for id in &acked {
        assert_eq!(counts.get(id), Some(&1), "{id}: acknowledged, so stored exactly once");
    }
    assert!(counts.values().all(|n| *n == 1), "nothing stored twice");
    println!(
        "{backend:?}: {cycles} kills: {} acknowledged enqueues all stored exactly once; {} stored in all; {} redeliveries dropped by message key",
        acked.len(),
        stored.len(),
        emu.duplicates()
    );
}
