//! RabbitMQ: topology, the consumer that feeds the worker pool, the
//! settlement of deliveries (ack, broker-held retry, dead letter), and the
//! [`toolkit`] every command uses to connect, publish with a confirm and
//! close.

mod broker_check;
mod consumer;
pub mod copy;
pub mod frame;
pub mod headers;
mod republish;
mod settler;
pub mod toolkit;
pub mod topology;

use std::future::IntoFuture;
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

pub use broker_check::BrokerCheckSettings;
pub use consumer::{AmqpConsumer, ConsumerSettings, effective_prefetch};
pub use topology::TopologyNames;

/// How long connecting (TCP, TLS, AMQP handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the broker may take to answer one request (open a channel,
/// declare, consume, acknowledge, cancel, close). Heartbeats would notice a
/// dead connection too, but only after a minute or more.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A broker failure. `Display` never shows the URL or its credentials.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("could not connect to the broker: {0}")]
    Connect(#[source] lapin::Error),
    #[error("connecting to the broker timed out")]
    ConnectTimeout,
    #[error("could not declare the topology: {0}")]
    Topology(#[source] lapin::Error),
    #[error("the broker channel failed: {0}")]
    Channel(#[source] lapin::Error),
    #[error("the broker cancelled the consumer")]
    ConsumerCancelled,
    #[error("acknowledgements could not be sent")]
    AckFailed,
    #[error("the broker did not answer within {} s", ANSWER_TIMEOUT.as_secs())]
    NoAnswer,
}

/// `request`, bounded by [`ANSWER_TIMEOUT`]: a broker that does not answer
/// ends the session like one that refuses, instead of holding it forever.
pub(crate) async fn within_answer_timeout<T, E: From<AmqpError>>(
    request: impl IntoFuture<Output = lapin::Result<T>>,
    failed: impl FnOnce(lapin::Error) -> E,
) -> Result<T, E> {
    match tokio::time::timeout(ANSWER_TIMEOUT, request).await {
        Ok(answer) => answer.map_err(failed),
        Err(_) => Err(AmqpError::NoAnswer.into()),
    }
}

/// Opens a connection named after the process, so operators can find it in
/// the management UI.
pub async fn connect(url: &str, name: &str) -> Result<Connection, AmqpError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => Err(AmqpError::Connect(error)),
        Err(_) => Err(AmqpError::ConnectTimeout),
    }
}
