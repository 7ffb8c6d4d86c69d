//! `tally.Lease`: seats held while it lives, heartbeated by the client's own thread.

use std::sync::Mutex;
use std::time::Duration;

use pyo3::prelude::*;
use tally_protocol::{EndReason, LeaseInfo};

use crate::values::{datetime, seconds};
use crate::{error, error_from_code, wait};

/// Where a lease is in its life.
struct State {
    /// The held lease; `None` once released.
    lease: Option<tally_client::Lease>,
    /// Why it was lost, as seen when it was released (a lost lease stays lost).
    ended: Option<EndReason>,
}

/// Seats checked out from the server.
///
/// Heartbeated in the background until `release()` (or the end of a `with` block, or
/// garbage collection) checks it in. `lost` says whether the server ended it.
#[pyclass(module = "tally", frozen)]
pub struct Lease {
    /// The lease as the server granted it.
    info: LeaseInfo,
    state: Mutex<State>,
}

impl Lease {
    pub fn new(lease: tally_client::Lease) -> Self {
        Self {
            info: lease.info().clone(),
            state: Mutex::new(State {
                lease: Some(lease),
                ended: None,
            }),
        }
    }

    fn state(&self) -> PyResult<std::sync::MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| error_from_code("closed", "the lease is unusable", None))
    }

    fn lost_reason(&self) -> PyResult<Option<EndReason>> {
        let state = self.state()?;
        Ok(match &state.lease {
            Some(lease) => lease.is_lost(),
            None => state.ended,
        })
    }
}

#[pymethods]
impl Lease {
    /// The lease id: 32 hexadecimal digits, as `tally leases` shows it.
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

    /// The user holding it.
    #[getter]
    fn user(&self) -> &str {
        &self.info.user
    }

    /// The host it was checked out from.
    #[getter]
    fn host(&self) -> &str {
        &self.info.host
    }

    /// When the server granted it (an aware `datetime` in UTC).
    #[getter]
    fn granted_at<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        datetime(py, self.info.granted_at)
    }

    /// When it would lapse without heartbeats, as granted (heartbeats move it on).
    #[getter]
    fn expires_at<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        datetime(py, self.info.expires_at)
    }

    /// `None` while the lease holds; once the server ended it, why: `"expired"`,
    /// `"revoked"`, `"released"` (an admin's forced check-in), `"deactivated"`, `"moved"`
    /// or `"unknown"`.
    #[getter]
    fn lost(&self) -> PyResult<Option<&'static str>> {
        Ok(self.lost_reason()?.map(EndReason::as_str))
    }

    /// Whether `release()` was called (or the `with` block left).
    #[getter]
    fn released(&self) -> PyResult<bool> {
        Ok(self.state()?.lease.is_none())
    }

    /// Raises `tally.LeaseLost` if the server ended the lease; for work loops.
    fn check(&self) -> PyResult<()> {
        match self.lost_reason()? {
            Some(reason) => Err(error_from_code(
                "lease_lost",
                &format!(
                    "the lease {} of {} was lost: {}",
                    self.info.id,
                    self.info.feature,
                    reason.as_str()
                ),
                None,
            )),
            None => Ok(()),
        }
    }

    /// Waits, with the GIL released, until the server ends the lease or `timeout` (seconds,
    /// a `timedelta` or text such as `"5m"`; `None`: no limit) passes. Returns the reason
    /// (as `lost`), or `None` on timeout or when the lease was released meanwhile.
    #[pyo3(signature = (timeout=None))]
    fn wait_lost(
        &self,
        py: Python<'_>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<&'static str>> {
        let timeout = timeout.map(seconds).transpose()?;
        let signal = {
            let state = self.state()?;
            match &state.lease {
                Some(lease) => lease.lost_signal(),
                None => return Ok(state.ended.map(EndReason::as_str)),
            }
        };
        let limit = timeout.unwrap_or(Duration::MAX);
        let lost = wait(
            py,
            async move { tokio::time::timeout(limit, signal).await.ok() },
        )?;
        match lost {
            // Released meanwhile: the signal resolves `Unknown` when its lease goes.
            Some(_) => self.lost(),
            None => Ok(None),
        }
    }

    /// Checks the lease in and waits for the server to confirm it. Releasing a lease that
    /// was lost or already released does nothing.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        let lease = {
            let mut state = self.state()?;
            let lease = state.lease.take();
            state.ended = lease.as_ref().and_then(|lease| lease.is_lost());
            lease
        };
        match lease {
            Some(lease) => wait(py, lease.release())?.map_err(error),
            None => Ok(()),
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Releases the lease. A failure to release is raised only when the block itself
    /// raised nothing.
    #[pyo3(signature = (exc_type, _exc_value, _traceback))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _exc_value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        match self.release(py) {
            Err(err) if exc_type.is_none() => Err(err),
            _ => Ok(false),
        }
    }

    fn __repr__(&self) -> String {
        let state = match self.lost_reason() {
            Ok(Some(reason)) => format!(" lost={:?}", reason.as_str()),
            _ => String::new(),
        };
        format!(
            "<tally.Lease {} {} seats={}{state}>",
            self.info.id, self.info.feature, self.info.seats
        )
    }
}
