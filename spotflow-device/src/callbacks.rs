//! Where the desired-properties callbacks run: a thread of their own per client, or one for all
//! the clients of a [`crate::Gateway`].

use spotflow_core::{DesiredState, Error, Result};
use tracing::warn;

use crate::DesiredPropertiesCallback;

/// A thread that runs desired-properties callbacks in the order they come: one per client, or
/// one for all the clients of a [`crate::Gateway`]. It ends when every sender is gone. Each call
/// runs inside the span of the client it is for (naming its device), so what the callback logs,
/// and a panic of it, say which device they are about.
#[derive(Clone)]
pub(crate) struct CallbackThread {
    tx: std::sync::mpsc::Sender<CallbackCall>,
}

/// A desired-properties callback to call, with its argument and its client's span.
struct CallbackCall {
    callback: DesiredPropertiesCallback,
    state: DesiredState,
    span: tracing::Span,
}

impl CallbackThread {
    pub(crate) fn spawn() -> Result<CallbackThread> {
        let (tx, rx) = std::sync::mpsc::channel::<CallbackCall>();
        std::thread::Builder::new()
            .name("spotflow-desired-callback".into())
            .spawn(move || {
                for CallbackCall { callback, state, span } in rx {
                    let _entered = span.enter();
                    let version = state.version;
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| callback(state))).is_err() {
                        warn!(version, "desired properties callback panicked");
                    }
                }
            })
            .map_err(|source| Error::System { what: "the desired-properties callback thread", source })?;
        Ok(CallbackThread { tx })
    }
}

/// Where a client's worker hands its new desired properties: its callback, run on a
/// [`CallbackThread`].
pub(crate) struct DesiredSink {
    thread: CallbackThread,
    callback: DesiredPropertiesCallback,
}

impl DesiredSink {
    pub(crate) fn new(thread: CallbackThread, callback: DesiredPropertiesCallback) -> DesiredSink {
        DesiredSink { thread, callback }
    }

    /// Queues a call of the callback (nothing when the thread is gone), in the current span (the
    /// client's, as the worker calls this).
    pub(crate) fn send(&self, state: DesiredState) {
        let call = CallbackCall { callback: self.callback.clone(), state, span: tracing::Span::current() };
        let _ = self.thread.tx.send(call);
    }
}
