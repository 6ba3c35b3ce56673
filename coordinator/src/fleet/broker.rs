//! The embedded MQTT broker (rumqttd): one command gives a working fleet.
//!
//! At start the coordinator's CA issues the broker a server certificate for the listen
//! address (plus `localhost`/`127.0.0.1`, the advertised host and `broker.tls_names`), written with its key (0600) under
//! `<data_dir>/broker/` because rumqttd takes TLS material as file paths only. Clients must
//! present a certificate from the same CA (rumqttd's `verify-client-cert` feature — without
//! it rumqttd would silently accept clients with no certificate). The broker runs on its own
//! threads (`Broker::start` blocks); it lives and dies with the coordinator process.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use outpost_shared::files::{write_atomic, write_private};

use crate::fleet::ca::{Authority, CaError};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded broker cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot write broker certificates to {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("embedded broker settings refused: {0}")]
    Config(String),
    #[error("embedded broker did not start listening on {0} within 10 s")]
    NotListening(SocketAddr),
}

/// Largest MQTT payload the broker accepts (a full envelope plus room for the header).
pub const MAX_PAYLOAD: usize = outpost_shared::protocol::MAX_ENVELOPE_BYTES + 4096;

/// Starts the broker on `listen` and returns once it accepts connections; its certificate also
/// names `extra_names` (the hosts devices reach it by).
pub fn start(
    data_dir: &Path,
    listen: SocketAddr,
    extra_names: &[String],
    authority: &Authority,
) -> Result<(), BrokerError> {
    // rumqttd binds inside its own thread and only logs a failure there: find out here.
    TcpListener::bind(listen).map_err(|source| BrokerError::Bind { addr: listen, source })?;

    let dir = data_dir.join("broker");
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    if !listen.ip().is_unspecified() && !names.contains(&listen.ip().to_string()) {
        names.push(listen.ip().to_string());
    }
    for name in extra_names {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let (cert, key) = authority.issue_server(&names, 365)?;
    let write = |name: &str, bytes: &[u8], private: bool| {
        let path = dir.join(name);
        let result = if private { write_private(&path, bytes) } else { write_atomic(&path, bytes) };
        result.map(|()| path.clone()).map_err(|source| BrokerError::Write { path, source })
    };
    let ca = write("ca.pem", authority.ca_pem().as_bytes(), false)?;
    let cert = write("server.pem", cert.as_bytes(), false)?;
    let key = write("server.key", key.as_bytes(), true)?;

    let config = serde_json::json!({
        "id": 0,
        "router": {
            "max_connections": 20_010,
            "max_outgoing_packet_count": 200,
            "max_segment_size": 104_857_600,
            "max_segment_count": 10,
        },
        "v4": { "1": {
            "name": "outpost-mqtts",
            "listen": listen.to_string(),
            "next_connection_delay_ms": 1,
            "tls": { "capath": ca, "certpath": cert, "keypath": key },
            "connections": {
                "connection_timeout_ms": 60_000,
                "max_payload_size": MAX_PAYLOAD,
                "max_inflight_count": 100,
                "dynamic_filters": true,
            },
        }},
    });
    let config: rumqttd::Config =
        serde_json::from_value(config).map_err(|e| BrokerError::Config(e.to_string()))?;
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(|source| BrokerError::Bind { addr: listen, source })?;

    let probe =
        if listen.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], listen.port())) } else { listen };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            return Err(BrokerError::NotListening(listen));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!(addr = %listen, "embedded broker listening (TLS, client certificates required)");
    Ok(())
}
