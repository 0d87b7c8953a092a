//! The user guide: one chapter per task, from the first message to a fleet in the field.
//!
//! Each chapter is a Markdown file in the crate's `guide/` directory, compiled here by rustdoc:
//! every Rust block is a doctest that `cargo test` compiles (and runs, unless it needs a real
//! platform), the Python blocks are run by the Python package's test suite and the C blocks are
//! compiled by the C library's tests. The chapters need the features `sqlite`, `ws`, `metrics`,
//! `testkit`, `logs` and `updates` (docs.rs builds them all).

#[doc = include_str!("../guide/getting-started.md")]
pub mod getting_started {}
#[doc = include_str!("../guide/durability.md")]
pub mod durability {}
#[doc = include_str!("../guide/messages.md")]
pub mod messages {}
#[doc = include_str!("../guide/compression.md")]
pub mod compression {}
#[doc = include_str!("../guide/properties.md")]
pub mod properties {}
#[doc = include_str!("../guide/methods.md")]
pub mod methods {}
#[doc = include_str!("../guide/c2d.md")]
pub mod c2d {}
#[doc = include_str!("../guide/updates.md")]
pub mod updates {}
#[doc = include_str!("../guide/gateway.md")]
pub mod gateway {}
#[doc = include_str!("../guide/testing.md")]
pub mod testing {}
#[doc = include_str!("../guide/extending.md")]
pub mod extending {}
#[doc = include_str!("../guide/observing.md")]
pub mod observing {}
#[doc = include_str!("../guide/logs.md")]
pub mod logs {}
#[doc = include_str!("../guide/emulator.md")]
pub mod emulator {}
#[doc = include_str!("../guide/arm.md")]
pub mod arm {}
#[doc = include_str!("../guide/python.md")]
pub mod python {}
#[doc = include_str!("../guide/security.md")]
pub mod security {}
#[doc = include_str!("../guide/troubleshooting.md")]
pub mod troubleshooting {}
#[doc = include_str!("../guide/migrating.md")]
pub mod migrating {}
