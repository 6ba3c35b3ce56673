//! Clients that misbehave on purpose, for the front-door tests of the agent and the
//! coordinator: connections left idle, request heads never finished, bodies trickled a byte a
//! second.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A connection to `addr` whose reads give up after 8 s.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    s
}

/// Waits for the server to close `s` (a read ends in EOF, a reset, or a 408 answer) and
/// returns how long that took; panics if it stays open for the read timeout.
pub fn closed_within(s: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 512];
    let read = s.read(&mut buf);
    let closed = match &read {
        Ok(0) => true,
        Ok(n) => String::from_utf8_lossy(&buf[..*n]).starts_with("HTTP/1.1 408"),
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    let shown = String::from_utf8_lossy(&buf[..*read.as_ref().unwrap_or(&0)]).into_owned();
    assert!(closed, "the connection was not closed after {:?}: {read:?} {shown}", started.elapsed());
    started.elapsed()
}

/// Sends `head` (a request head declaring a body), then one byte of body a second until the
/// server answers or closes; returns the answer's first bytes and how long it took.
pub fn trickle(addr: SocketAddr, head: &str) -> (String, Duration) {
    let mut slow = connect(addr);
    slow.write_all(head.as_bytes()).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    while started.elapsed() < Duration::from_secs(10) {
        if slow.write_all(b" ").is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        match slow.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Err(_) => {}
        }
    }
    (String::from_utf8_lossy(&answer).into_owned(), started.elapsed())
}
