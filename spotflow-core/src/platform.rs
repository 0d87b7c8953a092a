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

/// Whether `host` (a name or an address, IPv6 with or without brackets) is the loopback interface:
/// `localhost`, `127.0.0.0/8` or `::1`. Unencrypted transports are allowed only to such hosts.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuses an unencrypted connection to a host that is not loopback (the platform chooses the
/// hub host: plain MQTT would send the device's SAS in clear text to wherever it points).
pub fn require_loopback_for_plain(host: &str, what: &str) -> crate::Result<()> {
    if is_loopback_host(host) {
        return Ok(());
    }
    Err(crate::Error::invalid(
        "network options",
        format!("{what} without TLS is allowed only to a loopback host, and the platform named {host:?}"),
    ))
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

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_hosts() {
        for h in ["localhost", "LOCALHOST", "127.0.0.1", "127.8.9.10", "::1", "[::1]"] {
            assert!(super::is_loopback_host(h), "{h}");
        }
        for h in ["example.com", "10.0.0.1", "localhost.example.com", "0.0.0.0", "[::2]", ""] {
            assert!(!super::is_loopback_host(h), "{h}");
        }
        assert!(super::require_loopback_for_plain("hub.example.com", "MQTT").is_err());
    }
}
