//! The binary's commands, one module each, each writing its own output
//! (stdout the result, stderr progress and logs): `run` (the daemon),
//! `migrate`, `check-config`, `healthcheck`, `publish` and `dlq`.
//!
//! A command takes the loaded [`Settings`] and returns a [`CommandError`]
//! when it fails; `main` prints that error's one line and exits with
//! [`CommandError::exit_code`]. What several commands share lives here
//! (the broker names derived from the settings) and in [`output`] (writing
//! a line without panicking on a closed pipe).

pub mod check_config;
pub mod dlq;
pub mod healthcheck;
pub mod migrate;
pub mod output;
mod pace;
pub mod publish;
pub mod run;

use std::time::Duration;

use crate::adapters::amqp::TopologyNames;
use crate::adapters::postgres::DatabaseError;
use crate::config::{ConfigError, Settings};
use crate::telemetry::TelemetryError;

use self::check_config::CheckConfigError;
use self::healthcheck::HealthcheckError;
use self::run::RunError;

/// How long a command waits at exit for the last traces to be exported.
pub const TELEMETRY_FLUSH: Duration = Duration::from_secs(5);

/// Why a command failed. `Display` is the one line printed on stderr
/// before exiting; it never shows a secret.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The configuration cannot be used (found while loading it, or by the
    /// telemetry set-up from the `RUST_LOG` and `OTEL_*` variables).
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Migrate(#[from] DatabaseError),
    #[error(transparent)]
    CheckConfig(#[from] CheckConfigError),
    #[error(transparent)]
    Healthcheck(#[from] HealthcheckError),
    #[error(transparent)]
    Dlq(#[from] dlq::DlqError),
    #[error(transparent)]
    Publish(#[from] publish::PublishError),
}

impl CommandError {
    /// The process's exit code (CONTRACT): 2 for a configuration that cannot
    /// be used, 1 for a command that ran and failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) | Self::Telemetry(_) => 2,
            Self::Run(_)
            | Self::Migrate(_)
            | Self::CheckConfig(_)
            | Self::Healthcheck(_)
            | Self::Dlq(_)
            | Self::Publish(_) => 1,
        }
    }
}

/// The broker names the daemon, `dlq` and `publish` derive from the
/// configured exchange, routing key and queue.
pub fn amqp_names(settings: &Settings) -> TopologyNames {
    TopologyNames {
        exchange: settings.amqp.exchange.clone(),
        routing_key: settings.amqp.routing_key.clone(),
        queue: settings.amqp.queue.clone(),
    }
}
