//! The front door's limits, kept per client address prefix (an IPv4 /32, an IPv6 /64):
//! failed sign-ins ([`AuthLimiter`]), connections that have not signed in yet
//! ([`PreAuth`]), and a throttle for warnings that could otherwise flood the log
//! ([`Throttle`]).
//!
//! Sign-ins: a valid token always signs in (R22); only failures are counted. Each failure is
//! counted under one lock, so the count is exact however many sign-ins race. Past
//! `limits.signin_failures` failures from one prefix within [`WINDOW`], a failure is answered
//! `rate_limited` (naming the wait) after [`FAILURE_PAUSE`]; with
//! `limits.max_unauthenticated_per_address` bounding the connections one prefix has in
//! flight, that bounds how fast it can guess, without ever refusing a valid token.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The length of a window of failed sign-ins.
pub const WINDOW: Duration = Duration::from_secs(60);
/// How long a failed sign-in past the limit waits for its answer.
pub const FAILURE_PAUSE: Duration = Duration::from_secs(1);
/// Prefixes tracked at most; past it, expired windows are dropped, then the oldest.
const MAX_TRACKED: usize = 10_000;

/// The address prefix limits are kept for: an IPv4 address as is, an IPv6 address's /64
/// (one site or host can hold a whole /64). An IPv4-mapped IPv6 address (a dual-stack
/// listener) counts as its IPv4 address.
pub fn prefix(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
            )),
        },
    }
}

/// A prefix as people read it: `10.0.0.7`, `2001:db8:1:2::/64`.
pub struct Prefix(pub IpAddr);

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match prefix(self.0) {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Counts failed sign-ins per address prefix.
#[derive(Debug)]
pub struct AuthLimiter {
    windows: Mutex<HashMap<IpAddr, Window>>,
    /// Failed sign-ins allowed per prefix and window; 0 turns the limit off.
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

    /// Counts one failed sign-in from `ip`: `Ok` while the prefix is within the limit,
    /// `Err(wait)` for a failure past it, `wait` being the time left in its window.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = prefix(ip);
        let max = self.max_failures.load(Ordering::Relaxed);
        let mut windows = self.windows.lock().expect("limiter lock");
        if windows.len() >= MAX_TRACKED && !windows.contains_key(&key) {
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
        let window = windows.entry(key).or_insert(Window {
            started: now,
            failures: 0,
        });
        let age = now.duration_since(window.started);
        if age >= WINDOW {
            *window = Window {
                started: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
        if max != 0 && window.failures > max {
            Err(WINDOW.saturating_sub(now.duration_since(window.started)))
        } else {
            Ok(())
        }
    }
}

/// Why a connection was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreAuthRefusal {
    /// The prefix has this many connections not yet signed in.
    Address(u32),
    /// Connections not yet signed in, from everywhere, have reached their share of
    /// `max_connections`.
    Total(usize),
}

impl fmt::Display for PreAuthRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address(max) => write!(
                f,
                "{max} connections from this address have not signed in yet (limits.max_unauthenticated_per_address)"
            ),
            Self::Total(max) => write!(
                f,
                "{max} connections have not signed in yet, half of limits.max_connections"
            ),
        }
    }
}

#[derive(Debug, Default)]
struct PreAuthTable {
    per_prefix: HashMap<IpAddr, u32>,
    total: usize,
}

/// Connections that have not signed in yet, per address prefix and in all.
#[derive(Debug, Clone, Default)]
pub struct PreAuth {
    table: Arc<Mutex<PreAuthTable>>,
}

impl PreAuth {
    /// The most connections not yet signed in, from everywhere: half of
    /// `max_connections`, so that the other half is always left to signed-in clients.
    pub fn total_share(max_connections: usize) -> usize {
        (max_connections / 2).max(1)
    }

    /// Lets a new connection from `ip` in, unless its prefix already has `per_address`
    /// connections not signed in, or all prefixes together have `total`. The permit counts
    /// until it is dropped (once the connection signs in or closes).
    pub fn admit(
        &self,
        ip: IpAddr,
        per_address: u32,
        total: usize,
    ) -> Result<PreAuthPermit, PreAuthRefusal> {
        let key = prefix(ip);
        let mut table = self.table.lock().expect("pre-auth lock");
        if table.total >= total {
            return Err(PreAuthRefusal::Total(total));
        }
        let count = table.per_prefix.entry(key).or_insert(0);
        if *count >= per_address {
            return Err(PreAuthRefusal::Address(per_address));
        }
        *count += 1;
        table.total += 1;
        Ok(PreAuthPermit {
            table: self.table.clone(),
            key,
        })
    }

    /// Connections not signed in yet, in all.
    #[cfg(test)]
    pub fn total(&self) -> usize {
        self.table.lock().expect("pre-auth lock").total
    }
}

/// One connection not signed in yet; dropping it gives its place back.
#[derive(Debug)]
pub struct PreAuthPermit {
    table: Arc<Mutex<PreAuthTable>>,
    key: IpAddr,
}

impl Drop for PreAuthPermit {
    fn drop(&mut self) {
        let mut table = self.table.lock().expect("pre-auth lock");
        table.total -= 1;
        if let Some(count) = table.per_prefix.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                table.per_prefix.remove(&self.key);
            }
        }
    }
}

/// Lets a repeated warning through at most once per period, counting the ones held back.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(held_back)` when a warning may be logged now, with how many were held back
    /// since the last one; `None` when this one is held back.
    pub fn ready(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|at| now.duration_since(at) < self.every)
        {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_past_the_limit_are_told_the_wait_until_the_window_ends() {
        let limiter = AuthLimiter::new(10);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let start = Instant::now();
        for _ in 0..10 {
            assert!(limiter.failed(ip, start).is_ok());
        }
        let wait = limiter
            .failed(ip, start + Duration::from_secs(1))
            .unwrap_err();
        assert_eq!(wait, WINDOW - Duration::from_secs(1));
        assert!(
            limiter.failed(other, start).is_ok(),
            "other addresses are not affected"
        );
        assert!(
            limiter.failed(ip, start + WINDOW).is_ok(),
            "the window ends"
        );
        limiter.set_max_failures(0);
        for _ in 0..100 {
            assert!(limiter.failed(ip, start).is_ok(), "0 turns the limit off");
        }
    }

    #[test]
    fn concurrent_failures_are_counted_exactly() {
        let limiter = Arc::new(AuthLimiter::new(10));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let start = Instant::now();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let limiter = limiter.clone();
                std::thread::spawn(move || {
                    (0..100)
                        .filter(|_| limiter.failed(ip, start).is_ok())
                        .count()
                })
            })
            .collect();
        let within: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(within, 10);
    }

    #[test]
    fn an_ipv6_64_is_one_address_and_a_mapped_ipv4_is_its_ipv4() {
        let limiter = AuthLimiter::new(2);
        let start = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(limiter.failed(a, start).is_ok());
        assert!(limiter.failed(b, start).is_ok());
        assert!(limiter.failed(a, start).is_err(), "same /64");
        assert!(limiter.failed(c, start).is_ok(), "another /64");
        assert_eq!(Prefix(b).to_string(), "2001:db8:1:2::/64");

        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(prefix(mapped), v4);
        assert_eq!(Prefix(mapped).to_string(), "192.0.2.7");
        assert_ne!(
            prefix("192.0.2.8".parse().unwrap()),
            prefix(v4),
            "IPv4 is per address"
        );
    }

    #[test]
    fn the_table_stays_bounded() {
        let limiter = AuthLimiter::new(10);
        let start = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 500) {
            let _ = limiter.failed(IpAddr::from(i.to_be_bytes()), start);
        }
        assert!(limiter.windows.lock().unwrap().len() <= MAX_TRACKED);
    }

    #[test]
    fn pre_auth_connections_are_capped_per_address_and_in_all_and_given_back() {
        let pre = PreAuth::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| pre.admit(a, 3, 5).unwrap()).collect();
        assert_eq!(pre.admit(a, 3, 5).unwrap_err(), PreAuthRefusal::Address(3));
        let other: Vec<_> = (0..2).map(|_| pre.admit(b, 3, 5).unwrap()).collect();
        assert_eq!(pre.admit(b, 3, 5).unwrap_err(), PreAuthRefusal::Total(5));
        drop(held);
        assert_eq!(pre.total(), 2);
        assert!(pre.admit(a, 3, 5).is_ok(), "places are given back");
        drop(other);
        assert_eq!(pre.total(), 0);
        assert!(pre.table.lock().unwrap().per_prefix.is_empty());
        assert_eq!(PreAuth::total_share(10_000), 5_000);
        assert_eq!(PreAuth::total_share(1), 1);
    }

    #[test]
    fn the_throttle_lets_one_warning_through_per_period_and_counts_the_rest() {
        let mut throttle = Throttle::new(Duration::from_secs(5));
        let start = Instant::now();
        assert_eq!(throttle.ready(start), Some(0));
        for ms in (50..5000).step_by(50) {
            assert_eq!(throttle.ready(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(throttle.ready(start + Duration::from_secs(5)), Some(99));
        assert_eq!(throttle.ready(start + Duration::from_secs(6)), None);
    }
}
