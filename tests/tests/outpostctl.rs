//! `outpostctl` against a real coordinator: one exit-code table for every command group (0 done,
//! 1 refused, 2 bad usage, 3 not found, 4 unreachable, printed by `--help`), `-o table|wide|json|yaml`
//! (and `--json`) with the same data in each, a header row on every table, label selectors on
//! `devices`, `rollout list` and `alerts`, and `outpost ctl` as the same program.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use outpost_tests::fleet::{Coordinator, enroll, free_port, push, run};
use serde_json::Value;

#[test]
fn every_command_group_follows_one_exit_code_table() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Coordinator::start_embedded(&dir.path().join("coordinator"));
    let a = enroll(&dir.path().join("a"), &c, &c.token("site=a,tier=edge")).unwrap();
    let b = enroll(&dir.path().join("b"), &c, &c.token("site=b,tier=edge")).unwrap();

    // 0, with the table and JSON the same devices; a selector narrows both.
    let (code, table, err) = c.ctl(&["devices"]);
    assert_eq!(code, 0, "{err}");
    assert!(table.starts_with("DEVICE"), "{table}");
    assert!(table.contains(&a) && table.contains(&b), "{table}");
    let (code, selected, _) = c.ctl(&["devices", "-l", "site=b"]);
    assert_eq!(code, 0);
    assert!(selected.contains(&b) && !selected.contains(&a), "{selected}");
    for flags in [&["-o", "json"][..], &["--json"][..], &["--output", "json"][..]] {
        let args: Vec<&str> =
            flags.iter().copied().chain(["devices", "--selector", "tier=edge,site=a"]).collect();
        let (code, out, err) = c.ctl(&args);
        assert_eq!(code, 0, "{flags:?}: {err}");
        let devices: Vec<Value> =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{flags:?}: {e}: {out}"));
        assert_eq!(devices.len(), 1, "{out}");
        assert_eq!(devices[0]["id"], a.as_str());
    }

    // 3: named things that do not exist, in every group.
    for args in [
        &["device", "show", "dev-0000000000000000"][..],
        &["device", "revoke", "dev-0000000000000000"],
        &["model", "show", "nosuch@1.0.0"],
        &["model", "card", "nosuch@9.9.9"],
        &["model", "quality", "nosuch"],
        &["rollout", "status", "999999"],
        &["incident", "show", "999999"],
    ] {
        let (code, _, err) = c.ctl(args);
        assert_eq!(code, 3, "{args:?}: {err}");
        assert!(err.starts_with("error: ") && !err.contains("{\""), "{args:?}: a raw body: {err}");
    }

    // 1: the coordinator refuses (a viewer deploying; a version nobody validated).
    let viewer = c.ctl(&["token", "create", "watcher", "--role", "viewer"]).1.trim().to_owned();
    let url = c.url();
    let (code, _, err) = run("outpostctl", &["--url", &url, "--token", &viewer, "deploy", "bc@1.0.0"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("403") || err.contains("Forbidden"), "{err}");

    // 2: usage — a malformed target, a selector that is not key=value, an unknown format, no
    // token at all.
    for args in [&["deploy", "bc-1.0.0"][..], &["devices", "-l", "site"], &["-o", "xml", "devices"]] {
        assert_eq!(c.ctl(args).0, 2, "{args:?}");
    }
    let (code, _, err) = c.ctl(&["rollout", "abort", "r-000001"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("<--keep|--revert>"), "both ways out are named: {err}");
    let (code, _, err) = run("outpostctl", &["--url", &url, "devices"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no API token"), "{err}");

    // 4: nothing answers at the URL.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let (code, _, err) = run("outpostctl", &["--url", &nowhere, "--token", &viewer, "devices"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("cannot reach the coordinator"), "{err}");

    let (code, help, _) = run("outpostctl", &["--help"]);
    assert_eq!(code, 0);
    for row in ["0  done", "1  the coordinator refused", "2  bad usage", "3  not found", "4  cannot reach"] {
        assert!(help.contains(row), "{row} missing from --help:\n{help}");
    }
}

/// Every read command prints one header row (also when the list is empty), `-o wide` adds
/// columns, and `-o yaml` is the same data as `-o json`.
#[test]
fn read_commands_print_headers_and_every_output_format() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Coordinator::start_embedded(&dir.path().join("coordinator"));
    let a = enroll(&dir.path().join("a"), &c, &c.token("site=a")).unwrap();
    let (code, _, err) = push(&c, "breast_cancer-1.0.0", "1.0.0");
    assert_eq!(code, 0, "{err}");

    let headers: [(&[&str], &str); 10] = [
        (&["devices"], "DEVICE  "),
        (&["model", "list"], "MODEL  "),
        (&["model", "show", "bc"], "MODEL  "),
        (&["model", "history", "bc"], "VERSION  "),
        (&["rollout", "list"], "ID  "),
        (&["rollout", "list", "-l", "model=bc"], "ID  "),
        (&["incident", "list"], "ID  "),
        (&["alerts", "-l", "model=bc"], "ALERT  "),
        (&["token", "list"], "NAME  "),
        (&["audit", "list"], "SEQ  "),
    ];
    for (args, header) in headers {
        let (code, out, err) = c.ctl(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.starts_with(header), "{args:?} has no header row starting {header:?}:\n{out}");
    }
    let (_, table, _) = c.ctl(&["model", "show", "bc"]);
    assert!(table.lines().nth(1).is_some_and(|l| l.starts_with("bc ") && l.contains("1.0.0")), "{table}");
    let (_, shown, _) = c.ctl(&["model", "show", "bc@1.0.0"]);
    assert!(shown.starts_with("model      bc@1.0.0") && shown.contains("signed by"), "{shown}");
    assert!(shown.lines().count() < 30, "a summary, not the whole record:\n{shown}");

    // `-o wide`: the same rows, more columns.
    for (args, extra) in [
        (&["devices"][..], "KEY ID"),
        (&["model", "list"], "BUNDLE SHA256"),
        (&["rollout", "list"], "SELECTOR"),
        (&["token", "list"], "CREATED AT"),
        (&["audit", "list"], "HASH"),
    ] {
        let (_, narrow, _) = c.ctl(args);
        let wide_args: Vec<&str> = args.iter().copied().chain(["-o", "wide"]).collect();
        let (code, wide, err) = c.ctl(&wide_args);
        assert_eq!(code, 0, "{err}");
        let header = wide.lines().next().unwrap_or("");
        assert!(header.contains(extra), "{args:?} -o wide lacks {extra}: {header}");
        assert!(!narrow.lines().next().unwrap_or("").contains(extra), "{args:?}: {extra} without -o wide");
        assert_eq!(narrow.lines().count(), wide.lines().count(), "{args:?}: the same rows");
    }

    // `-o yaml` is the JSON's data.
    for args in
        [&["devices"][..], &["model", "show", "bc@1.0.0"], &["model", "show", "bc"], &["token", "list"]]
    {
        let with = |format: &str| {
            let all: Vec<&str> = ["-o", format].into_iter().chain(args.iter().copied()).collect();
            let (code, out, err) = c.ctl(&all);
            assert_eq!(code, 0, "{args:?} -o {format}: {err}");
            out
        };
        let json: Value = serde_json::from_str(&with("json")).unwrap();
        let yaml: Value = serde_yaml::from_str(&with("yaml")).unwrap();
        assert_eq!(json, yaml, "{args:?}");
    }
    let devices: Value = serde_yaml::from_str(&c.ctl(&["devices", "-o", "yaml"]).1).unwrap();
    assert_eq!(devices[0]["id"], a.as_str());

    // `outpost ctl` is outpostctl; `outpost --help` is clap's, on stdout, exit 0.
    let url = c.url();
    let token_file = c.token_file().display().to_string();
    let (code, out, err) = run("outpost", &["ctl", "--url", &url, "--token-file", &token_file, "devices"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("DEVICE") && out.contains(&a), "{out}");
    let (code, help, _) = run("outpost", &["--help"]);
    assert_eq!(code, 0);
    for personality in ["demo", "agent", "coordinator", "ctl"] {
        assert!(help.lines().any(|l| l.trim_start().starts_with(personality)), "{personality}:\n{help}");
    }
    let (code, help, _) = run("outpost", &["ctl", "--help"]);
    assert_eq!(code, 0);
    assert!(help.contains("Global options:") && help.contains("Exit codes"), "{help}");
    let (code, help, _) = run("outpost", &["ctl", "devices", "--help"]);
    assert_eq!(code, 0);
    assert!(help.contains("Examples:") && help.contains("devices -l site=a"), "{help}");
}
