//! Metered credits (SPEC §11, R21), free of I/O: the purchases of each meter's pool, each
//! user's access (none, a quota, or unlimited), and consumptions applied exactly once per
//! request id.
//!
//! A consumption is refused whole with `no_credit` when the user has no access to the meter,
//! or when their remaining quota or the pool's balance is smaller than the amount; the
//! refusal names which. A quota is a cap, not a reservation: it reserves nothing in the
//! pool. Purchases are drawn from oldest-expiring first (those without an end last, then by
//! id), and what an expired purchase has left leaves the balance. The first answer to a
//! request id, a grant or a refusal, is the answer to every retry of it.

use std::collections::{BTreeMap, HashMap, VecDeque};

use tally_protocol::{
    validate_feature, Consume, CreditsAdd, ErrorBody, ErrorCode, MeterInfo, MeterQuery,
    PurchaseInfo, QuotaInfo, QuotaRef, QuotaSet,
};

use super::checks::{unknown_name, username};
use super::entitlements::check_reference;
use super::{require_admin, rfc3339, Action, Actor, Batch, Pool};

/// How long the answer to a request id is kept for its retries: a client retries within
/// seconds or minutes; after this, the same id is a new request.
pub const ANSWER_KEEP_MS: i64 = 30 * 24 * 3_600_000;

/// The first answer to a consumption, as its retries get it and the store keeps it.
pub type Answer = Result<tally_protocol::Consumed, ErrorBody>;

/// Credits bought into a meter's pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purchase {
    pub id: u64,
    pub meter: String,
    /// What was bought.
    pub amount: u64,
    /// What is left of it.
    pub left: u64,
    /// When what is left stops counting; `None`: never.
    pub expires_at: Option<i64>,
    /// Free text, e.g. the order number.
    pub reference: String,
}

impl Purchase {
    fn live(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|end| end > now)
    }
}

/// What a user may consume of a meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Up to this much in all.
    Quota(u64),
    Unlimited,
}

/// A user's access to a meter, and what they have consumed of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// `None`: no access (taken away; what was used stays counted).
    pub access: Option<Access>,
    pub used: u64,
}

impl Grant {
    /// What is left of the quota; `None`: unlimited.
    pub fn remaining(&self) -> Option<u64> {
        match self.access {
            Some(Access::Quota(quota)) => Some(quota.saturating_sub(self.used)),
            Some(Access::Unlimited) => None,
            None => Some(0),
        }
    }
}

/// A consumption granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub consumed: u64,
    /// The pool's balance after it.
    pub balance: u64,
    /// What is left of the user's quota after it; `None`: unlimited.
    pub remaining: Option<u64>,
    /// What it took from which purchase, oldest-expiring first: what the store writes.
    pub draws: Vec<(u64, u64)>,
}

impl Consumed {
    /// The answer as the client gets it.
    pub fn answer(&self) -> tally_protocol::Consumed {
        tally_protocol::Consumed {
            consumed: self.consumed,
            balance: self.balance,
            remaining: self.remaining,
        }
    }
}

/// A meter's figures, as `credits status` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeterFigures {
    pub purchased: u64,
    pub consumed: u64,
    /// What expired purchases had left when they ended.
    pub expired: u64,
    pub balance: u64,
}

/// A request id as the client chose it, for one user.
type RequestKey = (u64, [u8; 16]);

/// A user's access to a meter, as the store keeps it (one row per user and meter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRow {
    pub user: u64,
    pub meter: String,
    pub access: Option<Access>,
    pub used: u64,
}

/// A consumption asked for and its first answer, as the store keeps it (one row per user
/// and request id): what retries are answered from, and what reports count (the granted
/// ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumptionRow {
    pub user: u64,
    /// The user's name when they asked, for reports after the account is gone.
    pub username: String,
    pub request: [u8; 16],
    pub at: i64,
    pub meter: String,
    pub amount: u64,
    pub answer: Answer,
}

/// Every meter's purchases, every user's access, and the answers given by request id.
#[derive(Debug, Default, Clone)]
pub struct Credits {
    purchases: BTreeMap<u64, Purchase>,
    /// By user id and meter.
    grants: HashMap<(u64, String), Grant>,
    /// The first answer to each request id of each user, with what was asked.
    answers: HashMap<RequestKey, ConsumptionRow>,
    /// The keys of `answers` in the order they were answered, with when: what
    /// [`Credits::forget_answers`] walks.
    answered: VecDeque<(i64, RequestKey)>,
}

impl Credits {
    /// Adds a purchase (its `left` as given: a store reloads them as they stand).
    pub fn add_purchase(&mut self, purchase: Purchase) {
        self.purchases.insert(purchase.id, purchase);
    }

    /// Gives a user access to a meter, or takes it away (`None`); what they consumed stays
    /// counted against a quota given again.
    pub fn set_access(&mut self, user: u64, meter: &str, access: Option<Access>) {
        let key = (user, meter.to_string());
        match (self.grants.get_mut(&key), access) {
            (Some(grant), access) => grant.access = access,
            (None, Some(access)) => {
                self.grants.insert(
                    key,
                    Grant {
                        access: Some(access),
                        used: 0,
                    },
                );
            }
            (None, None) => {}
        }
    }

    /// A user's access to a meter, if they have any.
    pub fn grant(&self, user: u64, meter: &str) -> Option<Grant> {
        self.grants
            .get(&(user, meter.to_string()))
            .copied()
            .filter(|g| g.access.is_some())
    }

    /// The meter's figures at `now`.
    pub fn figures(&self, meter: &str, now: i64) -> MeterFigures {
        let mut figures = MeterFigures::default();
        for p in self.purchases.values().filter(|p| p.meter == meter) {
            figures.purchased += p.amount;
            figures.consumed += p.amount - p.left;
            match p.live(now) {
                true => figures.balance += p.left,
                false => figures.expired += p.left,
            }
        }
        figures
    }

    /// Consumes `amount` of `meter` for `user` (named `username` in refusals) under the
    /// request id `request`: the first answer to it, or a new one.
    pub fn consume(
        &mut self,
        now: i64,
        user: u64,
        username: &str,
        meter: &str,
        amount: u64,
        request: [u8; 16],
    ) -> Result<Consumed, ErrorBody> {
        if let Some(row) = self.answers.get(&(user, request)) {
            return row.answer.clone().map(|a| Consumed {
                consumed: a.consumed,
                balance: a.balance,
                remaining: a.remaining,
                draws: Vec::new(),
            });
        }
        let answer = self.try_consume(now, user, username, meter, amount);
        self.remember(ConsumptionRow {
            user,
            username: username.to_string(),
            request,
            at: now,
            meter: meter.to_string(),
            amount,
            answer: answer.clone().map(|c| c.answer()),
        });
        answer
    }

    /// The consumption of a user's request id and its first answer, if it was answered
    /// (and not yet forgotten).
    pub fn answered(&self, user: u64, request: [u8; 16]) -> Option<&ConsumptionRow> {
        self.answers.get(&(user, request))
    }

    /// Keeps the answer to a request id (as a store reloads them, oldest first).
    pub fn remember(&mut self, row: ConsumptionRow) {
        let key = (row.user, row.request);
        let at = row.at;
        if self.answers.insert(key, row).is_none() {
            self.answered.push_back((at, key));
        }
    }

    /// The consumptions whose answers are kept, oldest first.
    pub fn answers(&self) -> impl Iterator<Item = &ConsumptionRow> {
        self.answered
            .iter()
            .filter_map(|(_, key)| self.answers.get(key))
    }

    /// Forgets the answers given before `before`: their ids are new requests again.
    pub fn forget_answers(&mut self, before: i64) {
        while let Some(&(at, key)) = self.answered.front() {
            if at >= before {
                break;
            }
            self.answered.pop_front();
            self.answers.remove(&key);
        }
    }

    /// Every purchase, by id.
    pub fn purchases(&self) -> impl Iterator<Item = &Purchase> {
        self.purchases.values()
    }

    /// A purchase by id.
    pub fn purchase(&self, id: u64) -> Option<&Purchase> {
        self.purchases.get(&id)
    }

    /// Every meter with a purchase or a grant, by name.
    pub fn meters(&self) -> std::collections::BTreeSet<&str> {
        let bought = self.purchases.values().map(|p| p.meter.as_str());
        let granted = self.grants.keys().map(|(_, meter)| meter.as_str());
        bought.chain(granted).collect()
    }

    /// Every grant row, with access or without (what was used stays).
    pub fn grants(&self) -> impl Iterator<Item = GrantRow> + '_ {
        self.grants.iter().map(|((user, meter), grant)| GrantRow {
            user: *user,
            meter: meter.clone(),
            access: grant.access,
            used: grant.used,
        })
    }

    /// The grant row of a user and meter, as stored (`None` when there never was one).
    pub fn grant_row(&self, user: u64, meter: &str) -> Option<GrantRow> {
        self.grants
            .get(&(user, meter.to_string()))
            .map(|grant| GrantRow {
                user,
                meter: meter.to_string(),
                access: grant.access,
                used: grant.used,
            })
    }

    /// Restores a grant row as the store kept it.
    pub fn restore_grant(&mut self, row: GrantRow) {
        self.grants.insert(
            (row.user, row.meter),
            Grant {
                access: row.access,
                used: row.used,
            },
        );
    }

    fn try_consume(
        &mut self,
        now: i64,
        user: u64,
        username: &str,
        meter: &str,
        amount: u64,
    ) -> Result<Consumed, ErrorBody> {
        if amount == 0 {
            return Err(ErrorBody::invalid(
                "an amount of credits is a whole number of at least 1",
            ));
        }
        let short = |text: String| Err(ErrorBody::new(ErrorCode::NoCredit, text));
        let key = (user, meter.to_string());
        let Some(grant) = self.grants.get(&key).filter(|g| g.access.is_some()) else {
            return short(format!("{username} has no access to the meter {meter}"));
        };
        if let Some(remaining) = grant.remaining().filter(|r| *r < amount) {
            return short(format!(
                "{username} has {remaining} left of their quota of {meter}, less than {amount}"
            ));
        }
        let balance = self.figures(meter, now).balance;
        if balance < amount {
            return short(format!(
                "the pool of {meter} holds {balance}, less than {amount}"
            ));
        }
        let mut live: Vec<&mut Purchase> = self
            .purchases
            .values_mut()
            .filter(|p| p.meter == meter && p.left > 0 && p.live(now))
            .collect();
        live.sort_by_key(|p| (p.expires_at.is_none(), p.expires_at, p.id));
        let mut due = amount;
        let mut draws = Vec::new();
        for purchase in live {
            let take = due.min(purchase.left);
            purchase.left -= take;
            draws.push((purchase.id, take));
            due -= take;
            if due == 0 {
                break;
            }
        }
        let grant = self.grants.get_mut(&key).expect("checked above");
        grant.used += amount;
        let remaining = grant.remaining();
        Ok(Consumed {
            consumed: amount,
            balance: balance - amount,
            remaining,
            draws,
        })
    }
}

// ----- requests -----

impl Pool {
    /// Adds a purchase of credits to a meter's pool (admins).
    pub fn credits_add(
        &mut self,
        now: i64,
        actor: &Actor,
        request: &CreditsAdd,
        batch: &mut Batch,
    ) -> Result<PurchaseInfo, ErrorBody> {
        self.advance(now, batch);
        let meter = request.meter.as_str();
        let checked = require_admin(actor, "add credits")
            .and_then(|()| check_meter(meter))
            .and_then(|()| request.validate().map_err(ErrorBody::invalid))
            .and_then(|()| check_reference(&request.reference))
            .and_then(|()| match request.expires_at {
                Some(end) if end <= now => Err(ErrorBody::invalid(format!(
                    "expires ({}) is not in the future; credits that have already expired would add nothing",
                    rfc3339(end)
                ))),
                _ => Ok(()),
            });
        batch.audit_refusal(now, actor, Action::CreditsAdd, meter, Some(meter), checked)?;
        let purchase = Purchase {
            id: self.next_purchase_id,
            meter: meter.to_string(),
            amount: request.amount,
            left: request.amount,
            expires_at: request.expires_at,
            reference: request.reference.clone(),
        };
        self.next_purchase_id += 1;
        batch.next_purchase_id = Some(self.next_purchase_id);
        self.credits.add_purchase(purchase.clone());
        batch.upsert_purchase(purchase.clone());
        let until = match purchase.expires_at {
            Some(end) => format!("until {}", rfc3339(end)),
            None => "without an end".to_string(),
        };
        let balance = self.credits.figures(meter, now).balance;
        let detail = format!(
            "purchase {} of {} {until}; balance {balance}",
            purchase.id, purchase.amount
        );
        batch.audit(
            now,
            actor,
            Action::CreditsAdd,
            meter,
            Some(meter),
            Ok(&detail),
        );
        Ok(PurchaseInfo {
            id: purchase.id,
            meter: purchase.meter,
            amount: purchase.amount,
            expires_at: purchase.expires_at,
            reference: purchase.reference,
        })
    }

    /// Each meter's figures, or one meter's (everyone signed in).
    pub fn credits_status(
        &mut self,
        now: i64,
        actor: &Actor,
        query: &MeterQuery,
        batch: &mut Batch,
    ) -> Result<Vec<MeterInfo>, ErrorBody> {
        self.advance(now, batch);
        let meters = self.meters_asked(query.meter.as_deref());
        let subject = query.meter.as_deref().unwrap_or("meters");
        let meters = batch.audit_refusal(
            now,
            actor,
            Action::CreditsStatus,
            subject,
            query.meter.as_deref(),
            meters,
        )?;
        Ok(meters.iter().map(|m| self.meter_info(m, now)).collect())
    }

    /// A meter's figures at `now`, as `credits status` and the metrics show them.
    pub(super) fn meter_info(&self, meter: &str, now: i64) -> MeterInfo {
        let f = self.credits.figures(meter, now);
        MeterInfo {
            meter: meter.to_string(),
            purchased: f.purchased,
            consumed: f.consumed,
            expired: f.expired,
            balance: f.balance,
        }
    }

    /// Gives a user a quota of a meter, or unlimited access (admins). What they consumed
    /// before stays counted against the new quota.
    pub fn quota_set(
        &mut self,
        now: i64,
        actor: &Actor,
        request: &QuotaSet,
        batch: &mut Batch,
    ) -> Result<QuotaInfo, ErrorBody> {
        self.advance(now, batch);
        let username = username(&request.username);
        let meter = request.meter.as_str();
        let checked = require_admin(actor, "set quotas")
            .and_then(|()| check_meter(meter))
            .and_then(|()| request.validate().map_err(ErrorBody::invalid))
            .and_then(|()| self.bought_meter(meter))
            .and_then(|()| self.user(&username).map(|u| u.id));
        let user = batch.audit_refusal(
            now,
            actor,
            Action::QuotaSet,
            &username,
            Some(meter),
            checked,
        )?;
        let access = match request.quota {
            Some(quota) => Access::Quota(quota),
            None => Access::Unlimited,
        };
        self.credits.set_access(user, meter, Some(access));
        let info = self.quota_info(user, &username, meter);
        batch.upsert_grant(self.credits.grant_row(user, meter).expect("just set"));
        let detail = match access {
            Access::Quota(quota) => format!("quota of {quota}, {} used", info.used),
            Access::Unlimited => format!("unlimited, {} used", info.used),
        };
        batch.audit(
            now,
            actor,
            Action::QuotaSet,
            &username,
            Some(meter),
            Ok(&detail),
        );
        Ok(info)
    }

    /// Takes a user's access to a meter away (admins); what they consumed stays counted.
    pub fn quota_remove(
        &mut self,
        now: i64,
        actor: &Actor,
        request: &QuotaRef,
        batch: &mut Batch,
    ) -> Result<QuotaInfo, ErrorBody> {
        self.advance(now, batch);
        let username = username(&request.username);
        let meter = request.meter.as_str();
        let checked = require_admin(actor, "remove quotas")
            .and_then(|()| check_meter(meter))
            .and_then(|()| self.user(&username).map(|u| u.id))
            .and_then(|user| match self.credits.grant(user, meter) {
                Some(_) => Ok(user),
                None => Err(ErrorBody::not_found(format!(
                    "{username} has no access to the meter {meter}; `tally quota list {meter}` shows who has"
                ))),
            });
        let user = batch.audit_refusal(
            now,
            actor,
            Action::QuotaRemove,
            &username,
            Some(meter),
            checked,
        )?;
        self.credits.set_access(user, meter, None);
        batch.upsert_grant(self.credits.grant_row(user, meter).expect("it had access"));
        let info = self.quota_info(user, &username, meter);
        let detail = format!("access removed, {} used", info.used);
        batch.audit(
            now,
            actor,
            Action::QuotaRemove,
            &username,
            Some(meter),
            Ok(&detail),
        );
        Ok(info)
    }

    /// Users' access to meters, by meter then user: admins see everyone's, others their own.
    pub fn quota_list(
        &mut self,
        now: i64,
        actor: &Actor,
        query: &MeterQuery,
        batch: &mut Batch,
    ) -> Result<Vec<QuotaInfo>, ErrorBody> {
        self.advance(now, batch);
        let subject = query.meter.as_deref().unwrap_or("quotas");
        let checked = self.meters_asked(query.meter.as_deref());
        batch.audit_refusal(
            now,
            actor,
            Action::QuotaList,
            subject,
            query.meter.as_deref(),
            checked,
        )?;
        let mut rows: Vec<QuotaInfo> = self
            .credits
            .grants()
            .filter(|g| g.access.is_some())
            .filter(|g| query.meter.as_deref().is_none_or(|m| m == g.meter))
            .filter_map(|g| {
                let name = self.user_ids.get(&g.user)?;
                let mine = *name == actor.username;
                (mine || actor.role.is_admin()).then(|| self.quota_info(g.user, name, &g.meter))
            })
            .collect();
        rows.sort_by(|a, b| (&a.meter, &a.user).cmp(&(&b.meter, &b.user)));
        Ok(rows)
    }

    /// Consumes credits for the signed-in user (R21): once per request id, whose first
    /// answer, a grant or a refusal, answers every retry.
    pub fn consume(
        &mut self,
        now: i64,
        actor: &Actor,
        request: &Consume,
        batch: &mut Batch,
    ) -> Result<tally_protocol::Consumed, ErrorBody> {
        self.advance(now, batch);
        let meter = request.meter.as_str();
        let user = self.user(&actor.username)?.id;
        if let Some(first) = self.credits.answered(user, request.request_id.0) {
            if first.meter != meter || first.amount != request.amount {
                // Not a retry: a client reused an id. Nothing is kept of this one.
                let err = ErrorBody::invalid(format!(
                    "this request id was used to consume {} of {} at {}; a retry must ask the same, and a new consumption needs a new id",
                    first.amount,
                    first.meter,
                    rfc3339(first.at)
                ));
                batch.audit(now, actor, Action::Consume, meter, Some(meter), Err(&err));
                return Err(err);
            }
            return first.answer.clone();
        }
        let checked =
            check_meter(meter).and_then(|()| request.validate().map_err(ErrorBody::invalid));
        batch.audit_refusal(now, actor, Action::Consume, meter, Some(meter), checked)?;
        let answer = self.credits.consume(
            now,
            user,
            &actor.username,
            meter,
            request.amount,
            request.request_id.0,
        );
        let row = self
            .credits
            .answered(user, request.request_id.0)
            .expect("consume keeps its answer")
            .clone();
        batch.consumptions.push(row);
        match answer {
            Ok(consumed) => {
                for (id, _) in &consumed.draws {
                    batch.upsert_purchase(self.credits.purchase(*id).expect("drawn").clone());
                }
                batch.upsert_grant(self.credits.grant_row(user, meter).expect("has access"));
                let remaining = match consumed.remaining {
                    Some(left) => format!("{left} of the quota left"),
                    None => "unlimited".to_string(),
                };
                let detail = format!(
                    "consumed {}; balance {}, {remaining}",
                    consumed.consumed, consumed.balance
                );
                batch.audit(now, actor, Action::Consume, meter, Some(meter), Ok(&detail));
                Ok(consumed.answer())
            }
            Err(err) => {
                batch.audit(now, actor, Action::Consume, meter, Some(meter), Err(&err));
                Err(err)
            }
        }
    }

    /// The meters a query names: the one asked for (`not_found` when nothing was ever
    /// bought of it nor granted), or every meter.
    fn meters_asked(&self, meter: Option<&str>) -> Result<Vec<String>, ErrorBody> {
        let known = self.credits.meters();
        match meter {
            Some(meter) if known.contains(meter) => Ok(vec![meter.to_string()]),
            Some(meter) => Err(unknown_name(
                "meter",
                meter,
                known.iter().copied(),
                "`tally credits status` lists the meters",
            )),
            None => Ok(known.into_iter().map(str::to_string).collect()),
        }
    }

    /// `not_found` for a meter nothing was bought of nor granted, naming the nearest; what
    /// a report of one meter answers when it finds no consumption.
    pub fn meter_unknown(&self, meter: &str) -> Option<ErrorBody> {
        self.meters_asked(Some(meter)).err()
    }

    /// How many meters there are (for the bound of a report's size).
    pub fn meter_count(&self) -> usize {
        self.credits.meters().len()
    }

    /// `not_found` unless credits were bought for the meter.
    fn bought_meter(&self, meter: &str) -> Result<(), ErrorBody> {
        if self.credits.purchases().any(|p| p.meter == meter) {
            return Ok(());
        }
        let bought: std::collections::BTreeSet<&str> =
            self.credits.purchases().map(|p| p.meter.as_str()).collect();
        Err(unknown_name(
            "meter",
            meter,
            bought,
            "credits are bought into a meter with `tally credits add METER AMOUNT`",
        ))
    }

    fn quota_info(&self, user: u64, username: &str, meter: &str) -> QuotaInfo {
        let grant = self.credits.grant_row(user, meter).map_or(
            Grant {
                access: None,
                used: 0,
            },
            |row| Grant {
                access: row.access,
                used: row.used,
            },
        );
        QuotaInfo {
            user: username.to_string(),
            meter: meter.to_string(),
            quota: match grant.access {
                Some(Access::Quota(quota)) => Some(quota),
                _ => None,
            },
            unlimited: grant.access == Some(Access::Unlimited),
            used: grant.used,
            remaining: grant.remaining(),
        }
    }
}

/// A meter is named like a feature.
fn check_meter(meter: &str) -> Result<(), ErrorBody> {
    validate_feature(meter).map_err(|e| ErrorBody::invalid(format!("meter: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ANA: u64 = 1;
    const BO: u64 = 2;

    fn purchase(id: u64, amount: u64, expires_at: Option<i64>) -> Purchase {
        Purchase {
            id,
            meter: "cloud".into(),
            amount,
            left: amount,
            expires_at,
            reference: String::new(),
        }
    }

    fn id(n: u8) -> [u8; 16] {
        [n; 16]
    }

    #[test]
    fn the_seeds_example_a_quota_is_a_cap_not_a_reservation() {
        let mut credits = Credits::default();
        credits.add_purchase(purchase(1, 100, None));
        credits.set_access(ANA, "cloud", Some(Access::Quota(80)));
        credits.set_access(BO, "cloud", Some(Access::Quota(80)));
        let first = credits.consume(0, ANA, "ana", "cloud", 80, id(1)).unwrap();
        assert_eq!((first.balance, first.remaining), (20, Some(0)));
        let second = credits.consume(0, BO, "bo", "cloud", 20, id(2)).unwrap();
        assert_eq!((second.balance, second.remaining), (0, Some(60)));
        let refused = credits.consume(0, BO, "bo", "cloud", 1, id(3)).unwrap_err();
        assert_eq!(refused.code, ErrorCode::NoCredit);
        assert_eq!(refused.message, "the pool of cloud holds 0, less than 1");
    }

    #[test]
    fn no_access_and_a_short_quota_are_refused_naming_which() {
        let mut credits = Credits::default();
        credits.add_purchase(purchase(1, 100, None));
        let err = credits
            .consume(0, ANA, "ana", "cloud", 1, id(1))
            .unwrap_err();
        assert_eq!(err.message, "ana has no access to the meter cloud");
        credits.set_access(ANA, "cloud", Some(Access::Quota(10)));
        let err = credits
            .consume(0, ANA, "ana", "cloud", 11, id(2))
            .unwrap_err();
        assert_eq!(
            err.message,
            "ana has 10 left of their quota of cloud, less than 11"
        );
        credits.set_access(ANA, "cloud", Some(Access::Unlimited));
        let all = credits.consume(0, ANA, "ana", "cloud", 100, id(3)).unwrap();
        assert_eq!((all.balance, all.remaining), (0, None));
        credits.set_access(ANA, "cloud", None);
        credits.add_purchase(purchase(2, 5, None));
        let err = credits
            .consume(0, ANA, "ana", "cloud", 1, id(4))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::NoCredit);
        let err = credits
            .consume(0, ANA, "ana", "cloud", 0, id(5))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Invalid);
    }

    #[test]
    fn the_oldest_expiring_purchase_is_drawn_first_and_an_expired_rest_leaves() {
        let mut credits = Credits::default();
        credits.add_purchase(purchase(1, 10, None));
        credits.add_purchase(purchase(2, 10, Some(2_000)));
        credits.add_purchase(purchase(3, 10, Some(1_000)));
        credits.set_access(ANA, "cloud", Some(Access::Unlimited));
        let drawn = credits.consume(0, ANA, "ana", "cloud", 15, id(1)).unwrap();
        assert_eq!(drawn.draws, vec![(3, 10), (2, 5)]);
        let figures = credits.figures("cloud", 2_000);
        assert_eq!(
            figures,
            MeterFigures {
                purchased: 30,
                consumed: 15,
                expired: 5,
                balance: 10
            }
        );
        let err = credits
            .consume(2_000, ANA, "ana", "cloud", 11, id(2))
            .unwrap_err();
        assert_eq!(err.message, "the pool of cloud holds 10, less than 11");
    }

    #[test]
    fn a_retried_request_id_gets_its_first_answer_and_changes_nothing() {
        let mut credits = Credits::default();
        credits.add_purchase(purchase(1, 10, None));
        credits.set_access(ANA, "cloud", Some(Access::Unlimited));
        let first = credits.consume(0, ANA, "ana", "cloud", 4, id(1)).unwrap();
        let again = credits.consume(0, ANA, "ana", "cloud", 4, id(1)).unwrap();
        assert_eq!(first.answer(), again.answer());
        assert!(again.draws.is_empty(), "a retry draws nothing");
        assert_eq!(credits.figures("cloud", 0).balance, 6);
        // Another user's id is their own.
        credits.set_access(BO, "cloud", Some(Access::Unlimited));
        assert_eq!(
            credits
                .consume(0, BO, "bo", "cloud", 4, id(1))
                .unwrap()
                .balance,
            2
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Buy { amount: u64, ends: Option<i64> },
        Access { user: u64, access: Option<Access> },
        Consume { user: u64, amount: u64, request: u8 },
        Wait(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u64..50, proptest::option::of(1i64..100))
                .prop_map(|(amount, ends)| Op::Buy { amount, ends }),
            (
                0u64..3,
                proptest::option::of(prop_oneof![
                    (0u64..60).prop_map(Access::Quota),
                    Just(Access::Unlimited)
                ])
            )
                .prop_map(|(user, access)| Op::Access { user, access }),
            (0u64..3, 0u64..30, 0u8..12).prop_map(|(user, amount, request)| Op::Consume {
                user,
                amount,
                request
            }),
            (1i64..20).prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// Whatever happens: the balance never goes below zero (no purchase gives more than
        /// it had), no user consumes past the quota they hold when they consume, what was
        /// consumed equals the sum of the consumptions granted (each request id once), and
        /// a retried id gets its first answer.
        #[test]
        fn credits_are_never_overdrawn_and_each_request_counts_once(ops in proptest::collection::vec(op(), 1..80)) {
            let mut credits = Credits::default();
            let mut now = 0i64;
            let mut next_id = 1;
            let mut first: HashMap<(u64, u8), Answer> = HashMap::new();
            let mut granted = 0u64;
            let mut used: HashMap<u64, u64> = HashMap::new();
            for op in ops {
                match op {
                    Op::Buy { amount, ends } => {
                        credits.add_purchase(purchase(next_id, amount, ends.map(|e| now + e)));
                        next_id += 1;
                    }
                    Op::Access { user, access } => credits.set_access(user, "cloud", access),
                    Op::Consume { user, amount, request } => {
                        let before = credits.figures("cloud", now).balance;
                        let holds = credits.grants.get(&(user, "cloud".to_string())).copied();
                        let answer = credits.consume(now, user, "u", "cloud", amount, id(request));
                        match first.get(&(user, request)) {
                            Some(earlier) => {
                                prop_assert_eq!(&answer.clone().map(|c| c.answer()), earlier)
                            }
                            None => {
                                if let Ok(consumed) = &answer {
                                    granted += consumed.consumed;
                                    *used.entry(user).or_default() += consumed.consumed;
                                    prop_assert!(consumed.consumed <= before);
                                    let holds = holds.expect("a grant");
                                    if let Some(Access::Quota(quota)) = holds.access {
                                        prop_assert!(holds.used + amount <= quota);
                                    }
                                    prop_assert_eq!(consumed.draws.iter().map(|d| d.1).sum::<u64>(), amount);
                                }
                                first.insert((user, request), answer.map(|c| c.answer()));
                            }
                        }
                    }
                    Op::Wait(by) => now += by,
                }
                for p in credits.purchases.values() {
                    prop_assert!(p.left <= p.amount);
                }
                let figures = credits.figures("cloud", now);
                prop_assert_eq!(figures.consumed, granted);
                prop_assert_eq!(figures.purchased, figures.consumed + figures.expired + figures.balance);
                for (user, total) in &used {
                    prop_assert_eq!(credits.grants[&(*user, "cloud".to_string())].used, *total);
                }
            }
        }
    }
}
