//! Queries of the audit log (R11). The store reads the log; the pool only knows whether
//! the names a query filters by exist, so that a typo is not answered with silence.

use tally_protocol::{AuditQuery, ErrorBody};

use super::checks::{nearest, username};
use super::Pool;

impl Pool {
    /// What to answer instead of an empty first page for an audit query by a user that is
    /// no account or a feature that nothing names now: `not_found`, naming the nearest
    /// name that exists. The history of a removed user or feature stays readable: the
    /// engine asks the store first and uses this only when it found no event.
    pub fn audit_unknown(&self, query: &AuditQuery) -> Option<ErrorBody> {
        let mut unknown = Vec::new();
        if let Some(user) = query.user.as_deref() {
            if !self.users.contains_key(&username(user)) {
                unknown.push((
                    "user",
                    user,
                    nearest(user, self.users.keys().map(String::as_str)),
                ));
            }
        }
        if let Some(feature) = query.feature.as_deref() {
            let known = self.known_features();
            if !known.contains(feature) {
                unknown.push(("feature", feature, nearest(feature, known)));
            }
        }
        if unknown.is_empty() {
            return None;
        }
        let names: Vec<String> = unknown
            .into_iter()
            .map(|(what, name, guess)| match guess {
                Some(guess) => format!("no {what} {name} exists (did you mean {guess}?)"),
                None => format!("no {what} {name} exists"),
            })
            .collect();
        Some(ErrorBody::not_found(format!(
            "{}, and no audit event names {}; `tally user list` and `tally status` show the names in use",
            names.join(" and "),
            if names.len() == 1 { "it" } else { "them" }
        )))
    }
}

impl Pool {
    /// The `not_found` of a usage report for a feature nothing names now, naming the
    /// nearest; the engine answers it only when the store holds no history of it either.
    pub fn report_unknown(&self, feature: &str) -> Option<ErrorBody> {
        let known = self.known_features();
        if known.contains(feature) {
            return None;
        }
        Some(super::checks::unknown_name(
            "feature",
            feature,
            known,
            "`tally status` lists the features in use",
        ))
    }

    /// How many features a report of all of them may name (for the bound of its size).
    pub fn report_features(&self) -> usize {
        self.known_features().len()
    }
}

#[cfg(test)]
mod tests {
    use tally_protocol::{EntitlementKind, ErrorCode, NewEntitlement, Role, UserState};

    use super::super::{Actor, Batch, Policy, User};
    use super::*;

    fn query(user: Option<&str>, feature: Option<&str>) -> AuditQuery {
        AuditQuery {
            since: None,
            user: user.map(str::to_string),
            feature: feature.map(str::to_string),
            limit: None,
        }
    }

    /// A pool with the owner, ana@studio.com and an entitlement of vray.
    fn pool() -> Pool {
        let mut pool = Pool::new(60_000, Policy::default());
        for (id, username, role) in [
            (1, "owner@localhost", Role::Owner),
            (2, "ana@studio.com", Role::Member),
        ] {
            pool.insert_user(User {
                id,
                username: username.into(),
                name: String::new(),
                role,
                state: UserState::Active,
                created_at: 0,
            });
        }
        let owner = Actor {
            username: "owner@localhost".into(),
            role: Role::Owner,
        };
        let vray = NewEntitlement {
            feature: "vray".into(),
            seats: 1,
            starts_at: None,
            expires_at: None,
            kind: EntitlementKind::Standard,
            borrowable: false,
            max_borrow_secs: None,
            reference: String::new(),
        };
        pool.add_entitlement(0, &owner, &vray, &mut Batch::default())
            .unwrap();
        pool
    }

    #[test]
    fn a_query_by_names_that_exist_asks_the_store() {
        let pool = pool();
        assert!(pool.audit_unknown(&query(None, None)).is_none());
        assert!(pool
            .audit_unknown(&query(Some("Ana@Studio.com"), Some("vray")))
            .is_none());
    }

    #[test]
    fn unknown_names_are_named_with_the_nearest_that_exists() {
        let pool = pool();
        let err = pool.audit_unknown(&query(Some("nobody@x"), None)).unwrap();
        assert_eq!(err.code, ErrorCode::NotFound);
        assert!(
            err.message
                .starts_with("no user nobody@x exists, and no audit event names it;"),
            "{}",
            err.message
        );
        let err = pool.audit_unknown(&query(None, Some("vary"))).unwrap();
        assert!(
            err.message
                .starts_with("no feature vary exists (did you mean vray?), and no audit event"),
            "{}",
            err.message
        );
        let err = pool
            .audit_unknown(&query(Some("ana@studo.com"), Some("vary")))
            .unwrap();
        assert!(
            err.message.starts_with(
                "no user ana@studo.com exists (did you mean ana@studio.com?) and no feature vary exists (did you mean vray?), and no audit event names them"
            ),
            "{}",
            err.message
        );
    }
}
