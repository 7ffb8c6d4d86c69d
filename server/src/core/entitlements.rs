//! Entitlements, the seats a feature is licensed for (SPEC R10): adding and removing them,
//! listing them, and the status figures of each feature they make up.

use std::collections::BTreeSet;

use tally_protocol::{
    validate_feature, EndReason, Entitlement, ErrorBody, FeatureStatus, NewEntitlement,
};

use super::checks::{check_request, require_admin};
use super::{rfc3339, Action, Actor, Batch, Pool, DEFAULT_MAX_BORROW_SECS};

/// The longest reference (an order number, a contract) an entitlement may carry.
const MAX_REFERENCE: usize = 256;

impl Pool {
    /// Adds an entitlement (R10 dates). Admins only.
    pub fn add_entitlement(
        &mut self,
        now: i64,
        actor: &Actor,
        new: &NewEntitlement,
        batch: &mut Batch,
    ) -> Result<Entitlement, ErrorBody> {
        self.advance(now, batch);
        let checked = self.check_new_entitlement(now, actor, new);
        let entitlement = batch.audit_refusal(
            now,
            actor,
            Action::EntitlementAdd,
            &new.feature,
            Some(&new.feature),
            checked,
        )?;
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
            Action::EntitlementAdd,
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
        check_request(new)?;
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
        if new.reference.len() > MAX_REFERENCE {
            return Err(ErrorBody::invalid(format!(
                "reference is longer than {MAX_REFERENCE} characters"
            )));
        }
        if new.reference.chars().any(char::is_control) {
            return Err(ErrorBody::invalid(
                "reference holds control characters (tabs, line breaks, NUL and the like); give it as plain text",
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
        let feature = batch.audit_refusal(
            now,
            actor,
            Action::EntitlementRemove,
            &subject,
            feature.as_deref(),
            checked,
        )?;
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
            Action::EntitlementRemove,
            &subject,
            Some(&feature),
            Ok(""),
        );
        self.enforce_capacity(&feature, now, EndReason::Revoked, batch);
        self.next_boundary = self.compute_next_boundary(now);
        Ok(id)
    }

    /// Entitlements, optionally of one feature, by id.
    pub fn list_entitlements(&self, feature: Option<&str>) -> Vec<Entitlement> {
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
        features.extend(self.ledger.leases.values().map(|l| l.feature.as_str()));
        if let Some(wanted) = feature {
            validate_feature(wanted).map_err(ErrorBody::invalid)?;
            if !features.contains(wanted) {
                return Err(unknown_feature(wanted));
            }
            features.retain(|f| *f == wanted);
        }
        Ok(features
            .into_iter()
            .map(|feature| {
                let total = self.capacity(feature, now);
                let assigned = self.assigned(feature, now);
                let floating = total.saturating_sub(assigned);
                let mut usage = self.ledger.usage(feature);
                let available = floating.saturating_sub(usage.total());
                for assignment in self.assignments.values().filter(|a| a.feature == feature) {
                    let used = self.ledger.assignment_usage(assignment.id);
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
}

impl Pool {
    /// Every entitlement of `feature`, active or not; `not_found` when it has none.
    pub(super) fn entitlements_of(&self, feature: &str) -> Result<Vec<&Entitlement>, ErrorBody> {
        let known: Vec<&Entitlement> = self
            .entitlements
            .values()
            .filter(|e| e.feature == feature)
            .collect();
        if known.is_empty() {
            return Err(unknown_feature(feature));
        }
        Ok(known)
    }
}

/// A feature no entitlement names.
fn unknown_feature(feature: &str) -> ErrorBody {
    ErrorBody::not_found(format!(
        "no entitlement for feature {feature}; `tally entitlement list` shows the licensed features"
    ))
}
