//! The Spotflow device SDK.
//!
//! A device provisions itself with a provisioning token, then sends telemetry that survives
//! outages (every message is persisted before `enqueue_message` returns and delivered with many
//! in flight), receives desired properties and reports its state.
//!
//! * [`DeviceClient`]: the async API (Tokio). [`blocking::DeviceClient`]: the same for plain
//!   threads and callbacks.
//! * Backends are pluggable: any [`Store`] (the in-memory [`MemoryStore`] is always there), any
//!   [`Transport`] and [`PlatformApi`]. Tests inject `spotflow_core::testkit::MemoryPlatform`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> spotflow_device::Result<()> {
//! use std::sync::Arc;
//! use spotflow_device::{Compression, DeviceClient, MemoryStore, Message};
//! use spotflow_core::testkit::MemoryPlatform;
//!
//! let platform = MemoryPlatform::new();
//! // On a device, the store is the durable one at the `db` path (SQLite by default); in memory here.
//! let client = DeviceClient::builder(Some("my-device"), "memory-provisioning-token", "spotflow.db")
//!     .store(Arc::new(MemoryStore::new()))
//!     .platform_api(Arc::new(platform.clone()))
//!     .transport(Arc::new(platform.clone()))
//!     .display_provisioning_operation_callback(|op| println!("approve {}", op.verification_code))
//!     .start()
//!     .await?;
//! let sender = client.create_stream_sender(Some("sensors"), Some("temperature"), Compression::Fastest)?;
//! sender.send_message(Message::new(r#"{"temperatureCelsius":21.5}"#).message_id("m1")).await?;
//! assert_eq!(platform.messages().len(), 1);
//! client.update_reported_properties(serde_json::json!({"firmware": "1.0.0"})).await?;
//! client.close().await?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod backends;
pub mod blocking;
mod builder;
pub mod c2d;
mod callbacks;
mod client;
pub mod events;
#[cfg(feature = "sqlite")]
mod gateway;
#[cfg(all(
    any(doc, doctest),
    feature = "sqlite",
    feature = "ws",
    feature = "metrics",
    feature = "testkit",
    feature = "logs",
    feature = "updates"
))]
pub mod guide;
mod instance;
#[cfg(feature = "logs")]
pub mod logs;
mod message;
mod methods;
mod options;
mod provisioning;
#[cfg(feature = "ws")]
mod remote;
mod shared;
mod stats;
#[cfg(feature = "updates")]
pub mod update;
mod worker;

pub use builder::{DesiredPropertiesCallback, DeviceClientBuilder};
pub use c2d::{C2dMessage, C2dMessages};
pub use client::{DeviceClient, StreamSender};
pub use events::{ConnectionEvent, ConnectionEventCallback, ConnectionEvents, DisconnectReason};
#[cfg(feature = "sqlite")]
pub use gateway::Gateway;
pub use instance::{Instance, DEFAULT_INSTANCE};
pub use message::Message;
pub use methods::{
    MethodCall, MethodHandler, MethodResponse, MAX_METHOD_RESPONSE_BYTES, MAX_RUNNING_METHODS, METHOD_STATUSES,
};
pub use options::{ClientOptions, Durability, NetworkOptions, Protocol, QueueFullPolicy, DEFAULT_MAX_MESSAGE_SIZE};
pub use provisioning::{print_provisioning_operation, write_provisioning_operation, DisplayCallback};
#[cfg(feature = "ws")]
pub use remote::RemoteAccessPorts;
/// For bindings that wrap the async client in their own blocking calls (the blocking client does
/// it itself): see [`spotflow_core::run_as_blocking_caller`].
pub use spotflow_core::run_as_blocking_caller;
pub use spotflow_core::{
    Compression, ConnectionCredentials, ContentEncoding, Error, ErrorStatus, MemoryStore, PlatformApi,
    ProvisioningOperation, Result, Store, Transport,
};
pub use stats::{ConnectionState, LatencySummary, Stats};

/// Everything a custom [`Transport`], [`Store`] or [`PlatformApi`] needs, in one place: the
/// traits, the values that cross them, and the built-in transports to wrap or delegate to.
///
/// A transport opens [`extend::Connection`]s; the SDK hands each one telemetry
/// ([`extend::OutgoingMessage`] with its sequence number) and twin requests, and reads
/// [`extend::TransportEvent`]s back (acknowledgements matched by sequence number, twin answers,
/// desired-properties patches). The contract is on each trait; the `testkit` feature has a
/// conformance suite for transports (`testkit::transport_conformance`) and stores
/// (`testkit::store_conformance`). See `examples/custom_transport.rs`.
pub mod extend {
    pub use spotflow_core::{
        Backoff, Connection, ConnectionCredentials, DesiredState, DeviceIdentity, MessageKind, OutgoingMessage,
        PlatformApi, ProvisioningOperation, ProvisioningStatus, QueueStats, QueuedMessage, Registration,
        RegistrationToken, ReportedState, RequestId, Secret, SessionInfo, Store, StreamTarget, Transport,
        TransportEvent, TwinDocument,
    };
    /// The built-in MQTT transport (MQTT over TCP+TLS) and HTTPS platform API, to wrap or reuse.
    #[cfg(feature = "mqtt")]
    pub use spotflow_transport_mqtt as mqtt;
    /// The built-in MQTT-over-WebSocket transport.
    #[cfg(feature = "ws")]
    pub use spotflow_transport_ws as ws;
}

/// The test kit: the in-memory platform (`MemoryPlatform`: platform API and transport in one,
/// with hooks to push desired properties, force disconnects and inspect delivered messages) and
/// the conformance suites for stores and transports. Feature `testkit`.
#[cfg(feature = "testkit")]
pub use spotflow_core::testkit;

/// Desired properties: a version and the values (a JSON object without `$version`).
pub type DesiredProperties = spotflow_core::DesiredState;
