//! Revoking devices: the CA's revocation list, built from every revocation the fleet's
//! repository keeps, and written where an external broker reads it.
//!
//! The list is `<data_dir>/pki/devices.crl.pem` (Mosquitto's `crlfile`; also served at
//! `GET /api/v1/pki/crl` for a broker on another host). It is written at every start and after
//! every revocation, numbered by the time it was made so each list outnumbers the last, and
//! valid for a year. The embedded broker's front refuses a revoked device's certificate at
//! connect and cuts its live connection when it is revoked; whatever a revoked device still
//! gets to send through an external broker is refused and counted
//! (`outpost_coordinator_ingest_total{result="revoked"}`), no deployment targets it and the
//! API refuses its artifact downloads.

use std::path::{Path, PathBuf};

use crate::base::store::{StoreError, now_ms};
use crate::fleet::ca::{Authority, CaError};
use crate::fleet::devices::Devices;

/// Why the revocation list could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("cannot write the revocation list {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Where the list is written under the coordinator's data directory.
pub fn crl_path(data_dir: &Path) -> PathBuf {
    data_dir.join("pki").join("devices.crl.pem")
}

/// Makes the CA's revocation list from every revocation (PEM).
pub fn list(authority: &Authority, devices: &Devices) -> Result<String, RevocationError> {
    let revoked: Vec<(String, u64)> = devices
        .revocations()?
        .into_iter()
        .filter_map(|r| r.cert_serial.map(|serial| (serial, r.at_ms)))
        .collect();
    Ok(authority.revocation_list(&revoked, now_ms())?)
}

/// Makes the list and writes it to [`crl_path`] (atomically); returns the path.
pub fn publish(
    authority: &Authority,
    devices: &Devices,
    data_dir: &Path,
) -> Result<PathBuf, RevocationError> {
    let pem = list(authority, devices)?;
    let path = crl_path(data_dir);
    outpost_shared::files::write_atomic(&path, pem.as_bytes())
        .map_err(|source| RevocationError::Write { path: path.clone(), source })?;
    Ok(path)
}
