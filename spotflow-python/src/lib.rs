//! `spotflow_device`: the Python face of the Spotflow device SDK, on the Rust core.
//!
//! The module exposes the reference API verbatim (`DeviceClient.start`, `StreamSender`,
//! `Compression`, `ProvisioningOperation`, `DesiredProperties`, `SpotflowError`). Every blocking
//! call releases the GIL and wakes up every 100 ms to let `Ctrl+C` raise `KeyboardInterrupt`;
//! background events go to the standard `logging` module under the `spotflow_device` logger.

use std::future::Future;
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

mod client;
mod device_logs;
mod logging;
mod types;
mod updates;

create_exception!(
    spotflow_device,
    SpotflowError,
    PyException,
    "Raised by any function, method or property that cannot continue because of an error. Errors \
     in the background communication are logged with the `spotflow_device` logger."
);

/// Converts an SDK error into `SpotflowError` with the SDK's message.
pub(crate) fn to_py(e: spotflow_device::Error) -> PyErr {
    SpotflowError::new_err(e.to_string())
}

/// The runtime shared by every client of the process (two worker threads). A child made by
/// `os.fork()` has none of the parent's threads: it gets a runtime of its own (the parent's is
/// left alone, as its threads do not exist in the child).
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::Mutex<Option<(u32, &'static tokio::runtime::Runtime)>> = std::sync::Mutex::new(None);
    let pid = std::process::id();
    let mut slot = spotflow_core::lock(&RUNTIME);
    match *slot {
        Some((owner, rt)) if owner == pid => rt,
        _ => {
            let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("spotflow")
                    .enable_all()
                    .build()
                    .expect("cannot start the spotflow_device runtime threads"),
            ));
            *slot = Some((pid, rt));
            rt
        }
    }
}

/// Refuses to use a client in another process than the one that started it: after `os.fork()`
/// the child has none of the client's threads (its calls would hang), so it must start its own.
pub(crate) fn same_process(started_in: u32) -> PyResult<()> {
    let pid = std::process::id();
    if pid == started_in {
        return Ok(());
    }
    Err(SpotflowError::new_err(format!(
        "this client was started in process {started_in}, not in this one ({pid}): after os.fork() \
         a client cannot be used in the child; call DeviceClient.start in the process that uses it"
    )))
}

/// Runs a short, bounded operation (an enqueue, a property update) without the GIL.
pub(crate) fn run_detached<F, T>(py: Python<'_>, f: F) -> PyResult<T>
where
    F: Future<Output = spotflow_device::Result<T>> + Send,
    T: Send,
{
    py.detach(|| block_on(f)).map_err(to_py)
}

/// `block_on` that also works when called from one of the runtime's own threads (a provisioning
/// display callback calling back into the SDK).
fn block_on<F: Future>(f: F) -> F::Output {
    if tokio::runtime::Handle::try_current().is_ok() {
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
    } else {
        // A Python thread waits for the answer anyway: the store may do the work on it.
        spotflow_device::run_as_blocking_caller(|| runtime().block_on(f))
    }
}

/// Runs a possibly long operation (waiting for approval, for acknowledgements) without the GIL,
/// checking for signals every 100 ms: `Ctrl+C` cancels the operation and raises
/// `KeyboardInterrupt`.
pub(crate) fn run_interruptible<F, T>(py: Python<'_>, f: F) -> PyResult<T>
where
    F: Future<Output = spotflow_device::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let mut task = runtime().spawn(f);
    loop {
        let polled =
            py.detach(|| block_on(async { tokio::time::timeout(Duration::from_millis(100), &mut task).await }));
        match polled {
            Ok(Ok(result)) => return result.map_err(to_py),
            Ok(Err(join)) => return Err(SpotflowError::new_err(format!("internal error: {join}"))),
            Err(_elapsed) => {
                if let Err(interrupt) = py.check_signals() {
                    task.abort();
                    return Err(interrupt);
                }
            }
        }
    }
}

/// Closes every client still open and stops forwarding logs; registered with `atexit`.
#[pyfunction]
fn _shutdown(py: Python<'_>) {
    client::close_all(py);
    logging::stop(py);
}

#[pymodule]
#[pyo3(name = "spotflow_device")]
fn spotflow_device_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("SpotflowError", py.get_type::<SpotflowError>())?;
    m.add_class::<types::Compression>()?;
    m.add_class::<types::ProvisioningOperation>()?;
    m.add_class::<types::DesiredProperties>()?;
    m.add_class::<types::ClientStats>()?;
    m.add_class::<types::ConnectionEvent>()?;
    m.add_class::<types::C2dMessage>()?;
    m.add_class::<updates::UpdateAgent>()?;
    m.add_class::<client::DeviceClient>()?;
    m.add_class::<client::StreamSender>()?;
    device_logs::install(m)?;
    m.add_function(wrap_pyfunction!(_shutdown, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    logging::install(py)?;
    let shutdown = m.getattr("_shutdown")?;
    py.import("atexit")?.call_method1("register", (shutdown,))?;
    Ok(())
}
