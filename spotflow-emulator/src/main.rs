//! `spotflow-emulator`: run the local platform, and administer it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Value;

#[derive(Parser)]
#[command(name = "spotflow-emulator", version, about = "The Spotflow IoT Platform on one machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Admin {
    /// Base URL of the running emulator's HTTP(S) API.
    #[arg(long, env = "SPOTFLOW_EMULATOR_URL", default_value = "https://localhost:8443")]
    url: String,
    /// Data directory of the running emulator (for its CA certificate and admin token).
    #[arg(long, env = "SPOTFLOW_EMULATOR_DATA", default_value = "spotflow-emulator-data")]
    data_dir: PathBuf,
    /// Admin token (default: read from the data directory).
    #[arg(long, env = "SPOTFLOW_EMULATOR_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the emulator.
    Serve {
        /// Data directory (database, CA, admin token).
        #[arg(long, default_value = "spotflow-emulator-data")]
        data_dir: PathBuf,
        /// Address to bind every listener to.
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
        /// HTTPS port (platform API, uploads, admin API, MQTT over WSS).
        #[arg(long, default_value_t = 8443)]
        https_port: u16,
        /// Plain HTTP port (off by default).
        #[arg(long)]
        http_port: Option<u16>,
        /// MQTT over TLS port.
        #[arg(long, default_value_t = 8883)]
        mqtts_port: u16,
        /// Plain MQTT port (off by default).
        #[arg(long)]
        mqtt_port: Option<u16>,
        /// Host name given to devices as the hub host.
        #[arg(long, default_value = "localhost")]
        hub_host: String,
        /// Approve provisioning operations automatically after this many seconds.
        #[arg(long)]
        auto_approve_secs: Option<u64>,
        /// Lifetime of registration tokens, in seconds.
        #[arg(long, default_value_t = 30 * 86_400)]
        registration_token_lifetime_secs: u64,
        /// Lifetime of connection credentials, in seconds.
        #[arg(long, default_value_t = 86_400)]
        connection_lifetime_secs: u64,
        /// Admin token (default: generated and stored in the data directory).
        #[arg(long, env = "SPOTFLOW_EMULATOR_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Record the devices' HTTP and MQTT traffic (secrets masked), for `traffic dump`.
        #[arg(long)]
        record_traffic: bool,
        /// Seconds an HTTP client may take to send a request header, or stay idle between
        /// requests.
        #[arg(long, default_value_t = 10)]
        http_header_timeout_secs: u64,
        /// Most HTTP(S) connections at once (default: half the open-file limit, at most 1,024).
        #[arg(long)]
        max_http_connections: Option<usize>,
    },
    /// Provisioning tokens.
    ProvisioningToken {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Provisioning operations.
    Operations {
        #[command(subcommand)]
        action: OperationAction,
    },
    /// Devices.
    Devices {
        #[command(subcommand)]
        action: DeviceAction,
    },
    /// Call a device's direct method and print its answer (`DEVICE` is `workspace:device`).
    Method {
        device: String,
        method: String,
        /// The payload (JSON).
        #[arg(long, default_value = "null")]
        payload: String,
        /// Seconds to wait for the device's answer.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        #[command(flatten)]
        admin: Admin,
    },
    /// Reach a TCP port of a device through its remote access: listen locally and open a
    /// tunnel to `--port` on the device for each connection (`DEVICE` is `workspace:device`; the
    /// device must allow remote access to that port).
    Tunnel {
        device: String,
        /// The device's local port.
        #[arg(long)]
        port: u16,
        /// Where to listen (port 0: any free port; the address is printed).
        #[arg(long, default_value = "127.0.0.1:2222")]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        admin: Admin,
    },
    /// Desired properties.
    Desired {
        #[command(subcommand)]
        action: DesiredAction,
    },
    /// Cloud-to-device messages: queued for a device, delivered at QoS 1 when it is connected.
    C2d {
        #[command(subcommand)]
        action: C2dAction,
    },
    /// Software updates: publish an artifact, roll it out to devices, follow the rollout.
    Update {
        #[command(subcommand)]
        action: UpdateAction,
    },
    /// Device logs (the records of the `device-logs` stream).
    Logs {
        #[command(subcommand)]
        action: LogAction,
    },
    /// Received messages.
    Messages {
        #[command(subcommand)]
        action: MessageAction,
    },
    /// Recorded device traffic (the emulator runs with --record-traffic).
    Traffic {
        #[command(subcommand)]
        action: TrafficAction,
    },
}

#[derive(Subcommand)]
enum TrafficAction {
    /// Print every recorded HTTP exchange and MQTT packet, one JSON object a line.
    Dump {
        #[command(flatten)]
        admin: Admin,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create a provisioning token.
    Create {
        #[arg(long)]
        workspace: Option<String>,
        #[command(flatten)]
        admin: Admin,
    },
}

#[derive(Subcommand)]
enum OperationAction {
    /// List provisioning operations.
    List {
        #[command(flatten)]
        admin: Admin,
    },
    /// Approve an operation, optionally overriding the device id.
    Approve {
        id: String,
        #[arg(long)]
        device_id: Option<String>,
        #[command(flatten)]
        admin: Admin,
    },
    /// Cancel an operation.
    Cancel {
        id: String,
        #[command(flatten)]
        admin: Admin,
    },
}

#[derive(Subcommand)]
enum DeviceAction {
    /// List devices.
    List {
        #[command(flatten)]
        admin: Admin,
    },
}

#[derive(Subcommand)]
enum DesiredAction {
    /// Merge a JSON patch into a device's desired properties (`DEVICE` is `workspace:device`).
    Set {
        device: String,
        json: String,
        #[command(flatten)]
        admin: Admin,
    },
}

#[derive(Subcommand)]
enum C2dAction {
    /// Queue a message for a device (`DEVICE` is `workspace:device`); prints its id.
    Send {
        device: String,
        /// The payload (text).
        #[arg(long, default_value = "")]
        payload: String,
        /// A property `KEY=VALUE` (repeat for more).
        #[arg(long = "property", value_name = "KEY=VALUE")]
        properties: Vec<String>,
        /// Time to live in seconds (default 3600, at most 172800).
        #[arg(long, default_value_t = 3600.0)]
        ttl: f64,
        #[command(flatten)]
        admin: Admin,
    },
    /// List a device's messages and their states (queued, inFlight, delivered, expired).
    List {
        device: String,
        #[command(flatten)]
        admin: Admin,
    },
}

#[derive(Subcommand)]
enum UpdateAction {
    /// Publish an artifact (a file); prints its id, size and SHA-256.
    Publish {
        file: std::path::PathBuf,
        /// The version it installs.
        #[arg(long)]
        version: String,
        #[command(flatten)]
        admin: Admin,
    },
    /// Roll an artifact out: sets each device's desired `spotflowUpdate` to a signed manifest;
    /// prints the rollout's id.
    Rollout {
        /// The artifact's id (from `publish`).
        artifact: String,
        /// A device (`workspace:device`; repeat for more).
        #[arg(long = "device", required = true)]
        devices: Vec<String>,
        /// What a device busy with another update does: queue (default) or cancel.
        #[arg(long)]
        if_busy: Option<String>,
        /// Not installed before this time (RFC 3339).
        #[arg(long)]
        install_after: Option<String>,
        /// Not installed after this time (RFC 3339).
        #[arg(long)]
        install_before: Option<String>,
        #[command(flatten)]
        admin: Admin,
    },
    /// A rollout's state per device; without ROLLOUT, the artifacts and rollouts.
    Status {
        rollout: Option<String>,
        #[command(flatten)]
        admin: Admin,
    },
}

#[derive(Subcommand)]
enum LogAction {
    /// Print device log records (`time level device target: message fields`), and keep printing
    /// new ones with --follow.
    Tail {
        /// Only this device (`{workspace}:{device}`).
        #[arg(long)]
        device: Option<String>,
        /// Only records at least this severe: error, warn, info, debug or trace.
        #[arg(long)]
        level: Option<String>,
        #[arg(long)]
        follow: bool,
        /// Print each record as its JSON line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: Admin,
    },
}

#[derive(Subcommand)]
enum MessageAction {
    /// Print received messages, and keep printing new ones with --follow.
    Tail {
        #[arg(long)]
        device: Option<String>,
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        admin: Admin,
    },
}

/// Logs go to standard error (standard output is the banner and command results), coloured only
/// when standard error is a terminal.
fn init_logs() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
}

struct AdminClient {
    http: reqwest::Client,
    url: String,
    token: String,
    /// The TLS configuration (the emulator's CA; none trusted for plain HTTP).
    tls: rustls::ClientConfig,
}

impl AdminClient {
    fn new(a: &Admin) -> Result<Self, String> {
        let token = match &a.admin_token {
            Some(t) => t.clone(),
            None => std::fs::read_to_string(a.data_dir.join("admin-token"))
                .map(|t| t.trim().to_owned())
                .map_err(|e| format!("no admin token: pass --admin-token or --data-dir ({e})"))?,
        };
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
        // reqwest needs a TLS configuration even for a plain `http://` URL (it has no crypto
        // provider of its own here): one that trusts nothing then.
        let ca = if a.url.starts_with("https://") {
            std::fs::read_to_string(a.data_dir.join("ca.pem"))
                .map_err(|e| format!("cannot read the emulator's CA from {}: {e}", a.data_dir.display()))?
        } else {
            String::new()
        };
        let tls = spotflow_emulator::client_config(&ca).map_err(|e| e.to_string())?;
        builder = builder.tls_backend_preconfigured(tls.clone());
        let http = builder.build().map_err(|e| e.to_string())?;
        Ok(AdminClient { http, url: a.url.trim_end_matches('/').to_owned(), token, tls })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let mut req = self.http.request(method, format!("{}{path}", self.url)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        Self::answer(req).await
    }

    /// POSTs `body` as it is (an artifact).
    async fn post_bytes(&self, path: &str, body: Vec<u8>) -> Result<Value, String> {
        let req = self.http.post(format!("{}{path}", self.url)).bearer_auth(&self.token).body(body);
        Self::answer(req.timeout(Duration::from_secs(600))).await
    }

    async fn answer(req: reqwest::RequestBuilder) -> Result<Value, String> {
        let resp = req.send().await.map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!("{status}: {text}"));
        }
        Ok(if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) })
    }
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn run(cli: Cli) -> Result<(), String> {
    use reqwest::Method;
    match cli.command {
        Command::Serve {
            data_dir,
            bind,
            https_port,
            http_port,
            mqtts_port,
            mqtt_port,
            hub_host,
            auto_approve_secs,
            registration_token_lifetime_secs,
            connection_lifetime_secs,
            admin_token,
            record_traffic,
            http_header_timeout_secs,
            max_http_connections,
        } => {
            init_logs();
            // One descriptor per connection: as many as the OS allows this process.
            let files = spotflow_emulator::raise_open_file_limit();
            let mut config = spotflow_emulator::EmulatorConfig::default();
            config.data_dir = Some(data_dir.clone());
            config.bind = bind;
            config.https_port = Some(https_port);
            config.http_port = http_port;
            config.mqtts_port = Some(mqtts_port);
            config.mqtt_port = mqtt_port;
            config.hub_host = hub_host;
            config.auto_approve = auto_approve_secs.map(Duration::from_secs);
            config.registration_token_lifetime = Duration::from_secs(registration_token_lifetime_secs);
            config.connection_lifetime = Duration::from_secs(connection_lifetime_secs);
            config.admin_token = admin_token;
            config.record_traffic = record_traffic;
            config.http_header_timeout = Duration::from_secs(http_header_timeout_secs.max(1));
            config.max_http_connections = max_http_connections;
            let emulator =
                spotflow_emulator::Emulator::builder().config(config).start().await.map_err(|e| e.to_string())?;
            println!("spotflow-emulator is running");
            println!("  instance (HTTPS):  {}", emulator.https_url());
            if let Some(u) = emulator.http_url() {
                println!("  plain HTTP:        {u}");
            }
            if let Some(a) = emulator.mqtts_addr() {
                println!("  MQTT over TLS:     {}:{}", emulator.hub_host(), a.port());
            }
            if let Some(a) = emulator.mqtt_addr() {
                println!("  plain MQTT:        {a}");
            }
            println!("  MQTT over WSS:     {}", emulator.wss_url());
            if let Some(p) = emulator.ca_path() {
                println!(
                    "  CA certificate:    {} (trust it: SSL_CERT_FILE={} for the official SDK)",
                    p.display(),
                    p.display()
                );
            }
            println!("  admin token file:  {}", data_dir.join("admin-token").display());
            match files {
                Ok((before, after)) if after > before => {
                    println!("  open files:        {after} (raised from {before}): about that many connections")
                }
                Ok((_, after)) => println!(
                    "  open files:        {after} (the hard limit): about that many connections; raise it with \
                     `ulimit -Hn` as root or in /etc/security/limits.conf for more"
                ),
                Err(e) => println!("  open files:        {e}"),
            }
            println!("  dashboard:         {} (log in with the admin token)", emulator.dashboard_url());
            println!("  metrics:           {}/metrics (Prometheus text, admin token)", emulator.https_url());
            stop_requested().await?;
            println!("stopping");
            emulator.shutdown();
            Ok(())
        }
        Command::ProvisioningToken { action: TokenAction::Create { workspace, admin } } => {
            let body =
                workspace.map(|w| serde_json::json!({"workspaceId": w})).unwrap_or_else(|| serde_json::json!({}));
            print(&AdminClient::new(&admin)?.call(Method::POST, "/admin/provisioning-tokens", Some(body)).await?);
            Ok(())
        }
        Command::Operations { action } => {
            let v = match action {
                OperationAction::List { admin } => {
                    AdminClient::new(&admin)?.call(Method::GET, "/admin/operations", None).await?
                }
                OperationAction::Approve { id, device_id, admin } => {
                    let body = serde_json::json!({ "deviceId": device_id });
                    AdminClient::new(&admin)?
                        .call(Method::POST, &format!("/admin/operations/{id}/approve"), Some(body))
                        .await?
                }
                OperationAction::Cancel { id, admin } => {
                    AdminClient::new(&admin)?
                        .call(Method::POST, &format!("/admin/operations/{id}/cancel"), None)
                        .await?
                }
            };
            print(&v);
            Ok(())
        }
        Command::Devices { action: DeviceAction::List { admin } } => {
            print(&AdminClient::new(&admin)?.call(Method::GET, "/admin/devices", None).await?);
            Ok(())
        }
        Command::Tunnel { device, port, listen, admin } => tunnel(device, port, listen, &admin).await,
        Command::Method { device, method, payload, timeout, admin } => {
            let payload: Value = serde_json::from_str(&payload).map_err(|e| format!("invalid JSON payload: {e}"))?;
            let path = format!("/admin/devices/{device}/methods/{method}?timeoutSecs={timeout}");
            print(&AdminClient::new(&admin)?.call(Method::POST, &path, Some(payload)).await?);
            Ok(())
        }
        Command::Desired { action: DesiredAction::Set { device, json, admin } } => {
            let patch: Value = serde_json::from_str(&json).map_err(|e| format!("invalid JSON: {e}"))?;
            if !patch.is_object() {
                return Err("the desired properties patch must be a JSON object".into());
            }
            let path = format!("/admin/devices/{device}/desired");
            print(&AdminClient::new(&admin)?.call(Method::PATCH, &path, Some(patch)).await?);
            Ok(())
        }
        Command::Traffic { action: TrafficAction::Dump { admin } } => {
            let client = AdminClient::new(&admin)?;
            let mut from = 0usize;
            loop {
                let page = client.call(Method::GET, &format!("/admin/traffic?from={from}&limit=1000"), None).await?;
                if page.get("recording") == Some(&Value::Bool(false)) {
                    return Err("the emulator does not record traffic: start it with --record-traffic".into());
                }
                let records = page.get("records").and_then(Value::as_array).cloned().unwrap_or_default();
                for r in &records {
                    println!("{r}");
                }
                if records.len() < 1000 {
                    return Ok(());
                }
                from += records.len();
            }
        }
        Command::C2d { action: C2dAction::Send { device, payload, properties, ttl, admin } } => {
            let mut props = serde_json::Map::new();
            for p in properties {
                let (k, v) = p.split_once('=').ok_or_else(|| format!("--property {p:?} is not KEY=VALUE"))?;
                props.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            let body = serde_json::json!({"payload": payload, "properties": props, "ttlSeconds": ttl});
            let path = format!("/admin/devices/{device}/c2d");
            print(&AdminClient::new(&admin)?.call(Method::POST, &path, Some(body)).await?);
            Ok(())
        }
        Command::Update { action: UpdateAction::Publish { file, version, admin } } => {
            let bytes = std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let path = format!("/admin/updates/artifacts?version={}", spotflow_emulator::c2d::percent_encode(&version));
            print(&AdminClient::new(&admin)?.post_bytes(&path, bytes).await?);
            Ok(())
        }
        Command::Update {
            action: UpdateAction::Rollout { artifact, devices, if_busy, install_after, install_before, admin },
        } => {
            let body = serde_json::json!({
                "artifact": artifact, "devices": devices, "ifBusy": if_busy,
                "installAfter": install_after, "installBefore": install_before,
            });
            print(&AdminClient::new(&admin)?.call(Method::POST, "/admin/updates/rollouts", Some(body)).await?);
            Ok(())
        }
        Command::Update { action: UpdateAction::Status { rollout, admin } } => {
            let path = match rollout {
                Some(id) => format!("/admin/updates/rollouts/{id}"),
                None => "/admin/updates".to_owned(),
            };
            print(&AdminClient::new(&admin)?.call(Method::GET, &path, None).await?);
            Ok(())
        }
        Command::C2d { action: C2dAction::List { device, admin } } => {
            let path = format!("/admin/devices/{device}/c2d");
            print(&AdminClient::new(&admin)?.call(Method::GET, &path, None).await?);
            Ok(())
        }
        Command::Logs { action: LogAction::Tail { device, level, follow, json, admin } } => {
            let client = AdminClient::new(&admin)?;
            let mut after = 0i64;
            loop {
                let mut path = format!("/admin/logs?afterId={after}&limit=1000");
                for (key, value) in [("device", &device), ("level", &level)] {
                    if let Some(v) = value {
                        path.push_str(&format!("&{key}={}", spotflow_emulator::c2d::percent_encode(v)));
                    }
                }
                let page = client.call(Method::GET, &path, None).await?;
                let items = page["records"].as_array().cloned().unwrap_or_default();
                for entry in &items {
                    after = after.max(entry["id"].as_i64().unwrap_or(after));
                    if json {
                        println!("{}", entry["record"]);
                    } else {
                        println!("{}", format_log_line(entry));
                    }
                }
                if items.is_empty() {
                    if !follow {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        Command::Messages { action: MessageAction::Tail { device, follow, admin } } => {
            let client = AdminClient::new(&admin)?;
            let mut after = 0i64;
            loop {
                let mut path = format!("/admin/messages?afterId={after}&limit=1000");
                if let Some(d) = &device {
                    path.push_str(&format!("&device={d}"));
                }
                let batch = client.call(Method::GET, &path, None).await?;
                let items = batch.as_array().cloned().unwrap_or_default();
                for m in &items {
                    after = after.max(m.get("id").and_then(Value::as_i64).unwrap_or(after));
                    println!("{}", m);
                }
                // Without --follow: every page until the stored messages run out.
                if items.is_empty() {
                    if !follow {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// `time LEVEL device target: message {fields}`.
fn format_log_line(entry: &Value) -> String {
    let r = &entry["record"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut line = format!(
        "{} {:5} {} {}: {}",
        text(&r["time"]),
        text(&r["level"]),
        text(&entry["hubDeviceId"]),
        text(&r["target"]),
        text(&r["message"])
    );
    if let Some(fields) = r["fields"].as_object().filter(|f| !f.is_empty()) {
        line.push(' ');
        line.push_str(&Value::Object(fields.clone()).to_string());
    }
    line
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// `tunnel`: each local connection relayed through its own tunnel to the device's port.
async fn tunnel(device: String, port: u16, listen: std::net::SocketAddr, admin: &Admin) -> Result<(), String> {
    let client = AdminClient::new(admin)?;
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on {local}: each connection is a tunnel to port {port} of {device}");
    loop {
        let (mut tcp, peer) = listener.accept().await.map_err(|e| format!("accept failed: {e}"))?;
        let (url, token, tls, device) = (client.url.clone(), client.token.clone(), client.tls.clone(), device.clone());
        tokio::spawn(async move {
            match spotflow_emulator::tunnel_client::connect(&url, &token, tls, &device, port).await {
                Ok(mut tunnel) => match tokio::io::copy_bidirectional(&mut tcp, &mut tunnel).await {
                    Ok((up, down)) => eprintln!("{peer}: tunnel closed ({up} bytes to the device, {down} back)"),
                    Err(e) => eprintln!("{peer}: tunnel ended: {e}"),
                },
                Err(e) => eprintln!("{peer}: cannot open a tunnel: {e}"),
            }
        });
    }
}

/// Waits for Ctrl-C or `kill` (SIGTERM), to stop cleanly with everything written.
#[cfg(unix)]
async fn stop_requested() -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| format!("cannot watch for SIGTERM: {e}"))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}

/// Waits for Ctrl-C, Ctrl-Break, the console window closed or the system shutting down, to stop
/// cleanly with everything written.
#[cfg(windows)]
async fn stop_requested() -> Result<(), String> {
    use tokio::signal::windows::{ctrl_break, ctrl_close, ctrl_shutdown};
    let watch = |e: std::io::Error| format!("cannot watch for the console's events: {e}");
    let (mut brk, mut close, mut shutdown) =
        (ctrl_break().map_err(watch)?, ctrl_close().map_err(watch)?, ctrl_shutdown().map_err(watch)?);
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = brk.recv() => {}
        _ = close.recv() => {}
        _ = shutdown.recv() => {}
    }
    Ok(())
}
