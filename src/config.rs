//! Typed settings, loaded once and validated once.
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

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

pub use self::secrets::{ApiKey, Secret, redact_url};
use crate::circuit::CircuitSettings;
use crate::retry::RetryPolicy;

mod secrets;

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/orders";
pub const DEFAULT_PAYMENT_BASE_URL: &str = "http://127.0.0.1:8081";

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

#[derive(Debug, Clone, Serialize)]
pub struct AmqpSettings {
    pub url: Secret,
    pub exchange: String,
    pub routing_key: String,
    pub queue: String,
    pub prefetch: u16,
    /// Deliveries of one message (the quorum queue's `x-delivery-count`)
    /// after which it is dead-lettered unprocessed, as `redelivery_limit`.
    pub redelivery_limit: u32,
    /// The RabbitMQ management API, when the operator wants the broker's
    /// settings checked against the retry policy. A secret: it may carry
    /// credentials.
    pub management_url: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub concurrency: usize,
    /// Threads of the async runtime; 0 means one per available core (which
    /// follows the container's CPU limit).
    #[serde(default)]
    pub threads: usize,
    /// Bytes of message bodies taken from the broker and not yet settled
    /// before intake pauses; it also caps the prefetch (see
    /// `adapters::amqp::effective_prefetch`).
    pub max_in_flight_bytes: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    pub max_attempts: u32,
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PaymentSettings {
    pub base_url: Secret,
    /// Sent as `Authorization: Bearer <key>` with every charge, when set.
    pub api_key: Option<ApiKey>,
    pub timeout_ms: u64,
    /// Charges sent to the provider at the same time; 0 means as many as
    /// the worker pool.
    pub max_in_flight: usize,
    /// The slowest the rate limiter paces charges while the provider
    /// answers 429, per second.
    pub min_rate: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub migrate: bool,
    pub max_connections: u32,
}

/// When an outage of the provider or the database pauses intake (see
/// [`crate::circuit`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitConfig {
    pub window_ms: u64,
    pub min_calls: u32,
    pub failure_ratio: f64,
    pub consecutive_failures: u32,
    pub first_probe_ms: u64,
    pub max_probe_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    pub grace_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: SocketAddr,
}

/// What the files and `ORDER_PROCESSOR__*` variables may set: everything but
/// the secrets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Layered {
    amqp: LayeredAmqp,
    workers: WorkerSettings,
    retry: RetrySettings,
    payment: LayeredPayment,
    database: LayeredDatabase,
    shutdown: ShutdownSettings,
    http: HttpSettings,
    circuit: CircuitConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayeredAmqp {
    exchange: String,
    routing_key: String,
    queue: String,
    prefetch: u16,
    redelivery_limit: u32,
    #[serde(default)]
    management_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayeredPayment {
    timeout_ms: u64,
    #[serde(default)]
    max_in_flight: usize,
    min_rate: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayeredDatabase {
    migrate: bool,
    max_connections: u32,
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
        let layered: Layered = figment.extract().map_err(|error| describe(&error))?;
        let url = |name: &str, default: &str, schemes: &[&str]| {
            let value = env.var(name)?.unwrap_or_else(|| default.to_owned());
            check_url(name, &value, schemes).map(|()| Secret::new(value))
        };
        let settings = Self {
            amqp: AmqpSettings {
                url: url("AMQP_URL", DEFAULT_AMQP_URL, &["amqp", "amqps"])?,
                exchange: layered.amqp.exchange,
                routing_key: layered.amqp.routing_key,
                queue: layered.amqp.queue,
                prefetch: layered.amqp.prefetch,
                redelivery_limit: layered.amqp.redelivery_limit,
                management_url: optional_url(
                    "amqp.management_url",
                    layered.amqp.management_url,
                    &["http", "https"],
                )?,
            },
            workers: layered.workers,
            retry: layered.retry,
            payment: PaymentSettings {
                base_url: url(
                    "PAYMENT_BASE_URL",
                    DEFAULT_PAYMENT_BASE_URL,
                    &["http", "https"],
                )
                .and_then(without_user_info)?,
                api_key: env.var(ApiKey::VARIABLE)?.map(ApiKey::parse).transpose()?,
                timeout_ms: layered.payment.timeout_ms,
                max_in_flight: layered.payment.max_in_flight,
                min_rate: layered.payment.min_rate,
            },
            database: DatabaseSettings {
                url: url(
                    "DATABASE_URL",
                    DEFAULT_DATABASE_URL,
                    &["postgres", "postgresql"],
                )?,
                migrate: layered.database.migrate,
                max_connections: layered.database.max_connections,
            },
            shutdown: layered.shutdown,
            http: layered.http,
            circuit: layered.circuit,
        };
        settings.validate()?;
        check_trust_files(env, settings.database.url.expose())?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        in_range("workers.concurrency", self.workers.concurrency, 1, 10_000)?;
        in_range("workers.threads", self.workers.threads, 0, 256)?;
        // At least one largest body (1 MiB is 16 of them); at most what a
        // semaphore of bytes counts (2 GiB).
        in_range(
            "workers.max_in_flight_bytes",
            self.workers.max_in_flight_bytes,
            1 << 20,
            2 << 30,
        )?;
        in_range("amqp.prefetch", self.amqp.prefetch, 1, u16::MAX)?;
        in_range("retry.max_attempts", self.retry.max_attempts, 1, 100)?;
        in_range("retry.max_delay_ms", self.retry.max_delay_ms, 1, 86_400_000)?;
        in_range(
            "retry.base_delay_ms",
            self.retry.base_delay_ms,
            1,
            self.retry.max_delay_ms,
        )?;
        in_range("payment.timeout_ms", self.payment.timeout_ms, 1, 600_000)?;
        in_range(
            "payment.max_in_flight",
            self.payment.max_in_flight,
            0,
            10_000,
        )?;
        in_range(
            "database.max_connections",
            self.database.max_connections,
            1,
            1_000,
        )?;
        in_range("shutdown.grace_ms", self.shutdown.grace_ms, 0, 3_600_000)?;
        in_range(
            "amqp.redelivery_limit",
            self.amqp.redelivery_limit,
            1,
            10_000,
        )?;
        let circuit = &self.circuit;
        in_range("circuit.window_ms", circuit.window_ms, 100, 3_600_000)?;
        in_range("circuit.min_calls", circuit.min_calls, 1, 1_000_000)?;
        in_range("circuit.failure_ratio", circuit.failure_ratio, 0.01, 1.0)?;
        in_range(
            "circuit.consecutive_failures",
            circuit.consecutive_failures,
            1,
            1_000_000,
        )?;
        // CONTRACT §5: tests of a failing dependency are never more than 30 s apart.
        in_range(
            "circuit.max_probe_interval_ms",
            circuit.max_probe_interval_ms,
            10,
            30_000,
        )?;
        in_range(
            "circuit.first_probe_ms",
            circuit.first_probe_ms,
            10,
            circuit.max_probe_interval_ms,
        )?;
        // The derived names (`Q.retry.N`, `X.dlx`, `Q.dead`) must stay within
        // AMQP's 255-byte short strings.
        for (key, name) in [
            ("amqp.exchange", &self.amqp.exchange),
            ("amqp.queue", &self.amqp.queue),
        ] {
            if name.is_empty() || name.len() > 200 || name.starts_with("amq.") {
                return Err(ConfigError::new(
                    key,
                    "must be 1 to 200 bytes and not start with `amq.`",
                ));
            }
        }
        if self.amqp.routing_key.len() > 255 {
            return Err(ConfigError::new(
                "amqp.routing_key",
                "must be at most 255 bytes",
            ));
        }
        Ok(())
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

fn in_range<T: PartialOrd + fmt::Display>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::new(
            key,
            format!("must be between {min} and {max} (got {value})"),
        ));
    }
    Ok(())
}

/// Where the TLS clients find a private CA: each client reads these itself
/// (lapin and reqwest `SSL_CERT_FILE`/`SSL_CERT_DIR`, sqlx `sslrootcert`),
/// and a path that does not hold one surfaces only at connect time, as a
/// vague "builder error" or a connection retried forever. Checked once here,
/// so that a wrong mount is one line naming the variable, and exit 2.
fn check_trust_files(env: &dyn Environment, database_url: &str) -> Result<(), ConfigError> {
    if let Some(file) = env.var("SSL_CERT_FILE")? {
        check_ca_file(&file).map_err(|problem| ConfigError::new("SSL_CERT_FILE", problem))?;
    }
    if let Some(dirs) = env.var("SSL_CERT_DIR")? {
        for dir in dirs.split(':').filter(|dir| !dir.is_empty()) {
            std::fs::read_dir(dir).map_err(|error| {
                ConfigError::new(
                    "SSL_CERT_DIR",
                    format!("must list readable folders ({dir}: {error})"),
                )
            })?;
        }
    }
    let root_cert = reqwest::Url::parse(database_url).ok().and_then(|url| {
        url.query_pairs()
            .find(|(key, _)| matches!(key.as_ref(), "sslrootcert" | "ssl-root-cert" | "ssl-ca"))
            .map(|(_, value)| value.into_owned())
    });
    // sqlx also takes the PEM text itself in place of a path.
    if let Some(file) = root_cert.filter(|value| !value.starts_with("-----BEGIN")) {
        check_ca_file(&file).map_err(|problem| {
            ConfigError::new("DATABASE_URL", format!("sslrootcert {problem}"))
        })?;
    }
    Ok(())
}

/// `Err` says why `path` is no PEM file holding at least one certificate.
fn check_ca_file(path: &str) -> Result<(), String> {
    let problem = match std::fs::read(path) {
        Err(error) => error.to_string(),
        Ok(pem) => match reqwest::Certificate::from_pem_bundle(&pem) {
            Ok(certificates) if !certificates.is_empty() => return Ok(()),
            Ok(_) => "no certificate in it".to_owned(),
            Err(_) => "not PEM".to_owned(),
        },
    };
    Err(format!(
        "must name a readable PEM file of CA certificates ({path}: {problem})"
    ))
}

/// `ORDER_PROCESSOR__A____B` or a trailing `__` would be read as some other
/// key, or none, and leave the default in place without a word.
fn check_env_keys(names: impl Iterator<Item = std::ffi::OsString>) -> Result<(), ConfigError> {
    const PREFIX: &str = "ORDER_PROCESSOR__";
    for name in names {
        let Some(levels) = name.to_str().and_then(|name| name.strip_prefix(PREFIX)) else {
            continue;
        };
        if levels.split("__").any(str::is_empty) {
            return Err(ConfigError::new(
                name.to_string_lossy(),
                "has an empty level between double underscores",
            ));
        }
    }
    Ok(())
}

/// An optional URL key: unset or empty means none.
fn optional_url(
    key: &str,
    value: Option<String>,
    schemes: &[&str],
) -> Result<Option<Secret>, ConfigError> {
    match value {
        Some(value) if !value.is_empty() => {
            check_url(key, &value, schemes)?;
            Ok(Some(Secret::new(value)))
        }
        _ => Ok(None),
    }
}

/// The provider's credential goes in `PAYMENT_API_KEY`, not in the URL: the
/// HTTP client would send user info as Basic credentials, and a URL is shown
/// and logged where a key never is.
fn without_user_info(url: Secret) -> Result<Secret, ConfigError> {
    let parsed = reqwest::Url::parse(url.expose())
        .map_err(|_| ConfigError::new("PAYMENT_BASE_URL", "is not a valid URL"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ConfigError::new(
            "PAYMENT_BASE_URL",
            format!(
                "must not carry a user name or password (put the provider's key in {})",
                ApiKey::VARIABLE
            ),
        ));
    }
    Ok(url)
}

/// Refuses what the client would later reject: the clients' own parse
/// errors can quote the whole URL, password included, so none may reach
/// them. A PostgreSQL URL may leave out the host (a Unix socket).
fn check_url(name: &str, value: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let invalid = || ConfigError::new(name, "is not a valid URL");
    let parsed = reqwest::Url::parse(value).map_err(|_| invalid())?;
    if !schemes.contains(&parsed.scheme()) {
        return Err(ConfigError::new(
            name,
            format!("must use one of the schemes {}", schemes.join(", ")),
        ));
    }
    if parsed.cannot_be_a_base() {
        return Err(invalid());
    }
    match parsed.scheme() {
        "postgres" | "postgresql" => value
            .parse::<sqlx::postgres::PgConnectOptions>()
            .map(drop)
            .map_err(|_| invalid()),
        "amqp" | "amqps" => value
            .parse::<lapin::uri::AMQPUri>()
            .map(drop)
            .map_err(|_| invalid()),
        _ if parsed.host_str().is_none_or(str::is_empty) => {
            Err(ConfigError::new(name, "must name a host"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct FakeEnv(HashMap<&'static str, &'static str>);

    impl Environment for FakeEnv {
        fn var(&self, name: &str) -> Result<Option<String>, ConfigError> {
            Ok(self.0.get(name).map(|v| (*v).to_owned()))
        }
    }

    /// The default files, then `overrides` (TOML text), then the fake environment.
    fn load(
        overrides: &str,
        env: &[(&'static str, &'static str)],
    ) -> Result<Settings, ConfigError> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let figment = layers(&dir, None).merge(Toml::string(overrides));
        Settings::from_layers(figment, &FakeEnv(env.iter().copied().collect()))
    }

    #[test]
    fn the_defaults_load() {
        let settings = load("", &[]).unwrap();
        assert_eq!(settings.amqp.queue, "orders.process");
        assert_eq!(settings.retry.max_attempts, 5);
        assert_eq!(settings.amqp.url.expose(), DEFAULT_AMQP_URL);
    }

    #[test]
    fn charges_in_flight_default_to_the_worker_pool_and_never_exceed_it() {
        let settings = load("workers.concurrency = 64", &[]).unwrap();
        assert_eq!(settings.payment_in_flight(), None);
        let settings = load("workers.concurrency = 64\npayment.max_in_flight = 16", &[]);
        assert_eq!(settings.unwrap().payment_in_flight(), Some(16));
        let settings = load("workers.concurrency = 64\npayment.max_in_flight = 100", &[]);
        assert_eq!(settings.unwrap().payment_in_flight(), None);
        let error = load("payment.max_in_flight = 10001", &[]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid configuration: payment.max_in_flight must be between 0 and 10000 (got 10001)"
        );
    }

    #[test]
    fn an_out_of_range_value_names_its_key() {
        let error = load("workers.concurrency = 0", &[]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid configuration: workers.concurrency must be between 1 and 10000 (got 0)"
        );
    }

    #[test]
    fn the_byte_budget_holds_at_least_one_mebibyte() {
        let error = load("workers.max_in_flight_bytes = 65536", &[]).unwrap_err();
        assert_eq!(error.key, "workers.max_in_flight_bytes");
        let settings = load("workers.max_in_flight_bytes = 1048576", &[]).unwrap();
        assert_eq!(settings.workers.max_in_flight_bytes, 1 << 20);
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key() {
        let error = load("amqp.prefetch = \"many\"", &[]).unwrap_err();
        assert_eq!(error.key, "amqp.prefetch");
    }

    #[test]
    fn a_bad_url_names_its_variable_without_showing_it() {
        let error = load("", &[("DATABASE_URL", "mysql://u:hunter2@db/x")]).unwrap_err();
        assert_eq!(error.key, "DATABASE_URL");
        assert!(!error.to_string().contains("hunter2"));
    }

    #[test]
    fn a_url_its_client_would_refuse_is_refused_without_being_shown() {
        for (name, url) in [
            ("AMQP_URL", "amqp:app:hunter2@mq"),
            ("AMQP_URL", "amqp://app:hunter2@mq/%2f?heartbeat=hunter2"),
            ("PAYMENT_BASE_URL", "http://"),
        ] {
            let error = load("", &[(name, url)]).unwrap_err();
            assert_eq!(error.key, name, "{url}");
            assert!(!error.to_string().contains("hunter2"), "{error}");
        }
        let socket = "postgres:///orders?host=/var/run/postgresql";
        assert!(load("", &[("DATABASE_URL", socket)]).is_ok());
    }

    #[test]
    fn an_env_key_with_an_empty_level_is_refused() {
        let names = |list: &[&str]| {
            list.iter()
                .map(std::ffi::OsString::from)
                .collect::<Vec<_>>()
                .into_iter()
        };
        assert!(check_env_keys(names(&["ORDER_PROCESSOR__WORKERS__CONCURRENCY", "PATH"])).is_ok());
        for bad in [
            "ORDER_PROCESSOR__WORKERS____CONCURRENCY",
            "ORDER_PROCESSOR____WORKERS__CONCURRENCY",
            "ORDER_PROCESSOR__WORKERS__CONCURRENCY__",
        ] {
            let error = check_env_keys(names(&[bad])).unwrap_err();
            assert_eq!(error.key, bad);
        }
    }

    #[test]
    fn secrets_never_print() {
        let settings = load(
            "",
            &[(
                "AMQP_URL",
                "amqps://app:hunter2@mq.example:5671/prod?heartbeat=10",
            )],
        )
        .unwrap();
        let shown = format!("{settings:?} {}", serde_json::to_string(&settings).unwrap());
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("amqps://app:[redacted]@mq.example:5671/prod?[redacted]"));
    }

    #[test]
    fn a_ca_file_that_cannot_be_read_names_its_variable() {
        let error = load("", &[("SSL_CERT_FILE", "/nonexistent/ca.crt")]).unwrap_err();
        assert_eq!(error.key, "SSL_CERT_FILE");
        assert!(error.to_string().contains("/nonexistent/ca.crt"), "{error}");

        let not_a_ca = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let error = load("", &[("SSL_CERT_FILE", not_a_ca)]).unwrap_err();
        assert_eq!(error.key, "SSL_CERT_FILE");
        assert!(
            error.to_string().contains("no certificate in it"),
            "{error}"
        );
    }

    #[test]
    fn a_ca_folder_that_cannot_be_read_names_its_variable() {
        let error = load("", &[("SSL_CERT_DIR", "/etc:/nonexistent/ca")]).unwrap_err();
        assert_eq!(error.key, "SSL_CERT_DIR");
        assert!(error.to_string().contains("/nonexistent/ca"), "{error}");
    }

    #[test]
    fn a_database_ca_that_cannot_be_read_is_named_without_the_password() {
        let error = load(
            "",
            &[(
                "DATABASE_URL",
                "postgres://app:hunter2@db/orders?sslmode=verify-full&sslrootcert=/nonexistent/ca.crt",
            )],
        )
        .unwrap_err();
        assert_eq!(error.key, "DATABASE_URL");
        let shown = error.to_string();
        assert!(shown.contains("sslrootcert") && shown.contains("/nonexistent/ca.crt"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn the_management_url_is_optional_and_a_redacted_secret() {
        assert!(load("", &[]).unwrap().amqp.management_url.is_none());
        assert!(
            load("amqp.management_url = \"\"", &[])
                .unwrap()
                .amqp
                .management_url
                .is_none()
        );
        let settings = load(
            "amqp.management_url = \"https://ops:hunter2@mq.example:15671\"",
            &[],
        )
        .unwrap();
        let url = settings.amqp.management_url.as_ref().unwrap();
        assert_eq!(url.expose(), "https://ops:hunter2@mq.example:15671");
        let shown = format!("{settings:?} {}", serde_json::to_string(&settings).unwrap());
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("https://ops:[redacted]@mq.example:15671"));
    }

    #[test]
    fn a_management_url_that_is_not_http_names_its_key() {
        let error = load("amqp.management_url = \"amqp://u:hunter2@mq\"", &[]).unwrap_err();
        assert_eq!(error.key, "amqp.management_url");
        assert!(!error.to_string().contains("hunter2"));
    }

    #[test]
    fn the_api_key_is_optional_and_never_prints() {
        assert!(load("", &[]).unwrap().payment.api_key.is_none());
        let settings = load("", &[("PAYMENT_API_KEY", "sk_live_hunter2")]).unwrap();
        let key = settings.payment.api_key.as_ref().unwrap();
        assert_eq!(key.expose(), "sk_live_hunter2");
        let shown = format!("{settings:?} {}", serde_json::to_string(&settings).unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains(r#""api_key":"[redacted]""#), "{shown}");
    }

    #[test]
    fn an_empty_or_unsendable_api_key_names_the_variable_without_showing_it() {
        for bad in ["", "sk_live_hunter2\n", "sk live hunter2"] {
            let error = load("", &[("PAYMENT_API_KEY", bad)]).unwrap_err();
            assert_eq!(error.key, "PAYMENT_API_KEY", "{bad:?}");
            assert!(!error.to_string().contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn a_payment_url_with_user_info_is_refused_without_being_shown() {
        for url in [
            "https://sk_live_hunter2@psp.example",
            "https://sk_live_hunter2:@psp.example",
            "https://user:hunter2@psp.example/api",
            "https://:hunter2@psp.example",
        ] {
            let error = load("", &[("PAYMENT_BASE_URL", url)]).unwrap_err();
            assert_eq!(error.key, "PAYMENT_BASE_URL", "{url}");
            let line = error.to_string();
            assert!(!line.contains("hunter2") && !line.contains("psp"), "{line}");
            assert!(line.contains("PAYMENT_API_KEY"), "{line}");
        }
        // A management URL may still carry credentials: it is not sent anywhere
        // but the broker's own API.
        assert!(load("amqp.management_url = \"https://ops:pw@mq:15671\"", &[]).is_ok());
    }
}
