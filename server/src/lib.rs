//! The Tally license daemon, `tallyd`, as a library: the binary in `main.rs` only parses
//! arguments, sets up logging and signals, and calls [`run`]; tests call it directly.
//!
//! - [`core`]: the seat accounting, synchronous and free of I/O.
//! - [`engine`]: the task that owns the pool and commits its changes in groups; `route`:
//!   who answers a request (the connection, the audit reader or the pool).
//! - [`clock`]: the time the engine decides by; tests step a manual one.
//! - [`conn`]: one client connection; `shared`: what connection tasks share.
//! - [`store`]: durable state behind the [`store::Store`] trait.
//! - [`ha`]: leadership on PostgreSQL (not yet wired in): the elector and the epoch fence.
//! - [`notify`]: delivery of the notification outbox; [`notices`]: server-initiated
//!   messages (queue notices) to the live connection of a client instance.
//! - [`http`]: `/metrics`, `/healthz` and `/readyz` over HTTPS (SPEC §10).
//! - `watchdog`: the systemd watchdog, pinged from the engine's loop.
//! - [`config`], [`init`]: configuration and the data directory; [`check`]: what
//!   `tallyd check-config` reads beyond the file; [`error`]: the error of setting up and
//!   running the daemon.
//! - `limiter`, `logtext`: the front door's limits per client address, and peer text made
//!   safe for the log.
#![deny(clippy::await_holding_lock)]

pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
mod conn;
pub mod core;
mod engine;
pub mod error;
mod fold;
pub mod ha;
pub mod http;
pub mod init;
mod limiter;
mod logtext;
pub mod notices;
pub mod notify;
mod route;
mod server;
mod shared;
pub mod store;
mod watchdog;

pub use clock::Clock;
pub use error::Error;
pub use server::{run, Control};

/// The accept queue of the listening socket: deep enough that a storm of clients starting
/// at once (a render farm coming up) is queued, not dropped and retried a second later.
pub const ACCEPT_BACKLOG: u32 = 4096;

/// Binds a listening socket with address reuse and a deep accept queue.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}
