//! High availability on PostgreSQL (SPEC §7, R13): which node leads, and the fence that keeps
//! an old leader from committing once another has taken over.
//!
//! - `elector`: the [`Elector`] task. It takes the one row of `tally_leader` when that row's
//!   lease has lapsed in the database's clock, renews it every `lease / 3`, steps down on its
//!   own monotonic clock before the row can lapse, heartbeats into `tally_nodes`, and
//!   publishes the node's [`Role`] on a `watch` channel.
//! - [`check_epoch`]: the fence. The PostgreSQL store calls it inside every commit's
//!   transaction; a commit whose epoch is no longer current fails and is not acknowledged.
//! - [`SCHEMA`]: the tables, the PostgreSQL store's migration `0002_cluster.sql`.
//!
//! # Why a row with an expiry, not an advisory lock
//!
//! A session-level advisory lock (`pg_advisory_lock`) belongs to one connection: when that
//! connection dies (a cut cable, a proxy's idle timeout, a server restart) PostgreSQL releases
//! the lock at once and silently, and another node takes it while the old holder, which has
//! not yet noticed its dead socket, still believes it leads. Two more traps follow from the
//! lock living in a session: a lock call whose future is cancelled (a client-side timeout)
//! may still complete on the server and leave the lock held by a connection that went back
//! to the pool; and sqlx's `PgAdvisoryLockGuard` releases the lock only on the connection's
//! next use, not when the guard is dropped. Behind PgBouncer in transaction mode every
//! statement may run on another server connection, so session locks (and `LISTEN`) do not
//! work at all.
//!
//! Here leadership is a row, `tally_leader`, whose `expires_at` is set from the database's
//! own `now()`: it does not depend on any connection staying up, it lapses only when the
//! database's clock says so, and the epoch in it grows by one at every change of leader. A
//! statement that was cancelled on the client side but ran on the server can at worst have
//! taken the row for this node without the node knowing: the acquire statement therefore
//! also takes a row that names this node, with a new epoch, so such a row is never left to
//! block the cluster for a whole lease (see `elector::ACQUIRE`). Every statement is a single
//! autocommit statement, so it works through a transaction-mode pooler too; only the
//! `LISTEN` that makes a resignation visible at once needs a session, and without it a
//! standby notices within `lease / 3`.

mod elector;
#[cfg(test)]
mod tests;

use sqlx::PgConnection;

pub use elector::{Elector, ElectorConfig, HaError, Timing, MIN_LEASE};

/// The tables of a cluster: `tally_leader` (at most one row: the node that leads, the
/// address clients are sent to, the epoch and when the lease lapses in the database's clock),
/// `tally_nodes` (each node's address and last heartbeat, for `tally server nodes`) and
/// `tally_cluster` (the identity every node adopts). The PostgreSQL store's migration
/// `0002_cluster.sql`; idempotent, so tests of the elector can run it on a bare database.
pub const SCHEMA: &str = include_str!("../../migrations/postgres/0002_cluster.sql");

/// The channel a resigning leader notifies, so that standbys try to take over at once
/// instead of at their next poll, and a new leader notifies, so that they name it at once.
pub const CHANNEL: &str = "tally_leader";

/// What this node is, as its elector last decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// This node leads, under this epoch: it may serve the pool and commit with this epoch
    /// (each commit still passes [`check_epoch`]).
    Leader {
        /// The epoch this node took; every commit checks it.
        epoch: i64,
    },
    /// This node must not grant. `leader` is the address of the node whose lease is current
    /// in the database, as last read, for the `not_leader` redirect; `None` when no lease is
    /// current or the database could not be read.
    Standby {
        /// The current leader's advertised address, when known.
        leader: Option<String>,
    },
}

impl Role {
    /// The epoch when this node leads.
    pub fn epoch(&self) -> Option<i64> {
        match self {
            Role::Leader { epoch } => Some(*epoch),
            Role::Standby { .. } => None,
        }
    }
}

/// What a node does now, as its engine publishes it to the connections: a connection
/// opened while the node served under an epoch ends when that epoch's serving ends, so that
/// its client moves to the new leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serving {
    /// Serving the pool: a single node always (epoch 0), a cluster's leader under its epoch
    /// once the pool is loaded.
    Leader {
        /// The epoch it serves under.
        epoch: i64,
    },
    /// Not serving: requests are answered `not_leader`, naming the leader when known.
    Standby {
        /// The leader's advertised address, when known.
        leader: Option<String>,
    },
}

/// Why a commit was fenced off: it must not be acknowledged, and the node must stop serving.
#[derive(Debug, thiserror::Error)]
pub enum Fenced {
    /// Another node took over: the epoch in the database is no longer the caller's.
    #[error("leadership moved on: this node committed under epoch {ours}, the database holds epoch {current}")]
    Superseded {
        /// The epoch the caller leads under.
        ours: i64,
        /// The epoch in the database.
        current: i64,
    },
    /// The caller's epoch is still the current one, but its lease has lapsed in the
    /// database's clock: the node should have stepped down already.
    #[error("the lease of epoch {epoch} has lapsed in the database's clock")]
    Lapsed {
        /// The caller's epoch.
        epoch: i64,
    },
    /// No node has ever led on this database.
    #[error("no leader row in the database: this node never took leadership")]
    NoLeader,
    /// The check itself failed; the commit must fail with it.
    #[error("cannot check the leader's epoch: {0}")]
    Database(#[from] sqlx::Error),
}

/// The fence of R13: succeeds only when `epoch` is the current epoch and its lease has not
/// lapsed in the database's clock. Call it first in every commit's transaction, on the
/// transaction's connection (`&mut *tx`), and roll back on error.
///
/// It reads the leader row `FOR SHARE`, which holds a share lock on the row until the
/// transaction ends. Every change of leader updates that row and so needs a lock that
/// conflicts with it: a takeover that comes during the commit waits until the commit has
/// ended, and a commit that comes after the takeover sees the new epoch and fails. So a
/// commit under an old epoch either is ordered entirely before the takeover or is refused;
/// the new leader, which loads the pool after taking over, sees every commit the old one
/// acknowledged. The expiry is compared with `clock_timestamp()`, the time of the check,
/// not `now()`, which is the start of a transaction that may have been open for a while.
pub async fn check_epoch(conn: &mut PgConnection, epoch: i64) -> Result<(), Fenced> {
    let row: Option<(i64, bool)> = sqlx::query_as(
        "SELECT epoch, expires_at > clock_timestamp() FROM tally_leader WHERE id = 1 FOR SHARE",
    )
    .fetch_optional(conn)
    .await?;
    match row {
        None => Err(Fenced::NoLeader),
        Some((current, _)) if current != epoch => Err(Fenced::Superseded {
            ours: epoch,
            current,
        }),
        Some((_, false)) => Err(Fenced::Lapsed { epoch }),
        Some((_, true)) => Ok(()),
    }
}
