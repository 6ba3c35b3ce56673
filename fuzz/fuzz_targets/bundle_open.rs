//! Arbitrary bytes as a bundle file (an import, a download): parsing and verification must
//! never panic, and nothing unsigned may open.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use outpost_shared::bundle::Bundle;
use outpost_shared::protocol::SigningKey;

fn key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate().expect("key").0)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(bundle) = Bundle::parse(data) {
        let _ = bundle.verify_model();
        assert_eq!(Bundle::parse(&bundle.to_bytes()).as_ref(), Ok(&bundle), "re-encoding changed the bundle");
    }
    // Without the private key no input can carry a valid signature.
    assert!(Bundle::open(data, &[key().public_key()]).is_err(), "unsigned bytes opened");
});
