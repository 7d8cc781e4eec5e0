//! `order-processor dlq`: what an operator needs when messages pile up in
//! the dead-letter queue `Q.dead`: `list`, `show`, `replay`, `purge`,
//! `export` and `import`, one file each.
//!
//! Every command reads `Q.dead` with `basic.get` and no automatic
//! acknowledgement: a dead letter leaves the queue only when a command
//! acknowledges it, and a command that moves it elsewhere does so only once
//! its copy is safe there (a publisher confirm for `replay`, an fsynced
//! line for `export`). Everything read but not acknowledged returns to the
//! queue when the connection closes, so a crash, a typo or Ctrl-C never
//! loses a dead letter; at worst one is in both places, which the order id
//! makes harmless. Each run reads at most the messages that were in the
//! queue when it started: a replayed order that fails again while the
//! daemon runs is dead-lettered anew, and is not read again by the same run.

mod export;
mod import;
mod jsonl;
mod letter;
mod list;
mod purge;
mod replay;
mod show;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

use self::letter::DeadLetter;
use crate::adapters::amqp::toolkit::{ConfirmError, Link, close_quietly};
use crate::adapters::amqp::{AmqpError, TopologyNames, within_answer_timeout};
use crate::cli::DlqCommand;
use crate::commands::amqp_names;
use crate::config::Settings;

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Broker(#[from] AmqpError),
    #[error("reading the dead-letter queue failed: {0}")]
    Read(#[source] lapin::Error),
    #[error("a copy was not stored ({0}); its dead letter stays in the queue")]
    NotStored(#[source] ConfirmError),
    #[error("{0}")]
    File(String),
    #[error("no dead letter of order {order_id} in {queue}")]
    NotFound { order_id: String, queue: String },
    #[error("{0}")]
    Refused(&'static str),
}

/// Where the commands find the broker and the queues.
pub struct Context {
    pub url: String,
    pub names: TopologyNames,
    pub max_attempts: u32,
}

/// Runs one `dlq` command, printing its result on stdout and its progress
/// on stderr.
pub async fn run(settings: &Settings, command: DlqCommand) -> Result<(), DlqError> {
    let context = Context {
        url: settings.amqp.url.expose().to_owned(),
        names: amqp_names(settings),
        max_attempts: settings.retry.max_attempts,
    };
    match command {
        DlqCommand::List(filter) => list::run(&context, filter).await,
        DlqCommand::Show { order_id } => show::run(&context, &order_id).await,
        DlqCommand::Replay { filter, run } => replay::run(&context, filter, run).await,
        DlqCommand::Purge { filter, run, yes } => purge::run(&context, filter, run, yes).await,
        DlqCommand::Export {
            file,
            keep,
            filter,
            run,
        } => export::run(&context, &file, keep, filter, run).await,
        DlqCommand::Import { file, skip, rate } => import::run(&context, &file, skip, rate).await,
    }
}

/// Reads `Q.dead` one message at a time, at most the messages it held
/// when the reader opened.
pub struct Reader {
    link: Link,
    queue: String,
    left: u64,
    /// Messages in the queue when the reader opened.
    at_open: u32,
    removed: AtomicU32,
}

/// How long [`Reader::close`] waits for the broker to take back what was
/// read and not removed.
const RETURN_WAIT: Duration = Duration::from_secs(5);

impl Reader {
    pub async fn open(context: &Context, name: &str) -> Result<Self, DlqError> {
        let names = &context.names;
        let link = Link::open(&context.url, name, names, context.max_attempts).await?;
        let queue = names.dead_letter_queue();
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declare =
            link.channel
                .queue_declare(queue.as_str().into(), options, FieldTable::default());
        let declared = within_answer_timeout(declare, DlqError::Read).await?;
        Ok(Self {
            link,
            queue,
            left: u64::from(declared.message_count()),
            at_open: declared.message_count(),
            removed: AtomicU32::new(0),
        })
    }

    /// The next dead letter, or `None` once every message that was in the
    /// queue at the start has been read.
    pub async fn next(&mut self) -> Result<Option<DeadLetter>, DlqError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left = self.left.saturating_sub(1);
        let get = self.link.channel.basic_get(
            self.queue.as_str().into(),
            BasicGetOptions { no_ack: false },
        );
        let Some(message) = within_answer_timeout(get, DlqError::Read).await? else {
            return Ok(None);
        };
        let delivery = message.delivery;
        Ok(Some(DeadLetter {
            tag: delivery.delivery_tag,
            body: delivery.data,
            properties: delivery.properties,
        }))
    }

    /// Removes a dead letter from the queue for good.
    pub async fn remove(&self, letter: &DeadLetter) -> Result<(), DlqError> {
        let ack = self
            .link
            .channel
            .basic_ack(letter.tag, BasicAckOptions::default());
        within_answer_timeout(ack, DlqError::Read).await?;
        self.removed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The broker link, to publish copies on (its channel is in confirm mode).
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// Closes the link: every message read and not removed returns to the
    /// queue. The broker returns them a moment after the reading channel
    /// closes; this waits (at most [`RETURN_WAIT`]) until the queue holds
    /// them again, so that whatever runs next (another command, a count)
    /// sees them.
    pub async fn close(self) {
        let expected = self
            .at_open
            .saturating_sub(self.removed.load(Ordering::Relaxed));
        let Link {
            connection,
            channel,
        } = self.link;
        if let Err(error) =
            within_answer_timeout(channel.close(200, "done".into()), DlqError::Read).await
        {
            tracing::debug!(%error, "channel already closed");
        }
        let probe = match within_answer_timeout(connection.create_channel(), DlqError::Read).await {
            Ok(probe) => probe,
            Err(error) => {
                tracing::debug!(%error, "cannot wait for the dead letters' return");
                close_quietly(&connection, &[]).await;
                return;
            }
        };
        let now = tokio::time::Instant::now();
        let deadline = now.checked_add(RETURN_WAIT).unwrap_or(now);
        loop {
            let options = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            let declare =
                probe.queue_declare(self.queue.as_str().into(), options, FieldTable::default());
            match within_answer_timeout(declare, DlqError::Read).await {
                Ok(declared) if declared.message_count() >= expected => break,
                Ok(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(_) => break,
                Err(error) => {
                    tracing::debug!(%error, "cannot wait for the dead letters' return");
                    break;
                }
            }
        }
        close_quietly(&connection, &[&probe]).await;
    }
}
