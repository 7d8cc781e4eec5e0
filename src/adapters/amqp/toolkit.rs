//! The one way everything in the crate talks to the broker outside the
//! consumer's delivery loop: open a connection with a publishing channel
//! in confirm mode and the topology declared, publish with a confirm
//! bounded by the single [`CONFIRM_TIMEOUT`], and close quietly. The
//! consumer's retry and dead-letter republishes, `publish` and every `dlq`
//! command use these, so a change to how a confirm is judged or how long it
//! may take is made here once.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};

use super::headers::HeaderExtractor;
use super::topology::{self, TopologyNames};
use super::{AmqpError, connect, within_answer_timeout};
use crate::telemetry::messaging::{self, Creation, Destination, SendSpan};

/// How long the broker may take to confirm one published message. A broker
/// that blocks publishers (a memory or disk alarm) is reported instead of
/// waited for in silence.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a published message is not known to be stored.
#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    #[error("publishing failed: {0}")]
    Publish(#[source] lapin::Error),
    #[error("the broker refused the message")]
    Nacked,
    #[error("the broker returned the message: no queue is bound for it")]
    Returned,
    #[error("the broker did not confirm the message within {} s", CONFIRM_TIMEOUT.as_secs())]
    Timeout,
}

/// A connection and one channel in confirm mode, with the topology
/// declared, so that nothing published on it is dropped for want of a queue.
pub struct Link {
    pub connection: Connection,
    pub channel: Channel,
}

impl Link {
    /// Connects as `name` (shown in the management UI), declares the
    /// topology and puts the channel in confirm mode.
    pub async fn open(
        url: &str,
        name: &str,
        names: &TopologyNames,
        max_attempts: u32,
    ) -> Result<Self, AmqpError> {
        let connection = connect(url, name).await?;
        let channel =
            within_answer_timeout(connection.create_channel(), AmqpError::Channel).await?;
        let declared = topology::declare(&channel, names, max_attempts);
        within_answer_timeout(declared, AmqpError::Topology).await?;
        let confirms = channel.confirm_select(ConfirmSelectOptions::default());
        within_answer_timeout(confirms, AmqpError::Channel).await?;
        Ok(Self {
            connection,
            channel,
        })
    }

    /// The connection's negotiated frame size, which every copy must fit
    /// (see [`super::frame`]).
    pub fn frame_max(&self) -> u32 {
        self.connection.configuration().frame_max()
    }

    /// Closes the channel and the connection. Every message read but not
    /// acknowledged goes back to its queue.
    pub async fn close(self, extra: &[&Channel]) {
        let mut channels = vec![&self.channel];
        channels.extend_from_slice(extra);
        close_quietly(&self.connection, &channels).await;
    }
}

/// Closes `channels`, then `connection`; one already closed (the broker went
/// away) is no failure worth reporting when the work is done.
pub async fn close_quietly(connection: &Connection, channels: &[&Channel]) {
    for channel in channels {
        let closed = within_answer_timeout(channel.close(200, "done".into()), AmqpError::Channel);
        if let Err(error) = closed.await {
            tracing::debug!(%error, "channel already closed");
        }
    }
    let closed = within_answer_timeout(connection.close(200, "done".into()), AmqpError::Channel);
    if let Err(error) = closed.await {
        tracing::debug!(%error, "connection already closed");
    }
}

/// Where a message goes: an exchange and the routing key it is sent with.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
}

/// Sends one message with `mandatory` (an unroutable one comes back rather
/// than vanishing) and returns its pending confirm, so that a caller may
/// keep a window of them in flight and judge each with [`confirmed`].
pub async fn send(
    channel: &Channel,
    to: Route<'_>,
    body: &[u8],
    properties: BasicProperties,
) -> Result<PublisherConfirm, ConfirmError> {
    let sent = publish(channel, to, body, properties);
    match tokio::time::timeout(CONFIRM_TIMEOUT, sent).await {
        Ok(sent) => sent,
        Err(_) => Err(ConfirmError::Timeout),
    }
}

/// Waits for the broker to say the message is stored in a queue: acked and
/// not returned.
pub async fn confirmed(confirm: PublisherConfirm) -> Result<(), ConfirmError> {
    match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
        Ok(answer) => judge(answer),
        Err(_) => Err(ConfirmError::Timeout),
    }
}

/// Sends and waits for the confirm, both within one [`CONFIRM_TIMEOUT`]:
/// on `Ok` the message exists in a queue, and the caller may acknowledge
/// the original it copies.
pub async fn publish_confirmed(
    channel: &Channel,
    to: Route<'_>,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), ConfirmError> {
    let stored = async {
        let confirm = publish(channel, to, body, properties).await?;
        judge(confirm.await)
    };
    match tokio::time::timeout(CONFIRM_TIMEOUT, stored).await {
        Ok(stored) => stored,
        Err(_) => Err(ConfirmError::Timeout),
    }
}

async fn publish(
    channel: &Channel,
    to: Route<'_>,
    body: &[u8],
    properties: BasicProperties,
) -> Result<PublisherConfirm, ConfirmError> {
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    channel
        .basic_publish(
            to.exchange.into(),
            to.routing_key.into(),
            options,
            body,
            properties,
        )
        .await
        .map_err(ConfirmError::Publish)
}

fn judge(answer: lapin::Result<Confirmation>) -> Result<(), ConfirmError> {
    match answer {
        Ok(Confirmation::Ack(None)) => Ok(()),
        Ok(Confirmation::Ack(Some(_))) => Err(ConfirmError::Returned),
        Ok(_) => Err(ConfirmError::Nacked),
        Err(error) => Err(ConfirmError::Publish(error)),
    }
}

/// The send span of a copy of a message (a retry, a dead letter, a
/// replay): it links to the creation context the copy's headers keep.
pub fn copy_span(destination: &Destination, body: &[u8], properties: &BasicProperties) -> SendSpan {
    let carrier = HeaderExtractor(properties.headers().as_ref());
    let message_id = properties.message_id().as_ref().map(|id| id.as_str());
    messaging::producer_span(
        destination,
        message_id,
        body.len(),
        Creation::Kept(&carrier),
    )
}
