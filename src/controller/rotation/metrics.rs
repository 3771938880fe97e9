//! Rotation progress as Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::KeyKind;

/// Rotation progress as Prometheus metrics, registered in the shared registry.
#[derive(Debug)]
pub struct RotationMetrics {
    rotations: Family<KindLabel, Counter>,
    pub(super) reencrypted: Counter,
    pub(super) remaining: Gauge,
    pub(super) retired: Counter,
    pub(super) unreadable_records: Gauge,
    pub(super) unreadable_environments: Gauge,
    pub(super) dropped_environments: Counter,
    failures: Family<CategoryLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    key: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabel {
    category: &'static str,
}

impl RotationMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = RotationMetrics {
            rotations: Family::default(),
            reencrypted: Counter::default(),
            remaining: Gauge::default(),
            retired: Counter::default(),
            unreadable_records: Gauge::default(),
            unreadable_environments: Gauge::default(),
            dropped_environments: Counter::default(),
            failures: Family::default(),
        };
        for kind in [KeyKind::RootKey, KeyKind::DataKey, KeyKind::SealingKey] {
            metrics
                .rotations
                .get_or_create(&KindLabel { key: kind.as_str() })
                .inc_by(0);
        }
        registry.register(
            "key_rotations",
            "New key versions made current, by key kind",
            metrics.rotations.clone(),
        );
        registry.register(
            "reencrypted_records",
            "Item records moved to their environment's current data key",
            metrics.reencrypted.clone(),
        );
        registry.register(
            "reencrypt_remaining_records",
            "Item records still on an old data key, as of the last re-encryption pass",
            metrics.remaining.clone(),
        );
        registry.register(
            "retired_data_keys",
            "Data key versions destroyed after no record used them",
            metrics.retired.clone(),
        );
        registry.register(
            "unreadable_records",
            "Item record Secrets that could not be read at the last listing; their namespaces keep every data key",
            metrics.unreadable_records.clone(),
        );
        registry.register(
            "unreadable_environments",
            "Environment Secrets that could not be read at the last listing; every root key version is kept meanwhile",
            metrics.unreadable_environments.clone(),
        );
        registry.register(
            "dropped_environments",
            "Environments whose keys were dropped after their namespace was gone for the grace",
            metrics.dropped_environments.clone(),
        );
        registry.register(
            "rotation_check_failures",
            "Rotation steps that failed, by error category",
            metrics.failures.clone(),
        );
        metrics
    }

    pub(super) fn rotated(&self, kind: KeyKind) {
        self.rotations
            .get_or_create(&KindLabel { key: kind.as_str() })
            .inc();
    }

    pub(super) fn failed(&self, category: &'static str) {
        self.failures
            .get_or_create(&CategoryLabel { category })
            .inc();
    }
}
