//! Arbitrary datatype, shape and data through both V2 tensor decoders (JSON and binary).
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_shared::DataType;
use outpost_shared::tensor::{tensor_from_json, tensor_from_le_bytes, tensor_to_le_bytes};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let datatype = DataType::ALL[usize::from(data[0]) % DataType::ALL.len()];
    let rank = usize::from(data[1] % 4);
    if data.len() < 2 + rank {
        return;
    }
    let shape: Vec<usize> = data[2..2 + rank].iter().map(|&d| usize::from(d)).collect();
    let rest = &data[2 + rank..];
    if let Ok(tensor) = tensor_from_le_bytes(datatype, &shape, rest) {
        assert_eq!(tensor_to_le_bytes(&tensor).expect("encodes"), rest, "binary round trip");
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(rest) {
        let _ = tensor_from_json(datatype, &shape, &value);
    }
});
