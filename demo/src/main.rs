//! `outpost`: the whole system in one binary.
//!
//! - `outpost demo`: a coordinator with its embedded broker and five agents on this machine,
//!   real processes, the example models, labelled traffic and two staged rollouts (see
//!   [`demo`]).
//! - `outpost agent …`: exactly `outpost-agent …`; `outpost coordinator …`: exactly
//!   `outpost-coordinator …` (the demo runs its processes this way, so one build is enough).
//!
//! Exit codes: those of the command run; `demo` exits 0 when both rollouts ended as expected,
//! 1 otherwise, 2 for bad usage.
#![forbid(unsafe_code)]

mod demo;

use std::ffi::OsString;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    match args.get(1).and_then(|a| a.to_str()) {
        Some("agent") => outpost_agent::cli::main_from(rest("outpost-agent", &args)),
        Some("coordinator") => outpost_coordinator::cli::main_from(rest("outpost-coordinator", &args)),
        Some("demo") => demo::main(rest("outpost demo", &args)),
        Some("-V" | "--version") => {
            println!("outpost {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "usage: outpost demo [--help]        a fleet on this machine: coordinator, 5 agents, rollouts\n       \
                 outpost agent …                the agent (as `outpost-agent`)\n       \
                 outpost coordinator …          the coordinator (as `outpost-coordinator`)"
            );
            ExitCode::from(2)
        }
    }
}

/// The command line of a sub-command: its name, then the arguments after it.
fn rest(name: &str, args: &[OsString]) -> Vec<OsString> {
    std::iter::once(OsString::from(name)).chain(args.iter().skip(2).cloned()).collect()
}
