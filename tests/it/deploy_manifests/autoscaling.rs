//! KEDA xor HPA, and the wiring of KEDA's custom resources to the daemon:
//! its queue, its sizing, its Secret. Their shape is checked against the
//! CRDs' schemas (`crd.rs`); what those leave open (a trigger's metadata is
//! a free map of strings) is checked here.

use std::collections::BTreeMap;

use crate::deploy_manifests::config_keys::default_value;
use crate::deploy_manifests::invariants::{find, of_kind};
use crate::deploy_manifests::yaml::{
    Doc, assert_clean, at, k8s_dir, keys, read, seq_at, str_at, u64_at,
};
use crate::deploy_manifests::{KEDA_SECRET_KEY, QUEUE_KEY, SECRET, SECRET_KEYS};

const PREFETCH_KEY: &str = "ORDER_PROCESSOR__AMQP__PREFETCH";
const CONCURRENCY_KEY: &str = "ORDER_PROCESSOR__WORKERS__CONCURRENCY";
/// The metadata KEDA's RabbitMQ scaler reads (KEDA 2.20, `rabbitmq_scaler.go`);
/// anything else is ignored by KEDA without a word.
const RABBITMQ_TRIGGER_KEYS: &[&str] = &[
    "queueName",
    "mode",
    "value",
    "activationValue",
    "host",
    "hostFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "protocol",
    "vhostName",
    "useRegex",
    "excludeUnacknowledged",
    "pageSize",
    "operation",
    "timeout",
    "unsafeSsl",
];

/// What the ScaledObject's sizing depends on: the queue, and how many
/// deliveries a replica holds and works on.
pub struct Sizing<'a> {
    pub queue: Option<&'a str>,
    pub prefetch: Option<u64>,
    pub concurrency: Option<u64>,
}

impl<'a> Sizing<'a> {
    /// From the daemon's ConfigMap, falling back to `config/default.toml`.
    pub fn from_config(data: &'a BTreeMap<String, String>) -> Self {
        let number = |key: &str, section: &str, name: &str| {
            data.get(key)
                .cloned()
                .or_else(|| default_value(section, name))
                .and_then(|v| v.parse().ok())
        };
        Self {
            queue: data.get(QUEUE_KEY).map(String::as_str),
            prefetch: number(PREFETCH_KEY, "amqp", "prefetch"),
            concurrency: number(CONCURRENCY_KEY, "workers", "concurrency"),
        }
    }
}

pub fn check_autoscalers(
    docs: &[Doc],
    sizing: &Sizing<'_>,
    rendered: bool,
    errors: &mut Vec<String>,
) {
    // Deployment name -> the autoscalers targeting it.
    let mut scalers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut target = |doc: &Doc, errors: &mut Vec<String>| {
        let kind = str_at(&doc.value, &["spec", "scaleTargetRef", "kind"]).unwrap_or("Deployment");
        let Some(name) = str_at(&doc.value, &["spec", "scaleTargetRef", "name"]) else {
            errors.push(format!("{}: spec.scaleTargetRef.name missing", doc.id()));
            return;
        };
        if find(docs, kind, name).is_none() {
            errors.push(format!(
                "{}: scales {kind}/{name}, which is not defined",
                doc.id()
            ));
        }
        scalers
            .entry(format!("{kind}/{name}"))
            .or_default()
            .push(doc.id());
    };
    for hpa in of_kind(docs, "HorizontalPodAutoscaler") {
        target(hpa, errors);
        let min = u64_at(&hpa.value, &["spec", "minReplicas"]).unwrap_or(1);
        let max = u64_at(&hpa.value, &["spec", "maxReplicas"]).unwrap_or(0);
        if min == 0 || min > max {
            errors.push(format!(
                "{}: need 1 <= minReplicas <= maxReplicas",
                hpa.id()
            ));
        }
    }
    for so in of_kind(docs, "ScaledObject") {
        target(so, errors);
        check_scaled_object(so, docs, sizing, errors);
    }
    for ta in of_kind(docs, "TriggerAuthentication") {
        check_trigger_authentication(ta, docs, errors);
    }
    if rendered {
        for (target, list) in scalers {
            if list.len() > 1 {
                errors.push(format!(
                    "{target} has several autoscalers ({}): use KEDA or the HPA, not both",
                    list.join(", ")
                ));
            }
        }
    }
}

/// What the CRD's schema leaves open: replica bounds, the fallback, and the
/// RabbitMQ trigger's metadata, wired to the daemon's queue and Secret and
/// sized by its prefetch and concurrency.
fn check_scaled_object(so: &Doc, docs: &[Doc], sizing: &Sizing<'_>, errors: &mut Vec<String>) {
    let id = so.id();
    let min = u64_at(&so.value, &["spec", "minReplicaCount"]).unwrap_or(0);
    let max = u64_at(&so.value, &["spec", "maxReplicaCount"]).unwrap_or(100);
    if max == 0 || min > max {
        errors.push(format!(
            "{id}: need minReplicaCount <= maxReplicaCount, maxReplicaCount >= 1"
        ));
    }
    let fallback = u64_at(&so.value, &["spec", "fallback", "replicas"]);
    let threshold = u64_at(&so.value, &["spec", "fallback", "failureThreshold"]);
    if !fallback.is_some_and(|r| (min.max(1)..=max).contains(&r)) || threshold.unwrap_or(0) == 0 {
        errors.push(format!(
            "{id}: needs a fallback (failureThreshold >= 1, replicas between {min} and {max}) for when the queue cannot be measured"
        ));
    }
    let triggers = seq_at(&so.value, &["spec", "triggers"]);
    if !triggers
        .iter()
        .any(|t| str_at(t, &["type"]) == Some("rabbitmq"))
    {
        errors.push(format!("{id}: no rabbitmq trigger"));
    }
    for (i, t) in triggers.iter().enumerate() {
        let tid = format!("{id} trigger {i}");
        let m = |key: &str| t.get("metadata").and_then(|md| str_at(md, &[key]));
        let number = |key: &str| m(key).and_then(|v| v.parse::<f64>().ok());
        match str_at(t, &["type"]) {
            Some("rabbitmq") => {
                for key in keys(t.get("metadata")) {
                    if !RABBITMQ_TRIGGER_KEYS.contains(&key.as_str()) {
                        errors.push(format!(
                            "{tid}: KEDA's rabbitmq scaler has no metadata {key}"
                        ));
                    }
                }
                if m("queueName") != sizing.queue || sizing.queue.is_none() {
                    errors.push(format!(
                        "{tid}: queueName {:?} must equal {QUEUE_KEY} {:?}",
                        m("queueName"),
                        sizing.queue
                    ));
                }
                // Only the management API counts the deliveries the replicas
                // hold (unacknowledged); AMQP's passive declare counts the ready ones.
                if m("protocol") != Some("http") || m("excludeUnacknowledged") == Some("true") {
                    errors.push(format!(
                        "{tid}: protocol must be http, counting ready + unacknowledged messages"
                    ));
                }
                if m("mode") != Some("QueueLength") {
                    errors.push(format!("{tid}: mode must be QueueLength"));
                }
                if let (Some(prefetch), Some(concurrency)) = (sizing.prefetch, sizing.concurrency) {
                    let want = prefetch.saturating_add(concurrency);
                    if number("value") != Some(want as f64) {
                        errors.push(format!(
                            "{tid}: value {:?} must be prefetch {prefetch} + concurrency {concurrency} = {want} (deploy/README.md, Autoscaling)",
                            m("value")
                        ));
                    }
                } else {
                    errors.push(format!("{tid}: cannot tell the prefetch and concurrency"));
                }
                if !number("activationValue").is_some_and(|v| (0.0..1.0).contains(&v)) {
                    errors.push(format!(
                        "{tid}: activationValue must be set below 1, so that one waiting message activates a consumer"
                    ));
                }
                if m("host").is_some() {
                    errors.push(format!(
                        "{tid}: host in metadata would commit credentials; use authenticationRef"
                    ));
                }
                match str_at(t, &["authenticationRef", "name"]) {
                    None => errors.push(format!(
                        "{tid}: authenticationRef.name required (the management URL comes from the Secret)"
                    )),
                    Some(name) => {
                        let host_key = find(docs, "TriggerAuthentication", name).and_then(|ta| {
                            seq_at(&ta.value, &["spec", "secretTargetRef"])
                                .iter()
                                .find(|r| str_at(r, &["parameter"]) == Some("host"))
                                .and_then(|r| str_at(r, &["key"]))
                        });
                        if host_key != Some(KEDA_SECRET_KEY) {
                            errors.push(format!(
                                "{tid}: TriggerAuthentication {name} must provide host from {SECRET} key {KEDA_SECRET_KEY}, found {host_key:?}"
                            ));
                        }
                    }
                }
            }
            Some("cpu" | "memory") => {
                if !matches!(
                    str_at(t, &["metricType"]),
                    Some("Utilization" | "AverageValue")
                ) {
                    errors.push(format!(
                        "{tid}: metricType must be Utilization or AverageValue"
                    ));
                }
                if !number("value").is_some_and(|v| v > 0.0) {
                    errors.push(format!("{tid}: value must be a positive number"));
                }
            }
            Some(_) => {}
            None => errors.push(format!("{tid}: type is required")),
        }
    }
}

/// The sizing comment in the ScaledObject quotes the defaults it was worked
/// out from: when they change, the comment must change with them.
#[test]
fn the_keda_sizing_comment_quotes_the_configured_defaults() {
    let path = k8s_dir().join("components/keda/keda-scaledobject.yaml");
    let text = read(&path);
    let mut errors = Vec::new();
    for (section, key) in [("amqp", "prefetch"), ("workers", "concurrency")] {
        let value = default_value(section, key).unwrap();
        let quoted = format!("{section}.{key} = {value}");
        if !text.contains(&quoted) {
            errors.push(format!(
                "the comment must quote `{quoted}` (config/default.toml)"
            ));
        }
    }
    assert_clean("components/keda/keda-scaledobject.yaml", &errors);
}

fn check_trigger_authentication(ta: &Doc, docs: &[Doc], errors: &mut Vec<String>) {
    let id = ta.id();
    if str_at(&ta.value, &["apiVersion"]) != Some("keda.sh/v1alpha1") {
        errors.push(format!("{id}: apiVersion must be keda.sh/v1alpha1"));
    }
    let refs = seq_at(&ta.value, &["spec", "secretTargetRef"]);
    if refs.is_empty() {
        errors.push(format!("{id}: spec.secretTargetRef is empty"));
    }
    let secret = find(docs, "Secret", SECRET);
    for r in refs {
        let (parameter, name, key) = (
            str_at(r, &["parameter"]),
            str_at(r, &["name"]),
            str_at(r, &["key"]),
        );
        if parameter.is_none() || key.is_none() || name != Some(SECRET) {
            errors.push(format!(
                "{id}: secretTargetRef entries need parameter, key and name: {SECRET}"
            ));
        }
        if let Some(k) = key
            && !SECRET_KEYS.contains(&k)
            && k != KEDA_SECRET_KEY
        {
            errors.push(format!(
                "{id}: key {k} is not one of {SECRET_KEYS:?} or {KEDA_SECRET_KEY}"
            ));
        }
        if let (Some(s), Some(k)) = (secret, key) {
            let present =
                at(&s.value, &["stringData", k]).is_some() || at(&s.value, &["data", k]).is_some();
            if !present {
                errors.push(format!("{id}: {} has no key {k}", s.id()));
            }
        }
    }
}
