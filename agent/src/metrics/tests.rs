//! Unit tests of the agent's metrics.
use super::*;

#[test]
fn renders_text_format_with_moving_counters_and_system_figures() {
    let metrics = Metrics::new().unwrap();
    metrics.requests.with_label_values(&["bc", "1.0.0", Outcome::Ok.label()]).inc();
    metrics.set_model_state("bc", "1.0.0", "ready");
    let text = metrics.render().unwrap();
    assert!(
        text.contains("outpost_agent_requests_total{model=\"bc\",outcome=\"ok\",version=\"1.0.0\"} 1"),
        "{text}"
    );
    assert!(text.contains("outpost_agent_model_state{model=\"bc\",state=\"ready\",version=\"1.0.0\"} 1"));
    assert!(text.contains("# TYPE process_resident_memory_bytes gauge"));
    let rss_line = text.lines().find(|l| l.starts_with("process_resident_memory_bytes ")).unwrap();
    let rss: f64 = rss_line.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(rss > 0.0, "{rss_line}");
}
