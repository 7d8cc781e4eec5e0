//! The command line: `run` (the default), `migrate`, `publish`,
//! `check-config`, `healthcheck` and `dlq`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "order-processor",
    version,
    about = "Consumes orders from RabbitMQ, charges them and records them in PostgreSQL"
)]
pub struct Cli {
    /// Folder holding default.toml and the optional $ORDER_PROCESSOR_ENV.toml.
    #[arg(
        long,
        global = true,
        env = "ORDER_PROCESSOR_CONFIG_DIR",
        default_value = "config"
    )]
    pub config_dir: PathBuf,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (what a bare `order-processor` does).
    Run,
    /// Apply migrations/ to DATABASE_URL (creating the database if needed), then exit.
    Migrate,
    /// Publish orders to the configured exchange, with publisher confirms.
    Publish(PublishArgs),
    /// Load the configuration, print it with secrets redacted, and exit.
    CheckConfig,
    /// Exit 0 if the daemon listening on http.listen answers /readyz with 200, else 1.
    Healthcheck,
    /// Inspect or replay the dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Count the dead letters by kind and reason (nothing is removed).
    List(FilterArgs),
    /// Print every dead letter of one order: body, properties, headers,
    /// kind, reason, attempts, trace id (nothing is removed).
    Show {
        /// The order id (the `message_id` property, or the body's `order_id`).
        order_id: String,
    },
    /// Move dead letters back to the work queue, keeping their trace context.
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Delete dead letters for good (asks to type `yes` unless `--yes`).
    Purge {
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        run: RunArgs,
        /// Do not ask; needed when stdin is not a terminal.
        #[arg(long)]
        yes: bool,
    },
    /// Append dead letters to a JSON-lines file, then remove them from the
    /// queue (each only once its line is on disk).
    Export {
        /// The file to append to (created if missing).
        #[arg(long)]
        file: PathBuf,
        /// Leave the exported dead letters in the queue.
        #[arg(long)]
        keep: bool,
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Publish the lines of an exported file back into the dead-letter queue.
    Import {
        /// A file written by `dlq export`.
        #[arg(long)]
        file: PathBuf,
        /// Skip this many lines first (to resume an interrupted import).
        #[arg(long, default_value_t = 0)]
        skip: u64,
        /// Publish at most this many messages per second (`500` or `500/s`).
        #[arg(long, value_parser = parse_rate)]
        rate: Option<f64>,
    },
}

/// Which dead letters a command acts on; every criterion given must hold.
#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// Only this `x-error-kind`, exactly (e.g. retries_exhausted).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only those whose `x-error-reason` contains this text (case-sensitive).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only those older than this (`90s`, `10m`, `2h`, `7d`), by the
    /// `timestamp` property, else the newest `x-death` time.
    #[arg(long, value_parser = parse_age)]
    pub older_than: Option<Duration>,
    /// Only this order id (`message_id`, else the body's `order_id`).
    #[arg(long)]
    pub order_id: Option<String>,
}

/// How much of the queue a command that removes dead letters goes through,
/// and how fast.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct RunArgs {
    /// At most this many.
    #[arg(long)]
    pub limit: Option<u64>,
    /// At most this many messages per second (`500` or `500/s`).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Generate this many orders.
    #[arg(long, conflicts_with = "file")]
    pub count: Option<u64>,

    /// Publish at most this many messages per second (`500` or `500/s`).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Share of generated orders that are invalid on purpose (0 to 1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_ratio)]
    pub invalid_ratio: f64,

    /// Publish each line of this JSON-lines file as one message (`-` for stdin).
    #[arg(long)]
    pub file: Option<PathBuf>,

    /// Do not print a line per message, only the summary.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_rate(value: &str) -> Result<f64, String> {
    let number = value.strip_suffix("/s").unwrap_or(value);
    match number.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err("must be a positive number of messages per second, like 500/s".to_owned()),
    }
}

/// A duration with its unit: `90s`, `10m`, `2h` or `7d`.
fn parse_age(value: &str) -> Result<Duration, String> {
    let invalid = || "must be a number with a unit, like 90s, 10m, 2h or 7d".to_owned();
    let split = value.len().checked_sub(1).ok_or_else(invalid)?;
    let (number, unit) = (value.get(..split), value.get(split..));
    let seconds: u64 = match unit {
        Some("s") => 1,
        Some("m") => 60,
        Some("h") => 3_600,
        Some("d") => 86_400,
        _ => return Err(invalid()),
    };
    let number: u64 = number.and_then(|n| n.parse().ok()).ok_or_else(invalid)?;
    number
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(invalid)
}

fn parse_ratio(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err("must be a number between 0 and 1".to_owned()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_age_needs_its_unit() {
        assert_eq!(parse_age("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_age("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_age("2h").unwrap(), Duration::from_secs(7_200));
        assert_eq!(parse_age("7d").unwrap(), Duration::from_secs(604_800));
        for wrong in [
            "",
            "10",
            "m",
            "-1m",
            "1.5h",
            "10 m",
            "99999999999999999999d",
        ] {
            assert!(parse_age(wrong).is_err(), "{wrong}");
        }
    }
}
