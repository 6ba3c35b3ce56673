//! `gate-sim`: the operating characteristics of the rollout gates, measured by simulating
//! thousands of rollouts through the engine's own gate and bake code (see
//! `outpost_coordinator::ops::rollout::simulate`). Prints a Markdown table.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use outpost_coordinator::ops::rollout::RolloutSpec;
use outpost_coordinator::ops::rollout::simulate::{LEVELS, Level, Row, SCENARIOS, Simulation};

#[derive(Debug, Parser)]
#[command(
    name = "gate-sim",
    about = "Simulate rollouts through the real gate code and print how often each scenario is rolled back, \
             succeeds or pauses",
    after_help = "Example: gate-sim --rollouts 2000 (the README's table); gate-sim --rollouts 500 --gate \
                  'error_rate<=+0.5%' --gate 'p99<=1.5x' --scenario A/A"
)]
struct Args {
    /// Rollouts per row.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    rollouts: u32,
    /// Seed of the random numbers (the same seed gives the same table).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Devices the rollout targets.
    #[arg(long, default_value_t = 20)]
    devices: usize,
    /// Waves, cumulative percent of the targets.
    #[arg(long, value_delimiter = ',', default_value = "10,50,100")]
    waves: Vec<f64>,
    /// Bake per wave, in seconds.
    #[arg(long, default_value_t = 600)]
    bake_secs: u64,
    /// Bake extensions before a rollout pauses.
    #[arg(long, default_value_t = 2)]
    max_extensions: u32,
    /// A gate (repeat for several); none means the engine's defaults.
    #[arg(long = "gate")]
    gates: Vec<String>,
    /// The rollout's error budget.
    #[arg(long, default_value_t = 0.01)]
    alpha: f64,
    /// Only scenarios whose name contains this.
    #[arg(long)]
    scenario: Option<String>,
    /// Only this traffic level (requests per second per device, e.g. 10).
    #[arg(long)]
    level: Option<f64>,
    /// Worker threads (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut spec: RolloutSpec = match serde_json::from_value(serde_json::json!({
        "model": "m", "version": "2", "strategy": "waves", "waves": args.waves,
        "bake_secs": args.bake_secs, "max_extensions": args.max_extensions, "gates": args.gates,
        "alpha": args.alpha,
    })) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    spec.gates = args.gates.clone();
    let sim = match Simulation::new(spec.clone(), args.devices) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let gates = match spec.validate() {
        Ok(g) => g.into_iter().map(|g| g.text).collect::<Vec<_>>(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let levels: Vec<Level> = LEVELS
        .iter()
        .copied()
        .filter(|l| args.level.is_none_or(|v| (l.requests_per_s - v).abs() < 1e-9))
        .collect();
    let scenarios: Vec<_> =
        SCENARIOS.iter().filter(|s| args.scenario.as_deref().is_none_or(|f| s.name.contains(f))).collect();
    if levels.is_empty() || scenarios.is_empty() {
        eprintln!("error: no scenario or traffic level matches the filters");
        return ExitCode::from(2);
    }
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    println!(
        "gate-sim: {} rollouts per row; {} devices, waves {:?} %, bake {} s, {} extension(s); gates {}; alpha {}; seed {}",
        args.rollouts,
        args.devices,
        args.waves,
        args.bake_secs,
        args.max_extensions,
        gates.join(", "),
        args.alpha,
        args.seed
    );
    println!();
    println!("{}", Row::header());
    for scenario in &scenarios {
        for level in &levels {
            let row = sim.run_many(scenario, *level, args.rollouts, args.seed, threads);
            println!("{}", row.markdown());
            eprintln!("  ({}: {:.1} s)", row.scenario, row.elapsed_secs);
        }
    }
    ExitCode::SUCCESS
}
