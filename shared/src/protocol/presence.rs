//! Presence that cannot be spoofed: the retained `presence` topic carries a signed envelope,
//! not a bare word.
//!
//! The envelope (see [`crate::protocol`]) is signed with the device's key; its `seq` is the
//! agent's *session* — a number that grows with every start of the agent — and its body is
//! `online` or `offline`. The agent seals both at start: `online` it publishes on every
//! connect, `offline` is its last will (and what it publishes when it stops on purpose). The
//! coordinator accepts a presence only under the device's own key and only from a session no
//! older than the newest it accepted, so a neighbour can neither forge one nor replay a
//! device's `offline` from an earlier run.

use crate::protocol::{self, EnvelopeError, PublicKey, SigningKey};

/// What a presence says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Online,
    Offline,
}

impl Presence {
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Online => "online",
            Presence::Offline => "offline",
        }
    }
}

/// Why a presence message was refused.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("presence is not a signed envelope: {0}")]
    Envelope(#[from] EnvelopeError),
    #[error("presence body must be `online` or `offline`")]
    Body,
}

/// The presence envelope for `session`, signed by `key`.
pub fn seal(
    key: &SigningKey,
    session: u64,
    presence: Presence,
    now_ms: u64,
) -> Result<Vec<u8>, EnvelopeError> {
    protocol::seal(key, session, now_ms, presence.as_str().as_bytes())
}

/// Opens a presence envelope with the device's key: its session and what it says.
pub fn open(wire: &[u8], key: &PublicKey) -> Result<(u64, Presence), PresenceError> {
    let opened = protocol::open(wire, |id| (id == key.key_id()).then_some(*key))?;
    let presence = match opened.body.as_slice() {
        b"online" => Presence::Online,
        b"offline" => Presence::Offline,
        _ => return Err(PresenceError::Body),
    };
    Ok((opened.seq, presence))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_devices_key_opens_its_presence() {
        let (device, _) = SigningKey::generate().unwrap();
        let (other, _) = SigningKey::generate().unwrap();
        let wire = seal(&device, 42, Presence::Offline, 1).unwrap();
        assert_eq!(open(&wire, &device.public_key()).unwrap(), (42, Presence::Offline));
        assert!(matches!(open(&wire, &other.public_key()), Err(PresenceError::Envelope(_))));
        assert!(matches!(open(b"offline", &device.public_key()), Err(PresenceError::Envelope(_))));
        let odd = protocol::seal(&device, 42, 1, b"asleep").unwrap();
        assert!(matches!(open(&odd, &device.public_key()), Err(PresenceError::Body)));
    }
}
