//! `order-processor dlq list` and `dlq replay`: what an operator needs when
//! messages pile up in the dead-letter queue.
//!
//! Both read `Q.dead` without acknowledging as they go: a message leaves
//! the queue only once its replacement is confirmed by the broker, and
//! everything else is returned to the queue when the channel closes. So a
//! crash, a typo or Ctrl-C in the middle never loses a dead letter. Both
//! read at most the messages that were in the queue when they started: a
//! replayed order that fails again while the daemon runs is dead-lettered
//! anew, and is not read (and replayed) again by the same run.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation};

use crate::adapters::amqp::copy;
use crate::adapters::amqp::headers::{self, ATTEMPTS, ERROR_KIND, ERROR_REASON};
use crate::adapters::amqp::{self, AmqpError, Names, answered, topology};

const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// Progress is reported on stderr every this many messages.
const PROGRESS_EVERY: u64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Broker(#[from] AmqpError),
    #[error("reading the dead-letter queue failed: {0}")]
    Read(#[source] lapin::Error),
    #[error("the broker did not confirm a replayed message; it stays in the dead-letter queue")]
    NotConfirmed,
}

/// Dead letters of one kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KindSummary {
    pub count: u64,
    /// Distinct reasons with their counts (at most a few dozen are kept).
    pub reasons: BTreeMap<String, u64>,
}

const MAX_REASONS: usize = 32;

async fn open(
    url: &str,
    names: &Names,
    max_attempts: u32,
) -> Result<(lapin::Connection, Channel), DlqError> {
    let connection = amqp::connect(url, "order-processor dlq").await?;
    let channel = answered(connection.create_channel(), AmqpError::Channel).await?;
    let declared = topology::declare(&channel, names, max_attempts);
    answered(declared, AmqpError::Topology).await?;
    Ok((connection, channel))
}

async fn close(connection: lapin::Connection) {
    // Closing returns every message that was read but not acknowledged.
    let closed = answered(connection.close(200, "done".into()), AmqpError::Channel);
    if let Err(error) = closed.await {
        tracing::debug!(%error, "connection already closed");
    }
}

/// How many messages `queue` holds ready now: the most one run reads.
async fn ready_now(channel: &Channel, queue: &str) -> Result<u64, DlqError> {
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declare = channel.queue_declare(queue.into(), options, FieldTable::default());
    let declared = answered(declare, DlqError::Read).await?;
    Ok(u64::from(declared.message_count()))
}

fn header(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(value) => {
            Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
        }
        AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
        _ => None,
    }
}

/// Counts the dead letters by kind and reason, leaving them all in place.
pub async fn list(
    url: &str,
    names: &Names,
    max_attempts: u32,
) -> Result<BTreeMap<String, KindSummary>, DlqError> {
    let (connection, channel) = open(url, names, max_attempts).await?;
    let queue = names.dead_letter_queue();
    let at_start = ready_now(&channel, &queue).await?;
    let mut kinds: BTreeMap<String, KindSummary> = BTreeMap::new();
    let mut seen = 0u64;
    while seen < at_start {
        let get = channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false });
        let Some(message) = answered(get, DlqError::Read).await? else {
            break;
        };
        let properties = &message.delivery.properties;
        let kind = header(properties, ERROR_KIND).unwrap_or_else(|| "unknown".to_owned());
        let reason = header(properties, ERROR_REASON).unwrap_or_default();
        let summary = kinds.entry(kind).or_default();
        summary.count = summary.count.saturating_add(1);
        if summary.reasons.len() < MAX_REASONS || summary.reasons.contains_key(&reason) {
            let n = summary.reasons.entry(reason).or_default();
            *n = n.saturating_add(1);
        }
        seen = seen.saturating_add(1);
        if seen.is_multiple_of(PROGRESS_EVERY) {
            // Progress is a courtesy; a closed stderr must not stop the count.
            let _ = writeln!(std::io::stderr(), "read {seen} dead letters…");
        }
    }
    close(connection).await;
    Ok(kinds)
}

/// What `replay` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    pub replayed: u64,
    pub skipped: u64,
}

/// Moves dead letters (of `kind`, at most `limit`) back to the work queue
/// through the exchange, with their body, properties and trace context, and
/// a fresh attempt count. Each is removed from the dead-letter queue only
/// after the broker confirmed its copy.
pub async fn replay(
    url: &str,
    names: &Names,
    max_attempts: u32,
    kind: Option<&str>,
    limit: Option<u64>,
) -> Result<Replayed, DlqError> {
    let (connection, channel) = open(url, names, max_attempts).await?;
    // Every copy fits this connection's frame (see `amqp::frame`).
    let frame_max = connection.configuration().frame_max();
    let confirms = channel.confirm_select(ConfirmSelectOptions::default());
    answered(confirms, AmqpError::Channel).await?;
    let queue = names.dead_letter_queue();
    let at_start = ready_now(&channel, &queue).await?;
    let mut done = Replayed::default();
    let mut stderr = std::io::stderr();
    while limit.is_none_or(|limit| done.replayed < limit)
        && done.replayed.saturating_add(done.skipped) < at_start
    {
        let get = channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false });
        let Some(message) = answered(get, DlqError::Read).await? else {
            break;
        };
        let delivery = &message.delivery;
        let matches = kind
            .is_none_or(|kind| header(&delivery.properties, ERROR_KIND).as_deref() == Some(kind));
        if !matches {
            done.skipped = done.skipped.saturating_add(1);
            continue;
        }
        let copy = match copy::replay_copy(fresh_attempts(&delivery.properties), frame_max) {
            Ok(copy) => copy,
            Err(error) => {
                // Left in the queue (unacknowledged, so returned on close).
                let _ = writeln!(stderr, "a dead letter cannot be replayed: {error}");
                done.skipped = done.skipped.saturating_add(1);
                continue;
            }
        };
        if !copy.dropped.is_empty() {
            let _ = writeln!(
                stderr,
                "replayed without {} header(s) to fit the broker's frame: see x-dropped-headers",
                copy.dropped.len()
            );
        }
        let properties = copy.properties;
        let publish = channel.basic_publish(
            names.exchange.as_str().into(),
            names.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &delivery.data,
            properties,
        );
        let confirm = answered(publish, DlqError::Read).await?;
        match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
            Ok(Ok(Confirmation::Ack(None))) => {}
            _ => {
                close(connection).await;
                return Err(DlqError::NotConfirmed);
            }
        }
        let ack = channel.basic_ack(delivery.delivery_tag, BasicAckOptions::default());
        answered(ack, DlqError::Read).await?;
        done.replayed = done.replayed.saturating_add(1);
        if done.replayed.is_multiple_of(PROGRESS_EVERY) {
            // Progress is a courtesy; a closed stderr must not stop the replay.
            let _ = writeln!(stderr, "replayed {}…", done.replayed);
        }
    }
    close(connection).await;
    Ok(done)
}

/// Headers that describe a past failure; a replayed message starts over
/// without them (the broker's `x-death` bookkeeping included).
const FAILURE_HEADERS: [&str; 10] = [
    ERROR_KIND,
    ERROR_REASON,
    ATTEMPTS,
    headers::DEATHS,
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
];

/// The original properties without the failure headers (and without an
/// expiration, long past by now), so the replayed message starts again at
/// attempt 1 with its trace context intact.
fn fresh_attempts(properties: &BasicProperties) -> BasicProperties {
    let kept: BTreeMap<_, _> = properties
        .headers()
        .as_ref()
        .map(|headers| {
            headers
                .inner()
                .iter()
                .filter(|(name, _)| !FAILURE_HEADERS.contains(&name.as_str()))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect()
        })
        .unwrap_or_default();
    headers::without_expiration(properties).with_headers(kept.into())
}
