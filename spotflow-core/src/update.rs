//! Software updates: the manifest the platform sends as the desired property
//! [`UPDATE_PROPERTY`], the record of an update's progress the store keeps ([`UpdateRecord`]),
//! the state machine that moves it ([`UpdateMachine`], sans-IO: the facade downloads, verifies
//! and calls the application, and saves the record after every transition), and the
//! [`ArtifactSource`] the artifact is downloaded from.
//!
//! The phases: `idle → downloading → verifying → ready → installing → rebooting → confirming →
//! succeeded`, or `failed` (with a reason), `rolledBack` (the new version failed its health
//! check), `cancelled` (superseded by a newer manifest). After a restart the machine goes on
//! from the phase saved: a download resumes from its last checkpoint, a verification starts
//! again, an install interrupted halfway is verified and installed again (install handlers are
//! idempotent), a reboot leads to the confirmation.

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{Error, Result};

/// The desired property that carries the manifest, and the reported property that carries the
/// update's state.
pub const UPDATE_PROPERTY: &str = "spotflowUpdate";

/// Largest artifact accepted (16 GiB).
pub const MAX_ARTIFACT_SIZE: u64 = 16 << 30;

/// What a manifest asks for when it arrives while another update is running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum IfBusy {
    /// Wait until the running update ends, then start (the default). A later manifest replaces
    /// a waiting one.
    #[default]
    Queue,
    /// Cancel the running update if it has not started installing (downloading, verifying or
    /// ready), else wait as `queue`.
    Cancel,
}

impl IfBusy {
    fn as_str(self) -> &'static str {
        match self {
            IfBusy::Queue => "queue",
            IfBusy::Cancel => "cancel",
        }
    }
}

/// An update the platform asks the device to apply: the value of the desired property
/// [`UPDATE_PROPERTY`].
///
/// ```json
/// {"id": "fw-2026-12", "version": "2.4.0", "url": "https://…/artifact", "size": 52428800,
///  "sha256": "…64 hex digits…", "signature": "…128 hex digits…",
///  "installAfter": "2026-12-07T22:00:00Z", "installBefore": "2026-12-08T06:00:00Z", "ifBusy": "queue"}
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateManifest {
    /// Names this update (letters, digits, `.`, `_`, `-`; at most 128): a manifest with an id
    /// already handled is not applied again.
    pub id: String,
    /// The version the artifact installs.
    pub version: String,
    /// Where the artifact is downloaded from (HTTPS; plain HTTP only to a loopback host).
    pub url: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, lowercase hexadecimal.
    pub sha256: String,
    /// An Ed25519 signature of [`UpdateManifest::signed_bytes`], hexadecimal; required when the
    /// device is configured with a public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Not installed before this time (RFC 3339); downloaded and verified at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_after: Option<String>,
    /// Not installed after this time (RFC 3339): an update not installed by then fails
    /// (`expired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_before: Option<String>,
    /// What to do when another update is running.
    #[serde(default)]
    pub if_busy: IfBusy,
}

impl fmt::Debug for UpdateManifest {
    // Without the URL: it may carry a signature of its own (a SAS).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpdateManifest")
            .field("id", &self.id)
            .field("version", &self.version)
            .field("size", &self.size)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl UpdateManifest {
    /// Reads and checks a manifest (the desired property's value).
    pub fn from_json(value: &Value) -> Result<UpdateManifest> {
        let m: UpdateManifest =
            serde_json::from_value(value.clone()).map_err(|e| Error::invalid("update manifest", e))?;
        m.validate()?;
        Ok(m)
    }

    /// The manifest as JSON.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::invalid("update manifest", reason));
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 128
            && self.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && !self.id.starts_with('.');
        if !id_ok {
            return bad(format!("id {:?}: 1 to 128 letters, digits, '.', '_' or '-', not starting with '.'", self.id));
        }
        if self.version.is_empty() || self.version.len() > 128 {
            return bad("version: 1 to 128 characters".into());
        }
        if !(self.url.starts_with("https://") || self.url.starts_with("http://")) {
            return bad("url: an https:// URL".into());
        }
        if self.size == 0 || self.size > MAX_ARTIFACT_SIZE {
            return bad(format!("size {}: 1 byte to {MAX_ARTIFACT_SIZE}", self.size));
        }
        if !is_hex(&self.sha256, 64) {
            return bad("sha256: 64 lowercase hexadecimal digits".into());
        }
        if self.signature.as_deref().is_some_and(|s| !is_hex(s, 128)) {
            return bad("signature: 128 lowercase hexadecimal digits (Ed25519)".into());
        }
        for (name, t) in [("installAfter", &self.install_after), ("installBefore", &self.install_before)] {
            if let Some(t) = t {
                crate::time_format::parse_rfc3339(t)
                    .map_err(|e| Error::invalid("update manifest", format!("{name}: {e}")))?;
            }
        }
        Ok(())
    }

    /// The bytes the signature covers: every field but the signature, one `name=value` line
    /// each, in this order, after the line `spotflow-update-v1` (absent times are empty).
    pub fn signed_bytes(&self) -> Vec<u8> {
        format!(
            "spotflow-update-v1\nid={}\nversion={}\nurl={}\nsize={}\nsha256={}\ninstallAfter={}\ninstallBefore={}\nifBusy={}\n",
            self.id,
            self.version,
            self.url,
            self.size,
            self.sha256,
            self.install_after.as_deref().unwrap_or(""),
            self.install_before.as_deref().unwrap_or(""),
            self.if_busy.as_str(),
        )
        .into_bytes()
    }

    /// `install_after` as Unix milliseconds.
    pub fn install_after_ms(&self) -> Option<u64> {
        self.install_after.as_deref().and_then(unix_ms)
    }

    /// `install_before` as Unix milliseconds.
    pub fn install_before_ms(&self) -> Option<u64> {
        self.install_before.as_deref().and_then(unix_ms)
    }
}

fn unix_ms(t: &str) -> Option<u64> {
    let t = crate::time_format::parse_rfc3339(t).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0))
}

/// Where an update is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UpdatePhase {
    /// No update was ever asked for.
    #[default]
    Idle,
    /// The artifact is being downloaded (or waits to resume).
    Downloading,
    /// The downloaded artifact's size, SHA-256 (and signature) are being checked.
    Verifying,
    /// Verified; waits for its install window (`installAfter`).
    Ready,
    /// The application's install handler has the verified file.
    Installing,
    /// Installed; waits for the reboot the install asked for.
    Rebooting,
    /// Running the new version; the application's health check decides.
    Confirming,
    /// Installed and confirmed.
    Succeeded,
    /// Failed: see the record's error.
    Failed,
    /// The new version failed its health check and the application rolled it back.
    RolledBack,
    /// Superseded by a newer manifest before it was installed.
    Cancelled,
}

impl UpdatePhase {
    /// Whether the update is over (or none started): a new manifest starts at once.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            UpdatePhase::Idle
                | UpdatePhase::Succeeded
                | UpdatePhase::Failed
                | UpdatePhase::RolledBack
                | UpdatePhase::Cancelled
        )
    }

    /// Whether the application was handed the artifact already (from `installing` on): such an
    /// update cannot be cancelled.
    pub fn touched_the_device(self) -> bool {
        matches!(self, UpdatePhase::Installing | UpdatePhase::Rebooting | UpdatePhase::Confirming)
    }

    /// The name used in the reported property (`downloading`, `rolledBack`…).
    pub fn as_str(self) -> &'static str {
        match self {
            UpdatePhase::Idle => "idle",
            UpdatePhase::Downloading => "downloading",
            UpdatePhase::Verifying => "verifying",
            UpdatePhase::Ready => "ready",
            UpdatePhase::Installing => "installing",
            UpdatePhase::Rebooting => "rebooting",
            UpdatePhase::Confirming => "confirming",
            UpdatePhase::Succeeded => "succeeded",
            UpdatePhase::Failed => "failed",
            UpdatePhase::RolledBack => "rolledBack",
            UpdatePhase::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for UpdatePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an update failed: a short machine-readable `reason` (`checksum`, `signature`, `size`,
/// `diskFull`, `download`, `install`, `expired`, `rollback`, `healthCheck`, `manifest`) and a
/// human-readable `detail`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateFailure {
    /// Machine-readable reason.
    pub reason: String,
    /// What happened.
    pub detail: String,
}

/// An update's progress, saved by the store at every transition (and at every download
/// checkpoint).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UpdateRecord {
    /// The update this record is about (`None` while idle).
    pub manifest: Option<UpdateManifest>,
    /// Where it is.
    pub phase: UpdatePhase,
    /// Bytes of the artifact durably written (fsync'd) to the partial file.
    pub downloaded: u64,
    /// Download attempts that failed in a row (for the backoff).
    pub attempts: u32,
    /// Why it failed or was rolled back.
    pub error: Option<UpdateFailure>,
    /// A manifest waiting for this update to end.
    pub queued: Option<UpdateManifest>,
    /// When the health check must have passed (Unix ms), while confirming.
    pub confirm_deadline_ms: Option<u64>,
}

impl UpdateRecord {
    /// The record as stored.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Reads a stored record.
    pub fn from_json(value: &Value) -> Result<UpdateRecord> {
        serde_json::from_value(value.clone()).map_err(|e| Error::store("invalid update record", e))
    }

    /// The value of the reported property [`UPDATE_PROPERTY`]: `{"id", "version", "state",
    /// "bytes", "size", "error": {"reason", "detail"} | null, "queued": id | null}`.
    pub fn reported(&self) -> Value {
        let m = self.manifest.as_ref();
        json!({
            "id": m.map(|m| m.id.as_str()),
            "version": m.map(|m| m.version.as_str()),
            "state": self.phase.as_str(),
            "bytes": self.downloaded,
            "size": m.map(|m| m.size),
            "error": self.error,
            "queued": self.queued.as_ref().map(|q| q.id.as_str()),
        })
    }
}

/// What the facade does next for the record's phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateStep {
    /// Nothing (idle or over).
    Nothing,
    /// Download from byte `from` (the last checkpoint).
    Download {
        /// First byte to fetch.
        from: u64,
    },
    /// Check the downloaded file.
    Verify,
    /// Wait until this time (Unix ms), then ask again: the install window has not opened.
    WaitUntil(u64),
    /// Hand the verified file to the application's install handler.
    Install,
    /// The install window closed before the update was installed: fail it (`expired`).
    Expire,
    /// Wait for the reboot the install asked for (the process restarting).
    AwaitReboot,
    /// Run the application's health check, until this deadline (Unix ms).
    Confirm {
        /// When a health check that has not passed counts as failed.
        deadline_ms: u64,
    },
}

/// What [`UpdateMachine::offer`] did with a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offered {
    /// It is the update the record is about, or the one waiting: nothing changed.
    Known,
    /// It started (nothing was running).
    Started,
    /// It waits for the running update to end.
    Queued,
    /// The running update (this manifest) was cancelled and the new one started: remove its
    /// files.
    Superseded(UpdateManifest),
}

/// The update state machine: every method is one transition of [`UpdateMachine::record`], which
/// the caller saves afterwards. Transitions that do not apply to the current phase are ignored
/// (and return `false`).
#[derive(Debug, Clone, Default)]
pub struct UpdateMachine {
    /// The state, as saved.
    pub record: UpdateRecord,
}

impl UpdateMachine {
    /// A machine going on from a saved record.
    pub fn new(record: UpdateRecord) -> UpdateMachine {
        UpdateMachine { record }
    }

    /// The phase.
    pub fn phase(&self) -> UpdatePhase {
        self.record.phase
    }

    fn start(&mut self, manifest: UpdateManifest) {
        let queued = self.record.queued.take().filter(|q| q.id != manifest.id);
        self.record = UpdateRecord {
            manifest: Some(manifest),
            phase: UpdatePhase::Downloading,
            queued,
            ..UpdateRecord::default()
        };
    }

    /// Offers a (checked) manifest from the desired properties.
    pub fn offer(&mut self, manifest: UpdateManifest) -> Offered {
        let current = self.record.manifest.as_ref();
        if current.is_some_and(|c| c.id == manifest.id) || self.record.queued.as_ref().is_some_and(|q| q == &manifest) {
            return Offered::Known;
        }
        let phase = self.record.phase;
        if phase.is_final() {
            self.start(manifest);
            return Offered::Started;
        }
        if manifest.if_busy == IfBusy::Cancel && !phase.touched_the_device() {
            let old = self.record.manifest.clone();
            self.start(manifest);
            return match old {
                Some(old) => Offered::Superseded(old),
                None => Offered::Started,
            };
        }
        self.record.queued = Some(manifest);
        Offered::Queued
    }

    /// Records a manifest that was refused (malformed, bad signature) as failed when nothing is
    /// running (a running update goes on; the refusal is only logged). Returns whether the record
    /// changed.
    pub fn refuse(&mut self, manifest: Option<UpdateManifest>, failure: UpdateFailure) -> bool {
        if !self.record.phase.is_final() {
            return false;
        }
        if let (Some(m), Some(c)) = (&manifest, &self.record.manifest) {
            if m.id == c.id && self.record.phase == UpdatePhase::Failed {
                return false;
            }
        }
        self.record = UpdateRecord {
            manifest,
            phase: UpdatePhase::Failed,
            error: Some(failure),
            queued: self.record.queued.take(),
            ..UpdateRecord::default()
        };
        true
    }

    /// What to do next, at `now_ms` (Unix ms).
    pub fn next(&self, now_ms: u64) -> UpdateStep {
        let r = &self.record;
        match r.phase {
            UpdatePhase::Downloading => UpdateStep::Download { from: r.downloaded },
            UpdatePhase::Verifying => UpdateStep::Verify,
            UpdatePhase::Ready => {
                let m = r.manifest.as_ref();
                if m.and_then(UpdateManifest::install_before_ms).is_some_and(|t| now_ms > t) {
                    UpdateStep::Expire
                } else {
                    match m.and_then(UpdateManifest::install_after_ms) {
                        Some(t) if now_ms < t => UpdateStep::WaitUntil(t),
                        _ => UpdateStep::Install,
                    }
                }
            }
            UpdatePhase::Installing => UpdateStep::Install,
            UpdatePhase::Rebooting => UpdateStep::AwaitReboot,
            UpdatePhase::Confirming => UpdateStep::Confirm { deadline_ms: r.confirm_deadline_ms.unwrap_or(now_ms) },
            _ => UpdateStep::Nothing,
        }
    }

    /// After a restart of the process: a pending reboot happened (→ confirming, deadline
    /// `now + confirm_timeout`); an install interrupted halfway is verified again before it is
    /// installed again; a verification starts again. Returns whether the record changed.
    pub fn restarted(&mut self, now_ms: u64, confirm_timeout_ms: u64) -> bool {
        match self.record.phase {
            UpdatePhase::Rebooting => {
                self.record.phase = UpdatePhase::Confirming;
                self.record.confirm_deadline_ms = Some(now_ms.saturating_add(confirm_timeout_ms));
                true
            }
            UpdatePhase::Installing => {
                self.record.phase = UpdatePhase::Verifying;
                true
            }
            _ => false,
        }
    }

    fn is(&self, phase: UpdatePhase) -> bool {
        self.record.phase == phase
    }

    /// `bytes` of the artifact are durably in the partial file (a checkpoint).
    pub fn checkpoint(&mut self, bytes: u64) -> bool {
        if !self.is(UpdatePhase::Downloading) {
            return false;
        }
        if bytes > self.record.downloaded {
            self.record.attempts = 0;
        }
        self.record.downloaded = bytes;
        true
    }

    /// A download attempt failed and will be retried; returns the attempts failed in a row.
    pub fn download_attempt_failed(&mut self) -> u32 {
        self.record.attempts = self.record.attempts.saturating_add(1);
        self.record.attempts
    }

    /// The whole artifact is durably downloaded: → verifying.
    pub fn downloaded(&mut self) -> bool {
        if !self.is(UpdatePhase::Downloading) {
            return false;
        }
        self.record.downloaded = self.record.manifest.as_ref().map_or(0, |m| m.size);
        self.record.phase = UpdatePhase::Verifying;
        true
    }

    /// The artifact passed its checks: → ready.
    pub fn verified(&mut self) -> bool {
        if !self.is(UpdatePhase::Verifying) {
            return false;
        }
        self.record.phase = UpdatePhase::Ready;
        true
    }

    /// The install handler is being called: → installing.
    pub fn installing(&mut self) -> bool {
        if !self.is(UpdatePhase::Ready) {
            return false;
        }
        self.record.phase = UpdatePhase::Installing;
        true
    }

    /// The install handler succeeded: → rebooting (`needs_reboot`), else → confirming with the
    /// deadline `now + confirm_timeout`.
    pub fn installed(&mut self, needs_reboot: bool, now_ms: u64, confirm_timeout_ms: u64) -> bool {
        if !self.is(UpdatePhase::Installing) {
            return false;
        }
        if needs_reboot {
            self.record.phase = UpdatePhase::Rebooting;
        } else {
            self.record.phase = UpdatePhase::Confirming;
            self.record.confirm_deadline_ms = Some(now_ms.saturating_add(confirm_timeout_ms));
        }
        true
    }

    /// The health check passed: → succeeded (a queued manifest starts).
    pub fn confirmed(&mut self) -> bool {
        if !self.is(UpdatePhase::Confirming) {
            return false;
        }
        self.finish(UpdatePhase::Succeeded, None);
        true
    }

    /// The health check failed and the rollback handler restored the previous version: →
    /// rolled back.
    pub fn rolled_back(&mut self, failure: UpdateFailure) -> bool {
        if !self.is(UpdatePhase::Confirming) {
            return false;
        }
        self.finish(UpdatePhase::RolledBack, Some(failure));
        true
    }

    /// The update failed for good (in any running phase): → failed.
    pub fn fail(&mut self, failure: UpdateFailure) -> bool {
        if self.record.phase.is_final() {
            return false;
        }
        self.finish(UpdatePhase::Failed, Some(failure));
        true
    }

    fn finish(&mut self, phase: UpdatePhase, error: Option<UpdateFailure>) {
        self.record.phase = phase;
        self.record.error = error;
        self.record.confirm_deadline_ms = None;
        self.record.attempts = 0;
    }

    /// Starts the queued manifest once the update is over; returns whether one started.
    pub fn start_queued(&mut self) -> bool {
        if !self.record.phase.is_final() {
            return false;
        }
        match self.record.queued.take() {
            Some(q) => {
                self.start(q);
                true
            }
            None => false,
        }
    }
}

/// Where artifacts are downloaded from: the built-in HTTPS source (feature `mqtt` of
/// `spotflow-device`) or the application's own (another protocol, a local mirror, a test).
#[async_trait]
pub trait ArtifactSource: fmt::Debug + Send + Sync + 'static {
    /// Starts fetching `url` from byte `offset` (a `Range` request). Errors that may go away
    /// (network, 5xx) are temporary ([`Error::is_temporary`]); others fail the update.
    async fn open(&self, url: &str, offset: u64) -> Result<Box<dyn ArtifactBody>>;
}

/// The body of one artifact download.
#[async_trait]
pub trait ArtifactBody: Send {
    /// Where the body starts in the artifact: the offset asked for, or 0 when the server sent the
    /// whole artifact instead.
    fn start(&self) -> u64;
    /// The next bytes, `None` at the end of the body.
    async fn chunk(&mut self) -> Result<Option<Bytes>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn manifest(id: &str) -> UpdateManifest {
        UpdateManifest::from_json(&json!({
            "id": id, "version": "2.0", "url": "https://example.invalid/a", "size": 100,
            "sha256": "ab".repeat(32),
        }))
        .unwrap()
    }

    fn failure(reason: &str) -> UpdateFailure {
        UpdateFailure { reason: reason.into(), detail: String::new() }
    }

    #[test]
    fn manifests_are_checked() {
        let ok = manifest("a").to_json();
        for (field, value) in [
            ("id", json!("")),
            ("id", json!("../x")),
            ("id", json!("a/b")),
            ("url", json!("ftp://x")),
            ("size", json!(0)),
            ("sha256", json!("AB".repeat(32))),
            ("sha256", json!("ab")),
            ("signature", json!("00")),
            ("installAfter", json!("tomorrow")),
            ("ifBusy", json!("later")),
            ("unknown", json!(1)),
        ] {
            let mut v = ok.clone();
            v[field] = value.clone();
            assert!(UpdateManifest::from_json(&v).is_err(), "{field} = {value} accepted");
        }
        assert_eq!(UpdateManifest::from_json(&ok).unwrap(), manifest("a"));
        let signed = String::from_utf8(manifest("a").signed_bytes()).unwrap();
        assert_eq!(
            signed,
            format!(
                "spotflow-update-v1\nid=a\nversion=2.0\nurl=https://example.invalid/a\nsize=100\nsha256={}\ninstallAfter=\ninstallBefore=\nifBusy=queue\n",
                "ab".repeat(32)
            )
        );
        assert!(!format!("{:?}", manifest("a")).contains("example.invalid"), "the URL stays out of Debug");
    }

    #[test]
    fn the_happy_path_with_a_reboot() {
        let mut m = UpdateMachine::default();
        assert_eq!(m.next(0), UpdateStep::Nothing);
        assert_eq!(m.offer(manifest("a")), Offered::Started);
        assert_eq!(m.next(0), UpdateStep::Download { from: 0 });
        assert!(m.checkpoint(40));
        assert_eq!(m.next(0), UpdateStep::Download { from: 40 });
        assert!(m.downloaded() && m.phase() == UpdatePhase::Verifying && m.record.downloaded == 100);
        assert_eq!(m.next(0), UpdateStep::Verify);
        assert!(m.verified() && m.phase() == UpdatePhase::Ready);
        assert_eq!(m.next(0), UpdateStep::Install);
        assert!(m.installing() && m.phase() == UpdatePhase::Installing);
        assert!(m.installed(true, 1_000, 500) && m.phase() == UpdatePhase::Rebooting);
        assert_eq!(m.next(0), UpdateStep::AwaitReboot);
        assert!(m.restarted(2_000, 500) && m.phase() == UpdatePhase::Confirming);
        assert_eq!(m.next(2_100), UpdateStep::Confirm { deadline_ms: 2_500 });
        assert!(m.confirmed() && m.phase() == UpdatePhase::Succeeded);
        assert_eq!(m.next(0), UpdateStep::Nothing);
        assert_eq!(m.offer(manifest("a")), Offered::Known, "a finished update is not applied again");
        let reported = m.record.reported();
        assert_eq!((reported["state"].as_str(), reported["id"].as_str()), (Some("succeeded"), Some("a")));
    }

    #[test]
    fn without_a_reboot_the_confirmation_follows_the_install() {
        let mut m = UpdateMachine::default();
        m.offer(manifest("a"));
        assert!(m.downloaded() && m.verified() && m.installing());
        assert!(m.installed(false, 1_000, 500));
        assert_eq!(m.next(1_000), UpdateStep::Confirm { deadline_ms: 1_500 });
        assert!(m.rolled_back(failure("healthCheck")) && m.phase() == UpdatePhase::RolledBack);
        assert_eq!(m.record.error.as_ref().unwrap().reason, "healthCheck");
    }

    #[test]
    fn transitions_out_of_turn_are_ignored() {
        let mut m = UpdateMachine::default();
        assert!(!m.checkpoint(1) && !m.downloaded() && !m.verified() && !m.installing());
        assert!(!m.installed(false, 0, 0) && !m.confirmed() && !m.rolled_back(failure("x")) && !m.fail(failure("x")));
        m.offer(manifest("a"));
        assert!(!m.verified() && !m.installing() && !m.confirmed());
        assert_eq!(m.phase(), UpdatePhase::Downloading);
    }

    #[test]
    fn restarts_resume_or_redo_safely() {
        let mut m = UpdateMachine::default();
        m.offer(manifest("a"));
        m.checkpoint(30);
        assert!(!m.restarted(0, 10), "a download resumes as it is");
        assert_eq!(m.next(0), UpdateStep::Download { from: 30 });
        m.downloaded();
        m.verified();
        m.installing();
        assert!(m.restarted(0, 10), "an interrupted install is verified again");
        assert_eq!(m.next(0), UpdateStep::Verify);
    }

    #[test]
    fn a_new_manifest_queues_or_cancels() {
        let mut m = UpdateMachine::default();
        m.offer(manifest("a"));
        assert_eq!(m.offer(manifest("b")), Offered::Queued);
        assert_eq!(m.offer(manifest("b")), Offered::Known);
        let mut c = manifest("c");
        c.if_busy = IfBusy::Cancel;
        assert_eq!(m.offer(c.clone()), Offered::Superseded(manifest("a")));
        assert_eq!(m.record.manifest.as_ref().unwrap().id, "c");
        assert_eq!(m.record.queued.as_ref().unwrap().id, "b", "the waiting one still waits");
        // Once installing, a cancelling manifest waits too.
        m.downloaded();
        m.verified();
        m.installing();
        let mut d = manifest("d");
        d.if_busy = IfBusy::Cancel;
        assert_eq!(m.offer(d), Offered::Queued);
        assert!(m.fail(failure("install")));
        assert!(m.start_queued());
        assert_eq!((m.record.manifest.as_ref().unwrap().id.as_str(), m.phase()), ("d", UpdatePhase::Downloading));
        assert_eq!(m.record.queued, None);
    }

    #[test]
    fn install_windows() {
        let mut m = UpdateMachine::default();
        let mut a = manifest("a");
        a.install_after = Some("1970-01-01T00:00:10Z".into());
        a.install_before = Some("1970-01-01T00:00:20Z".into());
        m.offer(a);
        m.downloaded();
        m.verified();
        assert_eq!(m.next(5_000), UpdateStep::WaitUntil(10_000));
        assert_eq!(m.next(15_000), UpdateStep::Install);
        assert_eq!(m.next(25_000), UpdateStep::Expire);
    }

    #[test]
    fn refusals_fail_only_when_idle() {
        let mut m = UpdateMachine::default();
        assert!(m.refuse(Some(manifest("a")), failure("signature")));
        assert_eq!(m.phase(), UpdatePhase::Failed);
        assert!(!m.refuse(Some(manifest("a")), failure("signature")), "once");
        assert_eq!(m.offer(manifest("b")), Offered::Started);
        assert!(!m.refuse(Some(manifest("c")), failure("signature")), "a running update goes on");
        assert_eq!(m.phase(), UpdatePhase::Downloading);
        let json = m.record.to_json();
        assert_eq!(UpdateRecord::from_json(&json).unwrap(), m.record);
    }
}
