//! `order-processor check-config`: the configuration as the daemon would
//! use it, printed on stdout as JSON with every secret redacted. The
//! telemetry variables (`RUST_LOG`, `OTEL_*`) are checked too, without
//! installing anything, so that a bad one exits 2 here rather than at start.

use super::CommandError;
use super::output::say;
use crate::config::Settings;
use crate::telemetry;

/// Why the loaded configuration could not be printed.
#[derive(Debug, thiserror::Error)]
#[error("could not print the configuration: {0}")]
pub struct CheckConfigError(#[source] serde_json::Error);

/// The command: checks telemetry's settings, prints the configuration.
pub fn run(settings: &Settings) -> Result<(), CommandError> {
    telemetry::check("order-processor")?;
    let shown = serde_json::to_string_pretty(settings).map_err(CheckConfigError)?;
    say(format_args!("{shown}"));
    Ok(())
}
