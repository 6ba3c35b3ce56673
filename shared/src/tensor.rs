//! Conversions between Open Inference Protocol (V2) tensor data and tract tensors.
//!
//! V2 JSON carries a tensor's elements as a flat or nested JSON array in row-major order; the
//! binary tensor data extension carries them as little-endian bytes (BOOL as one byte, 0 or 1).
//! Every conversion checks what it is given — element count against shape, value range against
//! datatype — and names the offending element, because this is where outside data enters.

use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_json::Value;
use tract_onnx::prelude::{Datum, Tensor};

use crate::datatype::DataType;

/// What is wrong with a tensor's data.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TensorError {
    #[error("shape {shape:?} has more elements than this machine can address")]
    ShapeOverflow { shape: Vec<usize> },
    #[error("data has {found} elements but shape {shape:?} needs {expected}")]
    CountMismatch { shape: Vec<usize>, expected: usize, found: usize },
    #[error("binary data has {found} bytes but shape {shape:?} of {datatype} needs {expected}")]
    ByteCountMismatch { shape: Vec<usize>, datatype: DataType, expected: usize, found: usize },
    #[error("element {index} ({value}) {reason} for {datatype}")]
    BadElement { index: usize, value: String, reason: &'static str, datatype: DataType },
    #[error("`data` must be a JSON array (flat or nested), found {found}")]
    NotAnArray { found: &'static str },
    #[error("tensor has element type {0}, which the agent does not serve")]
    UnsupportedType(String),
    #[error("tensor storage error: {0}")]
    Storage(String),
}

/// Number of elements a shape holds, refusing overflow.
pub fn element_count(shape: &[usize]) -> Result<usize, TensorError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| TensorError::ShapeOverflow { shape: shape.to_vec() })
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Collects the leaves of a flat or nested JSON array in row-major order. Stops as soon as
/// there are more leaves than `limit`, so an oversized array costs no more than `limit`.
fn flatten<'a>(data: &'a Value, out: &mut Vec<&'a Value>, limit: usize) {
    match data {
        Value::Array(items) => {
            for item in items {
                if out.len() > limit {
                    return;
                }
                flatten(item, out, limit);
            }
        }
        leaf => out.push(leaf),
    }
}

enum Leaf {
    NotNumber,
    NotInteger,
    NotBool,
    OutOfRange,
}

impl Leaf {
    fn reason(&self) -> &'static str {
        match self {
            Leaf::NotNumber => "is not a number",
            Leaf::NotInteger => "is not an integer",
            Leaf::NotBool => "is not a boolean",
            Leaf::OutOfRange => "is out of range",
        }
    }
}

fn json_int<T: TryFrom<i64> + TryFrom<u64>>(v: &Value) -> Result<T, Leaf> {
    if let Some(i) = v.as_i64() {
        return T::try_from(i).map_err(|_| Leaf::OutOfRange);
    }
    if let Some(u) = v.as_u64() {
        return T::try_from(u).map_err(|_| Leaf::OutOfRange);
    }
    match v.as_f64() {
        // JSON has one number type: 3.0 is an acceptable integer, 3.5 is not.
        Some(f) if f.is_finite() && f.fract() == 0.0 => {
            if (-9.2e18..=9.2e18).contains(&f) {
                T::try_from(f as i64).map_err(|_| Leaf::OutOfRange)
            } else {
                Err(Leaf::OutOfRange)
            }
        }
        Some(_) => Err(Leaf::NotInteger),
        None => Err(Leaf::NotNumber),
    }
}

fn json_f32(v: &Value) -> Result<f32, Leaf> {
    let f = v.as_f64().ok_or(Leaf::NotNumber)?;
    let x = f as f32;
    if f.is_finite() && x.is_infinite() { Err(Leaf::OutOfRange) } else { Ok(x) }
}

fn json_f64(v: &Value) -> Result<f64, Leaf> {
    v.as_f64().ok_or(Leaf::NotNumber)
}

fn json_bool(v: &Value) -> Result<bool, Leaf> {
    v.as_bool().ok_or(Leaf::NotBool)
}

fn short(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 40 {
        let mut cut = 37;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

fn build<T: Datum + Copy>(
    shape: &[usize],
    leaves: &[&Value],
    datatype: DataType,
    conv: fn(&Value) -> Result<T, Leaf>,
) -> Result<Tensor, TensorError> {
    let mut values = Vec::with_capacity(leaves.len());
    for (index, v) in leaves.iter().enumerate() {
        let x = conv(v).map_err(|leaf| TensorError::BadElement {
            index,
            value: short(v),
            reason: leaf.reason(),
            datatype,
        })?;
        values.push(x);
    }
    Tensor::from_shape(shape, &values).map_err(|e| TensorError::Storage(format!("{e:#}")))
}

/// Builds a tensor from V2 JSON `data` (flat or nested array) for the given datatype and shape.
pub fn tensor_from_json(datatype: DataType, shape: &[usize], data: &Value) -> Result<Tensor, TensorError> {
    if !data.is_array() {
        return Err(TensorError::NotAnArray { found: json_kind(data) });
    }
    let expected = element_count(shape)?;
    let mut leaves = Vec::with_capacity(expected.min(1 << 20));
    flatten(data, &mut leaves, expected);
    if leaves.len() != expected {
        // An array cut short by `flatten` was longer than needed; say so without counting it all.
        let found = leaves.len();
        return Err(TensorError::CountMismatch { shape: shape.to_vec(), expected, found });
    }
    match datatype {
        DataType::Bool => build(shape, &leaves, datatype, json_bool),
        DataType::U8 => build::<u8>(shape, &leaves, datatype, json_int),
        DataType::U16 => build::<u16>(shape, &leaves, datatype, json_int),
        DataType::U32 => build::<u32>(shape, &leaves, datatype, json_int),
        DataType::U64 => build::<u64>(shape, &leaves, datatype, json_int),
        DataType::I8 => build::<i8>(shape, &leaves, datatype, json_int),
        DataType::I16 => build::<i16>(shape, &leaves, datatype, json_int),
        DataType::I32 => build::<i32>(shape, &leaves, datatype, json_int),
        DataType::I64 => build::<i64>(shape, &leaves, datatype, json_int),
        DataType::F32 => build(shape, &leaves, datatype, json_f32),
        DataType::F64 => build(shape, &leaves, datatype, json_f64),
    }
}

macro_rules! from_le {
    ($t:ty, $shape:expr, $bytes:expr) => {{
        let values: Vec<$t> = $bytes
            .chunks_exact(std::mem::size_of::<$t>())
            .map(|c| {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(c);
                <$t>::from_le_bytes(a)
            })
            .collect();
        Tensor::from_shape($shape, &values)
    }};
}

/// Builds a tensor from the binary tensor data extension's little-endian bytes.
pub fn tensor_from_le_bytes(
    datatype: DataType,
    shape: &[usize],
    bytes: &[u8],
) -> Result<Tensor, TensorError> {
    let count = element_count(shape)?;
    let expected = count
        .checked_mul(datatype.size_bytes())
        .ok_or_else(|| TensorError::ShapeOverflow { shape: shape.to_vec() })?;
    if bytes.len() != expected {
        return Err(TensorError::ByteCountMismatch {
            shape: shape.to_vec(),
            datatype,
            expected,
            found: bytes.len(),
        });
    }
    let tensor = match datatype {
        DataType::Bool => {
            let mut values = Vec::with_capacity(count);
            for (index, &b) in bytes.iter().enumerate() {
                match b {
                    0 => values.push(false),
                    1 => values.push(true),
                    other => {
                        return Err(TensorError::BadElement {
                            index,
                            value: other.to_string(),
                            reason: "is not a boolean (0 or 1)",
                            datatype,
                        });
                    }
                }
            }
            Tensor::from_shape(shape, &values)
        }
        DataType::U8 => Tensor::from_shape(shape, bytes),
        DataType::U16 => from_le!(u16, shape, bytes),
        DataType::U32 => from_le!(u32, shape, bytes),
        DataType::U64 => from_le!(u64, shape, bytes),
        DataType::I8 => from_le!(i8, shape, bytes),
        DataType::I16 => from_le!(i16, shape, bytes),
        DataType::I32 => from_le!(i32, shape, bytes),
        DataType::I64 => from_le!(i64, shape, bytes),
        DataType::F32 => from_le!(f32, shape, bytes),
        DataType::F64 => from_le!(f64, shape, bytes),
    };
    tensor.map_err(|e| TensorError::Storage(format!("{e:#}")))
}

/// The V2 datatype of a tensor, if the agent serves it.
pub fn datatype_of(tensor: &Tensor) -> Result<DataType, TensorError> {
    DataType::from_datum_type(tensor.datum_type())
        .ok_or_else(|| TensorError::UnsupportedType(format!("{:?}", tensor.datum_type())))
}

/// The elements of a tensor as a typed slice.
pub fn slice<T: Datum>(tensor: &Tensor) -> Result<&[T], TensorError> {
    tensor
        .try_as_plain_ram()
        .and_then(|view| view.as_slice::<T>())
        .map_err(|e| TensorError::Storage(format!("{e:#}")))
}

/// The tensor's elements as little-endian bytes, as the binary tensor data extension sends them.
pub fn tensor_to_le_bytes(tensor: &Tensor) -> Result<Vec<u8>, TensorError> {
    macro_rules! to_le {
        ($t:ty) => {
            slice::<$t>(tensor)?.iter().flat_map(|x| x.to_le_bytes()).collect()
        };
    }
    Ok(match datatype_of(tensor)? {
        DataType::Bool => slice::<bool>(tensor)?.iter().map(|&b| u8::from(b)).collect(),
        DataType::U8 => slice::<u8>(tensor)?.to_vec(),
        DataType::U16 => to_le!(u16),
        DataType::U32 => to_le!(u32),
        DataType::U64 => to_le!(u64),
        DataType::I8 => to_le!(i8),
        DataType::I16 => to_le!(i16),
        DataType::I32 => to_le!(i32),
        DataType::I64 => to_le!(i64),
        DataType::F32 => to_le!(f32),
        DataType::F64 => to_le!(f64),
    })
}

/// The first NaN or infinite element of a float tensor, as (flat index, value).
pub fn first_non_finite(tensor: &Tensor) -> Option<(usize, f64)> {
    match DataType::from_datum_type(tensor.datum_type())? {
        DataType::F32 => slice::<f32>(tensor)
            .ok()?
            .iter()
            .enumerate()
            .find(|(_, x)| !x.is_finite())
            .map(|(i, &x)| (i, f64::from(x))),
        DataType::F64 => {
            slice::<f64>(tensor).ok()?.iter().enumerate().find(|(_, x)| !x.is_finite()).map(|(i, &x)| (i, x))
        }
        _ => None,
    }
}

/// Serializes a tensor's elements as a flat JSON array (V2's `data`), without copying them.
/// Non-finite floats become `null`, as JSON has no NaN.
pub struct JsonData<'a>(pub &'a Tensor);

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        fn seq<S: Serializer, T: Serialize>(s: S, items: &[T]) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(items.len()))?;
            for item in items {
                seq.serialize_element(item)?;
            }
            seq.end()
        }
        let t = self.0;
        let err = |e: TensorError| serde::ser::Error::custom(e.to_string());
        match datatype_of(t).map_err(err)? {
            DataType::Bool => seq(serializer, slice::<bool>(t).map_err(err)?),
            DataType::U8 => seq(serializer, slice::<u8>(t).map_err(err)?),
            DataType::U16 => seq(serializer, slice::<u16>(t).map_err(err)?),
            DataType::U32 => seq(serializer, slice::<u32>(t).map_err(err)?),
            DataType::U64 => seq(serializer, slice::<u64>(t).map_err(err)?),
            DataType::I8 => seq(serializer, slice::<i8>(t).map_err(err)?),
            DataType::I16 => seq(serializer, slice::<i16>(t).map_err(err)?),
            DataType::I32 => seq(serializer, slice::<i32>(t).map_err(err)?),
            DataType::I64 => seq(serializer, slice::<i64>(t).map_err(err)?),
            DataType::F32 => seq(serializer, slice::<f32>(t).map_err(err)?),
            DataType::F64 => seq(serializer, slice::<f64>(t).map_err(err)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn nested_and_flat_json_give_the_same_tensor() {
        let flat = tensor_from_json(DataType::F32, &[2, 2], &json!([1, 2.5, 3, 4])).unwrap();
        let nested = tensor_from_json(DataType::F32, &[2, 2], &json!([[1, 2.5], [3, 4]])).unwrap();
        assert_eq!(flat, nested);
        assert_eq!(slice::<f32>(&flat).unwrap(), &[1.0, 2.5, 3.0, 4.0]);
    }

    #[test]
    fn rejects_wrong_element_count_naming_both_counts() {
        let err = tensor_from_json(DataType::F32, &[2, 3], &json!([1, 2, 3])).unwrap_err();
        assert_eq!(err.to_string(), "data has 3 elements but shape [2, 3] needs 6");
        let err = tensor_from_json(DataType::F32, &[1], &json!([1, 2, 3, 4, 5])).unwrap_err();
        assert!(matches!(err, TensorError::CountMismatch { expected: 1, .. }), "{err}");
    }

    #[test]
    fn rejects_non_numeric_elements_naming_the_index() {
        let err = tensor_from_json(DataType::F32, &[3], &json!([1, "x", 3])).unwrap_err();
        assert_eq!(err.to_string(), "element 1 (\"x\") is not a number for FP32");
        let err = tensor_from_json(DataType::I64, &[2], &json!([1, 2.5])).unwrap_err();
        assert_eq!(err.to_string(), "element 1 (2.5) is not an integer for INT64");
        let err = tensor_from_json(DataType::U8, &[1], &json!([256])).unwrap_err();
        assert_eq!(err.to_string(), "element 0 (256) is out of range for UINT8");
        let err = tensor_from_json(DataType::F32, &[1], &json!([1e39])).unwrap_err();
        assert!(err.to_string().contains("out of range for FP32"), "{err}");
        let err = tensor_from_json(DataType::F32, &[1], &json!({"a": 1})).unwrap_err();
        assert_eq!(err.to_string(), "`data` must be a JSON array (flat or nested), found an object");
    }

    #[test]
    fn binary_data_must_match_the_shape_exactly() {
        let err = tensor_from_le_bytes(DataType::F32, &[2], &[0u8; 7]).unwrap_err();
        assert_eq!(err.to_string(), "binary data has 7 bytes but shape [2] of FP32 needs 8");
        let err = tensor_from_le_bytes(DataType::Bool, &[2], &[1, 2]).unwrap_err();
        assert!(err.to_string().contains("element 1 (2) is not a boolean"), "{err}");
        let huge = [usize::MAX, 2];
        assert!(matches!(
            tensor_from_le_bytes(DataType::F32, &huge, &[]),
            Err(TensorError::ShapeOverflow { .. })
        ));
    }

    #[test]
    fn finds_the_first_non_finite_element() {
        let t = tensor_from_le_bytes(
            DataType::F32,
            &[3],
            &[1f32, f32::NAN, f32::INFINITY].iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>(),
        )
        .unwrap();
        let (index, value) = first_non_finite(&t).unwrap();
        assert_eq!(index, 1);
        assert!(value.is_nan());
        let ints = tensor_from_json(DataType::I32, &[1], &json!([1])).unwrap();
        assert_eq!(first_non_finite(&ints), None);
    }

    #[test]
    fn json_output_serializes_every_datatype() {
        let t = tensor_from_json(DataType::I64, &[2], &json!([-3, 7])).unwrap();
        assert_eq!(serde_json::to_string(&JsonData(&t)).unwrap(), "[-3,7]");
        let t = tensor_from_json(DataType::Bool, &[2], &json!([true, false])).unwrap();
        assert_eq!(serde_json::to_string(&JsonData(&t)).unwrap(), "[true,false]");
    }

    fn any_datatype() -> impl Strategy<Value = DataType> {
        proptest::sample::select(DataType::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn le_bytes_round_trip(dt in any_datatype(), rows in 0usize..6, cols in 1usize..5, seed in any::<u64>()) {
            let shape = [rows, cols];
            let n = rows * cols * dt.size_bytes();
            let mut bytes: Vec<u8> = (0..n).map(|i| (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64) >> 13) as u8).collect();
            if dt == DataType::Bool {
                bytes.iter_mut().for_each(|b| *b &= 1);
            }
            let t = tensor_from_le_bytes(dt, &shape, &bytes).unwrap();
            prop_assert_eq!(t.shape(), &shape[..]);
            prop_assert_eq!(tensor_to_le_bytes(&t).unwrap(), bytes);
        }

        #[test]
        fn arbitrary_bytes_never_panic(dt in any_datatype(), shape in proptest::collection::vec(0usize..1000, 0..4), bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = tensor_from_le_bytes(dt, &shape, &bytes);
        }

        #[test]
        fn json_f32_round_trips_through_output(values in proptest::collection::vec(-1e30f32..1e30f32, 1..20)) {
            let t = tensor_from_json(DataType::F32, &[values.len()], &serde_json::to_value(&values).unwrap()).unwrap();
            let back: Vec<f32> = serde_json::from_str(&serde_json::to_string(&JsonData(&t)).unwrap()).unwrap();
            prop_assert_eq!(back, values);
        }
    }
}
