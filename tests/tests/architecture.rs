//! The architecture, checked: reads the source and fails on an import that crosses a wall.
//!
//! - The coordinator is built in floors, lowest first: `base`, `models`, `monitoring`, `fleet`,
//!   `ops`, `http`; above them the binary's wiring (`config`, `cli`, `ctl` — the operator's CLI — and `src/bin`). A file
//!   may import its own floor and the floors below, never one above (so `ops` never imports
//!   `http`, and `fleet`, `models`, `monitoring` never import `ops` or `http`), and no floor
//!   imports the wiring (except `http`, whose request state holds the whole `config`).
//! - Only `http` knows HTTP: `axum` and `tower` appear nowhere else in the coordinator's library.
//! - Only `http` names `AppState`: engines are built from narrow handles (in `http::server`, the
//!   composition root), and neither the wiring nor the binaries reach into the request state.
//! - Storage sits behind repositories: `sled` is named only in the files listed in
//!   [`REPOSITORIES`], whose methods speak in records; engines, handlers and the wiring never
//!   see a sled type, so a second backend changes those files and nothing above them. Likewise
//!   the PostgreSQL client only under `base/pg` and in repositories' `pg.rs` ([`POSTGRES`]).
//! - `shared` is at the bottom; `agent` and `coordinator` never import each other.
//! - The agent's modules import each other without circles (unit tests aside).
//!
//! Comments are not imports: only code lines are read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

const FLOORS: [&str; 6] = ["base", "models", "monitoring", "fleet", "ops", "http"];
const WIRING: [&str; 3] = ["config", "cli", "ctl"];

/// The coordinator's repositories: the only files (under `coordinator/src/`) that may name sled.
const REPOSITORIES: [&str; 22] = [
    "base/store.rs",
    "base/audit.rs",
    "models/registry/store.rs",
    "monitoring/slo.rs",
    "monitoring/slo/rollup.rs",
    "monitoring/slo/sled_backend.rs",
    "monitoring/quality.rs",
    "monitoring/quality/sled_backend.rs",
    "monitoring/follow.rs",
    "monitoring/report/history.rs",
    "monitoring/report/history/sled_backend.rs",
    "monitoring/dataset.rs",
    "monitoring/retention.rs",
    "fleet/devices/sled_backend.rs",
    "fleet/devices/retention.rs",
    "fleet/desired.rs",
    "fleet/roots.rs",
    "ops/rollout/persistence.rs",
    "ops/alerts/store.rs",
    "ops/retraining/store.rs",
    "http/auth.rs",
    "http/dashboard/sessions.rs",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate sits in the repo").to_path_buf()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Code lines of `source` with their numbers (line comments and doc comments dropped).
fn code_lines(source: &str) -> impl Iterator<Item = (usize, &str)> {
    source.lines().enumerate().filter_map(|(i, line)| {
        let code = line.split("//").next().unwrap_or("");
        (!code.trim().is_empty()).then_some((i + 1, code))
    })
}

/// The floor a coordinator source path (relative to `src/`) belongs to: its rank, or `None` for
/// the wiring above every floor.
fn floor_of(relative: &Path) -> Option<usize> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    FLOORS.iter().position(|f| *f == name)
}

/// The walls `source` (a coordinator file at `relative`) breaks, as `line: what` sentences.
/// The only places (under `coordinator/src/`) that may name the PostgreSQL client and its pool
/// (`tokio_postgres`, `postgres`, `r2d2`): the connection, schema and leases in `base/pg`, and
/// each repository's PostgreSQL side beside its sled one, and `migrate`, which copies every
/// repository's sled records into their tables.
const POSTGRES: [&str; 18] = [
    "base/audit/pg.rs",
    "base/pg.rs",
    "base/pg/",
    "cli/migrate",
    "fleet/desired/pg.rs",
    "fleet/devices/pg.rs",
    "fleet/roots/pg.rs",
    "http/auth/pg.rs",
    "http/dashboard/sessions/pg.rs",
    "models/registry/store/pg.rs",
    "monitoring/dataset/pg.rs",
    "monitoring/follow/pg.rs",
    "monitoring/quality/pg.rs",
    "monitoring/report/history/pg.rs",
    "monitoring/slo/pg.rs",
    "ops/alerts/store/pg.rs",
    "ops/rollout/persistence/pg.rs",
    "ops/retraining/store/pg.rs",
];

fn names_postgres(relative: &Path, code: &str) -> bool {
    let inside = POSTGRES.iter().any(|p| relative.to_string_lossy().starts_with(p));
    let names = ["tokio_postgres", "postgres::", "use postgres", "r2d2"].iter().any(|n| code.contains(n));
    !inside && names
}

fn coordinator_violations(relative: &Path, source: &str) -> Vec<String> {
    let Some(rank) = floor_of(relative) else {
        // The wiring and the binaries sit above every floor; they may import any of them but
        // hand the request state to nobody.
        let mut out = Vec::new();
        for (n, code) in code_lines(source) {
            if code.contains("AppState") {
                out.push(format!("{n}: the wiring names `AppState`; only `http` builds it"));
            }
            if code.contains("sled::") || code.contains("use sled") {
                out.push(format!("{n}: the wiring names sled outside a repository (see REPOSITORIES)"));
            }
            if names_postgres(relative, code) {
                out.push(format!(
                    "{n}: the wiring names the PostgreSQL client outside its places (see POSTGRES)"
                ));
            }
        }
        return out;
    };
    let me = FLOORS[rank];
    let repository = REPOSITORIES.iter().any(|r| relative == Path::new(r));
    let mut out = Vec::new();
    for (n, code) in code_lines(source) {
        if !repository && (code.contains("sled::") || code.contains("use sled")) {
            out.push(format!("{n}: `{me}` names sled outside a repository (see REPOSITORIES)"));
        }
        if names_postgres(relative, code) {
            out.push(format!("{n}: `{me}` names the PostgreSQL client outside its places (see POSTGRES)"));
        }
        for (higher, name) in FLOORS.iter().enumerate().skip(rank + 1) {
            if code.contains(&format!("crate::{name}::")) || code.contains(&format!("crate::{name};")) {
                out.push(format!("{n}: `{me}` imports `{name}`, a higher floor (floor {rank} → {higher})"));
            }
        }
        // `http` holds the whole configuration in its request state; it may read `config`.
        for wiring in WIRING.iter().filter(|w| !(me == "http" && **w == "config")) {
            if code.contains(&format!("crate::{wiring}::")) {
                out.push(format!("{n}: `{me}` imports the binary's wiring `{wiring}`"));
            }
        }
        if me != "http" {
            if code.contains("AppState") {
                out.push(format!("{n}: `{me}` names `AppState`; engines take narrow handles"));
            }
            for http_crate in ["axum", "tower"] {
                if code.contains(&format!("{http_crate}::")) {
                    out.push(format!("{n}: `{me}` uses `{http_crate}`; only `http` knows HTTP"));
                }
            }
        }
    }
    out
}

#[test]
fn coordinator_floors_import_only_downwards() {
    let src = repo().join("coordinator/src");
    let mut broken = Vec::new();
    let mut checked = 0;
    for path in rust_files(&src) {
        let relative = path.strip_prefix(&src).expect("under src");
        let source = std::fs::read_to_string(&path).expect("readable source");
        checked += usize::from(floor_of(relative).is_some());
        for v in coordinator_violations(relative, &source) {
            broken.push(format!("coordinator/src/{}:{v}", relative.display()));
        }
    }
    assert!(checked > 40, "only {checked} coordinator files sit in floors: has the layout moved?");
    assert!(broken.is_empty(), "imports that cross a floor wall:\n{}", broken.join("\n"));
}

#[test]
fn agent_and_coordinator_never_import_each_other_and_shared_neither() {
    let root = repo();
    let mut broken = Vec::new();
    for (krate, forbidden) in [
        ("agent", &["outpost_coordinator", "outpost-coordinator"][..]),
        ("coordinator", &["outpost_agent", "outpost-agent"][..]),
        ("shared", &["outpost_agent", "outpost-agent", "outpost_coordinator", "outpost-coordinator"][..]),
    ] {
        let manifest = std::fs::read_to_string(root.join(krate).join("Cargo.toml")).expect("a manifest");
        for name in forbidden.iter().filter(|n| n.contains('-')) {
            if manifest.lines().any(|l| l.trim_start().starts_with(name)) {
                broken.push(format!("{krate}/Cargo.toml depends on {name}"));
            }
        }
        for path in rust_files(&root.join(krate).join("src")) {
            let source = std::fs::read_to_string(&path).expect("readable source");
            for (n, code) in code_lines(&source) {
                for name in forbidden.iter().filter(|n| n.contains('_')) {
                    if code.contains(&format!("{name}::")) {
                        broken.push(format!("{}:{n}: uses {name}", path.display()));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "crate walls broken:\n{}", broken.join("\n"));
}

/// The top-level modules of the crate at `src` that each file's code names (`crate::x`, and the
/// items of `use crate::{x, y::z}`), as edges between top-level modules.
fn module_edges(src: &Path) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut edges: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for path in rust_files(src) {
        let relative = path.strip_prefix(src).expect("under src");
        let first = relative.components().next().and_then(|c| c.as_os_str().to_str()).unwrap_or("");
        let me = first.strip_suffix(".rs").unwrap_or(first).to_owned();
        if me == "lib" || me == "main" || me == "bin" {
            continue;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == "tests.rs" || name.ends_with("_tests.rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("readable source");
        // Unit tests (at the end of a file, by convention) may reach anywhere.
        let source = source.split("#[cfg(test)]").next().unwrap_or("");
        let code: String = code_lines(source).map(|(_, c)| format!("{c}\n")).collect();
        let mut named = Vec::new();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                named.extend(
                    inner.split(',').map(|item| item.trim().split("::").next().unwrap_or("").to_owned()),
                );
            } else {
                named.push(rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect());
            }
        }
        let targets = edges.entry(me.clone()).or_default();
        for n in named.into_iter().filter(|n| {
            !n.is_empty()
                && *n != me
                && n.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
        }) {
            targets.insert(n);
        }
    }
    edges
}

/// A cycle among `edges`, if there is one, as the modules along it.
fn find_cycle(
    edges: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = std::collections::BTreeSet::new();
    edges.keys().find_map(|start| visit(start, edges, &mut Vec::new(), &mut done))
}

#[test]
fn the_agents_modules_import_each_other_without_circles() {
    let edges = module_edges(&repo().join("agent/src"));
    assert!(edges.len() > 15, "only {} agent modules found", edges.len());
    if let Some(cycle) = find_cycle(&edges) {
        panic!("the agent's modules import each other in a circle: {}", cycle.join(" → "));
    }
}

#[test]
fn the_checker_finds_a_circle() {
    let mut edges: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    edges.entry("a".into()).or_default().insert("b".into());
    edges.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&edges), None);
    edges.entry("c".into()).or_default().insert("a".into());
    assert_eq!(find_cycle(&edges), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
}

#[test]
fn the_checker_catches_a_forbidden_import() {
    let ops = Path::new("ops/rollout.rs");
    assert_eq!(coordinator_violations(ops, "use crate::fleet::desired::Outgoing;\n"), Vec::<String>::new());
    let up = coordinator_violations(ops, "use crate::http::api::AppState;\n");
    assert_eq!(
        up,
        [
            "1: `ops` imports `http`, a higher floor (floor 4 → 5)",
            "1: `ops` names `AppState`; engines take narrow handles"
        ]
    );
    let fleet = Path::new("fleet/ingest.rs");
    assert_eq!(coordinator_violations(fleet, "x\nlet r = crate::ops::rollout::TICK;\n").len(), 1);
    assert_eq!(coordinator_violations(fleet, "use crate::config::Config;\n").len(), 1);
    assert_eq!(coordinator_violations(fleet, "use axum::Json;\n").len(), 1);
    // Comments and the wiring are not checked; `http` may use axum.
    assert!(coordinator_violations(fleet, "//! see [`crate::http::api`]\n").is_empty());
    assert!(coordinator_violations(Path::new("cli.rs"), "use crate::http::server::serve;\n").is_empty());
    assert!(
        coordinator_violations(Path::new("http/server.rs"), "use crate::http::api::AppState;\n").is_empty()
    );
    // Only `http` names the request state: not a lower floor, not the wiring.
    assert_eq!(coordinator_violations(Path::new("cli.rs"), "let s: AppState;\n").len(), 1);
    assert_eq!(coordinator_violations(Path::new("monitoring/slo.rs"), "fn f(s: &AppState) {}\n").len(), 1);
    assert!(coordinator_violations(Path::new("http/api.rs"), "use axum::Json;\n").is_empty());
    // sled only in a repository: an engine holding a tree is caught, the rollout store is not.
    assert_eq!(coordinator_violations(ops, "    tree: sled::Tree,\n").len(), 1);
    assert!(
        coordinator_violations(Path::new("ops/rollout/persistence.rs"), "    tree: sled::Tree,\n").is_empty()
    );
    // tokio_postgres only under base/pg: not in a repository, not in the wiring.
    let pg = "use tokio_postgres::Client;\n";
    assert_eq!(coordinator_violations(Path::new("ops/rollout/persistence.rs"), pg).len(), 1);
    assert_eq!(coordinator_violations(Path::new("config.rs"), pg).len(), 1);
    assert!(coordinator_violations(Path::new("base/pg/lease.rs"), pg).is_empty());
    assert!(coordinator_violations(Path::new("base/pg.rs"), pg).is_empty());
}
