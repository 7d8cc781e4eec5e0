//! KEDA xor HPA, and KEDA's custom resources checked by hand (they have no built-in schema).

use std::collections::BTreeMap;

use serde_norway::Value;

use crate::invariants::{find, of_kind};
use crate::yaml::{Doc, at, keys, scalar, seq_at, str_at, u64_at};
use crate::{QUEUE_KEY, SECRET, SECRET_KEYS};

pub fn check_autoscalers(
    docs: &[Doc],
    queue: Option<&str>,
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
        check_scaled_object(so, docs, queue, errors);
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

/// KEDA has no built-in schema: check what the operator's CRD would reject,
/// plus the wiring to the daemon's queue and Secret.
fn check_scaled_object(so: &Doc, docs: &[Doc], queue: Option<&str>, errors: &mut Vec<String>) {
    const SPEC_KEYS: &[&str] = &[
        "scaleTargetRef",
        "pollingInterval",
        "initialCooldownPeriod",
        "cooldownPeriod",
        "idleReplicaCount",
        "minReplicaCount",
        "maxReplicaCount",
        "fallback",
        "advanced",
        "triggers",
    ];
    const TRIGGER_KEYS: &[&str] = &[
        "type",
        "name",
        "metadata",
        "authenticationRef",
        "metricType",
        "useCachedMetrics",
    ];
    let id = so.id();
    if str_at(&so.value, &["apiVersion"]) != Some("keda.sh/v1alpha1") {
        errors.push(format!("{id}: apiVersion must be keda.sh/v1alpha1"));
    }
    for key in keys(at(&so.value, &["spec"])) {
        if !SPEC_KEYS.contains(&key.as_str()) {
            errors.push(format!("{id}: unknown field spec.{key}"));
        }
    }
    let min = u64_at(&so.value, &["spec", "minReplicaCount"]).unwrap_or(0);
    let max = u64_at(&so.value, &["spec", "maxReplicaCount"]).unwrap_or(100);
    if max == 0 || min > max {
        errors.push(format!(
            "{id}: need minReplicaCount <= maxReplicaCount, maxReplicaCount >= 1"
        ));
    }
    let triggers = seq_at(&so.value, &["spec", "triggers"]);
    if triggers.is_empty() {
        errors.push(format!("{id}: spec.triggers is empty"));
    }
    for (i, t) in triggers.iter().enumerate() {
        let tid = format!("{id} trigger {i}");
        for key in keys(Some(t)) {
            if !TRIGGER_KEYS.contains(&key.as_str()) {
                errors.push(format!("{tid}: unknown field {key}"));
            }
        }
        let Some(meta) = t.get("metadata").and_then(Value::as_mapping) else {
            errors.push(format!("{tid}: metadata (a map) is required"));
            continue;
        };
        // The CRD declares metadata as map[string]string: unquoted numbers are rejected.
        for (k, v) in meta {
            if !v.is_string() {
                errors.push(format!(
                    "{tid}: metadata.{} must be a string (quote it)",
                    scalar(k).unwrap_or_default()
                ));
            }
        }
        let m = |key: &str| t.get("metadata").and_then(|md| str_at(md, &[key]));
        let positive = |key: &str| {
            m(key)
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
        };
        match str_at(t, &["type"]) {
            Some("rabbitmq") => {
                if m("queueName") != queue || queue.is_none() {
                    errors.push(format!(
                        "{tid}: queueName {:?} must equal {QUEUE_KEY} {queue:?}",
                        m("queueName")
                    ));
                }
                if !matches!(m("mode"), Some("QueueLength" | "MessageRate")) {
                    errors.push(format!("{tid}: mode must be QueueLength or MessageRate"));
                }
                if !positive("value") {
                    errors.push(format!("{tid}: value must be a positive number"));
                }
                if !matches!(m("protocol"), None | Some("amqp" | "http" | "auto")) {
                    errors.push(format!("{tid}: protocol must be amqp, http or auto"));
                }
                if m("host").is_some() {
                    errors.push(format!(
                        "{tid}: host in metadata would commit credentials; use authenticationRef"
                    ));
                }
                match str_at(t, &["authenticationRef", "name"]) {
                    None => errors.push(format!(
                        "{tid}: authenticationRef.name required (the AMQP URL comes from the Secret)"
                    )),
                    Some(name) => {
                        let provides_host = find(docs, "TriggerAuthentication", name).is_some_and(|ta| {
                            seq_at(&ta.value, &["spec", "secretTargetRef"])
                                .iter()
                                .any(|r| str_at(r, &["parameter"]) == Some("host"))
                        });
                        if !provides_host {
                            errors.push(format!(
                                "{tid}: TriggerAuthentication {name} missing or provides no host parameter"
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
                if !positive("value") {
                    errors.push(format!("{tid}: value must be a positive number"));
                }
            }
            Some(_) => {}
            None => errors.push(format!("{tid}: type is required")),
        }
    }
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
        {
            errors.push(format!("{id}: key {k} is not one of {SECRET_KEYS:?}"));
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
