//! The lease guard: a held seat that heartbeats in the background and is checked in on drop.

use tally_protocol::{EndReason, LeaseInfo};
use tokio::sync::watch;

use crate::{Client, Error};

/// Seats checked out from the server.
///
/// While it lives, the client's connection task heartbeats it and resumes it after a
/// reconnect. [`lost`](Lease::lost) resolves when the server ends it (expired, revoked,
/// released by an admin). Dropping it checks it in in the background;
/// [`release`](Lease::release) does so and waits for the answer.
#[derive(Debug)]
pub struct Lease {
    info: LeaseInfo,
    client: Client,
    lost: watch::Receiver<Option<EndReason>>,
    released: bool,
}

impl Lease {
    pub(crate) fn new(
        info: LeaseInfo,
        client: Client,
        lost: watch::Receiver<Option<EndReason>>,
    ) -> Self {
        Self {
            info,
            client,
            lost,
            released: false,
        }
    }

    /// The lease as the server granted it.
    pub fn info(&self) -> &LeaseInfo {
        &self.info
    }

    /// The lease id.
    pub fn id(&self) -> tally_protocol::LeaseId {
        self.info.id
    }

    /// Why the lease was lost, if it was.
    pub fn is_lost(&self) -> Option<EndReason> {
        *self.lost.borrow()
    }

    /// A receiver of the lease's end, for a watcher that outlives a borrow of the guard
    /// (the blocking wrapper's lost callback).
    pub(crate) fn lost_watch(&self) -> watch::Receiver<Option<EndReason>> {
        self.lost.clone()
    }

    /// Resolves when the server ends the lease, with the reason.
    pub async fn lost(&mut self) -> EndReason {
        loop {
            if let Some(reason) = *self.lost.borrow_and_update() {
                return reason;
            }
            if self.lost.changed().await.is_err() {
                // The connection task is gone: the client was shut down.
                return EndReason::Unknown;
            }
        }
    }

    /// Like [`lost`](Lease::lost), without borrowing the lease: a future of its own, so that
    /// one thread can wait for the loss while another releases the lease (bindings for other
    /// languages do). It resolves with `Unknown` once the lease is released.
    pub fn lost_signal(&self) -> impl std::future::Future<Output = EndReason> + Send + 'static {
        let mut lost = self.lost.clone();
        async move {
            loop {
                if let Some(reason) = *lost.borrow_and_update() {
                    return reason;
                }
                if lost.changed().await.is_err() {
                    return EndReason::Unknown;
                }
            }
        }
    }

    /// Checks the lease in and waits for the server to confirm it.
    pub async fn release(mut self) -> Result<(), Error> {
        self.released = true;
        if self.is_lost().is_some() {
            return Ok(());
        }
        match self.client.checkin(self.info.id).await {
            Ok(_) => Ok(()),
            Err(Error::Server(body)) if body.code == tally_protocol::ErrorCode::NotFound => Ok(()),
            Err(err) => Err(err),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.released && self.is_lost().is_none() {
            self.client.checkin_in_background(self.info.id);
        }
    }
}
