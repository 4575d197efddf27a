//! One response of an export file, read in place: strings borrow the file's text where they hold
//! no escape, objects are vectors in file order with a sorted index instead of hashed maps, and
//! the record's keys other than `responseId`, `values` and `labels` are skipped, not built.
//!
//! A first load reads every response of a survey through this (docs/sync.md, "Reading an export
//! file"); building a `serde_json::Value` per response (a hashed map per object, a string per
//! key) took 18 % of the client's CPU there (perf, docs/bench.md). What it reads is what
//! `serde_json::Value` would hold for the same text: the same numbers, later duplicate keys
//! replacing earlier ones in the earlier one's place, and [`Field::to_json`] gives that `Value`
//! back where one is needed.

use serde::Deserializer as _;
use serde::de::{self, Deserialize, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use std::fmt;

/// One value of a response, as the export wrote it.
#[derive(Clone, Debug, PartialEq)]
pub enum Field<'a> {
    /// `null`
    Null,
    /// `true` or `false`
    Bool(bool),
    /// A number, as `serde_json` reads it.
    Number(Number),
    /// A string; borrowed from the file's text unless it held an escape.
    Str(Cow<'a, str>),
    /// An array.
    Array(Vec<Field<'a>>),
    /// An object.
    Object(Fields<'a>),
}

impl Field<'_> {
    /// True for `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Field::Null)
    }

    /// The string, when this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Field::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The same value as a `serde_json::Value`.
    pub fn to_json(&self) -> Value {
        match self {
            Field::Null => Value::Null,
            Field::Bool(b) => Value::Bool(*b),
            Field::Number(n) => Value::Number(n.clone()),
            Field::Str(s) => Value::String(s.to_string()),
            Field::Array(items) => Value::Array(items.iter().map(Field::to_json).collect()),
            Field::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_json()))
                    .collect::<Map<String, Value>>(),
            ),
        }
    }
}

/// An object's entries in file order, each key once, with a sorted index for lookups.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fields<'a> {
    entries: Vec<(Cow<'a, str>, Field<'a>)>,
    /// Positions in `entries`, ordered by key.
    by_key: Vec<u32>,
}

impl<'a> Fields<'a> {
    /// Builds the index; a key written twice keeps its first place and its last value, as
    /// `serde_json`'s map does.
    fn new(mut entries: Vec<(Cow<'a, str>, Field<'a>)>) -> Self {
        let mut by_key: Vec<u32> = (0..entries.len() as u32).collect();
        let key = |i: &u32| &entries[*i as usize].0;
        // Positions break ties: the order is total, so an unstable sort gives the same result.
        by_key.sort_unstable_by(|a, b| key(a).cmp(key(b)).then(a.cmp(b)));
        if by_key.windows(2).any(|w| key(&w[0]) == key(&w[1])) {
            entries = dedup(entries, &by_key);
            by_key = (0..entries.len() as u32).collect();
            let key = |i: &u32| &entries[*i as usize].0;
            by_key.sort_unstable_by(|a, b| key(a).cmp(key(b)));
        }
        Fields { entries, by_key }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Field<'a>> {
        self.by_key
            .binary_search_by(|&i| self.entries[i as usize].0.as_ref().cmp(key))
            .ok()
            .map(|at| &self.entries[self.by_key[at] as usize].1)
    }

    /// The entries in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Field<'a>)> {
        self.entries.iter().map(|(k, v)| (k.as_ref(), v))
    }

    /// The entries in file order, each with the value `other` holds under the same key: one
    /// walk of both sorted indexes instead of a search per key (a first load pairs every
    /// answer cell of every response with its label).
    pub fn paired_with<'s, 'o>(
        &'s self,
        other: &'o Fields<'a>,
    ) -> impl Iterator<Item = (&'s str, &'s Field<'a>, Option<&'o Field<'a>>)> {
        let mut pair: Vec<Option<u32>> = vec![None; self.entries.len()];
        let (mut i, mut j) = (0, 0);
        while let (Some(&a), Some(&b)) = (self.by_key.get(i), other.by_key.get(j)) {
            let (ka, kb) = (&self.entries[a as usize].0, &other.entries[b as usize].0);
            match ka.as_ref().cmp(kb.as_ref()) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    pair[a as usize] = Some(b);
                    i += 1;
                    j += 1;
                }
            }
        }
        self.entries
            .iter()
            .zip(pair)
            .map(move |((k, v), p)| (k.as_ref(), v, p.map(|b| &other.entries[b as usize].1)))
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there is no key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Keeps each key's first place with its last value. `by_key` orders positions by key, then by
/// position, so each run of one key starts with its first place and ends with its last value.
fn dedup<'a>(
    entries: Vec<(Cow<'a, str>, Field<'a>)>,
    by_key: &[u32],
) -> Vec<(Cow<'a, str>, Field<'a>)> {
    let runs: Vec<&[u32]> = by_key
        .chunk_by(|a, b| entries[*a as usize].0 == entries[*b as usize].0)
        .filter(|run| run.len() > 1)
        .collect();
    let mut slots: Vec<Option<(Cow<'a, str>, Field<'a>)>> = entries.into_iter().map(Some).collect();
    for run in runs {
        let (first, later) = (run[0] as usize, &run[1..]);
        let last_value = later
            .last()
            .and_then(|&last| slots[last as usize].take())
            .map(|(_, value)| value);
        for &p in later {
            slots[p as usize] = None;
        }
        if let (Some(slot), Some(value)) = (slots[first].as_mut(), last_value) {
            slot.1 = value;
        }
    }
    slots.into_iter().flatten().collect()
}

/// The parts of an export record the sync reads.
#[derive(Debug, Default, PartialEq)]
pub struct ExportRecord<'a> {
    /// `responseId`, when it is a string.
    pub response_id: Option<Cow<'a, str>>,
    /// `values`: metadata, question cells and embedded data (empty when not an object).
    pub values: Fields<'a>,
    /// `labels`: the choice texts of the cells that have them (empty when not an object).
    pub labels: Fields<'a>,
}

/// Reads one response's JSON text (from [`crate::export::ExportFile::for_each_raw_batch`]).
pub fn parse_record(text: &[u8]) -> Result<ExportRecord<'_>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let record = de.deserialize_map(RecordVisitor)?;
    de.end()?;
    Ok(record)
}

struct RecordVisitor;

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = ExportRecord<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a response (an object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ExportRecord<'de>, A::Error> {
        let mut record = ExportRecord::default();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match key.0.as_ref() {
                "responseId" => match map.next_value::<Field<'de>>()? {
                    Field::Str(s) => record.response_id = Some(s),
                    _ => record.response_id = None,
                },
                "values" => record.values = object_or_empty(map.next_value()?),
                "labels" => record.labels = object_or_empty(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(record)
    }
}

fn object_or_empty(field: Field<'_>) -> Fields<'_> {
    match field {
        Field::Object(fields) => fields,
        _ => Fields::default(),
    }
}

/// An object key, borrowed when it holds no escape.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor).map(Key)
    }
}

struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_string()))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s))
    }
}

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FieldVisitor)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Field<'de>, E> {
        Ok(Field::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Field<'de>, E> {
        Ok(Field::Null)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Field<'de>, E> {
        Ok(Field::Bool(b))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Field<'de>, E> {
        Ok(Field::Number(n.into()))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Field<'de>, E> {
        Ok(Field::Number(n.into()))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Field<'de>, E> {
        // JSON has no NaN or infinity: serde_json never hands one over.
        Ok(Number::from_f64(n).map_or(Field::Null, Field::Number))
    }
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Owned(s.to_string())))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Owned(s)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element::<Field<'de>>()? {
            items.push(item);
        }
        Ok(Field::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field<'de>, A::Error> {
        let mut entries = Vec::new();
        while let Some(Key(key)) = map.next_key_seed(KeySeed)? {
            entries.push((key, map.next_value::<Field<'de>>()?));
        }
        Ok(Field::Object(Fields::new(entries)))
    }
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key<'de>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Key<'de>, D::Error> {
        Key::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the text, the record holds what `serde_json::Value` reads from it.
    fn same_as_value(text: &str) {
        let record = parse_record(text.as_bytes()).unwrap();
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            record.response_id.as_deref(),
            value.get("responseId").and_then(Value::as_str),
            "{text}"
        );
        for (fields, key) in [(&record.values, "values"), (&record.labels, "labels")] {
            let expected = value
                .get(key)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            assert_eq!(
                Field::Object(fields.clone()).to_json(),
                Value::Object(expected.clone()),
                "{text}"
            );
            // File order, and every key found by lookup.
            let keys: Vec<&str> = fields.iter().map(|(k, _)| k).collect();
            let expected_keys: Vec<&str> = expected.keys().map(String::as_str).collect();
            assert_eq!(keys, expected_keys, "{text}");
            for (k, v) in &expected {
                assert_eq!(
                    fields.get(k).map(Field::to_json).as_ref(),
                    Some(v),
                    "{text}: {k}"
                );
            }
            assert_eq!(fields.get("not a key"), None);
        }
        // Pairing values with labels finds what a lookup per key finds, in file order.
        let paired: Vec<(&str, Option<&Field<'_>>)> = record
            .values
            .paired_with(&record.labels)
            .map(|(k, _, l)| (k, l))
            .collect();
        let looked_up: Vec<(&str, Option<&Field<'_>>)> = record
            .values
            .iter()
            .map(|(k, _)| (k, record.labels.get(k)))
            .collect();
        assert_eq!(paired, looked_up, "{text}");
    }

    #[test]
    fn reads_what_serde_json_reads() {
        for text in [
            r#"{"responseId":"R_1","values":{"QID1":3,"QID2":[1,"b"],"QID3_TEXT":"x\"y","e":null,
                "n":-2,"f":2.5,"big":18446744073709551615,"t":true,"o":{"z":1,"a":[{}]}},
                "labels":{"QID1":"Three","QID2":["One","Bee"]},"displayedFields":["QID1"],
                "displayedValues":{"QID1":[1,2,3]}}"#,
            // Duplicate keys: the first place, the last value.
            r#"{"responseId":"R_2","values":{"b":1,"a":2,"b":3,"c":4,"a":5,"b":6},"labels":{"x":1,"x":2}}"#,
            // Labels in another order than the values, some keys only on one side.
            r#"{"responseId":"R_5","values":{"QID3":1,"QID1":2,"QID2_TEXT":"t","QID4":[1,2]},
                "labels":{"QID4":["A","B"],"QID0":"none","QID3":"C","QID1":"D","b":1,"b":2}}"#,
            // Shapes the sync skips or reads as empty.
            r#"{"responseId":7,"values":[1],"labels":"x"}"#,
            r#"{"values":{},"responseId":"R_3","responseId":"R_4"}"#,
            r#"{}"#,
            // Escaped keys and strings are owned, not borrowed; both read the same.
            r#"{"responseId":"R_\u0035","values":{"k\n":"v\u00e9","k":"\ud83d\ude00"}}"#,
        ] {
            same_as_value(text);
        }
    }

    #[test]
    fn borrows_plain_strings() {
        let text = br#"{"responseId":"R_1","values":{"QID1":"plain","QID2":"esc\"aped"}}"#;
        let record = parse_record(text).unwrap();
        assert!(matches!(record.response_id, Some(Cow::Borrowed("R_1"))));
        assert!(matches!(
            record.values.get("QID1"),
            Some(Field::Str(Cow::Borrowed("plain")))
        ));
        assert!(matches!(
            record.values.get("QID2"),
            Some(Field::Str(Cow::Owned(_)))
        ));
    }

    #[test]
    fn refuses_malformed_text() {
        // Keys the sync does not read are skipped unchecked, except that they are JSON.
        let bad_utf8 = b"{\"values\":{\"a\":\"\xff\"}}";
        for text in [&br#"{"responseId":}"#[..], b"[]", b"{\"a\":1} x", bad_utf8] {
            assert!(
                parse_record(text).is_err(),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }
}
