//! Metered credits and quotas (SPEC §11, R21): `credits add`, `credits status`,
//! `quota set`, `quota remove`, `quota list` and `consume`, with their JSON documents and
//! their lines and tables for people.

use serde_json::{json, Value};
use tally_protocol::{
    validate_amount, validate_feature, Consumed, CreditsAdd, MeterInfo, PurchaseInfo, QuotaInfo,
    RequestId, MAX_CREDITS,
};

use super::args::{CreditsCommand, QuotaCommand};
use super::failure::{exit, Failure};
use super::output::{line, table, time, Output};
use super::values;
use crate::Client;

/// A credits, quota or consume command, checked and ready to send.
pub enum Action {
    Add(CreditsAdd),
    Status {
        meter: Option<String>,
    },
    QuotaSet {
        username: String,
        meter: String,
        /// `None`: unlimited.
        quota: Option<u64>,
    },
    QuotaRemove {
        username: String,
        meter: String,
    },
    QuotaList {
        meter: Option<String>,
    },
    Consume {
        meter: String,
        amount: u64,
        /// The caller's id, to retry a consumption safely; `None`: a new random one.
        request_id: Option<RequestId>,
    },
}

impl Action {
    pub fn credits(command: CreditsCommand) -> Result<Self, Failure> {
        Ok(match command {
            CreditsCommand::Add {
                meter,
                amount: text,
                expires,
                reference,
            } => Action::Add(CreditsAdd {
                meter: self::meter(meter)?,
                amount: amount("AMOUNT", &text)?,
                expires_at: values::end_opt(expires.as_deref())?,
                reference: reference.unwrap_or_default(),
            }),
            CreditsCommand::Status { meter } => Action::Status {
                meter: meter.map(self::meter).transpose()?,
            },
        })
    }

    pub fn quota(command: QuotaCommand) -> Result<Self, Failure> {
        Ok(match command {
            QuotaCommand::Set {
                email,
                meter,
                amount: text,
                unlimited,
            } => {
                let username = values::username(email)?;
                let meter = self::meter(meter)?;
                let quota = match (text, unlimited) {
                    (Some(text), true) => {
                        return Err(Failure::usage(format!(
                            "give a quota ({text}) or --unlimited, not both"
                        )))
                    }
                    (None, false) => {
                        return Err(Failure::usage(
                            "give the quota, a whole number of credits (e.g. `tally quota set EMAIL METER 80`), or --unlimited",
                        ))
                    }
                    (Some(text), false) => Some(quota(&text)?),
                    (None, true) => None,
                };
                Action::QuotaSet {
                    username,
                    meter,
                    quota,
                }
            }
            QuotaCommand::Remove { email, meter } => Action::QuotaRemove {
                username: values::username(email)?,
                meter: self::meter(meter)?,
            },
            QuotaCommand::List { meter } => Action::QuotaList {
                meter: meter.map(self::meter).transpose()?,
            },
        })
    }

    pub fn consume(
        meter: String,
        amount: String,
        request_id: Option<String>,
    ) -> Result<Self, Failure> {
        Ok(Action::Consume {
            meter: self::meter(meter)?,
            amount: self::amount("AMOUNT", &amount)?,
            request_id: request_id.as_deref().map(self::request_id).transpose()?,
        })
    }

    pub async fn run(self, client: &Client, out: &Output) -> Result<u8, Failure> {
        match self {
            Action::Add(add) => purchase(out, &client.add_credits(add).await?),
            Action::Status { meter } => {
                meters(out, &client.credits_status(meter.as_deref()).await?)
            }
            Action::QuotaSet {
                username,
                meter,
                quota,
            } => quota_changed(
                out,
                &client.set_quota(&username, &meter, quota).await?,
                "set",
            ),
            Action::QuotaRemove { username, meter } => quota_changed(
                out,
                &client.remove_quota(&username, &meter).await?,
                "removed",
            ),
            Action::QuotaList { meter } => quotas(out, &client.quotas(meter.as_deref()).await?),
            Action::Consume {
                meter,
                amount,
                request_id,
            } => {
                let consumed = match request_id {
                    Some(id) => client.consume_with_id(&meter, amount, id).await?,
                    None => client.consume(&meter, amount).await?,
                };
                consumption(out, &meter, &consumed)
            }
        }
        Ok(exit::OK)
    }
}

/// A meter's name: named like a feature.
fn meter(text: String) -> Result<String, Failure> {
    validate_feature(&text)
        .map_err(|err| Failure::usage(err.replacen("feature name", "meter name", 1)))?;
    Ok(text)
}

/// An amount of credits: a whole number from 1 to [`MAX_CREDITS`].
fn amount(what: &str, text: &str) -> Result<u64, Failure> {
    let amount = whole(what, text)?;
    validate_amount("amount", amount)
        .map_err(|err| Failure::usage(format!("{what} {text}: {err}")))?;
    Ok(amount)
}

/// A quota: a whole number from 1 to [`MAX_CREDITS`] (no access at all is `quota remove`).
fn quota(text: &str) -> Result<u64, Failure> {
    let quota = whole("the quota", text)?;
    if quota == 0 {
        return Err(Failure::usage(
            "a quota of 0 allows nothing; give at least 1, or take the user's access away with `tally quota remove EMAIL METER`",
        ));
    }
    if quota > MAX_CREDITS {
        return Err(Failure::usage(format!(
            "a quota of {quota} is more than the largest, {MAX_CREDITS}"
        )));
    }
    Ok(quota)
}

/// A whole number of credits as written, refused naming `what` and the text.
fn whole(what: &str, text: &str) -> Result<u64, Failure> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    match text.parse::<u64>() {
        Ok(n) if digits => Ok(n),
        _ if digits => Err(Failure::usage(format!(
            "{what} {text} is more than the largest amount of credits, {MAX_CREDITS}"
        ))),
        _ => Err(Failure::usage(format!(
            "{what} {text:?} is not a whole number of credits; write digits only, like 100"
        ))),
    }
}

/// `--request-id`: 32 hex digits.
fn request_id(text: &str) -> Result<RequestId, Failure> {
    let digits = text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit());
    match digits.then(|| RequestId::from_hex(text)) {
        Some(Ok(id)) => Ok(id),
        _ => Err(Failure::usage(format!(
            "--request-id {text:?} is not a request id: give 32 hex digits (e.g. from `openssl rand -hex 16`), the same on every retry of one consumption"
        ))),
    }
}

fn purchase_json(p: &PurchaseInfo) -> Value {
    json!({
        "id": p.id,
        "meter": p.meter,
        "amount": p.amount,
        "expires_at": p.expires_at.map(time),
        "reference": p.reference,
    })
}

fn meter_json(m: &MeterInfo) -> Value {
    json!({
        "meter": m.meter,
        "purchased": m.purchased,
        "consumed": m.consumed,
        "expired": m.expired,
        "balance": m.balance,
    })
}

fn quota_json(q: &QuotaInfo) -> Value {
    json!({
        "user": q.user,
        "meter": q.meter,
        "quota": q.quota,
        "unlimited": q.unlimited,
        "used": q.used,
        "remaining": q.remaining,
    })
}

/// `{"purchase": {"id", "meter", "amount", "expires_at", "reference"}}`, or a line.
fn purchase(out: &Output, p: &PurchaseInfo) {
    if out.is_json() {
        return out.doc(json!({ "purchase": purchase_json(p) }));
    }
    let until = p.expires_at.map_or("without an end".to_string(), |end| {
        format!("until {}", time(end))
    });
    line(&format!(
        "added purchase {}: {} credits of {}, {until}",
        p.id, p.amount, p.meter
    ));
}

/// `{"meters": [{"meter", "purchased", "consumed", "expired", "balance"}]}`, or a table.
fn meters(out: &Output, list: &[MeterInfo]) {
    if out.is_json() {
        let list: Vec<Value> = list.iter().map(meter_json).collect();
        return out.doc(json!({ "meters": list }));
    }
    if list.is_empty() {
        line("no meters yet: buy credits with `tally credits add METER AMOUNT`");
        return;
    }
    let rows = list
        .iter()
        .map(|m| {
            vec![
                m.meter.clone(),
                m.purchased.to_string(),
                m.consumed.to_string(),
                m.expired.to_string(),
                m.balance.to_string(),
            ]
        })
        .collect();
    table(
        &["meter", "purchased", "consumed", "expired", "balance"],
        rows,
    );
}

/// A quota as people read it: `quota 80` or `unlimited`.
fn quota_text(q: &QuotaInfo) -> String {
    match (q.unlimited, q.quota) {
        (true, _) => "unlimited".into(),
        (false, Some(quota)) => format!("quota {quota}"),
        (false, None) => "no access".into(),
    }
}

/// What a quota has left, for people: a number, or `-` when unlimited.
fn remaining_text(remaining: Option<u64>) -> String {
    remaining.map_or("-".into(), |left| left.to_string())
}

/// `{"quota": {"user", "meter", "quota", "unlimited", "used", "remaining"}}`, or a line
/// (`done`: `set` or `removed`).
fn quota_changed(out: &Output, q: &QuotaInfo, done: &str) {
    if out.is_json() {
        return out.doc(json!({ "quota": quota_json(q) }));
    }
    if done == "removed" {
        line(&format!(
            "removed the access of {} to {}; {} used stays counted",
            q.user, q.meter, q.used
        ));
        return;
    }
    let left = match q.remaining {
        Some(left) => format!(", {left} remaining"),
        None => String::new(),
    };
    line(&format!(
        "{} on {}: {}, {} used{left}",
        q.user,
        q.meter,
        quota_text(q),
        q.used
    ));
}

/// `{"quotas": [...]}`, or a table.
fn quotas(out: &Output, list: &[QuotaInfo]) {
    if out.is_json() {
        let list: Vec<Value> = list.iter().map(quota_json).collect();
        return out.doc(json!({ "quotas": list }));
    }
    if list.is_empty() {
        line("no quotas: give one with `tally quota set EMAIL METER AMOUNT` (or --unlimited)");
        return;
    }
    let rows = list
        .iter()
        .map(|q| {
            vec![
                q.meter.clone(),
                q.user.clone(),
                match (q.unlimited, q.quota) {
                    (true, _) => "unlimited".into(),
                    (false, quota) => remaining_text(quota),
                },
                q.used.to_string(),
                remaining_text(q.remaining),
            ]
        })
        .collect();
    table(&["meter", "user", "quota", "used", "remaining"], rows);
}

/// `{"consumed", "balance", "remaining"}`, or a line.
fn consumption(out: &Output, meter: &str, c: &Consumed) {
    if out.is_json() {
        return out.doc(json!({
            "consumed": c.consumed,
            "balance": c.balance,
            "remaining": c.remaining,
        }));
    }
    let left = match c.remaining {
        Some(left) => format!("{left} of your quota left"),
        None => "your access is unlimited".into(),
    };
    line(&format!(
        "consumed {} of {meter}; balance {}, {left}",
        c.consumed, c.balance
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(result: Result<Action, Failure>) -> String {
        match result {
            Ok(_) => panic!("accepted"),
            Err(failure) => {
                assert_eq!(failure.code, exit::USAGE, "{}", failure.message);
                failure.message
            }
        }
    }

    #[test]
    fn amounts_are_whole_numbers_of_at_least_one() {
        let consume = |amount: &str| Action::consume("cloud".into(), amount.into(), None);
        assert!(matches!(
            consume("80"),
            Ok(Action::Consume { amount: 80, .. })
        ));
        assert!(refused(consume("0")).contains("at least 1"));
        assert!(refused(consume("many")).contains("\"many\" is not a whole number"));
        assert!(refused(consume("-3")).contains("\"-3\" is not a whole number"));
        assert!(refused(consume("1.5")).contains("\"1.5\" is not a whole number"));
        assert!(refused(consume("99999999999999999999999")).contains("more than the largest"));
        assert!(refused(consume(&(MAX_CREDITS + 1).to_string())).contains("more than the largest"));
        let bad_meter = Action::consume("Cloud Render".into(), "1".into(), None);
        assert!(refused(bad_meter).starts_with("meter name"));
    }

    #[test]
    fn a_request_id_is_32_hex_digits() {
        let id = "0123456789abcdef0123456789ABCDEF";
        let Ok(Action::Consume {
            request_id: Some(parsed),
            ..
        }) = Action::consume("cloud".into(), "1".into(), Some(id.into()))
        else {
            panic!("refused");
        };
        assert_eq!(parsed.to_string(), id.to_lowercase());
        for bad in [
            "abc",
            "0123456789abcdef0123456789abcdefff",
            "0123456789abcdef0123456789abcdeg",
            "+123456789abcdef0123456789abcdef",
        ] {
            let message = refused(Action::consume(
                "cloud".into(),
                "1".into(),
                Some(bad.into()),
            ));
            assert!(message.contains("32 hex digits"), "{bad}: {message}");
        }
    }

    #[test]
    fn a_quota_is_an_amount_or_unlimited_never_both_nor_neither() {
        let set = |amount: Option<&str>, unlimited: bool| {
            Action::quota(QuotaCommand::Set {
                email: "ana@studio.com".into(),
                meter: "cloud".into(),
                amount: amount.map(str::to_string),
                unlimited,
            })
        };
        assert!(matches!(
            set(Some("80"), false),
            Ok(Action::QuotaSet {
                quota: Some(80),
                ..
            })
        ));
        assert!(matches!(
            set(None, true),
            Ok(Action::QuotaSet { quota: None, .. })
        ));
        assert!(refused(set(Some("80"), true)).contains("not both"));
        assert!(refused(set(None, false)).contains("or --unlimited"));
        assert!(refused(set(Some("0"), false)).contains("quota remove"));
        assert!(refused(set(Some("lots"), false)).contains("\"lots\""));
    }
}
