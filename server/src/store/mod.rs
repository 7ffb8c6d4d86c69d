//! Durable storage behind one trait, so that callers never know which database they use.
//!
//! A store holds the pool's durable state ([`Snapshot`]), applies the engine's group commits
//! ([`Batch`]) atomically, and answers token look-ups. SQLite is the embedded default;
//! the backend is chosen by the URL scheme of `database` ([`Backend::from_url`]). `tallyd`
//! does not serve from PostgreSQL yet ([`Backend::for_serving`]).
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

use async_trait::async_trait;
use tally_protocol::{AuditEvent, AuditPage, AuditQuery};

use crate::core::{Batch, Notification, Snapshot, Token};

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
    #[error("PostgreSQL is not yet supported for serving: without leader election and fencing, two tallyd on one database would grant the same seats twice; remove `database` to use the embedded SQLite store")]
    PostgresNotSupported,
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

    /// The backend `tallyd` serves from, as [`Backend::from_url`], refusing PostgreSQL
    /// until leaders are elected and fenced: the one place of that refusal, used by [`open`]
    /// and by the configuration check.
    pub fn for_serving(database: Option<&str>, data_dir: &Path) -> Result<Backend, UrlError> {
        match Backend::from_url(database, data_dir)? {
            Backend::Postgres(_) => Err(UrlError::PostgresNotSupported),
            backend => Ok(backend),
        }
    }
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

    /// Writes a batch in one transaction: all of it or none.
    async fn commit(&self, batch: &Batch) -> Result<(), StoreError>;

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

    /// Notifications not yet delivered, oldest first, with their outbox ids.
    async fn pending_notifications(
        &self,
        limit: u32,
    ) -> Result<Vec<(i64, Notification)>, StoreError>;

    /// Marks notifications delivered.
    async fn mark_delivered(&self, ids: &[i64], at: i64) -> Result<(), StoreError>;

    /// Closes connections cleanly (checkpointing SQLite's WAL).
    async fn close(&self);
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
/// brings its schema up to date. PostgreSQL is refused ([`Backend::for_serving`]).
pub async fn open(database: Option<&str>, data_dir: &Path) -> Result<Box<dyn Store>, StoreError> {
    match Backend::for_serving(database, data_dir)? {
        Backend::Sqlite(path) => Ok(Box::new(SqliteStore::open(&path).await?)),
        Backend::Postgres(_) => Err(UrlError::PostgresNotSupported.into()),
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
            let err = Backend::for_serving(Some(url), dir).unwrap_err();
            assert_eq!(err, UrlError::PostgresNotSupported);
            assert!(err.to_string().contains("not yet supported for serving"));
            assert!(!err.to_string().contains("pw"));
        }
        assert_eq!(
            Backend::for_serving(Some("sqlite:///srv/t.db"), dir),
            Ok(Backend::Sqlite("/srv/t.db".into()))
        );
        for url in ["/srv/t.db", "mysql://u:pw@h/db", "SQLITE:///t.db", ""] {
            let err = Backend::from_url(Some(url), dir).unwrap_err();
            assert_eq!(err, UrlError::UnknownScheme);
            assert!(!err.to_string().contains("pw"));
        }
    }

    /// `tallyd` refuses to start on a PostgreSQL URL, whatever the database holds, before
    /// touching it: nothing listens at this address.
    #[tokio::test]
    async fn opening_a_postgres_url_to_serve_is_refused() {
        let err = open(
            Some("postgres://u:secret@127.0.0.1:1/db"),
            Path::new("/nonexistent"),
        )
        .await
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("not yet supported for serving"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }
}
