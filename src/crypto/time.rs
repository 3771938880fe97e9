//! Key times: Unix milliseconds.
//!
//! Whole seconds were not enough: a rotation asked for in the same second as the current
//! key was made compared "made before the request" as false and did nothing. Policies
//! (ages, retention) stay in seconds; only the moments need the finer grain.

use serde::{Deserialize, Serialize};

/// A moment, as milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnixMillis(i64);

impl UnixMillis {
    pub const fn from_millis(millis: i64) -> Self {
        UnixMillis(millis)
    }

    /// The start of a whole second (how keyrings before format 2 dated their keys).
    pub const fn from_secs(secs: i64) -> Self {
        UnixMillis(secs.saturating_mul(1000))
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// The whole second this moment falls in.
    pub const fn as_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// `self` moved later by `d`, saturating.
    pub fn plus(self, d: std::time::Duration) -> Self {
        let millis = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        UnixMillis(self.0.saturating_add(millis))
    }

    /// How long from `self` until `later`; zero if `later` is not later.
    pub fn until(self, later: UnixMillis) -> std::time::Duration {
        std::time::Duration::from_millis(later.0.saturating_sub(self.0).max(0).unsigned_abs())
    }

    /// Whole seconds from `earlier` to `self`; negative if `earlier` is later.
    pub const fn secs_since(self, earlier: UnixMillis) -> i64 {
        self.0.saturating_sub(earlier.0) / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_down_and_ages_count_whole_seconds() {
        let t = UnixMillis::from_millis(1_700_000_000_999);
        assert_eq!(t.as_secs(), 1_700_000_000);
        assert_eq!(UnixMillis::from_millis(-1).as_secs(), -1);
        assert_eq!(UnixMillis::from_secs(5).as_millis(), 5_000);
        assert_eq!(t.secs_since(UnixMillis::from_millis(1_699_999_999_000)), 1);
        assert_eq!(t.secs_since(UnixMillis::from_millis(1_700_000_000_001)), 0);
        assert_eq!(
            UnixMillis::from_secs(1).secs_since(UnixMillis::from_secs(3)),
            -2
        );
        assert_eq!(UnixMillis::from_secs(i64::MAX).as_millis(), i64::MAX);
        let later = t.plus(std::time::Duration::from_millis(1_500));
        assert_eq!(later.as_millis(), 1_700_000_002_499);
        assert_eq!(t.until(later), std::time::Duration::from_millis(1_500));
        assert_eq!(later.until(t), std::time::Duration::ZERO);
        assert_eq!(t.plus(std::time::Duration::MAX).as_millis(), i64::MAX);
    }

    #[test]
    fn serializes_as_a_bare_number() {
        let t = UnixMillis::from_millis(1_700_000_000_123);
        assert_eq!(
            serde_json::to_string(&t).ok().as_deref(),
            Some("1700000000123")
        );
    }
}
