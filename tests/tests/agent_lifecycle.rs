//! Start-up, validation, failure and shutdown behave as an operator (and Kubernetes) expects:
//! live at once, ready only when validated, failed models never serve, SIGTERM drains.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use outpost_tests::{Agent, model, reference, run_agent};
use serde_json::{Value, json};

async fn wait_for_state(agent: &Agent, name: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = agent.get("/v2/health/ready").await;
        if let Some(m) = body["models"].as_array().and_then(|ms| ms.iter().find(|m| m["name"] == name))
            && m["state"] == state
        {
            return m.clone();
        }
        assert!(Instant::now() < deadline, "{name} never reached {state}: {body}\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn readiness_is_false_until_the_model_is_validated() {
    // The model arrives through a FIFO, so the test decides when loading can finish.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("slow.onnx");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR).unwrap();
    let agent = Agent::builder().model("slow", &fifo).start();

    assert_eq!(agent.get("/v2/health/live").await.0, 200, "live from the first moment");
    let (status, body) = agent.get("/v2/health/ready").await;
    assert_eq!(status, 503);
    assert_eq!(body["ready"], false);
    assert_eq!(body["models"][0]["state"], "loading");
    assert_eq!(agent.get("/v2/models/slow/ready").await.0, 503);
    let request =
        json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": vec![0.5; 30]}]});
    let (status, body) = agent.post_json("/v2/models/slow/infer", &request).await;
    assert_eq!((status, body["error"].as_str().unwrap()), (503, "model `slow` is still loading"));
    // The container HEALTHCHECK's probe says the same, by exit code.
    let ready_url = agent.url("/v2/health/ready");
    let (code, _, err) = run_agent(&["probe", "--url", &ready_url]);
    assert_eq!(code, 1, "probe of a loading agent: {err}");
    assert!(err.contains("503"), "{err}");

    let bytes = std::fs::read(model("breast_cancer-1.0.0")).unwrap();
    let writer = std::thread::spawn(move || std::fs::write(&fifo, bytes).unwrap());
    agent.wait_ready(Duration::from_secs(30)).await;
    writer.join().unwrap();
    let (status, body) = agent.post_json("/v2/models/slow/infer", &request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_version"], "1.0.0", "version read from the model's metadata");
    let (code, out, err) = run_agent(&["probe", "--url", &ready_url]);
    assert_eq!((code, out.trim()), (0, "ok"), "{err}");
    let (code, _, err) = run_agent(&["probe", "--url", "http://10.1.2.3:8080/v2/health/ready"]);
    assert_eq!(code, 1, "plain HTTP off loopback is refused: {err}");
    assert!(err.contains("non-loopback"), "{err}");
}

#[tokio::test]
async fn a_model_that_fails_validation_never_serves_while_others_do() {
    // A copy of a good model whose reference outputs were tampered with: tract no longer
    // "reproduces" them, exactly as when runtimes disagree.
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("bc.onnx");
    std::fs::copy(model("breast_cancer-1.0.0"), &onnx).unwrap();
    let mut r = reference("breast_cancer-1.0.0");
    let p = r["outputs"][1]["data"][5].as_f64().unwrap();
    r["outputs"][1]["data"][5] = json!(p + 0.05);
    std::fs::write(dir.path().join("bc.reference.json"), serde_json::to_vec(&r).unwrap()).unwrap();

    let agent = Agent::builder().model("bc", &onnx).model("digits", &model("digits_mlp-1.0.0")).start();
    let failed = wait_for_state(&agent, "bc", "failed").await;
    wait_for_state(&agent, "digits", "ready").await;
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains("does not reproduce") && reason.contains("output `probabilities` element 5"),
        "{reason}"
    );

    let (status, body) = agent.get("/v2/health/ready").await;
    assert_eq!((status, body["ready"].clone()), (503, json!(false)));
    let (status, meta) = agent.get("/v2/models/bc").await;
    assert_eq!((status, meta["state"].as_str().unwrap()), (200, "failed"));
    assert_eq!(meta["reason"].as_str().unwrap(), reason);
    assert_eq!(agent.get("/v2/models/bc/ready").await.0, 503);
    let request =
        json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": vec![0.5; 30]}]});
    let (status, body) = agent.post_json("/v2/models/bc/infer", &request).await;
    assert_eq!(status, 503);
    assert!(
        body["error"].as_str().unwrap().starts_with("model `bc` failed validation and does not serve"),
        "{body}"
    );

    let digits =
        json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": vec![1.0; 64]}]});
    assert_eq!(agent.post_json("/v2/models/digits/infer", &digits).await.0, 200);
    assert_eq!(agent.get("/v2/models/digits/ready").await.0, 200);
    let metrics = agent.metrics_text().await;
    assert!(
        metrics.contains("outpost_agent_model_state{model=\"bc\",state=\"failed\",version=\"1.0.0\"} 1"),
        "{metrics}"
    );
    assert!(agent.log().contains("model failed validation and will not serve"));
}

#[tokio::test]
async fn the_only_model_failing_to_load_exits_with_code_3() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("broken.onnx");
    std::fs::write(&garbage, b"this is not an ONNX model").unwrap();
    let mut agent = Agent::builder().model("broken", &garbage).start();
    let status = agent.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(3), "{}", agent.log());
    let log = agent.log();
    assert!(log.contains("not a valid ONNX model"), "{log}");
    assert!(log.contains("no model could be validated"), "{log}");
}

fn count_in_flight(metrics: &str) -> i64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("outpost_agent_in_flight_requests "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn sigterm_during_a_burst_completes_every_request_and_exits_0() {
    let mut agent =
        Agent::builder().model("cnn", &model("digits_cnn-1.0.0")).args(&["--workers", "1"]).start();
    agent.wait_ready(Duration::from_secs(30)).await;
    let request = json!({"inputs": [reference("digits_cnn-1.0.0")["inputs"][0].clone()]});
    let body = serde_json::to_vec(&request).unwrap();

    // Size the burst so it takes about two seconds of work on one worker.
    let started = Instant::now();
    assert_eq!(agent.post_raw("/v2/models/cnn/infer", body.clone(), &[]).await.0, 200);
    let one = started.elapsed().max(Duration::from_millis(1));
    let burst = (Duration::from_secs(2).as_secs_f64() / one.as_secs_f64()).ceil().clamp(8.0, 200.0) as usize;

    let mut handles = Vec::new();
    for _ in 0..burst {
        let client = reqwest::Client::new();
        let url = agent.url("/v2/models/cnn/infer");
        let body = body.clone();
        handles.push(tokio::spawn(async move {
            let response = client.post(url).body(body).send().await.unwrap();
            response.status().as_u16()
        }));
    }
    // Wait until the agent holds the whole burst, then ask it to stop.
    let deadline = Instant::now() + Duration::from_secs(20);
    while count_in_flight(&agent.metrics_text().await) < burst as i64 {
        assert!(Instant::now() < deadline, "burst never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    agent.signal(Signal::SIGTERM);

    let mut statuses = Vec::new();
    for handle in handles {
        statuses.push(handle.await.unwrap());
    }
    assert!(statuses.iter().all(|&s| s == 200), "{burst} in-flight requests: {statuses:?}");
    let exit = tokio::task::spawn_blocking(move || {
        let status = agent.wait_exit(Duration::from_secs(30));
        (status, agent.log())
    })
    .await
    .unwrap();
    assert_eq!(exit.0.code(), Some(0), "{}", exit.1);
    assert!(exit.1.contains("\"signal\":\"SIGTERM\""), "{}", exit.1);
}

#[test]
fn bad_configuration_exits_2_naming_the_problem() {
    let (code, _, stderr) = run_agent(&["serve", "--config", "/nonexistent/agent.toml"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("config file /nonexistent/agent.toml does not exist"), "{stderr}");

    let (code, _, stderr) = run_agent(&["serve"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("no models to serve"), "{stderr}");

    let (code, _, stderr) = run_agent(&["serve", "--model", "no-path-given"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("is not NAME=PATH.onnx"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "[http]\nmax_body_byte = 10\n").unwrap();
    let (code, _, stderr) = run_agent(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown field") && stderr.contains("`max_body_byte`"), "{stderr}");

    // Drift windows and the test-only delay are checked too.
    let bc = model("breast_cancer-1.0.0");
    for (section, needle) in [
        ("[drift]\nwindow_rows = 5\n", "drift.window_rows"),
        ("[drift]\nmin_rows = 2000\n", "drift.min_rows"),
        ("[drift.models.bc]\ntest = \"ks\"\nthreshold = 3.0\n", "drift.models.bc.features.*.threshold"),
        ("[drift.models.bc]\ntest = \"median\"\n", "found `median`, expected `one of `ks`"),
        ("[runtime.test_delay_ms]\nbc = 600000\n", "runtime.test_delay_ms.bc"),
    ] {
        std::fs::write(&config, format!("{section}[[models]]\nname = \"bc\"\npath = \"{}\"\n", bc.display()))
            .unwrap();
        let (code, _, stderr) = run_agent(&["serve", "--config", config.to_str().unwrap()]);
        assert_eq!(code, 2, "{section}: {stderr}");
        assert!(stderr.contains(needle), "{section}: {stderr}");
    }
}

#[test]
fn check_model_prints_the_signature_and_times_runs() {
    let path = model("breast_cancer-1.1.0");
    let (code, stdout, stderr) = run_agent(&["check-model", path.to_str().unwrap(), "--runs", "20"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    for expected in [
        "version     1.1.0",
        "input                    FP32   [N, 30]",
        "label                    INT64  [N]",
        "probabilities            FP32   [N, 2]",
        "reproduced",
        "20 runs at batch 1",
        "result      OK",
    ] {
        assert!(stdout.contains(expected), "missing `{expected}` in:\n{stdout}");
    }
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("x.onnx");
    std::fs::write(&garbage, [0xffu8; 100]).unwrap();
    let (code, stdout, _) = run_agent(&["check-model", garbage.to_str().unwrap()]);
    assert_eq!(code, 3);
    assert!(stdout.contains("INVALID: not a valid ONNX model"), "{stdout}");
}
