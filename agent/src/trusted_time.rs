//! A time the agent can trust for expiry checks: the newest time the coordinator signed (an
//! ack's or a desired state's sealing time), plus the monotonic time elapsed since it arrived.
//!
//! The device's own clock is never used for it: edge devices boot without a real-time clock,
//! air-gapped sites have no NTP, and a clock an attacker sets back would let an expired desired
//! state look fresh (a freeze). The newest signed time is kept in `<data_dir>/trusted-time`, so
//! after a restart the time goes on from there (behind the truth by the downtime, never ahead:
//! a device rebooted often while cut off notices a freeze later, never falsely).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// The newest signed time and when it was seen.
#[derive(Debug)]
pub struct TrustedClock {
    anchor: Mutex<Option<(u64, Instant)>>,
    path: Option<PathBuf>,
    /// The signed time last written to disk.
    persisted: Mutex<u64>,
}

impl Default for TrustedClock {
    fn default() -> Self {
        TrustedClock { anchor: Mutex::new(None), path: None, persisted: Mutex::new(0) }
    }
}

impl TrustedClock {
    /// The clock of the agent whose data lives in `data_dir`, going on from the time it kept.
    pub fn open(data_dir: &Path) -> TrustedClock {
        let path = data_dir.join("trusted-time");
        let kept = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<u64>().ok());
        TrustedClock {
            anchor: Mutex::new(kept.map(|ms| (ms, Instant::now()))),
            path: Some(path),
            persisted: Mutex::new(kept.unwrap_or(0)),
        }
    }

    /// Notes a time the coordinator signed; the clock moves forward to it, never back.
    pub fn observe(&self, signed_ms: u64) {
        let mut anchor = self.anchor.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if anchor.is_none_or(|(ms, at)| signed_ms > ms.saturating_add(at.elapsed().as_millis() as u64)) {
            *anchor = Some((signed_ms, Instant::now()));
        }
    }

    /// Unix milliseconds by the trusted time; `None` before any signed time was ever seen.
    pub fn now_ms(&self) -> Option<u64> {
        let anchor = *self.anchor.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        anchor.map(|(ms, at)| ms.saturating_add(at.elapsed().as_millis() as u64))
    }

    /// Writes the current trusted time to disk when it moved by a minute since the last write
    /// (blocking: call it off the async executor).
    pub fn persist(&self) -> std::io::Result<()> {
        let (Some(path), Some(now)) = (&self.path, self.now_ms()) else { return Ok(()) };
        let mut persisted = self.persisted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if now < persisted.saturating_add(60_000) {
            return Ok(());
        }
        outpost_shared::files::write_atomic(path, format!("{now}\n").as_bytes())?;
        *persisted = now;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_moves_forward_with_signed_times_and_never_back() {
        let clock = TrustedClock::default();
        assert_eq!(clock.now_ms(), None);
        clock.observe(1_000_000);
        let now = clock.now_ms().unwrap();
        assert!((1_000_000..1_001_000).contains(&now));
        clock.observe(5);
        assert!(clock.now_ms().unwrap() >= now, "an older signed time moved the clock back");
        clock.observe(2_000_000);
        assert!(clock.now_ms().unwrap() >= 2_000_000);
    }

    #[test]
    fn a_restart_goes_on_from_the_kept_time() {
        let dir = tempfile::tempdir().unwrap();
        let clock = TrustedClock::open(dir.path());
        assert_eq!(clock.now_ms(), None);
        clock.observe(1_700_000_000_000);
        clock.persist().unwrap();
        let again = TrustedClock::open(dir.path());
        assert!(again.now_ms().unwrap() >= 1_700_000_000_000);
        // A damaged file is no time at all, not a wrong one.
        std::fs::write(dir.path().join("trusted-time"), "garbage").unwrap();
        assert_eq!(TrustedClock::open(dir.path()).now_ms(), None);
    }
}
