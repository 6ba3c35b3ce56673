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
use outpost_shared::protocol::topics::{self, Channel};

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

/// How much each subscription's log keeps, as rumqttd (segment bytes, segments). The router
/// appends every message to a log per subscription filter and keeps the newest segments up to
/// this, consumed or not — so it is the memory each filter costs for good, not a backlog. A
/// consumer that falls further behind skips to the oldest message kept (its QoS 1 messages
/// are lost to it; agents resend whatever the coordinator never acked, and every desired state
/// is also retained and republished when the coordinator's link reconnects).
///
/// The coordinator's report filter carries every device's envelopes, a deploy's burst of
/// actual states included (10,000 devices × a few KB): 16 MiB × 4 holds several bursts.
pub const REPORT_LOG: (usize, usize) = (16 << 20, 4);
/// The coordinator's presence filter: one small message per device (re)connection.
pub const PRESENCE_LOG: (usize, usize) = (1 << 20, 2);
/// Every other filter is one device's own (its acks and desired states): tens of messages.
/// These used to share the report filter's 100 MB × 10, so each device's log grew by every ack
/// it was sent (about 200 bytes each 10 s) without bound in practice — at 10,000 devices,
/// gigabytes a day.
pub const DEVICE_LOG: (usize, usize) = (8 << 10, 2);

/// rumqttd's settings: the router only (the front is the listener), with the log bounds above.
pub fn router_config() -> Result<rumqttd::Config, BrokerError> {
    let (reports, presence) = (topics::all_devices(Channel::Report), topics::all_devices(Channel::Presence));
    let config = serde_json::json!({
        "id": 0,
        "router": {
            "max_connections": MAX_CONNECTIONS + 10,
            "max_outgoing_packet_count": 200,
            "max_segment_size": DEVICE_LOG.0,
            "max_segment_count": DEVICE_LOG.1,
            "custom_segment": {
                (reports): { "max_segment_size": REPORT_LOG.0, "max_segment_count": REPORT_LOG.1 },
                (presence): { "max_segment_size": PRESENCE_LOG.0, "max_segment_count": PRESENCE_LOG.1 },
            },
        },
    });
    serde_json::from_value(config).map_err(|e| BrokerError::Config(e.to_string()))
}

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

    let config = router_config()?;
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
