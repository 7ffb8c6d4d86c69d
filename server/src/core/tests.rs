//! The pool under random interleavings, and its rules one by one.

use proptest::prelude::*;
use tally_protocol::{
    Checkout, ClientId, EndReason, EntitlementKind, ErrorCode, LeaseId, LeasesQuery,
    NewEntitlement, RequestId, Role,
};

use super::*;

const TTL: i64 = 10_000;
const USERS: [&str; 3] = ["ana@studio", "ben@studio", "gus@studio"];
const ROLES: [Role; 3] = [Role::Member, Role::Member, Role::Guest];
const FEATURES: [&str; 2] = ["vray", "nuke"];

fn admin() -> Actor {
    Actor {
        username: "owner@localhost".into(),
        role: Role::Owner,
    }
}

/// The user of client `i`: ana, ben (members) or gus (a guest).
fn member(i: usize) -> Actor {
    Actor {
        username: USERS[i % USERS.len()].into(),
        role: ROLES[i % USERS.len()],
    }
}

/// A pool with the owner and the test users.
fn pool_with_users(policy: Policy) -> (Pool, Batch) {
    let mut pool = Pool::new(TTL, policy);
    let mut batch = Batch::default();
    let owner = User {
        id: pool.next_user_id,
        username: "owner@localhost".into(),
        name: "Owner".into(),
        role: Role::Owner,
        state: UserState::Active,
        created_at: 0,
    };
    pool.insert_user(owner.clone());
    batch.upsert_user(owner);
    for (i, name) in USERS.iter().enumerate() {
        let add = tally_protocol::UserAdd {
            username: name.to_string(),
            name: String::new(),
            role: ROLES[i],
        };
        pool.add_user(0, &admin(), &add, token(i as u8), &mut batch)
            .unwrap();
    }
    (pool, batch)
}

fn token(n: u8) -> NewToken {
    NewToken {
        token: format!("t{n}"),
        hash: [n; 32],
    }
}

fn holder(i: usize) -> Holder {
    Holder {
        client: ClientId([i as u8 + 1; 16]),
        host: format!("node{i}"),
    }
}

fn entitlement(feature: &str, seats: u32) -> NewEntitlement {
    NewEntitlement {
        feature: feature.into(),
        seats,
        starts_at: None,
        expires_at: None,
        kind: EntitlementKind::Standard,
        borrowable: false,
        max_borrow_secs: None,
        reference: String::new(),
    }
}

fn checkout(feature: &str, seats: u32, request: u8) -> Checkout {
    Checkout {
        request_id: RequestId([request; 16]),
        feature: feature.into(),
        seats,
    }
}

/// A request id unique to one client's `n`th checkout, as a client's random ids are.
fn request_id(client: usize, n: u8) -> RequestId {
    let mut bytes = [0u8; 16];
    bytes[0] = client as u8 + 1;
    bytes[1] = n;
    RequestId(bytes)
}

/// One step of a random run.
#[derive(Debug, Clone)]
enum Op {
    Checkout {
        client: usize,
        feature: usize,
        seats: u32,
        retry: bool,
    },
    Heartbeat {
        client: usize,
    },
    Checkin {
        pick: usize,
    },
    Release {
        pick: usize,
    },
    Resume {
        client: usize,
        pick: usize,
    },
    Advance {
        ms: i64,
    },
    AddEntitlement {
        feature: usize,
        seats: u32,
        starts_in: Option<i64>,
        lasts: Option<i64>,
        borrowable: bool,
    },
    RemoveEntitlement {
        pick: usize,
    },
    Borrow {
        client: usize,
        feature: usize,
        seats: u32,
        secs: u64,
    },
    Return {
        pick: usize,
    },
    Assign {
        user: usize,
        feature: usize,
        seats: u32,
        from: Option<usize>,
        /// When the assignment ends, from now, if it does.
        lasts: Option<i64>,
    },
    Revoke {
        user: usize,
        feature: usize,
        seats: Option<u32>,
    },
    Deactivate {
        user: usize,
    },
    Activate {
        user: usize,
    },
    /// The server stops and comes back `downtime` ms later, with what the store holds.
    Restart {
        downtime: i64,
    },
    /// The commit of the next step fails: its batch is lost and the pool is rebuilt from
    /// the store `delay` ms later, as the engine does.
    FailNextCommit {
        delay: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..6usize, 0..2usize, 1..4u32, any::<bool>())
            .prop_map(|(client, feature, seats, retry)| Op::Checkout { client, feature, seats, retry }),
        4 => (0..6usize).prop_map(|client| Op::Heartbeat { client }),
        2 => any::<usize>().prop_map(|pick| Op::Checkin { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        1 => (0..6usize, any::<usize>()).prop_map(|(client, pick)| Op::Resume { client, pick }),
        4 => (0..2 * TTL).prop_map(|ms| Op::Advance { ms }),
        2 => (0..2usize, 1..6u32, proptest::option::of(0..TTL), proptest::option::of(1..3 * TTL))
            .prop_map(|(feature, seats, starts_in, lasts)| Op::AddEntitlement { feature, seats, starts_in, lasts, borrowable: seats % 2 == 1 }),
        3 => (0..6usize, 0..2usize, 1..3u32, 1..40u64)
            .prop_map(|(client, feature, seats, secs)| Op::Borrow { client, feature, seats, secs }),
        1 => any::<usize>().prop_map(|pick| Op::Return { pick }),
        1 => any::<usize>().prop_map(|pick| Op::RemoveEntitlement { pick }),
        3 => (0..3usize, 0..2usize, 1..4u32, proptest::option::of(0..3usize), proptest::option::of(1..3 * TTL))
            .prop_map(|(user, feature, seats, from, lasts)| Op::Assign { user, feature, seats, from, lasts }),
        2 => (0..3usize, 0..2usize, proptest::option::of(1..4u32))
            .prop_map(|(user, feature, seats)| Op::Revoke { user, feature, seats }),
        2 => (0..3usize).prop_map(|user| Op::Deactivate { user }),
        2 => (0..3usize).prop_map(|user| Op::Activate { user }),
        1 => (0..4 * TTL).prop_map(|downtime| Op::Restart { downtime }),
        1 => (0..2 * TTL).prop_map(|delay| Op::FailNextCommit { delay }),
    ]
}

/// Runs the ops against a pool and a model store that applies every batch, checking R1 and
/// that the store always holds exactly what the pool holds.
fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut now: i64 = 1_000_000;
    let policy = Policy {
        guests_use_floating: false,
        max_active: 0,
        borrow_max_ms: 3 * TTL,
        max_leases_per_client: 0,
    };
    let (mut pool, seed) = pool_with_users(policy);
    let mut store = Snapshot {
        next_entitlement_id: 1,
        next_assignment_id: 1,
        ..Snapshot::default()
    };
    store.apply(&seed);
    let mut last_request: Vec<u8> = vec![0; 6];
    let mut next_lease: u128 = 1;
    // Set by `FailNextCommit`: the current step's commit fails.
    let mut commit_fails: Option<i64> = None;
    for op in ops {
        let failing = commit_fails.take();
        let mut batch = Batch::default();
        let before = pool.snapshot();
        // A refused change must leave the pool exactly as it was.
        let unchanged = |pool: &Pool, what: &str| -> Result<(), TestCaseError> {
            prop_assert_eq!(
                &pool.snapshot(),
                &before,
                "{} was refused but changed the pool",
                what
            );
            Ok(())
        };
        let lease_ids: Vec<LeaseId> = {
            let mut ids: Vec<LeaseId> = pool.snapshot().leases.iter().map(|l| l.id).collect();
            ids.sort();
            ids
        };
        let pick = |i: usize| (!lease_ids.is_empty()).then(|| lease_ids[i % lease_ids.len()]);
        match op.clone() {
            Op::Checkout {
                client,
                feature,
                seats,
                retry,
            } => {
                if !retry {
                    last_request[client] = last_request[client].wrapping_add(1);
                }
                let id = LeaseId(next_lease.to_be_bytes());
                next_lease += 1;
                let before = pool.lease_count();
                // As the engine does: a deactivated account is refused before the pool.
                let Ok(actor) = pool.authorize(&member(client).username) else {
                    continue;
                };
                let result = pool.checkout(
                    now,
                    &actor,
                    &holder(client),
                    &Checkout {
                        request_id: request_id(client, last_request[client]),
                        feature: FEATURES[feature].into(),
                        seats,
                    },
                    id,
                    &mut batch,
                );
                if retry && result.is_ok() && pool.lease_count() == before + 1 {
                    // A retry that got a new lease must not have had a live one to return.
                    let live = pool
                        .snapshot()
                        .leases
                        .iter()
                        .filter(|l| {
                            l.client == holder(client).client
                                && l.request_id == request_id(client, last_request[client])
                        })
                        .count();
                    prop_assert_eq!(live, 1, "retried checkout holds two leases");
                }
            }
            Op::Heartbeat { client } => {
                let Ok(actor) = pool.authorize(&member(client).username) else {
                    continue;
                };
                pool.heartbeat(now, &actor, &holder(client), &mut batch);
            }
            Op::Checkin { pick: i } => {
                if let Some(id) = pick(i) {
                    let owner = pool.ledger.leases[&id].user.clone();
                    let actor = Actor {
                        username: owner,
                        role: Role::Member,
                    };
                    prop_assert!(pool.checkin(now, &actor, id, &mut batch).is_ok());
                }
            }
            Op::Release { pick: i } => {
                if let Some(id) = pick(i) {
                    prop_assert!(
                        pool.release(now, &member(0), id, &mut batch).is_err(),
                        "a member released a lease"
                    );
                    let borrowed = pool
                        .ledger
                        .leases
                        .get(&id)
                        .is_some_and(|l| l.kind == tally_protocol::LeaseKind::Borrowed);
                    let released = pool.release(now, &admin(), id, &mut batch);
                    prop_assert!(
                        released.is_ok() || borrowed || !pool.ledger.leases.contains_key(&id)
                    );
                    if borrowed {
                        prop_assert!(
                            pool.ledger.leases.contains_key(&id),
                            "a borrowed lease was released"
                        );
                    }
                }
            }
            Op::Resume { client, pick: i } => {
                if let (Some(id), Ok(actor)) = (pick(i), pool.authorize(&member(client).username)) {
                    pool.resume(now, &actor, &holder(client), &[id], &mut batch);
                }
            }
            Op::Advance { ms } => {
                now += ms;
                pool.sweep(now, &mut batch);
            }
            Op::AddEntitlement {
                feature,
                seats,
                starts_in,
                lasts,
                borrowable,
            } => {
                let mut new = entitlement(FEATURES[feature], seats);
                new.borrowable = borrowable;
                new.max_borrow_secs = Some(20);
                new.starts_at = starts_in.map(|s| now + s);
                new.expires_at = lasts.map(|l| new.starts_at.unwrap_or(now) + l);
                prop_assert!(pool
                    .add_entitlement(now, &admin(), &new, &mut batch)
                    .is_ok());
            }
            Op::RemoveEntitlement { pick: i } => {
                let ids: Vec<u64> = pool.list_entitlements(None).iter().map(|e| e.id).collect();
                if !ids.is_empty() {
                    if let Err(err) =
                        pool.remove_entitlement(now, &admin(), ids[i % ids.len()], &mut batch)
                    {
                        prop_assert_eq!(err.code, ErrorCode::Borrowed, "{}", err.message);
                        unchanged(&pool, "entitlement remove")?;
                    }
                }
            }
            Op::Borrow {
                client,
                feature,
                seats,
                secs,
            } => {
                let Ok(actor) = pool.authorize(&member(client).username) else {
                    continue;
                };
                let request = tally_protocol::Borrow {
                    feature: FEATURES[feature].into(),
                    seats,
                    duration_secs: secs,
                    machine_id: "m1".into(),
                };
                let id = LeaseId(next_lease.to_be_bytes());
                next_lease += 1;
                match pool.borrow(now, &actor, &holder(client), &request, id, &mut batch) {
                    Ok(lease) => prop_assert!(
                        lease.expires_at <= now + 3 * TTL,
                        "a borrow past borrow.max"
                    ),
                    Err(_) => unchanged(&pool, "borrow")?,
                }
            }
            Op::Return { pick: i } => {
                let borrowed: Vec<(LeaseId, String)> = pool
                    .snapshot()
                    .leases
                    .iter()
                    .filter(|l| l.kind == tally_protocol::LeaseKind::Borrowed)
                    .map(|l| (l.id, l.user.clone()))
                    .collect();
                if !borrowed.is_empty() {
                    let (id, user) = &borrowed[i % borrowed.len()];
                    let actor = Actor {
                        username: user.clone(),
                        role: Role::Member,
                    };
                    prop_assert!(pool.return_borrow(now, &actor, *id, &mut batch).is_ok());
                }
            }
            Op::Assign {
                user,
                feature,
                seats,
                from,
                lasts,
            } => {
                let request = tally_protocol::Assign {
                    username: USERS[user].into(),
                    feature: FEATURES[feature].into(),
                    seats,
                    entitlement: None,
                    from: from.map(|f| USERS[f].to_string()),
                    expires_at: lasts.map(|l| now + l),
                };
                if pool.assign(now, &admin(), &request, &mut batch).is_err() {
                    unchanged(&pool, "assign")?;
                }
            }
            Op::Revoke {
                user,
                feature,
                seats,
            } => {
                let request = tally_protocol::Revoke {
                    username: USERS[user].into(),
                    feature: FEATURES[feature].into(),
                    seats,
                };
                if pool.revoke(now, &admin(), &request, &mut batch).is_err() {
                    unchanged(&pool, "revoke")?;
                }
            }
            Op::Deactivate { user } => {
                if pool
                    .deactivate_user(now, &admin(), USERS[user], &mut batch)
                    .is_err()
                {
                    unchanged(&pool, "deactivate")?;
                }
                let leases = pool.snapshot().leases;
                prop_assert!(
                    pool.users[USERS[user]].state == UserState::Active
                        || leases.iter().all(|l| l.user != USERS[user]),
                    "a deactivated user still holds online leases"
                );
            }
            Op::Activate { user } => {
                if pool
                    .activate_user(now, &admin(), USERS[user], &mut batch)
                    .is_err()
                {
                    unchanged(&pool, "activate")?;
                }
            }
            Op::Restart { downtime } => {
                let held: Vec<LeaseId> = lease_ids.clone();
                pool = Pool::restore(store.clone(), TTL, policy, now);
                let back: Vec<LeaseId> = pool.snapshot().leases.iter().map(|l| l.id).collect();
                prop_assert_eq!(held, back, "leases differ after a restart");
                // Down for a while: boundaries may pass before it serves again.
                now += downtime;
                pool = Pool::restore(store.clone(), TTL, policy, now);
                // As the engine does before serving: apply what passed meanwhile.
                pool.advance(now, &mut batch);
            }
            Op::FailNextCommit { delay } => commit_fails = Some(delay),
        }
        if let Some(delay) = failing {
            // The batch never reaches the store; the engine reloads the pool and applies
            // what passed meanwhile, as a commit of its own.
            now += delay;
            pool = Pool::restore(store.clone(), TTL, policy, now);
            batch = Batch::default();
            pool.advance(now, &mut batch);
        }
        store.apply(&batch);
        if let Err(breach) = pool.check_invariants(now) {
            return Err(TestCaseError::fail(format!("after {op:?}: {breach}")));
        }
        prop_assert_eq!(
            &pool.snapshot(),
            &store,
            "the store does not hold what the pool holds after {:?}",
            op
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, max_shrink_iters: 2_000, ..ProptestConfig::default() })]

    /// R1 after every step of 10,000 random interleavings of checkout (and retries),
    /// heartbeat, check-in, release, resume, expiry, entitlement add/remove, assign (and
    /// moves), revoke, deactivate, activate and restart.
    #[test]
    fn r1_holds_under_random_interleavings(ops in proptest::collection::vec(op(), 1..40)) {
        run(&ops)?;
    }
}

fn pool_with(feature: &str, seats: u32, now: i64) -> Pool {
    let mut pool = Pool::new(TTL, Policy::default());
    pool.add_entitlement(
        now,
        &admin(),
        &entitlement(feature, seats),
        &mut Batch::default(),
    )
    .unwrap();
    pool
}

#[test]
fn no_seat_names_the_figures_and_for_admins_the_holders() {
    let mut pool = pool_with("vray", 2, 0);
    let mut batch = Batch::default();
    pool.checkout(
        1,
        &member(0),
        &holder(0),
        &checkout("vray", 2, 1),
        LeaseId([1; 16]),
        &mut batch,
    )
    .unwrap();
    let err = pool
        .checkout(
            2,
            &member(1),
            &holder(1),
            &checkout("vray", 1, 1),
            LeaseId([2; 16]),
            &mut batch,
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NoSeat);
    assert!(err.message.contains("2 of 2"), "{}", err.message);
    assert!(
        !err.message.contains("ana@studio"),
        "members are not told who: {}",
        err.message
    );
    let err = pool
        .checkout(
            2,
            &admin(),
            &holder(2),
            &checkout("vray", 1, 1),
            LeaseId([3; 16]),
            &mut batch,
        )
        .unwrap_err();
    assert!(
        err.message.contains("ana@studio on node0 (2)"),
        "{}",
        err.message
    );
    assert!(
        batch.audit.iter().any(|e| e.outcome == "no_seat"),
        "refusals are audited"
    );
}

#[test]
fn a_retried_checkout_returns_the_same_lease() {
    let mut pool = pool_with("vray", 5, 0);
    let mut batch = Batch::default();
    let first = pool
        .checkout(
            1,
            &member(0),
            &holder(0),
            &checkout("vray", 1, 9),
            LeaseId([1; 16]),
            &mut batch,
        )
        .unwrap();
    let again = pool
        .checkout(
            2,
            &member(0),
            &holder(0),
            &checkout("vray", 1, 9),
            LeaseId([2; 16]),
            &mut batch,
        )
        .unwrap();
    assert_eq!(first.id, again.id);
    assert_eq!(
        pool.status(2, Some("vray"), &mut batch).unwrap()[0].in_use,
        1
    );
}

#[test]
fn leases_lapse_after_ttl_and_not_before() {
    let mut pool = pool_with("vray", 5, 0);
    let mut batch = Batch::default();
    pool.checkout(
        0,
        &member(0),
        &holder(0),
        &checkout("vray", 1, 1),
        LeaseId([1; 16]),
        &mut batch,
    )
    .unwrap();
    pool.heartbeat(5_000, &member(0), &holder(0), &mut batch);
    pool.sweep(5_000 + TTL - 1, &mut batch);
    assert_eq!(pool.lease_count(), 1, "reclaimed before ttl");
    pool.sweep(5_000 + TTL, &mut batch);
    assert_eq!(pool.lease_count(), 0);
    assert!(batch
        .audit
        .iter()
        .any(|e| e.action == "reclaim" && e.reason.starts_with("expired")));
    let ack = pool.heartbeat(5_000 + TTL + 1, &member(0), &holder(0), &mut batch);
    assert_eq!(
        ack.ended,
        vec![tally_protocol::EndedLease {
            lease: LeaseId([1; 16]),
            reason: EndReason::Expired
        }]
    );
}

#[test]
fn a_restart_gives_every_online_lease_one_full_ttl() {
    let mut pool = pool_with("vray", 5, 0);
    let mut batch = Batch::default();
    pool.checkout(
        0,
        &member(0),
        &holder(0),
        &checkout("vray", 1, 1),
        LeaseId([1; 16]),
        &mut batch,
    )
    .unwrap();
    let snapshot = pool.snapshot();
    // Restart long after the lease would have lapsed.
    let mut pool = Pool::restore(snapshot, TTL, Policy::default(), 100_000);
    pool.sweep(100_000 + TTL - 1, &mut batch);
    assert_eq!(pool.lease_count(), 1);
    pool.sweep(100_000 + TTL, &mut batch);
    assert_eq!(pool.lease_count(), 0);
}

#[test]
fn an_expired_entitlement_leaves_the_pool_and_ends_leases_it_no_longer_covers() {
    let mut pool = Pool::new(TTL, Policy::default());
    let mut batch = Batch::default();
    pool.add_entitlement(0, &admin(), &entitlement("vray", 2), &mut batch)
        .unwrap();
    let mut short = entitlement("vray", 2);
    short.expires_at = Some(1_000);
    pool.add_entitlement(0, &admin(), &short, &mut batch)
        .unwrap();
    for i in 0..4u8 {
        pool.checkout(
            i as i64,
            &member(0),
            &holder(i as usize),
            &checkout("vray", 1, i),
            LeaseId([i + 1; 16]),
            &mut batch,
        )
        .unwrap();
    }
    let status = pool.status(999, None, &mut batch).unwrap();
    assert_eq!((status[0].total, status[0].in_use), (4, 4));
    let status = pool.status(1_000, None, &mut batch).unwrap();
    assert_eq!(
        (status[0].total, status[0].in_use, status[0].available),
        (2, 2, 0)
    );
    // The newest leases went first.
    let left: Vec<LeaseId> = pool
        .list_leases(
            1_000,
            &admin(),
            &LeasesQuery {
                feature: None,
                user: None,
            },
            &mut batch,
        )
        .unwrap()
        .iter()
        .map(|l| l.id)
        .collect();
    assert!(left.contains(&LeaseId([1; 16])) && left.contains(&LeaseId([2; 16])));
    pool.check_invariants(1_000).unwrap();
}

/// A listing by a feature or user that does not exist is `not_found`, naming the nearest
/// name, and audited; a feature that exists but has no lease lists nothing. Members are
/// told nothing of other users: they see their own leases whatever they ask.
#[test]
fn leases_by_a_name_that_does_not_exist_are_refused_with_the_nearest() {
    let (mut pool, mut batch) = pool_with_users(Policy::default());
    pool.add_entitlement(0, &admin(), &entitlement("vray", 2), &mut batch)
        .unwrap();
    pool.add_entitlement(0, &admin(), &entitlement("nuke", 2), &mut batch)
        .unwrap();
    pool.checkout(
        1,
        &member(0),
        &holder(0),
        &checkout("vray", 1, 1),
        LeaseId([1; 16]),
        &mut batch,
    )
    .unwrap();
    let query = |feature: Option<&str>, user: Option<&str>| LeasesQuery {
        feature: feature.map(str::to_string),
        user: user.map(str::to_string),
    };
    let mut batch = Batch::default();
    let err = pool
        .list_leases(2, &admin(), &query(Some("vary"), None), &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    assert_eq!(
        err.message,
        "no feature vary exists; did you mean vray? `tally status` lists the features"
    );
    assert_eq!(batch.audit.len(), 1, "the refusal is audited");
    assert_eq!(batch.audit[0].action, "leases");
    assert_eq!(
        batch.audit[0].feature, None,
        "a typo is no feature of the log"
    );
    let err = pool
        .list_leases(2, &admin(), &query(None, Some("nobody@x")), &mut batch)
        .unwrap_err();
    assert_eq!(
        err.message,
        "no user nobody@x exists; `tally user list` shows the users"
    );
    let err = pool
        .list_leases(2, &member(1), &query(Some("nuk"), None), &mut batch)
        .unwrap_err();
    assert!(
        err.message.contains("did you mean nuke?"),
        "{}",
        err.message
    );
    let err = pool
        .list_leases(2, &admin(), &query(None, Some("ana@studo")), &mut batch)
        .unwrap_err();
    assert!(
        err.message.contains("did you mean ana@studio?"),
        "{}",
        err.message
    );
    // Names that exist, in any case for users.
    let listed = pool
        .list_leases(
            2,
            &admin(),
            &query(Some("vray"), Some("ANA@studio")),
            &mut batch,
        )
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert!(pool
        .list_leases(2, &admin(), &query(Some("nuke"), None), &mut batch)
        .unwrap()
        .is_empty());
    // A member asking for someone who does not exist learns nothing of who does.
    assert!(pool
        .list_leases(2, &member(1), &query(None, Some("ana@studo")), &mut batch)
        .unwrap()
        .is_empty());
}

#[test]
fn entitlements_are_validated_and_admin_only() {
    let mut pool = Pool::new(TTL, Policy::default());
    let mut batch = Batch::default();
    let err = pool
        .add_entitlement(0, &member(0), &entitlement("vray", 1), &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden);
    let err = pool
        .add_entitlement(0, &admin(), &entitlement("Vray", 1), &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Invalid);
    let err = pool
        .add_entitlement(0, &admin(), &entitlement("vray", 0), &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Invalid);
    let mut past = entitlement("vray", 1);
    past.expires_at = Some(-5);
    assert_eq!(
        pool.add_entitlement(0, &admin(), &past, &mut batch)
            .unwrap_err()
            .code,
        ErrorCode::Invalid
    );
    assert!(
        pool.list_entitlements(None).is_empty(),
        "nothing half-applied"
    );
    assert!(batch.entitlements_added.is_empty());
    assert_eq!(batch.audit.len(), 4, "every refusal is audited");
}

#[test]
fn unknown_features_are_not_found_and_expired_ones_say_so() {
    let mut pool = Pool::new(TTL, Policy::default());
    let mut batch = Batch::default();
    let err = pool
        .checkout(
            0,
            &member(0),
            &holder(0),
            &checkout("maya", 1, 1),
            LeaseId([1; 16]),
            &mut batch,
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    let mut short = entitlement("maya", 1);
    short.expires_at = Some(10);
    pool.add_entitlement(0, &admin(), &short, &mut batch)
        .unwrap();
    let err = pool
        .checkout(
            20,
            &member(0),
            &holder(0),
            &checkout("maya", 1, 1),
            LeaseId([1; 16]),
            &mut batch,
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Expired);
}

#[test]
fn batches_cancel_a_lease_added_and_removed_together() {
    let mut pool = pool_with("vray", 5, 0);
    let mut batch = Batch::default();
    let lease = pool
        .checkout(
            1,
            &member(0),
            &holder(0),
            &checkout("vray", 1, 1),
            LeaseId([1; 16]),
            &mut batch,
        )
        .unwrap();
    pool.checkin(2, &member(0), lease.id, &mut batch).unwrap();
    assert!(batch.leases_added.is_empty() && batch.leases_removed.is_empty());
    assert_eq!(batch.audit.len(), 2, "both are still audited");
}

fn assign_request(
    user: &str,
    feature: &str,
    seats: u32,
    from: Option<&str>,
) -> tally_protocol::Assign {
    tally_protocol::Assign {
        username: user.into(),
        feature: feature.into(),
        seats,
        entitlement: None,
        from: from.map(str::to_string),
        expires_at: None,
    }
}

#[test]
fn activating_a_user_whose_seats_were_taken_meanwhile_is_refused_naming_the_feature() {
    let (mut pool, mut batch) = pool_with_users(Policy::default());
    pool.add_entitlement(0, &admin(), &entitlement("vray", 2), &mut batch)
        .unwrap();
    pool.assign(
        0,
        &admin(),
        &assign_request(USERS[0], "vray", 1, None),
        &mut batch,
    )
    .unwrap();
    pool.deactivate_user(1, &admin(), USERS[0], &mut batch)
        .unwrap();
    assert_eq!(pool.available("vray", 1), 2, "suspended seats float again");
    let ben = pool.authorize(USERS[1]).unwrap();
    for i in 0..2u8 {
        pool.checkout(
            2,
            &ben,
            &holder(1),
            &checkout("vray", 1, i),
            LeaseId([i + 1; 16]),
            &mut batch,
        )
        .unwrap();
    }
    let before = pool.snapshot();
    let err = pool
        .activate_user(3, &admin(), USERS[0], &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NoSeat);
    assert!(err.message.contains("vray"), "{}", err.message);
    assert_eq!(pool.snapshot(), before);
    pool.check_invariants(3).unwrap();
}

#[test]
fn named_seats_serve_their_user_first_and_guests_only_from_them() {
    let (mut pool, mut batch) = pool_with_users(Policy::default());
    pool.add_entitlement(0, &admin(), &entitlement("nuke", 3), &mut batch)
        .unwrap();
    let guest = pool.authorize(USERS[2]).unwrap();
    let err = pool
        .checkout(
            1,
            &guest,
            &holder(2),
            &checkout("nuke", 1, 1),
            LeaseId([1; 16]),
            &mut batch,
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NoSeat);
    assert!(err.message.contains("guests"), "{}", err.message);
    let assignment = pool
        .assign(
            1,
            &admin(),
            &assign_request(USERS[2], "nuke", 1, None),
            &mut batch,
        )
        .unwrap();
    let lease = pool
        .checkout(
            2,
            &guest,
            &holder(2),
            &checkout("nuke", 1, 2),
            LeaseId([2; 16]),
            &mut batch,
        )
        .unwrap();
    assert_eq!(
        lease.source,
        tally_protocol::LeaseSource::Assignment(assignment.id)
    );
    let status = pool.status(2, Some("nuke"), &mut batch).unwrap();
    assert_eq!(
        (
            status[0].total,
            status[0].assigned,
            status[0].floating,
            status[0].in_use,
            status[0].available
        ),
        (3, 1, 2, 1, 2)
    );
    // With the policy, guests may float.
    let (mut open, mut batch) = pool_with_users(Policy {
        guests_use_floating: true,
        max_active: 0,
        ..Policy::default()
    });
    open.add_entitlement(0, &admin(), &entitlement("nuke", 1), &mut batch)
        .unwrap();
    let guest = open.authorize(USERS[2]).unwrap();
    let lease = open
        .checkout(
            1,
            &guest,
            &holder(2),
            &checkout("nuke", 1, 1),
            LeaseId([1; 16]),
            &mut batch,
        )
        .unwrap();
    assert_eq!(lease.source, tally_protocol::LeaseSource::Floating);
}

#[test]
fn the_user_limit_refuses_and_queues_a_notification() {
    // The owner and three users are active; the owner is not counted (R9), so a limit of
    // 3 is full and a limit of 4 has room for one more.
    let (mut roomy, _) = pool_with_users(Policy {
        max_active: 4,
        ..Policy::default()
    });
    let dan = tally_protocol::UserAdd {
        username: "dan@studio".into(),
        name: String::new(),
        role: Role::Member,
    };
    roomy
        .add_user(1, &admin(), &dan, token(9), &mut Batch::default())
        .expect("the owner does not count toward users.max_active");
    let (mut pool, _) = pool_with_users(Policy {
        guests_use_floating: false,
        max_active: 3,
        ..Policy::default()
    });
    let mut batch = Batch::default();
    let add = tally_protocol::UserAdd {
        username: "dan@studio".into(),
        name: String::new(),
        role: Role::Member,
    };
    let err = pool
        .add_user(1, &admin(), &add, token(9), &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::UserLimit);
    assert!(
        batch.users_upserted.is_empty() && batch.tokens_added.is_empty(),
        "nothing half-applied"
    );
    assert_eq!(batch.notifications.len(), 1);
    assert_eq!(batch.notifications[0].kind, "user_limit_exceeded");
    assert_eq!(batch.notifications[0].subject, "dan@studio");
}

#[test]
fn an_expiring_assignment_ends_with_its_leases() {
    let (mut pool, mut batch) = pool_with_users(Policy::default());
    pool.add_entitlement(0, &admin(), &entitlement("vray", 2), &mut batch)
        .unwrap();
    let mut request = assign_request(USERS[0], "vray", 1, None);
    request.expires_at = Some(1_000);
    pool.assign(0, &admin(), &request, &mut batch).unwrap();
    let ana = pool.authorize(USERS[0]).unwrap();
    pool.checkout(
        1,
        &ana,
        &holder(0),
        &checkout("vray", 1, 1),
        LeaseId([1; 16]),
        &mut batch,
    )
    .unwrap();
    assert_eq!(pool.status(999, None, &mut batch).unwrap()[0].assigned, 1);
    let status = pool.status(1_000, None, &mut batch).unwrap();
    assert_eq!(
        (status[0].assigned, status[0].in_use, status[0].available),
        (0, 0, 2)
    );
    assert!(batch
        .notifications
        .iter()
        .any(|n| n.kind == "assignment_revoked"));
    pool.check_invariants(1_000).unwrap();
}

#[test]
fn absurd_durations_are_refused_not_wrapped() {
    let (mut pool, mut batch) = pool_with_users(Policy::default());
    let mut new = entitlement("vray", 2);
    new.borrowable = true;
    new.max_borrow_secs = Some(u64::MAX);
    assert_eq!(
        pool.add_entitlement(0, &admin(), &new, &mut batch)
            .unwrap_err()
            .code,
        ErrorCode::Invalid
    );
    new.max_borrow_secs = None;
    pool.add_entitlement(0, &admin(), &new, &mut batch).unwrap();
    let ana = pool.authorize(USERS[0]).unwrap();
    let request = tally_protocol::Borrow {
        feature: "vray".into(),
        seats: 1,
        duration_secs: u64::MAX,
        machine_id: "m".into(),
    };
    let err = pool
        .borrow(1, &ana, &holder(0), &request, LeaseId([1; 16]), &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Invalid);
    assert_eq!(pool.lease_count(), 0);
}

#[test]
fn an_expiring_entitlement_ends_its_assignments_and_their_leases() {
    let (mut pool, mut batch) = pool_with_users(Policy::default());
    let mut short = entitlement("vray", 3);
    short.expires_at = Some(5_000);
    pool.add_entitlement(0, &admin(), &short, &mut batch)
        .unwrap();
    pool.assign(
        0,
        &admin(),
        &assign_request(USERS[0], "vray", 2, None),
        &mut batch,
    )
    .unwrap();
    let ana = pool.authorize(USERS[0]).unwrap();
    let lease = pool
        .checkout(
            1,
            &ana,
            &holder(0),
            &checkout("vray", 1, 1),
            LeaseId([1; 16]),
            &mut batch,
        )
        .unwrap();
    assert!(matches!(
        lease.source,
        tally_protocol::LeaseSource::Assignment(_)
    ));
    let mut batch = Batch::default();
    pool.sweep(5_000, &mut batch);
    assert_eq!(pool.lease_count(), 0, "its leases end");
    assert!(
        pool.snapshot().assignments.is_empty(),
        "its assignments end"
    );
    assert_eq!(batch.assignments_removed.len(), 1);
    assert!(batch
        .audit
        .iter()
        .any(|e| e.action == "reclaim" && e.reason.starts_with("expired")));
    assert!(batch
        .notifications
        .iter()
        .any(|n| n.kind == "assignment_revoked" && n.subject == USERS[0]));
    let ack = pool.heartbeat(5_001, &ana, &holder(0), &mut batch);
    assert_eq!(ack.ended[0].reason, EndReason::Expired);
    pool.check_invariants(5_001).unwrap();
}

#[test]
fn assign_draws_by_default_from_the_active_entitlement_expiring_last_with_room() {
    let (mut pool, mut batch) = pool_with_users(Policy::default());
    let mut soon = entitlement("vray", 5);
    soon.expires_at = Some(10_000);
    let soon = pool
        .add_entitlement(0, &admin(), &soon, &mut batch)
        .unwrap()
        .id;
    let mut later = entitlement("vray", 1);
    later.expires_at = Some(20_000);
    let later = pool
        .add_entitlement(0, &admin(), &later, &mut batch)
        .unwrap()
        .id;
    let never = pool
        .add_entitlement(0, &admin(), &entitlement("vray", 1), &mut batch)
        .unwrap()
        .id;
    let first = pool
        .assign(
            1,
            &admin(),
            &assign_request(USERS[0], "vray", 1, None),
            &mut batch,
        )
        .unwrap();
    assert_eq!(first.entitlement, never, "no end is the latest end");
    let second = pool
        .assign(
            1,
            &admin(),
            &assign_request(USERS[1], "vray", 1, None),
            &mut batch,
        )
        .unwrap();
    assert_eq!(second.entitlement, later, "the never-ending one is full");
    let third = pool
        .assign(
            1,
            &admin(),
            &assign_request(USERS[2], "vray", 2, None),
            &mut batch,
        )
        .unwrap();
    assert_eq!(third.entitlement, soon, "only it has two seats of room");
}

#[test]
fn a_borrowed_seat_counts_as_used_until_it_ends_and_then_frees_itself() {
    let (mut pool, mut batch) = pool_with_users(Policy::default());
    let mut lendable = entitlement("vray", 1);
    lendable.borrowable = true;
    pool.add_entitlement(0, &admin(), &lendable, &mut batch)
        .unwrap();
    let ana = pool.authorize(USERS[0]).unwrap();
    let request = tally_protocol::Borrow {
        feature: "vray".into(),
        seats: 1,
        duration_secs: 60,
        machine_id: "m".into(),
    };
    pool.borrow(0, &ana, &holder(0), &request, LeaseId([1; 16]), &mut batch)
        .unwrap();
    let ben = pool.authorize(USERS[1]).unwrap();
    // No heartbeat ever comes, and the seat stays used for the whole minute.
    let err = pool
        .checkout(
            59_999,
            &ben,
            &holder(1),
            &checkout("vray", 1, 1),
            LeaseId([2; 16]),
            &mut batch,
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NoSeat);
    let status = pool.status(59_999, Some("vray"), &mut batch).unwrap();
    assert_eq!((status[0].borrowed, status[0].available), (1, 0));
    pool.sweep(60_000, &mut batch);
    let status = pool.status(60_000, Some("vray"), &mut batch).unwrap();
    assert_eq!((status[0].borrowed, status[0].available), (0, 1));
    assert!(pool
        .checkout(
            60_000,
            &ben,
            &holder(1),
            &checkout("vray", 1, 2),
            LeaseId([3; 16]),
            &mut batch
        )
        .is_ok());
}

#[test]
fn an_assignment_shows_the_end_it_really_has() {
    let (mut pool, mut batch) = pool_with_users(Policy::default());
    let mut ending = entitlement("vray", 4);
    ending.expires_at = Some(50_000);
    pool.add_entitlement(0, &admin(), &ending, &mut batch)
        .unwrap();
    // No end of its own: the entitlement's.
    let open = pool
        .assign(
            0,
            &admin(),
            &assign_request(USERS[0], "vray", 1, None),
            &mut batch,
        )
        .unwrap();
    assert_eq!(open.expires_at, Some(50_000));
    // Its own end, when that comes first.
    let mut sooner = assign_request(USERS[1], "vray", 1, None);
    sooner.expires_at = Some(20_000);
    let sooner = pool.assign(0, &admin(), &sooner, &mut batch).unwrap();
    assert_eq!(sooner.expires_at, Some(20_000));
    let whoami = pool.whoami(1, &member(0), &mut batch).unwrap();
    assert_eq!(whoami.assignments[0].expires_at, Some(50_000));
}

#[test]
fn a_lease_resumed_by_another_instance_is_audited_and_its_old_holder_told() {
    let mut pool = pool_with("vray", 2, 0);
    let mut batch = Batch::default();
    let lease = pool
        .checkout(
            0,
            &member(0),
            &holder(0),
            &checkout("vray", 1, 1),
            LeaseId([1; 16]),
            &mut batch,
        )
        .unwrap();
    // The same user's other instance (client 3 is ana too) takes it over.
    let moved = pool.resume(10, &member(3), &holder(3), &[lease.id], &mut batch);
    assert_eq!(moved.resumed.len(), 1);
    assert!(batch
        .audit
        .iter()
        .any(|e| e.action == "resume" && e.reason.contains("moved from node0 to node3")));
    let ack = pool.heartbeat(20, &member(0), &holder(0), &mut batch);
    assert_eq!(
        ack.ended,
        vec![tally_protocol::EndedLease {
            lease: lease.id,
            reason: EndReason::Moved
        }]
    );
    pool.check_invariants(20).unwrap();
}

/// Lease listings page newest grant first, then by id: the pages join up to the whole
/// list with nothing twice, `next` is absent exactly on the last page, members page
/// through their own leases only, and a byte budget ends a page early.
#[test]
fn leases_page_with_a_cursor() {
    let (mut pool, mut batch) = pool_with_users(Policy::default());
    pool.add_entitlement(0, &admin(), &entitlement("vray", 100), &mut batch)
        .unwrap();
    let mut all = Vec::new();
    for i in 0..30u8 {
        // Three leases share each grant time, so the id breaks ties.
        let lease = pool
            .checkout(
                1 + i64::from(i / 3),
                &member(usize::from(i % 2)),
                &holder(usize::from(i)),
                &checkout("vray", 1, i),
                LeaseId([i; 16]),
                &mut batch,
            )
            .unwrap();
        all.push(lease);
    }
    all.sort_by(|a, b| b.granted_at.cmp(&a.granted_at).then(a.id.cmp(&b.id)));
    let query = LeasesQuery {
        feature: None,
        user: None,
    };
    let page_through = |pool: &mut Pool, actor: &Actor, limit: usize, bytes: usize| {
        let mut batch = Batch::default();
        let mut listed = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let page = pool
                .leases_page(20, actor, &query, after, limit, bytes, &mut batch)
                .unwrap();
            pages += 1;
            assert!(!page.leases.is_empty() && page.leases.len() <= limit);
            listed.extend(page.leases.iter().map(|l| l.id));
            match page.next {
                Some(next) => after = Some(next),
                None => return (listed, pages),
            }
        }
    };
    let ids: Vec<LeaseId> = all.iter().map(|l| l.id).collect();
    assert_eq!(
        page_through(&mut pool, &admin(), 7, usize::MAX),
        (ids.clone(), 5)
    );
    assert_eq!(
        page_through(&mut pool, &admin(), 30, usize::MAX),
        (ids.clone(), 1)
    );
    // A budget of about two leases of text: pages of two or three.
    let (listed, pages) = page_through(&mut pool, &admin(), 1000, 150);
    assert_eq!(listed, ids);
    assert!(pages >= 10, "{pages} pages");
    let own: Vec<LeaseId> = all
        .iter()
        .filter(|l| l.user == member(0).username)
        .map(|l| l.id)
        .collect();
    assert_eq!(page_through(&mut pool, &member(0), 3, usize::MAX).0, own);
}

#[test]
fn a_client_instance_holds_at_most_max_leases_per_client_online_leases() {
    let (mut pool, mut batch) = pool_with_users(Policy {
        max_leases_per_client: 3,
        ..Policy::default()
    });
    pool.add_entitlement(0, &admin(), &entitlement("vray", 10), &mut batch)
        .unwrap();
    let ana = member(0);
    let take = |pool: &mut Pool, batch: &mut Batch, client: usize, n: u8| {
        pool.checkout(
            1,
            &ana,
            &holder(client),
            &Checkout {
                request_id: request_id(client, n),
                feature: "vray".into(),
                seats: 1,
            },
            LeaseId([
                client as u8 + 1,
                n,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ]),
            batch,
        )
    };
    let first = take(&mut pool, &mut batch, 0, 1).unwrap();
    take(&mut pool, &mut batch, 0, 2).unwrap();
    take(&mut pool, &mut batch, 0, 3).unwrap();
    let err = take(&mut pool, &mut batch, 0, 4).unwrap_err();
    assert_eq!(err.code, ErrorCode::Invalid);
    assert!(
        err.message.contains("3 leases") && err.message.contains("limits.max_leases_per_client"),
        "{}",
        err.message
    );
    // A retry of a granted checkout still gets its lease; another instance has its own count.
    assert_eq!(take(&mut pool, &mut batch, 0, 1).unwrap().id, first.id);
    take(&mut pool, &mut batch, 1, 1).unwrap();
    // Checking one in makes room again.
    pool.checkin(1, &ana, first.id, &mut batch).unwrap();
    take(&mut pool, &mut batch, 0, 5).unwrap();
}

#[test]
fn a_revoked_token_is_not_brought_back_by_a_late_store_look_up() {
    let (mut pool, mut batch) = pool_with_users(Policy::default());
    let hash = [42; 32];
    let ana = pool.users[USERS[0]].id;
    let token = Token {
        id: token_id(&hash),
        hash,
        user: ana,
        label: String::new(),
        created_at: 0,
        last_used: None,
    };
    // A token minted outside the engine (tallyd owner-token) is adopted at its first sign-in.
    assert!(pool.sign_in(1, &hash, &mut batch).is_err());
    assert!(pool.adopt_token(token.clone()));
    assert_eq!(pool.sign_in(1, &hash, &mut batch).unwrap().user_id, ana);
    pool.revoke_token(2, &admin(), &token.id, &mut batch)
        .unwrap();
    assert!(!pool.adopt_token(token), "a revoked token came back");
    assert!(pool.sign_in(3, &hash, &mut batch).is_err());
}

/// Free text an admin gives (a user's name, an entitlement's reference) is stored as it is
/// and shown in terminals and logs: control characters are refused with a reason, and so is
/// NUL, which PostgreSQL's text cannot hold.
#[test]
fn names_and_references_with_control_characters_are_refused() {
    let (mut pool, mut batch) = pool_with_users(Policy::default());
    for text in ["a\0b", "line\nbreak", "esc\u{1b}[2J"] {
        let add = tally_protocol::UserAdd {
            username: "new@studio.test".into(),
            name: text.into(),
            role: Role::Member,
        };
        let err = pool
            .add_user(0, &admin(), &add, token(99), &mut batch)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Invalid);
        assert!(
            err.message.contains("control characters"),
            "{}",
            err.message
        );
        let mut new = entitlement("vray", 1);
        new.reference = text.into();
        let err = pool
            .add_entitlement(0, &admin(), &new, &mut batch)
            .unwrap_err();
        assert!(
            err.message.contains("control characters"),
            "{}",
            err.message
        );
    }
    assert!(pool.list_entitlements(None).is_empty());
}
