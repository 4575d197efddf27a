//! Which external system an account, a connection or an action belongs to. This is the one
//! list of them: the vault stores [`System::as_str`], actions and workflows name it, and a new
//! system starts here.

use std::fmt;
use std::str::FromStr;

/// An external system xmbridge talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum System {
    /// Qualtrics XM (`qualtrics`).
    Qualtrics,
    /// Salesforce (`salesforce`).
    Salesforce,
    /// ServiceNow (`servicenow`).
    ServiceNow,
}

impl System {
    /// Every system, in the order listings show them.
    pub const ALL: [System; 3] = [System::Qualtrics, System::Salesforce, System::ServiceNow];

    /// The stable lowercase name stored in the vault and the workflow store and used on the
    /// command line and in workflow files: `qualtrics`, `salesforce`, `servicenow`.
    pub fn as_str(self) -> &'static str {
        match self {
            System::Qualtrics => "qualtrics",
            System::Salesforce => "salesforce",
            System::ServiceNow => "servicenow",
        }
    }

    /// The name people read: `Qualtrics`, `Salesforce`, `ServiceNow`.
    pub fn title(self) -> &'static str {
        match self {
            System::Qualtrics => "Qualtrics",
            System::Salesforce => "Salesforce",
            System::ServiceNow => "ServiceNow",
        }
    }
}

/// Shows [`System::title`].
impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.title())
    }
}

/// A name that is not one of [`System::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown system '{name}': expected one of qualtrics, salesforce, servicenow")]
pub struct UnknownSystem {
    /// The name as given.
    pub name: String,
}

/// Parses [`System::as_str`], in any letter case (`ServiceNow` too).
impl FromStr for System {
    type Err = UnknownSystem;
    fn from_str(s: &str) -> Result<System, UnknownSystem> {
        System::ALL
            .into_iter()
            .find(|system| system.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownSystem {
                name: s.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_any_case() {
        for system in System::ALL {
            assert_eq!(system.as_str().parse::<System>(), Ok(system));
            assert_eq!(system.title().parse::<System>(), Ok(system));
        }
        let err = "jira".parse::<System>().unwrap_err();
        assert!(err.to_string().contains("'jira'"), "{err}");
    }
}
