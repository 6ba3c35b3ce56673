//! The wire protocol between agents and coordinator: signed envelopes and MQTT topic names.
//!
//! Every message crosses the broker inside an [`Envelope`], encoded with postcard:
//!
//! ```text
//! wire = postcard(format_version: u16, key_id: String, seq: u64, sent_at_ms: u64, body: Vec<u8>)
//!        ‖ postcard(signature: Vec<u8>)            -- 1 length byte (64) + 64 signature bytes
//! ```
//!
//! Postcard encodes a struct as the concatenation of its fields, so the signed bytes are
//! exactly the wire bytes before the signature: [`open`] verifies the Ed25519 signature over
//! what was received, never over a re-encoding. `format_version` comes first so a decoder can
//! refuse a version it does not know before interpreting anything else. `seq` is per sender
//! and direction, strictly increasing, so receivers can detect replays and reordering;
//! `key_id` names the sender's key (see [`keys::key_id_of`]).
//!
//! Decoding outside bytes never panics: sizes are bounded before decoding, and every failure
//! is an [`EnvelopeError`] that says what was wrong (fuzzed by `fuzz/` target `envelope_open`).
//! The envelope treats its body as bytes; [`messages`] defines what the bodies are.

#[cfg(feature = "mqtt-gate")]
pub mod gate;
pub mod keys;
pub mod messages;
pub mod presence;
pub mod records;
pub mod root;
pub mod topics;
pub mod transfer;
pub mod vocab;

use serde::{Deserialize, Serialize};

pub use keys::{KeyError, PublicKey, SigningKey};

/// The envelope format this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// Largest envelope accepted, in bytes (prediction batches are the big ones).
pub const MAX_ENVELOPE_BYTES: usize = 4 * 1024 * 1024;

/// Longest key id accepted.
pub const MAX_KEY_ID_LEN: usize = 64;

const SIGNATURE_LEN: usize = 64;

/// A decoded envelope, before or after its signature was checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub format_version: u16,
    pub key_id: String,
    pub seq: u64,
    pub sent_at_ms: u64,
    pub body: Vec<u8>,
    pub signature: Vec<u8>,
}

/// The fields the signature covers, in wire order.
#[derive(Serialize)]
struct Signed<'a> {
    format_version: u16,
    key_id: &'a str,
    seq: u64,
    sent_at_ms: u64,
    body: &'a [u8],
}

/// An envelope whose signature checked out against a known key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub key_id: String,
    pub seq: u64,
    pub sent_at_ms: u64,
    pub body: Vec<u8>,
}

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is {size} bytes, more than the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("envelope format version {found} is not supported (this build reads {supported})")]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("envelope is malformed: {0}")]
    Malformed(String),
    #[error("envelope has {0} bytes after its signature")]
    TrailingBytes(usize),
    #[error("key id is {0} bytes long, more than {MAX_KEY_ID_LEN}")]
    KeyIdTooLong(usize),
    #[error("signature is {0} bytes, not {SIGNATURE_LEN}")]
    SignatureLength(usize),
    #[error("no trusted key with id `{0}`")]
    UnknownKey(String),
    #[error("signature does not match key `{0}`")]
    BadSignature(String),
    #[error("body of {size} bytes is larger than the envelope limit")]
    BodyTooLarge { size: usize },
}

/// Signs `body` and returns the envelope's wire bytes.
pub fn seal(key: &SigningKey, seq: u64, sent_at_ms: u64, body: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    if body.len() > MAX_ENVELOPE_BYTES - 256 {
        return Err(EnvelopeError::BodyTooLarge { size: body.len() });
    }
    let signed = Signed { format_version: FORMAT_VERSION, key_id: key.key_id(), seq, sent_at_ms, body };
    let mut wire = postcard::to_stdvec(&signed).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    let signature = key.sign(&wire);
    let tail =
        postcard::to_stdvec(&signature.to_vec()).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    wire.extend_from_slice(&tail);
    Ok(wire)
}

/// Decodes an envelope without checking its signature (for inspection and fuzzing; use
/// [`open`] for anything that acts on the contents).
pub fn decode(wire: &[u8]) -> Result<Envelope, EnvelopeError> {
    if wire.len() > MAX_ENVELOPE_BYTES {
        return Err(EnvelopeError::TooLarge { size: wire.len(), max: MAX_ENVELOPE_BYTES });
    }
    let (format_version, _) =
        postcard::take_from_bytes::<u16>(wire).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    if format_version != FORMAT_VERSION {
        return Err(EnvelopeError::UnsupportedVersion { found: format_version, supported: FORMAT_VERSION });
    }
    let (envelope, rest) =
        postcard::take_from_bytes::<Envelope>(wire).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(EnvelopeError::TrailingBytes(rest.len()));
    }
    if envelope.key_id.len() > MAX_KEY_ID_LEN {
        return Err(EnvelopeError::KeyIdTooLong(envelope.key_id.len()));
    }
    if envelope.signature.len() != SIGNATURE_LEN {
        return Err(EnvelopeError::SignatureLength(envelope.signature.len()));
    }
    Ok(envelope)
}

/// Decodes an envelope and verifies its signature with the key `trusted` returns for its key
/// id. Only an envelope that passes is returned.
pub fn open(wire: &[u8], trusted: impl Fn(&str) -> Option<PublicKey>) -> Result<Opened, EnvelopeError> {
    let envelope = decode(wire)?;
    let key = trusted(&envelope.key_id).ok_or_else(|| EnvelopeError::UnknownKey(envelope.key_id.clone()))?;
    // The signature is the last field: one length byte and 64 bytes (checked by `decode`).
    let signed = &wire[..wire.len() - (1 + SIGNATURE_LEN)];
    key.verify(signed, &envelope.signature)
        .map_err(|_| EnvelopeError::BadSignature(envelope.key_id.clone()))?;
    Ok(Opened {
        key_id: envelope.key_id,
        seq: envelope.seq,
        sent_at_ms: envelope.sent_at_ms,
        body: envelope.body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> SigningKey {
        SigningKey::generate().unwrap().0
    }

    #[test]
    fn sealed_envelopes_open_with_the_right_key_only() {
        let device = key();
        let other = key();
        let wire = seal(&device, 7, 1_700_000_000_000, b"report").unwrap();
        let opened = open(&wire, |id| (id == device.key_id()).then(|| device.public_key())).unwrap();
        assert_eq!(opened.seq, 7);
        assert_eq!(opened.body, b"report");
        assert_eq!(opened.key_id, device.key_id());

        let err = open(&wire, |_| Some(other.public_key())).unwrap_err();
        assert_eq!(err, EnvelopeError::BadSignature(device.key_id().to_owned()));
        let err = open(&wire, |_| None).unwrap_err();
        assert_eq!(err, EnvelopeError::UnknownKey(device.key_id().to_owned()));
    }

    #[test]
    fn every_altered_byte_is_detected() {
        let device = key();
        let wire = seal(&device, 1, 2, b"some body bytes").unwrap();
        for i in 0..wire.len() {
            let mut tampered = wire.clone();
            tampered[i] ^= 0x01;
            assert!(open(&tampered, |_| Some(device.public_key())).is_err(), "flip at byte {i} accepted");
        }
    }

    #[test]
    fn refuses_unknown_versions_trailing_bytes_and_oversize_input() {
        let device = key();
        let mut wire = seal(&device, 1, 2, b"x").unwrap();
        let mut future = wire.clone();
        future[0] = 2;
        assert_eq!(
            decode(&future).unwrap_err(),
            EnvelopeError::UnsupportedVersion { found: 2, supported: 1 }
        );
        wire.push(0);
        assert_eq!(decode(&wire).unwrap_err(), EnvelopeError::TrailingBytes(1));
        let huge = vec![0u8; MAX_ENVELOPE_BYTES + 1];
        assert!(matches!(decode(&huge), Err(EnvelopeError::TooLarge { .. })));
        assert!(matches!(decode(&[]), Err(EnvelopeError::Malformed(_))));
    }

    proptest! {
        #[test]
        fn seal_then_open_round_trips(seq in any::<u64>(), sent in any::<u64>(), body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let device = key();
            let wire = seal(&device, seq, sent, &body).unwrap();
            let envelope = decode(&wire).unwrap();
            prop_assert_eq!(envelope.format_version, FORMAT_VERSION);
            let opened = open(&wire, |_| Some(device.public_key())).unwrap();
            prop_assert_eq!((opened.seq, opened.sent_at_ms, opened.body), (seq, sent, body));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let device = key();
            let _ = decode(&bytes);
            let _ = open(&bytes, |_| Some(device.public_key()));
        }
    }
}
