//! Fleet scale benchmark: one coordinator (embedded broker, release build) and N simulated
//! agents (`outpost_agent::simulate`, in this process: own identity, mTLS MQTT connection,
//! signed reports every 10 s, a reconcile loop each) on this machine.
//!
//! Prints: enrolment and connection time; the coordinator's CPU and memory while N devices
//! report every 10 s, with the reports it stored per second against the N/10 they send; then
//! the time from `deploy` (every device) and from `rollback` until every simulated device has
//! applied the new desired state, and until the coordinator's own view (its `/metrics`, from
//! the actual states devices report back) shows every device on the new version — against
//! DESIGN §8's targets (≤ 5 s to reach all, ≤ 10 s to roll all back).
//!
//! `cargo bench -p outpost --bench fleet`; `OUTPOST_BENCH_DEVICES` (10000),
//! `OUTPOST_BENCH_STEADY_SECS` (60), `OUTPOST_BENCH_RAMP_PER_SEC` (500 devices start connecting a
//! second), `OUTPOST_BENCH_BROKER=embedded`; `OUTPOST_BENCH_STORE=postgres` runs
//! `OUTPOST_BENCH_REPLICAS` (2) coordinator replicas on a database of its own on the machine's
//! PostgreSQL (`TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`)
//! behind Mosquitto's replicas' listener; the coordinator's figures are then the replicas' sums. Simulator and coordinator share this machine's
//! cores. The embedded broker uses one file descriptor per device (its TLS connection) and the
//! simulator one more: 10,000 devices fit under a 20,000 open-file limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// CPU seconds (user + system) and resident memory of a process, from /proc.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // USER_HZ is 100 on Linux.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    (cpu, rss_kb * 1024)
}

/// A child process killed when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The coordinator: one process, or replicas on PostgreSQL (the first is the one called).
struct Coordinator {
    child: Child,
    url: String,
    token: String,
    http: ureq::Agent,
    /// The other replicas, and their API URLs.
    others: Vec<(KillOnDrop, String)>,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A database of the benchmark's own, dropped at the end.
struct BenchDb {
    admin: String,
    name: String,
    url: String,
}

impl BenchDb {
    fn create() -> BenchDb {
        let admin = std::env::var("TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("outpost_fleet_bench_{}", std::process::id());
        let psql = |sql: &str| {
            let out = Command::new("psql").args([admin.as_str(), "-qc", sql]).output().expect("psql");
            assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        };
        psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        psql(&format!("CREATE DATABASE {name}"));
        let url = format!("{}/{name}", &admin[..admin.rfind('/').unwrap_or(admin.len())]);
        BenchDb { admin, name, url }
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                self.admin.as_str(),
                "-qc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

impl Coordinator {
    /// Every replica's /metrics text (one for a single coordinator).
    fn metrics_all(&self) -> Vec<String> {
        let mut all = vec![self.metrics()];
        for (_, url) in &self.others {
            all.push(match self.http.get(format!("{url}/metrics")).call() {
                Ok(mut r) => r.body_mut().with_config().limit(1 << 30).read_to_string().unwrap_or_default(),
                Err(_) => String::new(),
            });
        }
        all
    }

    /// A counter summed over every replica.
    fn sum(&self, read: impl Fn(&str) -> f64) -> f64 {
        self.metrics_all().iter().map(|m| read(m)).sum()
    }

    /// Every replica's process id.
    fn pids(&self) -> Vec<u32> {
        std::iter::once(self.child.id()).chain(self.others.iter().map(|(c, _)| c.0.id())).collect()
    }
}

/// CPU seconds and resident memory summed over `pids`.
fn usage_of(pids: &[u32]) -> (f64, u64) {
    pids.iter().map(|p| usage(*p)).fold((0.0, 0), |(c, r), (c2, r2)| (c + c2, r + r2))
}

impl Coordinator {
    fn call(&self, method: &str, path: &str, body: Option<(&str, Vec<u8>)>) -> Value {
        let url = format!("{}{path}", self.url);
        let auth = format!("Bearer {}", self.token);
        let result = match (method, body) {
            ("GET", _) => self.http.get(&url).header("Authorization", &auth).call(),
            ("PUT", Some((kind, b))) => {
                self.http.put(&url).header("Authorization", &auth).header("Content-Type", kind).send(&b[..])
            }
            (_, Some((kind, b))) => {
                self.http.post(&url).header("Authorization", &auth).header("Content-Type", kind).send(&b[..])
            }
            (_, None) => self.http.post(&url).header("Authorization", &auth).send_empty(),
        };
        let mut response = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status();
        let text = response.body_mut().with_config().limit(1 << 30).read_to_string().unwrap_or_default();
        assert!(status.is_success(), "{method} {path}: {status}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    }

    fn metrics(&self) -> String {
        match self.http.get(format!("{}/metrics", self.url)).call() {
            Ok(mut r) => r.body_mut().with_config().limit(1 << 30).read_to_string().unwrap_or_default(),
            Err(_) => String::new(),
        }
    }
}

/// Devices a /metrics text shows running `bc@version` as their ready primary.
fn running(metrics: &str, version: &str) -> u64 {
    let needle = format!("version=\"{version}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("outpost_coordinator_model_devices{"))
        .filter(|l| l.contains(&needle) && l.contains("slot=\"primary\"") && l.contains("state=\"ready\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Envelopes the coordinator stored, per a /metrics text.
fn stored(metrics: &str) -> f64 {
    gauge(metrics, "outpost_coordinator_ingest_total{result=\"stored\"}")
}

/// One sample of a /metrics text, by its full name with labels.
fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.rsplit_once(' ').is_some_and(|(n, _)| n == name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

fn push_and_validate(c: &Coordinator, models: &Path, version: &str) {
    let spec = outpost_coordinator::models::packaging::BuildSpec {
        model: models.join(format!("breast_cancer-{version}.onnx")),
        name: "bc".into(),
        version: version.into(),
        baseline: Some(models.join("breast_cancer_holdout.csv")),
        exclude: vec!["label".into()],
        reference: None,
        card: None,
        metadata: Default::default(),
        hyperparameters: Default::default(),
        training_date: None,
        dataset_sha256: None,
        parent_version: None,
        nan_policy: outpost_shared::bundle::NanPolicy::Reject,
    };
    let (bundle, _) = outpost_coordinator::models::packaging::build(&spec, 0).expect("bundle");
    c.call(
        "PUT",
        &format!("/api/v1/models/bc/versions/{version}"),
        Some(("application/octet-stream", bundle.to_bytes())),
    );
    let csv = std::fs::read(models.join("breast_cancer_validation.csv")).expect("validation set");
    let report = c.call(
        "POST",
        &format!("/api/v1/models/bc/versions/{version}/validate?label=label&p99_slack_ms=1000"),
        Some(("text/csv", csv)),
    );
    assert_eq!(report["passed"], true, "{report}");
}

/// Times a fleet-wide change: until every simulated device applied it, and until the
/// coordinator's view shows every device on `version`.
/// How often a change's progress is read (the coordinator's side costs a /metrics scrape).
const POLL: Duration = Duration::from_millis(250);

fn time_change(
    c: &Coordinator,
    stats: &outpost_agent::simulate::Stats,
    devices: u64,
    version: &str,
    change: impl FnOnce(),
) -> (f64, f64, f64) {
    let target = format!("bc@{version}");
    let t0 = Instant::now();
    change();
    let request = t0.elapsed().as_secs_f64();
    let (mut reached, mut reported) = (None, None);
    let deadline = t0 + Duration::from_secs(300);
    // `OUTPOST_BENCH_TIMELINE=1`: every half second, how far the change got on each side.
    let timeline = std::env::var("OUTPOST_BENCH_TIMELINE").is_ok_and(|v| v == "1");
    let mut scrape = outpost_shared::histogram::LogHistogram::new(0.01);
    let mut shown = t0;
    while (reached.is_none() || reported.is_none()) && Instant::now() < deadline {
        let applied = stats.running(&target) as u64;
        if reached.is_none() && applied >= devices {
            reached = Some(t0.elapsed().as_secs_f64());
        }
        // One /metrics read a poll: it reads every device record, so polling is load on the
        // coordinator too (timed, and printed with the result).
        let read = Instant::now();
        let metrics = c.metrics();
        scrape.record(read.elapsed().as_secs_f64() * 1e3);
        let seen = running(&metrics, version);
        if reported.is_none() && seen >= devices {
            reported = Some(t0.elapsed().as_secs_f64());
        }
        if timeline && shown.elapsed() >= Duration::from_millis(500) {
            shown = Instant::now();
            let sim = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
            eprintln!(
                "    {:5.1} s: applied {applied}, states sent {} (deferred {}), seen {seen}, stored {:.0}, link {}",
                t0.elapsed().as_secs_f64(),
                sim(&stats.states_sent),
                sim(&stats.states_deferred),
                stored(&metrics),
                metrics
                    .lines()
                    .filter(|l| l.starts_with("outpost_coordinator_broker_events_total{"))
                    .map(|l| l.trim_start_matches("outpost_coordinator_broker_events_total"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        std::thread::sleep(POLL);
    }
    eprintln!(
        "    (polled the coordinator's /metrics every {} ms: {} reads, p50 {:.0} ms, max {:.0} ms)",
        POLL.as_millis(),
        scrape.count(),
        scrape.quantile(0.5).unwrap_or(f64::NAN),
        scrape.quantile(1.0).unwrap_or(f64::NAN)
    );
    (request, reached.unwrap_or(f64::NAN), reported.unwrap_or(f64::NAN))
}

fn main() {
    let devices = env_or("OUTPOST_BENCH_DEVICES", 10_000);
    let steady = env_or("OUTPOST_BENCH_STEADY_SECS", 60);
    let ramp = env_or("OUTPOST_BENCH_RAMP_PER_SEC", 500) as u32;
    let interval = Duration::from_secs(10);
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models");
    let dir = std::env::temp_dir().join(format!("outpost-fleet-bench-{}", std::process::id()));
    let (api, broker) = (free_port(), free_port());
    let data = dir.join("coordinator");
    let exe = env!("CARGO_BIN_EXE_outpost");
    // The broker: Mosquitto with mutual TLS from the coordinator's CA (what production runs;
    // `OUTPOST_BENCH_BROKER=embedded` uses the coordinator's embedded broker instead).
    let embedded = std::env::var("OUTPOST_BENCH_BROKER").is_ok_and(|b| b == "embedded");
    let db = std::env::var("OUTPOST_BENCH_STORE").is_ok_and(|s| s == "postgres").then(BenchDb::create);
    let replicas = if db.is_some() { env_or("OUTPOST_BENCH_REPLICAS", 2).max(1) } else { 1 };
    assert!(!(embedded && db.is_some()), "replicas on PostgreSQL need Mosquitto, not the embedded broker");
    // Replicas connect to a listener of their own (their client ids are their own there).
    let replicas_port = free_port();
    let mut _mosquitto: Option<KillOnDrop> = None;
    let broker_args: Vec<String> = if embedded {
        vec!["--broker-listen".into(), format!("127.0.0.1:{broker}")]
    } else {
        let run = |args: &[&str]| {
            let out = Command::new(exe).args(args).output().expect("run outpost");
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let d = data.display().to_string();
        let init = dir.join("init").display().to_string();
        run(&["coordinator", "cert", "client", "--name", "init", "--out-dir", &init, "--data-dir", &d]);
        let certs = dir.join("broker-certs");
        let c = certs.display().to_string();
        run(&[
            "coordinator",
            "cert",
            "server",
            "--name",
            "localhost",
            "--name",
            "127.0.0.1",
            "--out-dir",
            &c,
            "--data-dir",
            &d,
        ]);
        let acl = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto/acl");
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "per_listener_settings false\nlistener {broker} 127.0.0.1\ncafile {c}/ca.pem\ncertfile {c}/server.pem\n\
                 keyfile {c}/server.key\nrequire_certificate true\nuse_identity_as_username true\nuse_username_as_clientid true\n\
                 allow_anonymous false\nacl_file {}\npersistence false\nmax_queued_messages 100000\nmax_inflight_messages 1000\n\
                 max_packet_size 4202496\nlog_dest stderr\nlog_type error\nuser root\n{}",
                acl.display(),
                if db.is_some() {
                    format!(
                        "listener {replicas_port} 127.0.0.1\ncafile {c}/ca.pem\ncertfile {c}/server.pem\n\
                         keyfile {c}/server.key\nrequire_certificate true\nuse_identity_as_username true\n"
                    )
                } else {
                    String::new()
                }
            ),
        )
        .expect("mosquitto.conf");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (Debian package `mosquitto`)");
        _mosquitto = Some(KillOnDrop(child));
        while std::net::TcpStream::connect(("127.0.0.1", broker)).is_err() {
            std::thread::sleep(Duration::from_millis(50));
        }
        if db.is_some() {
            vec!["--broker".into(), format!("mqtts://localhost:{replicas_port}")]
        } else {
            vec!["--broker".into(), format!("mqtts://localhost:{broker}")]
        }
    };
    let spawn = |data: &Path, api: u16, log: &str| {
        let mut command = Command::new(exe);
        command
            .args(["coordinator", "serve", "--log-format", "json", "--data-dir"])
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{api}")])
            .args(&broker_args)
            .env("OUTPOST_COORDINATOR_API__RATE_LIMIT_PER_SEC", "1000000")
            .env("OUTPOST_COORDINATOR_API__RATE_LIMIT_BURST", "1000000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(std::env::temp_dir().join(log)).expect("log"));
        if let Some(db) = &db {
            command
                .env("OUTPOST_COORDINATOR_STORE__URL", &db.url)
                .env("OUTPOST_COORDINATOR_BROKER__ADVERTISED_URL", format!("mqtts://localhost:{broker}"));
        }
        command.spawn().expect("start the coordinator")
    };
    let wait_healthy = |url: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while ureq::get(format!("{url}/healthz")).call().is_err() {
            assert!(Instant::now() < deadline, "the coordinator at {url} did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let child = spawn(&data, api, "outpost-fleet-bench-coordinator.log");
    let url = format!("http://127.0.0.1:{api}");
    let token_file = dir.join("coordinator/admin.token");
    let deadline = Instant::now() + Duration::from_secs(60);
    let token = loop {
        if let Ok(t) = std::fs::read_to_string(&token_file)
            && ureq::get(format!("{url}/healthz")).call().is_ok()
        {
            break t.trim().to_owned();
        }
        assert!(Instant::now() < deadline, "the coordinator did not start");
        std::thread::sleep(Duration::from_millis(100));
    };
    // The other replicas share the first one's keys and admin token (a copy of its data dir).
    let mut others = Vec::new();
    for i in 1..replicas {
        let copy = dir.join(format!("coordinator-{i}"));
        let copied = Command::new("cp").arg("-a").arg(&data).arg(&copy).status().expect("cp");
        assert!(copied.success(), "copying the data directory");
        let port = free_port();
        let replica = spawn(&copy, port, &format!("outpost-fleet-bench-coordinator-{i}.log"));
        let replica_url = format!("http://127.0.0.1:{port}");
        wait_healthy(&replica_url);
        others.push((KillOnDrop(replica), replica_url));
    }
    let http = outpost_shared::tls::api_client(&url, None, Duration::from_secs(600)).expect("client");
    let c = Coordinator { child, url: url.clone(), token: token.clone(), http, others };
    let (pid, pids) = (c.child.id(), c.pids());

    println!(
        "fleet benchmark: {devices} simulated devices reporting every {} s; {}; broker: {}; 2 cores shared",
        interval.as_secs(),
        match &db {
            Some(_) => format!("{replicas} coordinator replicas on PostgreSQL (shared subscription)"),
            None => "one coordinator (sled)".to_owned(),
        },
        if embedded { "embedded (front + rumqttd)" } else { "Mosquitto" }
    );
    let plan = outpost_agent::simulate::Plan {
        api_url: url.clone(),
        admin_token: token,
        ca_pem: None,
        devices: devices as usize,
        labels: [("tier".to_owned(), "sim".to_owned())].into(),
        parallel: 8,
    };
    let started = Instant::now();
    let fleet = outpost_agent::simulate::enrol_all(&plan, &|n| {
        if n.is_multiple_of(2000) {
            eprintln!("  enrolled {n}");
        }
    })
    .expect("enrolment");
    println!(
        "  enrolment: {devices} devices in {:.1} s ({:.0}/s)",
        started.elapsed().as_secs_f64(),
        devices as f64 / started.elapsed().as_secs_f64()
    );

    let (_, rss_before_connect) = usage_of(&pids);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let stats = Arc::new(outpost_agent::simulate::Stats::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let sim = runtime.spawn(outpost_agent::simulate::run(fleet, interval, ramp, Arc::clone(&stats), stop_rx));
    let connected =
        |s: &outpost_agent::simulate::Stats| s.connected.load(std::sync::atomic::Ordering::Relaxed) as u64;
    let mut shown = Instant::now();
    while connected(&stats) < devices && started.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(Duration::from_millis(200));
        if shown.elapsed() > Duration::from_secs(10) {
            eprintln!("  {} connected", connected(&stats));
            shown = Instant::now();
        }
    }
    println!(
        "  connected: {} of {devices} over mutual TLS in {:.1} s (starting {ramp} a second)",
        connected(&stats),
        started.elapsed().as_secs_f64()
    );
    if embedded {
        let (_, rss) = usage(pid);
        let held = gauge(&c.metrics(), "outpost_coordinator_broker_connections");
        println!(
            "  embedded broker: {held:.0} connections held through its front, the coordinator holding {} file descriptors; coordinator RSS {:.0} MB → {:.0} MB ({:.1} KB per connection); refused: {:.0}",
            std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()),
            rss_before_connect as f64 / 1e6,
            rss as f64 / 1e6,
            (rss.saturating_sub(rss_before_connect)) as f64 / held.max(1.0) / 1e3,
            c.metrics()
                .lines()
                .filter(|l| l.starts_with("outpost_coordinator_broker_refused_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .fold(0.0, |a, b| a + b)
        );
    }

    // Steady state: one report per device every interval.
    std::thread::sleep(interval * 2);
    let (cpu0, rss0) = usage_of(&pids);
    let stored0 = c.sum(stored);
    let t0 = Instant::now();
    let mut peak_rss = 0;
    while t0.elapsed() < Duration::from_secs(steady) {
        std::thread::sleep(Duration::from_secs(1));
        peak_rss = peak_rss.max(usage_of(&pids).1);
    }
    let secs = t0.elapsed().as_secs_f64();
    let (cpu1, rss) = usage_of(&pids);
    let stored_per_sec = (c.sum(stored) - stored0) / secs;
    let sent = devices as f64 / interval.as_secs_f64();
    println!(
        "  steady state over {secs:.0} s: coordinator CPU {:.0}% of one core ({:.0}% of the machine), RSS {:.0} → {:.0} MB ({:+.1} MB a minute; peak {:.0} MB)",
        100.0 * (cpu1 - cpu0) / secs,
        50.0 * (cpu1 - cpu0) / secs,
        rss0 as f64 / 1e6,
        rss as f64 / 1e6,
        (rss as f64 - rss0 as f64) / 1e6 / (secs / 60.0),
        peak_rss as f64 / 1e6
    );
    println!(
        "  ingest: {stored_per_sec:.0} envelopes stored/s; the fleet sends {sent:.0} reports/s (baseline in this run)"
    );
    let (p50, timed) = stats.puback_quantile(0.5);
    let (p99, _) = stats.puback_quantile(0.99);
    println!(
        "  broker QoS 1 round trip (PUBLISH → PUBACK, simulator side, {timed} timed): p50 {:.2} ms, p99 {:.2} ms",
        p50.unwrap_or(f64::NAN),
        p99.unwrap_or(f64::NAN)
    );

    push_and_validate(&c, &models, "1.0.0");
    push_and_validate(&c, &models, "1.1.0");
    let (req, reach, report) = time_change(&c, &stats, devices, "1.0.0", || {
        c.call(
            "POST",
            "/api/v1/deployments",
            Some(("application/json", json!({"model": "bc", "version": "1.0.0"}).to_string().into_bytes())),
        );
    });
    println!(
        "  deploy 1.0.0 to all: API answered in {req:.2} s; every device applied it after {reach:.2} s; the coordinator saw every device report it after {report:.2} s (target: reach all ≤ 5 s)"
    );
    let (req, reach, report) = time_change(&c, &stats, devices, "1.1.0", || {
        c.call(
            "POST",
            "/api/v1/deployments",
            Some(("application/json", json!({"model": "bc", "version": "1.1.0"}).to_string().into_bytes())),
        );
    });
    println!(
        "  deploy 1.1.0 to all: API answered in {req:.2} s; every device applied it after {reach:.2} s; the coordinator saw every device report it after {report:.2} s (target: reach all ≤ 5 s)"
    );
    let (req, reach, report) = time_change(&c, &stats, devices, "1.0.0", || {
        c.call("POST", "/api/v1/models/bc/rollback", None);
    });
    println!(
        "  rollback to 1.0.0: API answered in {req:.2} s; every device applied it after {reach:.2} s; the coordinator saw every device report it after {report:.2} s (target: all rolled back ≤ 10 s)"
    );
    let (cpu, rss) = usage_of(&pids);
    println!("  coordinator totals: {cpu:.0} CPU s, RSS {:.0} MB", rss as f64 / 1e6);
    println!(
        "  deliveries dropped unacknowledged for a full ingest queue (dropped_ingest_busy): {:.0} (target 0)",
        c.sum(|m| gauge(m, "outpost_coordinator_broker_events_total{event=\"dropped_ingest_busy\"}"))
    );
    if db.is_some() {
        let shares: Vec<String> = c.metrics_all().iter().map(|m| format!("{:.0}", stored(m))).collect();
        println!("  envelopes stored by each replica: {}", shares.join(" / "));
    }

    let _ = stop_tx.send(true);
    let _ = runtime.block_on(sim);
    drop(c);
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}
