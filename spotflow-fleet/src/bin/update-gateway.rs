//! A gateway process for the rollout benchmark (`benches/update_rollout.rs`): `--devices` clients
//! over one `Gateway` store, each with an update agent (manifests signed with `--key`; the
//! install handler checks the verified file's size and asks for no reboot). Prints `READY` once
//! every client is connected, then `DONE {succeeded} {failed} {other} {seconds} {peak RSS KiB}`
//! once every agent ended an update (or `--timeout` passed): the seconds from the first agent
//! that started downloading.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use spotflow_device::update::{Installed, UpdateAgent, UpdateHandler, UpdateInfo, UpdateOptions, UpdatePhase};
use spotflow_device::Gateway;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    instance: String,
    #[arg(long)]
    ca_file: std::path::PathBuf,
    #[arg(long)]
    mqtt_port: u16,
    #[arg(long)]
    provisioning_token: String,
    #[arg(long)]
    db: std::path::PathBuf,
    #[arg(long)]
    devices: usize,
    #[arg(long)]
    key: String,
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

struct SizeCheck;

#[async_trait::async_trait]
impl UpdateHandler for SizeCheck {
    async fn install(&self, update: &UpdateInfo, artifact: &Path) -> Result<Installed, String> {
        let size = std::fs::metadata(artifact).map_err(|e| e.to_string())?.len();
        if size != update.size {
            return Err(format!("{size} bytes handed over for {}", update.size));
        }
        Ok(Installed { needs_reboot: false })
    }
    async fn rollback(&self, _: &UpdateInfo) -> Result<(), String> {
        Ok(())
    }
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let ca = std::fs::read_to_string(&args.ca_file).map_err(|e| e.to_string())?;
    let gateway = Gateway::open(&args.db).await.map_err(|e| e.to_string())?;
    let starting = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..args.devices {
        let builder =
            gateway.device(format!("gw-{i}"), args.provisioning_token.clone()).await.map_err(|e| e.to_string())?;
        let (ca, instance, port, key, starting) =
            (ca.clone(), args.instance.clone(), args.mqtt_port, args.key.clone(), starting.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = starting.acquire().await.expect("semaphore");
            let client = builder
                .instance(instance)
                .trust_ca_pem(ca)
                .with_network(|n| {
                    n.platform_roots = false;
                    n.mqtt_port = port;
                })
                .display_provisioning_operation_callback(|_| {})
                .start()
                .await
                .expect("device starts");
            let mut options = UpdateOptions::default().with_public_key_hex(&key).expect("key");
            options.poll_interval = Duration::from_millis(200);
            options.retry_initial = Duration::from_millis(200);
            options.retry_max = Duration::from_secs(5);
            let agent = UpdateAgent::start(&client, options, SizeCheck).await.expect("agent starts");
            (client, agent)
        }));
    }
    let mut devices = Vec::new();
    for t in tasks {
        devices.push(t.await.map_err(|e| e.to_string())?);
    }
    println!("READY");
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    // From the first agent seen at work.
    let mut first: Option<Instant> = None;
    loop {
        let phases: Vec<(UpdatePhase, bool)> =
            devices.iter().map(|(_, a)| (a.phase(), a.record().manifest.is_some())).collect();
        if first.is_none() && phases.iter().any(|(p, _)| !p.is_final()) {
            first = Some(Instant::now());
        }
        let over = phases.iter().all(|(p, m)| *m && p.is_final());
        if over || Instant::now() > deadline {
            let count = |want: UpdatePhase| phases.iter().filter(|(p, _)| *p == want).count();
            let (ok, failed) = (count(UpdatePhase::Succeeded), count(UpdatePhase::Failed));
            let seconds = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
            // The reported states are sent before the clients close.
            for (client, _) in &devices {
                let _ = client.wait_reported_properties_sent_timeout(Duration::from_secs(30)).await;
            }
            println!("DONE {ok} {failed} {} {seconds:.2} {}", devices.len() - ok - failed, peak_rss_kib());
            for (client, agent) in &devices {
                agent.stop().await;
                let _ = client.close().await;
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
