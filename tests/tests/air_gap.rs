//! The air-gapped site: a device enrolled once that no broker reaches gets its desired state on
//! files (`outpostctl device export-desired` → a folder → `outpost-agent import-desired`), and
//! the rules are the MQTT path's: signed by the coordinator's online key, for this device only,
//! newer than what is applied (a replayed old folder is refused), bundles matching the hashes the
//! signed state names. A serving agent with no broker in reach swaps to what was imported.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use outpost_tests::Agent;
use outpost_tests::fleet::{Coordinator, enroll, ok, push, release_key, run, validate, wait_serving};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desired_state_carried_on_files_applies_under_the_same_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Coordinator::start_embedded(&dir.path().join("coordinator"));
    let key = release_key(&c);
    // Enrolled once, then moved where the broker does not reach.
    let agent_dir = dir.path().join("far");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let device = enroll(&agent_dir, &c, &c.token("site=far")).unwrap();
    let config = agent_dir.join("agent.toml");
    std::fs::write(&config, format!("[registry]\ntrusted_keys = [\"{key}\"]\n")).unwrap();
    let other_dir = dir.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = enroll(&other_dir, &c, &c.token("site=near")).unwrap();
    let import = |folder: &std::path::Path| {
        run(
            "outpost-agent",
            &[
                "import-desired",
                folder.to_str().unwrap(),
                "-c",
                config.to_str().unwrap(),
                "--data-dir",
                agent_dir.to_str().unwrap(),
            ],
        )
    };

    ok(push(&c, "breast_cancer-1.0.0", "1.0.0"), "push 1.0.0");
    assert_eq!(validate(&c, "1.0.0").0, 0);
    ok(c.ctl(&["deploy", "bc@1.0.0", "--device", &device, "--device", &other]), "deploy 1.0.0");
    let first = dir.path().join("usb-1");
    let out = ok(c.ctl(&["device", "export-desired", &device, first.to_str().unwrap()]), "export");
    assert!(out.contains("bc@1.0.0") && out.contains("1 bundle(s)") && out.contains("valid until"), "{out}");
    let (code, out, err) = import(&first);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("applied: bc@1.0.0"), "{out}");

    // It serves what was imported, with no broker in reach.
    let agent = Agent::builder()
        .data_dir(&agent_dir)
        .args(&["-c", config.to_str().unwrap()])
        .env("OUTPOST_TELEMETRY__BROKER_URL", "mqtts://127.0.0.1:9")
        .start();
    wait_serving(&agent, "1.0.0").await;

    // A newer release arrives the same way, beside the serving agent, which swaps to it.
    ok(push(&c, "breast_cancer-1.1.0", "1.1.0"), "push 1.1.0");
    assert_eq!(validate(&c, "1.1.0").0, 0);
    ok(c.ctl(&["deploy", "bc@1.1.0", "--device", &device]), "deploy 1.1.0");
    let second = dir.path().join("usb-2");
    ok(c.ctl(&["device", "export-desired", &device, second.to_str().unwrap()]), "export 2");
    let bundle_in = |folder: &std::path::Path| {
        std::fs::read_dir(folder)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "bundle"))
            .unwrap()
    };
    // A copy of that folder whose bundle was swapped for another (validly signed) file:
    // refused by the hash the signed state names, nothing changes.
    let swapped = dir.path().join("usb-2-swapped");
    std::fs::create_dir_all(&swapped).unwrap();
    std::fs::copy(second.join("desired.bin"), swapped.join("desired.bin")).unwrap();
    std::fs::copy(bundle_in(&first), swapped.join(bundle_in(&second).file_name().unwrap())).unwrap();
    let (code, _, err) = import(&swapped);
    assert_eq!(code, 3, "a swapped bundle was installed: {err}");
    assert!(err.contains("the desired state names"), "{err}");
    let (code, out, err) = import(&second);
    assert_eq!(code, 0, "{out}{err}");
    wait_serving(&agent, "1.1.0").await;

    // The old stick again: refused by revision, 1.1.0 serves on.
    let (code, _, err) = import(&first);
    assert_eq!(code, 3, "a replayed old folder was applied: {err}");
    assert!(err.contains("is not newer than the applied revision"), "{err}");
    // Another device's folder: refused by name.
    let foreign = dir.path().join("usb-other");
    ok(c.ctl(&["device", "export-desired", &other, foreign.to_str().unwrap()]), "export other");
    let (code, _, err) = import(&foreign);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(&format!("is for device `{other}`")), "{err}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(outpost_tests::fleet::served(&agent).await.as_deref(), Some("1.1.0"));
    // An explicit rollback is a new, higher revision naming the older version: it goes through.
    ok(c.ctl(&["deploy", "bc@1.0.0", "--device", &device]), "deploy 1.0.0 again");
    let third = dir.path().join("usb-3");
    ok(c.ctl(&["device", "export-desired", &device, third.to_str().unwrap()]), "export 3");
    let (code, out, err) = import(&third);
    assert_eq!(code, 0, "{out}{err}");
    wait_serving(&agent, "1.0.0").await;
}
