//! Publishing orders with confirms, the ack-only consumers that measure what
//! the broker delivers and settles without any work per message, and the
//! end-of-run check that nothing was lost.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, Consumer};
use order_processor::adapters::amqp::TopologyNames;
use order_processor::domain::OrderMessage;
use sqlx::postgres::PgPool;
use uuid::Uuid;

use crate::measure::Cpu;
use crate::report::AckOnly;
use crate::{CONFIRM_WINDOW, Context as _, MULTIPLE_EVERY, Res};

/// A typical valid order of about 500 bytes (four items).
pub fn order() -> (Uuid, Vec<u8>) {
    let id = Uuid::new_v4();
    // Serializing plain strings and integers cannot fail.
    (id, OrderMessage::example(id).to_json().unwrap_or_default())
}

/// Publishes like `order-processor publish` (JSON, persistent, message id,
/// a `traceparent`), with confirms awaited in a sliding window.
pub struct Publisher {
    channel: Channel,
    exchange: String,
    routing_key: String,
    window: VecDeque<lapin::PublisherConfirm>,
    pub sent: usize,
    pub bytes: usize,
}

impl Publisher {
    pub async fn open(connection: &Connection, exchange: &str, routing_key: &str) -> Res<Self> {
        let channel = connection
            .create_channel()
            .await
            .context("open a channel")?;
        let confirms = channel
            .confirm_select(ConfirmSelectOptions::default())
            .await;
        confirms.context("enable publisher confirms")?;
        Ok(Self {
            channel,
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            window: VecDeque::with_capacity(CONFIRM_WINDOW),
            sent: 0,
            bytes: 0,
        })
    }

    pub async fn fill(&mut self, n: usize) -> Res<()> {
        for _ in 0..n {
            let (order_id, body) = order();
            self.send(order_id, &body).await?;
        }
        self.flush().await
    }

    pub async fn send(&mut self, order_id: Uuid, body: &[u8]) -> Res<()> {
        let (trace, span) = (rand::random::<u128>() | 1, rand::random::<u64>() | 1);
        let traceparent = format!("00-{trace:032x}-{span:016x}-01");
        let mut headers = FieldTable::default();
        let traceparent = AMQPValue::LongString(traceparent.as_str().into());
        headers.insert("traceparent".into(), traceparent);
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(order_id.to_string().as_str().into())
            .with_headers(headers);
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let (exchange, key) = (self.exchange.as_str(), self.routing_key.as_str());
        let publish =
            self.channel
                .basic_publish(exchange.into(), key.into(), options, body, properties);
        self.window.push_back(publish.await.context("publish")?);
        self.sent += 1;
        self.bytes += body.len();
        if self.window.len() >= CONFIRM_WINDOW {
            self.settle_oldest().await?;
        }
        Ok(())
    }

    async fn settle_oldest(&mut self) -> Res<()> {
        let Some(confirm) = self.window.pop_front() else {
            return Ok(());
        };
        match tokio::time::timeout(Duration::from_secs(30), confirm).await {
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            other => Err(format!("a publish was not confirmed and routed: {other:?}")),
        }
    }

    pub async fn flush(&mut self) -> Res<()> {
        while !self.window.is_empty() {
            self.settle_oldest().await?;
        }
        Ok(())
    }
}

/// How the ack-only consumer acknowledges.
#[derive(Clone, Copy)]
pub enum AckMode {
    /// Each delivery acknowledged alone, the ack awaited before the next
    /// delivery is taken: the null consumer a team writes by hand.
    EachAwaited,
    /// Each delivery acknowledged alone, without waiting for the ack's
    /// write before taking the next: the broker's own limit for single acks.
    EachPipelined,
    /// One `multiple` ack every [`MULTIPLE_EVERY`] deliveries.
    Multiple,
}

/// A channel with `prefetch` consuming `queue`.
pub async fn consume(
    connection: &Connection,
    queue: &str,
    prefetch: u16,
) -> Res<(Channel, Consumer)> {
    let channel = connection
        .create_channel()
        .await
        .context("open a channel")?;
    let qos = channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await;
    qos.context("basic.qos")?;
    let (options, arguments) = (BasicConsumeOptions::default(), FieldTable::default());
    let consumer = channel.basic_consume(queue.into(), "".into(), options, arguments);
    let consumer = consumer.await.context("basic.consume")?;
    Ok((channel, consumer))
}

/// Drains `n` messages with a consumer that only acknowledges.
pub async fn ack_only(
    connection: &Connection,
    queue: &str,
    n: usize,
    prefetch: u16,
    mode: AckMode,
) -> Res<AckOnly> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60 + n as u64 / 1000);
    let (cpu, started) = (Cpu::sample(None, None), Instant::now());
    let (channel, mut consumer) = consume(connection, queue, prefetch).await?;
    let mut acks = FuturesUnordered::new();
    for received in 1..=n {
        let delivery = tokio::time::timeout_at(deadline, consumer.next()).await;
        let delivery = delivery.map_err(|_| format!("{} of {n} arrived in time", received - 1))?;
        let delivery = delivery
            .ok_or("the consumer was cancelled")?
            .context("delivery")?;
        match mode {
            AckMode::EachAwaited => {
                let ack = delivery.ack(BasicAckOptions { multiple: false });
                ack.await.context("basic.ack")?;
            }
            AckMode::EachPipelined => {
                let acker = delivery.acker;
                acks.push(async move { acker.ack(BasicAckOptions { multiple: false }).await });
            }
            AckMode::Multiple if received % MULTIPLE_EVERY == 0 || received == n => {
                let ack =
                    channel.basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true });
                ack.await.context("basic.ack")?;
            }
            AckMode::Multiple => {}
        }
        while let Some(Some(done)) = acks.next().now_or_never() {
            done.context("basic.ack")?;
        }
    }
    while let Ok(Some(done)) = tokio::time::timeout_at(deadline, acks.next()).await {
        done.context("basic.ack")?;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let cpu = Cpu::sample(None, None).since(cpu);
    let _ = channel.close(200, "done".into()).await;
    Ok(AckOnly { rate, cpu })
}

/// Problems found: rows other than `rows`, messages left in the work queue
/// or the dead-letter queue.
pub async fn check(
    db: &PgPool,
    broker: &Connection,
    names: &TopologyNames,
    rows: usize,
) -> Res<Vec<String>> {
    let mut problems = Vec::new();
    let saved: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(db)
        .await
        .context("count the orders")?;
    if saved != rows as i64 {
        problems.push(format!("{saved} rows in orders, expected {rows}"));
    }
    for queue in [names.queue.clone(), names.dead_letter_queue()] {
        let channel = broker.create_channel().await.context("open a channel")?;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel.queue_declare(queue.as_str().into(), options, FieldTable::default());
        let left = declared
            .await
            .context("passive queue.declare")?
            .message_count();
        if left > 0 {
            problems.push(format!("{left} messages left in {queue}"));
        }
        let _ = channel.close(200, "done".into()).await;
    }
    Ok(problems)
}
