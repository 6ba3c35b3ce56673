//! The dashboard's pages as HTML: data gathered from the stores in one blocking call
//! (`gather`), then rendered by plain functions (`render`). Elements a test or a script reads
//! carry `data-*` attributes (`data-device`, `data-gate`, `data-incident`, …) holding the
//! same values the API returns.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use axum::http::StatusCode;

use super::Viewer;
use super::charts::{Chart, Series, escape, line_chart};
use crate::base::store::{DeviceRecord, now_ms};
use crate::fleet::desired::DesiredRecord;
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

fn pct(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
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

/// Which devices the fleet table lists: `q` matches a device id or a `key=value` label (a
/// substring), `status` a liveness.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFilter {
    pub q: Option<String>,
    pub status: Option<String>,
}

/// Liveness values a filter may name.
pub const STATUSES: [&str; 4] = ["online", "stale", "offline", "never_seen"];
/// Rows the fleet table lists at most (the counts above it cover every device).
const MAX_ROWS: usize = 500;

impl FleetFilter {
    pub fn validate(&self) -> Result<(), String> {
        if self.q.as_ref().is_some_and(|q| q.len() > 128) {
            return Err("the search text `q` is longer than 128 characters".into());
        }
        if let Some(s) = self.status.as_deref().filter(|s| !s.is_empty() && !STATUSES.contains(s)) {
            return Err(format!("status `{s}`: use one of {}", STATUSES.join(", ")));
        }
        Ok(())
    }

    fn matches(&self, d: &DeviceRecord, status: &str) -> bool {
        let q = self.q.as_deref().map(str::trim).unwrap_or_default();
        let status_ok = self.status.as_deref().is_none_or(|s| s.is_empty() || s == status);
        status_ok
            && (q.is_empty()
                || d.id.contains(q)
                || d.labels.iter().any(|(k, v)| format!("{k}={v}").contains(q)))
    }

    /// The filter as a query string (`?q=…&status=…`), empty when it lists everything.
    pub fn query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(q) = self.q.as_deref().filter(|q| !q.is_empty()) {
            parts.push(format!("q={}", seg(q)));
        }
        if let Some(s) = self.status.as_deref().filter(|s| !s.is_empty()) {
            parts.push(format!("status={}", seg(s)));
        }
        if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) }
    }
}

pub struct Overview {
    now: u64,
    filter: FleetFilter,
    /// Every device with its liveness; the desired state only for the rows listed.
    devices: Vec<(DeviceRecord, &'static str, Option<DesiredRecord>)>,
    /// Indices into `devices` of the rows the table lists, in order ([`Overview::select`]).
    listed: Vec<usize>,
    /// How many devices match the filter (listed or not).
    matching: usize,
    rollouts: Vec<Rollout>,
    incidents: Vec<Incident>,
    alerts: Vec<AlertRecord>,
}

impl Overview {
    pub fn gather(app: &AppState, filter: FleetFilter) -> Result<Overview, ApiError> {
        let now = now_ms();
        let mut devices: Vec<(DeviceRecord, &'static str, Option<DesiredRecord>)> = Vec::new();
        for d in app.store.devices().map_err(ApiError::internal)? {
            let status = crate::fleet::liveness::Liveness::of(&d, &app.config.fleet, now).as_str();
            devices.push((d, status, None));
        }
        let (listed, matching) = Overview::select(&devices, &filter);
        for &i in &listed {
            devices[i].2 = app.desired.get(&devices[i].0.id).map_err(ApiError::internal)?;
        }
        Ok(Overview {
            now,
            filter,
            devices,
            listed,
            matching,
            rollouts: app.rollouts.list().map_err(ApiError::internal)?,
            incidents: app.rollouts.incidents().map_err(ApiError::internal)?,
            alerts: app.alerts.list().map_err(ApiError::internal)?,
        })
    }

    /// The rows the filter lists — the ones needing attention first, then by id, at most
    /// [`MAX_ROWS`] — and how many devices match in all.
    fn select(
        devices: &[(DeviceRecord, &'static str, Option<DesiredRecord>)],
        filter: &FleetFilter,
    ) -> (Vec<usize>, usize) {
        let mut rows: Vec<usize> =
            (0..devices.len()).filter(|&i| filter.matches(&devices[i].0, devices[i].1)).collect();
        let matching = rows.len();
        let rank = |s: &str| STATUSES.iter().rev().position(|x| *x == s).unwrap_or(0);
        rows.sort_by(|&a, &b| {
            rank(devices[a].1).cmp(&rank(devices[b].1)).then_with(|| devices[a].0.id.cmp(&devices[b].0.id))
        });
        rows.truncate(MAX_ROWS);
        (rows, matching)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let count = |s: &str| self.devices.iter().filter(|d| d.1 == s).count();
        let active: Vec<&Rollout> = self.rollouts.iter().filter(|r| r.phase.active()).collect();
        let open: Vec<&Incident> = self.incidents.iter().filter(|i| i.closed_ms.is_none()).collect();
        let firing: Vec<&AlertRecord> = self.alerts.iter().filter(|a| a.firing()).collect();
        let _ = write!(
            out,
            "<section class=\"tiles\">\
             <div class=\"tile\" data-tile=\"devices\"><b>{}</b> devices<small>{} online · {} stale · {} offline · {} never seen</small></div>\
             <div class=\"tile\" data-tile=\"rollouts\"><b>{}</b> active rollouts<small>{} in all</small></div>\
             <div class=\"tile {}\" data-tile=\"incidents\"><b>{}</b> open incidents<small>{} in all</small></div>\
             <div class=\"tile {}\" data-tile=\"alerts\"><b>{}</b> firing alerts</div></section>",
            self.devices.len(),
            count("online"),
            count("stale"),
            count("offline"),
            count("never_seen"),
            active.len(),
            self.rollouts.len(),
            if open.is_empty() { "" } else { "bad" },
            open.len(),
            self.incidents.len(),
            if firing.is_empty() { "" } else { "warn" },
            firing.len(),
        );

        if !active.is_empty() || !open.is_empty() || !firing.is_empty() {
            out.push_str("<section><h2>Needs attention</h2><ul class=\"attention\">");
            for r in &active {
                let _ = write!(
                    out,
                    "<li>{} {} {}@{} — {}</li>",
                    badge(phase_kind(r.phase), r.phase.as_str()),
                    link(&format!("/ui/rollouts/{}", seg(&r.id)), &r.id),
                    e(&r.spec.model),
                    e(&r.spec.version),
                    e(r.paused_reason.as_deref().unwrap_or(&r.spec.strategy))
                );
            }
            for i in &open {
                let _ = write!(
                    out,
                    "<li>{} {} {}</li>",
                    badge("bad", "incident"),
                    link(&format!("/ui/incidents/{}", seg(&i.id)), &i.id),
                    e(&i.reason)
                );
            }
            for a in &firing {
                let _ = write!(
                    out,
                    "<li data-alert=\"{}\">{} {} <small>{} device(s), since {}</small></li>",
                    e(a.labels.get("alertname").map_or("", String::as_str)),
                    badge("warn", a.labels.get("alertname").map_or("alert", String::as_str)),
                    e(&a.summary),
                    a.devices.len(),
                    ago(self.now, a.starts_at_ms)
                );
            }
            out.push_str("</ul></section>");
        }

        // Devices by every label key in use (site, hardware, …).
        let keys: BTreeSet<&String> = self.devices.iter().flat_map(|d| d.0.labels.keys()).collect();
        if !keys.is_empty() {
            out.push_str("<section><h2>By label</h2><div class=\"cols\">");
            for key in keys {
                let mut groups: BTreeMap<&str, [usize; 4]> = BTreeMap::new();
                for (d, status, _) in &self.devices {
                    let value = d.labels.get(key).map_or("(none)", String::as_str);
                    let g = groups.entry(value).or_default();
                    g[match *status {
                        "online" => 0,
                        "stale" => 1,
                        "offline" => 2,
                        _ => 3,
                    }] += 1;
                }
                let _ = write!(
                    out,
                    "<table data-by=\"{k}\"><caption>by {k}</caption><tr><th>{k}</th><th>devices</th>\
                     <th>online</th><th>stale</th><th>offline</th></tr>",
                    k = e(key)
                );
                for (value, g) in groups {
                    let _ = write!(
                        out,
                        "<tr data-group=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        e(value),
                        link(&format!("/ui?q={}", seg(&format!("{key}={value}"))), value),
                        g.iter().sum::<usize>(),
                        g[0],
                        g[1],
                        g[2] + g[3]
                    );
                }
                out.push_str("</table>");
            }
            out.push_str("</div></section>");
        }

        // Versions running, per model and slot.
        let mut running: BTreeMap<(String, String, String), [usize; 3]> = BTreeMap::new();
        for (d, _, _) in &self.devices {
            for m in &d.models {
                let cell = running.entry((m.name.clone(), m.version.clone(), m.slot.clone())).or_default();
                cell[match m.state.as_str() {
                    "ready" => 0,
                    "loading" => 1,
                    _ => 2,
                }] += 1;
            }
        }
        out.push_str("<section><h2>Versions running</h2>");
        if running.is_empty() {
            out.push_str("<p class=\"empty\">No device has reported a model yet.</p>");
        } else {
            out.push_str(
                "<table data-table=\"versions\"><tr><th>model</th><th>version</th><th>slot</th><th>ready</th><th>loading</th><th>failed</th></tr>",
            );
            for ((model, version, slot), c) in &running {
                let _ = write!(
                    out,
                    "<tr data-model=\"{m}\" data-version=\"{v}\" data-slot=\"{s}\"><td>{}</td><td>{v}</td><td>{s}</td>\
                     <td>{}</td><td>{}</td><td>{}</td></tr>",
                    link(&format!("/ui/models/{}", seg(model)), model),
                    c[0],
                    c[1],
                    c[2],
                    m = e(model),
                    v = e(version),
                    s = e(slot),
                );
            }
            out.push_str("</table>");
        }
        out.push_str("</section>");

        // The devices the filter lists (chosen in `gather`, which read their desired states).
        let rows: Vec<&(DeviceRecord, &'static str, Option<DesiredRecord>)> =
            self.listed.iter().map(|&i| &self.devices[i]).collect();
        let matching = self.matching;
        let q = self.filter.q.as_deref().unwrap_or_default();
        let _ = write!(
            out,
            "<section><h2>Devices</h2><form method=\"get\" action=\"/ui\" class=\"filter\">\
             <input type=\"search\" name=\"q\" value=\"{}\" placeholder=\"id or label, e.g. site=site-c\" aria-label=\"search\">\
             <select name=\"status\" aria-label=\"status\"><option value=\"\">any status</option>",
            e(q)
        );
        for s in STATUSES {
            let selected = if self.filter.status.as_deref() == Some(s) { " selected" } else { "" };
            let _ = write!(out, "<option{selected}>{s}</option>");
        }
        let _ = write!(
            out,
            "</select> <button type=\"submit\">Filter</button> <small data-listed=\"{}\">listing {} of {} matching, {} in all{}</small></form>",
            rows.len(),
            rows.len(),
            matching,
            self.devices.len(),
            if matching > rows.len() { "; narrow the filter to see the rest" } else { "" }
        );
        if rows.is_empty() && self.devices.is_empty() {
            out.push_str("<p class=\"empty\">No device is enrolled yet: <code>outpostctl device token create</code>.</p>");
        } else if rows.is_empty() {
            out.push_str("<p class=\"empty\">No device matches the filter.</p>");
        } else {
            out.push_str(
                "<table data-table=\"devices\"><tr><th>device</th><th>labels</th><th>status</th><th>models (actual)</th>\
                 <th>desired</th><th>backlog</th><th>last seen</th><th>agent</th><th>drift now</th></tr>",
            );
            for (d, status, desired) in rows {
                let labels: Vec<String> =
                    d.labels.iter().map(|(k, v)| format!("{}={}", e(k), e(v))).collect();
                let models: Vec<String> = d
                    .models
                    .iter()
                    .map(|m| {
                        format!(
                            "<span data-running=\"{}@{}\" data-slot=\"{}\" data-state=\"{}\">{}@{} <small>{} {}</small></span>",
                            e(&m.name),
                            e(&m.version),
                            e(&m.slot),
                            e(&m.state),
                            e(&m.name),
                            e(&m.version),
                            e(&m.slot),
                            e(&m.state)
                        )
                    })
                    .collect();
                let wanted: Vec<String> = desired
                    .iter()
                    .flat_map(|r| r.models.values())
                    .map(|m| {
                        let extra =
                            m.candidate.as_ref().map(|c| format!(" + {}", e(&c.version))).unwrap_or_default();
                        format!("{}@{}{extra}", e(&m.name), e(&m.version))
                    })
                    .collect();
                let drifting: Vec<String> = d
                    .drift
                    .iter()
                    .flat_map(|m| m.features.iter().chain(&m.prediction).filter(|f| f.drifted))
                    .map(|f| e(&f.feature))
                    .collect();
                let _ = write!(
                    out,
                    "<tr data-device=\"{id}\" data-status=\"{status}\"><td>{id}</td><td>{}</td><td>{}</td><td>{}</td>\
                     <td>{}</td><td data-backlog=\"{}\">{} msg{}</td><td>{}</td><td>{}</td><td data-drifting=\"{}\">{}</td></tr>",
                    labels.join(" "),
                    badge(status_kind(status), status),
                    models.join("<br>"),
                    wanted.join("<br>"),
                    d.backlog.messages,
                    d.backlog.messages,
                    if d.backlog.messages > 0 {
                        format!(
                            " · {} KiB · oldest {} s",
                            d.backlog.bytes / 1024,
                            d.backlog.oldest_age_ms / 1000
                        )
                    } else {
                        String::new()
                    },
                    d.last_seen_ms.map_or("never".into(), |t| ago(self.now, t)),
                    e(d.agent_version.as_deref().unwrap_or("?")),
                    drifting.join(","),
                    if drifting.is_empty() { "—".into() } else { drifting.join(", ") },
                    id = e(&d.id),
                );
            }
            out.push_str("</table>");
        }
        out.push_str("</section>");
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Models

pub struct ModelList {
    versions: Vec<VersionRecord>,
}

impl ModelList {
    pub fn gather(app: &AppState) -> Result<ModelList, ApiError> {
        Ok(ModelList { versions: app.registry.list()? })
    }

    pub fn render(&self) -> String {
        let mut by_model: BTreeMap<&str, Vec<&VersionRecord>> = BTreeMap::new();
        for v in &self.versions {
            by_model.entry(&v.name).or_default().push(v);
        }
        if by_model.is_empty() {
            return "<p class=\"empty\">The registry is empty: <code>outpostctl model push</code>.</p>"
                .into();
        }
        let mut out = String::from(
            "<table data-table=\"models\"><tr><th>model</th><th>production</th><th>versions</th><th>newest</th></tr>",
        );
        for (name, versions) in by_model {
            let production = versions
                .iter()
                .find(|v| v.stage == crate::models::registry::Stage::Production)
                .map_or("—".to_owned(), |v| e(&v.version));
            let newest = versions.iter().max_by_key(|v| v.pushed_at_ms);
            let _ = write!(
                out,
                "<tr data-model=\"{}\"><td>{}</td><td>{production}</td><td>{}</td><td>{}</td></tr>",
                e(name),
                link(&format!("/ui/models/{}", seg(name)), name),
                versions.len(),
                newest.map_or(String::new(), |v| format!(
                    "{} {}",
                    e(&v.version),
                    badge("info", v.stage.as_str())
                ))
            );
        }
        out.push_str("</table>");
        out
    }
}

pub struct ModelPage {
    pub name: String,
    versions: Vec<VersionRecord>,
    slo: Option<SloStatus>,
    starts: Vec<u64>,
    traffic: Vec<BTreeMap<String, TrafficWindow>>,
    accuracy: Vec<crate::monitoring::quality::Correct>,
    drift: DriftHistory,
    quality: QualityReport,
    bucket_ms: u64,
}

impl ModelPage {
    /// The page over `range_ms` up to `to_ms`, or over the model's life when `None`.
    pub fn gather(
        app: &AppState,
        name: &str,
        range_ms: Option<u64>,
        to_ms: u64,
    ) -> Result<ModelPage, ApiError> {
        let mut versions = app.registry.versions(name)?;
        if versions.is_empty() {
            return Err(ApiError(StatusCode::NOT_FOUND, format!("no model `{name}` in the registry")));
        }
        let first = versions.iter().map(|v| v.pushed_at_ms).min().unwrap_or(to_ms);
        let range_ms = range_ms.unwrap_or_else(|| to_ms.saturating_sub(first).clamp(60_000, MAX_RANGE_MS));
        let from_ms = to_ms.saturating_sub(range_ms);
        versions.sort_by_key(|v| std::cmp::Reverse(v.pushed_at_ms));
        let slos = app.ingest.slos();
        let labels = app.ingest.labels();
        let slo = match slos.get(name).map_err(ApiError::internal)? {
            Some(spec) => Some(slos.status(labels, name, &spec, to_ms).map_err(ApiError::internal)?),
            None => None,
        };
        let grid = TimeBuckets::new(from_ms, to_ms, ((range_ms / MIN_BUCKET_MS) as usize).clamp(1, BUCKETS));
        Ok(ModelPage {
            name: name.to_owned(),
            versions,
            slo,
            starts: grid.starts(),
            traffic: slos.timeline(name, &grid).map_err(ApiError::internal)?,
            accuracy: labels.timeline(name, &grid).map_err(ApiError::internal)?,
            drift: DriftHistory::build(app.ingest.drift_history(), name, from_ms)
                .map_err(ApiError::internal)?,
            quality: labels.quality(name, Some(from_ms), None).map_err(ApiError::internal)?,
            bucket_ms: grid.width_ms,
        })
    }

    fn versions_seen(&self) -> BTreeSet<String> {
        self.traffic.iter().flat_map(|b| b.keys().cloned()).collect()
    }

    pub fn render(&self, range: &str) -> String {
        let mut out = String::new();
        let name = seg(&self.name);
        out.push_str("<nav class=\"ranges\">Range: ");
        for r in RANGES {
            let _ = write!(
                out,
                "<a href=\"/ui/models/{name}?range={r}\"{}>{r}</a> ",
                if r == range { " class=\"here\"" } else { "" }
            );
        }
        out.push_str("</nav>");

        // Versions, stages, validation, lineage, cards.
        out.push_str(
            "<section><h2>Versions</h2><table data-table=\"model-versions\"><tr><th>version</th><th>stage</th>\
             <th>validation</th><th>derived from</th><th>trained</th><th>pushed</th><th>signed by</th><th>card</th></tr>",
        );
        for v in &self.versions {
            let validation = match v.validation_passed {
                Some(true) => badge("good", "passed"),
                Some(false) => badge("bad", "failed"),
                None => badge("info", "not run"),
            };
            let accuracy = v
                .validation
                .as_ref()
                .and_then(|r| r["metrics"]["accuracy"].as_f64())
                .map(|a| format!(" <small>accuracy {}</small>", pct(a)))
                .unwrap_or_default();
            let card = format!("/ui/models/{name}/versions/{}/card", seg(&v.version));
            let _ = write!(
                out,
                "<tr data-version=\"{ver}\" data-stage=\"{stage}\"><td>{ver}</td><td>{}</td><td>{validation}{accuracy}</td>\
                 <td>{}</td><td>{}</td><td>{} by {}</td><td>{}</td><td>{} · {}</td></tr>",
                badge(if v.stage.as_str() == "production" { "good" } else { "info" }, v.stage.as_str()),
                e(v.manifest.training.parent_version.as_deref().unwrap_or("—")),
                e(v.manifest.training.date.as_deref().unwrap_or("—")),
                when(v.pushed_at_ms),
                e(&v.pushed_by),
                e(&v.signed_by.join(", ")),
                link(&card, "HTML"),
                link(&format!("{card}?format=md"), "Markdown"),
                ver = e(&v.version),
                stage = v.stage.as_str(),
            );
        }
        out.push_str("</table></section>");

        // SLOs.
        out.push_str("<section><h2>Service level objectives</h2>");
        match &self.slo {
            None => out.push_str(&format!(
                "<p class=\"empty\">No objectives set: <code>outpostctl slo set {} --availability 99.5% --latency 'p95&lt;50ms'</code>.</p>",
                e(&self.name)
            )),
            Some(s) => {
                let _ = write!(
                    out,
                    "<p>Window: {} to {}.</p><table data-table=\"slo\"><tr><th>objective</th><th>target</th>\
                     <th>actual</th><th>events</th><th>bad</th><th>status</th><th>burn rate</th><th>budget left</th></tr>",
                    when(s.from_ms),
                    when(s.to_ms)
                );
                for o in &s.objectives {
                    let latency = o.objective.starts_with("latency");
                    let actual = match o.actual {
                        None => "—".into(),
                        Some(a) if latency => format!("{a:.2} ms"),
                        Some(a) => pct(a),
                    };
                    let target = if latency { format!("{} ms", o.target) } else { pct(o.target) };
                    let _ = write!(
                        out,
                        "<tr data-objective=\"{}\" data-compliant=\"{}\"><td>{}</td><td>{target}</td><td>{actual}</td>\
                         <td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td>\
                         <td><meter min=\"0\" max=\"1\" low=\"0.25\" optimum=\"1\" value=\"{}\"></meter> {}</td></tr>",
                        e(&o.objective),
                        o.compliant,
                        e(&o.objective),
                        o.events,
                        o.bad_events,
                        if o.compliant { badge("good", "met") } else { badge("bad", "BREACHED") },
                        o.burn_rate,
                        o.budget_remaining,
                        pct(o.budget_remaining)
                    );
                }
                out.push_str("</table>");
            }
        }
        out.push_str("</section>");

        // Monitoring charts.
        out.push_str("<section><h2>Monitoring</h2><div class=\"charts\">");
        let versions = self.versions_seen();
        let merged: Vec<outpost_shared::histogram::LogHistogram> = self
            .traffic
            .iter()
            .map(|b| {
                let mut h = outpost_shared::histogram::LogHistogram::default();
                for cell in b.values() {
                    let _ = h.merge(&cell.latency_us);
                }
                h
            })
            .collect();
        let latency = ["p50", "p95", "p99"]
            .iter()
            .zip([0.5, 0.95, 0.99])
            .map(|(n, q)| Series {
                name: (*n).to_owned(),
                points: merged.iter().map(|h| h.quantile(q).map(|us| us / 1000.0)).collect(),
            })
            .collect();
        out.push_str(&line_chart(&Chart {
            id: "latency",
            title: "Latency percentiles, all versions (ms)",
            unit: "",
            starts_ms: &self.starts,
            series: latency,
            y_max: None,
        }));
        let per_version = |f: &dyn Fn(&TrafficWindow) -> Option<f64>| {
            versions
                .iter()
                .map(|v| Series {
                    name: v.clone(),
                    points: self.traffic.iter().map(|b| b.get(v).and_then(f)).collect(),
                })
                .collect::<Vec<_>>()
        };
        let secs = self.bucket_ms as f64 / 1000.0;
        out.push_str(&line_chart(&Chart {
            id: "traffic",
            title: "Requests per second, by version",
            unit: "",
            starts_ms: &self.starts,
            series: per_version(&|c| Some(c.requests as f64 / secs)),
            y_max: None,
        }));
        out.push_str(&line_chart(&Chart {
            id: "errors",
            title: "Error rate, by version",
            unit: "%",
            starts_ms: &self.starts,
            series: per_version(&|c| (c.requests > 0).then(|| 100.0 * c.errors as f64 / c.requests as f64)),
            y_max: Some(1.0),
        }));
        let labelled: BTreeSet<&String> = self.accuracy.iter().flat_map(|b| b.keys()).collect();
        let accuracy = labelled
            .iter()
            .map(|v| Series {
                name: (*v).clone(),
                points: self
                    .accuracy
                    .iter()
                    .map(|b| b.get(*v).filter(|c| c.0 > 0).map(|c| 100.0 * c.1 as f64 / c.0 as f64))
                    .collect(),
            })
            .collect();
        out.push_str(&line_chart(&Chart {
            id: "accuracy",
            title: "Accuracy on labelled predictions, by version",
            unit: "%",
            starts_ms: &self.starts,
            series: accuracy,
            y_max: Some(100.0),
        }));
        // Drift: share of device windows that drifted, per feature (the most drifted first).
        let mut drift_series: Vec<Series> = self
            .drift
            .features
            .iter()
            .take(5)
            .chain(&self.drift.prediction)
            .map(|f| Series {
                name: f.feature.clone(),
                points: f
                    .buckets
                    .iter()
                    .map(|c| c.map(|(n, d)| 100.0 * d as f64 / n.max(1) as f64))
                    .collect(),
            })
            .collect();
        drift_series.retain(|s| s.points.iter().any(Option::is_some));
        out.push_str(&line_chart(&Chart {
            id: "drift",
            title: "Drift: share of device windows flagged, by feature (most drifted five + predictions)",
            unit: "%",
            starts_ms: &self.drift.bucket_starts_ms,
            series: drift_series,
            y_max: Some(100.0),
        }));
        out.push_str("</div>");

        // Drift table for every feature.
        if !self.drift.features.is_empty() {
            let _ = write!(
                out,
                "<h3>Drift by feature</h3><p>{} windows from {} device(s).</p><table data-table=\"drift\"><tr><th>feature</th>\
                 <th>windows</th><th>drifted</th><th>share</th><th>worst score</th><th>test</th></tr>",
                self.drift.windows, self.drift.devices
            );
            for f in self.drift.features.iter().chain(&self.drift.prediction) {
                let _ = write!(
                    out,
                    "<tr data-feature=\"{}\" data-drifted=\"{}\" data-windows=\"{}\"{}><td>{}</td><td>{}</td><td>{}</td>\
                     <td>{}</td><td>{:.4}</td><td>{}</td></tr>",
                    e(&f.feature),
                    f.drifted,
                    f.windows,
                    if f.drifted > 0 { " class=\"hot\"" } else { "" },
                    e(&f.feature),
                    f.windows,
                    f.drifted,
                    pct(f.drift_share()),
                    f.worst_score,
                    e(&f.test)
                );
            }
            out.push_str("</table>");
        }

        // Quality per version in the range.
        if !self.quality.versions.is_empty() {
            out.push_str(
                "<h3>Quality on labelled predictions in this range</h3><table data-table=\"quality\"><tr><th>version</th>\
                 <th>labelled</th><th>accuracy</th><th>macro F1</th><th>weighted F1</th></tr>",
            );
            for (v, q) in &self.quality.versions {
                let _ = write!(
                    out,
                    "<tr data-version=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td></tr>",
                    e(v),
                    e(v),
                    q.labelled,
                    pct(q.metrics.accuracy),
                    q.metrics.macro_f1,
                    q.metrics.weighted_f1
                );
            }
            out.push_str("</table>");
        }
        out.push_str("</section>");
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Rollouts and incidents

/// A gate value: milliseconds for latency gates, a percentage otherwise.
fn gate_value(gate: &str, v: Option<f64>) -> String {
    let latency = gate.starts_with('p') && gate[1..].starts_with(|c: char| c.is_ascii_digit());
    match v {
        None => "—".into(),
        Some(v) if latency => format!("{v:.2} ms"),
        Some(v) => pct(v),
    }
}

fn verdict_kind(v: &str) -> &'static str {
    match v {
        "pass" => "good",
        "fail" => "bad",
        _ => "warn",
    }
}

fn gates_table(gates: &[GateResult], failed: Option<&str>) -> String {
    if gates.is_empty() {
        return "<p class=\"empty\">No gate has been evaluated yet.</p>".into();
    }
    let mut out = String::from(
        "<table data-table=\"gates\"><tr><th>gate</th><th>verdict</th><th>candidate</th><th>baseline</th><th>limit</th>\
         <th>samples (candidate / baseline, min)</th><th>evidence</th></tr>",
    );
    for g in gates {
        let verdict = g.verdict.as_str();
        let _ = write!(
            out,
            "<tr data-gate=\"{gate}\" data-verdict=\"{verdict}\" data-candidate=\"{}\" data-baseline=\"{}\" data-limit=\"{}\"{}>\
             <td><code>{gate}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {} (≥ {})</td><td>{}</td></tr>",
            g.candidate.map(|v| v.to_string()).unwrap_or_default(),
            g.baseline.map(|v| v.to_string()).unwrap_or_default(),
            g.limit.map(|v| v.to_string()).unwrap_or_default(),
            if failed == Some(g.gate.as_str()) { " class=\"hot\"" } else { "" },
            badge(verdict_kind(verdict), verdict),
            gate_value(&g.gate, g.candidate),
            gate_value(&g.gate, g.baseline),
            gate_value(&g.gate, g.limit),
            g.candidate_samples,
            g.baseline_samples,
            g.min_samples,
            e(&g.detail),
            gate = e(&g.gate),
        );
    }
    out.push_str("</table>");
    out
}

fn timeline(entries: &[TimelineEntry]) -> String {
    let mut out = String::from("<ol class=\"timeline\" data-table=\"timeline\">");
    for t in entries {
        let _ = write!(out, "<li><time>{}</time> {}</li>", when(t.at_ms), e(&t.message));
    }
    out.push_str("</ol>");
    out
}

pub fn rollout_list(list: &[Rollout]) -> String {
    if list.is_empty() {
        return "<p class=\"empty\">No rollout yet: <code>outpostctl rollout start MODEL VERSION</code>.</p>"
            .into();
    }
    let mut out = String::from(
        "<table data-table=\"rollouts\"><tr><th>rollout</th><th>model</th><th>strategy</th><th>phase</th>\
         <th>step</th><th>devices moved</th><th>started</th><th>incident</th></tr>",
    );
    for r in list.iter().rev() {
        let _ = write!(
            out,
            "<tr data-rollout=\"{id}\" data-phase=\"{phase}\"><td>{}</td><td>{}@{} <small>from {}</small></td><td>{}</td>\
             <td>{}</td><td>{}/{}</td><td>{}/{}</td><td>{} by {}</td><td>{}</td></tr>",
            link(&format!("/ui/rollouts/{}", seg(&r.id)), &r.id),
            e(&r.spec.model),
            e(&r.spec.version),
            e(&r.baseline),
            e(&r.spec.strategy),
            badge(phase_kind(r.phase), r.phase.as_str()),
            (r.wave + 1).min(r.spec.plan().len()),
            r.spec.plan().len(),
            r.moved.len(),
            r.targets.len(),
            when(r.created_ms),
            e(&r.created_by),
            r.incident
                .as_ref()
                .map(|i| link(&format!("/ui/incidents/{}", seg(i)), i))
                .unwrap_or_else(|| "—".into()),
            id = e(&r.id),
            phase = r.phase.as_str(),
        );
    }
    out.push_str("</table>");
    out
}

fn action_button(viewer: &Viewer, action: &str, label: &str, href: &str, danger: bool) -> String {
    format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\" data-action=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button type=\"submit\"{}>{}</button></form>",
        e(href),
        e(action),
        e(&viewer.csrf),
        if danger { " class=\"danger\"" } else { "" },
        e(label)
    )
}

pub fn rollout(viewer: &Viewer, view: &RolloutView) -> String {
    let r = &view.rollout;
    let now = now_ms();
    let mut out = String::new();
    let _ = write!(
        out,
        "<section class=\"summary\" data-rollout=\"{}\" data-phase=\"{}\"><p>{} <b>{}@{}</b> replacing {} by <b>{}</b> \
         on {} device(s){} — started {} by {}{}.</p>",
        e(&r.id),
        r.phase.as_str(),
        badge(phase_kind(r.phase), r.phase.as_str()),
        e(&r.spec.model),
        e(&r.spec.version),
        e(&r.baseline),
        e(&r.spec.strategy),
        r.targets.len(),
        if r.spec.selector.is_empty() {
            String::new()
        } else {
            let s: Vec<String> = r.spec.selector.iter().map(|(k, v)| format!("{}={}", e(k), e(v))).collect();
            format!(" matching {}", s.join(", "))
        },
        when(r.created_ms),
        e(&r.created_by),
        r.finished_ms.map(|f| format!(", finished {}", when(f))).unwrap_or_default(),
    );
    if let Some(reason) = &r.paused_reason {
        let _ = write!(out, "<p class=\"error\">Paused: {}</p>", e(reason));
    }
    if let Some(i) = &r.incident {
        let _ = write!(out, "<p>Incident: {}</p>", link(&format!("/ui/incidents/{}", seg(i)), i));
    }
    if viewer.may_operate() && r.phase.active() {
        out.push_str("<div class=\"actions\">");
        let base = format!("/ui/rollouts/{}", seg(&r.id));
        if r.phase == Phase::Paused {
            out.push_str(&action_button(viewer, "resume", "Resume", &format!("{base}/resume"), false));
        } else {
            out.push_str(&action_button(viewer, "pause", "Pause", &format!("{base}/pause"), false));
        }
        out.push_str(&action_button(
            viewer,
            "promote",
            "Promote (skip remaining steps)",
            &format!("{base}/promote"),
            false,
        ));
        out.push_str(&action_button(
            viewer,
            "abort-keep",
            "Abort, keep devices as they are",
            &format!("{base}/abort-keep"),
            true,
        ));
        out.push_str(&action_button(
            viewer,
            "abort-revert",
            "Abort and revert",
            &format!("{base}/abort-revert"),
            true,
        ));
        out.push_str("</div>");
    }
    out.push_str("</section>");

    // Steps.
    let plan = r.spec.plan();
    out.push_str("<section><h2>Steps</h2><ol class=\"steps\" data-table=\"steps\">");
    for (i, step) in plan.iter().enumerate() {
        let state = if r.phase == Phase::Succeeded || i < r.wave {
            "done"
        } else if i == r.wave && r.phase.active() {
            "current"
        } else if i == r.wave {
            "stopped"
        } else {
            "pending"
        };
        let text = match step {
            crate::ops::rollout::Step::Wave(p) => {
                format!("wave to {p}% of targets ({} device(s))", r.wave_devices(i).len())
            }
            crate::ops::rollout::Step::Canary(p) => {
                format!("canary answering {p}% of requests on every target")
            }
            crate::ops::rollout::Step::Standby => "standby loaded and validated on every target".into(),
            crate::ops::rollout::Step::Switch => "switch every target".into(),
            crate::ops::rollout::Step::Shadow => "shadow on copies of every target's requests".into(),
        };
        let _ = write!(
            out,
            "<li class=\"{state}\" data-step=\"{}\" data-state=\"{state}\">{} <small>{state}</small></li>",
            i + 1,
            e(&text)
        );
    }
    out.push_str("</ol>");
    let _ = write!(
        out,
        "<p>Devices sent the version: <meter min=\"0\" max=\"{}\" value=\"{}\"></meter> {}/{}{}</p>",
        r.targets.len().max(1),
        r.moved.len(),
        r.moved.len(),
        r.targets.len(),
        if r.skipped.is_empty() { String::new() } else { format!(" ({} skipped)", r.skipped.len()) }
    );
    if let (Some(until), true) = (r.bake_until_ms, r.phase == Phase::Baking) {
        let _ = write!(
            out,
            "<p>Baking until {} ({} s left; {} extension(s) used of {}).</p>",
            when(until),
            until.saturating_sub(now) / 1000,
            r.extensions,
            r.spec.max_extensions
        );
    }
    out.push_str("</section>");

    let _ = write!(
        out,
        "<section><h2>Gates</h2><p>Candidate {} against baseline {} ({}){}.</p>{}</section>",
        e(&r.spec.version),
        e(&r.baseline),
        e(&r.baseline_scope),
        r.evaluated_ms.map(|t| format!(", evaluated {}", when(t))).unwrap_or_default(),
        gates_table(&r.gates, None)
    );

    out.push_str(
        "<section><h2>Devices</h2><table data-table=\"rollout-devices\"><tr><th>device</th><th>wave</th><th>desired</th>\
         <th>actual</th><th>state</th><th>liveness</th><th>candidate slot</th></tr>",
    );
    for d in &view.devices {
        let _ = write!(
            out,
            "<tr data-device=\"{id}\"><td>{id}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td></tr>",
            d.wave,
            e(d.desired.as_deref().unwrap_or("—")),
            e(d.actual.as_deref().unwrap_or("—")),
            e(d.actual_state.as_deref().unwrap_or("—")),
            badge(status_kind(&d.liveness), &d.liveness),
            e(d.candidate.as_deref().unwrap_or("—")),
            if d.skipped { " (skipped)" } else { "" },
            id = e(&d.device),
        );
    }
    out.push_str("</table></section>");
    let _ = write!(out, "<section><h2>Timeline</h2>{}</section>", timeline(&r.timeline));
    out
}

pub fn incident_list(list: &[Incident]) -> String {
    if list.is_empty() {
        return "<p class=\"empty\">No incident: no rollout has been rolled back by a gate or a device.</p>"
            .into();
    }
    let mut out = String::from(
        "<table data-table=\"incidents\"><tr><th>incident</th><th>opened</th><th>model</th><th>gate</th>\
         <th>reason</th><th>status</th></tr>",
    );
    for i in list.iter().rev() {
        let _ = write!(
            out,
            "<tr data-incident=\"{id}\"><td>{}</td><td>{}</td><td>{}@{} → {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            link(&format!("/ui/incidents/{}", seg(&i.id)), &i.id),
            when(i.opened_ms),
            e(&i.model),
            e(&i.version),
            e(&i.baseline),
            i.gate.as_ref().map(|g| format!("<code>{}</code>", e(&g.gate))).unwrap_or_else(|| "—".into()),
            e(&i.reason),
            if i.closed_ms.is_some() { badge("good", "closed") } else { badge("bad", "open") },
            id = e(&i.id),
        );
    }
    out.push_str("</table>");
    out
}

pub fn incident(viewer: &Viewer, i: &Incident) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<section class=\"summary\" data-incident=\"{}\" data-status=\"{}\"><p>{} {}@{} was rolled back to {} \
         by {} — opened {}.</p><p class=\"reason\">{}</p>",
        e(&i.id),
        if i.closed_ms.is_some() { "closed" } else { "open" },
        if i.closed_ms.is_some() { badge("good", "closed") } else { badge("bad", "open") },
        e(&i.model),
        e(&i.version),
        e(&i.baseline),
        link(&format!("/ui/rollouts/{}", seg(&i.rollout)), &i.rollout),
        when(i.opened_ms),
        e(&i.reason),
    );
    if let (Some(at), Some(by)) = (i.closed_ms, &i.closed_by) {
        let _ = write!(out, "<p>Closed {} by {}.</p>", when(at), e(by));
    } else if viewer.may_operate() {
        out.push_str(&action_button(
            viewer,
            "close",
            "Close incident",
            &format!("/ui/incidents/{}/close", seg(&i.id)),
            false,
        ));
    }
    out.push_str("</section>");
    if let Some(g) = &i.gate {
        let _ = write!(
            out,
            "<section><h2>Failed gate</h2><p data-failed-gate=\"{}\"><code>{}</code>: candidate {} vs baseline {} \
             (limit {}) on {} / {} samples.</p></section>",
            e(&g.gate),
            e(&g.gate),
            gate_value(&g.gate, g.candidate),
            gate_value(&g.gate, g.baseline),
            gate_value(&g.gate, g.limit),
            g.candidate_samples,
            g.baseline_samples
        );
    }
    let _ = write!(
        out,
        "<section><h2>Every gate at that moment</h2><p>Baseline: {}.</p>{}</section>",
        e(&i.baseline_scope),
        gates_table(&i.gates, i.gate.as_ref().map(|g| g.gate.as_str()))
    );
    let devices: Vec<String> =
        i.devices_rolled_back.iter().map(|d| format!("<li data-device=\"{0}\">{0}</li>", e(d))).collect();
    let _ = write!(
        out,
        "<section><h2>Devices rolled back ({})</h2><ul class=\"devices\">{}</ul></section>\
         <section><h2>Timeline</h2>{}</section>",
        devices.len(),
        devices.join(""),
        timeline(&i.timeline)
    );
    out
}

#[cfg(test)]
mod tests {
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
        assert!(html.contains("candidate 53.80% vs baseline 98.30% (limit 93.30%) on 119 / 478"), "{html}");
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
            "counts": crate::base::store::Counts::default(), "backlog": {"messages": 0, "bytes": 0, "oldest_age_ms": 0}, "models": [],
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
        assert!(f(None, Some("sleepy")).validate().unwrap_err().contains("status `sleepy`"));
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
