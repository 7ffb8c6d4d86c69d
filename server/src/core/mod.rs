//! The seat accounting: entitlements, the floating pool, users, assignments and leases
//! (SPEC R1–R10; R6, borrowing, in `borrow`).
//!
//! Plain synchronous Rust with no I/O: every operation takes `now` (Unix milliseconds) and
//! records what it changed in a [`Batch`], which the engine makes durable before anyone is
//! told the outcome. The property tests in `tests.rs` drive this module directly.
//!
//! [`Pool`] is the facade: it holds the state, rebuilds it at start ([`Pool::restore`]),
//! brings it up to an instant ([`Pool::advance`], [`Pool::sweep`]) and says who a request
//! comes from ([`Pool::authorize`]). Each concern has a module of its own:
//!
//! - `types`: the domain types (actor, holder, lease, user, assignment, policy);
//! - `vocabulary`: audit actions, outcomes and notification kinds, with their stored text;
//! - `batch`: what one commit writes, and the snapshot a store loads back;
//! - `checks`: the checks requests share (role, feature and numbers, username form);
//! - `ledger`: the leases held, client sessions, expiry queues and usage counters;
//! - `capacity`: capacity, assigned, floating and available seats, and boundaries;
//! - `invariants`: [`Pool::check_invariants`], R1 checked from scratch;
//! - one module per request family: `leases` (checkout, heartbeat, resume, check-in,
//!   release, listing), `entitlements` (add, remove, list, status), `users`, `assign`
//!   (assign, revoke, assignment ends), `borrow` (borrow, return), `tokens` (sign-in,
//!   mint, list, revoke), `audit` (whether the names an audit query filters by exist),
//!   `prereqs` (R18: the features a checkout of another also takes a seat of) and `policy`
//!   (R16: groups and rules, checked at checkout and borrow);
//! - `queue` (R17): checkouts waiting for a seat, served in order as seats free up;
//! - `notifications` (R20): the notifications time and refusals produce (entitlements
//!   expiring and expired, a pool exhausted), with the marks that keep them from repeating;
//! - `credits` (R21): metered credits, the purchases of each meter's pool, each user's
//!   access, and consumptions applied once per request id, with the requests on them;
//! - `gauges`: what the metrics read at scrape time ([`Pool::gauges`]: the figures of
//!   [`Pool::figures`], entitlement ends, active users).

mod assign;
mod audit;
mod batch;
mod borrow;
mod bulk;
mod capacity;
mod checks;
pub mod credits;
mod entitlements;
mod gauges;
pub mod history;
mod invariants;
mod leases;
mod ledger;
mod notifications;
mod policy;
mod prereqs;
mod queue;
pub mod report;
#[cfg(test)]
mod report_tests;
#[cfg(test)]
mod tests;
mod tokens;
mod types;
mod users;
mod vocabulary;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tally_protocol::{EndReason, Entitlement, ErrorBody, ErrorCode, UserState};

pub use batch::{Batch, Notification, SignOut, Snapshot, Tallies};
pub use checks::require_admin;
pub use gauges::Gauges;
pub use notifications::EXPIRING_BEFORE;
pub use queue::MAX_WAITS_PER_CLIENT;
pub use tally_protocol::AuditEvent;
pub use tokens::{token_id, SignedIn, Token};
pub use types::{
    Actor, Assignment, Group, Holder, Lease, NewToken, Peer, Policy, Rule, User,
    DEFAULT_MAX_BORROW_SECS, MAX_DURATION_SECS, MAX_SEATS,
};
pub use vocabulary::{Action, AuditOutcome, NotificationKind};

use ledger::{Ledger, SYSTEM};

/// The whole seat state of a server. A clone is a scratch copy (a bulk dry run applies
/// its rows to one and drops it).
#[derive(Debug, Clone)]
pub struct Pool {
    /// The leases held, their sessions, expiry queues and usage counters.
    ledger: Ledger,
    /// Every entitlement by id, active or not: the pool of each feature is made of them.
    entitlements: BTreeMap<u64, Entitlement>,
    /// The id the next entitlement gets; ids are never reused.
    next_entitlement_id: u64,
    /// Every account by username (lowercase).
    users: BTreeMap<String, User>,
    /// Username by account id.
    user_ids: HashMap<u64, String>,
    /// How many active users other than the owner there are (what `users.max_active`
    /// caps, R9), kept in step with `users` so that adding one costs no count of them all.
    active_users: usize,
    /// The id the next account gets; ids are never reused (R22).
    next_user_id: u64,
    /// Every token by id, and the id of each hash, for sign-in.
    tokens: BTreeMap<String, Token>,
    token_hashes: HashMap<[u8; 32], String>,
    /// Tokens revoked since start, so that a store look-up made before a revocation
    /// committed cannot bring one back.
    revoked_tokens: BTreeSet<String>,
    /// Seats given by name, by id.
    assignments: BTreeMap<u64, Assignment>,
    /// Seats of each entitlement assigned to active users, whatever the assignments' own
    /// ends: `assigned_from` reads it, less the assignments past their end not ended yet
    /// (from `assignment_ends`), instead of walking every assignment, so that assigning
    /// one more seat costs no walk of them all. Kept in step by `track_assignment`.
    assigned_totals: HashMap<u64, u32>,
    /// (end, id) of every assignment with an end of its own.
    assignment_ends: BTreeSet<(i64, u64)>,
    /// The id the next assignment gets; ids are never reused.
    next_assignment_id: u64,
    /// The server settings the rules depend on.
    policy: Policy,
    /// Prerequisites (R18): a checkout of the key also takes a seat of each of these.
    requires: BTreeMap<String, BTreeSet<String>>,
    /// Groups and policy rules (R16).
    rules: policy::Rules,
    /// Checkouts waiting for a seat (R17); in memory only.
    queue: queue::Queue,
    /// What keeps time-driven notifications from repeating (R20).
    marks: notifications::Marks,
    /// The next instant at which an entitlement starts or ends or an assignment ends;
    /// capacity is re-checked then.
    next_boundary: i64,
    /// How far entitlements' starts and ends are recorded in the lease history (SPEC §10);
    /// `None` before history begins. Stored as the mark `history_through`.
    history_through: Option<i64>,
    /// Metered credits (R21): purchases, users' access, answers by request id.
    credits: credits::Credits,
    /// The id the next purchase of credits gets; ids are never reused.
    next_purchase_id: u64,
}

impl Pool {
    /// An empty pool whose online leases live `ttl_ms` without a heartbeat.
    pub fn new(ttl_ms: i64, policy: Policy) -> Self {
        Self {
            ledger: Ledger::new(ttl_ms),
            entitlements: BTreeMap::new(),
            next_entitlement_id: 1,
            users: BTreeMap::new(),
            user_ids: HashMap::new(),
            active_users: 0,
            next_user_id: 1,
            tokens: BTreeMap::new(),
            token_hashes: HashMap::new(),
            revoked_tokens: BTreeSet::new(),
            assignments: BTreeMap::new(),
            assigned_totals: HashMap::new(),
            assignment_ends: BTreeSet::new(),
            next_assignment_id: 1,
            policy,
            requires: BTreeMap::new(),
            rules: policy::Rules::new(),
            queue: queue::Queue::default(),
            marks: notifications::Marks::default(),
            next_boundary: i64::MAX,
            history_through: None,
            credits: credits::Credits::default(),
            next_purchase_id: 1,
        }
    }

    /// Rebuilds the pool from what the store holds, as after a restart. Every online lease
    /// gets one full ttl from `now` to be renewed (R5).
    ///
    /// Starts and ends that passed while the server was down (or while a commit failed) are
    /// not applied yet: the first [`advance`](Self::advance) applies every one of them, so
    /// callers run it, and commit its batch, before serving any request (R10).
    pub fn restore(snapshot: Snapshot, ttl_ms: i64, policy: Policy, now: i64) -> Self {
        let mut pool = Pool::new(ttl_ms, policy);
        pool.next_entitlement_id = snapshot.next_entitlement_id.max(1);
        for entitlement in snapshot.entitlements {
            pool.next_entitlement_id = pool.next_entitlement_id.max(entitlement.id + 1);
            pool.entitlements.insert(entitlement.id, entitlement);
        }
        pool.next_user_id = snapshot.next_user_id.max(1);
        for user in snapshot.users {
            pool.insert_user(user);
        }
        for token in snapshot.tokens {
            pool.insert_token(token);
        }
        pool.next_assignment_id = snapshot.next_assignment_id.max(1);
        for assignment in snapshot.assignments {
            pool.next_assignment_id = pool.next_assignment_id.max(assignment.id + 1);
            pool.track_assignment(&assignment, true);
            pool.assignments.insert(assignment.id, assignment);
        }
        pool.ledger.reserve(snapshot.leases.len());
        for lease in snapshot.leases {
            pool.ledger.insert(lease, now + ttl_ms);
        }
        for (feature, requires) in snapshot.requires {
            pool.requires.entry(feature).or_default().insert(requires);
        }
        for group in snapshot.groups {
            pool.rules.set_group(group);
        }
        pool.rules.next_id = snapshot.next_rule_id.max(1);
        pool.marks = notifications::Marks::restore(&snapshot.marks);
        pool.history_through = snapshot.marks.get(history::HISTORY_MARK).copied();
        for rule in snapshot.rules {
            pool.rules.insert(rule);
        }
        pool.next_purchase_id = snapshot.next_purchase_id.max(1);
        for purchase in snapshot.purchases {
            pool.next_purchase_id = pool.next_purchase_id.max(purchase.id + 1);
            pool.credits.add_purchase(purchase);
        }
        for grant in snapshot.grants {
            pool.credits.restore_grant(grant);
        }
        let kept = now.saturating_sub(credits::ANSWER_KEEP_MS);
        for row in snapshot.consumptions {
            if row.at >= kept {
                pool.credits.remember(row);
            }
        }
        // Whatever boundary passed while the store was not serving is due now.
        pool.next_boundary = i64::MIN;
        pool
    }

    /// What the store should hold for this pool; used by tests to compare with a reload.
    pub fn snapshot(&self) -> Snapshot {
        let mut leases: Vec<Lease> = self.ledger.leases.values().cloned().collect();
        leases.sort_by_key(|lease| lease.id);
        let mut marks = self.marks.stored();
        if let Some(through) = self.history_through {
            marks.insert(history::HISTORY_MARK.to_string(), through);
        }
        Snapshot {
            entitlements: self.entitlements.values().cloned().collect(),
            leases,
            users: self.users.values().cloned().collect(),
            tokens: self.tokens.values().cloned().collect(),
            assignments: self.assignments.values().cloned().collect(),
            next_user_id: self.next_user_id,
            next_entitlement_id: self.next_entitlement_id,
            next_assignment_id: self.next_assignment_id,
            requires: self
                .requires
                .iter()
                .flat_map(|(f, set)| set.iter().map(move |p| (f.clone(), p.clone())))
                .collect(),
            groups: self.rules.groups.values().cloned().collect(),
            rules: self.rules.rules.values().cloned().collect(),
            next_rule_id: self.rules.next_id,
            marks,
            purchases: self.credits.purchases().cloned().collect(),
            grants: {
                let mut grants: Vec<_> = self.credits.grants().collect();
                grants.sort_by(|a, b| (a.user, &a.meter).cmp(&(b.user, &b.meter)));
                grants
            },
            consumptions: {
                let mut rows: Vec<_> = self.credits.answers().cloned().collect();
                rows.sort_by_key(|c| (c.at, c.user, c.request));
                rows
            },
            next_purchase_id: self.next_purchase_id,
        }
    }

    /// How long an online lease lives without a heartbeat.
    pub fn ttl_ms(&self) -> i64 {
        self.ledger.ttl_ms
    }

    /// The server settings the rules depend on.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn lease_count(&self) -> usize {
        self.ledger.leases.len()
    }

    /// Brings the pool up to `now`: reclaims lapsed online leases (R3) and, when an
    /// entitlement has started or ended, ends leases the smaller pool can no longer hold
    /// (R10). Every operation calls this first, so no caller ever sees a state past its
    /// time.
    pub fn advance(&mut self, now: i64, batch: &mut Batch) {
        self.ledger.expire(now, batch);
        if now >= self.next_boundary {
            self.record_pool_boundaries(now, batch);
            let ended: Vec<u64> = self
                .assignments
                .values()
                .filter(|a| {
                    a.expires_at.is_some_and(|end| end <= now)
                        || self
                            .entitlements
                            .get(&a.entitlement)
                            .is_none_or(|e| e.expires_at.is_some_and(|end| end <= now))
                })
                .map(|a| a.id)
                .collect();
            for id in ended {
                self.end_assignment(id, EndReason::Expired, now, SYSTEM, "expired", batch);
            }
            let features = self.ledger.features_in_use();
            for feature in features {
                self.enforce_capacity(&feature, now, EndReason::Expired, batch);
            }
            self.next_boundary = self.compute_next_boundary(now);
        }
        self.notify_expiry(now, batch);
    }

    /// The periodic sweep: [`advance`](Self::advance), then forgets sessions with no leases
    /// whose tombstones are older than an hour.
    pub fn sweep(&mut self, now: i64, batch: &mut Batch) {
        self.advance(now, batch);
        self.ledger.forget_stale_sessions(now);
        self.forget_ended_grants();
        self.credits
            .forget_answers(now.saturating_sub(credits::ANSWER_KEEP_MS));
    }

    /// The user a request comes from, by account id and token, as the pool knows them now:
    /// a revoked token, or a removed or deactivated account, is refused whatever the
    /// connection was told at sign-in (R22).
    pub fn authorize_session(&self, user_id: u64, token: &str) -> Result<Actor, ErrorBody> {
        if self.tokens.get(token).is_none_or(|t| t.user != user_id) {
            return Err(ErrorBody::new(
                ErrorCode::Unauthenticated,
                "the token of this connection was revoked; sign in with another",
            ));
        }
        match self.user_ids.get(&user_id) {
            Some(username) => self.authorize(username),
            None => Err(ErrorBody::new(
                ErrorCode::Unauthenticated,
                "the account of this connection no longer exists",
            )),
        }
    }

    /// Whether `username` is an owner or admin now (their refusals are never folded).
    pub fn is_admin(&self, username: &str) -> bool {
        self.users.get(username).is_some_and(|u| u.role.is_admin())
    }

    /// The signed-in user as the pool knows them now: a removed or deactivated account is
    /// refused, whatever its connection was told at sign-in.
    pub fn authorize(&self, username: &str) -> Result<Actor, ErrorBody> {
        match self.users.get(username) {
            Some(user) if user.state == UserState::Active => Ok(Actor {
                username: user.username.clone(),
                role: user.role,
            }),
            Some(_) => Err(ErrorBody::new(
                ErrorCode::Unauthenticated,
                format!("the account {username} is deactivated; ask an admin to activate it"),
            )),
            None => Err(ErrorBody::new(
                ErrorCode::Unauthenticated,
                format!("the account {username} no longer exists"),
            )),
        }
    }
}

/// RFC 3339 UTC, to the second, for messages. Total: a time outside 1970..=9999 (only an
/// older version could have stored one) is printed as a number with a note.
pub fn rfc3339(millis: i64) -> String {
    tally_protocol::format_time(millis)
}
