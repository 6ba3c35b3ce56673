//! Serving benchmark: raw tract compute vs. end-to-end HTTP V2 JSON round trips on loopback.
//!
//! `cargo bench -p outpost-agent --bench serving` measures, for the breast_cancer and digits
//! example models and in one run:
//!   (a) raw tract compute per single-row request (the shared runtime's `Model::run`),
//!   (b) HTTP V2 JSON round trips against the real `outpost-agent` binary at increasing
//!       concurrency — throughput, p50, p99 —
//! and prints the overhead of (b) at concurrency 1 over (a), plus the agent's idle RSS and
//! binary size, next to the targets in DESIGN §8 (≤ 50 µs added at p50, idle RSS ≤ 20 MB).
//! Then the cost of encryption at rest: breast_cancer at concurrency 1 and 16 against two fresh
//! agents, `[encryption] mode = "on"` (the default) and `"off"`, in the same run.
//! Then dynamic batching on against off (the digits CNN and the breast-cancer forest at
//! concurrency 16 and 64); `BENCH_ONLY=batching` runs only that part.
//! `BENCH_SECONDS` sets the time per concurrency level (default 3); `BENCH_AGENT_BIN` points
//! (b) at another agent binary, e.g. `target/dist/outpost-agent`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use outpost_shared::Model;
use outpost_shared::reference::Reference;
use outpost_shared::tensor::tensor_from_json;
use serde_json::{Value, json};

const MODELS: [(&str, &str); 2] = [("breast_cancer", "breast_cancer-1.0.0"), ("digits", "digits_mlp-1.0.0")];
const CONCURRENCY: [usize; 4] = [1, 4, 16, 64];

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models")
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One row of the held-out set, as the V2 request body and as the runtime's input.
fn first_row(stem: &str) -> (Value, Vec<u64>, Vec<Value>) {
    let reference = Reference::load(&models_dir().join(format!("{stem}.reference.json"))).unwrap();
    let input = &reference.inputs[0];
    let row_len: usize = input.shape[1..].iter().product();
    let data: Vec<Value> = input.data.as_array().unwrap()[..row_len].to_vec();
    let mut shape: Vec<u64> = input.shape.iter().map(|&d| d as u64).collect();
    shape[0] = 1;
    let body =
        json!({"inputs": [{"name": input.name, "shape": shape, "datatype": input.datatype, "data": data}]});
    (body, shape, data)
}

fn raw_tract(stem: &str, iterations: usize) -> Vec<Duration> {
    let model = Model::load_file(&models_dir().join(format!("{stem}.onnx"))).unwrap();
    let (_, shape, data) = first_row(stem);
    let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let tensor = tensor_from_json(outpost_shared::DataType::F32, &shape, &Value::Array(data)).unwrap();
    for _ in 0..500 {
        model.run(vec![tensor.clone()]).unwrap();
    }
    let mut times = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let input = vec![tensor.clone()];
        let started = Instant::now();
        let out = model.run(input).unwrap();
        times.push(started.elapsed());
        std::hint::black_box(out);
    }
    times.sort();
    times
}

struct AgentProcess {
    child: Child,
    addr: SocketAddr,
    _data: tempfile::TempDir,
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent(encryption: &str) -> AgentProcess {
    start_agent_with(encryption, &MODELS, &[])
}

fn start_agent_with(encryption: &str, models: &[(&str, &str)], env: &[(String, String)]) -> AgentProcess {
    let mut command = Command::new(agent_bin());
    command.env("OUTPOST_ENCRYPTION__MODE", encryption);
    command.envs(env.iter().map(|(k, v)| (k, v)));
    command.args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"]);
    for &(name, stem) in models {
        command.arg("--model").arg(format!("{name}={}", models_dir().join(format!("{stem}.onnx")).display()));
    }
    let data = tempfile::tempdir().unwrap();
    command.env("OUTPOST_DATA_DIR", data.path());
    let mut child = command
        .env("OUTPOST_LOG__LEVEL", "warn,outpost_agent::server=info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(event) = serde_json::from_str::<Value>(&line)
                && event["message"] == "listening"
            {
                let _ = tx.send(event["addr"].as_str().unwrap().parse::<SocketAddr>().unwrap());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).expect("agent did not start");
    AgentProcess { child, addr, _data: data }
}

fn agent_bin() -> PathBuf {
    std::env::var_os("BENCH_AGENT_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_outpost-agent")), PathBuf::from)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn connection(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

async fn round_trip(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    path: &str,
    body: &Bytes,
) -> bool {
    let method = if body.is_empty() { hyper::Method::GET } else { hyper::Method::POST };
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let ok = response.status() == 200;
    let _ = response.into_body().collect().await.unwrap();
    ok
}

async fn wait_ready(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut sender = connection(addr).await;
        let request = hyper::Request::get("/v2/health/ready")
            .header("host", addr.to_string())
            .body(Full::new(Bytes::new()))
            .unwrap();
        if sender.send_request(request).await.unwrap().status() == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "agent never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Level {
    concurrency: usize,
    requests: usize,
    seconds: f64,
    p50: Duration,
    p99: Duration,
}

async fn http_level(
    addr: SocketAddr,
    path: &str,
    body: Bytes,
    concurrency: usize,
    duration: Duration,
) -> Level {
    let path = path.to_owned();
    let mut tasks = Vec::new();
    let warmup = Duration::from_millis(300);
    let start = Instant::now() + warmup;
    let end = start + duration;
    for _ in 0..concurrency {
        let path = path.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = connection(addr).await;
            let mut latencies = Vec::new();
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                assert!(round_trip(&mut sender, addr, &path, &body).await, "non-200 answer");
                if t >= start {
                    latencies.push(t.elapsed());
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort();
    Level {
        concurrency,
        requests: all.len(),
        seconds: duration.as_secs_f64(),
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
    }
}

fn main() {
    let seconds: f64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    println!(
        "outpost-agent serving benchmark ({} cores, {seconds} s per level)\n",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    if std::env::var("BENCH_ONLY").is_ok_and(|only| only == "batching") {
        batching(&runtime, seconds);
        return;
    }

    let agent = start_agent("on");
    runtime.block_on(wait_ready(agent.addr));
    let idle_rss = rss_kib(agent.child.id());
    let binary = std::fs::metadata(agent_bin()).map(|m| m.len()).unwrap_or(0);

    // The floor every HTTP request pays on this machine with this client: no body, no model.
    let floor = runtime.block_on(http_level(
        agent.addr,
        "/v2/health/live",
        Bytes::new(),
        1,
        Duration::from_secs_f64(seconds),
    ));
    println!(
        "== HTTP floor: GET /v2/health/live, concurrency 1: p50 {:.1} µs, p99 {:.1} µs\n",
        us(floor.p50),
        us(floor.p99)
    );

    let mut overheads = Vec::new();
    for (name, stem) in MODELS {
        let raw = raw_tract(stem, 20_000);
        let raw_p50 = percentile(&raw, 0.5);
        println!("== {name} ({stem}), one row per request");
        println!(
            "  (a) raw tract compute      p50 {:>8.1} µs   p99 {:>8.1} µs   ({} runs)",
            us(raw_p50),
            us(percentile(&raw, 0.99)),
            raw.len()
        );
        let (body, _, _) = first_row(stem);
        let body = Bytes::from(serde_json::to_vec(&body).unwrap());
        println!("  (b) HTTP V2 JSON, loopback:");
        println!("      {:>11} {:>12} {:>12} {:>12}", "concurrency", "req/s", "p50 µs", "p99 µs");
        let mut first_p50 = None;
        for concurrency in CONCURRENCY {
            let path = format!("/v2/models/{name}/infer");
            let level = runtime.block_on(http_level(
                agent.addr,
                &path,
                body.clone(),
                concurrency,
                Duration::from_secs_f64(seconds),
            ));
            first_p50.get_or_insert(level.p50);
            println!(
                "      {:>11} {:>12.0} {:>12.1} {:>12.1}",
                level.concurrency,
                level.requests as f64 / level.seconds,
                us(level.p50),
                us(level.p99)
            );
        }
        let overhead = us(first_p50.unwrap()) - us(raw_p50);
        let above_floor = us(first_p50.unwrap()) - us(floor.p50) - us(raw_p50);
        overheads.push((name, overhead, above_floor));
        println!("  overhead of (b) over (a) at concurrency 1, p50: {overhead:.1} µs (target ≤ 50 µs)");
        println!("  of which above the HTTP floor (decode, checks, pool hop, encode): {above_floor:.1} µs\n");
    }
    let loaded_rss = rss_kib(agent.child.id());
    println!("== footprint");
    println!(
        "  idle RSS (2 models loaded, before traffic): {:.1} MB (target ≤ 20 MB)",
        idle_rss as f64 / 1024.0
    );
    println!("  RSS after the benchmark:                    {:.1} MB", loaded_rss as f64 / 1024.0);
    println!("  agent binary {}: {:.1} MB (target ≤ 20 MB)", agent_bin().display(), binary as f64 / 1e6);
    println!("\n== summary");
    for (name, overhead, above_floor) in overheads {
        let verdict = if overhead <= 50.0 { "meets" } else { "MISSES" };
        println!(
            "  {name}: HTTP p50 overhead {overhead:.1} µs — {verdict} the 50 µs target ({above_floor:.1} µs above this machine's {:.1} µs HTTP floor)",
            us(floor.p50)
        );
    }
    let verdict = if idle_rss as f64 / 1024.0 <= 20.0 { "meets" } else { "MISSES" };
    println!("  idle RSS {:.1} MB — {verdict} the 20 MB target", idle_rss as f64 / 1024.0);
    soak(&runtime, &agent);
    drop(agent);

    // Encryption at rest on against off: fresh agents, the same request, interleaved levels.
    println!("\n== encryption at rest, breast_cancer, prediction log on (fresh agents)");
    println!(
        "      {:>10} {:>11} {:>12} {:>12} {:>12}",
        "encryption", "concurrency", "req/s", "p50 µs", "p99 µs"
    );
    let (body, _, _) = first_row("breast_cancer-1.0.0");
    let body = Bytes::from(serde_json::to_vec(&body).unwrap());
    let agents = [("on", start_agent("on")), ("off", start_agent("off"))];
    for (_, agent) in &agents {
        runtime.block_on(wait_ready(agent.addr));
    }
    for concurrency in [1, 16] {
        for (mode, agent) in &agents {
            let level = runtime.block_on(http_level(
                agent.addr,
                "/v2/models/breast_cancer/infer",
                body.clone(),
                concurrency,
                Duration::from_secs_f64(seconds),
            ));
            println!(
                "      {mode:>10} {:>11} {:>12.0} {:>12.1} {:>12.1}",
                level.concurrency,
                level.requests as f64 / level.seconds,
                us(level.p50),
                us(level.p99)
            );
        }
    }
    drop(agents);
    batching(&runtime, seconds);
}

/// Dynamic batching on against off, same run: the digits CNN and the breast-cancer forest at
/// concurrency 16 and 64, one row per request, against two fresh agents that differ only in
/// `[batching.<model>]` (`BENCH_BATCH`, default 32 rows; `BENCH_BATCH_DELAY_US`, default 500).
fn batching(runtime: &tokio::runtime::Runtime, seconds: f64) {
    const BATCHED: [(&str, &str); 2] = [("cnn", "digits_cnn-1.0.0"), ("forest", "breast_cancer_rf-1.0.0")];
    let max_batch = std::env::var("BENCH_BATCH").unwrap_or_else(|_| "32".into());
    let delay = std::env::var("BENCH_BATCH_DELAY_US").unwrap_or_else(|_| "500".into());
    let env: Vec<(String, String)> = BATCHED
        .iter()
        .flat_map(|(name, _)| {
            let upper = name.to_uppercase();
            [
                (format!("OUTPOST_BATCHING__{upper}__MAX_BATCH"), max_batch.clone()),
                (format!("OUTPOST_BATCHING__{upper}__MAX_QUEUE_DELAY_US"), delay.clone()),
            ]
        })
        .collect();
    println!(
        "\n== dynamic batching (max_batch {max_batch}, max_queue_delay_us {delay}) on vs off, one row per request, prediction log on"
    );
    let agents =
        [("off", start_agent_with("on", &BATCHED, &[])), ("on", start_agent_with("on", &BATCHED, &env))];
    for (_, agent) in &agents {
        runtime.block_on(wait_ready(agent.addr));
    }
    println!(
        "      {:>8} {:>8} {:>11} {:>12} {:>12} {:>12} {:>13}",
        "model", "batching", "concurrency", "req/s", "p50 µs", "p99 µs", "rows per run"
    );
    for (name, stem) in BATCHED {
        let (body, _, _) = first_row(stem);
        let body = Bytes::from(serde_json::to_vec(&body).unwrap());
        for concurrency in [1, 16, 64] {
            let mut throughput = Vec::new();
            for (mode, agent) in &agents {
                let before = runtime.block_on(batch_runs(agent.addr, name));
                let level = runtime.block_on(http_level(
                    agent.addr,
                    &format!("/v2/models/{name}/infer"),
                    body.clone(),
                    concurrency,
                    Duration::from_secs_f64(seconds),
                ));
                let after = runtime.block_on(batch_runs(agent.addr, name));
                let per_run = match after.1 - before.1 {
                    0.0 => "-".to_owned(),
                    runs => format!("{:.1}", (after.0 - before.0) / runs),
                };
                let per_second = level.requests as f64 / level.seconds;
                throughput.push(per_second);
                println!(
                    "      {name:>8} {mode:>8} {:>11} {:>12.0} {:>12.1} {:>12.1} {per_run:>13}",
                    level.concurrency,
                    per_second,
                    us(level.p50),
                    us(level.p99)
                );
            }
            println!(
                "      {name:>8} {:>8} {concurrency:>11} {:>11.2}x",
                "on/off",
                throughput[1] / throughput[0]
            );
        }
    }
}

/// `outpost_agent_batch_rows` of `model` from `/metrics`: (rows, runs) so far.
async fn batch_runs(addr: SocketAddr, model: &str) -> (f64, f64) {
    let mut sender = connection(addr).await;
    let request = hyper::Request::get("/metrics")
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let body = sender.send_request(request).await.unwrap().into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    let read = |series: &str| {
        text.lines()
            .find(|l| l.starts_with(series) && l.contains(&format!("model=\"{model}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (read("outpost_agent_batch_rows_sum"), read("outpost_agent_batch_rows_count"))
}

/// Sustained load (`BENCH_SOAK_SECS`, default 60; the target is stated for 600): breast_cancer
/// at concurrency 16 with the prediction log on, the agent's RSS sampled ten times. Target:
/// ≤ 40 MB and flat (the last sample within 10 % of the first one taken under load).
fn soak(runtime: &tokio::runtime::Runtime, agent: &AgentProcess) {
    let secs: f64 = std::env::var("BENCH_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60.0);
    if secs <= 0.0 {
        return;
    }
    let (body, _, _) = first_row("breast_cancer-1.0.0");
    let body = Bytes::from(serde_json::to_vec(&body).unwrap());
    println!("\n== sustained load: breast_cancer, concurrency 16, {secs:.0} s, prediction log on");
    println!("      {:>8} {:>12} {:>10} {:>10}", "at s", "req/s", "p99 µs", "RSS MB");
    let mut samples = Vec::new();
    for i in 1..=10 {
        let level = runtime.block_on(http_level(
            agent.addr,
            "/v2/models/breast_cancer/infer",
            body.clone(),
            16,
            Duration::from_secs_f64(secs / 10.0),
        ));
        let rss = rss_kib(agent.child.id()) as f64 / 1024.0;
        samples.push(rss);
        println!(
            "      {:>8.0} {:>12.0} {:>10.1} {:>10.1}",
            secs * f64::from(i) / 10.0,
            level.requests as f64 / level.seconds,
            us(level.p99),
            rss
        );
    }
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    let peak = samples.iter().copied().fold(0.0, f64::max);
    let bounded = if peak <= 40.0 { "meets" } else { "MISSES" };
    let flat = if last <= first * 1.1 { "flat" } else { "GROWING" };
    println!(
        "  RSS under load: peak {peak:.1} MB — {bounded} the 40 MB target; {first:.1} → {last:.1} MB over the run — {flat}"
    );
}
