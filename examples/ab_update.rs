//! A/B software updates by symlink: the device's application lives in one of two slots
//! (`slots/a`, `slots/b`), `current` is a symlink to the running one. The update handler writes a
//! verified artifact into the other slot and swaps `current` atomically (a new symlink renamed
//! over the old one); the health check runs the new slot's version; a failed check swaps back.
//!
//! `cargo run --example ab_update` runs it against the emulator embedded in this process: version
//! 2 is rolled out and confirmed, then version 3, whose health check fails, is rolled back to 2.

use std::path::{Path, PathBuf};
use std::time::Duration;

use spotflow_device::update::{Installed, UpdateAgent, UpdateHandler, UpdateInfo, UpdateOptions, UpdatePhase};
use spotflow_device::DeviceClient;
use spotflow_emulator::updates::RolloutRequest;
use spotflow_emulator::Emulator;

/// The slots under `root`, and `current`.
struct AbSlots {
    root: PathBuf,
}

impl AbSlots {
    fn current(&self) -> PathBuf {
        self.root.join("current")
    }

    /// The slot `current` points to.
    fn active(&self) -> std::io::Result<PathBuf> {
        std::fs::read_link(self.current())
    }

    fn other(&self) -> std::io::Result<PathBuf> {
        let a = self.root.join("slots/a");
        Ok(if self.active()? == a { self.root.join("slots/b") } else { a })
    }

    /// Points `current` at `slot` atomically: a new symlink renamed over the old one, the
    /// directory synced (the swap survives a power cut).
    fn switch_to(&self, slot: &Path) -> std::io::Result<()> {
        let next = self.root.join("current.next");
        let _ = std::fs::remove_file(&next);
        symlink(slot, &next)?;
        std::fs::rename(&next, self.current())?;
        std::fs::File::open(&self.root)?.sync_all()
    }

    /// The version the running slot says it is.
    fn running_version(&self) -> String {
        std::fs::read_to_string(self.current().join("VERSION")).unwrap_or_default()
    }
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::other("this example swaps slots with a symlink (Unix)"))
}

fn failed(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

#[async_trait::async_trait]
impl UpdateHandler for AbSlots {
    /// Writes the artifact into the inactive slot (cleared first: a retried install starts over)
    /// and switches to it. The application would restart into it here; this one "runs" whatever
    /// `current` points to.
    async fn install(&self, update: &UpdateInfo, artifact: &Path) -> Result<Installed, String> {
        let slot = self.other().map_err(|e| failed("reading current", e))?;
        let _ = std::fs::remove_dir_all(&slot);
        std::fs::create_dir_all(&slot).map_err(|e| failed("preparing the slot", e))?;
        std::fs::copy(artifact, slot.join("app.bin")).map_err(|e| failed("copying the artifact", e))?;
        std::fs::write(slot.join("VERSION"), &update.version).map_err(|e| failed("writing VERSION", e))?;
        std::fs::File::open(slot.join("app.bin")).and_then(|f| f.sync_all()).map_err(|e| failed("syncing", e))?;
        self.switch_to(&slot).map_err(|e| failed("switching slots", e))?;
        println!("  installed {} into {} and switched to it", update.version, slot.display());
        Ok(Installed { needs_reboot: false })
    }

    /// The new version is healthy when its application starts: here, when its binary does not
    /// say `BROKEN`.
    async fn confirm(&self, update: &UpdateInfo) -> Result<(), String> {
        let app = std::fs::read(self.current().join("app.bin")).map_err(|e| failed("reading the app", e))?;
        if app.starts_with(b"BROKEN") {
            return Err(format!("version {} does not start", update.version));
        }
        println!("  version {} runs: confirmed", self.running_version());
        Ok(())
    }

    /// Back to the slot that ran before.
    async fn rollback(&self, _: &UpdateInfo) -> Result<(), String> {
        let previous = self.other().map_err(|e| failed("reading current", e))?;
        self.switch_to(&previous).map_err(|e| failed("switching back", e))?;
        println!("  rolled back to {}", self.running_version());
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    spotflow_examples::init_logs();
    let dir = tempfile::tempdir()?;
    let emu = Emulator::builder().auto_approve(Some(Duration::ZERO)).start().await?;

    // Version 1 runs from slot a.
    let root = dir.path().join("app");
    std::fs::create_dir_all(root.join("slots/a"))?;
    std::fs::write(root.join("slots/a/app.bin"), b"app 1")?;
    std::fs::write(root.join("slots/a/VERSION"), "1")?;
    let slots = AbSlots { root: root.clone() };
    slots.switch_to(&root.join("slots/a"))?;
    println!("running version {}", slots.running_version());

    let client =
        DeviceClient::builder(Some("ab-device"), emu.create_provisioning_token(), dir.path().join("device.db"))
            .instance(emu.https_url())
            .trust_ca_pem(emu.ca_pem())
            .with_network(|n| {
                n.platform_roots = false;
                n.mqtt_port = emu.mqtts_addr().map_or(8883, |a| a.port());
            })
            .start()
            .await?;
    // Manifests must be signed with the platform's key (here, the emulator's).
    let mut options = UpdateOptions::default().with_public_key_hex(&emu.update_public_key())?;
    options.poll_interval = Duration::from_millis(100);
    options.confirm_timeout = Duration::from_secs(10);
    let agent = UpdateAgent::start(&client, options, AbSlots { root: root.clone() }).await?;
    let device = format!("{}:{}", client.workspace_id(), client.device_id());

    for (version, payload) in [("2", &b"app 2"[..]), ("3", &b"BROKEN app 3"[..])] {
        let artifact = emu.publish_artifact(payload.to_vec().into(), version)?;
        let rollout = emu.start_rollout(&RolloutRequest {
            artifact: artifact.id,
            devices: vec![device.clone()],
            ..Default::default()
        })?;
        println!("rolling out version {version} ({rollout})");
        let record = agent
            .wait_for(Duration::from_secs(60), |r| {
                r.manifest.as_ref().is_some_and(|m| m.id == rollout) && r.phase.is_final()
            })
            .await?;
        let reason = record.error.map(|e| format!(" ({}: {})", e.reason, e.detail)).unwrap_or_default();
        println!("update {rollout}: {}{reason}; running version {}", record.phase, slots.running_version());
        let expected = if version == "2" { UpdatePhase::Succeeded } else { UpdatePhase::RolledBack };
        if record.phase != expected {
            return Err(format!("version {version} ended {}, expected {expected}", record.phase).into());
        }
    }
    if slots.running_version() != "2" {
        return Err("version 2 should be running".into());
    }
    client.wait_reported_properties_sent_timeout(Duration::from_secs(10)).await?;
    let twin = emu.twin(&device).ok_or("no twin")?;
    println!("the platform sees: {}", twin.reported["spotflowUpdate"]);
    agent.stop().await;
    client.close().await?;
    Ok(())
}
