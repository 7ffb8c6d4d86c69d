//! The embedded SQLite store: WAL journal, `synchronous = FULL`, so a commit that returned
//! survives a crash or power loss.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool, Transaction};
use tally_protocol::{
    AuditEvent, AuditPage, AuditQuery, ClientId, Entitlement, EntitlementKind, LeaseId, LeaseKind,
    LeaseSource, RequestId, Role, UserState,
};

use super::{Identity, Store, StoreError};
use crate::core::{token_id, Assignment, Batch, Lease, Notification, Snapshot, Token, User};

/// Embedded migrations, applied in order; the version is the position in this list.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/sqlite/0002_assignments.sql"),
    ),
    (3, include_str!("../../migrations/sqlite/0003_borrow.sql")),
    (
        4,
        include_str!("../../migrations/sqlite/0004_lease_rows.sql"),
    ),
    (5, include_str!("../../migrations/sqlite/0005_tokens.sql")),
];

/// Rows per multi-row statement: well under SQLite's limit of 32,766 bound parameters.
const CHUNK: usize = 1000;

/// The SQLite store.
pub struct SqliteStore {
    pool: SqlitePool,
    /// Where each lease's row is. Rows are numbered in the order leases are granted, so a
    /// commit appends to the end of the table instead of writing pages all over it.
    rows: Mutex<LeaseRows>,
}

/// The row number (`seq`) of every lease in the table, and the next one to use.
#[derive(Debug, Default)]
struct LeaseRows {
    by_id: HashMap<LeaseId, i64>,
    next: i64,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `path` and migrates it.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        let store = Self {
            pool,
            rows: Mutex::new(LeaseRows::default()),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            .execute(&mut *tx)
            .await?;
        let current: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
            .fetch_one(&mut *tx)
            .await?;
        let current = current.unwrap_or(0);
        let newest = MIGRATIONS.last().map_or(0, |m| m.0);
        if current > newest {
            return Err(StoreError::Corrupt(format!(
                "schema version {current} is newer than this tallyd knows ({newest}); run a newer tallyd"
            )));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO schema_version (version) VALUES (?)")
                .bind(version)
                .execute(&mut *tx)
                .await?;
            tracing::info!(version, "applied database migration");
        }
        tx.commit().await?;
        Ok(())
    }
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
        let owner: Option<(i64, String)> = sqlx::query_as(
            "SELECT id, username FROM users WHERE role = 'owner' ORDER BY id LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some((user_id, username)) = owner else {
            return Err(StoreError::Corrupt(
                "there is no owner account; start tallyd once to create it".into(),
            ));
        };
        let revoked = if revoke_others {
            sqlx::query("DELETE FROM tokens WHERE user_id = ?")
                .bind(user_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        } else {
            0
        };
        let label = if revoke_others {
            "tallyd owner-token --revoke-others"
        } else {
            "tallyd owner-token"
        };
        insert_token(&mut tx, token_hash, user_id, label, now).await?;
        tx.commit().await?;
        Ok((username, revoked))
    }

    async fn find_token(&self, token_hash: &[u8; 32]) -> Result<Option<Token>, StoreError> {
        let row = sqlx::query("SELECT * FROM tokens WHERE hash = ?")
            .bind(&token_hash[..])
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_row).transpose()
    }

    async fn load(&self) -> Result<Snapshot, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let next: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'next_entitlement_id'")
                .fetch_optional(&mut *conn)
                .await?;
        let next_entitlement_id = match next {
            Some(text) => text
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("next_entitlement_id {text:?}")))?,
            None => 1,
        };
        let mut entitlements = Vec::new();
        for row in sqlx::query("SELECT * FROM entitlements ORDER BY id")
            .fetch_all(&mut *conn)
            .await?
        {
            let kind: String = row.try_get("kind")?;
            entitlements.push(Entitlement {
                id: row.try_get::<i64, _>("id")? as u64,
                feature: row.try_get("feature")?,
                seats: row.try_get::<i64, _>("seats")? as u32,
                starts_at: row.try_get("starts_at")?,
                expires_at: row.try_get("expires_at")?,
                kind: EntitlementKind::parse(&kind)
                    .ok_or_else(|| StoreError::Corrupt(format!("entitlement kind {kind:?}")))?,
                borrowable: row.try_get("borrowable")?,
                max_borrow_secs: row.try_get::<i64, _>("max_borrow_secs")? as u64,
                reference: row.try_get("reference")?,
            });
        }
        let mut leases = Vec::new();
        let mut rows = LeaseRows::default();
        for row in sqlx::query("SELECT * FROM leases ORDER BY seq")
            .fetch_all(&mut *conn)
            .await?
        {
            let kind: String = row.try_get("kind")?;
            let assignment: Option<i64> = row.try_get("source_assignment")?;
            let seq: i64 = row.try_get("seq")?;
            rows.by_id.insert(LeaseId(id16(&row, "id")?), seq);
            rows.next = rows.next.max(seq + 1);
            leases.push(Lease {
                id: LeaseId(id16(&row, "id")?),
                feature: row.try_get("feature")?,
                seats: row.try_get::<i64, _>("seats")? as u32,
                user: row.try_get("username")?,
                host: row.try_get("host")?,
                client: ClientId(id16(&row, "client_id")?),
                request_id: RequestId(id16(&row, "request_id")?),
                kind: LeaseKind::parse(&kind)
                    .ok_or_else(|| StoreError::Corrupt(format!("lease kind {kind:?}")))?,
                source: assignment.map_or(LeaseSource::Floating, |id| {
                    LeaseSource::Assignment(id as u64)
                }),
                granted_at: row.try_get("granted_at")?,
                expires_at: row.try_get("expires_at")?,
                entitlement: row
                    .try_get::<Option<i64>, _>("entitlement")?
                    .map(|id| id as u64),
            });
        }
        let mut users = Vec::new();
        for row in sqlx::query("SELECT * FROM users ORDER BY username")
            .fetch_all(&mut *conn)
            .await?
        {
            let role: String = row.try_get("role")?;
            let state: String = row.try_get("state")?;
            users.push(User {
                id: row.try_get::<i64, _>("id")? as u64,
                username: row.try_get("username")?,
                name: row.try_get("name")?,
                role: Role::parse(&role)
                    .ok_or_else(|| StoreError::Corrupt(format!("role {role:?}")))?,
                state: UserState::parse(&state)
                    .ok_or_else(|| StoreError::Corrupt(format!("user state {state:?}")))?,
                created_at: row.try_get("created_at")?,
            });
        }
        let mut assignments = Vec::new();
        for row in sqlx::query("SELECT * FROM assignments ORDER BY id")
            .fetch_all(&mut *conn)
            .await?
        {
            assignments.push(Assignment {
                id: row.try_get::<i64, _>("id")? as u64,
                user: row.try_get("username")?,
                feature: row.try_get("feature")?,
                entitlement: row.try_get::<i64, _>("entitlement")? as u64,
                seats: row.try_get::<i64, _>("seats")? as u32,
                expires_at: row.try_get("expires_at")?,
                created_at: row.try_get("created_at")?,
            });
        }
        let next: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'next_assignment_id'")
                .fetch_optional(&mut *conn)
                .await?;
        let next_assignment_id = match next {
            Some(text) => text
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("next_assignment_id {text:?}")))?,
            None => 1,
        };
        let mut tokens = Vec::new();
        for row in sqlx::query("SELECT * FROM tokens ORDER BY id")
            .fetch_all(&mut *conn)
            .await?
        {
            tokens.push(token_row(&row)?);
        }
        let next: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'next_user_id'")
                .fetch_optional(&mut *conn)
                .await?;
        let next_user_id = match next {
            Some(text) => text
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("next_user_id {text:?}")))?,
            None => 1,
        };
        *self.rows.lock().expect("lease rows lock") = rows;
        Ok(Snapshot {
            entitlements,
            leases,
            users,
            tokens,
            next_user_id,
            assignments,
            next_entitlement_id,
            next_assignment_id,
        })
    }

    async fn audit(
        &self,
        query: &AuditQuery,
        before: Option<u64>,
        max_bytes: usize,
    ) -> Result<AuditPage, StoreError> {
        use futures::TryStreamExt;
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT id, at, actor, action, subject, feature, outcome, reason FROM audit WHERE 1 = 1",
        );
        if let Some(before) = before {
            q.push(" AND id < ")
                .push_bind(i64::try_from(before).unwrap_or(i64::MAX));
        }
        if let Some(since) = query.since {
            q.push(" AND at >= ").push_bind(since);
        }
        if let Some(user) = &query.user {
            let user = user.to_lowercase();
            q.push(" AND (actor = ")
                .push_bind(user.clone())
                .push(" OR subject = ")
                .push_bind(user)
                .push(")");
        }
        if let Some(feature) = &query.feature {
            q.push(" AND feature = ").push_bind(feature.clone());
        }
        let limit = query.limit.unwrap_or(1000).max(1);
        // One row past the page tells whether another page follows.
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let mut rows = q.build().fetch(&self.pool);
        let mut events = Vec::new();
        let mut last_id = 0i64;
        let mut bytes = 0;
        let mut more = false;
        while let Some(row) = rows.try_next().await? {
            if events.len() == limit as usize || (!events.is_empty() && bytes >= max_bytes) {
                more = true;
                break;
            }
            let event = AuditEvent {
                at: row.try_get("at")?,
                actor: row.try_get("actor")?,
                action: row.try_get("action")?,
                subject: row.try_get("subject")?,
                feature: row.try_get("feature")?,
                outcome: row.try_get("outcome")?,
                reason: row.try_get("reason")?,
            };
            last_id = row.try_get("id")?;
            bytes += super::event_size(&event);
            events.push(event);
        }
        let next = more.then_some(last_id as u64);
        Ok(AuditPage { events, next })
    }

    async fn pending_notifications(
        &self,
        limit: u32,
    ) -> Result<Vec<(i64, Notification)>, StoreError> {
        let rows = sqlx::query("SELECT id, at, kind, subject, detail FROM outbox WHERE delivered_at IS NULL ORDER BY id LIMIT ?")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("id")?,
                    Notification {
                        at: row.try_get("at")?,
                        kind: row.try_get("kind")?,
                        subject: row.try_get("subject")?,
                        detail: row.try_get("detail")?,
                    },
                ))
            })
            .collect()
    }

    async fn mark_delivered(&self, ids: &[i64], at: i64) -> Result<(), StoreError> {
        for chunk in ids.chunks(CHUNK) {
            let mut q = QueryBuilder::<Sqlite>::new("UPDATE outbox SET delivered_at = ");
            q.push_bind(at).push(" WHERE id IN (");
            let mut list = q.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            q.push(")");
            q.build().execute(&self.pool).await?;
        }
        Ok(())
    }

    async fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        // Row numbers for this batch, taken for good only once the transaction commits.
        let (added, removed, next) = {
            let rows = self.rows.lock().expect("lease rows lock");
            let mut next = rows.next;
            let added: Vec<i64> = batch
                .leases_added
                .iter()
                .map(|lease| {
                    rows.by_id.get(&lease.id).copied().unwrap_or_else(|| {
                        next += 1;
                        next - 1
                    })
                })
                .collect();
            let removed: Vec<i64> = batch
                .leases_removed
                .iter()
                .filter_map(|id| rows.by_id.get(id).copied())
                .collect();
            (added, removed, next)
        };
        let mut tx = self.pool.begin().await?;
        write_batch(&mut tx, batch, &added, &removed).await?;
        tx.commit().await?;
        let mut rows = self.rows.lock().expect("lease rows lock");
        for (lease, seq) in batch.leases_added.iter().zip(&added) {
            rows.by_id.insert(lease.id, *seq);
        }
        for id in &batch.leases_removed {
            rows.by_id.remove(id);
        }
        rows.next = next;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// Writes one token row outside the engine (first start, `tallyd owner-token`).
async fn insert_token(
    tx: &mut Transaction<'_, Sqlite>,
    hash: &[u8; 32],
    user_id: i64,
    label: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO tokens (id, hash, user_id, label, created_at) VALUES (?, ?, ?, ?, ?)")
        .bind(token_id(hash))
        .bind(&hash[..])
        .bind(user_id)
        .bind(label)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn token_row(row: &sqlx::sqlite::SqliteRow) -> Result<Token, StoreError> {
    let hash: Vec<u8> = row.try_get("hash")?;
    Ok(Token {
        id: row.try_get("id")?,
        hash: hash
            .try_into()
            .map_err(|_| StoreError::Corrupt("a token hash is not 32 bytes".into()))?,
        user: row.try_get::<i64, _>("user_id")? as u64,
        label: row.try_get("label")?,
        created_at: row.try_get("created_at")?,
        last_used: row.try_get("last_used")?,
    })
}

fn id16(row: &sqlx::sqlite::SqliteRow, column: &str) -> Result<[u8; 16], StoreError> {
    let bytes: Vec<u8> = row.try_get(column)?;
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{column} is not 16 bytes")))
}

/// Writes every list of the batch as multi-row statements.
///
/// `lease_rows` are the row numbers of `batch.leases_added`, in order; `removed_rows` those
/// of the leases to delete.
async fn write_batch(
    tx: &mut Transaction<'_, Sqlite>,
    batch: &Batch,
    lease_rows: &[i64],
    removed_rows: &[i64],
) -> Result<(), StoreError> {
    for chunk in batch.users_removed.chunks(CHUNK) {
        // Tokens first: they point at the users.
        for (head, tail) in [
            (
                "DELETE FROM tokens WHERE user_id IN (SELECT id FROM users WHERE username IN (",
                "))",
            ),
            ("DELETE FROM users WHERE username IN (", ")"),
        ] {
            let mut q = QueryBuilder::<Sqlite>::new(head);
            let mut names = q.separated(", ");
            for name in chunk {
                names.push_bind(name);
            }
            q.push(tail);
            q.build().execute(&mut **tx).await?;
        }
    }
    for chunk in batch.users_upserted.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO users (id, username, name, role, state, created_at) ",
        );
        q.push_values(chunk, |mut b, u| {
            b.push_bind(u.id as i64)
                .push_bind(&u.username)
                .push_bind(&u.name)
                .push_bind(u.role.as_str())
                .push_bind(u.state.as_str())
                .push_bind(u.created_at);
        });
        q.push(" ON CONFLICT (id) DO UPDATE SET name = excluded.name, role = excluded.role, state = excluded.state");
        q.build().execute(&mut **tx).await?;
    }
    if let Some(next) = batch.next_user_id {
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('next_user_id', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(next.to_string())
        .execute(&mut **tx)
        .await?;
    }
    for chunk in batch.tokens_removed.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new("DELETE FROM tokens WHERE id IN (");
        let mut ids = q.separated(", ");
        for id in chunk {
            ids.push_bind(id);
        }
        q.push(")");
        q.build().execute(&mut **tx).await?;
    }
    for chunk in batch.tokens_added.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO tokens (id, hash, user_id, label, created_at, last_used) ",
        );
        q.push_values(chunk, |mut b, t| {
            b.push_bind(&t.id)
                .push_bind(&t.hash[..])
                .push_bind(t.user as i64)
                .push_bind(&t.label)
                .push_bind(t.created_at)
                .push_bind(t.last_used);
        });
        q.build().execute(&mut **tx).await?;
    }
    for (id, at) in &batch.tokens_used {
        sqlx::query("UPDATE tokens SET last_used = ? WHERE id = ?")
            .bind(at)
            .bind(id)
            .execute(&mut **tx)
            .await?;
    }
    for chunk in batch.assignments_upserted.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO assignments (id, username, feature, entitlement, seats, expires_at, created_at) ",
        );
        q.push_values(chunk, |mut b, a| {
            b.push_bind(a.id as i64)
                .push_bind(&a.user)
                .push_bind(&a.feature)
                .push_bind(a.entitlement as i64)
                .push_bind(a.seats as i64)
                .push_bind(a.expires_at)
                .push_bind(a.created_at);
        });
        q.push(" ON CONFLICT (id) DO UPDATE SET seats = excluded.seats, expires_at = excluded.expires_at");
        q.build().execute(&mut **tx).await?;
    }
    for chunk in batch.assignments_removed.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new("DELETE FROM assignments WHERE id IN (");
        let mut ids = q.separated(", ");
        for id in chunk {
            ids.push_bind(*id as i64);
        }
        q.push(")");
        q.build().execute(&mut **tx).await?;
    }
    for chunk in batch.notifications.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new("INSERT INTO outbox (at, kind, subject, detail) ");
        q.push_values(chunk, |mut b, n| {
            b.push_bind(n.at)
                .push_bind(&n.kind)
                .push_bind(&n.subject)
                .push_bind(&n.detail);
        });
        q.build().execute(&mut **tx).await?;
    }
    if let Some(next) = batch.next_assignment_id {
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('next_assignment_id', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(next.to_string())
        .execute(&mut **tx)
        .await?;
    }
    for chunk in batch.entitlements_added.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO entitlements (id, feature, seats, starts_at, expires_at, kind, borrowable, max_borrow_secs, reference) ",
        );
        q.push_values(chunk, |mut b, e| {
            b.push_bind(e.id as i64)
                .push_bind(&e.feature)
                .push_bind(e.seats as i64)
                .push_bind(e.starts_at)
                .push_bind(e.expires_at)
                .push_bind(e.kind.as_str())
                .push_bind(e.borrowable)
                .push_bind(e.max_borrow_secs as i64)
                .push_bind(&e.reference);
        });
        q.build().execute(&mut **tx).await?;
    }
    let added: Vec<(&Lease, i64)> = batch
        .leases_added
        .iter()
        .zip(lease_rows.iter().copied())
        .collect();
    for chunk in added.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO leases (seq, id, feature, seats, username, host, client_id, request_id, kind, source_assignment, granted_at, expires_at, entitlement) ",
        );
        q.push_values(chunk, |mut b, (l, seq)| {
            let assignment = match l.source {
                LeaseSource::Floating => None,
                LeaseSource::Assignment(id) => Some(id as i64),
            };
            b.push_bind(*seq)
                .push_bind(&l.id.0[..])
                .push_bind(&l.feature)
                .push_bind(l.seats as i64)
                .push_bind(&l.user)
                .push_bind(&l.host)
                .push_bind(&l.client.0[..])
                .push_bind(&l.request_id.0[..])
                .push_bind(l.kind.as_str())
                .push_bind(assignment)
                .push_bind(l.granted_at)
                .push_bind(l.expires_at)
                .push_bind(l.entitlement.map(|id| id as i64));
        });
        q.push(" ON CONFLICT (seq) DO UPDATE SET host = excluded.host, client_id = excluded.client_id, expires_at = excluded.expires_at");
        q.build().execute(&mut **tx).await?;
    }
    for chunk in removed_rows.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new("DELETE FROM leases WHERE seq IN (");
        let mut seqs = q.separated(", ");
        for seq in chunk {
            seqs.push_bind(*seq);
        }
        q.push(")");
        q.build().execute(&mut **tx).await?;
    }
    for chunk in batch.entitlements_removed.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new("DELETE FROM entitlements WHERE id IN (");
        let mut ids = q.separated(", ");
        for id in chunk {
            ids.push_bind(*id as i64);
        }
        q.push(")");
        q.build().execute(&mut **tx).await?;
    }
    for chunk in batch.audit.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO audit (at, actor, action, subject, feature, outcome, reason) ",
        );
        q.push_values(chunk, |mut b, e| {
            b.push_bind(e.at)
                .push_bind(&e.actor)
                .push_bind(&e.action)
                .push_bind(&e.subject)
                .push_bind(&e.feature)
                .push_bind(&e.outcome)
                .push_bind(&e.reason);
        });
        q.build().execute(&mut **tx).await?;
    }
    if let Some(next) = batch.next_entitlement_id {
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('next_entitlement_id', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(next.to_string())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tally_protocol::{
        Checkout, ClientId, EntitlementKind, LeaseId, NewEntitlement, RequestId, Role,
    };

    use super::*;
    use crate::core::{Actor, Holder, Pool};

    fn owner() -> Actor {
        Actor {
            username: "owner@localhost".into(),
            role: Role::Owner,
        }
    }

    /// Commits real batches (more rows than one statement takes, updates, removals that
    /// cancel out) and checks that a reload gives back exactly the pool's state.
    #[tokio::test]
    async fn batches_round_trip_through_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        let ttl = 60_000;
        let mut pool = Pool::new(ttl, crate::core::Policy::default());
        let mut batch = Batch::default();
        let new = NewEntitlement {
            feature: "vray".into(),
            seats: 5000,
            starts_at: None,
            expires_at: Some(10_000_000),
            kind: EntitlementKind::Trial,
            borrowable: true,
            max_borrow_secs: Some(3600),
            reference: "PO-1".into(),
        };
        pool.add_entitlement(1, &owner(), &new, &mut batch).unwrap();
        for i in 0..2500u32 {
            let holder = Holder {
                client: ClientId([(i % 7) as u8; 16]),
                host: format!("node{i}"),
            };
            let checkout = Checkout {
                request_id: RequestId(u128::from(i).to_be_bytes()),
                feature: "vray".into(),
                seats: 1,
            };
            let id = LeaseId((u128::from(i) + 1).to_be_bytes());
            pool.checkout(2, &owner(), &holder, &checkout, id, &mut batch)
                .unwrap();
        }
        store.commit(&batch).await.unwrap();

        let mut batch = Batch::default();
        let ids: Vec<LeaseId> = pool
            .snapshot()
            .leases
            .iter()
            .map(|l| l.id)
            .take(1200)
            .collect();
        for id in &ids[..1100] {
            pool.checkin(3, &owner(), *id, &mut batch).unwrap();
        }
        let moved = Holder {
            client: ClientId([99; 16]),
            host: "laptop".into(),
        };
        pool.resume(4, &owner(), &moved, &ids[1100..], &mut batch);
        store.commit(&batch).await.unwrap();

        let loaded = store.load().await.unwrap();
        assert_eq!(loaded, pool.snapshot());
        assert_eq!(loaded.leases.len(), 1400);
        assert!(
            loaded
                .leases
                .iter()
                .filter(|l| l.client == ClientId([99; 16]))
                .count()
                == 100
        );
        let audit: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        // The entitlement, the checkouts, the check-ins and the moves of resumed leases.
        assert_eq!(audit, 1 + 2500 + 1100 + 100);
    }

    #[tokio::test]
    async fn initialise_is_idempotent_and_tokens_authenticate() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        let first = store
            .initialize("owner@localhost", &[1; 32], 0)
            .await
            .unwrap();
        assert!(first.owner_created);
        let again = store
            .initialize("owner@localhost", &[2; 32], 0)
            .await
            .unwrap();
        assert!(!again.owner_created);
        assert_eq!(first.server_id, again.server_id);
        assert!(
            store.find_token(&[2; 32]).await.unwrap().is_none(),
            "a second initialise mints no token"
        );
        let first = store.find_token(&[1; 32]).await.unwrap().unwrap();
        assert_eq!(first.id, token_id(&[1; 32]));
        let snapshot = store.load().await.unwrap();
        assert_eq!(snapshot.users[0].role, Role::Owner);
        assert_eq!(snapshot.users[0].id, first.user);
        assert!(
            snapshot.next_user_id > first.user,
            "account ids are not reused"
        );
        store.add_owner_token(&[3; 32], 1, false).await.unwrap();
        assert!(store.find_token(&[3; 32]).await.unwrap().is_some());
        store.close().await;
        // Reopening runs no migration twice.
        let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        assert!(store.find_token(&[1; 32]).await.unwrap().is_some());
        let (_, revoked) = store.add_owner_token(&[4; 32], 2, true).await.unwrap();
        assert_eq!(revoked, 2, "--revoke-others ends every other owner token");
        assert!(store.find_token(&[1; 32]).await.unwrap().is_none());
        assert!(store.find_token(&[3; 32]).await.unwrap().is_none());
        assert!(store.find_token(&[4; 32]).await.unwrap().is_some());
    }

    /// The audit log pages newest first on its row id: pages never overlap or skip, `next`
    /// is set exactly when older events match, filters hold across pages, and a page of
    /// large events ends at the byte budget instead of growing past a frame.
    #[tokio::test]
    async fn audit_pages_by_row_id_newest_first_within_a_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        let mut batch = Batch::default();
        for i in 0..25i64 {
            batch.audit_raw(AuditEvent {
                at: i,
                actor: "owner@localhost".into(),
                action: "checkout".into(),
                subject: format!("lease{i}"),
                feature: Some(if i % 5 == 0 { "nuke" } else { "vray" }.into()),
                outcome: "ok".into(),
                // Every third event is large: 100 KiB of reason.
                reason: if i % 3 == 0 {
                    "x".repeat(100 * 1024)
                } else {
                    String::new()
                },
            });
        }
        store.commit(&batch).await.unwrap();
        let query = |feature: Option<&str>, limit| AuditQuery {
            since: None,
            user: None,
            feature: feature.map(str::to_string),
            limit: Some(limit),
        };

        // Small pages: 10, 10, 5, newest first, then no cursor.
        let mut seen = Vec::new();
        let mut before = None;
        let mut pages = 0;
        loop {
            let page = store
                .audit(&query(None, 10), before, usize::MAX)
                .await
                .unwrap();
            pages += 1;
            seen.extend(page.events.iter().map(|e| e.at));
            match page.next {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(seen, (0..25).rev().collect::<Vec<_>>());

        // An exact fit has no next page.
        let page = store
            .audit(&query(None, 25), None, usize::MAX)
            .await
            .unwrap();
        assert_eq!((page.events.len(), page.next), (25, None));

        // Filters hold across pages.
        let first = store
            .audit(&query(Some("nuke"), 2), None, usize::MAX)
            .await
            .unwrap();
        let second = store
            .audit(&query(Some("nuke"), 2), first.next, usize::MAX)
            .await
            .unwrap();
        let third = store
            .audit(&query(Some("nuke"), 2), second.next, usize::MAX)
            .await
            .unwrap();
        let ats: Vec<i64> = [first, second, third]
            .iter()
            .flat_map(|p| p.events.iter().map(|e| e.at))
            .collect();
        assert_eq!(ats, [20, 15, 10, 5, 0]);

        // A 150 KiB budget: a page stops once it passes it, and the next page goes on
        // from there; a single event larger than the budget still comes alone.
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = store
                .audit(&query(None, 1000), before, 150 * 1024)
                .await
                .unwrap();
            let bytes: usize = page.events.iter().map(crate::store::event_size).sum();
            let last = page.events.last().map_or(0, crate::store::event_size);
            assert!(!page.events.is_empty());
            assert!(
                bytes - last < 150 * 1024,
                "a page went on past its budget: {bytes} bytes"
            );
            seen.extend(page.events.iter().map(|e| e.at));
            match page.next {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, (0..25).rev().collect::<Vec<_>>());
    }
}
