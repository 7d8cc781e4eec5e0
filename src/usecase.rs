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

use tracing::instrument;

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
    #[error("the payment provider is unavailable ({0})")]
    PaymentUnavailable(UnavailableReason),
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
            PaymentError::Unavailable { reason } => Self::PaymentUnavailable(reason),
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

    /// Processes one message body. `trace_id` is recorded with the order so
    /// that a row leads back to its trace.
    pub async fn execute(
        &self,
        body: &[u8],
        trace_id: Option<String>,
    ) -> Result<Processed, ProcessError> {
        let order = validate(body)?;
        // The caller's span (one per delivery) declares `order.id`.
        tracing::Span::current().record("order.id", tracing::field::display(order.id()));
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

#[instrument(name = "validate", skip_all)]
fn validate(body: &[u8]) -> Result<Order, OrderError> {
    Order::parse(body)
}
