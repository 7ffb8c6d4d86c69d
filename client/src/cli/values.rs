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

/// The units a duration may be written in, case-insensitive, with their length in seconds:
/// `s m h d w` and their long forms, singular or plural. `M` is minutes like `m`: there
/// are no months, whose length varies.
const UNITS: [(&[&str], u64); 5] = [
    (&["s", "sec", "secs", "second", "seconds"], 1),
    (&["m", "min", "mins", "minute", "minutes"], 60),
    (&["h", "hr", "hrs", "hour", "hours"], 3_600),
    (&["d", "day", "days"], 86_400),
    (&["w", "week", "weeks"], 604_800),
];

/// How to write a duration, for messages.
const DURATION_FORM: &str =
    "a number and a unit (s, m, h, d or w, or seconds, minutes, hours, days, weeks), like 90s, 15m, 8h, 7d, 2w, \"3 days\" or 1h30m";

/// The one-letter unit of a word that names a unit of duration (`days` → `d`), if it is
/// one.
pub fn unit_symbol(word: &str) -> Option<&'static str> {
    let word = word.to_lowercase();
    UNITS
        .iter()
        .find(|(names, _)| names.contains(&word.as_str()))
        .map(|(names, _)| names[0])
}

/// Durations: numbers each followed by a unit of [`UNITS`], in any case, with or without
/// spaces between them (`90s`, `15m`, `8H`, `7d`, `3 days`, `1h30m`), longer than zero.
pub fn duration(text: &str) -> Result<Duration, Failure> {
    let secs = duration_secs(text).map_err(Failure::usage)?;
    if secs == 0 {
        return Err(Failure::usage(format!(
            "duration {text:?} must be longer than zero"
        )));
    }
    Ok(Duration::from_secs(secs))
}

/// The seconds of a duration, or what is wrong with it.
fn duration_secs(text: &str) -> Result<u64, String> {
    let not_one = || format!("{text:?} is not a duration; write {DURATION_FORM}");
    let lower = text.to_lowercase();
    let mut rest = lower.trim_start();
    if rest.is_empty() {
        return Err(not_one());
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(not_one());
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("duration {text:?} is too long"))?;
        rest = rest[digits..].trim_start();
        if rest.starts_with(['.', ',']) {
            return Err(format!(
                "{text:?} is not a duration; write whole numbers (90m rather than 1.5h), {DURATION_FORM}"
            ));
        }
        let letters = rest.len() - rest.trim_start_matches(|c: char| c.is_alphabetic()).len();
        let word = &rest[..letters];
        if word.is_empty() {
            return Err(format!("{text:?} has no unit; write {DURATION_FORM}"));
        }
        let Some((_, unit)) = UNITS.iter().find(|(names, _)| names.contains(&word)) else {
            return Err(format!(
                "{word:?} in {text:?} is not a unit of duration; write {DURATION_FORM}"
            ));
        };
        total = number
            .checked_mul(*unit)
            .and_then(|secs| total.checked_add(secs))
            .ok_or_else(|| format!("duration {text:?} is too long"))?;
        rest = rest[letters..].trim_start();
    }
    Ok(total)
}

/// How to write a time, for messages.
const TIME_FORM: &str =
    "use RFC 3339 like 2027-01-31T18:00:00Z or 2027-01-31T20:00:00+02:00, or a date like 2027-01-31 (a day in UTC)";

/// A time given on the command line, before a bare date is placed in its day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    /// An instant, Unix milliseconds.
    Instant(i64),
    /// A date alone (`YYYY-MM-DD`): a day in UTC, as days since 1970-01-01.
    Date(i64),
}

const DAY_MILLIS: i64 = 86_400_000;

/// A time that starts something (`--starts`, `--since`), as Unix milliseconds: RFC 3339
/// with any offset (`Z`, `+02:00`, `-05:00`), or a date, which means the start of that day
/// in UTC (00:00:00).
pub fn start(text: &str) -> Result<i64, Failure> {
    in_range(
        text,
        match written(text)? {
            Written::Instant(millis) => millis,
            Written::Date(days) => days * DAY_MILLIS,
        },
    )
}

/// A time that ends something (`--expires`), as Unix milliseconds: RFC 3339 with any
/// offset, or a date, which means the end of that day in UTC, the day included: its last
/// millisecond, 23:59:59.999 (shown as `23:59:59Z`).
pub fn end(text: &str) -> Result<i64, Failure> {
    in_range(
        text,
        match written(text)? {
            Written::Instant(millis) => millis,
            Written::Date(days) => (days + 1) * DAY_MILLIS - 1,
        },
    )
}

/// An optional [`start`], read when present.
pub fn start_opt(text: Option<&str>) -> Result<Option<i64>, Failure> {
    text.map(start).transpose()
}

/// An optional [`end`], read when present.
pub fn end_opt(text: Option<&str>) -> Result<Option<i64>, Failure> {
    text.map(end).transpose()
}

/// Refuses times before 1970 or after year 9999, which no request may name.
fn in_range(text: &str, millis: i64) -> Result<i64, Failure> {
    if millis < tally_protocol::MIN_TIME {
        return Err(Failure::usage(format!("{text:?} is before 1970")));
    }
    if millis > tally_protocol::MAX_TIME {
        return Err(Failure::usage(format!("{text:?} is after the year 9999")));
    }
    Ok(millis)
}

/// Reads `YYYY-MM-DD`, or RFC 3339: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`
/// (`T` and `Z` in either case, or a space for the `T`), converted to UTC.
fn written(text: &str) -> Result<Written, Failure> {
    let not_one = || Failure::usage(format!("{text:?} is not a time; {TIME_FORM}"));
    let trimmed = text.trim();
    if !trimmed.is_ascii() || trimmed.len() < 10 {
        return Err(not_one());
    }
    let (date, rest) = trimmed.split_at(10);
    let days = date_days(text, date).ok_or_else(not_one)??;
    if rest.is_empty() {
        return Ok(Written::Date(days));
    }
    let rest = rest.strip_prefix(['T', 't', ' ']).ok_or_else(not_one)?;
    if rest.len() < 8 {
        return Err(not_one());
    }
    let (clock, rest) = rest.split_at(8);
    let [hour, minute, second] = fields(clock, ':')
        .filter(|_| clock.as_bytes()[2] == b':' && clock.as_bytes()[5] == b':')
        .ok_or_else(not_one)?;
    if hour > 23 || minute > 59 || second > 59 {
        return Err(Failure::usage(format!(
            "{text:?} is not a time: {clock} is not a time of day (00:00:00 to 23:59:59)"
        )));
    }
    let (millis, offset) = match rest.strip_prefix('.') {
        Some(fraction) => {
            let digits = fraction.len()
                - fraction
                    .trim_start_matches(|c: char| c.is_ascii_digit())
                    .len();
            if digits == 0 {
                return Err(not_one());
            }
            let first3 = format!("{:0<3}", &fraction[..digits.min(3)]);
            (
                first3.parse::<i64>().map_err(|_| not_one())?,
                &fraction[digits..],
            )
        }
        None => (0, rest),
    };
    let offset_minutes = match offset {
        "Z" | "z" => 0,
        "" => {
            return Err(Failure::usage(format!(
                "{text:?} has no UTC offset; add Z for UTC, or the offset, like +02:00"
            )))
        }
        _ => {
            let sign = match offset.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return Err(not_one()),
            };
            let zone = &offset[1..];
            let [hours, minutes] = fields(zone, ':')
                .filter(|_| zone.len() == 5 && zone.as_bytes()[2] == b':')
                .ok_or_else(not_one)?;
            if hours > 23 || minutes > 59 {
                return Err(not_one());
            }
            sign * (hours * 60 + minutes)
        }
    };
    let local = days * DAY_MILLIS + (hour * 3600 + minute * 60 + second) * 1000 + millis;
    Ok(Written::Instant(local - offset_minutes * 60_000))
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date: `None` when it does not have that form,
/// `Some(Err)` when it has it but names no day (month 13, February 30).
fn date_days(text: &str, date: &str) -> Option<Result<i64, Failure>> {
    let [year, month, day] = fields(date, '-')?;
    if date.as_bytes()[4] != b'-' || date.as_bytes()[7] != b'-' {
        return None;
    }
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => {
            return Some(Err(Failure::usage(format!(
                "{text:?} is not a time: there is no month {month}"
            ))))
        }
    };
    if day < 1 || day > days_in_month {
        return Some(Err(Failure::usage(format!(
            "{text:?} is not a time: month {month} of {year} has {days_in_month} days"
        ))));
    }
    Some(Ok(days_from_civil(year, month, day)))
}

/// Days since 1970-01-01 of a date of the proleptic Gregorian calendar (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// `N` fields of digits only, separated by `separator`.
fn fields<const N: usize>(text: &str, separator: char) -> Option<[i64; N]> {
    let mut out = [0; N];
    let mut parts = text.split(separator);
    for slot in &mut out {
        let part = parts.next()?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *slot = part.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// A `--limit`: at least 1, at most `max`; past it, the message says how to do without
/// (`instead`).
pub fn limit(limit: u32, max: u32, instead: &str) -> Result<u32, Failure> {
    if limit == 0 {
        return Err(Failure::usage("--limit must be at least 1"));
    }
    if limit > max {
        return Err(Failure::usage(format!(
            "--limit {limit} is past its maximum, {max}; {instead}"
        )));
    }
    Ok(limit)
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

    fn message<T: std::fmt::Debug>(result: Result<T, Failure>) -> String {
        let failure = result.unwrap_err();
        assert_eq!(failure.code, super::super::exit::USAGE);
        failure.message
    }

    /// RFC 3339 with any offset is converted to UTC; a bare date is a UTC day, its start
    /// for `--starts` and `--since`, its last millisecond for `--expires`.
    #[test]
    fn times_are_rfc3339_with_any_offset_or_dates_placed_in_their_day() {
        assert_eq!(start("1970-01-02").unwrap(), 86_400_000);
        assert_eq!(end("1970-01-02").unwrap(), 2 * 86_400_000 - 1);
        assert_eq!(start("1970-01-01T00:00:01Z").unwrap(), 1_000);
        assert_eq!(end("1970-01-01T00:00:01Z").unwrap(), 1_000);
        assert_eq!(start("1970-01-01t00:00:01.25z").unwrap(), 1_250);
        assert_eq!(start("1970-01-01 00:00:01.123456Z").unwrap(), 1_123);
        // The same instant, written at three offsets.
        let utc = start("2027-01-31T18:00:00Z").unwrap();
        assert_eq!(start("2027-01-31T20:00:00+02:00").unwrap(), utc);
        assert_eq!(start("2027-01-31T13:00:00-05:00").unwrap(), utc);
        assert_eq!(start("2027-02-01T03:30:00+09:30").unwrap(), utc);
        assert_eq!(tally_protocol::format_time(utc), "2027-01-31T18:00:00Z");
        // Leap days, the ends of the range, and a date's last millisecond as printed.
        assert_eq!(
            tally_protocol::format_time_millis(end("2028-02-29").unwrap()),
            "2028-02-29T23:59:59.999Z"
        );
        assert_eq!(
            tally_protocol::format_time(end("2027-12-31").unwrap()),
            "2027-12-31T23:59:59Z"
        );
        assert_eq!(end("9999-12-31").unwrap(), tally_protocol::MAX_TIME);
        assert_eq!(start("1970-01-01").unwrap(), 0);
        for (text, needle) in [
            ("tomorrow", "\"tomorrow\" is not a time; use RFC 3339"),
            ("2027-1-31", "is not a time"),
            ("2027-01-31T18:00", "is not a time"),
            ("2027-01-31T18:00:00", "has no UTC offset; add Z"),
            ("2027-01-31T18:00:00+2", "is not a time"),
            ("2027-01-31T18:00:00CET", "is not a time"),
            ("2027-01-31T24:00:00Z", "not a time of day"),
            ("2027-02-29", "month 2 of 2027 has 28 days"),
            ("2027-13-01", "there is no month 13"),
            ("1970-01-01T00:30:00+01:00", "before 1970"),
            ("1969-12-31", "before 1970"),
            ("2027-01-31T18:00:00.Z", "is not a time"),
            ("２０２７-01-31", "is not a time"),
        ] {
            let text_message = message(start(text));
            assert!(text_message.contains(needle), "{text}: {text_message}");
        }
        assert!(message(end("2027-02-30")).contains("has 28 days"));
        assert_eq!(start_opt(None).unwrap(), None);
        assert_eq!(end_opt(Some("1970-01-01")).unwrap(), Some(86_399_999));
    }

    /// Dates read back as the days `format_time` prints: every day of the first three
    /// centuries, then one every 97 days up to the end of year 9999.
    #[test]
    fn dates_read_back_as_printed() {
        let mut day = 0;
        while day * DAY_MILLIS <= tally_protocol::MAX_TIME {
            let printed = tally_protocol::format_time(day * DAY_MILLIS);
            assert_eq!(
                start(&printed[..10]).unwrap(),
                day * DAY_MILLIS,
                "{printed}"
            );
            assert_eq!(start(&printed).unwrap(), day * DAY_MILLIS, "{printed}");
            day += if day < 110_000 { 1 } else { 97 };
        }
    }

    /// One set of units, in any case, singular or plural, with or without a space, and
    /// several of them in a row.
    #[test]
    fn durations_take_one_set_of_units_in_any_case() {
        let secs = |text: &str| duration(text).unwrap().as_secs();
        for (texts, expected) in [
            (
                &["90s", "90S", "90 sec", "90 secs", "90 seconds", "1m30s"][..],
                90,
            ),
            (&["15m", "15M", "15 min", "15 mins", "15 Minutes"][..], 900),
            (
                &["8h", "8H", "8 hr", "8hrs", "8 hours", "8 HOURS"][..],
                8 * 3_600,
            ),
            (&["3d", "3D", "3 days", "3day", " 3 Days "][..], 3 * 86_400),
            (&["2w", "2W", "2 weeks", "2week", "1w 7d"][..], 14 * 86_400),
            (&["1h30m", "1h 30m", "90m", "1 hour 30 minutes"][..], 5_400),
        ] {
            for text in texts {
                assert_eq!(secs(text), expected, "{text}");
            }
        }
        assert_eq!(secs("1 minute"), 60);
        assert_eq!(secs("1 day"), 86_400);
        for (text, needle) in [
            (
                "ten",
                "\"ten\" is not a duration; write a number and a unit",
            ),
            ("3", "\"3\" has no unit"),
            (
                "3 months",
                "\"months\" in \"3 months\" is not a unit of duration",
            ),
            ("3y", "\"y\" in \"3y\" is not a unit"),
            ("1.5h", "is not a duration"),
            ("-3d", "is not a duration"),
            ("", "is not a duration"),
            ("0s", "longer than zero"),
            ("0d 0h", "longer than zero"),
            ("99999999999999999999d", "too long"),
            ("9999999999999999w", "too long"),
        ] {
            let text_message = message(duration(text));
            assert!(text_message.contains(needle), "{text:?}: {text_message}");
        }
    }

    #[test]
    fn a_limit_is_at_least_1_and_at_most_its_maximum() {
        assert_eq!(limit(1, 10, "").unwrap(), 1);
        assert_eq!(limit(10, 10, "").unwrap(), 10);
        assert!(message(limit(0, 10, "")).contains("--limit must be at least 1"));
        assert_eq!(
            message(limit(11, 10, "ask for less")),
            "--limit 11 is past its maximum, 10; ask for less"
        );
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
