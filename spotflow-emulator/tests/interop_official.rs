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

#[tokio::test]
#[ignore = "needs the official SDK harness binary (SPOTFLOW_OFFICIAL_HARNESS) and port 8883; run by .ci/run"]
async fn the_official_sdk_provisions_sends_reports_and_receives_desired_properties() {
    let harness =
        std::env::var("SPOTFLOW_OFFICIAL_HARNESS").expect("SPOTFLOW_OFFICIAL_HARNESS names the harness binary");
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::builder()
        .data_dir(dir.path().join("emulator"))
        .mqtts_port(8883)
        .start()
        .await
        .expect("emulator on 8883");
    let token = emu.create_provisioning_token();
    let instance = format!("localhost:{}", emu.https_addr().unwrap().port());
    let mut child = tokio::process::Command::new(harness)
        .env("INSTANCE", &instance)
        .env("PROVISIONING_TOKEN", &token)
        .env("DB_PATH", dir.path().join("official.db"))
        .env("MESSAGES", "1000")
        .env("DESIRED_VERSION", "2")
        .env("SSL_CERT_FILE", emu.ca_path().unwrap())
        .env_remove("SSL_CERT_DIR")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("harness starts");
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
