//! The coordinator's secrets sealed at rest, with the real binary: a coordinator first run in the
//! clear and then given `[secrets] key` seals its CA key, root, release and online keys and admin
//! token in place — none of their bytes is left on disk — and keeps working (it issues a device
//! certificate and serves the API); without the key, or with another, it refuses to start (exit 2)
//! naming the file and the key, and changes nothing; outpostctl refuses a sealed token file and
//! says how to get the token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use outpost_tests::fleet::{Coordinator, enroll, run};

const KEY: &str = "5ec4e75ec4e75ec4e75ec4e75ec4e75ec4e75ec4e75ec4e75ec4e75ec4e75ec4";
const SECRET_FILES: [&str; 5] =
    ["pki/ca.key", "pki/signing.pk8", "pki/online.pk8", "pki/root.pk8", "admin.token"];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Runs `outpost-coordinator serve` on `data` until it exits (it should refuse to start).
fn refused_start(data: &Path, env: &[(&str, &str)]) -> (i32, String) {
    let child = std::process::Command::new(outpost_tests::bin_dir().join("outpost-coordinator"))
        .args(["serve", "--listen", "127.0.0.1:0", "--broker-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    outpost_tests::refused_exit(
        child,
        Duration::from_secs(30),
        "the coordinator started without a usable key",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_secrets_leave_nothing_usable_on_disk_and_need_their_key_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("coordinator");
    let (mut c, _) = Coordinator::start_embedded(&data);
    let clear: Vec<Vec<u8>> = SECRET_FILES.iter().map(|f| std::fs::read(data.join(f)).unwrap()).collect();
    assert!(contains(&clear[0], b"PRIVATE KEY"), "the CA key is PEM in the clear first");
    let admin = String::from_utf8(clear[4].clone()).unwrap().trim().to_owned();
    c.stop(nix::sys::signal::Signal::SIGTERM);

    // With a key: every secret is sealed in place at start, and nothing of it stays readable.
    let env = [
        ("OUTPOST_COORDINATOR_SECRETS__KEY", "env:COORDINATOR_SECRETS_KEY"),
        ("COORDINATOR_SECRETS_KEY", KEY),
    ];
    let (c, _) = Coordinator::start_embedded_with(&data, &env);
    for (file, before) in SECRET_FILES.iter().zip(&clear) {
        let now = std::fs::read(data.join(file)).unwrap();
        assert!(now.starts_with(b"outpost-sealed-secret-v1\n"), "{file} is not sealed");
        // A 16-byte stretch of the clear secret (past any header every key shares) is a leak.
        let n = before.len();
        assert!(
            !contains(&now, &before[n - 16..]) && !contains(&now, &before[n / 2 - 8..n / 2 + 8]),
            "{file} leaks"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(data.join(file)).unwrap().permissions().mode() & 0o777, 0o600, "{file}");
    }
    assert!(c.log().contains("secret sealed in place"), "{}", c.log());
    assert!(!c.log().contains(KEY) && !c.log().contains(&admin));

    // outpostctl cannot use the sealed token file and says where the token is.
    let (code, _, err) = c.ctl(&["devices"]);
    assert_eq!(code, 2);
    assert!(err.contains("is sealed") && err.contains("outpost-coordinator admin-token"), "{err}");
    let (code, printed, err) =
        run("outpost-coordinator", &["admin-token", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, 2, "the token printed without the key: {printed}");
    assert!(err.contains("admin.token is sealed") && err.contains("[secrets] key"), "{err}");
    let key_file = dir.path().join("secrets.key");
    std::fs::write(&key_file, KEY).unwrap();
    let spec = format!("file:{}", key_file.display());
    let (code, printed, err) = run(
        "outpost-coordinator",
        &["admin-token", "--data-dir", data.to_str().unwrap(), "--secrets-key", &spec],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(printed.trim(), admin);

    // The sealed CA key still signs: a device enrols (its certificate is issued now).
    let url = c.url();
    let ctl = |args: &[&str]| {
        run("outpostctl", &[&["--url", url.as_str(), "--token", admin.as_str()], args].concat())
    };
    let (code, token, err) = ctl(&["device", "token", "create", "--labels", "site=a"]);
    assert_eq!(code, 0, "{err}");
    let agent = dir.path().join("agent");
    let device = enroll(&agent, &c, token.trim()).unwrap();
    assert!(std::fs::read_to_string(agent.join("identity/client.pem")).unwrap().contains("CERTIFICATE"));
    let (code, shown, err) = ctl(&["root", "show"]);
    assert_eq!(code, 0, "{err}");
    assert!(shown.contains("version  1"), "{shown}");
    drop(c);
    let _ = device;

    // Without the key, or with another one: exit 2 naming the file and the key; nothing changes.
    let sealed: Vec<Vec<u8>> = SECRET_FILES.iter().map(|f| std::fs::read(data.join(f)).unwrap()).collect();
    let (code, err) = refused_start(&data, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is sealed") && err.contains("[secrets] key"), "{err}");
    let other = "0".repeat(64);
    let (code, err) = refused_start(
        &data,
        &[
            ("OUTPOST_COORDINATOR_SECRETS__KEY", "env:COORDINATOR_SECRETS_KEY"),
            ("COORDINATOR_SECRETS_KEY", &other),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("was sealed with key") && err.contains("env:COORDINATOR_SECRETS_KEY"), "{err}");
    let after: Vec<Vec<u8>> = SECRET_FILES.iter().map(|f| std::fs::read(data.join(f)).unwrap()).collect();
    assert_eq!(after, sealed, "a refused start changed a secret");
}
