//! The Spotflow platform over the network: [`MqttTransport`] (telemetry and device twin over MQTT
//! 3.1.1 on TCP, TLS by default, many messages in flight with every acknowledgement matched to its
//! message, large messages uploaded over HTTPS) and [`HttpPlatformApi`] (provisioning,
//! registration and token refresh over HTTPS with reqwest). The MQTT session ([`session`], packets
//! encoded with rumqttc's codec) runs on any byte stream; the WebSocket transport uses it too.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod mapping;
mod mqtt;
mod platform_api;
pub mod session;
mod tls;
pub mod topics;
mod upload;

pub use mapping::EXTERNALIZE_THRESHOLD;
pub use mqtt::{MqttTransport, MqttTransportOptions};
pub use platform_api::{answers, HttpPlatformApi, MAX_ANSWER_BYTES};
/// The rustls version this crate builds its configurations with.
pub use rustls;
pub use session::SessionOptions;
pub use tls::TlsOptions;
