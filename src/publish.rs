//! `order-processor publish`: sends orders to the configured exchange with
//! publisher confirms, each with a fresh W3C `traceparent` from its own
//! producer span, and prints the order and trace ids so an order can be
//! found in Jaeger.
//!
//! Orders are generated (`--count`, `--invalid-ratio`) or read from a
//! JSON-lines file. Confirms are awaited in a sliding window rather than
//! one by one, so filling a queue for a benchmark is fast.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, PublisherConfirm};
use rand::Rng as _;
use tokio::io::AsyncBufReadExt as _;
use uuid::Uuid;

use crate::adapters::amqp::headers::HeaderInjector;
use crate::adapters::amqp::{self, AmqpError, Names, answered, topology};
use crate::cli::PublishArgs;
use crate::domain::{OrderMessage, OrderMessageItem};
use crate::telemetry;

/// Confirms awaited at most this far behind the newest publish.
const CONFIRM_WINDOW: usize = 1024;
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_COUNT: u64 = 10;
/// Progress goes to stderr every this many messages.
const PROGRESS_EVERY: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Broker(#[from] AmqpError),
    #[error("could not publish: {0}")]
    Publish(#[source] lapin::Error),
    #[error("could not read the orders file: {0}")]
    Read(#[source] std::io::Error),
    #[error("the broker did not confirm {0} message(s)")]
    Unconfirmed(u64),
    #[error("could not encode a generated order: {0}")]
    Encode(#[source] serde_json::Error),
}

/// What one run published.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub published: u64,
    pub confirmed: u64,
}

pub async fn run(
    url: &str,
    names: &Names,
    max_attempts: u32,
    args: &PublishArgs,
) -> Result<Summary, PublishError> {
    let connection = amqp::connect(url, "order-processor publish").await?;
    let channel = answered(connection.create_channel(), AmqpError::Channel).await?;
    // Declaring first means nothing published now is dropped for want of a queue.
    let declared = topology::declare(&channel, names, max_attempts);
    answered(declared, AmqpError::Topology).await?;
    let confirms = channel.confirm_select(ConfirmSelectOptions::default());
    answered(confirms, AmqpError::Channel).await?;

    let mut publisher = Publisher {
        channel,
        names,
        pending: VecDeque::with_capacity(CONFIRM_WINDOW),
        summary: Summary::default(),
        unconfirmed: 0,
        quiet: args.quiet,
        started: Instant::now(),
        rate: args.rate,
        out: std::io::stdout().lock(),
    };
    match &args.file {
        Some(path) => publisher.publish_file(path).await?,
        None => {
            let count = args.count.unwrap_or(DEFAULT_COUNT);
            for _ in 0..count {
                let (id, body) = generate(args.invalid_ratio)?;
                publisher.publish(Some(id), &body).await?;
            }
        }
    }
    let summary = publisher.finish().await?;
    let closed = answered(connection.close(200, "done".into()), AmqpError::Channel);
    if let Err(error) = closed.await {
        tracing::debug!(%error, "connection already closed");
    }
    Ok(summary)
}

struct Publisher<'a> {
    channel: lapin::Channel,
    names: &'a Names,
    pending: VecDeque<PublisherConfirm>,
    summary: Summary,
    unconfirmed: u64,
    quiet: bool,
    started: Instant,
    rate: Option<f64>,
    out: std::io::StdoutLock<'static>,
}

impl Publisher<'_> {
    async fn publish_file(&mut self, path: &Path) -> Result<(), PublishError> {
        let reader: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if path == Path::new("-") {
            Box::new(tokio::io::stdin())
        } else {
            Box::new(
                tokio::fs::File::open(path)
                    .await
                    .map_err(PublishError::Read)?,
            )
        };
        let mut lines = tokio::io::BufReader::new(reader).lines();
        while let Some(line) = lines.next_line().await.map_err(PublishError::Read)? {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            // A line that is not an order is published all the same (to try
            // out dead-lettering); it just has no order id to print.
            let id = serde_json::from_str::<OrderIdOnly>(line)
                .ok()
                .map(|only| only.order_id);
            self.publish(id, line.as_bytes()).await?;
        }
        Ok(())
    }

    async fn publish(&mut self, order_id: Option<String>, body: &[u8]) -> Result<(), PublishError> {
        self.pace().await;
        let mut headers = FieldTable::default();
        let send = telemetry::messaging::producer_span(
            &telemetry::messaging::Destination::send(&self.names.exchange, &self.names.routing_key),
            order_id.as_deref(),
            body.len(),
            telemetry::messaging::Creation::Inject(&mut HeaderInjector(&mut headers)),
        );
        let trace_id = send.trace_id().unwrap_or_default();
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        if let Some(id) = &order_id {
            properties = properties.with_message_id(id.as_str().into());
        }
        // Bounded: a broker that blocks publishers (a memory or disk alarm)
        // is reported instead of waited for in silence.
        let publish = self.channel.basic_publish(
            self.names.exchange.as_str().into(),
            self.names.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties,
        );
        let confirm = answered(publish, PublishError::Publish).await?;
        drop(send);
        self.summary.published = self.summary.published.saturating_add(1);
        if self.summary.published.is_multiple_of(PROGRESS_EVERY) {
            // Progress is a courtesy; a closed stderr must not stop publishing.
            let _ = writeln!(std::io::stderr(), "published {}…", self.summary.published);
        }
        if !self.quiet {
            // stdout going away (a closed pipe) is no reason to stop publishing.
            let _ = writeln!(
                self.out,
                "order_id={} trace_id={trace_id}",
                order_id.as_deref().unwrap_or("-")
            );
        }
        self.pending.push_back(confirm);
        if self.pending.len() >= CONFIRM_WINDOW {
            self.settle_oldest().await;
        }
        Ok(())
    }

    /// Sleeps until the next message is due under `--rate`.
    async fn pace(&self) {
        let Some(rate) = self.rate else { return };
        // A rate so low that the next message is due beyond `Duration::MAX`
        // waits that long instead of overflowing.
        let due = Duration::try_from_secs_f64(self.summary.published as f64 / rate)
            .unwrap_or(Duration::MAX);
        let elapsed = self.started.elapsed();
        if let Some(wait) = due.checked_sub(elapsed) {
            tokio::time::sleep(wait).await;
        }
    }

    async fn settle_oldest(&mut self) {
        let Some(confirm) = self.pending.pop_front() else {
            return;
        };
        match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
            Ok(Ok(Confirmation::Ack(None))) => {
                self.summary.confirmed = self.summary.confirmed.saturating_add(1);
            }
            _ => self.unconfirmed = self.unconfirmed.saturating_add(1),
        }
    }

    async fn finish(mut self) -> Result<Summary, PublishError> {
        while !self.pending.is_empty() {
            self.settle_oldest().await;
        }
        // Closed here rather than dropped: a dropped channel is closed in
        // the background, and that close would race the connection's.
        let closed = answered(self.channel.close(200, "done".into()), AmqpError::Channel);
        if let Err(error) = closed.await {
            tracing::debug!(%error, "channel already closed");
        }
        if self.unconfirmed > 0 {
            return Err(PublishError::Unconfirmed(self.unconfirmed));
        }
        Ok(self.summary)
    }
}

#[derive(serde::Deserialize)]
struct OrderIdOnly {
    order_id: String,
}

/// A random order (about 500 bytes), or with probability `invalid_ratio`
/// one that breaks a rule and must be dead-lettered.
pub fn generate(invalid_ratio: f64) -> Result<(String, Vec<u8>), PublishError> {
    let mut rng = rand::rng();
    let id = Uuid::new_v4();
    let mut message = OrderMessage::example(id);
    message.customer_id = format!("cus_{}", rng.random_range(1..100_000));
    message.items = (0..rng.random_range(2..=4))
        .map(|i| OrderMessageItem {
            sku: format!("SKU-{i}-{}", rng.random_range(100..1000)),
            quantity: rng.random_range(1..=5),
            unit_price_minor: rng.random_range(100..10_000),
        })
        .collect();
    if rng.random_bool(invalid_ratio.clamp(0.0, 1.0)) {
        match rng.random_range(0..3) {
            0 => message.currency = "ZZZ".to_owned(),
            1 => {
                if let Some(item) = message.items.first_mut() {
                    item.quantity = 0;
                }
            }
            _ => message.order_id = "not-a-uuid".to_owned(),
        }
    }
    let body = message.to_json().map_err(PublishError::Encode)?;
    Ok((message.order_id, body))
}
