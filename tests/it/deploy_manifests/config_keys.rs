//! Configuration overrides in the manifests name keys that exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_norway::Value;

use crate::deploy_manifests::compose::{compose, env_map};
use crate::deploy_manifests::yaml::{
    assert_clean, at, k8s_dir, keys, parse_yaml, read, rel, scalar, str_at, yaml_files,
};

/// `((section, key), value)` of `config/default.toml` (flat `[section]` +
/// `key = value`, values as written).
fn default_config() -> BTreeMap<(String, String), String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
    let mut section = String::new();
    let mut out = BTreeMap::new();
    for line in read(&path).lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_owned();
        } else if let Some((key, value)) = line.split_once('=')
            && !line.starts_with('#')
        {
            out.insert(
                (section.clone(), key.trim().to_owned()),
                value.trim().trim_matches('"').to_owned(),
            );
        }
    }
    out
}

fn default_config_keys() -> BTreeSet<(String, String)> {
    default_config().into_keys().collect()
}

/// The value of `section.key` in `config/default.toml`.
pub fn default_value(section: &str, key: &str) -> Option<String> {
    default_config().remove(&(section.to_owned(), key.to_owned()))
}

/// An `ORDER_PROCESSOR__SECTION__KEY` override that matches no key of
/// config/default.toml is silently ignored by the daemon: catch typos.
#[test]
fn config_overrides_name_existing_keys() {
    let known = default_config_keys();
    assert!(!known.is_empty(), "config/default.toml has no keys");
    let mut overrides: Vec<(String, String)> = Vec::new();
    for file in yaml_files(&k8s_dir()) {
        for doc in parse_yaml(&read(&file), &rel(&file)) {
            if str_at(&doc, &["kind"]) == Some("ConfigMap") {
                for key in keys(at(&doc, &["data"])) {
                    overrides.push((rel(&file), key));
                }
            }
        }
    }
    let compose = compose();
    for (name, service) in compose
        .get("services")
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
    {
        for key in env_map(service).into_keys() {
            overrides.push((
                format!("compose.yaml {}", scalar(name).unwrap_or_default()),
                key,
            ));
        }
    }
    let mut errors = Vec::new();
    let mut checked = 0_usize;
    for (origin, key) in overrides {
        if !key.starts_with("ORDER_PROCESSOR") || key == "ORDER_PROCESSOR_ENV" {
            continue;
        }
        checked = checked.saturating_add(1);
        let rest = key.strip_prefix("ORDER_PROCESSOR__").unwrap_or("");
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let found = match path.as_slice() {
            [section, key] => known.contains(&(section.clone(), key.clone())),
            _ => false,
        };
        if !found {
            errors.push(format!(
                "{origin}: {key} matches no [section] key in config/default.toml (the daemon would ignore it)"
            ));
        }
    }
    assert!(checked > 0, "no ORDER_PROCESSOR__ overrides found");
    assert_clean("configuration overrides", &errors);
}
