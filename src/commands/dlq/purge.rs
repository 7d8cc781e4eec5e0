//! `dlq purge`: deletes the selected dead letters for good. On a terminal
//! it first counts them and asks to type `yes`; without a terminal (a
//! script, a pipe) it refuses unless `--yes` is given.

use std::io::IsTerminal as _;

use tokio::io::AsyncBufReadExt as _;

use super::letter::Filter;
use super::{Context, DlqError, Reader};
use crate::cli::{FilterArgs, RunArgs};
use crate::commands::output::{note, say};
use crate::commands::pace::{Pacer, Progress};

pub async fn run(
    context: &Context,
    filter: FilterArgs,
    run: RunArgs,
    yes: bool,
) -> Result<(), DlqError> {
    let filter = Filter::new(filter);
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(DlqError::Refused(
                "purge deletes dead letters for good: run it on a terminal to confirm, or pass --yes",
            ));
        }
        let matching = count(context, &filter, run.limit).await?;
        let queue = context.names.dead_letter_queue();
        if matching == 0 {
            say(format_args!(
                "no dead letter in {queue} matches; nothing purged"
            ));
            return Ok(());
        }
        note(format_args!(
            "delete {matching} {} from {queue} for good? type yes to confirm:",
            filter.describe()
        ));
        let mut answer = String::new();
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
        let read = stdin.read_line(&mut answer).await;
        if read.is_err() || answer.trim() != "yes" {
            return Err(DlqError::Refused("not confirmed; nothing purged"));
        }
    }
    let mut reader = Reader::open(context, "order-processor dlq purge").await?;
    let mut purged = Progress::new("purged");
    let mut left = 0u64;
    let result: Result<(), DlqError> = async {
        let mut pacer = Pacer::new(run.rate);
        while run.limit.is_none_or(|limit| purged.count() < limit) {
            let Some(letter) = reader.next().await? else {
                break;
            };
            if !filter.matches(&letter) {
                left = left.saturating_add(1);
                continue;
            }
            pacer.wait().await;
            reader.remove(&letter).await?;
            purged.add();
        }
        Ok(())
    }
    .await;
    let queue = reader.queue().to_owned();
    reader.close().await;
    say(format_args!(
        "purged {} dead letter(s) from {queue}; {left} left in place",
        purged.count()
    ));
    result
}

/// How many dead letters a purge would delete (reading them all, removing
/// none).
async fn count(context: &Context, filter: &Filter, limit: Option<u64>) -> Result<u64, DlqError> {
    let mut reader = Reader::open(context, "order-processor dlq purge").await?;
    let mut matching = 0u64;
    let counted: Result<(), DlqError> = async {
        while let Some(letter) = reader.next().await? {
            if filter.matches(&letter) {
                matching = matching.saturating_add(1);
            }
        }
        Ok(())
    }
    .await;
    reader.close().await;
    counted?;
    Ok(limit.map_or(matching, |limit| matching.min(limit)))
}
