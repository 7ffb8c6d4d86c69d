//! Failed sign-ins, counted per client address, so that guessing tokens is slow.
//!
//! After `limits.signin_failures` failed sign-ins from one address within `WINDOW`, further
//! attempts from it are refused with `rate_limited` until the window ends, before the token
//! is even looked up. The table is bounded: old windows are dropped as new ones come.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The length of a window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most; past it, expired windows are dropped, then the oldest.
const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Counts failed sign-ins per address.
#[derive(Debug)]
pub struct AuthLimiter {
    windows: Mutex<HashMap<IpAddr, Window>>,
    /// Failed sign-ins allowed per address and window; 0 turns the limit off.
    max_failures: AtomicU32,
}

impl AuthLimiter {
    pub fn new(max_failures: u32) -> Self {
        Self {
            windows: Mutex::new(HashMap::new()),
            max_failures: AtomicU32::new(max_failures),
        }
    }

    /// Changes the limit (on SIGHUP).
    pub fn set_max_failures(&self, max_failures: u32) {
        self.max_failures.store(max_failures, Ordering::Relaxed);
    }

    /// `Err(wait)` when the address has failed too often and must wait.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let max = self.max_failures.load(Ordering::Relaxed);
        if max == 0 {
            return Ok(());
        }
        let windows = self.windows.lock().expect("limiter lock");
        match windows.get(&ip) {
            Some(w) if w.failures >= max && now.duration_since(w.started) < WINDOW => {
                Err(WINDOW - now.duration_since(w.started))
            }
            _ => Ok(()),
        }
    }

    /// Counts one failed sign-in.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut windows = self.windows.lock().expect("limiter lock");
        if windows.len() >= MAX_TRACKED && !windows.contains_key(&ip) {
            windows.retain(|_, w| now.duration_since(w.started) < WINDOW);
            if windows.len() >= MAX_TRACKED {
                if let Some(oldest) = windows
                    .iter()
                    .min_by_key(|(_, w)| w.started)
                    .map(|(ip, _)| *ip)
                {
                    windows.remove(&oldest);
                }
            }
        }
        let window = windows.entry(ip).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now.duration_since(window.started) >= WINDOW {
            *window = Window {
                started: now,
                failures: 0,
            };
        }
        window.failures += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_held_back_after_too_many_failures_until_the_window_ends() {
        let limiter = AuthLimiter::new(10);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let start = Instant::now();
        for _ in 0..10 {
            assert!(limiter.check(ip, start).is_ok());
            limiter.failed(ip, start);
        }
        let wait = limiter
            .check(ip, start + Duration::from_secs(1))
            .unwrap_err();
        assert_eq!(wait, WINDOW - Duration::from_secs(1));
        assert!(
            limiter.check(other, start).is_ok(),
            "other addresses are not affected"
        );
        assert!(limiter.check(ip, start + WINDOW).is_ok(), "the window ends");
        limiter.set_max_failures(0);
        assert!(limiter.check(ip, start).is_ok(), "0 turns the limit off");
    }

    #[test]
    fn the_table_stays_bounded() {
        let limiter = AuthLimiter::new(10);
        let start = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 500) {
            limiter.failed(IpAddr::from(i.to_be_bytes()), start);
        }
        assert!(limiter.windows.lock().unwrap().len() <= MAX_TRACKED);
    }
}
