//! Moving a delivery to a retry queue or to the dead-letter queue.
//!
//! The copy is published with `mandatory` on a channel in confirm mode, and
//! only a broker confirmation (stored and routed) lets the caller ack the
//! original: between the two, the message exists at least once.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, Confirmation};

use super::headers::{self, ATTEMPTS, ERROR_KIND, ERROR_REASON};
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
}

/// The channel retry and dead-letter copies are published on.
#[derive(Clone)]
pub struct Republisher {
    channel: Channel,
    names: Names,
}

impl Republisher {
    pub fn new(channel: Channel, names: Names) -> Self {
        Self { channel, names }
    }

    /// Parks the message in the retry queue of `attempt` for `delay`.
    pub async fn retry(
        &self,
        body: &[u8],
        properties: &BasicProperties,
        attempt: u32,
        delay: Duration,
    ) -> Result<(), RepublishError> {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        let properties = headers::with_headers(
            properties,
            &[(ATTEMPTS, AMQPValue::LongLongInt(i64::from(attempt)))],
        )
        .with_expiration(millis.to_string().into());
        self.publish("", &self.names.retry_queue(attempt), body, properties)
            .await
    }

    /// Moves the message to the dead-letter queue: the same body and
    /// properties, plus why and after how many attempts. A publisher's
    /// `expiration` is left out, or the dead letter would expire in turn.
    pub async fn dead_letter(
        &self,
        body: &[u8],
        properties: &BasicProperties,
        attempt: u32,
        kind: &str,
        reason: &str,
    ) -> Result<(), RepublishError> {
        let properties = headers::with_headers(
            &headers::without_expiration(properties),
            &[
                (ERROR_KIND, headers::text(kind)),
                (ERROR_REASON, headers::text(reason)),
                (ATTEMPTS, AMQPValue::LongLongInt(i64::from(attempt))),
            ],
        );
        self.publish(
            &self.names.dead_letter_exchange(),
            &self.names.queue,
            body,
            properties,
        )
        .await
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), RepublishError> {
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
