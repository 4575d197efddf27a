//! Users and profiles: API Enabled, object permissions (read/create/edit/delete/view all/modify
//! all), field-level security (read/edit) and login IP ranges. Field access defaults to read+edit
//! unless a profile restricts it; object access is what the profile lists. Record type
//! assignments per object live here too (see `record_types`).

use super::SalesforceConfig;
use super::describe::ObjectDef;
use super::record_types::{self, RecordTypeAccess};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

#[derive(Clone, Debug, Serialize)]
/// A user of the simulated org.
pub struct SfUser {
    /// The user id (`005…`).
    pub id: String,
    /// The login name, e.g. `admin@acme.sim`.
    pub username: String,
    /// Full name.
    pub name: String,
    /// E-mail address.
    pub email: String,
    /// The name of the user's profile.
    pub profile: String,
    /// Inactive users cannot log in.
    pub active: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
/// A profile's permissions on one object.
pub struct ObjPerm {
    /// May read records of the object.
    pub read: bool,
    /// May create records.
    pub create: bool,
    /// May edit records.
    pub edit: bool,
    /// May delete records.
    pub delete: bool,
    pub(crate) view_all: bool,
    pub(crate) modify_all: bool,
}

impl ObjPerm {
    pub(crate) fn all() -> Self {
        ObjPerm {
            read: true,
            create: true,
            edit: true,
            delete: true,
            view_all: true,
            modify_all: true,
        }
    }
    pub(crate) fn crud(read: bool, create: bool, edit: bool, delete: bool) -> Self {
        ObjPerm {
            read,
            create,
            edit,
            delete,
            view_all: false,
            modify_all: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// A profile's access to one field (field-level security).
pub struct FieldPerm {
    /// The field is visible.
    pub read: bool,
    /// The field may be written.
    pub edit: bool,
}

impl Default for FieldPerm {
    fn default() -> Self {
        FieldPerm {
            read: true,
            edit: true,
        }
    }
}

/// An inclusive IPv4/IPv6 range `[start, end]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct IpRange(pub IpAddr, pub IpAddr);

impl IpRange {
    /// Whether `ip` lies in the range (an IPv4 address also matches its IPv4-mapped IPv6 form).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.0, self.1, ip) {
            (IpAddr::V4(a), IpAddr::V4(b), IpAddr::V4(x)) => a <= x && x <= b,
            (IpAddr::V6(a), IpAddr::V6(b), IpAddr::V6(x)) => a <= x && x <= b,
            (IpAddr::V4(a), IpAddr::V4(b), IpAddr::V6(x)) => {
                x.to_ipv4_mapped().is_some_and(|x| a <= x && x <= b)
            }
            _ => false,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
/// A profile: what its users may see and do.
pub struct Profile {
    /// The profile name, e.g. `System Administrator`.
    pub name: String,
    pub(crate) api_enabled: bool,
    /// Object name → permissions; an object not listed is invisible.
    pub objects: BTreeMap<String, ObjPerm>,
    /// `Object.Field` → access; a field not listed is readable and editable.
    pub fields: BTreeMap<String, FieldPerm>,
    /// Empty: log in from anywhere. Otherwise the caller's IP must lie in one range.
    pub login_ip_ranges: Vec<IpRange>,
    /// Object → the record types assigned to the profile and its default; an object not listed
    /// has the Master record type only.
    pub record_types: BTreeMap<String, RecordTypeAccess>,
}

impl Profile {
    /// The permissions on object `obj`; none if the profile does not list it.
    pub fn object(&self, obj: &str) -> ObjPerm {
        self.objects.get(obj).copied().unwrap_or_default()
    }
    /// The access to `obj.field`; full access if the profile does not list it (`Id` is always read-only).
    pub fn field(&self, obj: &str, field: &str) -> FieldPerm {
        if field == "Id" {
            return FieldPerm {
                read: true,
                edit: false,
            };
        }
        self.fields
            .get(&format!("{obj}.{field}"))
            .copied()
            .unwrap_or_default()
    }
    pub(crate) fn ip_allowed(&self, ip: IpAddr) -> bool {
        self.login_ip_ranges.is_empty() || self.login_ip_ranges.iter().any(|r| r.contains(ip))
    }
}

pub(crate) const ADMIN_PROFILE: &str = "System Administrator";
pub(crate) const INTEGRATION_PROFILE: &str = "Integration User";
pub(crate) const STANDARD_PROFILE: &str = "Standard User";
pub(crate) const NO_API_PROFILE: &str = "No API Access";

pub(crate) fn seed_profiles(schema: &[ObjectDef]) -> BTreeMap<String, Profile> {
    let mut out = BTreeMap::new();
    let all = |perm: ObjPerm| -> BTreeMap<String, ObjPerm> {
        schema.iter().map(|o| (o.name.to_string(), perm)).collect()
    };
    out.insert(
        ADMIN_PROFILE.to_string(),
        Profile {
            name: ADMIN_PROFILE.into(),
            api_enabled: true,
            objects: all(ObjPerm::all()),
            fields: BTreeMap::new(),
            login_ip_ranges: Vec::new(),
            record_types: BTreeMap::new(),
        },
    );
    out.insert(
        INTEGRATION_PROFILE.to_string(),
        Profile {
            name: INTEGRATION_PROFILE.into(),
            api_enabled: true,
            objects: all(ObjPerm {
                view_all: true,
                modify_all: true,
                ..ObjPerm::crud(true, true, true, true)
            }),
            fields: BTreeMap::new(),
            login_ip_ranges: Vec::new(),
            record_types: BTreeMap::new(),
        },
    );
    let mut std_objects = all(ObjPerm::crud(true, true, true, false));
    std_objects.insert(
        "Survey_Response__c".into(),
        ObjPerm::crud(true, false, false, false),
    );
    let mut std_fields = BTreeMap::new();
    std_fields.insert(
        "Contact.Qualtrics_Contact_Id__c".to_string(),
        FieldPerm {
            read: true,
            edit: false,
        },
    );
    std_fields.insert(
        "Case.Qualtrics_Delivery_Key__c".to_string(),
        FieldPerm {
            read: false,
            edit: false,
        },
    );
    out.insert(
        STANDARD_PROFILE.to_string(),
        Profile {
            name: STANDARD_PROFILE.into(),
            api_enabled: true,
            objects: std_objects,
            fields: std_fields,
            login_ip_ranges: Vec::new(),
            record_types: BTreeMap::new(),
        },
    );
    out.insert(
        NO_API_PROFILE.to_string(),
        Profile {
            name: NO_API_PROFILE.into(),
            api_enabled: false,
            objects: all(ObjPerm::crud(true, true, true, false)),
            fields: BTreeMap::new(),
            login_ip_ranges: Vec::new(),
            record_types: BTreeMap::new(),
        },
    );
    for p in out.values_mut() {
        p.record_types = record_types::seed_access(&p.name);
    }
    out
}

pub(crate) fn seed_users(cfg: &SalesforceConfig) -> Vec<SfUser> {
    let _ = cfg;
    [
        ("admin", "Ada Admin", ADMIN_PROFILE),
        ("integration", "Ivan Integration", INTEGRATION_PROFILE),
        ("standard", "Sam Standard", STANDARD_PROFILE),
        ("noapi", "Nora NoApi", NO_API_PROFILE),
    ]
    .iter()
    .enumerate()
    .map(|(i, (user, name, profile))| SfUser {
        id: super::make_id("005", i as u64 + 1),
        username: format!("{user}@acme.sim"),
        name: name.to_string(),
        email: format!("{user}@acme.sim"),
        profile: profile.to_string(),
        active: true,
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_ranges_include_their_ends() {
        let r = IpRange("10.0.0.0".parse().unwrap(), "10.0.0.255".parse().unwrap());
        assert!(r.contains("10.0.0.255".parse().unwrap()));
        assert!(!r.contains("127.0.0.1".parse().unwrap()));
        assert!(r.contains("::ffff:10.0.0.1".parse().unwrap()));
    }
}
