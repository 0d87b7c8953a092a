//! The device killed with SIGKILL while it sends to the emulator, again and again, on the same
//! database: in the end the emulator holds every acknowledged enqueue exactly once. Redeliveries
//! after a kill carry the same message key (`$.mid` = queue id + persistent sequence number), so
//! the platform recognises and drops them.

use std::collections::HashMap;
use std::time::Duration;

use spotflow_emulator::{Emulator, MessageQuery};
use spotflow_store_tests::DeviceChild;

#[test]
fn a_device_killed_while_sending_delivers_every_message_exactly_once() {
    killed_while_sending(None);
}

#[test]
fn a_device_on_sled_killed_while_sending_delivers_every_message_exactly_once() {
    killed_while_sending(Some("sled"));
}

/// A gateway process of four devices over one shared store, killed while all of them send: every
/// device's acknowledged enqueues are stored exactly once, as that device's.
#[test]
fn a_gateway_of_four_devices_killed_while_sending_delivers_every_message_exactly_once() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let emu = rt
        .block_on(Emulator::builder().data_dir(dir.path().join("emulator")).auto_approve(Some(Duration::ZERO)).start())
        .unwrap();
    let mut gateway =
        DeviceChild::for_emulator(env!("CARGO_BIN_EXE_device-child"), &emu, dir.path().join("gateway.db"));
    gateway.gateway_devices = Some(4);
    let mut rng = fastrand::Rng::with_seed(7);
    let mut acked: Vec<String> = Vec::new();
    let cycles = 10;
    for run in 0..cycles {
        acked.extend(gateway.run_and_kill(run, 500, Duration::from_millis(rng.u64(20..300))));
    }
    assert!(gateway.drain(cycles), "the last run finishes");
    let stored = rt.block_on(emu.messages(MessageQuery { limit: Some(1_000_000), ..Default::default() }));
    let mut counts: HashMap<String, usize> = HashMap::new();
    for m in &stored {
        let id = m.message_id.clone().unwrap();
        // `r{run}-d{device}-{i}` from device `gw-{device}`.
        let device = id.split('-').nth(1).and_then(|d| d.strip_prefix('d')).expect("a gateway message id");
        assert_eq!(m.hub_device_id, format!("ws-emulator:gw-{device}"), "{id} stored as its own device's");
        *counts.entry(id).or_default() += 1;
    }
    for d in 0..4 {
        assert!(acked.iter().any(|id| id.contains(&format!("-d{d}-"))), "device {d} acknowledged enqueues");
    }
    for id in &acked {
        assert_eq!(counts.get(id), Some(&1), "{id}: acknowledged, so stored exactly once");
    }
    assert!(counts.values().all(|n| *n == 1), "nothing stored twice");
    println!(
        "gateway of 4 devices: {cycles} kills: {} acknowledged enqueues all stored exactly once; {} stored in all; {} redeliveries dropped by message key",
        acked.len(),
        stored.len(),
        emu.duplicates()
    );
}

/// `backend`: a store of `spotflow_store_tests::BACKENDS`, or the device's default.
fn killed_while_sending(backend: Option<&str>) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let emu = rt
        .block_on(Emulator::builder().data_dir(dir.path().join("emulator")).auto_approve(Some(Duration::ZERO)).start())
        .unwrap();
    let mut device = DeviceChild::for_emulator(env!("CARGO_BIN_EXE_device-child"), &emu, dir.path().join("device.db"));
    device.backend = backend.map(String::from);
    let mut rng = fastrand::Rng::with_seed(42);
    let mut acked: Vec<String> = Vec::new();
    let cycles = 20;
    for run in 0..cycles {
        // Killed at a random moment while it enqueues and sends.
        acked.extend(device.run_and_kill(run, 2000, Duration::from_millis(rng.u64(5..150))));
    }
    // A last run, not killed, delivers what is still queued.
    assert!(device.drain(cycles), "the last run finishes");
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
