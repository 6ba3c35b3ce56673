//! Ground truth for served predictions: `POST /v1/feedback` joins labels to the prediction log.
//!
//! Body: `{"prediction_id": 17, "label": 1}`, or `{"feedback": [{"prediction_id": 17,
//! "label": 1}, …]}` with at most [`MAX_ITEMS`] items. Ids are the `prediction_ids` a response
//! carried; labels are integer class ids, like classifiers' label outputs. Each item is looked
//! up in the log, hours later too, while the log's budget keeps it:
//! - `joined`: found; counted per model version in `/metrics` (labelled, correct) and sent to
//!   the coordinator with the predicted label, where quality is computed per version and per
//!   device label. Labels from many requests leave together, one message per
//!   `telemetry.feedback_linger_ms` ([`crate::telemetry::Reporter::feedback`]); with
//!   `prediction_log.durability = "sync"` the answer comes once they are in the outbox;
//! - `unknown`: an id this agent never issued; `evicted`: a prediction the log's disk or age
//!   budget already removed. Both are counted (in `/metrics` and in the next report), never
//!   dropped silently.
//! - `unreadable`: the record is there but does not read (it failed authentication: damaged on
//!   disk); counted in `/metrics` here and in `outpost_agent_unreadable_records_total`.
//!
//! The answer gives every item's result in order. A label sent twice is sent twice; the
//! coordinator keeps one label per prediction (the last).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use outpost_shared::endpoints::now_ms;
use outpost_shared::protocol::messages::{FeedbackBatch, LabelledPrediction};
use outpost_shared::protocol::records::PredictionRecord;
use serde::Serialize;
use serde_json::Value;

use super::{ApiError, AppState};
use crate::prediction_log::{LogError, PredictionLog};

/// Most labels one request may carry: what one feedback message holds.
pub const MAX_ITEMS: usize = crate::telemetry::FEEDBACK_MESSAGE_LABELS;

/// One item's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Joined {
    Joined,
    Unknown,
    Evicted,
    Unreadable,
}

impl Joined {
    pub fn label(self) -> &'static str {
        match self {
            Joined::Joined => "joined",
            Joined::Unknown => "unknown",
            Joined::Evicted => "evicted",
            Joined::Unreadable => "unreadable",
        }
    }
}

/// The answer to a feedback request.
#[derive(Debug, Serialize)]
pub struct Answer {
    pub joined: u64,
    pub unknown: u64,
    pub evicted: u64,
    pub unreadable: u64,
    pub results: Vec<Joined>,
}

/// Reads the body into `(prediction_id, label)` pairs; errors name the item and the problem.
pub fn parse(body: &[u8]) -> Result<Vec<(u64, i64)>, ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("malformed feedback: {e}")))?;
    let Value::Object(object) = &value else {
        return Err(ApiError::BadRequest(
            "feedback must be an object: {\"prediction_id\": ID, \"label\": CLASS} or {\"feedback\": [...]}"
                .into(),
        ));
    };
    let items: Vec<(Option<usize>, &Value)> = match object.get("feedback") {
        Some(Value::Array(items)) => {
            if object.len() != 1 {
                return Err(ApiError::BadRequest("a feedback batch has only the key `feedback`".into()));
            }
            if items.is_empty() || items.len() > MAX_ITEMS {
                return Err(ApiError::BadRequest(format!(
                    "`feedback` holds {} items; send 1 to {MAX_ITEMS}",
                    items.len()
                )));
            }
            items.iter().enumerate().map(|(i, v)| (Some(i), v)).collect()
        }
        Some(_) => return Err(ApiError::BadRequest("`feedback` must be an array of items".into())),
        None => vec![(None, &value)],
    };
    items
        .into_iter()
        .map(|(index, item)| {
            let at = index.map(|i| format!("feedback item {i}: ")).unwrap_or_default();
            let bad = |problem: &str| ApiError::BadRequest(format!("{at}{problem}"));
            let Value::Object(fields) = item else { return Err(bad("must be an object")) };
            if let Some(key) = fields.keys().find(|k| *k != "prediction_id" && *k != "label") {
                return Err(bad(&format!("unknown key `{key}` (expected `prediction_id` and `label`)")));
            }
            let id = fields
                .get("prediction_id")
                .ok_or_else(|| bad("`prediction_id` is missing"))?
                .as_u64()
                .filter(|&id| id > 0)
                .ok_or_else(|| {
                    bad("`prediction_id` must be a positive integer (from the response's `prediction_ids`)")
                })?;
            let label = fields
                .get("label")
                .ok_or_else(|| bad("`label` is missing"))?
                .as_i64()
                .ok_or_else(|| bad("`label` must be an integer class id"))?;
            Ok((id, label))
        })
        .collect()
}

/// The label output of a logged row: the first INT64 output with one value.
fn predicted_label(record: &PredictionRecord) -> Option<i64> {
    let t = record.outputs.iter().find(|t| t.datatype == "INT64" && t.data.len() == 8)?;
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&t.data);
    Some(i64::from_le_bytes(bytes))
}

/// Looks every item up (flushing the log once if a recent id is still queued for its writer).
pub fn join(log: &PredictionLog, items: &[(u64, i64)]) -> Result<(Vec<Joined>, FeedbackBatch), ApiError> {
    let internal = |e: LogError| ApiError::Internal(format!("prediction log: {e}"));
    let next_id = log.next_id();
    let mut flushed = false;
    let mut results = Vec::with_capacity(items.len());
    let mut batch = FeedbackBatch { labels: Vec::new(), unknown: 0, evicted: 0 };
    let labelled_at_ms = now_ms();
    for &(id, label) in items {
        if id >= next_id {
            results.push(Joined::Unknown);
            batch.unknown += 1;
            continue;
        }
        let mut record = log.get(id);
        if matches!(record, Ok(None)) && !flushed {
            log.flush().map_err(internal)?;
            flushed = true;
            record = log.get(id);
        }
        let record = match record {
            Err(LogError::Unreadable { .. } | LogError::Record { .. } | LogError::Damaged { .. }) => {
                // Counted and logged with its id by the log; the label cannot be joined.
                results.push(Joined::Unreadable);
                continue;
            }
            other => other.map_err(internal)?,
        };
        match record {
            Some(r) => {
                results.push(Joined::Joined);
                batch.labels.push(LabelledPrediction {
                    prediction_id: id,
                    predicted: predicted_label(&r),
                    model: r.model,
                    version: r.version,
                    slot: r.slot,
                    predicted_at_ms: r.at_ms,
                    labelled_at_ms,
                    label,
                });
            }
            None => {
                results.push(Joined::Evicted);
                batch.evicted += 1;
            }
        }
    }
    Ok((results, batch))
}

/// `POST /v1/feedback`.
pub async fn post_feedback(State(app): State<AppState>, body: Bytes) -> Result<Json<Answer>, ApiError> {
    let items = parse(&body)?;
    let log = app.log.clone().ok_or_else(|| {
        ApiError::NotFound("feedback needs the prediction log, which is disabled on this agent".into())
    })?;
    let durable = log.durability() == crate::prediction_log::Durability::Sync;
    let (results, batch) = tokio::task::spawn_blocking(move || join(&log, &items))
        .await
        .map_err(|_| ApiError::Internal("feedback task stopped".into()))??;
    for result in &results {
        app.metrics.feedback.with_label_values(&[result.label()]).inc();
    }
    for l in &batch.labels {
        app.metrics.labelled.with_label_values(&[&l.model, &l.version]).inc();
        if l.predicted == Some(l.label) {
            app.metrics.labelled_correct.with_label_values(&[&l.model, &l.version]).inc();
        }
    }
    let unreadable = results.iter().filter(|r| **r == Joined::Unreadable).count() as u64;
    let answer = Answer {
        joined: batch.labels.len() as u64,
        unknown: batch.unknown,
        evicted: batch.evicted,
        unreadable,
        results,
    };
    if let Some(reporter) = app.reporter.clone() {
        let kept = tokio::task::spawn_blocking(move || reporter.feedback(batch, durable))
            .await
            .map_err(|_| ApiError::Internal("feedback task stopped".into()))?;
        kept.map_err(|e| {
            ApiError::Internal(format!("the labels could not be kept for the coordinator: {e}"))
        })?;
    }
    Ok(Json(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_record_is_answered_unreadable_and_the_others_still_join() {
        use crate::at_rest::{AtRest, Sealer};
        use outpost_shared::protocol::records::RecordedInputs;
        let dir = tempfile::tempdir().unwrap();
        let at_rest = AtRest::sealed(std::sync::Arc::new(Sealer::ephemeral().unwrap()));
        let config = crate::prediction_log::PredictionLogConfig::default();
        let ids: Vec<u64> = {
            let log = PredictionLog::open(dir.path(), &config, &at_rest).unwrap();
            let ids: Vec<u64> = (0..3).map(|_| log.allocate_ids(1).unwrap()).collect();
            let records = ids
                .iter()
                .map(|&id| PredictionRecord {
                    id,
                    at_ms: now_ms(),
                    model: "bc".into(),
                    version: "1".into(),
                    slot: outpost_shared::protocol::vocab::Slot::Primary,
                    latency_us: 1,
                    inputs: RecordedInputs::Dropped,
                    outputs: vec![],
                    top_score: None,
                })
                .collect();
            log.append(records).unwrap();
            log.flush().unwrap();
            ids
        };
        crate::prediction_log::flip_stored_byte(dir.path(), ids[1], 1);
        std::thread::sleep(std::time::Duration::from_millis(200));
        let log = PredictionLog::open(dir.path(), &config, &at_rest).unwrap();
        let items: Vec<(u64, i64)> = ids.iter().map(|&id| (id, 1)).chain([(ids[2] + 100, 1)]).collect();
        let (results, batch) = join(&log, &items).unwrap();
        assert_eq!(results, vec![Joined::Joined, Joined::Unreadable, Joined::Joined, Joined::Unknown]);
        assert_eq!((batch.labels.len(), batch.unknown, batch.evicted), (2, 1, 0));
    }

    #[test]
    fn single_and_batch_bodies_parse() {
        assert_eq!(parse(br#"{"prediction_id": 7, "label": 1}"#).unwrap(), vec![(7, 1)]);
        let batch = br#"{"feedback": [{"prediction_id": 1, "label": 0}, {"prediction_id": 2, "label": -3}]}"#;
        assert_eq!(parse(batch).unwrap(), vec![(1, 0), (2, -3)]);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..256)) {
            let _ = parse(&body);
        }
    }

    #[test]
    fn bad_bodies_name_the_item_and_the_problem() {
        let cases: [(&[u8], &str); 7] = [
            (b"nope", "malformed feedback"),
            (b"[1]", "must be an object"),
            (br#"{"prediction_id": 0, "label": 1}"#, "positive integer"),
            (br#"{"prediction_id": 3, "label": 0.5}"#, "integer class id"),
            (br#"{"prediction_id": 3}"#, "`label` is missing"),
            (br#"{"feedback": [{"prediction_id": 1, "label": 0}, {"prediction_id": 2, "label": 1, "x": 1}]}"#, "feedback item 1: unknown key `x`"),
            (br#"{"feedback": []}"#, "send 1 to 10000"),
        ];
        for (body, expected) in cases {
            let err = parse(body).unwrap_err().to_string();
            assert!(err.contains(expected), "{}: {err}", String::from_utf8_lossy(body));
        }
    }
}
