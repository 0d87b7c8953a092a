//! Shared by the crash children and the crash tests: opening a backend by name.

use std::path::Path;
use std::sync::Arc;

use spotflow_core::{Result, Store};
use spotflow_store_sled::{SledOptions, SledStore};
use spotflow_store_sqlite::{Durability, SharedSqliteStore, SqliteOptions, SqliteStore};

/// The backends under test.
pub const BACKENDS: [&str; 4] = ["sqlite-power-loss-safe", "sqlite-crash-safe", "sled", "sled-crash-safe"];

/// What a crash child writes to: one store for all its threads, or (backends `shared-sqlite-…`)
/// one device's store per thread in a shared SQLite file.
pub struct Opened {
    /// One store, or one per thread.
    pub stores: Vec<Arc<dyn Store>>,
    shared: Option<SharedSqliteStore>,
}

impl Opened {
    /// The store thread `t` appends to.
    pub fn for_thread(&self, t: usize) -> Arc<dyn Store> {
        self.stores[t.min(self.stores.len() - 1)].clone()
    }

    /// Closes everything (the file is free for the next process when it returns).
    pub async fn close(self) -> Result<()> {
        match self.shared {
            Some(shared) => shared.close().await,
            None => {
                for store in &self.stores {
                    store.close().await?;
                }
                Ok(())
            }
        }
    }
}

/// Opens `backend` at `path` for `threads` writers: `shared-sqlite-power-loss-safe` and
/// `shared-sqlite-crash-safe` give thread `t` the store of device `device-{t}` in a shared
/// SQLite file; the others one store for all.
pub async fn open_for_threads(backend: &str, path: &Path, threads: usize) -> Result<Opened> {
    let Some(durability) = backend.strip_prefix("shared-sqlite-") else {
        return Ok(Opened { stores: vec![open(backend, path).await?], shared: None });
    };
    let durability = if durability == "crash-safe" { Durability::CrashSafe } else { Durability::PowerLossSafe };
    let shared = SharedSqliteStore::open_async(path, durability).await?;
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    for t in 0..threads.max(1) {
        stores.push(Arc::new(shared.device(&format!("device-{t}")).await?));
    }
    Ok(Opened { stores, shared: Some(shared) })
}

/// Opens `backend` at `path` with its default options.
pub async fn open(backend: &str, path: &Path) -> Result<Arc<dyn Store>> {
    open_with_reserve(backend, path, None).await
}

/// Opens `backend` at `path`; `min_free_bytes` replaces the default free-space reserve.
pub async fn open_with_reserve(backend: &str, path: &Path, min_free_bytes: Option<u64>) -> Result<Arc<dyn Store>> {
    let durability = if backend.ends_with("crash-safe") { Durability::CrashSafe } else { Durability::PowerLossSafe };
    let store: Arc<dyn Store> = match backend {
        "sqlite-power-loss-safe" | "sqlite-crash-safe" => {
            let mut options = SqliteOptions::default();
            options.durability = durability;
            options.min_free_bytes = min_free_bytes.unwrap_or(options.min_free_bytes);
            let path = path.to_path_buf();
            let opened = tokio::task::spawn_blocking(move || SqliteStore::open_with_options(path, options)).await;
            Arc::new(opened.map_err(|e| spotflow_core::Error::store("the opening thread failed", e))??)
        }
        "sled" | "sled-crash-safe" => {
            let mut options = SledOptions::default();
            options.durability = durability;
            options.min_free_bytes = min_free_bytes.unwrap_or(options.min_free_bytes);
            Arc::new(SledStore::open_async_with_options(path, options).await?)
        }
        other => return Err(spotflow_core::Error::invalid("backend", other)),
    };
    Ok(store)
}

/// How to start `device-child` (a device process sending to a platform, see its docs) for the
/// kill -9 test and the crash-loop command.
#[derive(Debug, Clone)]
pub struct DeviceChild {
    /// Path of the `device-child` executable.
    pub exe: std::path::PathBuf,
    /// The platform's base URL.
    pub instance: String,
    /// PEM file of the platform's CA.
    pub ca: std::path::PathBuf,
    /// The platform's MQTT/TLS port.
    pub mqtt_port: u16,
    /// Provisioning token.
    pub token: String,
    /// The device's database.
    pub db: std::path::PathBuf,
    /// A store of [`BACKENDS`] instead of the device's default.
    pub backend: Option<String>,
    /// Enqueues per second (unpaced when `None`).
    pub rate: Option<u32>,
    /// Where the children's standard error goes (appended); discarded when `None`.
    pub stderr: Option<std::path::PathBuf>,
    /// A gateway of this many devices over one shared store instead of one device.
    pub gateway_devices: Option<usize>,
    /// Log records through a `DeviceLogger` instead of enqueueing messages (`LOGS=1`).
    pub logs: bool,
    /// Take cloud-to-device messages from the inbox instead of enqueueing messages (`C2D=1`).
    pub c2d: bool,
    /// More environment variables for the children (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
}

/// The lines a child process writes on its piped standard output, read by a thread of their own
/// (so that a child killed mid-line leaves what it said before readable).
pub fn stdout_lines(
    child: &mut std::process::Child,
) -> (std::sync::mpsc::Receiver<String>, std::thread::JoinHandle<()>) {
    use std::io::BufRead;
    let stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in stdout.lines().map_while(std::result::Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (rx, reader)
}

impl DeviceChild {
    /// A device provisioned by `emulator` (with a new token), its database at `db`.
    pub fn for_emulator(exe: &str, emulator: &spotflow_emulator::Emulator, db: std::path::PathBuf) -> Self {
        DeviceChild {
            exe: exe.into(),
            instance: emulator.https_url(),
            ca: emulator.ca_path().expect("the emulator has a data directory").to_path_buf(),
            mqtt_port: emulator.mqtts_addr().expect("the emulator listens for MQTT/TLS").port(),
            token: emulator.create_provisioning_token(),
            db,
            backend: None,
            rate: None,
            stderr: None,
            gateway_devices: None,
            logs: false,
            c2d: false,
            env: Vec::new(),
        }
    }

    /// Starts run `run`, which enqueues `count` messages (ids `r{run}-{i}`), stdout piped.
    pub fn spawn(&self, run: usize, count: u32) -> std::process::Child {
        let mut command = std::process::Command::new(&self.exe);
        if let Some(backend) = &self.backend {
            command.env("BACKEND", backend);
        }
        if let Some(rate) = self.rate {
            command.env("RATE", rate.to_string());
        }
        if self.logs {
            command.env("LOGS", "1");
        }
        if self.c2d {
            command.env("C2D", "1");
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(devices) = self.gateway_devices {
            command.env("GATEWAY_DEVICES", devices.to_string());
        }
        let stderr = match &self.stderr {
            Some(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_or_else(|_| std::process::Stdio::null(), std::process::Stdio::from),
            None => std::process::Stdio::null(),
        };
        command
            .env("INSTANCE", &self.instance)
            .env("CA_FILE", &self.ca)
            .env("MQTT_PORT", self.mqtt_port.to_string())
            .env("PROVISIONING_TOKEN", &self.token)
            .env("DB", &self.db)
            .env("RUN", run.to_string())
            .env("COUNT", count.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("device child starts")
    }

    /// Starts run `run`, lets it enqueue and send for `alive` once it is ready, kills it with
    /// SIGKILL and returns the ids of the messages whose enqueue had returned.
    pub fn run_and_kill(&self, run: usize, count: u32, alive: std::time::Duration) -> Vec<String> {
        let mut child = self.spawn(run, count);
        let (rx, reader) = stdout_lines(&mut child);
        let ready = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the device starts");
        assert_eq!(ready, "READY");
        std::thread::sleep(alive);
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        reader.join().expect("reader");
        rx.try_iter()
            .filter_map(|line| {
                let (r, i) = line.strip_prefix("ACK ")?.split_once(' ')?;
                Some(format!("r{r}-{i}"))
            })
            .collect()
    }

    /// Runs `run` with nothing to enqueue until everything queued is acknowledged; whether it
    /// finished so.
    pub fn drain(&self, run: usize) -> bool {
        use std::io::BufRead;
        let mut child = self.spawn(run, 0);
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let done = stdout.lines().map_while(std::result::Result::ok).any(|l| l == "DONE");
        child.wait().is_ok_and(|s| s.success()) && done
    }
}

impl DeviceChild {
    /// This child as the updating device `device_id` (`UPDATE=1`, see `device-child`): its own
    /// database in `dir`, manifests checked with `emulator`'s key, installs into a directory of
    /// `dir` (created; returned).
    pub fn updater(
        &self,
        emulator: &spotflow_emulator::Emulator,
        dir: &std::path::Path,
        device_id: &str,
    ) -> (DeviceChild, std::path::PathBuf) {
        let mut device = self.clone();
        device.db = dir.join(format!("{device_id}.db"));
        let install_dir = dir.join(format!("{device_id}-installed"));
        std::fs::create_dir_all(&install_dir).expect("install directory");
        device.env.extend([
            ("UPDATE".into(), "1".into()),
            ("DEVICE_ID".into(), device_id.to_owned()),
            ("UPDATE_KEY".into(), emulator.update_public_key()),
            ("UPDATE_INSTALL_DIR".into(), install_dir.display().to_string()),
        ]);
        (device, install_dir)
    }
}

/// `size` pseudo-random bytes (xorshift, seeded): update artifacts that do not compress.
pub fn pseudo_random_bytes(size: usize, seed: u64) -> Vec<u8> {
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

/// For the crash-loop benchmarks: an emulator with its data in `dir` (devices approved at once),
/// started on `rt`, and a `device-child` for it (`SPOTFLOW_DEVICE_CHILD`, or `built`) at `rate`,
/// its database and its standard error (`children.log`) in `dir`.
pub fn emulator_and_child(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    built: &str,
    rate: u32,
) -> (spotflow_emulator::Emulator, DeviceChild) {
    let emu = rt
        .block_on(
            spotflow_emulator::Emulator::builder()
                .data_dir(dir.join("emulator"))
                .auto_approve(Some(std::time::Duration::ZERO))
                .start(),
        )
        .expect("emulator");
    let exe = std::env::var("SPOTFLOW_DEVICE_CHILD").unwrap_or_else(|_| built.to_owned());
    let mut device = DeviceChild::for_emulator(&exe, &emu, dir.join("device.db"));
    device.rate = Some(rate);
    device.stderr = Some(dir.join("children.log"));
    (emu, device)
}

/// For the child processes: the environment variable `name`, or exit 2 saying it is missing.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("{name} is not set");
        std::process::exit(2)
    })
}

/// For the child processes: the SDK's warnings (and what `RUST_LOG` asks for) on standard error,
/// which the parent discards or keeps in a file; standard output is their protocol.
pub fn child_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

/// CPU time (user + system, µs) of the process `pid` (`"self"` for this one) from
/// `/proc/{pid}/stat`, or with `children` that of its waited-for children; 0 where there is no
/// `/proc`. Clock ticks are taken as 100 per second (Linux's `USER_HZ`): 10 ms resolution.
pub fn proc_cpu_us(pid: &str, children: bool) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // Fields after the command name (which may hold spaces), from field 3 on.
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0 };
    let fields: Vec<u64> = rest.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0)).collect();
    // utime, stime are fields 14 and 15, cutime, cstime 16 and 17 (1-based): here 11, 12, 13, 14.
    let (a, b) = if children { (13, 14) } else { (11, 12) };
    (fields.get(a).copied().unwrap_or(0) + fields.get(b).copied().unwrap_or(0)) * 10_000
}
