//! The daemon, linked into the test package so that tests can run it as a real process.
//!
//! With `TALLYD_TEST_FAULT` set, its store injects a fault, so that tests can watch what the
//! daemon does when its engine or notifier dies or hangs (the release `tallyd` has no such
//! store). The fault is set off by an entitlement whose reference is [`TRIGGER`] (or, for the
//! notifier, a notification about the user [`TRIGGER_USER`]):
//! - `engine-panic`: the commit that adds it panics, inside the engine task;
//! - `engine-hang`: that commit never returns, so the engine is stuck;
//! - `notifier-panic`: the notifier panics when it reads the notification;
//! - `ping-hang`: once that entitlement is committed, `ping` never returns (a database
//!   that no longer answers, as `/readyz` sees it); everything else goes on working.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use tally_protocol::{AuditPage, AuditQuery};
use tally_server::core::{Batch, Notification, Snapshot, Token};
use tally_server::store::{Delivery, DeliverySummary, Fence, Identity, Store, StoreError};

/// The entitlement reference that sets off `engine-panic` and `engine-hang`.
const TRIGGER: &str = "fault-injection";

/// The user whose notification sets off `notifier-panic`.
const TRIGGER_USER: &str = "fault@injection.test";

fn main() -> ExitCode {
    match std::env::var("TALLYD_TEST_FAULT") {
        Ok(fault) => tally_server::cli::main_with(move |inner| {
            Box::new(Faulty {
                inner,
                fault,
                triggered: AtomicBool::new(false),
            })
        }),
        Err(_) => tally_server::cli::main(),
    }
}

/// A store that passes everything to `inner` except the fault it was told to inject.
struct Faulty {
    inner: Box<dyn Store>,
    /// `engine-panic`, `engine-hang`, `notifier-panic` or `ping-hang`.
    fault: String,
    /// Whether the trigger was committed (for `ping-hang`).
    triggered: AtomicBool,
}

#[async_trait]
impl Store for Faulty {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn initialize(
        &self,
        owner: &str,
        owner_token_hash: &[u8; 32],
        now: i64,
    ) -> Result<Identity, StoreError> {
        self.inner.initialize(owner, owner_token_hash, now).await
    }

    async fn add_owner_token(
        &self,
        token_hash: &[u8; 32],
        now: i64,
        revoke_others: bool,
    ) -> Result<(String, u64), StoreError> {
        self.inner
            .add_owner_token(token_hash, now, revoke_others)
            .await
    }

    async fn find_token(&self, token_hash: &[u8; 32]) -> Result<Option<Token>, StoreError> {
        self.inner.find_token(token_hash).await
    }

    async fn load(&self) -> Result<Snapshot, StoreError> {
        self.inner.load().await
    }

    async fn commit(&self, batch: &Batch, fence: Fence) -> Result<(), StoreError> {
        if batch
            .entitlements_added
            .iter()
            .any(|e| e.reference == TRIGGER)
        {
            match self.fault.as_str() {
                "engine-panic" => panic!("injected fault: the commit panics"),
                "engine-hang" => std::future::pending::<()>().await,
                _ => {}
            }
            let committed = self.inner.commit(batch, fence).await;
            self.triggered.store(committed.is_ok(), Ordering::SeqCst);
            return committed;
        }
        self.inner.commit(batch, fence).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.fault == "ping-hang" && self.triggered.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.ping().await
    }

    async fn audit(
        &self,
        query: &AuditQuery,
        before: Option<u64>,
        max_bytes: usize,
    ) -> Result<AuditPage, StoreError> {
        self.inner.audit(query, before, max_bytes).await
    }

    async fn mark_delivered(&self, ids: &[i64], at: i64) -> Result<(), StoreError> {
        self.inner.mark_delivered(ids, at).await
    }

    async fn unsettled_notifications(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Notification)>, StoreError> {
        let pending = self.inner.unsettled_notifications(after, limit).await?;
        if self.fault == "notifier-panic" && pending.iter().any(|(_, n)| n.subject == TRIGGER_USER)
        {
            panic!("injected fault: the notifier panics");
        }
        Ok(pending)
    }

    async fn deliveries(&self, ids: &[i64]) -> Result<Vec<Delivery>, StoreError> {
        self.inner.deliveries(ids).await
    }

    async fn record_delivery(&self, delivery: &Delivery, now: i64) -> Result<(), StoreError> {
        self.inner.record_delivery(delivery, now).await
    }

    async fn delivery_summary(&self) -> Result<DeliverySummary, StoreError> {
        self.inner.delivery_summary().await
    }

    async fn usage_history(
        &self,
        feature: Option<&str>,
        since: i64,
        until: i64,
        by: tally_protocol::ReportPeriod,
        periods: &[tally_server::core::report::Period],
    ) -> Result<tally_server::core::report::UsageData, StoreError> {
        self.inner
            .usage_history(feature, since, until, by, periods)
            .await
    }

    async fn user_history(
        &self,
        feature: Option<&str>,
        since: i64,
        until: i64,
    ) -> Result<tally_server::core::report::UsersData, StoreError> {
        self.inner.user_history(feature, since, until).await
    }

    async fn meter_hours(
        &self,
        meter: Option<&str>,
        since: i64,
        until: i64,
    ) -> Result<Vec<tally_server::core::report::MeterHour>, StoreError> {
        self.inner.meter_hours(meter, since, until).await
    }

    async fn prune_history(&self, before: i64, limit: u32) -> Result<u64, StoreError> {
        self.inner.prune_history(before, limit).await
    }

    async fn close(&self) {
        self.inner.close().await
    }
}
