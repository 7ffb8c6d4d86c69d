//! The rows of the store's tables as sqlx decodes them, and their conversion to the core's
//! types: the one place where a stored value is read back and checked.
//!
//! The row structs use only types every backend decodes (`i64`, `bool`, text, bytes), so
//! each backend selects its rows into them (`sqlx::query_as`) and converts them with
//! `TryFrom`. A value this version cannot read is [`StoreError::Corrupt`], naming the column.

use tally_protocol::{
    AuditEvent, ClientId, Entitlement, EntitlementKind, LeaseId, LeaseKind, LeaseSource, Member,
    RequestId, Role, RuleKind, RuleSpec, UserState,
};

use super::StoreError;
use crate::core::credits::{Access, ConsumptionRow, GrantRow, Purchase};
use crate::core::{Assignment, Group, Lease, Notification, Peer, Rule, Token, User};

/// A row of `entitlements`.
#[derive(Debug, sqlx::FromRow)]
pub struct EntitlementRow {
    pub id: i64,
    pub feature: String,
    pub seats: i64,
    pub starts_at: i64,
    pub expires_at: Option<i64>,
    pub kind: String,
    pub borrowable: bool,
    pub max_borrow_secs: i64,
    pub reference: String,
}

impl TryFrom<EntitlementRow> for Entitlement {
    type Error = StoreError;

    fn try_from(row: EntitlementRow) -> Result<Self, StoreError> {
        Ok(Entitlement {
            id: unsigned("entitlements.id", row.id)?,
            feature: row.feature,
            seats: unsigned("entitlements.seats", row.seats)?,
            starts_at: row.starts_at,
            expires_at: row.expires_at,
            kind: EntitlementKind::parse(&row.kind)
                .ok_or_else(|| StoreError::Corrupt(format!("entitlement kind {:?}", row.kind)))?,
            borrowable: row.borrowable,
            max_borrow_secs: unsigned("entitlements.max_borrow_secs", row.max_borrow_secs)?,
            reference: row.reference,
        })
    }
}

/// How a load reads `leases`: every column in the order [`LeaseRow::read`] takes them, in
/// grant order (`seq`).
pub const SELECT_LEASES: &str = "SELECT seq, id, feature, seats, username, host, client_id, request_id, kind, source_assignment, granted_at, expires_at, entitlement, program, pid, address, taken_with FROM leases ORDER BY seq";

/// A row of `leases` with its row number (`seq`, in grant order), borrowed from the row the
/// backend returned: decoded by column position, with the ids and the kind read in place,
/// so that a load of a million leases allocates nothing per row but the lease's own text.
#[derive(Debug)]
pub struct LeaseRow<'r> {
    pub seq: i64,
    pub id: &'r [u8],
    pub feature: &'r str,
    pub seats: i64,
    pub username: &'r str,
    pub host: &'r str,
    pub client_id: &'r [u8],
    pub request_id: &'r [u8],
    pub kind: &'r str,
    /// The assignment the seats come from; none for floating seats.
    pub source_assignment: Option<i64>,
    pub granted_at: i64,
    pub expires_at: i64,
    pub entitlement: Option<i64>,
    /// What the holder said of itself, and where it connected from (empty and 0 in rows
    /// written before they were kept).
    pub program: &'r str,
    pub pid: i64,
    pub address: &'r str,
    /// For a seat of a prerequisite: the lease whose checkout took it (R18).
    pub taken_with: Option<&'r [u8]>,
}

impl<'r> LeaseRow<'r> {
    /// Reads a row of [`SELECT_LEASES`], column by position.
    pub fn read<R>(row: &'r R) -> Result<Self, StoreError>
    where
        R: sqlx::Row,
        usize: sqlx::ColumnIndex<R>,
        i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        &'r str: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        &'r [u8]: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        Ok(LeaseRow {
            seq: row.try_get(0)?,
            id: row.try_get(1)?,
            feature: row.try_get(2)?,
            seats: row.try_get(3)?,
            username: row.try_get(4)?,
            host: row.try_get(5)?,
            client_id: row.try_get(6)?,
            request_id: row.try_get(7)?,
            kind: row.try_get(8)?,
            source_assignment: row.try_get(9)?,
            granted_at: row.try_get(10)?,
            expires_at: row.try_get(11)?,
            entitlement: row.try_get(12)?,
            program: row.try_get(13)?,
            pid: row.try_get(14)?,
            address: row.try_get(15)?,
            taken_with: row.try_get(16)?,
        })
    }
}

impl TryFrom<LeaseRow<'_>> for Lease {
    type Error = StoreError;

    fn try_from(row: LeaseRow<'_>) -> Result<Self, StoreError> {
        Ok(Lease {
            id: LeaseId(id16("leases.id", row.id)?),
            feature: row.feature.to_owned(),
            seats: unsigned("leases.seats", row.seats)?,
            user: row.username.to_owned(),
            host: row.host.to_owned(),
            peer: Peer {
                program: row.program.to_owned(),
                pid: unsigned("leases.pid", row.pid)?,
                address: row.address.to_owned(),
            },
            client: ClientId(id16("leases.client_id", row.client_id)?),
            request_id: RequestId(id16("leases.request_id", row.request_id)?),
            kind: LeaseKind::parse(row.kind)
                .ok_or_else(|| StoreError::Corrupt(format!("lease kind {:?}", row.kind)))?,
            source: match row.source_assignment {
                None => LeaseSource::Floating,
                Some(id) => LeaseSource::Assignment(unsigned("leases.source_assignment", id)?),
            },
            granted_at: row.granted_at,
            expires_at: row.expires_at,
            entitlement: row
                .entitlement
                .map(|id| unsigned("leases.entitlement", id))
                .transpose()?,
            taken_with: row
                .taken_with
                .map(|id| id16("leases.taken_with", id).map(LeaseId))
                .transpose()?,
        })
    }
}

/// The leases a load read, in grant order, and the row number of each.
#[derive(Debug, Default)]
pub struct LoadedLeases {
    pub leases: Vec<Lease>,
    pub rows: super::writer::LeaseRows,
}

impl LoadedLeases {
    /// Reads every lease, a row at a time as the backend streams them: each converted while
    /// the next is read, none kept once converted. One reading for every backend.
    pub async fn read<'c, DB, E>(executor: E) -> Result<Self, StoreError>
    where
        DB: sqlx::Database,
        E: sqlx::Executor<'c, Database = DB>,
        for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
        usize: sqlx::ColumnIndex<DB::Row>,
        for<'r> i64: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
        for<'r> &'r str: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
        for<'r> &'r [u8]: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    {
        use futures::TryStreamExt;
        let started = std::time::Instant::now();
        let mut leases = Self::default();
        let mut stream = sqlx::query::<DB>(SELECT_LEASES).fetch(executor);
        while let Some(row) = stream.try_next().await? {
            leases.push(&row)?;
        }
        drop(stream);
        tracing::debug!(
            leases = leases.leases.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "leases read"
        );
        Ok(leases)
    }

    /// Converts one row of [`SELECT_LEASES`] as the backend streams it, so that no row is
    /// kept once read.
    pub fn push<'r, R>(&mut self, row: &'r R) -> Result<(), StoreError>
    where
        R: sqlx::Row,
        usize: sqlx::ColumnIndex<R>,
        i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        &'r str: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        &'r [u8]: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let row = LeaseRow::read(row)?;
        let seq = row.seq;
        let lease = Lease::try_from(row)?;
        self.rows.loaded(lease.id, seq);
        self.leases.push(lease);
        Ok(())
    }
}

/// A row of `users`.
#[derive(Debug, sqlx::FromRow)]
pub struct UserRow {
    pub id: i64,
    pub username: String,
    pub name: String,
    pub role: String,
    pub state: String,
    pub created_at: i64,
}

impl TryFrom<UserRow> for User {
    type Error = StoreError;

    fn try_from(row: UserRow) -> Result<Self, StoreError> {
        Ok(User {
            id: unsigned("users.id", row.id)?,
            username: row.username,
            name: row.name,
            role: Role::parse(&row.role)
                .ok_or_else(|| StoreError::Corrupt(format!("role {:?}", row.role)))?,
            state: UserState::parse(&row.state)
                .ok_or_else(|| StoreError::Corrupt(format!("user state {:?}", row.state)))?,
            created_at: row.created_at,
        })
    }
}

/// A row of `assignments`.
#[derive(Debug, sqlx::FromRow)]
pub struct AssignmentRow {
    pub id: i64,
    pub username: String,
    pub feature: String,
    pub entitlement: i64,
    pub seats: i64,
    pub expires_at: Option<i64>,
    pub created_at: i64,
}

impl TryFrom<AssignmentRow> for Assignment {
    type Error = StoreError;

    fn try_from(row: AssignmentRow) -> Result<Self, StoreError> {
        Ok(Assignment {
            id: unsigned("assignments.id", row.id)?,
            user: row.username,
            feature: row.feature,
            entitlement: unsigned("assignments.entitlement", row.entitlement)?,
            seats: unsigned("assignments.seats", row.seats)?,
            expires_at: row.expires_at,
            created_at: row.created_at,
        })
    }
}

/// A row of `tokens`.
#[derive(Debug, sqlx::FromRow)]
pub struct TokenRow {
    pub id: String,
    pub hash: Vec<u8>,
    pub user_id: i64,
    pub label: String,
    pub created_at: i64,
    pub last_used: Option<i64>,
}

impl TryFrom<TokenRow> for Token {
    type Error = StoreError;

    fn try_from(row: TokenRow) -> Result<Self, StoreError> {
        Ok(Token {
            id: row.id,
            hash: row
                .hash
                .try_into()
                .map_err(|_| StoreError::Corrupt("a token hash is not 32 bytes".into()))?,
            user: unsigned("tokens.user_id", row.user_id)?,
            label: row.label,
            created_at: row.created_at,
            last_used: row.last_used,
        })
    }
}

/// A row of `audit`, with its row id (the paging cursor).
#[derive(Debug, sqlx::FromRow)]
pub struct AuditRow {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub feature: Option<String>,
    pub outcome: String,
    pub reason: String,
}

impl From<AuditRow> for AuditEvent {
    fn from(row: AuditRow) -> Self {
        AuditEvent {
            at: row.at,
            actor: row.actor,
            action: row.action,
            subject: row.subject,
            feature: row.feature,
            outcome: row.outcome,
            reason: row.reason,
        }
    }
}

/// A row of `notify_deliveries`.
#[derive(Debug, sqlx::FromRow)]
pub struct DeliveryRow {
    pub outbox_id: i64,
    pub sink: String,
    pub attempts: i32,
    pub next_at: i64,
    pub delivered_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub last_error: Option<String>,
}

impl TryFrom<DeliveryRow> for super::Delivery {
    type Error = StoreError;

    fn try_from(row: DeliveryRow) -> Result<Self, StoreError> {
        Ok(super::Delivery {
            outbox_id: row.outbox_id,
            attempts: u32::try_from(row.attempts).map_err(|_| {
                StoreError::Corrupt(format!(
                    "notify_deliveries: {} attempts for {}",
                    row.attempts, row.sink
                ))
            })?,
            sink: row.sink,
            next_at: row.next_at,
            delivered_at: row.delivered_at,
            failed_at: row.failed_at,
            last_error: row.last_error,
        })
    }
}

/// A row of `outbox` not yet delivered, with its outbox id.
#[derive(Debug, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub at: i64,
    pub kind: String,
    pub subject: String,
    pub detail: String,
    pub uid: String,
    pub feature: Option<String>,
}

impl From<OutboxRow> for (i64, Notification) {
    fn from(row: OutboxRow) -> Self {
        // Rows an older version wrote have no id of their own: their outbox id is stable too.
        let id = if row.uid.is_empty() {
            format!("outbox-{}", row.id)
        } else {
            row.uid
        };
        (
            row.id,
            Notification {
                id,
                at: row.at,
                kind: row.kind,
                subject: row.subject,
                feature: row.feature,
                text: row.detail,
            },
        )
    }
}

/// A counter kept in `meta` as text (`next_user_id` and the like); 1 when there is none yet.
pub fn counter(key: &str, value: Option<String>) -> Result<u64, StoreError> {
    match value {
        None => Ok(1),
        Some(text) => text
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("{key} {text:?}"))),
    }
}

/// Converts rows of one table, stopping at the first that does not read.
pub fn convert<R, T>(rows: Vec<R>) -> Result<Vec<T>, StoreError>
where
    T: TryFrom<R, Error = StoreError>,
{
    rows.into_iter().map(T::try_from).collect()
}

/// A stored integer that must fit an unsigned field.
fn unsigned<T: TryFrom<i64>>(column: &str, value: i64) -> Result<T, StoreError> {
    T::try_from(value).map_err(|_| StoreError::Corrupt(format!("{column} {value}")))
}

/// A stored 16-byte id.
fn id16(column: &str, bytes: &[u8]) -> Result<[u8; 16], StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{column} is not 16 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value no version writes is refused with the column named, not cast around.
    #[test]
    fn unreadable_values_name_their_column() {
        let row = || LeaseRow {
            seq: 1,
            taken_with: None,
            id: &[1; 16],
            feature: "vray",
            seats: 1,
            username: "ann@x",
            host: "h",
            client_id: &[2; 16],
            request_id: &[3; 16],
            kind: "online",
            source_assignment: None,
            granted_at: 0,
            expires_at: 1,
            entitlement: None,
            program: "",
            pid: 0,
            address: "",
        };
        let err = Lease::try_from(LeaseRow { seats: -1, ..row() })
            .unwrap_err()
            .to_string();
        assert!(err.contains("leases.seats -1"), "{err}");
        let bad = LeaseRow {
            id: &[1; 15],
            ..row()
        };
        let err = Lease::try_from(bad).unwrap_err().to_string();
        assert!(err.contains("leases.id is not 16 bytes"), "{err}");
        let bad = LeaseRow {
            kind: "leased",
            ..row()
        };
        let err = Lease::try_from(bad).unwrap_err().to_string();
        assert!(err.contains("lease kind \"leased\""), "{err}");
        let bad = LeaseRow {
            taken_with: Some(&[4; 17]),
            ..row()
        };
        let err = Lease::try_from(bad).unwrap_err().to_string();
        assert!(err.contains("leases.taken_with is not 16 bytes"), "{err}");
        let err = counter("next_user_id", Some("x".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("next_user_id \"x\""), "{err}");
        assert_eq!(counter("next_user_id", None).unwrap(), 1);
        let row = UserRow {
            id: 1,
            username: "ann@x".into(),
            name: String::new(),
            role: "root".into(),
            state: "active".into(),
            created_at: 0,
        };
        let err = User::try_from(row).unwrap_err().to_string();
        assert!(err.contains("role \"root\""), "{err}");
    }
}

/// Every table's rows as a backend read them at load, in the order the pool keeps them.
#[derive(Debug)]
pub struct LoadedRows {
    pub entitlements: Vec<EntitlementRow>,
    /// In grant order (`seq`), with their row numbers.
    pub leases: LoadedLeases,
    pub users: Vec<UserRow>,
    pub assignments: Vec<AssignmentRow>,
    pub tokens: Vec<TokenRow>,
    /// Prerequisites (R18), by feature then the feature it requires.
    pub requires: Vec<RequiresRow>,
    /// Groups (SPEC §8), by name.
    pub groups: Vec<GroupRow>,
    /// Policy rules (R16), by id.
    pub rules: Vec<RuleRow>,
    pub meta: std::collections::HashMap<String, String>,
    /// `notify_marks`: (key, time).
    pub marks: Vec<(String, i64)>,
    /// Credit purchases (SPEC §11), by id.
    pub purchases: Vec<PurchaseRow>,
    /// Users' access to meters, by user id then meter.
    pub grants: Vec<GrantDbRow>,
    /// Consumptions with their first answers, by time, user and request id.
    pub consumptions: Vec<ConsumptionDbRow>,
}

/// A row of `credit_purchases`.
#[derive(Debug, sqlx::FromRow)]
pub struct PurchaseRow {
    pub id: i64,
    pub meter: String,
    pub amount: i64,
    pub remaining: i64,
    pub expires_at: Option<i64>,
    pub reference: String,
}

impl TryFrom<PurchaseRow> for Purchase {
    type Error = StoreError;

    fn try_from(row: PurchaseRow) -> Result<Self, StoreError> {
        let purchase = Purchase {
            id: unsigned("credit_purchases.id", row.id)?,
            meter: row.meter,
            amount: unsigned("credit_purchases.amount", row.amount)?,
            left: unsigned("credit_purchases.remaining", row.remaining)?,
            expires_at: row.expires_at,
            reference: row.reference,
        };
        if purchase.left > purchase.amount {
            return Err(StoreError::Corrupt(format!(
                "credit_purchases {} has {} left of {}",
                purchase.id, purchase.left, purchase.amount
            )));
        }
        Ok(purchase)
    }
}

/// A row of `credit_grants`.
#[derive(Debug, sqlx::FromRow)]
pub struct GrantDbRow {
    pub user_id: i64,
    pub meter: String,
    pub access: String,
    pub quota: Option<i64>,
    pub used: i64,
}

impl TryFrom<GrantDbRow> for GrantRow {
    type Error = StoreError;

    fn try_from(row: GrantDbRow) -> Result<Self, StoreError> {
        let access = match (row.access.as_str(), row.quota) {
            ("none", _) => None,
            ("unlimited", _) => Some(Access::Unlimited),
            ("quota", Some(quota)) => Some(Access::Quota(unsigned("credit_grants.quota", quota)?)),
            (access, quota) => {
                return Err(StoreError::Corrupt(format!(
                    "credit_grants.access {access:?} with quota {quota:?}"
                )))
            }
        };
        Ok(GrantRow {
            user: unsigned("credit_grants.user_id", row.user_id)?,
            meter: row.meter,
            access,
            used: unsigned("credit_grants.used", row.used)?,
        })
    }
}

/// How `credit_grants` keeps an access: its text and the quota.
pub fn access_columns(access: Option<Access>) -> (&'static str, Option<i64>) {
    match access {
        None => ("none", None),
        Some(Access::Unlimited) => ("unlimited", None),
        Some(Access::Quota(quota)) => ("quota", Some(quota as i64)),
    }
}

/// A row of `credit_consumptions`.
#[derive(Debug, sqlx::FromRow)]
pub struct ConsumptionDbRow {
    pub user_id: i64,
    pub request_id: Vec<u8>,
    pub at: i64,
    pub username: String,
    pub meter: String,
    pub amount: i64,
    pub code: Option<String>,
    pub message: String,
    pub balance: i64,
    pub remaining: Option<i64>,
}

impl TryFrom<ConsumptionDbRow> for ConsumptionRow {
    type Error = StoreError;

    fn try_from(row: ConsumptionDbRow) -> Result<Self, StoreError> {
        let answer = match row.code {
            None => Ok(tally_protocol::Consumed {
                consumed: unsigned("credit_consumptions.amount", row.amount)?,
                balance: unsigned("credit_consumptions.balance", row.balance)?,
                remaining: row
                    .remaining
                    .map(|r| unsigned("credit_consumptions.remaining", r))
                    .transpose()?,
            }),
            Some(code) => match crate::core::AuditOutcome::parse(&code) {
                Some(crate::core::AuditOutcome::Refused(code)) => {
                    Err(tally_protocol::ErrorBody::new(code, row.message))
                }
                _ => {
                    return Err(StoreError::Corrupt(format!(
                        "credit_consumptions.code {code:?}"
                    )))
                }
            },
        };
        Ok(ConsumptionRow {
            user: unsigned("credit_consumptions.user_id", row.user_id)?,
            username: row.username,
            request: id16("credit_consumptions.request_id", &row.request_id)?,
            at: row.at,
            meter: row.meter,
            amount: unsigned("credit_consumptions.amount", row.amount)?,
            answer,
        })
    }
}

/// A row of `policy_groups`: a group and its members, space-separated.
#[derive(Debug, sqlx::FromRow)]
pub struct GroupRow {
    pub name: String,
    pub members: String,
    pub created_at: i64,
}

impl TryFrom<GroupRow> for Group {
    type Error = StoreError;

    fn try_from(row: GroupRow) -> Result<Self, StoreError> {
        let members = row
            .members
            .split(' ')
            .filter(|m| !m.is_empty())
            .map(|m| {
                m.parse::<Member>().map_err(|err| {
                    StoreError::Corrupt(format!("policy_groups.members of {}: {err}", row.name))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Group {
            name: row.name,
            members,
            created_at: row.created_at,
        })
    }
}

/// The members of a group as `policy_groups.members` keeps them.
pub fn members_text(group: &Group) -> String {
    group
        .members
        .iter()
        .map(Member::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A row of `policy_rules`.
#[derive(Debug, sqlx::FromRow)]
pub struct RuleRow {
    pub id: i64,
    pub feature: String,
    pub kind: String,
    pub seats: i64,
    pub group_name: Option<String>,
    pub each: bool,
    pub created_at: i64,
}

impl TryFrom<RuleRow> for Rule {
    type Error = StoreError;

    fn try_from(row: RuleRow) -> Result<Self, StoreError> {
        let kind = RuleKind::parse(&row.kind)
            .ok_or_else(|| StoreError::Corrupt(format!("policy_rules.kind {:?}", row.kind)))?;
        Ok(Rule {
            id: unsigned("policy_rules.id", row.id)?,
            spec: RuleSpec {
                feature: row.feature,
                kind,
                seats: unsigned("policy_rules.seats", row.seats)?,
                group: row.group_name,
                each: row.each,
            },
            created_at: row.created_at,
        })
    }
}

/// A row of `feature_requires`: a checkout of `feature` also takes a seat of `requires`.
#[derive(Debug, sqlx::FromRow)]
pub struct RequiresRow {
    pub feature: String,
    pub requires: String,
}

impl LoadedRows {
    /// The snapshot the pool is rebuilt from, and the row number of every lease.
    pub fn into_snapshot(
        self,
    ) -> Result<(crate::core::Snapshot, super::writer::LeaseRows), StoreError> {
        let meta = self.meta;
        let counter = |key: &str| counter(key, meta.get(key).cloned());
        let LoadedLeases { leases, rows } = self.leases;
        let snapshot = crate::core::Snapshot {
            entitlements: convert(self.entitlements)?,
            leases,
            users: convert(self.users)?,
            tokens: convert(self.tokens)?,
            next_user_id: counter("next_user_id")?,
            assignments: convert(self.assignments)?,
            next_entitlement_id: counter("next_entitlement_id")?,
            next_assignment_id: counter("next_assignment_id")?,
            requires: self
                .requires
                .into_iter()
                .map(|row| (row.feature, row.requires))
                .collect(),
            groups: convert(self.groups)?,
            rules: convert(self.rules)?,
            next_rule_id: counter("next_rule_id")?,
            marks: self.marks.into_iter().collect(),
            purchases: convert(self.purchases)?,
            grants: convert(self.grants)?,
            consumptions: convert(self.consumptions)?,
            next_purchase_id: counter("next_purchase_id")?,
        };
        Ok((snapshot, rows))
    }
}
