//! The HTTP front door both servers share (the agent's inference port and the coordinator's
//! API): a cap on open connections, a header-read timeout that is also the idle timeout of a
//! kept-alive connection, a whole-request timeout, and graceful shutdown.
//!
//! A connection over the cap is closed at once (and counted) rather than queued: a flood of
//! idle sockets cannot take the port from everyone, and each of them is gone within the
//! header-read timeout anyway. The request timeout covers reading the body too, so a body
//! trickled a byte at a time cannot hold a connection past it (a per-read timeout would be
//! reset by every byte). Every request carries its [`Peer`] address as an extension, for
//! limits per source address.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// The limits of one listening port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; one more is closed on arrival.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers — and how long a kept-alive
    /// connection may sit idle between requests.
    pub header_read_timeout: Duration,
    /// How long one request may take, body included, before it is answered 408.
    pub request_timeout: Duration,
}

/// What the front door saw, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections closed on arrival because `max_connections` were open.
    pub refused: AtomicU64,
    /// Requests answered 408 because they outlived `request_timeout`.
    pub timed_out: AtomicU64,
}

impl Counters {
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
    pub fn timed_out(&self) -> u64 {
        self.timed_out.load(Ordering::Relaxed)
    }

    /// The three figures in the Prometheus text format, named `<prefix>_connections_open`,
    /// `<prefix>_connections_refused_total` and `<prefix>_request_timeouts_total`.
    pub fn render(&self, prefix: &str) -> String {
        format!(
            "# HELP {prefix}_connections_open HTTP connections open now.\n\
             # TYPE {prefix}_connections_open gauge\n\
             {prefix}_connections_open {}\n\
             # HELP {prefix}_connections_refused_total Connections closed on arrival: the connection cap was reached.\n\
             # TYPE {prefix}_connections_refused_total counter\n\
             {prefix}_connections_refused_total {}\n\
             # HELP {prefix}_request_timeouts_total Requests answered 408: they outlived the request timeout.\n\
             # TYPE {prefix}_request_timeouts_total counter\n\
             {prefix}_request_timeouts_total {}\n",
            self.open(),
            self.refused(),
            self.timed_out()
        )
    }
}

/// The address a request came from (an extension on every request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

/// Holds one connection's place under the cap and its count in `open`.
struct Open {
    counters: Arc<Counters>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `listener` until `shutdown` resolves, then lets open connections finish (the caller
/// bounds how long by dropping or aborting this future). `upgrade` turns an accepted TCP
/// connection into the stream to speak HTTP on and the router for its requests (e.g. a TLS
/// handshake, and the client certificate's identity as an extension); `None` drops it. It
/// must finish within the header-read timeout.
pub async fn serve<F, Fut, I>(
    listener: TcpListener,
    limits: Limits,
    counters: Arc<Counters>,
    upgrade: F,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Option<(I, Router)>> + Send,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, max = limits.max_connections, "connection refused: too many open");
            drop(tcp);
            continue;
        };
        counters.open.fetch_add(1, Ordering::Relaxed);
        let open = Open { counters: Arc::clone(&counters), _permit: permit };
        let (upgrade, counters, watcher) = (upgrade.clone(), Arc::clone(&counters), graceful.watcher());
        tokio::spawn(async move {
            let _open = open;
            let Ok(Some((io, app))) =
                tokio::time::timeout(limits.header_read_timeout, upgrade(tcp, peer)).await
            else {
                return;
            };
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(Peer(peer));
                    let (app, counters) = (app.clone(), Arc::clone(&counters));
                    async move {
                        let answer = tower::ServiceExt::oneshot(app, request);
                        match tokio::time::timeout(limits.request_timeout, answer).await {
                            Ok(response) => response,
                            Err(_) => {
                                counters.timed_out.fetch_add(1, Ordering::Relaxed);
                                Ok(timed_out(limits.request_timeout))
                            }
                        }
                    }
                });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(io), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Serves plain HTTP: every connection gets `app`.
pub async fn serve_plain(
    listener: TcpListener,
    limits: Limits,
    counters: Arc<Counters>,
    app: Router,
    shutdown: impl Future<Output = ()>,
) {
    let upgrade = move |tcp: TcpStream, _peer: SocketAddr| {
        let app = app.clone();
        async move { Some((tcp, app)) }
    };
    serve(listener, limits, counters, upgrade, shutdown).await;
}

fn timed_out(after: Duration) -> Response {
    let body =
        format!("{{\"error\":\"the request took longer than {} s and was abandoned\"}}", after.as_secs());
    (
        axum::http::StatusCode::REQUEST_TIMEOUT,
        [(axum::http::header::CONTENT_TYPE, "application/json"), (axum::http::header::CONNECTION, "close")],
        body,
    )
        .into_response()
}
