//! A blocking wrapper for applications that are not async.
//!
//! ```no_run
//! let config = tally_client::ClientConfig::from_file("/etc/tally/client.toml".as_ref())?;
//! let client = tally_client::blocking::Client::connect(config)?;
//! let lease = client.checkout("nuke", 1)?;
//! // ... work ...
//! lease.release()?;
//! # Ok::<(), tally_client::Error>(())
//! ```

use std::sync::Arc;
use std::time::Duration;

use tally_protocol::{EndReason, LeaseInfo, Request, Response};

use crate::{ClientConfig, Error};

/// A [`crate::Client`] with its own small runtime.
#[derive(Debug, Clone)]
pub struct Client {
    runtime: Arc<tokio::runtime::Runtime>,
    inner: crate::Client,
}

impl Client {
    /// Connects and signs in; see [`crate::Client::connect`].
    pub fn connect(config: ClientConfig) -> Result<Client, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tally-client")
            .enable_all()
            .build()
            .map_err(|err| Error::Config(format!("cannot start the client runtime: {err}")))?;
        let inner = runtime.block_on(crate::Client::connect(config))?;
        Ok(Client {
            runtime: Arc::new(runtime),
            inner,
        })
    }

    /// Sends a request and waits for its answer.
    pub fn call(&self, request: Request) -> Result<Response, Error> {
        self.runtime.block_on(self.inner.call(request))
    }

    /// Checks out seats; the lease heartbeats on the client's own thread.
    pub fn checkout(&self, feature: &str, seats: u32) -> Result<Lease, Error> {
        let lease = self.runtime.block_on(self.inner.checkout(feature, seats))?;
        Ok(Lease {
            runtime: self.runtime.clone(),
            inner: Some(lease),
        })
    }
}

/// A blocking [`crate::Lease`]: dropping it checks the seats in and waits (up to 5 s) for
/// the server to confirm.
#[derive(Debug)]
pub struct Lease {
    runtime: Arc<tokio::runtime::Runtime>,
    inner: Option<crate::Lease>,
}

impl Lease {
    pub fn info(&self) -> &LeaseInfo {
        self.inner
            .as_ref()
            .expect("lease present until dropped")
            .info()
    }

    /// Why the lease was lost, if it was.
    pub fn is_lost(&self) -> Option<EndReason> {
        self.inner.as_ref().and_then(|lease| lease.is_lost())
    }

    /// Checks the lease in and waits for the server to confirm it.
    pub fn release(mut self) -> Result<(), Error> {
        match self.inner.take() {
            Some(lease) => self.runtime.block_on(lease.release()),
            None => Ok(()),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(lease) = self.inner.take() {
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), lease.release()).await
            });
        }
    }
}
