//! Log output: `tracing` with key/value fields to stderr, as text or one JSON object per line.

use std::io::IsTerminal;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::LogFormat;

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("invalid log level `{level}`: {detail}")]
    Level { level: String, detail: String },
    #[error("cannot install logger: {0}")]
    Install(String),
}

/// Installs the global subscriber. `filter` is a comma-separated list of a default level and
/// `target=level` directives, such as `info` or `warn,outpost_agent::server=info` (`tracing`'s
/// `Targets` syntax: no span or field filters, which is what keeps regex out of the agent).
///
/// sled's own log lines are off unless the filter names `sled` (e.g. `info,sled=warn`): the
/// prediction log and the outbox report storage failures themselves — counted in `/metrics`,
/// logged at most once per interval — while sled repeats them from its flusher thread on
/// every flush, which on a full disk shared with the journal only makes things worse.
pub fn init(format: LogFormat, filter: &str) -> Result<(), LoggingError> {
    let filter = targets(filter)?;
    // The subscriber's maximum is the filter's most verbose directive. Not less (the builder's
    // default, INFO, would hide `debug` directives) and not more: the global maximum is also
    // what the `log` crate is told, and at TRACE every `log` call in tract, rustls and sled
    // would be dispatched only to be dropped by the filter.
    let builder = tracing_subscriber::fmt().with_max_level(max_level(&filter)).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .finish()
            .with(filter)
            .try_init(),
        LogFormat::Text => {
            builder.with_ansi(std::io::stderr().is_terminal()).finish().with(filter).try_init()
        }
    };
    result.map_err(|e| LoggingError::Install(e.to_string()))?;
    // A panic anywhere (e.g. inside a model run, which the worker survives) is logged as an event.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(panic = %info, "panic");
    }));
    Ok(())
}

/// The most verbose level any of the filter's directives lets through (its own level hint).
fn max_level(filter: &Targets) -> LevelFilter {
    tracing_subscriber::Layer::<tracing_subscriber::Registry>::max_level_hint(filter)
        .unwrap_or(LevelFilter::TRACE)
}

/// Parses the configured filter, with sled's own lines off unless it names `sled`.
fn targets(filter: &str) -> Result<Targets, LoggingError> {
    let directives = if filter.contains("sled") {
        filter.to_owned()
    } else if filter.trim().is_empty() {
        "sled=off".to_owned()
    } else {
        format!("{filter},sled=off")
    };
    directives.parse().map_err(|e: tracing_subscriber::filter::ParseError| LoggingError::Level {
        level: filter.to_owned(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    #[test]
    fn a_default_level_and_per_target_levels_apply_by_longest_prefix() {
        let t = targets("warn,outpost_agent::server=info,outpost_agent::link=debug").unwrap();
        assert!(t.would_enable("outpost_agent::server", &Level::INFO));
        assert!(!t.would_enable("outpost_agent::server", &Level::DEBUG));
        assert!(t.would_enable("outpost_agent::link::mqtt", &Level::DEBUG));
        assert!(!t.would_enable("outpost_agent::api", &Level::INFO));
        assert!(t.would_enable("outpost_agent::api", &Level::WARN));
        assert!(t.would_enable("rumqttc::state", &Level::WARN));
    }

    #[test]
    fn the_maximum_level_is_the_most_verbose_directive() {
        assert_eq!(max_level(&targets("info").unwrap()), LevelFilter::INFO);
        assert_eq!(max_level(&targets("warn,outpost_agent::server=info").unwrap()), LevelFilter::INFO);
        assert_eq!(max_level(&targets("outpost_agent=debug,warn").unwrap()), LevelFilter::DEBUG);
        assert_eq!(max_level(&targets("").unwrap()), LevelFilter::OFF);
    }

    #[test]
    fn sled_is_silent_unless_named() {
        assert!(!targets("info").unwrap().would_enable("sled::pagecache", &Level::ERROR));
        assert!(targets("info,sled=warn").unwrap().would_enable("sled::pagecache", &Level::WARN));
    }

    #[test]
    fn a_filter_it_cannot_parse_is_refused_by_name() {
        let err = targets("info,outpost_agent=loud").unwrap_err().to_string();
        assert!(err.contains("invalid log level `info,outpost_agent=loud`"), "{err}");
    }
}
