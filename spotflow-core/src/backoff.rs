//! Exponential backoff with jitter, used for every retry of the SDK.

use std::time::Duration;

/// Exponential backoff with "equal jitter": the n-th delay is uniformly drawn from
/// `[d/2, d]` where `d = min(max, initial * 2^n)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// A backoff starting at `initial` and capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max: max.max(initial), attempt: 0, rng: fastrand::Rng::new() }
    }

    /// Same as [`Backoff::new`] with a fixed seed (for deterministic tests).
    pub fn with_seed(initial: Duration, max: Duration, seed: u64) -> Self {
        Backoff { rng: fastrand::Rng::with_seed(seed), ..Backoff::new(initial, max) }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        let ceiling = self.initial.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let spread = (ceiling - half).as_micros().min(u64::MAX as u128) as u64;
        half + Duration::from_micros(self.rng.u64(0..=spread))
    }

    /// Forgets past failures (call after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Number of delays given since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_jitter_and_caps() {
        let mut b = Backoff::with_seed(Duration::from_millis(100), Duration::from_secs(2), 7);
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[3] >= Duration::from_millis(400) && delays[3] <= Duration::from_millis(800));
        for d in &delays[5..] {
            assert!(*d >= Duration::from_secs(1) && *d <= Duration::from_secs(2), "{d:?}");
        }
        // jitter: not all capped delays are equal
        assert!(delays[5..].windows(2).any(|w| w[0] != w[1]));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
