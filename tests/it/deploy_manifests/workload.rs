//! Hardening and resources of every workload, and what the daemon's Deployment must hold.

use std::collections::BTreeSet;

use serde_norway::Value;

use crate::deploy_manifests::invariants::{
    containers, find, image_name, is_our_image, pod_labels, pod_template, resolve_port, selects,
};
use crate::deploy_manifests::yaml::{Doc, at, keys, scalar, seq_at, str_at, string_map, u64_at};
use crate::deploy_manifests::{
    CONFIGMAP, DAEMON, GRACE_KEY, LISTEN_KEY, MIN_MARGIN_MS, NONROOT_UID, SECRET, SECRET_KEYS,
};

/// How long a starting replica may take to become ready (migrations included)
/// before the kubelet restarts it.
const STARTUP_BUDGET_SECS: u64 = 120;

/// Hardening and resources, for every workload.
pub fn check_workload(doc: &Doc, errors: &mut Vec<String>) {
    let id = doc.id();
    let Some(template) = pod_template(doc) else {
        errors.push(format!("{id}: no pod template"));
        return;
    };
    let spec = at(template, &["spec"]).unwrap_or(&Value::Null);
    if doc.kind() != "CronJob" && doc.kind() != "Job" {
        let selector = string_map(at(&doc.value, &["spec", "selector", "matchLabels"]));
        if !selects(&selector, &pod_labels(doc)) {
            errors.push(format!(
                "{id}: spec.selector.matchLabels {selector:?} does not match the pod labels"
            ));
        }
    }
    let pod_sc = at(spec, &["securityContext"]);
    let pod_flag = |key: &str| pod_sc.and_then(|sc| sc.get(key));
    if pod_flag("runAsNonRoot").and_then(Value::as_bool) != Some(true) {
        errors.push(format!(
            "{id}: pod securityContext.runAsNonRoot must be true"
        ));
    }
    if pod_flag("runAsUser").and_then(Value::as_u64) == Some(0) {
        errors.push(format!("{id}: pod runAsUser 0"));
    }
    let pod_seccomp = pod_sc.and_then(|sc| str_at(sc, &["seccompProfile", "type"]));
    let cs: Vec<&Value> = containers(spec).collect();
    if cs.is_empty() {
        errors.push(format!("{id}: no containers"));
    }
    for c in cs {
        let cid = format!("{id} container {}", str_at(c, &["name"]).unwrap_or("?"));
        let sc = at(c, &["securityContext"]);
        let flag = |key: &str| sc.and_then(|s| s.get(key)).or_else(|| pod_flag(key));
        if flag("runAsNonRoot").and_then(Value::as_bool) != Some(true) {
            errors.push(format!("{cid}: runAsNonRoot must be true"));
        }
        if sc.and_then(|s| u64_at(s, &["runAsUser"])) == Some(0) {
            errors.push(format!("{cid}: runAsUser 0"));
        }
        if sc
            .and_then(|s| s.get("allowPrivilegeEscalation"))
            .and_then(Value::as_bool)
            != Some(false)
        {
            errors.push(format!("{cid}: allowPrivilegeEscalation must be false"));
        }
        if sc
            .and_then(|s| s.get("privileged"))
            .and_then(Value::as_bool)
            == Some(true)
        {
            errors.push(format!("{cid}: privileged"));
        }
        let drops: Vec<&str> = sc
            .map(|s| seq_at(s, &["capabilities", "drop"]))
            .unwrap_or(&[])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if !drops.contains(&"ALL") {
            errors.push(format!("{cid}: capabilities must drop ALL"));
        }
        if sc.is_some_and(|s| !seq_at(s, &["capabilities", "add"]).is_empty()) {
            errors.push(format!("{cid}: adds capabilities"));
        }
        let seccomp = sc
            .and_then(|s| str_at(s, &["seccompProfile", "type"]))
            .or(pod_seccomp);
        if seccomp != Some("RuntimeDefault") {
            errors.push(format!("{cid}: seccompProfile must be RuntimeDefault"));
        }
        let image = str_at(c, &["image"]).unwrap_or("");
        let last = image.rsplit('/').next().unwrap_or("");
        if image.is_empty()
            || !(last.contains(':') || last.contains('@'))
            || last.ends_with(":latest")
        {
            errors.push(format!(
                "{cid}: image {image:?} needs an explicit tag or digest (not latest)"
            ));
        }
        if is_our_image(image)
            && sc
                .and_then(|s| s.get("readOnlyRootFilesystem"))
                .and_then(Value::as_bool)
                != Some(true)
        {
            errors.push(format!("{cid}: readOnlyRootFilesystem must be true"));
        }
        for (section, resource) in [
            ("requests", "cpu"),
            ("requests", "memory"),
            ("limits", "cpu"),
            ("limits", "memory"),
        ] {
            if at(c, &["resources", section, resource])
                .and_then(scalar)
                .is_none()
            {
                errors.push(format!("{cid}: resources.{section}.{resource} not set"));
            }
        }
    }
}

/// Invariants specific to the order-processor Deployment.
pub fn check_daemon(
    daemon: &Doc,
    docs: &[Doc],
    grace_ms: Option<u64>,
    port: Option<u64>,
    errors: &mut Vec<String>,
) {
    let id = daemon.id();
    let spec = pod_template(daemon)
        .and_then(|t| at(t, &["spec"]))
        .unwrap_or(&Value::Null);

    match (u64_at(spec, &["terminationGracePeriodSeconds"]), grace_ms) {
        (None, _) => errors.push(format!(
            "{id}: terminationGracePeriodSeconds must be set explicitly (the default 30 s is not tied to the drain budget)"
        )),
        (Some(secs), Some(grace)) => {
            let kill_ms = secs.saturating_mul(1000);
            let margin = kill_ms.checked_sub(grace);
            if margin.is_none_or(|m| m < MIN_MARGIN_MS) {
                errors.push(format!(
                    "{id}: terminationGracePeriodSeconds {secs} s (= {kill_ms} ms) must exceed {GRACE_KEY} {grace} ms by at least {MIN_MARGIN_MS} ms, or the kubelet SIGKILLs a draining pod"
                ));
            }
        }
        (Some(_), None) => {} // reported by check_pool
    }

    let uid = u64_at(spec, &["securityContext", "runAsUser"]);
    if uid != Some(NONROOT_UID) {
        errors.push(format!(
            "{id}: pod securityContext.runAsUser must be {NONROOT_UID}, found {uid:?}"
        ));
    }

    let Some(c) = seq_at(spec, &["containers"])
        .iter()
        .find(|c| str_at(c, &["name"]) == Some(DAEMON))
    else {
        errors.push(format!("{id}: no container named {DAEMON}"));
        return;
    };
    if str_at(c, &["image"]).is_none_or(|i| image_name(i) != DAEMON) {
        errors.push(format!(
            "{id}: container {DAEMON} does not run the {DAEMON} image"
        ));
    }
    if !seq_at(c, &["envFrom"])
        .iter()
        .any(|e| str_at(e, &["configMapRef", "name"]) == Some(CONFIGMAP))
    {
        errors.push(format!(
            "{id}: envFrom must include configMapRef {CONFIGMAP}"
        ));
    }

    let http = seq_at(c, &["ports"])
        .iter()
        .find(|p| str_at(p, &["name"]) == Some("http"))
        .and_then(|p| u64_at(p, &["containerPort"]));
    if http.is_none() {
        errors.push(format!("{id}: no container port named http"));
    }
    if let (Some(http), Some(listen)) = (http, port)
        && http != listen
    {
        errors.push(format!(
            "{id}: container port http is {http} but the daemon listens on {listen} ({LISTEN_KEY})"
        ));
    }
    // The startup probe waits for readiness, which comes after the migrations
    // run at start: it must allow them STARTUP_BUDGET_SECS.
    for (probe, path, required) in [
        ("livenessProbe", "/healthz", true),
        ("readinessProbe", "/readyz", true),
        ("startupProbe", "/readyz", true),
    ] {
        let Some(p) = at(c, &[probe]) else {
            if required {
                errors.push(format!("{id}: no {probe}"));
            }
            continue;
        };
        if str_at(p, &["httpGet", "path"]) != Some(path) {
            errors.push(format!("{id}: {probe} must GET {path}"));
        }
        if probe == "startupProbe" {
            let period = u64_at(p, &["periodSeconds"]).unwrap_or(10);
            let failures = u64_at(p, &["failureThreshold"]).unwrap_or(3);
            let budget = period.saturating_mul(failures);
            if budget < STARTUP_BUDGET_SECS {
                errors.push(format!(
                    "{id}: startupProbe allows {failures} x {period} s = {budget} s; the migrations at start need {STARTUP_BUDGET_SECS} s"
                ));
            }
        }
        let target = at(p, &["httpGet", "port"]).and_then(|v| resolve_port(c, v));
        if target.is_none() || target != port {
            errors.push(format!(
                "{id}: {probe} targets port {target:?}, the daemon listens on {port:?} ({LISTEN_KEY})"
            ));
        }
    }

    let env = seq_at(c, &["env"]);
    let secret = find(docs, "Secret", SECRET);
    let secret_keys: BTreeSet<String> = secret
        .map(|s| {
            let mut k = keys(at(&s.value, &["data"]));
            k.extend(keys(at(&s.value, &["stringData"])));
            k.into_iter().collect()
        })
        .unwrap_or_default();
    for key in SECRET_KEYS {
        let Some(var) = env.iter().find(|e| str_at(e, &["name"]) == Some(key)) else {
            errors.push(format!(
                "{id}: env {key} missing (must come from secretKeyRef)"
            ));
            continue;
        };
        if var.get("value").is_some() {
            errors.push(format!(
                "{id}: env {key} has a literal value; use secretKeyRef"
            ));
        }
        let name = str_at(var, &["valueFrom", "secretKeyRef", "name"]);
        let skey = str_at(var, &["valueFrom", "secretKeyRef", "key"]);
        if name != Some(SECRET) || skey.is_none() {
            errors.push(format!(
                "{id}: env {key} must use secretKeyRef {{name: {SECRET}, key: ...}}"
            ));
        }
        if let (Some(s), Some(k)) = (secret, skey)
            && !secret_keys.contains(k)
        {
            errors.push(format!(
                "{id}: env {key} reads key {k}, which {} lacks",
                s.id()
            ));
        }
    }
}
