//! The bounds on charges the daemon is configured with, and what they add
//! up to: the longest an order can wait for the provider, which the broker
//! check compares with the broker's delivery acknowledgement timeout.

use std::time::Duration;

/// How long, how many at once and how slowly charges may go.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaymentLimits {
    /// One request's timeout.
    pub timeout: Duration,
    /// Charges in flight, when capped below the worker pool.
    pub max_in_flight: Option<usize>,
    /// The slowest the rate limiter paces charges (per second).
    pub min_rate: f64,
}

/// The longest an order can wait for the provider: its own request, before
/// it those of the orders ahead of it in the queue for a turn
/// (`concurrency` orders in flight, `max_in_flight` charges at a time if
/// capped, each bounded by the timeout), and, while the provider limits
/// the rate, its place in the line for a token (every order in flight
/// ahead of it, at the slowest rate).
pub fn longest_wait(limits: PaymentLimits, concurrency: usize) -> Duration {
    let turns = limits
        .max_in_flight
        .map_or(1, |n| concurrency.div_ceil(n.max(1)).max(1));
    let requests = limits
        .timeout
        .saturating_mul(u32::try_from(turns).unwrap_or(u32::MAX));
    let line =
        Duration::try_from_secs_f64(concurrency as f64 / limits.min_rate).unwrap_or(Duration::MAX);
    requests.saturating_add(line)
}
