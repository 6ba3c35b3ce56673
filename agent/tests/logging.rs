//! The installed logger tells `tracing` and the `log` crate the filter's own maximum, so the
//! `log` calls of tract, rustls and sled below it are skipped at the call site (its own
//! process: it installs the global subscriber).

use outpost_agent::config::LogFormat;
use tracing::level_filters::LevelFilter;

#[test]
fn levels_below_the_filter_are_skipped_at_the_call_site() {
    outpost_agent::logging::init(LogFormat::Json, "warn,outpost_agent::server=info").unwrap();
    assert_eq!(LevelFilter::current(), LevelFilter::INFO);
    assert_eq!(log::max_level(), log::LevelFilter::Info);
    assert!(!tracing::enabled!(target: "tract_core::optim", tracing::Level::DEBUG));
    assert!(tracing::enabled!(target: "outpost_agent::server", tracing::Level::INFO));
}
