//! Groups and policy rules (SPEC §8, R16): the options file of FlexNet and RLM, kept as
//! data in the store so that every node of a cluster decides alike.
//!
//! A group is a named set of members (`user:EMAIL`, `host:GLOB`, `ip:CIDR`); a rule belongs
//! to one feature and names a group (all but `borrow-lowwater`). Checkout and borrow ask
//! [`Pool::policy_denial`] after authorisation: exclude, then include, then `max` (on every
//! seat held of the feature, assigned or floating), then for a borrow `borrow-exclude` and
//! `borrow-lowwater`; a refusal is `denied`, naming the rule. `reserve` is seat arithmetic
//! on the floating pool ([`Pool::reserves`]): seats kept for a group that nobody of it uses
//! are not available to others. `priority` orders the queue ([`Pool::queue_priority`]).
//!
//! What rules count is read from the ledger's per-holder totals (`Ledger::holders`), so a
//! checkout's cost grows with the rules of its feature and the distinct holders of it, not
//! with every lease held.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use tally_protocol::{
    validate_group, ErrorBody, ErrorCode, GroupAdd, GroupInfo, GroupMembers, GroupRef, LeaseInfo,
    LeaseKind, LeaseSource, Member, PolicyAdd, PolicyCheck, PolicyDecision, PolicyQuery, RuleAdded,
    RuleEffect, RuleInfo, RuleKind, RuleRef, RuleSpec, UserState, MAX_GROUP_MEMBERS,
};

use super::checks::{require_admin, unknown_name};
use super::ledger::HolderKey;
use super::types::{Group, Rule};
use super::{Action, Actor, Batch, Holder, Lease, Pool};

/// Who a rule is asked about: a user, on a host, from an address.
#[derive(Debug, Clone, Copy)]
pub(super) struct Who<'a> {
    pub(super) user: &'a str,
    pub(super) host: &'a str,
    pub(super) address: Option<IpAddr>,
}

impl<'a> Who<'a> {
    pub(super) fn of(actor: &'a Actor, holder: &'a Holder) -> Self {
        Self {
            user: &actor.username,
            host: &holder.host,
            address: canonical(&holder.peer.address),
        }
    }

    fn of_key(key: &'a HolderKey) -> Self {
        Self {
            user: &key.user,
            host: &key.host,
            address: key.address.map(|a| a.to_canonical()),
        }
    }

    fn of_lease(lease: &'a Lease) -> Self {
        Self {
            user: &lease.user,
            host: &lease.host,
            address: canonical(&lease.peer.address),
        }
    }

    /// "ana@studio on ws1 from 10.0.0.7", for messages.
    fn describe(&self) -> String {
        let mut text = self.user.to_string();
        if !self.host.is_empty() {
            text.push_str(&format!(" on {}", self.host));
        }
        if let Some(address) = self.address {
            text.push_str(&format!(" from {address}"));
        }
        text
    }
}

/// An address as rules compare it: an IPv4-mapped IPv6 address (as a dual-stack listener
/// reports IPv4 clients) is the IPv4 address it maps, so that `max --each` counts one
/// address once whichever form it came in.
fn canonical(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>().ok().map(|a| a.to_canonical())
}

/// The rules of every feature, with an index by feature, and the groups they name.
#[derive(Debug, Default, Clone)]
pub(super) struct Rules {
    pub(super) groups: std::collections::BTreeMap<String, Group>,
    pub(super) rules: std::collections::BTreeMap<u64, Rule>,
    /// The rules of each feature by kind (`RuleKind as usize`), in id order, each with its
    /// group's members: what a checkout reads, without a look-up per rule. Rebuilt on
    /// every change of a rule or a group (admins' changes, rare).
    by_feature: HashMap<String, [Vec<Compiled>; RuleKind::ALL.len()]>,
    /// The id the next rule gets; ids are never reused.
    pub(super) next_id: u64,
}

/// A rule with the group it names, as checkouts read it.
#[derive(Debug, Clone)]
pub(super) struct Compiled {
    rule: Rule,
    /// The group's members; `None` for a rule that names no group.
    group: Option<Arc<Group>>,
}

impl std::ops::Deref for Compiled {
    type Target = Rule;

    fn deref(&self) -> &Rule {
        &self.rule
    }
}

impl Rules {
    pub(super) fn new() -> Self {
        Self {
            next_id: 1,
            ..Self::default()
        }
    }

    pub(super) fn insert(&mut self, rule: Rule) {
        self.next_id = self.next_id.max(rule.id + 1);
        self.rules.insert(rule.id, rule);
        self.reindex();
    }

    fn remove(&mut self, id: u64) -> Option<Rule> {
        let rule = self.rules.remove(&id)?;
        self.reindex();
        Some(rule)
    }

    /// Adds or replaces a group.
    pub(super) fn set_group(&mut self, group: Group) {
        self.groups.insert(group.name.clone(), group);
        self.reindex();
    }

    fn drop_group(&mut self, name: &str) {
        self.groups.remove(name);
        self.reindex();
    }

    fn reindex(&mut self) {
        let groups: HashMap<&str, Arc<Group>> = self
            .groups
            .iter()
            .map(|(name, group)| (name.as_str(), Arc::new(group.clone())))
            .collect();
        let mut by_feature: HashMap<String, [Vec<Compiled>; RuleKind::ALL.len()]> = HashMap::new();
        for rule in self.rules.values() {
            let group = rule
                .spec
                .group
                .as_deref()
                .and_then(|name| groups.get(name).cloned());
            by_feature.entry(rule.spec.feature.clone()).or_default()[rule.spec.kind as usize].push(
                Compiled {
                    rule: rule.clone(),
                    group,
                },
            );
        }
        self.by_feature = by_feature;
    }

    /// The rules of a feature of one kind, in id order.
    fn of(&self, feature: &str, kind: RuleKind) -> &[Compiled] {
        self.by_feature
            .get(feature)
            .map_or(&[], |kinds| kinds[kind as usize].as_slice())
    }

    /// Whether a group takes `who` in; a group that does not exist takes nobody.
    fn contains(&self, group: &str, who: &Who) -> bool {
        self.groups
            .get(group)
            .is_some_and(|group| takes_in(group, who))
    }

    /// Whether the group of a rule takes `who` in.
    fn applies(&self, rule: &Compiled, who: &Who) -> bool {
        rule.group
            .as_deref()
            .is_some_and(|group| takes_in(group, who))
    }
}

/// Whether a member of `group` takes `who` in.
fn takes_in(group: &Group, who: &Who) -> bool {
    group
        .members
        .iter()
        .any(|m| m.matches(who.user, who.host, who.address))
}

/// "rule 4 (nuke: max 2 juniors --each)".
fn named(rule: &Rule) -> String {
    format!(
        "rule {} ({}: {})",
        rule.id,
        rule.spec.feature,
        rule.spec.text()
    )
}

/// A refusal by a rule: the rule's id and the `denied` error naming it.
pub(super) type Denial = (u64, ErrorBody);

fn denied(rule: &Rule, why: String) -> Denial {
    let err = ErrorBody::new(
        ErrorCode::Denied,
        format!("denied by {}: {why}", named(rule)),
    );
    (rule.id, err)
}

fn group_info(group: &Group) -> GroupInfo {
    GroupInfo {
        name: group.name.clone(),
        members: group.members.iter().map(Member::to_string).collect(),
    }
}

fn rule_info(rule: &Rule) -> RuleInfo {
    RuleInfo {
        id: Some(rule.id),
        rule: rule.spec.clone(),
    }
}

/// A reserve rule's seats kept for its group that nobody of the group uses now.
#[derive(Debug)]
pub(super) struct Unused<'a> {
    pub(super) rule: &'a Compiled,
    pub(super) seats: u32,
}

impl Pool {
    // ----- groups -----

    /// Creates a group with its first members (admins).
    pub fn add_group(
        &mut self,
        now: i64,
        actor: &Actor,
        request: &GroupAdd,
        batch: &mut Batch,
    ) -> Result<GroupInfo, ErrorBody> {
        self.advance(now, batch);
        let checked = (|| {
            require_admin(actor, "change groups")?;
            validate_group(&request.name).map_err(ErrorBody::invalid)?;
            if self.rules.groups.contains_key(&request.name) {
                return Err(ErrorBody::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "a group {} exists already; `tally group member add {} MEMBER...` adds to it",
                        request.name, request.name
                    ),
                ));
            }
            let mut members = Vec::new();
            add_members(&request.name, &mut members, &request.members)?;
            Ok(members)
        })();
        let name = request.name.as_str();
        let members = batch.audit_refusal(now, actor, Action::GroupAdd, name, None, checked)?;
        let group = Group {
            name: request.name.clone(),
            members,
            created_at: now,
        };
        let detail = format!("{} member(s)", group.members.len());
        batch.audit(now, actor, Action::GroupAdd, name, None, Ok(&detail));
        Ok(self.store_group(group, batch))
    }

    /// Adds members to a group (those it has already are left as they are) or removes them
    /// (each must be a member).
    pub fn change_group_members(
        &mut self,
        now: i64,
        actor: &Actor,
        request: &GroupMembers,
        batch: &mut Batch,
    ) -> Result<GroupInfo, ErrorBody> {
        self.advance(now, batch);
        let checked = (|| {
            require_admin(actor, "change groups")?;
            let group = self.group(&request.name)?;
            let mut members = group.members.clone();
            if request.add {
                add_members(&request.name, &mut members, &request.members)?;
            } else {
                if request.members.is_empty() {
                    return Err(ErrorBody::invalid("name the members to remove"));
                }
                for text in &request.members {
                    let member: Member = text.parse().map_err(ErrorBody::invalid)?;
                    let Some(at) = members.iter().position(|m| *m == member) else {
                        return Err(ErrorBody::not_found(format!(
                            "{member} is not a member of {}; `tally group list` shows its members",
                            request.name
                        )));
                    };
                    members.remove(at);
                }
            }
            Ok(members)
        })();
        let name = request.name.as_str();
        let members = batch.audit_refusal(now, actor, Action::GroupMembers, name, None, checked)?;
        let mut group = self.rules.groups[&request.name].clone();
        group.members = members;
        let detail = format!(
            "{} {}",
            if request.add { "added" } else { "removed" },
            request.members.join(" ")
        );
        batch.audit(now, actor, Action::GroupMembers, name, None, Ok(&detail));
        Ok(self.store_group(group, batch))
    }

    /// A group added or changed: kept, recorded in the batch, and answered.
    fn store_group(&mut self, group: Group, batch: &mut Batch) -> GroupInfo {
        batch.groups_upserted.push(group.clone());
        let info = group_info(&group);
        self.rules.set_group(group);
        info
    }

    /// Every group, by name (admins).
    pub fn list_groups(
        &mut self,
        now: i64,
        actor: &Actor,
        batch: &mut Batch,
    ) -> Result<Vec<GroupInfo>, ErrorBody> {
        self.advance(now, batch);
        let checked = require_admin(actor, "list groups");
        batch.audit_refusal(now, actor, Action::GroupList, "groups", None, checked)?;
        Ok(self.rules.groups.values().map(group_info).collect())
    }

    /// Removes a group no rule names (admins).
    pub fn remove_group(
        &mut self,
        now: i64,
        actor: &Actor,
        request: &GroupRef,
        batch: &mut Batch,
    ) -> Result<String, ErrorBody> {
        self.advance(now, batch);
        let checked = (|| {
            require_admin(actor, "change groups")?;
            self.group(&request.name)?;
            let using: Vec<String> = self
                .rules
                .rules
                .values()
                .filter(|r| r.spec.group.as_deref() == Some(request.name.as_str()))
                .map(named)
                .collect();
            if !using.is_empty() {
                return Err(ErrorBody::invalid(format!(
                    "{} is used by {}; remove those rules first (`tally policy remove ID`)",
                    request.name,
                    using.join(", ")
                )));
            }
            Ok(())
        })();
        let name = request.name.as_str();
        batch.audit_refusal(now, actor, Action::GroupRemove, name, None, checked)?;
        self.rules.drop_group(name);
        // A change to the group earlier in the same batch must not bring it back.
        batch.groups_upserted.retain(|g| g.name != name);
        batch.groups_removed.push(name.to_string());
        batch.audit(now, actor, Action::GroupRemove, name, None, Ok("removed"));
        Ok(name.to_string())
    }

    fn group(&self, name: &str) -> Result<&Group, ErrorBody> {
        self.rules.groups.get(name).ok_or_else(|| {
            unknown_name(
                "group",
                name,
                self.rules.groups.keys().map(String::as_str),
                "`tally group list` lists them",
            )
        })
    }

    // ----- rules -----

    /// Adds a rule to a feature (admins), or with `dry_run` only says what it would do. The
    /// effect (leases it puts over its limit, active users it refuses) is reported either
    /// way; leases already held are not ended: rules apply to new checkouts and borrows.
    pub fn add_rule(
        &mut self,
        now: i64,
        actor: &Actor,
        request: &PolicyAdd,
        batch: &mut Batch,
    ) -> Result<RuleAdded, ErrorBody> {
        self.advance(now, batch);
        let spec = &request.rule;
        let checked = self.check_rule(actor, spec);
        let feature = spec.feature.as_str();
        let subject = format!("{feature}: {}", spec.text());
        batch.audit_refusal(
            now,
            actor,
            Action::PolicyAdd,
            &subject,
            Some(feature),
            checked,
        )?;
        let rule = Rule {
            id: self.rules.next_id,
            spec: spec.clone(),
            created_at: now,
        };
        let effect = self.effect(&rule, now);
        if request.dry_run {
            return Ok(RuleAdded {
                rule: RuleInfo {
                    id: None,
                    rule: spec.clone(),
                },
                effect,
            });
        }
        let subject = named(&rule);
        let detail = format!(
            "{} lease(s) over it, {} active user(s) it refuses",
            effect.leases_over.len(),
            effect.users_denied.len()
        );
        batch.audit(
            now,
            actor,
            Action::PolicyAdd,
            &subject,
            Some(feature),
            Ok(&detail),
        );
        batch.rules_added.push(rule.clone());
        batch.next_rule_id = Some(rule.id + 1);
        let info = rule_info(&rule);
        self.rules.insert(rule);
        Ok(RuleAdded { rule: info, effect })
    }

    fn check_rule(&self, actor: &Actor, spec: &RuleSpec) -> Result<(), ErrorBody> {
        require_admin(actor, "change policy rules")?;
        self.known_feature(&spec.feature)?;
        spec.validate().map_err(ErrorBody::invalid)?;
        if let Some(group) = &spec.group {
            self.group(group)?;
        }
        if let Some(same) = self.rules.rules.values().find(|r| r.spec == *spec) {
            return Err(ErrorBody::new(
                ErrorCode::AlreadyExists,
                format!("{} says that already", named(same)),
            ));
        }
        Ok(())
    }

    /// The rules of a feature, or of every feature, by feature then id (admins).
    pub fn list_rules(
        &mut self,
        now: i64,
        actor: &Actor,
        query: &PolicyQuery,
        batch: &mut Batch,
    ) -> Result<Vec<RuleInfo>, ErrorBody> {
        self.advance(now, batch);
        let checked = (|| {
            require_admin(actor, "list policy rules")?;
            if let Some(feature) = &query.feature {
                self.known_feature(feature)?;
            }
            Ok(())
        })();
        let feature = query.feature.as_deref();
        batch.audit_refusal(
            now,
            actor,
            Action::PolicyList,
            feature.unwrap_or("rules"),
            feature,
            checked,
        )?;
        let mut rules: Vec<&Rule> = self
            .rules
            .rules
            .values()
            .filter(|r| feature.is_none_or(|f| r.spec.feature == f))
            .collect();
        rules.sort_by(|a, b| a.spec.feature.cmp(&b.spec.feature).then(a.id.cmp(&b.id)));
        Ok(rules.into_iter().map(rule_info).collect())
    }

    /// Removes a rule (admins).
    pub fn remove_rule(
        &mut self,
        now: i64,
        actor: &Actor,
        request: RuleRef,
        batch: &mut Batch,
    ) -> Result<u64, ErrorBody> {
        self.advance(now, batch);
        let checked = (|| {
            require_admin(actor, "change policy rules")?;
            match self.rules.rules.get(&request.id) {
                Some(rule) => Ok(rule.clone()),
                None => Err(ErrorBody::not_found(format!(
                    "no rule {} exists; `tally policy list` lists them",
                    request.id
                ))),
            }
        })();
        let subject = format!("rule {}", request.id);
        let rule =
            batch.audit_refusal(now, actor, Action::PolicyRemove, &subject, None, checked)?;
        self.rules.remove(rule.id);
        batch.rules_removed.push(rule.id);
        batch.audit(
            now,
            actor,
            Action::PolicyRemove,
            &named(&rule),
            Some(&rule.spec.feature),
            Ok("removed"),
        );
        Ok(rule.id)
    }

    /// How the rules of a feature decide a one-seat checkout for one holder now (admins);
    /// nothing is taken.
    pub fn check_policy(
        &mut self,
        now: i64,
        actor: &Actor,
        request: &PolicyCheck,
        batch: &mut Batch,
    ) -> Result<PolicyDecision, ErrorBody> {
        self.advance(now, batch);
        let checked = (|| {
            require_admin(actor, "check policy rules")?;
            self.known_feature(&request.feature)?;
            let user = request.user.to_lowercase();
            if !self.users.contains_key(&user) {
                return Err(unknown_name(
                    "user",
                    &user,
                    self.users.keys().map(String::as_str),
                    "`tally user list` lists them",
                ));
            }
            let address = match request.ip.as_deref() {
                None => None,
                Some(text) => Some(text.parse::<IpAddr>().map_err(|_| {
                    ErrorBody::invalid(format!("--ip {text:?} is not an IP address"))
                })?),
            };
            Ok((user, address))
        })();
        let feature = request.feature.as_str();
        let (user, address) = batch.audit_refusal(
            now,
            actor,
            Action::PolicyCheck,
            feature,
            Some(feature),
            checked,
        )?;
        let who = Who {
            user: &user,
            host: request.host.as_deref().unwrap_or(""),
            address: address.map(|a| a.to_canonical()),
        };
        Ok(self.decide(feature, &who, now))
    }

    /// The decision `policy check` explains.
    fn decide(&self, feature: &str, who: &Who, now: i64) -> PolicyDecision {
        if let Err((rule, err)) = self.policy_refusal(feature, who, 1, false) {
            return PolicyDecision {
                allowed: false,
                rule: Some(rule),
                reason: err.message,
            };
        }
        let mut rule = None;
        let mut reasons = Vec::new();
        let includes = self.rules.of(feature, RuleKind::Include);
        if let Some(admits) = includes.iter().find(|r| self.rules.applies(r, who)) {
            rule = Some(admits.id);
            reasons.push(format!(
                "allowed: {} is a member of {} ({})",
                who.describe(),
                admits.spec.group.as_deref().unwrap_or_default(),
                named(admits)
            ));
        } else {
            reasons.push(format!(
                "allowed: no rule of {feature} refuses {}",
                who.describe()
            ));
        }
        let kept: u32 = self
            .reserves(feature, self.floating_capacity(feature, now))
            .iter()
            .filter(|unused| !self.rules.applies(unused.rule, who))
            .map(|unused| unused.seats)
            .sum();
        if kept > 0 {
            reasons.push(format!(
                "{kept} floating seat(s) are reserved for groups {} is not in",
                who.user
            ));
        }
        let priority = self.queue_priority(feature, who);
        if let Some(priority) = self
            .rules
            .of(feature, RuleKind::Priority)
            .iter()
            .find(|r| r.spec.seats == priority && self.rules.applies(r, who))
        {
            reasons.push(format!(
                "{} queues with priority {} ({})",
                who.user,
                priority.spec.seats,
                named(priority)
            ));
        }
        if self
            .rules
            .of(feature, RuleKind::BorrowExclude)
            .iter()
            .any(|r| self.rules.applies(r, who))
        {
            reasons.push(format!("{} may not borrow {feature}", who.user));
        }
        PolicyDecision {
            allowed: true,
            rule,
            reason: reasons.join("; "),
        }
    }

    // ----- evaluation -----

    /// Whether the rules of a feature let `who` take `seats` more seats of it (include,
    /// exclude, `max`; for a borrow also `borrow-exclude`): `denied` naming the rule when
    /// not. `borrow-lowwater` and `reserve` count floating seats and are asked apart.
    pub(super) fn policy_denial(
        &self,
        feature: &str,
        who: &Who,
        seats: u32,
        borrow: bool,
    ) -> Result<(), ErrorBody> {
        self.policy_refusal(feature, who, seats, borrow)
            .map_err(|(_, err)| err)
    }

    /// [`policy_denial`](Self::policy_denial) with the id of the rule that refuses. Nothing
    /// is allocated unless it refuses: every checkout of a feature with rules comes here.
    fn policy_refusal(
        &self,
        feature: &str,
        who: &Who,
        seats: u32,
        borrow: bool,
    ) -> Result<(), Denial> {
        let Some(kinds) = self.rules.by_feature.get(feature) else {
            return Ok(());
        };
        let of = |kind: RuleKind| kinds[kind as usize].as_slice();
        if let Some(rule) = of(RuleKind::Exclude)
            .iter()
            .find(|r| self.rules.applies(r, who))
        {
            let group = rule.spec.group.as_deref().unwrap_or_default();
            return Err(denied(
                rule,
                format!(
                    "{} is a member of {group}, which may not use {feature}",
                    who.describe()
                ),
            ));
        }
        let includes = of(RuleKind::Include);
        if let Some(first) = includes.first() {
            if !includes.iter().any(|r| self.rules.applies(r, who)) {
                let groups: Vec<&str> = includes
                    .iter()
                    .filter_map(|r| r.spec.group.as_deref())
                    .collect();
                return Err(denied(
                    first,
                    format!(
                        "only members of {} may use {feature}, and {} is not one",
                        groups.join(", "),
                        who.describe()
                    ),
                ));
            }
        }
        for rule in of(RuleKind::Max) {
            let Some(group) = rule.group.as_deref().filter(|group| takes_in(group, who)) else {
                continue;
            };
            let limit = rule.spec.seats;
            if rule.spec.each {
                if let Some((member, held)) = self.member_over(feature, group, who, seats, limit) {
                    return Err(denied(
                        rule,
                        format!(
                            "{member} holds {held} seat(s) of {feature}, and each member of {} may hold {limit}; {seats} more asked for",
                            group.name
                        ),
                    ));
                }
            } else {
                let held = self.held_by_group(feature, group);
                if held.saturating_add(seats) > limit {
                    return Err(denied(
                        rule,
                        format!(
                            "members of {} hold {held} seat(s) of {feature} and may hold {limit} together; {seats} more asked for",
                            group.name
                        ),
                    ));
                }
            }
        }
        if borrow {
            if let Some(rule) = of(RuleKind::BorrowExclude)
                .iter()
                .find(|r| self.rules.applies(r, who))
            {
                let group = rule.spec.group.as_deref().unwrap_or_default();
                return Err(denied(
                    rule,
                    format!(
                        "members of {group} may not borrow {feature}; check it out online instead"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Seats of a feature held by the holders a group takes in.
    fn held_by_group(&self, feature: &str, group: &Group) -> u32 {
        self.ledger
            .holders(feature)
            .filter(|(key, _)| takes_in(group, &Who::of_key(key)))
            .fold(0u32, |sum, (_, held)| sum.saturating_add(held.all))
    }

    /// For `max --each`: the first member of `group` taking `who` in (as the user, the
    /// host or the address it stands for) that would hold more than `limit` seats with
    /// `seats` more, named, and what it holds.
    fn member_over(
        &self,
        feature: &str,
        group: &Group,
        who: &Who,
        seats: u32,
        limit: u32,
    ) -> Option<(String, u32)> {
        // Each kind of member counts once: a user is one holder however many members name
        // them.
        let mut counted = [false; 3];
        for member in &group.members {
            let kind = match member {
                Member::User(_) => 0,
                Member::Host(_) => 1,
                Member::Ip { .. } => 2,
            };
            if counted[kind] || !member.matches(who.user, who.host, who.address) {
                continue;
            }
            counted[kind] = true;
            let held = self
                .ledger
                .holders(feature)
                .filter(|(key, _)| match kind {
                    0 => key.user.eq_ignore_ascii_case(who.user),
                    1 => key.host.eq_ignore_ascii_case(who.host),
                    _ => key.address.map(|a| a.to_canonical()) == who.address,
                })
                .fold(0u32, |sum, (_, held)| sum.saturating_add(held.all));
            if held.saturating_add(seats) > limit {
                let label = match kind {
                    0 => who.user.to_string(),
                    1 => format!("host {}", who.host),
                    _ => format!(
                        "address {}",
                        who.address.map(|a| a.to_string()).unwrap_or_default()
                    ),
                };
                return Some((label, held));
            }
        }
        None
    }

    /// The seats each `reserve` rule of a feature keeps that nobody of its group uses now,
    /// given the feature's floating capacity. Reserves are honoured in rule-id order up to
    /// that capacity; the floating seats members use count toward the reserves of their
    /// groups as many as can (a maximum flow from members' seats to reserves), so that the
    /// figures do not depend on the order holders are counted in. Empty when the feature
    /// has no reserve.
    pub(super) fn reserves(&self, feature: &str, capacity: u32) -> Vec<Unused<'_>> {
        let rules = self.rules.of(feature, RuleKind::Reserve);
        if rules.is_empty() {
            return Vec::new();
        }
        let mut left = capacity;
        let mut unused: Vec<Unused> = rules
            .iter()
            .map(|rule| {
                let kept = rule.spec.seats.min(left);
                left -= kept;
                Unused { rule, seats: kept }
            })
            .collect();
        // Floating seats held, by the set of reserves whose groups take their holder in.
        let mut by_fit: std::collections::BTreeMap<Vec<usize>, u32> = Default::default();
        for (key, held) in self.ledger.holders(feature) {
            if held.floating == 0 {
                continue;
            }
            let who = Who::of_key(key);
            let fits: Vec<usize> = (0..unused.len())
                .filter(|&r| unused[r].seats > 0 && self.rules.applies(unused[r].rule, &who))
                .collect();
            if !fits.is_empty() {
                let seats = by_fit.entry(fits).or_default();
                *seats = seats.saturating_add(held.floating);
            }
        }
        let mut room: Vec<u32> = unused.iter().map(|u| u.seats).collect();
        count_toward_reserves(by_fit.into_iter().collect(), &mut room);
        for (unused, room) in unused.iter_mut().zip(room) {
            unused.seats = room;
        }
        unused
    }

    /// Floating seats of a feature (of floating capacity `capacity`) kept by reserves for
    /// groups `who` is not in.
    pub(super) fn reserved_for_others(&self, feature: &str, who: &Who, capacity: u32) -> u32 {
        self.reserves(feature, capacity)
            .iter()
            .filter(|unused| unused.seats > 0 && !self.rules.applies(unused.rule, who))
            .fold(0u32, |sum, unused| sum.saturating_add(unused.seats))
    }

    /// The reserves that keep seats from `who`, named, for a refusal.
    pub(super) fn reserves_keeping(&self, feature: &str, who: &Who, capacity: u32) -> String {
        self.reserves(feature, capacity)
            .iter()
            .filter(|unused| unused.seats > 0 && !self.rules.applies(unused.rule, who))
            .map(|unused| named(unused.rule))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Floating seats of a feature its reserves keep and nobody of their groups uses.
    pub(super) fn reserved(&self, feature: &str, now: i64) -> u32 {
        self.reserves(feature, self.floating_capacity(feature, now))
            .iter()
            .fold(0u32, |sum, unused| sum.saturating_add(unused.seats))
    }

    /// Whether `borrow-lowwater` lets `seats` more floating seats of a feature be borrowed.
    pub(super) fn check_lowwater(
        &self,
        feature: &str,
        seats: u32,
        now: i64,
    ) -> Result<(), ErrorBody> {
        let Some(rule) = self
            .rules
            .of(feature, RuleKind::BorrowLowwater)
            .iter()
            .max_by_key(|r| r.spec.seats)
        else {
            return Ok(());
        };
        let capacity = self.floating_capacity(feature, now);
        let borrowed = self.ledger.usage(feature).borrowed;
        let lendable = capacity.saturating_sub(rule.spec.seats);
        if borrowed.saturating_add(seats) > lendable {
            let (_, err) = denied(
                rule,
                format!(
                    "{} of the {capacity} floating seat(s) of {feature} are never lent; {borrowed} are borrowed, {seats} more asked for",
                    rule.spec.seats
                ),
            );
            return Err(err);
        }
        Ok(())
    }

    /// Whether a refusal of `who`'s checkout of `seats` seats of `feature` is one a wait in
    /// the queue may outlast (R17: a freed seat goes to the first entry that policy and seat
    /// count allow): no seat free, or a `max` rule whose group holds its limit now. Include
    /// and exclude refuse for good.
    pub(super) fn may_wait(&self, feature: &str, who: &Who, seats: u32, err: &ErrorBody) -> bool {
        match err.code {
            ErrorCode::NoSeat => true,
            ErrorCode::Denied => match self.policy_refusal(feature, who, seats, false) {
                Err((id, _)) => self
                    .rules
                    .rules
                    .get(&id)
                    .is_some_and(|rule| rule.spec.kind == RuleKind::Max),
                Ok(()) => false,
            },
            _ => false,
        }
    }

    /// Where `who` queues for a feature: the lowest number of the `priority` rules whose
    /// group takes them in, or `u32::MAX` when none does (lower goes first).
    pub(super) fn queue_priority(&self, feature: &str, who: &Who) -> u32 {
        self.rules
            .of(feature, RuleKind::Priority)
            .iter()
            .filter(|r| self.rules.applies(r, who))
            .map(|r| r.spec.seats)
            .min()
            .unwrap_or(u32::MAX)
    }

    // ----- dry run -----

    /// What `rule` would do now: the current leases it puts over its limit and the active
    /// users it refuses whatever host or address they use.
    fn effect(&self, rule: &Rule, now: i64) -> RuleEffect {
        let feature = rule.spec.feature.as_str();
        let group = rule.spec.group.as_deref().unwrap_or_default();
        let in_group = |who: &Who| self.rules.contains(group, who);
        let mut leases: Vec<&Lease> = self
            .ledger
            .leases
            .values()
            .filter(|l| l.feature == feature)
            .collect();
        leases.sort_by_key(|l| (l.granted_at, l.id));
        let mut over: Vec<&Lease> = Vec::new();
        let mut denied_users: BTreeSet<String> = BTreeSet::new();
        let active_users = || {
            self.users
                .values()
                .filter(|u| u.state == UserState::Active)
                .map(|u| u.username.as_str())
        };
        fn by_name(user: &str) -> Who<'_> {
            Who {
                user,
                host: "",
                address: None,
            }
        }
        match rule.spec.kind {
            RuleKind::Include => {
                let mut groups: Vec<&str> = self
                    .rules
                    .of(feature, RuleKind::Include)
                    .iter()
                    .filter_map(|r| r.spec.group.as_deref())
                    .collect();
                groups.push(group);
                let admitted = |who: &Who| groups.iter().any(|g| self.rules.contains(g, who));
                over.extend(leases.iter().filter(|l| !admitted(&Who::of_lease(l))));
                let by_place = groups.iter().any(|g| {
                    self.rules
                        .groups
                        .get(*g)
                        .is_some_and(|g| g.members.iter().any(|m| !matches!(m, Member::User(_))))
                });
                if !by_place {
                    denied_users.extend(
                        active_users()
                            .filter(|u| !admitted(&by_name(u)))
                            .map(str::to_string),
                    );
                }
            }
            RuleKind::Exclude | RuleKind::BorrowExclude => {
                let borrow = rule.spec.kind == RuleKind::BorrowExclude;
                over.extend(leases.iter().filter(|l| {
                    (!borrow || l.kind == LeaseKind::Borrowed) && in_group(&Who::of_lease(l))
                }));
                denied_users.extend(
                    active_users()
                        .filter(|u| in_group(&by_name(u)))
                        .map(str::to_string),
                );
            }
            RuleKind::Max => {
                let limit = rule.spec.seats;
                let mut held: HashMap<String, u32> = HashMap::new();
                for lease in leases.iter().filter(|l| in_group(&Who::of_lease(l))) {
                    let who = Who::of_lease(lease);
                    let keys: Vec<String> = if rule.spec.each {
                        self.member_keys(group, &who)
                    } else {
                        vec![String::new()]
                    };
                    let mut is_over = false;
                    for key in keys {
                        let count = held.entry(key).or_default();
                        *count = count.saturating_add(lease.seats);
                        is_over |= *count > limit;
                    }
                    if is_over {
                        over.push(lease);
                    }
                }
                let full = |who: &Who| {
                    if rule.spec.each {
                        self.member_keys(group, who)
                            .iter()
                            .any(|key| held.get(key).copied().unwrap_or(0) >= limit)
                    } else {
                        held.get("").copied().unwrap_or(0) >= limit
                    }
                };
                denied_users.extend(
                    active_users()
                        .filter(|u| {
                            let who = by_name(u);
                            in_group(&who) && full(&who)
                        })
                        .map(str::to_string),
                );
                for lease in &over {
                    denied_users.insert(lease.user.clone());
                }
            }
            RuleKind::Reserve => {
                let capacity = self.floating_capacity(feature, now);
                let kept_before: u32 = self
                    .rules
                    .of(feature, RuleKind::Reserve)
                    .iter()
                    .map(|r| r.spec.seats)
                    .fold(0u32, u32::saturating_add);
                let kept = rule.spec.seats.min(capacity.saturating_sub(kept_before));
                let floating = |l: &&&Lease| l.source == LeaseSource::Floating;
                let members: u32 = leases
                    .iter()
                    .filter(floating)
                    .filter(|l| in_group(&Who::of_lease(l)))
                    .map(|l| l.seats)
                    .sum();
                let used = self.ledger.usage(feature).total();
                let unused = kept.saturating_sub(members);
                let excess = (used + self.reserved(feature, now) + unused).saturating_sub(capacity);
                over.extend(newest_covering(
                    leases
                        .iter()
                        .filter(floating)
                        .filter(|l| !in_group(&Who::of_lease(l)))
                        .copied(),
                    excess,
                ));
            }
            RuleKind::BorrowLowwater => {
                let capacity = self.floating_capacity(feature, now);
                let borrowed = self.ledger.usage(feature).borrowed;
                let excess = borrowed.saturating_sub(capacity.saturating_sub(rule.spec.seats));
                over.extend(newest_covering(
                    leases
                        .iter()
                        .filter(|l| {
                            l.kind == LeaseKind::Borrowed && l.source == LeaseSource::Floating
                        })
                        .copied(),
                    excess,
                ));
            }
            RuleKind::Priority => {}
        }
        over.sort_by_key(|l| (l.granted_at, l.id));
        over.dedup_by_key(|l| l.id);
        RuleEffect {
            leases_over: over
                .iter()
                .map(|l| self.ledger.info(l))
                .collect::<Vec<LeaseInfo>>(),
            users_denied: denied_users.into_iter().collect(),
        }
    }

    /// For `max --each`: the holders `who` stands for as a member of `group` ("user:...",
    /// "host:...", "ip:..."), as keys to count seats under.
    fn member_keys(&self, group: &str, who: &Who) -> Vec<String> {
        let Some(group) = self.rules.groups.get(group) else {
            return Vec::new();
        };
        let mut keys: Vec<String> = group
            .members
            .iter()
            .filter(|m| m.matches(who.user, who.host, who.address))
            .map(|m| match m {
                Member::User(_) => format!("user:{}", who.user.to_lowercase()),
                Member::Host(_) => format!("host:{}", who.host.to_lowercase()),
                Member::Ip { .. } => format!(
                    "ip:{}",
                    who.address.map(|a| a.to_string()).unwrap_or_default()
                ),
            })
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

/// Counts seats toward reserves as many as can be: `sets` are seats held by members of the
/// reserves listed (indexes into `room`), `room` what each reserve keeps; on return `room`
/// is what each keeps that no seat counts toward. Augmenting paths, shortest first
/// (Edmonds-Karp), from the sets with seats not counted yet to a reserve with room, through
/// seats already counted that may count toward another reserve instead.
fn count_toward_reserves(sets: Vec<(Vec<usize>, u32)>, room: &mut [u32]) {
    let (s_len, r_len) = (sets.len(), room.len());
    let mut supply: Vec<u32> = sets.iter().map(|(_, seats)| *seats).collect();
    // flow[s][r]: seats of set s counted toward reserve r.
    let mut flow = vec![vec![0u32; r_len]; s_len];
    loop {
        // Nodes: sets 0..s_len, reserves s_len..; how each was reached.
        let mut from: Vec<Option<usize>> = vec![None; s_len + r_len];
        let mut queue = std::collections::VecDeque::new();
        for s in 0..s_len {
            if supply[s] > 0 {
                from[s] = Some(s);
                queue.push_back(s);
            }
        }
        let mut end = None;
        while let Some(node) = queue.pop_front() {
            if node < s_len {
                for &r in &sets[node].0 {
                    let to = s_len + r;
                    if from[to].is_none() {
                        from[to] = Some(node);
                        if room[r] > 0 {
                            end = Some(r);
                            break;
                        }
                        queue.push_back(to);
                    }
                }
                if end.is_some() {
                    break;
                }
            } else {
                let r = node - s_len;
                for s in 0..s_len {
                    if flow[s][r] > 0 && from[s].is_none() {
                        from[s] = Some(node);
                        queue.push_back(s);
                    }
                }
            }
        }
        let Some(r_end) = end else {
            return;
        };
        // The seats the path can carry, then carry them.
        let mut amount = room[r_end];
        let mut node = s_len + r_end;
        loop {
            let prev = from[node].expect("reached");
            if prev == node {
                amount = amount.min(supply[node]);
                break;
            }
            if node < s_len {
                amount = amount.min(flow[node][prev - s_len]);
            }
            node = prev;
        }
        room[r_end] -= amount;
        let mut node = s_len + r_end;
        loop {
            let prev = from[node].expect("reached");
            if prev == node {
                supply[node] -= amount;
                break;
            }
            if node < s_len {
                // Set `node` stops counting toward reserve `prev`.
                flow[node][prev - s_len] -= amount;
            } else {
                // Set `prev` counts toward reserve `node`.
                flow[prev][node - s_len] += amount;
            }
            node = prev;
        }
    }
}

/// The newest of `leases` (given oldest first) until they hold `excess` seats.
fn newest_covering<'a>(leases: impl Iterator<Item = &'a Lease>, mut excess: u32) -> Vec<&'a Lease> {
    let mut all: Vec<&Lease> = leases.collect();
    all.reverse();
    let mut chosen = Vec::new();
    for lease in all {
        if excess == 0 {
            break;
        }
        excess = excess.saturating_sub(lease.seats);
        chosen.push(lease);
    }
    chosen
}

/// Parses members and adds those the group does not have yet, refusing the first that is
/// not `user:EMAIL`, `host:GLOB` or `ip:CIDR`.
fn add_members(group: &str, members: &mut Vec<Member>, texts: &[String]) -> Result<(), ErrorBody> {
    for text in texts {
        let member: Member = text.parse().map_err(ErrorBody::invalid)?;
        if !members.contains(&member) {
            members.push(member);
        }
    }
    if members.len() > MAX_GROUP_MEMBERS {
        return Err(ErrorBody::invalid(format!(
            "{group} would have {} members; a group has at most {MAX_GROUP_MEMBERS} (use host: patterns or ip: networks for many machines)",
            members.len()
        )));
    }
    Ok(())
}
