//! The checks every request family shares: the role, a feature name with the numbers of a
//! request, and the form of a username. Each is written once here; the request modules
//! call them before a request touches the pool.

use tally_protocol::{
    validate_feature, Assign, BorrowOnce, Checkout, ErrorBody, ErrorCode, NewEntitlement, Revoke,
};

use super::Actor;

/// Refuses with `forbidden` unless the actor is an owner or admin.
pub fn require_admin(actor: &Actor, what: &str) -> Result<(), ErrorBody> {
    if actor.role.is_admin() {
        Ok(())
    } else {
        Err(ErrorBody::new(
            ErrorCode::Forbidden,
            format!(
                "only an admin may {what}; {} is a {}",
                actor.username,
                actor.role.as_str()
            ),
        ))
    }
}

/// A request that names a feature and carries numbers (seats, times, durations) that the
/// protocol range-checks.
pub(super) trait FeatureRequest {
    fn feature(&self) -> &str;
    /// The protocol's range checks of the request's numbers (`validate_seats` and the like).
    fn numbers(&self) -> Result<(), String>;
}

/// Checks the feature name, then the numbers, of a request: `invalid` naming what is wrong.
pub(super) fn check_request(request: &impl FeatureRequest) -> Result<(), ErrorBody> {
    validate_feature(request.feature()).map_err(ErrorBody::invalid)?;
    request.numbers().map_err(ErrorBody::invalid)
}

macro_rules! feature_request {
    ($($request:ty),*) => {$(
        impl FeatureRequest for $request {
            fn feature(&self) -> &str {
                &self.feature
            }

            fn numbers(&self) -> Result<(), String> {
                self.validate()
            }
        }
    )*};
}

feature_request!(Checkout, NewEntitlement, Assign, Revoke, BorrowOnce);

/// `not_found` for a name that a request filters by and nothing bears (`what` is "feature"
/// or "user"), naming the nearest of `known` when one is near enough to be a typo, and the
/// command that lists them (`listing`).
pub(super) fn unknown_name<'a>(
    what: &str,
    name: &str,
    known: impl IntoIterator<Item = &'a str>,
    listing: &str,
) -> ErrorBody {
    let guess = match nearest(name, known) {
        Some(guess) => format!("did you mean {guess}? "),
        None => String::new(),
    };
    ErrorBody::not_found(format!("no {what} {name} exists; {guess}{listing}"))
}

/// The name of `known` nearest to `wanted`, if one is near enough to be what was meant: at
/// most a third of `wanted`'s length of edits away (at least one; two swapped neighbours
/// are one edit). Ties go to the first.
pub(super) fn nearest<'a>(
    wanted: &str,
    known: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let wanted: Vec<char> = wanted.to_lowercase().chars().collect();
    let within = (wanted.len() / 3).max(1);
    let mut best: Option<(usize, &str)> = None;
    for name in known {
        let candidate: Vec<char> = name.to_lowercase().chars().collect();
        if candidate.len().abs_diff(wanted.len()) > within {
            continue;
        }
        let distance = edit_distance(&wanted, &candidate);
        if distance <= within && best.is_none_or(|(least, _)| distance < least) {
            best = Some((distance, name));
        }
    }
    best.map(|(_, name)| name)
}

/// The optimal string alignment distance: insertions, deletions, substitutions and swaps
/// of two neighbours, each one edit.
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let width = b.len() + 1;
    let mut rows = vec![0usize; (a.len() + 1) * width];
    let at = |i: usize, j: usize| i * width + j;
    for i in 0..=a.len() {
        rows[at(i, 0)] = i;
    }
    for j in 0..=b.len() {
        rows[at(0, j)] = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[at(i - 1, j)] + 1)
                .min(rows[at(i, j - 1)] + 1)
                .min(rows[at(i - 1, j - 1)] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[at(i - 2, j - 2)] + 1);
            }
            rows[at(i, j)] = d;
        }
    }
    rows[at(a.len(), b.len())]
}

/// A username as the pool keys it: trimmed and in lowercase, so that `Ana@Studio.com ` and
/// `ana@studio.com` name the same account.
pub(super) fn username(text: &str) -> String {
    text.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use tally_protocol::{RequestId, Role};

    use super::*;

    fn checkout(feature: &str, seats: u32) -> Checkout {
        Checkout {
            feature: feature.into(),
            seats,
            request_id: RequestId([0; 16]),
        }
    }

    #[test]
    fn a_request_is_checked_for_its_feature_name_first_then_its_numbers() {
        assert!(check_request(&checkout("vray", 1)).is_ok());
        let err = check_request(&checkout("no such/feature", 0)).unwrap_err();
        assert_eq!(err.code, ErrorCode::Invalid);
        assert!(err.message.contains("feature"), "{}", err.message);
        let err = check_request(&checkout("vray", 0)).unwrap_err();
        assert_eq!(err.code, ErrorCode::Invalid);
        assert!(err.message.starts_with("seats"), "{}", err.message);
    }

    #[test]
    fn the_nearest_name_is_one_a_typo_could_have_made() {
        let features = ["maya", "nuke", "vray", "vray-render"];
        assert_eq!(
            nearest("vary", features),
            Some("vray"),
            "a swap is one edit"
        );
        assert_eq!(nearest("VRAY", features), Some("vray"));
        assert_eq!(nearest("nuk", features), Some("nuke"));
        assert_eq!(nearest("vray-rendr", features), Some("vray-render"));
        assert_eq!(nearest("houdini", features), None, "nothing near");
        assert_eq!(nearest("x", features), None);
        assert_eq!(nearest("vray", []), None);
        let users = ["ana@studio.com", "ben@studio.com"];
        assert_eq!(nearest("ana@studo.com", users), Some("ana@studio.com"));
        assert_eq!(nearest("nobody@x", users), None);
        let err = unknown_name("feature", "vary", features, "`tally status` lists them");
        assert_eq!(err.code, ErrorCode::NotFound);
        assert_eq!(
            err.message,
            "no feature vary exists; did you mean vray? `tally status` lists them"
        );
        let err = unknown_name("user", "nobody@x", users, "`tally user list` shows them");
        assert_eq!(
            err.message,
            "no user nobody@x exists; `tally user list` shows them"
        );
    }

    #[test]
    fn usernames_are_trimmed_and_lowercased() {
        assert_eq!(username("  Ana@Studio.COM\t"), "ana@studio.com");
    }

    #[test]
    fn only_owners_and_admins_pass_require_admin() {
        let actor = |role| Actor {
            username: "ana@studio".into(),
            role,
        };
        assert!(require_admin(&actor(Role::Owner), "x").is_ok());
        assert!(require_admin(&actor(Role::Admin), "x").is_ok());
        let err = require_admin(&actor(Role::Member), "add users").unwrap_err();
        assert_eq!(err.code, ErrorCode::Forbidden);
        assert_eq!(
            err.message,
            "only an admin may add users; ana@studio is a member"
        );
    }
}
