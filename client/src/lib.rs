//! The coordinator's API as a typed client: base URL, bearer token and CA in one place, the
//! server's `{"error": …}` unwrapped into [`ClientError::Refused`], and bodies decoded into the
//! caller's types. `outpostctl`, the demo, the agent's fleet simulator and the end-to-end tests
//! speak to the coordinator's API through it (the tests' raw-HTTP probes of bad bodies and
//! missing tokens aside: they test the wire itself).
//!
//! Plain `http://` is accepted only to a loopback address; `https://` needs the CA that signed
//! the coordinator's certificate ([`outpost_shared::tls::api_client`]).
#![forbid(unsafe_code)]

use std::time::Duration;

use serde::de::DeserializeOwned;

/// Why a call did not give an answer the caller can use.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL or CA cannot be used (before any network traffic).
    #[error(transparent)]
    Setup(#[from] outpost_shared::tls::ClientError),
    /// Nothing answered at the URL.
    #[error("cannot reach the coordinator at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// The answer could not be read to its end.
    #[error("cannot read the coordinator's answer: {0}")]
    Unreadable(String),
    /// The coordinator refused, with its own message.
    #[error("coordinator answered {status_text}: {message}")]
    Refused { status: u16, status_text: String, message: String },
    /// The answer was not what this client expects.
    #[error("unexpected answer from the coordinator: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Largest JSON answer read (the biggest are model listings and exports).
const MAX_JSON: u64 = 1024 * 1024 * 1024;
/// Largest binary answer read (bundles, CSV exports).
const MAX_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// A client of one coordinator with one token.
#[derive(Debug, Clone)]
pub struct Client {
    url: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    /// A client of `url` (`https://…` with `ca_pem`, or `http://` to loopback) sending `token`;
    /// each call may take up to `timeout`.
    pub fn new(
        url: &str,
        token: &str,
        ca_pem: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let url = url.trim_end_matches('/').to_owned();
        let agent = outpost_shared::tls::api_client(&url, ca_pem, timeout)?;
        Ok(Client { url, token: token.trim().to_owned(), agent })
    }

    /// The coordinator's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn target(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Unreachable { url: self.url.clone(), detail: e.to_string() }
    }

    /// Reads a response: its JSON decoded on success, the server's message on a refusal.
    fn answer<T: DeserializeOwned>(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, ClientError> {
        let (_, bytes) = self.read(result, MAX_JSON)?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Unexpected(e.to_string()))
    }

    /// The status and body of a successful response; a refusal becomes [`ClientError::Refused`].
    fn read(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        limit: u64,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let mut response = result.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(|e| ClientError::Unreadable(e.to_string()))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| text.into_owned());
            return Err(ClientError::Refused {
                status: status.as_u16(),
                status_text: status.to_string(),
                message,
            });
        }
        Ok((status.as_u16(), bytes))
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.answer(self.agent.get(self.target(path)).header("Authorization", self.bearer()).call())
    }

    /// A successful answer's body as a stream, for a download too large to hold (a backup);
    /// a refusal is [`ClientError::Refused`] with the server's message.
    pub fn get_reader(&self, path: &str) -> Result<impl std::io::Read + use<>, ClientError> {
        let result = self.agent.get(self.target(path)).header("Authorization", self.bearer()).call();
        let response = result.map_err(|e| self.unreachable(e))?;
        if !response.status().is_success() {
            self.read(Ok(response), MAX_JSON)?;
            return Err(ClientError::Unexpected("a refusal read as a success".into()));
        }
        Ok(response.into_body().into_reader())
    }

    pub fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let result = self.agent.get(self.target(path)).header("Authorization", self.bearer()).call();
        Ok(self.read(result, MAX_BYTES)?.1)
    }

    pub fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, ClientError> {
        self.answer(self.agent.post(self.target(path)).header("Authorization", self.bearer()).send_json(body))
    }

    pub fn put_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, ClientError> {
        self.answer(self.agent.put(self.target(path)).header("Authorization", self.bearer()).send_json(body))
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.answer(self.agent.delete(self.target(path)).header("Authorization", self.bearer()).call())
    }

    /// POSTs raw bytes of `content_type` with `query` parameters.
    pub fn post_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        query: &[(&str, String)],
        body: &[u8],
    ) -> Result<T, ClientError> {
        let mut request = self
            .agent
            .post(self.target(path))
            .header("Authorization", self.bearer())
            .header("Content-Type", content_type);
        for (k, v) in query {
            request = request.query(*k, v);
        }
        self.answer(request.send(body))
    }

    /// PUTs raw bytes, calling `progress(sent, total)` as they go out; returns the status and
    /// the decoded answer.
    pub fn put_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        body: &[u8],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(u16, T), ClientError> {
        struct Reader<'a, 'p> {
            data: &'a [u8],
            sent: usize,
            progress: &'p mut dyn FnMut(usize, usize),
        }
        impl std::io::Read for Reader<'_, '_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(self.data.len() - self.sent).min(256 * 1024);
                buf[..n].copy_from_slice(&self.data[self.sent..self.sent + n]);
                self.sent += n;
                (self.progress)(self.sent, self.data.len());
                Ok(n)
            }
        }
        let mut reader = Reader { data: body, sent: 0, progress };
        let result = self
            .agent
            .put(self.target(path))
            .header("Authorization", self.bearer())
            .header("Content-Type", content_type)
            .send(ureq::SendBody::from_reader(&mut reader));
        let (status, bytes) = self.read(result, MAX_JSON)?;
        let value = serde_json::from_slice(&bytes).map_err(|e| ClientError::Unexpected(e.to_string()))?;
        Ok((status, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_refused_off_loopback_and_https_needs_a_ca() {
        let e = Client::new("http://10.0.0.5:7400", "t", None, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("plain HTTP to a non-loopback address"), "{e}");
        let e = Client::new("https://coordinator:7400", "t", None, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("give the CA certificate"), "{e}");
        let c = Client::new("http://127.0.0.1:9/", " tok \n", None, Duration::from_secs(1)).unwrap();
        assert_eq!(c.url(), "http://127.0.0.1:9");
    }

    #[test]
    fn nothing_listening_is_unreachable_not_a_refusal() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let c = Client::new(&format!("http://127.0.0.1:{port}"), "t", None, Duration::from_secs(2)).unwrap();
        let e = c.get::<serde_json::Value>("/api/v1/devices").unwrap_err();
        assert!(matches!(e, ClientError::Unreachable { .. }), "{e}");
        assert_eq!(e.status(), None);
    }

    #[test]
    fn a_refusal_carries_the_servers_message() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).unwrap();
            let body = r#"{"error": "no version bc@9.9.9 in the registry"}"#;
            let answer = format!(
                "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).unwrap();
        });
        let c = Client::new(&format!("http://127.0.0.1:{port}"), "t", None, Duration::from_secs(5)).unwrap();
        let e = c.get::<serde_json::Value>("/api/v1/models/bc").unwrap_err();
        server.join().unwrap();
        assert_eq!(e.status(), Some(404));
        assert_eq!(e.to_string(), "coordinator answered 404 Not Found: no version bc@9.9.9 in the registry");
    }
}
