//! A short-lived cache of access review answers, so that a burst of monitor writes does not
//! send the same SubjectAccessReview through the API server again and again.
//!
//! The price is staleness, and it is bounded: an answer is used for at most the TTL after
//! it was given. So a revoked `use` (a RoleBinding deleted) still admits that user's writes
//! for up to the TTL, and a new grant takes up to the TTL to count. The API server's own
//! delegating authorizer caches both answers for 10 s the same way; kubewarden for 5 s.
//! A TTL of zero turns the cache off.
//!
//! The key is the whole question: every field of the user's identity (name, uid, groups
//! and extra, exactly as the API server sent them) and the whole access check, hashed with
//! SHA-256 so that an entry costs the same whatever the size of the user's groups. Two
//! requests share an answer only when a review for either would have asked the same.
//! Errors are never cached.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::UserInfo;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::authorize::{AccessCheck, AuthorizeError, Authorizer};

/// The longest TTL the flag accepts: it is how long a revoked `use` still admits.
pub const MAX_TTL: Duration = Duration::from_secs(60);

/// Answers held at most (about 50 bytes each). Past it, expired answers go; if that frees
/// too little, all do, so a flood of distinct questions costs one sweep per
/// [`MAX_ENTRIES`] / 10 insertions, not one per insertion.
pub const MAX_ENTRIES: usize = 10_000;

/// Parses `--access-review-cache-ttl`: a period (e.g. `10s`, `0s`) of at most [`MAX_TTL`].
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = crate::api::duration::parse_period(text)?;
    if ttl > MAX_TTL {
        return Err(format!(
            "{text:?} is longer than {}s: a revoked `use` would still admit for that long",
            MAX_TTL.as_secs()
        ));
    }
    Ok(ttl)
}

/// Everything a review asks, in a fixed order (`extra` is sorted by key).
#[derive(Serialize)]
struct Question<'a> {
    username: Option<&'a str>,
    uid: Option<&'a str>,
    groups: Option<&'a [String]>,
    extra: Option<&'a BTreeMap<String, Vec<String>>>,
    verb: &'a str,
    namespace: &'a str,
    resource: &'static str,
    name: &'a str,
}

/// The question's SHA-256; `None` if it cannot be serialized (then nothing is cached).
fn question_key(user: &UserInfo, check: &AccessCheck<'_>) -> Option<[u8; 32]> {
    let question = Question {
        username: user.username.as_deref(),
        uid: user.uid.as_deref(),
        groups: user.groups.as_deref(),
        extra: user.extra.as_ref(),
        verb: check.verb,
        namespace: check.namespace,
        resource: check.resource.as_str(),
        name: check.name,
    };
    let bytes = serde_json::to_vec(&question).ok()?;
    Some(Sha256::digest(&bytes).into())
}

/// Where the cache reads the time; tests move it by hand.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The monotonic clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// An [`Authorizer`] that remembers `inner`'s answers for a TTL.
pub struct CachingAuthorizer<A, C = MonotonicClock> {
    inner: A,
    ttl: Duration,
    clock: C,
    answers: Mutex<HashMap<[u8; 32], (bool, Instant)>>,
}

impl<A> CachingAuthorizer<A> {
    /// `ttl` zero: every question goes to `inner`.
    pub fn new(inner: A, ttl: Duration) -> Self {
        CachingAuthorizer::with_clock(inner, ttl, MonotonicClock)
    }
}

impl<A, C> CachingAuthorizer<A, C> {
    pub fn with_clock(inner: A, ttl: Duration, clock: C) -> Self {
        CachingAuthorizer {
            inner,
            ttl,
            clock,
            answers: Mutex::new(HashMap::new()),
        }
    }

    /// The authorizer behind the cache, for questions that must be asked afresh.
    pub fn uncached(&self) -> &A {
        &self.inner
    }

    pub fn into_inner(self) -> A {
        self.inner
    }

    fn cached(&self, key: &[u8; 32], now: Instant) -> Option<bool> {
        let answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        answers
            .get(key)
            .filter(|(_, at)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(allowed, _)| *allowed)
    }

    fn remember(&self, key: [u8; 32], allowed: bool, asked: Instant) {
        let mut answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        if answers.len() >= MAX_ENTRIES {
            let (ttl, now) = (self.ttl, asked);
            answers.retain(|_, (_, given)| now.saturating_duration_since(*given) < ttl);
            if answers.len() >= MAX_ENTRIES - MAX_ENTRIES / 10 {
                answers.clear();
            }
        }
        // A slow answer never replaces one asked for later.
        let newer = answers.get(&key).is_some_and(|(_, given)| *given > asked);
        if !newer {
            answers.insert(key, (allowed, asked));
        }
    }
}

impl<A: Authorizer, C: Clock> Authorizer for CachingAuthorizer<A, C> {
    async fn allowed(
        &self,
        user: &UserInfo,
        check: &AccessCheck<'_>,
    ) -> Result<bool, AuthorizeError> {
        if self.ttl.is_zero() {
            return self.inner.allowed(user, check).await;
        }
        let Some(key) = question_key(user, check) else {
            return self.inner.allowed(user, check).await;
        };
        let asked = self.clock.now();
        if let Some(allowed) = self.cached(&key, asked) {
            return Ok(allowed);
        }
        // Dated before asking, so an answer is never used longer than the TTL after the
        // API server gave it.
        let allowed = self.inner.allowed(user, check).await?;
        self.remember(key, allowed, asked);
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;
    use crate::webhook::{USE_VERB, VaultResource};

    /// A clock that moves only when told.
    struct ManualClock(Mutex<Instant>);

    impl ManualClock {
        fn new() -> Self {
            ManualClock(Mutex::new(Instant::now()))
        }

        fn advance(&self, by: Duration) {
            *self.0.lock().unwrap_or_else(PoisonError::into_inner) += by;
        }
    }

    impl Clock for &ManualClock {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap_or_else(PoisonError::into_inner)
        }
    }

    /// Allows whatever `allow` says now, and counts the questions.
    #[derive(Default)]
    struct Counting {
        allow: AtomicBool,
        fail: AtomicBool,
        asked: AtomicUsize,
    }

    impl Authorizer for &Counting {
        async fn allowed(&self, _: &UserInfo, _: &AccessCheck<'_>) -> Result<bool, AuthorizeError> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err(AuthorizeError::Other("the API server is away".into()));
            }
            Ok(self.allow.load(Ordering::SeqCst))
        }
    }

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            username: Some(name.into()),
            groups: Some(groups.iter().map(|g| (*g).to_owned()).collect()),
            ..UserInfo::default()
        }
    }

    fn check(name: &str) -> AccessCheck<'_> {
        AccessCheck {
            verb: USE_VERB,
            namespace: "shop",
            resource: VaultResource::VaultSections,
            name,
        }
    }

    #[tokio::test]
    async fn a_revoked_grant_counts_once_the_ttl_is_over() {
        let inner = Counting::default();
        inner.allow.store(true, Ordering::SeqCst);
        let clock = ManualClock::new();
        let cache = CachingAuthorizer::with_clock(&inner, Duration::from_secs(10), &clock);
        let alice = user("alice", &["dev"]);
        assert!(cache.allowed(&alice, &check("checkout")).await.unwrap());
        inner.allow.store(false, Ordering::SeqCst); // the RoleBinding is deleted
        clock.advance(Duration::from_millis(9_999));
        assert!(
            cache.allowed(&alice, &check("checkout")).await.unwrap(),
            "within the TTL, the answer given stands"
        );
        assert_eq!(inner.asked.load(Ordering::SeqCst), 1);
        clock.advance(Duration::from_millis(1));
        assert!(
            !cache.allowed(&alice, &check("checkout")).await.unwrap(),
            "after it, the revocation counts"
        );
        assert_eq!(inner.asked.load(Ordering::SeqCst), 2);
        // A denial is kept for the TTL too, then asked again.
        inner.allow.store(true, Ordering::SeqCst);
        assert!(!cache.allowed(&alice, &check("checkout")).await.unwrap());
        clock.advance(Duration::from_secs(10));
        assert!(cache.allowed(&alice, &check("checkout")).await.unwrap());
    }

    #[tokio::test]
    async fn only_the_very_same_question_shares_an_answer() {
        let inner = Counting::default();
        inner.allow.store(true, Ordering::SeqCst);
        let cache = CachingAuthorizer::new(&inner, Duration::from_secs(10));
        let asks = [
            (user("alice", &["dev"]), check("checkout")),
            (user("alice", &["dev", "ops"]), check("checkout")),
            (user("alice", &[]), check("checkout")),
            (user("mallory", &["dev"]), check("checkout")),
            (
                UserInfo {
                    uid: Some("u-2".into()),
                    ..user("alice", &["dev"])
                },
                check("checkout"),
            ),
            (
                UserInfo {
                    extra: Some(BTreeMap::from([("scopes".into(), vec!["x".into()])])),
                    ..user("alice", &["dev"])
                },
                check("checkout"),
            ),
            (user("alice", &["dev"]), check("billing")),
            (
                user("alice", &["dev"]),
                AccessCheck {
                    resource: VaultResource::VaultItems,
                    ..check("checkout")
                },
            ),
            (
                user("alice", &["dev"]),
                AccessCheck {
                    namespace: "other",
                    ..check("checkout")
                },
            ),
            (
                user("alice", &["dev"]),
                AccessCheck {
                    verb: "allowhosts",
                    ..check("checkout")
                },
            ),
        ];
        for (who, what) in &asks {
            cache.allowed(who, what).await.unwrap();
        }
        assert_eq!(inner.asked.load(Ordering::SeqCst), asks.len());
        for (who, what) in &asks {
            cache.allowed(who, what).await.unwrap();
        }
        assert_eq!(
            inner.asked.load(Ordering::SeqCst),
            asks.len(),
            "each asked once"
        );
    }

    #[test]
    fn a_slow_answer_never_replaces_a_newer_one() {
        let inner = Counting::default();
        let clock = ManualClock::new();
        let cache = CachingAuthorizer::with_clock(&inner, Duration::from_secs(10), &clock);
        let key = question_key(&user("alice", &[]), &check("checkout")).expect("key");
        let t0 = (&clock).now();
        cache.remember(key, false, t0 + Duration::from_secs(2));
        cache.remember(key, true, t0);
        assert_eq!(cache.cached(&key, t0 + Duration::from_secs(3)), Some(false));
    }

    #[test]
    fn the_ttl_flag_is_bounded() {
        assert_eq!(parse_ttl("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_ttl("1m"), Ok(MAX_TTL));
        let err = parse_ttl("61s").expect_err("too long");
        assert!(err.contains("60s"), "{err}");
        assert!(parse_ttl("soon").is_err());
    }

    #[tokio::test]
    async fn errors_are_not_kept_and_a_zero_ttl_keeps_nothing() {
        let inner = Counting::default();
        inner.fail.store(true, Ordering::SeqCst);
        let cache = CachingAuthorizer::new(&inner, Duration::from_secs(10));
        let alice = user("alice", &[]);
        assert!(cache.allowed(&alice, &check("checkout")).await.is_err());
        inner.fail.store(false, Ordering::SeqCst);
        assert!(!cache.allowed(&alice, &check("checkout")).await.unwrap());
        assert_eq!(inner.asked.load(Ordering::SeqCst), 2);

        let off = CachingAuthorizer::new(&inner, Duration::ZERO);
        for _ in 0..3 {
            off.allowed(&alice, &check("checkout")).await.unwrap();
        }
        assert_eq!(inner.asked.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn the_cache_never_holds_more_than_its_bound() {
        let inner = Counting::default();
        let cache = CachingAuthorizer::new(&inner, Duration::from_secs(10));
        let alice = user("alice", &[]);
        for i in 0..MAX_ENTRIES + 5 {
            let name = format!("s{i}");
            cache.allowed(&alice, &check(&name)).await.unwrap();
        }
        let held = cache
            .answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        assert!(held <= MAX_ENTRIES, "{held}");
        assert!(held >= 5, "the newest answers are kept: {held}");
    }
}
