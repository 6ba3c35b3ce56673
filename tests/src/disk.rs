//! Small disks and memory readings for the tests that meet an edge device's limits: a real
//! tmpfs of a given size (root only), and a process's resident memory from `/proc`.

use std::path::PathBuf;

/// Mounts a `size` tmpfs on a fresh temporary folder (unmounted on drop); `None` (skipped, with
/// a message) where that needs root we do not have — required when `CI` is set.
pub fn small_disk(size: &str) -> Option<(tempfile::TempDir, Mounted)> {
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(std::env::var_os("CI").is_none(), "CI must be able to mount a tmpfs (run as root)");
        eprintln!("skipped: mounting a tmpfs needs root");
        return None;
    }
    let guard = Mounted(dir.path().to_owned());
    Some((dir, guard))
}

/// A mounted tmpfs; unmounted when dropped.
pub struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A process's resident memory now and at its peak (`VmRSS`, `VmHWM`), in bytes.
pub fn resident_bytes(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}
