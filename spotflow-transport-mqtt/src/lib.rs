//! The Spotflow platform over the network: [`MqttTransport`] (telemetry and device twin over MQTT
//! 3.1.1 with rumqttc, TLS by default, many messages in flight with every acknowledgement matched
//! to its message, large messages uploaded over HTTPS) and [`HttpPlatformApi`] (provisioning,
//! registration and token refresh over HTTPS with reqwest).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod mapping;
mod mqtt;
mod platform_api;
mod tls;
pub mod topics;
mod upload;

pub use mapping::EXTERNALIZE_THRESHOLD;
pub use mqtt::{MqttTransport, MqttTransportOptions};
pub use platform_api::{HttpPlatformApi, MAX_ANSWER_BYTES};
/// The rustls version this crate builds its configurations with.
pub use rustls;
pub use tls::TlsOptions;
