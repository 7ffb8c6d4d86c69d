//! The systemd watchdog: `WATCHDOG=1`, sent from the engine's own loop.
//!
//! With `WatchdogSec=` in the unit, systemd passes the period in `WATCHDOG_USEC` and restarts
//! the daemon when no `WATCHDOG=1` arrives within it. The pings come from `Engine::run`
//! between batches (not from a task of their own), so a pool that stopped turning (a commit
//! that never returns, a loop that never yields) goes quiet and is restarted. The engine
//! wakes for [`Watchdog::due`] even when no request arrives.

use std::time::Duration;

use tokio::time::Instant;

/// When the next ping is due, and how to send it.
pub struct Watchdog {
    /// How often to ping: half the period systemd gives, or `None` when there is no watchdog.
    every: Option<Duration>,
    /// When the next ping is due.
    next: Instant,
    /// Sends one ping: `WATCHDOG=1` to `NOTIFY_SOCKET`, or a recorder in tests.
    ping: Box<dyn FnMut() + Send>,
}

impl Watchdog {
    /// A watchdog that pings systemd every `every`, or does nothing when `None`.
    pub fn new(every: Option<Duration>) -> Self {
        Self::with_ping(every, Box::new(notify_systemd))
    }

    /// A watchdog that calls `ping` every `every`.
    pub fn with_ping(every: Option<Duration>, ping: Box<dyn FnMut() + Send>) -> Self {
        Self {
            every,
            next: Instant::now(),
            ping,
        }
    }

    /// Half the period systemd set for this process (`WATCHDOG_USEC`, and `WATCHDOG_PID` if it
    /// names this process), as `sd_watchdog_enabled(3)` advises; `None` without a watchdog.
    pub fn period_from_env() -> Option<Duration> {
        let mut usec = 0;
        let enabled = sd_notify::watchdog_enabled(false, &mut usec);
        (enabled && usec > 0).then(|| Duration::from_micros(usec / 2))
    }

    /// Pings when a ping is due.
    pub fn ping_if_due(&mut self) {
        let Some(every) = self.every else { return };
        let now = Instant::now();
        if now >= self.next {
            (self.ping)();
            self.next = now + every;
        }
    }

    /// Resolves when the next ping is due; never when there is no watchdog.
    pub fn due(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let next = self.every.map(|_| self.next);
        async move {
            match next {
                Some(next) => tokio::time::sleep_until(next).await,
                None => std::future::pending().await,
            }
        }
    }
}

fn notify_systemd() {
    if let Err(err) = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]) {
        tracing::warn!(error = %err, "cannot ping the systemd watchdog");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    fn counting(every: Option<Duration>) -> (Watchdog, Arc<AtomicUsize>) {
        let pings = Arc::new(AtomicUsize::new(0));
        let counter = pings.clone();
        let watchdog = Watchdog::with_ping(
            every,
            Box::new(move || {
                counter.fetch_add(1, Ordering::SeqCst);
            }),
        );
        (watchdog, pings)
    }

    #[tokio::test]
    async fn pings_at_once_then_once_per_period() {
        let every = Duration::from_millis(50);
        let (mut watchdog, pings) = counting(Some(every));
        let started = Instant::now();
        watchdog.ping_if_due();
        watchdog.ping_if_due();
        assert_eq!(pings.load(Ordering::SeqCst), 1, "one ping per period");

        watchdog.due().await;
        assert!(
            started.elapsed() >= every,
            "due one period after the last ping"
        );
        watchdog.ping_if_due();
        assert_eq!(pings.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn without_a_period_it_never_pings_nor_wakes() {
        let (mut watchdog, pings) = counting(None);
        watchdog.ping_if_due();
        assert_eq!(pings.load(Ordering::SeqCst), 0);
        let woke = tokio::time::timeout(Duration::from_millis(100), watchdog.due()).await;
        assert!(woke.is_err(), "never due");
    }
}
