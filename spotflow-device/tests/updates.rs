//! Software updates against the emulator: every transition (download, verification, install,
//! reboot, confirmation, rollback) and every fault (network cuts at 10/50/90 %, a corrupted or
//! truncated artifact, a full disk, a bad signature, a failing install or health check, an
//! expired window, a newer manifest), each checked on the device's record, on the platform's
//! view of the rollout, and on the files left beside the database.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use spotflow_device::update::{
    Installed, UpdateAgent, UpdateHandler, UpdateInfo, UpdateOptions, UpdatePhase, UpdateRecord,
};
use spotflow_device::DeviceClient;
use spotflow_emulator::updates::{ArtifactFaults, RolloutRequest};
use spotflow_emulator::Emulator;

mod common;

const WAIT: Duration = Duration::from_secs(60);

/// What the test handler is told to do, and what it saw.
#[derive(Default)]
struct Script {
    needs_reboot: bool,
    install_error: Option<String>,
    unhealthy: bool,
    /// The health check never answers.
    hang: bool,
    installs: Vec<(String, Vec<u8>)>,
    confirms: u32,
    rollbacks: u32,
}

#[derive(Clone, Default)]
struct Handler(Arc<Mutex<Script>>);

impl Handler {
    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.0.lock().unwrap()
    }
}

#[async_trait]
impl UpdateHandler for Handler {
    async fn install(&self, update: &UpdateInfo, artifact: &Path) -> Result<Installed, String> {
        let bytes = std::fs::read(artifact).map_err(|e| e.to_string())?;
        let mut s = self.script();
        s.installs.push((update.version.clone(), bytes));
        match &s.install_error {
            Some(e) => Err(e.clone()),
            None => Ok(Installed { needs_reboot: s.needs_reboot }),
        }
    }
    async fn confirm(&self, _: &UpdateInfo) -> Result<(), String> {
        let (unhealthy, hang) = {
            let mut s = self.script();
            s.confirms += 1;
            (s.unhealthy, s.hang)
        };
        if hang {
            std::future::pending::<()>().await;
        }
        if unhealthy {
            Err("the service does not answer".into())
        } else {
            Ok(())
        }
    }
    async fn rollback(&self, _: &UpdateInfo) -> Result<(), String> {
        self.script().rollbacks += 1;
        Ok(())
    }
}

fn artifact(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Setup {
    _dir: tempfile::TempDir,
    db: PathBuf,
    emu: Emulator,
}

impl Setup {
    async fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("device.db");
        let emu = Emulator::builder().auto_approve(Some(Duration::ZERO)).data_dir(dir.path()).start().await.unwrap();
        Setup { _dir: dir, db, emu }
    }

    async fn client(&self) -> DeviceClient {
        let builder = DeviceClient::builder(Some("updater"), self.emu.create_provisioning_token(), &self.db);
        common::on_emulator(builder, &self.emu, common::Proto::Mqtt).start().await.expect("device starts")
    }

    fn options(&self) -> UpdateOptions {
        let mut o = UpdateOptions::default().with_public_key_hex(&self.emu.update_public_key()).unwrap();
        o.checkpoint_bytes = 256 * 1024;
        o.retry_initial = Duration::from_millis(20);
        o.retry_max = Duration::from_millis(200);
        o.poll_interval = Duration::from_millis(20);
        o.confirm_timeout = Duration::from_secs(10);
        o
    }

    fn update_dir(&self, client: &DeviceClient) -> PathBuf {
        PathBuf::from(format!("{}-update", self.db.display())).join(client.device_id())
    }

    fn rollout(&self, client: &DeviceClient, artifact: &str, change: impl FnOnce(&mut RolloutRequest)) -> String {
        let mut request = RolloutRequest {
            artifact: artifact.to_owned(),
            devices: vec![hub_id(client)],
            ..RolloutRequest::default()
        };
        change(&mut request);
        self.emu.start_rollout(&request).expect("rollout starts")
    }

    /// Waits (bounded) until the platform sees the device's update of `rollout` in `state`.
    async fn platform_sees(&self, rollout: &str, state: &str) -> spotflow_emulator::updates::DeviceProgress {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let status = self.emu.rollout(rollout).expect("the rollout exists");
            let device = status.devices[0].clone();
            if device.state == state {
                return device;
            }
            assert!(tokio::time::Instant::now() < deadline, "the platform sees {device:?}, want {state}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn hub_id(client: &DeviceClient) -> String {
    format!("{}:{}", client.workspace_id(), client.device_id())
}

async fn until_final(agent: &UpdateAgent, id: &str) -> UpdateRecord {
    agent
        .wait_for(WAIT, |r| r.manifest.as_ref().is_some_and(|m| m.id == id) && r.phase.is_final())
        .await
        .expect("the update ends")
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_update_is_downloaded_verified_installed_and_confirmed() {
    let s = Setup::new().await;
    let client = s.client().await;
    let handler = Handler::default();
    let agent = UpdateAgent::start(&client, s.options(), handler.clone()).await.unwrap();
    assert_eq!(agent.phase(), UpdatePhase::Idle);
    let bytes = artifact(3 << 20, 1);
    let a = s.emu.publish_artifact(bytes.clone().into(), "2.0.0").unwrap();
    let rollout = s.rollout(&client, &a.id, |_| {});

    let record = until_final(&agent, &rollout).await;
    assert_eq!(record.phase, UpdatePhase::Succeeded, "{record:?}");
    assert_eq!(record.error, None);
    {
        let script = handler.script();
        assert_eq!(script.installs.len(), 1);
        assert_eq!(script.installs[0].0, "2.0.0");
        assert!(script.installs[0].1 == bytes, "the handler got the artifact, byte for byte");
        assert_eq!((script.confirms, script.rollbacks), (1, 0));
    }
    let progress = s.platform_sees(&rollout, "succeeded").await;
    assert_eq!(progress.bytes, bytes.len() as u64);
    assert_eq!(progress.bytes_served, bytes.len() as u64, "every byte was served once");
    assert_eq!(agent.stats().bytes_received, bytes.len() as u64);
    assert_eq!(files_in(&s.update_dir(&client)), Vec::<String>::new(), "the artifact is removed once over");

    // The same manifest again (a restart, the desired properties sent again) is not applied again.
    agent.stop().await;
    let agent = UpdateAgent::start(&client, s.options(), handler.clone()).await.unwrap();
    assert_eq!(agent.phase(), UpdatePhase::Succeeded);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(handler.script().installs.len(), 1, "installed once");
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_leads_to_the_health_check_at_the_next_start() {
    let s = Setup::new().await;
    let client = s.client().await;
    let handler = Handler::default();
    handler.script().needs_reboot = true;
    let agent = UpdateAgent::start(&client, s.options(), handler.clone()).await.unwrap();
    let a = s.emu.publish_artifact(artifact(100_000, 2).into(), "3").unwrap();
    let rollout = s.rollout(&client, &a.id, |_| {});
    agent.wait_for(WAIT, |r| r.phase == UpdatePhase::Rebooting).await.unwrap();
    s.platform_sees(&rollout, "rebooting").await;
    assert_eq!(handler.script().confirms, 0, "no health check before the reboot");

    // The "reboot": the agent and the client stop; the next process starts them again.
    agent.stop().await;
    client.close().await.unwrap();
    drop(client);
    let client = s.client().await;
    let agent = UpdateAgent::start(&client, s.options(), handler.clone()).await.unwrap();
    let record = until_final(&agent, &rollout).await;
    assert_eq!(record.phase, UpdatePhase::Succeeded);
    let seen = {
        let script = handler.script();
        (script.installs.len(), script.confirms)
    };
    assert_eq!(seen, (1, 1));
    s.platform_sees(&rollout, "succeeded").await;
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_silent_health_check_rolls_back() {
    let s = Setup::new().await;
    let client = s.client().await;
    let handler = Handler::default();
    handler.script().unhealthy = true;
    let mut options = s.options();
    options.confirm_timeout = Duration::from_millis(500);
    let agent = UpdateAgent::start(&client, options.clone(), handler.clone()).await.unwrap();
    let a = s.emu.publish_artifact(artifact(50_000, 3).into(), "4").unwrap();
    let rollout = s.rollout(&client, &a.id, |_| {});
    let record = until_final(&agent, &rollout).await;
    assert_eq!(record.phase, UpdatePhase::RolledBack);
    let error = record.error.unwrap();
    assert_eq!((error.reason.as_str(), error.detail.as_str()), ("healthCheck", "the service does not answer"));
    assert_eq!(handler.script().rollbacks, 1);
    let progress = s.platform_sees(&rollout, "rolledBack").await;
    assert_eq!(progress.error.unwrap()["reason"], "healthCheck");

    // A health check that never answers counts as failed at the deadline.
    {
        let mut script = handler.script();
        script.unhealthy = false;
        script.hang = true;
    }
    let rollout = s.rollout(&client, &a.id, |_| {});
    let record = until_final(&agent, &rollout).await;
    assert_eq!(record.phase, UpdatePhase::RolledBack);
    assert!(record.error.unwrap().detail.contains("did not pass within"));
    assert_eq!(handler.script().rollbacks, 2);
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_cuts_at_10_50_and_90_percent_resume_without_fetching_a_byte_twice() {
    let s = Setup::new().await;
    let client = s.client().await;
    let handler = Handler::default();
    let agent = UpdateAgent::start(&client, s.options(), handler.clone()).await.unwrap();
    let bytes = artifact(4 << 20, 4);
    let a = s.emu.publish_artifact(bytes.clone().into(), "5").unwrap();
    s.emu.set_artifact_faults(&a.id, ArtifactFaults { cut_at: vec![0.1, 0.5, 0.9], ..Default::default() }).unwrap();
    let rollout = s.rollout(&client, &a.id, |_| {});
    let record = until_final(&agent, &rollout).await;
    assert_eq!(record.phase, UpdatePhase::Succeeded, "{record:?}");
    assert!(handler.script().installs[0].1 == bytes, "the resumed download is the artifact");
    let stats = agent.stats();
    assert_eq!(stats.download_requests, 4, "three cuts, three resumptions");
    assert_eq!(stats.bytes_received, bytes.len() as u64, "no byte received twice");
    let progress = s.platform_sees(&rollout, "succeeded").await;
    assert_eq!(progress.requests, 4);
    // Served but never received: what the kernel's buffers held when each connection was cut.
    let lost_in_flight = progress.bytes_served - bytes.len() as u64;
    assert!(lost_in_flight <= 3 * s.options().checkpoint_bytes, "{lost_in_flight} bytes served twice");
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_artifact_fails_on_its_checksum_and_is_removed() {
    let s = Setup::new().await;
    let client = s.client().await;
    let handler = Handler::default();
    let agent = UpdateAgent::start(&client, s.options(), handler.clone()).await.unwrap();
    let a = s.emu.publish_artifact(artifact(1 << 20, 5).into(), "6").unwrap();
    s.emu.set_artifact_faults(&a.id, ArtifactFaults { corrupt: true, ..Default::default() }).unwrap();
    let rollout = s.rollout(&client, &a.id, |_| {});
    let record = until_final(&agent, &rollout).await;
    assert_eq!(record.phase, UpdatePhase::Failed);
    assert_eq!(record.error.unwrap().reason, "checksum");
    assert!(handler.script().installs.is_empty(), "nothing unverified is installed");
    assert_eq!(files_in(&s.update_dir(&client)), Vec::<String>::new(), "the file is removed");
    assert_eq!(s.platform_sees(&rollout, "failed").await.error.unwrap()["reason"], "checksum");
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_artifact_fails_and_installs_nothing() {
    let s = Setup::new().await;
    let client = s.client().await;
    let handler = Handler::default();
    let agent = UpdateAgent::start(&client, s.options(), handler.clone()).await.unwrap();
    let a = s.emu.publish_artifact(artifact(1 << 20, 6).into(), "7").unwrap();
    s.emu.set_artifact_faults(&a.id, ArtifactFaults { truncate: true, ..Default::default() }).unwrap();
    let rollout = s.rollout(&client, &a.id, |_| {});
    let record = until_final(&agent, &rollout).await;
    assert_eq!(record.phase, UpdatePhase::Failed);
    assert_eq!(record.error.unwrap().reason, "download", "the range past the truncated end is refused");
    assert!(handler.script().installs.is_empty());
    assert_eq!(files_in(&s.update_dir(&client)), Vec::<String>::new());
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_before_any_download_bad_signature_unsigned_full_disk_expired_window() {
    let s = Setup::new().await;
    let client = s.client().await;
    let handler = Handler::default();
    let a = s.emu.publish_artifact(artifact(200_000, 7).into(), "8").unwrap();

    // Signed with the emulator's key, checked with another one.
    let other_key = "11".repeat(32);
    let options = UpdateOptions { ..s.options() }.with_public_key_hex(&other_key).unwrap();
    let agent = UpdateAgent::start(&client, options, handler.clone()).await.unwrap();
    let rollout = s.rollout(&client, &a.id, |_| {});
    let record = until_final(&agent, &rollout).await;
    assert_eq!((record.phase, record.error.unwrap().reason.as_str()), (UpdatePhase::Failed, "signature"));
    assert_eq!(s.platform_sees(&rollout, "failed").await.bytes_served, 0, "refused before downloading");
    agent.stop().await;

    // Unsigned while a key is configured.
    let agent = UpdateAgent::start(&client, s.options(), handler.clone()).await.unwrap();
    let rollout = s.rollout(&client, &a.id, |r| r.unsigned = true);
    let record = until_final(&agent, &rollout).await;
    assert_eq!((record.phase, record.error.unwrap().reason.as_str()), (UpdatePhase::Failed, "signature"));
    agent.stop().await;

    // Not enough free space for the artifact and the margin.
    let mut options = s.options();
    options.free_space_margin_bytes = u64::MAX / 2;
    let agent = UpdateAgent::start(&client, options, handler.clone()).await.unwrap();
    let rollout = s.rollout(&client, &a.id, |_| {});
    let record = until_final(&agent, &rollout).await;
    assert_eq!((record.phase, record.error.unwrap().reason.as_str()), (UpdatePhase::Failed, "diskFull"));
    assert_eq!(s.platform_sees(&rollout, "failed").await.bytes_served, 0, "failed before downloading");
    agent.stop().await;

    // The install window closed: downloaded and verified, not installed.
    let agent = UpdateAgent::start(&client, s.options(), handler.clone()).await.unwrap();
    let rollout = s.rollout(&client, &a.id, |r| r.install_before = Some("2001-01-01T00:00:00Z".into()));
    let record = until_final(&agent, &rollout).await;
    assert_eq!((record.phase, record.error.unwrap().reason.as_str()), (UpdatePhase::Failed, "expired"));
    assert!(handler.script().installs.is_empty(), "nothing installed by any of them");
    assert_eq!(files_in(&s.update_dir(&client)), Vec::<String>::new());
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_install_fails_the_update() {
    let s = Setup::new().await;
    let client = s.client().await;
    let handler = Handler::default();
    handler.script().install_error = Some("read-only file system".into());
    let agent = UpdateAgent::start(&client, s.options(), handler.clone()).await.unwrap();
    let a = s.emu.publish_artifact(artifact(10_000, 8).into(), "9").unwrap();
    let rollout = s.rollout(&client, &a.id, |_| {});
    let record = until_final(&agent, &rollout).await;
    assert_eq!(record.phase, UpdatePhase::Failed);
    let error = record.error.unwrap();
    assert_eq!((error.reason.as_str(), error.detail.as_str()), ("install", "read-only file system"));
    assert_eq!(handler.script().confirms, 0);
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_manifest_cancels_a_download_or_waits_its_turn() {
    let s = Setup::new().await;
    let client = s.client().await;
    let handler = Handler::default();
    let agent = UpdateAgent::start(&client, s.options(), handler.clone()).await.unwrap();
    let slow = s.emu.publish_artifact(artifact(2 << 20, 9).into(), "slow").unwrap();
    s.emu
        .set_artifact_faults(&slow.id, ArtifactFaults { slow_bytes_per_second: Some(512 * 1024), ..Default::default() })
        .unwrap();
    let fast = s.emu.publish_artifact(artifact(300_000, 10).into(), "fast").unwrap();
    let first = s.rollout(&client, &slow.id, |_| {});
    agent
        .wait_for(WAIT, |r| r.phase == UpdatePhase::Downloading && r.downloaded > 0)
        .await
        .expect("the slow download is under way");

    // Queued behind the running one (the default).
    let queued = s.rollout(&client, &fast.id, |_| {});
    agent.wait_for(WAIT, |r| r.queued.as_ref().is_some_and(|q| q.id == queued)).await.unwrap();
    s.platform_sees(&queued, "queued").await;
    // Cancelling the running one: it is cancelled, the canceller runs, then the queued one.
    let canceller = s.rollout(&client, &fast.id, |r| r.if_busy = Some("cancel".into()));
    let record = until_final(&agent, &canceller).await;
    assert_eq!(record.phase, UpdatePhase::Succeeded, "{record:?}");
    let record = until_final(&agent, &queued).await;
    assert_eq!(record.phase, UpdatePhase::Succeeded);
    let versions: Vec<String> = handler.script().installs.iter().map(|i| i.0.clone()).collect();
    assert_eq!(versions, ["fast", "fast"], "the cancelled one was never installed");
    let cancelled = s.emu.rollout(&first).unwrap().devices[0].clone();
    assert!(cancelled.bytes_served < slow.size, "the cancelled download stopped: {cancelled:?}");
    assert_eq!(files_in(&s.update_dir(&client)), Vec::<String>::new(), "the cancelled download's file is removed");
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_download_resumes_from_its_last_checkpoint() {
    let s = Setup::new().await;
    let client = s.client().await;
    let handler = Handler::default();
    let options = s.options();
    let checkpoint = options.checkpoint_bytes;
    let agent = UpdateAgent::start(&client, options.clone(), handler.clone()).await.unwrap();
    let bytes = artifact(3 << 20, 11);
    let a = s.emu.publish_artifact(bytes.clone().into(), "10").unwrap();
    s.emu
        .set_artifact_faults(&a.id, ArtifactFaults { slow_bytes_per_second: Some(2 << 20), ..Default::default() })
        .unwrap();
    let rollout = s.rollout(&client, &a.id, |_| {});
    agent.wait_for(WAIT, |r| r.downloaded >= 1 << 20).await.unwrap();
    let record = agent.stop().await;
    let first = agent.stats().bytes_received;
    assert!(record.downloaded >= 1 << 20 && record.downloaded <= first, "{} of {first}", record.downloaded);

    let agent = UpdateAgent::start(&client, options, handler.clone()).await.unwrap();
    let record = until_final(&agent, &rollout).await;
    assert_eq!(record.phase, UpdatePhase::Succeeded);
    assert!(handler.script().installs[0].1 == bytes);
    let total = first + agent.stats().bytes_received;
    assert!(total <= bytes.len() as u64 + checkpoint, "{total} received for {} (checkpoint {checkpoint})", bytes.len());
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_download_keeps_to_its_rate() {
    let s = Setup::new().await;
    let client = s.client().await;
    let mut options = s.options();
    options.max_bytes_per_second = Some(2 << 20);
    let agent = UpdateAgent::start(&client, options, Handler::default()).await.unwrap();
    let a = s.emu.publish_artifact(artifact(3 << 19, 12).into(), "11").unwrap();
    let started = std::time::Instant::now();
    let rollout = s.rollout(&client, &a.id, |_| {});
    agent
        .wait_for(WAIT, |r| r.manifest.as_ref().is_some_and(|m| m.id == rollout) && r.phase != UpdatePhase::Downloading)
        .await
        .unwrap();
    // 1.5 MiB at 2 MiB/s: no less than 0.75 s (a lower bound only: a slow machine takes longer).
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(700), "1.5 MiB in {took:?} at 2 MiB/s");
    assert_eq!(until_final(&agent, &rollout).await.phase, UpdatePhase::Succeeded);
    client.close().await.unwrap();
}
