//! The operator's Prometheus metrics (prometheus-client, OpenMetrics text).
//!
//! Every family lives in one [`Registry`] made by [`registry`], so each name starts with
//! `monivault_`. Other parts register their own families into the same registry before the
//! server starts, the way [`Metrics::new`] does.
//!
//! A family without series is not exposed at all: `monivault_reconcile_errors` appears with
//! the first error, and the gauges the leader computes (`monivault_items`,
//! `monivault_key_versions_in_use`) only on the leader, so summing them over replicas
//! counts each item once.
//!
//! Labels are low-cardinality words only: a resource kind, an item state, an error
//! category (the controller's `Error::category`), a key kind. Never an object name
//! (unbounded) and never error text (it may name anything).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Every family's name starts with this and an underscore.
pub const PREFIX: &str = "monivault";

/// The kinds the controller reconciles; their counters start at 0, so a replica that has
/// not reconciled yet (a follower) says so instead of showing nothing.
pub const RECONCILED_KINDS: [&str; 2] = ["VaultItem", "VaultSection"];

/// The registry every part registers its metric families in.
pub fn registry() -> Registry {
    Registry::with_prefix(PREFIX)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: &'static str,
    category: &'static str,
}

/// A VaultItem's state, from its Ready condition.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ItemState {
    Ready,
    NotReady,
    Unknown,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: ItemState,
}

/// How many VaultItems are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ItemCounts {
    pub ready: i64,
    pub not_ready: i64,
    pub unknown: i64,
}

impl ItemCounts {
    pub fn add(&mut self, state: ItemState) {
        match state {
            ItemState::Ready => self.ready += 1,
            ItemState::NotReady => self.not_ready += 1,
            ItemState::Unknown => self.unknown += 1,
        }
    }
}

/// The operator's own metrics. Cheap to update; share it behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    reconciles: Family<KindLabel, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    items: Family<StateLabel, Gauge>,
    ingests: Counter,
    is_leader: Gauge,
    key_versions: Family<KindLabel, Gauge>,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` (made by [`registry`]).
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            items: Family::default(),
            ingests: Counter::default(),
            is_leader: Gauge::default(),
            key_versions: Family::default(),
        };
        for kind in RECONCILED_KINDS {
            metrics
                .reconciles
                .get_or_create(&KindLabel { kind })
                .inc_by(0);
        }
        registry.register(
            "reconciles",
            "Reconciles started, by resource kind",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by resource kind and error category",
            metrics.reconcile_errors.clone(),
        );
        registry.register(
            "items",
            "VaultItems in the watched namespaces, by the state of their Ready condition (set by the leader)",
            metrics.items.clone(),
        );
        registry.register(
            "ingests",
            "Item records written to the store from sealed values",
            metrics.ingests.clone(),
        );
        registry.register(
            "is_leader",
            "1 while this replica holds the leader Lease, else 0",
            metrics.is_leader.clone(),
        );
        registry.register(
            "key_versions_in_use",
            "Environment key versions held in the keyring, summed over environments, by key kind (set by the leader)",
            metrics.key_versions.clone(),
        );
        metrics
    }

    pub fn reconciled(&self, kind: &'static str) {
        self.reconciles.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn reconcile_failed(&self, kind: &'static str, category: &'static str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels { kind, category })
            .inc();
    }

    pub fn ingested(&self) {
        self.ingests.inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.is_leader.set(i64::from(leader));
    }

    pub fn set_items(&self, counts: ItemCounts) {
        for (state, n) in [
            (ItemState::Ready, counts.ready),
            (ItemState::NotReady, counts.not_ready),
            (ItemState::Unknown, counts.unknown),
        ] {
            self.items.get_or_create(&StateLabel { state }).set(n);
        }
    }

    /// Key versions held in the keyring: `kind` is `data` or `sealing`.
    pub fn set_key_versions(&self, kind: &'static str, versions: usize) {
        self.key_versions
            .get_or_create(&KindLabel { kind })
            .set(i64::try_from(versions).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        encode(&mut out, registry).expect("encode");
        out
    }

    #[test]
    fn families_are_prefixed_and_counters_start_at_zero() {
        let mut registry = registry();
        let metrics = Metrics::new(&mut registry);
        let out = text(&registry);
        for line in [
            "monivault_reconciles_total{kind=\"VaultItem\"} 0",
            "monivault_reconciles_total{kind=\"VaultSection\"} 0",
            "monivault_ingests_total 0",
            "monivault_is_leader 0",
        ] {
            assert!(out.contains(line), "{line:?} missing from\n{out}");
        }
        // Only the leader knows these.
        assert!(!out.contains("monivault_items"), "{out}");
        assert!(!out.contains("monivault_key_versions_in_use"), "{out}");

        metrics.reconciled("VaultItem");
        metrics.reconcile_failed("VaultItem", "kube");
        metrics.ingested();
        metrics.set_leader(true);
        metrics.set_items(ItemCounts {
            ready: 2,
            not_ready: 1,
            unknown: 0,
        });
        metrics.set_key_versions("data", 3);
        let out = text(&registry);
        for line in [
            "monivault_reconciles_total{kind=\"VaultItem\"} 1",
            "monivault_reconcile_errors_total{kind=\"VaultItem\",category=\"kube\"} 1",
            "monivault_items{state=\"Ready\"} 2",
            "monivault_items{state=\"NotReady\"} 1",
            "monivault_items{state=\"Unknown\"} 0",
            "monivault_ingests_total 1",
            "monivault_is_leader 1",
            "monivault_key_versions_in_use{kind=\"data\"} 3",
        ] {
            assert!(out.contains(line), "{line:?} missing from\n{out}");
        }
    }

    #[test]
    fn item_counts_add_up_by_state() {
        let mut counts = ItemCounts::default();
        for state in [ItemState::Ready, ItemState::Ready, ItemState::Unknown] {
            counts.add(state);
        }
        assert_eq!(
            counts,
            ItemCounts {
                ready: 2,
                not_ready: 0,
                unknown: 1
            }
        );
    }
}
