//! `dlq import --file F`: publishes each line of a file written by `dlq
//! export` back into the dead-letter queue (through `X.dlx`), with the same
//! body, properties and headers, one at a time with a publisher confirm.
//! A copy that would not fit the connection's frame leaves out its largest
//! headers and names them in `x-dropped-headers`, like every copy the
//! daemon makes.
//!
//! Safe to run again after an interruption: it says how many lines it
//! published, and `--skip N` starts after the first N lines. A line
//! published twice is a duplicate dead letter, harmless by its order id.

use std::path::Path;

use tokio::io::AsyncBufReadExt as _;

use super::{Context, DlqError, jsonl};
use crate::adapters::amqp::copy;
use crate::adapters::amqp::toolkit::{self, Link, Route};
use crate::commands::output::{note, say};
use crate::commands::pace::{Pacer, Progress};

pub async fn run(
    context: &Context,
    path: &Path,
    skip: u64,
    rate: Option<f64>,
) -> Result<(), DlqError> {
    let failed = |error: std::io::Error| DlqError::File(format!("{}: {error}", path.display()));
    let file = tokio::fs::File::open(path).await.map_err(failed)?;
    let names = &context.names;
    let name = "order-processor dlq import";
    let link = Link::open(&context.url, name, names, context.max_attempts).await?;
    let mut lines = tokio::io::BufReader::new(file).lines();
    let mut line_number = 0u64;
    // The lines up to this one are skipped or confirmed by the broker.
    let mut through = skip;
    let mut progress = Progress::new("imported");
    let mut pacer = Pacer::new(rate);
    let imported: Result<(), DlqError> = async {
        while let Some(line) = lines.next_line().await.map_err(failed)? {
            line_number = line_number.saturating_add(1);
            if line_number <= skip {
                continue;
            }
            if line.trim().is_empty() {
                through = line_number;
                continue;
            }
            let (body, properties) = jsonl::decode(&line)
                .map_err(|error| DlqError::File(format!("line {line_number}: {error}")))?;
            let copy = copy::imported_copy(properties, link.frame_max())
                .map_err(|error| DlqError::File(format!("line {line_number}: {error}")))?;
            if !copy.dropped.is_empty() {
                copy::log_dropped(&copy.dropped);
            }
            pacer.wait().await;
            let exchange = names.dead_letter_exchange();
            let stored = toolkit::publish_confirmed(
                &link.channel,
                Route {
                    exchange: &exchange,
                    routing_key: &names.queue,
                },
                &body,
                copy.properties,
            );
            stored.await.map_err(DlqError::NotStored)?;
            through = line_number;
            progress.add();
        }
        Ok(())
    }
    .await;
    link.close(&[]).await;
    say(format_args!(
        "imported {} dead letter(s) into {}",
        progress.count(),
        names.dead_letter_queue()
    ));
    if imported.is_err() {
        note(format_args!(
            "lines 1 to {through} are in the queue; to resume: dlq import --file {} --skip {through}",
            path.display()
        ));
    }
    imported
}
