//! Obtaining an identity at start (stored, or by provisioning and registration) and keeping the
//! credentials fresh while running.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use spotflow_core::{
    Backoff, ConnectionCredentials, CredentialAction, CredentialSchedule, DeviceIdentity, Error, PlatformApi,
    ProvisioningOperation, ProvisioningStatus, Registration, RegistrationToken, Result, Secret, Store,
};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::ClientOptions;

/// Displays a provisioning operation to whoever approves the device.
pub type DisplayCallback = Arc<dyn Fn(&ProvisioningOperation) + Send + Sync>;

/// The default display: id, verification code and expiry on standard output.
pub fn print_provisioning_operation(op: &ProvisioningOperation) {
    let mut out = std::io::stdout().lock();
    let _ = write_provisioning_operation(&mut out, op);
}

/// Writes what [`print_provisioning_operation`] prints.
pub fn write_provisioning_operation(out: &mut impl std::io::Write, op: &ProvisioningOperation) -> std::io::Result<()> {
    writeln!(out, "Provisioning operation initialized, waiting for approval.")?;
    writeln!(out, "Operation ID: {}", op.id)?;
    writeln!(out, "Verification Code: {}", op.verification_code)?;
    writeln!(out, "Expiration Time: {}", op.expiration_time_rfc3339())?;
    out.flush()
}

pub(crate) struct StartRequest<'a> {
    pub api: &'a dyn PlatformApi,
    pub store: &'a dyn Store,
    pub provisioning_token: &'a Secret,
    pub device_id: Option<&'a str>,
    pub display: &'a DisplayCallback,
    pub options: &'a ClientOptions,
}

/// Runs `f` with the request timeout; a timeout is a temporary error.
async fn bounded<T>(timeout: Duration, what: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| Error::Timeout(format!("{what} took longer than {timeout:?}")))?
}

/// Decides the identity at start. Returns it, saved in the store, plus whether connection
/// credentials in it are fresh from the platform (`false` on an offline start).
#[tracing::instrument(name = "spotflow_start", skip_all, fields(device_id = ?req.device_id))]
pub(crate) async fn obtain_identity(req: &StartRequest<'_>) -> Result<(DeviceIdentity, bool)> {
    let deadline = tokio::time::Instant::now() + req.options.start_timeout;
    let stored = req.store.load_identity().await?;
    let now = SystemTime::now();
    // Identities stored before queue ids existed get one now.
    let stored = stored.map(|mut s| {
        if s.queue_id.is_empty() {
            s.queue_id = new_queue_id();
        }
        s
    });
    if let Some(stored) = stored.as_ref().filter(|s| reusable(s, req, now)) {
        match bounded(req.options.request_timeout, "registration", req.api.register(&stored.registration_token)).await {
            Ok(reg) => {
                let identity = apply_registration(stored.clone(), reg);
                return finish(req, Some(stored), identity, true).await;
            }
            Err(Error::Unauthorized(reason)) => {
                info!(?reason, "stored registration token refused; provisioning again");
            }
            Err(e) => {
                info!(error = %e, "platform unreachable; starting offline with the stored registration");
                req.store.save_identity(stored).await?;
                return Ok((stored.clone(), false));
            }
        }
    }
    let token = tokio::time::timeout_at(deadline, provision(req))
        .await
        .map_err(|_| Error::Timeout(format!("provisioning did not finish within {:?}", req.options.start_timeout)))??;
    let reg = tokio::time::timeout_at(deadline, register_with_retry(req, &token.token))
        .await
        .map_err(|_| Error::Timeout("first registration did not succeed in time".into()))??;
    let identity = DeviceIdentity {
        instance: req.api.instance().to_owned(),
        provisioning_token: req.provisioning_token.clone(),
        requested_device_id: req.device_id.map(str::to_owned),
        registration_token: token.token,
        registration_token_expires_at: token.expires_at.or_else(|| {
            reg.token_remaining_lifetime.map(|l| spotflow_core::time_format::expiry_after(SystemTime::now(), l))
        }),
        workspace_id: String::new(),
        device_id: String::new(),
        connection: None,
        queue_id: new_queue_id(),
    };
    let identity = apply_registration(identity, reg);
    finish(req, stored.as_ref(), identity, true).await
}

/// A random id for a new outgoing queue.
fn new_queue_id() -> String {
    spotflow_core::secure_random::hex(8)
}

fn reusable(stored: &DeviceIdentity, req: &StartRequest<'_>, now: SystemTime) -> bool {
    stored.instance == req.api.instance()
        && stored.provisioning_token == *req.provisioning_token
        && stored.requested_device_id.as_deref() == req.device_id
        && stored.registration_token_expires_at.is_none_or(|e| e > now)
}

fn apply_registration(mut identity: DeviceIdentity, reg: Registration) -> DeviceIdentity {
    identity.workspace_id = reg.workspace_id;
    identity.device_id = reg.device_id;
    identity.connection = Some(reg.credentials);
    identity
}

/// Saves the identity; when it names another device than the stored one, first forgets the old
/// device's state (its queued messages and properties must not be sent as the new device).
async fn finish(
    req: &StartRequest<'_>,
    previous: Option<&DeviceIdentity>,
    identity: DeviceIdentity,
    fresh: bool,
) -> Result<(DeviceIdentity, bool)> {
    if let Some(prev) = previous {
        if prev.workspace_id != identity.workspace_id || prev.device_id != identity.device_id {
            let stats = req.store.queue_stats().await?;
            warn!(
                old_workspace = %prev.workspace_id,
                old_device = %prev.device_id,
                new_workspace = %identity.workspace_id,
                new_device = %identity.device_id,
                dropped_messages = stats.count,
                "device identity changed; discarding the previous device's queued messages and properties"
            );
            req.store.clear_device_state().await?;
        }
    }
    req.store.save_identity(&identity).await?;
    info!(workspace = ?identity.workspace_id, device = ?identity.device_id, "device registered");
    Ok((identity, fresh))
}

#[tracing::instrument(name = "spotflow_provisioning", skip_all)]
async fn provision(req: &StartRequest<'_>) -> Result<RegistrationToken> {
    let mut backoff = Backoff::new(req.options.retry_initial, req.options.retry_max);
    let op = loop {
        match bounded(
            req.options.request_timeout,
            "provisioning init",
            req.api.init_provisioning(req.provisioning_token, req.device_id),
        )
        .await
        {
            Ok(op) => break op,
            Err(e) if e.is_temporary() => {
                let delay = backoff.next_delay();
                warn!(error = %e, ?delay, "provisioning init failed; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    };
    info!(operation = ?op.id, "provisioning operation initialized, waiting for approval");
    (req.display)(&op);
    backoff.reset();
    loop {
        match bounded(
            req.options.request_timeout,
            "provisioning poll",
            req.api.complete_provisioning(req.provisioning_token, &op.id),
        )
        .await
        {
            Ok(ProvisioningStatus::Approved(token)) => {
                info!(operation = ?op.id, "provisioning operation approved");
                return Ok(token);
            }
            Ok(ProvisioningStatus::Closed) => {
                return Err(Error::Provisioning(format!(
                    "provisioning operation {} expired or was closed before it was approved",
                    op.id
                )))
            }
            Ok(ProvisioningStatus::Pending) => {
                backoff.reset();
                debug!(operation = ?op.id, "not approved yet");
            }
            Ok(_) => return Err(Error::Platform("unknown provisioning status".into())),
            Err(e) if e.is_temporary() => warn!(error = %e, "provisioning poll failed; retrying"),
            Err(e) => return Err(e),
        }
        if SystemTime::now() >= op.expiration_time {
            return Err(Error::Provisioning(format!("provisioning operation {} expired before approval", op.id)));
        }
        let delay = if backoff.attempts() == 0 {
            req.options.provisioning_poll_interval
        } else {
            backoff.next_delay().max(req.options.provisioning_poll_interval)
        };
        tokio::time::sleep(delay).await;
    }
}

#[tracing::instrument(name = "spotflow_registration", skip_all)]
async fn register_with_retry(req: &StartRequest<'_>, token: &Secret) -> Result<Registration> {
    let mut backoff = Backoff::new(req.options.retry_initial, req.options.retry_max);
    loop {
        match bounded(req.options.request_timeout, "registration", req.api.register(token)).await {
            Ok(reg) => return Ok(reg),
            Err(e) if e.is_temporary() => {
                let delay = backoff.next_delay();
                warn!(error = %e, ?delay, "registration failed; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Keeps the registration token and the connection credentials fresh, publishing new connection
/// credentials to the worker.
pub(crate) struct CredentialKeeper {
    pub api: Arc<dyn PlatformApi>,
    pub store: Arc<dyn Store>,
    pub identity: DeviceIdentity,
    pub options: ClientOptions,
    pub credentials: watch::Sender<Option<ConnectionCredentials>>,
    pub rejected: mpsc::UnboundedReceiver<()>,
}

impl CredentialKeeper {
    pub async fn run(mut self, fresh: bool) {
        let mut schedule = CredentialSchedule::new(self.options.retry_initial, self.options.retry_max);
        let now = SystemTime::now();
        schedule.on_registration_token(now, self.identity.registration_token_expires_at);
        match &self.identity.connection {
            Some(c) => {
                schedule.on_connection_credentials(now, c.expires_at);
                if !fresh && !schedule.connection_credentials_valid(now) {
                    schedule.on_credentials_rejected();
                }
            }
            None => schedule.on_credentials_rejected(),
        }
        loop {
            let now = SystemTime::now();
            match schedule.poll_action(now) {
                Some(CredentialAction::RefreshRegistrationToken) => self.refresh(&mut schedule).await,
                Some(CredentialAction::Register) => self.register(&mut schedule).await,
                None => {
                    // Wake at the next deadline (capped, so that clock jumps are noticed) or when
                    // the worker reports refused credentials.
                    let wait = schedule
                        .next_deadline()
                        .map(|d| d.duration_since(now).unwrap_or(Duration::ZERO))
                        .unwrap_or(Duration::from_secs(60))
                        .min(Duration::from_secs(60));
                    tokio::select! {
                        r = self.rejected.recv() => match r {
                            Some(()) => schedule.on_credentials_rejected(),
                            None => return,
                        },
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    #[tracing::instrument(name = "spotflow_registration_token_refresh", skip_all)]
    async fn refresh(&mut self, schedule: &mut CredentialSchedule) {
        let result = bounded(
            self.options.request_timeout,
            "registration token refresh",
            self.api.refresh_registration_token(&self.identity.provisioning_token, &self.identity.registration_token),
        )
        .await;
        match result {
            Ok(token) => {
                self.identity.registration_token = token.token;
                self.identity.registration_token_expires_at = token.expires_at;
                if let Err(e) = self.store.save_identity(&self.identity).await {
                    warn!(error = %e, "could not persist the refreshed registration token");
                }
                schedule.on_registration_token(SystemTime::now(), token.expires_at);
                schedule.on_action_succeeded();
                info!("registration token refreshed");
            }
            Err(e) => {
                let delay = schedule.on_action_failed(SystemTime::now());
                warn!(error = %e, ?delay, "registration token refresh failed; retrying");
            }
        }
    }

    #[tracing::instrument(name = "spotflow_registration", skip_all)]
    async fn register(&mut self, schedule: &mut CredentialSchedule) {
        let result =
            bounded(self.options.request_timeout, "registration", self.api.register(&self.identity.registration_token))
                .await;
        match result {
            Ok(reg) => {
                if reg.workspace_id != self.identity.workspace_id || reg.device_id != self.identity.device_id {
                    warn!("registration returned another device identity; keeping the running identity");
                }
                let creds = reg.credentials;
                schedule.on_connection_credentials(SystemTime::now(), creds.expires_at);
                schedule.on_action_succeeded();
                self.identity.connection = Some(creds.clone());
                if let Err(e) = self.store.save_identity(&self.identity).await {
                    warn!(error = %e, "could not persist the renewed connection credentials");
                }
                info!("connection credentials renewed");
                let _ = self.credentials.send(Some(creds));
            }
            Err(e) => {
                let delay = schedule.on_action_failed(SystemTime::now());
                warn!(error = %e, ?delay, "registration failed; retrying");
            }
        }
    }
}
