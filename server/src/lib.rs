//! The Tally license daemon, `tallyd`, as a library: the binary in `main.rs` only parses
//! arguments, sets up logging and signals, and calls [`run`]; tests call it directly.
//!
//! - [`core`]: the seat accounting, synchronous and free of I/O.
//! - [`engine`]: the task that owns the pool and commits its changes in groups.
//! - [`conn`]: one client connection.
//! - [`store`]: durable state behind the [`store::Store`] trait.
//! - [`notify`]: delivery of the notification outbox.
//! - [`config`], [`init`]: configuration and the data directory.
#![deny(clippy::await_holding_lock)]

pub mod cli;
pub mod config;
mod conn;
pub mod core;
mod engine;
pub mod init;
mod limiter;
pub mod notify;
mod server;
pub mod store;

pub use server::{run, Control};
