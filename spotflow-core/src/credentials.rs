//! When to refresh the registration token and renew the connection credentials (sans-IO).
//!
//! The registration token is refreshed when half of its remaining lifetime (as seen when it was
//! obtained or when the device started) has passed, so a device offline for a while still has a
//! valid token to refresh with and never needs a new approval while refreshing is possible. The
//! connection credentials (SAS) are renewed when 80 % of their lifetime has passed, before they
//! expire, so the running connection never gets refused. Failures are retried with backoff and
//! jitter.

use std::time::{Duration, SystemTime};

use crate::Backoff;

/// What the driver should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialAction {
    /// Exchange the registration token for a fresh one.
    RefreshRegistrationToken,
    /// Register again to obtain new connection credentials.
    Register,
}

/// Timing of registration-token refresh and credential renewal.
#[derive(Debug, Clone)]
pub struct CredentialSchedule {
    rt_expires_at: Option<SystemTime>,
    rt_refresh_at: Option<SystemTime>,
    sas_expires_at: Option<SystemTime>,
    sas_renew_at: Option<SystemTime>,
    register_requested: bool,
    retry_at: Option<SystemTime>,
    backoff: Backoff,
}

/// Fraction of the remaining lifetime after which connection credentials are renewed.
const SAS_RENEW_FRACTION: f64 = 0.8;

fn fraction_of(now: SystemTime, until: SystemTime, fraction: f64) -> SystemTime {
    let remaining = until.duration_since(now).unwrap_or(Duration::ZERO);
    now + remaining.mul_f64(fraction)
}

impl Default for CredentialSchedule {
    fn default() -> Self {
        CredentialSchedule::new(Duration::from_secs(1), Duration::from_secs(300))
    }
}

impl CredentialSchedule {
    /// A schedule whose failed attempts back off from `retry_initial` up to `retry_max`.
    pub fn new(retry_initial: Duration, retry_max: Duration) -> Self {
        CredentialSchedule {
            rt_expires_at: None,
            rt_refresh_at: None,
            sas_expires_at: None,
            sas_renew_at: None,
            register_requested: false,
            retry_at: None,
            backoff: Backoff::new(retry_initial, retry_max),
        }
    }

    /// A registration token was obtained (or loaded at start) that expires at `expires_at`.
    pub fn on_registration_token(&mut self, now: SystemTime, expires_at: Option<SystemTime>) {
        self.rt_expires_at = expires_at;
        self.rt_refresh_at = expires_at.map(|e| fraction_of(now, e, 0.5));
    }

    /// Connection credentials were obtained that expire at `expires_at`.
    pub fn on_connection_credentials(&mut self, now: SystemTime, expires_at: Option<SystemTime>) {
        self.sas_expires_at = expires_at;
        self.sas_renew_at = expires_at.map(|e| fraction_of(now, e, SAS_RENEW_FRACTION));
        self.register_requested = false;
    }

    /// The platform refused the connection credentials: register again as soon as allowed.
    pub fn on_credentials_rejected(&mut self) {
        self.register_requested = true;
    }

    /// Whether the registration token is still valid at `now`.
    pub fn registration_token_valid(&self, now: SystemTime) -> bool {
        self.rt_expires_at.is_none_or(|e| now < e)
    }

    /// Whether the connection credentials are still valid at `now`.
    pub fn connection_credentials_valid(&self, now: SystemTime) -> bool {
        self.sas_expires_at.is_none_or(|e| now < e)
    }

    /// The action due at `now`, if any. Registration-token refresh comes first: registering with an
    /// expired token would fail.
    pub fn poll_action(&self, now: SystemTime) -> Option<CredentialAction> {
        if self.retry_at.is_some_and(|r| now < r) {
            return None;
        }
        if self.rt_refresh_at.is_some_and(|r| now >= r) {
            return Some(CredentialAction::RefreshRegistrationToken);
        }
        if self.register_requested || self.sas_renew_at.is_some_and(|r| now >= r) {
            return Some(CredentialAction::Register);
        }
        None
    }

    /// An action succeeded (call the matching `on_*` with its result too).
    pub fn on_action_succeeded(&mut self) {
        self.retry_at = None;
        self.backoff.reset();
    }

    /// An action failed; the next attempt waits for the backoff.
    pub fn on_action_failed(&mut self, now: SystemTime) -> Duration {
        let delay = self.backoff.next_delay();
        self.retry_at = Some(now + delay);
        delay
    }

    /// When [`CredentialSchedule::poll_action`] may next return something.
    pub fn next_deadline(&self) -> Option<SystemTime> {
        let due = if self.register_requested {
            Some(SystemTime::UNIX_EPOCH)
        } else {
            [self.rt_refresh_at, self.sas_renew_at].into_iter().flatten().min()
        }?;
        Some(match self.retry_at {
            Some(r) => due.max(r),
            None => due,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_secs(3600);

    #[test]
    fn refreshes_at_half_and_renews_before_expiry() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut s = CredentialSchedule::default();
        s.on_registration_token(t0, Some(t0 + 10 * H));
        s.on_connection_credentials(t0, Some(t0 + H));
        assert_eq!(s.poll_action(t0), None);
        assert_eq!(s.next_deadline(), Some(t0 + H.mul_f64(0.8)));
        assert_eq!(s.poll_action(t0 + H.mul_f64(0.8)), Some(CredentialAction::Register));
        assert!(s.connection_credentials_valid(t0 + H.mul_f64(0.8)));
        s.on_action_succeeded();
        s.on_connection_credentials(t0 + H, Some(t0 + 2 * H));
        assert_eq!(s.poll_action(t0 + 5 * H), Some(CredentialAction::RefreshRegistrationToken));
        assert!(s.registration_token_valid(t0 + 5 * H));
        assert!(!s.registration_token_valid(t0 + 10 * H));
    }

    #[test]
    fn failures_back_off_and_rejection_forces_register() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut s = CredentialSchedule::new(Duration::from_secs(10), Duration::from_secs(60));
        s.on_connection_credentials(t0, None);
        assert_eq!(s.poll_action(t0), None);
        assert_eq!(s.next_deadline(), None);
        s.on_credentials_rejected();
        assert_eq!(s.poll_action(t0), Some(CredentialAction::Register));
        let d = s.on_action_failed(t0);
        assert!(d >= Duration::from_secs(5));
        assert_eq!(s.poll_action(t0 + d / 2), None);
        assert_eq!(s.poll_action(t0 + d), Some(CredentialAction::Register));
        assert_eq!(s.next_deadline(), Some(t0 + d));
    }
}
