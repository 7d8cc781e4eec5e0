//! Moving a delivery to a retry queue or to the dead-letter queue.
//!
//! The copy is published with `mandatory` on a channel in confirm mode, and
//! only a broker confirmation (stored and routed) lets the caller ack the
//! original: between the two, the message exists at least once. What the
//! copy carries, and how it is kept within the connection's frame, is
//! [`super::copy`]'s business.

use std::time::Duration;

use lapin::{BasicProperties, Channel};

use super::copy;
use super::frame::{DoesNotFit, Fitted};
use super::toolkit::{self, ConfirmError, Destination};
use super::topology::Names;

#[derive(Debug, thiserror::Error)]
pub enum RepublishError {
    #[error(transparent)]
    NotStored(#[from] ConfirmError),
    #[error("the copy cannot fit the broker's frame: {0}")]
    TooLarge(#[source] DoesNotFit),
}

/// The channel retry and dead-letter copies are published on.
#[derive(Clone)]
pub struct Republisher {
    channel: Channel,
    names: Names,
    /// The connection's negotiated frame size, which every copy fits.
    frame_max: u32,
}

impl Republisher {
    pub fn new(channel: Channel, names: Names, frame_max: u32) -> Self {
        Self {
            channel,
            names,
            frame_max,
        }
    }

    /// Parks the message in the retry queue of `attempt` for `delay`.
    pub async fn retry(
        &self,
        body: &[u8],
        properties: &BasicProperties,
        attempt: u32,
        delay: Duration,
    ) -> Result<(), RepublishError> {
        let queue = self.names.retry_queue(attempt);
        let copy = copy::retry_copy(properties, &queue, attempt, delay, self.frame_max)
            .map_err(RepublishError::TooLarge)?;
        self.publish("", &queue, body, copy).await
    }

    /// Moves the message to the dead-letter queue: the same body and
    /// properties, plus why and after how many attempts.
    pub async fn dead_letter(
        &self,
        body: &[u8],
        properties: &BasicProperties,
        attempt: u32,
        kind: &str,
        reason: &str,
    ) -> Result<(), RepublishError> {
        let copy = copy::dead_letter_copy(properties, attempt, kind, reason, self.frame_max)
            .map_err(RepublishError::TooLarge)?;
        let exchange = self.names.dead_letter_exchange();
        self.publish(&exchange, &self.names.queue, body, copy).await
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        copy: Fitted,
    ) -> Result<(), RepublishError> {
        if !copy.dropped.is_empty() {
            copy::log_dropped(&copy.dropped);
        }
        let to = Destination {
            exchange,
            routing_key,
        };
        toolkit::publish_confirmed(&self.channel, to, body, copy.properties)
            .await
            .map_err(RepublishError::NotStored)
    }
}
