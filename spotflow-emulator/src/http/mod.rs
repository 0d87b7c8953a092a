//! HTTP(S) surface, one module per concern: [`device`] (the platform API: provisioning,
//! registration, refresh, the IoT Hub style file-upload API and blob store, MQTT over WebSocket),
//! [`admin`] (the admin API, metrics, the live feed), [`tunnels`] (remote access) and
//! [`dashboard`]; here the router, the middleware and the helpers they share.

// Helpers return the ready error response; boxing it buys nothing on these cold paths.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use axum::Router;
use serde_json::{json, Value};

use crate::Inner;

mod admin;
mod dashboard;
mod device;
mod tunnels;
mod updates;

type Shared = State<Arc<Inner>>;

/// The router with every route: the device API, the admin API, tunnels and the dashboard, each in
/// its module, behind the traffic recorder and the request deadline.
pub(crate) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        // the platform API, uploads and MQTT over WebSocket
        .route("/provisioning-operations/init", post(device::init))
        .route("/provisioning-operations/complete", put(device::complete))
        .route("/devices/register", put(device::register))
        .route("/devices/registration-tokens/refresh", put(device::refresh))
        .route("/devices/{hub_device_id}/files", post(device::file_upload_init))
        .route("/devices/{hub_device_id}/files/notifications", post(device::file_upload_notify))
        .route("/uploads/{blob}", put(device::put_blob))
        .route("/$iothub/websocket", get(device::websocket))
        .route("/updates/{artifact}/{token}", get(updates::download))
        // the admin API, metrics and the live feed
        .route("/admin/provisioning-tokens", post(admin::admin_create_token))
        .route("/admin/operations", get(admin::admin_operations))
        .route("/admin/operations/{id}/approve", post(admin::admin_approve))
        .route("/admin/operations/{id}/cancel", post(admin::admin_cancel))
        .route("/admin/devices", get(admin::admin_devices))
        .route("/admin/devices/{hub_device_id}/twin", get(admin::admin_twin))
        .route("/admin/devices/{hub_device_id}/desired", patch(admin::admin_desired))
        .route("/admin/devices/{hub_device_id}/disconnect", post(admin::admin_disconnect))
        .route("/admin/devices/{hub_device_id}/c2d", post(admin::admin_send_c2d).get(admin::admin_list_c2d))
        .route("/admin/devices/{hub_device_id}/methods/{*method}", post(admin::admin_method))
        .route("/admin/messages", get(admin::admin_messages))
        .route("/admin/logs", get(admin::admin_logs))
        .route("/admin/traffic", get(admin::admin_traffic))
        .route("/admin/events", get(admin::admin_events))
        .route("/metrics", get(admin::metrics))
        // software updates
        .route("/admin/updates", get(updates::listing))
        .route(
            "/admin/updates/artifacts",
            post(updates::publish).layer(axum::extract::DefaultBodyLimit::max(crate::updates::MAX_ARTIFACT_BYTES)),
        )
        .route("/admin/updates/artifacts/{id}/faults", put(updates::faults))
        .route("/admin/updates/rollouts", post(updates::start_rollout))
        .route("/admin/updates/rollouts/{id}", get(updates::rollout))
        // remote-access tunnels
        .route("/admin/devices/{hub_device_id}/tunnel", get(tunnels::admin_tunnel))
        .route("/tunnels/{tunnel_id}", get(tunnels::device_tunnel))
        // the dashboard
        .route("/", get(dashboard::root_redirect))
        .route("/dashboard", get(dashboard::dashboard_page))
        .route("/dashboard/app.js", get(dashboard::dashboard_script))
        .route("/dashboard/app.css", get(dashboard::dashboard_style))
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
    // The live feed lasts as long as the page is open; an artifact download as long as the
    // artifact and the network take.
    if request.uri().path() == "/admin/events" || request.uri().path().starts_with("/updates/") {
        return next.run(request).await;
    }
    match tokio::time::timeout(inner.config.http_request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => problem(StatusCode::REQUEST_TIMEOUT, "/problems/timeout", "the request took too long"),
    }
}

pub use crate::uploads::MAX_BLOB_BYTES;

/// Largest body the traffic recorder reads (the SDK's largest upload is 16 MiB).
const MAX_RECORDED_BODY: usize = 64 * 1024 * 1024;

/// Records the device protocol's HTTP exchanges when traffic recording is on (not the admin API
/// or the WebSocket upgrade).
async fn record_http(State(inner): Shared, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let path = request.uri().path().to_owned();
    if !inner.traffic.enabled()
        || path.starts_with("/admin/")
        || path.starts_with("/updates/")
        || path == "/$iothub/websocket"
    {
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

/// Parses a JSON object body, or answers 400.
fn json_object(body: &Bytes) -> Result<serde_json::Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad_request("the body must be a JSON object")),
        Err(e) => Err(bad_request(&format!("invalid JSON body: {e}"))),
    }
}

fn optional_string(body: &serde_json::Map<String, Value>, key: &str) -> Result<Option<String>, Response> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad_request(&format!("{key} must be a string"))),
    }
}

/// The admin token is required (401 without it or with another one).
fn require_admin(inner: &Inner, headers: &HeaderMap) -> Result<(), Response> {
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| crate::wire::ct_eq(g.as_bytes(), inner.admin_token.as_bytes())) {
        Ok(())
    } else {
        Err(unauthorized("admin token required (Authorization: Bearer …)"))
    }
}
