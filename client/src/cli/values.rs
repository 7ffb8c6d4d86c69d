//! Argument values from text: times, durations, entitlement ids, roles, names and seat counts, each
//! refused as a usage error (exit 2) that names what is wrong and how to write it.

use std::time::Duration;

use tally_protocol::{validate_feature, validate_username, Role};

use super::failure::Failure;

/// A feature name the server would accept.
pub fn feature(text: String) -> Result<String, Failure> {
    validate_feature(&text).map_err(Failure::usage)?;
    Ok(text)
}

/// An optional feature name, checked when present.
pub fn feature_opt(text: Option<String>) -> Result<Option<String>, Failure> {
    text.map(feature).transpose()
}

/// A user name (an email address) the server would accept.
pub fn username(text: String) -> Result<String, Failure> {
    validate_username(&text).map_err(Failure::usage)?;
    Ok(text)
}

/// A seat count given with `--seats`: at least 1.
pub fn seats(seats: u32) -> Result<u32, Failure> {
    if seats == 0 {
        return Err(Failure::usage("--seats must be at least 1"));
    }
    Ok(seats)
}

pub fn role(text: &str) -> Result<Role, Failure> {
    Role::parse(text).ok_or_else(|| {
        Failure::usage(format!(
            "{text:?} is not a role; use admin, member or guest"
        ))
    })
}

/// Durations such as `90s`, `15m`, `8h`, `7d`.
pub fn duration(text: &str) -> Result<Duration, Failure> {
    let duration = humantime::parse_duration(text).map_err(|_| {
        Failure::usage(format!(
            "{text:?} is not a duration; use a number and a unit, like 90s, 15m, 8h or 7d"
        ))
    })?;
    if duration.is_zero() {
        return Err(Failure::usage(format!(
            "duration {text:?} must be longer than zero"
        )));
    }
    Ok(duration)
}

/// RFC 3339 times (`2027-01-31T18:00:00Z`) or dates (`2027-01-31`, midnight UTC), as Unix
/// milliseconds.
pub fn time(text: &str) -> Result<i64, Failure> {
    let full = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_string()
    };
    let time = humantime::parse_rfc3339(&full)
        .map_err(|_| Failure::usage(format!("{text:?} is not a time; use RFC 3339 UTC like 2027-01-31T18:00:00Z, or a date like 2027-01-31")))?;
    let millis = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| Failure::usage(format!("{text:?} is before 1970")))?
        .as_millis();
    Ok(millis as i64)
}

/// An optional time, parsed when present.
pub fn time_opt(text: Option<&str>) -> Result<Option<i64>, Failure> {
    text.map(time).transpose()
}

pub fn entitlement_id(text: &str) -> Result<u64, Failure> {
    text.parse().map_err(|_| {
        Failure::usage(format!(
            "{text:?} is not an entitlement id; `tally entitlement list` shows them"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_dates_at_midnight_utc() {
        assert_eq!(time("1970-01-02").unwrap(), 86_400_000);
        assert_eq!(time("1970-01-01T00:00:01Z").unwrap(), 1_000);
        let err = time("tomorrow").unwrap_err();
        assert_eq!(err.code, super::super::exit::USAGE);
        assert!(
            err.message.contains("\"tomorrow\" is not a time"),
            "{}",
            err.message
        );
    }

    #[test]
    fn durations_need_a_unit_and_must_be_longer_than_zero() {
        assert_eq!(duration("3d").unwrap(), Duration::from_secs(3 * 86_400));
        assert!(duration("ten")
            .unwrap_err()
            .message
            .contains("is not a duration"));
        assert!(duration("0s")
            .unwrap_err()
            .message
            .contains("longer than zero"));
    }

    #[test]
    fn ids_roles_names_and_seats_name_what_is_wrong() {
        assert_eq!(entitlement_id("42").unwrap(), 42);
        assert!(entitlement_id("abc")
            .unwrap_err()
            .message
            .contains("not an entitlement id"));
        assert_eq!(role("guest").unwrap(), Role::Guest);
        assert!(role("root")
            .unwrap_err()
            .message
            .contains("\"root\" is not a role"));
        assert!(feature("Bad Name".into())
            .unwrap_err()
            .message
            .contains("Bad Name"));
        assert!(username("not an email".into()).is_err());
        assert!(seats(0).unwrap_err().message.contains("--seats"));
        assert_eq!(seats(2).unwrap(), 2);
    }
}
