//! `spotflow-fleet`: many simulated devices in one process, each a real `DeviceClient` (its own
//! identity, provisioning, MQTT/TLS connection and queue), sending JSON telemetry at a given rate
//! to the emulator (embedded by default) or to any instance; a live progress line and a summary.
//!
//! ```sh
//! # 1,000 devices, 1 message a second each, for 2 minutes, against an emulator in this process
//! cargo run --release -p spotflow-fleet -- --devices 1000 --rate 1 --duration 120
//! # against an emulator process (serve --auto-approve-secs 0), counting what it stored
//! spotflow-fleet --devices 1000 --instance localhost:8443 --ca-file data/ca.pem \
//!     --provisioning-token "$(spotflow-emulator provisioning-token create)" --admin-token "$(cat data/admin-token)"
//! ```
//!
//! Each message is sent with `send_message`, which returns once the platform acknowledged it: the
//! latency measured is enqueue → acknowledgement, and a message is either delivered or counted
//! as failed (none can go missing unseen). With `--admin-token`, the emulator's own count of the
//! messages in its database (`/metrics`; run against an emulator with nothing else stored) is
//! compared with the acknowledged ones.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use spotflow_device::{Compression, DeviceClient, Gateway, MemoryStore, Message};

#[derive(Parser, Debug)]
#[command(name = "spotflow-fleet", about = "Simulate many devices in one process against a Spotflow platform")]
struct Args {
    /// Devices to simulate.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Messages per second per device.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Seconds of sending, once every device has started.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Instance to use (e.g. `localhost:8443`); default: an emulator started in this process.
    #[arg(long)]
    instance: Option<String>,
    /// Provisioning token (with --instance; the operations must be approved automatically).
    #[arg(long, env = "SPOTFLOW_PROVISIONING_TOKEN", hide_env_values = true)]
    provisioning_token: Option<String>,
    /// CA certificate to trust (the emulator's `ca.pem`), with --instance.
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// MQTT over TLS port, with --instance.
    #[arg(long, default_value_t = 8883)]
    mqtt_port: u16,
    /// The emulator's admin token, to compare its count of stored messages with ours.
    #[arg(long, env = "SPOTFLOW_EMULATOR_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Each device's queue: in memory, a SQLite file per device under --data-dir, or one shared
    /// SQLite file for all (a `Gateway`: one store thread, group commit across devices).
    #[arg(long, value_enum, default_value_t = StoreKind::Memory)]
    store: StoreKind,
    /// Directory of the SQLite files (default: a temporary directory).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Devices starting (provisioning, registering, connecting) at once.
    #[arg(long, default_value_t = 64)]
    start_concurrency: usize,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 5)]
    progress_every: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    Memory,
    Sqlite,
    Gateway,
}

/// Figures shared by the device tasks.
#[derive(Default)]
struct Figures {
    started: AtomicUsize,
    failed_starts: AtomicUsize,
    delivered: AtomicU64,
    failed: AtomicU64,
    /// Latencies (µs) since the last progress line.
    recent: Mutex<Vec<u32>>,
    /// All latencies (µs).
    all: Mutex<Vec<u32>>,
    /// The started clients (cheap clones), for the connection figures.
    clients: Mutex<Vec<DeviceClient>>,
}

impl Figures {
    fn delivered(&self, latency: Duration) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let us = latency.as_micros().min(u32::MAX as u128) as u32;
        spotflow_core::lock(&self.recent).push(us);
    }

    /// Moves the recent latencies to the overall list; returns (p50, p99) of them in ms.
    fn take_recent(&self) -> (f64, f64) {
        let mut recent = std::mem::take(&mut *spotflow_core::lock(&self.recent));
        recent.sort_unstable();
        let ps = (percentile(&recent, 0.5), percentile(&recent, 0.99));
        spotflow_core::lock(&self.all).extend(recent);
        ps
    }
}

/// Devices connected now; reconnections and connection attempts (successful or not), in all.
fn connections(figures: &Figures) -> (usize, u64, u64) {
    let clients = spotflow_core::lock(&figures.clients).clone();
    let connected = clients.iter().filter(|c| c.is_connected()).count();
    let (mut reconnects, mut attempts) = (0, 0);
    for c in &clients {
        let s = c.stats();
        reconnects += s.reconnects;
        attempts += s.connection_attempts;
    }
    (connected, reconnects, attempts)
}

/// The `p` percentile of sorted µs values, in ms (NaN without values).
fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    f64::from(sorted[((sorted.len() - 1) as f64 * p).round() as usize]) / 1000.0
}

/// Resident set size of this process (KiB), from /proc.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The process's CPU time (user + system) and its threads' context switches (each a wakeup, or a
/// preemption).
#[cfg(unix)]
fn usage() -> (Duration, u64) {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let t = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    (t(u.ru_utime) + t(u.ru_stime), (u.ru_nvcsw + u.ru_nivcsw) as u64)
}

/// The process's CPU time (user + kernel); Windows does not count context switches per process.
#[cfg(windows)]
fn usage() -> (Duration, u64) {
    use windows_sys::Win32::Foundation::FILETIME;
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, GetProcessTimes};
    let mut times = [FILETIME { dwLowDateTime: 0, dwHighDateTime: 0 }; 4];
    let [created, exited, kernel, user] = &mut times;
    // SAFETY: GetProcessTimes writes the four FILETIMEs it is given; the handle is a pseudo-handle.
    unsafe { GetProcessTimes(GetCurrentProcess(), created, exited, kernel, user) };
    // FILETIME counts 100 ns intervals.
    let t =
        |t: &FILETIME| Duration::from_nanos(((u64::from(t.dwHighDateTime) << 32) | u64::from(t.dwLowDateTime)) * 100);
    (t(&times[2]) + t(&times[3]), 0)
}

/// Where the devices connect.
struct Target {
    instance: String,
    token: String,
    ca_pem: Option<String>,
    mqtt_port: u16,
}

/// What every device task shares.
struct Fleet {
    target: Target,
    args: Args,
    dir: std::path::PathBuf,
    figures: Figures,
    /// Permits to start (provision, register, connect).
    starting: tokio::sync::Semaphore,
    /// The shared store (`--store gateway`).
    gateway: Option<Gateway>,
}

/// One device: starts, then (once `go` says when) sends at `rate` until `stop`; returns its
/// client to be closed.
async fn device(
    i: usize,
    fleet: Arc<Fleet>,
    mut go: tokio::sync::watch::Receiver<Option<Instant>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Option<DeviceClient> {
    let Fleet { target, args, dir, figures, starting, gateway } = &*fleet;
    let id = format!("fleet-{i:05}");
    let client = {
        let _permit = starting.acquire().await.ok()?;
        let builder = match gateway {
            Some(gateway) => match gateway.device(id.clone(), target.token.clone()).await {
                Ok(builder) => builder,
                Err(e) => {
                    eprintln!("{id}: no store in the gateway: {e}");
                    figures.failed_starts.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            },
            None => DeviceClient::builder(Some(id.clone()), target.token.clone(), dir.join(format!("{id}.db"))),
        };
        let mut builder = builder
            .instance(target.instance.clone())
            .display_provisioning_operation_callback(|_| {})
            .with_network(|n| {
                n.mqtt_port = target.mqtt_port;
                n.platform_roots = target.ca_pem.is_none();
            });
        if let Some(ca) = &target.ca_pem {
            builder = builder.trust_ca_pem(ca.clone());
        }
        if args.store == StoreKind::Memory {
            builder = builder.store(Arc::new(MemoryStore::new()));
        }
        match builder.start().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{id}: could not start: {e}");
                figures.failed_starts.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
    };
    figures.started.fetch_add(1, Ordering::Relaxed);
    spotflow_core::lock(&figures.clients).push(client.clone());
    let sender = client.create_stream_sender(Some("fleet"), Some("telemetry"), Compression::Uncompressed).ok()?;
    // Everyone starts sending together, each at its own offset within the first period.
    let start = loop {
        if let Some(at) = *go.borrow_and_update() {
            break at;
        }
        if go.changed().await.is_err() {
            return Some(client);
        }
    };
    let period = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let first = start + period.mul_f64(fastrand::f64());
    let mut n = 0u64;
    loop {
        let due = first + period * n as u32;
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        let payload = serde_json::json!({
            "device": id,
            "n": n,
            "temperatureCelsius": 20.0 + (i % 17) as f64 * 0.5 + fastrand::f64(),
            "humidityPercent": 40 + (n % 20),
            "batteryVolts": 3.7 - (n % 100) as f64 * 0.001,
        });
        let sent = Instant::now();
        match sender.send_message(Message::new(payload.to_string())).await {
            Ok(()) => figures.delivered(sent.elapsed()),
            Err(e) => {
                figures.failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("{id}: message {n} failed: {e}");
            }
        }
        n += 1;
    }
    Some(client)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The emulator's admin API, as an operator's tool uses it while the fleet runs.
struct Admin {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Admin {
    fn new(target: &Target, token: &str) -> Result<Admin, String> {
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if let Some(ca) = &target.ca_pem {
            let config =
                spotflow_device::extend::mqtt::TlsOptions { platform_roots: false, extra_ca_pem: vec![ca.clone()] }
                    .client_config()
                    .map_err(|e| e.to_string())?;
            http = http.tls_backend_preconfigured((*config).clone());
        }
        let base = if target.instance.starts_with("http") {
            target.instance.clone()
        } else {
            format!("https://{}", target.instance)
        };
        Ok(Admin { http: http.build().map_err(|e| e.to_string())?, base, token: token.to_owned() })
    }

    async fn get(&self, path: &str) -> Result<String, String> {
        let answer = self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await;
        let answer = answer.and_then(reqwest::Response::error_for_status).map_err(|e| e.to_string())?;
        answer.text().await.map_err(|e| e.to_string())
    }

    /// How long the list of every device (`/admin/devices`) and the metrics take to answer.
    async fn probe(&self) -> Result<(Duration, Duration), String> {
        let start = Instant::now();
        self.get("/admin/devices").await?;
        let devices = start.elapsed();
        let start = Instant::now();
        self.get("/metrics").await?;
        Ok((devices, start.elapsed()))
    }
}

/// The platform's count of stored fleet messages, from the emulator's `/metrics`.
async fn stored_by_platform(admin: &Admin) -> Result<u64, String> {
    let text = admin.get("/metrics").await?;
    // The database's count: it survives restarts of the emulator (the per-stream totals count
    // from its start). Every stream: run against an emulator with nothing else stored.
    text.lines()
        .find_map(|l| l.strip_prefix("spotflow_emulator_messages_stored "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| "no spotflow_emulator_messages_stored in /metrics".to_owned())
}

#[tokio::main]
async fn main() -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    // Each device holds a socket (and a database file with --store sqlite).
    match spotflow_emulator::raise_open_file_limit() {
        Ok((_, files)) if (files as usize) < args.devices * 4 + 64 => println!(
            "warning: {files} open files allowed; {} devices may need up to {} (raise the hard limit: ulimit -Hn)",
            args.devices,
            args.devices * 4 + 64
        ),
        Ok(_) => {}
        Err(e) => println!("warning: {e}"),
    }
    if args.devices == 0 || args.rate <= 0.0 || args.start_concurrency == 0 {
        return Err("--devices, --rate and --start-concurrency must be above 0".into());
    }
    let mut embedded = None;
    let target = match &args.instance {
        Some(instance) => Target {
            instance: instance.clone(),
            token: args.provisioning_token.clone().ok_or("--instance needs --provisioning-token")?,
            ca_pem: match &args.ca_file {
                Some(p) => Some(std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?),
                None => None,
            },
            mqtt_port: args.mqtt_port,
        },
        None => {
            let emu = spotflow_emulator::Emulator::builder()
                .auto_approve(Some(Duration::ZERO))
                .start()
                .await
                .map_err(|e| e.to_string())?;
            let target = Target {
                instance: emu.https_url(),
                token: emu.create_provisioning_token(),
                ca_pem: Some(emu.ca_pem().to_owned()),
                mqtt_port: emu.mqtts_addr().map_or(8883, |a| a.port()),
            };
            println!("embedded emulator: {} (dashboard {})", emu.https_url(), emu.dashboard_url());
            embedded = Some(emu);
            target
        }
    };
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("spotflow-fleet-{}", std::process::id())));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    println!(
        "{} devices, {} msg/s each, {} s, {:?} store, starting {} at a time, against {}",
        args.devices, args.rate, args.duration, args.store, args.start_concurrency, target.instance
    );
    let starting = tokio::sync::Semaphore::new(args.start_concurrency);
    let gateway = match args.store {
        StoreKind::Gateway => {
            let path = dir.join("fleet-gateway.db");
            Some(Gateway::open(&path).await.map_err(|e| format!("cannot open {}: {e}", path.display()))?)
        }
        _ => None,
    };
    let fleet = Arc::new(Fleet { target, args, dir, figures: Figures::default(), starting, gateway });
    let (args, figures, target, dir) = (&fleet.args, &fleet.figures, &fleet.target, &fleet.dir);
    let (go_tx, go) = tokio::sync::watch::channel(None);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let rss_before = rss_kib();
    let began = Instant::now();
    let tasks: Vec<_> =
        (0..args.devices).map(|i| tokio::spawn(device(i, fleet.clone(), go.clone(), stop.clone()))).collect();
    // Start-up, with progress.
    let mut last_line = Instant::now();
    while figures.started.load(Ordering::Relaxed) + figures.failed_starts.load(Ordering::Relaxed) < args.devices {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if last_line.elapsed() >= Duration::from_secs(args.progress_every) {
            last_line = Instant::now();
            println!(
                "[{:>5.0} s] starting: {} of {} started, {} failed, RSS {} MiB",
                began.elapsed().as_secs_f64(),
                figures.started.load(Ordering::Relaxed),
                args.devices,
                figures.failed_starts.load(Ordering::Relaxed),
                rss_kib() / 1024
            );
        }
    }
    let start_time = began.elapsed();
    let started = figures.started.load(Ordering::Relaxed);
    println!("{started} devices started in {:.1} s; sending for {} s", start_time.as_secs_f64(), args.duration);
    let sending = Instant::now();
    let (cpu_sending, switches_sending) = usage();
    let _ = go_tx.send(Some(Instant::now()));
    let mut previous = 0u64;
    let (_, mut previous_reconnects, mut previous_attempts) = connections(figures);
    let mut peak_rss = rss_kib();
    // The admin API probed at every progress line while the fleet sends (one probe at a time).
    let admin_token = args.admin_token.clone().or_else(|| embedded.as_ref().map(|e| e.admin_token().to_owned()));
    let admin = admin_token.map(|t| Admin::new(target, &t).map(Arc::new));
    let mut probes: Vec<(Duration, Duration)> = Vec::new();
    let mut probe: Option<tokio::task::JoinHandle<Result<(Duration, Duration), String>>> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(args.progress_every));
    tick.tick().await;
    let end = tokio::time::Instant::now() + Duration::from_secs(args.duration);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(end) => break,
            _ = tokio::signal::ctrl_c() => { println!("interrupted"); break; }
        }
        let delivered = figures.delivered.load(Ordering::Relaxed);
        let (p50, p99) = figures.take_recent();
        let rss = rss_kib();
        peak_rss = peak_rss.max(rss);
        let (connected, reconnects, attempts) = connections(figures);
        let mut admin_line = String::new();
        if let Some(done) = probe.take_if(|p| p.is_finished()) {
            match done.await {
                Ok(Ok(t)) => {
                    admin_line = format!(" | admin API {:.0} / {:.0} ms", ms(t.0), ms(t.1));
                    probes.push(t);
                }
                Ok(Err(e)) => admin_line = format!(" | admin API failed: {e}"),
                Err(_) => {}
            }
        }
        if let (None, Some(Ok(admin))) = (&probe, &admin) {
            let admin = admin.clone();
            probe = Some(tokio::spawn(async move { admin.probe().await }));
        }
        println!(
            "[{:>5.0} s] {:>6.0} msg/s delivered | p50 {:>7.2} ms p99 {:>7.2} ms | {} failed | {connected} connected, {:.0} reconnects/s, {:.0} attempts/s | RSS {} MiB ({:.0} KiB/device){admin_line}",
            sending.elapsed().as_secs_f64(),
            (delivered - previous) as f64 / args.progress_every as f64,
            p50,
            p99,
            figures.failed.load(Ordering::Relaxed),
            reconnects.saturating_sub(previous_reconnects) as f64 / args.progress_every as f64,
            attempts.saturating_sub(previous_attempts) as f64 / args.progress_every as f64,
            rss / 1024,
            rss.saturating_sub(rss_before) as f64 / started.max(1) as f64,
        );
        previous = delivered;
        previous_reconnects = reconnects;
        previous_attempts = attempts;
    }
    let _ = stop_tx.send(true);
    let sent_for = sending.elapsed();
    let (cpu_now, switches_now) = usage();
    let cpu_used = cpu_now.saturating_sub(cpu_sending);
    let switches = switches_now.saturating_sub(switches_sending);
    let mut clients = Vec::new();
    for t in tasks {
        if let Ok(Some(c)) = t.await {
            clients.push(c);
        }
    }
    let connected = clients.iter().filter(|c| c.is_connected()).count();
    let (_, reconnects, attempts) = connections(figures);
    spotflow_core::lock(&figures.clients).clear();
    let rss_end = rss_kib();
    peak_rss = peak_rss.max(rss_end);
    for c in &clients {
        let _ = c.close().await;
    }
    if let Some(gateway) = &fleet.gateway {
        if let Err(e) = gateway.close().await {
            println!("warning: the gateway's store did not close cleanly: {e}");
        }
    }
    figures.take_recent();
    let mut all = std::mem::take(&mut *spotflow_core::lock(&figures.all));
    all.sort_unstable();
    let delivered = figures.delivered.load(Ordering::Relaxed);
    let failed = figures.failed.load(Ordering::Relaxed);
    let stored = match (&embedded, &args.admin_token) {
        (Some(emu), _) => Some(Ok(emu.message_count().await)),
        (None, Some(_)) => match &admin {
            Some(Ok(admin)) => Some(stored_by_platform(admin).await),
            Some(Err(e)) => Some(Err(e.clone())),
            None => None,
        },
        (None, None) => None,
    };
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| devices started / asked | {started} / {} ({} failed to start) |",
        args.devices,
        figures.failed_starts.load(Ordering::Relaxed)
    );
    println!("| start-up of all devices | {:.1} s ({} at a time) |", start_time.as_secs_f64(), args.start_concurrency);
    println!(
        "| connected at the end | {connected} ({reconnects} reconnections, {attempts} connection attempts in all) |"
    );
    println!(
        "| messages delivered (acknowledged) | {delivered} in {:.1} s = {:.0} msg/s |",
        sent_for.as_secs_f64(),
        delivered as f64 / sent_for.as_secs_f64()
    );
    println!("| messages failed | {failed} |");
    match &stored {
        Some(Ok(n)) => println!(
            "| stored by the platform | {n} ({}) |",
            if *n >= delivered { "none lost" } else { "FEWER than acknowledged" }
        ),
        Some(Err(e)) => println!("| stored by the platform | unknown: {e} |"),
        None => println!("| stored by the platform | not checked (give --admin-token) |"),
    }
    println!(
        "| latency enqueue → acknowledged | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms |",
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&all, 1.0)
    );
    println!(
        "| RSS | {} MiB at the end, peak {} MiB; {:.0} KiB per device above the {} MiB before the devices |",
        rss_end / 1024,
        peak_rss / 1024,
        rss_end.saturating_sub(rss_before) as f64 / started.max(1) as f64,
        rss_before / 1024
    );
    println!(
        "| CPU while sending | {:.1} s = {:.0} µs per delivered message{} |",
        cpu_used.as_secs_f64(),
        cpu_used.as_micros() as f64 / delivered.max(1) as f64,
        if embedded.is_some() { " (the embedded emulator included)" } else { "" }
    );
    if !probes.is_empty() {
        let (mut devices, mut metrics): (Vec<f64>, Vec<f64>) = probes.iter().map(|(d, m)| (ms(*d), ms(*m))).unzip();
        devices.sort_by(f64::total_cmp);
        metrics.sort_by(f64::total_cmp);
        println!(
            "| admin API while sending ({} probes) | `/admin/devices` (every device) p50 {:.0} ms, max {:.0} ms; `/metrics` p50 {:.0} ms, max {:.0} ms |",
            probes.len(),
            devices[devices.len() / 2],
            devices[devices.len() - 1],
            metrics[metrics.len() / 2],
            metrics[metrics.len() - 1]
        );
    }
    println!(
        "| context switches while sending | {switches} = {:.2} per device per second, {:.2} per delivered message |",
        switches as f64 / started.max(1) as f64 / sent_for.as_secs_f64().max(0.001),
        switches as f64 / delivered.max(1) as f64
    );
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
    if failed > 0 || matches!(stored, Some(Ok(n)) if n < delivered) {
        return Err("some messages were not delivered".into());
    }
    Ok(())
}
