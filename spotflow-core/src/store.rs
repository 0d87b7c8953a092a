//! The `Store` trait: everything the SDK persists.

use std::fmt;
use std::time::SystemTime;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::{CloudMessage, InboxAppend, OutgoingMessage, QueuedMessage, Result, StoredCloudMessage, UpdateRecord};

/// A secret string (token, SAS, connection string) whose `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; use only where it is sent or stored.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

/// Credentials of one connection to the platform's data plane (an IoT Hub style SAS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionCredentials {
    /// Host of the data plane (`iotHubHostName`).
    pub hub_host: String,
    /// `{workspace id}:{device id}`, the client id on the data plane.
    pub hub_device_id: String,
    /// The shared access signature, used as password.
    pub sas: Secret,
    /// When the signature stops being accepted (`connectionStringExpiration`).
    pub expires_at: Option<SystemTime>,
}

/// The device's identity and credentials, as registration left them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// Platform instance the identity belongs to (authority, e.g. `api.eu1.spotflow.io`).
    pub instance: String,
    /// Provisioning token the device was provisioned with (needed to refresh the registration
    /// token, and to notice that the application changed it).
    pub provisioning_token: Secret,
    /// Device id the application requested (`None` when it let the platform choose).
    pub requested_device_id: Option<String>,
    /// The registration token.
    pub registration_token: Secret,
    /// When the registration token expires (`None`: never).
    pub registration_token_expires_at: Option<SystemTime>,
    /// Workspace id assigned by the platform.
    pub workspace_id: String,
    /// Device id assigned by the platform (may differ from the requested one).
    pub device_id: String,
    /// Last connection credentials, kept so that a restart can connect without registering.
    pub connection: Option<ConnectionCredentials>,
    /// Random id of this identity's outgoing queue (see [`crate::SessionInfo`]).
    pub queue_id: String,
}

/// Desired properties as last received from the platform.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DesiredState {
    /// Version of the desired properties.
    pub version: u64,
    /// The properties (without `$version`).
    pub values: Map<String, Value>,
}

/// Reported properties: what the platform confirmed, and what the application wants reported.
///
/// The pending update is the JSON merge patch from `confirmed` to `target`, so any number of
/// updates made while offline are sent as one net change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReportedState {
    /// The reported document as the platform last confirmed it.
    pub confirmed: Map<String, Value>,
    /// The document the application last asked to report; `None` when it never did.
    pub target: Option<Map<String, Value>>,
}

/// Size of the outgoing queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Number of queued messages.
    pub count: u64,
    /// Their size as counted by [`OutgoingMessage::queued_size`].
    pub bytes: u64,
    /// The highest sequence number ever given (`None` for a store that never queued anything).
    pub last_seq: Option<u64>,
}

/// Everything the SDK persists.
///
/// A durable backend must make appended data durable before `append_messages` returns (the
/// promise behind `enqueue_message`). Sequence numbers are given by the store in append order,
/// consecutive within one call, strictly growing across calls, and never reused (not even after
/// [`Store::clear_device_state`]). Implementations must be cheap to call concurrently; the SDK
/// calls `append_messages` from many tasks at once.
///
/// Errors: an [`crate::Error::Store`] saying whether a retry may succeed (a full disk is
/// temporary, a corrupt file permanent); an append that returns an error must not have appended
/// anything visible to a later read.
///
/// Run `spotflow_core::testkit::store_conformance` (feature `testkit`) against any new backend:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // In a backend's tests (here the in-memory store, with the `testkit` feature):
/// # #[cfg(feature = "testkit")]
/// spotflow_core::testkit::store_conformance(&spotflow_core::MemoryStore::new()).await;
/// # }
/// ```
#[async_trait]
pub trait Store: fmt::Debug + Send + Sync + 'static {
    /// Appends messages at the end of the outgoing queue, in order, returning the sequence number
    /// of the first one (the others follow consecutively).
    async fn append_messages(&self, messages: Vec<OutgoingMessage>) -> Result<u64>;

    /// Appends one message; see [`Store::append_messages`].
    async fn append_message(&self, message: OutgoingMessage) -> Result<u64> {
        self.append_messages(vec![message]).await
    }

    /// Reads up to `limit` queued messages with a sequence number greater than `after` (from the
    /// start with `None`), in sequence order.
    async fn read_messages(&self, after: Option<u64>, limit: usize) -> Result<Vec<QueuedMessage>>;

    /// Removes the messages with these sequence numbers (acknowledged by the platform). Unknown
    /// numbers are ignored.
    async fn remove_messages(&self, seqs: &[u64]) -> Result<()>;

    /// Count and byte size of the queue.
    async fn queue_stats(&self) -> Result<QueueStats>;

    /// The stored identity, if any.
    async fn load_identity(&self) -> Result<Option<DeviceIdentity>>;

    /// Replaces the stored identity.
    async fn save_identity(&self, identity: &DeviceIdentity) -> Result<()>;

    /// The stored desired properties, if any.
    async fn load_desired(&self) -> Result<Option<DesiredState>>;

    /// Replaces the stored desired properties.
    async fn save_desired(&self, desired: &DesiredState) -> Result<()>;

    /// The stored reported properties state (default when none).
    async fn load_reported(&self) -> Result<ReportedState>;

    /// Replaces the stored reported properties state.
    async fn save_reported(&self, reported: &ReportedState) -> Result<()>;

    /// Forgets everything that belongs to the current identity (queued messages, desired and
    /// reported properties); keeps the identity itself and the sequence counter.
    async fn clear_device_state(&self) -> Result<()>;

    /// Keeps a cloud-to-device message in the inbox, durably, until
    /// [`Store::remove_cloud_message`] (ids grow), unless a message with its `$.mid` is held or was
    /// completed lately (a redelivery; see [`crate::Inbox`]). The
    /// default: an error saying the store keeps no inbox (the message is then not acknowledged,
    /// and the broker keeps it).
    async fn append_cloud_message(&self, message: &CloudMessage) -> Result<InboxAppend> {
        let _ = message;
        Err(crate::Error::invalid("store", "this store keeps no cloud-to-device inbox"))
    }

    /// Up to `limit` messages of the inbox with ids above `after`, oldest first (default: none).
    async fn read_cloud_messages(&self, after: Option<u64>, limit: usize) -> Result<Vec<StoredCloudMessage>> {
        let _ = (after, limit);
        Ok(Vec::new())
    }

    /// Removes a message the application completed; whether it was in the inbox (unknown ids
    /// are ignored).
    async fn remove_cloud_message(&self, id: u64) -> Result<bool> {
        let _ = id;
        Ok(false)
    }

    /// Number and size ([`CloudMessage::size`]) of the messages in the inbox (default: none).
    async fn cloud_inbox_stats(&self) -> Result<(u64, u64)> {
        Ok((0, 0))
    }

    /// The software update's record ([`crate::UpdateRecord`]; `None` when none was saved). The
    /// default: none.
    async fn load_update(&self) -> Result<Option<UpdateRecord>> {
        Ok(None)
    }

    /// Saves the software update's record durably (it is saved at every transition of the
    /// update). The default: an error saying the store keeps no update record (no update can
    /// then start).
    async fn save_update(&self, record: &UpdateRecord) -> Result<()> {
        let _ = record;
        Err(crate::Error::invalid("store", "this store keeps no software update record"))
    }

    /// Releases the backing resources now (e.g. the database file, for the next process). Later
    /// calls may fail. The default does nothing.
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    async fn append_messages(&self, messages: Vec<OutgoingMessage>) -> Result<u64> {
        (**self).append_messages(messages).await
    }
    async fn append_message(&self, message: OutgoingMessage) -> Result<u64> {
        (**self).append_message(message).await
    }
    async fn read_messages(&self, after: Option<u64>, limit: usize) -> Result<Vec<QueuedMessage>> {
        (**self).read_messages(after, limit).await
    }
    async fn remove_messages(&self, seqs: &[u64]) -> Result<()> {
        (**self).remove_messages(seqs).await
    }
    async fn queue_stats(&self) -> Result<QueueStats> {
        (**self).queue_stats().await
    }
    async fn load_identity(&self) -> Result<Option<DeviceIdentity>> {
        (**self).load_identity().await
    }
    async fn save_identity(&self, identity: &DeviceIdentity) -> Result<()> {
        (**self).save_identity(identity).await
    }
    async fn load_desired(&self) -> Result<Option<DesiredState>> {
        (**self).load_desired().await
    }
    async fn save_desired(&self, desired: &DesiredState) -> Result<()> {
        (**self).save_desired(desired).await
    }
    async fn load_reported(&self) -> Result<ReportedState> {
        (**self).load_reported().await
    }
    async fn save_reported(&self, reported: &ReportedState) -> Result<()> {
        (**self).save_reported(reported).await
    }
    async fn clear_device_state(&self) -> Result<()> {
        (**self).clear_device_state().await
    }
    async fn append_cloud_message(&self, message: &CloudMessage) -> Result<InboxAppend> {
        (**self).append_cloud_message(message).await
    }
    async fn read_cloud_messages(&self, after: Option<u64>, limit: usize) -> Result<Vec<StoredCloudMessage>> {
        (**self).read_cloud_messages(after, limit).await
    }
    async fn remove_cloud_message(&self, id: u64) -> Result<bool> {
        (**self).remove_cloud_message(id).await
    }
    async fn cloud_inbox_stats(&self) -> Result<(u64, u64)> {
        (**self).cloud_inbox_stats().await
    }
    async fn load_update(&self) -> Result<Option<UpdateRecord>> {
        (**self).load_update().await
    }
    async fn save_update(&self, record: &UpdateRecord) -> Result<()> {
        (**self).save_update(record).await
    }
    async fn close(&self) -> Result<()> {
        (**self).close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let creds = ConnectionCredentials {
            hub_host: "hub".into(),
            hub_device_id: "ws:dev".into(),
            sas: Secret::new("SharedAccessSignature sig=topsecret"),
            expires_at: None,
        };
        let shown = format!("{creds:?}");
        assert!(!shown.contains("topsecret"), "{shown}");
        assert!(shown.contains("Secret(***)"));
    }
}
