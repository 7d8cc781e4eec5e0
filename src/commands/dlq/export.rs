//! `dlq export --file F`: appends each selected dead letter to `F` as one
//! JSON line (see [`super::jsonl`]) and, unless `--keep`, removes it from
//! the queue, but only once its line is written and fsynced. The file is
//! opened for appending, so an interrupted export can simply be run again:
//! what it had removed is in the file, what it had not is still in the
//! queue, and a dead letter in both (written, not yet removed) is a
//! duplicate that the order id makes harmless on import.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use lapin::types::FieldTable;

use super::letter::{DeadLetter, Filter};
use super::{Context, DlqError, Reader, jsonl};
use crate::adapters::amqp::headers::{self, DELIVERY_COUNT};
use crate::cli::{FilterArgs, RunArgs};
use crate::commands::output::say;
use crate::commands::pace::{Pacer, Progress};

/// Lines written before one fsync and the removals it allows.
const BATCH: usize = 256;
/// Nor does a slow run hold written lines longer than this unremoved.
const BATCH_AGE: Duration = Duration::from_secs(1);

pub async fn run(
    context: &Context,
    path: &Path,
    keep: bool,
    filter: FilterArgs,
    run: RunArgs,
) -> Result<(), DlqError> {
    let filter = Filter::new(filter);
    let failed = |error: std::io::Error| DlqError::File(format!("{}: {error}", path.display()));
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(failed)?;
    let mut reader = Reader::open(context, "order-processor dlq export").await?;
    let mut export = Export {
        file,
        keep,
        written: Vec::with_capacity(BATCH),
        since: Instant::now(),
        exported: 0,
        left: 0,
    };
    let result = export.all(&mut reader, &filter, run).await;
    let queue = reader.queue().to_owned();
    reader.close().await;
    let fate = if keep { "kept in" } else { "removed from" };
    say(format_args!(
        "exported {} dead letter(s) to {} ({fate} {queue}); {} left in place",
        export.exported,
        path.display(),
        export.left
    ));
    result.map_err(|error| match error {
        ExportError::Io(error) => failed(error),
        ExportError::Dlq(error) => error,
    })
}

enum ExportError {
    Io(std::io::Error),
    Dlq(DlqError),
}

impl From<DlqError> for ExportError {
    fn from(error: DlqError) -> Self {
        Self::Dlq(error)
    }
}

struct Export {
    file: File,
    keep: bool,
    /// Written since the last fsync, not yet removed from the queue.
    written: Vec<DeadLetter>,
    since: Instant,
    exported: u64,
    left: u64,
}

impl Export {
    async fn all(
        &mut self,
        reader: &mut Reader,
        filter: &Filter,
        run: RunArgs,
    ) -> Result<(), ExportError> {
        let mut pacer = Pacer::new(run.rate);
        let mut progress = Progress::new("exported");
        let mut taken = 0u64;
        while run.limit.is_none_or(|limit| taken < limit) {
            let Some(letter) = reader.next().await? else {
                break;
            };
            if !filter.matches(&letter) {
                self.left = self.left.saturating_add(1);
                continue;
            }
            pacer.wait().await;
            let headers = without_redelivery(&letter);
            let line = jsonl::encode(&letter.body, &letter.properties, headers.as_ref())
                .map_err(|error| DlqError::File(error.to_string()))?;
            writeln!(self.file, "{line}").map_err(ExportError::Io)?;
            self.written.push(letter);
            taken = taken.saturating_add(1);
            progress.add();
            if self.written.len() >= BATCH || self.since.elapsed() >= BATCH_AGE {
                self.settle(reader).await?;
            }
        }
        self.settle(reader).await
    }

    /// Makes the written lines durable, then removes their dead letters.
    async fn settle(&mut self, reader: &Reader) -> Result<(), ExportError> {
        self.file.sync_data().map_err(ExportError::Io)?;
        for letter in self.written.drain(..) {
            if !self.keep {
                reader.remove(&letter).await?;
            }
            self.exported = self.exported.saturating_add(1);
        }
        self.since = Instant::now();
        Ok(())
    }
}

/// The headers without `x-delivery-count`, which the quorum queue adds to
/// every delivery: it describes this queue's deliveries, not the message.
/// A table left empty is taken for none, the far more common case (the two
/// cannot be told apart once the broker has added its count).
fn without_redelivery(letter: &DeadLetter) -> Option<FieldTable> {
    headers::headers_without(&letter.properties, |name| name == DELIVERY_COUNT)
}
