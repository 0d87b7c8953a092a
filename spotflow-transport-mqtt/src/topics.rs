//! The platform's MQTT mapping: topics, the telemetry property bag, twin responses.

use std::fmt::Write;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{Map, Value};
use spotflow_core::{DesiredState, MessageKind, OutgoingMessage, TwinDocument};

/// Everything except ASCII alphanumerics and `-_.~` is percent-encoded (space → `%20`).
const VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// The subscriptions of a device, in one SUBSCRIBE, in the official SDK's order: direct methods
/// (only when the device takes them), twin responses, desired-property patches, and
/// cloud-to-device messages. The official SDKs always subscribe to the last (the platform may
/// queue messages for the device otherwise); this SDK has no API for them, so they are
/// acknowledged and dropped with a log line, as the official Python package never hands them to
/// the application either.
pub fn subscriptions(hub_device_id: &str, direct_methods: bool) -> Vec<String> {
    let mut filters = Vec::with_capacity(4);
    if direct_methods {
        filters.push("$iothub/methods/POST/#".to_owned());
    }
    filters.extend([
        "$iothub/twin/res/#".to_owned(),
        "$iothub/twin/PATCH/properties/desired/#".to_owned(),
        format!("devices/{hub_device_id}/messages/devicebound/#"),
    ]);
    filters
}

/// `$iothub/methods/res/{status}/?$rid={rid}`: the answer to a direct method call.
pub fn method_response_topic(status: u16, rid: &str) -> String {
    format!("$iothub/methods/res/{status}/?$rid={rid}")
}

/// The MQTT user name: `{hub}/{hubDeviceId}/?api-version=2018-06-30`.
pub fn username(hub_host: &str, hub_device_id: &str) -> String {
    format!("{hub_host}/{hub_device_id}/?api-version=2018-06-30")
}

/// The telemetry topic with its property bag, keys in the platform's fixed order, and the
/// message key as the `$.mid` system property last (when given).
pub fn telemetry_topic(
    hub_device_id: &str,
    m: &OutgoingMessage,
    externalized: bool,
    message_key: Option<&str>,
) -> String {
    let mut topic = format!("devices/{hub_device_id}/messages/events/");
    let mut first = true;
    let mut push = |topic: &mut String, key: &str, value: &str| {
        if !first {
            topic.push('&');
        }
        first = false;
        let _ = write!(topic, "{key}={}", utf8_percent_encode(value, VALUE));
    };
    if let Some(v) = &m.target.stream_group {
        push(&mut topic, "stream-group-name", v);
    }
    if let Some(v) = &m.target.stream {
        push(&mut topic, "stream-name", v);
    }
    for (key, value) in [
        ("batch-id", &m.batch_id),
        ("batch-slice-id", &m.batch_slice_id),
        ("message-id", &m.message_id),
        ("chunk-id", &m.chunk_id),
    ] {
        if let Some(v) = value {
            push(&mut topic, key, v);
        }
    }
    if let Some(enc) = m.content_encoding {
        push(&mut topic, "content-encoding", enc.as_str());
    }
    if externalized {
        push(&mut topic, "has-externalized-payload", "true");
    }
    match m.kind {
        MessageKind::Data => {}
        MessageKind::BatchCompletion => {
            push(&mut topic, "complete-batch", "true");
            push(&mut topic, "ignore-payload", "true");
        }
        MessageKind::MessageCompletion => {
            push(&mut topic, "complete-message", "true");
            push(&mut topic, "ignore-payload", "true");
        }
    }
    if let Some(key) = message_key {
        push(&mut topic, "$.mid", key);
    }
    topic
}

/// `$iothub/twin/GET/?$rid={rid}`.
pub fn twin_get_topic(rid: u64) -> String {
    format!("$iothub/twin/GET/?$rid={rid}")
}

/// `$iothub/twin/PATCH/properties/reported/?$rid={rid}`.
pub fn reported_patch_topic(rid: u64) -> String {
    format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}")
}

fn query<'a>(topic: &'a str, key: &str) -> Option<&'a str> {
    topic.split_once('?')?.1.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Something the platform published to the device.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// `$iothub/twin/res/{status}/?$rid={rid}[&$version={v}]`.
    TwinResponse {
        /// Status code.
        status: u16,
        /// Request id.
        rid: u64,
        /// `$version`, when present.
        version: Option<u64>,
    },
    /// `$iothub/twin/PATCH/properties/desired/?$version={v}` with its patch (without `$version`).
    DesiredPatch {
        /// New version.
        version: u64,
        /// The merge patch.
        patch: Map<String, Value>,
    },
    /// `$iothub/methods/POST/{method}/?$rid={rid}`: a direct method call (the method's name is
    /// everything up to the last `/`, and may contain `/`).
    MethodCall {
        /// The method.
        method: String,
        /// Request id, to answer with.
        rid: String,
        /// The call's payload.
        payload: Vec<u8>,
    },
    /// A cloud-to-device message (`devices/{id}/messages/devicebound/…`).
    CloudToDevice {
        /// Its property bag (the topic after `devicebound/`), decoded.
        properties: Vec<(String, String)>,
        /// The payload.
        payload: Vec<u8>,
    },
    /// Anything else (ignored by the device, with the reason).
    Ignored(String),
}

/// Classifies an incoming publish; never panics on malformed input.
pub fn parse_incoming(topic: &str, payload: &[u8]) -> Incoming {
    if let Some(rest) = topic.strip_prefix("$iothub/twin/res/") {
        let Some((status, _)) = rest.split_once('/') else {
            return Incoming::Ignored(format!("malformed twin response topic {topic:?}"));
        };
        let Ok(status) = status.parse::<u16>() else {
            return Incoming::Ignored(format!("non-numeric twin status in {topic:?}"));
        };
        let Some(rid) = query(topic, "$rid").and_then(|r| r.parse::<u64>().ok()) else {
            return Incoming::Ignored(format!("twin response without a known $rid: {topic:?}"));
        };
        let version = query(topic, "$version").and_then(|v| v.parse().ok());
        return Incoming::TwinResponse { status, rid, version };
    }
    if topic.starts_with("$iothub/twin/PATCH/properties/desired/") {
        let Some(version) = query(topic, "$version").and_then(|v| v.parse::<u64>().ok()) else {
            return Incoming::Ignored(format!("desired patch without a numeric $version: {topic:?}"));
        };
        let Ok(Value::Object(mut patch)) = serde_json::from_slice::<Value>(payload) else {
            return Incoming::Ignored("desired patch payload is not a JSON object".into());
        };
        let body_version = patch.remove("$version").and_then(|v| v.as_u64());
        if body_version.is_some_and(|b| b != version) {
            return Incoming::Ignored(format!(
                "desired patch $version {body_version:?} differs from the topic's {version}"
            ));
        }
        return Incoming::DesiredPatch { version, patch };
    }
    if let Some(rest) = topic.strip_prefix("$iothub/methods/POST/") {
        let path = rest.split_once('?').map_or(rest, |(path, _)| path);
        let Some((method, _)) = path.rsplit_once('/') else {
            return Incoming::Ignored(format!("direct method call without a method: {topic:?}"));
        };
        let Some(rid) = query(topic, "$rid").filter(|r| !r.is_empty()) else {
            return Incoming::Ignored(format!("direct method call without a $rid: {topic:?}"));
        };
        if method.is_empty() {
            return Incoming::Ignored(format!("direct method call without a method: {topic:?}"));
        }
        return Incoming::MethodCall { method: method.to_owned(), rid: rid.to_owned(), payload: payload.to_vec() };
    }
    if let Some((_, properties)) = topic.split_once("/messages/devicebound/") {
        if topic.starts_with("devices/") {
            return Incoming::CloudToDevice { properties: property_bag(properties), payload: payload.to_vec() };
        }
    }
    Incoming::Ignored(format!("unexpected topic {topic:?}"))
}

/// Decodes a property bag: `&`-separated, `=` optional (a key without one gets `""`), keys and
/// values percent-decoded (invalid UTF-8 replaced).
pub fn property_bag(bag: &str) -> Vec<(String, String)> {
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
    bag.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Parses a full twin document `{"desired":{…,"$version":n},"reported":{…,"$version":m}}`.
pub fn parse_twin(payload: &[u8]) -> Option<TwinDocument> {
    let Value::Object(mut doc) = serde_json::from_slice::<Value>(payload).ok()? else { return None };
    let mut take = |key: &str| -> Option<(Map<String, Value>, u64)> {
        let Value::Object(mut m) = doc.remove(key)? else { return None };
        let version = m.remove("$version")?.as_u64()?;
        m.remove("$metadata");
        Some((m, version))
    };
    let (desired, desired_version) = take("desired")?;
    let (reported, reported_version) = take("reported")?;
    Some(TwinDocument {
        desired: DesiredState { version: desired_version, values: desired },
        reported,
        reported_version,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use spotflow_core::{ContentEncoding, StreamTarget};

    fn message(kind: MessageKind) -> OutgoingMessage {
        OutgoingMessage {
            target: Arc::new(StreamTarget::new(Some("sg 1"), Some("st/1")).unwrap()),
            kind,
            batch_id: Some("b1".into()),
            batch_slice_id: None,
            message_id: None,
            chunk_id: None,
            content_encoding: None,
            payload: bytes::Bytes::new(),
        }
    }

    #[test]
    fn topics_match_the_platform_byte_for_byte() {
        let hub = "ws1:dev1";
        let mut m = message(MessageKind::Data);
        m.message_id = Some("m1".into());
        m.content_encoding = Some(ContentEncoding::Lz4);
        assert_eq!(
            telemetry_topic(hub, &m, false, None),
            "devices/ws1:dev1/messages/events/stream-group-name=sg%201&stream-name=st%2F1&batch-id=b1&message-id=m1&content-encoding=lz4"
        );
        let mut m = message(MessageKind::Data);
        m.batch_slice_id = Some("s1".into());
        m.message_id = Some("m2".into());
        m.chunk_id = Some("c1".into());
        assert_eq!(
            telemetry_topic(hub, &m, false, None),
            "devices/ws1:dev1/messages/events/stream-group-name=sg%201&stream-name=st%2F1&batch-id=b1&batch-slice-id=s1&message-id=m2&chunk-id=c1"
        );
        let mut m = message(MessageKind::MessageCompletion);
        m.message_id = Some("m2".into());
        assert_eq!(
            telemetry_topic(hub, &m, false, None),
            "devices/ws1:dev1/messages/events/stream-group-name=sg%201&stream-name=st%2F1&batch-id=b1&message-id=m2&complete-message=true&ignore-payload=true"
        );
        assert_eq!(
            telemetry_topic(hub, &message(MessageKind::BatchCompletion), false, None),
            "devices/ws1:dev1/messages/events/stream-group-name=sg%201&stream-name=st%2F1&batch-id=b1&complete-batch=true&ignore-payload=true"
        );
        let bare =
            OutgoingMessage { target: Arc::new(StreamTarget::default()), batch_id: None, ..message(MessageKind::Data) };
        assert_eq!(telemetry_topic(hub, &bare, false, None), "devices/ws1:dev1/messages/events/");
        assert_eq!(
            telemetry_topic(hub, &bare, true, None),
            "devices/ws1:dev1/messages/events/has-externalized-payload=true"
        );
        assert_eq!(username("hub.local", hub), "hub.local/ws1:dev1/?api-version=2018-06-30");
        assert_eq!(
            telemetry_topic(hub, &bare, false, Some("0a1b-42")),
            "devices/ws1:dev1/messages/events/$.mid=0a1b-42"
        );
        let unicode = OutgoingMessage { batch_id: Some("ü~-_.".into()), ..bare };
        assert_eq!(telemetry_topic(hub, &unicode, false, None), "devices/ws1:dev1/messages/events/batch-id=%C3%BC~-_.");
    }

    #[test]
    fn incoming_topics_are_parsed_without_panics() {
        assert_eq!(
            parse_incoming("$iothub/twin/res/204/?$rid=7&$version=3", b""),
            Incoming::TwinResponse { status: 204, rid: 7, version: Some(3) }
        );
        assert_eq!(
            parse_incoming("$iothub/twin/res/200/?$rid=8", b"{}"),
            Incoming::TwinResponse { status: 200, rid: 8, version: None }
        );
        for bad in [
            "$iothub/twin/res/abc/?$rid=1",
            "$iothub/twin/res/",
            "$iothub/twin/res/200/?$rid=x",
            "$iothub/twin/res/200",
            "other/topic",
        ] {
            assert!(matches!(parse_incoming(bad, b""), Incoming::Ignored(_)), "{bad}");
        }
        assert_eq!(
            parse_incoming("$iothub/twin/PATCH/properties/desired/?$version=4", br#"{"a":1,"$version":4}"#),
            Incoming::DesiredPatch { version: 4, patch: serde_json::json!({"a":1}).as_object().cloned().unwrap() }
        );
        assert!(matches!(
            parse_incoming("$iothub/twin/PATCH/properties/desired/?$version=4", br#"{"$version":5}"#),
            Incoming::Ignored(_)
        ));
        assert!(matches!(
            parse_incoming("$iothub/twin/PATCH/properties/desired/?$version=4", b"[]"),
            Incoming::Ignored(_)
        ));
        assert!(matches!(parse_incoming("$iothub/twin/PATCH/properties/desired/", b"{}"), Incoming::Ignored(_)));
        assert_eq!(
            parse_incoming("devices/ws:d/messages/devicebound/%24.mid=1&k=v%201&flag", b"abc"),
            Incoming::CloudToDevice {
                properties: vec![
                    ("$.mid".into(), "1".into()),
                    ("k".into(), "v 1".into()),
                    ("flag".into(), String::new())
                ],
                payload: b"abc".to_vec()
            }
        );
        assert_eq!(subscriptions("ws:d", false)[2], "devices/ws:d/messages/devicebound/#");
        assert_eq!(subscriptions("ws:d", true)[0], "$iothub/methods/POST/#", "first, as the official SDK's");
        assert_eq!(subscriptions("ws:d", true).len(), 4);
        assert_eq!(
            parse_incoming("$iothub/methods/POST/reboot/?$rid=1f", b"{}"),
            Incoming::MethodCall { method: "reboot".into(), rid: "1f".into(), payload: b"{}".to_vec() }
        );
        assert_eq!(
            parse_incoming("$iothub/methods/POST/a/b/?$rid=2", b""),
            Incoming::MethodCall { method: "a/b".into(), rid: "2".into(), payload: Vec::new() }
        );
        for bad in ["$iothub/methods/POST/x/", "$iothub/methods/POST/?$rid=1", "$iothub/methods/POST/x/?$rid="] {
            assert!(matches!(parse_incoming(bad, b""), Incoming::Ignored(_)), "{bad}");
        }
        assert_eq!(method_response_topic(404, "1f"), "$iothub/methods/res/404/?$rid=1f");
    }

    #[test]
    fn twin_documents() {
        let t = parse_twin(br#"{"desired":{"a":1,"$version":3},"reported":{"$version":2,"$metadata":{}}}"#).unwrap();
        assert_eq!((t.desired.version, t.reported_version, t.reported.len()), (3, 2, 0));
        assert_eq!(t.desired.values, serde_json::json!({"a":1}).as_object().cloned().unwrap());
        for bad in [&b"{}"[..], b"[]", b"{\"desired\":{},\"reported\":{\"$version\":1}}", b"not json"] {
            assert!(parse_twin(bad).is_none());
        }
    }
}
