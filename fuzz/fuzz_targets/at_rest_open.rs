//! Arbitrary bytes as a stored value (a prediction-log record, an outbox entry, a bundle file
//! read back from a damaged card): opening must never panic, and nothing the key did not seal
//! may open as sealed.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use outpost_agent::at_rest::{AtRest, Sealer, Store, is_sealed};

fn at_rest() -> &'static AtRest {
    static AT_REST: OnceLock<AtRest> = OnceLock::new();
    AT_REST.get_or_init(|| AtRest::sealed(Arc::new(Sealer::ephemeral().expect("a key"))))
}

fuzz_target!(|data: &[u8]| {
    for store in [Store::PredictionLog, Store::Outbox, Store::Bundle, Store::Download] {
        match at_rest().read(store, b"place", data) {
            Ok(clear) => assert!(!is_sealed(data) && clear == data, "forged sealed bytes opened"),
            Err(_) => assert!(is_sealed(data), "clear bytes refused"),
        }
    }
    // What it seals opens again, at the same place only.
    let sealed = at_rest().write(Store::Outbox, b"7", data.to_vec());
    assert_eq!(at_rest().read(Store::Outbox, b"7", &sealed).as_deref(), Ok(data));
    assert!(at_rest().read(Store::Outbox, b"8", &sealed).is_err());
});
