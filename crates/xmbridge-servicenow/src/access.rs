//! What the calling user may do to a table, read without writing anything: the user's roles
//! (`sys_user_has_role`, where every user may read their own rows) and the table's access
//! controls (`sys_security_acl` with their roles in `sys_security_acl_role`, which base
//! instances let only `security_admin` read). [`decide`] applies ServiceNow's rule to them.

use serde_json::Value;

use crate::client::{DisplayValue, ListOptions, ServiceNowClient};
use crate::error::Error;

/// One record access control (ACL) of the instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessControl {
    /// What it guards: `incident` (the table) or `incident.short_description`, `incident.*`.
    pub name: String,
    /// `read`, `create`, `write` or `delete`.
    pub operation: String,
    /// Whether an admin passes it whatever its roles.
    pub admin_overrides: bool,
    /// The roles it accepts; empty = every authenticated user.
    pub roles: Vec<String>,
}

/// The outcome of [`decide`] for one name and operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// At least one matching ACL accepts the user.
    Granted,
    /// Matching ACLs exist and none accepts the user; any of these roles would.
    Denied {
        /// The roles the matching ACLs accept, sorted.
        roles: Vec<String>,
    },
    /// No ACL has this name and operation.
    NoRule,
}

/// A field that is a reference may come back as text, as `{value, …}` or as
/// `{display_value, …}`; `key` picks which part.
fn part(v: &Value, key: &str) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => m.get(key).and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl ServiceNowClient {
    /// The calling user's active roles, by name.
    pub async fn my_roles(&self) -> Result<Vec<String>, Error> {
        let rows = self
            .list_all(
                "sys_user_has_role",
                ListOptions {
                    query: Some("user=javascript:gs.getUserID()^state=active".into()),
                    fields: vec!["role".into()],
                    page_size: 1000,
                    display_value: DisplayValue::Display,
                    ..Default::default()
                },
            )
            .await?;
        let mut roles: Vec<String> = rows
            .iter()
            .filter_map(|r| r.get("role").and_then(|v| part(v, "display_value")))
            .collect();
        roles.sort();
        roles.dedup();
        Ok(roles)
    }

    /// The active record ACLs on `table` and on its fields, with their roles.
    pub async fn access_controls(&self, table: &str) -> Result<Vec<AccessControl>, Error> {
        let rows = self
            .list_all(
                "sys_security_acl",
                ListOptions {
                    query: Some(format!("nameSTARTSWITH{table}^active=true")),
                    fields: vec![
                        "sys_id".into(),
                        "name".into(),
                        "operation".into(),
                        "type".into(),
                        "admin_overrides".into(),
                    ],
                    page_size: 1000,
                    display_value: DisplayValue::All,
                    ..Default::default()
                },
            )
            .await?;
        let field_prefix = format!("{table}.");
        let mut acls = Vec::new();
        let mut ids = Vec::new();
        for r in &rows {
            let get = |f: &str, k: &str| r.get(f).and_then(|v| part(v, k));
            let (Some(id), Some(name), Some(operation)) = (
                get("sys_id", "value"),
                get("name", "value"),
                get("operation", "display_value"),
            ) else {
                continue;
            };
            // STARTSWITH also matches `incident_task`: keep the table and its own fields.
            if name != table && !name.starts_with(&field_prefix) {
                continue;
            }
            // Record ACLs only (not REST endpoints, UI pages …). `type` is a reference on some
            // releases and text on others: its display value is the name either way.
            let kind = get("type", "display_value").or_else(|| get("type", "value"));
            if kind.as_deref().is_some_and(|k| k != "record") {
                continue;
            }
            ids.push(id);
            acls.push(AccessControl {
                name,
                operation,
                admin_overrides: get("admin_overrides", "value").as_deref() != Some("false"),
                roles: Vec::new(),
            });
        }
        if ids.is_empty() {
            return Ok(acls);
        }
        let role_rows = self
            .list_all(
                "sys_security_acl_role",
                ListOptions {
                    query: Some(format!("sys_security_aclIN{}", ids.join(","))),
                    fields: vec!["sys_security_acl".into(), "sys_user_role".into()],
                    page_size: 1000,
                    display_value: DisplayValue::All,
                    ..Default::default()
                },
            )
            .await?;
        for r in &role_rows {
            let acl = r.get("sys_security_acl").and_then(|v| part(v, "value"));
            let role = r
                .get("sys_user_role")
                .and_then(|v| part(v, "display_value"));
            let (Some(acl), Some(role)) = (acl, role) else {
                continue;
            };
            if let Some(i) = ids.iter().position(|id| *id == acl) {
                acls[i].roles.push(role);
            }
        }
        for a in &mut acls {
            a.roles.sort();
            a.roles.dedup();
        }
        Ok(acls)
    }
}

/// ServiceNow's rule for one name (`incident`, `incident.short_description`) and operation: the
/// user passes when any matching ACL lets them (an admin where it allows admin override, anyone
/// where it lists no role, or a holder of one of its roles).
pub fn decide(acls: &[AccessControl], roles: &[String], name: &str, operation: &str) -> Access {
    let matching: Vec<&AccessControl> = acls
        .iter()
        .filter(|a| a.name == name && a.operation == operation)
        .collect();
    if matching.is_empty() {
        return Access::NoRule;
    }
    let admin = roles.iter().any(|r| r == "admin");
    let passes = |a: &&AccessControl| {
        (admin && a.admin_overrides)
            || a.roles.is_empty()
            || a.roles.iter().any(|r| roles.contains(r))
    };
    if matching.iter().any(passes) {
        return Access::Granted;
    }
    let mut needed: Vec<String> = matching.iter().flat_map(|a| a.roles.clone()).collect();
    needed.sort();
    needed.dedup();
    Access::Denied { roles: needed }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(name: &str, op: &str, roles: &[&str]) -> AccessControl {
        AccessControl {
            name: name.into(),
            operation: op.into(),
            admin_overrides: true,
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn any_matching_acl_that_accepts_the_user_grants() {
        let acls = vec![
            acl("incident", "create", &["itil"]),
            acl("incident", "create", &["sn_incident_write"]),
            acl("incident.short_description", "write", &[]),
        ];
        let itil = vec!["itil".to_string()];
        let none: Vec<String> = Vec::new();
        let admin = vec!["admin".to_string()];
        assert_eq!(decide(&acls, &itil, "incident", "create"), Access::Granted);
        assert_eq!(
            decide(&acls, &none, "incident", "create"),
            Access::Denied {
                roles: vec!["itil".into(), "sn_incident_write".into()]
            }
        );
        assert_eq!(decide(&acls, &admin, "incident", "create"), Access::Granted);
        assert_eq!(
            decide(&acls, &none, "incident.short_description", "write"),
            Access::Granted
        );
        assert_eq!(decide(&acls, &itil, "incident", "delete"), Access::NoRule);
        let mut strict = acl("incident", "delete", &["security_admin"]);
        strict.admin_overrides = false;
        assert_eq!(
            decide(&[strict], &admin, "incident", "delete"),
            Access::Denied {
                roles: vec!["security_admin".into()]
            }
        );
    }
}
