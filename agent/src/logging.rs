//! Log output: `tracing` with key/value fields to stderr, as text or one JSON object per line.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("invalid log level `{level}`: {detail}")]
    Level { level: String, detail: String },
    #[error("cannot install logger: {0}")]
    Install(String),
}

/// Installs the global subscriber. `filter` is a `tracing` directive such as `info`.
///
/// sled's own log lines are off unless the filter names `sled` (e.g. `info,sled=warn`): the
/// prediction log and the outbox report storage failures themselves — counted in `/metrics`,
/// logged at most once per interval — while sled repeats them from its flusher thread on
/// every flush, which on a full disk shared with the journal only makes things worse.
pub fn init(format: LogFormat, filter: &str) -> Result<(), LoggingError> {
    let directives = if filter.contains("sled") {
        filter.to_owned()
    } else if filter.trim().is_empty() {
        "sled=off".to_owned()
    } else {
        format!("{filter},sled=off")
    };
    let filter = EnvFilter::try_new(&directives)
        .map_err(|e| LoggingError::Level { level: filter.to_owned(), detail: e.to_string() })?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => {
            builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init()
        }
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
    };
    result.map_err(|e| LoggingError::Install(e.to_string()))?;
    // A panic anywhere (e.g. inside a model run, which the worker survives) is logged as an event.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(panic = %info, "panic");
    }));
    Ok(())
}
