//! Prerequisites (SPEC R18): `feature require F P` makes every checkout of F also take one
//! seat of P for the same client instance, in the same step, unless that instance already
//! holds P. The seat of P is a lease of its own, linked to the lease of F
//! (`Lease::taken_with`), so that it ends with it; the link is stored with the lease and
//! survives a restart.
//!
//! This module holds the set of requirements (changed by admins, listed by anyone), the
//! cycle check, and the checks that checkout, assign and revoke ask of it.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};
use tally_protocol::{
    ErrorBody, ErrorCode, FeatureRequirement, FeatureRequires, LeaseId, RequestId,
};

use super::checks::require_admin;
use super::{Action, Actor, Batch, Pool};

impl Pool {
    /// Adds "a checkout of `feature` also takes a seat of `requires`" (admins), refusing a
    /// requirement that would close a cycle; answers every requirement after it.
    pub fn require(
        &mut self,
        now: i64,
        actor: &Actor,
        request: &FeatureRequirement,
        batch: &mut Batch,
    ) -> Result<Vec<FeatureRequires>, ErrorBody> {
        self.advance(now, batch);
        let checked = self.check_require(actor, request);
        self.change_requirement(now, actor, request, Action::FeatureRequire, checked, batch)
    }

    /// Drops a requirement (admins); one that does not exist is `not_found`.
    pub fn unrequire(
        &mut self,
        now: i64,
        actor: &Actor,
        request: &FeatureRequirement,
        batch: &mut Batch,
    ) -> Result<Vec<FeatureRequires>, ErrorBody> {
        self.advance(now, batch);
        let checked = self.check_unrequire(actor, request);
        self.change_requirement(
            now,
            actor,
            request,
            Action::FeatureUnrequire,
            checked,
            batch,
        )
    }

    /// The one path of both changes (after `advance` and their check): the refusal audited, or the change applied, recorded
    /// in the batch and audited; answers every requirement after it.
    fn change_requirement(
        &mut self,
        now: i64,
        actor: &Actor,
        request: &FeatureRequirement,
        action: Action,
        checked: Result<(), ErrorBody>,
        batch: &mut Batch,
    ) -> Result<Vec<FeatureRequires>, ErrorBody> {
        let feature = request.feature.as_str();
        batch.audit_refusal(now, actor, action, feature, Some(feature), checked)?;
        let pair = (request.feature.clone(), request.requires.clone());
        let detail = if action == Action::FeatureRequire {
            let added = self
                .requires
                .entry(pair.0.clone())
                .or_default()
                .insert(pair.1.clone());
            if added {
                batch.requires_added.push(pair);
            }
            format!("requires {}", request.requires)
        } else {
            if let Some(set) = self.requires.get_mut(feature) {
                set.remove(&request.requires);
                if set.is_empty() {
                    self.requires.remove(feature);
                }
            }
            batch.requires_removed.push(pair);
            format!("no longer requires {}", request.requires)
        };
        batch.audit(now, actor, action, feature, Some(feature), Ok(&detail));
        Ok(self.requirements())
    }

    /// Every feature with prerequisites (anyone signed in may ask).
    pub fn prerequisites(&mut self, now: i64, batch: &mut Batch) -> Vec<FeatureRequires> {
        self.advance(now, batch);
        self.requirements()
    }

    fn requirements(&self) -> Vec<FeatureRequires> {
        self.requires
            .iter()
            .map(|(feature, requires)| FeatureRequires {
                feature: feature.clone(),
                requires: requires.iter().cloned().collect(),
            })
            .collect()
    }

    fn check_require(&self, actor: &Actor, request: &FeatureRequirement) -> Result<(), ErrorBody> {
        require_admin(actor, "change prerequisites")?;
        let (feature, requires) = (request.feature.as_str(), request.requires.as_str());
        self.known_feature(feature)?;
        self.known_feature(requires)?;
        if feature == requires {
            return Err(ErrorBody::invalid(format!(
                "{feature} cannot require itself"
            )));
        }
        if let Some(path) = self.path(requires, feature) {
            return Err(ErrorBody::invalid(format!(
                "{feature} cannot require {requires}: that would make a cycle ({feature} -> {})",
                path.join(" -> ")
            )));
        }
        // Assignments of the feature made before need the prerequisite assigned too, as
        // new ones do.
        let lacking: BTreeSet<&str> = self
            .assignments
            .values()
            .filter(|a| a.feature == feature)
            .filter(|a| {
                !self
                    .assignments
                    .values()
                    .any(|p| p.user == a.user && p.feature == requires)
            })
            .map(|a| a.user.as_str())
            .collect();
        if !lacking.is_empty() {
            let users: Vec<&str> = lacking.into_iter().collect();
            return Err(ErrorBody::invalid(format!(
                "{feature} is assigned to {} without {requires}; assign them {requires} first, or revoke {feature}",
                users.join(", ")
            )));
        }
        Ok(())
    }

    fn check_unrequire(
        &self,
        actor: &Actor,
        request: &FeatureRequirement,
    ) -> Result<(), ErrorBody> {
        require_admin(actor, "change prerequisites")?;
        let (feature, requires) = (request.feature.as_str(), request.requires.as_str());
        if !self
            .requires
            .get(feature)
            .is_some_and(|set| set.contains(requires))
        {
            return Err(ErrorBody::not_found(format!(
                "{feature} does not require {requires}; `tally feature list` shows the prerequisites"
            )));
        }
        Ok(())
    }

    /// The chain of requirements leading from `from` to `to` (both included), if any: a
    /// depth-first search.
    fn path(&self, from: &str, to: &str) -> Option<Vec<String>> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![vec![from.to_string()]];
        while let Some(path) = stack.pop() {
            let last = path.last().expect("a path is never empty");
            if last == to {
                return Some(path);
            }
            if !seen.insert(last.clone()) {
                continue;
            }
            for next in self.requires.get(last).into_iter().flatten() {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
        None
    }

    /// Every feature a checkout of `feature` takes a seat of besides it: its prerequisites,
    /// theirs, and so on, each once, by name.
    pub(super) fn prerequisites_of(&self, feature: &str) -> Vec<String> {
        let mut found = BTreeSet::new();
        let mut stack: Vec<&str> = vec![feature];
        while let Some(name) = stack.pop() {
            for next in self.requires.get(name).into_iter().flatten() {
                if next != feature && found.insert(next.clone()) {
                    stack.push(next);
                }
            }
        }
        found.into_iter().collect()
    }

    /// Assigning `feature` to `user` needs them to hold an assignment of each of its
    /// prerequisites.
    pub(super) fn check_assign_prerequisites(
        &self,
        user: &str,
        feature: &str,
    ) -> Result<(), ErrorBody> {
        for requires in self.requires.get(feature).into_iter().flatten() {
            let holds = self
                .assignments
                .values()
                .any(|a| a.user == user && &a.feature == requires);
            if !holds {
                return Err(ErrorBody::invalid(format!(
                    "{feature} requires {requires}, and {user} has no seat of {requires} assigned; assign {requires} first"
                )));
            }
        }
        Ok(())
    }

    /// Revoking every seat of `feature` from `user` is refused while an assignment of
    /// theirs needs it.
    pub(super) fn check_revoke_prerequisites(
        &self,
        user: &str,
        feature: &str,
    ) -> Result<(), ErrorBody> {
        let needing: BTreeSet<&str> = self
            .assignments
            .values()
            .filter(|a| a.user == user)
            .filter(|a| {
                self.requires
                    .get(&a.feature)
                    .is_some_and(|set| set.contains(feature))
            })
            .map(|a| a.feature.as_str())
            .collect();
        if needing.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = needing.into_iter().collect();
        Err(ErrorBody::new(
            ErrorCode::HasAssignments,
            format!(
                "{user}'s assignment of {} requires {feature}; revoke that first",
                names.join(", ")
            ),
        ))
    }
}

/// The lease id and request id of the seat of `requires` a checkout taking lease `taken_with`
/// also takes: derived from that lease's random id, so as unguessable as it.
pub(super) fn prerequisite_ids(taken_with: LeaseId, requires: &str) -> (LeaseId, RequestId) {
    let digest = Sha256::new()
        .chain_update(b"tally prerequisite lease\0")
        .chain_update(taken_with.0)
        .chain_update(requires.as_bytes())
        .finalize();
    let mut lease = [0; 16];
    let mut request = [0; 16];
    lease.copy_from_slice(&digest[..16]);
    request.copy_from_slice(&digest[16..]);
    (LeaseId(lease), RequestId(request))
}
