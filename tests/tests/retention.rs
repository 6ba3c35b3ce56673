//! Retention of what devices sent: a coordinator that has stored an agent's envelopes, restarted
//! (with the agent) 31 days later by libfaketime — past `retention.envelope_days` — removes them at
//! its first pass, says so in its log and in the device's record, and goes on storing what the agent sends
//! next — no seq is stored twice and nothing is refused that should not be. Retention goes by the
//! coordinator's clock: an agent whose clock is 40 hours behind keeps its envelopes for all of a
//! one-day `envelope_days`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use outpost_tests::brokers::{Kind, connected_agent, fleet, start_agent};
use outpost_tests::libfaketime;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_past_their_retention_are_removed_and_reporting_goes_on() {
    let Some(lib) = libfaketime() else { return };
    let mut fleet = fleet(Kind::Embedded);
    let (dir, id, agent) = connected_agent(&fleet).await;
    // A few reports (one a second) reach the store.
    let stored = |v: &serde_json::Value| v["counts"]["envelopes"].as_u64().unwrap_or(0);
    fleet.coordinator.wait_device(&id, Duration::from_secs(30), |v| stored(v) >= 4).await;
    let c = &mut fleet.coordinator;
    let before = c.device(&id).await;
    c.stop(Signal::SIGTERM);
    assert_eq!(before["counts"]["pruned_envelopes"].as_u64().unwrap_or(0), 0);
    let stored_before = before["counts"]["envelopes"].as_u64().unwrap();

    drop(agent);

    // 31 days later (both clocks: certificates issued then must be valid for both): the first
    // retention pass, at start, removes every envelope stored so far (the default keeps 30 days).
    let later = [("LD_PRELOAD", lib.as_str()), ("FAKETIME", "+31d"), ("FAKETIME_DONT_FAKE_MONOTONIC", "1")];
    c.env = later.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    c.resume();
    let _agent = start_agent(&dir, &later);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c.log().contains("pruned stored envelopes") {
        assert!(Instant::now() < deadline, "no retention pass:\n{}", c.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = c.device(&id).await;
    let pruned = after["counts"]["pruned_envelopes"].as_u64().unwrap();
    assert!(pruned >= stored_before, "{pruned} pruned of {stored_before} stored: {after:#}");
    let mark = after["pruned_through_seq"].as_u64().unwrap();
    assert!(mark >= before["highest_seq"].as_u64().unwrap(), "{after:#}");

    // The agent keeps reporting, above the mark: new envelopes are stored, none refused.
    c.wait_device(&id, Duration::from_secs(60), |now| {
        stored(now) >= stored_before + 3 && now["highest_seq"].as_u64().is_some_and(|h| h > mark)
    })
    .await;
    let metrics = String::from_utf8(c.client().get_bytes("/metrics").unwrap()).unwrap();
    let rejected: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("outpost_coordinator_ingest_total{"))
        .filter(|l| {
            !["stored", "duplicate", "presence"].iter().any(|ok| l.contains(&format!("result=\"{ok}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(rejected, 0.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_clock_behind_keeps_its_envelopes_for_the_whole_retention() {
    let Some(lib) = libfaketime() else { return };
    let mut fleet = fleet(Kind::Embedded);
    let c = &mut fleet.coordinator;
    // One day of envelopes; the agent's clock is 40 hours behind (inside the certificates'
    // 48-hour margin), so by its own dates everything it sends is already past retention.
    c.env.push(("OUTPOST_COORDINATOR_RETENTION__ENVELOPE_DAYS".into(), "1".into()));
    c.stop(Signal::SIGTERM);
    c.resume();
    let (dir, id) = fleet.enrolled_agent_dir("behind");
    let behind = [("LD_PRELOAD", lib.as_str()), ("FAKETIME", "-40h"), ("FAKETIME_DONT_FAKE_MONOTONIC", "1")];
    let agent = start_agent(&dir, &behind);
    agent.wait_ready(Duration::from_secs(30)).await;
    let stored = |v: &serde_json::Value| v["counts"]["envelopes"].as_u64().unwrap_or(0);
    let c = &mut fleet.coordinator;
    let before = c.wait_device(&id, Duration::from_secs(30), |v| stored(v) >= 4).await;
    assert!(
        before["clock_skew_ms"].as_i64().is_none_or(|ms| ms > 39 * 3_600_000),
        "the agent's clock is not behind: {before:#}"
    );

    // A restart runs a retention pass at once: nothing the agent sent is a day old here.
    c.stop(Signal::SIGTERM);
    let passes =
        |log: &str| log.matches("none pruned").count() + log.matches("pruned stored envelopes").count();
    let passes_before = passes(&c.log());
    c.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    while passes(&c.log()) == passes_before {
        assert!(Instant::now() < deadline, "no retention pass:\n{}", c.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = c.device(&id).await;
    assert_eq!(after["counts"]["pruned_envelopes"].as_u64().unwrap_or(0), 0, "{after:#}");
    assert!(after["pruned_through_seq"].is_null(), "{after:#}");
    assert!(stored(&after) >= stored(&before), "{after:#}");
    drop(agent);
}
