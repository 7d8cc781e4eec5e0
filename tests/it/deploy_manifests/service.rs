//! Services and PodDisruptionBudgets select the daemon's pods.

use std::collections::BTreeMap;

use serde_norway::Value;

use crate::deploy_manifests::invariants::{pod_labels, pod_template, selects};
use crate::deploy_manifests::yaml::{Doc, at, scalar, seq_at, str_at, string_map, u64_at};
use crate::deploy_manifests::{DAEMON, WORKLOAD_KINDS};

/// The workloads whose pods `selector` matches.
fn workloads_selected<'a>(docs: &'a [Doc], selector: &BTreeMap<String, String>) -> Vec<&'a Doc> {
    docs.iter()
        .filter(|d| WORKLOAD_KINDS.contains(&d.kind()) && selects(selector, &pod_labels(d)))
        .collect()
}

pub fn check_service(service: &Doc, docs: &[Doc], port: Option<u64>, errors: &mut Vec<String>) {
    let id = service.id();
    let selector = string_map(at(&service.value, &["spec", "selector"]));
    let selected = workloads_selected(docs, &selector);
    if selected.is_empty() {
        errors.push(format!(
            "{id}: selector {selector:?} selects no workload's pods"
        ));
    }
    let ports = seq_at(&service.value, &["spec", "ports"]);
    for p in ports {
        let target = p
            .get("targetPort")
            .or_else(|| p.get("port"))
            .unwrap_or(&Value::Null);
        for w in &selected {
            let spec = pod_template(w)
                .and_then(|t| at(t, &["spec"]))
                .unwrap_or(&Value::Null);
            let exists = seq_at(spec, &["containers"]).iter().any(|c| match target {
                Value::String(name) => seq_at(c, &["ports"])
                    .iter()
                    .any(|cp| str_at(cp, &["name"]) == Some(name.as_str())),
                other => other.as_u64().is_some_and(|n| {
                    seq_at(c, &["ports"])
                        .iter()
                        .any(|cp| u64_at(cp, &["containerPort"]) == Some(n))
                }),
            });
            if !exists {
                errors.push(format!(
                    "{id}: targetPort {} is not a container port of {}",
                    scalar(target).unwrap_or_default(),
                    w.id()
                ));
            }
        }
    }
    if service.name() != DAEMON {
        return;
    }
    if !selected.iter().any(|d| d.is("Deployment", DAEMON)) {
        errors.push(format!("{id}: does not select the {DAEMON} pods"));
    }
    if !ports
        .iter()
        .any(|p| str_at(p, &["targetPort"]) == Some("http") && u64_at(p, &["port"]) == port)
    {
        errors.push(format!(
            "{id}: needs a port {port:?} with targetPort: http (the metrics port)"
        ));
    }
    let annotations = string_map(at(&service.value, &["metadata", "annotations"]));
    let expect = [
        ("prometheus.io/scrape", Some("true".to_owned())),
        ("prometheus.io/port", port.map(|p| p.to_string())),
        ("prometheus.io/path", Some("/metrics".to_owned())),
    ];
    for (key, want) in expect {
        if annotations.get(key) != want.as_ref() {
            errors.push(format!(
                "{id}: annotation {key} should be {want:?}, found {:?}",
                annotations.get(key)
            ));
        }
    }
}

pub fn check_pdb(pdb: &Doc, docs: &[Doc], errors: &mut Vec<String>) {
    let id = pdb.id();
    let selector = string_map(at(&pdb.value, &["spec", "selector", "matchLabels"]));
    let selected = workloads_selected(docs, &selector);
    if selected.is_empty() {
        errors.push(format!(
            "{id}: selector {selector:?} matches no workload's pod labels"
        ));
    }
    if pdb.name() == DAEMON && !selected.iter().any(|d| d.is("Deployment", DAEMON)) {
        errors.push(format!(
            "{id}: selector {selector:?} does not match the {DAEMON} Deployment's pod labels"
        ));
    }
    let min = at(&pdb.value, &["spec", "minAvailable"]);
    let max = at(&pdb.value, &["spec", "maxUnavailable"]);
    if min.is_some() == max.is_some() {
        errors.push(format!(
            "{id}: set exactly one of minAvailable / maxUnavailable"
        ));
    }
    if max.and_then(Value::as_u64) == Some(0) || max.and_then(Value::as_str) == Some("0%") {
        errors.push(format!("{id}: maxUnavailable 0 blocks every node drain"));
    }
}
