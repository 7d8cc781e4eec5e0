//! Moving a delivery to a retry queue or to the dead-letter queue.
//!
//! The copy is published with `mandatory` on a channel in confirm mode, and
//! only a broker confirmation (stored and routed) lets the caller ack the
//! original: between the two, the message exists at least once. What the
//! copy carries, and how it is kept within the connection's frame, is
//! [`super::copy`]'s business. Each copy is published under a send span
//! (a child of the delivery's process span, linked to the message's own
//! creation context, which the copy keeps).

use std::time::Duration;

use lapin::{BasicProperties, Channel};

use super::copy;
use super::frame::{DoesNotFit, Fitted};
use super::toolkit::{self, ConfirmError, Route};
use super::topology::TopologyNames;
use crate::telemetry::messaging::{Destination, Server};

#[derive(Debug, thiserror::Error)]
pub enum RepublishError {
    #[error(transparent)]
    NotStored(#[from] ConfirmError),
    #[error("the copy cannot fit the broker's frame: {0}")]
    TooLarge(#[source] DoesNotFit),
}

impl RepublishError {
    /// The `error.type` of the copy's send span.
    fn error_type(&self) -> &'static str {
        match self {
            Self::NotStored(ConfirmError::Publish(_)) => "publish_failed",
            Self::NotStored(ConfirmError::Nacked | ConfirmError::Returned) => "not_confirmed",
            Self::NotStored(ConfirmError::Timeout) => "timeout",
            Self::TooLarge(_) => "frame_too_small",
        }
    }
}

/// The channel retry and dead-letter copies are published on.
#[derive(Clone)]
pub struct Republisher {
    channel: Channel,
    names: TopologyNames,
    /// The connection's negotiated frame size, which every copy fits.
    frame_max: u32,
    /// Where dead letters go, as their send spans name it.
    dead_letters: Destination,
    /// The broker, as send spans name it.
    server: Option<Server>,
}

impl Republisher {
    pub fn new(channel: Channel, names: TopologyNames, frame_max: u32) -> Self {
        let dead_letters = Destination::send(&names.dead_letter_exchange(), &names.queue);
        Self {
            channel,
            names,
            frame_max,
            dead_letters,
            server: None,
        }
    }

    /// The same, with send spans that name the broker `server`.
    pub fn at(self, server: Option<Server>) -> Self {
        Self {
            dead_letters: self.dead_letters.at(server.as_ref()),
            server,
            ..self
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
        let published = async {
            let copy = copy::retry_copy(properties, &queue, attempt, delay, self.frame_max)
                .map_err(RepublishError::TooLarge)?;
            self.publish("", &queue, body, copy).await
        };
        let destination = Destination::send("", &queue).at(self.server.as_ref());
        traced(&destination, body, properties, published).await
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
        let published = async {
            let copy = copy::dead_letter_copy(properties, attempt, kind, reason, self.frame_max)
                .map_err(RepublishError::TooLarge)?;
            let exchange = self.names.dead_letter_exchange();
            self.publish(&exchange, &self.names.queue, body, copy).await
        };
        traced(&self.dead_letters, body, properties, published).await
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
        let to = Route {
            exchange,
            routing_key,
        };
        toolkit::publish_confirmed(&self.channel, to, body, copy.properties)
            .await
            .map_err(RepublishError::NotStored)
    }
}

/// Publishes a copy under its send span, which records a failure.
async fn traced(
    destination: &Destination,
    body: &[u8],
    properties: &BasicProperties,
    published: impl Future<Output = Result<(), RepublishError>>,
) -> Result<(), RepublishError> {
    let span = toolkit::copy_span(destination, body, properties);
    let result = published.await;
    if let Err(error) = &result {
        span.failed(error.error_type());
    }
    result
}
