//! The README's quick start works: the example config serves every example model, two
//! versions of one side by side, and a random forest on our tree kernel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use outpost_tests::{Agent, reference, rows};
use serde_json::json;

#[tokio::test]
async fn example_config_serves_every_example_model() {
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/agent.toml");
    let agent = Agent::builder().args(&["--config", config.to_str().unwrap()]).start();
    agent.wait_ready(Duration::from_secs(60)).await;

    let (_, meta) = agent.get("/v2/models/breast_cancer").await;
    assert_eq!(meta["versions"], json!(["1.0.0", "1.1.0"]));
    let r = reference("breast_cancer-1.0.0");
    let (data, len) = rows(&r["inputs"][0]);
    let request =
        json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": data[..len]}]});
    let (status, body) = agent.post_json("/v2/models/breast_cancer/infer", &request).await;
    assert_eq!(
        (status, body["model_version"].as_str().unwrap()),
        (200, "1.1.0"),
        "unversioned requests go to the highest version"
    );
    let (status, body) = agent.post_json("/v2/models/breast_cancer/versions/1.0.0/infer", &request).await;
    assert_eq!((status, body["model_version"].as_str().unwrap()), (200, "1.0.0"));
    for name in ["digits", "digits_cnn", "breast_cancer_rf"] {
        assert_eq!(agent.get(&format!("/v2/models/{name}/ready")).await.0, 200, "{name}");
    }
    let (_, meta) = agent.get("/v2/models/digits_cnn").await;
    assert_eq!(
        meta["parameters"]["dynamic_batching"],
        json!({"max_batch": 32, "max_queue_delay_us": 500}),
        "[batching.digits_cnn] in the example is in force"
    );
    // The forest answers as onnxruntime does on the same row.
    let forest = reference("breast_cancer_rf-1.0.0");
    let (status, body) = agent.post_json("/v2/models/breast_cancer_rf/infer", &request).await;
    assert_eq!(status, 200, "{body}");
    let label = body["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "label").unwrap();
    assert_eq!(label["data"][0], forest["outputs"][0]["data"][0], "{body}");
}
