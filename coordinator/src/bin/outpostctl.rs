//! `outpostctl`: the operator's command line for a coordinator ([`outpost_coordinator::ctl`];
//! `outpost ctl …` is the same program).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    outpost_coordinator::ctl::main_from(std::env::args_os())
}
