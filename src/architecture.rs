//! The dependency rule, checked by the build: `domain` names no other
//! module of the crate; `domain` and the use case name no adapter, no telemetry and no infrastructure crate, and
//! telemetry names no other module of the crate (see the layers in the
//! crate's docs). A test reads their sources, so that an import that
//! breaks the rule fails `cargo test`, not a review.

use std::path::{Path, PathBuf};

/// What the domain and the use case must not name in a `use` or a path.
const FORBIDDEN: &[&str] = &[
    "crate::adapters",
    "crate::telemetry",
    "opentelemetry",
    "tracing_opentelemetry",
    "lapin",
    "sqlx",
    "reqwest",
    "axum",
    "hyper",
];

/// Every forbidden name `source` uses as a path (`name::…`) or imports
/// (`use name`), with its line number. Comment lines are not code.
fn violations(source: &str) -> Vec<(usize, &'static str)> {
    let mut found = Vec::new();
    for (number, line) in source.lines().enumerate() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        for name in FORBIDDEN {
            if names_path(line, name) {
                found.push((number.saturating_add(1), *name));
            }
        }
    }
    found
}

/// Whether `name` starts a path in `line`: not inside a longer identifier,
/// and followed by `::`, or imported whole (`use name;`, `use name as …`).
fn names_path(line: &str, name: &str) -> bool {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    line.match_indices(name).any(|(at, _)| {
        let before = line.get(..at).and_then(|b| b.chars().next_back());
        let rest = line.get(at.saturating_add(name.len())..).unwrap_or("");
        let starts_word = before.is_none_or(|c| !is_ident(c));
        let continues_path = rest.starts_with("::") || rest.starts_with(" ::");
        let imported_whole = line.trim_start().starts_with("use ")
            && !rest.starts_with(|c: char| is_ident(c) || c == ':');
        starts_word && (continues_path || imported_whole)
    })
}

/// The modules of the crate that `source` names (`crate::name`), other
/// than `own`, with their line numbers.
fn other_modules<'a>(source: &'a str, own: &str) -> Vec<(usize, &'a str)> {
    let mut found = Vec::new();
    for (number, line) in source.lines().enumerate() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        for (at, _) in line.match_indices("crate::") {
            let rest = line.get(at.saturating_add("crate::".len())..).unwrap_or("");
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let module = rest.get(..end).unwrap_or("");
            if module != own {
                found.push((number.saturating_add(1), module));
            }
        }
    }
    found
}

fn rust_files(path: &Path, into: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let entries = std::fs::read_dir(path).map(|dir| dir.flatten().map(|e| e.path()));
        for entry in entries.into_iter().flatten() {
            rust_files(&entry, into);
        }
    } else if path.extension().is_some_and(|ext| ext == "rs") {
        into.push(path.to_owned());
    }
}

#[cfg(test)]
#[allow(clippy::panic, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_domain_and_the_use_case_import_no_adapter_telemetry_or_infrastructure() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![src.join("usecase.rs")];
        rust_files(&src.join("domain"), &mut files);
        assert!(files.len() > 2, "the domain's files are found: {files:?}");
        let mut broken = Vec::new();
        for file in &files {
            let source = std::fs::read_to_string(file).unwrap();
            for (line, name) in violations(&source) {
                broken.push(format!("{}:{line} names {name}", file.display()));
            }
            if file.starts_with(src.join("domain")) {
                for (line, module) in other_modules(&source, "domain") {
                    broken.push(format!("{}:{line} names crate::{module}", file.display()));
                }
            }
        }
        assert!(broken.is_empty(), "{}", broken.join("\n"));
    }

    #[test]
    fn telemetry_depends_on_no_other_module_of_the_crate() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![src.join("telemetry.rs")];
        rust_files(&src.join("telemetry"), &mut files);
        let mut broken = Vec::new();
        for file in &files {
            let source = std::fs::read_to_string(file).unwrap();
            for (line, module) in other_modules(&source, "telemetry") {
                broken.push(format!("{}:{line} names crate::{module}", file.display()));
            }
        }
        assert!(broken.is_empty(), "{}", broken.join("\n"));
        assert_eq!(
            other_modules("use crate::config::ConfigError;", "telemetry"),
            [(1, "config")]
        );
    }

    #[test]
    fn the_check_sees_imports_and_paths_but_not_prose() {
        let found = |source: &str| -> Vec<&str> {
            violations(source)
                .into_iter()
                .map(|(_, name)| name)
                .collect()
        };
        assert_eq!(found("use opentelemetry::KeyValue;"), ["opentelemetry"]);
        assert_eq!(found("use crate::telemetry;"), ["crate::telemetry"]);
        assert_eq!(found("    let x = lapin::Channel::new();"), ["lapin"]);
        assert_eq!(found("use sqlx;"), ["sqlx"]);
        assert_eq!(
            found("use {crate::adapters::amqp, std::fmt};"),
            ["crate::adapters"]
        );
        assert_eq!(
            found("use tracing_opentelemetry::OpenTelemetrySpanExt;"),
            ["tracing_opentelemetry"]
        );
        assert!(found("//! knows nothing of lapin::Channel or sqlx").is_empty());
        assert!(found("let hyperlink = my_axum_thing::f();").is_empty());
        assert!(found("let reqwests = 1;").is_empty());
    }
}
