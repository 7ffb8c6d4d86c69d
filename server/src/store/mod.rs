//! Durable storage behind one trait, so that callers never know which database they use.
//!
//! A store holds the pool's durable state ([`Snapshot`]), applies the engine's group commits
//! ([`Batch`]) atomically, and answers token look-ups. SQLite is the embedded default;
//! the backend is chosen by the URL scheme of `database`.

mod sqlite;

use std::path::Path;

use async_trait::async_trait;
use tally_protocol::{AuditEvent, AuditPage, AuditQuery};

use crate::core::{Batch, Notification, Snapshot, Token};

pub use sqlite::SqliteStore;

/// A store failure. Its text is for the log only: peers get `internal`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the database holds a value this version cannot read: {0}")]
    Corrupt(String),
    #[error("unsupported database URL {0:?}: use a path, sqlite://PATH or (later) postgres://")]
    UnsupportedUrl(String),
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
/// brings its schema up to date.
pub async fn open(database: Option<&str>, data_dir: &Path) -> Result<Box<dyn Store>, StoreError> {
    match database {
        None => Ok(Box::new(
            SqliteStore::open(&data_dir.join("tally.db")).await?,
        )),
        Some(url) if url.starts_with("sqlite://") => Ok(Box::new(
            SqliteStore::open(Path::new(&url["sqlite://".len()..])).await?,
        )),
        Some(url) => Err(StoreError::UnsupportedUrl(url.to_string())),
    }
}
