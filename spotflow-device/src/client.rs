//! The asynchronous device client.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use spotflow_core::{
    validate_name, Backoff, Compression, ContentEncoding, DesiredState, DesiredTracker, Error, MessageKind,
    OutgoingMessage, OutgoingQueue, PlatformApi, ProvisioningOperation, QueuedMessage, ReportedTracker, Result, Secret,
    Store, StreamTarget, Transport,
};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tracing::{info, warn};

use crate::provisioning::{
    obtain_identity, print_provisioning_operation, CredentialKeeper, DisplayCallback, StartRequest,
};
use crate::worker::{Command, Worker};
use crate::{ClientOptions, DesiredProperties, Instance, NetworkOptions};

/// Called with the desired properties after start and on every newer version, on a dedicated
/// thread (it may call back into the client, including the blocking API).
pub type DesiredPropertiesCallback = Arc<dyn Fn(DesiredProperties) + Send + Sync>;

/// State shared by the API handles and the worker.
pub(crate) struct Shared {
    pub workspace_id: String,
    pub device_id: String,
    pending: AtomicI64,
    queued_bytes: AtomicI64,
    last_appended: AtomicU64,
    pub appended: Notify,
    desired: Mutex<Option<DesiredState>>,
    /// Whether a reported update is pending, and the status that rejected it.
    reported: watch::Sender<(bool, Option<u16>)>,
    connected: AtomicBool,
    /// The latest appended messages, so that the worker need not read back from the store what
    /// was just written to it (a read competes with the next append for the store).
    recent: Mutex<RecentAppends>,
    /// Messages the platform refused for good in this run.
    refused_total: AtomicU64,
    refused: Mutex<RefusedLog>,
}

/// Refused messages not yet reported by a wait for sent messages (bounded; beyond the bound only
/// counted).
#[derive(Default)]
struct RefusedLog {
    entries: std::collections::BTreeMap<u64, String>,
    /// Refusals beyond the bound: reported by the next wait, whatever it covers.
    overflow: u64,
}

/// Most refusals remembered with their reason until a wait reports them.
const REFUSED_REMEMBERED: usize = 1000;

/// Messages just appended, in sequence order, bounded in count and bytes.
#[derive(Default)]
pub(crate) struct RecentAppends {
    messages: std::collections::VecDeque<QueuedMessage>,
    bytes: usize,
}

/// Bounds of [`RecentAppends`]: beyond them the oldest entries go (the worker then reads them
/// from the store).
const RECENT_MAX_MESSAGES: usize = 4096;
const RECENT_MAX_BYTES: usize = 4 * 1024 * 1024;

impl RecentAppends {
    fn remember(&mut self, message: QueuedMessage) {
        let size = message.message.payload.len();
        // Concurrent appends may finish out of order: keep the deque sorted.
        let at = self.messages.iter().rposition(|m| m.seq < message.seq).map_or(0, |i| i + 1);
        self.messages.insert(at, message);
        self.bytes += size;
        while self.messages.len() > RECENT_MAX_MESSAGES || self.bytes > RECENT_MAX_BYTES {
            let Some(old) = self.messages.pop_front() else { break };
            self.bytes -= old.message.payload.len();
        }
    }

    /// The messages after `after` through `through` (at most `limit`), if all of them are still
    /// remembered; `None` when the store must be read.
    fn take(&mut self, after: Option<u64>, through: u64, limit: usize) -> Option<Vec<QueuedMessage>> {
        let after = after.unwrap_or(0);
        while self.messages.front().is_some_and(|m| m.seq <= after) {
            if let Some(old) = self.messages.pop_front() {
                self.bytes -= old.message.payload.len();
            }
        }
        let wanted = usize::try_from(through.checked_sub(after)?).ok()?.min(limit);
        if wanted == 0 || self.messages.len() < wanted {
            return None;
        }
        let contiguous = self.messages.iter().take(wanted).enumerate().all(|(i, m)| m.seq == after + 1 + i as u64);
        contiguous.then(|| self.messages.iter().take(wanted).cloned().collect())
    }
}

impl Shared {
    fn remember_appended(&self, message: QueuedMessage) {
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).remember(message);
    }

    /// See [`RecentAppends::take`].
    pub fn take_recent(&self, after: Option<u64>, through: u64, limit: usize) -> Option<Vec<QueuedMessage>> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).take(after, through, limit)
    }

    /// Forgets every remembered message (their store rows were removed without being sent).
    pub fn forget_recent(&self) {
        *self.recent.lock().unwrap_or_else(|p| p.into_inner()) = RecentAppends::default();
    }

    pub fn last_appended(&self) -> u64 {
        self.last_appended.load(Ordering::Acquire)
    }

    fn message_appended(&self, seq: u64, size: u64) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.queued_bytes.fetch_add(size as i64, Ordering::AcqRel);
        self.last_appended.fetch_max(seq, Ordering::AcqRel);
        self.appended.notify_one();
    }

    /// The platform refused message `seq` for good (it has left the queue).
    pub fn message_refused(&self, seq: u64, reason: String) {
        self.refused_total.fetch_add(1, Ordering::AcqRel);
        let mut log = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        log.entries.insert(seq, reason);
        if log.entries.len() > REFUSED_REMEMBERED {
            log.entries.pop_first();
            log.overflow += 1;
        }
    }

    /// Takes the refusals of messages up to `through` not reported yet: their count and the last
    /// reason.
    fn take_refused(&self, through: u64) -> Option<(u64, String)> {
        let mut log = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        let later = log.entries.split_off(&through.saturating_add(1));
        let taken = std::mem::replace(&mut log.entries, later);
        let count = taken.len() as u64 + std::mem::take(&mut log.overflow);
        let last = taken.into_values().next_back().unwrap_or_else(|| "(reason not kept)".to_owned());
        (count > 0).then_some((count, last))
    }

    /// A message left the queue (acknowledged, or dropped to make room).
    pub fn message_acknowledged(&self, size: u64) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
        self.queued_bytes.fetch_sub(size as i64, Ordering::AcqRel);
    }

    fn queued_bytes(&self) -> u64 {
        self.queued_bytes.load(Ordering::Acquire).max(0) as u64
    }

    pub fn set_desired(&self, desired: DesiredState) {
        *self.desired.lock().unwrap_or_else(|p| p.into_inner()) = Some(desired);
    }

    pub fn set_reported_status(&self, pending: bool, rejection: Option<u16>) {
        self.reported.send_if_modified(|v| {
            let changed = *v != (pending, rejection);
            *v = (pending, rejection);
            changed
        });
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Release);
    }
}

struct ClientInner {
    shared: Arc<Shared>,
    store: Arc<dyn Store>,
    commands: mpsc::Sender<Command>,
    acked: watch::Receiver<u64>,
    options: ClientOptions,
    closed: AtomicBool,
}

/// A device connected to the platform. Create it with [`DeviceClient::builder`].
///
/// Every outgoing message is persisted in the store before `enqueue_message` returns and sent by a
/// background task, so the application keeps working while the connection comes and goes. The
/// client is cheap to clone and safe to use from many tasks at once.
#[derive(Clone)]
pub struct DeviceClient {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for DeviceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceClient")
            .field("workspace_id", &self.inner.shared.workspace_id)
            .field("device_id", &self.inner.shared.device_id)
            .finish_non_exhaustive()
    }
}

/// Configures and starts a [`DeviceClient`].
pub struct DeviceClientBuilder {
    device_id: Option<String>,
    provisioning_token: Secret,
    db: PathBuf,
    instance: Option<String>,
    display: Option<DisplayCallback>,
    desired_callback: Option<DesiredPropertiesCallback>,
    store: Option<Arc<dyn Store>>,
    transport: Option<Arc<dyn Transport>>,
    platform_api: Option<Arc<dyn PlatformApi>>,
    options: ClientOptions,
    network: NetworkOptions,
}

impl std::fmt::Debug for DeviceClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceClientBuilder")
            .field("device_id", &self.device_id)
            .field("provisioning_token", &self.provisioning_token)
            .field("db", &self.db)
            .field("instance", &self.instance)
            .field("store", &self.store)
            .field("transport", &self.transport)
            .field("platform_api", &self.platform_api)
            .field("options", &self.options)
            .field("network", &self.network)
            .finish_non_exhaustive()
    }
}

impl DeviceClientBuilder {
    /// The URI or host name of the platform instance (default `api.eu1.spotflow.io`): a host
    /// name, `host:port`, `https://host[:port]`, or `http://` with a loopback host for local
    /// development.
    pub fn instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// Displays the provisioning operation to whoever approves the device. The default prints
    /// its id, verification code and expiration time to standard output.
    pub fn display_provisioning_operation_callback(
        mut self,
        callback: impl Fn(&ProvisioningOperation) + Send + Sync + 'static,
    ) -> Self {
        self.display = Some(Arc::new(callback));
        self
    }

    /// Called with the current desired properties right after start and then with every newer
    /// version, on a dedicated thread.
    pub fn desired_properties_updated_callback(
        mut self,
        callback: impl Fn(DesiredProperties) + Send + Sync + 'static,
    ) -> Self {
        self.desired_callback = Some(Arc::new(callback));
        self
    }

    /// Uses this store instead of the one selected by the `db` path.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Uses this transport for the data plane (telemetry and twin).
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Uses this implementation of provisioning and registration.
    pub fn platform_api(mut self, api: Arc<dyn PlatformApi>) -> Self {
        self.platform_api = Some(api);
        self
    }

    /// Replaces the tunables.
    pub fn options(mut self, options: ClientOptions) -> Self {
        self.options = options;
        self
    }

    /// Trusts this CA certificate (PEM) in addition to the platform's roots (e.g. the local
    /// emulator's `ca.pem`).
    pub fn trust_ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.network.extra_ca_pem.push(pem.into());
        self
    }

    /// Changes how the platform is reached over the network.
    pub fn with_network(mut self, change: impl FnOnce(&mut NetworkOptions)) -> Self {
        change(&mut self.network);
        self
    }

    /// Changes some tunables.
    pub fn with_options(mut self, change: impl FnOnce(&mut ClientOptions)) -> Self {
        change(&mut self.options);
        self
    }

    fn validate(&self) -> Result<Instance> {
        if let Some(id) = &self.device_id {
            validate_name("device id", id)?;
        }
        if self.provisioning_token.expose().trim().is_empty() {
            return Err(Error::invalid("provisioning token", "must not be empty"));
        }
        validate_db_path(&self.db)?;
        let o = &self.options;
        if o.max_in_flight == 0 || o.fetch_batch == 0 || o.max_message_size == 0 {
            return Err(Error::invalid("options", "max_in_flight, fetch_batch and max_message_size must be positive"));
        }
        Instance::parse(self.instance.as_deref().unwrap_or(crate::DEFAULT_INSTANCE))
    }

    /// Starts the client: uses the stored registration when it is still valid (also without a
    /// network: messages then wait in the store), otherwise provisions the device and waits for
    /// the approval (bounded by [`ClientOptions::start_timeout`]; dropping the future cancels it).
    pub async fn start(self) -> Result<DeviceClient> {
        let instance = self.validate()?;
        let store: Arc<dyn Store> = match self.store {
            Some(s) => s,
            None => default_store(&self.db, self.options.durability).await?,
        };
        let (api, transport) =
            network_stack(self.platform_api, self.transport, &instance, &self.network, &self.options)?;
        let display: DisplayCallback = self.display.unwrap_or_else(|| Arc::new(print_provisioning_operation));
        let options = self.options;

        let (identity, fresh) = obtain_identity(&StartRequest {
            api: api.as_ref(),
            store: store.as_ref(),
            provisioning_token: &self.provisioning_token,
            device_id: self.device_id.as_deref(),
            display: &display,
            options: &options,
        })
        .await?;

        let stats = store.queue_stats().await?;
        let desired = store.load_desired().await?;
        let reported = store.load_reported().await?;
        let shared = Arc::new(Shared {
            workspace_id: identity.workspace_id.clone(),
            device_id: identity.device_id.clone(),
            pending: AtomicI64::new(stats.count as i64),
            queued_bytes: AtomicI64::new(stats.bytes as i64),
            last_appended: AtomicU64::new(stats.last_seq.unwrap_or(0)),
            appended: Notify::new(),
            desired: Mutex::new(desired.clone()),
            reported: watch::channel((false, None)).0,
            connected: AtomicBool::new(false),
            recent: Mutex::new(RecentAppends::default()),
            refused_total: AtomicU64::new(0),
            refused: Mutex::new(RefusedLog::default()),
        });
        let reported = ReportedTracker::new(reported);
        shared.set_reported_status(reported.any_pending(), None);

        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (acked_tx, acked_rx) = watch::channel(0);
        let (creds_tx, creds_rx) = watch::channel(identity.connection.clone());
        let (rejected_tx, rejected_rx) = mpsc::unbounded_channel();
        let desired_tx = self.desired_callback.map(spawn_callback_thread).transpose()?;

        let session = spotflow_core::SessionInfo { queue_id: identity.queue_id.clone() };
        let keeper = CredentialKeeper {
            api,
            store: store.clone(),
            identity,
            options: options.clone(),
            credentials: creds_tx,
            rejected: rejected_rx,
        };
        let worker = Worker {
            shared: shared.clone(),
            store: store.clone(),
            transport,
            options: options.clone(),
            queue: OutgoingQueue::new(stats.last_seq, options.max_in_flight, options.fetch_batch),
            desired: DesiredTracker::new(desired),
            reported,
            commands: cmd_rx,
            credentials: creds_rx,
            rejected: rejected_tx,
            acked: acked_tx,
            desired_tx,
            conn: None,
            connecting: None,
            reconnect_at: None,
            backoff: Backoff::new(options.retry_initial, options.retry_max),
            twin_request: None,
            twin_retry_at: None,
            remove_due: None,
            draining_until: None,
            store_retry_at: None,
            keeper: Some(tokio::spawn(keeper.run(fresh))),
            session,
        };
        tokio::spawn(worker.run());
        info!(pending = stats.count, "device client started");
        Ok(DeviceClient {
            inner: Arc::new(ClientInner {
                shared,
                store,
                commands: cmd_tx,
                acked: acked_rx,
                options,
                closed: AtomicBool::new(false),
            }),
        })
    }
}

#[cfg(feature = "mqtt")]
fn network_stack(
    api: Option<Arc<dyn PlatformApi>>,
    transport: Option<Arc<dyn Transport>>,
    instance: &Instance,
    network: &NetworkOptions,
    options: &ClientOptions,
) -> Result<(Arc<dyn PlatformApi>, Arc<dyn Transport>)> {
    use spotflow_transport_mqtt::{HttpPlatformApi, MqttTransport, MqttTransportOptions, TlsOptions};
    if let (Some(a), Some(t)) = (&api, &transport) {
        return Ok((a.clone(), t.clone()));
    }
    let tls = TlsOptions { platform_roots: network.platform_roots, extra_ca_pem: network.extra_ca_pem.clone() }
        .client_config()?;
    let api = match api {
        Some(a) => a,
        None => {
            Arc::new(HttpPlatformApi::new(&instance.base_url(), &instance.id(), tls.clone(), options.request_timeout)?)
        }
    };
    let transport = match transport {
        Some(t) => t,
        None if network.protocol == crate::Protocol::MqttOverWebSocket => {
            websocket_transport(instance, network, options, tls)?
        }
        None => {
            let mut o = if network.mqtt_plain_tcp {
                warn!("MQTT over plain TCP: traffic is neither encrypted nor authenticated");
                MqttTransportOptions::plain_tcp(network.mqtt_port)
            } else {
                let mut o = MqttTransportOptions::tls(tls);
                o.port = network.mqtt_port;
                o
            };
            o.max_in_flight = u16::try_from(options.max_in_flight).unwrap_or(u16::MAX);
            o.upload_base_url = upload_base_url(instance, network)?;
            o.connect_timeout = options.request_timeout;
            Arc::new(MqttTransport::new(o)?)
        }
    };
    Ok((api, transport))
}

/// Where large messages are uploaded: the option (`https://`, or `http://` to a loopback host:
/// the upload carries the SAS), else, for a local instance (loopback host: the emulator serves
/// the upload API beside provisioning), the instance itself, else `https://{hub}` (`None`).
#[cfg(feature = "mqtt")]
fn upload_base_url(instance: &Instance, network: &NetworkOptions) -> Result<Option<String>> {
    match &network.upload_base_url {
        Some(url) => Instance::parse(url).map(|u| Some(u.base_url())).map_err(|e| Error::invalid("upload base URL", e)),
        None => Ok(spotflow_core::is_loopback_host(&instance.host).then(|| instance.base_url())),
    }
}

#[cfg(feature = "ws")]
fn websocket_transport(
    instance: &Instance,
    network: &NetworkOptions,
    options: &ClientOptions,
    tls: Arc<spotflow_transport_mqtt_rustls::ClientConfig>,
) -> Result<Arc<dyn Transport>> {
    use spotflow_transport_ws::{Proxy, ProxyMode, WsTransport, WsTransportOptions};
    let mut o = if network.mqtt_plain_tcp {
        warn!("MQTT over plain ws://: traffic is neither encrypted nor authenticated");
        WsTransportOptions::plain(network.websocket_port)
    } else {
        let mut o = WsTransportOptions::tls(tls);
        o.port = network.websocket_port;
        o
    };
    if let Some(p) = &network.proxy {
        o.proxy = ProxyMode::Explicit(Proxy::parse(p)?);
    }
    o.upload_base_url = upload_base_url(instance, network)?;
    o.connect_timeout = options.request_timeout;
    Ok(Arc::new(WsTransport::new(o)))
}

#[cfg(all(feature = "mqtt", not(feature = "ws")))]
fn websocket_transport(
    _instance: &Instance,
    _network: &NetworkOptions,
    _options: &ClientOptions,
    _tls: Arc<spotflow_transport_mqtt_rustls::ClientConfig>,
) -> Result<Arc<dyn Transport>> {
    Err(Error::invalid("protocol", "MQTT over WebSocket needs the `ws` feature of spotflow-device"))
}

#[cfg(feature = "mqtt")]
use spotflow_transport_mqtt::rustls as spotflow_transport_mqtt_rustls;

#[cfg(not(feature = "mqtt"))]
fn network_stack(
    api: Option<Arc<dyn PlatformApi>>,
    transport: Option<Arc<dyn Transport>>,
    instance: &Instance,
    _network: &NetworkOptions,
    _options: &ClientOptions,
) -> Result<(Arc<dyn PlatformApi>, Arc<dyn Transport>)> {
    let api = api.ok_or_else(|| no_network("platform_api", instance))?;
    let transport = transport.ok_or_else(|| no_network("transport", instance))?;
    Ok((api, transport))
}

#[cfg(not(feature = "mqtt"))]
fn no_network(what: &str, instance: &Instance) -> Error {
    Error::invalid(
        "configuration",
        format!(
            "no {what} configured for instance {}: this build has no network transport yet; \
             enable the `mqtt` feature or inject one with DeviceClientBuilder::{what}",
            instance.authority
        ),
    )
}

#[cfg(feature = "sqlite")]
async fn default_store(db: &Path, durability: crate::Durability) -> Result<Arc<dyn Store>> {
    use spotflow_store_sqlite::SqliteStore;
    Ok(Arc::new(SqliteStore::open_async(db, durability).await?))
}

#[cfg(all(feature = "sled", not(feature = "sqlite")))]
async fn default_store(db: &Path, durability: crate::Durability) -> Result<Arc<dyn Store>> {
    use spotflow_store_sled::{SledOptions, SledStore};
    let mut options = SledOptions::default();
    options.durability = durability;
    Ok(Arc::new(SledStore::open_async(db, options).await?))
}

#[cfg(not(any(feature = "sqlite", feature = "sled")))]
async fn default_store(db: &Path, _durability: crate::Durability) -> Result<Arc<dyn Store>> {
    use spotflow_core::MemoryStore;
    warn!(
        db = %db.display(),
        "no durable store is compiled in (feature `sqlite`): using an in-memory store; queued messages do not survive a restart"
    );
    Ok(Arc::new(MemoryStore::new()))
}

/// The `db` path must name a file ending in `.db`.
pub(crate) fn validate_db_path(db: &Path) -> Result<()> {
    let name = db.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let raw = db.as_os_str().to_string_lossy();
    if raw.ends_with(['/', '\\']) || !name.ends_with(".db") || name == ".db" {
        return Err(Error::invalid(
            "db path",
            format!("{:?} must name a file ending with \".db\", for example \"spotflow.db\"", db.display().to_string()),
        ));
    }
    Ok(())
}

fn spawn_callback_thread(callback: DesiredPropertiesCallback) -> Result<std::sync::mpsc::Sender<DesiredState>> {
    let (tx, rx) = std::sync::mpsc::channel::<DesiredState>();
    std::thread::Builder::new()
        .name("spotflow-desired-callback".into())
        .spawn(move || {
            for state in rx {
                let version = state.version;
                let cb = callback.clone();
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(state))).is_err() {
                    warn!(version, "desired properties callback panicked");
                }
            }
        })
        .map_err(|e| Error::invalid("callback thread", e))?;
    Ok(tx)
}

impl DeviceClient {
    /// Starts configuring a client. `device_id` may be `None` when the provisioning token or the
    /// technician chooses it; `db` must end with `.db`.
    pub fn builder(
        device_id: Option<impl Into<String>>,
        provisioning_token: impl Into<String>,
        db: impl AsRef<Path>,
    ) -> DeviceClientBuilder {
        DeviceClientBuilder {
            device_id: device_id.map(Into::into),
            provisioning_token: Secret::new(provisioning_token),
            db: db.as_ref().to_path_buf(),
            instance: None,
            display: None,
            desired_callback: None,
            store: None,
            transport: None,
            platform_api: None,
            options: ClientOptions::default(),
            network: NetworkOptions::default(),
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) || self.inner.commands.is_closed() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// The id of the workspace the device belongs to.
    pub fn workspace_id(&self) -> &str {
        &self.inner.shared.workspace_id
    }

    /// The device id (may differ from the requested one when a technician overrode it).
    pub fn device_id(&self) -> &str {
        &self.inner.shared.device_id
    }

    /// A sender of messages to `stream` in `stream_group` (`None`: the defaults of the workspace).
    pub fn create_stream_sender(
        &self,
        stream_group: Option<&str>,
        stream: Option<&str>,
        compression: Compression,
    ) -> Result<StreamSender> {
        compression.validate()?;
        Ok(StreamSender {
            client: self.clone(),
            target: Arc::new(StreamTarget::new(stream_group, stream)?),
            compression,
        })
    }

    /// Messages persisted but not yet acknowledged by the platform.
    pub fn pending_messages_count(&self) -> u64 {
        self.inner.shared.pending.load(Ordering::Acquire).max(0) as u64
    }

    /// Whether the client is connected to the platform now.
    pub fn is_connected(&self) -> bool {
        self.inner.shared.connected.load(Ordering::Acquire)
    }

    /// Waits until every message enqueued before the call has left the queue: acknowledged by
    /// the platform, or refused by it for good. Refusals not reported before are returned as
    /// [`Error::MessagesRefused`] (see [`DeviceClient::refused_messages_count`]).
    pub async fn wait_enqueued_messages_sent(&self) -> Result<()> {
        self.wait_acked(self.inner.shared.last_appended()).await
    }

    /// [`DeviceClient::wait_enqueued_messages_sent`] bounded by `timeout`.
    pub async fn wait_enqueued_messages_sent_timeout(&self, timeout: Duration) -> Result<()> {
        tokio::time::timeout(timeout, self.wait_enqueued_messages_sent())
            .await
            .map_err(|_| Error::Timeout(format!("messages not acknowledged within {timeout:?}")))?
    }

    async fn wait_acked(&self, seq: u64) -> Result<()> {
        self.check_open()?;
        let mut rx = self.inner.acked.clone();
        rx.wait_for(|through| *through >= seq).await.map_err(|_| Error::Closed)?;
        match self.inner.shared.take_refused(seq) {
            Some((count, last_reason)) => Err(Error::MessagesRefused { count, last_reason }),
            None => Ok(()),
        }
    }

    /// Messages the platform refused for good since the client started (e.g. a large message
    /// whose upload was answered 413). A refused message is removed from the queue and logged at
    /// error level; the rest of the queue keeps flowing. Each refusal is also reported, once, by
    /// the first [`DeviceClient::wait_enqueued_messages_sent`] that covers it.
    pub fn refused_messages_count(&self) -> u64 {
        self.inner.shared.refused_total.load(Ordering::Acquire)
    }

    /// The current desired properties (version 0 and no values before any are known).
    pub fn get_desired_properties(&self) -> DesiredProperties {
        self.inner.shared.desired.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default()
    }

    /// The current desired properties if their version is greater than `version` (always with
    /// `None`); intermediate versions are skipped.
    pub fn get_desired_properties_if_newer(&self, version: Option<u64>) -> Option<DesiredProperties> {
        let desired = self.inner.shared.desired.lock().unwrap_or_else(|p| p.into_inner());
        desired.as_ref().filter(|d| version.is_none_or(|v| d.version > v)).cloned()
    }

    /// Replaces the reported properties with `properties` (a JSON object; keys absent from it are
    /// deleted on the platform, `null` members mean absent). Returns once the update is
    /// persisted; it is sent when connected, and any number of updates made meanwhile are sent as
    /// one net change.
    pub async fn update_reported_properties(&self, properties: Value) -> Result<()> {
        self.send_reported(properties, false).await
    }

    /// Merges `patch` (a JSON merge patch object: `null` deletes a key) into the reported
    /// properties last given; persisted and sent like [`DeviceClient::update_reported_properties`].
    pub async fn patch_reported_properties(&self, patch: Value) -> Result<()> {
        self.send_reported(patch, true).await
    }

    async fn send_reported(&self, properties: Value, merge: bool) -> Result<()> {
        let Value::Object(document) = properties else {
            return Err(Error::invalid(
                "reported properties",
                format!("must be a JSON object, got {}", json_kind(&properties)),
            ));
        };
        self.check_open()?;
        let (reply, rx) = oneshot::channel();
        self.inner
            .commands
            .send(Command::UpdateReported { document, merge, reply })
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Whether an update of the reported properties has not reached the platform yet.
    pub fn any_pending_reported_properties_updates(&self) -> bool {
        self.inner.shared.reported.borrow().0
    }

    /// Waits until no reported-properties update is pending. Fails with
    /// [`Error::ReportedPropertiesRejected`] when the platform rejected the pending update.
    pub async fn wait_reported_properties_sent(&self) -> Result<()> {
        self.check_open()?;
        let mut rx = self.inner.shared.reported.subscribe();
        let state =
            *rx.wait_for(|(pending, rejection)| !pending || rejection.is_some()).await.map_err(|_| Error::Closed)?;
        match state {
            (_, Some(status)) => Err(Error::ReportedPropertiesRejected { status }),
            _ => Ok(()),
        }
    }

    /// [`DeviceClient::wait_reported_properties_sent`] bounded by `timeout`.
    pub async fn wait_reported_properties_sent_timeout(&self, timeout: Duration) -> Result<()> {
        tokio::time::timeout(timeout, self.wait_reported_properties_sent())
            .await
            .map_err(|_| Error::Timeout(format!("reported properties not sent within {timeout:?}")))?
    }

    /// The status with which the platform rejected the pending reported-properties update, if
    /// it did. The update is kept and tried again on the next connection or update.
    pub fn reported_properties_rejection(&self) -> Option<u16> {
        self.inner.shared.reported.borrow().1
    }

    /// Stops the background work: acknowledged messages are removed from the store, the
    /// connection and the store are closed (the database file is free for the next start).
    /// Queued messages stay in the store. Later calls fail with [`Error::Closed`].
    pub async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        if self.inner.commands.send(Command::Close { reply }).await.is_ok() {
            let _ = rx.await;
        }
        Ok(())
    }

    async fn enqueue(
        &self,
        target: &Arc<StreamTarget>,
        compression: Compression,
        message: Message,
        kind: MessageKind,
    ) -> Result<u64> {
        self.check_open()?;
        let max = self.inner.options.max_message_size;
        if message.payload.len() > max {
            return Err(Error::PayloadTooLarge { size: message.payload.len(), limit: max });
        }
        let id = |what, v: Option<String>| v.map(|s| validate_name(what, &s)).transpose();
        let (content_encoding, payload) = compress(compression, message.payload).await?;
        let outgoing = OutgoingMessage {
            target: target.clone(),
            kind,
            batch_id: id("batch id", message.batch_id)?,
            batch_slice_id: id("batch slice id", message.batch_slice_id)?,
            message_id: id("message id", message.message_id)?,
            chunk_id: id("chunk id", message.chunk_id)?,
            content_encoding,
            payload,
        };
        let size = outgoing.queued_size();
        let budget = self.inner.options.queue_budget_bytes;
        let queued = self.inner.shared.queued_bytes();
        if queued + size > budget {
            match self.inner.options.queue_full_policy {
                crate::QueueFullPolicy::DropOldest if size <= budget => {
                    let (reply, rx) = oneshot::channel();
                    let bytes = queued + size - budget;
                    self.inner.commands.send(Command::DropOldest { bytes, reply }).await.map_err(|_| Error::Closed)?;
                    rx.await.map_err(|_| Error::Closed)??;
                }
                _ => return Err(Error::QueueFull { bytes: queued, budget }),
            }
        }
        let seq = self.inner.store.append_message(outgoing.clone()).await?;
        self.inner.shared.remember_appended(QueuedMessage { seq, message: outgoing });
        self.inner.shared.message_appended(seq, size);
        Ok(seq)
    }
}

/// Compresses a payload; a large one on Tokio's blocking pool so that the executor's other tasks
/// keep running (Brotli quality 11 takes seconds for a 16 MiB payload).
async fn compress(compression: Compression, payload: Bytes) -> Result<(Option<ContentEncoding>, Bytes)> {
    let run = move |payload: Bytes| match compression.compress(&payload) {
        Some((enc, data)) => (Some(enc), Bytes::from(data)),
        None => (None, payload),
    };
    if payload.len() < compression.offload_threshold() {
        return Ok(run(payload));
    }
    // The blocking pool only fails a task when the runtime is shutting down.
    tokio::task::spawn_blocking(move || run(payload)).await.map_err(|_| Error::Closed)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A message to send: a payload and optional ids.
///
/// Build it from bytes or text, and add ids as the stream needs them:
/// `Message::new("21.5").batch_id("2024-01-01").message_id("m1")`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    payload: Bytes,
    batch_id: Option<String>,
    message_id: Option<String>,
    batch_slice_id: Option<String>,
    chunk_id: Option<String>,
}

impl Message {
    /// A message with this payload and no ids.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Message { payload: payload.into(), ..Default::default() }
    }

    /// Sets the batch id (needed when the stream groups messages into batches without an
    /// autofill pattern).
    pub fn batch_id(mut self, id: impl Into<String>) -> Self {
        self.batch_id = Some(id.into());
        self
    }

    /// Sets the message id (needed when the stream has no message id autofill pattern).
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// Sets the batch slice id.
    pub fn batch_slice_id(mut self, id: impl Into<String>) -> Self {
        self.batch_slice_id = Some(id.into());
        self
    }

    /// Sets the chunk id (message chunking).
    pub fn chunk_id(mut self, id: impl Into<String>) -> Self {
        self.chunk_id = Some(id.into());
        self
    }

    /// Sets all ids at once, as the reference API takes them (`None` leaves an id unset).
    pub fn with_ids(
        mut self,
        batch_id: Option<String>,
        message_id: Option<String>,
        batch_slice_id: Option<String>,
        chunk_id: Option<String>,
    ) -> Self {
        self.batch_id = batch_id;
        self.message_id = message_id;
        self.batch_slice_id = batch_slice_id;
        self.chunk_id = chunk_id;
        self
    }
}

impl From<Vec<u8>> for Message {
    fn from(v: Vec<u8>) -> Self {
        Message::new(v)
    }
}
impl From<&[u8]> for Message {
    fn from(v: &[u8]) -> Self {
        Message::new(Bytes::copy_from_slice(v))
    }
}
impl<const N: usize> From<&[u8; N]> for Message {
    fn from(v: &[u8; N]) -> Self {
        Message::new(Bytes::copy_from_slice(v))
    }
}
impl From<String> for Message {
    fn from(v: String) -> Self {
        Message::new(v)
    }
}
impl From<&str> for Message {
    fn from(v: &str) -> Self {
        Message::new(Bytes::copy_from_slice(v.as_bytes()))
    }
}
impl From<Bytes> for Message {
    fn from(v: Bytes) -> Self {
        Message::new(v)
    }
}

/// Sends messages to one stream. Create it with [`DeviceClient::create_stream_sender`]; cheap to
/// clone.
#[derive(Clone)]
pub struct StreamSender {
    client: DeviceClient,
    target: Arc<StreamTarget>,
    compression: Compression,
}

impl std::fmt::Debug for StreamSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSender")
            .field("stream_group", &self.target.stream_group)
            .field("stream", &self.target.stream)
            .field("compression", &self.compression)
            .finish()
    }
}

impl StreamSender {
    /// Persists the message in the queue and returns; it is sent in the background.
    pub async fn enqueue_message(&self, message: impl Into<Message>) -> Result<()> {
        self.client.enqueue(&self.target, self.compression, message.into(), MessageKind::Data).await.map(|_| ())
    }

    /// Enqueues the message and waits until it and every message enqueued before it are
    /// acknowledged by the platform. Prefer [`StreamSender::enqueue_message`] on an unstable
    /// network.
    pub async fn send_message(&self, message: impl Into<Message>) -> Result<()> {
        let seq = self.client.enqueue(&self.target, self.compression, message.into(), MessageKind::Data).await?;
        self.client.wait_acked(seq).await
    }

    /// Enqueues the manual completion of batch `batch_id`.
    pub async fn enqueue_batch_completion(&self, batch_id: &str) -> Result<()> {
        let m = Message::default().batch_id(batch_id);
        self.client.enqueue(&self.target, Compression::Uncompressed, m, MessageKind::BatchCompletion).await.map(|_| ())
    }

    /// Enqueues the manual completion of the chunked message `message_id` in batch `batch_id`.
    pub async fn enqueue_message_completion(&self, batch_id: &str, message_id: &str) -> Result<()> {
        let m = Message::default().batch_id(batch_id).message_id(message_id);
        self.client
            .enqueue(&self.target, Compression::Uncompressed, m, MessageKind::MessageCompletion)
            .await
            .map(|_| ())
    }

    /// The client this sender belongs to.
    pub fn client(&self) -> &DeviceClient {
        &self.client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_paths() {
        for ok in ["spotflow.db", "/var/lib/x/device.db", "a/b.c.db"] {
            validate_db_path(Path::new(ok)).expect(ok);
        }
        for bad in ["", "spotflow", "spotflow.sqlite", ".db", "dir.db/", "x.DB2"] {
            let e = validate_db_path(Path::new(bad)).expect_err(bad);
            assert!(e.to_string().contains(".db"), "{e}");
        }
    }

    fn queued(seq: u64) -> QueuedMessage {
        QueuedMessage { seq, message: spotflow_core::testkit::sample_message(seq) }
    }

    fn seqs(v: Option<Vec<QueuedMessage>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|m| m.seq).collect())
    }

    #[test]
    fn recent_appends_serve_only_complete_contiguous_ranges() {
        let mut r = RecentAppends::default();
        // Appends finishing out of order are kept sorted.
        for seq in [1, 2, 4, 3, 5] {
            r.remember(queued(seq));
        }
        assert_eq!(seqs(r.take(None, 5, 100)), Some(vec![1, 2, 3, 4, 5]));
        assert_eq!(seqs(r.take(Some(2), 5, 2)), Some(vec![3, 4]), "at most `limit`");
        assert_eq!(r.take(Some(5), 5, 100).map(|v| v.len()), None, "nothing new");
        // A gap (7 not remembered yet): read the store instead.
        r.remember(queued(6));
        r.remember(queued(8));
        assert_eq!(seqs(r.take(Some(5), 8, 100)), None);
        assert_eq!(seqs(r.take(Some(5), 6, 100)), Some(vec![6]));
        // Evicted entries are not served.
        let mut r = RecentAppends::default();
        for seq in 1..=(RECENT_MAX_MESSAGES as u64 + 10) {
            r.remember(queued(seq));
        }
        assert_eq!(seqs(r.take(None, 20, 100)), None, "the oldest were evicted");
        assert!(r.take(Some(20), 30, 100).is_some());
    }
}
