//! Software updates driven by the platform (feature `updates`).
//!
//! The platform sets the desired property [`UPDATE_PROPERTY`] (`"spotflowUpdate"`) to a manifest
//! ([`UpdateManifest`]: id, version, artifact URL, size, SHA-256, an optional Ed25519 signature
//! and install window). An [`UpdateAgent`] started on the client takes it through
//! `downloading → verifying → ready → installing → (rebooting →) confirming → succeeded`, saving
//! the update's record in the client's store at every transition and reporting it in the
//! reported property of the same name (`{"id", "version", "state", "bytes", "size", "error"}`),
//! progress at most every [`UpdateOptions::report_interval`].
//!
//! * **Downloads survive everything.** The artifact is downloaded into a partial file beside the
//!   database (`{db}-update/{device}/{id}.part`, owner-only), fsync'd every
//!   [`UpdateOptions::checkpoint_bytes`] with the offset saved in the store; a lost connection
//!   resumes with `Range` from what was written (synced first), a `kill -9` or a power cut from
//!   the last checkpoint. Free space for the rest of the artifact plus a margin is checked first
//!   (`diskFull`). Network faults are retried with backoff, without limit; a server refusal
//!   (4xx) fails the update (`download`).
//! * **Nothing unverified is installed.** The whole file's size and SHA-256 are checked before
//!   `ready` (a mismatch removes it: `checksum`); with a public key configured, a manifest whose
//!   signature does not verify is refused before anything is downloaded (`signature`).
//! * **The application installs** ([`UpdateHandler`]): `install` gets the verified file and
//!   returns [`Installed`]; after the reboot it asked for (the next start of the agent), or at
//!   once without one, `confirm` is the health check of the new version, bounded by
//!   [`UpdateOptions::confirm_timeout`]; when it fails, `rollback` restores the previous version
//!   (`rolledBack`). An install interrupted by a crash is verified and installed again: install
//!   handlers must be idempotent.
//!
//! A newer manifest while an update runs waits for it to end (`"ifBusy": "queue"`, the default)
//! or cancels it if it has not started installing (`"cancel"`). A manifest id already handled is
//! not applied again.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde_json::json;
use spotflow_core::update::{Offered, UpdateMachine, UpdateStep};
use spotflow_core::{Backoff, Error, Result, Store};
use tokio::sync::watch;
use tracing::{debug, info, warn};

pub use spotflow_core::update::{
    ArtifactBody, ArtifactSource, IfBusy, UpdateFailure, UpdateManifest, UpdatePhase, UpdateRecord, UPDATE_PROPERTY,
};

use crate::client::ClientInner;
use crate::DeviceClient;

/// The update an application handler is called about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateInfo {
    /// The manifest's id.
    pub id: String,
    /// The version the artifact installs.
    pub version: String,
    /// The artifact's size in bytes.
    pub size: u64,
    /// Its SHA-256 (lowercase hexadecimal), checked.
    pub sha256: String,
}

impl From<&UpdateManifest> for UpdateInfo {
    fn from(m: &UpdateManifest) -> Self {
        UpdateInfo { id: m.id.clone(), version: m.version.clone(), size: m.size, sha256: m.sha256.clone() }
    }
}

/// What an install did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Installed {
    /// The new version runs after a reboot: the agent waits for its next start (the process or
    /// the machine restarting) to ask for the health check.
    pub needs_reboot: bool,
}

/// The application's part of an update. Errors are a human-readable reason, reported with the
/// update's state.
#[async_trait]
pub trait UpdateHandler: Send + Sync + 'static {
    /// Installs the verified artifact at `artifact` (read it, copy it, unpack it; the file is
    /// removed when the update ends). Called again after a crash during a previous call: make it
    /// idempotent.
    async fn install(&self, update: &UpdateInfo, artifact: &Path) -> std::result::Result<Installed, String>;

    /// The health check of the new version, after the install (and the reboot it asked for): an
    /// error, or no answer within [`UpdateOptions::confirm_timeout`], rolls it back. The
    /// default: healthy.
    async fn confirm(&self, update: &UpdateInfo) -> std::result::Result<(), String> {
        let _ = update;
        Ok(())
    }

    /// Restores the previous version after a failed health check.
    async fn rollback(&self, update: &UpdateInfo) -> std::result::Result<(), String>;
}

/// [`UpdateHandler`] with blocking methods, run on the runtime's blocking threads: wrap it in
/// [`Blocking`].
pub trait BlockingUpdateHandler: Send + Sync + 'static {
    /// See [`UpdateHandler::install`].
    fn install(&self, update: &UpdateInfo, artifact: &Path) -> std::result::Result<Installed, String>;
    /// See [`UpdateHandler::confirm`].
    fn confirm(&self, update: &UpdateInfo) -> std::result::Result<(), String> {
        let _ = update;
        Ok(())
    }
    /// See [`UpdateHandler::rollback`].
    fn rollback(&self, update: &UpdateInfo) -> std::result::Result<(), String>;
}

/// A [`BlockingUpdateHandler`] as an [`UpdateHandler`].
#[derive(Debug)]
pub struct Blocking<H>(pub Arc<H>);

async fn on_blocking_thread<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, String> + Send + 'static,
) -> std::result::Result<T, String> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|_| Err("the update handler panicked".into()))
}

#[async_trait]
impl<H: BlockingUpdateHandler> UpdateHandler for Blocking<H> {
    async fn install(&self, update: &UpdateInfo, artifact: &Path) -> std::result::Result<Installed, String> {
        let (h, u, a) = (self.0.clone(), update.clone(), artifact.to_owned());
        on_blocking_thread(move || h.install(&u, &a)).await
    }
    async fn confirm(&self, update: &UpdateInfo) -> std::result::Result<(), String> {
        let (h, u) = (self.0.clone(), update.clone());
        on_blocking_thread(move || h.confirm(&u)).await
    }
    async fn rollback(&self, update: &UpdateInfo) -> std::result::Result<(), String> {
        let (h, u) = (self.0.clone(), update.clone());
        on_blocking_thread(move || h.rollback(&u)).await
    }
}

/// How the agent works.
#[derive(Clone)]
pub struct UpdateOptions {
    /// The Ed25519 public key (32 bytes) manifests must be signed with; `None`: signatures are
    /// not checked (the manifest comes over the device's authenticated connection).
    pub public_key: Option<Vec<u8>>,
    /// Where artifacts are downloaded (default: `{db}-update/{device id}` beside the database).
    pub directory: Option<PathBuf>,
    /// Bytes between two fsync'd checkpoints of a download (default 1 MiB; more when the disk
    /// syncs slower than the network delivers: one sync runs at a time, in the background).
    /// After a crash or a power cut, what arrived since the last checkpoint is downloaded again:
    /// this much, plus what arrived while the last sync ran.
    pub checkpoint_bytes: u64,
    /// Download rate limit (default none).
    pub max_bytes_per_second: Option<u64>,
    /// Free space kept beyond the artifact's rest (default 16 MiB).
    pub free_space_margin_bytes: u64,
    /// First delay before retrying a failed download attempt (default 1 s), doubled up to
    /// `retry_max` (default 60 s).
    pub retry_initial: Duration,
    /// See `retry_initial`.
    pub retry_max: Duration,
    /// How long the health check has after the install or the reboot (default 5 min).
    pub confirm_timeout: Duration,
    /// Download progress is reported at most this often (default 2 s); transitions at once.
    pub report_interval: Duration,
    /// How often the desired properties are looked at for a new manifest (default 500 ms).
    pub poll_interval: Duration,
    /// A connection opening slower, or a body stalling longer, than this fails the attempt
    /// (default 30 s).
    pub network_timeout: Duration,
    /// Where artifacts are downloaded from (default, feature `mqtt`: HTTPS with the client's
    /// trust).
    pub source: Option<Arc<dyn ArtifactSource>>,
}

impl Default for UpdateOptions {
    fn default() -> Self {
        UpdateOptions {
            public_key: None,
            directory: None,
            checkpoint_bytes: 1 << 20,
            max_bytes_per_second: None,
            free_space_margin_bytes: 16 << 20,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            confirm_timeout: Duration::from_secs(300),
            report_interval: Duration::from_secs(2),
            poll_interval: Duration::from_millis(500),
            network_timeout: Duration::from_secs(30),
            source: None,
        }
    }
}

impl std::fmt::Debug for UpdateOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateOptions")
            .field("signed", &self.public_key.is_some())
            .field("directory", &self.directory)
            .field("checkpoint_bytes", &self.checkpoint_bytes)
            .field("max_bytes_per_second", &self.max_bytes_per_second)
            .field("confirm_timeout", &self.confirm_timeout)
            .finish_non_exhaustive()
    }
}

impl UpdateOptions {
    /// Requires manifests signed with this Ed25519 public key (64 hexadecimal digits).
    pub fn with_public_key_hex(mut self, hex: &str) -> Result<Self> {
        let bad = || Error::invalid("update public key", "64 hexadecimal digits (an Ed25519 public key)");
        if hex.len() != 64 {
            return Err(bad());
        }
        let key = (0..64)
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<std::result::Result<Vec<u8>, _>>();
        self.public_key = Some(key.map_err(|_| bad())?);
        Ok(self)
    }
}

/// Figures of an agent since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateStats {
    /// Artifact bytes received from the network (those received again after a fault included).
    pub bytes_received: u64,
    /// Download requests made.
    pub download_requests: u64,
    /// Checkpoints saved.
    pub checkpoints: u64,
}

#[derive(Debug, Default)]
struct Counters {
    bytes_received: AtomicU64,
    download_requests: AtomicU64,
    checkpoints: AtomicU64,
}

/// Applies the updates the platform asks for; see the [module](self). Stops when dropped, when
/// [`UpdateAgent::stop`] is called or when the client closes; a later start goes on from the
/// record in the store.
pub struct UpdateAgent {
    record: watch::Receiver<UpdateRecord>,
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for UpdateAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateAgent").field("phase", &self.phase()).finish_non_exhaustive()
    }
}

impl Drop for UpdateAgent {
    fn drop(&mut self) {
        if let Some(task) = spotflow_core::lock(&self.task).as_ref() {
            task.abort();
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn failure(reason: &str, detail: impl std::fmt::Display) -> UpdateFailure {
    UpdateFailure { reason: reason.to_owned(), detail: detail.to_string() }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl UpdateAgent {
    /// Starts the agent on `client` with the application's `handler`: goes on with the update
    /// the store's record is in (after a restart: resumes the download, asks for the health
    /// check after a reboot…), then applies the manifests of the desired properties.
    pub async fn start(
        client: &DeviceClient,
        options: UpdateOptions,
        handler: impl UpdateHandler,
    ) -> Result<UpdateAgent> {
        Self::start_with(client, options, Arc::new(handler)).await
    }

    /// [`UpdateAgent::start`] with a shared handler.
    pub async fn start_with(
        client: &DeviceClient,
        options: UpdateOptions,
        handler: Arc<dyn UpdateHandler>,
    ) -> Result<UpdateAgent> {
        if options.checkpoint_bytes == 0 {
            return Err(Error::invalid("update options", "checkpoint_bytes must be above 0"));
        }
        if options.public_key.as_ref().is_some_and(|k| k.len() != 32) {
            return Err(Error::invalid("update public key", "an Ed25519 public key has 32 bytes"));
        }
        let source = match &options.source {
            Some(s) => s.clone(),
            None => default_source(client, &options)?,
        };
        let directory = match &options.directory {
            Some(d) => d.clone(),
            None => {
                let mut p = client.inner.db.as_os_str().to_owned();
                p.push("-update");
                PathBuf::from(p).join(client.device_id())
            }
        };
        spotflow_core::private_fs::prepare_private_dir(&directory)
            .map_err(|e| Error::store(format!("cannot create the update directory {}", directory.display()), e))?;
        let store = client.inner.store.clone();
        let mut machine = UpdateMachine::new(store.load_update().await?.unwrap_or_default());
        let restarted = machine.restarted(now_ms(), options.confirm_timeout.as_millis() as u64);
        let (record_tx, record_rx) = watch::channel(machine.record.clone());
        let counters = Arc::new(Counters::default());
        let (stop, stop_rx) = watch::channel(false);
        let mut runner = Runner {
            client: Arc::downgrade(&client.inner),
            store,
            machine,
            backoff: Backoff::new(options.retry_initial, options.retry_max),
            options,
            handler,
            source,
            directory,
            desired_version: None,
            record: record_tx,
            counters: counters.clone(),
            last_report: None,
            stop: stop_rx,
        };
        if restarted {
            runner.saved().await?;
        }
        runner.remove_stray_files();
        // Report the state the agent starts in (the platform may not have it).
        runner.report(true).await;
        let task = tokio::spawn(runner.run());
        Ok(UpdateAgent { record: record_rx, counters, stop, task: std::sync::Mutex::new(Some(task)) })
    }

    /// The update's record as last saved.
    pub fn record(&self) -> UpdateRecord {
        self.record.borrow().clone()
    }

    /// The update's phase.
    pub fn phase(&self) -> UpdatePhase {
        self.record.borrow().phase
    }

    /// Waits until the record satisfies `done` (checked at once, then at every change), at most
    /// `timeout`; returns it.
    pub async fn wait_for(&self, timeout: Duration, done: impl Fn(&UpdateRecord) -> bool) -> Result<UpdateRecord> {
        let mut rx = self.record.clone();
        let waited = tokio::time::timeout(timeout, async { rx.wait_for(|r| done(r)).await.map(|r| r.clone()) }).await;
        match waited {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout(format!("update still {} after {timeout:?}", self.phase()))),
        }
    }

    /// Figures since the start.
    pub fn stats(&self) -> UpdateStats {
        UpdateStats {
            bytes_received: self.counters.bytes_received.load(Ordering::Relaxed),
            download_requests: self.counters.download_requests.load(Ordering::Relaxed),
            checkpoints: self.counters.checkpoints.load(Ordering::Relaxed),
        }
    }

    /// Stops the agent (what is saved stays: a later start goes on from there), waits for it,
    /// and returns the record as last saved. Stopping again is a no-op.
    pub async fn stop(&self) -> UpdateRecord {
        let _ = self.stop.send(true);
        let task = spotflow_core::lock(&self.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.record()
    }
}

#[cfg(feature = "mqtt")]
fn default_source(client: &DeviceClient, options: &UpdateOptions) -> Result<Arc<dyn ArtifactSource>> {
    let network = &client.inner.network;
    let tls = spotflow_transport_mqtt::TlsOptions {
        platform_roots: network.platform_roots,
        extra_ca_pem: network.extra_ca_pem.clone(),
    }
    .client_config()?;
    Ok(Arc::new(spotflow_transport_mqtt::HttpsArtifactSource::new(
        tls,
        options.network_timeout,
        options.network_timeout,
    )?))
}

#[cfg(not(feature = "mqtt"))]
fn default_source(_: &DeviceClient, _: &UpdateOptions) -> Result<Arc<dyn ArtifactSource>> {
    Err(Error::invalid("update options", "no artifact source: give UpdateOptions::source (or build with `mqtt`)"))
}

/// Why a download attempt ended without the whole artifact.
enum Interrupted {
    /// Stopped, or the update changed (cancelled by a newer manifest): go round the loop.
    Changed,
    /// A fault that may go away: retry after the backoff.
    Retry(Error),
}

struct Runner {
    client: Weak<ClientInner>,
    store: Arc<dyn Store>,
    machine: UpdateMachine,
    backoff: Backoff,
    options: UpdateOptions,
    handler: Arc<dyn UpdateHandler>,
    source: Arc<dyn ArtifactSource>,
    directory: PathBuf,
    desired_version: Option<u64>,
    record: watch::Sender<UpdateRecord>,
    counters: Arc<Counters>,
    last_report: Option<Instant>,
    stop: watch::Receiver<bool>,
}

impl Runner {
    fn client(&self) -> Option<DeviceClient> {
        self.client.upgrade().filter(|c| !c.closed.load(Ordering::Acquire)).map(|inner| DeviceClient { inner })
    }

    fn manifest(&self) -> Option<UpdateManifest> {
        self.machine.record.manifest.clone()
    }

    fn part_path(&self, m: &UpdateManifest) -> PathBuf {
        self.directory.join(format!("{}.part", m.id))
    }

    fn artifact_path(&self, m: &UpdateManifest) -> PathBuf {
        self.directory.join(format!("{}.artifact", m.id))
    }

    fn remove_files(&self, m: &UpdateManifest) {
        for p in [self.part_path(m), self.artifact_path(m)] {
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(path = %p.display(), error = %e, "cannot remove an update file");
                }
            }
        }
    }

    /// Removes the files of updates other than the current one (left by a crash between a
    /// transition and the cleanup), and the current one's once it is over.
    fn remove_stray_files(&self) {
        let current = self.manifest().filter(|_| !self.machine.phase().is_final()).map(|m| m.id);
        let Ok(entries) = std::fs::read_dir(&self.directory) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Some(id) = name.strip_suffix(".part").or_else(|| name.strip_suffix(".artifact")) else { continue };
            if current.as_deref() != Some(id) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Saves the record (the transition just made), publishes it, reports it.
    async fn saved(&mut self) -> Result<()> {
        self.store.save_update(&self.machine.record).await?;
        self.record.send_replace(self.machine.record.clone());
        Ok(())
    }

    /// Saves a transition; once the update is over, removes its files (before anyone is told)
    /// and starts the queued manifest; reports.
    async fn transition(&mut self) -> Result<()> {
        self.store.save_update(&self.machine.record).await?;
        let record = &self.machine.record;
        info!(
            update = record.manifest.as_ref().map(|m| m.id.as_str()),
            state = %record.phase,
            reason = record.error.as_ref().map(|e| e.reason.as_str()),
            "software update"
        );
        let over = record.phase.is_final();
        if over {
            if let Some(m) = self.manifest() {
                self.remove_files(&m);
            }
        }
        // Reported before it is published: who sees the record can wait for the report to be
        // sent.
        self.report(true).await;
        self.record.send_replace(self.machine.record.clone());
        if over && self.machine.start_queued() {
            self.saved().await?;
            self.report(true).await;
        }
        Ok(())
    }

    /// Reports the record (`force`: a transition; else progress, at most every
    /// `report_interval`).
    async fn report(&mut self, force: bool) {
        if !force && self.last_report.is_some_and(|t| t.elapsed() < self.options.report_interval) {
            return;
        }
        let Some(client) = self.client() else { return };
        self.last_report = Some(Instant::now());
        let patch = json!({ UPDATE_PROPERTY: self.machine.record.reported() });
        if let Err(e) = client.patch_reported_properties(patch).await {
            debug!(error = %e, "update state not reported");
        }
    }

    fn check_signature(&self, m: &UpdateManifest) -> std::result::Result<(), UpdateFailure> {
        let Some(key) = &self.options.public_key else { return Ok(()) };
        let Some(signature) = &m.signature else {
            return Err(failure("signature", "the manifest is not signed and a public key is configured"));
        };
        let signature: Vec<u8> =
            (0..signature.len()).step_by(2).filter_map(|i| u8::from_str_radix(&signature[i..i + 2], 16).ok()).collect();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
            .verify(&m.signed_bytes(), &signature)
            .map_err(|_| failure("signature", "the manifest's signature does not verify with the configured key"))
    }

    /// Offers the desired manifest when the desired properties changed; returns whether the
    /// record changed.
    async fn poll_desired(&mut self) -> Result<bool> {
        let Some(client) = self.client() else { return Ok(false) };
        let Some(desired) = client.get_desired_properties_if_newer(self.desired_version) else { return Ok(false) };
        self.desired_version = Some(desired.version);
        // Absent or null: nothing new (removing the manifest does not cancel an update).
        let Some(value) = desired.values.get(UPDATE_PROPERTY).filter(|v| !v.is_null()) else { return Ok(false) };
        let parsed = UpdateManifest::from_json(value);
        let checked = match &parsed {
            Ok(m) => self.check_signature(m),
            Err(e) => Err(failure("manifest", e)),
        };
        if let Err(f) = checked {
            let manifest = parsed.ok();
            warn!(reason = %f.reason, detail = %f.detail, "update manifest refused");
            if self.machine.refuse(manifest, f) {
                self.transition().await?;
                return Ok(true);
            }
            return Ok(false);
        }
        let manifest = parsed?;
        match self.machine.offer(manifest) {
            Offered::Known => Ok(false),
            Offered::Superseded(old) => {
                info!(cancelled = %old.id, "software update cancelled by a newer manifest");
                self.remove_files(&old);
                self.transition().await?;
                Ok(true)
            }
            Offered::Started | Offered::Queued => {
                self.transition().await?;
                Ok(true)
            }
        }
    }

    /// Waits `delay`, or less when stopped or the desired properties changed the record.
    async fn pause(&mut self, delay: Duration) {
        let until = tokio::time::Instant::now() + delay;
        loop {
            let step = self.options.poll_interval.min(until.saturating_duration_since(tokio::time::Instant::now()));
            if step.is_zero() || *self.stop.borrow() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(step) => {}
                _ = self.stop.changed() => return,
            }
            match self.poll_desired().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => warn!(error = %e, "update record not saved"),
            }
        }
    }

    async fn run(mut self) {
        loop {
            if *self.stop.borrow() || self.client().is_none() {
                return;
            }
            if let Err(e) = self.poll_desired().await {
                warn!(error = %e, "update record not saved; retrying");
                self.pause(self.options.retry_initial).await;
                continue;
            }
            let result = match self.machine.next(now_ms()) {
                UpdateStep::Nothing | UpdateStep::AwaitReboot => {
                    self.pause(Duration::from_secs(3600)).await;
                    Ok(())
                }
                UpdateStep::WaitUntil(t) => {
                    self.pause(Duration::from_millis(t.saturating_sub(now_ms()))).await;
                    Ok(())
                }
                UpdateStep::Download { from } => self.download(from).await,
                UpdateStep::Verify => self.verify().await,
                UpdateStep::Install => self.install().await,
                UpdateStep::Expire => {
                    self.machine.fail(failure("expired", "the install window closed before the install"));
                    self.transition().await
                }
                UpdateStep::Confirm { deadline_ms } => self.confirm(deadline_ms).await,
            };
            if let Err(e) = result {
                // The store failed to save a transition: the step is done again.
                warn!(error = %e, "update step failed; retrying");
                let delay = self.backoff.next_delay();
                self.pause(delay).await;
            }
        }
    }

    async fn fail(&mut self, reason: &str, detail: impl std::fmt::Display) -> Result<()> {
        warn!(reason, %detail, "software update failed");
        self.machine.fail(failure(reason, detail));
        self.transition().await
    }

    async fn download(&mut self, from: u64) -> Result<()> {
        let Some(m) = self.manifest() else { return Ok(()) };
        let part = self.part_path(&m);
        let done = self.artifact_path(&m);
        // A crash between the rename and the save of `downloaded`.
        if !part.exists() && std::fs::metadata(&done).is_ok_and(|md| md.len() == m.size) {
            self.machine.downloaded();
            return self.transition().await;
        }
        let free = spotflow_core::free_disk_space(&self.directory).unwrap_or(u64::MAX);
        let needed = m.size.saturating_sub(from).saturating_add(self.options.free_space_margin_bytes);
        if free < needed {
            return self
                .fail("diskFull", format!("{needed} bytes needed (the rest of the artifact and a margin), {free} free"))
                .await;
        }
        match self.fetch(&m, &part, from).await {
            Ok(()) => {}
            Err(Interrupted::Changed) => return Ok(()),
            Err(Interrupted::Retry(e)) if e.is_temporary() => {
                let attempts = self.machine.download_attempt_failed();
                let delay = self.backoff.next_delay();
                warn!(error = %e, attempts, retry_in = ?delay, "artifact download interrupted");
                self.saved().await?;
                self.report(true).await;
                self.pause(delay).await;
                return Ok(());
            }
            Err(Interrupted::Retry(e)) => {
                self.remove_files(&m);
                return self.fail("download", e).await;
            }
        }
        self.backoff.reset();
        std::fs::rename(&part, &done).map_err(|e| Error::store("cannot rename the downloaded artifact", e))?;
        sync_dir(&self.directory);
        self.machine.downloaded();
        self.transition().await
    }

    /// Downloads from `from` into `part` until the artifact is whole (synced) or an attempt
    /// ends; on a fault, what was written is synced and checkpointed first.
    async fn fetch(&mut self, m: &UpdateManifest, part: &Path, from: u64) -> std::result::Result<(), Interrupted> {
        let io =
            |what: &str, e: std::io::Error| Interrupted::Retry(Error::store(format!("{what} {}", part.display()), e));
        let mut file = open_part(part).map_err(|e| io("cannot open", e))?;
        file.set_len(from).map_err(|e| io("cannot truncate", e))?;
        self.counters.download_requests.fetch_add(1, Ordering::Relaxed);
        let opened = tokio::select! {
            r = self.source.open(&m.url, from) => r,
            _ = self.stop.changed() => return Err(Interrupted::Changed),
        };
        let mut body = opened.map_err(Interrupted::Retry)?;
        let mut written = body.start();
        if written != from {
            if written != 0 {
                return Err(Interrupted::Retry(Error::Platform(format!("asked for byte {from}, got {written}"))));
            }
            // The server sent the whole artifact: start again from 0.
            file.set_len(0).map_err(|e| io("cannot truncate", e))?;
            self.machine.checkpoint(0);
        }
        file.seek(SeekFrom::Start(written)).map_err(|e| io("cannot seek", e))?;
        let mut checkpointed = written;
        let mut syncing: Option<(u64, tokio::task::JoinHandle<std::io::Result<()>>)> = None;
        let started = Instant::now();
        let start_bytes = written;
        let result = loop {
            let chunk = tokio::select! {
                c = body.chunk() => c,
                _ = self.stop.changed() => break Err(Interrupted::Changed),
            };
            let bytes = match chunk {
                Ok(Some(b)) => b,
                Ok(None) if written == m.size => break Ok(()),
                Ok(None) => {
                    break Err(Interrupted::Retry(Error::Platform(format!(
                        "the artifact body ended at byte {written} of {}",
                        m.size
                    ))))
                }
                Err(e) => break Err(Interrupted::Retry(e)),
            };
            if written + bytes.len() as u64 > m.size {
                break Err(Interrupted::Retry(Error::invalid(
                    "artifact download",
                    format!("the server sent more than the manifest's {} bytes", m.size),
                )));
            }
            if let Err(e) = file.write_all(&bytes) {
                break Err(io("cannot write", e));
            }
            written += bytes.len() as u64;
            self.counters.bytes_received.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            // A background sync that ended is saved at once (not at the next checkpoint): what a
            // crash makes download again stays about one checkpoint.
            if syncing.as_ref().is_some_and(|(_, s)| s.is_finished()) {
                if let Err(e) = self.finish_sync(&mut syncing).await {
                    break Err(e);
                }
            }
            // One sync at a time, in the background: the next starts once `checkpoint_bytes`
            // more arrived and the last one ended (its offset saved above). Waiting for a sync
            // still running instead held a fast download to the disk's flush rate (measured:
            // 0.71x curl's throughput with 1 MiB checkpoints, 1.27x with 64 MiB ones).
            if written - checkpointed >= self.options.checkpoint_bytes && syncing.is_none() {
                match file.try_clone() {
                    Ok(f) => syncing = Some((written, tokio::task::spawn_blocking(move || f.sync_data()))),
                    Err(e) => break Err(io("cannot sync", e)),
                }
                checkpointed = written;
                self.report(false).await;
                match self.poll_desired().await {
                    Ok(true)
                        if self.manifest().as_ref() != Some(m) || self.machine.phase() != UpdatePhase::Downloading =>
                    {
                        break Err(Interrupted::Changed)
                    }
                    Ok(_) => {}
                    Err(e) => break Err(Interrupted::Retry(e)),
                }
            }
            if let Some(rate) = self.options.max_bytes_per_second.filter(|r| *r > 0) {
                let due = Duration::from_secs_f64((written - start_bytes) as f64 / rate as f64);
                let elapsed = started.elapsed();
                if due > elapsed {
                    tokio::time::sleep(due - elapsed).await;
                }
            }
        };
        if matches!(result, Err(Interrupted::Changed)) && self.manifest().as_ref() != Some(m) {
            // Superseded: the record is the new update's (its files were removed).
            return result;
        }
        let _ = self.finish_sync(&mut syncing).await;
        // Whatever was written is made durable and checkpointed: nothing is fetched twice after
        // a network fault (a crash loses at most `checkpoint_bytes`).
        let synced = tokio::task::spawn_blocking(move || file.sync_data().map(|_| file))
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("sync panicked")));
        match synced {
            Ok(_) => {
                if self.machine.checkpoint(written) {
                    self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
                    self.saved().await.map_err(Interrupted::Retry)?;
                }
            }
            Err(e) => return Err(io("cannot sync", e)),
        }
        result
    }

    /// Waits for the background sync, then saves its offset as the checkpoint.
    async fn finish_sync(
        &mut self,
        syncing: &mut Option<(u64, tokio::task::JoinHandle<std::io::Result<()>>)>,
    ) -> std::result::Result<(), Interrupted> {
        let Some((offset, sync)) = syncing.take() else { return Ok(()) };
        match sync.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Interrupted::Retry(Error::store("cannot sync the partial artifact", e))),
            Err(_) => {
                return Err(Interrupted::Retry(Error::store("cannot sync the partial artifact", "sync panicked")))
            }
        }
        if self.machine.checkpoint(offset) {
            self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
            self.saved().await.map_err(Interrupted::Retry)?;
        }
        Ok(())
    }

    async fn verify(&mut self) -> Result<()> {
        let Some(m) = self.manifest() else { return Ok(()) };
        let path = self.artifact_path(&m);
        let hashed = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || sha256_file(&path))
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("hashing panicked")))
        };
        let outcome = match hashed {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(failure("download", "the downloaded artifact is gone"))
            }
            Err(e) => return Err(Error::store(format!("cannot read {}", path.display()), e)),
            Ok((size, _)) if size != m.size => {
                Err(failure("size", format!("{size} bytes, the manifest says {}", m.size)))
            }
            Ok((_, digest)) if digest != m.sha256 => {
                Err(failure("checksum", format!("SHA-256 {digest}, the manifest says {}", m.sha256)))
            }
            Ok(_) => self.check_signature(&m),
        };
        match outcome {
            Ok(()) => {
                self.machine.verified();
                self.transition().await
            }
            Err(f) => {
                self.remove_files(&m);
                self.fail(&f.reason, f.detail).await
            }
        }
    }

    async fn install(&mut self) -> Result<()> {
        let Some(m) = self.manifest() else { return Ok(()) };
        if self.machine.installing() {
            self.transition().await?;
        }
        let (handler, info, path) = (self.handler.clone(), UpdateInfo::from(&m), self.artifact_path(&m));
        let installed = tokio::spawn(async move { handler.install(&info, &path).await })
            .await
            .unwrap_or_else(|_| Err("the install handler panicked".into()));
        match installed {
            Ok(done) => {
                self.machine.installed(done.needs_reboot, now_ms(), self.options.confirm_timeout.as_millis() as u64);
                self.transition().await
            }
            Err(detail) => self.fail("install", detail).await,
        }
    }

    async fn confirm(&mut self, deadline_ms: u64) -> Result<()> {
        let Some(m) = self.manifest() else { return Ok(()) };
        let info = UpdateInfo::from(&m);
        let left = Duration::from_millis(deadline_ms.saturating_sub(now_ms()));
        let check = {
            let (handler, info) = (self.handler.clone(), info.clone());
            tokio::spawn(async move { handler.confirm(&info).await })
        };
        let healthy = match tokio::time::timeout(left, check).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the health check panicked".into()),
            Err(_) => Err(format!("the health check did not pass within {:?}", self.options.confirm_timeout)),
        };
        let Err(detail) = healthy else {
            self.machine.confirmed();
            return self.transition().await;
        };
        warn!(%detail, "the new version failed its health check; rolling back");
        let handler = self.handler.clone();
        let rolled = tokio::spawn(async move { handler.rollback(&info).await })
            .await
            .unwrap_or_else(|_| Err("the rollback handler panicked".into()));
        match rolled {
            Ok(()) => {
                self.machine.rolled_back(failure("healthCheck", detail));
                self.transition().await
            }
            Err(e) => self.fail("rollback", format!("{detail}; the rollback failed: {e}")).await,
        }
    }
}

fn open_part(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Makes a rename in `dir` durable (best effort: not every file system can sync a directory).
fn sync_dir(dir: &Path) {
    let _ = spotflow_core::sync_dir(dir);
}

/// The size and SHA-256 (hexadecimal) of a file.
fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        context.update(&buffer[..n]);
        size += n as u64;
    }
    Ok((size, hex(context.finish().as_ref())))
}
