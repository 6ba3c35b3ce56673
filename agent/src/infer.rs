//! The inference pipeline: one V2 request decoded, checked against the model's signature,
//! run on tract, recorded in the prediction log, summarised for telemetry, and encoded as the
//! response ([`run`]). Every way it can fail is an [`InferError`] in the client's terms;
//! `api::error` maps them to statuses.
//!
//! Runs on an inference worker, never on the async executor: this is where the CPU goes.
//! With Triton's binary tensor data extension the body is `JSON header ‖ binary tensors`;
//! the `Inference-Header-Content-Length` header gives the JSON length, each binary input
//! declares `parameters.binary_data_size`, and outputs asked for with
//! `parameters.binary_data` (or request-level `binary_data_output`) come back the same way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_shared::protocol::vocab::Slot;
use outpost_shared::runtime::{InputError, ProvidedInput};
use outpost_shared::tensor::{
    JsonData, TensorError, first_non_finite, tensor_from_json, tensor_from_le_bytes, tensor_to_le_bytes,
};
use outpost_shared::{DataType, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::batching::{Finish, Leader, Pending, Ran};
use crate::config::{NanPolicy, RecordInputs};
use crate::models::ServedModel;
use crate::prediction_log::{PredictionLog, RequestInfo, batch_rows, records_for_request};
use crate::telemetry::RowSummary;

/// Why one inference request failed. The first group is the client's mistake (a 400); the
/// rest are the agent's own failures (a 500). Messages name the input or output concerned.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("Inference-Header-Content-Length is {declared} but the body has only {body} bytes")]
    HeaderLength { declared: usize, body: usize },
    #[error("malformed inference request: {detail}{}", if *.nan_literal { " (JSON has no NaN or Infinity literals; send such values as binary tensor data)" } else { "" })]
    Malformed { detail: String, nan_literal: bool },
    #[error("request has no inputs")]
    NoInputs,
    #[error("input `{input}` has datatype `{datatype}`, which the agent does not serve (it serves {served})")]
    UnknownDatatype { input: String, datatype: String, served: String },
    #[error("input `{input}` has a negative dimension in shape {shape:?}")]
    NegativeDimension { input: String, shape: Vec<i64> },
    #[error(transparent)]
    Signature(#[from] InputError),
    #[error("input `{input}` parameter `binary_data_size` must be a non-negative integer, found {found}")]
    BinarySizeParameter { input: String, found: Value },
    #[error("input `{input}` has both `data` and `binary_data_size`; send one")]
    DataAndBinary { input: String },
    #[error(
        "input `{input}` declares {declared} bytes of binary data but only {remaining} remain after the JSON header"
    )]
    BinaryShort { input: String, declared: usize, remaining: usize },
    #[error("input `{input}` has no `data` (and no `binary_data_size` parameter)")]
    NoData { input: String },
    #[error("input `{input}`: {source}")]
    Tensor { input: String, source: TensorError },
    #[error(
        "input `{input}` element {index} is {value}; model `{model}` rejects NaN and infinite values (nan_policy = \"reject\")"
    )]
    NonFinite { input: String, index: usize, value: f64, model: String },
    #[error("body has {body} bytes of binary data after the JSON header but the inputs declare {declared}")]
    BinaryLeftover { body: usize, declared: usize },
    #[error("{what} parameter `{key}` must be true or false, found {found}")]
    BoolParameter { what: String, key: &'static str, found: Value },
    #[error("model has no output named `{output}` (its outputs: {outputs})")]
    UnknownOutput { output: String, outputs: String },
    #[error("output `{output}` is requested more than once")]
    DuplicateOutput { output: String },
    /// tract failed on inputs that fit the signature.
    #[error("{0}")]
    Model(String),
    #[error("model produced no output `{0}`")]
    MissingOutput(String),
    #[error("cannot record prediction: {0}")]
    Record(String),
    #[error("cannot encode response: {0}")]
    Encode(String),
}

impl InferError {
    /// Whether the request was at fault (400) rather than the agent (500).
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            InferError::Model(_)
                | InferError::MissingOutput(_)
                | InferError::Record(_)
                | InferError::Encode(_)
        )
    }
}

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

/// A served request: the encoded response body and what telemetry needs of it.
#[derive(Debug)]
pub struct Encoded {
    pub body: Vec<u8>,
    /// Length of the JSON part when binary outputs follow it.
    pub json_len: Option<usize>,
    /// Time tract spent computing.
    pub compute: Duration,
    /// Rows, scores and labels for the telemetry window (when the prediction log is on, or
    /// a shadow run is compared).
    pub summary: Option<RowSummary>,
    /// With `prediction_log.durability = "sync"`: resolves once this request's records are
    /// on disk; the answer waits for it.
    pub durable: Option<crate::prediction_log::Durable>,
}

/// Hands one record per row to the prediction log; returns the ids for the response (none
/// when no id could be reserved: the request is answered unlogged) and, under `sync`
/// durability, what to wait on before answering.
fn record(
    served: &ServedModel,
    slot: Slot,
    log: &PredictionLog,
    batch: usize,
    inputs: &[Tensor],
    outputs: &[(&str, &Tensor)],
    elapsed: Duration,
) -> Result<Option<(ResponseParameters, Option<crate::prediction_log::Durable>)>, InferError> {
    // No id could be reserved durably (a full or failing disk): answered, not logged.
    let Some(first_id) = log.allocate_ids(batch as u64) else { return Ok(None) };
    let named_inputs: Vec<(&str, &Tensor)> =
        served.signature().inputs.iter().map(|s| s.name.as_str()).zip(inputs).collect();
    let info = RequestInfo {
        model: &served.name,
        version: &served.version,
        slot,
        latency_us: u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX),
        record_inputs: served.record_inputs,
    };
    let records = records_for_request(first_id, batch, &info, &named_inputs, outputs)
        .map_err(|e| InferError::Record(e.to_string()))?;
    let prediction_ids = records.iter().map(|r| r.id).collect();
    let durable = match log.durability() {
        crate::prediction_log::Durability::Batch => {
            log.append(records).map_err(|e| InferError::Record(e.to_string()))?;
            None
        }
        crate::prediction_log::Durability::Sync => {
            Some(log.append_durable(records).map_err(|e| InferError::Record(e.to_string()))?)
        }
    };
    Ok(Some((ResponseParameters { prediction_ids }, durable)))
}

fn bool_param(
    params: Option<&Map<String, Value>>,
    key: &'static str,
    what: &str,
) -> Result<Option<bool>, InferError> {
    match params.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(InferError::BoolParameter { what: what.to_owned(), key, found: other.clone() }),
    }
}

fn malformed(e: &serde_json::Error, json: &[u8]) -> InferError {
    let nan_literal =
        e.is_syntax() && [&b"NaN"[..], b"Infinity"].iter().any(|t| json.windows(t.len()).any(|w| w == *t));
    InferError::Malformed { detail: e.to_string(), nan_literal }
}

/// A request body as it arrived: JSON, or a JSON header of `header_len` bytes followed by
/// binary tensor data (the `Inference-Header-Content-Length` extension).
#[derive(Debug, Clone, Copy)]
pub struct Body<'a> {
    pub bytes: &'a [u8],
    pub header_len: Option<usize>,
}

impl Body<'_> {
    /// The request's `id`, read without decoding its tensors (for a sticky canary split).
    pub fn request_id(&self) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Peek {
            #[serde(default)]
            id: Option<String>,
        }
        let json = match self.header_len {
            Some(n) => self.bytes.get(..n)?,
            None => self.bytes,
        };
        serde_json::from_slice::<Peek>(json).ok()?.id
    }
}

/// A request decoded and checked against the model, ready to run.
#[derive(Debug)]
pub struct Prepared {
    started: Instant,
    request_id: Option<String>,
    /// Outputs to answer with, as (index in the signature, as binary data).
    selected: Vec<(usize, bool)>,
    /// Inputs in the model's order.
    inputs: Vec<Tensor>,
    /// Rows in the request (the inputs' first dimension).
    rows: usize,
}

/// Decodes a request, runs the model, records the predictions (when a log is given), and
/// encodes the response. `summarize` asks for the rows' summary without a log (a shadow run).
pub fn run(
    served: &ServedModel,
    slot: Slot,
    body: Body<'_>,
    log: Option<&PredictionLog>,
    summarize: bool,
) -> Result<Encoded, InferError> {
    let prepared = prepare(served, body)?;
    run_prepared(served, slot, prepared, log, summarize)
}

/// Runs a prepared request alone.
fn run_prepared(
    served: &ServedModel,
    slot: Slot,
    mut prepared: Prepared,
    log: Option<&PredictionLog>,
    summarize: bool,
) -> Result<Encoded, InferError> {
    let inputs = std::mem::take(&mut prepared.inputs);
    // The log keeps the inputs unless the model's policy drops them; keep a copy for it.
    let kept_inputs = match log {
        Some(_) if served.record_inputs != RecordInputs::Drop => inputs.clone(),
        _ => Vec::new(),
    };
    // The drift window needs the first input too (a copy only when the log did not keep one).
    let drift_input = match &served.drift {
        Some(_) if kept_inputs.is_empty() => inputs.first().cloned(),
        _ => None,
    };
    let started = Instant::now();
    let outputs = served.model.run(inputs).map_err(|e| InferError::Model(e.to_string()))?;
    let compute = started.elapsed();
    let ran = Ran { inputs: kept_inputs, outputs, compute };
    finish(served, slot, prepared, ran, drift_input.as_ref(), log, summarize)
}

/// Where a request's answer goes: the worker's reply to the handler waiting for it.
pub type Answer = Box<dyn FnOnce(Result<Encoded, InferError>) + Send>;

/// Decodes a request and answers it through `answer`: at once when it runs alone, or — when its
/// model batches and the request is smaller than a batch — once its batch ran (see
/// [`crate::batching`]), which this worker leads (see [`Leader`]) when no other worker is
/// gathering it. Either way the waiting handler is woken once.
pub fn handle(
    served: &Arc<ServedModel>,
    slot: Slot,
    body: Body<'_>,
    log: Option<&Arc<PredictionLog>>,
    summarize: bool,
    leader: Leader<'_>,
    answer: Answer,
) {
    let prepared = match prepare(served, body) {
        Ok(prepared) => prepared,
        Err(e) => return answer(Err(e)),
    };
    let Some(batcher) = served.batcher.as_ref().filter(|b| b.takes(prepared.rows)) else {
        return answer(run_prepared(served, slot, prepared, log.map(Arc::as_ref), summarize));
    };
    let mut prepared = prepared;
    let inputs = std::mem::take(&mut prepared.inputs);
    let rows = prepared.rows;
    let (model, log) = (Arc::clone(served), log.cloned());
    let finish_one: Finish = Box::new(move |result: Result<Ran, String>| {
        answer(result.map_err(InferError::Model).and_then(|ran| {
            // The log keeps the inputs unless the model's policy drops them; the drift window
            // reads the first one either way.
            let keep = log.is_some() && model.record_inputs != RecordInputs::Drop;
            let Ran { inputs, outputs, compute } = ran;
            let (kept, first) = if keep { (inputs, None) } else { (Vec::new(), inputs.into_iter().next()) };
            let ran = Ran { inputs: kept, outputs, compute };
            finish(&model, slot, prepared, ran, first.as_ref(), log.as_deref(), summarize)
        }));
    });
    let run = |joined: Vec<Tensor>| served.model.run(joined).map_err(|e| e.to_string());
    batcher.submit(Pending { inputs, rows, finish: finish_one }, &run, leader);
}

/// Decodes a request and checks it against the model's signature, converting its data.
pub fn prepare(served: &ServedModel, body: Body<'_>) -> Result<Prepared, InferError> {
    let Body { bytes: body, header_len } = body;
    let job_started = Instant::now();
    let (json, binary) = match header_len {
        Some(n) if n > body.len() => return Err(InferError::HeaderLength { declared: n, body: body.len() }),
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let request: InferRequest = serde_json::from_slice(json).map_err(|e| malformed(&e, json))?;
    if request.inputs.is_empty() {
        return Err(InferError::NoInputs);
    }

    // Check names, datatypes and shapes against the signature before touching any data.
    let mut datatypes = Vec::with_capacity(request.inputs.len());
    let mut shapes = Vec::with_capacity(request.inputs.len());
    for input in &request.inputs {
        let datatype = DataType::from_v2_name(&input.datatype).ok_or_else(|| {
            let known: Vec<&str> = DataType::ALL.iter().map(|d| d.v2_name()).collect();
            InferError::UnknownDatatype {
                input: input.name.clone(),
                datatype: input.datatype.clone(),
                served: known.join(", "),
            }
        })?;
        let shape =
            input.shape.iter().map(|&d| usize::try_from(d)).collect::<Result<Vec<usize>, _>>().map_err(
                |_| InferError::NegativeDimension { input: input.name.clone(), shape: input.shape.clone() },
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
                InferError::BinarySizeParameter { input: input.name.clone(), found: v.clone() }
            })?),
        };
        let tensor = match (binary_size, &input.data) {
            (Some(_), Some(_)) => return Err(InferError::DataAndBinary { input: input.name.clone() }),
            (Some(size), None) => {
                let end = cursor.checked_add(size).filter(|&end| end <= binary.len()).ok_or_else(|| {
                    InferError::BinaryShort {
                        input: input.name.clone(),
                        declared: size,
                        remaining: binary.len() - cursor,
                    }
                })?;
                let bytes = &binary[cursor..end];
                cursor = end;
                tensor_from_le_bytes(datatype, shape, bytes).map_err(|e| bad_tensor(&input.name, e))?
            }
            (None, Some(data)) => {
                tensor_from_json(datatype, shape, data).map_err(|e| bad_tensor(&input.name, e))?
            }
            (None, None) => return Err(InferError::NoData { input: input.name.clone() }),
        };
        if served.nan_policy == NanPolicy::Reject
            && let Some((index, value)) = first_non_finite(&tensor)
        {
            return Err(InferError::NonFinite {
                input: input.name.clone(),
                index,
                value,
                model: served.name.clone(),
            });
        }
        tensors.push(Some(tensor));
    }
    if cursor != binary.len() {
        return Err(InferError::BinaryLeftover { body: binary.len(), declared: cursor });
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
                    InferError::UnknownOutput { output: output.name.clone(), outputs: names.join(", ") }
                })?;
                if selected.iter().any(|(i, _)| *i == index) {
                    return Err(InferError::DuplicateOutput { output: output.name.clone() });
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

    let inputs = order
        .iter()
        .map(|&i| tensors[i].take())
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| InferError::Model("an input was mapped to the model twice".into()))?;
    let rows = inputs.first().map_or(1, batch_rows);
    Ok(Prepared { started: job_started, request_id: request.id, selected, inputs, rows })
}

/// Records, summarises and encodes a request whose model ran. `drift_input` is the first
/// input when `ran.inputs` does not hold it (the drift window reads it).
fn finish(
    served: &ServedModel,
    slot: Slot,
    prepared: Prepared,
    ran: Ran,
    drift_input: Option<&Tensor>,
    log: Option<&PredictionLog>,
    summarize: bool,
) -> Result<Encoded, InferError> {
    let Prepared { started: job_started, request_id, selected, rows: batch, .. } = prepared;
    let Ran { inputs: kept_inputs, outputs, compute } = ran;
    if let Some(monitor) = &served.drift
        && let Some(input) = drift_input.or(kept_inputs.first())
    {
        monitor.observe(std::slice::from_ref(input), &outputs);
    }
    let signature = served.signature();
    let named_outputs: Vec<(&str, &Tensor)> =
        signature.outputs.iter().map(|s| s.name.as_str()).zip(&outputs).collect();
    // The telemetry window's view of the rows, read from the output tensors themselves.
    let summary = (log.is_some() || summarize).then(|| RowSummary::from_outputs(&named_outputs, batch));
    let (parameters, durable) = match log {
        Some(log) => {
            match record(served, slot, log, batch, &kept_inputs, &named_outputs, job_started.elapsed())? {
                Some((parameters, durable)) => (Some(parameters), durable),
                None => (None, None),
            }
        }
        None => (None, None),
    };

    let mut binary_out: Vec<u8> = Vec::new();
    let mut response_outputs = Vec::with_capacity(selected.len());
    for &(index, as_binary) in &selected {
        let spec = &signature.outputs[index];
        let tensor = outputs.get(index).ok_or_else(|| InferError::MissingOutput(spec.name.clone()))?;
        let (parameters, data) = if as_binary {
            let bytes = tensor_to_le_bytes(tensor).map_err(|e| InferError::Encode(e.to_string()))?;
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
        id: request_id.as_deref(),
        parameters,
        outputs: response_outputs,
    };
    let mut body = serde_json::to_vec(&response).map_err(|e| InferError::Encode(e.to_string()))?;
    let json_len = if selected.iter().any(|&(_, b)| b) {
        let n = body.len();
        body.extend_from_slice(&binary_out);
        Some(n)
    } else {
        None
    };
    Ok(Encoded { body, json_len, compute, summary, durable })
}

fn bad_tensor(input: &str, source: TensorError) -> InferError {
    InferError::Tensor { input: input.to_owned(), source }
}
