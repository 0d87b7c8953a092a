//! Configuring and starting a [`DeviceClient`]: options, backend selection (stores and network
//! stacks by Cargo feature), the identity, the worker and the callback thread.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use spotflow_core::{
    validate_name, Error, PlatformApi, ProvisioningOperation, ReportedTracker, Result, Secret, Store, Transport,
};
use tokio::sync::{mpsc, watch};
use tracing::{info, Instrument};

use crate::backends::{default_store, network_stack};
use crate::callbacks::{CallbackThread, DesiredSink};
use crate::client::{ClientInner, DeviceClient};
use crate::provisioning::{
    obtain_identity, print_provisioning_operation, CredentialKeeper, DisplayCallback, StartRequest,
};
use crate::shared::Shared;
use crate::worker::{Worker, WorkerSetup};
use crate::{ClientOptions, DesiredProperties, Instance, NetworkOptions};

/// Called with the desired properties after start and on every newer version, on a dedicated
/// thread (it may call back into the client, including the blocking API).
pub type DesiredPropertiesCallback = Arc<dyn Fn(DesiredProperties) + Send + Sync>;

impl DeviceClient {
    /// Starts configuring a client. `device_id` may be `None` when the provisioning token or the
    /// technician chooses it; `db` must end with `.db`.
    pub fn builder(
        device_id: Option<impl Into<String>>,
        provisioning_token: impl Into<String>,
        db: impl AsRef<Path>,
    ) -> DeviceClientBuilder {
        DeviceClientBuilder::new(device_id.map(Into::into), Secret::new(provisioning_token), db.as_ref().to_path_buf())
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
    connection_callback: Option<crate::ConnectionEventCallback>,
    store: Option<Arc<dyn Store>>,
    transport: Option<Arc<dyn Transport>>,
    platform_api: Option<Arc<dyn PlatformApi>>,
    options: ClientOptions,
    network: NetworkOptions,
    /// The thread for the desired-properties callback (a gateway's, shared); `None`: its own.
    callback_thread: Option<CallbackThread>,
    /// Direct methods' handlers, by method name.
    methods: std::collections::HashMap<String, crate::MethodHandler>,
    /// The local ports the platform may open remote-access tunnels to (`None`: no remote access).
    #[cfg(feature = "ws")]
    remote_access: Option<crate::RemoteAccessPorts>,
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
    /// See [`DeviceClient::builder`].
    pub(crate) fn new(device_id: Option<String>, provisioning_token: Secret, db: PathBuf) -> Self {
        DeviceClientBuilder {
            device_id,
            provisioning_token,
            db,
            instance: None,
            display: None,
            desired_callback: None,
            connection_callback: None,
            store: None,
            transport: None,
            platform_api: None,
            options: ClientOptions::default(),
            network: NetworkOptions::default(),
            callback_thread: None,
            methods: std::collections::HashMap::new(),
            #[cfg(feature = "ws")]
            remote_access: None,
        }
    }

    /// Lets the platform open remote-access tunnels to these local ports (`127.0.0.1:{port}`):
    /// an operator reaches them (SSH, a local web UI) through the platform, with no inbound
    /// connection to the device's network. A request for another port is answered `403`. Off
    /// by default; calling it again adds ports. Every tunnel is logged when it opens and closes
    /// (port, bytes each way; never the tunnel's URI, which authorises it).
    #[cfg(feature = "ws")]
    pub fn allow_remote_access_ports(mut self, ports: impl IntoIterator<Item = u16>) -> Self {
        let mut allowed = match self.remote_access.take() {
            Some(crate::RemoteAccessPorts::Only(p)) => p,
            Some(crate::RemoteAccessPorts::All) => {
                self.remote_access = Some(crate::RemoteAccessPorts::All);
                return self;
            }
            None => std::collections::BTreeSet::new(),
        };
        allowed.extend(ports);
        self.remote_access = Some(crate::RemoteAccessPorts::Only(allowed));
        self
    }

    /// Lets the platform open remote-access tunnels to any local port (as the official SDK's
    /// `with_remote_access_allowed_for_all_ports`); prefer
    /// [`DeviceClientBuilder::allow_remote_access_ports`].
    #[cfg(feature = "ws")]
    pub fn allow_remote_access_all_ports(mut self) -> Self {
        self.remote_access = Some(crate::RemoteAccessPorts::All);
        self
    }

    /// Handles the direct method `method`: the platform (or the emulator's `method` command)
    /// calls it with a JSON payload and waits for the handler's status and JSON body. The
    /// handler runs on Tokio's blocking pool (it may block), at most
    /// [`crate::MAX_RUNNING_METHODS`] calls at once (more are answered `503`). Calls of methods
    /// without a handler are answered `404` `{"detail": "No handler found"}`. The device
    /// subscribes to direct methods only when it has a handler. A handler that panics is
    /// answered `500`; an answer with a status outside [`crate::METHOD_STATUSES`] (100–599) is
    /// logged as an error and answered `500`, one whose body is over
    /// [`crate::MAX_METHOD_RESPONSE_BYTES`] (128 KiB, the platform's limit) `413`, each with the
    /// reason in its `detail`.
    ///
    /// ```no_run
    /// # async fn run() -> spotflow_device::Result<()> {
    /// use spotflow_device::{DeviceClient, MethodResponse};
    /// use serde_json::json;
    ///
    /// let client = DeviceClient::builder(Some("my-device"), "<Your Provisioning Token>", "spotflow.db")
    ///     .direct_method_handler("flush", |call| {
    ///         let reason = call.json().ok().and_then(|v| v["reason"].as_str().map(String::from));
    ///         MethodResponse::ok(json!({ "flushed": true, "reason": reason }))
    ///     })
    ///     .start()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn direct_method_handler(
        mut self,
        method: impl Into<String>,
        handler: impl Fn(crate::MethodCall) -> crate::MethodResponse + Send + Sync + 'static,
    ) -> Self {
        self.methods.insert(method.into(), Arc::new(handler));
        self
    }

    /// Runs the desired-properties callback on this thread (shared with other clients).
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn callback_thread(mut self, thread: CallbackThread) -> Self {
        self.callback_thread = Some(thread);
        self
    }

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

    /// Called with every [`crate::ConnectionEvent`], in order, from the first connection attempt
    /// on, on a thread of its own: it may block without holding the client back (events it falls
    /// more than [`crate::events::EVENT_BUFFER`] behind on are lost, oldest first). For a view
    /// taken later, see [`DeviceClient::connection_events`].
    pub fn connection_event_callback(
        mut self,
        callback: impl Fn(&crate::ConnectionEvent) + Send + Sync + 'static,
    ) -> Self {
        self.connection_callback = Some(Arc::new(callback));
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
        if o.stall_timeout.is_zero() || o.reconnect_max.is_zero() {
            // Zero would end every connection at once, or reconnect in a busy loop.
            return Err(Error::invalid("options", "stall_timeout and reconnect_max must be positive"));
        }
        Instance::parse(self.instance.as_deref().unwrap_or(crate::DEFAULT_INSTANCE))
    }

    /// Starts the client: uses the stored registration when it is still valid (also without a
    /// network: messages then wait in the store), otherwise provisions the device and waits for
    /// the approval (bounded by [`ClientOptions::start_timeout`]; dropping the future cancels it).
    pub async fn start(self) -> Result<DeviceClient> {
        let instance = self.validate()?;
        let store = match self.store {
            Some(s) => s,
            None => default_store(&self.db, self.options.durability).await?,
        };
        let (api, transport) =
            network_stack(self.platform_api, self.transport, &instance, &self.network, &self.options)?;
        let display: DisplayCallback = self.display.unwrap_or_else(|| Arc::new(print_provisioning_operation));
        let options = self.options;

        // 1. Who the device is: the stored registration, or provisioning and approval.
        let (identity, fresh) = obtain_identity(&StartRequest {
            api: api.as_ref(),
            store: store.as_ref(),
            provisioning_token: &self.provisioning_token,
            device_id: self.device_id.as_deref(),
            display: &display,
            options: &options,
        })
        .await?;
        // Every log line of this client's background work (the worker, the credential keeper and
        // the tasks they start: connections, uploads, direct methods, tunnels, the desired
        // callback) is inside this span, so a process with many devices (a `Gateway`) says which
        // device a line is about.
        let span = tracing::info_span!(
            "spotflow_device",
            workspace_id = %identity.workspace_id,
            device_id = %identity.device_id
        );

        // 2. What the store kept: the queue's figures, the properties.
        let stats = store.queue_stats().await?;
        let desired = store.load_desired().await?;
        let reported = ReportedTracker::new(store.load_reported().await?);
        let shared = Arc::new(Shared::new(&identity, &stats, desired.clone()));
        let (_, inbox_bytes) = store.cloud_inbox_stats().await?;
        shared.inbox_bytes.store(inbox_bytes, std::sync::atomic::Ordering::Release);
        shared.set_reported_status(reported.any_pending(), None);

        // 3. Where the application's code runs: the desired callback's thread, the methods.
        let desired_tx = match self.desired_callback {
            Some(callback) => {
                Some(DesiredSink::new(self.callback_thread.map_or_else(CallbackThread::spawn, Ok)?, callback))
            }
            None => None,
        };
        if let Some(callback) = self.connection_callback {
            crate::events::spawn_callback(shared.events.subscribe(), callback, span.clone())?;
        }
        #[allow(unused_mut)]
        let (mut methods, method_answers) = crate::methods::Methods::new(self.methods);
        #[cfg(feature = "ws")]
        if let Some(ports) = self.remote_access {
            methods.remote = Some(Arc::new(crate::remote::RemoteAccess::new(ports, remote_access_tls(&self.network)?)));
        }
        let session = spotflow_core::SessionInfo { queue_id: identity.queue_id.clone(), direct_methods: methods.any() };

        // 4. The background work: the credential keeper and the worker, in the device's span.
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (acked_tx, acked_rx) = watch::channel(0);
        let (creds_tx, creds_rx) = watch::channel(identity.connection.clone());
        let (rejected_tx, rejected_rx) = mpsc::unbounded_channel();
        let keeper = CredentialKeeper {
            api,
            store: store.clone(),
            identity,
            options: options.clone(),
            credentials: creds_tx,
            rejected: rejected_rx,
        };
        let worker = Worker::new(WorkerSetup {
            shared: shared.clone(),
            store: store.clone(),
            transport,
            options: options.clone(),
            last_seq: stats.last_seq,
            desired,
            reported,
            commands: cmd_rx,
            credentials: creds_rx,
            rejected: rejected_tx,
            acked: acked_tx,
            desired_tx,
            keeper: tokio::spawn(keeper.run(fresh).instrument(span.clone())),
            session,
            methods,
            method_answers,
        });
        tokio::spawn(worker.run().instrument(span.clone()));
        span.in_scope(|| info!(pending = stats.count, "device client started"));
        Ok(DeviceClient {
            inner: Arc::new(ClientInner {
                shared,
                store,
                commands: cmd_tx,
                acked: acked_rx,
                options,
                closed: AtomicBool::new(false),
                db: self.db,
                network: self.network,
            }),
        })
    }
}

/// The TLS configuration of remote-access tunnels: the SDK's trust.
#[cfg(feature = "ws")]
fn remote_access_tls(network: &NetworkOptions) -> Result<Arc<spotflow_transport_mqtt::rustls::ClientConfig>> {
    spotflow_transport_mqtt::TlsOptions {
        platform_roots: network.platform_roots,
        extra_ca_pem: network.extra_ca_pem.clone(),
    }
    .client_config()
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
}
