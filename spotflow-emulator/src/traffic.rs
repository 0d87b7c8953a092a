//! Traffic recording: every HTTP exchange and MQTT packet of the device protocol as the emulator
//! saw it, for wire-compatibility tests (the golden corpus of the official SDK's traffic) and for
//! looking at what a device really sends. Off unless [`crate::EmulatorBuilder::record_traffic`]
//! (or `--record-traffic`) turns it on; bounded; secrets are masked before anything is kept.
//!
//! A record is a JSON object with `seq` (order of arrival) and `proto` (`http` or `mqtt`):
//! - HTTP: `method`, `path`, `query` (the raw query string or null), `headers` (lower-case names;
//!   `host`, `content-length`, `connection` left out), `body` and `status`, `response`.
//! - MQTT: `dir` (`in`: from the device, `out`: to it), `device`, `packet` (`connect`, `connack`,
//!   `subscribe`, `suback`, `unsubscribe`, `publish`, `disconnect`) and the packet's fields.
//!
//! An MQTT payload is `{"text": …}` when it is UTF-8 (exactly as sent); an HTTP body is
//! `{"json": …}` when it is a JSON document, `{"text": …}` when it is other UTF-8; both are
//! `{"hex": …}` for other bytes up to 64 KiB, and `{"len": n, "crc32": …}` beyond (empty
//! bodies are `null`). Secrets are masked: `Authorization` headers, MQTT passwords, and JSON
//! string fields whose name says token, key, signature or password keep their shape, not their
//! value (`SharedAccessSignature sr=<kept>&sig=<sig>&se=<expiry>`, `Bearer <token>`).

use std::sync::Mutex;

use serde_json::{json, Map, Value};

/// Most records kept; later ones are counted, not kept.
pub const MAX_RECORDS: usize = 50_000;
/// Payloads up to this size are kept whole (hex or text); larger ones as length and CRC-32.
pub const MAX_INLINE_PAYLOAD: usize = 64 * 1024;

/// The recorder shared by the HTTP and MQTT sides.
#[derive(Default)]
pub(crate) struct Traffic {
    enabled: bool,
    records: Mutex<(Vec<Value>, u64)>,
}

impl Traffic {
    pub fn new(enabled: bool) -> Self {
        Traffic { enabled, records: Mutex::default() }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Keeps `record` (an object), numbered.
    pub fn record(&self, mut record: Map<String, Value>) {
        if !self.enabled {
            return;
        }
        let mut guard = spotflow_core::lock(&self.records);
        let (records, dropped) = &mut *guard;
        if records.len() >= MAX_RECORDS {
            *dropped += 1;
            return;
        }
        record.insert("seq".into(), json!(records.len()));
        records.push(Value::Object(record));
    }

    /// Records from `from` on (at most `limit`), and how many were not kept.
    pub fn records(&self, from: usize, limit: usize) -> (Vec<Value>, u64) {
        let guard = spotflow_core::lock(&self.records);
        (guard.0.iter().skip(from).take(limit).cloned().collect(), guard.1)
    }

    pub fn clear(&self) {
        let mut guard = spotflow_core::lock(&self.records);
        guard.0.clear();
        guard.1 = 0;
    }
}

/// How an MQTT payload is kept: UTF-8 as `{"text": …}` byte for byte (not re-serialised, so the
/// recording shows exactly what was sent), other bytes as described in the module docs.
pub fn payload(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.is_empty() && bytes.len() <= MAX_INLINE_PAYLOAD => json!({ "text": text }),
        _ => represent(bytes, false),
    }
}

/// How an HTTP body is kept: as [`payload`], with secret-named JSON fields masked.
pub fn body(bytes: &[u8]) -> Value {
    represent(bytes, true)
}

fn represent(bytes: &[u8], mask: bool) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Ok(mut doc) = serde_json::from_str::<Value>(text) {
            if bytes.len() <= MAX_INLINE_PAYLOAD {
                if mask {
                    mask_json(&mut doc);
                }
                return json!({ "json": doc });
            }
        }
        if bytes.len() <= MAX_INLINE_PAYLOAD {
            return json!({ "text": text });
        }
    }
    if bytes.len() <= MAX_INLINE_PAYLOAD {
        return json!({ "hex": hex(bytes) });
    }
    json!({ "len": bytes.len(), "crc32": format!("{:08x}", crc32fast::hash(bytes)) })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "connectionstring" || ["token", "key", "signature", "password", "secret"].iter().any(|s| n.ends_with(s))
}

/// Masks the values of secret-named string fields, keeping the document's shape.
pub fn mask_json(doc: &mut Value) {
    match doc {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if is_secret_name(k) {
                    if let Value::String(s) = v {
                        *s = mask_secret(s);
                        continue;
                    }
                }
                mask_json(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask_json),
        _ => {}
    }
}

/// A URL query that carries a SAS token (`sv=…&sr=b&sig=…`) as its shape only; other queries as
/// they are.
pub fn mask_query(query: &str) -> String {
    if query.contains("sig=") {
        mask_secret(&format!("?{query}")).split_off(1)
    } else {
        query.to_owned()
    }
}

/// The shape of a secret without its value: a SAS keeps its resource (`sr`) and the names of its
/// fields; a SAS token query (`?sv=…&sig=…`) keeps its field names; a `Bearer` token becomes
/// `Bearer <token>`; anything else `<secret>`.
pub fn mask_secret(value: &str) -> String {
    let fields = |query: &str| -> String {
        query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some(("sr", v)) => format!("sr={v}"),
                Some((k, _)) => format!("{k}=<{k}>"),
                None => kv.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&")
    };
    if let Some(rest) = value.strip_prefix("SharedAccessSignature ") {
        return format!("SharedAccessSignature {}", fields(rest));
    }
    if let Some(rest) = value.strip_prefix('?') {
        return format!("?{}", fields(rest));
    }
    if let Some((scheme, _)) = value.split_once(' ') {
        return format!("{scheme} <token>");
    }
    "<secret>".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_keep_their_shape_only() {
        assert_eq!(
            mask_secret("SharedAccessSignature sr=hub%2Fdevices%2Fws%3Ad&sig=abc%2B&se=1700000000"),
            "SharedAccessSignature sr=hub%2Fdevices%2Fws%3Ad&sig=<sig>&se=<se>"
        );
        assert_eq!(mask_secret("Bearer eyJ0b2tlbiI6"), "Bearer <token>");
        assert_eq!(mask_secret("?sv=2020&sr=b&sig=00ff"), "?sv=<sv>&sr=b&sig=<sig>");
        assert_eq!(mask_secret("raw-token"), "<secret>");
        assert_eq!(mask_query("sv=2020&sr=b&sig=00ff"), "sv=<sv>&sr=b&sig=<sig>");
        assert_eq!(mask_query("api-version=2020-03-13"), "api-version=2020-03-13");
        let mut doc = json!({"registrationToken": "t0k", "nested": [{"sasToken": "?sig=1"}], "deviceId": "d"});
        mask_json(&mut doc);
        assert_eq!(
            doc,
            json!({"registrationToken": "<secret>", "nested": [{"sasToken": "?sig=<sig>"}], "deviceId": "d"})
        );
    }

    #[test]
    fn payloads_by_kind() {
        assert_eq!(payload(b""), Value::Null);
        assert_eq!(payload(b"{\"a\":1}"), json!({"text": "{\"a\":1}"}));
        assert_eq!(body(b"{\"a\":1}"), json!({"json": {"a": 1}}));
        assert_eq!(body(b"{\"connectionStringType\":\"SAS\"}"), json!({"json": {"connectionStringType": "SAS"}}));
        assert_eq!(body(b"{\"apiKey\":\"k\"}"), json!({"json": {"apiKey": "<secret>"}}));
        assert_eq!(payload(b"hello"), json!({"text": "hello"}));
        assert_eq!(payload(&[0, 255]), json!({"hex": "00ff"}));
        let big = vec![0xffu8; MAX_INLINE_PAYLOAD + 1];
        assert_eq!(payload(&big)["len"], json!(MAX_INLINE_PAYLOAD + 1));
    }

    #[test]
    fn recording_is_bounded_and_off_by_default() {
        let off = Traffic::default();
        off.record(Map::new());
        assert!(off.records(0, 10).0.is_empty());
        let on = Traffic::new(true);
        for _ in 0..3 {
            on.record(Map::new());
        }
        let (records, dropped) = on.records(1, 10);
        assert_eq!((records.len(), dropped, records[0]["seq"].clone()), (2, 0, json!(1)));
    }
}
