//! The checks a loaded configuration must pass before anything uses it:
//! value ranges, AMQP name lengths, `ORDER_PROCESSOR__*` key shapes, the
//! CA files the TLS clients will read, and the connection URLs, parsed here
//! the way their clients would so that none of them ever quotes a password
//! back. Each failure is one [`ConfigError`] naming the key.

use std::fmt;

use super::secrets::{ApiKey, Secret};
use super::{ConfigError, Environment, Settings};

impl Settings {
    /// Checks every range and name; the first failure names its key.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
pub(super) fn check_trust_files(
    env: &dyn Environment,
    database_url: &str,
) -> Result<(), ConfigError> {
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
pub(super) fn check_env_keys(
    names: impl Iterator<Item = std::ffi::OsString>,
) -> Result<(), ConfigError> {
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
pub(super) fn optional_url(
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
pub(super) fn without_user_info(url: Secret) -> Result<Secret, ConfigError> {
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
pub(super) fn check_url(name: &str, value: &str, schemes: &[&str]) -> Result<(), ConfigError> {
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
