//! Client-side adaptive rate limiting of charges, after the AWS SDKs'
//! adaptive retry mode: a token bucket whose rate is cut when the provider
//! throttles (429) and grows back along a CUBIC curve, so that the daemon
//! settles at the rate the provider accepts instead of hammering it.
//!
//! It costs nothing until the provider first answers 429: before that no
//! charge waits. On a 429 the rate becomes β (0.7) × the charges the
//! provider accepted over the last second, and from then on every charge
//! takes a token first, waiting its turn when there is none. Without
//! further 429s the rate grows as `C·(t − K)³ + max`, where `max` is the
//! rate at the last cut and `K` the time the curve takes to get back to
//! it; another 429 cuts it again. Only a 429 for a charge sent after the
//! last cut cuts the rate: the answers to charges sent before it describe
//! the congestion that cut was for (and the charges among them that were
//! accepted still count towards the rate the cut is measured against).
//! Waiting charges take turns, and the first in line waits for the next
//! token at the rate of the moment, so that a cut or a rise applies to the
//! very next charge. A minute without any 429 and the limiter steps aside
//! again.
//!
//! The books take a lock for a few arithmetic operations; the waiting (and
//! the line) are the caller's, outside it. This module reads no clock: `now` is
//! passed in, so that its rules are tested without waiting.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The share of the accepted rate kept at a cut.
const BETA: f64 = 0.7;
/// CUBIC's scaling constant, in charges/s per s³.
const SCALE: f64 = 0.4;
/// Growth stops at this multiple of the rate of the last cut; only a
/// minute without 429s lifts the limit altogether.
const MAX_GROWTH: f64 = 2.0;
/// Without a 429 for this long, charges no longer wait for tokens.
const DISENGAGE_AFTER: Duration = Duration::from_secs(60);
/// The accepted charges are counted per slice of this length, over the
/// last second.
const SLICE: Duration = Duration::from_millis(100);
const SLICES: usize = 10;
const SLICES_U64: u64 = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Slice {
    id: u64,
    accepted: u32,
}

#[derive(Debug)]
struct Books {
    origin: Instant,
    accepted: [Slice; SLICES],
    /// Pacing is on.
    engaged: bool,
    /// Tokens per second.
    rate: f64,
    /// The rate never falls below this.
    min_rate: f64,
    /// Tokens now; below zero, the tokens already promised to waiters.
    tokens: f64,
    last_refill: Instant,
    /// The rate at the last cut, and when that was.
    max_rate: f64,
    last_cut: Instant,
    /// The time the curve takes from a cut back to `max_rate`, in seconds.
    recovery: f64,
    last_throttle: Instant,
}

/// The limiter of one provider.
#[derive(Debug)]
pub struct AdaptiveRate {
    books: Mutex<Books>,
}

impl AdaptiveRate {
    /// A limiter that never paces charges slower than `min_rate` a second.
    pub fn new(now: Instant, min_rate: f64) -> Self {
        Self {
            books: Mutex::new(Books {
                min_rate,
                origin: now,
                accepted: [Slice::default(); SLICES],
                engaged: false,
                rate: f64::INFINITY,
                tokens: 0.0,
                last_refill: now,
                max_rate: 0.0,
                last_cut: now,
                recovery: 0.0,
                last_throttle: now,
            }),
        }
    }

    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        // Numbers only: a panic elsewhere cannot leave them worse than off.
        self.books.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether charges are paced now: until the first 429, and a minute
    /// after the last, they are not.
    pub fn engaged(&self, now: Instant) -> bool {
        let mut books = self.books();
        if books.engaged && now.saturating_duration_since(books.last_throttle) > DISENGAGE_AFTER {
            books.engaged = false;
        }
        books.engaged
    }

    /// Takes a token for a charge about to be sent: `None` when it was
    /// taken (or none is needed), else when the next one comes at the
    /// current rate. Callers take turns (the first in line asks), so that
    /// a change of the rate applies to the next charge at once.
    pub fn take(&self, now: Instant) -> Option<Instant> {
        let mut books = self.books();
        if !books.engaged {
            return None;
        }
        books.refill(now);
        // A token that rounding leaves a hair short of whole is whole: the
        // wait for the rest would be nothing.
        if books.tokens >= 1.0 - 1e-6 {
            books.tokens -= 1.0;
            return None;
        }
        let wait = Duration::try_from_secs_f64((1.0 - books.tokens) / books.rate).ok()?;
        now.checked_add(wait.max(Duration::from_micros(1)))
    }

    /// Takes in the provider's answer to a charge sent at `sent_at`, and
    /// returns the rate charges are paced at now, if they are.
    pub fn answered(&self, now: Instant, sent_at: Instant, throttled: bool) -> Option<f64> {
        let mut books = self.books();
        if !throttled {
            books.count_accepted(now);
            if books.engaged {
                if sent_at < books.last_cut {
                    books.raise_to_accepted(now);
                }
                books.grow(now);
            }
        } else {
            books.last_throttle = now;
            if !books.engaged || sent_at >= books.last_cut {
                books.cut(now);
            }
        }
        books.engaged.then_some(books.rate)
    }
}

impl Books {
    fn slice_id(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        let id = elapsed.checked_div(SLICE.as_nanos()).unwrap_or(0);
        u64::try_from(id).unwrap_or(u64::MAX)
    }

    fn count_accepted(&mut self, now: Instant) {
        let id = self.slice_id(now);
        let index = usize::try_from(id.checked_rem(SLICES_U64).unwrap_or(0)).unwrap_or(0);
        if let Some(slice) = self.accepted.get_mut(index) {
            if slice.id != id {
                *slice = Slice { id, accepted: 0 };
            }
            slice.accepted = slice.accepted.saturating_add(1);
        }
    }

    /// Charges the provider accepted over the last second.
    fn accepted_last_second(&self, now: Instant) -> f64 {
        let current = self.slice_id(now);
        let oldest = current.saturating_sub(SLICES_U64.saturating_sub(1));
        let accepted: u32 = self
            .accepted
            .iter()
            .filter(|slice| (oldest..=current).contains(&slice.id))
            .map(|slice| slice.accepted)
            .fold(0, u32::saturating_add);
        f64::from(accepted)
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now
            .saturating_duration_since(self.last_refill)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate.max(1.0));
        self.last_refill = now;
    }

    fn cut(&mut self, now: Instant) {
        let accepted = self.accepted_last_second(now);
        let before = if self.engaged {
            accepted.min(self.rate)
        } else {
            self.engaged = true;
            accepted
        };
        // The bucket starts empty: the provider has no room left either.
        self.tokens = 0.0;
        self.last_refill = now;
        self.max_rate = before.max(self.min_rate);
        self.rate = (self.max_rate * BETA).max(self.min_rate);
        self.recovery = (self.max_rate * (1.0 - BETA) / SCALE).cbrt();
        self.last_cut = now;
    }

    /// Answers to charges sent before the cut are still arriving: what the
    /// provider accepted over the last second may still grow, and the cut
    /// is measured against it. (A burst's first 429 can come back before
    /// most of the charges it accepted.)
    fn raise_to_accepted(&mut self, now: Instant) {
        let accepted = self.accepted_last_second(now);
        if accepted > self.max_rate {
            self.max_rate = accepted;
            self.recovery = (self.max_rate * (1.0 - BETA) / SCALE).cbrt();
        }
    }

    fn grow(&mut self, now: Instant) {
        self.refill(now);
        let since_cut = now.saturating_duration_since(self.last_cut).as_secs_f64();
        let curve = SCALE * (since_cut - self.recovery).powi(3) + self.max_rate;
        self.rate = curve.clamp(
            self.min_rate,
            (self.max_rate * MAX_GROWTH).max(self.min_rate),
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    impl AdaptiveRate {
        fn rate(&self) -> Option<f64> {
            let books = self.books();
            books.engaged.then_some(books.rate)
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn until_the_first_429_no_charge_waits() {
        let start = Instant::now();
        let limiter = AdaptiveRate::new(start, 0.5);
        for n in 0..1000 {
            assert!(!limiter.engaged(start + ms(n)));
            assert_eq!(limiter.take(start + ms(n)), None);
            limiter.answered(start + ms(n), start + ms(n), false);
        }
        assert_eq!(limiter.rate(), None);
    }

    #[test]
    fn a_429_cuts_the_rate_to_beta_times_what_the_provider_accepted() {
        let start = Instant::now();
        let limiter = AdaptiveRate::new(start, 0.5);
        // The provider accepted 200 charges in the last second, then throttles.
        for n in 0..200 {
            limiter.answered(start + ms(n * 4), start, false);
        }
        let now = start + ms(800);
        limiter.answered(now, start, true);
        let rate = limiter.rate().unwrap();
        assert!((rate - 140.0).abs() < 1e-9, "{rate}");
        // Answers to charges sent before the cut do not cut it again.
        for _ in 0..1000 {
            limiter.answered(now + ms(1), now - ms(1), true);
        }
        assert!((limiter.rate().unwrap() - 140.0).abs() < 1e-9);
    }

    #[test]
    fn accepted_answers_to_a_burst_that_arrive_after_its_first_429_still_count() {
        let start = Instant::now();
        let limiter = AdaptiveRate::new(start, 0.5);
        // 2000 charges sent at once; the first 429 comes back after only 20
        // of the 200 the provider accepted.
        for n in 0..20 {
            limiter.answered(start + ms(n), start, false);
        }
        limiter.answered(start + ms(20), start, true);
        for n in 20..200 {
            limiter.answered(start + ms(21 + n), start, false);
        }
        let rate = limiter.rate().unwrap();
        // β × 200, and the curve has started back up for 0.2 s.
        assert!(rate > 140.0 && rate < 150.0, "{rate}");
    }

    #[test]
    fn once_engaged_charges_are_spaced_at_the_rate() {
        let start = Instant::now();
        let limiter = AdaptiveRate::new(start, 0.5);
        for n in 0..100 {
            limiter.answered(start + ms(n), start, false);
        }
        let now = start + ms(500);
        limiter.answered(now, start, true);
        // 70 charges/s: the n-th waiting charge goes n/70 s later.
        let rate = limiter.rate().unwrap();
        assert!((rate - 70.0).abs() < 1e-9, "{rate}");
        // The first in line asks, waits until the time it is told, and
        // asks again.
        let mut at = now;
        let mut sent = Vec::new();
        while sent.len() < 7 {
            match limiter.take(at) {
                None => sent.push(at - now),
                Some(next) => at = next,
            }
        }
        for (n, wait) in sent.iter().enumerate() {
            let expected = (n as f64 + 1.0) / 70.0;
            assert!((wait.as_secs_f64() - expected).abs() < 1e-3, "{sent:?}");
        }
    }

    #[test]
    fn without_429s_the_rate_grows_back_past_the_old_maximum_then_pacing_stops() {
        let start = Instant::now();
        let limiter = AdaptiveRate::new(start, 0.5);
        for n in 0..100 {
            limiter.answered(start + ms(n), start, false);
        }
        let cut = start + ms(500);
        limiter.answered(cut, start, true);
        // K = cbrt(100 × 0.3 / 0.4) ≈ 4.2 s: back at 100/s then, growing on.
        let at = |s: u64| {
            limiter.answered(cut + ms(s), cut, false);
            limiter.rate().unwrap()
        };
        let early = at(1000);
        let back = at(4217);
        let later = at(8000);
        assert!(early > 70.0 && early < 100.0, "{early}");
        assert!((back - 100.0).abs() < 0.5, "{back}");
        assert!(later > 100.0 && later <= 200.0, "{later}");
        assert!(!limiter.engaged(cut + Duration::from_secs(61)));
        assert_eq!(limiter.take(cut + Duration::from_secs(61)), None);
        assert_eq!(limiter.rate(), None);
    }

    #[test]
    fn a_429_after_the_cut_cuts_again_from_the_lower_of_the_rate_and_the_accepted() {
        let start = Instant::now();
        let limiter = AdaptiveRate::new(start, 0.5);
        for n in 0..100 {
            limiter.answered(start + ms(n), start, false);
        }
        let cut = start + ms(500);
        limiter.answered(cut, start, true);
        let again = cut + Duration::from_secs(2);
        // Only 30 accepted in the last second now.
        for n in 0..30 {
            limiter.answered(again - ms(900) + ms(n * 10), cut, false);
        }
        limiter.answered(again, cut + ms(1), true);
        let rate = limiter.rate().unwrap();
        assert!((rate - 21.0).abs() < 1e-9, "{rate}");
    }
}
