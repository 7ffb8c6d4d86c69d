//! The PostgreSQL store, for several nodes on one database (SPEC §7). Migrations are
//! sqlx's, from `server/migrations/postgres/`; sqlx's migrator holds a session-level advisory
//! lock (`pg_advisory_lock`, keyed on the database's name) while it checks and applies them,
//! so nodes starting together apply each migration once, one after the other. Each
//! migration runs in its own transaction with the row recording it.
//!
//! Rows are decoded through the shared structs of `rows`, and a batch is written by the
//! shared writer (`writer.rs`), as SQLite's is: multi-row statements of at most [`CHUNK`]
//! rows, leases in grant order (`seq`) with the id-to-row map in memory.
//!
//! Several nodes serve from one database, one leader at a time (`crate::ha`): every commit of
//! the leader runs [`check_epoch`] first in its transaction ([`Fence::Epoch`]), and the store
//! also keeps the cluster's identity and answers a standby's questions ([`ClusterStore`]).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::query_builder::Separated;
use sqlx::{Encode, PgConnection, PgPool, Postgres, QueryBuilder, Type};
use tally_protocol::{AuditPage, AuditQuery, LeaseSource};

use super::rows::{
    AssignmentRow, ConsumptionDbRow, EntitlementRow, GrantDbRow, GroupRow, LoadedLeases,
    LoadedRows, PurchaseRow, RequiresRow, RuleRow, TokenRow, UserRow,
};
use super::writer::LeaseRows;
use super::{
    ClusterIdentity, ClusterStore, Delivery, DeliverySummary, Fence, Identity, NodeRow, Store,
    StoreError,
};
use crate::core::{token_id, Batch, Lease, Notification, SignedIn, Snapshot, Token};
use crate::ha::check_epoch;

/// The schema's migrations, embedded at build time; a file's number is its version.
static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// Rows per multi-row statement: at 16 columns, well under PostgreSQL's limit of 65,535
/// bound parameters.
const CHUNK: usize = 1000;

/// The two-argument maximum in SQL.
const GREATEST: &str = "GREATEST";

/// The two-argument minimum in SQL.
const LEAST: &str = "LEAST";

/// How long the database lets a transaction of this store sit idle before it ends the
/// session (see [`PgStore::open`]).
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(1);

/// The key of the transaction-level advisory lock that first-start initialisation and
/// `tallyd owner-token` hold, so that nodes starting together make one server id and one
/// owner.
const INITIALIZE_LOCK: i64 = 0x7461_6c6c_7969_6e69; // "tallyini"

/// The PostgreSQL store.
pub struct PgStore {
    pool: PgPool,
    /// Where the database is, for the elector's own connections.
    options: PgConnectOptions,
    /// Where each lease's row is. Rows are numbered in the order leases are granted, so a
    /// commit appends to the end of the table instead of writing all over it.
    rows: Mutex<LeaseRows>,
}

impl PgStore {
    /// Connects to the database `url` names (`postgres://` or `postgresql://`) and migrates
    /// it. The database must exist; the URL is never in an error's text (it may hold a
    /// password).
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|err| match err {
            sqlx::Error::Configuration(_) => StoreError::Url(super::UrlError::BadPostgresUrl),
            err => StoreError::Database(err),
        })?;
        // A commit's transaction is never idle between its statements for longer than a
        // round trip. When the node's link to the database is cut in the middle of one, the
        // server would otherwise keep that session open (and its share lock on the leader
        // row, which a takeover needs) until TCP keepalives notice, hours later; with this
        // limit the server ends it after a second, so a standby can take over on time.
        let options = options.options([(
            "idle_in_transaction_session_timeout",
            format!("{}ms", IDLE_IN_TRANSACTION.as_millis()),
        )]);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        if let Err(err) = MIGRATOR.run(&pool).await {
            pool.close().await;
            return Err(err.into());
        }
        Ok(Self {
            pool,
            options,
            rows: Mutex::new(LeaseRows::default()),
        })
    }
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn initialize(
        &self,
        owner: &str,
        owner_token_hash: &[u8; 32],
        now: i64,
    ) -> Result<Identity, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(INITIALIZE_LOCK)
            .execute(&mut *tx)
            .await?;
        let existing: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'server_id'")
                .fetch_optional(&mut *tx)
                .await?;
        let server_id = match existing {
            Some(id) => id,
            None => {
                let id = hex::encode(rand::random::<[u8; 16]>());
                sqlx::query("INSERT INTO meta (key, value) VALUES ('server_id', $1)")
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
            // The next account id: past the counter and past every id in the table, so that
            // no id is ever used twice.
            let user_id: i64 = sqlx::query_scalar(
                "SELECT GREATEST(
                     COALESCE((SELECT value::BIGINT FROM meta WHERE key = 'next_user_id'), 1),
                     COALESCE((SELECT MAX(id) FROM users), 0) + 1)",
            )
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO users (id, username, name, role, state, created_at) VALUES ($1, $2, 'Owner', 'owner', 'active', $3)",
            )
            .bind(user_id)
            .bind(owner)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            insert_token(&mut tx, owner_token_hash, user_id, "first", now).await?;
            sqlx::query(
                "INSERT INTO meta (key, value) VALUES ('next_user_id', $1) ON CONFLICT (key) DO UPDATE SET value = GREATEST(meta.value::BIGINT, excluded.value::BIGINT)::TEXT",
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
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(INITIALIZE_LOCK)
            .execute(&mut *tx)
            .await?;
        let added = add_owner_token_in(&mut tx, token_hash, now, revoke_others).await?;
        tx.commit().await?;
        Ok(added)
    }

    async fn find_token(&self, token_hash: &[u8; 32]) -> Result<Option<Token>, StoreError> {
        let row: Option<TokenRow> = sqlx::query_as("SELECT * FROM tokens WHERE hash = $1")
            .bind(&token_hash[..])
            .fetch_optional(&self.pool)
            .await?;
        row.map(Token::try_from).transpose()
    }

    async fn load(&self) -> Result<Snapshot, StoreError> {
        // One snapshot of the database for every table, whatever commits meanwhile.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let entitlements: Vec<EntitlementRow> =
            sqlx::query_as("SELECT * FROM entitlements ORDER BY id")
                .fetch_all(&mut *tx)
                .await?;
        let leases = LoadedLeases::read(&mut *tx).await?;
        // Byte order, as the pool keeps its maps (and as SQLite's NOCASE orders the
        // lowercase names the core stores).
        let users: Vec<UserRow> =
            sqlx::query_as("SELECT * FROM users ORDER BY username COLLATE \"C\"")
                .fetch_all(&mut *tx)
                .await?;
        let assignments: Vec<AssignmentRow> =
            sqlx::query_as("SELECT * FROM assignments ORDER BY id")
                .fetch_all(&mut *tx)
                .await?;
        let tokens: Vec<TokenRow> =
            sqlx::query_as("SELECT * FROM tokens ORDER BY id COLLATE \"C\"")
                .fetch_all(&mut *tx)
                .await?;
        let requires: Vec<RequiresRow> = sqlx::query_as(
            "SELECT feature, requires FROM feature_requires ORDER BY feature COLLATE \"C\", requires COLLATE \"C\"",
        )
        .fetch_all(&mut *tx)
        .await?;
        let groups: Vec<GroupRow> = sqlx::query_as(
            "SELECT name, members, created_at FROM policy_groups ORDER BY name COLLATE \"C\"",
        )
        .fetch_all(&mut *tx)
        .await?;
        let rules: Vec<RuleRow> = sqlx::query_as(
            "SELECT id, feature, kind, seats, group_name, each, created_at FROM policy_rules ORDER BY id",
        )
        .fetch_all(&mut *tx)
        .await?;
        let marks: Vec<(String, i64)> = sqlx::query_as("SELECT key, at FROM notify_marks")
            .fetch_all(&mut *tx)
            .await?;
        let purchases: Vec<PurchaseRow> =
            sqlx::query_as("SELECT * FROM credit_purchases ORDER BY id")
                .fetch_all(&mut *tx)
                .await?;
        let grants: Vec<GrantDbRow> =
            sqlx::query_as("SELECT * FROM credit_grants ORDER BY user_id, meter COLLATE \"C\"")
                .fetch_all(&mut *tx)
                .await?;
        // The answers retries may still need: those of the last `ANSWER_KEEP_MS` before the
        // latest consumption (the pool keeps those of the last `ANSWER_KEEP_MS` before now).
        let consumptions: Vec<ConsumptionDbRow> = sqlx::query_as(&format!(
            "SELECT * FROM credit_consumptions WHERE at >= (SELECT COALESCE(MAX(at), 0) FROM credit_consumptions) - {} ORDER BY at, user_id, request_id",
            crate::core::credits::ANSWER_KEEP_MS
        ))
        .fetch_all(&mut *tx)
        .await?;
        let meta: HashMap<String, String> = sqlx::query_as("SELECT key, value FROM meta")
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
        tx.commit().await?;
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
        // One snapshot: the rollups and the open leases of the same commit.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
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
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
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
        // Row numbers for this batch, taken for good only once the transaction commits.
        let plan = self.rows.lock().expect("lease rows lock").plan(batch);
        let mut tx = self.pool.begin().await?;
        if let Fence::Epoch(epoch) = fence {
            // First, so that a takeover either waits for this transaction or fences it off.
            check_epoch(&mut tx, epoch).await?;
        }
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

    fn cluster(self: Arc<Self>) -> Option<Arc<dyn ClusterStore>> {
        Some(self)
    }
}

#[async_trait]
impl ClusterStore for PgStore {
    fn connect_options(&self) -> PgConnectOptions {
        self.options.clone()
    }

    async fn adopt_identity(
        &self,
        candidate: ClusterIdentity,
    ) -> Result<ClusterIdentity, StoreError> {
        let (ca_cert, ca_key) = candidate.ca.clone().unzip();
        // Nodes starting together: the first insert wins, every node reads the winner.
        sqlx::query(
            "INSERT INTO tally_cluster (id, signing_key, ca_cert, ca_key) VALUES (1, $1, $2, $3) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&candidate.signing_key)
        .bind(ca_cert)
        .bind(ca_key)
        .execute(&self.pool)
        .await?;
        let (signing_key, ca_cert, ca_key): (Vec<u8>, Option<String>, Option<String>) =
            sqlx::query_as("SELECT signing_key, ca_cert, ca_key FROM tally_cluster WHERE id = 1")
                .fetch_one(&self.pool)
                .await?;
        let ca = match (ca_cert, ca_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(StoreError::Corrupt(
                    "tally_cluster holds a CA certificate without its key, or a key without its certificate".into(),
                ))
            }
        };
        Ok(ClusterIdentity { signing_key, ca })
    }

    async fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        let rows: Vec<(String, String, bool, Option<i64>, i64)> = sqlx::query_as(
            "SELECT n.id, n.address,
                    COALESCE(l.node = n.id AND l.expires_at > now(), FALSE),
                    l.epoch,
                    (EXTRACT(EPOCH FROM n.last_seen) * 1000)::BIGINT
             FROM tally_nodes n LEFT JOIN tally_leader l ON l.id = 1
             ORDER BY n.id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, address, leads, epoch, last_seen)| NodeRow {
                id,
                address,
                leads,
                epoch: epoch.unwrap_or(0),
                last_seen,
            })
            .collect())
    }

    async fn account(&self, token_hash: &[u8; 32]) -> Result<Option<(SignedIn, bool)>, StoreError> {
        let row: Option<(String, i64, String, String, String)> = sqlx::query_as(
            "SELECT t.id, u.id, u.username, u.role, u.state
             FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.hash = $1",
        )
        .bind(&token_hash[..])
        .fetch_optional(&self.pool)
        .await?;
        let Some((token, user_id, username, role, state)) = row else {
            return Ok(None);
        };
        let role = tally_protocol::Role::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("role {role:?}")))?;
        let state = tally_protocol::UserState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("user state {state:?}")))?;
        let user_id = u64::try_from(user_id)
            .map_err(|_| StoreError::Corrupt(format!("user id {user_id}")))?;
        Ok(Some((
            SignedIn {
                user_id,
                username,
                role,
                token,
            },
            state == tally_protocol::UserState::Active,
        )))
    }
}

super::writer::batch_writer!(Postgres, PgConnection);

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::time::Instant;

    use sqlx::Connection;
    use tally_protocol::{ClientId, LeaseId, LeaseKind, RequestId};

    use super::*;

    /// Runs `body` with the URL of a database of its own, made for it on the server that
    /// `TALLY_TEST_POSTGRES` names and dropped afterwards, pass or fail. Without that
    /// variable the test is skipped, saying so.
    async fn with_database<F, Fut>(test: &str, body: F)
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Ok(url) = std::env::var("TALLY_TEST_POSTGRES") else {
            println!("{test}: skipped, TALLY_TEST_POSTGRES is not set");
            return;
        };
        let name = format!("tally_test_{}", hex::encode(rand::random::<[u8; 8]>()));
        let mut admin = PgConnection::connect(&url)
            .await
            .expect("connecting to TALLY_TEST_POSTGRES");
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let (base, params) = match url.split_once('?') {
            Some((base, params)) => (base, format!("?{params}")),
            None => (url.as_str(), String::new()),
        };
        let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
        let result = tokio::spawn(body(format!("{server}/{name}{params}"))).await;
        sqlx::raw_sql(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await
            .unwrap();
        if let Err(err) = result {
            std::panic::resume_unwind(err.into_panic());
        }
    }

    #[tokio::test]
    async fn postgres_keeps_the_store_contract() {
        with_database("postgres_keeps_the_store_contract", |url| async move {
            let store = PgStore::open(&url).await.unwrap();
            crate::store::contract::contract(&store).await;
            store.close().await;
        })
        .await;
    }

    /// Two nodes opening an empty database at the same moment: sqlx's migrator takes its
    /// advisory lock, so both open, the schema is made once, and initialisation makes one
    /// server id and one owner.
    #[tokio::test]
    async fn nodes_starting_together_make_one_schema_and_one_owner() {
        with_database(
            "nodes_starting_together_make_one_schema_and_one_owner",
            |url| async move {
                let (a, b) = tokio::join!(PgStore::open(&url), PgStore::open(&url));
                let (a, b) = (a.unwrap(), b.unwrap());
                let (x, y) = tokio::join!(
                    a.initialize("owner@localhost", &[1; 32], 0),
                    b.initialize("owner@localhost", &[2; 32], 0)
                );
                let (x, y) = (x.unwrap(), y.unwrap());
                assert_eq!(x.server_id, y.server_id);
                assert!(x.owner_created ^ y.owner_created, "{x:?} {y:?}");
                let applied: Vec<i64> =
                    sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
                        .fetch_all(&a.pool)
                        .await
                        .unwrap();
                let expected: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
                assert_eq!(applied, expected);
                let snapshot = a.load().await.unwrap();
                assert_eq!(snapshot.users.len(), 1);
                assert_eq!(snapshot.tokens.len(), 1);
                assert_eq!(snapshot.next_user_id, snapshot.users[0].id + 1);
                a.close().await;
                b.close().await;
            },
        )
        .await;
    }

    /// The owner made at first start takes its id past the account counter and past every
    /// id in the table (SQLite's `MAX(a, b)` is `GREATEST` here), and the counter moves on.
    #[tokio::test]
    async fn the_owner_takes_the_next_unused_account_id() {
        with_database(
            "the_owner_takes_the_next_unused_account_id",
            |url| async move {
                let store = PgStore::open(&url).await.unwrap();
                sqlx::raw_sql(
                    "INSERT INTO meta (key, value) VALUES ('next_user_id', '7');
                     INSERT INTO users (id, username, name, role, state, created_at)
                         VALUES (3, 'ann@x', '', 'member', 'active', 0);",
                )
                .execute(&store.pool)
                .await
                .unwrap();
                let identity = store
                    .initialize("owner@localhost", &[1; 32], 5)
                    .await
                    .unwrap();
                assert!(identity.owner_created);
                let snapshot = store.load().await.unwrap();
                let owner = snapshot
                    .users
                    .iter()
                    .find(|u| u.username == "owner@localhost")
                    .unwrap();
                assert_eq!(owner.id, 7);
                assert_eq!(snapshot.next_user_id, 8);
                assert_eq!(store.find_token(&[1; 32]).await.unwrap().unwrap().user, 7);
                store.close().await;
            },
        )
        .await;
    }

    /// A URL that does not read is refused with a clear message that does not repeat it.
    #[tokio::test]
    async fn a_bad_url_is_refused_without_repeating_it() {
        let err = PgStore::open("postgres://u:secret@h:notaport/db")
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("does not read"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    /// Loading 100,000 leases, as a node taking over would: the figure is printed (the
    /// target is 2 s); the bound asserted is loose, for slow machines.
    #[tokio::test]
    async fn loading_100000_leases_is_fast() {
        with_database("loading_100000_leases_is_fast", |url| async move {
            const LEASES: usize = 100_000;
            let store = PgStore::open(&url).await.unwrap();
            store.load().await.unwrap();
            for part in 0..10 {
                let mut batch = Batch::default();
                for i in part * LEASES / 10..(part + 1) * LEASES / 10 {
                    let mut id = [0; 16];
                    id[..8].copy_from_slice(&(i as u64).to_be_bytes());
                    id[8..].copy_from_slice(&rand::random::<[u8; 8]>());
                    batch.add_lease(Lease {
                        taken_with: None,
                        id: LeaseId(id),
                        feature: format!("feature{}", i % 20),
                        seats: 1,
                        user: format!("user{}@example.com", i % 500),
                        host: format!("ws{i}"),
                        peer: crate::core::Peer::default(),
                        client: ClientId(rand::random()),
                        request_id: RequestId(rand::random()),
                        kind: LeaseKind::Online,
                        source: LeaseSource::Floating,
                        granted_at: i as i64,
                        expires_at: i as i64 + 60_000,
                        entitlement: None,
                    });
                }
                store.commit(&batch, Fence::Single).await.unwrap();
            }
            let started = Instant::now();
            let snapshot = store.load().await.unwrap();
            let took = started.elapsed();
            println!("loading {LEASES} leases from PostgreSQL took {took:?}");
            assert_eq!(snapshot.leases.len(), LEASES);
            assert!(
                snapshot
                    .leases
                    .windows(2)
                    .all(|w| w[0].granted_at < w[1].granted_at),
                "leases load in grant order"
            );
            assert!(took < Duration::from_secs(20), "{took:?}");
            store.close().await;
        })
        .await;
    }
}
