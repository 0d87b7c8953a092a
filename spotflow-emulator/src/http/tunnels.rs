//! The routes of remote-access tunnels: the operator's side (admin token) and the device's side
//! (the tunnel's own secret).

// Helpers return the ready error response; boxing it buys nothing on these cold paths.
#![allow(clippy::result_large_err)]

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::*;

#[derive(Deserialize)]
pub(super) struct TunnelQuery {
    port: u16,
}

/// The operator's side of a remote-access tunnel to `port` on the device (a WebSocket; the
/// emulator's `tunnel` command opens one per local connection). Closed with code 4000 and the
/// reason when the device refuses or cannot open it.
pub(super) async fn admin_tunnel(
    State(inner): Shared,
    Path(hub_id): Path<String>,
    Query(query): Query<TunnelQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, Response> {
    require_admin(&inner, &headers)?;
    Ok(ws.on_upgrade(move |socket| crate::tunnels::operate(inner, hub_id, query.port, socket)))
}

#[derive(Deserialize)]
pub(super) struct DeviceTunnelQuery {
    secret: String,
}

/// The device's side of a tunnel: authorised by the tunnel's own secret, once.
pub(super) async fn device_tunnel(
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
