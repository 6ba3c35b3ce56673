//! Rollouts and incidents: lists, a rollout's steps, gates, devices and timeline, an incident's numbers.

#[allow(unused_imports)]
use super::*;
use outpost_shared::protocol::vocab::LoadState;

/// A gate value: milliseconds for latency gates, a percentage otherwise.
pub(super) fn gate_value(gate: &str, v: Option<f64>) -> String {
    let latency = gate.starts_with('p') && gate[1..].starts_with(|c: char| c.is_ascii_digit());
    match v {
        None => "—".into(),
        Some(v) if latency => numbers::ms(v),
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
        let _ = write!(out, "<li><time>{}</time> {}</li>", when(t.at_ms), md(&t.message));
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
            r.spec.strategy,
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
        e(&r.baseline_mix_text()),
        r.spec.strategy,
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
        let _ = write!(out, "<p class=\"error\">Paused: {}</p>", md(reason));
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
    out.push_str(&analysis(r));

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
            d.actual_state.map_or("—", LoadState::as_str),
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

/// Rollout analysis over time, as Argo Rollouts shows it: for every gate, the candidate's and
/// the baseline's value and the limit at each kept evaluation, with each step's start,
/// inconclusive extensions and verdict changes marked.
fn analysis(r: &Rollout) -> String {
    let h = &r.history;
    if h.is_empty() {
        return "<section><h2>Analysis</h2><p class=\"empty\">No gate has been evaluated yet: evaluations appear \
                here as each step bakes.</p></section>"
            .into();
    }
    let starts: Vec<u64> = h.iter().map(|e| e.at_ms).collect();
    let mut markers = Vec::new();
    for (i, e) in h.iter().enumerate() {
        let before = i.checked_sub(1).map(|j| &h[j]);
        if before.is_none_or(|b| b.step != e.step) {
            markers.push(Marker { at_ms: e.at_ms, kind: "step", label: format!("step {}", e.step + 1) });
        } else if before.is_some_and(|b| b.extension != e.extension) {
            markers.push(Marker {
                at_ms: e.at_ms,
                kind: "extension",
                label: format!("extension {}", e.extension),
            });
        }
    }
    let mut gates: Vec<&str> = Vec::new();
    for g in h.iter().flat_map(|e| &e.gates) {
        if !gates.contains(&g.gate.as_str()) {
            gates.push(&g.gate);
        }
    }
    let mut out = format!(
        "<section><h2>Analysis</h2><p>{} evaluations over {}: the candidate against the baseline and the \
         limit it is held to, per gate. Hover a point for its value.</p><div class=\"charts\">",
        h.len(),
        numbers::ms(starts[starts.len() - 1].saturating_sub(starts[0]) as f64)
    );
    for gate in gates {
        let latency = gate.starts_with('p') && gate[1..].starts_with(|c: char| c.is_ascii_digit());
        let scale = if latency { 1.0 } else { 100.0 };
        let point = |f: &dyn Fn(&crate::ops::rollout::GatePoint) -> Option<f64>| -> Vec<Option<f64>> {
            h.iter().map(|e| e.gates.iter().find(|g| g.gate == gate).and_then(f).map(|v| v * scale)).collect()
        };
        let mut gate_markers = markers.clone();
        let verdicts: Vec<Option<&str>> =
            h.iter().map(|e| e.gates.iter().find(|g| g.gate == gate).map(|g| g.verdict.as_str())).collect();
        for i in 1..h.len() {
            if let (Some(a), Some(b)) = (verdicts[i - 1], verdicts[i])
                && a != b
            {
                gate_markers.push(Marker { at_ms: h[i].at_ms, kind: "verdict", label: b.to_owned() });
            }
        }
        let id = format!("gate-{gate}");
        let title = format!("{gate} ({})", if latency { "ms" } else { "%" });
        out.push_str(&line_chart(&Chart {
            id: &id,
            title: &title,
            unit: if latency { "" } else { "%" },
            starts_ms: &starts,
            series: vec![
                Series { name: format!("candidate {}", r.spec.version), points: point(&|g| g.candidate) },
                Series {
                    name: format!("baseline {}", r.baseline_mix_text()),
                    points: point(&|g| g.baseline),
                },
                Series { name: "limit".into(), points: point(&|g| g.limit) },
            ],
            markers: gate_markers,
            ..Chart::default()
        }));
    }
    out.push_str("</div></section>");
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
            md(&i.reason),
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
        md(&i.reason),
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
