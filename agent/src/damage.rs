//! Telling a damaged store from an unavailable one, and containing a storage library's panic:
//! damaged files never stop the agent from serving — they are moved aside (quarantined)
//! instead, counted and reported. The sled helpers serve the rewrites of stores an earlier
//! version kept in sled (the prediction log's segments and the outbox), which sled 0.34 may
//! panic on when their bytes are damaged.

use std::path::{Path, PathBuf};

/// A sled error that means the files are damaged, not that the disk or a lock is in the way.
pub fn is_damage(e: &sled::Error) -> bool {
    match e {
        sled::Error::Corruption { .. } | sled::Error::ReportableBug(_) | sled::Error::Unsupported(_) => true,
        sled::Error::Io(io) => {
            matches!(io.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData)
        }
        sled::Error::CollectionNotFound(_) => false,
    }
}

/// Runs `open` with a panic inside it contained: sled 0.34 panics on some damaged bytes
/// (`tried to serialize Uninitialized`) instead of returning an error. `Err` carries what the
/// panic said.
pub fn contained<T>(open: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(open)).map_err(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic".to_owned());
        format!("the storage library panicked opening it: {what}")
    })
}

/// Moves `path` (a file or a directory) to `aside/<its name>-<unix ms>`; returns where it went.
pub fn move_aside(path: &Path, aside: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(aside)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let target = aside.join(format!("{name}-{}", outpost_shared::endpoints::now_ms()));
    std::fs::rename(path, &target)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_contained_and_named() {
        let caught = contained(|| -> u32 { panic!("tried to serialize Uninitialized") }).unwrap_err();
        assert!(caught.contains("tried to serialize Uninitialized"), "{caught}");
        assert_eq!(contained(|| 7), Ok(7));
    }

    #[test]
    fn moved_aside_keeps_the_bytes_under_a_new_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.json");
        std::fs::write(&file, b"{broken").unwrap();
        let moved = move_aside(&file, &dir.path().join("quarantine")).unwrap();
        assert!(!file.exists());
        assert_eq!(std::fs::read(&moved).unwrap(), b"{broken");
        assert!(moved.file_name().unwrap().to_string_lossy().starts_with("state.json-"));
    }
}
