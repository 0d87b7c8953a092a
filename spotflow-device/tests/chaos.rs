//! The SDK against the emulator through `spotflow-chaos`: faults a real network has and a test
//! on loopback does not.

use std::sync::Arc;
use std::time::{Duration, Instant};

use spotflow_chaos::{ChaosProxy, Condition, Fault};
use spotflow_core::MemoryStore;
use spotflow_device::{Compression, DeviceClient, Message};
use spotflow_emulator::Emulator;

mod common;

const WAIT: Duration = Duration::from_secs(30);

async fn device_through(emu: &Emulator, proxy: &ChaosProxy) -> DeviceClient {
    let port = proxy.addr().port();
    DeviceClient::builder(Some("chaos-device"), emu.create_provisioning_token(), "device.db")
        .instance(emu.https_url())
        .trust_ca_pem(emu.ca_pem())
        .with_network(common::emulator_network(port))
        .store(Arc::new(MemoryStore::new()))
        .display_provisioning_operation_callback(|_| {})
        .with_options(common::faulty_link)
        .start()
        .await
        .expect("device starts")
}

/// An emulator, a chaos proxy in front of its MQTT port, and a device connected through it.
async fn device_behind_a_proxy() -> (Emulator, ChaosProxy, DeviceClient) {
    let emu = Emulator::builder().auto_approve(Some(Duration::ZERO)).start().await.unwrap();
    let proxy = ChaosProxy::start(emu.mqtts_addr().unwrap()).await.unwrap();
    let client = device_through(&emu, &proxy).await;
    (emu, proxy, client)
}

/// Waits (bounded) until `done` holds, checking every 20 ms.
async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_link_is_replaced_and_delivery_resumes() {
    let (emu, proxy, client) = device_behind_a_proxy().await;
    let sender = client.create_stream_sender(Some("g"), Some("s"), Compression::Uncompressed).unwrap();
    for i in 0..20 {
        sender.enqueue_message(Message::new(format!("before {i}"))).await.unwrap();
    }
    client.wait_enqueued_messages_sent_timeout(WAIT).await.unwrap();
    assert_eq!(proxy.open_connections(), 1);

    // The link goes silent, without a reset, while messages are in flight.
    proxy.set_condition(Condition::Blackhole);
    for i in 0..20 {
        sender.enqueue_message(Message::new(format!("during {i}"))).await.unwrap();
    }
    // The SDK gives the silent connection up after the stall timeout (2 s), not the keep-alive
    // (60 s), and keeps trying new ones.
    until("the stalled connection closed", Duration::from_secs(15), || {
        proxy.log().iter().any(|l| l.contains("#1 peer closed"))
    })
    .await;
    assert_eq!(emu.message_count().await, 20, "nothing passes the blackhole");

    proxy.set_condition(Condition::Pass);
    client.wait_enqueued_messages_sent_timeout(WAIT).await.expect("delivery resumes");
    assert!(emu.wait_for_messages(40, WAIT).await);
    assert_eq!(emu.message_count().await, 40, "each message once");
    assert_eq!(client.pending_messages_count(), 0);
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_closes_latency_and_a_thin_link_lose_nothing() {
    let (emu, proxy, client) = device_behind_a_proxy().await;
    let sender = client.create_stream_sender(Some("g"), Some("s"), Compression::Uncompressed).unwrap();
    let faults = [
        Fault::ResetAll,
        Fault::Set(Condition::Latency { base: Duration::from_millis(50), jitter: Duration::from_millis(30) }),
        Fault::CloseAll,
        Fault::Set(Condition::Bandwidth(50_000)),
        Fault::ResetAll,
        Fault::Set(Condition::Pass),
    ];
    let mut sent = 0u64;
    for fault in faults {
        for _ in 0..100 {
            sender.enqueue_message(Message::new(format!("m{sent}"))).await.unwrap();
            sent += 1;
        }
        proxy.apply(fault);
    }
    client.wait_enqueued_messages_sent_timeout(WAIT).await.expect("everything acknowledged");
    assert!(emu.wait_for_messages(sent, WAIT).await, "{}", proxy.log().join("\n"));
    assert_eq!(emu.message_count().await, sent, "each message once");
    client.close().await.unwrap();
}
