//! HTTP(S) surface: the platform API (provisioning, registration, refresh), the IoT Hub style
//! file-upload API and blob store, the admin API, and the MQTT-over-WebSocket endpoint.

// Helpers return the ready error response; boxing it buys nothing on these cold paths.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use spotflow_core::time_format::rfc3339;
use tracing::{debug, info, warn};

use crate::db::MessageQuery;
use crate::state::{from_ms, hub_device_id, random_hex, CompleteOutcome};
use crate::wire::format_timespan;
use crate::Inner;

type Shared = State<Arc<Inner>>;

/// The router with every route.
pub(crate) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/provisioning-operations/init", post(init))
        .route("/provisioning-operations/complete", put(complete))
        .route("/devices/register", put(register))
        .route("/devices/registration-tokens/refresh", put(refresh))
        .route("/devices/{hub_device_id}/files", post(file_upload_init))
        .route("/devices/{hub_device_id}/files/notifications", post(file_upload_notify))
        .route("/uploads/{blob}", put(put_blob))
        .route("/$iothub/websocket", get(websocket))
        .route("/admin/provisioning-tokens", post(admin_create_token))
        .route("/admin/operations", get(admin_operations))
        .route("/admin/operations/{id}/approve", post(admin_approve))
        .route("/admin/operations/{id}/cancel", post(admin_cancel))
        .route("/admin/devices", get(admin_devices))
        .route("/admin/devices/{hub_device_id}/twin", get(admin_twin))
        .route("/admin/devices/{hub_device_id}/desired", patch(admin_desired))
        .route("/admin/devices/{hub_device_id}/disconnect", post(admin_disconnect))
        .route("/admin/devices/{hub_device_id}/methods/{*method}", post(admin_method))
        .route("/admin/devices/{hub_device_id}/tunnel", get(admin_tunnel))
        .route("/tunnels/{tunnel_id}", get(device_tunnel))
        .route("/admin/messages", get(admin_messages))
        .route("/admin/traffic", get(admin_traffic))
        .route("/admin/events", get(admin_events))
        .route("/metrics", get(metrics))
        .route("/", get(root_redirect))
        .route("/dashboard", get(dashboard_page))
        .route("/dashboard/app.js", get(dashboard_script))
        .route("/dashboard/app.css", get(dashboard_style))
        .layer(axum::middleware::from_fn_with_state(inner.clone(), record_http))
        .layer(axum::middleware::from_fn_with_state(inner.clone(), request_deadline))
        .with_state(inner)
}

/// Bounds every request, body included (a client trickling a body is cut off with 408); not the
/// dashboard's live feed, which lasts as long as the page is open.
async fn request_deadline(
    State(inner): Shared,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.uri().path() == "/admin/events" {
        return next.run(request).await;
    }
    match tokio::time::timeout(inner.config.http_request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => problem(StatusCode::REQUEST_TIMEOUT, "/problems/timeout", "the request took too long"),
    }
}

pub use crate::uploads::MAX_BLOB_BYTES;
use crate::uploads::{BodyRefused, StartRefused, MAX_PENDING, MAX_PENDING_PER_DEVICE};

/// Longest blob name accepted.
const MAX_BLOB_NAME: usize = 256;

/// Largest body the traffic recorder reads (the SDK's largest upload is 16 MiB).
const MAX_RECORDED_BODY: usize = 64 * 1024 * 1024;

/// Records the device protocol's HTTP exchanges when traffic recording is on (not the admin API
/// or the WebSocket upgrade).
async fn record_http(State(inner): Shared, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let path = request.uri().path().to_owned();
    if !inner.traffic.enabled() || path.starts_with("/admin/") || path == "/$iothub/websocket" {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_RECORDED_BODY).await else {
        return problem(StatusCode::PAYLOAD_TOO_LARGE, "/problems/too-large", "request body too large");
    };
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        let name = name.as_str();
        if matches!(name, "host" | "content-length" | "connection") {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes());
        let value = if name == "authorization" { crate::traffic::mask_secret(&value) } else { value.into_owned() };
        headers.insert(name.to_owned(), Value::String(value));
    }
    let mut record = serde_json::Map::new();
    record.insert("proto".into(), json!("http"));
    record.insert("method".into(), json!(parts.method.as_str()));
    record.insert("path".into(), json!(path));
    // A blob upload's query is a SAS token: its shape only.
    record.insert("query".into(), json!(parts.uri.query().map(crate::traffic::mask_query)));
    record.insert("headers".into(), Value::Object(headers));
    record.insert("body".into(), crate::traffic::body(&body));
    let response = next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(body))).await;
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, MAX_RECORDED_BODY).await.unwrap_or_default();
    record.insert("status".into(), json!(parts.status.as_u16()));
    record.insert("response".into(), crate::traffic::body(&body));
    inner.traffic.record(record);
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// RFC 7807 problem details.
fn problem(status: StatusCode, kind: &str, title: &str) -> Response {
    let body = json!({"type": kind, "title": title, "status": status.as_u16(), "detail": title});
    (status, [("content-type", "application/problem+json")], body.to_string()).into_response()
}

fn bad_request(detail: &str) -> Response {
    problem(StatusCode::BAD_REQUEST, "/problems/badRequest", detail)
}

fn unauthorized(detail: &str) -> Response {
    problem(StatusCode::UNAUTHORIZED, "/problems/unauthorized", detail)
}

fn device_token(headers: &HeaderMap) -> Option<&str> {
    headers.get("authorization")?.to_str().ok()?.strip_prefix("DeviceToken ").map(str::trim)
}

/// Parses a JSON object body, or answers 400.
fn json_object(body: &Bytes) -> Result<serde_json::Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad_request("the body must be a JSON object")),
        Err(e) => Err(bad_request(&format!("invalid JSON body: {e}"))),
    }
}

/// The `DeviceToken` of a platform API request and its JSON object body (401 / 400 otherwise).
fn device_request<'h>(
    headers: &'h HeaderMap,
    body: &Bytes,
) -> Result<(&'h str, serde_json::Map<String, Value>), Response> {
    let token = device_token(headers).ok_or_else(|| unauthorized("missing DeviceToken authorization"))?;
    Ok((token, json_object(body)?))
}

fn optional_string(body: &serde_json::Map<String, Value>, key: &str) -> Result<Option<String>, Response> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad_request(&format!("{key} must be a string"))),
    }
}

async fn init(State(inner): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let (token, body) = match device_request(&headers, &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let device_id = match optional_string(&body, "deviceId") {
        Ok(d) => d,
        Err(r) => return r,
    };
    if let Some(Err(e)) = device_id.as_deref().map(crate::state::validate_device_id) {
        return bad_request(&e);
    }
    let op = inner.with_state(|s, policy| s.init_operation(token, device_id, policy));
    let Some(op) = op else { return unauthorized("Invalid Provisioning Token") };
    info!(operation = %op.id, requested_device = ?op.requested_device_id, "provisioning operation initialized");
    Json(json!({
        "provisioningOperationId": op.id,
        "verificationCode": op.verification_code,
        "expirationTime": rfc3339(from_ms(op.expires_at)),
    }))
    .into_response()
}

async fn complete(State(inner): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let (token, body) = match device_request(&headers, &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Ok(Some(id)) = optional_string(&body, "provisioningOperationId") else {
        return bad_request("provisioningOperationId (string) is required");
    };
    match inner.with_state(|s, policy| s.complete(token, &id, policy)) {
        CompleteOutcome::Pending => StatusCode::ACCEPTED.into_response(),
        CompleteOutcome::Approved { registration_token, expires_at } => {
            info!(operation = %id, "provisioning operation completed");
            Json(json!({"registrationToken": registration_token, "expirationTime": rfc3339(from_ms(expires_at))}))
                .into_response()
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
    }
}

async fn register(State(inner): Shared, headers: HeaderMap, body: Bytes) -> Response {
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
    let Some((info, sas, expires_at)) = inner.with_state(|s, policy| s.register(token, &hub, policy)) else {
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

async fn refresh(State(inner): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let (token, body) = match device_request(&headers, &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Ok(Some(rt)) = optional_string(&body, "registrationToken") else {
        return bad_request("registrationToken (string) is required");
    };
    match inner.with_state(|s, policy| s.refresh(token, &rt, policy)) {
        Some((token, expires_at)) => {
            info!("registration token refreshed");
            Json(json!({"registrationToken": token, "expirationTime": rfc3339(from_ms(expires_at))})).into_response()
        }
        None => unauthorized("Invalid Registration Token"),
    }
}

/// The device a raw SAS `Authorization` header authorises, if it matches the path's device.
fn sas_device(inner: &Inner, headers: &HeaderMap, hub_id: &str) -> Result<(), Response> {
    let sas = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    let state = inner.lock_state();
    match state.authorize(sas) {
        Some(d) if d == hub_id => Ok(()),
        _ => Err(unauthorized("invalid shared access signature")),
    }
}

async fn file_upload_init(
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
async fn put_blob(
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
    if announced.is_some_and(|n| n > MAX_BLOB_BYTES as u64) {
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

fn too_large() -> Response {
    problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        "/problems/too-large",
        &format!("blobs are limited to {MAX_BLOB_BYTES} bytes"),
    )
}

async fn file_upload_notify(
    State(inner): Shared,
    Path(hub_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = sas_device(&inner, &headers, &hub_id) {
        return r;
    }
    if let Err(r) = json_object(&body) {
        return r;
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn websocket(State(inner): Shared, ws: WebSocketUpgrade) -> Response {
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

// ---- admin API ----

fn admin(inner: &Inner, headers: &HeaderMap) -> Result<(), Response> {
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| crate::wire::ct_eq(g.as_bytes(), inner.admin_token.as_bytes())) {
        Ok(())
    } else {
        Err(unauthorized("admin token required (Authorization: Bearer …)"))
    }
}

async fn admin_create_token(State(inner): Shared, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = admin(&inner, &headers) {
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
    let token = inner.create_provisioning_token(&ws);
    Json(json!({"provisioningToken": token, "workspaceId": ws})).into_response()
}

async fn admin_operations(State(inner): Shared, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&inner, &headers) {
        return r;
    }
    let ops: Vec<Value> = inner
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

async fn admin_approve(State(inner): Shared, Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = admin(&inner, &headers) {
        return r;
    }
    let body = if body.is_empty() { Ok(serde_json::Map::new()) } else { json_object(&body) };
    let device = match body.and_then(|b| optional_string(&b, "deviceId")) {
        Ok(d) => d,
        Err(r) => return r,
    };
    match inner.approve(&id, device.as_deref()) {
        Ok(device) => Json(json!({"deviceId": device})).into_response(),
        Err(e) => problem(StatusCode::CONFLICT, "/problems/conflict", &e),
    }
}

async fn admin_cancel(State(inner): Shared, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&inner, &headers) {
        return r;
    }
    if inner.cancel(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        problem(StatusCode::CONFLICT, "/problems/conflict", "operation is not pending")
    }
}

async fn admin_devices(State(inner): Shared, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&inner, &headers) {
        return r;
    }
    Json(json!(inner.devices())).into_response()
}

async fn admin_twin(State(inner): Shared, Path(hub_id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&inner, &headers) {
        return r;
    }
    match inner.twin(&hub_id) {
        Some(t) => Json(t.document()).into_response(),
        None => problem(StatusCode::NOT_FOUND, "/problems/notFound", "no such device"),
    }
}

async fn admin_desired(State(inner): Shared, Path(hub_id): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = admin(&inner, &headers) {
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

async fn admin_disconnect(State(inner): Shared, Path(hub_id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&inner, &headers) {
        return r;
    }
    Json(json!({"disconnected": inner.disconnect(&hub_id)})).into_response()
}

#[derive(Deserialize)]
struct TunnelQuery {
    port: u16,
}

/// The operator's side of a remote-access tunnel to `port` on the device (a WebSocket; the
/// emulator's `tunnel` command opens one per local connection). Closed with code 4000 and the
/// reason when the device refuses or cannot open it.
async fn admin_tunnel(
    State(inner): Shared,
    Path(hub_id): Path<String>,
    Query(query): Query<TunnelQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Err(r) = admin(&inner, &headers) {
        return r;
    }
    ws.on_upgrade(move |socket| crate::tunnels::operate(inner, hub_id, query.port, socket))
}

#[derive(Deserialize)]
struct DeviceTunnelQuery {
    secret: String,
}

/// The device's side of a tunnel: authorised by the tunnel's own secret, once.
async fn device_tunnel(
    State(inner): Shared,
    Path(tunnel_id): Path<String>,
    Query(query): Query<DeviceTunnelQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(attach) = inner.tunnels.claim(&tunnel_id, &query.secret) else {
        return (StatusCode::NOT_FOUND, Json(json!({"detail": "no such tunnel"}))).into_response();
    };
    ws.on_upgrade(move |socket| async move {
        let _ = attach.send(socket);
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MethodQuery {
    /// Seconds to wait for the device's answer (default 30, at most 300).
    timeout_secs: Option<u64>,
}

/// Calls a direct method of a connected device: the request's body is the payload (JSON; empty
/// means `null`). Answers `{"status": …, "payload": …}` with the device's status and body (JSON
/// when it is), `404` when the device is not connected or takes no direct methods, `504` when it
/// did not answer in time.
async fn admin_method(
    State(inner): Shared,
    Path((hub_id, method)): Path<(String, String)>,
    Query(query): Query<MethodQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = admin(&inner, &headers) {
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
struct MessagesQuery {
    after_id: Option<i64>,
    device: Option<String>,
    limit: Option<usize>,
}

/// Largest payload total in one `/admin/messages` answer (at least one message is returned).
const MAX_ADMIN_PAGE_BYTES: usize = 32 * 1024 * 1024;

#[derive(Deserialize)]
struct TrafficQuery {
    from: Option<usize>,
    limit: Option<usize>,
}

/// `GET /admin/traffic?from=&limit=`: recorded traffic, a page at a time (at most 1,000 records).
async fn admin_traffic(State(inner): Shared, headers: HeaderMap, Query(q): Query<TrafficQuery>) -> Response {
    if let Err(r) = admin(&inner, &headers) {
        return r;
    }
    let (records, dropped) = inner.traffic.records(q.from.unwrap_or(0), q.limit.unwrap_or(1000).min(1000));
    Json(json!({ "recording": inner.traffic.enabled(), "records": records, "notKept": dropped })).into_response()
}

async fn admin_messages(State(inner): Shared, headers: HeaderMap, Query(q): Query<MessagesQuery>) -> Response {
    if let Err(r) = admin(&inner, &headers) {
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
async fn metrics(State(inner): Shared, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&inner, &headers) {
        return r;
    }
    let (devices, operations_pending) = {
        let state = inner.lock_state();
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
        devices_connected: inner.connected_devices(),
        operations_pending,
        duplicates: inner.duplicates.load(std::sync::atomic::Ordering::Relaxed),
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
async fn admin_events(State(inner): Shared, headers: HeaderMap) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    if let Err(r) = admin(&inner, &headers) {
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

/// The dashboard's files, embedded in the binary (no CDN: it works offline). The page asks for
/// the admin token once and keeps it in the tab's session storage; every API call sends it.
const DASHBOARD_HTML: &str = include_str!("dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("dashboard/app.js");
const DASHBOARD_CSS: &str = include_str!("dashboard/app.css");

fn dashboard_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, content_type),
            // Its own files only: no inline script, no other origin.
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The bare address a person types (`https://localhost:8443/`) leads to the dashboard.
async fn root_redirect() -> Response {
    (StatusCode::FOUND, [(header::LOCATION, "/dashboard")]).into_response()
}

async fn dashboard_page() -> Response {
    dashboard_file("text/html; charset=utf-8", DASHBOARD_HTML)
}

async fn dashboard_script() -> Response {
    dashboard_file("text/javascript; charset=utf-8", DASHBOARD_JS)
}

async fn dashboard_style() -> Response {
    dashboard_file("text/css; charset=utf-8", DASHBOARD_CSS)
}
