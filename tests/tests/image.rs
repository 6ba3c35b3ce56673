//! The agent image, built for real on this machine (`deploy/docker/build-agent-image.sh`:
//! a statically linked agent in an empty image, assembled with buildah) and run with podman
//! the way deploy/docker/README.md runs it: read-only, no capabilities, its own default
//! command reading a mounted config. Its HEALTHCHECK must report healthy, the agent must answer
//! by name (`localhost`, so the static binary resolves through /etc/hosts), and `podman stop`
//! (SIGTERM) must end it with exit 0. The image must stay under 50 MB.
//!
//! Needs buildah, podman and a static agent binary (`TEST_AGENT_STATIC_BIN`; `.ci/run` builds
//! one). Without them the test says so and passes, except when `CI` is set: then it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use outpost_tests::model;

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// What is missing to run this test, if anything.
fn missing() -> Option<String> {
    let absent: Vec<&str> = ["buildah", "podman"].into_iter().filter(|t| !have(t)).collect();
    if !absent.is_empty() {
        return Some(format!("{} not installed (Debian packages buildah, podman)", absent.join(" and ")));
    }
    match std::env::var_os("TEST_AGENT_STATIC_BIN") {
        None => Some("TEST_AGENT_STATIC_BIN is not set (.ci/run builds a static agent and sets it)".into()),
        Some(bin) if !Path::new(&bin).is_file() => Some(format!(
            "TEST_AGENT_STATIC_BIN names {}, which does not exist",
            PathBuf::from(bin).display()
        )),
        Some(_) => None,
    }
}

/// podman with the OCI runtime that works on this host: crun refuses hybrid cgroup v1/v2
/// hosts such as this VM, runc does not (`.ci/run` installs it).
fn podman() -> Command {
    let mut command = Command::new("podman");
    if Path::new("/usr/bin/runc").exists() || Path::new("/usr/sbin/runc").exists() {
        command.args(["--runtime", "runc"]);
    }
    command
}

fn run(mut command: Command, what: &str) -> Output {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Removes the container and image however the test ends.
struct Cleanup {
    container: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "-f", "-v", &self.container]).output();
        let _ = podman().args(["rmi", "-f", &self.image]).output();
    }
}

#[test]
fn the_agent_image_builds_runs_reports_healthy_and_stops_cleanly() {
    if let Some(why) = missing() {
        assert!(std::env::var_os("CI").is_none(), "CI is set, so the image must be tested: {why}");
        eprintln!("SKIPPED: the agent image test needs {why}");
        return;
    }
    let bin = std::env::var("TEST_AGENT_STATIC_BIN").unwrap();
    let id = format!("outpost-agent-test-{}", std::process::id());
    let image = format!("localhost/{id}:test");
    let _cleanup = Cleanup { container: id.clone(), image: image.clone() };
    let work = tempfile::tempdir().unwrap();

    // Build, with the archive an air-gapped site would carry.
    let archive = work.path().join("agent-image.tar");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/docker/build-agent-image.sh");
    let mut build = Command::new(&script);
    build.args(["--bin", &bin, "--tag", &image, "--archive"]).arg(&archive);
    let built = text(&run(build, "build-agent-image.sh"));
    println!("{built}");
    let size: u64 = podman()
        .args(["image", "inspect", "--format", "{{.Size}}", &image])
        .output()
        .map(|o| text(&o).parse().unwrap())
        .unwrap();
    println!("agent image {image}: {size} bytes ({:.1} MB)", size as f64 / 1e6);
    assert!(size < 50_000_000, "the agent image is {size} bytes: over the 50 MB target");
    assert!(std::fs::metadata(&archive).unwrap().len() > 1_000_000, "the archive holds the image");
    let user = text(&run(
        {
            let mut c = podman();
            c.args(["image", "inspect", "--format", "{{.Config.User}}", &image]);
            c
        },
        "inspect",
    ));
    assert_eq!(user, "65532:65532", "the agent runs unprivileged");

    // The config and model come in at run time, as in deploy/docker/README.md.
    let config = work.path().join("config");
    std::fs::create_dir(&config).unwrap();
    for suffix in ["onnx", "reference.json"] {
        std::fs::copy(
            model("breast_cancer-1.0.0").with_extension(suffix),
            config.join(format!("bc.{suffix}")),
        )
        .unwrap();
    }
    std::fs::write(config.join("agent.toml"), "[[models]]\nname = \"bc\"\npath = \"bc.onnx\"\n").unwrap();
    // The agent runs as uid 65532: it must be able to read what is mounted.
    use std::os::unix::fs::PermissionsExt;
    for dir in [work.path(), config.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for entry in std::fs::read_dir(&config).unwrap() {
        std::fs::set_permissions(entry.unwrap().path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mut start = podman();
    start
        .args(["run", "-d", "--name", &id, "--network", "none", "--read-only", "--cap-drop", "ALL"])
        .args(["--security-opt", "no-new-privileges", "--stop-timeout", "40"])
        // No systemd here to time the health checks: the test runs them itself.
        .args(["--health-interval", "disable"])
        // The host's own limits are lower than podman's defaults (root may not raise them).
        .args(["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"])
        .arg("-v")
        .arg(format!("{}:/etc/outpost:ro", config.display()))
        .arg(&image);
    run(start, "podman run");

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let check = podman().args(["healthcheck", "run", &id]).output().unwrap();
        if check.status.success() {
            break;
        }
        let logs = podman().args(["logs", &id]).output().unwrap();
        assert!(
            Instant::now() < deadline,
            "the image's HEALTHCHECK never passed: {}\nagent log:\n{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&logs.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let health = text(&run(
        {
            let mut c = podman();
            c.args(["inspect", "--format", "{{.State.Health.Status}}", &id]);
            c
        },
        "inspect health",
    ));
    assert_eq!(health, "healthy");
    // By name: the static binary resolves `localhost` through the /etc/hosts podman provides.
    let mut probe = podman();
    probe.args(["exec", &id, "/usr/local/bin/outpost-agent", "probe", "--url"]);
    probe.arg("http://localhost:8080/v2/models/bc/ready");
    run(probe, "probe of the model by host name");

    let mut stop = podman();
    stop.args(["stop", "-t", "40", &id]);
    run(stop, "podman stop");
    let exit = text(&run(
        {
            let mut c = podman();
            c.args(["inspect", "--format", "{{.State.ExitCode}}", &id]);
            c
        },
        "inspect exit code",
    ));
    let logs = podman().args(["logs", &id]).output().unwrap();
    assert_eq!(exit, "0", "SIGTERM drains and exits 0; log:\n{}", String::from_utf8_lossy(&logs.stderr));
}
