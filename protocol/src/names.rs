//! Validation of the names that cross the wire: feature keys and usernames.

/// The longest feature key (SPEC §1: `[a-z0-9][a-z0-9._-]{0,63}`).
pub const FEATURE_MAX_LEN: usize = 64;

/// Checks a feature key against `[a-z0-9][a-z0-9._-]{0,63}`, explaining what is wrong.
pub fn validate_feature(feature: &str) -> Result<(), String> {
    if feature.is_empty() {
        return Err("feature name is empty".into());
    }
    if feature.len() > FEATURE_MAX_LEN {
        return Err(format!(
            "feature name is {} characters long; the limit is {FEATURE_MAX_LEN}",
            feature.len()
        ));
    }
    let first = feature.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(format!(
            "feature name {feature:?} must start with a lowercase letter or a digit"
        ));
    }
    if let Some(bad) = feature
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "feature name {feature:?} contains {bad:?}; use lowercase letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// Checks that a username looks like an e-mail address (`local@domain`), at most 254 bytes.
pub fn validate_username(username: &str) -> Result<(), String> {
    if username.len() > 254 {
        return Err("username is longer than 254 characters".into());
    }
    let Some((local, domain)) = username.split_once('@') else {
        return Err(format!("username {username:?} is not an e-mail address"));
    };
    if local.is_empty() || domain.is_empty() || domain.contains('@') {
        return Err(format!("username {username:?} is not an e-mail address"));
    }
    if username
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("username {username:?} contains white space"));
    }
    Ok(())
}
