//! The durable cloud-to-device inbox against the emulator: messages sent while the device is
//! away wait on the broker, are stored before they are acknowledged, handed to the application
//! with their properties, handed out again after a restart until completed, and never twice
//! once completed; a full inbox holds the broker back.

use std::time::Duration;

use spotflow_device::DeviceClient;
use spotflow_emulator::Emulator;

mod common;

const WAIT: Duration = Duration::from_secs(30);

async fn device(emu: &Emulator, db: &std::path::Path, budget: Option<u64>) -> DeviceClient {
    let builder = DeviceClient::builder(Some("c2d"), emu.create_provisioning_token(), db);
    common::on_emulator(builder, emu, common::Proto::Mqtt)
        .with_options(move |o| {
            if let Some(b) = budget {
                o.c2d_inbox_budget_bytes = b;
            }
        })
        .start()
        .await
        .expect("device starts")
}

/// Waits (bounded) until the emulator lists the device's messages in these states.
async fn wait_states(emu: &Emulator, hub_id: &str, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let states: Vec<&str> = emu.c2d_messages(hub_id).iter().map(|m| m.state).collect();
        if states == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "states {states:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_wait_are_stored_handed_out_until_completed_and_never_twice() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("device.db");
    let emu = Emulator::builder().auto_approve(Some(Duration::ZERO)).data_dir(dir.path()).start().await.unwrap();
    let client = device(&emu, &db, None).await;
    let hub_id = format!("{}:{}", client.workspace_id(), client.device_id());
    client.close().await.unwrap();

    // Sent while the device is away.
    for i in 0..3 {
        let props = vec![("command".to_owned(), format!("set {i}"))];
        emu.send_c2d(&hub_id, props, format!("payload {i}").into_bytes(), Duration::from_secs(600)).unwrap();
    }
    wait_states(&emu, &hub_id, &["queued"; 3]).await;

    let client = device(&emu, &db, None).await;
    let mut inbox = client.c2d_messages();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(inbox.next_timeout(WAIT).await.unwrap().expect("a message"));
    }
    let payloads: Vec<&[u8]> = got.iter().map(|m| m.payload()).collect();
    assert_eq!(payloads, [&b"payload 0"[..], b"payload 1", b"payload 2"]);
    assert_eq!(got[1].property("command"), Some("set 1"));
    assert!(got[0].message_id().is_some());
    // Stored before the acknowledgement: the broker has them all delivered.
    wait_states(&emu, &hub_id, &["delivered"; 3]).await;
    got[0].complete().await.unwrap();
    got[1].complete().await.unwrap();
    got[1].complete().await.unwrap();
    client.close().await.unwrap();

    // After a restart: the one not completed comes again, and only it.
    let client = device(&emu, &db, None).await;
    let mut inbox = client.c2d_messages();
    let again = inbox.next_timeout(WAIT).await.unwrap().expect("the uncompleted message");
    assert_eq!(again.payload(), b"payload 2");
    assert!(inbox.try_next().await.unwrap().is_none());
    again.complete().await.unwrap();
    // A new one arrives while connected.
    emu.send_c2d(&hub_id, vec![], b"live".to_vec(), Duration::from_secs(60)).unwrap();
    let live = inbox.next_timeout(WAIT).await.unwrap().expect("the live message");
    assert_eq!(live.payload(), b"live");
    live.complete().await.unwrap();
    assert!(client.c2d_messages().try_next().await.unwrap().is_none(), "the inbox is empty");
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbox_leaves_the_rest_on_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("device.db");
    let emu = Emulator::builder().auto_approve(Some(Duration::ZERO)).data_dir(dir.path()).start().await.unwrap();
    // Room for two messages of 100 bytes and their properties (about 45 bytes: $.mid, $.to).
    let client = device(&emu, &db, Some(350)).await;
    let hub_id = format!("{}:{}", client.workspace_id(), client.device_id());
    for i in 0..5u8 {
        emu.send_c2d(&hub_id, vec![], vec![i; 100], Duration::from_secs(600)).unwrap();
    }
    let mut inbox = client.c2d_messages();
    let first = inbox.next_timeout(WAIT).await.unwrap().expect("a message");
    let second = inbox.next_timeout(WAIT).await.unwrap().expect("a message");
    // The third is held unacknowledged; the broker keeps it and the others.
    wait_states(&emu, &hub_id, &["delivered", "delivered", "inFlight", "inFlight", "inFlight"]).await;
    assert!(inbox.try_next().await.unwrap().is_none());
    first.complete().await.unwrap();
    second.complete().await.unwrap();
    let mut rest = Vec::new();
    for _ in 0..3 {
        let m = inbox.next_timeout(WAIT).await.unwrap().expect("the rest, as room comes");
        rest.push(m.payload()[0]);
        m.complete().await.unwrap();
    }
    assert_eq!(rest, [2, 3, 4]);
    wait_states(&emu, &hub_id, &["delivered"; 5]).await;
    client.close().await.unwrap();
}
