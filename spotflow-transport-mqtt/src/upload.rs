//! The IoT Hub style file-upload API, for messages over the MQTT size threshold.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use spotflow_core::{Error, Result, Secret};

/// Uploads payloads: `POST /devices/{id}/files`, `PUT` the blob, `POST …/files/notifications`.
#[derive(Debug, Clone)]
pub(crate) struct Uploader {
    http: reqwest::Client,
    base_url: Option<String>,
}

/// Blob names are random v4 UUIDs from the OS CSPRNG (another device must not guess them).
fn uuid_v4() -> String {
    spotflow_core::secure_random::uuid_v4()
}

fn http_error(context: &str, e: reqwest::Error) -> UploadError {
    // Without the URL: it carries the blob's signature (and the host the platform named).
    UploadError::Retry(Error::transport_with(context.to_owned(), e.without_url()))
}

/// Why an upload failed.
#[derive(Debug)]
pub(crate) enum UploadError {
    /// The platform refused it for good: a 4xx other than 401 (credentials being renewed),
    /// 408 (timeout) and 429 (throttled). Sending it again cannot succeed.
    Refused(String),
    /// Anything else (network, 5xx, 401/408/429, a malformed answer): worth retrying.
    Retry(Error),
}

impl std::fmt::Display for UploadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UploadError::Refused(reason) => f.write_str(reason),
            UploadError::Retry(e) => write!(f, "{e}"),
        }
    }
}

/// The error for a non-success `status` of step `what`.
fn status_error(what: &str, status: reqwest::StatusCode) -> UploadError {
    let message = format!("{what} answered {status}");
    if status.is_client_error() && !matches!(status.as_u16(), 401 | 408 | 429) {
        UploadError::Refused(message)
    } else {
        UploadError::Retry(Error::Platform(message))
    }
}

impl Uploader {
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>, base_url: Option<String>) -> Result<Self> {
        let tls = match tls {
            Some(t) => t,
            None => crate::tls::platform_only()?,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .tls_backend_preconfigured((*tls).clone())
            .build()
            .map_err(|e| Error::invalid("HTTP client", e))?;
        Ok(Uploader { http, base_url })
    }

    /// Uploads `payload`; returns the blob name to link.
    #[tracing::instrument(name = "spotflow_upload", skip_all, fields(bytes = payload.len()))]
    pub async fn upload(
        &self,
        hub_host: &str,
        hub_device_id: &str,
        sas: &Secret,
        payload: &bytes::Bytes,
    ) -> std::result::Result<String, UploadError> {
        let base = self.base_url.clone().unwrap_or_else(|| format!("https://{hub_host}"));
        let blob = uuid_v4();
        let resp = self
            .http
            .post(format!("{base}/devices/{hub_device_id}/files?api-version=2020-03-13"))
            .header("authorization", sas.expose())
            .json(&json!({ "blobName": blob }))
            .send()
            .await
            .map_err(|e| http_error("file upload init", e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(status_error("file upload init", status));
        }
        let body = crate::https_api::read_capped(resp, crate::https_api::MAX_ANSWER_BYTES, "file upload init")
            .await
            .map_err(UploadError::Retry)?;
        let info: Value = serde_json::from_slice(&body)
            .map_err(|e| UploadError::Retry(Error::Platform(format!("file upload init answered invalid JSON: {e}"))))?;
        let field = |k: &str| {
            info.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| UploadError::Retry(Error::Platform(format!("file upload answer without {k}"))))
        };
        let (host, container, name, sas_token, correlation) = (
            field("hostName")?,
            field("containerName")?,
            field("blobName")?,
            field("sasToken")?,
            field("correlationId")?,
        );
        let put = self
            .http
            .put(format!("https://{host}/{container}/{name}{sas_token}"))
            .header("x-ms-blob-type", "BlockBlob")
            .body(payload.clone())
            .send()
            .await
            .map_err(|e| http_error("blob upload", e))?;
        let put_status = put.status();
        let ok = put_status.is_success();
        // On success exactly what the official SDK sends (statusCode 200, whatever the blob
        // store answered, e.g. 201 Created).
        let note = json!({
            "correlationId": correlation,
            "isSuccess": ok,
            "statusCode": if ok { 200 } else { put_status.as_u16() },
            "statusDescription": if ok { "Done" } else { "Failed" },
        });
        let notified = self
            .http
            .post(format!("{base}/devices/{hub_device_id}/files/notifications?api-version=2020-03-13"))
            .header("authorization", sas.expose())
            .json(&note)
            .send()
            .await
            .map_err(|e| http_error("file upload notification", e))?;
        if !ok {
            return Err(status_error("blob upload", put_status));
        }
        if !notified.status().is_success() {
            return Err(status_error("file upload notification", notified.status()));
        }
        Ok(blob)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn uuids_are_v4() {
        let u = super::uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
    }
}
