//! Many devices in one process over one `Gateway` (one shared SQLite store) against the
//! emulator in-process: each device keeps its own queue, identity and properties, also across a
//! restart of the whole gateway; one device's full queue does not hold the others back; the
//! devices cost no thread each.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Map, Value};
use spotflow_device::{Compression, DeviceClientBuilder, Error, Gateway};
use spotflow_emulator::{Emulator, MessageQuery};

const WAIT: Duration = Duration::from_secs(30);

/// The tests of this file count the process's threads: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

mod common;

fn configure(builder: DeviceClientBuilder, emu: &Emulator) -> DeviceClientBuilder {
    common::on_emulator(builder, emu, common::Proto::Mqtt).with_options(|o| o.start_timeout = WAIT)
}

/// This file's turn (its tests count threads), an emulator approving at once, a provisioning
/// token and a directory for the gateway's database.
async fn setup() -> (tokio::sync::MutexGuard<'static, ()>, Emulator, String, tempfile::TempDir) {
    let serial = SERIAL.lock().await;
    let emu = Emulator::builder().auto_approve(Some(Duration::ZERO)).start().await.unwrap();
    let token = emu.create_provisioning_token();
    (serial, emu, token, tempfile::tempdir().unwrap())
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// Threads of this process whose name starts with `prefix` (Linux; `None` elsewhere).
fn threads_named(prefix: &str) -> Option<usize> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    Some(
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.starts_with(prefix))
            .count(),
    )
}

/// Payloads stored for each device.
async fn stored_by_device(emu: &Emulator) -> BTreeMap<String, Vec<String>> {
    let mut by_device: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in emu.messages(MessageQuery { limit: Some(100_000), ..Default::default() }).await {
        by_device.entry(m.hub_device_id.clone()).or_default().push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    by_device
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_devices_of_a_gateway_keep_their_queues_identities_and_properties_apart() {
    let (_serial, emu, token, dir) = setup().await;
    let db = dir.path().join("gateway.db");
    let names = ["press-1", "press-2", "oven-1"];
    let gateway = Gateway::open(&db).await.unwrap();
    // The gateway's threads (names as the kernel keeps them: 15 bytes): its store's and its
    // callbacks', once the latter has named itself (a thread of an earlier test that is still
    // ending can only make the counts go down).
    let deadline = std::time::Instant::now() + WAIT;
    let (store_threads, callback_threads) = loop {
        let counts = (threads_named("spotflow-sqlite"), threads_named("spotflow-desire"));
        if counts.0.is_none_or(|n| n >= 1) && counts.1.is_none_or(|n| n >= 1) {
            break counts;
        }
        assert!(std::time::Instant::now() < deadline, "the gateway's threads: {counts:?}");
        tokio::task::yield_now().await;
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, u64, Value)>();
    let mut clients = Vec::new();
    for name in names {
        let tx = tx.clone();
        let callback = move |d: spotflow_device::DesiredProperties| {
            drop(tx.send((name.to_owned(), d.version, Value::Object(d.values))));
        };
        let builder = gateway.device(name, &token).await.unwrap().desired_properties_updated_callback(callback);
        clients.push(configure(builder, &emu).start().await.unwrap());
    }
    // No thread per device: three clients with callbacks added no store or callback thread.
    if let (Some(before), Some(after)) = (store_threads, threads_named("spotflow-sqlite")) {
        assert!(after <= before, "{before} store threads before the clients, {after} with them");
    }
    if let (Some(before), Some(after)) = (callback_threads, threads_named("spotflow-desire")) {
        assert!(after <= before, "{before} callback threads before the clients, {after} with them");
    }
    // A second client of a device in use is refused.
    let err = gateway.device("press-1", &token).await.unwrap_err();
    assert!(err.to_string().contains("already in use"), "{err}");

    for (client, name) in clients.iter().zip(names) {
        assert_eq!(client.device_id(), name);
        let sender = client.create_stream_sender(Some("line"), Some("telemetry"), Compression::Uncompressed).unwrap();
        for i in 0..5 {
            sender.enqueue_message(format!("{name} {i}")).await.unwrap();
        }
    }
    for client in &clients {
        client.wait_enqueued_messages_sent_timeout(WAIT).await.unwrap();
    }
    let stored = stored_by_device(&emu).await;
    for name in names {
        let expected: Vec<String> = (0..5).map(|i| format!("{name} {i}")).collect();
        assert_eq!(stored.get(&format!("ws-emulator:{name}")), Some(&expected), "{name}'s messages, only its own");
    }

    // Desired and reported properties, each device its own.
    let mut initial = BTreeMap::new();
    for _ in names {
        let (name, version, values) = tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap();
        initial.insert(name, (version, values));
    }
    assert!(initial.values().all(|v| *v == (1, json!({}))), "{initial:?}");
    for (i, name) in names.iter().enumerate() {
        emu.update_desired(&format!("ws-emulator:{name}"), obj(json!({"setpoint": i * 10}))).unwrap();
    }
    let mut updated = BTreeMap::new();
    for _ in names {
        let (name, version, values) = tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap();
        updated.insert(name, (version, values));
    }
    for (i, name) in names.iter().enumerate() {
        assert_eq!(updated[*name], (2, json!({"setpoint": i * 10})), "{name}'s own desired properties");
    }
    for (client, name) in clients.iter().zip(names) {
        client.update_reported_properties(json!({"name": name})).await.unwrap();
    }
    for (client, name) in clients.iter().zip(names) {
        client.wait_reported_properties_sent_timeout(WAIT).await.unwrap();
        let twin = emu.twin(&format!("ws-emulator:{name}")).unwrap();
        assert_eq!(Value::Object(twin.reported), json!({"name": name}));
    }

    // A device that is offline keeps its queue in the gateway's store while the others go on.
    let provisioned = emu.operations().len();
    for client in &clients {
        client.close().await.unwrap();
    }
    drop(clients);
    gateway.close().await.unwrap();
    drop(gateway);

    // The whole gateway again: every device finds its identity (no new provisioning), its
    // desired properties and its own queue.
    let gateway = Gateway::open(&db).await.unwrap();
    let mut clients = Vec::new();
    for name in names {
        clients.push(configure(gateway.device(name, &token).await.unwrap(), &emu).start().await.unwrap());
    }
    assert_eq!(emu.operations().len(), provisioned, "no device provisioned again");
    for (i, (client, name)) in clients.iter().zip(names).enumerate() {
        assert_eq!(client.device_id(), name);
        let desired = client.get_desired_properties();
        assert_eq!((desired.version, Value::Object(desired.values)), (2, json!({"setpoint": i * 10})));
        let sender = client.create_stream_sender(Some("line"), Some("telemetry"), Compression::Uncompressed).unwrap();
        sender.send_message(format!("{name} again")).await.unwrap();
    }
    let stored = stored_by_device(&emu).await;
    for name in names {
        let own = &stored[&format!("ws-emulator:{name}")];
        assert_eq!(own.len(), 6);
        assert_eq!(own.last().map(String::as_str), Some(format!("{name} again").as_str()));
    }
    for client in &clients {
        client.close().await.unwrap();
    }
    gateway.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_devices_full_queue_does_not_hold_the_others_back() {
    let (_serial, emu, token, dir) = setup().await;
    let gateway = Gateway::open(dir.path().join("gateway.db")).await.unwrap();
    // `stuck` registers over HTTPS but its MQTT port is closed: nothing it queues leaves.
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let stuck = configure(gateway.device("stuck", &token).await.unwrap(), &emu)
        .with_network(move |n| n.mqtt_port = closed_port)
        .with_options(|o| o.queue_budget_bytes = 16 * 1024)
        .start()
        .await
        .unwrap();
    let flowing = configure(gateway.device("flowing", &token).await.unwrap(), &emu).start().await.unwrap();
    let stuck_sender = stuck.create_stream_sender(None, None, Compression::Uncompressed).unwrap();
    let flowing_sender = flowing.create_stream_sender(None, None, Compression::Uncompressed).unwrap();
    let payload = "x".repeat(1000);
    let mut accepted = 0;
    let full = loop {
        assert!(accepted < 1000, "the 16 KiB budget holds at most a few dozen 1 KB messages");
        match stuck_sender.enqueue_message(payload.clone()).await {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(full, Error::QueueFull { .. }), "{full}");
    assert!(accepted > 0);
    // The other device enqueues and delivers as if nothing happened, while `stuck` stays full.
    for i in 0..200 {
        flowing_sender.enqueue_message(format!("flowing {i}")).await.unwrap();
    }
    flowing.wait_enqueued_messages_sent_timeout(WAIT).await.unwrap();
    let stored = stored_by_device(&emu).await;
    assert_eq!(stored.get("ws-emulator:flowing").map(Vec::len), Some(200));
    assert_eq!(stored.get("ws-emulator:stuck"), None, "nothing left the stuck device");
    assert_eq!(stuck.pending_messages_count(), accepted);
    assert!(matches!(stuck_sender.enqueue_message(payload).await, Err(Error::QueueFull { .. })));
    for client in [&stuck, &flowing] {
        client.close().await.unwrap();
    }
    gateway.close().await.unwrap();
}

#[test]
fn the_blocking_gateway_runs_all_its_clients_on_one_runtime() {
    let _serial = SERIAL.blocking_lock();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let emu = rt.block_on(Emulator::builder().auto_approve(Some(Duration::ZERO)).start()).unwrap();
    // The emulator needs a runtime that runs on its own while this thread blocks.
    let driver = std::thread::spawn(move || rt.block_on(async { tokio::time::sleep(WAIT * 2).await }));
    let token = emu.create_provisioning_token();
    let dir = tempfile::tempdir().unwrap();
    let gateway = spotflow_device::blocking::Gateway::open(dir.path().join("gateway.db")).unwrap();
    let first = configure_blocking(gateway.device("line-0", &token).unwrap(), &emu).start().unwrap();
    // The runtime's threads are named `spotflow-worker`: its workers, and its blocking pool's
    // threads (name resolution at connect), which come and go. A runtime per client would add a
    // worker thread (and a pool) for each of the 8 more clients; the gateway's adds at most a few
    // pool threads.
    let workers = threads_named("spotflow-worker");
    let mut clients = vec![first];
    for i in 1..=8 {
        clients.push(configure_blocking(gateway.device(format!("line-{i}"), &token).unwrap(), &emu).start().unwrap());
    }
    if let (Some(before), Some(after)) = (workers, threads_named("spotflow-worker")) {
        assert!(after <= before + 3, "{before} runtime threads with one client, {after} with nine");
    }
    for (i, client) in clients.iter().enumerate() {
        let sender = client.create_stream_sender(None, None, Compression::Uncompressed).unwrap();
        sender.send_message(format!("line-{i} says hello")).unwrap();
        assert_eq!(client.device_id(), format!("line-{i}"));
    }
    for client in clients {
        client.close().unwrap();
    }
    gateway.close().unwrap();
    drop(emu);
    drop(driver);
}

fn configure_blocking(
    builder: spotflow_device::blocking::DeviceClientBuilder,
    emu: &Emulator,
) -> spotflow_device::blocking::DeviceClientBuilder {
    builder
        .instance(emu.https_url())
        .trust_ca_pem(emu.ca_pem())
        .with_network(common::emulator_network(emu.mqtts_addr().expect("mqtts").port()))
        .display_provisioning_operation_callback(|_| {})
        .with_options(|o| {
            common::quick(o);
            o.start_timeout = WAIT;
        })
}
