//! The monitoring component (`deploy/k8s/components/monitoring`): alerts
//! whose PromQL parses, each with a runbook in `deploy/README.md`, selecting
//! the job the ServiceMonitor gives the daemon's metrics; a dashboard whose
//! queries parse and cover what the daemon measures.

use std::collections::BTreeSet;

use serde_norway::Value;

use crate::deploy_manifests::invariants::{find, of_kind};
use crate::deploy_manifests::promql::{Selector, selectors, without_grafana_variables};
use crate::deploy_manifests::yaml::{
    Doc, assert_clean, at, deploy_dir, k8s_dir, parse_yaml, read, seq_at, str_at, string_map,
};
use crate::deploy_manifests::{DAEMON, SERVICE_METRICS_PORT};

/// The `job` label Prometheus gives the daemon's metrics (ServiceMonitor's jobLabel).
pub const JOB: &str = "order-processor";
/// The alerts, each with its runbook in deploy/README.md ("Monitoring").
const ALERTS: &[&str] = &[
    "OrderProcessorDeadLetters",
    "OrderProcessorRetryRateHigh",
    "OrderProcessorCircuitOpen",
    "OrderProcessorReplicasUnavailable",
    "OrderProcessorReconnectStorm",
    "OrderProcessorNoProgress",
];
const SEVERITIES: &[&str] = &["warning", "critical"];
/// What the dashboard must show, one query at least each.
const DASHBOARD_METRICS: &[&str] = &[
    "order_processor_deliveries_total",
    "order_processor_processing_seconds_bucket",
    "order_processor_in_flight",
    "order_processor_payment_waiting",
    "order_processor_payment_request_seconds_bucket",
    "order_processor_database_wait_seconds_bucket",
    "order_processor_database_statement_seconds_bucket",
    "order_processor_circuit_open",
    "order_processor_amqp_ack_frames_total",
];

fn component_file(name: &str) -> std::path::PathBuf {
    k8s_dir().join("components/monitoring").join(name)
}

/// `(alert name, rule)` of every rule in the component's PrometheusRule.
fn rules() -> Vec<(String, Value)> {
    let path = component_file("prometheusrule.yaml");
    parse_yaml(&read(&path), "prometheusrule.yaml")
        .iter()
        .flat_map(|doc| seq_at(doc, &["spec", "groups"]).to_vec())
        .flat_map(|group| seq_at(&group, &["rules"]).to_vec())
        .map(|rule| (str_at(&rule, &["alert"]).unwrap_or("").to_owned(), rule))
        .collect()
}

fn dashboard() -> serde_json::Value {
    let path = component_file("dashboards/order-processor.json");
    serde_json::from_str(&read(&path)).expect("the dashboard is not JSON")
}

/// `(where, PromQL)` of every alert and every dashboard query, Grafana's
/// variables replaced.
pub fn queries() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = rules()
        .into_iter()
        .map(|(alert, rule)| {
            let expr = str_at(&rule, &["expr"]).unwrap_or("").to_owned();
            (format!("alert {alert}"), expr)
        })
        .collect();
    let dashboard = dashboard();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or("");
            out.push((
                format!("dashboard panel {title:?}"),
                without_grafana_variables(expr),
            ));
        }
    }
    out
}

/// GitHub's (and GitLab's) anchor of a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn readme_anchors() -> BTreeSet<String> {
    read(&deploy_dir().join("README.md"))
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect()
}

#[test]
fn every_alert_parses_selects_the_daemons_job_and_has_a_runbook() {
    let anchors = readme_anchors();
    let mut errors = Vec::new();
    let mut names = BTreeSet::new();
    for (alert, rule) in rules() {
        names.insert(alert.clone());
        let expr = str_at(&rule, &["expr"]).unwrap_or("");
        match selectors(expr) {
            Err(error) => errors.push(format!("{alert}: expr does not parse: {error}")),
            Ok(found) => {
                for s in found
                    .iter()
                    .filter(|s| s.metric.starts_with("order_processor_"))
                {
                    if s.equal("job") != Some(JOB) {
                        errors.push(format!(
                            "{alert}: {} must select job=\"{JOB}\", or it mixes in other jobs' series",
                            s.metric
                        ));
                    }
                }
            }
        }
        let severity = str_at(&rule, &["labels", "severity"]).unwrap_or("");
        if !SEVERITIES.contains(&severity) {
            errors.push(format!(
                "{alert}: severity {severity:?} is not one of {SEVERITIES:?}"
            ));
        }
        for key in ["summary", "description"] {
            if str_at(&rule, &["annotations", key]).is_none_or(|v| v.trim().is_empty()) {
                errors.push(format!("{alert}: annotation {key} missing"));
            }
        }
        let url = str_at(&rule, &["annotations", "runbook_url"]).unwrap_or("");
        let want = format!("/deploy/README.md#{}", anchor(&alert));
        if !url.ends_with(&want) || !url.starts_with("https://") {
            errors.push(format!(
                "{alert}: runbook_url {url:?} must be https://…{want}"
            ));
        }
        if !anchors.contains(&anchor(&alert)) {
            errors.push(format!(
                "{alert}: deploy/README.md has no heading {alert} (its runbook)"
            ));
        }
    }
    let wanted: BTreeSet<String> = ALERTS.iter().map(|a| (*a).to_owned()).collect();
    if names != wanted {
        errors.push(format!("the alerts are {names:?}, expected {wanted:?}"));
    }
    // No runbook outlives its alert.
    for heading in read(&deploy_dir().join("README.md"))
        .lines()
        .filter_map(|l| l.strip_prefix("#### "))
        .filter(|h| h.starts_with("OrderProcessor"))
    {
        if !names.contains(heading.trim()) {
            errors.push(format!("deploy/README.md: runbook {heading} has no alert"));
        }
    }
    assert_clean("components/monitoring/prometheusrule.yaml", &errors);
}

#[test]
fn every_dashboard_query_parses_and_follows_the_namespace_variable() {
    let dashboard = dashboard();
    let mut errors = Vec::new();
    if dashboard["uid"].as_str().is_none_or(str::is_empty) {
        errors.push("the dashboard needs a fixed uid".to_owned());
    }
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    if variables != ["datasource", "namespace"] {
        errors.push(format!(
            "variables must be datasource, namespace: {variables:?}"
        ));
    }
    let mut shown = BTreeSet::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("?");
        if panel["datasource"]["uid"] != "${datasource}" {
            errors.push(format!(
                "panel {title:?}: datasource must be ${{datasource}}"
            ));
        }
        let targets = panel["targets"].as_array().map_or(&[][..], Vec::as_slice);
        if targets.is_empty() {
            errors.push(format!("panel {title:?}: no query"));
        }
        for target in targets {
            let expr = without_grafana_variables(target["expr"].as_str().unwrap_or(""));
            match selectors(&expr) {
                Err(error) => errors.push(format!("panel {title:?}: {expr}: {error}")),
                Ok(found) => {
                    for s in found
                        .iter()
                        .filter(|s| s.metric.starts_with("order_processor_"))
                    {
                        shown.insert(s.metric.clone());
                        if s.equal("namespace") != Some("orders") {
                            errors.push(format!(
                                "panel {title:?}: {} must select namespace=\"$namespace\"",
                                s.metric
                            ));
                        }
                    }
                }
            }
        }
    }
    for metric in DASHBOARD_METRICS {
        if !shown.contains(*metric) {
            errors.push(format!("no panel shows {metric}"));
        }
    }
    assert_clean(
        "components/monitoring/dashboards/order-processor.json",
        &errors,
    );
}

/// In a rendering: the ServiceMonitor scrapes the daemon's Service under the
/// job the alerts select, the alerts name the Deployment that is there, and
/// the dashboard's ConfigMap is one Grafana's sidecar loads.
pub fn check_monitoring(docs: &[Doc]) -> Vec<String> {
    let mut errors = Vec::new();
    let service = find(docs, "Service", DAEMON);
    let monitors: Vec<&Doc> = of_kind(docs, "ServiceMonitor").collect();
    for sm in &monitors {
        let id = sm.id();
        let selector = string_map(at(&sm.value, &["spec", "selector", "matchLabels"]));
        let Some(service) = service else {
            errors.push(format!("{id}: no Service {DAEMON} to scrape"));
            continue;
        };
        let labels = string_map(at(&service.value, &["metadata", "labels"]));
        if selector.is_empty() || !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            errors.push(format!(
                "{id}: selector {selector:?} does not select {}",
                service.id()
            ));
        }
        let job = str_at(&sm.value, &["spec", "jobLabel"]).and_then(|l| labels.get(l));
        if job.map(String::as_str) != Some(JOB) {
            errors.push(format!(
                "{id}: jobLabel must name a label of {} whose value is {JOB} (the alerts select job=\"{JOB}\"), found {job:?}",
                service.id()
            ));
        }
        for endpoint in seq_at(&sm.value, &["spec", "endpoints"]) {
            if str_at(endpoint, &["port"]) != Some(SERVICE_METRICS_PORT)
                || str_at(endpoint, &["path"]) != Some("/metrics")
            {
                errors.push(format!(
                    "{id}: endpoints must scrape port {SERVICE_METRICS_PORT}, path /metrics"
                ));
            }
        }
    }
    for rule in of_kind(docs, "PrometheusRule") {
        if monitors.is_empty() {
            errors.push(format!(
                "{}: alerts without a ServiceMonitor never fire",
                rule.id()
            ));
        }
        let exprs = seq_at(&rule.value, &["spec", "groups"])
            .iter()
            .flat_map(|g| seq_at(g, &["rules"]))
            .filter_map(|r| str_at(r, &["expr"]));
        for s in exprs.flat_map(|e| selectors(e).unwrap_or_default()) {
            if let Some(name) = deployment_named(&s)
                && find(docs, "Deployment", name).is_none()
            {
                errors.push(format!(
                    "{}: {} names Deployment {name}, which is not here",
                    rule.id(),
                    s.metric
                ));
            }
        }
    }
    for cm in of_kind(docs, "ConfigMap") {
        let labels = string_map(at(&cm.value, &["metadata", "labels"]));
        if labels.get("grafana_dashboard").map(String::as_str) != Some("1") {
            continue;
        }
        let data = string_map(at(&cm.value, &["data"]));
        let valid = data.len() == 1
            && data.iter().all(|(k, v)| {
                k.ends_with(".json")
                    && serde_json::from_str::<serde_json::Value>(v)
                        .is_ok_and(|d| d["uid"].is_string())
            });
        if !valid {
            errors.push(format!(
                "{}: must hold one dashboard file *.json with a uid",
                cm.id()
            ));
        }
    }
    errors
}

fn deployment_named(s: &Selector) -> Option<&str> {
    s.metric
        .starts_with("kube_deployment_")
        .then(|| s.equal("deployment"))
        .flatten()
}
