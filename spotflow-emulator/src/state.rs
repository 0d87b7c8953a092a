//! The platform's control state: tokens, provisioning operations, devices, credentials, twins.
//! Kept in memory behind a mutex and persisted as a snapshot after every change.

use crate::EmulatorError;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use spotflow_core::merge_patch;

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

pub fn now_ms() -> Millis {
    to_ms(SystemTime::now())
}

pub fn to_ms(t: SystemTime) -> Millis {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub fn from_ms(ms: Millis) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Random lowercase hex string of `bytes` random bytes.
/// Longest device id accepted.
pub const MAX_DEVICE_ID_LEN: usize = 128;

/// Checks a device id (requested at provisioning or given at approval): 1–128 characters of
/// ASCII letters, digits and `-._%*!(),=@$'` (IoT Hub's device-id alphabet without `:` and the
/// URL delimiters, which the platform's topics and hub device ids use).
pub fn validate_device_id(id: &str) -> Result<(), EmulatorError> {
    if id.is_empty() || id.len() > MAX_DEVICE_ID_LEN {
        return Err(EmulatorError::InvalidDeviceId(format!(
            "deviceId must be 1 to {MAX_DEVICE_ID_LEN} characters long"
        )));
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || "-._%*!(),=@$'".contains(*c))) {
        return Err(EmulatorError::InvalidDeviceId(format!(
            "deviceId must not contain {c:?} (allowed: letters, digits and -._%*!(),=@$')"
        )));
    }
    Ok(())
}

pub fn random_hex(bytes: usize) -> String {
    spotflow_core::secure_random::hex(bytes)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProvisioningToken {
    pub workspace_id: String,
    pub created_at: Millis,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
/// State of a provisioning operation.
pub enum OperationState {
    /// Waiting for approval.
    Pending,
    /// Approved, registration token not yet fetched.
    Approved,
    /// The device fetched its registration token.
    Completed,
    /// Cancelled by the admin.
    Cancelled,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
/// A provisioning operation.
pub struct Operation {
    /// Operation id.
    pub id: String,
    /// Provisioning token that started it.
    pub provisioning_token: String,
    /// Workspace of the token.
    pub workspace_id: String,
    /// Device id the device asked for.
    pub requested_device_id: Option<String>,
    /// Code shown on the device.
    pub verification_code: String,
    /// Start (Unix ms).
    pub created_at: Millis,
    /// Expiry (Unix ms).
    pub expires_at: Millis,
    /// State.
    pub state: OperationState,
    /// Device id assigned at approval.
    pub device_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RegistrationTokenInfo {
    pub workspace_id: String,
    pub device_id: String,
    pub provisioning_token: String,
    pub expires_at: Millis,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SasInfo {
    pub hub_device_id: String,
    pub expires_at: Millis,
    /// The SAS's signature, compared in constant time (the map key holds only its first
    /// [`SAS_SELECTOR_LEN`] characters).
    pub signature: String,
}

/// Characters of a SAS signature in its lookup key (the selector): the map lookup, whose timing
/// depends on the key, can reveal at most these 64 bits; the remaining 192 bits of the 256-bit
/// signature are only ever compared in constant time.
pub const SAS_SELECTOR_LEN: usize = 16;

/// The lookup key of a SAS (the SAS with its signature cut to the selector) and its signature;
/// `None` when it has no `sig=` of at least the selector's length.
pub fn sas_key(sas: &str) -> Option<(String, &str)> {
    let start = sas.find("sig=")? + 4;
    let len = sas[start..].find('&').unwrap_or(sas.len() - start);
    let signature = &sas[start..start + len];
    let selector = signature.get(..SAS_SELECTOR_LEN)?;
    Some((format!("{}{selector}{}", &sas[..start], &sas[start + len..]), signature))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
/// A device twin.
pub struct Twin {
    /// Desired properties.
    pub desired: Map<String, Value>,
    /// Their version.
    pub desired_version: u64,
    /// Reported properties.
    pub reported: Map<String, Value>,
    /// Their version.
    pub reported_version: u64,
}

impl Twin {
    /// The twin document as the device gets it on GET.
    pub fn document(&self) -> Value {
        let mut desired = self.desired.clone();
        desired.insert("$version".into(), Value::from(self.desired_version));
        let mut reported = self.reported.clone();
        reported.insert("$version".into(), Value::from(self.reported_version));
        serde_json::json!({ "desired": desired, "reported": reported })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub workspace_id: String,
    pub device_id: String,
    pub created_at: Millis,
    /// MQTT subscriptions kept across connections (clean session 0).
    pub subscriptions: BTreeSet<String>,
    pub twin: Twin,
}

/// Everything except messages and blobs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ControlState {
    pub provisioning_tokens: BTreeMap<String, ProvisioningToken>,
    pub operations: BTreeMap<String, Operation>,
    pub registration_tokens: BTreeMap<String, RegistrationTokenInfo>,
    pub sas: BTreeMap<String, SasInfo>,
    /// Keyed by `{workspace}:{device}`. Persisted one row per device (see `Db::save_state`).
    #[serde(skip)]
    pub devices: BTreeMap<String, Device>,
    pub counter: u64,
    /// Devices changed since the last save.
    #[serde(skip)]
    pub dirty: BTreeSet<String>,
}

/// Largest desired or reported properties document (as JSON) of a device: far above IoT Hub's
/// 32 KB, low enough that no device's twin makes each of its changes costly for the others.
pub const MAX_TWIN_SECTION_BYTES: usize = 256 * 1024;

/// Why a twin change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TwinRefusal {
    /// No such device.
    NoDevice,
    /// The document would exceed [`MAX_TWIN_SECTION_BYTES`].
    TooLarge,
}

/// `section` with `patch` merged, unless that is over [`MAX_TWIN_SECTION_BYTES`].
fn patched(section: &Map<String, Value>, patch: &Map<String, Value>) -> Result<Map<String, Value>, TwinRefusal> {
    let mut next = section.clone();
    merge_patch::apply(&mut next, patch);
    let size = serde_json::to_vec(&next).map_or(usize::MAX, |v| v.len());
    if size > MAX_TWIN_SECTION_BYTES {
        return Err(TwinRefusal::TooLarge);
    }
    Ok(next)
}

/// Outcome of polling a provisioning operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompleteOutcome {
    Pending,
    Approved { registration_token: String, expires_at: Millis },
    Expired,
    Cancelled,
    NotFound,
    Unauthorized,
}

/// Lifetimes and policies.
#[derive(Debug, Clone)]
pub struct Policy {
    pub operation_lifetime: Duration,
    pub registration_token_lifetime: Duration,
    pub connection_lifetime: Duration,
    pub auto_approve: Option<Duration>,
}

pub fn hub_device_id(workspace_id: &str, device_id: &str) -> String {
    format!("{workspace_id}:{device_id}")
}

impl ControlState {
    fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    pub fn create_provisioning_token(&mut self, workspace_id: &str) -> String {
        let token = format!("pt-{}", random_hex(16));
        self.provisioning_tokens
            .insert(token.clone(), ProvisioningToken { workspace_id: workspace_id.to_owned(), created_at: now_ms() });
        token
    }

    pub fn init_operation(
        &mut self,
        token: &str,
        requested_device_id: Option<String>,
        policy: &Policy,
    ) -> Option<Operation> {
        let workspace_id = self.provisioning_tokens.get(token)?.workspace_id.clone();
        let n = self.next();
        let now = now_ms();
        let op = Operation {
            id: format!("{:08x}-{}", n, random_hex(6)),
            provisioning_token: token.to_owned(),
            workspace_id,
            requested_device_id,
            verification_code: {
                let b = spotflow_core::secure_random::bytes::<4>();
                format!("{:02X}{:02X}-{:02X}{:02X}", b[0], b[1], b[2], b[3])
            },
            created_at: now,
            expires_at: now + policy.operation_lifetime.as_millis() as u64,
            state: OperationState::Pending,
            device_id: None,
        };
        self.operations.insert(op.id.clone(), op.clone());
        Some(op)
    }

    /// Approves a pending operation, optionally overriding the device id.
    pub fn approve(&mut self, operation_id: &str, device_id: Option<&str>) -> Result<String, EmulatorError> {
        let n = self.counter + 1;
        let op = self
            .operations
            .get_mut(operation_id)
            .ok_or_else(|| EmulatorError::UnknownOperation(operation_id.to_owned()))?;
        if op.state != OperationState::Pending {
            return Err(EmulatorError::NotPending(operation_id.to_owned()));
        }
        if let Some(d) = device_id {
            validate_device_id(d)?;
        }
        if now_ms() >= op.expires_at {
            return Err(EmulatorError::Expired(operation_id.to_owned()));
        }
        let device = device_id
            .map(str::to_owned)
            .or_else(|| op.requested_device_id.clone())
            .unwrap_or_else(|| format!("device-{n}"));
        op.state = OperationState::Approved;
        op.device_id = Some(device.clone());
        self.counter = n;
        Ok(device)
    }

    pub fn cancel(&mut self, operation_id: &str) -> bool {
        match self.operations.get_mut(operation_id) {
            Some(op) if op.state == OperationState::Pending => {
                op.state = OperationState::Cancelled;
                true
            }
            _ => false,
        }
    }

    pub fn complete(&mut self, token: &str, operation_id: &str, policy: &Policy) -> CompleteOutcome {
        let now = now_ms();
        let auto = policy.auto_approve;
        let Some(op) = self.operations.get(operation_id).cloned() else { return CompleteOutcome::NotFound };
        if op.provisioning_token != token {
            return CompleteOutcome::Unauthorized;
        }
        match op.state {
            OperationState::Cancelled => return CompleteOutcome::Cancelled,
            OperationState::Completed => {}
            OperationState::Pending if now >= op.expires_at => return CompleteOutcome::Expired,
            OperationState::Pending => {
                let due = auto.is_some_and(|d| now >= op.created_at + d.as_millis() as u64);
                if !due || self.approve(operation_id, None).is_err() {
                    return CompleteOutcome::Pending;
                }
            }
            OperationState::Approved => {}
        }
        let Some(op) = self.operations.get_mut(operation_id) else { return CompleteOutcome::NotFound };
        op.state = OperationState::Completed;
        let device_id = op.device_id.clone().unwrap_or_default();
        let (ws, pt) = (op.workspace_id.clone(), op.provisioning_token.clone());
        // Each completion issues a new token that invalidates the previous ones of the device.
        self.registration_tokens.retain(|_, rt| !(rt.workspace_id == ws && rt.device_id == device_id));
        let token = format!("rt-{}", random_hex(24));
        let expires_at = now + policy.registration_token_lifetime.as_millis() as u64;
        self.registration_tokens.insert(
            token.clone(),
            RegistrationTokenInfo { workspace_id: ws, device_id, provisioning_token: pt, expires_at },
        );
        CompleteOutcome::Approved { registration_token: token, expires_at }
    }

    /// Registers with a registration token: returns the device and a new SAS.
    pub fn register(
        &mut self,
        registration_token: &str,
        hub_host: &str,
        policy: &Policy,
    ) -> Option<(RegistrationTokenInfo, String, Millis)> {
        let now = now_ms();
        let info = self.registration_tokens.get(registration_token).filter(|i| now < i.expires_at)?.clone();
        let hub_id = hub_device_id(&info.workspace_id, &info.device_id);
        let device = self.devices.entry(hub_id.clone()).or_insert_with(|| Device {
            workspace_id: info.workspace_id.clone(),
            device_id: info.device_id.clone(),
            created_at: now,
            subscriptions: BTreeSet::new(),
            twin: Twin { desired_version: 1, reported_version: 1, ..Twin::default() },
        });
        let _ = device;
        self.dirty.insert(hub_id.clone());
        let expires_at = now + policy.connection_lifetime.as_millis() as u64;
        let resource: String = percent_encoding::utf8_percent_encode(
            &format!("{hub_host}/devices/{hub_id}"),
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string();
        let sas = format!("SharedAccessSignature sr={resource}&sig={}&se={}", random_hex(32), expires_at / 1000);
        self.sas.retain(|_, s| s.expires_at > now);
        let (key, signature) = sas_key(&sas)?;
        let info_sas = SasInfo { hub_device_id: hub_id, expires_at, signature: signature.to_owned() };
        self.sas.insert(key, info_sas);
        Some((info, sas, expires_at))
    }

    pub fn refresh(
        &mut self,
        provisioning_token: &str,
        registration_token: &str,
        policy: &Policy,
    ) -> Option<(String, Millis)> {
        let now = now_ms();
        let info = self.registration_tokens.get(registration_token).filter(|i| now < i.expires_at)?.clone();
        if info.provisioning_token != provisioning_token {
            return None;
        }
        self.registration_tokens.remove(registration_token);
        let token = format!("rt-{}", random_hex(24));
        let expires_at = now + policy.registration_token_lifetime.as_millis() as u64;
        self.registration_tokens.insert(token.clone(), RegistrationTokenInfo { expires_at, ..info });
        Some((token, expires_at))
    }

    /// Revokes every SAS of the device; returns how many there were.
    pub fn revoke_sas(&mut self, hub_id: &str) -> usize {
        let before = self.sas.len();
        self.sas.retain(|_, s| s.hub_device_id != hub_id);
        before - self.sas.len()
    }

    /// The device a SAS authorises, if valid now.
    pub fn authorize(&self, sas: &str) -> Option<&str> {
        self.sas_entry(sas).map(|s| s.hub_device_id.as_str())
    }

    /// The device and expiry (Unix ms) of a valid, unexpired SAS.
    /// Found by the SAS's selector, then the whole signature compared in constant time.
    pub fn sas_entry(&self, sas: &str) -> Option<&SasInfo> {
        let (key, signature) = sas_key(sas)?;
        self.sas
            .get(&key)
            .filter(|s| crate::wire::ct_eq(s.signature.as_bytes(), signature.as_bytes()))
            .filter(|s| now_ms() < s.expires_at)
    }

    /// Merges a patch into the desired properties; returns the new version.
    pub fn update_desired(&mut self, hub_id: &str, patch: &Map<String, Value>) -> Result<u64, TwinRefusal> {
        let device = self.devices.get_mut(hub_id).ok_or(TwinRefusal::NoDevice)?;
        let twin = &mut device.twin;
        twin.desired = patched(&twin.desired, patch)?;
        twin.desired_version += 1;
        self.dirty.insert(hub_id.to_owned());
        Ok(twin.desired_version)
    }

    /// Merges a patch into the reported properties; returns the new version.
    pub fn patch_reported(&mut self, hub_id: &str, patch: &Map<String, Value>) -> Result<u64, TwinRefusal> {
        let device = self.devices.get_mut(hub_id).ok_or(TwinRefusal::NoDevice)?;
        let twin = &mut device.twin;
        twin.reported = patched(&twin.reported, patch)?;
        twin.reported_version += 1;
        self.dirty.insert(hub_id.to_owned());
        Ok(twin.reported_version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            operation_lifetime: Duration::from_secs(60),
            registration_token_lifetime: Duration::from_secs(60),
            connection_lifetime: Duration::from_secs(60),
            auto_approve: None,
        }
    }

    fn registered() -> (ControlState, String) {
        let mut state = ControlState::default();
        state.registration_tokens.insert(
            "rt-1".into(),
            RegistrationTokenInfo {
                workspace_id: "ws".into(),
                device_id: "dev".into(),
                provisioning_token: "pt".into(),
                expires_at: now_ms() + 60_000,
            },
        );
        let (_, sas, _) = state.register("rt-1", "localhost", &policy()).expect("registered");
        (state, sas)
    }

    #[test]
    fn sas_keys_hold_only_the_selector_and_signatures_are_checked_whole() {
        let (state, sas) = registered();
        let (_, signature) = sas_key(&sas).unwrap();
        assert_eq!(signature.len(), 64);
        assert!(state.sas.keys().all(|k| !k.contains(signature)), "the lookup key must not hold the signature");
        assert_eq!(state.authorize(&sas), Some("ws:dev"));
        // Same selector, another tail: refused (the tail is compared in constant time).
        let mut forged = signature.to_owned();
        forged.replace_range(40..41, if &signature[40..41] == "0" { "1" } else { "0" });
        assert_eq!(state.authorize(&sas.replace(signature, &forged)), None);
        assert_eq!(state.authorize(&sas.replace(signature, &signature[..SAS_SELECTOR_LEN])), None);
        assert_eq!(state.authorize("SharedAccessSignature sr=x&se=1"), None);
        assert_eq!(state.authorize(""), None);
    }
}
