//! Software updates over HTTP: artifact downloads (`GET /updates/{artifact}/{token}`, with
//! `Range`) and the admin API (`/admin/updates/...`): publish an artifact, set its faults, start
//! a rollout, follow it.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{bad_request, problem, require_admin, Shared};
use crate::updates::{ArtifactFaults, RolloutRequest, UpdateRefusal};

/// Bytes per chunk of a download body.
const CHUNK: usize = 64 * 1024;

/// `Range: bytes=N-` (or `N-M`; the end is ignored: the rest is served) → `N`.
fn range_start(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    let Some(v) = headers.get("range") else { return Ok(None) };
    let v = v.to_str().map_err(drop)?;
    let spec = v.strip_prefix("bytes=").ok_or(())?;
    let (start, _end) = spec.split_once('-').ok_or(())?;
    start.trim().parse::<u64>().map(Some).map_err(drop)
}

/// `GET /updates/{artifact}/{token}`: the artifact (206 from the `Range` start, else 200),
/// counted per device, with the artifact's faults applied.
pub(super) async fn download(
    State(inner): Shared,
    Path((artifact, token)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Ok(from) = range_start(&headers) else {
        return bad_request("Range: only bytes=N- is served");
    };
    let d = match inner.updates.download(&artifact, &token, from.unwrap_or(0)) {
        Ok(d) => d,
        Err(416) => {
            return problem(StatusCode::RANGE_NOT_SATISFIABLE, "/problems/rangeNotSatisfiable", "range beyond the end")
        }
        Err(_) => return problem(StatusCode::NOT_FOUND, "/problems/notFound", "no such artifact"),
    };
    let length = d.total - d.start;
    let status = if from.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
    let mut response = Response::builder()
        .status(status)
        .header("content-type", "application/octet-stream")
        .header("content-length", length)
        .header("accept-ranges", "bytes");
    if from.is_some() {
        response =
            response.header("content-range", format!("bytes {}-{}/{}", d.start, d.total.saturating_sub(1), d.total));
    }
    let stream = futures_util::stream::unfold((inner.clone(), d, 0u64), move |(inner, d, sent)| async move {
        let start = (d.start + sent) as usize;
        if start >= d.total as usize {
            return None;
        }
        if d.cut_after.is_some_and(|c| sent >= c) {
            // What was sent goes out first (hyper drops its unsent buffer with the connection),
            // then the connection is closed mid-body.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Some((Err(std::io::Error::other("connection cut (fault)")), (inner, d, u64::MAX / 2)));
        }
        let mut end = (start + CHUNK).min(d.total as usize);
        if let Some(c) = d.cut_after {
            end = end.min((d.start + c) as usize).max(start + 1);
        }
        if let Some(rate) = d.slow_bytes_per_second.filter(|r| *r > 0) {
            tokio::time::sleep(Duration::from_secs_f64((end - start) as f64 / rate as f64)).await;
        }
        let chunk = d.bytes.slice(start..end);
        inner.updates.served(&d.counter.0, chunk.len() as u64);
        let sent = sent + chunk.len() as u64;
        Some((Ok::<Bytes, std::io::Error>(chunk), (inner, d, sent)))
    });
    response.body(Body::from_stream(stream)).unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn refusal(e: UpdateRefusal) -> Response {
    match e {
        UpdateRefusal::UnknownArtifact | UpdateRefusal::UnknownDevice(_) => {
            problem(StatusCode::NOT_FOUND, "/problems/notFound", &e.to_string())
        }
        UpdateRefusal::Invalid(_) => bad_request(&e.to_string()),
    }
}

#[derive(Deserialize)]
pub(super) struct PublishQuery {
    version: String,
}

/// `POST /admin/updates/artifacts?version=V` with the artifact as the body: `201` with the
/// artifact (`id`, `version`, `size`, `sha256`).
pub(super) async fn publish(
    State(inner): Shared,
    Query(q): Query<PublishQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = require_admin(&inner, &headers) {
        return r;
    }
    match inner.updates.publish(body, &q.version) {
        Ok(info) => (StatusCode::CREATED, Json(info)).into_response(),
        Err(e) => refusal(e),
    }
}

/// `GET /admin/updates`: the artifacts, the rollouts' ids and the manifests' public key.
pub(super) async fn listing(State(inner): Shared, headers: HeaderMap) -> Response {
    if let Err(r) = require_admin(&inner, &headers) {
        return r;
    }
    Json(crate::updates::listing(&inner.updates)).into_response()
}

/// `PUT /admin/updates/artifacts/{id}/faults` with [`ArtifactFaults`].
pub(super) async fn faults(State(inner): Shared, Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = require_admin(&inner, &headers) {
        return r;
    }
    let faults: ArtifactFaults = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return bad_request(&format!("invalid faults: {e}")),
    };
    match inner.updates.set_faults(&id, faults) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => refusal(e),
    }
}

/// `POST /admin/updates/rollouts` with [`RolloutRequest`]: sets each device's desired
/// `spotflowUpdate`; `201 {"id": …}`.
pub(super) async fn start_rollout(State(inner): Shared, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = require_admin(&inner, &headers) {
        return r;
    }
    let request: RolloutRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(&format!("invalid rollout: {e}")),
    };
    match inner.start_rollout(&request) {
        Ok(id) => (StatusCode::CREATED, Json(json!({"id": id}))).into_response(),
        Err(e) => refusal(e),
    }
}

/// `GET /admin/updates/rollouts/{id}`: the rollout's state per device.
pub(super) async fn rollout(State(inner): Shared, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = require_admin(&inner, &headers) {
        return r;
    }
    match inner.rollout(&id) {
        Some(status) => Json(status).into_response(),
        None => problem(StatusCode::NOT_FOUND, "/problems/notFound", "no such rollout"),
    }
}
