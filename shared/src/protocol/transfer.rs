//! Files that carry envelopes across an air gap.
//!
//! - A **telemetry file** (`outpost-agent export-telemetry`) holds a device's outbox: the
//!   signed envelopes exactly as they would have crossed the broker.
//! - An **ack file** (`outpostctl telemetry import` writes it) holds the coordinator's signed
//!   ack envelopes for them; `outpost-agent import-ack` frees the outbox with it.
//!
//! Layout: `MAGIC` (8 bytes, which also names the kind) ‖ postcard([`TransferFile`]). The
//! envelopes inside are verified one by one with the same rules as live traffic, so a file
//! is only as trustworthy as its signatures — the file itself is not signed.

use serde::{Deserialize, Serialize};

pub const TELEMETRY_MAGIC: &[u8; 8] = b"OPTELEM1";
pub const ACK_MAGIC: &[u8; 8] = b"OPACKS01";

/// Largest transfer file read (a full outbox at its default bound fits easily).
pub const MAX_TRANSFER_BYTES: usize = 1024 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferFile {
    /// The device the envelopes are from (telemetry) or for (acks).
    pub device: String,
    pub created_at_ms: u64,
    pub envelopes: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("file is {0} bytes, more than the limit of {MAX_TRANSFER_BYTES}")]
    TooLarge(usize),
    #[error("not an Outpost {0} file (wrong magic bytes)")]
    WrongKind(&'static str),
    #[error("file is malformed: {0}")]
    Malformed(String),
}

fn encode(magic: &[u8; 8], file: &TransferFile) -> Vec<u8> {
    postcard::to_extend(file, magic.to_vec()).unwrap_or_else(|_| magic.to_vec())
}

fn decode(magic: &[u8; 8], kind: &'static str, bytes: &[u8]) -> Result<TransferFile, TransferError> {
    if bytes.len() > MAX_TRANSFER_BYTES {
        return Err(TransferError::TooLarge(bytes.len()));
    }
    let rest = bytes.strip_prefix(magic.as_slice()).ok_or(TransferError::WrongKind(kind))?;
    let (file, trailing) = postcard::take_from_bytes::<TransferFile>(rest)
        .map_err(|e| TransferError::Malformed(e.to_string()))?;
    if !trailing.is_empty() {
        return Err(TransferError::Malformed(format!("{} bytes after the content", trailing.len())));
    }
    Ok(file)
}

pub fn encode_telemetry(file: &TransferFile) -> Vec<u8> {
    encode(TELEMETRY_MAGIC, file)
}

pub fn decode_telemetry(bytes: &[u8]) -> Result<TransferFile, TransferError> {
    decode(TELEMETRY_MAGIC, "telemetry", bytes)
}

pub fn encode_acks(file: &TransferFile) -> Vec<u8> {
    encode(ACK_MAGIC, file)
}

pub fn decode_acks(bytes: &[u8]) -> Result<TransferFile, TransferError> {
    decode(ACK_MAGIC, "ack", bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn kinds_are_not_confused() {
        let file = TransferFile { device: "d".into(), created_at_ms: 1, envelopes: vec![vec![1, 2]] };
        let bytes = encode_telemetry(&file);
        assert_eq!(decode_telemetry(&bytes).unwrap(), file);
        assert_eq!(decode_acks(&bytes), Err(TransferError::WrongKind("ack")));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode_telemetry(&longer), Err(TransferError::Malformed(_))));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut bytes = TELEMETRY_MAGIC.to_vec();
            bytes.extend_from_slice(&tail);
            let _ = decode_telemetry(&bytes);
            let _ = decode_acks(&tail);
        }
    }
}
