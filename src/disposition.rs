//! What happens to a delivery: the one decision point.
//!
//! [`Disposition::decide`] turns what the use case returned, the attempt,
//! the retry policy and whether intake is paused by an outage into ack,
//! retry later, dead-letter, hold or leave unacked. It is an exhaustive
//! `match`, so that a new error variant does not compile until someone
//! decides its fate. The consumer only carries the decision out.

use std::time::Duration;

use crate::retry::RetryPolicy;
use crate::usecase::{ProcessError, Processed};

/// The `x-error-kind` header of a dead-lettered message, and the
/// `error_kind` label of the delivery metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Malformed,
    Invalid,
    PaymentDeclined,
    PaymentRejected,
    /// A transient failure (provider or database), retried later.
    Transient,
    RetriesExhausted,
    /// Delivered again and again without ever being settled.
    RedeliveryLimit,
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
            Self::RedeliveryLimit => "redelivery_limit",
        }
    }
}

/// Whether the consumer takes new deliveries, as the decision needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    Open,
    /// A dependency is down: its failures are the outage's, not the order's.
    Paused,
}

/// The fate of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Done (processed now or before): acknowledge.
    Ack,
    /// A transient failure: publish to the retry queue of this attempt,
    /// to come back after `delay`.
    Retry { delay: Duration, reason: String },
    /// Can never succeed, or may not be tried again: move to the
    /// dead-letter queue.
    DeadLetter { kind: ErrorKind, reason: String },
    /// Failed because a dependency is down: keep it unacknowledged and run
    /// it again, as the same attempt, once the outage is over.
    Hold,
    /// Do not settle: the broker redelivers it when the channel closes.
    LeaveUnacked,
}

impl Disposition {
    /// Decides the fate of a delivery from its processing result. The
    /// reasons come from the errors' `Display`, which never quotes message
    /// contents, URLs or SQL.
    pub fn decide(
        result: &Result<Processed, ProcessError>,
        attempt: u32,
        policy: &RetryPolicy,
        intake: Intake,
    ) -> Self {
        let error = match result {
            Ok(Processed::Charged(_) | Processed::AlreadyProcessed) => return Self::Ack,
            Err(error) => error,
        };
        let dead_letter = |kind| Self::DeadLetter {
            kind,
            reason: error.to_string(),
        };
        let (outage, retry_after) = match error {
            ProcessError::Malformed(_) => return dead_letter(ErrorKind::Malformed),
            ProcessError::Invalid(_) => return dead_letter(ErrorKind::Invalid),
            ProcessError::PaymentDeclined => return dead_letter(ErrorKind::PaymentDeclined),
            ProcessError::PaymentRejected { .. } => {
                return dead_letter(ErrorKind::PaymentRejected);
            }
            ProcessError::Interrupted => return Self::LeaveUnacked,
            ProcessError::PaymentUnavailable {
                reason,
                retry_after,
            } => (reason.is_outage(), *retry_after),
            ProcessError::RepositoryUnavailable(error) => (error.is_outage(), None),
        };
        match intake {
            Intake::Paused if outage => Self::Hold,
            Intake::Open | Intake::Paused if policy.is_last(attempt) => {
                dead_letter(ErrorKind::RetriesExhausted)
            }
            Intake::Open | Intake::Paused => {
                let backoff = policy.delay_after(attempt);
                // The provider's own word is the least delay, up to the policy's maximum.
                let asked = retry_after.map_or(Duration::ZERO, |d| d.min(policy.max_delay));
                Self::Retry {
                    delay: backoff.max(asked),
                    reason: error.to_string(),
                }
            }
        }
    }

    /// Before processing: a message the broker has delivered `delivery_count`
    /// times before without it being settled (the quorum queue's
    /// `x-delivery-count`) is dead-lettered once that reaches `limit`,
    /// instead of crashing or losing the channel again.
    pub fn redelivered(delivery_count: Option<u64>, limit: u32) -> Option<Self> {
        let count = delivery_count?;
        (count >= u64::from(limit)).then(|| Self::DeadLetter {
            kind: ErrorKind::RedeliveryLimit,
            reason: format!(
                "delivered {} times without being settled; the redelivery limit is {limit}",
                count.saturating_add(1)
            ),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::domain::{
        ChargeId, DecodeError, RepositoryError, UnavailableReason, ValidationError,
    };

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(1000),
    };

    fn decide(error: ProcessError, attempt: u32, intake: Intake) -> Disposition {
        Disposition::decide(&Err(error), attempt, &POLICY, intake)
    }

    fn unavailable(reason: UnavailableReason) -> ProcessError {
        ProcessError::PaymentUnavailable {
            reason,
            retry_after: None,
        }
    }

    #[test]
    fn processed_and_already_processed_orders_are_acked() {
        for result in [
            Ok(Processed::Charged(ChargeId::new("ch_1"))),
            Ok(Processed::AlreadyProcessed),
        ] {
            for intake in [Intake::Open, Intake::Paused] {
                assert_eq!(
                    Disposition::decide(&result, 4, &POLICY, intake),
                    Disposition::Ack
                );
            }
        }
    }

    #[test]
    fn permanent_failures_are_dead_lettered_with_their_kind_even_during_an_outage() {
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
            let text = error.to_string();
            match decide(error, 1, Intake::Paused) {
                Disposition::DeadLetter { kind, reason } => {
                    assert_eq!(kind, expected);
                    assert_eq!(reason, text);
                }
                other => panic!("expected a dead letter, got {other:?}"),
            }
        }
    }

    #[test]
    fn transient_failures_are_retried_after_the_backoff_until_the_last_attempt() {
        for attempt in 1..4 {
            match decide(
                unavailable(UnavailableReason::Status(503)),
                attempt,
                Intake::Open,
            ) {
                Disposition::Retry { delay, reason } => {
                    let ceiling = POLICY.delay_ceiling(attempt);
                    assert!(delay >= ceiling / 2 && delay <= ceiling, "{delay:?}");
                    assert!(reason.contains("503"), "{reason}");
                }
                other => panic!("attempt {attempt}: {other:?}"),
            }
        }
        let database = ProcessError::RepositoryUnavailable(RepositoryError::Unavailable(
            "connection refused".into(),
        ));
        match decide(database, 4, Intake::Open) {
            Disposition::DeadLetter { kind, reason } => {
                assert_eq!(kind, ErrorKind::RetriesExhausted);
                assert!(!reason.contains("refused"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_outage_failure_while_intake_is_paused_is_held_and_spends_no_attempt() {
        for error in [
            unavailable(UnavailableReason::Connect),
            unavailable(UnavailableReason::Status(503)),
            ProcessError::RepositoryUnavailable(RepositoryError::Unavailable("down".into())),
        ] {
            // Even on the last attempt.
            assert_eq!(decide(error, 4, Intake::Paused), Disposition::Hold);
        }
        // Failures that are this order's own still count during an outage.
        for reason in [
            UnavailableReason::InProgress,
            UnavailableReason::RateLimited,
        ] {
            assert!(matches!(
                decide(unavailable(reason), 1, Intake::Paused),
                Disposition::Retry { .. }
            ));
        }
        let row = ProcessError::RepositoryUnavailable(RepositoryError::RowRejected("nul".into()));
        assert!(matches!(
            decide(row, 4, Intake::Paused),
            Disposition::DeadLetter {
                kind: ErrorKind::RetriesExhausted,
                ..
            }
        ));
    }

    #[test]
    fn a_providers_retry_after_is_the_least_delay_up_to_the_maximum() {
        let asked = |seconds| ProcessError::PaymentUnavailable {
            reason: UnavailableReason::Status(503),
            retry_after: Some(Duration::from_secs(seconds)),
        };
        assert!(matches!(
            decide(asked(0), 1, Intake::Open),
            Disposition::Retry { delay, .. } if delay <= Duration::from_millis(100)
        ));
        assert!(matches!(
            decide(asked(3600), 1, Intake::Open),
            Disposition::Retry { delay, .. } if delay == POLICY.max_delay
        ));
    }

    #[test]
    fn an_interrupted_order_is_left_unacked() {
        assert_eq!(
            decide(ProcessError::Interrupted, 1, Intake::Open),
            Disposition::LeaveUnacked
        );
    }

    #[test]
    fn a_message_delivered_too_often_is_dead_lettered_before_processing() {
        assert_eq!(Disposition::redelivered(None, 10), None);
        assert_eq!(Disposition::redelivered(Some(9), 10), None);
        match Disposition::redelivered(Some(10), 10) {
            Some(Disposition::DeadLetter { kind, reason }) => {
                assert_eq!(kind, ErrorKind::RedeliveryLimit);
                assert!(reason.contains("11 times"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}
