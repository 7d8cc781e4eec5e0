//! The one thing the daemon does: turn a message body into a charged and
//! recorded order.
//!
//! `ProcessOrder` composes the two ports: validate → already processed? →
//! charge (idempotent by order id) → save (idempotent by order id). Because
//! both effects are idempotent, running it any number of times for the same
//! message ends with one charge and one row, which is what makes
//! at-least-once delivery safe. It knows nothing of queues: what happens to
//! the message afterwards is decided from the returned value in
//! [`crate::disposition`].
//!
//! It imports the domain only: no broker, database, HTTP or telemetry. Its
//! two steps are public ([`ProcessOrder::validate`], [`ProcessOrder::process`])
//! so that the adapter that calls it can trace each under a span of its own.

use std::time::Duration;

use crate::domain::{
    ChargeId, DecodeError, Order, OrderError, OrderRepository, PaymentError, PaymentProvider,
    ProcessedOrder, RepositoryError, UnavailableReason, ValidationError,
};

/// How an order ended when nothing went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    /// Charged now and recorded.
    Charged(ChargeId),
    /// Recorded earlier: a redelivery or a duplicate publish.
    AlreadyProcessed,
}

/// Everything that can stop an order, one variant per decision the queue
/// has to make about the message.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("the message is not an order: {0}")]
    Malformed(#[source] DecodeError),
    #[error("the order is invalid: {0}")]
    Invalid(#[source] ValidationError),
    #[error("the payment was declined")]
    PaymentDeclined,
    #[error("the payment provider rejected the charge with status {status}")]
    PaymentRejected { status: u16 },
    #[error("the payment provider is unavailable ({reason})")]
    PaymentUnavailable {
        reason: UnavailableReason,
        /// The least delay before asking again, when the provider said so.
        retry_after: Option<Duration>,
    },
    #[error(transparent)]
    RepositoryUnavailable(#[from] RepositoryError),
    /// The daemon is stopping and the grace period ran out before the order
    /// finished. Whatever happened so far is idempotent, so the message is
    /// simply left for redelivery.
    #[error("processing was interrupted by shutdown")]
    Interrupted,
}

impl From<OrderError> for ProcessError {
    fn from(error: OrderError) -> Self {
        match error {
            OrderError::Malformed(e) => Self::Malformed(e),
            OrderError::Invalid(e) => Self::Invalid(e),
        }
    }
}

impl From<PaymentError> for ProcessError {
    fn from(error: PaymentError) -> Self {
        match error {
            PaymentError::Declined => Self::PaymentDeclined,
            PaymentError::Rejected { status } => Self::PaymentRejected { status },
            PaymentError::Unavailable {
                reason,
                retry_after,
            } => Self::PaymentUnavailable {
                reason,
                retry_after,
            },
        }
    }
}

/// Validate → charge → save, over any payment provider and repository.
pub struct ProcessOrder<P, R> {
    payments: P,
    orders: R,
}

impl<P: PaymentProvider, R: OrderRepository> ProcessOrder<P, R> {
    pub fn new(payments: P, orders: R) -> Self {
        Self { payments, orders }
    }

    /// Processes one message body: [`Self::validate`], then [`Self::process`].
    pub async fn execute(
        &self,
        body: &[u8],
        trace_id: Option<String>,
    ) -> Result<Processed, ProcessError> {
        let order = Self::validate(body)?;
        self.process(order, trace_id).await
    }

    /// Parses a message body into a valid order.
    pub fn validate(body: &[u8]) -> Result<Order, ProcessError> {
        Ok(Order::parse(body)?)
    }

    /// Already processed? → charge → save, for a valid order. `trace_id` is
    /// recorded with the order so that a row leads back to its trace.
    pub async fn process(
        &self,
        order: Order,
        trace_id: Option<String>,
    ) -> Result<Processed, ProcessError> {
        if self.orders.is_processed(order.id()).await? {
            return Ok(Processed::AlreadyProcessed);
        }
        let charge_id = self.payments.charge(&order).await?;
        let total = order.total();
        self.orders
            .save(ProcessedOrder {
                order_id: order.id(),
                customer_id: order.customer_id().clone(),
                currency: total.currency(),
                total_minor: total.minor(),
                charge_id: charge_id.clone(),
                trace_id,
            })
            .await?;
        Ok(Processed::Charged(charge_id))
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::disposition::{Disposition, ErrorKind, Intake};
    use crate::retry::RetryPolicy;

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        base_delay: std::time::Duration::from_millis(100),
        max_delay: std::time::Duration::from_millis(400),
    };

    fn disposition(result: &Result<Processed, ProcessError>) -> Disposition {
        Disposition::decide(result, 1, &POLICY, Intake::Open)
    }
    use crate::domain::{OrderId, OrderMessage};

    /// Charges by idempotency key, like a real provider; can be told to fail.
    #[derive(Default)]
    struct FakePayments {
        answer: Mutex<Option<PaymentError>>,
        charges: Mutex<HashMap<OrderId, ChargeId>>,
        calls: Mutex<usize>,
    }

    impl FakePayments {
        fn failing_with(error: PaymentError) -> Self {
            let fake = Self::default();
            *fake.answer.lock().unwrap() = Some(error);
            fake
        }
    }

    impl PaymentProvider for FakePayments {
        async fn charge(&self, order: &Order) -> Result<ChargeId, PaymentError> {
            *self.calls.lock().unwrap() += 1;
            if let Some(error) = self.answer.lock().unwrap().take() {
                return Err(error);
            }
            let mut charges = self.charges.lock().unwrap();
            let next = format!("ch_{}", charges.len() + 1);
            Ok(charges
                .entry(order.id())
                .or_insert(ChargeId::new(next))
                .clone())
        }
    }

    #[derive(Default)]
    struct FakeOrders {
        rows: Mutex<HashMap<OrderId, ProcessedOrder>>,
        down: bool,
    }

    impl OrderRepository for FakeOrders {
        async fn is_processed(&self, id: OrderId) -> Result<bool, RepositoryError> {
            if self.down {
                return Err(RepositoryError::Unavailable("connection refused".into()));
            }
            Ok(self.rows.lock().unwrap().contains_key(&id))
        }

        async fn save(&self, order: ProcessedOrder) -> Result<(), RepositoryError> {
            self.rows
                .lock()
                .unwrap()
                .entry(order.order_id)
                .or_insert(order);
            Ok(())
        }
    }

    fn body() -> (OrderId, Vec<u8>) {
        let id = uuid::Uuid::new_v4();
        (
            OrderId::from_uuid(id),
            OrderMessage::example(id).to_json().unwrap(),
        )
    }

    #[tokio::test]
    async fn a_valid_order_is_charged_saved_and_acked() {
        let usecase = ProcessOrder::new(FakePayments::default(), FakeOrders::default());
        let (id, body) = body();
        let result = usecase
            .execute(&body, Some("0af7651916cd43dd8448eb211c80319c".into()))
            .await;
        assert_eq!(
            result.as_ref().unwrap(),
            &Processed::Charged(ChargeId::new("ch_1"))
        );
        assert_eq!(disposition(&result), Disposition::Ack);
        let rows = usecase.orders.rows.lock().unwrap();
        let row = &rows[&id];
        assert_eq!(row.charge_id, ChargeId::new("ch_1"));
        assert_eq!(
            row.trace_id.as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        assert!(row.total_minor > 0);
    }

    #[tokio::test]
    async fn a_redelivered_order_is_acked_without_a_second_charge() {
        let usecase = ProcessOrder::new(FakePayments::default(), FakeOrders::default());
        let (_, body) = body();
        usecase.execute(&body, None).await.unwrap();
        let again = usecase.execute(&body, None).await;
        assert_eq!(again.as_ref().unwrap(), &Processed::AlreadyProcessed);
        assert_eq!(disposition(&again), Disposition::Ack);
        assert_eq!(*usecase.payments.calls.lock().unwrap(), 1);
        assert_eq!(usecase.orders.rows.lock().unwrap().len(), 1);
    }

    fn dead_letter_kind(result: &Result<Processed, ProcessError>) -> ErrorKind {
        match disposition(result) {
            Disposition::DeadLetter { kind, .. } => kind,
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_body_that_is_no_order_is_malformed_and_nothing_is_charged() {
        let usecase = ProcessOrder::new(FakePayments::default(), FakeOrders::default());
        let result = usecase.execute(b"{not json", None).await;
        assert!(matches!(result, Err(ProcessError::Malformed(_))));
        assert_eq!(dead_letter_kind(&result), ErrorKind::Malformed);
        assert_eq!(*usecase.payments.calls.lock().unwrap(), 0);
    }

    #[tokio::test]
    async fn an_order_breaking_a_rule_is_invalid_and_nothing_is_charged() {
        let usecase = ProcessOrder::new(FakePayments::default(), FakeOrders::default());
        let mut message = OrderMessage::example(uuid::Uuid::new_v4());
        message.currency = "ZZZ".to_owned();
        let result = usecase.execute(&message.to_json().unwrap(), None).await;
        assert!(matches!(result, Err(ProcessError::Invalid(_))));
        assert_eq!(dead_letter_kind(&result), ErrorKind::Invalid);
        assert_eq!(*usecase.payments.calls.lock().unwrap(), 0);
    }

    #[tokio::test]
    async fn declined_and_rejected_payments_are_dead_lettered_and_not_saved() {
        for (error, kind) in [
            (PaymentError::Declined, ErrorKind::PaymentDeclined),
            (
                PaymentError::Rejected { status: 422 },
                ErrorKind::PaymentRejected,
            ),
        ] {
            let usecase =
                ProcessOrder::new(FakePayments::failing_with(error), FakeOrders::default());
            let result = usecase.execute(&body().1, None).await;
            assert_eq!(dead_letter_kind(&result), kind);
            assert!(usecase.orders.rows.lock().unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn an_unavailable_provider_is_retried_and_not_saved() {
        let unavailable = PaymentError::Unavailable {
            reason: UnavailableReason::Timeout,
            retry_after: None,
        };
        let usecase = ProcessOrder::new(
            FakePayments::failing_with(unavailable),
            FakeOrders::default(),
        );
        let (_, body) = body();
        let result = usecase.execute(&body, None).await;
        assert!(matches!(
            result,
            Err(ProcessError::PaymentUnavailable {
                reason: UnavailableReason::Timeout,
                ..
            })
        ));
        assert!(matches!(disposition(&result), Disposition::Retry { .. }));
        assert!(usecase.orders.rows.lock().unwrap().is_empty());
        // The retry charges under the same key and succeeds.
        assert!(usecase.execute(&body, None).await.is_ok());
        assert_eq!(usecase.orders.rows.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_unavailable_database_is_retried_before_anything_is_charged() {
        let orders = FakeOrders {
            down: true,
            ..FakeOrders::default()
        };
        let usecase = ProcessOrder::new(FakePayments::default(), orders);
        let result = usecase.execute(&body().1, None).await;
        assert!(matches!(
            result,
            Err(ProcessError::RepositoryUnavailable(_))
        ));
        match disposition(&result) {
            Disposition::Retry { reason, .. } => assert!(!reason.contains("refused"), "{reason}"),
            other => panic!("expected a retry, got {other:?}"),
        }
        assert_eq!(*usecase.payments.calls.lock().unwrap(), 0);
    }
}
