//! Circuit breakers: telling an outage of a dependency from failures of a
//! few orders, and deciding when to test the dependency again.
//!
//! One [`Circuit`] per dependency (the payment provider, the database)
//! counts the orders that reached it over a sliding window of time. It
//! opens only when the dependency fails transiently for most orders: at
//! least `min_calls` outcomes in the window, a failure ratio of at least
//! `failure_ratio`, and the last `consecutive_failures` outcomes all
//! failures. A few failing orders among successes keep it closed: they
//! retry and dead-letter as they would without it.
//!
//! While a circuit is open the consumer takes no new deliveries. One order
//! at a time tests the dependency, at intervals that double from
//! `first_probe_after` up to `max_probe_interval`; the first test that
//! succeeds closes the circuit. This module only keeps the books and
//! answers questions; it reads no clock (the caller passes `now`), so that
//! its rules are tested without waiting.

use std::time::{Duration, Instant};

/// The settings of every circuit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitSettings {
    /// How far back outcomes count.
    pub window: Duration,
    /// Outcomes the window must hold before the ratio means anything.
    pub min_calls: u32,
    /// The share of failures in the window that opens the circuit.
    pub failure_ratio: f64,
    /// The run of failures, up to the latest outcome, that must come with it.
    pub consecutive_failures: u32,
    /// The first test after opening.
    pub first_probe_after: Duration,
    /// The longest interval between two tests.
    pub max_probe_interval: Duration,
}

/// What an outcome did to the circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened,
    Closed,
}

/// The window is kept as this many buckets of equal length.
const BUCKETS: usize = 10;
const BUCKETS_U64: u64 = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which slice of time (in bucket lengths since `origin`) it counts.
    slice: u64,
    calls: u32,
    failures: u32,
}

#[derive(Debug)]
enum State {
    Closed,
    Open {
        /// When the next test may start.
        next_probe: Instant,
        /// The interval after the next failed test, before doubling.
        interval: Duration,
    },
}

/// One dependency's breaker.
#[derive(Debug)]
pub struct Circuit {
    settings: CircuitSettings,
    origin: Instant,
    bucket_length: Duration,
    buckets: [Bucket; BUCKETS],
    consecutive_failures: u32,
    state: State,
}

impl Circuit {
    pub fn new(settings: CircuitSettings, now: Instant) -> Self {
        let bucket_length = settings
            .window
            .checked_div(u32::try_from(BUCKETS).unwrap_or(u32::MAX))
            .unwrap_or_default()
            .max(Duration::from_millis(1));
        Self {
            settings,
            origin: now,
            bucket_length,
            buckets: [Bucket::default(); BUCKETS],
            consecutive_failures: 0,
            state: State::Closed,
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open { .. })
    }

    /// When the next test may start, while open.
    pub fn next_probe(&self) -> Option<Instant> {
        match self.state {
            State::Open { next_probe, .. } => Some(next_probe),
            State::Closed => None,
        }
    }

    /// Counts an outcome of an order that was not a test. While open, it
    /// changes nothing: an order that started before the circuit opened
    /// says nothing about the dependency now.
    pub fn record(&mut self, now: Instant, failed: bool) -> Option<Transition> {
        if self.is_open() {
            return None;
        }
        self.count(now, failed);
        if failed && self.trips(now) {
            self.state = State::Open {
                next_probe: now.checked_add(self.settings.first_probe_after)?,
                interval: self.settings.first_probe_after,
            };
            return Some(Transition::Opened);
        }
        None
    }

    /// The outcome of a test of the dependency: success closes the
    /// circuit with an empty window, failure puts the next test off for
    /// twice as long as the last (at most `max_probe_interval`).
    pub fn probed(&mut self, now: Instant, failed: bool) -> Option<Transition> {
        let State::Open { interval, .. } = self.state else {
            return None;
        };
        if failed {
            let interval = interval
                .saturating_mul(2)
                .min(self.settings.max_probe_interval);
            self.state = State::Open {
                next_probe: now.checked_add(interval).unwrap_or(now),
                interval,
            };
            return None;
        }
        self.state = State::Closed;
        self.buckets = [Bucket::default(); BUCKETS];
        self.consecutive_failures = 0;
        Some(Transition::Closed)
    }

    fn slice(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        let slice = elapsed
            .checked_div(self.bucket_length.as_nanos())
            .unwrap_or(0);
        u64::try_from(slice).unwrap_or(u64::MAX)
    }

    fn count(&mut self, now: Instant, failed: bool) {
        let slice = self.slice(now);
        let index = usize::try_from(slice.checked_rem(BUCKETS_U64).unwrap_or(0)).unwrap_or(0);
        if let Some(bucket) = self.buckets.get_mut(index) {
            if bucket.slice != slice {
                *bucket = Bucket {
                    slice,
                    ..Bucket::default()
                };
            }
            bucket.calls = bucket.calls.saturating_add(1);
            if failed {
                bucket.failures = bucket.failures.saturating_add(1);
            }
        }
        self.consecutive_failures = if failed {
            self.consecutive_failures.saturating_add(1)
        } else {
            0
        };
    }

    fn trips(&self, now: Instant) -> bool {
        let settings = &self.settings;
        if self.consecutive_failures < settings.consecutive_failures {
            return false;
        }
        let current = self.slice(now);
        let oldest = current.saturating_sub(BUCKETS_U64.saturating_sub(1));
        let (calls, failures) = self
            .buckets
            .iter()
            .filter(|bucket| (oldest..=current).contains(&bucket.slice))
            .fold((0u32, 0u32), |(calls, failures), bucket| {
                (
                    calls.saturating_add(bucket.calls),
                    failures.saturating_add(bucket.failures),
                )
            });
        calls >= settings.min_calls
            && f64::from(failures) >= settings.failure_ratio * f64::from(calls)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    fn settings() -> CircuitSettings {
        CircuitSettings {
            window: Duration::from_secs(10),
            min_calls: 10,
            failure_ratio: 0.5,
            consecutive_failures: 5,
            first_probe_after: Duration::from_secs(1),
            max_probe_interval: Duration::from_secs(30),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_dependency_failing_for_every_order_opens_the_circuit_once_enough_orders_failed() {
        let start = Instant::now();
        let mut circuit = Circuit::new(settings(), start);
        for n in 1..10 {
            assert_eq!(circuit.record(start + ms(n), true), None, "after {n}");
        }
        assert_eq!(
            circuit.record(start + ms(10), true),
            Some(Transition::Opened)
        );
        assert!(circuit.is_open());
        assert_eq!(circuit.next_probe(), Some(start + ms(10) + ms(1000)));
    }

    #[test]
    fn a_minority_of_failing_orders_among_successes_keeps_it_closed() {
        // 30 of 230 orders fail four times each, shuffled among the rest.
        let start = Instant::now();
        let mut circuit = Circuit::new(settings(), start);
        let mut at = start;
        for order in 0..230 {
            at += ms(2);
            let failing = order % 8 == 0;
            assert_eq!(circuit.record(at, failing), None);
        }
        // Their retries come back, all failing, in a run of 90.
        for _ in 0..90 {
            at += ms(5);
            assert_eq!(circuit.record(at, true), None);
        }
        assert!(!circuit.is_open());
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let start = Instant::now();
        let mut circuit = Circuit::new(settings(), start);
        for n in 0..9 {
            circuit.record(start + ms(n), true);
        }
        // Eleven seconds later the earlier failures are out of the window.
        let later = start + Duration::from_secs(11);
        for n in 0..9 {
            assert_eq!(circuit.record(later + ms(n), true), None);
        }
        assert_eq!(
            circuit.record(later + ms(9), true),
            Some(Transition::Opened)
        );
    }

    #[test]
    fn without_a_run_of_failures_a_high_ratio_does_not_open_it() {
        let start = Instant::now();
        let mut circuit = Circuit::new(settings(), start);
        for n in 0..40 {
            // Four failures, then a success: 80 % failures, runs of four.
            circuit.record(start + ms(n), n % 5 != 4);
        }
        assert!(!circuit.is_open());
    }

    #[test]
    fn failed_tests_double_the_interval_up_to_the_maximum_and_a_success_closes_it() {
        let start = Instant::now();
        let mut circuit = Circuit::new(settings(), start);
        for n in 0..10 {
            circuit.record(start + ms(n), true);
        }
        let mut now = circuit.next_probe().unwrap();
        let mut intervals = Vec::new();
        for _ in 0..7 {
            assert_eq!(circuit.probed(now, true), None);
            let next = circuit.next_probe().unwrap();
            intervals.push((next - now).as_secs());
            now = next;
        }
        assert_eq!(intervals, [2, 4, 8, 16, 30, 30, 30]);
        // Outcomes of orders that started before it opened change nothing.
        assert_eq!(circuit.record(now, false), None);
        assert!(circuit.is_open());
        assert_eq!(circuit.probed(now, false), Some(Transition::Closed));
        assert!(!circuit.is_open());
        // Closed with a clean slate: it takes a full count to open again.
        for n in 1..10 {
            assert_eq!(circuit.record(now + ms(n), true), None);
        }
        assert_eq!(circuit.record(now + ms(10), true), Some(Transition::Opened));
    }
}
