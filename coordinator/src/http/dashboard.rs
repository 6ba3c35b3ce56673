//! The dashboard: HTML pages under `/ui`, served by the coordinator beside its API.
//!
//! - **Auth** is the API's: an operator signs in with an API token (`POST /ui/login`); the
//!   coordinator stores a session ([`sessions`]: the token's hash, never the token) and sets an
//!   `HttpOnly`, `SameSite=Strict` cookie holding only a random session id. Sessions are in the
//!   store, so a restart (or, on PostgreSQL, another replica) does not sign anyone out. Every page
//!   re-checks the token's hash against [`crate::http::auth::Auth`], so a revoked token ends its
//!   sessions at once and the rate limit applies. The cookie opens `/ui` only; `/api/v1` still wants a bearer header.
//! - **Read-only for viewers.** Buttons that change something (pause, resume, promote, abort a
//!   rollout; close an incident) are rendered for operators and admins only, and their POST
//!   handlers check the role again and a per-session CSRF token before acting; every such
//!   action goes through the same code as the API and is audited.
//! - **Pages** ([`pages`]): fleet overview, models and versions (with their cards), monitoring
//!   charts (latency, errors, accuracy, traffic, per-feature drift over time, SLOs), rollouts
//!   with their gates and evidence, incidents with timelines.
//! - **Charts** are SVG drawn on the server ([`charts`]); the only script is our own
//!   `dashboard.js`, which re-fetches the page every few seconds and swaps its `<main>`
//!   (live updates without a CDN, a bundler or another project's code). A strict
//!   Content-Security-Policy allows nothing but the coordinator's own files.

pub mod charts;
mod live;
mod pages;
pub mod sessions;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::base::store::now_ms;
use crate::http::api::registry::blocking;
use crate::http::api::{ApiError, AppState};
use crate::http::auth::{Denied, Principal, Role};

/// The session cookie's name.
pub const COOKIE: &str = "outpost_session";
/// How long a sign-in lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The pages' live-update period, in seconds (read by `dashboard.js` from the page).
const REFRESH_SECS: u64 = 5;

const CSS: &str = include_str!("dashboard/dashboard.css");
const JS: &str = include_str!("dashboard/dashboard.js");

/// The dashboard's state: the API's (its sessions are [`AppState::sessions`]).
pub struct Dashboard {
    app: Arc<AppState>,
}

type Dash = State<Arc<Dashboard>>;

/// Who is looking at a page.
pub struct Viewer {
    pub principal: Principal,
    pub csrf: String,
}

impl Viewer {
    pub fn may_operate(&self) -> bool {
        self.principal.role >= Role::Operator
    }
}

/// The `/ui` routes (merged into the API's router).
pub fn router(app: Arc<AppState>) -> Router {
    let dash = Arc::new(Dashboard { app });
    Router::new()
        .route("/ui", get(overview))
        .route("/ui/", get(overview))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/models", get(models))
        .route("/ui/models/{name}", get(model))
        .route("/ui/models/{name}/versions/{version}/card", get(card))
        .route("/ui/rollouts", get(rollouts))
        .route("/ui/rollouts/{id}", get(rollout))
        .route("/ui/rollouts/{id}/{action}", post(rollout_action))
        .route("/ui/incidents", get(incidents))
        .route("/ui/incidents/{id}", get(incident))
        .route("/ui/incidents/{id}/close", post(close_incident))
        .route("/ui/events", get(live::events))
        .route("/ui/static/dashboard.css", get(|| async { asset("text/css; charset=utf-8", CSS) }))
        .route("/ui/static/dashboard.js", get(|| async { asset("text/javascript; charset=utf-8", JS) }))
        .layer(DefaultBodyLimit::max(8 * 1024))
        .with_state(dash)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// Security headers every page carries. `card` pages carry the card's own inline styles.
fn html(status: StatusCode, body: String, inline_styles: bool) -> Response {
    let csp = if inline_styles {
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; form-action 'none'"
    } else {
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
         frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    };
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn see_other(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn error_page(status: StatusCode, message: &str) -> Response {
    html(status, pages::error(status, message), false)
}

fn api_error(e: ApiError) -> Response {
    error_page(e.0, &e.1)
}

/// Why a request may not go on: the response to send instead (boxed: it is large).
type Refusal = Box<Response>;

fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Only same-site paths under `/ui` may be a sign-in's destination.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/ui") && !n.contains("//") && !n.contains('\\') && n.len() < 512 => {
            n.to_owned()
        }
        _ => "/ui".to_owned(),
    }
}

/// The signed-in viewer with at least `needs`, or the response that says why not (a page
/// GET without a session is sent to sign in).
fn signed_in(d: &Dashboard, headers: &HeaderMap, path: &str, needs: Role) -> Result<Viewer, Refusal> {
    let session = match session_id(headers).map(|id| d.app.sessions.get(&id, now_ms())) {
        Some(Ok(Some(session))) => session,
        Some(Err(e)) => {
            tracing::error!(error = %e, "the dashboard's sessions cannot be read: answering 503");
            return Err(Box::new(error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the coordinator cannot read its sessions right now (its store is unavailable); retry shortly",
            )));
        }
        None | Some(Ok(None)) => {
            return Err(Box::new(see_other(&format!("/ui/login?next={}", urlencode(path)))));
        }
    };
    match d.app.auth.check_hash(&session.token_hash, needs) {
        Ok(principal) => Ok(Viewer { principal, csrf: session.csrf }),
        Err(Denied::Unauthenticated(_)) => {
            Err(Box::new(see_other(&format!("/ui/login?next={}&expired=1", urlencode(path)))))
        }
        Err(Denied::Forbidden(m)) => {
            d.app.metrics.api_denied.with_label_values(&["403"]).inc();
            Err(Box::new(error_page(StatusCode::FORBIDDEN, &m)))
        }
        Err(Denied::Unavailable(m)) => Err(Box::new(error_page(StatusCode::SERVICE_UNAVAILABLE, &m))),
        Err(Denied::RateLimited(secs)) => Err(Box::new(error_page(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("rate limit exceeded for this token; retry in {secs} s"),
        ))),
    }
}

/// A path for a `next=` parameter: encoded, but its slashes kept readable.
fn urlencode(text: &str) -> String {
    pages::percent_encode(text, b"/")
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    next: Option<String>,
    expired: Option<u8>,
}

async fn login_page(query: Result<Query<LoginQuery>, QueryRejection>) -> Response {
    let Ok(Query(q)) = query else {
        return html(StatusCode::OK, pages::login(&safe_next(None), None), false);
    };
    let note = q.expired.map(|_| "Your token is no longer valid (revoked or unknown); sign in again.");
    html(StatusCode::OK, pages::login(&safe_next(q.next.as_deref()), note), false)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

async fn login(
    State(d): Dash,
    peer: Option<axum::Extension<outpost_shared::front::Peer>>,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    // The API's per-address throttle covers sign-in too: guessing tokens here is guessing them.
    let source = peer.map(|p| p.0.0.ip());
    let limit = d.app.config.api.failed_auth_per_minute;
    if let Some((failures, wait)) = source.and_then(|ip| d.app.failed_auth.throttled(ip, limit)) {
        d.app.metrics.auth_throttled.with_label_values(&["failed_auth"]).inc();
        d.app.metrics.api_denied.with_label_values(&["429"]).inc();
        let detail = format!("{failures} failed authentications from this address this minute");
        crate::http::denials::audit_sampled(
            &d.app,
            "-",
            "-",
            "auth.throttled",
            "POST /ui/login",
            "refused",
            &detail,
        )
        .await;
        let note = format!("Too many failed sign-ins from this address; retry in {wait} s.");
        let mut response = html(StatusCode::TOO_MANY_REQUESTS, pages::login("/ui", Some(&note)), false);
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return response;
    }
    let form = match form {
        Ok(Form(f)) => f,
        Err(e) => {
            // 413 for a body over the limit, 400 (or 415) for anything else.
            return html(
                e.status(),
                pages::login("/ui", Some(&format!("The sign-in form was not understood: {}", e.body_text()))),
                false,
            );
        }
    };
    let next = safe_next(form.next.as_deref());
    let token = form.token.trim().to_owned();
    if token.is_empty() || token.len() > 512 {
        return html(StatusCode::BAD_REQUEST, pages::login(&next, Some("Paste an API token.")), false);
    }
    match d.app.auth.check(Some(&format!("Bearer {token}")), Role::Viewer) {
        Ok(principal) => {
            let sessions = d.app.sessions.clone();
            let hash = principal.token_hash.clone();
            let ttl = SESSION_TTL.as_millis() as u64;
            let started = tokio::task::spawn_blocking(move || sessions.start(&hash, now_ms(), ttl)).await;
            let id = match started {
                Ok(Ok((id, _))) => id,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "could not start a dashboard session");
                    return error_page(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "could not start a session: the coordinator's store is unavailable; retry shortly",
                    );
                }
                Err(_) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, "could not start a session"),
            };
            tracing::info!(user = principal.name, role = principal.role.as_str(), "dashboard sign-in");
            let secure = if d.app.api_ca_pem.is_some() { "; Secure" } else { "" };
            let mut r = see_other(&next);
            let cookie = format!(
                "{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
                SESSION_TTL.as_secs()
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(Denied::RateLimited(secs)) => html(
            StatusCode::TOO_MANY_REQUESTS,
            pages::login(&next, Some(&format!("Too many requests with this token; retry in {secs} s."))),
            false,
        ),
        Err(Denied::Unavailable(m)) => {
            html(StatusCode::SERVICE_UNAVAILABLE, pages::login(&next, Some(&m)), false)
        }
        Err(Denied::Unauthenticated(m) | Denied::Forbidden(m)) => {
            d.app.metrics.api_denied.with_label_values(&["401"]).inc();
            if let Some(ip) = source {
                d.app.failed_auth.failed(ip);
            }
            crate::http::denials::audit_sampled(
                &d.app,
                "-",
                "-",
                "auth.denied",
                "POST /ui/login",
                "refused",
                "401",
            )
            .await;
            tracing::warn!("dashboard sign-in refused: {m}");
            html(StatusCode::UNAUTHORIZED, pages::login(&next, Some(&format!("Not signed in: {m}."))), false)
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CsrfForm {
    csrf: String,
}

/// Checks a mutating form: a live session with at least `needs`, and its CSRF secret.
fn checked_form(
    d: &Dashboard,
    headers: &HeaderMap,
    path: &str,
    needs: Role,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Viewer, Refusal> {
    let viewer = signed_in(d, headers, path, needs)?;
    let form = match form {
        Ok(Form(form)) => form,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(Box::new(error_page(e.status(), "the form is larger than 8 KiB")));
        }
        Err(_) => {
            return Err(Box::new(error_page(
                StatusCode::BAD_REQUEST,
                "the form is missing its `csrf` field",
            )));
        }
    };
    // Digests compared, so the comparison's timing tells nothing about the secret.
    if crate::http::api::sha256(form.csrf.as_bytes()) != crate::http::api::sha256(viewer.csrf.as_bytes()) {
        return Err(Box::new(error_page(
            StatusCode::FORBIDDEN,
            "the form's CSRF token does not match this session; reload the page and try again",
        )));
    }
    Ok(viewer)
}

async fn logout(State(d): Dash, headers: HeaderMap, form: Result<Form<CsrfForm>, FormRejection>) -> Response {
    if let Err(r) = checked_form(&d, &headers, "/ui", Role::Viewer, form) {
        return *r;
    }
    if let Some(id) = session_id(&headers)
        && let Err(e) = d.app.sessions.close(&id)
    {
        tracing::error!(error = %e, "could not end a dashboard session");
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "could not sign out: the coordinator's store is unavailable; retry shortly",
        );
    }
    let mut r = see_other("/ui/login");
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("outpost_session=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

/// Renders a page for a signed-in viewer from data gathered off the async threads.
async fn page<T: Send + 'static>(
    d: Arc<Dashboard>,
    headers: &HeaderMap,
    path: &str,
    gather: impl FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
    render: impl FnOnce(&Viewer, T) -> (String, String),
) -> Response {
    let viewer = match signed_in(&d, headers, path, Role::Viewer) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let app = Arc::clone(&d.app);
    let data = match blocking(move || gather(&app)).await {
        Ok(Ok(data)) => data,
        Ok(Err(e)) | Err(e) => return api_error(e),
    };
    let (title, body) = render(&viewer, data);
    html(StatusCode::OK, pages::layout(&title, path, &viewer, REFRESH_SECS, &body), false)
}

async fn overview(
    State(d): Dash,
    headers: HeaderMap,
    query: Result<Query<pages::FleetFilter>, QueryRejection>,
) -> Response {
    let filter = match query {
        Ok(Query(f)) => f,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &format!("fleet query: {}", e.body_text())),
    };
    if let Err(m) = filter.validate() {
        return error_page(StatusCode::BAD_REQUEST, &m.to_string());
    }
    let path = format!("/ui{}", filter.query());
    page(
        d,
        &headers,
        &path,
        move |app| pages::Overview::gather(app, filter),
        |_, data| ("Fleet".into(), data.render()),
    )
    .await
}

async fn models(State(d): Dash, headers: HeaderMap) -> Response {
    page(d, &headers, "/ui/models", pages::ModelList::gather, |_, data| ("Models".into(), data.render()))
        .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeQuery {
    range: Option<String>,
}

async fn model(
    State(d): Dash,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<Query<RangeQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error_page(StatusCode::BAD_REQUEST, "unknown query parameter: use `?range=`");
    };
    let range = q.range.unwrap_or_else(|| "auto".into());
    let Some(range_ms) = pages::parse_range(&range) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            &format!("range `{range}`: use one of {}", pages::RANGES.join(", ")),
        );
    };
    let path = format!("/ui/models/{}?range={}", urlencode(&name), urlencode(&range));
    let now = now_ms();
    page(
        d,
        &headers,
        &path,
        move |app| pages::ModelPage::gather(app, &name, range_ms, now),
        move |_, data| (format!("Model {}", data.name), data.render(&range)),
    )
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CardQuery {
    format: Option<String>,
}

async fn card(
    State(d): Dash,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
    query: Result<Query<CardQuery>, QueryRejection>,
) -> Response {
    let path = format!("/ui/models/{}/versions/{}/card", urlencode(&name), urlencode(&version));
    if let Err(r) = signed_in(&d, &headers, &path, Role::Viewer) {
        return *r;
    }
    let Ok(Query(q)) = query else {
        return error_page(StatusCode::BAD_REQUEST, "unknown query parameter: use `?format=md` or none");
    };
    let markdown = match q.format.as_deref() {
        None | Some("html") => false,
        Some("md") => true,
        Some(other) => {
            return error_page(StatusCode::BAD_REQUEST, &format!("format `{other}`: use html or md"));
        }
    };
    let file = format!("{name}-{version}-card.md");
    match crate::http::api::monitoring::card(&d.app, name, version, !markdown).await {
        Ok(body) if markdown => {
            let disposition = format!("attachment; filename=\"{}\"", file.replace(['"', '\\'], "_"));
            let mut r = ([(header::CONTENT_TYPE, "text/markdown; charset=utf-8")], body).into_response();
            if let Ok(v) = HeaderValue::from_str(&disposition) {
                r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
            }
            r
        }
        Ok(body) => html(StatusCode::OK, body, true),
        Err(e) => api_error(e),
    }
}

async fn rollouts(State(d): Dash, headers: HeaderMap) -> Response {
    page(
        d,
        &headers,
        "/ui/rollouts",
        |app| app.rollouts.list().map_err(ApiError::from),
        |_, list| ("Rollouts".into(), pages::rollout_list(&list)),
    )
    .await
}

async fn rollout(State(d): Dash, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let path = format!("/ui/rollouts/{}", urlencode(&id));
    page(
        d,
        &headers,
        &path,
        move |app| {
            let r = app
                .rollouts
                .get(&id)
                .map_err(ApiError::from)?
                .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no rollout `{id}`")))?;
            app.rollouts.view(r).map_err(ApiError::from)
        },
        |v, view| (format!("Rollout {}", view.rollout.id), pages::rollout(v, &view)),
    )
    .await
}

async fn rollout_action(
    State(d): Dash,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let back = format!("/ui/rollouts/{}", urlencode(&id));
    let viewer = match checked_form(&d, &headers, &back, Role::Operator, form) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    match crate::http::api::rollout::perform(&d.app, &viewer.principal, &id, &action).await {
        Ok(_) => see_other(&back),
        Err(e) => api_error(e),
    }
}

async fn incidents(State(d): Dash, headers: HeaderMap) -> Response {
    page(
        d,
        &headers,
        "/ui/incidents",
        |app| app.rollouts.incidents().map_err(ApiError::from),
        |_, list| ("Incidents".into(), pages::incident_list(&list)),
    )
    .await
}

async fn incident(State(d): Dash, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let path = format!("/ui/incidents/{}", urlencode(&id));
    page(
        d,
        &headers,
        &path,
        move |app| {
            app.rollouts
                .repo()
                .incident(&id)
                .map_err(ApiError::from)?
                .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no incident `{id}`")))
        },
        |v, i| (format!("Incident {}", i.id), pages::incident(v, &i)),
    )
    .await
}

async fn close_incident(
    State(d): Dash,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let back = format!("/ui/incidents/{}", urlencode(&id));
    let viewer = match checked_form(&d, &headers, &back, Role::Operator, form) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    match crate::http::api::rollout::close(&d.app, &viewer.principal, &id).await {
        Ok(_) => see_other(&back),
        Err(e) => api_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dashboard_paths_are_sign_in_destinations() {
        assert_eq!(safe_next(Some("/ui/rollouts/r-000001")), "/ui/rollouts/r-000001");
        for bad in ["https://evil.example/ui", "//evil.example/ui", "/api/v1/tokens", "/ui//evil", "/ui\\x"] {
            assert_eq!(safe_next(Some(bad)), "/ui", "{bad}");
        }
        assert_eq!(safe_next(None), "/ui");
    }

    #[test]
    fn the_session_cookie_is_found_among_others_and_must_look_like_an_id() {
        let id = "ab".repeat(32);
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(&format!("theme=dark; {COOKIE}={id}; x=1")).unwrap());
        assert_eq!(session_id(&h), Some(id));
        h.insert(header::COOKIE, HeaderValue::from_static("outpost_session=../../etc"));
        assert_eq!(session_id(&h), None);
    }

    #[test]
    fn paths_are_encoded_for_the_sign_in_redirect() {
        assert_eq!(urlencode("/ui/models/bc?range=1h"), "/ui/models/bc%3Frange%3D1h");
    }
}
