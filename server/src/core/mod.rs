//! The seat accounting: entitlements, the floating pool, users, assignments and leases
//! (SPEC R1–R5, R7–R10).
//!
//! Plain synchronous Rust with no I/O: every operation takes `now` (Unix milliseconds) and
//! records what it changed in a [`Batch`], which the engine makes durable before anyone is
//! told the outcome. The property tests in `tests.rs` drive this module directly.
//!
//! Online leases belong to a client *session* (one running client instance). One heartbeat
//! renews every lease of the session, so a session has a single expiry time and the sweep
//! reclaims all its leases together when it passes.

mod assign;
mod batch;
mod borrow;
#[cfg(test)]
mod tests;
mod tokens;
mod users;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tally_protocol::{
    validate_feature, Checkout, ClientId, EndReason, EndedLease, Entitlement, ErrorBody, ErrorCode,
    FeatureStatus, HeartbeatAck, LeaseCursor, LeaseId, LeaseInfo, LeaseKind, LeaseSource,
    LeasesPage, LeasesQuery, NewEntitlement, RequestId, Resumed, Role, UserState,
};

pub use batch::{Batch, Notification, SignOut, Snapshot};
pub use tally_protocol::AuditEvent;
pub use tokens::{token_id, SignedIn, Token};

/// The default longest borrow of an entitlement (SPEC §1): 168 hours.
pub const DEFAULT_MAX_BORROW_SECS: u64 = 168 * 3600;

/// The most seats one request may name, and the longest duration (ten years): the protocol's
/// range checks (`Checkout::validate` and the like) hold requests to them.
pub use tally_protocol::{MAX_DURATION_SECS, MAX_SEATS};

/// How long the reason a lease ended is kept for its holder to collect.
const ENDED_KEPT_MS: i64 = 3600 * 1000;

/// The signed-in user a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub username: String,
    pub role: Role,
}

/// The client instance a request comes from: leases are held by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub client: ClientId,
    pub host: String,
}

/// A checked-out seat as the core keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    pub feature: String,
    pub seats: u32,
    pub user: String,
    pub host: String,
    /// The client instance holding it; its heartbeats renew the lease.
    pub client: ClientId,
    /// The client's id for the checkout, so that a retry returns this lease.
    pub request_id: RequestId,
    pub kind: LeaseKind,
    pub source: LeaseSource,
    pub granted_at: i64,
    /// For online leases: when it was granted (plus the ttl). The live expiry is the
    /// session's; this is what the store records.
    pub expires_at: i64,
    /// For a borrowed floating lease: the borrowable entitlement its seats are charged to,
    /// so that they always fit in that entitlement until the borrow ends.
    pub entitlement: Option<u64>,
}

/// A person who signs in (SPEC §1). The username is kept in lowercase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The account's identity, never reused: a session is bound to it, so a connection of a
    /// removed user never acts for a new account of the same name (R22).
    pub id: u64,
    pub username: String,
    pub name: String,
    pub role: Role,
    pub state: UserState,
    pub created_at: i64,
}

/// Seats of one entitlement given by name to one user; out of the floating pool while the
/// user is active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub id: u64,
    pub user: String,
    pub feature: String,
    pub entitlement: u64,
    pub seats: u32,
    /// No later than the entitlement's end.
    pub expires_at: Option<i64>,
    pub created_at: i64,
}

/// Server settings the rules depend on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Whether guests may draw floating seats (`users.guests_use_floating`).
    pub guests_use_floating: bool,
    /// The most active users; 0 means no limit (`users.max_active`).
    pub max_active: u32,
    /// The longest borrow the server allows, in milliseconds (`borrow.max`); 0 means the
    /// default of 168 hours.
    pub borrow_max_ms: i64,
    /// The most online leases one client instance may hold; 0 means no limit
    /// (`limits.max_leases_per_client`).
    pub max_leases_per_client: u32,
}

/// A freshly minted token: the text goes to the admin once, the hash to the store.
#[derive(Clone)]
pub struct NewToken {
    pub token: String,
    pub hash: [u8; 32],
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewToken(***)")
    }
}

/// One client instance's online leases and when they lapse.
#[derive(Debug, Default)]
struct Session {
    /// The user the client signed in as; only they may renew or resume these leases.
    user: String,
    leases: BTreeSet<LeaseId>,
    /// Leases that ended since the client last heartbeated, for it to learn why.
    ended: Vec<EndedLease>,
    /// When the leases lapse unless renewed; meaningful while `leases` is not empty.
    expires_at: i64,
    /// When `ended` was last added to; stale tombstones are dropped after an hour.
    ended_at: i64,
}

/// Seats currently drawn from the floating pool of a feature, or from one assignment.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    online: u32,
    borrowed: u32,
}

impl Usage {
    fn release(&mut self, kind: LeaseKind, seats: u32) {
        match kind {
            LeaseKind::Online => self.online -= seats,
            LeaseKind::Borrowed => self.borrowed -= seats,
        }
    }

    fn is_empty(&self) -> bool {
        self.online == 0 && self.borrowed == 0
    }

    fn total(&self) -> u32 {
        self.online + self.borrowed
    }
}

/// The whole seat state of a server.
#[derive(Debug)]
pub struct Pool {
    ttl_ms: i64,
    entitlements: BTreeMap<u64, Entitlement>,
    next_entitlement_id: u64,
    leases: HashMap<LeaseId, Lease>,
    by_request: HashMap<(ClientId, RequestId), LeaseId>,
    sessions: HashMap<ClientId, Session>,
    /// Sessions with leases, by expiry: the sweep pops from the front.
    expiry: BTreeSet<(i64, ClientId)>,
    /// Floating seats in use, per feature.
    usage: HashMap<String, Usage>,
    users: BTreeMap<String, User>,
    /// Username by account id.
    user_ids: HashMap<u64, String>,
    next_user_id: u64,
    /// Every token by id, and the id of each hash, for sign-in.
    tokens: BTreeMap<String, Token>,
    token_hashes: HashMap<[u8; 32], String>,
    /// Tokens revoked since start, so that a store look-up made before a revocation
    /// committed cannot bring one back.
    revoked_tokens: BTreeSet<String>,
    assignments: BTreeMap<u64, Assignment>,
    next_assignment_id: u64,
    /// Seats in use per assignment.
    assignment_use: HashMap<u64, Usage>,
    policy: Policy,
    /// Borrowed leases by their fixed end: the sweep pops from the front.
    borrow_expiry: BTreeSet<(i64, LeaseId)>,
    /// The next instant at which an entitlement starts or ends or an assignment ends;
    /// capacity is re-checked then.
    next_boundary: i64,
}

impl Pool {
    /// An empty pool whose online leases live `ttl_ms` without a heartbeat.
    pub fn new(ttl_ms: i64, policy: Policy) -> Self {
        Self {
            ttl_ms,
            entitlements: BTreeMap::new(),
            next_entitlement_id: 1,
            leases: HashMap::new(),
            by_request: HashMap::new(),
            sessions: HashMap::new(),
            expiry: BTreeSet::new(),
            usage: HashMap::new(),
            users: BTreeMap::new(),
            user_ids: HashMap::new(),
            next_user_id: 1,
            tokens: BTreeMap::new(),
            token_hashes: HashMap::new(),
            revoked_tokens: BTreeSet::new(),
            assignments: BTreeMap::new(),
            next_assignment_id: 1,
            assignment_use: HashMap::new(),
            policy,
            borrow_expiry: BTreeSet::new(),
            next_boundary: i64::MAX,
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
            pool.assignments.insert(assignment.id, assignment);
        }
        for lease in snapshot.leases {
            pool.insert_lease(lease, now + ttl_ms);
        }
        // Whatever boundary passed while the store was not serving is due now.
        pool.next_boundary = i64::MIN;
        pool
    }

    /// What the store should hold for this pool; used by tests to compare with a reload.
    pub fn snapshot(&self) -> Snapshot {
        let mut leases: Vec<Lease> = self.leases.values().cloned().collect();
        leases.sort_by_key(|lease| lease.id);
        Snapshot {
            entitlements: self.entitlements.values().cloned().collect(),
            leases,
            users: self.users.values().cloned().collect(),
            tokens: self.tokens.values().cloned().collect(),
            assignments: self.assignments.values().cloned().collect(),
            next_user_id: self.next_user_id,
            next_entitlement_id: self.next_entitlement_id,
            next_assignment_id: self.next_assignment_id,
        }
    }

    /// How long an online lease lives without a heartbeat.
    pub fn ttl_ms(&self) -> i64 {
        self.ttl_ms
    }

    /// The server settings the rules depend on.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    /// Brings the pool up to `now`: reclaims lapsed online leases (R3) and, when an
    /// entitlement has started or ended, ends leases the smaller pool can no longer hold
    /// (R10). Every operation calls this first, so no caller ever sees a state past its
    /// time.
    pub fn advance(&mut self, now: i64, batch: &mut Batch) {
        while let Some(&(expires_at, id)) = self.borrow_expiry.first() {
            if expires_at > now {
                break;
            }
            self.borrow_expiry.pop_first();
            self.end_lease(id, EndReason::Expired, now, "system", batch);
        }
        while let Some(&(expires_at, client)) = self.expiry.first() {
            if expires_at > now {
                break;
            }
            self.expiry.pop_first();
            let ids: Vec<LeaseId> = match self.sessions.get(&client) {
                Some(session) => session.leases.iter().copied().collect(),
                None => continue,
            };
            for id in ids {
                self.end_lease(id, EndReason::Expired, now, "system", batch);
            }
        }
        if now >= self.next_boundary {
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
                self.end_assignment(id, EndReason::Expired, now, "system", "expired", batch);
            }
            let features: Vec<String> = self.usage.keys().cloned().collect();
            for feature in features {
                self.enforce_capacity(&feature, now, EndReason::Expired, batch);
            }
            self.next_boundary = self.compute_next_boundary(now);
        }
    }

    /// The periodic sweep: [`advance`](Self::advance), then forgets sessions with no leases
    /// whose tombstones are older than an hour.
    pub fn sweep(&mut self, now: i64, batch: &mut Batch) {
        self.advance(now, batch);
        let cutoff = now.saturating_sub(ENDED_KEPT_MS);
        self.sessions.retain(|_, session| {
            !(session.leases.is_empty() && (session.ended.is_empty() || session.ended_at < cutoff))
        });
    }

    /// The pool of a feature at `now`: seats of its active entitlements.
    pub fn capacity(&self, feature: &str, now: i64) -> u32 {
        self.entitlements
            .values()
            .filter(|e| e.feature == feature && is_active(e, now))
            .fold(0u32, |sum, e| sum.saturating_add(e.seats))
    }

    /// Whether an assignment takes seats out of the floating pool now: its user is active,
    /// its entitlement is active and it has not ended.
    fn assignment_active(&self, assignment: &Assignment, now: i64) -> bool {
        self.users
            .get(&assignment.user)
            .is_some_and(|u| u.state == UserState::Active)
            && self
                .entitlements
                .get(&assignment.entitlement)
                .is_some_and(|e| is_active(e, now))
            && assignment.expires_at.is_none_or(|end| now < end)
    }

    /// When an assignment really ends: its own end, or its entitlement's when that comes
    /// first (R10).
    fn assignment_end(&self, assignment: &Assignment) -> Option<i64> {
        let entitlement = self
            .entitlements
            .get(&assignment.entitlement)
            .and_then(|e| e.expires_at);
        match (assignment.expires_at, entitlement) {
            (Some(own), Some(of_entitlement)) => Some(own.min(of_entitlement)),
            (own, of_entitlement) => own.or(of_entitlement),
        }
    }

    /// Seats of a feature assigned to active users at `now`.
    pub fn assigned(&self, feature: &str, now: i64) -> u32 {
        self.assignments
            .values()
            .filter(|a| a.feature == feature && self.assignment_active(a, now))
            .fold(0u32, |sum, a| sum.saturating_add(a.seats))
    }

    /// Seats of an entitlement assigned to active users.
    fn assigned_from(&self, entitlement: u64, now: i64) -> u32 {
        self.assignments
            .values()
            .filter(|a| a.entitlement == entitlement && self.assignment_active(a, now))
            .fold(0u32, |sum, a| sum.saturating_add(a.seats))
    }

    /// The floating capacity of a feature: its pool less the seats assigned to active users.
    pub fn floating_capacity(&self, feature: &str, now: i64) -> u32 {
        self.capacity(feature, now)
            .saturating_sub(self.assigned(feature, now))
    }

    /// Floating seats a new checkout could get now.
    pub fn available(&self, feature: &str, now: i64) -> u32 {
        let usage = self.usage(feature);
        self.floating_capacity(feature, now)
            .saturating_sub(usage.online + usage.borrowed)
    }

    fn usage(&self, feature: &str) -> Usage {
        self.usage.get(feature).copied().unwrap_or_default()
    }

    fn assignment_usage(&self, id: u64) -> Usage {
        self.assignment_use.get(&id).copied().unwrap_or_default()
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

    /// Checks R1 for every feature and assignment at `now`, and that the usage counters
    /// agree with the leases; returns a description of the first breach.
    pub fn check_invariants(&self, now: i64) -> Result<(), String> {
        let mut floating: HashMap<&str, Usage> = HashMap::new();
        let mut assigned: HashMap<u64, Usage> = HashMap::new();
        for lease in self.leases.values() {
            let usage = match lease.source {
                LeaseSource::Floating => floating.entry(lease.feature.as_str()).or_default(),
                LeaseSource::Assignment(id) => assigned.entry(id).or_default(),
            };
            match lease.kind {
                LeaseKind::Online => usage.online += lease.seats,
                LeaseKind::Borrowed => usage.borrowed += lease.seats,
            }
        }
        for (feature, usage) in &floating {
            let cached = self.usage(feature);
            if (cached.online, cached.borrowed) != (usage.online, usage.borrowed) {
                return Err(format!(
                    "usage counters of {feature} disagree with the leases"
                ));
            }
            let capacity = self.floating_capacity(feature, now);
            if usage.online + usage.borrowed > capacity {
                return Err(format!(
                    "R1: {feature} has {} floating seats out of a floating capacity of {capacity}",
                    usage.online + usage.borrowed
                ));
            }
        }
        for (id, usage) in &assigned {
            let cached = self.assignment_usage(*id);
            if (cached.online, cached.borrowed) != (usage.online, usage.borrowed) {
                return Err(format!(
                    "usage counters of assignment {id} disagree with the leases"
                ));
            }
            let Some(assignment) = self.assignments.get(id) else {
                return Err(format!("leases draw from assignment {id}, which is gone"));
            };
            if usage.online + usage.borrowed > assignment.seats {
                return Err(format!(
                    "R1: assignment {id} has {} seats leased out of {}",
                    usage.online + usage.borrowed,
                    assignment.seats
                ));
            }
            if !self.assignment_active(assignment, now) {
                return Err(format!(
                    "leases draw from assignment {id}, which is not active"
                ));
            }
        }
        for entitlement in self.entitlements.values() {
            let assigned =
                self.assigned_from(entitlement.id, now) + self.borrowed_from(entitlement.id);
            if assigned > entitlement.seats {
                return Err(format!(
                    "entitlement {} has {assigned} seats assigned or borrowed floating out of {}",
                    entitlement.id, entitlement.seats
                ));
            }
        }
        for (client, session) in &self.sessions {
            for id in &session.leases {
                match self.leases.get(id) {
                    Some(lease) if lease.client == *client => {}
                    _ => {
                        return Err(format!(
                            "session {client} lists lease {id} it does not hold"
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    // ----- requests -------------------------------------------------------------------

    /// Checks out `seats` floating seats (R1, R2), or returns the lease an earlier attempt
    /// of the same request got (R4).
    pub fn checkout(
        &mut self,
        now: i64,
        actor: &Actor,
        holder: &Holder,
        request: &Checkout,
        new_id: LeaseId,
        batch: &mut Batch,
    ) -> Result<LeaseInfo, ErrorBody> {
        self.advance(now, batch);
        if let Some(id) = self
            .by_request
            .get(&(holder.client, request.request_id))
            .copied()
        {
            let lease = &self.leases[&id];
            if lease.user == actor.username {
                self.renew_session(holder.client, now);
                return Ok(self.info(&self.leases[&id]));
            }
        }
        let refuse = |batch: &mut Batch, err: ErrorBody| {
            batch.audit(
                now,
                actor,
                "checkout",
                &request.feature,
                Some(&request.feature),
                Err(&err),
            );
            Err(err)
        };
        if let Err(why) = validate_feature(&request.feature) {
            return refuse(batch, ErrorBody::invalid(why));
        }
        if let Err(why) = request.validate() {
            return refuse(batch, ErrorBody::invalid(why));
        }
        let max = self.policy.max_leases_per_client;
        let held = self
            .sessions
            .get(&holder.client)
            .map_or(0, |session| session.leases.len());
        if max != 0 && held >= max as usize {
            let msg = format!(
                "this client instance already holds {held} leases, the most limits.max_leases_per_client allows; check some in first"
            );
            return refuse(batch, ErrorBody::invalid(msg));
        }
        let feature = request.feature.as_str();
        let known: Vec<&Entitlement> = self
            .entitlements
            .values()
            .filter(|e| e.feature == feature)
            .collect();
        if known.is_empty() {
            let msg = format!(
                "no entitlement for feature {feature}; `tally entitlement list` shows the licensed features"
            );
            return refuse(batch, ErrorBody::not_found(msg));
        }
        if self.capacity(feature, now) == 0 {
            if let Some(last) = known.iter().filter_map(|e| e.expires_at).max() {
                if known
                    .iter()
                    .all(|e| e.expires_at.is_some_and(|end| end <= now))
                {
                    let msg = format!(
                        "every entitlement of {feature} has expired, the last at {}",
                        rfc3339(last)
                    );
                    return refuse(batch, ErrorBody::new(ErrorCode::Expired, msg));
                }
            }
        }
        let source = match self.free_assignment(&actor.username, feature, request.seats, now) {
            Some(id) => LeaseSource::Assignment(id),
            None if actor.role == Role::Guest && !self.policy.guests_use_floating => {
                let msg = format!(
                    "no seat of {feature} for you: guests use only seats assigned to them, and you have no free assigned seat of {feature}"
                );
                return refuse(batch, ErrorBody::new(ErrorCode::NoSeat, msg));
            }
            None => {
                let capacity = self.floating_capacity(feature, now);
                let usage = self.usage(feature);
                let used = usage.online + usage.borrowed;
                let free = capacity.saturating_sub(used);
                if request.seats > free {
                    let mut msg = format!(
                        "no seat of {feature}: {used} of {capacity} floating seats are in use, {free} free, {} asked for",
                        request.seats
                    );
                    if actor.role.is_admin() && used > 0 {
                        msg.push_str(&format!("; held by {}", self.holders_of(feature)));
                    }
                    return refuse(batch, ErrorBody::new(ErrorCode::NoSeat, msg));
                }
                LeaseSource::Floating
            }
        };
        let lease = Lease {
            id: new_id,
            feature: feature.to_string(),
            seats: request.seats,
            user: actor.username.clone(),
            host: holder.host.clone(),
            client: holder.client,
            request_id: request.request_id,
            kind: LeaseKind::Online,
            source,
            granted_at: now,
            expires_at: now + self.ttl_ms,
            entitlement: None,
        };
        self.renew_session(holder.client, now);
        self.insert_lease(lease.clone(), now + self.ttl_ms);
        let info = self.info(&lease);
        batch.audit(
            now,
            actor,
            "checkout",
            &new_id.to_string(),
            Some(feature),
            Ok(""),
        );
        batch.add_lease(lease);
        Ok(info)
    }

    /// Renews every online lease of the client's session (R3) and reports the leases that
    /// ended since its last heartbeat.
    pub fn heartbeat(
        &mut self,
        now: i64,
        actor: &Actor,
        holder: &Holder,
        batch: &mut Batch,
    ) -> HeartbeatAck {
        self.advance(now, batch);
        let renewed = match self.sessions.get(&holder.client) {
            Some(session) if session.user == actor.username => session.leases.len() as u32,
            _ => {
                return HeartbeatAck {
                    renewed: 0,
                    ended: Vec::new(),
                }
            }
        };
        self.renew_session(holder.client, now);
        let session = self
            .sessions
            .get_mut(&holder.client)
            .expect("session exists");
        HeartbeatAck {
            renewed,
            ended: std::mem::take(&mut session.ended),
        }
    }

    /// Binds leases the same user held on an earlier connection to this client instance and
    /// renews them (R4).
    pub fn resume(
        &mut self,
        now: i64,
        actor: &Actor,
        holder: &Holder,
        ids: &[LeaseId],
        batch: &mut Batch,
    ) -> Resumed {
        self.advance(now, batch);
        let mut resumed = Vec::new();
        let mut ended = Vec::new();
        let mut tombstones: HashMap<LeaseId, EndReason> = HashMap::new();
        if let Some(session) = self.sessions.get_mut(&holder.client) {
            if session.user == actor.username {
                session.ended.retain(|gone| {
                    let asked = ids.contains(&gone.lease);
                    if asked {
                        tombstones.insert(gone.lease, gone.reason);
                    }
                    !asked
                });
            }
        }
        for &id in ids {
            let owned = self
                .leases
                .get(&id)
                .is_some_and(|l| l.user == actor.username && l.kind == LeaseKind::Online);
            if !owned {
                let reason = tombstones.get(&id).copied().unwrap_or(EndReason::Unknown);
                ended.push(EndedLease { lease: id, reason });
                continue;
            }
            let from = self.leases[&id].client;
            if from != holder.client {
                // The instance that held it learns at its next heartbeat that it moved.
                let from_host = self.leases[&id].host.clone();
                if let Some(session) = self.sessions.get_mut(&from) {
                    session.ended.push(EndedLease {
                        lease: id,
                        reason: EndReason::Moved,
                    });
                    session.ended_at = now;
                }
                batch.audit(
                    now,
                    actor,
                    "resume",
                    &id.to_string(),
                    Some(&self.leases[&id].feature),
                    Ok(&format!(
                        "moved from {from_host} to {} (another client instance)",
                        holder.host
                    )),
                );
                self.detach(id, from);
                let lease = self.leases.get_mut(&id).expect("lease exists");
                lease.client = holder.client;
                lease.host = holder.host.clone();
                let request_id = lease.request_id;
                self.by_request.remove(&(from, request_id));
                self.by_request.insert((holder.client, request_id), id);
                self.session_mut(holder.client, &actor.username)
                    .leases
                    .insert(id);
                batch.update_lease(self.leases[&id].clone());
            }
            resumed.push(id);
        }
        self.renew_session(holder.client, now);
        let resumed = resumed
            .iter()
            .map(|id| self.info(&self.leases[id]))
            .collect();
        Resumed { resumed, ended }
    }

    /// The holder gives a lease back.
    pub fn checkin(
        &mut self,
        now: i64,
        actor: &Actor,
        lease: LeaseId,
        batch: &mut Batch,
    ) -> Result<LeaseId, ErrorBody> {
        self.give_back(now, actor, lease, None, batch)
    }

    /// Ends one of the actor's own leases (of `kind`, when given) as checked in, or refuses
    /// with `not_found`; check-in and the return of a borrow both come here.
    pub(super) fn give_back(
        &mut self,
        now: i64,
        actor: &Actor,
        lease: LeaseId,
        kind: Option<LeaseKind>,
        batch: &mut Batch,
    ) -> Result<LeaseId, ErrorBody> {
        self.advance(now, batch);
        match self.leases.get(&lease) {
            Some(l) if l.user == actor.username && kind.is_none_or(|k| l.kind == k) => {
                self.end_lease(lease, EndReason::CheckedIn, now, &actor.username, batch);
                Ok(lease)
            }
            _ => {
                let (action, message) = match kind {
                    Some(LeaseKind::Borrowed) => (
                        "return",
                        format!("you have no borrowed lease {lease}; it may have ended already"),
                    ),
                    _ => ("checkin", format!("you hold no lease {lease}")),
                };
                let err = ErrorBody::not_found(message);
                batch.audit(now, actor, action, &lease.to_string(), None, Err(&err));
                Err(err)
            }
        }
    }

    /// An admin's forced check-in of anyone's lease.
    pub fn release(
        &mut self,
        now: i64,
        actor: &Actor,
        lease: LeaseId,
        batch: &mut Batch,
    ) -> Result<LeaseId, ErrorBody> {
        self.advance(now, batch);
        let subject = lease.to_string();
        if let Err(err) = require_admin(actor, "release a lease") {
            batch.audit(now, actor, "release", &subject, None, Err(&err));
            return Err(err);
        }
        let refusal = match self.leases.get(&lease) {
            None => Some(ErrorBody::not_found(format!(
                "no lease {lease}; `tally leases` lists the leases held"
            ))),
            // The token works offline whatever the server does: the seat stays used.
            Some(l) if l.kind == LeaseKind::Borrowed => Some(ErrorBody::new(
                ErrorCode::Borrowed,
                format!(
                    "lease {lease} is borrowed by {} for offline use until {}; it cannot be released before it ends or is returned",
                    l.user,
                    rfc3339(l.expires_at)
                ),
            )),
            Some(_) => None,
        };
        if let Some(err) = refusal {
            batch.audit(now, actor, "release", &subject, None, Err(&err));
            return Err(err);
        }
        self.end_lease(lease, EndReason::Released, now, &actor.username, batch);
        Ok(lease)
    }

    /// Adds an entitlement (R10 dates). Admins only.
    pub fn add_entitlement(
        &mut self,
        now: i64,
        actor: &Actor,
        new: &NewEntitlement,
        batch: &mut Batch,
    ) -> Result<Entitlement, ErrorBody> {
        self.advance(now, batch);
        let result = self.check_new_entitlement(now, actor, new);
        let entitlement = match result {
            Ok(entitlement) => entitlement,
            Err(err) => {
                batch.audit(
                    now,
                    actor,
                    "entitlement_add",
                    &new.feature,
                    Some(&new.feature),
                    Err(&err),
                );
                return Err(err);
            }
        };
        self.next_entitlement_id += 1;
        batch.next_entitlement_id = Some(self.next_entitlement_id);
        self.entitlements
            .insert(entitlement.id, entitlement.clone());
        self.next_boundary = self.compute_next_boundary(now);
        let subject = format!("entitlement {}", entitlement.id);
        let detail = format!("{} seats", entitlement.seats);
        batch.audit(
            now,
            actor,
            "entitlement_add",
            &subject,
            Some(&entitlement.feature),
            Ok(&detail),
        );
        batch.add_entitlement(entitlement.clone());
        Ok(entitlement)
    }

    fn check_new_entitlement(
        &self,
        now: i64,
        actor: &Actor,
        new: &NewEntitlement,
    ) -> Result<Entitlement, ErrorBody> {
        require_admin(actor, "add entitlements")?;
        validate_feature(&new.feature).map_err(ErrorBody::invalid)?;
        new.validate().map_err(ErrorBody::invalid)?;
        let starts_at = new.starts_at.unwrap_or(now);
        if let Some(expires_at) = new.expires_at {
            if expires_at <= starts_at {
                return Err(ErrorBody::invalid(format!(
                    "expiry {} is not after the start {}",
                    rfc3339(expires_at),
                    rfc3339(starts_at)
                )));
            }
            if expires_at <= now {
                return Err(ErrorBody::invalid(format!(
                    "expiry {} is in the past",
                    rfc3339(expires_at)
                )));
            }
        }
        let max_borrow_secs = new.max_borrow_secs.unwrap_or(DEFAULT_MAX_BORROW_SECS);
        if new.reference.len() > 256 {
            return Err(ErrorBody::invalid(
                "reference is longer than 256 characters",
            ));
        }
        Ok(Entitlement {
            id: self.next_entitlement_id,
            feature: new.feature.clone(),
            seats: new.seats,
            starts_at,
            expires_at: new.expires_at,
            kind: new.kind,
            borrowable: new.borrowable,
            max_borrow_secs,
            reference: new.reference.clone(),
        })
    }

    /// Removes an entitlement. Admins only. Leases the smaller pool can no longer hold end,
    /// newest first, with reason `revoked`, so that R1 holds at once.
    pub fn remove_entitlement(
        &mut self,
        now: i64,
        actor: &Actor,
        id: u64,
        batch: &mut Batch,
    ) -> Result<u64, ErrorBody> {
        self.advance(now, batch);
        let subject = format!("entitlement {id}");
        let feature = self.entitlements.get(&id).map(|e| e.feature.clone());
        let checked = require_admin(actor, "remove entitlements")
            .and_then(|()| {
                feature.clone().ok_or_else(|| {
                    ErrorBody::not_found(format!(
                        "no entitlement {id}; `tally entitlement list` shows them"
                    ))
                })
            })
            .and_then(|feature| self.no_borrows_from(id).map(|()| feature));
        let feature = match checked {
            Ok(feature) => feature,
            Err(err) => {
                batch.audit(
                    now,
                    actor,
                    "entitlement_remove",
                    &subject,
                    feature.as_deref(),
                    Err(&err),
                );
                return Err(err);
            }
        };
        let assignments: Vec<u64> = self
            .assignments
            .values()
            .filter(|a| a.entitlement == id)
            .map(|a| a.id)
            .collect();
        for assignment in assignments {
            let why = format!("entitlement {id} removed");
            self.end_assignment(
                assignment,
                EndReason::Revoked,
                now,
                &actor.username,
                &why,
                batch,
            );
        }
        self.entitlements.remove(&id);
        batch.remove_entitlement(id);
        batch.audit(
            now,
            actor,
            "entitlement_remove",
            &subject,
            Some(&feature),
            Ok(""),
        );
        self.enforce_capacity(&feature, now, EndReason::Revoked, batch);
        self.next_boundary = self.compute_next_boundary(now);
        Ok(id)
    }

    /// Entitlements, optionally of one feature, by id.
    pub fn entitlements(&self, feature: Option<&str>) -> Vec<Entitlement> {
        self.entitlements
            .values()
            .filter(|e| feature.is_none_or(|f| e.feature == f))
            .cloned()
            .collect()
    }

    /// The status figures of one feature or of every feature known (SPEC §1).
    pub fn status(
        &mut self,
        now: i64,
        feature: Option<&str>,
        batch: &mut Batch,
    ) -> Result<Vec<FeatureStatus>, ErrorBody> {
        self.advance(now, batch);
        let mut features: BTreeSet<&str> = self
            .entitlements
            .values()
            .map(|e| e.feature.as_str())
            .collect();
        features.extend(self.leases.values().map(|l| l.feature.as_str()));
        if let Some(wanted) = feature {
            validate_feature(wanted).map_err(ErrorBody::invalid)?;
            if !features.contains(wanted) {
                return Err(ErrorBody::not_found(format!(
                    "no entitlement for feature {wanted}; `tally entitlement list` shows the licensed features"
                )));
            }
            features.retain(|f| *f == wanted);
        }
        Ok(features
            .into_iter()
            .map(|feature| {
                let total = self.capacity(feature, now);
                let assigned = self.assigned(feature, now);
                let floating = total.saturating_sub(assigned);
                let mut usage = self.usage(feature);
                let available = floating.saturating_sub(usage.total());
                for assignment in self.assignments.values().filter(|a| a.feature == feature) {
                    let used = self.assignment_usage(assignment.id);
                    usage.online += used.online;
                    usage.borrowed += used.borrowed;
                }
                FeatureStatus {
                    feature: feature.to_string(),
                    total,
                    assigned,
                    floating,
                    in_use: usage.online,
                    borrowed: usage.borrowed,
                    available,
                    queued: 0,
                }
            })
            .collect())
    }

    /// Leases held, newest first; members and guests see only their own.
    pub fn leases(
        &mut self,
        now: i64,
        actor: &Actor,
        query: &LeasesQuery,
        batch: &mut Batch,
    ) -> Vec<LeaseInfo> {
        self.leases_page(now, actor, query, None, usize::MAX, usize::MAX, batch)
            .leases
    }

    /// One page of the leases held, newest grant first and then by id, starting after
    /// `after`; members and guests see only their own. A page holds at most `limit` leases
    /// and ends early once it passes `max_bytes` (roughly, of text), so that no answer
    /// outgrows a frame; `next` is where the following page starts.
    #[allow(clippy::too_many_arguments)]
    pub fn leases_page(
        &mut self,
        now: i64,
        actor: &Actor,
        query: &LeasesQuery,
        after: Option<LeaseCursor>,
        limit: usize,
        max_bytes: usize,
        batch: &mut Batch,
    ) -> LeasesPage {
        self.advance(now, batch);
        let key = |l: &Lease| (std::cmp::Reverse(l.granted_at), l.id);
        let after = after.map(|c| (std::cmp::Reverse(c.granted_at), c.id));
        let mut leases: Vec<&Lease> = self
            .leases
            .values()
            .filter(|l| actor.role.is_admin() || l.user.eq_ignore_ascii_case(&actor.username))
            .filter(|l| query.feature.as_deref().is_none_or(|f| l.feature == f))
            .filter(|l| {
                query
                    .user
                    .as_deref()
                    .is_none_or(|u| l.user.eq_ignore_ascii_case(u))
            })
            .filter(|l| after.is_none_or(|after| key(l) > after))
            .collect();
        leases.sort_by_key(|l| key(l));
        let limit = limit.max(1);
        let mut page = Vec::new();
        let mut bytes = 0;
        for lease in &leases {
            if page.len() == limit || (!page.is_empty() && bytes >= max_bytes) {
                break;
            }
            bytes += 64 + lease.feature.len() + lease.user.len() + lease.host.len();
            page.push(self.info(lease));
        }
        let next = match page.last() {
            Some(last) if page.len() < leases.len() => Some(LeaseCursor {
                granted_at: last.granted_at,
                id: last.id,
            }),
            _ => None,
        };
        LeasesPage { leases: page, next }
    }

    // ----- internals ------------------------------------------------------------------

    fn info(&self, lease: &Lease) -> LeaseInfo {
        let expires_at = match lease.kind {
            LeaseKind::Online => self
                .sessions
                .get(&lease.client)
                .map_or(lease.expires_at, |s| s.expires_at),
            LeaseKind::Borrowed => lease.expires_at,
        };
        LeaseInfo {
            id: lease.id,
            feature: lease.feature.clone(),
            seats: lease.seats,
            user: lease.user.clone(),
            host: lease.host.clone(),
            kind: lease.kind,
            source: lease.source,
            granted_at: lease.granted_at,
            expires_at,
        }
    }

    fn session_mut(&mut self, client: ClientId, user: &str) -> &mut Session {
        self.sessions.entry(client).or_insert_with(|| Session {
            user: user.to_string(),
            ..Session::default()
        })
    }

    /// Pushes the session's expiry to `now + ttl`.
    fn renew_session(&mut self, client: ClientId, now: i64) {
        let expires_at = now + self.ttl_ms;
        if let Some(session) = self.sessions.get_mut(&client) {
            if !session.leases.is_empty() {
                self.expiry.remove(&(session.expires_at, client));
                self.expiry.insert((expires_at, client));
            }
            session.expires_at = expires_at;
        }
    }

    fn insert_lease(&mut self, lease: Lease, session_expires_at: i64) {
        let usage = match lease.source {
            LeaseSource::Floating => self.usage.entry(lease.feature.clone()).or_default(),
            LeaseSource::Assignment(id) => self.assignment_use.entry(id).or_default(),
        };
        match lease.kind {
            LeaseKind::Online => usage.online += lease.seats,
            LeaseKind::Borrowed => usage.borrowed += lease.seats,
        }
        self.by_request
            .insert((lease.client, lease.request_id), lease.id);
        if lease.kind == LeaseKind::Borrowed {
            self.borrow_expiry.insert((lease.expires_at, lease.id));
        }
        if lease.kind == LeaseKind::Online {
            let client = lease.client;
            let session = self.session_mut(client, &lease.user);
            let was_empty = session.leases.is_empty();
            session.leases.insert(lease.id);
            let old = session.expires_at;
            if was_empty || session_expires_at > old {
                session.expires_at = session_expires_at;
                if !was_empty {
                    self.expiry.remove(&(old, client));
                }
                self.expiry.insert((session_expires_at, client));
            }
        }
        self.leases.insert(lease.id, lease);
    }

    /// Takes a lease out of its session's set (and the expiry queue when it was the last).
    fn detach(&mut self, id: LeaseId, client: ClientId) {
        if let Some(session) = self.sessions.get_mut(&client) {
            if session.leases.remove(&id) && session.leases.is_empty() {
                self.expiry.remove(&(session.expires_at, client));
            }
        }
    }

    fn end_lease(
        &mut self,
        id: LeaseId,
        reason: EndReason,
        now: i64,
        actor: &str,
        batch: &mut Batch,
    ) {
        let Some(lease) = self.leases.remove(&id) else {
            return;
        };
        match lease.source {
            LeaseSource::Floating => {
                if let Some(usage) = self.usage.get_mut(&lease.feature) {
                    usage.release(lease.kind, lease.seats);
                    if usage.is_empty() {
                        self.usage.remove(&lease.feature);
                    }
                }
            }
            LeaseSource::Assignment(assignment) => {
                if let Some(usage) = self.assignment_use.get_mut(&assignment) {
                    usage.release(lease.kind, lease.seats);
                    if usage.is_empty() {
                        self.assignment_use.remove(&assignment);
                    }
                }
            }
        }
        self.by_request.remove(&(lease.client, lease.request_id));
        self.detach(id, lease.client);
        if lease.kind == LeaseKind::Borrowed {
            self.borrow_expiry.remove(&(lease.expires_at, id));
        }
        if reason != EndReason::CheckedIn {
            if let Some(session) = self.sessions.get_mut(&lease.client) {
                session.ended.push(EndedLease { lease: id, reason });
                session.ended_at = now;
            }
        }
        let action = match reason {
            EndReason::CheckedIn if lease.kind == LeaseKind::Borrowed => "return",
            EndReason::CheckedIn => "checkin",
            EndReason::Released => "release",
            _ => "reclaim",
        };
        batch.audit_raw(AuditEvent {
            at: now,
            actor: actor.to_string(),
            action: action.to_string(),
            subject: id.to_string(),
            feature: Some(lease.feature.clone()),
            outcome: "ok".to_string(),
            reason: format!(
                "{} ({} of {} on {})",
                reason.as_str(),
                lease.seats,
                lease.user,
                lease.host
            ),
        });
        batch.remove_lease(id);
    }

    /// Ends the newest floating online leases of `feature` until they fit its floating
    /// capacity.
    fn enforce_capacity(&mut self, feature: &str, now: i64, reason: EndReason, batch: &mut Batch) {
        let capacity = self.floating_capacity(feature, now);
        let excess = self.usage(feature).total().saturating_sub(capacity);
        self.end_newest(
            excess,
            |l| l.feature == feature && l.source == LeaseSource::Floating,
            reason,
            now,
            "system",
            batch,
        );
    }

    /// Ends the newest online leases that `draws` selects until `excess` seats are free.
    fn end_newest(
        &mut self,
        mut excess: u32,
        draws: impl Fn(&Lease) -> bool,
        reason: EndReason,
        now: i64,
        actor: &str,
        batch: &mut Batch,
    ) {
        if excess == 0 {
            return;
        }
        let mut online: Vec<(i64, LeaseId)> = self
            .leases
            .values()
            .filter(|l| l.kind == LeaseKind::Online && draws(l))
            .map(|l| (l.granted_at, l.id))
            .collect();
        online.sort_unstable_by(|a, b| b.cmp(a));
        for (_, id) in online {
            if excess == 0 {
                break;
            }
            let seats = self.leases[&id].seats;
            self.end_lease(id, reason, now, actor, batch);
            excess = excess.saturating_sub(seats);
        }
    }

    fn compute_next_boundary(&self, now: i64) -> i64 {
        let entitlements = self
            .entitlements
            .values()
            .flat_map(|e| [Some(e.starts_at), e.expires_at]);
        let assignments = self.assignments.values().map(|a| a.expires_at);
        entitlements
            .chain(assignments)
            .flatten()
            .filter(|&t| t > now)
            .min()
            .unwrap_or(i64::MAX)
    }

    /// The user's active assignment of `feature` with `seats` free, the one ending first.
    fn free_assignment(&self, user: &str, feature: &str, seats: u32, now: i64) -> Option<u64> {
        self.assignments
            .values()
            .filter(|a| a.user == user && a.feature == feature && self.assignment_active(a, now))
            .filter(|a| a.seats.saturating_sub(self.assignment_usage(a.id).total()) >= seats)
            .min_by_key(|a| (a.expires_at.unwrap_or(i64::MAX), a.id))
            .map(|a| a.id)
    }

    /// Ends the newest online leases drawn from an assignment until they fit in `seats`.
    fn shrink_assignment_leases(
        &mut self,
        id: u64,
        seats: u32,
        reason: EndReason,
        now: i64,
        actor: &str,
        batch: &mut Batch,
    ) {
        let excess = self.assignment_usage(id).total().saturating_sub(seats);
        let source = LeaseSource::Assignment(id);
        self.end_newest(excess, |l| l.source == source, reason, now, actor, batch);
    }

    /// Removes an assignment, ending the online leases drawn from it.
    fn end_assignment(
        &mut self,
        id: u64,
        reason: EndReason,
        now: i64,
        actor: &str,
        why: &str,
        batch: &mut Batch,
    ) {
        self.shrink_assignment_leases(id, 0, reason, now, actor, batch);
        let Some(assignment) = self.assignments.remove(&id) else {
            return;
        };
        batch.remove_assignment(id);
        let detail = format!(
            "{} seats of {} for {} ({why})",
            assignment.seats, assignment.feature, assignment.user
        );
        batch.audit_raw(AuditEvent {
            at: now,
            actor: actor.to_string(),
            action: "assignment_end".into(),
            subject: assignment.user.clone(),
            feature: Some(assignment.feature.clone()),
            outcome: "ok".into(),
            reason: detail.clone(),
        });
        batch.notify(now, "assignment_revoked", &assignment.user, &detail);
    }

    /// "alice@example.com on node7 (2), ..." for a `no_seat` message to an admin.
    fn holders_of(&self, feature: &str) -> String {
        let mut by_holder: BTreeMap<(String, String), u32> = BTreeMap::new();
        for lease in self.leases.values().filter(|l| l.feature == feature) {
            *by_holder
                .entry((lease.user.clone(), lease.host.clone()))
                .or_default() += lease.seats;
        }
        let mut holders: Vec<((String, String), u32)> = by_holder.into_iter().collect();
        holders.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let shown: Vec<String> = holders
            .iter()
            .take(10)
            .map(|((user, host), seats)| format!("{user} on {host} ({seats})"))
            .collect();
        let mut text = shown.join(", ");
        if holders.len() > 10 {
            text.push_str(&format!(" and {} more", holders.len() - 10));
        }
        text
    }
}

fn is_active(entitlement: &Entitlement, now: i64) -> bool {
    entitlement.starts_at <= now && entitlement.expires_at.is_none_or(|end| now < end)
}

/// Refuses with `forbidden` unless the actor is an owner or admin.
pub fn require_admin(actor: &Actor, what: &str) -> Result<(), ErrorBody> {
    if actor.role.is_admin() {
        Ok(())
    } else {
        Err(ErrorBody::new(
            ErrorCode::Forbidden,
            format!(
                "only an admin may {what}; {} is a {}",
                actor.username,
                actor.role.as_str()
            ),
        ))
    }
}

/// RFC 3339 UTC, to the second, for messages. Total: a time outside 1970..=9999 (only an
/// older version could have stored one) is printed as a number with a note.
pub fn rfc3339(millis: i64) -> String {
    tally_protocol::format_time(millis)
}
