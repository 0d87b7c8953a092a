//! Connection events, pushed: what happens to a client's connection to the platform, in order,
//! without polling [`crate::DeviceClient::stats`].
//!
//! The worker publishes each event into a bounded buffer and never waits for a consumer: a
//! consumer that falls more than [`EVENT_BUFFER`] events behind loses the oldest ones, and its
//! [`ConnectionEvents::lost`] counts them. Consume them with
//! [`crate::DeviceClient::connection_events`] (async), [`crate::blocking::DeviceClient::connection_events`]
//! (an iterator), or a callback given to the builder
//! ([`crate::DeviceClientBuilder::connection_event_callback`]), which sees every event from the
//! first connection attempt on.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use spotflow_core::{Error, LinkFailure};
use tokio::sync::broadcast;

/// How many events a consumer may fall behind before it loses the oldest.
pub const EVENT_BUFFER: usize = 256;

/// What happened to the connection to the platform.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// An attempt to connect starts (1 for the first one since the start).
    Connecting {
        /// Attempts since the start, this one included.
        attempt: u64,
    },
    /// The client is connected: messages and properties flow.
    Connected {
        /// When the connection was made.
        since: SystemTime,
    },
    /// The connection was lost, or an attempt failed on the way (the network, TLS, a stalled link,
    /// renewed credentials). The client connects again after `retry_in`.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
        /// When the client tries again.
        retry_in: Duration,
    },
    /// The platform refused the connection. With `permanent`, trying again with the same
    /// credentials cannot succeed: the client renews them (registers again) before it retries;
    /// when the platform refuses the registration too, the device must be provisioned again.
    Refused {
        /// Why.
        reason: DisconnectReason,
        /// Whether retrying as is cannot help.
        permanent: bool,
        /// When the client tries again.
        retry_in: Duration,
    },
    /// The client was closed: no more events follow.
    Closed,
}

impl ConnectionEvent {
    /// The event of a connection (or an attempt) that `e` ended, retried after `retry_in`: a
    /// refusal when the platform answered with one, else a disconnection.
    pub(crate) fn ended_by(e: &Error, retry_in: Duration) -> ConnectionEvent {
        let reason = DisconnectReason::of(e);
        match e {
            Error::Unauthorized(_) | Error::Platform(_) | Error::WorkspaceDisabled => {
                ConnectionEvent::Refused { permanent: !reason.retry_helps(), reason, retry_in }
            }
            _ => ConnectionEvent::Disconnected { reason, retry_in },
        }
    }
}

/// Why a connection ended or could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The network: no route, a refused or reset TCP connection, a name that does not resolve,
    /// the server closing the connection, or no connection within the request timeout.
    Network(String),
    /// The TLS handshake failed (a certificate not trusted, a wrong name, a protocol mismatch).
    Tls(String),
    /// The link stalled: the server did not answer within the stall timeout or the keep-alive.
    Stalled(String),
    /// The broker refused the device's credentials (e.g. an expired or revoked SAS).
    Authentication(String),
    /// The platform refused the connection for another reason, or spoke something else than the
    /// protocol.
    Platform(String),
    /// The client closed the connection to reconnect with renewed credentials.
    CredentialRenewal,
}

impl DisconnectReason {
    /// The reason of an error that failed or ended a connection.
    pub(crate) fn of(e: &Error) -> DisconnectReason {
        let text = e.to_string();
        match e {
            Error::Transport { kind: LinkFailure::Tls, .. } => DisconnectReason::Tls(text),
            Error::Transport { kind: LinkFailure::Stalled, .. } => DisconnectReason::Stalled(text),
            Error::Transport { kind: LinkFailure::Protocol, .. } => DisconnectReason::Platform(text),
            Error::Transport { .. } | Error::Timeout(_) => DisconnectReason::Network(text),
            Error::Unauthorized(_) => DisconnectReason::Authentication(text),
            _ => DisconnectReason::Platform(text),
        }
    }

    /// Whether trying again (as the client does by itself) may succeed without anything else
    /// changing: true for the network, a stalled link, a busy or refusing platform and renewed
    /// credentials; false for TLS (the trusted certificates or the host name must change) and
    /// refused credentials (the client renews them first).
    pub fn retry_helps(&self) -> bool {
        !matches!(self, DisconnectReason::Tls(_) | DisconnectReason::Authentication(_))
    }
}

impl std::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DisconnectReason::Network(e) => write!(f, "network: {e}"),
            DisconnectReason::Tls(e) => write!(f, "TLS: {e}"),
            DisconnectReason::Stalled(e) => write!(f, "stalled link: {e}"),
            DisconnectReason::Authentication(e) => write!(f, "authentication: {e}"),
            DisconnectReason::Platform(e) => write!(f, "platform: {e}"),
            DisconnectReason::CredentialRenewal => f.write_str("reconnecting with renewed credentials"),
        }
    }
}

/// Where the worker publishes its events (never waiting for a consumer).
pub(crate) struct EventFeed {
    tx: broadcast::Sender<ConnectionEvent>,
}

impl EventFeed {
    pub(crate) fn new() -> EventFeed {
        EventFeed { tx: broadcast::channel(EVENT_BUFFER).0 }
    }

    pub(crate) fn publish(&self, event: ConnectionEvent) {
        // No consumer: nothing to keep.
        let _ = self.tx.send(event);
    }

    pub(crate) fn subscribe(&self) -> ConnectionEvents {
        ConnectionEvents { rx: self.tx.subscribe(), lost: 0, ended: false }
    }
}

/// A consumer's view of the connection events, from when it was made on. Each consumer has its
/// own: one that falls behind loses the oldest of its events, never the others'.
#[derive(Debug)]
pub struct ConnectionEvents {
    rx: broadcast::Receiver<ConnectionEvent>,
    lost: u64,
    /// [`ConnectionEvent::Closed`] was taken: nothing follows.
    ended: bool,
}

impl ConnectionEvents {
    /// The next event, waiting for it; `None` after [`ConnectionEvent::Closed`] (or once the
    /// client is gone).
    pub async fn next(&mut self) -> Option<ConnectionEvent> {
        while !self.ended {
            match self.rx.recv().await {
                Ok(event) => return Some(self.taken(event)),
                Err(broadcast::error::RecvError::Lagged(n)) => self.lost += n,
                Err(broadcast::error::RecvError::Closed) => self.ended = true,
            }
        }
        None
    }

    /// The next event if one is there, without waiting.
    pub fn try_next(&mut self) -> Option<ConnectionEvent> {
        while !self.ended {
            match self.rx.try_recv() {
                Ok(event) => return Some(self.taken(event)),
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.lost += n,
                Err(_) => return None,
            }
        }
        None
    }

    /// The next event, waiting on this thread (not inside an async runtime); `None` after
    /// [`ConnectionEvent::Closed`] (or once the client is gone).
    pub(crate) fn blocking_next(&mut self) -> Option<ConnectionEvent> {
        while !self.ended {
            match self.rx.blocking_recv() {
                Ok(event) => return Some(self.taken(event)),
                Err(broadcast::error::RecvError::Lagged(n)) => self.lost += n,
                Err(broadcast::error::RecvError::Closed) => self.ended = true,
            }
        }
        None
    }

    fn taken(&mut self, event: ConnectionEvent) -> ConnectionEvent {
        self.ended = event == ConnectionEvent::Closed;
        event
    }

    /// Events this consumer lost by falling more than [`EVENT_BUFFER`] behind.
    pub fn lost(&self) -> u64 {
        self.lost
    }
}

/// An application's function called with every connection event, in order, on a thread of its
/// own (it may block without holding the client back; events it falls behind on are lost, oldest
/// first).
pub type ConnectionEventCallback = Arc<dyn Fn(&ConnectionEvent) + Send + Sync>;

/// Runs `callback` for each of `events` on a thread of its own until the client is gone.
pub(crate) fn spawn_callback(
    mut events: ConnectionEvents,
    callback: ConnectionEventCallback,
    span: tracing::Span,
) -> spotflow_core::Result<()> {
    std::thread::Builder::new()
        .name("spotflow-connection-events".into())
        .spawn(move || {
            let _entered = span.enter();
            while let Some(event) = events.blocking_next() {
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| callback(&event))).is_err() {
                    tracing::warn!(?event, "connection event callback panicked");
                }
            }
        })
        .map(drop)
        .map_err(|source| Error::System { what: "the connection-event callback thread", source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_reasons_that_say_whether_retrying_helps() {
        let cases = [
            (Error::transport("the server closed the connection"), "network", true),
            (Error::Timeout("connecting took longer than 3s".into()), "network", true),
            (Error::link(LinkFailure::Tls, "TLS handshake failed"), "TLS", false),
            (Error::link(LinkFailure::Stalled, "link stalled"), "stalled link", true),
            (Error::link(LinkFailure::Protocol, "expected CONNACK"), "platform", true),
            (Error::Unauthorized("connection refused by the broker: NotAuthorized".into()), "authentication", false),
            (Error::Platform("connection refused by the broker: ServiceUnavailable".into()), "platform", true),
        ];
        for (error, prefix, helps) in cases {
            let reason = DisconnectReason::of(&error);
            assert!(reason.to_string().starts_with(prefix), "{error}: {reason}");
            assert_eq!(reason.retry_helps(), helps, "{reason}");
        }
        assert!(DisconnectReason::CredentialRenewal.retry_helps());
        let retry_in = Duration::from_millis(100);
        assert!(matches!(
            ConnectionEvent::ended_by(&Error::Unauthorized("NotAuthorized".into()), retry_in),
            ConnectionEvent::Refused { permanent: true, reason: DisconnectReason::Authentication(_), .. }
        ));
        assert!(matches!(
            ConnectionEvent::ended_by(&Error::Platform("ServiceUnavailable".into()), retry_in),
            ConnectionEvent::Refused { permanent: false, reason: DisconnectReason::Platform(_), .. }
        ));
        assert_eq!(
            ConnectionEvent::ended_by(&Error::link(LinkFailure::Stalled, "link stalled"), retry_in),
            ConnectionEvent::Disconnected {
                reason: DisconnectReason::Stalled("transport error: link stalled".into()),
                retry_in
            }
        );
    }

    #[tokio::test]
    async fn a_consumer_that_falls_behind_loses_the_oldest_counted_and_the_feed_never_waits() {
        let feed = EventFeed::new();
        let mut slow = feed.subscribe();
        let total = EVENT_BUFFER as u64 + 10;
        for attempt in 1..=total {
            feed.publish(ConnectionEvent::Connecting { attempt });
        }
        feed.publish(ConnectionEvent::Closed);
        let mut seen = Vec::new();
        while let Some(event) = slow.try_next() {
            seen.push(event);
        }
        assert_eq!(slow.lost(), 11, "the 11 oldest lost");
        assert_eq!(seen.first(), Some(&ConnectionEvent::Connecting { attempt: 12 }));
        assert_eq!(seen.last(), Some(&ConnectionEvent::Closed));
        assert_eq!(seen.len(), EVENT_BUFFER);
        assert_eq!(slow.next().await, None, "nothing after Closed");
    }
}
