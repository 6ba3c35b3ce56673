//! NVIDIA's official Triton HTTP client (`tritonclient[http]`, Python), used unchanged and with
//! its defaults (binary tensors), works against the agent: health, metadata, inference with
//! binary and JSON tensors matching onnxruntime, request ids, and errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use outpost_tests::{Agent, model, models_dir};

/// The Python with `tests/clients/requirements.txt` installed: `TEST_TRITON_PYTHON`, or the
/// venv `.ci/run` creates.
fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("TEST_TRITON_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/outpost-ci-venv/bin/python"));
    let usable = Command::new(&candidate)
        .args(["-c", "import tritonclient.http"])
        .output()
        .is_ok_and(|o| o.status.success());
    usable.then_some(candidate)
}

#[tokio::test]
async fn official_triton_http_client_works_unchanged() {
    let Some(python) = python() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide tritonclient (see .ci/run); set TEST_TRITON_PYTHON to a python that has it"
        );
        eprintln!("tritonclient not installed: skipping (run .ci/run, or set TEST_TRITON_PYTHON)");
        return;
    };
    let agent = Agent::builder()
        .model("bc", &model("breast_cancer-1.0.0"))
        .model("digits", &model("digits_mlp-1.0.0"))
        .start();
    agent.wait_ready(Duration::from_secs(30)).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/triton_http_client.py");
    let addr = agent.addr.to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python).arg(script).arg(addr).arg(models_dir()).output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "triton client failed:\n{stdout}\n{stderr}\nagent log:\n{}",
        agent.log()
    );
    assert!(stdout.contains("triton client: all checks passed"), "{stdout}");
}
