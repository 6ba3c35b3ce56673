//! Large uploads (bundles, validation datasets, telemetry files) reach the coordinator's disk as
//! they arrive instead of its memory: several at once cost no more than one, a body without a
//! declared length is cut off at the route's limit, and a full disk is a clear 507 that loses
//! nothing — the space comes back and the next push works.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use outpost_tests::disk::{resident_bytes, small_disk};
use outpost_tests::fleet::{Coordinator, ok, push};

/// Sends `total` zero bytes to `path` with the admin token (declared with `Content-Length`, or
/// chunked), reading the answer on a second handle while it writes — the server may answer
/// before the body is done — and returns the answer's status line and body.
fn upload(addr: SocketAddr, token: &str, path: &str, total: usize, chunked: bool) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut reader = stream.try_clone().unwrap();
    let answer = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            // One answer is all we wait for: the head and a short JSON body.
            if out.windows(4).any(|w| w == b"\r\n\r\n") && out.ends_with(b"}") {
                break;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let length =
        if chunked { "Transfer-Encoding: chunked".to_owned() } else { format!("Content-Length: {total}") };
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/octet-stream\r\n{length}\r\n\r\n",
        token.trim()
    );
    let mut send = || -> std::io::Result<()> {
        stream.write_all(head.as_bytes())?;
        let piece = vec![0u8; 1 << 20];
        let mut sent = 0;
        while sent < total {
            let n = piece.len().min(total - sent);
            if chunked {
                stream.write_all(format!("{n:x}\r\n").as_bytes())?;
                stream.write_all(&piece[..n])?;
                stream.write_all(b"\r\n")?;
            } else {
                stream.write_all(&piece[..n])?;
            }
            sent += n;
        }
        if chunked {
            stream.write_all(b"0\r\n\r\n")?;
        }
        Ok(())
    };
    // A refusal may close the connection before everything was sent: the answer says why.
    let _ = send();
    answer.join().unwrap()
}

const PUT_BC: &str = "/api/v1/models/bc/versions/1.0.0";

/// The finding's gap: uploads were read whole into memory (512 MiB allowed per request), so
/// a few operators — or one stolen operator token — pushing at once took the coordinator's
/// memory up by the sum of their bodies. Three 90 MB uploads at once now leave its peak
/// resident memory within 64 MB of where it started (it was 270 MB more at least), each is
/// refused for what it is (not a bundle) after it was read from disk, and a chunked body with
/// no declared length is cut off at the route's limit.
#[test]
fn concurrent_large_uploads_are_spooled_to_disk_not_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Coordinator::start_embedded_with(
        &dir.path().join("coordinator"),
        &[("OUTPOST_COORDINATOR_API__MAX_BODY_BYTES", "100000000")],
    );
    let admin = std::fs::read_to_string(c.token_file()).unwrap();
    let pid = c.pid().unwrap();
    let (before, _) = resident_bytes(pid);
    let answers: Vec<String> = std::thread::scope(|s| {
        let sends: Vec<_> =
            (0..3).map(|_| s.spawn(|| upload(c.addr, &admin, PUT_BC, 90_000_000, false))).collect();
        sends.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for answer in &answers {
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("not an Outpost bundle (bad magic bytes)"), "{answer}");
    }
    let (_, peak) = resident_bytes(pid);
    let grew = peak.saturating_sub(before);
    eprintln!("resident before {} MB, peak {} MB", before >> 20, peak >> 20);
    assert!(grew < 64 << 20, "three 90 MB uploads raised the peak by {} MB", grew >> 20);
    assert_eq!(
        std::fs::read_dir(c.data_dir.join("uploads")).unwrap().count(),
        0,
        "nothing is left in the spool"
    );

    let cut = upload(c.addr, &admin, PUT_BC, 110_000_000, true);
    assert!(cut.starts_with("HTTP/1.1 413"), "{cut}");
    assert!(cut.contains("larger than this route's limit of 100000000 bytes"), "{cut}");
    // A real bundle still goes through the same path.
    ok(push(&c, "breast_cancer-1.0.0", "1.0.0"), "model push after the refusals");
}

/// A disk that fills during an upload: 507 naming the spool directory and how far the body
/// came; the half-written spool file is gone with the request (its space comes back at once),
/// and the coordinator goes on — the next push works. Needs root for the tmpfs; required when
/// `CI` is set.
#[test]
fn an_upload_that_fills_the_disk_is_refused_with_507_and_its_space_comes_back() {
    let Some((disk, _mounted)) = small_disk("64m") else { return };
    let (c, _) = Coordinator::start_embedded_with(
        &disk.path().join("coordinator"),
        &[("OUTPOST_COORDINATOR_API__MAX_BODY_BYTES", "200000000")],
    );
    let admin = std::fs::read_to_string(c.token_file()).unwrap();
    let full = upload(c.addr, &admin, PUT_BC, 100_000_000, false);
    assert!(full.starts_with("HTTP/1.1 507"), "{full}");
    assert!(full.contains("no space left to receive the upload in"), "{full}");
    assert!(full.contains("/coordinator/uploads"), "{full}");
    let free = |path: &std::path::Path| {
        let out =
            std::process::Command::new("df").args(["--output=avail", "-B1"]).arg(path).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse::<u64>().unwrap()
    };
    let mut waited = 0;
    while free(disk.path()) < 32 << 20 && waited < 50 {
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    assert!(
        free(disk.path()) >= 32 << 20,
        "the spool's space did not come back: {} bytes free",
        free(disk.path())
    );
    ok(push(&c, "breast_cancer-1.0.0", "1.0.0"), "model push after the full disk");
}
