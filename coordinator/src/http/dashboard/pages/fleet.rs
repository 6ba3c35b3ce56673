//! The fleet page: tiles, what needs attention, devices by label and liveness, the device table.

#[allow(unused_imports)]
use super::*;
use outpost_shared::protocol::vocab::{LoadState, Slot};

/// Which devices the fleet table lists: `q` matches a device id or a `key=value` label (a
/// substring), `status` a liveness.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFilter {
    pub q: Option<String>,
    pub status: Option<String>,
}

/// What is wrong with a fleet filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("the search text `q` is longer than 128 characters")]
    QueryTooLong,
    #[error("status `{0}`: use one of online, stale, offline, never_seen")]
    UnknownStatus(String),
}

/// Liveness values a filter may name.
pub const STATUSES: [&str; 4] = ["online", "stale", "offline", "never_seen"];
/// Rows the fleet table lists at most (the counts above it cover every device).
pub(super) const MAX_ROWS: usize = 500;

impl FleetFilter {
    pub fn validate(&self) -> Result<(), FilterError> {
        if self.q.as_ref().is_some_and(|q| q.len() > 128) {
            return Err(FilterError::QueryTooLong);
        }
        if let Some(s) = self.status.as_deref().filter(|s| !s.is_empty() && !STATUSES.contains(s)) {
            return Err(FilterError::UnknownStatus(s.to_owned()));
        }
        Ok(())
    }

    pub(super) fn matches(&self, d: &DeviceRecord, status: &str) -> bool {
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
        for d in app.devices.all().map_err(ApiError::from)? {
            let status = crate::fleet::liveness::Liveness::of(&d, &app.config.fleet, now).as_str();
            devices.push((d, status, None));
        }
        let (listed, matching) = Overview::select(&devices, &filter);
        for &i in &listed {
            devices[i].2 = app.desired.get(&devices[i].0.id).map_err(ApiError::from)?;
        }
        Ok(Overview {
            now,
            filter,
            devices,
            listed,
            matching,
            rollouts: app.rollouts.list().map_err(ApiError::from)?,
            incidents: app.rollouts.incidents().map_err(ApiError::from)?,
            alerts: app.alerts.list().map_err(ApiError::from)?,
        })
    }

    /// The rows the filter lists — the ones needing attention first, then by id, at most
    /// [`MAX_ROWS`] — and how many devices match in all.
    pub(super) fn select(
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
                    md(r.paused_reason.as_deref().unwrap_or(r.spec.strategy.as_str()))
                );
            }
            for i in &open {
                let _ = write!(
                    out,
                    "<li>{} {} {}</li>",
                    badge("bad", "incident"),
                    link(&format!("/ui/incidents/{}", seg(&i.id)), &i.id),
                    md(&i.reason)
                );
            }
            for a in &firing {
                let _ = write!(
                    out,
                    "<li data-alert=\"{}\">{} {} <small>{}, since {}</small></li>",
                    e(a.labels.get("alertname").map_or("", String::as_str)),
                    badge("warn", a.labels.get("alertname").map_or("alert", String::as_str)),
                    md(&a.summary),
                    numbers::count(a.devices.len(), "device"),
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
        let mut running: BTreeMap<(String, String, Slot), [usize; 3]> = BTreeMap::new();
        for (d, _, _) in &self.devices {
            for m in &d.models {
                let cell = running.entry((m.name.clone(), m.version.clone(), m.slot)).or_default();
                cell[match m.state {
                    LoadState::Ready => 0,
                    LoadState::Loading => 1,
                    LoadState::Failed => 2,
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
                    s = slot,
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
                 <th>desired</th><th>backlog</th><th>last seen</th><th>agent</th><th>at rest</th><th>drift now</th></tr>",
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
                            m.slot,
                            m.state,
                            e(&m.name),
                            e(&m.version),
                            m.slot,
                            m.state
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
                // Encryption at rest, as the agent said at its start: `off` stands out.
                let (at_rest_kind, at_rest_cell) = match d.at_rest.as_deref() {
                    None => ("unknown", "?".to_owned()),
                    Some(s) if s.starts_with("on") => {
                        ("on", format!("<span title=\"{}\">encrypted</span>", e(s)))
                    }
                    Some(s) => ("off", format!("{} <span title=\"{}\"></span>", badge("warn", "off"), e(s))),
                };
                let _ = write!(
                    out,
                    "<tr data-device=\"{id}\" data-status=\"{status}\"><td>{id}</td><td>{}</td><td>{}</td><td>{}</td>\
                     <td>{}</td><td data-backlog=\"{}\">{} msg{}</td><td>{}</td><td>{}</td><td data-at-rest=\"{}\">{}</td>\
                     <td data-drifting=\"{}\">{}</td></tr>",
                    labels.join(" "),
                    badge(status_kind(status), status)
                        + &d.control_stale.as_ref().map_or(String::new(), |s| {
                            format!(
                                " <span data-control=\"stale\" title=\"desired state revision {} expired; nothing newer reached the device\">{}</span>",
                                s.revision,
                                badge("bad", "control stale")
                            )
                        }),
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
                    e(d.agent_version.as_deref().unwrap_or("?"))
                        + &d.clock_skew_ms.filter(|ms| ms.abs() >= 60_000).map_or(String::new(), |ms| {
                            let side = if ms > 0 { "behind" } else { "ahead" };
                            format!(
                                " <span data-clock-skew-ms=\"{ms}\">{}</span>",
                                badge("warn", &format!("clock {} s {side}", (ms.abs() + 500) / 1000))
                            )
                        }),
                    at_rest_kind,
                    at_rest_cell,
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
