//! `spotflow-emulator`: the Spotflow IoT Platform on one machine.
//!
//! It implements the server side of the device protocol: provisioning and registration over
//! HTTPS (and plain HTTP when asked), an MQTT 3.1.1 broker with device-twin semantics over TLS,
//! plain TCP and WebSocket, the file-upload API for large messages, a SQLite message store, and an
//! admin API. Embed it in tests:
//!
//! ```no_run
//! # async fn demo() -> Result<(), spotflow_emulator::EmulatorError> {
//! let emulator = spotflow_emulator::Emulator::builder().auto_approve(Some(std::time::Duration::ZERO)).start().await?;
//! let token = emulator.create_provisioning_token();
//! println!("instance: {}, CA: {} bytes", emulator.https_url(), emulator.ca_pem().len());
//! # let _ = token; Ok(()) }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod c2d;
#[cfg(feature = "testkit")]
mod conformance;
mod control;
mod db;
mod error;
mod http;
mod ingest;
mod live;
pub mod logs;
mod methods;
mod mqtt;
mod props;
mod sessions;
mod state;
mod tls;
pub mod traffic;
pub mod tunnel_client;
mod tunnels;
pub mod updates;
mod uploads;
mod wire;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

pub use c2d::{C2dRefusal, C2dStatus};
pub use db::{MessageQuery, StoredMessage, TWIN_HISTORY_KEPT};
pub use error::EmulatorError;

pub use methods::{MethodAnswer, MethodFailure};

pub use http::MAX_BLOB_BYTES;
pub use state::MAX_TWIN_SECTION_BYTES;
pub use state::{Operation, OperationState, Twin};
pub use tls::client_config;

use mqtt::Outbound;
use state::{Policy, TwinRefusal};

/// Raises this process's open-file limit (one descriptor per connection) to the most the OS
/// allows it without privileges (the hard limit). Returns the limit before and after; an error
/// says why it could not be raised. Windows has no such limit (sockets are bounded by memory):
/// there it reports none (`u64::MAX`).
#[cfg(unix)]
pub fn raise_open_file_limit() -> Result<(u64, u64), EmulatorError> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current.unwrap_or(u64::MAX);
    let Some(hard) = limit.maximum else {
        return Ok((before, before));
    };
    if before >= hard {
        return Ok((before, before));
    }
    setrlimit(Resource::Nofile, rustix::process::Rlimit { current: Some(hard), maximum: Some(hard) })
        .map_err(|e| EmulatorError::OpenFileLimit { from: before, to: hard, source: e.into() })?;
    Ok((before, hard))
}

/// Windows has no per-process limit of open sockets and files to raise (see the Unix version).
#[cfg(not(unix))]
pub fn raise_open_file_limit() -> Result<(u64, u64), EmulatorError> {
    Ok((u64::MAX, u64::MAX))
}

/// Default MQTT packet limit: 256 KiB of message plus room for the topic and header.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 256 * 1024 + 8 * 1024;

/// Configuration of an emulator.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EmulatorConfig {
    /// Where the database, the CA and the admin token live (`None`: in memory, gone at exit).
    pub data_dir: Option<PathBuf>,
    /// Address every listener binds to (loopback by default).
    pub bind: IpAddr,
    /// HTTPS port of the platform API, uploads, admin API and MQTT over WSS (`0`: any free port).
    pub https_port: Option<u16>,
    /// Plain HTTP port for the same routes (off unless set).
    pub http_port: Option<u16>,
    /// MQTT over TLS port (the official SDK always uses 8883).
    pub mqtts_port: Option<u16>,
    /// Plain MQTT port (off unless set).
    pub mqtt_port: Option<u16>,
    /// Host name given to devices as `iotHubHostName`.
    pub hub_host: String,
    /// Extra names for the server certificate.
    pub extra_hosts: Vec<String>,
    /// Workspace of provisioning tokens created without one.
    pub workspace_id: String,
    /// Lifetime of provisioning operations.
    pub operation_lifetime: Duration,
    /// Lifetime of registration tokens.
    pub registration_token_lifetime: Duration,
    /// Lifetime of connection credentials (SAS).
    pub connection_lifetime: Duration,
    /// Approve operations automatically this long after they start (`None`: manual approval).
    pub auto_approve: Option<Duration>,
    /// Admin API token (`None`: generated, and stored in the data directory).
    pub admin_token: Option<String>,
    /// Largest MQTT packet accepted.
    pub max_packet_size: usize,
    /// How long an MQTT connection that asked for no keep-alive (0) may stay idle (default 5 min).
    pub idle_timeout: Duration,
    /// How long an HTTP client may take to send a request's header, and how long an HTTP
    /// connection may stay idle between requests (default 10 s).
    pub http_header_timeout: Duration,
    /// How long one HTTP request may take, body included (default 120 s; answered 408).
    pub http_request_timeout: Duration,
    /// Most HTTP(S) connections open at once (`None`: half the process's file-descriptor limit,
    /// at most 1,024). Beyond it new connections are closed at once, with a log line.
    pub max_http_connections: Option<usize>,
    /// Record every HTTP exchange and MQTT packet of the device protocol (secrets masked; see
    /// [`Emulator::traffic`] and `GET /admin/traffic`). Off by default.
    pub record_traffic: bool,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            data_dir: None,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            https_port: Some(0),
            http_port: None,
            mqtts_port: Some(0),
            mqtt_port: None,
            hub_host: "localhost".into(),
            extra_hosts: Vec::new(),
            workspace_id: "ws-emulator".into(),
            operation_lifetime: Duration::from_secs(600),
            registration_token_lifetime: Duration::from_secs(30 * 86_400),
            connection_lifetime: Duration::from_secs(86_400),
            auto_approve: None,
            admin_token: None,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            record_traffic: false,
            idle_timeout: Duration::from_secs(300),
            http_header_timeout: Duration::from_secs(10),
            http_request_timeout: Duration::from_secs(120),
            max_http_connections: None,
        }
    }
}

/// Builds an [`Emulator`].
#[derive(Debug, Default)]
pub struct EmulatorBuilder {
    config: EmulatorConfig,
}

impl EmulatorBuilder {
    /// Keeps state in `dir` (created if missing).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.data_dir = Some(dir.into());
        self
    }
    /// Approve provisioning operations automatically after `delay` (`None`: manual).
    pub fn auto_approve(mut self, delay: Option<Duration>) -> Self {
        self.config.auto_approve = delay;
        self
    }
    /// Lifetimes of operations, registration tokens and connection credentials.
    pub fn lifetimes(mut self, operation: Duration, registration_token: Duration, connection: Duration) -> Self {
        self.config.operation_lifetime = operation;
        self.config.registration_token_lifetime = registration_token;
        self.config.connection_lifetime = connection;
        self
    }
    /// Also serve plain HTTP on this port (`0`: any).
    pub fn http_port(mut self, port: u16) -> Self {
        self.config.http_port = Some(port);
        self
    }
    /// Also serve plain MQTT on this port (`0`: any).
    pub fn mqtt_port(mut self, port: u16) -> Self {
        self.config.mqtt_port = Some(port);
        self
    }
    /// MQTT over TLS on this port.
    pub fn mqtts_port(mut self, port: u16) -> Self {
        self.config.mqtts_port = Some(port);
        self
    }
    /// HTTPS on this port.
    pub fn https_port(mut self, port: u16) -> Self {
        self.config.https_port = Some(port);
        self
    }
    /// Records the device protocol's traffic ([`Emulator::traffic`]).
    pub fn record_traffic(mut self, on: bool) -> Self {
        self.config.record_traffic = on;
        self
    }
    /// The admin token.
    pub fn admin_token(mut self, token: impl Into<String>) -> Self {
        self.config.admin_token = Some(token.into());
        self
    }
    /// Replaces the whole configuration.
    pub fn config(mut self, config: EmulatorConfig) -> Self {
        self.config = config;
        self
    }
    /// Starts every listener; the emulator runs until the handle is dropped or shut down.
    pub async fn start(self) -> Result<Emulator, EmulatorError> {
        Emulator::start(self.config).await
    }
}

/// A device as the admin API lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceInfo {
    /// Workspace id.
    pub workspace_id: String,
    /// Device id.
    pub device_id: String,
    /// `{workspace}:{device}`: its MQTT client id and its name in the admin API's paths.
    pub hub_device_id: String,
    /// Whether it is connected over MQTT now.
    pub connected: bool,
    /// Desired properties version.
    pub desired_version: u64,
    /// Reported properties version.
    pub reported_version: u64,
    /// Messages stored since the emulator started.
    pub messages: u64,
    /// Its last message, connection or disconnection since the emulator started (Unix ms).
    pub last_seen: Option<u64>,
}

/// MQTT credentials of a device created with [`Emulator::create_device`].
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceCredentials {
    /// `{workspace}:{device}`: the MQTT client id.
    pub hub_device_id: String,
    /// The MQTT user name.
    pub username: String,
    /// The SAS, used as MQTT password.
    pub password: String,
}

impl std::fmt::Debug for DeviceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCredentials").field("hub_device_id", &self.hub_device_id).finish_non_exhaustive()
    }
}

/// What the listeners share: each concern behind its own small type.
pub(crate) struct Inner {
    pub config: EmulatorConfig,
    pub admin_token: String,
    /// Tokens, operations, devices, twins and subscriptions (persisted).
    pub control: control::Control,
    /// The message store and the twin history.
    pub db: db::Db,
    /// What was stored since the start, for waiters and the metrics.
    pub ingest: Arc<ingest::Ingest>,
    pub sessions: sessions::Sessions,
    pub methods: methods::DirectMethods,
    /// Cloud-to-device messages waiting for their devices.
    pub c2d: c2d::C2dQueues,
    /// Started uploads and the bodies being received.
    pub uploads: uploads::Uploads,
    /// Software update artifacts and rollouts.
    pub updates: updates::Updates,
    pub(crate) tunnels: tunnels::Tunnels,
    https_addr: Mutex<Option<SocketAddr>>,
    pub traffic: traffic::Traffic,
    pub live: Arc<live::Live>,
}

impl Inner {
    /// See [`Emulator::send_c2d`].
    pub fn send_c2d(
        &self,
        hub_id: &str,
        properties: Vec<(String, String)>,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> Result<u64, C2dRefusal> {
        if !self.control.lock().devices.contains_key(hub_id) {
            return Err(C2dRefusal::UnknownDevice);
        }
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let id = self.c2d.enqueue(hub_id, properties, payload, ttl_ms)?;
        self.sessions.send(hub_id, mqtt::Outbound::C2dReady);
        Ok(id)
    }

    pub fn devices(&self) -> Vec<DeviceInfo> {
        let connected = self.sessions.connected();
        self.control
            .lock()
            .devices
            .iter()
            .map(|(id, d)| {
                let activity = self.live.device(id);
                DeviceInfo {
                    workspace_id: d.workspace_id.clone(),
                    device_id: d.device_id.clone(),
                    hub_device_id: id.clone(),
                    connected: connected.contains(id),
                    desired_version: d.twin.desired_version,
                    reported_version: d.twin.reported_version,
                    messages: activity.messages,
                    last_seen: (activity.last_seen > 0).then_some(activity.last_seen),
                }
            })
            .collect()
    }

    /// Applies a desired-properties patch and sends it to the device when it listens.
    pub fn update_desired(&self, hub_id: &str, mut patch: Map<String, Value>) -> Result<u64, TwinRefusal> {
        patch.remove("$version");
        let version = self.control.update_desired(hub_id, &patch)?;
        let topic = format!("$iothub/twin/PATCH/properties/desired/?$version={version}");
        if self.control.is_subscribed(hub_id, &topic) {
            patch.insert("$version".into(), Value::from(version));
            let publish = rumqttc::mqttbytes::v4::Publish::new(
                topic,
                rumqttc::mqttbytes::QoS::AtMostOnce,
                Value::Object(patch).to_string().into_bytes(),
            );
            self.sessions.send(hub_id, Outbound::Packet(rumqttc::mqttbytes::v4::Packet::Publish(publish)));
        }
        Ok(version)
    }

    /// Calls the direct method `method` of a connected device and waits (up to `timeout`) for
    /// its answer.
    pub async fn invoke_method(
        &self,
        hub_id: &str,
        method: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<MethodAnswer, MethodFailure> {
        self.methods.invoke(&self.control, &self.sessions, hub_id, method, payload, timeout).await
    }

    pub fn disconnect(&self, hub_id: &str) -> bool {
        self.sessions.send(hub_id, Outbound::Kick)
    }

    /// Registers a live session (closing an older one of the same device). Returns whether a
    /// session was present (subscriptions kept from an earlier connection).
    pub fn start_session(&self, hub_id: &str, tx: mpsc::UnboundedSender<Outbound>, clean: bool) -> bool {
        self.live.seen(hub_id);
        self.sessions.open(hub_id, tx);
        self.control.start_session(hub_id, clean)
    }

    pub fn end_session(&self, hub_id: &str, tx: &mpsc::UnboundedSender<Outbound>) {
        if self.sessions.close(hub_id, tx) {
            self.live.seen(hub_id);
        }
    }

    /// `host:port` of the upload endpoint, as `hostName` in file-upload answers.
    /// Starts a software update rollout: sets each device's desired `spotflowUpdate` to its
    /// signed manifest. Returns the rollout's id.
    pub fn start_rollout(&self, request: &updates::RolloutRequest) -> Result<String, updates::UpdateRefusal> {
        let known = |d: &str| self.control.lock().devices.contains_key(d);
        let (id, manifests) = self.updates.start_rollout(request, known, &format!("https://{}", self.upload_host()))?;
        for (device, manifest) in manifests {
            let mut patch = Map::new();
            patch.insert(spotflow_core::UPDATE_PROPERTY.into(), manifest);
            self.update_desired(&device, patch).map_err(|e| updates::UpdateRefusal::Invalid(format!("{e:?}")))?;
        }
        Ok(id)
    }

    /// A rollout's state per device.
    pub fn rollout(&self, id: &str) -> Option<updates::RolloutStatus> {
        self.updates
            .rollout(id, |d| self.control.twin(d).and_then(|t| updates::reported_update(&Value::Object(t.reported))))
    }

    pub fn upload_host(&self) -> String {
        let port = spotflow_core::lock(&self.https_addr).map_or(443, |a| a.port());
        format!("{}:{port}", self.config.hub_host)
    }
}

/// A running emulator. Dropping it stops every listener and connection.
pub struct Emulator {
    inner: Arc<Inner>,
    tls: tls::TlsMaterial,
    https_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    mqtts_addr: Option<SocketAddr>,
    mqtt_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("https_addr", &self.https_addr)
            .field("http_addr", &self.http_addr)
            .field("mqtts_addr", &self.mqtts_addr)
            .field("mqtt_addr", &self.mqtt_addr)
            .finish_non_exhaustive()
    }
}

async fn bind(ip: IpAddr, port: Option<u16>) -> Result<Option<TcpListener>, EmulatorError> {
    match port {
        None => Ok(None),
        Some(p) => TcpListener::bind((ip, p))
            .await
            .map(Some)
            .map_err(|source| EmulatorError::Bind { addr: format!("{ip}:{p}"), source }),
    }
}

impl Emulator {
    /// A builder with in-memory storage, HTTPS and MQTTS on free loopback ports, manual approval.
    pub fn builder() -> EmulatorBuilder {
        EmulatorBuilder::default()
    }

    async fn start(config: EmulatorConfig) -> Result<Emulator, EmulatorError> {
        if let Some(dir) = &config.data_dir {
            // Owner-only (0700), whatever the umask: it holds the secrets and the CA that
            // developers trust. An older, broader one is tightened with a warning.
            spotflow_core::private_fs::prepare_private_dir(dir)
                .map_err(|source| EmulatorError::Files { path: dir.to_path_buf(), source })?;
            // The database holds SAS keys and tokens: owner-only from the first byte (SQLite
            // gives its -wal and -shm files the database's mode).
            let db = dir.join("emulator.db");
            spotflow_core::private_fs::prepare_sqlite_database(&db)
                .map_err(|source| EmulatorError::Files { path: db.to_path_buf(), source })?;
        }
        let db_path = config.data_dir.as_ref().map_or(PathBuf::from(":memory:"), |d| d.join("emulator.db"));
        let live = Arc::new(live::Live::default());
        let (db, state) = db::Db::open(&db_path, live.clone())?;
        let mut hosts = config.extra_hosts.clone();
        hosts.push(config.hub_host.clone());
        let tls = tls::load_or_create(config.data_dir.as_deref(), &hosts)?;
        let admin_token = admin_token(&config)?;
        let policy = Policy {
            operation_lifetime: config.operation_lifetime,
            registration_token_lifetime: config.registration_token_lifetime,
            connection_lifetime: config.connection_lifetime,
            auto_approve: config.auto_approve,
        };
        let record_traffic = config.record_traffic;
        // Uploads being received are spooled beside the database (or in the system's temporary
        // directory when the emulator keeps everything in memory).
        let spool_dir = config.data_dir.clone().unwrap_or_else(std::env::temp_dir);
        let https = bind(config.bind, config.https_port).await?;
        let http = bind(config.bind, config.http_port).await?;
        let mqtts = bind(config.bind, config.mqtts_port).await?;
        let mqtt = bind(config.bind, config.mqtt_port).await?;
        let addr = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
        let (https_addr, http_addr, mqtts_addr, mqtt_addr) = (addr(&https), addr(&http), addr(&mqtts), addr(&mqtt));
        let inner = Arc::new(Inner {
            config,
            admin_token,
            control: control::Control::new(policy, state, db.clone()),
            ingest: Arc::new(ingest::Ingest::new(db.clone())),
            db,
            sessions: sessions::Sessions::default(),
            methods: methods::DirectMethods::default(),
            c2d: c2d::C2dQueues::default(),
            updates: updates::Updates::default(),
            uploads: uploads::Uploads::new(spool_dir),
            tunnels: tunnels::Tunnels::default(),
            https_addr: Mutex::new(https_addr),
            traffic: traffic::Traffic::new(record_traffic),
            live,
        });
        let (shutdown, _) = watch::channel(false);
        let router = http::router(inner.clone());
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config.clone());
        let limits = Arc::new(HttpLimits::new(&inner.config));
        if let Some(listener) = https {
            let serve =
                serve_http(listener, Some(acceptor.clone()), router.clone(), limits.clone(), shutdown.subscribe());
            tokio::spawn(serve);
        }
        if let Some(listener) = http {
            tokio::spawn(serve_http(listener, None, router.clone(), limits.clone(), shutdown.subscribe()));
        }
        if let Some(listener) = mqtts {
            tokio::spawn(accept_mqtt(listener, Some(acceptor), inner.clone(), shutdown.subscribe()));
        }
        if let Some(listener) = mqtt {
            tokio::spawn(accept_mqtt(listener, None, inner.clone(), shutdown.subscribe()));
        }
        info!(?https_addr, ?http_addr, ?mqtts_addr, ?mqtt_addr, "spotflow-emulator started");
        Ok(Emulator { inner, tls, https_addr, http_addr, mqtts_addr, mqtt_addr, shutdown })
    }

    /// `https://localhost:PORT`, the instance to give devices.
    pub fn https_url(&self) -> String {
        self.https_addr.map(|a| format!("https://{}:{}", self.inner.config.hub_host, a.port())).unwrap_or_default()
    }
    /// `http://127.0.0.1:PORT` when plain HTTP is on.
    pub fn http_url(&self) -> Option<String> {
        self.http_addr.map(|a| format!("http://{a}"))
    }
    /// `https://localhost:PORT/dashboard`: the web dashboard (it asks for the admin token).
    pub fn dashboard_url(&self) -> String {
        format!("{}/dashboard", self.https_url())
    }
    /// `wss://localhost:PORT/$iothub/websocket`.
    pub fn wss_url(&self) -> String {
        format!("{}/$iothub/websocket", self.https_url().replacen("https", "wss", 1))
    }
    /// HTTPS listener address.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }
    /// Plain HTTP listener address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }
    /// MQTT over TLS listener address.
    pub fn mqtts_addr(&self) -> Option<SocketAddr> {
        self.mqtts_addr
    }
    /// Plain MQTT listener address.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt_addr
    }
    /// The hub host name devices get.
    pub fn hub_host(&self) -> &str {
        &self.inner.config.hub_host
    }
    /// The CA certificate (PEM) to trust.
    pub fn ca_pem(&self) -> &str {
        &self.tls.ca_pem
    }
    /// A TLS client configuration trusting the emulator's CA.
    pub fn client_tls_config(&self) -> rustls::ClientConfig {
        tls::client_config(&self.tls.ca_pem).expect("the emulator's own CA certificate parses")
    }
    /// Where the CA certificate is stored (with a data directory).
    pub fn ca_path(&self) -> Option<&Path> {
        self.tls.ca_path.as_deref()
    }
    /// The admin API token.
    pub fn admin_token(&self) -> &str {
        &self.inner.admin_token
    }
    /// Creates a provisioning token in the default workspace.
    pub fn create_provisioning_token(&self) -> String {
        self.inner.control.create_provisioning_token(&self.inner.config.workspace_id.clone())
    }
    /// Creates a provisioning token in `workspace_id`.
    pub fn create_provisioning_token_in(&self, workspace_id: &str) -> String {
        self.inner.control.create_provisioning_token(workspace_id)
    }
    /// Serves one MQTT connection on `stream`, any byte stream (an in-memory pipe of a test, a
    /// fuzzer's input), as the broker serves its TCP, TLS and WebSocket connections; returns when
    /// the connection ends. `peer` names it in logs.
    pub async fn serve_mqtt<S>(&self, stream: S, peer: &str)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        mqtt::run_session(self.inner.clone(), stream, peer.to_owned()).await
    }

    /// Serves one HTTP/1.1 connection on `stream`, any byte stream, as the HTTPS and HTTP
    /// listeners serve theirs after TLS: the platform API, uploads, the admin API and MQTT over
    /// WebSocket. Returns when the connection ends; a WebSocket it was upgraded to runs on in a
    /// task of its own until its session ends (the stream is dropped then).
    pub async fn serve_http<S>(&self, stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let mut stop = self.shutdown.subscribe();
        let router = http::router(self.inner.clone());
        serve_http_connection(stream, router, self.inner.config.http_header_timeout, &mut stop).await
    }

    /// Registers a device directly (as if it had been provisioned and approved) and returns its
    /// MQTT credentials: for tests and benchmarks that speak raw MQTT.
    pub fn create_device(&self, device_id: &str) -> Result<DeviceCredentials, EmulatorError> {
        let inner = &self.inner;
        let ws = inner.config.workspace_id.clone();
        let hub = inner.config.hub_host.clone();
        inner.control.with_state(|s, policy| {
            let token = s.create_provisioning_token(&ws);
            let op = s
                .init_operation(&token, Some(device_id.to_owned()), policy)
                .ok_or(EmulatorError::Registration("the provisioning token was refused"))?;
            s.approve(&op.id, None)?;
            let state::CompleteOutcome::Approved { registration_token, .. } = s.complete(&token, &op.id, policy) else {
                return Err(EmulatorError::Registration("the operation was not approved"));
            };
            let (info, sas, _) = s
                .register(&registration_token, &hub, policy)
                .ok_or(EmulatorError::Registration("the registration was refused"))?;
            let hub_device_id = state::hub_device_id(&info.workspace_id, &info.device_id);
            Ok(DeviceCredentials {
                username: format!("{hub}/{hub_device_id}/?api-version=2018-06-30"),
                hub_device_id,
                password: sas,
            })
        })
    }
    /// Every provisioning operation.
    pub fn operations(&self) -> Vec<Operation> {
        self.inner.control.operations()
    }
    /// Approves an operation, optionally overriding the device id. Returns the device id.
    pub fn approve(&self, operation_id: &str, device_id: Option<&str>) -> Result<String, EmulatorError> {
        self.inner.control.approve(operation_id, device_id)
    }
    /// Cancels a pending operation.
    pub fn cancel(&self, operation_id: &str) -> bool {
        self.inner.control.cancel(operation_id)
    }
    /// Registered devices.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.inner.devices()
    }
    /// The twin of `{workspace}:{device}`.
    pub fn twin(&self, hub_device_id: &str) -> Option<Twin> {
        self.inner.control.twin(hub_device_id)
    }
    /// Merges a patch into a device's desired properties and pushes it. Returns the new version.
    pub fn update_desired(&self, hub_device_id: &str, patch: Map<String, Value>) -> Option<u64> {
        self.inner.update_desired(hub_device_id, patch).ok()
    }
    /// Closes a device's MQTT connection. Returns whether it was connected.
    pub fn disconnect(&self, hub_device_id: &str) -> bool {
        self.inner.disconnect(hub_device_id)
    }

    /// Revokes the device's connection credentials (every SAS issued to it, as a key rotation on
    /// the platform does) and closes its connection: the broker refuses its next connection
    /// with them (`NotAuthorized`) until it registers again with its registration token. Returns
    /// how many SAS were revoked.
    pub fn revoke_connection_credentials(&self, hub_device_id: &str) -> usize {
        let revoked = self.inner.control.revoke_connection_credentials(hub_device_id);
        self.inner.disconnect(hub_device_id);
        revoked
    }
    /// Opens a remote-access tunnel to `port` of the device (see [`tunnel_client`]).
    pub async fn open_tunnel(
        &self,
        hub_device_id: &str,
        port: u16,
    ) -> Result<tunnel_client::TunnelStream, EmulatorError> {
        tunnel_client::connect(&self.https_url(), self.admin_token(), self.client_tls_config(), hub_device_id, port)
            .await
            .map_err(EmulatorError::from)
    }
    /// Calls the direct method `method` of a connected device (one that subscribed to direct
    /// methods) with `payload`, and waits up to `timeout` for its answer.
    pub async fn invoke_method(
        &self,
        hub_device_id: &str,
        method: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<MethodAnswer, MethodFailure> {
        self.inner.invoke_method(hub_device_id, method, payload, timeout).await
    }
    /// Stored messages.
    pub async fn messages(&self, query: MessageQuery) -> Vec<StoredMessage> {
        self.inner.db.messages(query).await
    }
    /// Queues a cloud-to-device message for `hub_device_id` (sent at once if it is connected and
    /// subscribed, else when it is), alive for `ttl`; returns its id (its `$.mid` property).
    pub fn send_c2d(
        &self,
        hub_device_id: &str,
        properties: Vec<(String, String)>,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> Result<u64, C2dRefusal> {
        self.inner.send_c2d(hub_device_id, properties, payload, ttl)
    }
    /// A device's cloud-to-device messages and their states: delivered and expired (the last
    /// 1,000), in flight, queued.
    pub fn c2d_messages(&self, hub_device_id: &str) -> Vec<C2dStatus> {
        self.inner.c2d.list(hub_device_id)
    }
    /// Publishes a software update artifact (see [`updates`]).
    pub fn publish_artifact(
        &self,
        bytes: bytes::Bytes,
        version: &str,
    ) -> Result<updates::ArtifactInfo, updates::UpdateRefusal> {
        self.inner.updates.publish(bytes, version)
    }
    /// Sets the faults of an artifact's downloads (tests).
    pub fn set_artifact_faults(
        &self,
        artifact: &str,
        faults: updates::ArtifactFaults,
    ) -> Result<(), updates::UpdateRefusal> {
        self.inner.updates.set_faults(artifact, faults)
    }
    /// Starts a rollout (see [`updates::RolloutRequest`]); returns its id.
    pub fn start_rollout(&self, request: &updates::RolloutRequest) -> Result<String, updates::UpdateRefusal> {
        self.inner.start_rollout(request)
    }
    /// A rollout's state per device.
    pub fn rollout(&self, id: &str) -> Option<updates::RolloutStatus> {
        self.inner.rollout(id)
    }
    /// The Ed25519 public key the emulator signs update manifests with (hexadecimal).
    pub fn update_public_key(&self) -> String {
        self.inner.updates.public_key_hex()
    }
    /// Stored device log records (the records of the `device-logs` stream, each once).
    pub async fn logs(&self, query: logs::LogQuery) -> Vec<logs::LogEntry> {
        self.inner.db.logs(query).await
    }
    /// Device log records that arrived again (moved twice by the device) and were not stored
    /// again, this run.
    pub fn log_duplicates(&self) -> u64 {
        self.inner.db.log_duplicates()
    }
    /// Number of stored messages.
    pub async fn message_count(&self) -> u64 {
        self.inner.db.message_count().await
    }
    /// Redeliveries recognised by their message key (`$.mid`) and not stored again, this run.
    pub fn duplicates(&self) -> u64 {
        self.inner.ingest.duplicates()
    }
    /// The number of messages stored by this emulator run, to watch (a benchmark stamps each
    /// change to measure when messages were stored and acknowledged).
    pub fn stored_messages(&self) -> watch::Receiver<u64> {
        self.inner.ingest.stored()
    }
    /// Waits until at least `n` messages were stored by this emulator run, for at most `timeout`.
    pub async fn wait_for_messages(&self, n: u64, timeout: Duration) -> bool {
        let mut rx = self.inner.ingest.stored();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await.is_ok_and(|r| r.is_ok())
    }
    /// The recorded traffic, in order (empty unless recording was turned on with
    /// [`EmulatorBuilder::record_traffic`]): JSON objects with `seq`, `proto` (`http` or `mqtt`)
    /// and the exchange's fields, as described in [`traffic`].
    pub fn traffic(&self) -> Vec<Value> {
        self.inner.traffic.records(0, usize::MAX).0
    }

    /// Forgets the recorded traffic.
    pub fn clear_traffic(&self) {
        self.inner.traffic.clear();
    }

    /// Stops every listener and connection, and waits (briefly) until the state is on disk.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        self.inner.db.sync(Duration::from_secs(5));
        self.inner.sessions.kick_all();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn admin_token(config: &EmulatorConfig) -> Result<String, EmulatorError> {
    if let Some(t) = &config.admin_token {
        return Ok(t.clone());
    }
    let generated = format!("admin-{}", state::random_hex(16));
    let Some(dir) = &config.data_dir else { return Ok(generated) };
    let path = dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => {
            // Written world-readable by earlier versions: tightened (with a warning).
            spotflow_core::private_fs::prepare_private_file(&path)
                .map_err(|source| EmulatorError::Files { path: path.to_path_buf(), source })?;
            Ok(t.trim().to_owned())
        }
        _ => {
            spotflow_core::private_fs::write_private_file(&path, generated.as_bytes())
                .map_err(|source| EmulatorError::Files { path: path.to_path_buf(), source })?;
            Ok(generated)
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Accepts connections (TCP_NODELAY set) and hands each to `serve` on its own task, until stopped.
async fn accept_loop<F, Fut>(listener: TcpListener, mut stop: watch::Receiver<bool>, serve: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => return,
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(serve(tcp, peer));
    }
}

/// Completes a TLS handshake within 10 s.
async fn tls_accept(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

async fn accept_mqtt(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    inner: Arc<Inner>,
    stop: watch::Receiver<bool>,
) {
    accept_loop(listener, stop, move |tcp, peer| {
        let (inner, tls) = (inner.clone(), tls.clone());
        async move {
            match tls {
                Some(acceptor) => {
                    if let Some(stream) = tls_accept(acceptor, tcp, peer).await {
                        mqtt::run_session(inner, stream, peer.to_string()).await;
                    }
                }
                None => mqtt::run_session(inner, tcp, peer.to_string()).await,
            }
        }
    })
    .await;
}

/// The bounds of the HTTP(S) listeners (see [`EmulatorConfig::max_http_connections`]).
struct HttpLimits {
    permits: Arc<tokio::sync::Semaphore>,
    max: usize,
    header_timeout: Duration,
    /// When the limit was last logged (ms since the Unix epoch), to log it once per 10 s.
    last_logged: std::sync::atomic::AtomicU64,
}

impl HttpLimits {
    fn new(config: &EmulatorConfig) -> Self {
        let max = config.max_http_connections.unwrap_or_else(default_max_http_connections).max(1);
        HttpLimits {
            permits: Arc::new(tokio::sync::Semaphore::new(max)),
            max,
            header_timeout: config.http_header_timeout,
            last_logged: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn refused(&self, peer: SocketAddr) {
        let now = state::now_ms();
        let last = self.last_logged.load(std::sync::atomic::Ordering::Relaxed);
        if now.saturating_sub(last) >= 10_000
            && self
                .last_logged
                .compare_exchange(last, now, std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                %peer,
                max = self.max,
                "HTTP connection limit reached: new connections are closed until some end \
                 (idle ones end after the header timeout); logged at most every 10 s"
            );
        }
    }
}

/// Half the soft limit of open files (read from `/proc/self/limits`), between 16 and 1,024, so
/// that HTTP clients can never take the descriptors MQTT and the database need.
fn default_max_http_connections() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits").ok().and_then(|limits| {
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line.split_whitespace().nth(3)?.parse::<usize>().ok()
    });
    soft.map_or(1024, |s| (s / 2).clamp(16, 1024))
}

/// Serves the HTTP routes on `listener` (TLS with `tls`): at most `limits.max` connections, each
/// closed when a request header takes longer than the header timeout or it idles that long.
async fn serve_http(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: axum::Router,
    limits: Arc<HttpLimits>,
    stop: watch::Receiver<bool>,
) {
    let stop_connections = stop.clone();
    accept_loop(listener, stop, move |tcp, peer| {
        let (router, limits, tls, mut stop) = (router.clone(), limits.clone(), tls.clone(), stop_connections.clone());
        async move {
            let Ok(_permit) = limits.permits.clone().try_acquire_owned() else {
                limits.refused(peer);
                return;
            };
            match tls {
                Some(acceptor) => {
                    if let Some(stream) = tls_accept(acceptor, tcp, peer).await {
                        serve_http_connection(stream, router, limits.header_timeout, &mut stop).await;
                    }
                }
                None => serve_http_connection(tcp, router, limits.header_timeout, &mut stop).await,
            }
        }
    })
    .await;
}

async fn serve_http_connection<I>(
    io: I,
    router: axum::Router,
    header_timeout: Duration,
    stop: &mut watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(router);
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        () = stopped(stop) => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
        }
    }
}
