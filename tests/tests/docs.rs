//! The documentation holds up: the README's first screen is short, every link in the README,
//! `ARCHITECTURE.md`, `docs/` and the deploy READMEs resolves (files and `#anchors`), and the
//! CLI reference (`docs/cli.md`) is the programs' own `--help`. A stale reference fails the
//! test; `UPDATE_DOCS=1 cargo test -p outpost-tests --test docs` writes it again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use outpost_tests::bin_dir;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Every file under `dirs` (recursively) whose name ends in `.ext`, sorted.
fn files_under(dirs: &[PathBuf], ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = dirs.to_vec();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == ext) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The Markdown pages whose links must resolve.
fn pages() -> Vec<PathBuf> {
    let root = repo();
    let mut out = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    out.extend(files_under(&[root.join("docs"), root.join("deploy")], "md"));
    out
}

/// The text of `markdown` outside fenced code blocks and inline code spans.
fn prose(markdown: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop `code spans`: a link inside one is text, not a link.
        let mut inside = false;
        for part in line.split('`') {
            if !inside {
                out.push_str(part);
            }
            inside = !inside;
        }
        out.push('\n');
    }
    out
}

/// `[text](target)` targets of a page's prose.
fn links(markdown: &str) -> Vec<String> {
    let text = prose(markdown);
    let mut out = Vec::new();
    for (i, _) in text.match_indices("](") {
        let rest = &text[i + 2..];
        if let Some(end) = rest.find(')') {
            let target = rest[..end].split_whitespace().next().unwrap_or("").to_owned();
            out.push(target);
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(markdown: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.push(slug(line.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn the_readme_fits_on_one_screen() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(lines <= 40, "README.md has {lines} lines; its first screen must hold it all (≤ 40)");
    for must in ["cargo run --release -- demo", "cargo test --workspace", "docs/"] {
        assert!(readme.contains(must), "README.md lacks {must}");
    }
}

#[test]
fn every_link_in_the_docs_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for target in links(&text) {
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            checked += 1;
            let (file, anchor) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target.as_str(), None),
            };
            let path = if file.is_empty() { page.clone() } else { page.parent().unwrap().join(file) };
            let shown = format!("{}: ({target})", page.strip_prefix(repo()).unwrap().display());
            if !path.exists() {
                broken.push(format!("{shown}: {} does not exist", path.display()));
                continue;
            }
            if let Some(anchor) = anchor {
                let target_text = std::fs::read_to_string(&path).unwrap_or_default();
                if !anchors(&target_text).iter().any(|a| a == anchor) {
                    broken.push(format!("{shown}: no heading #{anchor}"));
                }
            }
        }
    }
    assert!(checked >= 20, "only {checked} links checked: has the parser broken?");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// `program args… --help`, with no `OUTPOST*` variable to leak into `[env: …]` lines.
fn help(program: &str, args: &[&str]) -> String {
    let mut command = Command::new(bin_dir().join(program));
    command.args(args).arg("--help").env("COLUMNS", "100");
    for (key, _) in std::env::vars() {
        if key.starts_with("OUTPOST") {
            command.env_remove(key);
        }
    }
    let out = command.output().unwrap();
    assert!(out.status.success(), "{program} {args:?} --help exited {:?}", out.status);
    String::from_utf8(out.stdout).unwrap()
}

/// The sub-commands a help text lists under `Commands:` (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

/// `help` without its `Global options:` section (up to the next section or the end).
fn without_global_options(help: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in help.lines() {
        if line.starts_with("Global options:") {
            skipping = true;
            out.push_str("Global options: as for the program (see its own help)\n\n");
            continue;
        }
        if skipping && !line.is_empty() && !line.starts_with(' ') {
            skipping = false;
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// One program's help and every sub-command's, depth first, as Markdown sections.
fn reference(program: &str, path: &mut Vec<String>, out: &mut String) {
    let args: Vec<&str> = path.iter().map(String::as_str).collect();
    let text = help(program, &args);
    let title = std::iter::once(program).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
    let level = "#".repeat((2 + path.len()).min(4));
    // A sub-command's help repeats the program's global options: shown once, at the top.
    let shown = if path.is_empty() { text.clone() } else { without_global_options(&text) };
    out.push_str(&format!("{level} {title}\n\n```text\n{}\n```\n\n", shown.trim_end()));
    for sub in subcommands(&text) {
        path.push(sub);
        reference(program, path, out);
        path.pop();
    }
}

#[test]
fn the_cli_reference_is_the_programs_own_help() {
    let mut generated = String::from(
        "# CLI reference\n\n\
         Every command's `--help`, generated from the programs themselves by `tests/tests/docs.rs`\n\
         (`UPDATE_DOCS=1 cargo test -p outpost-tests --test docs` writes it again; the test fails\n\
         while it is stale). `outpost agent …`, `outpost coordinator …` and `outpost ctl …` are\n\
         exactly `outpost-agent …`, `outpost-coordinator …` and `outpostctl …`.\n\n\
         - [outpost](#outpost)\n- [outpostctl](#outpostctl)\n- [outpost-agent](#outpost-agent)\n\
         - [outpost-coordinator](#outpost-coordinator)\n\n",
    );
    // `outpost`: its own help and the demo's; the other personalities are the programs below.
    generated.push_str(&format!("## outpost\n\n```text\n{}\n```\n\n", help("outpost", &[]).trim_end()));
    generated.push_str(&format!(
        "### outpost demo\n\n```text\n{}\n```\n\n",
        help("outpost", &["demo"]).trim_end()
    ));
    for program in ["outpostctl", "outpost-agent", "outpost-coordinator"] {
        reference(program, &mut Vec::new(), &mut generated);
    }
    let generated = format!("{}\n", generated.trim_end());
    let path = repo().join("docs/cli.md");
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current != generated {
        let first = current.lines().zip(generated.lines()).position(|(a, b)| a != b);
        panic!(
            "docs/cli.md is stale (first difference at line {}): run `UPDATE_DOCS=1 cargo test -p \
             outpost-tests --test docs`",
            first.map_or(current.lines().count().min(generated.lines().count()) + 1, |n| n + 1)
        );
    }
}

/// A struct of the configuration as its source declares it: its doc and its fields.
#[derive(Debug, Default)]
struct Declared {
    doc: String,
    /// (name, type, doc), in order; fields behind `#[cfg(…)]` or `#[serde(skip…)]` left out.
    fields: Vec<(String, String, String)>,
}

/// Every `pub struct` under `dirs` (the first declaration of a name wins), read from source.
fn declared(dirs: &[&str]) -> std::collections::HashMap<String, Declared> {
    let mut out = std::collections::HashMap::new();
    for dir in dirs {
        for file in files_under(&[repo().join(dir)], "rs") {
            let source = std::fs::read_to_string(&file).unwrap();
            let mut doc: Vec<String> = Vec::new();
            let mut current: Option<(String, Declared)> = None;
            let mut hidden = false;
            for line in source.lines() {
                let t = line.trim();
                if let Some(text) = t.strip_prefix("///") {
                    doc.push(text.trim().to_owned());
                    continue;
                }
                if t.starts_with("#[") {
                    hidden |= t.starts_with("#[cfg(") || t.contains("serde(skip");
                    continue;
                }
                match &mut current {
                    None => {
                        if let Some(rest) = t.strip_prefix("pub struct ")
                            && let Some(name) = rest.strip_suffix(" {")
                        {
                            let d = Declared { doc: doc.join(" "), fields: Vec::new() };
                            current = Some((name.trim().to_owned(), d));
                        }
                    }
                    Some((name, d)) => {
                        if line.starts_with('}') {
                            let (name, d) = (std::mem::take(name), std::mem::take(d));
                            out.entry(name).or_insert(d);
                            current = None;
                        } else if let Some(field) = t.strip_prefix("pub ")
                            && let Some((field, ty)) = field.split_once(": ")
                            && !hidden
                        {
                            d.fields.push((
                                field.to_owned(),
                                ty.trim_end_matches(',').to_owned(),
                                doc.join(" "),
                            ));
                        }
                    }
                }
                doc.clear();
                hidden = false;
            }
        }
    }
    out
}

/// `Option<crate::x::Y>` → `Y`; `Vec<Y>` → `Y` (with `true` for a list).
fn inner_type(ty: &str) -> (String, bool) {
    let mut t = ty.trim();
    let mut list = false;
    loop {
        if let Some(rest) = t.strip_prefix("Option<").and_then(|r| r.strip_suffix('>')) {
            t = rest;
        } else if let Some(rest) = t.strip_prefix("Vec<").and_then(|r| r.strip_suffix('>')) {
            t = rest;
            list = true;
        } else {
            break;
        }
    }
    (t.rsplit("::").next().unwrap_or(t).to_owned(), list)
}

/// A default as it reads in TOML.
fn toml_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "(none)".into(),
        serde_json::Value::String(s) if s.is_empty() => "\"\"".into(),
        serde_json::Value::String(s) => format!("\"{s}\""),
        serde_json::Value::Array(a) if a.is_empty() => "[]".into(),
        serde_json::Value::Object(o) if o.is_empty() => "{}".into(),
        other => other.to_string(),
    }
}

/// One section (`[a.b]`) of the reference, then its sub-sections.
fn config_section(
    structs: &std::collections::HashMap<String, Declared>,
    ty: &str,
    defaults: Option<&serde_json::Value>,
    path: &[String],
    env_prefix: &str,
    out: &mut String,
) {
    let Some(d) = structs.get(ty) else { panic!("no `pub struct {ty}` found for [{}]", path.join(".")) };
    let mut rows = Vec::new();
    let mut nested = Vec::new();
    for (name, field_ty, doc) in &d.fields {
        let value = defaults.and_then(|v| v.get(name));
        if defaults.is_some() && value.is_none() {
            continue; // not serialized: not a key
        }
        let (inner, list) = inner_type(field_ty);
        let key: Vec<String> = path.iter().cloned().chain([name.clone()]).collect();
        if structs.contains_key(&inner) && (list || value.is_none_or(|v| v.is_object())) {
            nested.push((inner, value, key, list, doc.clone()));
            continue;
        }
        let env = if defaults.is_some() {
            format!("`{env_prefix}{}`", key.join("__").to_uppercase())
        } else {
            "(file only)".into()
        };
        let default = value.map_or("—".into(), toml_value);
        assert!(!doc.is_empty(), "`{}` ({ty}) has no doc comment: say what it means", key.join("."));
        let doc = doc.replace('|', "\\|");
        rows.push(format!("| `{name}` | `{}` | `{default}` | {env} | {doc} |", field_ty.replace('|', "\\|")));
    }
    if !rows.is_empty() {
        out.push_str("| key | type | default | environment | meaning |\n|---|---|---|---|---|\n");
        out.push_str(&rows.join("\n"));
        out.push_str("\n\n");
    }
    for (inner, value, key, list, doc) in nested {
        let header = if list { format!("[[{}]]", key.join(".")) } else { format!("[{}]", key.join(".")) };
        out.push_str(&format!("### `{header}`\n\n"));
        let about =
            if doc.is_empty() { structs.get(&inner).map_or(String::new(), |s| s.doc.clone()) } else { doc };
        if !about.is_empty() {
            out.push_str(&format!("{about}\n\n"));
        }
        if list {
            out.push_str("A list of tables, set in the file only; none by default.\n\n");
        }
        config_section(structs, &inner, if list { None } else { value }, &key, env_prefix, out);
    }
}

#[test]
fn the_configuration_reference_is_the_programs_own_types() {
    let mut generated = String::from(
        "# Configuration reference\n\n\
         Every key of `outpost-agent serve --config FILE` and `outpost-coordinator serve --config FILE`\n\
         (TOML), with its default and the environment variable that sets it (`__` between levels;\n\
         an unknown key is an error naming the closest real one). Generated by `tests/tests/docs.rs`\n\
         from the configuration types themselves — their fields, doc comments and `Default` — so it\n\
         cannot drift from the code (`UPDATE_DOCS=1 cargo test -p outpost-tests --test docs` writes it\n\
         again). An annotated example: `deploy/examples/agent.toml`.\n\n",
    );
    let agent = serde_json::to_value(outpost_agent::config::Config::default()).unwrap();
    let coordinator = serde_json::to_value(outpost_coordinator::config::Config::default()).unwrap();
    generated.push_str("## Agent (`outpost-agent`)\n\n");
    config_section(
        &declared(&["agent/src", "shared/src"]),
        "Config",
        Some(&agent),
        &[],
        "OUTPOST_",
        &mut generated,
    );
    generated.push_str("## Coordinator (`outpost-coordinator`)\n\n");
    config_section(
        &declared(&["coordinator/src", "shared/src"]),
        "Config",
        Some(&coordinator),
        &[],
        "OUTPOST_COORDINATOR_",
        &mut generated,
    );
    let generated = format!("{}\n", generated.trim_end());
    let path = repo().join("docs/configuration.md");
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == generated,
        "docs/configuration.md is stale: run `UPDATE_DOCS=1 cargo test -p outpost-tests --test docs`"
    );
}
