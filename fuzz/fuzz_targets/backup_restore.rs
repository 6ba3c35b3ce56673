//! Arbitrary bytes as a backup file, and as the records inside one sealed with the right key (a
//! crafted or damaged backup): a restore must never panic, never write outside its target
//! directory, and leave that directory empty whenever it refuses.
#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use outpost_coordinator::base::backup::{Opener, Sealer, restore};
use outpost_shared::keysource::{KeySource, SourcedKey};

fn key() -> &'static SourcedKey {
    static KEY: OnceLock<SourcedKey> = OnceLock::new();
    KEY.get_or_init(|| SourcedKey::generate(KeySource::Env("FUZZ_BACKUP_KEY".into())).expect("a key"))
}

fn restore_into_fresh_dir(file: &[u8]) {
    let outer = tempfile::tempdir().expect("a temporary directory");
    let target = outer.path().join("restored");
    let result = Opener::new(file, key()).and_then(|mut opener| restore(&mut opener, &target));
    let outside: Vec<_> = std::fs::read_dir(outer.path()).expect("listable").flatten().map(|e| e.file_name()).collect();
    assert!(outside.iter().all(|name| name == "restored"), "a restore wrote beside its target: {outside:?}");
    if result.is_err() {
        assert!(!target.exists(), "a refused restore left {}", target.display());
    }
}

fuzz_target!(|data: &[u8]| {
    restore_into_fresh_dir(data);
    let mut sealer = Sealer::new(Vec::new(), key()).expect("a sealer");
    sealer.write_all(data).expect("sealing into memory");
    restore_into_fresh_dir(&sealer.finish().expect("sealed"));
});
