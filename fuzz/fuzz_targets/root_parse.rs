//! Arbitrary bytes as a trust-root statement (from a desired state, an air-gap folder, a damaged
//! `root.json`): parsing never panics, and nothing parsed is accepted as a successor of a real
//! root unless the real root key signed it — which a fuzzer cannot do.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use outpost_shared::protocol::SigningKey;
use outpost_shared::protocol::root::{self, Role, Root, SignedRoot};

fn current() -> &'static SignedRoot {
    static ROOT: OnceLock<SignedRoot> = OnceLock::new();
    ROOT.get_or_init(|| {
        let key = SigningKey::generate().expect("a key").0;
        let mut root = SignedRoot::unsigned(Root {
            version: 1,
            issued_at_ms: 1,
            root: Role::of(&[key.public_key()], 1),
            release: Role::of(&[key.public_key()], 1),
            online: Role::of(&[key.public_key()], 1),
        });
        root.sign(&key);
        root
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = SignedRoot::parse(data) else { return };
    // A parsed statement re-encodes and parses back the same.
    assert_eq!(SignedRoot::parse(&parsed.to_bytes()).as_ref(), Ok(&parsed));
    assert!(current().verify_successor(&parsed).is_err(), "a statement the root key never signed was accepted");
    assert!(root::advance(current(), &[parsed]).accepted.is_empty());
});
