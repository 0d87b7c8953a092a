//! The platform's HTTPS API, not MQTT: [`HttpPlatformApi`] provisions, registers and refreshes
//! tokens over HTTPS (reqwest). It lives in this crate because it shares the TLS configuration
//! ([`crate::TlsOptions`]) and the HTTP client with the upload of large messages, which the MQTT
//! transport starts.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use spotflow_core::time_format::{parse_rfc3339, parse_timespan};
use spotflow_core::{
    ConnectionCredentials, Error, PlatformApi, ProvisioningOperation, ProvisioningStatus, Registration,
    RegistrationToken, Result, Secret,
};
use tracing::{debug, warn};

const CANCELLED: &str = "/problems/deviceProvisioning/provisioningOperationCancelled";

/// The platform API of one instance.
#[derive(Debug, Clone)]
pub struct HttpPlatformApi {
    base_url: String,
    instance_id: String,
    http: reqwest::Client,
}

struct Answer {
    status: u16,
    body: Option<Value>,
}

impl Answer {
    fn parse(status: u16, bytes: &[u8]) -> Self {
        Answer { status, body: serde_json::from_slice::<Value>(bytes).ok() }
    }

    fn problem_type(&self) -> Option<&str> {
        self.body.as_ref()?.get("type")?.as_str()
    }

    /// The problem's title as the platform wrote it, its control characters escaped (it goes into
    /// errors that are logged: a title cannot forge log lines).
    fn problem_title(&self) -> String {
        let title = self
            .body
            .as_ref()
            .and_then(|b| b.get("title").or_else(|| b.get("detail")))
            .and_then(Value::as_str)
            .unwrap_or("Unknown error");
        title.chars().map(|c| if c.is_control() { c.escape_debug().to_string() } else { c.to_string() }).collect()
    }

    fn str_field(&self, key: &str) -> Result<String> {
        self.body
            .as_ref()
            .and_then(|b| b.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| Error::Platform(format!("answer {} without the string field {key}", self.status)))
    }

    fn opt_str(&self, key: &str) -> Option<&str> {
        self.body.as_ref()?.get(key)?.as_str()
    }

    /// The error for a non-success status common to every call.
    fn error(&self, what: &str) -> Error {
        match self.status {
            401 => Error::Unauthorized(format!("{what}: {}", self.problem_title())),
            423 => Error::WorkspaceDisabled,
            s => Error::Platform(format!("{what} answered {s}: {}", self.problem_title())),
        }
    }
}

impl HttpPlatformApi {
    /// The API at `base_url` (`https://host[:port]`, or `http://` for loopback development),
    /// remembered as `instance_id` with the device's identity.
    pub fn new(base_url: &str, instance_id: &str, tls: Arc<rustls::ClientConfig>, timeout: Duration) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            // The platform API is called in bursts (provisioning, registration, refresh) hours
            // apart: a connection kept idle between them only holds a descriptor on both sides
            // (and one of the server's connection slots: with thousands of devices the
            // emulator's cap of 1,024 made starts come in waves of 1,024 every 10 s).
            .pool_idle_timeout(Duration::from_secs(2))
            .tls_backend_preconfigured((*tls).clone())
            .build()
            .map_err(|e| Error::invalid("HTTP client", e))?;
        Ok(HttpPlatformApi {
            base_url: base_url.trim_end_matches('/').to_owned(),
            instance_id: instance_id.to_owned(),
            http,
        })
    }

    async fn call(&self, method: reqwest::Method, path: &str, token: &Secret, body: Value) -> Result<Answer> {
        // (The answer is read with a cap: see `read_capped`.)
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base_url))
            .header("authorization", format!("DeviceToken {}", token.expose()))
            .json(&body)
            .send()
            .await
            .map_err(|e| Error::transport_with(format!("request to {path} failed"), e))?;
        let status = resp.status().as_u16();
        let bytes = read_capped(resp, MAX_ANSWER_BYTES, path).await?;
        let answer = Answer::parse(status, &bytes);
        if answer.body.is_none() && !bytes.is_empty() {
            debug!(path, status, "answer body is not JSON");
        }
        Ok(answer)
    }
}

/// Splits `HostName=…;DeviceId=ws:dev;SharedAccessSignature=…` (values may contain `=`).
fn parse_connection_string(cs: &str) -> Result<(String, String, String)> {
    let get = |key: &str| {
        cs.split(';').find_map(|part| {
            let (k, v) = part.split_once('=')?;
            (k == key).then(|| v.to_owned())
        })
    };
    let device = get("DeviceId").ok_or_else(|| Error::Platform("connection string without DeviceId".into()))?;
    let sas = get("SharedAccessSignature")
        .ok_or_else(|| Error::Platform("connection string without SharedAccessSignature".into()))?;
    let (ws, dev) = device
        .split_once(':')
        .filter(|(w, d)| !w.is_empty() && !d.is_empty())
        .ok_or_else(|| Error::Platform("DeviceId in the connection string is not workspace:device".into()))?;
    Ok((ws.to_owned(), dev.to_owned(), sas))
}

#[async_trait]
impl PlatformApi for HttpPlatformApi {
    fn instance(&self) -> &str {
        &self.instance_id
    }

    async fn init_provisioning(&self, token: &Secret, device_id: Option<&str>) -> Result<ProvisioningOperation> {
        let body = match device_id {
            Some(d) => json!({ "deviceId": d }),
            None => json!({}),
        };
        answers::provisioning_init(
            &self.call(reqwest::Method::POST, "/provisioning-operations/init", token, body).await?,
        )
    }

    async fn complete_provisioning(&self, token: &Secret, operation_id: &str) -> Result<ProvisioningStatus> {
        let body = json!({ "provisioningOperationId": operation_id });
        let a = self.call(reqwest::Method::PUT, "/provisioning-operations/complete", token, body).await?;
        answers::provisioning_completion(&a, operation_id)
    }

    async fn register(&self, registration_token: &Secret) -> Result<Registration> {
        let body = json!({ "connectionStringType": "SharedAccessSignature" });
        answers::registration(&self.call(reqwest::Method::PUT, "/devices/register", registration_token, body).await?)
    }

    async fn refresh_registration_token(
        &self,
        token: &Secret,
        registration_token: &Secret,
    ) -> Result<RegistrationToken> {
        let body = json!({ "registrationToken": registration_token.expose() });
        let a = self.call(reqwest::Method::PUT, "/devices/registration-tokens/refresh", token, body).await?;
        answers::token_refresh(&a)
    }
}

/// What the platform's answers mean, without I/O: each takes the status and the body as read.
pub mod answers {
    use super::*;

    /// The answer of `POST /provisioning-operations/init`.
    pub fn provisioning_init_answer(status: u16, body: &[u8]) -> Result<ProvisioningOperation> {
        provisioning_init(&Answer::parse(status, body))
    }

    /// The answer of `PUT /provisioning-operations/complete` for `operation_id`.
    pub fn provisioning_completion_answer(status: u16, body: &[u8], operation_id: &str) -> Result<ProvisioningStatus> {
        provisioning_completion(&Answer::parse(status, body), operation_id)
    }

    /// The answer of `PUT /devices/register`.
    pub fn registration_answer(status: u16, body: &[u8]) -> Result<Registration> {
        registration(&Answer::parse(status, body))
    }

    /// The answer of `PUT /devices/registration-tokens/refresh`.
    pub fn token_refresh_answer(status: u16, body: &[u8]) -> Result<RegistrationToken> {
        token_refresh(&Answer::parse(status, body))
    }

    pub(super) fn provisioning_init(a: &Answer) -> Result<ProvisioningOperation> {
        match a.status {
            200..=299 => Ok(ProvisioningOperation {
                id: a.str_field("provisioningOperationId")?,
                verification_code: a.str_field("verificationCode")?,
                expiration_time: parse_rfc3339(&a.str_field("expirationTime")?)?,
            }),
            400 => Err(Error::Provisioning(a.problem_title())),
            _ => Err(a.error("provisioning init")),
        }
    }

    pub(super) fn provisioning_completion(a: &Answer, operation_id: &str) -> Result<ProvisioningStatus> {
        match a.status {
            202 => Ok(ProvisioningStatus::Pending),
            200..=299 => Ok(ProvisioningStatus::Approved(token(a)?)),
            410 if a.problem_type() == Some(CANCELLED) => {
                Err(Error::Provisioning(format!("provisioning operation {operation_id} was cancelled")))
            }
            410 => Ok(ProvisioningStatus::Closed),
            _ => Err(a.error("provisioning completion")),
        }
    }

    pub(super) fn registration(a: &Answer) -> Result<Registration> {
        if !(200..300).contains(&a.status) {
            return Err(a.error("registration"));
        }
        let kind = a.str_field("connectionStringType")?;
        if kind != "SharedAccessSignature" {
            return Err(Error::Platform(format!("unsupported connection string type {kind:?}")));
        }
        let (workspace_id, device_id, sas) = parse_connection_string(&a.str_field("connectionString")?)?;
        let hub_host = a.str_field("iotHubHostName")?;
        let expires_at = match a.opt_str("connectionStringExpiration") {
            Some(t) => Some(parse_rfc3339(t)?),
            None => {
                warn!("registration answer without connectionStringExpiration; credentials renewed only when refused");
                None
            }
        };
        let token_remaining_lifetime = match a.opt_str("tokenRemainingLifetime") {
            Some(t) => Some(parse_timespan(t)?),
            None => None,
        };
        Ok(Registration {
            credentials: ConnectionCredentials {
                hub_host,
                hub_device_id: format!("{workspace_id}:{device_id}"),
                sas: Secret::new(sas),
                expires_at,
            },
            workspace_id,
            device_id,
            token_remaining_lifetime,
        })
    }

    pub(super) fn token_refresh(a: &Answer) -> Result<RegistrationToken> {
        match a.status {
            200..=299 => token(a),
            _ => Err(a.error("registration token refresh")),
        }
    }

    fn token(answer: &Answer) -> Result<RegistrationToken> {
        let token = answer.str_field("registrationToken")?;
        let expires_at = match answer.opt_str("expirationTime") {
            Some(t) => Some(parse_rfc3339(t)?),
            None => None,
        };
        Ok(RegistrationToken { token: Secret::new(token), expires_at })
    }
}

/// Largest answer read from the platform's HTTP API (provisioning, registration, upload init):
/// real answers are well under 4 KiB; a server streaming more is cut off with an error instead of
/// growing the device's memory.
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// Reads an HTTP answer body, refusing one over `limit` bytes (announced or streamed) without
/// reading it further.
pub(crate) async fn read_capped(mut resp: reqwest::Response, limit: usize, what: &str) -> Result<Vec<u8>> {
    let too_large = || Error::Platform(format!("the answer of {what} is larger than {limit} bytes"));
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) =
        resp.chunk().await.map_err(|e| Error::transport_with(format!("reading the answer of {what}"), e))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings() {
        let (ws, dev, sas) = parse_connection_string(
            "HostName=h;DeviceId=ws1:dev:1;SharedAccessSignature=SharedAccessSignature sr=a&sig=b=",
        )
        .unwrap();
        assert_eq!((ws.as_str(), dev.as_str(), sas.as_str()), ("ws1", "dev:1", "SharedAccessSignature sr=a&sig=b="));
        for bad in [
            "",
            "DeviceId=ws1:dev",
            "SharedAccessSignature=x",
            "DeviceId=nocolon;SharedAccessSignature=x",
            "DeviceId=:d;SharedAccessSignature=x",
        ] {
            assert!(parse_connection_string(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn problem_titles_cannot_forge_log_lines() {
        let answer = Answer::parse(400, br#"{"title": "bad\nFORGED INFO line\r\u001b[31m"}"#);
        let error = answer.error("registration").to_string();
        assert!(!error.contains(['\n', '\r', '\u{1b}']), "{error}");
        assert!(error.contains(r"bad\nFORGED INFO line\r\u{1b}[31m"), "{error}");
    }
}
