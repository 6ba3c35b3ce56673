//! Every served prediction is logged with an id the client gets back; ids survive restarts;
//! a small disk budget keeps the log bounded while the agent serves on, and evictions show
//! in `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use outpost_tests::disk::small_disk;
use outpost_tests::{Agent, model, reference, rows};
use serde_json::{Value, json};

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn wait_for_metric(agent: &Agent, name: &str, at_least: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = agent.metrics_text().await;
        if metric(&text, name) >= at_least {
            return text;
        }
        assert!(Instant::now() < deadline, "{name} never reached {at_least}:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn batch(n: usize) -> Value {
    let r = reference("breast_cancer-1.0.0");
    let (data, len) = rows(&r["inputs"][0]);
    json!({"inputs": [{"name": "input", "shape": [n, 30], "datatype": "FP32", "data": data[..n * len]}]})
}

fn ids(body: &Value) -> Vec<u64> {
    body["parameters"]["prediction_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect()
}

#[tokio::test]
async fn every_prediction_gets_an_id_that_survives_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let mut agent = Agent::builder().model("bc", &model("breast_cancer-1.0.0")).data_dir(data.path()).start();
    agent.wait_ready(Duration::from_secs(30)).await;
    let (status, body) = agent.post_json("/v2/models/bc/infer", &batch(3)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body), vec![1, 2, 3], "one id per row");
    let (_, body) = agent.post_json("/v2/models/bc/infer", &batch(1)).await;
    assert_eq!(ids(&body), vec![4]);
    wait_for_metric(&agent, "outpost_agent_prediction_log_records_total", 4.0).await;
    assert!(data.path().join("predictions").is_dir());

    agent.signal(Signal::SIGTERM);
    let status = tokio::task::spawn_blocking(move || agent.wait_exit(Duration::from_secs(30))).await.unwrap();
    assert_eq!(status.code(), Some(0));

    let agent = Agent::builder().model("bc", &model("breast_cancer-1.0.0")).data_dir(data.path()).start();
    agent.wait_ready(Duration::from_secs(30)).await;
    let (_, body) = agent.post_json("/v2/models/bc/infer", &batch(2)).await;
    assert_eq!(ids(&body), vec![5, 6], "ids continue after a restart");
}

/// The finding: 50 answered requests, `kill -9`, and the restarted agent handed ids out again
/// (feedback for one of them then joined the *new* prediction). Ids are now reserved on disk
/// ahead of use: after a SIGKILL the agent skips ahead, never repeats an id, and names the
/// skipped range in its log and `/metrics`; a clean stop skips nothing.
#[tokio::test]
async fn a_sigkill_never_makes_a_prediction_id_repeat() {
    let data = tempfile::tempdir().unwrap();
    let start = || Agent::builder().model("bc", &model("breast_cancer-1.0.0")).data_dir(data.path()).start();
    let mut agent = start();
    agent.wait_ready(Duration::from_secs(30)).await;
    let mut answered = Vec::new();
    for _ in 0..50 {
        let (status, body) = agent.post_json("/v2/models/bc/infer", &batch(1)).await;
        assert_eq!(status, 200, "{body}");
        answered.extend(ids(&body));
    }
    // Killed right after answering: the newest records have not reached disk yet.
    agent.signal(Signal::SIGKILL);
    let status = tokio::task::spawn_blocking(move || agent.wait_exit(Duration::from_secs(30))).await.unwrap();
    assert_eq!(status.code(), None, "killed by a signal");

    let mut agent = start();
    agent.wait_ready(Duration::from_secs(30)).await;
    let mut after = Vec::new();
    for _ in 0..3 {
        let (_, body) = agent.post_json("/v2/models/bc/infer", &batch(1)).await;
        after.extend(ids(&body));
    }
    let newest = *answered.iter().max().unwrap();
    assert!(after.iter().all(|id| *id > newest), "ids repeated after a SIGKILL: {after:?} vs up to {newest}");
    let skipped = metric(&agent.metrics_text().await, "outpost_agent_prediction_log_ids_skipped");
    assert!(skipped >= 1.0, "the skipped range is exported");
    assert!(
        agent.log().contains("were reserved before the agent last stopped but never logged"),
        "the skipped range is logged:\n{}",
        agent.log()
    );
    // A label for the newest answered id is the old prediction's (joined if it reached disk,
    // evicted if the kill lost it), never "unknown" and never one of the new predictions.
    let (status, body) =
        agent.post_json("/v1/feedback", &json!({"feedback": [{"prediction_id": newest, "label": 1}]})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["results"][0] == "joined" || body["results"][0] == "evicted", "{body}");

    // A clean stop: the next start continues exactly where this one ended.
    agent.signal(Signal::SIGTERM);
    let next = after.iter().max().unwrap() + 1;
    let status = tokio::task::spawn_blocking(move || agent.wait_exit(Duration::from_secs(30))).await.unwrap();
    assert_eq!(status.code(), Some(0));
    let agent = start();
    agent.wait_ready(Duration::from_secs(30)).await;
    let (_, body) = agent.post_json("/v2/models/bc/infer", &batch(1)).await;
    assert_eq!(ids(&body), [next], "a clean restart skips nothing");
    assert_eq!(metric(&agent.metrics_text().await, "outpost_agent_prediction_log_ids_skipped"), 0.0);
}

/// With `prediction_log.durability = "sync"` a request is answered only once its records
/// are on disk: after a SIGKILL, every answered prediction is still there (feedback for each
/// joins it), where `batch` loses the last flush interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sync_durability_every_answered_prediction_survives_a_sigkill() {
    let data = tempfile::tempdir().unwrap();
    let start = || {
        Agent::builder()
            .model("bc", &model("breast_cancer-1.0.0"))
            .data_dir(data.path())
            .env("OUTPOST_PREDICTION_LOG__DURABILITY", "sync")
            // A long background flush: only the sync path can put these records on disk in time.
            .env("OUTPOST_PREDICTION_LOG__FLUSH_INTERVAL_MS", "600000")
            .start()
    };
    let agent = start();
    agent.wait_ready(Duration::from_secs(30)).await;
    // Eight clients at once, so several requests share one sync.
    let agent = std::sync::Arc::new(agent);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let agent = std::sync::Arc::clone(&agent);
            tokio::spawn(async move {
                let mut answered = Vec::new();
                for _ in 0..25 {
                    let (status, body) = agent.post_json("/v2/models/bc/infer", &batch(2)).await;
                    assert_eq!(status, 200, "{body}");
                    answered.extend(ids(&body));
                }
                answered
            })
        })
        .collect();
    let mut answered = Vec::new();
    for t in tasks {
        answered.extend(t.await.unwrap());
    }
    assert_eq!(answered.len(), 400);
    let mut agent = std::sync::Arc::into_inner(agent).unwrap();
    agent.signal(Signal::SIGKILL);
    let status = tokio::task::spawn_blocking(move || agent.wait_exit(Duration::from_secs(30))).await.unwrap();
    assert_eq!(status.code(), None, "killed by a signal");

    let agent = start();
    agent.wait_ready(Duration::from_secs(30)).await;
    let feedback: Vec<Value> = answered.iter().map(|id| json!({"prediction_id": id, "label": 1})).collect();
    let (status, body) = agent.post_json("/v1/feedback", &json!({ "feedback": feedback })).await;
    assert_eq!(status, 200, "{body}");
    let lost: Vec<(u64, &Value)> = answered
        .iter()
        .zip(body["results"].as_array().unwrap())
        .filter(|(_, r)| **r != "joined")
        .map(|(id, r)| (*id, r))
        .collect();
    assert!(lost.is_empty(), "answered predictions lost in the kill: {lost:?}");
}

/// The finding: 200 flipped bytes in the second half of a prediction-log segment (what a worn
/// SD card does) made the agent panic inside sled at start and exit 101 on every restart — a
/// damaged *log* stopped inference. Now a flipped byte costs the record it lands in: the agent
/// starts and serves, the records in the untouched half still join feedback, the damaged ones
/// are counted (and answered "unreadable", not "unknown"), and ids never repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_log_segment_costs_only_the_damaged_records_and_serving_goes_on() {
    let data = tempfile::tempdir().unwrap();
    let start = || Agent::builder().model("bc", &model("breast_cancer-1.0.0")).data_dir(data.path()).start();
    let mut agent = start();
    agent.wait_ready(Duration::from_secs(30)).await;
    let mut answered = Vec::new();
    // Enough records that the segment's file is full of them (12,000).
    for _ in 0..1500 {
        let (status, body) = agent.post_json("/v2/models/bc/infer", &batch(8)).await;
        assert_eq!(status, 200, "{body}");
        answered.extend(ids(&body));
    }
    agent.signal(Signal::SIGTERM);
    let status = tokio::task::spawn_blocking(move || agent.wait_exit(Duration::from_secs(30))).await.unwrap();
    assert_eq!(status.code(), Some(0));

    // 200 bytes flipped in the second half of the segment file (a worn SD card).
    let segment = std::fs::read_dir(data.path().join("predictions"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("seg-"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let half = bytes.len() / 2;
    for i in 0..200 {
        let at = half + (i * 7919) % (bytes.len() - half);
        bytes[at] ^= 0xA5;
    }
    std::fs::write(&segment, bytes).unwrap();

    let agent = start();
    agent.wait_ready(Duration::from_secs(30)).await;
    let (status, body) = agent.post_json("/v2/models/bc/infer", &batch(1)).await;
    assert_eq!(status, 200, "serving goes on: {body}\n{}", agent.log());
    let newest = *answered.iter().max().unwrap();
    assert!(ids(&body).iter().all(|id| *id > newest), "ids repeated: {body}");
    let text = agent.metrics_text().await;
    let unreadable = metric(&text, "outpost_agent_unreadable_records_total{store=\"prediction_log\"}");
    assert!((1.0..=400.0).contains(&unreadable), "each damaged place counted once: {unreadable}\n{text}");
    assert_eq!(metric(&text, "outpost_agent_prediction_log_quarantined_segments_total"), 0.0);

    // Every label joins or is answered unreadable; the first half of the log is untouched.
    let feedback: Vec<Value> = answered.iter().map(|id| json!({"prediction_id": id, "label": 0})).collect();
    let mut results = Vec::new();
    for chunk in feedback.chunks(1000) {
        let (status, answer) = agent.post_json("/v1/feedback", &json!({ "feedback": chunk })).await;
        assert_eq!(status, 200, "{answer}");
        results.extend(answer["results"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()));
    }
    let joined = results.iter().filter(|r| *r == "joined").count();
    let damaged = results.iter().filter(|r| *r == "unreadable").count();
    assert!(results[..results.len() / 3].iter().all(|r| r == "joined"), "the untouched records join");
    assert!(joined >= answered.len() - 400, "{joined} of {} joined", answered.len());
    assert!(damaged >= 1, "the damaged records are named: {results:?}");
    assert_eq!(joined + damaged, answered.len(), "no label is answered unknown or evicted");
}

/// The finding: on a 30 MB filesystem with the defaults the log evicted nothing (its budget
/// was never reached, the disk was) and lost every record once the disk was full. Now its
/// budget is at most `max_disk_share` (0.5) of the log plus the free space: on a 16 MiB tmpfs
/// it evicts its oldest segments and never fails a write, also when something else then
/// takes 6 MiB of the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_disk_makes_the_log_evict_instead_of_failing() {
    let Some((dir, _mounted)) = small_disk("16m") else { return };
    let agent = Agent::builder()
        .model("bc", &model("breast_cancer-1.0.0"))
        .data_dir(dir.path())
        .env("OUTPOST_TELEMETRY__ENABLED", "false")
        .start();
    agent.wait_ready(Duration::from_secs(30)).await;
    let evicted = |m: &str| metric(m, "outpost_agent_prediction_log_evicted_segments_total");
    let serve_until = |at_least: f64| {
        let agent = &agent;
        async move {
            let started = Instant::now();
            loop {
                for _ in 0..50 {
                    let (status, body) = agent.post_json("/v2/models/bc/infer", &batch(8)).await;
                    assert_eq!(status, 200, "{body}");
                }
                let m = agent.metrics_text().await;
                assert_eq!(metric(&m, "outpost_agent_prediction_log_write_errors_total"), 0.0, "{m}");
                if evicted(&m) >= at_least {
                    return m;
                }
                assert!(started.elapsed() < Duration::from_secs(120), "nothing was evicted:\n{m}");
            }
        }
    };
    let m = serve_until(1.0).await;
    let budget = metric(&m, "outpost_agent_prediction_log_budget_bytes");
    assert!(budget > 4e6 && budget <= 8.5e6, "half of a 16 MiB disk: {budget}\n{m}");
    // The application beside the agent takes 6 MiB: the budget shrinks, the log evicts more.
    std::fs::write(dir.path().join("application-data"), vec![7u8; 6 << 20]).unwrap();
    // The free space is read at most once a second and sled's files do not shrink at once, so
    // the budget follows within a few evictions, not necessarily at the first (seen in CI:
    // one reading taken before the write showed up).
    let mut m = m;
    let mut smaller = budget;
    for _ in 0..5 {
        m = serve_until(evicted(&m) + 1.0).await;
        smaller = metric(&m, "outpost_agent_prediction_log_budget_bytes");
        if smaller < budget {
            break;
        }
    }
    assert!(
        smaller < budget,
        "the budget did not follow the free space in 5 evictions: {smaller} vs {budget}"
    );
    assert!(metric(&m, "outpost_agent_prediction_log_records_total") > 0.0);
    assert!(!agent.log().contains("writes are failing"), "{}", agent.log());
}

/// A full disk (a 16 MiB tmpfs, the log allowed all of it, then the application beside the
/// agent takes every byte left): the log evicts its oldest segment and retries before it drops
/// anything, so logging goes on; once only its newest segment is left and the disk is still
/// full, the agent keeps serving, `/metrics` counts the records dropped, and the failures are
/// logged at most once per 30 s with a count — the finding was 9,618 ERROR lines in 30 s on a
/// disk the journal shares. Needs root for the mount; required when `CI` is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_makes_the_log_evict_and_retry_then_count_what_it_drops() {
    let Some((dir, _mounted)) = small_disk("16m") else { return };
    let agent = Agent::builder()
        .model("bc", &model("breast_cancer-1.0.0"))
        .data_dir(dir.path())
        .env("OUTPOST_TELEMETRY__ENABLED", "false")
        .env("OUTPOST_PREDICTION_LOG__MAX_DISK_SHARE", "1")
        .start();
    agent.wait_ready(Duration::from_secs(30)).await;
    let started = Instant::now();
    let serve = || async {
        for _ in 0..50 {
            let (status, body) = agent.post_json("/v2/models/bc/infer", &batch(8)).await;
            assert_eq!(status, 200, "serving must go on with a full disk: {body}");
        }
        assert!(started.elapsed() < Duration::from_secs(180), "stuck:\n{}", agent.metrics_text().await);
        agent.metrics_text().await
    };
    while metric(&serve().await, "outpost_agent_prediction_log_segments") < 3.0 {}

    // The application fills the disk.
    let mut filler = std::fs::File::create(dir.path().join("application-data")).unwrap();
    while std::io::Write::write_all(&mut filler, &[7u8; 64 * 1024]).is_ok() {}
    let _ = std::io::Write::write_all(&mut filler, &[7u8; 512]);
    let before = metric(&agent.metrics_text().await, "outpost_agent_prediction_log_records_total");

    // Room is made by eviction, and logging goes on.
    let mut m = serve().await;
    while metric(&m, "outpost_agent_prediction_log_evicted_segments_total") < 1.0
        || metric(&m, "outpost_agent_prediction_log_records_total") < before + 1000.0
    {
        m = serve().await;
    }
    assert!(agent.log().contains("disk full"), "evicted for a full disk:\n{}", agent.log());

    // The application takes every byte the evictions free: the log goes down to its newest
    // segment, then records are dropped, and counted.
    let mut failing_since = None;
    while failing_since.is_none_or(|at: Instant| at.elapsed() < Duration::from_secs(5)) {
        while std::io::Write::write_all(&mut filler, &[7u8; 4096]).is_ok() {}
        let m = serve().await;
        // Dropped by the log, or never handed to it (no id could be reserved on the full disk).
        let dropped = metric(&m, "outpost_agent_prediction_log_dropped_records_total")
            + metric(&m, "outpost_agent_prediction_log_unlogged_requests_total");
        if failing_since.is_none() && dropped > 0.0 {
            failing_since = Some(Instant::now());
        }
    }
    let log = agent.log();
    let lines =
        log.lines().filter(|l| l.contains("writes are failing") || l.contains("cannot reserve")).count();
    assert!((1..=3).contains(&lines), "{lines} failure lines in 5 s of failing writes:\n{log}");
    assert!(log.lines().filter(|l| l.contains("\"ERROR\"")).count() <= 5, "{log}");
}

#[tokio::test]
async fn a_model_that_drops_inputs_still_gets_one_id_per_row() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[[models]]\nname = \"bc\"\npath = \"{}\"\nrecord_inputs = \"drop\"\n",
            model("breast_cancer-1.0.0").display()
        ),
    )
    .unwrap();
    let agent = Agent::builder().args(&["--config", config.to_str().unwrap()]).start();
    agent.wait_ready(Duration::from_secs(30)).await;
    let (_, body) = agent.post_json("/v2/models/bc/infer", &batch(3)).await;
    assert_eq!(ids(&body), vec![1, 2, 3]);
    let (_, body) = agent.post_json("/v2/models/bc/infer", &batch(2)).await;
    assert_eq!(ids(&body), vec![4, 5]);
    wait_for_metric(&agent, "outpost_agent_prediction_log_records_total", 5.0).await;
}

#[tokio::test]
async fn a_tiny_disk_budget_keeps_the_log_bounded_while_serving_goes_on() {
    let budget: u64 = 1024 * 1024;
    let agent = Agent::builder()
        .model("bc", &model("breast_cancer-1.0.0"))
        .env("OUTPOST_PREDICTION_LOG__MAX_BYTES", &budget.to_string())
        .env("OUTPOST_PREDICTION_LOG__SEGMENTS", "4")
        .start();
    agent.wait_ready(Duration::from_secs(30)).await;
    let request = batch(114);
    for _ in 0..60 {
        let (status, body) = agent.post_json("/v2/models/bc/infer", &request).await;
        assert_eq!(status, 200, "{body}");
    }
    let text = wait_for_metric(&agent, "outpost_agent_prediction_log_records_total", 6840.0).await;
    let text = if metric(&text, "outpost_agent_prediction_log_evicted_records_total") > 0.0 {
        text
    } else {
        wait_for_metric(&agent, "outpost_agent_prediction_log_evicted_records_total", 1.0).await
    };
    // Slack: one writer batch (1,024 records of ~400 bytes) at ≈ 2× on disk.
    let slack = 1024 * 400 * 2;
    let on_disk = metric(&text, "outpost_agent_prediction_log_disk_bytes") as u64;
    assert!(on_disk <= budget + slack, "{on_disk} bytes on disk for a {budget}-byte budget");
    assert!(metric(&text, "outpost_agent_prediction_log_evicted_segments_total") >= 1.0);
    assert!(agent.log().contains("prediction log: evicted oldest segment"));
    let du = dir_size(&agent.data_dir.join("predictions"));
    assert!(du <= budget + slack + 64 * 1024, "the directory holds {du} bytes");

    // A label for an evicted prediction is counted as such; one for a recent prediction joins.
    let feedback =
        json!({"feedback": [{"prediction_id": 1, "label": 0}, {"prediction_id": 6840, "label": 1}]});
    let (status, answer) = agent.post_json("/v1/feedback", &feedback).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"], json!(["evicted", "joined"]), "{answer}");
    let text = agent.metrics_text().await;
    assert!(text.contains("outpost_agent_feedback_total{result=\"evicted\"} 1"), "{text}");
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
