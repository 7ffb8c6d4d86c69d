//! `tally._tally`, the Rust half of the Python module `tally`: the client of `tally-client`
//! made into Python classes.
//!
//! Every call that waits (connecting, checking out, status, borrowing, releasing) runs with
//! the GIL released ([`wait`]), on the caller's thread, driving a future on the module's own
//! tokio runtime. The connection task of each client (heartbeats, reconnects, resuming
//! leases) runs on that runtime's worker thread and never touches Python, so a Python
//! program that computes for minutes without yielding keeps its leases. The exceptions are
//! Python classes (`tally/_errors.py`); [`error`] builds the one named after an error's code.

// PyO3's macros expand to `unsafe` blocks (the C API of CPython); this crate writes none.
#![allow(unsafe_code)]

mod client;
mod lease;
mod values;

use std::future::Future;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use pyo3::prelude::*;
use tally_client::{ClientConfig, Error};

/// How often a wait wakes to let Python handle a signal (Ctrl-C ends the wait with
/// `KeyboardInterrupt`).
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// The runtime every client of this process runs on: one worker thread, which does the
/// heartbeats; callers drive their own requests with `block_on`.
fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("tally-client")
                .enable_all()
                .build()
                .map_err(|err| format!("cannot start the client runtime: {err}"))
        })
        .as_ref()
        .map_err(|why| error_from_code("closed", why, None))
}

/// Runs `future` to its end with the GIL released, waking every [`SIGNAL_CHECK`] to let
/// Python raise for a pending signal (the future is then dropped: a checkout answered
/// after that is checked in by the client).
fn wait<F>(py: Python<'_>, future: F) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let runtime = runtime()?;
    py.detach(|| {
        runtime.block_on(async {
            tokio::pin!(future);
            loop {
                tokio::select! {
                    out = &mut future => return Ok(out),
                    _ = tokio::time::sleep(SIGNAL_CHECK) => {
                        Python::attach(|py| py.check_signals())?;
                    }
                }
            }
        })
    })
}

/// The client configuration: the file at `path`, else the one the environment names
/// (`TALLY_CONFIG`, else `~/.config/tally/client.toml`), as `tally` finds it.
fn load_config(py: Python<'_>, path: Option<PathBuf>) -> PyResult<ClientConfig> {
    py.detach(|| match path {
        Some(path) => ClientConfig::from_file(&path),
        None => ClientConfig::from_env(),
    })
    .map_err(error)
}

/// The Python exception for a client error: the class of `tally` named after its code
/// (`no_seat` is `tally.NoSeat`), carrying `code` and `message`.
fn error(err: Error) -> PyErr {
    let class = match &err {
        Error::Config(_) => Some("ConfigError"),
        Error::Protocol(_) => Some("ProtocolError"),
        _ => None,
    };
    error_from_code(err.code_str(), &err.to_string(), class)
}

/// The exception of `code` (or of the class named `class`), built by `tally._errors`.
fn error_from_code(code: &str, message: &str, class: Option<&str>) -> PyErr {
    Python::attach(|py| {
        let made = py
            .import("tally._errors")
            .and_then(|errors| errors.getattr("_make"))
            .and_then(|make| make.call1((code, message, class)));
        match made {
            Ok(exception) => PyErr::from_value(exception),
            Err(err) => err,
        }
    })
}

#[pymodule]
fn _tally(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<client::Client>()?;
    module.add_class::<lease::Lease>()?;
    module.add_class::<values::FeatureStatus>()?;
    module.add_class::<values::Borrow>()?;
    module.add_class::<values::Verdict>()?;
    module.add_function(wrap_pyfunction!(client::verify_offline, module)?)?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
