//! Status conditions, the Kubernetes way (`type`, `status`, `reason`, `message`,
//! `lastTransitionTime`, `observedGeneration`).
//!
//! The type is k8s-openapi's own `Condition`, so kubectl, `kubectl wait --for=condition=Ready`
//! and dashboards read ours like any other. Condition messages are user-visible: callers must
//! never put a secret, key or plaintext in them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// The condition every monivault resource reports: whether it is usable.
pub const READY: &str = "Ready";

/// The three values a condition's `status` may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(ok: bool) -> Self {
        if ok {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

/// Builds a condition. `reason` should be a short CamelCase word (`Ingested`,
/// `SealedValueDoesNotOpen`); `message` is for humans and must hold no secret.
pub fn new_condition(
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: status.as_str().to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation,
        last_transition_time: now,
    }
}

/// The condition of type `type_`, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the `Ready` condition is `True`.
pub fn is_ready(conditions: &[Condition]) -> bool {
    find_condition(conditions, READY).is_some_and(|c| c.status == ConditionStatus::True.as_str())
}

/// Inserts or replaces the condition of the same type. When its status does not change,
/// the old `lastTransitionTime` is kept: the field says when the status last flipped, and
/// rewriting it on every reconcile would make each status write a change.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn set_condition_keeps_transition_time_while_status_holds() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            new_condition(
                READY,
                ConditionStatus::True,
                "Ingested",
                "ok",
                Some(1),
                at(10),
            ),
        );
        set_condition(
            &mut conditions,
            new_condition(
                READY,
                ConditionStatus::True,
                "Ingested",
                "still ok",
                Some(2),
                at(20),
            ),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, at(10));
        assert_eq!(conditions[0].message, "still ok");
        assert_eq!(conditions[0].observed_generation, Some(2));
        assert!(is_ready(&conditions));

        set_condition(
            &mut conditions,
            new_condition(
                READY,
                ConditionStatus::False,
                "SealedValueDoesNotOpen",
                "no",
                Some(3),
                at(30),
            ),
        );
        assert_eq!(conditions[0].last_transition_time, at(30));
        assert!(!is_ready(&conditions));
    }

    #[test]
    fn other_condition_types_are_kept_apart() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            new_condition(READY, true.into(), "A", "", None, at(1)),
        );
        set_condition(
            &mut conditions,
            new_condition("Rotating", false.into(), "B", "", None, at(2)),
        );
        assert_eq!(conditions.len(), 2);
        assert_eq!(
            find_condition(&conditions, "Rotating").map(|c| c.reason.as_str()),
            Some("B")
        );
    }
}
