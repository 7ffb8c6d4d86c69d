//! `/metrics` (SPEC §10): the node's counters, which the engine adds to after each commit,
//! and the pool's gauges, read from the engine at scrape time, encoded by
//! `prometheus-client` in the OpenMetrics text format Prometheus reads.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tally_protocol::FeatureFigures;

use crate::core::{Gauges, Tallies};

/// The content type of what [`Metrics::encode`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A feature's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeatureLabel {
    feature: String,
}

/// A meter's series (SPEC §11).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MeterLabel {
    meter: String,
}

/// A denial's series: the feature and the error code (`no_seat`, `denied`,
/// `queue_timeout`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DenialLabels {
    feature: String,
    reason: String,
}

/// An entitlement's end.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EntitlementLabels {
    feature: String,
    entitlement: String,
}

/// What this process counted since it started (Prometheus expects counters to restart
/// with the process). Cheap to share: every metric is a handle on atomics.
#[derive(Debug)]
pub struct Metrics {
    /// Checkouts, queued checkouts and borrows granted, by feature.
    checkouts: Family<FeatureLabel, Counter>,
    /// Checkouts, queued checkouts and borrows refused `no_seat`, `denied` or
    /// `queue_timeout`, by feature and code.
    denials: Family<DenialLabels, Counter>,
    /// How long the engine's commits took.
    commit_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            checkouts: Family::default(),
            denials: Family::default(),
            // 100 µs to about 3 s.
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
        }
    }
}

/// What the node itself knows, whether or not it holds the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeFigures {
    /// Protocol connections open now.
    pub connections: u64,
    /// Whether this node serves the pool (a single node always does).
    pub leader: bool,
    /// The epoch it serves under (0 for a single node); `None` on a standby.
    pub epoch: Option<i64>,
}

impl Metrics {
    /// Adds what a committed batch granted and refused.
    pub fn count(&self, tallies: &Tallies) {
        for (feature, n) in &tallies.grants {
            let labels = FeatureLabel {
                feature: feature.clone(),
            };
            self.checkouts.get_or_create(&labels).inc_by(*n);
        }
        for ((feature, reason), n) in &tallies.denials {
            let labels = DenialLabels {
                feature: feature.clone(),
                reason: reason.to_string(),
            };
            self.denials.get_or_create(&labels).inc_by(*n);
        }
    }

    /// Records how long one commit took.
    pub fn observe_commit(&self, took: Duration) {
        self.commit_seconds.observe(took.as_secs_f64());
    }

    /// The text of one scrape: the counters, the node's figures and, when this node holds
    /// the pool, its gauges.
    pub fn encode(&self, node: NodeFigures, pool: Option<&Gauges>) -> String {
        let mut registry = Registry::default();
        registry.register(
            "tally_checkouts",
            "Checkouts, queued checkouts and borrows granted since the process started",
            self.checkouts.clone(),
        );
        registry.register(
            "tally_denials",
            "Checkouts, queued checkouts and borrows refused no_seat, denied or queue_timeout since the process started",
            self.denials.clone(),
        );
        registry.register(
            "tally_commit_seconds",
            "How long the engine's store commits took",
            self.commit_seconds.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str, value: i64| {
            let gauge: Gauge = Gauge::default();
            gauge.set(value);
            registry.register(name, help, gauge);
        };
        gauge(
            &mut registry,
            "tally_connections",
            "Protocol connections open now",
            node.connections as i64,
        );
        gauge(
            &mut registry,
            "tally_leader",
            "1 while this node serves the pool (a single node always does), else 0",
            node.leader as i64,
        );
        if let Some(epoch) = node.epoch {
            gauge(
                &mut registry,
                "tally_epoch",
                "The epoch this node serves under (0 for a single node)",
                epoch,
            );
        }
        if let Some(pool) = pool {
            register_pool(&mut registry, pool);
        }
        let mut text = String::new();
        encode(&mut text, &registry).expect("writing to a String cannot fail");
        text
    }
}

/// One of a feature's figures.
type Figure = fn(&FeatureFigures) -> u32;

/// The pool's gauges: per feature the figures of `tally status`, the entitlements' ends,
/// the active users.
fn register_pool(registry: &mut Registry, pool: &Gauges) {
    let per_feature: [(&str, &str, Figure); 7] = [
        (
            "tally_seats_total",
            "The pool: seats of the entitlements active now",
            |f| f.status.total,
        ),
        (
            "tally_seats_assigned",
            "Seats assigned to active users",
            |f| f.status.assigned,
        ),
        (
            "tally_seats_in_use",
            "Seats of online leases, floating and assigned",
            |f| f.status.in_use,
        ),
        (
            "tally_seats_borrowed",
            "Seats of borrowed leases, floating and assigned",
            |f| f.status.borrowed,
        ),
        (
            "tally_seats_available",
            "Floating seats a new checkout could get now",
            |f| f.status.available,
        ),
        (
            "tally_seats_reserved",
            "Seats reserve rules keep unused for their groups",
            |f| f.reserved,
        ),
        (
            "tally_queue_seats",
            "Seats waited for by queued checkouts",
            |f| f.status.queued,
        ),
    ];
    for (name, help, value) in per_feature {
        let family = Family::<FeatureLabel, Gauge>::default();
        for figures in &pool.figures {
            let labels = FeatureLabel {
                feature: figures.status.feature.clone(),
            };
            family.get_or_create(&labels).set(value(figures) as i64);
        }
        registry.register(name, help, family);
    }
    let expiries = Family::<EntitlementLabels, Gauge<f64, AtomicU64>>::default();
    for (feature, id, ends) in &pool.expiries {
        let labels = EntitlementLabels {
            feature: feature.clone(),
            entitlement: id.to_string(),
        };
        expiries.get_or_create(&labels).set(*ends as f64 / 1000.0);
    }
    registry.register(
        "tally_entitlement_expiry_timestamp_seconds",
        "When each entitlement that ends ends, in Unix seconds",
        expiries,
    );
    let users: Gauge = Gauge::default();
    users.set(pool.users_active as i64);
    registry.register("tally_users_active", "Accounts in state active", users);
    let balances = Family::<MeterLabel, Gauge>::default();
    // Taken from the purchases, what every consumption since the first left in them: it
    // only grows, and a restart or failover does not reset it.
    let consumed = Family::<MeterLabel, Counter>::default();
    for meter in &pool.meters {
        let labels = MeterLabel {
            meter: meter.meter.clone(),
        };
        balances
            .get_or_create(&labels)
            .set(i64::try_from(meter.balance).unwrap_or(i64::MAX));
        consumed.get_or_create(&labels).inc_by(meter.consumed);
    }
    registry.register(
        "tally_credits_balance",
        "Credits a meter's pool holds now (bought, less consumed and expired)",
        balances,
    );
    registry.register(
        "tally_credits_consumed",
        "Credits consumed of a meter",
        consumed,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_protocol::FeatureStatus;

    /// Every name the SPEC lists is there with its value; a standby exports only the
    /// node's own.
    #[test]
    fn the_text_holds_every_metric_of_the_spec() {
        let metrics = Metrics::default();
        let mut tallies = Tallies::default();
        tallies.grants.insert("vray".into(), 3);
        tallies.denials.insert(("vray".into(), "no_seat"), 2);
        metrics.count(&tallies);
        metrics.count(&tallies);
        metrics.observe_commit(Duration::from_millis(2));
        let pool = Gauges {
            figures: vec![FeatureFigures {
                status: FeatureStatus {
                    feature: "vray".into(),
                    total: 10,
                    assigned: 2,
                    floating: 8,
                    in_use: 4,
                    borrowed: 1,
                    available: 2,
                    queued: 5,
                },
                reserved: 1,
            }],
            expiries: vec![("vray".into(), 7, 1_700_000_000_500)],
            users_active: 3,
            meters: vec![tally_protocol::MeterInfo {
                meter: "cloud".into(),
                purchased: 100,
                consumed: 80,
                expired: 5,
                balance: 15,
            }],
        };
        let node = NodeFigures {
            connections: 6,
            leader: true,
            epoch: Some(4),
        };
        let text = metrics.encode(node, Some(&pool));
        for line in [
            "tally_checkouts_total{feature=\"vray\"} 6",
            "tally_denials_total{feature=\"vray\",reason=\"no_seat\"} 4",
            "tally_commit_seconds_count 1",
            "tally_seats_total{feature=\"vray\"} 10",
            "tally_seats_assigned{feature=\"vray\"} 2",
            "tally_seats_in_use{feature=\"vray\"} 4",
            "tally_seats_borrowed{feature=\"vray\"} 1",
            "tally_seats_available{feature=\"vray\"} 2",
            "tally_seats_reserved{feature=\"vray\"} 1",
            "tally_queue_seats{feature=\"vray\"} 5",
            "tally_entitlement_expiry_timestamp_seconds{feature=\"vray\",entitlement=\"7\"} 1700000000.5",
            "tally_users_active 3",
            "tally_credits_balance{meter=\"cloud\"} 15",
            "tally_credits_consumed_total{meter=\"cloud\"} 80",
            "tally_connections 6",
            "tally_leader 1",
            "tally_epoch 4",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        let standby = NodeFigures {
            connections: 0,
            leader: false,
            epoch: None,
        };
        let text = metrics.encode(standby, None);
        assert!(text.contains("tally_leader 0"), "{text}");
        assert!(!text.contains("tally_seats_total"), "{text}");
        assert!(!text.contains("tally_epoch"), "{text}");
    }
}
