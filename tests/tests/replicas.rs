//! Coordinator replicas on PostgreSQL: three real `outpost-coordinator serve` processes sharing
//! the machine's real PostgreSQL (a database of each test's own) behind a real Mosquitto over
//! mutual TLS, each subscribed in the shared subscription `$share/outpost-coordinators/…`
//! under its own client id, with real agents.
//!
//! - Telemetry from every agent is stored exactly once while one replica is SIGKILLed and
//!   restarted mid-ingest (every seq counted); `outpostctl cluster status` names the replicas
//!   and the engines' leader and term.
//! - The leader is SIGKILLed mid-rollout: another replica takes the lease within the TTL and
//!   the rollout finishes, each wave sent once, the timeline showing the takeover.
//! - The leader is cut off from PostgreSQL (a proxy the test freezes) mid-rollout: it stops
//!   its engines at its lease's deadline and its readiness fails, another replica continues
//!   the rollout; when the proxy thaws it serves again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use outpost_tests::fleet::{Coordinator, metric, ok, push, release_key, start_agent, validate, wait_serving};
use outpost_tests::mosquitto::Mosquitto;
use outpost_tests::postgres::Database;
use outpost_tests::proxy::Proxy;
use outpost_tests::{Agent, LabelledTraffic};
use serde_json::Value;

/// Engines' leases in these tests (the default is 15 s).
const LEASE_TTL_SECS: &str = "4";

struct Cluster {
    dir: tempfile::TempDir,
    db: Database,
    broker: Mosquitto,
    replicas: Vec<Coordinator>,
    /// The replicas' API behind one address (a Service): what devices are told.
    front: Proxy,
}

/// `n` replicas on a fresh database behind a fresh Mosquitto. The first makes the keys and
/// the admin token; the others get a copy of its data directory, as replicas share one
/// Secret. `store_url_of(i)` may route a replica's connections elsewhere (a proxy).
fn cluster(tag: &str, n: usize, store_url_of: impl Fn(usize, &str) -> String) -> Cluster {
    let db = Database::new(tag);
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("replica-0");
    Coordinator::init(&first);
    let broker = Mosquitto::start_for_replicas(dir.path(), &first);
    let front = Proxy::balancing(Vec::new());
    let advertised = format!("http://127.0.0.1:{}", front.port);
    let env = [
        ("OUTPOST_COORDINATOR_STORE__LEASE_TTL_SECS", LEASE_TTL_SECS),
        ("OUTPOST_COORDINATOR_API__ADVERTISED_URL", advertised.as_str()),
    ];
    let start = |data: &Path, i: usize| {
        Coordinator::start_replica(
            data,
            &broker.replicas_url(),
            &broker.url(),
            &store_url_of(i, &db.url),
            &env,
        )
    };
    let mut replicas = vec![start(&first, 0)];
    // The first holds every lease before the others start.
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster_status(&replicas[0])["leases"].as_array().is_none_or(|l| l.len() < 5) {
        assert!(
            Instant::now() < deadline,
            "the first replica never led: {:#}\n{}",
            cluster_status(&replicas[0]),
            replicas[0].log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in 1..n {
        let data = dir.path().join(format!("replica-{i}"));
        let copied = std::process::Command::new("cp").arg("-a").arg(&first).arg(&data).status().unwrap();
        assert!(copied.success());
        replicas.push(start(&data, i));
    }
    front.set_targets(replicas.iter().map(|c| c.addr).collect());
    Cluster { dir, db, broker, replicas, front }
}

fn cluster_status(c: &Coordinator) -> Value {
    serde_json::from_str(&ok(c.ctl(&["--json", "cluster", "status"]), "cluster status")).unwrap()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The running replica that holds `engine`'s lease now (`None`: none does, or it is a replica
/// that is gone), by the holder's id (a replica id ends in `-<pid>-<random>`).
fn leader(cluster: &Cluster, engine: &str) -> Option<usize> {
    let status = cluster_status(cluster.replicas.iter().find(|c| c.pid().is_some()).unwrap());
    let lease = status["leases"].as_array().unwrap().iter().find(|l| l["engine"] == engine)?.clone();
    let holder = lease["holder"].as_str().unwrap().to_owned();
    (lease["expires_in_ms"].as_i64() > Some(0))
        .then(|| {
            cluster
                .replicas
                .iter()
                .position(|c| c.pid().is_some_and(|pid| holder.contains(&format!("-{pid}-"))))
        })
        .flatten()
}

async fn outbox_messages(agent: &Agent) -> f64 {
    metric(&agent.metrics_text().await, "outpost_agent_outbox_messages")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_store_every_seq_once_while_one_is_killed_mid_ingest() {
    let mut cluster = cluster("ingest", 3, |_, url| url.to_owned());
    let agents: Vec<(PathBuf, String, Agent)> = (0..5)
        .map(|i| {
            let dir = cluster.dir.path().join(format!("agent-{i}"));
            let token = cluster.replicas[i % 3].token("site=a");
            let device = outpost_tests::fleet::enroll(&dir, &cluster.replicas[i % 3], &token).unwrap();
            let agent = outpost_tests::brokers::start_agent(&dir, &[]);
            (dir, device, agent)
        })
        .collect();
    for (_, device, agent) in &agents {
        agent.wait_ready(Duration::from_secs(30)).await;
        // Any replica shows what any other stored.
        cluster.replicas[2]
            .wait_device(device, Duration::from_secs(30), |v| v["counts"]["envelopes"].as_u64() > Some(1))
            .await;
    }
    // Mid-ingest (each agent sends a report a second): one replica killed, then started again.
    cluster.replicas[1].stop(Signal::SIGKILL);
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.replicas[1].resume();
    tokio::time::sleep(Duration::from_secs(4)).await;

    // What the two replicas never killed were handed (stored, or a resend found stored).
    let mut handed = Vec::new();
    for c in [&cluster.replicas[0], &cluster.replicas[2]] {
        let text = c.metrics().await;
        let count =
            |result: &str| metric(&text, &format!("outpost_coordinator_ingest_total{{result=\"{result}\"}}"));
        handed.push((count("stored"), count("stored") + count("duplicate")));
    }
    // Quiet: each agent stopped, then started again only to empty its outbox.
    let devices: Vec<String> = agents.iter().map(|(_, device, _)| device.clone()).collect();
    for (dir, _, mut agent) in agents {
        agent.signal(Signal::SIGTERM);
        agent.wait_exit(Duration::from_secs(20));
        let agent =
            outpost_tests::brokers::start_agent(&dir, &[("OUTPOST_TELEMETRY__INTERVAL_SECS", "3600")]);
        agent.wait_ready(Duration::from_secs(30)).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while outbox_messages(&agent).await > 0.0 {
            assert!(Instant::now() < deadline, "outbox never drained:\n{}", agent.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for c in &cluster.replicas {
        for device in &devices {
            let view = c.device(device).await;
            let stored = view["counts"]["envelopes"].as_u64().unwrap();
            assert_eq!(Some(stored), view["highest_seq"].as_u64(), "a seq is missing: {view:#}");
        }
    }
    // In the database: one row per (device, seq), every seq from 1 to the highest.
    let rows = cluster.db.query(
        "SELECT count(*) || '|' || sum(n) || '|' || sum(highest) FROM
             (SELECT count(*) AS n, max(seq::numeric + 9223372036854775808) AS highest
              FROM outpost_envelopes GROUP BY device) d",
    );
    let parts: Vec<&str> = rows.split('|').collect();
    assert_eq!(parts[0], "5", "five devices stored: {rows}");
    assert_eq!(parts[1], parts[2], "every seq once, none missing: {rows}");
    // The broker shared the messages among the replicas (one shared subscription): each stored
    // some, and none was handed nearly all of them, as every replica would be on a plain one.
    let total: f64 = parts[1].parse().unwrap();
    for (stored, received) in handed {
        assert!(
            stored > 0.0 && received < 0.8 * total,
            "{stored} stored, {received} of {total} handed to one replica"
        );
    }

    // Who is there and who leads, from any replica.
    let status = cluster_status(&cluster.replicas[1]);
    assert_eq!(status["store"], "postgres");
    let alive = status["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["heartbeat_age_ms"].as_i64().unwrap() < 5_000)
        .count();
    assert_eq!(alive, 3, "{status:#}");
    let engines: Vec<&str> =
        status["leases"].as_array().unwrap().iter().map(|l| l["engine"].as_str().unwrap()).collect();
    assert_eq!(engines, ["alerts", "desired-refresh", "retention", "retraining", "rollouts"], "{status:#}");
    let table = ok(cluster.replicas[0].ctl(&["cluster", "status"]), "cluster status");
    assert!(table.contains("REPLICA") && table.contains("LEADER") && table.contains("rollouts"), "{table}");
    assert!(cluster.broker.port > 0 && cluster.front.port > 0);
}

/// Five agents on 1.0.0 with labelled traffic, 1.1.0 pushed and validated, and a wave rollout
/// of it started and baking its second wave; returns the agents, the traffic and the id.
async fn rolling(cluster: &Cluster) -> (Vec<(Agent, String)>, LabelledTraffic, String) {
    let c = &cluster.replicas[0];
    let key = release_key(c);
    let agents: Vec<(Agent, String)> = (0..5)
        .map(|i| {
            let dir = cluster.dir.path().join(format!("agent-{i}"));
            start_agent(&cluster.replicas[i % 3], &dir, &format!("tier=prod,site=s{i}"), &[&key], "")
        })
        .collect();
    for v in ["1.0.0", "1.1.0"] {
        ok(push(c, &format!("breast_cancer-{v}"), v), "push");
        assert_eq!(validate(&cluster.replicas[1], v).0, 0, "validate {v}");
    }
    ok(cluster.replicas[2].ctl(&["deploy", "bc@1.0.0"]), "deploy 1.0.0");
    for (agent, _) in &agents {
        wait_serving(agent, "1.0.0").await;
    }
    let all: Vec<&Agent> = agents.iter().map(|(a, _)| a).collect();
    let traffic = LabelledTraffic::start(&all, "bc", Duration::from_millis(15));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let started = ok(
        cluster.replicas[1].ctl(&[
            "--json",
            "rollout",
            "start",
            "bc@1.1.0",
            "--waves",
            "20,60,100",
            "--bake",
            "4s",
            "--max-extensions",
            "10",
            "--gate",
            "error_rate<=+5%",
            "--gate",
            "accuracy>=-5%",
            "--min-requests",
            "30",
            "--min-labels",
            "30",
        ]),
        "rollout start",
    );
    let id = serde_json::from_str::<Value>(&started).unwrap()["id"].as_str().unwrap().to_owned();
    cluster.replicas[2]
        .wait_rollout(&id, Duration::from_secs(120), "baking wave 2", |v| {
            v["wave"] == 1 && v["phase"] == "baking"
        })
        .await;
    (agents, traffic, id)
}

/// Waits until rollout `id` is over (as `c` shows it); on a timeout the agents' logs say why.
async fn wait_finished(c: &Coordinator, id: &str, agents: &[(Agent, String)]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let v = c.rollout_status(id);
        if v["phase"] != "baking" && v["phase"] != "applying" {
            return v;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = agents.iter().map(|(a, d)| format!("--- {d}:\n{}", a.log())).collect();
            panic!("rollout {id} never finished: {v:#}\n{}\ncoordinator:\n{}", logs.join("\n"), c.log());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The rollout succeeded, each wave sent once, and its timeline shows a takeover.
fn finished_once_with_a_takeover(v: &Value) {
    assert_eq!(v["phase"], "succeeded", "{v:#}");
    let timeline: Vec<&str> =
        v["timeline"].as_array().unwrap().iter().map(|t| t["message"].as_str().unwrap()).collect();
    for wave in ["wave 1/3 (20%)", "wave 2/3 (60%)", "wave 3/3 (100%)"] {
        let sends = timeline.iter().filter(|t| t.starts_with(&format!("{wave}: sending"))).count();
        assert_eq!(sends, 1, "{wave} sent once: {timeline:#?}");
    }
    assert!(timeline.iter().any(|t| t.starts_with("taken over by replica")), "{timeline:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_killed_mid_rollout_another_replica_takes_the_lease_and_finishes_it() {
    let mut cluster = cluster("leader_kill", 3, |_, url| url.to_owned());
    let (agents, _traffic, id) = rolling(&cluster).await;
    let killed = leader(&cluster, "rollouts").expect("a leader");
    cluster.replicas[killed].stop(Signal::SIGKILL);
    let killed_at = Instant::now();
    let other = (killed + 1) % 3;
    wait_for("another replica to take the rollouts lease", Duration::from_secs(30), || {
        leader(&cluster, "rollouts").is_some()
    });
    let took = killed_at.elapsed();
    // Within the TTL and the keeper's round (a third of it), with a second's slack.
    assert!(took < Duration::from_secs(4 + 2 + 1), "took over after {took:?}");
    let v = wait_finished(&cluster.replicas[other], &id, &agents).await;
    finished_once_with_a_takeover(&v);
    for (agent, _) in &agents {
        wait_serving(agent, "1.1.0").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_cut_off_from_postgresql_stops_and_another_replica_continues_the_rollout() {
    let target: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let proxy = Proxy::start(target);
    let port = proxy.port;
    // Replica 0 (the first, so the leader) reaches PostgreSQL through the proxy.
    let cluster = cluster("cut_off", 3, move |i, url| {
        if i == 0 { url.replacen("127.0.0.1:5432", &format!("127.0.0.1:{port}"), 1) } else { url.to_owned() }
    });
    assert!(cluster.db.url.contains("127.0.0.1:5432"), "the test database is on 127.0.0.1:5432");
    let (agents, _traffic, id) = rolling(&cluster).await;
    assert_eq!(leader(&cluster, "rollouts"), Some(0));
    proxy.freeze();
    // Another replica takes over; the cut-off one stops its engines and says it is not ready.
    wait_for("another replica to take the rollouts lease", Duration::from_secs(30), || {
        cluster_status(&cluster.replicas[1])["leases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["engine"] == "rollouts")
            .is_some_and(|l| {
                let pid = cluster.replicas[0].pid().unwrap();
                !l["holder"].as_str().unwrap().contains(&format!("-{pid}-"))
            })
    });
    let ready = outpost_tests::fleet::http_status(cluster.replicas[0].addr, "/readyz");
    assert_eq!(ready, Some(503), "readiness of the cut-off replica");
    let v = wait_finished(&cluster.replicas[1], &id, &agents).await;
    finished_once_with_a_takeover(&v);
    let log = cluster.replicas[0].log();
    assert!(log.contains("stopped running the engine"), "the cut-off leader stopped:\n{log}");
    // Back on the network: ready again, and its API serves the shared state.
    proxy.thaw();
    wait_for("the replica to be ready again", Duration::from_secs(30), || {
        outpost_tests::fleet::http_status(cluster.replicas[0].addr, "/readyz") == Some(200)
    });
    assert_eq!(cluster.replicas[0].rollout_status(&id)["phase"], "succeeded");
    for (agent, _) in &agents {
        wait_serving(agent, "1.1.0").await;
    }
}
