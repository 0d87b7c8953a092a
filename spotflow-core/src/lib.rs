//! Core of the Spotflow device SDK.
//!
//! * [`Store`]: everything the SDK persists (outgoing queue, identity and credentials, desired and
//!   reported properties); [`MemoryStore`] is the in-memory backend, durable ones live in their own
//!   crates.
//! * [`Transport`] and [`Connection`]: a connection to the platform's data plane, at a level a
//!   custom transport can implement without knowing MQTT topics. [`PlatformApi`]: provisioning
//!   and registration.
//! * Sans-IO state machines driven by the `spotflow-device` facade, with `now` passed in:
//!   [`OutgoingQueue`], [`DesiredTracker`], [`ReportedTracker`], [`CredentialSchedule`].
//! * [`Compression`] applied at enqueue, [`Error`] for everything.
//!
//! ```
//! use spotflow_core::{MemoryStore, Store, OutgoingMessage, StreamTarget, MessageKind};
//! use std::sync::Arc;
//!
//! # tokio_test_block_on(async {
//! let store = MemoryStore::new();
//! let message = OutgoingMessage {
//!     target: Arc::new(StreamTarget::new(Some("sensors"), Some("temperature"))?),
//!     kind: MessageKind::Data,
//!     batch_id: None, batch_slice_id: None, message_id: None, chunk_id: None,
//!     content_encoding: None,
//!     payload: bytes::Bytes::from_static(b"{\"t\":21.5}"),
//! };
//! let seq = store.append_message(message).await?;
//! assert_eq!(store.read_messages(None, 10).await?[0].seq, seq);
//! # Ok::<(), spotflow_core::Error>(())
//! # }).unwrap();
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     let waker = std::task::Waker::noop();
//! #     let mut cx = std::task::Context::from_waker(&waker);
//! #     let mut f = std::pin::pin!(f);
//! #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
//! # }
//! ```
#![deny(missing_docs)]
// No unsafe code, except Windows' system calls (free space and access control lists).
#![cfg_attr(not(windows), forbid(unsafe_code))]
#![cfg_attr(windows, deny(unsafe_code))]

mod adaptive_poll;
mod backoff;
mod cloud;
mod compression;
mod credentials;
mod error;
mod link;
mod memory;
pub mod merge_patch;
mod message;
mod os_fs;
pub mod persist;
mod platform;
pub mod private_fs;
mod properties;
mod queue;
pub mod secure_random;
mod store;
mod thread_store;
pub mod time_format;
mod transport;
pub mod update;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use backoff::Backoff;
pub use cloud::{CloudMessage, Inbox, InboxAppend, StoredCloudMessage, COMPLETED_KEPT};
pub use compression::{decompress, Compression, ContentEncoding, MAX_DECOMPRESSED_SIZE};
pub use credentials::{CredentialAction, CredentialSchedule};
pub use error::{Error, ErrorStatus, LinkFailure, Result};
pub use link::{LinkAction, LinkSchedule, LinkTimings};
pub use memory::MemoryStore;
pub use message::{validate_name, MessageKind, OutgoingMessage, QueuedMessage, StreamTarget, MAX_NAME_LEN};
pub use os_fs::{free_disk_space, sync_dir};
pub use platform::{
    is_loopback_host, require_loopback_for_plain, PlatformApi, ProvisioningOperation, ProvisioningStatus, Registration,
    RegistrationToken,
};
pub use properties::{DesiredTracker, PatchOutcome, ReportedOutcome, ReportedTracker};
pub use queue::OutgoingQueue;
pub use store::{ConnectionCredentials, DesiredState, DeviceIdentity, QueueStats, ReportedState, Secret, Store};
pub use thread_store::{
    run_as_blocking_caller, Durability, DurableBackend, FreeSpace, Namespace, StateKey, StoreBackend, ThreadStore,
    SINGLE_DEVICE,
};
pub use transport::{Connection, RequestId, SessionInfo, Transport, TransportEvent, TwinDocument};
pub use update::{ArtifactBody, ArtifactSource, UpdateManifest, UpdatePhase, UpdateRecord, UPDATE_PROPERTY};

/// Locks `mutex`, also when a thread panicked while holding it: every mutex of the SDK guards
/// state that stays consistent between statements (a panic cannot leave it half-changed), so the
/// data is used as it is rather than turning one panic into a panic of every later caller.
pub fn lock<T: ?Sized>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
