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
    let (stored, acked, duplicates) =
        kill_then_drain("gateway.db", |c| c.gateway_devices = Some(4), 10, 500, 20..300, 7);
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
    exactly_once("gateway of 4 devices: 10 kills", &counts, &acked, duplicates);
}

/// `backend`: a store of `spotflow_store_tests::BACKENDS`, or the device's default.
fn killed_while_sending(backend: Option<&str>) {
    let cycles = 20;
    let (stored, acked, duplicates) =
        kill_then_drain("device.db", |c| c.backend = backend.map(String::from), cycles, 2000, 5..150, 42);
    let mut counts: HashMap<String, usize> = HashMap::new();
    for m in &stored {
        *counts.entry(m.message_id.clone().unwrap()).or_default() += 1;
    }
    assert!(!acked.is_empty(), "the device acknowledged enqueues before being killed");
    exactly_once(&format!("{backend:?}: {cycles} kills"), &counts, &acked, duplicates);
}

/// Every acknowledged enqueue stored once, and nothing stored twice (`counts`: how many times each
/// message id was stored).
fn exactly_once(run: &str, counts: &HashMap<String, usize>, acked: &[String], duplicates: u64) {
    for id in acked {
        assert_eq!(counts.get(id), Some(&1), "{id}: acknowledged, so stored exactly once");
    }
    assert!(counts.values().all(|n| *n == 1), "nothing stored twice");
    let stored: usize = counts.values().sum();
    println!(
        "{run}: {} acknowledged enqueues all stored exactly once; {stored} stored in all; {duplicates} redeliveries dropped by message key",
        acked.len(),
    );
}

/// Starts the emulator in-process and the device child (database `db` in a temporary directory,
/// changed by `setup`), kills it `cycles` times at a random moment (`alive_ms` after it is ready)
/// while it enqueues `count` messages, and lets a last run deliver what is still queued. Returns
/// what the emulator stored, the ids whose enqueue had returned, and the redeliveries the
/// emulator dropped by message key.
fn kill_then_drain(
    db: &str,
    setup: impl FnOnce(&mut DeviceChild),
    cycles: usize,
    count: u32,
    alive_ms: std::ops::Range<u64>,
    seed: u64,
) -> (Vec<spotflow_emulator::StoredMessage>, Vec<String>, u64) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let emu = rt
        .block_on(Emulator::builder().data_dir(dir.path().join("emulator")).auto_approve(Some(Duration::ZERO)).start())
        .unwrap();
    let mut device = DeviceChild::for_emulator(env!("CARGO_BIN_EXE_device-child"), &emu, dir.path().join(db));
    setup(&mut device);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut acked: Vec<String> = Vec::new();
    for run in 0..cycles {
        // Killed at a random moment while it enqueues and sends.
        acked.extend(device.run_and_kill(run, count, Duration::from_millis(rng.u64(alive_ms.clone()))));
    }
    // A last run, not killed, delivers what is still queued.
    assert!(device.drain(cycles), "the last run finishes");
    let stored = rt.block_on(emu.messages(MessageQuery { limit: Some(1_000_000), ..Default::default() }));
    (stored, acked, emu.duplicates())
}
