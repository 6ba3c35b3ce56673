//! Decoding and encoding of V2 inference requests and responses, JSON and binary.
//!
//! Runs on an inference worker, never on the async executor: this is where the CPU goes.
//! With Triton's binary tensor data extension the body is `JSON header ‖ binary tensors`;
//! the `Inference-Header-Content-Length` header gives the JSON length, each binary input
//! declares `parameters.binary_data_size`, and outputs asked for with
//! `parameters.binary_data` (or request-level `binary_data_output`) come back the same way.

use std::time::{Duration, Instant};

use outpost_shared::DataType;
use outpost_shared::protocol::vocab::Slot;
use outpost_shared::runtime::ProvidedInput;
use outpost_shared::tensor::{
    JsonData, first_non_finite, tensor_from_json, tensor_from_le_bytes, tensor_to_le_bytes,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::{ApiError, bad_tensor};
use crate::config::{NanPolicy, RecordInputs};
use crate::models::ServedModel;
use crate::prediction_log::{PredictionLog, RequestInfo, batch_rows, records_for_request};

/// One request input as V2 JSON writes it.
#[derive(Debug, Deserialize)]
pub struct RequestInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    #[serde(default)]
    pub data: Option<Value>,
}

/// One requested output.
#[derive(Debug, Deserialize)]
pub struct RequestOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
}

/// A V2 inference request.
#[derive(Debug, Deserialize)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    pub inputs: Vec<RequestInput>,
    #[serde(default)]
    pub outputs: Option<Vec<RequestOutput>>,
}

#[derive(Serialize)]
struct BinaryParameters {
    binary_data_size: usize,
}

#[derive(Serialize)]
struct ResponseOutput<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParameters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

#[derive(Serialize)]
struct ResponseParameters {
    /// Prediction-log ids of the rows, in row order (for feedback labels later).
    prediction_ids: Vec<u64>,
}

#[derive(Serialize)]
struct InferResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<ResponseParameters>,
    outputs: Vec<ResponseOutput<'a>>,
}

/// An encoded response body.
#[derive(Debug)]
pub struct Encoded {
    pub body: Vec<u8>,
    /// Length of the JSON part when binary outputs follow it.
    pub json_len: Option<usize>,
    /// Time tract spent computing.
    pub compute: Duration,
    /// Rows, scores and labels for the telemetry window (when the prediction log is on).
    pub summary: Option<crate::telemetry::RowSummary>,
}

/// Hands one record per row to the prediction log; returns the ids for the response.
fn record(
    served: &ServedModel,
    slot: Slot,
    log: &PredictionLog,
    batch: usize,
    inputs: &[outpost_shared::Tensor],
    outputs: &[outpost_shared::Tensor],
    elapsed: Duration,
) -> Result<(ResponseParameters, crate::telemetry::RowSummary), ApiError> {
    let signature = served.signature();
    let first_id = log.allocate_ids(batch as u64);
    let named_inputs: Vec<(&str, &outpost_shared::Tensor)> =
        signature.inputs.iter().map(|s| s.name.as_str()).zip(inputs).collect();
    let named_outputs: Vec<(&str, &outpost_shared::Tensor)> =
        signature.outputs.iter().map(|s| s.name.as_str()).zip(outputs).collect();
    let info = RequestInfo {
        model: &served.name,
        version: &served.version,
        slot,
        latency_us: u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX),
        record_inputs: served.record_inputs,
    };
    let records = records_for_request(first_id, batch, &info, &named_inputs, &named_outputs)
        .map_err(|e| ApiError::Internal(format!("cannot record prediction: {e}")))?;
    let prediction_ids = records.iter().map(|r| r.id).collect();
    let summary = crate::telemetry::RowSummary::from_records(&records);
    log.append(records).map_err(|e| ApiError::Internal(format!("cannot record prediction: {e}")))?;
    Ok((ResponseParameters { prediction_ids }, summary))
}

/// Labels and scores of a request's rows, without recording them.
fn summary_of(
    served: &ServedModel,
    slot: Slot,
    batch: usize,
    outputs: &[outpost_shared::Tensor],
) -> Result<crate::telemetry::RowSummary, ApiError> {
    let named_outputs: Vec<(&str, &outpost_shared::Tensor)> =
        served.signature().outputs.iter().map(|s| s.name.as_str()).zip(outputs).collect();
    let info = RequestInfo {
        model: &served.name,
        version: &served.version,
        slot,
        latency_us: 0,
        record_inputs: RecordInputs::Drop,
    };
    let records = records_for_request(0, batch, &info, &[], &named_outputs)
        .map_err(|e| ApiError::Internal(format!("cannot read the predictions: {e}")))?;
    Ok(crate::telemetry::RowSummary::from_records(&records))
}

fn bool_param(params: Option<&Map<String, Value>>, key: &str, what: &str) -> Result<Option<bool>, ApiError> {
    match params.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ApiError::BadRequest(format!(
            "{what} parameter `{key}` must be true or false, found {other}"
        ))),
    }
}

fn malformed(e: &serde_json::Error, json: &[u8]) -> ApiError {
    let mut message = format!("malformed inference request: {e}");
    if e.is_syntax() && [&b"NaN"[..], b"Infinity"].iter().any(|t| json.windows(t.len()).any(|w| w == *t)) {
        message.push_str(" (JSON has no NaN or Infinity literals; send such values as binary tensor data)");
    }
    ApiError::BadRequest(message)
}

/// Decodes a request, runs the model, records the predictions (when a log is given), and
/// encodes the response.
/// The request's `id`, read without decoding its tensors (for a sticky canary split).
pub fn request_id(body: &[u8], header_len: Option<usize>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Peek {
        #[serde(default)]
        id: Option<String>,
    }
    let json = match header_len {
        Some(n) => body.get(..n)?,
        None => body,
    };
    serde_json::from_slice::<Peek>(json).ok()?.id
}

pub fn handle(
    served: &ServedModel,
    slot: Slot,
    body: &[u8],
    header_len: Option<usize>,
    log: Option<&PredictionLog>,
    summarize: bool,
) -> Result<Encoded, ApiError> {
    let job_started = Instant::now();
    let (json, binary) = match header_len {
        Some(n) if n > body.len() => {
            return Err(ApiError::BadRequest(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            )));
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let request: InferRequest = serde_json::from_slice(json).map_err(|e| malformed(&e, json))?;
    if request.inputs.is_empty() {
        return Err(ApiError::BadRequest("request has no inputs".into()));
    }

    // Check names, datatypes and shapes against the signature before touching any data.
    let mut datatypes = Vec::with_capacity(request.inputs.len());
    let mut shapes = Vec::with_capacity(request.inputs.len());
    for input in &request.inputs {
        let datatype = DataType::from_v2_name(&input.datatype).ok_or_else(|| {
            let known: Vec<&str> = DataType::ALL.iter().map(|d| d.v2_name()).collect();
            ApiError::BadRequest(format!(
                "input `{}` has datatype `{}`, which the agent does not serve (it serves {})",
                input.name,
                input.datatype,
                known.join(", ")
            ))
        })?;
        let shape =
            input.shape.iter().map(|&d| usize::try_from(d)).collect::<Result<Vec<usize>, _>>().map_err(
                |_| {
                    ApiError::BadRequest(format!(
                        "input `{}` has a negative dimension in shape {:?}",
                        input.name, input.shape
                    ))
                },
            )?;
        datatypes.push(datatype);
        shapes.push(shape);
    }
    let provided: Vec<ProvidedInput<'_>> = request
        .inputs
        .iter()
        .zip(&datatypes)
        .zip(&shapes)
        .map(|((input, &datatype), shape)| ProvidedInput { name: &input.name, datatype, shape })
        .collect();
    let order = served.signature().check_inputs(&provided)?;

    // Convert the data: binary inputs consume the bytes after the JSON header in order.
    let mut cursor = 0usize;
    let mut tensors = Vec::with_capacity(request.inputs.len());
    for ((input, &datatype), shape) in request.inputs.iter().zip(&datatypes).zip(&shapes) {
        let binary_size = match input.parameters.as_ref().and_then(|p| p.get("binary_data_size")) {
            None => None,
            Some(v) => Some(v.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "input `{}` parameter `binary_data_size` must be a non-negative integer, found {v}",
                    input.name
                ))
            })?),
        };
        let tensor = match (binary_size, &input.data) {
            (Some(_), Some(_)) => {
                return Err(ApiError::BadRequest(format!(
                    "input `{}` has both `data` and `binary_data_size`; send one",
                    input.name
                )));
            }
            (Some(size), None) => {
                let end = cursor.checked_add(size).filter(|&end| end <= binary.len()).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "input `{}` declares {size} bytes of binary data but only {} remain after the JSON header",
                        input.name,
                        binary.len() - cursor
                    ))
                })?;
                let bytes = &binary[cursor..end];
                cursor = end;
                tensor_from_le_bytes(datatype, shape, bytes).map_err(|e| bad_tensor(&input.name, e))?
            }
            (None, Some(data)) => {
                tensor_from_json(datatype, shape, data).map_err(|e| bad_tensor(&input.name, e))?
            }
            (None, None) => {
                return Err(ApiError::BadRequest(format!(
                    "input `{}` has no `data` (and no `binary_data_size` parameter)",
                    input.name
                )));
            }
        };
        if served.nan_policy == NanPolicy::Reject
            && let Some((index, value)) = first_non_finite(&tensor)
        {
            return Err(ApiError::BadRequest(format!(
                "input `{}` element {index} is {value}; model `{}` rejects NaN and infinite values (nan_policy = \"reject\")",
                input.name, served.name
            )));
        }
        tensors.push(Some(tensor));
    }
    if cursor != binary.len() {
        return Err(ApiError::BadRequest(format!(
            "body has {} bytes of binary data after the JSON header but the inputs declare {cursor}",
            binary.len()
        )));
    }

    // Which outputs, in which form.
    let default_binary =
        bool_param(request.parameters.as_ref(), "binary_data_output", "request")?.unwrap_or(false);
    let signature = served.signature();
    let selected: Vec<(usize, bool)> = match &request.outputs {
        None => (0..signature.outputs.len()).map(|i| (i, default_binary)).collect(),
        Some(requested) => {
            let mut selected: Vec<(usize, bool)> = Vec::with_capacity(requested.len());
            for output in requested {
                let index = signature.output_index(&output.name).ok_or_else(|| {
                    let names: Vec<&str> = signature.outputs.iter().map(|o| o.name.as_str()).collect();
                    ApiError::BadRequest(format!(
                        "model has no output named `{}` (its outputs: {})",
                        output.name,
                        names.join(", ")
                    ))
                })?;
                if selected.iter().any(|(i, _)| *i == index) {
                    return Err(ApiError::BadRequest(format!(
                        "output `{}` is requested more than once",
                        output.name
                    )));
                }
                let binary = bool_param(
                    output.parameters.as_ref(),
                    "binary_data",
                    &format!("output `{}`", output.name),
                )?
                .unwrap_or(default_binary);
                selected.push((index, binary));
            }
            selected
        }
    };

    let ordered = order
        .iter()
        .map(|&i| tensors[i].take())
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| ApiError::Internal("input mapped twice".into()))?;
    // The log keeps the inputs unless the model's policy drops them; keep a copy for it.
    let batch = ordered.first().map_or(1, batch_rows);
    let kept_inputs = match log {
        Some(_) if served.record_inputs != RecordInputs::Drop => ordered.clone(),
        _ => Vec::new(),
    };
    // The drift window needs the first input too (a copy only when the log did not keep one).
    let drift_input = match &served.drift {
        Some(_) if kept_inputs.is_empty() => ordered.first().cloned(),
        _ => None,
    };
    let started = Instant::now();
    let outputs = served.model.run(ordered).map_err(|e| ApiError::Internal(e.to_string()))?;
    let compute = started.elapsed();
    if let Some(monitor) = &served.drift
        && let Some(input) = drift_input.as_ref().or(kept_inputs.first())
    {
        monitor.observe(std::slice::from_ref(input), &outputs);
    }

    let (parameters, summary) = match log {
        Some(log) => {
            let (parameters, summary) =
                record(served, slot, log, batch, &kept_inputs, &outputs, job_started.elapsed())?;
            (Some(parameters), Some(summary))
        }
        // Not logged (the log is off, or a shadow run), but its predictions are compared.
        None if summarize => (None, Some(summary_of(served, slot, batch, &outputs)?)),
        None => (None, None),
    };

    let mut binary_out: Vec<u8> = Vec::new();
    let mut response_outputs = Vec::with_capacity(selected.len());
    for &(index, as_binary) in &selected {
        let spec = &signature.outputs[index];
        let tensor = outputs
            .get(index)
            .ok_or_else(|| ApiError::Internal(format!("model produced no output `{}`", spec.name)))?;
        let (parameters, data) = if as_binary {
            let bytes = tensor_to_le_bytes(tensor).map_err(|e| ApiError::Internal(e.to_string()))?;
            let size = bytes.len();
            binary_out.extend_from_slice(&bytes);
            (Some(BinaryParameters { binary_data_size: size }), None)
        } else {
            (None, Some(JsonData(tensor)))
        };
        response_outputs.push(ResponseOutput {
            name: &spec.name,
            datatype: spec.datatype.v2_name(),
            shape: tensor.shape(),
            parameters,
            data,
        });
    }
    let response = InferResponse {
        model_name: &served.name,
        model_version: &served.version,
        id: request.id.as_deref(),
        parameters,
        outputs: response_outputs,
    };
    let mut body = serde_json::to_vec(&response)
        .map_err(|e| ApiError::Internal(format!("cannot encode response: {e}")))?;
    let json_len = if selected.iter().any(|&(_, b)| b) {
        let n = body.len();
        body.extend_from_slice(&binary_out);
        Some(n)
    } else {
        None
    };
    Ok(Encoded { body, json_len, compute, summary })
}
