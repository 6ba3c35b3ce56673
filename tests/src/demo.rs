//! `outpost demo` as an end-to-end fixture: start it in exploration mode (it keeps running once
//! both rollouts are done), read what it printed, and stop it with Ctrl-C (SIGINT) like a person.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::bin_dir;

/// A running demo fleet.
#[derive(Debug)]
pub struct Demo {
    child: Child,
    /// Everything it printed up to the exploration hints.
    pub printed: Vec<String>,
    /// The coordinator's API (`http://127.0.0.1:…`).
    pub url: String,
    /// The admin token (read from the file the demo names).
    pub admin_token: String,
    /// The viewer token the demo wrote for the dashboard.
    pub viewer_token: String,
    dir: tempfile::TempDir,
}

fn after<'a>(printed: &'a [String], prefix: &str) -> &'a str {
    printed.iter().find_map(|l| l.trim().strip_prefix(prefix)).unwrap_or_else(|| {
        panic!("the demo never printed `{prefix}`:\n{}", printed.join("\n"));
    })
}

impl Demo {
    /// Starts `outpost demo` with short bakes on a free API port and waits (≤ 5 min) until it
    /// has run both rollouts and stays up for exploration.
    pub fn start() -> Demo {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("demo");
        let mut child = Command::new(bin_dir().join("outpost"))
            .args(["demo", "--bake-secs", "5", "--api", "127.0.0.1:0", "--dir"])
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start `outpost demo` (built by `cargo test --workspace`)");
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut printed = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(300);
        while !printed.iter().any(|l: &String| l.starts_with("The fleet keeps running")) {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => printed.push(line),
                Err(_) => {
                    let _ = child.kill();
                    panic!("the demo never reached exploration:\n{}", printed.join("\n"));
                }
            }
        }
        // The exploration hints follow; take them all.
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            printed.push(line);
        }
        let export = after(&printed, "export OUTPOSTCTL_URL=");
        let (url, token_file) = export.split_once(" OUTPOSTCTL_TOKEN=$(cat ").expect("export line");
        let read = |p: &str| std::fs::read_to_string(Path::new(p)).expect(p).trim().to_owned();
        let admin_token = read(token_file.trim_end_matches(')'));
        let viewer_file =
            after(&printed, &format!("open {url}/ui in a browser and sign in with the token in "));
        let viewer_token = read(viewer_file);
        Demo { url: url.to_owned(), admin_token, viewer_token, printed, child, dir }
    }

    /// All it printed, one line each.
    pub fn output(&self) -> String {
        self.printed.join("\n")
    }

    /// Where the demo's state lives.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("demo")
    }

    /// Ctrl-C, then waits (≤ 60 s) for it to exit.
    pub fn interrupt(&mut self) -> ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .expect("SIGINT");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the demo did not stop on SIGINT");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
