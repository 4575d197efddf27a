//! The OpenAPI 3.0 document of the API, built from the route table ([`super::routes`]) that
//! also builds the router: every route is in it by construction.

use std::collections::BTreeMap;

use axum::extract::State;
use serde_json::{Map, Value, json};

use super::{Need, Route, routes, schema};

/// The path parameters of `path` (`{name}` segments), in order.
pub fn path_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

/// `getApiV1ConnectionsNameSyncs`-style operation ids, unique per method and path.
fn operation_id(route: &Route) -> String {
    let mut id = route.method.as_str().to_lowercase();
    for seg in route.path.split('/').filter(|s| !s.is_empty()) {
        let seg = seg.trim_start_matches('{').trim_end_matches('}');
        for part in seg.split(|c: char| !c.is_ascii_alphanumeric()) {
            let mut cs = part.chars();
            if let Some(first) = cs.next() {
                id.push(first.to_ascii_uppercase());
                id.extend(cs);
            }
        }
    }
    id
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        401 => "Not signed in, or the session or token is unknown or expired",
        403 => "A rule refused: the message names it (role, CSRF token, origin)",
        404 => "No such thing",
        409 => "Conflicts with the current state",
        413 => "The body is larger than 1 MiB",
        422 => "The input is invalid; the message and fix say why",
        429 => "Too many sign-in attempts; see Retry-After",
        _ => "Error",
    }
}

fn operation(route: &Route) -> Value {
    let error = json!({"$ref": "#/components/responses/Error"});
    let mut responses = Map::new();
    let ok = match &route.response {
        Some(s) => json!({"description": reason(route.status),
                          "content": {"application/json": {"schema": s}}}),
        None => json!({"description": reason(route.status)}),
    };
    responses.insert(route.status.to_string(), ok);
    let mut errors = vec![422u16];
    if route.request.is_some() {
        errors.push(413);
    }
    match route.need {
        Need::Public => errors.push(429),
        Need::Signed | Need::Admin { .. } => errors.extend([401, 403]),
    }
    if !path_params(route.path).is_empty() {
        errors.push(404);
    }
    if route.method != axum::http::Method::GET {
        errors.push(409);
    }
    for code in errors {
        responses.insert(code.to_string(), error.clone());
    }
    let mut parameters: Vec<Value> = path_params(route.path)
        .into_iter()
        .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    for (name, description) in route.query {
        parameters.push(json!({"name": name, "in": "query", "required": false,
                               "description": description, "schema": {"type": "string"}}));
    }
    let mut op = json!({
        "operationId": operation_id(route),
        "summary": route.summary,
        "responses": responses,
    });
    if !parameters.is_empty() {
        op["parameters"] = Value::Array(parameters);
    }
    if let Some(req) = &route.request {
        op["requestBody"] = json!({"required": true,
                                   "content": {"application/json": {"schema": req}}});
    }
    match route.need {
        Need::Public => op["security"] = json!([]),
        Need::Signed => {}
        Need::Admin { what, rule } => {
            op["description"] = json!(format!(
                "Admins only: otherwise 403 \"only an admin may {what}\" (rule: {rule})."
            ));
        }
    }
    op
}

/// The OpenAPI 3.0 document of every route.
pub fn document() -> Value {
    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for route in routes() {
        paths
            .entry(route.path)
            .or_default()
            .insert(route.method.as_str().to_lowercase(), operation(&route));
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "xmbridge API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Manage connections, schedules, syncs, workflows, accounts and users of an `xmbridge serve` installation. Sign in with POST /api/v1/session (a session cookie; state-changing requests then carry the answer's csrf_token in X-CSRF-Token) or send `Authorization: Bearer <api token>`. Errors have one shape: {\"error\": {\"code\", \"message\", \"fix\"}}."
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": super::auth::SESSION_COOKIE},
                "token": {"type": "http", "scheme": "bearer"}
            },
            "responses": {
                "Error": {
                    "description": "An error: what went wrong and the fix",
                    "content": {"application/json": {"schema": schema::error()}}
                }
            }
        },
        "security": [{"session": []}, {"token": []}]
    })
}

/// `GET /api/v1/openapi.json`.
pub(crate) async fn serve(State(_): State<std::sync::Arc<super::Api>>) -> axum::Json<Value> {
    axum::Json(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_parameters_and_operation_ids() {
        assert_eq!(
            path_params("/api/v1/users/{name}/tokens/{id}"),
            vec!["name", "id"]
        );
        let ids: std::collections::BTreeSet<String> = routes().iter().map(operation_id).collect();
        assert_eq!(ids.len(), routes().len(), "operation ids are unique");
    }

    #[test]
    fn every_route_is_in_the_document() {
        let doc = document();
        for r in routes() {
            let m = r.method.as_str().to_lowercase();
            assert!(
                doc["paths"][r.path][&m].is_object(),
                "{m} {} is missing",
                r.path
            );
        }
    }
}
