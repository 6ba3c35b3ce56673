//! The clock every engine reads: the wall clock in production, a hand-moved one in tests.
//!
//! Engines hold a [`Clock`] instead of calling `SystemTime::now()`, so a test can drive a
//! rollout's whole life — waves, bakes, extensions, a breach — in milliseconds by moving
//! [`Clock::advance`] on a [`Clock::manual`] clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Milliseconds since the Unix epoch, from the system clock or from a test's hand.
#[derive(Debug, Clone)]
pub struct Clock(Source);

#[derive(Debug, Clone)]
enum Source {
    System,
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Clock {
        Clock(Source::System)
    }

    /// A clock that reads `start_ms` until a test moves it.
    pub fn manual(start_ms: u64) -> Clock {
        Clock(Source::Manual(Arc::new(AtomicU64::new(start_ms))))
    }

    /// Now, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        match &self.0 {
            Source::System => crate::base::store::now_ms(),
            Source::Manual(ms) => ms.load(Ordering::SeqCst),
        }
    }

    /// Moves a manual clock forward by `ms` (every clone sees it); a system clock ignores it.
    pub fn advance(&self, ms: u64) {
        if let Source::Manual(now) = &self.0 {
            now.fetch_add(ms, Ordering::SeqCst);
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_every_clone_sees_it() {
        let clock = Clock::manual(1_000);
        let other = clock.clone();
        assert_eq!(clock.now_ms(), 1_000);
        other.advance(250);
        assert_eq!(clock.now_ms(), 1_250);
        assert!(Clock::system().now_ms() > 1_700_000_000_000);
    }
}

/// Why a span of time (`90d`, `12h`, `30m`, `45s`) was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpanError {
    #[error("`{0}` is not a span like 7d, 12h, 30m or 45s")]
    NotASpan(String),
    #[error("`{0}`: the unit must be d, h, m or s")]
    Unit(String),
    #[error("`{0}` is too long")]
    TooLong(String),
}

/// `7d`, `12h`, `30m`, `45s` → milliseconds.
pub fn parse_span(text: &str) -> Result<u64, SpanError> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().map_err(|_| SpanError::NotASpan(text.to_owned()))?;
    let unit_ms = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1000,
        _ => return Err(SpanError::Unit(text.to_owned())),
    };
    n.checked_mul(unit_ms).ok_or_else(|| SpanError::TooLong(text.to_owned()))
}
