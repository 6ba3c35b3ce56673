//! The `outpost-agent` command line: help, version and usage errors with exit code 2.
//! (Having an integration test here also makes `cargo test --workspace` build the binary that
//! the end-to-end tests in `tests/` start.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn agent(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_outpost-agent")).args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn help_lists_the_commands() {
    let (code, stdout, _) = agent(&["--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("serve") && stdout.contains("check-model"), "{stdout}");
    let (code, stdout, _) = agent(&["serve", "--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("--model <NAME=PATH>") && stdout.contains("--config"), "{stdout}");
}

#[test]
fn version_prints_the_crate_version() {
    let (code, stdout, _) = agent(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), format!("outpost-agent {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn usage_errors_exit_2_with_a_message() {
    let (code, _, stderr) = agent(&["launch"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("unrecognized subcommand 'launch'"), "{stderr}");
    let (code, _, stderr) = agent(&["serve", "--listen", "not-an-address"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--listen"), "{stderr}");
    let (code, _, stderr) = agent(&["check-model", "x.onnx", "--runs", "0"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--runs"), "{stderr}");
}
