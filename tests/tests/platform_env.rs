//! Deployments that start: Kubernetes injects service-link variables for every Service of a
//! namespace into every pod (`OUTPOST_COORDINATOR_SERVICE_HOST`, `OUTPOST_COORDINATOR_PORT=tcp://…`,
//! …), and both binaries treat `OUTPOST_*` variables as configuration. Here the coordinator and
//! an agent start with exactly the variables Kubernetes would inject for every Service in
//! `deploy/k8s` — derived from the manifests — and come up; a misspelt real key still stops
//! them, naming the key it was probably meant to be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use outpost_tests::fleet::Coordinator;
use outpost_tests::{Agent, bin_dir, model};
use serde::Deserialize;
use serde_yaml::Value;

/// Every variable Kubernetes' service links would inject for the Services in `deploy/k8s`
/// (headless Services inject none), with made-up cluster IPs.
fn service_link_variables() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut vars = Vec::new();
    let mut services = 0;
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let doc = Value::deserialize(document).unwrap();
            if doc["kind"].as_str() != Some("Service") || doc["spec"]["clusterIP"].as_str() == Some("None") {
                continue;
            }
            services += 1;
            let ip = format!("10.96.0.{}", 10 + services);
            let name = doc["metadata"]["name"].as_str().unwrap().to_uppercase().replace('-', "_");
            let ports = doc["spec"]["ports"].as_sequence().unwrap();
            for (i, port) in ports.iter().enumerate() {
                let number = port["port"].as_u64().unwrap();
                let proto = port["protocol"].as_str().unwrap_or("TCP").to_uppercase();
                let lower = proto.to_lowercase();
                if i == 0 {
                    vars.push((format!("{name}_SERVICE_HOST"), ip.clone()));
                    vars.push((format!("{name}_SERVICE_PORT"), number.to_string()));
                    vars.push((format!("{name}_PORT"), format!("{lower}://{ip}:{number}")));
                }
                if let Some(port_name) = port["name"].as_str() {
                    let port_name = port_name.to_uppercase().replace('-', "_");
                    vars.push((format!("{name}_SERVICE_PORT_{port_name}"), number.to_string()));
                }
                let base = format!("{name}_PORT_{number}_{proto}");
                vars.push((base.clone(), format!("{lower}://{ip}:{number}")));
                vars.push((format!("{base}_PROTO"), lower.clone()));
                vars.push((format!("{base}_PORT"), number.to_string()));
                vars.push((format!("{base}_ADDR"), ip.clone()));
            }
        }
    }
    assert!(services >= 2, "expected the coordinator's and the example app's Services");
    vars
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_binaries_start_with_the_variables_kubernetes_injects_for_every_service() {
    let vars = service_link_variables();
    for expected in [
        "OUTPOST_COORDINATOR_SERVICE_HOST",
        "OUTPOST_COORDINATOR_PORT",
        "OUTPOST_COORDINATOR_PORT_7400_TCP_ADDR",
        "OUTPOST_COORDINATOR_SERVICE_PORT_MQTTS",
    ] {
        assert!(vars.iter().any(|(k, _)| k == expected), "{expected} not derived: {vars:#?}");
    }
    let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    // The coordinator comes up (start waits for its health endpoint) and serves its API.
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Coordinator::start_embedded_with(&dir.path().join("coordinator"), &env);
    let metrics = c.metrics().await;
    assert!(metrics.contains("outpost_coordinator"), "{metrics}");

    // So does an agent sidecar, with a model, to ready.
    let mut builder = Agent::builder().model("bc", &model("breast_cancer-1.0.0"));
    for (k, v) in &vars {
        builder = builder.env(k, v);
    }
    let agent = builder.start();
    agent.wait_ready(Duration::from_secs(60)).await;
}

#[test]
fn a_misspelt_key_still_stops_each_binary_and_names_the_closest_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin_dir().join("outpost-agent"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("OUTPOST_DATA_DIR", dir.path())
        .env("OUTPOST_LISTN", "127.0.0.1:0")
        .env("OUTPOST_COORDINATOR_SERVICE_HOST", "10.96.0.11")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("listn") && err.contains("did you mean `listen`?"), "{err}");

    let out = Command::new(bin_dir().join("outpost-coordinator"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("OUTPOST_COORDINATOR_DATA_DRI", dir.path())
        .env("OUTPOST_COORDINATOR_PORT", "tcp://10.96.0.11:7400")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("data_dri") && err.contains("did you mean `data_dir`?"), "{err}");
}
