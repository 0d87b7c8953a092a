//! Test kit (feature `testkit`): the store and transport conformance suites every backend runs, and
//! [`MemoryPlatform`], an in-memory platform implementing [`crate::Transport`] and
//! [`crate::PlatformApi`].

pub mod golden;
mod platform;
mod store_suite;
mod transport_suite;

pub use platform::{AckMode, MemoryPlatform, PlatformStats, ReceivedMessage, MEMORY_HUB_HOST};
pub use store_suite::{
    join_all, refuses_appends_without_free_space, sample_credentials, sample_identity, sample_message,
    store_conformance,
};
pub use transport_suite::{transport_conformance, ConformancePlatform};
