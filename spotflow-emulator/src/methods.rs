//! Direct method calls from the admin side to a connected device: the pending calls by request id,
//! and the device's answers matched to them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rumqttc::mqttbytes::v4::{Packet, Publish};
use rumqttc::mqttbytes::QoS;
use tracing::{debug, info, warn};

use crate::control::Control;
use crate::mqtt::{self, Outbound};
use crate::sessions::Sessions;

/// A device's answer to a direct method call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodAnswer {
    /// The status the device answered with.
    pub status: u16,
    /// The body (JSON, as the device sent it).
    pub payload: Vec<u8>,
}

/// Why a direct method call got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MethodFailure {
    /// The device is not connected, or does not take direct methods (it did not subscribe).
    NotConnected,
    /// No answer within the timeout.
    Timeout,
    /// The method's name cannot be used in a topic.
    BadMethod(String),
    /// The device's answer was larger than the broker's packet limit (the connection it came on
    /// was closed, as for any packet over the limit).
    AnswerTooLarge {
        /// The answer packet's size.
        bytes: usize,
        /// The broker's packet limit ([`crate::EmulatorConfig::max_packet_size`]).
        limit: usize,
    },
}

impl std::fmt::Display for MethodFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MethodFailure::NotConnected => f.write_str("the device is not connected or does not take direct methods"),
            MethodFailure::Timeout => f.write_str("the device did not answer in time"),
            MethodFailure::BadMethod(why) => f.write_str(why),
            MethodFailure::AnswerTooLarge { bytes, limit } => {
                write!(
                    f,
                    "the device's answer of {bytes} bytes is larger than the broker's packet limit of {limit} bytes"
                )
            }
        }
    }
}
/// Where the answer to a direct method call goes (or why there is none).
type MethodReply = tokio::sync::oneshot::Sender<Result<MethodAnswer, MethodFailure>>;

pub(crate) struct DirectMethods {
    /// Calls waiting for the device's answer, by request id: the device called, and where its
    /// answer goes.
    pending: Mutex<HashMap<String, (String, MethodReply)>>,
    next_rid: AtomicU64,
}

impl Default for DirectMethods {
    fn default() -> Self {
        DirectMethods { pending: Mutex::default(), next_rid: AtomicU64::new(1) }
    }
}

impl DirectMethods {
    /// Calls the direct method `method` of a connected device (one subscribed to direct methods)
    /// and waits (up to `timeout`) for its answer.
    pub async fn invoke(
        &self,
        control: &Control,
        sessions: &Sessions,
        hub_id: &str,
        method: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<MethodAnswer, MethodFailure> {
        if method.is_empty() || method.contains(['?', '#', '+']) || method.len() > 256 {
            return Err(MethodFailure::BadMethod(format!("{method:?} is not a method name")));
        }
        let rid = format!("{:x}", self.next_rid.fetch_add(1, Ordering::Relaxed));
        let topic = format!("$iothub/methods/POST/{method}/?$rid={rid}");
        if !control.is_subscribed(hub_id, &topic) {
            return Err(MethodFailure::NotConnected);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        spotflow_core::lock(&self.pending).insert(rid.clone(), (hub_id.to_owned(), tx));
        let publish = Publish::new(topic, QoS::AtMostOnce, payload);
        if !sessions.send(hub_id, Outbound::Packet(Packet::Publish(publish))) {
            spotflow_core::lock(&self.pending).remove(&rid);
            return Err(MethodFailure::NotConnected);
        }
        // The name is the admin's text: logged escaped.
        info!(device = %hub_id, ?method, %rid, "direct method called");
        let answer = tokio::time::timeout(timeout, rx).await;
        spotflow_core::lock(&self.pending).remove(&rid);
        match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(MethodFailure::NotConnected),
            Err(_) => Err(MethodFailure::Timeout),
        }
    }

    /// A device's answer (`$iothub/methods/res/{status}/?$rid={rid}`) to a call made to it; an
    /// answer to another device's call, or to none, is ignored.
    pub fn answered(&self, hub_id: &str, topic: &str, payload: &[u8]) {
        let status = topic
            .strip_prefix("$iothub/methods/res/")
            .and_then(|rest| rest.split('/').next())
            .and_then(|s| s.parse::<u16>().ok());
        let rid = mqtt::query_param(topic, "$rid");
        let (Some(status), Some(rid)) = (status, rid) else {
            warn!(device = %hub_id, ?topic, "malformed direct method answer ignored");
            return;
        };
        let mut pending = spotflow_core::lock(&self.pending);
        match pending.get(rid) {
            Some((called, _)) if called == hub_id => {
                if let Some((_, tx)) = pending.remove(rid) {
                    let _ = tx.send(Ok(MethodAnswer { status, payload: payload.to_vec() }));
                }
            }
            Some(_) => warn!(device = %hub_id, ?rid, "answer to another device's direct method call ignored"),
            None => debug!(device = %hub_id, ?rid, "answer to an unknown (or timed out) direct method call ignored"),
        }
    }

    /// A device sent a packet over the broker's `limit` with this topic: when it is the answer to
    /// a call made to it, the caller learns so at once (instead of waiting for its timeout).
    pub fn answer_too_large(&self, hub_id: &str, topic: &str, bytes: usize, limit: usize) {
        let Some(rid) = topic.strip_prefix("$iothub/methods/res/").and_then(|_| mqtt::query_param(topic, "$rid"))
        else {
            return;
        };
        let mut pending = spotflow_core::lock(&self.pending);
        if pending.get(rid).is_some_and(|(called, _)| called == hub_id) {
            warn!(device = %hub_id, ?rid, bytes, "a direct method's answer is over the packet limit; the caller gets 413");
            if let Some((_, tx)) = pending.remove(rid) {
                let _ = tx.send(Err(MethodFailure::AnswerTooLarge { bytes, limit }));
            }
        }
    }
}
