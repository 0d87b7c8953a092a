//! The blocking API: the same client for plain threads, callbacks and bindings.
//!
//! It owns a small Tokio runtime that runs the background work; every method blocks the calling
//! thread until done. Calling it from inside an async runtime returns
//! [`Error::BlockingInAsyncContext`] instead of stalling (or panicking) the runtime: use the async
//! [`crate::DeviceClient`] there.
//!
//! ```no_run
//! use spotflow_device::blocking::DeviceClient;
//! use spotflow_device::Compression;
//!
//! let client = DeviceClient::builder(Some("my-device"), "<Your Provisioning Token>", "spotflow.db").start()?;
//! let sender = client.create_stream_sender(Some("default-stream-group"), Some("default-stream"), Compression::Uncompressed)?;
//! sender.send_message(r#"{"temperatureCelsius": 21.5}"#)?;
//! # Ok::<(), spotflow_device::Error>(())
//! ```

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use spotflow_core::{Compression, Error, PlatformApi, ProvisioningOperation, Result, Store, Transport};

use crate::{ClientOptions, DesiredProperties, Message};

/// Owns the runtime; shuts it down without blocking when dropped inside an async context.
struct Runtime {
    rt: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

impl Runtime {
    fn new() -> Result<Self> {
        Self::with_workers(1)
    }

    fn with_workers(workers: usize) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name("spotflow-worker")
            .enable_all()
            .build()
            .map_err(|source| Error::System { what: "the blocking client's runtime", source })?;
        Ok(Runtime { rt: Some(rt) })
    }

    fn block_on<F: Future>(&self, f: F) -> Result<F::Output> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::BlockingInAsyncContext);
        }
        let rt = self.rt.as_ref().ok_or(Error::Closed)?;
        // The application's thread waits for the answer anyway: a durable store may do the
        // work on it rather than wake its own thread (see `run_as_blocking_caller`).
        Ok(spotflow_core::run_as_blocking_caller(|| rt.block_on(f)))
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The connection events of a blocking client, from when it was made on: an iterator that waits
/// for each (it ends after [`crate::ConnectionEvent::Closed`]), and
/// [`ConnectionEvents::next_timeout`].
#[derive(Debug)]
pub struct ConnectionEvents {
    inner: crate::ConnectionEvents,
    client: DeviceClient,
}

impl ConnectionEvents {
    /// The next event, waiting at most `timeout`: `Ok(None)` when none came in time,
    /// [`Error::Closed`] after [`crate::ConnectionEvent::Closed`].
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<crate::ConnectionEvent>> {
        let inner = &mut self.inner;
        let next = self.client.inner.runtime.block_on(async { tokio::time::timeout(timeout, inner.next()).await })?;
        match next {
            Ok(Some(event)) => Ok(Some(event)),
            Ok(None) => Err(Error::Closed),
            Err(_) => Ok(None),
        }
    }

    /// Events this view lost by falling more than [`crate::ConnectionEvents`] keeps behind.
    pub fn lost(&self) -> u64 {
        self.inner.lost()
    }
}

impl Iterator for ConnectionEvents {
    type Item = crate::ConnectionEvent;

    /// Waits for the next event; `None` after [`crate::ConnectionEvent::Closed`] (or when called inside an async
    /// runtime, where waiting would stall it: use the async client's view there).
    fn next(&mut self) -> Option<crate::ConnectionEvent> {
        if tokio::runtime::Handle::try_current().is_ok() {
            tracing::warn!(
                "blocking ConnectionEvents iterated inside an async runtime; use DeviceClient::connection_events"
            );
            return None;
        }
        self.inner.blocking_next()
    }
}

/// The cloud-to-device inbox of a blocking client (see [`crate::c2d`]): an iterator that waits
/// for each message, and [`C2dMessages::next_timeout`].
#[derive(Debug)]
pub struct C2dMessages {
    inner: crate::C2dMessages,
    client: DeviceClient,
}

impl C2dMessages {
    /// The next message, waiting at most `timeout`: `Ok(None)` when none came in time,
    /// [`Error::Closed`] once the client is closed.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<C2dMessage>> {
        let inner = &mut self.inner;
        let next = self.client.inner.runtime.block_on(inner.next_timeout(timeout))??;
        Ok(next.map(|inner| C2dMessage { inner, client: self.client.clone() }))
    }
}

impl Iterator for C2dMessages {
    type Item = C2dMessage;

    /// Waits for the next message; `None` once the client is closed (or when called inside an
    /// async runtime, where waiting would stall it: use the async client's inbox there).
    fn next(&mut self) -> Option<C2dMessage> {
        let inner = &mut self.inner;
        let next = self.client.inner.runtime.block_on(inner.next()).ok()?.ok()?;
        Some(C2dMessage { inner: next, client: self.client.clone() })
    }
}

/// A message of a blocking client's inbox: see [`crate::C2dMessage`].
#[derive(Debug, Clone)]
pub struct C2dMessage {
    inner: crate::C2dMessage,
    client: DeviceClient,
}

impl C2dMessage {
    /// See [`crate::C2dMessage::id`].
    pub fn id(&self) -> u64 {
        self.inner.id()
    }

    /// See [`crate::C2dMessage::payload`].
    pub fn payload(&self) -> &[u8] {
        self.inner.payload()
    }

    /// See [`crate::C2dMessage::properties`].
    pub fn properties(&self) -> &[(String, String)] {
        self.inner.properties()
    }

    /// See [`crate::C2dMessage::property`].
    pub fn property(&self, key: &str) -> Option<&str> {
        self.inner.property(key)
    }

    /// See [`crate::C2dMessage::message_id`].
    pub fn message_id(&self) -> Option<&str> {
        self.inner.message_id()
    }

    /// See [`crate::C2dMessage::complete`].
    pub fn complete(&self) -> Result<()> {
        self.client.inner.runtime.block_on(self.inner.complete())?
    }
}

/// The blocking counterpart of [`crate::DeviceClientBuilder`].
#[derive(Debug)]
pub struct DeviceClientBuilder {
    inner: crate::DeviceClientBuilder,
    /// A gateway's runtime, shared by its clients; `None`: the client's own.
    runtime: Option<Arc<Runtime>>,
}

impl DeviceClientBuilder {
    /// See [`crate::DeviceClientBuilder::instance`].
    pub fn instance(self, instance: impl Into<String>) -> Self {
        DeviceClientBuilder { inner: self.inner.instance(instance), runtime: self.runtime }
    }

    /// See [`crate::DeviceClientBuilder::display_provisioning_operation_callback`].
    pub fn display_provisioning_operation_callback(
        self,
        callback: impl Fn(&ProvisioningOperation) + Send + Sync + 'static,
    ) -> Self {
        DeviceClientBuilder {
            inner: self.inner.display_provisioning_operation_callback(callback),
            runtime: self.runtime,
        }
    }

    /// See [`crate::DeviceClientBuilder::desired_properties_updated_callback`]. The callback may
    /// call this blocking client.
    pub fn desired_properties_updated_callback(
        self,
        callback: impl Fn(DesiredProperties) + Send + Sync + 'static,
    ) -> Self {
        DeviceClientBuilder { inner: self.inner.desired_properties_updated_callback(callback), runtime: self.runtime }
    }

    /// See [`crate::DeviceClientBuilder::connection_event_callback`].
    pub fn connection_event_callback(self, callback: impl Fn(&crate::ConnectionEvent) + Send + Sync + 'static) -> Self {
        DeviceClientBuilder { inner: self.inner.connection_event_callback(callback), runtime: self.runtime }
    }

    /// See [`crate::DeviceClientBuilder::direct_method_handler`].
    pub fn direct_method_handler(
        self,
        method: impl Into<String>,
        handler: impl Fn(crate::MethodCall) -> crate::MethodResponse + Send + Sync + 'static,
    ) -> Self {
        DeviceClientBuilder { inner: self.inner.direct_method_handler(method, handler), runtime: self.runtime }
    }

    /// See [`crate::DeviceClientBuilder::allow_remote_access_ports`].
    #[cfg(feature = "ws")]
    pub fn allow_remote_access_ports(self, ports: impl IntoIterator<Item = u16>) -> Self {
        DeviceClientBuilder { inner: self.inner.allow_remote_access_ports(ports), runtime: self.runtime }
    }

    /// See [`crate::DeviceClientBuilder::allow_remote_access_all_ports`].
    #[cfg(feature = "ws")]
    pub fn allow_remote_access_all_ports(self) -> Self {
        DeviceClientBuilder { inner: self.inner.allow_remote_access_all_ports(), runtime: self.runtime }
    }

    /// See [`crate::DeviceClientBuilder::store`].
    pub fn store(self, store: Arc<dyn Store>) -> Self {
        DeviceClientBuilder { inner: self.inner.store(store), runtime: self.runtime }
    }

    /// See [`crate::DeviceClientBuilder::transport`].
    pub fn transport(self, transport: Arc<dyn Transport>) -> Self {
        DeviceClientBuilder { inner: self.inner.transport(transport), runtime: self.runtime }
    }

    /// See [`crate::DeviceClientBuilder::platform_api`].
    pub fn platform_api(self, api: Arc<dyn PlatformApi>) -> Self {
        DeviceClientBuilder { inner: self.inner.platform_api(api), runtime: self.runtime }
    }

    /// See [`crate::DeviceClientBuilder::trust_ca_pem`].
    pub fn trust_ca_pem(self, pem: impl Into<String>) -> Self {
        DeviceClientBuilder { inner: self.inner.trust_ca_pem(pem), runtime: self.runtime }
    }

    /// See [`crate::DeviceClientBuilder::with_network`].
    pub fn with_network(self, change: impl FnOnce(&mut crate::NetworkOptions)) -> Self {
        DeviceClientBuilder { inner: self.inner.with_network(change), runtime: self.runtime }
    }

    /// See [`crate::DeviceClientBuilder::with_options`].
    pub fn with_options(self, change: impl FnOnce(&mut ClientOptions)) -> Self {
        DeviceClientBuilder { inner: self.inner.with_options(change), runtime: self.runtime }
    }

    /// Starts the client, blocking until it is registered (see [`crate::DeviceClientBuilder::start`]).
    pub fn start(self) -> Result<DeviceClient> {
        let runtime = match self.runtime {
            Some(shared) => shared,
            None => Arc::new(Runtime::new()?),
        };
        let client = runtime.block_on(self.inner.start())??;
        Ok(DeviceClient { inner: Arc::new(Inner { client, runtime }) })
    }
}

struct Inner {
    client: crate::DeviceClient,
    runtime: Arc<Runtime>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Flush acknowledgements and close the connection when it can be done without blocking
        // a runtime; otherwise the runtime is shut down in the background.
        let client = self.client.clone();
        let _ = self.runtime.block_on(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
        });
    }
}

/// A device connected to the platform, with blocking methods. Cheap to clone; thread-safe.
#[derive(Clone)]
pub struct DeviceClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DeviceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.client.fmt(f)
    }
}

impl DeviceClient {
    /// See [`crate::DeviceClient::builder`].
    pub fn builder(
        device_id: Option<impl Into<String>>,
        provisioning_token: impl Into<String>,
        db: impl AsRef<Path>,
    ) -> DeviceClientBuilder {
        DeviceClientBuilder { inner: crate::DeviceClient::builder(device_id, provisioning_token, db), runtime: None }
    }

    fn run<F: Future<Output = Result<T>>, T>(&self, f: F) -> Result<T> {
        self.inner.runtime.block_on(f)?
    }

    /// The async client behind this one.
    pub fn as_async(&self) -> &crate::DeviceClient {
        &self.inner.client
    }

    /// See [`crate::DeviceClient::workspace_id`].
    pub fn workspace_id(&self) -> &str {
        self.inner.client.workspace_id()
    }

    /// See [`crate::DeviceClient::device_id`].
    pub fn device_id(&self) -> &str {
        self.inner.client.device_id()
    }

    /// See [`crate::DeviceClient::create_stream_sender`].
    pub fn create_stream_sender(
        &self,
        stream_group: Option<&str>,
        stream: Option<&str>,
        compression: Compression,
    ) -> Result<StreamSender> {
        Ok(StreamSender {
            client: self.clone(),
            inner: self.inner.client.create_stream_sender(stream_group, stream, compression)?,
        })
    }

    /// See [`crate::DeviceClient::pending_messages_count`].
    pub fn pending_messages_count(&self) -> u64 {
        self.inner.client.pending_messages_count()
    }

    /// The connection events from now on, as a blocking iterator (see
    /// [`crate::DeviceClient::connection_events`]).
    pub fn connection_events(&self) -> ConnectionEvents {
        ConnectionEvents { inner: self.inner.client.connection_events(), client: self.clone() }
    }

    /// Starts a [`crate::logs::DeviceLogger`] of this client (on the client's runtime): see
    /// [`crate::logs::DeviceLogger::start`]. Its logging calls never block; records move into
    /// the queue every [`crate::logs::LogOptions::batch_interval`].
    #[cfg(feature = "logs")]
    pub fn start_logger(&self, options: crate::logs::LogOptions) -> Result<crate::logs::DeviceLogger> {
        let client = self.inner.client.clone();
        self.inner.runtime.block_on(async move { crate::logs::DeviceLogger::start(&client, options).await })?
    }

    /// [`crate::logs::DeviceLogger::flush`] on the client's runtime.
    #[cfg(feature = "logs")]
    pub fn flush_logger(&self, logger: &crate::logs::DeviceLogger) -> Result<()> {
        self.inner.runtime.block_on(logger.flush())?
    }

    /// [`crate::update::UpdateAgent::start_with`] on the client's runtime.
    #[cfg(feature = "updates")]
    pub fn start_update_agent(
        &self,
        options: crate::update::UpdateOptions,
        handler: std::sync::Arc<dyn crate::update::UpdateHandler>,
    ) -> Result<crate::update::UpdateAgent> {
        let client = self.inner.client.clone();
        self.inner
            .runtime
            .block_on(async move { crate::update::UpdateAgent::start_with(&client, options, handler).await })?
    }

    /// [`crate::update::UpdateAgent::wait_for`] on the client's runtime.
    #[cfg(feature = "updates")]
    pub fn wait_for_update(
        &self,
        agent: &crate::update::UpdateAgent,
        timeout: Duration,
        done: impl Fn(&crate::update::UpdateRecord) -> bool,
    ) -> Result<crate::update::UpdateRecord> {
        self.inner.runtime.block_on(agent.wait_for(timeout, done))?
    }

    /// [`crate::update::UpdateAgent::stop`] on the client's runtime.
    #[cfg(feature = "updates")]
    pub fn stop_update_agent(&self, agent: &crate::update::UpdateAgent) -> Result<crate::update::UpdateRecord> {
        self.inner.runtime.block_on(agent.stop())
    }

    /// See [`crate::DeviceClient::c2d_messages`].
    pub fn c2d_messages(&self) -> C2dMessages {
        C2dMessages { inner: self.inner.client.c2d_messages(), client: self.clone() }
    }

    /// See [`crate::DeviceClient::stats`].
    pub fn stats(&self) -> crate::Stats {
        self.inner.client.stats()
    }

    /// See [`crate::DeviceClient::refused_messages_count`].
    pub fn refused_messages_count(&self) -> u64 {
        self.inner.client.refused_messages_count()
    }

    /// Blocks until every message enqueued before the call is acknowledged (or refused for good:
    /// see [`crate::DeviceClient::wait_enqueued_messages_sent`]).
    pub fn wait_enqueued_messages_sent(&self) -> Result<()> {
        self.run(self.inner.client.wait_enqueued_messages_sent())
    }

    /// [`DeviceClient::wait_enqueued_messages_sent`] bounded by `timeout`.
    pub fn wait_enqueued_messages_sent_timeout(&self, timeout: Duration) -> Result<()> {
        self.run(self.inner.client.wait_enqueued_messages_sent_timeout(timeout))
    }

    /// See [`crate::DeviceClient::get_desired_properties`].
    pub fn get_desired_properties(&self) -> DesiredProperties {
        self.inner.client.get_desired_properties()
    }

    /// See [`crate::DeviceClient::get_desired_properties_if_newer`].
    pub fn get_desired_properties_if_newer(&self, version: Option<u64>) -> Option<DesiredProperties> {
        self.inner.client.get_desired_properties_if_newer(version)
    }

    /// See [`crate::DeviceClient::update_reported_properties`].
    pub fn update_reported_properties(&self, properties: Value) -> Result<()> {
        self.run(self.inner.client.update_reported_properties(properties))
    }

    /// See [`crate::DeviceClient::patch_reported_properties`].
    pub fn patch_reported_properties(&self, patch: Value) -> Result<()> {
        self.run(self.inner.client.patch_reported_properties(patch))
    }

    /// See [`crate::DeviceClient::any_pending_reported_properties_updates`].
    pub fn any_pending_reported_properties_updates(&self) -> bool {
        self.inner.client.any_pending_reported_properties_updates()
    }

    /// Blocks until no reported-properties update is pending, bounded by `timeout`; see
    /// [`crate::DeviceClient::wait_reported_properties_sent`].
    pub fn wait_reported_properties_sent_timeout(&self, timeout: Duration) -> Result<()> {
        self.run(self.inner.client.wait_reported_properties_sent_timeout(timeout))
    }

    /// See [`crate::DeviceClient::reported_properties_rejection`].
    pub fn reported_properties_rejection(&self) -> Option<u16> {
        self.inner.client.reported_properties_rejection()
    }

    /// See [`crate::DeviceClient::is_connected`].
    pub fn is_connected(&self) -> bool {
        self.inner.client.is_connected()
    }

    /// See [`crate::DeviceClient::close`].
    pub fn close(&self) -> Result<()> {
        self.run(self.inner.client.close())
    }
}

/// The blocking counterpart of [`crate::StreamSender`].
#[derive(Clone, Debug)]
pub struct StreamSender {
    client: DeviceClient,
    inner: crate::StreamSender,
}

impl StreamSender {
    /// Persists the message and returns; see [`crate::StreamSender::enqueue_message`].
    pub fn enqueue_message(&self, message: impl Into<Message>) -> Result<()> {
        self.client.run(self.inner.enqueue_message(message))
    }

    /// Blocks until the message and all earlier ones are acknowledged; see
    /// [`crate::StreamSender::send_message`].
    pub fn send_message(&self, message: impl Into<Message>) -> Result<()> {
        self.client.run(self.inner.send_message(message))
    }

    /// See [`crate::StreamSender::enqueue_batch_completion`].
    pub fn enqueue_batch_completion(&self, batch_id: &str) -> Result<()> {
        self.client.run(self.inner.enqueue_batch_completion(batch_id))
    }

    /// See [`crate::StreamSender::enqueue_message_completion`].
    pub fn enqueue_message_completion(&self, batch_id: &str, message_id: &str) -> Result<()> {
        self.client.run(self.inner.enqueue_message_completion(batch_id, message_id))
    }
}

/// The blocking counterpart of [`crate::Gateway`]: many devices over one shared store, and one
/// Tokio runtime (as many worker threads as the machine has cores) for all of their clients.
///
/// ```no_run
/// use spotflow_device::blocking::Gateway;
///
/// let gateway = Gateway::open("gateway.db")?;
/// let pump = gateway.device("pump-1", "<Your Provisioning Token>")?.start()?;
/// let valve = gateway.device("valve-7", "<Your Provisioning Token>")?.start()?;
/// # Ok::<(), spotflow_device::Error>(())
/// ```
#[cfg(feature = "sqlite")]
#[derive(Debug, Clone)]
pub struct Gateway {
    inner: crate::Gateway,
    runtime: Arc<Runtime>,
}

#[cfg(feature = "sqlite")]
impl Gateway {
    /// See [`crate::Gateway::open`].
    pub fn open(db: impl AsRef<Path>) -> Result<Gateway> {
        Self::open_with_durability(db, crate::Durability::PowerLossSafe)
    }

    /// See [`crate::Gateway::open_with_durability`].
    pub fn open_with_durability(db: impl AsRef<Path>, durability: crate::Durability) -> Result<Gateway> {
        let workers = std::thread::available_parallelism().map_or(1, usize::from);
        let runtime = Arc::new(Runtime::with_workers(workers)?);
        let inner = runtime.block_on(crate::Gateway::open_with_durability(db.as_ref(), durability))??;
        Ok(Gateway { inner, runtime })
    }

    /// A builder for the client of the device `device_id` over the gateway's store, started on
    /// the gateway's runtime (see [`crate::Gateway::device`]).
    pub fn device(
        &self,
        device_id: impl Into<String>,
        provisioning_token: impl Into<String>,
    ) -> Result<DeviceClientBuilder> {
        let inner = self.runtime.block_on(self.inner.device(device_id, provisioning_token))??;
        Ok(DeviceClientBuilder { inner, runtime: Some(self.runtime.clone()) })
    }

    /// The async gateway behind this one.
    pub fn as_async(&self) -> &crate::Gateway {
        &self.inner
    }

    /// See [`crate::Gateway::close`].
    pub fn close(&self) -> Result<()> {
        self.runtime.block_on(self.inner.close())?
    }
}
