//! The batch writer and the audit and outbox reads, one source for every backend:
//! [`batch_writer!`] expands them for a database type and its connection, in the backend's
//! own module. The statements are the
//! same on SQLite and PostgreSQL; `QueryBuilder` writes each backend's placeholders.
//! [`LeaseRows`] keeps the row numbers of the leases for both.

use std::collections::HashMap;

use tally_protocol::LeaseId;

use crate::core::Batch;

/// Expands the batch writer for `$db` (`sqlx::Sqlite`, `sqlx::Postgres`) and its connection
/// type: `insert_token`, `add_owner_token_in`, `insert_rows`, `delete_in`, `where_in`, `set_counter`,
/// `write_batch`, `read_audit_page` and `read_pending`, the lease history's `write_history`,
/// `read_usage`, `read_users` and `prune_rows`, with multi-row statements of at most `CHUNK` rows. The module that expands
/// it imports `QueryBuilder`, `Separated`, `Encode`, `Type`, `Batch`, `Lease`, `LeaseSource`,
/// `StoreError` and `token_id`, and defines `CHUNK` and `GREATEST` (the two-argument
/// maximum: `MAX` or `GREATEST`) and `LEAST` (`MIN` or `LEAST`).
macro_rules! batch_writer {
    ($db:ty, $conn:ty) => {
        /// Writes one token row outside the engine (first start, `tallyd owner-token`).
        async fn insert_token(
            conn: &mut $conn,
            hash: &[u8; 32],
            user_id: i64,
            label: &str,
            now: i64,
        ) -> Result<(), StoreError> {
            let mut q = QueryBuilder::<$db>::new(
                "INSERT INTO tokens (id, hash, user_id, label, created_at) VALUES (",
            );
            q.separated(", ")
                .push_bind(token_id(hash))
                .push_bind(&hash[..])
                .push_bind(user_id)
                .push_bind(label)
                .push_bind(now);
            q.push(")");
            q.build().execute(conn).await?;
            Ok(())
        }

        /// `tallyd owner-token`, inside the caller's transaction: adds a token for the owner
        /// and, with `revoke_others`, deletes every other of theirs first. Returns the
        /// owner's username and how many tokens were deleted.
        async fn add_owner_token_in(
            conn: &mut $conn,
            token_hash: &[u8; 32],
            now: i64,
            revoke_others: bool,
        ) -> Result<(String, u64), StoreError> {
            let owner: Option<(i64, String)> = sqlx::query_as(
                "SELECT id, username FROM users WHERE role = 'owner' ORDER BY id LIMIT 1",
            )
            .fetch_optional(&mut *conn)
            .await?;
            let Some((user_id, username)) = owner else {
                return Err(StoreError::Corrupt(
                    "there is no owner account; start tallyd once to create it".into(),
                ));
            };
            let (revoked, label) = if revoke_others {
                let mut q = QueryBuilder::<$db>::new("DELETE FROM tokens WHERE user_id = ");
                q.push_bind(user_id);
                let revoked = q.build().execute(&mut *conn).await?.rows_affected();
                (revoked, "tallyd owner-token --revoke-others")
            } else {
                (0, "tallyd owner-token")
            };
            insert_token(conn, token_hash, user_id, label, now).await?;
            Ok((username, revoked))
        }

        /// Inserts `rows` into `table` with multi-row statements of at most [`CHUNK`] rows, as
        /// many as [`in_shapes`] makes. `bind`
        /// binds one row's values in the order of `columns`; `tail` ends every statement (an
        /// `ON CONFLICT` clause, or nothing).
        async fn insert_rows<'a, T>(
            conn: &mut $conn,
            table: &str,
            columns: &[&str],
            rows: &'a [T],
            tail: &str,
            mut bind: impl FnMut(&mut Separated<'_, 'a, $db, &'static str>, &'a T),
        ) -> Result<(), StoreError> {
            for chunk in $crate::store::writer::in_shapes(rows, CHUNK) {
                let mut q =
                    QueryBuilder::<$db>::new(format!("INSERT INTO {table} ({}) ", columns.join(", ")));
                q.push_values(chunk, |mut values, row| bind(&mut values, row));
                q.push(tail);
                q.build().execute(&mut *conn).await?;
            }
            Ok(())
        }

        /// Deletes the rows of `table` whose `column` is one of `values`.
        async fn delete_in<'a, V>(
            conn: &mut $conn,
            table: &str,
            column: &str,
            values: &'a [V],
        ) -> Result<(), StoreError>
        where
            V: Sync,
            &'a V: Encode<'a, $db> + Type<$db>,
        {
            let head = format!("DELETE FROM {table} WHERE {column} IN (");
            where_in(conn, &head, values, ")").await
        }

        /// Runs `head`, a list of `values`, `tail` as one statement per run of values that
        /// [`in_shapes`] makes.
        async fn where_in<'a, V>(
            conn: &mut $conn,
            head: &str,
            values: &'a [V],
            tail: &str,
        ) -> Result<(), StoreError>
        where
            V: Sync,
            &'a V: Encode<'a, $db> + Type<$db>,
        {
            for chunk in $crate::store::writer::in_shapes(values, CHUNK) {
                let mut q = QueryBuilder::<$db>::new(head);
                let mut list = q.separated(", ");
                for value in chunk {
                    list.push_bind(value);
                }
                q.push(tail);
                q.build().execute(&mut *conn).await?;
            }
            Ok(())
        }

        /// Sets a counter in `meta`.
        async fn set_counter(
            conn: &mut $conn,
            key: &str,
            value: Option<u64>,
        ) -> Result<(), StoreError> {
            if let Some(value) = value {
                let mut q = QueryBuilder::<$db>::new("INSERT INTO meta (key, value) VALUES (");
                q.separated(", ").push_bind(key).push_bind(value.to_string());
                q.push(") ON CONFLICT (key) DO UPDATE SET value = excluded.value");
                q.build().execute(conn).await?;
            }
            Ok(())
        }

        /// Ids as the database stores them.
        fn stored_ids(ids: &[u64]) -> Vec<i64> {
            ids.iter().map(|id| *id as i64).collect()
        }

        /// Writes every list of the batch as multi-row statements.
        ///
        /// `lease_rows` are the row numbers of `batch.leases_added`, in order; `removed_rows` those
        /// of the leases to delete.
        async fn write_batch(
            conn: &mut $conn,
            batch: &Batch,
            lease_rows: &[i64],
            removed_rows: &[i64],
        ) -> Result<(), StoreError> {
            // Tokens first: they point at the users.
            where_in(
                conn,
                "DELETE FROM tokens WHERE user_id IN (SELECT id FROM users WHERE username IN (",
                &batch.users_removed,
                "))",
            )
            .await?;
            delete_in(conn, "users", "username", &batch.users_removed).await?;
            insert_rows(
                conn,
                "users",
                &["id", "username", "name", "role", "state", "created_at"],
                &batch.users_upserted,
                " ON CONFLICT (id) DO UPDATE SET name = excluded.name, role = excluded.role, state = excluded.state",
                |b, u| {
                    b.push_bind(u.id as i64)
                        .push_bind(&u.username)
                        .push_bind(&u.name)
                        .push_bind(u.role.as_str())
                        .push_bind(u.state.as_str())
                        .push_bind(u.created_at);
                },
            )
            .await?;
            set_counter(conn, "next_user_id", batch.next_user_id).await?;
            delete_in(conn, "tokens", "id", &batch.tokens_removed).await?;
            insert_rows(
                conn,
                "tokens",
                &["id", "hash", "user_id", "label", "created_at", "last_used"],
                &batch.tokens_added,
                "",
                |b, t| {
                    b.push_bind(&t.id)
                        .push_bind(&t.hash[..])
                        .push_bind(t.user as i64)
                        .push_bind(&t.label)
                        .push_bind(t.created_at)
                        .push_bind(t.last_used);
                },
            )
            .await?;
            for (id, at) in &batch.tokens_used {
                let mut q = QueryBuilder::<$db>::new("UPDATE tokens SET last_used = ");
                q.push_bind(at).push(" WHERE id = ").push_bind(id);
                q.build().execute(&mut *conn).await?;
            }
            insert_rows(
                conn,
                "assignments",
                &[
                    "id",
                    "username",
                    "feature",
                    "entitlement",
                    "seats",
                    "expires_at",
                    "created_at",
                ],
                &batch.assignments_upserted,
                " ON CONFLICT (id) DO UPDATE SET seats = excluded.seats, expires_at = excluded.expires_at",
                |b, a| {
                    b.push_bind(a.id as i64)
                        .push_bind(&a.user)
                        .push_bind(&a.feature)
                        .push_bind(a.entitlement as i64)
                        .push_bind(a.seats as i64)
                        .push_bind(a.expires_at)
                        .push_bind(a.created_at);
                },
            )
            .await?;
            let removed = stored_ids(&batch.assignments_removed);
            delete_in(conn, "assignments", "id", &removed).await?;
            insert_rows(
                conn,
                "outbox",
                &["uid", "at", "kind", "subject", "feature", "detail"],
                &batch.notifications,
                "",
                |b, n| {
                    b.push_bind(&n.id)
                        .push_bind(n.at)
                        .push_bind(&n.kind)
                        .push_bind(&n.subject)
                        .push_bind(&n.feature)
                        .push_bind(&n.text);
                },
            )
            .await?;
            insert_rows(
                conn,
                "notify_marks",
                &["key", "at"],
                &batch.marks,
                " ON CONFLICT (key) DO UPDATE SET at = excluded.at",
                |b, (key, at)| {
                    b.push_bind(key).push_bind(*at);
                },
            )
            .await?;
            set_counter(conn, "next_assignment_id", batch.next_assignment_id).await?;
            insert_rows(
                conn,
                "entitlements",
                &[
                    "id",
                    "feature",
                    "seats",
                    "starts_at",
                    "expires_at",
                    "kind",
                    "borrowable",
                    "max_borrow_secs",
                    "reference",
                ],
                &batch.entitlements_added,
                " ON CONFLICT (id) DO UPDATE SET seats = excluded.seats, starts_at = excluded.starts_at, expires_at = excluded.expires_at, borrowable = excluded.borrowable, max_borrow_secs = excluded.max_borrow_secs, reference = excluded.reference",
                |b, e| {
                    b.push_bind(e.id as i64)
                        .push_bind(&e.feature)
                        .push_bind(e.seats as i64)
                        .push_bind(e.starts_at)
                        .push_bind(e.expires_at)
                        .push_bind(e.kind.as_str())
                        .push_bind(e.borrowable)
                        .push_bind(e.max_borrow_secs as i64)
                        .push_bind(&e.reference);
                },
            )
            .await?;
            let added: Vec<(&Lease, i64)> = batch
                .leases_added
                .iter()
                .zip(lease_rows.iter().copied())
                .collect();
            insert_rows(
                conn,
                "leases",
                &[
                    "seq",
                    "id",
                    "feature",
                    "seats",
                    "username",
                    "host",
                    "client_id",
                    "request_id",
                    "kind",
                    "source_assignment",
                    "granted_at",
                    "expires_at",
                    "entitlement",
                    "program",
                    "pid",
                    "address",
                    "taken_with",
                ],
                &added,
                " ON CONFLICT (seq) DO UPDATE SET host = excluded.host, client_id = excluded.client_id, expires_at = excluded.expires_at, program = excluded.program, pid = excluded.pid, address = excluded.address, taken_with = excluded.taken_with",
                |b, (l, seq)| {
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
                        .push_bind(l.entitlement.map(|id| id as i64))
                        .push_bind(&l.peer.program)
                        .push_bind(i64::from(l.peer.pid))
                        .push_bind(&l.peer.address)
                        .push_bind(l.taken_with.as_ref().map(|id| id.0.to_vec()));
                },
            )
            .await?;
            delete_in(conn, "leases", "seq", removed_rows).await?;
            for (feature, requires) in &batch.requires_removed {
                let mut q =
                    QueryBuilder::<$db>::new("DELETE FROM feature_requires WHERE feature = ");
                q.push_bind(feature)
                    .push(" AND requires = ")
                    .push_bind(requires);
                q.build().execute(&mut *conn).await?;
            }
            delete_in(conn, "policy_groups", "name", &batch.groups_removed).await?;
            let groups: Vec<(&crate::core::Group, String)> = batch
                .groups_upserted
                .iter()
                .map(|g| (g, crate::store::rows::members_text(g)))
                .collect();
            insert_rows(
                conn,
                "policy_groups",
                &["name", "members", "created_at"],
                &groups,
                " ON CONFLICT (name) DO UPDATE SET members = excluded.members",
                |b, (group, members)| {
                    b.push_bind(&group.name)
                        .push_bind(members)
                        .push_bind(group.created_at);
                },
            )
            .await?;
            insert_rows(
                conn,
                "policy_rules",
                &["id", "feature", "kind", "seats", "group_name", "each", "created_at"],
                &batch.rules_added,
                "",
                |b, rule| {
                    b.push_bind(rule.id as i64)
                        .push_bind(&rule.spec.feature)
                        .push_bind(rule.spec.kind.as_str())
                        .push_bind(i64::from(rule.spec.seats))
                        .push_bind(&rule.spec.group)
                        .push_bind(rule.spec.each)
                        .push_bind(rule.created_at);
                },
            )
            .await?;
            let removed_rules: Vec<i64> = batch.rules_removed.iter().map(|&id| id as i64).collect();
            delete_in(conn, "policy_rules", "id", &removed_rules).await?;
            set_counter(conn, "next_rule_id", batch.next_rule_id).await?;
            write_credits(conn, batch).await?;
            insert_rows(
                conn,
                "feature_requires",
                &["feature", "requires"],
                &batch.requires_added,
                " ON CONFLICT (feature, requires) DO NOTHING",
                |b, (feature, requires)| {
                    b.push_bind(feature).push_bind(requires);
                },
            )
            .await?;
            let removed = stored_ids(&batch.entitlements_removed);
            delete_in(conn, "entitlements", "id", &removed).await?;
            insert_rows(
                conn,
                "audit",
                &[
                    "at", "actor", "action", "subject", "feature", "outcome", "reason",
                ],
                &batch.audit,
                "",
                |b, e| {
                    b.push_bind(e.at)
                        .push_bind(&e.actor)
                        .push_bind(&e.action)
                        .push_bind(&e.subject)
                        .push_bind(&e.feature)
                        .push_bind(&e.outcome)
                        .push_bind(&e.reason);
                },
            )
            .await?;
            set_counter(conn, "next_entitlement_id", batch.next_entitlement_id).await?;
            write_history(conn, &batch.history).await?;
            Ok(())
        }

        /// Writes metered credits (SPEC §11): purchases as they stand (what each has left),
        /// users' access, and each new consumption with its first answer. A consumption's
        /// key is (user, request id); a retry writes nothing, so a conflict can only be the
        /// same row again and is left as it is.
        async fn write_credits(conn: &mut $conn, batch: &Batch) -> Result<(), StoreError> {
            insert_rows(
                conn,
                "credit_purchases",
                &["id", "meter", "amount", "remaining", "expires_at", "reference"],
                &batch.purchases_upserted,
                " ON CONFLICT (id) DO UPDATE SET remaining = excluded.remaining",
                |b, p| {
                    b.push_bind(p.id as i64)
                        .push_bind(&p.meter)
                        .push_bind(p.amount as i64)
                        .push_bind(p.left as i64)
                        .push_bind(p.expires_at)
                        .push_bind(&p.reference);
                },
            )
            .await?;
            set_counter(conn, "next_purchase_id", batch.next_purchase_id).await?;
            insert_rows(
                conn,
                "credit_grants",
                &["user_id", "meter", "access", "quota", "used"],
                &batch.grants_upserted,
                " ON CONFLICT (user_id, meter) DO UPDATE SET access = excluded.access, quota = excluded.quota, used = excluded.used",
                |b, g| {
                    let (access, quota) = super::rows::access_columns(g.access);
                    b.push_bind(g.user as i64)
                        .push_bind(&g.meter)
                        .push_bind(access)
                        .push_bind(quota)
                        .push_bind(g.used as i64);
                },
            )
            .await?;
            insert_rows(
                conn,
                "credit_consumptions",
                &[
                    "user_id", "request_id", "at", "username", "meter", "amount", "code",
                    "message", "balance", "remaining",
                ],
                &batch.consumptions,
                " ON CONFLICT (user_id, request_id) DO NOTHING",
                |b, c| {
                    let (code, message, balance, remaining) = match &c.answer {
                        Ok(done) => (None, String::new(), done.balance as i64, done.remaining.map(|r| r as i64)),
                        Err(err) => (Some(err.code.as_str()), err.message.clone(), 0, None),
                    };
                    b.push_bind(c.user as i64)
                        .push_bind(&c.request[..])
                        .push_bind(c.at)
                        .push_bind(&c.username)
                        .push_bind(&c.meter)
                        .push_bind(c.amount as i64)
                        .push_bind(code)
                        .push_bind(message)
                        .push_bind(balance)
                        .push_bind(remaining);
                },
            )
            .await?;
            Ok(())
        }

        /// The credits consumed in `[since, until)`, summed per meter, user and whole UTC
        /// hour (only granted consumptions count): what `report usage` groups into its
        /// periods.
        async fn read_meter_hours(
            conn: &mut $conn,
            meter: Option<&str>,
            since: i64,
            until: i64,
        ) -> Result<Vec<crate::core::report::MeterHour>, StoreError> {
            let mut q = QueryBuilder::<$db>::new(
                "SELECT meter, username, at - (at % 3600000) AS hour_start, CAST(SUM(amount) AS BIGINT) AS consumed, COUNT(*) AS consumptions FROM credit_consumptions WHERE code IS NULL AND at >= ",
            );
            q.push_bind(since).push(" AND at < ").push_bind(until);
            if let Some(meter) = meter {
                q.push(" AND meter = ").push_bind(meter);
            }
            q.push(" GROUP BY meter, username, at - (at % 3600000)");
            let rows: Vec<(String, String, i64, i64, i64)> =
                q.build_query_as().fetch_all(&mut *conn).await?;
            Ok(rows
                .into_iter()
                .map(|(meter, user, hour_start, consumed, consumptions)| {
                    crate::core::report::MeterHour {
                        meter,
                        user,
                        hour_start,
                        consumed: consumed.max(0) as u64,
                        consumptions: consumptions.max(0) as u64,
                    }
                })
                .collect())
        }

        /// Upserts the hourly rollups of lease history, merged as `UsageHour::merge` and
        /// `UserHour::merge` do (`GREATEST` is the backend's two-argument maximum).
        async fn write_history(
            conn: &mut $conn,
            history: &crate::core::history::HistoryRows,
        ) -> Result<(), StoreError> {
            let hours: Vec<&crate::core::history::UsageHour> = history.hours.values().collect();
            let tail = format!(
                " ON CONFLICT (feature, hour_start) DO UPDATE SET \
                 pool_max = {GREATEST}(usage_hours.pool_max, excluded.pool_max), \
                 pool_last = COALESCE(excluded.pool_last, usage_hours.pool_last), \
                 peak = {GREATEST}(usage_hours.peak, excluded.peak), \
                 in_use_last = COALESCE(excluded.in_use_last, usage_hours.in_use_last), \
                 seat_ms = usage_hours.seat_ms + excluded.seat_ms, \
                 checkouts = usage_hours.checkouts + excluded.checkouts, \
                 denials = usage_hours.denials + excluded.denials"
            );
            insert_rows(
                conn,
                "usage_hours",
                &[
                    "feature",
                    "hour_start",
                    "pool_max",
                    "pool_last",
                    "peak",
                    "in_use_last",
                    "seat_ms",
                    "checkouts",
                    "denials",
                ],
                &hours,
                &tail,
                |b, h| {
                    b.push_bind(&h.feature)
                        .push_bind(h.hour_start)
                        .push_bind(i64::from(h.pool_max))
                        .push_bind(h.pool_last.map(i64::from))
                        .push_bind(i64::from(h.peak))
                        .push_bind(h.in_use_last.map(i64::from))
                        .push_bind(h.seat_ms)
                        .push_bind(h.checkouts)
                        .push_bind(h.denials);
                },
            )
            .await?;
            let users: Vec<&crate::core::history::UserHour> =
                history.user_hours.values().collect();
            let tail = format!(
                " ON CONFLICT (feature, username, hour_start) DO UPDATE SET \
                 seat_ms = usage_user_hours.seat_ms + excluded.seat_ms, \
                 checkouts = usage_user_hours.checkouts + excluded.checkouts, \
                 denials = usage_user_hours.denials + excluded.denials, \
                 last_used = {GREATEST}(COALESCE(usage_user_hours.last_used, excluded.last_used), \
                 COALESCE(excluded.last_used, usage_user_hours.last_used))"
            );
            insert_rows(
                conn,
                "usage_user_hours",
                &[
                    "feature",
                    "username",
                    "hour_start",
                    "seat_ms",
                    "checkouts",
                    "denials",
                    "last_used",
                ],
                &users,
                &tail,
                |b, u| {
                    b.push_bind(&u.feature)
                        .push_bind(&u.user)
                        .push_bind(u.hour_start)
                        .push_bind(u.seat_ms)
                        .push_bind(u.checkouts)
                        .push_bind(u.denials)
                        .push_bind(u.last_used);
                },
            )
            .await?;
            Ok(())
        }

        /// The leases open now, of one feature or all (see `Store::usage_history`).
        async fn read_open_leases(
            conn: &mut $conn,
            feature: Option<&str>,
        ) -> Result<Vec<crate::core::report::OpenLease>, StoreError> {
            let mut q = QueryBuilder::<$db>::new(
                "SELECT feature, username, seats, granted_at FROM leases WHERE TRUE",
            );
            if let Some(feature) = feature {
                q.push(" AND feature = ").push_bind(feature.to_string());
            }
            let rows: Vec<(String, String, i64, i64)> =
                q.build_query_as().fetch_all(&mut *conn).await?;
            Ok(rows
                .into_iter()
                .map(|(feature, user, seats, granted_at)| crate::core::report::OpenLease {
                    feature,
                    user,
                    seats: u32::try_from(seats).unwrap_or(0),
                    granted_at,
                })
                .collect())
        }

        /// What `report usage` reads, inside the caller's read transaction (see
        /// `Store::usage_history`).
        async fn read_usage(
            conn: &mut $conn,
            feature: Option<&str>,
            since: i64,
            until: i64,
            by: tally_protocol::ReportPeriod,
            periods: &[crate::core::report::Period],
        ) -> Result<crate::core::report::UsageData, StoreError> {
            use crate::core::history::UsageHour;
            let open = read_open_leases(conn, feature).await?;
            let count = |n: i64| u32::try_from(n).unwrap_or(0);
            let mut q = QueryBuilder::<$db>::new(
                "SELECT feature, hour_start, pool_max, pool_last, peak, in_use_last, seat_ms, checkouts, denials FROM usage_hours WHERE hour_start >= ",
            );
            q.push_bind(since).push(" AND hour_start < ").push_bind(until);
            if let Some(feature) = feature {
                q.push(" AND feature = ").push_bind(feature.to_string());
            }
            #[allow(clippy::type_complexity)]
            let rows: Vec<(String, i64, i64, Option<i64>, i64, Option<i64>, i64, i64, i64)> =
                q.build_query_as().fetch_all(&mut *conn).await?;
            let hours = rows
                .into_iter()
                .map(|(feature, hour_start, pool_max, pool_last, peak, in_use_last, seat_ms, checkouts, denials)| UsageHour {
                    feature,
                    hour_start,
                    pool_max: count(pool_max),
                    pool_last: pool_last.map(count),
                    peak: count(peak),
                    in_use_last: in_use_last.map(count),
                    seat_ms,
                    checkouts,
                    denials,
                })
                .collect();
            let mut q = QueryBuilder::<$db>::new("SELECT f.feature, (SELECT u.in_use_last FROM usage_hours u WHERE u.feature = f.feature AND u.in_use_last IS NOT NULL AND u.hour_start < ");
            q.push_bind(since);
            q.push(" ORDER BY u.hour_start DESC LIMIT 1), (SELECT u.pool_last FROM usage_hours u WHERE u.feature = f.feature AND u.pool_last IS NOT NULL AND u.hour_start < ");
            q.push_bind(since);
            q.push(" ORDER BY u.hour_start DESC LIMIT 1) FROM (SELECT DISTINCT feature FROM usage_hours WHERE hour_start < ");
            q.push_bind(since);
            if let Some(feature) = feature {
                q.push(" AND feature = ").push_bind(feature.to_string());
            }
            q.push(") f");
            let rows: Vec<(String, Option<i64>, Option<i64>)> =
                q.build_query_as().fetch_all(&mut *conn).await?;
            let before = rows
                .into_iter()
                .map(|(feature, in_use, pool)| (feature, in_use.map(count), pool.map(count)))
                .collect();
            let holders = crate::core::report::open_holders(&open);
            let mut q = QueryBuilder::<$db>::new("WITH ");
            // Months have no fixed length: their bounds are a table; hours, days and ISO
            // weeks are computed from the hour, so that no join multiplies the rows.
            let month = by == tally_protocol::ReportPeriod::Month;
            if month {
                q.push("p(s, e) AS (");
                q.push_values(periods, |mut b, p| {
                    b.push_bind(p.from).push_bind(p.to);
                });
                q.push("), ");
            }
            if !holders.is_empty() {
                q.push("o(feature, username, g) AS (");
                q.push_values(&holders, |mut b, ((feature, user), g)| {
                    b.push_bind(feature.clone()).push_bind(user.clone()).push_bind(*g);
                });
                q.push("), ");
            }
            let length = match by {
                tally_protocol::ReportPeriod::Day => Some(86_400_000i64),
                tally_protocol::ReportPeriod::Week => Some(7 * 86_400_000i64),
                _ => None,
            };
            // The start of the period of a row's hour, cut at the range's start, and its
            // end, cut at the range's end: `Period::from` and `Period::to`.
            let (start, end) = match (month, length) {
                (true, _) => ("p.s".to_string(), "p.e".to_string()),
                (false, Some(len)) => {
                    // Days from 1970-01-01; weeks from a Monday (1970-01-05 is day 4).
                    let offset = if by == tally_protocol::ReportPeriod::Week { 3 } else { 0 };
                    let days = len / 86_400_000;
                    let aligned = format!(
                        "((u.hour_start / 86400000 + {offset}) / {days} * {days} - {offset}) * 86400000"
                    );
                    (
                        format!("{GREATEST}({aligned}, {since})"),
                        format!("{LEAST}({aligned} + {len}, {until})"),
                    )
                }
                (false, None) => (
                    "u.hour_start".to_string(),
                    "(u.hour_start + 3600000)".to_string(),
                ),
            };
            q.push(format!("x(z) AS (SELECT 1) SELECT u.feature, {start}, COUNT(DISTINCT u.username) FROM usage_user_hours u "));
            if month {
                q.push("JOIN p ON u.hour_start >= p.s AND u.hour_start < p.e ");
            }
            if !holders.is_empty() {
                q.push(format!("LEFT JOIN o ON o.feature = u.feature AND o.username = u.username AND o.g < {end} "));
            }
            q.push("WHERE (u.seat_ms > 0 OR u.checkouts > 0) AND u.hour_start >= ");
            q.push_bind(since).push(" AND u.hour_start < ").push_bind(until);
            if let Some(feature) = feature {
                q.push(" AND u.feature = ").push_bind(feature.to_string());
            }
            if !holders.is_empty() {
                q.push(" AND o.username IS NULL");
            }
            q.push(format!(" GROUP BY u.feature, {start}"));
            let rows: Vec<(String, i64, i64)> = q.build_query_as().fetch_all(&mut *conn).await?;
            let distinct = rows
                .into_iter()
                .map(|(feature, from, n)| (feature, from, count(n)))
                .collect();
            Ok(crate::core::report::UsageData {
                hours,
                before,
                distinct,
                open,
            })
        }

        /// What `report users` reads, inside the caller's read transaction (see
        /// `Store::user_history`).
        async fn read_users(
            conn: &mut $conn,
            feature: Option<&str>,
            since: i64,
            until: i64,
        ) -> Result<crate::core::report::UsersData, StoreError> {
            let open = read_open_leases(conn, feature).await?;
            let mut q = QueryBuilder::<$db>::new(
                "SELECT feature, username, CAST(SUM(seat_ms) AS BIGINT), CAST(SUM(checkouts) AS BIGINT), CAST(SUM(denials) AS BIGINT), MAX(last_used) FROM usage_user_hours WHERE hour_start >= ",
            );
            q.push_bind(since).push(" AND hour_start < ").push_bind(until);
            if let Some(feature) = feature {
                q.push(" AND feature = ").push_bind(feature.to_string());
            }
            q.push(" GROUP BY feature, username");
            #[allow(clippy::type_complexity)]
            let rows: Vec<(String, String, i64, i64, i64, Option<i64>)> =
                q.build_query_as().fetch_all(&mut *conn).await?;
            let rows = rows
                .into_iter()
                .map(|(feature, user, seat_ms, checkouts, denials, last_used)| {
                    crate::core::history::UserHour {
                        feature,
                        user,
                        hour_start: since,
                        seat_ms,
                        checkouts,
                        denials,
                        last_used,
                    }
                })
                .collect();
            Ok(crate::core::report::UsersData { rows, open })
        }

        /// Deletes at most `limit` rollup rows of each table from before `before`, keeping
        /// each feature's last seats held and pool set before it (see `Store::prune_history`).
        async fn prune_rows(
            conn: &mut $conn,
            before: i64,
            limit: i64,
        ) -> Result<u64, StoreError> {
            let mut q = QueryBuilder::<$db>::new(
                "DELETE FROM usage_user_hours WHERE (feature, username, hour_start) IN (SELECT feature, username, hour_start FROM usage_user_hours WHERE hour_start < ",
            );
            q.push_bind(before).push(" LIMIT ").push_bind(limit).push(")");
            let mut deleted = q.build().execute(&mut *conn).await?.rows_affected();
            let mut q = QueryBuilder::<$db>::new(
                "DELETE FROM usage_hours WHERE (feature, hour_start) IN (SELECT r.feature, r.hour_start FROM usage_hours r WHERE r.hour_start < ",
            );
            q.push_bind(before);
            for column in ["in_use_last", "pool_last"] {
                q.push(format!(" AND (r.{column} IS NULL OR EXISTS (SELECT 1 FROM usage_hours l WHERE l.feature = r.feature AND l.{column} IS NOT NULL AND l.hour_start > r.hour_start AND l.hour_start < "));
                q.push_bind(before).push("))");
            }
            q.push(" LIMIT ").push_bind(limit).push(")");
            deleted += q.build().execute(&mut *conn).await?.rows_affected();
            // Consumptions go with the history, but never one whose answer a retry may
            // still need (see `load`).
            let mut q = QueryBuilder::<$db>::new(
                "DELETE FROM credit_consumptions WHERE (user_id, request_id) IN (SELECT user_id, request_id FROM credit_consumptions WHERE at < ",
            );
            q.push_bind(before).push(format!(
                " AND at < (SELECT MAX(at) FROM credit_consumptions) - {} LIMIT ",
                crate::core::credits::ANSWER_KEEP_MS
            ));
            q.push_bind(limit).push(")");
            deleted += q.build().execute(&mut *conn).await?.rows_affected();
            Ok(deleted)
        }

        /// One page of the audit log, newest first (see `Store::audit`).
        async fn read_audit_page(
            pool: &sqlx::Pool<$db>,
            query: &tally_protocol::AuditQuery,
            before: Option<u64>,
            max_bytes: usize,
        ) -> Result<tally_protocol::AuditPage, StoreError> {
            use futures::TryStreamExt;
            let mut q = QueryBuilder::<$db>::new(
                "SELECT id, at, actor, action, subject, feature, outcome, reason FROM audit WHERE TRUE",
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
            let mut rows = q
                .build_query_as::<super::rows::AuditRow>()
                .fetch(pool);
            let mut events = Vec::new();
            let mut last_id = 0i64;
            let mut bytes = 0;
            let mut more = false;
            while let Some(row) = rows.try_next().await? {
                if events.len() == limit as usize || (!events.is_empty() && bytes >= max_bytes) {
                    more = true;
                    break;
                }
                last_id = row.id;
                let event = tally_protocol::AuditEvent::from(row);
                bytes += super::event_size(&event);
                events.push(event);
            }
            let next = more.then_some(last_id as u64);
            Ok(tally_protocol::AuditPage { events, next })
        }

        /// Notifications not yet settled with an outbox id above `after`, oldest first (see
        /// `Store::unsettled_notifications`).
        async fn read_pending(
            pool: &sqlx::Pool<$db>,
            after: i64,
            limit: u32,
        ) -> Result<Vec<(i64, crate::core::Notification)>, StoreError> {
            let mut q = QueryBuilder::<$db>::new(
                "SELECT id, uid, at, kind, subject, feature, detail FROM outbox WHERE delivered_at IS NULL AND id > ",
            );
            q.push_bind(after);
            q.push(" ORDER BY id LIMIT ");
            q.push_bind(i64::from(limit));
            let rows: Vec<super::rows::OutboxRow> = q.build_query_as().fetch_all(pool).await?;
            Ok(rows.into_iter().map(Into::into).collect())
        }

        /// The deliveries of these outbox ids (see `Store::deliveries`).
        async fn read_deliveries(
            pool: &sqlx::Pool<$db>,
            ids: &[i64],
        ) -> Result<Vec<super::Delivery>, StoreError> {
            let mut out = Vec::new();
            for chunk in ids.chunks(CHUNK) {
                let mut q = QueryBuilder::<$db>::new(
                    "SELECT outbox_id, sink, attempts, next_at, delivered_at, failed_at, last_error FROM notify_deliveries WHERE outbox_id IN (",
                );
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                q.push(")");
                let rows: Vec<super::rows::DeliveryRow> =
                    q.build_query_as().fetch_all(pool).await?;
                for row in rows {
                    out.push(row.try_into()?);
                }
            }
            Ok(out)
        }

        /// Inserts or replaces one delivery (see `Store::record_delivery`).
        async fn write_delivery(
            pool: &sqlx::Pool<$db>,
            delivery: &super::Delivery,
            now: i64,
        ) -> Result<(), StoreError> {
            let mut q = QueryBuilder::<$db>::new(
                "INSERT INTO notify_deliveries (outbox_id, sink, attempts, next_at, delivered_at, failed_at, last_error, updated_at) VALUES (",
            );
            q.separated(", ")
                .push_bind(delivery.outbox_id)
                .push_bind(delivery.sink.as_str())
                .push_bind(i32::try_from(delivery.attempts).unwrap_or(i32::MAX))
                .push_bind(delivery.next_at)
                .push_bind(delivery.delivered_at)
                .push_bind(delivery.failed_at)
                .push_bind(delivery.last_error.as_deref())
                .push_bind(now);
            q.push(
                ") ON CONFLICT (outbox_id, sink) DO UPDATE SET attempts = excluded.attempts, next_at = excluded.next_at, delivered_at = excluded.delivered_at, failed_at = excluded.failed_at, last_error = excluded.last_error, updated_at = excluded.updated_at",
            );
            q.build().execute(pool).await?;
            Ok(())
        }

        /// Counts the outbox and the deliveries (see `Store::delivery_summary`).
        async fn read_delivery_summary(
            pool: &sqlx::Pool<$db>,
        ) -> Result<super::DeliverySummary, StoreError> {
            let count = |n: i64| u64::try_from(n).unwrap_or(0);
            let (pending,): (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL")
                    .fetch_one(pool)
                    .await?;
            let (failed,): (i64,) = sqlx::query_as(
                "SELECT COUNT(DISTINCT outbox_id) FROM notify_deliveries WHERE failed_at IS NOT NULL",
            )
            .fetch_one(pool)
            .await?;
            let rows: Vec<(String, i64, i64)> = sqlx::query_as(
                "SELECT sink, COUNT(delivered_at), COUNT(failed_at) FROM notify_deliveries GROUP BY sink ORDER BY sink",
            )
            .fetch_all(pool)
            .await?;
            let mut sinks = Vec::with_capacity(rows.len());
            for (sink, delivered, failed) in rows {
                let mut q = QueryBuilder::<$db>::new(
                    "SELECT last_error FROM notify_deliveries WHERE sink = ",
                );
                q.push_bind(sink.as_str());
                q.push(" AND last_error IS NOT NULL ORDER BY updated_at DESC, outbox_id DESC LIMIT 1");
                let last_error: Option<(String,)> = q.build_query_as().fetch_optional(pool).await?;
                sinks.push(super::SinkCounts {
                    sink,
                    delivered: count(delivered),
                    failed: count(failed),
                    last_error: last_error.map(|(e,)| e),
                });
            }
            Ok(super::DeliverySummary {
                pending: count(pending),
                failed: count(failed),
                sinks,
            })
        }
    };
}

pub(super) use batch_writer;

/// The row number (`seq`) of every lease in the table, and the next one to use: leases are
/// stored in grant order, so that a commit appends rows instead of writing pages all over a
/// B-tree of random ids. Every backend keeps one beside its connection pool.
#[derive(Debug, Default)]
pub(super) struct LeaseRows {
    by_id: HashMap<LeaseId, i64>,
    next: i64,
}

/// The row numbers one batch writes and deletes; taken for good by
/// [`LeaseRows::committed`] only once its transaction has committed.
#[derive(Debug)]
pub(super) struct RowPlan {
    /// The row of each of `batch.leases_added`, in order.
    pub added: Vec<i64>,
    /// The rows of `batch.leases_removed` the table holds.
    pub removed: Vec<i64>,
    next: i64,
}

impl LeaseRows {
    /// Records a lease row read at load.
    pub fn loaded(&mut self, id: LeaseId, seq: i64) {
        self.by_id.insert(id, seq);
        self.next = self.next.max(seq + 1);
    }

    /// The rows `batch` writes: an updated lease keeps its row, a new one takes the next.
    pub fn plan(&self, batch: &Batch) -> RowPlan {
        let mut next = self.next;
        let added = batch
            .leases_added
            .iter()
            .map(|lease| {
                self.by_id.get(&lease.id).copied().unwrap_or_else(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect();
        let removed = batch
            .leases_removed
            .iter()
            .filter_map(|id| self.by_id.get(id).copied())
            .collect();
        RowPlan {
            added,
            removed,
            next,
        }
    }

    /// Takes the rows of a committed batch for good.
    pub fn committed(&mut self, batch: &Batch, plan: RowPlan) {
        for (lease, seq) in batch.leases_added.iter().zip(&plan.added) {
            self.by_id.insert(lease.id, *seq);
        }
        for id in &batch.leases_removed {
            self.by_id.remove(id);
        }
        self.next = plan.next;
    }
}

/// `rows` in consecutive runs whose lengths are powers of two, the longest first, none
/// longer than `max`. A multi-row statement of a run then has one of a few shapes (about
/// ten per table), which each connection prepares once and keeps in sqlx's statement
/// cache; one statement per row count would be a new text to parse (and, on PostgreSQL, to
/// prepare in a round trip) at nearly every commit.
pub(crate) fn in_shapes<T>(mut rows: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let most = rows.len().min(max);
        if most == 0 {
            return None;
        }
        let len = 1 << (usize::BITS - 1 - most.leading_zeros());
        let (run, rest) = rows.split_at(len);
        rows = rest;
        Some(run)
    })
}

#[cfg(test)]
mod shape_tests {
    use super::in_shapes;

    #[test]
    fn runs_are_powers_of_two_in_order_covering_every_row_once() {
        for n in 0..2_100usize {
            let rows: Vec<usize> = (0..n).collect();
            let runs: Vec<&[usize]> = in_shapes(&rows, 1000).collect();
            let lens: Vec<usize> = runs.iter().map(|r| r.len()).collect();
            assert!(
                lens.iter().all(|len| len.is_power_of_two() && *len <= 512),
                "{n}: {lens:?}"
            );
            assert!(lens.windows(2).all(|w| w[0] >= w[1]), "{n}: {lens:?}");
            let joined: Vec<usize> = runs.concat();
            assert_eq!(joined, rows, "{n} rows come out in order, each once");
        }
        let lens: Vec<usize> = in_shapes(&[0u8; 37], 1000).map(<[u8]>::len).collect();
        assert_eq!(lens, [32, 4, 1]);
    }
}
