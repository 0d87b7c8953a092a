//! `MemoryPlatform`: the platform in memory, for tests. It implements both [`PlatformApi`] and
//! [`Transport`], records every delivered message, and lets a test push desired properties, drop
//! connections, go offline, and delay, hold or refuse acknowledgements.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch, Notify};

use crate::{
    compression, merge_patch, Connection, ConnectionCredentials, DesiredState, Error, OutgoingMessage, PlatformApi,
    ProvisioningOperation, ProvisioningStatus, Registration, RegistrationToken, RequestId, Result, Secret, SessionInfo,
    Transport, TransportEvent, TwinDocument,
};

/// Host name the memory platform puts in its credentials.
pub const MEMORY_HUB_HOST: &str = "hub.memory.invalid";

/// How the platform acknowledges telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckMode {
    /// Acknowledge each message as it arrives.
    #[default]
    Immediate,
    /// Acknowledge after a delay.
    Delay(Duration),
    /// Keep acknowledgements until [`MemoryPlatform::release_held_acks`].
    Hold,
    /// Never acknowledge.
    Refuse,
}

/// A message the platform received.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    /// `{workspace}:{device}` that sent it.
    pub hub_device_id: String,
    /// The device's persistent sequence number of the message.
    pub seq: u64,
    /// The message as sent (payload possibly compressed).
    pub message: OutgoingMessage,
    /// The payload decoded according to its content encoding.
    pub decoded_payload: Vec<u8>,
}

#[derive(Debug)]
struct Operation {
    token: String,
    requested_device_id: Option<String>,
    expires_at: SystemTime,
    approved_device_id: Option<String>,
    closed: bool,
}

#[derive(Debug, Default, Clone)]
struct Twin {
    desired: Map<String, Value>,
    desired_version: u64,
    reported: Map<String, Value>,
    reported_version: u64,
}

struct LiveConnection {
    hub_device_id: String,
    events: mpsc::UnboundedSender<TransportEvent>,
    dead: Arc<AtomicBool>,
    killed: Arc<Notify>,
}

impl LiveConnection {
    fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
        self.killed.notify_one();
    }
}

#[derive(Default)]
struct State {
    workspace_id: String,
    provisioning_tokens: HashSet<String>,
    auto_approve: bool,
    operation_lifetime: Duration,
    operations: HashMap<String, Operation>,
    registration_tokens: HashMap<String, (String, SystemTime)>,
    rt_lifetime: Duration,
    sas_lifetime: Duration,
    sas: HashMap<String, (String, SystemTime)>,
    twins: HashMap<String, Twin>,
    received: Vec<ReceivedMessage>,
    seen: HashSet<(String, String)>,
    duplicates: usize,
    record_messages: bool,
    received_count: u64,
    ack_mode: AckMode,
    held_acks: Vec<(Arc<AtomicBool>, mpsc::UnboundedSender<TransportEvent>, u64)>,
    reported_reject_status: Option<u16>,
    offline: bool,
    connections: Vec<LiveConnection>,
    counter: u64,
    stats: PlatformStats,
}

/// How often each call reached the platform.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlatformStats {
    /// Provisioning operations started.
    pub init_calls: u64,
    /// Polls of provisioning operations.
    pub complete_calls: u64,
    /// Registrations.
    pub register_calls: u64,
    /// Registration-token refreshes.
    pub refresh_calls: u64,
    /// Successful connections.
    pub connects: u64,
    /// Refused connection attempts.
    pub refused_connects: u64,
    /// Twin GET requests.
    pub twin_requests: u64,
    /// Reported-properties patches received.
    pub reported_patches: u64,
}

/// The platform in memory. Cheap to clone; clones share the platform.
#[derive(Clone)]
pub struct MemoryPlatform {
    state: Arc<Mutex<State>>,
    changes: Arc<watch::Sender<u64>>,
}

impl std::fmt::Debug for MemoryPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryPlatform").finish_non_exhaustive()
    }
}

impl Default for MemoryPlatform {
    fn default() -> Self {
        MemoryPlatform::new()
    }
}

impl MemoryPlatform {
    /// A platform with workspace `ws-memory`, the provisioning token `memory-provisioning-token`,
    /// automatic approval, one-day registration tokens and one-hour connection credentials.
    pub fn new() -> Self {
        let state = State {
            workspace_id: "ws-memory".into(),
            provisioning_tokens: ["memory-provisioning-token".to_owned()].into_iter().collect(),
            auto_approve: true,
            operation_lifetime: Duration::from_secs(600),
            rt_lifetime: Duration::from_secs(86_400),
            sas_lifetime: Duration::from_secs(3600),
            record_messages: true,
            ack_mode: AckMode::Immediate,
            ..State::default()
        };
        MemoryPlatform { state: Arc::new(Mutex::new(state)), changes: Arc::new(watch::channel(0).0) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::lock(&self.state)
    }

    fn changed(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    /// Adds a valid provisioning token.
    pub fn add_provisioning_token(&self, token: &str) {
        self.lock().provisioning_tokens.insert(token.to_owned());
    }

    /// Whether operations are approved at their first poll.
    pub fn set_auto_approve(&self, on: bool) {
        self.lock().auto_approve = on;
    }

    /// Lifetimes of provisioning operations, registration tokens and connection credentials issued
    /// from now on.
    pub fn set_lifetimes(&self, operation: Duration, registration_token: Duration, connection: Duration) {
        let mut s = self.lock();
        s.operation_lifetime = operation;
        s.rt_lifetime = registration_token;
        s.sas_lifetime = connection;
    }

    /// Ids of operations waiting for approval.
    pub fn pending_operations(&self) -> Vec<String> {
        let s = self.lock();
        let mut ids: Vec<String> = s
            .operations
            .iter()
            .filter(|(_, o)| !o.closed && o.approved_device_id.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Approves an operation, optionally overriding the device id as a technician can.
    pub fn approve(&self, operation_id: &str, device_id_override: Option<&str>) -> bool {
        let mut s = self.lock();
        let fallback = format!("device-{}", s.counter);
        let Some(op) = s.operations.get_mut(operation_id) else { return false };
        op.approved_device_id =
            Some(device_id_override.map(str::to_owned).or(op.requested_device_id.clone()).unwrap_or(fallback));
        drop(s);
        self.changed();
        true
    }

    /// Makes an operation expire now (the next poll answers "closed").
    pub fn expire_operation(&self, operation_id: &str) {
        if let Some(op) = self.lock().operations.get_mut(operation_id) {
            op.expires_at = SystemTime::UNIX_EPOCH;
        }
    }

    /// Invalidates every registration token and connection credential (a revoked device).
    pub fn revoke_all_credentials(&self) {
        let mut s = self.lock();
        s.registration_tokens.clear();
        s.sas.clear();
    }

    /// While offline, every call and connection attempt fails with a temporary error, and live
    /// connections are dropped.
    pub fn set_offline(&self, offline: bool) {
        self.lock().offline = offline;
        if offline {
            self.drop_connections();
        }
    }

    /// Drops every live connection (the device sees an error on its next call).
    pub fn drop_connections(&self) {
        let mut s = self.lock();
        for c in s.connections.drain(..) {
            c.kill();
        }
        s.held_acks.clear();
        drop(s);
        self.changed();
    }

    /// Number of live connections.
    pub fn live_connections(&self) -> usize {
        self.lock().connections.iter().filter(|c| !c.dead.load(Ordering::SeqCst)).count()
    }

    /// How telemetry is acknowledged from now on.
    pub fn set_ack_mode(&self, mode: AckMode) {
        self.lock().ack_mode = mode;
    }

    /// Sends the acknowledgements kept in [`AckMode::Hold`]; returns how many.
    pub fn release_held_acks(&self) -> usize {
        let held = std::mem::take(&mut self.lock().held_acks);
        let n = held.len();
        for (dead, tx, seq) in held {
            if !dead.load(Ordering::SeqCst) {
                let _ = tx.send(TransportEvent::MessageAcknowledged(seq));
            }
        }
        n
    }

    /// Answer reported-properties patches with this status (`None`: accept them).
    pub fn set_reported_reject_status(&self, status: Option<u16>) {
        self.lock().reported_reject_status = status;
    }

    /// Whether delivered messages are kept (turn off for benchmarks; they are still counted).
    pub fn set_record_messages(&self, on: bool) {
        self.lock().record_messages = on;
    }

    /// Merges `patch` into the desired properties of a device, increments their version, and
    /// pushes the patch to its live connections. Returns the new version.
    pub fn update_desired(&self, hub_device_id: &str, patch: Map<String, Value>) -> u64 {
        let mut s = self.lock();
        let twin = s.twins.entry(hub_device_id.to_owned()).or_default();
        merge_patch::apply(&mut twin.desired, &patch);
        twin.desired_version += 1;
        let version = twin.desired_version;
        for c in s.connections.iter().filter(|c| c.hub_device_id == hub_device_id) {
            let _ = c.events.send(TransportEvent::DesiredPatch { version, patch: patch.clone() });
        }
        drop(s);
        self.changed();
        version
    }

    /// The twin of a device.
    pub fn twin(&self, hub_device_id: &str) -> TwinDocument {
        let s = self.lock();
        twin_document(&s.twins.get(hub_device_id).cloned().unwrap_or_default())
    }

    /// Messages received (first deliveries; redeliveries of a sequence number are counted in
    /// [`MemoryPlatform::duplicates`] instead).
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.lock().received.clone()
    }

    /// Number of first deliveries (also when recording is off).
    pub fn received_count(&self) -> u64 {
        self.lock().received_count
    }

    /// Number of redeliveries of an already received sequence number.
    pub fn duplicates(&self) -> usize {
        self.lock().duplicates
    }

    /// Call counters.
    pub fn stats(&self) -> PlatformStats {
        self.lock().stats
    }

    /// Waits until `condition` holds for the platform, for at most `timeout`. Returns whether it
    /// held.
    pub async fn wait_until(&self, timeout: Duration, mut condition: impl FnMut(&MemoryPlatform) -> bool) -> bool {
        let mut rx = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if condition(self) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return condition(self),
            }
        }
    }

    fn next_id(s: &mut State, prefix: &str) -> String {
        s.counter += 1;
        format!("{prefix}-{}", s.counter)
    }

    fn check_online(s: &State) -> Result<()> {
        if s.offline {
            Err(Error::transport("memory platform is offline"))
        } else {
            Ok(())
        }
    }
}

fn twin_document(t: &Twin) -> TwinDocument {
    TwinDocument {
        desired: DesiredState { version: t.desired_version, values: t.desired.clone() },
        reported: t.reported.clone(),
        reported_version: t.reported_version,
    }
}

#[async_trait]
impl PlatformApi for MemoryPlatform {
    fn instance(&self) -> &str {
        "memory"
    }

    async fn init_provisioning(&self, token: &Secret, device_id: Option<&str>) -> Result<ProvisioningOperation> {
        let mut s = self.lock();
        Self::check_online(&s)?;
        s.stats.init_calls += 1;
        if !s.provisioning_tokens.contains(token.expose()) {
            return Err(Error::Unauthorized("invalid provisioning token".into()));
        }
        let id = Self::next_id(&mut s, "op");
        let expires_at = SystemTime::now() + s.operation_lifetime;
        let op = Operation {
            token: token.expose().to_owned(),
            requested_device_id: device_id.map(str::to_owned),
            expires_at,
            approved_device_id: None,
            closed: false,
        };
        let code = format!("CODE-{}", s.counter);
        s.operations.insert(id.clone(), op);
        drop(s);
        self.changed();
        Ok(ProvisioningOperation { id, verification_code: code, expiration_time: expires_at })
    }

    async fn complete_provisioning(&self, token: &Secret, operation_id: &str) -> Result<ProvisioningStatus> {
        let mut s = self.lock();
        Self::check_online(&s)?;
        s.stats.complete_calls += 1;
        let auto = s.auto_approve;
        let fallback = format!("device-{}", s.counter);
        let rt_lifetime = s.rt_lifetime;
        let Some(op) = s.operations.get_mut(operation_id) else {
            return Err(Error::Platform("unknown provisioning operation".into()));
        };
        if op.token != token.expose() {
            return Err(Error::Unauthorized("provisioning token does not match the operation".into()));
        }
        if op.closed || SystemTime::now() >= op.expires_at {
            op.closed = true;
            return Ok(ProvisioningStatus::Closed);
        }
        if auto && op.approved_device_id.is_none() {
            op.approved_device_id = Some(op.requested_device_id.clone().unwrap_or(fallback));
        }
        let Some(device) = op.approved_device_id.clone() else {
            drop(s);
            self.changed();
            return Ok(ProvisioningStatus::Pending);
        };
        op.closed = true;
        let rt = Self::next_id(&mut s, "rt");
        let expires_at = SystemTime::now() + rt_lifetime;
        s.registration_tokens.insert(rt.clone(), (device, expires_at));
        drop(s);
        self.changed();
        Ok(ProvisioningStatus::Approved(RegistrationToken { token: Secret::new(rt), expires_at: Some(expires_at) }))
    }

    async fn register(&self, registration_token: &Secret) -> Result<Registration> {
        let mut s = self.lock();
        Self::check_online(&s)?;
        s.stats.register_calls += 1;
        let Some((device, expires)) = s.registration_tokens.get(registration_token.expose()).cloned() else {
            return Err(Error::Unauthorized("invalid registration token".into()));
        };
        let now = SystemTime::now();
        if now >= expires {
            return Err(Error::Unauthorized("registration token expired".into()));
        }
        let hub_device_id = format!("{}:{device}", s.workspace_id);
        let sas = format!("SharedAccessSignature sr={}&sig={}", hub_device_id, Self::next_id(&mut s, "sig"));
        let sas_expires = now + s.sas_lifetime;
        s.sas.insert(sas.clone(), (hub_device_id.clone(), sas_expires));
        s.twins.entry(hub_device_id.clone()).or_default();
        let workspace_id = s.workspace_id.clone();
        drop(s);
        self.changed();
        Ok(Registration {
            workspace_id,
            device_id: device,
            credentials: ConnectionCredentials {
                hub_host: MEMORY_HUB_HOST.into(),
                hub_device_id,
                sas: Secret::new(sas),
                expires_at: Some(sas_expires),
            },
            token_remaining_lifetime: Some(expires.duration_since(now).unwrap_or_default()),
        })
    }

    async fn refresh_registration_token(&self, token: &Secret, rt: &Secret) -> Result<RegistrationToken> {
        let mut s = self.lock();
        Self::check_online(&s)?;
        s.stats.refresh_calls += 1;
        if !s.provisioning_tokens.contains(token.expose()) {
            return Err(Error::Unauthorized("invalid provisioning token".into()));
        }
        let Some((device, expires)) = s.registration_tokens.remove(rt.expose()) else {
            return Err(Error::Unauthorized("invalid registration token".into()));
        };
        if SystemTime::now() >= expires {
            return Err(Error::Unauthorized("registration token expired".into()));
        }
        let new = Self::next_id(&mut s, "rt");
        let expires_at = SystemTime::now() + s.rt_lifetime;
        s.registration_tokens.insert(new.clone(), (device, expires_at));
        drop(s);
        self.changed();
        Ok(RegistrationToken { token: Secret::new(new), expires_at: Some(expires_at) })
    }
}

#[async_trait]
impl Transport for MemoryPlatform {
    async fn connect(&self, credentials: &ConnectionCredentials, session: &SessionInfo) -> Result<Box<dyn Connection>> {
        let mut s = self.lock();
        Self::check_online(&s)?;
        let valid = s
            .sas
            .get(credentials.sas.expose())
            .is_some_and(|(dev, exp)| *dev == credentials.hub_device_id && SystemTime::now() < *exp);
        if !valid {
            s.stats.refused_connects += 1;
            return Err(Error::Unauthorized("connection refused: not authorized".into()));
        }
        s.stats.connects += 1;
        let (tx, rx) = mpsc::unbounded_channel();
        let dead = Arc::new(AtomicBool::new(false));
        let killed = Arc::new(Notify::new());
        s.connections.push(LiveConnection {
            hub_device_id: credentials.hub_device_id.clone(),
            events: tx.clone(),
            dead: dead.clone(),
            killed: killed.clone(),
        });
        drop(s);
        self.changed();
        Ok(Box::new(MemoryConnection {
            platform: self.clone(),
            hub_device_id: credentials.hub_device_id.clone(),
            session: session.clone(),
            tx,
            rx,
            dead,
            killed,
        }))
    }
}

struct MemoryConnection {
    platform: MemoryPlatform,
    hub_device_id: String,
    session: SessionInfo,
    tx: mpsc::UnboundedSender<TransportEvent>,
    rx: mpsc::UnboundedReceiver<TransportEvent>,
    dead: Arc<AtomicBool>,
    killed: Arc<Notify>,
}

impl MemoryConnection {
    fn check_alive(&self) -> Result<()> {
        if self.dead.load(Ordering::SeqCst) {
            Err(Error::transport("connection dropped by the memory platform"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Connection for MemoryConnection {
    async fn publish_message(&mut self, seq: u64, message: &OutgoingMessage) -> Result<()> {
        self.check_alive()?;
        let mut s = self.platform.lock();
        // Redeliveries are recognised by the message key, as a platform would.
        let first = s.seen.insert((self.hub_device_id.clone(), self.session.message_key(seq)));
        if first {
            s.received_count += 1;
            if s.record_messages {
                let decoded = match message.content_encoding {
                    Some(enc) => compression::decompress(enc, &message.payload)?,
                    None => message.payload.to_vec(),
                };
                s.received.push(ReceivedMessage {
                    hub_device_id: self.hub_device_id.clone(),
                    seq,
                    message: message.clone(),
                    decoded_payload: decoded,
                });
            }
        } else {
            s.duplicates += 1;
        }
        let mode = s.ack_mode;
        match mode {
            AckMode::Immediate => {
                let _ = self.tx.send(TransportEvent::MessageAcknowledged(seq));
            }
            AckMode::Hold => s.held_acks.push((self.dead.clone(), self.tx.clone(), seq)),
            AckMode::Refuse => {}
            AckMode::Delay(d) => {
                let (tx, dead) = (self.tx.clone(), self.dead.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    if !dead.load(Ordering::SeqCst) {
                        let _ = tx.send(TransportEvent::MessageAcknowledged(seq));
                    }
                });
            }
        }
        drop(s);
        self.platform.changed();
        Ok(())
    }

    async fn request_twin(&mut self, request: RequestId) -> Result<()> {
        self.check_alive()?;
        let mut s = self.platform.lock();
        s.stats.twin_requests += 1;
        let twin = twin_document(&s.twins.get(&self.hub_device_id).cloned().unwrap_or_default());
        let _ = self.tx.send(TransportEvent::Twin { request, result: Ok(twin) });
        drop(s);
        self.platform.changed();
        Ok(())
    }

    async fn patch_reported(&mut self, request: RequestId, patch: &Map<String, Value>) -> Result<()> {
        self.check_alive()?;
        let mut s = self.platform.lock();
        s.stats.reported_patches += 1;
        let event = match s.reported_reject_status {
            Some(status) => TransportEvent::ReportedPatched { request, status, version: None },
            None => {
                let twin = s.twins.entry(self.hub_device_id.clone()).or_default();
                merge_patch::apply(&mut twin.reported, patch);
                twin.reported_version += 1;
                TransportEvent::ReportedPatched { request, status: 204, version: Some(twin.reported_version) }
            }
        };
        let _ = self.tx.send(event);
        drop(s);
        self.platform.changed();
        Ok(())
    }

    async fn next_event(&mut self) -> Result<TransportEvent> {
        self.check_alive()?;
        tokio::select! {
            event = self.rx.recv() => {
                self.check_alive()?;
                event.ok_or_else(|| Error::transport("memory connection closed"))
            }
            () = self.killed.notified() => Err(Error::transport("connection dropped by the memory platform")),
        }
    }

    async fn close(&mut self) {
        let dead = self.dead.clone();
        let mut s = self.platform.lock();
        for c in s.connections.iter().filter(|c| Arc::ptr_eq(&c.dead, &dead)) {
            c.kill();
        }
        s.connections.retain(|c| !Arc::ptr_eq(&c.dead, &dead));
        drop(s);
        self.platform.changed();
    }
}
