//! The alert rules and the engine's unit tests.

use super::*;
use crate::fleet::devices::{DriftStreak, WindowSummary};

fn device(id: &str) -> DeviceRecord {
    let mut d = DeviceRecord::new(id, &[7; 32], BTreeMap::new());
    d.last_seen_ms = Some(1_000_000);
    d
}

fn streak(feature: &str, sustained: bool) -> DriftStreak {
    DriftStreak {
        model: "bc".into(),
        feature: feature.into(),
        drifted_run: 3,
        clean_run: 0,
        sustained,
        since_ms: Some(900_000),
    }
}

#[test]
fn drift_on_many_devices_is_one_alert_per_feature() {
    let devices: Vec<DeviceRecord> = (0..1000)
        .map(|i| {
            let mut d = device(&format!("dev-{i}"));
            d.drift_streaks = vec![streak("mean_radius", true), streak("mean_texture", i % 2 == 0)];
            d
        })
        .collect();
    let alerts = evaluate(&devices, &AlertsConfig::default(), &FleetConfig::default(), 1_000_000);
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    let radius = alerts.iter().find(|a| a.labels["feature"] == "mean_radius").unwrap();
    assert_eq!(radius.devices.len(), 1000);
    assert!(!radius.labels.contains_key("device"));
    let texture = alerts.iter().find(|a| a.labels["feature"] == "mean_texture").unwrap();
    assert_eq!(texture.devices.len(), 500);
}

#[test]
fn an_alert_names_the_label_its_devices_share() {
    let at = |id: &str, site: &str, hw: &str| {
        let mut d = device(id);
        d.labels = [("site".to_owned(), site.to_owned()), ("hw".to_owned(), hw.to_owned())].into();
        d
    };
    let mut devices = vec![at("a", "site-c", "x"), at("b", "site-c", "y"), at("c", "site-a", "x")];
    devices[0].drift_streaks = vec![streak("mean_radius", true), streak("mean_texture", true)];
    devices[1].drift_streaks = vec![streak("mean_radius", true)];
    devices[2].drift_streaks = vec![streak("mean_texture", true)];
    let alerts = evaluate(&devices, &AlertsConfig::default(), &FleetConfig::default(), 1_000_000);
    let radius = alerts.iter().find(|a| a.labels["feature"] == "mean_radius").unwrap();
    assert!(radius.summary.ends_with("(all on site=site-c)"), "{}", radius.summary);
    // Devices at two sites on the same hardware: the hardware is what they share.
    let texture = alerts.iter().find(|a| a.labels["feature"] == "mean_texture").unwrap();
    assert!(texture.summary.ends_with("(all on hw=x)"), "{}", texture.summary);
    // Nothing in common: nothing added.
    devices[2].labels.insert("hw".into(), "z".into());
    let alerts = evaluate(&devices, &AlertsConfig::default(), &FleetConfig::default(), 1_000_000);
    let texture = alerts.iter().find(|a| a.labels["feature"] == "mean_texture").unwrap();
    assert!(!texture.summary.contains("all on"), "{}", texture.summary);
}

#[test]
fn error_surges_need_enough_requests_and_a_fresh_window() {
    let mut d = device("d");
    let window = |requests, errors, at_ms| WindowSummary {
        model: "bc".into(),
        version: "2".into(),
        requests,
        errors,
        at_ms,
    };
    let config = AlertsConfig::default();
    let fleet = FleetConfig::default();
    d.last_windows = vec![window(10, 10, 1_000_000)];
    assert!(evaluate(&[d.clone()], &config, &fleet, 1_000_000).is_empty(), "too few requests to judge");
    d.last_windows = vec![window(100, 6, 1_000_000)];
    let alerts = evaluate(&[d.clone()], &config, &fleet, 1_000_000);
    assert_eq!(alerts[0].labels["alertname"], "OutpostErrorSurge");
    assert!(evaluate(&[d], &config, &fleet, 1_000_000 + 61_000).is_empty(), "a stale window says nothing");
}

#[test]
fn silent_devices_and_backlogs_alert() {
    let mut silent = device("quiet");
    silent.last_seen_ms = Some(0);
    let mut busy = device("busy");
    busy.backlog.messages = 20_000;
    let never = DeviceRecord::new("new", &[1; 32], BTreeMap::new());
    let alerts =
        evaluate(&[silent, busy, never], &AlertsConfig::default(), &FleetConfig::default(), 1_000_000);
    let names: Vec<&str> = alerts.iter().map(|a| a.labels["alertname"].as_str()).collect();
    assert_eq!(names, vec!["OutpostBacklog", "OutpostDevicesSilent"]);
    assert_eq!(alerts[1].devices, vec!["quiet"], "a device never seen is not silent");
}

#[test]
fn config_refuses_plain_http_sinks_off_loopback() {
    let config = AlertsConfig { webhook_url: Some("http://10.0.0.1/hook".into()), ..AlertsConfig::default() };
    assert_eq!(config.validate().unwrap_err().0, "alerts.webhook_url");
}
