//! `deploy/Dockerfile`: one image per binary, hadolint clean.

use std::process::Command;

use serde_norway::Value;

use crate::deploy_manifests::compose::compose;
use crate::deploy_manifests::rendered::{require_tool, run, text};
use crate::deploy_manifests::yaml::{assert_clean, deploy_dir, read, str_at};
use crate::deploy_manifests::{DAEMON, NONROOT_UID, OUR_IMAGES};

struct Stage {
    name: String,
    from: String,
    instructions: Vec<(String, String)>,
}

fn dockerfile_stages() -> Vec<Stage> {
    let path = deploy_dir().join("Dockerfile");
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in read(&path).lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') && current.is_empty() {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            if !current.trim().is_empty() {
                logical.push(current.trim().to_owned());
            }
            current.clear();
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (instr, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let instr = instr.to_ascii_uppercase();
        if instr == "FROM" {
            let words: Vec<&str> = args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let name = match words.as_slice() {
                [_, kw, name] if kw.eq_ignore_ascii_case("as") => (*name).to_owned(),
                _ => stages.len().to_string(),
            };
            stages.push(Stage {
                name,
                from: words.first().copied().unwrap_or("").to_owned(),
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push((instr, args.trim().to_owned()));
        }
    }
    stages
}

/// The executable a target's image runs: its ENTRYPOINT's first word, from
/// the target stage or the nearest ancestor that sets one.
pub fn entrypoint(target: &str) -> Option<String> {
    let stages = dockerfile_stages();
    let args = stage_chain(&stages, target).into_iter().find_map(|s| {
        s.instructions
            .iter()
            .rev()
            .find(|(i, _)| i == "ENTRYPOINT")
            .map(|(_, a)| a.clone())
    })?;
    let words: Vec<String> = serde_json::from_str(&args).ok()?;
    words.into_iter().next()
}

/// The stage and its ancestors (FROM another stage), nearest first.
fn stage_chain<'a>(stages: &'a [Stage], name: &str) -> Vec<&'a Stage> {
    let mut chain = Vec::new();
    let mut next = stages.iter().find(|s| s.name == name);
    while let Some(stage) = next {
        if chain.len() > stages.len() {
            break;
        }
        chain.push(stage);
        next = stages.iter().find(|s| s.name == stage.from);
    }
    chain
}

#[test]
fn dockerfile_builds_one_image_per_binary() {
    let stages = dockerfile_stages();
    let mut errors = Vec::new();
    if !stages
        .iter()
        .any(|s| s.from.starts_with("rust:1.95") && s.from.contains("bookworm"))
    {
        errors.push("no builder stage FROM rust:1.95-bookworm".to_owned());
    }
    let all: Vec<&(String, String)> = stages.iter().flat_map(|s| &s.instructions).collect();
    if !all.iter().any(|(i, a)| {
        i == "RUN" && a.contains("cargo build") && a.contains("--release") && a.contains("--locked")
    }) {
        errors.push("no `cargo build --release --locked`".to_owned());
    }
    if stages.last().map(|s| s.name.as_str()) != Some(DAEMON) {
        errors.push(format!("the last stage (default target) must be {DAEMON}"));
    }
    for binary in OUR_IMAGES {
        let chain = stage_chain(&stages, binary);
        if chain.is_empty() {
            errors.push(format!("no stage (target) named {binary}"));
            continue;
        }
        let base = chain.last().map(|s| s.from.as_str()).unwrap_or("");
        if !base.starts_with("gcr.io/distroless/cc-debian12:nonroot") {
            errors.push(format!(
                "{binary}: runtime must be gcr.io/distroless/cc-debian12:nonroot, found {base}"
            ));
        }
        // Nearest instruction of a kind wins (child stages override parents).
        let last = |kind: &str| {
            chain
                .iter()
                .find_map(|s| s.instructions.iter().rev().find(|(i, _)| i == kind))
                .map(|(_, a)| a.as_str())
        };
        if last("WORKDIR") != Some("/app") {
            errors.push(format!(
                "{binary}: WORKDIR must be /app (config/default.toml is read relative to it)"
            ));
        }
        let user = last("USER").unwrap_or("root");
        let uid = user.split(':').next().unwrap_or(user);
        if !(uid == "nonroot" || uid == NONROOT_UID.to_string()) {
            errors.push(format!(
                "{binary}: USER must be nonroot/{NONROOT_UID}, found {user}"
            ));
        }
        let copies: Vec<&str> = chain
            .iter()
            .flat_map(|s| &s.instructions)
            .filter(|(i, _)| i == "COPY")
            .map(|(_, a)| a.as_str())
            .collect();
        for (dir, dest) in [("config", "/app/config"), ("migrations", "/app/migrations")] {
            if !copies.iter().any(|a| a.contains(dir) && a.contains(dest)) {
                errors.push(format!("{binary}: must COPY {dir}/ to {dest}/"));
            }
        }
        if !copies
            .iter()
            .any(|a| a.contains("--from=") && a.contains(&format!("release/{binary}")))
        {
            errors.push(format!(
                "{binary}: must copy target/release/{binary} from the builder"
            ));
        }
        if !last("ENTRYPOINT").is_some_and(|e| e.contains(&format!("/{binary}\""))) {
            errors.push(format!("{binary}: ENTRYPOINT must run {binary}"));
        }
    }
    let ignore = read(&deploy_dir().join("Dockerfile.dockerignore"));
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if patterns.first() == Some(&"*") {
        for needed in [
            "!Cargo.toml",
            "!Cargo.lock",
            "!src/",
            "!config/",
            "!migrations/",
        ] {
            if !patterns.contains(&needed) {
                errors.push(format!("Dockerfile.dockerignore must re-include {needed}"));
            }
        }
    } else if !patterns.iter().any(|p| p.trim_end_matches('/') == "target") {
        errors.push("Dockerfile.dockerignore must exclude target/".to_owned());
    }
    // compose builds these targets
    let compose = compose();
    for service in compose
        .get("services")
        .and_then(Value::as_mapping)
        .map(|m| m.values().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        if let Some(target) = str_at(service, &["build", "target"])
            && !stages.iter().any(|s| s.name == target)
        {
            errors.push(format!(
                "compose.yaml builds target {target}, which the Dockerfile lacks"
            ));
        }
    }
    assert_clean("deploy/Dockerfile", &errors);
}

#[test]
fn dockerfile_passes_hadolint() {
    let hadolint = require_tool("hadolint (Dockerfile linter)", "hadolint", "HADOLINT");
    let output = run(Command::new(&hadolint)
        .arg("--no-color")
        .arg(deploy_dir().join("Dockerfile")));
    assert!(
        output.status.success(),
        "hadolint ({}) reports:\n{}{}",
        hadolint.display(),
        text(&output.stdout),
        text(&output.stderr)
    );
}
