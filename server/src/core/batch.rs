//! What one group commit writes, and what a store loads back at start.

use std::collections::HashSet;

use std::collections::BTreeMap;

use tally_protocol::{
    AuditEvent, ClientId, Entitlement, ErrorBody, ErrorCode, LeaseId, QueueNotice,
};

use super::credits::{ConsumptionRow, GrantRow, Purchase};
use super::history::HistoryRows;
use super::types::{Group, Rule};
use super::{Action, Actor, Assignment, AuditOutcome, Lease, NotificationKind, Token, User};

/// A message for the outbox, written in the same transaction as the change it reports and
/// delivered at least once to every sink by the notification worker (SPEC R20).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Stable for de-duplication: the same on every delivery, every retry and every sink
    /// (32 hex digits, random, made with the notification).
    pub id: String,
    pub at: i64,
    /// The stored text of a [`NotificationKind`] (`assignment_changed`, `pool_exhausted`,
    /// ...): kept as text so that the outbox reads back whatever an older version wrote.
    pub kind: String,
    /// What it is about: a user for most kinds, an entitlement, a feature or a node.
    pub subject: String,
    /// The feature it concerns, if any.
    pub feature: Option<String>,
    /// One sentence for people.
    pub text: String,
}

/// The durable changes of one or more requests, written in one transaction.
///
/// A lease or entitlement added and removed within the same batch cancels out, so a store
/// can write each list as one multi-row statement in any order.
#[derive(Debug, Default)]
pub struct Batch {
    pub entitlements_added: Vec<Entitlement>,
    pub entitlements_removed: Vec<u64>,
    pub leases_added: Vec<Lease>,
    pub leases_removed: Vec<LeaseId>,
    pub audit: Vec<AuditEvent>,
    /// Users added or changed (an upsert by username).
    pub users_upserted: Vec<User>,
    /// Users removed, with their tokens. Written before `users_upserted`.
    pub users_removed: Vec<String>,
    /// The user id counter, so that no account id is ever reused.
    pub next_user_id: Option<u64>,
    /// Tokens to add.
    pub tokens_added: Vec<Token>,
    /// Tokens revoked, by id.
    pub tokens_removed: Vec<String>,
    /// When tokens were last used: (id, time), at most once a minute each.
    pub tokens_used: Vec<(String, i64)>,
    /// Connections to end once the batch is committed: revoked tokens, deactivated and
    /// removed accounts. Not written.
    pub sign_outs: Vec<SignOut>,
    /// Assignments added or changed (an upsert by id).
    pub assignments_upserted: Vec<Assignment>,
    pub assignments_removed: Vec<u64>,
    pub notifications: Vec<Notification>,
    /// The entitlement id counter, so that ids are never reused after a restart.
    pub next_entitlement_id: Option<u64>,
    /// The assignment id counter, likewise.
    pub next_assignment_id: Option<u64>,
    /// Prerequisites added (R18): (feature, the feature it requires).
    pub requires_added: Vec<(String, String)>,
    /// Prerequisites dropped, likewise.
    pub requires_removed: Vec<(String, String)>,
    /// Groups added or changed (an upsert by name, members and all).
    pub groups_upserted: Vec<Group>,
    /// Groups removed, by name. Written before `groups_upserted`.
    pub groups_removed: Vec<String>,
    /// Policy rules added (R16).
    pub rules_added: Vec<Rule>,
    /// Policy rules removed, by id.
    pub rules_removed: Vec<u64>,
    /// The rule id counter, so that rule ids are never reused.
    pub next_rule_id: Option<u64>,
    /// Marks of notifications that must not repeat (R20), upserted by key: see
    /// [`Snapshot::marks`].
    pub marks: Vec<(String, i64)>,
    /// How queued checkouts ended (R17): each sent to its client instance's connection once
    /// the batch is committed. Not written.
    pub queue_notices: Vec<(ClientId, QueueNotice)>,
    /// Checkouts granted and refused by this batch, for the metrics' counters, which the
    /// engine adds once the batch is committed. Not written.
    pub tallies: Tallies,
    /// The hourly rollups of lease history (SPEC §10) this batch upserts, one per key.
    pub history: HistoryRows,
    /// Credit purchases added or changed (SPEC §11): an upsert by id, with what is left.
    pub purchases_upserted: Vec<Purchase>,
    /// Users' access to meters added or changed: an upsert by (user, meter).
    pub grants_upserted: Vec<GrantRow>,
    /// Consumptions with their first answers (R21), inserted: a retry writes nothing.
    pub consumptions: Vec<ConsumptionRow>,
    /// The purchase id counter, so that purchase ids are never reused.
    pub next_purchase_id: Option<u64>,
    /// Leases first written by this batch (a removal cancels them out).
    new_lease_ids: HashSet<LeaseId>,
    /// Leases already in the store that this batch rewrites (`leases_added` is an upsert).
    updated_lease_ids: HashSet<LeaseId>,
    /// Entitlements already in the store that this batch rewrites (`entitlements_added` is
    /// an upsert too).
    updated_entitlement_ids: HashSet<u64>,
}

impl Batch {
    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.entitlements_added.is_empty()
            && self.entitlements_removed.is_empty()
            && self.leases_added.is_empty()
            && self.leases_removed.is_empty()
            && self.audit.is_empty()
            && self.users_upserted.is_empty()
            && self.users_removed.is_empty()
            && self.tokens_added.is_empty()
            && self.tokens_removed.is_empty()
            && self.tokens_used.is_empty()
            && self.next_user_id.is_none()
            && self.assignments_upserted.is_empty()
            && self.assignments_removed.is_empty()
            && self.notifications.is_empty()
            && self.next_entitlement_id.is_none()
            && self.next_assignment_id.is_none()
            && self.requires_added.is_empty()
            && self.requires_removed.is_empty()
            && self.groups_upserted.is_empty()
            && self.groups_removed.is_empty()
            && self.rules_added.is_empty()
            && self.rules_removed.is_empty()
            && self.next_rule_id.is_none()
            && self.marks.is_empty()
            && self.history.is_empty()
            && self.purchases_upserted.is_empty()
            && self.grants_upserted.is_empty()
            && self.consumptions.is_empty()
            && self.next_purchase_id.is_none()
    }

    /// How many rows the batch writes.
    pub fn rows(&self) -> usize {
        self.entitlements_added.len()
            + self.entitlements_removed.len()
            + self.leases_added.len()
            + self.leases_removed.len()
            + self.audit.len()
            + self.users_upserted.len()
            + self.users_removed.len()
            + self.tokens_added.len()
            + self.tokens_removed.len()
            + self.tokens_used.len()
            + self.assignments_upserted.len()
            + self.assignments_removed.len()
            + self.notifications.len()
            + self.requires_added.len()
            + self.requires_removed.len()
            + self.groups_upserted.len()
            + self.groups_removed.len()
            + self.rules_added.len()
            + self.rules_removed.len()
            + self.marks.len()
            + self.history.len()
            + self.purchases_upserted.len()
            + self.grants_upserted.len()
            + self.consumptions.len()
    }

    /// Writes a purchase as it stands now (the latest write of an id wins).
    pub fn upsert_purchase(&mut self, purchase: Purchase) {
        match self
            .purchases_upserted
            .iter_mut()
            .find(|p| p.id == purchase.id)
        {
            Some(slot) => *slot = purchase,
            None => self.purchases_upserted.push(purchase),
        }
    }

    /// Writes a user's access to a meter as it stands now (the latest write wins).
    pub fn upsert_grant(&mut self, grant: GrantRow) {
        match self
            .grants_upserted
            .iter_mut()
            .find(|g| g.user == grant.user && g.meter == grant.meter)
        {
            Some(slot) => *slot = grant,
            None => self.grants_upserted.push(grant),
        }
    }

    pub fn add_lease(&mut self, lease: Lease) {
        self.new_lease_ids.insert(lease.id);
        self.leases_added.push(lease);
    }

    /// Rewrites a lease the store may already hold (e.g. bound to a new client instance).
    pub fn update_lease(&mut self, lease: Lease) {
        if let Some(slot) = self.leases_added.iter_mut().find(|l| l.id == lease.id) {
            *slot = lease;
        } else {
            self.updated_lease_ids.insert(lease.id);
            self.leases_added.push(lease);
        }
    }

    pub fn remove_lease(&mut self, id: LeaseId) {
        if self.new_lease_ids.remove(&id) {
            self.leases_added.retain(|lease| lease.id != id);
            return;
        }
        if self.updated_lease_ids.remove(&id) {
            self.leases_added.retain(|lease| lease.id != id);
        }
        self.leases_removed.push(id);
    }

    pub fn upsert_user(&mut self, user: User) {
        self.users_upserted.retain(|u| u.id != user.id);
        self.users_upserted.push(user);
    }

    /// Removes a user and their tokens; what this batch had written for them goes too.
    pub fn remove_user(&mut self, user: &User) {
        self.users_upserted.retain(|u| u.id != user.id);
        self.tokens_added.retain(|t| t.user != user.id);
        self.users_removed.push(user.username.clone());
        self.sign_outs.push(SignOut::User(user.id));
    }

    pub fn add_token(&mut self, token: Token) {
        self.tokens_added.push(token);
    }

    /// Revokes a token; a token added by this batch is simply not written.
    pub fn remove_token(&mut self, id: &str) {
        let before = self.tokens_added.len();
        self.tokens_added.retain(|t| t.id != id);
        self.tokens_used.retain(|(used, _)| used != id);
        if self.tokens_added.len() == before {
            self.tokens_removed.push(id.to_string());
        }
        self.sign_outs.push(SignOut::Token(id.to_string()));
    }

    /// Records when a token was last used.
    pub fn use_token(&mut self, id: &str, at: i64) {
        match self.tokens_added.iter_mut().find(|t| t.id == id) {
            Some(token) => token.last_used = Some(at),
            None => {
                self.tokens_used.retain(|(used, _)| used != id);
                self.tokens_used.push((id.to_string(), at));
            }
        }
    }

    pub fn upsert_assignment(&mut self, assignment: Assignment) {
        self.assignments_removed.retain(|id| *id != assignment.id);
        self.assignments_upserted.retain(|a| a.id != assignment.id);
        self.assignments_upserted.push(assignment);
    }

    pub fn remove_assignment(&mut self, id: u64) {
        self.assignments_upserted.retain(|a| a.id != id);
        self.assignments_removed.push(id);
    }

    /// Queues a notification in the outbox.
    pub fn notify(
        &mut self,
        at: i64,
        kind: NotificationKind,
        subject: &str,
        feature: Option<&str>,
        text: &str,
    ) {
        // PostgreSQL's text holds no NUL; no rule of the core lets one through, and this
        // keeps it so.
        let clean = |text: &str| text.replace('\0', "\u{FFFD}");
        self.notifications.push(Notification {
            id: format!("{:032x}", rand::random::<u128>()),
            at,
            kind: kind.as_str().to_string(),
            subject: clean(subject),
            feature: feature.map(clean),
            text: clean(text),
        });
    }

    /// Sets a notification mark (one row per key, the latest wins).
    pub fn mark(&mut self, key: &str, at: i64) {
        match self.marks.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = at,
            None => self.marks.push((key.to_string(), at)),
        }
    }

    pub fn add_entitlement(&mut self, entitlement: Entitlement) {
        self.entitlements_added.push(entitlement);
    }

    /// Rewrites an entitlement the store may already hold (renewed or corrected).
    pub fn update_entitlement(&mut self, entitlement: Entitlement) {
        if let Some(slot) = self
            .entitlements_added
            .iter_mut()
            .find(|e| e.id == entitlement.id)
        {
            *slot = entitlement;
        } else {
            self.updated_entitlement_ids.insert(entitlement.id);
            self.entitlements_added.push(entitlement);
        }
    }

    pub fn remove_entitlement(&mut self, id: u64) {
        let before = self.entitlements_added.len();
        self.entitlements_added.retain(|e| e.id != id);
        let added_here = self.entitlements_added.len() != before;
        if !added_here || self.updated_entitlement_ids.remove(&id) {
            self.entitlements_removed.push(id);
        }
    }

    /// Records a change (`Ok(detail)`) or a refusal (`Err(error)`) in the audit log.
    pub fn audit(
        &mut self,
        at: i64,
        actor: &Actor,
        action: Action,
        subject: &str,
        feature: Option<&str>,
        outcome: Result<&str, &ErrorBody>,
    ) {
        let (outcome, reason) = match outcome {
            Ok(detail) => (AuditOutcome::Ok, detail.to_string()),
            Err(err) => {
                // A denial of a seat (SPEC §10) counts in the lease history and the metrics.
                let denied = feature.filter(|f| {
                    is_denial(action, err.code) && tally_protocol::validate_feature(f).is_ok()
                });
                if let Some(feature) = denied {
                    self.history.deny(feature, &actor.username, at);
                    self.tallies.deny(feature, err.code);
                }
                (AuditOutcome::Refused(err.code), err.message.clone())
            }
        };
        // A name that is not a feature's is not stored as one (the subject, bounded like
        // every field, still shows what was asked).
        let feature = feature.filter(|f| tally_protocol::validate_feature(f).is_ok());
        self.audit_raw(AuditEvent {
            at,
            actor: actor.username.clone(),
            action: action.as_str().to_string(),
            subject: subject.to_string(),
            feature: feature.map(str::to_string),
            outcome: outcome.as_str().to_string(),
            reason,
        });
    }

    /// Audits `checked` when it is a refusal, and hands it back: every refusal of a request
    /// goes through here, so that none is answered without being recorded.
    ///
    /// `let x = batch.audit_refusal(now, actor, Action::Assign, &user, feature, check())?;`
    pub fn audit_refusal<T>(
        &mut self,
        at: i64,
        actor: &Actor,
        action: Action,
        subject: &str,
        feature: Option<&str>,
        checked: Result<T, ErrorBody>,
    ) -> Result<T, ErrorBody> {
        if let Err(err) = &checked {
            self.audit(at, actor, action, subject, feature, Err(err));
        }
        checked
    }

    /// Counts a granted checkout, queued checkout or borrow of `feature`.
    pub fn tally_grant(&mut self, feature: &str) {
        *self.tallies.grants.entry(feature.to_string()).or_default() += 1;
    }

    pub fn audit_raw(&mut self, event: AuditEvent) {
        self.audit.push(event);
    }
}

/// Whether a refusal of `action` with `code` is a denial of a seat (SPEC §10): a checkout,
/// queued checkout or borrow refused `no_seat`, `denied` or `queue_timeout`. The lease
/// history and the metrics count the same ones.
fn is_denial(action: Action, code: ErrorCode) -> bool {
    matches!(action, Action::Checkout | Action::Queue | Action::Borrow)
        && Tallies::DENIALS.contains(&code)
}

/// What a batch did that the metrics count (SPEC §10): checkouts granted and refused, by
/// feature. Filled where grants and refusals are audited, and counted by the engine only
/// after the batch committed, so that a failed commit counts nothing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tallies {
    /// Checkouts (direct or from the queue) and borrows granted, by feature.
    pub grants: BTreeMap<String, u64>,
    /// Checkouts, queued checkouts and borrows refused `no_seat`, `denied` or
    /// `queue_timeout`, by feature and code (as the protocol writes it: `no_seat`).
    pub denials: BTreeMap<(String, &'static str), u64>,
}

impl Tallies {
    /// The codes that count as denials: no seat, a policy rule, a wait that ran out.
    pub const DENIALS: [ErrorCode; 3] = [
        ErrorCode::NoSeat,
        ErrorCode::Denied,
        ErrorCode::QueueTimeout,
    ];

    /// Counts a denial (see [`is_denial`]) of `feature`.
    fn deny(&mut self, feature: &str, code: ErrorCode) {
        *self
            .denials
            .entry((feature.to_string(), code.as_str()))
            .or_default() += 1;
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty() && self.denials.is_empty()
    }
}

/// Connections the engine ends once a batch is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignOut {
    /// Every connection signed in with this token.
    Token(String),
    /// Every connection of this account.
    User(u64),
}

/// The durable state a store holds: what the pool is rebuilt from at start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub entitlements: Vec<Entitlement>,
    pub leases: Vec<Lease>,
    pub users: Vec<User>,
    /// Every user's tokens, by id.
    pub tokens: Vec<Token>,
    /// The next account id (ids are never reused).
    pub next_user_id: u64,
    pub assignments: Vec<Assignment>,
    pub next_entitlement_id: u64,
    pub next_assignment_id: u64,
    /// Prerequisites (R18): (feature, the feature it requires), in that order.
    pub requires: Vec<(String, String)>,
    /// Groups (SPEC §8), by name.
    pub groups: Vec<Group>,
    /// Policy rules (R16), by id.
    pub rules: Vec<Rule>,
    pub next_rule_id: u64,
    /// Marks of notifications that must not repeat (R20), by key: how far entitlements'
    /// expiry has been looked at, and when each feature last sent `pool_exhausted`.
    pub marks: std::collections::BTreeMap<String, i64>,
    /// Credit purchases (SPEC §11), by id, with what each has left.
    pub purchases: Vec<Purchase>,
    /// Users' access to meters, by user id then meter.
    pub grants: Vec<GrantRow>,
    /// Consumptions and their first answers (R21), by time, user and request id.
    pub consumptions: Vec<ConsumptionRow>,
    pub next_purchase_id: u64,
}

impl Snapshot {
    /// Applies a committed batch, as a store does; the property tests use this as their
    /// model of the store.
    pub fn apply(&mut self, batch: &Batch) {
        for entitlement in &batch.entitlements_added {
            match self
                .entitlements
                .iter_mut()
                .find(|e| e.id == entitlement.id)
            {
                Some(slot) => *slot = entitlement.clone(),
                None => self.entitlements.push(entitlement.clone()),
            }
        }
        self.entitlements
            .retain(|e| !batch.entitlements_removed.contains(&e.id));
        self.entitlements.sort_by_key(|e| e.id);
        for lease in &batch.leases_added {
            match self.leases.iter_mut().find(|l| l.id == lease.id) {
                Some(slot) => *slot = lease.clone(),
                None => self.leases.push(lease.clone()),
            }
        }
        let removed: HashSet<LeaseId> = batch.leases_removed.iter().copied().collect();
        self.leases.retain(|l| !removed.contains(&l.id));
        self.leases.sort_by_key(|l| l.id);
        if let Some(next) = batch.next_entitlement_id {
            self.next_entitlement_id = next;
        }
        self.users
            .retain(|u| !batch.users_removed.contains(&u.username));
        for user in &batch.users_upserted {
            match self.users.iter_mut().find(|u| u.username == user.username) {
                Some(slot) => *slot = user.clone(),
                None => self.users.push(user.clone()),
            }
        }
        self.users.sort_by(|a, b| a.username.cmp(&b.username));
        if let Some(next) = batch.next_user_id {
            self.next_user_id = next;
        }
        let live: HashSet<u64> = self.users.iter().map(|u| u.id).collect();
        self.tokens
            .retain(|t| live.contains(&t.user) && !batch.tokens_removed.contains(&t.id));
        self.tokens.extend(batch.tokens_added.iter().cloned());
        for (id, at) in &batch.tokens_used {
            if let Some(token) = self.tokens.iter_mut().find(|t| &t.id == id) {
                token.last_used = Some(*at);
            }
        }
        self.tokens.sort_by(|a, b| a.id.cmp(&b.id));
        for assignment in &batch.assignments_upserted {
            match self.assignments.iter_mut().find(|a| a.id == assignment.id) {
                Some(slot) => *slot = assignment.clone(),
                None => self.assignments.push(assignment.clone()),
            }
        }
        self.assignments
            .retain(|a| !batch.assignments_removed.contains(&a.id));
        self.assignments.sort_by_key(|a| a.id);
        if let Some(next) = batch.next_assignment_id {
            self.next_assignment_id = next;
        }
        self.requires
            .retain(|r| !batch.requires_removed.contains(r));
        for requirement in &batch.requires_added {
            if !self.requires.contains(requirement) {
                self.requires.push(requirement.clone());
            }
        }
        self.requires.sort();
        self.groups
            .retain(|g| !batch.groups_removed.contains(&g.name));
        for group in &batch.groups_upserted {
            match self.groups.iter_mut().find(|g| g.name == group.name) {
                Some(slot) => *slot = group.clone(),
                None => self.groups.push(group.clone()),
            }
        }
        self.groups.sort_by(|a, b| a.name.cmp(&b.name));
        self.rules.extend(batch.rules_added.iter().cloned());
        self.rules.retain(|r| !batch.rules_removed.contains(&r.id));
        self.rules.sort_by_key(|r| r.id);
        if let Some(next) = batch.next_rule_id {
            self.next_rule_id = next;
        }
        for (key, at) in &batch.marks {
            self.marks.insert(key.clone(), *at);
        }
        for purchase in &batch.purchases_upserted {
            match self.purchases.iter_mut().find(|p| p.id == purchase.id) {
                Some(slot) => *slot = purchase.clone(),
                None => self.purchases.push(purchase.clone()),
            }
        }
        self.purchases.sort_by_key(|p| p.id);
        for grant in &batch.grants_upserted {
            match self
                .grants
                .iter_mut()
                .find(|g| g.user == grant.user && g.meter == grant.meter)
            {
                Some(slot) => *slot = grant.clone(),
                None => self.grants.push(grant.clone()),
            }
        }
        self.grants
            .sort_by(|a, b| (a.user, &a.meter).cmp(&(b.user, &b.meter)));
        for row in &batch.consumptions {
            let known = self
                .consumptions
                .iter()
                .any(|c| c.user == row.user && c.request == row.request);
            if !known {
                self.consumptions.push(row.clone());
            }
        }
        self.consumptions.sort_by_key(|c| (c.at, c.user, c.request));
        if let Some(next) = batch.next_purchase_id {
            self.next_purchase_id = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use tally_protocol::{ErrorCode, Role};

    use super::*;

    fn ana() -> Actor {
        Actor {
            username: "ana@studio".into(),
            role: Role::Member,
        }
    }

    #[test]
    fn a_refusal_is_audited_with_its_code_and_handed_back() {
        let mut batch = Batch::default();
        let refused: Result<u32, ErrorBody> = Err(ErrorBody::new(ErrorCode::NoSeat, "no seat"));
        let out = batch.audit_refusal(7, &ana(), Action::Checkout, "vray", Some("vray"), refused);
        assert_eq!(out.unwrap_err().code, ErrorCode::NoSeat);
        assert_eq!(
            batch.audit,
            [AuditEvent {
                at: 7,
                actor: "ana@studio".into(),
                action: "checkout".into(),
                subject: "vray".into(),
                feature: Some("vray".into()),
                outcome: "no_seat".into(),
                reason: "no seat".into(),
            }]
        );
    }

    #[test]
    fn a_success_passes_through_unaudited() {
        let mut batch = Batch::default();
        let out = batch.audit_refusal(7, &ana(), Action::Assign, "ben@studio", None, Ok(3));
        assert_eq!(out.unwrap(), 3);
        assert!(batch.audit.is_empty(), "the caller audits what it did");
    }

    fn entitlement(id: u64, seats: u32) -> Entitlement {
        Entitlement {
            id,
            feature: "vray".into(),
            seats,
            starts_at: 0,
            expires_at: None,
            kind: tally_protocol::EntitlementKind::Standard,
            borrowable: false,
            max_borrow_secs: 60,
            reference: String::new(),
        }
    }

    /// An entitlement the store holds is rewritten in place, and one rewritten then removed
    /// in the same batch is still deleted from the store; one added then removed is never
    /// written.
    #[test]
    fn an_updated_entitlement_is_an_upsert_and_its_removal_still_deletes_it() {
        let mut store = Snapshot::default();
        let mut batch = Batch::default();
        batch.add_entitlement(entitlement(1, 3));
        store.apply(&batch);
        let mut batch = Batch::default();
        batch.update_entitlement(entitlement(1, 5));
        store.apply(&batch);
        assert_eq!(store.entitlements, [entitlement(1, 5)]);
        let mut batch = Batch::default();
        batch.update_entitlement(entitlement(1, 7));
        batch.remove_entitlement(1);
        assert!(batch.entitlements_added.is_empty());
        assert_eq!(batch.entitlements_removed, [1]);
        store.apply(&batch);
        assert!(store.entitlements.is_empty());
        let mut batch = Batch::default();
        batch.add_entitlement(entitlement(2, 1));
        batch.update_entitlement(entitlement(2, 2));
        assert_eq!(batch.entitlements_added, [entitlement(2, 2)]);
        batch.remove_entitlement(2);
        assert!(batch.entitlements_added.is_empty() && batch.entitlements_removed.is_empty());
    }

    #[test]
    fn notifications_store_the_text_of_their_kind() {
        let mut batch = Batch::default();
        batch.notify(
            1,
            NotificationKind::UserLimitExceeded,
            "ana@studio",
            None,
            "full",
        );
        assert_eq!(batch.notifications[0].kind, "user_limit_exceeded");
    }
}
