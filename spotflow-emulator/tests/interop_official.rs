//! The unmodified official `spotflow` 0.8.1 crate against the emulator: provisioning with manual
//! approval, 1,000 telemetry messages, reported properties, and a desired-properties update.
//!
//! The harness (`interop/official-sdk`) is its own Cargo project (the official crate's SQLite
//! cannot share this workspace's dependency graph). `.ci/run` builds it and runs this test with
//! `SPOTFLOW_OFFICIAL_HARNESS=<binary> cargo test -p spotflow-emulator --test interop_official -- --ignored`.
//! It needs port 8883 (hard-coded in the official SDK).

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use spotflow_emulator::{Emulator, MessageQuery};
use tokio::io::{AsyncBufReadExt, BufReader};

const DEVICE: &str = "ws-emulator:official-device";

/// Both tests need port 8883: one at a time.
static PORT_8883: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The official SDK's harness (`SPOTFLOW_OFFICIAL_HARNESS`) for `emu`, its database in `dir`,
/// with the mode's environment; standard output piped, killed when dropped.
fn harness(emu: &Emulator, dir: &std::path::Path, mode: &[(&str, &str)]) -> tokio::process::Child {
    let harness =
        std::env::var("SPOTFLOW_OFFICIAL_HARNESS").expect("SPOTFLOW_OFFICIAL_HARNESS names the harness binary");
    tokio::process::Command::new(harness)
        .env("INSTANCE", format!("localhost:{}", emu.https_addr().unwrap().port()))
        .env("PROVISIONING_TOKEN", emu.create_provisioning_token())
        .env("DB_PATH", dir.join("official.db"))
        .envs(mode.iter().copied())
        .env("SSL_CERT_FILE", emu.ca_path().unwrap())
        .env_remove("SSL_CERT_DIR")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("harness starts")
}

#[tokio::test]
#[ignore = "needs the official SDK harness binary (SPOTFLOW_OFFICIAL_HARNESS) and port 8883; run by .ci/run"]
async fn the_official_sdk_provisions_sends_reports_and_receives_desired_properties() {
    let _port = PORT_8883.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::builder()
        .data_dir(dir.path().join("emulator"))
        .mqtts_port(8883)
        .start()
        .await
        .expect("emulator on 8883");
    let mut child = harness(&emu, dir.path(), &[("MESSAGES", "1000"), ("DESIRED_VERSION", "2")]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_line = async || -> String {
        tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .expect("harness answers within 120 s")
            .expect("harness output readable")
            .expect("harness still running")
    };

    // Manual approval of the operation the SDK displays.
    let line = next_line().await;
    let op = line.strip_prefix("OPERATION ").unwrap_or_else(|| panic!("expected OPERATION, got {line}"));
    assert!(emu.operations().iter().any(|o| o.id == op));
    assert_eq!(emu.approve(op, None).unwrap(), "official-device");
    // Desired callback at start (it may come before `build` returns), then the telemetry.
    let mut saw_initial = false;
    loop {
        let line = next_line().await;
        if line.starts_with("DESIRED 1 ") {
            saw_initial = true;
        }
        if line == "STARTED ws-emulator official-device" {
            break;
        }
    }
    loop {
        let line = next_line().await;
        if line.starts_with("DESIRED 1 ") {
            saw_initial = true;
        }
        if line == "SENT 1000" {
            break;
        }
    }
    assert!(emu.wait_for_messages(1000, Duration::from_secs(180)).await, "1,000 messages arrive");
    let messages = emu
        .messages(MessageQuery { hub_device_id: Some(DEVICE.into()), limit: Some(5000), ..Default::default() })
        .await;
    let mut ids: Vec<String> = messages.iter().filter_map(|m| m.message_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1000, "every message id arrived (duplicates allowed, at-least-once)");
    for m in &messages {
        assert_eq!(m.stream_group.as_deref(), Some("interop-group"));
        assert_eq!(m.stream.as_deref(), Some("interop-stream"));
        let i: usize = m.message_id.as_deref().unwrap().trim_start_matches("msg-").parse().unwrap();
        assert_eq!(m.batch_id.as_deref(), Some(format!("batch-{}", i / 100).as_str()));
        assert_eq!(String::from_utf8(m.payload.clone()).unwrap(), format!("{{\"i\":{i},\"temperatureCelsius\":21.5}}"));
    }
    let twin = emu.twin(DEVICE).unwrap();
    assert_eq!(twin.reported.get("interop"), Some(&json!(true)), "reported properties stored in the twin");

    // A desired update from the admin side reaches the SDK's callback.
    assert_eq!(emu.update_desired(DEVICE, json!({"sampleInterval": 5}).as_object().cloned().unwrap()), Some(2));
    let mut got_callback = false;
    loop {
        let line = next_line().await;
        // Under load the start-up callback can come after the telemetry was enqueued.
        if line.starts_with("DESIRED 1 ") {
            saw_initial = true;
        }
        if line.starts_with("DESIRED 2 ") {
            assert!(line.contains("\"sampleInterval\":5"), "{line}");
            got_callback = true;
        }
        if line == "DONE" {
            break;
        }
    }
    assert!(got_callback, "desired callback for version 2");
    assert!(saw_initial, "desired callback at start");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    assert!(status.success());
}

/// The official crate's remote access (`with_remote_access_allowed_for_all_ports`) against the
/// emulator's tunnels: an echo server on the device's side reached through a tunnel with 1 MiB
/// there and back intact, the tunnel's close reaching the server, and a closed port refused with
/// the official SDK's 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official SDK harness binary (SPOTFLOW_OFFICIAL_HARNESS) and port 8883; run by .ci/run"]
async fn the_official_sdk_relays_remote_access_tunnels_of_the_emulator() {
    let _port = PORT_8883.lock().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::builder()
        .data_dir(dir.path().join("emulator"))
        .mqtts_port(8883)
        .auto_approve(Some(Duration::ZERO))
        .start()
        .await
        .expect("emulator on 8883");
    let mut child = harness(&emu, dir.path(), &[("REMOTE_ACCESS", "1")]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line == "READY" {
                return;
            }
        }
        panic!("the harness ended before READY");
    })
    .await
    .expect("the official SDK starts within 120 s");
    // An echo server on the device's side, telling when a connection ends.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (ended, mut ends) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let ended = ended.clone();
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let n = tokio::io::copy(&mut r, &mut w).await.unwrap_or(0);
                let _ = ended.send(n);
            });
        }
    });
    // The SDK subscribes to direct methods once connected: retry (bounded) until a tunnel opens.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let tunnel = loop {
        let mut tunnel = emu.open_tunnel(DEVICE, port).await.expect("the emulator takes the tunnel");
        tunnel.write_all(b"?").await.unwrap();
        tunnel.flush().await.unwrap();
        let mut probe = [0u8; 1];
        match tunnel.read_exact(&mut probe).await {
            Ok(_) => break tunnel,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("no tunnel yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no tunnel: {e}"),
        }
    };
    let data: Vec<u8> = (0..1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let (mut r, mut w) = tokio::io::split(tunnel);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.flush().await.unwrap();
        w
    });
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(Duration::from_secs(60), r.read_exact(&mut back)).await.expect("echoed in time").unwrap();
    assert!(back == data, "1 MiB through the official SDK's relay and back intact");
    let mut w = writer.await.unwrap();
    w.shutdown().await.unwrap();
    let echoed =
        tokio::time::timeout(Duration::from_secs(30), ends.recv()).await.expect("the close reached the server");
    assert_eq!(echoed, Some(1 + data.len() as u64), "the probe and the 1 MiB");
    // A port nobody listens on: the official SDK's 500.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut refused = emu.open_tunnel(DEVICE, closed).await.unwrap();
    let mut buf = [0u8; 8];
    let why = tokio::time::timeout(Duration::from_secs(30), refused.read(&mut buf)).await.unwrap().unwrap_err();
    assert!(why.to_string().contains("500"), "{why}");
    let _ = child.kill().await;
}
