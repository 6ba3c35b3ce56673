//! The coordinator API as `outpostctl` calls it: base URL, token, CA, and errors unwrapped.

#[allow(unused_imports)]
use super::*;

pub(super) struct Api {
    url: String,
    token: String,
    agent: ureq::Agent,
}

impl Api {
    pub(super) fn new(cli: &Cli) -> Result<Api, Failure> {
        let token = match (&cli.token, &cli.token_file) {
            (Some(token), _) => token.trim().to_owned(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| Failure::Usage(format!("cannot read token file {}: {e}", path.display())))?
                .trim()
                .to_owned(),
            (None, None) => {
                return Err(Failure::Usage(
                    "no admin token: pass --token, --token-file or set OUTPOSTCTL_TOKEN".into(),
                ));
            }
        };
        let url = cli.url.trim_end_matches('/').to_owned();
        let ca = match &cli.ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| Failure::Usage(format!("cannot read CA file {}: {e}", path.display())))?,
            ),
            None => None,
        };
        let agent = outpost_shared::tls::api_client(&url, ca.as_deref(), std::time::Duration::from_secs(900))
            .map_err(|e| Failure::Usage(e.to_string()))?;
        Ok(Api { url, token, agent })
    }

    pub(super) fn handle<T: serde::de::DeserializeOwned>(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, Failure> {
        let mut response = result
            .map_err(|e| Failure::Usage(format!("cannot reach the coordinator at {}: {e}", self.url)))?;
        let status = response.status();
        let text = response
            .body_mut()
            .with_config()
            .limit(1024 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| Failure::Refused(format!("cannot read the coordinator's answer: {e}")))?;
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or(text);
            return Err(Failure::Refused(format!("coordinator answered {status}: {message}")));
        }
        serde_json::from_str(&text)
            .map_err(|e| Failure::Refused(format!("unexpected answer from the coordinator: {e}")))
    }

    pub(super) fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        let result = self
            .agent
            .get(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {}", self.token))
            .call();
        self.handle(result)
    }

    pub(super) fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, Failure> {
        let result = self
            .agent
            .post(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_json(body);
        self.handle(result)
    }

    pub(super) fn get_bytes(&self, path: &str) -> Result<Vec<u8>, Failure> {
        let mut response = self
            .agent
            .get(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .map_err(|e| Failure::Usage(format!("cannot reach the coordinator at {}: {e}", self.url)))?;
        let status = response.status();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(4 * 1024 * 1024 * 1024)
            .read_to_vec()
            .map_err(|e| Failure::Refused(format!("cannot read the coordinator's answer: {e}")))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            return Err(Failure::Refused(format!("coordinator answered {status}: {text}")));
        }
        Ok(bytes)
    }

    pub(super) fn put_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, Failure> {
        let result = self
            .agent
            .put(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_json(body);
        self.handle(result)
    }

    pub(super) fn delete<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        let result = self
            .agent
            .delete(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {}", self.token))
            .call();
        self.handle(result)
    }

    pub(super) fn post_bytes_query<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: &[u8],
    ) -> Result<T, Failure> {
        let mut request = self
            .agent
            .post(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Content-Type", "text/csv");
        for (k, v) in query {
            request = request.query(*k, v);
        }
        self.handle(request.send(body))
    }

    /// PUTs `body`, printing upload progress to stderr; returns the status and JSON answer.
    pub(super) fn put_with_progress(
        &self,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, serde_json::Value), Failure> {
        struct Progress<'a> {
            data: &'a [u8],
            sent: usize,
            shown: usize,
        }
        impl std::io::Read for Progress<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(self.data.len() - self.sent).min(256 * 1024);
                buf[..n].copy_from_slice(&self.data[self.sent..self.sent + n]);
                self.sent += n;
                let percent = if self.data.is_empty() { 100 } else { self.sent * 100 / self.data.len() };
                if percent >= self.shown + 10 || (percent == 100 && self.shown < 100) {
                    self.shown = percent;
                    eprintln!("uploading {percent:>3}% ({} of {} bytes)", self.sent, self.data.len());
                }
                Ok(n)
            }
        }
        let mut progress = Progress { data: body, sent: 0, shown: 0 };
        let result = self
            .agent
            .put(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Content-Type", "application/octet-stream")
            .send(ureq::SendBody::from_reader(&mut progress));
        let response = result
            .map_err(|e| Failure::Usage(format!("cannot reach the coordinator at {}: {e}", self.url)))?;
        let status = response.status().as_u16();
        let value: serde_json::Value = self.handle(Ok(response))?;
        Ok((status, value))
    }

    pub(super) fn post_bytes<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &[u8],
    ) -> Result<T, Failure> {
        let result = self
            .agent
            .post(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Content-Type", "application/octet-stream")
            .send(body);
        self.handle(result)
    }
}
