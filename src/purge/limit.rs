//! [`RateLimit`]: the purge endpoint's token bucket.

use std::time::Duration;

use tokio::time::Instant;

use super::layer::{PurgeConfigError, PurgeConfigErrorKind};

/// A token bucket for purge requests, as CDN purge APIs have: up to `burst` purges at once,
/// then `per_second` more each second. Shared by every service a
/// [`PurgeLayer`](super::PurgeLayer) makes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub(crate) burst: f64,
    pub(crate) per_second: f64,
}

impl RateLimit {
    /// The default: bursts of 20 purges, 5 more per second.
    pub const DEFAULT: RateLimit = RateLimit {
        burst: 20.0,
        per_second: 5.0,
    };

    /// A bucket of `burst` tokens refilled at `per_second` tokens a second.
    ///
    /// # Errors
    ///
    /// [`PurgeConfigError`] if `burst` is 0 or `per_second` is not a positive, finite number.
    pub fn new(burst: u32, per_second: f64) -> Result<Self, PurgeConfigError> {
        if burst == 0 {
            return Err(PurgeConfigError::new(
                PurgeConfigErrorKind::RateLimit,
                "rate limit burst must be at least 1",
            ));
        }
        if !(per_second.is_finite() && per_second > 0.0) {
            return Err(PurgeConfigError::new(
                PurgeConfigErrorKind::RateLimit,
                "rate limit refill must be a positive, finite number per second",
            ));
        }
        Ok(RateLimit {
            burst: f64::from(burst),
            per_second,
        })
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[derive(Debug)]
pub(crate) struct Bucket {
    limit: RateLimit,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub(crate) fn new(limit: RateLimit) -> Self {
        Bucket {
            limit,
            tokens: limit.burst,
            last: Instant::now(),
        }
    }

    /// Takes a token, or says how long until one is there.
    pub(crate) fn take(&mut self) -> Result<(), Duration> {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.limit.per_second).min(self.limit.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.limit.per_second,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_limits_are_refused() {
        assert!(RateLimit::new(0, 1.0).is_err());
        assert!(RateLimit::new(1, 0.0).is_err());
        assert!(RateLimit::new(1, f64::NAN).is_err());
        assert!(RateLimit::new(1, f64::INFINITY).is_err());
        assert!(RateLimit::new(1, 0.5).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn bursts_then_refills() {
        let mut bucket = Bucket::new(RateLimit::new(3, 2.0).unwrap());
        for _ in 0..3 {
            assert!(bucket.take().is_ok());
        }
        let wait = bucket.take().unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(bucket.take().is_err());
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(bucket.take().is_ok());
        // Never more than the burst, however long it rested.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            assert!(bucket.take().is_ok());
        }
        assert!(bucket.take().is_err());
    }
}
