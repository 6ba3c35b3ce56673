//! The dashboard's sign-in, sessions and forms over plain HTTP against a real coordinator:
//! what needs a session, what a cookie may and may not open, how bad input is refused (by
//! name, with the right status), and that revoking a token or signing out ends a session.
//! The browser test (`dashboard.rs`) covers the pages' content.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use outpost_tests::fleet::Coordinator;
use serde_json::json;

struct Page {
    status: u16,
    location: String,
    cookie: String,
    csp: String,
    body: String,
}

async fn send(request: reqwest::RequestBuilder) -> Page {
    let r = request.send().await.unwrap();
    let header =
        |name: &str| r.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let (status, location, cookie, csp) =
        (r.status().as_u16(), header("location"), header("set-cookie"), header("content-security-policy"));
    Page { status, location, cookie, csp, body: r.text().await.unwrap() }
}

fn csrf_of(body: &str) -> String {
    body.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_sessions_need_a_valid_token_and_bad_input_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (coordinator, _) = Coordinator::start_embedded(&dir.path().join("coordinator"));
    let admin = std::fs::read_to_string(coordinator.token_file()).unwrap().trim().to_owned();
    let base = coordinator.url();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let get = |path: &str, cookie: Option<&str>| {
        let mut r = http.get(format!("{base}{path}"));
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        send(r)
    };
    let post = |path: &str, cookie: Option<&str>, form: &str| {
        let mut r = http
            .post(format!("{base}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned());
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        send(r)
    };

    // Without a session every page sends the browser to sign in, remembering where it was.
    let p = get("/ui/rollouts", None).await;
    assert_eq!((p.status, p.location.as_str()), (303, "/ui/login?next=/ui/rollouts"));
    let p = get("/ui/login", None).await;
    assert_eq!(p.status, 200);
    assert!(p.csp.contains("default-src 'none'") && p.body.contains("name=\"token\""), "{}", p.csp);
    let js = get("/ui/static/dashboard.js", None).await;
    assert!(js.status == 200 && js.body.contains("DOMParser"));

    // Bad sign-ins: each named, none starts a session.
    for (form, status, says) in [
        ("token=not-a-token", 401, "not valid"),
        ("token=", 400, "Paste an API token"),
        ("token=x&role=admin", 422, "unknown field `role`"),
        ("next=%2Fui", 422, "missing field `token`"),
    ] {
        let p = post("/ui/login", None, form).await;
        assert_eq!(p.status, status, "{form}: {}", p.body);
        assert!(p.body.contains(says), "{form}: {}", p.body);
        assert!(p.cookie.is_empty(), "{form}");
    }
    let huge = format!("token={}", "a".repeat(20_000));
    assert_eq!(post("/ui/login", None, &huge).await.status, 413);

    // A viewer signs in: an HttpOnly, SameSite=Strict cookie scoped to /ui; `next` stays on /ui.
    let token = |name: &str, role: &str| {
        let body = json!({"name": name, "role": role});
        let r = http.post(format!("{base}/api/v1/tokens")).bearer_auth(&admin).json(&body);
        async move {
            r.send().await.unwrap().json::<serde_json::Value>().await.unwrap()["token"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let viewer_token = token("watcher", "viewer").await;
    let p =
        post("/ui/login", None, &format!("token={viewer_token}&next=https%3A%2F%2Fevil.example%2Fui")).await;
    assert_eq!((p.status, p.location.as_str()), (303, "/ui"));
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(p.cookie.contains(attribute), "{}", p.cookie);
    }
    assert!(!p.cookie.contains(&viewer_token), "the cookie holds a session id, not the token");
    let viewer = p.cookie.split(';').next().unwrap().to_owned();
    let page = get("/ui", Some(&viewer)).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("data-role=\"viewer\"") && page.csp.contains("script-src 'self'"));
    let viewer_csrf = csrf_of(&page.body);

    // The cookie opens the dashboard only, not the API.
    let api = send(http.get(format!("{base}/api/v1/devices")).header("cookie", &viewer)).await;
    assert_eq!(api.status, 401);

    // Unknown things and bad queries are named.
    for (path, status, says) in [
        ("/ui/models/nope", 404, "no model `nope`"),
        ("/ui/rollouts/r-999999", 404, "no rollout `r-999999`"),
        ("/ui/incidents/inc-999999", 404, "no incident `inc-999999`"),
        ("/ui/models/nope?range=1y", 400, "range `1y`"),
        ("/ui?status=sleepy", 400, "status `sleepy`: use one of online, stale, offline, never_seen"),
        ("/ui?colour=red", 400, "unknown field `colour`"),
        ("/ui/models/nope?colour=red", 400, "unknown query parameter"),
        ("/ui/models/nope/versions/1.0.0/card?format=pdf", 400, "format `pdf`"),
    ] {
        let p = get(path, Some(&viewer)).await;
        assert_eq!(p.status, status, "{path}: {}", p.body);
        assert!(p.body.contains(says), "{path}: {}", p.body);
    }

    // A viewer's forged action is refused for its role, even with the session's CSRF secret.
    let p = post("/ui/incidents/inc-000001/close", Some(&viewer), &format!("csrf={viewer_csrf}")).await;
    assert_eq!(p.status, 403);
    assert!(p.body.contains("has role `viewer`; this needs `operator`"), "{}", p.body);

    // An operator's forms need the CSRF secret; with it the request reaches the engine.
    let operator_token = token("night-shift", "operator").await;
    let operator = post("/ui/login", None, &format!("token={operator_token}")).await.cookie;
    let operator = operator.split(';').next().unwrap().to_owned();
    let csrf = csrf_of(&get("/ui", Some(&operator)).await.body);
    let p = post("/ui/rollouts/r-000001/pause", Some(&operator), "").await;
    assert_eq!(p.status, 400);
    assert!(p.body.contains("missing its `csrf` field"), "{}", p.body);
    let p = post("/ui/rollouts/r-000001/pause", Some(&operator), &format!("csrf={viewer_csrf}")).await;
    assert_eq!(p.status, 403);
    assert!(p.body.contains("CSRF token does not match"), "{}", p.body);
    let p = post("/ui/rollouts/r-000001/pause", Some(&operator), &format!("csrf={csrf}")).await;
    assert_eq!(p.status, 404, "{}", p.body);
    let p = post("/ui/rollouts/r-000001/explode", Some(&operator), &format!("csrf={csrf}")).await;
    assert_eq!(p.status, 404);
    assert!(p.body.contains("unknown rollout action `explode`"), "{}", p.body);

    // Revoking the token ends its sessions at once.
    let revoked =
        http.delete(format!("{base}/api/v1/tokens/watcher")).bearer_auth(&admin).send().await.unwrap();
    assert!(revoked.status().is_success());
    let p = get("/ui", Some(&viewer)).await;
    assert_eq!((p.status, p.location.as_str()), (303, "/ui/login?next=/ui&expired=1"));

    // Signing out needs the CSRF secret, clears the cookie and forgets the session.
    assert_eq!(post("/ui/logout", Some(&operator), "csrf=wrong").await.status, 403);
    let p = post("/ui/logout", Some(&operator), &format!("csrf={csrf}")).await;
    assert_eq!((p.status, p.location.as_str()), (303, "/ui/login"));
    assert!(p.cookie.contains("Max-Age=0"), "{}", p.cookie);
    assert_eq!(get("/ui", Some(&operator)).await.status, 303);
}

/// The finding: the dashboard's sign-in form was outside the API's per-address throttle, so
/// tokens could be guessed there without limit. Now its failures count in the same budget:
/// after `api.failed_auth_per_minute` wrong tokens the form answers 429 — for the right token
/// too — and so does the API, for that address; each refusal is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_tokens_at_the_sign_in_form_is_throttled_like_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let (coordinator, _) = Coordinator::start_embedded_with(
        &dir.path().join("coordinator"),
        &[("OUTPOST_COORDINATOR_API__FAILED_AUTH_PER_MINUTE", "3")],
    );
    let admin = std::fs::read_to_string(coordinator.token_file()).unwrap().trim().to_owned();
    let base = coordinator.url();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let sign_in = |token: &str| {
        send(
            http.post(format!("{base}/ui/login"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("token={token}")),
        )
    };
    for _ in 0..3 {
        assert_eq!(sign_in("opa_guess").await.status, 401);
    }
    let p = sign_in(&admin).await;
    assert_eq!(p.status, 429, "{}", p.body);
    assert!(p.body.contains("Too many failed sign-ins from this address"), "{}", p.body);
    assert!(p.cookie.is_empty());
    let api = http.get(format!("{base}/api/v1/devices")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(api.status().as_u16(), 429);

    // The audit log itself (this address is throttled for the API too, `audit list` included).
    let audit = std::fs::read_to_string(coordinator.data_dir.join("audit.log")).unwrap();
    let denied = audit.lines().filter(|l| l.contains("auth.denied") && l.contains("/ui/login")).count();
    assert_eq!(denied, 3, "{audit}");
    assert!(audit.lines().any(|l| l.contains("auth.throttled") && l.contains("/ui/login")), "{audit}");
}

/// Live updates are Server-Sent Events: only for a session, a `change` when fleet state moved
/// (here: an audited mutation), and `signed-out` — then the end — when the session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_updates_stream_changes_to_a_session_until_it_signs_out() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let (coordinator, _) = Coordinator::start_embedded(&dir.path().join("coordinator"));
    let admin = std::fs::read_to_string(coordinator.token_file()).unwrap().trim().to_owned();
    let base = coordinator.url();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();

    let p = send(http.get(format!("{base}/ui/events"))).await;
    assert_eq!((p.status, p.location.as_str()), (303, "/ui/login?next=/ui"), "no session, no stream");

    let signed_in = send(
        http.post(format!("{base}/ui/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={admin}")),
    )
    .await;
    assert_eq!(signed_in.status, 303);
    let cookie = signed_in.cookie.split(';').next().unwrap().to_owned();
    let mut stream = http.get(format!("{base}/ui/events")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");

    // Read the stream until `event` shows (or the deadline passes).
    async fn read_until(stream: &mut reqwest::Response, event: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let mut seen = String::new();
        while !seen.contains(&format!("event: {event}")) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.chunk()).await {
                Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(Ok(None)) => break,
                Ok(Err(e)) => panic!("stream failed: {e}; so far: {seen}"),
                Err(_) => panic!("no `{event}` within {within:?}; so far: {seen:?}"),
            }
        }
        seen
    }

    // An audited mutation is a change.
    let created = http
        .post(format!("{base}/api/v1/tokens"))
        .bearer_auth(&admin)
        .json(&json!({"name": "watcher", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    read_until(&mut stream, "change", Duration::from_secs(15)).await;

    // Signing out ends the stream with `signed-out`.
    let page = send(http.get(format!("{base}/ui")).header("cookie", &cookie)).await;
    let out = send(
        http.post(format!("{base}/ui/logout"))
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={}", csrf_of(&page.body))),
    )
    .await;
    assert_eq!(out.status, 303);
    read_until(&mut stream, "signed-out", Duration::from_secs(10)).await;
    let rest = tokio::time::timeout(Duration::from_secs(5), stream.chunk()).await;
    assert!(matches!(rest, Ok(Ok(None))), "the stream ends after signed-out: {rest:?}");
}

/// Sessions live in the coordinator's store, not its memory: a browser signed in before the
/// coordinator was killed (SIGKILL, no shutdown) is still signed in, with the same CSRF secret,
/// when it comes back; signing out then ends the session for good, and a restart does not
/// bring it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_session_survives_a_coordinator_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut coordinator, _) = Coordinator::start_embedded(&dir.path().join("coordinator"));
    let admin = std::fs::read_to_string(coordinator.token_file()).unwrap().trim().to_owned();
    let base = coordinator.url();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let get = |cookie: &str| send(http.get(format!("{base}/ui")).header("cookie", cookie));

    let signed_in = send(
        http.post(format!("{base}/ui/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={admin}")),
    )
    .await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    let cookie = signed_in.cookie.split(';').next().unwrap().to_owned();
    let before = get(&cookie).await;
    assert_eq!(before.status, 200);
    let csrf = csrf_of(&before.body);

    coordinator.stop(nix::sys::signal::Signal::SIGKILL);
    coordinator.resume();
    let after = get(&cookie).await;
    assert_eq!(after.status, 200, "still signed in after the restart: {}", after.location);
    assert_eq!(csrf_of(&after.body), csrf, "the same session");

    let out = send(
        http.post(format!("{base}/ui/logout"))
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(out.status, 303);
    coordinator.stop(nix::sys::signal::Signal::SIGTERM);
    coordinator.resume();
    let p = get(&cookie).await;
    assert_eq!((p.status, p.location.as_str()), (303, "/ui/login?next=/ui"), "signed out stays signed out");
}
