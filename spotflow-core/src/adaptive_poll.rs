//! How a store's dedicated thread waits for its next command: [`AdaptivePoll`] polls briefly
//! while commands come quickly (a sender in a tight loop) and sleeps at once otherwise (a device's
//! pace). Used by [`crate::ThreadStore`] alone.

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::Receiver;

/// How long a store's dedicated thread polls for its next command before sleeping (see
/// [`recv_polling`]).
pub(crate) const STORE_THREAD_POLL: std::time::Duration = std::time::Duration::from_micros(200);

/// The next command for a store's dedicated thread: polls `rx` for up to `spin` before sleeping
/// on it (`None` once every sender is gone).
///
/// A sender that appends one message at a time sends its next command a few microseconds after
/// its answer; putting the store thread to sleep and waking it up again costs more than that (and
/// more than a commit that needs no fsync), so a short poll keeps a single sender fast. The poll
/// yields the CPU between attempts.
pub(crate) fn recv_polling<T>(rx: &mut Receiver<T>, spin: std::time::Duration) -> Option<T> {
    let until = std::time::Instant::now() + spin;
    loop {
        match rx.try_recv() {
            Ok(command) => return Some(command),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if std::time::Instant::now() < until => std::thread::yield_now(),
            Err(TryRecvError::Empty) => return rx.blocking_recv(),
        }
    }
}

/// How a store's dedicated thread waits for its next command: it polls for up to a window
/// (see [`recv_polling`]) only while recent waits were shorter than that window, and otherwise
/// sleeps on the channel at once.
///
/// A single sender appending as fast as it can sends its next command microseconds after its
/// answer, and polling saves the sleep and the wakeup; a device sending tens or hundreds of
/// messages per second leaves milliseconds between commands, and there every poll would be
/// CPU spent for nothing. The decision follows a moving average of the waits (a quarter of
/// each new wait), so a burst turns polling on after about ten quick commands and a pause turns
/// it off after one wasted window.
#[derive(Debug)]
pub(crate) struct AdaptivePoll {
    window: std::time::Duration,
    /// Moving average of the waits, in nanoseconds.
    average_ns: u64,
    /// Whether the last decision was to poll, for callers that poll for answers in turn.
    hot: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl AdaptivePoll {
    /// Polls for up to `window` while the waits are shorter on average. Starts cold.
    pub(crate) fn new(window: std::time::Duration) -> AdaptivePoll {
        AdaptivePoll {
            window,
            average_ns: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX).saturating_mul(4),
            hot: std::sync::Arc::default(),
        }
    }

    /// Whether the thread polls now: a caller that polls for its answer does so only then (the
    /// answer then comes within microseconds; otherwise the thread has to be woken first).
    pub(crate) fn hot_flag(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.hot.clone()
    }

    /// Whether the next wait polls first.
    pub(crate) fn polls(&self) -> bool {
        u128::from(self.average_ns) < self.window.as_nanos()
    }

    /// The next command (`None` once every sender is gone).
    pub(crate) fn recv<T>(&mut self, rx: &mut Receiver<T>) -> Option<T> {
        use std::sync::atomic::Ordering;
        if let Ok(command) = rx.try_recv() {
            self.record(std::time::Duration::ZERO);
            return Some(command);
        }
        let polls = self.polls();
        self.hot.store(polls, Ordering::Relaxed);
        let start = std::time::Instant::now();
        let command = if polls { recv_polling(rx, self.window) } else { rx.blocking_recv() };
        self.record(start.elapsed());
        command
    }

    fn record(&mut self, waited: std::time::Duration) {
        let waited = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        // average += (waited - average) / 4, without overflow either way.
        self.average_ns = if waited >= self.average_ns {
            self.average_ns + (waited - self.average_ns) / 4
        } else {
            self.average_ns - (self.average_ns - waited) / 4
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_poll_polls_only_while_commands_come_quickly() {
        let window = std::time::Duration::from_micros(200);
        let mut poll = AdaptivePoll::new(window);
        assert!(!poll.polls(), "starts cold");
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        // A burst: commands already waiting make the waits zero; polling turns on within a
        // bounded number of them.
        let mut turned_on = None;
        for i in 0..64 {
            tx.try_send(i).unwrap();
            assert_eq!(poll.recv(&mut rx), Some(i));
            if poll.polls() {
                turned_on = Some(i);
                break;
            }
        }
        assert!(turned_on.is_some_and(|i| i < 16), "polling turned on after {turned_on:?} quick commands");
        // A pause longer than the window (a device's pace): one wait turns it off again.
        let sender = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(5));
            tx.blocking_send(99).unwrap();
            tx
        });
        assert_eq!(poll.recv(&mut rx), Some(99));
        assert!(!poll.polls(), "a wait of 5 ms turns polling off");
        let hot = poll.hot_flag();
        assert!(hot.load(std::sync::atomic::Ordering::Relaxed), "the 5 ms wait began hot");
        drop(sender.join().unwrap());
        assert_eq!(poll.recv(&mut rx), None, "no sender left");
        assert!(!hot.load(std::sync::atomic::Ordering::Relaxed), "the wait after it slept at once");
    }
}
