//! Typed getters for action inputs, shared by every system's actions.
//!
//! Inputs arrive as JSON from two places: a workflow step (already typed) and the command line
//! (`--input k=v`, where a value is a string unless it parses as JSON). So the getters are lenient
//! in one direction only: a number or boolean given as a string (`"25"`, `"true"`) is accepted
//! where a number or boolean is expected, and a number or boolean is accepted where text is
//! expected (`phone=5550100`). Anything else is a [`ActionError::BadInput`] naming the input.

use crate::{ActionError, ActionSpec, Inputs};
use serde_json::{Map, Value};

fn bad(spec: &ActionSpec, field: &str, reason: impl Into<String>) -> ActionError {
    ActionError::BadInput {
        action: spec.name.to_string(),
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Text input; numbers and booleans become their JSON text. `null` and absent are `None`.
pub fn opt_str(
    spec: &ActionSpec,
    inputs: &Inputs,
    name: &str,
) -> Result<Option<String>, ActionError> {
    match inputs.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
        Some(_) => Err(bad(spec, name, "must be text, not an object or a list")),
    }
}

/// Required text input: present, not null, not blank.
pub fn req_str(spec: &ActionSpec, inputs: &Inputs, name: &str) -> Result<String, ActionError> {
    match opt_str(spec, inputs, name)? {
        Some(s) if !s.trim().is_empty() => Ok(s),
        Some(_) => Err(bad(spec, name, "must not be empty")),
        None => Err(ActionError::missing(spec, name)),
    }
}

/// Boolean input: `true`/`false` or the strings `"true"`/`"false"`.
pub fn opt_bool(
    spec: &ActionSpec,
    inputs: &Inputs,
    name: &str,
) -> Result<Option<bool>, ActionError> {
    match inputs.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(v) => Err(bad(spec, name, format!("must be true or false, not {v}"))),
    }
}

/// Non-negative whole number input (also given as a string).
pub fn opt_u64(spec: &ActionSpec, inputs: &Inputs, name: &str) -> Result<Option<u64>, ActionError> {
    match inputs.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
        Some(Value::String(s)) if s.trim().parse::<u64>().is_ok() => Ok(s.trim().parse().ok()),
        Some(v) => Err(bad(
            spec,
            name,
            format!("must be a whole number ≥ 0, not {v}"),
        )),
    }
}

/// Object input (e.g. embedded data); a string holding a JSON object is accepted too.
pub fn opt_object(
    spec: &ActionSpec,
    inputs: &Inputs,
    name: &str,
) -> Result<Option<Map<String, Value>>, ActionError> {
    match inputs.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.clone())),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => Ok(Some(m)),
            _ => Err(bad(
                spec,
                name,
                "must be an object, e.g. {\"tier\":\"gold\"} (on the command line: --input name.key=value)",
            )),
        },
        Some(v) => Err(bad(spec, name, format!("must be an object, not {v}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::System;
    use serde_json::json;

    const SPEC: ActionSpec = ActionSpec {
        name: "t",
        system: System::Qualtrics,
        title: "T",
        category: "Test",
        inputs: &[],
        stream: false,
        writes: false,
    };

    fn inputs(v: Value) -> Inputs {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn getters_accept_cli_strings_and_name_bad_inputs() {
        let i = inputs(
            json!({"n": "25", "b": "TRUE", "s": 5550100, "o": "{\"a\":\"1\"}",
                              "blank": " ", "list": [1]}),
        );
        assert_eq!(opt_u64(&SPEC, &i, "n").unwrap(), Some(25));
        assert_eq!(opt_bool(&SPEC, &i, "b").unwrap(), Some(true));
        assert_eq!(opt_str(&SPEC, &i, "s").unwrap().as_deref(), Some("5550100"));
        assert_eq!(opt_object(&SPEC, &i, "o").unwrap().unwrap()["a"], "1");
        assert!(opt_str(&SPEC, &i, "absent").unwrap().is_none());
        let e = req_str(&SPEC, &i, "blank").unwrap_err().to_string();
        assert_eq!(e, "action t: input `blank`: must not be empty");
        let e = req_str(&SPEC, &i, "absent").unwrap_err().to_string();
        assert_eq!(e, "action t: input `absent`: is required");
        let e = opt_str(&SPEC, &i, "list").unwrap_err().to_string();
        assert!(e.contains("`list`"), "{e}");
        assert!(opt_u64(&SPEC, &i, "b").is_err());
        assert!(opt_bool(&SPEC, &i, "n").is_err());
        assert!(opt_object(&SPEC, &i, "n").is_err());
    }
}
