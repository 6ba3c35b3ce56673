//! Dynamic batching (`[batching.<model>]`): concurrent requests to one model run as one tract
//! batch, and every client gets exactly the answer it would have got alone — the same output
//! values, its own prediction ids, and log records that join its feedback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use outpost_tests::{Agent, agent_bin, model, reference, rows};
use serde_json::{Value, json};

const MODELS: [(&str, &str); 2] = [("cnn", "digits_cnn-1.0.0"), ("forest", "breast_cancer_rf-1.0.0")];

fn start(batching: bool) -> Agent {
    let mut builder = Agent::builder();
    for (name, stem) in MODELS {
        builder = builder.model(name, &model(stem));
        if batching {
            let upper = name.to_uppercase();
            builder = builder
                .env(&format!("OUTPOST_BATCHING__{upper}__MAX_BATCH"), "16")
                // Long enough that a debug build's 64 clients fill batches before it passes.
                .env(&format!("OUTPOST_BATCHING__{upper}__MAX_QUEUE_DELAY_US"), "20000");
        }
    }
    builder
        // Each answer waits for its records to be on disk: the batched path must keep that.
        .env("OUTPOST_PREDICTION_LOG__DURABILITY", "sync")
        .env("OUTPOST_RUNTIME__QUEUE_CAPACITY", "1024")
        .start()
}

/// Requests of one or two held-out rows each, for `model`.
fn requests(stem: &str, count: usize) -> Vec<Value> {
    let tensor = &reference(stem)["inputs"][0];
    let (data, len) = rows(tensor);
    let available = data.len() / len;
    let mut shape: Vec<u64> =
        tensor["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
    (0..count)
        .map(|i| {
            let n = 1 + i % 2;
            let first = (i * 3) % (available - 1);
            shape[0] = n as u64;
            let rows = data[first * len..(first + n) * len].to_vec();
            json!({"inputs": [{"name": tensor["name"], "shape": shape, "datatype": tensor["datatype"], "data": rows}]})
        })
        .collect()
}

/// Sends every request at once from `clients` concurrent clients; answers in request order.
async fn send_all(agent: &Arc<Agent>, name: &str, bodies: &[Value], clients: usize) -> Vec<Value> {
    let bodies = Arc::new(bodies.to_vec());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let answers = Arc::new(std::sync::Mutex::new(vec![Value::Null; bodies.len()]));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (agent, bodies, next, answers) =
                (Arc::clone(agent), Arc::clone(&bodies), Arc::clone(&next), Arc::clone(&answers));
            let path = format!("/v2/models/{name}/infer");
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(body) = bodies.get(i) else { return };
                    let (status, answer) = agent.post_json(&path, body).await;
                    assert_eq!(status, 200, "request {i}: {answer}");
                    answers.lock().unwrap()[i] = answer;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    Arc::into_inner(answers).unwrap().into_inner().unwrap()
}

/// Checks that a batched answer is the unbatched one: the same outputs, shapes, datatypes and
/// integer values; floats within 1e-6 relative (tract's CNN kernels round the last bit of a
/// row differently by its position in the batch — an unbatched two-row request differs from
/// two one-row requests the same way). Returns the largest float difference seen.
fn same_answer(name: &str, i: usize, answer: &Value, alone: &Value) -> f64 {
    let (found, expected) = (answer["outputs"].as_array().unwrap(), alone["outputs"].as_array().unwrap());
    assert_eq!(found.len(), expected.len(), "{name} request {i}: outputs");
    let mut largest = 0.0f64;
    for (f, e) in found.iter().zip(expected) {
        for key in ["name", "datatype", "shape"] {
            assert_eq!(f[key], e[key], "{name} request {i}: output {key}");
        }
        let (fd, ed) = (f["data"].as_array().unwrap(), e["data"].as_array().unwrap());
        assert_eq!(fd.len(), ed.len(), "{name} request {i}: output length");
        for (a, b) in fd.iter().zip(ed) {
            if e["datatype"] == "FP32" || e["datatype"] == "FP64" {
                let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                let diff = (a - b).abs();
                assert!(diff <= 1e-6 * b.abs().max(1e-3), "{name} request {i}: {a} batched, {b} alone");
                largest = largest.max(diff);
            } else {
                assert_eq!(a, b, "{name} request {i}: {} output differs", e["name"]);
            }
        }
    }
    largest
}

fn metric(text: &str, name: &str, model: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(&format!("model=\"{model}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_answers_equal_unbatched_ones_and_join_their_own_feedback() {
    let (alone, batched) = (Arc::new(start(false)), Arc::new(start(true)));
    alone.wait_ready(Duration::from_secs(60)).await;
    batched.wait_ready(Duration::from_secs(60)).await;

    for (name, stem) in MODELS {
        let (_, meta) = batched.get(&format!("/v2/models/{name}")).await;
        assert_eq!(
            meta["parameters"]["dynamic_batching"],
            json!({"max_batch": 16, "max_queue_delay_us": 20000}),
            "{meta}"
        );
        let bodies = requests(stem, 160);
        let expected = send_all(&alone, name, &bodies, 4).await;
        let answers = send_all(&batched, name, &bodies, 64).await;
        let mut ids = HashSet::new();
        let mut largest = 0.0f64;
        for (i, (answer, alone)) in answers.iter().zip(&expected).enumerate() {
            largest = largest.max(same_answer(name, i, answer, alone));
            let rows = bodies[i]["inputs"][0]["shape"][0].as_u64().unwrap() as usize;
            let own = answer["parameters"]["prediction_ids"].as_array().unwrap();
            assert_eq!(own.len(), rows, "{name} request {i}: one prediction id per row");
            for id in own {
                assert!(ids.insert(id.as_u64().unwrap()), "{name}: prediction id {id} given twice");
            }
        }

        println!("{name}: largest difference between a batched and an unbatched output value: {largest:e}");
        if name == "forest" {
            assert_eq!(largest, 0.0, "our tree kernel answers bit for bit the same in a batch");
        }

        // Batches formed: fewer runs than requests, and every row ran exactly once.
        let text = batched.metrics_text().await;
        let runs = metric(&text, "outpost_agent_batch_rows_count", name);
        let batched_rows = metric(&text, "outpost_agent_batch_rows_sum", name);
        let total_rows: usize =
            bodies.iter().map(|b| b["inputs"][0]["shape"][0].as_u64().unwrap() as usize).sum();
        assert_eq!(batched_rows as usize, total_rows, "{name}: every row ran in exactly one batch");
        println!("{name}: {} requests, {total_rows} rows, {runs} model runs", bodies.len());
        assert!(
            runs <= bodies.len() as f64 * 0.75,
            "{name}: {} requests ran in {runs} batches",
            bodies.len()
        );
        assert_eq!(metric(&alone.metrics_text().await, "outpost_agent_batch_rows_count", name), 0.0);

        // Each id joins the record of its own row: feedback naming the label the answer gave
        // for that row counts as correct every time.
        if name == "forest" {
            let mut feedback = Vec::new();
            for answer in &answers {
                let labels =
                    answer["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "label").unwrap();
                let ids = answer["parameters"]["prediction_ids"].as_array().unwrap();
                for (id, label) in ids.iter().zip(labels["data"].as_array().unwrap()) {
                    feedback.push(json!({"prediction_id": id, "label": label}));
                }
            }
            let (status, body) = batched.post_json("/v1/feedback", &json!({ "feedback": feedback })).await;
            assert_eq!(status, 200, "{body}");
            assert!(body["results"].as_array().unwrap().iter().all(|r| r == "joined"), "{body}");
            let text = batched.metrics_text().await;
            assert_eq!(
                metric(&text, "outpost_agent_labelled_correct_total", name),
                total_rows as f64,
                "every id joined its own row's prediction"
            );
        }
    }
}

#[test]
fn batching_settings_out_of_range_stop_the_start_naming_the_key() {
    for (key, value, expected) in [
        ("OUTPOST_BATCHING__FOREST__MAX_BATCH", "1", "batching.forest.max_batch"),
        ("OUTPOST_BATCHING__FOREST__MAX_BATCH", "many", "MAX_BATCH"),
    ] {
        let child = Command::new(agent_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--model"])
            .arg(format!("forest={}", model("breast_cancer_rf-1.0.0").display()))
            .env(key, value)
            .env("OUTPOST_DATA_DIR", tempfile::tempdir().unwrap().path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (code, stderr) = outpost_tests::refused_exit(
            child,
            Duration::from_secs(20),
            "the agent started with bad batching",
        );
        assert_eq!(code, 2, "{key}={value}: {stderr}");
        assert!(stderr.contains(expected), "{key}={value}: {stderr}");
    }
    let child = Command::new(agent_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--model"])
        .arg(format!("forest={}", model("breast_cancer_rf-1.0.0").display()))
        .env("OUTPOST_BATCHING__FOREST__MAX_QUEUE_DELAY_US", "5000")
        .env("OUTPOST_DATA_DIR", tempfile::tempdir().unwrap().path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, stderr) =
        outpost_tests::refused_exit(child, Duration::from_secs(20), "started without max_batch");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("max_batch"), "a table without max_batch names the missing key: {stderr}");
}
