//! Every log line of a device's background work names the device: two devices of one `Gateway`
//! lose their connections, receive a configuration (their callbacks log through `tracing` too)
//! and close, and each of the SDK's lines carries `workspace_id` and `device_id` of its device.

use std::time::Duration;

use serde_json::json;
use spotflow_device::Gateway;
use spotflow_emulator::Emulator;

mod common;
use common::log::log;

const DEVICES: [&str; 2] = ["press-1", "press-2"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_of_a_gateways_devices_names_its_device() {
    let log = log();
    let emu = Emulator::builder().auto_approve(Some(Duration::ZERO)).start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::open(dir.path().join("gateway.db")).await.unwrap();
    let mqtt_port = emu.mqtts_addr().unwrap().port();
    let mut clients = Vec::new();
    for id in DEVICES {
        let client = gateway
            .device(id, emu.create_provisioning_token())
            .await
            .unwrap()
            .instance(emu.https_url())
            .trust_ca_pem(emu.ca_pem())
            .with_network(move |n| n.mqtt_port = mqtt_port)
            .display_provisioning_operation_callback(|_| {})
            .desired_properties_updated_callback(|d| tracing::info!(version = d.version, "the application applied it"))
            .with_options(|o| {
                o.retry_initial = Duration::from_millis(20);
                o.reconnect_max = Duration::from_millis(200);
            })
            .start()
            .await
            .unwrap();
        clients.push(client);
    }
    for id in DEVICES {
        log.line_with(&["connected to the platform", &format!("device_id={id}")]).await;
    }

    // Both lose their connections, then get a configuration.
    for client in &clients {
        assert!(emu.disconnect(&format!("{}:{}", client.workspace_id(), client.device_id())));
    }
    for id in DEVICES {
        log.line_with(&["connection lost; reconnecting", &format!("device_id={id}")]).await;
    }
    for client in &clients {
        let hub_id = format!("{}:{}", client.workspace_id(), client.device_id());
        emu.update_desired(&hub_id, json!({"mode": client.device_id()}).as_object().unwrap().clone()).unwrap();
    }
    for id in DEVICES {
        let line = log.line_with(&["the application applied it", "version=1", &format!("device_id={id}")]).await;
        assert!(line.contains("workspace_id=ws-emulator"), "{line}");
        log.line_with(&["desired properties updated", &format!("device_id={id}")]).await;
    }
    for client in &clients {
        client.close().await.unwrap();
    }
    gateway.close().await.unwrap();
    for id in DEVICES {
        log.line_with(&["device client closed", &format!("device_id={id}")]).await;
    }

    // Every line the SDK's device code logged names a device.
    let text = log.text();
    let sdk_lines: Vec<&str> = text
        .lines()
        .filter(|l| ["spotflow_device::", "spotflow_transport_mqtt::", "spotflow_core::"].iter().any(|t| l.contains(t)))
        .filter(|l| !l.contains("spotflow_device::gateway")) // the gateway's own lines are about all its devices
        .collect();
    assert!(sdk_lines.len() >= 12, "too few lines of the SDK:\n{text}");
    let anonymous: Vec<&&str> = sdk_lines.iter().filter(|l| !l.contains("device_id=")).collect();
    assert!(anonymous.is_empty(), "lines that name no device:\n{anonymous:#?}\n--- the whole log\n{text}");
}
