//! What one group commit writes, and what a store loads back at start.

use std::collections::HashSet;

use tally_protocol::{Entitlement, ErrorBody, LeaseId};

use super::{Actor, Lease};

/// One line of the audit log (R11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub at: i64,
    /// The username, or `system` for the sweep.
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub feature: Option<String>,
    /// `ok`, or the error code of a refusal.
    pub outcome: String,
    pub reason: String,
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
    /// The entitlement id counter, so that ids are never reused after a restart.
    pub next_entitlement_id: Option<u64>,
    /// Leases first written by this batch (a removal cancels them out).
    new_lease_ids: HashSet<LeaseId>,
    /// Leases already in the store that this batch rewrites (`leases_added` is an upsert).
    updated_lease_ids: HashSet<LeaseId>,
}

impl Batch {
    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.entitlements_added.is_empty()
            && self.entitlements_removed.is_empty()
            && self.leases_added.is_empty()
            && self.leases_removed.is_empty()
            && self.audit.is_empty()
            && self.next_entitlement_id.is_none()
    }

    /// How many rows the batch writes.
    pub fn rows(&self) -> usize {
        self.entitlements_added.len()
            + self.entitlements_removed.len()
            + self.leases_added.len()
            + self.leases_removed.len()
            + self.audit.len()
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

    pub fn add_entitlement(&mut self, entitlement: Entitlement) {
        self.entitlements_added.push(entitlement);
    }

    pub fn remove_entitlement(&mut self, id: u64) {
        let before = self.entitlements_added.len();
        self.entitlements_added.retain(|e| e.id != id);
        if self.entitlements_added.len() == before {
            self.entitlements_removed.push(id);
        }
    }

    /// Records a change (`Ok(detail)`) or a refusal (`Err(error)`) in the audit log.
    pub fn audit(
        &mut self,
        at: i64,
        actor: &Actor,
        action: &str,
        subject: &str,
        feature: Option<&str>,
        outcome: Result<&str, &ErrorBody>,
    ) {
        let (outcome, reason) = match outcome {
            Ok(detail) => ("ok".to_string(), detail.to_string()),
            Err(err) => (err.code.as_str().to_string(), err.message.clone()),
        };
        self.audit_raw(AuditEvent {
            at,
            actor: actor.username.clone(),
            action: action.to_string(),
            subject: subject.to_string(),
            feature: feature.map(str::to_string),
            outcome,
            reason,
        });
    }

    pub fn audit_raw(&mut self, event: AuditEvent) {
        self.audit.push(event);
    }
}

/// The durable state a store holds: what the pool is rebuilt from at start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub entitlements: Vec<Entitlement>,
    pub leases: Vec<Lease>,
    pub next_entitlement_id: u64,
}

impl Snapshot {
    /// Applies a committed batch, as a store does; the property tests use this as their
    /// model of the store.
    pub fn apply(&mut self, batch: &Batch) {
        self.entitlements
            .extend(batch.entitlements_added.iter().cloned());
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
    }
}
