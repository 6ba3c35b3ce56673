//! The broker as a trust boundary (findings 1, 2 and 8 of the trust-boundaries review): a
//! device reads and writes only its own topics, no client takes another's MQTT client id (the
//! coordinator's included), presence cannot be forged, and a revoked device is cut off. Every
//! test runs against Mosquitto (the shipped ACL, `use_identity_as_username`,
//! `use_username_as_clientid`, the CA's revocation list) and against the coordinator's
//! embedded broker (its front: `coordinator/src/fleet/broker/front.rs`), with device
//! certificates made by real enrolment and `mosquitto_pub`/`mosquitto_sub` as the attacker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use outpost_shared::protocol::{self, SigningKey};
use outpost_tests::against_both_brokers;
use outpost_tests::brokers::{Broker, Kind, connected_agent, fleet, start_agent};
use outpost_tests::fleet::{
    Coordinator, client_identity, common_name, enroll, metric, observer_identity, publish, publish_as,
    publish_retained, subscribe,
};
use serde_json::Value;

async fn broker_refused(c: &Coordinator, reason: &str) -> f64 {
    metric(&c.metrics().await, &format!("outpost_coordinator_broker_refused_total{{reason=\"{reason}\"}}"))
}

fn identity_of(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("identity/client.pem"), dir.join("identity/tls.key"))
}

/// Waits until `reason` was counted `at_least` times, and the audit log holds a
/// `broker.refused` entry for `device` with that reason.
async fn refused_and_audited(c: &Coordinator, reason: &str, at_least: f64, device: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker_refused(c, reason).await < at_least {
        assert!(Instant::now() < deadline, "no `{reason}` refusal counted:\n{}", c.metrics().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, audit, _) = c.ctl(&["audit", "list", "--limit", "200"]);
        if audit.lines().any(|l| l.contains("broker.refused") && l.contains(device) && l.contains(reason)) {
            return;
        }
        assert!(Instant::now() < deadline, "no broker.refused {reason} entry for {device}:\n{audit}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Finding 1: device A subscribed to `outpost/v1/<B>/#` and read B's reports, and wrote a
/// retained message on B's desired-state topic. Now A reads nothing of B's while B reports
/// every second (its stored envelopes grow in the same window), and nothing A writes on B's
/// topics reaches B or the coordinator. Mosquitto's ACL drops it silently (its observer shows
/// B's reports flowing and no foreign retained state); the embedded broker refuses the
/// SUBSCRIBE and the PUBLISH, cuts the connection, counts and audits it.
async fn a_device_reads_and_writes_only_its_own_topics(kind: Kind) {
    let fleet = fleet(kind);
    let (dir_b, device_b, agent_b) = connected_agent(&fleet).await;
    let (dir_a, device_a) = fleet.enrolled_agent_dir("neighbour");
    let c = &fleet.coordinator;
    let ca = dir_b.join("identity/broker-ca.pem");
    let port = fleet.broker_port();
    let envelopes = |v: &Value| v["counts"]["envelopes"].as_u64().unwrap_or(0);
    let before = envelopes(&c.device(&device_b).await);

    let (cert_a, key_a) = identity_of(&dir_a);
    let everything_of_b = format!("outpost/v1/{device_b}/#");
    let out = subscribe(port, &everything_of_b, (&cert_a, &key_a), &ca, 1, 4, &["-v"]).output().unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(seen.is_empty(), "the neighbour read B's topics: {seen:?}");
    let after = envelopes(&c.device(&device_b).await);
    assert!(after > before, "B did not report while A listened ({before} → {after})");
    if kind == Kind::Embedded {
        assert!(!out.status.success(), "the embedded broker kept a refused subscriber");
        refused_and_audited(c, "subscribe", 1.0, &device_a).await;
    }

    // A writes a retained message on B's desired-state topic and a report on B's report topic.
    let payload = fleet.dir.path().join("payload");
    std::fs::write(&payload, b"not from the coordinator").unwrap();
    let desired = format!("outpost/v1/{device_b}/desired");
    let taken = publish_as(port, &desired, &payload, true, Some((&cert_a, &key_a)), &ca, &device_a);
    let report = format!("outpost/v1/{device_b}/report");
    let taken_too = publish_as(port, &report, &payload, false, Some((&cert_a, &key_a)), &ca, &device_a);
    assert_eq!((taken, taken_too), (kind == Kind::Mosquitto, kind == Kind::Mosquitto));
    if let Broker::Mosquitto(m) = &fleet.broker {
        let (cert, key) = observer_identity(&c.data_dir, &fleet.dir.path().join("observer"));
        let out = subscribe(m.port, &format!("outpost/v1/{device_b}/+"), (&cert, &key), &ca, 4, 4, &["-v"])
            .output()
            .unwrap();
        let seen = String::from_utf8_lossy(&out.stdout);
        assert!(seen.contains(&format!("outpost/v1/{device_b}/report")), "{seen:?}");
        assert!(!seen.contains("not from the coordinator"), "{seen:?}");
    } else {
        refused_and_audited(c, "publish", 2.0, &device_a).await;
    }
    // Whatever the broker did, nothing reached B or the coordinator.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let metrics = agent_b.metrics_text().await;
    assert_eq!(metric(&metrics, "outpost_agent_desired_refusals_total"), 0.0, "{metrics}");
    let malformed = metric(&c.metrics().await, "outpost_coordinator_ingest_total{result=\"malformed\"}");
    assert_eq!(malformed, 0.0, "{}", c.metrics().await);
}

/// Finding 1: device A connected with client id `outpost-coordinator` (or B's id), and the
/// broker dropped the coordinator (or B) for it. Now Mosquitto replaces every client id with
/// the certificate's name (`use_username_as_clientid`), and the embedded broker refuses a
/// client id that is not the certificate's (CONNACK 2, counted, audited). Either way the
/// coordinator and B stay connected; an operator-made certificate carrying the coordinator's
/// name is refused by the embedded broker, which admits only the coordinator's own.
async fn no_client_takes_another_clients_id(kind: Kind) {
    let fleet = fleet(kind);
    let (dir_b, device_b, agent_b) = connected_agent(&fleet).await;
    let (dir_a, device_a) = fleet.enrolled_agent_dir("neighbour");
    let c = &fleet.coordinator;
    let ca = dir_b.join("identity/broker-ca.pem");
    let port = fleet.broker_port();
    let disconnects =
        |text: &str| metric(text, "outpost_coordinator_broker_events_total{event=\"disconnected\"}");
    let coordinator_before = disconnects(&c.metrics().await);
    let lost = |log: &str| log.matches("broker unreachable").count();
    let b_before = lost(&agent_b.log());

    let (cert_a, key_a) = identity_of(&dir_a);
    let payload = fleet.dir.path().join("payload");
    std::fs::write(&payload, b"x").unwrap();
    let own_presence = format!("outpost/v1/{device_a}/presence");
    for stolen in ["outpost-coordinator", device_b.as_str()] {
        let taken = publish_as(port, &own_presence, &payload, false, Some((&cert_a, &key_a)), &ca, stolen);
        assert_eq!(taken, kind == Kind::Mosquitto, "connecting as {stolen}");
    }
    if kind == Kind::Embedded {
        refused_and_audited(c, "client_id", 2.0, &device_a).await;
        // A certificate the operator made with the coordinator's name is not the coordinator's.
        let (cert, key) =
            client_identity(&c.data_dir, &fleet.dir.path().join("lookalike"), "outpost-coordinator");
        let taken =
            publish_as(port, &own_presence, &payload, false, Some((&cert, &key)), &ca, "outpost-coordinator");
        assert!(!taken, "a look-alike coordinator certificate was admitted");
        refused_and_audited(c, "client_id", 3.0, "outpost-coordinator").await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics = c.metrics().await;
    assert_eq!(disconnects(&metrics), coordinator_before, "the coordinator was knocked off:\n{metrics}");
    assert_eq!(metric(&metrics, "outpost_coordinator_broker_subscribed"), 1.0, "{metrics}");
    assert_eq!(lost(&agent_b.log()), b_before, "B was knocked off:\n{}", agent_b.log());
}

/// The embedded broker has no door but its front: rumqttd's router runs inside the
/// coordinator without a listener, and each client is one TLS connection to the front — no
/// second, inner connection a local process could find and use (the design before held three
/// descriptors per device, two of them a loopback hop to an inner broker). A plain-TCP CONNECT
/// to the front gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_reaches_the_embedded_broker_around_its_front() {
    let fleet = fleet(Kind::Embedded);
    let (_dir, _device, _agent) = connected_agent(&fleet).await;
    let c = &fleet.coordinator;
    let (api, broker) = (c.addr.port(), fleet.broker_port());
    let sockets = tcp_sockets(c.pid().unwrap());
    let listening: Vec<u16> = sockets.iter().filter(|s| s.listening).map(|s| s.local).collect();
    assert_eq!(
        listening,
        vec![api.min(broker), api.max(broker)],
        "listening ports besides the API's and the broker's"
    );
    // Established: clients at the broker or the API, and the coordinator's own client
    // connection to its broker. Nothing else (no inner hop).
    let established: Vec<&Socket> = sockets.iter().filter(|s| !s.listening).collect();
    let stray: Vec<&&Socket> =
        established.iter().filter(|s| s.local != api && s.local != broker && s.remote != broker).collect();
    assert!(stray.is_empty(), "connections that are neither a client's nor the coordinator's own: {stray:?}");
    let clients = established.iter().filter(|s| s.local == broker).count();
    assert_eq!(clients, 2, "one descriptor per client (the agent and the coordinator): {established:?}");

    // MQTT 3.1.1 CONNECT as the coordinator, in plain TCP: the front wants TLS and closes.
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", broker)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    std::io::Write::write_all(&mut tcp, &connect_packet("outpost-coordinator")).unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut tcp, &mut answer);
    assert!(answer.first() != Some(&0x20), "a plain-TCP CONNECT got a CONNACK: {answer:?}");
    assert_eq!(metric(&c.metrics().await, "outpost_coordinator_broker_subscribed"), 1.0);
}

/// An MQTT 3.1.1 CONNECT (clean session, keep-alive 60 s) for `client_id`.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let string = |s: &str| [&(s.len() as u16).to_be_bytes()[..], s.as_bytes()].concat();
    let mut body = [&string("MQTT")[..], &[4, 0x02, 0, 60]].concat();
    body.extend(string(client_id));
    [&[0x10, body.len() as u8][..], &body].concat()
}

/// One TCP socket a process holds (IPv4, from /proc/net/tcp).
#[derive(Debug)]
struct Socket {
    local: u16,
    remote: u16,
    listening: bool,
}

/// The IPv4 TCP sockets process `pid` holds (its socket inodes, matched in /proc/net/tcp),
/// listening ones sorted by port first.
fn tcp_sockets(pid: u32) -> Vec<Socket> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_owned))
        .collect();
    let port = |field: &str| u16::from_str_radix(field.rsplit(':').next()?, 16).ok();
    let mut sockets: Vec<Socket> = std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if !inodes.contains(*f.get(9)?) {
                return None;
            }
            Some(Socket {
                local: port(f.get(1)?)?,
                remote: port(f.get(2)?)?,
                listening: f.get(3) == Some(&"0A"),
            })
        })
        .collect();
    sockets.sort_by_key(|s| (!s.listening, s.local));
    sockets
}

/// Finding 8: a device could not be revoked or removed. Now `device revoke` lists its
/// certificate in the CA's revocation list — Mosquitto then refuses it at the TLS handshake;
/// the embedded broker cuts its connection at once and refuses it at every reconnect — and
/// whatever it still sends through a broker that has not reloaded the list is refused and
/// counted; it cannot enrol again, and `device delete` removes it with the revocation kept.
async fn a_revoked_device_is_refused_counted_and_audited(kind: Kind) {
    let mut fleet = fleet(kind);
    let (dir, device, mut agent) = connected_agent(&fleet).await;
    let (other_dir, other) = fleet.enrolled_agent_dir("other");
    let c = &fleet.coordinator;
    let out = c.ctl(&["device", "revoke", &device]);
    assert_eq!(out.0, 0, "{}", out.2);
    assert!(out.1.contains(&format!("device {device} revoked; certificate ")), "{}", out.1);
    // Mosquitto (list not yet reloaded) passes its reports on and the coordinator refuses
    // each; the embedded broker refuses the device itself, at once and at every reconnect.
    let revoked = |text: &str| match kind {
        Kind::Mosquitto => metric(text, "outpost_coordinator_ingest_total{result=\"revoked\"}"),
        Kind::Embedded => metric(text, "outpost_coordinator_broker_refused_total{reason=\"revoked\"}"),
    };

    // The agent keeps trying every second; from now on each attempt is refused and counted.
    let deadline = Instant::now() + Duration::from_secs(20);
    while revoked(&c.metrics().await) < 2.0 {
        assert!(Instant::now() < deadline, "{}", c.metrics().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let view = c.device(&device).await;
    assert_eq!(view["status"], "revoked", "{view:#}");
    assert_eq!(view["revoked"]["by"], "admin", "{view:#}");
    let stored = view["counts"]["envelopes"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        c.device(&device).await["counts"]["envelopes"].as_u64(),
        Some(stored),
        "nothing more is stored"
    );
    let (_, table, _) = c.ctl(&["devices"]);
    assert!(table.lines().any(|l| l.starts_with(&device) && l.contains("revoked")), "{table}");

    // It cannot enrol again, with its key, whatever token it holds.
    agent.signal(Signal::SIGTERM);
    agent.wait_exit(Duration::from_secs(20));
    let again = enroll(&dir, c, &c.token("site=test")).unwrap_err();
    assert!(again.contains("was revoked"), "{again}");

    // The CA's revocation list names its certificate: Mosquitto, given the list, refuses it
    // at the handshake and still takes the other device.
    let payload = fleet.dir.path().join("payload");
    std::fs::write(&payload, b"\x01garbage").unwrap();
    let (code, crl, err) = c.ctl(&["device", "crl"]);
    assert_eq!(code, 0, "{err}");
    assert!(crl.starts_with("-----BEGIN X509 CRL-----"), "{crl}");
    // Both the served list and the one written for a local broker name the certificate.
    let serial = out.1.split("certificate ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap();
    let serial = serial.trim_start_matches("00").to_uppercase();
    let served = fleet.dir.path().join("served.crl.pem");
    std::fs::write(&served, &crl).unwrap();
    for list in [served, fleet.dir.path().join("coordinator/pki/devices.crl.pem")] {
        let text = std::process::Command::new("openssl")
            .args(["crl", "-noout", "-text", "-in"])
            .arg(&list)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout).to_uppercase();
        assert!(
            text.contains(&format!("SERIAL NUMBER: {serial}")),
            "{serial} not in {}:\n{text}",
            list.display()
        );
    }
    let cert = |d: &Path| (d.join("identity/client.pem"), d.join("identity/tls.key"));
    let ca = dir.join("identity/broker-ca.pem");
    if kind == Kind::Embedded {
        let (mine, key) = cert(&dir);
        let topic = format!("outpost/v1/{device}/report");
        assert!(!fleet.publish(&topic, &payload, Some((&mine, &key)), &ca), "a revoked device connected");
        let (theirs, key) = cert(&other_dir);
        let topic = format!("outpost/v1/{other}/report");
        assert!(fleet.publish(&topic, &payload, Some((&theirs, &key)), &ca), "the other device was refused");
        let (_, audit, _) = fleet.coordinator.ctl(&["audit", "list", "--limit", "100"]);
        assert!(
            audit.lines().any(|l| l.contains("device.revoke") && l.contains("its broker connection was cut")),
            "{audit}"
        );
    }
    if let Broker::Mosquitto(m) = &mut fleet.broker {
        let crl_file = fleet.dir.path().join("devices.crl.pem");
        std::fs::write(&crl_file, &crl).unwrap();
        m.use_crl(&crl_file);
        let (mine, key) = cert(&dir);
        let topic = format!("outpost/v1/{device}/report");
        assert!(
            !publish(m.port, &topic, &payload, Some((&mine, &key)), &ca),
            "a revoked certificate connected"
        );
        let (theirs, key) = cert(&other_dir);
        let topic = format!("outpost/v1/{other}/report");
        assert!(
            publish(m.port, &topic, &payload, Some((&theirs, &key)), &ca),
            "the other device was refused"
        );
    }

    // Deleted: gone from the fleet, still refused, and every step audited.
    let out = fleet.coordinator.ctl(&["device", "delete", &device]);
    assert_eq!(out.0, 0, "{}", out.2);
    let (_, table, _) = fleet.coordinator.ctl(&["devices"]);
    assert!(!table.contains(&device), "{table}");
    let (code, _, err) = fleet.coordinator.ctl(&["device", "revoke", "dev-0000000000000000"]);
    assert_eq!(code, 3, "not found: {err}");
    assert!(err.contains("no device `dev-0000000000000000`"), "{err}");
    let (_, audit, _) = fleet.coordinator.ctl(&["audit", "list", "--limit", "100"]);
    for action in ["device.revoke", "device.delete"] {
        assert!(
            audit.lines().any(|l| l.contains(action) && l.contains(&device) && l.contains(" ok ")),
            "{audit}"
        );
    }
    assert!(
        audit.lines().any(|l| l.contains("device.enrol") && l.contains(&device) && l.contains("refused")),
        "{audit}"
    );
}

/// Finding: a neighbour published a retained `offline` on another device's presence topic and
/// the coordinator showed it offline while it kept reporting. Presence is now a signed envelope
/// from the agent's current session: a bare word or another key's signature is refused, and so
/// is a replay of the device's own last will from an earlier run — each counted, the device
/// staying online.
async fn presence_cannot_be_forged_or_replayed(kind: Kind) {
    let fleet = fleet(kind);
    let (dir_b, device_b, mut agent_b) = connected_agent(&fleet).await;
    let (dir_a, _) = fleet.enrolled_agent_dir("attacker");
    let c = &fleet.coordinator;
    let online = |v: &Value| v["status"] == "online" && v["presence"] == "online";
    c.wait_device(&device_b, Duration::from_secs(20), online).await;
    let refused = |text: &str| metric(text, "outpost_coordinator_ingest_total{result=\"presence_refused\"}");
    let topic = format!("outpost/v1/{device_b}/presence");
    let ca = dir_b.join("identity/broker-ca.pem");
    let cert_of = |d: &Path| (d.join("identity/client.pem"), d.join("identity/tls.key"));
    let retained = |payload: &Path, (cert, key): &(PathBuf, PathBuf)| {
        let id = common_name(cert);
        let taken = publish_as(fleet.broker_port(), &topic, payload, true, Some((cert, key)), &ca, &id);
        // Mosquitto acknowledges what its ACL drops; the embedded broker refuses it.
        assert_eq!(taken, kind == Kind::Mosquitto, "publish on {topic} as {id}");
    };

    // A bare `offline` and one signed with another key, from the neighbour's certificate.
    let plain = fleet.dir.path().join("plain");
    std::fs::write(&plain, b"offline").unwrap();
    retained(&plain, &cert_of(&dir_a));
    let (stranger, _) = SigningKey::generate().unwrap();
    let foreign = fleet.dir.path().join("foreign");
    std::fs::write(
        &foreign,
        protocol::presence::seal(&stranger, u64::MAX, protocol::presence::Presence::Offline, 0).unwrap(),
    )
    .unwrap();
    retained(&foreign, &cert_of(&dir_a));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(online(&c.device(&device_b).await), "{:#}", c.device(&device_b).await);
    if kind == Kind::Embedded {
        // The embedded broker's front refused both publishes itself, and counted them.
        assert!(broker_refused(c, "publish").await >= 2.0, "{}", c.metrics().await);
        // Only the coordinator may read a presence topic there, so the replay below (which
        // needs the recorded last will) is shown on Mosquitto, with its test observer.
        return;
    }

    // Record the device's real last will as it dies, then bring it back (a new session).
    let (observer_cert, observer_key) = observer_identity(&c.data_dir, &fleet.dir.path().join("observer"));
    let capture =
        subscribe(fleet.broker_port(), &topic, (&observer_cert, &observer_key), &ca, 1, 30, &["-R", "-N"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("mosquitto_sub");
    tokio::time::sleep(Duration::from_secs(1)).await;
    agent_b.signal(Signal::SIGKILL);
    agent_b.wait_exit(Duration::from_secs(10));
    let last_will =
        tokio::task::spawn_blocking(move || capture.wait_with_output().unwrap().stdout).await.unwrap();
    assert!(!last_will.is_empty(), "no last will was published");
    c.wait_device(&device_b, Duration::from_secs(20), |v| v["status"] == "offline").await;
    let _agent_b = start_agent(&dir_b, &[]);
    c.wait_device(&device_b, Duration::from_secs(30), online).await;

    // The recorded last will, replayed: the ACL lets only the device itself publish there, so
    // the replay goes out under its own certificate (which, as its client id, takes over the
    // agent's connection for a moment). The coordinator refuses an older session.
    let before = refused(&c.metrics().await);
    let replay = fleet.dir.path().join("replay");
    std::fs::write(&replay, &last_will).unwrap();
    let (cert, key) = cert_of(&dir_b);
    publish_retained(fleet.broker_port(), &topic, &replay, (&cert, &key), &ca);
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused(&c.metrics().await) < before + 1.0 {
        assert!(Instant::now() < deadline, "the replay was not refused: {}", c.metrics().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.wait_device(&device_b, Duration::from_secs(30), online).await;
}

against_both_brokers!(
    a_device_reads_and_writes_only_its_own_topics,
    no_client_takes_another_clients_id,
    presence_cannot_be_forged_or_replayed,
    a_revoked_device_is_refused_counted_and_audited,
);
