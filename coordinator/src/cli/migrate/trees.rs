//! Which sled tree goes into which PostgreSQL table, and how each record becomes a row: the one
//! place that knows both layouts (each repository's header gives its own; the tables are in
//! `coordinator/migrations/`). Roll-ups are copied as they are (sled's are complete: the caller
//! has the repositories build what a data directory lacked), each into shard 0.
//!
//! A tree added to the sled store without a line here makes `migrate` refuse that data
//! directory, naming the tree ([`FOLDED`] lists those read through another tree's rows).

use postgres::types::Type;

use super::cell::Cell;
use crate::base::pg::store::{seq_to_sql, to_sql};
use crate::base::store::Store;

/// A record's row, `Ok(None)` when it belongs elsewhere, or why it cannot be copied.
pub(super) type Row = Result<Option<Vec<Cell>>, String>;

/// How one tree's records become rows of one table.
pub(super) struct TreeCopy {
    pub tree: &'static str,
    pub table: &'static str,
    pub columns: Vec<(&'static str, Type)>,
    /// The row of one record; `Ok(None)` for a record that belongs elsewhere (only in trees
    /// that several repositories share, `meta`).
    pub row: fn(&Store, &[u8], &[u8]) -> Row,
}

/// Trees whose records are copied as part of another tree's rows, or rebuilt from them.
pub(super) const FOLDED: [&str; 3] = [
    // the `key_id` column of `outpost_devices`
    "device_keys",
    // the `received_ms` column of `outpost_envelopes`
    "envelope_arrivals",
    // the `active` column of `outpost_rollouts`
    "rollouts_active",
];

fn traffic_rollup_columns() -> Vec<(&'static str, Type)> {
    vec![
        ("model", Type::TEXT),
        ("by_label", Type::BOOL),
        ("width_ms", Type::INT8),
        ("start_ms", Type::INT8),
        ("label", Type::TEXT),
        ("value", Type::TEXT),
        ("shard", Type::INT2),
        ("requests", Type::INT8),
        ("errors", Type::INT8),
        ("latency", Type::BYTEA),
    ]
}
fn label_rollup_columns() -> Vec<(&'static str, Type)> {
    vec![
        ("model", Type::TEXT),
        ("by_label", Type::BOOL),
        ("width_ms", Type::INT8),
        ("start_ms", Type::INT8),
        ("label", Type::TEXT),
        ("value", Type::TEXT),
        ("version", Type::TEXT),
        ("shard", Type::INT2),
        ("counts", Type::BYTEA),
    ]
}
fn drift_rollup_columns() -> Vec<(&'static str, Type)> {
    vec![
        ("model", Type::TEXT),
        ("width_ms", Type::INT8),
        ("start_ms", Type::INT8),
        ("version", Type::TEXT),
        ("shard", Type::INT2),
        ("bucket", Type::BYTEA),
    ]
}
fn by_model_device_id_columns(at: &'static str) -> Vec<(&'static str, Type)> {
    vec![
        ("model", Type::TEXT),
        ("device", Type::TEXT),
        ("prediction_id", Type::INT8),
        (at, Type::INT8),
        ("record", Type::JSON),
    ]
}
const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;

/// Every tree `migrate` copies, in an order that keeps related tables together.
pub(super) fn all() -> Vec<TreeCopy> {
    let keyed = |tree, table, key, record| TreeCopy {
        tree,
        table,
        columns: vec![(key, Type::TEXT), (record, Type::JSON)],
        row: key_and_json,
    };
    vec![
        keyed("tokens", "outpost_tokens", "hash", "record"),
        TreeCopy {
            tree: "devices",
            table: "outpost_devices",
            columns: vec![("id", Type::TEXT), ("key_id", Type::TEXT), ("record", Type::JSON)],
            row: device,
        },
        TreeCopy {
            tree: "legacy_control",
            table: "outpost_legacy_control",
            columns: vec![("device", Type::TEXT)],
            row: key_only,
        },
        TreeCopy {
            tree: "envelopes",
            table: "outpost_envelopes",
            columns: vec![
                ("device", Type::TEXT),
                ("seq", Type::INT8),
                ("wire", Type::BYTEA),
                ("received_ms", Type::INT8),
            ],
            row: envelope,
        },
        TreeCopy {
            tree: "meta",
            table: "outpost_ack_seqs",
            columns: vec![("device", Type::TEXT), ("seq", Type::INT8)],
            row: ack_seq,
        },
        keyed("revoked", "outpost_revocations", "device", "record"),
        TreeCopy {
            tree: "api_tokens",
            table: "outpost_api_tokens",
            columns: vec![("hash", Type::TEXT), ("name", Type::TEXT), ("record", Type::JSON)],
            row: api_token,
        },
        TreeCopy {
            tree: "dashboard_sessions",
            table: "outpost_dashboard_sessions",
            columns: vec![
                ("id_hash", Type::TEXT),
                ("token_hash", Type::TEXT),
                ("csrf", Type::TEXT),
                ("created_at_ms", Type::INT8),
                ("expires_at_ms", Type::INT8),
            ],
            row: session,
        },
        TreeCopy {
            tree: "roots",
            table: "outpost_roots",
            columns: vec![("version", Type::INT8), ("statement", Type::BYTEA)],
            row: root,
        },
        keyed("desired", "outpost_desired", "device", "record"),
        TreeCopy {
            tree: "registry",
            table: "outpost_registry",
            columns: vec![
                ("name", Type::TEXT),
                ("version", Type::TEXT),
                ("bundle_sha256", Type::TEXT),
                ("record", Type::JSON),
            ],
            row: registry_version,
        },
        keyed("registry_policies", "outpost_registry_policies", "name", "policy"),
        TreeCopy {
            tree: "rollouts",
            table: "outpost_rollouts",
            columns: vec![
                ("id", Type::TEXT),
                ("model", Type::TEXT),
                ("active", Type::BOOL),
                ("revision", Type::INT8),
                ("record", Type::JSON),
            ],
            row: rollout,
        },
        keyed("incidents", "outpost_incidents", "id", "record"),
        TreeCopy {
            tree: "counters",
            table: "outpost_counters",
            columns: vec![("prefix", Type::TEXT), ("n", Type::INT8)],
            row: counter,
        },
        keyed("alerts", "outpost_alerts", "fingerprint", "record"),
        TreeCopy {
            tree: "retraining_runs",
            table: "outpost_retraining_runs",
            columns: vec![("model", Type::TEXT), ("started_ms", Type::INT8), ("record", Type::JSON)],
            row: retraining_run,
        },
        keyed("slos", "outpost_slo_specs", "model", "spec"),
        TreeCopy {
            tree: "traffic",
            table: "outpost_traffic",
            columns: vec![
                ("model", Type::TEXT),
                ("end_ms", Type::INT8),
                ("device", Type::TEXT),
                ("version", Type::TEXT),
                ("requests", Type::INT8),
                ("errors", Type::INT8),
                ("latency", Type::BYTEA),
            ],
            row: traffic,
        },
        TreeCopy {
            tree: "shadow",
            table: "outpost_shadow",
            columns: vec![
                ("model", Type::TEXT),
                ("end_ms", Type::INT8),
                ("device", Type::TEXT),
                ("version", Type::TEXT),
                ("primary_version", Type::TEXT),
                ("compared", Type::INT8),
                ("agreed", Type::INT8),
            ],
            row: shadow,
        },
        TreeCopy {
            tree: "traffic_1m",
            table: "outpost_traffic_rollups",
            columns: traffic_rollup_columns(),
            row: |_, k, v| traffic_rollup(MINUTE, false, k, v),
        },
        TreeCopy {
            tree: "traffic_1h",
            table: "outpost_traffic_rollups",
            columns: traffic_rollup_columns(),
            row: |_, k, v| traffic_rollup(HOUR, false, k, v),
        },
        TreeCopy {
            tree: "traffic_by_label_1m",
            table: "outpost_traffic_rollups",
            columns: traffic_rollup_columns(),
            row: |_, k, v| traffic_rollup(MINUTE, true, k, v),
        },
        TreeCopy {
            tree: "traffic_by_label_1h",
            table: "outpost_traffic_rollups",
            columns: traffic_rollup_columns(),
            row: |_, k, v| traffic_rollup(HOUR, true, k, v),
        },
        TreeCopy {
            tree: "labels",
            table: "outpost_labels",
            columns: by_model_device_id_columns("predicted_at_ms"),
            row: |_, k, v| by_model_device_id("predicted_at_ms", k, v),
        },
        TreeCopy {
            tree: "labels_1m",
            table: "outpost_label_rollups",
            columns: label_rollup_columns(),
            row: |_, k, v| label_rollup(MINUTE, false, k, v),
        },
        TreeCopy {
            tree: "labels_1h",
            table: "outpost_label_rollups",
            columns: label_rollup_columns(),
            row: |_, k, v| label_rollup(HOUR, false, k, v),
        },
        TreeCopy {
            tree: "labels_by_label_1m",
            table: "outpost_label_rollups",
            columns: label_rollup_columns(),
            row: |_, k, v| label_rollup(MINUTE, true, k, v),
        },
        TreeCopy {
            tree: "labels_by_label_1h",
            table: "outpost_label_rollups",
            columns: label_rollup_columns(),
            row: |_, k, v| label_rollup(HOUR, true, k, v),
        },
        TreeCopy {
            tree: "predictions",
            table: "outpost_predictions",
            columns: by_model_device_id_columns("at_ms"),
            row: |_, k, v| by_model_device_id("at_ms", k, v),
        },
        TreeCopy {
            tree: "drift_history",
            table: "outpost_drift_verdicts",
            columns: vec![
                ("model", Type::TEXT),
                ("at_ms", Type::INT8),
                ("device", Type::TEXT),
                ("version", Type::TEXT),
                ("verdicts", Type::JSON),
            ],
            row: drift_verdict,
        },
        TreeCopy {
            tree: "drift_devices",
            table: "outpost_drift_devices",
            columns: vec![("model", Type::TEXT), ("device", Type::TEXT), ("record", Type::BYTEA)],
            row: drift_device,
        },
        TreeCopy {
            tree: "drift_1m",
            table: "outpost_drift_rollups",
            columns: drift_rollup_columns(),
            row: |_, k, v| drift_rollup(MINUTE, k, v),
        },
        TreeCopy {
            tree: "drift_1h",
            table: "outpost_drift_rollups",
            columns: drift_rollup_columns(),
            row: |_, k, v| drift_rollup(HOUR, k, v),
        },
    ]
}

fn text(bytes: &[u8], what: &str) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("its {what} is not UTF-8"))
}

fn json(value: &[u8]) -> Result<serde_json::Value, String> {
    serde_json::from_slice(value).map_err(|e| format!("not a JSON record: {e}"))
}

fn json_cell(value: &[u8]) -> Result<Cell, String> {
    json(value)?;
    Ok(Cell::Json(text(value, "record")?))
}

fn field_text(record: &serde_json::Value, field: &str) -> Result<String, String> {
    record
        .get(field)
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or_else(|| format!("the record has no `{field}`"))
}

fn field_u64(record: &serde_json::Value, field: &str) -> Result<u64, String> {
    record.get(field).and_then(|v| v.as_u64()).ok_or_else(|| format!("the record has no number `{field}`"))
}

fn be_u64(bytes: &[u8], what: &str) -> Result<u64, String> {
    <[u8; 8]>::try_from(bytes).map(u64::from_be_bytes).map_err(|_| format!("its {what} is not 8 bytes"))
}

/// `(model, start, rest)` of a roll-up key `model \0 start (u64 BE) \0 rest`.
fn rollup_key(key: &[u8]) -> Result<(String, i64, String), String> {
    let split = key.iter().position(|b| *b == 0).ok_or("the key has no model")?;
    let start = be_u64(key.get(split + 1..split + 9).ok_or("the key has no bucket start")?, "bucket start")?;
    let rest = key.get(split + 10..).ok_or("the key ends after the bucket start")?;
    Ok((text(&key[..split], "model")?, to_sql(start), text(rest, "rest")?))
}

/// `(model, device, id)` of a `model \0 device \0 id (u64 BE)` key (labels, predictions).
fn model_device_id(key: &[u8]) -> Result<(String, String, u64), String> {
    let mut parts = key.splitn(3, |b| *b == 0);
    let (Some(model), Some(device)) = (parts.next(), parts.next()) else {
        return Err("the key has no device".into());
    };
    let id = key.get(model.len() + device.len() + 2..).ok_or("the key has no id")?;
    Ok((text(model, "model")?, text(device, "device")?, be_u64(id, "prediction id")?))
}

fn key_and_json(_: &Store, key: &[u8], value: &[u8]) -> Row {
    Ok(Some(vec![Cell::Text(text(key, "key")?), json_cell(value)?]))
}

fn key_only(_: &Store, key: &[u8], _: &[u8]) -> Row {
    Ok(Some(vec![Cell::Text(text(key, "key")?)]))
}

fn device(_: &Store, key: &[u8], value: &[u8]) -> Row {
    let key_id = field_text(&json(value)?, "key_id")?;
    Ok(Some(vec![Cell::Text(text(key, "id")?), Cell::Text(key_id), json_cell(value)?]))
}

fn envelope(store: &Store, key: &[u8], value: &[u8]) -> Row {
    let split = key.iter().position(|b| *b == 0).ok_or("the key has no device")?;
    let seq = be_u64(&key[split + 1..], "seq")?;
    let arrivals = store.tree("envelope_arrivals").map_err(|e| e.to_string())?;
    let received = match arrivals.get(key).map_err(|e| e.to_string())? {
        Some(at) => Cell::Int(to_sql(be_u64(&at, "arrival time")?)),
        None => Cell::Null,
    };
    Ok(Some(vec![
        Cell::Text(text(&key[..split], "device")?),
        Cell::Int(seq_to_sql(seq)),
        Cell::Bytes(value.to_vec()),
        received,
    ]))
}

fn ack_seq(_: &Store, key: &[u8], value: &[u8]) -> Row {
    let Some(device) = key.strip_prefix(b"ack_seq/") else { return Ok(None) };
    Ok(Some(vec![Cell::Text(text(device, "device")?), Cell::Int(to_sql(be_u64(value, "seq")?))]))
}

fn api_token(_: &Store, key: &[u8], value: &[u8]) -> Row {
    let name = field_text(&json(value)?, "name")?;
    Ok(Some(vec![Cell::Text(text(key, "hash")?), Cell::Text(name), json_cell(value)?]))
}

fn session(_: &Store, key: &[u8], value: &[u8]) -> Row {
    let record = json(value)?;
    Ok(Some(vec![
        Cell::Text(text(key, "hash")?),
        Cell::Text(field_text(&record, "token_hash")?),
        Cell::Text(field_text(&record, "csrf")?),
        Cell::Int(to_sql(field_u64(&record, "created_at_ms")?)),
        Cell::Int(to_sql(field_u64(&record, "expires_at_ms")?)),
    ]))
}

fn root(_: &Store, key: &[u8], value: &[u8]) -> Row {
    Ok(Some(vec![Cell::Int(to_sql(be_u64(key, "version")?)), Cell::Bytes(value.to_vec())]))
}

fn registry_version(_: &Store, key: &[u8], value: &[u8]) -> Row {
    let split = key.iter().position(|b| *b == 0).ok_or("the key has no version")?;
    let sha = field_text(&json(value)?, "bundle_sha256")?;
    Ok(Some(vec![
        Cell::Text(text(&key[..split], "name")?),
        Cell::Text(text(&key[split + 1..], "version")?),
        Cell::Text(sha),
        json_cell(value)?,
    ]))
}

fn rollout(_: &Store, key: &[u8], value: &[u8]) -> Row {
    let rollout: crate::ops::rollout::Rollout =
        serde_json::from_slice(value).map_err(|e| format!("not a rollout: {e}"))?;
    Ok(Some(vec![
        Cell::Text(text(key, "id")?),
        Cell::Text(rollout.spec.model.clone()),
        Cell::Bool(rollout.phase.active()),
        Cell::Int(to_sql(rollout.revision)),
        json_cell(value)?,
    ]))
}

fn counter(_: &Store, key: &[u8], value: &[u8]) -> Row {
    Ok(Some(vec![Cell::Text(text(key, "prefix")?), Cell::Int(to_sql(be_u64(value, "count")?))]))
}

fn retraining_run(_: &Store, key: &[u8], value: &[u8]) -> Row {
    let split = key.iter().position(|b| *b == 0).ok_or("the key has no start time")?;
    let started: u64 =
        text(&key[split + 1..], "start time")?.parse().map_err(|_| "its start time is not a number")?;
    Ok(Some(vec![Cell::Text(text(&key[..split], "model")?), Cell::Int(to_sql(started)), json_cell(value)?]))
}

fn traffic(_: &Store, key: &[u8], value: &[u8]) -> Row {
    let (model, end, device, version) = crate::monitoring::slo::parse_traffic_key(key)
        .ok_or("not a `model \\0 end \\0 device \\0 version` key")?;
    let window: crate::monitoring::slo::TrafficWindow =
        serde_json::from_slice(value).map_err(|e| format!("not a report window: {e}"))?;
    Ok(Some(vec![
        Cell::Text(model.to_owned()),
        Cell::Int(to_sql(end)),
        Cell::Text(device.to_owned()),
        Cell::Text(version.to_owned()),
        Cell::Int(to_sql(window.requests)),
        Cell::Int(to_sql(window.errors)),
        Cell::Bytes(crate::monitoring::slo::pg::histogram_bytes(&window.latency_us)),
    ]))
}

fn shadow(_: &Store, key: &[u8], value: &[u8]) -> Row {
    let (model, end, device, version) = crate::monitoring::slo::parse_traffic_key(key)
        .ok_or("not a `model \\0 end \\0 device \\0 version` key")?;
    let counts: crate::monitoring::slo::ShadowCounts =
        serde_json::from_slice(value).map_err(|e| format!("not a shadow window: {e}"))?;
    Ok(Some(vec![
        Cell::Text(model.to_owned()),
        Cell::Int(to_sql(end)),
        Cell::Text(device.to_owned()),
        Cell::Text(version.to_owned()),
        Cell::Text(counts.primary),
        Cell::Int(to_sql(counts.compared)),
        Cell::Int(to_sql(counts.agreed)),
    ]))
}

fn traffic_rollup(width: i64, by_label: bool, key: &[u8], value: &[u8]) -> Row {
    let (model, start, rest) = rollup_key(key)?;
    let (label, value_of) = if by_label {
        let (label, value, _) =
            crate::monitoring::slo::rollup::parse_label_part(&rest).ok_or("the key has no label value")?;
        (label.to_owned(), value.to_owned())
    } else {
        (String::new(), rest)
    };
    let sum: crate::monitoring::slo::TrafficWindow =
        postcard::from_bytes(value).map_err(|e| format!("not a traffic bucket: {e}"))?;
    Ok(Some(vec![
        Cell::Text(model),
        Cell::Bool(by_label),
        Cell::Int(width),
        Cell::Int(start),
        Cell::Text(label),
        Cell::Text(value_of),
        Cell::SmallInt(0),
        Cell::Int(to_sql(sum.requests)),
        Cell::Int(to_sql(sum.errors)),
        Cell::Bytes(crate::monitoring::slo::pg::histogram_bytes(&sum.latency_us)),
    ]))
}

fn label_rollup(width: i64, by_label: bool, key: &[u8], value: &[u8]) -> Row {
    let (model, start, rest) = rollup_key(key)?;
    let (label, value_of, version) = if by_label {
        match crate::monitoring::slo::rollup::parse_label_part(&rest) {
            Some((label, value, Some(version))) => (label.to_owned(), value.to_owned(), version.to_owned()),
            _ => return Err("the key has no `label \\0 value \\0 version`".into()),
        }
    } else {
        (String::new(), String::new(), rest)
    };
    let counts = crate::monitoring::quality::counts_as_shard(value).ok_or("not a label bucket")?;
    Ok(Some(vec![
        Cell::Text(model),
        Cell::Bool(by_label),
        Cell::Int(width),
        Cell::Int(start),
        Cell::Text(label),
        Cell::Text(value_of),
        Cell::Text(version),
        Cell::SmallInt(0),
        Cell::Bytes(counts),
    ]))
}

fn by_model_device_id(time_field: &str, key: &[u8], value: &[u8]) -> Row {
    let (model, device, id) = model_device_id(key)?;
    let at = field_u64(&json(value)?, time_field)?;
    Ok(Some(vec![
        Cell::Text(model),
        Cell::Text(device),
        Cell::Int(seq_to_sql(id)),
        Cell::Int(to_sql(at)),
        json_cell(value)?,
    ]))
}

fn drift_verdict(_: &Store, key: &[u8], value: &[u8]) -> Row {
    let split = key.iter().position(|b| *b == 0).ok_or("the key has no time")?;
    let at = be_u64(key.get(split + 1..split + 9).ok_or("the key has no time")?, "time")?;
    let rest = key.get(split + 10..).ok_or("the key has no device")?;
    let device = rest.split(|b| *b == 0).next().unwrap_or_default();
    // Keys written before versions were in them: the version is in the verdicts.
    let version = field_text(&json(value)?, "version")?;
    Ok(Some(vec![
        Cell::Text(text(&key[..split], "model")?),
        Cell::Int(to_sql(at)),
        Cell::Text(text(device, "device")?),
        Cell::Text(version),
        json_cell(value)?,
    ]))
}

fn drift_device(_: &Store, key: &[u8], value: &[u8]) -> Row {
    let split = key.iter().position(|b| *b == 0).ok_or("the key has no device")?;
    Ok(Some(vec![
        Cell::Text(text(&key[..split], "model")?),
        Cell::Text(text(&key[split + 1..], "device")?),
        Cell::Bytes(value.to_vec()),
    ]))
}

fn drift_rollup(width: i64, key: &[u8], value: &[u8]) -> Row {
    let (model, start, version) = rollup_key(key)?;
    Ok(Some(vec![
        Cell::Text(model),
        Cell::Int(width),
        Cell::Int(start),
        Cell::Text(version),
        Cell::SmallInt(0),
        Cell::Bytes(value.to_vec()),
    ]))
}
