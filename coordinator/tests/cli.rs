//! The coordinator's binaries refuse bad usage with a clear message and exit code 2.
//! (Being an integration test of this package, this also makes `cargo test --workspace`
//! build `outpost-coordinator` and `outpostctl` for the end-to-end tests in `tests/`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn run(bin: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn serve_refuses_an_unreachable_api_url_and_plain_mqtt() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_outpost-coordinator");
    let (code, err) = run(
        bin,
        &["serve", "--data-dir", data, "--listen", "0.0.0.0:0", "--broker", "mqtts://127.0.0.1:8883"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("api.advertised_url"), "{err}");
    let (code, err) = run(bin, &["serve", "--data-dir", data, "--broker", "mqtt://127.0.0.1:1883"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("mqtts://"), "{err}");
}

#[test]
fn outpostctl_needs_a_token_and_https_off_loopback() {
    let bin = env!("CARGO_BIN_EXE_outpostctl");
    let (code, err) = run(bin, &["devices"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no API token"), "{err}");
    let (code, err) = run(bin, &["--url", "http://10.1.2.3:7400", "--token", "x", "devices"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("non-loopback"), "{err}");
}

#[test]
fn outpostctl_ends_quietly_when_its_output_is_closed() {
    // `outpostctl … | head`: the reader is gone before the first line is written.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pk8");
    let bin = env!("CARGO_BIN_EXE_outpostctl");
    assert_eq!(run(bin, &["key", "generate", key.to_str().unwrap()]).0, 0);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(bin).args(["key", "show", key.to_str().unwrap()]).stdout(writer).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
