//! Small builders of the JSON schemas (OpenAPI 3.0's subset) the route table carries.

use serde_json::{Map, Value, json};

/// A string.
pub fn string() -> Value {
    json!({"type": "string"})
}

/// A string or null.
pub fn opt_string() -> Value {
    json!({"type": "string", "nullable": true})
}

/// A boolean.
pub fn boolean() -> Value {
    json!({"type": "boolean"})
}

/// An integer.
pub fn integer() -> Value {
    json!({"type": "integer"})
}

/// A number.
pub fn number() -> Value {
    json!({"type": "number"})
}

/// A date-time string (RFC 3339).
pub fn time() -> Value {
    json!({"type": "string", "format": "date-time"})
}

/// A date-time or null.
pub fn opt_time() -> Value {
    json!({"type": "string", "format": "date-time", "nullable": true})
}

/// One of the given strings.
pub fn one_of(values: &[&str]) -> Value {
    json!({"type": "string", "enum": values})
}

/// An array of `items`.
pub fn array(items: Value) -> Value {
    json!({"type": "array", "items": items})
}

/// An object of any shape.
pub fn any_object() -> Value {
    json!({"type": "object", "additionalProperties": true})
}

/// An object with these properties, the `required` ones listed.
pub fn object(props: &[(&str, Value)], required: &[&str]) -> Value {
    let mut p = Map::new();
    for (k, v) in props {
        p.insert((*k).to_string(), v.clone());
    }
    let mut o = json!({"type": "object", "properties": p});
    if !required.is_empty() {
        o["required"] = json!(required);
    }
    o
}

/// The object `{key: value}` with `key` required.
pub fn wrap(key: &str, value: Value) -> Value {
    object(&[(key, value)], &[key])
}

/// The error answer every route may give.
pub fn error() -> Value {
    wrap(
        "error",
        object(
            &[
                ("code", string()),
                ("message", string()),
                ("fix", opt_string()),
            ],
            &["code", "message", "fix"],
        ),
    )
}

/// A user.
pub fn user() -> Value {
    object(
        &[
            ("name", string()),
            ("role", one_of(&["admin", "member"])),
            ("created_at", time()),
        ],
        &["name", "role"],
    )
}

/// An API token's description (never its secret).
pub fn token_info() -> Value {
    object(
        &[
            ("id", string()),
            ("user", string()),
            ("created_at", time()),
            ("expires_at", opt_time()),
            ("revoked", boolean()),
            ("last_used_at", opt_time()),
        ],
        &["id", "user"],
    )
}

/// One sync run.
pub fn sync_run() -> Value {
    let counts = object(
        &[
            ("inserted", integer()),
            ("updated", integer()),
            ("deleted", integer()),
        ],
        &["inserted", "updated", "deleted"],
    );
    object(
        &[
            ("id", integer()),
            ("connection", string()),
            (
                "status",
                one_of(&["queued", "running", "succeeded", "failed", "cancelled"]),
            ),
            ("trigger", one_of(&["schedule", "user", "api", "resume"])),
            ("requested_by", opt_string()),
            ("queued_at", time()),
            ("started_at", opt_time()),
            ("finished_at", opt_time()),
            ("responses", integer()),
            ("api_calls", integer()),
            ("throttled", integer()),
            (
                "tables",
                json!({"type": "object", "additionalProperties": counts}),
            ),
            ("progress", any_object()),
            (
                "error",
                json!({"type": "object", "nullable": true, "properties": {
                    "message": string(), "fix": opt_string()}}),
            ),
        ],
        &[
            "id",
            "connection",
            "status",
            "trigger",
            "started_at",
            "finished_at",
            "responses",
            "api_calls",
            "tables",
            "progress",
            "error",
        ],
    )
}
