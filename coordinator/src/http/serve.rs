//! Serving the API: plain HTTP on loopback, or HTTPS that learns a device from its client
//! certificate; both stop gracefully when the coordinator shuts down.

use std::sync::Arc;

use tokio::sync::watch;

use crate::http::api::{self, AppState};

/// Serves `state`'s router on `listener` (over TLS when `tls` is given) until `shutdown`,
/// behind the front door's limits (`api.max_connections`, `api.header_read_timeout_secs`,
/// `api.request_timeout_secs`); open connections then get a graceful close, for at most 5 s.
pub fn spawn(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let (limits, counters) = (state.config.api.limits(), Arc::clone(&state.metrics.front));
    let app = api::router(state);
    let mut stopping = shutdown.clone();
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    tokio::spawn(async move {
        let served = async {
            match tls {
                None => outpost_shared::front::serve_plain(listener, limits, counters, app, stop).await,
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                    let upgrade = move |tcp: tokio::net::TcpStream, peer: std::net::SocketAddr| {
                        let (acceptor, app) = (acceptor.clone(), app.clone());
                        async move { handshake(acceptor, app, tcp, peer).await }
                    };
                    outpost_shared::front::serve(listener, limits, counters, upgrade, stop).await;
                }
            }
        };
        // Once told to stop, the front door returns when open connections finished: 5 s at most.
        tokio::pin!(served);
        let stopped = async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        };
        tokio::select! {
            () = &mut served => {}
            () = stopped => {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut served).await;
            }
        }
        Ok(())
    })
}

/// A TLS handshake; a client certificate rustls verified names the device, which the
/// connection's requests then carry as [`api::PeerDevice`].
async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
) -> Option<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, axum::Router)> {
    let stream = match acceptor.accept(tcp).await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "API TLS handshake failed");
            return None;
        }
    };
    let device = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|der| crate::fleet::ca::common_name(der.as_ref()));
    let app = match device {
        Some(device) => app.layer(axum::Extension(api::PeerDevice(device))),
        None => app,
    };
    Some((stream, app))
}
