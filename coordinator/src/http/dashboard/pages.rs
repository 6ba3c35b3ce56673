//! The dashboard's pages as HTML: data gathered from the stores in one blocking call
//! (`gather`), then rendered by plain functions (`render`). Elements a test or a script reads
//! carry `data-*` attributes (`data-device`, `data-gate`, `data-incident`, …) holding the
//! same values the API returns.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use axum::http::StatusCode;

use super::Viewer;
use super::charts::{Chart, Marker, Series, escape, line_chart};
use crate::base::numbers;
use crate::base::store::now_ms;
use crate::fleet::desired::DesiredRecord;
use crate::fleet::devices::DeviceRecord;
use crate::http::api::{ApiError, AppState};
use crate::models::packaging::utc;
use crate::models::registry::VersionRecord;
use crate::monitoring::quality::QualityReport;
use crate::monitoring::report::DriftHistory;
use crate::monitoring::slo::{SloStatus, TimeBuckets, TrafficWindow};
use crate::ops::alerts::AlertRecord;
use crate::ops::rollout::gates::GateResult;
use crate::ops::rollout::{Incident, Phase, Rollout, RolloutView, TimelineEntry};

/// Time ranges the model page offers; `auto` spans the model's life in the registry (at most
/// 7 days), so a young model's charts are not squeezed into a corner.
pub const RANGES: [&str; 6] = ["auto", "15m", "1h", "6h", "24h", "7d"];
const MAX_RANGE_MS: u64 = 7 * 86_400_000;
/// Points per chart, at most.
const BUCKETS: usize = 60;
/// The narrowest time bucket: several agent report windows, so rates do not jitter with how
/// windows happen to fall into buckets.
const MIN_BUCKET_MS: u64 = 10_000;

/// A range's length; `Some(None)` for `auto`, `None` for an unknown range.
pub fn parse_range(range: &str) -> Option<Option<u64>> {
    Some(Some(match range {
        "auto" => return Some(None),
        "15m" => 15 * 60_000,
        "1h" => 3_600_000,
        "6h" => 6 * 3_600_000,
        "24h" => 24 * 3_600_000,
        "7d" => MAX_RANGE_MS,
        _ => return None,
    }))
}

fn e(text: &str) -> String {
    escape(text)
}

/// `2026-11-26 10:04:05Z`.
fn when(ms: u64) -> String {
    utc(ms / 1000).replace('T', " ")
}

fn ago(now: u64, ms: u64) -> String {
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=89 => format!("{s} s ago"),
        90..=5399 => format!("{} min ago", s / 60),
        5400..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// A reason, summary or timeline line: inline Markdown (`gate` names in code), HTML escaped.
fn md(text: &str) -> String {
    crate::base::markdown::inline_html(text)
}

fn pct(v: f64) -> String {
    numbers::percent(v)
}

fn badge(kind: &str, text: &str) -> String {
    format!("<span class=\"badge {}\">{}</span>", e(kind), e(text))
}

fn link(href: &str, text: &str) -> String {
    format!("<a href=\"{}\">{}</a>", e(href), e(text))
}

/// A path segment or query value, percent-encoded.
fn seg(text: &str) -> String {
    percent_encode(text, b"")
}

/// Percent-encodes all but unreserved characters and those in `keep`.
pub fn percent_encode(text: &str, keep: &[u8]) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b if keep.contains(&b) => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The page frame: navigation, who is signed in, the live-update marker, and `<main>`.
pub fn layout(title: &str, path: &str, viewer: &Viewer, refresh_secs: u64, body: &str) -> String {
    let nav = [
        ("/ui", "Fleet"),
        ("/ui/models", "Models"),
        ("/ui/rollouts", "Rollouts"),
        ("/ui/incidents", "Incidents"),
    ];
    let mut links = String::new();
    for (href, text) in nav {
        let here =
            if href == "/ui" { path == "/ui" || path.starts_with("/ui?") } else { path.starts_with(href) };
        let _ = write!(
            links,
            "<a href=\"{href}\"{}>{text}</a>",
            if here { " class=\"here\" aria-current=\"page\"" } else { "" }
        );
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t} · Outpost</title><link rel=\"icon\" href=\"data:,\"><link rel=\"stylesheet\" href=\"/ui/static/dashboard.css\">\
         <script src=\"/ui/static/dashboard.js\" defer></script></head>\
         <body data-refresh-secs=\"{refresh_secs}\"><header><span class=\"brand\">Outpost</span><nav>{links}</nav>\
         <span class=\"who\" data-user=\"{name}\" data-role=\"{role}\">{name} ({role})</span>\
         <form method=\"post\" action=\"/ui/logout\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button type=\"submit\" class=\"quiet\">Sign out</button></form>\
         <span id=\"live\" class=\"live\" data-updated-ms=\"{now}\">live · {clock}</span></header>\
         <main id=\"main\" data-rendered-ms=\"{now}\"><h1>{t}</h1>{body}</main></body></html>",
        t = e(title),
        name = e(&viewer.principal.name),
        role = viewer.principal.role.as_str(),
        csrf = e(&viewer.csrf),
        now = now_ms(),
        clock = when(now_ms()),
    )
}

pub fn login(next: &str, note: Option<&str>) -> String {
    let note = note.map(|n| format!("<p class=\"error\" role=\"alert\">{}</p>", e(n))).unwrap_or_default();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign in · Outpost</title><link rel=\"icon\" href=\"data:,\">\
         <link rel=\"stylesheet\" href=\"/ui/static/dashboard.css\"></head><body class=\"login\"><main>\
         <h1>Outpost</h1>{note}<form method=\"post\" action=\"/ui/login\">\
         <label for=\"token\">API token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" required autofocus>\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\
         <button type=\"submit\">Sign in</button></form>\
         <p class=\"hint\">A token from <code>outpostctl token create NAME --role viewer</code>. \
         Viewers can look; operators can also pause, resume, promote or abort rollouts and close incidents.</p>\
         </main></body></html>",
        e(next)
    )
}

pub fn error(status: StatusCode, message: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{code} · Outpost</title>\
         <link rel=\"stylesheet\" href=\"/ui/static/dashboard.css\"></head><body class=\"login\"><main>\
         <h1>{code} {reason}</h1><p class=\"error\" role=\"alert\" data-status=\"{code}\">{}</p>\
         <p><a href=\"/ui\">Back to the fleet</a></p></main></body></html>",
        e(message),
        code = status.as_u16(),
        reason = status.canonical_reason().unwrap_or(""),
    )
}

fn status_kind(status: &str) -> &'static str {
    match status {
        "online" => "good",
        "stale" => "warn",
        _ => "bad",
    }
}

fn phase_kind(phase: Phase) -> &'static str {
    match phase {
        Phase::Succeeded => "good",
        Phase::Applying | Phase::Baking => "info",
        Phase::Paused => "warn",
        Phase::RolledBack | Phase::Aborted => "bad",
    }
}

// ---------------------------------------------------------------------------------------------
// Fleet overview

mod fleet;
mod models;
mod rollouts;

pub use fleet::{FleetFilter, Overview};
pub use models::{ModelList, ModelPage};
pub use rollouts::{incident, incident_list, rollout, rollout_list};

#[cfg(test)]
mod tests {
    use super::fleet::MAX_ROWS;
    use super::rollouts::gate_value;
    use super::*;
    use crate::http::auth::{Principal, Role};

    fn viewer(role: Role) -> Viewer {
        Viewer {
            principal: Principal { name: "pat".into(), role, token_hash: String::new() },
            csrf: "c5rf".into(),
        }
    }

    fn gate(gate: &str, verdict: crate::ops::rollout::gates::Verdict) -> GateResult {
        GateResult {
            gate: gate.into(),
            verdict,
            candidate: Some(0.538),
            baseline: Some(0.983),
            limit: Some(0.933),
            candidate_samples: 119,
            baseline_samples: 478,
            min_samples: 50,
            detail: "accuracy 53.80% vs <baseline> 98.30%".into(),
            excess_low: Some(0.31),
            excess_high: Some(0.48),
            alpha: Some(0.01 / 3.0),
        }
    }

    fn incident_fixture(closed: bool) -> Incident {
        let g = gate("accuracy>=-5%", crate::ops::rollout::gates::Verdict::Fail);
        Incident {
            id: "inc-000001".into(),
            rollout: "r-000002".into(),
            model: "bc".into(),
            version: "2.0.0-bad".into(),
            baseline: "1.1.0".into(),
            opened_ms: 1_764_151_445_000,
            reason: "gate accuracy>=-5% failed".into(),
            gate: Some(g.clone()),
            gates: vec![gate("p99<=1.5x", crate::ops::rollout::gates::Verdict::Pass), g],
            baseline_scope: "unmoved targets".into(),
            devices_rolled_back: vec!["dev-a".into(), "dev-b".into()],
            timeline: vec![TimelineEntry { at_ms: 1_764_151_445_000, message: "rolled back <all>".into() }],
            closed_ms: closed.then_some(1_764_151_500_000),
            closed_by: closed.then(|| "admin".into()),
        }
    }

    #[test]
    fn an_incident_page_shows_the_failed_gate_with_its_numbers_and_escapes_text() {
        let html = incident(&viewer(Role::Viewer), &incident_fixture(false));
        assert!(html.contains("data-failed-gate=\"accuracy&gt;=-5%\""), "{html}");
        assert!(html.contains("candidate 53.8% vs baseline 98.3% (limit 93.3%) on 119 / 478"), "{html}");
        assert!(html.contains("<tr data-gate=\"accuracy&gt;=-5%\" data-verdict=\"fail\""), "{html}");
        assert!(html.contains("class=\"hot\""));
        assert!(html.contains("rolled back &lt;all&gt;") && !html.contains("<all>"));
        assert!(html.contains("<li data-device=\"dev-b\">dev-b</li>"));
    }

    #[test]
    fn only_operators_get_buttons_and_only_while_they_can_act() {
        let open = incident_fixture(false);
        assert!(!incident(&viewer(Role::Viewer), &open).contains("<form"));
        let operator = incident(&viewer(Role::Operator), &open);
        assert!(
            operator.contains("action=\"/ui/incidents/inc-000001/close\"")
                && operator.contains("value=\"c5rf\"")
        );
        assert!(!incident(&viewer(Role::Admin), &incident_fixture(true)).contains("<form"));
    }

    #[test]
    fn gate_values_are_milliseconds_for_latency_and_percent_otherwise() {
        assert_eq!(gate_value("p99<=1.5x", Some(12.345)), "12.35 ms");
        assert_eq!(gate_value("error_rate<=+1%", Some(0.0123)), "1.23%");
        assert_eq!(gate_value("agreement>=95%", None), "—");
    }

    fn device(id: &str) -> DeviceRecord {
        serde_json::from_value(serde_json::json!({
            "id": id, "key_id": "k", "public_key": "00", "labels": {"site": "site-c", "hardware": "pi4"},
            "enrolled_at_ms": 0, "last_seen_ms": null, "presence": null, "highest_seq": null,
            "counts": crate::fleet::devices::Counts::default(), "backlog": {"messages": 0, "bytes": 0, "oldest_age_ms": 0}, "models": [],
            "agent_version": null
        }))
        .unwrap()
    }

    #[test]
    fn the_fleet_table_lists_devices_needing_attention_first_and_at_most_500() {
        let statuses = ["online", "offline", "stale", "never_seen"];
        let devices: Vec<(DeviceRecord, &'static str, Option<DesiredRecord>)> =
            (0..1000).map(|i| (device(&format!("dev-{i:04}")), statuses[i % 4], None)).collect();
        let (rows, matching) = Overview::select(&devices, &FleetFilter::default());
        assert_eq!((rows.len(), matching), (MAX_ROWS, 1000));
        let shown: Vec<&str> = rows.iter().map(|&i| devices[i].1).collect();
        assert!(
            shown[..250].iter().all(|s| *s == "never_seen") && shown[250..].iter().all(|s| *s == "offline")
        );
        assert!(
            rows.windows(2)
                .all(|w| devices[w[0]].1 != devices[w[1]].1 || devices[w[0]].0.id < devices[w[1]].0.id)
        );
        let stale = FleetFilter { q: None, status: Some("stale".into()) };
        assert_eq!(Overview::select(&devices, &stale).1, 250);
    }

    #[test]
    fn the_fleet_filter_matches_ids_and_labels_and_refuses_unknown_statuses() {
        let mut d = device("dev-42");
        let f = |q: Option<&str>, s: Option<&str>| FleetFilter {
            q: q.map(Into::into),
            status: s.map(Into::into),
        };
        assert!(f(None, None).matches(&d, "online"));
        assert!(f(Some("site=site-c"), None).matches(&d, "online"));
        assert!(f(Some("dev-4"), Some("online")).matches(&d, "online"));
        assert!(!f(Some("site=site-a"), None).matches(&d, "online"));
        assert!(!f(None, Some("stale")).matches(&d, "online"));
        d.labels.clear();
        assert!(!f(Some("pi4"), None).matches(&d, "online"));
        assert!(f(None, Some("sleepy")).validate().unwrap_err().to_string().contains("status `sleepy`"));
        assert!(f(Some(&"x".repeat(200)), None).validate().is_err());
        assert_eq!(f(Some("site=a b"), Some("stale")).query(), "?q=site%3Da%20b&status=stale");
        assert_eq!(f(Some(""), None).query(), "");
    }

    #[test]
    fn ranges_parse_and_times_read_as_utc() {
        assert_eq!(parse_range("1h"), Some(Some(3_600_000)));
        assert_eq!(parse_range("auto"), Some(None));
        assert_eq!(parse_range("1y"), None);
        assert_eq!(when(0), "1970-01-01 00:00:00Z");
        assert_eq!(ago(100_000, 40_000), "60 s ago");
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
    }
}
