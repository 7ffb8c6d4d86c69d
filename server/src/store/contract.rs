//! The store contract: what every backend must do, checked through the [`Store`] trait alone
//! (no SQL), so that each backend runs the same suite unchanged.
//!
//! [`contract`] takes a fresh, empty store and runs the steps in order; each step starts
//! from the state the ones before it left, which its doc states. The expected state is the
//! core's: a [`Pool`]'s snapshot, or [`Snapshot::apply`], the model of a store that the
//! property tests use.

use tally_protocol::{
    AuditEvent, AuditQuery, Checkout, ClientId, Entitlement, EntitlementKind, FeatureRequirement,
    GroupAdd, GroupMembers, GroupRef, LeaseId, LeaseKind, LeaseSource, NewEntitlement, PolicyAdd,
    RequestId, Role, RuleKind, RuleRef, RuleSpec, UserState,
};

use super::{event_size, Fence, Store};
use crate::core::{
    token_id, Actor, Assignment, Batch, Holder, Lease, Notification, NotificationKind, Peer,
    Policy, Pool, Snapshot, Token, User,
};

/// Audit events of [`audit_pages`] are at or after this time, after everything before them.
const AUDIT_BASE: i64 = 1_000_000_000_000;

/// Runs every step of the contract on `store`, which must be fresh and empty.
pub async fn contract(store: &dyn Store) {
    store.ping().await.expect("an open store answers a ping");
    lease_batches_round_trip(store).await;
    initialise_is_idempotent(store).await;
    owner_tokens(store).await;
    every_kind_of_row_round_trips(store).await;
    audit_pages(store).await;
    outbox(store).await;
    deliveries(store).await;
    prerequisites_round_trip(store).await;
    policy_round_trip(store).await;
    history_rollups(store).await;
    credits_round_trip(store).await;
}

/// On any store, after the steps before: metered credits (SPEC §11) round-trip: purchases
/// with what they have left, users' access (a quota, unlimited, taken away with what was
/// used kept), and consumptions with their first answers, granted or refused, so that a
/// retry after a restart is answered as first and consumes nothing; ids are never reused;
/// the report's sums per meter, user and hour count only what was granted.
pub async fn credits_round_trip(store: &dyn Store) {
    use tally_protocol::{Consume, CreditsAdd, ErrorCode, QuotaRef, QuotaSet, UserAdd};
    let now = 50 * 3_600_000 + 1_234;
    let mut pool = Pool::restore(store.load().await.unwrap(), 60_000, Policy::default(), now);
    let mut batch = Batch::default();
    for (n, name) in ["meter-a@studio", "meter-b@studio"].into_iter().enumerate() {
        let add = UserAdd {
            username: name.into(),
            name: String::new(),
            role: Role::Member,
        };
        let token = crate::core::NewToken {
            token: format!("meter-token-{n}"),
            hash: [0xc0 + n as u8; 32],
        };
        pool.add_user(now, &owner(), &add, token, &mut batch)
            .unwrap();
    }
    let buy = |amount, expires_at, reference: &str| CreditsAdd {
        meter: "cloud".into(),
        amount,
        expires_at,
        reference: reference.into(),
    };
    let first = pool
        .credits_add(now, &owner(), &buy(100, None, ""), &mut batch)
        .unwrap();
    pool.credits_add(
        now,
        &owner(),
        &buy(10, Some(now + 1_000), "PO-7"),
        &mut batch,
    )
    .unwrap();
    let quota = |user: &str, quota| QuotaSet {
        username: user.into(),
        meter: "cloud".into(),
        quota,
    };
    pool.quota_set(
        now,
        &owner(),
        &quota("meter-a@studio", Some(80)),
        &mut batch,
    )
    .unwrap();
    pool.quota_set(now, &owner(), &quota("meter-b@studio", None), &mut batch)
        .unwrap();
    let actor = |name: &str| Actor {
        username: name.into(),
        role: Role::Member,
    };
    let consume = |n: u8, amount| Consume {
        request_id: RequestId([n; 16]),
        meter: "cloud".into(),
        amount,
    };
    let granted = pool
        .consume(now, &actor("meter-a@studio"), &consume(1, 30), &mut batch)
        .unwrap();
    // Drawn from the purchase that ends first: 10 from PO-7, 20 from the first.
    assert_eq!((granted.balance, granted.remaining), (80, Some(50)));
    let refused = pool
        .consume(now, &actor("meter-b@studio"), &consume(2, 200), &mut batch)
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::NoCredit);
    store.commit(&batch, Fence::Single).await.unwrap();
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded, pool.snapshot());
    assert_eq!(loaded.purchases.len(), 2);
    assert_eq!(loaded.consumptions.len(), 2);

    // After a restart: both answers are the first ones, and nothing is written again.
    let mut pool = Pool::restore(loaded, 60_000, Policy::default(), now + 1);
    let mut batch = Batch::default();
    pool.advance(now + 1, &mut batch);
    let again = pool.consume(
        now + 1,
        &actor("meter-a@studio"),
        &consume(1, 30),
        &mut batch,
    );
    assert_eq!(again, Ok(granted));
    let again = pool.consume(
        now + 1,
        &actor("meter-b@studio"),
        &consume(2, 200),
        &mut batch,
    );
    assert_eq!(again, Err(refused));
    assert!(batch.consumptions.is_empty() && batch.purchases_upserted.is_empty());
    let remove = QuotaRef {
        username: "meter-b@studio".into(),
        meter: "cloud".into(),
    };
    pool.quota_remove(now + 1, &owner(), &remove, &mut batch)
        .unwrap();
    let added = pool
        .credits_add(now + 1, &owner(), &buy(5, None, ""), &mut batch)
        .unwrap();
    assert_eq!(added.id, first.id + 2, "purchase ids are never reused");
    store.commit(&batch, Fence::Single).await.unwrap();
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded, pool.snapshot());
    assert!(loaded.grants.iter().any(|g| g.access.is_none()));

    // Past PO-7's end its rest (none: it was drawn first) leaves nothing; the report sums
    // only what was granted.
    let later = now + 2_000;
    let pool = Pool::restore(loaded, 60_000, Policy::default(), later);
    let hours = store.meter_hours(None, 0, later + 3_600_000).await.unwrap();
    assert_eq!(
        hours,
        [crate::core::report::MeterHour {
            meter: "cloud".into(),
            user: "meter-a@studio".into(),
            hour_start: 50 * 3_600_000,
            consumed: 30,
            consumptions: 1,
        }]
    );
    assert!(store
        .meter_hours(Some("render"), 0, later)
        .await
        .unwrap()
        .is_empty());
    let status = pool.snapshot();
    let left: u64 = status.purchases.iter().map(|p| p.left).sum();
    assert_eq!(left, 85);
}

/// On any store: the rollups of lease history merge across commits as the core merges them
/// within a batch (maxima, sums, the latest `*_last`, the latest `last_used`), and the reads
/// of the reports (rows of a range, the last state before it, users per period less those
/// of open leases, sums per user, open leases) agree with the core's reference; pruning
/// keeps each feature's last state.
pub async fn history_rollups(store: &dyn Store) {
    use crate::core::history::{HistoryRows, UsageHour, UserHour};
    use crate::core::report::{distinct_in_rows, periods};
    use tally_protocol::ReportPeriod;
    let hours_of = |since, until| periods(since, until, ReportPeriod::Hour);
    const H: i64 = 3_600_000;
    // Near the times of the steps before, whose leases are still held.
    let h0 = 10 * H;
    let mut first = HistoryRows::default();
    first.in_use("hist-a", h0 - 3 * H, 7);
    first.pool("hist-a", h0 - 3 * H, 9);
    first.in_use("hist-a", h0 + 10, 3);
    first.grant("hist-a", "ana", h0 + 20, 4);
    first.pool("hist-a", h0 + 30, 10);
    first.deny("hist-a", "ben", h0 + 40);
    first.end("hist-a", "ana", 2, h0 - H / 2, h0 + 2 * H + 5, 2);
    first.deny("hist-b", "ana", h0 + 41);
    let mut second = HistoryRows::default();
    second.in_use("hist-a", h0 + 50, 1);
    second.pool("hist-a", h0 + 60, 6);
    second.grant("hist-a", "ana", h0 + 70, 2);
    second.deny("hist-a", "ana", h0 + 80);
    second.end("hist-a", "ben", 1, h0 + 100, h0 + 200, 1);
    second.end("hist-a", "cy", 3, h0 + 4 * H, h0 + 4 * H + 9, 1);
    let mut model = HistoryRows::default();
    for rows in [first, second] {
        model.absorb(rows.clone());
        let mut batch = Batch::default();
        batch.history = rows;
        store.commit(&batch, Fence::Single).await.unwrap();
    }
    // An open lease of hist-a, granted through the pool (its grant is history too).
    let now = h0 + 5 * H;
    let mut pool = Pool::restore(store.load().await.unwrap(), 60_000, Policy::default(), now);
    let mut batch = Batch::default();
    let new = NewEntitlement {
        feature: "hist-a".into(),
        seats: 5,
        starts_at: None,
        expires_at: None,
        kind: EntitlementKind::Standard,
        borrowable: false,
        max_borrow_secs: None,
        reference: String::new(),
    };
    pool.add_entitlement(now, &owner(), &new, &mut batch)
        .unwrap();
    let holder = Holder {
        client: ClientId([42; 16]),
        host: "ws1".into(),
        peer: Peer::default(),
    };
    let checkout = Checkout {
        request_id: RequestId([42; 16]),
        feature: "hist-a".into(),
        seats: 2,
    };
    pool.checkout(
        now,
        &owner(),
        &holder,
        &checkout,
        LeaseId([42; 16]),
        &mut batch,
    )
    .unwrap();
    model.absorb(batch.history.clone());
    store.commit(&batch, Fence::Single).await.unwrap();

    let mut want_hours: Vec<UsageHour> = model.hours.values().cloned().collect();
    want_hours.retain(|h| h.feature == "hist-a" && h.hour_start >= h0);
    want_hours.sort_by_key(|h| h.hour_start);
    let data = store
        .usage_history(
            Some("hist-a"),
            h0,
            h0 + 6 * H,
            ReportPeriod::Hour,
            &hours_of(h0, h0 + 6 * H),
        )
        .await
        .unwrap();
    let mut hours = data.hours.clone();
    hours.sort_by_key(|h| h.hour_start);
    assert_eq!(hours, want_hours);
    let first_hour = &hours[0];
    assert_eq!(
        (
            first_hour.peak,
            first_hour.in_use_last,
            first_hour.pool_max,
            first_hour.pool_last
        ),
        (4, Some(1), 10, Some(6)),
        "maxima kept, the latest state of the second commit"
    );
    assert_eq!(first_hour.denials, 2);
    assert_eq!(
        data.before,
        [("hist-a".to_string(), Some(7), Some(9))],
        "the last state before the range, across stateless rows"
    );
    assert_eq!(data.open.len(), 1);
    assert_eq!(
        (
            data.open[0].user.as_str(),
            data.open[0].seats,
            data.open[0].granted_at
        ),
        (owner().username.as_str(), 2, now)
    );
    let users: Vec<UserHour> = model
        .user_hours
        .values()
        .filter(|u| u.feature == "hist-a" && u.hour_start >= h0 && u.hour_start < h0 + 6 * H)
        .cloned()
        .collect();
    let hourly = periods(h0, h0 + 6 * H, tally_protocol::ReportPeriod::Hour);
    let mut distinct = data.distinct.clone();
    distinct.sort();
    assert_eq!(distinct, distinct_in_rows(&users, &hourly, &data.open));
    let days = periods(h0, h0 + 6 * H, tally_protocol::ReportPeriod::Day);
    let grouped = store
        .usage_history(Some("hist-a"), h0, h0 + 6 * H, ReportPeriod::Day, &days)
        .await
        .unwrap();
    let mut distinct = grouped.distinct.clone();
    distinct.sort();
    assert_eq!(distinct, distinct_in_rows(&users, &days, &grouped.open));
    let ana = &model.user_hours[&("hist-a".to_string(), "ana".to_string(), h0)];
    assert_eq!(
        (ana.checkouts, ana.denials, ana.last_used),
        (2, 1, Some(h0 + H)),
        "a denial's missing last_used keeps the one stored"
    );
    let read = store
        .user_history(Some("hist-a"), h0, h0 + 6 * H)
        .await
        .unwrap();
    let mut sums = read.rows.clone();
    sums.sort_by(|a, b| a.user.cmp(&b.user));
    let pick = |user: &str| sums.iter().find(|u| u.user == user).cloned().unwrap();
    let ana = pick("ana");
    assert_eq!(
        (ana.seat_ms, ana.checkouts, ana.denials, ana.last_used),
        (2 * (2 * H + 5), 2, 1, Some(h0 + 2 * H + 5))
    );
    let ben = pick("ben");
    assert_eq!(
        (ben.seat_ms, ben.denials, ben.last_used),
        (100, 1, Some(h0 + 200))
    );
    // Pruning before h0 + 4h keeps the last state before it, and nothing after it goes.
    let deleted = store.prune_history(h0 + 4 * H, 10_000).await.unwrap();
    assert!(deleted > 0);
    let data = store
        .usage_history(
            Some("hist-a"),
            h0 + 4 * H,
            h0 + 6 * H,
            ReportPeriod::Hour,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(data.before, [("hist-a".to_string(), Some(2), Some(6))]);
    assert_eq!(
        data.hours.len(),
        2,
        "the hours of cy's lease and of the grant"
    );
    let read = store
        .user_history(Some("hist-a"), 0, h0 + 4 * H)
        .await
        .unwrap();
    assert!(
        read.rows.is_empty(),
        "user rows before the cut are gone: {:?}",
        read.rows
    );
}

/// On the store the steps before left: groups and rules of every kind written, changed and
/// removed, in one batch and across batches, read back as the pool holds them; a group
/// changed and removed in the same batch stays removed; rule ids are not reused after a
/// reload.
pub async fn policy_round_trip(store: &dyn Store) {
    let now = 7;
    let mut pool = Pool::restore(store.load().await.unwrap(), 60_000, Policy::default(), now);
    let mut batch = Batch::default();
    let group = |name: &str, members: &[&str]| GroupAdd {
        name: name.into(),
        members: members.iter().map(|m| m.to_string()).collect(),
    };
    pool.add_group(
        now,
        &owner(),
        &group("juniors", &["user:ana@studio", "host:render-*"]),
        &mut batch,
    )
    .unwrap();
    pool.add_group(
        now,
        &owner(),
        &group("farm", &["ip:10.1.0.0/16"]),
        &mut batch,
    )
    .unwrap();
    pool.add_group(now, &owner(), &group("gone", &[]), &mut batch)
        .unwrap();
    let change = GroupMembers {
        name: "gone".into(),
        add: true,
        members: vec!["user:bo@studio".into()],
    };
    pool.change_group_members(now, &owner(), &change, &mut batch)
        .unwrap();
    pool.remove_group(
        now,
        &owner(),
        &GroupRef {
            name: "gone".into(),
        },
        &mut batch,
    )
    .unwrap();
    let rule = |kind, seats, group: Option<&str>, each| PolicyAdd {
        rule: RuleSpec {
            feature: "houdini".into(),
            kind,
            seats,
            group: group.map(str::to_string),
            each,
        },
        dry_run: false,
    };
    for add in [
        rule(RuleKind::Include, 0, Some("juniors"), false),
        rule(RuleKind::Exclude, 0, Some("farm"), false),
        rule(RuleKind::Reserve, 1, Some("juniors"), false),
        rule(RuleKind::Max, 2, Some("juniors"), true),
        rule(RuleKind::BorrowExclude, 0, Some("farm"), false),
        rule(RuleKind::BorrowLowwater, 1, None, false),
        rule(RuleKind::Priority, 0, Some("juniors"), false),
    ] {
        pool.add_rule(now, &owner(), &add, &mut batch).unwrap();
    }
    store.commit(&batch, Fence::Single).await.unwrap();
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded, pool.snapshot());
    assert_eq!(loaded.groups.len(), 2);
    assert_eq!(loaded.rules.len(), 7);

    let mut pool = Pool::restore(loaded, 60_000, Policy::default(), now);
    let mut batch = Batch::default();
    let change = GroupMembers {
        name: "juniors".into(),
        add: false,
        members: vec!["host:render-*".into()],
    };
    pool.change_group_members(now, &owner(), &change, &mut batch)
        .unwrap();
    let first = pool.snapshot().rules[0].id;
    pool.remove_rule(now, &owner(), RuleRef { id: first }, &mut batch)
        .unwrap();
    let added = pool
        .add_rule(
            now,
            &owner(),
            &rule(RuleKind::Max, 3, Some("farm"), false),
            &mut batch,
        )
        .unwrap();
    assert_eq!(added.rule.id, Some(first + 7), "rule ids are never reused");
    store.commit(&batch, Fence::Single).await.unwrap();
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded, pool.snapshot());
    assert_eq!(
        loaded
            .groups
            .iter()
            .find(|g| g.name == "juniors")
            .unwrap()
            .members
            .len(),
        1
    );
    assert_eq!(loaded.next_rule_id, first + 8);
}

/// On the store the steps before left: a requirement, and a checkout that took a seat of
/// its prerequisite linked to its own lease, read back as the pool holds them; the pool
/// rebuilt from the store still ends the linked seat with its lease; dropping the
/// requirement deletes its row.
pub async fn prerequisites_round_trip(store: &dyn Store) {
    let now = 5;
    let mut pool = Pool::restore(store.load().await.unwrap(), 60_000, Policy::default(), now);
    let mut batch = Batch::default();
    for feature in ["houdini", "houdini-fx"] {
        let new = NewEntitlement {
            feature: feature.into(),
            seats: 2,
            starts_at: None,
            expires_at: None,
            kind: EntitlementKind::Standard,
            borrowable: false,
            max_borrow_secs: None,
            reference: String::new(),
        };
        pool.add_entitlement(now, &owner(), &new, &mut batch)
            .unwrap();
    }
    let requirement = FeatureRequirement {
        feature: "houdini-fx".into(),
        requires: "houdini".into(),
    };
    pool.require(now, &owner(), &requirement, &mut batch)
        .unwrap();
    let holder = Holder {
        client: ClientId([42; 16]),
        host: "fx1".into(),
        peer: Peer::default(),
    };
    let checkout = Checkout {
        request_id: RequestId([43; 16]),
        feature: "houdini-fx".into(),
        seats: 1,
    };
    let fx = LeaseId([44; 16]);
    pool.checkout(now, &owner(), &holder, &checkout, fx, &mut batch)
        .unwrap();
    store.commit(&batch, Fence::Single).await.unwrap();

    let loaded = store.load().await.unwrap();
    assert_eq!(loaded, pool.snapshot());
    assert_eq!(
        loaded.requires,
        vec![("houdini-fx".to_string(), "houdini".to_string())]
    );
    let linked: Vec<&Lease> = loaded
        .leases
        .iter()
        .filter(|l| l.taken_with == Some(fx))
        .collect();
    assert_eq!(linked.len(), 1);
    assert_eq!(linked[0].feature, "houdini");

    let mut pool = Pool::restore(loaded, 60_000, Policy::default(), now);
    let mut batch = Batch::default();
    pool.checkin(now, &owner(), fx, &mut batch).unwrap();
    pool.unrequire(now, &owner(), &requirement, &mut batch)
        .unwrap();
    store.commit(&batch, Fence::Single).await.unwrap();
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded, pool.snapshot());
    assert!(loaded.requires.is_empty());
    assert!(loaded
        .leases
        .iter()
        .all(|l| l.feature != "houdini" && l.feature != "houdini-fx"));
}

fn owner() -> Actor {
    Actor {
        username: "owner@localhost".into(),
        role: Role::Owner,
    }
}

/// Every audit event matching `query` (without its limit), newest first, read a page of
/// 1000 at a time.
async fn all_audit(store: &dyn Store, mut query: AuditQuery) -> Vec<AuditEvent> {
    query.limit = Some(1000);
    let mut events = Vec::new();
    let mut before = None;
    loop {
        let page = store.audit(&query, before, usize::MAX).await.unwrap();
        events.extend(page.events);
        match page.next {
            Some(next) => before = Some(next),
            None => return events,
        }
    }
}

fn everything() -> AuditQuery {
    AuditQuery {
        since: None,
        user: None,
        feature: None,
        limit: None,
    }
}

/// On an empty store: loads the empty state, then commits real batches from a [`Pool`]
/// (more leases than one statement takes, updates, removals that cancel out) and checks
/// that a reload gives back exactly the pool's state and every audit event.
pub async fn lease_batches_round_trip(store: &dyn Store) {
    assert_eq!(
        store.load().await.unwrap(),
        Snapshot {
            next_user_id: 1,
            next_entitlement_id: 1,
            next_assignment_id: 1,
            next_rule_id: 1,
            next_purchase_id: 1,
            ..Snapshot::default()
        },
        "an empty store loads an empty pool whose counters start at 1"
    );
    let ttl = 60_000;
    let mut pool = Pool::new(ttl, Policy::default());
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
            peer: Peer {
                program: format!("render {i}"),
                pid: i,
                address: format!("10.0.{}.{}", i / 256, i % 256),
            },
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
    store.commit(&batch, Fence::Single).await.unwrap();

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
        peer: Peer {
            program: "nuke 15".into(),
            pid: 4242,
            address: "192.0.2.7".into(),
        },
    };
    pool.resume(4, &owner(), &moved, &ids[1100..], &mut batch);
    store.commit(&batch, Fence::Single).await.unwrap();

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
    // The entitlement, the checkouts, the check-ins and the moves of resumed leases.
    assert_eq!(
        all_audit(store, everything()).await.len(),
        1 + 2500 + 1100 + 100
    );
}

/// On a store without accounts: the first initialise makes the server id, the owner and
/// their first token; a second keeps the id and mints nothing; `add_owner_token` without
/// `revoke_others` adds a token and revokes none.
pub async fn initialise_is_idempotent(store: &dyn Store) {
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
    assert_eq!(first.hash, [1; 32]);
    assert_eq!((first.label.as_str(), first.created_at), ("first", 0));
    let snapshot = store.load().await.unwrap();
    assert_eq!(snapshot.users.len(), 1);
    assert_eq!(snapshot.users[0].role, Role::Owner);
    assert_eq!(snapshot.users[0].username, "owner@localhost");
    assert_eq!(snapshot.users[0].id, first.user);
    assert_eq!(snapshot.tokens, std::slice::from_ref(&first));
    assert!(
        snapshot.next_user_id > first.user,
        "account ids are not reused"
    );
    let (owner, revoked) = store.add_owner_token(&[3; 32], 1, false).await.unwrap();
    assert_eq!((owner.as_str(), revoked), ("owner@localhost", 0));
    let third = store.find_token(&[3; 32]).await.unwrap().unwrap();
    assert_eq!(third.user, first.user);
    assert_eq!(third.label, "tallyd owner-token");
    assert!(store.find_token(&[1; 32]).await.unwrap().is_some());
}

/// After [`initialise_is_idempotent`]: `add_owner_token` with `revoke_others` ends every
/// other owner token and counts them.
pub async fn owner_tokens(store: &dyn Store) {
    let (owner, revoked) = store.add_owner_token(&[4; 32], 2, true).await.unwrap();
    assert_eq!(owner, "owner@localhost");
    assert_eq!(revoked, 2, "--revoke-others ends every other owner token");
    assert!(store.find_token(&[1; 32]).await.unwrap().is_none());
    assert!(store.find_token(&[3; 32]).await.unwrap().is_none());
    let fourth = store.find_token(&[4; 32]).await.unwrap().unwrap();
    assert_eq!(fourth.label, "tallyd owner-token --revoke-others");
    assert_eq!(fourth.created_at, 2);
    assert_eq!(store.load().await.unwrap().tokens, [fourth]);
}

/// After the steps before: two batches that write every list a batch has (entitlements,
/// leases of every kind and source, users, tokens, assignments, notifications and the
/// three counters), then change or remove each; a reload equals the model after each.
pub async fn every_kind_of_row_round_trips(store: &dyn Store) {
    let mut model = store.load().await.unwrap();
    let notifications_before = store
        .unsettled_notifications(0, u32::MAX)
        .await
        .unwrap()
        .len();

    let mut batch = Batch::default();
    let kept = Entitlement {
        id: model.next_entitlement_id,
        feature: "nuke".into(),
        seats: 10,
        starts_at: 5,
        expires_at: None,
        kind: EntitlementKind::Standard,
        borrowable: true,
        max_borrow_secs: 7200,
        reference: "PO-2".into(),
    };
    let dropped = Entitlement {
        id: kept.id + 1,
        feature: "maya".into(),
        seats: 1,
        starts_at: 6,
        expires_at: Some(9_000),
        kind: EntitlementKind::Trial,
        borrowable: false,
        max_borrow_secs: 0,
        reference: String::new(),
    };
    batch.add_entitlement(kept.clone());
    batch.add_entitlement(dropped.clone());
    batch.next_entitlement_id = Some(dropped.id + 1);
    let roles = [Role::Admin, Role::Member, Role::Guest];
    let users: Vec<User> = roles
        .iter()
        .enumerate()
        .map(|(i, role)| User {
            id: model.next_user_id + i as u64,
            username: format!("user{i}@example.com"),
            name: format!("User {i}"),
            role: *role,
            state: UserState::Active,
            created_at: 10,
        })
        .collect();
    let tokens: Vec<Token> = users
        .iter()
        .map(|user| {
            let hash = [10 + user.id as u8; 32];
            Token {
                id: token_id(&hash),
                hash,
                user: user.id,
                label: format!("laptop of {}", user.username),
                created_at: 10,
                last_used: (user.role == Role::Admin).then_some(10),
            }
        })
        .collect();
    for user in &users {
        batch.upsert_user(user.clone());
    }
    batch.next_user_id = Some(model.next_user_id + 3);
    for token in &tokens {
        batch.add_token(token.clone());
    }
    let assignments: Vec<Assignment> = (0..2)
        .map(|i| Assignment {
            id: model.next_assignment_id + i,
            user: users[1].username.clone(),
            feature: "nuke".into(),
            entitlement: kept.id,
            seats: 2,
            expires_at: (i == 0).then_some(50_000),
            created_at: 10,
        })
        .collect();
    for assignment in &assignments {
        batch.upsert_assignment(assignment.clone());
    }
    batch.next_assignment_id = Some(model.next_assignment_id + 2);
    let borrowed = Lease {
        id: LeaseId(10_000u128.to_be_bytes()),
        feature: "nuke".into(),
        seats: 2,
        user: users[1].username.clone(),
        host: "ws1".into(),
        peer: Peer {
            program: "tally-cli 0.1.0".into(),
            pid: u32::MAX,
            address: "2001:db8::1".into(),
        },
        client: ClientId([5; 16]),
        request_id: RequestId([6; 16]),
        kind: LeaseKind::Borrowed,
        source: LeaseSource::Assignment(assignments[0].id),
        granted_at: 10,
        expires_at: 1_000,
        entitlement: None,
        taken_with: None,
    };
    let floating_borrow = Lease {
        id: LeaseId(10_001u128.to_be_bytes()),
        request_id: RequestId([7; 16]),
        seats: 1,
        source: LeaseSource::Floating,
        entitlement: Some(kept.id),
        ..borrowed.clone()
    };
    batch.add_lease(borrowed.clone());
    batch.add_lease(floating_borrow.clone());
    batch.notify(
        10,
        NotificationKind::AssignmentChanged,
        &users[0].username,
        Some("vray"),
        "2 seat(s) of vray assigned",
    );
    batch.mark("expiry_through", 10);
    batch.mark("pool_exhausted:vray", 9);
    batch.mark("pool_exhausted:vray", 10);
    let mut notifications = batch.notifications.clone();
    assert_eq!(
        notifications[0].id.len(),
        32,
        "a stable id of 32 hex digits"
    );
    store.commit(&batch, Fence::Single).await.unwrap();
    model.apply(&batch);
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded, model);
    assert!(loaded.entitlements.contains(&kept));
    assert!(loaded.leases.contains(&borrowed));
    assert!(loaded.leases.contains(&floating_borrow));
    assert!(loaded.assignments.contains(&assignments[1]));
    assert_eq!(
        store.find_token(&tokens[0].hash).await.unwrap().as_ref(),
        Some(&tokens[0])
    );

    let mut batch = Batch::default();
    batch.upsert_user(User {
        name: "Renamed".into(),
        role: Role::Member,
        state: UserState::Deactivated,
        ..users[0].clone()
    });
    batch.remove_user(&users[2]);
    batch.remove_token(&tokens[1].id);
    batch.use_token(&tokens[0].id, 20);
    batch.upsert_assignment(Assignment {
        seats: 3,
        expires_at: None,
        ..assignments[0].clone()
    });
    batch.remove_assignment(assignments[1].id);
    batch.update_lease(Lease {
        host: "ws2".into(),
        peer: Peer {
            program: "houdini".into(),
            pid: 7,
            address: "198.51.100.2".into(),
        },
        client: ClientId([8; 16]),
        expires_at: 2_000,
        ..borrowed.clone()
    });
    batch.update_entitlement(Entitlement {
        seats: kept.seats + 4,
        expires_at: None,
        borrowable: !kept.borrowable,
        max_borrow_secs: 60,
        reference: "PO-2 renewed".into(),
        starts_at: kept.starts_at + 1,
        ..kept.clone()
    });
    batch.remove_lease(floating_borrow.id);
    batch.remove_entitlement(dropped.id);
    batch.next_user_id = Some(model.next_user_id + 5);
    batch.next_assignment_id = Some(model.next_assignment_id + 7);
    batch.next_entitlement_id = Some(model.next_entitlement_id + 11);
    for i in 0..2 {
        let subject = format!("user{i}@example.com");
        batch.notify(20, NotificationKind::UserRemoved, &subject, None, "");
    }
    batch.mark("pool_exhausted:vray", 20);
    notifications.extend(batch.notifications.iter().cloned());
    store.commit(&batch, Fence::Single).await.unwrap();
    model.apply(&batch);
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded, model);
    assert!(!loaded.users.iter().any(|u| u.id == users[2].id));
    assert!(
        store.find_token(&tokens[2].hash).await.unwrap().is_none(),
        "a removed user's tokens go with them"
    );
    assert!(store.find_token(&tokens[1].hash).await.unwrap().is_none());
    assert_eq!(
        store
            .find_token(&tokens[0].hash)
            .await
            .unwrap()
            .unwrap()
            .last_used,
        Some(20)
    );
    assert!(!loaded.entitlements.iter().any(|e| e.id == dropped.id));
    assert!(!loaded.leases.iter().any(|l| l.id == floating_borrow.id));

    let pending = store.unsettled_notifications(0, u32::MAX).await.unwrap();
    let pending: Vec<Notification> = pending[notifications_before..]
        .iter()
        .map(|(_, n)| n.clone())
        .collect();
    assert_eq!(pending, notifications);
}

/// After the steps before, whose events are all older than [`AUDIT_BASE`]: the audit log
/// pages newest first on its row id; pages never overlap or skip, `next` is set exactly
/// when older events match, filters hold across pages, and a page of large events ends at
/// the byte budget instead of growing past a frame.
pub async fn audit_pages(store: &dyn Store) {
    let mut batch = Batch::default();
    for i in 0..25i64 {
        batch.audit_raw(AuditEvent {
            at: AUDIT_BASE + i,
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
    let written = batch.audit.clone();
    store.commit(&batch, Fence::Single).await.unwrap();
    let query = |feature: Option<&str>, limit| AuditQuery {
        since: Some(AUDIT_BASE),
        user: None,
        feature: feature.map(str::to_string),
        limit: Some(limit),
    };
    let relative =
        |events: &[AuditEvent]| -> Vec<i64> { events.iter().map(|e| e.at - AUDIT_BASE).collect() };

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
        seen.extend(page.events);
        match page.next {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(relative(&seen), (0..25).rev().collect::<Vec<_>>());
    assert!(
        seen.iter().eq(written.iter().rev()),
        "events come back as written"
    );

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
    assert_eq!(third.next, None);
    let events: Vec<AuditEvent> = [first, second, third]
        .into_iter()
        .flat_map(|p| p.events)
        .collect();
    assert_eq!(relative(&events), [20, 15, 10, 5, 0]);

    // `since` is inclusive; `user` matches the actor or the subject, in any case.
    let recent = AuditQuery {
        since: Some(AUDIT_BASE + 20),
        ..query(None, 1000)
    };
    let page = store.audit(&recent, None, usize::MAX).await.unwrap();
    assert_eq!(relative(&page.events), [24, 23, 22, 21, 20]);
    let by_subject = AuditQuery {
        user: Some("Lease7".into()),
        ..query(None, 1000)
    };
    let page = store.audit(&by_subject, None, usize::MAX).await.unwrap();
    assert_eq!(relative(&page.events), [7]);
    let by_actor = AuditQuery {
        user: Some("OWNER@localhost".into()),
        ..query(None, 1000)
    };
    assert_eq!(all_audit(store, by_actor).await.len(), 25);

    // A 150 KiB budget: a page stops once it passes it, and the next page goes on from
    // there; a single event larger than the budget still comes alone.
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .audit(&query(None, 1000), before, 150 * 1024)
            .await
            .unwrap();
        let bytes: usize = page.events.iter().map(event_size).sum();
        let last = page.events.last().map_or(0, event_size);
        assert!(!page.events.is_empty());
        assert!(
            bytes - last < 150 * 1024,
            "a page went on past its budget: {bytes} bytes"
        );
        seen.extend(page.events);
        match page.next {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert_eq!(relative(&seen), (0..25).rev().collect::<Vec<_>>());
    let page = store.audit(&query(None, 1000), None, 1).await.unwrap();
    assert_eq!(page.events.len(), 1, "the first event always fits");
    assert!(page.next.is_some());
}

/// After the steps before: the outbox hands out undelivered notifications oldest first,
/// with increasing ids, and marking them delivered (more than one statement's worth at
/// once) takes them out for good.
pub async fn outbox(store: &dyn Store) {
    let mut expected: Vec<Notification> = store
        .unsettled_notifications(0, u32::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert!(!expected.is_empty(), "the steps before left notifications");
    let mut batch = Batch::default();
    for i in 0..2500i64 {
        let subject = format!("user{i}@example.com");
        batch.notify(
            AUDIT_BASE + i,
            NotificationKind::UserLimitExceeded,
            &subject,
            None,
            "member",
        );
    }
    expected.extend(batch.notifications.iter().cloned());
    store.commit(&batch, Fence::Single).await.unwrap();

    let page = store.unsettled_notifications(0, 1000).await.unwrap();
    assert_eq!(page.len(), 1000);
    assert!(page.windows(2).all(|w| w[0].0 < w[1].0), "ids increase");
    let notes: Vec<&Notification> = page.iter().map(|(_, n)| n).collect();
    assert!(notes.iter().copied().eq(&expected[..1000]));

    let all = store.unsettled_notifications(0, u32::MAX).await.unwrap();
    assert_eq!(all.len(), expected.len());
    let ids: Vec<i64> = all.iter().map(|(id, _)| *id).collect();
    store
        .mark_delivered(&ids[..1200], AUDIT_BASE)
        .await
        .unwrap();
    let rest = store.unsettled_notifications(0, u32::MAX).await.unwrap();
    assert_eq!(rest, all[1200..]);
    store.mark_delivered(&[], AUDIT_BASE).await.unwrap();
    store
        .mark_delivered(&ids[1200..], AUDIT_BASE)
        .await
        .unwrap();
    assert!(store
        .unsettled_notifications(0, u32::MAX)
        .await
        .unwrap()
        .is_empty());
    // Delivering again changes nothing.
    store.mark_delivered(&ids, AUDIT_BASE + 1).await.unwrap();
    assert!(store
        .unsettled_notifications(0, 10)
        .await
        .unwrap()
        .is_empty());
}

/// After the steps before (an outbox with nothing pending): the unsettled notifications are
/// read in pages after a cursor; each sink's delivery is recorded, replaced, read back by
/// outbox id and counted, with the latest error of each sink; settling takes a
/// notification out of the pages.
pub async fn deliveries(store: &dyn Store) {
    use super::{Delivery, SinkCounts};
    let summary = store.delivery_summary().await.unwrap();
    assert_eq!((summary.pending, summary.failed), (0, 0));
    assert!(summary.sinks.is_empty());
    let mut batch = Batch::default();
    for i in 0..5i64 {
        batch.notify(
            AUDIT_BASE + 10_000 + i,
            NotificationKind::PoolExhausted,
            &format!("feature{i}"),
            Some(&format!("feature{i}")),
            "no seat",
        );
    }
    store.commit(&batch, Fence::Single).await.unwrap();
    let first = store.unsettled_notifications(0, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    let second = store.unsettled_notifications(first[1].0, 2).await.unwrap();
    let third = store.unsettled_notifications(second[1].0, 2).await.unwrap();
    assert_eq!(third.len(), 1);
    let all: Vec<(i64, Notification)> = [first, second, third].concat();
    let notes: Vec<Notification> = all.iter().map(|(_, n)| n.clone()).collect();
    assert_eq!(notes, batch.notifications);
    let ids: Vec<i64> = all.iter().map(|(id, _)| *id).collect();
    assert!(store.deliveries(&ids).await.unwrap().is_empty());

    let hook = "webhook https://hooks.studio.lan/tally";
    let delivery = |id: i64, sink: &str| Delivery {
        outbox_id: id,
        sink: sink.to_string(),
        attempts: 1,
        next_at: 0,
        delivered_at: Some(AUDIT_BASE),
        failed_at: None,
        last_error: None,
    };
    for id in &ids {
        store
            .record_delivery(&delivery(*id, "log"), AUDIT_BASE)
            .await
            .unwrap();
    }
    // The webhook: the first delivered after a failure, the second given up, the third
    // waiting for its next attempt.
    let mut failed_once = delivery(ids[0], hook);
    failed_once.delivered_at = None;
    failed_once.next_at = AUDIT_BASE + 30_000;
    failed_once.last_error = Some("the receiver answered HTTP 503".into());
    store
        .record_delivery(&failed_once, AUDIT_BASE)
        .await
        .unwrap();
    let mut delivered = failed_once.clone();
    delivered.attempts = 2;
    delivered.delivered_at = Some(AUDIT_BASE + 30_000);
    store
        .record_delivery(&delivered, AUDIT_BASE + 30_000)
        .await
        .unwrap();
    let given_up = Delivery {
        attempts: 10,
        delivered_at: None,
        failed_at: Some(AUDIT_BASE + 40_000),
        last_error: Some("cannot connect: refused".into()),
        ..delivery(ids[1], hook)
    };
    store
        .record_delivery(&given_up, AUDIT_BASE + 40_000)
        .await
        .unwrap();
    let waiting = Delivery {
        attempts: u32::try_from(i32::MAX).unwrap(),
        delivered_at: None,
        next_at: i64::MAX,
        last_error: Some("timed out".into()),
        ..delivery(ids[2], hook)
    };
    store
        .record_delivery(&waiting, AUDIT_BASE + 20_000)
        .await
        .unwrap();

    let mut read = store.deliveries(&ids[..3]).await.unwrap();
    read.sort_by(|a, b| (a.outbox_id, &a.sink).cmp(&(b.outbox_id, &b.sink)));
    let mut expected = vec![
        delivery(ids[0], "log"),
        delivered.clone(),
        delivery(ids[1], "log"),
        given_up.clone(),
        delivery(ids[2], "log"),
        waiting.clone(),
    ];
    expected.sort_by(|a, b| (a.outbox_id, &a.sink).cmp(&(b.outbox_id, &b.sink)));
    assert_eq!(read, expected);
    assert!(delivered.is_done() && given_up.is_done() && !waiting.is_done());

    store
        .mark_delivered(&ids[..2], AUDIT_BASE + 50_000)
        .await
        .unwrap();
    let unsettled: Vec<i64> = store
        .unsettled_notifications(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(unsettled, ids[2..]);
    let summary = store.delivery_summary().await.unwrap();
    assert_eq!((summary.pending, summary.failed), (3, 1));
    assert_eq!(
        summary.sinks,
        [
            SinkCounts {
                sink: "log".into(),
                delivered: 5,
                failed: 0,
                last_error: None,
            },
            SinkCounts {
                sink: hook.into(),
                delivered: 1,
                failed: 1,
                // The latest by the time it was recorded.
                last_error: Some("cannot connect: refused".into()),
            },
        ]
    );
    store
        .mark_delivered(&ids, AUDIT_BASE + 60_000)
        .await
        .unwrap();
    assert!(store
        .unsettled_notifications(0, 100)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.delivery_summary().await.unwrap().pending, 0);
}
