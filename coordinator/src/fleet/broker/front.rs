//! The embedded broker's front door: mutual TLS, identity, and a gate on every packet.
//!
//! rumqttd 0.20 cannot bind a client id to a certificate, has no topic ACL and cannot read a
//! revocation list. So devices never reach it directly: they connect here, where the
//! coordinator's CA checks their certificate, the certificate's common name becomes the
//! identity, and the device must be enrolled and not revoked. Each client's bytes then pass
//! through an [`outpost_shared::protocol::gate::Gate`] (client id = identity, own topics
//! only) into a [`session`](super::session) with rumqttd's router in this process. rumqttd has
//! no listener at all: nothing reaches it but what the front admitted.
//!
//! The coordinator's identity is reserved: only the certificate this process issued itself
//! (compared byte for byte) is let in as `outpost-coordinator`. A refusal answers a CONNECT
//! with a CONNACK error code, or cuts the connection after it; either way it is counted
//! (`outpost_coordinator_broker_refused_total{reason}`), logged, and handed to the
//! coordinator's audit. [`Front::disconnect`] cuts a device off at once (revocation).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use outpost_shared::protocol::gate::{self, Gate, Refusal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::base::metrics::Metrics;
use crate::fleet::broker::session::{Session, SessionError};
use crate::fleet::devices::Devices;

/// Time a client has to finish the TLS handshake, and then to send its CONNECT.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Bytes read from a client at a time.
const READ_CHUNK: usize = 4096;

/// One refused or cut-off client, for the audit.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The certificate's identity, when the handshake got that far.
    pub identity: Option<String>,
    pub peer: SocketAddr,
    /// A metric label: `not_enrolled`, `revoked`, `client_id`, `publish`, ….
    pub reason: &'static str,
    pub detail: String,
}

/// Called for every refusal (after it is counted and logged).
pub type OnRefusal = Arc<dyn Fn(Refused) + Send + Sync>;

/// What the front needs.
pub struct FrontSettings {
    pub tls: Arc<rustls::ServerConfig>,
    /// rumqttd, whose router each admitted client gets a link to.
    pub broker: Arc<rumqttd::Broker>,
    /// The coordinator's own client certificate (DER): the only one admitted as the coordinator.
    pub coordinator_cert: Vec<u8>,
    pub devices: Devices,
    pub max_packet: usize,
    pub max_connections: usize,
    pub metrics: Metrics,
    pub on_refusal: OnRefusal,
}

/// The front (shared by every connection task).
pub struct Front {
    acceptor: tokio_rustls::TlsAcceptor,
    broker: Arc<rumqttd::Broker>,
    coordinator_cert: Vec<u8>,
    devices: Devices,
    max_packet: usize,
    slots: Arc<Semaphore>,
    metrics: Metrics,
    on_refusal: OnRefusal,
    /// Live device connections: identity → (connection number, its kill switch).
    live: Mutex<HashMap<String, (u64, watch::Sender<bool>)>>,
    next: AtomicU64,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("clients", &self.live.lock().map_or(0, |l| l.len()))
            .finish_non_exhaustive()
    }
}

/// How one connection ended.
enum Ended {
    Closed,
    Refused(Refusal),
    /// rumqttd's decoding or its router ended it.
    Broken(SessionError),
    /// Revoked ([`Front::disconnect`]).
    Cut,
    /// The same identity connected again; MQTT drops the older connection.
    Superseded,
}

impl Front {
    pub fn new(settings: FrontSettings) -> Front {
        Front {
            acceptor: tokio_rustls::TlsAcceptor::from(settings.tls),
            broker: settings.broker,
            coordinator_cert: settings.coordinator_cert,
            devices: settings.devices,
            max_packet: settings.max_packet,
            slots: Arc::new(Semaphore::new(settings.max_connections)),
            metrics: settings.metrics,
            on_refusal: settings.on_refusal,
            live: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }

    /// Accepts clients until `shutdown` turns true.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, mostly: back off instead of spinning.
                        tracing::warn!(error = %e, "embedded broker cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
                self.metrics.broker_refused.with_label_values(&["busy"]).inc();
                tracing::debug!(%peer, "embedded broker full: connection refused");
                continue;
            };
            let front = Arc::clone(&self);
            tokio::spawn(async move {
                front.connection(tcp, peer).await;
                drop(permit);
            });
        }
    }

    /// Cuts device `id`'s live connection, if any; `true` if there was one.
    pub fn disconnect(&self, id: &str) -> bool {
        let removed = self.live.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        removed.is_some_and(|(_, kill)| kill.send(true).is_ok())
    }

    fn refuse(&self, identity: Option<&str>, peer: SocketAddr, reason: &'static str, detail: String) {
        self.metrics.broker_refused.with_label_values(&[reason]).inc();
        tracing::warn!(identity, %peer, reason, detail, "embedded broker refused a client");
        (self.on_refusal)(Refused { identity: identity.map(str::to_owned), peer, reason, detail });
    }

    /// Why device `id` may not connect now, if it may not.
    fn standing(&self, id: &str) -> Result<(), (&'static str, String)> {
        if id == gate::COORDINATOR {
            return Err(("client_id", format!("`{id}` is reserved for the coordinator's own certificate")));
        }
        let unavailable = |e: crate::base::store::StoreError| ("unavailable", format!("device records: {e}"));
        match self.devices.get(id).map_err(unavailable)? {
            Some(record) if record.revoked.is_none() => Ok(()),
            Some(_) => Err(("revoked", format!("device `{id}` is revoked"))),
            None if self.devices.revocation(id).map_err(unavailable)?.is_some() => {
                Err(("revoked", format!("device `{id}` was deleted")))
            }
            None => Err(("not_enrolled", format!("no enrolled device `{id}`"))),
        }
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let tls = match tokio::time::timeout(HANDSHAKE, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                self.metrics.broker_refused.with_label_values(&["tls"]).inc();
                tracing::debug!(%peer, error = %e, "embedded broker: TLS handshake failed");
                return;
            }
            Err(_) => {
                self.metrics.broker_refused.with_label_values(&["tls"]).inc();
                tracing::debug!(%peer, "embedded broker: TLS handshake timed out");
                return;
            }
        };
        let certificate = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
        let Some(certificate) = certificate else { return };
        let gate = if certificate == self.coordinator_cert {
            Gate::coordinator(self.max_packet)
        } else {
            let Some(id) = crate::fleet::ca::common_name(&certificate) else {
                self.refuse(None, peer, "tls", "client certificate has no common name".into());
                return;
            };
            if let Err((reason, detail)) = self.standing(&id) {
                self.refuse(Some(&id), peer, reason, detail);
                let (_, mut writer) = tokio::io::split(tls);
                let _ = writer.write_all(&gate::connack_refusal(5)).await;
                let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
                return;
            }
            Gate::device(&id, self.max_packet)
        };
        self.relay(tls, gate, peer).await;
    }

    /// Waits for the CONNECT, opens the session with the broker and relays until either side
    /// ends.
    async fn relay(&self, tls: tokio_rustls::server::TlsStream<TcpStream>, mut gate: Gate, peer: SocketAddr) {
        let identity = gate.identity().to_owned();
        let device = identity != gate::COORDINATOR;
        let (mut client_rd, mut client_wr) = tokio::io::split(tls);
        let mut chunk = vec![0u8; READ_CHUNK];
        let first = tokio::time::timeout(HANDSHAKE, async {
            loop {
                let n = client_rd.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
                match gate.feed(&chunk[..n]) {
                    Ok(frames) if gate.connected() => return Some(Ok(frames)),
                    Ok(_) => continue,
                    Err(refusal) => return Some(Err(refusal)),
                }
            }
        })
        .await;
        let frames = match first {
            Ok(Some(Ok(frames))) => frames,
            Ok(Some(Err(refusal))) => {
                let _ = client_wr.write_all(&gate::connack_refusal(refusal.connack_code())).await;
                let _ = tokio::time::timeout(Duration::from_secs(1), client_wr.shutdown()).await;
                self.refuse(Some(&identity), peer, refusal.reason(), refusal.to_string());
                return;
            }
            Ok(None) | Err(_) => return,
        };
        let (mut session, connack) = match Session::open(&self.broker, &identity, &frames[0], self.max_packet)
            .await
        {
            Ok(opened) => opened,
            Err(e @ (SessionError::ZeroKeepAlive | SessionError::Decode(_) | SessionError::NotConnect)) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), client_wr.shutdown()).await;
                self.refuse(Some(&identity), peer, "malformed", e.to_string());
                return;
            }
            Err(e) => {
                // The router is full (max_connections) or gone: "server unavailable".
                tracing::error!(identity, error = %e, "embedded broker cannot open a session");
                let _ = client_wr.write_all(&gate::connack_refusal(3)).await;
                let _ = tokio::time::timeout(Duration::from_secs(1), client_wr.shutdown()).await;
                return;
            }
        };

        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let (kill, mut killed) = watch::channel(false);
        if device {
            self.live.lock().unwrap_or_else(|p| p.into_inner()).insert(identity.clone(), (number, kill));
            // A revocation between the first check and this registration must still cut it.
            if let Err((reason, detail)) = self.standing(&identity) {
                self.forget(&identity, number);
                self.refuse(Some(&identity), peer, reason, detail);
                session.close(false).await;
                return;
            }
        }
        if client_wr.write_all(&connack).await.is_err() || client_wr.flush().await.is_err() {
            if device {
                self.forget(&identity, number);
            }
            session.close(false).await;
            return;
        }
        self.metrics.broker_connections.inc();
        tracing::debug!(identity, %peer, "embedded broker: client connected");

        let mut outgoing = BytesMut::new();
        let keep_alive = session.keep_alive();
        let mut heard = tokio::time::Instant::now();
        let mut pending = frames[1..].to_vec();
        let ended = loop {
            if !pending.is_empty() {
                let forwarded = session.forward(&pending, &mut outgoing).await;
                pending.clear();
                if !outgoing.is_empty() {
                    if client_wr.write_all(&outgoing).await.is_err() || client_wr.flush().await.is_err() {
                        break Ended::Closed;
                    }
                    outgoing.clear();
                }
                match forwarded {
                    Ok(false) => {}
                    Ok(true) => break Ended::Closed,
                    Err(e) => break Ended::Broken(e),
                }
            }
            // Biased, the client's bytes first and the keep-alive last: after this task waited
            // for a busy router, what the client sent meanwhile counts before its silence does.
            tokio::select! {
                biased;
                read = client_rd.read(&mut chunk) => {
                    let n = match read {
                        Ok(n) if n > 0 => n,
                        _ => break Ended::Closed,
                    };
                    heard = tokio::time::Instant::now();
                    match gate.feed(&chunk[..n]) {
                        Ok(frames) => pending = frames,
                        Err(refusal) => break Ended::Refused(refusal),
                    }
                }
                received = session.receive(&mut outgoing) => {
                    let received = match received {
                        Ok(received) => received,
                        Err(e) => break Ended::Broken(e),
                    };
                    if client_wr.write_all(&outgoing).await.is_err() || client_wr.flush().await.is_err() {
                        break Ended::Closed;
                    }
                    outgoing.clear();
                    if !received.open {
                        break Ended::Superseded;
                    }
                    if received.paused && let Err(e) = session.ready().await {
                        break Ended::Broken(e);
                    }
                }
                // A revocation sends `true`; a newer connection of this identity replaces the
                // entry, dropping the sender.
                cut = killed.wait_for(|k| *k).map(|k| k.is_ok()) => break if cut { Ended::Cut } else { Ended::Superseded },
                // Silent for 1.5 × its keep-alive: gone (MQTT 3.1.1 §3.1.2.10).
                _ = tokio::time::sleep_until(heard + keep_alive) => {
                    tracing::info!(identity, %peer, "embedded broker: client silent past its keep-alive, dropped");
                    break Ended::Closed;
                }
            }
        };
        session.close(matches!(ended, Ended::Superseded)).await;
        self.metrics.broker_connections.dec();
        if device {
            self.forget(&identity, number);
        }
        match ended {
            Ended::Closed => tracing::debug!(identity, %peer, "embedded broker: client left"),
            Ended::Superseded => {
                tracing::debug!(identity, %peer, "embedded broker: client replaced by its newer connection")
            }
            Ended::Refused(refusal) => {
                self.refuse(Some(&identity), peer, refusal.reason(), refusal.to_string());
            }
            Ended::Broken(SessionError::Outside { .. }) => {
                // The gate passed what rumqttd's codec reads differently: refuse as the gate would.
                self.refuse(
                    Some(&identity),
                    peer,
                    "codec",
                    "packets decode differently in the gate and the broker".into(),
                );
            }
            Ended::Broken(e) => tracing::warn!(identity, %peer, error = %e, "embedded broker: session ended"),
            Ended::Cut => {
                self.metrics.broker_refused.with_label_values(&["revoked"]).inc();
                tracing::info!(identity, %peer, "embedded broker: revoked device disconnected");
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), client_wr.shutdown()).await;
    }

    /// Removes `identity`'s live entry if it is still connection `number`'s.
    fn forget(&self, identity: &str, number: u64) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.get(identity).is_some_and(|(n, _)| *n == number) {
            live.remove(identity);
        }
    }
}
