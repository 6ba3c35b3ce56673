//! Arbitrary bytes as a bundle file (an import, a download): parsing, verification and opening
//! an encrypted model must never panic, nothing unsigned may open, and no model opens with a key
//! it was not sealed with.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use outpost_shared::bundle::Bundle;
use outpost_shared::keysource::{KeySource, SourcedKey};
use outpost_shared::protocol::SigningKey;

fn key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate().expect("key").0)
}

fn bundle_key() -> &'static SourcedKey {
    static KEY: OnceLock<SourcedKey> = OnceLock::new();
    KEY.get_or_init(|| SourcedKey::generate(KeySource::Env("FUZZ".into())).expect("key"))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(bundle) = Bundle::parse(data) {
        let _ = bundle.verify_model();
        let mut opened = bundle.clone();
        let decrypted = opened.decrypt(std::slice::from_ref(bundle_key()));
        assert!(!bundle.is_encrypted() || decrypted.is_err(), "a model opened with a key it was not sealed with");
        assert_eq!(Bundle::parse(&bundle.to_bytes()).as_ref(), Ok(&bundle), "re-encoding changed the bundle");
    }
    // Without the private key no input can carry a valid signature.
    assert!(Bundle::open(data, &[key().public_key()]).is_err(), "unsigned bytes opened");
});
