//! The command line: `run` (the default), `migrate`, `publish`,
//! `check-config`, `healthcheck` and `dlq`.

use std::path::PathBuf;

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
    List,
    /// Move dead letters back to the work queue, keeping their trace context.
    Replay {
        /// Only dead letters of this `x-error-kind` (e.g. retries_exhausted).
        #[arg(long)]
        kind: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<u64>,
    },
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

fn parse_ratio(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err("must be a number between 0 and 1".to_owned()),
    }
}
