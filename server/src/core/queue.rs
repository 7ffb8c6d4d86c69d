//! The queue of waiting checkouts (SPEC R17).
//!
//! A `CheckoutWait` that finds no seat joins its feature's queue instead of failing. The
//! entries are served in order (priority, lower first, then arrival) by
//! [`Pool::serve_queue`], which the engine runs before each request and before each commit:
//! a seat freed by one request goes to the queue before the next request is applied, to the
//! first entry whose checkout would now succeed (entries that cannot be served yet, asking
//! more seats than are free, are skipped for later ones that can). A grant is an ordinary
//! lease of the entry's client instance, recorded in the batch and audited as a checkout
//! from the queue; the engine sends the notice ([`QueueNotice`]) to that client instance's
//! connection only after the batch is committed.
//!
//! An entry belongs to the client instance that queued it, keyed by (client instance,
//! request id) like the lease it waits for: a retried `CheckoutWait` returns the place (or
//! the lease granted meanwhile); any request or heartbeat of the instance keeps its entries;
//! an instance not seen for one ttl loses them. A wait whose time passes ends with
//! `queue_timeout`.
//!
//! Entries live in memory only: a restart or a failover loses the places, and a client
//! that reconnects sends its `CheckoutWait` again under the same request id and joins
//! again, at the back.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use tally_protocol::{
    Checkout, CheckoutWait, ClientId, EndReason, ErrorBody, ErrorCode, LeaseId, QueueEntry,
    QueueNotice, QueueOutcome, QueuePlace, QueueQuery, RequestId, Response, MAX_DURATION_SECS,
};

use super::policy::Who;
use super::{rfc3339, Action, Actor, Batch, Holder, Pool};

/// The most checkouts one client instance may have waiting at once.
pub const MAX_WAITS_PER_CLIENT: usize = 64;

/// An entry's key: the client instance that queued it and the request id of its checkout.
type Key = (ClientId, RequestId);

/// Where an entry stands in its feature's order: priority (lower first), then arrival.
type Place = (u32, u64, Key);

/// The waiting checkouts.
#[derive(Debug, Default, Clone)]
pub(super) struct Queue {
    entries: HashMap<Key, Entry>,
    /// Each feature's entries in the order they are served.
    order: BTreeMap<String, BTreeSet<Place>>,
    /// When each client instance with entries was last seen, and how many it has.
    clients: HashMap<ClientId, (i64, usize)>,
    /// The arrival number of the next entry.
    next_seq: u64,
    /// Leases granted from the queue that no `CheckoutWait` retry has returned yet: a
    /// resume of a client that was away when its grant was sent does not check them in,
    /// since the retry that follows claims them.
    granted: HashSet<LeaseId>,
}

/// One waiting checkout.
#[derive(Debug, Clone)]
struct Entry {
    /// The checkout it waits to make (its request id is the entry's).
    checkout: Checkout,
    /// Whose it is: the user, and the client instance that holds the lease once granted.
    user: String,
    holder: Holder,
    /// From the feature's priority rules; lower is served first.
    priority: u32,
    /// Arrival order, among equal priorities.
    seq: u64,
    /// When it joined.
    since: i64,
    /// When the wait ends unserved; `None`: no limit.
    deadline: Option<i64>,
}

impl Entry {
    fn place(&self) -> Place {
        (
            self.priority,
            self.seq,
            (self.holder.client, self.checkout.request_id),
        )
    }
}

impl Queue {
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `lease` was granted from the queue and not yet claimed by a retry.
    pub(super) fn is_unclaimed_grant(&self, lease: &LeaseId) -> bool {
        self.granted.contains(lease)
    }

    /// Seats waited for by the entries of `feature`: the status figure `queued`.
    pub(super) fn queued_seats(&self, feature: &str) -> u32 {
        self.order.get(feature).map_or(0, |places| {
            places
                .iter()
                .map(|(_, _, key)| self.entries[key].checkout.seats)
                .fold(0u32, u32::saturating_add)
        })
    }

    fn insert(&mut self, entry: Entry, now: i64) {
        let key = (entry.holder.client, entry.checkout.request_id);
        self.order
            .entry(entry.checkout.feature.clone())
            .or_default()
            .insert(entry.place());
        let client = self.clients.entry(entry.holder.client).or_insert((now, 0));
        client.0 = now;
        client.1 += 1;
        self.entries.insert(key, entry);
    }

    fn remove(&mut self, key: &Key) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        if let Some(places) = self.order.get_mut(&entry.checkout.feature) {
            places.remove(&entry.place());
            if places.is_empty() {
                self.order.remove(&entry.checkout.feature);
            }
        }
        if let Some(client) = self.clients.get_mut(&key.0) {
            client.1 -= 1;
            if client.1 == 0 {
                self.clients.remove(&key.0);
            }
        }
        Some(entry)
    }

    /// 1 for the first entry of its feature served.
    fn position(&self, entry: &Entry) -> u32 {
        let place = entry.place();
        self.order
            .get(&entry.checkout.feature)
            .map_or(1, |places| places.range(..place).count() as u32 + 1)
    }

    fn place_of(&self, entry: &Entry) -> QueuePlace {
        QueuePlace {
            request_id: entry.checkout.request_id,
            feature: entry.checkout.feature.clone(),
            seats: entry.checkout.seats,
            position: self.position(entry),
            since: entry.since,
            deadline: entry.deadline,
        }
    }
}

impl Pool {
    /// A checkout that waits (R17): the lease when a seat is free now (or when this request
    /// id already got one), the place in the queue when it already waits, else, when the
    /// only refusal is `no_seat`, a new place at the back of its priority. Any other
    /// refusal is answered as a checkout's.
    pub fn checkout_wait(
        &mut self,
        now: i64,
        actor: &Actor,
        holder: &Holder,
        request: &CheckoutWait,
        new_id: LeaseId,
        batch: &mut Batch,
    ) -> Result<Response, ErrorBody> {
        self.advance(now, batch);
        let checkout = &request.checkout;
        let feature = checkout.feature.as_str();
        let key = (holder.client, checkout.request_id);
        if let Some(entry) = self.queue.entries.get(&key) {
            if entry.user == actor.username {
                return Ok(Response::Queued(self.queue.place_of(entry)));
            }
        }
        if let Some(info) = self.lease_of_request(now, actor, holder, checkout.request_id) {
            self.queue.granted.remove(&info.id);
            return Ok(Response::Lease(info));
        }
        let checked = self
            .check_wait(request)
            .and_then(|()| self.check_checkout_whole(now, actor, holder, checkout));
        let refusal = match checked {
            Ok(seats) => {
                let info = self.grant(now, actor, holder, checkout, new_id, seats, "", batch);
                return Ok(Response::Lease(info));
            }
            Err(err) => err,
        };
        self.notify_refusal(now, feature, &actor.username, &refusal, batch);
        let waits = self.queue.clients.get(&holder.client).map_or(0, |c| c.1);
        let waitable = self.may_wait(feature, &Who::of(actor, holder), checkout.seats, &refusal);
        let refusal = match refusal.code {
            _ if waitable && waits >= MAX_WAITS_PER_CLIENT => ErrorBody::invalid(format!(
                "this client instance already has {waits} checkouts waiting, the most it may; cancel some first"
            )),
            _ if waitable && request.wait_secs == Some(0) => refusal,
            _ if waitable => {
                let entry = Entry {
                    checkout: checkout.clone(),
                    user: actor.username.clone(),
                    holder: holder.clone(),
                    priority: self.queue_priority(feature, &Who::of(actor, holder)),
                    seq: self.queue.next_seq,
                    since: now,
                    deadline: request
                        .wait_secs
                        .map(|secs| now.saturating_add(secs as i64 * 1000)),
                };
                self.queue.next_seq += 1;
                let detail = format!(
                    "waiting for {} seat(s) of {feature}: {}",
                    checkout.seats, refusal.message
                );
                batch.audit(now, actor, Action::Queue, feature, Some(feature), Ok(&detail));
                let place = self.queue.place_of(&entry);
                self.queue.insert(entry, now);
                return Ok(Response::Queued(place));
            }
            _ => refusal,
        };
        batch.audit(
            now,
            actor,
            Action::Checkout,
            feature,
            Some(feature),
            Err(&refusal),
        );
        Err(refusal)
    }

    /// The wait a `CheckoutWait` asks for, within the longest duration any request names.
    fn check_wait(&self, request: &CheckoutWait) -> Result<(), ErrorBody> {
        match request.wait_secs {
            Some(secs) if secs > MAX_DURATION_SECS => Err(ErrorBody::invalid(format!(
                "a wait of {secs} s is longer than the longest allowed, {MAX_DURATION_SECS} s; leave it out to wait with no limit"
            ))),
            _ => Ok(()),
        }
    }

    /// The client gave up the wait of `request_id`: its entry leaves the queue. Whether one
    /// was waiting.
    pub fn queue_cancel(
        &mut self,
        now: i64,
        actor: &Actor,
        holder: &Holder,
        request_id: RequestId,
        batch: &mut Batch,
    ) -> bool {
        let key = (holder.client, request_id);
        match self.queue.entries.get(&key) {
            Some(entry) if entry.user == actor.username => {}
            _ => {
                // Granted meanwhile, and the client never learned of it: given back.
                if let Some(id) = self.ledger.by_request.get(&key).copied() {
                    if self.queue.granted.remove(&id)
                        && self.ledger.leases[&id].user == actor.username
                    {
                        self.ledger
                            .end(id, EndReason::CheckedIn, now, &actor.username, batch);
                    }
                }
                return false;
            }
        }
        let entry = self.queue.remove(&key).expect("entry exists");
        let feature = entry.checkout.feature.as_str();
        let detail = format!("left the queue, waiting since {}", rfc3339(entry.since));
        batch.audit(
            now,
            actor,
            Action::Queue,
            feature,
            Some(feature),
            Ok(&detail),
        );
        true
    }

    /// The queue of one feature or of all, each feature's entries in the order they are
    /// served: admins see every entry, others their own (with their real positions).
    pub fn queue_list(
        &mut self,
        now: i64,
        actor: &Actor,
        query: &QueueQuery,
        batch: &mut Batch,
    ) -> Result<Vec<QueueEntry>, ErrorBody> {
        self.advance(now, batch);
        if let Some(feature) = &query.feature {
            let known = tally_protocol::validate_feature(feature)
                .map_err(ErrorBody::invalid)
                .and_then(|()| self.entitlements_of(feature).map(|_| ()));
            batch.audit_refusal(now, actor, Action::Queue, feature, Some(feature), known)?;
        }
        let mut listed = Vec::new();
        for (feature, places) in &self.queue.order {
            if query.feature.as_ref().is_some_and(|f| f != feature) {
                continue;
            }
            for (position, (_, _, key)) in places.iter().enumerate() {
                let entry = &self.queue.entries[key];
                if !actor.role.is_admin() && entry.user != actor.username {
                    continue;
                }
                listed.push(QueueEntry {
                    feature: feature.clone(),
                    seats: entry.checkout.seats,
                    user: entry.user.clone(),
                    host: entry.holder.host.clone(),
                    since: entry.since,
                    position: position as u32 + 1,
                });
            }
        }
        Ok(listed)
    }

    /// Forgets grants whose leases ended (the sweep calls it).
    pub(super) fn forget_ended_grants(&mut self) {
        if !self.queue.granted.is_empty() {
            let leases = &self.ledger.leases;
            self.queue.granted.retain(|id| leases.contains_key(id));
        }
    }

    /// A request or heartbeat of the client instance: its entries are kept another ttl.
    pub fn queue_seen(&mut self, client: ClientId, now: i64) {
        if let Some(seen) = self.queue.clients.get_mut(&client) {
            seen.0 = seen.0.max(now);
        }
    }

    /// Every waiting checkout, by client instance and request id.
    pub fn queue_waiting(&self) -> Vec<(ClientId, RequestId)> {
        self.queue.entries.keys().copied().collect()
    }

    /// Whether any checkout waits.
    pub fn queue_is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The next instant at which a wait times out or a client instance's entries are
    /// dropped for not being seen: the sweep is due then.
    pub fn queue_next_due(&self) -> Option<i64> {
        let deadlines = self.queue.entries.values().filter_map(|e| e.deadline);
        let unseen = self
            .queue
            .clients
            .values()
            .map(|(seen, _)| seen.saturating_add(self.ledger.ttl_ms));
        deadlines.chain(unseen).min()
    }

    /// Serves the queue (R17): ends the waits whose time passed (`queue_timeout`) and those
    /// of client instances not seen for one ttl, then, feature by feature, grants each entry
    /// whose checkout would succeed now, in order, skipping those that cannot be served yet;
    /// an entry whose checkout is now refused for another reason than `no_seat` (its user
    /// deactivated, its feature expired or removed) ends with that refusal. Each end and
    /// grant is audited and leaves a notice in the batch. O(1) when nothing waits.
    pub fn serve_queue(
        &mut self,
        now: i64,
        new_id: &mut dyn FnMut() -> LeaseId,
        batch: &mut Batch,
    ) {
        if self.queue.is_empty() {
            return;
        }
        self.advance(now, batch);
        let ttl = self.ledger.ttl_ms;
        let unseen: Vec<ClientId> = self
            .queue
            .clients
            .iter()
            .filter(|(_, (seen, _))| seen.saturating_add(ttl) <= now)
            .map(|(client, _)| *client)
            .collect();
        let mut ended: Vec<(Key, ErrorBody)> = Vec::new();
        for (key, entry) in &self.queue.entries {
            if unseen.contains(&key.0) {
                let err = ErrorBody::new(
                    ErrorCode::QueueTimeout,
                    format!(
                        "the wait for {} ended: its client was not seen for {} s, so its place in the queue was given up",
                        entry.checkout.feature,
                        ttl / 1000
                    ),
                );
                ended.push((*key, err));
            } else if entry.deadline.is_some_and(|deadline| deadline <= now) {
                let err = ErrorBody::new(
                    ErrorCode::QueueTimeout,
                    format!(
                        "no seat of {} was free within the wait asked for (queued at {})",
                        entry.checkout.feature,
                        rfc3339(entry.since)
                    ),
                );
                ended.push((*key, err));
            }
        }
        ended.sort_by_key(|(key, _)| self.queue.entries[key].place());
        for (key, err) in ended {
            self.end_wait(now, &key, err, batch);
        }
        let features: Vec<String> = self.queue.order.keys().cloned().collect();
        for feature in features {
            let places: Vec<Place> = self.queue.order[&feature].iter().copied().collect();
            for (_, _, key) in places {
                let entry = &self.queue.entries[&key];
                let actor = match self.authorize(&entry.user) {
                    Ok(actor) => actor,
                    Err(err) => {
                        self.end_wait(now, &key, err, batch);
                        continue;
                    }
                };
                match self.check_checkout_whole(now, &actor, &entry.holder, &entry.checkout) {
                    Ok(seats) => {
                        let entry = self.queue.remove(&key).expect("entry exists");
                        let detail =
                            format!("from the queue, waiting since {}", rfc3339(entry.since));
                        let info = self.grant(
                            now,
                            &actor,
                            &entry.holder,
                            &entry.checkout,
                            new_id(),
                            seats,
                            &detail,
                            batch,
                        );
                        self.queue.granted.insert(info.id);
                        batch.queue_notices.push((
                            entry.holder.client,
                            QueueNotice {
                                request_id: entry.checkout.request_id,
                                outcome: QueueOutcome::Granted(info),
                            },
                        ));
                    }
                    Err(err)
                        if self.may_wait(
                            &entry.checkout.feature,
                            &Who::of(&actor, &entry.holder),
                            entry.checkout.seats,
                            &err,
                        ) => {}
                    Err(err) => self.end_wait(now, &key, err, batch),
                }
            }
        }
    }

    /// Ends a wait unserved: audited, and its client told why.
    fn end_wait(&mut self, now: i64, key: &Key, err: ErrorBody, batch: &mut Batch) {
        let Some(entry) = self.queue.remove(key) else {
            return;
        };
        let actor = Actor {
            username: entry.user.clone(),
            role: self
                .users
                .get(&entry.user)
                .map_or(tally_protocol::Role::Guest, |u| u.role),
        };
        let feature = entry.checkout.feature.as_str();
        batch.audit(
            now,
            &actor,
            Action::Queue,
            feature,
            Some(feature),
            Err(&err),
        );
        batch.queue_notices.push((
            entry.holder.client,
            QueueNotice {
                request_id: entry.checkout.request_id,
                outcome: QueueOutcome::Ended(err),
            },
        ));
    }

    /// R17's invariant: no entry waits while its checkout would succeed (checked between
    /// requests, after [`serve_queue`](Self::serve_queue)), and the indexes agree.
    pub(super) fn check_queue(&self, now: i64) -> Result<(), String> {
        let listed: usize = self.queue.order.values().map(BTreeSet::len).sum();
        if listed != self.queue.entries.len() {
            return Err(format!(
                "the queue orders {listed} entries but holds {}",
                self.queue.entries.len()
            ));
        }
        for entry in self.queue.entries.values() {
            let Ok(actor) = self.authorize(&entry.user) else {
                continue;
            };
            if self
                .check_checkout_whole(now, &actor, &entry.holder, &entry.checkout)
                .is_ok()
            {
                return Err(format!(
                    "R17: {} waits for {} seat(s) of {} while its checkout would succeed",
                    entry.user, entry.checkout.seats, entry.checkout.feature
                ));
            }
        }
        Ok(())
    }
}
