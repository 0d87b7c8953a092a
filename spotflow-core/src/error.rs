//! The one error type of the SDK.

use std::fmt;

/// Result type used across the SDK.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether retrying the failed operation may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStatus {
    /// Retrying as is cannot succeed: the input, the configuration or the credentials must change.
    Permanent,
    /// The condition may go away by itself (network, busy platform, full queue being drained).
    Temporary,
}

/// Which part of the link to the platform failed (in [`Error::Transport`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkFailure {
    /// The network: connecting, reading or writing failed, or the server closed the connection.
    Network,
    /// The TLS handshake (a certificate not trusted, a wrong name, a protocol mismatch).
    Tls,
    /// The link stalled: no answer from the server within the stall timeout or the keep-alive.
    Stalled,
    /// The server answered with something else than the protocol (a malformed or unexpected
    /// packet).
    Protocol,
}

/// Every error the SDK returns.
///
/// Use [`Error::is_temporary`] to decide whether to retry. The enum is `#[non_exhaustive]`: match
/// with a wildcard arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument given by the application is not acceptable.
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// Which argument (e.g. `stream name`, `db path`).
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A message payload is larger than the SDK accepts.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Size of the payload given.
        size: usize,
        /// Largest accepted size.
        limit: usize,
    },
    /// The outgoing queue has reached its byte budget.
    #[error("outgoing queue is full ({bytes} bytes queued, budget {budget} bytes)")]
    QueueFull {
        /// Bytes currently queued.
        bytes: u64,
        /// Configured budget.
        budget: u64,
    },
    /// The persistent store failed.
    #[error("store error: {context}")]
    Store {
        /// What the store was doing.
        context: String,
        /// Whether a retry may succeed.
        status: ErrorStatus,
        /// Underlying cause.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The connection to the platform failed or was lost.
    #[error("transport error: {context}")]
    Transport {
        /// What the transport was doing.
        context: String,
        /// Which part of the link failed.
        kind: LinkFailure,
        /// Underlying cause.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The platform refused the credentials (provisioning token, registration token or connection
    /// credentials).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The platform answered with an unexpected status or a malformed body.
    #[error("platform error: {0}")]
    Platform(String),
    /// The workspace of the device is disabled on the platform (temporary on the platform's side).
    #[error("workspace is disabled")]
    WorkspaceDisabled,
    /// The provisioning operation expired or was cancelled before it was approved.
    #[error("provisioning failed: {0}")]
    Provisioning(String),
    /// The platform rejected an update of the reported properties.
    #[error("reported properties update rejected with status {status}")]
    ReportedPropertiesRejected {
        /// Status code of the twin response.
        status: u16,
    },
    /// The platform refused messages for good (see [`crate::TransportEvent::MessageRefused`]);
    /// they were removed from the queue while the rest of it kept flowing. Reported by the first
    /// wait for sent messages that covers them.
    #[error("the platform refused {count} message(s) for good; last reason: {last_reason}")]
    MessagesRefused {
        /// How many of the messages waited for were refused.
        count: u64,
        /// The reason given for the last of them.
        last_reason: String,
    },
    /// The operating system refused something the SDK needs to run (a thread, a runtime); it may
    /// succeed once resources are freed.
    #[error("cannot start {what}: {source}")]
    System {
        /// What could not be started.
        what: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A bounded wait ran out.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The client was closed (or its background worker stopped); the operation cannot run.
    #[error("the device client is closed")]
    Closed,
    /// A blocking method was called from inside an asynchronous runtime, where it would stall the
    /// runtime; use the async API there.
    #[error("blocking call from inside an async runtime; use the async API instead")]
    BlockingInAsyncContext,
}

impl Error {
    /// Whether retrying the operation may succeed.
    pub fn status(&self) -> ErrorStatus {
        match self {
            Error::Store { status, .. } => *status,
            Error::QueueFull { .. }
            | Error::Transport { .. }
            | Error::Platform(_)
            | Error::WorkspaceDisabled
            | Error::System { .. }
            | Error::Timeout(_) => ErrorStatus::Temporary,
            _ => ErrorStatus::Permanent,
        }
    }

    /// Shorthand for `self.status() == ErrorStatus::Temporary`.
    pub fn is_temporary(&self) -> bool {
        self.status() == ErrorStatus::Temporary
    }

    /// An [`Error::InvalidArgument`].
    pub fn invalid(what: &'static str, reason: impl fmt::Display) -> Self {
        Error::InvalidArgument { what, reason: reason.to_string() }
    }

    /// A permanent [`Error::Store`] error with a cause.
    pub fn store(context: impl fmt::Display, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::Store { context: context.to_string(), status: ErrorStatus::Permanent, source: Some(source.into()) }
    }

    /// An [`Error::Transport`] error of the network without a cause.
    pub fn transport(context: impl fmt::Display) -> Self {
        Error::link(LinkFailure::Network, context)
    }

    /// An [`Error::Transport`] error of the network with a cause.
    pub fn transport_with(
        context: impl fmt::Display,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::link_with(LinkFailure::Network, context, source)
    }

    /// An [`Error::Transport`] error of `kind` without a cause.
    pub fn link(kind: LinkFailure, context: impl fmt::Display) -> Self {
        Error::Transport { context: context.to_string(), kind, source: None }
    }

    /// An [`Error::Transport`] error of `kind` with a cause.
    pub fn link_with(
        kind: LinkFailure,
        context: impl fmt::Display,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Transport { context: context.to_string(), kind, source: Some(source.into()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_errors() {
        assert!(Error::transport("x").is_temporary());
        assert!(!Error::invalid("db path", "no .db").is_temporary());
        assert!(!Error::Unauthorized("x".into()).is_temporary());
        assert!(Error::QueueFull { bytes: 1, budget: 1 }.is_temporary());
        assert_eq!(Error::invalid("db path", "must end with .db").to_string(), "invalid db path: must end with .db");
    }
}
