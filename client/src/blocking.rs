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

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use tally_protocol::{
    Consumed, EndReason, FeatureStatus, LeaseId, LeaseInfo, Request, RequestId, Response,
};

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

    /// Like [`checkout`](Self::checkout), but while the pool has no free seat, waits in the
    /// server's queue until `wait` has passed (then `no_seat`); see
    /// [`crate::Client::checkout_waiting`].
    pub fn checkout_waiting(
        &self,
        feature: &str,
        seats: u32,
        wait: Duration,
    ) -> Result<Lease, Error> {
        let lease = self
            .runtime
            .block_on(self.inner.checkout_waiting(feature, seats, wait))?;
        Ok(Lease {
            runtime: self.runtime.clone(),
            inner: Some(lease),
        })
    }

    /// Like [`checkout`](Self::checkout), but waits in the feature's queue on the server
    /// when no seat is free, until granted or `wait` passes (`queue_timeout`; `None`: no
    /// limit); see [`crate::Client::checkout_wait`].
    pub fn checkout_wait(
        &self,
        feature: &str,
        seats: u32,
        wait: Option<Duration>,
    ) -> Result<Lease, Error> {
        let lease = self
            .runtime
            .block_on(self.inner.checkout_wait(feature, seats, wait))?;
        Ok(Lease {
            runtime: self.runtime.clone(),
            inner: Some(lease),
        })
    }

    /// Seat figures of every feature, or of one; see [`crate::Client::status`].
    pub fn status(&self, feature: Option<&str>) -> Result<Vec<FeatureStatus>, Error> {
        self.runtime.block_on(self.inner.status(feature))
    }

    /// Borrows seats for offline use; see [`crate::Client::borrow`].
    pub fn borrow(
        &self,
        feature: &str,
        seats: u32,
        duration: Duration,
    ) -> Result<(LeaseInfo, PathBuf), Error> {
        self.runtime
            .block_on(self.inner.borrow(feature, seats, duration))
    }

    /// Gives back this machine's borrows of `feature`; see [`crate::Client::return_borrows`].
    pub fn return_borrows(&self, feature: &str) -> Result<u32, Error> {
        self.runtime.block_on(self.inner.return_borrows(feature))
    }

    /// An admin's forced check-in of a lease; see [`crate::Client::release`].
    pub fn release(&self, lease: LeaseId) -> Result<LeaseId, Error> {
        self.runtime.block_on(self.inner.release(lease))
    }

    /// Consumes credits of a meter under a random request id, reused on every resend;
    /// see [`crate::Client::consume`].
    pub fn consume(&self, meter: &str, amount: u64) -> Result<Consumed, Error> {
        self.runtime.block_on(self.inner.consume(meter, amount))
    }

    /// Consumes credits under the caller's request id: a retry with the same id returns
    /// the first answer; see [`crate::Client::consume_with_id`].
    pub fn consume_with_id(
        &self,
        meter: &str,
        amount: u64,
        request_id: RequestId,
    ) -> Result<Consumed, Error> {
        self.runtime
            .block_on(self.inner.consume_with_id(meter, amount, request_id))
    }

    /// The async client this one drives.
    pub fn inner(&self) -> &crate::Client {
        &self.inner
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

    /// Calls `on_lost` once, on a thread of its own, when the server ends the lease (at once
    /// if it has already ended). Never called for a lease its holder checks in, nor once the
    /// returned [`LostWatch`] is dropped. The thread is outside the client's runtime, so
    /// `on_lost` may call the client, and drop or release this lease.
    pub fn on_lost(&self, on_lost: impl FnOnce(EndReason) + Send + 'static) -> LostWatch {
        let mut lost = self
            .inner
            .as_ref()
            .expect("lease present until dropped")
            .lost_watch();
        let (cancel, cancelled_rx) = tokio::sync::oneshot::channel::<()>();
        let state = Arc::new(WatchState::default());
        let runtime = self.runtime.clone();
        let watcher_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("tally-lost".into())
            .spawn(move || {
                let ended = runtime.block_on(async move {
                    let ended = async {
                        loop {
                            if let Some(reason) = *lost.borrow_and_update() {
                                return Some(reason);
                            }
                            // The sender goes when the lease is checked in or the client stops.
                            lost.changed().await.ok()?;
                        }
                    };
                    tokio::select! {
                        reason = ended => reason,
                        _ = cancelled_rx => None,
                    }
                });
                drop(runtime);
                if let Some(reason) = ended {
                    let _running = watcher_state.running.lock();
                    if !watcher_state.cancelled.load(Ordering::SeqCst) {
                        on_lost(reason);
                    }
                }
            })
            .expect("cannot start a thread for the lost callback");
        LostWatch {
            cancel: Some(cancel),
            state,
            thread: thread.thread().id(),
        }
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

/// A lost callback registered with [`Lease::on_lost`]. Dropping it cancels the callback: once
/// the drop returns, the callback is not running and will never run (unless the drop
/// happens inside the callback itself, which then simply finishes).
#[derive(Debug)]
pub struct LostWatch {
    /// Wakes the watcher thread so it ends at once.
    cancel: Option<tokio::sync::oneshot::Sender<()>>,
    /// Shared with the watcher thread.
    state: Arc<WatchState>,
    /// The watcher thread: a drop from inside the callback must not wait for itself.
    thread: ThreadId,
}

/// What a [`LostWatch`] shares with its thread.
#[derive(Debug, Default)]
struct WatchState {
    /// Set by the drop; the thread checks it, under `running`, before calling back.
    cancelled: AtomicBool,
    /// Held by the thread while the callback runs, so the drop can wait for it to finish.
    running: Mutex<()>,
}

impl Drop for LostWatch {
    fn drop(&mut self) {
        self.state.cancelled.store(true, Ordering::SeqCst);
        if let Some(cancel) = self.cancel.take() {
            let _ = cancel.send(());
        }
        if std::thread::current().id() != self.thread {
            drop(self.state.running.lock());
        }
    }
}
