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

use std::collections::{BTreeMap, HashMap};

use tally_protocol::{ErrorBody, ErrorCode};

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

/// Every meter's purchases, every user's access, and the answers given by request id.
#[derive(Debug, Default, Clone)]
pub struct Credits {
    purchases: BTreeMap<u64, Purchase>,
    /// By user id and meter.
    grants: HashMap<(u64, String), Grant>,
    /// The first answer to each request id of each user.
    answers: HashMap<RequestKey, Result<Consumed, ErrorBody>>,
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
        if let Some(answer) = self.answers.get(&(user, request)) {
            return answer.clone();
        }
        let answer = self.try_consume(now, user, username, meter, amount);
        self.answers.insert((user, request), answer.clone());
        answer
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
        assert_eq!(first, again);
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
            let mut first: HashMap<(u64, u8), Result<Consumed, ErrorBody>> = HashMap::new();
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
                            Some(earlier) => prop_assert_eq!(&answer, earlier),
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
                                first.insert((user, request), answer);
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
