//! `outpost`: the whole system in one binary.
//!
//! - `outpost demo`: a coordinator with its embedded broker and five agents on this machine,
//!   real processes, the example models, labelled traffic and two staged rollouts (see
//!   [`demo`]).
//! - `outpost agent …`: exactly `outpost-agent …`; `outpost coordinator …`: exactly
//!   `outpost-coordinator …`; `outpost ctl …`: exactly `outpostctl …` (the demo runs its
//!   processes this way and prints `ctl` commands, so one build is enough).
//!
//! Exit codes: those of the command run; `demo` exits 0 when both rollouts ended as expected,
//! 1 otherwise, 2 for bad usage.
#![forbid(unsafe_code)]

mod demo;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "outpost",
    version,
    about = "Outpost: ML models on edge devices, rolled out in stages and watched in production",
    after_help = "Each sub-command's own help: `outpost demo --help`, `outpost agent --help`, \
                  `outpost coordinator --help`, `outpost ctl --help`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Every personality takes the rest of the command line as it is, `--help` included.
#[derive(Debug, Subcommand)]
enum Command {
    /// A fleet on this machine: coordinator, embedded broker, 5 agents, two staged rollouts.
    #[command(disable_help_flag = true)]
    Demo(Rest),
    /// The agent (the same as `outpost-agent`).
    #[command(disable_help_flag = true)]
    Agent(Rest),
    /// The coordinator (the same as `outpost-coordinator`).
    #[command(disable_help_flag = true)]
    Coordinator(Rest),
    /// The operator's CLI (the same as `outpostctl`).
    #[command(disable_help_flag = true)]
    Ctl(Rest),
}

#[derive(Debug, clap::Args)]
struct Rest {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    args: Vec<OsString>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let line = |name: &str, rest: Rest| -> Vec<OsString> {
        std::iter::once(OsString::from(name)).chain(rest.args).collect()
    };
    match cli.command {
        Command::Agent(rest) => outpost_agent::cli::main_from(line("outpost-agent", rest)),
        Command::Coordinator(rest) => outpost_coordinator::cli::main_from(line("outpost-coordinator", rest)),
        Command::Ctl(rest) => outpost_coordinator::ctl::main_from(line("outpostctl", rest)),
        Command::Demo(rest) => demo::main(line("outpost demo", rest)),
    }
}
