//! Server-side SVG charts for the dashboard: time-series line charts with axes, gridlines,
//! a legend, gaps where a bucket has no data, markers for events (a rollout started, an
//! incident opened, a bake extended) and each point's value on hover (an SVG `<title>`). No
//! script, no external library; each series carries its plotted values in `data-values` so a
//! test can compare the picture with the API's numbers.

use std::fmt::Write as _;

/// One line: a value per bucket, `None` where the bucket has no data.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<Option<f64>>,
}

/// An event drawn as a dashed vertical line at its time, labelled.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    pub at_ms: u64,
    /// `rollout`, `incident`, `step`, `extension`, `verdict`: the line's `data-marker` and colour.
    pub kind: &'static str,
    pub label: String,
}

/// A chart over shared time buckets.
#[derive(Debug, Clone, Default)]
pub struct Chart<'a> {
    /// Stable id (`latency`, `drift`, …): the SVG's `data-chart`.
    pub id: &'a str,
    pub title: &'a str,
    /// Appended to y-axis labels (`ms`, `%`).
    pub unit: &'a str,
    /// Bucket start times (unix ms), one per point.
    pub starts_ms: &'a [u64],
    pub series: Vec<Series>,
    /// Fixed top of the y axis (e.g. 100 for percentages); otherwise from the data.
    pub y_max: Option<f64>,
    /// Events inside the chart's span (others are left out).
    pub markers: Vec<Marker>,
    /// Draw each series through buckets without data (for values sampled less often than the
    /// buckets, like drift verdicts), instead of breaking the line.
    pub connect_gaps: bool,
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 24.0;
/// Colour-blind-safe palette (Okabe–Ito).
const COLOURS: [&str; 7] = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"];

pub use crate::monitoring::report::escape;

/// A round step so that about four gridlines cover `0..=max`.
fn nice_step(max: f64) -> f64 {
    let raw = (max / 4.0).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    let residual = raw / magnitude;
    let nice = if residual <= 1.0 {
        1.0
    } else if residual <= 2.0 {
        2.0
    } else if residual <= 2.5 {
        2.5
    } else if residual <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn number(v: f64) -> String {
    crate::base::numbers::decimal(v)
}

/// `text` cut to `max` characters with an ellipsis.
fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(max - 1).collect::<String>())
    }
}

/// A time label (UTC) precise enough for the chart's span.
fn clock(ms: u64, span_ms: u64) -> String {
    let s = ms / 1000;
    let (h, m, sec) = (s % 86_400 / 3600, s % 3600 / 60, s % 60);
    if span_ms < 15 * 60_000 {
        format!("{h:02}:{m:02}:{sec:02}")
    } else if span_ms < 2 * 86_400_000 {
        format!("{h:02}:{m:02}")
    } else {
        let date = crate::models::packaging::utc(s);
        format!("{} {h:02}:{m:02}", &date[5..10])
    }
}

/// The chart as an inline `<svg>` (with a `<figure>` caption), or a sentence when no series
/// has a single point.
pub fn line_chart(c: &Chart<'_>) -> String {
    let id = escape(c.id);
    let title = escape(c.title);
    let has_data = c.series.iter().any(|s| s.points.iter().any(Option::is_some));
    if !has_data || c.starts_ms.is_empty() {
        return format!(
            "<figure class=\"chart\" data-chart=\"{id}\"><figcaption>{title}</figcaption>\
             <p class=\"empty\">No data in this range yet.</p></figure>"
        );
    }
    let data_max = c
        .series
        .iter()
        .flat_map(|s| s.points.iter().flatten())
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let step = nice_step(c.y_max.unwrap_or(data_max).max(data_max).max(1e-9));
    let top = (c.y_max.unwrap_or(0.0).max(data_max) / step).ceil().max(1.0) * step;
    // Legend entries flow left to right and wrap; the plot starts below them.
    let mut legend = Vec::new();
    let (mut lx, mut row) = (LEFT, 0usize);
    for s in &c.series {
        let w = 24.0 + 6.5 * s.name.chars().count() as f64;
        if lx + w > WIDTH - RIGHT && lx > LEFT {
            lx = LEFT;
            row += 1;
        }
        legend.push((lx, 8.0 + 16.0 * row as f64));
        lx += w;
    }
    let extra = 16.0 * row as f64;
    let (top_m, height) = (TOP + extra, HEIGHT + extra);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = height - top_m - BOTTOM;
    let n = c.starts_ms.len();
    let x = |i: usize| LEFT + if n <= 1 { plot_w / 2.0 } else { plot_w * i as f64 / (n - 1) as f64 };
    let y = |v: f64| top_m + plot_h * (1.0 - (v / top).clamp(0.0, 1.0));
    let span = c.starts_ms[n - 1].saturating_sub(c.starts_ms[0]);
    // An event's x: between the points around its time (the points need not be evenly spaced
    // in time, as gate evaluations are not); `None` outside the chart's span.
    let x_at = |ms: u64| -> Option<f64> {
        if n == 1 {
            return (ms == c.starts_ms[0]).then(|| x(0));
        }
        let last = *c.starts_ms.last()?;
        if ms < c.starts_ms[0] || ms > last.saturating_add(span / (n as u64 - 1).max(1)) {
            return None;
        }
        let i = c.starts_ms.partition_point(|&t| t <= ms).saturating_sub(1).min(n - 2);
        let (a, b) = (c.starts_ms[i], c.starts_ms[i + 1]);
        let frac = if b > a { (ms.saturating_sub(a)) as f64 / (b - a) as f64 } else { 0.0 };
        Some(x(i) + (x(i + 1) - x(i)) * frac.min(1.0)).map(|v| v.min(WIDTH - RIGHT))
    };

    let mut svg = String::new();
    let _ = write!(
        svg,
        "<figure class=\"chart\" data-chart=\"{id}\"><figcaption>{title}</figcaption>\
         <svg viewBox=\"0 0 {WIDTH} {height}\" width=\"{WIDTH}\" height=\"{height}\" role=\"img\" \
         aria-label=\"{title}\" data-chart=\"{id}\" data-starts=\"{}\">",
        c.starts_ms.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
    );
    // Gridlines and y labels.
    let mut tick = 0.0;
    while tick <= top + step / 2.0 {
        let ty = y(tick);
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{ty:.1}\" y2=\"{ty:.1}\" stroke=\"#e3e3e3\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"11\" fill=\"#555\">{}{}</text>",
            WIDTH - RIGHT,
            LEFT - 6.0,
            ty + 4.0,
            number(tick),
            escape(c.unit)
        );
        tick += step;
    }
    // X labels: first, last and two between.
    let mut shown = vec![0, n - 1, (n - 1) / 3, 2 * (n - 1) / 3];
    shown.sort_unstable();
    shown.dedup();
    for i in shown {
        let anchor = if i == 0 {
            "start"
        } else if i == n - 1 {
            "end"
        } else {
            "middle"
        };
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"{anchor}\" font-size=\"11\" fill=\"#555\">{}</text>",
            x(i),
            height - 6.0,
            clock(c.starts_ms[i], span)
        );
    }
    // Markers under the series: a dashed line and a short label at the top.
    for m in &c.markers {
        let Some(mx) = x_at(m.at_ms) else { continue };
        let colour = match m.kind {
            "incident" | "verdict" => "#D55E00",
            "extension" => "#E69F00",
            _ => "#777",
        };
        let _ = write!(
            svg,
            "<g class=\"marker\" data-marker=\"{}\" data-at=\"{}\"><title>{} at {}</title>\
             <line x1=\"{mx:.1}\" x2=\"{mx:.1}\" y1=\"{top_m:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" \
             stroke-dasharray=\"4 3\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"{colour}\">{}</text></g>",
            escape(m.kind),
            m.at_ms,
            escape(&m.label),
            clock(m.at_ms, span.max(1)),
            top_m + plot_h,
            mx + 3.0,
            top_m + 10.0,
            escape(&short(&m.label, 24))
        );
    }
    // Series: one path with a move at every gap (unless gaps are bridged); a dot for isolated
    // points; every point carries its value for hovering.
    for (k, s) in c.series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let values: Vec<String> =
            s.points.iter().map(|p| p.map(|v| format!("{v}")).unwrap_or_default()).collect();
        let mut d = String::new();
        let mut dots = String::new();
        let mut hovers = String::new();
        let mut pen_down = false;
        for (i, p) in s.points.iter().enumerate().take(n) {
            match p.filter(|v| v.is_finite()) {
                Some(v) => {
                    let _ = write!(d, "{}{:.1},{:.1} ", if pen_down { "L" } else { "M" }, x(i), y(v));
                    let next = if c.connect_gaps {
                        s.points.iter().skip(i + 1).flatten().find(|v| v.is_finite())
                    } else {
                        s.points.get(i + 1).and_then(Option::as_ref).filter(|v| v.is_finite())
                    };
                    if !pen_down && next.is_none() {
                        let _ = write!(
                            dots,
                            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{colour}\"/>",
                            x(i),
                            y(v)
                        );
                    }
                    let _ = write!(
                        hovers,
                        "<circle class=\"hover\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"5\" fill=\"transparent\">\
                         <title>{}: {}{} at {}</title></circle>",
                        x(i),
                        y(v),
                        escape(&s.name),
                        number(v),
                        escape(c.unit),
                        clock(c.starts_ms[i], span.max(1))
                    );
                    pen_down = true;
                }
                None => pen_down = pen_down && c.connect_gaps,
            }
        }
        let _ = write!(
            svg,
            "<g class=\"series\" data-series=\"{}\" data-values=\"{}\"><title>{}</title>\
             <path d=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>{dots}{hovers}</g>",
            escape(&s.name),
            values.join(","),
            escape(&s.name),
            d.trim_end()
        );
    }
    for (k, (s, (lx, ly))) in c.series.iter().zip(legend).enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let _ = write!(
            svg,
            "<rect x=\"{lx:.1}\" y=\"{ly:.1}\" width=\"10\" height=\"10\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#222\">{}</text>",
            lx + 14.0,
            ly + 9.0,
            escape(&s.name)
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(series: Vec<Series>, y_max: Option<f64>) -> String {
        let starts = [60_000, 120_000, 180_000, 240_000];
        line_chart(&Chart {
            id: "t",
            title: "Test <chart>",
            unit: "%",
            starts_ms: &starts,
            series,
            y_max,
            ..Chart::default()
        })
    }

    #[test]
    fn a_series_with_a_gap_is_drawn_in_two_strokes_and_keeps_its_values() {
        let svg = chart(
            vec![Series { name: "a".into(), points: vec![Some(1.0), Some(2.0), None, Some(4.0)] }],
            None,
        );
        assert!(svg.contains("data-values=\"1,2,,4\""), "{svg}");
        let path = svg.split("<path d=\"").nth(1).unwrap().split('"').next().unwrap();
        assert_eq!(path.matches('M').count(), 2, "{path}");
        assert_eq!(path.matches('L').count(), 1, "{path}");
        // The lone last point gets a dot; the title is escaped.
        assert_eq!(svg.matches("<circle cx").count(), 1);
        assert!(svg.contains("Test &lt;chart&gt;") && !svg.contains("<chart>"));
        // Every point tells its value on hover.
        assert_eq!(svg.matches("<circle class=\"hover\"").count(), 3);
        assert!(svg.contains("<title>a: 2% at 00:02:00</title>"), "{svg}");
    }

    #[test]
    fn bridged_gaps_are_one_stroke() {
        let starts = [60_000, 120_000, 180_000, 240_000];
        let svg = line_chart(&Chart {
            id: "t",
            starts_ms: &starts,
            series: vec![Series { name: "a".into(), points: vec![Some(1.0), None, None, Some(4.0)] }],
            connect_gaps: true,
            ..Chart::default()
        });
        let path = svg.split("<path d=\"").nth(1).unwrap().split('"').next().unwrap();
        assert_eq!((path.matches('M').count(), path.matches('L').count()), (1, 1), "{path}");
    }

    #[test]
    fn markers_sit_at_their_time_and_outside_ones_are_left_out() {
        let starts = [0, 60_000, 120_000, 180_000];
        let marker = |at_ms, kind, label: &str| Marker { at_ms, kind, label: label.into() };
        let svg = line_chart(&Chart {
            id: "t",
            starts_ms: &starts,
            series: vec![Series { name: "a".into(), points: vec![Some(1.0); 4] }],
            markers: vec![
                marker(90_000, "rollout", "rollout 3 <started>"),
                marker(10_000_000, "incident", "later"),
            ],
            ..Chart::default()
        });
        assert_eq!(svg.matches("class=\"marker\"").count(), 1, "{svg}");
        assert!(svg.contains("data-marker=\"rollout\" data-at=\"90000\""), "{svg}");
        assert!(svg.contains("rollout 3 &lt;started&gt;") && !svg.contains("<started>"), "{svg}");
        // Halfway between the second and third points.
        let x: f64 = svg.split("<line x1=\"").last().unwrap().split('"').next().unwrap().parse().unwrap();
        let plot = WIDTH - LEFT - RIGHT;
        assert!((x - (LEFT + plot * 1.5 / 3.0)).abs() < 0.2, "{x}");
    }

    #[test]
    fn higher_values_are_drawn_higher_and_the_axis_covers_the_maximum() {
        let svg =
            chart(vec![Series { name: "a".into(), points: vec![Some(0.0), Some(37.0), None, None] }], None);
        let path = svg.split("<path d=\"").nth(1).unwrap().split('"').next().unwrap();
        let ys: Vec<f64> =
            path.split_whitespace().map(|p| p[1..].split(',').nth(1).unwrap().parse().unwrap()).collect();
        assert!(ys[1] < ys[0], "{path}");
        assert!((ys[1] - TOP).abs() < plot_tolerance(), "37 sits at or below the top: {path}");
        assert!(svg.contains(">40%</text>"), "axis reaches 40: {svg}");
    }

    fn plot_tolerance() -> f64 {
        (HEIGHT - TOP - BOTTOM) * 0.1
    }

    #[test]
    fn a_fixed_axis_top_is_kept_and_no_data_says_so() {
        let svg =
            chart(vec![Series { name: "a".into(), points: vec![Some(5.0), None, None, None] }], Some(100.0));
        assert!(svg.contains(">100%</text>"), "{svg}");
        let empty = chart(vec![Series { name: "a".into(), points: vec![None; 4] }], Some(100.0));
        assert!(empty.contains("No data") && !empty.contains("<svg"), "{empty}");
    }

    #[test]
    fn many_series_wrap_their_legend_and_time_labels_fit_the_span() {
        let series = (0..8)
            .map(|i| Series { name: format!("feature_number_{i}"), points: vec![Some(1.0); 4] })
            .collect();
        let svg = chart(series, None);
        let rows: std::collections::BTreeSet<&str> = svg
            .split("<rect ")
            .skip(1)
            .map(|r| r.split("y=\"").nth(1).unwrap().split('"').next().unwrap())
            .collect();
        assert!(rows.len() >= 2, "{rows:?}");
        assert!(svg.contains(">00:01:00</text>"), "a three-minute chart shows seconds: {svg}");
        assert_eq!(clock(3_600_000, 3_600_000), "01:00");
        assert_eq!(clock(86_400_000 * 3, 86_400_000 * 7), "01-04 00:00");
    }

    #[test]
    fn nice_steps_are_round() {
        assert_eq!(nice_step(100.0), 25.0);
        assert_eq!(nice_step(7.0), 2.0);
        assert_eq!(nice_step(0.9), 0.25);
    }
}
