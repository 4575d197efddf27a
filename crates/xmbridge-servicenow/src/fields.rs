//! Field names an encoded query refers to, so they can be checked against the table's dictionary
//! before the query runs (ServiceNow silently ignores a part naming an unknown field).

/// Every field path (`caller_id.email`) named in an encoded query, in order, without duplicates.
pub fn query_fields(encoded: &str) -> Vec<String> {
    const OPS: &[&str] = &[
        "ISNOTEMPTY",
        "ISEMPTY",
        "STARTSWITH",
        "ENDSWITH",
        "NOT LIKE",
        "NOT IN",
        "LIKE",
        "IN",
        "!=",
        ">=",
        "<=",
        "=",
        ">",
        "<",
    ];
    let mut out: Vec<String> = Vec::new();
    for nq in encoded.split("^NQ") {
        for (i, part) in nq.split('^').enumerate() {
            if part.is_empty() || part == "EQ" {
                continue;
            }
            let field = if let Some(f) = part.strip_prefix("ORDERBYDESC") {
                f.to_string()
            } else if let Some(f) = part.strip_prefix("ORDERBY") {
                f.to_string()
            } else {
                let clause = match part.strip_prefix("OR") {
                    Some(rest) if i > 0 => rest,
                    _ => part,
                };
                // The field ends where the first operator starts.
                let end = (0..clause.len())
                    .filter(|&j| clause.is_char_boundary(j))
                    .find(|&j| OPS.iter().any(|op| clause[j..].starts_with(op)))
                    .unwrap_or(clause.len());
                clause[..end].to_string()
            };
            if !field.is_empty() && !out.contains(&field) {
                out.push(field);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_field() {
        assert_eq!(
            query_fields(
                "active=true^stateIN6,7^ORcaller_id.emailLIKEx^NQnumber!=1^ORDERBYDESCopened_at"
            ),
            ["active", "state", "caller_id.email", "number", "opened_at"]
        );
        assert_eq!(query_fields("stat=7"), ["stat"]);
        assert_eq!(query_fields("categoryISEMPTY^EQ"), ["category"]);
        assert!(query_fields("").is_empty());
    }
}
