//! `dlq replay`: moves dead letters back to the work queue through the
//! exchange, with their body, properties and trace context and a fresh
//! attempt count, at most `--rate` a second. Each is removed from the
//! dead-letter queue only after the broker confirmed its copy.

use lapin::BasicProperties;

use super::letter::Filter;
use super::{Context, DlqError, Reader};
use crate::adapters::amqp::copy;
use crate::adapters::amqp::frame::BROKER_HISTORY;
use crate::adapters::amqp::headers::{self, ATTEMPTS, ERROR_KIND, ERROR_REASON};
use crate::adapters::amqp::toolkit::{self, Route};
use crate::cli::{FilterArgs, RunArgs};
use crate::commands::output::{note, say};
use crate::commands::pace::{Pacer, Progress};
use crate::telemetry::messaging::Destination;

/// What a run did.
#[derive(Debug, Default)]
struct Replayed {
    replayed: u64,
    left: u64,
}

pub async fn run(context: &Context, filter: FilterArgs, run: RunArgs) -> Result<(), DlqError> {
    let filter = Filter::new(filter);
    let mut reader = Reader::open(context, "order-processor dlq replay").await?;
    let mut done = Replayed::default();
    let result = replay(context, &mut reader, &filter, run, &mut done).await;
    reader.close().await;
    say(format_args!(
        "replayed {} dead letter(s) to {}; {} left in place",
        done.replayed, context.names.exchange, done.left
    ));
    result
}

async fn replay(
    context: &Context,
    reader: &mut Reader,
    filter: &Filter,
    run: RunArgs,
    done: &mut Replayed,
) -> Result<(), DlqError> {
    let names = &context.names;
    let frame_max = reader.link().frame_max();
    let mut pacer = Pacer::new(run.rate);
    let mut progress = Progress::new("replayed");
    let destination = Destination::send(&names.exchange, &names.routing_key);
    while run.limit.is_none_or(|limit| done.replayed < limit) {
        let Some(letter) = reader.next().await? else {
            break;
        };
        if !filter.matches(&letter) {
            done.left = done.left.saturating_add(1);
            continue;
        }
        let copy = match copy::replay_copy(without_failure_headers(&letter.properties), frame_max) {
            Ok(copy) => copy,
            Err(error) => {
                // Left in the queue (unacknowledged, so returned on close).
                note(format_args!("a dead letter cannot be replayed: {error}"));
                done.left = done.left.saturating_add(1);
                continue;
            }
        };
        if !copy.dropped.is_empty() {
            copy::log_dropped(&copy.dropped);
        }
        pacer.wait().await;
        let properties = copy.properties;
        let span = toolkit::copy_span(&destination, &letter.body, &properties);
        let to = Route {
            exchange: &names.exchange,
            routing_key: &names.routing_key,
        };
        let channel = &reader.link().channel;
        let stored = toolkit::publish_confirmed(channel, to, &letter.body, properties).await;
        if stored.is_err() {
            span.failed("not_confirmed");
        }
        drop(span);
        stored.map_err(DlqError::NotStored)?;
        reader.remove(&letter).await?;
        done.replayed = done.replayed.saturating_add(1);
        progress.add();
    }
    Ok(())
}

/// The daemon's headers that describe a past failure; a replayed message
/// starts over without them and without the broker's history.
const FAILURE_HEADERS: [&str; 3] = [ERROR_KIND, ERROR_REASON, ATTEMPTS];

/// The original properties without the failure headers (and without an
/// expiration, long past by now), so the replayed message starts again at
/// attempt 1 with its trace context intact.
fn without_failure_headers(properties: &BasicProperties) -> BasicProperties {
    let kept = headers::headers_without(properties, |name| {
        FAILURE_HEADERS.contains(&name) || BROKER_HISTORY.contains(&name)
    });
    headers::without_expiration(properties).with_headers(kept.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::amqp::headers::{text, with_headers};

    #[test]
    fn a_replayed_copy_keeps_its_trace_but_not_its_failure() {
        let dead = with_headers(
            &BasicProperties::default().with_expiration("5".into()),
            &[
                ("traceparent", text("00-ab-cd-01")),
                (ERROR_KIND, text("invalid")),
                (ATTEMPTS, text("4")),
            ],
        );
        let fresh = without_failure_headers(&dead);
        let headers = fresh.headers().clone().unwrap_or_default();
        assert!(headers.contains_key("traceparent"));
        assert!(!headers.contains_key(ERROR_KIND));
        assert!(!headers.contains_key(ATTEMPTS));
        assert_eq!(fresh.expiration(), &None);
    }
}
