//! The emulator's errors, typed: what went wrong starting it, and what the provisioning
//! operations it is asked to approve can refuse.

use std::path::PathBuf;

/// Every error of the emulator's API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmulatorError {
    /// The data directory or one of its files could not be made, read or restricted.
    #[error("{}: {source}", path.display())]
    Files {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The message store could not be opened.
    #[error("the message store: cannot {action} {}: {source}", path.display())]
    Database {
        /// What failed: `open`, `initialise`, `upgrade`, `read the state of`, …
        action: &'static str,
        /// The database file (`:memory:` for an emulator without a data directory).
        path: PathBuf,
        /// SQLite's error, or the state's JSON error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The TLS material (the local CA and the server certificate) could not be made or loaded.
    #[error("TLS material: {0}")]
    Tls(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A CA certificate (PEM) that does not parse.
    #[error("invalid CA certificate: {0}")]
    InvalidCaCertificate(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address and port.
        addr: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// No provisioning operation has this id.
    #[error("no operation {0}")]
    UnknownOperation(String),
    /// The operation was approved or cancelled already.
    #[error("operation {0} is not pending")]
    NotPending(String),
    /// The operation expired before it was approved.
    #[error("operation {0} expired")]
    Expired(String),
    /// A device id the platform would refuse.
    #[error("{0}")]
    InvalidDeviceId(String),
    /// A device made for a test could not be registered.
    #[error("cannot register the device: {0}")]
    Registration(&'static str),
    /// The process's open-file limit could not be raised.
    #[error("cannot raise the open-file limit from {from} to {to}: {source}")]
    OpenFileLimit {
        /// The limit now.
        from: u64,
        /// The hard limit it was to be raised to.
        to: u64,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A remote-access tunnel could not be opened.
    #[error("remote-access tunnel: {0}")]
    Tunnel(#[from] crate::tunnel_client::TunnelError),
}
