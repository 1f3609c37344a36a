//! Per-caller token buckets: the 429 row. A caller is its `sub` within its enterprise, so
//! one noisy client never slows another.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::{EnterpriseId, UserRef};

/// Buckets kept before idle, full ones are forgotten (they carry no information).
const PRUNE_ABOVE: usize = 50_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<(Option<EnterpriseId>, UserRef), Bucket>>,
}

impl RateLimiter {
    /// `per_second` tokens refill continuously up to `burst`; each RPC takes one.
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::default(),
        }
    }

    /// Takes a token for the caller `subject` of `enterprise`, or says how long until one
    /// is there.
    pub fn check(
        &self,
        enterprise: Option<EnterpriseId>,
        subject: UserRef,
    ) -> Result<(), Duration> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        // A poisoned lock only means another thread panicked mid-update of plain numbers.
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            let (per_second, burst) = (self.per_second, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.refilled_at).as_secs_f64() * per_second < burst
            });
        }
        let bucket = buckets.entry((enterprise, subject)).or_insert(Bucket {
            tokens: self.burst,
            refilled_at: now,
        });
        let refill = now.duration_since(bucket.refilled_at).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.refilled_at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        limiter: &RateLimiter,
        (enterprise, subject): (Option<EnterpriseId>, UserRef),
    ) -> Result<(), Duration> {
        limiter.check(enterprise, subject)
    }

    fn caller(enterprise: u128, subject: u128) -> (Option<EnterpriseId>, UserRef) {
        (
            Some(EnterpriseId::from_uuid(uuid::Uuid::from_u128(enterprise))),
            UserRef::from_uuid(uuid::Uuid::from_u128(subject)),
        )
    }

    #[test]
    fn a_burst_then_a_real_delay_per_caller() {
        let limiter = RateLimiter::new(2, 3);
        let alice = caller(1, 1);
        for _ in 0..3 {
            assert_eq!(check(&limiter, alice), Ok(()));
        }
        let delay = check(&limiter, alice).expect_err("over the burst");
        assert!(
            delay > Duration::from_millis(400) && delay <= Duration::from_millis(500),
            "{delay:?}"
        );
        // The same subject in another enterprise, and another subject, are other callers.
        assert_eq!(check(&limiter, caller(2, 1)), Ok(()));
        assert_eq!(check(&limiter, caller(1, 2)), Ok(()));
    }

    #[test]
    fn zero_rate_disables_limiting() {
        let limiter = RateLimiter::new(0, 1);
        for _ in 0..100 {
            assert_eq!(check(&limiter, caller(1, 1)), Ok(()));
        }
    }
}
