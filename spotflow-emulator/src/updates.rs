//! Software updates: artifacts published through the admin API, rollouts that set the desired
//! property `spotflowUpdate` of chosen devices to a signed manifest, artifact downloads over
//! HTTPS with `Range`, and each device's progress (its reported `spotflowUpdate` and the bytes
//! served to it). Faults for tests: a corrupted or truncated artifact, a slow one, connections cut
//! once at chosen fractions of the download. Kept in memory (an emulator restart forgets them).
//!
//! Each device of a rollout downloads from its own URL (`/updates/{artifact}/{token}`, the token
//! random and unguessable, as a blob SAS), so that the bytes served are counted per device.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bytes::Bytes;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use spotflow_core::update::{IfBusy, UpdateManifest};
use spotflow_core::UPDATE_PROPERTY;

use crate::state::{now_ms, random_hex, Millis};

/// Largest artifact the admin API accepts.
pub const MAX_ARTIFACT_BYTES: usize = 1 << 30;

/// A published artifact, as listed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactInfo {
    /// Its id (in download URLs).
    pub id: String,
    /// The version it installs.
    pub version: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, lowercase hexadecimal.
    pub sha256: String,
    /// When it was published (Unix ms).
    pub published_at: Millis,
    /// The faults set on it.
    pub faults: ArtifactFaults,
}

/// Faults of an artifact's downloads, for tests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ArtifactFaults {
    /// Serve the artifact with one byte changed (in its middle): the checksum fails.
    pub corrupt: bool,
    /// Serve only its first half (a `Range` beyond answers 416).
    pub truncate: bool,
    /// Serve at most this many bytes per second per download.
    pub slow_bytes_per_second: Option<u64>,
    /// Cut each device's connection once at each of these fractions of the artifact (0 to 1).
    pub cut_at: Vec<f64>,
}

struct Artifact {
    info: ArtifactInfo,
    bytes: Bytes,
}

/// One device of a rollout.
struct Target {
    hub_id: String,
    served: u64,
    requests: u64,
    /// Offsets of the artifact's cuts (`cut_at`) already applied to this device.
    cuts_done: Vec<u64>,
}

struct Rollout {
    id: String,
    artifact: String,
    manifest: UpdateManifest,
    created_at: Millis,
    targets: Vec<Target>,
}

/// A rollout's request (`POST /admin/updates/rollouts`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutRequest {
    /// The artifact's id.
    pub artifact: String,
    /// The devices (`{workspace}:{device}` ids).
    pub devices: Vec<String>,
    /// What a device busy with another update does: `queue` (default) or `cancel`.
    #[serde(default)]
    pub if_busy: Option<String>,
    /// Not installed before (RFC 3339).
    #[serde(default)]
    pub install_after: Option<String>,
    /// Not installed after (RFC 3339).
    #[serde(default)]
    pub install_before: Option<String>,
    /// Base of the download URLs instead of the emulator's own HTTPS address (e.g. a proxy in
    /// front of it, for network-fault tests).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Leave the manifest unsigned.
    #[serde(default)]
    pub unsigned: bool,
}

/// One device's progress in a rollout.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceProgress {
    /// The device.
    pub device: String,
    /// Its reported state (`pending` until it reports about this rollout).
    pub state: String,
    /// Bytes it reported downloaded.
    pub bytes: u64,
    /// The error it reported (`{"reason", "detail"}`).
    pub error: Option<Value>,
    /// Bytes the emulator served to it.
    pub bytes_served: u64,
    /// Download requests it made.
    pub requests: u64,
}

/// A rollout's state.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Its id (also the manifest's id).
    pub id: String,
    /// The artifact.
    pub artifact: String,
    /// The version.
    pub version: String,
    /// Artifact size.
    pub size: u64,
    /// When it started (Unix ms).
    pub created_at: Millis,
    /// Devices per state.
    pub counts: BTreeMap<String, usize>,
    /// Each device.
    pub devices: Vec<DeviceProgress>,
}

/// Why a rollout or a publication was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpdateRefusal {
    /// No artifact with this id.
    #[error("no such artifact")]
    UnknownArtifact,
    /// A device is not registered.
    #[error("no such device: {0}")]
    UnknownDevice(String),
    /// Something else in the request.
    #[error("{0}")]
    Invalid(String),
}

/// What a download request gets.
pub(crate) struct Download {
    pub bytes: Bytes,
    /// First byte served.
    pub start: u64,
    /// The artifact's size as served (the truncated size with `truncate`).
    pub total: u64,
    /// Cut the body after this many bytes (a one-shot network fault).
    pub cut_after: Option<u64>,
    pub slow_bytes_per_second: Option<u64>,
    /// Where the served bytes are counted.
    pub counter: (String, usize),
}

/// Every artifact and rollout, and the key manifests are signed with.
pub struct Updates {
    key: Ed25519KeyPair,
    inner: Mutex<State>,
}

#[derive(Default)]
struct State {
    artifacts: HashMap<String, Artifact>,
    rollouts: Vec<Rollout>,
    /// Download token → (rollout index, target index).
    tokens: HashMap<String, (usize, usize)>,
}

impl Default for Updates {
    fn default() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("the system random generator works");
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("a key just generated parses");
        Updates { key, inner: Mutex::new(State::default()) }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Updates {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        spotflow_core::lock(&self.inner)
    }

    /// The Ed25519 public key manifests are signed with (32 bytes, hexadecimal): the key devices
    /// are configured with.
    pub fn public_key_hex(&self) -> String {
        hex(self.key.public_key().as_ref())
    }

    /// Publishes an artifact; returns it.
    pub fn publish(&self, bytes: Bytes, version: &str) -> Result<ArtifactInfo, UpdateRefusal> {
        if version.is_empty() || version.len() > 128 {
            return Err(UpdateRefusal::Invalid("version: 1 to 128 characters".into()));
        }
        if bytes.is_empty() {
            return Err(UpdateRefusal::Invalid("an empty artifact".into()));
        }
        let sha256 = hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
        let info = ArtifactInfo {
            id: format!("a{}", random_hex(6)),
            version: version.to_owned(),
            size: bytes.len() as u64,
            sha256,
            published_at: now_ms(),
            faults: ArtifactFaults::default(),
        };
        self.state().artifacts.insert(info.id.clone(), Artifact { info: info.clone(), bytes });
        Ok(info)
    }

    /// Every artifact, oldest first.
    pub fn artifacts(&self) -> Vec<ArtifactInfo> {
        let mut list: Vec<_> = self.state().artifacts.values().map(|a| a.info.clone()).collect();
        list.sort_by_key(|a| a.published_at);
        list
    }

    /// Sets an artifact's faults.
    pub fn set_faults(&self, artifact: &str, faults: ArtifactFaults) -> Result<(), UpdateRefusal> {
        if faults.cut_at.iter().any(|f| !(0.0..1.0).contains(f)) {
            return Err(UpdateRefusal::Invalid("cutAt: fractions from 0 to below 1".into()));
        }
        let mut state = self.state();
        let a = state.artifacts.get_mut(artifact).ok_or(UpdateRefusal::UnknownArtifact)?;
        a.info.faults = faults;
        Ok(())
    }

    /// Makes a rollout's signed manifests; `devices_known` says which devices exist and
    /// `https_base` is the emulator's HTTPS base URL. Returns the rollout's id and each device's
    /// manifest (the caller sets the desired properties).
    pub(crate) fn start_rollout(
        &self,
        request: &RolloutRequest,
        devices_known: impl Fn(&str) -> bool,
        https_base: &str,
    ) -> Result<(String, Vec<(String, Value)>), UpdateRefusal> {
        if let Some(d) = request.devices.iter().find(|d| !devices_known(d)) {
            return Err(UpdateRefusal::UnknownDevice(d.clone()));
        }
        if request.devices.is_empty() {
            return Err(UpdateRefusal::Invalid("devices: at least one".into()));
        }
        let if_busy = match request.if_busy.as_deref() {
            None | Some("queue") => IfBusy::Queue,
            Some("cancel") => IfBusy::Cancel,
            Some(other) => return Err(UpdateRefusal::Invalid(format!("ifBusy {other:?}: queue or cancel"))),
        };
        let mut state = self.state();
        let artifact = state.artifacts.get(&request.artifact).ok_or(UpdateRefusal::UnknownArtifact)?;
        let info = artifact.info.clone();
        let id = format!("r{}-{}", state.rollouts.len() + 1, random_hex(3));
        let base = request.base_url.as_deref().unwrap_or(https_base).trim_end_matches('/').to_owned();
        let template = UpdateManifest {
            id: id.clone(),
            version: info.version.clone(),
            url: String::new(),
            size: info.size,
            sha256: info.sha256.clone(),
            signature: None,
            install_after: request.install_after.clone(),
            install_before: request.install_before.clone(),
            if_busy,
        };
        let index = state.rollouts.len();
        let mut targets = Vec::new();
        let mut manifests = Vec::new();
        for (t, device) in request.devices.iter().enumerate() {
            let token = random_hex(16);
            let mut manifest = template.clone();
            manifest.url = format!("{base}/updates/{}/{token}", info.id);
            if !request.unsigned {
                manifest.signature = Some(hex(self.key.sign(&manifest.signed_bytes()).as_ref()));
            }
            // Checked as a device checks it: a bad time or version is refused here.
            let value = manifest.to_json();
            UpdateManifest::from_json(&value).map_err(|e| UpdateRefusal::Invalid(e.to_string()))?;
            state.tokens.insert(token, (index, t));
            targets.push(Target { hub_id: device.clone(), served: 0, requests: 0, cuts_done: Vec::new() });
            manifests.push((device.clone(), value));
        }
        state.rollouts.push(Rollout {
            id: id.clone(),
            artifact: info.id,
            manifest: template,
            created_at: now_ms(),
            targets,
        });
        Ok((id, manifests))
    }

    /// What `GET /updates/{artifact}/{token}` with a range starting at `from` serves.
    pub(crate) fn download(&self, artifact: &str, token: &str, from: u64) -> Result<Download, u16> {
        let mut state = self.state();
        let &(r, t) = state.tokens.get(token).ok_or(404u16)?;
        if state.rollouts[r].artifact != artifact {
            return Err(404);
        }
        let a = state.artifacts.get(artifact).ok_or(404u16)?;
        let faults = a.info.faults.clone();
        let mut bytes = a.bytes.clone();
        if faults.truncate {
            bytes = bytes.slice(..bytes.len() / 2);
        }
        if faults.corrupt {
            let mut v = bytes.to_vec();
            let middle = v.len() / 2;
            v[middle] ^= 0xff;
            bytes = Bytes::from(v);
        }
        let total = bytes.len() as u64;
        if from >= total && total > 0 && from > 0 {
            return Err(416);
        }
        let mut cuts: Vec<u64> = faults.cut_at.iter().map(|f| (f * a.info.size as f64) as u64).collect();
        cuts.sort_unstable();
        let target = &mut state.rollouts[r].targets[t];
        target.requests += 1;
        // The first cut ahead of this download not yet applied to the device applies (once).
        let cut = cuts.into_iter().find(|c| *c >= from && !target.cuts_done.contains(c));
        if let Some(c) = cut {
            target.cuts_done.push(c);
        }
        let cut_after = cut.map(|c| c - from);
        Ok(Download {
            bytes,
            start: from,
            total,
            cut_after,
            slow_bytes_per_second: faults.slow_bytes_per_second,
            counter: (token.to_owned(), 0),
        })
    }

    /// Counts bytes served on a download token.
    pub(crate) fn served(&self, token: &str, bytes: u64) {
        let mut state = self.state();
        if let Some(&(r, t)) = state.tokens.get(token) {
            state.rollouts[r].targets[t].served += bytes;
        }
    }

    /// Every rollout's id, newest last.
    pub fn rollout_ids(&self) -> Vec<String> {
        self.state().rollouts.iter().map(|r| r.id.clone()).collect()
    }

    /// A rollout's state; `reported` gives a device's reported `spotflowUpdate` value.
    pub(crate) fn rollout(&self, id: &str, reported: impl Fn(&str) -> Option<Value>) -> Option<RolloutStatus> {
        let state = self.state();
        let r = state.rollouts.iter().find(|r| r.id == id)?;
        let mut counts = BTreeMap::new();
        let devices: Vec<DeviceProgress> = r
            .targets
            .iter()
            .map(|t| {
                let report = reported(&t.hub_id).filter(|v| v["id"].as_str() == Some(r.id.as_str()));
                let state = match &report {
                    Some(v) => v["state"].as_str().unwrap_or("unknown").to_owned(),
                    None if reported(&t.hub_id).is_some_and(|v| v["queued"].as_str() == Some(r.id.as_str())) => {
                        "queued".to_owned()
                    }
                    None => "pending".to_owned(),
                };
                *counts.entry(state.clone()).or_insert(0) += 1;
                DeviceProgress {
                    device: t.hub_id.clone(),
                    state,
                    bytes: report.as_ref().and_then(|v| v["bytes"].as_u64()).unwrap_or(0),
                    error: report.as_ref().map(|v| v["error"].clone()).filter(|e| !e.is_null()),
                    bytes_served: t.served,
                    requests: t.requests,
                }
            })
            .collect();
        Some(RolloutStatus {
            id: r.id.clone(),
            artifact: r.artifact.clone(),
            version: r.manifest.version.clone(),
            size: r.manifest.size,
            created_at: r.created_at,
            counts,
            devices,
        })
    }
}

/// The reported `spotflowUpdate` of a twin's reported document.
pub(crate) fn reported_update(reported: &Value) -> Option<Value> {
    reported.get(UPDATE_PROPERTY).filter(|v| v.is_object()).cloned()
}

/// A summary for listings: `{"artifacts": [...], "rollouts": [ids]}`.
pub(crate) fn listing(updates: &Updates) -> Value {
    json!({"artifacts": updates.artifacts(), "rollouts": updates.rollout_ids(), "publicKey": updates.public_key_hex()})
}
