//! `Shared`: what every connection task reads (TLS configuration, limits, the engine's
//! queue, the sign-out broadcast, the front door's limiters, the connections queue notices
//! go to). `server::run` builds it and
//! swaps the TLS configuration and limits on reload; `conn` only reads it.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rustls::ServerConfig;
use tally_protocol::Welcome;
use tokio::sync::{broadcast, mpsc, watch};

use crate::config::Limits;
use crate::core::SignOut;
use crate::ha::Serving;
use crate::limiter::{AuthLimiter, PreAuth};
use crate::notices::Notices;
use crate::store::{ClusterStore, Store};

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
    /// The address the listener is bound to, for `server info`.
    pub listen: SocketAddr,
    /// Failed sign-ins per address.
    pub auth_limiter: AuthLimiter,
    /// Connections not signed in yet, per address and in all.
    pub preauth: PreAuth,
    /// Whether the node serves, as the engine publishes it.
    pub serving: watch::Receiver<Serving>,
    /// This node in its cluster; `None` for a single node.
    pub node: Option<Node>,
    /// Where the engine's queue notices reach each client instance's connection.
    pub notices: Arc<Notices>,
}

/// A cluster's node, for `server info` and `server nodes`.
pub struct Node {
    /// This node's id.
    pub id: String,
    /// The database, for the list of nodes.
    pub store: Arc<dyn ClusterStore>,
}

impl Shared {
    pub fn tls(&self) -> Arc<ServerConfig> {
        self.tls.read().expect("tls lock").clone()
    }

    pub fn limits(&self) -> Limits {
        self.limits.read().expect("limits lock").clone()
    }
}
