//! Prediction records: what the agent's prediction log keeps for every served prediction,
//! in the stable form that later travels in prediction batches.
//!
//! Stored and sent as `[RECORD_FORMAT] ‖ postcard(PredictionRecord)`, so a reader can refuse a
//! format it does not know before decoding anything else.

use serde::{Deserialize, Serialize};

/// The record format this build writes and reads.
pub const RECORD_FORMAT: u8 = 1;

/// One tensor (or one row of a batched tensor), as little-endian bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedTensor {
    pub name: String,
    /// V2 datatype name, e.g. `FP32`.
    pub datatype: String,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
}

/// The inputs of a prediction, as the model's `record_inputs` policy keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordedInputs {
    /// The input tensors themselves.
    Kept(Vec<RecordedTensor>),
    /// SHA-256 over the input tensors' bytes, in model input order.
    Hashed([u8; 32]),
    /// Nothing kept.
    Dropped,
}

/// One served prediction (one row of a request).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionRecord {
    /// Unique per agent, strictly increasing, returned to the client.
    pub id: u64,
    /// Unix time in milliseconds when the prediction was made.
    pub at_ms: u64,
    pub model: String,
    pub version: String,
    /// Which slot served it.
    pub slot: crate::protocol::vocab::Slot,
    /// Time on the inference worker for the request this row belongs to, in microseconds.
    pub latency_us: u32,
    pub inputs: RecordedInputs,
    pub outputs: Vec<RecordedTensor>,
    /// Highest value of the first floating-point output with more than one element per row
    /// (a classifier's confidence), if there is one.
    pub top_score: Option<f32>,
}

/// Why record bytes cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("prediction record is empty")]
    Empty,
    #[error("prediction record format {found} is not supported (this build reads {RECORD_FORMAT})")]
    UnsupportedFormat { found: u8 },
    #[error("prediction record is malformed: {0}")]
    Malformed(String),
}

impl PredictionRecord {
    /// Encodes the record with its format byte.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(256);
        bytes.push(RECORD_FORMAT);
        // Serializing plain owned data into a Vec cannot fail.
        match postcard::to_extend(self, bytes) {
            Ok(bytes) => bytes,
            Err(_) => vec![RECORD_FORMAT],
        }
    }

    /// Decodes bytes written by [`PredictionRecord::encode`].
    pub fn decode(bytes: &[u8]) -> Result<PredictionRecord, RecordError> {
        let (&format, rest) = bytes.split_first().ok_or(RecordError::Empty)?;
        if format != RECORD_FORMAT {
            return Err(RecordError::UnsupportedFormat { found: format });
        }
        let (record, trailing) = postcard::take_from_bytes::<PredictionRecord>(rest)
            .map_err(|e| RecordError::Malformed(e.to_string()))?;
        if !trailing.is_empty() {
            return Err(RecordError::Malformed(format!("{} bytes after the record", trailing.len())));
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(id: u64, data: Vec<u8>) -> PredictionRecord {
        PredictionRecord {
            id,
            at_ms: 1_764_000_000_000,
            model: "bc".into(),
            version: "1.0.0".into(),
            slot: crate::protocol::vocab::Slot::Primary,
            latency_us: 12,
            inputs: RecordedInputs::Kept(vec![RecordedTensor {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![1, 2],
                data,
            }]),
            outputs: vec![],
            top_score: Some(0.9),
        }
    }

    #[test]
    fn refuses_unknown_formats_and_garbage() {
        let mut bytes = record(1, vec![0; 8]).encode();
        assert_eq!(PredictionRecord::decode(&[]), Err(RecordError::Empty));
        bytes[0] = 9;
        assert_eq!(PredictionRecord::decode(&bytes), Err(RecordError::UnsupportedFormat { found: 9 }));
        assert!(matches!(PredictionRecord::decode(&[1, 0xff, 0xff]), Err(RecordError::Malformed(_))));
    }

    proptest! {
        #[test]
        fn records_round_trip(id in any::<u64>(), data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let r = record(id, data);
            prop_assert_eq!(PredictionRecord::decode(&r.encode()).unwrap(), r);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = PredictionRecord::decode(&bytes);
        }
    }
}
