//! Moving a delivery to a retry queue or to the dead-letter queue.
//!
//! The copy is published with `mandatory` on a channel in confirm mode, and
//! only a broker confirmation (stored and routed) lets the caller ack the
//! original: between the two, the message exists at least once. What the
//! copy carries, and how it is kept within the connection's frame, is
//! [`super::copy`]'s business.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation};

use super::copy;
use super::frame::{DoesNotFit, Fitted};
use super::topology::Names;

pub(super) const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RepublishError {
    #[error("publishing failed: {0}")]
    Publish(#[source] lapin::Error),
    #[error("the broker did not confirm the message")]
    NotConfirmed,
    #[error("the broker did not confirm the message in time")]
    Timeout,
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
            log_dropped(&copy.dropped);
        }
        let properties = copy.properties;
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirmed = async {
            let confirm = self
                .channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    body,
                    properties,
                )
                .await
                .map_err(RepublishError::Publish)?;
            confirm.await.map_err(RepublishError::Publish)
        };
        match tokio::time::timeout(CONFIRM_TIMEOUT, confirmed).await {
            // Acked and not returned: stored in a queue.
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(_)) => Err(RepublishError::NotConfirmed),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(RepublishError::Timeout),
        }
    }
}

/// One line for an operator: which headers a copy goes without. At most a
/// few names are logged; `x-dropped-headers` on the copy has the rest.
fn log_dropped(dropped: &[String]) {
    const LOGGED: usize = 8;
    let names: Vec<&str> = dropped.iter().take(LOGGED).map(String::as_str).collect();
    tracing::warn!(
        dropped = dropped.len(),
        headers = %names.join(", "),
        "left the largest headers out of the copy so that it fits the broker's frame"
    );
}
