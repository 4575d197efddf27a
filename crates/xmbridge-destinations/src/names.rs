//! Names and values shared by the SQLite and PostgreSQL writers: identifier quoting, the
//! `<p>` system-column prefix, the resolved form of a [`TableSpec`] (spec columns plus system
//! columns), row validation, and the ISO-8601 timestamp text SQLite stores.
//!
//! It owns no connection and must not build statements beyond quoting single identifiers.

use crate::{Column, ColumnType, Compat, DestError, TableSpec, Value};

/// The placeholder the catalog uses for the system-column prefix (`"<p>_id"`).
pub const PREFIX_PLACEHOLDER: &str = "<p>";

/// Quotes an SQL identifier: `"` … `"` with embedded quotes doubled. Every table, column and
/// schema name in a statement goes through this; nothing is ever spliced unquoted.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Replaces a leading `<p>` with the compat prefix (`<p>_id` → `_xmbridge_id`).
pub fn resolve_name(name: &str, compat: Compat) -> String {
    match name.strip_prefix(PREFIX_PLACEHOLDER) {
        Some(rest) => format!("{}{rest}", compat.prefix()),
        None => name.to_string(),
    }
}

/// Rejects names no database stores faithfully. `max_bytes` is PostgreSQL's 63-byte limit
/// (longer names are silently truncated there, which could merge two columns).
pub fn check_name(name: &str, max_bytes: Option<usize>) -> Result<(), DestError> {
    let bad = |reason: &str| {
        Err(DestError::InvalidName {
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() {
        return bad("names must not be empty");
    }
    if name.contains('\0') {
        return bad("names must not contain a NUL character");
    }
    if let Some(max) = max_bytes
        && name.len() > max
    {
        return bad(&format!(
            "longer than {max} bytes, which PostgreSQL would truncate"
        ));
    }
    Ok(())
}

/// A [`TableSpec`] as one destination stores it.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The physical name for messages: `qualtrics.survey` or `qualtrics_survey`.
    pub display: String,
    /// Spec columns, `<p>` resolved, in row order.
    pub columns: Vec<Column>,
    /// Indices of the primary-key columns in `columns`.
    pub pk: Vec<usize>,
    /// `<p>_synced`.
    pub synced: String,
    /// `<p>_deleted` on soft-delete tables.
    pub deleted: Option<String>,
    /// The index in `columns` of [`TableSpec::key_implies`].
    pub key_implies: Option<usize>,
}

/// The table and text column `Destination::keys` reads, checked alike on every destination.
pub fn keys_target<'a>(
    tables: &'a std::collections::HashMap<String, Resolved>,
    table: &str,
    column: &str,
    compat: Compat,
) -> Result<(&'a Resolved, &'a Column), DestError> {
    let r = tables.get(table).ok_or_else(|| DestError::UnknownTable {
        table: table.to_string(),
    })?;
    let c = r.spec_column(column, compat)?;
    if c.ty != ColumnType::Text {
        return Err(DestError::KeysNotText {
            table: r.display.clone(),
            column: c.name.clone(),
        });
    }
    Ok((r, c))
}

/// A stored cursor's text as JSON, or [`DestError::UnreadableCursor`] naming the stream and the
/// cursor table `state` (checked alike on every destination).
pub(crate) fn parse_cursor(
    stream: &str,
    state: &str,
    text: &str,
) -> Result<serde_json::Value, DestError> {
    serde_json::from_str(text).map_err(|e| DestError::UnreadableCursor {
        stream: stream.to_string(),
        table: state.to_string(),
        reason: e.to_string(),
    })
}

impl Resolved {
    /// A spec column named in a delete, a scope or a filter (`<p>` resolved).
    pub fn spec_column(&self, name: &str, compat: Compat) -> Result<&Column, DestError> {
        self.column(&resolve_name(name, compat))
            .ok_or_else(|| DestError::InvalidName {
                name: name.to_string(),
                reason: format!("not a column of table {}", self.display),
            })
    }

    pub fn new(
        spec: &TableSpec,
        compat: Compat,
        display: String,
        max_bytes: Option<usize>,
    ) -> Result<Self, DestError> {
        check_name(&spec.name, max_bytes)?;
        let synced = format!("{}_synced", compat.prefix());
        let deleted = spec
            .soft_delete
            .then(|| format!("{}_deleted", compat.prefix()));
        let mut columns: Vec<Column> = Vec::with_capacity(spec.columns.len());
        for c in &spec.columns {
            let name = resolve_name(&c.name, compat);
            check_name(&name, max_bytes)?;
            if columns.iter().any(|x| x.name == name)
                || name == synced
                || deleted.as_deref() == Some(name.as_str())
            {
                return Err(DestError::InvalidName {
                    name,
                    reason: format!("column appears twice in table {display}"),
                });
            }
            columns.push(Column { name, ty: c.ty });
        }
        if spec.primary_key.is_empty() {
            return Err(DestError::InvalidName {
                name: spec.name.clone(),
                reason: "a table needs a primary key".into(),
            });
        }
        let mut pk = Vec::with_capacity(spec.primary_key.len());
        for k in &spec.primary_key {
            let k = resolve_name(k, compat);
            match columns.iter().position(|c| c.name == k) {
                Some(i) => pk.push(i),
                None => {
                    return Err(DestError::InvalidName {
                        name: k,
                        reason: format!("primary-key column is not a column of {display}"),
                    });
                }
            }
        }
        let key_implies = match &spec.key_implies {
            None => None,
            Some(col) => {
                let col = resolve_name(col, compat);
                Some(columns.iter().position(|c| c.name == col).ok_or_else(|| {
                    DestError::InvalidName {
                        name: col,
                        reason: format!("the column the key implies is not a column of {display}"),
                    }
                })?)
            }
        };
        Ok(Resolved {
            display,
            columns,
            pk,
            synced,
            deleted,
            key_implies,
        })
    }

    /// Spec columns followed by the system columns, as stored.
    pub fn stored_columns(&self) -> Vec<(String, ColumnType)> {
        let mut v: Vec<(String, ColumnType)> = self
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.ty))
            .collect();
        v.push((self.synced.clone(), ColumnType::Timestamp));
        if let Some(d) = &self.deleted {
            v.push((d.clone(), ColumnType::Bool));
        }
        v
    }

    /// `(key, group)`: the table's one key column and the column whose value, then `:`, starts
    /// every key ([`TableSpec::key_implies`]); `None` for any other key.
    pub fn led_key(&self) -> Option<(usize, usize)> {
        match (self.pk.as_slice(), self.key_implies) {
            (&[k], Some(g)) => Some((k, g)),
            _ => None,
        }
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Checks a row before it is written: its length, non-null keys, value kinds.
    pub fn check_row(&self, row: &[Value]) -> Result<(), DestError> {
        if row.len() != self.columns.len() {
            return Err(DestError::RowShape {
                table: self.display.clone(),
                expected: self.columns.len(),
                found: row.len(),
            });
        }
        for &i in &self.pk {
            if matches!(row[i], Value::Null) {
                return Err(DestError::NullKey {
                    table: self.display.clone(),
                    column: self.columns[i].name.clone(),
                });
            }
        }
        for (c, v) in self.columns.iter().zip(row) {
            self.check_value(c, v)?;
        }
        Ok(())
    }

    /// A value fits a column: its own kind, null, or an int in a float column.
    pub fn check_value(&self, c: &Column, v: &Value) -> Result<(), DestError> {
        let ok = match (c.ty, v) {
            (_, Value::Null) => true,
            (ColumnType::Text, Value::Text(_)) => true,
            (ColumnType::Timestamp, Value::Timestamp(_)) => true,
            (ColumnType::Bool, Value::Bool(_)) => true,
            (ColumnType::Int, Value::Int(i)) => {
                if i32::try_from(*i).is_err() {
                    return Err(DestError::ValueType {
                        table: self.display.clone(),
                        column: c.name.clone(),
                        expected: "integer (32-bit)",
                        found: "int outside the 32-bit range",
                    });
                }
                true
            }
            (ColumnType::BigInt, Value::Int(_)) => true,
            (ColumnType::Float, Value::Float(_) | Value::Int(_)) => true,
            (ColumnType::Json, Value::Json(_)) => true,
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(DestError::ValueType {
                table: self.display.clone(),
                column: c.name.clone(),
                expected: c.ty.short(),
                found: v.kind(),
            })
        }
    }
}

/// Epoch milliseconds → `YYYY-MM-DDTHH:MM:SS.sssZ` (UTC). Fixed width for years 0–9999, so
/// text comparison orders like time.
pub fn iso_millis(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (h, mi, s, milli) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` → epoch milliseconds (the inverse of [`iso_millis`]).
pub fn parse_iso_millis(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || *b.last()? != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac = &s[19..s.len() - 1];
    let milli = if frac.is_empty() {
        0
    } else {
        let digits = frac.strip_prefix('.')?;
        let mut v: i64 = 0;
        for (i, c) in digits.chars().take(3).enumerate() {
            v += c.to_digit(10)? as i64 * [100, 10, 1][i];
        }
        v
    };
    let days = days_from_civil(y, mo, d);
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + milli)
}

// Howard Hinnant's civil-calendar algorithms (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    // scheme://user:password@host… → scheme://user:***@host…
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some(at) = rest.find('@')
    {
        let userinfo = &rest[..at];
        if let Some((user, _)) = userinfo.split_once(':') {
            return format!("{scheme}://{user}:***{}", &rest[at..]);
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote_ident("a"), "\"a\"");
        assert_eq!(quote_ident("a\"b; drop"), "\"a\"\"b; drop\"");
    }

    #[test]
    fn iso_round_trip() {
        for ms in [
            0,
            1,
            999,
            1_700_000_000_123,
            -1,
            -86_400_001,
            253_402_300_799_999,
        ] {
            let s = iso_millis(ms);
            assert_eq!(s.len(), 24, "{s}");
            assert_eq!(parse_iso_millis(&s), Some(ms), "{s}");
        }
        assert_eq!(iso_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            parse_iso_millis("2024-03-01T12:34:56Z"),
            Some(1_709_296_496_000)
        );
    }

    #[test]
    fn redacts_password() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn prefix_resolution() {
        assert_eq!(resolve_name("<p>_id", Compat::Fivetran), "_fivetran_id");
        assert_eq!(resolve_name("id", Compat::Fivetran), "id");
    }
}
