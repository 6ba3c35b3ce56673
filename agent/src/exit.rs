//! The exit codes of every `outpost-agent` command, in one place (documented in the README's
//! operations section and `outpost-agent --help`).

use std::process::ExitCode;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Done (for `serve`: stopped by a signal after draining).
    Success,
    /// Something failed at run time (for `serve`: the grace period ran out with requests in flight).
    Failure,
    /// The command line or configuration cannot be used.
    Usage,
    /// A model did not load and validate (for `serve`: none of the configured ones).
    ModelInvalid,
}

impl ExitStatus {
    /// The process exit code.
    pub const fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::Usage => 2,
            ExitStatus::ModelInvalid => 3,
        }
    }
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> ExitCode {
        ExitCode::from(status.code())
    }
}
