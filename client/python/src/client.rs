//! `tally.Client`: one connection to the servers of a client file, and the offline check
//! of a borrow.

use std::path::PathBuf;
use std::sync::Mutex;

use pyo3::prelude::*;
use tally_client::{BorrowStore, Trust};

use crate::lease::Lease;
use crate::values::{seconds, Borrow, FeatureStatus, Verdict};
use crate::{error, error_from_code, load_config, wait};

/// A client signed in to a Tally server (the first of its file's list that answers).
///
/// Its connection heartbeats, reconnects and resumes leases on the module's own thread.
/// `close()` (or leaving a `with` block) lets the connection go once the leases taken
/// through it are released too.
#[pyclass(module = "tally", frozen)]
pub struct Client {
    /// The connection; `None` once closed.
    inner: Mutex<Option<tally_client::Client>>,
}

impl Client {
    /// The connection, or `tally.Closed` when `close()` was called.
    fn connection(&self) -> PyResult<tally_client::Client> {
        self.inner
            .lock()
            .map_err(|_| error_from_code("closed", "the client is unusable", None))?
            .clone()
            .ok_or_else(|| error_from_code("closed", "the client was closed", None))
    }
}

#[pymethods]
impl Client {
    /// Connects and signs in with the client file at `config`, or, when it is `None`, the
    /// one `TALLY_CONFIG` names (else `~/.config/tally/client.toml`). `agent` names the
    /// program to admins (`tally status --all`).
    #[new]
    #[pyo3(signature = (config=None, *, agent=None))]
    fn new(py: Python<'_>, config: Option<PathBuf>, agent: Option<String>) -> PyResult<Self> {
        let mut config = load_config(py, config)?;
        config.agent = agent
            .unwrap_or_else(|| format!("tally-python/{}", env!("CARGO_PKG_VERSION")))
            .chars()
            .take(64)
            .collect();
        let inner = wait(py, tally_client::Client::connect(config))?.map_err(error)?;
        Ok(Client {
            inner: Mutex::new(Some(inner)),
        })
    }

    /// Checks out `seats` seats of `feature`: a lease that heartbeats until released. With
    /// `wait` (seconds, a `timedelta` or text such as `"10m"`), waits in the feature's queue
    /// on the server while no seat is free, until a seat is granted or the wait has passed.
    #[pyo3(signature = (feature, seats=1, wait=None))]
    fn checkout(
        &self,
        py: Python<'_>,
        feature: String,
        seats: u32,
        wait: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Lease> {
        let client = self.connection()?;
        let patience = wait.map(seconds).transpose()?.unwrap_or_default();
        let lease = crate::wait(py, async move {
            client.checkout_waiting(&feature, seats, patience).await
        })?
        .map_err(error)?;
        Ok(Lease::new(lease))
    }

    /// The figures of `feature`, or of every feature.
    #[pyo3(signature = (feature=None))]
    fn status(&self, py: Python<'_>, feature: Option<String>) -> PyResult<Vec<FeatureStatus>> {
        let client = self.connection()?;
        let status =
            wait(py, async move { client.status(feature.as_deref()).await })?.map_err(error)?;
        Ok(status.into_iter().map(FeatureStatus::from).collect())
    }

    /// Borrows seats for offline use on this machine for `duration` (seconds, a
    /// `datetime.timedelta`, or text such as `"7d"`, `"8h"`, `"90m"`); the signed token is
    /// kept in the user's data directory.
    #[pyo3(signature = (feature, duration, seats=1))]
    fn borrow(
        &self,
        py: Python<'_>,
        feature: String,
        duration: &Bound<'_, PyAny>,
        seats: u32,
    ) -> PyResult<Borrow> {
        let duration = seconds(duration)?;
        let client = self.connection()?;
        let (lease, token_file) =
            wait(
                py,
                async move { client.borrow(&feature, seats, duration).await },
            )?
            .map_err(error)?;
        Ok(Borrow::new(lease, token_file))
    }

    /// Gives back the borrows of `feature` kept on this machine; returns the seats the
    /// server confirmed.
    fn return_borrow(&self, py: Python<'_>, feature: String) -> PyResult<u32> {
        let client = self.connection()?;
        wait(py, async move { client.return_borrows(&feature).await })?.map_err(error)
    }

    /// Whether this machine holds a valid borrow of `feature`: checked offline, then with
    /// the server, which must still hold it.
    fn verify(&self, py: Python<'_>, feature: String) -> PyResult<Verdict> {
        let client = self.connection()?;
        let verdict =
            wait(py, async move { client.verify_borrow(&feature).await })?.map_err(error)?;
        Ok(Verdict::from(verdict))
    }

    /// The user this client signed in as.
    #[getter]
    fn user(&self) -> PyResult<String> {
        Ok(self.connection()?.username().to_string())
    }

    /// The id of the server this client first connected to.
    #[getter]
    fn server_id(&self) -> PyResult<String> {
        Ok(self.connection()?.welcome().server_id.to_string())
    }

    /// Lets the connection go (once the leases taken through it are released). Calling it
    /// again does nothing.
    fn close(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.take();
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        match self.inner.lock().ok().and_then(|inner| inner.clone()) {
            Some(client) => format!(
                "<tally.Client user={:?} server={:?}>",
                client.username(),
                client.welcome().server_id.to_string()
            ),
            None => "<tally.Client closed>".to_string(),
        }
    }
}

/// Whether this machine holds a valid borrow of `feature`, with no network: the token kept
/// in the user's data directory, checked against the CA of the client file `config` (or the
/// environment's), this machine's id and the clock.
#[pyfunction]
#[pyo3(signature = (feature, config=None))]
pub fn verify_offline(
    py: Python<'_>,
    feature: String,
    config: Option<PathBuf>,
) -> PyResult<Verdict> {
    let config = load_config(py, config)?;
    py.detach(|| {
        let store = match &config.data_dir {
            Some(dir) => BorrowStore::at(dir.clone()),
            None => BorrowStore::open_default()?,
        };
        store.verify_offline(
            &feature,
            &Trust::from_pem(&config.ca_pem)?,
            &config.machine_id,
        )
    })
    .map(Verdict::from)
    .map_err(error)
}
