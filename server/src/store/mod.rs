//! Durable storage behind one trait, so that callers never know which database they use.
//!
//! A store holds the pool's durable state ([`Snapshot`]), applies the engine's group commits
//! ([`Batch`]) atomically, and answers token look-ups. SQLite is the embedded default;
//! the backend is chosen by the URL scheme of `database` ([`Backend::from_url`]). PostgreSQL
//! is the store of a cluster (SPEC §7): it also does what [`ClusterStore`] says, and every
//! commit of a leader is fenced by its epoch ([`Fence`]).
//!
//! - `rows`: the tables' rows as sqlx decodes them, converted to the core's types.
//! - `sqlite`: the SQLite backend; its migrations are in `server/migrations/sqlite/`.
//! - `postgres`: the PostgreSQL backend; its migrations are in `server/migrations/postgres/`.
//! - `contract` (tests): what every backend must do, run against each of them.

#[cfg(test)]
pub mod contract;
mod postgres;
mod rows;
mod sqlite;
mod writer;

use std::path::{Path, PathBuf};

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::postgres::PgConnectOptions;
use tally_protocol::{AuditEvent, AuditPage, AuditQuery};

use crate::core::{Batch, Notification, SignedIn, Snapshot, Token};
use crate::ha::Fenced;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// A store failure. Its text is for the log only: peers get `internal`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the database holds a value this version cannot read: {0}")]
    Corrupt(String),
    #[error("database migration failed: {0}")]
    Migrate(String),
    #[error("database: {0}")]
    Url(#[from] UrlError),
    /// The commit was refused because this node no longer leads (R13): nothing of it was
    /// written, and the node must stop serving.
    #[error("fenced off: {0}")]
    Fenced(#[from] Fenced),
}

impl StoreError {
    /// Whether this is the fence refusing a commit, as opposed to a failure whose outcome
    /// may be unknown.
    pub fn is_fenced(&self) -> bool {
        matches!(self, StoreError::Fenced(fenced) if !matches!(fenced, Fenced::Database(_)))
    }
}

/// Under what a commit is made: a single node's, which nothing can fence off, or a cluster
/// leader's under its epoch, which the store checks in the commit's own transaction (R13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// A single node (SQLite, or PostgreSQL in the store's own tests).
    Single,
    /// The leader of a cluster, under this epoch.
    Epoch(i64),
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        match err {
            sqlx::migrate::MigrateError::VersionMissing(version) => StoreError::Corrupt(format!(
                "the database has migration {version}, which this tallyd does not know; run a newer tallyd"
            )),
            err => StoreError::Migrate(err.to_string()),
        }
    }
}

/// Why a `database` setting names no backend this tallyd has. The URL itself is never in
/// the text: it may hold a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error(
        "the postgres:// URL does not read; give it as postgres://user:password@host:port/database"
    )]
    BadPostgresUrl,
    #[error(
        "the sqlite:// URL names no file; give its path, as in sqlite:///var/lib/tally/tally.db"
    )]
    NoPath,
    #[error("must be a sqlite:// or postgres:// URL, or absent for SQLite in data_dir")]
    UnknownScheme,
}

/// The backend a `database` setting names, with what it needs to open it. The one place
/// where URL schemes are read: both [`open`] and the configuration check use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// SQLite in this file.
    Sqlite(PathBuf),
    /// PostgreSQL at this `postgres://` or `postgresql://` URL.
    Postgres(String),
}

impl Backend {
    /// The backend for `database`, or SQLite in `data_dir` when it names none.
    pub fn from_url(database: Option<&str>, data_dir: &Path) -> Result<Backend, UrlError> {
        let Some(url) = database else {
            return Ok(Backend::Sqlite(data_dir.join("tally.db")));
        };
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(UrlError::NoPath);
            }
            return Ok(Backend::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Backend::Postgres(url.to_owned()));
        }
        Err(UrlError::UnknownScheme)
    }
}

/// Whether a `postgres://` URL reads as connection options, checked without connecting
/// (`tallyd check-config`, and a start or reload before it opens anything). The error never
/// holds the URL: it may hold a password.
pub fn check_postgres_url(url: &str) -> Result<(), UrlError> {
    <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(url)
        .map(drop)
        .map_err(|_| UrlError::BadPostgresUrl)
}

/// What first-start initialisation created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The server id, made once and kept.
    pub server_id: String,
    /// True when this call created the owner account.
    pub owner_created: bool,
}

/// The durable state of a server.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`, for `tally server info`.
    fn backend(&self) -> &'static str;

    /// Makes the server id and, when there is none, the owner account with this token hash.
    async fn initialize(
        &self,
        owner: &str,
        owner_token_hash: &[u8; 32],
        now: i64,
    ) -> Result<Identity, StoreError>;

    /// Adds another token for the owner (`tallyd owner-token`), and with `revoke_others`
    /// deletes every other owner token. Returns the owner's username and how many tokens
    /// were revoked.
    async fn add_owner_token(
        &self,
        token_hash: &[u8; 32],
        now: i64,
        revoke_others: bool,
    ) -> Result<(String, u64), StoreError>;

    /// The token with this hash, if the store holds it.
    async fn find_token(&self, token_hash: &[u8; 32]) -> Result<Option<Token>, StoreError>;

    /// Everything the pool is rebuilt from.
    async fn load(&self) -> Result<Snapshot, StoreError>;

    /// Writes a batch in one transaction: all of it or none. Under [`Fence::Epoch`] the
    /// transaction first checks that the epoch is still current (`ha::check_epoch`) and
    /// fails with [`StoreError::Fenced`] when it is not; a store that holds no cluster
    /// refuses such a commit.
    async fn commit(&self, batch: &Batch, fence: Fence) -> Result<(), StoreError>;

    /// One page of the audit events matching the query, newest first (keyset on the audit
    /// row id): only events older than the cursor `before`, at most `query.limit` of them
    /// (1000 when absent), and the page ends early once its events pass `max_bytes` (by
    /// [`event_size`]; the first event always fits). `next` is set exactly when more
    /// events match.
    async fn audit(
        &self,
        query: &AuditQuery,
        before: Option<u64>,
        max_bytes: usize,
    ) -> Result<AuditPage, StoreError>;

    /// Marks notifications delivered: settled, every sink configured having delivered
    /// them or given up.
    async fn mark_delivered(&self, ids: &[i64], at: i64) -> Result<(), StoreError>;

    /// Notifications not yet settled whose outbox id is above `after`, oldest first, at
    /// most `limit`: the pages the notifier walks.
    async fn unsettled_notifications(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Notification)>, StoreError>;

    /// The deliveries recorded for these outbox ids, to every sink.
    async fn deliveries(&self, ids: &[i64]) -> Result<Vec<Delivery>, StoreError>;

    /// Records where the delivery of one notification to one sink stands (an attempt that
    /// failed, its delivery, or giving it up), replacing what was recorded before.
    async fn record_delivery(&self, delivery: &Delivery, now: i64) -> Result<(), StoreError>;

    /// How delivery stands: unsettled notifications, those some sink gave up on, and each
    /// sink's counts and latest error (`tally notify status`).
    async fn delivery_summary(&self) -> Result<DeliverySummary, StoreError>;

    /// Whether the database answers now: one trivial query (`/readyz`). The caller bounds
    /// how long it waits.
    async fn ping(&self) -> Result<(), StoreError>;

    /// What `report usage` reads, in one snapshot (SPEC §10): the rollup rows of the whole
    /// hours `[since, until)`, each feature's last state before `since`, the users with seat
    /// time per period of `by` (`periods`, as `core::report::periods` makes them) less
    /// those counted from open leases, and the leases open now. See
    /// `core::report::UsageData`.
    async fn usage_history(
        &self,
        feature: Option<&str>,
        since: i64,
        until: i64,
        by: tally_protocol::ReportPeriod,
        periods: &[crate::core::report::Period],
    ) -> Result<crate::core::report::UsageData, StoreError>;

    /// What `report users` reads, in one snapshot: the user rollups of `[since, until)`
    /// summed per feature and user, and the leases open now.
    async fn user_history(
        &self,
        feature: Option<&str>,
        since: i64,
        until: i64,
    ) -> Result<crate::core::report::UsersData, StoreError>;

    /// The credits consumed in `[since, until)` (granted consumptions only), summed per
    /// meter, user and whole UTC hour, of one meter or all: what `report usage` reads for
    /// meters (SPEC §11).
    async fn meter_hours(
        &self,
        meter: Option<&str>,
        since: i64,
        until: i64,
    ) -> Result<Vec<crate::core::report::MeterHour>, StoreError>;

    /// Deletes up to `limit` rollup rows per table from before `before` (`history.keep`),
    /// keeping each feature's last state before it; returns how many went.
    async fn prune_history(&self, before: i64, limit: u32) -> Result<u64, StoreError>;

    /// Closes connections cleanly (checkpointing SQLite's WAL).
    async fn close(&self);

    /// What the store does for a cluster, when several nodes share it (PostgreSQL).
    fn cluster(self: Arc<Self>) -> Option<Arc<dyn ClusterStore>> {
        None
    }
}

/// The delivery of one notification (by outbox id) to one sink (by its name), as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub outbox_id: i64,
    /// The sink's name as people read it (`log`, `email`, `webhook https://host/path`).
    pub sink: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (Unix milliseconds, the daemon's clock).
    pub next_at: i64,
    /// When it was delivered.
    pub delivered_at: Option<i64>,
    /// When the sink gave it up, after its last attempt.
    pub failed_at: Option<i64>,
    /// The error of the latest failed attempt.
    pub last_error: Option<String>,
}

impl Delivery {
    /// Whether nothing more is to be done for it: delivered or given up.
    pub fn is_done(&self) -> bool {
        self.delivered_at.is_some() || self.failed_at.is_some()
    }
}

/// One sink's deliveries, counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkCounts {
    pub sink: String,
    pub delivered: u64,
    pub failed: u64,
    /// The error of its latest failed attempt, if any.
    pub last_error: Option<String>,
}

/// How delivery stands over the whole outbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliverySummary {
    /// Notifications not yet settled.
    pub pending: u64,
    /// Notifications some sink gave up on.
    pub failed: u64,
    /// Every sink with a delivery recorded, by name.
    pub sinks: Vec<SinkCounts>,
}

/// The cluster's identity (SPEC §7, "Joining"): made by the first node, adopted by every
/// other. The server id is the store's (`initialize`).
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterIdentity {
    /// The Ed25519 borrow signing key, PKCS#8.
    pub signing_key: Vec<u8>,
    /// The private CA, PEM certificate and key; `None` when the admin's certificates are used
    /// (`tls.cert`), whose CA key tallyd does not have.
    pub ca: Option<(String, String)>,
}

impl std::fmt::Debug for ClusterIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterIdentity")
            .field("ca", &self.ca.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

/// A node as the database knows it, for `tally server nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub id: String,
    pub address: String,
    /// Whether its leadership is current in the database's clock.
    pub leads: bool,
    /// The current epoch (the leader's, for every node).
    pub epoch: i64,
    /// Its last heartbeat, Unix milliseconds.
    pub last_seen: i64,
}

/// What a store shared by the nodes of a cluster adds to [`Store`].
#[async_trait]
pub trait ClusterStore: Send + Sync + 'static {
    /// Where the database is, for the elector's own connections.
    fn connect_options(&self) -> PgConnectOptions;

    /// Stores `candidate` as the cluster's identity unless one is stored already; returns
    /// the stored one, which every node uses.
    async fn adopt_identity(
        &self,
        candidate: ClusterIdentity,
    ) -> Result<ClusterIdentity, StoreError>;

    /// Every node that has run, with the leadership as the database has it now.
    async fn nodes(&self) -> Result<Vec<NodeRow>, StoreError>;

    /// The account a token signs in as, and whether it is active: a standby signs clients
    /// in from the database, since it holds no pool.
    async fn account(&self, token_hash: &[u8; 32]) -> Result<Option<(SignedIn, bool)>, StoreError>;
}

/// About how many bytes an audit event takes in an answer: its text plus room for the
/// rest, so that pages can be bounded before they are encoded.
pub fn event_size(event: &AuditEvent) -> usize {
    32 + event.actor.len()
        + event.action.len()
        + event.subject.len()
        + event.feature.as_ref().map_or(0, String::len)
        + event.outcome.len()
        + event.reason.len()
}

/// Opens the store that `database` names, or SQLite in `data_dir` when it names none, and
/// brings its schema up to date.
pub async fn open(database: Option<&str>, data_dir: &Path) -> Result<Box<dyn Store>, StoreError> {
    match Backend::from_url(database, data_dir)? {
        Backend::Sqlite(path) => Ok(Box::new(SqliteStore::open(&path).await?)),
        Backend::Postgres(url) => Ok(Box::new(PgStore::open(&url).await?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_scheme_picks_the_backend() {
        let dir = Path::new("/var/lib/tally");
        assert_eq!(
            Backend::from_url(None, dir),
            Ok(Backend::Sqlite(dir.join("tally.db")))
        );
        assert_eq!(
            Backend::from_url(Some("sqlite:///srv/t.db"), dir),
            Ok(Backend::Sqlite("/srv/t.db".into()))
        );
        assert_eq!(
            Backend::from_url(Some("sqlite://"), dir),
            Err(UrlError::NoPath)
        );
        for url in ["postgres://u:pw@h/db", "postgresql://u:pw@h/db"] {
            assert_eq!(
                Backend::from_url(Some(url), dir),
                Ok(Backend::Postgres(url.into()))
            );
        }
        for url in ["/srv/t.db", "mysql://u:pw@h/db", "SQLITE:///t.db", ""] {
            let err = Backend::from_url(Some(url), dir).unwrap_err();
            assert_eq!(err, UrlError::UnknownScheme);
            assert!(!err.to_string().contains("pw"));
        }
    }
}
