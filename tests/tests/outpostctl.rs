//! `outpostctl` against a real coordinator: one exit-code table for every command group (0 done,
//! 1 refused, 2 bad usage, 3 not found, 4 unreachable, printed by `--help`), `-o json` beside
//! `--json`, and label selectors on `devices`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use outpost_tests::fleet::{Coordinator, enroll, free_port, run};
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

    // 2: usage — a malformed target, a selector that is not key=value, no token at all.
    for args in [&["deploy", "bc-1.0.0"][..], &["devices", "-l", "site"], &["-o", "yaml", "devices"]] {
        assert_eq!(c.ctl(args).0, 2, "{args:?}");
    }
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
