//! The `PlatformApi` trait: provisioning and registration (HTTPS on the real platform).

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::{ConnectionCredentials, Result, Secret};

/// A provisioning operation waiting for approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisioningOperation {
    /// Operation id.
    pub id: String,
    /// Code the technician compares when approving.
    pub verification_code: String,
    /// When the operation stops being valid.
    pub expiration_time: SystemTime,
}

impl ProvisioningOperation {
    /// `expiration_time` in RFC 3339 (`2030-01-01T00:00:00+00:00`).
    pub fn expiration_time_rfc3339(&self) -> String {
        crate::time_format::rfc3339(self.expiration_time)
    }
}

/// A registration token and its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationToken {
    /// The token.
    pub token: Secret,
    /// When it expires (`None`: never).
    pub expires_at: Option<SystemTime>,
}

/// State of a provisioning operation when polled.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProvisioningStatus {
    /// Not approved yet: poll again.
    Pending,
    /// Approved: here is the registration token.
    Approved(RegistrationToken),
    /// The operation is closed (expired or superseded): start a new one.
    Closed,
}

/// Result of a registration: who the device is and how it connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Workspace id.
    pub workspace_id: String,
    /// Device id (may differ from the requested one).
    pub device_id: String,
    /// Credentials for the data plane.
    pub credentials: ConnectionCredentials,
    /// Remaining lifetime of the registration token, when the platform tells it.
    pub token_remaining_lifetime: Option<Duration>,
}

/// Provisioning and registration calls. The SDK drives them; an implementation only maps them to
/// requests. Errors: [`crate::Error::Unauthorized`] for refused tokens,
/// [`crate::Error::Provisioning`] for a cancelled operation, [`crate::Error::WorkspaceDisabled`],
/// and temporary errors for everything worth retrying.
#[async_trait]
pub trait PlatformApi: fmt::Debug + Send + Sync + 'static {
    /// The instance this API talks to, as stored with the identity (e.g. `api.eu1.spotflow.io`).
    fn instance(&self) -> &str;

    /// Starts a provisioning operation.
    async fn init_provisioning(
        &self,
        provisioning_token: &Secret,
        device_id: Option<&str>,
    ) -> Result<ProvisioningOperation>;

    /// Polls a provisioning operation.
    async fn complete_provisioning(
        &self,
        provisioning_token: &Secret,
        operation_id: &str,
    ) -> Result<ProvisioningStatus>;

    /// Registers with a registration token, obtaining connection credentials.
    async fn register(&self, registration_token: &Secret) -> Result<Registration>;

    /// Exchanges a registration token for a fresh one.
    async fn refresh_registration_token(
        &self,
        provisioning_token: &Secret,
        registration_token: &Secret,
    ) -> Result<RegistrationToken>;
}

#[async_trait]
impl<P: PlatformApi + ?Sized> PlatformApi for std::sync::Arc<P> {
    fn instance(&self) -> &str {
        (**self).instance()
    }
    async fn init_provisioning(
        &self,
        provisioning_token: &Secret,
        device_id: Option<&str>,
    ) -> Result<ProvisioningOperation> {
        (**self).init_provisioning(provisioning_token, device_id).await
    }
    async fn complete_provisioning(
        &self,
        provisioning_token: &Secret,
        operation_id: &str,
    ) -> Result<ProvisioningStatus> {
        (**self).complete_provisioning(provisioning_token, operation_id).await
    }
    async fn register(&self, registration_token: &Secret) -> Result<Registration> {
        (**self).register(registration_token).await
    }
    async fn refresh_registration_token(
        &self,
        provisioning_token: &Secret,
        registration_token: &Secret,
    ) -> Result<RegistrationToken> {
        (**self).refresh_registration_token(provisioning_token, registration_token).await
    }
}
