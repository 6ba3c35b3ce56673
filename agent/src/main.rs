//! `outpost-agent`: see `outpost_agent::cli` for commands and exit codes.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    outpost_agent::cli::main()
}
