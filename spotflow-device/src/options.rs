//! Tunables of the device client, with defaults fit for a real device.

pub use spotflow_core::Durability;
use std::time::Duration;

/// Largest payload accepted by `enqueue_message` by default (16 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// Tunables of a [`crate::DeviceClient`]. Every field has a sensible default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    /// Messages in flight at once (sent, not yet acknowledged). Default 1000.
    pub max_in_flight: usize,
    /// Messages read from the store at once. Default 1000.
    pub fetch_batch: usize,
    /// Largest payload accepted, after compression is not yet applied. Default 16 MiB.
    pub max_message_size: usize,
    /// Interval between polls of a provisioning operation waiting for approval. Default 5 s.
    pub provisioning_poll_interval: Duration,
    /// Upper bound of `start` (provisioning, approval included, and first registration).
    /// Default 15 min.
    pub start_timeout: Duration,
    /// Bound of each call to the platform API and of each connection attempt. Default 10 s.
    pub request_timeout: Duration,
    /// First delay before reconnecting or retrying; doubles up to `retry_max` (with jitter).
    /// Default 500 ms.
    pub retry_initial: Duration,
    /// Longest delay between retries after the platform refused (credentials, throttling, an
    /// error status). Default 60 s.
    pub retry_max: Duration,
    /// Longest delay before reconnecting after the link failed (no answer, a reset, a stalled
    /// connection), so that delivery resumes within seconds of the network coming back; at most
    /// `retry_max`. Default 5 s.
    pub reconnect_max: Duration,
    /// How long to wait for in-flight messages when switching to renewed credentials before the
    /// connection is replaced anyway. Default 10 s.
    pub renewal_drain_timeout: Duration,
    /// How long the server may stay silent while messages or a ping await its answer before the
    /// connection counts as stalled (a NAT timeout or a cellular handover that drops packets
    /// without a reset) and is replaced; any packet from the server restarts the clock. Raise
    /// it on links so slow that a window of messages takes longer than this to leave.
    /// Default 10 s.
    pub stall_timeout: Duration,
    /// Durability of the default durable store (SQLite, or sled). Default
    /// [`Durability::PowerLossSafe`].
    pub durability: Durability,
    /// Byte budget of the outgoing queue (payloads and ids). Default 256 MiB.
    pub queue_budget_bytes: u64,
    /// What happens when an enqueue would exceed the budget. Default [`QueueFullPolicy::Reject`].
    pub queue_full_policy: QueueFullPolicy,
    /// Byte budget of the cloud-to-device inbox (payloads and properties of the messages not yet
    /// completed). When a message would exceed it, the client stops acknowledging: the broker
    /// keeps it (and those after it) until the application completes messages. Default 4 MiB.
    pub c2d_inbox_budget_bytes: u64,
}

/// What `enqueue_message` does when the queue's byte budget is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QueueFullPolicy {
    /// Fail with [`spotflow_core::Error::QueueFull`] (temporary: it succeeds again once the
    /// platform acknowledged enough messages). Nothing queued is lost. Default.
    #[default]
    Reject,
    /// Drop the oldest queued messages to make room (logged with their count); messages already
    /// handed to the connection may still arrive.
    DropOldest,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            max_in_flight: 1000,
            fetch_batch: 1000,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            provisioning_poll_interval: Duration::from_secs(5),
            start_timeout: Duration::from_secs(15 * 60),
            request_timeout: Duration::from_secs(10),
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            reconnect_max: Duration::from_secs(5),
            renewal_drain_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(10),
            durability: Durability::PowerLossSafe,
            queue_budget_bytes: 256 * 1024 * 1024,
            queue_full_policy: QueueFullPolicy::Reject,
            c2d_inbox_budget_bytes: 4 * 1024 * 1024,
        }
    }
}

/// How the client reaches the platform over the network (used when no transport or platform API
/// is injected).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NetworkOptions {
    /// Extra CA certificates to trust (PEM), besides the platform's root certificates: the local
    /// emulator's CA or a private deployment's.
    pub extra_ca_pem: Vec<String>,
    /// Whether to trust the operating system's root certificates. Default `true`.
    pub platform_roots: bool,
    /// MQTT broker port. Default 8883.
    pub mqtt_port: u16,
    /// Plain TCP instead of TLS for MQTT. Off by default; only for local development.
    pub mqtt_plain_tcp: bool,
    /// Base URL of the file-upload API for messages over 250,000 bytes (default `https://{hub}`).
    pub upload_base_url: Option<String>,
    /// MQTT over TCP (port 8883) or over WebSocket (port 443, through proxies; feature `ws`).
    pub protocol: Protocol,
    /// WebSocket port. Default 443.
    pub websocket_port: u16,
    /// HTTP CONNECT proxy for the WebSocket transport, `http://[user:password@]host:port`
    /// (default: `HTTPS_PROXY` unless `NO_PROXY` excludes the hub). Credentials are never logged.
    pub proxy: Option<String>,
}

/// How MQTT reaches the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Protocol {
    /// MQTT over TCP with TLS (port 8883).
    #[default]
    Mqtt,
    /// MQTT over WebSocket with TLS (port 443), for networks where only HTTPS leaves.
    MqttOverWebSocket,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        NetworkOptions {
            extra_ca_pem: Vec::new(),
            platform_roots: true,
            mqtt_port: 8883,
            mqtt_plain_tcp: false,
            upload_base_url: None,
            protocol: Protocol::Mqtt,
            websocket_port: 443,
            proxy: None,
        }
    }
}
