//! Invariants over a set of documents (the raw files, or one rendered root).

use std::collections::BTreeMap;

use serde_norway::Value;

use crate::deploy_manifests::autoscaling::{Sizing, check_autoscalers};
use crate::deploy_manifests::credentials::{check_credential, check_secret, looks_secret_key};
use crate::deploy_manifests::security::check_isolation;
use crate::deploy_manifests::service::{check_pdb, check_service};
use crate::deploy_manifests::workload::{check_daemon, check_workload};
use crate::deploy_manifests::yaml::{Doc, at, seq_at, str_at, string_map, u64_at};
use crate::deploy_manifests::{
    CONFIGMAP, DAEMON, GRACE_KEY, LISTEN_KEY, OUR_IMAGES, SECRET_KEYS, WORKLOAD_KINDS,
};

pub fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> Option<&'a Doc> {
    docs.iter().find(|d| d.is(kind, name))
}

pub fn of_kind<'a>(docs: &'a [Doc], kind: &'a str) -> impl Iterator<Item = &'a Doc> + 'a {
    docs.iter().filter(move |d| d.kind() == kind)
}

/// The pod template (`metadata` + `spec`) of a workload.
pub fn pod_template(doc: &Doc) -> Option<&Value> {
    match doc.kind() {
        "CronJob" => at(&doc.value, &["spec", "jobTemplate", "spec", "template"]),
        k if WORKLOAD_KINDS.contains(&k) => at(&doc.value, &["spec", "template"]),
        _ => None,
    }
}

pub fn pod_labels(doc: &Doc) -> BTreeMap<String, String> {
    string_map(pod_template(doc).and_then(|t| at(t, &["metadata", "labels"])))
}

pub fn containers(pod_spec: &Value) -> impl Iterator<Item = &Value> {
    seq_at(pod_spec, &["initContainers"])
        .iter()
        .chain(seq_at(pod_spec, &["containers"]))
}

pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

pub fn image_name(image: &str) -> &str {
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split(['@', ':']).next().unwrap_or(last)
}

pub fn is_our_image(image: &str) -> bool {
    OUR_IMAGES.contains(&image_name(image))
}

/// Resolves a probe/Service port (number or container port name) to a number.
pub fn resolve_port(container: &Value, port: &Value) -> Option<u64> {
    if let Some(n) = port.as_u64() {
        return Some(n);
    }
    let name = port.as_str()?;
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    seq_at(container, &["ports"])
        .iter()
        .find(|p| str_at(p, &["name"]) == Some(name))
        .and_then(|p| u64_at(p, &["containerPort"]))
}

pub fn listen_port(listen: &str) -> Option<u64> {
    listen.rsplit_once(':')?.1.parse().ok()
}

pub fn check_pool(docs: &[Doc], rendered: bool) -> Vec<String> {
    let mut errors = Vec::new();
    let config = find(docs, "ConfigMap", CONFIGMAP);
    let data = string_map(config.and_then(|c| at(&c.value, &["data"])));
    if config.is_none() {
        errors.push(format!("no ConfigMap {CONFIGMAP}"));
    }
    let grace_ms = data.get(GRACE_KEY).and_then(|v| v.parse::<u64>().ok());
    if grace_ms.is_none() {
        errors.push(format!(
            "ConfigMap {CONFIGMAP} has no numeric {GRACE_KEY}: cannot check the termination grace period"
        ));
    }
    let port = data.get(LISTEN_KEY).and_then(|v| listen_port(v));
    if port.is_none() {
        errors.push(format!(
            "ConfigMap {CONFIGMAP} has no {LISTEN_KEY} of the form host:port"
        ));
    }

    for doc in docs.iter().filter(|d| WORKLOAD_KINDS.contains(&d.kind())) {
        check_workload(doc, &mut errors);
    }
    match find(docs, "Deployment", DAEMON) {
        Some(daemon) => check_daemon(daemon, docs, grace_ms, port, &mut errors),
        None => errors.push(format!("no Deployment {DAEMON}")),
    }
    check_isolation(docs, &mut errors);
    for service in of_kind(docs, "Service") {
        check_service(service, docs, port, &mut errors);
    }
    for pdb in of_kind(docs, "PodDisruptionBudget") {
        check_pdb(pdb, docs, &mut errors);
    }
    check_autoscalers(docs, &Sizing::from_config(&data), rendered, &mut errors);
    for doc in docs {
        match doc.kind() {
            "Secret" => check_secret(doc, &mut errors),
            "ConfigMap" => {
                for (key, val) in string_map(at(&doc.value, &["data"])) {
                    if SECRET_KEYS.contains(&key.as_str()) || looks_secret_key(&key) {
                        errors.push(format!("{}: {key} belongs in the Secret", doc.id()));
                    }
                    check_credential(&doc.id(), &key, &val, doc.dev, &mut errors);
                }
            }
            _ => {}
        }
    }
    errors
}
