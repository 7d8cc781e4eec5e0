//! What happens to a delivery once its order has been processed.
//!
//! This is the one place where an outcome becomes a queue decision, written
//! as an exhaustive `match` so that a new error variant does not compile
//! until someone decides its fate. The retry policy lives here too because
//! "retry or give up" is part of the same decision.

use std::time::Duration;

use rand::Rng;

use crate::usecase::{ProcessError, Processed};

/// The `x-error-kind` header of a dead-lettered message, and the
/// `error_kind` label of the delivery metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Malformed,
    Invalid,
    PaymentDeclined,
    PaymentRejected,
    /// A transient failure (provider or database) — retried; when the
    /// attempts run out it becomes `RetriesExhausted`.
    Transient,
    RetriesExhausted,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Invalid => "invalid",
            Self::PaymentDeclined => "payment_declined",
            Self::PaymentRejected => "payment_rejected",
            Self::Transient => "transient",
            Self::RetriesExhausted => "retries_exhausted",
        }
    }
}

/// The fate of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Done (processed now or before): acknowledge.
    Ack,
    /// A transient failure: try again later, unless the attempts are spent.
    Retry { reason: String },
    /// Can never succeed: move to the dead-letter queue at once.
    DeadLetter { kind: ErrorKind, reason: String },
    /// Do not settle: the broker redelivers it when the channel closes.
    LeaveUnacked,
}

impl Disposition {
    /// Decides the fate of a delivery from its processing result. The
    /// reasons come from the errors' `Display`, which never quotes message
    /// contents, URLs or SQL.
    pub fn of(result: &Result<Processed, ProcessError>) -> Self {
        let error = match result {
            Ok(Processed::Charged(_) | Processed::AlreadyProcessed) => return Self::Ack,
            Err(error) => error,
        };
        let dead_letter = |kind| Self::DeadLetter {
            kind,
            reason: error.to_string(),
        };
        match error {
            ProcessError::Malformed(_) => dead_letter(ErrorKind::Malformed),
            ProcessError::Invalid(_) => dead_letter(ErrorKind::Invalid),
            ProcessError::PaymentDeclined => dead_letter(ErrorKind::PaymentDeclined),
            ProcessError::PaymentRejected { .. } => dead_letter(ErrorKind::PaymentRejected),
            ProcessError::PaymentUnavailable { .. } | ProcessError::RepositoryUnavailable(_) => {
                Self::Retry {
                    reason: error.to_string(),
                }
            }
            ProcessError::Interrupted => Self::LeaveUnacked,
        }
    }
}

/// Exponential backoff with jitter, counted in attempts (the first
/// delivery is attempt 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

/// What to do after attempt `n` failed transiently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    RetryAfter(Duration),
    Exhausted,
}

impl RetryPolicy {
    /// After attempt `attempt` failed: wait d = min(base × 2^(n−1), max),
    /// jittered uniformly within [d/2, d], or give up once `max_attempts`
    /// attempts have been made.
    pub fn after_failure(&self, attempt: u32) -> RetryDecision {
        if attempt >= self.max_attempts {
            return RetryDecision::Exhausted;
        }
        let ceiling = self.delay_ceiling(attempt);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        let jittered = rand::rng().random_range(millis / 2..=millis);
        RetryDecision::RetryAfter(Duration::from_millis(jittered))
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::domain::{
        ChargeId, DecodeError, RepositoryError, UnavailableReason, ValidationError,
    };

    fn kind_of(error: ProcessError) -> Disposition {
        Disposition::of(&Err(error))
    }

    #[test]
    fn processed_and_already_processed_orders_are_acked() {
        assert_eq!(
            Disposition::of(&Ok(Processed::Charged(ChargeId::new("ch_1")))),
            Disposition::Ack
        );
        assert_eq!(
            Disposition::of(&Ok(Processed::AlreadyProcessed)),
            Disposition::Ack
        );
    }

    #[test]
    fn permanent_failures_are_dead_lettered_with_their_kind() {
        let cases = [
            (
                ProcessError::Malformed(DecodeError::NotUtf8),
                ErrorKind::Malformed,
            ),
            (
                ProcessError::Invalid(ValidationError::OrderId),
                ErrorKind::Invalid,
            ),
            (ProcessError::PaymentDeclined, ErrorKind::PaymentDeclined),
            (
                ProcessError::PaymentRejected { status: 422 },
                ErrorKind::PaymentRejected,
            ),
        ];
        for (error, expected) in cases {
            match kind_of(error) {
                Disposition::DeadLetter { kind, reason } => {
                    assert_eq!(kind, expected);
                    assert!(!reason.is_empty());
                }
                other => panic!("expected a dead letter, got {other:?}"),
            }
        }
    }

    #[test]
    fn transient_failures_are_retried() {
        let unavailable = kind_of(ProcessError::PaymentUnavailable {
            reason: UnavailableReason::Status(503),
            retry_after: None,
        });
        assert!(matches!(unavailable, Disposition::Retry { .. }));
        let database = kind_of(ProcessError::RepositoryUnavailable(
            RepositoryError::Unavailable("connection refused".into()),
        ));
        assert!(matches!(database, Disposition::Retry { reason } if !reason.contains("refused")));
    }

    #[test]
    fn an_interrupted_order_is_left_unacked() {
        assert_eq!(
            kind_of(ProcessError::Interrupted),
            Disposition::LeaveUnacked
        );
    }

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
            match policy.after_failure(attempt) {
                RetryDecision::RetryAfter(delay) => {
                    assert!(delay >= ceiling / 2 && delay <= ceiling, "{delay:?}");
                }
                RetryDecision::Exhausted => panic!("attempt {attempt} should be retried"),
            }
        }
    }

    #[test]
    fn max_attempts_counts_the_first_attempt() {
        let policy = RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
        };
        assert!(matches!(
            policy.after_failure(3),
            RetryDecision::RetryAfter(_)
        ));
        assert_eq!(policy.after_failure(4), RetryDecision::Exhausted);
    }
}
