//! Arbitrary strings against the one name grammar: checking never panics, and a name it
//! accepts always becomes exactly one ordinary path component under its directory.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use outpost_shared::names;

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else { return };
    let dir = Path::new("/store/bundles");
    match names::join(dir, "model name", name) {
        Ok(path) => {
            let rest: Vec<Component<'_>> = path.strip_prefix(dir).expect("under its directory").components().collect();
            assert!(matches!(rest.as_slice(), [Component::Normal(c)] if *c == name), "{name:?} → {path:?}");
            assert!(!name.starts_with('.') && !name.contains(['/', '\\', '\0']), "{name:?}");
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!message.contains(|c: char| c.is_control()), "control characters in {message:?}");
        }
    }
});
