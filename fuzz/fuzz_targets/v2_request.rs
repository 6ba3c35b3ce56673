//! Arbitrary bytes as a V2 inference request body (JSON, or JSON header + binary tensors)
//! against a real model: decoding, checking, running and encoding must never panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use outpost_agent::infer;
use outpost_agent::config::ModelConfig;
use outpost_agent::models::{ServedModel, load_and_validate};
use outpost_shared::protocol::vocab::Slot;

fn served() -> &'static ServedModel {
    static MODEL: OnceLock<ServedModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/models/breast_cancer-1.0.0.onnx");
        let config = ModelConfig::parse_cli(&format!("bc={path}")).expect("fixture spec");
        load_and_validate(&config).expect("fixture model validates").served
    })
}

fuzz_target!(|data: &[u8]| {
    // First byte: 0 = plain JSON body, otherwise the binary extension's header length
    // (taken modulo the body length + 2, so it can also overshoot).
    let Some((&split, body)) = data.split_first() else { return };
    let header_len = (split != 0).then(|| usize::from(split) % (body.len() + 2));
    let _ = infer::run(served(), Slot::Primary, infer::Body { bytes: body, header_len }, None, true);
});
