//! Loading the configuration end to end: the default files, a TOML
//! override and a fake environment, checked for the values they give and
//! for the one line each bad value is refused with (never showing a secret).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use super::*;

struct FakeEnv(HashMap<&'static str, &'static str>);

impl Environment for FakeEnv {
    fn var(&self, name: &str) -> Result<Option<String>, ConfigError> {
        Ok(self.0.get(name).map(|v| (*v).to_owned()))
    }
}

/// The default files, then `overrides` (TOML text), then the fake environment.
fn load(overrides: &str, env: &[(&'static str, &'static str)]) -> Result<Settings, ConfigError> {
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
