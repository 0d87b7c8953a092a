//! Desired and reported properties through the facade over the in-memory platform.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;
use serde_json::{json, Map, Value};
use spotflow_core::testkit::MemoryPlatform;
use spotflow_device::blocking;

const DEVICE: &str = "ws-memory:dev-1";

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

/// Receives desired-properties callbacks in a channel.
fn recorder(
) -> (impl Fn(spotflow_device::DesiredProperties) + Send + Sync, tokio::sync::mpsc::UnboundedReceiver<(u64, Value)>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (move |d: spotflow_device::DesiredProperties| drop(tx.send((d.version, Value::Object(d.values)))), rx)
}

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<(u64, Value)>) -> (u64, Value) {
    tokio::time::timeout(WAIT, rx.recv()).await.expect("callback in time").expect("callback channel open")
}

#[tokio::test]
async fn desired_callback_on_start_and_on_every_newer_version_only() {
    let platform = MemoryPlatform::new();
    let store = new_store();
    let (callback, mut calls) = recorder();
    let client =
        builder(&platform, &store, Some("dev-1")).desired_properties_updated_callback(callback).start().await.unwrap();
    assert_eq!(next(&mut calls).await, (0, json!({})), "called after start with the current version");
    platform.update_desired(DEVICE, obj(json!({"interval": 5})));
    assert_eq!(next(&mut calls).await, (1, json!({"interval": 5})));
    // A reconnect fetches the twin again: same version, no callback.
    platform.drop_connections();
    wait_connections(&platform, 1).await;
    assert!(platform.wait_until(WAIT, |p| p.stats().twin_requests >= 2).await);
    // Updates made while the device is offline arrive with the twin after reconnecting.
    platform.set_offline(true);
    platform.update_desired(DEVICE, obj(json!({"interval": 10, "mode": "eco"})));
    platform.update_desired(DEVICE, obj(json!({"mode": null})));
    platform.set_offline(false);
    assert_eq!(next(&mut calls).await, (3, json!({"interval": 10})), "skipped versions are not replayed");
    platform.update_desired(DEVICE, obj(json!({"a": {"b": 1}})));
    assert_eq!(next(&mut calls).await, (4, json!({"interval": 10, "a": {"b": 1}})));
    assert!(calls.try_recv().is_err(), "no duplicate callbacks");
    assert_eq!(client.get_desired_properties().version, 4);
    assert_eq!(client.get_desired_properties_if_newer(Some(4)), None);
    assert_eq!(client.get_desired_properties_if_newer(Some(3)).unwrap().version, 4);
    assert_eq!(
        client.get_desired_properties_if_newer(None).unwrap().values,
        obj(json!({"interval": 10, "a": {"b": 1}}))
    );
    client.close().await.unwrap();

    // A restart gets the stored version at once, then nothing for the same version.
    let (callback, mut calls) = recorder();
    platform.set_offline(true);
    let client =
        builder(&platform, &store, Some("dev-1")).desired_properties_updated_callback(callback).start().await.unwrap();
    assert_eq!(next(&mut calls).await.0, 4, "stored desired properties delivered offline at start");
    assert_eq!(client.get_desired_properties().version, 4);
    platform.set_offline(false);
    platform.update_desired(DEVICE, obj(json!({"c": 3})));
    assert_eq!(next(&mut calls).await.0, 5);
    assert!(calls.try_recv().is_err());
}

#[tokio::test]
async fn desired_properties_before_any_are_known() {
    let (platform, store) = provisioned_then_offline().await;
    let store2 = new_store();
    store2.save_identity(&store.load_identity().await.unwrap().unwrap()).await.unwrap();
    let client = start(&platform, &store2).await;
    let d = client.get_desired_properties();
    assert_eq!((d.version, d.values.len()), (0, 0));
    assert_eq!(client.get_desired_properties_if_newer(None), None, "nothing known yet");
}

#[tokio::test]
async fn reported_updates_made_offline_are_coalesced_into_one_net_patch() {
    let platform = MemoryPlatform::new();
    let store = new_store();
    let client = start(&platform, &store).await;
    client.update_reported_properties(json!({"fw": "1.0", "old": true})).await.unwrap();
    client.wait_reported_properties_sent_timeout(WAIT).await.unwrap();
    assert_eq!(platform.stats().reported_patches, 1);
    platform.set_offline(true);
    for i in 0..10 {
        client.update_reported_properties(json!({"fw": "1.0", "uptime": i, "nested": {"n": i}})).await.unwrap();
    }
    assert!(client.any_pending_reported_properties_updates());
    platform.set_offline(false);
    assert!(
        platform
            .wait_until(WAIT, |p| p.twin(DEVICE).reported == obj(json!({"fw":"1.0","uptime":9,"nested":{"n":9}})))
            .await
    );
    client.wait_reported_properties_sent_timeout(WAIT).await.unwrap();
    assert_eq!(platform.stats().reported_patches, 2, "ten offline updates sent as one patch");
    // An unchanged document sends nothing.
    client.update_reported_properties(json!({"fw": "1.0", "uptime": 9, "nested": {"n": 9}})).await.unwrap();
    assert!(!client.any_pending_reported_properties_updates());
    // A merge patch on top of the last document.
    client.patch_reported_properties(json!({"uptime": null, "extra": 1})).await.unwrap();
    assert!(
        platform
            .wait_until(WAIT, |p| p.twin(DEVICE).reported == obj(json!({"fw":"1.0","nested":{"n":9},"extra":1})))
            .await
    );
}

#[tokio::test]
async fn a_rejected_reported_update_is_surfaced_and_kept() {
    let platform = MemoryPlatform::new();
    platform.set_reported_reject_status(Some(400));
    let store = new_store();
    let client = start(&platform, &store).await;
    client.update_reported_properties(json!({"x": 1})).await.unwrap();
    let err = client.wait_reported_properties_sent_timeout(WAIT).await.unwrap_err();
    assert!(matches!(err, spotflow_core::Error::ReportedPropertiesRejected { status: 400 }), "{err}");
    assert_eq!(client.reported_properties_rejection(), Some(400));
    assert!(client.any_pending_reported_properties_updates(), "kept, not deleted");
    platform.set_reported_reject_status(None);
    platform.drop_connections();
    assert!(
        platform.wait_until(WAIT, |p| p.twin(DEVICE).reported == obj(json!({"x": 1}))).await,
        "retried on reconnect"
    );
    client.wait_reported_properties_sent_timeout(WAIT).await.unwrap();
    assert_eq!(client.reported_properties_rejection(), None);
}

#[tokio::test]
async fn pending_reported_updates_survive_a_restart_and_are_sent_at_start() {
    let (platform, store) = provisioned_then_offline().await;
    let client = start(&platform, &store).await;
    client.update_reported_properties(json!({"battery": 80})).await.unwrap();
    client.close().await.unwrap();
    platform.set_offline(false);
    let client = start(&platform, &store).await;
    assert!(client.any_pending_reported_properties_updates());
    assert!(platform.wait_until(WAIT, |p| p.twin(DEVICE).reported == obj(json!({"battery": 80}))).await);
}

#[test]
fn the_desired_callback_may_call_the_blocking_client() {
    let platform = MemoryPlatform::new();
    let store = new_store();
    let client_slot: Arc<OnceLock<blocking::DeviceClient>> = Arc::default();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (slot, seen2) = (client_slot.clone(), seen.clone());
    let client = blocking::DeviceClient::builder(Some("dev-1"), TOKEN, "device.db")
        .platform_api(Arc::new(platform.clone()))
        .transport(Arc::new(platform.clone()))
        .store(store)
        .display_provisioning_operation_callback(|_| {})
        .with_options(|o| o.retry_initial = Duration::from_millis(10))
        .desired_properties_updated_callback(move |d| {
            seen2.lock().unwrap().push(d.version);
            if let Some(client) = slot.get() {
                // Acknowledge the configuration from inside the callback.
                client.update_reported_properties(json!({"applied_version": d.version})).unwrap();
                assert_eq!(client.get_desired_properties().version, d.version);
            }
        })
        .start()
        .unwrap();
    client_slot.set(client.clone()).ok().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        wait_connections(&platform, 1).await;
        assert!(platform.wait_until(WAIT, |p| p.stats().twin_requests >= 1).await);
    });
    platform.update_desired(DEVICE, obj(json!({"interval": 1})));
    rt.block_on(async {
        assert!(platform.wait_until(WAIT, |p| p.twin(DEVICE).reported == obj(json!({"applied_version": 1}))).await);
    });
    assert!(seen.lock().unwrap().contains(&1));
    client.close().unwrap();
}
