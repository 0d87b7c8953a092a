//! The Spotflow platform over the network: [`MqttTransport`] (telemetry and device twin over MQTT
//! 3.1.1 on TCP, TLS by default, many messages in flight with every acknowledgement matched to its
//! message, large messages uploaded over HTTPS) and [`HttpPlatformApi`] (provisioning,
//! registration and token refresh over HTTPS with reqwest). The MQTT session ([`session`], packets
//! encoded with rumqttc's codec) runs on any byte stream; the WebSocket transport uses it too.
//!
//! `spotflow-device` builds both from its `NetworkOptions` (feature `mqtt`, default); build them
//! yourself to wrap or configure them, and inject them with the client builder's `.transport(..)`
//! and `.platform_api(..)`:
//!
//! ```no_run
//! use std::time::Duration;
//! use spotflow_transport_mqtt::{HttpPlatformApi, MqttTransport, MqttTransportOptions, TlsOptions};
//!
//! # fn main() -> spotflow_core::Result<()> {
//! // The operating system's root certificates, plus a private CA (here the local emulator's).
//! let ca = std::fs::read_to_string("spotflow-emulator-data/ca.pem").expect("the emulator's CA");
//! let tls = TlsOptions::platform().with_ca_pem(ca).client_config()?;
//! let mut options = MqttTransportOptions::tls(tls.clone());
//! options.port = 8883;
//! let transport = MqttTransport::new(options)?;
//! let api = HttpPlatformApi::new("https://localhost:8443", "localhost:8443", tls, Duration::from_secs(10))?;
//! # let _ = (transport, api);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod artifacts;
pub mod https_api;
pub mod mapping;
mod mqtt;
pub mod session;
mod tls;
pub mod topics;
mod upload;

pub use artifacts::HttpsArtifactSource;
pub use https_api::{answers, HttpPlatformApi, MAX_ANSWER_BYTES};
pub use mapping::EXTERNALIZE_THRESHOLD;
pub use mqtt::{MqttTransport, MqttTransportOptions};
/// The rustls version this crate builds its configurations with.
pub use rustls;
pub use session::SessionOptions;
pub use tls::TlsOptions;
