//! Typed settings, loaded once and validated once: the public [`Settings`],
//! how its layers are read, and the values derived from it.
//!
//! Layers, later wins: `config/default.toml` → `config/$ORDER_PROCESSOR_ENV.toml`
//! (optional) → `ORDER_PROCESSOR__SECTION__KEY` environment variables. The
//! connection strings are secrets and come only from their conventional
//! variables (`AMQP_URL`, `DATABASE_URL`, `PAYMENT_BASE_URL`), never from a
//! file; they are wrapped in [`Secret`] so that no `Debug`, log line or
//! `check-config` output can show a password. The optional
//! `amqp.management_url` is a [`Secret`] too: it may carry credentials
//! (then set it through `ORDER_PROCESSOR__AMQP__MANAGEMENT_URL`), or none,
//! and then the broker check uses those of `AMQP_URL`. The payment
//! provider's credential is `PAYMENT_API_KEY` ([`ApiKey`]), never user info
//! in `PAYMENT_BASE_URL`, which is refused: a URL is printed, logged and
//! passed around far more freely than a key.
//!
//! The sections' types are in `settings`, the checks in `validation`, the
//! secret values and URL redaction in `secrets`.

use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Serialize;

pub use self::secrets::{ApiKey, Secret, redact_url};
use self::settings::NonSecretSettings;
pub use self::settings::{
    AmqpSettings, CircuitConfig, DatabaseSettings, HttpSettings, PaymentSettings, RetrySettings,
    ShutdownSettings, WorkerSettings,
};
use self::validation::{
    check_env_keys, check_trust_files, check_url, optional_url, without_user_info,
};
use crate::circuit::CircuitSettings;
use crate::retry::RetryPolicy;

mod secrets;
mod settings;
#[cfg(test)]
mod tests;
mod validation;

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/orders";
pub const DEFAULT_PAYMENT_BASE_URL: &str = "http://127.0.0.1:8081";

/// The whole configuration, as every command receives it.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub amqp: AmqpSettings,
    pub workers: WorkerSettings,
    pub retry: RetrySettings,
    pub payment: PaymentSettings,
    pub database: DatabaseSettings,
    pub shutdown: ShutdownSettings,
    pub http: HttpSettings,
    pub circuit: CircuitConfig,
}

/// A configuration that cannot be used. `Display` is the one line printed
/// before exiting with code 2; it names the key and never shows a secret.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {key} {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// Where to read the environment from; a trait so tests need not touch the
/// process environment.
pub trait Environment {
    /// The variable's value, `None` when unset; a value that is not UTF-8
    /// is an error naming the variable, never taken as unset.
    fn var(&self, name: &str) -> Result<Option<String>, ConfigError>;
}

/// The real process environment.
pub struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Result<Option<String>, ConfigError> {
        match std::env::var(name) {
            Ok(value) => Ok(Some(value)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(ConfigError::new(name, "is not valid UTF-8"))
            }
        }
    }
}

impl Settings {
    /// Loads the layers from `config_dir` and the process environment.
    pub fn load(config_dir: &Path) -> Result<Self, ConfigError> {
        if !config_dir.join("default.toml").is_file() {
            return Err(ConfigError::new(
                "ORDER_PROCESSOR_CONFIG_DIR",
                format!(
                    "must be a folder holding default.toml (got {})",
                    config_dir.display()
                ),
            ));
        }
        check_env_keys(std::env::vars_os().map(|(name, _)| name))?;
        let profile = std::env::var("ORDER_PROCESSOR_ENV").ok();
        let figment = layers(config_dir, profile.as_deref())
            .merge(Env::prefixed("ORDER_PROCESSOR__").split("__"));
        Self::from_layers(figment, &ProcessEnvironment)
    }

    fn from_layers(figment: Figment, env: &dyn Environment) -> Result<Self, ConfigError> {
        let non_secret: NonSecretSettings = figment.extract().map_err(|error| describe(&error))?;
        let url = |name: &str, default: &str, schemes: &[&str]| {
            let value = env.var(name)?.unwrap_or_else(|| default.to_owned());
            check_url(name, &value, schemes).map(|()| Secret::new(value))
        };
        let settings = Self {
            amqp: AmqpSettings {
                url: url("AMQP_URL", DEFAULT_AMQP_URL, &["amqp", "amqps"])?,
                exchange: non_secret.amqp.exchange,
                routing_key: non_secret.amqp.routing_key,
                queue: non_secret.amqp.queue,
                prefetch: non_secret.amqp.prefetch,
                redelivery_limit: non_secret.amqp.redelivery_limit,
                management_url: optional_url(
                    "amqp.management_url",
                    non_secret.amqp.management_url,
                    &["http", "https"],
                )?,
            },
            workers: non_secret.workers,
            retry: non_secret.retry,
            payment: PaymentSettings {
                base_url: url(
                    "PAYMENT_BASE_URL",
                    DEFAULT_PAYMENT_BASE_URL,
                    &["http", "https"],
                )
                .and_then(without_user_info)?,
                api_key: env.var(ApiKey::VARIABLE)?.map(ApiKey::parse).transpose()?,
                timeout_ms: non_secret.payment.timeout_ms,
                max_in_flight: non_secret.payment.max_in_flight,
                min_rate: non_secret.payment.min_rate,
            },
            database: DatabaseSettings {
                url: url(
                    "DATABASE_URL",
                    DEFAULT_DATABASE_URL,
                    &["postgres", "postgresql"],
                )?,
                migrate: non_secret.database.migrate,
                max_connections: non_secret.database.max_connections,
            },
            shutdown: non_secret.shutdown,
            http: non_secret.http,
            circuit: non_secret.circuit,
        };
        settings.validate()?;
        check_trust_files(env, settings.database.url.expose())?;
        Ok(settings)
    }

    /// The cap on charges in flight, if `payment.max_in_flight` sets one
    /// below the worker pool (which bounds them anyway).
    pub fn payment_in_flight(&self) -> Option<usize> {
        let limit = self.payment.max_in_flight;
        (limit > 0 && limit < self.workers.concurrency).then_some(limit)
    }

    pub fn circuit_settings(&self) -> CircuitSettings {
        let circuit = &self.circuit;
        CircuitSettings {
            window: Duration::from_millis(circuit.window_ms),
            min_calls: circuit.min_calls,
            failure_ratio: circuit.failure_ratio,
            consecutive_failures: circuit.consecutive_failures,
            first_probe_after: Duration::from_millis(circuit.first_probe_ms),
            max_probe_interval: Duration::from_millis(circuit.max_probe_interval_ms),
        }
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.retry.max_attempts,
            base_delay: Duration::from_millis(self.retry.base_delay_ms),
            max_delay: Duration::from_millis(self.retry.max_delay_ms),
        }
    }
}

fn layers(config_dir: &Path, profile: Option<&str>) -> Figment {
    let figment = Figment::new().merge(Toml::file_exact(config_dir.join("default.toml")));
    match profile {
        Some(profile) => figment.merge(Toml::file(config_dir.join(format!("{profile}.toml")))),
        None => figment,
    }
}

fn describe(error: &figment::Error) -> ConfigError {
    let path = &error.path;
    // A file that does not parse has no key: name the file instead.
    let source = error.metadata.as_ref().and_then(|m| m.source.as_ref());
    let key = match source {
        _ if !path.is_empty() => path.join("."),
        Some(source) => source.to_string(),
        None => "file".to_owned(),
    };
    let problem = error.kind.to_string().replace('\n', " ");
    ConfigError::new(key, format!("is invalid ({})", problem.trim()))
}
