//! [`Watched`], the decorator that counts every call the use case makes to
//! its two ports as the call returns, so that the [`Intake`]'s circuits
//! see a dependency's success or outage as soon as it is known rather than
//! when the order ends.

use std::sync::Arc;

use super::{Dependency, Intake};
use crate::domain::{
    ChargeId, Order, OrderId, OrderRepository, PaymentError, PaymentProvider, ProcessedOrder,
    RepositoryError,
};

/// A port whose every call is counted by the [`Intake`] as it returns:
/// `Watched<P>` is a `PaymentProvider` when `P` is, and `Watched<R>` an
/// `OrderRepository` when `R` is.
pub struct Watched<T> {
    inner: T,
    intake: Arc<Intake>,
}

impl<T> Watched<T> {
    pub fn new(inner: T, intake: Arc<Intake>) -> Self {
        Self { inner, intake }
    }
}

impl<P: PaymentProvider> PaymentProvider for Watched<P> {
    async fn charge(&self, order: &Order) -> Result<ChargeId, PaymentError> {
        let result = self.inner.charge(order).await;
        let failed = match &result {
            Ok(_) | Err(PaymentError::Declined | PaymentError::Rejected { .. }) => Some(false),
            Err(PaymentError::Unavailable { reason, .. }) => reason.is_outage().then_some(true),
        };
        self.intake.saw(Dependency::Payment, failed);
        result
    }
}

impl<R: OrderRepository> Watched<R> {
    fn saw<T>(&self, result: &Result<T, RepositoryError>) {
        let failed = match result {
            Ok(_) => Some(false),
            Err(error) => error.is_outage().then_some(true),
        };
        self.intake.saw(Dependency::Database, failed);
    }
}

impl<R: OrderRepository> OrderRepository for Watched<R> {
    async fn is_processed(&self, id: OrderId) -> Result<bool, RepositoryError> {
        let result = self.inner.is_processed(id).await;
        self.saw(&result);
        result
    }

    async fn save(&self, order: ProcessedOrder) -> Result<(), RepositoryError> {
        let result = self.inner.save(order).await;
        self.saw(&result);
        result
    }
}
