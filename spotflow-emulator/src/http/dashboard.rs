//! The dashboard's page, script and style (embedded, no token: they hold no data), and the
//! redirect from `/` to it.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// The dashboard's files, embedded in the binary (no CDN: it works offline). The page asks for
/// the admin token once and keeps it in the tab's session storage; every API call sends it.
const DASHBOARD_HTML: &str = include_str!("../dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("../dashboard/app.js");
const DASHBOARD_CSS: &str = include_str!("../dashboard/app.css");

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
pub(super) async fn root_redirect() -> Response {
    (StatusCode::FOUND, [(header::LOCATION, "/dashboard")]).into_response()
}

pub(super) async fn dashboard_page() -> Response {
    dashboard_file("text/html; charset=utf-8", DASHBOARD_HTML)
}

pub(super) async fn dashboard_script() -> Response {
    dashboard_file("text/javascript; charset=utf-8", DASHBOARD_JS)
}

pub(super) async fn dashboard_style() -> Response {
    dashboard_file("text/css; charset=utf-8", DASHBOARD_CSS)
}
