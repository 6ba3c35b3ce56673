//! The embedded MQTT broker: one command gives a working fleet, and devices stay isolated.
//!
//! Two parts, both inside the coordinator process: rumqttd's router (no listener of its own)
//! and the [`front`] that devices connect to — mutual TLS from the coordinator's CA, identity
//! from the certificate, enrolment and revocation checked, and every packet held to the
//! device's own topics (`outpost_shared::protocol::gate`) — which gives each admitted client
//! a [`session`] with the router. At start the CA issues the front a server certificate for
//! the listen address (plus `localhost`/`127.0.0.1`, the advertised host and
//! `broker.tls_names`); it is held in memory. Each client costs one file descriptor, its TLS
//! connection: [`start`] raises the soft open-file limit to the hard one and says how many
//! clients that leaves room for.

pub mod front;
pub mod session;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use crate::base::metrics::Metrics;
use crate::fleet::broker::front::{Front, FrontSettings, OnRefusal};
use crate::fleet::ca::{Authority, CaError};
use crate::fleet::devices::Devices;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded broker cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("embedded broker settings refused: {0}")]
    Config(String),
}

/// Largest MQTT payload the broker accepts (a full envelope plus room for the header).
pub const MAX_PAYLOAD: usize = outpost_shared::protocol::MAX_ENVELOPE_BYTES + 4096;

/// Clients the front holds at most (devices, the coordinator, and room for reconnects), when
/// the open-file limit allows.
pub const MAX_CONNECTIONS: usize = 20_000;

/// File descriptors kept for everything but broker clients (the store, the API, logs).
const RESERVED_FILES: u64 = 512;

/// What the embedded broker needs from the coordinator.
pub struct Embedded<'a> {
    pub listen: SocketAddr,
    /// Extra names for its certificate (the hosts devices reach it by).
    pub names: &'a [String],
    pub authority: &'a Authority,
    /// The coordinator's own client certificate (PEM): the only one admitted as the coordinator.
    pub coordinator_cert_pem: &'a str,
    pub devices: Devices,
    pub metrics: Metrics,
    pub on_refusal: OnRefusal,
}

/// Starts rumqttd's router and the front on `listen`; returns the front (for cutting off
/// revoked devices) once it accepts connections.
pub async fn start(embedded: Embedded<'_>) -> Result<Arc<Front>, BrokerError> {
    let listen = embedded.listen;
    let listener = TcpListener::bind(listen).map_err(|source| BrokerError::Bind { addr: listen, source })?;
    listener.set_nonblocking(true).map_err(|source| BrokerError::Bind { addr: listen, source })?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|source| BrokerError::Bind { addr: listen, source })?;
    let capacity = raise_open_file_limit();

    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    if !listen.ip().is_unspecified() && !names.contains(&listen.ip().to_string()) {
        names.push(listen.ip().to_string());
    }
    for name in embedded.names {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let (cert, key) = embedded.authority.issue_server(&names, 365)?;
    let tls = outpost_shared::tls::mutual_server_config(
        cert.as_bytes(),
        key.as_bytes(),
        embedded.authority.ca_pem().as_bytes(),
    )
    .map_err(|e| BrokerError::Config(e.to_string()))?;
    let coordinator_cert = outpost_shared::tls::certificates(
        embedded.coordinator_cert_pem.as_bytes(),
        "coordinator certificate",
    )
    .map_err(|e| BrokerError::Config(e.to_string()))?
    .swap_remove(0)
    .to_vec();

    let config = serde_json::json!({
        "id": 0,
        "router": {
            "max_connections": MAX_CONNECTIONS + 10,
            "max_outgoing_packet_count": 200,
            "max_segment_size": 104_857_600,
            "max_segment_count": 10,
        },
    });
    let config: rumqttd::Config =
        serde_json::from_value(config).map_err(|e| BrokerError::Config(e.to_string()))?;
    // Spawns the router's thread; it lives as long as a handle to it does (the front's).
    let broker = Arc::new(rumqttd::Broker::new(config));

    let front = Arc::new(Front::new(FrontSettings {
        tls,
        broker,
        coordinator_cert,
        devices: embedded.devices,
        max_packet: MAX_PAYLOAD,
        max_connections: capacity,
        metrics: embedded.metrics,
        on_refusal: embedded.on_refusal,
    }));
    // Never stops: the broker lives and dies with the coordinator process.
    let (keep, never) = tokio::sync::watch::channel(false);
    let serving = Arc::clone(&front);
    tokio::spawn(async move {
        let _keep = keep;
        serving.serve(listener, never).await;
    });
    tracing::info!(addr = %listen, "embedded broker listening (TLS, client certificates required, each device held to its own topics)");
    Ok(front)
}

/// Raises the soft open-file limit to the hard one and returns how many clients the front may
/// hold: one descriptor each, [`RESERVED_FILES`] kept aside, at most [`MAX_CONNECTIONS`].
/// Past that the front refuses new connections at once (counted as `busy`) rather than run
/// out of descriptors, which would stall every accept.
fn raise_open_file_limit() -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum
        && limit.current.is_some_and(|soft| soft < hard)
    {
        limit.current = Some(hard);
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
        }
    }
    let soft = getrlimit(Resource::Nofile).current;
    let capacity = soft.map_or(MAX_CONNECTIONS, |n| {
        usize::try_from(n.saturating_sub(RESERVED_FILES)).unwrap_or(MAX_CONNECTIONS).min(MAX_CONNECTIONS)
    });
    if capacity < MAX_CONNECTIONS {
        tracing::warn!(
            open_files = soft,
            clients = capacity,
            "embedded broker: the open-file limit caps the clients it holds (one descriptor each); raise LimitNOFILE / ulimit -n for more"
        );
    } else {
        tracing::info!(open_files = soft, clients = capacity, "embedded broker: open-file limit");
    }
    capacity
}
