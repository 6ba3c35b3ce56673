//! The deployment assets under `deploy/` fit this workspace: the Kubernetes manifests parse,
//! reference each other consistently and pass the Kubernetes 1.30 schemas; the Dockerfiles build
//! a workspace package and ship its binaries as a non-root user with the binary's own health
//! probe and no secrets; the systemd units are hardened and pass `systemd-analyze verify`.
//!
//! Two checks need outside tools: `TEST_K8S_VALIDATE` names a `kubernetes-validate` executable,
//! and `systemd-analyze` must be on the PATH. Without them those checks are skipped locally and
//! fail when `CI` is set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The files in `deploy/<dir>` whose names end with `suffix`, sorted.
fn deploy_files(dir: &str, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(repo_root().join("deploy").join(dir))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with(suffix))
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no *{suffix} in deploy/{dir}");
    found
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// A check whose tool is missing: skipped with a message locally, a failure when `CI` is set.
fn skip(reason: &str) {
    assert!(std::env::var_os("CI").is_none(), "{reason}, and CI is set: this check must run in CI");
    eprintln!("skipped: {reason} (this check is required when CI is set)");
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

/// Every document of every manifest, with its file name.
fn manifests() -> Vec<(String, Value)> {
    let mut documents = Vec::new();
    for path in deploy_files("k8s", ".yaml") {
        let (name, yaml) = (file_name(&path), read(&path));
        for document in serde_yaml::Deserializer::from_str(&yaml) {
            let value = Value::deserialize(document).unwrap_or_else(|e| panic!("{name}: {e}"));
            if !value.is_null() {
                documents.push((name.clone(), value));
            }
        }
    }
    documents
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("")
}

fn list(value: &Value) -> &[Value] {
    value.as_sequence().map(Vec::as_slice).unwrap_or_default()
}

/// A mapping of strings (labels, selectors), empty when absent.
fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_mapping()
        .into_iter()
        .flat_map(|mapping| mapping.iter())
        .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
        .collect()
}

/// Whether a non-empty selector matches these labels.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn find<'a>(documents: &'a [(String, Value)], kind: &str, name: &str) -> Option<&'a Value> {
    documents
        .iter()
        .map(|(_, doc)| doc)
        .find(|doc| text(&doc["kind"]) == kind && text(&doc["metadata"]["name"]) == name)
}

/// Whether a container runs one of our images (`…/outpost-agent:tag`).
fn runs(container: &Value, image: &str) -> bool {
    text(&container["image"]).rsplit('/').next().is_some_and(|last| last.starts_with(&format!("{image}:")))
}

fn has_secret(volume: &Value) -> bool {
    !volume["secret"].is_null()
        || list(&volume["projected"]["sources"]).iter().any(|s| !s["secret"].is_null())
}

/// The volume mounted at exactly `path` in this container.
fn volume_at<'a>(container: &Value, volumes: &'a [Value], path: &str) -> Option<&'a Value> {
    let mount = list(&container["volumeMounts"]).iter().find(|m| text(&m["mountPath"]) == path)?;
    volumes.iter().find(|v| v["name"] == mount["name"])
}

/// A top-level string key of a TOML text (`key = "value"`), before its first table.
fn toml_string(toml: &str, key: &str) -> Option<String> {
    toml.lines().map(str::trim).take_while(|line| !line.starts_with('[')).find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_start_matches('"').split('"').next().unwrap_or("").to_owned())
    })
}

/// The agent sidecar: probes on the V2 health endpoints at the port its config listens on, its
/// data directory on a volume, and the identity Secret where the agent looks for it
/// (`<data_dir>/identity`, agent/src/identity.rs).
fn check_agent(what: &str, container: &Value, volumes: &[Value], documents: &[(String, Value)]) {
    let mut probed = Vec::new();
    for (probe, path) in [("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(text(&get["path"]), path, "{what}: {probe} path");
        let port = list(&container["ports"])
            .iter()
            .find(|p| {
                p["containerPort"] == get["port"] || (p["name"].is_string() && p["name"] == get["port"])
            })
            .unwrap_or_else(|| panic!("{what}: the {probe} port is not a container port"));
        probed.push(port["containerPort"].as_u64());
    }
    let args: Vec<&str> = list(&container["args"]).iter().map(text).collect();
    let config = args
        .iter()
        .position(|a| *a == "--config")
        .and_then(|i| args.get(i + 1))
        .unwrap_or_else(|| panic!("{what}: no --config in args {args:?}"));
    let (dir, key) = config.rsplit_once('/').unwrap();
    let name = volume_at(container, volumes, dir).map(|v| text(&v["configMap"]["name"])).unwrap_or_default();
    let toml = find(documents, "ConfigMap", name)
        .map(|map| text(&map["data"][key]))
        .filter(|toml| !toml.is_empty())
        .unwrap_or_else(|| panic!("{what}: {config} does not come from a ConfigMap in these manifests"));
    let listen = toml_string(toml, "listen").unwrap_or_else(|| panic!("{what}: {config} sets no listen"));
    let port = listen.rsplit_once(':').and_then(|(_, port)| port.parse::<u64>().ok());
    assert!(probed.iter().all(|p| *p == port), "{what}: the probes' ports are not listen = {listen}");
    let data_dir =
        toml_string(toml, "data_dir").unwrap_or_else(|| panic!("{what}: {config} sets no data_dir"));
    let data =
        volume_at(container, volumes, &data_dir).unwrap_or_else(|| panic!("{what}: nothing at {data_dir}"));
    assert!(
        !data["emptyDir"].is_null() || !data["persistentVolumeClaim"].is_null(),
        "{what}: data_dir {data_dir} is neither an emptyDir nor a PersistentVolumeClaim"
    );
    let identity = format!("{data_dir}/identity");
    assert!(
        volume_at(container, volumes, &identity).is_some_and(has_secret),
        "{what}: no Secret mounted at {identity}"
    );
}

/// Checks a workload's pod template; returns whether it runs the agent.
fn check_pod(what: &str, workload: &Value, documents: &[(String, Value)]) -> bool {
    let spec = &workload["spec"]["template"]["spec"];
    let volumes = list(&spec["volumes"]);
    let claims: Vec<&str> = list(&workload["spec"]["volumeClaimTemplates"])
        .iter()
        .map(|c| text(&c["metadata"]["name"]))
        .collect();
    assert!(!list(&spec["containers"]).is_empty(), "{what}: no containers");
    let mut runs_agent = false;
    for container in list(&spec["containers"]).iter().chain(list(&spec["initContainers"])) {
        let what = format!("{what}, container {}", text(&container["name"]));
        for side in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                let value = &container["resources"][side][resource];
                assert!(!value.is_null(), "{what}: no resources.{side}.{resource}");
            }
        }
        let security = &container["securityContext"];
        assert_eq!(security["runAsNonRoot"].as_bool(), Some(true), "{what}: runAsNonRoot");
        assert_eq!(
            security["readOnlyRootFilesystem"].as_bool(),
            Some(true),
            "{what}: readOnlyRootFilesystem"
        );
        assert_eq!(
            security["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{what}: allowPrivilegeEscalation"
        );
        assert!(
            list(&security["capabilities"]["drop"]).iter().any(|c| text(c) == "ALL"),
            "{what}: capabilities are not all dropped"
        );
        for mount in list(&container["volumeMounts"]) {
            let name = text(&mount["name"]);
            let volume = volumes.iter().find(|v| text(&v["name"]) == name);
            assert!(volume.is_some() || claims.contains(&name), "{what}: mounts undeclared volume {name}");
            if volume.is_some_and(has_secret) {
                assert_eq!(
                    mount["readOnly"].as_bool(),
                    Some(true),
                    "{what}: Secret volume {name} is writable"
                );
            }
        }
        if runs(container, "outpost-agent") {
            check_agent(&what, container, volumes, documents);
            runs_agent = true;
        }
        if runs(container, "outpost-coordinator")
            && list(&container["args"]).first().map(text) == Some("serve")
        {
            assert_eq!(
                text(&container["livenessProbe"]["httpGet"]["path"]),
                "/healthz",
                "{what}: liveness path"
            );
            // Replicas on PostgreSQL (the store URL from a Secret) are ready only while it answers.
            let shared_store =
                list(&container["env"]).iter().any(|e| text(&e["name"]) == "OUTPOST_COORDINATOR_STORE__URL");
            let ready = if shared_store { "/readyz" } else { "/healthz" };
            assert_eq!(
                text(&container["readinessProbe"]["httpGet"]["path"]),
                ready,
                "{what}: readiness path"
            );
        }
    }
    for volume in volumes {
        let name = text(&volume["name"]);
        if has_secret(volume) {
            let mode =
                volume["secret"]["defaultMode"].as_i64().or(volume["projected"]["defaultMode"].as_i64());
            assert_eq!(mode, Some(0o400), "{what}: Secret volume {name} is not mode 0400 (256)");
        }
        let config_map = text(&volume["configMap"]["name"]);
        assert!(
            config_map.is_empty() || find(documents, "ConfigMap", config_map).is_some(),
            "{what}: volume {name} names ConfigMap {config_map}, which these manifests lack"
        );
    }
    runs_agent
}

struct Workload<'a> {
    kind: &'a str,
    name: &'a str,
    labels: BTreeMap<String, String>,
    agent: bool,
    doc: &'a Value,
}

#[test]
fn kubernetes_manifests_parse_and_carry_required_fields() {
    let documents = manifests();
    let mut workloads = Vec::new();
    for (file, doc) in &documents {
        let (kind, name) = (text(&doc["kind"]), text(&doc["metadata"]["name"]));
        let what = format!("{file}: {kind}/{name}");
        assert!(
            !text(&doc["apiVersion"]).is_empty() && !kind.is_empty() && !name.is_empty(),
            "{what}: apiVersion, kind and metadata.name are required"
        );
        let labels = string_map(&doc["metadata"]["labels"]);
        assert_eq!(
            labels.get("app.kubernetes.io/part-of").map(String::as_str),
            Some("outpost"),
            "{what}: part-of"
        );
        assert!(labels.contains_key("app.kubernetes.io/name"), "{what}: no app.kubernetes.io/name label");
        if matches!(kind, "Deployment" | "StatefulSet") {
            let labels = string_map(&doc["spec"]["template"]["metadata"]["labels"]);
            assert!(
                selects(&string_map(&doc["spec"]["selector"]["matchLabels"]), &labels),
                "{what}: spec.selector does not match the pod template's labels"
            );
            let agent = check_pod(&what, doc, &documents);
            workloads.push(Workload { kind, name, labels, agent, doc });
        }
    }
    assert!(workloads.iter().any(|w| w.agent), "no workload runs the agent");
    assert!(workloads.iter().any(|w| w.kind == "StatefulSet"), "no StatefulSet (the coordinator)");

    let selected = |selector: &Value| workloads.iter().any(|w| selects(&string_map(selector), &w.labels));
    for (file, doc) in &documents {
        let spec = &doc["spec"];
        let what = format!("{file}: {}/{}", text(&doc["kind"]), text(&doc["metadata"]["name"]));
        match text(&doc["kind"]) {
            "Service" => assert!(selected(&spec["selector"]), "{what}: selects no workload's pods"),
            "PodDisruptionBudget" => {
                assert!(selected(&spec["selector"]["matchLabels"]), "{what}: selects no workload's pods")
            }
            "NetworkPolicy" => {
                assert!(
                    selected(&spec["podSelector"]["matchLabels"]),
                    "{what}: applies to no workload's pods"
                );
                let peers = list(&spec["ingress"])
                    .iter()
                    .flat_map(|rule| list(&rule["from"]))
                    .chain(list(&spec["egress"]).iter().flat_map(|rule| list(&rule["to"])));
                for peer in peers.filter(|p| p["namespaceSelector"].is_null() && !p["podSelector"].is_null())
                {
                    assert!(
                        selected(&peer["podSelector"]["matchLabels"]),
                        "{what}: a peer selects no workload"
                    );
                }
            }
            "HorizontalPodAutoscaler" => {
                let target = &spec["scaleTargetRef"];
                let workload = workloads
                    .iter()
                    .find(|w| w.kind == text(&target["kind"]) && w.name == text(&target["name"]))
                    .unwrap_or_else(|| panic!("{what}: scaleTargetRef names no workload in these manifests"));
                assert!(
                    !workload.agent || matches!(spec["maxReplicas"].as_u64(), Some(0..=1)),
                    "{what}: scales {} beyond one pod, but its pods share one device identity",
                    workload.name
                );
            }
            "StatefulSet" => {
                let service = find(&documents, "Service", text(&spec["serviceName"]));
                assert!(
                    service.is_some_and(|s| text(&s["spec"]["clusterIP"]) == "None"),
                    "{what}: serviceName does not name a headless Service in these manifests"
                );
                assert!(!list(&spec["volumeClaimTemplates"]).is_empty(), "{what}: no volumeClaimTemplates");
            }
            _ => {}
        }
    }
    // One enrolled identity is one device: two pods with it would fight over one MQTT session.
    for workload in workloads.iter().filter(|w| w.agent && w.kind == "Deployment") {
        let spec = &workload.doc["spec"];
        assert!(
            matches!(spec["replicas"].as_u64(), None | Some(0..=1))
                && text(&spec["strategy"]["type"]) == "Recreate",
            "Deployment/{}: pods sharing one identity Secret must not overlap (replicas <= 1, Recreate)",
            workload.name
        );
    }
}

#[test]
fn kubernetes_manifests_pass_schema_validation() {
    let Some(validator) = std::env::var_os("TEST_K8S_VALIDATE") else {
        return skip("TEST_K8S_VALIDATE (the path of a kubernetes-validate executable) is not set");
    };
    let files = deploy_files("k8s", ".yaml");
    let out = Command::new(&validator)
        .args(["--strict", "--kubernetes-version", "1.30.0"])
        .args(&files)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", Path::new(&validator).display()));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kubernetes-validate failed:\n{stdout}{stderr}");
    // One "passed" line per document: a run that checked nothing does not count.
    let passed = stdout.lines().filter(|line| line.contains(" passed for resource ")).count();
    assert_eq!(passed, manifests().len(), "not every document was validated:\n{stdout}{stderr}");
}

// ---------------------------------------------------------------------------------------------
// Dockerfiles

/// A Dockerfile's instructions as (KEYWORD, arguments): comments and blank lines dropped,
/// `\` continuations joined.
fn instructions(dockerfile: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(part) = line.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let (keyword, args) = current.split_once(char::is_whitespace).unwrap_or((current.as_str(), ""));
        found.push((keyword.to_ascii_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    found
}

struct Stage {
    name: String,
    instructions: Vec<(String, String)>,
}

impl Stage {
    fn all<'a>(&'a self, keyword: &'a str) -> impl DoubleEndedIterator<Item = &'a str> + 'a {
        self.instructions.iter().filter(move |(k, _)| k == keyword).map(|(_, args)| args.as_str())
    }

    fn last<'a>(&'a self, keyword: &'a str) -> Option<&'a str> {
        self.all(keyword).next_back()
    }
}

fn stages(dockerfile: &str) -> Vec<Stage> {
    let mut stages: Vec<Stage> = Vec::new();
    for (keyword, args) in instructions(dockerfile) {
        if keyword == "FROM" {
            let words: Vec<&str> = args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
            let name = match words.as_slice() {
                [_, keyword, name] if keyword.eq_ignore_ascii_case("as") => (*name).to_owned(),
                _ => String::new(),
            };
            stages.push(Stage { name, instructions: Vec::new() });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push((keyword, args));
        }
    }
    stages
}

/// Words of `k="v w" k2=v2`, double quotes honoured and removed.
fn words(args: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted, mut started) = (Vec::new(), String::new(), false, false);
    for c in args.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
}

/// An instruction in exec form (a JSON array).
fn exec_form(what: &str, args: &str) -> Vec<String> {
    serde_json::from_str(args.trim()).unwrap_or_else(|e| panic!("{what}: `{args}` is not in exec form: {e}"))
}

/// A COPY: (`--from` stage, sources, destination).
fn copy(args: &str) -> (Option<String>, Vec<String>, String) {
    let from = args.split_whitespace().find_map(|w| w.strip_prefix("--from=")).map(str::to_owned);
    let mut paths: Vec<String> =
        args.split_whitespace().filter(|w| !w.starts_with("--")).map(str::to_owned).collect();
    let destination = paths.pop().unwrap_or_default();
    (from, paths, destination)
}

/// The workspace as `cargo metadata --no-deps` describes it.
fn workspace() -> serde_json::Value {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--no-deps", "--format-version", "1", "--manifest-path"])
        .arg(repo_root().join("Cargo.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn dockerfiles_copy_binaries_this_workspace_builds() {
    let metadata = workspace();
    let packages = metadata["packages"].as_array().unwrap();
    let root = PathBuf::from(metadata["workspace_root"].as_str().unwrap());
    let members: Vec<String> = packages
        .iter()
        .map(|p| {
            let manifest = Path::new(p["manifest_path"].as_str().unwrap());
            manifest.parent().unwrap().strip_prefix(&root).unwrap().to_string_lossy().into_owned()
        })
        .collect();
    let root_manifest = read(&repo_root().join("Cargo.toml"));

    let ignore: Vec<String> = read(&repo_root().join(".dockerignore"))
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let ignored = |path: &str| ignore.iter().any(|line| line.trim_matches('/') == path);
    assert!(ignored("target") && ignored(".git"), ".dockerignore must exclude target and .git");
    for extension in ["pem", "key", "pk8"] {
        assert!(
            ignore.iter().any(|line| line.ends_with(&format!("*.{extension}"))),
            ".dockerignore does not exclude *.{extension} key material"
        );
    }
    assert!(
        !ignore.iter().any(|line| line.starts_with('!')),
        ".dockerignore re-includes something: keep it a deny list"
    );

    for path in deploy_files("docker", ".Dockerfile") {
        let what = file_name(&path);
        let dockerfile = read(&path);
        let stages = stages(&dockerfile);
        let (runtime, earlier) = stages.split_last().unwrap();
        let builder = earlier
            .iter()
            .find(|s| s.all("RUN").any(|run| run.contains("cargo build")))
            .unwrap_or_else(|| panic!("{what}: no build stage runs `cargo build`"));
        assert!(!builder.name.is_empty(), "{what}: the build stage has no name");

        // cargo build --locked -p PACKAGE (--release | --profile NAME), up to the next `&&`
        let run = builder.all("RUN").find(|run| run.contains("cargo build")).unwrap();
        let run: Vec<&str> = run[run.find("cargo build").unwrap()..]
            .split("&&")
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        let after = |flag: &str| run.iter().position(|w| *w == flag).and_then(|i| run.get(i + 1)).copied();
        assert!(run.contains(&"--locked"), "{what}: cargo build without --locked");
        let package = after("-p").or_else(|| after("--package")).unwrap_or_else(|| panic!("{what}: no -p"));
        let profile =
            if run.contains(&"--release") { "release" } else { after("--profile").unwrap_or("dev") };
        assert!(
            matches!(profile, "release" | "dev") || root_manifest.contains(&format!("[profile.{profile}]")),
            "{what}: profile {profile} is not defined in Cargo.toml"
        );
        let output = format!("target/{}/", if profile == "dev" { "debug" } else { profile });
        let package = packages
            .iter()
            .find(|p| p["name"] == package)
            .unwrap_or_else(|| panic!("{what}: {package} is not a workspace package"));
        let bins: Vec<&str> = package["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
            .map(|t| t["name"].as_str().unwrap())
            .collect();

        // The build context: the workspace manifests and every member, none of them ignored.
        let sources: Vec<String> = builder.all("COPY").flat_map(|args| copy(args).1).collect();
        let needed =
            ["Cargo.toml".to_owned(), "Cargo.lock".to_owned()].into_iter().chain(members.iter().cloned());
        for needed in needed {
            assert!(
                sources.iter().any(|s| *s == needed || s == "."),
                "{what}: the build stage does not copy {needed}"
            );
            assert!(!ignored(&needed), ".dockerignore excludes {needed}, which the build needs");
        }

        // The runtime stage: binaries of that package, from the build stage's output.
        let workdir =
            builder.last("WORKDIR").unwrap_or_else(|| panic!("{what}: the build stage has no WORKDIR"));
        let built = format!("{}/{output}", workdir.trim_end_matches('/'));
        let mut installed = Vec::new();
        for (from, sources, destination) in runtime.all("COPY").map(copy) {
            for source in sources {
                let Some(bin) = source.strip_prefix(&built) else { continue };
                assert_eq!(
                    from.as_deref(),
                    Some(builder.name.as_str()),
                    "{what}: {source} is not from the build stage"
                );
                assert!(bins.contains(&bin), "{what}: copies {bin}, but {} builds {bins:?}", package["name"]);
                installed.push(if destination.ends_with('/') {
                    format!("{destination}{bin}")
                } else {
                    destination.clone()
                });
            }
        }
        assert!(!installed.is_empty(), "{what}: the final stage copies no binary from {built}");

        let user = runtime.last("USER").unwrap_or_else(|| panic!("{what}: the final stage sets no USER"));
        let account = user.split(':').next().unwrap_or("").trim();
        assert!(!matches!(account, "" | "root" | "0"), "{what}: runs as {user}");

        let entrypoint =
            exec_form(&what, runtime.last("ENTRYPOINT").unwrap_or_else(|| panic!("{what}: no ENTRYPOINT")));
        assert!(
            installed.contains(&entrypoint[0]),
            "{what}: ENTRYPOINT {entrypoint:?} is not a copied binary"
        );
        let health = runtime.last("HEALTHCHECK").unwrap_or_else(|| panic!("{what}: no HEALTHCHECK"));
        let (_, command) =
            health.split_once("CMD").unwrap_or_else(|| panic!("{what}: HEALTHCHECK has no CMD"));
        let argv = exec_form(&what, command);
        assert!(
            installed.contains(&argv[0]) && argv.get(1).map(String::as_str) == Some("probe"),
            "{what}: HEALTHCHECK {argv:?} does not run `<binary> probe`"
        );

        // Labels from build arguments of the final stage (an ARG before FROM is out of scope there).
        let labels: BTreeMap<String, String> = runtime
            .all("LABEL")
            .flat_map(words)
            .filter_map(|w| w.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect();
        let args: Vec<&str> = runtime.all("ARG").map(|a| a.split('=').next().unwrap_or("").trim()).collect();
        for key in ["version", "revision"] {
            let label = format!("org.opencontainers.image.{key}");
            let value = labels.get(&label).unwrap_or_else(|| panic!("{what}: no label {label}"));
            assert!(
                args.iter().any(|arg| *value == format!("${{{arg}}}") || *value == format!("${arg}")),
                "{what}: {label}={value} is not a build argument of the final stage ({args:?})"
            );
        }
        assert_eq!(
            labels.get("org.opencontainers.image.licenses").map(String::as_str),
            package["license"].as_str(),
            "{what}: the licenses label is not the workspace's license"
        );

        // Nothing secret is baked in through ENV or ARG.
        for (keyword, args) in instructions(&dockerfile).iter().filter(|(k, _)| k == "ENV" || k == "ARG") {
            let words = words(args);
            let names: Vec<&str> = if words.first().is_some_and(|w| w.contains('=')) || keyword == "ARG" {
                words.iter().map(|w| w.split('=').next().unwrap_or("")).collect()
            } else {
                words.first().map(String::as_str).into_iter().collect()
            };
            for name in names {
                let upper = name.to_ascii_uppercase();
                assert!(
                    !["KEY", "TOKEN", "SECRET", "PASSWORD"].iter().any(|word| upper.contains(word)),
                    "{what}: {keyword} {name} looks like a secret baked into the image"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// systemd

/// The values of `key=` lines in a unit file.
fn directive<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines().filter_map(|line| line.trim().strip_prefix(key)?.strip_prefix('=')).collect()
}

/// Settings every unit must carry exactly.
const HARDENING: &[(&str, &str)] = &[
    ("DynamicUser", "yes"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("NoNewPrivileges", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ("RestrictNamespaces", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("SystemCallArchitectures", "native"),
    ("SystemCallFilter", "@system-service"),
    ("CapabilityBoundingSet", ""),
    ("UMask", "0077"),
    ("Restart", "on-failure"),
];

/// Settings every unit must give some value.
const LIMITS: &[&str] = &["RestartSec", "TimeoutStopSec", "MemoryMax", "CPUQuota", "TasksMax", "LimitNOFILE"];

/// Each binary's environment variable for `data_dir` (the `ENV_PREFIX` of its config.rs).
const DATA_DIR_ENV: &[(&str, &str)] =
    &[("outpost-agent", "OUTPOST_DATA_DIR"), ("outpost-coordinator", "OUTPOST_COORDINATOR_DATA_DIR")];

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let units = deploy_files("systemd", ".service");
    for path in &units {
        let (what, unit) = (file_name(path), read(path));
        for (key, value) in HARDENING {
            assert!(directive(&unit, key).contains(value), "{what}: needs {key}={value}");
        }
        for key in LIMITS {
            assert!(directive(&unit, key).iter().any(|v| !v.is_empty()), "{what}: needs {key}=");
        }
        // The binary serves with a config, and its data directory is the unit's state directory.
        let exec = directive(&unit, "ExecStart");
        let words: Vec<&str> = exec.first().map(|e| e.split_whitespace().collect()).unwrap_or_default();
        let binary = words.first().map(|w| file_name(Path::new(w))).unwrap_or_default();
        assert!(words.contains(&"serve") && words.contains(&"--config"), "{what}: ExecStart {exec:?}");
        let (_, variable) = DATA_DIR_ENV
            .iter()
            .find(|(name, _)| *name == binary)
            .unwrap_or_else(|| panic!("{what}: ExecStart runs {binary}, which is not one of our servers"));
        let state = directive(&unit, "StateDirectory");
        assert_eq!(state.len(), 1, "{what}: one StateDirectory");
        let expected = format!("{variable}=/var/lib/{}", state[0]);
        assert!(
            directive(&unit, "Environment").contains(&expected.as_str()),
            "{what}: needs Environment={expected}"
        );
    }

    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        return skip("systemd-analyze is not installed");
    }
    let dir = tempfile::tempdir().unwrap();
    for path in &units {
        let (what, unit) = (file_name(path), read(path));
        // verify insists that ExecStart's binary exists: point it at the one this build made.
        let program = directive(&unit, "ExecStart")[0].split_whitespace().next().unwrap().to_owned();
        let built = outpost_tests::bin_dir().join(file_name(Path::new(&program)));
        assert!(built.is_file(), "{} missing: run `cargo test --workspace`", built.display());
        let copy = dir.path().join(&what);
        let unit = unit.replace(&format!("ExecStart={program} "), &format!("ExecStart={} ", built.display()));
        std::fs::write(&copy, unit).unwrap();
        let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&copy).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Unknown keys and bad values are only warnings (exit 0): any line about our unit fails.
        let problems: Vec<&str> = stderr.lines().filter(|line| line.contains(&what)).collect();
        assert!(out.status.success() && problems.is_empty(), "{what}: systemd-analyze verify:\n{stderr}");
    }
}
