//! `dlq list`: counts the dead letters (those the filter selects) by kind
//! and reason, leaving every one in place.

use std::collections::BTreeMap;

use super::letter::Filter;
use super::{Context, DlqError, Reader};
use crate::cli::FilterArgs;
use crate::commands::output::say;
use crate::commands::pace::Progress;

/// Distinct reasons kept per kind; the rest are counted with their kind only.
const MAX_REASONS: usize = 32;

/// Dead letters of one kind.
#[derive(Debug, Default)]
struct KindSummary {
    count: u64,
    reasons: BTreeMap<String, u64>,
}

pub async fn run(context: &Context, filter: FilterArgs) -> Result<(), DlqError> {
    let filter = Filter::new(filter);
    let mut reader = Reader::open(context, "order-processor dlq list").await?;
    let counted = count(&mut reader, &filter).await;
    let queue = reader.queue().to_owned();
    reader.close().await;
    let kinds = counted?;
    let total: u64 = kinds.values().map(|kind| kind.count).sum();
    say(format_args!("{total} dead letter(s) in {queue}"));
    for (kind, summary) in &kinds {
        say(format_args!("{:>8}  {kind}", summary.count));
        for (reason, count) in &summary.reasons {
            say(format_args!("{count:>8}    {reason}"));
        }
    }
    Ok(())
}

async fn count(
    reader: &mut Reader,
    filter: &Filter,
) -> Result<BTreeMap<String, KindSummary>, DlqError> {
    let mut kinds: BTreeMap<String, KindSummary> = BTreeMap::new();
    let mut progress = Progress::new("read");
    while let Some(letter) = reader.next().await? {
        progress.add();
        if !filter.matches(&letter) {
            continue;
        }
        let summary = kinds.entry(letter.kind().to_owned()).or_default();
        summary.count = summary.count.saturating_add(1);
        let reason = letter.reason();
        if summary.reasons.len() < MAX_REASONS || summary.reasons.contains_key(reason) {
            let n = summary.reasons.entry(reason.to_owned()).or_default();
            *n = n.saturating_add(1);
        }
    }
    Ok(kinds)
}
