//! Direct methods: the platform calls a named method of the device and waits for its answer (a
//! status and a JSON body). The application registers a handler per method name; calls of any
//! other method are answered `404`, as the official SDK answers them.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tracing::{error, info, warn, Instrument};

/// Calls handled at the same time at most; a call beyond them is answered `503` at once (never
/// left unanswered).
pub const MAX_RUNNING_METHODS: usize = 50;

/// Largest body of a direct method's answer: the platform's limit for direct-method payloads
/// (128 KiB). A larger answer is not sent (the broker would drop the connection and the caller
/// would wait for nothing): the caller gets `413` with the reason, and the SDK logs an error.
pub const MAX_METHOD_RESPONSE_BYTES: usize = 128 * 1024;

/// The statuses an answer may have (HTTP-like); a handler's answer with another is logged as an
/// error and answered `500`.
pub const METHOD_STATUSES: std::ops::RangeInclusive<u16> = 100..=599;

/// A direct method call as the handler sees it.
#[derive(Debug, Clone)]
pub struct MethodCall {
    method: String,
    payload: Vec<u8>,
}

impl MethodCall {
    /// The method's name.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The payload as the platform sent it.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The payload as JSON (`Null` when it is empty).
    pub fn json(&self) -> std::result::Result<Value, serde_json::Error> {
        if self.payload.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&self.payload)
    }
}

/// The answer to a direct method call: a status (HTTP-like: 200 for success) and a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodResponse {
    /// The status the caller receives.
    pub status: u16,
    /// The body the caller receives.
    pub body: Value,
}

impl MethodResponse {
    /// `200` with `body`.
    pub fn ok(body: Value) -> Self {
        MethodResponse { status: 200, body }
    }

    /// `status` with `{"detail": detail}`, the platform's shape of an error.
    pub fn error(status: u16, detail: impl Into<String>) -> Self {
        MethodResponse { status, body: json!({ "detail": detail.into() }) }
    }

    fn to_bytes(&self) -> Vec<u8> {
        self.body.to_string().into_bytes()
    }
}

/// A direct method's handler. It runs on a thread of Tokio's blocking pool (it may block: a
/// reboot, a flush to disk), at most [`MAX_RUNNING_METHODS`] at once.
pub type MethodHandler = Arc<dyn Fn(MethodCall) -> MethodResponse + Send + Sync>;

/// An answer ready to go: the call's request id, status and body.
/// A direct method's answer, for the connection the call came on.
pub(crate) struct Answer {
    /// The call's request id (it belongs to the connection the call came on).
    pub(crate) request: String,
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

/// The device's handlers and the calls running.
pub(crate) struct Methods {
    handlers: HashMap<String, MethodHandler>,
    running: Arc<Semaphore>,
    answers: mpsc::UnboundedSender<Answer>,
    /// The platform's `!remote-access` method, when the application allows it.
    #[cfg(feature = "ws")]
    pub(crate) remote: Option<Arc<crate::remote::RemoteAccess>>,
}

impl Methods {
    /// The handlers, and where their answers arrive (each call holds a permit of at most
    /// [`MAX_RUNNING_METHODS`] until its answer is sent: the channel is bounded by them).
    pub(crate) fn new(handlers: HashMap<String, MethodHandler>) -> (Methods, mpsc::UnboundedReceiver<Answer>) {
        let (answers, rx) = mpsc::unbounded_channel();
        let methods = Methods {
            handlers,
            running: Arc::new(Semaphore::new(MAX_RUNNING_METHODS)),
            answers,
            #[cfg(feature = "ws")]
            remote: None,
        };
        (methods, rx)
    }

    /// Whether the device takes direct methods at all (it subscribes to them only then).
    pub(crate) fn any(&self) -> bool {
        #[cfg(feature = "ws")]
        if self.remote.is_some() {
            return true;
        }
        !self.handlers.is_empty()
    }

    /// What answers `method`: the platform's remote access (when allowed) or the application's
    /// handler.
    fn work_for(&self, method: &str) -> Option<Work> {
        #[cfg(feature = "ws")]
        if let (Some(remote), true) = (&self.remote, method == crate::remote::METHOD) {
            return Some(Work::RemoteAccess(remote.clone()));
        }
        self.handlers.get(method).cloned().map(Work::Handler)
    }

    /// Starts the handler of a call; an answer that needs no handler (an unknown method, too
    /// many calls running) is returned to be sent at once.
    pub(crate) fn dispatch(&self, method: String, request: String, payload: Vec<u8>) -> Option<Answer> {
        let Some(work) = self.work_for(&method) else {
            info!(?method, "direct method call without a handler answered 404");
            return Some(Answer {
                request,
                status: 404,
                body: MethodResponse::error(404, "No handler found").to_bytes(),
            });
        };
        let Ok(permit) = self.running.clone().try_acquire_owned() else {
            warn!(?method, "direct method call answered 503: {MAX_RUNNING_METHODS} calls are running");
            let busy = MethodResponse::error(503, format!("{MAX_RUNNING_METHODS} direct method calls are running"));
            return Some(Answer { request, status: 503, body: busy.to_bytes() });
        };
        let answers = self.answers.clone();
        info!(?method, "direct method called");
        tokio::spawn(
            async move {
                let (status, body) = match work {
                    Work::Handler(handler) => checked(&method, run_handler(handler, method.clone(), payload).await),
                    #[cfg(feature = "ws")]
                    Work::RemoteAccess(remote) => remote.open(payload).await,
                };
                let _ = answers.send(Answer { request, status, body });
                drop(permit);
            }
            .in_current_span(),
        );
        None
    }
}

/// What runs a direct method call.
enum Work {
    Handler(MethodHandler),
    #[cfg(feature = "ws")]
    RemoteAccess(Arc<crate::remote::RemoteAccess>),
}

/// The status and body that answer a call, once checked: an invalid status is answered `500`,
/// a body over [`MAX_METHOD_RESPONSE_BYTES`] `413`, each with its reason to the caller and an
/// error in the log for the handler's author.
fn checked(method: &str, response: MethodResponse) -> (u16, Vec<u8>) {
    if !METHOD_STATUSES.contains(&response.status) {
        error!(
            ?method,
            status = response.status,
            "the direct method's handler answered an invalid status (not 100 to 599); answered 500"
        );
        let detail = format!("the handler answered the invalid status {} (not 100 to 599)", response.status);
        return (500, MethodResponse::error(500, detail).to_bytes());
    }
    let body = response.to_bytes();
    if body.len() > MAX_METHOD_RESPONSE_BYTES {
        error!(
            ?method,
            bytes = body.len(),
            "the direct method's answer is larger than the {MAX_METHOD_RESPONSE_BYTES} bytes the platform takes; answered 413"
        );
        let detail = format!(
            "the handler's answer has {} bytes; a direct method's answer is limited to {MAX_METHOD_RESPONSE_BYTES} bytes",
            body.len()
        );
        return (413, MethodResponse::error(413, detail).to_bytes());
    }
    (response.status, body)
}

/// Runs the application's handler on the blocking pool; a panic is answered 500.
async fn run_handler(handler: MethodHandler, method: String, payload: Vec<u8>) -> MethodResponse {
    let call = MethodCall { method: method.clone(), payload };
    match tokio::task::spawn_blocking(move || handler(call)).await {
        Ok(response) => response,
        Err(e) if e.is_panic() => {
            let panic = e.into_panic();
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            warn!(?method, panic = ?text, "the direct method's handler panicked");
            MethodResponse::error(500, format!("Panic: {text}"))
        }
        Err(_) => MethodResponse::error(500, "the handler was cancelled"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_statuses_and_oversized_answers_become_errors_with_reasons() {
        assert_eq!(checked("m", MethodResponse::ok(json!({"a": 1}))), (200, br#"{"a":1}"#.to_vec()));
        for status in [0, 99, 600, u16::MAX] {
            let (s, body) = checked("m", MethodResponse { status, body: Value::Null });
            assert_eq!(s, 500);
            let detail: Value = serde_json::from_slice(&body).unwrap();
            assert!(detail["detail"].as_str().unwrap().contains(&format!("invalid status {status}")), "{detail}");
        }
        let big = MethodResponse::ok(Value::String("x".repeat(MAX_METHOD_RESPONSE_BYTES)));
        let (s, body) = checked("m", big);
        assert_eq!(s, 413);
        assert!(String::from_utf8(body).unwrap().contains("limited to 131072 bytes"));
        let fits = MethodResponse::ok(Value::String("x".repeat(MAX_METHOD_RESPONSE_BYTES - 2)));
        assert_eq!(checked("m", fits).0, 200, "exactly the limit (with its quotes) is sent");
    }
}
