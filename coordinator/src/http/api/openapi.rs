//! The OpenAPI 3.1 document served at `/api/v1/openapi.json`, generated from [`ROUTES`] — the
//! one list of what the API offers. A test in `tests/` calls every listed route on a running
//! coordinator and checks the router answers it (not a 404/405 from routing).

use axum::Json;
use serde_json::{Value, json};

/// One route: method, path (axum syntax), role needed (`public`, `device`, `viewer`,
/// `operator`, `admin`), request body kind, summary.
#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    pub method: &'static str,
    pub path: &'static str,
    pub role: &'static str,
    pub body: Option<&'static str>,
    pub summary: &'static str,
}

const fn r(
    method: &'static str,
    path: &'static str,
    role: &'static str,
    body: Option<&'static str>,
    summary: &'static str,
) -> RouteDoc {
    RouteDoc { method, path, role, body, summary }
}

const JSON: Option<&str> = Some("application/json");
const BYTES: Option<&str> = Some("application/octet-stream");
const CSV: Option<&str> = Some("text/csv");

/// Every `/api/v1` route.
pub const ROUTES: &[RouteDoc] = &[
    r("get", "/api/v1/openapi.json", "public", None, "This document."),
    r(
        "post",
        "/api/v1/enrolment-tokens",
        "admin",
        JSON,
        "Create a one-time, expiring enrolment token with labels.",
    ),
    r(
        "post",
        "/api/v1/enrol",
        "device",
        JSON,
        "Enrol a device with a token: registers its key, returns its client certificate.",
    ),
    r("get", "/api/v1/devices", "viewer", None, "The fleet: liveness, backlog, models running and desired."),
    r("get", "/api/v1/devices/{id}", "viewer", None, "One device."),
    r(
        "post",
        "/api/v1/devices/{id}/revoke",
        "admin",
        None,
        "Revoke a device: its telemetry, downloads and deployments are refused; its certificate joins the revocation list.",
    ),
    r("delete", "/api/v1/devices/{id}", "admin", None, "Delete a device from the fleet (revoking it first)."),
    r(
        "get",
        "/api/v1/devices/{id}/desired/sealed",
        "operator",
        None,
        "The device's desired state sealed and signed now (with its expiry), for an air-gapped site: `outpostctl device export-desired`.",
    ),
    r(
        "get",
        "/api/v1/pki/crl",
        "viewer",
        None,
        "The fleet CA's certificate revocation list (PEM), for a broker's crlfile.",
    ),
    r(
        "post",
        "/api/v1/telemetry/import",
        "admin",
        BYTES,
        "Ingest a telemetry file carried across an air gap; returns the ack file.",
    ),
    r(
        "get",
        "/api/v1/alerts",
        "viewer",
        None,
        "Alerts: firing ones first (labels, devices, since when), then recently resolved ones.",
    ),
    r("get", "/api/v1/models", "viewer", None, "Every registered version."),
    r("get", "/api/v1/models/{name}", "viewer", None, "The versions of one model."),
    r("get", "/api/v1/models/{name}/policy", "viewer", None, "The model's validation thresholds."),
    r(
        "post",
        "/api/v1/models/{name}/rollback",
        "operator",
        None,
        "Back to the last good production version everywhere: the version production had before the current one is deployed to every device.",
    ),
    r(
        "post",
        "/api/v1/models/{name}/retrain",
        "operator",
        None,
        "Start the model's retraining hook now (202 with the run; 409 if one is running or none is configured).",
    ),
    r(
        "get",
        "/api/v1/models/{name}/retraining",
        "viewer",
        None,
        "The model's retraining runs, oldest first.",
    ),
    r(
        "get",
        "/api/v1/models/{name}/data",
        "operator",
        None,
        "Uploaded predictions with their labels as CSV (device, prediction_id, version, predicted_at_ms, features…, predicted, label): `?since_ms=`, `?labelled_only=true`.",
    ),
    r(
        "get",
        "/api/v1/slo",
        "viewer",
        None,
        "The standing of every model's objectives: compliance and burn rate.",
    ),
    r("get", "/api/v1/models/{name}/slo", "viewer", None, "The model's objectives and their standing now."),
    r(
        "put",
        "/api/v1/models/{name}/slo",
        "operator",
        JSON,
        "Set the model's objectives: availability, latency {percentile, threshold_ms}, accuracy, window_secs.",
    ),
    r(
        "get",
        "/api/v1/models/{name}/versions/{version}/card",
        "viewer",
        None,
        "The version's model card: purpose, training, lineage, validation per class and segment, fleet quality per device label, drift (`?format=md|html`).",
    ),
    r(
        "get",
        "/api/v1/models/{name}/drift-report",
        "viewer",
        None,
        "Drift over time per feature and on the predictions, the features that moved most, version changes: `?format=md|html|json`, `?since_ms=`.",
    ),
    r(
        "get",
        "/api/v1/models/{name}/quality",
        "viewer",
        None,
        "Quality from ground-truth feedback: accuracy, precision, recall, F1 per class, per version, and per value of a device label (`?by=site`); `?since_ms=` limits it to newer predictions.",
    ),
    r("put", "/api/v1/models/{name}/policy", "operator", JSON, "Set the model's validation thresholds."),
    r(
        "get",
        "/api/v1/models/{name}/versions/{version}",
        "viewer",
        None,
        "One version: manifest summary, stage history, validation.",
    ),
    r(
        "put",
        "/api/v1/models/{name}/versions/{version}",
        "operator",
        BYTES,
        "Push a bundle (201 new, 200 same model again, 409 other bytes).",
    ),
    r(
        "delete",
        "/api/v1/models/{name}/versions/{version}",
        "admin",
        None,
        "Purge an archived version and its artifact.",
    ),
    r(
        "post",
        "/api/v1/models/{name}/versions/{version}/stage",
        "operator",
        JSON,
        "Move a version to another stage.",
    ),
    r(
        "post",
        "/api/v1/models/{name}/versions/{version}/validate",
        "operator",
        CSV,
        "Run the validation gate on a labelled CSV (query: label, segment, thresholds).",
    ),
    r(
        "get",
        "/api/v1/models/{name}/versions/{version}/bundle",
        "operator",
        None,
        "The signed bundle file (export for air-gapped sites).",
    ),
    r(
        "get",
        "/api/v1/artifacts/{sha256}",
        "device",
        None,
        "A signed bundle by content address; honours Range. Over HTTPS: an enrolled device's client certificate or an operator token.",
    ),
    r(
        "post",
        "/api/v1/deployments",
        "operator",
        JSON,
        "Deploy a validated version to devices by label selector or id.",
    ),
    r("get", "/api/v1/deployments", "viewer", None, "Every device's desired state."),
    r(
        "post",
        "/api/v1/tokens",
        "admin",
        JSON,
        "Create an API token with a role and an expiry (`expires`: `90d`, `12h`, `never`; shown once).",
    ),
    r("get", "/api/v1/tokens", "admin", None, "API tokens (names, roles and expiries, never the tokens)."),
    r("delete", "/api/v1/tokens/{name}", "admin", None, "Revoke an API token."),
    r("get", "/api/v1/audit", "admin", None, "The newest audit entries (query: limit)."),
    r("get", "/api/v1/audit/verify", "admin", None, "Verify the audit log's hash chain."),
    r(
        "get",
        "/api/v1/cluster",
        "viewer",
        None,
        "The coordinator's replicas (last heartbeat) and engines' leases (holder, term) on PostgreSQL.",
    ),
    r(
        "get",
        "/api/v1/admin/backup",
        "admin",
        None,
        "A snapshot of the whole data directory, streamed (loopback callers only; `outpost-coordinator backup` encrypts it).",
    ),
    r("get", "/api/v1/keys", "viewer", None, "The coordinator's release key (for agents' trusted keys)."),
    r(
        "get",
        "/api/v1/root",
        "viewer",
        None,
        "The current signed trust root, and devices by the root version they hold.",
    ),
    r(
        "post",
        "/api/v1/root",
        "admin",
        JSON,
        "Take the next trust-root version (signed by the current root keys); it reaches every device.",
    ),
    r("get", "/api/v1/root/chain", "viewer", None, "Every trust-root version, oldest first."),
    r(
        "post",
        "/api/v1/root/online-key",
        "admin",
        None,
        "Make (once) the next online key and return its public half, to name in a root draft.",
    ),
    r(
        "post",
        "/api/v1/rollouts",
        "operator",
        JSON,
        "Start a staged rollout of a validated version (waves, bake, gates against the baseline).",
    ),
    r(
        "post",
        "/api/v1/rollouts/plan",
        "viewer",
        JSON,
        "Plan a rollout spec on the targets' recent traffic: per step and gate, how long until an unchanged \
         version passes and a regression is caught; warnings where that exceeds the bake. Starts nothing.",
    ),
    r("get", "/api/v1/rollouts", "viewer", None, "Every rollout, newest last."),
    r(
        "get",
        "/api/v1/rollouts/{id}",
        "viewer",
        None,
        "One rollout: its wave, gates with their evidence and verdicts, devices, timeline.",
    ),
    r(
        "post",
        "/api/v1/rollouts/{id}/{action}",
        "operator",
        None,
        "pause, resume, promote (skip the remaining waves), abort-keep or abort-revert a rollout.",
    ),
    r("get", "/api/v1/incidents", "viewer", None, "Automatic rollbacks, with the gate and numbers."),
    r("get", "/api/v1/incidents/{id}", "viewer", None, "One incident with its timeline."),
    r(
        "post",
        "/api/v1/incidents/{id}/close",
        "operator",
        None,
        "Mark an incident handled (its alert resolves).",
    ),
];

/// The document.
pub fn build() -> Value {
    let mut paths = serde_json::Map::new();
    for route in ROUTES {
        let params: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut op = json!({
            "summary": route.summary,
            "x-outpost-role": route.role,
            "parameters": params,
            "responses": {
                "200": {"description": "OK"},
                "400": {"description": "Bad request: the error names the problem"},
                "401": {"description": "No valid token"},
                "403": {"description": "The token's role may not do this"},
                "404": {"description": "Not found"},
                "429": {"description": "Rate limited (Retry-After)"}
            }
        });
        if matches!(route.role, "viewer" | "operator" | "admin") {
            op["security"] = json!([{"bearer": []}]);
        }
        if let Some(kind) = route.body {
            op["requestBody"] = json!({"required": true, "content": {kind: {}}});
        }
        let entry = paths.entry(route.path.to_owned()).or_insert_with(|| json!({}));
        entry[route.method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Outpost coordinator API", "version": env!("CARGO_PKG_VERSION")},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    })
}

pub async fn document() -> Json<Value> {
    Json(build())
}
