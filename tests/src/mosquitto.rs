//! A real Mosquitto for end-to-end tests — an mTLS listener with certificates from the
//! coordinator's CA and the ACL shipped in `deploy/` — and the `mosquitto_pub` /
//! `mosquitto_sub` helpers tests use as devices, observers and attackers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::fleet::{free_port, run};

/// The Mosquitto broker binary (Debian installs it in /usr/sbin, often not on PATH).
fn mosquitto_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("mosquitto")).find(|p| p.is_file()))
        .unwrap_or_default();
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/mosquitto"))
}

/// A Mosquitto process with an mTLS listener on a fixed port (so it can be restarted).
pub struct Mosquitto {
    pub port: u16,
    /// The listener for coordinator replicas ([`Mosquitto::start_for_replicas`]).
    pub replicas_port: Option<u16>,
    config: PathBuf,
    child: Option<Child>,
    pub dir: PathBuf,
}

/// The ACL shipped in `deploy/` (each device confined to its own topics) plus, for these tests
/// only, an observer ([`observer_identity`]) that reads and writes every Outpost topic.
fn test_acl(dir: &Path) -> PathBuf {
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto/acl");
    let mut acl = std::fs::read_to_string(&shipped).expect("deploy/mosquitto/acl");
    acl.push_str(&format!("\n# Tests only.\nuser {OBSERVER}\ntopic readwrite outpost/v1/#\n"));
    let path = dir.join("acl");
    std::fs::write(&path, acl).unwrap();
    path
}

impl Mosquitto {
    /// Issues the broker's certificate from the coordinator's CA in `coordinator_data` and
    /// starts Mosquitto requiring client certificates from that CA.
    pub fn start(dir: &Path, coordinator_data: &Path) -> Mosquitto {
        Mosquitto::start_with(dir, coordinator_data, false)
    }

    /// [`Mosquitto::start`] with a second listener for coordinator replicas, as
    /// `deploy/mosquitto/mosquitto.conf` shows: the same certificates and ACL, but a client id
    /// of the replica's own (each replica names itself; on the devices' listener the certificate
    /// name is the client id, and replicas sharing one would knock each other off).
    pub fn start_for_replicas(dir: &Path, coordinator_data: &Path) -> Mosquitto {
        Mosquitto::start_with(dir, coordinator_data, true)
    }

    /// `mqtts://` URL of the replicas' listener.
    pub fn replicas_url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.replicas_port.expect("started for replicas"))
    }

    fn start_with(dir: &Path, coordinator_data: &Path, replicas: bool) -> Mosquitto {
        let certs = dir.join("broker-certs");
        let (code, _, err) = run(
            "outpost-coordinator",
            &[
                "cert",
                "server",
                "--name",
                "localhost",
                "--name",
                "127.0.0.1",
                "--out-dir",
                certs.to_str().unwrap(),
                "--data-dir",
                coordinator_data.to_str().unwrap(),
            ],
        );
        assert_eq!(code, 0, "cert server: {err}");
        let port = free_port();
        let replicas_port = replicas.then(free_port);
        let replicas_listener = match replicas_port {
            Some(rport) => format!(
                "listener {rport} 127.0.0.1\ncafile {c}/ca.pem\ncertfile {c}/server.pem\nkeyfile {c}/server.key\n\
                 require_certificate true\nuse_identity_as_username true\n",
                c = certs.display()
            ),
            None => String::new(),
        };
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "per_listener_settings false\nlistener {port} 127.0.0.1\ncafile {c}/ca.pem\ncertfile {c}/server.pem\n\
                 keyfile {c}/server.key\nrequire_certificate true\nuse_identity_as_username true\n\
                 use_username_as_clientid true\n\
                 allow_anonymous false\nacl_file {acl}\npersistence false\nmax_queued_messages 100000\nmax_inflight_messages 1000\n\
                 max_packet_size 4202496\nlog_dest stderr\n\
                 log_type error\nlog_type warning\nlog_type notice\n{user}{replicas_listener}",
                c = certs.display(),
                acl = test_acl(dir).display(),
                // Run as root only when we are root: Mosquitto drops to `mosquitto` otherwise,
                // which cannot read the 0600 key this test wrote.
                user = if nix::unistd::Uid::effective().is_root() { "user root\n" } else { "" },
            ),
        )
        .unwrap();
        let mut m = Mosquitto { port, replicas_port, config, child: None, dir: dir.to_owned() };
        m.resume();
        m
    }

    /// Makes the broker check client certificates against the revocation list at `crl`
    /// (Mosquitto's `crlfile`), restarting it so the list is read.
    pub fn use_crl(&mut self, crl: &Path) {
        let mut config = std::fs::read_to_string(&self.config).unwrap();
        config.push_str(&format!("crlfile {}\n", crl.display()));
        std::fs::write(&self.config, config).unwrap();
        self.stop();
        self.resume();
    }

    /// Starts the broker again on the same port.
    pub fn resume(&mut self) {
        let log = std::fs::File::create(self.dir.join("mosquitto.log")).unwrap();
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto (Debian package `mosquitto`)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the broker (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }
}

/// The identity of the tests' observer on Mosquitto: read and write on every Outpost topic.
pub const OBSERVER: &str = "outpost-observer";

/// A client certificate for `name` issued by the CA in `coordinator_data`, written to `dir` as
/// `client.pem` / `client.key`. Returns (certificate, key).
pub fn client_identity(coordinator_data: &Path, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (code, _, err) = run(
        "outpost-coordinator",
        &[
            "cert",
            "client",
            "--name",
            name,
            "--out-dir",
            dir.to_str().unwrap(),
            "--data-dir",
            coordinator_data.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "cert client: {err}");
    (dir.join("client.pem"), dir.join("client.key"))
}

/// The tests' observer ([`OBSERVER`]): on Mosquitto (whose test ACL grants it every Outpost
/// topic) it sees what the coordinator sees and can write where the coordinator writes, as an
/// attacker holding broker credentials with those rights would. The embedded broker admits no
/// such identity.
pub fn observer_identity(coordinator_data: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    client_identity(coordinator_data, dir, OBSERVER)
}

/// Publishes `payload` retained (QoS 1) with `mosquitto_pub`, presenting `cert`/`key`; panics
/// if the publish fails (a broker's ACL denial is acknowledged all the same).
pub fn publish_retained(port: u16, topic: &str, payload: &Path, (cert, key): (&Path, &Path), ca: &Path) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &port.to_string(), "-t", topic, "-r", "-q", "1"])
        .args(["-i", &common_name(cert), "-f"])
        .arg(payload)
        .arg("--cafile")
        .arg(ca)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .status()
        .expect("mosquitto_pub (Debian package mosquitto-clients)");
    assert!(status.success(), "mosquitto_pub to {topic} failed");
}

/// `mosquitto_sub` on `topic` presenting `cert`/`key`, ending after `count` messages or
/// `wait_secs` seconds; `extra` adds flags (`-R`, `-N`, `-v`). Returns what it printed.
pub fn subscribe(
    port: u16,
    topic: &str,
    (cert, key): (&Path, &Path),
    ca: &Path,
    count: u32,
    wait_secs: u32,
    extra: &[&str],
) -> Command {
    let mut cmd = Command::new("mosquitto_sub");
    cmd.args(["-h", "localhost", "-p", &port.to_string(), "-t", topic, "-i", &common_name(cert)])
        .args(["-C", &count.to_string(), "-W", &wait_secs.to_string()])
        .args(extra)
        .arg("--cafile")
        .arg(ca)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key);
    cmd
}

/// The common name of a PEM certificate (a device's identity), read with `openssl`.
pub fn common_name(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "sep_multiline,sname", "-in"])
        .arg(cert)
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("CN="))
        .unwrap_or_else(|| panic!("no CN in {}: {text}", cert.display()))
        .to_owned()
}

/// Publishes `payload` with `mosquitto_pub` to the broker on `port`, presenting `cert`/`key`
/// (or nothing). With a certificate the MQTT client id is the certificate's identity (the
/// embedded broker refuses any other). Returns whether the publish succeeded.
pub fn publish(port: u16, topic: &str, payload: &Path, client: Option<(&Path, &Path)>, ca: &Path) -> bool {
    let id = client.map_or_else(|| format!("test-{}", free_port()), |(cert, _)| common_name(cert));
    publish_as(port, topic, payload, false, client, ca, &id)
}

/// `mosquitto_pub` of `payload` (QoS 1, `retain` or not) with MQTT client id `client_id`,
/// presenting `cert`/`key` (or nothing); `true` if the broker took it. Mosquitto acknowledges a
/// publish its ACL denies (and drops it); the embedded broker's front refuses the connection.
pub fn publish_as(
    port: u16,
    topic: &str,
    payload: &Path,
    retain: bool,
    client: Option<(&Path, &Path)>,
    ca: &Path,
    client_id: &str,
) -> bool {
    let mut cmd = Command::new("mosquitto_pub");
    // By name, not by IP: OpenSSL clients send an IP as SNI, which rustls refuses with a
    // decode error. Both brokers' certificates name `localhost`.
    cmd.args(["-h", "localhost", "-p", &port.to_string(), "-q", "1", "-t", topic, "-f"])
        .arg(payload)
        .arg("--cafile")
        .arg(ca)
        .args(["-i", client_id])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if retain {
        cmd.arg("-r");
    }
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    cmd.status().map(|s| s.success()).unwrap_or(false)
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
