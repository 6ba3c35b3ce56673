//! The agent speaks the Open Inference Protocol (V2) as Triton/KServe clients expect, and its
//! answers equal onnxruntime's on every held-out row — tree ensembles (random forest, gradient
//! boosting, XGBoost, LightGBM, a regressor) included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use outpost_tests::{Agent, assert_close, model, reference, rows};
use serde_json::{Value, json};

const STEMS: [(&str, &str); 11] = [
    ("bc", "breast_cancer-1.0.0"),
    ("bc_mlp", "breast_cancer-1.1.0"),
    ("bc_bad", "breast_cancer-2.0.0-bad"),
    ("digits", "digits_mlp-1.0.0"),
    ("cnn", "digits_cnn-1.0.0"),
    // Tree ensembles, served by our own kernel inside tract.
    ("bc_rf", "breast_cancer_rf-1.0.0"),
    ("bc_gbm", "breast_cancer_gbm-1.0.0"),
    ("bc_xgb", "breast_cancer_xgb-1.0.0"),
    ("bc_lgbm", "breast_cancer_lgbm-1.0.0"),
    ("digits_rf", "digits_rf-1.0.0"),
    ("diabetes_rf", "diabetes_rf-1.0.0"),
];

async fn all_models() -> Agent {
    let mut builder = Agent::builder();
    for (name, stem) in STEMS {
        builder = builder.model(name, &model(stem));
    }
    let agent = builder.start();
    agent.wait_ready(Duration::from_secs(60)).await;
    agent
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn breast_cancer_row() -> Vec<Value> {
    let r = reference("breast_cancer-1.0.0");
    let (data, len) = rows(&r["inputs"][0]);
    data[..len].to_vec()
}

#[tokio::test]
async fn serves_every_v2_endpoint() {
    let agent = Agent::builder().model("bc", &model("breast_cancer-1.0.0")).start();
    agent.wait_ready(Duration::from_secs(30)).await;

    let (status, body) = agent.get("/v2").await;
    assert_eq!(status, 200);
    assert_eq!(body["name"], "outpost-agent");
    assert!(body["extensions"].as_array().unwrap().contains(&json!("binary_tensor_data")));

    assert_eq!(agent.get("/v2/health/live").await.0, 200);
    let (status, body) = agent.get("/v2/health/ready").await;
    assert_eq!((status, body["ready"].clone()), (200, json!(true)));

    for path in ["/v2/models/bc", "/v2/models/bc/versions/1.0.0"] {
        let (status, meta) = agent.get(path).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(meta["name"], "bc");
        assert_eq!(meta["versions"], json!(["1.0.0"]));
        assert_eq!(meta["inputs"], json!([{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]));
        assert_eq!(
            meta["outputs"],
            json!([
                {"name": "label", "datatype": "INT64", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}
            ])
        );
    }
    for path in ["/v2/models/bc/ready", "/v2/models/bc/versions/1.0.0/ready"] {
        let (status, body) = agent.get(path).await;
        assert_eq!((status, body["ready"].clone()), (200, json!(true)), "{path}");
    }

    let request = json!({
        "id": "req-42",
        "inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": breast_cancer_row()}],
        "outputs": [{"name": "probabilities"}]
    });
    for path in ["/v2/models/bc/infer", "/v2/models/bc/versions/1.0.0/infer"] {
        let (status, body) = agent.post_json(path, &request).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["id"], "req-42");
        assert_eq!(body["model_name"], "bc");
        assert_eq!(body["model_version"], "1.0.0");
        let outputs = body["outputs"].as_array().unwrap();
        assert_eq!(outputs.len(), 1, "only the requested output comes back");
        assert_eq!(outputs[0]["name"], "probabilities");
        assert_eq!(outputs[0]["shape"], json!([1, 2]));
    }

    for (path, message) in [
        ("/v2/models/nope", "unknown model `nope`"),
        ("/v2/models/bc/versions/9.9.9", "model `bc` has no version `9.9.9`"),
        ("/v2/models/nope/ready", "unknown model `nope`"),
        ("/v2/nothing-here", "no endpoint GET /v2/nothing-here"),
    ] {
        let (status, body) = agent.get(path).await;
        assert_eq!((status, body["error"].as_str().unwrap()), (404, message), "{path}");
    }
    let (status, body) = agent.post_json("/v2/models/nope/versions/1/infer", &request).await;
    assert_eq!((status, body["error"].as_str().unwrap()), (404, "unknown model `nope`"));
    assert_eq!(agent.get("/metrics").await.0, 200);
}

#[tokio::test]
async fn outputs_equal_onnxruntime_on_every_heldout_row() {
    let agent = all_models().await;
    for (name, stem) in STEMS {
        let r = reference(stem);
        let input = &r["inputs"][0];
        let shape: Vec<u64> =
            input["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        let (data, row_len) = rows(input);
        let n = shape[0] as usize;
        let path = format!("/v2/models/{name}/infer");

        // The whole held-out set as one batch…
        let batch = json!({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": data}]});
        let (status, body) = agent.post_json(&path, &batch).await;
        assert_eq!(status, 200, "{stem}: {body}");
        for expected in r["outputs"].as_array().unwrap() {
            let found =
                body["outputs"].as_array().unwrap().iter().find(|o| o["name"] == expected["name"]).unwrap();
            assert_eq!(found["shape"], expected["shape"], "{stem}");
            assert_eq!(found["datatype"], expected["datatype"], "{stem}");
            assert_close(
                &floats(&found["data"]),
                &floats(&expected["data"]),
                &format!("{stem} batch {}", expected["name"]),
            );
        }

        // …and every row on its own, through the batch-1 path.
        for row in 0..n {
            let mut row_shape = shape.clone();
            row_shape[0] = 1;
            let request = json!({"inputs": [{"name": "input", "shape": row_shape, "datatype": "FP32",
                "data": data[row * row_len..(row + 1) * row_len]}]});
            let (status, body) = agent.post_json(&path, &request).await;
            assert_eq!(status, 200, "{stem} row {row}: {body}");
            for expected in r["outputs"].as_array().unwrap() {
                let (want, out_len) = rows(expected);
                let want: Vec<f64> =
                    want[row * out_len..(row + 1) * out_len].iter().map(|x| x.as_f64().unwrap()).collect();
                let found = body["outputs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|o| o["name"] == expected["name"])
                    .unwrap();
                assert_close(
                    &floats(&found["data"]),
                    &want,
                    &format!("{stem} row {row} {}", expected["name"]),
                );
            }
        }
    }
}

/// Sends a binary-extension request: the JSON header, then the raw tensor bytes.
async fn send_binary(agent: &Agent, path: &str, header: &Value, binary: &[u8]) -> reqwest::Response {
    let header_bytes = serde_json::to_vec(header).unwrap();
    let mut body = header_bytes.clone();
    body.extend_from_slice(binary);
    let response = agent
        .http
        .post(agent.url(path))
        .header("Inference-Header-Content-Length", header_bytes.len().to_string())
        .header("Content-Type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response
}

/// Sends a binary-extension request and splits the binary-extension response into its JSON
/// header and the binary bytes after it.
async fn post_binary(agent: &Agent, path: &str, header: &Value, binary: &[u8]) -> (Value, Vec<u8>) {
    let response = send_binary(agent, path, header, binary).await;
    let json_len: usize =
        response.headers()["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let bytes = response.bytes().await.unwrap();
    (serde_json::from_slice(&bytes[..json_len]).unwrap(), bytes[json_len..].to_vec())
}

#[tokio::test]
async fn binary_tensor_data_round_trips() {
    let agent = Agent::builder().model("digits", &model("digits_mlp-1.0.0")).start();
    agent.wait_ready(Duration::from_secs(30)).await;
    let r = reference("digits_mlp-1.0.0");
    let (data, row_len) = rows(&r["inputs"][0]);
    let n = 5;
    let pixels: Vec<u8> =
        data[..n * row_len].iter().flat_map(|x| (x.as_f64().unwrap() as f32).to_le_bytes()).collect();
    let header = json!({
        "id": "bin-1",
        "inputs": [{"name": "input", "shape": [n, row_len], "datatype": "FP32", "parameters": {"binary_data_size": pixels.len()}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}, {"name": "label"}]
    });
    let (head, binary) = post_binary(&agent, "/v2/models/digits/infer", &header, &pixels).await;
    assert_eq!(head["id"], "bin-1");
    let probs = &head["outputs"][0];
    assert_eq!(probs["name"], "probabilities");
    assert!(probs.get("data").is_none(), "binary outputs carry no JSON data");
    let size = probs["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
    assert_eq!(size, n * 10 * 4);
    assert_eq!(binary.len(), size);
    let found: Vec<f64> =
        binary.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap()))).collect();
    let (want, out_len) = rows(&r["outputs"][1]);
    assert_eq!(r["outputs"][1]["name"], "probabilities");
    let want: Vec<f64> = want[..n * out_len].iter().map(|x| x.as_f64().unwrap()).collect();
    assert_close(&found, &want, "binary probabilities");
    let labels = floats(&head["outputs"][1]["data"]);
    let (want_labels, _) = rows(&r["outputs"][0]);
    let want_labels: Vec<f64> = want_labels[..n].iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(labels, want_labels);

    // Request-level binary_data_output applies to every output without its own setting.
    let header = json!({
        "inputs": [{"name": "input", "shape": [1, row_len], "datatype": "FP32", "parameters": {"binary_data_size": row_len * 4}}],
        "parameters": {"binary_data_output": true}
    });
    let (head, binary) =
        post_binary(&agent, "/v2/models/digits/infer", &header, &pixels[..row_len * 4]).await;
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 8, "one INT64 label");
    assert_eq!(head["outputs"][1]["parameters"]["binary_data_size"], 40, "ten FP32 probabilities");
    assert_eq!(binary.len(), 48);
}

fn case_number(v: &Value) -> f32 {
    match v.as_str() {
        Some("NaN") => f32::NAN,
        Some("Infinity") => f32::INFINITY,
        Some("-Infinity") => f32::NEG_INFINITY,
        _ => v.as_f64().unwrap() as f32,
    }
}

/// Missing values reach a tree ensemble through the agent when the model allows them:
/// 300 rows with NaN and ±∞ (binary V2, as JSON cannot carry NaN) through a mixed-mode
/// forest with missing-value tracks, labels and probabilities as onnxruntime gave them.
#[tokio::test]
async fn tree_model_takes_missing_values_as_onnxruntime_does() {
    let cases = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/models/tree_cases");
    let case: Value =
        serde_json::from_str(&std::fs::read_to_string(cases.join("clf4_mixed_none.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let model_path = cases.join("clf4_mixed_none.onnx");
    std::fs::write(
        &config,
        format!(
            "[[models]]\nname = \"trees\"\npath = {:?}\nnan_policy = \"allow\"\n",
            model_path.to_str().unwrap()
        ),
    )
    .unwrap();
    let agent = Agent::builder().args(&["--config", config.to_str().unwrap()]).start();
    agent.wait_ready(Duration::from_secs(30)).await;

    let input = &case["inputs"][0];
    let shape = input["shape"].clone();
    let values: Vec<f32> = input["data"].as_array().unwrap().iter().map(case_number).collect();
    assert!(values.iter().any(|v| v.is_nan()) && values.iter().any(|v| v.is_infinite()));
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = json!({
        "inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": bytes.len()}}],
        "outputs": [{"name": "label"}, {"name": "probabilities"}]
    });
    // Binary request, JSON answer (no output asks for binary data).
    let response = send_binary(&agent, "/v2/models/trees/infer", &header, &bytes).await;
    let head: Value = response.json().await.unwrap();
    let found = |name: &str| {
        head["outputs"].as_array().unwrap().iter().find(|o| o["name"] == name).unwrap()["data"].clone()
    };
    let expected = |name: &str| {
        case["outputs"].as_array().unwrap().iter().find(|o| o["name"] == name).unwrap()["data"].clone()
    };
    assert_eq!(found("label"), expected("label"));
    let probabilities: Vec<f64> = floats(&found("probabilities"));
    let want: Vec<f64> =
        expected("probabilities").as_array().unwrap().iter().map(|v| f64::from(case_number(v))).collect();
    assert_close(&probabilities, &want, "probabilities");
}
