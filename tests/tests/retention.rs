//! Retention of what devices sent: a coordinator that has stored an agent's envelopes, restarted
//! (with the agent) 31 days later by libfaketime — past `retention.envelope_days` — removes them at
//! its first pass, says so in its log and in the device's record, and goes on storing what the agent sends
//! next — no seq is stored twice and nothing is refused that should not be.
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
