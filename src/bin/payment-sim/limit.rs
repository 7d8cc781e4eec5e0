//! `--rate-limit N`: at most N charges a second, as a provider's rate limit does.
//!
//! A token bucket of capacity N refilled at N tokens a second, kept as the generic
//! cell rate algorithm (GCRA) does: one atomic "theoretical arrival time" instead of a
//! token count and a refill timestamp behind a lock. Taking a token is one
//! compare-and-swap, so the limit costs next to nothing on the benchmark's hot path,
//! and nothing at all when it is off.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const NANOS_PER_SECOND: u64 = 1_000_000_000;

pub struct RateLimit {
    /// When the clock of `tat` started.
    start: Instant,
    /// Nanoseconds between two tokens: 1 s / N.
    interval: u64,
    /// How far `tat` may run ahead of now: the bucket's N tokens.
    burst: u64,
    /// Theoretical arrival time, in nanoseconds since `start`: when the bucket will be
    /// full again if nothing more is taken.
    tat: AtomicU64,
}

impl RateLimit {
    /// A bucket of `per_second` tokens (at least one), refilled at that rate.
    pub fn new(per_second: u32) -> Self {
        let per_second = u64::from(per_second.max(1));
        let interval = NANOS_PER_SECOND.checked_div(per_second).unwrap_or(1).max(1);
        Self {
            start: Instant::now(),
            interval,
            burst: interval.saturating_mul(per_second),
            tat: AtomicU64::new(0),
        }
    }

    /// Takes a token, or says how long until one is free.
    pub fn acquire(&self) -> Result<(), Duration> {
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now).saturating_add(self.interval);
            let ahead = next.saturating_sub(now);
            if ahead > self.burst {
                return Err(Duration::from_nanos(ahead.saturating_sub(self.burst)));
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }
}

/// A wait as `Retry-After` delay-seconds: rounded up, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    let whole = wait.as_secs();
    let seconds = if wait.subsec_nanos() > 0 {
        whole.saturating_add(1)
    } else {
        whole
    };
    seconds.max(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_gives_its_tokens_then_says_how_long_to_wait() {
        let limit = RateLimit::new(5);
        for _ in 0..5 {
            assert!(limit.acquire().is_ok());
        }
        let wait = limit.acquire().unwrap_err();
        assert!(wait <= Duration::from_millis(200), "{wait:?}");
        assert_eq!(retry_after_seconds(wait), 1);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_seconds(Duration::from_millis(2001)), 3);
    }
}
