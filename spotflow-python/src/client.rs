//! `DeviceClient` and `StreamSender`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyString};
use spotflow_device::Message;

use crate::types::{dict_to_json, Compression, ConnectionEvent, DesiredProperties, ProvisioningOperation};
use crate::{logging, run_detached, run_interruptible, same_process, to_py};

/// Clients still open, closed at interpreter exit.
static OPEN: Mutex<Vec<(u32, Weak<spotflow_device::DeviceClient>)>> = Mutex::new(Vec::new());

fn register(client: &Arc<spotflow_device::DeviceClient>) {
    let mut open = spotflow_core::lock(&OPEN);
    open.retain(|(_, w)| w.strong_count() > 0);
    open.push((std::process::id(), Arc::downgrade(client)));
}

/// Closes every client still open (at most 2 s each): acknowledgements are flushed to the
/// database, the connection and the database file are closed.
pub fn close_all(py: Python<'_>) {
    let open: Vec<_> = std::mem::take(&mut *spotflow_core::lock(&OPEN));
    // Only this process's clients: a forked child leaves its parent's alone.
    let pid = std::process::id();
    for client in open.into_iter().filter(|(owner, _)| *owner == pid).filter_map(|(_, w)| w.upgrade()) {
        let _ = run_detached(py, async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
            Ok(())
        });
    }
}

/// The durability of `enqueue_message`, from `SPOTFLOW_DURABILITY` (the reference API has no
/// option for it): `power-loss-safe` (the default: fsync'd before it returns) or `crash-safe`
/// (survives the process being killed, not a power cut; much faster for a single sender).
fn durability_from_env() -> PyResult<spotflow_device::Durability> {
    match std::env::var("SPOTFLOW_DURABILITY").as_deref() {
        Err(_) | Ok("") | Ok("power-loss-safe") => Ok(spotflow_device::Durability::PowerLossSafe),
        Ok("crash-safe") => Ok(spotflow_device::Durability::CrashSafe),
        Ok(other) => Err(crate::SpotflowError::new_err(format!(
            "SPOTFLOW_DURABILITY={other:?} is not valid: use \"power-loss-safe\" (the default) or \"crash-safe\""
        ))),
    }
}

/// `SPOTFLOW_UPLOAD_BASE_URL`: where messages over 250,000 bytes are uploaded when the instance
/// is not the real platform (`https://…`, or `http://` to a loopback host; validated at start).
/// Unset: `https://{hub}` on the platform, the instance itself on a loopback instance.
fn upload_base_url_from_env() -> Option<String> {
    std::env::var("SPOTFLOW_UPLOAD_BASE_URL").ok().filter(|u| !u.is_empty())
}

/// The default display of a provisioning operation: printed to `sys.stdout`.
fn print_operation(py: Python<'_>, op: &spotflow_device::ProvisioningOperation) -> PyResult<()> {
    let mut text = Vec::new();
    spotflow_device::write_provisioning_operation(&mut text, op)
        .map_err(|e| crate::SpotflowError::new_err(e.to_string()))?;
    let text = String::from_utf8_lossy(&text);
    let kwargs = PyDict::new(py);
    kwargs.set_item("end", "")?;
    kwargs.set_item("flush", true)?;
    py.import("builtins")?.call_method("print", (text,), Some(&kwargs))?;
    Ok(())
}

/// A client connected to the Platform. Create its instance using `DeviceClient.start`.
///
/// The client stores all outgoing communication in the local database file and sends it from a
/// background thread, so it works even when the connection is unreliable.
#[pyclass(frozen, module = "spotflow_device", name = "DeviceClient")]
pub struct DeviceClient {
    client: Arc<spotflow_device::DeviceClient>,
    /// Its `DeviceLogger`, started by the first `LogHandler`.
    logger: std::sync::OnceLock<Py<crate::device_logs::PyDeviceLogger>>,
    /// Where `receive_c2d_message` is in the inbox.
    inbox: Arc<tokio::sync::Mutex<Option<spotflow_device::C2dMessages>>>,
    /// The process that started it (see `same_process`).
    pid: u32,
}

#[pymethods]
impl DeviceClient {
    /// Start communicating with the Platform; provisions the Device and waits for its approval if
    /// it is not registered yet (or its Registration Token expired).
    #[staticmethod]
    #[pyo3(signature = (device_id, provisioning_token, db, instance=None, display_provisioning_operation_callback=None, desired_properties_updated_callback=None, allow_remote_access=false, remote_access_ports=None, direct_method_handlers=None, connection_event_callback=None))]
    #[allow(clippy::too_many_arguments)]
    fn start(
        py: Python<'_>,
        device_id: Option<String>,
        provisioning_token: String,
        db: PathBuf,
        instance: Option<String>,
        display_provisioning_operation_callback: Option<Py<PyAny>>,
        desired_properties_updated_callback: Option<Py<PyAny>>,
        allow_remote_access: bool,
        remote_access_ports: Option<Vec<u16>>,
        direct_method_handlers: Option<std::collections::HashMap<String, Py<PyAny>>>,
        connection_event_callback: Option<Py<PyAny>>,
    ) -> PyResult<DeviceClient> {
        if remote_access_ports.is_some() && !allow_remote_access {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "remote_access_ports limits remote access: it needs allow_remote_access=True",
            ));
        }
        for (name, handler) in direct_method_handlers.iter().flatten() {
            if !handler.bind(py).is_callable() {
                return Err(PyTypeError::new_err(format!(
                    "the handler of the direct method {name:?} must be callable"
                )));
            }
        }
        for (name, cb) in [
            ("display_provisioning_operation_callback", &display_provisioning_operation_callback),
            ("desired_properties_updated_callback", &desired_properties_updated_callback),
            ("connection_event_callback", &connection_event_callback),
        ] {
            if let Some(cb) = cb {
                if !cb.bind(py).is_callable() {
                    return Err(PyTypeError::new_err(format!(
                        "{name} must be callable or None, not {}",
                        cb.bind(py).get_type().name()?
                    )));
                }
            }
        }
        logging::refresh_threshold(py);
        logging::start_forwarding(py)?;
        let durability = durability_from_env()?;
        let upload_base_url = upload_base_url_from_env();
        let mut builder = spotflow_device::DeviceClient::builder(device_id, provisioning_token, db)
            .with_options(|o| o.durability = durability)
            .with_network(|n| n.upload_base_url = upload_base_url);
        if let Some(instance) = instance {
            builder = builder.instance(instance);
        }
        builder = builder.display_provisioning_operation_callback(move |op| {
            if logging::stopped() {
                return;
            }
            Python::attach(|py| {
                let shown = match &display_provisioning_operation_callback {
                    Some(cb) => {
                        Py::new(py, ProvisioningOperation::from(op)).and_then(|op| cb.call1(py, (op,)).map(drop))
                    }
                    None => print_operation(py, op),
                };
                if let Err(e) = shown {
                    logging::log_exception(py, "display_provisioning_operation_callback", e);
                }
            })
        });
        if let Some(cb) = desired_properties_updated_callback {
            builder = builder.desired_properties_updated_callback(move |desired| {
                if logging::stopped() {
                    return;
                }
                Python::attach(|py| {
                    let called = DesiredProperties::new(py, &desired)
                        .and_then(|d| Py::new(py, d))
                        .and_then(|d| cb.call1(py, (d,)));
                    if let Err(e) = called {
                        logging::log_exception(py, "desired_properties_updated_callback", e);
                    }
                })
            });
        }
        if let Some(cb) = connection_event_callback {
            builder = builder.connection_event_callback(move |event| {
                if logging::stopped() {
                    return;
                }
                Python::attach(|py| {
                    let called = Py::new(py, ConnectionEvent::from(event)).and_then(|e| cb.call1(py, (e,)));
                    if let Err(e) = called {
                        logging::log_exception(py, "connection_event_callback", e);
                    }
                })
            });
        }
        match (allow_remote_access, remote_access_ports) {
            (true, Some(ports)) => builder = builder.allow_remote_access_ports(ports),
            (true, None) => builder = builder.allow_remote_access_all_ports(),
            (false, _) => {}
        }
        for (name, handler) in direct_method_handlers.into_iter().flatten() {
            let method = name.clone();
            builder = builder.direct_method_handler(name, move |call| call_method_handler(&method, &handler, &call));
        }
        let client = Arc::new(run_interruptible(py, builder.start())?);
        register(&client);
        Ok(DeviceClient { client, logger: Default::default(), inbox: Default::default(), pid: std::process::id() })
    }

    /// (Beyond the reference) Start applying the software updates the Platform asks for (see
    /// `UpdateAgent`): ``install(update, path)`` gets the verified artifact and returns whether
    /// the device must reboot; ``confirm(update)`` (optional) is the health check of the new
    /// version, ``rollback(update)`` restores the previous one; each raises to fail. ``update`` is
    /// a dict with ``id``, ``version``, ``size`` and ``sha256``. With ``public_key`` (64
    /// hexadecimal digits, Ed25519), only manifests signed with it are applied.
    #[pyo3(signature = (install, rollback, confirm=None, public_key=None, confirm_timeout=300.0, checkpoint_bytes=1048576))]
    #[allow(clippy::too_many_arguments)]
    fn start_update_agent(
        &self,
        py: Python<'_>,
        install: Py<PyAny>,
        rollback: Py<PyAny>,
        confirm: Option<Py<PyAny>>,
        public_key: Option<String>,
        confirm_timeout: f64,
        checkpoint_bytes: u64,
    ) -> PyResult<crate::updates::UpdateAgent> {
        same_process(self.pid)?;
        crate::updates::start(
            py,
            &self.client,
            install,
            rollback,
            confirm,
            public_key,
            confirm_timeout,
            checkpoint_bytes,
        )
    }

    /// The client's `DeviceLogger` (for `LogHandler`), started at the first call.
    fn _device_logger(&self, py: Python<'_>) -> PyResult<Py<crate::device_logs::PyDeviceLogger>> {
        same_process(self.pid)?;
        if let Some(logger) = self.logger.get() {
            return Ok(logger.clone_ref(py));
        }
        let logger = Py::new(py, crate::device_logs::start(py, &self.client)?)?;
        Ok(self.logger.get_or_init(|| logger).clone_ref(py))
    }

    /// (Read-only) The ID of the Workspace to which the Device belongs.
    #[getter]
    fn workspace_id(&self) -> &str {
        self.client.workspace_id()
    }

    /// (Read-only) The Device ID (may differ from the requested one if the technician overrode it).
    #[getter]
    fn device_id(&self) -> &str {
        self.client.device_id()
    }

    /// Create a `StreamSender` for sending Messages to a Stream that is contained in a Stream Group.
    #[pyo3(
        signature = (stream_group=None, stream=None, compression=Compression::Uncompressed),
        // `inspect` accepts only literal defaults; None means UNCOMPRESSED (as in the official package).
        text_signature = "(self, /, stream_group=None, stream=None, compression=None)"
    )]
    fn create_stream_sender(
        &self,
        stream_group: Option<String>,
        stream: Option<String>,
        compression: Option<Compression>,
    ) -> PyResult<StreamSender> {
        same_process(self.pid)?;
        let compression = compression.unwrap_or(Compression::Uncompressed);
        let sender = self
            .client
            .create_stream_sender(stream_group.as_deref(), stream.as_deref(), compression.into())
            .map_err(to_py)?;
        Ok(StreamSender { sender, pid: self.pid })
    }

    /// The number of Messages persisted in the local database file but not yet sent to the Platform.
    #[getter]
    fn pending_messages_count(&self) -> u64 {
        self.client.pending_messages_count()
    }

    /// (Read-only) A snapshot of the client (`ClientStats`): queue, deliveries, connection and
    /// enqueue-to-acknowledgement latency. Beyond the reference.
    #[getter]
    fn stats(&self) -> crate::types::ClientStats {
        self.client.stats().into()
    }

    /// (Read-only) The number of Messages the Platform refused for good since the start (e.g. a
    /// large Message whose upload was answered 413); they leave the queue, the rest keeps flowing.
    #[getter]
    fn refused_messages_count(&self) -> u64 {
        self.client.refused_messages_count()
    }

    /// Block the current thread until all the Messages that have been previously enqueued are sent.
    fn wait_enqueued_messages_sent(&self, py: Python<'_>) -> PyResult<()> {
        same_process(self.pid)?;
        let client = self.client.clone();
        run_interruptible(py, async move { client.wait_enqueued_messages_sent().await })
    }

    /// Get the current Desired Properties.
    fn get_desired_properties(&self, py: Python<'_>) -> PyResult<DesiredProperties> {
        same_process(self.pid)?;
        DesiredProperties::new(py, &self.client.get_desired_properties())
    }

    /// Get the current Desired Properties if their version is higher than `version` or if
    /// `version` is None. Otherwise, return None.
    #[pyo3(signature = (version=None))]
    fn get_desired_properties_if_newer(
        &self,
        py: Python<'_>,
        version: Option<i64>,
    ) -> PyResult<Option<DesiredProperties>> {
        same_process(self.pid)?;
        // A negative version is older than any: the current properties are returned.
        let version = version.and_then(|v| u64::try_from(v).ok());
        self.client.get_desired_properties_if_newer(version).map(|d| DesiredProperties::new(py, &d)).transpose()
    }

    /// (Beyond the reference) The next cloud-to-device message from the device's durable inbox,
    /// waiting at most `timeout` seconds (`None`: until one comes); `None` when none came in
    /// time. A message stays in the inbox, and is returned again after a restart, until its
    /// `complete()` is called.
    #[pyo3(signature = (timeout=None))]
    fn receive_c2d_message(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<crate::types::C2dMessage>> {
        same_process(self.pid)?;
        let timeout = match timeout {
            Some(t) if !(t.is_finite() && t >= 0.0) => {
                return Err(pyo3::exceptions::PyValueError::new_err("timeout must be a non-negative number of seconds"))
            }
            Some(t) => Some(Duration::from_secs_f64(t.min(1e9))),
            None => None,
        };
        let (client, inbox) = (self.client.clone(), self.inbox.clone());
        let next = run_interruptible(py, async move {
            let mut inbox = inbox.lock().await;
            let view = inbox.get_or_insert_with(|| client.c2d_messages());
            match timeout {
                Some(t) => view.next_timeout(t).await,
                None => view.next().await.map(Some),
            }
        })?;
        next.map(|m| crate::types::C2dMessage::new(py, m)).transpose()
    }

    /// Enqueue an update of the Reported Properties to be sent to the Platform (persisted first).
    fn update_reported_properties(&self, py: Python<'_>, properties: &Bound<'_, PyDict>) -> PyResult<()> {
        same_process(self.pid)?;
        let value = dict_to_json(py, properties)?;
        let client = self.client.clone();
        run_detached(py, async move { client.update_reported_properties(value).await })
    }

    /// (Read-only) Whether there are any updates to Reported Properties yet to be sent.
    #[getter]
    fn any_pending_reported_properties_updates(&self) -> bool {
        self.client.any_pending_reported_properties_updates()
    }

    /// Stop the background communication and release the database file. Messages not sent yet
    /// stay in the database and are sent by the next client started with it. Called by `with`
    /// blocks and at interpreter exit; calling it again does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        same_process(self.pid)?;
        let client = self.client.clone();
        run_interruptible(py, async move { client.close().await })
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (_exc_type=None, _exc_value=None, _traceback=None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: Option<Py<PyAny>>,
        _exc_value: Option<Py<PyAny>>,
        _traceback: Option<Py<PyAny>>,
    ) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!("<DeviceClient workspace_id={:?} device_id={:?}>", self.client.workspace_id(), self.client.device_id())
    }
}

/// A sender of Messages to a Stream. Create it with `DeviceClient.create_stream_sender`.
#[pyclass(frozen, module = "spotflow_device", name = "StreamSender")]
pub struct StreamSender {
    sender: spotflow_device::StreamSender,
    /// The process that started its client (see `same_process`).
    pid: u32,
}

fn payload_bytes(payload: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(b) = payload.cast::<PyBytes>() {
        Ok(b.as_bytes().to_vec())
    } else if let Ok(s) = payload.cast::<PyString>() {
        Ok(s.to_cow()?.as_bytes().to_vec())
    } else if let Ok(b) = payload.cast::<PyByteArray>() {
        Ok(b.to_vec())
    } else {
        Err(PyTypeError::new_err(format!("payload must be str or bytes, not {}", payload.get_type().name()?)))
    }
}

fn message(
    payload: &Bound<'_, PyAny>,
    batch_id: Option<String>,
    message_id: Option<String>,
    batch_slice_id: Option<String>,
    chunk_id: Option<String>,
) -> PyResult<Message> {
    Ok(Message::new(payload_bytes(payload)?).with_ids(batch_id, message_id, batch_slice_id, chunk_id))
}

#[pymethods]
impl StreamSender {
    /// Send a Message to the Platform: blocks until it (and every Message enqueued before it) is sent.
    #[pyo3(signature = (payload, batch_id=None, message_id=None, batch_slice_id=None, chunk_id=None))]
    fn send_message(
        &self,
        py: Python<'_>,
        payload: &Bound<'_, PyAny>,
        batch_id: Option<String>,
        message_id: Option<String>,
        batch_slice_id: Option<String>,
        chunk_id: Option<String>,
    ) -> PyResult<()> {
        same_process(self.pid)?;
        let message = message(payload, batch_id, message_id, batch_slice_id, chunk_id)?;
        let sender = self.sender.clone();
        run_interruptible(py, async move { sender.send_message(message).await })
    }

    /// Enqueue a Message to be sent to the Platform: returns once it is saved in the local database file.
    #[pyo3(signature = (payload, batch_id=None, message_id=None, batch_slice_id=None, chunk_id=None))]
    fn enqueue_message(
        &self,
        py: Python<'_>,
        payload: &Bound<'_, PyAny>,
        batch_id: Option<String>,
        message_id: Option<String>,
        batch_slice_id: Option<String>,
        chunk_id: Option<String>,
    ) -> PyResult<()> {
        same_process(self.pid)?;
        let message = message(payload, batch_id, message_id, batch_slice_id, chunk_id)?;
        run_detached(py, self.sender.enqueue_message(message))
    }

    /// Enqueue the manual completion of the current Batch.
    fn enqueue_batch_completion(&self, py: Python<'_>, batch_id: String) -> PyResult<()> {
        same_process(self.pid)?;
        run_detached(py, self.sender.enqueue_batch_completion(&batch_id))
    }

    /// Enqueue the manual completion of the current Message (with Message Chunking).
    fn enqueue_message_completion(&self, py: Python<'_>, batch_id: String, message_id: String) -> PyResult<()> {
        same_process(self.pid)?;
        run_detached(py, self.sender.enqueue_message_completion(&batch_id, &message_id))
    }
}

/// Runs a Python direct-method handler: it is given the payload as a Python object (`json.loads`;
/// `None` when empty) and returns `(status, body)` (status an integer from 100 to 599) or just
/// `body` (status 200), `body` anything `json.dumps` takes. An exception, or an invalid answer,
/// is logged and answers `500` with its text.
fn call_method_handler(
    method: &str,
    handler: &Py<PyAny>,
    call: &spotflow_device::MethodCall,
) -> spotflow_device::MethodResponse {
    use spotflow_device::MethodResponse;
    if logging::stopped() {
        return MethodResponse::error(503, "the Python interpreter is shutting down");
    }
    Python::attach(|py| {
        let answered = (|| -> PyResult<MethodResponse> {
            let json = py.import("json")?;
            let text = String::from_utf8_lossy(call.payload());
            let payload = if text.trim().is_empty() {
                py.None().into_bound(py)
            } else {
                json.call_method1("loads", (text.as_ref(),))?
            };
            let result = handler.bind(py).call1((payload,))?;
            // A tuple is `(status, body)`; its status must be an integer from 100 to 599, or the
            // handler's author gets an error (logged, the caller answered 500), never a body
            // that silently swallowed the status.
            let (status, body) = match result.cast::<pyo3::types::PyTuple>() {
                Ok(tuple) if tuple.len() == 2 => {
                    let status = tuple.get_item(0)?;
                    let valid = status
                        .extract::<i64>()
                        .ok()
                        .filter(|_| !status.is_instance_of::<pyo3::types::PyBool>())
                        .and_then(|s| u16::try_from(s).ok())
                        .filter(|s| spotflow_device::METHOD_STATUSES.contains(s));
                    let Some(status) = valid else {
                        return Err(pyo3::exceptions::PyValueError::new_err(format!(
                            "the status of (status, body) must be an integer from 100 to 599, not {}",
                            status.repr()?
                        )));
                    };
                    (status, tuple.get_item(1)?)
                }
                Ok(tuple) => {
                    return Err(PyTypeError::new_err(format!(
                        "a handler returns (status, body) or just body, not a tuple of {} items",
                        tuple.len()
                    )))
                }
                Err(_) => (200, result),
            };
            let body: String = json.call_method1("dumps", (body,))?.extract()?;
            let body = serde_json::from_str(&body).map_err(|e| PyTypeError::new_err(e.to_string()))?;
            Ok(MethodResponse { status, body })
        })();
        answered.unwrap_or_else(|e| {
            let text = e.to_string();
            logging::log_exception(py, &format!("the handler of the direct method {method:?}"), e);
            MethodResponse::error(500, text)
        })
    })
}
