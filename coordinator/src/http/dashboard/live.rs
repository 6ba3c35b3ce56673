//! Live updates: the `/ui/events` stream of Server-Sent Events that tells an open page when
//! what it shows may have changed, and the state generation it watches.

#[allow(unused_imports)]
use super::*;

/// How long one live-update stream lasts before the browser opens the next (it reconnects on
/// its own): no connection outlives a session by much, and none holds a shutdown for long.
const STREAM_LIFETIME: Duration = Duration::from_secs(300);

/// A number that changes whenever what the pages show may have: reports and presence stored,
/// a rollout record written, an audited mutation (a deploy, a revocation, a stage), alerts
/// firing. Cheap enough to read every second per open page.
fn generation(app: &AppState) -> u64 {
    use prometheus::core::Collector as _;
    let m = &app.metrics;
    let firing: f64 = m
        .alerts_firing
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|metric| metric.get_gauge().get_value())
        .sum();
    m.ingest.with_label_values(&["stored"]).get()
        + m.ingest.with_label_values(&["presence"]).get()
        + m.rollout_updates.get()
        + app.audit.head_seq()
        + firing as u64 * 1_000_003
}

/// Live updates as Server-Sent Events: `change` when [`generation`] moved (at most one per
/// [`REFRESH_SECS`]); the page then fetches itself again. `signed-out` when the session ends,
/// and the stream closes after [`STREAM_LIFETIME`] (the browser reconnects by itself).
pub(super) async fn events(State(d): Dash, headers: HeaderMap) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    if let Err(r) = signed_in(&d, &headers, "/ui", Role::Viewer) {
        return *r;
    }
    let Some(session) = session_id(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    struct Watch {
        d: Arc<Dashboard>,
        session: String,
        seen: u64,
        sent: Instant,
        started: Instant,
        done: bool,
    }
    let start = Watch {
        seen: generation(&d.app),
        d,
        session,
        sent: Instant::now(),
        started: Instant::now(),
        done: false,
    };
    let stream = futures_util::stream::unfold(start, |mut w| async move {
        loop {
            if w.done || w.started.elapsed() > STREAM_LIFETIME {
                return None;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            // A store that cannot be read ends nothing: the next page load says why.
            if matches!(w.d.app.sessions.get(&w.session, now_ms()), Ok(None)) {
                w.done = true;
                return Some((
                    Ok::<_, std::convert::Infallible>(Event::default().event("signed-out").data("")),
                    w,
                ));
            }
            let now = generation(&w.d.app);
            if now != w.seen && w.sent.elapsed() >= Duration::from_secs(REFRESH_SECS) {
                w.seen = now;
                w.sent = Instant::now();
                return Some((Ok(Event::default().event("change").data(now.to_string())), w));
            }
        }
    });
    let mut response =
        Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
