//! The value types of the module: `Compression`, `ProvisioningOperation`, `DesiredProperties`,
//! and the conversions between JSON and Python objects.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use serde_json::Value;

use crate::SpotflowError;

/// The compression to use for sending a message.
#[pyclass(eq, eq_int, frozen, hash, from_py_object, module = "spotflow_device", name = "Compression")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Don't compress the message.
    #[pyo3(name = "UNCOMPRESSED")]
    Uncompressed = 0,
    /// Compress the message with the fastest settings (Brotli quality 1, `content-encoding=br`,
    /// readable by the Spotflow platform).
    #[pyo3(name = "FASTEST")]
    Fastest = 1,
    /// Compress the message with the settings that produce the smallest size (Brotli quality 11,
    /// readable by the Spotflow platform); may be significantly slower.
    #[pyo3(name = "SMALLEST_SIZE")]
    SmallestSize = 2,
    /// Beyond the reference: the LZ4 frame format (`content-encoding=lz4`). The Spotflow platform
    /// is only known to decode Brotli: use it only with a receiver that decodes LZ4.
    #[pyo3(name = "LZ4")]
    Lz4 = 3,
    /// Beyond the reference: Zstandard at level 3 (`content-encoding=zstd`). The Spotflow platform
    /// is only known to decode Brotli: use it only with a receiver that decodes Zstandard.
    #[pyo3(name = "ZSTD")]
    Zstd = 4,
}

#[pymethods]
impl Compression {
    fn __repr__(&self) -> String {
        format!("<Compression.{}: {}>", self.name(), *self as u8)
    }

    fn __str__(&self) -> String {
        format!("Compression.{}", self.name())
    }
}

impl Compression {
    fn name(self) -> &'static str {
        match self {
            Compression::Uncompressed => "UNCOMPRESSED",
            Compression::Fastest => "FASTEST",
            Compression::SmallestSize => "SMALLEST_SIZE",
            Compression::Lz4 => "LZ4",
            Compression::Zstd => "ZSTD",
        }
    }
}

impl From<Compression> for spotflow_device::Compression {
    fn from(c: Compression) -> Self {
        match c {
            Compression::Uncompressed => spotflow_device::Compression::Uncompressed,
            Compression::Fastest => spotflow_device::Compression::Fastest,
            Compression::SmallestSize => spotflow_device::Compression::SmallestSize,
            Compression::Lz4 => spotflow_device::Compression::Lz4,
            Compression::Zstd => {
                spotflow_device::Compression::Zstd { level: spotflow_device::Compression::ZSTD_DEFAULT_LEVEL }
            }
        }
    }
}

/// The summary of an ongoing Provisioning Operation, given to the
/// `display_provisioning_operation_callback` of `DeviceClient.start`.
#[pyclass(frozen, get_all, module = "spotflow_device", name = "ProvisioningOperation")]
pub struct ProvisioningOperation {
    /// The ID of this Provisioning Operation.
    pub id: String,
    /// The verification code of this Provisioning Operation.
    pub verification_code: String,
    /// The expiration time of this Provisioning Operation (RFC 3339).
    pub expiration_time: String,
}

impl From<&spotflow_device::ProvisioningOperation> for ProvisioningOperation {
    fn from(op: &spotflow_device::ProvisioningOperation) -> Self {
        ProvisioningOperation {
            id: op.id.clone(),
            verification_code: op.verification_code.clone(),
            expiration_time: op.expiration_time_rfc3339(),
        }
    }
}

#[pymethods]
impl ProvisioningOperation {
    fn __repr__(&self) -> String {
        format!(
            "ProvisioningOperation(id={:?}, verification_code={:?}, expiration_time={:?})",
            self.id, self.verification_code, self.expiration_time
        )
    }
}

/// A wrapper of Desired Properties: `version` and `values` (a dict).
#[pyclass(frozen, get_all, module = "spotflow_device", name = "DesiredProperties")]
pub struct DesiredProperties {
    /// The version of the current properties.
    pub version: u64,
    /// The dictionary containing the values of the individual properties.
    pub values: Py<PyDict>,
}

impl DesiredProperties {
    pub fn new(py: Python<'_>, state: &spotflow_device::DesiredProperties) -> PyResult<Self> {
        let values = PyDict::new(py);
        for (k, v) in &state.values {
            values.set_item(k, json_to_py(py, v)?)?;
        }
        Ok(DesiredProperties { version: state.version, values: values.unbind() })
    }
}

#[pymethods]
impl DesiredProperties {
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("DesiredProperties(version={}, values={})", self.version, self.values.bind(py).repr()?))
    }
}

/// What happened to the connection to the Platform (`connection_event_callback`): `kind` is
/// `"connecting"`, `"connected"`, `"disconnected"`, `"refused"` or `"closed"`; the other
/// attributes are `None` where they do not apply.
#[pyclass(frozen, get_all, module = "spotflow_device", name = "ConnectionEvent")]
pub struct ConnectionEvent {
    /// `"connecting"`, `"connected"`, `"disconnected"`, `"refused"` or `"closed"`.
    pub kind: &'static str,
    /// The attempt's number since the start (`"connecting"`).
    pub attempt: Option<u64>,
    /// Since when (Unix timestamp) the client is connected (`"connected"`).
    pub since: Option<f64>,
    /// Why (`"disconnected"`, `"refused"`): `"network"`, `"tls"`, `"stalled"`, `"authentication"`,
    /// `"platform"` or `"credential_renewal"`.
    pub reason: Option<&'static str>,
    /// The reason in words.
    pub message: Option<String>,
    /// Whether trying again may succeed without anything else changing.
    pub retry_helps: Option<bool>,
    /// Seconds until the client tries again (`"disconnected"`, `"refused"`).
    pub retry_in: Option<f64>,
    /// Whether retrying with the same credentials cannot succeed (`"refused"`).
    pub permanent: Option<bool>,
}

impl From<&spotflow_device::ConnectionEvent> for ConnectionEvent {
    fn from(event: &spotflow_device::ConnectionEvent) -> Self {
        use spotflow_device::{ConnectionEvent as E, DisconnectReason as R};
        let mut out = ConnectionEvent {
            kind: "closed",
            attempt: None,
            since: None,
            reason: None,
            message: None,
            retry_helps: None,
            retry_in: None,
            permanent: None,
        };
        let set_reason = |out: &mut ConnectionEvent, reason: &R, retry_in: &std::time::Duration| {
            out.reason = Some(match reason {
                R::Network(_) => "network",
                R::Tls(_) => "tls",
                R::Stalled(_) => "stalled",
                R::Authentication(_) => "authentication",
                R::CredentialRenewal => "credential_renewal",
                _ => "platform",
            });
            out.message = Some(reason.to_string());
            out.retry_helps = Some(reason.retry_helps());
            out.retry_in = Some(retry_in.as_secs_f64());
        };
        match event {
            E::Connecting { attempt } => {
                out.kind = "connecting";
                out.attempt = Some(*attempt);
            }
            E::Connected { since } => {
                out.kind = "connected";
                out.since = Some(since.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()));
            }
            E::Disconnected { reason, retry_in } => {
                out.kind = "disconnected";
                set_reason(&mut out, reason, retry_in);
            }
            E::Refused { reason, permanent, retry_in } => {
                out.kind = "refused";
                set_reason(&mut out, reason, retry_in);
                out.permanent = Some(*permanent);
            }
            _ => {}
        }
        out
    }
}

#[pymethods]
impl ConnectionEvent {
    fn __repr__(&self) -> String {
        match (self.reason, &self.message) {
            (Some(reason), Some(message)) => {
                format!("ConnectionEvent(kind={:?}, reason={reason:?}, message={message:?})", self.kind)
            }
            _ => format!("ConnectionEvent(kind={:?})", self.kind),
        }
    }
}

/// A snapshot of the client: queue, deliveries, connection and latency (`DeviceClient.stats`).
/// Durations are in seconds (float), times are Unix timestamps (float).
#[pyclass(frozen, get_all, module = "spotflow_device", name = "ClientStats")]
pub struct ClientStats {
    /// Messages in the queue (persisted, not yet acknowledged).
    pub queued_messages: u64,
    /// Their size in the queue, in bytes.
    pub queued_bytes: u64,
    /// Seconds the oldest queued message has waited (for one left by an earlier run: since this
    /// start); `None` when the queue is empty.
    pub oldest_queued_age: Option<f64>,
    /// Messages sent and not yet acknowledged.
    pub in_flight: u64,
    /// Messages enqueued since the start.
    pub enqueued_total: u64,
    /// Messages the Platform acknowledged since the start.
    pub delivered_total: u64,
    /// Messages sent again because the connection was lost before their acknowledgement.
    pub redelivered_total: u64,
    /// Messages removed unsent to make room (drop-oldest policy).
    pub dropped_total: u64,
    /// Messages the Platform refused for good.
    pub refused_total: u64,
    /// Enqueue calls that raised an error.
    pub failed_enqueues_total: u64,
    /// `"connecting"`, `"connected"` or `"closed"`.
    pub connection: &'static str,
    /// Since when (Unix timestamp) the connection has been in that state.
    pub connection_since: f64,
    /// Connections made after the first one.
    pub reconnects: u64,
    /// Connection attempts, successful or not.
    pub connection_attempts: u64,
    /// The last error that failed or ended a connection (no credentials in it).
    pub last_connection_error: Option<String>,
    /// Version of the desired properties the client has.
    pub desired_version: Option<u64>,
    /// Version of the reported properties the Platform last told.
    pub reported_version: Option<u64>,
    /// Acknowledgements measured in the latency window (the last 30-60 s).
    pub latency_samples: u64,
    /// Median enqueue-to-acknowledgement latency, in seconds.
    pub latency_p50: Option<f64>,
    /// 90th percentile, in seconds.
    pub latency_p90: Option<f64>,
    /// 99th percentile, in seconds.
    pub latency_p99: Option<f64>,
}

impl From<spotflow_device::Stats> for ClientStats {
    fn from(s: spotflow_device::Stats) -> Self {
        let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64());
        ClientStats {
            queued_messages: s.queued_messages,
            queued_bytes: s.queued_bytes,
            oldest_queued_age: secs(s.oldest_queued_age),
            in_flight: s.in_flight,
            enqueued_total: s.enqueued_total,
            delivered_total: s.delivered_total,
            redelivered_total: s.redelivered_total,
            dropped_total: s.dropped_total,
            refused_total: s.refused_total,
            failed_enqueues_total: s.failed_enqueues_total,
            connection: s.connection.as_str(),
            connection_since: s.connection_since.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
            reconnects: s.reconnects,
            connection_attempts: s.connection_attempts,
            last_connection_error: s.last_connection_error,
            desired_version: s.desired_version,
            reported_version: s.reported_version,
            latency_samples: s.latency.samples,
            latency_p50: secs(s.latency.p50),
            latency_p90: secs(s.latency.p90),
            latency_p99: secs(s.latency.p99),
        }
    }
}

#[pymethods]
impl ClientStats {
    fn __repr__(&self) -> String {
        format!(
            "ClientStats(queued_messages={}, in_flight={}, delivered_total={}, connection='{}', latency_p50={:?})",
            self.queued_messages, self.in_flight, self.delivered_total, self.connection, self.latency_p50
        )
    }
}

/// A JSON value as the Python object `json.loads` would give.
pub fn json_to_py(py: Python<'_>, v: &Value) -> PyResult<Py<PyAny>> {
    Ok(match v {
        Value::Null => py.None(),
        Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any().unbind(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any().unbind()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any().unbind()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any().unbind()
            }
        }
        Value::String(s) => s.into_pyobject(py)?.into_any().unbind(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(json_to_py(py, item)?)?;
            }
            list.into_any().unbind()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, item) in map {
                dict.set_item(k, json_to_py(py, item)?)?;
            }
            dict.into_any().unbind()
        }
    })
}

/// A Python dict as JSON, through the standard `json` module (so that it accepts exactly what
/// `json.dumps` accepts; NaN and infinities are refused, as JSON has none).
pub fn dict_to_json(py: Python<'_>, dict: &Bound<'_, PyDict>) -> PyResult<Value> {
    let kwargs = PyDict::new(py);
    kwargs.set_item("allow_nan", false)?;
    let text: String = py
        .import("json")?
        .call_method("dumps", (dict,), Some(&kwargs))
        .map_err(|e| SpotflowError::new_err(format!("the properties cannot be serialized to JSON: {e}")))?
        .extract()?;
    serde_json::from_str(&text)
        .map_err(|e| SpotflowError::new_err(format!("the properties cannot be serialized to JSON: {e}")))
}

/// (Beyond the reference) A cloud-to-device message from the device's durable inbox.
#[pyclass(frozen, module = "spotflow_device", name = "C2dMessage")]
pub struct C2dMessage {
    inner: spotflow_device::C2dMessage,
    /// The payload.
    #[pyo3(get)]
    payload: Py<PyBytes>,
    /// The properties (the platform's message id is `$.mid`).
    #[pyo3(get)]
    properties: Py<PyDict>,
}

impl C2dMessage {
    pub fn new(py: Python<'_>, inner: spotflow_device::C2dMessage) -> PyResult<Self> {
        let payload = PyBytes::new(py, inner.payload()).unbind();
        let properties = PyDict::new(py);
        for (k, v) in inner.properties() {
            properties.set_item(k, v)?;
        }
        Ok(C2dMessage { inner, payload, properties: properties.unbind() })
    }
}

#[pymethods]
impl C2dMessage {
    /// The platform's id of the message (`$.mid`), if it has one.
    #[getter]
    fn message_id(&self) -> Option<&str> {
        self.inner.message_id()
    }

    /// Remove the message from the inbox: it is never returned again.
    fn complete(&self, py: Python<'_>) -> PyResult<()> {
        let inner = self.inner.clone();
        crate::run_interruptible(py, async move { inner.complete().await })
    }

    fn __repr__(&self) -> String {
        format!("C2dMessage(message_id={:?}, size={})", self.inner.message_id(), self.inner.payload().len())
    }
}
