//! What the emulator's integration tests share: the emulator in-process or as a process, raw
//! HTTPS and MQTT clients, a registered device.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::{json, Value};
use spotflow_emulator::Emulator;

pub const WAIT: Duration = Duration::from_secs(20);

/// The emulator binary as a process (`serve` on free ports, plain HTTP and MQTT on), optionally
/// under a wrapper command (e.g. `prlimit`), its standard output (banner) and error (log)
/// collected.
pub struct EmulatorProcess {
    pub child: std::process::Child,
    log: String,
    chunks: std::sync::mpsc::Receiver<String>,
    /// Holds the data directory, [`EmulatorProcess::data_dir`].
    dir: tempfile::TempDir,
}

impl EmulatorProcess {
    pub fn spawn(wrapper: &[&str], args: &[&str]) -> Self {
        Self::spawn_in(tempfile::tempdir().unwrap(), wrapper, args)
    }

    /// The same, with the data directory `data` in `dir` (created by the emulator if missing).
    pub fn spawn_in(dir: tempfile::TempDir, wrapper: &[&str], args: &[&str]) -> Self {
        use std::io::Read;
        let binary = env!("CARGO_BIN_EXE_spotflow-emulator");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = std::process::Command::new(program);
                c.args(rest).arg(binary);
                c
            }
            None => std::process::Command::new(binary),
        };
        let mut child = command
            .args(["serve", "--https-port", "0", "--http-port", "0", "--mqtts-port", "0", "--mqtt-port", "0"])
            .args(args)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, chunks) = std::sync::mpsc::channel();
        let streams: [Box<dyn std::io::Read + Send>; 2] =
            [Box::new(child.stdout.take().unwrap()), Box::new(child.stderr.take().unwrap())];
        for mut stream in streams {
            let tx = tx.clone();
            // Ends at EOF, i.e. when the process is killed at the latest.
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || tx.send(String::from_utf8_lossy(&buf[..n]).into_owned()).is_err() {
                        break;
                    }
                }
            });
        }
        let mut process = EmulatorProcess { child, log: String::new(), chunks, dir };
        process.wait_log("admin token file:");
        process
    }

    /// Waits (at most [`WAIT`]) until the output (banner and log) contains `needle`; returns the
    /// output so far.
    pub fn wait_log(&mut self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + WAIT;
        while !self.log.contains(needle) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(chunk) => self.log.push_str(&chunk),
                Err(_) => panic!("{needle:?} not in the emulator's output within {WAIT:?}:\n{}", self.log),
            }
        }
        self.log.clone()
    }

    /// The value printed after `label` in the banner.
    pub fn banner_value(&self, label: &str) -> String {
        let line = self.log.lines().find(|l| l.contains(label)).unwrap_or_else(|| panic!("no {label} in the banner"));
        line.split(label).nth(1).unwrap().trim().to_owned()
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("admin-token")).unwrap().trim().to_owned()
    }

    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// The output (banner and log) so far.
    pub fn output(&mut self) -> String {
        while let Ok(chunk) = self.chunks.try_recv() {
            self.log.push_str(&chunk);
        }
        self.log.clone()
    }

    /// The process's resident memory (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/PID/status");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Kills the process; its directory, to start another in.
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn emulator() -> Emulator {
    Emulator::builder().http_port(0).mqtt_port(0).start().await.expect("emulator starts")
}

pub fn https(emu: &Emulator) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(emu.client_tls_config())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

pub async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    auth: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut req = client.request(method, url).header("content-type", "application/json").body(body.to_owned());
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub struct Registered {
    pub hub_id: String,
    pub sas: String,
    pub hub_host: String,
    pub registration_token: String,
    pub provisioning_token: String,
}

/// Provisions and registers `device` over HTTPS, approving through the embedding API.
pub async fn register(emu: &Emulator, device: &str) -> Registered {
    let http = https(emu);
    let base = emu.https_url();
    let pt = emu.create_provisioning_token();
    let auth = format!("DeviceToken {pt}");
    let (s, op) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/provisioning-operations/init"),
        Some(&auth),
        &json!({"deviceId": device}).to_string(),
    )
    .await;
    assert_eq!(s, 200, "{op}");
    let id = op["provisioningOperationId"].as_str().unwrap().to_owned();
    emu.approve(&id, None).unwrap();
    let (s, done) = call(
        &http,
        reqwest::Method::PUT,
        format!("{base}/provisioning-operations/complete"),
        Some(&auth),
        &json!({"provisioningOperationId": id}).to_string(),
    )
    .await;
    assert_eq!(s, 200, "{done}");
    let rt = done["registrationToken"].as_str().unwrap().to_owned();
    let (s, reg) = call(
        &http,
        reqwest::Method::PUT,
        format!("{base}/devices/register"),
        Some(&format!("DeviceToken {rt}")),
        r#"{"connectionStringType":"SharedAccessSignature"}"#,
    )
    .await;
    assert_eq!(s, 200, "{reg}");
    let cs = reg["connectionString"].as_str().unwrap();
    let sas = cs.split(';').find_map(|p| p.strip_prefix("SharedAccessSignature=")).unwrap().to_owned();
    let hub_id = cs.split(';').find_map(|p| p.strip_prefix("DeviceId=")).unwrap().to_owned();
    Registered {
        hub_id,
        sas,
        hub_host: reg["iotHubHostName"].as_str().unwrap().to_owned(),
        registration_token: rt,
        provisioning_token: pt,
    }
}

pub fn mqtt_options(emu: &Emulator, dev: &Registered, tls: bool) -> MqttOptions {
    let port = if tls { emu.mqtts_addr().unwrap().port() } else { emu.mqtt_addr().unwrap().port() };
    let mut o = MqttOptions::new(dev.hub_id.clone(), "localhost", port);
    o.set_credentials(format!("{}/{}/?api-version=2018-06-30", dev.hub_host, dev.hub_id), dev.sas.clone());
    o.set_clean_session(false);
    o.set_inflight(100);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(512 * 1024, 512 * 1024);
    if tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(emu.client_tls_config()))));
    }
    o
}

/// Polls the event loop until `pick` returns something (bounded by WAIT).
pub async fn until<T>(ev: &mut EventLoop, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            match ev.poll().await {
                Ok(e) => {
                    if let Some(t) = pick(&e) {
                        return t;
                    }
                }
                Err(e) => panic!("connection error: {e:?}"),
            }
        }
    })
    .await
    .expect("event in time")
}

/// Connects `dev` and publishes a message linking the blob `blob`; returns once acknowledged.
pub async fn publish_link(emu: &Emulator, dev: &Registered, blob: &str) {
    let (client, mut ev) = AsyncClient::new(mqtt_options(emu, dev, true), 10);
    until(&mut ev, |e| matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())).await;
    let topic = format!("devices/{}/messages/events/stream-name=files&has-externalized-payload=true", dev.hub_id);
    client.publish(topic, QoS::AtLeastOnce, false, json!({"link": blob}).to_string().into_bytes()).await.unwrap();
    until(&mut ev, |e| matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())).await;
}
