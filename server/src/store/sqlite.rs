//! The embedded SQLite store: WAL journal, `synchronous = FULL`, so a commit that returned
//! survives a crash or power loss. Migrations are sqlx's, from `server/migrations/sqlite/`.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::{Migrate, Migrator};
use sqlx::query_builder::Separated;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Encode, QueryBuilder, Sqlite, SqliteConnection, SqlitePool, Type};
use tally_protocol::{AuditPage, AuditQuery, LeaseSource};

use super::rows::{
    AssignmentRow, ConsumptionDbRow, EntitlementRow, GrantDbRow, GroupRow, LoadedLeases,
    LoadedRows, PurchaseRow, RequiresRow, RuleRow, TokenRow, UserRow,
};
use super::writer::LeaseRows;
use super::{Delivery, DeliverySummary, Fence, Identity, Store, StoreError};
use crate::core::{token_id, Batch, Lease, Notification, Snapshot, Token};
use crate::ha::Fenced;

/// The schema's migrations, embedded at build time; a file's number is its version.
static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// The last version the runner of earlier versions applied: any later one in its
/// `schema_version` table came from a newer tallyd of that time.
const LAST_LEGACY_VERSION: i64 = 5;

/// Rows per multi-row statement: at 16 columns, well under SQLite's limit of 32,766 bound
/// parameters.
const CHUNK: usize = 1000;

/// The two-argument maximum in SQL.
const GREATEST: &str = "MAX";

/// The two-argument minimum in SQL.
const LEAST: &str = "MIN";

/// The SQLite store.
pub struct SqliteStore {
    pool: SqlitePool,
    /// Where each lease's row is. Rows are numbered in the order leases are granted, so a
    /// commit appends to the end of the table instead of writing pages all over it.
    rows: Mutex<LeaseRows>,
}

impl SqliteStore {
    /// How the store opens the database at `path` (creating it if missing): WAL journal,
    /// `synchronous = FULL`, foreign keys on. Public so that `tally-bench` can time a
    /// commit on a database opened exactly this way.
    pub fn connect_options(path: &Path) -> Result<SqliteConnectOptions, StoreError> {
        Ok(SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10)))
    }

    /// Opens (creating if missing) the database at `path` and migrates it.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = Self::connect_options(path)?;
        // A connection to a file in this process cannot go stale: no ping before each use,
        // which would cost every commit one more trip to sqlx's worker thread.
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        let migrated = match adopt_schema_version(&pool).await {
            Ok(()) => MIGRATOR.run(&pool).await.map_err(StoreError::from),
            Err(err) => Err(err),
        };
        if let Err(err) = migrated {
            // Let go of the file at once: a refused database is left as it was.
            pool.close().await;
            return Err(err);
        }
        Ok(Self {
            pool,
            rows: Mutex::new(LeaseRows::default()),
        })
    }
}

/// Hands a database migrated by the runner of earlier versions over to sqlx's migrator.
///
/// That runner recorded the versions it applied in `schema_version`; when that table is
/// there and sqlx's `_sqlx_migrations` is not, this records the same versions in sqlx's
/// table (with the checksums of the embedded files, which are the files that runner
/// applied) and drops `schema_version`, all in one transaction. The migrator then applies
/// only the versions after them.
async fn adopt_schema_version(pool: &SqlitePool) -> Result<(), StoreError> {
    // Takes the write lock first: a read that turned into a write could not wait for it.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('schema_version', '_sqlx_migrations')",
    )
    .fetch_all(&mut *tx)
    .await?;
    if tables != ["schema_version"] {
        return Ok(());
    }
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT DISTINCT version FROM schema_version ORDER BY version")
            .fetch_all(&mut *tx)
            .await?;
    tx.ensure_migrations_table().await?;
    for version in applied {
        let known = MIGRATOR
            .iter()
            .find(|m| m.version == version && version <= LAST_LEGACY_VERSION);
        let Some(migration) = known else {
            return Err(StoreError::Corrupt(format!(
                "schema version {version} is not one this tallyd knows; run a newer tallyd"
            )));
        };
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (?, ?, TRUE, ?, 0)",
        )
        .bind(version)
        .bind(&*migration.description)
        .bind(&*migration.checksum)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("DROP TABLE schema_version")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!("the database's schema versions are now kept by sqlx's migrator");
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn initialize(
        &self,
        owner: &str,
        owner_token_hash: &[u8; 32],
        now: i64,
    ) -> Result<Identity, StoreError> {
        let mut tx = self.pool.begin().await?;
        let existing: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'server_id'")
                .fetch_optional(&mut *tx)
                .await?;
        let server_id = match existing {
            Some(id) => id,
            None => {
                let id = hex::encode(rand::random::<[u8; 16]>());
                sqlx::query("INSERT INTO meta (key, value) VALUES ('server_id', ?)")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                id
            }
        };
        let owners: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = 'owner'")
            .fetch_one(&mut *tx)
            .await?;
        let owner_created = owners == 0;
        if owner_created {
            let user_id: i64 = sqlx::query_scalar(
                "INSERT INTO users (username, name, role, state, created_at) VALUES (?, 'Owner', 'owner', 'active', ?) RETURNING id",
            )
            .bind(owner)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            insert_token(&mut tx, owner_token_hash, user_id, "first", now).await?;
            sqlx::query(
                "INSERT INTO meta (key, value) VALUES ('next_user_id', ?) ON CONFLICT (key) DO UPDATE SET value = MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
            )
            .bind((user_id + 1).to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Identity {
            server_id,
            owner_created,
        })
    }

    async fn add_owner_token(
        &self,
        token_hash: &[u8; 32],
        now: i64,
        revoke_others: bool,
    ) -> Result<(String, u64), StoreError> {
        let mut tx = self.pool.begin().await?;
        let added = add_owner_token_in(&mut tx, token_hash, now, revoke_others).await?;
        tx.commit().await?;
        Ok(added)
    }

    async fn find_token(&self, token_hash: &[u8; 32]) -> Result<Option<Token>, StoreError> {
        let row: Option<TokenRow> = sqlx::query_as("SELECT * FROM tokens WHERE hash = ?")
            .bind(&token_hash[..])
            .fetch_optional(&self.pool)
            .await?;
        row.map(Token::try_from).transpose()
    }

    async fn load(&self) -> Result<Snapshot, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let entitlements: Vec<EntitlementRow> =
            sqlx::query_as("SELECT * FROM entitlements ORDER BY id")
                .fetch_all(&mut *conn)
                .await?;
        let leases = LoadedLeases::read(&mut *conn).await?;
        let users: Vec<UserRow> = sqlx::query_as("SELECT * FROM users ORDER BY username")
            .fetch_all(&mut *conn)
            .await?;
        let assignments: Vec<AssignmentRow> =
            sqlx::query_as("SELECT * FROM assignments ORDER BY id")
                .fetch_all(&mut *conn)
                .await?;
        let tokens: Vec<TokenRow> = sqlx::query_as("SELECT * FROM tokens ORDER BY id")
            .fetch_all(&mut *conn)
            .await?;
        let requires: Vec<RequiresRow> = sqlx::query_as(
            "SELECT feature, requires FROM feature_requires ORDER BY feature, requires",
        )
        .fetch_all(&mut *conn)
        .await?;
        let groups: Vec<GroupRow> =
            sqlx::query_as("SELECT name, members, created_at FROM policy_groups ORDER BY name")
                .fetch_all(&mut *conn)
                .await?;
        let rules: Vec<RuleRow> = sqlx::query_as(
            "SELECT id, feature, kind, seats, group_name, each, created_at FROM policy_rules ORDER BY id",
        )
        .fetch_all(&mut *conn)
        .await?;
        let marks: Vec<(String, i64)> = sqlx::query_as("SELECT key, at FROM notify_marks")
            .fetch_all(&mut *conn)
            .await?;
        let purchases: Vec<PurchaseRow> =
            sqlx::query_as("SELECT * FROM credit_purchases ORDER BY id")
                .fetch_all(&mut *conn)
                .await?;
        let grants: Vec<GrantDbRow> =
            sqlx::query_as("SELECT * FROM credit_grants ORDER BY user_id, meter")
                .fetch_all(&mut *conn)
                .await?;
        // The answers retries may still need: those of the last `ANSWER_KEEP_MS` before the
        // latest consumption (the pool keeps those of the last `ANSWER_KEEP_MS` before now).
        let consumptions: Vec<ConsumptionDbRow> = sqlx::query_as(&format!(
            "SELECT * FROM credit_consumptions WHERE at >= (SELECT COALESCE(MAX(at), 0) FROM credit_consumptions) - {} ORDER BY at, user_id, request_id",
            crate::core::credits::ANSWER_KEEP_MS
        ))
        .fetch_all(&mut *conn)
        .await?;
        let meta: HashMap<String, String> = sqlx::query_as("SELECT key, value FROM meta")
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect();
        let (snapshot, rows) = LoadedRows {
            entitlements,
            leases,
            users,
            assignments,
            tokens,
            requires,
            groups,
            rules,
            meta,
            marks,
            purchases,
            grants,
            consumptions,
        }
        .into_snapshot()?;
        *self.rows.lock().expect("lease rows lock") = rows;
        Ok(snapshot)
    }

    async fn audit(
        &self,
        query: &AuditQuery,
        before: Option<u64>,
        max_bytes: usize,
    ) -> Result<AuditPage, StoreError> {
        read_audit_page(&self.pool, query, before, max_bytes).await
    }

    async fn unsettled_notifications(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Notification)>, StoreError> {
        read_pending(&self.pool, after, limit).await
    }

    async fn deliveries(&self, ids: &[i64]) -> Result<Vec<Delivery>, StoreError> {
        read_deliveries(&self.pool, ids).await
    }

    async fn record_delivery(&self, delivery: &Delivery, now: i64) -> Result<(), StoreError> {
        write_delivery(&self.pool, delivery, now).await
    }

    async fn delivery_summary(&self) -> Result<DeliverySummary, StoreError> {
        read_delivery_summary(&self.pool).await
    }

    async fn usage_history(
        &self,
        feature: Option<&str>,
        since: i64,
        until: i64,
        by: tally_protocol::ReportPeriod,
        periods: &[crate::core::report::Period],
    ) -> Result<crate::core::report::UsageData, StoreError> {
        // One read transaction: the rollups and the open leases of the same commit.
        let mut tx = self.pool.begin().await?;
        let data = read_usage(&mut tx, feature, since, until, by, periods).await?;
        tx.commit().await?;
        Ok(data)
    }

    async fn user_history(
        &self,
        feature: Option<&str>,
        since: i64,
        until: i64,
    ) -> Result<crate::core::report::UsersData, StoreError> {
        let mut tx = self.pool.begin().await?;
        let data = read_users(&mut tx, feature, since, until).await?;
        tx.commit().await?;
        Ok(data)
    }

    async fn meter_hours(
        &self,
        meter: Option<&str>,
        since: i64,
        until: i64,
    ) -> Result<Vec<crate::core::report::MeterHour>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        read_meter_hours(&mut conn, meter, since, until).await
    }

    async fn prune_history(&self, before: i64, limit: u32) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let deleted = prune_rows(&mut tx, before, i64::from(limit)).await?;
        tx.commit().await?;
        Ok(deleted)
    }

    async fn mark_delivered(&self, ids: &[i64], at: i64) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        // `at` is an integer, so it can be written into the statement.
        let head = format!("UPDATE outbox SET delivered_at = {at} WHERE id IN (");
        where_in(&mut conn, &head, ids, ")").await
    }

    async fn commit(&self, batch: &Batch, fence: Fence) -> Result<(), StoreError> {
        if fence != Fence::Single {
            // SQLite is one node's store: nothing else can lead on it.
            return Err(Fenced::NoLeader.into());
        }
        // Row numbers for this batch, taken for good only once the transaction commits.
        let plan = self.rows.lock().expect("lease rows lock").plan(batch);
        let mut tx = self.pool.begin().await?;
        write_batch(&mut tx, batch, &plan.added, &plan.removed).await?;
        tx.commit().await?;
        self.rows
            .lock()
            .expect("lease rows lock")
            .committed(batch, plan);
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

super::writer::batch_writer!(Sqlite, SqliteConnection);

#[cfg(test)]
mod tests {
    use tally_protocol::LeaseId;

    use super::*;

    #[tokio::test]
    async fn sqlite_keeps_the_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        crate::store::contract::contract(&store).await;
    }

    /// Reopening applies no migration twice and finds everything where it was.
    #[tokio::test]
    async fn reopening_keeps_the_data_and_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let identity = store
            .initialize("owner@localhost", &[1; 32], 0)
            .await
            .unwrap();
        let before = store.load().await.unwrap();
        store.close().await;
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.load().await.unwrap(), before);
        assert!(store.find_token(&[1; 32]).await.unwrap().is_some());
        let again = store
            .initialize("owner@localhost", &[2; 32], 0)
            .await
            .unwrap();
        assert_eq!(again.server_id, identity.server_id);
        let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(applied, MIGRATOR.iter().count() as i64);
    }

    #[tokio::test]
    async fn owner_tokens_need_an_owner() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        let err = store
            .add_owner_token(&[1; 32], 0, false)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no owner account"), "{err}");
    }

    /// The migrations as the runner of earlier versions applied them: in order, in one
    /// transaction, each recorded in `schema_version`.
    const LEGACY: &[&str] = &[
        include_str!("../../migrations/sqlite/0001_init.sql"),
        include_str!("../../migrations/sqlite/0002_assignments.sql"),
        include_str!("../../migrations/sqlite/0003_borrow.sql"),
        include_str!("../../migrations/sqlite/0004_lease_rows.sql"),
        include_str!("../../migrations/sqlite/0005_tokens.sql"),
    ];

    /// A database made by the earlier runner up to `version`, then `data` run on it.
    async fn legacy_database(path: &Path, version: usize, data: &str) {
        let options = SqliteConnectOptions::from_str("sqlite://")
            .unwrap()
            .filename(path)
            .create_if_missing(true)
            .foreign_keys(true);
        let pool = SqlitePool::connect_with(options).await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            .execute(&mut *tx)
            .await
            .unwrap();
        for (i, sql) in LEGACY.iter().enumerate().take(version) {
            sqlx::raw_sql(sql).execute(&mut *tx).await.unwrap();
            sqlx::query("INSERT INTO schema_version (version) VALUES (?)")
                .bind(i as i64 + 1)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        sqlx::raw_sql(data).execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        pool.close().await;
    }

    async fn applied_migrations(store: &SqliteStore) -> Vec<(i64, Vec<u8>)> {
        sqlx::query_as(
            "SELECT version, checksum FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap()
    }

    /// A data directory of an earlier version, at the newest schema: sqlx's migrator takes
    /// over its versions (with the files' checksums), applies nothing again, and the data
    /// reads as before, now and after a restart.
    #[tokio::test]
    async fn a_database_of_the_earlier_runner_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let hash = hex::encode([7u8; 32]);
        legacy_database(
            &path,
            5,
            &format!(
                "INSERT INTO meta (key, value) VALUES ('server_id', 'abc');
                 UPDATE meta SET value = '5' WHERE key = 'next_user_id';
                 INSERT INTO users (id, username, name, role, state, created_at)
                     VALUES (4, 'owner@localhost', 'Owner', 'owner', 'active', 0);
                 INSERT INTO tokens (id, hash, user_id, label, created_at)
                     VALUES ('{}', X'{hash}', 4, 'first', 0);",
                token_id(&[7; 32])
            ),
        )
        .await;
        let store = SqliteStore::open(&path).await.unwrap();
        let expected: Vec<(i64, Vec<u8>)> = MIGRATOR
            .iter()
            .map(|m| (m.version, m.checksum.to_vec()))
            .collect();
        assert_eq!(applied_migrations(&store).await, expected);
        let legacy: Option<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE name = 'schema_version'")
                .fetch_optional(&store.pool)
                .await
                .unwrap();
        assert_eq!(legacy, None, "schema_version is dropped");
        let identity = store.initialize("x@y", &[8; 32], 1).await.unwrap();
        assert_eq!(identity.server_id, "abc");
        assert!(!identity.owner_created);
        let snapshot = store.load().await.unwrap();
        assert_eq!(snapshot.next_user_id, 5);
        assert_eq!(snapshot.users.len(), 1);
        assert_eq!(store.find_token(&[7; 32]).await.unwrap().unwrap().user, 4);
        store.close().await;
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.load().await.unwrap(), snapshot);
        assert_eq!(applied_migrations(&store).await, expected);
    }

    /// A data directory of an older schema: the versions it has are taken over, and the
    /// migrator applies the rest, converting its rows.
    #[tokio::test]
    async fn an_older_schema_is_taken_over_and_brought_up_to_date() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let hash = hex::encode([7u8; 32]);
        legacy_database(
            &path,
            3,
            &format!(
                "INSERT INTO users (id, username, name, role, state, created_at)
                     VALUES (3, 'owner@localhost', 'Owner', 'owner', 'active', 0);
                 INSERT INTO tokens (hash, user_id, created_at) VALUES (X'{hash}', 3, 0);
                 INSERT INTO leases (id, feature, seats, username, host, client_id, request_id,
                                     kind, granted_at, expires_at, entitlement)
                     VALUES (X'{}', 'vray', 1, 'owner@localhost', 'ws', X'{}', X'{}',
                             'online', 5, 65, NULL);",
                hex::encode([1u8; 16]),
                hex::encode([2u8; 16]),
                hex::encode([3u8; 16]),
            ),
        )
        .await;
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(
            applied_migrations(&store)
                .await
                .iter()
                .map(|m| m.0)
                .collect::<Vec<_>>(),
            MIGRATOR.iter().map(|m| m.version).collect::<Vec<_>>(),
            "every migration, in order"
        );
        let token = store.find_token(&[7; 32]).await.unwrap().unwrap();
        assert_eq!((token.id, token.user), (token_id(&[7; 32]), 3));
        let snapshot = store.load().await.unwrap();
        assert_eq!(snapshot.next_user_id, 4, "version 5 starts the id counter");
        assert_eq!(snapshot.leases.len(), 1);
        assert_eq!(snapshot.leases[0].id, LeaseId([1; 16]));
        assert_eq!(snapshot.leases[0].client.0, [2; 16]);
        assert_eq!(
            snapshot.leases[0].peer,
            crate::core::Peer::default(),
            "a lease of an older schema has no program, pid or address"
        );
    }

    /// A database that an earlier runner of a newer tallyd migrated further is refused,
    /// and left as it was.
    #[tokio::test]
    async fn a_schema_version_this_tallyd_does_not_know_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        legacy_database(&path, 5, "INSERT INTO schema_version (version) VALUES (6);").await;
        let err = SqliteStore::open(&path).await.err().unwrap().to_string();
        assert!(err.contains("schema version 6"), "{err}");
        assert!(err.contains("newer tallyd"), "{err}");
        let err = SqliteStore::open(&path).await.err().unwrap().to_string();
        assert!(
            err.contains("schema version 6"),
            "the refusal changed nothing: {err}"
        );
    }

    /// A migration applied by sqlx that these files do not have is refused likewise.
    #[tokio::test]
    async fn a_migration_this_tallyd_does_not_know_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = SqliteStore::open(&path).await.unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99, 'later', TRUE, X'00', 0)",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        store.close().await;
        let err = SqliteStore::open(&path).await.err().unwrap().to_string();
        assert!(err.contains("migration 99"), "{err}");
        assert!(err.contains("newer tallyd"), "{err}");
    }
}
