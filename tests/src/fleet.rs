//! Support for end-to-end fleet tests: the real `outpost-coordinator` process (with its
//! embedded broker or an external one), enrolment of agents through the real CLI, bundles and
//! metrics. The real Mosquitto and the `mosquitto_pub`/`mosquitto_sub` helpers live in
//! [`crate::mosquitto`] and are re-exported here.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Agent, bin_dir, model, models_dir};

pub use crate::mosquitto::{
    Mosquitto, OBSERVER, client_identity, common_name, observer_identity, publish, publish_as,
    publish_retained, subscribe,
};

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(path.is_file(), "{} missing: run `cargo test --workspace`", path.display());
    path
}

/// Runs a workspace binary to completion: (exit code, stdout, stderr).
pub fn run(name: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin(name)).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `outpost-coordinator serve`.
pub struct Coordinator {
    child: Option<Child>,
    pub data_dir: PathBuf,
    /// `--broker URL` for an external broker, or `--broker-listen ADDR` for the embedded one.
    broker_args: [String; 2],
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    /// The API speaks HTTPS (certificate from the coordinator's CA).
    pub tls: bool,
    /// Extra environment (configuration overrides) for every start.
    pub env: Vec<(String, String)>,
    /// Extra `serve` arguments (e.g. `--config FILE`).
    pub args: Vec<String>,
}

impl Coordinator {
    /// Creates the coordinator's CA and keys without serving (so a broker can get its
    /// certificate first).
    pub fn init(data_dir: &Path) {
        let out = data_dir.join("init-certs");
        let (code, _, err) = run(
            "outpost-coordinator",
            &[
                "cert",
                "client",
                "--name",
                "init",
                "--out-dir",
                out.to_str().unwrap(),
                "--data-dir",
                data_dir.to_str().unwrap(),
            ],
        );
        assert_eq!(code, 0, "{err}");
    }

    /// Starts with an external broker at `broker` (`mqtts://…`).
    pub fn start(data_dir: &Path, broker: &str) -> Coordinator {
        Coordinator::start_with(data_dir, ["--broker".into(), broker.into()], false)
    }

    /// A replica on PostgreSQL at `store_url`, reaching the broker at `broker` (the replicas'
    /// listener) and telling devices `advertised` at enrolment; `env` adds configuration.
    pub fn start_replica(
        data_dir: &Path,
        broker: &str,
        advertised: &str,
        store_url: &str,
        env: &[(&str, &str)],
    ) -> Coordinator {
        let mut c = Coordinator::unstarted(data_dir, ["--broker".into(), broker.into()], false);
        c.env = [
            ("OUTPOST_COORDINATOR_STORE__URL", store_url),
            ("OUTPOST_COORDINATOR_BROKER__ADVERTISED_URL", advertised),
        ]
        .iter()
        .chain(env)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        c.resume();
        c
    }

    /// Starts with its embedded broker on a free port; returns the broker's port too.
    pub fn start_embedded(data_dir: &Path) -> (Coordinator, u16) {
        let port = free_port();
        (
            Coordinator::start_with(data_dir, ["--broker-listen".into(), format!("127.0.0.1:{port}")], false),
            port,
        )
    }

    /// Like [`Coordinator::start_embedded`], with configuration overrides in the environment
    /// (`OUTPOST_COORDINATOR_…`).
    pub fn start_embedded_with(data_dir: &Path, env: &[(&str, &str)]) -> (Coordinator, u16) {
        let port = free_port();
        let mut c =
            Coordinator::unstarted(data_dir, ["--broker-listen".into(), format!("127.0.0.1:{port}")], false);
        c.env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        c.resume();
        (c, port)
    }

    /// Like [`Coordinator::start_embedded`], with a configuration file.
    pub fn start_embedded_configured(data_dir: &Path, config: &Path) -> (Coordinator, u16) {
        let port = free_port();
        let mut c =
            Coordinator::unstarted(data_dir, ["--broker-listen".into(), format!("127.0.0.1:{port}")], false);
        c.args = vec!["--config".into(), config.display().to_string()];
        c.resume();
        (c, port)
    }

    /// Like [`Coordinator::start_embedded`], with the API on HTTPS (`api.tls = "on"`).
    pub fn start_embedded_tls(data_dir: &Path) -> (Coordinator, u16) {
        let port = free_port();
        (
            Coordinator::start_with(data_dir, ["--broker-listen".into(), format!("127.0.0.1:{port}")], true),
            port,
        )
    }

    /// The CA that signed the API's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.data_dir.join("pki/ca.pem")
    }

    fn start_with(data_dir: &Path, broker_args: [String; 2], tls: bool) -> Coordinator {
        let mut c = Coordinator::unstarted(data_dir, broker_args, tls);
        c.resume();
        c
    }

    fn unstarted(data_dir: &Path, broker_args: [String; 2], tls: bool) -> Coordinator {
        Coordinator {
            child: None,
            data_dir: data_dir.to_owned(),
            broker_args,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: Arc::new(Mutex::new(Vec::new())),
            tls,
            env: Vec::new(),
            args: Vec::new(),
        }
    }

    /// Starts the process (again) on the same data directory.
    pub fn resume(&mut self) {
        let listen = if self.addr.port() == 0 { "127.0.0.1:0".to_owned() } else { self.addr.to_string() };
        let mut child = Command::new(bin("outpost-coordinator"))
            .args(["serve", "--log-format", "json", "--listen", &listen, "--data-dir"])
            .arg(&self.data_dir)
            .args(&self.broker_args)
            .args(&self.args)
            .env("OUTPOST_COORDINATOR_API__TLS", if self.tls { "on" } else { "auto" })
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let lines = Arc::clone(&self.log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<Value>(&line)
                    && event["message"] == "listening"
                    && let Some(addr) = event["addr"].as_str().and_then(|a| a.parse::<SocketAddr>().ok())
                {
                    let _ = tx.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => self.addr = addr,
            Err(_) => {
                let _ = child.kill();
                panic!("coordinator did not listen; log:\n{}", self.log());
            }
        }
        self.child = Some(child);
        self.wait_subscribed();
    }

    /// Waits until the coordinator is subscribed at its broker: before that, reports are
    /// published to nobody (agents resend them; a test's one-off publish would be lost).
    fn wait_subscribed(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = if self.tls {
                // No TLS client here for a raw GET: the CLI reads the metrics page instead.
                let log = self.log();
                (log.contains("connected to broker") && self.ctl(&["model", "list"]).0 == 0)
                    .then(|| "outpost_coordinator_broker_subscribed 1".to_owned())
            } else {
                http_get(self.addr, "/metrics")
            };
            if text.is_some_and(|t| metric(&t, "outpost_coordinator_broker_subscribed") >= 1.0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "coordinator never subscribed at its broker; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn token_file(&self) -> PathBuf {
        self.data_dir.join("admin.token")
    }

    /// Stops with SIGTERM (or SIGKILL) and waits.
    pub fn stop(&mut self, signal: nix::sys::signal::Signal) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
            let _ = child.wait();
        }
    }

    /// `outpostctl` against this coordinator.
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let mut all = vec![
            "--url".to_owned(),
            self.url(),
            "--token-file".to_owned(),
            self.token_file().display().to_string(),
        ];
        if self.tls {
            all.extend(["--ca-file".to_owned(), self.ca_file().display().to_string()]);
        }
        all.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        run("outpostctl", &refs)
    }

    /// A fresh enrolment token.
    pub fn token(&self, labels: &str) -> String {
        let (code, out, err) = self.ctl(&["device", "token", "create", "--labels", labels]);
        assert_eq!(code, 0, "token create: {err}");
        out.trim().to_owned()
    }

    /// The coordinator's typed API client (`outpost-client`, as `outpostctl` and the demo
    /// use it) with the admin token, and the CA when the API speaks HTTPS.
    pub fn client(&self) -> outpost_client::Client {
        let token = std::fs::read_to_string(self.token_file()).expect("the admin token exists once serving");
        let ca = self.tls.then(|| std::fs::read(self.ca_file()).expect("the coordinator's CA"));
        outpost_client::Client::new(&self.url(), &token, ca.as_deref(), Duration::from_secs(30))
            .expect("a client of the coordinator's URL")
    }

    /// The fleet view of one device (`{"error": …}` with the coordinator's message when it
    /// refuses, e.g. before the device enrolled).
    pub async fn device(&self, id: &str) -> Value {
        let (client, path) = (self.client(), format!("/api/v1/devices/{id}"));
        match tokio::task::spawn_blocking(move || client.get::<Value>(&path)).await.unwrap() {
            Ok(view) => view,
            Err(outpost_client::ClientError::Refused { message, .. }) => {
                serde_json::json!({ "error": message })
            }
            Err(e) => panic!("device {id}: {e}"),
        }
    }

    /// The coordinator's Prometheus text.
    pub async fn metrics(&self) -> String {
        let client = self.client();
        let bytes = tokio::task::spawn_blocking(move || client.get_bytes("/metrics")).await.unwrap();
        String::from_utf8(bytes.unwrap_or_else(|e| panic!("/metrics: {e}"))).expect("UTF-8 metrics")
    }

    /// `rollout status ID` as JSON.
    pub fn rollout_status(&self, id: &str) -> Value {
        serde_json::from_str(&ok(self.ctl(&["--json", "rollout", "status", id]), "rollout status")).unwrap()
    }

    /// Waits until `done` holds for rollout `id`'s status, or panics naming `what` with the last
    /// status and the coordinator's log.
    pub async fn wait_rollout(
        &self,
        id: &str,
        timeout: Duration,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.rollout_status(id);
            if done(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "rollout {id}: never {what}:\n{v:#}\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `check` holds for the device view, or panics with the last view.
    pub async fn wait_device(&self, id: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let view = self.device(id).await;
            if check(&view) {
                return view;
            }
            assert!(Instant::now() < deadline, "device never reached the expected state: {view:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A plain blocking HTTP/1.0 GET (usable outside an async context); `None` on any failure.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_owned()).filter(|_| head.contains(" 200 "))
}

/// The status code a plain-HTTP GET of `path` answers (`None`: no answer within 5 s).
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

/// Enrols an agent data directory with a token; returns the device id.
pub fn enroll(data_dir: &Path, coordinator: &Coordinator, token: &str) -> Result<String, String> {
    let url = coordinator.url();
    let ca = coordinator.ca_file().display().to_string();
    let mut args =
        vec!["enroll", "--coordinator", &url, "--token", token, "--data-dir", data_dir.to_str().unwrap()];
    if coordinator.tls {
        args.extend(["--ca-file", &ca]);
    }
    let (code, out, err) = run("outpost-agent", &args);
    if code == 0 { Ok(out.trim().to_owned()) } else { Err(err) }
}

/// `outpostctl bundle create` of fixture `stem` as `name@version` into `out`, signed by `key`
/// when given (no baseline): what `(code, stdout, stderr)` it printed.
pub fn bundle_create(
    stem: &str,
    name: &str,
    version: &str,
    key: Option<&Path>,
    out: &Path,
) -> (i32, String, String) {
    let model = model(stem);
    let mut args = vec![
        "bundle",
        "create",
        model.to_str().unwrap(),
        "--name",
        name,
        "--version",
        version,
        "--out",
        out.to_str().unwrap(),
    ];
    if let Some(key) = key {
        args.extend(["--key", key.to_str().unwrap()]);
    }
    run("outpostctl", &args)
}

/// Reads one value from Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Enrols the agent data directory `dir` at `coordinator` with `labels` and writes `config` as
/// its `agent.toml`; returns the device id and the config's path.
pub fn enrol_with_config(
    coordinator: &Coordinator,
    dir: &Path,
    labels: &str,
    config: &str,
) -> (String, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let device = enroll(dir, coordinator, &coordinator.token(labels)).unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(&path, config).unwrap();
    (device, path)
}

/// Starts an enrolled agent on `dir` with `config`, reporting every second.
pub fn reporting_agent(dir: &Path, config: &Path) -> Agent {
    Agent::builder()
        .data_dir(dir)
        .args(&["-c", config.to_str().unwrap()])
        .env("OUTPOST_TELEMETRY__INTERVAL_SECS", "1")
        .start()
}

// Registry helpers shared by the registry and rollout tests: the `bc` breast-cancer model.

/// The coordinator's release key (what agents must trust).
pub fn release_key(coordinator: &Coordinator) -> String {
    let key = coordinator.data_dir.join("pki/signing.pk8");
    let (code, out, err) = run("outpostctl", &["key", "show", key.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    out.trim().to_owned()
}

/// Enrols a data dir with `labels` and starts an agent trusting `keys` (registry tests).
pub fn start_agent(
    coordinator: &Coordinator,
    dir: &Path,
    labels: &str,
    keys: &[&str],
    extra: &str,
) -> (Agent, String) {
    let quoted: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    let config = format!("[registry]\ntrusted_keys = [{}]\n{extra}", quoted.join(", "));
    let (device, config) = enrol_with_config(coordinator, dir, labels, &config);
    (reporting_agent(dir, &config), device)
}

pub async fn served(agent: &Agent) -> Option<String> {
    let (status, body) = agent.get("/v2/models/bc").await;
    (status == 200 && body["state"] == "ready")
        .then(|| body["versions"][0].as_str().unwrap_or_default().to_owned())
}

pub async fn wait_serving(agent: &Agent, version: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while served(agent).await.as_deref() != Some(version) {
        assert!(Instant::now() < deadline, "agent never served bc {version}; log:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn ok(result: (i32, String, String), what: &str) -> String {
    assert_eq!(result.0, 0, "{what} failed: {}{}", result.1, result.2);
    result.1
}

pub fn push(c: &Coordinator, stem: &str, version: &str) -> (i32, String, String) {
    push_with(c, stem, version, &[])
}

/// [`push`] with more `model push` arguments (`--encrypt-with file:…`).
pub fn push_with(c: &Coordinator, stem: &str, version: &str, extra: &[&str]) -> (i32, String, String) {
    let path = model(stem);
    let baseline = models_dir().join("breast_cancer_holdout.csv");
    let args = [
        "model",
        "push",
        path.to_str().unwrap(),
        "--name",
        "bc",
        "--version",
        version,
        "--baseline",
        baseline.to_str().unwrap(),
        "--label",
        "label",
        "--meta",
        "team=ml",
    ];
    c.ctl(&[&args[..], extra].concat())
}

pub fn validate(c: &Coordinator, version: &str) -> (i32, Value) {
    let dataset = models_dir().join("breast_cancer_validation.csv");
    let (code, out, err) = c.ctl(&[
        "--json",
        "model",
        "validate",
        &format!("bc@{version}"),
        "--dataset",
        dataset.to_str().unwrap(),
        "--label",
        "label",
        "--segment",
        "site",
        // Latency on a loaded test machine (debug builds, tests in parallel) is noise: the
        // p99 check is unit-tested in `validation.rs` and kept out of pass/fail here.
        "--p99-slack-ms",
        "10000",
    ]);
    let report: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("validate printed no report ({e}): {out}{err}"));
    (code, report)
}

/// Validates `bc@version` with a lax policy (accuracy ≥ 50 %, the regression check waived): how
/// `2.0.0-bad` gets past the gate in the tests, so only a rollout's gates stand in its way.
pub fn validate_lax(c: &Coordinator, version: &str) {
    let dataset = models_dir().join("breast_cancer_validation.csv");
    ok(
        c.ctl(&[
            "model",
            "validate",
            &format!("bc@{version}"),
            "--dataset",
            dataset.to_str().unwrap(),
            "--label",
            "label",
            "--min-accuracy",
            "0.5",
            "--max-accuracy-drop",
            "1",
            "--max-f1-drop",
            "1",
            "--p99-slack-ms",
            "10000",
        ]),
        "lax validate",
    );
}

impl Coordinator {
    /// `outpostctl --json ARGS`, parsed; fails the test unless it answered.
    pub fn ctl_json(&self, args: &[&str]) -> Value {
        let all = [&["--json"][..], args].concat();
        let out = ok(self.ctl(&all), &args.join(" "));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{}: {e}: {out}", args.join(" ")))
    }

    /// Each objective's event count in `slo status MODEL`.
    pub fn slo_events(&self, model: &str) -> Vec<u64> {
        let status = self.ctl_json(&["slo", "status", model]);
        let objectives = status[0]["objectives"].as_array().unwrap_or_else(|| panic!("{status}"));
        objectives.iter().map(|o| o["events"].as_u64().unwrap()).collect()
    }

    /// `audit verify`'s entry count; fails the test unless the chain verifies.
    pub fn audit_entries(&self) -> u64 {
        let out = ok(self.ctl(&["audit", "verify"]), "audit verify");
        let count = out.split("intact: ").nth(1).and_then(|rest| rest.split(' ').next());
        count.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("audit verify: {out}"))
    }
}

/// A coordinator with history: two agents (`site=s0`, `site=s1`, under `dir`) enrolled with `c`,
/// `bc` 1.0.0 and 1.1.0 pushed and validated, 1.0.0 deployed, then a one-wave rollout of 1.1.0
/// finished under labelled traffic (gated on errors and latency). Returns the agents with their
/// device ids, and the rollout as it finished; the traffic has stopped.
pub async fn with_a_finished_rollout(c: &Coordinator, dir: &Path) -> (Vec<(Agent, String)>, Value) {
    let key = release_key(c);
    let agents: Vec<_> = (0..2)
        .map(|i| start_agent(c, &dir.join(format!("agent-{i}")), &format!("site=s{i}"), &[&key], ""))
        .collect();
    for v in ["1.0.0", "1.1.0"] {
        ok(push(c, &format!("breast_cancer-{v}"), v), "push");
        assert_eq!(validate(c, v).0, 0, "validate {v}");
    }
    ok(c.ctl(&["deploy", "bc@1.0.0"]), "deploy 1.0.0");
    for (agent, _) in &agents {
        wait_serving(agent, "1.0.0").await;
    }
    let all: Vec<&Agent> = agents.iter().map(|(a, _)| a).collect();
    let traffic = crate::LabelledTraffic::start(&all, "bc", Duration::from_millis(10));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = c.ctl_json(&[
        "rollout",
        "start",
        "bc@1.1.0",
        "--waves",
        "100",
        "--bake",
        "4s",
        "--max-extensions",
        "10",
        "--gate",
        "error_rate<=+5%",
        "--gate",
        "p95<=3x",
        "--min-requests",
        "30",
        "--latency-slack-ms",
        "50",
    ]);
    let id = started["id"].as_str().unwrap().to_owned();
    let finished = c
        .wait_rollout(&id, Duration::from_secs(120), "finished", |v| {
            assert!(v["phase"] != "rolled_back" && v["phase"] != "paused", "{v:#}");
            v["phase"] == "succeeded"
        })
        .await;
    drop(traffic);
    (agents, finished)
}

/// The agents carry on with `c` (restored, moved, restarted): each reports after `since_ms` with
/// the certificate it holds (no enrolment), and a deployment of `bc@1.0.0` — desired states
/// signed with `c`'s keys — reaches every one.
pub async fn agents_carry_on(c: &Coordinator, agents: &[(Agent, String)], since_ms: u64) {
    for (_, device) in agents {
        c.wait_device(device, Duration::from_secs(60), |d| {
            d["last_seen_ms"].as_u64().is_some_and(|t| t > since_ms)
        })
        .await;
    }
    ok(c.ctl(&["deploy", "bc@1.0.0"]), "deploy");
    for (agent, _) in agents {
        wait_serving(agent, "1.0.0").await;
    }
}
