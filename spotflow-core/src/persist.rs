//! Persisted forms shared by the durable stores: identity and properties as JSON, messages as a
//! compact binary record. Decoding never panics; malformed input is an error naming what is wrong.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::{
    ConnectionCredentials, ContentEncoding, DesiredState, DeviceIdentity, Error, ErrorStatus, MessageKind,
    OutgoingMessage, ReportedState, Result, Secret, StreamTarget,
};

fn corrupt(what: &str) -> Error {
    Error::Store { context: format!("corrupt stored {what}"), status: ErrorStatus::Permanent, source: None }
}

fn millis(t: Option<SystemTime>) -> Value {
    t.map_or(Value::Null, |t| json!(t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)))
}

fn time(v: &Value) -> Option<SystemTime> {
    v.as_u64().map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
}

/// The identity as JSON.
pub fn identity_to_json(i: &DeviceIdentity) -> Value {
    json!({
        "instance": i.instance,
        "provisioningToken": i.provisioning_token.expose(),
        "requestedDeviceId": i.requested_device_id,
        "registrationToken": i.registration_token.expose(),
        "registrationTokenExpiresAt": millis(i.registration_token_expires_at),
        "workspaceId": i.workspace_id,
        "deviceId": i.device_id,
        "queueId": i.queue_id,
        "connection": i.connection.as_ref().map(|c| json!({
            "hubHost": c.hub_host,
            "hubDeviceId": c.hub_device_id,
            "sas": c.sas.expose(),
            "expiresAt": millis(c.expires_at),
        })),
    })
}

/// Inverse of [`identity_to_json`].
pub fn identity_from_json(v: &Value) -> Result<DeviceIdentity> {
    let s = |o: &Value, k: &str| o.get(k).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| corrupt("identity"));
    let connection = match v.get("connection") {
        Some(Value::Object(_)) => {
            let c = &v["connection"];
            Some(ConnectionCredentials {
                hub_host: s(c, "hubHost")?,
                hub_device_id: s(c, "hubDeviceId")?,
                sas: Secret::new(s(c, "sas")?),
                expires_at: time(&c["expiresAt"]),
            })
        }
        _ => None,
    };
    Ok(DeviceIdentity {
        instance: s(v, "instance")?,
        provisioning_token: Secret::new(s(v, "provisioningToken")?),
        requested_device_id: v.get("requestedDeviceId").and_then(Value::as_str).map(str::to_owned),
        registration_token: Secret::new(s(v, "registrationToken")?),
        registration_token_expires_at: time(&v["registrationTokenExpiresAt"]),
        workspace_id: s(v, "workspaceId")?,
        device_id: s(v, "deviceId")?,
        connection,
        // Identities stored before queue ids existed get one derived from the registration.
        queue_id: v.get("queueId").and_then(Value::as_str).map(str::to_owned).unwrap_or_default(),
    })
}

/// Desired properties as JSON.
pub(crate) fn desired_to_json(d: &DesiredState) -> Value {
    json!({ "version": d.version, "values": d.values })
}

/// Reads the desired properties as the stores keep them.
pub fn desired_from_json(v: &Value) -> Result<DesiredState> {
    Ok(DesiredState {
        version: v.get("version").and_then(Value::as_u64).ok_or_else(|| corrupt("desired properties"))?,
        values: v.get("values").and_then(Value::as_object).cloned().ok_or_else(|| corrupt("desired properties"))?,
    })
}

/// Reported properties state as JSON.
pub(crate) fn reported_to_json(r: &ReportedState) -> Value {
    json!({ "confirmed": r.confirmed, "target": r.target })
}

/// Reads the reported properties as the stores keep them.
pub fn reported_from_json(v: &Value) -> Result<ReportedState> {
    Ok(ReportedState {
        confirmed: v
            .get("confirmed")
            .and_then(Value::as_object)
            .cloned()
            .ok_or_else(|| corrupt("reported properties"))?,
        target: match v.get("target") {
            Some(Value::Object(m)) => Some(m.clone()),
            Some(Value::Null) | None => None,
            Some(_) => return Err(corrupt("reported properties")),
        },
    })
}

const NONE: u32 = u32::MAX;

fn put_opt(out: &mut Vec<u8>, v: &Option<Arc<str>>) {
    match v {
        Some(s) => {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        None => out.extend_from_slice(&NONE.to_le_bytes()),
    }
}

/// A message as one binary record: version byte, kind, encoding, six optional strings, payload.
pub fn encode_message(m: &OutgoingMessage) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.payload.len() + 64);
    out.push(1);
    out.push(m.kind.code());
    out.push(ContentEncoding::code(m.content_encoding));
    for v in [&m.target.stream_group, &m.target.stream, &m.batch_id, &m.batch_slice_id, &m.message_id, &m.chunk_id] {
        put_opt(&mut out, v);
    }
    out.extend_from_slice(&m.payload);
    out
}

/// Inverse of [`encode_message`].
pub fn decode_message(mut b: &[u8]) -> Result<OutgoingMessage> {
    let bad = || corrupt("message");
    let header = b.get(..3).ok_or_else(bad)?;
    if header[0] != 1 {
        return Err(bad());
    }
    let kind = MessageKind::from_code(header[1]).map_err(|_| bad())?;
    let content_encoding = ContentEncoding::from_code(header[2]).map_err(|_| bad())?;
    b = &b[3..];
    let mut fields: [Option<Arc<str>>; 6] = Default::default();
    for f in &mut fields {
        let len = u32::from_le_bytes(b.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
        b = &b[4..];
        if len != NONE {
            let len = len as usize;
            let s = std::str::from_utf8(b.get(..len).ok_or_else(bad)?).map_err(|_| bad())?;
            *f = Some(Arc::from(s));
            b = &b[len..];
        }
    }
    let [stream_group, stream, batch_id, batch_slice_id, message_id, chunk_id] = fields;
    Ok(OutgoingMessage {
        target: Arc::new(StreamTarget { stream_group, stream }),
        kind,
        batch_id,
        batch_slice_id,
        message_id,
        chunk_id,
        content_encoding,
        payload: Bytes::copy_from_slice(b),
    })
}

/// Parses a JSON object stored as text.
pub fn parse_object(text: &str, what: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(corrupt(what)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_an_error() {
        let m = OutgoingMessage {
            target: Arc::new(StreamTarget::new(Some("g"), None).unwrap()),
            kind: MessageKind::MessageCompletion,
            batch_id: Some("b".into()),
            batch_slice_id: None,
            message_id: Some("ü".into()),
            chunk_id: None,
            content_encoding: Some(ContentEncoding::Zstd),
            payload: Bytes::from_static(b"\x00\x01payload"),
        };
        assert_eq!(decode_message(&encode_message(&m)).unwrap(), m);
        for bad in [&b""[..], b"\x02\x00\x00", b"\x01\x09\x00", b"\x01\x00\x00\x05\x00\x00\x00ab"] {
            assert!(decode_message(bad).is_err());
        }
    }
}
