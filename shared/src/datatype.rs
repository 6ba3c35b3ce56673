//! Tensor element types as the Open Inference Protocol (V2) names them (`FP32`, `INT64`, …),
//! and their mapping to tract's datum types. Only the types listed here can be served: a model
//! whose inputs or outputs use another type is refused when it loads.

use std::fmt;

use tract_onnx::prelude::DatumType;

/// A tensor element type the agent can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F32,
    F64,
}

impl DataType {
    /// Every supported type, in the order error messages list them.
    pub const ALL: [DataType; 11] = [
        DataType::Bool,
        DataType::U8,
        DataType::U16,
        DataType::U32,
        DataType::U64,
        DataType::I8,
        DataType::I16,
        DataType::I32,
        DataType::I64,
        DataType::F32,
        DataType::F64,
    ];

    /// The name the V2 protocol uses on the wire.
    pub fn v2_name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::U8 => "UINT8",
            DataType::U16 => "UINT16",
            DataType::U32 => "UINT32",
            DataType::U64 => "UINT64",
            DataType::I8 => "INT8",
            DataType::I16 => "INT16",
            DataType::I32 => "INT32",
            DataType::I64 => "INT64",
            DataType::F32 => "FP32",
            DataType::F64 => "FP64",
        }
    }

    /// Parses a V2 datatype name (exact, upper case as the protocol writes it).
    pub fn from_v2_name(name: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|dt| dt.v2_name() == name)
    }

    /// Bytes per element in the binary tensor data extension (BOOL is one byte).
    pub fn size_bytes(self) -> usize {
        match self {
            DataType::Bool | DataType::U8 | DataType::I8 => 1,
            DataType::U16 | DataType::I16 => 2,
            DataType::U32 | DataType::I32 | DataType::F32 => 4,
            DataType::U64 | DataType::I64 | DataType::F64 => 8,
        }
    }

    /// Whether values of this type can be NaN or infinite.
    pub fn is_float(self) -> bool {
        matches!(self, DataType::F32 | DataType::F64)
    }

    /// The tract datum type for this element type.
    pub fn datum_type(self) -> DatumType {
        match self {
            DataType::Bool => DatumType::Bool,
            DataType::U8 => DatumType::U8,
            DataType::U16 => DatumType::U16,
            DataType::U32 => DatumType::U32,
            DataType::U64 => DatumType::U64,
            DataType::I8 => DatumType::I8,
            DataType::I16 => DatumType::I16,
            DataType::I32 => DatumType::I32,
            DataType::I64 => DatumType::I64,
            DataType::F32 => DatumType::F32,
            DataType::F64 => DatumType::F64,
        }
    }

    /// The element type for a tract datum type, if the agent can serve it.
    pub fn from_datum_type(dt: DatumType) -> Option<DataType> {
        DataType::ALL.into_iter().find(|t| t.datum_type() == dt)
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.v2_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_names_round_trip_and_are_unique() {
        for dt in DataType::ALL {
            assert_eq!(DataType::from_v2_name(dt.v2_name()), Some(dt));
            assert_eq!(DataType::from_datum_type(dt.datum_type()), Some(dt));
        }
        assert_eq!(DataType::from_v2_name("fp32"), None);
        assert_eq!(DataType::from_v2_name("BYTES"), None);
    }
}
