//! Software updates from Python: `DeviceClient.start_update_agent(install, rollback, ...)` and the
//! `UpdateAgent` it returns (`spotflow_device::update`). The application's callables run on the
//! runtime's blocking threads with the GIL taken for each call.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use spotflow_device::update::{
    Blocking, BlockingUpdateHandler, Installed, UpdateAgent as RustAgent, UpdateInfo, UpdateOptions, UpdateRecord,
};

use crate::run_interruptible;
use crate::types::json_to_py;

/// The application's callables.
struct PyHandler {
    install: Py<PyAny>,
    confirm: Option<Py<PyAny>>,
    rollback: Py<PyAny>,
}

fn info_dict<'py>(py: Python<'py>, u: &UpdateInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("id", &u.id)?;
    d.set_item("version", &u.version)?;
    d.set_item("size", u.size)?;
    d.set_item("sha256", &u.sha256)?;
    Ok(d)
}

/// An exception raised by a callable, as the update's failure detail.
fn detail(py: Python<'_>, e: PyErr) -> String {
    let text = e.value(py).str().map(|s| s.to_string()).unwrap_or_default();
    let kind = e.get_type(py).name().map(|n| n.to_string()).unwrap_or_else(|_| "Exception".into());
    if text.is_empty() {
        kind
    } else {
        format!("{kind}: {text}")
    }
}

impl BlockingUpdateHandler for PyHandler {
    fn install(&self, update: &UpdateInfo, artifact: &Path) -> Result<Installed, String> {
        Python::attach(|py| {
            let result = info_dict(py, update)
                .and_then(|u| self.install.call1(py, (u, artifact.to_string_lossy().into_owned())))
                .and_then(|r| r.is_truthy(py));
            result.map(|needs_reboot| Installed { needs_reboot }).map_err(|e| detail(py, e))
        })
    }
    fn confirm(&self, update: &UpdateInfo) -> Result<(), String> {
        let Some(confirm) = &self.confirm else { return Ok(()) };
        Python::attach(|py| {
            info_dict(py, update).and_then(|u| confirm.call1(py, (u,))).map(drop).map_err(|e| detail(py, e))
        })
    }
    fn rollback(&self, update: &UpdateInfo) -> Result<(), String> {
        Python::attach(|py| {
            info_dict(py, update).and_then(|u| self.rollback.call1(py, (u,))).map(drop).map_err(|e| detail(py, e))
        })
    }
}

/// (Beyond the reference) Applies the software updates the Platform asks for (the desired
/// property ``spotflowUpdate``): downloads the artifact (resuming after outages and restarts),
/// checks its SHA-256 and signature, calls ``install``, then ``confirm`` after the reboot the
/// install asked for, and ``rollback`` when the check fails. Started by
/// ``DeviceClient.start_update_agent``.
#[pyclass(frozen, module = "spotflow_device")]
pub struct UpdateAgent {
    agent: Arc<RustAgent>,
}

fn state(py: Python<'_>, record: &UpdateRecord) -> PyResult<Py<PyAny>> {
    json_to_py(py, &record.reported())
}

#[pymethods]
impl UpdateAgent {
    /// The update's state, as reported to the Platform: a dict with ``id``, ``version``,
    /// ``state`` (``idle``, ``downloading``, ``verifying``, ``ready``, ``installing``,
    /// ``rebooting``, ``confirming``, ``succeeded``, ``failed``, ``rolledBack``, ``cancelled``),
    /// ``bytes``, ``size``, ``error`` (``{"reason", "detail"}`` or ``None``) and ``queued``.
    #[getter]
    fn state(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        state(py, &self.agent.record())
    }

    /// Waits until an update ends (the one with ``update_id`` if given) and returns its state;
    /// raises ``SpotflowError`` after ``timeout`` seconds.
    #[pyo3(signature = (update_id=None, timeout=None))]
    fn wait_until_finished(
        &self,
        py: Python<'_>,
        update_id: Option<String>,
        timeout: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        let timeout = match timeout {
            Some(t) if !(t.is_finite() && t >= 0.0) => {
                return Err(pyo3::exceptions::PyValueError::new_err("timeout must be a non-negative number of seconds"))
            }
            Some(t) => Duration::from_secs_f64(t.min(1e9)),
            None => Duration::from_secs(1_000_000_000),
        };
        let agent = self.agent.clone();
        let record = run_interruptible(py, async move {
            agent
                .wait_for(timeout, |r| {
                    let ours = update_id.as_ref().is_none_or(|id| r.manifest.as_ref().is_some_and(|m| &m.id == id));
                    ours && r.manifest.is_some() && r.phase.is_final()
                })
                .await
        })?;
        state(py, &record)
    }

    /// Stops the agent (what it saved stays: a later start goes on from there).
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let agent = self.agent.clone();
        run_interruptible(py, async move {
            agent.stop().await;
            Ok(())
        })
    }
}

/// `DeviceClient.start_update_agent`.
#[allow(clippy::too_many_arguments)]
pub fn start(
    py: Python<'_>,
    client: &Arc<spotflow_device::DeviceClient>,
    install: Py<PyAny>,
    rollback: Py<PyAny>,
    confirm: Option<Py<PyAny>>,
    public_key: Option<String>,
    confirm_timeout: f64,
    checkpoint_bytes: u64,
) -> PyResult<UpdateAgent> {
    for (name, f) in [("install", Some(&install)), ("rollback", Some(&rollback)), ("confirm", confirm.as_ref())] {
        if let Some(f) = f {
            if !f.bind(py).is_callable() {
                return Err(pyo3::exceptions::PyTypeError::new_err(format!("{name} must be callable")));
            }
        }
    }
    if !(confirm_timeout.is_finite() && confirm_timeout > 0.0) {
        return Err(pyo3::exceptions::PyValueError::new_err("confirm_timeout must be a positive number of seconds"));
    }
    let mut options = UpdateOptions::default();
    if let Some(key) = public_key {
        options = options.with_public_key_hex(&key).map_err(crate::to_py)?;
    }
    options.confirm_timeout = Duration::from_secs_f64(confirm_timeout.min(1e9));
    options.checkpoint_bytes = checkpoint_bytes;
    let handler = Arc::new(Blocking(Arc::new(PyHandler { install, confirm, rollback })));
    let client = client.clone();
    let agent = run_interruptible(py, async move { RustAgent::start_with(&client, options, handler).await })?;
    Ok(UpdateAgent { agent: Arc::new(agent) })
}
