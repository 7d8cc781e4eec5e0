//! Isolation of the daemon's pods: their NetworkPolicy lets through what the
//! daemon's configuration connects to and only Prometheus in, their own
//! ServiceAccount mounts no token, and namespaces enforce Pod Security
//! "restricted".

use std::collections::BTreeSet;

use serde_norway::Value;

use crate::deploy_manifests::invariants::{
    find, of_kind, pod_labels, pod_template, resolve_port, selects,
};
use crate::deploy_manifests::yaml::{Doc, at, scalar, seq_at, str_at, string_map};
use crate::deploy_manifests::{CONFIGMAP, DAEMON, SECRET, SECRET_KEYS};

/// The namespace Prometheus runs in, allowed to scrape the metrics port.
const MONITORING_NAMESPACE: &str = "monitoring";
/// Ports the daemon's egress must allow whatever the Secret says: DNS is
/// checked apart; then AMQP, AMQPS, PostgreSQL, HTTPS, OTLP gRPC and HTTP.
const BASELINE_EGRESS: &[u64] = &[5672, 5671, 5432, 443, 4317, 4318];
/// The ConfigMap keys holding a URL the daemon connects to.
const CONFIG_URL_KEYS: &[&str] = &["OTEL_EXPORTER_OTLP_ENDPOINT"];

/// The TCP port a URL connects to: explicit, or its scheme's.
pub fn url_port(url: &str) -> Option<u64> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some((_, port)) = host_port.rsplit_once(':')
        && !port.ends_with(']')
    {
        return port.parse().ok();
    }
    match scheme {
        "amqp" => Some(5672),
        "amqps" => Some(5671),
        "postgres" | "postgresql" => Some(5432),
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

pub fn check_isolation(docs: &[Doc], errors: &mut Vec<String>) {
    let Some(daemon) = find(docs, "Deployment", DAEMON) else {
        return;
    };
    check_service_account(daemon, docs, errors);
    let labels = pod_labels(daemon);
    let policies: Vec<&Doc> = of_kind(docs, "NetworkPolicy")
        .filter(|p| {
            selects(
                &string_map(at(&p.value, &["spec", "podSelector", "matchLabels"])),
                &labels,
            )
        })
        .collect();
    let [policy] = policies.as_slice() else {
        errors.push(format!(
            "{}: needs exactly one NetworkPolicy selecting its pods, found {}",
            daemon.id(),
            policies.len()
        ));
        return;
    };
    let container = pod_template(daemon)
        .map(|t| seq_at(t, &["spec", "containers"]))
        .and_then(|cs| cs.iter().find(|c| str_at(c, &["name"]) == Some(DAEMON)))
        .unwrap_or(&Value::Null);
    check_policy(policy, container, docs, errors);
}

fn check_service_account(daemon: &Doc, docs: &[Doc], errors: &mut Vec<String>) {
    let id = daemon.id();
    let spec = pod_template(daemon)
        .and_then(|t| at(t, &["spec"]))
        .unwrap_or(&Value::Null);
    if spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        != Some(false)
    {
        errors.push(format!("{id}: automountServiceAccountToken must be false"));
    }
    match str_at(spec, &["serviceAccountName"]) {
        None | Some("default") => errors.push(format!(
            "{id}: needs its own serviceAccountName (not the namespace's default)"
        )),
        Some(name) => match find(docs, "ServiceAccount", name) {
            None => errors.push(format!("{id}: ServiceAccount {name} is not defined")),
            Some(sa)
                if sa
                    .value
                    .get("automountServiceAccountToken")
                    .and_then(Value::as_bool)
                    != Some(false) =>
            {
                errors.push(format!(
                    "{}: automountServiceAccountToken must be false",
                    sa.id()
                ));
            }
            Some(_) => {}
        },
    }
}

/// `(protocol, port)` of every port a list of NetworkPolicy ports allows.
fn allowed(ports: &[Value], container: &Value) -> BTreeSet<(String, u64)> {
    ports
        .iter()
        .filter_map(|p| {
            let protocol = str_at(p, &["protocol"]).unwrap_or("TCP").to_owned();
            let port = resolve_port(container, p.get("port")?)?;
            Some((protocol, port))
        })
        .collect()
}

fn check_policy(policy: &Doc, container: &Value, docs: &[Doc], errors: &mut Vec<String>) {
    let id = policy.id();
    let types: Vec<String> = seq_at(&policy.value, &["spec", "policyTypes"])
        .iter()
        .filter_map(scalar)
        .collect();
    if types != ["Ingress", "Egress"] {
        errors.push(format!(
            "{id}: policyTypes must be [Ingress, Egress], found {types:?}"
        ));
    }
    let metrics = resolve_port(container, &Value::String("http".to_owned()));
    for rule in seq_at(&policy.value, &["spec", "ingress"]) {
        let ports = allowed(seq_at(rule, &["ports"]), container);
        if ports.is_empty() || ports.iter().any(|(_, p)| Some(*p) != metrics) {
            errors.push(format!(
                "{id}: ingress may only reach the metrics port {metrics:?}, found {ports:?}"
            ));
        }
        let from = seq_at(rule, &["from"]);
        let only_monitoring = !from.is_empty()
            && from.iter().all(|peer| {
                peer.get("podSelector").is_none()
                    && peer.get("ipBlock").is_none()
                    && string_map(at(peer, &["namespaceSelector", "matchLabels"]))
                        .get("kubernetes.io/metadata.name")
                        .is_some_and(|ns| ns == MONITORING_NAMESPACE)
            });
        if !only_monitoring {
            errors.push(format!(
                "{id}: ingress only from the namespace {MONITORING_NAMESPACE}"
            ));
        }
    }
    let mut egress = BTreeSet::new();
    for rule in seq_at(&policy.value, &["spec", "egress"]) {
        let ports = allowed(seq_at(rule, &["ports"]), container);
        if ports.is_empty() {
            errors.push(format!(
                "{id}: an egress rule without ports allows every port"
            ));
        }
        egress.extend(ports);
    }
    let mut needed: BTreeSet<(String, u64)> = BASELINE_EGRESS
        .iter()
        .map(|p| ("TCP".to_owned(), *p))
        .collect();
    needed.insert(("UDP".to_owned(), 53));
    needed.insert(("TCP".to_owned(), 53));
    let mut urls = Vec::new();
    if let Some(secret) = find(docs, "Secret", SECRET) {
        let mut values = string_map(at(&secret.value, &["stringData"]));
        for (key, encoded) in string_map(at(&secret.value, &["data"])) {
            if let Some(text) = crate::deploy_manifests::base64_decode(&encoded)
                .and_then(|b| String::from_utf8(b).ok())
            {
                values.insert(key, text);
            }
        }
        urls.extend(
            values
                .into_iter()
                .filter(|(k, _)| SECRET_KEYS.contains(&k.as_str())),
        );
    }
    if let Some(config) = find(docs, "ConfigMap", CONFIGMAP) {
        urls.extend(
            string_map(at(&config.value, &["data"]))
                .into_iter()
                .filter(|(k, _)| CONFIG_URL_KEYS.contains(&k.as_str())),
        );
    }
    for (key, url) in urls {
        match url_port(&url) {
            Some(port) => {
                needed.insert(("TCP".to_owned(), port));
            }
            None => errors.push(format!("{key}: cannot tell the port of its URL")),
        }
    }
    for (protocol, port) in needed.difference(&egress) {
        errors.push(format!(
            "{id}: egress must allow {protocol} {port}, which the daemon connects to"
        ));
    }
}

/// Every Namespace a root creates enforces Pod Security "restricted", and a
/// root that sets a namespace creates it.
pub fn check_namespaces(docs: &[Doc], namespace: Option<&str>) -> Vec<String> {
    let mut errors = Vec::new();
    if let Some(ns) = namespace
        && find(docs, "Namespace", ns).is_none()
    {
        errors.push(format!(
            "Namespace {ns} is not created here, so nothing enforces its Pod Security level"
        ));
    }
    for ns in of_kind(docs, "Namespace") {
        let labels = string_map(at(&ns.value, &["metadata", "labels"]));
        if labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str)
            != Some("restricted")
        {
            errors.push(format!(
                "{}: label pod-security.kubernetes.io/enforce must be restricted",
                ns.id()
            ));
        }
    }
    errors
}

#[test]
fn url_ports_are_explicit_or_the_schemes() {
    assert_eq!(url_port("amqps://u:p@mq:5671/orders"), Some(5671));
    assert_eq!(url_port("amqp://guest:guest@rabbitmq/%2f"), Some(5672));
    assert_eq!(
        url_port("postgres://u@db/orders?sslmode=verify-full"),
        Some(5432)
    );
    assert_eq!(url_port("https://pay.example"), Some(443));
    assert_eq!(url_port("http://jaeger-collector:4317"), Some(4317));
    assert_eq!(url_port("http://[::1]/x"), Some(80));
    assert_eq!(url_port("nonsense"), None);
}
