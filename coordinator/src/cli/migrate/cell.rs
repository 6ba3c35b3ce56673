//! One value of a copied row, in the binary form `COPY … FROM STDIN (FORMAT binary)` takes for
//! its column's type (a value of another type is refused by the column, naming both).

use bytes::BytesMut;
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};

type BoxError = Box<dyn std::error::Error + Sync + Send>;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cell {
    Text(String),
    Int(i64),
    Int4(i32),
    SmallInt(i16),
    Bool(bool),
    Bytes(Vec<u8>),
    /// A JSON document, as text (read from sled as it was stored).
    Json(String),
    Null,
}

impl ToSql for Cell {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Cell::Text(v) => v.to_sql_checked(ty, out),
            Cell::Int(v) => v.to_sql_checked(ty, out),
            Cell::Int4(v) => v.to_sql_checked(ty, out),
            Cell::SmallInt(v) => v.to_sql_checked(ty, out),
            Cell::Bool(v) => v.to_sql_checked(ty, out),
            Cell::Bytes(v) => v.to_sql_checked(ty, out),
            Cell::Json(v) if *ty == Type::JSON => {
                // `json`'s binary form is its text.
                out.extend_from_slice(v.as_bytes());
                Ok(IsNull::No)
            }
            Cell::Json(_) => Err(format!("a JSON value for a column of type {ty}").into()),
            Cell::Null => Ok(IsNull::Yes),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Each variant checks its column's type itself (above).
        true
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_of_another_type_than_its_column_is_refused() {
        let mut out = BytesMut::new();
        assert!(Cell::Text("x".into()).to_sql(&Type::INT8, &mut out).is_err());
        assert!(Cell::Json("{}".into()).to_sql(&Type::TEXT, &mut out).is_err());
        assert!(Cell::Int(7).to_sql(&Type::INT8, &mut out).is_ok());
        assert_eq!(&out[..], &7i64.to_be_bytes());
    }
}
