//! Arbitrary bytes as an ONNX model file through the runtime's loader — protobuf decode, our
//! tree-ensemble attribute parsing and forest checks, tract's typing — and, when a model
//! loads, a run on zeros and on NaNs. Seed it with the tree edge cases (see fuzz/run.sh):
//! mutations of real tree ensembles reach the kernel's structural checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_shared::{DataType, Model, Tensor};

fuzz_target!(|data: &[u8]| {
    let Ok(model) = Model::load_bytes(data, None) else {
        return;
    };
    for batch in [1, 9] {
        let Ok(inputs) = model.sample_inputs(batch) else {
            return;
        };
        let _ = model.run(inputs.clone());
        let nans: Vec<Tensor> = inputs
            .into_iter()
            .zip(&model.signature().inputs)
            .map(|(t, spec)| match spec.datatype {
                DataType::F32 => Tensor::from_shape(t.shape(), &vec![f32::NAN; t.len()]).unwrap_or(t),
                _ => t,
            })
            .collect();
        let _ = model.run(nans);
    }
});
