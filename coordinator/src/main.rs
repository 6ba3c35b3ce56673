//! `outpost-coordinator`: see `outpost_coordinator::cli` for commands and exit codes.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    outpost_coordinator::cli::main()
}
