//! Encoded queries (`sysparm_query`): parse against a table's dictionary and evaluate on records.
//!
//! Grammar: `^NQ` separates OR'ed queries; inside one, `^` ANDs clauses and `^OR` ORs a clause
//! with the previous one (OR binds tighter than AND, as on ServiceNow); `ORDERBY<f>` and
//! `ORDERBYDESC<f>` sort. A clause is `field<op>value` where field may dot-walk references
//! (`caller_id.email`). Everything is case-sensitive. A part naming an unknown field or operator
//! is dropped and remembered in [`Query::invalid`]: the caller decides between ignoring it (the
//! default) and returning no rows (`glide.invalid_query.returns_no_rows=true`).

use super::Record;
use super::schema::{self, Kind, TableDef};
use serde_json::Value;
use std::cmp::Ordering;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// An operator of an encoded query.
pub enum Op {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `LIKE`: contains.
    Like,
    /// `NOT LIKE`: does not contain.
    NotLike,
    /// `STARTSWITH`
    StartsWith,
    /// `ENDSWITH`
    EndsWith,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `IN`: one of a comma list.
    In,
    /// `NOT IN`: none of a comma list.
    NotIn,
    /// `ISEMPTY`
    IsEmpty,
    /// `ISNOTEMPTY`
    IsNotEmpty,
}

/// Longest first, so that `>=` is not read as `>` followed by `=…`.
const OPS: &[(&str, Op)] = &[
    ("ISNOTEMPTY", Op::IsNotEmpty),
    ("ISEMPTY", Op::IsEmpty),
    ("STARTSWITH", Op::StartsWith),
    ("ENDSWITH", Op::EndsWith),
    ("NOT LIKE", Op::NotLike),
    ("NOT IN", Op::NotIn),
    ("LIKE", Op::Like),
    ("IN", Op::In),
    ("!=", Op::Ne),
    (">=", Op::Ge),
    ("<=", Op::Le),
    ("=", Op::Eq),
    (">", Op::Gt),
    ("<", Op::Lt),
];

#[derive(Clone, Debug)]
/// One condition of an encoded query: `path op value`.
pub struct Cond {
    /// `caller_id.email` → `[("caller_id", incident), ("email", sys_user)]`: field and its table.
    pub path: Vec<(String, &'static str)>,
    /// The operator.
    pub op: Op,
    /// The right-hand side as written; empty for `ISEMPTY`/`ISNOTEMPTY`.
    pub value: String,
}

#[derive(Clone, Debug, Default)]
/// A parsed encoded query (`sysparm_query`).
pub struct Query {
    /// OR of queries (`^NQ`); each is an AND of OR-sets.
    pub groups: Vec<Vec<Vec<Cond>>>,
    /// Sort keys: (field, descending).
    pub order: Vec<(String, bool)>,
    /// Some part was dropped as invalid.
    pub invalid: bool,
}

/// Resolves `field` (possibly dot-walked) against `table`; `None` when a step does not exist.
pub fn resolve_path(table: &'static TableDef, field: &str) -> Option<Vec<(String, &'static str)>> {
    let mut path = Vec::new();
    let mut current = table;
    let mut parts = field.split('.').peekable();
    while let Some(part) = parts.next() {
        let kind = current.kind(part)?;
        path.push((part.to_string(), current.name));
        if parts.peek().is_some() {
            match kind {
                Kind::Ref(target) => current = schema::table(target)?,
                _ => return None,
            }
        }
    }
    Some(path)
}

fn parse_clause(table: &'static TableDef, part: &str) -> Option<Cond> {
    let end = part
        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.'))
        .unwrap_or(part.len());
    let (field, rest) = part.split_at(end);
    if field.is_empty() {
        return None;
    }
    let (op, value) = OPS
        .iter()
        .find_map(|(s, op)| rest.strip_prefix(s).map(|v| (*op, v)))?;
    if matches!(op, Op::IsEmpty | Op::IsNotEmpty) && !value.is_empty() {
        return None;
    }
    Some(Cond {
        path: resolve_path(table, field)?,
        op,
        value: value.to_string(),
    })
}

/// Parses an encoded query for `table`.
pub fn parse(table: &'static TableDef, encoded: &str) -> Query {
    let mut q = Query::default();
    for nq in encoded.split("^NQ") {
        let mut group: Vec<Vec<Cond>> = Vec::new();
        for part in nq.split('^') {
            if part.is_empty() || part == "EQ" {
                continue;
            }
            if let Some(f) = part.strip_prefix("ORDERBYDESC") {
                match resolve_path(table, f) {
                    Some(_) => q.order.push((f.to_string(), true)),
                    None => q.invalid = true,
                }
                continue;
            }
            if let Some(f) = part.strip_prefix("ORDERBY") {
                match resolve_path(table, f) {
                    Some(_) => q.order.push((f.to_string(), false)),
                    None => q.invalid = true,
                }
                continue;
            }
            let (is_or, clause) = match part.strip_prefix("OR") {
                Some(rest) if !group.is_empty() => (true, rest),
                _ => (false, part),
            };
            match parse_clause(table, clause) {
                Some(c) if is_or => {
                    if let Some(last) = group.last_mut() {
                        last.push(c);
                    }
                }
                Some(c) => group.push(vec![c]),
                None => q.invalid = true,
            }
        }
        if !group.is_empty() {
            q.groups.push(group);
        }
    }
    q
}

/// `field=value&…` pairs from the URL (no `sysparm_` prefix), ANDed, as one query.
pub fn from_pairs(table: &'static TableDef, pairs: &[(String, String)]) -> Query {
    let encoded: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parse(table, &encoded.join("^"))
}

/// Finds a row by table and sys_id (for dot-walking).
pub type Lookup<'a> = dyn Fn(&str, &str) -> Option<&'a Record> + 'a;

/// The value of a (dot-walked) field of `rec`, as a string; empty when absent.
pub fn value_of<'a>(
    rec: &'a Record,
    path: &[(String, &'static str)],
    lookup: &Lookup<'a>,
) -> String {
    let mut current = rec;
    for (i, (field, table)) in path.iter().enumerate() {
        let v = current.get(field).and_then(Value::as_str).unwrap_or("");
        if i + 1 == path.len() {
            return v.to_string();
        }
        let target = match schema::table(table).and_then(|t| t.kind(field)) {
            Some(Kind::Ref(target)) => target,
            _ => return String::new(),
        };
        match lookup(target, v) {
            Some(r) => current = r,
            None => return String::new(),
        }
    }
    String::new()
}

fn compare(a: &str, b: &str) -> Ordering {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        _ => a.cmp(b),
    }
}

impl Cond {
    pub(crate) fn holds<'a>(&self, rec: &'a Record, lookup: &Lookup<'a>) -> bool {
        let v = value_of(rec, &self.path, lookup);
        let list = || self.value.split(',').map(str::trim);
        match self.op {
            Op::Eq => v == self.value,
            Op::Ne => v != self.value,
            Op::Like => v.contains(&self.value),
            Op::NotLike => !v.contains(&self.value),
            Op::StartsWith => v.starts_with(&self.value),
            Op::EndsWith => v.ends_with(&self.value),
            Op::Gt => !v.is_empty() && compare(&v, &self.value) == Ordering::Greater,
            Op::Ge => !v.is_empty() && compare(&v, &self.value) != Ordering::Less,
            Op::Lt => !v.is_empty() && compare(&v, &self.value) == Ordering::Less,
            Op::Le => !v.is_empty() && compare(&v, &self.value) != Ordering::Greater,
            Op::In => list().any(|x| x == v),
            Op::NotIn => !list().any(|x| x == v),
            Op::IsEmpty => v.is_empty(),
            Op::IsNotEmpty => !v.is_empty(),
        }
    }
}

impl Query {
    /// Whether record `rec` satisfies the query; `lookup` resolves dot-walked references.
    pub fn matches<'a>(&self, rec: &'a Record, lookup: &Lookup<'a>) -> bool {
        self.groups.is_empty()
            || self.groups.iter().any(|group| {
                group
                    .iter()
                    .all(|ors| ors.iter().any(|c| c.holds(rec, lookup)))
            })
    }

    /// Sorts rows by the `ORDERBY` keys (stable: ties keep insertion order).
    pub fn sort<'a>(&self, table: &'static TableDef, rows: &mut [&'a Record], lookup: &Lookup<'a>) {
        if self.order.is_empty() {
            return;
        }
        let keys: Vec<(Vec<(String, &'static str)>, bool)> = self
            .order
            .iter()
            .filter_map(|(f, desc)| resolve_path(table, f).map(|p| (p, *desc)))
            .collect();
        rows.sort_by(|a, b| {
            for (path, desc) in &keys {
                let o = compare(&value_of(a, path, lookup), &value_of(b, path, lookup));
                let o = if *desc { o.reverse() } else { o };
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(v: Value) -> Record {
        v.as_object().cloned().unwrap_or_default()
    }

    fn t() -> &'static TableDef {
        schema::table("incident").unwrap()
    }

    #[test]
    fn and_binds_looser_than_or() {
        let q = parse(t(), "active=true^state=1^ORstate=2");
        assert!(!q.invalid);
        let (a, b, c) = (
            rec(json!({"active":"true","state":"2"})),
            rec(json!({"active":"false","state":"2"})),
            rec(json!({"active":"true","state":"7"})),
        );
        let none = |_: &str, _: &str| None;
        assert!(q.matches(&a, &none));
        assert!(!q.matches(&b, &none));
        assert!(!q.matches(&c, &none));
    }

    #[test]
    fn invalid_parts_are_dropped_and_flagged() {
        let q = parse(t(), "no_such_field=1^state=7");
        assert!(q.invalid);
        assert_eq!(q.groups.len(), 1);
        let q = parse(t(), "stat=7");
        assert!(q.invalid && q.groups.is_empty(), "a typo matches every row");
        assert!(parse(t(), "state~7").invalid, "unknown operator");
        assert!(
            parse(t(), "short_description.x=1").invalid,
            "walk through a string"
        );
        assert!(!parse(t(), "caller_id.email=a@b").invalid);
    }

    #[test]
    fn operators() {
        let r = rec(json!({"short_description":"Printer on fire","urgency":"2","category":""}));
        let none = |_: &str, _: &str| None;
        for (q, want) in [
            ("short_descriptionLIKEon f", true),
            ("short_descriptionLIKEON F", false),
            ("short_descriptionSTARTSWITHPrinter", true),
            ("short_descriptionENDSWITHfire", true),
            ("urgency>1", true),
            ("urgency>=3", false),
            ("urgency<3", true),
            ("urgency<=1", false),
            ("urgencyIN1,2", true),
            ("urgencyNOT IN1,2", false),
            ("categoryISEMPTY", true),
            ("categoryISNOTEMPTY", false),
            ("urgency!=2", false),
            ("urgency=3^NQurgency=2", true),
        ] {
            assert_eq!(parse(t(), q).matches(&r, &none), want, "{q}");
        }
    }
}
