//! JSON answers of the API → typed destination cells, and rows built by column name.
//!
//! Conversions follow the column's type in the catalog, so a stream says *which* field goes in
//! *which* column and never how: ISO-8601, `YYYY-MM-DD HH:MM:SS` and epoch-millisecond times all
//! become [`Value::Timestamp`]; `"ON"`/`"true"`/`1` become booleans; numeric strings become
//! numbers. Anything that does not fit becomes NULL rather than failing the sync (Qualtrics
//! answers are loosely typed; a stray value must not stop a table).

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde_json::Value as Json;
use xmbridge_destinations::{ColumnType, TableSpec, Text, ToText, Value};
use xmbridge_qualtrics::record::Field;

/// Epoch milliseconds of an API time: ISO-8601 with offset, `YYYY-MM-DD HH:MM:SS` (UTC),
/// `YYYY-MM-DD`, or a number of epoch milliseconds. `0000-00-00 …` (Qualtrics' "never") is None.
pub fn parse_time(v: &Json) -> Option<i64> {
    match v {
        Json::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Json::String(s) => {
            let s = s.trim();
            if s.is_empty() || s.starts_with("0000") {
                return None;
            }
            if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                return Some(t.timestamp_millis());
            }
            for f in [
                "%Y-%m-%d %H:%M:%S",
                "%Y-%m-%dT%H:%M:%S",
                "%Y-%m-%d %H:%M:%S%.f",
            ] {
                if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
                    return Some(t.and_utc().timestamp_millis());
                }
            }
            if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
                return d
                    .and_hms_opt(0, 0, 0)
                    .map(|t| t.and_utc().timestamp_millis());
            }
            s.parse::<i64>().ok()
        }
        _ => None,
    }
}

/// A JSON scalar as text (`"a"` → `a`, `5` → `5`, `true` → `true`); objects and arrays as JSON.
pub fn as_text(v: &Json) -> Option<String> {
    match v {
        Json::Null => None,
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        other => Some(other.to_string()),
    }
}

/// [`as_text`] of an export record's field (the same text for the same JSON), as a cell's
/// text: one per answer cell, so a short one is built in place, with no `String` in between.
pub fn field_text(v: &Field<'_>) -> Option<Text> {
    match v {
        Field::Null => None,
        Field::Str(s) => Some(Text::from(s.as_ref())),
        Field::Number(n) => Some(n.to_compact_string()),
        Field::Bool(b) => Some(Text::const_new(if *b { "true" } else { "false" })),
        other => Some(other.to_json().to_compact_string()),
    }
}

fn as_bool(v: &Json) -> Option<bool> {
    match v {
        Json::Bool(b) => Some(*b),
        Json::Number(n) => n.as_f64().map(|f| f != 0.0),
        Json::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" | "1" => Some(true),
            "false" | "off" | "no" | "0" | "" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn as_i64(v: &Json) -> Option<i64> {
    match v {
        Json::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Json::String(s) => {
            let s = s.trim();
            s.parse::<i64>()
                .ok()
                .or_else(|| s.parse::<f64>().ok().map(|f| f as i64))
        }
        Json::Bool(b) => Some(i64::from(*b)),
        _ => None,
    }
}

fn as_f64(v: &Json) -> Option<f64> {
    match v {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
}

/// One JSON value as a cell of a column of type `ty` (NULL when it does not fit).
pub fn convert(ty: ColumnType, v: Option<&Json>) -> Value {
    let Some(v) = v else { return Value::Null };
    if v.is_null() {
        return Value::Null;
    }
    let out = match ty {
        ColumnType::Text => as_text(v).map(|s| Value::Text(s.into())),
        ColumnType::Timestamp => parse_time(v).map(Value::Timestamp),
        ColumnType::Bool => as_bool(v).map(Value::Bool),
        ColumnType::Int | ColumnType::BigInt => as_i64(v).map(Value::Int),
        ColumnType::Float => as_f64(v).map(Value::Float),
        ColumnType::Json => Some(Value::Json(v.to_string().into())),
    };
    out.unwrap_or(Value::Null)
}

/// `a.b.c` inside a JSON object.
pub fn at<'a>(v: &'a Json, path: &str) -> Option<&'a Json> {
    path.split('.').try_fold(v, |cur, k| cur.get(k))
}

/// A row of one table, filled by column name; unset columns are NULL.
pub struct Row<'a> {
    spec: &'a TableSpec,
    cells: Vec<Value>,
}

impl<'a> Row<'a> {
    pub fn new(spec: &'a TableSpec) -> Self {
        Row {
            spec,
            cells: vec![Value::Null; spec.columns.len()],
        }
    }

    /// Sets a column from a JSON value, converted to the column's type. Unknown columns are a
    /// bug in a stream: caught in debug builds, ignored in release.
    pub fn put(&mut self, col: &str, v: Option<&Json>) -> &mut Self {
        match self.spec.column_index(col) {
            Some(i) => self.cells[i] = convert(self.spec.columns[i].ty, v),
            None => debug_assert!(false, "{}.{col} is not in the catalog", self.spec.name),
        }
        self
    }

    /// Sets a column to a typed cell as is.
    pub fn set(&mut self, col: &str, v: Value) -> &mut Self {
        match self.spec.column_index(col) {
            Some(i) => self.cells[i] = v,
            None => debug_assert!(false, "{}.{col} is not in the catalog", self.spec.name),
        }
        self
    }

    /// Sets a text column.
    pub fn text(&mut self, col: &str, s: impl Into<Text>) -> &mut Self {
        self.set(col, Value::Text(s.into()))
    }

    pub fn build(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.cells)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn field_text_is_as_text() {
        let text = r#"{"values":{"s":"a\"b","i":-5,"u":18446744073709551615,"f":2.50,"e":1e3,
            "t":true,"n":null,"a":[1,"x",{"b":[]}],"o":{"z":1,"a":null,"z":2}}}"#;
        let record = xmbridge_qualtrics::record::parse_record(text.as_bytes()).unwrap();
        let value: Json = serde_json::from_str(text).unwrap();
        for (key, field) in record.values.iter() {
            assert_eq!(
                field_text(field).map(Text::into_string),
                as_text(&value["values"][key]),
                "{key}"
            );
        }
        assert_eq!(record.values.len(), 9);
    }

    #[test]
    fn times() {
        assert_eq!(parse_time(&json!("1970-01-01T00:00:01Z")), Some(1000));
        assert_eq!(parse_time(&json!("1970-01-01T00:00:01.5Z")), Some(1500));
        assert_eq!(parse_time(&json!("1970-01-01 00:00:02")), Some(2000));
        assert_eq!(parse_time(&json!("1970-01-02")), Some(86_400_000));
        assert_eq!(parse_time(&json!(1547332513000i64)), Some(1547332513000));
        assert_eq!(parse_time(&json!("0000-00-00 00:00:00")), None);
        assert_eq!(parse_time(&json!("soon")), None);
    }

    #[test]
    fn cells_follow_the_column_type() {
        assert_eq!(
            convert(ColumnType::Bool, Some(&json!("ON"))),
            Value::Bool(true)
        );
        assert_eq!(
            convert(ColumnType::Bool, Some(&json!(0))),
            Value::Bool(false)
        );
        assert_eq!(convert(ColumnType::Int, Some(&json!("42"))), Value::Int(42));
        assert_eq!(
            convert(ColumnType::Float, Some(&json!("-77.19"))),
            Value::Float(-77.19)
        );
        assert_eq!(
            convert(ColumnType::Text, Some(&json!(5))),
            Value::Text("5".into())
        );
        assert_eq!(convert(ColumnType::Int, Some(&json!("x"))), Value::Null);
        assert_eq!(convert(ColumnType::Text, None), Value::Null);
        assert_eq!(
            convert(ColumnType::Json, Some(&json!({"a": 1}))),
            Value::Json("{\"a\":1}".into())
        );
    }
}
