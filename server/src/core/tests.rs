//! The pool under random interleavings, and its rules one by one.

use proptest::prelude::*;
use tally_protocol::{
    Checkout, ClientId, EndReason, EntitlementKind, ErrorCode, GroupRef, LeaseId, LeaseInfo,
    LeaseSource, LeasesQuery, NewEntitlement, PolicyAdd, PolicyCheck, RequestId, Role, RuleKind,
    RuleRef, RuleSpec,
};

use super::credits::Access;
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
        peer: Peer {
            program: format!("render {i}"),
            pid: 1000 + i as u32,
            address: format!("10.0.0.{i}"),
        },
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
    /// `entitlement remove`, refusing to end leases unless `force`.
    DeleteEntitlement {
        pick: usize,
        force: bool,
    },
    /// `entitlement update`: new seats, a start from now, an end from now (`Some(None)`:
    /// never).
    UpdateEntitlement {
        pick: usize,
        seats: Option<u32>,
        starts_in: Option<i64>,
        lasts: Option<Option<i64>>,
        force: bool,
    },
    /// `release` by id prefix, or every online lease of a lease's user.
    ReleaseMatching {
        pick: usize,
        by_user: bool,
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
    /// `feature require vray nuke` (`on`) or `feature unrequire vray nuke` (R18).
    Require {
        on: bool,
    },
    /// A checkout that waits in the queue (R17), for `wait` seconds or with no limit.
    Wait {
        client: usize,
        feature: usize,
        seats: u32,
        wait: Option<u64>,
    },
    /// The client gives up its last wait.
    CancelWait {
        client: usize,
    },
    /// `group add GROUPS[group] MEMBERS[m]...` (R16).
    AddGroup {
        group: usize,
        members: Vec<usize>,
    },
    /// `group member add|remove GROUPS[group] MEMBERS[m]...`.
    ChangeMembers {
        group: usize,
        add: bool,
        members: Vec<usize>,
    },
    /// `policy add FEATURES[feature] RULE_KINDS[kind] seats GROUPS[group] [--each]
    /// [--dry-run]`; the number and group are dropped for the kinds that take none.
    AddRule {
        feature: usize,
        kind: usize,
        seats: u32,
        group: usize,
        each: bool,
        dry_run: bool,
    },
    /// `policy remove` of the `pick`th rule, or of one that does not exist.
    RemoveRule {
        pick: usize,
    },
    /// `group remove GROUPS[group]`, refused while a rule names it.
    RemoveGroup {
        group: usize,
    },
    /// `credits add cloud AMOUNT [--expires]` (R21), ending `lasts` ms from now if it does.
    BuyCredits {
        amount: u64,
        lasts: Option<i64>,
    },
    /// `quota set USERS[user] cloud QUOTA`, `--unlimited` (`Some(None)`), or `quota remove`
    /// (`None`).
    SetQuota {
        user: usize,
        quota: Option<Option<u64>>,
    },
    /// `consume cloud AMOUNT` by `USERS[user]`, or a retry of their last consumption with
    /// its request id (and what it asked).
    Consume {
        user: usize,
        amount: u64,
        retry: bool,
    },
}

/// The kinds of rule random runs add, those that count seats more often.
const RULE_KINDS: [RuleKind; 10] = [
    RuleKind::Include,
    RuleKind::Exclude,
    RuleKind::Reserve,
    RuleKind::Reserve,
    RuleKind::Max,
    RuleKind::Max,
    RuleKind::Max,
    RuleKind::BorrowExclude,
    RuleKind::BorrowLowwater,
    RuleKind::Priority,
];

/// The groups random runs make.
const GROUPS: [&str; 3] = ["leads", "farm", "lab"];

/// The members random runs put in groups: users, host patterns and networks that take in
/// some of the holders of [`varied_holder`] and not others.
const MEMBERS: [&str; 9] = [
    "user:ana@studio",
    "user:ben@studio",
    "user:gus@studio",
    "host:ws1",
    "host:ws?",
    "host:farm*",
    "ip:10.0.0.0/24",
    "ip:10.0.1.2/32",
    "ip:fe80::/64",
];

/// Client `i` of a random run: its user is that of [`member`]; hosts and addresses are
/// shared between users (ws1: ana and ben; 10.0.0.1: ana and ben, once as an IPv4-mapped
/// IPv6 address) so that `max --each` per host and per address counts across users.
fn varied_holder(i: usize) -> Holder {
    const HOSTS: [&str; 6] = ["ws1", "WS1", "ws2", "farm1", "farm2", "laptop"];
    const ADDRESSES: [&str; 6] = [
        "10.0.0.1",
        "10.0.0.2",
        "10.0.1.2",
        "::ffff:10.0.0.1",
        "10.0.0.1",
        "fe80::1",
    ];
    let mut holder = holder(i);
    holder.host = HOSTS[i % HOSTS.len()].into();
    holder.peer.address = ADDRESSES[i % ADDRESSES.len()].into();
    holder
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
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, force)| Op::DeleteEntitlement { pick, force }),
        3 => (
            any::<usize>(),
            proptest::option::of(1..6u32),
            proptest::option::of(-TTL..TTL),
            proptest::option::of(proptest::option::of(1..3 * TTL)),
            any::<bool>(),
        )
            .prop_map(|(pick, seats, starts_in, lasts, force)| Op::UpdateEntitlement { pick, seats, starts_in, lasts, force }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, by_user)| Op::ReleaseMatching { pick, by_user }),
        3 => (0..3usize, 0..2usize, 1..4u32, proptest::option::of(0..3usize), proptest::option::of(1..3 * TTL))
            .prop_map(|(user, feature, seats, from, lasts)| Op::Assign { user, feature, seats, from, lasts }),
        2 => (0..3usize, 0..2usize, proptest::option::of(1..4u32))
            .prop_map(|(user, feature, seats)| Op::Revoke { user, feature, seats }),
        2 => (0..3usize).prop_map(|user| Op::Deactivate { user }),
        2 => (0..3usize).prop_map(|user| Op::Activate { user }),
        1 => (0..4 * TTL).prop_map(|downtime| Op::Restart { downtime }),
        1 => (0..2 * TTL).prop_map(|delay| Op::FailNextCommit { delay }),
        1 => any::<bool>().prop_map(|on| Op::Require { on }),
        4 => (0..6usize, 0..2usize, 1..4u32, proptest::option::of(0..30u64))
            .prop_map(|(client, feature, seats, wait)| Op::Wait { client, feature, seats, wait }),
        1 => (0..6usize).prop_map(|client| Op::CancelWait { client }),
        2 => (0..3usize, proptest::collection::vec(0..MEMBERS.len(), 0..4))
            .prop_map(|(group, members)| Op::AddGroup { group, members }),
        1 => (0..3usize, any::<bool>(), proptest::collection::vec(0..MEMBERS.len(), 0..3))
            .prop_map(|(group, add, members)| Op::ChangeMembers { group, add, members }),
        5 => (0..2usize, 0..RULE_KINDS.len(), 0..5u32, 0..3usize, any::<bool>(), proptest::bool::weighted(0.2))
            .prop_map(|(feature, kind, seats, group, each, dry_run)| Op::AddRule { feature, kind, seats, group, each, dry_run }),
        1 => any::<usize>().prop_map(|pick| Op::RemoveRule { pick }),
        1 => (0..3usize).prop_map(|group| Op::RemoveGroup { group }),
        2 => (1..50u64, proptest::option::of(1..3 * TTL))
            .prop_map(|(amount, lasts)| Op::BuyCredits { amount, lasts }),
        2 => (0..3usize, proptest::option::of(proptest::option::of(0..40u64)))
            .prop_map(|(user, quota)| Op::SetQuota { user, quota }),
        4 => (0..3usize, 1..30u64, any::<bool>())
            .prop_map(|(user, amount, retry)| Op::Consume { user, amount, retry }),
    ]
}

/// The request id of a user's `n`th consumption in a random run.
fn consume_id(user: usize, n: u8) -> RequestId {
    let mut bytes = [0u8; 16];
    bytes[0] = 0x80 | user as u8;
    bytes[1] = n;
    RequestId(bytes)
}

/// A holder as the test's own policy checker sees it: user, host and address, with an
/// IPv4-mapped IPv6 address taken as the IPv4 address it is.
struct Seen {
    user: String,
    host: String,
    address: Option<std::net::IpAddr>,
}

impl Seen {
    fn of(user: &str, host: &str, address: &str) -> Self {
        Self {
            user: user.to_lowercase(),
            host: host.to_lowercase(),
            address: address
                .parse::<std::net::IpAddr>()
                .ok()
                .map(|a| a.to_canonical()),
        }
    }

    fn of_lease(lease: &Lease) -> Self {
        Self::of(&lease.user, &lease.host, &lease.peer.address)
    }
}

/// `*` any run, `?` any one character, ASCII case ignored: by brute force.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob(&pattern[1..], text) || (!text.is_empty() && glob(pattern, &text[1..]))
        }
        (Some(b'?'), Some(_)) => glob(&pattern[1..], &text[1..]),
        (Some(p), Some(t)) => p.eq_ignore_ascii_case(t) && glob(&pattern[1..], &text[1..]),
        _ => false,
    }
}

fn takes_in(member: &tally_protocol::Member, who: &Seen) -> bool {
    use std::net::IpAddr;
    use tally_protocol::Member;
    match member {
        Member::User(name) => name.eq_ignore_ascii_case(&who.user),
        Member::Host(pattern) => glob(pattern.as_bytes(), who.host.as_bytes()),
        Member::Ip { network, prefix } => {
            let bits = |a: IpAddr| -> (bool, u128) {
                match a.to_canonical() {
                    IpAddr::V4(v4) => (true, u128::from(u32::from(v4)) << 96),
                    IpAddr::V6(v6) => (false, u128::from(v6)),
                }
            };
            let (v4, net) = bits(*network);
            let width = u32::from(*prefix);
            let mask = u128::MAX.checked_shl(128 - width).unwrap_or(0);
            who.address.is_some_and(|a| {
                let (a4, a) = bits(a);
                a4 == v4 && a & mask == net & mask
            })
        }
    }
}

fn in_group(pool: &Pool, group: Option<&str>, who: &Seen) -> bool {
    group
        .and_then(|g| pool.rules.groups.get(g))
        .is_some_and(|g| g.members.iter().any(|m| takes_in(m, who)))
}

/// The rules of a feature, in id order.
fn rules_of<'a>(pool: &'a Pool, feature: &'a str) -> impl Iterator<Item = &'a Rule> + 'a {
    pool.rules
        .rules
        .values()
        .filter(move |r| r.spec.feature == feature)
}

/// The least number of reserved seats left unused, over every way of counting the floating
/// seats members hold toward the reserves of their groups (a matching, by augmenting
/// paths), with the reserves honoured in id order up to the floating capacity.
fn least_unused_reserves(pool: &Pool, feature: &str, capacity: u32) -> u32 {
    let mut left = capacity;
    let reserves: Vec<(&Rule, u32)> = rules_of(pool, feature)
        .filter(|r| r.spec.kind == RuleKind::Reserve)
        .map(|r| {
            let kept = r.spec.seats.min(left);
            left -= kept;
            (r, kept)
        })
        .collect();
    // One entry per floating seat held: the reserves it may count toward.
    let mut seats: Vec<Vec<usize>> = Vec::new();
    for lease in pool.ledger.leases.values() {
        if lease.feature != feature || lease.source != LeaseSource::Floating {
            continue;
        }
        let who = Seen::of_lease(lease);
        let fits: Vec<usize> = reserves
            .iter()
            .enumerate()
            .filter(|(_, (r, _))| in_group(pool, r.spec.group.as_deref(), &who))
            .map(|(i, _)| i)
            .collect();
        for _ in 0..lease.seats {
            seats.push(fits.clone());
        }
    }
    fn place(
        seat: usize,
        seats: &[Vec<usize>],
        kept: &[u32],
        holding: &mut [Vec<usize>],
        seen: &mut [bool],
    ) -> bool {
        for &r in &seats[seat] {
            if seen[r] {
                continue;
            }
            seen[r] = true;
            if (holding[r].len() as u32) < kept[r] {
                holding[r].push(seat);
                return true;
            }
            for at in 0..holding[r].len() {
                let other = holding[r][at];
                if place(other, seats, kept, holding, seen) {
                    holding[r][at] = seat;
                    return true;
                }
            }
        }
        false
    }
    let kept: Vec<u32> = reserves.iter().map(|(_, k)| *k).collect();
    let mut holding: Vec<Vec<usize>> = vec![Vec::new(); kept.len()];
    let mut matched = 0u32;
    for seat in 0..seats.len() {
        let mut seen = vec![false; kept.len()];
        if place(seat, &seats, &kept, &mut holding, &mut seen) {
            matched += 1;
        }
    }
    kept.iter().sum::<u32>() - matched
}

/// Checks, from scratch, that the rules of its feature allowed a lease just granted: it is
/// not excluded, an include admits it, every `max` that takes it in holds with it counted,
/// a borrow is not borrow-excluded and keeps the low water, and a floating seat of a holder
/// in no reserve group left the seats the reserves keep unused.
fn granted_within_rules(pool: &Pool, lease: &Lease, now: i64) -> Result<(), String> {
    let feature = lease.feature.as_str();
    let who = Seen::of_lease(lease);
    let held = |same: &dyn Fn(&Seen) -> bool| -> u32 {
        pool.ledger
            .leases
            .values()
            .filter(|l| l.feature == feature && same(&Seen::of_lease(l)))
            .map(|l| l.seats)
            .sum()
    };
    let capacity = pool.floating_capacity(feature, now);
    let floating = |kind: Option<tally_protocol::LeaseKind>| -> u32 {
        pool.ledger
            .leases
            .values()
            .filter(|l| l.feature == feature && l.source == LeaseSource::Floating)
            .filter(|l| kind.is_none_or(|k| l.kind == k))
            .map(|l| l.seats)
            .sum()
    };
    let borrowed = lease.kind == tally_protocol::LeaseKind::Borrowed;
    let mut includes = rules_of(pool, feature)
        .filter(|r| r.spec.kind == RuleKind::Include)
        .peekable();
    if includes.peek().is_some() && !includes.any(|r| in_group(pool, r.spec.group.as_deref(), &who))
    {
        return Err(format!(
            "lease {} was granted outside every include",
            lease.id
        ));
    }
    for rule in rules_of(pool, feature) {
        let group = rule.spec.group.as_deref();
        let member = in_group(pool, group, &who);
        let breach = match rule.spec.kind {
            RuleKind::Exclude => member,
            RuleKind::BorrowExclude => member && borrowed,
            RuleKind::Max if member && !rule.spec.each => {
                held(&|other| in_group(pool, group, other)) > rule.spec.seats
            }
            RuleKind::Max if member => pool.rules.groups[group.unwrap()]
                .members
                .iter()
                .filter(|m| takes_in(m, &who))
                .any(|m| {
                    let count = match m {
                        tally_protocol::Member::User(_) => held(&|o| o.user == who.user),
                        tally_protocol::Member::Host(_) => held(&|o| o.host == who.host),
                        tally_protocol::Member::Ip { .. } => held(&|o| o.address == who.address),
                    };
                    count > rule.spec.seats
                }),
            RuleKind::BorrowLowwater => {
                borrowed
                    && lease.source == LeaseSource::Floating
                    && floating(Some(tally_protocol::LeaseKind::Borrowed))
                        > capacity.saturating_sub(rule.spec.seats)
            }
            RuleKind::Reserve => {
                lease.source == LeaseSource::Floating
                    && !rules_of(pool, feature).any(|r| {
                        r.spec.kind == RuleKind::Reserve
                            && in_group(pool, r.spec.group.as_deref(), &who)
                    })
                    && floating(None) + least_unused_reserves(pool, feature, capacity) > capacity
            }
            _ => false,
        };
        if breach {
            return Err(format!(
                "lease {} ({} seat(s) of {feature} for {} on {} from {}) was granted against rule {} ({})",
                lease.id,
                lease.seats,
                lease.user,
                lease.host,
                lease.peer.address,
                rule.id,
                rule.spec.text()
            ));
        }
    }
    Ok(())
}

/// Checks a refusal: `denied` exactly when it names a rule, and then a rule that exists, of
/// the feature or of a prerequisite of it, that takes the asker in (or, for an include,
/// that no include of that feature admits them).
fn refusal_names_a_rule(
    pool: &Pool,
    feature: &str,
    who: &Seen,
    borrow: bool,
    err: &ErrorBody,
) -> Result<(), String> {
    let Some(at) = err.message.find("denied by rule ") else {
        return if err.code == ErrorCode::Denied {
            Err(format!("denied naming no rule: {}", err.message))
        } else {
            Ok(())
        };
    };
    if err.code != ErrorCode::Denied {
        return Err(format!(
            "a rule refused with {:?}: {}",
            err.code, err.message
        ));
    }
    let rest = &err.message[at + "denied by rule ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let Some(rule) = digits
        .parse()
        .ok()
        .and_then(|id: u64| pool.rules.rules.get(&id))
    else {
        return Err(format!(
            "denied by a rule that does not exist: {}",
            err.message
        ));
    };
    let of = rule.spec.feature.as_str();
    let named = format!("{digits} ({of}: {})", rule.spec.text());
    if !rest.starts_with(&named)
        || (of != feature && !pool.prerequisites_of(feature).iter().any(|p| p == of))
    {
        return Err(format!(
            "denied by a rule of another feature: {}",
            err.message
        ));
    }
    let group = rule.spec.group.as_deref();
    let applies = match rule.spec.kind {
        RuleKind::Include => !rules_of(pool, of)
            .filter(|r| r.spec.kind == RuleKind::Include)
            .any(|r| in_group(pool, r.spec.group.as_deref(), who)),
        RuleKind::Exclude | RuleKind::Max => in_group(pool, group, who),
        RuleKind::BorrowExclude => borrow && in_group(pool, group, who),
        RuleKind::BorrowLowwater => borrow,
        RuleKind::Reserve | RuleKind::Priority => false,
    };
    if !applies {
        return Err(format!(
            "denied by a rule that does not apply: {}",
            err.message
        ));
    }
    Ok(())
}

/// Runs the ops against a pool and a model store that applies every batch, checking R1,
/// that the store always holds exactly what the pool holds, and that every grant and denial
/// keeps the policy rules. The pool starts with the groups of [`GROUPS`] whose members are
/// `groups` (indexes into [`MEMBERS`]).
fn run(groups: &[Vec<usize>], ops: &[Op]) -> Result<(), TestCaseError> {
    let mut now: i64 = 1_000_000;
    let policy = Policy {
        guests_use_floating: false,
        max_active: 0,
        borrow_max_ms: 3 * TTL,
        max_leases_per_client: 0,
    };
    let (mut pool, mut seed) = pool_with_users(policy);
    for (name, members) in GROUPS.iter().zip(groups) {
        let request = tally_protocol::GroupAdd {
            name: name.to_string(),
            members: members.iter().map(|&m| MEMBERS[m].to_string()).collect(),
        };
        pool.add_group(0, &admin(), &request, &mut seed).unwrap();
    }
    let mut store = Snapshot {
        next_entitlement_id: 1,
        next_assignment_id: 1,
        next_rule_id: 1,
        next_purchase_id: 1,
        ..Snapshot::default()
    };
    store.apply(&seed);
    let mut last_request: Vec<u8> = vec![0; 6];
    let mut next_lease: u128 = 1;
    // Metered credits (R21): each user's last consumption (id, amount); the first answer to
    // every acknowledged (committed) request id; what acknowledged consumptions took, in
    // all and per user.
    let mut last_consume: Vec<Option<(u8, u64)>> = vec![None; 3];
    let mut acknowledged: HashMap<(usize, u8), Result<tally_protocol::Consumed, ErrorBody>> =
        HashMap::new();
    let mut consumed_total = 0u64;
    let mut consumed_by: [u64; 3] = [0; 3];
    // Set by `FailNextCommit`: the current step's commit fails.
    let mut commit_fails: Option<i64> = None;
    for op in ops {
        let failing = commit_fails.take();
        let mut batch = Batch::default();
        // A consumption answered in this step: acknowledged only if its batch commits.
        let mut answered: Option<(usize, u8, Result<tally_protocol::Consumed, ErrorBody>)> = None;
        let before = pool.snapshot();
        // A refused change must leave the pool exactly as it was (the marks of
        // notifications aside: a refusal for lack of seats is itself news, R20).
        let unchanged = |pool: &Pool, what: &str| -> Result<(), TestCaseError> {
            let mut after = pool.snapshot();
            after.marks.clone_from(&before.marks);
            prop_assert_eq!(&after, &before, "{} was refused but changed the pool", what);
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
                    &varied_holder(client),
                    &Checkout {
                        request_id: request_id(client, last_request[client]),
                        feature: FEATURES[feature].into(),
                        seats,
                    },
                    id,
                    &mut batch,
                );
                let asker = varied_holder(client);
                let who = Seen::of(&actor.username, &asker.host, &asker.peer.address);
                match &result {
                    Ok(_) => {
                        for lease in pool.ledger.leases.values() {
                            if !lease_ids.contains(&lease.id) {
                                if let Err(breach) = granted_within_rules(&pool, lease, now) {
                                    return Err(TestCaseError::fail(format!(
                                        "after {op:?}: {breach}"
                                    )));
                                }
                            }
                        }
                    }
                    Err(err) => {
                        if let Err(wrong) =
                            refusal_names_a_rule(&pool, FEATURES[feature], &who, false, err)
                        {
                            return Err(TestCaseError::fail(format!("after {op:?}: {wrong}")));
                        }
                    }
                }
                if retry && result.is_ok() && pool.lease_count() == before + 1 {
                    // A retry that got a new lease must not have had a live one to return.
                    let live = pool
                        .snapshot()
                        .leases
                        .iter()
                        .filter(|l| {
                            l.client == varied_holder(client).client
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
                pool.heartbeat(now, &actor, &varied_holder(client), &mut batch);
                // As the engine does for every request: the instance's waits are kept.
                pool.queue_seen(varied_holder(client).client, now);
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
                    pool.resume(now, &actor, &varied_holder(client), &[id], &mut batch);
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
            Op::DeleteEntitlement { pick: i, force } => {
                let ids: Vec<u64> = pool.list_entitlements(None).iter().map(|e| e.id).collect();
                if !ids.is_empty() {
                    let request = tally_protocol::EntitlementDelete {
                        id: ids[i % ids.len()],
                        force,
                    };
                    let held = pool.lease_count();
                    match pool.delete_entitlement(now, &admin(), &request, &mut batch) {
                        Ok(deleted) => {
                            prop_assert!(force || deleted.ended.is_empty(), "{:?}", deleted);
                            prop_assert!(pool.lease_count() + deleted.ended.len() <= held);
                        }
                        Err(err) => {
                            prop_assert!(
                                err.code == ErrorCode::Borrowed
                                    || (!force && err.code == ErrorCode::Invalid),
                                "{}",
                                err.message
                            );
                            unchanged(&pool, "entitlement remove")?;
                        }
                    }
                }
            }
            Op::UpdateEntitlement {
                pick: i,
                seats,
                starts_in,
                lasts,
                force,
            } => {
                let ids: Vec<u64> = pool.list_entitlements(None).iter().map(|e| e.id).collect();
                if !ids.is_empty() {
                    let request = tally_protocol::EntitlementUpdate {
                        id: ids[i % ids.len()],
                        seats,
                        starts_at: starts_in.map(|s| now + s),
                        expires_at: lasts.map(|l| l.map(|l| now + l)),
                        borrowable: None,
                        max_borrow_secs: None,
                        reference: None,
                        force,
                    };
                    match pool.update_entitlement(now, &admin(), &request, &mut batch) {
                        Ok(updated) => {
                            prop_assert!(force || updated.ended.is_empty(), "{:?}", updated);
                            prop_assert_eq!(
                                &pool
                                    .list_entitlements(None)
                                    .into_iter()
                                    .find(|e| e.id == request.id),
                                &Some(updated.entitlement)
                            );
                        }
                        Err(_) => unchanged(&pool, "entitlement update")?,
                    }
                }
            }
            Op::ReleaseMatching { pick: i, by_user } => {
                if let Some(id) = pick(i) {
                    let lease = pool.ledger.leases[&id].clone();
                    let request = tally_protocol::ReleaseMatching {
                        // Test lease ids count up from 1: their last digits tell them apart.
                        lease: (!by_user).then(|| format!("...{}", &id.to_string()[26..])),
                        user: by_user.then(|| lease.user.clone()),
                        host: None,
                        feature: None,
                    };
                    match pool.release_matching(now, &admin(), &request, &mut batch) {
                        Ok(released) => {
                            for id in released {
                                prop_assert!(!pool.ledger.leases.contains_key(&id));
                            }
                        }
                        Err(_) => unchanged(&pool, "release")?,
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
                let asker = varied_holder(client);
                match pool.borrow(now, &actor, &asker, &request, id, &mut batch) {
                    Ok(lease) => {
                        prop_assert!(
                            lease.expires_at <= now + 3 * TTL,
                            "a borrow past borrow.max"
                        );
                        if let Err(breach) =
                            granted_within_rules(&pool, &pool.ledger.leases[&lease.id], now)
                        {
                            return Err(TestCaseError::fail(format!("after {op:?}: {breach}")));
                        }
                    }
                    Err(err) => {
                        unchanged(&pool, "borrow")?;
                        let who = Seen::of(&actor.username, &asker.host, &asker.peer.address);
                        if let Err(wrong) =
                            refusal_names_a_rule(&pool, FEATURES[feature], &who, true, &err)
                        {
                            return Err(TestCaseError::fail(format!("after {op:?}: {wrong}")));
                        }
                    }
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
                let assigned = |pool: &Pool| -> u32 {
                    pool.assignments
                        .values()
                        .filter(|a| a.user == USERS[user] && a.feature == FEATURES[feature])
                        .map(|a| a.seats)
                        .sum()
                };
                let had = assigned(&pool);
                match pool.revoke_with_totals(now, &admin(), &request, &mut batch) {
                    Ok(change) => {
                        prop_assert_eq!(assigned(&pool), had - change.seats);
                        let left: u32 = change
                            .assignments
                            .iter()
                            .filter(|a| a.feature == FEATURES[feature])
                            .map(|a| a.seats)
                            .sum();
                        prop_assert_eq!(left, assigned(&pool));
                    }
                    Err(_) => unchanged(&pool, "revoke")?,
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
            Op::Require { on } => {
                let requirement = tally_protocol::FeatureRequirement {
                    feature: FEATURES[0].into(),
                    requires: FEATURES[1].into(),
                };
                let done = if on {
                    pool.require(now, &admin(), &requirement, &mut batch)
                } else {
                    pool.unrequire(now, &admin(), &requirement, &mut batch)
                };
                if done.is_err() {
                    unchanged(&pool, "require")?;
                }
            }
            Op::AddGroup { group, members } => {
                let request = tally_protocol::GroupAdd {
                    name: GROUPS[group].into(),
                    members: members.iter().map(|&m| MEMBERS[m].to_string()).collect(),
                };
                let existed = pool.rules.groups.contains_key(GROUPS[group]);
                match pool.add_group(now, &admin(), &request, &mut batch) {
                    Ok(info) => {
                        prop_assert!(!existed);
                        prop_assert_eq!(info.members.len(), {
                            let mut distinct = members.clone();
                            distinct.sort_unstable();
                            distinct.dedup();
                            distinct.len()
                        });
                    }
                    Err(err) => {
                        prop_assert!(existed, "{}", err.message);
                        prop_assert_eq!(err.code, ErrorCode::AlreadyExists);
                        unchanged(&pool, "group add")?;
                    }
                }
            }
            Op::ChangeMembers {
                group,
                add,
                members,
            } => {
                let request = tally_protocol::GroupMembers {
                    name: GROUPS[group].into(),
                    add,
                    members: members.iter().map(|&m| MEMBERS[m].to_string()).collect(),
                };
                if pool
                    .change_group_members(now, &admin(), &request, &mut batch)
                    .is_err()
                {
                    unchanged(&pool, "group member change")?;
                }
            }
            Op::AddRule {
                feature,
                kind,
                seats,
                group,
                each,
                dry_run,
            } => {
                let kind = RULE_KINDS[kind];
                let request = PolicyAdd {
                    rule: RuleSpec {
                        feature: FEATURES[feature].into(),
                        kind,
                        seats: if kind.takes_number() { seats } else { 0 },
                        group: kind.takes_group().then(|| GROUPS[group].to_string()),
                        each: kind == RuleKind::Max && each,
                    },
                    dry_run,
                };
                match pool.add_rule(now, &admin(), &request, &mut batch) {
                    Ok(added) => {
                        prop_assert_eq!(added.rule.id.is_none(), dry_run);
                        if dry_run {
                            unchanged(&pool, "a dry run")?;
                        }
                    }
                    Err(err) => {
                        prop_assert!(
                            matches!(
                                err.code,
                                ErrorCode::NotFound | ErrorCode::AlreadyExists | ErrorCode::Invalid
                            ),
                            "{}",
                            err.message
                        );
                        unchanged(&pool, "policy add")?;
                    }
                }
            }
            Op::RemoveRule { pick } => {
                let ids: Vec<u64> = pool.rules.rules.keys().copied().collect();
                let id = if ids.is_empty() {
                    pick as u64 % 3 + 1
                } else {
                    ids[pick % ids.len()]
                };
                match pool.remove_rule(now, &admin(), RuleRef { id }, &mut batch) {
                    Ok(removed) => prop_assert_eq!(removed, id),
                    Err(err) => {
                        prop_assert!(ids.is_empty(), "{}", err.message);
                        prop_assert_eq!(err.code, ErrorCode::NotFound);
                        unchanged(&pool, "policy remove")?;
                    }
                }
            }
            Op::RemoveGroup { group } => {
                let name = GROUPS[group];
                let used = pool
                    .rules
                    .rules
                    .values()
                    .any(|r| r.spec.group.as_deref() == Some(name));
                let exists = pool.rules.groups.contains_key(name);
                let request = GroupRef { name: name.into() };
                match pool.remove_group(now, &admin(), &request, &mut batch) {
                    Ok(_) => prop_assert!(exists && !used),
                    Err(err) => {
                        let expected = if !exists {
                            ErrorCode::NotFound
                        } else {
                            ErrorCode::Invalid
                        };
                        prop_assert!(!exists || used, "{}", err.message);
                        prop_assert_eq!(err.code, expected, "{}", err.message);
                        unchanged(&pool, "group remove")?;
                    }
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
            Op::BuyCredits { amount, lasts } => {
                let request = tally_protocol::CreditsAdd {
                    meter: "cloud".into(),
                    amount,
                    expires_at: lasts.map(|l| now + l),
                    reference: String::new(),
                };
                pool.credits_add(now, &admin(), &request, &mut batch)
                    .map_err(|e| TestCaseError::fail(format!("credits add: {}", e.message)))?;
            }
            Op::SetQuota { user, quota } => {
                let username = USERS[user].to_string();
                let bought = pool.credits.purchases().next().is_some();
                let had = pool
                    .credits
                    .grant(pool.users[&username].id, "cloud")
                    .is_some();
                let result = match quota {
                    Some(quota) => {
                        let request = tally_protocol::QuotaSet {
                            username,
                            meter: "cloud".into(),
                            quota,
                        };
                        pool.quota_set(now, &admin(), &request, &mut batch)
                            .map(|_| ())
                    }
                    None => {
                        let request = tally_protocol::QuotaRef {
                            username,
                            meter: "cloud".into(),
                        };
                        pool.quota_remove(now, &admin(), &request, &mut batch)
                            .map(|_| ())
                    }
                };
                let expected = match quota {
                    Some(_) => bought,
                    None => had,
                };
                prop_assert_eq!(result.is_ok(), expected, "{:?}", result);
                if result.is_err() {
                    unchanged(&pool, "quota")?;
                }
            }
            Op::Consume {
                user,
                amount,
                retry,
            } => {
                let (n, amount) = match (retry, last_consume[user]) {
                    (true, Some(last)) => last,
                    _ => {
                        let n = last_consume[user].map_or(1, |(n, _)| n.wrapping_add(1));
                        last_consume[user] = Some((n, amount));
                        (n, amount)
                    }
                };
                let Ok(actor) = pool.authorize(USERS[user]) else {
                    continue;
                };
                let id = pool.users[USERS[user]].id;
                let grant = pool.credits.grant(id, "cloud");
                let balance = pool.credits.figures("cloud", now).balance;
                let request = tally_protocol::Consume {
                    request_id: consume_id(user, n),
                    meter: "cloud".into(),
                    amount,
                };
                let answer = pool.consume(now, &actor, &request, &mut batch);
                match acknowledged.get(&(user, n)) {
                    // A retry of an acknowledged consumption: its first answer, nothing more.
                    Some(first) => {
                        prop_assert_eq!(&answer, first, "a retry got another answer");
                        unchanged(&pool, "a retried consumption")?;
                    }
                    None => {
                        match &answer {
                            Ok(done) => {
                                prop_assert!(amount <= balance, "consumed past the balance");
                                prop_assert_eq!(done.consumed, amount);
                                prop_assert_eq!(done.balance, balance - amount);
                                let grant = grant.expect("consumed without access");
                                if let Some(Access::Quota(quota)) = grant.access {
                                    prop_assert!(grant.used + amount <= quota, "past the quota");
                                }
                            }
                            Err(err) => {
                                prop_assert_eq!(err.code, ErrorCode::NoCredit, "{}", err.message);
                                let short = grant
                                    .is_none_or(|g| g.remaining().is_some_and(|r| r < amount))
                                    || balance < amount;
                                prop_assert!(short, "refused with enough credit: {}", err.message);
                            }
                        }
                        answered = Some((user, n, answer));
                    }
                }
            }
            Op::Wait {
                client,
                feature,
                seats,
                wait,
            } => {
                last_request[client] = last_request[client].wrapping_add(1);
                let Ok(actor) = pool.authorize(&member(client).username) else {
                    continue;
                };
                let request = tally_protocol::CheckoutWait {
                    checkout: Checkout {
                        request_id: request_id(client, last_request[client]),
                        feature: FEATURES[feature].into(),
                        seats,
                    },
                    wait_secs: wait,
                };
                let id = LeaseId(next_lease.to_be_bytes());
                next_lease += 1;
                let _ = pool.checkout_wait(
                    now,
                    &actor,
                    &varied_holder(client),
                    &request,
                    id,
                    &mut batch,
                );
            }
            Op::CancelWait { client } => {
                let Ok(actor) = pool.authorize(&member(client).username) else {
                    continue;
                };
                let request = request_id(client, last_request[client]);
                pool.queue_cancel(now, &actor, &varied_holder(client), request, &mut batch);
            }
        }
        // As the engine does before every commit: freed seats go to the waiting checkouts.
        pool.serve_queue(
            now,
            &mut || {
                next_lease += 1;
                LeaseId((next_lease - 1).to_be_bytes())
            },
            &mut batch,
        );
        if let Some(delay) = failing {
            // The batch never reaches the store; the engine reloads the pool and applies
            // what passed meanwhile, as a commit of its own.
            now += delay;
            pool = Pool::restore(store.clone(), TTL, policy, now);
            batch = Batch::default();
            pool.advance(now, &mut batch);
        } else if let Some((user, n, answer)) = answered {
            if let Ok(done) = &answer {
                consumed_total += done.consumed;
                consumed_by[user] += done.consumed;
            }
            acknowledged.insert((user, n), answer);
        }
        store.apply(&batch);
        // What the store holds of credits is exactly what acknowledged consumptions took.
        let taken: u64 = store.purchases.iter().map(|p| p.amount - p.left).sum();
        prop_assert_eq!(
            taken,
            consumed_total,
            "consumed is not what was acknowledged"
        );
        for (user, name) in USERS.iter().enumerate() {
            let id = pool.users[*name].id;
            let used = store
                .grants
                .iter()
                .find(|g| g.user == id)
                .map_or(0, |g| g.used);
            prop_assert_eq!(used, consumed_by[user], "{}'s use", name);
        }
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
    /// heartbeat, check-in, release (by id, prefix and user), resume, expiry, entitlement
    /// add/update/remove (with and without force), assign (and moves), revoke, deactivate,
    /// activate, restart, and checkouts waiting in the queue (R17: none waits while its
    /// checkout would succeed); with metered credits bought, quotas set and removed, and
    /// consumptions and their retries (R21: never past the balance or a quota, refused only
    /// when short, a retry of an acknowledged id answered as first, and what the store holds
    /// consumed equal to the acknowledged consumptions, through restarts and failed commits).
    #[test]
    fn r1_holds_under_random_interleavings(
        groups in proptest::collection::vec(proptest::collection::vec(0..MEMBERS.len(), 1..4), GROUPS.len()),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        run(&groups, &ops)?;
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
        .any(|n| n.kind == "assignment_changed"));
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
        .any(|n| n.kind == "assignment_changed" && n.subject == USERS[0]));
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

/// A checkout whose answer never reached its client (the connection dropped, the leader
/// changed) is a lease the client does not know: its heartbeats would keep it for ever. The
/// resume after the reconnect names every lease the client holds, so the server checks the
/// unknown one in; a retry of the same checkout is then granted afresh, and the seat count
/// stays right.
#[test]
fn a_resume_checks_in_the_sessions_leases_the_client_does_not_name() {
    let mut pool = pool_with("vray", 2, 0);
    let mut batch = Batch::default();
    let known = pool
        .checkout(
            0,
            &member(0),
            &holder(0),
            &checkout("vray", 1, 1),
            LeaseId([1; 16]),
            &mut batch,
        )
        .unwrap();
    // Committed, but its answer was lost.
    let lost = pool
        .checkout(
            0,
            &member(0),
            &holder(0),
            &checkout("vray", 1, 2),
            LeaseId([2; 16]),
            &mut batch,
        )
        .unwrap();
    let resumed = pool.resume(10, &member(0), &holder(0), &[known.id], &mut batch);
    assert_eq!(resumed.resumed.len(), 1);
    let status = pool.status(10, Some("vray"), &mut batch).unwrap();
    assert_eq!(status[0].in_use, 1, "the unknown lease was checked in");
    assert!(batch
        .audit
        .iter()
        .any(|e| e.action == "checkin" && e.subject == lost.id.to_string()));
    // The client's retry of the lost checkout comes after its resume: a new grant.
    let again = pool
        .checkout(
            11,
            &member(0),
            &holder(0),
            &checkout("vray", 1, 2),
            LeaseId([4; 16]),
            &mut batch,
        )
        .unwrap();
    assert_ne!(again.id, lost.id);
    let status = pool.status(11, Some("vray"), &mut batch).unwrap();
    assert_eq!(status[0].in_use, 2);
    // Holding nothing, a resume names nothing and ends every online lease of the session.
    pool.resume(12, &member(0), &holder(0), &[], &mut batch);
    let status = pool.status(12, Some("vray"), &mut batch).unwrap();
    assert_eq!(status[0].in_use, 0);
    pool.check_invariants(12).unwrap();
}

/// Lease `n`: `3f9c` then `n` in every other byte, so that every such lease shares the
/// prefix `3f9c` and `3f9cNN` tells them apart.
fn lease_id(n: u8) -> LeaseId {
    let mut id = [n; 16];
    id[..2].copy_from_slice(&[0x3f, 0x9c]);
    LeaseId(id)
}

/// Checks out `seats` seats of `feature` at `now` as lease `n` of client `i`, whose user is
/// ana (even `i`) or ben (odd), both members.
fn check_out(pool: &mut Pool, now: i64, i: usize, feature: &str, seats: u32, n: u8) -> LeaseId {
    let actor = pool.authorize(USERS[i % 2]).unwrap();
    pool.checkout(
        now,
        &actor,
        &holder(i),
        &checkout(feature, seats, n),
        lease_id(n),
        &mut Batch::default(),
    )
    .unwrap()
    .id
}

fn update(id: u64) -> tally_protocol::EntitlementUpdate {
    tally_protocol::EntitlementUpdate {
        id,
        seats: None,
        starts_at: None,
        expires_at: None,
        borrowable: None,
        max_borrow_secs: None,
        reference: None,
        force: false,
    }
}

#[test]
fn assignments_list_everyones_for_admins_and_their_own_for_the_others() {
    let (mut pool, mut batch) = pool_with_users(Policy::default());
    pool.add_entitlement(0, &admin(), &entitlement("vray", 10), &mut batch)
        .unwrap();
    pool.add_entitlement(0, &admin(), &entitlement("nuke", 5), &mut batch)
        .unwrap();
    for (user, feature, seats) in [(0, "vray", 2), (1, "vray", 1), (0, "nuke", 1)] {
        pool.assign(
            1,
            &admin(),
            &assign_request(USERS[user], feature, seats, None),
            &mut batch,
        )
        .unwrap();
    }
    check_out(&mut pool, 2, 0, "vray", 1, 1);
    pool.deactivate_user(3, &admin(), USERS[1], &mut batch)
        .unwrap();
    let query = |user: Option<&str>, feature: Option<&str>| tally_protocol::AssignmentsQuery {
        user: user.map(str::to_string),
        feature: feature.map(str::to_string),
        after: None,
        limit: None,
    };
    let all = pool
        .assignments_page(4, &admin(), &query(None, None), 100, &mut batch)
        .unwrap();
    assert_eq!(all.assignments.len(), 3);
    assert_eq!(all.next, None);
    let ana_vray = &all.assignments[0];
    assert_eq!(
        (ana_vray.assignment.user.as_str(), ana_vray.assignment.seats),
        (USERS[0], 2)
    );
    assert_eq!(
        (ana_vray.in_use, ana_vray.borrowed),
        (1, 0),
        "her lease draws on it"
    );
    assert!(!ana_vray.suspended);
    assert!(all.assignments[1].suspended, "ben is deactivated");

    let vray = pool
        .assignments_page(4, &admin(), &query(None, Some("vray")), 100, &mut batch)
        .unwrap();
    assert_eq!(vray.assignments.len(), 2);
    // Pages of one, with a cursor.
    let first = pool
        .assignments_page(4, &admin(), &query(None, None), 1, &mut batch)
        .unwrap();
    assert_eq!(first.assignments.len(), 1);
    let mut next = query(None, None);
    next.after = first.next;
    let second = pool
        .assignments_page(4, &admin(), &next, 5, &mut batch)
        .unwrap();
    assert_eq!(second.assignments.len(), 2);
    assert_eq!(second.next, None);

    // Ana sees her own, whatever she asks for, and may not name ben.
    let ana = pool.authorize(USERS[0]).unwrap();
    let hers = pool
        .assignments_page(4, &ana, &query(None, None), 100, &mut batch)
        .unwrap();
    assert!(hers
        .assignments
        .iter()
        .all(|e| e.assignment.user == USERS[0]));
    assert_eq!(hers.assignments.len(), 2);
    let err = pool
        .assignments_page(4, &ana, &query(Some(USERS[1]), None), 100, &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden);
    let err = pool
        .assignments_page(4, &admin(), &query(Some("nobody@x"), None), 100, &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    let err = pool
        .assignments_page(4, &admin(), &query(None, Some("maya")), 100, &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    assert!(
        batch
            .audit
            .iter()
            .any(|e| e.action == "assignments" && e.outcome == "forbidden"),
        "refusals are audited"
    );
}

#[test]
fn assign_and_revoke_answer_with_the_assignments_touched_and_the_users_totals() {
    let (mut pool, mut batch) = pool_with_users(Policy::default());
    pool.add_entitlement(0, &admin(), &entitlement("vray", 10), &mut batch)
        .unwrap();
    pool.add_entitlement(0, &admin(), &entitlement("nuke", 5), &mut batch)
        .unwrap();
    let first = pool
        .assign_with_totals(
            1,
            &admin(),
            &assign_request(USERS[0], "vray", 2, None),
            &mut batch,
        )
        .unwrap();
    assert_eq!(first.seats, 2);
    assert_eq!(first.touched.len(), 1);
    let id = first.touched[0].id;
    pool.assign(
        1,
        &admin(),
        &assign_request(USERS[0], "nuke", 1, None),
        &mut batch,
    )
    .unwrap();
    let more = pool
        .assign_with_totals(
            1,
            &admin(),
            &assign_request(USERS[0], "vray", 1, None),
            &mut batch,
        )
        .unwrap();
    assert_eq!(
        (more.touched[0].id, more.touched[0].seats),
        (id, 3),
        "merged"
    );
    let totals: Vec<(&str, u32)> = more
        .assignments
        .iter()
        .map(|a| (a.feature.as_str(), a.seats))
        .collect();
    assert_eq!(totals, [("vray", 3), ("nuke", 1)]);

    // A move touches both users' assignments.
    let moved = pool
        .assign_with_totals(
            2,
            &admin(),
            &assign_request(USERS[1], "vray", 1, Some(USERS[0])),
            &mut batch,
        )
        .unwrap();
    assert_eq!(moved.touched.len(), 2);
    assert_eq!(moved.touched[0].user, USERS[1]);
    assert_eq!(
        (moved.touched[1].user.as_str(), moved.touched[1].seats),
        (USERS[0], 2)
    );
    assert_eq!(moved.assignments.len(), 1, "ben's own after the move");

    let revoked = pool
        .revoke_with_totals(
            3,
            &admin(),
            &tally_protocol::Revoke {
                username: USERS[0].into(),
                feature: "vray".into(),
                seats: None,
            },
            &mut batch,
        )
        .unwrap();
    assert_eq!(revoked.seats, 2);
    assert_eq!(
        (revoked.touched[0].id, revoked.touched[0].seats),
        (id, 0),
        "it ended"
    );
    assert_eq!(revoked.assignments.len(), 1, "her nuke seat is left");
    assert_eq!(revoked.assignments[0].feature, "nuke");
    pool.check_invariants(3).unwrap();
}

#[test]
fn holders_show_program_pid_and_address_and_keep_them_across_restarts() {
    let (mut pool, mut batch) = pool_with_users(Policy::default());
    pool.add_entitlement(0, &admin(), &entitlement("vray", 5), &mut batch)
        .unwrap();
    let ana = check_out(&mut pool, 1, 0, "vray", 1, 1);
    check_out(&mut pool, 2, 1, "vray", 2, 2);
    let all = LeasesQuery {
        feature: None,
        user: None,
    };
    let page = pool.holders_page(3, &admin(), &all, None, 100, usize::MAX, &mut batch);
    assert_eq!(page.holders.len(), 2);
    let hers = page.holders.iter().find(|h| h.lease.id == ana).unwrap();
    assert_eq!(
        (hers.program.as_str(), hers.pid, hers.address.as_str()),
        ("render 0", 1000, "10.0.0.0")
    );
    assert_eq!(hers.lease.host, "node0");
    // Members see their own holders only.
    let member = pool.authorize(USERS[0]).unwrap();
    let page = pool.holders_page(3, &member, &all, None, 100, usize::MAX, &mut batch);
    assert_eq!(page.holders.len(), 1);
    // Another instance of hers resumes it: the lease shows where it is now.
    let moved = Holder {
        client: ClientId([77; 16]),
        host: "laptop".into(),
        peer: Peer {
            program: "nuke 15".into(),
            pid: 9,
            address: "192.0.2.1".into(),
        },
    };
    pool.resume(4, &member, &moved, &[ana], &mut batch);
    let lease = pool.ledger.leases[&ana].clone();
    assert_eq!((lease.host.as_str(), &lease.peer), ("laptop", &moved.peer));
    assert!(batch
        .leases_added
        .iter()
        .any(|l| l.id == ana && l.peer == moved.peer));
    // The same instance back from another address.
    let roamed = Holder {
        peer: Peer {
            address: "192.0.2.2".into(),
            ..moved.peer.clone()
        },
        ..moved.clone()
    };
    pool.resume(5, &member, &roamed, &[ana], &mut batch);
    assert_eq!(pool.ledger.leases[&ana].peer.address, "192.0.2.2");
    let restored = Pool::restore(pool.snapshot(), TTL, Policy::default(), 6);
    assert_eq!(restored.ledger.leases[&ana].peer, roamed.peer);
}

#[test]
fn release_takes_a_unique_id_prefix_or_a_user_or_host_and_never_a_borrow() {
    let (mut pool, mut batch) = pool_with_users(Policy::default());
    let mut lendable = entitlement("vray", 10);
    lendable.borrowable = true;
    pool.add_entitlement(0, &admin(), &lendable, &mut batch)
        .unwrap();
    pool.add_entitlement(0, &admin(), &entitlement("nuke", 10), &mut batch)
        .unwrap();
    let a = check_out(&mut pool, 1, 0, "vray", 1, 0xa1);
    let b = check_out(&mut pool, 2, 0, "nuke", 1, 0xa2);
    let c = check_out(&mut pool, 3, 1, "vray", 1, 0xb1);
    let ana = pool.authorize(USERS[0]).unwrap();
    let borrow = tally_protocol::Borrow {
        feature: "vray".into(),
        seats: 1,
        duration_secs: 60,
        machine_id: "m".into(),
    };
    pool.borrow(
        4,
        &ana,
        &holder(0),
        &borrow,
        LeaseId([0xc1; 16]),
        &mut batch,
    )
    .unwrap();
    let by =
        |lease: Option<&str>, user: Option<&str>, host: Option<&str>, feature: Option<&str>| {
            tally_protocol::ReleaseMatching {
                lease: lease.map(str::to_string),
                user: user.map(str::to_string),
                host: host.map(str::to_string),
                feature: feature.map(str::to_string),
            }
        };
    let err = pool
        .release_matching(5, &admin(), &by(Some("3F9C"), None, None, None), &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Invalid);
    assert!(err.message.contains("fits 3 leases"), "{}", err.message);
    for id in [a, b, c] {
        assert!(err.message.contains(&id.to_string()), "{}", err.message);
    }
    let err = pool
        .release_matching(5, &ana, &by(Some("3f9cb1"), None, None, None), &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden);
    let err = pool
        .release_matching(5, &admin(), &by(Some("c1c1"), None, None, None), &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Borrowed, "{}", err.message);
    let err = pool
        .release_matching(5, &admin(), &by(Some("dddd"), None, None, None), &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    let released = pool
        .release_matching(
            5,
            &admin(),
            &by(Some("3f9c...b1"), None, None, None),
            &mut batch,
        )
        .unwrap();
    assert_eq!(released, [c]);
    // Every online lease of ana's on node0, of vray: the borrow stays.
    let released = pool
        .release_matching(
            6,
            &admin(),
            &by(None, Some("Ana@Studio"), Some("NODE0"), Some("vray")),
            &mut batch,
        )
        .unwrap();
    assert_eq!(released, [a]);
    let err = pool
        .release_matching(
            7,
            &admin(),
            &by(None, Some(USERS[0]), None, Some("vray")),
            &mut batch,
        )
        .unwrap_err();
    assert_eq!(
        err.code,
        ErrorCode::Borrowed,
        "only her borrow is left: {}",
        err.message
    );
    let released = pool
        .release_matching(
            7,
            &admin(),
            &by(None, None, Some("node0"), None),
            &mut batch,
        )
        .unwrap();
    assert_eq!(released, [b]);
    let err = pool
        .release_matching(
            7,
            &admin(),
            &by(None, Some(USERS[2]), None, None),
            &mut batch,
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    let err = pool
        .release_matching(
            7,
            &admin(),
            &by(None, Some("nobody@x"), None, None),
            &mut batch,
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    assert!(pool.ledger.leases.contains_key(&LeaseId([0xc1; 16])));
    assert_eq!(
        batch
            .audit
            .iter()
            .filter(|e| e.action == "release" && e.outcome == "ok")
            .count(),
        3
    );
    pool.check_invariants(7).unwrap();
}

#[test]
fn an_entitlement_update_that_would_end_leases_is_refused_with_the_figures_unless_forced() {
    let (mut pool, mut batch) = pool_with_users(Policy::default());
    let id = pool
        .add_entitlement(0, &admin(), &entitlement("vray", 5), &mut batch)
        .unwrap()
        .id;
    let leases: Vec<LeaseId> = (1..=4)
        .map(|n| check_out(&mut pool, n as i64, n as usize, "vray", 1, n))
        .collect();
    let before = pool.snapshot();
    let shrink = tally_protocol::EntitlementUpdate {
        seats: Some(2),
        ..update(id)
    };
    let err = pool
        .update_entitlement(10, &admin(), &shrink, &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Invalid);
    for figure in [
        "2 seat(s)",
        "4 floating seat(s) are in use",
        "end 2 lease(s)",
        "--force",
    ] {
        assert!(err.message.contains(figure), "{figure}: {}", err.message);
    }
    assert_eq!(pool.snapshot(), before, "nothing changed");
    let forced = pool
        .update_entitlement(
            10,
            &admin(),
            &tally_protocol::EntitlementUpdate {
                force: true,
                ..shrink
            },
            &mut batch,
        )
        .unwrap();
    assert_eq!(forced.ended, [leases[3], leases[2]], "the newest end first");
    assert_eq!(forced.entitlement.seats, 2);
    pool.check_invariants(10).unwrap();

    // A renewal: more seats and a later end, with a new reference.
    let renewal = tally_protocol::EntitlementUpdate {
        seats: Some(8),
        expires_at: Some(Some(1_000_000)),
        reference: Some("PO-9".into()),
        borrowable: Some(true),
        ..update(id)
    };
    let renewed = pool
        .update_entitlement(11, &admin(), &renewal, &mut batch)
        .unwrap();
    assert!(renewed.ended.is_empty());
    assert_eq!(pool.capacity("vray", 11), 8);
    let event = batch
        .audit
        .iter()
        .rev()
        .find(|e| e.action == "entitlement_update" && e.outcome == "ok")
        .unwrap();
    assert!(
        event.reason.contains("seats from 2 to 8"),
        "{}",
        event.reason
    );
    assert!(event.reason.contains("PO-9"), "{}", event.reason);
    // Its end now counts: past it the seats leave the pool.
    pool.advance(1_000_000, &mut batch);
    assert_eq!(pool.capacity("vray", 1_000_000), 0);
    let forever = tally_protocol::EntitlementUpdate {
        expires_at: Some(None),
        ..update(id)
    };
    pool.update_entitlement(1_000_001, &admin(), &forever, &mut batch)
        .unwrap();
    assert_eq!(
        pool.capacity("vray", 1_000_001),
        8,
        "renewed after it expired"
    );

    let err = pool
        .update_entitlement(1_000_002, &admin(), &update(id), &mut batch)
        .unwrap_err();
    assert!(err.message.contains("nothing to change"), "{}", err.message);
    let past = tally_protocol::EntitlementUpdate {
        expires_at: Some(Some(5)),
        ..update(id)
    };
    let err = pool
        .update_entitlement(1_000_002, &admin(), &past, &mut batch)
        .unwrap_err();
    assert!(err.message.contains("remove it"), "{}", err.message);
    let err = pool
        .update_entitlement(1_000_002, &member(0), &forever, &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden);
    let err = pool
        .update_entitlement(1_000_002, &admin(), &update(99), &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
}

#[test]
fn an_entitlement_update_keeps_assigned_and_borrowed_seats_whatever_force_says() {
    let (mut pool, mut batch) = pool_with_users(Policy::default());
    let mut lendable = entitlement("vray", 5);
    lendable.borrowable = true;
    let id = pool
        .add_entitlement(0, &admin(), &lendable, &mut batch)
        .unwrap()
        .id;
    pool.assign(
        1,
        &admin(),
        &assign_request(USERS[0], "vray", 2, None),
        &mut batch,
    )
    .unwrap();
    let ben = pool.authorize(USERS[1]).unwrap();
    let borrow = tally_protocol::Borrow {
        feature: "vray".into(),
        seats: 1,
        duration_secs: 60,
        machine_id: "m".into(),
    };
    let lent = pool
        .borrow(2, &ben, &holder(1), &borrow, LeaseId([9; 16]), &mut batch)
        .unwrap();
    let before = pool.snapshot();
    let below_assigned = tally_protocol::EntitlementUpdate {
        seats: Some(1),
        force: true,
        ..update(id)
    };
    let err = pool
        .update_entitlement(3, &admin(), &below_assigned, &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::HasAssignments, "{}", err.message);
    assert!(
        err.message.contains("fewer than 3 seats"),
        "{}",
        err.message
    );
    let below_borrowed = tally_protocol::EntitlementUpdate {
        seats: Some(2),
        force: true,
        ..update(id)
    };
    let err = pool
        .update_entitlement(3, &admin(), &below_borrowed, &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Borrowed, "{}", err.message);
    let before_the_borrow_ends = tally_protocol::EntitlementUpdate {
        expires_at: Some(Some(lent.expires_at - 1)),
        force: true,
        ..update(id)
    };
    let err = pool
        .update_entitlement(3, &admin(), &before_the_borrow_ends, &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Borrowed, "{}", err.message);
    let later_start = tally_protocol::EntitlementUpdate {
        starts_at: Some(1_000),
        force: true,
        ..update(id)
    };
    let err = pool
        .update_entitlement(3, &admin(), &later_start, &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::HasAssignments, "{}", err.message);
    assert_eq!(pool.snapshot(), before);
    // Exactly what is assigned and lent out is fine.
    let exact = tally_protocol::EntitlementUpdate {
        seats: Some(3),
        ..update(id)
    };
    assert!(pool
        .update_entitlement(3, &admin(), &exact, &mut batch)
        .is_ok());
    pool.check_invariants(3).unwrap();
}

#[test]
fn removing_an_entitlement_refuses_to_end_leases_unless_forced_and_names_them() {
    let (mut pool, mut batch) = pool_with_users(Policy::default());
    let big = pool
        .add_entitlement(0, &admin(), &entitlement("vray", 3), &mut batch)
        .unwrap()
        .id;
    let small = pool
        .add_entitlement(0, &admin(), &entitlement("vray", 2), &mut batch)
        .unwrap()
        .id;
    let spare = pool
        .add_entitlement(0, &admin(), &entitlement("nuke", 1), &mut batch)
        .unwrap()
        .id;
    let leases: Vec<LeaseId> = (1..=4)
        .map(|n| check_out(&mut pool, n as i64, n as usize, "vray", 1, n))
        .collect();
    let before = pool.snapshot();
    let delete = |id, force| tally_protocol::EntitlementDelete { id, force };
    let err = pool
        .delete_entitlement(10, &admin(), &delete(big, false), &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Invalid);
    assert!(
        err.message.contains("would end 2 lease(s)"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains(&leases[3].to_string()),
        "{}",
        err.message
    );
    assert!(err.message.contains("--force"), "{}", err.message);
    assert_eq!(pool.snapshot(), before, "nothing changed");
    let unused = pool
        .delete_entitlement(10, &admin(), &delete(spare, false), &mut batch)
        .unwrap();
    assert_eq!((unused.id, unused.ended.len()), (spare, 0));
    let removed = pool
        .delete_entitlement(11, &admin(), &delete(big, true), &mut batch)
        .unwrap();
    let mut ended = removed.ended.clone();
    ended.sort();
    let mut newest = vec![leases[2], leases[3]];
    newest.sort();
    assert_eq!(ended, newest);
    assert_eq!(pool.capacity("vray", 11), 2);
    pool.check_invariants(11).unwrap();
    // The first request form still ends them without asking.
    assert!(pool
        .remove_entitlement(13, &admin(), small, &mut batch)
        .is_ok());
    assert_eq!(pool.lease_count(), 0);
}

/// A pool with `maya` (1 seat) and `vray` (3 seats), where `vray` requires `maya` (R18).
fn pool_with_prerequisite() -> (Pool, Batch) {
    let (mut pool, mut batch) = pool_with_users(Policy::default());
    pool.add_entitlement(1, &admin(), &entitlement("maya", 1), &mut batch)
        .unwrap();
    pool.add_entitlement(1, &admin(), &entitlement("vray", 3), &mut batch)
        .unwrap();
    let requirement = tally_protocol::FeatureRequirement {
        feature: "vray".into(),
        requires: "maya".into(),
    };
    let listed = pool.require(1, &admin(), &requirement, &mut batch).unwrap();
    assert_eq!(
        listed,
        vec![tally_protocol::FeatureRequires {
            feature: "vray".into(),
            requires: vec!["maya".into()],
        }]
    );
    (pool, batch)
}

fn seats_in_use(pool: &Pool, feature: &str) -> u32 {
    pool.ledger.usage(feature).total()
}

#[test]
fn a_checkout_takes_its_prerequisite_in_the_same_step_and_checkin_returns_both() {
    let (mut pool, _) = pool_with_prerequisite();
    let mut batch = Batch::default();
    let vray = pool
        .checkout(
            2,
            &member(0),
            &holder(0),
            &checkout("vray", 1, 1),
            lease_id(1),
            &mut batch,
        )
        .unwrap();
    assert_eq!(seats_in_use(&pool, "vray"), 1);
    assert_eq!(seats_in_use(&pool, "maya"), 1);
    assert_eq!(batch.leases_added.len(), 2);
    let maya = batch
        .leases_added
        .iter()
        .find(|l| l.feature == "maya")
        .unwrap();
    assert_eq!(maya.taken_with, Some(vray.id));
    assert_eq!(maya.client, holder(0).client);
    pool.check_invariants(2).unwrap();

    let mut batch = Batch::default();
    pool.checkin(3, &member(0), vray.id, &mut batch).unwrap();
    assert_eq!(seats_in_use(&pool, "vray"), 0);
    assert_eq!(seats_in_use(&pool, "maya"), 0);
    assert_eq!(batch.leases_removed.len(), 2);
    assert!(pool.ledger.taken.is_empty());
    pool.check_invariants(3).unwrap();
}

#[test]
fn with_no_seat_of_the_prerequisite_the_whole_checkout_is_refused_naming_it() {
    let (mut pool, _) = pool_with_prerequisite();
    let mut batch = Batch::default();
    pool.checkout(
        2,
        &member(0),
        &holder(0),
        &checkout("vray", 1, 1),
        lease_id(1),
        &mut batch,
    )
    .unwrap();
    let mut batch = Batch::default();
    let err = pool
        .checkout(
            2,
            &member(1),
            &holder(1),
            &checkout("vray", 1, 2),
            lease_id(2),
            &mut batch,
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NoSeat);
    assert!(
        err.message.contains("vray requires maya"),
        "{}",
        err.message
    );
    assert!(err.message.contains("no seat of maya"), "{}", err.message);
    assert!(batch.leases_added.is_empty());
    assert_eq!(seats_in_use(&pool, "vray"), 1);
    assert_eq!(seats_in_use(&pool, "maya"), 1);
    pool.check_invariants(2).unwrap();
}

#[test]
fn a_client_already_holding_the_prerequisite_does_not_take_it_again() {
    let (mut pool, _) = pool_with_prerequisite();
    let mut batch = Batch::default();
    let maya = pool
        .checkout(
            2,
            &member(0),
            &holder(0),
            &checkout("maya", 1, 1),
            lease_id(1),
            &mut batch,
        )
        .unwrap();
    let vray = pool
        .checkout(
            2,
            &member(0),
            &holder(0),
            &checkout("vray", 1, 2),
            lease_id(2),
            &mut batch,
        )
        .unwrap();
    assert_eq!(seats_in_use(&pool, "maya"), 1);
    assert_eq!(seats_in_use(&pool, "vray"), 1);
    let mut batch = Batch::default();
    pool.checkin(3, &member(0), vray.id, &mut batch).unwrap();
    // The seat it held before stays: the checkout of vray did not take it.
    assert_eq!(seats_in_use(&pool, "maya"), 1);
    assert!(pool.ledger.leases.contains_key(&maya.id));
}

#[test]
fn the_linked_seat_survives_a_restart_a_resume_and_ends_with_its_lease() {
    let (mut pool, setup) = pool_with_prerequisite();
    let mut store = Snapshot::default();
    store.apply(&setup);
    let mut batch = Batch::default();
    let vray = pool
        .checkout(
            2,
            &member(0),
            &holder(0),
            &checkout("vray", 1, 1),
            lease_id(1),
            &mut batch,
        )
        .unwrap();
    store.apply(&batch);
    let mut pool = Pool::restore(store, TTL, Policy::default(), 3);
    let mut batch = Batch::default();
    // The client names only the lease it knows of; the seat of maya stays with it, and
    // goes with it to another instance.
    let resumed = pool.resume(4, &member(0), &holder(5), &[vray.id], &mut batch);
    assert_eq!(resumed.resumed.len(), 1);
    assert_eq!(seats_in_use(&pool, "maya"), 1);
    let maya = pool
        .ledger
        .leases
        .values()
        .find(|l| l.feature == "maya")
        .unwrap();
    assert_eq!(maya.client, holder(5).client);
    pool.checkin(5, &member(0), vray.id, &mut batch).unwrap();
    assert_eq!(seats_in_use(&pool, "maya"), 0);
    assert_eq!(pool.lease_count(), 0);
}

#[test]
fn requirements_refuse_cycles_and_are_for_admins() {
    let (mut pool, mut batch) = pool_with_prerequisite();
    pool.add_entitlement(1, &admin(), &entitlement("nuke", 1), &mut batch)
        .unwrap();
    let req = |f: &str, p: &str| tally_protocol::FeatureRequirement {
        feature: f.into(),
        requires: p.into(),
    };
    pool.require(2, &admin(), &req("maya", "nuke"), &mut batch)
        .unwrap();
    let err = pool
        .require(2, &admin(), &req("nuke", "vray"), &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Invalid);
    assert!(
        err.message.contains("cycle (nuke -> vray -> maya -> nuke)"),
        "{}",
        err.message
    );
    let err = pool
        .require(2, &admin(), &req("nuke", "nuke"), &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Invalid);
    let err = pool
        .require(2, &member(0), &req("nuke", "vray"), &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden);
    let err = pool
        .unrequire(2, &admin(), &req("nuke", "vray"), &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    // vray now takes maya and, through it, nuke.
    assert_eq!(pool.prerequisites_of("vray"), ["maya", "nuke"]);
    let listed = pool
        .unrequire(2, &admin(), &req("maya", "nuke"), &mut batch)
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(pool.prerequisites(2, &mut batch), listed);
}

#[test]
fn assigning_needs_the_prerequisite_assigned_and_revoking_it_waits_for_its_dependants() {
    let (mut pool, mut batch) = pool_with_prerequisite();
    let user = USERS[0];
    let err = pool
        .assign(
            2,
            &admin(),
            &assign_request(user, "vray", 1, None),
            &mut batch,
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Invalid);
    assert!(
        err.message.contains("vray requires maya"),
        "{}",
        err.message
    );
    pool.assign(
        2,
        &admin(),
        &assign_request(user, "maya", 1, None),
        &mut batch,
    )
    .unwrap();
    pool.assign(
        2,
        &admin(),
        &assign_request(user, "vray", 1, None),
        &mut batch,
    )
    .unwrap();
    let revoke = |feature: &str| tally_protocol::Revoke {
        username: user.into(),
        feature: feature.into(),
        seats: None,
    };
    let err = pool
        .revoke(3, &admin(), &revoke("maya"), &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::HasAssignments);
    assert!(err.message.contains("vray"), "{}", err.message);
    pool.revoke(3, &admin(), &revoke("vray"), &mut batch)
        .unwrap();
    pool.revoke(3, &admin(), &revoke("maya"), &mut batch)
        .unwrap();
    pool.check_invariants(3).unwrap();
}

#[test]
fn moving_away_the_last_seat_of_a_prerequisite_waits_for_its_dependants() {
    let (mut pool, mut batch) = pool_with_prerequisite();
    let (ana, ben) = (USERS[0], USERS[1]);
    for feature in ["maya", "vray"] {
        pool.assign(
            2,
            &admin(),
            &assign_request(ana, feature, 1, None),
            &mut batch,
        )
        .unwrap();
    }
    let err = pool
        .assign(
            2,
            &admin(),
            &assign_request(ben, "maya", 1, Some(ana)),
            &mut batch,
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::HasAssignments);
    assert!(err.message.contains("requires maya"), "{}", err.message);
    pool.check_invariants(2).unwrap();
}

#[test]
fn a_requirement_needs_the_prerequisite_of_every_assignment_made_before() {
    let (mut pool, mut batch) = pool_with_users(Policy::default());
    for (feature, seats) in [("maya", 2), ("vray", 2)] {
        pool.add_entitlement(1, &admin(), &entitlement(feature, seats), &mut batch)
            .unwrap();
    }
    pool.assign(
        2,
        &admin(),
        &assign_request(USERS[0], "vray", 1, None),
        &mut batch,
    )
    .unwrap();
    let requirement = tally_protocol::FeatureRequirement {
        feature: "vray".into(),
        requires: "maya".into(),
    };
    let err = pool
        .require(3, &admin(), &requirement, &mut batch)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Invalid);
    assert!(
        err.message
            .contains(&format!("vray is assigned to {} without maya", USERS[0])),
        "{}",
        err.message
    );
    pool.assign(
        3,
        &admin(),
        &assign_request(USERS[0], "maya", 1, None),
        &mut batch,
    )
    .unwrap();
    pool.require(3, &admin(), &requirement, &mut batch).unwrap();
}

#[test]
fn releasing_the_seat_of_a_prerequisite_releases_the_lease_that_needs_it() {
    let (mut pool, _) = pool_with_prerequisite();
    let mut batch = Batch::default();
    let vray = pool
        .checkout(
            2,
            &member(0),
            &holder(0),
            &checkout("vray", 1, 1),
            lease_id(1),
            &mut batch,
        )
        .unwrap();
    let maya = batch
        .leases_added
        .iter()
        .find(|l| l.feature == "maya")
        .unwrap()
        .id;
    let mut batch = Batch::default();
    let request = tally_protocol::ReleaseMatching {
        lease: Some(maya.to_string()),
        user: None,
        host: None,
        feature: None,
    };
    let released = pool
        .release_matching(3, &admin(), &request, &mut batch)
        .unwrap();
    assert_eq!(released, vec![maya, vray.id]);
    assert_eq!(seats_in_use(&pool, "vray"), 0);
    assert_eq!(seats_in_use(&pool, "maya"), 0);
    assert!(pool.ledger.taken.is_empty());
    pool.check_invariants(3).unwrap();
}

#[test]
fn a_prerequisite_seat_resumed_alone_elsewhere_becomes_its_own() {
    let (mut pool, _) = pool_with_prerequisite();
    let mut batch = Batch::default();
    let vray = pool
        .checkout(
            2,
            &member(0),
            &holder(0),
            &checkout("vray", 1, 1),
            lease_id(1),
            &mut batch,
        )
        .unwrap();
    let maya = batch
        .leases_added
        .iter()
        .find(|l| l.feature == "maya")
        .unwrap()
        .id;
    let mut batch = Batch::default();
    pool.resume(3, &member(0), &holder(2), &[maya], &mut batch);
    assert_eq!(pool.ledger.leases[&maya].taken_with, None);
    assert_eq!(batch.leases_added[0].taken_with, None);
    pool.check_invariants(3).unwrap();
    pool.checkin(4, &member(0), vray.id, &mut batch).unwrap();
    assert_eq!(seats_in_use(&pool, "maya"), 1);
}

/// The queue of waiting checkouts (R17).
mod queue {
    use tally_protocol::{CheckoutWait, QueueOutcome, QueueQuery, Response};

    use super::*;

    /// A pool with the test users and `seats` seats of vray.
    fn pool(seats: u32) -> Pool {
        let (mut pool, mut batch) = pool_with_users(Policy::default());
        pool.add_entitlement(0, &admin(), &entitlement("vray", seats), &mut batch)
            .unwrap();
        pool
    }

    fn wait(seats: u32, request: RequestId, wait_secs: Option<u64>) -> CheckoutWait {
        CheckoutWait {
            checkout: Checkout {
                request_id: request,
                feature: "vray".into(),
                seats,
            },
            wait_secs,
        }
    }

    /// Lease ids from a counter, as the engine gives random ones.
    fn ids() -> impl FnMut() -> LeaseId {
        let mut n = 100u8;
        move || {
            n += 1;
            LeaseId([n; 16])
        }
    }

    /// Client `i` (user `member(i)`) waits for `seats` seats; returns the answer.
    fn join(pool: &mut Pool, now: i64, i: usize, seats: u32, batch: &mut Batch) -> Response {
        pool.checkout_wait(
            now,
            &member(i),
            &holder(i),
            &wait(seats, request_id(i, 1), None),
            LeaseId([i as u8 + 50; 16]),
            batch,
        )
        .unwrap()
    }

    fn position(response: &Response) -> u32 {
        match response {
            Response::Queued(place) => place.position,
            other => panic!("not queued: {other:?}"),
        }
    }

    /// The clients granted by the batch's notices, in order, and those ended with a code.
    fn notices(batch: &Batch) -> (Vec<ClientId>, Vec<(ClientId, ErrorCode)>) {
        let mut granted = Vec::new();
        let mut ended = Vec::new();
        for (client, notice) in &batch.queue_notices {
            match &notice.outcome {
                QueueOutcome::Granted(info) => {
                    assert_eq!(info.feature, "vray");
                    granted.push(*client)
                }
                QueueOutcome::Ended(err) => ended.push((*client, err.code)),
            }
        }
        (granted, ended)
    }

    /// The metrics' counts (SPEC §10): each grant, direct or from the queue, once; each
    /// refusal `no_seat` of a checkout or of a wait that may not wait, and each wait that
    /// ran out (`queue_timeout`), once; joining the queue is neither.
    #[test]
    fn a_batch_tallies_its_grants_and_denials() {
        let mut pool = pool(1);
        let tallies = |batch: &Batch| {
            let grants = batch.tallies.grants.get("vray").copied().unwrap_or(0);
            let denial = |code: &str| {
                let key = ("vray".to_string(), code.to_string());
                batch
                    .tallies
                    .denials
                    .iter()
                    .find(|((f, c), _)| (f.clone(), c.to_string()) == key)
                    .map_or(0, |(_, n)| *n)
            };
            (grants, denial("no_seat"), denial("queue_timeout"))
        };
        let mut batch = Batch::default();
        pool.checkout(
            1,
            &member(0),
            &holder(0),
            &checkout("vray", 1, 2),
            LeaseId([2; 16]),
            &mut batch,
        )
        .unwrap();
        assert_eq!(tallies(&batch), (1, 0, 0));
        let mut batch = Batch::default();
        let refused = pool.checkout(
            2,
            &member(1),
            &holder(1),
            &checkout("vray", 1, 1),
            LeaseId([3; 16]),
            &mut batch,
        );
        assert_eq!(refused.unwrap_err().code, ErrorCode::NoSeat);
        let impatient = pool.checkout_wait(
            2,
            &member(1),
            &holder(1),
            &wait(1, request_id(1, 2), Some(0)),
            LeaseId([4; 16]),
            &mut batch,
        );
        assert_eq!(impatient.unwrap_err().code, ErrorCode::NoSeat);
        assert_eq!(tallies(&batch), (0, 2, 0));
        // Waiting is no denial; running out of time is, once.
        let mut batch = Batch::default();
        pool.checkout_wait(
            3,
            &member(1),
            &holder(1),
            &wait(1, request_id(1, 3), Some(1)),
            LeaseId([5; 16]),
            &mut batch,
        )
        .unwrap();
        join(&mut pool, 3, 4, 1, &mut batch);
        assert_eq!(tallies(&batch), (0, 0, 0));
        let mut batch = Batch::default();
        pool.serve_queue(1003, &mut ids(), &mut batch);
        pool.serve_queue(1004, &mut ids(), &mut batch);
        assert_eq!(tallies(&batch), (0, 0, 1));
        // A seat freed goes to the one still waiting: a grant.
        let mut batch = Batch::default();
        pool.checkin(1005, &member(0), LeaseId([2; 16]), &mut batch)
            .unwrap();
        pool.serve_queue(1005, &mut ids(), &mut batch);
        assert_eq!(notices(&batch).0, [holder(4).client]);
        assert_eq!(tallies(&batch), (1, 0, 0));
    }

    /// A `priority` rule (R16) puts its group ahead of earlier arrivals, lower numbers
    /// first; a checkout held back by a `max` rule waits (it is not denied) and is served
    /// once its group holds fewer seats, while an excluded one is refused at once.
    #[test]
    fn priority_rules_order_the_queue_and_a_max_rule_holds_a_wait_back() {
        let mut pool = pool(1);
        let mut batch = Batch::default();
        for (name, host) in [("leads", "node1"), ("seniors", "node3")] {
            let group = tally_protocol::GroupAdd {
                name: name.into(),
                members: vec![format!("host:{host}")],
            };
            pool.add_group(0, &admin(), &group, &mut batch).unwrap();
        }
        for (seats, group) in [(2, "leads"), (1, "seniors")] {
            let rule = PolicyAdd {
                rule: RuleSpec {
                    feature: "vray".into(),
                    kind: RuleKind::Priority,
                    seats,
                    group: Some(group.into()),
                    each: false,
                },
                dry_run: false,
            };
            pool.add_rule(0, &admin(), &rule, &mut batch).unwrap();
        }
        let held = match join(&mut pool, 1, 0, 1, &mut batch) {
            Response::Lease(info) => info.id,
            other => panic!("{other:?}"),
        };
        // node4 (no rule) arrives first, then node1 (a lead's host), then node3 (a senior's):
        // the senior (priority 1) goes first, the lead (2) next, node4 last.
        assert_eq!(position(&join(&mut pool, 2, 4, 1, &mut batch)), 1);
        assert_eq!(position(&join(&mut pool, 3, 1, 1, &mut batch)), 1);
        assert_eq!(position(&join(&mut pool, 4, 3, 1, &mut batch)), 1);
        let mut next_id = ids();
        let mut served = Vec::new();
        let mut current = held;
        for at in [10, 20, 30] {
            let actor = Actor {
                username: pool.ledger.leases[&current].user.clone(),
                role: Role::Member,
            };
            pool.checkin(at, &actor, current, &mut batch).unwrap();
            let mut batch = Batch::default();
            pool.serve_queue(at, &mut next_id, &mut batch);
            let (granted, ended) = notices(&batch);
            assert!(ended.is_empty(), "at {at}: {ended:?}");
            served.extend(granted.iter().copied());
            current = pool
                .ledger
                .leases
                .values()
                .find(|l| l.feature == "vray")
                .unwrap_or_else(|| panic!("at {at}: served {served:?}"))
                .id;
            pool.check_invariants(at).unwrap();
        }
        assert_eq!(
            served,
            [holder(3).client, holder(1).client, holder(4).client]
        );

        // max 1 leads: the lead holding a seat waits for a second instead of being denied.
        let mut pool = pool_two_seats_with_max();
        let mut batch = Batch::default();
        let first = match join(&mut pool, 1, 3, 1, &mut batch) {
            Response::Lease(info) => info.id,
            other => panic!("{other:?}"),
        };
        let second = pool
            .checkout_wait(
                2,
                &member(3),
                &holder(3),
                &wait(1, request_id(3, 2), None),
                LeaseId([77; 16]),
                &mut batch,
            )
            .unwrap();
        assert_eq!(
            position(&second),
            1,
            "a seat is free, but max holds it back"
        );
        let mut next_id = ids();
        let mut batch = Batch::default();
        pool.serve_queue(3, &mut next_id, &mut batch);
        assert!(batch.queue_notices.is_empty());
        pool.check_invariants(3).unwrap();
        pool.checkin(4, &member(3), first, &mut batch).unwrap();
        let mut batch = Batch::default();
        pool.serve_queue(4, &mut next_id, &mut batch);
        assert_eq!(notices(&batch).0, [holder(3).client]);
        // An excluded user is refused at once, not queued.
        let exclude = PolicyAdd {
            rule: RuleSpec {
                feature: "vray".into(),
                kind: RuleKind::Exclude,
                seats: 0,
                group: Some("leads".into()),
                each: false,
            },
            dry_run: false,
        };
        pool.add_rule(5, &admin(), &exclude, &mut batch).unwrap();
        let err = pool
            .checkout_wait(
                6,
                &member(3),
                &holder(3),
                &wait(1, request_id(3, 3), None),
                LeaseId([78; 16]),
                &mut batch,
            )
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Denied);
    }

    /// Two seats of vray, and `max 1 leads` with the lead `USERS[0]`.
    fn pool_two_seats_with_max() -> Pool {
        let mut pool = pool(2);
        let mut batch = Batch::default();
        let group = tally_protocol::GroupAdd {
            name: "leads".into(),
            members: vec![format!("user:{}", USERS[0])],
        };
        pool.add_group(0, &admin(), &group, &mut batch).unwrap();
        let rule = PolicyAdd {
            rule: RuleSpec {
                feature: "vray".into(),
                kind: RuleKind::Max,
                seats: 1,
                group: Some("leads".into()),
                each: false,
            },
            dry_run: false,
        };
        pool.add_rule(0, &admin(), &rule, &mut batch).unwrap();
        pool
    }

    /// Holder 0 holds the pool's one seat, 1 to 4 wait (1 and 4 are the same user, ana and
    /// ben alternate): each freed seat goes to the next in order of arrival.
    #[test]
    fn waiters_are_served_first_come_first_served() {
        let mut pool = pool(1);
        let mut batch = Batch::default();
        let held = match join(&mut pool, 1, 0, 1, &mut batch) {
            Response::Lease(info) => info.id,
            other => panic!("{other:?}"),
        };
        for i in [1, 3, 4] {
            let response = join(&mut pool, 10 + i as i64, i, 1, &mut batch);
            assert_eq!(position(&response), [0, 1, 0, 2, 3][i]);
        }
        let mut ids = ids();
        pool.serve_queue(20, &mut ids, &mut batch);
        assert!(batch.queue_notices.is_empty(), "no seat is free yet");
        pool.check_invariants(20).unwrap();
        let status = pool.status(20, Some("vray"), &mut batch).unwrap();
        assert_eq!(status[0].queued, 3);

        pool.checkin(30, &member(0), held, &mut batch).unwrap();
        let mut batch = Batch::default();
        pool.serve_queue(30, &mut ids, &mut batch);
        assert_eq!(notices(&batch).0, [holder(1).client]);
        pool.check_invariants(30).unwrap();
        let listed = pool
            .queue_list(31, &admin(), &QueueQuery { feature: None }, &mut batch)
            .unwrap();
        let order: Vec<(String, u32)> = listed
            .iter()
            .map(|e| (e.host.clone(), e.position))
            .collect();
        assert_eq!(order, [("node3".to_string(), 1), ("node4".to_string(), 2)]);
        // A member sees their own entry only, with its real position.
        let own = pool
            .queue_list(
                31,
                &member(4),
                &QueueQuery {
                    feature: Some("vray".into()),
                },
                &mut batch,
            )
            .unwrap();
        assert_eq!(own.len(), 1);
        assert_eq!((own[0].host.as_str(), own[0].position), ("node4", 2));

        let granted = pool
            .ledger
            .leases
            .values()
            .find(|l| l.client == holder(1).client)
            .unwrap()
            .id;
        pool.checkin(40, &member(1), granted, &mut batch).unwrap();
        let mut batch = Batch::default();
        pool.serve_queue(40, &mut ids, &mut batch);
        assert_eq!(notices(&batch).0, [holder(3).client]);
        // The grant is an ordinary lease, recorded and audited as a checkout from the queue.
        assert_eq!(batch.leases_added.len(), 1);
        assert!(batch
            .audit
            .iter()
            .any(|e| e.action == "checkout" && e.reason.starts_with("from the queue")));
        assert_eq!(
            pool.status(41, Some("vray"), &mut batch).unwrap()[0].queued,
            1
        );
    }

    /// An entry asking more seats than are free is skipped for a later one that fits; it is
    /// served once enough are free.
    #[test]
    fn an_entry_that_does_not_fit_is_skipped_for_one_that_does() {
        let mut pool = pool(3);
        let mut batch = Batch::default();
        let mut held = Vec::new();
        // Members only (2 and 5 are guests, who use no floating seats).
        for i in [0, 4, 6] {
            let Response::Lease(info) = join(&mut pool, 1, i, 1, &mut batch) else {
                panic!("a seat was free");
            };
            held.push((i, info.id));
        }
        assert_eq!(position(&join(&mut pool, 2, 1, 2, &mut batch)), 1);
        assert_eq!(position(&join(&mut pool, 3, 3, 1, &mut batch)), 2);
        let mut ids = ids();
        let (i, id) = held.pop().unwrap();
        pool.checkin(10, &member(i), id, &mut batch).unwrap();
        let mut batch = Batch::default();
        pool.serve_queue(10, &mut ids, &mut batch);
        assert_eq!(
            notices(&batch).0,
            [holder(3).client],
            "the 1-seat wait fits"
        );
        pool.check_invariants(10).unwrap();
        for (i, id) in held {
            pool.checkin(20, &member(i), id, &mut batch).unwrap();
        }
        let mut batch = Batch::default();
        pool.serve_queue(20, &mut ids, &mut batch);
        assert_eq!(notices(&batch).0, [holder(1).client]);
        assert!(pool.queue_is_empty());
        pool.check_invariants(20).unwrap();
    }

    /// A freed seat goes to the queue before a new checkout that does not wait: the engine
    /// serves the queue before each request, so the checkout finds no seat.
    #[test]
    fn a_freed_seat_goes_to_the_queue_before_a_new_checkout() {
        let mut pool = pool(1);
        let mut batch = Batch::default();
        let Response::Lease(info) = join(&mut pool, 1, 0, 1, &mut batch) else {
            panic!("a seat was free");
        };
        join(&mut pool, 2, 1, 1, &mut batch);
        pool.checkin(3, &member(0), info.id, &mut batch).unwrap();
        pool.serve_queue(3, &mut ids(), &mut batch);
        let err = pool
            .checkout(
                4,
                &member(3),
                &holder(3),
                &checkout("vray", 1, 9),
                LeaseId([9; 16]),
                &mut batch,
            )
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::NoSeat);
        assert_eq!(notices(&batch).0, [holder(1).client]);
    }

    /// A retried `CheckoutWait` (the same request id, as after a reconnect) returns the same
    /// place while it waits, and the lease once granted; no second entry, no second seat.
    #[test]
    fn a_retried_wait_returns_the_same_place_then_the_lease() {
        let mut pool = pool(1);
        let mut batch = Batch::default();
        let Response::Lease(info) = join(&mut pool, 1, 0, 1, &mut batch) else {
            panic!("a seat was free");
        };
        let first = join(&mut pool, 2, 1, 1, &mut batch);
        let again = join(&mut pool, 3, 1, 1, &mut batch);
        assert_eq!(first, again);
        assert_eq!(
            pool.status(3, Some("vray"), &mut batch).unwrap()[0].queued,
            1
        );
        // Another user on the same client instance with the same request id is not ana's
        // entry's owner, and gets a place of its own only through its own instance.
        pool.checkin(4, &member(0), info.id, &mut batch).unwrap();
        let mut batch = Batch::default();
        pool.serve_queue(4, &mut ids(), &mut batch);
        let granted = match &batch.queue_notices[0].1.outcome {
            QueueOutcome::Granted(info) => info.clone(),
            other => panic!("{other:?}"),
        };
        match join(&mut pool, 5, 1, 1, &mut batch) {
            Response::Lease(lease) => assert_eq!(lease.id, granted.id),
            other => panic!("{other:?}"),
        }
        assert_eq!(pool.lease_count(), 1);
        pool.check_invariants(5).unwrap();
    }

    /// A grant sent while its client was away survives the resume that client sends on
    /// reconnecting (which names only the leases it knows of), and the `CheckoutWait` sent
    /// again after it returns the lease; a `QueueCancel` instead gives such a grant back.
    #[test]
    fn a_grant_the_client_missed_is_claimed_by_its_retry_or_given_back_by_a_cancel() {
        let mut pool = pool(1);
        let mut batch = Batch::default();
        let Response::Lease(held) = join(&mut pool, 1, 0, 1, &mut batch) else {
            panic!("a seat was free");
        };
        join(&mut pool, 2, 1, 1, &mut batch);
        join(&mut pool, 2, 3, 1, &mut batch);
        pool.checkin(3, &member(0), held.id, &mut batch).unwrap();
        pool.serve_queue(3, &mut ids(), &mut batch);
        let granted = pool.ledger.by_request[&(holder(1).client, request_id(1, 1))];
        // Holder 1 reconnects knowing of no lease: the grant stays.
        let resumed = pool.resume(4, &member(1), &holder(1), &[], &mut batch);
        assert!(resumed.ended.is_empty());
        pool.serve_queue(4, &mut ids(), &mut batch);
        assert!(pool.ledger.leases.contains_key(&granted));
        assert_eq!(
            pool.queue_list(4, &admin(), &QueueQuery { feature: None }, &mut batch)
                .unwrap()
                .len(),
            1
        );
        match join(&mut pool, 5, 1, 1, &mut batch) {
            Response::Lease(info) => assert_eq!(info.id, granted),
            other => panic!("{other:?}"),
        }
        // Once claimed, it is an ordinary lease: a resume that does not name it ends it,
        // and the seat goes on to holder 3.
        pool.resume(6, &member(1), &holder(1), &[], &mut batch);
        assert!(!pool.ledger.leases.contains_key(&granted));
        let mut batch = Batch::default();
        pool.serve_queue(6, &mut ids(), &mut batch);
        assert_eq!(notices(&batch).0, [holder(3).client]);
        // Holder 3 gave up meanwhile: its cancel gives the grant back.
        let third = pool.ledger.by_request[&(holder(3).client, request_id(3, 1))];
        assert!(!pool.queue_cancel(7, &member(3), &holder(3), request_id(3, 1), &mut batch));
        assert!(!pool.ledger.leases.contains_key(&third));
        assert_eq!(
            pool.status(7, Some("vray"), &mut batch).unwrap()[0].in_use,
            0
        );
        pool.check_invariants(7).unwrap();
    }

    /// A wait with a limit ends with `queue_timeout` when it passes, and a client instance
    /// not seen for one ttl loses its entry; one that keeps coming keeps it.
    #[test]
    fn waits_end_at_their_deadline_and_when_the_client_is_gone() {
        let mut pool = pool(1);
        let mut batch = Batch::default();
        join(&mut pool, 0, 0, 1, &mut batch);
        pool.checkout_wait(
            1_000,
            &member(1),
            &holder(1),
            &wait(1, request_id(1, 1), Some(5)),
            LeaseId([7; 16]),
            &mut batch,
        )
        .unwrap();
        join(&mut pool, 1_000, 3, 1, &mut batch);
        join(&mut pool, 1_000, 4, 1, &mut batch);
        assert_eq!(pool.queue_next_due(), Some(6_000));
        let mut ids = ids();
        let mut batch = Batch::default();
        pool.serve_queue(5_999, &mut ids, &mut batch);
        assert!(batch.queue_notices.is_empty());
        pool.serve_queue(6_000, &mut ids, &mut batch);
        assert_eq!(
            notices(&batch).1,
            [(holder(1).client, ErrorCode::QueueTimeout)]
        );
        assert!(batch
            .audit
            .iter()
            .any(|e| e.action == "queue" && e.outcome == "queue_timeout"));
        // Holder 4 is seen (a request or heartbeat) just before its ttl ends; holder 3 is not.
        // Holder 0 heartbeats its seat.
        pool.heartbeat(TTL - 1, &member(0), &holder(0), &mut batch);
        pool.queue_seen(holder(4).client, 1_000 + TTL - 1);
        let mut batch = Batch::default();
        pool.serve_queue(1_000 + TTL, &mut ids, &mut batch);
        assert_eq!(
            notices(&batch).1,
            [(holder(3).client, ErrorCode::QueueTimeout)]
        );
        let listed = pool
            .queue_list(
                1_000 + TTL,
                &admin(),
                &QueueQuery { feature: None },
                &mut batch,
            )
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].host, "node4");
    }

    /// Only `no_seat` queues: an unknown feature, a bad wait or a cancelled entry do not.
    #[test]
    fn only_no_seat_queues_and_a_cancelled_wait_leaves() {
        let mut pool = pool(1);
        let mut batch = Batch::default();
        let mut unknown = wait(1, request_id(1, 2), None);
        unknown.checkout.feature = "vrai".into();
        let err = pool
            .checkout_wait(
                1,
                &member(1),
                &holder(1),
                &unknown,
                LeaseId([8; 16]),
                &mut batch,
            )
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);
        let too_long = wait(1, request_id(1, 3), Some(u64::MAX));
        let err = pool
            .checkout_wait(
                1,
                &member(1),
                &holder(1),
                &too_long,
                LeaseId([8; 16]),
                &mut batch,
            )
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Invalid);
        assert!(pool.queue_is_empty());
        join(&mut pool, 1, 0, 1, &mut batch);
        join(&mut pool, 2, 1, 1, &mut batch);
        // Only its own instance and user can cancel it.
        assert!(!pool.queue_cancel(3, &member(4), &holder(4), request_id(1, 1), &mut batch));
        assert!(pool.queue_cancel(3, &member(1), &holder(1), request_id(1, 1), &mut batch));
        assert!(pool.queue_is_empty());
        assert_eq!(
            pool.status(3, Some("vray"), &mut batch).unwrap()[0].queued,
            0
        );
    }

    /// An entry whose checkout becomes impossible for another reason than a seat (its
    /// user deactivated) ends with that refusal instead of waiting for ever.
    #[test]
    fn a_wait_that_can_no_longer_succeed_ends() {
        let mut pool = pool(1);
        let mut batch = Batch::default();
        join(&mut pool, 1, 0, 1, &mut batch);
        join(&mut pool, 2, 1, 1, &mut batch);
        pool.deactivate_user(3, &admin(), "ben@studio", &mut batch)
            .unwrap();
        let mut batch = Batch::default();
        pool.serve_queue(4, &mut ids(), &mut batch);
        assert_eq!(
            notices(&batch).1,
            [(holder(1).client, ErrorCode::Unauthenticated)]
        );
        pool.check_invariants(4).unwrap();
    }
}

/// A resume that names only the prerequisite seat a checkout took (R18), not the lease it
/// came with, keeps that seat as a lease of its own and checks the unnamed lease in; it
/// used to end the seat with its lease and then look it up (a panic of the engine).
#[test]
fn a_resume_of_a_prerequisite_seat_alone_keeps_it() {
    let (mut pool, mut batch) = pool_with_users(Policy::default());
    pool.add_entitlement(0, &admin(), &entitlement("vray", 3), &mut batch)
        .unwrap();
    pool.add_entitlement(0, &admin(), &entitlement("nuke", 1), &mut batch)
        .unwrap();
    let requirement = tally_protocol::FeatureRequirement {
        feature: "vray".into(),
        requires: "nuke".into(),
    };
    pool.require(0, &admin(), &requirement, &mut batch).unwrap();
    let vray = pool
        .checkout(
            1,
            &member(0),
            &holder(0),
            &checkout("vray", 1, 1),
            LeaseId([1; 16]),
            &mut batch,
        )
        .unwrap();
    let nuke = pool
        .snapshot()
        .leases
        .iter()
        .find(|l| l.feature == "nuke")
        .unwrap()
        .id;
    let resumed = pool.resume(2, &member(0), &holder(0), &[nuke], &mut batch);
    assert_eq!(resumed.resumed.len(), 1);
    assert_eq!(resumed.resumed[0].id, nuke);
    assert!(!pool.ledger.leases.contains_key(&vray.id));
    assert_eq!(pool.ledger.leases[&nuke].taken_with, None);
    pool.check_invariants(2).unwrap();
}

// ----- groups and policy rules (R16) -----

/// A pool with the test users and `seats` floating seats of each of vray and nuke.
fn policy_pool(seats: u32) -> (Pool, Batch) {
    let (mut pool, mut batch) = pool_with_users(Policy::default());
    for feature in FEATURES {
        pool.add_entitlement(0, &admin(), &entitlement(feature, seats), &mut batch)
            .unwrap();
    }
    (pool, batch)
}

fn add_group(pool: &mut Pool, name: &str, members: &[&str]) {
    let request = tally_protocol::GroupAdd {
        name: name.into(),
        members: members.iter().map(|m| m.to_string()).collect(),
    };
    pool.add_group(0, &admin(), &request, &mut Batch::default())
        .unwrap();
}

fn spec(feature: &str, kind: RuleKind, seats: u32, group: Option<&str>, each: bool) -> RuleSpec {
    RuleSpec {
        feature: feature.into(),
        kind,
        seats,
        group: group.map(str::to_string),
        each,
    }
}

/// Adds a rule (stored) and returns its id.
fn add_rule(pool: &mut Pool, rule: RuleSpec) -> u64 {
    let request = PolicyAdd {
        rule,
        dry_run: false,
    };
    pool.add_rule(0, &admin(), &request, &mut Batch::default())
        .unwrap()
        .rule
        .id
        .unwrap()
}

/// What adding a rule would do, without adding it.
fn dry_run(pool: &mut Pool, now: i64, rule: RuleSpec) -> (Vec<LeaseId>, Vec<String>) {
    let before = pool.snapshot();
    let request = PolicyAdd {
        rule,
        dry_run: true,
    };
    let mut batch = Batch::default();
    let added = pool.add_rule(now, &admin(), &request, &mut batch).unwrap();
    assert_eq!(added.rule.id, None);
    assert_eq!(pool.snapshot(), before, "a dry run changed the pool");
    assert!(batch.rules_added.is_empty() && batch.next_rule_id.is_none());
    let leases = added.effect.leases_over.iter().map(|l| l.id).collect();
    (leases, added.effect.users_denied)
}

/// A holder of client `i` on `host` from `address`.
fn holder_on(i: usize, host: &str, address: &str) -> Holder {
    let mut holder = holder(i);
    holder.host = host.into();
    holder.peer.address = address.into();
    holder
}

/// A checkout of `seats` of `feature` by `user` (an index into USERS) through `holder`, as
/// lease and request `n`.
fn take(
    pool: &mut Pool,
    now: i64,
    user: usize,
    holder: &Holder,
    feature: &str,
    seats: u32,
    n: u8,
) -> Result<LeaseInfo, ErrorBody> {
    let actor = pool.authorize(USERS[user]).unwrap();
    pool.checkout(
        now,
        &actor,
        holder,
        &checkout(feature, seats, n),
        lease_id(n),
        &mut Batch::default(),
    )
}

/// Asserts a refusal is `denied` by rule `id` of `feature`.
fn assert_denied_by(result: Result<LeaseInfo, ErrorBody>, id: u64, text: &str) -> ErrorBody {
    let err = result.expect_err("the rule refuses");
    assert_eq!(err.code, ErrorCode::Denied, "{}", err.message);
    assert!(
        err.message
            .contains(&format!("denied by rule {id} ({text}): ")),
        "{}",
        err.message
    );
    err
}

fn figures_of(pool: &mut Pool, now: i64, feature: &str) -> (u32, u32, u32) {
    let figures = pool
        .figures(now, Some(feature), &mut Batch::default())
        .unwrap();
    let f = &figures[0];
    (f.status.floating, f.status.available, f.reserved)
}

#[test]
fn include_admits_only_members_of_any_include_group_by_user_host_or_address() {
    let (mut pool, _) = policy_pool(10);
    add_group(&mut pool, "leads", &["user:ana@studio"]);
    add_group(&mut pool, "farm", &["host:render-??"]);
    add_group(&mut pool, "lab", &["ip:10.9.0.0/16"]);
    let first = add_rule(
        &mut pool,
        spec("vray", RuleKind::Include, 0, Some("leads"), false),
    );
    assert!(take(&mut pool, 0, 0, &holder(0), "vray", 1, 1).is_ok());
    let err = assert_denied_by(
        take(&mut pool, 0, 1, &holder(1), "vray", 1, 2),
        first,
        "vray: include leads",
    );
    assert!(err.message.contains("ben@studio"), "{}", err.message);
    // Other features are not concerned.
    assert!(take(&mut pool, 0, 1, &holder(1), "nuke", 1, 3).is_ok());
    add_rule(
        &mut pool,
        spec("vray", RuleKind::Include, 0, Some("farm"), false),
    );
    add_rule(
        &mut pool,
        spec("vray", RuleKind::Include, 0, Some("lab"), false),
    );
    // Either include group admits.
    assert!(take(
        &mut pool,
        0,
        1,
        &holder_on(1, "render-07", "192.168.1.1"),
        "vray",
        1,
        4
    )
    .is_ok());
    assert_denied_by(
        take(
            &mut pool,
            0,
            1,
            &holder_on(1, "render-007", "192.168.1.1"),
            "vray",
            1,
            5,
        ),
        first,
        "vray: include leads",
    );
    assert!(take(
        &mut pool,
        0,
        1,
        &holder_on(1, "laptop", "10.9.200.3"),
        "vray",
        1,
        6
    )
    .is_ok());
    // An IPv4-mapped IPv6 address is the IPv4 address.
    assert!(take(
        &mut pool,
        0,
        1,
        &holder_on(4, "laptop", "::ffff:10.9.0.1"),
        "vray",
        1,
        7
    )
    .is_ok());
    assert_denied_by(
        take(
            &mut pool,
            0,
            1,
            &holder_on(4, "laptop", "::ffff:10.8.0.1"),
            "vray",
            1,
            8,
        ),
        first,
        "vray: include leads",
    );
}

#[test]
fn exclude_refuses_members_and_wins_over_include_on_assigned_seats_too() {
    let (mut pool, mut batch) = policy_pool(10);
    pool.assign(
        0,
        &admin(),
        &assign_request("ben@studio", "vray", 1, None),
        &mut batch,
    )
    .unwrap();
    add_group(&mut pool, "all", &["host:*"]);
    add_group(&mut pool, "outsiders", &["user:ben@studio"]);
    add_rule(
        &mut pool,
        spec("vray", RuleKind::Include, 0, Some("all"), false),
    );
    let exclude = add_rule(
        &mut pool,
        spec("vray", RuleKind::Exclude, 0, Some("outsiders"), false),
    );
    assert!(take(&mut pool, 0, 0, &holder(0), "vray", 1, 1).is_ok());
    // Ben has a free assigned seat, and is included by host, and is still refused.
    let err = assert_denied_by(
        take(&mut pool, 0, 1, &holder(1), "vray", 1, 2),
        exclude,
        "vray: exclude outsiders",
    );
    assert!(err.message.contains("outsiders"), "{}", err.message);
    assert_eq!(pool.ledger.leases.len(), 1);
}

/// A borrow of `seats` of `feature` by `user` through `holder`, as lease `n`.
fn borrow_as(
    pool: &mut Pool,
    now: i64,
    user: usize,
    holder: &Holder,
    feature: &str,
    seats: u32,
    n: u8,
) -> Result<LeaseInfo, ErrorBody> {
    let actor = pool.authorize(USERS[user]).unwrap();
    let request = tally_protocol::Borrow {
        feature: feature.into(),
        seats,
        duration_secs: 60,
        machine_id: "m".into(),
    };
    pool.borrow(
        now,
        &actor,
        holder,
        &request,
        lease_id(n),
        &mut Batch::default(),
    )
}

fn lendable_pool(seats: u32) -> (Pool, Batch) {
    let (mut pool, mut batch) = pool_with_users(Policy::default());
    for feature in FEATURES {
        let mut lendable = entitlement(feature, seats);
        lendable.borrowable = true;
        pool.add_entitlement(0, &admin(), &lendable, &mut batch)
            .unwrap();
    }
    (pool, batch)
}

#[test]
fn max_counts_every_seat_the_group_holds_assigned_floating_and_borrowed() {
    let (mut pool, mut batch) = lendable_pool(10);
    pool.assign(
        0,
        &admin(),
        &assign_request("ana@studio", "vray", 1, None),
        &mut batch,
    )
    .unwrap();
    add_group(&mut pool, "team", &["user:ana@studio", "user:ben@studio"]);
    let max = add_rule(
        &mut pool,
        spec("vray", RuleKind::Max, 4, Some("team"), false),
    );
    let text = "vray: max 4 team";
    // One assigned seat, one borrowed, two floating: four together.
    let assigned = take(&mut pool, 0, 0, &holder(0), "vray", 1, 1).unwrap();
    assert!(matches!(assigned.source, LeaseSource::Assignment(_)));
    borrow_as(&mut pool, 0, 1, &holder(1), "vray", 1, 2).unwrap();
    let floating = take(&mut pool, 0, 1, &holder(1), "vray", 2, 3).unwrap();
    let err = assert_denied_by(take(&mut pool, 0, 0, &holder(0), "vray", 1, 4), max, text);
    assert!(err.message.contains("hold 4 seat(s)"), "{}", err.message);
    assert_denied_by(
        borrow_as(&mut pool, 0, 0, &holder(0), "vray", 1, 5),
        max,
        text,
    );
    // Gus is not in the group: the rule does not count him or stop him.
    pool.assign(
        0,
        &admin(),
        &assign_request("gus@studio", "vray", 1, None),
        &mut batch,
    )
    .unwrap();
    assert!(take(&mut pool, 0, 2, &holder(2), "vray", 1, 6).is_ok());
    // A check-in frees room.
    let ben = pool.authorize(USERS[1]).unwrap();
    pool.checkin(0, &ben, floating.id, &mut batch).unwrap();
    assert!(take(&mut pool, 0, 0, &holder(0), "vray", 2, 7).is_ok());
    assert_denied_by(take(&mut pool, 0, 1, &holder(1), "vray", 1, 8), max, text);
}

#[test]
fn max_each_counts_per_user_for_user_members_and_per_host_for_host_members() {
    let (mut pool, mut batch) = lendable_pool(10);
    add_group(&mut pool, "people", &["user:ana@studio", "user:ben@studio"]);
    let per_user = add_rule(
        &mut pool,
        spec("vray", RuleKind::Max, 2, Some("people"), true),
    );
    let text = "vray: max 2 people --each";
    take(&mut pool, 0, 0, &holder(0), "vray", 1, 1).unwrap();
    // Ana on another machine is still ana.
    borrow_as(&mut pool, 0, 0, &holder(2), "vray", 1, 2).unwrap();
    let err = assert_denied_by(
        take(&mut pool, 0, 0, &holder(4), "vray", 1, 3),
        per_user,
        text,
    );
    assert!(
        err.message.contains("ana@studio holds 2 seat(s)"),
        "{}",
        err.message
    );
    // Ben has his own two.
    let ben = take(&mut pool, 0, 1, &holder(1), "vray", 2, 4).unwrap();
    assert_denied_by(
        take(&mut pool, 0, 1, &holder(1), "vray", 1, 5),
        per_user,
        text,
    );
    pool.checkin(0, &pool.authorize(USERS[1]).unwrap(), ben.id, &mut batch)
        .unwrap();

    add_group(&mut pool, "boxes", &["host:ws*"]);
    let per_host = add_rule(
        &mut pool,
        spec("nuke", RuleKind::Max, 1, Some("boxes"), true),
    );
    let text = "nuke: max 1 boxes --each";
    take(
        &mut pool,
        0,
        0,
        &holder_on(0, "ws1", "10.0.0.1"),
        "nuke",
        1,
        6,
    )
    .unwrap();
    // Ben on ws1: the host holds one already, whoever holds it.
    let err = assert_denied_by(
        take(
            &mut pool,
            0,
            1,
            &holder_on(1, "ws1", "10.0.0.2"),
            "nuke",
            1,
            7,
        ),
        per_host,
        text,
    );
    assert!(
        err.message.contains("host ws1 holds 1 seat(s)"),
        "{}",
        err.message
    );
    // On ws2 he may.
    assert!(take(
        &mut pool,
        0,
        1,
        &holder_on(1, "ws2", "10.0.0.2"),
        "nuke",
        1,
        8
    )
    .is_ok());
    // Off the group's hosts, no limit.
    assert!(take(
        &mut pool,
        0,
        1,
        &holder_on(3, "laptop", "10.0.0.3"),
        "nuke",
        3,
        9
    )
    .is_ok());
}

#[test]
fn reserves_are_honoured_in_rule_order_up_to_the_floating_capacity() {
    let (mut pool, mut batch) = pool_with_users(Policy::default());
    pool.add_entitlement(0, &admin(), &entitlement("vray", 10), &mut batch)
        .unwrap();
    pool.assign(
        0,
        &admin(),
        &assign_request("ana@studio", "vray", 2, None),
        &mut batch,
    )
    .unwrap();
    add_group(&mut pool, "a", &["user:ben@studio"]);
    add_group(&mut pool, "b", &["host:farm*"]);
    assert_eq!(figures_of(&mut pool, 0, "vray"), (8, 8, 0));
    let first = add_rule(
        &mut pool,
        spec("vray", RuleKind::Reserve, 3, Some("a"), false),
    );
    assert_eq!(figures_of(&mut pool, 0, "vray"), (8, 5, 3));
    let second = add_rule(
        &mut pool,
        spec("vray", RuleKind::Reserve, 10, Some("b"), false),
    );
    // 3 for a, and the 5 left for b: nothing for anybody else.
    assert_eq!(figures_of(&mut pool, 0, "vray"), (8, 0, 8));
    let owner = |pool: &mut Pool, host: &str, seats: u32, n: u8| {
        pool.checkout(
            0,
            &admin(),
            &holder_on(5, host, "10.0.0.5"),
            &checkout("vray", seats, n),
            lease_id(n),
            &mut Batch::default(),
        )
    };
    let err = owner(&mut pool, "desk", 1, 1).unwrap_err();
    assert_eq!(err.code, ErrorCode::NoSeat, "{}", err.message);
    assert!(
        err.message
            .contains(&format!("rule {first} (vray: reserve 3 a)"))
            && err
                .message
                .contains(&format!("rule {second} (vray: reserve 10 b)")),
        "{}",
        err.message
    );
    // Members of a take a's seats and only those.
    take(&mut pool, 0, 1, &holder(1), "vray", 2, 2).unwrap();
    assert_eq!(figures_of(&mut pool, 0, "vray"), (8, 0, 6));
    assert_eq!(
        take(&mut pool, 0, 1, &holder(1), "vray", 2, 3)
            .unwrap_err()
            .code,
        ErrorCode::NoSeat
    );
    // Seats drawn from ana's assignment are not floating and eat no reserve.
    let mine = take(
        &mut pool,
        0,
        0,
        &holder_on(0, "desk", "10.0.0.1"),
        "vray",
        2,
        4,
    )
    .unwrap();
    assert!(matches!(mine.source, LeaseSource::Assignment(_)));
    assert_eq!(figures_of(&mut pool, 0, "vray"), (8, 0, 6));
    // Ana on a farm host is a member of b: a floating seat of b's.
    let farm = take(
        &mut pool,
        0,
        0,
        &holder_on(0, "farm1", "10.0.0.1"),
        "vray",
        1,
        5,
    )
    .unwrap();
    assert_eq!(farm.source, LeaseSource::Floating);
    assert_eq!(figures_of(&mut pool, 0, "vray"), (8, 0, 5));
    // Deactivating ana ends her leases and returns her 2 seats to floating: b is kept 7.
    pool.deactivate_user(0, &admin(), "ana@studio", &mut batch)
        .unwrap();
    assert_eq!(figures_of(&mut pool, 0, "vray"), (10, 0, 8));
    assert!(owner(&mut pool, "farm9", 7, 6).is_ok());
    assert_eq!(figures_of(&mut pool, 0, "vray"), (10, 0, 1));
    assert_eq!(
        owner(&mut pool, "desk", 1, 7).unwrap_err().code,
        ErrorCode::NoSeat
    );
    assert!(take(&mut pool, 0, 1, &holder(1), "vray", 1, 8).is_ok());
    assert_eq!(figures_of(&mut pool, 0, "vray"), (10, 0, 0));
}

#[test]
fn borrow_exclude_and_borrow_lowwater_refuse_borrows_only() {
    let (mut pool, _) = lendable_pool(4);
    add_group(&mut pool, "travellers", &["user:ben@studio"]);
    let exclude = add_rule(
        &mut pool,
        spec(
            "vray",
            RuleKind::BorrowExclude,
            0,
            Some("travellers"),
            false,
        ),
    );
    assert_denied_by(
        borrow_as(&mut pool, 0, 1, &holder(1), "vray", 1, 1),
        exclude,
        "vray: borrow-exclude travellers",
    );
    // Ben may still check it out online, and ana may borrow.
    assert!(take(&mut pool, 0, 1, &holder(1), "vray", 1, 2).is_ok());
    assert!(borrow_as(&mut pool, 0, 0, &holder(0), "vray", 1, 3).is_ok());
    // Of 4 floating seats 2 are never lent: one more borrow, not two.
    let lowwater = add_rule(
        &mut pool,
        spec("vray", RuleKind::BorrowLowwater, 2, None, false),
    );
    let err = assert_denied_by(
        borrow_as(&mut pool, 0, 0, &holder(0), "vray", 2, 4),
        lowwater,
        "vray: borrow-lowwater 2",
    );
    assert!(
        err.message.contains("1 are borrowed, 2 more asked for"),
        "{}",
        err.message
    );
    assert!(borrow_as(&mut pool, 0, 0, &holder(0), "vray", 1, 5).is_ok());
    assert_denied_by(
        borrow_as(&mut pool, 0, 0, &holder(0), "vray", 1, 6),
        lowwater,
        "vray: borrow-lowwater 2",
    );
    // The online seat left is still there for checkouts.
    assert!(take(&mut pool, 0, 0, &holder(0), "vray", 1, 7).is_ok());
}

fn names(users: &[&str]) -> Vec<String> {
    users.iter().map(|u| u.to_string()).collect()
}

#[test]
fn a_dry_run_stores_nothing_and_says_which_leases_and_users_the_rule_would_catch() {
    let (mut pool, _) = lendable_pool(10);
    add_group(&mut pool, "a", &["user:ana@studio"]);
    add_group(&mut pool, "people", &["user:ana@studio", "user:ben@studio"]);
    add_group(&mut pool, "g", &["user:gus@studio"]);
    let ana = take(&mut pool, 1, 0, &holder(0), "vray", 2, 1).unwrap().id;
    let ben1 = take(&mut pool, 2, 1, &holder(1), "vray", 1, 2).unwrap().id;
    let ben2 = take(&mut pool, 3, 1, &holder(3), "vray", 1, 3).unwrap().id;
    let lent1 = borrow_as(&mut pool, 4, 0, &holder(0), "nuke", 1, 4)
        .unwrap()
        .id;
    let lent2 = borrow_as(&mut pool, 5, 1, &holder(1), "nuke", 2, 5)
        .unwrap()
        .id;
    let _ = lent1;
    let now = 6;
    let rule = |kind, seats, group: Option<&str>, each| spec("vray", kind, seats, group, each);
    assert_eq!(
        dry_run(&mut pool, now, rule(RuleKind::Include, 0, Some("a"), false)),
        (
            vec![ben1, ben2],
            names(&["ben@studio", "gus@studio", "owner@localhost"])
        )
    );
    assert_eq!(
        dry_run(&mut pool, now, rule(RuleKind::Exclude, 0, Some("a"), false)),
        (vec![ana], names(&["ana@studio"]))
    );
    // Together: 2, 3, 4 seats in grant order; 2 is the limit.
    assert_eq!(
        dry_run(
            &mut pool,
            now,
            rule(RuleKind::Max, 2, Some("people"), false)
        ),
        (vec![ben1, ben2], names(&["ana@studio", "ben@studio"]))
    );
    // Each: ana holds 2 at once, ben's second seat is his second.
    assert_eq!(
        dry_run(&mut pool, now, rule(RuleKind::Max, 1, Some("people"), true)),
        (vec![ana, ben2], names(&["ana@studio", "ben@studio"]))
    );
    assert_eq!(
        dry_run(&mut pool, now, rule(RuleKind::Max, 3, Some("people"), true)),
        (vec![], names(&[]))
    );
    // 8 kept for gus of 10 with 4 in use by others: the newest 2 seats are over.
    assert_eq!(
        dry_run(&mut pool, now, rule(RuleKind::Reserve, 8, Some("g"), false)),
        (vec![ben1, ben2], names(&[]))
    );
    assert_eq!(
        dry_run(&mut pool, now, rule(RuleKind::Reserve, 6, Some("g"), false)),
        (vec![], names(&[]))
    );
    // nuke: 3 borrowed, at most 1 may be: the newest borrow (2 seats) covers it.
    assert_eq!(
        dry_run(
            &mut pool,
            now,
            spec("nuke", RuleKind::BorrowLowwater, 9, None, false)
        ),
        (vec![lent2], names(&[]))
    );
    // No id was used up.
    let id = add_rule(&mut pool, rule(RuleKind::Exclude, 0, Some("g"), false));
    assert_eq!(id, 1);
}

#[test]
fn policy_check_names_the_deciding_rule_and_nothing_is_taken() {
    let (mut pool, mut batch) = policy_pool(10);
    add_group(&mut pool, "leads", &["user:ana@studio"]);
    add_group(&mut pool, "lab", &["ip:10.9.0.0/16"]);
    let include = add_rule(
        &mut pool,
        spec("vray", RuleKind::Include, 0, Some("leads"), false),
    );
    let exclude = add_rule(
        &mut pool,
        spec("vray", RuleKind::Exclude, 0, Some("lab"), false),
    );
    let before = pool.snapshot();
    let mut check = |user: &str, ip: Option<&str>| {
        let request = PolicyCheck {
            feature: "vray".into(),
            user: user.into(),
            host: Some("ws1".into()),
            ip: ip.map(str::to_string),
        };
        pool.check_policy(0, &admin(), &request, &mut batch)
            .unwrap()
    };
    let yes = check("ana@studio", None);
    assert_eq!(
        (yes.allowed, yes.rule),
        (true, Some(include)),
        "{}",
        yes.reason
    );
    let no = check("ben@studio", None);
    assert_eq!(
        (no.allowed, no.rule),
        (false, Some(include)),
        "{}",
        no.reason
    );
    assert!(no.reason.contains("ben@studio on ws1"), "{}", no.reason);
    let no = check("ANA@studio", Some("::ffff:10.9.1.1"));
    assert_eq!(
        (no.allowed, no.rule),
        (false, Some(exclude)),
        "{}",
        no.reason
    );
    let free = pool
        .check_policy(
            0,
            &admin(),
            &PolicyCheck {
                feature: "nuke".into(),
                user: "gus@studio".into(),
                host: None,
                ip: None,
            },
            &mut Batch::default(),
        )
        .unwrap();
    assert_eq!((free.allowed, free.rule), (true, None));
    assert_eq!(pool.snapshot(), before);
}

#[test]
fn group_and_rule_refusals_have_their_codes_and_are_audited() {
    let (mut pool, _) = policy_pool(10);
    add_group(&mut pool, "leads", &["user:ana@studio"]);
    let max = add_rule(
        &mut pool,
        spec("vray", RuleKind::Max, 2, Some("leads"), true),
    );
    let before = pool.snapshot();
    let ben = pool.authorize(USERS[1]).unwrap();
    let mut batch = Batch::default();
    let refused = |batch: &mut Batch, err: ErrorBody, code: ErrorCode, action: &str| {
        assert_eq!(err.code, code, "{}", err.message);
        let last = batch.audit.last().expect("audited");
        assert_eq!(
            (last.action.as_str(), last.outcome.as_str()),
            (action, code.as_str()),
            "{last:?}"
        );
        err
    };
    let gone = GroupRef {
        name: "leads".into(),
    };
    let err = pool
        .remove_group(0, &admin(), &gone, &mut batch)
        .unwrap_err();
    let err = refused(&mut batch, err, ErrorCode::Invalid, "group_remove");
    assert!(
        err.message
            .contains(&format!("rule {max} (vray: max 2 leads --each)")),
        "{}",
        err.message
    );
    let err = pool
        .add_rule(
            0,
            &admin(),
            &PolicyAdd {
                rule: spec("vray", RuleKind::Max, 2, Some("leads"), true),
                dry_run: false,
            },
            &mut batch,
        )
        .unwrap_err();
    let err = refused(&mut batch, err, ErrorCode::AlreadyExists, "policy_add");
    assert!(
        err.message.contains(&format!("rule {max}")),
        "{}",
        err.message
    );
    for (rule, what) in [
        (
            spec("vray", RuleKind::Exclude, 0, Some("nobody"), false),
            "nobody",
        ),
        (
            spec("maya", RuleKind::Exclude, 0, Some("leads"), false),
            "maya",
        ),
    ] {
        let request = PolicyAdd {
            rule,
            dry_run: true,
        };
        let err = pool
            .add_rule(0, &admin(), &request, &mut batch)
            .unwrap_err();
        let err = refused(&mut batch, err, ErrorCode::NotFound, "policy_add");
        assert!(err.message.contains(what), "{}", err.message);
    }
    let err = pool
        .add_group(
            0,
            &ben,
            &tally_protocol::GroupAdd {
                name: "mine".into(),
                members: vec!["user:ben@studio".into()],
            },
            &mut batch,
        )
        .unwrap_err();
    refused(&mut batch, err, ErrorCode::Forbidden, "group_add");
    let err = pool
        .add_rule(
            0,
            &ben,
            &PolicyAdd {
                rule: spec("vray", RuleKind::Exclude, 0, Some("leads"), false),
                dry_run: true,
            },
            &mut batch,
        )
        .unwrap_err();
    refused(&mut batch, err, ErrorCode::Forbidden, "policy_add");
    let err = pool
        .remove_rule(0, &ben, RuleRef { id: max }, &mut batch)
        .unwrap_err();
    refused(&mut batch, err, ErrorCode::Forbidden, "policy_remove");
    let err = pool
        .remove_rule(0, &admin(), RuleRef { id: 99 }, &mut batch)
        .unwrap_err();
    refused(&mut batch, err, ErrorCode::NotFound, "policy_remove");
    let check = PolicyCheck {
        feature: "vray".into(),
        user: "ana@studio".into(),
        host: None,
        ip: None,
    };
    let err = pool.check_policy(0, &ben, &check, &mut batch).unwrap_err();
    refused(&mut batch, err, ErrorCode::Forbidden, "policy_check");
    let err = pool
        .change_group_members(
            0,
            &admin(),
            &tally_protocol::GroupMembers {
                name: "nobody".into(),
                add: true,
                members: vec!["user:ben@studio".into()],
            },
            &mut batch,
        )
        .unwrap_err();
    refused(&mut batch, err, ErrorCode::NotFound, "group_members");
    assert_eq!(pool.snapshot(), before, "a refusal changed the pool");
    // A checkout refused by a rule is audited as denied, naming the rule.
    take(&mut pool, 0, 0, &holder(0), "vray", 2, 1).unwrap();
    let ana = pool.authorize(USERS[0]).unwrap();
    let err = pool
        .checkout(
            0,
            &ana,
            &holder(0),
            &checkout("vray", 1, 2),
            lease_id(2),
            &mut batch,
        )
        .unwrap_err();
    refused(&mut batch, err, ErrorCode::Denied, "checkout");
    assert!(batch
        .audit
        .last()
        .unwrap()
        .reason
        .contains(&format!("rule {max}")));
    // Once the rule is gone the group may go.
    pool.remove_rule(0, &admin(), RuleRef { id: max }, &mut batch)
        .unwrap();
    pool.remove_group(0, &admin(), &gone, &mut batch).unwrap();
}

#[test]
fn a_rule_on_a_prerequisite_denies_the_checkout_that_would_take_its_seat() {
    let (mut pool, _) = pool_with_prerequisite();
    add_group(&mut pool, "outsiders", &["user:ben@studio"]);
    let exclude = add_rule(
        &mut pool,
        spec("maya", RuleKind::Exclude, 0, Some("outsiders"), false),
    );
    let err = assert_denied_by(
        take(&mut pool, 1, 1, &holder(1), "vray", 1, 1),
        exclude,
        "maya: exclude outsiders",
    );
    assert!(
        err.message.starts_with("vray requires maya"),
        "{}",
        err.message
    );
    assert_eq!(pool.ledger.leases.len(), 0, "nothing is taken");
    assert!(take(&mut pool, 1, 0, &holder(0), "vray", 1, 2).is_ok());
    assert_eq!(seats_in_use(&pool, "maya"), 1);
}

#[test]
fn max_each_counts_an_address_whichever_form_it_came_in() {
    let (mut pool, _) = policy_pool(10);
    add_group(&mut pool, "lab", &["ip:10.0.0.0/24"]);
    let per_address = add_rule(&mut pool, spec("vray", RuleKind::Max, 1, Some("lab"), true));
    take(
        &mut pool,
        0,
        1,
        &holder_on(1, "ws1", "10.0.0.1"),
        "vray",
        1,
        1,
    )
    .unwrap();
    // The same IPv4 address, as a dual-stack listener reports it.
    let err = assert_denied_by(
        take(
            &mut pool,
            0,
            0,
            &holder_on(0, "ws2", "::ffff:10.0.0.1"),
            "vray",
            1,
            2,
        ),
        per_address,
        "vray: max 1 lab --each",
    );
    assert!(
        err.message.contains("address 10.0.0.1 holds 1 seat(s)"),
        "{}",
        err.message
    );
    assert!(take(
        &mut pool,
        0,
        0,
        &holder_on(0, "ws2", "10.0.0.2"),
        "vray",
        1,
        3
    )
    .is_ok());
}

#[test]
fn reserved_seats_do_not_depend_on_the_order_holders_are_counted_in() {
    // Ana (in a and b) and ben (in a only) hold one floating seat each; a and b keep one
    // each. Counting ana's seat toward b and ben's toward a uses both reserves; counting
    // ana's toward a leaves b's unused. The figure must not depend on which holder comes
    // first in the ledger (a hash map, in an order that differs from pool to pool).
    let mut seen = BTreeSet::new();
    for _ in 0..32 {
        let (mut pool, _) = policy_pool(10);
        add_group(&mut pool, "a", &["user:ana@studio", "user:ben@studio"]);
        add_group(&mut pool, "b", &["user:ana@studio"]);
        add_rule(
            &mut pool,
            spec("vray", RuleKind::Reserve, 1, Some("a"), false),
        );
        add_rule(
            &mut pool,
            spec("vray", RuleKind::Reserve, 1, Some("b"), false),
        );
        take(&mut pool, 0, 0, &holder(0), "vray", 1, 1).unwrap();
        take(&mut pool, 0, 1, &holder(1), "vray", 1, 2).unwrap();
        seen.insert(figures_of(&mut pool, 0, "vray"));
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![(10, 8, 0)]);
}
