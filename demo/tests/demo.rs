//! The README's main command runs to the end on a machine whose cores are both busy:
//! `outpost demo` starts a coordinator and five agents (real processes), pushes and validates
//! the example model's versions, rolls 1.1.0 out in waves to production, and has the accuracy
//! gate roll `2.0.0-bad` back by itself — while two threads of this test burn both CPU cores
//! (a busy edge gateway, or a CI runner doing other work). Run with `--exit-when-done` (and
//! short bakes) instead of waiting for Ctrl-C.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Busy loops on `threads` threads until dropped.
struct CpuBurner {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl CpuBurner {
    fn start(threads: usize) -> CpuBurner {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|i| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut x = i as u64 + 1;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..100_000 {
                            x = std::hint::black_box(
                                x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1),
                            );
                        }
                    }
                    x
                })
            })
            .collect();
        CpuBurner { stop, threads }
    }
}

impl Drop for CpuBurner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn the_demo_promotes_1_1_0_and_rolls_back_2_0_0_bad_with_both_cores_busy() {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let burner = CpuBurner::start(cores);
    let dir = std::env::temp_dir().join(format!("outpost-demo-test-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["demo", "--exit-when-done", "--bake-secs", "5", "--api", "127.0.0.1:0", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    drop(burner);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}\ncoordinator log tail:\n{}",
        out.status.code(),
        logs("coordinator.log").lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
    for expected in [
        "5 agents downloaded, verified, validated and serve it",
        "validated bc@1.1.0: accuracy 98.2% on 114 held-out rows — PASSED",
        "wave 3/3 (100%): gates passed",
        "succeeded: bc@1.1.0 is production",
        "rollout r-000001 SUCCEEDED",
        "ROLLED BACK: gate `accuracy>=-5%` failed at wave 1/3 (20%)",
        "incident inc-000001: gate accuracy>=-5% FAILED",
        "every agent serves bc@1.1.0 again",
    ] {
        assert!(stdout.contains(expected), "missing `{expected}` in:\n{stdout}");
    }
    // Passed on evidence: every gate of the last wave says its bound is inside the limit.
    assert!(stdout.contains("is within the limit"), "{stdout}");
    // Every process it started has stopped: their logs end with a clean shutdown.
    assert!(logs("coordinator.log").contains("state flushed; stopped"), "{}", logs("coordinator.log"));
    for i in 0..5 {
        let log = logs(&format!("agent-{i}.log"));
        assert!(log.lines().last().is_some_and(|l| l.contains("\"stopped\"")), "agent {i}:\n{log}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
