//! The external tools, and each kustomize root rendered and validated
//! against the Kubernetes schemas and, for custom resources, their CRDs'.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::ServicesHold;
use crate::deploy_manifests::crd::validate_custom_resources;
use crate::deploy_manifests::invariants::{check_pool, of_kind};
use crate::deploy_manifests::kustomize::kustomizations;
use crate::deploy_manifests::monitoring::check_monitoring;
use crate::deploy_manifests::security::check_namespaces;
use crate::deploy_manifests::yaml::{Doc, assert_clean, k8s_dir, parse_yaml, rel, seq_at, str_at};
use crate::deploy_manifests::{CRD_GROUPS, DEV_ROOT, INSTALL, K8S_VERSIONS, ROOTS, SECRET};

/// A tool named by an environment variable.
pub fn env_tool(env_var: &str) -> Option<PathBuf> {
    std::env::var_os(env_var)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// A tool on `PATH`.
pub fn path_tool(exe: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(exe))
        .find(|p| p.is_file())
}

fn find_tool(env_var: &str, exe: &str) -> Option<PathBuf> {
    env_tool(env_var).or_else(|| path_tool(exe))
}

pub fn missing_tool(what: &str, exe: &str, env_var: &str) -> ! {
    panic!(
        "{what} is required but `{exe}` is not on PATH (or set ${env_var} to its path).\n\
         Install the deploy validators (all from PyPI, offline afterwards) with:\n    {INSTALL}\n\
         (inside a virtualenv, put its bin/ on PATH before running cargo test)"
    )
}

pub fn require_tool(what: &str, exe: &str, env_var: &str) -> PathBuf {
    find_tool(env_var, exe).unwrap_or_else(|| missing_tool(what, exe, env_var))
}

/// Runs one validator. It holds the services' lock shared while it runs: a
/// test that wants the machine to itself does not share the CPU with it.
pub fn run(cmd: &mut Command) -> Output {
    let _machine = ServicesHold::shared_blocking();
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e}\nInstall the validators with:\n    {INSTALL}")
    })
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `kustomize build` of one root, through `$KUSTOMIZE` or `kubectl kustomize`.
fn render(root: &str) -> String {
    let dir = k8s_dir().join(root);
    let output = if let Some(kustomize) = env_tool("KUSTOMIZE") {
        run(Command::new(kustomize).arg("build").arg(&dir))
    } else {
        let kubectl = require_tool("kubectl (for `kubectl kustomize`)", "kubectl", "KUBECTL");
        run(Command::new(kubectl).arg("kustomize").arg(&dir))
    };
    assert!(
        output.status.success(),
        "rendering deploy/k8s/{root} failed (kustomize v5+ is needed, e.g. kubectl >= 1.27):\n{}\nInstall with:\n    {INSTALL}",
        text(&output.stderr)
    );
    text(&output.stdout)
}

fn api_group(doc: &Doc) -> &str {
    str_at(&doc.value, &["apiVersion"])
        .and_then(|v| v.rsplit_once('/'))
        .map_or("", |(group, _)| group)
}

/// Renders one kustomize root, checks the invariants on the result and
/// validates its built-in objects against the Kubernetes schemas.
fn check_rendered(root: &str) {
    let origin = format!("render of deploy/k8s/{root}");
    let docs: Vec<Doc> = parse_yaml(&render(root), &origin)
        .into_iter()
        .map(|value| Doc {
            origin: origin.clone(),
            dev: root == DEV_ROOT,
            value,
        })
        .collect();
    let mut errors = check_pool(&docs, true);

    if root != DEV_ROOT
        && let Some(secret) = of_kind(&docs, "Secret").next()
    {
        errors.push(format!(
            "{}: only the dev overlay may generate a Secret; {SECRET} is created out of band",
            secret.id()
        ));
    }
    let (root_file, k) = kustomizations()
        .into_iter()
        .find(|(f, _)| f.parent() == Some(k8s_dir().join(root).as_path()))
        .unwrap_or_else(|| panic!("no kustomization in deploy/k8s/{root}"));
    if let Some(ns) = str_at(&k, &["namespace"]) {
        for doc in docs.iter().filter(|d| d.kind() != "Namespace") {
            if str_at(&doc.value, &["metadata", "namespace"]) != Some(ns) {
                errors.push(format!(
                    "{}: not in namespace {ns} ({})",
                    doc.id(),
                    rel(&root_file)
                ));
            }
        }
    }

    errors.extend(check_monitoring(&docs));
    errors.extend(check_namespaces(&docs, str_at(&k, &["namespace"])));

    let (custom, builtin): (Vec<&Doc>, Vec<&Doc>) = docs
        .iter()
        .partition(|d| CRD_GROUPS.contains(&api_group(d)));
    errors.extend(validate_custom_resources(&root.replace('/', "-"), &custom));
    errors.extend(validate_schemas(root, &builtin));
    assert_clean(&origin, &errors);
}

/// Runs `kubernetes-validate --strict` on the documents, for every version in
/// [`K8S_VERSIONS`]; unknown kinds (no schema) count as failures. The input is
/// kept in `CARGO_TARGET_TMPDIR` for inspection.
fn validate_schemas(root: &str, docs: &[&Doc]) -> Vec<String> {
    let validator = require_tool(
        "kubernetes-validate (Kubernetes JSON-schema validation)",
        "kubernetes-validate",
        "KUBERNETES_VALIDATE",
    );
    let mut input = String::new();
    for doc in docs {
        input.push_str("---\n");
        input.push_str(&serde_norway::to_string(&doc.value).unwrap());
    }
    // Not stdin: the validator reads its input once per --kubernetes-version.
    let file = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("rendered-{}.yaml", root.replace('/', "-")));
    std::fs::write(&file, input).unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
    let mut cmd = Command::new(&validator);
    cmd.arg("--strict");
    for version in K8S_VERSIONS {
        cmd.args(["--kubernetes-version", version]);
    }
    let output = run(cmd.arg(&file));
    let stdout = text(&output.stdout);
    let passed = stdout
        .lines()
        .filter(|l| l.starts_with("INFO") && l.contains(" passed "))
        .count();
    let expected = docs.len().checked_mul(K8S_VERSIONS.len()).unwrap();
    let mut errors: Vec<String> = stdout
        .lines()
        .filter(|l| !l.starts_with("INFO"))
        .map(|l| format!("kubernetes-validate: {l}"))
        .collect();
    if !output.status.success() || passed != expected || expected == 0 {
        errors.push(format!(
            "kubernetes-validate ({}) exited {:?}; {passed} of {expected} document validations passed\n{}{}",
            validator.display(),
            output.status.code(),
            stdout,
            text(&output.stderr)
        ));
    }
    errors
}

#[test]
fn rendered_base_is_valid() {
    check_rendered("base");
}

#[test]
fn rendered_dev_overlay_is_valid() {
    check_rendered("overlays/dev");
}

#[test]
fn rendered_prod_overlay_is_valid() {
    check_rendered("overlays/prod");
}

#[test]
fn every_kustomize_root_is_rendered_by_a_test() {
    let roots: BTreeSet<String> = kustomizations()
        .into_iter()
        .filter(|(_, k)| str_at(k, &["kind"]) != Some("Component"))
        .map(|(f, _)| {
            f.parent()
                .unwrap()
                .strip_prefix(k8s_dir())
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    let tested: BTreeSet<String> = ROOTS.iter().map(|r| (*r).to_owned()).collect();
    assert_eq!(
        roots, tested,
        "update ROOTS and add a rendered_* test for new roots"
    );
}

/// A component is only validated inside a rendering: each must be used by
/// one of the roots rendered above.
#[test]
fn every_component_is_rendered_by_a_tested_root() {
    let mut used = BTreeSet::new();
    for (file, k) in kustomizations() {
        let dir = file.parent().unwrap();
        let root = dir.strip_prefix(k8s_dir()).unwrap().display().to_string();
        if ROOTS.contains(&root.as_str()) {
            for c in seq_at(&k, &["components"])
                .iter()
                .filter_map(|v| v.as_str())
            {
                used.insert(dir.join(c).canonicalize().unwrap());
            }
        }
    }
    let components: BTreeSet<PathBuf> = kustomizations()
        .into_iter()
        .filter(|(_, k)| str_at(k, &["kind"]) == Some("Component"))
        .map(|(f, _)| f.parent().unwrap().canonicalize().unwrap())
        .collect();
    let unused: Vec<_> = components.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "components no rendered root uses (add them to overlays/prod or another root): {unused:?}"
    );
}
