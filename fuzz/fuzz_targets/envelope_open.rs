//! Arbitrary bytes as a signed envelope off the broker: decoding and verification must
//! never panic, and nothing unsigned may open.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use outpost_shared::protocol::{self, SigningKey};

fn key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate().expect("key").0)
}

fuzz_target!(|data: &[u8]| {
    let _ = protocol::decode(data);
    let trusted = key().public_key();
    // Without the private key no input can carry a valid signature.
    assert!(protocol::open(data, |_| Some(trusted)).is_err(), "unsigned bytes opened");
});
