//! The connection's timing decisions (sans-IO): when to connect again, when to ask for the twin
//! again, when to switch to renewed credentials, when to retry the store, when to remove
//! acknowledged messages. The driver passes `now` in, performs the [`LinkAction`]s that
//! [`LinkSchedule::poll`] returns, and sleeps until [`LinkSchedule::next_deadline`]; it keeps no
//! timers of its own.

use std::time::{Duration, Instant};

use crate::Backoff;

/// Tunables of a [`LinkSchedule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkTimings {
    /// First retry delay (reconnect, twin request); doubles with jitter up to `retry_max`.
    pub retry_initial: Duration,
    /// Longest retry delay after a refusal (the platform answered: credentials, throttling, an
    /// error status).
    pub retry_max: Duration,
    /// Longest reconnect delay after a link failure (no answer, a reset, a stalled link), so that
    /// delivery resumes soon after the network comes back; a failed attempt costs the platform
    /// nothing it saw.
    pub reconnect_max: Duration,
    /// How long in-flight messages may take to be acknowledged before the connection switches
    /// to renewed credentials.
    pub drain_timeout: Duration,
    /// Acknowledged messages are removed from the store once this many have gathered ...
    pub remove_batch: usize,
    /// ... or this long after the first of them.
    pub remove_delay: Duration,
    /// How long to wait before using the store again after it failed.
    pub store_retry: Duration,
}

/// Something the driver must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkAction {
    /// Open a connection (with the current credentials).
    Connect,
    /// Ask for the full twin.
    RequestTwin,
    /// Close the connection and connect with the renewed credentials.
    SwitchCredentials,
    /// Remove the acknowledged messages gathered so far from the store.
    RemoveAcknowledged,
}

/// The connection's timers as one state machine.
#[derive(Debug)]
pub struct LinkSchedule {
    timings: LinkTimings,
    backoff: Backoff,
    connected: bool,
    connecting: bool,
    reconnect_at: Option<Instant>,
    twin_retry_at: Option<Instant>,
    draining_until: Option<Instant>,
    store_retry_at: Option<Instant>,
    remove_due: Option<Instant>,
}

impl LinkSchedule {
    /// A schedule with nothing due; call [`LinkSchedule::on_credentials`] once credentials exist.
    pub fn new(timings: LinkTimings) -> Self {
        LinkSchedule {
            backoff: Backoff::new(timings.retry_initial, timings.retry_max),
            timings,
            connected: false,
            connecting: false,
            reconnect_at: None,
            twin_retry_at: None,
            draining_until: None,
            store_retry_at: None,
            remove_due: None,
        }
    }

    /// Credentials are available (at start) or were renewed. Connected: let the in-flight
    /// messages be acknowledged before switching (so none is sent twice); otherwise connect now
    /// (a connection attempt under way is abandoned: it uses the old credentials).
    pub fn on_credentials(&mut self, now: Instant) {
        if self.connected {
            self.draining_until = Some(now + self.timings.drain_timeout);
        } else {
            self.connecting = false;
            self.reconnect_at = Some(now);
        }
    }

    /// A connection attempt finished: connected.
    pub fn on_connected(&mut self, now: Instant) {
        self.connecting = false;
        self.connected = true;
        self.reconnect_at = None;
        self.twin_retry_at = Some(now);
    }

    /// A connection attempt failed, by a link failure (`link_failed`: no answer, a reset) or a
    /// refusal; returns the delay before the next one.
    pub fn on_connect_failed(&mut self, now: Instant, link_failed: bool) -> Duration {
        self.connecting = false;
        self.retry_connect(now, link_failed)
    }

    /// The connection was lost, by a link failure (`link_failed`) or the platform closing it;
    /// returns the delay before reconnecting.
    pub fn on_disconnected(&mut self, now: Instant, link_failed: bool) -> Duration {
        self.connected = false;
        self.twin_retry_at = None;
        self.retry_connect(now, link_failed)
    }

    fn retry_connect(&mut self, now: Instant, link_failed: bool) -> Duration {
        let mut delay = self.backoff.next_delay();
        if link_failed {
            delay = delay.min(self.timings.reconnect_max);
        }
        self.reconnect_at = Some(now + delay);
        delay
    }

    /// The twin arrived: past failures are forgotten.
    pub fn on_twin(&mut self) {
        self.backoff.reset();
    }

    /// The twin request failed; returns the delay before asking again.
    pub fn on_twin_failed(&mut self, now: Instant) -> Duration {
        let delay = self.backoff.next_delay();
        self.twin_retry_at = Some(now + delay);
        delay
    }

    /// A twin request could not be sent (the connection is gone): nothing to retry on it.
    pub fn on_twin_not_sent(&mut self) {
        self.twin_retry_at = None;
    }

    /// The store failed; it is not used again before [`LinkTimings::store_retry`].
    pub fn on_store_failed(&mut self, now: Instant) {
        self.store_retry_at = Some(now + self.timings.store_retry);
    }

    /// Whether the store may be used now.
    pub fn store_usable(&self, now: Instant) -> bool {
        self.store_retry_at.is_none_or(|t| now >= t)
    }

    /// Whether messages may be handed to the connection (not while draining for a switch).
    pub fn may_transmit(&self) -> bool {
        self.draining_until.is_none()
    }

    /// Acknowledged messages waiting for removal: `pending` of them now.
    pub fn on_removals_pending(&mut self, now: Instant, pending: usize) {
        if pending == 0 {
            self.remove_due = None;
        } else if self.remove_due.is_none() {
            self.remove_due = Some(now + self.timings.remove_delay);
        }
        if pending >= self.timings.remove_batch {
            self.remove_due = Some(now);
        }
    }

    /// Whether acknowledged messages are waiting for removal and the store may be used: a driver
    /// with nothing else to do removes them at once ([`LinkSchedule::poll_idle`]) instead of
    /// letting more gather, so that a crash redelivers no more than what was in flight; under
    /// load they gather up to [`LinkTimings::remove_batch`] or [`LinkTimings::remove_delay`].
    pub fn removal_waiting(&self, now: Instant) -> bool {
        self.remove_due.is_some() && self.store_usable(now)
    }

    /// The driver has nothing else to do (no event, command or append is ready): what to do
    /// before it sleeps.
    pub fn poll_idle(&mut self, now: Instant) -> Option<LinkAction> {
        self.removal_waiting(now).then(|| {
            self.remove_due = None;
            LinkAction::RemoveAcknowledged
        })
    }

    /// The next action due at `now` (call until `None`). `in_flight` is the number of messages
    /// handed to the connection and not acknowledged yet.
    pub fn poll(&mut self, now: Instant, in_flight: usize) -> Option<LinkAction> {
        if self.remove_due.is_some_and(|t| now >= t) && self.store_usable(now) {
            self.remove_due = None;
            return Some(LinkAction::RemoveAcknowledged);
        }
        if let Some(until) = self.draining_until {
            if self.connected && (in_flight == 0 || now >= until) {
                self.draining_until = None;
                self.connected = false;
                self.twin_retry_at = None;
                self.reconnect_at = None;
                self.connecting = true;
                return Some(LinkAction::SwitchCredentials);
            }
            if !self.connected {
                self.draining_until = None;
            }
        }
        if !self.connected && !self.connecting && self.reconnect_at.is_some_and(|t| now >= t) {
            self.reconnect_at = None;
            self.connecting = true;
            return Some(LinkAction::Connect);
        }
        if self.connected && self.twin_retry_at.is_some_and(|t| now >= t) {
            self.twin_retry_at = None;
            return Some(LinkAction::RequestTwin);
        }
        None
    }

    /// When something next becomes due (`None`: nothing is scheduled).
    pub fn next_deadline(&self) -> Option<Instant> {
        let reconnect = self.reconnect_at.filter(|_| !self.connected && !self.connecting);
        let twin = self.twin_retry_at.filter(|_| self.connected);
        [reconnect, twin, self.draining_until, self.store_retry_at, self.remove_due].into_iter().flatten().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timings() -> LinkTimings {
        LinkTimings {
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(2),
            reconnect_max: Duration::from_millis(500),
            drain_timeout: Duration::from_secs(10),
            remove_batch: 4,
            remove_delay: Duration::from_millis(20),
            store_retry: Duration::from_millis(100),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn connects_when_credentials_come_and_backs_off_on_failures() {
        let t0 = Instant::now();
        let mut s = LinkSchedule::new(timings());
        assert_eq!(s.poll(t0, 0), None, "no credentials, nothing to do");
        assert_eq!(s.next_deadline(), None);
        s.on_credentials(t0);
        assert_eq!(s.poll(t0, 0), Some(LinkAction::Connect));
        assert_eq!(s.poll(t0, 0), None, "one attempt at a time");
        let d1 = s.on_connect_failed(t0, false);
        assert!(d1 >= ms(50) && d1 <= ms(100), "{d1:?}");
        assert_eq!(s.poll(t0 + d1 - ms(1), 0), None, "not before the delay");
        assert_eq!(s.next_deadline(), Some(t0 + d1));
        assert_eq!(s.poll(t0 + d1, 0), Some(LinkAction::Connect));
        let d2 = s.on_connect_failed(t0 + d1, false);
        assert!(d2 >= ms(100) && d2 <= ms(200), "doubles: {d2:?}");
        // Many failures: capped at retry_max.
        let mut now = t0 + d1 + d2;
        for _ in 0..20 {
            assert_eq!(s.poll(now, 0), Some(LinkAction::Connect));
            now += s.on_connect_failed(now, false);
        }
        let capped = s.on_connect_failed(now, false);
        assert!(capped >= Duration::from_secs(1) && capped <= Duration::from_secs(2), "{capped:?}");
        // After a link failure the network may be back any moment: at most reconnect_max.
        assert_eq!(s.poll(now + capped, 0), Some(LinkAction::Connect));
        let link = s.on_connect_failed(now + capped, true);
        assert!(link <= ms(500), "{link:?}");
        assert_eq!(s.next_deadline(), Some(now + capped + link));
        let lost = s.on_disconnected(now + capped + link, true);
        assert!(lost <= ms(500), "{lost:?}");
    }

    #[test]
    fn asks_for_the_twin_on_connect_and_retries_it_with_backoff_until_it_comes() {
        let t0 = Instant::now();
        let mut s = LinkSchedule::new(timings());
        s.on_credentials(t0);
        assert_eq!(s.poll(t0, 0), Some(LinkAction::Connect));
        s.on_connected(t0);
        assert_eq!(s.poll(t0, 0), Some(LinkAction::RequestTwin));
        assert_eq!(s.poll(t0, 0), None);
        let d = s.on_twin_failed(t0);
        assert_eq!(s.poll(t0 + d - ms(1), 0), None);
        assert_eq!(s.poll(t0 + d, 0), Some(LinkAction::RequestTwin));
        s.on_twin();
        // A lost connection stops the twin retries and reconnects after the backoff (reset by
        // the twin's arrival).
        let d = s.on_twin_failed(t0 + ms(500));
        let lost = s.on_disconnected(t0 + ms(500), false);
        assert!(lost >= ms(100) && lost <= ms(200), "{lost:?}: second delay after the reset");
        assert_eq!(s.poll(t0 + ms(500) + d, 0), None, "no twin request while disconnected");
        assert_eq!(s.poll(t0 + ms(500) + lost.max(d), 0), Some(LinkAction::Connect));
    }

    #[test]
    fn renewed_credentials_wait_for_in_flight_messages_up_to_the_drain_timeout() {
        let t0 = Instant::now();
        let mut s = LinkSchedule::new(timings());
        s.on_credentials(t0);
        s.poll(t0, 0);
        s.on_connected(t0);
        s.poll(t0, 0);
        s.on_credentials(t0 + ms(1));
        assert!(!s.may_transmit(), "no new messages while draining");
        assert_eq!(s.poll(t0 + ms(2), 3), None, "three still in flight");
        assert_eq!(s.poll(t0 + ms(3), 0), Some(LinkAction::SwitchCredentials), "all acknowledged");
        assert!(s.may_transmit());
        s.on_connected(t0 + ms(4));
        // Messages never acknowledged: switch at the timeout.
        s.poll(t0 + ms(4), 0);
        s.on_credentials(t0 + ms(5));
        assert_eq!(s.next_deadline(), Some(t0 + ms(5) + Duration::from_secs(10)));
        assert_eq!(s.poll(t0 + ms(5) + Duration::from_secs(10), 7), Some(LinkAction::SwitchCredentials));
        // Credentials while disconnected: connect at once, abandoning an attempt with the old ones.
        let mut s = LinkSchedule::new(timings());
        s.on_credentials(t0);
        assert_eq!(s.poll(t0, 0), Some(LinkAction::Connect));
        s.on_credentials(t0 + ms(1));
        assert_eq!(s.poll(t0 + ms(1), 0), Some(LinkAction::Connect));
    }

    #[test]
    fn an_idle_driver_removes_at_once_but_not_from_a_failed_store() {
        let t0 = Instant::now();
        let mut s = LinkSchedule::new(timings());
        assert_eq!(s.poll_idle(t0), None, "nothing to remove");
        s.on_removals_pending(t0, 1);
        assert_eq!(s.poll(t0, 0), None, "busy: the removal waits for more");
        assert!(s.removal_waiting(t0));
        assert_eq!(s.poll_idle(t0), Some(LinkAction::RemoveAcknowledged));
        assert_eq!(s.poll_idle(t0), None);
        assert_eq!(s.next_deadline(), None, "nothing left due");
        s.on_store_failed(t0);
        s.on_removals_pending(t0, 1);
        assert!(!s.removal_waiting(t0 + ms(1)));
        assert_eq!(s.poll_idle(t0 + ms(1)), None, "the failed store is left alone");
        assert_eq!(s.poll_idle(t0 + ms(100)), Some(LinkAction::RemoveAcknowledged));
    }

    #[test]
    fn removals_are_batched_by_count_or_delay_and_wait_for_a_failed_store() {
        let t0 = Instant::now();
        let mut s = LinkSchedule::new(timings());
        s.on_removals_pending(t0, 1);
        assert_eq!(s.poll(t0, 0), None);
        s.on_removals_pending(t0 + ms(5), 2);
        assert_eq!(s.next_deadline(), Some(t0 + ms(20)), "the delay counts from the first");
        assert_eq!(s.poll(t0 + ms(20), 0), Some(LinkAction::RemoveAcknowledged));
        s.on_removals_pending(t0 + ms(21), 4);
        assert_eq!(s.poll(t0 + ms(21), 0), Some(LinkAction::RemoveAcknowledged), "a full batch at once");
        // The store failed: nothing before the retry time.
        s.on_store_failed(t0 + ms(30));
        s.on_removals_pending(t0 + ms(30), 4);
        assert!(!s.store_usable(t0 + ms(31)));
        assert_eq!(s.poll(t0 + ms(31), 0), None);
        assert_eq!(s.poll(t0 + ms(130), 0), Some(LinkAction::RemoveAcknowledged));
        s.on_removals_pending(t0 + ms(131), 0);
        assert_eq!(s.next_deadline(), Some(t0 + ms(130)), "only the store retry time is left");
    }
}
