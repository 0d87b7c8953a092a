//! Device logs from Python: `LogHandler`, a `logging.Handler` that gives records to the client's
//! `DeviceLogger` (the durable journal and queue of `spotflow_device::logs`).

use std::sync::Arc;

use pyo3::prelude::*;
use spotflow_device::logs::{DeviceLogger, LogLevel};

use crate::run_interruptible;

/// The Python side of `LogHandler` (a `logging.Handler` can only be subclassed in Python).
const HANDLER: &std::ffi::CStr = cr#"
import logging

class LogHandler(logging.Handler):
    """(Beyond the reference) A ``logging.Handler`` that sends records to the Platform through the
    client's durable queue: each record is journaled before ``emit`` returns (it survives the
    process being killed) and sent in batches of the ``device-logs`` stream, across outages and
    restarts. It never waits on the network. The SDK's own records (logger ``spotflow_device``)
    are never taken. The Platform can change the minimum level through the desired property
    ``spotflowLogLevel``."""

    def __init__(self, client, level=logging.NOTSET):
        super().__init__(level)
        self._logger = client._device_logger()

    def emit(self, record):
        if record.name == "spotflow_device" or record.name.startswith("spotflow_device."):
            return
        try:
            self._logger.log(record.levelno, record.name, self.format(record))
        except Exception:
            self.handleError(record)

    def flush(self):
        """Move every record taken so far into the durable queue now."""
        self._logger.flush()
"#;

/// Adds `LogHandler` to the module.
pub fn install(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let code = PyModule::from_code(py, HANDLER, c"spotflow_device_logs.py", c"spotflow_device._logs")?;
    let handler = code.getattr("LogHandler")?;
    handler.setattr("__module__", "spotflow_device")?;
    m.add("LogHandler", handler)?;
    Ok(())
}

/// A client's `DeviceLogger`, as `LogHandler` uses it.
#[pyclass(frozen, module = "spotflow_device", name = "_DeviceLogger")]
pub struct PyDeviceLogger {
    pub(crate) logger: Arc<DeviceLogger>,
}

fn level(levelno: i64) -> LogLevel {
    match levelno {
        40.. => LogLevel::Error,
        30..=39 => LogLevel::Warn,
        20..=29 => LogLevel::Info,
        10..=19 => LogLevel::Debug,
        _ => LogLevel::Trace,
    }
}

#[pymethods]
impl PyDeviceLogger {
    /// Takes a record (`levelno` as in `logging`); whether it was taken.
    fn log(&self, levelno: i64, name: &str, message: &str) -> bool {
        self.logger.log(level(levelno), name, message)
    }

    /// Moves every record taken so far into the durable queue.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let logger = self.logger.clone();
        run_interruptible(py, async move { logger.flush().await })
    }

    /// (taken, dropped by the rate limit, dropped by the budget, dropped by the disk).
    #[getter]
    fn counts(&self) -> (u64, u64, u64, u64) {
        let s = self.logger.stats();
        (s.taken, s.dropped_rate_limit, s.dropped_budget, s.dropped_io)
    }
}

/// Starts the client's logger (once per client).
pub fn start(py: Python<'_>, client: &Arc<spotflow_device::DeviceClient>) -> PyResult<PyDeviceLogger> {
    let client = client.clone();
    let logger = run_interruptible(py, async move { DeviceLogger::start(&client, Default::default()).await })?;
    Ok(PyDeviceLogger { logger: Arc::new(logger) })
}
