//! The lease ledger: every lease held, the client sessions that renew them, the expiry
//! queues the sweep pops from, and the usage counters the capacity checks read.
//!
//! It knows nothing of entitlements or users: it records what was granted and ends what it
//! is told to (or what lapsed), keeping its indexes and counters in step. Whether a lease
//! may be granted is decided elsewhere (`capacity.rs` and the request modules).
//!
//! Online leases belong to a client *session* (one running client instance). One heartbeat
//! renews every lease of the session, so a session has a single expiry time and the sweep
//! reclaims all its leases together when it passes.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use tally_protocol::{
    ClientId, EndReason, EndedLease, LeaseId, LeaseInfo, LeaseKind, LeaseSource, RequestId,
};

use super::{Action, AuditEvent, AuditOutcome, Batch, Holder, Lease};

/// How long the reason a lease ended is kept for its holder to collect.
const ENDED_KEPT_MS: i64 = 3600 * 1000;

/// The actor of what the server does by itself (expiries, capacity enforcement).
pub(super) const SYSTEM: &str = "system";

/// One client instance's online leases and when they lapse.
#[derive(Debug, Default, Clone)]
pub(super) struct Session {
    /// The user the client signed in as; only they may renew or resume these leases.
    pub(super) user: String,
    pub(super) leases: BTreeSet<LeaseId>,
    /// Leases that ended since the client last heartbeated, for it to learn why.
    pub(super) ended: Vec<EndedLease>,
    /// When the leases lapse unless renewed; meaningful while `leases` is not empty.
    pub(super) expires_at: i64,
    /// When `ended` was last added to; stale tombstones are dropped after an hour.
    pub(super) ended_at: i64,
}

/// Seats currently drawn from the floating pool of a feature, or from one assignment.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Usage {
    pub(super) online: u32,
    pub(super) borrowed: u32,
}

impl Usage {
    pub(super) fn take(&mut self, kind: LeaseKind, seats: u32) {
        match kind {
            LeaseKind::Online => self.online += seats,
            LeaseKind::Borrowed => self.borrowed += seats,
        }
    }

    fn release(&mut self, kind: LeaseKind, seats: u32) {
        match kind {
            LeaseKind::Online => self.online -= seats,
            LeaseKind::Borrowed => self.borrowed -= seats,
        }
    }

    fn is_empty(&self) -> bool {
        self.online == 0 && self.borrowed == 0
    }

    pub(super) fn total(&self) -> u32 {
        self.online + self.borrowed
    }
}

/// Every lease held, and the indexes kept in step with them.
#[derive(Debug, Clone)]
pub(super) struct Ledger {
    /// How long an online lease lives without a heartbeat.
    pub(super) ttl_ms: i64,
    pub(super) leases: HashMap<LeaseId, Lease>,
    /// Every lease by newest grant first, then id: the order listings page through, so
    /// that a page costs its own leases and not a sort of all of them.
    pub(super) by_grant: BTreeSet<(Reverse<i64>, LeaseId)>,
    /// The lease each client's request got, so that a retry returns it (R4).
    pub(super) by_request: HashMap<(ClientId, RequestId), LeaseId>,
    pub(super) sessions: HashMap<ClientId, Session>,
    /// Sessions with leases, by expiry: the sweep pops from the front.
    expiry: BTreeSet<(i64, ClientId)>,
    /// Borrowed leases by their fixed end: the sweep pops from the front.
    borrow_expiry: BTreeSet<(i64, LeaseId)>,
    /// Floating seats in use, per feature.
    usage: HashMap<String, Usage>,
    /// Seats in use per assignment.
    assignment_use: HashMap<u64, Usage>,
    /// The seats of prerequisites each lease's checkout took (R18), which end with it.
    pub(super) taken: HashMap<LeaseId, BTreeSet<LeaseId>>,
    /// Seats held of each feature by each distinct holder (user, host, address): what the
    /// policy rules (R16) count, read without walking every lease.
    held: HashMap<String, HashMap<HolderKey, Held>>,
    /// Seats held of each feature, online and borrowed, floating and assigned: what the
    /// lease history records as in use (SPEC §10).
    in_use: HashMap<String, u32>,
}

/// Who holds seats, as policy rules tell holders apart: the user, the host the client
/// named and the address it connected from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct HolderKey {
    pub(super) user: String,
    pub(super) host: String,
    pub(super) address: Option<IpAddr>,
}

impl HolderKey {
    pub(super) fn of(lease: &Lease) -> Self {
        Self {
            user: lease.user.clone(),
            host: lease.host.clone(),
            address: lease.peer.address.parse().ok(),
        }
    }
}

/// The seats one holder has of a feature: all of them (online and borrowed, floating and
/// assigned), and those drawn from the floating pool.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Held {
    pub(super) all: u32,
    pub(super) floating: u32,
}

/// The entry of `feature` in a map keyed by feature, made (and its name copied) only when it
/// is not there yet: most leases are of a feature that already has one.
fn counter<'a, V: Default>(map: &'a mut HashMap<String, V>, feature: &str) -> &'a mut V {
    if !map.contains_key(feature) {
        map.insert(feature.to_string(), V::default());
    }
    map.get_mut(feature).expect("just made")
}

impl Ledger {
    pub(super) fn new(ttl_ms: i64) -> Self {
        Self {
            ttl_ms,
            leases: HashMap::new(),
            by_grant: BTreeSet::new(),
            by_request: HashMap::new(),
            sessions: HashMap::new(),
            expiry: BTreeSet::new(),
            borrow_expiry: BTreeSet::new(),
            usage: HashMap::new(),
            assignment_use: HashMap::new(),
            taken: HashMap::new(),
            held: HashMap::new(),
            in_use: HashMap::new(),
        }
    }

    /// Seats held of a feature, online and borrowed, floating and assigned.
    pub(super) fn in_use(&self, feature: &str) -> u32 {
        self.in_use.get(feature).copied().unwrap_or(0)
    }

    /// Features with seats held, and how many.
    pub(super) fn in_use_all(&self) -> impl Iterator<Item = (&String, u32)> {
        self.in_use.iter().map(|(feature, seats)| (feature, *seats))
    }

    /// Records a lease granted at `now` ([`insert`](Self::insert)) and its grant in the
    /// lease history: every grant goes through here.
    pub(super) fn grant(
        &mut self,
        lease: Lease,
        session_expires_at: i64,
        now: i64,
        batch: &mut Batch,
    ) {
        let (feature, user) = (lease.feature.clone(), lease.user.clone());
        self.insert(lease, session_expires_at);
        batch
            .history
            .grant(&feature, &user, now, self.in_use(&feature));
    }

    /// The seats each distinct holder has of a feature.
    pub(super) fn holders(&self, feature: &str) -> impl Iterator<Item = (&HolderKey, Held)> {
        self.held
            .get(feature)
            .into_iter()
            .flat_map(|by| by.iter().map(|(key, held)| (key, *held)))
    }

    fn hold(&mut self, lease: &Lease) {
        let held = counter(&mut self.held, &lease.feature)
            .entry(HolderKey::of(lease))
            .or_default();
        held.all += lease.seats;
        if lease.source == LeaseSource::Floating {
            held.floating += lease.seats;
        }
    }

    fn unhold(&mut self, lease: &Lease) {
        let Some(by) = self.held.get_mut(&lease.feature) else {
            return;
        };
        let key = HolderKey::of(lease);
        if let Some(held) = by.get_mut(&key) {
            held.all = held.all.saturating_sub(lease.seats);
            if lease.source == LeaseSource::Floating {
                held.floating = held.floating.saturating_sub(lease.seats);
            }
            if held.all == 0 {
                by.remove(&key);
            }
        }
        if by.is_empty() {
            self.held.remove(&lease.feature);
        }
    }

    /// Floating seats of a feature in use.
    pub(super) fn usage(&self, feature: &str) -> Usage {
        self.usage.get(feature).copied().unwrap_or_default()
    }

    /// Seats of an assignment in use.
    pub(super) fn assignment_usage(&self, id: u64) -> Usage {
        self.assignment_use.get(&id).copied().unwrap_or_default()
    }

    /// Features with floating seats in use.
    pub(super) fn features_in_use(&self) -> Vec<String> {
        self.usage.keys().cloned().collect()
    }

    /// A lease as its holder and admins see it: an online lease with its session's expiry.
    pub(super) fn info(&self, lease: &Lease) -> LeaseInfo {
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

    /// The session of a client instance, opened for `user` if it has none.
    pub(super) fn session_mut(&mut self, client: ClientId, user: &str) -> &mut Session {
        self.sessions.entry(client).or_insert_with(|| Session {
            user: user.to_string(),
            ..Session::default()
        })
    }

    /// Pushes the session's expiry to `now + ttl`.
    pub(super) fn renew(&mut self, client: ClientId, now: i64) {
        let expires_at = now + self.ttl_ms;
        if let Some(session) = self.sessions.get_mut(&client) {
            if !session.leases.is_empty() {
                self.expiry.remove(&(session.expires_at, client));
                self.expiry.insert((expires_at, client));
            }
            session.expires_at = expires_at;
        }
    }

    /// Makes room for `additional` more leases at once, before a restore inserts them.
    pub(super) fn reserve(&mut self, additional: usize) {
        self.leases.reserve(additional);
        self.by_request.reserve(additional);
    }

    /// Records a lease; an online one joins its client's session, which lapses no earlier
    /// than `session_expires_at`.
    pub(super) fn insert(&mut self, lease: Lease, session_expires_at: i64) {
        let usage = match lease.source {
            LeaseSource::Floating => counter(&mut self.usage, &lease.feature),
            LeaseSource::Assignment(id) => self.assignment_use.entry(id).or_default(),
        };
        usage.take(lease.kind, lease.seats);
        *counter(&mut self.in_use, &lease.feature) += lease.seats;
        self.by_request
            .insert((lease.client, lease.request_id), lease.id);
        if let Some(with) = lease.taken_with {
            self.taken.entry(with).or_default().insert(lease.id);
        }
        if lease.kind == LeaseKind::Borrowed {
            self.borrow_expiry.insert((lease.expires_at, lease.id));
        }
        self.hold(&lease);
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
        self.by_grant.insert((Reverse(lease.granted_at), lease.id));
        if let Some(old) = self.leases.insert(lease.id, lease) {
            if self.leases[&old.id].granted_at != old.granted_at {
                self.by_grant.remove(&(Reverse(old.granted_at), old.id));
            }
        }
    }

    /// Takes a lease out of its session's set (and the expiry queue when it was the last).
    pub(super) fn detach(&mut self, id: LeaseId, client: ClientId) {
        if let Some(session) = self.sessions.get_mut(&client) {
            if session.leases.remove(&id) && session.leases.is_empty() {
                self.expiry.remove(&(session.expires_at, client));
            }
        }
    }

    /// Binds a lease to another client instance of the same user (R4); its former
    /// instance learns at its next heartbeat that it moved.
    pub(super) fn rebind(&mut self, id: LeaseId, holder: &Holder, now: i64) {
        let Some(before) = self.leases.get(&id).cloned() else {
            return;
        };
        self.unhold(&before);
        let lease = self.leases.get_mut(&id).expect("the lease was just read");
        let to = holder.client;
        let from = lease.client;
        let user = lease.user.clone();
        let request_id = lease.request_id;
        lease.client = to;
        lease.host = holder.host.clone();
        lease.peer = holder.peer.clone();
        let after = lease.clone();
        self.hold(&after);
        if let Some(session) = self.sessions.get_mut(&from) {
            session.ended.push(EndedLease {
                lease: id,
                reason: EndReason::Moved,
            });
            session.ended_at = now;
        }
        self.detach(id, from);
        self.by_request.remove(&(from, request_id));
        self.by_request.insert((to, request_id), id);
        self.session_mut(to, &user).leases.insert(id);
    }

    /// Records where the client instance holding a lease now is (its host, program and
    /// address), as it said when it reconnected.
    pub(super) fn relocate(&mut self, id: LeaseId, holder: &Holder) {
        let Some(before) = self.leases.get(&id).cloned() else {
            return;
        };
        self.unhold(&before);
        let lease = self.leases.get_mut(&id).expect("the lease was just read");
        lease.host = holder.host.clone();
        lease.peer = holder.peer.clone();
        let after = lease.clone();
        self.hold(&after);
    }

    /// A lease and those that end with it (R18): the lease it was taken with and every seat
    /// of a prerequisite taken with either; the lease first.
    pub(super) fn linked(&self, id: LeaseId) -> Vec<LeaseId> {
        let mut ids = vec![id];
        let parent = self.leases.get(&id).and_then(|l| l.taken_with);
        for of in [Some(id), parent].into_iter().flatten() {
            if of != id && self.leases.contains_key(&of) {
                ids.push(of);
            }
            for &seat in self.taken.get(&of).into_iter().flatten() {
                if !ids.contains(&seat) {
                    ids.push(seat);
                }
            }
        }
        ids
    }

    /// Makes the seat of a prerequisite independent of the lease it was taken with.
    pub(super) fn unlink(&mut self, id: LeaseId) {
        let Some(with) = self.leases.get_mut(&id).and_then(|l| l.taken_with.take()) else {
            return;
        };
        if let Some(set) = self.taken.get_mut(&with) {
            set.remove(&id);
            if set.is_empty() {
                self.taken.remove(&with);
            }
        }
    }

    /// Ends a lease: frees its seats, tells its holder why (unless it gave it back itself),
    /// and records the end in the audit log and the store.
    pub(super) fn end(
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
        self.by_grant.remove(&(Reverse(lease.granted_at), lease.id));
        self.unhold(&lease);
        if let Some(held) = self.in_use.get_mut(&lease.feature) {
            *held = held.saturating_sub(lease.seats);
            let held = *held;
            if held == 0 {
                self.in_use.remove(&lease.feature);
            }
            batch.history.end(
                &lease.feature,
                &lease.user,
                lease.seats,
                lease.granted_at,
                now,
                held,
            );
        }
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
            EndReason::CheckedIn if lease.kind == LeaseKind::Borrowed => Action::Return,
            EndReason::CheckedIn => Action::Checkin,
            EndReason::Released => Action::Release,
            _ => Action::Reclaim,
        };
        batch.audit_raw(AuditEvent {
            at: now,
            actor: actor.to_string(),
            action: action.as_str().to_string(),
            subject: id.to_string(),
            feature: Some(lease.feature.clone()),
            outcome: AuditOutcome::Ok.as_str().to_string(),
            reason: format!(
                "{} ({} of {} on {})",
                reason.as_str(),
                lease.seats,
                lease.user,
                lease.host
            ),
        });
        batch.remove_lease(id);
        if let Some(with) = lease.taken_with {
            if let Some(set) = self.taken.get_mut(&with) {
                set.remove(&id);
                if set.is_empty() {
                    self.taken.remove(&with);
                }
            }
            // A seat of a prerequisite (R18) ended by itself (released, or over a smaller
            // pool) ends the lease that needs it: the two are held and returned together.
            self.end(with, reason, now, actor, batch);
        }
        // The seats of prerequisites its checkout took end with it, for the same reason.
        for linked in self.taken.remove(&id).unwrap_or_default() {
            self.end(linked, reason, now, actor, batch);
        }
    }

    /// Ends every borrow whose end has come and every session that lapsed by `now` (R3).
    pub(super) fn expire(&mut self, now: i64, batch: &mut Batch) {
        while let Some(&(expires_at, id)) = self.borrow_expiry.first() {
            if expires_at > now {
                break;
            }
            self.borrow_expiry.pop_first();
            self.end(id, EndReason::Expired, now, SYSTEM, batch);
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
                self.end(id, EndReason::Expired, now, SYSTEM, batch);
            }
        }
    }

    /// Forgets sessions with no leases whose tombstones are older than an hour.
    pub(super) fn forget_stale_sessions(&mut self, now: i64) {
        let cutoff = now.saturating_sub(ENDED_KEPT_MS);
        self.sessions.retain(|_, session| {
            !(session.leases.is_empty() && (session.ended.is_empty() || session.ended_at < cutoff))
        });
    }

    /// Ends the newest online leases that `draws` selects until `excess` seats are free.
    pub(super) fn end_newest(
        &mut self,
        excess: u32,
        draws: impl Fn(&Lease) -> bool,
        reason: EndReason,
        now: i64,
        actor: &str,
        batch: &mut Batch,
    ) {
        for id in self.newest_online(excess, draws) {
            self.end(id, reason, now, actor, batch);
        }
    }

    /// The newest online leases that `draws` selects, newest first, until they hold
    /// `excess` seats: those [`end_newest`](Self::end_newest) ends.
    pub(super) fn newest_online(
        &self,
        mut excess: u32,
        draws: impl Fn(&Lease) -> bool,
    ) -> Vec<LeaseId> {
        if excess == 0 {
            return Vec::new();
        }
        let mut online: Vec<(i64, LeaseId)> = self
            .leases
            .values()
            .filter(|l| l.kind == LeaseKind::Online && draws(l))
            .map(|l| (l.granted_at, l.id))
            .collect();
        online.sort_unstable_by(|a, b| b.cmp(a));
        let mut chosen = Vec::new();
        for (_, id) in online {
            if excess == 0 {
                break;
            }
            excess = excess.saturating_sub(self.leases[&id].seats);
            chosen.push(id);
        }
        chosen
    }
}
