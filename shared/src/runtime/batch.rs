//! Running several requests' rows as one model run (dynamic batching): which models can
//! ([`Signature::batch_dimension`]), joining the requests' inputs along the batch axis
//! ([`join_rows`]) and cutting the outputs back into each request's rows ([`split_rows`]).
//!
//! A model can be batched when every input and every output starts with the same free
//! dimension (the batch, `N`) and every other dimension has a fixed size: then requests that
//! passed [`Signature::check_inputs`] differ only in their row counts, and row `i` of an
//! output belongs to row `i` of the inputs.

use tract_onnx::prelude::Tensor;

use super::{Dim, RuntimeError, Signature};

impl Signature {
    /// The name of the batch dimension when the model can be run on several requests' rows at
    /// once, or why it cannot (naming the tensor and dimension at fault).
    pub fn batch_dimension(&self) -> Result<String, String> {
        let mut symbol: Option<&str> = None;
        for (kind, spec) in
            self.inputs.iter().map(|s| ("input", s)).chain(self.outputs.iter().map(|s| ("output", s)))
        {
            let first = match spec.shape.first() {
                Some(Dim::Symbol(s)) => s.as_str(),
                Some(other) => {
                    return Err(format!(
                        "{kind} `{}` has shape {}: its first dimension is {other}, not a free batch dimension",
                        spec.name,
                        spec.shape_string()
                    ));
                }
                None => return Err(format!("{kind} `{}` is a scalar: it has no batch dimension", spec.name)),
            };
            if let Some(known) = symbol
                && known != first
            {
                return Err(format!(
                    "{kind} `{}` starts with `{first}` but the first input starts with `{known}`",
                    spec.name
                ));
            }
            symbol = Some(first);
            if let Some((axis, dim)) =
                spec.shape.iter().enumerate().skip(1).find(|(_, d)| !matches!(d, Dim::Fixed(_)))
            {
                return Err(format!(
                    "{kind} `{}` has shape {}: dimension {axis} ({dim}) varies, so requests could not be joined",
                    spec.name,
                    spec.shape_string()
                ));
            }
        }
        symbol.map(str::to_owned).ok_or_else(|| "the model has no inputs".to_owned())
    }
}

/// Joins requests' inputs (each in the model's input order) along the batch axis: input `k`
/// of the result holds every request's input `k`, in request order.
pub fn join_rows(requests: &[&[Tensor]]) -> Result<Vec<Tensor>, RuntimeError> {
    let Some(first) = requests.first() else {
        return Err(RuntimeError::Run("a batch needs at least one request".into()));
    };
    (0..first.len())
        .map(|k| {
            let parts = requests
                .iter()
                .map(|inputs| {
                    inputs
                        .get(k)
                        .ok_or_else(|| RuntimeError::Run(format!("a request in the batch has no input {k}")))
                })
                .collect::<Result<Vec<&Tensor>, _>>()?;
            Tensor::stack_tensors(0, &parts)
                .map_err(|e| RuntimeError::Run(format!("cannot join input {k} of the batch: {e:#}")))
        })
        .collect()
}

/// Cuts a batch's outputs back into each request's share: `rows[j]` rows for request `j`, in
/// order. Every output must have exactly `rows.iter().sum()` rows.
pub fn split_rows(outputs: &[Tensor], rows: &[usize]) -> Result<Vec<Vec<Tensor>>, RuntimeError> {
    let total: usize = rows.iter().sum();
    for (k, output) in outputs.iter().enumerate() {
        let found = output.shape().first().copied();
        if found != Some(total) {
            return Err(RuntimeError::Run(format!(
                "output {k} of the batch has shape {:?}, not {total} rows: it cannot be split back",
                output.shape()
            )));
        }
    }
    let mut start = 0;
    rows.iter()
        .map(|&n| {
            let end = start + n;
            let part = outputs
                .iter()
                .map(|output| {
                    output
                        .slice(0, start, end)
                        .map_err(|e| RuntimeError::Run(format!("cannot split the batch's output: {e:#}")))
                })
                .collect::<Result<Vec<_>, _>>();
            start = end;
            part
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DataType, TensorSpec};

    fn spec(name: &str, shape: Vec<Dim>) -> TensorSpec {
        TensorSpec { name: name.into(), datatype: DataType::F32, shape }
    }

    fn n() -> Dim {
        Dim::Symbol("N".into())
    }

    #[test]
    fn a_model_batches_only_when_every_tensor_leads_with_one_free_dimension() {
        let ok = Signature {
            inputs: vec![spec("x", vec![n(), Dim::Fixed(30)])],
            outputs: vec![spec("label", vec![n()]), spec("p", vec![n(), Dim::Fixed(2)])],
        };
        assert_eq!(ok.batch_dimension().unwrap(), "N");

        let fixed = Signature { outputs: vec![spec("p", vec![Dim::Fixed(1), Dim::Fixed(2)])], ..ok.clone() };
        let why = fixed.batch_dimension().unwrap_err();
        assert!(why.contains("output `p`") && why.contains("first dimension is 1"), "{why}");

        let ragged = Signature { inputs: vec![spec("x", vec![n(), Dim::Symbol("T".into())])], ..ok.clone() };
        let why = ragged.batch_dimension().unwrap_err();
        assert!(why.contains("input `x`") && why.contains("dimension 1 (T) varies"), "{why}");

        let other = Signature { outputs: vec![spec("p", vec![Dim::Symbol("M".into())])], ..ok };
        assert!(other.batch_dimension().unwrap_err().contains("starts with `M`"));
    }

    #[test]
    fn joined_rows_split_back_into_each_requests_share() {
        let a = Tensor::from_shape(&[1, 2], &[1.0f32, 2.0]).unwrap();
        let b = Tensor::from_shape(&[2, 2], &[3.0f32, 4.0, 5.0, 6.0]).unwrap();
        let joined = join_rows(&[std::slice::from_ref(&a), std::slice::from_ref(&b)]).unwrap();
        assert_eq!(joined[0].shape(), &[3, 2]);
        let parts = split_rows(&joined, &[1, 2]).unwrap();
        assert_eq!(parts[0][0], a);
        assert_eq!(parts[1][0], b);
        let err = split_rows(&joined, &[1, 1]).unwrap_err().to_string();
        assert!(err.contains("not 2 rows"), "{err}");
    }
}
