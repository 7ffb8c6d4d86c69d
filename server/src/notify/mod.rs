//! Delivery of the notification outbox (SPEC §9, R20).
//!
//! The engine writes each notification to the `outbox` table in the same commit as its
//! cause. The [`Notifier`] delivers it to every sink configured ([`sinks`]: the log always,
//! then webhooks and e-mail), each sink on a task of its own, so that a sink that is slow
//! or down holds up no other. The delivery of one notification to one sink is a row of the
//! store ([`Delivery`]): attempts, when the next is due, delivered or given up, the last
//! error. A failed attempt is tried again after a backoff that doubles from
//! `notify.backoff_min` up to `notify.backoff_max`; after `notify.max_attempts` the sink
//! gives it up (a warning, and a failure in `tally notify status`). A notification is
//! settled (`outbox.delivered_at`) once every sink configured that takes its kind has
//! delivered it or given it up. A delivery is recorded after the sink took it, so each is
//! delivered at least once, and a restart or failover re-sends at most the ones in flight.
//!
//! Only the node that serves delivers (a cluster's leader). What is due is decided by the
//! daemon's [`Clock`]: a test steps a manual clock, which wakes the sinks, instead of
//! sleeping through a backoff.

pub mod sinks;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::NotifyConfig;
use crate::core::Notification;
use crate::ha::Serving;
use crate::store::{Delivery, Store, StoreError};
use tally_protocol::{NotifyStatus, SinkOutcome, SinkStatus};

pub use sinks::{LogSink, Sink};

/// How often the outbox is looked at even when nothing wakes a sink (a sink with nothing
/// due, or after a store error).
const POLL: Duration = Duration::from_secs(5);

/// The longest `notify test` waits for a sink, below the client's request timeout (30 s)
/// so that a sink that hangs is reported as such rather than the request timing out.
const TEST_WAIT: Duration = Duration::from_secs(20);

/// Notifications read from the outbox at a time.
const PAGE: u32 = 256;

/// When to try again, and when to give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts per notification and sink before the sink gives it up.
    pub max_attempts: u32,
    /// The wait after the first failure; doubled after each further one.
    pub backoff_min: Duration,
    /// The longest wait.
    pub backoff_max: Duration,
}

impl Retry {
    /// From `[notify]`.
    pub fn of(config: &NotifyConfig) -> Retry {
        Retry {
            max_attempts: config.max_attempts,
            backoff_min: config.backoff_min,
            backoff_max: config.backoff_max,
        }
    }

    /// The wait after `attempts` failed attempts (at least one), in milliseconds.
    pub fn backoff_ms(&self, attempts: u32) -> i64 {
        let doublings = attempts.saturating_sub(1).min(32);
        let wait = self
            .backoff_min
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.backoff_max);
        i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)
    }
}

/// The sinks in use and how they retry; replaced whole on a reload.
#[derive(Clone)]
pub struct SinkSet {
    /// The log first.
    pub sinks: Vec<Arc<dyn Sink>>,
    pub retry: Retry,
}

impl SinkSet {
    /// The sinks of `[notify]` (reading their CA files), or why they cannot be made.
    pub fn from_config(config: &NotifyConfig) -> Result<SinkSet, String> {
        Ok(SinkSet {
            sinks: sinks::build(config)?,
            retry: Retry::of(config),
        })
    }

    /// The log alone.
    pub fn log_only(retry: Retry) -> SinkSet {
        SinkSet {
            sinks: vec![Arc::new(LogSink)],
            retry,
        }
    }
}

/// The outbox's deliverer: its sinks (swapped on a reload), the store and the clock.
pub struct Notifier {
    store: Arc<dyn Store>,
    clock: Clock,
    /// Never held across an await: cloned out.
    sinks: RwLock<SinkSet>,
    /// Bumped when the sinks change, so that the workers start again with the new set.
    generation: watch::Sender<u64>,
}

impl Notifier {
    pub fn new(store: Arc<dyn Store>, clock: Clock, sinks: SinkSet) -> Arc<Notifier> {
        Arc::new(Notifier {
            store,
            clock,
            sinks: RwLock::new(sinks),
            generation: watch::Sender::new(0),
        })
    }

    /// The sinks in use.
    pub fn sinks(&self) -> SinkSet {
        self.sinks.read().expect("sinks lock").clone()
    }

    /// Puts `sinks` in use: the workers start again with them (a delivery in flight
    /// finishes first).
    pub fn replace(&self, sinks: SinkSet) {
        *self.sinks.write().expect("sinks lock") = sinks;
        self.generation.send_modify(|g| *g += 1);
    }

    /// How delivery stands, for `tally notify status`: every sink configured (the log
    /// first) with what the store counted for it.
    pub async fn status(&self) -> Result<NotifyStatus, StoreError> {
        let summary = self.store.delivery_summary().await?;
        let sinks = self
            .sinks()
            .sinks
            .iter()
            .map(|sink| {
                let counted = summary.sinks.iter().find(|s| s.sink == sink.name());
                SinkStatus {
                    sink: sink.name().to_string(),
                    delivered: counted.map_or(0, |c| c.delivered),
                    failed: counted.map_or(0, |c| c.failed),
                    last_error: counted.and_then(|c| c.last_error.clone()),
                }
            })
            .collect();
        Ok(NotifyStatus {
            pending: summary.pending,
            failed: summary.failed,
            sinks,
        })
    }

    /// Sends one notification of kind `test` straight to every sink (whatever kinds it
    /// takes), not through the outbox, and reports each outcome, the log first.
    pub async fn test(&self, actor: &str) -> Vec<SinkOutcome> {
        let now = self.clock.now_millis();
        let notification = Notification {
            id: hex::encode(rand::random::<[u8; 16]>()),
            at: now,
            kind: "test".into(),
            subject: actor.to_string(),
            feature: None,
            text: format!("A test notification, sent by {actor} with `tally notify test`."),
        };
        let set = self.sinks();
        let sends = set.sinks.iter().map(|sink| {
            let notification = &notification;
            async move {
                let error = match tokio::time::timeout(TEST_WAIT, sink.deliver(notification)).await
                {
                    Ok(outcome) => outcome.err(),
                    Err(_) => Some(format!("no answer within {}s", TEST_WAIT.as_secs())),
                };
                if let Some(error) = &error {
                    tracing::warn!(sink = sink.name(), %error, "test notification failed");
                }
                SinkOutcome {
                    sink: sink.name().to_string(),
                    error,
                }
            }
        });
        futures::future::join_all(sends).await
    }
}

/// Delivers the outbox until `shutdown`: one worker per sink, started again when the sinks
/// change. `wake` is told after each commit that queued notifications.
///
/// # Panics
///
/// When a worker panics, so that `server::run` sees the notifier end.
pub async fn run(
    notifier: Arc<Notifier>,
    wake: Arc<Notify>,
    serving: watch::Receiver<Serving>,
    shutdown: CancellationToken,
) {
    // Every worker follows one counter, bumped by the engine's wake and the clock's steps.
    let (kick, _) = watch::channel(0u64);
    let mut generation = notifier.generation.subscribe();
    let mut steps = notifier.clock.steps();
    loop {
        generation.borrow_and_update();
        let set = notifier.sinks();
        let stop = shutdown.child_token();
        let mut workers = JoinSet::new();
        for sink in &set.sinks {
            workers.spawn(worker(
                notifier.clone(),
                sink.clone(),
                set.clone(),
                kick.subscribe(),
                serving.clone(),
                stop.clone(),
            ));
        }
        let restart = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break false,
                _ = wake.notified() => { kick.send_modify(|k| *k += 1); }
                Some(Ok(_)) = async {
                    match &mut steps {
                        Some(steps) => Some(steps.changed().await),
                        None => std::future::pending().await,
                    }
                } => { kick.send_modify(|k| *k += 1); }
                changed = generation.changed() => {
                    if changed.is_ok() {
                        break true;
                    }
                }
                Some(ended) = workers.join_next() => {
                    if let Err(err) = ended {
                        if err.is_panic() {
                            std::panic::resume_unwind(err.into_panic());
                        }
                    }
                    // A worker returns only once its stop is cancelled or the engine is gone.
                    if !shutdown.is_cancelled() && serving.has_changed().is_err() {
                        return shutdown.cancelled().await;
                    }
                }
            }
        };
        stop.cancel();
        while let Some(ended) = workers.join_next().await {
            if let Err(err) = ended {
                if err.is_panic() {
                    std::panic::resume_unwind(err.into_panic());
                }
            }
        }
        if !restart {
            return;
        }
        tracing::info!(
            sinks = ?notifier.sinks().sinks.iter().map(|s| s.name().to_string()).collect::<Vec<_>>(),
            "notification sinks changed"
        );
    }
}

/// Delivers to one sink while the node serves, until `stop`.
async fn worker(
    notifier: Arc<Notifier>,
    sink: Arc<dyn Sink>,
    set: SinkSet,
    mut kick: watch::Receiver<u64>,
    mut serving: watch::Receiver<Serving>,
    stop: CancellationToken,
) {
    loop {
        // Only the node that serves delivers: in a cluster, the leader.
        tokio::select! {
            _ = stop.cancelled() => return,
            leading = serving.wait_for(|now| matches!(now, Serving::Leader { .. })) => {
                if leading.is_err() {
                    // The engine is gone; `server::run` stops.
                    return;
                }
            }
        }
        kick.borrow_and_update();
        let wait = match deliver_due(&notifier, sink.as_ref(), &set, &serving).await {
            Ok(Some(next)) if !notifier.clock.is_manual() => {
                let left = next.saturating_sub(notifier.clock.now_millis()).max(0);
                POLL.min(Duration::from_millis(u64::try_from(left).unwrap_or(0)))
            }
            Ok(_) => POLL,
            Err(err) => {
                tracing::warn!(sink = sink.name(), error = %err, "notification delivery: the store failed; trying again");
                POLL
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = kick.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One pass over the unsettled outbox for `sink`: delivers what is due, oldest first,
/// records each outcome, and settles the notifications every sink is done with. Returns
/// when the next attempt of a failed delivery is due, if one is.
pub async fn deliver_due(
    notifier: &Notifier,
    sink: &dyn Sink,
    set: &SinkSet,
    serving: &watch::Receiver<Serving>,
) -> Result<Option<i64>, StoreError> {
    let store = notifier.store.as_ref();
    let clock = &notifier.clock;
    let mut next_due: Option<i64> = None;
    let mut after = 0;
    loop {
        let page = store.unsettled_notifications(after, PAGE).await?;
        let Some((last, _)) = page.last() else {
            return Ok(next_due);
        };
        after = *last;
        let ids: Vec<i64> = page.iter().map(|(id, _)| *id).collect();
        let mut known: HashMap<(i64, String), Delivery> = store
            .deliveries(&ids)
            .await?
            .into_iter()
            .map(|d| ((d.outbox_id, d.sink.clone()), d))
            .collect();
        let mut settled = Vec::new();
        for (id, notification) in &page {
            if !matches!(*serving.borrow(), Serving::Leader { .. }) {
                return Ok(next_due);
            }
            if sink.wants(&notification.kind) {
                let key = (*id, sink.name().to_string());
                let mut delivery = known.get(&key).cloned().unwrap_or_else(|| Delivery {
                    outbox_id: *id,
                    sink: sink.name().to_string(),
                    attempts: 0,
                    next_at: 0,
                    delivered_at: None,
                    failed_at: None,
                    last_error: None,
                });
                if !delivery.is_done() {
                    if delivery.next_at > clock.now_millis() {
                        next_due =
                            Some(next_due.map_or(delivery.next_at, |n| n.min(delivery.next_at)));
                        continue;
                    }
                    attempt(notifier, sink, set.retry, notification, &mut delivery).await?;
                    if !delivery.is_done() {
                        next_due =
                            Some(next_due.map_or(delivery.next_at, |n| n.min(delivery.next_at)));
                    }
                    known.insert(key, delivery);
                }
            }
            // Done here: a candidate for settling, if every other sink is done too.
            let mine = (*id, sink.name().to_string());
            if !sink.wants(&notification.kind) || known.get(&mine).is_some_and(Delivery::is_done) {
                settled.push(*id);
            }
        }
        // Read again after this sink's records: of two sinks finishing the same notification
        // at once, the later read sees both outcomes, so one of them settles it.
        if !settled.is_empty() {
            let fresh = store.deliveries(&settled).await?;
            settled.retain(|id| {
                let notification = &page.iter().find(|(i, _)| i == id).expect("from the page").1;
                set.sinks.iter().all(|other| {
                    !other.wants(&notification.kind)
                        || fresh
                            .iter()
                            .any(|d| d.outbox_id == *id && d.sink == other.name() && d.is_done())
                })
            });
            store.mark_delivered(&settled, clock.now_millis()).await?;
        }
    }
}

/// One attempt at delivering `notification` to `sink`, recorded in the store.
async fn attempt(
    notifier: &Notifier,
    sink: &dyn Sink,
    retry: Retry,
    notification: &Notification,
    delivery: &mut Delivery,
) -> Result<(), StoreError> {
    let outcome = sink.deliver(notification).await;
    let now = notifier.clock.now_millis();
    delivery.attempts += 1;
    match outcome {
        Ok(()) => {
            delivery.delivered_at = Some(now);
            if delivery.attempts > 1 {
                tracing::info!(sink = sink.name(), id = %notification.id, attempts = delivery.attempts, "notification delivered after retrying");
            }
        }
        Err(error) => {
            if delivery.attempts >= retry.max_attempts {
                delivery.failed_at = Some(now);
                tracing::warn!(sink = sink.name(), id = %notification.id, kind = %notification.kind, attempts = delivery.attempts, %error, "notification given up after its last attempt");
            } else {
                delivery.next_at = now.saturating_add(retry.backoff_ms(delivery.attempts));
                tracing::info!(sink = sink.name(), id = %notification.id, attempts = delivery.attempts, %error, retry_in_ms = delivery.next_at - now, "notification delivery failed; will retry");
            }
            delivery.last_error = Some(error);
        }
    }
    notifier.store.record_delivery(delivery, now).await
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::core::{Batch, NotificationKind};
    use crate::store::{Fence, SqliteStore};

    /// Records deliveries; fails while `fail` is set.
    struct Recorder {
        name: String,
        seen: Mutex<Vec<String>>,
        fail: Mutex<bool>,
    }

    impl Recorder {
        fn new(name: &str) -> Arc<Recorder> {
            Arc::new(Recorder {
                name: name.into(),
                seen: Mutex::new(Vec::new()),
                fail: Mutex::new(false),
            })
        }
        fn seen(&self) -> Vec<String> {
            self.seen.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl Sink for Recorder {
        fn name(&self) -> &str {
            &self.name
        }
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

    fn leader() -> watch::Receiver<Serving> {
        watch::channel(Serving::Leader { epoch: 0 }).1
    }

    /// A store in `dir` whose outbox holds `notifications` (at, kind, subject, feature).
    async fn store_holding(
        dir: &tempfile::TempDir,
        notifications: &[(i64, NotificationKind, &str, Option<&str>)],
    ) -> Arc<dyn Store> {
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("t.db")).await.unwrap());
        let mut batch = Batch::default();
        for &(at, kind, subject, feature) in notifications {
            batch.notify(at, kind, subject, feature, "text");
        }
        store.commit(&batch, Fence::Single).await.unwrap();
        store
    }

    /// One sink retried up to 5 times with a fixed backoff.
    fn one_sink(sink: Arc<Recorder>, backoff: Duration) -> SinkSet {
        SinkSet {
            sinks: vec![sink],
            retry: Retry {
                max_attempts: 5,
                backoff_min: backoff,
                backoff_max: backoff,
            },
        }
    }

    #[tokio::test]
    async fn each_sink_delivers_on_its_own_retries_with_backoff_and_gives_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_holding(
            &dir,
            &[
                (1, NotificationKind::UserRemoved, "ana@studio.com", None),
                (
                    2,
                    NotificationKind::UserLimitExceeded,
                    "ben@studio.com",
                    None,
                ),
            ],
        )
        .await;

        let (up, down) = (Recorder::new("up"), Recorder::new("down"));
        *down.fail.lock().unwrap() = true;
        let retry = Retry {
            max_attempts: 3,
            backoff_min: Duration::from_secs(10),
            backoff_max: Duration::from_secs(15),
        };
        let set = SinkSet {
            sinks: vec![up.clone(), down.clone()],
            retry,
        };
        let clock = Clock::manual(1_000_000);
        let notifier = Notifier::new(store.clone(), clock.clone(), set.clone());
        let serving = leader();

        // The sink that is up gets both at once; the one that is down holds nothing up.
        assert_eq!(
            deliver_due(&notifier, up.as_ref(), &set, &serving)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            up.seen(),
            [
                "user_removed:ana@studio.com",
                "user_limit_exceeded:ben@studio.com"
            ]
        );
        let next = deliver_due(&notifier, down.as_ref(), &set, &serving)
            .await
            .unwrap();
        assert_eq!(next, Some(1_010_000), "first backoff: backoff_min");
        assert_eq!(
            deliver_due(&notifier, up.as_ref(), &set, &serving)
                .await
                .unwrap(),
            None
        );
        assert_eq!(up.seen().len(), 2, "delivered once");
        let status = notifier.status().await.unwrap();
        assert_eq!(status.pending, 2);

        // Not due before the backoff: no attempt.
        assert_eq!(
            deliver_due(&notifier, down.as_ref(), &set, &serving)
                .await
                .unwrap(),
            Some(1_010_000)
        );
        clock.advance(Duration::from_secs(10));
        let next = deliver_due(&notifier, down.as_ref(), &set, &serving)
            .await
            .unwrap();
        assert_eq!(next, Some(1_010_000 + 15_000), "doubled, up to backoff_max");
        clock.advance(Duration::from_secs(15));
        // The third attempt is the last: given up, and the notifications are settled.
        assert_eq!(
            deliver_due(&notifier, down.as_ref(), &set, &serving)
                .await
                .unwrap(),
            None
        );
        let status = notifier.status().await.unwrap();
        assert_eq!((status.pending, status.failed), (0, 2));
        assert_eq!(status.sinks[0].sink, "up");
        assert_eq!((status.sinks[0].delivered, status.sinks[0].failed), (2, 0));
        assert_eq!((status.sinks[1].delivered, status.sinks[1].failed), (0, 2));
        assert_eq!(status.sinks[1].last_error.as_deref(), Some("sink down"));
        assert!(store
            .unsettled_notifications(0, 10)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn a_sink_that_comes_back_delivers_once_and_a_standby_delivers_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let exhausted = (1, NotificationKind::PoolExhausted, "vray", Some("vray"));
        let store = store_holding(&dir, &[exhausted]).await;
        let hook = Recorder::new("hook");
        let set = one_sink(hook.clone(), Duration::from_secs(1));
        let clock = Clock::manual(0);
        let notifier = Notifier::new(store.clone(), clock.clone(), set.clone());
        let standby = watch::channel(Serving::Standby { leader: None }).1;
        deliver_due(&notifier, hook.as_ref(), &set, &standby)
            .await
            .unwrap();
        assert!(hook.seen().is_empty(), "a standby delivers nothing");
        *hook.fail.lock().unwrap() = true;
        deliver_due(&notifier, hook.as_ref(), &set, &leader())
            .await
            .unwrap();
        *hook.fail.lock().unwrap() = false;
        clock.advance(Duration::from_secs(1));
        deliver_due(&notifier, hook.as_ref(), &set, &leader())
            .await
            .unwrap();
        deliver_due(&notifier, hook.as_ref(), &set, &leader())
            .await
            .unwrap();
        assert_eq!(hook.seen(), ["pool_exhausted:vray"]);
        let status = notifier.status().await.unwrap();
        assert_eq!((status.pending, status.failed), (0, 0));
        assert_eq!(status.sinks[0].delivered, 1);
        assert_eq!(status.sinks[0].last_error.as_deref(), Some("sink down"));
    }

    #[tokio::test]
    async fn the_worker_wakes_when_the_clock_is_stepped() {
        let dir = tempfile::tempdir().unwrap();
        let exhausted = (1, NotificationKind::PoolExhausted, "vray", Some("vray"));
        let store = store_holding(&dir, &[exhausted]).await;
        let hook = Recorder::new("hook");
        *hook.fail.lock().unwrap() = true;
        let set = one_sink(hook.clone(), Duration::from_secs(3600));
        let clock = Clock::manual(0);
        let notifier = Notifier::new(store.clone(), clock.clone(), set);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(
            notifier.clone(),
            Arc::new(Notify::new()),
            leader(),
            shutdown.clone(),
        ));
        let delivered = || async { notifier.status().await.unwrap().sinks[0].delivered };
        // The first attempt fails; the next is an hour away on the clock.
        for _ in 0..500 {
            if notifier.status().await.unwrap().sinks[0]
                .last_error
                .is_some()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        *hook.fail.lock().unwrap() = false;
        clock.advance(Duration::from_secs(3600));
        for _ in 0..200 {
            if delivered().await == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            delivered().await,
            1,
            "the step woke the worker well before its poll"
        );
        shutdown.cancel();
        task.await.unwrap();
    }

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        let retry = Retry {
            max_attempts: 10,
            backoff_min: Duration::from_secs(30),
            backoff_max: Duration::from_secs(3600),
        };
        let waits: Vec<i64> = (1..=9).map(|n| retry.backoff_ms(n) / 1000).collect();
        assert_eq!(waits, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(retry.backoff_ms(u32::MAX), 3_600_000);
    }
}
