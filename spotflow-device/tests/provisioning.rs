//! Start-up: provisioning, approval, identity reuse, offline start, identity change, credential
//! refresh and renewal — through the facade over the in-memory platform.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::*;
use serde_json::json;
use spotflow_core::testkit::MemoryPlatform;
use spotflow_core::Error;
use spotflow_device::{write_provisioning_operation, Compression, ProvisioningOperation};

#[tokio::test]
async fn start_provisions_registers_and_displays_the_operation() {
    let platform = MemoryPlatform::new();
    let store = new_store();
    let shown: Arc<Mutex<Vec<ProvisioningOperation>>> = Arc::default();
    let seen = shown.clone();
    let client = builder(&platform, &store, Some("dev-1"))
        .display_provisioning_operation_callback(move |op| seen.lock().unwrap().push(op.clone()))
        .start()
        .await
        .unwrap();
    assert_eq!(client.workspace_id(), "ws-memory");
    assert_eq!(client.device_id(), "dev-1");
    let ops = shown.lock().unwrap().clone();
    assert_eq!(ops.len(), 1, "display callback called once");
    assert!(!ops[0].id.is_empty() && !ops[0].verification_code.is_empty());
    assert!(ops[0].expiration_time > SystemTime::now());
    let stats = platform.stats();
    assert_eq!((stats.init_calls, stats.register_calls), (1, 1));
    let identity = store.load_identity().await.unwrap().expect("identity persisted");
    assert_eq!(identity.device_id, "dev-1");
    assert!(identity.connection.is_some());
    client.close().await.unwrap();
}

#[test]
fn default_display_prints_id_code_and_expiry() {
    let op = ProvisioningOperation {
        id: "op-7".into(),
        verification_code: "ABC-123".into(),
        expiration_time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000),
    };
    let mut out = Vec::new();
    write_provisioning_operation(&mut out, &op).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "Provisioning operation initialized, waiting for approval.\nOperation ID: op-7\n\
         Verification Code: ABC-123\nExpiration Time: 2030-01-01T00:00:00+00:00\n"
    );
}

#[tokio::test]
async fn manual_approval_with_a_technicians_device_id_override() {
    let platform = MemoryPlatform::new();
    platform.set_auto_approve(false);
    let store = new_store();
    let approver = platform.clone();
    let start = tokio::spawn({
        let b = builder(&platform, &store, Some("requested-id"));
        async move { b.start().await }
    });
    assert!(platform.wait_until(WAIT, |p| !p.pending_operations().is_empty()).await);
    // Polled while pending, not yet approved.
    assert!(platform.wait_until(WAIT, |p| p.stats().complete_calls >= 2).await);
    assert!(!start.is_finished());
    let op = approver.pending_operations().remove(0);
    assert!(approver.approve(&op, Some("technician-id")));
    let client = tokio::time::timeout(WAIT, start).await.unwrap().unwrap().unwrap();
    assert_eq!(client.device_id(), "technician-id");
    let sender = client.create_stream_sender(None, None, Compression::Uncompressed).unwrap();
    sender.send_message("hello").await.unwrap();
    assert_eq!(platform.messages()[0].hub_device_id, "ws-memory:technician-id");
}

#[tokio::test]
async fn an_operation_that_expires_before_approval_fails_start() {
    let platform = MemoryPlatform::new();
    platform.set_auto_approve(false);
    let store = new_store();
    let start = tokio::spawn({
        let b = builder(&platform, &store, Some("dev-1"));
        async move { b.start().await }
    });
    assert!(platform.wait_until(WAIT, |p| !p.pending_operations().is_empty()).await);
    let op = platform.pending_operations().remove(0);
    platform.expire_operation(&op);
    let err = tokio::time::timeout(WAIT, start).await.unwrap().unwrap().unwrap_err();
    assert!(matches!(err, Error::Provisioning(_)), "{err}");
    assert!(err.to_string().contains(&op));
}

#[tokio::test]
async fn an_invalid_provisioning_token_is_a_permanent_error() {
    let platform = MemoryPlatform::new();
    let store = new_store();
    let err = spotflow_device::DeviceClient::builder(Some("d"), "wrong-token", "x.db")
        .platform_api(Arc::new(platform.clone()))
        .transport(Arc::new(platform.clone()))
        .store(store)
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized(_)), "{err}");
    assert!(!err.is_temporary());
}

#[tokio::test]
async fn a_restart_reuses_the_stored_registration_without_provisioning() {
    let platform = MemoryPlatform::new();
    let store = new_store();
    start(&platform, &store).await.close().await.unwrap();
    let client = start(&platform, &store).await;
    assert_eq!(platform.stats().init_calls, 1, "no second provisioning");
    assert_eq!(platform.stats().register_calls, 2, "one registration per start");
    assert_eq!(client.device_id(), "dev-1");
}

#[tokio::test]
async fn offline_start_with_a_stored_registration_queues_then_delivers() {
    let (platform, store) = provisioned_then_offline().await;
    let client = start(&platform, &store).await;
    let sender = client.create_stream_sender(Some("g"), Some("s"), Compression::Uncompressed).unwrap();
    for i in 0..100 {
        sender.enqueue_message(format!("offline {i}")).await.unwrap();
    }
    assert_eq!(client.pending_messages_count(), 100);
    assert!(platform.messages().is_empty());
    platform.set_offline(false);
    client.wait_enqueued_messages_sent_timeout(WAIT).await.unwrap();
    assert_eq!(platform.messages().len(), 100);
    assert_eq!(platform.stats().init_calls, 1, "offline start never provisions");
}

#[tokio::test]
async fn a_changed_identity_discards_the_old_devices_state() {
    let platform = MemoryPlatform::new();
    platform.add_provisioning_token("second-token");
    let store = new_store();
    let client = start(&platform, &store).await;
    client.close().await.unwrap();
    // Leave messages and reported properties of dev-1 behind while offline.
    platform.set_offline(true);
    let client = start(&platform, &store).await;
    let sender = client.create_stream_sender(None, None, Compression::Uncompressed).unwrap();
    sender.enqueue_message("belongs to dev-1").await.unwrap();
    client.update_reported_properties(json!({"owner": "dev-1"})).await.unwrap();
    client.close().await.unwrap();
    platform.set_offline(false);
    // A new provisioning token: the device is provisioned again, as another device.
    let client = spotflow_device::DeviceClient::builder(Some("dev-2"), "second-token", "device.db")
        .platform_api(Arc::new(platform.clone()))
        .transport(Arc::new(platform.clone()))
        .store(store.clone())
        .display_provisioning_operation_callback(|_| {})
        .start()
        .await
        .unwrap();
    assert_eq!(client.device_id(), "dev-2");
    assert_eq!(client.pending_messages_count(), 0);
    assert!(!client.any_pending_reported_properties_updates());
    assert_eq!(store.queue_stats().await.unwrap().count, 0);
    let sender = client.create_stream_sender(None, None, Compression::Uncompressed).unwrap();
    sender.send_message("from dev-2").await.unwrap();
    let devices: Vec<String> = platform.messages().iter().map(|m| m.hub_device_id.clone()).collect();
    assert_eq!(devices, vec!["ws-memory:dev-2"]);
    assert!(platform.twin("ws-memory:dev-2").reported.is_empty());
}

#[tokio::test]
async fn registration_token_is_refreshed_before_it_expires() {
    let platform = MemoryPlatform::new();
    platform.set_lifetimes(Duration::from_secs(60), Duration::from_millis(1500), Duration::from_secs(3600));
    let store = new_store();
    let client = start(&platform, &store).await;
    let first = store.load_identity().await.unwrap().unwrap().registration_token;
    assert!(platform.wait_until(WAIT, |p| p.stats().refresh_calls >= 1).await, "refresh happened");
    let stored = store.load_identity().await.unwrap().unwrap();
    assert_ne!(stored.registration_token, first, "refreshed token persisted");
    assert_eq!(platform.stats().init_calls, 1, "never re-provisioned");
    drop(client);
}

#[tokio::test]
async fn connection_credentials_are_renewed_while_sending_without_loss_or_duplicates() {
    let platform = MemoryPlatform::new();
    platform.set_lifetimes(Duration::from_secs(60), Duration::from_secs(3600), Duration::from_millis(1200));
    let store = new_store();
    let client = start(&platform, &store).await;
    let sender = client.create_stream_sender(None, Some("s"), Compression::Uncompressed).unwrap();
    let renewals_before = platform.stats().register_calls;
    let mut sent = 0u64;
    // Keep sending until at least two renewals happened (bounded).
    let deadline = tokio::time::Instant::now() + WAIT;
    while platform.stats().register_calls < renewals_before + 2 {
        assert!(tokio::time::Instant::now() < deadline, "credentials were not renewed");
        for _ in 0..100 {
            sender.enqueue_message(format!("m{sent}")).await.unwrap();
            sent += 1;
        }
        client.wait_enqueued_messages_sent_timeout(WAIT).await.unwrap();
    }
    assert!(platform.stats().connects >= 3, "reconnected with the renewed credentials");
    assert_eq!(platform.stats().refused_connects, 0, "never connected with expired credentials");
    assert_eq!(platform.messages().len() as u64, sent);
    assert_eq!(platform.duplicates(), 0, "drained before switching: nothing sent twice");
}

/// A platform whose answers carry absurd lifetimes: no expiration time with the registration
/// token, and a `tokenRemainingLifetime` of 200,000,000,000,000 days.
#[derive(Debug)]
struct AbsurdLifetimes(MemoryPlatform);

#[async_trait::async_trait]
impl spotflow_core::PlatformApi for AbsurdLifetimes {
    fn instance(&self) -> &str {
        self.0.instance()
    }
    async fn init_provisioning(
        &self,
        token: &spotflow_core::Secret,
        device_id: Option<&str>,
    ) -> spotflow_core::Result<spotflow_core::ProvisioningOperation> {
        self.0.init_provisioning(token, device_id).await
    }
    async fn complete_provisioning(
        &self,
        token: &spotflow_core::Secret,
        operation_id: &str,
    ) -> spotflow_core::Result<spotflow_core::ProvisioningStatus> {
        Ok(match self.0.complete_provisioning(token, operation_id).await? {
            spotflow_core::ProvisioningStatus::Approved(mut t) => {
                t.expires_at = None;
                spotflow_core::ProvisioningStatus::Approved(t)
            }
            other => other,
        })
    }
    async fn register(&self, token: &spotflow_core::Secret) -> spotflow_core::Result<spotflow_core::Registration> {
        let mut r = self.0.register(token).await?;
        r.token_remaining_lifetime = Some(spotflow_core::time_format::parse_timespan("200000000000000.00:00:00")?);
        Ok(r)
    }
    async fn refresh_registration_token(
        &self,
        token: &spotflow_core::Secret,
        registration_token: &spotflow_core::Secret,
    ) -> spotflow_core::Result<spotflow_core::RegistrationToken> {
        self.0.refresh_registration_token(token, registration_token).await
    }
}

/// Hardening: a server-given lifetime past what `SystemTime` holds made `start` panic ("overflow
/// when adding duration to instant"); it is now capped (100 years) and the device starts.
#[tokio::test]
async fn absurd_lifetimes_from_the_server_do_not_panic() {
    let platform = MemoryPlatform::new();
    let store = new_store();
    let client = builder(&platform, &store, Some("dev-absurd"))
        .platform_api(Arc::new(AbsurdLifetimes(platform.clone())))
        .start()
        .await
        .expect("starts");
    let identity = store.load_identity().await.unwrap().expect("identity persisted");
    let expires = identity.registration_token_expires_at.expect("an expiry");
    assert!(expires > SystemTime::now() + Duration::from_secs(50 * 365 * 86_400));
    let sender = client.create_stream_sender(None, None, Compression::Uncompressed).unwrap();
    sender.send_message("after an absurd lifetime").await.unwrap();
    client.close().await.unwrap();
}
