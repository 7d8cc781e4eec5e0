//! The backoff policy of retries, counted in attempts (the first delivery
//! is attempt 1), and the one jittered exponential backoff the daemon uses,
//! for retries and for reconnecting to the broker alike.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// Whether attempt `attempt` was the last one allowed.
    pub fn is_last(&self, attempt: u32) -> bool {
        attempt >= self.max_attempts
    }

    /// The delay after attempt `attempt` failed: d = min(base × 2^(n−1),
    /// max), jittered uniformly within [d/2, d].
    pub fn delay_after(&self, attempt: u32) -> Duration {
        jittered(self.delay_ceiling(attempt))
    }

    /// d = min(base × 2^(n−1), max), saturating instead of overflowing.
    pub fn delay_ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(31);
        let factor = 1u32.checked_shl(exponent).unwrap_or(u32::MAX);
        self.base_delay
            .checked_mul(factor)
            .map_or(self.max_delay, |d| d.min(self.max_delay))
    }
}

/// A delay drawn uniformly within [ceiling/2, ceiling], so that clients
/// that failed together do not come back together.
pub fn jittered(ceiling: Duration) -> Duration {
    let half = ceiling.checked_div(2).unwrap_or_default();
    if half >= ceiling {
        return ceiling;
    }
    rand::rng().random_range(half..=ceiling)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_up_to_the_maximum_and_is_jittered_within_half() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(1000),
            max_delay: Duration::from_millis(60_000),
        };
        assert_eq!(policy.delay_ceiling(1), Duration::from_millis(1000));
        assert_eq!(policy.delay_ceiling(2), Duration::from_millis(2000));
        assert_eq!(policy.delay_ceiling(4), Duration::from_millis(8000));
        assert_eq!(policy.delay_ceiling(7), Duration::from_millis(60_000));
        assert_eq!(
            policy.delay_ceiling(u32::MAX),
            Duration::from_millis(60_000)
        );
        for attempt in 1..10 {
            let ceiling = policy.delay_ceiling(attempt);
            let delay = policy.delay_after(attempt);
            assert!(delay >= ceiling / 2 && delay <= ceiling, "{delay:?}");
        }
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn max_attempts_counts_the_first_attempt() {
        let policy = RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
        };
        assert!(!policy.is_last(3));
        assert!(policy.is_last(4));
    }
}
