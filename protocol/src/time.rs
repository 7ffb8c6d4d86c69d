//! Times on the wire: the range a request may name, and printing any time without failing.
//!
//! Times are Unix milliseconds (UTC) in an `i64`, so the wire can carry instants that no
//! calendar printer handles. Requests are held to [`MIN_TIME`]..=[`MAX_TIME`] (1970 to the end
//! of year 9999, what RFC 3339 can write; see `validate.rs`). The formatters here accept every
//! `i64`, so a time stored by an older version or sent by a newer peer is printed as a plain
//! number with a note rather than making the printer fail.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::UnixMillis;

/// The earliest time a request may name: 1970-01-01T00:00:00Z.
pub const MIN_TIME: UnixMillis = 0;

/// The latest time a request may name: 9999-12-31T23:59:59.999Z, the last instant RFC 3339
/// can write.
pub const MAX_TIME: UnixMillis = 253_402_300_799_999;

/// Checks that the time in `field` lies between [`MIN_TIME`] and [`MAX_TIME`], explaining what
/// is wrong.
pub fn validate_time(field: &str, at: UnixMillis) -> Result<(), String> {
    if (MIN_TIME..=MAX_TIME).contains(&at) {
        Ok(())
    } else {
        Err(format!(
            "{field} is {}; times must lie between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z",
            out_of_range(at)
        ))
    }
}

/// The wall-clock time in Unix milliseconds (0 before 1970): the one reading of the system
/// clock that the daemon, the tests and the benchmark share.
pub fn now_millis() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as UnixMillis)
}

/// RFC 3339 UTC to the second (`2027-01-31T18:00:00Z`), for any time: one outside 1970..=9999
/// is printed as a number of milliseconds with a note.
pub fn format_time(at: UnixMillis) -> String {
    if (MIN_TIME..=MAX_TIME).contains(&at) {
        let secs = Duration::from_secs(at.div_euclid(1000) as u64);
        humantime::format_rfc3339_seconds(UNIX_EPOCH + secs).to_string()
    } else {
        out_of_range(at)
    }
}

/// RFC 3339 UTC to the millisecond (`2027-01-31T18:00:00.250Z`), for any time, like
/// [`format_time`].
pub fn format_time_millis(at: UnixMillis) -> String {
    if (MIN_TIME..=MAX_TIME).contains(&at) {
        let millis = Duration::from_millis(at as u64);
        humantime::format_rfc3339_millis(UNIX_EPOCH + millis).to_string()
    } else {
        out_of_range(at)
    }
}

/// A time no calendar date is printed for.
fn out_of_range(at: UnixMillis) -> String {
    if at < MIN_TIME {
        format!("unix-ms {at} (before 1970)")
    } else {
        format!("unix-ms {at} (after year 9999)")
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_ends_of_the_range_print_as_dates_and_beyond_them_as_numbers() {
        assert_eq!(format_time(MIN_TIME), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(MAX_TIME), "9999-12-31T23:59:59Z");
        assert_eq!(format_time_millis(MAX_TIME), "9999-12-31T23:59:59.999Z");
        assert_eq!(
            format_time(MAX_TIME + 1),
            "unix-ms 253402300800000 (after year 9999)"
        );
        assert_eq!(format_time(-1), "unix-ms -1 (before 1970)");
        assert_eq!(
            format_time_millis(i64::MAX),
            format!("unix-ms {} (after year 9999)", i64::MAX)
        );
        assert_eq!(
            format_time_millis(i64::MIN),
            format!("unix-ms {} (before 1970)", i64::MIN)
        );
    }

    #[test]
    fn validation_names_the_field_and_the_range() {
        assert!(validate_time("expires_at", MIN_TIME).is_ok());
        assert!(validate_time("expires_at", MAX_TIME).is_ok());
        let err = validate_time("expires_at", MAX_TIME + 1).unwrap_err();
        assert!(
            err.starts_with("expires_at is unix-ms 253402300800000"),
            "{err}"
        );
        assert!(err.contains("between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z"));
        let err = validate_time("since", -1).unwrap_err();
        assert!(
            err.starts_with("since is unix-ms -1 (before 1970)"),
            "{err}"
        );
    }

    proptest! {
        /// Every `i64` prints, and a time in range reads back as the same second.
        #[test]
        fn every_time_prints(at in prop_oneof![
            any::<i64>(),
            MIN_TIME..=MAX_TIME,
            (MAX_TIME - 2000)..=(MAX_TIME + 2000),
            -2000i64..2000,
        ]) {
            let seconds = format_time(at);
            let millis = format_time_millis(at);
            if (MIN_TIME..=MAX_TIME).contains(&at) {
                let back = humantime::parse_rfc3339(&seconds).unwrap();
                prop_assert_eq!(back.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64, at / 1000);
                let back = humantime::parse_rfc3339(&millis).unwrap();
                prop_assert_eq!(back.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64, at);
            } else {
                prop_assert!(seconds.contains(&at.to_string()));
                prop_assert_eq!(seconds, millis);
            }
        }
    }
}
