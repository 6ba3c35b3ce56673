//! TLS to PostgreSQL over rustls: the connector tokio-postgres (and the pool's blocking client)
//! negotiates with, checking the server's certificate against the CA `[store] ca_file` names
//! and the host name the URL gives (`host=`; with `hostaddr=` the address dialled may differ).
//! Without a CA ([`PgTls::none`]) a handshake fails: such a URL is one on this host, and its
//! configuration asks for no TLS at all (`sslmode=disable`), so none is attempted.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// The TLS settings of a connection to PostgreSQL.
#[derive(Clone)]
pub struct PgTls(Option<Arc<rustls::ClientConfig>>);

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "PgTls(verified)" } else { "PgTls(none)" })
    }
}

impl PgTls {
    /// No TLS (a server on this host).
    pub fn none() -> PgTls {
        PgTls(None)
    }

    /// TLS trusting only the certificates in `ca_pem`.
    pub fn trusting(ca_pem: &[u8]) -> Result<PgTls, String> {
        let mut roots = rustls::RootCertStore::empty();
        let certificates = outpost_shared::tls::certificates(ca_pem, "PostgreSQL CA certificate")
            .map_err(|e| e.to_string())?;
        if certificates.is_empty() {
            return Err("holds no PEM certificate".into());
        }
        for cert in certificates {
            roots.add(cert).map_err(|e| e.to_string())?;
        }
        let config = rustls::ClientConfig::builder_with_provider(outpost_shared::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(PgTls(Some(Arc::new(config))))
    }

    /// Whether connections negotiate TLS.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = Connect;
    type Error = io::Error;

    /// Called for every connection, TLS or not (`sslmode=disable`): a missing CA or a bad
    /// name fails only a handshake that is attempted.
    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Connect> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| format!("`{domain}` is not a host name to verify: {e}"));
        Ok(Connect { config: self.0.clone(), name })
    }
}

/// One connection's handshake.
pub struct Connect {
    config: Option<Arc<rustls::ClientConfig>>,
    name: Result<ServerName<'static>, String>,
}

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let config = self.config.ok_or_else(|| {
                io::Error::other("TLS to PostgreSQL asked for, but no CA is configured (store.ca_file)")
            })?;
            let name = self.name.map_err(io::Error::other)?;
            let connector = tokio_rustls::TlsConnector::from(config);
            Ok(PgTlsStream(connector.connect(name, stream).await?))
        })
    }
}

/// A connection to PostgreSQL inside TLS.
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for PgTlsStream<S> {
    /// No channel binding: the server is authenticated by its certificate, which is checked.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}
