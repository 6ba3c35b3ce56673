//! `outpost-agent check-model FILE`: what an operator runs before a rollout — load the model
//! exactly as `serve` would, print its signature and metadata, validate it (reference outputs
//! beside the file, else an all-zero sample), and time a few runs on this CPU.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::config::ModelConfig;
use crate::exit::ExitStatus;
use crate::models::load_and_validate;

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// `outpost-agent check-model FILE`.
#[derive(Debug, clap::Args)]
pub struct CheckModelArgs {
    /// The ONNX file. A `<stem>.reference.json` beside it is checked too.
    pub file: PathBuf,
    /// Timed runs after validation.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub runs: u32,
    /// Batch size of the timed runs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub batch: u32,
}

/// Runs the check and prints a report; exit code 3 when the model is not valid.
pub fn run(args: &CheckModelArgs) -> ExitCode {
    let config = ModelConfig {
        name: "check".into(),
        path: args.file.clone(),
        version: None,
        reference: None,
        nan_policy: Default::default(),
        record_inputs: Default::default(),
        sample_predictions: Default::default(),
    };
    println!("model       {}", args.file.display());
    let validated = match load_and_validate(&config) {
        Ok(v) => v,
        Err(failure) => {
            println!("result      INVALID: {}", failure.reason);
            return ExitCode::from(ExitStatus::ModelInvalid);
        }
    };
    let model = &validated.served.model;
    let signature = model.signature();
    println!("version     {}", validated.served.version);
    println!(
        "load        {:.1} ms (decode, type, optimize, validate)",
        validated.load_time.as_secs_f64() * 1e3
    );
    println!("inputs");
    for spec in &signature.inputs {
        println!("  {:<24} {:<6} {}", spec.name, spec.datatype.v2_name(), spec.shape_string());
    }
    println!("outputs");
    for spec in &signature.outputs {
        println!("  {:<24} {:<6} {}", spec.name, spec.datatype.v2_name(), spec.shape_string());
    }
    if !model.metadata().is_empty() {
        println!("metadata");
        for (k, v) in model.metadata() {
            println!("  {k} = {v}");
        }
    }
    println!("validation  {}", validated.evidence);

    let batch = args.batch as usize;
    let inputs = match model.sample_inputs(batch) {
        Ok(inputs) => inputs,
        Err(e) => {
            println!("result      INVALID: {e}");
            return ExitCode::from(ExitStatus::ModelInvalid);
        }
    };
    let mut times = Vec::with_capacity(args.runs as usize);
    for _ in 0..args.runs {
        let inputs = inputs.clone();
        let started = Instant::now();
        if let Err(e) = model.run(inputs) {
            println!("result      INVALID: {e}");
            return ExitCode::from(ExitStatus::ModelInvalid);
        }
        times.push(started.elapsed());
    }
    times.sort();
    let pick = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "timing      {} runs at batch {batch}: min {}, p50 {}, p99 {}, max {}",
        args.runs,
        micros(times[0]),
        micros(pick(0.5)),
        micros(pick(0.99)),
        micros(times[times.len() - 1])
    );
    println!("result      OK");
    ExitCode::SUCCESS
}
