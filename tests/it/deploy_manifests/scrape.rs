//! Every `order_processor_*` series the alerts and the dashboard query is one
//! the real daemon exposes, with the labels (and label values) they match
//! on: a renamed metric or label fails here, not silently in production.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use uuid::Uuid;

use crate::common::TestEnv;
use crate::common::broker::Broker;
use crate::common::daemon::{Daemon, PaymentSim};
use crate::common::order_json;
use crate::deploy_manifests::monitoring::queries;
use crate::deploy_manifests::promql::selectors;
use crate::deploy_manifests::yaml::assert_clean;

/// Labels Prometheus attaches to every scraped series (target labels), not
/// the daemon.
const TARGET_LABELS: &[&str] = &[
    "job",
    "namespace",
    "pod",
    "instance",
    "service",
    "endpoint",
    "container",
];

/// Series name -> label -> values seen.
type Scrape = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// What a Prometheus/OpenMetrics text exposes.
fn exposed(text: &str) -> Scrape {
    let mut out = Scrape::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_owned()).or_default();
        if let Some(rest) = line[name_end..].strip_prefix('{') {
            let body = &rest[..rest.find('}').unwrap_or(rest.len())];
            for pair in body.split(',').filter(|p| !p.is_empty()) {
                let (label, value) = pair.split_once('=').unwrap();
                labels
                    .entry(label.to_owned())
                    .or_default()
                    .insert(value.trim_matches('"').to_owned());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_the_alerts_and_the_dashboard_query_is_exposed_by_the_daemon() {
    let env = TestEnv::new().await;
    let sim = PaymentSim::start(&[]);
    let daemon = Daemon::start(&env, &sim.url, &[]).await;
    let broker = Broker::connect().await;
    // Acked, dead-lettered (declined) and retried (provider failing)
    // deliveries, so that every outcome the queries name has its series.
    for token in ["tok_visa", "tok_visa", "tok_decline", "tok_fail"] {
        broker
            .publish(
                &env.exchange,
                &env.routing_key,
                &order_json(Uuid::new_v4(), token),
                Broker::properties(None),
            )
            .await;
    }
    broker.close().await;
    let outcomes = |scrape: &Scrape| {
        scrape
            .get("order_processor_deliveries_total")
            .and_then(|labels| labels.get("outcome"))
            .cloned()
            .unwrap_or_default()
    };
    env.eventually(
        Duration::from_secs(30),
        "acked, dead-lettered and retried deliveries",
        || async {
            let seen = outcomes(&exposed(&daemon.metrics().await));
            ["acked", "dead_lettered", "retried"]
                .iter()
                .all(|o| seen.contains(*o))
        },
    )
    .await;
    let scrape = exposed(&daemon.metrics().await);

    let mut errors = Vec::new();
    let mut checked = 0_usize;
    for (origin, expr) in queries() {
        let found = selectors(&expr).unwrap_or_else(|e| panic!("{origin}: {e}"));
        for s in found
            .iter()
            .filter(|s| s.metric.starts_with("order_processor_"))
        {
            checked = checked.saturating_add(1);
            let Some(labels) = scrape.get(&s.metric) else {
                errors.push(format!(
                    "{origin}: {} is not exposed by the daemon (a histogram is queried as _bucket, _sum or _count)",
                    s.metric
                ));
                continue;
            };
            for label in s.labels().filter(|l| !TARGET_LABELS.contains(l)) {
                if !labels.contains_key(label) {
                    errors.push(format!("{origin}: {} has no label {label}", s.metric));
                }
            }
            for (label, value) in s
                .equal
                .iter()
                .filter(|(l, _)| !TARGET_LABELS.contains(&l.as_str()))
            {
                if labels
                    .get(label)
                    .is_some_and(|values| !values.contains(value))
                {
                    errors.push(format!(
                        "{origin}: {}{{{label}=\"{value}\"}} matches nothing the daemon exposes ({:?})",
                        s.metric, labels[label]
                    ));
                }
            }
        }
    }
    assert!(checked > 0, "no order_processor_* series in the queries");
    assert_clean(
        "the daemon's /metrics against the alerts and the dashboard",
        &errors,
    );
}

#[test]
fn exposition_lines_are_read_into_names_labels_and_values() {
    let text = "# HELP a x\n# TYPE a counter\na_total{outcome=\"acked\",error_kind=\"none\"} 1\n\
                a_total{outcome=\"retried\",error_kind=\"payment\"} 2\nb 0\n# EOF\n";
    let seen = exposed(text);
    assert_eq!(seen["a_total"]["outcome"].len(), 2);
    assert!(seen["a_total"]["error_kind"].contains("payment"));
    assert!(seen["b"].is_empty());
}
