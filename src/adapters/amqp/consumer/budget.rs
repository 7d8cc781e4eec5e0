//! The bytes of message bodies the daemon holds: a budget that pauses
//! intake while the deliveries taken and not yet settled reach it, and the
//! prefetch that keeps the broker from pushing more than it into the
//! client's buffers.
//!
//! A delivery's share of the budget is a [`BodyBytes`], which travels with
//! the delivery (into an order task, into the queue of deliveries held
//! during an outage) and gives the bytes back when it is dropped: once the
//! delivery is settled, or abandoned with its session. Dropping is the only
//! way to give them back, so they are given back exactly once.
//!
//! The budget alone cannot bound memory: the broker pushes up to the
//! prefetch into the client's buffers whatever intake does. With bodies of
//! at most [`MAX_ORDER_BYTES`] (CONTRACT §3), a prefetch of at most
//! `budget / MAX_ORDER_BYTES` keeps those buffers within the budget too
//! ([`effective_prefetch`]). A larger body (which the use case refuses)
//! takes the whole budget while it is in flight.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::domain::MAX_ORDER_BYTES;

/// The prefetch asked of the broker: the configured one, lowered so that
/// a full window of the largest bodies fits `budget` bytes; at least 1.
pub fn effective_prefetch(configured: u16, budget: u64) -> u16 {
    let largest = u64::try_from(MAX_ORDER_BYTES).unwrap_or(u64::MAX);
    let fits = budget.checked_div(largest).unwrap_or(0);
    configured
        .min(u16::try_from(fits).unwrap_or(u16::MAX))
        .max(1)
}

/// The byte budget of one daemon, shared by all its broker sessions (the
/// orders of a session that died still hold their bytes).
pub(super) struct ByteBudget {
    bytes: Arc<Semaphore>,
    /// The whole budget: what a body larger than it takes.
    total: u32,
}

/// One delivery's share of the budget, given back when dropped.
#[derive(Debug)]
#[must_use = "the bytes are given back as soon as this is dropped"]
pub(super) struct BodyBytes {
    /// `None` only if the semaphore were closed, which nothing does.
    _permit: Option<OwnedSemaphorePermit>,
}

impl ByteBudget {
    /// A budget of `total` bytes (more than `u32::MAX` counts as that).
    pub(super) fn new(total: u64) -> Self {
        let total = u32::try_from(total).unwrap_or(u32::MAX);
        Self {
            bytes: Arc::new(Semaphore::new(usize::try_from(total).unwrap_or(usize::MAX))),
            total,
        }
    }

    /// Waits until a body of `len` bytes fits, and takes its share. A body
    /// larger than the whole budget waits for all of it.
    pub(super) async fn take(&self, len: usize) -> BodyBytes {
        let wanted = u32::try_from(len).unwrap_or(u32::MAX).min(self.total);
        let permit = Arc::clone(&self.bytes).acquire_many_owned(wanted).await;
        BodyBytes {
            _permit: permit.ok(),
        }
    }

    /// Bytes taken and not given back.
    #[cfg(test)]
    fn held(&self) -> u64 {
        let available = u64::try_from(self.bytes.available_permits()).unwrap_or(u64::MAX);
        u64::from(self.total).saturating_sub(available)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_prefetch_is_lowered_to_what_the_budget_holds_of_the_largest_bodies() {
        assert_eq!(effective_prefetch(4096, 32 << 20), 512);
        assert_eq!(effective_prefetch(100, 32 << 20), 100);
        assert_eq!(effective_prefetch(4096, 1 << 20), 16);
        assert_eq!(effective_prefetch(4096, 1000), 1);
        assert_eq!(effective_prefetch(u16::MAX, 1 << 40), u16::MAX);
    }

    #[tokio::test]
    async fn intake_waits_while_the_budget_is_spent_and_resumes_when_a_share_is_dropped() {
        let budget = ByteBudget::new(100);
        let first = budget.take(60).await;
        let second = budget.take(40).await;
        assert_eq!(budget.held(), 100);
        let third = tokio::time::timeout(Duration::from_millis(50), budget.take(1)).await;
        assert!(third.is_err(), "a full budget let a body in");
        drop(first);
        assert_eq!(budget.held(), 40);
        let third = tokio::time::timeout(Duration::from_secs(5), budget.take(60))
            .await
            .unwrap();
        assert_eq!(budget.held(), 100);
        drop((second, third));
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn a_body_larger_than_the_budget_takes_all_of_it() {
        let budget = ByteBudget::new(100);
        let large = budget.take(1_000_000).await;
        assert_eq!(budget.held(), 100);
        drop(large);
        assert_eq!(budget.held(), 0);
    }
}
