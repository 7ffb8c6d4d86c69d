//! The values the client returns (a feature's figures, a borrow, a verdict), and the
//! conversions of times and durations between Python and Rust.

use std::path::PathBuf;
use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use tally_protocol::LeaseInfo;

/// The figures of one feature, as `tally status` shows them (SPEC §6).
#[pyclass(module = "tally", frozen, get_all, eq)]
#[derive(PartialEq)]
pub struct FeatureStatus {
    pub feature: String,
    /// Seats in the pool now: every entitlement in force.
    pub total: u32,
    /// Seats assigned to people by name.
    pub assigned: u32,
    /// Seats anyone may check out: `total - assigned`.
    pub floating: u32,
    /// Seats held by online leases.
    pub in_use: u32,
    /// Seats borrowed for offline use.
    pub borrowed: u32,
    /// Floating seats free now.
    pub available: u32,
    /// Seats waited for in the feature's queue.
    pub queued: u32,
}

impl From<tally_protocol::FeatureStatus> for FeatureStatus {
    fn from(s: tally_protocol::FeatureStatus) -> Self {
        Self {
            feature: s.feature,
            total: s.total,
            assigned: s.assigned,
            floating: s.floating,
            in_use: s.in_use,
            borrowed: s.borrowed,
            available: s.available,
            queued: s.queued,
        }
    }
}

#[pymethods]
impl FeatureStatus {
    /// The figures as a dict with the keys of `tally --json status`.
    fn as_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        dict.set_item("feature", &self.feature)?;
        for (key, value) in [
            ("total", self.total),
            ("assigned", self.assigned),
            ("floating", self.floating),
            ("in_use", self.in_use),
            ("borrowed", self.borrowed),
            ("available", self.available),
            ("queued", self.queued),
        ] {
            dict.set_item(key, value)?;
        }
        Ok(dict)
    }

    fn __repr__(&self) -> String {
        format!(
            "FeatureStatus(feature={:?}, total={}, assigned={}, floating={}, in_use={}, borrowed={}, available={}, queued={})",
            self.feature, self.total, self.assigned, self.floating, self.in_use, self.borrowed,
            self.available, self.queued
        )
    }
}

/// Seats borrowed for offline use, and the file their signed token is kept in.
#[pyclass(module = "tally", frozen)]
pub struct Borrow {
    info: LeaseInfo,
    /// The token file in the user's data directory.
    token_file: PathBuf,
}

impl Borrow {
    pub fn new(info: LeaseInfo, token_file: PathBuf) -> Self {
        Self { info, token_file }
    }
}

#[pymethods]
impl Borrow {
    /// The borrow's lease id.
    #[getter]
    fn id(&self) -> String {
        self.info.id.to_string()
    }

    #[getter]
    fn feature(&self) -> &str {
        &self.info.feature
    }

    #[getter]
    fn seats(&self) -> u32 {
        self.info.seats
    }

    /// When the borrow ends (an aware `datetime` in UTC).
    #[getter]
    fn expires_at<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        datetime(py, self.info.expires_at)
    }

    /// The path of the token file.
    #[getter]
    fn token_file(&self) -> String {
        self.token_file.display().to_string()
    }

    fn __repr__(&self) -> String {
        format!(
            "<tally.Borrow {} {} seats={} token_file={:?}>",
            self.info.id,
            self.info.feature,
            self.info.seats,
            self.token_file.display().to_string()
        )
    }
}

/// Whether a borrow may be used now, and why. True in a boolean context when valid.
#[pyclass(module = "tally", frozen, get_all)]
pub struct Verdict {
    pub valid: bool,
    /// A sentence saying why (`"valid until ..."`, `"expired at ..."`, ...).
    pub reason: String,
    /// `"offline"`, or `"server"` when the server confirmed it still holds the borrow.
    pub checked: &'static str,
}

impl From<tally_client::Verdict> for Verdict {
    fn from(v: tally_client::Verdict) -> Self {
        Self {
            valid: v.valid,
            reason: v.reason,
            checked: v.checked.as_str(),
        }
    }
}

#[pymethods]
impl Verdict {
    fn __bool__(&self) -> bool {
        self.valid
    }

    fn __repr__(&self) -> String {
        format!(
            "Verdict(valid={}, reason={:?}, checked={:?})",
            if self.valid { "True" } else { "False" },
            self.reason,
            self.checked
        )
    }
}

/// A Unix time in milliseconds as an aware `datetime.datetime` in UTC.
pub fn datetime(py: Python<'_>, millis: i64) -> PyResult<Bound<'_, PyAny>> {
    let module = py.import("datetime")?;
    let utc = module.getattr("timezone")?.getattr("utc")?;
    module
        .getattr("datetime")?
        .call_method1("fromtimestamp", (millis as f64 / 1000.0, utc))
}

/// A duration given as seconds (int or float), a `datetime.timedelta`, or text
/// (`"90s"`, `"15m"`, `"8h"`, `"7d"`, `"2w"`, or several: `"1d 12h"`).
pub fn seconds(value: &Bound<'_, PyAny>) -> PyResult<Duration> {
    let secs: f64 = if let Ok(text) = value.cast::<PyString>() {
        return parse_duration(&text.to_cow()?).map_err(PyValueError::new_err);
    } else if value.hasattr("total_seconds")? {
        value.call_method0("total_seconds")?.extract()?
    } else {
        value.extract().map_err(|_| {
            PyTypeError::new_err(
                "a duration is seconds, a datetime.timedelta or text such as \"7d\" or \"90m\"",
            )
        })?
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(PyValueError::new_err(format!(
            "a duration cannot be {secs}: give a positive number of seconds"
        )));
    }
    Duration::try_from_secs_f64(secs)
        .map_err(|_| PyValueError::new_err(format!("the duration {secs} is too long")))
}

/// The text form of a duration: whole numbers, each followed by a unit (`s`, `m`, `h`,
/// `d`, `w`, in any case), optionally separated by spaces.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let not_one = || {
        format!("{text:?} is not a duration; write for example \"90s\", \"15m\", \"8h\" or \"7d\"")
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(not_one());
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(not_one());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| not_one())?;
        rest = rest[digits..].trim_start();
        let unit_len = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let unit = match rest[..unit_len].to_ascii_lowercase().as_str() {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86_400,
            "w" | "week" | "weeks" => 604_800,
            _ => return Err(not_one()),
        };
        total = number
            .checked_mul(unit)
            .and_then(|secs| total.checked_add(secs))
            .ok_or_else(|| format!("the duration {text:?} is too long"))?;
        rest = rest[unit_len..].trim_start();
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_text() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("1d 12H"), Ok(Duration::from_secs(129_600)));
        assert_eq!(
            parse_duration("2 weeks"),
            Ok(Duration::from_secs(1_209_600))
        );
        for wrong in ["", "7", "d", "1.5h", "7x", "-1d", "99999999999999999999w"] {
            assert!(parse_duration(wrong).is_err(), "{wrong:?} was taken");
        }
    }
}
