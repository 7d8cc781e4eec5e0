//! The kustomizations: what they reference, and the raw files they apply.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde_norway::Value;

use crate::deploy_manifests::DEV_ROOT;
use crate::deploy_manifests::credentials::{check_credential, looks_secret_key};
use crate::deploy_manifests::invariants::check_pool;
use crate::deploy_manifests::yaml::{
    Doc, assert_clean, k8s_dir, parse_yaml, read, rel, seq_at, str_at, yaml_files,
};

fn is_kustomization_file(path: &Path) -> bool {
    matches!(
        path.file_name().and_then(OsStr::to_str),
        Some("kustomization.yaml" | "kustomization.yml" | "Kustomization")
    )
}

fn kustomization_in(dir: &Path) -> Option<PathBuf> {
    ["kustomization.yaml", "kustomization.yml", "Kustomization"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
}

/// What one kustomization refers to, resolved against its directory.
#[derive(Default)]
struct Refs {
    resources: Vec<PathBuf>,
    components: Vec<PathBuf>,
    patches: Vec<PathBuf>,
    generator_files: Vec<PathBuf>,
    /// `(generator kind, KEY, value)` of configMapGenerator/secretGenerator literals.
    literals: Vec<(String, String, String)>,
}

fn kustomization_refs(file: &Path, k: &Value) -> Refs {
    let dir = file.parent().unwrap();
    let mut refs = Refs::default();
    let list = |key: &str| -> Vec<PathBuf> {
        seq_at(k, &[key])
            .iter()
            .filter_map(Value::as_str)
            .map(|s| dir.join(s))
            .collect()
    };
    refs.resources = list("resources");
    refs.components = list("components");
    refs.patches = list("patchesStrategicMerge");
    refs.patches.extend(
        seq_at(k, &["patches"])
            .iter()
            .filter_map(|p| str_at(p, &["path"]))
            .map(|s| dir.join(s)),
    );
    for generator in ["configMapGenerator", "secretGenerator"] {
        for g in seq_at(k, &[generator]) {
            for f in seq_at(g, &["files"]).iter().filter_map(Value::as_str) {
                // "key=path" or "path"
                let path = f.split_once('=').map_or(f, |(_, p)| p);
                refs.generator_files.push(dir.join(path));
            }
            for e in seq_at(g, &["envs"]).iter().filter_map(Value::as_str) {
                refs.generator_files.push(dir.join(e));
            }
            if let Some(e) = str_at(g, &["env"]) {
                refs.generator_files.push(dir.join(e));
            }
            for lit in seq_at(g, &["literals"]).iter().filter_map(Value::as_str) {
                let (key, val) = lit.split_once('=').unwrap_or((lit, ""));
                refs.literals
                    .push((generator.to_owned(), key.to_owned(), val.to_owned()));
            }
        }
    }
    refs
}

pub fn kustomizations() -> Vec<(PathBuf, Value)> {
    let files: Vec<PathBuf> = yaml_files(&k8s_dir())
        .into_iter()
        .filter(|p| is_kustomization_file(p))
        .collect();
    assert!(
        !files.is_empty(),
        "no kustomization.yaml under {}",
        k8s_dir().display()
    );
    files
        .into_iter()
        .map(|f| {
            let docs = parse_yaml(&read(&f), &rel(&f));
            assert_eq!(docs.len(), 1, "{}: expected one document", rel(&f));
            (f, docs.into_iter().next().unwrap())
        })
        .collect()
}

fn in_dev(path: &Path) -> bool {
    path.starts_with(k8s_dir().join(DEV_ROOT))
}

#[test]
fn kustomizations_reference_existing_files_and_nothing_is_orphaned() {
    let mut errors = Vec::new();
    let mut referenced = BTreeSet::new();
    for (file, k) in kustomizations() {
        let here = rel(&file);
        let kind = str_at(&k, &["kind"]).unwrap_or("");
        if !str_at(&k, &["apiVersion"]).is_some_and(|v| v.starts_with("kustomize.config.k8s.io/"))
            || !matches!(kind, "Kustomization" | "Component")
        {
            errors.push(format!(
                "{here}: not a kustomize.config.k8s.io Kustomization/Component"
            ));
        }
        let refs = kustomization_refs(&file, &k);
        if refs.resources.is_empty() && kind == "Kustomization" {
            errors.push(format!("{here}: no resources"));
        }
        for (what, paths) in [
            ("resource", &refs.resources),
            ("component", &refs.components),
        ] {
            for p in paths {
                let shown = p
                    .strip_prefix(file.parent().unwrap())
                    .unwrap_or(p)
                    .display();
                if p.to_string_lossy().contains("://") {
                    errors.push(format!(
                        "{here}: remote {what} {shown} (keep everything in the repository)"
                    ));
                } else if p.is_dir() {
                    match kustomization_in(p) {
                        None => errors.push(format!(
                            "{here}: {what} {shown} is a directory without a kustomization.yaml"
                        )),
                        Some(kf) => {
                            let sub = parse_yaml(&read(&kf), &rel(&kf));
                            let sub_kind = sub.first().and_then(|v| str_at(v, &["kind"]));
                            let want = if what == "component" {
                                "Component"
                            } else {
                                "Kustomization"
                            };
                            if sub_kind != Some(want) {
                                errors.push(format!(
                                    "{here}: {what} {shown} is a {sub_kind:?}, expected {want}"
                                ));
                            }
                        }
                    }
                } else if p.is_file() && what == "resource" {
                    referenced.insert(p.canonicalize().unwrap());
                } else {
                    errors.push(format!("{here}: {what} {shown} does not exist"));
                }
            }
        }
        for p in refs.patches.iter().chain(&refs.generator_files) {
            if p.is_file() {
                referenced.insert(p.canonicalize().unwrap());
            } else {
                errors.push(format!(
                    "{here}: referenced file {} does not exist",
                    p.display()
                ));
            }
        }
    }
    let example = k8s_dir().join("base/secret.example.yaml");
    if !example.is_file() {
        errors.push("deploy/k8s/base/secret.example.yaml is missing".to_owned());
    }
    for file in yaml_files(&k8s_dir()) {
        if is_kustomization_file(&file) {
            continue;
        }
        let used = referenced.contains(&file.canonicalize().unwrap());
        if file == example && used {
            errors.push(format!(
                "{} must stay documentation: no kustomization may apply it",
                rel(&file)
            ));
        } else if file != example && !used {
            errors.push(format!(
                "{} is not referenced by any kustomization",
                rel(&file)
            ));
        }
    }
    assert_clean("kustomizations", &errors);
}

/// The documents of every file a kustomization lists as a resource, plus the
/// Secret example: what `kubectl apply -k` starts from, before patches.
fn raw_docs() -> Vec<Doc> {
    let mut files = BTreeSet::new();
    for (file, k) in kustomizations() {
        for p in kustomization_refs(&file, &k).resources {
            if p.is_file() {
                files.insert(p.canonicalize().unwrap());
            }
        }
    }
    files.insert(k8s_dir().join("base/secret.example.yaml"));
    files
        .into_iter()
        .flat_map(|f| {
            let origin = rel(&f);
            parse_yaml(&read(&f), &origin)
                .into_iter()
                .map(move |value| Doc {
                    origin: origin.clone(),
                    dev: in_dev(&f),
                    value,
                })
        })
        .collect()
}

#[test]
fn raw_manifests_hold_invariants() {
    let docs = raw_docs();
    let mut errors = check_pool(&docs, false);
    for (file, k) in kustomizations() {
        for (generator, key, val) in kustomization_refs(&file, &k).literals {
            let origin = format!("{} {generator}", rel(&file));
            if generator == "configMapGenerator" && looks_secret_key(&key) {
                errors.push(format!("{origin}: {key} belongs in a Secret"));
            }
            check_credential(&origin, &key, &val, in_dev(&file), &mut errors);
        }
    }
    assert_clean("deploy/k8s (raw files)", &errors);
}
