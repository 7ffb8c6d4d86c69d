//! Delivery of the notification outbox.
//!
//! Changes that people should hear about (assignments granted or revoked, users added,
//! deactivated, activated or removed, the user limit reached) are written to the `outbox`
//! table in the same transaction as the change itself. This worker delivers them to a
//! [`Sink`] and marks them delivered afterwards, so each is delivered at least once, even
//! across a crash. The log sink is the only one today; webhook and e-mail sinks implement
//! the same trait.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::core::Notification;
use crate::ha::Serving;
use crate::store::Store;
use tally_protocol::now_millis;

/// Where notifications go.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Delivers one notification; an error leaves it in the outbox to be tried again.
    async fn deliver(&self, notification: &Notification) -> Result<(), String>;
}

/// Writes each notification to the log at `info`.
#[derive(Debug, Default)]
pub struct LogSink;

#[async_trait]
impl Sink for LogSink {
    async fn deliver(&self, n: &Notification) -> Result<(), String> {
        use crate::logtext::peer;
        tracing::info!(kind = %n.kind, subject = %peer(&n.subject), detail = %peer(&n.detail), at = n.at, "notification");
        Ok(())
    }
}

/// How often the outbox is looked at even when nobody wakes the worker (after a restart,
/// or after a failed delivery).
const POLL: Duration = Duration::from_secs(5);

/// Delivers pending notifications until `shutdown`, woken by `wake` after each commit that
/// queued some.
pub async fn run(
    store: Arc<dyn Store>,
    sink: Arc<dyn Sink>,
    wake: Arc<Notify>,
    mut serving: watch::Receiver<Serving>,
    shutdown: CancellationToken,
) {
    loop {
        // Only the node that serves delivers: in a cluster, the leader.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            leading = async { serving.wait_for(|now| matches!(now, Serving::Leader { .. })).await.is_ok() } => {
                if !leading {
                    // The engine is gone; `server::run` stops.
                    return shutdown.cancelled().await;
                }
            }
        }
        if let Err(err) = deliver_pending(store.as_ref(), sink.as_ref()).await {
            tracing::warn!(error = %err, "notification delivery failed; retrying");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Delivers everything pending, oldest first, stopping at the first failure.
pub async fn deliver_pending(store: &dyn Store, sink: &dyn Sink) -> Result<usize, String> {
    let mut delivered = 0;
    loop {
        let pending = store
            .pending_notifications(256)
            .await
            .map_err(|e| e.to_string())?;
        if pending.is_empty() {
            return Ok(delivered);
        }
        let mut done = Vec::with_capacity(pending.len());
        let mut failure = None;
        for (id, notification) in &pending {
            match sink.deliver(notification).await {
                Ok(()) => done.push(*id),
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            }
        }
        store
            .mark_delivered(&done, now_millis())
            .await
            .map_err(|e| e.to_string())?;
        delivered += done.len();
        if let Some(err) = failure {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::core::{Batch, NotificationKind};
    use crate::store::{Fence, SqliteStore};

    /// Records deliveries; fails while `fail` is set.
    #[derive(Default)]
    struct Recorder {
        seen: Mutex<Vec<String>>,
        fail: Mutex<bool>,
    }

    #[async_trait]
    impl Sink for Recorder {
        async fn deliver(&self, n: &Notification) -> Result<(), String> {
            if *self.fail.lock().unwrap() {
                return Err("sink down".into());
            }
            self.seen
                .lock()
                .unwrap()
                .push(format!("{}:{}", n.kind, n.subject));
            Ok(())
        }
    }

    #[tokio::test]
    async fn notifications_are_delivered_at_least_once_and_then_not_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        let mut batch = Batch::default();
        batch.notify(
            1,
            NotificationKind::UserAdded,
            "ana@studio.com",
            "role member",
        );
        batch.notify(
            2,
            NotificationKind::UserLimitExceeded,
            "ben@studio.com",
            "the server allows 3",
        );
        store.commit(&batch, Fence::Single).await.unwrap();

        let sink = Recorder::default();
        *sink.fail.lock().unwrap() = true;
        assert!(deliver_pending(&store, &sink).await.is_err());
        assert!(sink.seen.lock().unwrap().is_empty());
        // Still pending after the failure: delivered on the next attempt.
        *sink.fail.lock().unwrap() = false;
        assert_eq!(deliver_pending(&store, &sink).await.unwrap(), 2);
        assert_eq!(
            *sink.seen.lock().unwrap(),
            [
                "user_added:ana@studio.com",
                "user_limit_exceeded:ben@studio.com"
            ]
        );
        assert_eq!(
            deliver_pending(&store, &sink).await.unwrap(),
            0,
            "marked delivered"
        );
    }
}
