//! Signed trust roots end to end: a real coordinator, Mosquitto over mutual TLS, a real agent.
//! The device gets root version 1 at enrolment; a rotation forged with a stolen online key (no
//! signature by the old root) is refused and the device keeps its root; the operator's rotation
//! (`outpostctl root draft --new-online-key` + `root push`) is adopted, acks and deploys go on
//! under the new online key, and the retired one signs nothing the device accepts; a release
//! threshold of 2 refuses a bundle signed by one release key and takes one signed by two.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use outpost_shared::protocol::messages::{self, CoordinatorMessage, DesiredState};
use outpost_shared::protocol::root::{Role, SignedRoot};
use outpost_shared::protocol::{self, SigningKey};
use outpost_tests::fleet::{
    Coordinator, Mosquitto, bundle_create, metric, observer_identity, ok, publish_retained, push,
    release_key, run, start_agent, validate, wait_serving,
};
use serde_json::Value;

async fn wait_metric(agent: &outpost_tests::Agent, name: &str, want: f64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let value = metric(&agent.metrics_text().await, name);
        if value == want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {name} is {value}, not {want}\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_log(agent: &outpost_tests::Agent, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(45);
    while !agent.log().contains(needle) {
        assert!(Instant::now() < deadline, "the agent never logged `{needle}`:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn key_at(path: &Path) -> SigningKey {
    SigningKey::from_pkcs8(&std::fs::read(path).unwrap()).unwrap()
}

/// A desired state for `device` at `revision` (no models) carrying `roots`, sealed by `key`.
fn sealed_desired(key: &SigningKey, device: &str, revision: u64, roots: &[&SignedRoot]) -> Vec<u8> {
    let state = DesiredState {
        device: device.to_owned(),
        revision,
        models: Vec::new(),
        expires_at_ms: 0,
        roots: roots.iter().map(|r| r.to_bytes()).collect(),
    };
    let now = outpost_shared::endpoints::now_ms();
    protocol::seal(key, 1 << 40, now, &messages::encode(&CoordinatorMessage::Desired(state))).unwrap()
}

fn held_root(agent_dir: &Path) -> SignedRoot {
    SignedRoot::parse(&std::fs::read(agent_dir.join("identity/root.json")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_is_accepted_only_with_the_old_roots_signature() {
    let dir = tempfile::tempdir().unwrap();
    // Mosquitto, where an observer with the coordinator's broker rights can publish what an
    // attacker holding a stolen online key would.
    let data = dir.path().join("coordinator");
    Coordinator::init(&data);
    let broker = Mosquitto::start(dir.path(), &data);
    let c = Coordinator::start(&data, &broker.url());
    // No `registry.trusted_keys`: the device follows the root's release role.
    let agent_dir = dir.path().join("agent");
    let (agent, device) = start_agent(&c, &agent_dir, "site=a", &[], "");
    ok(push(&c, "breast_cancer-1.0.0", "1.0.0"), "push");
    assert_eq!(validate(&c, "1.0.0").0, 0);
    ok(c.ctl(&["deploy", "bc@1.0.0"]), "deploy");
    wait_serving(&agent, "1.0.0").await;
    // Enrolment gave the device root version 1: root key pki/root.pk8, online key pki/online.pk8.
    let v1 = held_root(&agent_dir);
    assert_eq!(v1.version(), 1);
    let online_v1 = key_at(&data.join("pki/online.pk8"));
    assert!(v1.signed.online.holds(&online_v1.public_key()));
    assert!(v1.signed.root.holds(&key_at(&data.join("pki/root.pk8")).public_key()));
    assert_eq!(v1.signed.release.keys, vec![release_key(&c)]);
    wait_metric(&agent, "outpost_agent_trust_root_version", 1.0, "root from enrolment").await;

    // A thief with the online key names their own root and online keys as version 2, signed by
    // their root key and the stolen online key — not by the old root key.
    let (thief_root, thief_online) = (SigningKey::generate().unwrap().0, SigningKey::generate().unwrap().0);
    let mut body = v1.signed.next(outpost_shared::endpoints::now_ms());
    body.root = Role::of(&[thief_root.public_key()], 1);
    body.online = Role::of(&[thief_online.public_key()], 1);
    let mut forged = SignedRoot::unsigned(body);
    forged.sign(&thief_root);
    forged.sign(&online_v1);
    let (cert, tls_key) = observer_identity(&data, &dir.path().join("certs"));
    let ca = data.join("pki/ca.pem");
    let topic = format!("outpost/v1/{device}/desired");
    let forged_path = dir.path().join("forged.bin");
    std::fs::write(&forged_path, sealed_desired(&thief_online, &device, 1_000, &[&v1, &forged])).unwrap();
    let revision = metric(&agent.metrics_text().await, "outpost_agent_desired_revision");
    publish_retained(broker.port, &topic, &forged_path, (&cert, &tls_key), &ca);
    wait_log(
        &agent,
        "root version 2 is signed by 0 of the 1 required version 1's (the current root's) root keys",
    )
    .await;
    assert_eq!(held_root(&agent_dir), v1, "the forged root reached the disk");
    let metrics = agent.metrics_text().await;
    assert_eq!(metric(&metrics, "outpost_agent_trust_root_version"), 1.0);
    assert_eq!(metric(&metrics, "outpost_agent_desired_revision"), revision);

    // The operator rotates the online key: a draft naming the coordinator's next online key,
    // signed by the coordinator's root key on push.
    let draft = dir.path().join("root-2.json");
    let drafted =
        ok(c.ctl(&["root", "draft", "--new-online-key", "--out", draft.to_str().unwrap()]), "draft");
    assert!(drafted.contains("version  2") && drafted.contains("(unsigned)"), "{drafted}");
    let pushed = ok(c.ctl(&["root", "push", draft.to_str().unwrap()]), "root push");
    assert!(pushed.contains("version  2"), "{pushed}");
    wait_metric(&agent, "outpost_agent_trust_root_version", 2.0, "rotation adopted").await;
    let v2 = held_root(&agent_dir);
    let online_v2 = key_at(&data.join("pki/online.pk8"));
    assert_ne!(online_v2.key_id(), online_v1.key_id());
    assert!(
        v2.signed.online.holds(&online_v2.public_key()) && !v2.signed.online.holds(&online_v1.public_key())
    );
    assert!(data.join(format!("pki/online.{}.retired.pk8", online_v1.key_id())).is_file());
    // The coordinator hears which root the device holds.
    c.wait_device(&device, Duration::from_secs(45), |d| d["root_version"] == 2).await;
    let (_, shown, _) = c.ctl(&["root", "show"]);
    assert!(shown.contains("1 at 2"), "{shown}");

    // Acks (now signed by the new online key) keep flowing, and a deploy goes through.
    let acked = metric(&agent.metrics_text().await, "outpost_agent_telemetry_acked_total");
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&agent.metrics_text().await, "outpost_agent_telemetry_acked_total") <= acked {
        assert!(Instant::now() < deadline, "no ack verified after the rotation\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ok(push(&c, "breast_cancer-1.1.0", "1.1.0"), "push 1.1.0");
    assert_eq!(validate(&c, "1.1.0").0, 0);
    ok(c.ctl(&["deploy", "bc@1.1.0"]), "deploy 1.1.0");
    wait_serving(&agent, "1.1.0").await;

    // The retired online key signs nothing the device takes.
    let retired = dir.path().join("retired.bin");
    std::fs::write(&retired, sealed_desired(&online_v1, &device, 100_000, &[])).unwrap();
    publish_retained(broker.port, &topic, &retired, (&cert, &tls_key), &ca);
    wait_log(&agent, &format!("no trusted key with id `{}`", online_v1.key_id())).await;
    assert_eq!(held_root(&agent_dir).version(), 2);

    // Release threshold 2 of 3: a bundle the registry signs alone is refused by the device;
    // with a second release key's signature it serves.
    let k2 = dir.path().join("k2.pk8");
    let k3 = dir.path().join("k3.pk8");
    let hex_of = |path: &Path| {
        let (code, out, err) = run("outpostctl", &["key", "generate", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        out.trim().to_owned()
    };
    let (k2_hex, k3_hex) = (hex_of(&k2), hex_of(&k3));
    let draft = dir.path().join("root-3.json");
    let args = ["root", "draft", "--add-release-key", &k2_hex, "--add-release-key", &k3_hex];
    let drafted = ok(
        c.ctl(&[&args[..], &["--release-threshold", "2", "--out", draft.to_str().unwrap()]].concat()),
        "draft 3",
    );
    assert!(drafted.contains("release  2 of 3"), "{drafted}");
    // Signed offline by the current root key (the coordinator would add the same signature).
    let root_key = data.join("pki/root.pk8");
    ok(c.ctl(&["root", "sign", draft.to_str().unwrap(), "--key", root_key.to_str().unwrap()]), "root sign");
    ok(c.ctl(&["root", "push", draft.to_str().unwrap()]), "root push 3");
    wait_metric(&agent, "outpost_agent_trust_root_version", 3.0, "threshold root adopted").await;

    ok(push(&c, "breast_cancer-1.0.0", "1.2.0"), "push 1.2.0");
    assert_eq!(validate(&c, "1.2.0").0, 0);
    ok(c.ctl(&["deploy", "bc@1.2.0"]), "deploy 1.2.0");
    wait_log(&agent, "signed by 1 of the 2 release keys the trust root requires").await;
    assert_eq!(outpost_tests::fleet::served(&agent).await.as_deref(), Some("1.1.0"));

    let bundle = dir.path().join("bc-1.3.0.bundle");
    ok(bundle_create("breast_cancer-1.0.0", "bc", "1.3.0", Some(&k2), &bundle), "bundle create");
    let bytes = std::fs::read(&bundle).unwrap();
    let client = c.client();
    let (status, answer): (u16, Value) = tokio::task::spawn_blocking(move || {
        client.put_bytes(
            "/api/v1/models/bc/versions/1.3.0",
            "application/octet-stream",
            &bytes,
            &mut |_, _| {},
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(status, 201, "{answer}");
    assert_eq!(validate(&c, "1.3.0").0, 0);
    ok(c.ctl(&["deploy", "bc@1.3.0"]), "deploy 1.3.0");
    wait_serving(&agent, "1.3.0").await;

    // What the device holds survives a restart.
    drop(agent);
    let config = agent_dir.join("agent.toml");
    let again = outpost_tests::fleet::reporting_agent(&agent_dir, &config);
    wait_serving(&again, "1.3.0").await;
    wait_metric(&again, "outpost_agent_trust_root_version", 3.0, "root after restart").await;
}
