//! The time the engine decides by: the system clock, or a clock that tests set and step.
//!
//! Everything in the daemon that decides by time (the engine's requests, its sweep, the
//! catch-up after a start or a reload, the audit timestamps and the refusal folding) reads
//! [`Clock::now_millis`]. A [`Clock::manual`] clock stands still until a test calls
//! [`Clock::advance`], which also wakes the engine's sweep, so that the stepped time is
//! applied at once instead of at the next sweep tick. Connection idle timeouts stay on
//! tokio's time: they guard the socket, not the pool.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tally_protocol::now_millis as system_millis;
use tokio::sync::{watch, Notify};

/// A cheap, cloneable handle on the daemon's time. The default is the system clock.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// `None`: the system clock; `Some`: a manual clock shared by every clone.
    manual: Option<Arc<Manual>>,
}

/// A clock that moves only when stepped.
#[derive(Debug)]
struct Manual {
    /// The time it shows, in Unix milliseconds.
    now: AtomicI64,
    /// Woken on every step, so that the engine sweeps at the new time.
    stepped: Notify,
    /// The time after each step, for every other task that decides by it (the notifier).
    steps: watch::Sender<i64>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// A clock that shows `start` (Unix milliseconds) until [`advance`](Self::advance)d.
    pub fn manual(start: i64) -> Clock {
        Clock {
            manual: Some(Arc::new(Manual {
                now: AtomicI64::new(start),
                stepped: Notify::new(),
                steps: watch::Sender::new(start),
            })),
        }
    }

    /// Whether this is a manual clock.
    pub fn is_manual(&self) -> bool {
        self.manual.is_some()
    }

    /// The current time in Unix milliseconds.
    pub fn now_millis(&self) -> i64 {
        match &self.manual {
            Some(manual) => manual.now.load(Ordering::SeqCst),
            None => system_millis(),
        }
    }

    /// Steps a manual clock forward by `by` and wakes the engine's sweep; returns the new
    /// time.
    ///
    /// # Panics
    ///
    /// On the system clock, which no one can step.
    pub fn advance(&self, by: Duration) -> i64 {
        let manual = self
            .manual
            .as_ref()
            .expect("only a manual clock can be stepped");
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        let now = manual
            .now
            .fetch_add(by, Ordering::SeqCst)
            .saturating_add(by);
        // A stored permit: a step made while the engine is busy is swept right after.
        manual.stepped.notify_one();
        manual.steps.send_replace(now);
        now
    }

    /// Changes on every step of a manual clock; `None` on the system clock. Unlike
    /// [`stepped`](Self::stepped), any number of tasks may follow it.
    pub(crate) fn steps(&self) -> Option<watch::Receiver<i64>> {
        self.manual.as_ref().map(|manual| manual.steps.subscribe())
    }

    /// Resolves after a step of a manual clock; never on the system clock.
    pub(crate) async fn stepped(&self) {
        match &self.manual {
            Some(manual) => manual.stepped.notified().await,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_stands_still_until_stepped() {
        let clock = Clock::manual(1_000);
        let copy = clock.clone();
        assert_eq!(clock.now_millis(), 1_000);
        assert_eq!(copy.advance(Duration::from_millis(250)), 1_250);
        assert_eq!(clock.now_millis(), 1_250, "clones share one time");
        assert!(clock.is_manual());
    }

    #[test]
    fn the_system_clock_follows_the_wall_clock() {
        let before = system_millis();
        let now = Clock::system().now_millis();
        assert!(now >= before && now - before < 60_000, "{before} {now}");
        assert!(!Clock::system().is_manual());
    }

    #[tokio::test]
    async fn a_step_wakes_a_waiter_even_if_it_starts_waiting_later() {
        let clock = Clock::manual(0);
        clock.advance(Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(5), clock.stepped())
            .await
            .expect("the step was remembered");
    }

    #[tokio::test]
    async fn the_system_clock_never_wakes_the_sweep() {
        let woke = tokio::time::timeout(Duration::from_millis(20), Clock::system().stepped()).await;
        assert!(woke.is_err());
    }
}
