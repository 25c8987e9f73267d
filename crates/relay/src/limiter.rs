//! Failed authentications, limited per source address; and, when
//! configured, callers' requests per API key.
//!
//! A credential is always checked first: a valid one is never refused by
//! this limiter, because many agents may share one NAT address with
//! whoever is guessing. Only the answer to a *failed* check changes: past
//! the budget (burst 20, then 5 per second per address) it is
//! `429 rate_limited` instead of `401`, and every failure is counted.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Failure budget per source address.
pub struct FailureLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    failures: AtomicU64,
    limited: AtomicU64,
}

impl Default for FailureLimiter {
    fn default() -> Self {
        const PER_SECOND: NonZeroU32 = NonZeroU32::new(5).expect("non-zero");
        const BURST: NonZeroU32 = NonZeroU32::new(20).expect("non-zero");
        Self {
            limiter: RateLimiter::keyed(Quota::per_second(PER_SECOND).allow_burst(BURST)),
            failures: AtomicU64::new(0),
            limited: AtomicU64::new(0),
        }
    }
}

impl FailureLimiter {
    /// Records a failed authentication from `addr`; returns whether the
    /// address is over its budget (answer 429 rather than 401).
    pub fn failed(&self, addr: IpAddr) -> bool {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if self.limiter.len() > 100_000 {
            self.limiter.retain_recent();
        }
        let over = self.limiter.check_key(&addr).is_err();
        if over {
            self.limited.fetch_add(1, Ordering::Relaxed);
        }
        over
    }

    /// Failed authentications seen, and how many of them were answered 429.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.failures.load(Ordering::Relaxed),
            self.limited.load(Ordering::Relaxed),
        )
    }
}

/// `[limits] caller_rate`: requests per second per API key (by its id),
/// with a burst.
pub struct CallerLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
    limited: AtomicU64,
}

impl CallerLimiter {
    /// A limiter allowing `rate` requests per second per key, `burst` at
    /// once; `None` when no rate is configured.
    pub fn new(rate: Option<u32>, burst: Option<u32>) -> Option<Self> {
        let rate = NonZeroU32::new(rate?)?;
        let burst = burst.and_then(NonZeroU32::new).unwrap_or(rate);
        Some(Self {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            limited: AtomicU64::new(0),
        })
    }

    /// Whether key `id` may make one more request now.
    pub fn admit(&self, id: &str) -> bool {
        if self.limiter.len() > 100_000 {
            self.limiter.retain_recent();
        }
        let ok = self.limiter.check_key(&id.to_owned()).is_ok();
        if !ok {
            self.limited.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Requests refused so far.
    pub fn limited(&self) -> u64 {
        self.limited.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_limited_per_address() {
        let limiter = FailureLimiter::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let limited = (0..30).filter(|_| limiter.failed(a)).count();
        assert!((9..=10).contains(&limited), "{limited} of 30 limited");
        assert!(!limiter.failed(b), "another address has its own budget");
        assert_eq!(limiter.counts().0, 31);
    }

    #[test]
    fn callers_are_limited_per_key_after_their_burst() {
        assert!(CallerLimiter::new(None, Some(5)).is_none());
        let limiter = CallerLimiter::new(Some(2), Some(5)).unwrap();
        let admitted = (0..20).filter(|_| limiter.admit("k1")).count();
        assert!((5..=6).contains(&admitted), "{admitted} of 20 admitted");
        assert!(limiter.admit("k2"), "another key has its own budget");
        assert_eq!(limiter.limited(), 20 - admitted as u64);
    }
}
