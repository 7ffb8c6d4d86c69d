//! `Shared`: what every connection task reads (TLS configuration, limits, the engine's
//! queue, the sign-out broadcast, the front door's limiters). `server::run` builds it and
//! swaps the TLS configuration and limits on reload; `conn` only reads it.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rustls::ServerConfig;
use tally_protocol::Welcome;
use tokio::sync::{broadcast, mpsc};

use crate::config::Limits;
use crate::core::SignOut;
use crate::limiter::{AuthLimiter, PreAuth};
use crate::store::Store;

/// What connection tasks share.
pub struct Shared {
    /// Swapped on SIGHUP.
    pub(crate) tls: RwLock<Arc<ServerConfig>>,
    /// Swapped on SIGHUP.
    pub(crate) limits: RwLock<Limits>,
    /// Open connections, for `max_connections` and `server info`.
    pub connections: AtomicUsize,
    /// Where requests go.
    pub engine: mpsc::Sender<crate::engine::Job>,
    /// Connections to end: revoked tokens, deactivated and removed accounts.
    pub sign_outs: broadcast::Sender<SignOut>,
    /// Token look-ups.
    pub store: Arc<dyn Store>,
    /// Sent to every client after its `Hello`.
    pub welcome: Welcome,
    /// For `uptime_secs`.
    pub started: Instant,
    /// Lease time to live; also the idle timeout of a connection.
    pub ttl: Duration,
    /// Failed sign-ins per address.
    pub auth_limiter: AuthLimiter,
    /// Connections not signed in yet, per address and in all.
    pub preauth: PreAuth,
}

impl Shared {
    pub fn tls(&self) -> Arc<ServerConfig> {
        self.tls.read().expect("tls lock").clone()
    }

    pub fn limits(&self) -> Limits {
        self.limits.read().expect("limits lock").clone()
    }
}
