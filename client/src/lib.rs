//! The Tally client library: acquire a license in a few lines.
//!
//! ```no_run
//! # async fn example() -> Result<(), tally_client::Error> {
//! use tally_client::{Client, ClientConfig};
//!
//! let config = ClientConfig::from_file("/etc/tally/client.toml".as_ref())?;
//! let client = Client::connect(config).await?;
//! let mut lease = client.checkout("vray-render", 1).await?;
//! // ... render, while the lease heartbeats in the background ...
//! tokio::select! {
//!     reason = lease.lost() => eprintln!("license lost: {reason:?}"),
//!     _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
//! }
//! lease.release().await?;
//! # Ok(()) }
//! ```
//!
//! A [`Client`] keeps one connection to the first server of its list that answers. It
//! heartbeats while connected, reconnects with backoff (trying the next server) when the
//! connection drops, resumes its leases by id, and resends checkouts with the same request id
//! so that a retry never takes a second seat. On a cluster, a standby's `not_leader` answer
//! sends it to the leader, with the request. [`blocking`] wraps it for applications that
//! are not async.
#![deny(clippy::await_holding_lock)]

mod api;
pub mod blocking;
pub mod borrow;
#[cfg(feature = "cli")]
pub mod cli;
mod config;
mod error;
mod files;
mod lease;
mod session;

pub use api::LEASES_PAGE;
pub use borrow::{verify_offline, BorrowStore, Checked, Trust, Verdict};
pub use config::{
    default_client_file, machine_id, machine_id_from, ClientConfig, ServerAddr, MACHINE_ID_FILES,
};
pub use error::Error;
pub use lease::Lease;
pub use session::{Client, MAX_SENDS};
pub use tally_protocol as protocol;
