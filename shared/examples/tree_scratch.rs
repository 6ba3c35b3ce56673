#![allow(clippy::unwrap_used, clippy::print_stdout)]
use outpost_shared::Model;
use std::time::Instant;
use tract_onnx::prelude::*;
fn main() {
    for name in ["bc_rf", "bc_gbm", "dg_rf"] {
        let model = Model::load_file(std::path::Path::new(&format!("/tmp/trees/{name}.onnx"))).unwrap();
        let j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(format!("/tmp/trees/{name}.json")).unwrap())
                .unwrap();
        let rows = j["x"].as_array().unwrap();
        let w = rows[0].as_array().unwrap().len();
        let flat: Vec<f32> = rows
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32))
            .collect();
        let n = rows.len();
        let x = Tensor::from_shape(&[n, w], &flat).unwrap();
        let out = model.run(vec![x]).unwrap();
        let labels = out[0].cast_to::<i64>().unwrap().into_owned();
        let labels = labels.try_as_plain_ram().unwrap().as_slice::<i64>().unwrap().to_vec();
        let proba = out[1].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
        let want_l: Vec<i64> = j["label"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        let want_p: Vec<f32> = j["proba"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32))
            .collect();
        let lab_ok = labels == want_l;
        let maxdiff = proba.iter().zip(&want_p).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        println!("{name}: labels equal {lab_ok}, max prob diff {maxdiff:e}");
        for b in [1usize, 64] {
            let xb = Tensor::from_shape(&[b, w], &flat[..b * w]).unwrap();
            let iters = if b == 1 { 200_000 } else { 20_000 };
            for _ in 0..1000 {
                model.run(vec![xb.clone()]).unwrap();
            }
            let t = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(model.run(vec![xb.clone()]).unwrap());
            }
            let dt = t.elapsed().as_secs_f64() / iters as f64;
            println!("  batch {b}: {:.2} us/call, {:.0} rows/s", dt * 1e6, b as f64 / dt);
        }
    }
}
