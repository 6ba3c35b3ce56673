//! A TCP proxy a test can freeze: while frozen no byte crosses it either way and new
//! connections wait, as behind a network partition (nothing is reset, so clients find out only
//! by their own timeouts); thawed, the connections carry on. Given several targets it is a
//! load balancer: each connection goes to the next target that accepts it (a Service in front
//! of replicas).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Proxy {
    pub port: u16,
    frozen: Arc<AtomicBool>,
    targets: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Proxy {
    /// Forwards 127.0.0.1:`port` to `target` until the test process ends.
    pub fn start(target: SocketAddr) -> Proxy {
        Proxy::balancing(vec![target])
    }

    /// Forwards each connection to the next of `targets` that accepts it ([`Proxy::set_targets`]
    /// changes them).
    pub fn balancing(targets: Vec<SocketAddr>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let targets = Arc::new(Mutex::new(targets));
        let (gate, all) = (Arc::clone(&frozen), Arc::clone(&targets));
        std::thread::spawn(move || {
            let mut next = 0usize;
            for client in listener.incoming().map_while(Result::ok) {
                let gate = Arc::clone(&gate);
                let candidates: Vec<SocketAddr> = {
                    let all = all.lock().unwrap();
                    next = next.wrapping_add(1);
                    (0..all.len()).map(|i| all[(next + i) % all.len()]).collect()
                };
                std::thread::spawn(move || {
                    wait_thawed(&gate);
                    let Some(server) = candidates.iter().find_map(|t| TcpStream::connect(t).ok()) else {
                        return;
                    };
                    let (Ok(client_read), Ok(server_read)) = (client.try_clone(), server.try_clone()) else {
                        return;
                    };
                    let up = Arc::clone(&gate);
                    std::thread::spawn(move || pump(client_read, server, &up));
                    pump(server_read, client, &gate);
                });
            }
        });
        Proxy { port, frozen, targets }
    }

    pub fn set_targets(&self, targets: Vec<SocketAddr>) {
        *self.targets.lock().unwrap() = targets;
    }

    /// No byte crosses until [`Proxy::thaw`].
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }
}

fn wait_thawed(frozen: &AtomicBool) {
    while frozen.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Copies `from` to `to` a read at a time, holding each read while frozen.
fn pump(mut from: TcpStream, mut to: TcpStream, frozen: &AtomicBool) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        wait_thawed(frozen);
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        wait_thawed(frozen);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}
