//! Writing files that must never be half-written or readable by others.
//!
//! [`write_atomic`] writes a temporary file beside the target, syncs it and renames it over
//! the target, so a reader (or a restart after a power cut) sees the old file or the new one,
//! never a mix. [`write_private`] does the same with mode 0600 from the first byte: keys and
//! tokens are never readable by other users, not even for a moment. [`keep_private`] makes a
//! server's whole data directory its own: 0700, and everything it creates from then on 0600
//! (files) or 0700 (directories).

use std::io::Write;
use std::path::Path;

fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Atomically replaces `path` with `bytes` (mode 0644).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with_mode(path, bytes, 0o644)
}

/// Atomically replaces `path` with `bytes`, readable and writable by the owner only (0600).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with_mode(path, bytes, 0o600)
}

/// Makes `data_dir` (created if missing) readable by its owner only (0700) and sets this
/// process's umask to 077, so every file and directory it creates from now on — stores, logs,
/// segments, certificates — is 0600 / 0700. A data directory from an older version, whose
/// files are still 0644, is covered by its own mode. Call it before opening anything there.
/// `Ok(false)` when the directory's mode may not be changed (a volume owned by someone else,
/// as Kubernetes mounts with `fsGroup`): new files are still private.
pub fn keep_private(data_dir: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o077));
    std::fs::create_dir_all(data_dir)?;
    match std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_files_are_owner_only_and_replace_atomically() {
        let dir = std::env::temp_dir().join(format!("outpost-files-{}", std::process::id()));
        let path = dir.join("keys/device.key");
        write_private(&path, b"one").unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary files left behind");
        write_atomic(&dir.join("plain"), b"x").unwrap();
        assert_eq!(std::fs::metadata(dir.join("plain")).unwrap().permissions().mode() & 0o777, 0o644);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
