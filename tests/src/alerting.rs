//! Alert sinks for end-to-end tests: a real Prometheus Alertmanager process (Debian's
//! `prometheus-alertmanager`, started on a free port with clustering off) and a plain HTTP
//! receiver that records every JSON document POSTed to it (the generic webhook).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fleet::free_port;

/// The Alertmanager binary, if installed (`prometheus-alertmanager` on Debian).
pub fn alertmanager_bin() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["prometheus-alertmanager", "alertmanager"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

/// A running Alertmanager; killed on drop.
pub struct Alertmanager {
    child: Child,
    pub url: String,
}

impl Alertmanager {
    /// Starts one under `dir`, or `None` when it is not installed and `CI` is unset (in CI a
    /// missing Alertmanager fails the test: `.ci/run` installs it).
    pub fn start(dir: &Path) -> Option<Alertmanager> {
        let Some(bin) = alertmanager_bin() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "prometheus-alertmanager is not installed, and CI is set"
            );
            eprintln!("skipped: prometheus-alertmanager is not installed (required when CI is set)");
            return None;
        };
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: 'null'\n  group_wait: 1s\n  group_interval: 1s\nreceivers:\n  - name: 'null'\n",
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let am = Alertmanager { child, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "alertmanager did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(am)
    }

    /// The alerts it holds as active.
    pub async fn active_alerts(&self) -> Vec<Value> {
        let url = format!("{}/api/v2/alerts?active=true&silenced=false&inhibited=false", self.url);
        match reqwest::get(&url).await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP endpoint that answers 200 to every POST and keeps the JSON bodies.
pub struct WebhookReceiver {
    pub url: String,
    pub received: Arc<Mutex<Vec<Value>>>,
}

impl WebhookReceiver {
    pub async fn start() -> WebhookReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let sink = Arc::clone(&sink);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    // Headers, then as many body bytes as Content-Length says.
                    let body = loop {
                        let Ok(n) = stream.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break buf[end + 4..end + 4 + len].to_vec();
                        }
                    };
                    if let Ok(value) = serde_json::from_slice::<Value>(&body) {
                        sink.lock().unwrap().push(value);
                    }
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                });
            }
        });
        WebhookReceiver { url, received }
    }

    pub fn documents(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }
}
