//! Support for Outpost's end-to-end tests: start the real `outpost-agent` binary on a free
//! port, wait for it, talk to it over HTTP, send it signals, and read the committed fixtures.
//!
//! The binaries are the ones `cargo test --workspace` builds next to the test executables
//! (`target/<profile>/`); `TEST_BIN_DIR` points elsewhere if needed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod alerting;
pub mod brokers;
pub mod demo;
pub mod disk;
pub mod fleet;
pub mod front;
pub mod mosquitto;
pub mod postgres;
pub mod proxy;

/// Debian's libfaketime, or `None` (skipped, with a message) where it is missing — required
/// when `CI` is set (`.ci/run` installs the `faketime` package).
pub fn libfaketime() -> Option<String> {
    let path = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    if Path::new(path).exists() {
        return Some(path.to_owned());
    }
    assert!(std::env::var_os("CI").is_none(), "{path} is missing: apt-get install faketime");
    eprintln!("skipped: {path} is missing (apt-get install faketime)");
    None
}

/// The folder holding the workspace's binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TEST_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test-exe> → target/<profile>
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).expect("target/<profile> folder").to_path_buf()
}

/// Path of the `outpost-agent` binary; fails with a hint when it was not built.
pub fn agent_bin() -> PathBuf {
    let path = bin_dir().join("outpost-agent");
    assert!(
        path.is_file(),
        "{} does not exist: run the tests with `cargo test --workspace` so the agent binary is built",
        path.display()
    );
    path
}

/// The committed example models (`tests/fixtures/models`).
pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/models")
}

/// Path of a committed model file, e.g. `model("breast_cancer-1.0.0")`.
pub fn model(stem: &str) -> PathBuf {
    models_dir().join(format!("{stem}.onnx"))
}

/// A committed reference file, parsed.
pub fn reference(stem: &str) -> Value {
    let text = std::fs::read_to_string(models_dir().join(format!("{stem}.reference.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A running `outpost-agent serve` process.
pub struct Agent {
    child: Child,
    /// The agent's data directory (a fresh temporary one unless the builder named one).
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    pub http: reqwest::Client,
}

/// How to start an agent.
#[derive(Default)]
pub struct AgentBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
    data_dir: Option<PathBuf>,
}

impl AgentBuilder {
    /// Adds `--model NAME=PATH`.
    pub fn model(mut self, name: &str, path: &Path) -> Self {
        self.args.push("--model".into());
        self.args.push(format!("{name}={}", path.display()));
        self
    }

    /// Adds raw arguments after `serve`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Sets an environment variable (e.g. an `OUTPOST_*` override).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Uses this data directory instead of a fresh temporary one (to restart on the same state).
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_owned());
        self
    }

    /// Starts the process and waits until it listens (not until it is ready).
    pub fn start(self) -> Agent {
        let (data_dir, temp) = match self.data_dir {
            Some(dir) => (dir, None),
            None => {
                let temp = tempfile::tempdir().expect("temporary data dir");
                (temp.path().to_owned(), Some(temp))
            }
        };
        let mut command = Command::new(agent_bin());
        command
            .arg("--log-format")
            .arg("json")
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("OUTPOST_DATA_DIR", &data_dir);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start outpost-agent");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<Value>(&line)
                    && event["message"] == "listening"
                    && let Some(addr) = event["addr"].as_str().and_then(|a| a.parse::<SocketAddr>().ok())
                {
                    let _ = addr_tx.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = match addr_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("agent did not start listening; its log:\n{}", log.lock().unwrap().join("\n"));
            }
        };
        Agent { child, data_dir, _temp: temp, addr, log, http: reqwest::Client::new() }
    }
}

impl Agent {
    pub fn builder() -> AgentBuilder {
        AgentBuilder::default()
    }

    /// Full URL of a path on this agent.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GET a path; returns status and parsed JSON (or Null for a non-JSON body).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// POST a JSON body; returns status and parsed JSON.
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, serde_json::to_vec(body).unwrap(), &[]).await
    }

    /// POST raw bytes with extra headers; returns status and parsed JSON (Null if not JSON).
    pub async fn post_raw(&self, path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut request = self.http.post(self.url(path)).body(body);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// GET `/metrics` as text.
    pub async fn metrics_text(&self) -> String {
        self.http.get(self.url("/metrics")).send().await.unwrap().text().await.unwrap()
    }

    /// Polls `/v2/health/ready` until it answers 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = self.http.get(self.url("/v2/health/ready")).send().await
                && r.status().as_u16() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "agent not ready after {timeout:?}; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("agent did not exit within {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a process that should stop by itself (a start that must be refused) and returns
/// its exit code and stderr; panics saying `what` if it still runs after `timeout`.
pub fn refused_exit(mut child: Child, timeout: Duration, what: &str) -> (i32, String) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (status.code().unwrap_or(-1), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `outpost-agent` with arguments to completion; returns (exit code, stdout, stderr).
pub fn run_agent(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(agent_bin()).args(args).stdin(Stdio::null()).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The rows of a reference tensor: `(flat data, row length)`.
pub fn rows(tensor: &Value) -> (Vec<Value>, usize) {
    let shape: Vec<usize> =
        tensor["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
    let row_len: usize = shape[1..].iter().product();
    (tensor["data"].as_array().unwrap().clone(), row_len)
}

/// Asserts that two float lists agree within `abs + rel * |expected|`.
pub fn assert_close(found: &[f64], expected: &[f64], what: &str) {
    assert_eq!(found.len(), expected.len(), "{what}: length");
    for (i, (f, e)) in found.iter().zip(expected).enumerate() {
        assert!((f - e).abs() <= 1e-5 + 1e-5 * e.abs(), "{what}[{i}]: found {f}, onnxruntime {e}");
    }
}

/// Requests sent without pause by a few clients; what they saw.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    /// Per client, the versions that answered, in order (repeats folded).
    versions: Arc<Mutex<Vec<Vec<String>>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `clients` clients posting `body` to model `model`'s infer endpoint.
    pub fn start(agent: &Agent, model: &str, body: &Value, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let versions = Arc::new(Mutex::new(vec![Vec::<String>::new(); clients]));
        let body = serde_json::to_vec(body).unwrap();
        let url = agent.url(&format!("/v2/models/{model}/infer"));
        let tasks = (0..clients)
            .map(|client| {
                let (stop, ok, failed, versions) =
                    (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&versions));
                let (body, url) = (body.clone(), url.clone());
                tokio::spawn(async move {
                    let http = reqwest::Client::new();
                    while !stop.load(Ordering::Relaxed) {
                        let response = http.post(&url).body(body.clone()).send().await;
                        match response {
                            Ok(r) if r.status().as_u16() == 200 => {
                                let v: Value = r.json().await.unwrap_or(Value::Null);
                                let version = v["model_version"].as_str().unwrap_or("?").to_owned();
                                let mut all = versions.lock().unwrap();
                                let seen = &mut all[client];
                                if seen.last() != Some(&version) {
                                    seen.push(version);
                                }
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => {
                                eprintln!(
                                    "failed request: {} {}",
                                    r.status(),
                                    r.text().await.unwrap_or_default()
                                );
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                eprintln!("failed request: {e}");
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        Load { stop, ok, failed, versions, tasks }
    }

    /// Waits until every client has seen `version` answer.
    pub async fn wait_seen(&self, version: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .versions
            .lock()
            .unwrap()
            .iter()
            .all(|seen| seen.last().map(String::as_str) == Some(version))
        {
            assert!(
                Instant::now() < deadline,
                "clients never saw {version}: {:?}",
                self.versions.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Some more traffic on the new version.
        let target = self.ok.load(Ordering::Relaxed) + 200;
        while self.ok.load(Ordering::Relaxed) < target {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn finish(self) -> (u64, u64, Vec<Vec<String>>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let versions = self.versions.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed), versions)
    }

    /// Stops the clients and asserts that no request failed and that every client saw exactly
    /// `expected` (each sends one request at a time, so it sees every switch once); returns
    /// how many requests were answered.
    pub async fn finish_expecting(self, expected: &[&str]) -> u64 {
        let (answered, failed, versions) = self.finish().await;
        assert_eq!(failed, 0, "requests failed during the swaps ({answered} answered)");
        for seen in &versions {
            assert_eq!(seen, expected, "responses did not switch model_version cleanly: {versions:?}");
        }
        answered
    }
}

/// One held-out breast-cancer row as a V2 request body.
pub fn breast_cancer_row() -> Value {
    let reference = reference("breast_cancer-1.0.0");
    let (data, row_len) = rows(&reference["inputs"][0]);
    serde_json::json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, row_len], "data": data[..row_len]}]})
}

/// The validation set (`breast_cancer_validation.csv`): (site, 30 features, label) per row.
pub fn validation_rows() -> Vec<(String, Vec<f64>, i64)> {
    let text = std::fs::read_to_string(models_dir().join("breast_cancer_validation.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let (label, site) = (
        header.iter().position(|h| *h == "label").unwrap(),
        header.iter().position(|h| *h == "site").unwrap(),
    );
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split(',').collect();
            let features = cells
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != label && *i != site)
                .map(|(_, v)| v.parse().unwrap());
            (cells[site].to_owned(), features.collect(), cells[label].parse().unwrap())
        })
        .collect()
}

/// Labelled traffic: one client per agent answers validation rows through `model` (whatever
/// version the agent serves) and posts each row's true label to `/v1/feedback` at once — what a
/// rollout's accuracy gate reads. Runs until [`LabelledTraffic::stop`].
pub struct LabelledTraffic {
    stop: Arc<AtomicBool>,
    /// Answered requests per version.
    pub answered: Arc<Mutex<std::collections::BTreeMap<String, u64>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl LabelledTraffic {
    /// Starts one client per agent, pausing `pause` between requests.
    pub fn start(agents: &[&Agent], model: &str, pause: Duration) -> LabelledTraffic {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
        let rows = Arc::new(validation_rows());
        let tasks = agents
            .iter()
            .enumerate()
            .map(|(n, agent)| {
                let (stop, answered, rows) = (Arc::clone(&stop), Arc::clone(&answered), Arc::clone(&rows));
                let infer = agent.url(&format!("/v2/models/{model}/infer"));
                let feedback = agent.url("/v1/feedback");
                tokio::spawn(async move {
                    let http = reqwest::Client::new();
                    let mut i = n * 7;
                    while !stop.load(Ordering::Relaxed) {
                        let (_, features, label) = &rows[i % rows.len()];
                        i += 1;
                        let body = serde_json::json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, features.len()], "data": features}]});
                        let answer = match http.post(&infer).json(&body).send().await {
                            Ok(r) if r.status().is_success() => r.json::<Value>().await.unwrap_or(Value::Null),
                            _ => Value::Null,
                        };
                        if let Some(id) = answer["parameters"]["prediction_ids"][0].as_u64() {
                            let version = answer["model_version"].as_str().unwrap_or("?").to_owned();
                            *answered.lock().unwrap().entry(version).or_default() += 1;
                            let label = serde_json::json!({"prediction_id": id, "label": label});
                            let _ = http.post(&feedback).json(&label).send().await;
                        }
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        LabelledTraffic { stop, answered, tasks }
    }

    /// Stops every client and waits for them.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
