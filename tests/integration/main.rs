//! End-to-end tests: the real daemon (in-process or as a process), the real client crate
//! and the real `tally` binary, over real TLS on loopback.

mod cluster;
mod harness;

mod borrow;
mod bulk;
mod cli;
mod credit_faults;
mod credits;
mod daemon;
mod dashboard;
mod datadir;
mod failover;
mod fake;
mod faults;
mod features;
mod ffi;
mod hostile;
mod http;
mod kinds;
mod lifecycle;
mod lying;
mod neighbour;
mod notifications;
mod paging;
mod policy;
mod pool;
mod prereqs;
mod python;
mod queue;
mod reconnect;
mod redirect;
mod reports;
mod robust;
mod sinks;
mod stalling;
mod terminal;
mod tokens;
mod users;
