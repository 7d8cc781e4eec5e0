//! One YAML document and the helpers that read values out of it.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use serde_norway::Value;

/// One YAML document and where it came from.
pub struct Doc {
    pub origin: String,
    /// Belongs to the dev overlay, where well-known dev credentials are allowed.
    pub dev: bool,
    pub value: Value,
}

impl Doc {
    pub fn kind(&self) -> &str {
        str_at(&self.value, &["kind"]).unwrap_or("")
    }
    pub fn name(&self) -> &str {
        str_at(&self.value, &["metadata", "name"]).unwrap_or("")
    }
    pub fn id(&self) -> String {
        format!("{}: {}/{}", self.origin, self.kind(), self.name())
    }
    pub fn is(&self, kind: &str, name: &str) -> bool {
        self.kind() == kind && self.name() == name
    }
}

pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

pub fn k8s_dir() -> PathBuf {
    deploy_dir().join("k8s")
}

pub fn rel(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(path)
        .display()
        .to_string()
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every non-empty document of a (multi-document) YAML text, merge keys applied.
pub fn parse_yaml(text: &str, origin: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    for de in serde_norway::Deserializer::from_str(text) {
        let mut value =
            Value::deserialize(de).unwrap_or_else(|e| panic!("{origin}: invalid YAML: {e}"));
        value
            .apply_merge()
            .unwrap_or_else(|e| panic!("{origin}: bad YAML merge key: {e}"));
        if !value.is_null() {
            docs.push(value);
        }
    }
    docs
}

pub fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |cur, key| cur.get(*key))
}

pub fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path)?.as_str()
}

pub fn u64_at(value: &Value, path: &[&str]) -> Option<u64> {
    at(value, path)?.as_u64()
}

pub fn seq_at<'a>(value: &'a Value, path: &[&str]) -> &'a [Value] {
    at(value, path)
        .and_then(Value::as_sequence)
        .map_or(&[], Vec::as_slice)
}

/// A scalar as text (YAML numbers and booleans included).
pub fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A mapping of scalars (labels, selectors, ConfigMap data...).
pub fn string_map(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((scalar(k)?, scalar(v)?)))
                .collect()
        })
        .unwrap_or_default()
}

pub fn keys(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_mapping)
        .map(|m| m.keys().filter_map(scalar).collect())
        .unwrap_or_default()
}

pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).unwrap_or_else(|e| panic!("cannot list {}: {e}", d.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(OsStr::to_str),
                Some("yaml" | "yml")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

pub fn assert_clean(what: &str, errors: &[String]) {
    assert!(
        errors.is_empty(),
        "{what}: {} problem(s):\n  - {}",
        errors.len(),
        errors.join("\n  - ")
    );
}
