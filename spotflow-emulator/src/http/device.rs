//! The device's side of the HTTPS API: provisioning, registration and token refresh, the file
//! upload API and blob store, and MQTT over WebSocket.

// Helpers return the ready error response; boxing it buys nothing on these cold paths.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use spotflow_core::time_format::rfc3339;
use tracing::{debug, info, warn};

use crate::state::{from_ms, hub_device_id, random_hex, CompleteOutcome};
use crate::uploads::{BodyRefused, StartRefused, MAX_PENDING, MAX_PENDING_PER_DEVICE};
use crate::wire::format_timespan;
use crate::Inner;

use super::*;

/// Longest blob name accepted.
const MAX_BLOB_NAME: usize = 256;

fn device_token(headers: &HeaderMap) -> Option<&str> {
    headers.get("authorization")?.to_str().ok()?.strip_prefix("DeviceToken ").map(str::trim)
}

/// The `DeviceToken` of a platform API request and its JSON object body (401 / 400 otherwise).
fn device_request<'h>(
    headers: &'h HeaderMap,
    body: &Bytes,
) -> Result<(&'h str, serde_json::Map<String, Value>), Response> {
    let token = device_token(headers).ok_or_else(|| unauthorized("missing DeviceToken authorization"))?;
    Ok((token, json_object(body)?))
}

/// A device's request whose body must carry the string `field`: the device's token and the field.
fn device_request_with<'h>(headers: &'h HeaderMap, body: &Bytes, field: &str) -> Result<(&'h str, String), Response> {
    let (token, body) = device_request(headers, body)?;
    match optional_string(&body, field) {
        Ok(Some(value)) => Ok((token, value)),
        _ => Err(bad_request(&format!("{field} (string) is required"))),
    }
}

pub(super) async fn init(State(inner): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let (token, body) = match device_request(&headers, &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let device_id = match optional_string(&body, "deviceId") {
        Ok(d) => d,
        Err(r) => return r,
    };
    if let Some(Err(e)) = device_id.as_deref().map(crate::state::validate_device_id) {
        return bad_request(&e.to_string());
    }
    let op = inner.control.with_state(|s, policy| s.init_operation(token, device_id, policy));
    let Some(op) = op else { return unauthorized("Invalid Provisioning Token") };
    info!(operation = %op.id, requested_device = ?op.requested_device_id, "provisioning operation initialized");
    Json(json!({
        "provisioningOperationId": op.id,
        "verificationCode": op.verification_code,
        "expirationTime": rfc3339(from_ms(op.expires_at)),
    }))
    .into_response()
}

pub(super) async fn complete(State(inner): Shared, headers: HeaderMap, body: Bytes) -> Result<Response, Response> {
    let (token, id) = device_request_with(&headers, &body, "provisioningOperationId")?;
    Ok(match inner.control.with_state(|s, policy| s.complete(token, &id, policy)) {
        CompleteOutcome::Pending => StatusCode::ACCEPTED.into_response(),
        CompleteOutcome::Approved { registration_token, expires_at } => {
            info!(operation = %id, "provisioning operation completed");
            registration_token_answer(&registration_token, expires_at)
        }
        CompleteOutcome::Expired => problem(
            StatusCode::GONE,
            "/problems/deviceProvisioning/provisioningOperationExpired",
            "The provisioning operation expired.",
        ),
        CompleteOutcome::Cancelled => problem(
            StatusCode::GONE,
            "/problems/deviceProvisioning/provisioningOperationCancelled",
            "The provisioning operation was cancelled.",
        ),
        CompleteOutcome::NotFound => {
            problem(StatusCode::NOT_FOUND, "/problems/notFound", "No such provisioning operation.")
        }
        CompleteOutcome::Unauthorized => unauthorized("Invalid Provisioning Token"),
    })
}

pub(super) async fn register(State(inner): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let (token, body) = match device_request(&headers, &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    match optional_string(&body, "connectionStringType") {
        Ok(Some(t)) if t == "SharedAccessSignature" => {}
        Ok(_) => return bad_request("connectionStringType must be \"SharedAccessSignature\""),
        Err(r) => return r,
    }
    let hub = inner.config.hub_host.clone();
    let Some((info, sas, expires_at)) = inner.control.with_state(|s, policy| s.register(token, &hub, policy)) else {
        return unauthorized("Invalid Registration Token");
    };
    let hub_id = hub_device_id(&info.workspace_id, &info.device_id);
    info!(device = %hub_id, "device registered");
    let remaining = from_ms(info.expires_at).duration_since(std::time::SystemTime::now()).unwrap_or_default();
    Json(json!({
        "connectionString": format!("HostName={hub};DeviceId={hub_id};SharedAccessSignature={sas}"),
        "iotHubHostName": hub,
        "connectionStringType": "SharedAccessSignature",
        "connectionStringExpiration": rfc3339(from_ms(expires_at)),
        "tokenRemainingLifetime": format_timespan(remaining),
    }))
    .into_response()
}

pub(super) async fn refresh(State(inner): Shared, headers: HeaderMap, body: Bytes) -> Result<Response, Response> {
    let (token, rt) = device_request_with(&headers, &body, "registrationToken")?;
    Ok(match inner.control.with_state(|s, policy| s.refresh(token, &rt, policy)) {
        Some((token, expires_at)) => {
            info!("registration token refreshed");
            registration_token_answer(&token, expires_at)
        }
        None => unauthorized("Invalid Registration Token"),
    })
}

/// The device a raw SAS `Authorization` header authorises, if it matches the path's device.
fn sas_device(inner: &Inner, headers: &HeaderMap, hub_id: &str) -> Result<(), Response> {
    let sas = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    let state = inner.control.lock();
    match state.authorize(sas) {
        Some(d) if d == hub_id => Ok(()),
        _ => Err(unauthorized("invalid shared access signature")),
    }
}

pub(super) async fn file_upload_init(
    State(inner): Shared,
    Path(hub_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = sas_device(&inner, &headers, &hub_id) {
        return r;
    }
    let body = match json_object(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(Some(blob)) = optional_string(&body, "blobName") else { return bad_request("blobName is required") };
    if blob.is_empty()
        || blob.len() > MAX_BLOB_NAME
        || blob.contains(['/', '?', '#'])
        || blob.chars().any(char::is_control)
    {
        return bad_request("invalid blobName (1 to 256 bytes, no '/', '?', '#' or control characters)");
    }
    // Blob names are scoped to the device that started the upload: another device's pending
    // upload, or stored blob, of the same name is not taken over.
    if inner.db.blob_owner(blob.clone()).await.is_some_and(|owner| owner != hub_id) {
        return problem(StatusCode::CONFLICT, "/problems/blob-taken", "the blob name is used by another device");
    }
    let correlation = random_hex(16);
    let signature = random_hex(16);
    let sas_token = format!("?sv=2020-08-04&sr=b&sig={signature}");
    match inner.uploads.start(&hub_id, &blob, signature) {
        Ok(()) => {}
        Err(StartRefused::Taken) => {
            return problem(StatusCode::CONFLICT, "/problems/blob-taken", "the blob name is used by another device")
        }
        Err(StartRefused::DeviceBusy) => {
            warn!(device = %hub_id, "a device has {MAX_PENDING_PER_DEVICE} uploads in progress; refusing another");
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "/problems/busy",
                &format!("this device has {MAX_PENDING_PER_DEVICE} uploads in progress"),
            );
        }
        Err(StartRefused::Busy) => {
            warn!("{MAX_PENDING} uploads in progress; refusing a new one");
            return problem(StatusCode::SERVICE_UNAVAILABLE, "/problems/busy", "too many uploads in progress");
        }
    }
    let host = inner.upload_host();
    debug!(device = %hub_id, ?blob, "file upload started");
    Json(json!({
        "correlationId": correlation,
        "hostName": host,
        "containerName": "uploads",
        "blobName": blob,
        "sasToken": sas_token,
    }))
    .into_response()
}

/// A blob's upload: refused from the request line and headers alone when it announces more than
/// the limit (413) or has no started upload or a wrong signature (401), before any byte of the
/// body is read; then streamed to a spool file and into the database.
pub(super) async fn put_blob(
    State(inner): Shared,
    Path(blob): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let announced = match headers
        .get(axum::http::header::CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|v| v.parse::<u64>().ok()))
    {
        None => None,
        Some(Some(n)) => Some(n),
        Some(None) => return bad_request("invalid Content-Length"),
    };
    if let Some(n) = announced.filter(|&n| n > MAX_BLOB_BYTES as u64) {
        discard_after_answering(body, n);
        return too_large();
    }
    let hub_id = match inner.uploads.authorize(&blob, query.get("sig").map(String::as_str)) {
        Ok(device) => device,
        Err(why) => return unauthorized(why),
    };
    let (file, len, _in_flight) = match inner.uploads.receive(announced, body).await {
        Ok(received) => received,
        Err(BodyRefused::TooLarge) => return too_large(),
        Err(BodyRefused::Busy) => {
            let mut busy =
                problem(StatusCode::SERVICE_UNAVAILABLE, "/problems/busy", "too many bytes of uploads in flight");
            busy.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
            return busy;
        }
        Err(BodyRefused::Client(why)) => {
            debug!(device = %hub_id, error = %why, "blob upload not received");
            return bad_request("the body was not received");
        }
        Err(BodyRefused::Storage(why)) => {
            warn!(error = %why, "cannot receive a blob");
            return problem(StatusCode::INTERNAL_SERVER_ERROR, "/problems/storage", "cannot store the blob");
        }
    };
    match inner.db.put_blob(blob.clone(), hub_id.clone(), file, len).await {
        Ok(true) => inner.uploads.finish(&hub_id, &blob),
        Ok(false) => {
            return problem(StatusCode::CONFLICT, "/problems/blob-taken", "the blob belongs to another device")
        }
        Err(()) => return problem(StatusCode::INTERNAL_SERVER_ERROR, "/problems/storage", "cannot store the blob"),
    }
    StatusCode::CREATED.into_response()
}

/// Reads and drops the rest of a refused upload's body while the refusal is sent: an HTTP client
/// still sending a large body reads the answer only once it has sent it, and a connection closed
/// under it instead gives the client a broken pipe, which it retries as a network failure (the
/// SDK then backed off for up to 30 s before it saw the 413). Bounded in bytes (the announced
/// length, at most [`MAX_DISCARDED_BYTES`]) and in time ([`DISCARD_TIME`]); nothing is kept.
fn discard_after_answering(body: axum::body::Body, announced: u64) {
    tokio::spawn(async move {
        let limit = announced.min(MAX_DISCARDED_BYTES);
        let mut chunks = body.into_data_stream();
        let mut read = 0u64;
        let _ = tokio::time::timeout(DISCARD_TIME, async {
            while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut chunks).await {
                read += chunk.len() as u64;
                if read >= limit {
                    break;
                }
            }
        })
        .await;
    });
}

/// Most bytes of a refused upload read (and dropped) so that its client gets the refusal.
const MAX_DISCARDED_BYTES: u64 = 64 * 1024 * 1024;

/// Longest time a refused upload's body is read for.
const DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(10);

fn too_large() -> Response {
    problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        "/problems/too-large",
        &format!("blobs are limited to {MAX_BLOB_BYTES} bytes"),
    )
}

pub(super) async fn file_upload_notify(
    State(inner): Shared,
    Path(hub_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, Response> {
    sas_device(&inner, &headers, &hub_id)?;
    json_object(&body)?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn websocket(State(inner): Shared, ws: WebSocketUpgrade) -> Response {
    ws.protocols(["mqtt"])
        .max_message_size(inner.config.max_packet_size * 2)
        .on_upgrade(move |socket| websocket_session(inner, socket))
}

/// Runs the MQTT session on the WebSocket's binary frames, read and written as a byte stream.
async fn websocket_session(inner: Arc<Inner>, socket: WebSocket) {
    crate::mqtt::run_session(inner, WsBytes { socket, pending: Bytes::new() }, "websocket".into()).await;
}

/// A WebSocket as a byte stream: binary frames in (packets may span frames, frames may hold
/// several), one binary frame per write out. Text frames are a protocol error.
struct WsBytes {
    socket: WebSocket,
    pending: Bytes,
}

impl tokio::io::AsyncRead for WsBytes {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use futures_util::StreamExt;
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return std::task::Poll::Ready(Ok(()));
            }
            match std::task::ready!(this.socket.poll_next_unpin(cx)) {
                Some(Ok(WsMessage::Binary(data))) => this.pending = data,
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                Some(Ok(WsMessage::Text(_))) => {
                    warn!("text frame on the MQTT WebSocket; closing");
                    return std::task::Poll::Ready(Err(std::io::ErrorKind::InvalidData.into()));
                }
                Some(Ok(WsMessage::Close(_))) | None => return std::task::Poll::Ready(Ok(())),
                Some(Err(e)) => return std::task::Poll::Ready(Err(std::io::Error::other(e))),
            }
        }
    }
}

impl tokio::io::AsyncWrite for WsBytes {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use futures_util::SinkExt;
        let this = self.get_mut();
        std::task::ready!(this.socket.poll_ready_unpin(cx)).map_err(std::io::Error::other)?;
        this.socket.start_send_unpin(WsMessage::Binary(Bytes::copy_from_slice(data))).map_err(std::io::Error::other)?;
        std::task::Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use futures_util::SinkExt;
        self.get_mut().socket.poll_flush_unpin(cx).map_err(std::io::Error::other)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use futures_util::SinkExt;
        self.get_mut().socket.poll_close_unpin(cx).map_err(std::io::Error::other)
    }
}

/// A registration token and its expiry, as provisioning and refresh answer them.
fn registration_token_answer(token: &str, expires_at: crate::state::Millis) -> Response {
    Json(json!({"registrationToken": token, "expirationTime": rfc3339(from_ms(expires_at))})).into_response()
}
