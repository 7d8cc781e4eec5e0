//! The broker objects the daemon needs, declared idempotently at start and
//! after every reconnect.
//!
//! From the configured exchange `X` and queue `Q`:
//! - `X`, a durable topic exchange, and `Q`, a durable quorum queue bound to
//!   it with the routing key;
//! - `Q.retry.N` for each attempt N that may be retried: quorum queues
//!   holding a failed message for its backoff delay (a per-message TTL),
//!   then dead-lettering it back to `Q` through the default exchange. A
//!   queue per attempt keeps the delays of one queue within [d/2, d], so a
//!   message never waits behind one with a much longer delay;
//! - `X.dlx`, a durable direct exchange, and `Q.dead`, the dead-letter
//!   queue bound to it with the key `Q`.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

/// The names derived from the configured exchange and queue.
#[derive(Debug, Clone)]
pub struct TopologyNames {
    pub exchange: String,
    pub routing_key: String,
    pub queue: String,
}

impl TopologyNames {
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.exchange)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }

    /// Where a message waits after attempt `attempt` failed.
    pub fn retry_queue(&self, attempt: u32) -> String {
        format!("{}.retry.{attempt}", self.queue)
    }
}

fn long(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

fn quorum() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), long("quorum"));
    arguments
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Declares everything; `max_attempts` decides how many retry queues exist.
pub async fn declare(
    channel: &Channel,
    names: &TopologyNames,
    max_attempts: u32,
) -> lapin::Result<()> {
    let exchange_options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            names.exchange.as_str().into(),
            ExchangeKind::Topic,
            exchange_options,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(names.queue.as_str().into(), durable(), quorum())
        .await?;
    channel
        .queue_bind(
            names.queue.as_str().into(),
            names.exchange.as_str().into(),
            names.routing_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let dlx = names.dead_letter_exchange();
    let dead = names.dead_letter_queue();
    channel
        .exchange_declare(
            dlx.as_str().into(),
            ExchangeKind::Direct,
            exchange_options,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(dead.as_str().into(), durable(), quorum())
        .await?;
    channel
        .queue_bind(
            dead.as_str().into(),
            dlx.as_str().into(),
            names.queue.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    for attempt in 1..max_attempts {
        let mut arguments = quorum();
        arguments.insert("x-dead-letter-exchange".into(), long(""));
        arguments.insert("x-dead-letter-routing-key".into(), long(&names.queue));
        // Quorum queues hand expired messages on only after the target
        // confirmed them, so a broker crash cannot lose a waiting retry.
        arguments.insert("x-dead-letter-strategy".into(), long("at-least-once"));
        arguments.insert("x-overflow".into(), long("reject-publish"));
        let queue: ShortString = names.retry_queue(attempt).into();
        channel.queue_declare(queue, durable(), arguments).await?;
    }
    Ok(())
}
