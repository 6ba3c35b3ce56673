//! The coordinator API as `outpostctl` calls it: an [`outpost_client::Client`] built from the
//! command line's URL, token and CA, its errors mapped to exit codes (2 when the coordinator
//! cannot be used as given, 4 when nothing answers, 3 for 404, 1 for any other refusal).

#[allow(unused_imports)]
use super::*;

use outpost_client::{Client, ClientError};
use serde::de::DeserializeOwned;

pub(super) struct Api {
    client: Client,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        match e {
            ClientError::Setup(_) => Failure::Usage(e.to_string()),
            ClientError::Unreachable { .. } => Failure::Unreachable(e.to_string()),
            ClientError::Refused { status: 404, .. } => Failure::NotFound(e.to_string()),
            ClientError::Unreadable(_) | ClientError::Refused { .. } | ClientError::Unexpected(_) => {
                Failure::Refused(e.to_string())
            }
        }
    }
}

impl Api {
    pub(super) fn new(cli: &Cli) -> Result<Api, Failure> {
        let token = match (&cli.token, &cli.token_file) {
            (Some(token), _) => token.trim().to_owned(),
            (None, Some(path)) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| Failure::Usage(format!("cannot read token file {}: {e}", path.display())))?;
                if crate::base::secrets::is_sealed(&bytes) {
                    return Err(Failure::Usage(format!(
                        "token file {} is sealed by the coordinator's [secrets] key: print the admin token with \
                         `outpost-coordinator admin-token` where the key is, or use a token from `outpostctl token create`",
                        path.display()
                    )));
                }
                String::from_utf8_lossy(&bytes).trim().to_owned()
            }
            (None, None) => {
                return Err(Failure::Usage(
                    "no API token: pass --token, --token-file or set OUTPOSTCTL_TOKEN".into(),
                ));
            }
        };
        let ca = match &cli.ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| Failure::Usage(format!("cannot read CA file {}: {e}", path.display())))?,
            ),
            None => None,
        };
        let client = Client::new(&cli.url, &token, ca.as_deref(), std::time::Duration::from_secs(900))?;
        Ok(Api { client })
    }

    pub(super) fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        Ok(self.client.get(path)?)
    }

    pub(super) fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, Failure> {
        Ok(self.client.post_json(path, body)?)
    }

    pub(super) fn get_bytes(&self, path: &str) -> Result<Vec<u8>, Failure> {
        Ok(self.client.get_bytes(path)?)
    }

    pub(super) fn put_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, Failure> {
        Ok(self.client.put_json(path, body)?)
    }

    pub(super) fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        Ok(self.client.delete(path)?)
    }

    pub(super) fn post_bytes_query<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: &[u8],
    ) -> Result<T, Failure> {
        Ok(self.client.post_bytes(path, "text/csv", query, body)?)
    }

    /// PUTs `body`, printing upload progress to stderr; returns the status and JSON answer.
    pub(super) fn put_with_progress(
        &self,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, serde_json::Value), Failure> {
        let mut shown = 0;
        let mut progress = |sent: usize, total: usize| {
            let percent = (sent * 100).checked_div(total).unwrap_or(100);
            if percent >= shown + 10 || (percent == 100 && shown < 100) {
                shown = percent;
                eprintln!("uploading {percent:>3}% ({sent} of {total} bytes)");
            }
        };
        Ok(self.client.put_bytes(path, "application/octet-stream", body, &mut progress)?)
    }

    pub(super) fn post_bytes<T: DeserializeOwned>(&self, path: &str, body: &[u8]) -> Result<T, Failure> {
        Ok(self.client.post_bytes(path, "application/octet-stream", &[], body)?)
    }
}
