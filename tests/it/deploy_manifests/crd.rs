//! Custom resources (KEDA, Prometheus Operator) validated against the
//! schemas of their CustomResourceDefinitions, which `kubernetes-validate`
//! does not know: the strict JSON schemas in `schemas/` (see its README),
//! checked with `check-jsonschema`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::Value;

use crate::deploy_manifests::rendered::{require_tool, run, text};
use crate::deploy_manifests::yaml::{Doc, str_at};

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/deploy_manifests/schemas")
}

/// The schema file of a custom resource's apiVersion and kind.
fn schema_of(doc: &Doc) -> PathBuf {
    let api_version = str_at(&doc.value, &["apiVersion"]).unwrap_or("");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    schema_dir().join(format!(
        "{group}_{version}_{}.json",
        doc.kind().to_ascii_lowercase()
    ))
}

/// Validates every document against its CRD schema; one message per problem.
/// `tag` names the set, for the files kept in `CARGO_TARGET_TMPDIR`.
pub fn validate_custom_resources(tag: &str, docs: &[&Doc]) -> Vec<String> {
    let mut errors = Vec::new();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("crd-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut by_schema: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for (i, doc) in docs.iter().enumerate() {
        let schema = schema_of(doc);
        if !schema.is_file() {
            errors.push(format!(
                "{}: no schema {} for this custom resource (see tests/it/deploy_manifests/schemas/README.md)",
                doc.id(),
                schema.display()
            ));
            continue;
        }
        let file = dir.join(format!("{i}-{}-{}.json", doc.kind(), doc.name()));
        let json = serde_json::to_string_pretty(&to_json(&doc.value)).unwrap();
        std::fs::write(&file, json).unwrap();
        by_schema.entry(schema).or_default().push(file);
    }
    if by_schema.is_empty() {
        return errors;
    }
    let checker = require_tool(
        "check-jsonschema (validation of custom resources)",
        "check-jsonschema",
        "CHECK_JSONSCHEMA",
    );
    for (schema, files) in by_schema {
        let output = run(Command::new(&checker)
            .arg("--schemafile")
            .arg(&schema)
            .args(&files));
        let stdout = text(&output.stdout);
        if !output.status.success() || !stdout.contains("ok -- validation done") {
            errors.push(format!(
                "check-jsonschema against {}:\n{stdout}{}",
                schema.file_name().unwrap().to_string_lossy(),
                text(&output.stderr)
            ));
        }
    }
    errors
}

/// YAML as JSON, keeping what YAML calls a string a string.
fn to_json(value: &Value) -> serde_json::Value {
    serde_json::to_value(value).unwrap()
}

fn doc(yaml: &str) -> Doc {
    Doc {
        origin: "test".to_owned(),
        dev: false,
        value: serde_norway::from_str(yaml).unwrap(),
    }
}

/// The validation is strict: what the API server would drop or refuse fails.
#[test]
fn custom_resources_with_unknown_fields_or_wrong_types_are_refused() {
    let good = doc(
        "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {name: a}\n\
         spec:\n  scaleTargetRef: {name: d}\n  fallback: {failureThreshold: 3, replicas: 2}\n  \
         triggers:\n    - type: rabbitmq\n      metadata: {queueName: q, value: \"10\"}\n",
    );
    assert_eq!(
        validate_custom_resources("self-test-good", &[&good]),
        Vec::<String>::new()
    );
    for (what, bad) in [
        (
            "unknown field",
            "spec:\n  scaleTargetRef: {name: d}\n  minReplicas: 2\n  triggers: [{type: cpu, metadata: {value: \"1\"}}]\n",
        ),
        (
            "number where KEDA wants a string",
            "spec:\n  scaleTargetRef: {name: d}\n  triggers: [{type: cpu, metadata: {value: 70}}]\n",
        ),
        (
            "unknown fallback behaviour",
            "spec:\n  scaleTargetRef: {name: d}\n  fallback: {failureThreshold: 3, replicas: 2, behavior: sometimes}\n  triggers: [{type: cpu, metadata: {value: \"1\"}}]\n",
        ),
    ] {
        let bad = doc(&format!(
            "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {{name: a}}\n{bad}"
        ));
        assert_eq!(
            validate_custom_resources("self-test-bad", &[&bad]).len(),
            1,
            "{what} was accepted"
        );
    }
    let rule = doc(
        "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata: {name: r}\n\
         spec:\n  groups:\n    - name: g\n      rules:\n        - alert: A\n          expr: up == 0\n          for: 5 minutes\n",
    );
    assert_eq!(
        validate_custom_resources("self-test-rule", &[&rule]).len(),
        1,
        "a `for` that is no Prometheus duration was accepted"
    );
}
