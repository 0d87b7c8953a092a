//! The admin API (tokens, operations, devices, twins, direct methods, messages, traffic), the
//! Prometheus metrics and the dashboard's live feed; every route needs the admin token.

// Helpers return the ready error response; boxing it buys nothing on these cold paths.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::db::MessageQuery;
use crate::Inner;

use super::*;

pub(super) async fn admin_create_token(State(inner): Shared, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = require_admin(&inner, &headers) {
        return r;
    }
    let body = if body.is_empty() { Ok(serde_json::Map::new()) } else { json_object(&body) };
    let body = match body {
        Ok(b) => b,
        Err(r) => return r,
    };
    let ws = match optional_string(&body, "workspaceId") {
        Ok(w) => w.unwrap_or_else(|| inner.config.workspace_id.clone()),
        Err(r) => return r,
    };
    let token = inner.control.create_provisioning_token(&ws);
    Json(json!({"provisioningToken": token, "workspaceId": ws})).into_response()
}

pub(super) async fn admin_operations(State(inner): Shared, headers: HeaderMap) -> Response {
    if let Err(r) = require_admin(&inner, &headers) {
        return r;
    }
    let ops: Vec<Value> = inner
        .control
        .operations()
        .into_iter()
        .map(|op| {
            let mut v = json!(op);
            if let Value::Object(o) = &mut v {
                o.remove("provisioningToken");
            }
            v
        })
        .collect();
    Json(Value::Array(ops)).into_response()
}

pub(super) async fn admin_approve(
    State(inner): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = require_admin(&inner, &headers) {
        return r;
    }
    let body = if body.is_empty() { Ok(serde_json::Map::new()) } else { json_object(&body) };
    let device = match body.and_then(|b| optional_string(&b, "deviceId")) {
        Ok(d) => d,
        Err(r) => return r,
    };
    match inner.control.approve(&id, device.as_deref()) {
        Ok(device) => Json(json!({"deviceId": device})).into_response(),
        Err(e) => problem(StatusCode::CONFLICT, "/problems/conflict", &e.to_string()),
    }
}

pub(super) async fn admin_cancel(State(inner): Shared, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = require_admin(&inner, &headers) {
        return r;
    }
    if inner.control.cancel(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        problem(StatusCode::CONFLICT, "/problems/conflict", "operation is not pending")
    }
}

pub(super) async fn admin_devices(State(inner): Shared, headers: HeaderMap) -> Response {
    if let Err(r) = require_admin(&inner, &headers) {
        return r;
    }
    Json(json!(inner.devices())).into_response()
}

pub(super) async fn admin_twin(State(inner): Shared, Path(hub_id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = require_admin(&inner, &headers) {
        return r;
    }
    match inner.control.twin(&hub_id) {
        Some(t) => Json(t.document()).into_response(),
        None => problem(StatusCode::NOT_FOUND, "/problems/notFound", "no such device"),
    }
}

pub(super) async fn admin_desired(
    State(inner): Shared,
    Path(hub_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = require_admin(&inner, &headers) {
        return r;
    }
    let patch = match json_object(&body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    match inner.update_desired(&hub_id, patch) {
        Ok(version) => Json(json!({"version": version})).into_response(),
        Err(crate::state::TwinRefusal::NoDevice) => {
            problem(StatusCode::NOT_FOUND, "/problems/notFound", "no such device")
        }
        Err(crate::state::TwinRefusal::TooLarge) => {
            problem(StatusCode::PAYLOAD_TOO_LARGE, "/problems/tooLarge", "the desired properties would exceed 256 KiB")
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct C2dRequest {
    /// The payload as text (UTF-8).
    payload: Option<String>,
    /// The payload as hexadecimal digits (binary payloads).
    payload_hex: Option<String>,
    /// Properties (the topic's property bag).
    #[serde(default)]
    properties: std::collections::BTreeMap<String, String>,
    /// Time to live (default 3600 s, at most 2 days).
    ttl_seconds: Option<f64>,
}

/// `POST /admin/devices/{hub_device_id}/c2d`: queues a cloud-to-device message
/// (`{"payload": "…"}` or `{"payloadHex": "…"}`, `"properties": {…}`, `"ttlSeconds": n`); answers
/// `201 {"id": n}`. `GET` lists the device's messages and their states.
pub(super) async fn admin_send_c2d(
    State(inner): Shared,
    Path(hub_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = require_admin(&inner, &headers) {
        return r;
    }
    let bad = |detail: String| problem(StatusCode::BAD_REQUEST, "/problems/badRequest", &detail);
    let request: C2dRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(format!("invalid request: {e}")),
    };
    let payload = match (request.payload, request.payload_hex) {
        (Some(text), None) => text.into_bytes(),
        (None, Some(hex)) => match decode_hex(&hex) {
            Some(bytes) => bytes,
            None => return bad("payloadHex must be an even number of hexadecimal digits".into()),
        },
        (None, None) => Vec::new(),
        (Some(_), Some(_)) => return bad("give payload or payloadHex, not both".into()),
    };
    let ttl = request.ttl_seconds.unwrap_or(3600.0);
    if !(ttl.is_finite() && ttl > 0.0) {
        return bad("ttlSeconds must be a positive number".into());
    }
    let ttl = std::time::Duration::from_secs_f64(ttl.min(1e9));
    match inner.send_c2d(&hub_id, request.properties.into_iter().collect(), payload, ttl) {
        Ok(id) => (StatusCode::CREATED, Json(json!({"id": id}))).into_response(),
        Err(crate::C2dRefusal::UnknownDevice) => problem(StatusCode::NOT_FOUND, "/problems/notFound", "no such device"),
        Err(e @ crate::C2dRefusal::QueueFull) => {
            problem(StatusCode::TOO_MANY_REQUESTS, "/problems/queueFull", &e.to_string())
        }
        Err(e) => bad(e.to_string()),
    }
}

pub(super) async fn admin_list_c2d(State(inner): Shared, Path(hub_id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = require_admin(&inner, &headers) {
        return r;
    }
    Json(json!({"messages": inner.c2d.list(&hub_id)})).into_response()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

pub(super) async fn admin_disconnect(State(inner): Shared, Path(hub_id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = require_admin(&inner, &headers) {
        return r;
    }
    Json(json!({"disconnected": inner.disconnect(&hub_id)})).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct MethodQuery {
    /// Seconds to wait for the device's answer (default 30, at most 300).
    timeout_secs: Option<u64>,
}

/// Calls a direct method of a connected device: the request's body is the payload (JSON; empty
/// means `null`). Answers `{"status": …, "payload": …}` with the device's status and body (JSON
/// when it is), `404` when the device is not connected or takes no direct methods, `504` when it
/// did not answer in time.
pub(super) async fn admin_method(
    State(inner): Shared,
    Path((hub_id, method)): Path<(String, String)>,
    Query(query): Query<MethodQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = require_admin(&inner, &headers) {
        return r;
    }
    let payload = if body.iter().all(u8::is_ascii_whitespace) { b"null".to_vec() } else { body.to_vec() };
    if serde_json::from_slice::<Value>(&payload).is_err() {
        return (StatusCode::BAD_REQUEST, Json(json!({"detail": "the payload must be JSON"}))).into_response();
    }
    let timeout = std::time::Duration::from_secs(query.timeout_secs.unwrap_or(30).clamp(1, 300));
    match inner.invoke_method(&hub_id, &method, payload, timeout).await {
        Ok(answer) => {
            let payload = serde_json::from_slice::<Value>(&answer.payload)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&answer.payload).into_owned()));
            Json(json!({"status": answer.status, "payload": payload})).into_response()
        }
        Err(e) => {
            let status = match e {
                crate::MethodFailure::NotConnected => StatusCode::NOT_FOUND,
                crate::MethodFailure::Timeout => StatusCode::GATEWAY_TIMEOUT,
                crate::MethodFailure::BadMethod(_) => StatusCode::BAD_REQUEST,
                crate::MethodFailure::AnswerTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            };
            (status, Json(json!({"detail": e.to_string()}))).into_response()
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct MessagesQuery {
    after_id: Option<i64>,
    device: Option<String>,
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct LogsQuery {
    after_id: Option<i64>,
    device: Option<String>,
    level: Option<String>,
    limit: Option<usize>,
    last: Option<usize>,
}

/// `GET /admin/logs?afterId=&device=&level=&limit=&last=`: device log records (each once), oldest
/// first, at most `limit` (default 100, at most 10,000); `level` keeps those at least that severe;
/// `last=N` gives the newest N (after `afterId`).
pub(super) async fn admin_logs(State(inner): Shared, headers: HeaderMap, Query(q): Query<LogsQuery>) -> Response {
    if let Err(r) = require_admin(&inner, &headers) {
        return r;
    }
    if let Some(level) = q.level.as_deref() {
        if !["error", "warn", "info", "debug", "trace"].contains(&level.to_ascii_lowercase().as_str()) {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "level must be error, warn, info, debug or trace"})),
            )
                .into_response();
        }
    }
    let logs = inner
        .db
        .logs(crate::logs::LogQuery {
            after_id: q.after_id,
            hub_device_id: q.device,
            min_level: q.level,
            limit: Some(q.limit.unwrap_or(100).min(10_000)),
            last: q.last,
        })
        .await;
    Json(json!({ "records": logs, "duplicates": inner.db.log_duplicates() })).into_response()
}

/// Largest payload total in one `/admin/messages` answer (at least one message is returned).
const MAX_ADMIN_PAGE_BYTES: usize = 32 * 1024 * 1024;

#[derive(Deserialize)]
pub(super) struct TrafficQuery {
    from: Option<usize>,
    limit: Option<usize>,
}

/// `GET /admin/traffic?from=&limit=`: recorded traffic, a page at a time (at most 1,000 records).
pub(super) async fn admin_traffic(State(inner): Shared, headers: HeaderMap, Query(q): Query<TrafficQuery>) -> Response {
    if let Err(r) = require_admin(&inner, &headers) {
        return r;
    }
    let (records, dropped) = inner.traffic.records(q.from.unwrap_or(0), q.limit.unwrap_or(1000).min(1000));
    Json(json!({ "recording": inner.traffic.enabled(), "records": records, "notKept": dropped })).into_response()
}

pub(super) async fn admin_messages(
    State(inner): Shared,
    headers: HeaderMap,
    Query(q): Query<MessagesQuery>,
) -> Response {
    if let Err(r) = require_admin(&inner, &headers) {
        return r;
    }
    let messages = inner
        .db
        .messages(MessageQuery {
            after_id: q.after_id,
            hub_device_id: q.device,
            limit: Some(q.limit.unwrap_or(100).min(10_000)),
        })
        .await;
    // Paged by count (`limit`, at most 10,000) and by size: an answer stops after the message that
    // takes it past 32 MiB of payload (payloads are up to 16 MiB each); `afterId` continues.
    let mut bytes = 0usize;
    let messages: Vec<_> = messages
        .into_iter()
        .enumerate()
        .take_while(|(i, m)| {
            bytes += m.payload.len();
            *i == 0 || bytes <= MAX_ADMIN_PAGE_BYTES
        })
        .map(|(_, m)| m)
        .collect();
    let out: Vec<Value> = messages
        .into_iter()
        .map(|m| {
            let mut v = serde_json::to_value(&m).unwrap_or(Value::Null);
            if let Value::Object(o) = &mut v {
                match String::from_utf8(m.payload.clone()) {
                    Ok(text) => o.insert("payload".into(), Value::String(text)),
                    Err(_) => o.insert(
                        "payloadHex".into(),
                        Value::String(m.payload.iter().map(|b| format!("{b:02x}")).collect()),
                    ),
                };
            }
            v
        })
        .collect();
    Json(Value::Array(out)).into_response()
}

/// `GET /metrics`: the Prometheus text exposition (admin token).
pub(super) async fn metrics(State(inner): Shared, headers: HeaderMap) -> Response {
    if let Err(r) = require_admin(&inner, &headers) {
        return r;
    }
    let (devices, operations_pending) = {
        let state = inner.control.lock();
        let pending = state.operations.values().filter(|o| o.state == crate::state::OperationState::Pending).count();
        (state.devices.len(), pending)
    };
    let store_bytes = inner.config.data_dir.as_ref().map(|dir| {
        ["emulator.db", "emulator.db-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
            .map(|m| m.len())
            .sum::<u64>()
    });
    let gauges = crate::live::Gauges {
        devices,
        devices_connected: inner.sessions.len(),
        operations_pending,
        duplicates: inner.ingest.duplicates(),
        store_bytes,
        stored: inner.db.message_count().await,
    };
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        crate::live::prometheus(&inner.live, &gauges),
    )
        .into_response()
}

/// A dashboard following the feed: counted while it listens.
struct Listener {
    inner: Arc<Inner>,
    rx: tokio::sync::broadcast::Receiver<Arc<crate::live::FeedItem>>,
    tick: tokio::time::Interval,
    sent_this_second: u32,
    skipped: u64,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.inner.live.listeners.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `GET /admin/events` (admin token): Server-Sent Events for the dashboard. `message`: a stored
/// message (no payload; at most [`crate::live::FEED_PER_SECOND`] a second, the rest counted as
/// skipped); `totals`, every second: messages and wire bytes per stream since start, and the
/// feed items skipped so far.
pub(super) async fn admin_events(State(inner): Shared, headers: HeaderMap) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    if let Err(r) = require_admin(&inner, &headers) {
        return r;
    }
    inner.live.listeners.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let listener = Listener { rx: inner.live.subscribe(), inner: inner.clone(), tick, sent_this_second: 0, skipped: 0 };
    let events = futures_util::stream::unfold(listener, |mut l| async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            tokio::select! {
                _ = l.tick.tick() => {
                    l.sent_this_second = 0;
                    let (streams, all) = l.inner.live.streams();
                    let streams: Vec<Value> = streams
                        .into_iter()
                        .map(|((group, stream), t)| json!({"streamGroup": group, "stream": stream, "messages": t.messages, "bytes": t.bytes}))
                        .collect();
                    let data = json!({
                        "at": crate::state::now_ms(),
                        "messages": all.messages,
                        "bytes": all.bytes,
                        "streams": streams,
                        "skipped": l.skipped,
                    });
                    let event = Event::default().event("totals").data(data.to_string());
                    return Some((Ok::<_, std::convert::Infallible>(event), l));
                }
                item = l.rx.recv() => match item {
                    Ok(item) if l.sent_this_second < crate::live::FEED_PER_SECOND => {
                        l.sent_this_second += 1;
                        let data = serde_json::to_string(&*item).unwrap_or_default();
                        return Some((Ok(Event::default().event("message").data(data)), l));
                    }
                    Ok(_) => l.skipped += 1,
                    Err(RecvError::Lagged(n)) => l.skipped += n,
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}
