//! The built-in [`ArtifactSource`]: software update artifacts over HTTPS, resumed with `Range`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use spotflow_core::update::{ArtifactBody, ArtifactSource};
use spotflow_core::{Error, LinkFailure, Result};

/// Downloads artifacts over HTTPS (plain HTTP only from a loopback host), with the SDK's trust
/// (the platform's roots and the configured extra CAs).
#[derive(Debug, Clone)]
pub struct HttpsArtifactSource {
    http: reqwest::Client,
}

impl HttpsArtifactSource {
    /// A source with the TLS configuration `tls`; a connection that opens no faster than
    /// `connect_timeout`, or a body that stalls for `read_timeout`, fails the attempt (retried).
    pub fn new(tls: Arc<rustls::ClientConfig>, connect_timeout: Duration, read_timeout: Duration) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .read_timeout(read_timeout)
            .tls_backend_preconfigured((*tls).clone())
            .build()
            .map_err(|e| Error::invalid("HTTP client", e))?;
        Ok(HttpsArtifactSource { http })
    }
}

fn network(context: &str, e: reqwest::Error) -> Error {
    // Without the URL: it may carry a signature.
    Error::link_with(LinkFailure::Network, context.to_owned(), e.without_url())
}

#[async_trait]
impl ArtifactSource for HttpsArtifactSource {
    async fn open(&self, url: &str, offset: u64) -> Result<Box<dyn ArtifactBody>> {
        let parsed = reqwest::Url::parse(url).map_err(|e| Error::invalid("artifact URL", e))?;
        match parsed.scheme() {
            "https" => {}
            "http" => spotflow_core::require_loopback_for_plain(parsed.host_str().unwrap_or(""), "artifact URL")?,
            other => return Err(Error::invalid("artifact URL", format!("scheme {other:?}: https only"))),
        }
        let mut request = self.http.get(parsed);
        if offset > 0 {
            request = request.header("range", format!("bytes={offset}-"));
        }
        let response = request.send().await.map_err(|e| network("artifact download", e))?;
        let status = response.status();
        let start = match status.as_u16() {
            206 => {
                let range = response.headers().get("content-range").and_then(|v| v.to_str().ok()).unwrap_or("");
                let first = range.strip_prefix("bytes ").and_then(|r| r.split('-').next()).and_then(|n| n.parse().ok());
                if first != Some(offset) {
                    return Err(Error::Platform(format!(
                        "artifact server answered the range {offset}- with {range:?}"
                    )));
                }
                offset
            }
            200 => 0,
            408 | 429 => return Err(Error::Platform(format!("artifact server answered {status}"))),
            s if s >= 500 => return Err(Error::Platform(format!("artifact server answered {status}"))),
            _ => return Err(Error::invalid("artifact download", format!("the server answered {status}"))),
        };
        Ok(Box::new(HttpsBody { response, start }))
    }
}

struct HttpsBody {
    response: reqwest::Response,
    start: u64,
}

#[async_trait]
impl ArtifactBody for HttpsBody {
    fn start(&self) -> u64 {
        self.start
    }
    async fn chunk(&mut self) -> Result<Option<Bytes>> {
        self.response.chunk().await.map_err(|e| network("artifact download", e))
    }
}
